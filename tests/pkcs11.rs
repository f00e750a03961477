//! Keys on a PKCS#11 token (Debian's SoftHSM2, a private token per test) sign exactly as the
//! same keys from files: `sign-pe` (sbverify and osslsigncode accept the result), `build
//! --secureboot-key/--pcr-private-key`, `sign-pcrs` (equal to `systemd-measure sign` with the
//! key file), and extension images (`signing.key: pkcs11:…`). A wrong PIN, a missing object, a
//! missing or unnamed module each fail with one line on stderr and write nothing.

#![allow(clippy::unwrap_used)] // reason: test code; a panic is a test failure

mod common;
#[path = "support/swtpm.rs"]
mod swtpm;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{imgctl, osslsigncode, require_tool, run_ok, sbverify};

/// Debian's softhsm2 module, named explicitly (imgctl has no default module).
const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";
const SYSTEMD_MEASURE: &str = "/lib/systemd/systemd-measure";
const PIN: &str = "20261207";

fn peers() -> bool {
    let mut ok = true;
    for (t, p) in [
        (MODULE, "softhsm2"),
        ("softhsm2-util", "softhsm2"),
        ("sbverify", "sbsigntool"),
        ("osslsigncode", "osslsigncode"),
        ("openssl", "openssl"),
        (STUB, "systemd-boot-efi"),
        (SYSTEMD_MEASURE, "systemd"),
        (swtpm::SWTPM, "swtpm"),
    ] {
        ok &= require_tool(t, p).is_some();
    }
    ok
}

/// A private SoftHSM2 token in a temporary folder (its own config and token directory).
struct Token {
    dir: tempfile::TempDir,
    conf: PathBuf,
}

impl Token {
    fn new() -> Token {
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens");
        std::fs::create_dir(&tokens).unwrap();
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .unwrap();
        let t = Token { dir, conf };
        run_ok(t.util().args([
            "--init-token",
            "--free",
            "--label",
            "imgctl test",
            "--pin",
            PIN,
            "--so-pin",
            "87654321",
        ]));
        t
    }

    fn util(&self) -> Command {
        let mut c = Command::new("softhsm2-util");
        c.env("SOFTHSM2_CONF", &self.conf);
        c
    }

    /// Imports a PKCS#8 PEM key (key pair) as `label` with CKA_ID `id` (hex).
    fn import(&self, key: &Path, label: &str, id: &str) {
        run_ok(self.util().arg("--import").arg(key).args([
            "--token",
            "imgctl test",
            "--label",
            label,
            "--id",
            id,
            "--pin",
            PIN,
        ]));
    }

    fn imgctl(&self) -> Command {
        let mut c = imgctl();
        c.env("SOFTHSM2_CONF", &self.conf)
            .env("SOURCE_DATE_EPOCH", "1700000000");
        c
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn keygen(dir: &Path) -> PathBuf {
    let keys = dir.join("keys");
    run_ok(
        imgctl()
            .arg("keygen")
            .arg(&keys)
            .args(["--common-name", "imgctl PKCS#11 test"]),
    );
    keys
}

fn ok(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn sign_pe(
    t: &Token,
    input: &Path,
    output: &Path,
    key: &str,
    crt: &Path,
    extra: &[&str],
) -> Output {
    t.imgctl()
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

#[test]
fn authenticode_through_pkcs11_equals_the_key_files_and_the_tools_accept_it() {
    if !peers() {
        return;
    }
    let t = Token::new();
    let keys = keygen(t.dir.path());
    t.import(&keys.join("db.key"), "db", "0a01");
    let crt = keys.join("db.crt");
    let file_signed = t.path("file.efi");
    ok(
        sign_pe(
            &t,
            Path::new(STUB),
            &file_signed,
            keys.join("db.key").to_str().unwrap(),
            &crt,
            &[],
        ),
        "sign-pe with the key file",
    );
    let pin_file = t.path("pin");
    std::fs::write(&pin_file, format!("{PIN}\n")).unwrap();
    // The module as an option, and as the URI's module-path; the PIN as a value and a file;
    // the key by label, by id, by both.
    let uris = [
        (format!("pkcs11:token=imgctl%20test;object=db?pin-value={PIN}"), true),
        (format!("pkcs11:id=%0a%01?pin-source=file:{}", pin_file.display()), true),
        (
            format!(
                "pkcs11:token=imgctl%20test;object=db;id=%0A%01;type=private?pin-source={}&module-path={MODULE}",
                pin_file.display()
            ),
            false,
        ),
    ];
    let file_bytes = std::fs::read(&file_signed).unwrap();
    for (i, (uri, option)) in uris.iter().enumerate() {
        let out = t.path(&format!("token{i}.efi"));
        let extra: &[&str] = if *option {
            &["--pkcs11-module", MODULE]
        } else {
            &[]
        };
        ok(sign_pe(&t, Path::new(STUB), &out, uri, &crt, extra), uri);
        let token_bytes = std::fs::read(&out).unwrap();
        assert!(
            token_bytes == file_bytes,
            "{uri}: differs from the key file's signature"
        );
        assert!(sbverify(&crt, &out), "sbverify refused {uri}'s signature");
        let (accepted, _) = osslsigncode(&crt, &out);
        assert!(accepted, "osslsigncode refused {uri}'s signature");
    }
}

#[test]
fn an_ecdsa_p256_token_key_signs_what_sbverify_and_osslsigncode_accept() {
    if !peers() {
        return;
    }
    let t = Token::new();
    let key = t.path("ec.pem");
    run_ok(
        Command::new("openssl")
            .args(["genpkey"])
            .args(common::EC)
            .arg("-out")
            .arg(&key),
    );
    let crt = t.path("ec.crt");
    run_ok(
        Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-days",
                "2",
                "-subj",
                "/CN=imgctl ec",
                "-key",
            ])
            .arg(&key)
            .arg("-out")
            .arg(&crt),
    );
    t.import(&key, "ec", "02");
    let out = t.path("ec.efi");
    let uri = format!("pkcs11:object=ec?pin-value={PIN}");
    ok(
        sign_pe(
            &t,
            Path::new(STUB),
            &out,
            &uri,
            &crt,
            &["--pkcs11-module", MODULE],
        ),
        "EC sign-pe",
    );
    assert!(sbverify(&crt, &out), "sbverify refused the ECDSA signature");
    let (accepted, _) = osslsigncode(&crt, &out);
    assert!(accepted, "osslsigncode refused the ECDSA signature");
}

/// A UKI made of the systemd stub and small sections, as tests/sign_pcrs.rs makes it.
const CONTENT: &[(&str, &str, &[u8])] = &[
    (".linux", "--linux", b"not really a kernel\n"),
    (".osrel", "--osrel", b"ID=imgctl\nVERSION_ID=1\n"),
    (".cmdline", "--cmdline", b"console=ttyS0 quiet"),
];

fn uki(dir: &Path) -> PathBuf {
    use imgctl_builder::uki::{assemble, NewSection};
    let new: Vec<NewSection> = CONTENT
        .iter()
        .map(|(n, _, d)| NewSection {
            name: (*n).to_owned(),
            data: d.to_vec(),
        })
        .collect();
    let path = dir.join("test.efi");
    std::fs::write(
        &path,
        assemble(&std::fs::read(STUB).unwrap(), &new).unwrap(),
    )
    .unwrap();
    path
}

#[test]
fn pcrsig_through_pkcs11_equals_the_key_files_and_systemd_measure_sign() {
    if !peers() {
        return;
    }
    let t = Token::new();
    let keys = keygen(t.dir.path());
    let (private, public) = (keys.join("pcr-private.pem"), keys.join("pcr-public.pem"));
    t.import(&private, "pcr", "11");
    let uki = uki(t.dir.path());
    let sign = |key: &str| {
        let out = ok(
            t.imgctl()
                .arg("sign-pcrs")
                .arg(&uki)
                .args(["--private-key", key, "--pkcs11-module", MODULE])
                .arg("--public-key")
                .arg(&public)
                .output()
                .unwrap(),
            key,
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let from_file = sign(private.to_str().unwrap());
    let from_token = sign(&format!("pkcs11:object=pcr?pin-value={PIN}"));
    assert_eq!(from_token, from_file);
    let tpm = swtpm::Swtpm::start_unix();
    let mut sd = Command::new(SYSTEMD_MEASURE);
    sd.arg("sign")
        .arg(format!("--private-key={}", private.display()))
        .arg(format!("--public-key={}", public.display()))
        .arg(format!("--tpm2-device={}", tpm.tcti()));
    for (name, opt, data) in CONTENT {
        let f = t.path(name.trim_start_matches('.'));
        std::fs::write(&f, data).unwrap();
        sd.arg(format!("{opt}={}", f.display()));
    }
    assert_eq!(from_token, String::from_utf8(run_ok(&mut sd)).unwrap());
}

#[test]
fn build_with_token_keys_equals_build_with_the_key_files() {
    if !peers() {
        return;
    }
    let t = Token::new();
    let keys = keygen(t.dir.path());
    t.import(&keys.join("db.key"), "db", "01");
    t.import(&keys.join("pcr-private.pem"), "pcr", "02");
    std::fs::create_dir_all(t.path("tree")).unwrap();
    std::fs::write(t.path("tree/init"), b"#!/bin/sh\necho hello\n").unwrap();
    std::fs::write(t.path("vmlinuz"), common::fake_kernel(100_000)).unwrap();
    let recipe = t.path("recipe.yaml");
    std::fs::write(
        &recipe,
        "name: t\nversion: 1\nos-release:\n  ID: t\n  VERSION_ID: 1\nkernel: vmlinuz\n\
         initrd:\n  tree: tree\ncmdline: console=ttyS0\n",
    )
    .unwrap();
    let build = |out: &str, sb_key: &str, pcr_key: &str| {
        ok(
            t.imgctl()
                .arg("build")
                .arg(&recipe)
                .arg("-o")
                .arg(t.path(out))
                .args(["--secureboot-key", sb_key, "--pcr-private-key", pcr_key])
                .arg("--secureboot-certificate")
                .arg(keys.join("db.crt"))
                .args(["--pkcs11-module", MODULE])
                .output()
                .unwrap(),
            out,
        );
        std::fs::read(t.path(out).join("t.efi")).unwrap()
    };
    let files = build(
        "files",
        keys.join("db.key").to_str().unwrap(),
        keys.join("pcr-private.pem").to_str().unwrap(),
    );
    let token = build(
        "token",
        &format!("pkcs11:object=db?pin-value={PIN}"),
        &format!("pkcs11:object=pcr?pin-value={PIN}"),
    );
    assert!(
        token == files,
        "the UKI signed on the token differs from the key files'"
    );
    assert!(sbverify(&keys.join("db.crt"), &t.path("token/t.efi")));
}

#[test]
fn extension_signing_on_a_token_equals_the_key_files() {
    if !peers() || require_tool("mkfs.erofs", "erofs-utils").is_none() {
        return;
    }
    let t = Token::new();
    let keys = keygen(t.dir.path());
    t.import(&keys.join("db.key"), "ext", "05");
    std::fs::create_dir_all(t.path("tree/usr/bin")).unwrap();
    std::fs::write(t.path("tree/usr/bin/hello"), b"#!/bin/sh\necho hello\n").unwrap();
    let image = |name: &str, key: &str| {
        let r = t.path(&format!("{name}.yaml"));
        std::fs::write(
            &r,
            format!(
                "kind: sysext\nname: hello\nversion: \"1\"\ntree: tree\n\
                 release:\n  ID: _any\n  ARCHITECTURE: x86-64\n\
                 signing: {{key: \"{key}\", certificate: keys/db.crt}}\n"
            ),
        )
        .unwrap();
        let out = t.path(name);
        ok(
            t.imgctl()
                .args(["ext", "build"])
                .arg(&r)
                .arg("-o")
                .arg(&out)
                .args(["--pkcs11-module", MODULE])
                .output()
                .unwrap(),
            name,
        );
        std::fs::read(out.join("hello.raw")).unwrap()
    };
    let files = image("files", "keys/db.key");
    let token = image("token", &format!("pkcs11:object=ext?pin-value={PIN}"));
    assert!(
        token == files,
        "the extension signed on the token differs from the key file's"
    );
}

fn assert_clean_failure(out: &Output, why: &str, output: &Path) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(err.contains(why), "expected {why:?} in: {err}");
    assert!(!err.contains(PIN), "the PIN is in the message: {err}");
    assert!(!output.exists(), "{} was written", output.display());
}

#[test]
fn a_wrong_pin_a_missing_object_or_module_fail_in_one_line_and_write_nothing() {
    if !peers() {
        return;
    }
    let t = Token::new();
    let keys = keygen(t.dir.path());
    t.import(&keys.join("db.key"), "db", "01");
    let crt = keys.join("db.crt");
    let out = t.path("never.efi");
    let m = ["--pkcs11-module", MODULE];
    let cases: &[(String, &[&str], &str)] = &[
        (
            "pkcs11:object=db?pin-value=99999999".into(),
            &m,
            "wrong PIN",
        ),
        (
            format!("pkcs11:object=nothere?pin-value={PIN}"),
            &m,
            "no private key on the token matches",
        ),
        (
            format!("pkcs11:object=db?pin-value={PIN}"),
            &[],
            "no PKCS#11 module named",
        ),
        (
            format!("pkcs11:object=db?pin-value={PIN}"),
            &["--pkcs11-module", "/nonexistent/libpkcs11.so"],
            "cannot load the PKCS#11 module /nonexistent/libpkcs11.so",
        ),
        (
            format!("pkcs11:token=other;object=db?pin-value={PIN}"),
            &m,
            "no initialized token",
        ),
        ("pkcs11:object=db".into(), &m, "the token needs a PIN"),
        (
            format!("pkcs11:object=db;x-foo=1?pin-value={PIN}"),
            &m,
            "not one imgctl understands",
        ),
    ];
    for (uri, extra, why) in cases {
        let o = sign_pe(&t, Path::new(STUB), &out, uri, &crt, extra);
        assert_clean_failure(&o, why, &out);
        // The same key for the PCR policy: same errors, nothing written.
        let pcrsig = t.path("never.pcrsig");
        let o = t
            .imgctl()
            .arg("sign-pcrs")
            .arg(uki(t.dir.path()))
            .args(["--private-key", uri])
            .args(*extra)
            .arg("-o")
            .arg(&pcrsig)
            .output()
            .unwrap();
        assert_clean_failure(&o, why, &pcrsig);
    }
    // A token key that is not the certificate's.
    let other = keygen(&t.path("other"));
    let o = sign_pe(
        &t,
        Path::new(STUB),
        &out,
        &format!("pkcs11:object=db?pin-value={PIN}"),
        &other.join("db.crt"),
        &m,
    );
    assert_clean_failure(&o, "does not match certificate", &out);
}
