//! The load plan: every statement a load runs, built once from the config and the transform
//! manifest, as data. Three executors walk the same plan: the live load runs it
//! (`postgres.rs`), the SQL bundle writes it as a psql script and `--dry-run` prints that
//! script without the data (`sql_files.rs`). A test holds the three together.
//!
//! Per table: lock the target against other writers, then branch on whether it is empty
//! (checked under the lock, so the answer holds until commit):
//!
//! * empty, no foreign key: COPY straight into the table;
//! * empty, with foreign keys: COPY into a temporary stage, move orphans out, plain INSERT;
//! * not empty: COPY into the stage (and the parents of replaced children into their own
//!   stage), move orphans out, delete the children that are gone, then one
//!   `INSERT ... ON CONFLICT DO UPDATE ... WHERE IS DISTINCT FROM`, so a rerun of the same rows
//!   writes nothing.
//!
//! A table receiving many rows has its foreign keys dropped and re-added (validated in one
//! pass) around the write, by plain SQL steps that work the same live and in psql.
//!
//! With `--prune`, a last section deletes the target rows whose key is no longer in the
//! source ([`PrunePlan`]): each table's source keys (written by transform, see
//! `transform::keys`) are copied into a temporary table and the rows about to go counted; a
//! check stops the whole load, naming the tables, when one would lose more than the allowed
//! share (unless `--force`); then the rows go, children first, into the history like any
//! deleted row, so `etl rollback` restores them. A row still referenced by a foreign key of
//! a row that stays (another table's, or a parent pruned in the same statement as its child)
//! is kept, and counted, rather than breaking the key.

use super::ledger;
use crate::config::ddl::{create_table, ident, ident_list};
use crate::config::{ColumnSource, ColumnSpec, Config, Keep, SqlType, TableSpec};
use crate::staging::{FileEntry, ManifestEntry};

/// Rows from which a load rebuilds a table's foreign keys instead of checking them row by
/// row (5x faster on 700k link rows; it holds an exclusive lock on the table until commit).
pub(crate) const FK_REBUILD_ROWS: u64 = 50_000;

/// A whole load: statements before any table, each table in load order, statements after.
#[derive(Debug, Clone)]
pub(crate) struct LoadPlan {
    pub(crate) run_id: String,
    /// The session's search path pinned, the `etl` schema (the ledger) created if missing.
    pub(crate) setup: Vec<String>,
    /// `CREATE TABLE IF NOT EXISTS` for every table of the config (so foreign keys always find
    /// their targets), and the run's ledger row.
    pub(crate) prelude: Vec<String>,
    pub(crate) tables: Vec<TablePlan>,
    /// `--prune`: after every table, the rows whose key is gone from the source.
    pub(crate) prune: Option<PrunePlan>,
    /// History kept for the last few runs only.
    pub(crate) postlude: Vec<String>,
}

/// The prune section of a load. Table indexes point into [`LoadPlan::tables`].
#[derive(Debug, Clone)]
pub(crate) struct PrunePlan {
    /// The table of counts the share check reads.
    pub(crate) setup: Vec<String>,
    /// Per table, in load order: its source keys into a temporary table, its doomed rows
    /// counted. Each is a plan of its own whose data set is the table's keys
    /// ([`Data::Keys`]).
    pub(crate) count: Vec<(usize, TablePlan)>,
    /// Stops the load, naming every table that would lose more than the allowed share;
    /// absent with `--force`.
    pub(crate) check: Option<String>,
    /// Per table, children first: the deletion.
    pub(crate) delete: Vec<(usize, Step)>,
    /// Per table: the keys of the first rows that would go (for `--dry-run`).
    pub(crate) samples: Vec<(usize, String)>,
}

/// How much of a table `--prune` may delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PruneRule {
    /// The largest share of a table's rows, in hundredths of a percent; `None` (`--force`):
    /// any share.
    pub(crate) max_share_bp: Option<u32>,
}

/// Sample keys `--dry-run` shows per pruned table.
pub(crate) const PRUNE_SAMPLES: u32 = 5;

/// The temporary table of per-table counts the share check reads.
const PRUNE_COUNTS: &str = "etl_prune";

/// What a plan needs beyond the config and the tables.
#[derive(Debug, Clone)]
pub(crate) struct PlanOptions<'a> {
    pub(crate) run_id: &'a str,
    /// Where the run's rows came from (`dump`, `mongo`, `matomo`), for the ledger.
    pub(crate) source: String,
    /// Loaded runs whose history is kept (older ones can no longer be rolled back); 0
    /// records none (the load cannot be rolled back, and costs nothing extra).
    pub(crate) keep_history: u32,
    /// `--prune`, and how much it may delete.
    pub(crate) prune: Option<PruneRule>,
}

/// One table's steps, in the order they run.
#[derive(Debug, Clone)]
pub(crate) struct TablePlan {
    pub(crate) table: String,
    /// Rows in the transform output.
    pub(crate) rows: u64,
    /// The staged files of each data set, relative to the transform folder.
    /// (In a prune section's plan: the source's keys, see [`PrunePlan::count`].)
    pub(crate) files: Vec<FileEntry>,
    pub(crate) parent_files: Vec<FileEntry>,
    /// The declared types of the rows' columns (or keys'), and of the parents' one column.
    pub(crate) row_types: Vec<SqlType>,
    pub(crate) parent_type: Option<SqlType>,
    pub(crate) steps: Vec<Step>,
}

impl TablePlan {
    pub(crate) fn files(&self, data: Data) -> &[FileEntry] {
        match data {
            Data::Rows | Data::Keys => &self.files,
            Data::Parents => &self.parent_files,
        }
    }

    /// The declared types of a data set's columns.
    pub(crate) fn types(&self, data: Data) -> Vec<SqlType> {
        match data {
            Data::Rows | Data::Keys => self.row_types.clone(),
            Data::Parents => self.parent_type.into_iter().collect(),
        }
    }
}

/// One thing a load does. Executors interpret each variant; none adds statements of its own.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Step {
    /// A statement run as is.
    Sql(String),
    /// `COPY <into> FROM STDIN`, fed with one of the table's staged data sets.
    Copy {
        /// `table (col, ...)`.
        into: String,
        data: Data,
        /// True when the COPY goes straight into the target: its row count is `inserted`.
        into_target: bool,
    },
    /// Deletes orphan rows from the stage, returning (row key, value) for the rejects.
    Orphans(OrphanCheck),
    /// Deletes the replaced parents' children that are gone (into the history); returns one
    /// row, the count, which is `deleted`.
    DeleteChildren(String),
    /// Writes the stage into the target.
    Write { sql: String, counts: WriteCounts },
    /// Deletes the rows whose key is gone from the source (into the history); returns one
    /// row: the rows deleted (`pruned`, part of `deleted`) and the rows counted before.
    Prune(String),
    /// `then` when `check` (a `SELECT` of one boolean) is true at this point, else `otherwise`.
    IfEmpty {
        check: String,
        then: Vec<Step>,
        otherwise: Vec<Step>,
    },
}

/// Which staged files a COPY reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Data {
    /// The table's rows.
    Rows,
    /// The parents whose children a load replaces.
    Parents,
    /// The keys the source holds (`--prune`), in a prune section's plan.
    Keys,
}

/// What a write statement reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteCounts {
    /// A plain INSERT: its row count is `inserted`.
    Inserted,
    /// The upsert returns one row: (inserted, updated).
    InsertedUpdated,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OrphanCheck {
    pub(crate) column: String,
    /// `table(column)`, for messages.
    pub(crate) references: String,
    /// `DELETE FROM <stage> ... RETURNING <key>, <value>`.
    pub(crate) sql: String,
    /// A self reference may need several passes (a child of an orphan is an orphan).
    pub(crate) repeat: bool,
    /// A parent cycle check: the value it returns is the cycle's path (`3 -> 4 -> 3`).
    pub(crate) cycle: bool,
}

impl Step {
    /// The statement as it is sent to PostgreSQL (the COPY of a data set as `FROM STDIN`);
    /// `None` for a branch, whose statements are those of its arms.
    pub(crate) fn statement(&self) -> Option<String> {
        match self {
            Step::Sql(sql)
            | Step::DeleteChildren(sql)
            | Step::Prune(sql)
            | Step::Write { sql, .. } => Some(sql.clone()),
            Step::Copy { into, .. } => Some(format!("COPY {into} FROM STDIN")),
            Step::Orphans(check) => Some(check.sql.clone()),
            Step::IfEmpty { .. } => None,
        }
    }
}

/// The plan of a run: `tables` are the selected tables with their transform manifest entries,
/// in load order.
pub(crate) fn plan_load(
    config: &Config,
    opts: &PlanOptions<'_>,
    tables: &[(&TableSpec, &ManifestEntry)],
) -> LoadPlan {
    let mut setup = vec![ledger::PIN_SEARCH_PATH.to_string()];
    setup.extend(ledger::SCHEMA.iter().map(ToString::to_string));
    let mut prelude: Vec<String> = config
        .tables
        .iter()
        .map(|t| create_table(t).trim_end().trim_end_matches(';').to_string())
        .collect();
    let rows: Vec<(String, u64)> = tables
        .iter()
        .map(|(t, e)| (t.name.clone(), e.rows))
        .collect();
    let history = opts.keep_history > 0;
    prelude.push(ledger::begin_run(opts.run_id, &opts.source, &rows, history));
    LoadPlan {
        run_id: opts.run_id.to_string(),
        setup,
        prelude,
        tables: tables
            .iter()
            .map(|(t, entry)| TablePlan {
                files: entry.files.clone(),
                parent_files: entry.parent_files.clone(),
                ..plan_table(config, t, entry.rows, history)
            })
            .collect(),
        prune: opts
            .prune
            .map(|rule| plan_prune(config, tables, rule, history)),
        postlude: ledger::prune_history(opts.keep_history),
    }
}

/// The columns of a table's source keys, as transform recorded them.
fn key_columns<'a>(t: &'a TableSpec, entry: &ManifestEntry) -> Vec<&'a ColumnSpec> {
    entry
        .source_keys
        .iter()
        .flat_map(|k| &k.columns)
        .filter_map(|c| t.column(c))
        .collect()
}

/// The prune section for `tables` (each with source keys; the caller refused the others).
fn plan_prune(
    config: &Config,
    tables: &[(&TableSpec, &ManifestEntry)],
    rule: PruneRule,
    history: bool,
) -> PrunePlan {
    let mut plan = PrunePlan {
        setup: vec![format!(
            "CREATE TEMP TABLE {PRUNE_COUNTS} (table_name TEXT NOT NULL, doomed BIGINT NOT NULL, \
             total BIGINT NOT NULL) ON COMMIT DROP"
        )],
        count: Vec::new(),
        check: rule.max_share_bp.map(share_check),
        delete: Vec::new(),
        samples: Vec::new(),
    };
    for (i, (t, entry)) in tables.iter().enumerate() {
        let columns = key_columns(t, entry);
        if columns.is_empty() {
            continue;
        }
        let target = ident(&t.name);
        let keys = ident(&format!("etl_prune_{}", t.name));
        let names: Vec<String> = columns.iter().map(|c| c.name.clone()).collect();
        let typed: Vec<String> = columns
            .iter()
            .map(|c| format!("{} {}", ident(&c.name), c.sql_type.referenced_as()))
            .collect();
        let gone = gone_from_source(&names, &keys);
        let name = literal(&t.name);
        let key_files = entry
            .source_keys
            .as_ref()
            .map(|k| k.files.clone())
            .unwrap_or_default();
        let steps = vec![
                Step::Sql(format!(
                    "CREATE TEMP TABLE {keys} ({}) ON COMMIT DROP",
                    typed.join(", ")
                )),
                Step::Copy {
                    into: format!("{keys} ({})", ident_list(&names)),
                    data: Data::Keys,
                    into_target: false,
                },
                // Temporary tables are never analyzed on their own: the anti-join needs sizes.
                Step::Sql(format!("ANALYZE {keys}")),
                Step::Sql(format!(
                    "INSERT INTO {PRUNE_COUNTS} (table_name, doomed, total) SELECT {name}, \
                     (SELECT count(*) FROM {target} t WHERE {gone}), (SELECT count(*) FROM {target})"
                )),
            ];
        plan.count.push((
            i,
            TablePlan {
                table: t.name.clone(),
                rows: key_files.iter().map(|f| f.rows).sum(),
                files: key_files,
                parent_files: Vec::new(),
                row_types: columns.iter().map(|c| c.sql_type).collect(),
                parent_type: None,
                steps,
            },
        ));
        plan.samples.push((
            i,
            format!(
                "WITH g (k) AS MATERIALIZED (SELECT {}::text FROM {target} t WHERE {gone}) \
                 SELECT k FROM g ORDER BY k LIMIT {PRUNE_SAMPLES}",
                ledger::key_json(t, "t")
            ),
        ));
        let (returning, kept) = if history {
            (
                ledger::returned_row(t, "t"),
                format!(
                    ", kept AS ({})",
                    ledger::record_returned(&t.name, 'd', "gone")
                ),
            )
        } else {
            ("1".to_string(), String::new())
        };
        plan.delete.push((
            i,
            Step::Prune(format!(
                "WITH gone AS (DELETE FROM {target} t WHERE {gone}{} RETURNING {returning}){kept} \
                 SELECT count(*), (SELECT doomed FROM {PRUNE_COUNTS} WHERE table_name = {name}) \
                 FROM gone",
                still_referenced(config, t)
            )),
        ));
    }
    // Children before their parents, so a parent's rows are no longer referenced.
    plan.delete.reverse();
    plan
}

/// Rows of the target (`t`) whose key is not among the source's (`keys`). A row with a NULL
/// in its key cannot be told apart: it stays.
fn gone_from_source(names: &[String], keys: &str) -> String {
    let not_null: Vec<String> = names
        .iter()
        .map(|n| format!("t.{} IS NOT NULL", ident(n)))
        .collect();
    format!(
        "{} AND NOT EXISTS (SELECT 1 FROM {keys} s WHERE {})",
        not_null.join(" AND "),
        key_match(names)
    )
}

/// ` AND NOT EXISTS (...)` per foreign key of the config pointing at `t`: a row something
/// still references stays (the statement sees the rows as they were before it, so a parent
/// pruned together with its child in one table waits for the next prune).
fn still_referenced(config: &Config, t: &TableSpec) -> String {
    let mut out = String::new();
    for other in &config.tables {
        for c in &other.columns {
            let Some(fk) = c.foreign_key.as_ref().filter(|fk| fk.table == t.name) else {
                continue;
            };
            out.push_str(&format!(
                " AND NOT EXISTS (SELECT 1 FROM {} r WHERE r.{} = t.{})",
                ident(&other.name),
                ident(&c.name),
                ident(&fk.column)
            ));
        }
    }
    out
}

/// A share in hundredths of a percent, as people write it (`10%`, `2.5%`).
pub(crate) fn percent(bp: u32) -> String {
    let (whole, hundredths) = (bp / 100, bp % 100);
    if hundredths == 0 {
        format!("{whole}%")
    } else {
        format!("{whole}.{hundredths:02}%").replace("0%", "%")
    }
}

/// Stops the load when a table would lose more than `bp` hundredths of a percent of its
/// rows, naming every such table with its counts. Plain SQL, so psql stops the same way.
fn share_check(bp: u32) -> String {
    // RAISE reads `%` as a placeholder: a literal one is doubled.
    let shown = percent(bp).replace('%', "%%");
    format!(
        "DO $etl$ DECLARE over text; BEGIN SELECT string_agg(format('%s (%s of %s rows)', \
         table_name, doomed, total), ', ' ORDER BY table_name) INTO over FROM {PRUNE_COUNTS} \
         WHERE doomed * 10000 > total * {bp}; IF over IS NOT NULL THEN RAISE EXCEPTION \
         'etl: --prune refused: it would delete more than {shown} of the rows of %; nothing was \
         changed. Check that the source is complete; --force prunes anyway, \
         ETL_PRUNE_MAX_SHARE sets the share', over; END IF; END $etl$"
    )
}

/// The name of a table's temporary stage.
pub(crate) fn stage_name(table: &str) -> String {
    ident(&format!("etl_stage_{table}"))
}

/// One table's steps for `rows` incoming rows; `history` records what `etl rollback` needs.
pub(crate) fn plan_table(config: &Config, t: &TableSpec, rows: u64, history: bool) -> TablePlan {
    let names = Names {
        history,
        ..Names::new(t)
    };
    let mut steps = Vec::new();
    if t.force_reimport && t.truncate_before_import {
        steps.extend(truncate(config, t, &names));
    }
    // Keeps other writers out between the emptiness check and the commit; readers go on.
    steps.push(Step::Sql(format!(
        "LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE",
        names.target
    )));
    steps.push(Step::IfEmpty {
        check: format!("SELECT NOT EXISTS (SELECT 1 FROM {})", names.target),
        then: into_empty(t, &names, rows),
        otherwise: into_loaded(t, &names, rows),
    });
    TablePlan {
        table: t.name.clone(),
        rows,
        files: Vec::new(),
        parent_files: Vec::new(),
        row_types: t.loaded_columns().map(|c| c.sql_type).collect(),
        parent_type: t
            .replace_parent_column()
            .and_then(|p| t.column(p))
            .map(|c| c.sql_type),
        steps,
    }
}

/// `TRUNCATE ... CASCADE`, the rows it removes kept in the history first: this table's and
/// those of the config's tables that reference it, directly or not (CASCADE empties them too).
fn truncate(config: &Config, t: &TableSpec, names: &Names) -> Vec<Step> {
    let mut cascade = vec![t];
    let mut i = 0;
    while let Some(table) = cascade.get(i).copied() {
        for other in &config.tables {
            let references = other.depends_on().any(|d| d == table.name);
            if references && !cascade.iter().any(|c| c.name == other.name) {
                cascade.push(other);
            }
        }
        i += 1;
    }
    let mut steps: Vec<Step> = cascade
        .iter()
        .filter(|_| names.history)
        .map(|c| {
            Step::Sql(ledger::record_rows(
                c,
                'd',
                &format!("{} t", ident(&c.name)),
            ))
        })
        .collect();
    steps.push(Step::Sql(format!(
        "TRUNCATE TABLE {} CASCADE",
        names.target
    )));
    steps
}

/// Identifiers one table's statements share.
struct Names {
    target: String,
    stage: String,
    /// The loaded columns, as a SQL list.
    cols: String,
    /// Whether the steps record history for `etl rollback`.
    history: bool,
}

impl Names {
    fn new(t: &TableSpec) -> Names {
        let loaded: Vec<String> = t.loaded_columns().map(|c| c.name.clone()).collect();
        Names {
            target: ident(&t.name),
            stage: stage_name(&t.name),
            cols: ident_list(&loaded),
            history: true,
        }
    }
}

/// An empty target: no row can conflict and no child needs deleting, so a plain INSERT does
/// (2.4x faster than the upsert on 1M link rows), or a COPY straight into the table when no
/// row can be an orphan.
fn into_empty(t: &TableSpec, names: &Names, rows: u64) -> Vec<Step> {
    // Rollback recognises this run's rows by their transaction id: nothing per row.
    let mut steps: Vec<Step> = names
        .history
        .then(|| Step::Sql(ledger::was_empty(&t.name)))
        .into_iter()
        .collect();
    let has_foreign_keys = t.columns.iter().any(|c| c.foreign_key.is_some());
    // A partitioned table goes through the stage too: its partitions are created from the
    // rows' periods before the rows arrive.
    if !has_foreign_keys && t.partition.is_none() {
        steps.push(Step::Copy {
            into: format!("{} ({})", names.target, names.cols),
            data: Data::Rows,
            into_target: true,
        });
        return steps;
    }
    steps.extend(stage_rows(t, names));
    steps.extend(orphan_checks(t, names).into_iter().map(Step::Orphans));
    steps.extend(create_partitions(t, names));
    let insert = Step::Write {
        sql: format!(
            "INSERT INTO {} ({cols}) SELECT {cols} FROM {}",
            names.target,
            names.stage,
            cols = names.cols
        ),
        counts: WriteCounts::Inserted,
    };
    steps.extend(around_foreign_keys(t, names, rows, insert));
    steps
}

/// A target with rows: stage, orphans out, children that are gone deleted, upsert.
fn into_loaded(t: &TableSpec, names: &Names, rows: u64) -> Vec<Step> {
    let mut steps = stage_rows(t, names);
    let parents = t.replace_parent_column().map(|parent| {
        let pstage = stage_name(&format!("{}_parents", t.name));
        let parent_type = t.column(parent).map_or_else(
            || "TEXT".to_string(),
            |c| c.sql_type.referenced_as().to_string(),
        );
        let setup = [
            Step::Sql(format!(
                "CREATE TEMP TABLE {pstage} (parent {parent_type}) ON COMMIT DROP"
            )),
            Step::Copy {
                into: format!("{pstage} (parent)"),
                data: Data::Parents,
                into_target: false,
            },
        ];
        // Only the children that are gone: the ones still there are upserted, so a rerun of
        // the same run deletes and rewrites nothing. The deleted rows go to the history.
        let (returning, kept) = if names.history {
            (
                ledger::returned_row(t, "t"),
                format!(
                    ", kept AS ({})",
                    ledger::record_returned(&t.name, 'd', "gone")
                ),
            )
        } else {
            ("1".to_string(), String::new())
        };
        let delete = Step::DeleteChildren(format!(
            "WITH gone AS (DELETE FROM {target} t USING (SELECT DISTINCT parent FROM {pstage}) p \
             WHERE t.{} = p.parent AND NOT EXISTS (SELECT 1 FROM {stage} s WHERE {}) \
             RETURNING {returning}){kept} SELECT count(*) FROM gone",
            ident(parent),
            key_match(&t.conflict_key),
            target = names.target,
            stage = names.stage,
        ));
        (setup, delete)
    });
    let delete = parents.map(|(setup, delete)| {
        steps.extend(setup);
        delete
    });
    steps.extend(orphan_checks(t, names).into_iter().map(Step::Orphans));
    steps.extend(delete);
    steps.extend(create_partitions(t, names));
    let updates = upsert_updates(t);
    if names.history && !updates.is_empty() {
        // The previous version of every row the upsert is about to change.
        steps.push(Step::Sql(ledger::record_rows(
            t,
            'b',
            &format!(
                "{} t JOIN {} s ON {} WHERE {}",
                names.target,
                names.stage,
                key_match(&t.conflict_key),
                changes(&updates, "s")
            ),
        )));
    }
    let upsert = Step::Write {
        sql: upsert_sql(t, names, &updates),
        counts: WriteCounts::InsertedUpdated,
    };
    steps.extend(around_foreign_keys(t, names, rows, upsert));
    steps
}

/// For a partitioned table, the statement that creates the partitions the staged rows need,
/// one per period (`<table>_2024w09` for a week), in the load's transaction. A period some
/// partition already covers is left alone: the same name exists (`duplicate_table`), another
/// partition overlaps it (`invalid_object_definition`), or a DEFAULT partition holds rows of
/// it (`check_violation`); the rows then go where PostgreSQL routes them. Creating a
/// partition locks the parent table exclusively until commit.
fn create_partitions(t: &TableSpec, names: &Names) -> Option<Step> {
    let partition = t.partition.as_ref()?;
    let column = t.column(&partition.column)?;
    let unit = partition.every.unit();
    let col = format!("s.{}", ident(&column.name));
    // Periods of TIMESTAMPTZ values are cut in UTC, whatever the session's TimeZone.
    let (start, from, to) = match column.sql_type {
        SqlType::TimestampTz => (
            format!("date_trunc('{unit}', {col} AT TIME ZONE 'UTC')"),
            "p.start AT TIME ZONE 'UTC'".to_string(),
            format!("(p.start + interval '1 {unit}') AT TIME ZONE 'UTC'"),
        ),
        SqlType::Date => (
            format!("date_trunc('{unit}', {col}::timestamp)"),
            "p.start::date".to_string(),
            format!("(p.start + interval '1 {unit}')::date"),
        ),
        _ => (
            format!("date_trunc('{unit}', {col})"),
            "p.start".to_string(),
            format!("p.start + interval '1 {unit}'"),
        ),
    };
    let create = literal("CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)");
    Some(Step::Sql(format!(
        "DO $etl$ DECLARE p record; BEGIN FOR p IN SELECT DISTINCT {start} AS start FROM {stage} s \
         WHERE {col} IS NOT NULL ORDER BY 1 LOOP BEGIN EXECUTE format({create}, {table} || '_' || \
         to_char(p.start, {pattern}), {table}, {from}, {to}); EXCEPTION WHEN duplicate_table OR \
         invalid_object_definition OR check_violation THEN NULL; END; END LOOP; END $etl$",
        stage = names.stage,
        table = literal(&t.name),
        pattern = literal(partition.every.name_pattern()),
    )))
}

/// The steps that put a table's staged rows into its temporary stage and move orphans out,
/// for `etl verify` (the same statements a load begins with).
pub(crate) fn stage_and_orphans(t: &TableSpec) -> Vec<Step> {
    let names = Names::new(t);
    let mut steps = stage_rows(t, &names);
    steps.extend(orphan_checks(t, &names).into_iter().map(Step::Orphans));
    steps
}

/// `CREATE TEMP TABLE <stage>`: the loaded columns, typed as the table's.
pub(crate) fn create_stage(t: &TableSpec) -> String {
    let columns: Vec<String> = t
        .loaded_columns()
        .map(|c| format!("{} {}", ident(&c.name), c.sql_type.referenced_as()))
        .collect();
    format!(
        "CREATE TEMP TABLE {} ({}) ON COMMIT DROP",
        stage_name(&t.name),
        columns.join(", ")
    )
}

/// `CREATE TEMP TABLE <stage>` and the COPY of the rows into it.
fn stage_rows(t: &TableSpec, names: &Names) -> Vec<Step> {
    vec![
        Step::Sql(create_stage(t)),
        Step::Copy {
            into: format!("{} ({})", names.stage, names.cols),
            data: Data::Rows,
            into_target: false,
        },
    ]
}

/// `s.a = t.a AND s.b = t.b` over the conflict key.
pub(crate) fn key_match(key: &[String]) -> String {
    key.iter()
        .map(|k| format!("s.{k} = t.{k}", k = ident(k)))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// One check per foreign key: deletes the stage's rows whose key points nowhere. A
/// self-referencing key (a category tree) is first checked for parent cycles: the rows on a
/// cycle would satisfy the key (PostgreSQL checks it at the statement's end, when every row
/// of the cycle is there) and load a tree that is not one. Their descendants then have no
/// parent left and go as orphans.
fn orphan_checks(t: &TableSpec, names: &Names) -> Vec<OrphanCheck> {
    let mut checks = cycle_checks(t, names);
    checks.extend(missing_parent_checks(t, names));
    checks
}

/// `concat_ws(',', s.k1::text, ...)`: the stage row's conflict key, for reject messages.
fn stage_key_expr(t: &TableSpec) -> String {
    format!(
        "concat_ws(',', {})",
        t.conflict_key
            .iter()
            .map(|k| format!("s.{}::text", ident(k)))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Per self-referencing foreign key: deletes the stage's rows that are their own ancestor,
/// following parents through the stage and, for keys the load does not bring, the target
/// (an update may close a cycle with rows already loaded). Returns each row's key and the
/// cycle's path from it (`3 -> 4 -> 5 -> 3`). Each walk stops at a node it has seen, so it
/// ends on any data.
fn cycle_checks(t: &TableSpec, names: &Names) -> Vec<OrphanCheck> {
    let key_expr = stage_key_expr(t);
    let (stage, target) = (&names.stage, &names.target);
    t.columns
        .iter()
        .filter_map(|c| c.foreign_key.as_ref().map(|fk| (c, fk)))
        .filter(|(_, fk)| fk.table == t.name)
        .map(|(c, fk)| {
            let (col, id) = (ident(&c.name), ident(&fk.column));
            OrphanCheck {
                column: c.name.clone(),
                references: format!("{}({})", fk.table, fk.column),
                sql: format!(
                    "DELETE FROM {stage} s USING (WITH RECURSIVE \
                     edges(k, p) AS (SELECT e.{id}, e.{col} FROM {stage} e UNION ALL \
                     SELECT t.{id}, t.{col} FROM {target} t WHERE NOT EXISTS \
                     (SELECT 1 FROM {stage} e2 WHERE e2.{id} = t.{id})), \
                     walk(start, cur, path) AS (SELECT w.{id}, w.{col}, ARRAY[w.{id}::text] \
                     FROM {stage} w WHERE w.{col} IS NOT NULL UNION ALL \
                     SELECT w.start, e.p, w.path || e.k::text FROM walk w JOIN edges e \
                     ON e.k = w.cur WHERE w.cur <> w.start AND e.p IS NOT NULL \
                     AND NOT (e.k::text = ANY(w.path))) \
                     SELECT DISTINCT ON (start) start, \
                     array_to_string(path || cur::text, ' -> ') AS path \
                     FROM walk WHERE cur = start ORDER BY start) c \
                     WHERE s.{id} = c.start RETURNING {key_expr}, c.path"
                ),
                repeat: false,
                cycle: true,
            }
        })
        .collect()
}

/// One check per foreign key: deletes the stage's rows whose key points nowhere.
fn missing_parent_checks(t: &TableSpec, names: &Names) -> Vec<OrphanCheck> {
    let key_expr = stage_key_expr(t);
    let stage = &names.stage;
    t.columns
        .iter()
        .filter_map(|c| c.foreign_key.as_ref().map(|fk| (c, fk)))
        .map(|(c, fk)| {
            let col = ident(&c.name);
            let self_ref = fk.table == t.name;
            // Parents arriving in the same load count as present.
            let also_stage = if self_ref {
                format!(
                    " AND NOT EXISTS (SELECT 1 FROM {stage} p2 WHERE p2.{} = s.{col})",
                    ident(&fk.column)
                )
            } else {
                String::new()
            };
            OrphanCheck {
                column: c.name.clone(),
                references: format!("{}({})", fk.table, fk.column),
                sql: format!(
                    "DELETE FROM {stage} s WHERE s.{col} IS NOT NULL AND NOT EXISTS \
                     (SELECT 1 FROM {} p WHERE p.{} = s.{col}){also_stage} \
                     RETURNING {key_expr}, s.{col}::text",
                    ident(&fk.table),
                    ident(&fk.column)
                ),
                repeat: self_ref,
                cycle: false,
            }
        })
        .collect()
}

/// `write`, wrapped in dropping and re-adding the table's foreign keys when the load is big
/// enough for one validation pass to beat row-by-row checks. Orphans are already gone from
/// the stage, so the keys hold when they come back.
fn around_foreign_keys(t: &TableSpec, names: &Names, rows: u64, write: Step) -> Vec<Step> {
    let has_foreign_keys = t.columns.iter().any(|c| c.foreign_key.is_some());
    if rows < FK_REBUILD_ROWS || !has_foreign_keys {
        return vec![write];
    }
    let saved = ident(&format!("etl_fkeys_{}", t.name));
    let target = &names.target;
    // Whatever foreign keys the table has now (a user may have added some), by name.
    let save = format!(
        "CREATE TEMP TABLE {saved} ON COMMIT DROP AS SELECT conname::text AS name, \
         pg_get_constraintdef(oid) AS definition FROM pg_constraint \
         WHERE conrelid = {}::regclass AND contype = 'f'",
        literal(target)
    );
    let each = |action: &str| {
        format!(
            "DO $etl$ DECLARE r record; BEGIN FOR r IN SELECT name, definition FROM {saved} \
             ORDER BY name LOOP EXECUTE format({}, r.name, r.definition); END LOOP; END $etl$",
            literal(&format!("ALTER TABLE {target} {action}"))
        )
    };
    vec![
        Step::Sql(save),
        // `%2$s` unused on drop: format() ignores extra arguments.
        Step::Sql(each("DROP CONSTRAINT %I")),
        write,
        Step::Sql(each("ADD CONSTRAINT %I %s")),
    ]
}

/// How many rows `sql` gives, beside its first `n` rows in order of the first of `cols`
/// (the names given to its columns): `count, cols...`. The query runs as a MATERIALIZED CTE
/// so the planner plans it whole: planned under the LIMIT, an anti-join of a 50k-row history
/// with its table became a nested loop (ten minutes instead of 0.1 s).
pub(crate) fn counted_first(sql: &str, cols: &[&str], n: i64) -> String {
    let list = cols.join(", ");
    let first = cols.first().copied().unwrap_or("1");
    format!(
        "WITH d ({list}) AS MATERIALIZED ({sql}) \
         SELECT count(*) OVER (), {list} FROM d ORDER BY {first} LIMIT {n}"
    )
}

/// A string as a SQL literal (`'` doubled; standard_conforming_strings is on by default).
pub(crate) fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The columns an upsert updates and the value each takes: `EXCLUDED.c` (the incoming row),
/// or the dedupe rule's combination with the stored `t.c`. `first` columns keep what is stored.
fn upsert_updates(t: &TableSpec) -> Vec<(String, String)> {
    let key = &t.conflict_key;
    t.loaded_columns()
        .filter(|c| !key.contains(&c.name) && c.source != ColumnSource::Generated)
        .filter_map(|c| {
            let col = ident(&c.name);
            let rule = t.dedupe.as_ref().map_or(Keep::Last, |d| d.rule(&c.name));
            let value = match rule {
                Keep::Last => format!("EXCLUDED.{col}"),
                Keep::Min => format!("LEAST(t.{col}, EXCLUDED.{col})"),
                Keep::Max => format!("GREATEST(t.{col}, EXCLUDED.{col})"),
                Keep::First => return None,
            };
            Some((col, value))
        })
        .collect()
}

/// True when applying `updates` to the stored row `t` changes it; `incoming` names the
/// incoming row (`EXCLUDED` inside the upsert, the stage's alias elsewhere).
fn changes(updates: &[(String, String)], incoming: &str) -> String {
    let old: Vec<String> = updates.iter().map(|(c, _)| format!("t.{c}")).collect();
    let new: Vec<String> = updates
        .iter()
        .map(|(_, v)| v.replace("EXCLUDED.", &format!("{incoming}.")))
        .collect();
    format!("{} IS DISTINCT FROM {}", row_expr(&old), row_expr(&new))
}

/// `INSERT ... ON CONFLICT (key) DO UPDATE SET` every non-key column, only where something
/// differs; dedupe rules decide how a conflicting row combines with the stored one. The keys
/// of inserted rows go to the history in the same statement.
fn upsert_sql(t: &TableSpec, names: &Names, updates: &[(String, String)]) -> String {
    let key = &t.conflict_key;
    let on_conflict = if updates.is_empty() {
        format!("ON CONFLICT ({}) DO NOTHING", ident_list(key))
    } else {
        let set: Vec<String> = updates.iter().map(|(c, v)| format!("{c} = {v}")).collect();
        format!(
            "ON CONFLICT ({}) DO UPDATE SET {} WHERE {}",
            ident_list(key),
            set.join(", "),
            changes(updates, "EXCLUDED")
        )
    };
    let (key, kept) = if names.history {
        (
            format!(", {} AS key", ledger::key_json(t, "t")),
            format!(
                ", kept AS ({})",
                ledger::record_inserted(&t.name, "written")
            ),
        )
    } else {
        (String::new(), String::new())
    };
    // Inserted rows have xmax = 0; updated ones carry the updating transaction's id.
    format!(
        "WITH written AS (INSERT INTO {target} AS t ({cols}) SELECT {cols} FROM {stage} \
         {on_conflict} RETURNING (xmax = 0) AS inserted{key}){kept} \
         SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) \
         FROM written",
        target = names.target,
        stage = names.stage,
        cols = names.cols,
    )
}

/// `(a, b)`; a single value needs `ROW(a)` to compare as a row.
fn row_expr(items: &[impl AsRef<str>]) -> String {
    let list: Vec<&str> = items.iter().map(AsRef::as_ref).collect();
    if list.len() == 1 {
        format!("ROW({})", list[0])
    } else {
        format!("({})", list.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn config() -> Config {
        Config::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config")).unwrap()
    }

    /// Every statement of the steps, both arms of a branch included.
    fn statements(steps: &[Step]) -> Vec<String> {
        let mut out = Vec::new();
        for step in steps {
            match step {
                Step::IfEmpty {
                    check,
                    then,
                    otherwise,
                } => {
                    out.push(check.clone());
                    out.extend(statements(then));
                    out.extend(statements(otherwise));
                }
                other => out.extend(other.statement()),
            }
        }
        out
    }

    fn arms(plan: &TablePlan) -> (&[Step], &[Step]) {
        plan.steps
            .iter()
            .find_map(|s| match s {
                Step::IfEmpty {
                    then, otherwise, ..
                } => Some((then.as_slice(), otherwise.as_slice())),
                _ => None,
            })
            .expect("every table plan branches on an empty target")
    }

    #[test]
    fn logbook_upsert_keeps_earliest_created_and_latest_updated() {
        let config = config();
        let plan = plan_table(&config, config.table("users_logbook").unwrap(), 10, true);
        let all = statements(&plan.steps).join("\n");
        assert!(all.contains("ON CONFLICT (user_id, day) DO UPDATE SET created_at = LEAST(t.created_at, EXCLUDED.created_at), updated_at = GREATEST(t.updated_at, EXCLUDED.updated_at)"), "{all}");
        assert!(
            !all.contains("etl_stage_users_logbook (id"),
            "the SERIAL id is generated: {all}"
        );
        assert!(!all.contains("_parents"), "{all}");
    }

    #[test]
    fn link_tables_replace_children_of_their_parents_only_when_the_target_has_rows() {
        let config = config();
        let plan = plan_table(&config, config.table("users_targets").unwrap(), 10, true);
        let (empty, loaded) = arms(&plan);
        let deletes = |steps: &[Step]| {
            steps
                .iter()
                .filter_map(|s| match s {
                    Step::DeleteChildren(sql) => Some(sql.clone()),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        assert!(deletes(empty).is_empty());
        let delete = deletes(loaded);
        assert_eq!(delete.len(), 1);
        assert!(
            delete[0].contains("WHERE t.user_id = p.parent"),
            "{delete:?}"
        );
        let orphans = loaded
            .iter()
            .filter(|s| matches!(s, Step::Orphans(_)))
            .count();
        assert_eq!(orphans, 2);
        // Upserted link tables keep removed elements: no parent delete.
        let menu = plan_table(&config, config.table("menu_recipes").unwrap(), 10, true);
        assert!(deletes(arms(&menu).1).is_empty());
    }

    /// A category tree's cycle (`5 -> 7 -> 6 -> 5`) satisfied its own foreign key and
    /// loaded: the self reference is now checked for cycles before the orphans.
    #[test]
    fn a_self_reference_is_checked_for_parent_cycles_before_orphans() {
        let config = config();
        let plan = plan_table(&config, config.table("categories").unwrap(), 10, true);
        let (_, loaded) = arms(&plan);
        let checks: Vec<&OrphanCheck> = loaded
            .iter()
            .filter_map(|s| match s {
                Step::Orphans(check) => Some(check),
                _ => None,
            })
            .collect();
        assert_eq!(checks.len(), 2, "{checks:?}");
        assert!(checks[0].cycle && !checks[0].repeat, "{:?}", checks[0]);
        assert!(
            checks[0].sql.contains("WITH RECURSIVE"),
            "{}",
            checks[0].sql
        );
        assert!(!checks[1].cycle && checks[1].repeat, "{:?}", checks[1]);
        // Tables without a self reference get no cycle check.
        let users = plan_table(&config, config.table("users").unwrap(), 10, true);
        assert!(statements(&users.steps)
            .iter()
            .all(|s| !s.contains("WITH RECURSIVE")));
    }

    #[test]
    fn an_empty_table_without_foreign_keys_is_copied_into_directly() {
        let config = config();
        let plan = plan_table(&config, config.table("ingredients").unwrap(), 10, true);
        let (empty, _) = arms(&plan);
        assert_eq!(empty.len(), 2, "{empty:?}");
        assert!(matches!(&empty[0], Step::Sql(sql) if sql.contains("'e')")));
        assert!(matches!(
            &empty[1],
            Step::Copy {
                into_target: true,
                data: Data::Rows,
                ..
            }
        ));
    }

    #[test]
    fn big_loads_rebuild_foreign_keys_around_the_write_in_both_arms() {
        let config = config();
        let table = config.table("users_targets").unwrap();
        let small =
            statements(&plan_table(&config, table, FK_REBUILD_ROWS - 1, true).steps).join("\n");
        assert!(!small.contains("DROP CONSTRAINT"), "{small}");
        let big = plan_table(&config, table, FK_REBUILD_ROWS, true);
        let (empty, loaded) = arms(&big);
        for arm in [empty, loaded] {
            let sql = statements(arm);
            let drop = sql.iter().position(|s| s.contains("DROP CONSTRAINT"));
            let write = arm.iter().position(|s| matches!(s, Step::Write { .. }));
            let add = sql.iter().position(|s| s.contains("ADD CONSTRAINT"));
            assert!(drop < write && write < add && drop.is_some(), "{sql:#?}");
        }
    }

    #[test]
    fn reserved_column_names_are_quoted_everywhere() {
        let config = config();
        let plan = plan_table(&config, config.table("periods").unwrap(), 10, true);
        let all = statements(&plan.steps).join("\n");
        assert!(all.contains("\"order\" = EXCLUDED.\"order\""), "{all}");
        assert!(all.contains("COPY etl_stage_periods ("), "{all}");
        assert!(
            !all.contains(" order,") && !all.contains(" order)"),
            "{all}"
        );
    }

    #[test]
    fn prune_counts_in_load_order_deletes_children_first_and_keeps_referenced_rows() {
        let config = config();
        let keys = |columns: &[&str]| ManifestEntry {
            source_keys: Some(crate::staging::SourceKeys {
                columns: columns.iter().map(|c| c.to_string()).collect(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let (users, links) = (keys(&["id"]), keys(&["user_id"]));
        let tables = [
            (config.table("users").unwrap(), &users),
            (config.table("users_targets").unwrap(), &links),
        ];
        let opts = PlanOptions {
            run_id: "r",
            source: "dump".into(),
            keep_history: 3,
            prune: Some(PruneRule {
                max_share_bp: Some(1_000),
            }),
        };
        let plan = plan_load(&config, &opts, &tables);
        let prune = plan.prune.expect("a prune section");
        let counted: Vec<&str> = prune.count.iter().map(|(_, t)| t.table.as_str()).collect();
        assert_eq!(counted, ["users", "users_targets"]);
        let deleted: Vec<usize> = prune.delete.iter().map(|(i, _)| *i).collect();
        assert_eq!(deleted, [1, 0], "children first");
        let Step::Prune(users_delete) = &prune.delete[1].1 else {
            panic!("a prune step");
        };
        // Rows referenced from another table stay; the deleted ones go to the history.
        for needle in [
            "NOT EXISTS (SELECT 1 FROM coachings r WHERE r.user_id = t.id)",
            "NOT EXISTS (SELECT 1 FROM etl_prune_users s WHERE s.id = t.id)",
            "'d', key, row, row_xmin FROM gone",
        ] {
            assert!(users_delete.contains(needle), "{needle}: {users_delete}");
        }
        let check = prune.check.expect("a share check without --force");
        assert!(check.contains("doomed * 10000 > total * 1000"), "{check}");
        assert!(check.contains("more than 10%% of"), "{check}");
        assert_eq!(percent(250), "2.5%");
        assert_eq!(percent(1), "0.01%");
    }

    /// A partitioned table: both arms stage the rows, create the partitions their weeks need
    /// (one DO block, before the write), then write; the empty arm never COPYs straight into
    /// the parent, whose partitions may not exist yet.
    #[test]
    fn partitioned_tables_create_their_partitions_before_the_write_in_both_arms() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(crate::config::MONGO_FILE),
            "events_log:\n  columns:\n    - { name: action_id, sql_type: TEXT, nullable: false }\n    \
             - { name: action_timestamp, sql_type: TIMESTAMPTZ, nullable: false }\n  \
             primary_key: [action_id, action_timestamp]\n  partition: { column: action_timestamp }\n",
        )
        .unwrap();
        let config = Config::load(dir.path()).unwrap();
        let plan = plan_table(&config, config.table("events_log").unwrap(), 10, true);
        let (empty, loaded) = arms(&plan);
        for arm in [empty, loaded] {
            assert!(
                !arm.iter().any(|s| matches!(
                    s,
                    Step::Copy {
                        into_target: true,
                        ..
                    }
                )),
                "{arm:?}"
            );
            let sql = statements(arm);
            let create = sql
                .iter()
                .position(|s| s.contains("PARTITION OF"))
                .expect("partitions");
            let write = arm
                .iter()
                .position(|s| matches!(s, Step::Write { .. }))
                .unwrap();
            let stage = sql
                .iter()
                .position(|s| s.starts_with("COPY etl_stage_events_log"))
                .unwrap();
            assert!(stage < create && create < write, "{sql:#?}");
            assert!(
                sql[create].contains("date_trunc('week', s.action_timestamp AT TIME ZONE 'UTC')"),
                "{}",
                sql[create]
            );
            assert!(sql[create].contains("'IYYY\"w\"IW'"), "{}", sql[create]);
        }
        let all = statements(&plan.steps).join("\n");
        assert!(
            all.contains("ON CONFLICT (action_id, action_timestamp) DO NOTHING"),
            "{all}"
        );
    }
}
