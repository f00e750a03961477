//! `imgctl vm (RECIPE | UKI | DISK)`: boot an image under QEMU + OVMF + swtpm and report what
//! the guest's TPM showed.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use imgctl_attest::eventlog::PcrValuesJson;
use imgctl_attest::guest_report::{GuestReport, MARK_DONE};

use crate::output::outln;
use imgctl_vm::{self as vm, Accel, Ending, Medium, VmConfig};

/// Boot a UKI or a disk image under QEMU with OVMF and a private swtpm TPM 2.0, serial console
/// on stderr.
///
/// What the input is comes from its bytes, not its name: a PE image (`MZ`) is a UKI and goes to
/// \EFI\BOOT\BOOTX64.EFI on a FAT ESP; a GPT disk (`EFI PART` at byte 512) with an ESP is
/// booted whole, through a copy-on-write overlay (the image is never written); anything else
/// is read as a recipe. KVM is used when a probe boot shows it works, TCG emulation otherwise.
/// The demo initrd (recipes/demo) and an OS image's capture unit (recipes/os) print the PCRs,
/// the firmware event log and systemd's userspace log; `--capture` stores them. swtpm, QEMU and
/// temporary files are cleaned up on every exit, Ctrl-C included.
///
/// Exit status: 0 the guest printed `IMGCTL-DEMO: done`; 1 error (bad input, missing tool,
/// unreadable report); 3 the guest stopped without the done marker, or the firmware found
/// nothing bootable (e.g. Secure Boot refused the UKI); 4 timeout; 130 interrupted by SIGINT,
/// 143 by SIGTERM. Every argument and the UKI itself (a PE image with a non-empty `.linux`)
/// are checked before QEMU or swtpm start.
///
/// Example: imgctl vm images/demo/demo.efi --capture /tmp/boot --timeout 120
/// Example: imgctl vm images/os/os.raw --capture /tmp/os-boot --timeout 600
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A UKI (PE file) or a GPT disk image to boot, or a recipe (YAML) to build first.
    input: PathBuf,
    /// Store the guest's PCRs (pcrs.json), event log (eventlog.bin), systemd's userspace log
    /// (tpm2-measure.log), console (console.log) and the firmware variable store it started
    /// with (firmware-vars.fd) in this folder.
    #[arg(long, value_name = "DIR")]
    capture: Option<PathBuf>,
    /// Keep the TPM's state in DIR (made if missing) and use it again on the next boot with
    /// the same DIR, instead of a fresh TPM per boot. For a disk image the disk's state is kept
    /// there too (DIR/disk.qcow2, an overlay of the image, which stays unwritten): the next boot
    /// of the same image with the same DIR continues from it.
    #[arg(long, value_name = "DIR")]
    reuse_tpm: Option<PathBuf>,
    /// Stop the guest after this many seconds (1 to 86400).
    #[arg(long, value_name = "S", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..=MAX_TIMEOUT_S))]
    timeout: u64,
    /// Boot with Secure Boot enforced (OVMF secboot firmware, Microsoft keys enrolled).
    #[arg(long)]
    secure_boot: bool,
    /// With --secure-boot: enrol our keys instead of Microsoft's, the PK.crt, KEK.crt and
    /// db.crt of DIR (`imgctl keygen DIR --pk-kek`), with virt-fw-vars (PyPI virt-firmware);
    /// then only a UKI signed by DIR's db key boots.
    #[arg(long, value_name = "DIR", requires = "secure_boot")]
    enroll: Option<PathBuf>,
    /// A file to put beside the UKI in \EFI\BOOT\BOOTX64.EFI.extra.d\ (a sysext or confext
    /// image, a credential, an addon), as systemd-stub finds and measures them; repeatable.
    #[arg(long, value_name = "FILE")]
    extra: Vec<PathBuf>,
    /// A PE addon to put in \loader\addons\ on the ESP, where systemd-stub finds addons
    /// for every UKI (applied before the UKI's own); repeatable.
    #[arg(long = "global-addon", value_name = "FILE")]
    global_addons: Vec<PathBuf>,
    /// Boot the UKI through this systemd-boot (systemd-bootx64.efi, as \EFI\BOOT\BOOTX64.EFI)
    /// with --loader-conf as \loader\loader.conf; the UKI goes to \EFI\Linux\ under its own
    /// name (e.g. `default demo.efi@1` in loader.conf boots profile 1 of demo.efi).
    #[arg(long, value_name = "EFI", requires = "loader_conf")]
    systemd_boot: Option<PathBuf>,
    /// systemd-boot's loader.conf (with --systemd-boot).
    #[arg(long, value_name = "FILE", requires = "systemd_boot")]
    loader_conf: Option<PathBuf>,
    /// Pass the system credential NAME with the bytes of FILE to the guest (SMBIOS type 11,
    /// `io.systemd.credential.binary:`), as a hypervisor provisions a machine; systemd imports
    /// it at boot, e.g. `cryptsetup.passphrase=KEYFILE` unlocks an encrypted volume with a
    /// recovery key when its TPM token does not. NAME: letters, digits, `.`, `_`, `-`; FILE at
    /// most 16 KiB; repeatable.
    #[arg(long, value_name = "NAME=FILE")]
    credential: Vec<String>,
    /// Give the guest these SMBIOS fields: one QEMU `-smbios` option, e.g.
    /// `type=1,manufacturer=Foo,product=Bar,family=F,sku=S` or `type=2,manufacturer=Foo,product=B`
    /// (a `,` inside a value written `,,`); repeatable. Types 0, 1, 2, 3, 4, 11, 17 with
    /// QEMU's keys for them; printable ASCII; no host files (`file=`, `path=`). systemd-stub
    /// 257 computes the machine's CHIDs from type 1 and 2 (`imgctl chid`, `predict-pcrs --hwids`).
    #[arg(long, value_name = "SPEC")]
    smbios: Vec<String>,
    /// Type LINE and Enter on the serial console once PROMPT appears on it (after the previous
    /// --type-after's prompt), e.g. `--type-after 'login: =root'`; repeatable, in order.
    /// PROMPT: no `=`; both printable ASCII.
    #[arg(long, value_name = "PROMPT=LINE")]
    type_after: Vec<String>,
    /// CPU virtualisation: auto probes KVM and falls back to TCG.
    #[arg(long, default_value = "auto",
          value_parser = clap::builder::TypedValueParser::try_map(
              clap::builder::PossibleValuesParser::new(Accel::ALL.map(Accel::name)),
              |s| s.parse::<Accel>()))]
    accel: Accel,
    /// Guest memory in MiB (64 to 65536).
    #[arg(long, value_name = "MIB", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(MIN_MEMORY_MIB..=MAX_MEMORY_MIB))]
    memory: u32,
    /// Do not copy the serial console to stderr.
    #[arg(long)]
    quiet: bool,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// `--json` output.
#[derive(Debug, serde::Serialize)]
struct JsonOut<'a> {
    result: &'a str,
    accel: &'a str,
    seconds: f64,
    /// The guest's uptime when it reported (an OS image's capture unit prints it).
    guest_uptime_seconds: Option<f64>,
    init_reached: bool,
    /// Bank name → PCR index → lower-case hex.
    pcrs: PcrValuesJson<'a>,
    event_log_bytes: Option<usize>,
    userspace_log_bytes: Option<usize>,
    capture: Option<&'a Path>,
}

const EXIT_NOT_DONE: u8 = 3;
const EXIT_TIMEOUT: u8 = 4;
/// The least memory OVMF and the demo guest boot with; the most a test VM needs.
const MIN_MEMORY_MIB: i64 = 64;
const MAX_MEMORY_MIB: i64 = 64 << 10;
/// A day: a longer `--timeout` is a typo, not a boot.
const MAX_TIMEOUT_S: u64 = 24 * 3600;
/// What `--capture` writes.
const CAPTURED: [&str; 5] = [
    "console.log",
    "pcrs.json",
    "eventlog.bin",
    "tpm2-measure.log",
    "firmware-vars.fd",
];

/// Each `--extra` is a regular file with a plain ASCII name that systemd-stub would consider
/// (not hidden, at most 255 bytes), named once.
fn check_extra(extra: &[PathBuf]) -> anyhow::Result<()> {
    let mut seen = std::collections::BTreeSet::new();
    for e in extra {
        let name = e.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.is_empty()
            || name.starts_with('.')
            || name.len() > 255
            || !name.bytes().all(|b| b.is_ascii_graphic())
        {
            bail!(
                "--extra {}: the file name must be plain ASCII, not hidden, at most 255 bytes",
                e.display()
            );
        }
        let meta = std::fs::metadata(e).with_context(|| format!("--extra {}", e.display()))?;
        if !meta.is_file() {
            bail!("--extra {}: not a regular file", e.display());
        }
        if !seen.insert(name.to_ascii_lowercase()) {
            bail!(
                "--extra {}: a file of that name is given twice",
                e.display()
            );
        }
    }
    Ok(())
}

/// Reads each `--credential NAME=FILE`: a valid name, given once, and a regular file of at most
/// [`vm::MAX_CREDENTIAL_BYTES`].
fn read_credentials(args: &[String]) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    for a in args {
        let Some((name, file)) = a.split_once('=') else {
            bail!("--credential {a}: expected NAME=FILE");
        };
        if !vm::credential_name_valid(name) {
            bail!(
                "--credential {a}: {name:?} is not a credential name (1 to 255 letters, digits, \
                 `.`, `_`, `-`)"
            );
        }
        if out.iter().any(|(n, _)| n == name) {
            bail!("--credential {a}: the credential {name} is given twice");
        }
        let value = imgctl_fsio::read_bounded(
            Path::new(file),
            vm::MAX_CREDENTIAL_BYTES,
            "a --credential file",
        )
        .with_context(|| format!("--credential {a}"))?;
        out.push((name.to_owned(), value));
    }
    Ok(out)
}

/// QEMU's keys per SMBIOS type (qemu-options.hx `-smbios`), without the host-file ones.
const SMBIOS_KEYS: [(u8, &[&str]); 7] = [
    (0, &["vendor", "version", "date", "release", "uefi"]),
    (
        1,
        &[
            "manufacturer",
            "product",
            "version",
            "serial",
            "uuid",
            "sku",
            "family",
        ],
    ),
    (
        2,
        &[
            "manufacturer",
            "product",
            "version",
            "serial",
            "asset",
            "location",
        ],
    ),
    (3, &["manufacturer", "version", "serial", "asset", "sku"]),
    (
        4,
        &[
            "sock_pfx",
            "manufacturer",
            "version",
            "serial",
            "asset",
            "part",
            "processor-family",
            "processor-id",
        ],
    ),
    (11, &["value"]),
    (
        17,
        &[
            "loc_pfx",
            "bank",
            "manufacturer",
            "serial",
            "asset",
            "part",
            "speed",
        ],
    ),
];

/// Checks one `--smbios SPEC` as a single QEMU `-smbios` option: `type=N` first, then
/// `key=value` items (QEMU's `,,` escape for a comma in a value) with keys QEMU takes for that
/// type, each once (type 11's `value` may repeat), printable ASCII, at most 4 KiB.
fn check_smbios(spec: &str) -> anyhow::Result<()> {
    let bad = |why: String| anyhow::anyhow!("--smbios {spec:?}: {why}");
    if spec.len() > 4096 || !spec.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
        return Err(bad("printable ASCII, at most 4096 bytes".into()));
    }
    // Items split at a single `,` (`,,` is a comma inside a value).
    let mut items: Vec<String> = Vec::new();
    let mut cur = String::new();
    let mut chars = spec.chars().peekable();
    while let Some(c) = chars.next() {
        if c != ',' {
            cur.push(c);
        } else if chars.peek() == Some(&',') {
            chars.next();
            cur.push(',');
        } else {
            items.push(std::mem::take(&mut cur));
        }
    }
    items.push(cur);
    let kind = items[0]
        .strip_prefix("type=")
        .and_then(|t| t.parse::<u8>().ok())
        .ok_or_else(|| bad("expected type=N first (e.g. type=1,manufacturer=Foo)".into()))?;
    let keys = SMBIOS_KEYS
        .iter()
        .find(|(t, _)| *t == kind)
        .map(|(_, k)| *k)
        .ok_or_else(|| {
            bad(format!(
                "type {kind}: imgctl passes types 0, 1, 2, 3, 4, 11, 17"
            ))
        })?;
    let mut seen: Vec<&str> = Vec::new();
    for item in &items[1..] {
        let (key, _) = item
            .split_once('=')
            .ok_or_else(|| bad(format!("{item:?}: expected key=value")))?;
        if !keys.contains(&key) {
            return Err(bad(format!(
                "type {kind} has no key {key:?} (QEMU's: {})",
                keys.join(", ")
            )));
        }
        if seen.contains(&key) && !(kind == 11 && key == "value") {
            return Err(bad(format!("{key} given twice")));
        }
        seen.push(key);
    }
    Ok(())
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    // Everything is checked before QEMU and swtpm start: the credentials, the capture folder,
    // then the UKI.
    let credentials = read_credentials(&args.credential)?;
    for spec in &args.smbios {
        check_smbios(spec)?;
    }
    let console_input = args
        .type_after
        .iter()
        .map(|a| {
            let (prompt, line) = a
                .split_once('=')
                .filter(|(p, l)| {
                    !p.is_empty()
                        && p.bytes()
                            .chain(l.bytes())
                            .all(|b| b == b' ' || b.is_ascii_graphic())
                })
                .with_context(|| {
                    format!("--type-after {a:?}: expected PROMPT=LINE, printable ASCII")
                })?;
            Ok((prompt.as_bytes().to_vec(), line.as_bytes().to_vec()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if let Some(dir) = &args.capture {
        check_capture(dir, &args.input)?;
    }
    let (medium, _built) = medium_for(&args.input)?;
    check_extra(&args.extra)?;
    check_extra(&args.global_addons)?;
    if matches!(medium, Medium::Disk(_))
        && !(args.extra.is_empty() && args.global_addons.is_empty())
    {
        bail!(
            "{}: --extra and --global-addon are for a UKI; a disk image carries its own ESP",
            args.input.display()
        );
    }
    if let Some(dir) = &args.reuse_tpm {
        check_tpm_dir(dir)?;
    }
    // SIGINT and SIGTERM now stop the run cleanly (QEMU and swtpm torn down, then a report)
    // instead of ending imgctl mid-way.
    crate::signals::cooperate();
    let cfg = VmConfig {
        label: args.input.display().to_string(),
        medium,
        tpm_state: args.reuse_tpm.clone(),
        timeout: Duration::from_secs(args.timeout),
        secure_boot: args.secure_boot,
        enroll: args.enroll.clone(),
        accel: args.accel,
        memory_mib: args.memory,
        echo: !args.quiet,
        extra: args.extra.clone(),
        global_addons: args.global_addons.clone(),
        loader: match (&args.systemd_boot, &args.loader_conf) {
            (Some(efi), Some(conf)) => {
                for f in [efi, conf] {
                    if !std::fs::metadata(f)
                        .with_context(|| f.display().to_string())?
                        .is_file()
                    {
                        bail!("{}: not a regular file", f.display());
                    }
                }
                Some(vm::BootLoader {
                    efi: efi.clone(),
                    loader_conf: conf.clone(),
                })
            }
            _ => None,
        },
        credentials,
        smbios: args.smbios.clone(),
        console_input,
        done_marker: MARK_DONE.to_owned(),
        interrupted: crate::signals::interrupted,
        progress: |m| eprintln!("imgctl vm: {m}"),
    };
    let run = vm::boot(&cfg)?;
    let report = GuestReport::parse(&run.console);

    if let Some(dir) = &args.capture {
        capture(dir, &run.console, &run.firmware_vars, report.as_ref().ok())?;
    }

    let (result, code, message) = match run.ending {
        Ending::Done => ("done", 0, None),
        Ending::Exited(status) => (
            "exited",
            EXIT_NOT_DONE,
            Some(format!(
                "the guest stopped without printing `{MARK_DONE}` (QEMU {status}){}",
                stderr_note(&run.qemu_stderr)
            )),
        ),
        Ending::NothingBootable => (
            "not-booted",
            EXIT_NOT_DONE,
            Some(format!(
                "the firmware found nothing bootable{}; stopped QEMU and swtpm",
                if vm::contains(&run.console, b"Access Denied") {
                    " (it refused \\EFI\\BOOT\\BOOTX64.EFI: Access Denied, i.e. Secure Boot rejected its signature)"
                } else {
                    ""
                }
            )),
        ),
        Ending::QemuFailed => (
            "qemu-failed",
            EXIT_NOT_DONE,
            Some(format!(
                "QEMU stopped the guest{}; try --accel tcg",
                stderr_note(&run.qemu_stderr)
            )),
        ),
        Ending::TimedOut => (
            "timeout",
            EXIT_TIMEOUT,
            Some(format!(
                "the guest did not finish within {}s (--timeout); stopped QEMU and swtpm",
                args.timeout
            )),
        ),
        Ending::Interrupted(signal) => (
            "interrupted",
            u8::try_from(crate::signals::exit_code(signal)).unwrap_or(u8::MAX),
            Some("interrupted; stopped QEMU and swtpm".to_owned()),
        ),
    };
    let report = match report {
        Ok(r) => r,
        Err(e) if code == 0 => bail!("the guest's console report is malformed: {e}"),
        Err(_) => GuestReport::default(),
    };

    if args.json {
        let out = JsonOut {
            result,
            accel: run.accel.name(),
            seconds: (run.elapsed.as_secs_f64() * 10.0).round() / 10.0,
            guest_uptime_seconds: report.uptime_ms.map(|ms| ms as f64 / 1000.0),
            init_reached: report.init_reached,
            pcrs: PcrValuesJson(&report.pcrs),
            event_log_bytes: report.event_log.as_ref().map(Vec::len),
            userspace_log_bytes: report.userspace_log.as_ref().map(Vec::len),
            capture: args.capture.as_deref(),
        };
        let out = serde_json::to_string_pretty(&out)?;
        outln!("{out}");
    } else {
        let banks: Vec<String> = report
            .pcrs
            .iter()
            .map(|(b, v)| format!("{} {b}", v.len()))
            .collect();
        outln!(
            "{result} after {:.1}s ({}): PCRs read: {}; event log: {}{}{}",
            run.elapsed.as_secs_f64(),
            run.accel.name(),
            if banks.is_empty() {
                "none".to_owned()
            } else {
                banks.join(", ")
            },
            report
                .event_log
                .as_ref()
                .map_or("none".to_owned(), |l| format!("{} bytes", l.len())),
            report
                .userspace_log
                .as_ref()
                .map_or(String::new(), |l| format!(
                    "; userspace log: {} bytes",
                    l.len()
                )),
            report.uptime_ms.map_or(String::new(), |ms| format!(
                "; guest uptime {:.1}s",
                ms as f64 / 1000.0
            )),
        );
    }
    if let Some(m) = message {
        eprintln!("imgctl vm: {m}");
    }
    Ok(ExitCode::from(code))
}

/// The first bytes that tell a UKI, a disk image and a recipe apart (the GPT header at 512
/// or, on 4096-byte sectors, at 4096).
const SNIFF_LEN: usize = 4096 + 512;

/// What the input's bytes say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InputKind {
    /// A PE image: `MZ` at offset 0.
    Pe,
    /// A GPT disk: `EFI PART` at byte 512 (512-byte sectors) or 4096 (4096-byte sectors).
    GptDisk,
    /// Anything else: a recipe (or an error from the recipe reader).
    Other,
}

fn sniff(head: &[u8]) -> InputKind {
    const GPT: &[u8] = b"EFI PART";
    if head.starts_with(b"MZ") {
        InputKind::Pe
    } else if [512usize, 4096]
        .iter()
        .any(|&at| head.get(at..at + GPT.len()) == Some(GPT))
    {
        InputKind::GptDisk
    } else {
        InputKind::Other
    }
}

/// What to boot: a UKI (the input itself if it is a PE file, else the recipe assembled in
/// memory and written to a temporary file kept until the returned guard drops) or a disk
/// image. A UKI must be a PE image with a non-empty `.linux`, a disk a GPT with an ESP, so
/// nothing else is booted into a timeout.
fn medium_for(input: &Path) -> anyhow::Result<(Medium, Option<tempfile::TempPath>)> {
    let mut head = Vec::with_capacity(SNIFF_LEN);
    let f = std::fs::File::open(input).with_context(|| format!("opening {}", input.display()))?;
    std::io::Read::read_to_end(&mut std::io::Read::take(f, SNIFF_LEN as u64), &mut head)
        .with_context(|| format!("reading {}", input.display()))?;
    if sniff(&head) == InputKind::GptDisk {
        check_disk(input)?;
        return Ok((Medium::Disk(input.to_path_buf()), None));
    }
    if sniff(&head) == InputKind::Other
        && imgctl_builder::os_recipe::recipe_kind(&head).as_deref() == Some("os")
    {
        bail!(
            "{}: an OS recipe is booted as its disk image: `imgctl build {0}` first, then `imgctl vm images/NAME/NAME.raw`",
            input.display()
        );
    }
    let data = crate::uki_input::load_uki(input)?;
    check_uki(input, &data)?;
    if sniff(&head) == InputKind::Pe {
        return Ok((Medium::Uki(input.to_path_buf()), None));
    }
    let mut tmp = tempfile::Builder::new()
        .prefix("imgctl-vm-")
        .suffix(".efi")
        .tempfile()
        .context("creating a temporary file for the UKI")?;
    std::io::Write::write_all(&mut tmp, &data).context("writing the UKI")?;
    let path = tmp.into_temp_path();
    Ok((Medium::Uki(path.to_path_buf()), Some(path)))
}

/// The partition type of an EFI System Partition (UEFI 2.10 §5.3.3).
const ESP_TYPE: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";

/// A bootable disk: a regular file holding a valid primary GPT (512-byte sectors, as imgctl
/// and systemd-repart write) with an EFI System Partition inside the file.
fn check_disk(input: &Path) -> anyhow::Result<()> {
    use imgctl_extensions::gpt::{Gpt, Guid};
    let meta = std::fs::metadata(input).with_context(|| format!("{}", input.display()))?;
    if !meta.is_file() {
        bail!("{}: not a regular file", input.display());
    }
    let mut head = Vec::new();
    let f = std::fs::File::open(input).with_context(|| format!("opening {}", input.display()))?;
    std::io::Read::read_to_end(
        &mut std::io::Read::take(f, Gpt::TYPICAL_PREFIX as u64),
        &mut head,
    )
    .with_context(|| format!("reading {}", input.display()))?;
    let gpt = Gpt::parse(&head)
        .with_context(|| format!("{}: not a disk image imgctl can boot", input.display()))?;
    let esp: Guid = ESP_TYPE.parse().map_err(|_| anyhow::anyhow!("ESP type"))?;
    let Some(p) = gpt.partitions.iter().find(|p| p.type_guid == esp) else {
        bail!(
            "{}: the disk has no EFI System Partition, so the firmware has nothing to boot",
            input.display()
        );
    };
    if p.offset().saturating_add(p.size()) > meta.len() {
        bail!(
            "{}: the EFI System Partition ends at byte {}, past the end of the file ({} bytes)",
            input.display(),
            p.offset().saturating_add(p.size()),
            meta.len()
        );
    }
    Ok(())
}

/// `--reuse-tpm DIR` must be a folder (or not exist yet), not a file or a symlink.
fn check_tpm_dir(dir: &Path) -> anyhow::Result<()> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => bail!("--reuse-tpm {}: not a folder", dir.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            imgctl_fsio::check_output_dir(dir).context("--reuse-tpm")
        }
        Err(e) => Err(e).with_context(|| format!("--reuse-tpm {}", dir.display())),
    }
}

/// A bootable UKI: a PE image (measure's reader) whose `.linux` section has content.
fn check_uki(input: &Path, data: &[u8]) -> anyhow::Result<()> {
    let pe = imgctl_measure::PeFile::parse(data)
        .with_context(|| format!("{}: not a valid PE image", input.display()))?;
    let linux = pe
        .section(".linux")
        .with_context(|| format!("{}: not a UKI: no .linux section", input.display()))?;
    let kernel = pe
        .memory_data(linux)
        .with_context(|| format!("{}: .linux section", input.display()))?;
    if kernel.iter().all(|b| *b == 0) {
        bail!(
            "{}: not a UKI: its .linux section holds no kernel (empty or all zeros)",
            input.display()
        );
    }
    Ok(())
}

/// `--capture DIR` must be a folder this process can write (or create), and none of the files
/// it writes there may be a folder, device, FIFO, socket, symlink or the input.
fn check_capture(dir: &Path, input: &Path) -> anyhow::Result<()> {
    imgctl_fsio::check_output_dir(dir).context("--capture")?;
    for name in CAPTURED {
        imgctl_fsio::check_output(&dir.join(name), &[input]).context("--capture")?;
    }
    Ok(())
}

/// QEMU's first few stderr lines (a KVM failure is followed by a long register dump).
fn stderr_note(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return String::new();
    }
    let more = if lines.len() > 3 { " …" } else { "" };
    format!(
        "; QEMU said: {}{more}",
        lines[..lines.len().min(3)].join(" / ")
    )
}

/// Writes console.log always, pcrs.json, eventlog.bin and tpm2-measure.log when the report has
/// them, in one transaction; a capture file of an earlier boot that this one did not produce
/// is removed, so the folder never mixes two boots.
fn capture(
    dir: &Path,
    console: &[u8],
    firmware_vars: &[u8],
    report: Option<&GuestReport>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut t = imgctl_fsio::Transaction::new();
    t.add(&dir.join("console.log"), console)?;
    // The variable store the firmware started with (`predict-pcrs --pcr 7 --firmware-vars`).
    t.add(&dir.join("firmware-vars.fd"), firmware_vars)?;
    let mut written = vec!["console.log", "firmware-vars.fd"];
    if let Some(r) = report {
        if !r.pcrs.is_empty() {
            let mut json = serde_json::to_vec_pretty(&PcrValuesJson(&r.pcrs))?;
            json.push(b'\n');
            t.add(&dir.join("pcrs.json"), &json)?;
            written.push("pcrs.json");
        }
        if let Some(log) = &r.event_log {
            t.add(&dir.join("eventlog.bin"), log)?;
            written.push("eventlog.bin");
        }
        if let Some(log) = &r.userspace_log {
            t.add(&dir.join("tpm2-measure.log"), log)?;
            written.push("tpm2-measure.log");
        }
    }
    t.commit()?;
    for stale in CAPTURED.iter().filter(|n| !written.contains(n)) {
        let p = dir.join(stale);
        if p.exists() {
            std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smbios_specs_are_one_qemu_option_with_its_keys() {
        for ok in [
            "type=1,manufacturer=Foo,product=Bar,family=F,sku=S",
            "type=2,manufacturer=Foo Inc.,,Ltd,product=B-1",
            "type=11,value=a=b,value=c",
            "type=0,vendor=x",
        ] {
            check_smbios(ok).unwrap();
        }
        for (bad, why) in [
            ("manufacturer=Foo", "type=N first"),
            ("type=1,manufacturer=a,manufacturer=b", "twice"),
            ("type=1,path=/etc/passwd", "no key"),
            ("file=/tmp/x", "type=N first"),
            ("type=99,x=y", "type 99"),
            ("type=1,product", "key=value"),
            ("type=1,product=a\nb", "printable"),
            ("type=1,product=a\tb", "printable"),
        ] {
            let e = check_smbios(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn the_input_kind_comes_from_its_bytes() {
        let mut disk = vec![0u8; SNIFF_LEN];
        disk[512..520].copy_from_slice(b"EFI PART");
        assert_eq!(sniff(&disk), InputKind::GptDisk);
        let mut disk4k = vec![0u8; SNIFF_LEN];
        disk4k[4096..4104].copy_from_slice(b"EFI PART");
        assert_eq!(sniff(&disk4k), InputKind::GptDisk);
        assert_eq!(sniff(b"MZ\x90\0"), InputKind::Pe);
        assert_eq!(sniff(b"kind: os\n"), InputKind::Other);
        assert_eq!(sniff(&disk[..515]), InputKind::Other);
        assert_eq!(sniff(b""), InputKind::Other);
    }
}
