//! imgctl-stub, the Rust UEFI stub (uki-stub/): reproducible, signable with sbsign, boots the
//! demo UKI under OVMF + swtpm, and measures PCR 11 and PCR 12 event by event as systemd-stub
//! does. ESP boots go through `imgctl vm`; boots that `imgctl vm` does not offer (QEMU
//! `-kernel`/`-append` to pass a command line, stopping as soon as the firmware has control
//! back after a stub failure) use a small qemu + swtpm helper here.
//!
//! Expected values: `imgctl predict-pcrs` (upstream semantics) for PCR 11, the event log that
//! Debian's systemd-stub 252 writes for the same sections, and the real TPM (swtpm) values.

#![allow(clippy::unwrap_used)] // reason: test code; a panic is a test failure

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{imgctl, missing, repo_root, require_tool, run_ok};
use imgctl_attest::guest_report::GuestReport;
use imgctl_measure::bank::{HashAlg, Pcr};
use imgctl_measure::pcr11::{self, StubSemantics, SECTIONS_252};
use imgctl_measure::uki::Uki;

const SYSTEMD_STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
const EV_IPL: u32 = 0x0d;
/// A command line passed as LoadOptions (QEMU `-append` with `-kernel`: OVMF hands it to the
/// image as UTF-16 with NUL).
const PASSED_CMDLINE: &str = "console=ttyS0 panic=-1 no_timer_check imgctl.test=1";

fn have_tools(list: &[(&str, &str)]) -> bool {
    list.iter().all(|(t, p)| require_tool(t, p).is_some())
}

/// The stub, built once per test run by the same code as scripts/build-stub.sh.
fn stub() -> Option<&'static Path> {
    static STUB: OnceLock<Option<PathBuf>> = OnceLock::new();
    STUB.get_or_init(|| {
        if !have_tools(&[("ld", "binutils"), ("objdump", "binutils")]) {
            return None;
        }
        let repo = repo_root();
        let out = repo.join("target/uki-stub/test/imgctl-stub.efi");
        let built = imgctl_uki_stub::build(&repo, &out).unwrap_or_else(|e| panic!("{e}"));
        eprintln!(
            "imgctl-stub: {} bytes, {} base relocations",
            built.size, built.info.relocations
        );
        Some(built.path)
    })
    .as_deref()
}

#[test]
fn stub_is_reproducible_signable_and_identifies_itself() {
    let Some(stub) = stub() else { return };
    if !have_tools(&[
        ("sbsign", "sbsigntool"),
        ("sbverify", "sbsigntool"),
        ("openssl", "openssl"),
    ]) {
        return;
    }
    let first = std::fs::read(stub).unwrap();
    // A second build from scratch, in another target dir: the same bytes.
    let tmp = tempfile::tempdir().unwrap();
    let again = imgctl_uki_stub::build_in(
        &repo_root(),
        &tmp.path().join("target"),
        &tmp.path().join("again.efi"),
    )
    .unwrap();
    let second = std::fs::read(&again.path).unwrap();
    assert!(first == second, "two builds of the stub differ");

    // Its identity: .sdmagic and .sbat name imgctl-stub, which follows upstream semantics.
    let uki = Uki::parse(&first).unwrap();
    let id = uki.identity();
    assert_eq!(id.name.as_deref(), Some("imgctl-stub"));
    assert_eq!(id.version.as_deref(), Some(env!("CARGO_PKG_VERSION")));
    assert!(id
        .sbat_component
        .as_deref()
        .is_some_and(|l| l.starts_with("imgctl-stub,1,")));
    assert_eq!(id.semantics(), StubSemantics::IMGCTL_STUB);

    // sbsign signs it and sbverify checks the signature against the certificate.
    let key = tmp.path().join("db.key");
    let cert = tmp.path().join("db.crt");
    run_ok(
        Command::new("openssl")
            .args([
                "req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=imgctl-stub test/"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert),
    );
    let signed = tmp.path().join("signed.efi");
    run_ok(
        Command::new("sbsign")
            .arg("--key")
            .arg(&key)
            .arg("--cert")
            .arg(&cert)
            .arg("--output")
            .arg(&signed)
            .arg(stub),
    );
    run_ok(
        Command::new("sbverify")
            .arg("--cert")
            .arg(&cert)
            .arg(&signed),
    );
    // And the unsigned stub does not verify.
    let st = Command::new("sbverify")
        .arg("--cert")
        .arg(&cert)
        .arg(stub)
        .output()
        .unwrap();
    assert!(!st.status.success());
}

#[test]
fn converter_refuses_relocations_the_firmware_cannot_apply() {
    let Some(_) = stub() else { return };
    // The shared object the build linked: patch one R_X86_64_RELATIVE into R_X86_64_64 (1).
    let so = repo_root().join("target/uki-stub/build/imgctl-stub.so");
    let mut elf = std::fs::read(&so).unwrap();
    assert!(imgctl_uki_stub::elf_to_pe(&elf).is_ok());
    let parsed = goblin::elf::Elf::parse(&elf).unwrap();
    let rela = parsed
        .section_headers
        .iter()
        .find(|h| parsed.shdr_strtab.get_at(h.sh_name) == Some(".rela.dyn"))
        .expect(".rela.dyn")
        .sh_offset as usize;
    drop(parsed);
    assert_eq!(elf[rela + 8], 8, "first relocation is R_X86_64_RELATIVE");
    elf[rela + 8] = 1;
    let err = imgctl_uki_stub::elf_to_pe(&elf).unwrap_err();
    assert!(
        matches!(err, imgctl_uki_stub::Error::Relocation { r_type: 1, .. }),
        "{err}"
    );
}

/// The demo recipe built with systemd-stub and with ours.
struct Demo {
    systemd: PathBuf,
    ours: PathBuf,
}

fn demo() -> Option<&'static Demo> {
    static DEMO: OnceLock<Option<Demo>> = OnceLock::new();
    DEMO.get_or_init(|| {
        let stub = stub()?;
        let repo = repo_root();
        let kernel = repo.join(".cache/demo/vmlinuz");
        if !kernel.is_file() {
            missing(&format!(
                "the demo kernel {} (scripts/setup.sh)",
                kernel.display()
            ));
            return None;
        }
        if !Path::new(SYSTEMD_STUB).is_file() {
            missing("Debian's systemd-stub (systemd-boot-efi)");
            return None;
        }
        let dir = repo.join("target/uki-stub/test/demo");
        std::fs::create_dir_all(&dir).unwrap();
        let text = std::fs::read_to_string(repo.join("recipes/demo.yaml")).unwrap();
        let abs = text
            .replace("../.cache/demo/vmlinuz", kernel.to_str().unwrap())
            .replace(
                "tree: demo/initrd",
                &format!("tree: {}", repo.join("recipes/demo/initrd").display()),
            );
        assert!(abs.contains(kernel.to_str().unwrap()) && !abs.contains("tree: demo/"));
        let mut out = Vec::new();
        for (name, extra) in [("systemd", ""), ("ours", "stub: imgctl\n")] {
            let recipe = dir.join(format!("{name}.yaml"));
            std::fs::write(&recipe, format!("{abs}\n{extra}")).unwrap();
            let o = dir.join(name);
            run_ok(
                imgctl()
                    .env("IMGCTL_STUB", stub)
                    .env("SOURCE_DATE_EPOCH", "0")
                    .arg("build")
                    .arg(&recipe)
                    .arg("-o")
                    .arg(&o),
            );
            out.push(o.join("demo.efi"));
        }
        let ours = out.pop()?;
        let systemd = out.pop()?;
        Some(Demo { systemd, ours })
    })
    .as_ref()
}

fn boot_tools() -> bool {
    have_tools(&[
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("swtpm", "swtpm"),
        (OVMF_CODE, "ovmf"),
        (OVMF_VARS, "ovmf"),
        ("mkfs.vfat", "dosfstools"),
        ("mcopy", "mtools"),
        ("mmd", "mtools"),
    ])
}

/// How the firmware gets the UKI.
#[derive(Clone, Copy)]
enum Source<'a> {
    /// `\EFI\BOOT\BOOTX64.EFI` on a FAT ESP: the normal path, no LoadOptions.
    Esp,
    /// QEMU `-kernel UKI -append CMDLINE`: OVMF starts it with the command line as LoadOptions.
    Kernel(&'a str),
}

/// When to stop the machine.
#[derive(Clone, Copy)]
enum Until {
    /// The demo initrd printed its report.
    DemoDone,
    /// The stub reported an error and the firmware went on with its next boot option.
    StubFailed,
}

/// The serial console of a boot, each line with the time it arrived.
struct Console {
    lines: Vec<(Duration, String)>,
}

impl Console {
    fn bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        for (_, l) in &self.lines {
            v.extend_from_slice(l.as_bytes());
            v.push(b'\n');
        }
        v
    }

    fn find(&self, needle: &str) -> Option<(usize, Duration)> {
        self.lines
            .iter()
            .position(|(_, l)| l.contains(needle))
            .map(|i| (i, self.lines[i].0))
    }

    fn tail(&self) -> String {
        let n = self.lines.len().saturating_sub(40);
        self.lines[n..]
            .iter()
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn report(&self) -> GuestReport {
        GuestReport::parse(&self.bytes()).unwrap()
    }
}

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Boots `uki` from an ESP with `imgctl vm` (TCG) and returns its captured console.
fn vm_boot(uki: &Path) -> Console {
    let dir = tempfile::tempdir().unwrap();
    let capture = dir.path().join("capture");
    let out = imgctl()
        .arg("vm")
        .arg(uki)
        .arg("--capture")
        .arg(&capture)
        .args(["--accel", "tcg", "--timeout", "300", "--json", "--quiet"])
        .output()
        .unwrap();
    let console = std::fs::read(capture.join("console.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "imgctl vm {} failed ({}):\n{}\nconsole:\n{}",
        uki.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&console)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("imgctl vm {}: {}s", uki.display(), json["seconds"]);
    Console {
        lines: String::from_utf8_lossy(&console)
            .lines()
            .map(|l| (Duration::ZERO, l.to_owned()))
            .collect(),
    }
}

/// Boots `uki` under OVMF (TCG) with a fresh swtpm and returns the console.
fn boot(uki: &Path, source: Source<'_>, until: Until) -> Console {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sock = d.join("swtpm.sock");
    let _swtpm = Kill(
        Command::new("swtpm")
            .args(["socket", "--tpm2", "--flags", "startup-clear"])
            .arg("--tpmstate")
            .arg(format!("dir={}", d.display()))
            .arg("--ctrl")
            .arg(format!("type=unixio,path={}", sock.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let start = Instant::now();
    while !sock.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "swtpm did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let vars = d.join("vars.fd");
    std::fs::copy(OVMF_VARS, &vars).unwrap();
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args([
        "-machine",
        "q35",
        "-m",
        "1024",
        "-accel",
        "tcg",
        "-nographic",
    ])
    .args(["-no-reboot", "-net", "none"])
    .arg("-drive")
    .arg(format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"))
    .arg("-drive")
    .arg(format!("if=pflash,format=raw,file={}", vars.display()))
    .arg("-chardev")
    .arg(format!("socket,id=chrtpm,path={}", sock.display()))
    .args(["-tpmdev", "emulator,id=tpm0,chardev=chrtpm"])
    .args(["-device", "tpm-tis,tpmdev=tpm0"]);
    match source {
        Source::Esp => {
            let esp = d.join("esp.img");
            std::fs::File::create(&esp)
                .unwrap()
                .set_len(64 << 20)
                .unwrap();
            run_ok(Command::new("mkfs.vfat").args(["-F", "32"]).arg(&esp));
            run_ok(
                Command::new("mmd")
                    .arg("-i")
                    .arg(&esp)
                    .args(["::/EFI", "::/EFI/BOOT"]),
            );
            run_ok(
                Command::new("mcopy")
                    .arg("-i")
                    .arg(&esp)
                    .arg(uki)
                    .arg("::/EFI/BOOT/BOOTX64.EFI"),
            );
            qemu.arg("-drive")
                .arg(format!("if=virtio,format=raw,file={}", esp.display()));
        }
        Source::Kernel(cmdline) => {
            qemu.arg("-kernel").arg(uki).arg("-append").arg(cmdline);
        }
    }
    let mut child = qemu
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut qemu = Kill(child);
    let (tx, rx) = mpsc::channel();
    let t0 = Instant::now();
    std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        while r.read_until(b'\n', &mut buf).unwrap_or(0) > 0 {
            let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
            if tx.send((t0.elapsed(), line)).is_err() {
                break;
            }
            buf.clear();
        }
    });
    let mut console = Console { lines: Vec::new() };
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut stop_at: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if stop_at.is_some_and(|s| now >= s) {
            break;
        }
        if now >= deadline {
            panic!(
                "boot of {} timed out; console tail:\n{}",
                uki.display(),
                console.tail()
            );
        }
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => console.lines.push(line),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if matches!(qemu.0.try_wait(), Ok(Some(_))) && stop_at.is_none() {
                    break;
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        let reached = match until {
            Until::DemoDone => console.find("IMGCTL-DEMO: done").is_some(),
            Until::StubFailed => console.find("imgctl-stub: error").is_some_and(|(i, _)| {
                console.lines[i..]
                    .iter()
                    .any(|(_, l)| l.contains("BdsDxe: failed to start"))
            }),
        };
        if reached && stop_at.is_none() {
            // Give `poweroff -f` a moment; the firmware's next boot option is not our business.
            stop_at = Some(
                Instant::now()
                    + Duration::from_secs(match until {
                        Until::DemoDone => 10,
                        Until::StubFailed => 0,
                    }),
            );
        }
        if reached && matches!(qemu.0.try_wait(), Ok(Some(_))) {
            break;
        }
    }
    let _ = qemu.0.kill();
    // Drain what the reader already has.
    while let Ok(line) = rx.try_recv() {
        console.lines.push(line);
    }
    console
}

/// One TCG_PCR_EVENT2 record of a crypto-agile firmware event log.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Event {
    pcr: u32,
    event_type: u32,
    /// (TPM_ALG_ID, digest), in log order.
    digests: Vec<(u16, Vec<u8>)>,
    data: Vec<u8>,
}

/// A tiny reader of the TCG PC Client crypto-agile log (TCG PFP §10.2): the SHA-1 format
/// Spec ID event first, whose `digestSizes` give each algorithm's digest length, then
/// TCG_PCR_EVENT2 records. Enough for these tests; measure/src/eventlog is the real parser.
fn parse_event_log(b: &[u8]) -> Vec<Event> {
    let u32_at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
    let u16_at = |at: usize| u16::from_le_bytes(b[at..at + 2].try_into().unwrap());
    // TCG_PCR_EVENT: pcr, type, sha1[20], size, data.
    let spec_size = u32_at(28) as usize;
    let spec = 32;
    assert_eq!(&b[spec..spec + 16], b"Spec ID Event03\0");
    let n_algs = u32_at(spec + 24) as usize;
    let mut sizes = std::collections::HashMap::new();
    for i in 0..n_algs {
        let at = spec + 28 + 4 * i;
        sizes.insert(u16_at(at), u16_at(at + 2) as usize);
    }
    let mut at = spec + spec_size;
    let mut events = Vec::new();
    while at + 12 <= b.len() {
        let pcr = u32_at(at);
        let event_type = u32_at(at + 4);
        let count = u32_at(at + 8) as usize;
        at += 12;
        let mut digests = Vec::new();
        for _ in 0..count {
            let alg = u16_at(at);
            let len = sizes[&alg];
            digests.push((alg, b[at + 2..at + 2 + len].to_vec()));
            at += 2 + len;
        }
        let size = u32_at(at) as usize;
        let data = b[at + 4..at + 4 + size].to_vec();
        at += 4 + size;
        events.push(Event {
            pcr,
            event_type,
            digests,
            data,
        });
    }
    events
}

fn utf16z(s: &str) -> Vec<u8> {
    s.encode_utf16()
        .chain([0])
        .flat_map(u16::to_le_bytes)
        .collect()
}

/// The section an EV_IPL PCR 11 event is about (its UTF-16 description without NUL).
fn section_of(e: &Event) -> String {
    let units: Vec<u16> = e
        .data
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16_lossy(&units)
}

fn events_for(log: &[Event], pcr: u32) -> Vec<Event> {
    log.iter().filter(|e| e.pcr == pcr).cloned().collect()
}

fn digest_of(e: &Event, alg: HashAlg) -> Option<&[u8]> {
    e.digests
        .iter()
        .find(|(a, _)| *a == alg.0)
        .map(|(_, d)| d.as_slice())
}

/// `imgctl predict-pcrs` for PCR 11 right after the stub (`--phase :`).
fn predicted_pcr11(uki: &Path, semantics: &str, bank: &str) -> String {
    let out = run_ok(imgctl().arg("predict-pcrs").arg(uki).args([
        "--stub-semantics",
        semantics,
        "--bank",
        bank,
        "--phase",
        ":",
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    v[bank][0]["hash"].as_str().unwrap().to_owned()
}

fn pcr_hex(report: &GuestReport, bank: HashAlg, index: u32) -> String {
    report
        .pcr(bank, index)
        .unwrap_or_else(|| panic!("guest printed no PCR {index}"))
        .to_hex()
}

#[test]
fn demo_boots_with_our_stub_and_measures_like_systemd_stub() {
    if !boot_tools() {
        return;
    }
    let Some(demo) = demo() else { return };
    let sha256 = HashAlg::SHA256;
    let sha1 = HashAlg::SHA1;

    // Both stubs from the ESP with `imgctl vm`, side by side.
    let (ours, systemd) = std::thread::scope(|s| {
        let a = s.spawn(|| vm_boot(&demo.ours));
        let b = s.spawn(|| vm_boot(&demo.systemd));
        (a.join().unwrap(), b.join().unwrap())
    });
    for (name, c) in [("imgctl-stub", &ours), ("systemd-stub", &systemd)] {
        assert!(
            c.find("IMGCTL-DEMO: init reached").is_some(),
            "{name}: the demo initrd was not reached:\n{}",
            c.tail()
        );
    }
    let ours_r = ours.report();
    let sd_r = systemd.report();

    // PCR 11 as the guest reads it = the prediction for upstream systemd-stub semantics.
    for (bank, name) in [(sha256, "sha256"), (sha1, "sha1")] {
        assert_eq!(
            pcr_hex(&ours_r, bank, 11),
            predicted_pcr11(&demo.ours, "auto", name),
            "{name} PCR 11 with imgctl-stub"
        );
        assert_eq!(
            pcr_hex(&sd_r, bank, 11),
            predicted_pcr11(&demo.systemd, "systemd-252", name),
            "{name} PCR 11 with systemd-stub"
        );
    }
    // Nothing was passed: nothing in PCR 12.
    assert_eq!(pcr_hex(&ours_r, sha256, 12), "00".repeat(32));

    // The event logs, event by event.
    let ours_log = parse_event_log(ours_r.event_log.as_deref().expect("event log"));
    let sd_log = parse_event_log(sd_r.event_log.as_deref().expect("event log"));
    let ours11 = events_for(&ours_log, 11);
    let sd11 = events_for(&sd_log, 11);
    assert!(!sd11.is_empty());
    // (a) Every event for a section systemd-stub 252 knows is identical (type, UTF-16
    // description, digests in every bank) and in the same order.
    let ours_known: Vec<Event> = ours11
        .iter()
        .filter(|e| SECTIONS_252.contains(&section_of(e).as_str()))
        .cloned()
        .collect();
    assert_eq!(ours_known, sd11, "PCR 11 events differ from systemd-stub's");
    // (b) The whole PCR 11 log of our stub is the upstream model applied to the UKI: sections in
    // canonical order, EV_IPL, H(name NUL) then H(VirtualSize bytes).
    let bytes = std::fs::read(&demo.ours).unwrap();
    let uki = Uki::parse(&bytes).unwrap();
    let sections = uki.sections_for_profile(0).unwrap();
    let mut expected = Vec::new();
    for name in StubSemantics::IMGCTL_STUB.measured_sections() {
        let Some((_, data)) = sections.iter().find(|(n, _)| n == name) else {
            continue;
        };
        let (nb, nl) = pcr11::name_bytes(name);
        for d in [&nb[..nl], &data[..]] {
            expected.push((name.to_owned(), d.to_vec()));
        }
    }
    assert_eq!(ours11.len(), expected.len());
    for (e, (name, data)) in ours11.iter().zip(&expected) {
        assert_eq!(e.event_type, EV_IPL);
        assert_eq!(e.data, utf16z(name));
        for bank in [sha1, sha256] {
            assert_eq!(
                digest_of(e, bank),
                Some(bank.hash(data).unwrap().as_bytes()),
                "{name}"
            );
        }
    }
    // The sections 252 does not know and we measure (upstream): .uname and .sbat here.
    let extra: Vec<String> = ours11
        .iter()
        .map(section_of)
        .filter(|n| !SECTIONS_252.contains(&n.as_str()))
        .collect();
    eprintln!("measured by imgctl-stub (upstream) but not by systemd-stub 252: {extra:?}");
}

#[test]
fn passed_command_line_is_measured_into_pcr12_like_systemd_stub() {
    if !boot_tools() {
        return;
    }
    let Some(demo) = demo() else { return };
    let sha256 = HashAlg::SHA256;
    let (ours, systemd) = std::thread::scope(|s| {
        let a = s.spawn(|| boot(&demo.ours, Source::Kernel(PASSED_CMDLINE), Until::DemoDone));
        let b = s.spawn(|| {
            boot(
                &demo.systemd,
                Source::Kernel(PASSED_CMDLINE),
                Until::DemoDone,
            )
        });
        (a.join().unwrap(), b.join().unwrap())
    });
    for (name, c) in [("imgctl-stub", &ours), ("systemd-stub", &systemd)] {
        if let Some((_, kernel)) = c.find("EFI stub: Loaded initrd") {
            eprintln!(
                "{name}: QEMU start to kernel EFI stub: {} ms",
                kernel.as_millis()
            );
        }
    }
    assert!(
        ours.find(&format!("Kernel command line: {PASSED_CMDLINE}"))
            .is_some(),
        "the kernel did not get the passed command line:\n{}",
        ours.tail()
    );
    let ours_r = ours.report();
    let sd_r = systemd.report();
    // PCR 12 = one EV_IPL: H(UTF-16LE of the mangled command line, with NUL).
    let mut units: Vec<u16> = PASSED_CMDLINE.encode_utf16().collect();
    let n = pcr11::mangle_cmdline(&mut units);
    let measured: Vec<u8> = units[..n]
        .iter()
        .chain([&0u16])
        .flat_map(|u| u.to_le_bytes())
        .collect();
    for bank in [HashAlg::SHA1, sha256] {
        let mut pcr = Pcr::reset(bank).unwrap();
        pcr.extend_data(&measured);
        assert_eq!(pcr_hex(&ours_r, bank, 12), pcr.value().to_hex());
        assert_eq!(pcr_hex(&sd_r, bank, 12), pcr.value().to_hex());
    }
    let ours12 = events_for(&parse_event_log(ours_r.event_log.as_deref().unwrap()), 12);
    let sd12 = events_for(&parse_event_log(sd_r.event_log.as_deref().unwrap()), 12);
    assert_eq!(ours12.len(), 1);
    assert_eq!(ours12[0].event_type, EV_IPL);
    assert_eq!(ours12[0].data, measured);
    assert_eq!(ours12, sd12, "PCR 12 events differ from systemd-stub's");
    // PCR 11 does not depend on how the UKI was started.
    assert_eq!(
        pcr_hex(&ours_r, sha256, 11),
        predicted_pcr11(&demo.ours, "auto", "sha256")
    );
}

/// The demo UKI with `.linux` renamed, or with its first bytes overwritten.
fn broken_ukis(ours: &Path, dir: &Path) -> (PathBuf, PathBuf) {
    let bytes = std::fs::read(ours).unwrap();
    let uki = Uki::parse(&bytes).unwrap();
    let linux = uki.pe.section(".linux").unwrap();
    let mut no_linux = bytes.clone();
    no_linux[linux.header_offset..linux.header_offset + 8].copy_from_slice(b".nolinux");
    let mut corrupt = bytes.clone();
    let at = linux.pointer_to_raw_data as usize;
    corrupt[at..at + 0x40].fill(0xff);
    let (a, b) = (dir.join("no-linux.efi"), dir.join("corrupt-linux.efi"));
    std::fs::write(&a, no_linux).unwrap();
    std::fs::write(&b, corrupt).unwrap();
    (a, b)
}

#[test]
fn broken_ukis_fail_with_a_message_and_return_to_the_firmware() {
    if !boot_tools() {
        return;
    }
    let Some(demo) = demo() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (no_linux, corrupt) = broken_ukis(&demo.ours, tmp.path());
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| boot(&no_linux, Source::Esp, Until::StubFailed));
        let b = s.spawn(|| boot(&corrupt, Source::Esp, Until::StubFailed));
        (a.join().unwrap(), b.join().unwrap())
    });
    for (c, message) in [
        (&a, "imgctl-stub: error: the UKI has no .linux section"),
        (
            &b,
            "imgctl-stub: error: LoadImage of the .linux section failed",
        ),
    ] {
        let (i, _) = c
            .find(message)
            .unwrap_or_else(|| panic!("no {message:?} on the console:\n{}", c.tail()));
        assert!(
            c.lines[i..]
                .iter()
                .any(|(_, l)| l.contains("BdsDxe: failed to start")),
            "the firmware did not get control back:\n{}",
            c.tail()
        );
        assert!(c.find("Linux version").is_none());
    }
}
