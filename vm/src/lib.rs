//! Boots a UKI or a whole disk image under QEMU with Debian's OVMF and a private swtpm TPM 2.0:
//! process I/O only.
//!
//! One run: a temporary folder holds the swtpm state (unless `--reuse-tpm` names a folder that
//! keeps it) and control socket, a per-run copy of the OVMF variable store and either a FAT
//! image (the ESP) with the UKI at `\EFI\BOOT\BOOTX64.EFI`, or a copy-on-write qcow2 overlay
//! of the user's disk image (the image itself is only read: every write of the guest lands in
//! the overlay, which goes with the folder, or stays in the `--reuse-tpm` folder beside the
//! TPM's state so that the next boot continues the same disk);
//! swtpm and QEMU run as children in their own process groups (so a terminal's Ctrl-C reaches
//! only us); the serial console is streamed back to the caller. [`Running`] kills both
//! children and removes the folder when dropped, which covers every exit path: success, error,
//! timeout and SIGINT/SIGTERM (the handler only sets a flag the wait loop polls). A SIGKILL of
//! imgctl itself cannot be caught; swtpm then exits when QEMU closes its socket.
//!
//! What the guest printed is interpreted elsewhere (`imgctl_attest::guest_report`); the run
//! only watches for the marker the guest prints when it is done ([`VmConfig::done_marker`]).

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Why a run could not be made or watched (how the guest's boot ended is an [`Ending`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Programs or firmware files the run needs are missing (each named with its package).
    #[error(
        "cannot boot: missing {0}; install with `apt-get install qemu-system-x86 qemu-utils ovmf swtpm dosfstools mtools` or run scripts/setup.sh"
    )]
    Missing(String),
    /// A file, folder or process operation failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A bounded read of an input.
    #[error(transparent)]
    Read(#[from] imgctl_fsio::Error),
    /// A program ran and failed, or did not do what it should have.
    #[error("{0}")]
    Tool(String),
    /// The configuration asks for what cannot be done.
    #[error("{0}")]
    Config(String),
}

/// `Err(Error::Io)` with `what` for an I/O result.
trait IoContext<T> {
    fn io(self, what: impl FnOnce() -> String) -> Result<T, Error>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn io(self, what: impl FnOnce() -> String) -> Result<T, Error> {
        self.map_err(|source| Error::Io {
            what: what(),
            source,
        })
    }
}

/// Where Debian's `ovmf` package puts the firmware; `IMGCTL_OVMF_DIR` overrides it.
const OVMF_DIR: &str = "/usr/share/OVMF";
/// What QEMU prints (and then stops the guest, without exiting) when KVM cannot run the code.
const KVM_INTERNAL_ERROR: &str = "KVM internal error";
/// What OVMF's boot manager prints when every boot option failed; it then waits for a key.
const OVMF_NOTHING_BOOTABLE: &str = "No bootable option or device was found";
/// How long the guest may take to power off after printing its done marker.
const POWEROFF_GRACE: Duration = Duration::from_secs(15);
/// How long OVMF may take to reach its boot manager under KVM before KVM is declared broken.
const KVM_PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// CPU virtualisation for the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// KVM if a probe boot of OVMF under KVM works, TCG otherwise.
    Auto,
    Kvm,
    Tcg,
}

impl Accel {
    /// Every choice, by [`Accel::name`].
    pub const ALL: [Accel; 3] = [Accel::Auto, Accel::Kvm, Accel::Tcg];

    pub fn name(self) -> &'static str {
        match self {
            Accel::Auto => "auto",
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

impl std::str::FromStr for Accel {
    type Err = String;

    fn from_str(s: &str) -> Result<Accel, String> {
        Accel::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| format!("{s:?}: one of auto, kvm, tcg"))
    }
}

/// What the firmware boots.
#[derive(Debug, Clone)]
pub enum Medium {
    /// A UKI, put on a fresh FAT ESP as `\EFI\BOOT\BOOTX64.EFI`.
    Uki(PathBuf),
    /// A whole GPT disk image (its ESP holds the boot loader or UKI), attached through a
    /// copy-on-write overlay.
    Disk(PathBuf),
}

impl Medium {
    pub fn path(&self) -> &Path {
        match self {
            Medium::Uki(p) | Medium::Disk(p) => p,
        }
    }
}

/// What to boot and how.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub medium: Medium,
    /// Keep the swtpm state in this folder (made if missing) instead of a fresh TPM per run:
    /// a second boot sees the same TPM (its seeds, NV indices, keys).
    pub tpm_state: Option<PathBuf>,
    /// How to name the image in messages (the recipe or UKI the user gave).
    pub label: String,
    pub timeout: Duration,
    pub secure_boot: bool,
    /// With `secure_boot`: enrol the PK, KEK and db certificates of this folder (`PK.crt`,
    /// `KEK.crt`, `db.crt`, as `imgctl keygen --pk-kek` writes them) instead of Microsoft's.
    pub enroll: Option<PathBuf>,
    pub accel: Accel,
    pub memory_mib: u32,
    /// Copy the serial console to stderr as it arrives.
    pub echo: bool,
    /// Files put beside the UKI in `\EFI\BOOT\BOOTX64.EFI.extra.d\` (extension images,
    /// credentials, addons: what systemd-stub picks up and measures into PCR 12/13).
    pub extra: Vec<PathBuf>,
    /// PE addons put in `\loader\addons\` (global: systemd-stub applies them to every UKI,
    /// before the UKI's own).
    pub global_addons: Vec<PathBuf>,
    /// A boot loader that starts the UKI (the UKI then lives in `\EFI\Linux\`).
    pub loader: Option<BootLoader>,
    /// System credentials passed to the guest in SMBIOS type 11 strings
    /// (`io.systemd.credential.binary:NAME=BASE64`), as a hypervisor provisions a machine:
    /// systemd (PID 1) imports them at boot (e.g. `cryptsetup.passphrase` for
    /// systemd-cryptsetup). Each name is [`credential_name_valid`].
    pub credentials: Vec<(String, Vec<u8>)>,
    /// QEMU `-smbios` arguments, each one checked option (`imgctl vm --smbios`), e.g.
    /// `type=1,manufacturer=Foo,product=Bar`: the SMBIOS strings the firmware and the stub see.
    pub smbios: Vec<String>,
    /// Typed on the serial console, in order: when the prompt (bytes) appears in the console
    /// output after the previous step, the line is written to the guest, then Enter (`\r`).
    pub console_input: Vec<(Vec<u8>, Vec<u8>)>,
    /// What the guest prints on its console when it is done (then it powers off).
    pub done_marker: String,
    /// Polled while the guest runs: the signal (SIGINT, SIGTERM) that asks the run to stop,
    /// if one arrived. The run then tears down and ends [`Ending::Interrupted`].
    pub interrupted: fn() -> Option<i32>,
    /// Where the run reports what it does (which accelerator, a KVM probe that failed).
    pub progress: fn(&str),
}

/// The most a `--credential` may hold: SMBIOS strings are small, and so is a key.
pub const MAX_CREDENTIAL_BYTES: u64 = 16 << 10;

/// A credential name QEMU's `-smbios` option and systemd both take: 1 to 255 bytes of ASCII
/// letters, digits, `.`, `_` and `-`, not `.` or `..` (systemd's `credential_name_valid()` is a
/// file name; `,` and `=` would end QEMU's or systemd's field).
pub fn credential_name_valid(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The SMBIOS type 11 string that hands the credential `name` with `value` to systemd.
pub fn smbios_credential(name: &str, value: &[u8]) -> String {
    use base64::Engine as _;
    format!(
        "io.systemd.credential.binary:{name}={}",
        base64::engine::general_purpose::STANDARD.encode(value)
    )
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The guest printed the done marker (and powered off, or was stopped after the grace time).
    Done,
    /// QEMU exited without the done marker (guest powered off, reset, or QEMU failed).
    Exited(ExitStatus),
    /// OVMF found nothing it could start (with Secure Boot: the UKI's signature was refused).
    NothingBootable,
    /// QEMU stopped the guest with an error of its own (e.g. "KVM internal error").
    QemuFailed,
    /// `timeout` passed first.
    TimedOut,
    /// SIGINT or SIGTERM (the signal's number).
    Interrupted(i32),
}

/// The result of one boot.
#[derive(Debug)]
pub struct VmRun {
    pub ending: Ending,
    pub accel: Accel,
    pub console: Vec<u8>,
    pub elapsed: Duration,
    /// QEMU's own stderr (errors such as a refused option or a dead TPM socket).
    pub qemu_stderr: String,
    /// The OVMF variable store as the firmware started with it (before the boot changed it).
    pub firmware_vars: Vec<u8>,
}

/// The external programs and firmware files one run needs.
#[derive(Debug)]
struct Tools {
    qemu: PathBuf,
    /// For a disk image: makes the copy-on-write overlay.
    qemu_img: Option<PathBuf>,
    swtpm: PathBuf,
    mkfs_vfat: PathBuf,
    mmd: PathBuf,
    mcopy: PathBuf,
    ovmf_code: PathBuf,
    ovmf_vars: PathBuf,
    /// `virt-fw-vars` (PyPI's virt-firmware), with `--enroll`.
    virt_fw_vars: Option<PathBuf>,
}

/// The owner GUID (`SignatureOwner` of each EFI_SIGNATURE_DATA) of the certificates
/// `--enroll` puts into PK, KEK and db; PCR 7's db authority event carries it.
pub const SIGNATURE_OWNER: &str = "0f6c57a4-6e5b-4d28-9d1a-696d6763746c";

/// The certificates `--enroll` reads from its folder, with the virt-fw-vars option of each.
const ENROLLED: [(&str, &str); 3] = [
    ("--set-pk", "PK.crt"),
    ("--add-kek", "KEK.crt"),
    ("--add-db", "db.crt"),
];

impl Tools {
    /// Finds everything, or names every missing piece with the Debian package that has it.
    fn find(secure_boot: bool, enroll: bool, disk: bool) -> Result<Tools, Error> {
        let mut missing = Vec::new();
        let mut tool = |name: &str, package: &str| {
            imgctl_fsio::find_program(name).unwrap_or_else(|| {
                missing.push(format!("{name} (Debian package {package})"));
                PathBuf::new()
            })
        };
        let qemu = tool("qemu-system-x86_64", "qemu-system-x86");
        let qemu_img = disk.then(|| tool("qemu-img", "qemu-utils"));
        let swtpm = tool("swtpm", "swtpm");
        let mkfs_vfat = tool("mkfs.vfat", "dosfstools");
        let mmd = tool("mmd", "mtools");
        let mcopy = tool("mcopy", "mtools");
        let dir = std::env::var_os("IMGCTL_OVMF_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(OVMF_DIR));
        let virt_fw_vars = enroll.then(|| {
            imgctl_fsio::find_program("virt-fw-vars").unwrap_or_else(|| {
                missing.push(
                    "virt-fw-vars (PyPI package virt-firmware: pip install virt-firmware==26.10)"
                        .to_owned(),
                );
                PathBuf::new()
            })
        });
        let (code, vars) = if secure_boot && enroll {
            // No keys enrolled: ours go in.
            ("OVMF_CODE_4M.secboot.fd", "OVMF_VARS_4M.fd")
        } else if secure_boot {
            ("OVMF_CODE_4M.secboot.fd", "OVMF_VARS_4M.ms.fd")
        } else {
            ("OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd")
        };
        let mut firmware = |name: &str| {
            let p = dir.join(name);
            if !p.is_file() {
                missing.push(format!("{} (Debian package ovmf)", p.display()));
            }
            p
        };
        let ovmf_code = firmware(code);
        let ovmf_vars = firmware(vars);
        if !missing.is_empty() {
            return Err(Error::Missing(missing.join(", ")));
        }
        Ok(Tools {
            qemu,
            qemu_img,
            swtpm,
            mkfs_vfat,
            mmd,
            mcopy,
            ovmf_code,
            ovmf_vars,
            virt_fw_vars,
        })
    }
}

/// Child processes and the run folder, torn down on drop (children first, newest first).
struct Running {
    children: Vec<(&'static str, Child)>,
    dir: tempfile::TempDir,
}

impl Running {
    fn new() -> Result<Running, Error> {
        let dir = tempfile::Builder::new()
            .prefix("imgctl-vm-")
            .tempdir()
            .io(|| "creating the run folder".into())?;
        Ok(Running {
            children: Vec::new(),
            dir,
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn spawn(&mut self, what: &'static str, cmd: &mut Command) -> Result<usize, Error> {
        let child = cmd
            .process_group(0)
            .spawn()
            .io(|| format!("starting {what} ({cmd:?})"))?;
        self.children.push((what, child));
        Ok(self.children.len() - 1)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for (_, child) in self.children.iter_mut().rev() {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

/// Which accelerator to use: KVM only if asked for or if a probe boot under KVM works.
fn resolve_accel(requested: Accel, tools: &Tools, cfg: &VmConfig) -> Accel {
    static PROBED: OnceLock<Accel> = OnceLock::new();
    match requested {
        Accel::Kvm | Accel::Tcg => requested,
        Accel::Auto => *PROBED.get_or_init(|| match probe_kvm(tools, cfg.interrupted) {
            Ok(()) => Accel::Kvm,
            Err(why) => {
                (cfg.progress)(&format!("KVM unusable ({why}); using TCG emulation"));
                Accel::Tcg
            }
        }),
    }
}

/// Boots OVMF alone under KVM and waits for its boot manager's first line on the serial port.
/// On some hosts /dev/kvm exists but QEMU under OVMF stops at once with "KVM internal error".
fn probe_kvm(tools: &Tools, interrupted: fn() -> Option<i32>) -> Result<(), Error> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .io(|| "opening /dev/kvm".into())?;
    let mut run = Running::new()?;
    let vars = run.path("vars.fd");
    std::fs::copy(&tools.ovmf_vars, &vars).io(|| "copying the OVMF variable store".into())?;
    let stderr_file = run.path("qemu.err");
    let mut cmd = Command::new(&tools.qemu);
    cmd.args(["-machine", "q35", "-m", "256", "-accel", "kvm"])
        .args(common_qemu_args())
        .args(pflash_args(&tools.ovmf_code, &vars))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_file).io(|| "creating qemu.err".into())?);
    let i = run.spawn("qemu (KVM probe)", &mut cmd)?;
    let rx = stream(run.children[i].1.stdout.take(), false);
    let start = Instant::now();
    let mut seen = Vec::new();
    while start.elapsed() < KVM_PROBE_TIMEOUT {
        if let Ok(chunk) = rx.recv_timeout(Duration::from_millis(100)) {
            seen.extend_from_slice(&chunk);
            if contains(&seen, b"BdsDxe") {
                return Ok(());
            }
        }
        let err = std::fs::read_to_string(&stderr_file).unwrap_or_default();
        if let Some(line) = err
            .lines()
            .find(|l| l.contains("KVM") && !l.contains("warning"))
        {
            return Err(Error::Tool(line.trim().to_owned()));
        }
        if let Ok(Some(status)) = run.children[i].1.try_wait() {
            return Err(Error::Tool(format!(
                "QEMU exited ({status}): {}",
                err.trim()
            )));
        }
        if interrupted().is_some() {
            return Err(Error::Tool("interrupted".into()));
        }
    }
    Err(Error::Tool(format!(
        "OVMF printed nothing within {}s",
        KVM_PROBE_TIMEOUT.as_secs()
    )))
}

fn common_qemu_args() -> [&'static str; 9] {
    [
        "-nodefaults",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-monitor",
        "none",
        "-no-reboot",
        "-no-user-config",
    ]
}

fn pflash_args(code: &Path, vars: &Path) -> Vec<String> {
    vec![
        "-drive".into(),
        format!(
            "if=pflash,format=raw,unit=0,readonly=on,file={}",
            code.display()
        ),
        "-drive".into(),
        format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
    ]
}

/// Copies a child's output to a channel in chunks (and to stderr when `echo`), on a thread.
fn stream(out: Option<impl Read + Send + 'static>, echo: bool) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    if let Some(mut out) = out {
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                match out.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if echo {
                            let mut e = std::io::stderr().lock();
                            let _ = e.write_all(&buf[..n]);
                            let _ = e.flush();
                        }
                        if tx.send(buf[..n].to_vec()).is_err() {
                            break;
                        }
                    }
                }
            }
        });
    }
    rx
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Makes a FAT image holding `uki` as `\EFI\BOOT\BOOTX64.EFI`. Same UKI, same image bytes:
/// fixed volume ID, `mkfs.vfat --invariant`, and mtools timestamps from SOURCE_DATE_EPOCH=0
/// (directories) and each file's own mtime (`mcopy -m`). Each of `extra` goes into
/// `\EFI\BOOT\BOOTX64.EFI.extra.d\` under its own file name, each of `global` into
/// `\loader\addons\`. With a boot `loader` (systemd-boot) that is `BOOTX64.EFI` instead, its
/// `loader.conf` goes into `\loader\`, and the UKI into `\EFI\Linux\` under its own name
/// (a Boot Loader Specification type #2 entry), its `extra` beside it.
fn make_esp(
    tools: &Tools,
    uki: &Path,
    extra: &[PathBuf],
    global: &[PathBuf],
    loader: Option<&BootLoader>,
    image: &Path,
) -> Result<(), Error> {
    let file_name = |p: &Path| -> Result<String, Error> {
        p.file_name()
            .and_then(|n| n.to_str())
            .map(str::to_owned)
            .ok_or_else(|| Error::Config(format!("{}: no usable file name", p.display())))
    };
    let mut dirs: Vec<String> = vec!["::/EFI".into(), "::/EFI/BOOT".into()];
    let mut copies: Vec<(&Path, String)> = Vec::new();
    let extra_dir = match loader {
        None => {
            copies.push((uki, "::/EFI/BOOT/BOOTX64.EFI".into()));
            "::/EFI/BOOT/BOOTX64.EFI.extra.d".to_owned()
        }
        Some(l) => {
            dirs.extend(["::/EFI/Linux".into(), "::/loader".into()]);
            copies.push((&l.efi, "::/EFI/BOOT/BOOTX64.EFI".into()));
            copies.push((&l.loader_conf, "::/loader/loader.conf".into()));
            let name = file_name(uki)?;
            copies.push((uki, format!("::/EFI/Linux/{name}")));
            format!("::/EFI/Linux/{name}.extra.d")
        }
    };
    if !extra.is_empty() {
        dirs.push(extra_dir.clone());
        for e in extra {
            copies.push((e, format!("{extra_dir}/{}", file_name(e)?)));
        }
    }
    if !global.is_empty() {
        for d in ["::/loader", "::/loader/addons"] {
            if !dirs.iter().any(|x| x == d) {
                dirs.push(d.into());
            }
        }
        for e in global {
            copies.push((e, format!("::/loader/addons/{}", file_name(e)?)));
        }
    }
    let mut total = 0u64;
    for (src, _) in &copies {
        total += std::fs::metadata(src)
            .io(|| format!("reading {}", src.display()))?
            .len();
    }
    const MIB: u64 = 1 << 20;
    // Room for the FAT structures and slack; at least 64 MiB so mkfs.vfat picks FAT16/32.
    let size = (total + total / 8 + 16 * MIB).max(64 * MIB).div_ceil(MIB) * MIB;
    let f = std::fs::File::create(image).io(|| "creating the ESP image".into())?;
    f.set_len(size).io(|| "sizing the ESP image".into())?;
    drop(f);
    let image_s = image.as_os_str();
    run_quiet(
        Command::new(&tools.mkfs_vfat)
            .args(["--invariant", "-i", "494d4743", "-n", "IMGCTL-ESP"])
            .arg(image_s),
        "mkfs.vfat",
    )?;
    run_quiet(
        Command::new(&tools.mmd)
            .env("SOURCE_DATE_EPOCH", "0")
            .arg("-i")
            .arg(image_s)
            .args(&dirs),
        "mmd",
    )?;
    for (src, dest) in &copies {
        run_quiet(
            Command::new(&tools.mcopy)
                .env("SOURCE_DATE_EPOCH", "0")
                .args(["-m", "-i"])
                .arg(image_s)
                .arg(src)
                .arg(dest),
            "mcopy",
        )?;
    }
    Ok(())
}

/// A boot loader on the ESP in front of the UKI (`imgctl vm --systemd-boot`).
#[derive(Debug, Clone)]
pub struct BootLoader {
    /// The loader's EFI binary (e.g. systemd-bootx64.efi 257), booted as BOOTX64.EFI.
    pub efi: PathBuf,
    /// Its `loader.conf` (e.g. `default demo.efi@1` to boot profile 1 of demo.efi).
    pub loader_conf: PathBuf,
}

/// A path as the value of a QEMU `-drive` option (a comma is written twice).
fn qemu_option_value(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

/// How much larger than the image the guest's disk is: the free space systemd-repart takes at
/// first boot for the partitions an image makes then (e.g. an encrypted /var), as a real disk
/// has beyond the image written onto it.
pub const DISK_GROWTH: u64 = 256 << 20;
/// The overlay kept in a `--reuse-tpm` folder: the disk's state, next to the TPM's.
pub const DISK_STATE: &str = "disk.qcow2";

/// Makes `overlay`, a qcow2 file whose backing file is the disk `image` (read, never written),
/// [`DISK_GROWTH`] larger than it: everything the guest writes lands in the overlay.
fn make_overlay(tools: &Tools, image: &Path, overlay: &Path) -> Result<(), Error> {
    let qemu_img = tools
        .qemu_img
        .as_ref()
        .ok_or_else(|| Error::Missing("qemu-img (Debian package qemu-utils)".into()))?;
    let image = image.canonicalize().io(|| image.display().to_string())?;
    let size = std::fs::metadata(&image)
        .io(|| image.display().to_string())?
        .len()
        .checked_add(DISK_GROWTH)
        .ok_or_else(|| Error::Config(format!("{}: too large", image.display())))?;
    run_quiet(
        Command::new(qemu_img)
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&image)
            .arg(overlay)
            .arg(size.to_string()),
        "qemu-img create (the disk's copy-on-write overlay)",
    )
}

/// Checks that the kept overlay `overlay` (a `--reuse-tpm` folder's) is a qcow2 file over this
/// very `image` (`qemu-img info`), so a second boot continues the first one's disk and never
/// another image's.
fn check_overlay(tools: &Tools, image: &Path, overlay: &Path) -> Result<(), Error> {
    let qemu_img = tools
        .qemu_img
        .as_ref()
        .ok_or_else(|| Error::Missing("qemu-img (Debian package qemu-utils)".into()))?;
    let out = Command::new(qemu_img)
        .args(["info", "--output=json", "-U"])
        .arg(overlay)
        .stdin(Stdio::null())
        .output()
        .io(|| format!("running {}", qemu_img.display()))?;
    if !out.status.success() {
        return Err(Error::Tool(format!(
            "{}: qemu-img info: {}",
            overlay.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let info: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| Error::Tool(format!("{}: qemu-img info output: {e}", overlay.display())))?;
    let image = image.canonicalize().io(|| image.display().to_string())?;
    let backing = info["full-backing-filename"]
        .as_str()
        .or_else(|| info["backing-filename"].as_str());
    if info["format"] != "qcow2" || backing != Some(&*image.to_string_lossy()) {
        return Err(Error::Config(format!(
            "{}: the kept disk state is not an overlay of {} (backing file {}); use another \
             --reuse-tpm folder for another image",
            overlay.display(),
            image.display(),
            backing.unwrap_or("none")
        )));
    }
    Ok(())
}

fn run_quiet(cmd: &mut Command, what: &str) -> Result<(), Error> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .io(|| format!("running {what}"))?;
    if !out.status.success() {
        return Err(Error::Tool(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Waits until swtpm's control socket exists (or swtpm died).
fn wait_for_socket(run: &mut Running, idx: usize, sock: &Path) -> Result<(), Error> {
    let start = Instant::now();
    while !sock.exists() {
        if let Ok(Some(status)) = run.children[idx].1.try_wait() {
            let log = std::fs::read_to_string(run.path("swtpm.log")).unwrap_or_default();
            return Err(Error::Tool(format!(
                "swtpm exited ({status}) before listening: {}",
                log.trim()
            )));
        }
        if start.elapsed() > Duration::from_secs(10) {
            return Err(Error::Tool(format!(
                "swtpm did not create {} within 10s",
                sock.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Writes `vars`: the variable store `template` with `dir`'s PK, KEK and db certificates
/// enrolled (owner [`SIGNATURE_OWNER`]) and Secure Boot enabled, by virt-fw-vars.
fn enroll(virt_fw_vars: &Path, template: &Path, dir: &Path, vars: &Path) -> Result<(), Error> {
    let mut cmd = Command::new(virt_fw_vars);
    cmd.arg("-i").arg(template);
    for (opt, name) in ENROLLED {
        cmd.arg(opt).arg(SIGNATURE_OWNER).arg(dir.join(name));
    }
    cmd.arg("--secure-boot").arg("-o").arg(vars);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .io(|| format!("running {}", virt_fw_vars.display()))?;
    if !out.status.success() || !vars.is_file() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(Error::Tool(format!(
            "{}: enrolling the keys of {} failed: {}",
            virt_fw_vars.display(),
            dir.display(),
            err.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("no message")
        )));
    }
    Ok(())
}

/// Boots `cfg.medium` and waits for the guest's done marker, its exit, the timeout or a signal.
pub fn boot(cfg: &VmConfig) -> Result<VmRun, Error> {
    if cfg.enroll.is_some() && !cfg.secure_boot {
        return Err(Error::Config("--enroll needs --secure-boot".into()));
    }
    if let Some(dir) = &cfg.enroll {
        for (_, name) in ENROLLED {
            if !dir.join(name).is_file() {
                return Err(Error::Config(format!(
                    "{}: no {name} (make the keys with `imgctl keygen DIR --pk-kek`)",
                    dir.display()
                )));
            }
        }
    }
    let disk = matches!(cfg.medium, Medium::Disk(_));
    let tools = Tools::find(cfg.secure_boot, cfg.enroll.is_some(), disk)?;
    if !cfg.medium.path().is_file() {
        return Err(Error::Config(format!(
            "{}: no such file",
            cfg.medium.path().display()
        )));
    }
    let accel = resolve_accel(cfg.accel, &tools, cfg);
    (cfg.progress)(&format!(
        "booting {} with {} ({}Secure Boot)",
        cfg.label,
        match accel {
            Accel::Kvm => "KVM",
            _ => "TCG emulation",
        },
        if cfg.secure_boot { "" } else { "no " }
    ));

    let mut run = Running::new()?;
    let sock = run.path("swtpm.sock");
    if sock.as_os_str().len() >= 108 {
        return Err(Error::Config(format!(
            "the run folder path {} is too long for a unix socket; set TMPDIR to a shorter folder",
            run.dir.path().display()
        )));
    }
    let vars = run.path("vars.fd");
    match (&cfg.enroll, &tools.virt_fw_vars) {
        (Some(dir), Some(virt_fw_vars)) => enroll(virt_fw_vars, &tools.ovmf_vars, dir, &vars)?,
        _ => {
            std::fs::copy(&tools.ovmf_vars, &vars)
                .io(|| format!("copying {}", tools.ovmf_vars.display()))?;
        }
    }
    let firmware_vars = imgctl_fsio::read_bounded(&vars, 64 << 20, "an OVMF variable store")?;
    // The drive the firmware boots from: a fresh ESP with the UKI, or an overlay of the disk.
    let (drive, format) = match &cfg.medium {
        Medium::Uki(uki) => {
            let esp = run.path("esp.img");
            make_esp(
                &tools,
                uki,
                &cfg.extra,
                &cfg.global_addons,
                cfg.loader.as_ref(),
                &esp,
            )?;
            (esp, "raw")
        }
        Medium::Disk(image) => {
            if !cfg.extra.is_empty() || !cfg.global_addons.is_empty() || cfg.loader.is_some() {
                return Err(Error::Config(
                    "--extra and --global-addon are for a UKI; a disk image carries its own ESP"
                        .into(),
                ));
            }
            // With --reuse-tpm the disk's state is kept beside the TPM's: a second boot
            // continues the first one (what it partitioned, enrolled and wrote).
            let overlay = match &cfg.tpm_state {
                Some(dir) => {
                    std::fs::create_dir_all(dir)
                        .io(|| format!("--reuse-tpm: creating {}", dir.display()))?;
                    dir.join(DISK_STATE)
                }
                None => run.path(DISK_STATE),
            };
            if cfg.tpm_state.is_some() && overlay.exists() {
                check_overlay(&tools, image, &overlay)?;
            } else {
                make_overlay(&tools, image, &overlay)?;
            }
            (overlay, "qcow2")
        }
    };

    let state = match &cfg.tpm_state {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .io(|| format!("--reuse-tpm: creating {}", dir.display()))?;
            dir.canonicalize()
                .io(|| format!("--reuse-tpm {}", dir.display()))?
        }
        None => {
            let state = run.path("tpm");
            std::fs::create_dir(&state).io(|| "creating the swtpm state folder".into())?;
            state
        }
    };
    let swtpm = run.spawn(
        "swtpm",
        Command::new(&tools.swtpm)
            .args(["socket", "--tpm2", "--flags", "startup-clear"])
            .arg("--tpmstate")
            .arg(format!("dir={}", state.display()))
            .arg("--ctrl")
            .arg(format!("type=unixio,path={}", sock.display()))
            .arg("--log")
            .arg(format!("file={},level=1", run.path("swtpm.log").display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )?;
    wait_for_socket(&mut run, swtpm, &sock)?;

    let stderr_file = run.path("qemu.err");
    let mut qemu = Command::new(&tools.qemu);
    let machine = if cfg.secure_boot { "q35,smm=on" } else { "q35" };
    qemu.args(["-machine", machine, "-accel", accel.name()])
        .args(["-m", &cfg.memory_mib.to_string(), "-smp", "1"])
        .args(common_qemu_args())
        .args(pflash_args(&tools.ovmf_code, &vars));
    if cfg.secure_boot {
        qemu.args(["-global", "driver=cfi.pflash01,property=secure,value=on"]);
    }
    qemu.arg("-chardev")
        .arg(format!("socket,id=chrtpm,path={}", sock.display()))
        .args(["-tpmdev", "emulator,id=tpm0,chardev=chrtpm"])
        .args(["-device", "tpm-tis,tpmdev=tpm0"])
        .arg("-drive")
        .arg(format!(
            "if=none,id=boot,format={format},file={}",
            qemu_option_value(&drive)
        ))
        .args(["-device", "virtio-blk-pci,drive=boot"]);
    for (name, value) in &cfg.credentials {
        // Base64 and a checked name: no `,` that QEMU would read as the next option.
        qemu.arg("-smbios")
            .arg(format!("type=11,value={}", smbios_credential(name, value)));
    }
    for spec in &cfg.smbios {
        qemu.arg("-smbios").arg(spec);
    }
    qemu.stdin(if cfg.console_input.is_empty() {
        Stdio::null()
    } else {
        Stdio::piped()
    })
    .stdout(Stdio::piped())
    .stderr(std::fs::File::create(&stderr_file).io(|| "creating qemu.err".into())?);

    let start = Instant::now();
    let q = run.spawn("qemu-system-x86_64", &mut qemu)?;
    let rx = stream(run.children[q].1.stdout.take(), cfg.echo);
    let mut keyboard = run.children[q].1.stdin.take();
    let mut typed = 0; // steps of cfg.console_input done
    let mut prompt_from = 0; // where in the console the next prompt is looked for
    let mut console = Vec::new();
    let mut done_at: Option<Instant> = None;
    let mut last_stderr_check = start;
    let ending = loop {
        if let Some(signal) = (cfg.interrupted)() {
            break Ending::Interrupted(signal);
        }
        if let Ok(chunk) = rx.recv_timeout(Duration::from_millis(100)) {
            let from = console.len().saturating_sub(cfg.done_marker.len());
            console.extend_from_slice(&chunk);
            if done_at.is_none() && contains(&console[from..], cfg.done_marker.as_bytes()) {
                done_at = Some(Instant::now());
            }
            let from = from.saturating_sub(OVMF_NOTHING_BOOTABLE.len());
            if contains(&console[from..], OVMF_NOTHING_BOOTABLE.as_bytes()) {
                break Ending::NothingBootable;
            }
            if let (Some((prompt, line)), Some(k)) = (cfg.console_input.get(typed), &mut keyboard) {
                if contains(&console[prompt_from.min(console.len())..], prompt) {
                    use std::io::Write as _;
                    // A guest that stopped reading is seen by the loop (exit or timeout).
                    let _ = k.write_all(line).and_then(|()| k.write_all(b"\r"));
                    let _ = k.flush();
                    typed += 1;
                    prompt_from = console.len();
                }
            }
        }
        if let Ok(Some(status)) = run.children[q].1.try_wait() {
            // Whatever the reader thread still holds belongs to this run.
            while let Ok(chunk) = rx.recv_timeout(Duration::from_millis(200)) {
                console.extend_from_slice(&chunk);
            }
            if done_at.is_some() || contains(&console, cfg.done_marker.as_bytes()) {
                break Ending::Done;
            }
            break Ending::Exited(status);
        }
        if last_stderr_check.elapsed() >= Duration::from_secs(1) {
            last_stderr_check = Instant::now();
            let err = std::fs::read_to_string(&stderr_file).unwrap_or_default();
            if err.contains(KVM_INTERNAL_ERROR) {
                break Ending::QemuFailed;
            }
        }
        if done_at.is_some_and(|t| t.elapsed() > POWEROFF_GRACE) {
            break Ending::Done;
        }
        if done_at.is_none() && start.elapsed() >= cfg.timeout {
            break Ending::TimedOut;
        }
    };
    let elapsed = start.elapsed();
    let qemu_stderr = std::fs::read_to_string(&stderr_file).unwrap_or_default();
    drop(run); // stops QEMU and swtpm, removes the run folder
    Ok(VmRun {
        ending,
        accel,
        console,
        elapsed,
        qemu_stderr,
        firmware_vars,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accelerators_parse_by_their_names_only() {
        for a in Accel::ALL {
            assert_eq!(a.name().parse::<Accel>(), Ok(a));
        }
        assert!("KVM".parse::<Accel>().is_err());
        assert!("".parse::<Accel>().is_err());
    }

    #[test]
    fn credential_names_are_what_qemu_and_systemd_both_take() {
        for ok in ["cryptsetup.passphrase", "a", "x_y-z.1", &"n".repeat(255)] {
            assert!(credential_name_valid(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a,b",
            "a=b",
            "a/b",
            "a b",
            &"n".repeat(256),
            "é",
        ] {
            assert!(!credential_name_valid(bad), "{bad}");
        }
    }

    /// The SMBIOS type 11 string systemd reads: `io.systemd.credential.binary:NAME=` and the
    /// value in standard Base64 (no `,` QEMU would split on).
    #[test]
    fn a_credential_is_named_and_base64_encoded() {
        assert_eq!(
            smbios_credential("k", b"\xff\xfe,="),
            "io.systemd.credential.binary:k=//4sPQ=="
        );
    }

    #[test]
    fn a_comma_in_a_drive_path_is_doubled() {
        assert_eq!(qemu_option_value(Path::new("/a,b/c")), "/a,,b/c");
        assert!(contains(b"xx IMGCTL-DEMO: done", b"done"));
        assert!(!contains(b"don", b"done"));
    }
}
