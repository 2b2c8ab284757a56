//! A Matomo Reporting API on loopback for the tests: a small HTTP/1.1 server (keep-alive,
//! gzip when asked) answering `POST /index.php` with `Live.getLastVisitsDetails` (paging by
//! `filter_offset` / `filter_limit` over the visits the test put for a site and day) and
//! `SitesManager.getSiteFromId` (the site's time zone), checking `token_auth` in the POST
//! body. Faults are set per page: a 503 that succeeds on retry, a slow answer, a dropped
//! connection, an error body (`{"result":"error"}`, HTML). Every request is recorded, so a
//! test can assert where the token travelled.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// One page of one site and day: `(site, day, filter_offset)`.
pub type PageKey = (u32, String, usize);

/// What the server does for a page instead of answering it.
#[derive(Debug, Clone)]
pub enum Fault {
    /// `503 Service Unavailable` this many times, then the page.
    Unavailable(u32),
    /// Wait this long before answering (every time).
    Slow(Duration),
    /// Close the connection without an answer this many times, then the page.
    Reset(u32),
    /// Answer 200 with this body, every time.
    Body(String),
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// Path and query, as on the request line.
    pub target: String,
    pub headers: Vec<(String, String)>,
    /// The form fields of the body, decoded.
    pub form: BTreeMap<String, String>,
    /// The body as received.
    pub body: String,
}

#[derive(Default)]
pub struct State {
    pub token: String,
    /// Visits per `(site, day)`, in the order the API lists them.
    pub visits: BTreeMap<(u32, String), Vec<Value>>,
    /// Time zone per site (`SitesManager.getSiteFromId`); sites not listed do not exist.
    pub sites: BTreeMap<u32, String>,
    pub faults: HashMap<PageKey, Fault>,
    pub requests: Vec<Request>,
}

/// A running server; stops with the test process.
pub struct MatomoApiServer {
    pub port: u16,
    pub state: Arc<Mutex<State>>,
}

impl MatomoApiServer {
    /// Starts on an ephemeral loopback port, with its own runtime on a background thread.
    pub fn start(token: &str) -> MatomoApiServer {
        let state = Arc::new(Mutex::new(State {
            token: token.to_string(),
            ..Default::default()
        }));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let shared = state.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = TcpListener::from_std(listener).unwrap();
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    tokio::spawn(serve(stream, shared.clone()));
                }
            });
        });
        MatomoApiServer { port, state }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    pub fn requests(&self) -> Vec<Request> {
        self.with(|s| s.requests.clone())
    }
}

async fn serve(stream: TcpStream, state: Arc<Mutex<State>>) {
    let mut stream = BufReader::new(stream);
    while let Some(request) = read_request(&mut stream).await {
        let gzip = request
            .headers
            .iter()
            .any(|(k, v)| k == "accept-encoding" && v.contains("gzip"));
        let answer = answer(&request, &state);
        state.lock().unwrap().requests.push(request);
        let (status, body) = match answer {
            Answer::Drop => return,
            Answer::Wait(delay, status, body) => {
                tokio::time::sleep(delay).await;
                (status, body)
            }
            Answer::Now(status, body) => (status, body),
        };
        let (body, encoding) = if gzip {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            encoder.write_all(body.as_bytes()).unwrap();
            (encoder.finish().unwrap(), "Content-Encoding: gzip\r\n")
        } else {
            (body.into_bytes(), "")
        };
        let kind = if body.starts_with(b"<") {
            "text/html"
        } else {
            "application/json"
        };
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {kind}; charset=utf-8\r\n{encoding}Content-Length: {}\r\n\r\n",
            body.len()
        );
        let socket = stream.get_mut();
        if socket.write_all(head.as_bytes()).await.is_err()
            || socket.write_all(&body).await.is_err()
        {
            return;
        }
    }
}

enum Answer {
    Now(&'static str, String),
    Wait(Duration, &'static str, String),
    Drop,
}

const OK: &str = "200 OK";

fn answer(request: &Request, state: &Mutex<State>) -> Answer {
    let mut state = state.lock().unwrap();
    let form = &request.form;
    if request.method != "POST" {
        return Answer::Now("405 Method Not Allowed", "<html>POST only</html>".into());
    }
    let site: u32 = form.get("idSite").and_then(|s| s.parse().ok()).unwrap_or(0);
    if form.get("token_auth") != Some(&state.token) {
        let message = format!(
            "You can't access this resource as it requires 'view' access for the website id = {site}."
        );
        return Answer::Now(
            OK,
            json!({"result": "error", "message": message}).to_string(),
        );
    }
    match form.get("method").map(String::as_str) {
        Some("SitesManager.getSiteFromId") => match state.sites.get(&site) {
            Some(tz) => Answer::Now(
                OK,
                json!({"idsite": site.to_string(), "name": format!("Site {site}"), "timezone": tz})
                    .to_string(),
            ),
            None => Answer::Now(
                OK,
                json!({"result": "error", "message": format!("An unexpected website was found in the request: website id was set to '{site}' .")}).to_string(),
            ),
        },
        Some("Live.getLastVisitsDetails") => {
            let day = form.get("date").cloned().unwrap_or_default();
            let offset: usize = form
                .get("filter_offset")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let limit: usize = form
                .get("filter_limit")
                .and_then(|s| s.parse().ok())
                .unwrap_or(100);
            let key = (site, day.clone(), offset);
            let page = || {
                let visits = state.visits.get(&(site, day.clone()));
                let page: Vec<&Value> = visits
                    .map(|v| v.iter().skip(offset).take(limit).collect())
                    .unwrap_or_default();
                serde_json::to_string(&page).unwrap()
            };
            let body = page();
            match state.faults.get_mut(&key) {
                Some(Fault::Unavailable(n)) if *n > 0 => {
                    *n -= 1;
                    Answer::Now("503 Service Unavailable", "<html>busy</html>".into())
                }
                Some(Fault::Reset(n)) if *n > 0 => {
                    *n -= 1;
                    Answer::Drop
                }
                Some(Fault::Slow(delay)) => Answer::Wait(*delay, OK, body),
                Some(Fault::Body(text)) => Answer::Now(OK, text.clone()),
                _ => Answer::Now(OK, body),
            }
        }
        other => Answer::Now(
            OK,
            json!({"result": "error", "message": format!("The method '{other:?}' does not exist")})
                .to_string(),
        ),
    }
}

async fn read_request(stream: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    if stream.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut headers = Vec::new();
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        stream.read_line(&mut header).await.ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':')?;
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim().to_string());
        if name == "content-length" {
            length = value.parse().ok()?;
        }
        headers.push((name, value));
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await.ok()?;
    let body = String::from_utf8_lossy(&body).into_owned();
    let form = body
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (form_decode(k), form_decode(v)))
        .collect();
    Some(Request {
        method,
        target,
        headers,
        form,
        body,
    })
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte.
pub fn form_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(
                    std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"),
                    16,
                ) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
