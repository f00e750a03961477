//! `imgctl measure …`: extend a PCR the way systemd-pcrextend does and append the matching
//! record to systemd's userspace measurement log, under the log's lock.

use std::fs::{File, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use imgctl_measure::userspace_record::{BreakGlass, Origin, Record, BREAK_GLASS_PCR, DEFAULT_LOG};
use imgctl_measure::HashAlg;

/// The sticky bit marks the log dirty between the extend and the append.
const S_ISVTX: u32 = 0o1000;

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
        What::Phase { word } => Record::phase(word, &banks, &origin)?,
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
        } => Record::new(*pcr, &banks, string.clone(), event_type, &origin)?,
    };
    let pcr = record.pcr.unwrap_or(0);
    let digests = banks
        .iter()
        .map(|b| {
            record
                .digest(*b)
                .context("record lacks a bank digest")?
                .map(|d| (*b, d))
                .map_err(anyhow::Error::from)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;

    if let Some(dir) = args.log.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut log = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(&args.log)
        .with_context(|| format!("opening {}", args.log.display()))?;
    rustix::fs::flock(&log, rustix::fs::FlockOperation::LockExclusive)
        .with_context(|| format!("locking {}", args.log.display()))?;
    let mode = log
        .metadata()
        .with_context(|| format!("stat {}", args.log.display()))?
        .permissions()
        .mode()
        & 0o7777;
    let was_dirty = mode & S_ISVTX != 0;
    if was_dirty {
        eprintln!(
            "imgctl: warning: {} is marked dirty (sticky bit): an earlier writer stopped between \
             extending and logging, so this log does not replay; the mark stays",
            args.log.display()
        );
    }
    set_mode(&log, mode | S_ISVTX, &args.log)?;
    if let Err(e) = tpm.extend(pcr, &digests) {
        if !was_dirty {
            set_mode(&log, mode & !S_ISVTX, &args.log)?;
        }
        return Err(anyhow::Error::from(e).context(format!("extending PCR {pcr}")));
    }
    append(&mut log, &record.to_json_seq())
        .with_context(|| format!("appending to {} (left marked dirty)", args.log.display()))?;
    if !was_dirty {
        set_mode(&log, mode & !S_ISVTX, &args.log)?;
    }
    drop(log); // releases the lock
    if args.json {
        crate::output::print_json(&record)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn set_mode(f: &File, mode: u32, path: &std::path::Path) -> anyhow::Result<()> {
    f.set_permissions(Permissions::from_mode(mode))
        .with_context(|| format!("chmod {:o} {}", mode, path.display()))
}

fn append(f: &mut File, data: &[u8]) -> std::io::Result<()> {
    f.write_all(data)?;
    f.sync_data()
}
