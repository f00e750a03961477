//! `imgctl build --secureboot-key/--secureboot-certificate [--sign-kernel]` against the real
//! tools: sbverify and osslsigncode accept the UKI (and the embedded kernel), the build is
//! reproducible, the UKI is signed last (its `.pcrsig` is what `sign-pcrs` makes of the signed
//! UKI, and PCR 11 is systemd-measure 252's over the sections it carries, the signed kernel
//! included), the manifest describes the signed file, and signing changes neither PCR 11 nor
//! the Authenticode hash firmware extends into PCR 4 (what osslsigncode calculates).
//!
//! Then booting under OVMF with our PK/KEK/db enrolled (`vm --secure-boot --enroll`): the UKI
//! signed by our db key boots; unsigned, signed by another key, or signed and then modified, it
//! is refused; the guest's PCR 7 equals the replay of the firmware's log and imgctl's
//! prediction from the variable store (`predict-pcrs --pcr 7 --firmware-vars`).
#![allow(clippy::unwrap_used)] // reason: test code; a panic is a test failure

mod common;
#[path = "support/swtpm.rs"]
mod swtpm;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{imgctl, osslsigncode, require_tool, run_ok, sbverify};

const STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";
const SYSTEMD_MEASURE: &str = "/lib/systemd/systemd-measure";

fn demo_kernel() -> Option<PathBuf> {
    let k = common::repo_root().join(".cache/demo/vmlinuz");
    if k.exists() {
        Some(k)
    } else {
        common::missing("the demo kernel .cache/demo/vmlinuz (run scripts/setup.sh)");
        None
    }
}

fn peers() -> Option<PathBuf> {
    let mut ok = true;
    for (t, p) in [
        ("sbverify", "sbsigntool"),
        ("osslsigncode", "osslsigncode"),
        ("openssl", "openssl"),
        ("objcopy", "binutils"),
        (SYSTEMD_MEASURE, "systemd"),
        (STUB, "systemd-boot-efi"),
    ] {
        ok &= require_tool(t, p).is_some();
    }
    let kernel = demo_kernel();
    kernel.filter(|_| ok)
}

/// A self-signed RSA-2048 db key and certificate made by openssl.
fn db_key(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (key, crt) = (
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.crt")),
    );
    run_ok(
        Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", &format!("/CN=imgctl {name}")])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&crt),
    );
    (key, crt)
}

fn recipe(dir: &Path, kernel: &Path) -> PathBuf {
    std::fs::create_dir_all(dir.join("tree")).unwrap();
    std::fs::write(dir.join("tree/init"), b"#!/bin/sh\necho hello\n").unwrap();
    let r = dir.join("recipe.yaml");
    std::fs::write(
        &r,
        format!(
            "name: t\nversion: 1\nos-release:\n  ID: t\n  VERSION_ID: 1\nkernel: {}\n\
             initrd:\n  tree: tree\ncmdline: console=ttyS0 no_timer_check\n",
            kernel.display()
        ),
    )
    .unwrap();
    r
}

fn build(recipe: &Path, out: &Path, extra: &[&std::ffi::OsStr]) -> Vec<u8> {
    run_ok(
        imgctl()
            .arg("build")
            .arg(recipe)
            .arg("-o")
            .arg(out)
            .args(extra)
            .env("SOURCE_DATE_EPOCH", "1700000000"),
    );
    std::fs::read(out.join("t.efi")).unwrap()
}

fn section(uki: &Path, name: &str, to: &Path) -> PathBuf {
    let f = to.join(name.trim_start_matches('.'));
    run_ok(
        Command::new("objcopy")
            .args(["-O", "binary", "--only-section", name])
            .arg(uki)
            .arg(&f),
    );
    f
}

/// pcrs.json without the empty-phase entries systemd-measure does not print.
fn phased(pcrs: &serde_json::Value) -> serde_json::Value {
    let mut v = pcrs.clone();
    for (_, entries) in v.as_object_mut().unwrap() {
        entries
            .as_array_mut()
            .unwrap()
            .retain(|e| e.get("phase").is_some());
    }
    v
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn build_signs_the_kernel_first_and_the_uki_last_and_the_tools_accept_both() {
    let Some(kernel) = peers() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let r = recipe(d, &kernel);
    let (db, crt) = db_key(d, "db");
    let (pcr, _) = common::genkey(d, "pcr", common::RSA);
    let args = |sign_kernel: bool| {
        let mut a: Vec<&std::ffi::OsStr> = vec![
            "--pcr-private-key".as_ref(),
            pcr.as_os_str(),
            "--secureboot-key".as_ref(),
            db.as_os_str(),
            "--secureboot-certificate".as_ref(),
            crt.as_os_str(),
        ];
        if sign_kernel {
            a.push("--sign-kernel".as_ref());
        }
        a
    };
    let signed = build(&r, &d.join("a"), &args(true));
    assert_eq!(
        build(&r, &d.join("b"), &args(true)),
        signed,
        "same inputs, same bytes"
    );
    let uki = d.join("a/t.efi");
    assert!(sbverify(&crt, &uki), "sbverify --cert rejects the UKI");
    let (ok, calculated) = osslsigncode(&crt, &uki);
    assert!(ok, "osslsigncode verify rejects the UKI");

    // The kernel was signed before it went in: our signature after Debian's.
    let linux = section(&uki, ".linux", d);
    assert!(
        sbverify(&crt, &linux),
        "the embedded kernel is not signed by db"
    );
    let original = std::fs::read(&kernel).unwrap();
    assert_ne!(std::fs::read(&linux).unwrap()[..], original[..]);

    // Signed last: .pcrsig is what sign-pcrs makes of the signed UKI now, so nothing
    // measured changed after it was embedded.
    let resigned: serde_json::Value = serde_json::from_slice(&run_ok(
        imgctl()
            .arg("sign-pcrs")
            .arg(&uki)
            .arg("--private-key")
            .arg(&pcr),
    ))
    .unwrap();
    let pcrsig = std::fs::read(section(&uki, ".pcrsig", d)).unwrap();
    // The JSON alone (objcopy may add the section's zero padding up to its raw size).
    let end = pcrsig.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let embedded: serde_json::Value = serde_json::from_slice(&pcrsig[..end]).unwrap();
    assert_eq!(embedded, resigned);

    // PCR 11: systemd-measure 252 over the sections the UKI carries (the signed kernel).
    let mut cmd = Command::new(SYSTEMD_MEASURE);
    cmd.arg("calculate").arg("--json=short");
    for s in [".linux", ".osrel", ".cmdline", ".initrd", ".pcrpkey"] {
        let f = section(&uki, s, d);
        cmd.arg(format!("--{}={}", &s[1..], f.display()));
    }
    let expected: serde_json::Value = serde_json::from_slice(&run_ok(&mut cmd)).unwrap();
    assert_eq!(phased(&json(&d.join("a/pcrs.json"))), expected);

    // The manifest describes the signed file; its Authenticode hash (PCR 4) is osslsigncode's.
    let m = json(&d.join("a/manifest.json"));
    assert_eq!(m["uki"]["size"], signed.len() as u64);
    assert_eq!(
        m["uki"]["digests"]["sha256"].as_str().unwrap(),
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&signed))
    );
    assert_eq!(
        m["uki"]["authenticode"]["sha256"].as_str().unwrap(),
        calculated
    );
    // osslsigncode reads one WIN_CERTIFICATE only ("Corrupted attribute certificate table"
    // for the kernel with two), so it hashes Debian's kernel as shipped: the signatures are not
    // hashed, so the appended one leaves the Authenticode hash as it was.
    let (_, kernel_calculated) = osslsigncode(&crt, &kernel);
    assert_eq!(
        kernel_calculated.len(),
        64,
        "osslsigncode printed no digest"
    );
    assert_eq!(
        m["uki"]["kernel_authenticode"]["sha256"].as_str().unwrap(),
        kernel_calculated
    );
}

#[test]
fn signing_the_uki_changes_neither_pcr_11_nor_its_authenticode_hash() {
    let Some(kernel) = peers() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let r = recipe(d, &kernel);
    let (db, crt) = db_key(d, "db");
    let unsigned = build(&r, &d.join("u"), &[]);
    let signed = build(
        &r,
        &d.join("s"),
        &[
            "--secureboot-key".as_ref(),
            db.as_os_str(),
            "--secureboot-certificate".as_ref(),
            crt.as_os_str(),
        ],
    );
    assert!(sbverify(&crt, &d.join("s/t.efi")));
    assert!(!sbverify(&crt, &d.join("u/t.efi")));
    // Signing in the build equals signing the unsigned build's UKI with sign-pe.
    run_ok(
        imgctl()
            .arg("sign-pe")
            .arg(d.join("u/t.efi"))
            .arg("-o")
            .arg(d.join("resigned.efi"))
            .arg("--key")
            .arg(&db)
            .arg("--certificate")
            .arg(&crt),
    );
    assert_eq!(std::fs::read(d.join("resigned.efi")).unwrap(), signed);
    assert!(signed.starts_with(&unsigned[..0x80]), "DOS header kept");
    assert_eq!(
        json(&d.join("u/pcrs.json")),
        json(&d.join("s/pcrs.json")),
        "PCR 11 is not changed by the Secure Boot signature"
    );
    let (mu, ms) = (
        json(&d.join("u/manifest.json")),
        json(&d.join("s/manifest.json")),
    );
    assert_eq!(mu["uki"]["authenticode"], ms["uki"]["authenticode"]);
    assert_ne!(mu["uki"]["digests"], ms["uki"]["digests"]);
    let (ok, calculated) = osslsigncode(&crt, &d.join("s/t.efi"));
    assert!(ok);
    assert_eq!(
        ms["uki"]["authenticode"]["sha256"].as_str().unwrap(),
        calculated
    );
}

#[test]
fn build_refuses_a_secure_boot_key_that_is_not_the_certificates() {
    let Some(kernel) = peers() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let r = recipe(d, &kernel);
    let (db, _) = db_key(d, "db");
    let (_, other) = db_key(d, "other");
    let out = imgctl()
        .arg("build")
        .arg(&r)
        .arg("-o")
        .arg(d.join("o"))
        .arg("--secureboot-key")
        .arg(&db)
        .arg("--secureboot-certificate")
        .arg(&other)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("db.key") && err.contains("other.crt"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!d.join("o").join("t.efi").exists());
}

// ---- Booting with our keys enrolled (`imgctl vm --secure-boot --enroll DIR`) ----

/// What the Secure Boot boot tests need besides the build peers, or None (loudly; a failure
/// in CI) when something is missing.
fn boot_peers() -> Option<PathBuf> {
    let mut ok = true;
    for (t, p) in [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("swtpm", "swtpm"),
        ("mkfs.vfat", "dosfstools"),
        ("mcopy", "mtools"),
        ("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd", "ovmf"),
        ("/usr/share/OVMF/OVMF_VARS_4M.fd", "ovmf"),
        ("virt-fw-vars", "virt-firmware from PyPI (scripts/setup.sh)"),
        ("/bin/busybox", "busybox-static"),
    ] {
        ok &= require_tool(t, p).is_some();
    }
    peers().filter(|_| ok)
}

/// The demo recipe (paths made absolute, as it moves to `dir`) built into `dir/NAME` with
/// `extra` arguments; the UKI's path.
fn build_demo(dir: &Path, name: &str, extra: &[&std::ffi::OsStr]) -> PathBuf {
    let recipes = common::repo_root().join("recipes");
    let recipe = dir.join("demo.yaml");
    if !recipe.exists() {
        let text = std::fs::read_to_string(recipes.join("demo.yaml")).unwrap();
        let mut y: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        let abs = |v: &mut serde_yaml::Value| {
            *v = recipes.join(v.as_str().unwrap()).to_str().unwrap().into();
        };
        abs(&mut y["kernel"]);
        abs(&mut y["initrd"]["tree"]);
        std::fs::write(&recipe, serde_yaml::to_string(&y).unwrap()).unwrap();
    }
    let out = dir.join(name);
    run_ok(
        imgctl()
            .arg("build")
            .arg(&recipe)
            .arg("-o")
            .arg(&out)
            .args(extra)
            .env("SOURCE_DATE_EPOCH", "0"),
    );
    out.join("demo.efi")
}

/// `imgctl keygen DIR --pk-kek`: PK, KEK, db and the PCR key pair.
fn keygen(dir: &Path) -> PathBuf {
    let keys = dir.join("keys");
    run_ok(imgctl().arg("keygen").arg(&keys).args([
        "--pk-kek",
        "--common-name",
        "imgctl secure boot test",
    ]));
    keys
}

fn boot(uki: &Path, keys: &Path, tmp: &Path, capture: Option<&Path>) -> std::process::Output {
    std::fs::create_dir_all(tmp).unwrap();
    let mut cmd = imgctl();
    cmd.arg("vm")
        .arg(uki)
        .args(["--secure-boot", "--enroll"])
        .arg(keys)
        .args(["--timeout", "240", "--quiet"])
        .env("TMPDIR", tmp);
    if let Some(c) = capture {
        cmd.arg("--capture").arg(c);
    }
    cmd.output().unwrap()
}

/// A GUID as UEFI stores it (first three fields little-endian).
fn guid_bytes(guid: &str) -> Vec<u8> {
    let h = hex::decode(guid.replace('-', "")).unwrap();
    let mut out = Vec::new();
    out.extend(h[0..4].iter().rev());
    out.extend(h[4..6].iter().rev());
    out.extend(h[6..8].iter().rev());
    out.extend(&h[8..]);
    out
}

/// The owner GUID `imgctl vm --enroll` gives the certificates it enrols (src/vm.rs).
const SIGNATURE_OWNER: &str = "0f6c57a4-6e5b-4d28-9d1a-696d6763746c";
const EFI_IMAGE_SECURITY_DATABASE_GUID: &str = "d719b2cb-3d3a-4596-a3bc-dad00e67656f";

#[test]
fn a_uki_signed_with_our_db_key_boots_with_our_keys_enrolled_and_others_are_refused() {
    let Some(_) = boot_peers() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let keys = keygen(d);
    let (db, crt) = (keys.join("db.key"), keys.join("db.crt"));
    let signed = build_demo(
        d,
        "signed",
        &[
            "--secureboot-key".as_ref(),
            db.as_os_str(),
            "--secureboot-certificate".as_ref(),
            crt.as_os_str(),
        ],
    );
    let unsigned = build_demo(d, "unsigned", &[]);
    let (other_key, other_crt) = db_key(d, "other");
    let other = build_demo(
        d,
        "other",
        &[
            "--secureboot-key".as_ref(),
            other_key.as_os_str(),
            "--secureboot-certificate".as_ref(),
            other_crt.as_os_str(),
        ],
    );
    // Signed, then one byte of .cmdline changed ("panic=-1" → "panic=-2").
    let mut bytes = std::fs::read(&signed).unwrap();
    let at = bytes.windows(8).position(|w| w == b"panic=-1").unwrap();
    bytes[at + 7] = b'2';
    let modified = d.join("modified.efi");
    std::fs::write(&modified, &bytes).unwrap();
    let inspect = run_ok(imgctl().arg("inspect").arg(&modified));
    assert!(
        String::from_utf8_lossy(&inspect)
            .contains("DOES NOT VERIFY: the image hash it signs is not this image's"),
        "inspect does not say why the modified UKI is refused"
    );

    // The three refusals run beside the good boot (2 at a time: the machine has 2 cores).
    let refusals = std::thread::scope(|s| {
        let bad = s.spawn(|| {
            [
                ("unsigned", &unsigned),
                ("other", &other),
                ("modified", &modified),
            ]
            .map(|(name, uki)| (name, boot(uki, &keys, &d.join(format!("tmp-{name}")), None)))
        });
        let capture = d.join("capture");
        let good = boot(&signed, &keys, &d.join("tmp-signed"), Some(&capture));
        let err = String::from_utf8_lossy(&good.stderr);
        assert!(good.status.success(), "the signed UKI did not boot:\n{err}");
        (bad.join().unwrap(), capture)
    });
    let (bad, capture) = refusals;
    for (name, out) in bad {
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{name}: {err}");
        assert!(
            err.contains("Secure Boot rejected its signature"),
            "{name}: {err}"
        );
    }

    // PCR 7 of the good boot: the firmware log replays to what the guest's TPM showed, and its
    // authority event is the db entry we enrolled (owner GUID + our certificate), hashed.
    let guest: serde_json::Value = json(&capture.join("pcrs.json"));
    let replay: serde_json::Value = serde_json::from_slice(&run_ok(
        imgctl()
            .args(["eventlog", "replay", "--json"])
            .arg(capture.join("eventlog.bin")),
    ))
    .unwrap();
    // imgctl's prediction from the variable store the firmware started with.
    let predicted: serde_json::Value = serde_json::from_slice(&run_ok(
        imgctl()
            .arg("predict-pcrs")
            .arg(&signed)
            .args(["--pcr", "7", "--json", "--firmware-vars"])
            .arg(capture.join("firmware-vars.fd")),
    ))
    .unwrap();
    for bank in ["sha1", "sha256"] {
        assert_eq!(replay[bank]["7"], guest[bank]["7"], "{bank} PCR 7 replayed");
        assert_eq!(
            predicted[bank]["7"], guest[bank]["7"],
            "{bank} PCR 7 predicted"
        );
    }
    // Another db key: no entry vouches for the UKI, so no prediction (and no boot).
    let out = imgctl()
        .arg("predict-pcrs")
        .arg(&other)
        .args(["--pcr", "7", "--firmware-vars"])
        .arg(capture.join("firmware-vars.fd"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no X.509 entry of db"));
    let log: serde_json::Value = serde_json::from_slice(&run_ok(
        imgctl()
            .args(["eventlog", "show", "--json"])
            .arg(capture.join("eventlog.bin")),
    ))
    .unwrap();
    let pcr7: Vec<&serde_json::Value> = log["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["pcr"] == 7)
        .collect();
    let kinds: Vec<&str> = pcr7.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "EV_EFI_VARIABLE_DRIVER_CONFIG",
            "EV_EFI_VARIABLE_DRIVER_CONFIG",
            "EV_EFI_VARIABLE_DRIVER_CONFIG",
            "EV_EFI_VARIABLE_DRIVER_CONFIG",
            "EV_EFI_VARIABLE_DRIVER_CONFIG",
            "EV_SEPARATOR",
            "EV_EFI_VARIABLE_AUTHORITY"
        ],
        "SecureBoot, PK, KEK, db, dbx, separator, the db authority"
    );
    let der = run_ok(
        Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(&crt),
    );
    let mut want = guid_bytes(EFI_IMAGE_SECURITY_DATABASE_GUID);
    want.extend(2u64.to_le_bytes());
    want.extend(((16 + der.len()) as u64).to_le_bytes());
    want.extend(b"d\0b\0");
    want.extend(guid_bytes(SIGNATURE_OWNER));
    want.extend(&der);
    let authority = pcr7[6];
    assert_eq!(authority["data"].as_str().unwrap(), hex::encode(&want));
    assert_eq!(
        authority["digests"]["sha256"].as_str().unwrap(),
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&want))
    );
    assert!(pcr7[0]["description"]
        .as_str()
        .unwrap()
        .ends_with("SecureBoot = 1"));
    pcrlock_agrees(&capture, &pcr7, &predicted, &guest);
}

/// A db entry that is a CA: the UKI is signed by a leaf the enrolled db certificate issued
/// (openssl makes both); OVMF boots it and logs the CA's db entry as the authority, and imgctl
/// predicts that PCR 7.
#[test]
fn a_uki_signed_by_a_leaf_of_the_enrolled_db_ca_boots_and_pcr_7_names_the_ca() {
    let Some(_) = boot_peers() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let keys = keygen(d);
    let chain = d.join("chain");
    std::fs::create_dir_all(&chain).unwrap();
    for f in ["PK.crt", "KEK.crt"] {
        std::fs::copy(keys.join(f), chain.join(f)).unwrap();
    }
    let (ca_key, ca_crt) = (d.join("ca.key"), chain.join("db.crt"));
    run_ok(
        Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=imgctl test db CA"])
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign,digitalSignature"])
            .arg("-keyout")
            .arg(&ca_key)
            .arg("-out")
            .arg(&ca_crt),
    );
    let (leaf_key, leaf_csr, leaf_crt) =
        (d.join("leaf.key"), d.join("leaf.csr"), d.join("leaf.crt"));
    run_ok(
        Command::new("openssl")
            .args(["req", "-new", "-newkey", "rsa:2048", "-nodes"])
            .args(["-subj", "/CN=imgctl test leaf"])
            .arg("-keyout")
            .arg(&leaf_key)
            .arg("-out")
            .arg(&leaf_csr),
    );
    run_ok(
        Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-set_serial", "7", "-in"])
            .arg(&leaf_csr)
            .arg("-CA")
            .arg(&ca_crt)
            .arg("-CAkey")
            .arg(&ca_key)
            .arg("-out")
            .arg(&leaf_crt),
    );
    let signed = build_demo(
        d,
        "leaf",
        &[
            "--secureboot-key".as_ref(),
            leaf_key.as_os_str(),
            "--secureboot-certificate".as_ref(),
            leaf_crt.as_os_str(),
        ],
    );
    let capture = d.join("capture");
    let out = boot(&signed, &chain, &d.join("tmp"), Some(&capture));
    assert!(
        out.status.success(),
        "the UKI signed by the db CA's leaf did not boot:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let guest: serde_json::Value = json(&capture.join("pcrs.json"));
    let predicted: serde_json::Value = serde_json::from_slice(&run_ok(
        imgctl()
            .arg("predict-pcrs")
            .arg(&signed)
            .args(["--pcr", "7", "--json", "--firmware-vars"])
            .arg(capture.join("firmware-vars.fd")),
    ))
    .unwrap();
    for bank in ["sha1", "sha256"] {
        assert_eq!(
            predicted[bank]["7"], guest[bank]["7"],
            "{bank} PCR 7 predicted"
        );
    }
    // The firmware's authority event is the CA's db entry, not the leaf.
    let log: serde_json::Value = serde_json::from_slice(&run_ok(
        imgctl()
            .args(["eventlog", "show", "--json"])
            .arg(capture.join("eventlog.bin")),
    ))
    .unwrap();
    let authority: Vec<&serde_json::Value> = log["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["pcr"] == 7 && e["type"] == "EV_EFI_VARIABLE_AUTHORITY")
        .collect();
    assert_eq!(authority.len(), 1);
    let der = run_ok(
        Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(&ca_crt),
    );
    let mut want = guid_bytes(EFI_IMAGE_SECURITY_DATABASE_GUID);
    want.extend(2u64.to_le_bytes());
    want.extend(((16 + der.len()) as u64).to_le_bytes());
    want.extend(b"d\0b\0");
    want.extend(guid_bytes(SIGNATURE_OWNER));
    want.extend(&der);
    assert_eq!(authority[0]["data"].as_str().unwrap(), hex::encode(&want));
}

// ---- systemd-pcrlock 257 (Debian 13 chroot) fed the enrolled guest's state ----

const T257_PCRLOCK: &str = "/usr/lib/systemd/systemd-pcrlock";
const EFI_GLOBAL_VARIABLE_GUID: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";

/// Runs `systemd-pcrlock VERB --pcrlock=/tmp/out.pcrlock` of the Debian 13 chroot in a private
/// mount namespace, where /sys is a tmpfs whose firmware/efi/efivars holds the files of
/// `efivars` (efivarfs-shaped: 4-byte attributes, then the data) and /tmp a tmpfs holding the
/// files of `tmp`; `env` is passed to it. pcrlock 257 reads the variables with
/// `efi_get_variable()` from /sys/firmware/efi/efivars (src/basic/efivars.c, no override) and
/// the firmware log from $SYSTEMD_MEASURE_LOG_FIRMWARE. Returns the .pcrlock JSON.
fn pcrlock(verb: &str, efivars: &Path, tmp: &Path, env: &[(&str, String)]) -> serde_json::Value {
    let chroot = common::repo_root().join(".cache/trixie-257");
    let script = r#"set -e
C="$1"; V="$2"; T="$3"; shift 3
mount -t tmpfs none "$C/sys"
mkdir -p "$C/sys/firmware/efi/efivars"
cp -R "$V"/. "$C/sys/firmware/efi/efivars/"
mount -t tmpfs none "$C/tmp"
cp -R "$T"/. "$C/tmp/"
chroot "$C" env "$@" --pcrlock=/tmp/out.pcrlock
cat "$C/tmp/out.pcrlock""#;
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        "sh",
    ])
    .arg(&chroot)
    .arg(efivars)
    .arg(tmp);
    for (k, v) in env {
        cmd.arg(format!("{k}={v}"));
    }
    cmd.args([T257_PCRLOCK, verb]);
    serde_json::from_slice(&run_ok(&mut cmd)).unwrap()
}

/// sha1 and sha256 digests of each record of a .pcrlock file (all PCR 7).
fn pcrlock_digests(lock: &serde_json::Value) -> Vec<serde_json::Map<String, serde_json::Value>> {
    lock["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["pcr"], 7);
            r["digests"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| {
                    (
                        d["hashAlg"].as_str().unwrap().to_owned(),
                        d["digest"].clone(),
                    )
                })
                .collect()
        })
        .collect()
}

/// `systemd-pcrlock lock-secureboot-policy` over the guest's enrolled variables (read out of
/// the captured store by virt-fw-vars, written as efivarfs files; SecureBoot = 1 as the
/// booted guest's runtime variable) and `lock-secureboot-authority` over the guest's firmware
/// log give the PCR 7 events the guest's firmware logged, and, with the separator, the PCR 7
/// the guest showed and imgctl predicted. pcrlock checks the log against a TPM's PCR 7 before
/// it trusts it: a swtpm whose PCR 7 is extended with the log's PCR 7 digests stands in for
/// the guest's TPM (the log replaying to the guest's PCR 7 is checked above).
fn pcrlock_agrees(
    capture: &Path,
    log_pcr7: &[&serde_json::Value],
    predicted: &serde_json::Value,
    guest: &serde_json::Value,
) {
    let chroot = common::repo_root().join(".cache/trixie-257");
    if !chroot.join(T257_PCRLOCK.trim_start_matches('/')).exists() {
        common::missing(
            "the Debian 13 chroot .cache/trixie-257 with systemd-pcrlock (scripts/setup.sh)",
        );
        return;
    }
    if require_tool("tpm2_pcrextend", "tpm2-tools").is_none()
        || require_tool("unshare", "util-linux").is_none()
    {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let efivars = work.path().join("efivars");
    let tmp = work.path().join("tmp");
    std::fs::create_dir_all(&efivars).unwrap();
    std::fs::create_dir_all(&tmp).unwrap();
    let vars_json = work.path().join("vars.json");
    run_ok(
        Command::new("virt-fw-vars")
            .arg("-i")
            .arg(capture.join("firmware-vars.fd"))
            .arg("--output-json")
            .arg(&vars_json),
    );
    let vars = json(&vars_json);
    let mut written = Vec::new();
    for v in vars["variables"].as_array().unwrap() {
        let name = v["name"].as_str().unwrap();
        if !["PK", "KEK", "db", "dbx"].contains(&name) {
            continue;
        }
        let mut file = (v["attr"].as_u64().unwrap() as u32).to_le_bytes().to_vec();
        file.extend(hex::decode(v["data"].as_str().unwrap()).unwrap());
        std::fs::write(
            efivars.join(format!("{name}-{}", v["guid"].as_str().unwrap())),
            file,
        )
        .unwrap();
        written.push(name.to_owned());
    }
    written.sort();
    assert_eq!(
        written,
        ["KEK", "PK", "db", "dbx"],
        "the enrolled store's variables"
    );
    // EFI_VARIABLE_BOOTSERVICE_ACCESS | RUNTIME_ACCESS, 1: what the booted guest's efivarfs shows.
    let mut sb = 6u32.to_le_bytes().to_vec();
    sb.push(1);
    std::fs::write(
        efivars.join(format!("SecureBoot-{EFI_GLOBAL_VARIABLE_GUID}")),
        sb,
    )
    .unwrap();
    let policy = pcrlock_digests(&pcrlock("lock-secureboot-policy", &efivars, &tmp, &[]));

    std::fs::copy(capture.join("eventlog.bin"), tmp.join("eventlog.bin")).unwrap();
    let tpm = swtpm::Swtpm::start_tcp();
    let port = tpm.port.unwrap();
    for e in log_pcr7 {
        let digests: Vec<String> = e["digests"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(bank, d)| format!("{bank}={}", d.as_str().unwrap()))
            .collect();
        run_ok(
            Command::new("tpm2_pcrextend")
                .arg(format!("7:{}", digests.join(",")))
                .env(
                    "TPM2TOOLS_TCTI",
                    format!("swtpm:host=127.0.0.1,port={port}"),
                ),
        );
    }
    let authority = pcrlock_digests(&pcrlock(
        "lock-secureboot-authority",
        &efivars,
        &tmp,
        &[
            ("SYSTEMD_MEASURE_LOG_FIRMWARE", "/tmp/eventlog.bin".into()),
            (
                "SYSTEMD_TPM2_DEVICE",
                format!("swtpm:host=127.0.0.1,port={port}"),
            ),
        ],
    ));
    assert_eq!(policy.len(), 5, "SecureBoot, PK, KEK, db, dbx");
    assert_eq!(authority.len(), 1, "one authority: our db certificate");
    for bank in ["sha1", "sha256"] {
        for (i, record) in policy.iter().chain(&authority).enumerate() {
            let logged = if i < 5 { log_pcr7[i] } else { log_pcr7[6] };
            assert_eq!(
                record[bank], logged["digests"][bank],
                "{bank}: pcrlock record {i} is not the guest firmware's event"
            );
        }
        // pcrlock's records, with the separator between them, replay to imgctl's PCR 7.
        let alg: imgctl_measure::HashAlg = bank.parse().unwrap();
        let mut pcr = vec![0u8; alg.digest_size().unwrap()];
        let separator = alg.hash(&[0u8; 4]).unwrap();
        let mut extend = |d: &[u8]| {
            let mut m = pcr.clone();
            m.extend_from_slice(d);
            pcr = alg.hash(&m).unwrap().as_bytes().to_vec();
        };
        for r in &policy {
            extend(&hex::decode(r[bank].as_str().unwrap()).unwrap());
        }
        extend(separator.as_bytes());
        for r in &authority {
            extend(&hex::decode(r[bank].as_str().unwrap()).unwrap());
        }
        eprintln!(
            "systemd-pcrlock 257 records replay to PCR 7 {bank} = {}",
            hex::encode(&pcr)
        );
        assert_eq!(
            predicted[bank]["7"].as_str().unwrap(),
            hex::encode(&pcr),
            "{bank}: pcrlock's PCR 7 vs imgctl's prediction"
        );
        assert_eq!(
            guest[bank]["7"].as_str().unwrap(),
            hex::encode(&pcr),
            "{bank}: pcrlock's PCR 7 vs the guest's"
        );
    }
}

// ---- Passphrase-protected keys ----

/// `key` encrypted as PKCS#8 by openssl (`-v2 aes-256-cbc`, PBKDF2; or `-scrypt`) with the
/// passphrase in `pw`.
fn encrypt_key(key: &Path, out: &Path, pw: &Path, scrypt: bool) {
    let mut cmd = Command::new("openssl");
    cmd.args(["pkcs8", "-topk8"]);
    if scrypt {
        cmd.arg("-scrypt");
    } else {
        cmd.args(["-v2", "aes-256-cbc"]);
    }
    cmd.arg("-in")
        .arg(key)
        .arg("-out")
        .arg(out)
        .arg("-passout")
        .arg(format!("file:{}", pw.display()));
    run_ok(&mut cmd);
}

fn assert_one_line_error(out: &std::process::Output, file: &str, why: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted: {err}");
    assert!(err.contains(file) && err.contains(why), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn an_encrypted_key_signs_as_the_plain_key_with_its_passphrase_file_and_fails_clearly_without() {
    if peers().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (db, crt) = db_key(d, "db");
    let (pcr, _) = common::genkey(d, "pcr", common::RSA);
    let pw = d.join("pw");
    std::fs::write(&pw, "correct horse\n").unwrap();
    let wrong = d.join("wrong");
    std::fs::write(&wrong, "battery staple\n").unwrap();
    let uki = d.join("stub.efi");
    std::fs::copy(STUB, &uki).unwrap();
    for scrypt in [false, true] {
        let (db_enc, pcr_enc) = (d.join("db.enc"), d.join("pcr.enc"));
        encrypt_key(&db, &db_enc, &pw, scrypt);
        encrypt_key(&pcr, &pcr_enc, &pw, scrypt);
        let sign_pe = |key: &Path, out: &str, pass: Option<&Path>| {
            let mut cmd = imgctl();
            cmd.arg("sign-pe")
                .arg(&uki)
                .arg("-o")
                .arg(d.join(out))
                .arg("--key")
                .arg(key)
                .arg("--certificate")
                .arg(&crt)
                .stdin(std::process::Stdio::null());
            if let Some(p) = pass {
                cmd.arg("--key-passphrase-file").arg(p);
            }
            cmd.output().unwrap()
        };
        assert!(sign_pe(&db, "plain.efi", None).status.success());
        let o = sign_pe(&db_enc, "enc.efi", Some(&pw));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(
            std::fs::read(d.join("enc.efi")).unwrap(),
            std::fs::read(d.join("plain.efi")).unwrap(),
            "scrypt {scrypt}: RSA PKCS#1 v1.5 is deterministic: same key, same bytes"
        );
        assert!(sbverify(&crt, &d.join("enc.efi")));
        // No passphrase: a clear error and no prompt (stdin is not a terminal).
        assert_one_line_error(
            &sign_pe(&db_enc, "x.efi", None),
            "db.enc",
            "--key-passphrase-file",
        );
        assert_one_line_error(
            &sign_pe(&db_enc, "x.efi", Some(&wrong)),
            "db.enc",
            "cannot decrypt",
        );
        assert!(!d.join("x.efi").exists());

        let sign_pcrs = |key: &Path, pass: Option<&Path>| {
            let mut cmd = imgctl();
            cmd.arg("sign-pcrs")
                .arg(&uki)
                .arg("--private-key")
                .arg(key)
                .stdin(std::process::Stdio::null());
            if let Some(p) = pass {
                cmd.arg("--key-passphrase-file").arg(p);
            }
            cmd.output().unwrap()
        };
        let plain = sign_pcrs(&pcr, None);
        let enc = sign_pcrs(&pcr_enc, Some(&pw));
        assert!(
            enc.status.success(),
            "{}",
            String::from_utf8_lossy(&enc.stderr)
        );
        assert_eq!(enc.stdout, plain.stdout);
        assert_one_line_error(
            &sign_pcrs(&pcr_enc, None),
            "pcr.enc",
            "--key-passphrase-file",
        );
    }
}

#[test]
fn build_takes_encrypted_pcr_and_secure_boot_keys_with_one_passphrase_file() {
    let Some(kernel) = peers() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let r = recipe(d, &kernel);
    let (db, crt) = db_key(d, "db");
    let (pcr, _) = common::genkey(d, "pcr", common::RSA);
    let pw = d.join("pw");
    std::fs::write(&pw, "correct horse\n").unwrap();
    let (db_enc, pcr_enc) = (d.join("db.enc"), d.join("pcr.enc"));
    encrypt_key(&db, &db_enc, &pw, false);
    encrypt_key(&pcr, &pcr_enc, &pw, false);
    let args = |p: &PathBuf, s: &PathBuf| -> Vec<std::ffi::OsString> {
        vec![
            "--pcr-private-key".into(),
            p.into(),
            "--secureboot-key".into(),
            s.into(),
            "--secureboot-certificate".into(),
            crt.clone().into(),
        ]
    };
    let plain_args = args(&pcr, &db);
    let plain = build(
        &r,
        &d.join("plain"),
        &plain_args.iter().map(|a| a.as_os_str()).collect::<Vec<_>>(),
    );
    let mut enc_args = args(&pcr_enc, &db_enc);
    enc_args.extend(["--key-passphrase-file".into(), pw.clone().into()]);
    let enc = build(
        &r,
        &d.join("enc"),
        &enc_args.iter().map(|a| a.as_os_str()).collect::<Vec<_>>(),
    );
    assert_eq!(enc, plain);
    enc_args.truncate(6);
    let out = imgctl()
        .arg("build")
        .arg(&r)
        .arg("-o")
        .arg(d.join("none"))
        .args(&enc_args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_one_line_error(&out, "pcr.enc", "--key-passphrase-file");
    assert!(!d.join("none/t.efi").exists());
}

#[test]
fn on_a_terminal_the_passphrase_is_asked_for() {
    if peers().is_none() || require_tool("script", "bsdutils").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (db, crt) = db_key(d, "db");
    let pw = d.join("pw");
    std::fs::write(&pw, "correct horse\n").unwrap();
    let db_enc = d.join("db.enc");
    encrypt_key(&db, &db_enc, &pw, false);
    let imgctl_bin = env!("CARGO_BIN_EXE_imgctl");
    let sign = |key: &Path, out: &Path| {
        format!(
            "{imgctl_bin} sign-pe {STUB} -o {} --key {} --certificate {}",
            out.display(),
            key.display(),
            crt.display()
        )
    };
    run_ok(
        Command::new("sh")
            .arg("-c")
            .arg(sign(&db, &d.join("plain.efi"))),
    );
    // script(1) gives imgctl a terminal; the passphrase is typed once the prompt is up.
    let out = run_ok(Command::new("sh").arg("-c").arg(format!(
        "(sleep 1; echo 'correct horse') | script -qec '{}' /dev/null",
        sign(&db_enc, &d.join("prompted.efi"))
    )));
    assert!(
        String::from_utf8_lossy(&out).contains("Passphrase for"),
        "no prompt: {}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(
        std::fs::read(d.join("prompted.efi")).unwrap(),
        std::fs::read(d.join("plain.efi")).unwrap()
    );
}
