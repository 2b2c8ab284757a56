//! PostgreSQL DDL implied by the config: `etl schema` prints it, `etl load` runs it for
//! missing tables. Identifiers are quoted only where PostgreSQL needs it.

use super::{Config, TableSpec};

/// `CREATE TABLE IF NOT EXISTS` for every table, in load order.
pub fn schema_sql(config: &Config) -> String {
    config
        .tables
        .iter()
        .map(create_table)
        .collect::<Vec<_>>()
        .join("\n")
}

/// One table's `CREATE TABLE IF NOT EXISTS` statement.
pub fn create_table(t: &TableSpec) -> String {
    let mut lines: Vec<String> = t
        .columns
        .iter()
        .map(|c| {
            let not_null = if c.nullable { "" } else { " NOT NULL" };
            format!("    {} {}{not_null}", ident(&c.name), c.sql_type)
        })
        .collect();
    if !t.primary_key.is_empty() {
        lines.push(format!("    PRIMARY KEY ({})", ident_list(&t.primary_key)));
    }
    if !t.unique.is_empty() && t.unique != t.primary_key {
        lines.push(format!("    UNIQUE ({})", ident_list(&t.unique)));
    }
    for c in &t.columns {
        if let Some(fk) = &c.foreign_key {
            lines.push(format!(
                "    FOREIGN KEY ({}) REFERENCES {} ({})",
                ident(&c.name),
                ident(&fk.table),
                ident(&fk.column)
            ));
        }
    }
    let partition = t.partition.as_ref().map_or_else(String::new, |p| {
        format!(" PARTITION BY RANGE ({})", ident(&p.column))
    });
    format!(
        "CREATE TABLE IF NOT EXISTS {} (\n{}\n){partition};\n",
        ident(&t.name),
        lines.join(",\n")
    )
}

/// A comma-separated list of identifiers.
pub fn ident_list(names: &[String]) -> String {
    names
        .iter()
        .map(|n| ident(n))
        .collect::<Vec<_>>()
        .join(", ")
}

/// An identifier as PostgreSQL must read it: bare when it is a lower-case plain word that is
/// not reserved, double-quoted (with `"` doubled) otherwise.
pub fn ident(name: &str) -> String {
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain && !RESERVED.contains(&name) {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// PostgreSQL's reserved key words, and the non-reserved ones that cannot be column names
/// (PostgreSQL documentation, appendix C).
const RESERVED: &[&str] = &[
    "all",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asymmetric",
    "authorization",
    "binary",
    "both",
    "case",
    "cast",
    "check",
    "collate",
    "collation",
    "column",
    "concurrently",
    "constraint",
    "create",
    "cross",
    "current_catalog",
    "current_date",
    "current_role",
    "current_schema",
    "current_time",
    "current_timestamp",
    "current_user",
    "default",
    "deferrable",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "except",
    "false",
    "fetch",
    "for",
    "foreign",
    "freeze",
    "from",
    "full",
    "grant",
    "group",
    "having",
    "ilike",
    "in",
    "initially",
    "inner",
    "intersect",
    "into",
    "is",
    "isnull",
    "join",
    "lateral",
    "leading",
    "left",
    "like",
    "limit",
    "localtime",
    "localtimestamp",
    "natural",
    "not",
    "notnull",
    "null",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "outer",
    "overlaps",
    "placing",
    "primary",
    "references",
    "returning",
    "right",
    "select",
    "session_user",
    "similar",
    "some",
    "symmetric",
    "system_user",
    "table",
    "tablesample",
    "then",
    "to",
    "trailing",
    "true",
    "union",
    "unique",
    "user",
    "using",
    "variadic",
    "verbose",
    "when",
    "where",
    "window",
    "with",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_only_where_needed() {
        assert_eq!(ident("days_numbers"), "days_numbers");
        assert_eq!(ident("order"), "\"order\"");
        assert_eq!(ident("user"), "\"user\"");
        assert_eq!(ident("type"), "type");
        assert_eq!(ident("CamelCase"), "\"CamelCase\"");
        assert_eq!(ident("9lives"), "\"9lives\"");
        assert_eq!(ident("we\"ird"), "\"we\"\"ird\"");
    }
}
