//! Connection settings from the environment (and a `.env` file), with the Python tool's names.
//!
//! Passwords live only in these structs and the drivers' own config: `Debug` and `Display`
//! print everything but the password, so a setting can be logged or put in an error.

use std::fmt;
use std::path::Path;

/// Reads `KEY=VALUE` lines of a `.env` file into the environment; variables already set win.
/// A missing file is fine. Lines: `# comment`, `export KEY=VALUE`, values optionally quoted.
pub fn load_dotenv(path: &Path) {
    let Ok(text) = std::fs::read_to_string(path) else {
        return;
    };
    for line in text.lines() {
        let line = line.trim();
        let line = line.strip_prefix("export ").unwrap_or(line);
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim();
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(value);
        if !key.is_empty() && std::env::var_os(key).is_none() {
            std::env::set_var(key, value);
        }
    }
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn default_sslmode() -> String {
    var("POSTGRES_SSLMODE")
        .or_else(|| var("PGSSLMODE"))
        .unwrap_or_else(|| "prefer".into())
}

fn default_sslrootcert() -> Option<String> {
    var("POSTGRES_SSLROOTCERT").or_else(|| var("PGSSLROOTCERT"))
}

/// PostgreSQL target: `DATABASE_URL`, or `POSTGRES_HOST/PORT/DATABASE/USER/PASSWORD`.
#[derive(Clone)]
pub struct PostgresSettings {
    pub host: String,
    pub port: u16,
    pub database: String,
    pub user: String,
    password: Option<String>,
    /// `sslmode` from DATABASE_URL or POSTGRES_SSLMODE / PGSSLMODE (`disable`, `prefer`,
    /// `require`, `verify-ca`, `verify-full`; default `prefer`).
    pub sslmode: String,
    /// CA certificate (PEM) for `verify-*`: `sslrootcert` in DATABASE_URL, or
    /// POSTGRES_SSLROOTCERT / PGSSLROOTCERT.
    pub sslrootcert: Option<String>,
}

impl PostgresSettings {
    pub fn from_env() -> Result<PostgresSettings, String> {
        if let Some(url) = var("DATABASE_URL") {
            return Self::from_url(&url);
        }
        let port = var("POSTGRES_PORT").unwrap_or_else(|| "5432".into());
        Ok(PostgresSettings {
            host: var("POSTGRES_HOST").unwrap_or_else(|| "localhost".into()),
            port: port
                .parse()
                .map_err(|_| format!("POSTGRES_PORT `{port}` is not a port number"))?,
            database: var("POSTGRES_DATABASE").unwrap_or_else(|| "postgres".into()),
            user: var("POSTGRES_USER").unwrap_or_else(|| "postgres".into()),
            password: var("POSTGRES_PASSWORD"),
            sslmode: default_sslmode(),
            sslrootcert: default_sslrootcert(),
        })
    }

    /// Parses `postgres://user:pass@host:port/db?sslmode=...`.
    pub fn from_url(url: &str) -> Result<PostgresSettings, String> {
        let parts = UrlParts::parse(url, &["postgres", "postgresql"])?;
        let sslmode = parts.query("sslmode").unwrap_or_else(default_sslmode);
        let sslrootcert = parts.query("sslrootcert").or_else(default_sslrootcert);
        Ok(PostgresSettings {
            host: parts.host,
            port: parts.port.unwrap_or(5432),
            database: parts.path.unwrap_or_else(|| "postgres".into()),
            user: parts.user.unwrap_or_else(|| "postgres".into()),
            password: parts.password,
            sslmode,
            sslrootcert,
        })
    }

    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// Connects (the connection task runs on the tokio runtime), with TLS as `sslmode`
    /// says. Errors never carry the password: tokio-postgres does not print it.
    pub async fn connect(&self) -> Result<tokio_postgres::Client, String> {
        use tokio_postgres::config::SslMode;
        let mut pg = tokio_postgres::Config::new();
        pg.host(&self.host)
            .port(self.port)
            .user(&self.user)
            .dbname(&self.database);
        pg.connect_timeout(std::time::Duration::from_secs(10));
        if let Some(password) = self.password() {
            pg.password(password);
        }
        let root_cert = self.sslrootcert.as_deref().map(std::path::Path::new);
        match crate::tls::connector(&self.sslmode, root_cert)? {
            None => {
                pg.ssl_mode(SslMode::Disable);
                let (client, connection) = pg
                    .connect(tokio_postgres::NoTls)
                    .await
                    .map_err(|e| error_text(&e))?;
                tokio::spawn(async move { log_connection_end(connection.await) });
                Ok(client)
            }
            Some(tls) => {
                pg.ssl_mode(match self.sslmode.as_str() {
                    "allow" | "prefer" => SslMode::Prefer,
                    _ => SslMode::Require,
                });
                let (client, connection) = pg.connect(tls).await.map_err(|e| error_text(&e))?;
                tokio::spawn(async move { log_connection_end(connection.await) });
                Ok(client)
            }
        }
    }
}

/// A PostgreSQL error with its cause: the server's message, or the chain of sources (TLS
/// errors hide the reason there).
pub fn error_text(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {}", db.severity(), db.message());
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

fn log_connection_end(result: Result<(), tokio_postgres::Error>) {
    if let Err(e) = result {
        tracing::error!("PostgreSQL connection: {e}");
    }
}

impl fmt::Display for PostgresSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "postgres://{}@{}:{}/{}",
            self.user, self.host, self.port, self.database
        )
    }
}

impl fmt::Debug for PostgresSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PostgresSettings({self}, sslmode={})", self.sslmode)
    }
}

/// Matomo source: `MATOMO_HOST/PORT/DATABASE/USER/PASSWORD`.
#[derive(Clone)]
pub struct MatomoSettings {
    pub host: String,
    pub port: u16,
    pub database: String,
    pub user: String,
    password: Option<String>,
}

impl MatomoSettings {
    pub fn from_env() -> Result<MatomoSettings, String> {
        let port = var("MATOMO_PORT").unwrap_or_else(|| "3306".into());
        Ok(MatomoSettings {
            host: var("MATOMO_HOST").unwrap_or_else(|| "localhost".into()),
            port: port
                .parse()
                .map_err(|_| format!("MATOMO_PORT `{port}` is not a port number"))?,
            database: var("MATOMO_DATABASE").unwrap_or_else(|| "matomo".into()),
            user: var("MATOMO_USER").unwrap_or_else(|| "root".into()),
            password: var("MATOMO_PASSWORD"),
        })
    }

    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }
}

impl fmt::Display for MatomoSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "mysql://{}@{}:{}/{}",
            self.user, self.host, self.port, self.database
        )
    }
}

impl fmt::Debug for MatomoSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MatomoSettings({self})")
    }
}

/// Live MongoDB source: `MONGODB_URL`, `MONGODB_DATABASE`.
#[derive(Clone)]
pub struct MongoSettings {
    url: String,
    pub database: String,
}

impl MongoSettings {
    pub fn from_env() -> MongoSettings {
        MongoSettings {
            url: var("MONGODB_URL").unwrap_or_else(|| "mongodb://localhost:27017".into()),
            database: var("MONGODB_DATABASE").unwrap_or_else(|| "default".into()),
        }
    }

    /// The URL with its password, for the driver only.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL without its password, for messages.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }

    /// `text` with the URL's password replaced, for driver errors that might quote it.
    pub fn scrub(&self, text: &str) -> String {
        let full = &self.url;
        let redacted = self.redacted_url();
        let text = text.replace(full.as_str(), &redacted);
        match url_password(full) {
            Some(p) if !p.is_empty() => text.replace(&p, "***"),
            _ => text,
        }
    }
}

impl fmt::Debug for MongoSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "MongoSettings({}, db={})",
            self.redacted_url(),
            self.database
        )
    }
}

/// `scheme://user:secret@host` -> `scheme://user:***@host`.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => match rest[..at].find(':') {
            Some(colon) => format!(
                "{}{}:***{}",
                &url[..scheme_end + 3],
                &rest[..colon],
                &rest[at..]
            ),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

fn url_password(url: &str) -> Option<String> {
    UrlParts::parse(url, &["mongodb", "mongodb+srv"])
        .ok()
        .and_then(|p| p.password)
}

struct UrlParts {
    user: Option<String>,
    password: Option<String>,
    host: String,
    port: Option<u16>,
    path: Option<String>,
    query: Vec<(String, String)>,
}

impl UrlParts {
    fn parse(url: &str, schemes: &[&str]) -> Result<UrlParts, String> {
        let shown = redact_url(url);
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| format!("`{shown}` is not a URL"))?;
        if !schemes.contains(&scheme) {
            return Err(format!("`{shown}`: expected a {} URL", schemes[0]));
        }
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            Some(info) => match info.split_once(':') {
                Some((u, p)) => (Some(percent_decode(u)), Some(percent_decode(p))),
                None => (Some(percent_decode(info)), None),
            },
            None => (None, None),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (
                h,
                Some(
                    p.parse::<u16>()
                        .map_err(|_| format!("`{shown}`: bad port `{p}`"))?,
                ),
            ),
            None => (hostport, None),
        };
        Ok(UrlParts {
            user: user.filter(|u| !u.is_empty()),
            password,
            host: if host.is_empty() {
                "localhost".into()
            } else {
                host.into()
            },
            port,
            path: (!path.is_empty()).then(|| percent_decode(path)),
            query: query
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), percent_decode(v)))
                .collect(),
        })
    }

    fn query(&self, key: &str) -> Option<String> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }
}

/// Lossy for now: the one decoder is `crate::percent`.
fn percent_decode(s: &str) -> String {
    String::from_utf8_lossy(&crate::percent::decode_bytes(s)).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_url_is_parsed_and_password_never_shown() {
        let s = PostgresSettings::from_url(
            "postgres://bob:s%40cret@db.example:6543/app?sslmode=require",
        )
        .unwrap();
        assert_eq!(
            (
                s.host.as_str(),
                s.port,
                s.database.as_str(),
                s.user.as_str()
            ),
            ("db.example", 6543, "app", "bob")
        );
        assert_eq!(s.password(), Some("s@cret"));
        assert_eq!(s.sslmode, "require");
        let shown = format!("{s} {s:?}");
        assert!(!shown.contains("cret"), "{shown}");
    }

    #[test]
    fn redacts_passwords_in_urls() {
        assert_eq!(
            redact_url("mongodb://u:p4ss@h:27017/db"),
            "mongodb://u:***@h:27017/db"
        );
        assert_eq!(redact_url("mongodb://h:27017"), "mongodb://h:27017");
        let err = PostgresSettings::from_url("mysql://u:topsecret@h/db").unwrap_err();
        assert!(!err.contains("topsecret"), "{err}");
    }
}
