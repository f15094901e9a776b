//! A real browser for tests: Debian's headless Chromium driven by `chromedriver` over the
//! W3C WebDriver protocol (a handful of JSON calls, so no client crate). `*.example.com`
//! resolves to 127.0.0.1 inside the browser; certificates are not checked (development
//! certificates); background networking is off, so the browser makes no request a test did
//! not ask for.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use serde_json::{Value, json};

use super::client::{body, http1};

/// The key WebDriver names elements by.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A browser session; the browser and its driver stop when it is dropped.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session.
    pub async fn start() -> Browser {
        let chromedriver = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("chromedriver is installed (apt-get install chromium chromium-driver; .ci/run does it)");
        let port = free_port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let mut b = Browser { driver, base: format!("http://127.0.0.1:{port}"), session: String::new() };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(v) = b.try_call("GET", "/status", None).await {
                if v["value"]["ready"] == true {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "chromedriver did not become ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-background-networking", "--disable-dev-shm-usage",
                         "--disable-gpu", "--no-first-run", "--window-size=1280,1000",
                         "--host-resolver-rules=MAP *.example.com 127.0.0.1"]
            }
        }}});
        let v = b.call("POST", "/session", Some(caps)).await;
        b.session = v["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {v}")).to_string();
        b
    }

    async fn try_call(&self, method: &str, path: &str, payload: Option<Value>) -> Option<Value> {
        let req = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body(payload.map(|p| p.to_string()).unwrap_or_default()))
            .ok()?;
        let r = tokio::time::timeout(Duration::from_secs(60), http1().request(req)).await.ok()?.ok()?;
        let bytes = r.into_body().collect().await.ok()?.to_bytes();
        serde_json::from_slice(&bytes).ok()
    }

    async fn call(&self, method: &str, path: &str, payload: Option<Value>) -> Value {
        let v =
            self.try_call(method, path, payload).await.unwrap_or_else(|| panic!("webdriver {method} {path} failed"));
        if v["value"].get("error").is_some() {
            panic!("webdriver {method} {path}: {}", v["value"]);
        }
        v
    }

    fn at(&self, path: &str) -> String {
        format!("/session/{}{path}", self.session)
    }

    /// Opens `url`.
    pub async fn goto(&self, url: &str) {
        self.call("POST", &self.at("/url"), Some(json!({"url": url}))).await;
    }

    /// The current URL.
    pub async fn url(&self) -> String {
        self.call("GET", &self.at("/url"), None).await["value"].as_str().unwrap_or("").to_string()
    }

    /// The page's HTML.
    pub async fn source(&self) -> String {
        self.call("GET", &self.at("/source"), None).await["value"].as_str().unwrap_or("").to_string()
    }

    /// The first element matching `css`, waiting up to 10 s for it.
    pub async fn find(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v =
                self.try_call("POST", &self.at("/element"), Some(json!({"using": "css selector", "value": css}))).await;
            if let Some(id) = v.as_ref().and_then(|v| v["value"][ELEMENT].as_str()) {
                return id.to_string();
            }
            if Instant::now() > deadline {
                let src = self.source().await;
                panic!("no element {css:?} on {} ({v:?}); the page:\n{}", self.url().await, &src[..src.len().min(300)]);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Types `text` into the element matching `css` (cleared first).
    pub async fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css).await;
        self.call("POST", &self.at(&format!("/element/{id}/clear")), Some(json!({}))).await;
        self.call("POST", &self.at(&format!("/element/{id}/value")), Some(json!({"text": text}))).await;
    }

    /// Clicks the element matching `css`.
    pub async fn click(&self, css: &str) {
        let id = self.find(css).await;
        self.call("POST", &self.at(&format!("/element/{id}/click")), Some(json!({}))).await;
    }

    /// The visible text of the element matching `css`.
    pub async fn text(&self, css: &str) -> String {
        let id = self.find(css).await;
        self.call("GET", &self.at(&format!("/element/{id}/text")), None).await["value"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// The text of `css` now, if it is on the page (none while the page is changing).
    async fn text_now(&self, css: &str) -> Option<String> {
        let v =
            self.try_call("POST", &self.at("/element"), Some(json!({"using": "css selector", "value": css}))).await?;
        let id = v["value"][ELEMENT].as_str()?.to_string();
        let t = self.try_call("GET", &self.at(&format!("/element/{id}/text")), None).await?;
        t["value"].as_str().map(str::to_string)
    }

    /// Waits up to `limit` until the text of `css` contains `needle` (across page loads);
    /// the text.
    pub async fn wait_text(&self, css: &str, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let t = self.text_now(css).await.unwrap_or_default();
            if t.contains(needle) {
                return t;
            }
            assert!(Instant::now() < deadline, "{css:?} never showed {needle:?}; it shows {t:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs `script` in the page; its result.
    pub async fn execute(&self, script: &str) -> Value {
        self.call("POST", &self.at("/execute/sync"), Some(json!({"script": script, "args": []}))).await["value"].clone()
    }

    /// Saves a PNG screenshot of the page to `path`.
    pub async fn screenshot(&self, path: &std::path::Path) {
        use base64::Engine;
        let v = self.call("GET", &self.at("/screenshot"), None).await;
        let png = base64::engine::general_purpose::STANDARD.decode(v["value"].as_str().unwrap_or("")).unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }
}
