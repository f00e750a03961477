//! `imgctl build --secureboot-key/--secureboot-certificate [--sign-kernel]` against the real
//! tools: sbverify and osslsigncode accept the UKI (and the embedded kernel), the build is
//! reproducible, the UKI is signed last (its `.pcrsig` is what `sign-pcrs` makes of the signed
//! UKI, and PCR 11 is systemd-measure 252's over the sections it carries, the signed kernel
//! included), the manifest describes the signed file, and signing changes neither PCR 11 nor
//! the Authenticode hash firmware extends into PCR 4 (what osslsigncode calculates).
#![allow(clippy::unwrap_used)] // reason: test code; a panic is a test failure

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{imgctl, require_tool, run_ok};

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
             initrd:\n  tree: tree\ncmdline: console=ttyS0\n",
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

fn sbverify(crt: &Path, image: &Path) -> bool {
    Command::new("sbverify")
        .arg("--cert")
        .arg(crt)
        .arg(image)
        .output()
        .unwrap()
        .status
        .success()
}

/// osslsigncode's verdict and its "Calculated message digest" (the Authenticode SHA-256).
fn osslsigncode(crt: &Path, image: &Path) -> (bool, String) {
    let out = Command::new("osslsigncode")
        .args(["verify", "-CAfile"])
        .arg(crt)
        .arg("-in")
        .arg(image)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let calculated = text
        .lines()
        .find_map(|l| l.strip_prefix("Calculated message digest"))
        .and_then(|r| r.split(':').nth(1))
        .map(|h| h.trim().to_ascii_lowercase())
        .unwrap_or_default();
    (
        out.status.success() && text.contains("Succeeded"),
        calculated,
    )
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
    let embedded: serde_json::Value =
        serde_json::from_slice(pcrsig.strip_suffix(&[0]).unwrap()).unwrap();
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
