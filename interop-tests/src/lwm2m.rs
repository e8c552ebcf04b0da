//! LwM2M devices on client libraries from npm (lwm2m-node-lib, coap-node), run by the
//! scripts in `js/`, which report each event as one line on stdout.

use std::process::Command;

use crate::broker::workspace_root;
use crate::process::{Line, Proc};
use serde_json::Value;

use crate::{Broker, MosquittoSub, TIMEOUT};

/// A device on lwm2m-node-lib registering as `endpoint` with a lifetime of 60 s; its
/// stdin takes `set`, `update` and `deregister` (`js/lwm2m_client.js`).
pub fn device(broker: &Broker, endpoint: &str) -> Proc {
    node_device(broker, endpoint, "lwm2m-node-lib", "lwm2m_client.js", None)
}

/// A device on the npm `package`, run by `script` in interop-tests/js, adding `query`
/// (`imei=alice&password=secret`) to its registration's queries when given.
pub fn node_device(
    broker: &Broker,
    endpoint: &str,
    package: &str,
    script: &str,
    query: Option<&str>,
) -> Proc {
    let js = workspace_root().join("interop-tests/js");
    assert!(
        js.join("node_modules").join(package).is_dir(),
        "{package} is not installed in {}: run scripts/install-test-tools.sh",
        js.display()
    );
    let mut cmd = Command::new("node");
    cmd.arg(js.join(script))
        .arg(&broker.host)
        .arg(broker.lwm2m_port.to_string())
        .arg(endpoint)
        .arg("60");
    if let Some(query) = query {
        cmd.arg(query);
    }
    Proc::spawn(package, cmd)
}

/// The next line the device prints that starts with `prefix`, the others skipped.
pub fn expect_line(device: &mut Proc, prefix: &str) -> String {
    loop {
        match device.next_line(TIMEOUT) {
            Line::Line(line) if line.starts_with(prefix) => return line,
            Line::Line(_) => continue,
            other => panic!(
                "device: waiting for {prefix:?}, got {other:?}; stderr:\n{}",
                device.stderr()
            ),
        }
    }
}

/// The next message on the device's `lwm2m/{endpoint}/up/...` topics, as (topic suffix,
/// JSON).
pub fn next_event(sub: &mut MosquittoSub, endpoint: &str) -> (String, Value) {
    let msg = sub.recv(TIMEOUT);
    let suffix = msg
        .topic
        .strip_prefix(&format!("lwm2m/{endpoint}/"))
        .unwrap_or_else(|| panic!("unexpected topic {}", msg.topic))
        .to_owned();
    let json = serde_json::from_slice(&msg.payload)
        .unwrap_or_else(|e| panic!("{}: not JSON ({e})", String::from_utf8_lossy(&msg.payload)));
    (suffix, json)
}
