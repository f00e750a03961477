//! `imgctl sign-pe` against the real tools: sbverify and osslsigncode accept the signatures,
//! the Authenticode hash firmware measures is what osslsigncode calculates, signing is
//! reproducible, `--replace` and `--append` do what they say, and the result differs from
//! sbsign 0.9.4's only where sbsign writes the clock (signingTime) and S/MIME capabilities.
#![allow(clippy::unwrap_used)] // reason: test code; a panic is a test failure

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{osslsigncode, sbverify};
use imgctl_measure::authenticode::authenticode_digests;
use imgctl_measure::authenticode_sign::{certificate_table, spc_indirect_data_sha256};
use imgctl_measure::{HashAlg, PeFile};

const STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";

fn peers() -> bool {
    let mut ok = true;
    for (t, p) in [
        ("sbsign", "sbsigntool"),
        ("sbverify", "sbsigntool"),
        ("osslsigncode", "osslsigncode"),
        ("openssl", "openssl"),
        (STUB, "systemd-boot-efi"),
    ] {
        ok &= common::require_tool(t, p).is_some();
    }
    ok
}

fn sha256(image: &[u8]) -> [u8; 32] {
    let pe = PeFile::parse(image).unwrap();
    authenticode_digests(&pe, &[HashAlg::SHA256]).unwrap()[0]
        .as_bytes()
        .try_into()
        .unwrap()
}

/// A self-signed RSA-2048 db key and certificate made by openssl.
fn db_key(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (key, crt) = (
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.crt")),
    );
    common::run_ok(
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

fn sign_pe(input: &Path, output: &Path, key: &Path, crt: &Path, extra: &[&str]) -> Output {
    common::imgctl()
        .arg("sign-pe")
        .arg(input)
        .arg("-o")
        .arg(output)
        .arg("--key")
        .arg(key)
        .arg("--certificate")
        .arg(crt)
        .args(extra)
        .output()
        .unwrap()
}

fn sign_ok(input: &Path, output: &Path, key: &Path, crt: &Path, extra: &[&str]) -> Vec<u8> {
    let out = sign_pe(input, output, key, crt, extra);
    assert!(
        out.status.success(),
        "imgctl sign-pe {extra:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(output).unwrap()
}

/// osslsigncode's "Message digest" of the authenticated attributes (what the signer signed).
fn signed_message_digest(crt: &Path, image: &Path) -> String {
    let out = Command::new("osslsigncode")
        .args(["verify", "-CAfile"])
        .arg(crt)
        .arg("-in")
        .arg(image)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix("Message digest:"))
        .map(|h| h.trim().to_ascii_lowercase())
        .unwrap()
}

#[test]
fn sign_pe_is_accepted_by_sbverify_and_osslsigncode_and_keeps_the_authenticode_hash() {
    if !peers() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (key, crt) = db_key(d, "db");
    // The stub as shipped (83297 bytes: not a multiple of 8) and padded to 8 bytes.
    let unaligned = std::fs::read(STUB).unwrap();
    assert_ne!(unaligned.len() % 8, 0);
    let mut aligned = unaligned.clone();
    aligned.resize(unaligned.len().next_multiple_of(8), 0);
    for (name, image) in [("unaligned", &unaligned), ("aligned", &aligned)] {
        let input = d.join(format!("{name}.efi"));
        std::fs::write(&input, image).unwrap();
        let out = d.join(format!("{name}.signed.efi"));
        let signed = sign_ok(&input, &out, &key, &crt, &[]);
        assert!(sbverify(&crt, &out), "sbverify --cert rejects {name}");
        let (ok, calculated) = osslsigncode(&crt, &out);
        assert!(ok, "osslsigncode verify rejects {name}");
        // What firmware measures into PCR 4 for the signed image is the hash of the unsigned
        // image padded to 8 bytes, and osslsigncode calculates the same.
        assert_eq!(hex::encode(sha256(&signed)), calculated, "{name}");
        assert_eq!(sha256(&signed), sha256(&aligned), "{name}");
        let pe = PeFile::parse(&signed).unwrap();
        let table = certificate_table(&pe).unwrap();
        assert_eq!(table.len(), 1);
        assert_eq!((table[0].revision, table[0].certificate_type), (0x0200, 2));
        assert_eq!(table[0].offset % 8, 0);
        assert_eq!(signed.len() % 8, 0);
        // Same inputs, same bytes.
        let again = sign_ok(
            &input,
            &d.join(format!("{name}.again.efi")),
            &key,
            &crt,
            &[],
        );
        assert!(again == signed, "signing {name} twice gave different bytes");
    }
    assert_eq!(
        sha256(&aligned),
        sha256(
            &unaligned
                .iter()
                .chain([0u8; 7].iter())
                .copied()
                .collect::<Vec<_>>()
        )
    );
    assert_ne!(
        sha256(&unaligned),
        sha256(&aligned),
        "the padding is hashed"
    );
}

#[test]
fn sign_pe_refuses_a_signed_image_unless_told_and_replace_equals_signing_the_unsigned_one() {
    if !peers() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (key, crt) = db_key(d, "db");
    let (other_key, other_crt) = db_key(d, "other");
    let stub = Path::new(STUB);
    let once = d.join("once.efi");
    let signed = sign_ok(stub, &once, &key, &crt, &[]);

    let refused = sign_pe(&once, &d.join("twice.efi"), &key, &crt, &[]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("once.efi") && err.contains("already signed"),
        "{err}"
    );
    assert!(!d.join("twice.efi").exists(), "no output on failure");

    // --replace: the same bytes as signing the unsigned image, even when the signature it
    // drops was made by another key (and by sbsign).
    let replaced = sign_ok(&once, &d.join("replaced.efi"), &key, &crt, &["--replace"]);
    assert!(
        replaced == signed,
        "--replace differs from signing the unsigned image"
    );
    let by_sbsign = d.join("sbsign-other.efi");
    common::run_ok(
        Command::new("sbsign")
            .arg("--key")
            .arg(&other_key)
            .arg("--cert")
            .arg(&other_crt)
            .arg("--output")
            .arg(&by_sbsign)
            .arg(stub),
    );
    let replaced = sign_ok(
        &by_sbsign,
        &d.join("replaced2.efi"),
        &key,
        &crt,
        &["--replace"],
    );
    assert!(replaced == signed, "--replace of sbsign's signature");
    assert!(sbverify(&crt, &d.join("replaced2.efi")));
    assert!(!sbverify(&other_crt, &d.join("replaced2.efi")));

    // --append: two WIN_CERTIFICATEs, both listed by sbverify, each verifying with its own
    // certificate; the Authenticode hash is unchanged.
    let appended_path = d.join("appended.efi");
    let appended = sign_ok(&once, &appended_path, &other_key, &other_crt, &["--append"]);
    let list = common::run_ok(Command::new("sbverify").arg("--list").arg(&appended_path));
    let list = String::from_utf8_lossy(&list);
    assert!(
        list.contains("signature 1") && list.contains("signature 2"),
        "{list}"
    );
    assert!(
        list.contains("/CN=imgctl db") && list.contains("/CN=imgctl other"),
        "{list}"
    );
    assert!(sbverify(&crt, &appended_path));
    assert!(sbverify(&other_crt, &appended_path));
    assert_eq!(sha256(&appended), sha256(&signed));
    assert!(appended.starts_with(&signed[..0xd0]));

    // A key that is not the certificate's.
    let bad = sign_pe(stub, &d.join("bad.efi"), &key, &other_crt, &[]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("does not match"), "{err}");
}

#[test]
fn sign_pe_signs_the_same_content_as_sbsign() {
    if !peers() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (key, crt) = db_key(d, "db");
    let ours_path = d.join("ours.efi");
    let ours = sign_ok(Path::new(STUB), &ours_path, &key, &crt, &[]);
    let theirs_path = d.join("sbsign.efi");
    common::run_ok(
        Command::new("sbsign")
            .arg("--key")
            .arg(&key)
            .arg("--cert")
            .arg(&crt)
            .arg("--output")
            .arg(&theirs_path)
            .arg(STUB),
    );
    let theirs = std::fs::read(&theirs_path).unwrap();
    // The same Authenticode hash, and sbsign's SpcIndirectDataContent is byte for byte ours.
    assert_eq!(sha256(&ours), sha256(&theirs));
    let idc = spc_indirect_data_sha256(&sha256(&theirs));
    for (who, bytes) in [("ours", &ours), ("sbsign", &theirs)] {
        assert!(
            bytes.windows(idc.len()).any(|w| w == idc.as_slice()),
            "{who} does not carry the SpcIndirectDataContent"
        );
    }
    // The same message digest in the signed attributes (over that content).
    assert_eq!(
        signed_message_digest(&crt, &ours_path),
        signed_message_digest(&crt, &theirs_path)
    );
    // The image part is the same but for CheckSum and the certificate table's size.
    let pe = PeFile::parse(&ours).unwrap();
    let start = certificate_table(&pe).unwrap()[0].offset;
    assert_eq!(
        start,
        certificate_table(&PeFile::parse(&theirs).unwrap()).unwrap()[0].offset
    );
    let checksum = pe.checksum_offset();
    let dir_size = pe.data_directories_offset + 4 * 8 + 4;
    let differ: Vec<usize> = (0..start).filter(|&i| ours[i] != theirs[i]).collect();
    assert!(
        differ.iter().all(
            |&i| (checksum..checksum + 4).contains(&i) || (dir_size..dir_size + 4).contains(&i)
        ),
        "image bytes differ outside CheckSum and the table size: {differ:x?}"
    );
    // sbsign's table is longer by its signingTime and SMIMECapabilities attributes.
    assert!(theirs.len() > ours.len());
}

fn inspect_json(image: &Path) -> serde_json::Value {
    let out = common::run_ok(common::imgctl().arg("inspect").arg("--json").arg(image));
    serde_json::from_slice(&out).unwrap()
}

fn osslsigncode_verifies(crt: &Path, image: &Path) -> bool {
    osslsigncode(crt, image).0
}

#[test]
fn inspect_reports_signers_and_agrees_with_sbverify_and_osslsigncode() {
    if !peers() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (key, crt) = db_key(d, "db");
    let (other_key, other_crt) = db_key(d, "other");
    let stub = Path::new(STUB);

    // The Authenticode hash in every bank equals osslsigncode's calculated digest for a
    // signature in that algorithm, and inspect verifies osslsigncode's signatures too.
    let unsigned = inspect_json(stub);
    for bank in ["sha1", "sha256", "sha384", "sha512"] {
        let out = d.join(format!("osslsigncode-{bank}.efi"));
        common::run_ok(
            Command::new("osslsigncode")
                .args(["sign", "-h", bank, "-certs"])
                .arg(&crt)
                .arg("-key")
                .arg(&key)
                .arg("-in")
                .arg(stub)
                .arg("-out")
                .arg(&out),
        );
        let (ok, calculated) = osslsigncode(&crt, &out);
        assert!(ok, "osslsigncode -h {bank}");
        let report = inspect_json(&out);
        let ours = report["authenticode"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p[0] == bank)
            .unwrap()[1]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(ours, calculated, "{bank}");
        let sig = &report["signatures"][0];
        if bank == "sha1" {
            // osslsigncode -h sha1 signs with SHA-1 too; we refuse SHA-1 signatures, naming it.
            assert_eq!(sig["verifies"], false, "{sig}");
            assert!(sig["problem"].as_str().unwrap().contains("sha1"), "{sig}");
        } else {
            assert_eq!(sig["verifies"], true, "{bank}: {sig}");
        }
        assert_eq!(sig["digest_algorithm"], bank);
        assert_eq!(sig["signed_digest"].as_str().unwrap(), calculated);
        assert_eq!(sig["subject"], "CN=imgctl db");
        assert_eq!(sig["issuer"], "CN=imgctl db");
        let serial = common::run_ok(
            Command::new("openssl")
                .args(["x509", "-noout", "-serial", "-in"])
                .arg(&crt),
        );
        assert_eq!(
            String::from_utf8(serial).unwrap().trim(),
            format!("serial={}", sig["serial"].as_str().unwrap())
        );
    }
    assert_eq!(unsigned["signatures"].as_array().unwrap().len(), 0);

    // Ours and sbsign's verify; modified after signing, neither does, for anyone.
    let ours = d.join("ours.efi");
    let bytes = sign_ok(stub, &ours, &key, &crt, &[]);
    let by_sbsign = d.join("sbsign.efi");
    common::run_ok(
        Command::new("sbsign")
            .arg("--key")
            .arg(&key)
            .arg("--cert")
            .arg(&crt)
            .arg("--output")
            .arg(&by_sbsign)
            .arg(stub),
    );
    for p in [&ours, &by_sbsign] {
        assert_eq!(inspect_json(p)["signatures"][0]["verifies"], true);
        assert!(sbverify(&crt, p) && osslsigncode_verifies(&crt, p));
    }
    let mut tampered = bytes.clone();
    tampered[0x500] ^= 1; // inside .text
    let tampered_path = d.join("tampered.efi");
    std::fs::write(&tampered_path, &tampered).unwrap();
    let sig = &inspect_json(&tampered_path)["signatures"][0];
    assert_eq!(sig["verifies"], false);
    assert!(
        sig["problem"]
            .as_str()
            .unwrap()
            .contains("modified after signing"),
        "{sig}"
    );
    assert!(!sbverify(&crt, &tampered_path));
    assert!(!osslsigncode_verifies(&crt, &tampered_path));

    // The signature itself altered (its last byte, in the RSA signature value).
    let pe = PeFile::parse(&bytes).unwrap();
    let entry = &certificate_table(&pe).unwrap()[0];
    let at = entry.offset + 8 + entry.certificate.len() - 1;
    let mut bad_sig = bytes.clone();
    bad_sig[at] ^= 0x40;
    let bad_sig_path = d.join("bad-signature.efi");
    std::fs::write(&bad_sig_path, &bad_sig).unwrap();
    let sig = &inspect_json(&bad_sig_path)["signatures"][0];
    assert_eq!(sig["verifies"], false);
    assert!(
        sig["problem"].as_str().unwrap().contains("does not verify"),
        "{sig}"
    );
    assert!(!sbverify(&crt, &bad_sig_path));
    assert!(!osslsigncode_verifies(&crt, &bad_sig_path));

    // Signed by another key: valid, and inspect names that signer; sbverify and
    // osslsigncode refuse it for our certificate and accept it for its own.
    let foreign = d.join("foreign.efi");
    sign_ok(stub, &foreign, &other_key, &other_crt, &[]);
    let sig = &inspect_json(&foreign)["signatures"][0];
    assert_eq!(sig["verifies"], true);
    assert_eq!(sig["subject"], "CN=imgctl other");
    assert!(!sbverify(&crt, &foreign) && sbverify(&other_crt, &foreign));
    assert!(!osslsigncode_verifies(&crt, &foreign) && osslsigncode_verifies(&other_crt, &foreign));
}
