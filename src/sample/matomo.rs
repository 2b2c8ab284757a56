//! Matomo rows for the sample: `matomo.sql`, the three raw log tables (the DDL of a fresh
//! Matomo install, the one the tests load) and visits of the sample's users, for `mariadb DB <
//! matomo.sql`. Deterministic, like the mongodump beside it.
//!
//! Each user visits once, every other user a second time; a quarter of the visits are
//! anonymous (no `user_id`). A visit has one to six page views, 45 seconds apart.

use std::io::Write;
use std::path::Path;

use super::smartdiet::{oid, Lcg, TAG_USER};
use super::SampleError;

/// The MariaDB/MySQL DDL of the three tables (shared with the Matomo extract tests).
const SCHEMA: &str = include_str!("../../tests/fixtures/matomo/schema.sql");

/// Rows per INSERT statement.
const BATCH: usize = 200;

/// 2024-03-01T00:00:00Z, where the sample's visits start.
const START: i64 = 1_709_251_200;

/// Pages of the sample site: (url without prefix, title).
const PAGES: &[(&str, &str)] = &[
    ("smartdiet.example.org/", "Home"),
    ("smartdiet.example.org/recipes", "Recipes"),
    ("smartdiet.example.org/logbook", "My logbook"),
    ("smartdiet.example.org/coaching", "Coaching"),
    ("smartdiet.example.org/contents/article", "Article"),
    ("smartdiet.example.org/targets", "My targets"),
];

/// Matomo's action types (core/Tracker/Action.php).
const TYPE_URL: u8 = 1;
const TYPE_TITLE: u8 = 4;
/// `url_prefix` 2 = `https://`.
const PREFIX_HTTPS: u8 = 2;

/// Seconds between two page views of a visit.
const STEP: i64 = 45;

/// What `write` produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatomoCounts {
    pub actions: usize,
    pub visits: usize,
    pub page_views: usize,
}

/// Writes `<path>`: the schema (tables dropped first, so it can be applied again) and the rows.
pub fn write(path: &Path, users: usize) -> Result<MatomoCounts, SampleError> {
    let file = std::fs::File::create(path).map_err(SampleError::io(path))?;
    let mut w = std::io::BufWriter::new(file);
    let counts = write_to(&mut w, users).map_err(SampleError::io(path))?;
    w.flush().map_err(SampleError::io(path))?;
    Ok(counts)
}

fn write_to(w: &mut impl Write, users: usize) -> std::io::Result<MatomoCounts> {
    writeln!(
        w,
        "-- Matomo sample written by `etl sample`: {users} users' visits."
    )?;
    writeln!(w, "SET time_zone = '+00:00';")?;
    writeln!(w, "SET NAMES utf8mb4;")?;
    for table in [
        "matomo_log_link_visit_action",
        "matomo_log_visit",
        "matomo_log_action",
    ] {
        writeln!(w, "DROP TABLE IF EXISTS `{table}`;")?;
    }
    w.write_all(SCHEMA.as_bytes())?;
    writeln!(w)?;

    let actions: Vec<String> = PAGES
        .iter()
        .enumerate()
        .flat_map(|(i, (url, title))| {
            [
                action_row(2 * i + 1, url, TYPE_URL, Some(PREFIX_HTTPS)),
                action_row(2 * i + 2, title, TYPE_TITLE, None),
            ]
        })
        .collect();
    insert(
        w,
        "matomo_log_action",
        "`idaction`, `name`, `hash`, `type`, `url_prefix`",
        &actions,
    )?;

    let mut rng = Lcg::new(2024);
    let mut visits = Vec::with_capacity(BATCH);
    let mut views = Vec::with_capacity(BATCH);
    let mut next_link = 1;
    let total = visit_count(users);
    for v in 0..total {
        let visit = Visit::new(v, users, &mut rng);
        for (k, page) in visit.pages.iter().enumerate() {
            views.push(visit.view_row(next_link, k, *page, &mut rng));
            next_link += 1;
            if views.len() == BATCH {
                insert(w, "matomo_log_link_visit_action", VIEW_COLUMNS, &views)?;
                views.clear();
            }
        }
        visits.push(visit.row(next_link - 1));
        if visits.len() == BATCH {
            insert(w, "matomo_log_visit", VISIT_COLUMNS, &visits)?;
            visits.clear();
        }
    }
    insert(w, "matomo_log_visit", VISIT_COLUMNS, &visits)?;
    insert(w, "matomo_log_link_visit_action", VIEW_COLUMNS, &views)?;
    Ok(MatomoCounts {
        actions: actions.len(),
        visits: total,
        page_views: next_link - 1,
    })
}

/// Every user once, every other user twice; at least one visit.
fn visit_count(users: usize) -> usize {
    users.saturating_add(users / 2).max(1)
}

const VISIT_COLUMNS: &str = "`idvisit`, `idsite`, `idvisitor`, `visit_last_action_time`, \
    `config_id`, `location_ip`, `user_id`, `visit_first_action_time`, `visitor_returning`, \
    `visitor_count_visits`, `visit_entry_idaction_name`, `visit_entry_idaction_url`, \
    `visit_exit_idaction_name`, `visit_exit_idaction_url`, `visit_total_actions`, \
    `visit_total_interactions`, `referer_type`, `location_browser_lang`, `config_browser_name`, \
    `config_os`, `config_resolution`, `visit_total_time`, `location_country`, `last_idlink_va`";

const VIEW_COLUMNS: &str = "`idlink_va`, `idsite`, `idvisitor`, `idvisit`, `idaction_url_ref`, \
    `idaction_name_ref`, `pageview_position`, `server_time`, `idpageview`, `idaction_name`, \
    `idaction_url`, `time_spent_ref_action`, `time_spent`";

/// One visit: who, when, which pages.
struct Visit {
    id: usize,
    /// Index of the SmartDiet user behind the visitor.
    person: usize,
    anonymous: bool,
    returning: bool,
    start: i64,
    pages: Vec<usize>,
}

impl Visit {
    fn new(v: usize, users: usize, rng: &mut Lcg) -> Visit {
        let users = users.max(1);
        let views = 1 + rng.below(6);
        Visit {
            id: v + 1,
            person: v % users,
            anonymous: v % 4 == 3,
            returning: v >= users,
            // One visit starts every 7 minutes.
            start: START.saturating_add(int(v).saturating_mul(7 * 60)),
            pages: (0..views).map(|_| rng.below(PAGES.len())).collect(),
        }
    }

    fn time(&self, k: usize) -> i64 {
        self.start.saturating_add(int(k).saturating_mul(STEP))
    }

    fn visitor(&self) -> String {
        hex_literal(&u64::try_from(self.person).unwrap_or(u64::MAX).to_be_bytes())
    }

    fn row(&self, last_link: usize) -> String {
        let (first, last) = (self.pages.first(), self.pages.last());
        let views = self.pages.len();
        let user_id = if self.anonymous {
            "NULL".to_string()
        } else {
            quote(&oid(TAG_USER, self.person).to_hex())
        };
        let last_time = self.time(views.saturating_sub(1));
        let ip = [192, 0, 2, u8::try_from(self.person % 250).unwrap_or(0) + 1];
        [
            self.id.to_string(),
            "1".into(),
            self.visitor(),
            quote(&datetime(last_time)),
            hex_literal(&u64::try_from(self.id).unwrap_or(u64::MAX).to_le_bytes()),
            hex_literal(&ip),
            user_id,
            quote(&datetime(self.start)),
            u8::from(self.returning).to_string(),
            if self.returning { "2" } else { "1" }.into(),
            first.map_or("NULL".into(), |p| title_id(*p).to_string()),
            first.map_or("NULL".into(), |p| url_id(*p).to_string()),
            last.map_or("NULL".into(), |p| title_id(*p).to_string()),
            last.map_or("NULL".into(), |p| url_id(*p).to_string()),
            views.to_string(),
            views.to_string(),
            "1".into(),
            quote("fr-fr"),
            quote("FF"),
            quote("LIN"),
            quote("1920x1080"),
            (last_time - self.start + 10).to_string(),
            quote("fr"),
            last_link.to_string(),
        ]
        .join(", ")
    }

    /// The `k`-th page view of this visit, row `link` of the actions table.
    fn view_row(&self, link: usize, k: usize, page: usize, rng: &mut Lcg) -> String {
        let previous = k.checked_sub(1).and_then(|i| self.pages.get(i));
        let is_last = k + 1 == self.pages.len();
        [
            link.to_string(),
            "1".into(),
            self.visitor(),
            self.id.to_string(),
            previous.map_or("0".into(), |p| url_id(*p).to_string()),
            previous.map_or("NULL".into(), |p| title_id(*p).to_string()),
            (k + 1).to_string(),
            quote(&datetime(self.time(k))),
            quote(&format!("{:06x}", rng.next_u64() & 0xff_ffff)),
            title_id(page).to_string(),
            url_id(page).to_string(),
            if k == 0 { "0".into() } else { STEP.to_string() },
            if is_last {
                "NULL".into()
            } else {
                STEP.to_string()
            },
        ]
        .join(", ")
    }
}

fn url_id(page: usize) -> usize {
    2 * page + 1
}

fn title_id(page: usize) -> usize {
    2 * page + 2
}

fn action_row(id: usize, name: &str, kind: u8, prefix: Option<u8>) -> String {
    format!(
        "{id}, {}, {}, {kind}, {}",
        quote(name),
        fnv32(name),
        prefix.map_or("NULL".into(), |p| p.to_string())
    )
}

/// `INSERT INTO table (columns) VALUES (...), (...);` (nothing for no rows).
fn insert(w: &mut impl Write, table: &str, columns: &str, rows: &[String]) -> std::io::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    writeln!(w, "INSERT INTO `{table}` ({columns}) VALUES")?;
    for (i, row) in rows.iter().enumerate() {
        let end = if i + 1 == rows.len() { ";" } else { "," };
        writeln!(w, "  ({row}){end}")?;
    }
    Ok(())
}

/// A MariaDB string literal (backslash escapes are on by default there).
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

fn hex_literal(bytes: &[u8]) -> String {
    format!("X'{}'", hex::encode(bytes))
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) of seconds since the epoch.
fn datetime(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|d| d.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "9999-12-31 23:59:59".into())
}

/// Matomo stores crc32(name) as the action's hash; any stable 32-bit hash does for a sample.
fn fnv32(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

fn int(i: usize) -> i64 {
    i64::try_from(i).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_page_view_points_at_its_visit_and_known_actions() {
        let mut out = Vec::new();
        let counts = write_to(&mut out, 10).unwrap();
        assert_eq!(counts.visits, 15, "10 users: 10 visits + 5 returning");
        assert_eq!(counts.actions, 2 * PAGES.len());
        let sql = String::from_utf8(out).unwrap();
        let rows = |columns: usize| -> Vec<Vec<String>> {
            sql.lines()
                .filter_map(|l| l.strip_prefix("  ("))
                .map(|l| l.trim_end_matches([';', ',']).trim_end_matches(')'))
                .map(|l| l.split(", ").map(str::to_string).collect::<Vec<_>>())
                .filter(|cells| cells.len() == columns)
                .collect()
        };
        let visits = rows(VISIT_COLUMNS.split(", ").count());
        let views = rows(VIEW_COLUMNS.split(", ").count());
        assert_eq!(visits.len(), counts.visits);
        assert_eq!(views.len(), counts.page_views);
        // visit_total_actions (column 15) adds up to the page views.
        let total: usize = visits.iter().map(|v| v[14].parse::<usize>().unwrap()).sum();
        assert_eq!(total, counts.page_views);
        for view in &views {
            let visit: usize = view[3].parse().unwrap();
            assert!((1..=counts.visits).contains(&visit), "{view:?}");
            for action in [&view[9], &view[10]] {
                let id: usize = action.parse().unwrap();
                assert!((1..=counts.actions).contains(&id), "{view:?}");
            }
        }
    }

    #[test]
    fn quote_doubles_quotes_and_backslashes() {
        assert_eq!(quote(r"it's a \ test"), r"'it''s a \\ test'");
    }

    #[test]
    fn the_same_users_give_the_same_sql() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        write_to(&mut a, 7).unwrap();
        write_to(&mut b, 7).unwrap();
        assert_eq!(a, b);
    }
}
