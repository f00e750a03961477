//! `imgctl measure …`: extend a PCR the way systemd-pcrextend does and append the matching
//! record to systemd's userspace measurement log, under the log's lock.

use std::fs::{File, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use imgctl_measure::userspace_record::{
    write_record, BreakGlass, LogFile, Origin, UserspaceRecord, WriteError, BREAK_GLASS_PCR,
    DEFAULT_LOG,
};
use imgctl_measure::HashAlg;

/// Measure an event into the TPM and systemd's userspace log (/run/log/systemd/tpm2-measure.log).
///
/// Each command extends one PCR in every active bank with H(string) and appends one JSON-SEQ
/// record, holding an exclusive flock on the log; the log's sticky bit is set while the two
/// are out of step, so a crash in between is visible. If the extend fails, nothing is written.
///
/// Example: imgctl measure --tcti swtpm:host=127.0.0.1,port=2321 break-glass --reason "root shell for disk recovery" --actor alice
#[derive(Debug, clap::Args)]
pub struct Args {
    /// TCTI (see `imgctl tpm --help`).
    #[arg(long, global = true, default_value = imgctl_tpm::DEFAULT_TCTI, env = "IMGCTL_TCTI")]
    tcti: String,
    /// The userspace measurement log.
    #[arg(long, global = true, default_value = DEFAULT_LOG, value_name = "FILE")]
    log: PathBuf,
    /// Bank; repeat for several. Default: every active bank (as systemd-pcrextend).
    #[arg(long = "bank", global = true, value_name = "BANK")]
    banks: Vec<HashAlg>,
    /// Print the appended record as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, clap::Subcommand)]
enum What {
    /// A systemd-pcrphase word into PCR 11 (eventType "phase").
    Phase {
        /// enter-initrd, leave-initrd, sysinit, ready, shutdown, final, or another word.
        word: String,
    },
    /// Record that emergency access was used: who, why, when (eventType "break-glass",
    /// PCR 15 by default; see docs/break-glass.md).
    BreakGlass {
        /// Why the glass was broken.
        #[arg(long)]
        reason: String,
        /// Who broke it. Default: $SUDO_USER, else $USER, else "unknown".
        #[arg(long)]
        actor: Option<String>,
        /// What kind of override: debug-shell, emergency-login, recovery-key, …
        #[arg(long, default_value = "unspecified")]
        kind: String,
        /// PCR to measure into.
        #[arg(long, default_value_t = BREAK_GLASS_PCR)]
        pcr: u32,
    },
    /// Any string into any PCR, with an eventType of your choice.
    Event {
        #[arg(long)]
        pcr: u32,
        /// The measured bytes (UTF-8, no NUL).
        #[arg(long)]
        string: String,
        #[arg(long, default_value = "imgctl")]
        event_type: String,
    },
}

fn origin() -> anyhow::Result<Origin> {
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .context("reading /proc/sys/kernel/random/boot_id")?
        .trim()
        .replace('-', "");
    let t = rustix::time::clock_gettime_dynamic(rustix::time::DynamicClockId::Boottime)
        .context("reading CLOCK_BOOTTIME")?;
    let usec = u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000
        + u64::try_from(t.tv_nsec).unwrap_or(0) / 1000;
    Ok(Origin {
        boot_id,
        timestamp_usec: usec,
    })
}

fn default_actor() -> String {
    ["SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "unknown".into())
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    // The TPM first: when it is unreachable nothing is created or written.
    let mut tpm = crate::cmd::tpm::open(&args.tcti)?;
    let banks = if args.banks.is_empty() {
        tpm.active_banks()?
    } else {
        args.banks.clone()
    };
    if banks.is_empty() {
        bail!("the TPM has no active PCR bank imgctl can compute");
    }
    let origin = origin()?;
    let record = match &args.what {
        What::Phase { word } => UserspaceRecord::phase(word, &banks, &origin)?,
        What::BreakGlass {
            reason,
            actor,
            kind,
            pcr,
        } => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .context("system clock before 1970")?
                .as_secs();
            let actor = actor.clone().unwrap_or_else(default_actor);
            BreakGlass::new(&actor, kind, reason, now)?.record(*pcr, &banks, &origin)?
        }
        What::Event {
            pcr,
            string,
            event_type,
        } => UserspaceRecord::new(*pcr, &banks, string.clone(), event_type, &origin)?,
    };
    if let Some(dir) = args.log.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(&args.log)
        .with_context(|| format!("opening {}", args.log.display()))?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
        .with_context(|| format!("locking {}", args.log.display()))?;
    let mut log = Log {
        file,
        path: &args.log,
    };
    // The protocol (dirty mark, extend, append, unmark) is the library's.
    let written = write_record(&mut log, &record, &banks, |pcr, digests| {
        tpm.extend(pcr, digests)
            .map_err(|e| anyhow::Error::from(e).context(format!("extending PCR {pcr}")))
    });
    match written {
        Ok(w) if w.was_dirty => eprintln!(
            "imgctl: warning: {} is marked dirty (sticky bit): an earlier writer stopped between \
             extending and logging, so this log does not replay; the mark stays",
            args.log.display()
        ),
        Ok(_) => {}
        Err(WriteError::Log(e)) | Err(WriteError::Extend(e)) => return Err(e),
        Err(WriteError::Append(e)) => {
            return Err(e.context(format!(
                "appending to {} (left marked dirty)",
                args.log.display()
            )))
        }
    }
    drop(log); // releases the lock
    if args.json {
        // The record exactly as appended to the log, without the JSON-SEQ framing.
        let seq = record.to_json_seq();
        let json: serde_json::Value = serde_json::from_slice(seq.get(1..).unwrap_or_default())
            .context("re-reading the record just written")?;
        crate::output::print_json(&json)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The locked log file, for [`write_record`].
struct Log<'a> {
    file: File,
    path: &'a std::path::Path,
}

impl LogFile for Log<'_> {
    type Error = anyhow::Error;
    fn mode(&mut self) -> anyhow::Result<u32> {
        Ok(self
            .file
            .metadata()
            .with_context(|| format!("stat {}", self.path.display()))?
            .permissions()
            .mode())
    }
    fn set_mode(&mut self, mode: u32) -> anyhow::Result<()> {
        set_mode(&self.file, mode, self.path)
    }
    fn append(&mut self, data: &[u8]) -> anyhow::Result<()> {
        append(&mut self.file, data).with_context(|| format!("writing {}", self.path.display()))
    }
}

fn set_mode(f: &File, mode: u32, path: &std::path::Path) -> anyhow::Result<()> {
    f.set_permissions(Permissions::from_mode(mode))
        .with_context(|| format!("chmod {:o} {}", mode, path.display()))
}

fn append(f: &mut File, data: &[u8]) -> std::io::Result<()> {
    f.write_all(data)?;
    f.sync_data()
}
