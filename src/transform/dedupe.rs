//! Several rows with the same key -> one row, each column kept by its rule (min, max, first,
//! last). Rows come in document order across files, so `first`/`last` and the output order
//! (first appearance of each key) are deterministic.

use std::collections::HashMap;

use arrow::array::{ArrayRef, UInt32Array};
use arrow::compute::{concat_batches, take};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, SortField};

use crate::config::{DedupeSpec, Keep};

/// Merges rows sharing `spec.key`. Returns the merged batch and how many rows were merged away.
pub(super) fn dedupe(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    spec: &DedupeSpec,
) -> Result<(RecordBatch, u64), arrow::error::ArrowError> {
    let all = concat_batches(schema, batches)?;
    let n = all.num_rows();
    let key_columns: Vec<ArrayRef> = spec
        .key
        .iter()
        .map(|k| column(&all, k))
        .collect::<Result<_, _>>()?;
    let converter = RowConverter::new(
        key_columns
            .iter()
            .map(|c| SortField::new(c.data_type().clone()))
            .collect(),
    )?;
    let keys = converter.convert_columns(&key_columns)?;

    // Group of each row, groups numbered by first appearance.
    let mut group_of_key: HashMap<&[u8], usize> = HashMap::with_capacity(n);
    let mut group_rows: Vec<Vec<usize>> = Vec::new();
    for row in 0..n {
        let next = group_rows.len();
        let g = *group_of_key.entry(keys.row(row).data()).or_insert(next);
        if g == next {
            group_rows.push(Vec::new());
        }
        group_rows[g].push(row);
    }

    let mut out = Vec::with_capacity(all.num_columns());
    for (i, field) in schema.fields().iter().enumerate() {
        let values = all.column(i);
        let rule = if spec.key.contains(field.name()) {
            Keep::First
        } else {
            spec.rule(field.name())
        };
        let picks: Vec<u32> = match rule {
            Keep::First => group_rows
                .iter()
                .map(|rows| rows[0])
                .map(index)
                .collect::<Result<_, _>>()?,
            Keep::Last => group_rows
                .iter()
                .map(|rows| rows[rows.len() - 1])
                .map(index)
                .collect::<Result<_, _>>()?,
            Keep::Min | Keep::Max => {
                let conv = RowConverter::new(vec![SortField::new(values.data_type().clone())])?;
                let ordered = conv.convert_columns(std::slice::from_ref(values))?;
                group_rows
                    .iter()
                    .map(|rows| {
                        let best = rows.iter().copied().reduce(|a, b| {
                            let b_wins = if rule == Keep::Min {
                                ordered.row(b) < ordered.row(a)
                            } else {
                                ordered.row(b) > ordered.row(a)
                            };
                            if b_wins {
                                b
                            } else {
                                a
                            }
                        });
                        index(best.unwrap_or(0))
                    })
                    .collect::<Result<_, _>>()?
            }
        };
        out.push(take(values, &UInt32Array::from(picks), None)?);
    }
    let merged = (n - group_rows.len()) as u64;
    Ok((RecordBatch::try_new(schema.clone(), out)?, merged))
}

fn column(batch: &RecordBatch, name: &str) -> Result<ArrayRef, arrow::error::ArrowError> {
    batch.column_by_name(name).cloned().ok_or_else(|| {
        arrow::error::ArrowError::SchemaError(format!("dedupe key column `{name}` missing"))
    })
}

fn index(row: usize) -> Result<u32, arrow::error::ArrowError> {
    u32::try_from(row).map_err(|_| {
        arrow::error::ArrowError::ComputeError("more than 4 billion rows to dedupe".into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    #[test]
    fn keeps_earliest_created_and_latest_updated_per_key_across_batches() {
        let schema: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::Utf8, false),
            Field::new("created_at", DataType::Int64, false),
            Field::new("updated_at", DataType::Int64, false),
        ]));
        let batch = |u: Vec<&str>, c: Vec<i64>, up: Vec<i64>| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from(u)),
                    Arc::new(Int64Array::from(c)),
                    Arc::new(Int64Array::from(up)),
                ],
            )
            .unwrap()
        };
        let batches = [
            batch(vec!["a", "b", "a"], vec![5, 1, 3], vec![5, 1, 4]),
            batch(vec!["a"], vec![9], vec![9]),
        ];
        let spec = DedupeSpec {
            key: vec!["user_id".into()],
            keep: vec![
                ("created_at".into(), Keep::Min),
                ("updated_at".into(), Keep::Max),
            ],
        };
        let (out, merged) = dedupe(&schema, &batches, &spec).unwrap();
        assert_eq!(merged, 2);
        let text = arrow::util::pretty::pretty_format_batches(&[out])
            .unwrap()
            .to_string();
        let expected = "\
+---------+------------+------------+
| user_id | created_at | updated_at |
+---------+------------+------------+
| a       | 3          | 9          |
| b       | 1          | 1          |
+---------+------------+------------+";
        assert_eq!(text, expected);
    }
}
