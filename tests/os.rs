//! The immutable OS (`recipes/os.yaml`) built and booted whole: the disk image (ESP with the UKI,
//! `/usr` as erofs + dm-verity bound by `usrhash=`, ext4 root) boots under OVMF + swtpm into
//! systemd 257 with `imgctl vm IMAGE.raw`, whose capture unit reports what the running system
//! measured once the `ready` phase is in PCR 11.
//!
//! One build and ONE boot per test run, shared by every test here (a `OnceLock`): the OS tree
//! comes from `.cache/os-trees` (mmdebstrap runs once per machine, ~3 min), the build then takes
//! about a minute and the boot under TCG ~1–3 minutes. The build signs PCR 11
//! (`--pcr-private-key`): systemd-repart makes the encrypted /var at first boot, enrolled to the
//! TPM against that signed policy. The tests of a second boot of the same disk (`--reuse-tpm`:
//! TPM and disk state kept) share one more boot, made only when one of them runs; the tests of
//! a rebuild with another command line share two more, each of the first boot's disk and TPM
//! (kept right after it) with another UKI and sysext on the ESP: the rebuilt UKI carrying the
//! first UKI's `.pcrsig` (the TPM refuses, the recovery key opens /var) and with its own.
//!
//! The judges are real: the guest's TPM (swtpm) for every PCR, `tpm2_eventlog` for the firmware
//! log, `systemd-measure` 257 (Debian 13 chroot) for PCR 11, `veritysetup` for `/usr`,
//! `systemd-dissect` and `sfdisk` for the partition table.
#![allow(clippy::unwrap_used)] // reason: test code; a panic is a test failure

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use imgctl_attest::eventlog::userspace::UserspaceLog;
use imgctl_measure::bank::HashAlg;

/// Generous: other jobs may share the two cores (an idle machine boots in well under this).
const BOOT_TIMEOUT_S: u64 = 900;
/// The phase path the capture unit runs after (systemd-pcrphase's words, in order).
const READY: &str = "enter-initrd:leave-initrd:sysinit:ready";

/// Every peer and tool the build and the boot need (a failure in CI when one is missing).
fn prerequisites() -> bool {
    let tools = [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("qemu-img", "qemu-utils"),
        ("swtpm", "swtpm"),
        ("mkfs.vfat", "dosfstools"),
        ("mcopy", "mtools"),
        ("mkfs.erofs", "erofs-utils"),
        ("mkfs.ext4", "e2fsprogs"),
        ("mmdebstrap", "mmdebstrap"),
        ("tpm2_eventlog", "tpm2-tools"),
        ("veritysetup", "cryptsetup-bin"),
        ("systemd-dissect", "systemd-container"),
        ("sfdisk", "fdisk"),
        ("/usr/share/OVMF/OVMF_CODE_4M.fd", "ovmf"),
    ];
    let mut ok = true;
    for (t, p) in tools {
        ok &= common::require_tool(t, p).is_some();
    }
    if chroot_257().is_none() {
        ok = false;
    }
    ok
}

/// The Debian 13 chroot with systemd 257 (scripts/setup.sh makes it).
fn chroot_257() -> Option<PathBuf> {
    let root = common::repo_root().join(".cache/trixie-257");
    let version = std::fs::read_to_string(root.join("VERSION")).unwrap_or_default();
    if !root.join("usr/lib/systemd/systemd-measure").exists() || !version.starts_with("257.") {
        common::missing("the Debian 13 chroot .cache/trixie-257 with systemd 257");
        return None;
    }
    Some(root)
}

/// Fails, with `imgctl vm`'s stderr and the guest's console, when the boot `what` did not end
/// with the capture unit's report.
fn assert_boot_ok(what: &str, vm: &Output, capture: &Path) {
    assert!(
        vm.status.success(),
        "{what}: imgctl vm failed ({}):\n{}\nconsole:\n{}",
        vm.status,
        String::from_utf8_lossy(&vm.stderr),
        String::from_utf8_lossy(&std::fs::read(capture.join("console.log")).unwrap_or_default())
    );
}

/// `imgctl build RECIPE -o OUT --log LOG --log-key KEY --pcr-private-key PCR_KEY` at
/// SOURCE_DATE_EPOCH=0, OS trees from the shared cache `.cache/os-trees`.
fn build_logged(recipe: &Path, out: &Path, (log, key): (&Path, &Path), pcr_key: &Path) {
    common::run_ok(
        common::imgctl()
            .arg("build")
            .arg(recipe)
            .arg("-o")
            .arg(out)
            .arg("--cache")
            .arg(common::repo_root().join(".cache/os-trees"))
            .arg("--log")
            .arg(log)
            .arg("--log-key")
            .arg(key)
            .arg("--pcr-private-key")
            .arg(pcr_key)
            .env("SOURCE_DATE_EPOCH", "0"),
    );
}

/// The build and the one boot every test here shares.
struct OsBoot {
    dir: tempfile::TempDir,
    /// The PCR signing key the build used (RSA-2048, PEM) and its public half.
    pcr_key: PathBuf,
    pcr_public: PathBuf,
    /// The `--reuse-tpm` folder of the boots: the TPM's and the disk's state.
    state: PathBuf,
    /// The encrypted /var partition as it was on the disk after the first boot (read from the
    /// kept overlay with qemu-img before any second boot).
    var_partition: PathBuf,
    /// The whole disk (raw) and the TPM's state (swtpm's files) right after the first boot,
    /// before any other boot continues them: the base of the boots of a changed ESP.
    disk_after_boot_1: PathBuf,
    tpm_after_boot_1: PathBuf,
    /// The build's output folder: os.raw, os.efi, pcrs.json, manifest.json, image.json.
    out: PathBuf,
    /// The transparency log the build appended the image's record to, and its verifier key.
    log: PathBuf,
    vkey: String,
    capture: PathBuf,
    vm: Output,
    build_time: Duration,
    boot_time: Duration,
}

impl OsBoot {
    fn image(&self) -> PathBuf {
        self.out.join("os.raw")
    }
    fn uki(&self) -> PathBuf {
        self.out.join("os.efi")
    }
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.vm.stdout).unwrap_or_else(|e| {
            panic!(
                "imgctl vm --json: {e}\nstderr:\n{}",
                String::from_utf8_lossy(&self.vm.stderr)
            )
        })
    }
    /// Fails with the console when the boot did not finish its report.
    fn assert_done(&self) {
        assert_boot_ok("the first boot", &self.vm, &self.capture);
        assert_eq!(self.json()["result"], "done");
    }
    /// The PCRs the guest read: bank → index → hex.
    fn pcrs(&self) -> BTreeMap<String, BTreeMap<u32, String>> {
        self.assert_done();
        serde_json::from_slice(&std::fs::read(self.capture.join("pcrs.json")).unwrap()).unwrap()
    }
    fn image_record(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.out.join("image.json")).unwrap()).unwrap()
    }
}

fn os_boot() -> Option<&'static OsBoot> {
    static BOOT: OnceLock<Option<OsBoot>> = OnceLock::new();
    BOOT.get_or_init(|| {
        if !prerequisites() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let (log, key, vkey) = common::new_log(dir.path(), "os");
        let (pcr_key, pcr_public) = common::genkey(dir.path(), "pcr", common::RSA);
        let start = Instant::now();
        build_logged(
            &common::repo_root().join("recipes/os.yaml"),
            &out,
            (&log, &key),
            &pcr_key,
        );
        let build_time = start.elapsed();
        let state = dir.path().join("state");
        let capture = dir.path().join("capture");
        let tmpdir = dir.path().join("tmp");
        std::fs::create_dir_all(&tmpdir).unwrap();
        let image = out.join("os.raw");
        let before = std::fs::read(&image).unwrap();
        let start = Instant::now();
        let vm = common::imgctl()
            .arg("vm")
            .arg(&image)
            .arg("--capture")
            .arg(&capture)
            .arg("--reuse-tpm")
            .arg(&state)
            .args(["--timeout", &BOOT_TIMEOUT_S.to_string(), "--json", "--quiet"])
            .env("TMPDIR", &tmpdir)
            .output()
            .unwrap();
        let boot_time = start.elapsed();
        let var_partition = dir.path().join("var-after-boot-1.img");
        let disk_after_boot_1 = dir.path().join("disk-after-boot-1.raw");
        copy_disk(&state.join("disk.qcow2"), &disk_after_boot_1);
        copy_var_partition(&disk_after_boot_1, &var_partition);
        let tpm_after_boot_1 = dir.path().join("tpm-after-boot-1");
        copy_tpm_state(&state, &tpm_after_boot_1);
        assert!(
            std::fs::read(&image).unwrap() == before,
            "imgctl vm wrote to the image it booted"
        );
        assert_eq!(
            std::fs::read_dir(&tmpdir).unwrap().count(),
            0,
            "imgctl vm left files in TMPDIR"
        );
        let boot = OsBoot {
            dir,
            pcr_key,
            pcr_public,
            state,
            var_partition,
            disk_after_boot_1,
            tpm_after_boot_1,
            out,
            log,
            vkey,
            capture,
            vm,
            build_time,
            boot_time,
        };
        let j = boot.json();
        eprintln!(
            "OS image: build {:.1}s; boot {:.1}s wall clock ({}), {}s in imgctl vm, guest uptime at the report {}s",
            boot.build_time.as_secs_f64(),
            boot.boot_time.as_secs_f64(),
            j["accel"],
            j["seconds"],
            j["guest_uptime_seconds"],
        );
        Some(boot)
    })
    .as_ref()
}

/// The guest's PCR 11 after `ready` equals `imgctl predict-pcrs` for the phase path
/// enter-initrd:leave-initrd:sysinit:ready in sha1 and sha256, and systemd-measure 257 computes
/// the same from the UKI's sections (read back with goblin).
#[test]
fn pcr11_after_ready_equals_predict_pcrs_and_systemd_measure_257() {
    let Some(b) = os_boot() else { return };
    let guest = b.pcrs();
    let ours: serde_json::Value = serde_json::from_slice(&common::run_ok(
        common::imgctl().arg("predict-pcrs").arg(b.uki()).args([
            "--phase", READY, "--bank", "sha1", "--bank", "sha256", "--json",
        ]),
    ))
    .unwrap();
    let theirs = systemd_measure_257(&b.uki(), READY);
    for bank in ["sha1", "sha256"] {
        let predicted = ours[bank][0]["hash"].as_str().unwrap();
        assert_eq!(ours[bank][0]["phase"], READY);
        assert_eq!(
            guest[bank][&11], predicted,
            "{bank}: the guest's PCR 11 after ready vs predict-pcrs"
        );
        assert_eq!(
            theirs[bank][0]["hash"].as_str().unwrap(),
            predicted,
            "{bank}: systemd-measure 257 vs predict-pcrs"
        );
    }
}

/// Section `s` of the PE file `data` as the loader sees it (its virtual size: the file's bytes,
/// zeros past them), and where it starts in the file.
fn pe_section_bytes(data: &[u8], s: &goblin::pe::section_table::SectionTable) -> (usize, Vec<u8>) {
    let start = s.pointer_to_raw_data as usize;
    let len = (s.virtual_size as usize).min(s.size_of_raw_data as usize);
    let mut bytes = data[start..start + len].to_vec();
    bytes.resize(s.virtual_size as usize, 0);
    (start, bytes)
}

/// Section `name` (e.g. `.pcrsig`) of the PE file `data` (goblin), as [`pe_section_bytes`].
fn pe_section(data: &[u8], name: &str) -> (usize, Vec<u8>) {
    let pe = goblin::pe::PE::parse(data).unwrap();
    let s = pe
        .sections
        .iter()
        .find(|s| s.name().unwrap() == name)
        .unwrap_or_else(|| panic!("no {name} section"));
    pe_section_bytes(data, s)
}

/// `systemd-measure calculate` 257 in the chroot over the measured sections of `uki`.
fn systemd_measure_257(uki: &Path, phase: &str) -> serde_json::Value {
    const SECTIONS: &[&str] = &[
        "linux", "osrel", "cmdline", "initrd", "ucode", "splash", "dtb", "uname", "sbat", "pcrpkey",
    ];
    let root = chroot_257().unwrap();
    let data = std::fs::read(uki).unwrap();
    let pe = goblin::pe::PE::parse(&data).unwrap();
    let dir = tempfile::tempdir_in(root.join("tmp")).unwrap();
    let inside = Path::new("/tmp").join(dir.path().file_name().unwrap());
    let mut cmd = Command::new("chroot");
    cmd.arg(&root)
        .arg("/usr/lib/systemd/systemd-measure")
        .arg("calculate")
        .arg("--json=short")
        .arg(format!("--phase={phase}"));
    for s in &pe.sections {
        let name = s.name().unwrap().trim_start_matches('.');
        if !SECTIONS.contains(&name) {
            continue;
        }
        std::fs::write(dir.path().join(name), pe_section_bytes(&data, s).1).unwrap();
        cmd.arg(format!("--{name}={}", inside.join(name).display()));
    }
    serde_json::from_slice(&common::run_ok(&mut cmd)).unwrap()
}

/// `tpm2_eventlog`'s replay of the captured firmware log: bank → PCR → hex.
fn tpm2_eventlog_pcrs(log: &Path) -> BTreeMap<String, BTreeMap<u32, String>> {
    let text = String::from_utf8(common::run_ok(Command::new("tpm2_eventlog").arg(log))).unwrap();
    let mut pcrs: BTreeMap<String, BTreeMap<u32, String>> = BTreeMap::new();
    let mut in_pcrs = false;
    let mut bank = String::new();
    for line in text.lines() {
        if line == "pcrs:" {
            in_pcrs = true;
            continue;
        }
        if !in_pcrs {
            continue;
        }
        let t = line.trim();
        if let Some(b) = t.strip_suffix(':') {
            bank = b.to_owned();
        } else if let Some((i, v)) = t.split_once(':') {
            let v = v.trim().trim_start_matches("0x").to_ascii_lowercase();
            pcrs.entry(bank.clone())
                .or_default()
                .insert(i.trim().parse().unwrap(), v);
        }
    }
    pcrs
}

/// The firmware log the guest captured replays to its PCRs 0–7 (imgctl's replay), and
/// tpm2_eventlog's replay of the same log agrees with both.
#[test]
fn the_firmware_log_replays_to_the_guests_pcrs_0_to_7_and_tpm2_eventlog_agrees() {
    let Some(b) = os_boot() else { return };
    let guest = b.pcrs();
    let log = b.capture.join("eventlog.bin");
    let theirs = tpm2_eventlog_pcrs(&log);
    let ours: BTreeMap<String, BTreeMap<u32, String>> = serde_json::from_slice(&common::run_ok(
        common::imgctl()
            .args(["eventlog", "replay", "--json"])
            .arg(&log),
    ))
    .unwrap();
    for bank in ["sha1", "sha256"] {
        for i in 0..=7u32 {
            let g = &guest[bank][&i];
            assert_eq!(ours[bank].get(&i), Some(g), "{bank} PCR {i}: imgctl replay");
            assert_eq!(
                theirs[bank].get(&i),
                Some(g),
                "{bank} PCR {i}: tpm2_eventlog"
            );
        }
        // PCR 11 before the userspace phases: the stub's part, in both replays alike.
        assert_eq!(ours[bank].get(&11), theirs[bank].get(&11), "{bank} PCR 11");
    }
}

/// The strings of `log`'s records that start with `prefix`, in order.
fn strings_starting_with(log: &UserspaceLog, prefix: &str) -> Vec<String> {
    log.records
        .iter()
        .filter_map(|r| r.string.clone())
        .filter(|s| s.starts_with(prefix))
        .collect()
}

/// The records of the captured userspace log, by attest's one parser.
fn userspace_log(b: &OsBoot) -> UserspaceLog {
    b.assert_done();
    let data = std::fs::read(b.capture.join("tpm2-measure.log")).unwrap();
    UserspaceLog::parse(&data).unwrap()
}

/// What imgctl expects systemd 257 to record in PCR 15 for this image: the machine ID (made at
/// first boot, so any 32 hex digits), the `file-system:` records the build predicted from
/// the image's own partition and file-system facts (image.json `pcr15_file_systems`) and the
/// encrypted /var's volume-key record: the prefix the build predicted (image.json
/// `var.pcr15_volume_key_prefixes`) followed by the LUKS UUID repart gave the volume at first
/// boot, as `cryptsetup luksUUID` reads it from the disk.
fn expected_pcr15(b: &OsBoot, machine_id: &str) -> Vec<String> {
    let record = b.image_record();
    let fs = record["pcr15_file_systems"].as_array().unwrap();
    assert_eq!(fs.len(), 2, "/ and /usr: {record}");
    let mut want: Vec<String> = fs.iter().map(|v| v.as_str().unwrap().to_owned()).collect();
    want.push(format!("machine-id:{machine_id}"));
    // The /usr dm-verity device's activation (the image's imgctl-usr-verity-measure.service,
    // in systemd main's `verity` NvPCR format), with the root hash of the UKI's usrhash=.
    let verity = record["pcr15_verity_records"].as_array().unwrap();
    assert_eq!(
        verity,
        &[serde_json::Value::from(format!(
            "verity:usr:{}:",
            record["usr_root_hash"].as_str().unwrap()
        ))],
        "{record}"
    );
    want.extend(verity.iter().map(|v| v.as_str().unwrap().to_owned()));
    let prefixes = record["var"]["pcr15_volume_key_prefixes"]
        .as_array()
        .unwrap();
    assert_eq!(prefixes.len(), 1, "one encrypted volume: {record}");
    let uuid = luks_uuid(&b.var_partition);
    want.push(format!("{}{uuid}", prefixes[0].as_str().unwrap()));
    // How /var was unlocked (systemd 259's format, measured by the image's
    // imgctl-var-keyslot.service): the TPM2 token's slot.
    for t in record["var"]["pcr15_unlock_record_templates"]
        .as_array()
        .unwrap()
    {
        want.push(t.as_str().unwrap().replace("{luks-uuid}", &uuid));
    }
    want
}

/// `imgctl audit` on the captured userspace log: the TPM unlock of /var (the image's
/// `cryptsetup-keyslot:…:tpm2:0` record) is routine (exit 0, consistent with the guest's PCRs);
/// the same log with that record turned into a recovery-key unlock (digests recomputed, as a
/// guest that was opened with the recovery key would have logged it) is break-glass (exit 1,
/// the volume and mechanism named), and against the guest's real PCRs it is inconsistent
/// (exit 4): the record is not what the TPM saw.
#[test]
fn audit_tells_a_recovery_key_unlock_of_var_from_the_tpm_unlock_on_the_captured_log() {
    use imgctl_attest::eventlog::userspace::UserspaceRecord;
    let Some(b) = os_boot() else { return };
    b.assert_done();
    let log_path = b.capture.join("tpm2-measure.log");
    let pcrs = b.capture.join("pcrs.json");
    let audit = |log: &Path, with_pcrs: bool| {
        let mut c = common::imgctl();
        c.args(["audit", "--json", "--userspace-log"]).arg(log);
        if with_pcrs {
            c.arg("--pcrs")
                .arg(&pcrs)
                .arg("--eventlog")
                .arg(b.capture.join("eventlog.bin"));
        }
        let o = c.output().unwrap();
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        (o.status.code(), text)
    };
    let (code, text) = audit(&log_path, true);
    assert_eq!(code, Some(0), "audit of the TPM-unlocked boot: {text}");
    let log = userspace_log(b);
    let keyslot: Vec<&UserspaceRecord> = log
        .records
        .iter()
        .filter(|r| {
            r.string
                .as_deref()
                .is_some_and(|s| s.starts_with("cryptsetup-keyslot:"))
        })
        .collect();
    assert_eq!(keyslot.len(), 1, "one unlock record: {:?}", log.records);
    let k = keyslot[0];
    let tpm = k.string.clone().unwrap();
    assert!(tpm.ends_with(":tpm2:0"), "{tpm}");
    // The same boot, had /var been opened with the recovery key (slot 1).
    let banks: Vec<HashAlg> = k.digests.iter().map(|(b, _)| *b).collect();
    let rebuilt = UserspaceRecord::new(
        15,
        &banks,
        tpm.replace(":tpm2:0", ":recovery:1"),
        k.event_type.as_deref().unwrap_or("phase"),
        &imgctl_attest::eventlog::userspace::Origin {
            boot_id: k.boot_id.clone().unwrap_or_default(),
            timestamp_usec: k.timestamp.unwrap_or_default(),
        },
    )
    .unwrap();
    let mut forged = Vec::new();
    for r in &log.records {
        forged.extend(if std::ptr::eq(r, k) {
            rebuilt.to_json_seq()
        } else {
            r.to_json_seq()
        });
    }
    let dir = tempfile::tempdir().unwrap();
    let forged_path = dir.path().join("recovery.log");
    std::fs::write(&forged_path, &forged).unwrap();
    let (code, text) = audit(&forged_path, false);
    assert_eq!(code, Some(1), "a recovery unlock is break-glass: {text}");
    let events = break_glass_events(&text);
    assert_eq!(events.len(), 1, "{text}");
    assert_eq!(the_recovery_unlock_of_var(&events)["slot"], 1);
    let (code, text) = audit(&forged_path, true);
    assert_eq!(
        code,
        Some(4),
        "the forged log against the guest's PCRs: {text}"
    );
}

/// The break-glass events of an `imgctl audit --json` report.
fn break_glass_events(audit_json: &str) -> Vec<serde_json::Value> {
    let report: serde_json::Value = serde_json::from_str(audit_json).unwrap();
    report["break_glass"].as_array().unwrap().clone()
}

/// The one event of `kind` among break-glass `events`.
fn the_one_event(events: &[serde_json::Value], kind: &str) -> serde_json::Value {
    let of_kind: Vec<&serde_json::Value> = events.iter().filter(|e| e["kind"] == kind).collect();
    assert_eq!(of_kind.len(), 1, "one {kind}: {events:?}");
    of_kind[0].clone()
}

/// The one recovery-key unlock of /var among break-glass `events`.
fn the_recovery_unlock_of_var(events: &[serde_json::Value]) -> serde_json::Value {
    let unlock = the_one_event(events, "volume-unlock");
    assert_eq!(unlock["volume"], "var");
    assert_eq!(unlock["mechanism"], "recovery");
    unlock
}

/// The encrypted /var's partition type (Discoverable Partitions Specification).
const VAR_TYPE: &str = "4d21b016-b534-45c2-a9fb-5c16e091fd2d";

/// Copies the kept disk state `overlay` (qcow2) into the raw disk `out` with qemu-img.
/// Nothing is written when there is no overlay (the tests that need it then fail naming it).
fn copy_disk(overlay: &Path, out: &Path) {
    if overlay.is_file() {
        let _ = Command::new("qemu-img")
            .args(["convert", "-U", "-O", "raw"])
            .arg(overlay)
            .arg(out)
            .status();
    }
}

/// Copies the TPM's state of a `--reuse-tpm` folder (every file but the disk's overlay) into
/// the new folder `out`.
fn copy_tpm_state(state: &Path, out: &Path) {
    std::fs::create_dir_all(out).unwrap();
    for e in std::fs::read_dir(state).into_iter().flatten() {
        let e = e.unwrap();
        if e.file_name() != "disk.qcow2" && e.path().is_file() {
            std::fs::copy(e.path(), out.join(e.file_name())).unwrap();
        }
    }
}

/// Copies the /var partition out of the raw disk `disk` into `out` (sfdisk finds it). Nothing
/// is written when the disk has no /var partition (the tests that need it then fail naming it).
fn copy_var_partition(disk: &Path, out: &Path) {
    use std::io::{Read, Seek};
    if !disk.is_file() {
        return;
    }
    if let Some((_, _, start, size)) = sfdisk_partitions(disk)
        .into_iter()
        .find(|p| p.0 == VAR_TYPE)
    {
        let mut f = std::fs::File::open(disk).unwrap();
        f.seek(std::io::SeekFrom::Start(start)).unwrap();
        let mut o = std::fs::File::create(out).unwrap();
        std::io::copy(&mut f.take(size), &mut o).unwrap();
    }
}

/// The LUKS UUID of a LUKS2 volume, as cryptsetup reads it.
fn luks_uuid(volume: &Path) -> String {
    assert!(
        volume.is_file(),
        "no /var partition on the disk after the first boot"
    );
    String::from_utf8(common::run_ok(
        Command::new("cryptsetup").arg("luksUUID").arg(volume),
    ))
    .unwrap()
    .trim()
    .to_owned()
}

/// The capture unit's `IMGCTL-VAR <key> <value>` lines (recipes/os/imgctl-capture).
fn var_report(capture: &Path) -> BTreeMap<String, String> {
    capture_report(capture, "IMGCTL-VAR ")
}

/// The `<marker><key> <value>` lines of a capture's console, by key.
fn capture_report(capture: &Path, marker: &str) -> BTreeMap<String, String> {
    let console = std::fs::read(capture.join("console.log")).unwrap();
    String::from_utf8_lossy(&console)
        .lines()
        .filter_map(|l| {
            let l = l.trim_end_matches('\r');
            l.find(marker).map(|i| &l[i + marker.len()..])
        })
        .filter_map(|l| l.split_once(' ').or(Some((l, ""))))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect()
}

/// The journal of /var's unlock in a capture's report (systemd-cryptsetup, repart, the image's
/// units); fails unless the TPM2 token unlocked /var with no fallback.
fn var_journal_of_a_tpm_unlock(report: &BTreeMap<String, String>) -> String {
    let journal = String::from_utf8(var_report_b64(report, "journal")).unwrap();
    assert!(
        journal.contains("Automatically discovered security TPM2 token unlocks volume"),
        "{journal}"
    );
    assert!(!journal.contains("falling back"), "{journal}");
    journal
}

/// A base64 value of the capture's report, decoded.
fn var_report_b64(report: &BTreeMap<String, String>, key: &str) -> Vec<u8> {
    use base64::Engine as _;
    let v = report
        .get(key)
        .unwrap_or_else(|| panic!("the capture reported no {key}: {report:?}"));
    base64::engine::general_purpose::STANDARD
        .decode(v)
        .unwrap_or_else(|e| panic!("{key}: {e}"))
}

/// The second boot of the same disk with the same TPM (`--reuse-tpm` with the first boot's
/// folder), made once when a test needs it.
struct SecondBoot {
    capture: PathBuf,
    vm: Output,
    boot_time: Duration,
}

fn second_boot() -> Option<&'static SecondBoot> {
    static BOOT: OnceLock<Option<SecondBoot>> = OnceLock::new();
    BOOT.get_or_init(|| {
        let b = os_boot()?;
        b.assert_done();
        let capture = b.dir.path().join("capture-2");
        let start = Instant::now();
        let vm = common::imgctl()
            .arg("vm")
            .arg(b.image())
            .arg("--capture")
            .arg(&capture)
            .arg("--reuse-tpm")
            .arg(&b.state)
            .args([
                "--timeout",
                &BOOT_TIMEOUT_S.to_string(),
                "--json",
                "--quiet",
            ])
            .output()
            .unwrap();
        let boot = SecondBoot {
            capture,
            vm,
            boot_time: start.elapsed(),
        };
        eprintln!(
            "OS image, second boot: {:.1}s wall clock",
            boot.boot_time.as_secs_f64()
        );
        Some(boot)
    })
    .as_ref()
}

/// PCR 15 equals the replay of the captured userspace log (attest's parser) in sha1 and sha256;
/// every record is one imgctl expected and nothing else is there; PCR 11's records are the four
/// phase words in order.
#[test]
fn pcr15_equals_the_replay_of_the_userspace_log_and_holds_only_expected_records() {
    let Some(b) = os_boot() else { return };
    let guest = b.pcrs();
    let log = userspace_log(b);
    let replay = log.replay();
    for (bank, name) in [(HashAlg::SHA1, "sha1"), (HashAlg::SHA256, "sha256")] {
        let got = replay
            .get(&bank)
            .and_then(|m| m.get(&15))
            .map(|d| d.to_hex())
            .unwrap_or_else(|| panic!("no PCR 15 {name} in the userspace log"));
        assert_eq!(got, guest[name][&15], "{name}: PCR 15 vs the log's replay");
    }
    let phases: Vec<&str> = log
        .records
        .iter()
        .filter(|r| r.pcr == Some(11))
        .map(|r| r.string.as_deref().unwrap_or(""))
        .collect();
    assert_eq!(phases.join(":"), READY, "PCR 11 records");
    let pcr15: Vec<String> = log
        .records
        .iter()
        .filter(|r| r.pcr == Some(15))
        .map(|r| r.string.clone().unwrap_or_default())
        .collect();
    let machine_id = pcr15
        .iter()
        .find_map(|s| s.strip_prefix("machine-id:"))
        .unwrap_or_else(|| panic!("no machine-id record in PCR 15: {pcr15:?}"));
    assert!(
        machine_id.len() == 32 && machine_id.bytes().all(|c| c.is_ascii_hexdigit()),
        "machine-id {machine_id:?}"
    );
    let mut want = expected_pcr15(b, machine_id);
    for r in log.records.iter().filter(|r| r.pcr == Some(15)) {
        let volume_key = r.string.as_deref().unwrap_or("").starts_with("cryptsetup:");
        assert_eq!(
            r.event_type.as_deref() == Some("volume-key"),
            volume_key,
            "record {}: {:?}",
            r.index,
            r.string
        );
    }
    let mut got = pcr15.clone();
    want.sort();
    got.sort();
    assert_eq!(got, want, "PCR 15 records vs what imgctl expected");
    // The /usr activation record holds the root hash the UKI's command line gave the kernel
    // (usrhash=, read back from the built UKI), once.
    let tmp = tempfile::tempdir().unwrap();
    let usrhash = uki_cmdline(&b.uki(), tmp.path())
        .split_whitespace()
        .find_map(|w| w.strip_prefix("usrhash="))
        .map(str::to_owned)
        .expect("no usrhash= in the UKI's command line");
    assert_eq!(
        strings_starting_with(&log, "verity:usr:"),
        [format!("verity:usr:{usrhash}:")],
        "the /usr activation record"
    );
    let others: Vec<_> = log
        .records
        .iter()
        .filter(|r| !matches!(r.pcr, Some(11) | Some(15)))
        .collect();
    assert!(others.is_empty(), "unexpected records: {others:?}");
    // Each record's digest is the hash of its string, but the volume key's (an HMAC keyed by
    // the volume key, which only the guest knows).
    for r in log
        .records
        .iter()
        .filter(|r| r.event_type.as_deref() != Some("volume-key"))
    {
        assert!(
            r.digest_mismatches().is_empty(),
            "record {} is not the hash of its string",
            r.index
        );
    }
}

/// `build --pcr-private-key` on an OS recipe embeds `.pcrpkey` (the public key) and `.pcrsig`
/// through the kind: uki code path, and `.pcrsig` is byte for byte what `systemd-measure sign`
/// 257 (Debian 13 chroot) prints for the UKI's sections with the same key (RSA PKCS#1 v1.5 is
/// deterministic) as ukify 257 embeds it: re-serialised by `json.dumps` (python3 here), no
/// newline, no NUL (systemd-cryptsetup 257 refuses a signature file with a NUL after the JSON).
#[test]
fn os_uki_pcrsig_equals_systemd_measure_257_sign_over_its_sections() {
    let Some(b) = os_boot() else { return };
    const SECTIONS: &[&str] = &[
        "linux", "osrel", "cmdline", "initrd", "ucode", "splash", "dtb", "uname", "sbat", "pcrpkey",
    ];
    let root = chroot_257().unwrap();
    let data = std::fs::read(b.uki()).unwrap();
    let pe = goblin::pe::PE::parse(&data).unwrap();
    let section = |name: &str| -> Vec<u8> { pe_section(&data, name).1 };
    assert_eq!(
        String::from_utf8(section(".pcrpkey")).unwrap().trim(),
        std::fs::read_to_string(&b.pcr_public).unwrap().trim(),
        ".pcrpkey is the signing key's public half"
    );
    let dir = tempfile::tempdir_in(root.join("tmp")).unwrap();
    let inside = Path::new("/tmp").join(dir.path().file_name().unwrap());
    std::fs::copy(&b.pcr_key, dir.path().join("key.pem")).unwrap();
    std::fs::copy(&b.pcr_public, dir.path().join("key.pub.pem")).unwrap();
    let mut cmd = Command::new("chroot");
    cmd.arg(&root)
        .arg("/usr/lib/systemd/systemd-measure")
        .arg("sign")
        .arg("--json=short")
        .arg(format!(
            "--private-key={}",
            inside.join("key.pem").display()
        ))
        .arg(format!(
            "--public-key={}",
            inside.join("key.pub.pem").display()
        ));
    for s in &pe.sections {
        let name = s.name().unwrap().trim_start_matches('.');
        if !SECTIONS.contains(&name) {
            continue;
        }
        std::fs::write(dir.path().join(name), section(&format!(".{name}"))).unwrap();
        cmd.arg(format!("--{name}={}", inside.join(name).display()));
    }
    let mut theirs = common::run_ok(&mut cmd);
    assert_eq!(theirs.pop(), Some(b'\n'));
    let theirs = common::ukify_pcrsig_json(&theirs);
    let ours = section(".pcrsig");
    assert_eq!(
        String::from_utf8_lossy(&ours),
        String::from_utf8_lossy(&theirs),
        ".pcrsig vs systemd-measure sign 257"
    );
}

/// The first boot makes /var with systemd-repart 257 from the image's repart.d: LUKS2 on a new
/// partition, a systemd-tpm2 token bound to the signed PCR 11 policy of the UKI's .pcrpkey, and
/// a recovery key; the guest unlocks it from the TPM (no credential holds the recovery key) and
/// mounts it. The volume is read back from the disk by cryptsetup on the host: its tokens, and
/// the recovery key the guest reported opens it while another key does not.
#[test]
fn var_is_made_encrypted_at_first_boot_and_unlocked_by_the_tpm_through_the_signed_policy() {
    let Some(b) = os_boot() else { return };
    b.assert_done();
    let report = var_report(&b.capture);
    assert_eq!(
        report.get("mount").map(String::as_str),
        Some("/dev/mapper/var ext4"),
        "{report:?}"
    );
    assert_eq!(
        report.get("dm-target").map(String::as_str),
        Some("crypt"),
        "{report:?}"
    );
    assert_eq!(
        report.get("cryptsetup-unit").map(String::as_str),
        Some("active")
    );
    let journal = var_journal_of_a_tpm_unlock(&report);
    assert!(journal.contains("Encrypting future partition"), "{journal}");
    // What the guest reports of its volume is what cryptsetup reads from the disk.
    let uuid = luks_uuid(&b.var_partition);
    assert_eq!(report.get("luks-uuid"), Some(&uuid));
    let meta: serde_json::Value = serde_json::from_slice(&common::run_ok(
        Command::new("cryptsetup")
            .args(["luksDump", "--dump-json-metadata"])
            .arg(&b.var_partition),
    ))
    .unwrap();
    let guest_meta: serde_json::Value =
        serde_json::from_slice(&var_report_b64(&report, "luks-json")).unwrap();
    assert_eq!(meta["tokens"], guest_meta["tokens"]);
    let tokens: Vec<&serde_json::Value> = meta["tokens"].as_object().unwrap().values().collect();
    let types: Vec<&str> = tokens.iter().map(|t| t["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["systemd-tpm2", "systemd-recovery"], "{meta}");
    let tpm2 = tokens[0];
    assert_eq!(tpm2["tpm2_pubkey_pcrs"], serde_json::json!([11]), "{tpm2}");
    use base64::Engine as _;
    let pubkey = base64::engine::general_purpose::STANDARD
        .decode(tpm2["tpm2_pubkey"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        String::from_utf8(pubkey).unwrap().trim(),
        std::fs::read_to_string(&b.pcr_public).unwrap().trim(),
        "the TPM2 token is bound to the UKI's .pcrpkey"
    );
    // The recovery key opens the volume; another does not.
    let key = report
        .get("recovery-key")
        .unwrap_or_else(|| panic!("no recovery key reported: {report:?}"));
    let opens = |k: &str| {
        let mut c = Command::new("cryptsetup")
            .args(["open", "--test-passphrase", "--key-file=-"])
            .arg(&b.var_partition)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut c.stdin.take().unwrap(), k.as_bytes()).unwrap();
        c.wait().unwrap().success()
    };
    assert!(opens(key), "the recovery key does not open /var");
    let mut wrong = key.clone().into_bytes();
    wrong[0] = if wrong[0] == b'c' { b'd' } else { b'c' };
    assert!(!opens(std::str::from_utf8(&wrong).unwrap()));
}

/// A second boot of the same disk with the same TPM (`imgctl vm --reuse-tpm DIR` keeps both):
/// /var is the same LUKS2 volume, unlocked again by the TPM token with no password (the
/// mapping is dm-crypt), the file the first boot wrote to it is there, nothing is enrolled
/// again, and PCR 15 holds the same volume-key record and equals its log's replay.
#[test]
fn a_second_boot_of_the_same_disk_unlocks_var_from_the_tpm_and_keeps_its_files() {
    let Some(b) = os_boot() else { return };
    let Some(s) = second_boot() else { return };
    assert_boot_ok("the second boot", &s.vm, &s.capture);
    let first = var_report(&b.capture);
    let second = var_report(&s.capture);
    assert_eq!(
        second.get("mount").map(String::as_str),
        Some("/dev/mapper/var ext4")
    );
    assert_eq!(second.get("dm-target").map(String::as_str), Some("crypt"));
    assert_eq!(second.get("luks-uuid"), first.get("luks-uuid"));
    let journal = var_journal_of_a_tpm_unlock(&second);
    assert!(
        !journal.contains("Encrypting future partition"),
        "repart made /var again: {journal}"
    );
    // Written to /var by the first boot, read back by the second.
    assert_ne!(second.get("boot-id"), first.get("boot-id"));
    assert_eq!(second.get("first-boot-id"), first.get("boot-id"));
    assert!(
        !second.contains_key("recovery-key"),
        "a second recovery key was enrolled"
    );
    let meta: serde_json::Value =
        serde_json::from_slice(&var_report_b64(&second, "luks-json")).unwrap();
    assert_eq!(meta["tokens"].as_object().unwrap().len(), 2, "{meta}");
    // PCR 15: the replay of the second boot's log, with the same volume-key record.
    let pcrs: BTreeMap<String, BTreeMap<u32, String>> =
        serde_json::from_slice(&std::fs::read(s.capture.join("pcrs.json")).unwrap()).unwrap();
    let log =
        UserspaceLog::parse(&std::fs::read(s.capture.join("tpm2-measure.log")).unwrap()).unwrap();
    let replay = log.replay();
    assert_eq!(
        replay[&HashAlg::SHA256][&15].to_hex(),
        pcrs["sha256"][&15],
        "PCR 15 vs the second boot's log"
    );
    let volume: Vec<&str> = log
        .records
        .iter()
        .filter(|r| r.event_type.as_deref() == Some("volume-key"))
        .map(|r| r.string.as_deref().unwrap_or(""))
        .collect();
    let uuid = luks_uuid(&b.var_partition);
    let want = format!("cryptsetup:var:{uuid}");
    assert_eq!(volume, [want.as_str()]);
    let unlock = strings_starting_with(&log, "cryptsetup-keyslot:");
    assert_eq!(unlock, [format!("cryptsetup-keyslot:var:{uuid}:tpm2:0")]);
}

/// The partitions of the image as `sfdisk --json` (util-linux) reads them: (type, uuid, start
/// byte, size in bytes).
fn sfdisk_partitions(image: &Path) -> Vec<(String, String, u64, u64)> {
    let j: serde_json::Value = serde_json::from_slice(&common::run_ok(
        Command::new("sfdisk").arg("--json").arg(image),
    ))
    .unwrap();
    let sector = j["partitiontable"]["sectorsize"].as_u64().unwrap_or(512);
    j["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["type"].as_str().unwrap().to_ascii_lowercase(),
                p["uuid"].as_str().unwrap().to_ascii_lowercase(),
                p["start"].as_u64().unwrap() * sector,
                p["size"].as_u64().unwrap() * sector,
            )
        })
        .collect()
}

/// The UKI's command line as objcopy (binutils) reads it out of the PE file.
fn uki_cmdline(uki: &Path, dir: &Path) -> String {
    let out = dir.join("cmdline.txt");
    common::run_ok(
        Command::new("objcopy")
            .args(["-O", "binary", "--only-section=.cmdline"])
            .arg(uki)
            .arg(&out),
    );
    String::from_utf8(std::fs::read(&out).unwrap())
        .unwrap()
        .trim_end_matches('\0')
        .trim()
        .to_owned()
}

/// `veritysetup verify` accepts the /usr partition and its hash partition with the root hash of
/// the UKI's `usrhash=`, and refuses them with one byte of /usr changed; `systemd-dissect` lists
/// the partitions with their types and UUIDs.
#[test]
fn veritysetup_accepts_usr_with_the_ukis_usrhash_and_systemd_dissect_lists_the_partitions() {
    let Some(b) = os_boot() else { return };
    let Some(objcopy) = common::require_tool("objcopy", "binutils") else {
        return;
    };
    let _ = objcopy;
    let dir = tempfile::tempdir().unwrap();
    let cmdline = uki_cmdline(&b.uki(), dir.path());
    let usrhash = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("usrhash="))
        .unwrap_or_else(|| panic!("no usrhash= in {cmdline:?}"))
        .to_owned();
    const USR: &str = "8484680c-9521-48c6-9c11-b0720656f69e";
    const USR_VERITY: &str = "77ff5f63-e7b6-4633-acf4-1565b864c0e6";
    let parts = sfdisk_partitions(&b.image());
    let find = |t: &str| parts.iter().find(|p| p.0 == t).unwrap().clone();
    let (usr, verity) = (find(USR), find(USR_VERITY));
    let bytes = std::fs::read(b.image()).unwrap();
    let slice = |p: &(String, String, u64, u64)| bytes[p.2 as usize..(p.2 + p.3) as usize].to_vec();
    let (data, hash) = (dir.path().join("usr"), dir.path().join("usr-verity"));
    let mut usr_bytes = slice(&usr);
    std::fs::write(&data, &usr_bytes).unwrap();
    std::fs::write(&hash, slice(&verity)).unwrap();
    let verify = || {
        Command::new("veritysetup")
            .arg("verify")
            .arg(&data)
            .arg(&hash)
            .arg(&usrhash)
            .output()
            .unwrap()
    };
    let ok = verify();
    assert!(
        ok.status.success(),
        "veritysetup verify: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    usr_bytes[4096 * 3 + 17] ^= 1;
    std::fs::write(&data, &usr_bytes).unwrap();
    assert!(
        !verify().status.success(),
        "veritysetup accepted /usr with a flipped byte"
    );
    // The partition UUIDs are the root hash's halves (as systemd-repart makes them).
    let uuid = |h: &str| {
        format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    };
    assert_eq!(usr.1, uuid(&usrhash[..32]));
    assert_eq!(verity.1, uuid(&usrhash[32..]));

    let j: serde_json::Value = serde_json::from_slice(&common::run_ok(
        Command::new("systemd-dissect")
            .arg("--json=short")
            .arg(b.image()),
    ))
    .unwrap();
    let mounts: Vec<(String, String)> = j["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["designator"].as_str().unwrap_or("").to_owned(),
                m["partition_uuid"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    for (designator, want) in [("usr", &usr.1), ("usr-verity", &verity.1)] {
        assert!(
            mounts.iter().any(|(d, u)| d == designator && u == want),
            "systemd-dissect: no {designator} partition {want}: {mounts:?}"
        );
    }
    assert!(
        mounts.iter().any(|(d, _)| d == "root") && mounts.iter().any(|(d, _)| d == "esp"),
        "systemd-dissect: root and esp: {mounts:?}"
    );
}

/// `imgctl verify` with the build's pcrs.json and manifest.json accepts the boot with PCR 4, 11
/// and 15 checked (15 against the value the guest's TPM holds), and rejects, naming the record,
/// when the userspace log is altered.
#[test]
fn verify_accepts_the_boot_and_rejects_an_altered_userspace_log() {
    let Some(b) = os_boot() else { return };
    let guest = b.pcrs();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        format!(
            "pcrs: [4, 11, 15]\nbanks: [sha1, sha256]\npcrs_json: [{}]\nmanifests: [{}]\nexpected:\n  sha1: {{\"15\": \"{}\"}}\n  sha256: {{\"15\": \"{}\"}}\n",
            b.out.join("pcrs.json").display(),
            b.out.join("manifest.json").display(),
            guest["sha1"][&15],
            guest["sha256"][&15],
        ),
    )
    .unwrap();
    let verify = |userspace: &Path| {
        let o = common::imgctl()
            .args(["verify", "--json", "--eventlog"])
            .arg(b.capture.join("eventlog.bin"))
            .arg("--userspace-log")
            .arg(userspace)
            .arg("--policy")
            .arg(&policy)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        (o.status.code(), text, o.stdout)
    };
    let log = b.capture.join("tpm2-measure.log");
    let (code, text, stdout) = verify(&log);
    assert_eq!(code, Some(0), "verify of the boot: {text}");
    let verdict: serde_json::Value =
        serde_json::from_slice(&stdout).unwrap_or_else(|e| panic!("verify --json: {e}: {text}"));
    assert_eq!(verdict["accepted"], true, "{text}");
    let checked: Vec<&str> = verdict["checked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for want in [
        "Authenticode of os.efi",
        "Authenticode of the .linux kernel in os.efi",
        "PCR 11 sha1 after phase path enter-initrd:leave-initrd:sysinit:ready",
        "PCR 11 sha256 after phase path enter-initrd:leave-initrd:sysinit:ready",
        "PCR 15 sha1 = policy expected value",
        "PCR 15 sha256 = policy expected value",
    ] {
        assert!(
            checked.iter().any(|c| c.contains(want)),
            "not checked: {want}: {checked:?}"
        );
    }

    // The machine-id record with another ID: its digest no longer matches its string.
    let data = String::from_utf8(std::fs::read(&log).unwrap()).unwrap();
    let at = data.find("machine-id:").unwrap() + "machine-id:".len();
    let mut altered = data.clone();
    let c = if &data[at..at + 1] == "0" { "1" } else { "0" };
    altered.replace_range(at..at + 1, c);
    let bad = dir.path().join("altered.log");
    std::fs::write(&bad, altered).unwrap();
    let (code, text, _) = verify(&bad);
    assert_eq!(code, Some(1), "verify of an altered log: {text}");
    assert!(text.contains("altered-record"), "{text}");
    assert!(text.contains("machine-id:"), "the record is named: {text}");
}

/// `imgctl vm` tells a disk image from a UKI by its bytes, not its name, and refuses before
/// starting anything a disk the firmware could not boot (no ESP, or an ESP past the end of the
/// file) and a `--reuse-tpm` that is not a folder. The disks are partitioned by sfdisk.
#[test]
fn vm_refuses_disks_without_a_bootable_esp_whatever_their_name() {
    let Some(sfdisk) = common::require_tool("sfdisk", "fdisk") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let disk = |name: &str, script: &str, len: u64| {
        let p = dir.path().join(name);
        std::fs::File::create(&p)
            .unwrap()
            .set_len(16 << 20)
            .unwrap();
        let mut child = Command::new(&sfdisk)
            .arg("--quiet")
            .arg(&p)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), script.as_bytes()).unwrap();
        assert!(child.wait().unwrap().success(), "sfdisk {name}");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(len)
            .unwrap();
        p
    };
    let vm = |args: &[&std::ffi::OsStr]| {
        let o = common::imgctl().arg("vm").args(args).output().unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    // A GPT disk named like a UKI, with a Linux partition only.
    let no_esp = disk("looks-like-a.efi", "label: gpt\n,,L\n", 16 << 20);
    let (code, err) = vm(&[no_esp.as_os_str()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no EFI System Partition"), "{err}");
    assert!(err.contains("looks-like-a.efi"), "{err}");
    // An ESP that the file was cut short of.
    let cut = disk("cut.raw", "label: gpt\n,,U\n", 1 << 20);
    let (code, err) = vm(&[cut.as_os_str()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("past the end of the file"), "{err}");
    // An OS recipe is booted as the disk it builds, and says so.
    let recipe = common::repo_root().join("recipes/os.yaml");
    let (code, err) = vm(&[recipe.as_os_str()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("imgctl build"), "{err}");
    // --reuse-tpm must be a folder.
    let esp = disk("esp.raw", "label: gpt\n,,U\n", 16 << 20);
    let file = dir.path().join("not-a-folder");
    std::fs::write(&file, b"").unwrap();
    let (code, err) = vm(&[esp.as_os_str(), "--reuse-tpm".as_ref(), file.as_os_str()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("not a folder"), "{err}");
}

/// `build --log` records the OS image in the transparency log through the one artifact record:
/// its `.tlog-proof` verifies against the log's key, and the entry names the disk image with the
/// sha256 of its bytes (sha2, computed here), the `/usr` root hash of the UKI's `usrhash=` and
/// the usr partitions with the UUIDs sfdisk reads from the disk.
#[test]
fn build_log_records_the_os_image_its_digest_and_usr_root_hash() {
    use sha2::Digest as _;
    let Some(b) = os_boot() else { return };
    let proof = b.out.join("os.raw.tlog-proof");
    common::run_ok(
        common::imgctl()
            .args(["log", "verify", "--vkey", &b.vkey, "--proof"])
            .arg(&proof),
    );
    let shown: serde_json::Value = serde_json::from_slice(&common::run_ok(
        common::imgctl().args(["log", "show", "--json"]).arg(&b.log),
    ))
    .unwrap();
    let entries = shown["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{shown}");
    let e = &entries[0]["entry"];
    let image = e["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["role"] == "image")
        .unwrap_or_else(|| panic!("no image file in {e}"));
    let bytes = std::fs::read(b.image()).unwrap();
    assert_eq!(image["path"], "os.raw");
    assert_eq!(image["size"], bytes.len() as u64);
    assert_eq!(
        image["digests"]["sha256"].as_str().unwrap(),
        hex::encode(sha2::Sha256::digest(&bytes))
    );
    let dir = tempfile::tempdir().unwrap();
    let cmdline = uki_cmdline(&b.uki(), dir.path());
    let usrhash = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("usrhash="))
        .unwrap();
    assert_eq!(e["extension"]["root_hash"], usrhash);
    let parts = sfdisk_partitions(&b.image());
    for p in e["extension"]["partitions"].as_array().unwrap() {
        let uuid = p["uuid"].as_str().unwrap();
        assert!(
            parts
                .iter()
                .any(|(t, u, _, _)| t == p["type_uuid"].as_str().unwrap() && u == uuid),
            "partition {p} not on the disk: {parts:?}"
        );
    }
    assert_eq!(e["extension"]["partitions"].as_array().unwrap().len(), 2);
}

/// Runs `imgctl verify` on the captured OS boot (firmware and userspace logs) with `policy` and
/// the extra reference arguments; returns (exit code, stdout, stdout and stderr).
fn verify_boot(
    b: &OsBoot,
    policy: &Path,
    refs: &[&std::ffi::OsStr],
) -> (Option<i32>, String, String) {
    verify_capture(&b.capture, policy, refs)
}

/// [`verify_boot`] on the boot captured in `capture`.
fn verify_capture(
    capture: &Path,
    policy: &Path,
    refs: &[&std::ffi::OsStr],
) -> (Option<i32>, String, String) {
    let o = common::imgctl()
        .arg("verify")
        .arg("--eventlog")
        .arg(capture.join("eventlog.bin"))
        .arg("--userspace-log")
        .arg(capture.join("tpm2-measure.log"))
        .arg("--policy")
        .arg(policy)
        .args(refs)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    let all = format!("{stdout}{}", String::from_utf8_lossy(&o.stderr));
    (o.status.code(), stdout, all)
}

/// The locked loop on the OS boot (issue 13): with no manifest, pcrs.json or golden value, only
/// the log the build appended to, `verify --log` accepts the captured boot with PCR 4 (the
/// UKI's and its kernel's Authenticode), 11 (every stub section event, the phase path to
/// `ready`) and 15 (each userspace record one the published image expects) checked; the
/// predicted-vs-measured table's measured values are the guest TPM's own PCRs, and every
/// prediction equals them. The `.tlog-proof` the build wrote verifies the same boot offline.
#[test]
fn verify_log_accepts_the_os_boot_from_the_log_alone_with_a_predicted_vs_measured_table() {
    let Some(b) = os_boot() else { return };
    let guest = b.pcrs();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, "pcrs: [4, 11, 15]\nbanks: [sha1, sha256]\n").unwrap();
    let log: &std::ffi::OsStr = b.log.as_os_str();
    let started = Instant::now();
    let (code, stdout, all) = verify_boot(
        b,
        &policy,
        &[
            "--json".as_ref(),
            "--log".as_ref(),
            log,
            "--vkey".as_ref(),
            b.vkey.as_ref(),
        ],
    );
    eprintln!(
        "verify --log of the OS boot: {:.3}s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(code, Some(0), "verify --log of the OS boot: {all}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["accepted"], true, "{all}");
    let checked: Vec<&str> = v["checked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    for want in [
        "PCR 11 stub section events against os.efi",
        "= Authenticode of os.efi",
        "= Authenticode of the .linux kernel in os.efi",
        "PCR 11 sha256 after phase path enter-initrd:leave-initrd:sysinit:ready",
    ] {
        assert!(
            checked.iter().any(|c| c.contains(want)),
            "not checked: {want}: {checked:?}"
        );
    }
    let pcr15 = userspace_log(b)
        .records
        .iter()
        .filter(|r| r.pcr == Some(15))
        .count();
    for bank in ["sha1", "sha256"] {
        let want =
            format!("PCR 15 {bank}: {pcr15} userspace record(s), each one os.efi (os) expects");
        assert!(
            checked.contains(&want.as_str()),
            "not checked: {want}: {checked:?}"
        );
    }
    let rows = v["pcrs"].as_array().unwrap();
    assert_eq!(rows.len(), 6, "3 PCRs x 2 banks: {rows:?}");
    for r in rows {
        let (bank, pcr) = (
            r["bank"].as_str().unwrap(),
            r["pcr"].as_u64().unwrap() as u32,
        );
        assert_eq!(r["verdict"], "match", "{r}");
        assert_eq!(
            r["measured"].as_str().unwrap(),
            guest[bank][&pcr],
            "PCR {pcr} {bank}: the table's measured value vs the guest's TPM"
        );
        assert_eq!(r["predicted"], r["measured"], "{r}");
    }
    // The text form carries the same table.
    let (code, text, all) = verify_boot(
        b,
        &policy,
        &["--log".as_ref(), log, "--vkey".as_ref(), b.vkey.as_ref()],
    );
    assert_eq!(code, Some(0), "{all}");
    assert!(text.starts_with("ACCEPT"), "{text}");
    let table: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    assert_eq!(table.len(), 6, "{text}");
    for (l, pcr) in table.iter().zip(["4", "4", "11", "11", "15", "15"]) {
        assert!(
            l.trim_start().starts_with(pcr) && l.contains(" match "),
            "{l}\n{text}"
        );
    }

    // Offline: the proof beside the image instead of the log.
    let proof = b.out.join("os.raw.tlog-proof");
    let (code, stdout, all) = verify_boot(
        b,
        &policy,
        &[
            "--json".as_ref(),
            "--proof".as_ref(),
            proof.as_os_str(),
            "--vkey".as_ref(),
            b.vkey.as_ref(),
        ],
    );
    assert_eq!(code, Some(0), "verify --proof of the OS boot: {all}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["accepted"], true, "{all}");
}

/// The loop rejects a boot whose OS was not published: the same recipe with one more file in
/// `/usr` is another `/usr` root hash, so another `usrhash=` and another UKI. Against a log
/// holding only that rebuild, the captured boot of the first image is rejected as "not
/// published", naming the stub's event; and its `/usr` file-system record is no record the
/// rebuild expects either.
#[test]
fn verify_log_rejects_the_os_boot_against_a_log_holding_only_a_rebuild_with_another_usr() {
    let Some(b) = os_boot() else { return };
    b.assert_done();
    let dir = tempfile::tempdir().unwrap();
    // The recipe and its folder, with one more file in /usr.
    let recipes = dir.path().join("recipes");
    std::fs::create_dir_all(recipes.join("os")).unwrap();
    for e in std::fs::read_dir(common::repo_root().join("recipes/os")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), recipes.join("os").join(e.file_name())).unwrap();
    }
    std::fs::write(recipes.join("extra"), "one more file in /usr\n").unwrap();
    let text = std::fs::read_to_string(common::repo_root().join("recipes/os.yaml")).unwrap();
    assert!(
        text.contains("\nfiles:\n"),
        "recipes/os.yaml has no files: list"
    );
    let text = text.replacen(
        "\nfiles:\n",
        "\nfiles:\n  - { src: extra, dst: /usr/share/imgctl-test/extra }\n",
        1,
    );
    std::fs::write(recipes.join("os.yaml"), text).unwrap();
    let (log, key, vkey) = common::new_log(dir.path(), "os-rebuild");
    let out = dir.path().join("out");
    let started = Instant::now();
    build_logged(&recipes.join("os.yaml"), &out, (&log, &key), &b.pcr_key);
    eprintln!(
        "rebuild with one more file: {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let record = |p: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p.join("image.json")).unwrap()).unwrap()
    };
    let (first, second) = (b.image_record(), record(&out));
    assert_ne!(
        first["usr_root_hash"], second["usr_root_hash"],
        "one more file in /usr must give another root hash"
    );
    // The test's image is gone from the log: it holds only the rebuild.
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, "pcrs: [4, 11, 15]\nbanks: [sha1, sha256]\n").unwrap();
    let (code, text, all) = verify_boot(
        b,
        &policy,
        &[
            "--log".as_ref(),
            log.as_os_str(),
            "--vkey".as_ref(),
            vkey.as_ref(),
        ],
    );
    assert_eq!(
        code,
        Some(1),
        "verify against a log of the rebuild only: {all}"
    );
    assert!(text.starts_with("REJECT"), "{text}");
    let first_line = text
        .lines()
        .find(|l| l.contains("first divergence"))
        .unwrap_or_else(|| panic!("no first divergence: {text}"));
    assert!(first_line.contains("not published in the log"), "{text}");
    // The firmware loaded a UKI whose Authenticode hash no published artifact has (PCR 4),
    // and the stub measured a command line (its usrhash=) that was not published (PCR 11).
    assert!(
        first_line
            .contains("an EFI application was loaded whose Authenticode hash matches no artifact"),
        "{text}"
    );
    assert!(text.contains("at: PCR 4, firmware-log record"), "{text}");
    assert!(
        text.lines().any(|l| l.contains("not published in the log")
            && l.contains("content of section .cmdline is not the one built")),
        "{text}"
    );
    assert!(text.contains("at: PCR 11, firmware-log record"), "{text}");
    // The booted /usr's file-system record is not one the published rebuild expects.
    let usr_fs = first["pcr15_file_systems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .find(|s| s.starts_with("file-system:/usr:"))
        .unwrap();
    // Its UUID comes from the recipe's text, so the rebuild's /usr record differs.
    assert!(
        !second["pcr15_file_systems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s == usr_fs),
        "{second}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains("not published") && l.contains(usr_fs)),
        "the /usr record {usr_fs} is not named: {text}"
    );
    // The booted /usr's activation record (its root hash, from the kernel's dm-verity table)
    // is no published image's /usr.
    let usr_hash = first["usr_root_hash"].as_str().unwrap();
    assert!(
        text.lines().any(|l| l.contains("not published in the log")
            && l.contains("/usr (verity volume usr) activated with root hash")
            && l.contains(usr_hash)
            && l.contains("PCR 15")),
        "the /usr activation {usr_hash} is not named: {text}"
    );
    // The rebuild's own proof does not vouch for the boot offline either.
    let proof = out.join("os.raw.tlog-proof");
    let (code, _, all) = verify_boot(
        b,
        &policy,
        &[
            "--proof".as_ref(),
            proof.as_os_str(),
            "--vkey".as_ref(),
            vkey.as_ref(),
        ],
    );
    assert_eq!(code, Some(1), "{all}");
    assert!(all.contains("not published in the proofs"), "{all}");
}

/// Without Secure Boot (the OS boots on OVMF's own variable store, no PK), `predict-pcrs --pcr 7
/// --firmware-vars` predicts from the store the guest booted with what the firmware logs: the
/// guest TPM's PCR 7 in sha1 and sha256, whatever the UKI's signature.
#[test]
fn pcr7_without_secure_boot_equals_predict_pcrs_from_the_firmware_vars() {
    let Some(b) = os_boot() else { return };
    let guest = b.pcrs();
    let vars = Path::new("/usr/share/OVMF/OVMF_VARS_4M.fd");
    let ours: BTreeMap<String, BTreeMap<u32, String>> = serde_json::from_slice(&common::run_ok(
        common::imgctl()
            .arg("predict-pcrs")
            .arg(b.uki())
            .args([
                "--pcr",
                "7",
                "--json",
                "--bank",
                "sha1",
                "--bank",
                "sha256",
                "--firmware-vars",
            ])
            .arg(vars),
    ))
    .unwrap();
    for bank in ["sha1", "sha256"] {
        assert_eq!(ours[bank][&7], guest[bank][&7], "{bank}: PCR 7");
    }
}

/// `--reuse-tpm DIR` keeps a disk image's state beside the TPM's (DIR/disk.qcow2, an overlay of
/// the image); booting another image with that DIR is refused before anything starts, naming
/// the kept state, so a second boot always continues the same disk. The overlay is made by
/// qemu-img, the disks are partitioned by sfdisk.
#[test]
fn vm_refuses_the_kept_disk_state_of_another_image() {
    let (Some(sfdisk), Some(qemu_img)) = (
        common::require_tool("sfdisk", "fdisk"),
        common::require_tool("qemu-img", "qemu-utils"),
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let disk = |name: &str| {
        let p = dir.path().join(name);
        std::fs::File::create(&p)
            .unwrap()
            .set_len(16 << 20)
            .unwrap();
        let mut child = Command::new(&sfdisk)
            .arg("--quiet")
            .arg(&p)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"label: gpt\n,,U\n").unwrap();
        assert!(child.wait().unwrap().success(), "sfdisk {name}");
        p
    };
    let (a, other) = (disk("a.raw"), disk("b.raw"));
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    common::run_ok(
        Command::new(&qemu_img)
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(a.canonicalize().unwrap())
            .arg(state.join("disk.qcow2")),
    );
    let o = common::imgctl()
        .arg("vm")
        .arg(&other)
        .arg("--reuse-tpm")
        .arg(&state)
        .args(["--timeout", "5"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("not an overlay of"), "{err}");
    assert!(err.contains("disk.qcow2"), "{err}");
}

/// The OS UKI rebuilt with another command line (`imgctl.rebuild=2` appended; the same kernel,
/// initrd, os-release, uname and stub, read out of the first UKI with objcopy, so it boots the
/// same disk), as a `kind: uki` recipe signed with the same PCR key: its own `.pcrsig` for its
/// own PCR 11. `old_sig` is the same UKI carrying the first UKI's `.pcrsig` instead (the bytes
/// of that section replaced in place: both are the same length). The rebuild's log holds the
/// rebuilt UKI, the demo sysext and the demo confext (`ext build --log`); `other_sysext` is the
/// same recipe with other content, never published.
struct Rebuild {
    _dir: tempfile::TempDir,
    signed: PathBuf,
    old_sig: PathBuf,
    cmdline: String,
    log: PathBuf,
    vkey: String,
    sysext: PathBuf,
    other_sysext: PathBuf,
    /// The demo confext (`recipes/demo-confext.yaml`), published in the rebuild's log too.
    confext: PathBuf,
}

fn rebuild() -> Option<&'static Rebuild> {
    static REBUILD: OnceLock<Option<Rebuild>> = OnceLock::new();
    REBUILD
        .get_or_init(|| {
            let b = os_boot()?;
            let dir = tempfile::tempdir().unwrap();
            let d = dir.path();
            for s in ["osrel", "cmdline", "uname", "initrd", "linux"] {
                common::run_ok(
                    Command::new("objcopy")
                        .args(["-O", "binary", &format!("--only-section=.{s}")])
                        .arg(b.uki())
                        .arg(d.join(s)),
                );
            }
            let cmdline = format!("{} imgctl.rebuild=2", uki_cmdline(&b.uki(), d));
            let uname = std::fs::read_to_string(d.join("uname")).unwrap();
            let tree_key = b.image_record()["tree_key"].as_str().unwrap().to_owned();
            let stub = common::repo_root()
                .join(".cache/os-trees")
                .join(tree_key)
                .join("usr/lib/systemd/boot/efi/linuxx64.efi.stub");
            assert!(stub.is_file(), "no stub in the OS tree: {}", stub.display());
            let recipe = d.join("os-rebuild.yaml");
            std::fs::write(
                &recipe,
                format!(
                    "name: os\nversion: \"2\"\nos-release-file: osrel\nkernel: linux\n\
                     initrd:\n  archives: [initrd]\ncmdline: {cmdline}\nuname: {}\nstub: {}\n",
                    uname.trim_end_matches('\0').trim(),
                    stub.display()
                ),
            )
            .unwrap();
            let (log, key, vkey) = common::new_log(d, "os-cmdline");
            let out = d.join("out");
            build_logged(&recipe, &out, (&log, &key), &b.pcr_key);
            let signed = out.join("os.efi");
            let mut bytes = std::fs::read(&signed).unwrap();
            let (at, new_sig) = pe_section(&bytes, ".pcrsig");
            let (_, old) = pe_section(&std::fs::read(b.uki()).unwrap(), ".pcrsig");
            assert_eq!(old.len(), new_sig.len(), "the two .pcrsig differ in length");
            assert_ne!(old, new_sig, "another command line, another signed policy");
            bytes[at..at + old.len()].copy_from_slice(&old);
            let old_sig = d.join("os-old-pcrsig.efi");
            std::fs::write(&old_sig, &bytes).unwrap();
            // The published sysext, and another one with other content.
            let ext = |recipe: &Path, out: &Path, publish: bool| {
                let mut c = common::imgctl();
                c.args(["ext", "build"])
                    .arg(recipe)
                    .arg("-o")
                    .arg(out)
                    .env("SOURCE_DATE_EPOCH", "0");
                if publish {
                    c.arg("--log").arg(&log).arg("--log-key").arg(&key);
                }
                common::run_ok(&mut c);
                out.join("demo-sysext.raw")
            };
            let sysext = ext(
                &common::repo_root().join("recipes/demo-sysext.yaml"),
                &d.join("sysext"),
                true,
            );
            let other_dir = d.join("other");
            std::fs::create_dir_all(&other_dir).unwrap();
            let text =
                std::fs::read_to_string(common::repo_root().join("recipes/demo-sysext.yaml"))
                    .unwrap()
                    .replace("content: \"1.0\\n\"", "content: \"1.0-other\\n\"")
                    .replace(
                        "tree: demo-sysext",
                        &format!(
                            "tree: {}",
                            common::repo_root().join("recipes/demo-sysext").display()
                        ),
                    );
            assert!(text.contains("1.0-other"), "{text}");
            std::fs::write(other_dir.join("demo-sysext.yaml"), text).unwrap();
            let other_sysext = ext(
                &other_dir.join("demo-sysext.yaml"),
                &other_dir.join("out"),
                false,
            );
            let confext_dir = d.join("confext");
            common::run_ok(
                common::imgctl()
                    .args(["ext", "build"])
                    .arg(common::repo_root().join("recipes/demo-confext.yaml"))
                    .arg("-o")
                    .arg(&confext_dir)
                    .arg("--log")
                    .arg(&log)
                    .arg("--log-key")
                    .arg(&key)
                    .env("SOURCE_DATE_EPOCH", "0"),
            );
            let confext = confext_dir.join("demo-confext.confext.raw");
            assert!(confext.is_file(), "no {}", confext.display());
            Some(Rebuild {
                vkey,
                _dir: dir,
                confext,
                signed,
                old_sig,
                cmdline,
                log,
                sysext,
                other_sysext,
            })
        })
        .as_ref()
}

/// A boot of the first boot's disk and TPM (as they were right after it) with the ESP changed:
/// `uki` at `\EFI\BOOT\BOOTX64.EFI` and `\EFI\Linux\os.efi`, `sysext` beside it in
/// `\EFI\BOOT\BOOTX64.EFI.extra.d\` (the path the firmware started the stub from), written
/// with mtools; `break_glass`: the first boot's recovery key passed as the system credential
/// `cryptsetup.passphrase` (`vm --credential`) and a root login on the serial console.
struct EspBoot {
    name: String,
    capture: PathBuf,
    vm: Output,
    boot_time: Duration,
}

impl EspBoot {
    fn assert_done(&self) {
        assert_boot_ok(&self.name, &self.vm, &self.capture);
    }
    fn log(&self) -> UserspaceLog {
        self.assert_done();
        UserspaceLog::parse(&std::fs::read(self.capture.join("tpm2-measure.log")).unwrap()).unwrap()
    }
    fn pcrs(&self) -> BTreeMap<String, BTreeMap<u32, String>> {
        self.assert_done();
        serde_json::from_slice(&std::fs::read(self.capture.join("pcrs.json")).unwrap()).unwrap()
    }
    /// `imgctl audit --json` of its userspace log against its PCRs and firmware log: (exit
    /// code, stdout).
    fn audit(&self) -> (Option<i32>, String) {
        self.assert_done();
        let o = common::imgctl()
            .args(["audit", "--json", "--userspace-log"])
            .arg(self.capture.join("tpm2-measure.log"))
            .arg("--pcrs")
            .arg(self.capture.join("pcrs.json"))
            .arg("--eventlog")
            .arg(self.capture.join("eventlog.bin"))
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    }
    /// The `cryptsetup-keyslot:` records of its userspace log.
    fn unlock_records(&self) -> Vec<String> {
        strings_starting_with(&self.log(), "cryptsetup-keyslot:")
    }
}

fn esp_boot(
    b: &OsBoot,
    name: &str,
    uki: &Path,
    sysext: &Path,
    confext: Option<&Path>,
    break_glass: bool,
    flip_usr_canary: bool,
) -> EspBoot {
    b.assert_done();
    let dir = b.dir.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let disk = dir.join("disk.raw");
    assert!(
        b.disk_after_boot_1.is_file(),
        "no disk was kept after the first boot"
    );
    common::run_ok(
        Command::new("cp")
            .arg("--sparse=always")
            .arg(&b.disk_after_boot_1)
            .arg(&disk),
    );
    const ESP_TYPE: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
    let (_, _, start, _) = sfdisk_partitions(&disk)
        .into_iter()
        .find(|p| p.0 == ESP_TYPE)
        .expect("no ESP on the disk");
    let esp = format!("{}@@{start}", disk.display());
    for to in ["::/EFI/BOOT/BOOTX64.EFI", "::/EFI/Linux/os.efi"] {
        common::run_ok(
            Command::new("mcopy")
                .args(["-o", "-i", &esp])
                .arg(uki)
                .arg(to),
        );
    }
    common::run_ok(Command::new("mmd").args(["-i", &esp, "::/EFI/BOOT/BOOTX64.EFI.extra.d"]));
    common::run_ok(
        Command::new("mcopy")
            .args(["-o", "-i", &esp])
            .arg(sysext)
            .arg("::/EFI/BOOT/BOOTX64.EFI.extra.d/demo-sysext.raw"),
    );
    if let Some(confext) = confext {
        common::run_ok(
            Command::new("mcopy")
                .args(["-o", "-i", &esp])
                .arg(confext)
                .arg("::/EFI/BOOT/BOOTX64.EFI.extra.d/demo-confext.confext.raw"),
        );
    }
    if flip_usr_canary {
        flip_a_byte_of_the_usr_canary(&disk);
    }
    let state = dir.join("state");
    copy_tpm_state(&b.tpm_after_boot_1, &state);
    let capture = dir.join("capture");
    let tmpdir = dir.join("tmp");
    std::fs::create_dir_all(&tmpdir).unwrap();
    let mut cmd = common::imgctl();
    cmd.arg("vm")
        .arg(&disk)
        .arg("--capture")
        .arg(&capture)
        .arg("--reuse-tpm")
        .arg(&state)
        .args([
            "--timeout",
            &BOOT_TIMEOUT_S.to_string(),
            "--json",
            "--quiet",
        ])
        .env("TMPDIR", &tmpdir);
    if break_glass {
        let key = var_report(&b.capture)
            .get("recovery-key")
            .cloned()
            .expect("the first boot reported no recovery key");
        let file = dir.join("recovery-key");
        std::fs::write(&file, key).unwrap();
        cmd.arg("--credential")
            .arg(format!("cryptsetup.passphrase={}", file.display()));
        // A break-glass root password for the console (its SHA-512 crypt hash by openssl),
        // and a root login typed on the serial console.
        let hash = common::run_ok(Command::new("openssl").args([
            "passwd",
            "-6",
            "-salt",
            "imgctl0test",
            BREAK_GLASS_PASSWORD,
        ]));
        let file = dir.join("break-glass-password");
        std::fs::write(&file, String::from_utf8(hash).unwrap().trim()).unwrap();
        cmd.arg("--credential")
            .arg(format!("imgctl.break-glass-password={}", file.display()))
            .args(["--type-after", "login: =root"])
            .arg("--type-after")
            .arg(format!("Password: ={BREAK_GLASS_PASSWORD}"));
    }
    let start = Instant::now();
    let vm = cmd.output().unwrap();
    let boot = EspBoot {
        name: name.to_owned(),
        capture,
        vm,
        boot_time: start.elapsed(),
    };
    eprintln!(
        "OS image, {name}: {:.1}s wall clock",
        boot.boot_time.as_secs_f64()
    );
    boot
}

/// The canary file the OS image ships in /usr (`recipes/os/usr-canary`, read by its capture
/// unit and by nothing else).
fn usr_canary() -> Vec<u8> {
    std::fs::read(common::repo_root().join("recipes/os/usr-canary")).unwrap()
}

/// Flips one byte of the canary's data in `disk`'s /usr partition, in place, after the build:
/// the partition's dm-verity tree and the root hash in the UKI stay the build's, so nothing
/// measured changes; only the block's hash no longer matches. The canary's 8 KiB must be in
/// the (uncompressed erofs) partition exactly once.
fn flip_a_byte_of_the_usr_canary(disk: &Path) {
    use std::os::unix::fs::FileExt;
    const USR: &str = "8484680c-9521-48c6-9c11-b0720656f69e";
    let (_, _, start, len) = sfdisk_partitions(disk)
        .into_iter()
        .find(|p| p.0 == USR)
        .expect("no /usr partition on the disk");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .unwrap();
    let mut usr = vec![0u8; len as usize];
    f.read_exact_at(&mut usr, start).unwrap();
    let canary = usr_canary();
    let at: Vec<usize> = usr
        .windows(canary.len())
        .enumerate()
        .filter(|(_, w)| *w == canary.as_slice())
        .map(|(i, _)| i)
        .collect();
    assert_eq!(at.len(), 1, "the canary in /usr at offsets {at:?}");
    let byte = at[0] + 1000;
    f.write_all_at(&[usr[byte] ^ 0x20], start + byte as u64)
        .unwrap();
    f.sync_all().unwrap();
}

/// The root password of the console login of [`tamper_boot`].
const BREAK_GLASS_PASSWORD: &str = "break-glass-4-test";

/// The first boot's disk with the rebuilt UKI carrying the FIRST UKI's `.pcrsig`, an
/// unpublished sysext beside it, the recovery key given as a credential, a root login on
/// the serial console (a break-glass root password provisioned as the credential
/// `imgctl.break-glass-password`, `root` and the password typed at the prompts), and one byte
/// of /usr's canary file flipped on the disk.
fn tamper_boot() -> Option<&'static EspBoot> {
    static BOOT: OnceLock<Option<EspBoot>> = OnceLock::new();
    BOOT.get_or_init(|| {
        let b = os_boot()?;
        let r = rebuild()?;
        Some(esp_boot(
            b,
            "boot-old-pcrsig",
            &r.old_sig,
            &r.other_sysext,
            None,
            true,
            true,
        ))
    })
    .as_ref()
}

/// The first boot's disk with the rebuilt UKI and its own `.pcrsig`, the published sysext and
/// the demo confext beside it, and no recovery key: only the TPM can open /var.
fn resigned_boot() -> Option<&'static EspBoot> {
    static BOOT: OnceLock<Option<EspBoot>> = OnceLock::new();
    BOOT.get_or_init(|| {
        let b = os_boot()?;
        let r = rebuild()?;
        Some(esp_boot(
            b,
            "boot-new-pcrsig",
            &r.signed,
            &r.sysext,
            Some(&r.confext),
            false,
            false,
        ))
    })
    .as_ref()
}

/// After a rebuild with another command line the TPM refuses to unlock /var until the new
/// UKI's signed policy is used. The kept disk of the first boot, its ESP carrying the rebuilt
/// UKI (`imgctl.rebuild=2` appended) with the first UKI's `.pcrsig`: PCR 11 is the rebuild's
/// (`predict-pcrs` of the rebuild, not of the first UKI), systemd-cryptsetup 257 finds no
/// signed policy for it and falls back (its journal), and /var opens only with the recovery
/// key given as the `cryptsetup.passphrase` credential: the image measures
/// `cryptsetup-keyslot:var:<uuid>:recovery:<the recovery key's slot>`. The same disk with the
/// rebuilt UKI and its own `.pcrsig` (same key, no credential): the TPM token unlocks /var
/// (`…:tpm2:0`), the same volume with the first boot's file on it.
#[test]
fn after_a_rebuild_with_another_cmdline_the_tpm_unlocks_var_only_with_the_new_ukis_signed_policy() {
    let Some(b) = os_boot() else { return };
    let Some(r) = rebuild() else { return };
    let Some(t) = tamper_boot() else { return };
    let Some(s) = resigned_boot() else { return };
    let first = var_report(&b.capture);
    let uuid = luks_uuid(&b.var_partition);
    // Both boots run the rebuilt command line: PCR 11 after ready is the rebuild's.
    let dir = tempfile::tempdir().unwrap();
    assert!(uki_cmdline(&r.old_sig, dir.path()).ends_with("imgctl.rebuild=2"));
    assert_eq!(uki_cmdline(&r.signed, dir.path()), r.cmdline);
    let predict = |uki: &Path| -> serde_json::Value {
        serde_json::from_slice(&common::run_ok(
            common::imgctl()
                .arg("predict-pcrs")
                .arg(uki)
                .args(["--phase", READY, "--bank", "sha256", "--json"]),
        ))
        .unwrap()
    };
    let rebuilt = predict(&r.signed)["sha256"][0]["hash"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(
        rebuilt,
        predict(&b.uki())["sha256"][0]["hash"].as_str().unwrap()
    );
    for (name, boot) in [("old .pcrsig", t), ("new .pcrsig", s)] {
        assert_eq!(boot.pcrs()["sha256"][&11], rebuilt, "{name}: PCR 11");
        let report = var_report(&boot.capture);
        assert_eq!(
            report.get("mount").map(String::as_str),
            Some("/dev/mapper/var ext4"),
            "{name}: {report:?}"
        );
        assert_eq!(report.get("luks-uuid"), Some(&uuid), "{name}");
        assert_eq!(report.get("first-boot-id"), first.get("boot-id"), "{name}");
    }
    // The old signature: the TPM refuses, the recovery key opens /var.
    let report = var_report(&t.capture);
    let journal = String::from_utf8(var_report_b64(&report, "journal")).unwrap();
    assert!(
        journal.contains("falling back to traditional unlocking"),
        "{journal}"
    );
    let meta: serde_json::Value = serde_json::from_slice(&common::run_ok(
        Command::new("cryptsetup")
            .args(["luksDump", "--dump-json-metadata"])
            .arg(&b.var_partition),
    ))
    .unwrap();
    let recovery_slot = meta["tokens"]
        .as_object()
        .unwrap()
        .values()
        .find(|t| t["type"] == "systemd-recovery")
        .and_then(|t| t["keyslots"][0].as_str())
        .unwrap_or_else(|| panic!("no recovery key slot: {meta}"))
        .to_owned();
    assert_eq!(
        t.unlock_records(),
        [format!(
            "cryptsetup-keyslot:var:{uuid}:recovery:{recovery_slot}"
        )],
        "{journal}"
    );
    // The new signature: the TPM unlocks, no password.
    let report = var_report(&s.capture);
    var_journal_of_a_tpm_unlock(&report);
    assert_eq!(
        s.unlock_records(),
        [format!("cryptsetup-keyslot:var:{uuid}:tpm2:0")]
    );
}

/// /var unlocked with the recovery key, for real: `imgctl audit` on the userspace log of the
/// boot whose TPM refused reports the break-glass unlock (exit 1: volume `var`, mechanism
/// `recovery`, the recovery key's slot) and the log is consistent with that guest's PCRs (the
/// record is what its TPM saw, not an edit); on the boot the TPM unlocked it reports nothing
/// (exit 0).
#[test]
fn audit_reports_the_recovery_key_unlock_of_a_real_boot_and_not_the_tpm_unlock() {
    let Some(t) = tamper_boot() else { return };
    let Some(s) = resigned_boot() else { return };
    let (code, text) = t.audit();
    assert_eq!(code, Some(1), "the recovery unlock is break-glass: {text}");
    let event = the_recovery_unlock_of_var(&break_glass_events(&text));
    assert!(
        t.unlock_records()[0].ends_with(&format!(":recovery:{}", event["slot"])),
        "{text}"
    );
    let (code, text) = s.audit();
    assert_eq!(code, Some(0), "the TPM unlock is routine: {text}");
}

/// Another sysext than the one published (PCR 13): the boot with an unpublished
/// `demo-sysext.raw` beside the UKI on the ESP is rejected by `verify --log` at the PCR 13
/// event, "not published"; the boot with the published one (and the published rebuilt UKI) is
/// accepted with PCR 4, 11 and 13 checked.
#[test]
fn verify_log_rejects_an_unpublished_sysext_on_the_esp_and_accepts_the_published_one() {
    let Some(r) = rebuild() else { return };
    let Some(t) = tamper_boot() else { return };
    let Some(s) = resigned_boot() else { return };
    let dir = tempfile::tempdir().unwrap();
    let verify = |boot: &EspBoot, pcrs: &str| {
        boot.assert_done();
        let policy = dir.path().join("policy.yaml");
        std::fs::write(&policy, format!("pcrs: {pcrs}\nbanks: [sha1, sha256]\n")).unwrap();
        let (code, _, all) = verify_capture(
            &boot.capture,
            &policy,
            &[
                "--log".as_ref(),
                r.log.as_os_str(),
                "--vkey".as_ref(),
                r.vkey.as_ref(),
            ],
        );
        (code, all)
    };
    let (code, text) = verify(t, "[13]");
    assert_eq!(code, Some(1), "another sysext: {text}");
    assert!(text.starts_with("REJECT"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("not published in the log") && l.contains("PCR 13")),
        "{text}"
    );
    let (code, text) = verify(s, "[4, 11, 13]");
    assert_eq!(code, Some(0), "the published sysext: {text}");
    assert!(
        text.contains("PCR 13 sha256: 1 published stub event"),
        "{text}"
    );
}

/// Extension activation is measured and checked (issue 17 item 3, issue 13 item 3). In the
/// boots with a sysext beside the UKI on the ESP, the image hands it to systemd-sysext 257
/// (imgctl-sysext-esp.service), which merges it with dm-verity, and measures the merged image
/// into PCR 15 in the format of systemd's `verity` NvPCR (imgctl-sysext-measure): exactly one
/// `verity:demo-sysext:<root hash>:` record, whose root hash is the one `imgctl ext build`
/// gave that image (the published one, and the other one), and the guest's PCR 15 equals the
/// replay of the userspace log holding it; the first boot (no sysext) has none. `verify --log`
/// with PCR 15 checked, on the boot with the published sysext: the OS build's log (the
/// image's PCR 15 templates) with the booted rebuilt UKI and the sysext published in it too
/// accepts, the activation resolved to that record; without the sysext it rejects, naming
/// the activation record, the image and its root hash as not published.
#[test]
fn an_activated_sysext_is_measured_into_pcr15_and_resolved_to_its_published_root_hash() {
    let Some(b) = os_boot() else { return };
    let Some(r) = rebuild() else { return };
    let Some(t) = tamper_boot() else { return };
    let Some(s) = resigned_boot() else { return };
    let root_hash = |sysext: &Path| -> String {
        let m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(sysext.with_file_name("manifest.json")).unwrap())
                .unwrap();
        m["verity"]["root_hash"]
            .as_str()
            .unwrap_or_else(|| panic!("no root hash in the sysext's manifest: {m}"))
            .to_owned()
    };
    assert_ne!(root_hash(&r.sysext), root_hash(&r.other_sysext));
    let usr = format!(
        "verity:usr:{}:",
        b.image_record()["usr_root_hash"].as_str().unwrap()
    );
    assert_eq!(
        strings_starting_with(&userspace_log(b), "verity:"),
        std::slice::from_ref(&usr),
        "no sysext on the ESP: the /usr activation record alone"
    );
    for (boot, sysext) in [(t, &r.other_sysext), (s, &r.sysext)] {
        let log = boot.log();
        assert_eq!(
            strings_starting_with(&log, "verity:usr:"),
            std::slice::from_ref(&usr),
            "{}: the /usr activation record (the rebuild's /usr is the first build's)",
            boot.name
        );
        // The confext beside the UKI of the boot with the new .pcrsig, merged by
        // systemd-confext: one record with its root hash; the other boot has none.
        let confext: Vec<String> = if std::ptr::eq(boot, s) {
            vec![format!("verity:demo-confext:{}:", root_hash(&r.confext))]
        } else {
            Vec::new()
        };
        assert_eq!(
            strings_starting_with(&log, "verity:demo-confext:"),
            confext,
            "{}: the confext's activation record; the activation's journal:\n{}",
            boot.name,
            String::from_utf8_lossy(&var_report_b64(
                &capture_report(&boot.capture, "IMGCTL-SYSEXT "),
                "journal"
            ))
        );
        let want = format!("verity:demo-sysext:{}:", root_hash(sysext));
        let journal = var_report_b64(&capture_report(&boot.capture, "IMGCTL-SYSEXT "), "journal");
        assert_eq!(
            strings_starting_with(&log, "verity:demo-sysext:"),
            std::slice::from_ref(&want),
            "{}: the activation record; the activation's journal:\n{}",
            boot.name,
            String::from_utf8_lossy(&journal)
        );
        assert!(
            log.records
                .iter()
                .any(|r| r.pcr == Some(15) && r.string.as_deref() == Some(want.as_str())),
            "{}: the activation record is in PCR 15",
            boot.name
        );
        let guest = boot.pcrs();
        let replay = log.replay();
        for (bank, name) in [(HashAlg::SHA1, "sha1"), (HashAlg::SHA256, "sha256")] {
            let got = replay
                .get(&bank)
                .and_then(|m| m.get(&15))
                .map(|d| d.to_hex())
                .unwrap_or_else(|| panic!("{}: no PCR 15 {name} in the log", boot.name));
            assert_eq!(
                got, guest[name][&15],
                "{}: {name} PCR 15 vs the replay of the log with the activation record",
                boot.name
            );
        }
    }
    // The OS build's log (the image's PCR 15 templates) with the rebuilt UKI the boot started
    // appended (`log append` of its manifest, with the log's key), and a copy of that with the
    // demo sysext published too (`ext build --log`; the build is reproducible: the same root
    // hash).
    let dir = tempfile::tempdir().unwrap();
    let key = b.dir.path().join("os.key");
    // A copy of the log `from`, named `name`.
    let copy_log = |from: &Path, name: &str| -> PathBuf {
        let to = dir.path().join(name);
        common::run_ok(Command::new("cp").arg("-a").arg(from).arg(&to));
        to
    };
    // `log append LOG --entry ENTRY` with the log's key.
    let append = |log: &Path, entry: &Path| {
        common::run_ok(
            common::imgctl()
                .args(["log", "append"])
                .arg(log)
                .arg("--key")
                .arg(&key)
                .arg("--entry")
                .arg(entry),
        );
    };
    // `ext build recipes/RECIPE -o OUT --log LOG` (reproducible: SOURCE_DATE_EPOCH=0); OUT.
    let publish_ext = |recipe: &str, out: &str, log: &Path| -> PathBuf {
        let out = dir.path().join(out);
        common::run_ok(
            common::imgctl()
                .args(["ext", "build"])
                .arg(common::repo_root().join("recipes").join(recipe))
                .arg("-o")
                .arg(&out)
                .arg("--log")
                .arg(log)
                .arg("--log-key")
                .arg(&key)
                .env("SOURCE_DATE_EPOCH", "0"),
        );
        out
    };
    let plain = copy_log(&b.log, "os-log");
    append(&plain, &r.signed.with_file_name("manifest.json"));
    let with_sysext = copy_log(&plain, "os-log-sysext");
    let published = publish_ext("demo-sysext.yaml", "sysext", &with_sysext);
    assert_eq!(
        root_hash(&published.join("demo-sysext.raw")),
        root_hash(&r.sysext)
    );
    // And a copy with the demo confext published too (`ext build --log`, reproducible).
    let with_both = copy_log(&with_sysext, "os-log-sysext-confext");
    let published_confext = publish_ext("demo-confext.yaml", "confext", &with_both);
    let confext_hash = root_hash(&r.confext);
    assert_eq!(
        root_hash(&published_confext.join("demo-confext.confext.raw")),
        confext_hash
    );
    let verify = |log: &Path, pcrs: &str| {
        let policy = dir.path().join("policy.yaml");
        std::fs::write(&policy, format!("pcrs: {pcrs}\nbanks: [sha1, sha256]\n")).unwrap();
        let (code, _, all) = verify_capture(
            &s.capture,
            &policy,
            &[
                "--log".as_ref(),
                log.as_os_str(),
                "--vkey".as_ref(),
                b.vkey.as_ref(),
            ],
        );
        (code, all)
    };
    let hash = root_hash(&r.sysext);
    // Both published: PCR 12 (the stub's confext archive) and 13 (its sysext archive) resolve
    // to the published images' predictions, PCR 15 holds each activation.
    let (code, text) = verify(&with_both, "[4, 11, 12, 13, 15]");
    assert_eq!(
        code,
        Some(0),
        "the published sysext's and confext's activations: {text}"
    );
    for want in [
        format!("extension image demo-sysext activated with root hash {hash}"),
        format!("extension image demo-confext activated with root hash {confext_hash}"),
        "PCR 12 sha256: 1 published stub event".to_owned(),
        "PCR 13 sha256: 1 published stub event".to_owned(),
    ] {
        assert!(text.contains(&want), "{want}: {text}");
    }
    // The confext not published: its activation rejects, named.
    let (code, text) = verify(&with_sysext, "[4, 11, 13, 15]");
    assert_eq!(
        code,
        Some(1),
        "an activation of an unpublished confext: {text}"
    );
    assert!(text.starts_with("REJECT"), "{text}");
    assert!(
        text.lines().any(|l| l.contains("not published in the log")
            && l.contains("demo-confext")
            && l.contains(&confext_hash)
            && l.contains("PCR 15")),
        "{text}"
    );
    let (code, text) = verify(&plain, "[4, 11, 13, 15]");
    assert_eq!(
        code,
        Some(1),
        "an activation of an unpublished sysext: {text}"
    );
    assert!(text.starts_with("REJECT"), "{text}");
    assert!(
        text.lines().any(|l| l.contains("not published in the log")
            && l.contains("demo-sysext")
            && l.contains(&hash)
            && l.contains("PCR 15")),
        "{text}"
    );
    // The rebuilt UKI's record without what its `.pcrsig` signs (no `policy`), with the
    // sysext and the confext published: the UKI booted with a signed PCR policy the log does
    // not show.
    let unsigned = copy_log(&b.log, "os-log-no-policy");
    let mut record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(r.signed.with_file_name("manifest.json")).unwrap())
            .unwrap();
    assert!(
        record["policy"]["key_fingerprint_sha256"].is_string(),
        "the build's record states its policy: {record}"
    );
    record.as_object_mut().unwrap().remove("policy");
    let entry = dir.path().join("no-policy.json");
    std::fs::write(&entry, record.to_string()).unwrap();
    append(&unsigned, &entry);
    publish_ext("demo-sysext.yaml", "sysext-again", &unsigned);
    publish_ext("demo-confext.yaml", "confext-again", &unsigned);
    let (code, text) = verify(&unsigned, "[4, 11, 13, 15]");
    assert_eq!(code, Some(1), "a signed policy not published: {text}");
    let rejects: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("not published"))
        .collect();
    assert!(
        rejects.len() == 1 && rejects[0].contains("carries a signed PCR policy (.pcrsig)"),
        "{text}"
    );
}

/// A console root login records a break-glass event: in the boot where root logged in on the
/// serial console (`vm --type-after`: `root`, then the break-glass password provisioned as a
/// credential), the image's PAM hook measured `break-glass:{"actor":"root","kind":
/// "console-login",…}` into PCR 15 before the session opened (the console shows the shell's
/// prompt), and `imgctl audit` lists it beside the recovery unlock, consistent with the guest's
/// PCRs; the boots without a login (the first, the one with the new `.pcrsig`) hold no
/// break-glass record.
#[test]
fn a_root_login_on_the_serial_console_is_recorded_as_break_glass_and_plain_boots_have_none() {
    let Some(b) = os_boot() else { return };
    let Some(t) = tamper_boot() else { return };
    let Some(s) = resigned_boot() else { return };
    t.assert_done();
    let console = String::from_utf8_lossy(&std::fs::read(t.capture.join("console.log")).unwrap())
        .into_owned();
    assert!(console.contains("root@"), "no root shell prompt: {console}");
    let (code, text) = t.audit();
    assert_eq!(code, Some(1), "{text}");
    let login = the_one_event(&break_glass_events(&text), "console-login");
    assert_eq!(login["actor"], "root");
    let reason = login["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("root login on ") && reason.ends_with("ttyS0"),
        "{reason}"
    );
    assert_eq!(login["pcr"], 15);
    for (name, log) in [
        ("the first boot", userspace_log(b)),
        ("new .pcrsig", s.log()),
    ] {
        let bg = strings_starting_with(&log, "break-glass:");
        assert!(bg.is_empty(), "{name}: {bg:?}");
    }
}

/// dm-verity guards /usr on the running system, not only at build time: on the tamper boot's
/// disk one byte of a file /usr ships (the canary, which only the capture unit reads) was
/// flipped after the build. The root hash and the tree are the build's, so nothing measured
/// differs; the guest's kernel refuses the block: the read fails with an I/O error and
/// dm-verity logs a corrupted block in the kernel's log. The boots of the untouched disk read the canary as
/// built (its sha256) with no corrupted block.
#[test]
fn a_byte_flipped_in_usr_after_the_build_is_refused_by_the_guests_kernel() {
    let Some(b) = os_boot() else { return };
    let Some(t) = tamper_boot() else { return };
    let Some(s) = resigned_boot() else { return };
    t.assert_done();
    let want = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(usr_canary()));
    for (name, capture) in [("first boot", &b.capture), (s.name.as_str(), &s.capture)] {
        let report = capture_report(capture, "IMGCTL-OS: ");
        assert_eq!(
            report.get("usr-canary").map(String::as_str),
            Some(format!("ok {want}").as_str()),
            "{name}: {report:?}"
        );
        assert_eq!(
            report.get("verity-corrupted-blocks").map(String::as_str),
            Some("0"),
            "{name}"
        );
    }
    let report = capture_report(&t.capture, "IMGCTL-OS: ");
    let read = report.get("usr-canary").cloned().unwrap_or_default();
    assert!(
        read.starts_with("failed") && read.contains("Input/output error"),
        "the flipped canary was read: {report:?}"
    );
    let corrupted: u32 = report
        .get("verity-corrupted-blocks")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    // The kernel's own account (its log, `dmesg` in the guest: dm-verity's "data block N is
    // corrupted" lines, KERN_ERR), which the command line's loglevel=3 keeps off the console.
    assert!(
        corrupted >= 1,
        "no corrupted block in the guest's kernel log: {report:?}"
    );
}
