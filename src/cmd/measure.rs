//! `imgctl measure …`: extend a PCR the way systemd-pcrextend does and append the matching
//! record to systemd's userspace measurement log, under the log's lock.

use std::fs::{File, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use imgctl_attest::userspace_record::{
    write_record, BreakGlass, LogFile, Origin, UserspaceRecord, WriteError, BREAK_GLASS_PCR,
    DEFAULT_LOG,
};
use imgctl_measure::bank::PcrIndex;
use imgctl_measure::HashAlg;

/// Measure an event into the TPM and systemd's userspace log (/run/log/systemd/tpm2-measure.log).
///
/// Each command extends one PCR in every active bank with H(string) and appends one JSON-SEQ
/// record, holding an exclusive flock on the log; the log's sticky bit is set while the two
/// are out of step, so a crash in between is visible. If the extend fails, nothing is written.
/// Every argument (the record's fields, PCR 0–23, the log's path) is checked before the TPM is
/// opened.
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
        /// Why the glass was broken (not empty).
        #[arg(long, value_parser = non_empty)]
        reason: String,
        /// Who broke it. Default: $SUDO_USER, else $USER, else "unknown".
        #[arg(long, value_parser = non_empty)]
        actor: Option<String>,
        /// What kind of override: debug-shell, emergency-login, recovery-key, …
        #[arg(long, default_value = "unspecified", value_parser = non_empty)]
        kind: String,
        /// PCR to measure into (0–23).
        #[arg(long, default_value_t = break_glass_pcr())]
        pcr: PcrIndex,
    },
    /// Any string into any PCR, with an eventType of your choice.
    Event {
        /// PCR to measure into (0–23).
        #[arg(long)]
        pcr: PcrIndex,
        /// The measured bytes (UTF-8, no NUL).
        #[arg(long)]
        string: String,
        #[arg(long, default_value = "imgctl", value_parser = non_empty)]
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

/// A clap value parser: text that is not empty or only white space.
fn non_empty(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(s.to_owned())
    }
}

fn break_glass_pcr() -> PcrIndex {
    PcrIndex::new(BREAK_GLASS_PCR).unwrap_or_else(|_| unreachable!("PCR 15 is 0–23"))
}

/// The record `args` asks for, with digests in `banks`.
fn record(
    args: &Args,
    banks: &[HashAlg],
    origin: &Origin,
    now: u64,
) -> anyhow::Result<UserspaceRecord> {
    Ok(match &args.what {
        What::Phase { word } => UserspaceRecord::phase(word, banks, origin)?,
        What::BreakGlass {
            reason,
            actor,
            kind,
            pcr,
        } => {
            let actor = actor.clone().unwrap_or_else(default_actor);
            BreakGlass::new(&actor, kind, reason, now)
                .map_err(|e| anyhow::anyhow!("break-glass: {e}"))?
                .record(pcr.get(), banks, origin)?
        }
        What::Event {
            pcr,
            string,
            event_type,
        } => UserspaceRecord::new(pcr.get(), banks, string.clone(), event_type, origin)?,
    })
}

/// The log must be a regular file (or not exist yet) in a folder that can be written or made.
fn check_log(log: &std::path::Path) -> anyhow::Result<()> {
    match std::fs::symlink_metadata(log) {
        Ok(m) if m.is_file() => {}
        Ok(_) => imgctl_fsio::open_regular(log).map(|_| ())?,
        // Missing, or a file where a parent folder should be (named below).
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) => {}
        Err(e) => return Err(e).with_context(|| format!("--log {}", log.display())),
    }
    if let Some(dir) = log.parent().filter(|d| !d.as_os_str().is_empty()) {
        imgctl_fsio::check_output_dir(dir).context("--log")?;
    }
    Ok(())
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    // Everything is checked before the TPM is opened: the record (in the banks given, or
    // SHA-256 until the TPM names its active ones) and the log's path.
    let origin = origin()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("system clock before 1970")?
        .as_secs();
    let check_banks = if args.banks.is_empty() {
        vec![HashAlg::SHA256]
    } else {
        args.banks.clone()
    };
    record(&args, &check_banks, &origin, now)?;
    check_log(&args.log)?;
    // The TPM next: when it is unreachable nothing is created or written.
    let mut tpm = crate::cmd::tpm::open(&args.tcti)?;
    let banks = if args.banks.is_empty() {
        tpm.active_banks()?
    } else {
        args.banks.clone()
    };
    if banks.is_empty() {
        bail!("the TPM has no active PCR bank imgctl can compute");
    }
    let record = record(&args, &banks, &origin, now)?;
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
