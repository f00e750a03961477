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
