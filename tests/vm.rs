//! Boot tests: the demo recipe is built, booted under QEMU + OVMF + swtpm with `imgctl vm`, and
//! what the guest's TPM showed is checked against imgctl's predictions, tpm2-tools' replay of
//! the firmware event log, and imgctl's Authenticode hash.
//!
//! The two demo boots are shared by the tests in this file (run once, in parallel); under TCG
//! emulation each takes about 15–30 s on a 2-core machine.
#![allow(clippy::unwrap_used)] // reason: test code; a panic is a test failure

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use imgctl_measure::authenticode::authenticode_digests;
use imgctl_measure::{HashAlg, PeFile};

const BOOT_TIMEOUT_S: u64 = 240;
const CMDLINE_SECOND: &str = "console=ttyS0 panic=-1 no_timer_check imgctl.test=second-uki";

/// Everything a boot test needs, or None (loudly, and a failure in CI) when something is missing.
fn prerequisites() -> bool {
    let tools = [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("swtpm", "swtpm"),
        ("mkfs.vfat", "dosfstools"),
        ("mcopy", "mtools"),
        ("tpm2_eventlog", "tpm2-tools"),
        ("/usr/share/OVMF/OVMF_CODE_4M.fd", "ovmf"),
        (
            "/usr/lib/systemd/boot/efi/linuxx64.efi.stub",
            "systemd-boot-efi",
        ),
        ("/bin/busybox", "busybox-static"),
    ];
    let mut ok = true;
    for (t, p) in tools {
        ok &= common::require_tool(t, p).is_some();
    }
    if !common::repo_root().join(".cache/demo/vmlinuz").exists() {
        common::missing("the demo kernel .cache/demo/vmlinuz (run scripts/setup.sh)");
        ok = false;
    }
    ok
}

/// Builds the demo recipe, optionally with another kernel command line, into `dir`.
fn build_demo(dir: &Path, cmdline: Option<&str>) -> PathBuf {
    build_demo_on(dir, cmdline, None)
}

/// The systemd-stub 257 from the Debian 13 chroot that scripts/setup.sh makes.
fn stub_257() -> Option<PathBuf> {
    let stub =
        common::repo_root().join(".cache/trixie-257/usr/lib/systemd/boot/efi/linuxx64.efi.stub");
    if stub.exists() {
        Some(stub)
    } else {
        common::missing("the systemd 257 stub in .cache/trixie-257 (run scripts/setup.sh)");
        None
    }
}

/// Builds the demo recipe into `dir`, optionally with another command line or another stub.
fn build_demo_on(dir: &Path, cmdline: Option<&str>, stub: Option<&Path>) -> PathBuf {
    build_demo_with(dir, cmdline, stub, None)
}

/// [`build_demo_on`], optionally with the recipe's `sbat:` lines.
fn build_demo_with(
    dir: &Path,
    cmdline: Option<&str>,
    stub: Option<&Path>,
    sbat: Option<&str>,
) -> PathBuf {
    let recipe = demo_recipe(dir, cmdline, stub, sbat);
    build_recipe(&recipe, &dir.join("out"), None)
}

/// The demo recipe, or a copy of it in `dir` with another cmdline, stub or `sbat:` lines.
fn demo_recipe(
    dir: &Path,
    cmdline: Option<&str>,
    stub: Option<&Path>,
    sbat: Option<&str>,
) -> PathBuf {
    let recipes = common::repo_root().join("recipes");
    let recipe = recipes.join("demo.yaml");
    if cmdline.is_none() && stub.is_none() && sbat.is_none() {
        return recipe;
    }
    // The same recipe with paths made absolute (it moves to `dir`) and another cmdline.
    let text = std::fs::read_to_string(&recipe).unwrap();
    let mut y: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let abs = |v: &mut serde_yaml::Value| {
        let p = recipes.join(v.as_str().unwrap());
        *v = p.to_str().unwrap().into();
    };
    abs(&mut y["kernel"]);
    abs(&mut y["initrd"]["tree"]);
    if let Some(cmdline) = cmdline {
        y["cmdline"] = cmdline.into();
    }
    if let Some(stub) = stub {
        y["stub"] = stub.to_str().unwrap().into();
    }
    if let Some(sbat) = sbat {
        y["sbat"] = sbat.into();
    }
    let recipe = dir.join("demo.yaml");
    std::fs::write(&recipe, serde_yaml::to_string(&y).unwrap()).unwrap();
    recipe
}

/// `imgctl build RECIPE -o OUT [--log LOG --log-key KEY]`; returns OUT/demo.efi.
fn build_recipe(recipe: &Path, out: &Path, log: Option<(&Path, &Path)>) -> PathBuf {
    let mut cmd = common::imgctl();
    cmd.args(["build", "-o"])
        .arg(out)
        .arg(recipe)
        .env("SOURCE_DATE_EPOCH", "0");
    if let Some((log, key)) = log {
        cmd.arg("--log").arg(log).arg("--log-key").arg(key);
    }
    common::run_ok(&mut cmd);
    out.join("demo.efi")
}

/// `imgctl verify` of a boot's firmware log under `policy` with the references from `source`
/// (`--log DIR` or `--proof FILE`) signed by `vkey`: exit code and stdout + stderr.
fn verify_boot(
    boot: &Boot,
    policy: &Path,
    source: &[&std::ffi::OsStr],
    vkey: &str,
) -> (Option<i32>, String) {
    let o = common::imgctl()
        .args(["verify", "--eventlog"])
        .arg(boot.capture.join("eventlog.bin"))
        .arg("--policy")
        .arg(policy)
        .args(source)
        .args(["--vkey", vkey])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.code(), text)
}

/// `imgctl predict-pcrs UKI --phase :` in sha1 and sha256: PCR 11 right after the stub.
fn predicted_pcr11(uki: &Path) -> BTreeMap<String, String> {
    let out = common::run_ok(common::imgctl().arg("predict-pcrs").arg(uki).args([
        "--phase", ":", "--bank", "sha1", "--bank", "sha256", "--json",
    ]));
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    ["sha1", "sha256"]
        .iter()
        .map(|b| {
            let list = v[b].as_array().unwrap();
            assert_eq!(list.len(), 1, "one value for the empty path: {v}");
            assert_eq!(list[0]["pcr"], 11);
            assert!(list[0].get("phase").is_none(), "empty path: {v}");
            (b.to_string(), list[0]["hash"].as_str().unwrap().to_owned())
        })
        .collect()
}

/// One `imgctl vm` run with its own TMPDIR, so processes and files it leaves can be found.
struct Boot {
    out: Output,
    capture: PathBuf,
    tmpdir: PathBuf,
    elapsed: Duration,
    /// Processes whose command line names this run's TMPDIR, after imgctl returned.
    strays: Vec<String>,
}

impl Boot {
    fn run(dir: &Path, uki: &Path, timeout_s: u64) -> Boot {
        Boot::run_with(dir, uki, &[], timeout_s)
    }

    /// [`Boot::run`] with `extra` files beside the UKI (`vm --extra`).
    fn run_with(dir: &Path, uki: &Path, extra: &[PathBuf], timeout_s: u64) -> Boot {
        Boot::run_with_global(dir, uki, extra, &[], timeout_s)
    }

    /// [`Boot::run_with`] and `global` addons in `\\loader\\addons\\` (`vm --global-addon`).
    fn run_with_global(
        dir: &Path,
        uki: &Path,
        extra: &[PathBuf],
        global: &[PathBuf],
        timeout_s: u64,
    ) -> Boot {
        let mut args: Vec<std::ffi::OsString> = Vec::new();
        for e in extra {
            args.extend(["--extra".into(), e.into()]);
        }
        for g in global {
            args.extend(["--global-addon".into(), g.into()]);
        }
        Boot::run_args(dir, uki, &args, timeout_s)
    }

    /// `imgctl vm UKI --capture DIR/capture` with more arguments.
    fn run_args(dir: &Path, uki: &Path, more: &[std::ffi::OsString], timeout_s: u64) -> Boot {
        let tmpdir = dir.join("tmp");
        let capture = dir.join("capture");
        std::fs::create_dir_all(&tmpdir).unwrap();
        let start = Instant::now();
        let out = common::imgctl()
            .arg("vm")
            .arg(uki)
            .arg("--capture")
            .arg(&capture)
            .args(["--timeout", &timeout_s.to_string(), "--json", "--quiet"])
            .args(more)
            .env("TMPDIR", &tmpdir)
            .output()
            .unwrap();
        let elapsed = start.elapsed();
        let strays = processes_mentioning(&tmpdir);
        Boot {
            out,
            capture,
            tmpdir,
            elapsed,
            strays,
        }
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.out.stdout)
            .unwrap_or_else(|e| panic!("imgctl vm --json: {e}\nstderr:\n{}", self.stderr()))
    }

    fn assert_done(&self) {
        assert!(
            self.out.status.success(),
            "imgctl vm failed ({}):\n{}\nconsole:\n{}",
            self.out.status,
            self.stderr(),
            String::from_utf8_lossy(
                &std::fs::read(self.capture.join("console.log")).unwrap_or_default()
            )
        );
        assert_eq!(self.json()["result"], "done");
    }

    /// pcrs.json: bank → index → hex.
    fn pcrs(&self) -> BTreeMap<String, BTreeMap<u32, String>> {
        let text = std::fs::read(self.capture.join("pcrs.json")).unwrap();
        serde_json::from_slice(&text).unwrap()
    }

    fn assert_clean(&self) {
        assert!(self.strays.is_empty(), "stray processes: {:?}", self.strays);
        let left: Vec<_> = std::fs::read_dir(&self.tmpdir).unwrap().collect();
        assert!(left.is_empty(), "files left in TMPDIR: {left:?}");
    }
}

/// Command lines of running processes that mention `dir` (swtpm and QEMU get paths in it).
fn processes_mentioning(dir: &Path) -> Vec<String> {
    let needle = dir.to_str().unwrap();
    let me = std::process::id().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) || name == me {
            continue;
        }
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(needle) {
                found.push(format!("{name}: {cmdline}"));
            }
        }
    }
    found
}

struct DemoBoots {
    _dir: tempfile::TempDir,
    first_uki: PathBuf,
    second_uki: PathBuf,
    first: Boot,
    second: Boot,
    /// The demo on systemd-stub 257 (which also measures `.uname` and `.sbat`).
    on_257: Option<(PathBuf, Boot)>,
}

/// Builds two demo UKIs (the recipe's cmdline and another) and boots both, once per test run.
fn demo_boots() -> Option<&'static DemoBoots> {
    static BOOTS: OnceLock<Option<DemoBoots>> = OnceLock::new();
    BOOTS
        .get_or_init(|| {
            if !prerequisites() {
                return None;
            }
            let dir = tempfile::tempdir().unwrap();
            let (d1, d2) = (dir.path().join("first"), dir.path().join("second"));
            std::fs::create_dir_all(&d1).unwrap();
            std::fs::create_dir_all(&d2).unwrap();
            let d3 = dir.path().join("stub257");
            std::fs::create_dir_all(&d3).unwrap();
            let first_uki = build_demo(&d1, None);
            let second_uki = build_demo(&d2, Some(CMDLINE_SECOND));
            let uki_257 = stub_257().map(|stub| build_demo_on(&d3, None, Some(&stub)));
            let (first, second, on_257) = std::thread::scope(|s| {
                let a = s.spawn(|| Boot::run(&d1, &first_uki, BOOT_TIMEOUT_S));
                let b = s.spawn(|| Boot::run(&d2, &second_uki, BOOT_TIMEOUT_S));
                let c = s.spawn(|| {
                    uki_257.map(|uki| {
                        let boot = Boot::run(&d3, &uki, BOOT_TIMEOUT_S);
                        (uki, boot)
                    })
                });
                (a.join().unwrap(), b.join().unwrap(), c.join().unwrap())
            });
            let mut boots = vec![("first", &first), ("second", &second)];
            if let Some((_, b)) = &on_257 {
                boots.push(("systemd-stub 257", b));
            }
            for (name, b) in boots {
                eprintln!(
                    "boot of the {name} demo UKI: {:.1}s wall clock, {}s in the guest ({})",
                    b.elapsed.as_secs_f64(),
                    b.json()["seconds"],
                    b.json()["accel"]
                );
            }
            Some(DemoBoots {
                _dir: dir,
                first_uki,
                second_uki,
                first,
                second,
                on_257,
            })
        })
        .as_ref()
}

/// The 257 stub measures `.uname` and `.sbat` besides what 252 measures: the guest's PCR 11
/// equals imgctl's prediction (systemd-257 semantics, detected from the stub's `.sdmagic`), and differs from
/// what the 252 rules would give for the same UKI.
#[test]
fn pcr11_of_a_uki_on_the_257_stub_equals_predict_pcrs() {
    let Some(b) = demo_boots() else { return };
    let Some((uki, boot)) = &b.on_257 else { return };
    boot.assert_done();
    let guest = boot.pcrs();
    let predicted = predicted_pcr11(uki);
    let out = common::run_ok(common::imgctl().arg("predict-pcrs").arg(uki).args([
        "--phase",
        ":",
        "--bank",
        "sha256",
        "--json",
        "--stub-semantics",
        "systemd-252",
    ]));
    let as_252: serde_json::Value = serde_json::from_slice(&out).unwrap();
    for bank in ["sha1", "sha256"] {
        assert_eq!(
            guest[bank].get(&11),
            Some(&predicted[bank]),
            "PCR 11 {bank}: guest (257 stub) vs imgctl predict-pcrs"
        );
    }
    assert_ne!(
        Some(&as_252["sha256"][0]["hash"].as_str().unwrap().to_owned()),
        guest["sha256"].get(&11),
        "the 257 stub measures more than 252 does"
    );
}

/// DEFECT 23: a distribution's SBAT (a UKI line and three vendor lines) does not fit the 257
/// stub's `.sbat`, so the build gives it a section of its own at a new address. The 257 stub
/// finds it by name and measures it: the guest's PCR 11 equals imgctl's prediction, which
/// differs from the same UKI's with the default SBAT (so the relocated `.sbat` is measured).
#[test]
fn a_relocated_sbat_is_measured_by_the_257_stub_as_predicted() {
    if !prerequisites() {
        return;
    }
    let Some(stub) = stub_257() else { return };
    let dir = tempfile::tempdir().unwrap();
    let sbat = "uki,1,UKI,uki,1,https://uapi-group.org/specifications/specs/unified_kernel_image/\n\
                uki.debian,1,Debian GNU/Linux,uki,1,https://tracker.debian.org/pkg/systemd\n\
                uki.acme,1,ACME Corporation,acme-uki,2.4.1-3,https://security.acme.example/uki\n\
                uki.acme-fleet,1,ACME Fleet Images,acme-fleet-uki,2026.12.1,mailto:secalert@acme.example\n";
    let uki = build_demo_with(dir.path(), None, Some(&stub), Some(sbat));
    let data = std::fs::read(&uki).unwrap();
    let pe = goblin::pe::PE::parse(&data).unwrap();
    let section = pe
        .sections
        .iter()
        .find(|s| s.name().ok() == Some(".sbat"))
        .unwrap();
    assert!(section.virtual_size > 0x200, "{:#x}", section.virtual_size);
    let stub_bytes = std::fs::read(&stub).unwrap();
    let stub_pe = goblin::pe::PE::parse(&stub_bytes).unwrap();
    let stub_sbat = stub_pe
        .sections
        .iter()
        .find(|s| s.name().ok() == Some(".sbat"))
        .unwrap();
    assert!(
        section.virtual_address > stub_sbat.virtual_address,
        ".sbat should have its own section past the stub's"
    );
    let boot = Boot::run(dir.path(), &uki, BOOT_TIMEOUT_S);
    boot.assert_done();
    let guest = boot.pcrs();
    let predicted = predicted_pcr11(&uki);
    for bank in ["sha1", "sha256"] {
        assert_eq!(
            guest[bank].get(&11),
            Some(&predicted[bank]),
            "PCR 11 {bank}: guest (257 stub, relocated .sbat) vs imgctl predict-pcrs"
        );
    }
    let other = dir.path().join("default-sbat");
    std::fs::create_dir_all(&other).unwrap();
    let default_uki = build_demo_on(&other, None, Some(&stub));
    assert_ne!(
        predicted,
        predicted_pcr11(&default_uki),
        "the SBAT is measured"
    );
}

#[test]
fn pcr11_read_by_the_guest_equals_predict_pcrs_in_sha1_and_sha256() {
    let Some(b) = demo_boots() else { return };
    b.first.assert_done();
    let guest = b.first.pcrs();
    let predicted = predicted_pcr11(&b.first_uki);
    for bank in ["sha1", "sha256"] {
        assert_eq!(
            guest[bank].get(&11),
            Some(&predicted[bank]),
            "PCR 11 {bank}: guest vs imgctl predict-pcrs"
        );
    }
}

#[test]
fn a_different_cmdline_gives_a_different_pcr11_equal_to_its_own_prediction() {
    let Some(b) = demo_boots() else { return };
    b.second.assert_done();
    let guest = b.second.pcrs();
    let own = predicted_pcr11(&b.second_uki);
    let first = predicted_pcr11(&b.first_uki);
    for bank in ["sha1", "sha256"] {
        assert_eq!(guest[bank].get(&11), Some(&own[bank]), "{bank}");
        assert_ne!(guest[bank].get(&11), Some(&first[bank]), "{bank}");
    }
    // The firmware's own PCRs do not depend on the UKI's cmdline.
    assert_eq!(guest["sha256"][&0], b.first.pcrs()["sha256"][&0]);
}

/// `tpm2_eventlog`'s YAML: the `pcrs:` section (bank → index → hex) and every event's PCR,
/// type, digests and image length.
struct Tpm2Eventlog {
    pcrs: BTreeMap<String, BTreeMap<u32, String>>,
    events: Vec<Event>,
}

#[derive(Debug, Default)]
struct Event {
    pcr: u32,
    kind: String,
    digests: BTreeMap<String, String>,
    image_length: Option<u64>,
}

fn tpm2_eventlog(log: &Path) -> Tpm2Eventlog {
    let out = common::run_ok(std::process::Command::new("tpm2_eventlog").arg(log));
    let text = String::from_utf8(out).unwrap();
    let mut pcrs: BTreeMap<String, BTreeMap<u32, String>> = BTreeMap::new();
    let mut events: Vec<Event> = Vec::new();
    let mut in_pcrs = false;
    let mut bank = String::new();
    let mut alg = String::new();
    for line in text.lines() {
        let t = line.trim();
        if line == "pcrs:" {
            in_pcrs = true;
            continue;
        }
        if in_pcrs {
            if let Some(b) = t.strip_suffix(':') {
                bank = b.to_owned();
            } else if let Some((i, v)) = t.split_once(':') {
                let v = v.trim().trim_start_matches("0x").to_owned();
                pcrs.entry(bank.clone())
                    .or_default()
                    .insert(i.trim().parse().unwrap(), v);
            }
            continue;
        }
        if t.starts_with("- EventNum:") {
            events.push(Event::default());
        } else if let (Some(e), Some((k, v))) = (events.last_mut(), t.split_once(':')) {
            let v = v.trim().trim_matches('"');
            match k.trim_start_matches("- ") {
                "PCRIndex" => e.pcr = v.parse().unwrap(),
                "EventType" => e.kind = v.to_owned(),
                "AlgorithmId" => alg = v.to_owned(),
                "Digest" => {
                    e.digests.insert(alg.clone(), v.to_owned());
                }
                "ImageLengthInMemory" => e.image_length = v.parse().ok(),
                _ => {}
            }
        }
    }
    Tpm2Eventlog { pcrs, events }
}

#[test]
fn the_captured_event_log_replays_to_the_pcrs_the_guest_read() {
    let Some(b) = demo_boots() else { return };
    for boot in [&b.first, &b.second] {
        boot.assert_done();
        let guest = boot.pcrs();
        let replay = tpm2_eventlog(&boot.capture.join("eventlog.bin")).pcrs;
        for bank in ["sha1", "sha256"] {
            let replayed = &replay[bank];
            for i in [0, 1, 2, 3, 4, 5, 6, 7, 11] {
                assert!(replayed.contains_key(&i), "{bank} PCR {i} not in the log");
            }
            for (i, v) in replayed {
                assert_eq!(
                    Some(v),
                    guest[bank].get(i),
                    "{bank} PCR {i}: tpm2_eventlog replay vs the guest"
                );
            }
        }
    }
}

#[test]
fn pcr4_holds_the_authenticode_hash_of_the_booted_uki_and_its_kernel() {
    let Some(b) = demo_boots() else { return };
    b.first.assert_done();
    let log = tpm2_eventlog(&b.first.capture.join("eventlog.bin"));
    let apps: Vec<&Event> = log
        .events
        .iter()
        .filter(|e| e.pcr == 4 && e.kind == "EV_EFI_BOOT_SERVICES_APPLICATION")
        .collect();

    let uki = std::fs::read(&b.first_uki).unwrap();
    let kernel = std::fs::read(common::repo_root().join(".cache/demo/vmlinuz")).unwrap();
    for (what, image) in [("the UKI", &uki), ("the kernel the stub loads", &kernel)] {
        let pe = PeFile::parse(image).unwrap();
        let ours = authenticode_digests(&pe, &[HashAlg::SHA1, HashAlg::SHA256]).unwrap();
        let event = apps
            .iter()
            .find(|e| e.image_length == Some(image.len() as u64))
            .unwrap_or_else(|| panic!("no PCR 4 application event for {what}: {apps:?}"));
        assert_eq!(event.digests["sha1"], ours[0].to_hex(), "{what} sha1");
        assert_eq!(event.digests["sha256"], ours[1].to_hex(), "{what} sha256");
    }
}

#[test]
fn boots_leave_no_processes_or_files_behind() {
    let Some(b) = demo_boots() else { return };
    b.first.assert_clean();
    b.second.assert_clean();
}

#[test]
fn a_hanging_guest_is_stopped_at_the_timeout() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // No init anywhere and panic=0: the kernel panics and waits forever.
    let uki = build_demo(
        dir.path(),
        Some("console=ttyS0 rdinit=/does-not-exist root=/dev/nothing panic=0"),
    );
    let timeout = 8;
    let boot = Boot::run(dir.path(), &uki, timeout);
    assert_eq!(boot.out.status.code(), Some(4), "{}", boot.stderr());
    assert!(
        boot.stderr()
            .contains(&format!("did not finish within {timeout}s")),
        "{}",
        boot.stderr()
    );
    assert_eq!(boot.json()["result"], "timeout");
    let guest_s = boot.json()["seconds"].as_f64().unwrap();
    assert!(
        (timeout as f64..timeout as f64 + 5.0).contains(&guest_s),
        "stopped after {guest_s}s"
    );
    boot.assert_clean();
}

#[test]
fn missing_qemu_swtpm_or_ovmf_is_named_with_its_debian_package() {
    const STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";
    let Some(stub) = common::require_tool(STUB, "systemd-boot-efi") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // A UKI that passes the checks made before anything starts.
    let pe = dir.path().join("x.efi");
    let linux = imgctl_builder::uki::NewSection {
        name: ".linux".into(),
        data: b"a kernel".to_vec(),
    };
    std::fs::write(
        &pe,
        imgctl_builder::uki::assemble(&std::fs::read(stub).unwrap(), &[linux]).unwrap(),
    )
    .unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = common::imgctl()
        .arg("vm")
        .arg(&pe)
        .env("PATH", &empty)
        .env("IMGCTL_OVMF_DIR", &empty)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "qemu-system-x86_64 (Debian package qemu-system-x86)",
        "swtpm (Debian package swtpm)",
        "OVMF_CODE_4M.fd (Debian package ovmf)",
    ] {
        assert!(err.contains(want), "missing {want:?} in: {err}");
    }
    assert_eq!(err.lines().count(), 1, "one line: {err}");
}

#[test]
fn an_input_that_is_neither_a_uki_nor_a_recipe_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.bin");
    std::fs::write(&junk, b"\x7fELF not a UKI").unwrap();
    let out = common::imgctl().arg("vm").arg(&junk).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("junk.bin"), "{err}");
}

/// The capture in ../shared (made on this machine kind with an objcopy UKI on systemd-stub
/// 252): tpm2_eventlog's replay equals the PCRs that guest read, and when our demo kernel is
/// the one that booted there, its PCR 4 event holds our Authenticode hash of it.
#[test]
fn the_shared_ovmf_swtpm_capture_replays_and_measures_the_kernel_by_authenticode() {
    use sha2::Digest as _;
    if common::require_tool("tpm2_eventlog", "tpm2-tools").is_none() {
        return;
    }
    let Some(shared) = common::shared_dir() else {
        return;
    };
    let dir = shared.join("testdata/eventlogs/ovmf-swtpm");
    let log = tpm2_eventlog(&dir.join("ovmf-stub252-eventlog.bin"));
    let read = std::fs::read_to_string(dir.join("ovmf-stub252-pcrs.txt")).unwrap();
    let mut compared = 0;
    for line in read.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [_, bank, index, hex] = f[..] else {
            panic!("bad line {line:?}")
        };
        let index: u32 = index.parse().unwrap();
        if let Some(replayed) = log.pcrs.get(bank).and_then(|b| b.get(&index)) {
            assert_eq!(*replayed, hex.to_ascii_lowercase(), "{bank} PCR {index}");
            compared += 1;
        }
    }
    assert!(compared >= 20, "only {compared} PCRs compared");

    // The capture's own kernel, kept beside it in ../shared: Debian replaces its current kernel
    // package from time to time, so these exact bytes must never come from the archive.
    let kernel_path = dir.join("ovmf-stub252-vmlinuz");
    let kernel = std::fs::read(&kernel_path)
        .unwrap_or_else(|e| panic!("{}: {e} (shared test data)", kernel_path.display()));
    let inputs = std::fs::read_to_string(dir.join("ovmf-stub252-inputs.sha256")).unwrap();
    let want = inputs
        .lines()
        .find(|l| l.ends_with(" vmlinuz"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap();
    assert_eq!(
        hex::encode(sha2::Sha256::digest(&kernel)),
        want,
        "{} is not the kernel of the capture",
        kernel_path.display()
    );
    let pe = PeFile::parse(&kernel).unwrap();
    let ours = authenticode_digests(&pe, &[HashAlg::SHA1, HashAlg::SHA256]).unwrap();
    let event = log
        .events
        .iter()
        .find(|e| {
            e.pcr == 4
                && e.kind == "EV_EFI_BOOT_SERVICES_APPLICATION"
                && e.image_length == Some(kernel.len() as u64)
        })
        .expect("a PCR 4 application event for the kernel");
    assert_eq!(event.digests["sha1"], ours[0].to_hex());
    assert_eq!(event.digests["sha256"], ours[1].to_hex());
}

#[test]
fn secure_boot_firmware_refuses_the_unsigned_demo_uki() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let uki = build_demo(dir.path(), None);
    let tmpdir = dir.path().join("tmp");
    std::fs::create_dir_all(&tmpdir).unwrap();
    let out = common::imgctl()
        .arg("vm")
        .arg(&uki)
        .args(["--secure-boot", "--timeout", "120", "--quiet"])
        .env("TMPDIR", &tmpdir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("Secure Boot rejected its signature"), "{err}");
    assert!(processes_mentioning(&tmpdir).is_empty());
}

#[test]
fn sigint_and_sigterm_stop_the_guest_and_clean_up() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let uki = build_demo(dir.path(), None);
    for signal in ["-INT", "-TERM"] {
        let tmpdir = dir.path().join(format!("tmp{signal}"));
        std::fs::create_dir_all(&tmpdir).unwrap();
        let child = common::imgctl()
            .arg("vm")
            .arg(&uki)
            .args(["--accel", "tcg", "--quiet", "--timeout", "120"])
            .env("TMPDIR", &tmpdir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Wait until both swtpm and QEMU run.
        let start = Instant::now();
        while processes_mentioning(&tmpdir).len() < 2 {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "QEMU never started"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        common::run_ok(
            std::process::Command::new("kill")
                .arg(signal)
                .arg(child.id().to_string()),
        );
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        // 128 + the signal, as a shell reports a process the signal ended.
        let want = if signal == "-INT" { 130 } else { 143 };
        assert_eq!(out.status.code(), Some(want), "{signal}: {err}");
        assert!(err.contains("interrupted; stopped QEMU and swtpm"), "{err}");
        assert_eq!(processes_mentioning(&tmpdir), Vec::<String>::new());
        assert_eq!(std::fs::read_dir(&tmpdir).unwrap().count(), 0);
    }
}

/// The verifier on real boots: each capture is accepted against the manifest and predictions of
/// the UKI that booted (PCR 4 and PCR 11), and rejected against the other UKI's, naming the
/// first diverging stub event.
#[test]
fn boot_captures_verify_against_their_own_uki_and_not_another() {
    let Some(b) = demo_boots() else { return };
    b.first.assert_done();
    b.second.assert_done();
    let verify = |boot: &Boot, uki: &Path| -> Output {
        let out = uki.parent().unwrap();
        let policy = boot.capture.join(format!(
            "policy-{}.yaml",
            out.parent().unwrap().file_name().unwrap().to_str().unwrap()
        ));
        std::fs::write(
            &policy,
            format!(
                "pcrs: [4, 11]\nbanks: [sha1, sha256]\nmanifests: [{}]\npcrs_json: [{}]\n",
                out.join("manifest.json").display(),
                out.join("pcrs.json").display()
            ),
        )
        .unwrap();
        common::imgctl()
            .args(["verify", "--eventlog"])
            .arg(boot.capture.join("eventlog.bin"))
            .arg("--policy")
            .arg(&policy)
            .output()
            .unwrap()
    };
    for (boot, own, other) in [
        (&b.first, &b.first_uki, &b.second_uki),
        (&b.second, &b.second_uki, &b.first_uki),
    ] {
        let ok = verify(boot, own);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&ok.stdout),
            String::from_utf8_lossy(&ok.stderr)
        );
        assert!(ok.status.success(), "own UKI must be accepted:\n{text}");
        assert!(text.contains("Authenticode of the .linux kernel"), "{text}");
        let bad = verify(boot, other);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&bad.stdout),
            String::from_utf8_lossy(&bad.stderr)
        );
        assert_eq!(
            bad.status.code(),
            Some(1),
            "another UKI must be rejected:\n{text}"
        );
        assert!(text.contains("REJECT") && text.contains("PCR 11"), "{text}");
    }
}

/// Issue 13: the locked loop on a real boot. The demo, rebuilt with `build --log` (byte for
/// byte the UKI that booted), is the only reference: the boot is accepted against the log
/// alone (PCR 4 and PCR 11 resolved to the logged record) and against the `.tlog-proof` that
/// build wrote (offline); the other UKI's boot is rejected as "not published", naming its event;
/// after the second build is published too, that boot is accepted.
#[test]
fn the_demo_boot_verifies_against_the_log_alone() {
    let Some(b) = demo_boots() else { return };
    b.first.assert_done();
    b.second.assert_done();
    let tmp = tempfile::tempdir().unwrap();
    let (log, key, vkey) = common::new_log(tmp.path(), "log");
    let publish = |name: &str, cmdline: Option<&str>, booted: &Path| -> PathBuf {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let recipe = demo_recipe(&dir, cmdline, None, None);
        let out = dir.join("published");
        let uki = build_recipe(&recipe, &out, Some((&log, &key)));
        assert!(
            std::fs::read(&uki).unwrap() == std::fs::read(booted).unwrap(),
            "the build published to the log must be byte for byte the UKI that booted"
        );
        out.join("demo.efi.tlog-proof")
    };
    let policy = tmp.path().join("policy.yaml");
    std::fs::write(&policy, "pcrs: [4, 11]\nbanks: [sha1, sha256]\n").unwrap();
    let verify =
        |boot: &Boot, source: &[&std::ffi::OsStr]| verify_boot(boot, &policy, source, &vkey);
    let first_proof = publish("first", None, &b.first_uki);
    let by_log = ["--log".as_ref(), log.as_os_str()];
    let (code, text) = verify(&b.first, &by_log);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("Authenticode of the .linux kernel"), "{text}");
    let by_proof = ["--proof".as_ref(), first_proof.as_os_str()];
    let (code, text) = verify(&b.first, &by_proof);
    assert_eq!(code, Some(0), "offline, from the .tlog-proof: {text}");
    // The second UKI (another .cmdline) was not published: its boot is rejected at the event
    // that measured its command line.
    let (code, text) = verify(&b.second, &by_log);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("first divergence")
            && text.contains("not published in the log")
            && text.contains(".cmdline"),
        "{text}"
    );
    publish("second", Some(CMDLINE_SECOND), &b.second_uki);
    let (code, text) = verify(&b.second, &by_log);
    assert_eq!(code, Some(0), "published now: {text}");
}

/// The PCR value `ext predict-pcrs --json` gives for `pcr` in `bank` after the stub's last
/// sidecar extend into it, if any archive goes there.
fn sidecar_pcr(predicted: &serde_json::Value, pcr: u32, bank: &str) -> Option<String> {
    let row = predicted
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|r| r["pcr"] == pcr)?;
    let b = row["banks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["bank"] == bank)?;
    Some(b["pcr_value"].as_str().unwrap().to_owned())
}

/// PCR 13 on real boots (issues 12 and 13): the demo sysext image beside the UKI
/// (`vm --extra`, i.e. `\EFI\BOOT\BOOTX64.EFI.extra.d\demo-sysext.raw`), booted on
/// systemd-stub 252 and 257. The guest's PCR 13 equals `ext predict-pcrs` for that stub in
/// sha1 and sha256 and the firmware log replays to it; the boot verifies against a log holding
/// the UKI and the image (`ext build --log` records the stub's event for it), PCR 13 included;
/// against a log without the image it is rejected as "not published" at the PCR 13 event.
#[test]
fn a_sysext_beside_the_uki_is_measured_into_pcr13_as_predicted_and_checked_against_the_log() {
    if !prerequisites() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (log, key, vkey) = common::new_log(tmp.path(), "log");
    let (bare, bare_key, bare_vkey) = common::new_log(tmp.path(), "without-sysext");
    let ext_out = tmp.path().join("sysext");
    common::run_ok(
        common::imgctl()
            .args(["ext", "build"])
            .arg(common::repo_root().join("recipes/demo-sysext.yaml"))
            .arg("-o")
            .arg(&ext_out)
            .arg("--log")
            .arg(&log)
            .arg("--log-key")
            .arg(&key)
            .env("SOURCE_DATE_EPOCH", "0"),
    );
    let image = ext_out.join("demo-sysext.raw");
    let mut stubs: Vec<(&str, Option<PathBuf>)> = vec![("252", None)];
    if let Some(s) = stub_257() {
        stubs.push(("257", Some(s)));
    }
    let runs: Vec<(&str, PathBuf, PathBuf)> = stubs
        .iter()
        .map(|(v, stub)| {
            let dir = tmp.path().join(format!("stub{v}"));
            std::fs::create_dir_all(&dir).unwrap();
            let recipe = demo_recipe(&dir, None, stub.as_deref(), None);
            let uki = build_recipe(&recipe, &dir.join("out"), Some((&log, &key)));
            build_recipe(&recipe, &dir.join("bare"), Some((&bare, &bare_key)));
            (*v, dir, uki)
        })
        .collect();
    let boots: Vec<Boot> = std::thread::scope(|s| {
        let hs: Vec<_> = runs
            .iter()
            .map(|(_, dir, uki)| {
                let image = image.clone();
                s.spawn(move || Boot::run_with(dir, uki, &[image], BOOT_TIMEOUT_S))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let policy = tmp.path().join("policy.yaml");
    std::fs::write(&policy, "pcrs: [4, 11, 13]\nbanks: [sha1, sha256]\n").unwrap();
    for ((v, _, _), boot) in runs.iter().zip(&boots) {
        boot.assert_done();
        eprintln!(
            "boot on systemd-stub {v} with a sysext beside: {:.1}s",
            boot.elapsed.as_secs_f64()
        );
        let predicted: serde_json::Value = serde_json::from_slice(&common::run_ok(
            common::imgctl()
                .args(["ext", "predict-pcrs", "--json", "--stub-semantics", v])
                .arg(&image),
        ))
        .unwrap();
        let seen = boot.pcrs();
        let replay: serde_json::Value = serde_json::from_slice(&common::run_ok(
            common::imgctl()
                .args(["eventlog", "replay", "--json"])
                .arg(boot.capture.join("eventlog.bin")),
        ))
        .unwrap();
        for bank in ["sha1", "sha256"] {
            let want = sidecar_pcr(&predicted, 13, bank)
                .unwrap_or_else(|| panic!("no PCR 13 prediction: {predicted}"));
            assert_eq!(
                seen[bank][&13], want,
                "stub {v}: PCR 13 {bank} vs ext predict-pcrs"
            );
            assert_eq!(
                replay[bank]["13"], want,
                "stub {v}: the firmware log's PCR 13 {bank}"
            );
        }
        let verify = |log: &Path, vkey: &str| {
            verify_boot(boot, &policy, &["--log".as_ref(), log.as_os_str()], vkey)
        };
        let (code, text) = verify(&log, &vkey);
        assert_eq!(code, Some(0), "stub {v}: {text}");
        assert!(
            text.contains("PCR 13 sha256: 1 published stub event"),
            "{text}"
        );
        let (code, text) = verify(&bare, &bare_vkey);
        assert_eq!(code, Some(1), "stub {v}, the sysext unpublished: {text}");
        assert!(
            text.contains("not published in the log") && text.contains("PCR 13"),
            "{text}"
        );
    }
}

/// PCR 12 and 13 on real boots (issue 12): a credential (`demo.cred`) and a configuration
/// extension (`demo.confext.raw`, made by `imgctl ext build`) beside the UKI, booted on
/// systemd-stub 252 and 257. The 257 stub measures the "Credentials initrd" and then the
/// "Configuration extension initrd" into PCR 12 and leaves PCR 13 alone; the 252 stub knows no
/// confexts, so it packs `demo.confext.raw` as a system extension into PCR 13. In every case
/// the guest's PCR 12 and 13 equal `ext predict-pcrs` for that stub over the same files in
/// sha1 and sha256, and the captured firmware log replays to them and names the archives.
#[test]
fn credentials_and_a_confext_beside_the_uki_are_measured_as_predicted() {
    if !prerequisites() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let etc = tmp.path().join("conf-tree/etc/demo");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(etc.join("demo.conf"), b"greeting=hello\n").unwrap();
    let recipe = tmp.path().join("demo-confext.yaml");
    std::fs::write(
        &recipe,
        "kind: confext\nname: demo\nversion: \"1\"\ntree: conf-tree\nfilesystem: erofs\n\
         release: {ID: _any, CONFEXT_SCOPE: system}\n",
    )
    .unwrap();
    common::run_ok(
        common::imgctl()
            .args(["ext", "build"])
            .arg(&recipe)
            .arg("-o")
            .arg(tmp.path().join("confext"))
            .env("SOURCE_DATE_EPOCH", "0"),
    );
    let confext = tmp.path().join("confext/demo.confext.raw");
    assert!(confext.is_file(), "ext build made no demo.confext.raw");
    // A credential as systemd-creds would name it; the stub packs any *.cred as it is.
    let cred = tmp.path().join("demo.cred");
    std::fs::write(&cred, b"imgctl test credential\n").unwrap();
    let extra = [cred, confext];
    let (log, key, vkey) = common::new_log(tmp.path(), "log");

    let mut stubs: Vec<(&str, Option<PathBuf>)> = vec![("252", None)];
    if let Some(s) = stub_257() {
        stubs.push(("257", Some(s)));
    }
    let runs: Vec<(&str, PathBuf, PathBuf)> = stubs
        .iter()
        .map(|(v, stub)| {
            let dir = tmp.path().join(format!("stub{v}"));
            std::fs::create_dir_all(&dir).unwrap();
            let recipe = demo_recipe(&dir, None, stub.as_deref(), None);
            let uki = build_recipe(&recipe, &dir.join("out"), Some((&log, &key)));
            (*v, dir, uki)
        })
        .collect();
    let boots: Vec<Boot> = std::thread::scope(|s| {
        let hs: Vec<_> = runs
            .iter()
            .map(|(_, dir, uki)| {
                let extra = &extra;
                s.spawn(move || Boot::run_with(dir, uki, extra, BOOT_TIMEOUT_S))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for ((v, _, _), boot) in runs.iter().zip(&boots) {
        boot.assert_done();
        eprintln!(
            "boot on systemd-stub {v} with a credential and a confext beside: {:.1}s",
            boot.elapsed.as_secs_f64()
        );
        let predicted: serde_json::Value = serde_json::from_slice(&common::run_ok(
            common::imgctl()
                .args(["ext", "predict-pcrs", "--json", "--stub-semantics", v])
                .args(&extra),
        ))
        .unwrap();
        let rows = predicted.as_array().unwrap();
        let descriptions: Vec<&str> = rows
            .iter()
            .map(|r| r["description"].as_str().unwrap())
            .collect();
        let expected: &[&str] = if *v == "252" {
            &["Credentials initrd", "System extension initrd"]
        } else {
            &["Credentials initrd", "Configuration extension initrd"]
        };
        assert_eq!(descriptions, expected, "stub {v}: {predicted}");
        // The value of a PCR after the stub; zeros when nothing beside the UKI goes into it.
        let want = |pcr: u32, bank: &str| -> String {
            sidecar_pcr(&predicted, pcr, bank)
                .unwrap_or_else(|| "00".repeat(if bank == "sha1" { 20 } else { 32 }))
        };
        let seen = boot.pcrs();
        let replay: serde_json::Value = serde_json::from_slice(&common::run_ok(
            common::imgctl()
                .args(["eventlog", "replay", "--json"])
                .arg(boot.capture.join("eventlog.bin")),
        ))
        .unwrap();
        for bank in ["sha1", "sha256"] {
            for pcr in [12u32, 13] {
                assert_eq!(
                    seen[bank][&pcr],
                    want(pcr, bank),
                    "stub {v}: PCR {pcr} {bank} vs ext predict-pcrs"
                );
                let replayed = replay[bank][pcr.to_string()]
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| want(pcr, bank));
                assert_eq!(
                    replayed, seen[bank][&pcr],
                    "stub {v}: the firmware log's PCR {pcr} {bank}"
                );
            }
        }
        let shown = String::from_utf8(common::run_ok(
            common::imgctl()
                .args(["eventlog", "show"])
                .arg(boot.capture.join("eventlog.bin")),
        ))
        .unwrap();
        for d in expected {
            assert!(
                shown.contains(d),
                "stub {v}: no {d:?} event in the log:\n{shown}"
            );
        }
        // The UKI is published, the credential is not: the verifier names the credential
        // archive's event as the first divergence (not a digest/payload lint finding).
        let policy = boot.capture.join("policy.yaml");
        std::fs::write(&policy, "pcrs: [4, 11]\nbanks: [sha1, sha256]\n").unwrap();
        let (code, text) = verify_boot(boot, &policy, &["--log".as_ref(), log.as_os_str()], &vkey);
        assert_eq!(code, Some(1), "stub {v}: {text}");
        let first = text
            .lines()
            .skip_while(|l| !l.contains("first divergence"))
            .take(5)
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            first.contains("PCR 12") && first.contains("Credentials initrd"),
            "stub {v}: {text}"
        );
        assert!(!text.contains("digest-mismatch"), "stub {v}: {text}");
    }
}

/// `imgctl build` of an addon recipe (`kind: addon`) on the 257 addon stub into `dir/NAME`,
/// optionally published to a log; returns NAME.addon.efi.
fn build_addon(
    dir: &Path,
    name: &str,
    cmdline: &str,
    addon_stub: &Path,
    log: Option<(&Path, &Path)>,
) -> PathBuf {
    let mut content = serde_yaml::Mapping::new();
    content.insert("cmdline".into(), cmdline.into());
    build_addon_with(dir, name, content, addon_stub, log)
}

/// [`build_addon`] with the recipe's content keys (`cmdline`, `initrd`, `ucode`, `dtb`; paths
/// relative to `dir`).
fn build_addon_with(
    dir: &Path,
    name: &str,
    mut y: serde_yaml::Mapping,
    addon_stub: &Path,
    log: Option<(&Path, &Path)>,
) -> PathBuf {
    let recipe = dir.join(format!("{name}.yaml"));
    for (k, v) in [
        ("kind", "addon"),
        ("name", name),
        ("version", "1"),
        ("stub", addon_stub.to_str().unwrap()),
    ] {
        y.insert(k.into(), v.into());
    }
    std::fs::write(&recipe, serde_yaml::to_string(&y).unwrap()).unwrap();
    let out = dir.join(name);
    let mut cmd = common::imgctl();
    cmd.args(["build", "-o"]).arg(&out).arg(&recipe);
    if let Some((log, key)) = log {
        cmd.arg("--log").arg(log).arg("--log-key").arg(key);
    }
    common::run_ok(&mut cmd);
    out.join(format!("{name}.addon.efi"))
}

/// The demo initrd's `/init` with one more report line after IMGCTL-CMDLINE: `IMGCTL-ADDON
/// <marker file> <microcode file>` (what an initrd addon that replaces `/init` prints).
fn addon_init() -> String {
    let init =
        std::fs::read_to_string(common::repo_root().join("recipes/demo/initrd/init")).unwrap();
    let line = "echo \"IMGCTL-CMDLINE $(cat /proc/cmdline)\"\n";
    assert!(init.contains(line), "the demo /init changed: {init}");
    init.replacen(
        line,
        &format!("{line}echo \"IMGCTL-ADDON $(cat /etc/imgctl-addon) $(cat /kernel/x86/microcode/imgctl-ucode 2>/dev/null)\"\n"),
        1,
    )
}

/// PE addons on the systemd-stub 257 (issue 12): addons built by `imgctl build` (`kind:
/// addon`, byte-identical to ukify 257's, tests/systemd257.rs). Two boots of the demo UKI on
/// the 257 stub, in parallel:
/// - one addon beside the UKI, published with `build --log` like the UKI: the guest's PCR 12
///   (sha1, sha256) equals `ext predict-pcrs` and the firmware log's replay, and `verify --log`
///   over PCRs 4, 11 and 12 accepts: the addon's LoadImage (PCR 4) and its command-line event
///   (PCR 12) resolve to its record;
/// - two global addons (`\loader\addons\`: a command line, and an initrd whose `/init`
///   replaces the demo's and reports a marker file), three beside the UKI (a command line, a
///   microcode cpio, a devicetree) and a credential: the 257 stub measures one event of the
///   joined command lines (global first), the devicetree addon's `EV_EVENT_TAG` (0x6c46f751:
///   it installs it although OVMF has no devicetree), the "Credentials initrd", then the
///   microcode addon's and the initrd addon's (0xdac08e1a, 0x49dffe0f); each tagged event
///   hashes the section's bytes and names the file; PCR 12 equals `ext predict-pcrs`, the
///   firmware log's replay and tpm2_eventlog's,
///   the kernel's /proc/cmdline ends with the joined text, and the guest ran the addon's
///   `/init`, which saw the initrd addon's and the microcode addon's files.
#[test]
fn addons_are_measured_into_pcr12_as_predicted_and_verified_against_the_log() {
    if !prerequisites() {
        return;
    }
    let Some(stub) = stub_257() else { return };
    let addon_stub = stub.with_file_name("addonx64.efi.stub");
    let tmp = tempfile::tempdir().unwrap();
    let (log, key, vkey) = common::new_log(tmp.path(), "log");
    let one = tmp.path().join("one");
    let many = tmp.path().join("many");
    std::fs::create_dir_all(&one).unwrap();
    std::fs::create_dir_all(&many).unwrap();
    let recipe = demo_recipe(&one, None, Some(&stub), None);
    let uki = build_recipe(&recipe, &one.join("out"), Some((&log, &key)));
    let local = build_addon(
        tmp.path(),
        "local",
        " imgctl.addon=local\tquiet \n",
        &addon_stub,
        Some((&log, &key)),
    );
    let global = build_addon(
        tmp.path(),
        "global",
        "imgctl.addon=global",
        &addon_stub,
        None,
    );
    let cred = tmp.path().join("demo.cred");
    std::fs::write(&cred, b"imgctl test credential\n").unwrap();
    // An initrd addon whose /init (the demo's, one report line more) replaces the UKI's, with
    // a marker file; a microcode addon (a cpio the kernel unpacks first); a devicetree addon.
    std::fs::write(tmp.path().join("init"), addon_init()).unwrap();
    std::fs::write(tmp.path().join("marker"), "initrd-addon-257\n").unwrap();
    let initrd_addon = build_addon_with(
        tmp.path(),
        "initrd",
        serde_yaml::from_str(
            "initrd: {files: [{src: init, dst: /init, mode: \"0755\"}, {src: marker, dst: /etc/imgctl-addon}]}",
        )
        .unwrap(),
        &addon_stub,
        None,
    );
    let ucode = imgctl_builder::initrd::encode_newc(
        &[imgctl_builder::initrd::CpioEntry {
            path: "kernel/x86/microcode/imgctl-ucode".into(),
            mode: 0o644,
            kind: imgctl_builder::initrd::EntryKind::File(imgctl_builder::initrd::FileData::Bytes(
                b"ucode-addon-257".to_vec(),
            )),
        }],
        0,
    )
    .unwrap();
    std::fs::write(tmp.path().join("ucode.cpio"), ucode).unwrap();
    let ucode_addon = build_addon_with(
        tmp.path(),
        "ucode",
        serde_yaml::from_str("ucode: ucode.cpio").unwrap(),
        &addon_stub,
        None,
    );
    let dtc = common::require_tool("dtc", "device-tree-compiler");
    let dt_addon = dtc.map(|dtc| {
        std::fs::write(
            tmp.path().join("board.dts"),
            "/dts-v1/;\n/ {\n\tcompatible = \"imgctl,addon-board\";\n};\n",
        )
        .unwrap();
        common::run_ok(
            std::process::Command::new(dtc)
                .current_dir(tmp.path())
                .args(["-I", "dts", "-O", "dtb", "-o", "board.dtb", "board.dts"]),
        );
        build_addon_with(
            tmp.path(),
            "dt",
            serde_yaml::from_str("dtb: board.dtb").unwrap(),
            &addon_stub,
            None,
        )
    });
    let mut many_extra = vec![local.clone(), cred.clone(), ucode_addon.clone()];
    many_extra.extend(dt_addon.clone());
    let many_global = [global.clone(), initrd_addon.clone()];
    let (boot_one, boot_many) = std::thread::scope(|s| {
        let a =
            s.spawn(|| Boot::run_with(&one, &uki, std::slice::from_ref(&local), BOOT_TIMEOUT_S));
        let b = s.spawn(|| {
            Boot::run_with_global(&many, &uki, &many_extra, &many_global, BOOT_TIMEOUT_S)
        });
        (a.join().unwrap(), b.join().unwrap())
    });
    let predict = |files: &[PathBuf], global: &[PathBuf]| -> serde_json::Value {
        let mut cmd = common::imgctl();
        cmd.args([
            "ext",
            "predict-pcrs",
            "--json",
            "--stub-semantics",
            "257",
            "--uki",
        ])
        .arg(&uki)
        .args(files);
        for g in global {
            cmd.arg("--global-addon").arg(g);
        }
        serde_json::from_slice(&common::run_ok(&mut cmd)).unwrap()
    };
    let cases = [
        (
            "one addon",
            &boot_one,
            predict(std::slice::from_ref(&local), &[]),
            vec!["imgctl.addon=local quiet"],
        ),
        (
            "global + local addons (command lines, initrd, microcode, devicetree) + credential",
            &boot_many,
            predict(&many_extra, &many_global),
            [
                "imgctl.addon=global imgctl.addon=local quiet",
                "devicetree addon dt.addon.efi",
                "Credentials initrd",
                "microcode addon ucode.addon.efi",
                "initrd addon initrd.addon.efi",
            ]
            .into_iter()
            .filter(|d| dt_addon.is_some() || !d.starts_with("devicetree"))
            .collect(),
        ),
    ];
    for (what, boot, predicted, descriptions) in &cases {
        boot.assert_done();
        eprintln!(
            "boot on systemd-stub 257 with {what}: {:.1}s",
            boot.elapsed.as_secs_f64()
        );
        let rows: Vec<&str> = predicted
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["description"].as_str().unwrap())
            .collect();
        assert_eq!(&rows, descriptions, "{what}: {predicted}");
        let seen = boot.pcrs();
        let replay: serde_json::Value = serde_json::from_slice(&common::run_ok(
            common::imgctl()
                .args(["eventlog", "replay", "--json"])
                .arg(boot.capture.join("eventlog.bin")),
        ))
        .unwrap();
        for bank in ["sha1", "sha256"] {
            let want = sidecar_pcr(predicted, 12, bank).unwrap();
            assert_eq!(
                seen[bank][&12], want,
                "{what}: guest PCR 12 {bank} vs ext predict-pcrs"
            );
            assert_eq!(
                replay[bank]["12"].as_str().unwrap(),
                want,
                "{what}: the firmware log's PCR 12 {bank}"
            );
            assert_eq!(
                tpm2_eventlog(&boot.capture.join("eventlog.bin")).pcrs[bank].get(&12),
                Some(&want),
                "{what}: tpm2_eventlog's replay of PCR 12 {bank}"
            );
        }
        let console =
            String::from_utf8_lossy(&std::fs::read(boot.capture.join("console.log")).unwrap())
                .into_owned();
        let cmdline = console
            .lines()
            .find_map(|l| l.trim_end().strip_prefix("IMGCTL-CMDLINE "))
            .unwrap_or_else(|| panic!("{what}: no IMGCTL-CMDLINE line:\n{console}"));
        assert!(
            cmdline.ends_with(descriptions[0]),
            "{what}: /proc/cmdline {cmdline:?} does not end with the addons' {:?}",
            descriptions[0]
        );
        let shown = String::from_utf8(common::run_ok(
            common::imgctl()
                .args(["eventlog", "show"])
                .arg(boot.capture.join("eventlog.bin")),
        ))
        .unwrap();
        let tags: Vec<&str> = ["0x6c46f751", "0xdac08e1a", "0x49dffe0f"]
            .into_iter()
            .filter(|t| shown.contains(t))
            .collect();
        if descriptions.len() > 2 {
            // The addon's /init ran and saw both addons' files.
            assert!(
                console
                    .lines()
                    .any(|l| l.trim_end() == "IMGCTL-ADDON initrd-addon-257 ucode-addon-257"),
                "{what}: the initrd addon's /init did not report its files:\n{console}"
            );
            let mut want = vec!["0x6c46f751", "0xdac08e1a", "0x49dffe0f"];
            if dt_addon.is_none() {
                want.remove(0);
            }
            assert_eq!(tags, want, "{what}: addon tags in the log:\n{shown}");
        } else {
            assert!(tags.is_empty(), "{what}: {shown}");
        }
    }
    // The published UKI and addon explain every event of PCRs 4, 11 and 12 of the first boot.
    let policy = boot_one.capture.join("policy.yaml");
    std::fs::write(&policy, "pcrs: [4, 11, 12]\nbanks: [sha1, sha256]\n").unwrap();
    let (code, text) = verify_boot(
        &boot_one,
        &policy,
        &["--log".as_ref(), log.as_os_str()],
        &vkey,
    );
    assert_eq!(code, Some(0), "verify --log of the one-addon boot:\n{text}");
}

/// Multi-profile UKIs on systemd 257 (issue 12): the demo recipe with `profile:` and a second
/// profile (its own `.cmdline`), built by imgctl on the 257 stub, booted through systemd-boot
/// 257 from the Debian 13 chroot with `default demo.efi@second` in loader.conf (the entry of
/// profile 1, named by its `ID=`). The guest booted profile 1 (/proc/cmdline is its command
/// line), and its PCR 11 and PCR 12 in sha1 and sha256 equal `predict-pcrs --profile 1
/// --via-systemd-boot` (PCR 12: systemd-boot's `@1` load options, then the stub's profile tag
/// 0x13aed6db) and the firmware log's replay; the log names the profile tag event. Profile 0's
/// PCR 11 differs.
#[test]
fn profile_1_booted_through_systemd_boot_257_measures_as_predicted() {
    if !prerequisites() {
        return;
    }
    let Some(stub) = stub_257() else { return };
    let sdboot = stub.with_file_name("systemd-bootx64.efi");
    let tmp = tempfile::tempdir().unwrap();
    let recipe = demo_recipe(tmp.path(), None, Some(&stub), None);
    let text = std::fs::read_to_string(&recipe).unwrap();
    let mut y: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let second = "console=ttyS0 panic=-1 no_timer_check imgctl.profile=second";
    y["profile"] = "ID=main\nTITLE=Main".into();
    y["profiles"] = serde_yaml::from_str(&format!(
        "[{{profile: \"ID=second\\nTITLE=Second\", cmdline: \"{second}\"}}]"
    ))
    .unwrap();
    std::fs::write(&recipe, serde_yaml::to_string(&y).unwrap()).unwrap();
    let uki = build_recipe(&recipe, &tmp.path().join("out"), None);
    let conf = tmp.path().join("loader.conf");
    std::fs::write(&conf, "default demo.efi@second\ntimeout 0\n").unwrap();
    let boot = Boot::run_args(
        tmp.path(),
        &uki,
        &[
            "--systemd-boot".into(),
            sdboot.into(),
            "--loader-conf".into(),
            conf.into(),
        ],
        BOOT_TIMEOUT_S,
    );
    boot.assert_done();
    eprintln!(
        "boot of profile 1 through systemd-boot 257: {:.1}s",
        boot.elapsed.as_secs_f64()
    );
    let console =
        String::from_utf8_lossy(&std::fs::read(boot.capture.join("console.log")).unwrap())
            .into_owned();
    assert!(
        console
            .lines()
            .any(|l| l.trim_end() == format!("IMGCTL-CMDLINE {second}")),
        "profile 1's command line did not reach the kernel:\n{console}"
    );
    let predict = |profile: &str| -> serde_json::Value {
        serde_json::from_slice(&common::run_ok(
            common::imgctl()
                .args(["predict-pcrs", "--json", "--phase", ":", "--bank", "sha1"])
                .args([
                    "--bank",
                    "sha256",
                    "--profile",
                    profile,
                    "--via-systemd-boot",
                ])
                .arg(&uki),
        ))
        .unwrap()
    };
    let value = |v: &serde_json::Value, bank: &str, pcr: u32| -> String {
        v[bank]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["pcr"] == pcr)
            .map(|e| e["hash"].as_str().unwrap().to_owned())
            .unwrap_or_else(|| "00".repeat(if bank == "sha1" { 20 } else { 32 }))
    };
    let p1 = predict("1");
    let p0 = predict("0");
    let seen = boot.pcrs();
    let replay: serde_json::Value = serde_json::from_slice(&common::run_ok(
        common::imgctl()
            .args(["eventlog", "replay", "--json"])
            .arg(boot.capture.join("eventlog.bin")),
    ))
    .unwrap();
    for bank in ["sha1", "sha256"] {
        for pcr in [11u32, 12] {
            assert_eq!(
                seen[bank][&pcr],
                value(&p1, bank, pcr),
                "PCR {pcr} {bank}: guest vs predict-pcrs --profile 1 --via-systemd-boot"
            );
        }
        assert_eq!(
            replay[bank]["12"].as_str().unwrap(),
            seen[bank][&12],
            "the firmware log's PCR 12 {bank}"
        );
        assert_ne!(value(&p0, bank, 11), seen[bank][&11], "profile 0's PCR 11");
    }
    let shown = String::from_utf8(common::run_ok(
        common::imgctl()
            .args(["eventlog", "show"])
            .arg(boot.capture.join("eventlog.bin")),
    ))
    .unwrap();
    assert!(
        shown.contains("0x13aed6db"),
        "no profile tag event:\n{shown}"
    );
}

/// The ukify 257 bug with single-profile UKIs (issue 12, reference/systemd-257-and-later.md):
/// `ukify build --profile ID=only` without `--join-profile` adds no `.sbat` of its own and
/// leaves `.sbat` out of its `--measure` values, but the stub's `.sbat` stays in the image and
/// the 257 stub measures it. Booted on the 257 stub: the guest's PCR 11 (sha256) extended by
/// `enter-initrd` equals imgctl's prediction for that phase and not ukify's.
#[test]
fn ukify_257_leaves_the_stubs_sbat_out_of_a_single_profile_measurement_the_guest_follows_imgctl() {
    if !prerequisites() {
        return;
    }
    let Some(stub) = stub_257() else { return };
    let root = common::repo_root().join(".cache/trixie-257");
    let tmp = tempfile::tempdir_in(root.join("tmp")).unwrap();
    let inside = std::path::Path::new("/tmp").join(tmp.path().file_name().unwrap());
    // The demo's kernel and initrd (built by imgctl on the 257 stub) into ukify.
    let recipe = demo_recipe(tmp.path(), None, Some(&stub), None);
    build_recipe(&recipe, &tmp.path().join("out"), None);
    std::fs::copy(
        common::repo_root().join(".cache/demo/vmlinuz"),
        tmp.path().join("vmlinuz"),
    )
    .unwrap();
    let at = |f: &str| inside.join(f).display().to_string();
    let measured = common::run_ok(std::process::Command::new("chroot").arg(&root).args([
        "ukify",
        "build",
        &format!("--linux={}", at("vmlinuz")),
        &format!("--initrd={}", at("out/demo.initrd")),
        "--cmdline=console=ttyS0 panic=-1 no_timer_check",
        "--profile=ID=only",
        "--measure",
        &format!("--output={}", at("single.efi")),
    ]));
    let measured = String::from_utf8(measured).unwrap();
    // ukify prints systemd-measure's values on stdout (the phase headers on stderr), the
    // first phase path, enter-initrd, first.
    let ukify_value = measured
        .lines()
        .find_map(|l| l.strip_prefix("11:sha256="))
        .unwrap_or_else(|| panic!("no enter-initrd sha256 in ukify --measure:\n{measured}"))
        .to_owned();
    let uki = tmp.path().join("single.efi");
    let ours: serde_json::Value = serde_json::from_slice(&common::run_ok(
        common::imgctl()
            .args([
                "predict-pcrs",
                "--json",
                "--bank",
                "sha256",
                "--phase",
                "enter-initrd",
            ])
            .arg(&uki),
    ))
    .unwrap();
    let ours = ours["sha256"][0]["hash"].as_str().unwrap().to_owned();
    assert_ne!(
        ours, ukify_value,
        "ukify 257 measured the stub's .sbat after all"
    );
    let boot = Boot::run(tmp.path(), &uki, BOOT_TIMEOUT_S);
    boot.assert_done();
    eprintln!(
        "boot of ukify 257's single-profile UKI: {:.1}s",
        boot.elapsed.as_secs_f64()
    );
    let guest = hex::decode(&boot.pcrs()["sha256"][&11]).unwrap();
    let word = <sha2::Sha256 as sha2::Digest>::digest(b"enter-initrd");
    let mut h = <sha2::Sha256 as sha2::Digest>::new();
    sha2::Digest::update(&mut h, &guest);
    sha2::Digest::update(&mut h, word);
    let guest_enter_initrd = hex::encode(sha2::Digest::finalize(h));
    assert_eq!(guest_enter_initrd, ours, "the guest follows imgctl");
}

/// `vm --credential NAME=FILE` (and `--type-after PROMPT=LINE`) refuses, before anything
/// starts and in one line naming the argument: no `=`, a name QEMU's `-smbios` or systemd would misread (a comma, an `=`-free
/// empty name, `..`), a missing file, a file over 16 KiB, the same name twice.
#[test]
fn vm_refuses_bad_credentials_before_starting_anything() {
    let dir = tempfile::tempdir().unwrap();
    let ok = dir.path().join("key");
    std::fs::write(&ok, "secret").unwrap();
    let big = dir.path().join("big");
    std::fs::write(&big, vec![b'a'; (16 << 10) + 1]).unwrap();
    let ok_arg = format!("cryptsetup.passphrase={}", ok.display());
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["cryptsetup.passphrase".into()], "expected NAME=FILE"),
        (
            vec![format!("a,b={}", ok.display())],
            "is not a credential name",
        ),
        (
            vec![format!("={}", ok.display())],
            "is not a credential name",
        ),
        (
            vec![format!("..={}", ok.display())],
            "is not a credential name",
        ),
        (
            vec![format!("x={}", dir.path().join("missing").display())],
            "missing",
        ),
        (vec![format!("x={}", big.display())], "x="),
        (vec![ok_arg.clone(), ok_arg.clone()], "given twice"),
    ];
    for (args, want) in cases {
        let mut c = common::imgctl();
        c.arg("vm").arg(dir.path().join("no-such.efi"));
        for a in &args {
            c.arg("--credential").arg(a);
        }
        let out = c.output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("--credential") && err.contains(want),
            "{args:?}: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
    // --type-after: PROMPT=LINE, printable ASCII, a prompt not empty.
    for bad in ["no-equals", "=root", "login: =ro\tot"] {
        let out = common::imgctl()
            .arg("vm")
            .arg(dir.path().join("no-such.efi"))
            .args(["--type-after", bad])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{bad:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--type-after"), "{bad:?}: {err}");
    }
}

/// `dtc` of a one-node devicetree whose root `compatible` is `compatible`, into `dir/NAME.dtb`.
fn dtb_blob(dir: &Path, name: &str, compatible: &str) -> Option<Vec<u8>> {
    let dtc = common::require_tool("dtc", "device-tree-compiler")?;
    let src = dir.join(format!("{name}.dts"));
    std::fs::write(
        &src,
        format!("/dts-v1/;\n/ {{\n\tmodel = \"{name}\";\n\tcompatible = \"{compatible}\", \"imgctl,soc\";\n\tcpus {{ }};\n}};\n"),
    )
    .unwrap();
    let out = dir.join(format!("{name}.dtb"));
    common::run_ok(
        std::process::Command::new(dtc)
            .args(["-I", "dts", "-O", "dtb", "-o"])
            .arg(&out)
            .arg(&src),
    );
    Some(std::fs::read(out).unwrap())
}

/// The block `IMGCTL-DMI-BEGIN <name>` … `IMGCTL-DMI-END` of a console, base64-decoded.
fn console_block(console: &str, name: &str) -> Vec<u8> {
    use base64::Engine as _;
    let begin = format!("IMGCTL-DMI-BEGIN {name}");
    let body: String = console
        .lines()
        .map(str::trim_end)
        .skip_while(|l| *l != begin)
        .skip(1)
        .take_while(|l| *l != "IMGCTL-DMI-END")
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap_or_else(|e| panic!("{name} on the console: {e}"))
}

/// `.hwids` selecting a `.dtbauto` by the machine's SMBIOS on the 257 stub (issue 12). A demo
/// UKI on the 257 stub with two `.dtbauto` (imgctl,board-a and imgctl,board-b, made by dtc) and
/// `.hwids` naming board A by the machine's CHID type 11 (Manufacturer + Family) and board B by
/// its type 5 (Manufacturer + Family + ProductName); QEMU gives the guest those SMBIOS strings
/// (`vm --smbios`). The stub matches type 5 before 11, so it selects board B though board A
/// comes first: the guest's PCR 11 (sha1, sha256) equals `predict-pcrs --hwids smbios.json` and
/// tpm2_eventlog's replay, differs from the none and board-a cases, and the log holds the
/// `.dtbauto` events of board B's blob. The guest's own SMBIOS table (QEMU + OVMF's, dumped from
/// /sys/firmware/dmi/tables) predicts the same, and fwupd's CHIDs for it (`fwupdtool hwids`,
/// Debian 13) equal `imgctl chid`'s.
#[test]
fn a_dtbauto_selected_through_hwids_by_the_machines_smbios_is_measured_as_predicted() {
    if !prerequisites() {
        return;
    }
    let Some(stub) = stub_257() else { return };
    let fwupd = common::fwupd_chroot();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (Some(a), Some(b)) = (
        dtb_blob(d, "a", "imgctl,board-a"),
        dtb_blob(d, "b", "imgctl,board-b"),
    ) else {
        return;
    };
    // The demo initrd, its /init also printing the SMBIOS table the guest's kernel found.
    let recipes = common::repo_root().join("recipes");
    let tree = d.join("initrd");
    common::run_ok(
        std::process::Command::new("cp")
            .arg("-a")
            .arg(recipes.join("demo/initrd"))
            .arg(&tree),
    );
    let init = std::fs::read_to_string(tree.join("init")).unwrap();
    let dump = "for f in smbios_entry_point DMI; do\n    echo \"IMGCTL-DMI-BEGIN $f\"\n    \
                base64 \"/sys/firmware/dmi/tables/$f\"\n    echo \"IMGCTL-DMI-END\"\ndone\n\
                echo \"IMGCTL-DEMO: done\"\n";
    let init = init.replacen("echo \"IMGCTL-DEMO: done\"\n", dump, 1);
    assert!(init.contains("IMGCTL-DMI-BEGIN"), "the demo init changed");
    std::fs::write(tree.join("init"), init).unwrap();
    // The machine, as SMBIOS JSON and as QEMU options.
    let smbios = d.join("smbios.json");
    std::fs::write(
        &smbios,
        r#"{"Manufacturer": "imgctl Test Systems", "Family": "Test Family",
            "ProductName": "Board B Laptop", "ProductSku": "SKU-B",
            "BaseboardManufacturer": "imgctl Boards", "BaseboardProduct": "BB-1"}"#,
    )
    .unwrap();
    let qemu_smbios = [
        "type=1,manufacturer=imgctl Test Systems,product=Board B Laptop,family=Test Family,sku=SKU-B",
        "type=2,manufacturer=imgctl Boards,product=BB-1",
    ];
    let chids: serde_json::Value = serde_json::from_slice(&common::run_ok(
        common::imgctl().arg("chid").arg(&smbios).arg("--json"),
    ))
    .unwrap();
    let chid = |t: u64| {
        chids["chids"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == t)
            .unwrap()["chid"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let hw = d.join("hwids");
    std::fs::create_dir_all(&hw).unwrap();
    for (file, name, compatible, id) in [
        ("a.json", "Board A", "imgctl,board-a", chid(11)),
        ("b.json", "Board B", "imgctl,board-b", chid(5)),
    ] {
        std::fs::write(
            hw.join(file),
            format!(r#"{{"type": "devicetree", "name": "{name}", "compatible": "{compatible}", "hwids": ["{id}"]}}"#),
        )
        .unwrap();
    }
    let recipe = d.join("demo.yaml");
    std::fs::write(
        &recipe,
        format!(
            "name: demo\nversion: \"1\"\nos-release:\n  ID: imgctl-demo\n  VERSION_ID: \"1\"\n\
             kernel: {}\ninitrd:\n  tree: {}\n  files:\n    - {{ src: /bin/busybox, dst: /bin/busybox, mode: \"0755\" }}\n\
             cmdline: console=ttyS0 panic=-1 no_timer_check\nstub: {}\n\
             dtbauto: [{}, {}]\nhwids: {}\n",
            common::repo_root().join(".cache/demo/vmlinuz").display(),
            tree.display(),
            stub.display(),
            d.join("a.dtb").display(),
            d.join("b.dtb").display(),
            hw.display()
        ),
    )
    .unwrap();
    let uki = build_recipe(&recipe, &d.join("out"), None);
    let predict = |more: &[&std::ffi::OsStr]| -> (serde_json::Value, String) {
        let o = common::imgctl()
            .arg("predict-pcrs")
            .arg(&uki)
            .args([
                "--phase", ":", "--bank", "sha1", "--bank", "sha256", "--json",
            ])
            .args(more)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        (
            serde_json::from_slice(&o.stdout).unwrap(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let pcr11 = |v: &serde_json::Value, bank: &str| v[bank][0]["hash"].as_str().unwrap().to_owned();
    let (by_json, said) = predict(&["--hwids".as_ref(), smbios.as_os_str()]);
    assert!(
        said.contains("CHID type 5") && said.contains(".dtbauto #1 selected"),
        "{said}"
    );
    let (board_b, _) = predict(&["--dtb-match".as_ref(), "imgctl,board-b".as_ref()]);
    let (board_a, _) = predict(&["--dtb-match".as_ref(), "imgctl,board-a".as_ref()]);
    let (none, _) = predict(&["--no-dtb".as_ref()]);
    assert_eq!(by_json, board_b);
    // Another machine (no CHID in .hwids): none selected, and said so.
    let other = d.join("other.json");
    std::fs::write(&other, r#"{"Manufacturer": "Someone Else"}"#).unwrap();
    let (by_other, said) = predict(&["--hwids".as_ref(), other.as_os_str()]);
    assert_eq!(by_other, none, "{said}");
    assert!(said.contains("none selected"), "{said}");

    let mut args: Vec<std::ffi::OsString> = Vec::new();
    for s in qemu_smbios {
        args.extend(["--smbios".into(), s.into()]);
    }
    let boot = Boot::run_args(d, &uki, &args, BOOT_TIMEOUT_S);
    boot.assert_done();
    eprintln!(
        "boot of the .hwids/.dtbauto UKI on the 257 stub: {:.1}s",
        boot.elapsed.as_secs_f64()
    );
    let guest = boot.pcrs();
    let replay = tpm2_eventlog(&boot.capture.join("eventlog.bin"));
    for bank in ["sha1", "sha256"] {
        let want = pcr11(&by_json, bank);
        assert_eq!(
            guest[bank].get(&11),
            Some(&want),
            "PCR 11 {bank}: guest (257 stub, SMBIOS of board B) vs predict-pcrs --hwids"
        );
        assert_eq!(
            replay.pcrs[bank].get(&11),
            Some(&want),
            "{bank}: tpm2_eventlog replay"
        );
        assert_ne!(want, pcr11(&none, bank), "{bank}: a .dtbauto is measured");
        assert_ne!(want, pcr11(&board_a, bank), "{bank}: not board A's");
        eprintln!("PCR 11 {bank}: guest = predict-pcrs --hwids = tpm2_eventlog = {want}");
    }
    // Board B's blob is measured in PCR 11 (its EV_IPL digest), board A's is not.
    use sha2::Digest as _;
    let in_pcr11 = |blob: &[u8]| {
        let h: String = sha2::Sha256::digest(blob)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        replay
            .events
            .iter()
            .any(|e| e.pcr == 11 && e.digests.values().any(|d| *d == h))
    };
    assert!(in_pcr11(&b), "board B's devicetree measured");
    assert!(!in_pcr11(&a), "board A's devicetree not measured");

    // The SMBIOS table the guest read (QEMU + OVMF's): the same prediction from the raw table.
    let console =
        String::from_utf8_lossy(&std::fs::read(boot.capture.join("console.log")).unwrap())
            .into_owned();
    let entry_point = console_block(&console, "smbios_entry_point");
    let table = console_block(&console, "DMI");
    let dmi = d.join("guest.DMI");
    std::fs::write(&dmi, &table).unwrap();
    let (by_table, said) = predict(&["--hwids".as_ref(), dmi.as_os_str()]);
    assert_eq!(by_table, by_json, "{said}");
    let ours = common::imgctl_chids(&dmi);
    assert_eq!(
        ours,
        common::imgctl_chids(&smbios),
        "CHIDs: the guest's table vs the JSON"
    );
    // fwupd reads the same table (entry point and DMI, as in /sys/firmware/dmi/tables).
    let Some(root) = fwupd else { return };
    let theirs = common::fwupdtool_hwids(&root, &entry_point, &table);
    assert_eq!(ours.len(), 10, "every CHID the 257 stub computes");
    for c in &ours {
        assert!(
            theirs.contains(c),
            "fwupdtool hwids lacks {c:?}: {theirs:?}"
        );
    }
}
