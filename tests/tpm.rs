//! The TPM side against a real software TPM: each test starts its own swtpm (TCP, loopback,
//! free ports) and checks imgctl's results with the TPM itself and with tpm2-tools.

#![cfg(feature = "tpm")]
#![allow(clippy::unwrap_used)] // reason: test code; a panic is a test failure

mod common;
#[path = "support/swtpm.rs"]
mod swtpm;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{imgctl, require_tool, run_ok};
use imgctl_attest::eventlog::UserspaceLog;
use imgctl_attest::userspace_record::BreakGlass;
use imgctl_builder::uki::{assemble, NewSection};
use imgctl_measure::{HashAlg, PeFile};
use swtpm::Swtpm;

const STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";

fn have(tools: &[(&str, &str)]) -> bool {
    tools.iter().all(|(t, p)| require_tool(t, p).is_some())
}

fn base_tools() -> bool {
    have(&[
        (swtpm::SWTPM, "swtpm"),
        ("openssl", "openssl"),
        (STUB, "systemd-boot-efi"),
    ])
}

fn with_tpm(tpm: &Swtpm) -> Command {
    let mut c = imgctl();
    c.env("IMGCTL_TCTI", tpm.tcti());
    c
}

/// `imgctl tpm seal --public-key PUBLIC --secret-file SECRET -o BLOB` against `tpm`.
fn seal_cmd(tpm: &Swtpm, public: &Path, secret: &Path, blob: &Path) -> Command {
    let mut c = with_tpm(tpm);
    c.args(["tpm", "seal", "--public-key"])
        .arg(public)
        .arg("--secret-file")
        .arg(secret)
        .arg("-o")
        .arg(blob);
    c
}

fn fails(cmd: &mut Command) -> String {
    let o: Output = cmd.output().unwrap();
    assert!(!o.status.success(), "{cmd:?} unexpectedly succeeded");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

use common::{genkey, EC, RSA};

fn build_uki(dir: &Path, name: &str, cmdline: &str) -> PathBuf {
    let sections = [
        (".linux", b"kernel image bytes\n".to_vec()),
        (".osrel", b"ID=imgctl\n".to_vec()),
        (".cmdline", cmdline.as_bytes().to_vec()),
    ];
    let new: Vec<NewSection> = sections
        .iter()
        .map(|(n, d)| NewSection {
            name: (*n).into(),
            data: d.clone(),
        })
        .collect();
    let path = dir.join(format!("{name}.efi"));
    std::fs::write(
        &path,
        assemble(&std::fs::read(STUB).unwrap(), &new).unwrap(),
    )
    .unwrap();
    path
}

fn pcr(tpm: &Swtpm, bank: &str, index: u32) -> String {
    let out = run_ok(
        with_tpm(tpm)
            .args(["tpm", "pcrs", "--json", "--bank", bank, "--pcr"])
            .arg(index.to_string()),
    );
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    v[bank][index.to_string()].as_str().unwrap().to_owned()
}

fn extend_file(tpm: &Swtpm, dir: &Path, data: &[u8]) {
    let f = dir.join("extend.bin");
    std::fs::write(&f, data).unwrap();
    run_ok(
        with_tpm(tpm)
            .args(["tpm", "extend", "--pcr", "11", "--file"])
            .arg(&f),
    );
}

/// Extends PCR 11 the way systemd-stub does for this UKI: name with NUL, then the in-memory
/// content, for each measured section in canonical order (v252 list).
fn extend_like_the_stub(tpm: &Swtpm, dir: &Path, uki: &Path) {
    let data = std::fs::read(uki).unwrap();
    let pe = PeFile::parse(&data).unwrap();
    for name in imgctl_measure::StubSemantics::Systemd252.measured_sections() {
        if let Some(s) = pe.section(name) {
            let mut n = name.as_bytes().to_vec();
            n.push(0);
            extend_file(tpm, dir, &n);
            extend_file(tpm, dir, &pe.memory_data(s).unwrap());
        }
    }
}

fn unseal(tpm: &Swtpm, blob: &Path, pcrsig: &Path, out: &Path) -> Output {
    with_tpm(tpm)
        .args(["tpm", "unseal"])
        .arg(blob)
        .arg("--pcrsig")
        .arg(pcrsig)
        .arg("-o")
        .arg(out)
        .output()
        .unwrap()
}

#[test]
fn unseal_succeeds_only_in_a_state_the_key_signed() {
    if !base_tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tpm = Swtpm::start_tcp();
    let (key, public) = genkey(d, "signer", RSA);
    let (other_key, _) = genkey(d, "other", EC);
    let uki = build_uki(d, "a", "console=ttyS0");
    let uki_b = build_uki(d, "b", "console=ttyS0 debug");
    let sign = |uki: &Path, key: &Path, out: &Path| {
        run_ok(
            imgctl()
                .arg("sign-pcrs")
                .arg(uki)
                .arg("--private-key")
                .arg(key)
                .args(["--bank", "sha256", "-o"])
                .arg(out),
        );
    };
    let sig_a = d.join("a.pcrsig");
    let sig_b = d.join("b.pcrsig");
    let sig_other = d.join("other.pcrsig");
    sign(&uki, &key, &sig_a);
    sign(&uki_b, &key, &sig_b);
    sign(&uki, &other_key, &sig_other);

    let secret = d.join("secret");
    std::fs::write(&secret, b"disk key 0123456789").unwrap();
    let blob = d.join("sealed.json");
    run_ok(&mut seal_cmd(&tpm, &public, &secret, &blob));

    extend_like_the_stub(&tpm, d, &uki);
    run_ok(with_tpm(&tpm).args(["tpm", "extend", "--pcr", "11", "--string", "enter-initrd"]));
    // The TPM now holds what predict-pcrs predicts for enter-initrd.
    let predicted: serde_json::Value =
        serde_json::from_slice(&run_ok(imgctl().arg("predict-pcrs").arg(&uki).args([
            "--json",
            "--bank",
            "sha256",
            "--phase",
            "enter-initrd",
        ])))
        .unwrap();
    assert_eq!(
        pcr(&tpm, "sha256", 11),
        predicted["sha256"][0]["hash"].as_str().unwrap()
    );

    let out = d.join("out");
    let o = unseal(&tpm, &blob, &sig_a, &out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(&secret).unwrap()
    );
    std::fs::remove_file(&out).unwrap();

    // Another UKI's signed values, or another key's signatures: refused, nothing written.
    for wrong in [&sig_b, &sig_other] {
        let o = unseal(&tpm, &blob, wrong, &out);
        assert!(!o.status.success());
        assert!(String::from_utf8_lossy(&o.stderr).contains("no .pcrsig entry"));
        assert!(!out.exists());
    }
    // Another key's signature presented under the sealing key's fingerprint: the TPM refuses it.
    let forged = std::fs::read_to_string(&sig_other).unwrap();
    let real: serde_json::Value = serde_json::from_slice(&std::fs::read(&sig_a).unwrap()).unwrap();
    let fake: serde_json::Value = serde_json::from_str(&forged).unwrap();
    let forged = forged.replace(
        fake["sha256"][0]["pkfp"].as_str().unwrap(),
        real["sha256"][0]["pkfp"].as_str().unwrap(),
    );
    let forged_path = d.join("forged.pcrsig");
    std::fs::write(&forged_path, forged).unwrap();
    let o = unseal(&tpm, &blob, &forged_path, &out);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("VerifySignature"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // The next phase was signed too; a phase nobody signed is not.
    run_ok(with_tpm(&tpm).args(["tpm", "extend", "--pcr", "11", "--string", "leave-initrd"]));
    assert!(unseal(&tpm, &blob, &sig_a, &out).status.success());
    run_ok(with_tpm(&tpm).args(["tpm", "extend", "--pcr", "11", "--string", "something-else"]));
    std::fs::remove_file(&out).unwrap();
    let o = unseal(&tpm, &blob, &sig_a, &out);
    assert!(!o.status.success());
    assert!(!out.exists());
}

#[test]
fn unseal_reads_the_pcrsig_section_of_a_uki() {
    if !base_tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tpm = Swtpm::start_tcp();
    let (key, public) = genkey(d, "signer", EC);
    let uki = build_uki(d, "a", "quiet");
    let signed_uki = d.join("signed.efi");
    let sig = run_ok(
        imgctl()
            .arg("sign-pcrs")
            .arg(&uki)
            .arg("--private-key")
            .arg(&key)
            .args(["--phase", ":", "--embed"])
            .arg(&signed_uki),
    );
    // The signed UKI: every section the input had, byte for byte, plus .pcrsig = the JSON alone;
    // and the same predicted PCR 11.
    let before = std::fs::read(&uki).unwrap();
    let after = std::fs::read(&signed_uki).unwrap();
    let (pb, pa) = (
        PeFile::parse(&before).unwrap(),
        PeFile::parse(&after).unwrap(),
    );
    for s in &pb.sections {
        let t = pa.section(&s.name).unwrap();
        assert_eq!(
            pb.memory_data(s).unwrap(),
            pa.memory_data(t).unwrap(),
            "{}",
            s.name
        );
    }
    // ukify 257 embeds systemd-measure's document re-serialised by Python's json.dumps (no
    // newline, no NUL); python3 makes the expected bytes.
    let want = common::ukify_pcrsig_json(&sig);
    assert_eq!(
        pa.memory_data(pa.section(".pcrsig").unwrap())
            .unwrap()
            .as_ref(),
        want.as_slice()
    );
    let predict = |f: &Path| run_ok(imgctl().arg("predict-pcrs").arg(f).arg("--json"));
    assert_eq!(predict(&uki), predict(&signed_uki));
    // A UKI cannot be signed into twice.
    let e = fails(
        imgctl()
            .arg("sign-pcrs")
            .arg(&signed_uki)
            .arg("--private-key")
            .arg(&key)
            .arg("--embed")
            .arg(d.join("twice.efi")),
    );
    assert!(e.contains("already has a .pcrsig"), "{e}");
    assert!(!d.join("twice.efi").exists());

    let blob = d.join("sealed.json");
    let secret = d.join("secret");
    std::fs::write(&secret, b"s3cret").unwrap();
    run_ok(&mut seal_cmd(&tpm, &public, &secret, &blob));
    extend_like_the_stub(&tpm, d, &signed_uki);
    let out = d.join("out");
    let o = unseal(&tpm, &blob, &signed_uki, &out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read(&out).unwrap(), b"s3cret");
}

#[test]
fn quote_is_accepted_by_tpm2_checkquote_with_the_right_nonce_only() {
    if !base_tools() || !have(&[("tpm2_checkquote", "tpm2-tools")]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tpm = Swtpm::start_tcp();
    run_ok(with_tpm(&tpm).args(["tpm", "extend", "--pcr", "11", "--string", "enter-initrd"]));
    let q = d.join("q");
    let ak = d.join("ak.pem");
    run_ok(
        with_tpm(&tpm)
            .args([
                "tpm",
                "quote",
                "--nonce",
                "c0ffee0123456789",
                "--pcr",
                "11",
                "--pcr",
                "15",
                "--ak-out",
            ])
            .arg(&ak)
            .arg("-o")
            .arg(&q),
    );
    let check = |nonce: &str| {
        Command::new("tpm2_checkquote")
            .arg("-u")
            .arg(&ak)
            .arg("-m")
            .arg(q.join("quote.msg"))
            .arg("-s")
            .arg(q.join("quote.sig"))
            .args(["-g", "sha256", "-q", nonce])
            .output()
            .unwrap()
    };
    let ok = check("c0ffee0123456789");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(!check("c0ffee0123456788").status.success());
    // TPM2B_ATTEST is the message with its size in front; TPM2B_PUBLIC parses as the AK.
    let msg = std::fs::read(q.join("quote.msg")).unwrap();
    let attest = std::fs::read(q.join("quote.attest")).unwrap();
    assert_eq!(&attest[2..], &msg[..]);
    assert_eq!(
        usize::from(u16::from_be_bytes([attest[0], attest[1]])),
        msg.len()
    );
    // The quoted PCR 11 in pcrs.json is the TPM's.
    let pcrs: serde_json::Value =
        serde_json::from_slice(&std::fs::read(q.join("pcrs.json")).unwrap()).unwrap();
    assert_eq!(
        pcrs["sha256"]["11"].as_str().unwrap(),
        pcr(&tpm, "sha256", 11)
    );
}

#[test]
fn break_glass_twice_replays_to_the_tpm_in_every_bank() {
    if !base_tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("run/log/systemd/tpm2-measure.log");
    let tpm = Swtpm::start_tcp();
    run_ok(with_tpm(&tpm).arg("measure").arg("--log").arg(&log).args([
        "break-glass",
        "--reason",
        "root shell: disk unlock failed",
        "--actor",
        "alice",
        "--kind",
        "debug-shell",
    ]));
    run_ok(with_tpm(&tpm).arg("measure").arg("--log").arg(&log).args([
        "break-glass",
        "--reason",
        "second look",
        "--actor",
        "bob",
    ]));
    run_ok(
        with_tpm(&tpm)
            .arg("measure")
            .arg("--log")
            .arg(&log)
            .args(["phase", "ready"]),
    );
    let meta = std::fs::metadata(&log).unwrap();
    assert_eq!(
        meta.permissions().mode() & 0o1000,
        0,
        "dirty marker left set"
    );

    let parsed = UserspaceLog::parse(&std::fs::read(&log).unwrap()).unwrap();
    let records = &parsed.records;
    assert_eq!(records.len(), 3);
    let claims: Vec<BreakGlass> = records
        .iter()
        .filter_map(BreakGlass::from_record)
        .map(Result::unwrap)
        .collect();
    assert_eq!(claims.len(), 2);
    assert_eq!(
        (claims[0].actor.as_str(), claims[0].reason.as_str()),
        ("alice", "root shell: disk unlock failed")
    );
    assert_eq!(
        (claims[1].actor.as_str(), claims[1].reason.as_str()),
        ("bob", "second look")
    );
    assert_eq!(claims[0].kind, "debug-shell");
    assert_eq!(claims[1].kind, "unspecified");
    for c in &claims {
        assert!(c.time.ends_with('Z') && c.time.len() == 20, "{}", c.time);
    }
    let replayed = parsed.replay();
    for bank in HashAlg::ALL {
        for index in [15, 11] {
            assert!(
                records
                    .iter()
                    .filter(|r| r.pcr == Some(index))
                    .all(|r| r.digest(bank).is_some()),
                "a {bank} digest missing from a PCR {index} record"
            );
            assert_eq!(
                replayed[&bank][&index].to_hex(),
                pcr(&tpm, &bank.to_string(), index),
                "{bank} PCR {index}"
            );
        }
    }
}

#[test]
fn bad_input_fails_clearly_and_writes_nothing() {
    if !base_tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let log = d.join("log/tpm2-measure.log");
    // Nothing listening on the port: no TPM.
    let unused = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let e = fails(
        imgctl()
            .env("IMGCTL_TCTI", format!("swtpm:host=127.0.0.1,port={unused}"))
            .arg("measure")
            .arg("--log")
            .arg(&log)
            .args(["break-glass", "--reason", "x"]),
    );
    assert!(e.contains("cannot reach the TPM"), "{e}");
    assert!(!log.exists() && !log.parent().unwrap().exists());
    let e = fails(imgctl().args(["tpm", "--tcti", "nosuchdriver:x", "pcrs"]));
    assert!(e.contains("invalid TCTI"), "{e}");
    let e = fails(imgctl().args(["tpm", "--tcti", "device:/dev/nonexistent-tpm", "pcrs"]));
    assert!(e.contains("cannot reach the TPM"), "{e}");

    let tpm = Swtpm::start_tcp();
    // A key type the TPM policy cannot use.
    let (_, ed_pub) = genkey(d, "ed", &["-algorithm", "ED25519"]);
    let blob = d.join("sealed.json");
    let e = fails(
        with_tpm(&tpm)
            .args(["tpm", "seal", "--public-key"])
            .arg(&ed_pub)
            .arg("-o")
            .arg(&blob),
    );
    assert!(e.contains("Ed25519"), "{e}");
    assert!(!blob.exists());
    // A break-glass without a reason, and an extend the TPM refuses (PCR out of range):
    // nothing appended, no dirty marker.
    run_ok(
        with_tpm(&tpm)
            .arg("measure")
            .arg("--log")
            .arg(&log)
            .args(["phase", "sysinit"]),
    );
    let before = std::fs::read(&log).unwrap();
    let e = fails(with_tpm(&tpm).arg("measure").arg("--log").arg(&log).args([
        "break-glass",
        "--reason",
        " ",
    ]));
    assert!(e.contains("reason"), "{e}");
    let e = fails(
        with_tpm(&tpm)
            .arg("measure")
            .arg("--log")
            .arg(&log)
            .args(["event", "--pcr", "24", "--string", "x"]),
    );
    assert!(e.contains("24"), "{e}");
    assert_eq!(std::fs::read(&log).unwrap(), before);
    assert_eq!(
        std::fs::metadata(&log).unwrap().permissions().mode() & 0o1000,
        0
    );
    // A .pcrsig that is not JSON.
    let junk = d.join("junk.pcrsig");
    std::fs::write(&junk, b"{\"sha256\": 5}").unwrap();
    let (_, public) = genkey(d, "k", EC);
    let secret = d.join("secret");
    std::fs::write(&secret, b"x").unwrap();
    run_ok(&mut seal_cmd(&tpm, &public, &secret, &blob));
    let out = d.join("out");
    let o = unseal(&tpm, &blob, &junk, &out);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a .pcrsig JSON document"));
    assert!(!out.exists());
}

#[test]
fn a_locked_out_tpm_is_reported_as_such() {
    if !base_tools() || !have(&[("tpm2_dictionarylockout", "tpm2-tools")]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tpm = Swtpm::start_tcp();
    let tools = |args: &[&str]| {
        Command::new(args[0])
            .args(&args[1..])
            .current_dir(d)
            .env("TPM2TOOLS_TCTI", tpm.tcti())
            .output()
            .unwrap()
    };
    // One allowed failure, then a wrong password on a DA-protected key: lockout.
    assert!(tools(&[
        "tpm2_dictionarylockout",
        "-s",
        "-n",
        "1",
        "-t",
        "600",
        "-l",
        "600"
    ])
    .status
    .success());
    assert!(tools(&[
        "tpm2_createprimary",
        "-C",
        "o",
        "-c",
        "p.ctx",
        "-p",
        "right"
    ])
    .status
    .success());
    assert!(!tools(&[
        "tpm2_create",
        "-C",
        "p.ctx",
        "-P",
        "wrong",
        "-u",
        "a.pub",
        "-r",
        "a.priv"
    ])
    .status
    .success());
    let _ = tools(&["tpm2_flushcontext", "-t"]);
    let (_, public) = genkey(d, "k", EC);
    let secret = d.join("secret");
    std::fs::write(&secret, b"x").unwrap();
    let blob = d.join("sealed.json");
    let e = fails(&mut seal_cmd(&tpm, &public, &secret, &blob));
    assert!(e.contains("dictionary-attack lockout"), "{e}");
    assert!(!blob.exists());
}

/// An ECDSA P-256 AK made and used by tpm2-tools (not by imgctl): our quote verifier accepts
/// its quote with the AK given as the PEM SubjectPublicKeyInfo tpm2-tools writes and as its
/// TPM2B_PUBLIC, and refuses it for another nonce or with a flipped signature bit.
#[test]
fn a_tpm2_tools_ecdsa_p256_quote_verifies_with_our_verifier() {
    use imgctl_attest::quote::{verify_quote, AkPublic, Signature};
    if !base_tools() || !have(&[("tpm2_quote", "tpm2-tools")]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tpm = Swtpm::start_tcp();
    let run = |args: &[&str]| {
        let out = Command::new(args[0])
            .args(&args[1..])
            .current_dir(d)
            .env("TPM2TOOLS_TCTI", tpm.tcti())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // swtpm has no resource manager here: flush transient objects after every step (the
    // tools keep saved contexts in files).
    let tools = |args: &[&str]| {
        run(args);
        run(&["tpm2_flushcontext", "-t"]);
    };
    tools(&[
        "tpm2_createprimary",
        "-C",
        "e",
        "-G",
        "ecc",
        "-c",
        "primary.ctx",
    ]);
    tools(&[
        "tpm2_create",
        "-C",
        "primary.ctx",
        "-G",
        "ecc256:ecdsa-sha256:null",
        "-a",
        "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign",
        "-u",
        "ak.pub",
        "-r",
        "ak.priv",
    ]);
    tools(&[
        "tpm2_load",
        "-C",
        "primary.ctx",
        "-u",
        "ak.pub",
        "-r",
        "ak.priv",
        "-c",
        "ak.ctx",
    ]);
    tools(&[
        "tpm2_readpublic",
        "-c",
        "ak.ctx",
        "-f",
        "pem",
        "-o",
        "ak.pem",
    ]);
    tools(&[
        "tpm2_quote",
        "-c",
        "ak.ctx",
        "-l",
        "sha256:0,7,11",
        "-q",
        "abcdef0123",
        "-m",
        "quote.msg",
        "-s",
        "quote.sig",
        "-g",
        "sha256",
    ]);
    let msg = std::fs::read(d.join("quote.msg")).unwrap();
    let sig_bytes = std::fs::read(d.join("quote.sig")).unwrap();
    let sig = Signature::parse(&sig_bytes).unwrap();
    assert!(matches!(sig, Signature::Ecdsa { .. }));
    let values = |bank: imgctl_measure::HashAlg, index: u32| {
        Some(imgctl_measure::Digest(
            hex::decode(pcr(&tpm, &bank.to_string(), index)).unwrap(),
        ))
    };
    for ak_file in ["ak.pem", "ak.pub"] {
        let ak = AkPublic::parse(&std::fs::read(d.join(ak_file)).unwrap()).unwrap();
        assert!(matches!(ak, AkPublic::Ecc { .. }), "{ak_file}");
        verify_quote(&msg, &sig, &ak, &hex::decode("abcdef0123").unwrap(), values)
            .unwrap_or_else(|e| panic!("{ak_file}: {e}"));
        assert!(
            verify_quote(&msg, &sig, &ak, &hex::decode("abcdef0124").unwrap(), values).is_err()
        );
        let mut flipped = sig_bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        let bad = Signature::parse(&flipped).unwrap();
        assert!(
            verify_quote(&msg, &bad, &ak, &hex::decode("abcdef0123").unwrap(), values).is_err()
        );
    }
}
