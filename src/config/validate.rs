//! Raw YAML -> validated [`Config`], collecting every problem before giving up.
//!
//! Per file: parse to a YAML map, then each table on its own, so one bad table does not hide
//! the others. Then cross-table checks (foreign keys, duplicate names) and the load order
//! (foreign keys first, cycles reported with their path).

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::raw::{RawColumn, RawTable};
use super::*;

/// Python strategy names and what replaces them.
const STRATEGIES_EXPLODE: &[&str] = &[
    "array_extraction",
    "delete_and_insert",
    "user_events",
    "users_targets",
    "quizzs_links_questions",
    "users_quizzs_links_questions",
    "users_contents_reads",
    "days_contents_links",
    "days_logbooks_links",
];
const STRATEGIES_DIRECT: &[&str] = &["direct", "direct_translation"];
const STRATEGIES_DEDUPE: &[&str] = &["users_logbook"];

#[derive(Clone, Copy, PartialEq)]
enum FileKind {
    Mongo,
    Matomo,
    MatomoApi,
    Postgres,
}

struct Problems {
    list: Vec<Problem>,
}

impl Problems {
    fn add(
        &mut self,
        file: &Path,
        table: Option<&str>,
        key: Option<&str>,
        message: impl Into<String>,
    ) {
        self.list.push(Problem {
            file: file.to_path_buf(),
            table: table.map(str::to_string),
            key: key.map(str::to_string),
            message: message.into(),
        });
    }
}

pub(super) fn load_dir(dir: &Path) -> Result<Config, ConfigError> {
    let mut problems = Problems { list: Vec::new() };
    let mut warnings = Vec::new();
    let mut hasher = Sha256::new();
    let mut tables = Vec::new();
    let mut found_any = false;
    for (file_name, kind) in [
        (MONGO_FILE, FileKind::Mongo),
        (MATOMO_FILE, FileKind::Matomo),
        (MATOMO_API_FILE, FileKind::MatomoApi),
        (POSTGRES_FILE, FileKind::Postgres),
    ] {
        let path = dir.join(file_name);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                problems.add(&path, None, None, format!("cannot read: {e}"));
                continue;
            }
        };
        found_any = true;
        hasher.update(file_name.as_bytes());
        hasher.update(text.as_bytes());
        parse_file(
            &path,
            &text,
            kind,
            &mut tables,
            &mut problems,
            &mut warnings,
        );
    }
    if !found_any && problems.list.is_empty() {
        problems.add(
            &dir.join(MONGO_FILE),
            None,
            None,
            format!(
                "no config found: expected {MONGO_FILE}, {MATOMO_FILE}, {MATOMO_API_FILE} and/or \
                 {POSTGRES_FILE} in {}",
                dir.display()
            ),
        );
    }
    check_cross_table(&tables, &mut problems);
    let ordered = if problems.list.is_empty() {
        load_order(tables, &mut problems)
    } else {
        Vec::new()
    };
    if !problems.list.is_empty() {
        return Err(ConfigError {
            problems: problems.list,
        });
    }
    Ok(Config {
        tables: ordered,
        fingerprint: hex::encode(hasher.finalize()),
        warnings,
    })
}

fn parse_file(
    path: &Path,
    text: &str,
    kind: FileKind,
    tables: &mut Vec<TableSpec>,
    problems: &mut Problems,
    warnings: &mut Vec<String>,
) {
    let map: serde_yaml::Mapping = match serde_yaml::from_str::<Option<serde_yaml::Mapping>>(text) {
        Ok(Some(map)) => map,
        Ok(None) => return, // an empty file declares no tables
        Err(e) => {
            problems.add(path, None, None, format!("not a YAML map of tables: {e}"));
            return;
        }
    };
    for (name, value) in map {
        let Some(name) = name.as_str().map(str::to_string) else {
            problems.add(
                path,
                None,
                None,
                format!("table names must be strings, found {name:?}"),
            );
            continue;
        };
        let raw: RawTable = match serde_path_to_error::deserialize(value) {
            Ok(raw) => raw,
            Err(e) => {
                let key = e.path().to_string();
                let key = (key != ".").then_some(key);
                problems.add(
                    path,
                    Some(&name),
                    key.as_deref(),
                    e.into_inner().to_string(),
                );
                continue;
            }
        };
        let before = problems.list.len();
        let table = build_table(path, &name, raw, kind, problems, warnings);
        if problems.list.len() == before {
            tables.push(table);
        }
    }
}

/// Checks one table on its own and builds its spec (meaningful only if no problem was added).
/// Each section adds its problems in the order a reader of the YAML meets the keys.
fn build_table(
    path: &Path,
    name: &str,
    raw: RawTable,
    kind: FileKind,
    problems: &mut Problems,
    warnings: &mut Vec<String>,
) -> TableSpec {
    let p = &mut |key: &str, message: String| problems.add(path, Some(name), Some(key), message);

    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        p("name", "table names are letters, digits and `_`".into());
    }
    let mut source = table_source(name, &raw, kind, p);
    let mut columns = table_columns(&raw, kind, p);
    let parts = table_parts(&raw, kind, &columns, p);
    if let Some(first) = parts.first() {
        source = first.source.clone();
        columns = first.columns.clone();
    }
    let (primary_key, conflict_key) = table_keys(&raw, &columns, p);
    let explode = table_explode(&raw, kind, &columns, p);
    let dedupe = table_dedupe(&raw, &columns, &conflict_key, p);
    let filter_exists = table_filter(&raw, p);
    check_strategy(&raw, p);
    let watermark = table_watermark(&raw, kind, &columns, p);
    if !parts.is_empty() && raw.watermark.is_some() {
        p(
            "watermark",
            "a table fed by several sources reads them whole: each source has its own clock, \
             so one target watermark cannot start their windows"
                .into(),
        );
    }
    let time_zone = table_time_zone(&raw, p);
    let lag_days = table_lag_days(&raw, kind, p);
    let partition = table_partition(name, &raw, &columns, &primary_key, p);

    if raw.truncate_before_import && !raw.force_reimport {
        warnings.push(format!(
            "{}: table `{name}`: truncate_before_import has no effect without force_reimport",
            path.display()
        ));
    }
    if let (Some(explode), false) = (&explode, kind == FileKind::MatomoApi) {
        link_parent_column(&mut columns, &explode.parent_column);
    }
    if raw.keep_source && kind == FileKind::Mongo {
        keep_source_column(&raw, &mut columns, p);
    }

    TableSpec {
        name: name.to_string(),
        file: path.to_path_buf(),
        source,
        columns,
        primary_key,
        unique: raw.unique,
        conflict_key,
        export_order: raw.export_order.unwrap_or(0),
        force_reimport: raw.force_reimport,
        truncate_before_import: raw.truncate_before_import,
        explode,
        dedupe,
        filter_exists,
        filter_equals: table_filter_equals(raw.filter.as_ref()),
        watermark,
        time_zone,
        keep_source: raw.keep_source && kind == FileKind::Mongo,
        lag_days,
        partition,
        parts,
    }
}

/// `sources:` (source PostgreSQL tables only): each source's mapping of the table's columns,
/// built as the table's own columns are, with the type, nullability and foreign key of the
/// table's column of that name.
fn table_parts(
    raw: &RawTable,
    kind: FileKind,
    target: &[ColumnSpec],
    p: &mut impl FnMut(&str, String),
) -> Vec<TablePart> {
    if raw.sources.is_empty() {
        return Vec::new();
    }
    if kind != FileKind::Postgres {
        p(
            "sources",
            format!("is for source PostgreSQL tables ({POSTGRES_FILE})"),
        );
        return Vec::new();
    }
    if raw.postgres_table.is_some() {
        p(
            "postgres_table",
            "a table with `sources:` names its tables there".into(),
        );
    }
    let mut parts = Vec::new();
    for (i, part) in raw.sources.iter().enumerate() {
        let key = |k: &str| format!("sources[{i}].{k}");
        if !is_source_table_name(&part.postgres_table) {
            p(
                &key("postgres_table"),
                format!("`{}` is not `table` or `schema.table`", part.postgres_table),
            );
        }
        for (j, rc) in part.columns.iter().enumerate() {
            if !target.iter().any(|c| c.name == rc.name) {
                p(
                    &key(&format!("columns[{j}].name")),
                    format!("the table has no column `{}`", rc.name),
                );
            }
            if rc.json_object.is_some() {
                p(
                    &key(&format!("columns[{j}].json_object")),
                    "is for Matomo API tables".into(),
                );
            }
            if !rc.sql_type.is_empty() || rc.nullable.is_some() || rc.foreign_key.is_some() {
                p(
                    &key(&format!("columns[{j}]")),
                    format!(
                        "column `{}`: the type, nullability and foreign key are the table's: \
                         declare them in its `columns`",
                        rc.name
                    ),
                );
            }
        }
        let mut columns = Vec::new();
        for col in target {
            let own = part.columns.iter().find(|c| c.name == col.name);
            let rc = part_column(col, own);
            match build_column(&rc, false, kind) {
                Ok(built) => columns.push(built),
                Err(found) => {
                    for (k, message) in found {
                        p(&key(&format!("columns.{}.{k}", col.name)), message);
                    }
                }
            }
        }
        if part.filter.as_ref().is_some_and(|f| !f.exists.is_empty()) {
            p(
                &key("filter.exists"),
                "a source's filter takes `equals`".into(),
            );
        }
        parts.push(TablePart {
            source: Source::Postgres {
                table: part.postgres_table.clone(),
            },
            columns,
            filter_equals: table_filter_equals(part.filter.as_ref()),
        });
    }
    parts
}

/// A source's column: its own keys with the table column's type, nullability and key.
fn part_column(target: &ColumnSpec, own: Option<&RawColumn>) -> RawColumn {
    let base = RawColumn {
        name: target.name.clone(),
        sql_type: target.sql_type.to_string(),
        nullable: Some(target.nullable),
        foreign_key: target
            .foreign_key
            .as_ref()
            .map(|fk| format!("{}({})", fk.table, fk.column)),
        ..Default::default()
    };
    let Some(own) = own else {
        return base;
    };
    RawColumn {
        source: own.source.clone(),
        template: own.template.clone(),
        coalesce: own.coalesce.clone(),
        json_object: None,
        value_map: own.value_map.clone(),
        default: own.default.clone(),
        unmapped: own.unmapped.clone(),
        constant: own.constant.clone(),
        regex: own.regex.clone(),
        no_match: own.no_match.clone(),
        json: own.json.clone(),
        ..base
    }
}

/// `keep_source`: appends `source_data JSONB`, the whole document. A link table would repeat
/// its parent's document on every element's row, and a dedupe row merges several documents,
/// so only tables with one row per document keep it.
fn keep_source_column(
    raw: &RawTable,
    columns: &mut Vec<ColumnSpec>,
    p: &mut impl FnMut(&str, String),
) {
    if raw.explode.is_some() || raw.dedupe.is_some() {
        p(
            "keep_source",
            "only tables with one row per document keep it (not `explode` or `dedupe` \
             tables): set it on the table the documents themselves go to"
                .into(),
        );
    }
    if has_column(columns, KEEP_SOURCE_COLUMN) {
        p(
            "keep_source",
            format!("adds column `{KEEP_SOURCE_COLUMN}`, which the table already declares"),
        );
        return;
    }
    columns.push(ColumnSpec {
        name: KEEP_SOURCE_COLUMN.into(),
        sql_type: SqlType::Jsonb,
        nullable: true,
        foreign_key: None,
        source: ColumnSource::Document,
        expression: None,
    });
}

/// `lag_days`: API tables only.
fn table_lag_days(raw: &RawTable, kind: FileKind, p: &mut impl FnMut(&str, String)) -> u32 {
    match (raw.lag_days, kind) {
        (Some(days), FileKind::MatomoApi) => days,
        (Some(_), _) => {
            p(
                "lag_days",
                format!("is for Matomo API tables ({MATOMO_API_FILE})"),
            );
            0
        }
        (None, _) => 2,
    }
}

/// Longest partition name suffix (`_20240301`): a table name plus it must fit PostgreSQL's
/// 63-byte identifiers.
const PARTITION_SUFFIX_LEN: usize = 9;

/// Range partitioning: a NOT NULL time column that every key includes (PostgreSQL requires
/// the partition column in each unique constraint of a partitioned table).
fn table_partition(
    name: &str,
    raw: &RawTable,
    columns: &[ColumnSpec],
    primary_key: &[String],
    p: &mut impl FnMut(&str, String),
) -> Option<PartitionSpec> {
    let rp = raw.partition.as_ref()?;
    let every = match rp.every.as_deref() {
        None | Some("week") => PartitionEvery::Week,
        Some("day") => PartitionEvery::Day,
        Some("month") => PartitionEvery::Month,
        Some(other) => {
            p(
                "partition.every",
                format!("unknown period `{other}`: day, week or month"),
            );
            PartitionEvery::Week
        }
    };
    match columns.iter().find(|c| c.name == rp.column) {
        None => p(
            "partition.column",
            format!(
                "names column `{}`, which the table does not have",
                rp.column
            ),
        ),
        Some(c) => {
            if !matches!(
                c.sql_type,
                SqlType::TimestampTz | SqlType::Timestamp | SqlType::Date
            ) {
                p(
                    "partition.column",
                    format!(
                        "column `{}` is {}; a partition column is TIMESTAMPTZ, TIMESTAMP or DATE",
                        c.name, c.sql_type
                    ),
                );
            }
            if c.nullable && !primary_key.contains(&c.name) {
                p(
                    "partition.column",
                    format!(
                        "column `{}` must be NOT NULL: a row without it has no partition",
                        c.name
                    ),
                );
            }
        }
    }
    for (key, cols) in [("primary_key", primary_key), ("unique", &raw.unique)] {
        if !cols.is_empty() && !cols.contains(&rp.column) {
            p(
                key,
                format!(
                    "must include the partition column `{}` (PostgreSQL requires it of every \
                     key of a partitioned table), e.g. [{}, {}]",
                    rp.column,
                    cols.join(", "),
                    rp.column
                ),
            );
        }
    }
    if name.len() + PARTITION_SUFFIX_LEN > 63 {
        p(
            "partition",
            format!(
                "the table name is too long for its partitions' names (at most {} bytes)",
                63 - PARTITION_SUFFIX_LEN
            ),
        );
    }
    Some(PartitionSpec {
        column: rp.column.clone(),
        every,
    })
}

/// Where the rows come from; keys of the other file's kind are refused.
fn table_source(
    name: &str,
    raw: &RawTable,
    kind: FileKind,
    p: &mut impl FnMut(&str, String),
) -> Source {
    if raw.postgres_table.is_some() && kind != FileKind::Postgres {
        p("postgres_table", format!("belongs in {POSTGRES_FILE}"));
    }
    match kind {
        FileKind::Postgres => postgres_source(name, raw, p),
        FileKind::Mongo | FileKind::Matomo if raw.matomo_api.is_some() => {
            p("matomo_api", format!("belongs in {MATOMO_API_FILE}"));
            Source::Matomo {
                table: name.to_string(),
            }
        }
        FileKind::Mongo => {
            if raw.matomo_table.is_some() {
                p(
                    "matomo_table",
                    format!("belongs in {MATOMO_FILE}, not {MONGO_FILE}"),
                );
            }
            Source::Mongo {
                collection: raw
                    .mongo_collection
                    .clone()
                    .unwrap_or_else(|| name.to_string()),
            }
        }
        FileKind::Matomo => {
            for (set, key) in [
                (raw.mongo_collection.is_some(), "mongo_collection"),
                (raw.include_base, "include_base"),
                (raw.explode.is_some(), "explode"),
                (raw.dedupe.is_some(), "dedupe"),
                (raw.filter.is_some(), "filter"),
                (raw.keep_source, "keep_source"),
            ] {
                if set {
                    p(
                        key,
                        format!("is for MongoDB tables ({MONGO_FILE}), not Matomo tables"),
                    );
                }
            }
            Source::Matomo {
                table: raw.matomo_table.clone().unwrap_or_else(|| name.to_string()),
            }
        }
        FileKind::MatomoApi => {
            for (set, key) in [
                (raw.mongo_collection.is_some(), "mongo_collection"),
                (raw.matomo_table.is_some(), "matomo_table"),
                (raw.include_base, "include_base"),
                (raw.dedupe.is_some(), "dedupe"),
                (raw.filter.is_some(), "filter"),
                (raw.keep_source, "keep_source"),
            ] {
                if set {
                    p(
                        key,
                        format!("is not a key of Matomo API tables ({MATOMO_API_FILE})"),
                    );
                }
            }
            let method = raw.matomo_api.as_deref().unwrap_or("visits");
            if method != "visits" {
                p(
                    "matomo_api",
                    format!("unknown API method `{method}`: `visits` (Live.getLastVisitsDetails)"),
                );
            }
            Source::MatomoApi {
                method: crate::staging::matomo_api::VISITS_METHOD.into(),
            }
        }
    }
}

/// A source PostgreSQL table: MongoDB-, Matomo- and API-only keys are refused.
fn postgres_source(name: &str, raw: &RawTable, p: &mut impl FnMut(&str, String)) -> Source {
    for (set, key) in [
        (raw.mongo_collection.is_some(), "mongo_collection"),
        (raw.matomo_table.is_some(), "matomo_table"),
        (raw.matomo_api.is_some(), "matomo_api"),
        (raw.include_base, "include_base"),
        (raw.explode.is_some(), "explode"),
        (raw.dedupe.is_some(), "dedupe"),
        (raw.keep_source, "keep_source"),
    ] {
        if set {
            p(
                key,
                format!("is not a key of source PostgreSQL tables ({POSTGRES_FILE})"),
            );
        }
    }
    let table = raw
        .postgres_table
        .clone()
        .unwrap_or_else(|| name.to_string());
    if !is_source_table_name(&table) {
        p(
            "postgres_table",
            format!("`{table}` is not `table` or `schema.table` (letters, digits, `_`, `$`)"),
        );
    }
    Source::Postgres { table }
}

/// `table` or `schema.table`, each part a plain identifier (it is quoted in the query, but a
/// name PostgreSQL would fold or that holds a dot is more likely a typo than a table).
fn is_source_table_name(name: &str) -> bool {
    let part = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_alphanumeric() || c == '_' || c == '$')
    };
    match name.split_once('.') {
        Some((schema, table)) => part(schema) && part(table),
        None => part(name),
    }
}

/// Columns: base ones first, then `columns`, then `additional_columns`.
fn table_columns(
    raw: &RawTable,
    kind: FileKind,
    p: &mut impl FnMut(&str, String),
) -> Vec<ColumnSpec> {
    let mut columns: Vec<ColumnSpec> = Vec::new();
    if raw.include_base {
        for (col, ty, src) in [
            ("id", SqlType::Varchar(None), "_id"),
            ("created_at", SqlType::Timestamp, "creation_date"),
            ("updated_at", SqlType::Timestamp, "update_date"),
        ] {
            columns.push(ColumnSpec {
                name: col.into(),
                sql_type: ty,
                nullable: false,
                foreign_key: None,
                source: ColumnSource::Field(src.into()),
                expression: None,
            });
        }
    }
    let listed = raw
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| ("columns", i, c));
    let additional = raw
        .additional_columns
        .iter()
        .enumerate()
        .map(|(i, c)| ("additional_columns", i, c));
    for (list, index, rc) in listed.chain(additional) {
        let key = |k: &str| format!("{list}[{index}].{k}");
        match build_column(rc, raw.explode.is_some(), kind) {
            Ok(col) => {
                if columns.iter().any(|c| c.name == col.name) {
                    p(&key("name"), format!("duplicate column `{}`", col.name));
                } else {
                    columns.push(col);
                }
            }
            Err(found) => {
                for (k, message) in found {
                    p(&key(k), message);
                }
            }
        }
    }
    if columns.is_empty() {
        p("columns", "a table needs at least one column".into());
    }
    columns
}

fn has_column(columns: &[ColumnSpec], name: &str) -> bool {
    columns.iter().any(|col| col.name == name)
}

/// The primary key and the upsert's conflict key (the primary key, or `unique` when the
/// primary key is generated).
fn table_keys(
    raw: &RawTable,
    columns: &[ColumnSpec],
    p: &mut impl FnMut(&str, String),
) -> (Vec<String>, Vec<String>) {
    let mut primary_key = raw.primary_key.clone();
    if raw.include_base {
        if !primary_key.is_empty() && primary_key != ["id"] {
            p(
                "primary_key",
                "include_base already makes `id` the primary key".into(),
            );
        }
        primary_key = vec!["id".into()];
    }
    for (key, cols) in [("primary_key", &primary_key), ("unique", &raw.unique)] {
        for c in cols.iter().filter(|c| !has_column(columns, c)) {
            p(
                key,
                format!("names column `{c}`, which the table does not have"),
            );
        }
        if cols.iter().collect::<BTreeSet<_>>().len() != cols.len() {
            p(key, "lists a column twice".into());
        }
    }
    let generated_pk = primary_key.iter().any(|c| {
        columns
            .iter()
            .any(|col| &col.name == c && col.source == ColumnSource::Generated)
    });
    let conflict_key = if !primary_key.is_empty() && !generated_pk {
        primary_key.clone()
    } else {
        raw.unique.clone()
    };
    if conflict_key.is_empty() {
        p(
            "primary_key",
            "the table has no key to upsert on: set `include_base`, `primary_key` or `unique` \
             (a generated SERIAL key needs a `unique` key beside it)"
                .into(),
        );
    }
    for col in columns {
        if col.source == ColumnSource::Generated && !primary_key.contains(&col.name) {
            p(
                "columns",
                format!(
                    "generated column `{}` ({}) must be the primary key",
                    col.name, col.sql_type
                ),
            );
        }
    }
    (primary_key, conflict_key)
}

/// Arrays exploded into rows; without `explode`, the keys and column sources that need it
/// are refused.
fn table_explode(
    raw: &RawTable,
    kind: FileKind,
    columns: &[ColumnSpec],
    p: &mut impl FnMut(&str, String),
) -> Option<ExplodeSpec> {
    let Some(re) = raw.explode.as_ref() else {
        check_not_exploded(raw, kind, columns, p);
        return None;
    };
    if kind == FileKind::MatomoApi {
        return api_explode(raw, re, columns, p);
    }
    let parent_column = re.parent_column.clone().unwrap_or_default();
    if parent_column.is_empty() {
        p(
            "explode.parent_column",
            "a link table needs the column that receives the parent's `_id`".into(),
        );
    } else if !has_column(columns, &parent_column) {
        p(
            "explode.parent_column",
            format!("names column `{parent_column}`, which the table does not have"),
        );
    }
    check_exploded_arrays(re, columns, p);
    let children = match raw.children.as_deref() {
        None | Some("replace") => Children::Replace,
        Some("upsert") => Children::Upsert,
        Some(other) => {
            p(
                "children",
                format!("unknown mode `{other}`: expected `replace` or `upsert`"),
            );
            Children::Replace
        }
    };
    Some(ExplodeSpec {
        parent_column,
        arrays: re
            .arrays
            .iter()
            .map(|a| ArraySpec {
                field: a.field.clone(),
                type_value: a.type_value.clone(),
            })
            .collect(),
        children,
    })
}

/// An API table's explode: one row per element of `actionDetails`, children upserted.
fn api_explode(
    raw: &RawTable,
    re: &super::raw::RawExplode,
    columns: &[ColumnSpec],
    p: &mut impl FnMut(&str, String),
) -> Option<ExplodeSpec> {
    let fields: Vec<&str> = re.arrays.iter().map(|a| a.field.as_str()).collect();
    if fields != [crate::staging::matomo_api::ACTIONS_FIELD]
        || re.arrays.iter().any(|a| a.type_value.is_some())
    {
        p(
            "explode.arrays",
            format!(
                "an API table explodes one array, `{}`, without `type`",
                crate::staging::matomo_api::ACTIONS_FIELD
            ),
        );
    }
    let parent_column = re.parent_column.clone().unwrap_or_default();
    if !parent_column.is_empty() && !has_column(columns, &parent_column) {
        p(
            "explode.parent_column",
            format!("names column `{parent_column}`, which the table does not have"),
        );
    }
    match raw.children.as_deref() {
        None | Some("upsert") => {}
        Some(other) => p(
            "children",
            format!("API tables upsert their rows (`children: upsert`), not `{other}`"),
        ),
    }
    if !columns.iter().any(reads_element) {
        p(
            "columns",
            "an exploded API table needs a column reading the element (`element.<key>`, `element_index`)".into(),
        );
    }
    Some(ExplodeSpec {
        parent_column,
        arrays: re
            .arrays
            .iter()
            .map(|a| ArraySpec {
                field: a.field.clone(),
                type_value: None,
            })
            .collect(),
        children: Children::Upsert,
    })
}

/// Whether a column reads an array's element (its id, type, a key, its position).
fn reads_element(c: &ColumnSpec) -> bool {
    match &c.source {
        ColumnSource::Element
        | ColumnSource::ArrayType
        | ColumnSource::ElementField(_)
        | ColumnSource::ElementIndex => true,
        ColumnSource::Computed(computed) => computed
            .operands()
            .iter()
            .any(|o| !matches!(o, Operand::Field(_))),
        ColumnSource::Field(_) | ColumnSource::Generated | ColumnSource::Document => false,
    }
}

/// The arrays of a link table, their `type`s and the columns that take them.
fn check_exploded_arrays(
    re: &super::raw::RawExplode,
    columns: &[ColumnSpec],
    p: &mut impl FnMut(&str, String),
) {
    if re.arrays.is_empty() {
        p("explode.arrays", "list at least one array field".into());
    }
    let typed = re.arrays.iter().filter(|a| a.type_value.is_some()).count();
    let has_type_column = columns.iter().any(|c| c.source == ColumnSource::ArrayType);
    if typed != 0 && typed != re.arrays.len() {
        p(
            "explode.arrays",
            "either every array has a `type` or none has".into(),
        );
    }
    if typed > 0 && !has_type_column {
        p(
            "explode.arrays",
            "arrays have a `type` but no column has `source: array_type`".into(),
        );
    }
    if typed == 0 && has_type_column {
        p(
            "columns",
            "a column has `source: array_type` but the arrays have no `type`".into(),
        );
    }
    if re.arrays.len() > 1 && typed == 0 {
        p(
            "explode.arrays",
            "several arrays in one table need a `type` each to tell them apart".into(),
        );
    }
    if !columns.iter().any(|c| c.source == ColumnSource::Element) {
        p(
            "columns",
            "a link table needs a column with `source: element` (the element's id)".into(),
        );
    }
}

/// A table without `explode` has no children mode and no column taking an array element.
fn check_not_exploded(
    raw: &RawTable,
    kind: FileKind,
    columns: &[ColumnSpec],
    p: &mut impl FnMut(&str, String),
) {
    if raw.children.is_some() {
        p(
            "children",
            "only link tables (`explode`) replace children".into(),
        );
    }
    for c in columns {
        // MongoDB and Matomo tables compute `template` and `const` per document or row.
        let api_computed =
            kind == FileKind::MatomoApi && matches!(c.source, ColumnSource::Computed(_));
        if reads_element(c) || api_computed {
            p(
                "columns",
                format!(
                    "column `{}` takes an array element or is computed, which needs `explode`",
                    c.name
                ),
            );
        }
    }
}

/// One row per key, columns combined by rule; the key must be the upsert key.
fn table_dedupe(
    raw: &RawTable,
    columns: &[ColumnSpec],
    conflict_key: &[String],
    p: &mut impl FnMut(&str, String),
) -> Option<DedupeSpec> {
    let rd = raw.dedupe.as_ref()?;
    if rd.key.is_empty() {
        p("dedupe.key", "list the columns that identify a row".into());
    }
    for c in rd.key.iter().filter(|c| !has_column(columns, c)) {
        p(
            "dedupe.key",
            format!("names column `{c}`, which the table does not have"),
        );
    }
    let mut keep = Vec::new();
    for (col, rule) in &rd.keep.0 {
        if !has_column(columns, col) {
            p(&format!("dedupe.keep.{col}"), "no such column".into());
        }
        let rule = match rule.as_str() {
            "min" => Keep::Min,
            "max" => Keep::Max,
            "first" => Keep::First,
            "last" => Keep::Last,
            other => {
                p(
                    &format!("dedupe.keep.{col}"),
                    format!("unknown rule `{other}`: min, max, first or last"),
                );
                Keep::Last
            }
        };
        keep.push((col.clone(), rule));
    }
    if !rd.key.is_empty() && rd.key != conflict_key {
        p(
            "dedupe.key",
            format!("must equal the upsert key ({})", conflict_key.join(", ")),
        );
    }
    Some(DedupeSpec {
        key: rd.key.clone(),
        keep,
    })
}

/// The fields a document must have (`filter.exists`).
fn table_filter(raw: &RawTable, p: &mut impl FnMut(&str, String)) -> Vec<String> {
    let filter_exists = raw
        .filter
        .as_ref()
        .map(|f| f.exists.clone())
        .unwrap_or_default();
    if raw.filter.as_ref().is_some_and(|f| f.equals.0.is_empty()) && filter_exists.is_empty() {
        p(
            "filter.exists",
            "list the fields a document must have".into(),
        );
    }
    filter_exists
}

/// `filter.equals`: field -> text, in file order.
fn table_filter_equals(filter: Option<&super::raw::RawFilter>) -> Vec<(String, String)> {
    filter.map(|f| f.equals.0.clone()).unwrap_or_default()
}

/// The Python strategy names: accepted when the declarative form says the same.
fn check_strategy(raw: &RawTable, p: &mut impl FnMut(&str, String)) {
    let Some(strategy) = raw.import_strategy.as_deref() else {
        return;
    };
    let hint = if STRATEGIES_EXPLODE.contains(&strategy) {
        raw.explode.is_none().then_some(
            "was a Python class: declare it with `explode: {parent_column, arrays}` and a column with `source: element`",
        )
    } else if STRATEGIES_DEDUPE.contains(&strategy) {
        raw.dedupe.is_none().then_some(
            "was a Python class: declare it with `dedupe: {key, keep}` and `filter: {exists: [user]}`",
        )
    } else if STRATEGIES_DIRECT.contains(&strategy) {
        None
    } else {
        Some("is not a strategy of the Python tool; the behaviour comes from `explode`, `children`, `dedupe` and `filter`")
    };
    if let Some(hint) = hint {
        p("import_strategy", format!("`{strategy}` {hint}"));
    }
}

/// The column whose highest value starts the next window; MongoDB tables with both base
/// timestamps default to `GREATEST(created_at, updated_at)`.
fn table_watermark(
    raw: &RawTable,
    kind: FileKind,
    columns: &[ColumnSpec],
    p: &mut impl FnMut(&str, String),
) -> Watermark {
    match (&raw.watermark, kind) {
        (Some(col), _) => {
            match columns.iter().find(|c| &c.name == col) {
                None => p(
                    "watermark",
                    format!("names column `{col}`, which the table does not have"),
                ),
                Some(c) if c.expression.is_some() || matches!(c.source, ColumnSource::Computed(_)) => {
                    p(
                        "watermark",
                        format!("column `{col}` is computed by an expression; a watermark is read as is"),
                    )
                }
                Some(c) if !is_watermark_type(c.sql_type) => p(
                    "watermark",
                    format!(
                        "column `{col}` is {}; a watermark is a timestamp, date or integer",
                        c.sql_type
                    ),
                ),
                Some(_) => {}
            }
            Watermark::Column(col.clone())
        }
        (None, FileKind::Mongo)
            if has_column(columns, "created_at") && has_column(columns, "updated_at") =>
        {
            Watermark::CreatedUpdated
        }
        (None, _) => Watermark::None,
    }
}

fn table_time_zone(raw: &RawTable, p: &mut impl FnMut(&str, String)) -> chrono_tz::Tz {
    match raw.time_zone.as_deref() {
        None => chrono_tz::UTC,
        Some(tz) => tz.parse::<chrono_tz::Tz>().unwrap_or_else(|_| {
            p(
                "time_zone",
                format!("unknown time zone `{tz}` (expected an IANA name like Europe/Paris)"),
            );
            chrono_tz::UTC
        }),
    }
}

/// In a link table the parent column takes the parent's `_id` unless it names another field.
fn link_parent_column(columns: &mut [ColumnSpec], parent: &str) {
    if let Some(col) = columns.iter_mut().find(|c| c.name == parent) {
        if col.source == ColumnSource::Field(col.name.clone()) {
            col.source = ColumnSource::Field("_id".into());
        }
    }
}

fn is_watermark_type(ty: SqlType) -> bool {
    matches!(
        ty,
        SqlType::Timestamp
            | SqlType::TimestampTz
            | SqlType::Date
            | SqlType::SmallInt
            | SqlType::Integer
            | SqlType::BigInt
            | SqlType::Serial
            | SqlType::BigSerial
            | SqlType::Numeric(_)
    )
}

/// Checks one column with its expression; on error returns every failing sub-key and message.
fn build_column(
    rc: &RawColumn,
    in_explode: bool,
    kind: FileKind,
) -> Result<ColumnSpec, Vec<super::expr::KeyProblem>> {
    let mut col = column_source(rc, in_explode, kind).map_err(|e| vec![e])?;
    super::expr::apply(rc, &mut col).map_err(|found| {
        found
            .into_iter()
            .map(|(key, message)| (key, format!("column `{}`: {message}", rc.name)))
            .collect::<Vec<_>>()
    })?;
    Ok(col)
}

/// Checks one column's name, type, key and source; on error returns the failing sub-key and
/// the message.
fn column_source(
    rc: &RawColumn,
    in_explode: bool,
    kind: FileKind,
) -> Result<ColumnSpec, (&'static str, String)> {
    if rc.name.is_empty() {
        return Err(("name", "a column needs a name".into()));
    }
    let sql_type = SqlType::parse(&rc.sql_type).ok_or_else(|| {
        (
            "sql_type",
            format!(
                "unknown SQL type `{}` for column `{}`",
                rc.sql_type, rc.name
            ),
        )
    })?;
    let foreign_key = match &rc.foreign_key {
        None => None,
        Some(text) => Some(parse_foreign_key(text).ok_or_else(|| {
            (
                "foreign_key",
                format!("`{text}` is not of the form `table(column)`"),
            )
        })?),
    };
    let computed = computed_source(rc, kind)?;
    let source = if let Some(computed) = computed {
        if rc.source.is_some() {
            return Err((
                "source",
                "a column takes `source` or one of `template`, `coalesce`, `json_object`, `const`"
                    .into(),
            ));
        }
        ColumnSource::Computed(computed)
    } else if sql_type.is_generated() {
        if rc.source.is_some() {
            return Err((
                "source",
                format!("`{}` is {sql_type}: PostgreSQL generates it", rc.name),
            ));
        }
        ColumnSource::Generated
    } else {
        match rc.source.as_deref() {
            Some(s) if kind == FileKind::MatomoApi => api_operand(s)
                .map(|o| match o {
                    Operand::Field(path) => ColumnSource::Field(path),
                    Operand::ElementField(key) => ColumnSource::ElementField(key),
                    Operand::ElementIndex => ColumnSource::ElementIndex,
                })
                .map_err(|m| ("source", m))?,
            Some("element") | Some("element._id") if kind == FileKind::Mongo => {
                ColumnSource::Element
            }
            Some("array_type") if kind == FileKind::Mongo => ColumnSource::ArrayType,
            Some(s) if s.starts_with("element.") && in_explode => {
                return Err((
                    "source",
                    format!("`{s}`: only the element's id (`element`) can be taken"),
                ));
            }
            Some(s) if !valid_path(s) => {
                return Err(("source", format!("`{s}` is not a field path")))
            }
            Some(s) => ColumnSource::Field(s.to_string()),
            // The base timestamp names map to the documents' own names, as include_base does.
            None if kind == FileKind::Mongo && rc.name == "created_at" => {
                ColumnSource::Field("creation_date".into())
            }
            None if kind == FileKind::Mongo && rc.name == "updated_at" => {
                ColumnSource::Field("update_date".into())
            }
            None => ColumnSource::Field(rc.name.clone()),
        }
    };
    Ok(ColumnSpec {
        name: rc.name.clone(),
        sql_type,
        nullable: rc.nullable.unwrap_or(true),
        foreign_key,
        source,
        expression: None,
    })
}

/// A source of an API table: `element_index`, `element.<key>`, or a key of the visit.
fn api_operand(text: &str) -> Result<Operand, String> {
    match text {
        "element_index" => Ok(Operand::ElementIndex),
        "element" | "array_type" => Err(format!(
            "`{text}`: API tables take `element.<key>` or `element_index`"
        )),
        _ => match text.strip_prefix("element.") {
            Some(key) if valid_path(key) => Ok(Operand::ElementField(key.to_string())),
            _ if valid_path(text) && !text.starts_with("element.") => {
                Ok(Operand::Field(text.to_string()))
            }
            _ => Err(format!("`{text}` is not a field path")),
        },
    }
}

/// `template` (any table), `coalesce` or `json_object` (API tables only), when the column
/// has one; a `const` column is told apart later (`super::expr`), with its type.
fn computed_source(
    rc: &RawColumn,
    kind: FileKind,
) -> Result<Option<Computed>, (&'static str, String)> {
    let given = [
        ("template", rc.template.is_some()),
        ("coalesce", rc.coalesce.is_some()),
        ("json_object", rc.json_object.is_some()),
    ];
    let keys: Vec<&str> = given.iter().filter(|(_, s)| *s).map(|(k, _)| *k).collect();
    let Some(first) = keys.first().copied() else {
        return Ok(None);
    };
    if kind != FileKind::MatomoApi && first != "template" {
        return Err((
            first,
            format!("is for Matomo API tables ({MATOMO_API_FILE}) for now"),
        ));
    }
    if keys.len() > 1 {
        return Err((first, format!("a column takes one of {}", keys.join(", "))));
    }
    let list = |sources: &[String], key: &'static str| {
        if sources.is_empty() {
            return Err((key, "list at least one source".to_string()));
        }
        sources
            .iter()
            .map(|s| api_operand(s).map_err(|m| (key, m)))
            .collect::<Result<Vec<_>, _>>()
    };
    if let Some(text) = &rc.template {
        let operand = if kind == FileKind::MatomoApi {
            api_operand
        } else {
            field_operand
        };
        return parse_template(text, operand)
            .map(|pieces| Some(Computed::Template(pieces)))
            .map_err(|m| ("template", m));
    }
    if let Some(sources) = &rc.coalesce {
        return list(sources, "coalesce").map(|ops| Some(Computed::Coalesce(ops)));
    }
    let mut keys = Vec::new();
    for (key, sources) in rc.json_object.iter().flat_map(|o| &o.0) {
        keys.push((key.clone(), list(sources, "json_object")?));
    }
    if keys.is_empty() {
        return Err(("json_object", "list at least one key".into()));
    }
    Ok(Some(Computed::JsonObject(keys)))
}

/// A source of a MongoDB or Matomo table's template: a field path or column name.
fn field_operand(text: &str) -> Result<Operand, String> {
    if valid_path(text) {
        Ok(Operand::Field(text.to_string()))
    } else {
        Err(format!("`{text}` is not a field path"))
    }
}

/// `"{idVisit}_{element_index}"` -> text and sources (each read by `operand`); `{{` and `}}`
/// are literal braces.
fn parse_template(
    text: &str,
    operand: fn(&str) -> Result<Operand, String>,
) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut literal = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                literal.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                literal.push('}');
            }
            '{' => {
                let mut name = String::new();
                let mut closed = false;
                for c in chars.by_ref() {
                    if c == '}' {
                        closed = true;
                        break;
                    }
                    name.push(c);
                }
                if !closed || name.contains('{') {
                    return Err("a `{` is not closed".into());
                }
                if !literal.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut literal)));
                }
                pieces.push(Piece::Value(operand(name.trim())?));
            }
            '}' => return Err("a `}` closes nothing (write `}}` for a brace)".into()),
            c => literal.push(c),
        }
    }
    if !literal.is_empty() {
        pieces.push(Piece::Text(literal));
    }
    if !pieces.iter().any(|p| matches!(p, Piece::Value(_))) {
        return Err("names no source: write `{source}` where a value goes".into());
    }
    Ok(pieces)
}

fn valid_path(path: &str) -> bool {
    !path.is_empty()
        && path
            .split('.')
            .all(|part| !part.is_empty() && !part.starts_with('$'))
}

fn parse_foreign_key(text: &str) -> Option<ForeignKey> {
    let text = text.trim();
    let open = text.find('(')?;
    let column = text[open + 1..].strip_suffix(')')?.trim();
    let table = text[..open].trim();
    let ident = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    (ident(table) && ident(column)).then(|| ForeignKey {
        table: table.into(),
        column: column.into(),
    })
}

/// Checks between tables: each name declared once, each foreign key pointing at a key of
/// a declared table, with a matching type.
fn check_cross_table(tables: &[TableSpec], problems: &mut Problems) {
    let mut seen: HashMap<&str, &Path> = HashMap::new();
    for t in tables {
        if let Some(first) = seen.insert(&t.name, &t.file) {
            problems.add(
                &t.file,
                Some(&t.name),
                None,
                format!("table also declared in {}", first.display()),
            );
        }
    }
    check_text_sources(tables, problems);
    for t in tables {
        for c in &t.columns {
            if let Some(fk) = &c.foreign_key {
                let key = format!("{}.foreign_key", c.name);
                for message in foreign_key_problems(tables, c, fk) {
                    problems.add(&t.file, Some(&t.name), Some(&key), message);
                }
            }
        }
    }
}

/// A MongoDB field staged for a plain JSONB column holds JSON (a string with its quotes),
/// so an expression of a table on the same collection cannot read it as text.
fn check_text_sources(tables: &[TableSpec], problems: &mut Problems) {
    let json_fields: Vec<(&Source, &str)> = tables
        .iter()
        .flat_map(|t| t.columns.iter().map(move |c| (t, c)))
        .filter(|(_, c)| c.sql_type == SqlType::Jsonb && c.expression.is_none())
        .filter_map(|(t, c)| match &c.source {
            ColumnSource::Field(path) => Some((&t.source, path.as_str())),
            _ => None,
        })
        .collect();
    for t in tables
        .iter()
        .filter(|t| matches!(t.source, Source::Mongo { .. }))
    {
        for c in &t.columns {
            for path in c.text_sources() {
                if json_fields.contains(&(&t.source, path)) {
                    problems.add(
                        &t.file,
                        Some(&t.name),
                        Some(&c.name),
                        format!(
                            "reads `{path}` as text, which a plain JSONB column of `{}` reads \
                             as JSON: a field of a collection is staged one way (give that \
                             column an expression too, e.g. `json: parse`, or read another field)",
                            t.source.name()
                        ),
                    );
                }
            }
        }
    }
}

/// What is wrong with column `c`'s foreign key `fk`: a missing table or column, a column
/// that is not a key, a type that differs.
fn foreign_key_problems(tables: &[TableSpec], c: &ColumnSpec, fk: &ForeignKey) -> Vec<String> {
    let Some(target) = tables.iter().find(|o| o.name == fk.table) else {
        return vec![format!(
            "column `{}` references table `{}`, which no config declares",
            c.name, fk.table
        )];
    };
    let Some(tc) = target.column(&fk.column) else {
        return vec![format!(
            "column `{}` references `{}({})`, which has no such column",
            c.name, fk.table, fk.column
        )];
    };
    let mut found = Vec::new();
    let unique = target.primary_key == [fk.column.clone()] || target.unique == [fk.column.clone()];
    if !unique {
        found.push(format!(
            "`{}({})` is neither the primary key nor a unique key of `{}`",
            fk.table, fk.column, fk.table
        ));
    }
    if tc.sql_type.referenced_as() != c.sql_type && !(is_text(tc.sql_type) && is_text(c.sql_type)) {
        found.push(format!(
            "column `{}` is {} but `{}({})` is {}",
            c.name, c.sql_type, fk.table, fk.column, tc.sql_type
        ));
    }
    found
}

fn is_text(ty: SqlType) -> bool {
    matches!(ty, SqlType::Varchar(_) | SqlType::Text | SqlType::Char(_))
}

/// Foreign keys first; among tables ready at the same time the lowest `export_order`, then
/// file order. A cycle is reported with its path.
fn load_order(tables: Vec<TableSpec>, problems: &mut Problems) -> Vec<TableSpec> {
    let mut remaining: Vec<(usize, TableSpec)> = tables.into_iter().enumerate().collect();
    let mut ordered = Vec::with_capacity(remaining.len());
    while !remaining.is_empty() {
        let ready = remaining
            .iter()
            .enumerate()
            .filter(|(_, (_, t))| {
                t.depends_on()
                    .all(|dep| !remaining.iter().any(|(_, r)| r.name == dep))
            })
            .min_by_key(|(_, (pos, t))| (t.export_order, *pos))
            .map(|(i, _)| i);
        match ready {
            Some(i) => ordered.push(remaining.remove(i).1),
            None => {
                let names: Vec<&TableSpec> = remaining.iter().map(|(_, t)| t).collect();
                let cycle = find_cycle(&names);
                let first = names
                    .iter()
                    .find(|t| t.name == cycle[0])
                    .copied()
                    .unwrap_or(names[0]);
                problems.add(
                    &first.file,
                    Some(&first.name),
                    Some("foreign_key"),
                    format!("dependency cycle between tables: {}", cycle.join(" -> ")),
                );
                break;
            }
        }
    }
    ordered
}

/// A cycle among tables that all wait on each other (each has a dependency in the set).
fn find_cycle(tables: &[&TableSpec]) -> Vec<String> {
    let mut path: Vec<String> = vec![tables[0].name.clone()];
    loop {
        let current = tables
            .iter()
            .find(|t| t.name == *path.last().unwrap_or(&String::new()));
        let next = current
            .and_then(|t| t.depends_on().find(|d| tables.iter().any(|o| o.name == *d)))
            .map(str::to_string);
        let Some(next) = next else { return path };
        if let Some(start) = path.iter().position(|n| *n == next) {
            let mut cycle = path.split_off(start);
            cycle.push(next);
            return cycle;
        }
        path.push(next);
    }
}
