//! The one owner of indicatif: progress bars on stderr (hidden when stderr is not a terminal
//! or with `--quiet`), and the end-of-command summary table on stdout.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Bars for one command.
#[derive(Clone)]
pub struct Progress {
    multi: MultiProgress,
    visible: bool,
}

impl Progress {
    pub fn new(quiet: bool) -> Progress {
        let visible = !quiet && std::io::stderr().is_terminal();
        let target = if visible {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        Progress {
            multi: MultiProgress::with_draw_target(target),
            visible,
        }
    }

    /// A bar counting rows for one collection or table.
    pub fn rows(&self, name: &str) -> ProgressBar {
        let bar = self.multi.add(ProgressBar::no_length());
        if let Ok(style) = ProgressStyle::with_template(
            "{spinner} {prefix:<32} {human_pos:>12} rows  {per_sec:>14}  {elapsed}",
        ) {
            bar.set_style(style);
        }
        bar.set_prefix(name.to_string());
        if self.visible {
            bar.enable_steady_tick(Duration::from_millis(200));
        }
        bar
    }

    /// Runs `f` with bars suspended, so a log line does not tear through them.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        self.multi.suspend(f)
    }
}

/// A plain text table: header, rule, rows; numbers right-aligned.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let numeric = i > 0
                    && c.chars()
                        .all(|ch| ch.is_ascii_digit() || ch == '.' || ch == '-');
                if numeric {
                    format!("{c:>w$}", w = widths[i])
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = line(header.to_vec());
    out.push('\n');
    out.push_str(
        &widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("  "),
    );
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn table_aligns_numbers_right() {
        let t = super::table(
            &["table", "rows"],
            &[
                vec!["users".into(), "5".into()],
                vec!["days".into(), "120".into()],
            ],
        );
        assert_eq!(t, "table  rows\n-----  ----\nusers     5\ndays    120\n");
    }
}
