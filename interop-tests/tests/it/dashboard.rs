//! The dashboard in a real browser: Debian's Chromium, headless, driven over WebDriver by
//! its chromedriver (fantoccini), against the gateway's admin port. The overview shows the
//! listeners and the connections, a CoAP client (libcoap's coap-client) is listed and
//! kicked from the clients page, a client's subscriptions are listed and filtered, a
//! client id, user name or filter made of markup stays text, an LwM2M device
//! (lwm2m-node-lib) is read and written from its page, the key is asked
//! for when the gateway has keys, and the pages come with the headers that keep a browser
//! from running anything but them.

#![allow(
    clippy::expect_used,
    clippy::panic,
    clippy::unwrap_used,
    clippy::indexing_slicing
)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use interop_tests::admin::{http, HttpReply};
use interop_tests::broker::workspace_root;
use interop_tests::lwm2m;
use interop_tests::ports::server_port;
use interop_tests::process::Proc;
use interop_tests::{
    coap_client, mosquitto_pub, unique_client_id, Broker, MosquittoSub, Setting, Version, TIMEOUT,
};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How long the browser gets for what the page shows after polling the API (every 3 s) on
/// two shared cores.
const PAGE_TIMEOUT: Duration = Duration::from_secs(30);
const KEYS: &str = "ops:s3cret:administrator\n";

/// One browser at a time: several Chromiums at once on two cores make every wait slow.
static ONE_BROWSER: Mutex<()> = Mutex::new(());

/// A headless Chromium with its chromedriver, both ended when dropped.
struct Browser {
    client: Option<Client>,
    runtime: tokio::runtime::Runtime,
    driver: Proc,
    _profile: tempfile::TempDir,
    _turn: MutexGuard<'static, ()>,
}

impl Browser {
    fn start() -> Browser {
        let turn = ONE_BROWSER.lock().unwrap_or_else(|e| e.into_inner());
        // chromedriver cannot report a port-0 bind.
        let port = server_port();
        let mut cmd = Command::new(CHROMEDRIVER);
        cmd.arg(format!("--port={port}"));
        let driver = Proc::spawn("chromedriver", cmd);
        let url = format!("http://127.0.0.1:{port}");
        wait_driver_ready(&driver, &url);
        let profile = tempfile::tempdir().expect("a profile directory");
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("browserName".into(), json!("chrome"));
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--window-size=1280,1400",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the WebDriver client");
        let client = runtime
            .block_on(async {
                tokio::time::timeout(
                    TIMEOUT * 3,
                    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                        .capabilities(capabilities)
                        .connect(&url),
                )
                .await
            })
            .unwrap_or_else(|_| panic!("no browser session within {:?}", TIMEOUT * 3))
            .unwrap_or_else(|e| {
                panic!(
                    "chromedriver opened no Chromium session: {e}\n{}",
                    driver.stderr()
                )
            });
        Browser {
            client: Some(client),
            runtime,
            driver,
            _profile: profile,
            _turn: turn,
        }
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("a session")
    }

    fn goto(&self, url: &str) {
        self.runtime
            .block_on(self.client().goto(url))
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.runtime
            .block_on(self.client().execute(script, args))
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Runs `script` until it returns something other than null or false, and gives that;
    /// fails the test with `what` after PAGE_TIMEOUT.
    fn until(&self, what: &str, script: &str, args: Vec<Value>) -> Value {
        let deadline = Instant::now() + PAGE_TIMEOUT;
        loop {
            let value = self.js(script, args.clone());
            if !matches!(value, Value::Null | Value::Bool(false)) {
                return value;
            }
            if Instant::now() > deadline {
                let page = self.js("return document.body.innerText", vec![]);
                panic!("{what}: not within {PAGE_TIMEOUT:?}; the page says:\n{page}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Clicks the element `css` names with a real pointer click, once it is there and shown
    /// (found again when the page replaced it meanwhile).
    fn click(&self, css: &str) {
        let deadline = Instant::now() + PAGE_TIMEOUT;
        loop {
            let clicked = self.runtime.block_on(async {
                let element = self.client().find(Locator::Css(css)).await?;
                element.click().await
            });
            match clicked {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => panic!("click {css}: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Types `text` into the field `css` names, after clearing it.
    fn type_into(&self, css: &str, text: &str) {
        self.runtime
            .block_on(async {
                let element = self.client().find(Locator::Css(css)).await?;
                element.clear().await?;
                element.send_keys(text).await
            })
            .unwrap_or_else(|e| panic!("type into {css}: {e}"));
    }

    fn screenshot(&self) -> Vec<u8> {
        self.runtime
            .block_on(self.client().screenshot())
            .expect("a screenshot")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            let _ = self.runtime.block_on(async {
                tokio::time::timeout(Duration::from_secs(5), client.close()).await
            });
        }
        self.driver.kill();
    }
}

/// Asks chromedriver's WebDriver `/status` until it says it is ready.
fn wait_driver_ready(driver: &Proc, url: &str) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let output = Command::new("curl")
            .args(["-sS", "--max-time", "2", &format!("{url}/status")])
            .output()
            .expect("run curl");
        let status: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
        if status["value"]["ready"] == true {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "chromedriver not ready within {TIMEOUT:?}: {status}\n{}",
                driver.stderr()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn dashboard_url(gw: &Broker) -> String {
    format!("http://{}:{}/", gw.host, gw.admin_port)
}

/// Where screenshots are kept: `target/test-output` (or under `CARGO_TARGET_DIR`).
fn test_output_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let dir = target.join("test-output");
    std::fs::create_dir_all(&dir).expect("create the test output directory");
    dir
}

/// The client ids the clients page lists now.
const LISTED_IDS: &str = "return [...document.querySelectorAll('#clients tbody tr')]\
    .map((row) => row.dataset.clientid)";

fn listed(browser: &Browser) -> Vec<String> {
    serde_json::from_value(browser.js(LISTED_IDS, vec![])).expect("a list of ids")
}

#[test]
fn the_overview_shows_listeners_connections_and_message_rates() {
    let Some(gw) = Broker::start_gateway_only(
        "a gateway of the test's own: it counts every client of the gateway",
        &[],
    ) else {
        return;
    };
    let id = unique_client_id("overview");
    let _sub = MosquittoSub::start(&gw, Version::V5, &["dash/#"], 0, &["-i", &id]);
    let browser = Browser::start();
    browser.goto(&dashboard_url(&gw));
    assert_eq!(
        browser.runtime.block_on(browser.client().title()).unwrap(),
        "Gateway dashboard"
    );
    browser.until(
        "one connection shown",
        "return document.getElementById('stat-connections').textContent === '1'",
        vec![],
    );
    browser.until(
        "MQTT counted once in the connections by protocol",
        "return document.querySelector('#by-protocol tr[data-protocol=\"MQTT\"] td.num')\
            ?.textContent === '1'",
        vec![],
    );
    let tcp = browser.until(
        "tcp:default listed as running, with its connection",
        "const row = document.querySelector('#listeners tr[data-listener=\"tcp:default\"]');\
         return row && [...row.cells].map((cell) => cell.textContent)",
        vec![],
    );
    assert_eq!(tcp[0], "tcp:default");
    assert_eq!(tcp[1], "mqtt");
    assert_eq!(tcp[3], format!("127.0.0.1:{}", gw.port));
    assert_eq!(tcp[4], "yes");
    assert_eq!(tcp[5], "1");
    assert!(
        browser
            .js(
                "return document.querySelector('#listeners tr[data-listener=\"coap:udp:default\"]') !== null",
                vec![]
            )
            .as_bool()
            .unwrap(),
        "the CoAP listener listed too"
    );
    // Messages through the broker move the chart: two polls make a rate.
    for n in 0..20 {
        mosquitto_pub(
            &gw,
            Version::V5,
            "dash/rate",
            n.to_string().as_bytes(),
            0,
            false,
            &[],
        );
    }
    // A line of several rates, one of them above the chart's zero line (y = 150).
    browser.until(
        "the chart draws the received rate, above zero once",
        "const line = document.querySelector('#rate-chart polyline.received');\
         const points = line ? line.getAttribute('points').split(' ') : [];\
         return points.length >= 3\
            && points.some((point) => Number(point.split(',')[1]) < 150)",
        vec![],
    );

    let png = browser.screenshot();
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let path = test_output_dir().join("dashboard-overview.png");
    std::fs::write(&path, &png).expect("write the screenshot");
    println!("screenshot of the overview: {}", path.display());
}

#[test]
fn a_coap_client_listed_on_the_clients_page_is_kicked_by_its_button() {
    let Some(gw) = Broker::start_gateway_only(
        "the dashboard",
        // Longer than the test: the client is gone by the kick, not by its silence.
        &[Setting::new("GATEWAY_GATEWAY__COAP__HEARTBEAT", "300s")],
    ) else {
        return;
    };
    let id = unique_client_id("dash-coap");
    let (ok, stdout, stderr) = coap_client(
        &gw,
        &["-m", "post", "-v", "7"],
        &format!("/mqtt/connection?clientid={id}"),
    );
    assert!(ok && stdout.contains("c:2.01"), "{stdout}\n{stderr}");
    let one = format!("/api/v5/gateways/coap/clients/{id}");
    assert_eq!(http(&gw, "GET", &one, None).status, 200);

    let browser = Browser::start();
    browser.goto(&format!("{}#/clients", dashboard_url(&gw)));
    let row = format!("#clients tr[data-clientid=\"{id}\"]");
    let cells = browser.until(
        "the CoAP client listed",
        "const row = document.querySelector(arguments[0]);\
         return row && [...row.cells].map((cell) => cell.textContent)",
        vec![json!(row)],
    );
    assert_eq!(cells[0], "CoAP");
    assert_eq!(cells[1], id.as_str());
    assert!(
        cells[3].as_str().unwrap().starts_with("127.0.0.1:"),
        "{cells}"
    );
    assert_eq!(cells[5], "connected");

    browser.click(&format!("{row} button.kick"));
    browser.until(
        "the kick said done",
        "return document.getElementById('clients-status').textContent.startsWith('Kicked')",
        vec![],
    );
    assert_eq!(
        http(&gw, "GET", &one, None).status,
        404,
        "gone from the API"
    );
    browser.until(
        "the kicked client no longer listed",
        "return document.querySelector(arguments[0]) === null",
        vec![json!(row)],
    );
    assert!(!listed(&browser).contains(&id));
}

#[test]
fn a_client_id_made_of_markup_is_shown_as_text_and_runs_nothing() {
    let gw = Broker::start();
    let id = "<img src=x onerror=\"window.pwned=1;document.title='pwned'\">";
    let user = "<script>window.pwned=2</script><b>bold</b>";
    let _sub = MosquittoSub::start(&gw, Version::V5, &["dash/x"], 0, &["-i", id, "-u", user]);
    let browser = Browser::start();
    browser.goto(&format!("{}#/clients", dashboard_url(&gw)));
    let cells = browser.until(
        "the client with the markup id listed",
        "const row = [...document.querySelectorAll('#clients tbody tr')]\
            .find((row) => row.dataset.clientid === arguments[0]);\
         return row && [...row.cells].map((cell) => cell.textContent)",
        vec![json!(id)],
    );
    assert_eq!(cells[1], id, "the id as text");
    assert_eq!(cells[2], user, "the user name as text");
    let page = browser.js(
        "return {\
            title: document.title,\
            pwned: window.pwned ?? null,\
            markup: document.querySelectorAll('#clients img, #clients script, #clients b').length,\
         }",
        vec![],
    );
    assert_eq!(
        page,
        json!({ "title": "Gateway dashboard", "pwned": null, "markup": 0 })
    );
    // The browser enforces the policy: a script put inline into the page does not run.
    let inline = browser.js(
        "const script = document.createElement('script');\
         script.textContent = 'window.inlineRan = true';\
         document.body.append(script);\
         return window.inlineRan ?? false",
        vec![],
    );
    assert_eq!(inline, json!(false), "an inline script ran");
}

#[test]
fn the_subscriptions_page_lists_a_clients_filters_as_text() {
    let Some(gw) = Broker::start_gateway_only(
        "a gateway of the test's own: it counts every client of the gateway",
        &[],
    ) else {
        return;
    };
    let id = unique_client_id("dash-subs");
    let filters = ["dash/+/temp", "dash/<i onmouseover=alert(1)>x</i>/#"];
    let _sub = MosquittoSub::start(&gw, Version::V5, &filters, 1, &["-i", &id]);
    // Another client's subscription, which the filter by client id leaves out.
    let other = unique_client_id("dash-other");
    let _other = MosquittoSub::start(&gw, Version::V5, &["dash/other"], 0, &["-i", &other]);

    let browser = Browser::start();
    browser.goto(&format!("{}#/subscriptions", dashboard_url(&gw)));
    browser.until(
        "both clients' subscriptions listed",
        "return document.querySelectorAll('#subscriptions tbody tr').length === 3",
        vec![],
    );
    browser.type_into("#subs-clientid", &id);
    browser.click("#subs-submit");
    let rows = browser.until(
        "the client's two filters, and only those",
        "const rows = [...document.querySelectorAll('#subscriptions tbody tr')];\
         return rows.length === 2 && rows.every((row) => row.dataset.clientid === arguments[0])\
            && rows.map((row) => [...row.cells].map((cell) => cell.textContent))",
        vec![json!(id)],
    );
    let mut rows: Vec<Vec<String>> = serde_json::from_value(rows).expect("rows of cells");
    rows.sort();
    let expected = |filter: &str| {
        vec![
            id.clone(),
            filter.to_owned(),
            "1".into(),
            "no".into(),
            "no".into(),
            "0".into(),
        ]
    };
    assert_eq!(rows, [expected(filters[0]), expected(filters[1])]);
    assert_eq!(
        browser.js(
            "return document.querySelectorAll('#subscriptions i').length",
            vec![]
        ),
        json!(0),
        "a filter made of markup became markup"
    );
}

#[test]
fn an_lwm2m_device_is_read_and_written_from_its_page() {
    let gw = Broker::start();
    let endpoint = unique_client_id("dash-ep");
    let mut device = lwm2m::device(&gw, &endpoint);
    assert_eq!(
        lwm2m::expect_line(&mut device, "registered"),
        format!("registered rd/{endpoint}")
    );

    let browser = Browser::start();
    browser.goto(&format!("{}#/lwm2m", dashboard_url(&gw)));
    let row = format!("#devices tr[data-clientid=\"{endpoint}\"]");
    browser.click(&format!("{row} button"));
    browser.until(
        "the device's panel shown",
        "return !document.getElementById('device').hidden\
            && document.getElementById('device-name').textContent === arguments[0]",
        vec![json!(endpoint)],
    );

    browser.type_into("#read-path", "/3/0/0");
    browser.click("#read-submit");
    let result = browser.until(
        "the device's answer to the read",
        RESULT_WHEN_ANSWERED,
        vec![json!("read")],
    );
    assert_eq!(result["path"], "/3/0/0");
    assert_eq!(result["code"], "2.05", "{result}");
    assert_eq!(result["msg"], "content", "{result}");
    assert!(
        result["content"]
            .as_str()
            .unwrap()
            .contains("Open Mobile Alliance"),
        "{result}"
    );

    browser.type_into("#write-path", "/3/0/14");
    browser.type_into("#write-value", "+02:00");
    browser.click("#write-submit");
    assert_eq!(
        lwm2m::expect_line(&mut device, "write"),
        "write /3/0/14 +02:00"
    );
    let result = browser.until(
        "the device's answer to the write",
        RESULT_WHEN_ANSWERED,
        vec![json!("write")],
    );
    assert_eq!(result["code"], "2.04", "{result}");
    assert_eq!(result["msg"], "changed", "{result}");

    // Read back what the device stored.
    browser.type_into("#read-path", "/3/0/14");
    browser.click("#read-submit");
    let result = browser.until(
        "the device's answer to the read of what was written",
        RESULT_WHEN_ANSWERED,
        vec![json!("read")],
    );
    assert_eq!(result["path"], "/3/0/14");
    assert_eq!(result["code"], "2.05", "{result}");
    assert!(
        result["content"].as_str().unwrap().contains("+02:00"),
        "{result}"
    );
}

/// The result panel once it holds the device's answer to `arguments[0]`.
const RESULT_WHEN_ANSWERED: &str = "const text = (id) => document.getElementById(id).textContent;\
    const msg = text('lookup-msg');\
    return text('lookup-action') === arguments[0] && text('lookup-code') !== ''\
        && msg !== 'reply_not_received' && msg !== 'sending…'\
        && { path: text('lookup-path'), code: text('lookup-code'), msg,\
             content: text('lookup-content') }";

fn policy_of(reply: &HttpReply) -> String {
    reply
        .header("content-security-policy")
        .unwrap_or_else(|| panic!("no Content-Security-Policy: {reply:?}"))
        .to_owned()
}

#[test]
fn the_pages_come_with_a_strict_policy_and_nothing_else_is_served() {
    let gw = Broker::start();
    for (path, content_type) in [
        ("/", "text/html; charset=utf-8"),
        ("/assets/app.js", "text/javascript; charset=utf-8"),
        ("/assets/style.css", "text/css; charset=utf-8"),
        ("/assets/icon.svg", "image/svg+xml"),
    ] {
        let reply = http(&gw, "GET", path, None);
        assert_eq!(reply.status, 200, "{path}: {reply:?}");
        assert_eq!(reply.header("content-type"), Some(content_type), "{path}");
        assert_eq!(reply.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(reply.header("x-frame-options"), Some("DENY"));
        let policy = policy_of(&reply);
        for directive in [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(policy.contains(directive), "{path}: {policy}");
        }
        assert!(!policy.contains("unsafe"), "{path}: {policy}");
    }
    for path in [
        "/assets/nope.js",
        "/assets/",
        "/assets/..%2Fapp.js",
        "/assets/..%2F..%2Fsrc%2Fmain.rs",
        "/assets/%2Fetc%2Fpasswd",
        "/assets/app.js/",
        "/index.html",
        "/dashboard/app.js",
    ] {
        let reply = http(&gw, "GET", path, None);
        assert_eq!(reply.status, 404, "{path}: {reply:?}");
    }
    assert_eq!(
        http(&gw, "GET", "/assets/nope.js", None).header("x-content-type-options"),
        Some("nosniff")
    );
}

#[test]
fn with_api_keys_the_dashboard_asks_for_the_key_and_refuses_a_wrong_secret() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let file = dir.path().join("api_keys");
    std::fs::write(&file, KEYS).expect("write the key file");
    let Some(gw) = Broker::start_gateway_only(
        "the dashboard with API keys",
        &[Setting::new(
            "GATEWAY_API_KEY__BOOTSTRAP_FILE",
            file.display().to_string(),
        )],
    ) else {
        return;
    };
    // The pages themselves hold nothing secret: they load without a key.
    assert_eq!(http(&gw, "GET", "/", None).status, 200);
    let id = unique_client_id("dash-keyed");
    let mut cmd = Command::new("mosquitto_sub");
    cmd.args(["-h", &gw.host, "-p", &gw.port.to_string(), "-V", "mqttv5"])
        .args(["-i", &id, "-t", "dash/k"]);
    let mut sub = Proc::spawn("mosquitto_sub to be kicked", cmd);
    // What the Kick button sends needs the key like the rest of the API.
    let kick = format!("/api/v5/clients/{id}");
    assert_eq!(http(&gw, "DELETE", &kick, None).status, 401);
    assert_eq!(http(&gw, "DELETE", &kick, Some("ops:wrong")).status, 401);

    let browser = Browser::start();
    browser.goto(&format!("{}#/clients", dashboard_url(&gw)));
    browser.until(
        "the login form shown",
        "return !document.getElementById('login').hidden\
            && document.getElementById('page-clients').hidden",
        vec![],
    );
    browser.type_into("#login-key", "ops");
    browser.type_into("#login-secret", "wrong");
    browser.click("#login-submit");
    let said = browser.until(
        "the wrong secret refused",
        "const error = document.getElementById('login-error');\
         return !error.hidden && error.textContent",
        vec![],
    );
    assert_eq!(said, "The gateway refused this key and secret.");
    assert_eq!(
        browser.js(
            "return [sessionStorage.length, localStorage.length, document.getElementById('login').hidden]",
            vec![]
        ),
        json!([0, 0, false])
    );

    browser.type_into("#login-secret", "s3cret");
    browser.click("#login-submit");
    let row = format!("#clients tr[data-clientid=\"{id}\"]");
    browser.until(
        "the clients page once logged in",
        "return document.querySelector(arguments[0]) !== null",
        vec![json!(row)],
    );
    assert_eq!(
        browser.js(
            "return [sessionStorage.length, localStorage.length]",
            vec![]
        ),
        json!([1, 0]),
        "the key kept for this tab only"
    );
    browser.click(&format!("{row} button.kick"));
    // mosquitto_sub runs until its connection ends: the kick ends it.
    assert!(
        sub.wait(TIMEOUT).is_some(),
        "mosquitto_sub still connected after the kick"
    );
    browser.until(
        "the kicked client no longer listed",
        "return document.querySelector(arguments[0]) === null",
        vec![json!(row)],
    );
    assert_eq!(http(&gw, "GET", &kick, Some("ops:s3cret")).status, 404);
}
