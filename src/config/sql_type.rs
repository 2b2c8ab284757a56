//! The PostgreSQL column types a config may declare, parsed once from their YAML spelling.
//!
//! Every stage asks this enum, never the original string: transform picks the Arrow type and
//! the checks (length, range) from it, load and `etl schema` print its DDL spelling.

use std::fmt;

/// A PostgreSQL column type as declared by `sql_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlType {
    /// `VARCHAR` or `VARCHAR(n)`: text, at most `n` characters when given.
    Varchar(Option<u32>),
    /// `CHAR(n)`: text of at most `n` characters (PostgreSQL pads it).
    Char(u32),
    Text,
    SmallInt,
    Integer,
    BigInt,
    /// `SERIAL`: an `INTEGER` that PostgreSQL generates; never filled from the source.
    Serial,
    /// `BIGSERIAL`: a `BIGINT` that PostgreSQL generates.
    BigSerial,
    Boolean,
    Real,
    Double,
    /// `NUMERIC(p,s)` / `DECIMAL(p,s)`, or unconstrained `NUMERIC`.
    Numeric(Option<(u32, u32)>),
    Timestamp,
    TimestampTz,
    Date,
    Time,
    Bytea,
    Jsonb,
}

impl SqlType {
    /// Parses a type as written in YAML (`VARCHAR(255)`, `int`, `double precision`, ...).
    /// Returns `None` for a type the tool does not know.
    pub fn parse(text: &str) -> Option<SqlType> {
        let norm = text
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_ascii_uppercase();
        let (base, args) = match norm.find('(') {
            Some(open) if norm.ends_with(')') => {
                let args: Vec<&str> = norm[open + 1..norm.len() - 1]
                    .split(',')
                    .map(str::trim)
                    .collect();
                (norm[..open].trim(), Some(args))
            }
            Some(_) => return None,
            None => (norm.as_str(), None),
        };
        let one_number = |args: &Option<Vec<&str>>| -> Option<u32> {
            match args.as_deref() {
                Some([n]) => n.parse::<u32>().ok().filter(|n| *n > 0),
                _ => None,
            }
        };
        let ty = match base {
            "VARCHAR" | "CHARACTER VARYING" => match args {
                None => SqlType::Varchar(None),
                Some(_) => SqlType::Varchar(Some(one_number(&args)?)),
            },
            "CHAR" | "CHARACTER" => SqlType::Char(if args.is_none() {
                1
            } else {
                one_number(&args)?
            }),
            "NUMERIC" | "DECIMAL" => match args.as_deref() {
                None => SqlType::Numeric(None),
                Some([p]) => SqlType::Numeric(Some((p.parse().ok()?, 0))),
                Some([p, s]) => {
                    let (p, s): (u32, u32) = (p.parse().ok()?, s.parse().ok()?);
                    if p == 0 || p > 1000 || s > p {
                        return None;
                    }
                    SqlType::Numeric(Some((p, s)))
                }
                Some(_) => return None,
            },
            _ if args.is_some() => return None,
            "TEXT" => SqlType::Text,
            "SMALLINT" | "INT2" => SqlType::SmallInt,
            "INTEGER" | "INT" | "INT4" => SqlType::Integer,
            "BIGINT" | "INT8" => SqlType::BigInt,
            "SERIAL" | "SERIAL4" => SqlType::Serial,
            "BIGSERIAL" | "SERIAL8" => SqlType::BigSerial,
            "BOOLEAN" | "BOOL" => SqlType::Boolean,
            "REAL" | "FLOAT4" => SqlType::Real,
            "DOUBLE PRECISION" | "DOUBLE" | "FLOAT" | "FLOAT8" => SqlType::Double,
            "TIMESTAMP" | "TIMESTAMP WITHOUT TIME ZONE" => SqlType::Timestamp,
            "TIMESTAMPTZ" | "TIMESTAMP WITH TIME ZONE" => SqlType::TimestampTz,
            "DATE" => SqlType::Date,
            "TIME" | "TIME WITHOUT TIME ZONE" => SqlType::Time,
            "BYTEA" => SqlType::Bytea,
            "JSONB" | "JSON" => SqlType::Jsonb,
            _ => return None,
        };
        Some(ty)
    }

    /// True for `SERIAL`/`BIGSERIAL`: PostgreSQL fills the column, the source never does.
    pub fn is_generated(self) -> bool {
        matches!(self, SqlType::Serial | SqlType::BigSerial)
    }

    /// The type a foreign key pointing at a column of this type should have.
    pub fn referenced_as(self) -> SqlType {
        match self {
            SqlType::Serial => SqlType::Integer,
            SqlType::BigSerial => SqlType::BigInt,
            other => other,
        }
    }
}

impl fmt::Display for SqlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SqlType::Varchar(None) => f.write_str("VARCHAR"),
            SqlType::Varchar(Some(n)) => write!(f, "VARCHAR({n})"),
            SqlType::Char(n) => write!(f, "CHAR({n})"),
            SqlType::Text => f.write_str("TEXT"),
            SqlType::SmallInt => f.write_str("SMALLINT"),
            SqlType::Integer => f.write_str("INTEGER"),
            SqlType::BigInt => f.write_str("BIGINT"),
            SqlType::Serial => f.write_str("SERIAL"),
            SqlType::BigSerial => f.write_str("BIGSERIAL"),
            SqlType::Boolean => f.write_str("BOOLEAN"),
            SqlType::Real => f.write_str("REAL"),
            SqlType::Double => f.write_str("DOUBLE PRECISION"),
            SqlType::Numeric(None) => f.write_str("NUMERIC"),
            SqlType::Numeric(Some((p, s))) => write!(f, "NUMERIC({p},{s})"),
            SqlType::Timestamp => f.write_str("TIMESTAMP"),
            SqlType::TimestampTz => f.write_str("TIMESTAMPTZ"),
            SqlType::Date => f.write_str("DATE"),
            SqlType::Time => f.write_str("TIME"),
            SqlType::Bytea => f.write_str("BYTEA"),
            SqlType::Jsonb => f.write_str("JSONB"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_spellings_of_the_reference() {
        assert_eq!(SqlType::parse("VARCHAR"), Some(SqlType::Varchar(None)));
        assert_eq!(
            SqlType::parse("varchar( 255 )"),
            Some(SqlType::Varchar(Some(255)))
        );
        assert_eq!(SqlType::parse("double   precision"), Some(SqlType::Double));
        assert_eq!(
            SqlType::parse("DECIMAL(9,6)"),
            Some(SqlType::Numeric(Some((9, 6))))
        );
        assert_eq!(SqlType::parse("serial"), Some(SqlType::Serial));
        assert_eq!(SqlType::parse("TIMESTAMP"), Some(SqlType::Timestamp));
    }

    #[test]
    fn refuses_unknown_or_malformed_types() {
        for bad in [
            "STRING",
            "VARCHAR(",
            "VARCHAR(0)",
            "VARCHAR(x)",
            "TEXT(3)",
            "NUMERIC(2,5)",
            "",
        ] {
            assert_eq!(SqlType::parse(bad), None, "{bad} should be refused");
        }
    }

    #[test]
    fn display_round_trips() {
        for text in [
            "VARCHAR(100)",
            "NUMERIC(20,0)",
            "DOUBLE PRECISION",
            "CHAR(3)",
            "BYTEA",
        ] {
            let ty = SqlType::parse(text).unwrap();
            assert_eq!(ty.to_string(), text);
            assert_eq!(SqlType::parse(&ty.to_string()), Some(ty));
        }
    }
}
