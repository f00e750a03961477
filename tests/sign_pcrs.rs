//! `imgctl sign-pcrs` against the real `systemd-measure sign` (Debian's systemd 252, which
//! needs a TPM for this: it runs against a per-test swtpm) and `openssl dgst -verify`.

#![allow(clippy::unwrap_used)] // reason: test code; a panic is a test failure

mod common;
#[path = "support/swtpm.rs"]
mod swtpm;

use std::path::Path;
use std::process::Command;

use common::{imgctl, require_tool, run_ok};
use imgctl_builder::uki::{assemble, NewSection};

const SYSTEMD_MEASURE: &str = "/lib/systemd/systemd-measure";
const STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";

fn peers() -> bool {
    require_tool(SYSTEMD_MEASURE, "systemd").is_some()
        && require_tool(STUB, "systemd-boot-efi").is_some()
        && require_tool(swtpm::SWTPM, "swtpm").is_some()
        && require_tool("openssl", "openssl").is_some()
}

use common::{genkey, EC, RSA};

/// (section, systemd-measure option, content)
const CONTENT: &[(&str, &str, &[u8])] = &[
    (".linux", "--linux", b"not really a kernel\n"),
    (".osrel", "--osrel", b"ID=imgctl\nVERSION_ID=1\n"),
    (".cmdline", "--cmdline", b"console=ttyS0 quiet"),
    (".initrd", "--initrd", b"07070100000000"),
];

fn uki(dir: &Path) -> std::path::PathBuf {
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
fn sign_pcrs_equals_systemd_measure_sign_byte_for_byte() {
    if !peers() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = genkey(dir.path(), "rsa", RSA);
    let uki = uki(dir.path());
    let tpm = swtpm::Swtpm::start_unix();
    for extra in [
        vec![],
        vec![
            "--bank=sha256",
            "--phase=enter-initrd:leave-initrd",
            "--phase=ready",
        ],
    ] {
        let mut sd = Command::new(SYSTEMD_MEASURE);
        sd.arg("sign")
            .arg(format!("--private-key={}", key.display()))
            .arg(format!("--public-key={}", public.display()))
            .arg(format!("--tpm2-device={}", tpm.tcti()))
            .args(&extra);
        for (name, opt, data) in CONTENT {
            let f = dir.path().join(name.trim_start_matches('.'));
            std::fs::write(&f, data).unwrap();
            sd.arg(format!("{opt}={}", f.display()));
        }
        let expected = run_ok(&mut sd);
        let ours = run_ok(
            imgctl()
                .arg("sign-pcrs")
                .arg(&uki)
                .arg("--private-key")
                .arg(&key)
                .arg("--public-key")
                .arg(&public)
                .args(&extra),
        );
        assert_eq!(
            String::from_utf8(ours).unwrap(),
            String::from_utf8(expected).unwrap(),
            "extra args {extra:?}"
        );
    }
}

/// Every entry's `sig` verifies with `openssl dgst -<bank> -verify` over the raw `pol` bytes,
/// for RSA and for ECDSA P-256 keys.
#[test]
fn signatures_verify_with_openssl() {
    if !peers() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let uki = uki(dir.path());
    for (name, alg) in [("rsa", RSA), ("ec", EC)] {
        let (key, public) = genkey(dir.path(), name, alg);
        let out = dir.path().join(format!("{name}.pcrsig"));
        run_ok(
            imgctl()
                .arg("sign-pcrs")
                .arg(&uki)
                .arg("--private-key")
                .arg(&key)
                .arg("-o")
                .arg(&out),
        );
        let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
        let mut checked = 0;
        for (bank, entries) in doc.as_object().unwrap() {
            for e in entries.as_array().unwrap() {
                let pol = hex::decode(e["pol"].as_str().unwrap()).unwrap();
                let sig = e["sig"].as_str().unwrap();
                assert!(common::openssl_verifies(
                    dir.path(),
                    bank,
                    &public,
                    &pol,
                    sig
                ));
                // A flipped policy bit must not verify.
                let mut bad = pol.clone();
                bad[7] ^= 0x10;
                assert!(!common::openssl_verifies(
                    dir.path(),
                    bank,
                    &public,
                    &bad,
                    sig
                ));
                checked += 1;
            }
        }
        assert_eq!(checked, 16, "{name}: 4 banks x 4 default phases");
    }
}

#[test]
fn unsupported_keys_and_mismatched_public_keys_fail_clearly_and_write_nothing() {
    if !peers() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let uki = uki(dir.path());
    let out = dir.path().join("out.pcrsig");
    let (ed, _) = genkey(dir.path(), "ed", &["-algorithm", "ED25519"]);
    let (rsa, _) = genkey(dir.path(), "rsa", RSA);
    let (_, other_pub) = genkey(dir.path(), "other", EC);
    for (key, public, needle) in [
        (&ed, None, "Ed25519"),
        (&rsa, Some(&other_pub), "not the public half"),
    ] {
        let mut cmd = imgctl();
        cmd.arg("sign-pcrs")
            .arg(&uki)
            .arg("--private-key")
            .arg(key)
            .arg("-o")
            .arg(&out);
        if let Some(p) = public {
            cmd.arg("--public-key").arg(p);
        }
        let o = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success());
        assert!(err.contains(needle), "{err}");
        assert!(!out.exists());
    }
}

/// A recipe is assembled in memory: its signature equals the one for the UKI `imgctl build`
/// writes (RSA signatures are deterministic), and that UKI carries the .pcrpkey it names.
#[test]
fn a_recipe_signs_like_its_built_uki() {
    if !peers() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (key, public) = genkey(d, "rsa", RSA);
    std::fs::write(d.join("vmlinuz"), common::fake_kernel(4096)).unwrap();
    let recipe = d.join("r.yaml");
    std::fs::write(
        &recipe,
        format!(
            "name: r\nversion: \"1\"\nos-release: {{ ID: r }}\nkernel: vmlinuz\ncmdline: quiet\npcrpkey: {}\n",
            public.display()
        ),
    )
    .unwrap();
    run_ok(
        imgctl()
            .arg("build")
            .arg(&recipe)
            .arg("-o")
            .arg(d.join("out")),
    );
    let sign = |input: &Path| {
        run_ok(
            imgctl()
                .arg("sign-pcrs")
                .arg(input)
                .arg("--private-key")
                .arg(&key)
                .env("SOURCE_DATE_EPOCH", "0"),
        )
    };
    let from_recipe = sign(&recipe);
    assert_eq!(from_recipe, sign(&d.join("out/r.efi")));
    // The key is measured (.pcrpkey) and systemd-measure agrees on what that gives.
    let tpm = swtpm::Swtpm::start_unix();
    let mut sd = Command::new(SYSTEMD_MEASURE);
    sd.arg("sign")
        .arg(format!("--private-key={}", key.display()))
        .arg(format!("--public-key={}", public.display()))
        .arg(format!("--tpm2-device={}", tpm.tcti()));
    let uki = std::fs::read(d.join("out/r.efi")).unwrap();
    let pe = imgctl_measure::PeFile::parse(&uki).unwrap();
    for (name, opt) in [
        (".linux", "--linux"),
        (".osrel", "--osrel"),
        (".cmdline", "--cmdline"),
        (".pcrpkey", "--pcrpkey"),
    ] {
        let f = d.join(name.trim_start_matches('.'));
        std::fs::write(&f, pe.memory_data(pe.section(name).unwrap()).unwrap()).unwrap();
        sd.arg(format!("{opt}={}", f.display()));
    }
    assert_eq!(
        String::from_utf8(run_ok(&mut sd)).unwrap(),
        String::from_utf8(from_recipe).unwrap()
    );
}

/// `build --pcr-private-key --log`: the UKI's own record states the policy its `.pcrsig`
/// carries, and `log monitor` shows it, with the key's fingerprint as the `.pcrsig` names it
/// (pkfp) and the number of PCR 11 values signed: systemd-measure's four phase paths in the
/// four banks.
#[test]
fn a_built_uki_signed_policy_is_in_its_record_and_the_monitor_shows_it() {
    if !peers() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (key, _) = genkey(d, "rsa", RSA);
    std::fs::write(d.join("vmlinuz"), common::fake_kernel(4096)).unwrap();
    let recipe = d.join("r.yaml");
    std::fs::write(
        &recipe,
        "name: r\nversion: \"1\"\nos-release: { ID: r }\nkernel: vmlinuz\ncmdline: quiet\n",
    )
    .unwrap();
    let (log, log_key, vkey) = common::new_log(d, "log");
    run_ok(
        imgctl()
            .arg("build")
            .arg(&recipe)
            .arg("-o")
            .arg(d.join("out"))
            .arg("--pcr-private-key")
            .arg(&key)
            .arg("--log")
            .arg(&log)
            .arg("--log-key")
            .arg(&log_key),
    );
    let uki = std::fs::read(d.join("out/r.efi")).unwrap();
    let pe = imgctl_measure::PeFile::parse(&uki).unwrap();
    let sig: serde_json::Value =
        serde_json::from_slice(&pe.memory_data(pe.section(".pcrsig").unwrap()).unwrap()).unwrap();
    let pkfp = sig["sha256"][0]["pkfp"].as_str().unwrap().to_owned();
    let out = String::from_utf8(run_ok(
        imgctl()
            .args(["log", "monitor"])
            .arg(&log)
            .args(["--vkey", &vkey]),
    ))
    .unwrap();
    assert!(
        out.contains(&format!(
            "signed PCR policy: key sha256:{pkfp} signs 16 PCR 11 values (sha1, sha256, sha384, sha512)"
        )),
        "{out}"
    );
}

/// C9: `-o` and `--embed` never replace a FIFO, a symlink, a folder, a device node (as root,
/// a `mknod` character device) or an input; the refusal comes before any output is written
/// and leaves no temporaries.
#[test]
fn sign_pcrs_never_replaces_special_files_or_its_inputs() {
    if require_tool(STUB, "systemd-boot-efi").is_none()
        || require_tool("openssl", "openssl").is_none()
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = genkey(dir.path(), "ec", EC);
    let input = uki(dir.path());
    let target = dir.path().join("target");
    std::fs::write(&target, b"keep").unwrap();
    let fifo = dir.path().join("fifo");
    run_ok(Command::new("mkfifo").arg(&fifo));
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let folder = dir.path().join("folder");
    std::fs::create_dir(&folder).unwrap();
    let mut cases = vec![
        (fifo.clone(), "FIFO"),
        (link.clone(), "symbolic link"),
        (folder.clone(), "folder"),
        (input.clone(), "also an input"),
        (key.clone(), "also an input"),
    ];
    let dev = dir.path().join("full");
    let is_root = Command::new("id").arg("-u").output().unwrap().stdout == b"0\n";
    if is_root {
        // Like /dev/full (1, 7), in the temporary folder.
        run_ok(Command::new("mknod").arg(&dev).args(["c", "1", "7"]));
        cases.push((dev.clone(), "character device"));
    }
    let before: Vec<_> = {
        let mut v: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        v.sort();
        v
    };
    let uki_bytes = std::fs::read(&input).unwrap();
    for (out, kind) in &cases {
        for flag in ["-o", "--embed"] {
            let o = imgctl()
                .arg("sign-pcrs")
                .arg(&input)
                .arg("--private-key")
                .arg(&key)
                .arg(flag)
                .arg(out)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(1), "{flag} {}: {err}", out.display());
            assert!(err.contains(kind), "{flag} {}: {err}", out.display());
            assert!(err.contains(&*out.to_string_lossy()), "{err}");
        }
        // A good -o with a bad --embed writes neither.
        let good = dir.path().join("sig.json");
        let o = imgctl()
            .arg("sign-pcrs")
            .arg(&input)
            .arg("--private-key")
            .arg(&key)
            .arg("-o")
            .arg(&good)
            .arg("--embed")
            .arg(out)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1));
        assert!(!good.exists());
    }
    let mut after: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    after.sort();
    assert_eq!(after, before, "nothing new, no temporaries");
    assert_eq!(std::fs::read(&target).unwrap(), b"keep");
    assert_eq!(std::fs::read(&input).unwrap(), uki_bytes);
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    if is_root {
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::symlink_metadata(&dev)
            .unwrap()
            .file_type()
            .is_char_device());
    }
}

/// `sign-pcrs --log`: the policy's artifact record says what it signs, and that is what
/// `systemd-measure calculate` computes for the same UKI contents; its key fingerprint is the
/// sha256 of the PKCS#1 RSAPublicKey DER `openssl rsa -RSAPublicKey_out` writes (systemd's
/// pkfp) and the .pcrsig's own pkfp; the .pcrsig's sha256 is the written
/// file's; the proof beside it verifies.
#[test]
fn sign_pcrs_logs_the_policy_record() {
    if !peers() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = genkey(dir.path(), "rsa", RSA);
    let uki = uki(dir.path());
    let (log, log_key) = (dir.path().join("log"), dir.path().join("log.key"));
    run_ok(
        imgctl()
            .args(["log", "init"])
            .arg(&log)
            .arg("--key")
            .arg(&log_key)
            .args(["--origin", "example.org/policy-test"]),
    );
    let out = dir.path().join("test.pcrsig");
    run_ok(
        imgctl()
            .arg("sign-pcrs")
            .arg(&uki)
            .arg("--private-key")
            .arg(&key)
            .args(["--bank=sha256", "-o"])
            .arg(&out)
            .arg("--embed")
            .arg(dir.path().join("signed.efi"))
            .arg("--log")
            .arg(&log)
            .arg("--log-key")
            .arg(&log_key),
    );
    let vkey = format!("@{}", dir.path().join("log.vkey").display());
    run_ok(
        imgctl()
            .args(["log", "verify", "--vkey", &vkey, "--proof"])
            .arg(dir.path().join("test.pcrsig.tlog-proof")),
    );
    let shown: serde_json::Value =
        serde_json::from_slice(&run_ok(imgctl().args(["log", "show", "--json"]).arg(&log)))
            .unwrap();
    let r = &shown["entries"][0]["entry"];
    assert_eq!(r["kind"], "policy", "{shown}");
    let mut sd = Command::new(SYSTEMD_MEASURE);
    sd.args(["calculate", "--json=short", "--bank=sha256"]);
    for (name, opt, data) in CONTENT {
        let f = dir.path().join(name.trim_start_matches('.'));
        std::fs::write(&f, data).unwrap();
        sd.arg(format!("{opt}={}", f.display()));
    }
    let expected: serde_json::Value = serde_json::from_slice(&run_ok(&mut sd)).unwrap();
    let key_of = |v: &serde_json::Value| {
        let mut rows: Vec<String> = v["sha256"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                format!(
                    "{} {} {}",
                    e["pcr"],
                    e.get("phase").and_then(|p| p.as_str()).unwrap_or(""),
                    e["hash"].as_str().unwrap()
                )
            })
            .collect();
        rows.sort();
        rows
    };
    assert_eq!(key_of(&r["policy"]["signs"]), key_of(&expected), "{shown}");
    let der = run_ok(
        Command::new("openssl")
            .args([
                "rsa",
                "-pubin",
                "-RSAPublicKey_out",
                "-outform",
                "DER",
                "-in",
            ])
            .arg(&public),
    );
    let fp = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&der));
    assert_eq!(r["policy"]["key_fingerprint_sha256"], fp.as_str());
    let sig: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(sig["sha256"][0]["pkfp"], fp.as_str());
    let file = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        std::fs::read(&out).unwrap(),
    ));
    assert_eq!(r["files"][0]["role"], "pcrsig");
    assert_eq!(r["files"][0]["digests"]["sha256"], file.as_str());
    // The UKI that carries it (the embedded one, which is what boots) by its Authenticode
    // hash, the PCR 4 measurement a verifier finds it by.
    let signed = std::fs::read(dir.path().join("signed.efi")).unwrap();
    assert_eq!(
        r["files"][1]["digests"]["sha256"],
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&signed)).as_str()
    );
    let shown: serde_json::Value = serde_json::from_slice(&run_ok(
        imgctl()
            .args(["inspect", "--json"])
            .arg(dir.path().join("signed.efi")),
    ))
    .unwrap();
    let authenticode = shown["authenticode"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p[0] == "sha256")
        .map(|p| p[1].clone())
        .unwrap_or_else(|| panic!("{shown}"));
    assert_eq!(r["policy"]["uki_authenticode"]["sha256"], authenticode);
}
