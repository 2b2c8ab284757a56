//! The YAML shape of `config/schemas.yaml` and `config/matomo_schemas.yaml`, as serde reads it.
//!
//! These structs accept exactly the documented keys (`deny_unknown_fields`) and nothing is
//! checked here beyond shapes: `super::validate` turns them into a [`super::Config`].
//! Each file is a map from target table name to a [`RawTable`].

use serde::Deserialize;

/// One target table. Keys of the Python tool are accepted unchanged; the others declare what
/// the Python tool coded per table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTable {
    /// MongoDB collection the rows come from (default: the table name).
    pub mongo_collection: Option<String>,
    /// MariaDB table the rows come from (Matomo config only; default: the table name).
    pub matomo_table: Option<String>,
    /// Source PostgreSQL table the rows come from (`postgres_schemas.yaml` only; default: the
    /// table name). `schema.table` names a table outside the search path.
    pub postgres_table: Option<String>,
    /// The Matomo API method the rows come from (`matomo_api.yaml` only): `visits`
    /// (`Live.getLastVisitsDetails`, one staged row per visit; the default).
    pub matomo_api: Option<String>,
    /// `matomo_api.yaml`: days read again before the last loaded watermark, so visits still
    /// open when they were read get their later actions (default 2).
    pub lag_days: Option<u32>,
    /// Adds `id` (primary key, from `_id`), `created_at` (from `creation_date`) and
    /// `updated_at` (from `update_date`) before the other columns.
    #[serde(default)]
    pub include_base: bool,
    /// Columns of the table, in order (after the base columns when `include_base`).
    #[serde(default)]
    pub columns: Vec<RawColumn>,
    /// More columns, appended after `columns` (the Python tool's name for them).
    #[serde(default)]
    pub additional_columns: Vec<RawColumn>,
    /// Primary key columns, when not the `id` that `include_base` adds.
    #[serde(default)]
    pub primary_key: Vec<String>,
    /// A UNIQUE constraint; the upsert's conflict key when the primary key is generated.
    #[serde(default)]
    pub unique: Vec<String>,
    /// Load order among tables that do not depend on each other (foreign keys come first).
    pub export_order: Option<i64>,
    /// Ignore the incremental window: extract every document of the source.
    #[serde(default)]
    pub force_reimport: bool,
    /// Empty the table (TRUNCATE ... CASCADE, inside the load's transaction) before loading.
    /// Only together with `force_reimport`.
    #[serde(default)]
    pub truncate_before_import: bool,
    /// Name of the Python tool's strategy class. Kept as documentation: the behaviour comes
    /// from the declarative keys (`explode`, `children`, `dedupe`, `filter`).
    pub import_strategy: Option<String>,
    /// One row per element of one or several arrays of each document (link tables).
    pub explode: Option<RawExplode>,
    /// For `explode` tables: `replace` (default) deletes a changed parent's rows and inserts
    /// the current ones, so removals reach PostgreSQL; `upsert` only inserts or updates.
    pub children: Option<String>,
    /// Several documents map to one row: keep one row per key, combining columns by rule.
    pub dedupe: Option<RawDedupe>,
    /// Documents that do not pass are filtered (counted, not loaded, not rejected).
    pub filter: Option<RawFilter>,
    /// Column whose highest value in the target starts the next incremental window
    /// (Matomo tables; default for MongoDB tables: `GREATEST(created_at, updated_at)`).
    pub watermark: Option<String>,
    /// IANA time zone in which `DATE` columns are computed from timestamps (default `UTC`).
    pub time_zone: Option<String>,
    /// Adds a `source_data JSONB` column holding the whole source document as relaxed
    /// Extended JSON (`{"$oid": ...}`, `{"$date": ...}`), so fields no column maps are kept.
    /// MongoDB tables with one row per document (no `explode`, no `dedupe`).
    #[serde(default)]
    pub keep_source: bool,
    /// `postgres_schemas.yaml`: several source tables feeding this one, each with its own
    /// mapping of the table's `columns` (which then declare only names and types). Two
    /// sources giving the same key are a conflict: every row with that key is rejected.
    #[serde(default)]
    pub sources: Vec<RawSourcePart>,
    /// Range partitioning of the target on a time column (`{column: action_timestamp, every:
    /// week}`): the table is created `PARTITION BY RANGE`, and each load creates the
    /// partitions its rows need, inside its transaction. Its keys must include the column.
    pub partition: Option<RawPartition>,
}

/// One source of a table fed by several (`sources:`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSourcePart {
    /// The source PostgreSQL table (`table` or `schema.table`).
    pub postgres_table: String,
    /// How this source fills the table's columns: `name` plus `source`, `template`,
    /// `const`, `value_map`, `regex` or `json` (the type is the table's). A column not listed
    /// reads the source column of its name.
    #[serde(default)]
    pub columns: Vec<RawColumn>,
    /// Rows of this source to leave out, by rule (`equals: {name: Daniel}`): counted as
    /// filtered.
    pub filter: Option<RawFilter>,
}

/// How a table is partitioned.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPartition {
    /// The NOT NULL `TIMESTAMPTZ`, `TIMESTAMP` or `DATE` column whose value picks a partition.
    pub column: String,
    /// `day`, `week` (ISO weeks, from Monday; the default) or `month`; ranges of
    /// `TIMESTAMPTZ` columns are cut in UTC.
    pub every: Option<String>,
}

/// One column of a table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawColumn {
    /// Column name in PostgreSQL.
    pub name: String,
    /// PostgreSQL type: VARCHAR[(n)], CHAR(n), TEXT, SMALLINT, INTEGER, BIGINT, SERIAL,
    /// BIGSERIAL, BOOLEAN, REAL, DOUBLE PRECISION, NUMERIC[(p,s)], TIMESTAMP, TIMESTAMPTZ,
    /// DATE, TIME, BYTEA, JSONB. (In a `sources:` entry, left out: the table's column's.)
    #[serde(default)]
    pub sql_type: String,
    /// Whether NULL is allowed (default true). A NULL in a NOT NULL column is a reject.
    pub nullable: Option<bool>,
    /// `table(column)` this column references.
    pub foreign_key: Option<String>,
    /// Where the value comes from when it differs from the name: a document field path
    /// (`is_success`, `address.city`), `element` for the array element's id in an `explode`
    /// table, or `array_type` for the type of the array an element came from. In
    /// `matomo_api.yaml` tables: `element.<key>` (a key of each element), `element_index`
    /// (its position, from 0).
    pub source: Option<String>,
    /// A text built from sources (`matomo_api.yaml`): `"{idVisit}_{element_index}"`; each
    /// `{...}` names a source as `source` does (`{{` and `}}` are braces); when one has no
    /// value the column is NULL.
    pub template: Option<String>,
    /// The first of these sources holding a value (not missing, null, nor empty text)
    /// (`matomo_api.yaml`).
    pub coalesce: Option<Vec<String>>,
    /// A JSON object (`matomo_api.yaml`): key -> a source, or a list of sources of which the
    /// first holding a value is taken; keys without a value are left out.
    pub json_object: Option<indexmap_lite::OrderedSources>,
    /// Source value -> column value (`{1: male, 2: female}`), compared on the source value's
    /// text (a string as is, a number as written: `1` and `"1"` are the same key); a NULL or
    /// missing source stays NULL. Targets are cast to `sql_type` when the config loads.
    pub value_map: Option<serde_yaml::Mapping>,
    /// With `value_map`: the value of every source value the map does not list (`null`:
    /// NULL).
    #[serde(default, deserialize_with = "present")]
    pub default: Option<serde_yaml::Value>,
    /// With `value_map`, when no `default`: `reject` (the default: the row is rejected with
    /// its value) or `null` (the column is NULL).
    #[serde(default, deserialize_with = "present")]
    pub unmapped: Option<Option<String>>,
    /// The same value on every row, cast to `sql_type` when the config loads.
    #[serde(rename = "const", default, deserialize_with = "present")]
    pub constant: Option<serde_yaml::Value>,
    /// A regular expression (Rust `regex` syntax) searched in the source value's text; the
    /// first capture group, cast to `sql_type` as a text value would be, is the column's value.
    pub regex: Option<String>,
    /// With `regex`, when the text does not match (or the first group takes no part):
    /// `null` (the default) or `reject`.
    pub no_match: Option<String>,
    /// JSONB columns: `wrap` (the source value's text as a JSON string) or `parse` (the text
    /// is JSON; a text that is not is a reject).
    pub json: Option<String>,
}

/// A key given, even as `null` (serde reads a `null` `Option` as absent): `unmapped: null`
/// and `default: null` mean NULL, not "not set".
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

/// Which arrays of a document become rows.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawExplode {
    /// Column that receives the parent document's `_id`; children are replaced per value.
    pub parent_column: Option<String>,
    /// The arrays whose elements become rows; elements are ids or embedded documents with `_id`.
    pub arrays: Vec<RawArray>,
}

/// One exploded array.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawArray {
    /// Field path of the array in the document.
    pub field: String,
    /// Value of the `array_type` column for elements of this array (multi-array tables).
    #[serde(rename = "type")]
    pub type_value: Option<String>,
}

/// One row per key; other columns combined by rule.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDedupe {
    /// Columns that identify a row.
    pub key: Vec<String>,
    /// Column -> `min`, `max`, `first` or `last` (by document order). Columns not named keep
    /// the value of the last document.
    #[serde(default)]
    pub keep: indexmap_lite::OrderedMap,
}

/// Rows to leave out, by rule.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFilter {
    /// Document fields that must exist and be non-null.
    #[serde(default)]
    pub exists: Vec<String>,
    /// Field -> the text its value must have (`{name: Daniel}`); other rows are filtered.
    #[serde(default)]
    pub equals: indexmap_lite::OrderedMap,
}

/// A YAML map read in file order (serde's HashMap would lose it; error messages and dedupe
/// rules follow the order the user wrote).
pub(super) mod indexmap_lite {
    use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
    use std::fmt;

    #[derive(Debug, Default)]
    pub(crate) struct OrderedMap(pub Vec<(String, String)>);

    /// Key -> one source or a list of sources, in file order.
    #[derive(Debug, Default)]
    pub(crate) struct OrderedSources(pub Vec<(String, Vec<String>)>);

    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }

    impl<'de> Deserialize<'de> for OrderedSources {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct MapVisitor;
            impl<'de> Visitor<'de> for MapVisitor {
                type Value = OrderedSources;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("a map of key to a source or a list of sources")
                }
                fn visit_map<A: MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> Result<OrderedSources, A::Error> {
                    let mut entries = Vec::new();
                    while let Some((key, value)) = map.next_entry::<String, OneOrMany>()? {
                        let sources = match value {
                            OneOrMany::One(s) => vec![s],
                            OneOrMany::Many(list) => list,
                        };
                        entries.push((key, sources));
                    }
                    Ok(OrderedSources(entries))
                }
            }
            deserializer.deserialize_map(MapVisitor)
        }
    }

    impl<'de> Deserialize<'de> for OrderedMap {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct MapVisitor;
            impl<'de> Visitor<'de> for MapVisitor {
                type Value = OrderedMap;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("a map of column name to rule")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OrderedMap, A::Error> {
                    let mut entries = Vec::new();
                    while let Some(entry) = map.next_entry::<String, String>()? {
                        entries.push(entry);
                    }
                    Ok(OrderedMap(entries))
                }
            }
            deserializer.deserialize_map(MapVisitor)
        }
    }
}
