//! The HTTP(S) client of the Matomo API source: one form `POST` at a time to one endpoint,
//! over one kept-alive connection (tokio, and the rustls with ring and the web roots the
//! tree already has), gzip answers decoded, every request bounded by a timeout.
//!
//! Built once per run and passed down. It speaks just the HTTP/1.1 the Reporting API needs:
//! `Content-Length` or chunked answers, `Connection: close`, no redirects (a POST redirected
//! loses its body: the error names the new location instead). The form body is the only place
//! the token travels; the URL never carries it.

use std::io::Read as _;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Largest answer accepted (a page is held in memory whole).
const MAX_BODY: usize = 512 * 1024 * 1024;

/// Why a request got no answer, or an answer that is not HTTP.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum HttpError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The connection broke while sending or receiving (a reset, an early close).
    #[error("connection lost: {0}")]
    Broken(String),
    #[error("{0}")]
    Protocol(String),
}

impl HttpError {
    /// Worth another try: the server may answer next time.
    pub(crate) fn is_transient(&self) -> bool {
        !matches!(self, HttpError::Protocol(_))
    }
}

/// An answer.
#[derive(Debug)]
pub(crate) struct HttpResponse {
    pub(crate) status: u16,
    pub(crate) body: Vec<u8>,
    /// `Location`, for a redirect's message.
    pub(crate) location: Option<String>,
}

/// Where requests go, parsed once from `MATOMO_URL`'s endpoint.
#[derive(Clone)]
struct Target {
    tls: bool,
    /// Host as written, IPv6 without brackets.
    host: String,
    port: u16,
    /// Path and query for the request line.
    path: String,
    /// `Basic ...` when the URL carries `user:password@`.
    authorization: Option<String>,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

type Connection = BufReader<Box<dyn Io>>;

/// One endpoint, one connection reused while the server keeps it open.
pub(crate) struct HttpClient {
    target: Target,
    timeout: Duration,
    tls: Option<tokio_rustls::TlsConnector>,
    connection: tokio::sync::Mutex<Option<Connection>>,
}

impl HttpClient {
    /// A client for `endpoint` (`http(s)://[user:password@]host[:port]/path`).
    pub(crate) fn new(endpoint: &str, timeout: Duration) -> Result<HttpClient, String> {
        let target = parse_target(endpoint)?;
        let tls = target.tls.then(tls_connector).transpose()?;
        Ok(HttpClient {
            target,
            timeout,
            tls,
            connection: tokio::sync::Mutex::new(None),
        })
    }

    /// `POST`s `form` (URL-encoded) and returns the answer, whatever its status.
    pub(crate) async fn post_form(&self, form: &[(&str, &str)]) -> Result<HttpResponse, HttpError> {
        let body = encode_form(form);
        let mut slot = self.connection.lock().await;
        let reused = slot.is_some();
        let result = tokio::time::timeout(self.timeout, self.exchange(&mut slot, &body)).await;
        let result = match result {
            Ok(Err(HttpError::Broken(_))) if reused => {
                // The server closed a kept-alive connection meanwhile: once more, on a new one.
                *slot = None;
                tokio::time::timeout(self.timeout, self.exchange(&mut slot, &body)).await
            }
            other => other,
        };
        match result {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => {
                *slot = None;
                Err(e)
            }
            Err(_) => {
                *slot = None;
                Err(HttpError::Timeout(self.timeout))
            }
        }
    }

    async fn exchange(
        &self,
        slot: &mut Option<Connection>,
        body: &str,
    ) -> Result<HttpResponse, HttpError> {
        if slot.is_none() {
            *slot = Some(self.connect().await?);
        }
        let Some(connection) = slot.as_mut() else {
            return Err(HttpError::Connect("no connection".into()));
        };
        let t = &self.target;
        let host = if t.host.contains(':') {
            format!("[{}]", t.host)
        } else {
            t.host.clone()
        };
        let default_port = if t.tls { 443 } else { 80 };
        let host = if t.port == default_port {
            host
        } else {
            format!("{host}:{}", t.port)
        };
        let authorization = t
            .authorization
            .as_ref()
            .map_or_else(String::new, |a| format!("Authorization: {a}\r\n"));
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: etl/{}\r\nAccept: application/json\r\n\
             Accept-Encoding: gzip\r\n{authorization}Content-Type: application/x-www-form-urlencoded\r\n\
             Content-Length: {}\r\n\r\n",
            t.path,
            env!("CARGO_PKG_VERSION"),
            body.len()
        );
        let broken = |e: std::io::Error| HttpError::Broken(e.to_string());
        let stream = connection.get_mut();
        stream.write_all(head.as_bytes()).await.map_err(broken)?;
        stream.write_all(body.as_bytes()).await.map_err(broken)?;
        stream.flush().await.map_err(broken)?;
        let (response, keep) = read_response(connection).await?;
        if !keep {
            *slot = None;
        }
        Ok(response)
    }

    async fn connect(&self) -> Result<Connection, HttpError> {
        let t = &self.target;
        let tcp = TcpStream::connect((t.host.as_str(), t.port))
            .await
            .map_err(|e| HttpError::Connect(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let stream: Box<dyn Io> = match &self.tls {
            None => Box::new(tcp),
            Some(connector) => {
                let name = rustls::pki_types::ServerName::try_from(t.host.clone())
                    .map_err(|e| HttpError::Connect(format!("TLS server name: {e}")))?;
                Box::new(
                    connector
                        .connect(name, tcp)
                        .await
                        .map_err(|e| HttpError::Connect(format!("TLS: {e}")))?,
                )
            }
        };
        Ok(BufReader::with_capacity(64 * 1024, stream))
    }
}

/// TLS with the ring provider and the web roots (the server's certificate is checked).
fn tls_connector() -> Result<tokio_rustls::TlsConnector, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

fn parse_target(endpoint: &str) -> Result<Target, String> {
    let (scheme, rest) = endpoint
        .split_once("://")
        .ok_or("MATOMO_URL has no scheme")?;
    let tls = match scheme {
        "https" => true,
        "http" => false,
        _ => return Err("MATOMO_URL is not an http(s) URL".into()),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or("MATOMO_URL: unclosed `[`")?;
        (host, after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    let port = match port {
        None | Some("") => {
            if tls {
                443
            } else {
                80
            }
        }
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| "MATOMO_URL: the port is not a number from 1 to 65535".to_string())?,
    };
    if host.is_empty() {
        return Err("MATOMO_URL has no host".into());
    }
    let authorization = userinfo.map(|info| {
        let decoded = crate::percent::decode_utf8(info).unwrap_or_else(|| info.to_string());
        format!("Basic {}", base64(decoded.as_bytes()))
    });
    Ok(Target {
        tls,
        host: host.to_string(),
        port,
        path: path.to_string(),
        authorization,
    })
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                let index = usize::try_from((n >> shift) & 63).unwrap_or(0);
                out.push(char::from(ALPHABET[index]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `application/x-www-form-urlencoded`.
pub(crate) fn encode_form(form: &[(&str, &str)]) -> String {
    let encode = |text: &str| -> String {
        text.bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => {
                    char::from(b).to_string()
                }
                b' ' => "+".to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    form.iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Longest status, header or chunk-size line, and most header lines, accepted: a server
/// cannot make the client hold an unbounded head.
const MAX_LINE: u64 = 64 * 1024;
const MAX_HEADERS: usize = 256;

/// One line of the answer's head (with its line end); empty at the end of the connection.
async fn read_head_line(connection: &mut Connection) -> Result<String, HttpError> {
    let mut line = String::new();
    let n = (&mut *connection)
        .take(MAX_LINE)
        .read_line(&mut line)
        .await
        .map_err(|e| HttpError::Broken(e.to_string()))?;
    if u64::try_from(n).unwrap_or(u64::MAX) >= MAX_LINE && !line.ends_with('\n') {
        return Err(HttpError::Protocol(format!(
            "a line of the answer's head is longer than {} KiB",
            MAX_LINE / 1024
        )));
    }
    Ok(line)
}

/// Reads one answer; also says whether the connection may be reused.
async fn read_response(connection: &mut Connection) -> Result<(HttpResponse, bool), HttpError> {
    let broken = |e: std::io::Error| HttpError::Broken(e.to_string());
    let line = read_head_line(connection).await?;
    if line.is_empty() {
        return Err(HttpError::Broken("closed before answering".into()));
    }
    let mut parts = line.split_whitespace();
    let version = parts.next().unwrap_or_default();
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|_| version.starts_with("HTTP/1."))
        .ok_or_else(|| HttpError::Protocol("the server did not answer in HTTP/1.x".into()))?;
    let mut length: Option<usize> = None;
    let (mut chunked, mut gzip, mut keep) = (false, false, version == "HTTP/1.1");
    let mut location = None;
    for count in 0.. {
        if count > MAX_HEADERS {
            return Err(HttpError::Protocol(format!(
                "more than {MAX_HEADERS} header lines"
            )));
        }
        let header = read_head_line(connection).await?;
        if header.is_empty() {
            return Err(HttpError::Broken("closed inside the headers".into()));
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        let Some((name, value)) = header.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
        match name.as_str() {
            "content-length" => {
                length = Some(
                    value
                        .parse()
                        .map_err(|_| HttpError::Protocol("an invalid Content-Length".into()))?,
                )
            }
            "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
            "content-encoding" => gzip = value.to_ascii_lowercase().contains("gzip"),
            "connection" => match value.to_ascii_lowercase().as_str() {
                "close" => keep = false,
                "keep-alive" => keep = true,
                _ => {}
            },
            "location" => location = Some(value.to_string()),
            _ => {}
        }
    }
    let too_big = || {
        HttpError::Protocol(format!(
            "an answer larger than {} MiB: lower MATOMO_API_PAGE_SIZE",
            MAX_BODY / (1024 * 1024)
        ))
    };
    let mut body = Vec::new();
    if chunked {
        loop {
            let size = read_head_line(connection).await?;
            let size = size.trim().split(';').next().unwrap_or_default();
            let size = usize::from_str_radix(size, 16)
                .map_err(|_| HttpError::Protocol("an invalid chunk size".into()))?;
            if size == 0 {
                // Trailers, up to the empty line.
                for _ in 0..=MAX_HEADERS {
                    let trailer = read_head_line(connection).await?;
                    if trailer.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
            if body.len().saturating_add(size) > MAX_BODY {
                return Err(too_big());
            }
            let start = body.len();
            body.resize(start + size, 0);
            connection
                .read_exact(&mut body[start..])
                .await
                .map_err(broken)?;
            let mut crlf = [0u8; 2];
            connection.read_exact(&mut crlf).await.map_err(broken)?;
        }
    } else if let Some(n) = length {
        if n > MAX_BODY {
            return Err(too_big());
        }
        body.resize(n, 0);
        connection.read_exact(&mut body).await.map_err(broken)?;
    } else {
        // No length: the body runs to the end of the connection.
        connection
            .take(u64::try_from(MAX_BODY).unwrap_or(u64::MAX) + 1)
            .read_to_end(&mut body)
            .await
            .map_err(broken)?;
        if body.len() > MAX_BODY {
            return Err(too_big());
        }
        keep = false;
    }
    if gzip {
        let mut decoded = Vec::new();
        flate2::read::GzDecoder::new(body.as_slice())
            .take(u64::try_from(MAX_BODY).unwrap_or(u64::MAX) + 1)
            .read_to_end(&mut decoded)
            .map_err(|e| HttpError::Broken(format!("gzip: {e}")))?;
        if decoded.len() > MAX_BODY {
            return Err(too_big());
        }
        body = decoded;
    }
    Ok((
        HttpResponse {
            status,
            body,
            location,
        },
        keep,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_forms() {
        let t = parse_target("https://u:p%40ss@matomo.example/stats/index.php").unwrap();
        assert!(t.tls);
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("matomo.example", 443, "/stats/index.php")
        );
        assert_eq!(t.authorization.as_deref(), Some("Basic dTpwQHNz"));
        let t = parse_target("http://[::1]:8080/index.php").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 8080));
        assert!(parse_target("http://h:99999/").is_err());
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"abc"), "YWJj");
        assert_eq!(base64(b"a"), "YQ==");
        assert_eq!(
            encode_form(&[("token_auth", "a b&c=d/é"), ("date", "2024-03-01")]),
            "token_auth=a+b%26c%3Dd%2F%C3%A9&date=2024-03-01"
        );
    }

    /// A loopback server that answers each connection's first request with `answer`.
    async fn serve_once(answer: Vec<u8>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let answer = answer.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let _ = socket.read(&mut buf).await;
                    let _ = socket.write_all(&answer).await;
                });
            }
        });
        format!("http://127.0.0.1:{port}/index.php")
    }

    #[tokio::test]
    async fn chunked_answers_are_read_and_hostile_heads_refused() {
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n4\r\n[1,2\r\n2;ext=1\r\n,3\r\n1\r\n]\r\n0\r\nX-Trailer: y\r\n\r\n";
        let client =
            HttpClient::new(&serve_once(chunked.to_vec()).await, Duration::from_secs(5)).unwrap();
        let answer = client.post_form(&[("a", "b")]).await.unwrap();
        assert_eq!(
            (answer.status, answer.body.as_slice()),
            (200, b"[1,2,3]".as_slice())
        );

        let mut endless = b"HTTP/1.1 200 OK\r\nX-Long: ".to_vec();
        endless.extend(std::iter::repeat_n(b'a', 1 << 20));
        let client = HttpClient::new(&serve_once(endless).await, Duration::from_secs(5)).unwrap();
        let err = client.post_form(&[("a", "b")]).await.unwrap_err();
        assert!(
            matches!(&err, HttpError::Protocol(m) if m.contains("longer than 64 KiB")),
            "{err}"
        );

        let huge_chunk =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffff\r\n".to_vec();
        let client =
            HttpClient::new(&serve_once(huge_chunk).await, Duration::from_secs(5)).unwrap();
        let err = client.post_form(&[("a", "b")]).await.unwrap_err();
        assert!(
            err.to_string().contains("lower MATOMO_API_PAGE_SIZE"),
            "{err}"
        );

        let not_http = b"SSH-2.0-OpenSSH\r\n".to_vec();
        let client = HttpClient::new(&serve_once(not_http).await, Duration::from_secs(5)).unwrap();
        let err = client.post_form(&[("a", "b")]).await.unwrap_err();
        assert!(
            err.to_string().contains("did not answer in HTTP/1.x"),
            "{err}"
        );
    }
}
