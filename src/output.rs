//! Output helpers shared by the subcommands: JSON on stdout, progress only on a terminal.

use std::io::{IsTerminal, Write};

use anyhow::Context;
use serde::Serialize;

/// Prints a value as pretty JSON on stdout.
pub fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    let mut text = serde_json::to_vec_pretty(value).context("rendering JSON")?;
    text.push(b'\n');
    write_bytes(&text)?;
    Ok(())
}

/// A spinner on stderr while `work` runs, when stderr is a terminal; nothing otherwise.
pub fn with_spinner<T>(message: &str, work: impl FnOnce() -> T) -> T {
    if !std::io::stderr().is_terminal() {
        return work();
    }
    let bar = indicatif::ProgressBar::new_spinner().with_message(message.to_owned());
    bar.enable_steady_tick(std::time::Duration::from_millis(100));
    let out = work();
    bar.finish_and_clear();
    out
}

/// SOURCE_DATE_EPOCH from the environment, 0 when unset (builds are reproducible either way).
pub fn source_date_epoch() -> anyhow::Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds")),
        Err(_) => Ok(0),
    }
}

/// An error and its causes on one line, `outer: cause: inner cause`, without repeating a cause
/// whose text its parent already includes (many library errors print their source in their
/// own message, `"{file}: {source}"`, and also return it as `source()`; anyhow's `{:#}` would
/// print it twice).
pub fn render_error(e: &anyhow::Error) -> String {
    let mut out = String::new();
    let mut parent = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.is_empty() {
            out.push_str(&text);
        } else if !text.is_empty() && !parent.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        parent = text;
    }
    out
}

/// Standard output could not be written (closed pipe, full disk, …). `main` stops quietly on a
/// closed pipe (`imgctl eventlog show LOG | head -1`) and reports any other write error.
#[derive(Debug)]
pub struct StdoutError(pub std::io::Error);

impl std::fmt::Display for StdoutError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "writing to standard output: {}", self.0)
    }
}

impl std::error::Error for StdoutError {}

impl StdoutError {
    /// True when the reader went away: nothing to report, the output simply has no reader.
    pub fn is_closed_pipe(&self) -> bool {
        self.0.kind() == std::io::ErrorKind::BrokenPipe
    }
}

/// Writes formatted text to stdout without panicking (unlike `print!`); flushes, so a full
/// device is reported here and not lost at exit.
pub fn write_stdout(args: std::fmt::Arguments<'_>) -> Result<(), StdoutError> {
    let mut out = std::io::stdout().lock();
    out.write_fmt(args)
        .and_then(|()| out.flush())
        .map_err(StdoutError)
}

/// Writes raw bytes to stdout, flushed; errors as [`write_stdout`].
pub fn write_bytes(bytes: &[u8]) -> Result<(), StdoutError> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(StdoutError)
}

/// `println!` that returns an error instead of panicking on a closed or full stdout.
macro_rules! outln {
    () => { $crate::output::write_stdout(format_args!("\n"))? };
    ($($arg:tt)*) => { $crate::output::write_stdout(format_args!("{}\n", format_args!($($arg)*)))? };
}

/// `print!` that returns an error instead of panicking on a closed or full stdout.
macro_rules! out {
    ($($arg:tt)*) => { $crate::output::write_stdout(format_args!($($arg)*))? };
}

pub(crate) use {out, outln};

#[cfg(test)]
mod tests {
    use super::render_error;

    /// A library error that prints its source in its own message and also returns it.
    #[derive(Debug)]
    struct Repeats {
        path: &'static str,
        source: std::io::Error,
    }

    impl std::fmt::Display for Repeats {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{}: {}", self.path, self.source)
        }
    }

    impl std::error::Error for Repeats {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.source)
        }
    }

    #[test]
    fn each_cause_is_printed_once() {
        // A cause that its parent's message already includes is left out ...
        let inner = std::io::Error::other("bad magic");
        let e = anyhow::Error::new(Repeats {
            path: "x.raw",
            source: inner,
        })
        .context("inspecting x.raw");
        assert_eq!(render_error(&e), "inspecting x.raw: x.raw: bad magic");
        // ... and one it does not include is printed, as anyhow's {:#} does.
        let e = anyhow::anyhow!("no MZ").context("reading a.efi");
        assert_eq!(render_error(&e), format!("{e:#}"));
        assert_eq!(render_error(&e), "reading a.efi: no MZ");
    }
}
