//! The gateway's status page in a real browser: headless Chromium, driven
//! over the DevTools protocol, loads the page, sees a provider that this
//! test registers afterwards appear (the page updates live), and leaves a
//! screenshot in `target/tmp/gateway-status.png`.
//!
//! `.ci/run` installs Debian's `chromium`; elsewhere the test says it is
//! skipped when there is none, unless `BUSLINE_REQUIRE_CHROMIUM` is set.

mod support;

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    time::Duration,
};

use base64::Engine;
use busline::{broker::Broker, gateway::Gateway, Address, CborCodec, MemoryTransport};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use support::{memory_client, provide_add};
use tokio_tungstenite::tungstenite::Message;

/// Chromium, killed when dropped.
struct Browser(Child);

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One page of the browser, over the DevTools protocol.
struct Page {
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
}

impl Page {
    /// Send `method` with `params`; its result.
    async fn command(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let sent = json!({"id": id, "method": method, "params": params});
        self.socket
            .send(Message::text(sent.to_string()))
            .await
            .unwrap();
        loop {
            let message = tokio::time::timeout(Duration::from_secs(30), self.socket.next())
                .await
                .expect("the browser answers within 30 s")
                .expect("the DevTools socket is open")
                .unwrap();
            let Message::Text(text) = message else {
                continue;
            };
            let answer: Value = serde_json::from_str(&text).unwrap();
            if answer["id"] == id {
                assert!(answer["error"].is_null(), "{method}: {answer}");
                return answer["result"].clone();
            }
        }
    }

    /// The text of the element `id` on the page.
    async fn text_of(&mut self, id: &str) -> String {
        let expression = format!("document.getElementById('{id}').innerText");
        let result = self
            .command(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true}),
            )
            .await;
        result["result"]["value"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|name| {
            Command::new(name)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
}

/// Start headless Chromium; it and its DevTools address.
fn start_browser(program: &str, profile: &std::path::Path) -> (Browser, String) {
    let mut child = Command::new(program)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--remote-debugging-port=0",
            "--window-size=1280,900",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium starts");
    let stderr = child.stderr.take().unwrap();
    let browser = Browser(child);
    // "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/..."
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(at) = line.find("ws://") {
                let _ = tx.send(line[at..].to_owned());
            }
        }
    });
    let browser_url = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("chromium says where DevTools listen");
    let http = browser_url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    (browser, http)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_a_new_provider_live() {
    let Some(program) = chromium() else {
        assert!(
            std::env::var_os("BUSLINE_REQUIRE_CHROMIUM").is_none(),
            "BUSLINE_REQUIRE_CHROMIUM is set and there is no chromium"
        );
        eprintln!("skipped: no chromium here (apt-get install chromium)");
        return;
    };
    let broker = Broker::builder()
        .listen(
            MemoryTransport::new(),
            Address::memory(format!("browser-{}", std::process::id())),
            CborCodec::new(),
        )
        .start()
        .await
        .unwrap();
    let addr = broker.local_addrs()[0].clone();
    let gateway = Gateway::builder(memory_client(&addr).await).build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move { gateway.serve(listener, std::future::pending()).await });

    let profile = tempfile::tempdir().unwrap();
    let (_browser, devtools) = start_browser(program, profile.path());
    let targets: Value = reqwest::get(format!("http://{devtools}/json/list"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let page_url = targets
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["type"] == "page")
        .and_then(|t| t["webSocketDebuggerUrl"].as_str())
        .expect("a page to drive")
        .to_owned();
    let (socket, _) = tokio_tungstenite::connect_async(page_url).await.unwrap();
    let mut page = Page { socket, next_id: 0 };
    page.command("Page.enable", json!({})).await;
    page.command("Page.navigate", json!({"url": url})).await;

    // The page is live before the provider exists; then it shows it.
    let mut seen = String::new();
    for _ in 0..100 {
        seen = page.text_of("state").await;
        if seen == "live" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, "live", "the page never received a status");
    assert!(!page.text_of("channels").await.contains("add"));
    let provider = memory_client(&addr).await;
    provide_add(&provider.open("math-in-browser").await.unwrap()).await;
    let mut channels = String::new();
    for _ in 0..100 {
        channels = page.text_of("channels").await;
        if channels.contains("math-in-browser") && channels.contains("add (#") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        channels.contains("math-in-browser") && channels.contains("add (#"),
        "the provider never showed: {channels:?}"
    );

    let shot = page
        .command("Page.captureScreenshot", json!({"format": "png"}))
        .await;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().unwrap())
        .unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("gateway-status.png");
    std::fs::write(&path, png).unwrap();
    eprintln!("screenshot: {}", path.display());
    broker.shutdown().await;
}
