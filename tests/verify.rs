//! The verifier on the real OVMF + swtpm + systemd-stub 252 capture, a generated tampering
//! corpus, the break-glass audit, and the CLI.

#![allow(clippy::unwrap_used)] // reason: test code; a panic is a test failure

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use imgctl_attest::breakglass::{BreakGlass, PCR};
use imgctl_attest::eventlog::{self, Event, EventLog, EventType, UserspaceLog};
use imgctl_attest::userspace_record::Origin;
use imgctl_attest::verify::{self, Policy, References, Severity, Verdict};
use imgctl_measure::pcr11::{name_bytes, StubSemantics};
use imgctl_measure::predict::{predict_from_digests, PhasePath};
use imgctl_measure::{Digest, HashAlg};

const OVMF: &str = "testdata/eventlogs/ovmf-swtpm";

struct Capture {
    dir: PathBuf,
    log: EventLog,
    /// sha256 of the inputs, by file name (ovmf-stub252-inputs.sha256).
    inputs: BTreeMap<String, String>,
    /// `PCR <bank> <index> <HEX>` as the guest read them.
    pcrs: BTreeMap<String, BTreeMap<String, String>>,
}

fn capture() -> Option<Capture> {
    let dir = common::shared_dir()?.join(OVMF);
    let log =
        EventLog::parse(&std::fs::read(dir.join("ovmf-stub252-eventlog.bin")).unwrap()).unwrap();
    let inputs = std::fs::read_to_string(dir.join("ovmf-stub252-inputs.sha256"))
        .unwrap()
        .lines()
        .map(|l| {
            let (h, n) = l.split_once(' ').unwrap();
            (n.trim().to_owned(), h.to_owned())
        })
        .collect();
    let mut pcrs: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for l in std::fs::read_to_string(dir.join("ovmf-stub252-pcrs.txt"))
        .unwrap()
        .lines()
    {
        let f: Vec<&str> = l.split_whitespace().collect();
        // PCR 10 (IMA) and 11 (checked through the references) are not golden values.
        if f[2] != "10" && f[2] != "11" {
            pcrs.entry(f[1].into())
                .or_default()
                .insert(f[2].into(), f[3].to_lowercase());
        }
    }
    Some(Capture {
        dir,
        log,
        inputs,
        pcrs,
    })
}

/// Section → input file, as MANIFEST.md describes the UKI that booted.
const SECTIONS: [(&str, &str); 4] = [
    (".linux", "vmlinuz"),
    (".osrel", "osrel"),
    (".cmdline", "cmdline"),
    (".initrd", "initrd.cpio"),
];

fn manifest(c: &Capture) -> serde_json::Value {
    let sections: Vec<_> = SECTIONS
        .iter()
        .map(|(s, f)| serde_json::json!({"name": s, "measured": true, "digests": {"sha256": c.inputs[*f]}}))
        .collect();
    let pcrs: serde_json::Value = serde_json::from_slice(
        &std::fs::read(c.dir.join("ovmf-stub252-systemd-measure.json")).unwrap(),
    )
    .unwrap();
    common::reference_manifest("demo", "demo.efi", "systemd-252", &sections, pcrs)
}

const POLICY_PCRS: [u32; 10] = [0, 1, 2, 3, 4, 5, 6, 7, 9, 11];

/// The guest's PCR values for the policy's PCRs (golden values for PCRs it does not check are
/// a policy error).
fn golden(c: &Capture) -> BTreeMap<String, BTreeMap<String, String>> {
    c.pcrs
        .iter()
        .map(|(b, m)| {
            let m = m
                .iter()
                .filter(|(p, _)| POLICY_PCRS.contains(&p.parse().unwrap()))
                .map(|(p, v)| (p.clone(), v.clone()))
                .collect();
            (b.clone(), m)
        })
        .collect()
}

fn policy_json(c: &Capture) -> serde_json::Value {
    serde_json::json!({"pcrs": POLICY_PCRS, "banks": ["sha1", "sha256"], "expected": golden(c)})
}

fn setup(c: &Capture) -> (Policy, References) {
    let policy = Policy::parse(&policy_json(c).to_string()).unwrap();
    let mut refs = References::from_policy(&policy).unwrap();
    refs.artifacts.push(
        verify::parse_manifest("demo.manifest.json", manifest(c).to_string().as_bytes()).unwrap(),
    );
    (policy, refs)
}

fn phase_log(words: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for w in words {
        let digests: Vec<_> = [HashAlg::SHA1, HashAlg::SHA256]
            .iter()
            .map(|b| serde_json::json!({"hashAlg": b.to_string(), "digest": b.hash(w.as_bytes()).unwrap().to_hex()}))
            .collect();
        out.push(0x1e);
        out.extend_from_slice(
            serde_json::json!({"pcr": 11, "digests": digests, "content_type": "systemd",
                "content": {"string": w, "bootId": "0", "timestamp": 1, "eventType": "phase"}})
            .to_string()
            .as_bytes(),
        );
        out.push(b'\n');
    }
    out
}

/// The stub's PCR 11 events equal what measure::predict computes from the sections that
/// booted (their sha256 from ovmf-stub252-inputs.sha256), and the replayed PCR 11 equals
/// systemd-measure's value in all four banks.
#[test]
fn ovmf_stub252_pcr11_events_match_the_prediction() {
    let Some(c) = capture() else { return };
    let pcr11: Vec<&Event> = c.log.events.iter().filter(|e| e.pcr == 11).collect();
    let order: Vec<&str> = StubSemantics::Systemd252
        .measured_sections()
        .filter(|s| SECTIONS.iter().any(|(n, _)| n == s))
        .collect();
    assert_eq!(pcr11.len(), 2 * order.len());
    for (pair, name) in pcr11.chunks(2).zip(&order) {
        let (buf, n) = name_bytes(name);
        for e in pair {
            assert_eq!(e.event_type, EventType::EV_IPL);
            assert_eq!(eventlog::describe(e), *name);
        }
        for (bank, d) in &pair[0].digests {
            assert_eq!(
                d,
                &bank.hash(&buf[..n]).unwrap(),
                "{name} name event, {bank}"
            );
        }
        let file = SECTIONS.iter().find(|(s, _)| s == name).unwrap().1;
        assert_eq!(
            pair[1].digest(HashAlg::SHA256).unwrap().to_hex(),
            c.inputs[file],
            "{name}"
        );
    }
    // The two small sections are known byte for byte (MANIFEST.md).
    assert_eq!(
        HashAlg::SHA256
            .hash(b"ID=demo\nVERSION_ID=1\n")
            .unwrap()
            .to_hex(),
        c.inputs["osrel"]
    );
    assert_eq!(
        HashAlg::SHA256
            .hash(b"console=ttyS0 quiet")
            .unwrap()
            .to_hex(),
        c.inputs["cmdline"]
    );

    let placeholders: Vec<Vec<u8>> = SECTIONS
        .iter()
        .map(|(s, _)| s.as_bytes().to_vec())
        .collect();
    let digests: Vec<[Digest; 1]> = SECTIONS
        .iter()
        .map(|(_, f)| [Digest(hex::decode(&c.inputs[*f]).unwrap())])
        .collect();
    let with: Vec<(&str, &[u8], &[Digest])> = SECTIONS
        .iter()
        .zip(&placeholders)
        .zip(&digests)
        .map(|(((s, _), p), d)| (*s, p.as_slice(), d.as_slice()))
        .collect();
    let p = predict_from_digests(
        StubSemantics::Systemd252,
        &with,
        &[HashAlg::SHA256],
        &[PhasePath::default()],
    )
    .unwrap();
    let replay = eventlog::replay(&c.log);
    assert_eq!(
        p.get(HashAlg::SHA256, &PhasePath::default()),
        replay.value(HashAlg::SHA256, 11).as_ref()
    );
    let sm: serde_json::Value = serde_json::from_slice(
        &std::fs::read(c.dir.join("ovmf-stub252-systemd-measure.json")).unwrap(),
    )
    .unwrap();
    for bank in HashAlg::ALL {
        assert_eq!(
            sm[bank.to_string()][0]["hash"].as_str().unwrap(),
            replay.value(bank, 11).unwrap().to_hex(),
            "systemd-measure PCR 11 {bank}"
        );
    }
}

#[test]
fn the_capture_is_accepted_against_the_uki_that_booted_and_rejected_against_another() {
    let Some(c) = capture() else { return };
    let (policy, refs) = setup(&c);
    let u = UserspaceLog::parse(&phase_log(&["enter-initrd", "leave-initrd"])).unwrap();
    let v = verify::verify(&policy, &refs, &c.log, Some(&u), None);
    assert!(v.accepted, "{:#?}", v.findings);
    assert!(
        v.checked
            .iter()
            .any(|x| x.contains("PCR 11 sha256 after phase path :")),
        "{:?}",
        v.checked
    );

    // Another UKI: a different .cmdline.
    let mut m = manifest(&c);
    m["uki"]["sections"][2]["digests"]["sha256"] = HashAlg::SHA256
        .hash(b"console=ttyS0")
        .unwrap()
        .to_hex()
        .into();
    m["pcrs"] = serde_json::json!({});
    let mut other = References::from_policy(&policy).unwrap();
    other
        .artifacts
        .push(verify::parse_manifest("other.json", m.to_string().as_bytes()).unwrap());
    let v = verify::verify(&policy, &other, &c.log, None, None);
    assert!(!v.accepted);
    let first = &v.findings[0];
    assert_eq!(
        (first.kind, first.index, first.pcr),
        ("section-digest", Some(36), Some(11)),
        "{first:#?}"
    );
    assert_eq!(first.artifact.as_deref(), Some("demo.efi (demo)"));
    assert!(first
        .expected
        .as_deref()
        .unwrap()
        .contains(&HashAlg::SHA256.hash(b"console=ttyS0").unwrap().to_hex()));
}

fn rejected(v: &Verdict, what: &str, kinds: &[&str]) {
    assert!(!v.accepted, "FALSE ACCEPT: {what}");
    let first = &v.findings[0];
    assert_eq!(first.severity, Severity::Reject);
    assert!(
        kinds.contains(&first.kind),
        "{what}: first finding {first:#?}"
    );
}

/// Every single-step tampering of the real capture is caught, with the right explanation.
#[test]
fn tampering_corpus_is_caught_with_zero_false_accepts() {
    let Some(c) = capture() else { return };
    let (policy, refs) = setup(&c);
    let base = &c.log;
    let check = |log: &EventLog| verify::verify(&policy, &refs, log, None, None);
    let extending: Vec<usize> = (0..base.events.len())
        .filter(|i| base.events[*i].event_type != EventType::EV_NO_ACTION)
        .collect();
    let mut cases = 0;

    // Removed.
    for &i in &extending {
        let mut log = base.clone();
        log.events.remove(i);
        rejected(
            &check(&log),
            &format!("event {i} removed"),
            &[
                "pcr-mismatch",
                "section-order",
                "section-digest",
                "missing-event",
            ],
        );
        cases += 1;
    }
    // Inserted: an unknown EV_IPL into PCR 11 and an extra application into PCR 4, everywhere.
    for at in 0..=base.events.len() {
        for (pcr, t) in [
            (11, EventType::EV_IPL),
            (4, EventType::EV_EFI_BOOT_SERVICES_APPLICATION),
        ] {
            let mut log = base.clone();
            let mut e = base.events[extending[0]].clone();
            e.pcr = pcr;
            e.event_type = t;
            e.digests = e
                .digests
                .iter()
                .map(|(b, _)| (*b, b.hash(b"evil").unwrap()))
                .collect();
            log.events.insert(at, e);
            rejected(
                &check(&log),
                &format!("{t} inserted into PCR {pcr} at {at}"),
                &[
                    "pcr-mismatch",
                    "section-order",
                    "unknown-event",
                    "section-digest",
                ],
            );
            cases += 1;
        }
    }
    // Reordered: adjacent events of one PCR with different digests.
    for w in extending.windows(2) {
        let (a, b) = (w[0], w[1]);
        if base.events[a].pcr != base.events[b].pcr
            || base.events[a].digests == base.events[b].digests
        {
            continue;
        }
        let mut log = base.clone();
        log.events.swap(a, b);
        rejected(
            &check(&log),
            &format!("events {a},{b} swapped"),
            &["pcr-mismatch", "section-order", "section-digest"],
        );
        cases += 1;
    }
    // A digest changed, in each checked bank.
    for &i in &extending {
        for bank in [HashAlg::SHA1, HashAlg::SHA256] {
            let mut log = base.clone();
            let e = &mut log.events[i];
            let Some(pos) = e.digests.iter().position(|(b, _)| *b == bank) else {
                continue;
            };
            e.digests[pos].1 .0[0] ^= 1;
            rejected(
                &check(&log),
                &format!("event {i} {bank} digest changed"),
                &[
                    "pcr-mismatch",
                    "section-order",
                    "section-digest",
                    "digest-mismatch",
                ],
            );
            cases += 1;
        }
    }
    // A description changed, digest kept: every event whose description its digest or a
    // reference binds (the stub's sections; payload-hashed firmware events).
    let mut described = 0;
    for &i in &extending {
        let e = &base.events[i];
        let mut log = base.clone();
        let kinds: &[&str] = if e.pcr == 11 {
            let other = if eventlog::describe(e) == ".linux" {
                ".initrd"
            } else {
                ".linux"
            };
            log.events[i].data = other
                .encode_utf16()
                .chain([0])
                .flat_map(u16::to_le_bytes)
                .collect();
            &["section-order", "section-digest"]
        } else if !eventlog::lint::payload_candidates(e).is_empty() {
            log.events[i].data.push(b'!');
            &["digest-mismatch"]
        } else {
            continue;
        };
        let v = check(&log);
        rejected(&v, &format!("event {i} description changed"), kinds);
        assert_eq!(v.findings[0].index, Some(i));
        described += 1;
        cases += 1;
    }
    assert!(described >= 8 + 6, "only {described} description cases");
    eprintln!("tampering corpus: {cases} cases, all rejected");
}

fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p
}

#[test]
fn break_glass_is_rejected_by_verify_and_listed_by_audit() {
    let Some(c) = capture() else { return };
    let (policy, refs) = setup(&c);
    // The recorder's encoding (imgctl measure break-glass), 2026-11-23T01:02:03Z.
    let bg = BreakGlass::new("alice", "debug-shell", "INC-7 disk full", 1_795_395_723).unwrap();
    let origin = Origin {
        boot_id: "0".into(),
        timestamp_usec: 2,
    };
    let mut ulog = phase_log(&["enter-initrd"]);
    ulog.extend(
        bg.record(PCR, &[HashAlg::SHA1, HashAlg::SHA256], &origin)
            .unwrap()
            .to_json_seq(),
    );
    let u = UserspaceLog::parse(&ulog).unwrap();
    let v = verify::verify(&policy, &refs, &c.log, Some(&u), None);
    rejected(&v, "break-glass", &["break-glass"]);
    assert!(v.findings[0].message.contains("alice"));

    let tmp = tempfile::tempdir().unwrap();
    let el = c.dir.join("ovmf-stub252-eventlog.bin");
    let ul = write(tmp.path(), "tpm2-measure.log", &ulog);
    // What the TPM shows after these records: the replay of both logs.
    let pcrs = u.replay_onto(&eventlog::replay(&c.log).values);
    let pcrs_json = serde_json::to_string(&eventlog::PcrValuesJson(&pcrs)).unwrap();
    let pf = write(tmp.path(), "pcrs.json", pcrs_json.as_bytes());
    let run = |ul: &Path| {
        common::imgctl()
            .args(["audit", "--json", "--userspace-log"])
            .arg(ul)
            .arg("--eventlog")
            .arg(&el)
            .arg("--pcrs")
            .arg(&pf)
            .output()
            .unwrap()
    };
    let out = run(&ul);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["break_glass"][0]["actor"], "alice");
    assert_eq!(j["break_glass"][0]["reason"], "INC-7 disk full");
    assert_eq!(j["consistent"], true, "{j}");

    // The record removed: no break-glass listed, but PCR 15 gives it away (exit 4).
    let ul2 = write(tmp.path(), "removed.log", &phase_log(&["enter-initrd"]));
    let out = run(&ul2);
    assert_eq!(out.status.code(), Some(4));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(j["problems"][0].as_str().unwrap().contains("PCR 15"), "{j}");

    // The record altered (reason rewritten, digests kept).
    let altered = String::from_utf8(ulog.clone())
        .unwrap()
        .replace("INC-7 disk full", "routine check");
    let ul3 = write(tmp.path(), "altered.log", altered.as_bytes());
    let out = run(&ul3);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        j["problems"][0].as_str().unwrap().contains("altered"),
        "{j}"
    );
    // Defect A4: tampering is "inconsistent" (exit 4), not a benign break-glass finding.
    assert_eq!(out.status.code(), Some(4), "{j}");
    assert_eq!(j["verdict"], "inconsistent");

    // The actor changed and the digests recomputed: the record is self-consistent, but the
    // replay no longer gives the PCR 15 the TPM reports. Inconsistent too.
    let forged_bg =
        BreakGlass::new("mallory", "debug-shell", "INC-7 disk full", 1_795_395_723).unwrap();
    let mut forged = phase_log(&["enter-initrd"]);
    forged.extend(
        forged_bg
            .record(PCR, &[HashAlg::SHA1, HashAlg::SHA256], &origin)
            .unwrap()
            .to_json_seq(),
    );
    let ul5 = write(tmp.path(), "forged.log", &forged);
    let out = run(&ul5);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(4), "{j}");
    assert_eq!(j["consistent"], false);

    // No break-glass, consistent: exit 0.
    let clean = phase_log(&["enter-initrd"]);
    let ul4 = write(tmp.path(), "clean.log", &clean);
    let pcrs = UserspaceLog::parse(&clean)
        .unwrap()
        .replay_onto(&eventlog::replay(&c.log).values);
    write(
        tmp.path(),
        "pcrs.json",
        serde_json::to_string(&eventlog::PcrValuesJson(&pcrs))
            .unwrap()
            .as_bytes(),
    );
    assert_eq!(run(&ul4).status.code(), Some(0));
}

#[test]
fn verify_cli_accepts_the_capture_and_explains_a_rejection() {
    let Some(c) = capture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    write(
        tmp.path(),
        "demo.manifest.json",
        manifest(&c).to_string().as_bytes(),
    );
    let mut policy = policy_json(&c);
    policy["manifests"] = serde_json::json!(["demo.manifest.json"]);
    let yaml = serde_yaml::to_string(&policy).unwrap();
    let pf = write(tmp.path(), "policy.yaml", yaml.as_bytes());
    let el = c.dir.join("ovmf-stub252-eventlog.bin");
    let out = common::imgctl()
        .args(["verify", "--json", "--eventlog"])
        .arg(&el)
        .arg("--policy")
        .arg(&pf)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let mut bad = std::fs::read(&el).unwrap();
    let at = c.log.events[36].offset + 12 + 2 + 20 + 2; // .cmdline content event, sha256 digest
    bad[at] ^= 0x80;
    let bf = write(tmp.path(), "bad.bin", &bad);
    let out = common::imgctl()
        .args(["verify", "--eventlog"])
        .arg(&bf)
        .arg("--policy")
        .arg(&pf)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("REJECT"), "{text}");
    assert!(
        text.contains("first divergence: [section-digest] event 36: content of section .cmdline"),
        "{text}"
    );
    assert!(text.contains("artifact: demo.efi"), "{text}");
}

fn run_verify(args: &[&std::ffi::OsStr]) -> (Option<i32>, String, String) {
    let out = common::imgctl().arg("verify").args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Defect A6: typos in a policy (unknown key, bank, PCR; bad hex; golden values nothing checks;
/// a pcrs.json given as a manifest) were dropped or ignored. Each is exit 3, one line naming the
/// key or file.
#[test]
fn policy_typos_are_errors_naming_the_key() {
    let Some(c) = capture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    write(
        tmp.path(),
        "demo.manifest.json",
        manifest(&c).to_string().as_bytes(),
    );
    std::fs::copy(
        c.dir.join("ovmf-stub252-systemd-measure.json"),
        tmp.path().join("pcrs.json"),
    )
    .unwrap();
    let el = c.dir.join("ovmf-stub252-eventlog.bin");
    let z = "00".repeat(32);
    let cases: Vec<(serde_json::Value, &str)> = vec![
        (serde_json::json!({"pcrs": [0], "bnks": ["sha256"]}), "bnks"),
        (
            serde_json::json!({"pcrs": [0], "banks": ["sha-256"]}),
            "sha-256",
        ),
        (serde_json::json!({"pcrs": [0], "banks": ["md5"]}), "md5"),
        (serde_json::json!({"pcrs": [7, 99]}), "99"),
        (serde_json::json!({"pcrs": []}), "pcrs"),
        (serde_json::json!({"banks": ["sha256"]}), "pcrs"),
        (
            serde_json::json!({"pcrs": [0], "expected": {"sha256": {"0": "abc"}}}),
            "expected.sha256.0",
        ),
        (
            serde_json::json!({"pcrs": [0], "expected": {"sha256": {"0": "zz"}}}),
            "expected.sha256.0",
        ),
        (
            serde_json::json!({"pcrs": [0], "expected": {"sha256": {"0": "00"}}}),
            "expected.sha256.0",
        ),
        (
            serde_json::json!({"pcrs": [0], "expected": {"sha256": {"7": z}}}),
            "expected.sha256.7",
        ),
        (
            serde_json::json!({"pcrs": [0], "banks": ["sha1"], "expected": {"sha256": {"0": z}}}),
            "expected.sha256",
        ),
        (
            serde_json::json!({"pcrs": [11], "manifests": ["pcrs.json"]}),
            "pcrs.json",
        ),
        (
            serde_json::json!({"pcrs": [11], "pcrs_json": ["demo.manifest.json"]}),
            "demo.manifest.json",
        ),
        (
            serde_json::json!({"pcrs": [11], "require_quote": "yes"}),
            "require_quote",
        ),
    ];
    for (policy, key) in cases {
        let pf = write(
            tmp.path(),
            "policy.yaml",
            serde_yaml::to_string(&policy).unwrap().as_bytes(),
        );
        let (code, out, err) = run_verify(&[
            "--eventlog".as_ref(),
            el.as_os_str(),
            "--policy".as_ref(),
            pf.as_os_str(),
        ]);
        assert_eq!(code, Some(3), "{policy}: {out}{err}");
        assert!(err.contains(key), "{policy}: {err}");
        assert_eq!(err.lines().count(), 1, "{policy}: {err}");
        assert!(out.is_empty(), "{policy}: {out}");
    }
}

/// A6: a policy under which nothing is checked never accepts: PCRs no reference covers.
#[test]
fn a_policy_that_checks_nothing_never_accepts() {
    let Some(c) = capture() else { return };
    let run = |json: serde_json::Value| {
        let policy = Policy::parse(&json.to_string()).unwrap();
        let (_, mut refs) = setup(&c);
        refs.expected = References::from_policy(&policy).unwrap().expected;
        verify::verify(&policy, &refs, &c.log, None, None)
    };
    // PCR 7 with no golden value and no reference: nothing to compare.
    let v = run(serde_json::json!({"pcrs": [7]}));
    assert!(!v.accepted, "{v:#?}");
    // A golden value in sha256 only, but sha1 checked too: sha1 PCR 7 is unchecked.
    let mut g = golden(&c);
    g.remove("sha1");
    g.get_mut("sha256").unwrap().retain(|p, _| p == "7");
    let v = run(serde_json::json!({"pcrs": [7], "banks": ["sha1", "sha256"], "expected": g}));
    assert!(!v.accepted);
    assert!(
        v.findings
            .iter()
            .any(|f| f.kind == "unchecked-pcr" && f.message.contains("sha1")),
        "{v:#?}"
    );
    // The same with sha256 alone accepts.
    let v = run(serde_json::json!({"pcrs": [7], "banks": ["sha256"], "expected": g}));
    assert!(v.accepted, "{v:#?}");
    // require_quote without a quote rejects.
    let v = run(
        serde_json::json!({"pcrs": [7], "banks": ["sha256"], "expected": g, "require_quote": true}),
    );
    assert!(!v.accepted);
    assert!(v.findings.iter().any(|f| f.kind == "quote"), "{v:#?}");
}

/// Defect A7: unreadable evidence gave 1 (reject); it is 3, with one line naming the file.
#[test]
fn unreadable_evidence_is_exit_3_naming_the_file() {
    let Some(c) = capture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let mut p = policy_json(&c);
    p["banks"] = serde_json::json!(["sha256"]);
    p["expected"].as_object_mut().unwrap().remove("sha1");
    let pf = write(tmp.path(), "policy.json", p.to_string().as_bytes());
    let el = c.dir.join("ovmf-stub252-eventlog.bin");
    let garbage = write(tmp.path(), "garbage", b"not a log");
    let quote = write(
        tmp.path(),
        "quote.json",
        br#"{"quote": "00", "signature": "00"}"#,
    );
    let missing = tmp.path().join("missing");
    let base = |extra: &[&std::ffi::OsStr], log: &Path| {
        let mut a: Vec<&std::ffi::OsStr> = vec!["--policy".as_ref(), pf.as_os_str()];
        a.extend_from_slice(&["--eventlog".as_ref(), log.as_os_str()]);
        a.extend_from_slice(extra);
        run_verify(&a)
    };
    let cases: Vec<(Vec<&std::ffi::OsStr>, &Path, String)> = vec![
        (vec![], &missing, missing.display().to_string()),
        (vec![], &garbage, garbage.display().to_string()),
        (vec![], Path::new("/dev/zero"), "/dev/zero".into()),
        (
            vec!["--userspace-log".as_ref(), missing.as_os_str()],
            &el,
            missing.display().to_string(),
        ),
        (
            vec!["--userspace-log".as_ref(), garbage.as_os_str()],
            &el,
            garbage.display().to_string(),
        ),
        (
            vec![
                "--quote".as_ref(),
                missing.as_os_str(),
                "--ak".as_ref(),
                garbage.as_os_str(),
            ],
            &el,
            missing.display().to_string(),
        ),
        (
            vec![
                "--quote".as_ref(),
                garbage.as_os_str(),
                "--ak".as_ref(),
                garbage.as_os_str(),
            ],
            &el,
            garbage.display().to_string(),
        ),
        (
            vec![
                "--quote".as_ref(),
                quote.as_os_str(),
                "--ak".as_ref(),
                garbage.as_os_str(),
                "--nonce".as_ref(),
                "xyz".as_ref(),
            ],
            &el,
            "--nonce".into(),
        ),
        (
            vec![
                "--quote".as_ref(),
                quote.as_os_str(),
                "--ak".as_ref(),
                garbage.as_os_str(),
            ],
            &el,
            quote.display().to_string(),
        ),
    ];
    for (extra, log, name) in cases {
        let (code, out, err) = base(&extra, log);
        assert_eq!(code, Some(3), "{extra:?} {}: {out}{err}", log.display());
        assert!(err.contains(&name), "{name}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

/// Defect A6: quote coverage is per (bank, PCR): the Windows GCE quote covers SHA-1 PCRs
/// only, so it does not vouch for a SHA-256 replay.
#[test]
fn a_sha1_quote_does_not_cover_a_sha256_check() {
    let Some(d) = common::shared_dir() else {
        return;
    };
    use base64::Engine as _;
    let j: serde_json::Value = serde_json::from_slice(
        &std::fs::read(d.join("testdata/eventlogs/go-attestation/windows_gcp_shielded_vm.json"))
            .unwrap(),
    )
    .unwrap();
    let b64 = |v: &serde_json::Value| {
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap()
    };
    let log = EventLog::parse(&b64(&j["Log"]["Raw"])).unwrap();
    let attest = b64(&j["Quote"]["Quote"]);
    let sig = imgctl_attest::quote::Signature::parse(&b64(&j["Quote"]["Signature"])).unwrap();
    let ak = imgctl_attest::quote::AkPublic::parse(&b64(&j["AK"]["Public"])).unwrap();
    let r = eventlog::replay(&log);
    let q = verify::QuoteEvidence {
        attest: &attest,
        signature: &sig,
        ak: &ak,
        nonce: b"",
    };
    for (bank, ok) in [(HashAlg::SHA1, true), (HashAlg::SHA256, false)] {
        let policy = Policy::parse(
            &serde_json::json!({"pcrs": [0], "banks": [bank.to_string()], "allow_lint_findings": true,
                "require_quote": true,
                "expected": {bank.to_string(): {"0": r.value(bank, 0).unwrap().to_hex()}}})
            .to_string(),
        )
        .unwrap();
        let refs = References::from_policy(&policy).unwrap();
        let v = verify::verify(&policy, &refs, &log, None, Some(q));
        // (The log's Windows EV_EVENT_TAG events in PCR 12–13 reject on their own; only the
        // quote's findings matter here.)
        let quote: Vec<_> = v.findings.iter().filter(|f| f.kind == "quote").collect();
        assert_eq!(quote.is_empty(), ok, "{bank}: {quote:#?}");
        if !ok {
            assert!(
                quote[0].message.contains("PCR 0 in bank sha256"),
                "{quote:#?}"
            );
        }
        assert!(v.checked.iter().any(|c| c.starts_with("quote: signature")));
        // The predicted-vs-measured row says whether the quote vouches for the measured value.
        let row = v
            .pcrs
            .iter()
            .find(|r| r.pcr == 0 && r.bank == bank)
            .unwrap();
        let from = if ok { "replay = quote" } else { "replay" };
        assert_eq!(row.measured_from, from, "{row:?}");
        assert_eq!(row.predicted, row.measured, "{row:?}");
    }
}

/// A log holding `record` (the capture's reference manifest, as a v2 entry), with its vkey.
fn log_with(dir: &Path, name: &str, record: &serde_json::Value) -> (PathBuf, String) {
    let (log, key) = (dir.join(name), dir.join(format!("{name}.key")));
    let o = common::imgctl()
        .args(["log", "init"])
        .arg(&log)
        .arg("--key")
        .arg(&key)
        .args(["--origin", &format!("example.org/{name}")])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut r = record.clone();
    // The log requires a file digest; the capture records none for the UKI file itself.
    r["recipe"]["digests"]["sha256"] = "00".repeat(32).into();
    r["uki"]["digests"]["sha256"] = "00".repeat(32).into();
    let f = write(dir, &format!("{name}.entry.json"), r.to_string().as_bytes());
    let o = common::imgctl()
        .args(["log", "append"])
        .arg(&log)
        .arg("--key")
        .arg(&key)
        .arg("--entry")
        .arg(&f)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let vkey = std::fs::read_to_string(dir.join(format!("{name}.vkey"))).unwrap();
    (log, vkey.trim().to_owned())
}

/// Issue 13 item 3 (partly): the captured OVMF + systemd-stub 252 boot verifies against a log
/// alone (no manifest or pcrs.json in the policy): ACCEPT; against a log holding another build
/// (its .cmdline differs): REJECT naming the event; the log served by `python3 -m http.server`
/// verifies the same as the folder; a wrong vkey is an error.
#[test]
fn the_capture_verifies_against_the_log_alone() {
    let Some(c) = capture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (good, vkey) = log_with(tmp.path(), "good", &manifest(&c));
    let mut other = manifest(&c);
    other["uki"]["sections"][2]["digests"]["sha256"] = "11".repeat(32).into();
    other["name"] = "other".into();
    let (bad, bad_vkey) = log_with(tmp.path(), "other", &other);
    let yaml = serde_yaml::to_string(&policy_json(&c)).unwrap();
    let pf = write(tmp.path(), "policy.yaml", yaml.as_bytes());
    let el = c.dir.join("ovmf-stub252-eventlog.bin");
    let verify_with = |log: &str, vkey: &str| {
        run_verify(&[
            "--eventlog".as_ref(),
            el.as_os_str(),
            "--policy".as_ref(),
            pf.as_os_str(),
            "--log".as_ref(),
            log.as_ref(),
            "--vkey".as_ref(),
            vkey.as_ref(),
        ])
    };
    let (code, out, err) = verify_with(good.to_str().unwrap(), &vkey);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.starts_with("ACCEPT"), "{out}");
    let (code, out, err) = verify_with(bad.to_str().unwrap(), &bad_vkey);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        out.starts_with("REJECT")
            && out.contains("event 36")
            && out.contains("not published in the log"),
        "{out}"
    );
    use base64::Engine as _;
    // Offline: the entry's .tlog-proof instead of the log (what `build --log` writes).
    let prove = |log: &Path, name: &str| {
        let out = tmp.path().join(format!("{name}.tlog-proof"));
        common::run_ok(
            common::imgctl()
                .args(["log", "prove"])
                .arg(log)
                .args(["--index", "0", "--out"])
                .arg(&out),
        );
        out
    };
    let (good_proof, other_proof) = (prove(&good, "good"), prove(&bad, "other"));
    let verify_proof = |proof: &Path, vkey: &str| {
        run_verify(&[
            "--eventlog".as_ref(),
            el.as_os_str(),
            "--policy".as_ref(),
            pf.as_os_str(),
            "--proof".as_ref(),
            proof.as_os_str(),
            "--vkey".as_ref(),
            vkey.as_ref(),
        ])
    };
    let (code, out, err) = verify_proof(&good_proof, &vkey);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.starts_with("ACCEPT"), "{out}");
    let (code, out, err) = verify_proof(&other_proof, &bad_vkey);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(out.contains("not published in the proofs"), "{out}");
    // A proof under another key, or whose entry was altered, is no reference: exit 3.
    let (code, out, err) = verify_proof(&good_proof, &bad_vkey);
    assert_eq!(code, Some(3), "{out}{err}");
    let text = std::fs::read_to_string(&good_proof).unwrap();
    let extra = text.lines().find(|l| l.starts_with("extra ")).unwrap();
    let mut b = base64::engine::general_purpose::STANDARD
        .decode(&extra["extra ".len()..])
        .unwrap();
    let at = b.len() / 2;
    b[at] ^= 1;
    let forged = text.replace(
        extra,
        &format!(
            "extra {}",
            base64::engine::general_purpose::STANDARD.encode(&b)
        ),
    );
    let fp = write(tmp.path(), "forged.tlog-proof", forged.as_bytes());
    let (code, out, err) = verify_proof(&fp, &vkey);
    assert_eq!(code, Some(3), "{out}{err}");
    assert!(err.contains("forged.tlog-proof"), "{err}");
    // The good log under the other log's key: not its checkpoint.
    let (code, out, err) = verify_with(good.to_str().unwrap(), &bad_vkey);
    assert_eq!(code, Some(3), "{out}{err}");
    // A witness policy: `quorum none` accepts; one needing a witness that never cosigned
    // refuses the checkpoint, naming the quorum.
    let vkey_text = match vkey.strip_prefix('@') {
        Some(f) => std::fs::read_to_string(f).unwrap(),
        None => vkey.clone(),
    };
    let witness = "w.example+fd0a1844+BAcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcH";
    for (name, policy, want) in [
        (
            "none",
            format!("log {}\nquorum none\n", vkey_text.trim()),
            Some(0),
        ),
        ("one", format!("witness w {witness}\nquorum w\n"), Some(3)),
    ] {
        let wp = write(tmp.path(), &format!("{name}.policy"), policy.as_bytes());
        let (code, out, err) = run_verify(&[
            "--eventlog".as_ref(),
            el.as_os_str(),
            "--policy".as_ref(),
            pf.as_os_str(),
            "--log".as_ref(),
            good.as_os_str(),
            "--vkey".as_ref(),
            vkey.as_ref(),
            "--witness-policy".as_ref(),
            wp.as_os_str(),
        ]);
        assert_eq!(code, want, "{name}: {out}{err}");
        if want == Some(3) {
            assert!(err.contains("quorum is not met"), "{err}");
        }
    }
    // Over HTTP from a plain static file server.
    if common::require_tool("python3", "python3").is_none() {
        return;
    }
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    let mut server = std::process::Command::new("python3")
        .args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &port.to_string(),
        ])
        .current_dir(&good)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/");
    let mut result = None;
    for _ in 0..50 {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let r = verify_with(&url, &vkey);
        if r.0 == Some(0) {
            result = Some(r);
            break;
        }
        result = Some(r);
    }
    let _ = server.kill();
    let _ = server.wait();
    let (code, out, err) = result.unwrap();
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.starts_with("ACCEPT"), "{out}");
}

/// Split view: two logs with the same origin and key but diverging entries. The verifier
/// remembers the first checkpoint (--state) and rejects the second as inconsistent.
#[test]
fn a_split_view_is_rejected_as_inconsistent_with_the_checkpoint_seen_before() {
    let Some(c) = capture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (a, vkey) = log_with(tmp.path(), "a", &manifest(&c));
    // A second folder under the same key (so the same origin), holding another record.
    let b = tmp.path().join("b");
    let key = tmp.path().join("a.key");
    let o = common::imgctl()
        .args(["log", "init"])
        .arg(&b)
        .arg("--key")
        .arg(&key)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut other = manifest(&c);
    other["name"] = "other".into();
    other["recipe"]["digests"]["sha256"] = "00".repeat(32).into();
    other["uki"]["digests"]["sha256"] = "00".repeat(32).into();
    let f = write(tmp.path(), "other.json", other.to_string().as_bytes());
    let o = common::imgctl()
        .args(["log", "append"])
        .arg(&b)
        .arg("--key")
        .arg(&key)
        .arg("--entry")
        .arg(&f)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let yaml = serde_yaml::to_string(&policy_json(&c)).unwrap();
    let pf = write(tmp.path(), "policy.yaml", yaml.as_bytes());
    let el = c.dir.join("ovmf-stub252-eventlog.bin");
    let state = tmp.path().join("state/seen.json");
    std::fs::create_dir_all(state.parent().unwrap()).unwrap();
    let verify_with = |log: &Path| {
        run_verify(&[
            "--eventlog".as_ref(),
            el.as_os_str(),
            "--policy".as_ref(),
            pf.as_os_str(),
            "--log".as_ref(),
            log.as_os_str(),
            "--vkey".as_ref(),
            vkey.as_ref(),
            "--state".as_ref(),
            state.as_os_str(),
        ])
    };
    let (code, out, err) = verify_with(&a);
    assert_eq!(code, Some(0), "{out}{err}");
    // Again: the same checkpoint is consistent with itself.
    let (code, out, err) = verify_with(&a);
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, out, err) = verify_with(&b);
    assert_ne!(code, Some(0), "{out}{err}");
    assert!(
        err.contains("inconsistent with the checkpoint seen before"),
        "{out}{err}"
    );
}
