//! `imgctl completions SHELL` and `imgctl manpage`.

use std::process::ExitCode;

use anyhow::Context;

/// Print shell completions for imgctl.
///
/// Example: imgctl completions bash > /etc/bash_completion.d/imgctl
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The shell to generate completions for.
    shell: clap_complete::Shell,
}

/// Print imgctl's man page (roff) to stdout.
///
/// Example: imgctl manpage > imgctl.1 && man ./imgctl.1
#[derive(Debug, clap::Args)]
pub struct ManArgs {}

pub fn run(args: Args, mut cmd: clap::Command) -> anyhow::Result<ExitCode> {
    // Rendered into memory first: clap_complete panics when its writer fails.
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "imgctl", &mut out);
    crate::output::write_bytes(&out)?;
    Ok(ExitCode::SUCCESS)
}

pub fn run_man(_args: ManArgs, cmd: clap::Command) -> anyhow::Result<ExitCode> {
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd)
        .render(&mut out)
        .context("rendering the man page")?;
    crate::output::write_bytes(&out)?;
    Ok(ExitCode::SUCCESS)
}
