//! One Mosquitto ACL file given to a Mosquitto broker (Debian's `mosquitto`) and to the
//! gateway (`auth.acl_format = "mosquitto"`): every client of a matrix publishes to and
//! subscribes to every topic of it with mosquitto_pub / mosquitto_sub on both, and the
//! gateway must decide every cell as Mosquitto does, or more strictly where the README says
//! so. Also an argon2id password file admitting mosquitto_pub with the right password only.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use interop_tests::ports::server_port;
use interop_tests::process::{Line, Proc};
use interop_tests::{Broker, Setting, TIMEOUT};

const ACL: &str = "\
# anonymous clients
topic read public/#
topic write anon/in

# every client
pattern read devices/%c/cmd
pattern write devices/%c/state
pattern readwrite users/%u/#
pattern deny users/%u/locked

user alice
topic readwrite shared/#
topic deny shared/secret
topic read $internal/#

user bob
topic write shared/#
topic read alice-feed

user ops
topic read $SYS/#
topic readwrite #

user monitor
topic read #
topic read $internal/#

user feeder
topic write #
topic write $internal/#
";

/// (label, client id, username).
const CLIENTS: &[(&str, &str, Option<&str>)] = &[
    ("anonymous", "anon-dev", None),
    ("alice", "alice-dev", Some("alice")),
    ("bob", "bob-dev", Some("bob")),
    ("carol (no section)", "carol-dev", Some("carol")),
    ("ops", "ops-dev", Some("ops")),
    ("user +", "plus-dev", Some("+")),
    ("user #", "hash-dev", Some("#")),
    ("user alice/private", "slash-dev", Some("alice/private")),
    ("client id with +", "dev+1", Some("dave")),
    ("client id with /", "devices/alice-dev", Some("erin")),
];

/// Topics every client publishes to and subscribes to. None of them has a wildcard: for a
/// topic the gateway's decision at SUBSCRIBE is exactly Mosquitto's on each message.
const TOPICS: &[&str] = &[
    "public/news",
    "anon/in",
    "shared/a",
    "shared/secret",
    "alice-feed",
    "users/alice/x",
    "users/alice/locked",
    "users/alice/private/x",
    "users/bob/x",
    "users/+/x",
    "users/dave/x",
    "devices/anon-dev/cmd",
    "devices/anon-dev/state",
    "devices/alice-dev/cmd",
    "devices/alice-dev/state",
    "devices/alice-dev/state/x",
    "$internal/x",
    "$SYS/broker/fake",
];

/// Filters subscribed to besides the topics, with what the broker itself publishes there.
const SYS_FILTER: &str = "$SYS/#";

type Cells = BTreeMap<(String, String), bool>;

/// A Mosquitto broker on a free port of 127.0.0.1 with `acl_file`, anonymous clients
/// allowed, $SYS published every second. Killed when dropped.
struct Mosquitto {
    child: std::process::Child,
    port: u16,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    fn start(acl: &Path) -> Mosquitto {
        let dir = tempfile::tempdir().expect("temp dir");
        // mosquitto cannot report a port-0 bind.
        let port = server_port();
        let conf = dir.path().join("mosquitto.conf");
        let log = dir.path().join("mosquitto.log");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\nacl_file {}\n\
                 persistence false\nsys_interval 1\nlog_dest file {}\nlog_type all\n",
                acl.display(),
                log.display()
            ),
        )
        .expect("write mosquitto.conf");
        let mut child = Command::new(interop_tests::tools::sbin("mosquitto"))
            .arg("-c")
            .arg(&conf)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start mosquitto; install it with scripts/install-test-tools.sh");
        let deadline = Instant::now() + TIMEOUT;
        while !connack(port) {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "mosquitto exited ({status}); log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto gave no CONNACK on port {port} within {TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Mosquitto {
            child,
            port,
            log,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether an MQTT 3.1.1 CONNECT on `port` gets a CONNACK accepting it: readiness is the
/// broker answering MQTT, not a listening socket.
fn connack(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    // CONNECT, protocol "MQTT" level 4, clean session, keep-alive 10 s, client id "ready".
    let packet = [
        0x10, 17, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 10, 0, 5, b'r', b'e', b'a', b'd', b'y',
    ];
    let mut ack = [0u8; 4];
    stream.write_all(&packet).is_ok()
        && stream.read_exact(&mut ack).is_ok()
        && ack == [0x20, 2, 0, 0]
}

fn client_args(cmd: &mut Command, port: u16, client_id: &str, username: Option<&str>) {
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", "mqttv311"]);
    cmd.args(["-i", client_id]);
    if let Some(user) = username {
        cmd.args(["-u", user]);
    }
}

/// mosquitto_sub on `filters` until its SUBACK (or its exit when every filter is refused).
fn subscriber(port: u16, client_id: &str, username: Option<&str>, filters: &[&str]) -> Proc {
    let mut cmd = Command::new("stdbuf");
    cmd.args(["-oL", "mosquitto_sub"]);
    client_args(&mut cmd, port, client_id, username);
    cmd.args(["-d", "-q", "1", "-F", "MSG\t%t\t%p"]);
    for filter in filters {
        cmd.args(["-t", filter]);
    }
    let mut proc = Proc::spawn("mosquitto_sub", cmd);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match proc.next_line(deadline.saturating_duration_since(Instant::now())) {
            Line::Line(line) if line.starts_with("Subscribed (mid") => return proc,
            Line::Line(_) => {}
            Line::Eof => return proc,
            Line::Timeout => panic!(
                "mosquitto_sub {client_id}: no SUBACK; stderr:\n{}",
                proc.stderr()
            ),
        }
    }
}

/// (topic, payload) of every message `proc` printed within `window`.
fn received(proc: &mut Proc, window: Duration) -> Vec<(String, String)> {
    let deadline = Instant::now() + window;
    let mut out = Vec::new();
    loop {
        match proc.next_line(deadline.saturating_duration_since(Instant::now())) {
            Line::Line(line) => {
                let mut fields = line.splitn(3, '\t');
                if let (Some("MSG"), Some(topic), Some(payload)) =
                    (fields.next(), fields.next(), fields.next())
                {
                    out.push((topic.to_owned(), payload.to_owned()));
                }
            }
            Line::Eof | Line::Timeout => return out,
        }
    }
}

fn publish(port: u16, client_id: &str, username: Option<&str>, topic: &str, payload: &str) {
    let mut cmd = Command::new("mosquitto_pub");
    client_args(&mut cmd, port, client_id, username);
    cmd.args(["-q", "1", "-t", topic, "-m", payload]);
    let mut proc = Proc::spawn("mosquitto_pub", cmd);
    // A refused publish may end in an error or a closed connection; what counts is
    // whether the message went through, which the monitor tells.
    let _ = proc.wait(TIMEOUT);
}

/// Every cell of the matrix on the broker listening on `port`: ("publish"/"subscribe" +
/// topic, client label) → whether the message went through.
fn matrix(port: u16) -> Cells {
    let mut cells = Cells::new();
    // Publish: a monitor that may read every topic the clients can publish to ($SYS is
    // refused to every publisher, so it need not read it).
    let mut monitor = subscriber(port, "monitor-dev", Some("monitor"), &["#", "$internal/#"]);
    for &(label, client_id, username) in CLIENTS {
        for &topic in TOPICS {
            if topic.contains('+') {
                continue;
            }
            publish(port, client_id, username, topic, label);
        }
    }
    // The last one, from a client allowed to, marks the end of the others.
    publish(port, "feeder-dev", Some("feeder"), "public/end", "end");
    let mut got = BTreeSet::new();
    let deadline = Instant::now() + TIMEOUT;
    'wait: while Instant::now() < deadline {
        for (topic, payload) in received(&mut monitor, Duration::from_millis(200)) {
            if topic == "public/end" {
                break 'wait;
            }
            got.insert((topic, payload));
        }
    }
    for &(label, _, _) in CLIENTS {
        for &topic in TOPICS {
            if topic.contains('+') {
                continue;
            }
            let through = got.contains(&(topic.to_owned(), label.to_owned()));
            cells.insert((format!("publish {topic}"), label.to_owned()), through);
        }
    }
    drop(monitor);

    // Subscribe: each client subscribes to every topic (and to $SYS/#), the feeder
    // publishes one message to each, the broker its own $SYS statistics every second.
    let mut filters: Vec<&str> = TOPICS.to_vec();
    filters.push(SYS_FILTER);
    let mut subs: Vec<(&str, Proc)> = CLIENTS
        .iter()
        .map(|&(label, id, user)| (label, subscriber(port, id, user, &filters)))
        .collect();
    for &topic in TOPICS {
        if !topic.contains('+') {
            publish(port, "feeder-dev", Some("feeder"), topic, "feed");
        }
    }
    // Two $SYS periods, and the feeder's messages long arrived.
    std::thread::sleep(Duration::from_millis(2500));
    for (label, proc) in &mut subs {
        let msgs = received(proc, Duration::from_millis(300));
        for &topic in TOPICS {
            if topic.contains('+') {
                continue;
            }
            let through = msgs.iter().any(|(t, p)| t == topic && p == "feed");
            cells.insert((format!("subscribe {topic}"), (*label).to_owned()), through);
        }
        let sys = msgs
            .iter()
            .any(|(t, p)| t.starts_with("$SYS/") && p != "feed");
        cells.insert(
            (format!("subscribe {SYS_FILTER}"), (*label).to_owned()),
            sys,
        );
    }
    cells
}

fn render(cells: &Cells, other: &Cells) -> String {
    let mut out = String::new();
    let mut rows: Vec<&String> = cells.keys().map(|(row, _)| row).collect();
    rows.dedup();
    for row in rows {
        out.push_str(&format!("{row:<36}"));
        for &(label, _, _) in CLIENTS {
            let here = cells.get(&(row.clone(), label.to_owned())).copied();
            let there = other.get(&(row.clone(), label.to_owned())).copied();
            let mark = match here {
                Some(true) => "Y",
                Some(false) => "-",
                None => "?",
            };
            let differs = if here == there { " " } else { "!" };
            out.push_str(&format!(" {label}={mark}{differs}"));
        }
        out.push('\n');
    }
    out
}

/// Where the gateway is stricter than Mosquitto on purpose (README, "Mosquitto's ACL file"),
/// each asserted both ways. Debian's Mosquitto 2.0.11 pastes the user name into
/// `users/%u/#` as text, so the user `alice/private` gets `users/alice/private/#`, part of
/// alice's topics; the gateway compares `%u` with one whole level, which `alice/private`
/// never equals.
const STRICTER: &[(&str, &str)] = &[
    ("publish users/alice/private/x", "user alice/private"),
    ("subscribe users/alice/private/x", "user alice/private"),
];

#[test]
fn gateway_decides_a_mosquitto_acl_file_as_mosquitto_does() {
    let dir = tempfile::tempdir().expect("temp dir");
    let acl = dir.path().join("acl");
    std::fs::write(&acl, ACL).expect("write the ACL file");
    let Some(gateway) = Broker::start_gateway_only(
        "a gateway reading a Mosquitto ACL file",
        &[
            Setting::new("GATEWAY_AUTH__ACL_FILE", acl.display().to_string()),
            Setting::new("GATEWAY_AUTH__ACL_FORMAT", "mosquitto"),
            Setting::new("GATEWAY_SYS__INTERVAL", "1s"),
        ],
    ) else {
        return;
    };
    let mosquitto = Mosquitto::start(&acl);

    let theirs = matrix(mosquitto.port);
    let ours = matrix(gateway.port);

    let mut wrong = Vec::new();
    for (cell, &mosquitto_says) in &theirs {
        let gateway_says = ours.get(cell).copied();
        let stricter = STRICTER.contains(&(cell.0.as_str(), cell.1.as_str()));
        let expected = if stricter {
            assert!(
                mosquitto_says,
                "{cell:?} is listed as stricter but Mosquitto refuses it"
            );
            false
        } else {
            mosquitto_says
        };
        if gateway_says != Some(expected) {
            wrong.push(format!(
                "{} by {}: mosquitto {mosquitto_says}, gateway {gateway_says:?}",
                cell.0, cell.1
            ));
        }
    }
    // A matrix where nothing or everything goes through would prove nothing.
    let allowed = theirs.values().filter(|&&v| v).count();
    assert!(
        allowed > 10 && allowed + 10 < theirs.len(),
        "degenerate matrix ({allowed} of {} allowed):\n{}",
        theirs.len(),
        render(&theirs, &ours)
    );
    assert!(
        wrong.is_empty(),
        "{} of {} cells differ:\n{}\n\nmosquitto (! = the gateway differs):\n{}\ngateway:\n{}\nmosquitto log:\n{}",
        wrong.len(),
        theirs.len(),
        wrong.join("\n"),
        render(&theirs, &ours),
        render(&ours, &theirs),
        mosquitto.log()
    );
    println!(
        "{} cells, {allowed} allowed by Mosquitto, the gateway deciding each alike but the {} \
         where it is stricter:\n{}",
        theirs.len(),
        STRICTER.len(),
        render(&ours, &theirs)
    );
}

/// Made with argon2-cffi 23.1.0 (the reference implementation's Python binding) with
/// Mosquitto 2.1's `mosquitto_passwd` costs: m=47104, t=1, p=1, 64-byte salt and hash.
const ARGON2ID_LINE: &str = "argo:$argon2id$v=19$m=47104,t=1,p=1$NazN2T4cCoPoeh2EIxHxRJD3p4BqH1ElT/nbmW+RpgnMatbp8ntQio990nxkHn02gKHgrceSeh6GR3Dx58Sdjg$tBuGk9kDbOuJ1cPwU9zlPmVnlnPM24xlsA47Bt4Jm04c3cNQsM2As4Ewa0PHls7RKDfzMeH7/8faMv/mnSQO6g";

#[test]
fn an_argon2id_password_admits_mosquitto_pub_with_the_right_password_only() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("passwd");
    std::fs::write(&file, format!("{ARGON2ID_LINE}\n")).expect("write the password file");
    let Some(gateway) = Broker::start_gateway_only(
        "a gateway with an argon2id password file",
        &interop_tests::broker::password_file_only(&file),
    ) else {
        return;
    };
    let run = |password: &str| {
        let mut cmd = Command::new("mosquitto_pub");
        client_args(&mut cmd, gateway.port, "argo-dev", Some("argo"));
        cmd.args(["-P", password, "-q", "1", "-t", "t", "-m", "x"]);
        let mut proc = Proc::spawn("mosquitto_pub", cmd);
        let status = proc.wait(TIMEOUT).expect("mosquitto_pub finished");
        (status.success(), proc.stderr())
    };
    let (ok, stderr) = run("argon-secret");
    assert!(ok, "right password refused: {stderr}");
    for wrong in ["argon-secreT", "argon-secret ", ""] {
        let (ok, stderr) = run(wrong);
        assert!(!ok, "wrong password {wrong:?} admitted");
        assert!(
            stderr.to_lowercase().contains("not authorised")
                || stderr.to_lowercase().contains("bad user name or password"),
            "wrong password {wrong:?}: {stderr}"
        );
    }
}
