//! The subscription index at a million filters: insert, match and remove.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::indexing_slicing)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mqtt_core::trie::TopicTrie;

const FILTERS: usize = 1_000_000;

/// A fleet-shaped index: one exact and one wildcard filter per device, plus a few broad ones.
fn fleet() -> TopicTrie<usize> {
    let mut trie = TopicTrie::new();
    for device in 0..FILTERS / 2 {
        trie.get_or_insert_with(&format!("devices/{device}/telemetry"), || device);
        trie.get_or_insert_with(&format!("devices/{device}/commands/+"), || device);
    }
    trie.get_or_insert_with("devices/+/telemetry", || 0);
    trie.get_or_insert_with("devices/#", || 0);
    trie
}

fn trie(c: &mut Criterion) {
    let mut trie = fleet();
    let mut group = c.benchmark_group("trie_1m_filters");
    group.throughput(Throughput::Elements(1));
    group.bench_function("match_exact_topic", |b| {
        let mut device = 0usize;
        let topics: Vec<String> = (0..1024)
            .map(|i| format!("devices/{}/telemetry", i * 397))
            .collect();
        b.iter(|| {
            device = (device + 1) % topics.len();
            let mut hits = 0;
            trie.for_each_match(&topics[device], |_| hits += 1);
            hits
        })
    });
    group.bench_function("match_miss", |b| {
        b.iter(|| {
            let mut hits = 0;
            trie.for_each_match("factory/line/7/status", |_| hits += 1);
            hits
        })
    });
    group.bench_function("insert_and_remove", |b| {
        let mut next = 0usize;
        b.iter(|| {
            next += 1;
            let key = format!("extra/{next}/+/state");
            trie.get_or_insert_with(&key, || next);
            trie.remove(&key)
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = trie
}
criterion_main!(benches);
