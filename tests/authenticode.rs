//! `imgctl_measure::authenticode` against osslsigncode: sign with sbsign, and osslsigncode's
//! "Calculated message digest" must equal our hash of the signed file (certificate table
//! excluded) and of the unsigned file padded to 8 bytes, as sbsign pads it before signing
//! (reference systemd.md §5.2, E6).
#![allow(clippy::unwrap_used)] // reason: test code; a panic is a test failure

mod common;

use std::path::Path;
use std::process::Command;

use imgctl_measure::authenticode::authenticode_digests;
use imgctl_measure::{HashAlg, PeFile};

const STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";

fn sha256(image: &[u8]) -> String {
    let pe = PeFile::parse(image).unwrap();
    authenticode_digests(&pe, &[HashAlg::SHA256]).unwrap()[0].to_hex()
}

/// Signs `unsigned` with a fresh self-signed key; returns osslsigncode's calculated digest
/// (lower-case hex) and the signed bytes.
fn sign_and_verify(dir: &Path, unsigned: &Path) -> (String, Vec<u8>) {
    let (key, crt) = (dir.join("sb.key"), dir.join("sb.crt"));
    if !key.exists() {
        common::run_ok(
            Command::new("openssl")
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                ])
                .args(["-subj", "/CN=imgctl test"])
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&crt),
        );
    }
    let signed = unsigned.with_extension("signed.efi");
    common::run_ok(
        Command::new("sbsign")
            .arg("--key")
            .arg(&key)
            .arg("--cert")
            .arg(&crt)
            .arg("--output")
            .arg(&signed)
            .arg(unsigned),
    );
    // The self-signed certificate does not verify (non-zero exit); the digests still print.
    let out = Command::new("osslsigncode")
        .args(["verify", "-in"])
        .arg(&signed)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let calculated = text
        .lines()
        .find_map(|l| l.strip_prefix("Calculated message digest"))
        .and_then(|r| r.split(':').nth(1))
        .map(|h| h.trim().to_ascii_lowercase())
        .unwrap_or_else(|| panic!("no calculated digest from osslsigncode:\n{text}"));
    (calculated, std::fs::read(&signed).unwrap())
}

fn peers() -> bool {
    let mut ok = true;
    for (t, p) in [
        ("sbsign", "sbsigntool"),
        ("osslsigncode", "osslsigncode"),
        ("openssl", "openssl"),
        (STUB, "systemd-boot-efi"),
    ] {
        ok &= common::require_tool(t, p).is_some();
    }
    ok
}

#[test]
fn authenticode_matches_osslsigncode_for_an_unaligned_file_signed_by_sbsign() {
    if !peers() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The stub with 11 trailing bytes: not a multiple of 8, so sbsign adds padding.
    let mut image = std::fs::read(STUB).unwrap();
    image.extend_from_slice(b"XYZtrailing");
    assert_ne!(image.len() % 8, 0);
    let unsigned = dir.path().join("stub.efi");
    std::fs::write(&unsigned, &image).unwrap();

    let (calculated, signed) = sign_and_verify(dir.path(), &unsigned);
    assert!(PeFile::parse(&signed).unwrap().is_signed());
    assert_eq!(sha256(&signed), calculated, "signed file vs osslsigncode");

    let mut padded = image.clone();
    padded.resize(image.len().next_multiple_of(8), 0);
    assert_eq!(sha256(&padded), calculated, "unsigned, padded to 8 bytes");
    assert_ne!(
        sha256(&image),
        calculated,
        "the unpadded file hashes differently: sbsign's padding is hashed"
    );
}

#[test]
fn authenticode_of_the_demo_uki_is_unchanged_by_signing() {
    if !peers() {
        return;
    }
    if !common::repo_root().join(".cache/demo/vmlinuz").exists() {
        common::missing("the demo kernel .cache/demo/vmlinuz (run scripts/setup.sh)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    common::run_ok(
        common::imgctl()
            .args(["build", "-o"])
            .arg(dir.path().join("out"))
            .arg(common::repo_root().join("recipes/demo.yaml")),
    );
    let uki = dir.path().join("out/demo.efi");
    let image = std::fs::read(&uki).unwrap();
    assert_eq!(image.len() % 8, 0, "imgctl emits 8-aligned UKIs");
    let (calculated, signed) = sign_and_verify(dir.path(), &uki);
    assert_eq!(sha256(&image), calculated, "unsigned UKI vs osslsigncode");
    assert_eq!(sha256(&signed), calculated, "signed UKI vs osslsigncode");
}
