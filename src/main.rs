//! `imgctl`: build measured, immutable Linux OS images the systemd way, predict the PCRs a
//! machine will show when it boots them, and verify afterwards what it booted.
//!
//! This binary only wires the library crates together: argument parsing, output rendering and
//! exit codes. Each subcommand lives in its own module under `cmd/`.

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

mod cmd;
mod output;
mod signals;
mod uki_input;

/// Build measured, immutable Linux OS images and prove what a machine booted.
///
/// Exit status: 0 success; 1 failure (bad input, tool error); 2 usage error; commands that
/// render a verdict (verify, audit, vm) document their own non-zero codes.
#[derive(Debug, Parser)]
#[command(
    name = "imgctl",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Build(cmd::build::Args),
    Inspect(cmd::inspect::Args),
    PredictPcrs(cmd::predict::Args),
    Chid(cmd::chid::Args),
    SignPcrs(cmd::sign_pcrs::Args),
    SignPe(cmd::sign_pe::Args),
    Keygen(cmd::keygen::Args),
    #[cfg(feature = "tpm")]
    Tpm(cmd::tpm::Args),
    #[cfg(feature = "tpm")]
    Measure(cmd::measure::Args),
    Ext(cmd::ext::Args),
    Completions(cmd::completions::Args),
    Manpage(cmd::completions::ManArgs),
    Eventlog(cmd::eventlog::Args),
    Verify(cmd::verify::Args),
    Audit(cmd::audit::Args),
    Log(cmd::log::Args),
    Vm(cmd::vm::Args),
    Serve(cmd::serve::Args),
    #[cfg(feature = "tpm")]
    Attest(cmd::attest::Args),
}

fn main() -> ExitCode {
    signals::install();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Build(a) => cmd::build::run(a),
        Command::Inspect(a) => cmd::inspect::run(a),
        Command::PredictPcrs(a) => cmd::predict::run(a),
        Command::Chid(a) => cmd::chid::run(a),
        Command::SignPcrs(a) => cmd::sign_pcrs::run(a),
        Command::SignPe(a) => cmd::sign_pe::run(a),
        Command::Keygen(a) => cmd::keygen::run(a),
        #[cfg(feature = "tpm")]
        Command::Tpm(a) => cmd::tpm::run(a),
        #[cfg(feature = "tpm")]
        Command::Measure(a) => cmd::measure::run(a),
        Command::Ext(a) => cmd::ext::run(a),
        Command::Completions(a) => cmd::completions::run(a, Cli::command()),
        Command::Manpage(a) => cmd::completions::run_man(a, Cli::command()),
        Command::Eventlog(a) => cmd::eventlog::run(a),
        Command::Verify(a) => cmd::verify::run(a),
        Command::Audit(a) => cmd::audit::run(a),
        Command::Log(a) => cmd::log::run(a),
        Command::Vm(a) => cmd::vm::run(a),
        Command::Serve(a) => cmd::serve::run(a),
        #[cfg(feature = "tpm")]
        Command::Attest(a) => cmd::attest::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => match e.downcast_ref::<output::StdoutError>() {
            // The reader went away (`| head -1`): stop quietly, as a filter does.
            Some(s) if s.is_closed_pipe() => ExitCode::FAILURE,
            _ => {
                eprintln!("imgctl: error: {}", crate::output::render_error(&e));
                ExitCode::FAILURE
            }
        },
    }
}
