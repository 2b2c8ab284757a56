//! Connection settings from the environment (and a `.env` file), with the Python tool's names.
//!
//! Passwords live only in these structs and the drivers' own config: `Debug` and `Display`
//! print everything but the password, so a setting can be logged or put in an error.
//!
//! In `DATABASE_URL` and `MONGODB_URL` the credentials run from after `scheme://` to the LAST
//! `@`, so a password may hold `/ @ : % # ?`, spaces or any character unescaped (an `@` in the
//! host, database or query must then be written `%40`). A URL that does not parse is never
//! echoed, not even redacted: the error names the variable and the part that is wrong.

use std::fmt;
use std::path::Path;

/// Reads `KEY=VALUE` lines of a `.env` file into the environment; variables already set win.
/// A missing file is fine. Lines: `# comment`, `export KEY=VALUE`, values optionally quoted.
pub fn load_dotenv(path: &Path) {
    let Ok(text) = std::fs::read_to_string(path) else {
        return;
    };
    for (key, value) in parse_dotenv(&text) {
        if std::env::var_os(&key).is_none() {
            std::env::set_var(key, value);
        }
    }
}

/// The `KEY=VALUE` pairs of a `.env` text. Lines the environment cannot hold (a NUL byte,
/// which `set_var` panics on) are skipped with a warning naming the line, not its value.
fn parse_dotenv(text: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    for (number, line) in text.lines().enumerate() {
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
        if key.contains('\0') || value.contains('\0') {
            tracing::warn!(line = number + 1, "a .env line holds a NUL byte: skipped");
            continue;
        }
        if !key.is_empty() {
            pairs.push((key.to_string(), value.to_string()));
        }
    }
    pairs
}

/// A variable of the process environment; empty counts as unset.
fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// How settings read variables: the process environment in `from_env`, a table in tests.
type Vars<'a> = &'a dyn Fn(&str) -> Option<String>;

fn default_sslmode(vars: Vars, prefix: &str) -> String {
    vars(&format!("{prefix}POSTGRES_SSLMODE"))
        .or_else(|| vars("PGSSLMODE").filter(|_| prefix.is_empty()))
        .unwrap_or_else(|| "prefer".into())
}

fn default_sslrootcert(vars: Vars, prefix: &str) -> Option<String> {
    vars(&format!("{prefix}POSTGRES_SSLROOTCERT"))
        .or_else(|| vars("PGSSLROOTCERT").filter(|_| prefix.is_empty()))
}

/// Prefix of the variables naming a source PostgreSQL (`SOURCE_DATABASE_URL`,
/// `SOURCE_POSTGRES_HOST`, ...): the same names as the target's, so a user reads one list.
pub const SOURCE_PREFIX: &str = "SOURCE_";

/// A port number from a variable; the message names the variable, not the value (a value
/// pasted into the wrong variable may be a secret).
fn port(vars: Vars, name: &str, default: u16) -> Result<u16, String> {
    match vars(name) {
        None => Ok(default),
        Some(text) => text
            .trim()
            .parse()
            .map_err(|_| format!("{name} is not a port number (1 to 65535)")),
    }
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
        Self::from_vars(&var)
    }

    fn from_vars(vars: Vars) -> Result<PostgresSettings, String> {
        Self::from_prefixed(vars, "")
    }

    /// The source PostgreSQL of `--source postgres`: `SOURCE_DATABASE_URL`, or
    /// `SOURCE_POSTGRES_HOST/PORT/DATABASE/USER/PASSWORD` (and `_SSLMODE`, `_SSLROOTCERT`).
    pub fn source_from_env() -> Result<PostgresSettings, String> {
        Self::from_prefixed(&var, SOURCE_PREFIX)
    }

    /// Whether the environment names a source PostgreSQL (`all` then reads it).
    pub fn source_configured() -> bool {
        ["DATABASE_URL", "POSTGRES_HOST", "POSTGRES_DATABASE"]
            .iter()
            .any(|v| var(&format!("{SOURCE_PREFIX}{v}")).is_some())
    }

    fn from_prefixed(vars: Vars, prefix: &str) -> Result<PostgresSettings, String> {
        let name = |v: &str| format!("{prefix}{v}");
        if let Some(url) = vars(&name("DATABASE_URL")) {
            return Self::parse_url(&url, &name("DATABASE_URL"), vars, prefix);
        }
        Ok(PostgresSettings {
            host: vars(&name("POSTGRES_HOST")).unwrap_or_else(|| "localhost".into()),
            port: port(vars, &name("POSTGRES_PORT"), 5432)?,
            database: vars(&name("POSTGRES_DATABASE")).unwrap_or_else(|| "postgres".into()),
            user: vars(&name("POSTGRES_USER")).unwrap_or_else(|| "postgres".into()),
            password: vars(&name("POSTGRES_PASSWORD")),
            sslmode: default_sslmode(vars, prefix),
            sslrootcert: default_sslrootcert(vars, prefix),
        })
    }

    /// Parses `postgres://user:pass@host:port/db?sslmode=...` (see [`UrlParts`] for where the
    /// password ends). Errors name the part that is wrong, never the URL's text.
    pub fn from_url(url: &str) -> Result<PostgresSettings, String> {
        Self::parse_url(url, "DATABASE_URL", &var, "")
    }

    fn parse_url(
        url: &str,
        name: &str,
        vars: Vars,
        prefix: &str,
    ) -> Result<PostgresSettings, String> {
        let parts = UrlParts::parse(url, name, &["postgres", "postgresql"])?;
        let sslmode = parts
            .query("sslmode")
            .unwrap_or_else(|| default_sslmode(vars, prefix));
        let sslrootcert = parts
            .query("sslrootcert")
            .or_else(|| default_sslrootcert(vars, prefix));
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
    /// says. Errors never carry the password: tokio-postgres does not print it, and the
    /// text is scrubbed of it all the same.
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
        let failed = |e: tokio_postgres::Error| scrub_secret(&error_text(&e), self.password());
        match crate::tls::connector(&self.sslmode, root_cert)? {
            None => {
                pg.ssl_mode(SslMode::Disable);
                let (client, connection) =
                    pg.connect(tokio_postgres::NoTls).await.map_err(failed)?;
                tokio::spawn(async move { log_connection_end(connection.await) });
                Ok(client)
            }
            Some(tls) => {
                pg.ssl_mode(match self.sslmode.as_str() {
                    "allow" | "prefer" => SslMode::Prefer,
                    _ => SslMode::Require,
                });
                let (client, connection) = pg.connect(tls).await.map_err(failed)?;
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
        Self::from_vars(&var)
    }

    fn from_vars(vars: Vars) -> Result<MatomoSettings, String> {
        Ok(MatomoSettings {
            host: vars("MATOMO_HOST").unwrap_or_else(|| "localhost".into()),
            port: port(vars, "MATOMO_PORT", 3306)?,
            database: vars("MATOMO_DATABASE").unwrap_or_else(|| "matomo".into()),
            user: vars("MATOMO_USER").unwrap_or_else(|| "root".into()),
            password: vars("MATOMO_PASSWORD"),
        })
    }

    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// `text` (a driver error) without the password, should the driver ever quote it.
    pub fn scrub(&self, text: &str) -> String {
        scrub_secret(text, self.password())
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

/// Matomo's HTTP Reporting API (`--source matomo-api`): `MATOMO_URL`, `MATOMO_KEY` (the
/// token, sent in the POST body only), `MATOMO_SITE` (one id or a comma list),
/// `MATOMO_API_PAGE_SIZE` (or the existing sync's `RESULTPERPAGE`, default 500), and the
/// window's `STARTDATE`, `FORCE_STARTDATE`, `INITIAL_OFFSET`. `MATOMO_TIMEZONE` replaces the
/// sites' own time zones (asked with `SitesManager.getSiteFromId` otherwise);
/// `MATOMO_API_TIMEOUT` (seconds per request, default 120) and `MATOMO_API_RETRIES` (default
/// 3) bound each call. `Debug`, `Display` and every error show the URL without credentials or
/// query, never the token.
#[derive(Clone)]
pub struct MatomoApiSettings {
    /// `MATOMO_URL` as given (may hold basic-auth credentials: never printed).
    url: String,
    token: String,
    pub sites: Vec<u32>,
    pub page_size: u32,
    pub start_date: Option<chrono::NaiveDate>,
    pub force_start_date: bool,
    pub initial_offset: u32,
    pub time_zone: Option<String>,
    pub timeout: std::time::Duration,
    pub retries: u32,
}

/// The largest page `MATOMO_API_PAGE_SIZE` may ask for (a page is held in memory whole).
pub const MATOMO_API_MAX_PAGE: u32 = 10_000;

impl MatomoApiSettings {
    /// Whether the environment configures the API source (`MATOMO_URL` set).
    pub fn configured() -> bool {
        var("MATOMO_URL").is_some()
    }

    pub fn from_env() -> Result<MatomoApiSettings, String> {
        Self::from_vars(&var)
    }

    /// The settings from variables looked up by `lookup` instead of the environment (tests).
    pub fn from_lookup(
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<MatomoApiSettings, String> {
        Self::from_vars(&|name| lookup(name).filter(|v| !v.is_empty()))
    }

    fn from_vars(vars: Vars) -> Result<MatomoApiSettings, String> {
        let url = vars("MATOMO_URL").ok_or("--source matomo-api needs MATOMO_URL (the Matomo root, e.g. https://matomo.example.org)")?;
        let split = split_url(url.trim());
        if !matches!(split.scheme, Some("http" | "https")) || split.rest.is_empty() {
            return Err("MATOMO_URL is not an http(s) URL: expected https://host[/path]".into());
        }
        let token = vars("MATOMO_KEY")
            .ok_or("--source matomo-api needs MATOMO_KEY (a token_auth with view access)")?;
        let sites_text = vars("MATOMO_SITE")
            .ok_or("--source matomo-api needs MATOMO_SITE (a site id, or a comma list)")?;
        let mut sites = Vec::new();
        for part in sites_text
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let id = part
                .parse::<u32>()
                .ok()
                .filter(|id| *id > 0)
                .ok_or_else(|| {
                    format!("MATOMO_SITE: `{part}` is not a site id (a positive integer)")
                })?;
            if !sites.contains(&id) {
                sites.push(id);
            }
        }
        if sites.is_empty() {
            return Err("MATOMO_SITE names no site".into());
        }
        let number = |names: &[&str], default: u32, max: u32| -> Result<u32, String> {
            for name in names {
                if let Some(text) = vars(name) {
                    return text
                        .trim()
                        .parse::<u32>()
                        .ok()
                        .filter(|n| (1..=max).contains(n) || (max == u32::MAX && *n == 0))
                        .ok_or_else(|| format!("{name} is not a whole number from 1 to {max}"));
                }
            }
            Ok(default)
        };
        let page_size = number(
            &["MATOMO_API_PAGE_SIZE", "RESULTPERPAGE"],
            500,
            MATOMO_API_MAX_PAGE,
        )?;
        let timeout = number(&["MATOMO_API_TIMEOUT"], 120, 3600)?;
        let retries = match vars("MATOMO_API_RETRIES") {
            None => 3,
            Some(t) => t
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|n| *n <= 20)
                .ok_or("MATOMO_API_RETRIES is not a whole number from 0 to 20")?,
        };
        let initial_offset = match vars("INITIAL_OFFSET") {
            None => 3,
            Some(t) => t
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|n| *n <= 36_500)
                .ok_or("INITIAL_OFFSET is not a number of days")?,
        };
        let start_date = match vars("STARTDATE") {
            None => None,
            Some(t) => Some(
                chrono::NaiveDate::parse_from_str(t.trim(), "%Y-%m-%d")
                    .map_err(|_| format!("STARTDATE `{}` is not a YYYY-MM-DD date", t.trim()))?,
            ),
        };
        let force_start_date = vars("FORCE_STARTDATE").is_some_and(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "true" | "1" | "yes" | "on"
            )
        });
        Ok(MatomoApiSettings {
            url: url.trim().to_string(),
            token,
            sites,
            page_size,
            start_date,
            force_start_date,
            initial_offset,
            time_zone: vars("MATOMO_TIMEZONE"),
            timeout: std::time::Duration::from_secs(u64::from(timeout)),
            retries,
        })
    }

    /// The token, for the POST body only.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Where the API answers: `MATOMO_URL` itself when it names a `.php` script, else its
    /// `index.php`.
    pub fn endpoint(&self) -> String {
        let base = self.url.split(['?', '#']).next().unwrap_or_default();
        if base.ends_with(".php") {
            base.to_string()
        } else {
            format!("{}/index.php", base.trim_end_matches('/'))
        }
    }

    /// `text` (a server's answer, a client error) without the token, in any form a server
    /// may echo it: as is, or form- or percent-encoded.
    pub fn scrub(&self, text: &str) -> String {
        let mut text = text.to_string();
        if !self.token.is_empty() {
            let encoded: String = self
                .token
                .bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                        char::from(b).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect();
            for form in [self.token.clone(), encoded.replace("%20", "+"), encoded] {
                text = text.replace(&form, "***");
            }
        }
        match split_url(&self.url)
            .userinfo
            .and_then(|u| u.split_once(':'))
        {
            Some((_, password)) if !password.is_empty() => text.replace(password, "***"),
            _ => text,
        }
    }
}

impl fmt::Display for MatomoApiSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No credentials, no query (a token pasted into the URL stays hidden too).
        let shown = redact_url(self.url.split(['?', '#']).next().unwrap_or_default());
        f.write_str(&shown)
    }
}

impl fmt::Debug for MatomoApiSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MatomoApiSettings({self}, sites={:?})", self.sites)
    }
}

/// Live MongoDB source: `MONGODB_URL`, `MONGODB_DATABASE`.
#[derive(Clone)]
pub struct MongoSettings {
    /// The URL for the driver: `MONGODB_URL` with its user and password escaped.
    url: String,
    /// Every form of the password that may show up in a driver error: as written, as
    /// escaped for the driver, and decoded.
    secrets: Vec<String>,
    pub database: String,
}

impl MongoSettings {
    pub fn from_env() -> MongoSettings {
        Self::from_vars(&var)
    }

    fn from_vars(vars: Vars) -> MongoSettings {
        let written = vars("MONGODB_URL").unwrap_or_else(|| "mongodb://localhost:27017".into());
        let url = escape_userinfo(&written);
        let mut secrets: Vec<String> = [&written, &url]
            .iter()
            .filter_map(|u| split_url(u).userinfo)
            .filter_map(|info| info.split_once(':').map(|(_, password)| password))
            .flat_map(|p| {
                [
                    p.to_string(),
                    crate::percent::decode_utf8(p).unwrap_or_default(),
                ]
            })
            .filter(|p| !p.is_empty())
            .collect();
        // Longest first, so a secret that contains another is replaced whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        MongoSettings {
            url,
            secrets,
            database: vars("MONGODB_DATABASE").unwrap_or_else(|| "default".into()),
        }
    }

    /// The URL with its password, for the driver only.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL without its credentials, for messages.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }

    /// `text` (a driver error) with the URL's password replaced, in any form the driver might
    /// quote it.
    pub fn scrub(&self, text: &str) -> String {
        let mut text = text.replace(self.url.as_str(), &self.redacted_url());
        for secret in &self.secrets {
            text = text.replace(secret.as_str(), "***");
        }
        text
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

/// `text` with every occurrence of `secret` replaced by `***`.
fn scrub_secret(text: &str, secret: Option<&str>) -> String {
    match secret {
        Some(secret) if !secret.is_empty() => text.replace(secret, "***"),
        _ => text.to_string(),
    }
}

/// The credentials of a URL replaced: `scheme://user:secret@host/db` ->
/// `scheme://***@host/db`. Everything from after `scheme://` (or from the start, when the
/// URL has no valid scheme) to the LAST `@` is hidden, so a password holding `/`, `@`, `:`,
/// `?`, `#` or `%` is hidden whole; a URL without `@` has no credentials and is shown as is.
pub fn redact_url(url: &str) -> String {
    let split = split_url(url);
    if split.userinfo.is_none() {
        return url.to_string();
    }
    match split.scheme {
        Some(scheme) => format!("{scheme}://***@{}", split.rest),
        None => format!("***@{}", split.rest),
    }
}

/// A URL cut where every reader of it in this module agrees: the scheme (before the first
/// `://`, when that is a valid scheme), the credentials (up to the LAST `@`: a password
/// may hold `/`, `?`, `#`, `@` and `:` unescaped), and the rest (host, port, path, query;
/// an `@` there must be escaped as `%40`).
struct UrlSplit<'a> {
    scheme: Option<&'a str>,
    userinfo: Option<&'a str>,
    rest: &'a str,
}

fn split_url(url: &str) -> UrlSplit<'_> {
    let (scheme, after) = match url.split_once("://") {
        Some((scheme, after)) if is_scheme(scheme) => (Some(scheme), after),
        _ => (None, url),
    };
    match after.rsplit_once('@') {
        Some((userinfo, rest)) => UrlSplit {
            scheme,
            userinfo: Some(userinfo),
            rest,
        },
        None => UrlSplit {
            scheme,
            userinfo: None,
            rest: after,
        },
    }
}

/// RFC 3986: a letter, then letters, digits, `+`, `-` or `.`.
fn is_scheme(text: &str) -> bool {
    let mut chars = text.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// `url` with its user and password percent-escaped where the MongoDB driver refuses them
/// raw (`:` in the user, `/ ? # [ ] @` and a `%` that starts no `%XX` escape); escapes
/// already there are kept, so a correctly escaped URL is unchanged.
fn escape_userinfo(url: &str) -> String {
    let split = split_url(url);
    let Some(userinfo) = split.userinfo else {
        return url.to_string();
    };
    let escaped = match userinfo.split_once(':') {
        Some((user, password)) => format!("{}:{}", escape_part(user), escape_part(password)),
        None => escape_part(userinfo),
    };
    match split.scheme {
        Some(scheme) => format!("{scheme}://{escaped}@{}", split.rest),
        None => format!("{escaped}@{}", split.rest),
    }
}

fn escape_part(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    for (i, c) in text.char_indices() {
        let starts_escape = c == '%'
            && bytes
                .get(i + 1..i + 3)
                .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit));
        if matches!(c, ':' | '/' | '?' | '#' | '[' | ']' | '@') || (c == '%' && !starts_escape) {
            out.push_str(&format!("%{:02X}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

/// The parts of a database URL (`scheme://user:password@host:port/path?key=value`), split
/// as [`split_url`] does and percent-decoded.
struct UrlParts {
    user: Option<String>,
    password: Option<String>,
    host: String,
    port: Option<u16>,
    path: Option<String>,
    query: Vec<(String, String)>,
}

impl UrlParts {
    /// Parses the URL held by variable `name`. Errors say which variable and which part is
    /// wrong, never the text: a URL that does not parse may be cut anywhere, so any piece of
    /// it may be a piece of the password.
    fn parse(url: &str, name: &str, schemes: &[&str]) -> Result<UrlParts, String> {
        let expected = schemes.first().copied().unwrap_or("database");
        let split = split_url(url);
        if !split.scheme.is_some_and(|s| schemes.contains(&s)) {
            return Err(format!(
                "{name} is not a {expected} URL: expected {expected}://user:password@host:port/database"
            ));
        }
        let decode = |text: &str, part: &str| {
            crate::percent::decode_utf8(text).ok_or_else(|| {
                format!("{name}: the {part} is not valid UTF-8 once its %XX escapes are decoded")
            })
        };
        let (user, password) = match split.userinfo {
            Some(info) => match info.split_once(':') {
                Some((u, p)) => (Some(decode(u, "user")?), Some(decode(p, "password")?)),
                None => (Some(decode(info, "user")?), None),
            },
            None => (None, None),
        };
        let (rest, query) = split.rest.split_once('?').unwrap_or((split.rest, ""));
        let (hostport, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (host, port) = split_port(hostport)
            .ok_or_else(|| format!("{name}: the port is not a number from 1 to 65535"))?;
        let mut pairs = Vec::new();
        for (key, value) in query.split('&').filter_map(|kv| kv.split_once('=')) {
            pairs.push((key.to_string(), decode(value, "query")?));
        }
        Ok(UrlParts {
            user: user.filter(|u| !u.is_empty()),
            password,
            host: if host.is_empty() {
                "localhost".into()
            } else {
                host.into()
            },
            port,
            path: match path {
                "" => None,
                path => Some(decode(path, "database name")?),
            },
            query: pairs,
        })
    }

    fn query(&self, key: &str) -> Option<String> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }
}

/// `host:port` -> host and port; `[v6]:port` and `[v6]` keep their brackets off the port.
/// `None` when the port is not a number.
fn split_port(hostport: &str) -> Option<(&str, Option<u16>)> {
    let port_start = match hostport.rfind(':') {
        Some(colon) if !hostport[colon..].contains(']') => colon,
        _ => return Some((hostport, None)),
    };
    let (host, port) = (&hostport[..port_start], &hostport[port_start + 1..]);
    Some((host, Some(port.parse::<u16>().ok()?)))
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

    /// Passwords of every troublesome shape: the URL separators, escapes that decode to
    /// nothing valid, spaces, non-ASCII. Each piece holds the marker `xyzzy`, so a message that
    /// shows any fragment of a password is caught.
    const PASSWORDS: &[&str] = &[
        "xyzzySl/ash",
        "xyzzy@at@xyzzy",
        "xyzzy:colon:xyzzy",
        "xyzzy%zz%xyzzy",
        "xyzzy#hash#xyzzy",
        "xyzzy?query?xyzzy",
        "xyzzy space xyzzy",
        "xyzzyé中🎉xyzzy",
        "xyzzy/a@b:c#d?e f%xyzzy",
        "xyzzy://xyzzy",
    ];

    fn vars<'a>(table: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            table
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    /// `set_var` panics on a NUL byte: such a `.env` line made `etl` exit 101.
    #[test]
    fn dotenv_lines_are_parsed_and_nul_bytes_skipped() {
        let text = "# comment\nexport A=1\nB = \"two words\"\nC='x=y'\nD\nN\0UL=1\nE=nul\0byte\n=empty\nF=é中\n";
        assert_eq!(
            parse_dotenv(text),
            [
                ("A".to_string(), "1".to_string()),
                ("B".into(), "two words".into()),
                ("C".into(), "x=y".into()),
                ("F".into(), "é中".into()),
            ]
        );
    }

    #[test]
    fn redacts_passwords_in_urls() {
        assert_eq!(
            redact_url("mongodb://u:p4ss@h:27017/db"),
            "mongodb://***@h:27017/db"
        );
        assert_eq!(redact_url("mongodb://h:27017"), "mongodb://h:27017");
        let err = PostgresSettings::from_url("mysql://u:topsecret@h/db").unwrap_err();
        assert!(!err.contains("topsecret"), "{err}");
    }

    /// `redact_url` ended the credentials at the first `/` (`postgres://u:Sl/ash@host/db`
    /// showed `Sl/ash`) and redacted nothing without `://`.
    #[test]
    fn redaction_runs_to_the_last_at_with_or_without_scheme() {
        for (url, shown) in [
            ("postgres://u:Sl/ash@host/db", "postgres://***@host/db"),
            ("postgres//u:pw@host/db", "***@host/db"),
            ("u:pw@host:5432/db", "***@host:5432/db"),
            (
                "mongodb://u:a/b@c:d#e?f%g h@host:27017/db?w=1",
                "mongodb://***@host:27017/db?w=1",
            ),
            (
                "mongodb+srv://u:p@cluster.example/db",
                "mongodb+srv://***@cluster.example/db",
            ),
            // Not a scheme: the password holds `://`.
            ("u:p://q@host/db", "***@host/db"),
            ("mongodb://host:27017", "mongodb://host:27017"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
        for password in PASSWORDS {
            let shown = redact_url(&format!("postgres://bob:{password}@db.example:5432/app"));
            assert_eq!(shown, "postgres://***@db.example:5432/app");
        }
    }

    #[test]
    fn database_url_passwords_of_any_shape_parse_and_never_show() {
        for password in PASSWORDS {
            let url = format!("postgres://bob:{password}@db.example:6543/app?sslmode=require");
            let s = PostgresSettings::from_url(&url).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(
                (
                    s.host.as_str(),
                    s.port,
                    s.database.as_str(),
                    s.user.as_str()
                ),
                ("db.example", 6543, "app", "bob"),
                "{url}"
            );
            assert_eq!(s.password(), Some(*password), "{url}");
            assert_eq!(s.sslmode, "require");
            let shown = format!("{s} {s:?}");
            assert!(!shown.contains("xyzzy"), "{shown}");
        }
        let s = PostgresSettings::from_url("postgres://bob:p%2Fa%40ss@[::1]:5433/app").unwrap();
        assert_eq!(
            (s.password(), s.host.as_str(), s.port),
            (Some("p/a@ss"), "[::1]", 5433)
        );
        let s = PostgresSettings::from_url("postgresql://bob@[::1]/app").unwrap();
        assert_eq!(
            (s.password(), s.host.as_str(), s.port),
            (None, "[::1]", 5432)
        );
    }

    /// A URL that does not parse is never echoed, not even redacted: it may be cut anywhere.
    #[test]
    fn malformed_database_urls_name_the_variable_and_the_part_never_the_text() {
        for (url, part) in [
            ("postgres//bob:xyzzySl/ash@host/db", "not a postgres URL"),
            ("xyzzy", "not a postgres URL"),
            ("mysql://bob:xyzzy@host/db", "not a postgres URL"),
            ("xyzzy://bob@host/db", "not a postgres URL"),
            ("postgres://bob:xyzzy@host:xyzzy/db", "port"),
            ("postgres://bob:xyzzy@host:99999/db", "port"),
            ("postgres://bob:xyzzy%ff@host/db", "password"),
            ("postgres://bob%ffxyzzy:pw@host/db", "user"),
            ("postgres://bob:xyzzy@host/db%ff", "database name"),
            ("postgres://bob:xyzzy@host/db?sslmode=%ffxyzzy", "query"),
        ] {
            let err = PostgresSettings::from_url(url).expect_err(url);
            assert!(
                err.contains("DATABASE_URL") && err.contains(part),
                "{url}: {err}"
            );
            assert!(!err.contains("xyzzy"), "{url}: {err}");
        }
    }

    #[test]
    fn source_postgres_reads_its_own_variables_never_the_targets() {
        let table = [
            ("DATABASE_URL", "postgres://t:target-pw@target.example/t"),
            ("POSTGRES_HOST", "target.example"),
            ("PGSSLMODE", "require"),
            ("SOURCE_POSTGRES_HOST", "legacy.example"),
            ("SOURCE_POSTGRES_PORT", "6543"),
            ("SOURCE_POSTGRES_DATABASE", "totalis"),
            ("SOURCE_POSTGRES_PASSWORD", "s3cret-xyzzy"),
        ];
        let src = PostgresSettings::from_prefixed(&vars(&table), SOURCE_PREFIX).unwrap();
        assert_eq!(
            (
                src.host.as_str(),
                src.port,
                src.database.as_str(),
                src.user.as_str()
            ),
            ("legacy.example", 6543, "totalis", "postgres")
        );
        assert_eq!(src.password(), Some("s3cret-xyzzy"));
        // The target's TLS variables are the target's.
        assert_eq!(src.sslmode, "prefer");
        assert!(!format!("{src} {src:?}").contains("xyzzy"));
        let url = [(
            "SOURCE_DATABASE_URL",
            "postgres://u:p%40w-xyzzy@h:1/d?sslmode=disable",
        )];
        let src = PostgresSettings::from_prefixed(&vars(&url), SOURCE_PREFIX).unwrap();
        assert_eq!(
            (src.host.as_str(), src.port, src.sslmode.as_str()),
            ("h", 1, "disable")
        );
        let bad = [("SOURCE_POSTGRES_PORT", "xyzzy")];
        let err = PostgresSettings::from_prefixed(&vars(&bad), SOURCE_PREFIX).unwrap_err();
        assert!(
            err.contains("SOURCE_POSTGRES_PORT") && !err.contains("xyzzy"),
            "{err}"
        );
    }

    #[test]
    fn settings_from_variables_never_show_the_password() {
        for password in PASSWORDS {
            let table = [
                ("POSTGRES_HOST", "db.example"),
                ("POSTGRES_PASSWORD", password),
                ("MATOMO_PASSWORD", password),
            ];
            let pg = PostgresSettings::from_vars(&vars(&table)).unwrap();
            assert_eq!(pg.password(), Some(*password));
            let matomo = MatomoSettings::from_vars(&vars(&table)).unwrap();
            assert_eq!(matomo.password(), Some(*password));
            let shown = format!("{pg} {pg:?} {matomo} {matomo:?}");
            assert!(!shown.contains("xyzzy"), "{shown}");
            assert_eq!(
                matomo.scrub(&format!("driver said {password}!")),
                "driver said ***!"
            );
        }
        // A password pasted into the port variable is not echoed.
        for name in ["POSTGRES_PORT", "MATOMO_PORT"] {
            let table = [(name, "xyzzy")];
            let err = match name {
                "POSTGRES_PORT" => PostgresSettings::from_vars(&vars(&table)).unwrap_err(),
                _ => MatomoSettings::from_vars(&vars(&table)).unwrap_err(),
            };
            assert!(err.contains(name) && !err.contains("xyzzy"), "{err}");
        }
        // DATABASE_URL wins over the POSTGRES_* variables.
        let table = [
            ("DATABASE_URL", "postgres://u:p@url.example/db"),
            ("POSTGRES_HOST", "vars.example"),
        ];
        let pg = PostgresSettings::from_vars(&vars(&table)).unwrap();
        assert_eq!(pg.host, "url.example");
    }

    #[test]
    fn matomo_api_settings_parse_and_never_show_the_token() {
        for token in PASSWORDS {
            let table = [
                (
                    "MATOMO_URL",
                    "https://bob:xyzzyBasic@matomo.example/stats/?token_auth=xyzzyQ",
                ),
                ("MATOMO_KEY", *token),
                ("MATOMO_SITE", "3, 1,3"),
                ("RESULTPERPAGE", "200"),
                ("STARTDATE", "2024-02-29"),
                ("FORCE_STARTDATE", "true"),
            ];
            let s = MatomoApiSettings::from_vars(&vars(&table)).unwrap();
            assert_eq!(s.sites, [3, 1]);
            assert_eq!(s.page_size, 200);
            assert_eq!(s.token(), *token);
            assert!(s.force_start_date);
            assert_eq!(s.start_date, chrono::NaiveDate::from_ymd_opt(2024, 2, 29));
            assert_eq!(
                s.endpoint(),
                "https://bob:xyzzyBasic@matomo.example/stats/index.php"
            );
            let shown = format!("{s} {s:?}");
            assert_eq!(s.to_string(), "https://***@matomo.example/stats/");
            assert!(!shown.contains("xyzzy"), "{shown}");
            // As a server may echo it: as is, percent-encoded, form-encoded.
            let encoded: String = token
                .bytes()
                .map(|b| match b {
                    b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                        char::from(b).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect();
            let echoed = format!(
                "bad token {token} / {encoded} / {}",
                encoded.replace("%20", "+")
            );
            assert!(!s.scrub(&echoed).contains("xyzzy"), "{}", s.scrub(&echoed));
        }
        // MATOMO_API_PAGE_SIZE wins over RESULTPERPAGE; defaults.
        let table = [
            ("MATOMO_URL", "http://127.0.0.1:8080/index.php"),
            ("MATOMO_KEY", "k"),
            ("MATOMO_SITE", "1"),
            ("MATOMO_API_PAGE_SIZE", "50"),
            ("RESULTPERPAGE", "200"),
        ];
        let s = MatomoApiSettings::from_vars(&vars(&table)).unwrap();
        assert_eq!((s.page_size, s.initial_offset, s.retries), (50, 3, 3));
        assert_eq!(s.endpoint(), "http://127.0.0.1:8080/index.php");
        assert!(!s.force_start_date && s.start_date.is_none());
        for (name, value, needle) in [
            ("MATOMO_SITE", "1,x", "`x` is not a site id"),
            ("MATOMO_SITE", " , ", "names no site"),
            ("MATOMO_API_PAGE_SIZE", "0", "MATOMO_API_PAGE_SIZE is not"),
            ("STARTDATE", "2024-02-30", "STARTDATE `2024-02-30`"),
            ("MATOMO_URL", "ftp://h", "not an http(s) URL"),
        ] {
            let mut table = vec![
                ("MATOMO_URL", "http://h"),
                ("MATOMO_KEY", "xyzzy"),
                ("MATOMO_SITE", "1"),
            ];
            table.retain(|(k, _)| *k != name);
            table.push((name, value));
            let err = MatomoApiSettings::from_vars(&vars(&table)).unwrap_err();
            assert!(
                err.contains(needle) && !err.contains("xyzzy"),
                "{name}: {err}"
            );
        }
        let err = MatomoApiSettings::from_vars(&vars(&[
            ("MATOMO_URL", "http://h"),
            ("MATOMO_SITE", "1"),
        ]))
        .unwrap_err();
        assert!(err.contains("MATOMO_KEY"), "{err}");
    }

    /// The MongoDB driver refuses `/ ? # @ :` and a bare `%` in a password: the URL it gets
    /// has them escaped, so it reads the password as written; messages never show it.
    #[test]
    fn mongodb_url_passwords_of_any_shape_reach_the_driver_and_never_show() {
        for password in PASSWORDS {
            let written = format!("mongodb://bob:{password}@db.example:27017/app?appName=etl");
            let table = [("MONGODB_URL", written.as_str())];
            let s = MongoSettings::from_vars(&vars(&table));
            let parsed = mongodb::options::ConnectionString::parse(s.url())
                .unwrap_or_else(|e| panic!("{password}: {e}"));
            let credential = parsed.credential.expect("credential");
            assert_eq!(credential.username.as_deref(), Some("bob"));
            assert_eq!(credential.password.as_deref(), Some(*password));
            assert_eq!(
                s.redacted_url(),
                "mongodb://***@db.example:27017/app?appName=etl"
            );
            let escaped = split_url(s.url()).userinfo.unwrap_or_default().to_string();
            let driver_error = format!("failed: {written} / {} / {password} / {escaped}", s.url());
            let shown = format!("{s:?} {}", s.scrub(&driver_error));
            assert!(!shown.contains("xyzzy"), "{shown}");
        }
        // A URL the user escaped already is passed on unchanged.
        let table = [("MONGODB_URL", "mongodb://bob:p%40ss%2F@h:27017/db")];
        let s = MongoSettings::from_vars(&vars(&table));
        assert_eq!(s.url(), "mongodb://bob:p%40ss%2F@h:27017/db");
        assert_eq!(s.scrub("auth p@ss/ failed"), "auth *** failed");
    }
}
