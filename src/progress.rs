//! The one owner of indicatif: progress bars on stderr (hidden when stderr is not a terminal
//! or with `--quiet`), and the end-of-command summary table on stdout.

use std::io::{IsTerminal, Write};
use std::sync::OnceLock;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The bars of the running command. Log lines go through [`LogWriter`], which draws them
/// above the bars instead of through them.
static BARS: OnceLock<MultiProgress> = OnceLock::new();

fn bars() -> &'static MultiProgress {
    BARS.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::hidden()))
}

/// Bars for one command.
#[derive(Clone)]
pub(crate) struct Progress {
    multi: MultiProgress,
    visible: bool,
}

impl Progress {
    pub(crate) fn new(quiet: bool) -> Progress {
        let visible = !quiet && std::io::stderr().is_terminal();
        let multi = bars().clone();
        if visible {
            multi.set_draw_target(ProgressDrawTarget::stderr());
        }
        Progress { multi, visible }
    }

    /// A bar counting rows for one collection or table.
    pub(crate) fn rows(&self, name: &str) -> ProgressBar {
        let bar = self.multi.add(ProgressBar::no_length());
        if let Ok(style) = ProgressStyle::with_template(
            "{spinner} {prefix:<32} {human_pos:>12} rows  {elapsed:>4}  {per_sec:0}",
        ) {
            bar.set_style(style);
        }
        bar.set_prefix(name.to_string());
        if self.visible {
            bar.enable_steady_tick(Duration::from_millis(200));
        }
        bar
    }
}

/// stderr for `tracing`, with the bars (if any) lifted while a line is written.
pub(crate) struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        bars().suspend(|| std::io::stderr().write_all(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Whether log lines on stderr may carry ANSI colours: only on a terminal, and never when
/// `NO_COLOR` is set to a non-empty value (no-color.org), so a log file gets plain text.
pub(crate) fn stderr_colours() -> bool {
    colours(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    )
}

fn colours(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// A plain text table: header, rule, rows; numbers right-aligned.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
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
    use std::ffi::OsStr;

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        assert!(super::colours(true, None));
        assert!(
            super::colours(true, Some(OsStr::new(""))),
            "empty NO_COLOR is unset"
        );
        assert!(!super::colours(true, Some(OsStr::new("1"))));
        assert!(
            !super::colours(false, None),
            "a pipe or a log file gets no escape codes"
        );
    }

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
