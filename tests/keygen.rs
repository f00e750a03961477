//! `imgctl keygen` checked with openssl, sbverify and osslsigncode: the certificates are
//! self-signed RSA-2048 X.509 v3 certificates for their keys, the db key signs PE images the
//! tools accept, the PCR key pair signs `.pcrsig` entries openssl verifies with the public key,
//! keys are mode 0600, and nothing is ever overwritten.
#![allow(clippy::unwrap_used)] // reason: test code; a panic is a test failure

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

fn openssl(args: &[&str], files: &[&Path]) -> String {
    let mut c = Command::new("openssl");
    c.args(args);
    for f in files {
        c.arg(f);
    }
    String::from_utf8(common::run_ok(&mut c)).unwrap()
}

#[test]
fn keygen_makes_keys_and_certificates_the_real_tools_accept() {
    for (t, p) in [
        ("openssl", "openssl"),
        ("sbverify", "sbsigntool"),
        ("osslsigncode", "osslsigncode"),
    ] {
        if common::require_tool(t, p).is_none() {
            return;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let out = common::run_ok(common::imgctl().arg("keygen").arg(&keys).args([
        "--common-name",
        "imgctl test, db",
        "--pk-kek",
        "--days",
        "30",
    ]));
    assert_eq!(String::from_utf8(out).unwrap().lines().count(), 8);
    for (name, cn) in [
        ("db", "imgctl test, db"),
        ("PK", "imgctl test, db PK"),
        ("KEK", "imgctl test, db KEK"),
    ] {
        let key = keys.join(format!("{name}.key"));
        let crt = keys.join(format!("{name}.crt"));
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600,
            "{name}.key"
        );
        let text = openssl(&["x509", "-noout", "-text", "-in"], &[&crt]);
        assert!(text.contains("Public-Key: (2048 bit)"), "{text}");
        assert!(text.contains("sha256WithRSAEncryption"), "{text}");
        assert!(text.contains("CA:FALSE"), "{text}");
        let subject = openssl(
            &["x509", "-noout", "-subject", "-nameopt", "RFC2253", "-in"],
            &[&crt],
        );
        assert_eq!(
            subject.trim(),
            format!("subject=CN={}", cn.replace(',', "\\,"))
        );
        // Self-signed: openssl verifies the certificate with itself as the only anchor.
        let ok = openssl(&["verify", "-CAfile"], &[&crt, &crt]);
        assert!(ok.contains(": OK"), "{ok}");
        // The key is the certificate's.
        assert_eq!(
            openssl(&["x509", "-noout", "-pubkey", "-in"], &[&crt]),
            openssl(&["pkey", "-pubout", "-in"], &[&key])
        );
    }
    // The db key signs a PE image that sbverify and osslsigncode accept.
    let stub = Path::new("/usr/lib/systemd/boot/efi/linuxx64.efi.stub");
    if common::require_tool(stub.to_str().unwrap(), "systemd-boot-efi").is_some() {
        let signed = dir.path().join("signed.efi");
        common::run_ok(
            common::imgctl()
                .arg("sign-pe")
                .arg(stub)
                .arg("-o")
                .arg(&signed)
                .arg("--key")
                .arg(keys.join("db.key"))
                .arg("--certificate")
                .arg(keys.join("db.crt")),
        );
        common::run_ok(
            Command::new("sbverify")
                .arg("--cert")
                .arg(keys.join("db.crt"))
                .arg(&signed),
        );
        common::run_ok(
            Command::new("osslsigncode")
                .args(["verify", "-CAfile"])
                .arg(keys.join("db.crt"))
                .arg("-in")
                .arg(&signed),
        );
    }
    // The PCR public key is the private key's, as SPKI PEM (what .pcrpkey holds).
    let public = std::fs::read_to_string(keys.join("pcr-public.pem")).unwrap();
    assert!(
        public.starts_with("-----BEGIN PUBLIC KEY-----\n"),
        "{public}"
    );
    assert_eq!(
        openssl(
            &["pkey", "-pubout", "-in"],
            &[&keys.join("pcr-private.pem")]
        ),
        public
    );
    assert_eq!(
        std::fs::metadata(keys.join("pcr-private.pem"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
}

#[test]
fn keygen_never_overwrites_and_refuses_a_bad_common_name() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path();
    std::fs::write(keys.join("pcr-public.pem"), b"mine").unwrap();
    let out = common::imgctl()
        .arg("keygen")
        .arg(keys)
        .args(["--common-name", "x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pcr-public.pem") && err.contains("already exists"),
        "{err}"
    );
    assert_eq!(std::fs::read(keys.join("pcr-public.pem")).unwrap(), b"mine");
    assert!(!keys.join("db.key").exists(), "nothing written");

    let fresh = dir.path().join("fresh");
    let out = common::imgctl()
        .arg("keygen")
        .arg(&fresh)
        .args(["--common-name", "bad\nname"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("common name"), "{err}");
    assert!(
        std::fs::read_dir(&fresh).map_or(true, |mut d| d.next().is_none()),
        "nothing written"
    );
}
