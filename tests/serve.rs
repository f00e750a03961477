//! `imgctl serve` and `imgctl attest` end to end, real parts only: swtpm instances are the
//! machines' TPMs, the evidence is the captured OVMF + swtpm + systemd-stub 252 boot
//! (testdata/eventlogs/ovmf-swtpm) with each swtpm's PCRs extended by that log's events, the
//! policy's golden values are the PCRs the booted guest read from its TPM, and PCR 11's
//! prediction is systemd-measure's. Credential protection is checked against tpm2-tools
//! (tpm2_makecredential --tcti none, tpm2_activatecredential) and the TPM itself.

#![cfg(feature = "tpm")]
#![allow(clippy::unwrap_used)] // reason: test code; a panic is a test failure

mod common;
#[path = "support/swtpm.rs"]
mod swtpm;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::{imgctl, require_tool, run_ok};
use imgctl_attest::eventlog::{EventLog, EventType};
use imgctl_attest::tpm_public::TpmPublic;
use imgctl_measure::HashAlg;
use imgctl_service::api::{
    ActivateRequest, ChallengeRequest, EnrolRequest, EvidenceRequest, EvidenceResponse,
};
use imgctl_service::client::Client;
use imgctl_service::credential::{make_credential, CredentialFile};
use imgctl_tpm::Tpm;
use swtpm::Swtpm;

const OVMF: &str = "testdata/eventlogs/ovmf-swtpm";
const POLICY_PCRS: [u32; 10] = [0, 1, 2, 3, 4, 5, 6, 7, 9, 11];
const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

/// The captured boot: its event log and the service configuration that accepts it.
struct Capture {
    log: Vec<u8>,
}

fn tools() -> bool {
    [
        (swtpm::SWTPM, "swtpm"),
        ("tpm2_makecredential", "tpm2-tools"),
        ("tpm2_activatecredential", "tpm2-tools"),
    ]
    .iter()
    .all(|(t, p)| require_tool(t, p).is_some())
}

/// Writes the policy (golden values from the guest's PCR reads, PCR 11 through a manifest of
/// the booted sections and systemd-measure's prediction) next to a service configuration.
fn setup(dir: &Path, nonce_ttl: u32, database: &str) -> Option<Capture> {
    let src = common::shared_dir()?.join(OVMF);
    let mut golden: BTreeMap<String, String> = BTreeMap::new();
    for l in std::fs::read_to_string(src.join("ovmf-stub252-pcrs.txt"))
        .unwrap()
        .lines()
    {
        let f: Vec<&str> = l.split_whitespace().collect();
        let pcr: u32 = f[2].parse().unwrap();
        if f[1] == "sha256" && pcr != 11 && POLICY_PCRS.contains(&pcr) {
            golden.insert(f[2].into(), f[3].to_lowercase());
        }
    }
    let inputs: BTreeMap<String, String> =
        std::fs::read_to_string(src.join("ovmf-stub252-inputs.sha256"))
            .unwrap()
            .lines()
            .map(|l| {
                let (h, n) = l.split_once(' ').unwrap();
                (n.trim().to_owned(), h.to_owned())
            })
            .collect();
    let sections: Vec<_> = [
        (".linux", "vmlinuz"),
        (".osrel", "osrel"),
        (".cmdline", "cmdline"),
        (".initrd", "initrd.cpio"),
    ]
    .iter()
    .map(|(s, f)| serde_json::json!({"name": s, "measured": true, "digests": {"sha256": inputs[*f]}}))
    .collect();
    let pcrs: serde_json::Value = serde_json::from_slice(
        &std::fs::read(src.join("ovmf-stub252-systemd-measure.json")).unwrap(),
    )
    .unwrap();
    let manifest = common::reference_manifest("demo", "demo.efi", "systemd-252", &sections, pcrs);
    std::fs::write(dir.join("demo.manifest.json"), manifest.to_string()).unwrap();
    let policy = serde_json::json!({
        "pcrs": POLICY_PCRS, "banks": ["sha256"], "expected": {"sha256": golden},
        "manifests": ["demo.manifest.json"],
    });
    std::fs::write(dir.join("demo.policy.yaml"), policy.to_string()).unwrap();
    std::fs::write(dir.join("disk.key"), SECRET).unwrap();
    std::fs::write(dir.join("checkpoint"), "example.org/log\n7\nAAAA\n").unwrap();
    std::fs::write(
        dir.join("serve.yaml"),
        format!(
            "listen: 127.0.0.1:0\ndatabase: '{database}'\nnonce_ttl_seconds: {nonce_ttl}\n\
             policy:\n  name: demo\n  version: 3\n  file: demo.policy.yaml\n  checkpoint: checkpoint\n\
             \x20 secrets:\n    - {{name: disk-key, file: disk.key}}\n"
        ),
    )
    .unwrap();
    Some(Capture {
        log: std::fs::read(src.join("ovmf-stub252-eventlog.bin")).unwrap(),
    })
}

/// A PostgreSQL cluster of its own (Debian's postgresql: initdb + pg_ctl) in a temporary
/// folder, reachable only on a unix socket there; stopped on drop. As root, it runs as the
/// `postgres` user (initdb refuses root).
struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
}

impl Postgres {
    fn start() -> Option<Postgres> {
        // Whatever major version Debian installed: the newest under /usr/lib/postgresql.
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|r| {
                r.filter_map(|e| e.ok().map(|e| e.path().join("bin")))
                    .filter(|b| b.join("initdb").exists())
                    .max()
            })
            .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/VERSION/bin"));
        require_tool(bin.join("initdb").to_str().unwrap(), "postgresql")?;
        let dir = tempfile::tempdir().unwrap();
        let pg = Postgres { dir, bin };
        if is_root() {
            run_ok(
                Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(pg.dir.path()),
            );
        }
        run_ok(
            pg.tool("initdb", &["-A", "trust", "-U", "imgctl", "-N", "-D"])
                .arg(pg.data()),
        );
        run_ok(
            pg.tool("pg_ctl", &["-w", "-D"])
                .arg(pg.data())
                .arg("-l")
                .arg(pg.dir.path().join("log"))
                .arg("-o")
                .arg(format!(
                    "-F -k {} -c listen_addresses=",
                    pg.dir.path().display()
                ))
                .arg("start"),
        );
        Some(pg)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn tool(&self, name: &str, args: &[&str]) -> Command {
        let mut c = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(self.bin.join(name));
            c
        } else {
            Command::new(self.bin.join(name))
        };
        c.args(args).stdout(Stdio::null());
        c
    }

    fn database(&self) -> String {
        format!(
            "host={} port=5432 user=imgctl dbname=postgres",
            self.dir.path().display()
        )
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self
            .tool("pg_ctl", &["-m", "immediate", "-D"])
            .arg(self.data())
            .arg("stop")
            .status();
    }
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// `imgctl serve --config` as a child process; killed on drop.
struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(dir: &Path) -> Server {
    let (child, url) = common::spawn_http_service(
        imgctl()
            .args(["serve", "--config"])
            .arg(dir.join("serve.yaml"))
            .stderr(Stdio::inherit()),
        "serve",
    );
    Server { child, url }
}

/// Extends the TPM's PCRs with every measured event of the log, in every bank both have:
/// afterwards the TPM holds what the booted machine's TPM held.
fn boot(tpm: &Swtpm, log: &[u8]) {
    let log = EventLog::parse(log).unwrap();
    let mut t = Tpm::open(&tpm.tcti()).unwrap();
    let banks = t.active_banks().unwrap();
    for e in &log.events {
        if e.event_type == EventType::EV_NO_ACTION {
            continue;
        }
        let digests: Vec<_> = e
            .digests
            .iter()
            .filter(|(b, _)| banks.contains(b))
            .cloned()
            .collect();
        t.extend(e.pcr, &digests).unwrap();
    }
}

fn machine_id(t: &mut Tpm) -> String {
    hex::encode(TpmPublic::parse(&t.ek_public().unwrap()).unwrap().name)
}

fn body(tpm2b: &[u8]) -> &[u8] {
    &tpm2b[2..]
}

fn open_credential(t: &mut Tpm, b64: &str) -> Result<Vec<u8>, imgctl_tpm::TpmError> {
    let file = imgctl_service::api::decode_blob(b64).unwrap();
    let c = CredentialFile::parse(&file).unwrap().0;
    t.activate_credential(body(&c.id_object), body(&c.encrypted_secret))
}

/// Enrols a machine through the API with its own EK and AK, activating on its TPM.
fn enrol(c: &Client, t: &mut Tpm) -> String {
    let e = c
        .enrol(&EnrolRequest {
            ek_public: t.ek_public().unwrap(),
            ak_public: t.ak_public().unwrap(),
            ek_certificate: None,
        })
        .unwrap();
    let secret = open_credential(t, &e.credential).unwrap();
    c.activate(&ActivateRequest {
        machine: e.machine.clone(),
        secret,
    })
    .unwrap();
    e.machine
}

/// Evidence for `machine` answering `nonce`, quoted by `t` over `quote_nonce`.
fn evidence(
    t: &mut Tpm,
    machine: &str,
    nonce: &[u8],
    quote_nonce: &[u8],
    log: &[u8],
) -> EvidenceRequest {
    let q = t
        .quote(quote_nonce, &[(HashAlg::SHA256, POLICY_PCRS.to_vec())])
        .unwrap();
    EvidenceRequest {
        machine: machine.into(),
        nonce: nonce.to_vec(),
        quote: q.attest,
        signature: q.signature,
        event_log: log.to_vec(),
        userspace_log: None,
    }
}

fn nonce(c: &Client, machine: &str) -> Vec<u8> {
    let ch = c
        .challenge(&ChallengeRequest {
            machine: machine.into(),
        })
        .unwrap();
    hex::decode(ch.nonce).unwrap()
}

fn refused(r: Result<EvidenceResponse, imgctl_service::client::ClientError>, kind: &str) {
    match r {
        Err(e) => assert_eq!(e.kind(), Some(kind), "{e}"),
        Ok(v) => panic!("expected refusal {kind}, got verdict {v:?}"),
    }
}

fn rejected(v: EvidenceResponse, want: &str) {
    assert!(!v.accepted, "accepted: {v:?}");
    assert!(v.releases.is_empty(), "released on REJECT: {v:?}");
    let text = v.findings.to_string();
    assert!(text.contains(want), "findings lack {want}: {text}");
}

/// The happy path through the CLI on both ends: `imgctl attest` enrols the swtpm machine,
/// answers a nonce with a quote and the captured log, and writes the released key (mode
/// 0600) that only its TPM could open; a second swtpm cannot open that release.
#[test]
fn accept_releases_the_secret_to_that_tpm_only() {
    accept_releases(None);
}

#[test]
fn accept_releases_the_secret_to_that_tpm_only_postgres() {
    let Some(pg) = Postgres::start() else { return };
    accept_releases(Some(&pg));
}

fn accept_releases(pg: Option<&Postgres>) {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let db = pg.map_or("state.db".into(), Postgres::database);
    let Some(cap) = setup(d, 60, &db) else { return };
    std::fs::write(d.join("eventlog.bin"), &cap.log).unwrap();
    let server = serve(d);
    let tpm = Swtpm::start_tcp();
    boot(&tpm, &cap.log);
    let keys = d.join("keys");
    std::fs::create_dir(&keys).unwrap();
    let out = run_ok(
        imgctl()
            .args([
                "attest",
                "--server",
                &server.url,
                "--tcti",
                &tpm.tcti(),
                "--json",
            ])
            .arg("--event-log")
            .arg(d.join("eventlog.bin"))
            .arg("--secrets-dir")
            .arg(&keys),
    );
    let answer: EvidenceResponse = serde_json::from_slice(&out).unwrap();
    assert!(answer.accepted, "{answer:?}");
    assert_eq!((answer.policy.as_str(), answer.policy_version), ("demo", 3));
    assert_eq!(
        answer.log_checkpoint.as_deref(),
        Some("example.org/log\n7\nAAAA\n")
    );
    let key = keys.join("disk-key");
    assert_eq!(std::fs::read(&key).unwrap(), SECRET);
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // The release on record; another TPM cannot open it, that TPM can (again).
    let mut a = Tpm::open(&tpm.tcti()).unwrap();
    let id = machine_id(&mut a);
    let c = Client::new(&server.url);
    let n = nonce(&c, &id);
    let v = c
        .evidence(&evidence(&mut a, &id, &n, &n, &cap.log))
        .unwrap();
    assert!(v.accepted);
    let cred = &v.releases[0].credential;
    let other = Swtpm::start_tcp();
    let mut b = Tpm::open(&other.tcti()).unwrap();
    assert!(
        open_credential(&mut b, cred).is_err(),
        "another TPM opened the release"
    );
    assert_eq!(open_credential(&mut a, cred).unwrap(), SECRET);
    let rec = c.verdicts(&id).unwrap();
    assert_eq!(rec["verdicts"].as_array().unwrap().len(), 2);
    assert_eq!(rec["releases"].as_array().unwrap().len(), 2);
    // The evidence digest is the sha256 of the request body as sent.
    assert_eq!(rec["verdicts"][1]["evidence_sha256"], v.evidence_sha256);
}

/// Every way to get a secret without an accepted, fresh, own quote is refused with a named
/// reason, and nothing is released.
#[test]
fn tampered_replayed_expired_foreign_and_unactivated_evidence_gets_nothing() {
    refusals(None);
}

#[test]
fn tampered_replayed_expired_foreign_and_unactivated_evidence_gets_nothing_postgres() {
    let Some(pg) = Postgres::start() else { return };
    refusals(Some(&pg));
}

fn refusals(pg: Option<&Postgres>) {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let db = pg.map_or("state.db".into(), Postgres::database);
    let Some(cap) = setup(d, 2, &db) else { return };
    let server = serve(d);
    let c = Client::new(&server.url);
    let (sa, sb, sc) = (Swtpm::start_tcp(), Swtpm::start_tcp(), Swtpm::start_tcp());
    for s in [&sa, &sb, &sc] {
        boot(s, &cap.log);
    }
    let mut a = Tpm::open(&sa.tcti()).unwrap();
    let mut b = Tpm::open(&sb.tcti()).unwrap();
    let mut tc = Tpm::open(&sc.tcti()).unwrap();
    let ida = enrol(&c, &mut a);
    let idb = enrol(&c, &mut b);

    // Tampered evidence: one digest of the firmware log changed.
    let log = EventLog::parse(&cap.log).unwrap();
    let e = log
        .events
        .iter()
        .find(|e| e.pcr == 4 && e.event_type != EventType::EV_NO_ACTION)
        .unwrap();
    let d256 = e.digest(HashAlg::SHA256).unwrap().as_bytes().to_vec();
    let at = cap.log.windows(32).position(|w| w == d256).unwrap();
    let mut tampered = cap.log.clone();
    tampered[at] ^= 1;
    let n = nonce(&c, &ida);
    rejected(
        c.evidence(&evidence(&mut a, &ida, &n, &n, &tampered))
            .unwrap(),
        "PCR digest",
    );

    // A quote over another nonce than the one answered.
    let n = nonce(&c, &ida);
    rejected(
        c.evidence(&evidence(&mut a, &ida, &n, &[7; 32], &cap.log))
            .unwrap(),
        "nonce mismatch",
    );

    // A replayed nonce: the first answer is accepted, the same evidence again is refused.
    let n = nonce(&c, &ida);
    let ev = evidence(&mut a, &ida, &n, &n, &cap.log);
    assert!(c.evidence(&ev).unwrap().accepted);
    refused(c.evidence(&ev), "nonce-used");

    // An expired nonce (the configuration gives 2 s).
    let n = nonce(&c, &ida);
    std::thread::sleep(std::time::Duration::from_millis(3100));
    refused(
        c.evidence(&evidence(&mut a, &ida, &n, &n, &cap.log)),
        "nonce-expired",
    );

    // Another machine's AK: B's quote over A's nonce, sent as A; and as B with A's nonce.
    let n = nonce(&c, &ida);
    rejected(
        c.evidence(&evidence(&mut b, &ida, &n, &n, &cap.log))
            .unwrap(),
        "signature does not verify",
    );
    let n = nonce(&c, &ida);
    refused(
        c.evidence(&evidence(&mut b, &idb, &n, &n, &cap.log)),
        "nonce-other-machine",
    );
    refused(
        c.evidence(&evidence(&mut a, &ida, &[9; 32], &[9; 32], &cap.log)),
        "nonce-unknown",
    );

    // An AK that is not on the EK's TPM: C's EK with B's AK. Neither TPM can activate the
    // credential, so C cannot prove the AK; its wrong answer fails the enrolment for good.
    let e = c
        .enrol(&EnrolRequest {
            ek_public: tc.ek_public().unwrap(),
            ak_public: b.ak_public().unwrap(),
            ek_certificate: None,
        })
        .unwrap();
    assert!(open_credential(&mut tc, &e.credential).is_err());
    assert!(open_credential(&mut b, &e.credential).is_err());
    let wrong = c.activate(&ActivateRequest {
        machine: e.machine.clone(),
        secret: vec![0; 32],
    });
    assert_eq!(wrong.unwrap_err().kind(), Some("activation-failed"));
    let ch = c.challenge(&ChallengeRequest {
        machine: e.machine.clone(),
    });
    assert_eq!(ch.unwrap_err().kind(), Some("ak-not-activated"));
    refused(
        c.evidence(&evidence(&mut b, &e.machine, &[1; 32], &[1; 32], &cap.log)),
        "ak-not-activated",
    );

    // Exactly one release on record: the one accepted answer; all refusals released nothing.
    let rec = c.verdicts(&ida).unwrap();
    assert_eq!(rec["releases"].as_array().unwrap().len(), 1, "{rec}");
    let accepted: Vec<_> = rec["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["accepted"] == true)
        .collect();
    assert_eq!(accepted.len(), 1, "{rec}");
}

/// `imgctl log` in `d`: runs it and fails the test on a non-zero exit.
fn log_cmd(args: &[&str], d: &Path) {
    run_ok(imgctl().arg("log").args(args).current_dir(d));
}

/// The captured boot's reference manifest as a log entry (`imgctl log append --entry`),
/// with the file digests the log requires and the capture does not record; `cmdline` changes
/// the .cmdline section's digest (another build, not the one booted).
fn log_entry(d: &Path, name: &str, cmdline: Option<&str>) -> String {
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("demo.manifest.json")).unwrap()).unwrap();
    m["recipe"]["digests"]["sha256"] = "00".repeat(32).into();
    m["uki"]["digests"]["sha256"] = "00".repeat(32).into();
    if let Some(c) = cmdline {
        m["name"] = name.into();
        m["uki"]["sections"][2]["digests"]["sha256"] = c.repeat(32).into();
    }
    let f = format!("{name}.entry.json");
    std::fs::write(d.join(&f), m.to_string()).unwrap();
    f
}

/// The service configured with a log (`log: {source: log, vkey: log.vkey}`) and a policy
/// without references of its own: the log's records are the only ones.
fn log_setup(d: &Path, database: &str) -> Option<Capture> {
    let cap = setup(d, 60, database)?;
    let mut policy: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("demo.policy.yaml")).unwrap()).unwrap();
    policy.as_object_mut().unwrap().remove("manifests");
    std::fs::write(d.join("demo.policy.yaml"), policy.to_string()).unwrap();
    std::fs::write(
        d.join("serve.yaml"),
        format!(
            "listen: 127.0.0.1:0\ndatabase: '{database}'\n\
             log: {{source: log, vkey: log.vkey}}\n\
             policy:\n  name: demo\n  version: 4\n  file: demo.policy.yaml\n\
             \x20 secrets:\n    - {{name: disk-key, file: disk.key}}\n"
        ),
    )
    .unwrap();
    Some(cap)
}

/// The locked loop at verdict time, against logs `imgctl log` made: the service reads the
/// log at each evidence. A log without the booted build: REJECT naming the unpublished event,
/// nothing released. The log grows to hold it: ACCEPT, and the verdict and the database hold
/// the log's new checkpoint (exactly the note the log serves); it grows again: ACCEPT, the
/// checkpoint advances. The log is replaced by a fork (same key and origin, another history):
/// refused as a split view, nothing stored or released, also by a restarted service that
/// knows the old checkpoint only from the database.
#[test]
fn verdicts_against_the_log_accept_published_reject_unpublished_refuse_a_fork() {
    log_verdicts(None);
}

#[test]
fn verdicts_against_the_log_accept_published_reject_unpublished_refuse_a_fork_postgres() {
    let Some(pg) = Postgres::start() else { return };
    log_verdicts(Some(&pg));
}

fn log_verdicts(pg: Option<&Postgres>) {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let db = pg.map_or("state.db".into(), Postgres::database);
    let Some(cap) = log_setup(d, &db) else { return };
    let other = log_entry(d, "other", Some("11"));
    let good = log_entry(d, "demo", None);
    let later = log_entry(d, "later", Some("22"));
    log_cmd(
        &[
            "init",
            "log",
            "--key",
            "log.key",
            "--origin",
            "example.org/fleet",
        ],
        d,
    );
    log_cmd(&["append", "log", "--key", "log.key", "--entry", &other], d);
    let server = serve(d);
    let c = Client::new(&server.url);
    let tpm = Swtpm::start_tcp();
    boot(&tpm, &cap.log);
    let mut a = Tpm::open(&tpm.tcti()).unwrap();
    let id = enrol(&c, &mut a);
    let served = || std::fs::read_to_string(d.join("log/checkpoint")).unwrap();
    let size = |note: &str| note.lines().nth(1).unwrap().parse::<u64>().unwrap();

    // The log holds another build only: the booted .cmdline is not published.
    let n = nonce(&c, &id);
    let v = c
        .evidence(&evidence(&mut a, &id, &n, &n, &cap.log))
        .unwrap();
    assert_eq!(v.log_checkpoint.as_deref(), Some(served().as_str()));
    rejected(v, "not published in the log");
    let rec = c.verdicts(&id).unwrap();
    let text = rec["verdicts"][0]["findings"].to_string();
    assert!(text.contains(".cmdline"), "{text}");

    // The log grows to hold the booted build: ACCEPT, against the new checkpoint.
    log_cmd(&["append", "log", "--key", "log.key", "--entry", &good], d);
    let mut seen = Vec::new();
    for grow in [None, Some(&later)] {
        if let Some(e) = grow {
            log_cmd(&["append", "log", "--key", "log.key", "--entry", e], d);
        }
        let n = nonce(&c, &id);
        let v = c
            .evidence(&evidence(&mut a, &id, &n, &n, &cap.log))
            .unwrap();
        assert!(v.accepted, "{v:?}");
        assert_eq!(
            open_credential(&mut a, &v.releases[0].credential).unwrap(),
            SECRET
        );
        let note = v.log_checkpoint.unwrap();
        assert_eq!(note, served());
        seen.push(size(&note));
        let store = imgctl_service::store::Store::open(&if pg.is_some() {
            db.clone()
        } else {
            d.join(&db).display().to_string()
        })
        .unwrap();
        assert_eq!(
            store.log_checkpoint("example.org/fleet").unwrap(),
            Some(note),
            "the database holds the checkpoint of the last verdict"
        );
    }
    assert_eq!(seen, [2, 3]);

    // A fork: the same key (so origin), the booted build first, then others: 4 entries.
    log_cmd(&["init", "fork", "--key", "log.key"], d);
    for e in [&good, &other, &later, &other] {
        log_cmd(&["append", "fork", "--key", "log.key", "--entry", e], d);
    }
    std::fs::rename(d.join("log"), d.join("log.before")).unwrap();
    std::fs::rename(d.join("fork"), d.join("log")).unwrap();
    let before = c.verdicts(&id).unwrap();
    let n = nonce(&c, &id);
    let ev = evidence(&mut a, &id, &n, &n, &cap.log);
    refused(c.evidence(&ev), "log-split-view");
    drop(server);
    let server = serve(d);
    let c = Client::new(&server.url);
    refused(c.evidence(&ev), "log-split-view");
    let after = c.verdicts(&id).unwrap();
    assert_eq!(before, after, "a refusal stored a verdict or a release");
    assert_eq!(after["releases"].as_array().unwrap().len(), 2);
}

/// `openssl`: a CA (`NAME.pem`, `NAME.key`) in `d`.
fn openssl_ca(d: &Path, name: &str) {
    run_ok(
        Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args(["-nodes", "-days", "2", "-keyout"])
            .arg(d.join(format!("{name}.key")))
            .arg("-out")
            .arg(d.join(format!("{name}.pem")))
            .args(["-subj", &format!("/CN=imgctl test {name}")])
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign"]),
    );
}

/// `openssl`: a server certificate for 127.0.0.1 issued by the CA `ca` (`server.pem`,
/// `server.key`).
fn openssl_server_cert(d: &Path, ca: &str) {
    run_ok(
        Command::new("openssl")
            .args([
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
            ])
            .arg("-keyout")
            .arg(d.join("server.key"))
            .arg("-out")
            .arg(d.join("server.csr"))
            .args(["-subj", "/CN=127.0.0.1"]),
    );
    std::fs::write(
        d.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run_ok(
        Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-in"])
            .arg(d.join("server.csr"))
            .arg("-CA")
            .arg(d.join(format!("{ca}.pem")))
            .arg("-CAkey")
            .arg(d.join(format!("{ca}.key")))
            .args(["-set_serial", "7", "-out"])
            .arg(d.join("server.pem"))
            .arg("-extfile")
            .arg(d.join("server.ext")),
    );
}

/// TLS (rustls) with a certificate `openssl` issued: `imgctl attest --server https://…
/// --ca-file` trusting that CA enrols, attests and receives the key; trusting another CA it
/// fails with a one-line error before anything is sent; curl agrees both ways.
#[test]
fn attest_over_https_trusts_the_ca_file_only() {
    if !tools() || require_tool("openssl", "openssl").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let Some(cap) = setup(d, 60, "state.db") else {
        return;
    };
    std::fs::write(d.join("eventlog.bin"), &cap.log).unwrap();
    openssl_ca(d, "ca");
    openssl_ca(d, "other");
    openssl_server_cert(d, "ca");
    let mut yaml = std::fs::read_to_string(d.join("serve.yaml")).unwrap();
    yaml.push_str("tls: {certificate: server.pem, key: server.key}\n");
    std::fs::write(d.join("serve.yaml"), yaml).unwrap();
    let server = serve(d);
    assert!(server.url.starts_with("https://"), "{}", server.url);
    let tpm = Swtpm::start_tcp();
    boot(&tpm, &cap.log);
    let keys = d.join("keys");
    std::fs::create_dir(&keys).unwrap();
    let attest = |ca: &str| {
        imgctl()
            .args([
                "attest",
                "--server",
                &server.url,
                "--tcti",
                &tpm.tcti(),
                "--json",
            ])
            .arg("--ca-file")
            .arg(d.join(ca))
            .arg("--event-log")
            .arg(d.join("eventlog.bin"))
            .arg("--secrets-dir")
            .arg(&keys)
            .output()
            .unwrap()
    };
    let o = attest("other.pem");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains(&server.url) && err.to_lowercase().contains("certificate"),
        "{err}"
    );
    let o = attest("ca.pem");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let answer: EvidenceResponse = serde_json::from_slice(&o.stdout).unwrap();
    assert!(answer.accepted, "{answer:?}");
    assert_eq!(std::fs::read(keys.join("disk-key")).unwrap(), SECRET);

    let id = machine_id(&mut Tpm::open(&tpm.tcti()).unwrap());
    let url = format!("{}/v1/machines/{id}/verdicts", server.url);
    if require_tool("curl", "curl").is_some() {
        let curl = |ca: &str| {
            Command::new("curl")
                .args(["-sS", "--fail", "--cacert"])
                .arg(d.join(ca))
                .arg(&url)
                .output()
                .unwrap()
        };
        let o = curl("ca.pem");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let rec: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(rec["verdicts"].as_array().unwrap().len(), 1, "{rec}");
        let o = curl("other.pem");
        assert_eq!(
            o.status.code(),
            Some(60),
            "curl trusted another CA's server"
        );
    }
    // The service's own client agrees.
    let c = Client::with_ca(
        &server.url,
        "ca.pem",
        &std::fs::read(d.join("ca.pem")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        c.verdicts(&id).unwrap()["releases"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

/// MakeCredential in Rust against tpm2-tools and the TPM: tpm2_activatecredential opens our
/// credential for a tpm2_createak key (whose Name, as tpm2-tools computes it, equals ours),
/// and our TPM2_ActivateCredential opens tpm2_makecredential --tcti none's file for our AK.
#[test]
fn make_credential_agrees_with_tpm2_tools_and_the_tpm() {
    if !tools() {
        return;
    }
    let tpm = Swtpm::start_tcp();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tools = |args: &[&str]| {
        let mut c = Command::new(args[0]);
        c.args(&args[1..])
            .current_dir(d)
            .env("TPM2TOOLS_TCTI", tpm.tcti());
        run_ok(&mut c)
    };
    // No resource manager in front of swtpm: the EK is made persistent and transient objects
    // are flushed after each tool (swtpm holds only three).
    const EK: &str = "0x81010009";
    tools(&["tpm2_createek", "-c", EK, "-G", "rsa", "-u", "ek.pub"]);
    tools(&["tpm2_flushcontext", "-t"]);
    tools(&[
        "tpm2_createak",
        "-C",
        EK,
        "-c",
        "ak.ctx",
        "-G",
        "rsa",
        "-g",
        "sha256",
        "-s",
        "rsassa",
        "-u",
        "ak.pub",
        "-n",
        "ak.name",
    ]);
    tools(&["tpm2_flushcontext", "-t"]);
    tools(&["tpm2_flushcontext", "-s"]);
    let ek = TpmPublic::parse(&std::fs::read(d.join("ek.pub")).unwrap()).unwrap();
    let ak = TpmPublic::parse(&std::fs::read(d.join("ak.pub")).unwrap()).unwrap();
    assert_eq!(
        ak.name,
        std::fs::read(d.join("ak.name")).unwrap(),
        "AK Name differs from tpm2-tools'"
    );
    ak.check_ak().unwrap();
    let cred = make_credential(&ek, &ak.name, SECRET).unwrap();
    std::fs::write(d.join("cred.bin"), CredentialFile(cred).encode()).unwrap();
    tools(&[
        "tpm2_startauthsession",
        "--policy-session",
        "-S",
        "session.ctx",
    ]);
    tools(&["tpm2_policysecret", "-S", "session.ctx", "-c", "e"]);
    tools(&[
        "tpm2_activatecredential",
        "-c",
        "ak.ctx",
        "-C",
        EK,
        "-i",
        "cred.bin",
        "-o",
        "out.bin",
        "-P",
        "session:session.ctx",
    ]);
    tools(&["tpm2_flushcontext", "session.ctx"]);
    tools(&["tpm2_flushcontext", "-t"]);
    assert_eq!(std::fs::read(d.join("out.bin")).unwrap(), SECRET);

    // The other way: tpm2-tools makes the credential (no TPM) for our EK and our AK's Name;
    // the file parses as ours and our ActivateCredential opens it.
    let mut t = Tpm::open(&tpm.tcti()).unwrap();
    let our_ek = t.ek_public().unwrap();
    assert_eq!(
        TpmPublic::parse(&our_ek).unwrap().name,
        ek.name,
        "same EK as tpm2_createek"
    );
    let our_ak = TpmPublic::parse(&t.ak_public().unwrap()).unwrap();
    our_ak.check_ak().unwrap();
    let mut ek2b = u16::try_from(our_ek.len()).unwrap().to_be_bytes().to_vec();
    ek2b.extend_from_slice(&our_ek);
    std::fs::write(d.join("our-ek.pub"), &ek2b).unwrap();
    std::fs::write(d.join("secret.bin"), SECRET).unwrap();
    run_ok(Command::new("tpm2_makecredential").current_dir(d).args([
        "--tcti",
        "none",
        "-u",
        "our-ek.pub",
        "-s",
        "secret.bin",
        "-n",
        &hex::encode(&our_ak.name),
        "-o",
        "their.bin",
    ]));
    let theirs = CredentialFile::parse(&std::fs::read(d.join("their.bin")).unwrap())
        .unwrap()
        .0;
    assert_eq!(
        t.activate_credential(body(&theirs.id_object), body(&theirs.encrypted_secret))
            .unwrap(),
        SECRET
    );
    // And a credential for a different Name fails the TPM's integrity check.
    let mut other = our_ak.name.clone();
    other[5] ^= 1;
    let bad = make_credential(&ek, &other, SECRET).unwrap();
    assert!(t
        .activate_credential(body(&bad.id_object), body(&bad.encrypted_secret))
        .is_err());
}

/// Many answers carrying one nonce at once (the same evidence, from 16 threads, spread over
/// the replicas): exactly one ACCEPT and one release; every other answer is refused as
/// `nonce-used` and stored nothing.
#[test]
fn concurrent_answers_to_one_nonce_release_once() {
    racing_answers(None);
}

#[test]
fn concurrent_answers_to_one_nonce_release_once_two_replicas_postgres() {
    let Some(pg) = Postgres::start() else { return };
    racing_answers(Some(&pg));
}

fn racing_answers(pg: Option<&Postgres>) {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let db = pg.map_or("state.db".into(), Postgres::database);
    let Some(cap) = setup(d, 60, &db) else { return };
    // SQLite: two replicas on one file too (WAL, one host).
    let servers = [serve(d), serve(d)];
    let clients: Vec<Client> = servers.iter().map(|s| Client::new(&s.url)).collect();
    let tpm = Swtpm::start_tcp();
    boot(&tpm, &cap.log);
    let mut t = Tpm::open(&tpm.tcti()).unwrap();
    let id = enrol(&clients[0], &mut t);
    for round in 0..3 {
        let n = nonce(&clients[round % 2], &id);
        let ev = evidence(&mut t, &id, &n, &n, &cap.log);
        let barrier = std::sync::Barrier::new(16);
        let answers: Vec<_> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..16)
                .map(|i| {
                    let (c, ev, barrier) = (&clients[i % 2], &ev, &barrier);
                    s.spawn(move || {
                        barrier.wait();
                        c.evidence(ev)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let won: Vec<_> = answers.iter().filter_map(|a| a.as_ref().ok()).collect();
        assert_eq!(won.len(), 1, "{answers:?}");
        assert!(
            won[0].accepted && won[0].releases.len() == 1,
            "{:?}",
            won[0]
        );
        for a in answers.iter().filter_map(|a| a.as_ref().err()) {
            assert_eq!(a.kind(), Some("nonce-used"), "{a}");
        }
        assert_eq!(
            open_credential(&mut t, &won[0].releases[0].credential).unwrap(),
            SECRET
        );
    }
    let rec = clients[1].verdicts(&id).unwrap();
    assert_eq!(rec["verdicts"].as_array().unwrap().len(), 3, "{rec}");
    assert_eq!(rec["releases"].as_array().unwrap().len(), 3, "{rec}");
}

/// The software machine's ActivateCredential against tpm2-tools and the TPM: tpm2_makecredential
/// (no TPM) makes a credential for the software EK and AK Name, which it opens (and refuses
/// for another Name); then one credential goes through swtpm's TPM2_ActivateCredential (the
/// software EK imported) and through ours, to the same secret, and one changed bit is refused
/// by both.
#[test]
fn software_activate_credential_agrees_with_tpm2_tools_and_the_tpm() {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let soft = imgctl_service::soft_tpm::SoftTpm::new().unwrap();
    let ek = soft.ek_public();
    let mut ek2b = u16::try_from(ek.len()).unwrap().to_be_bytes().to_vec();
    ek2b.extend_from_slice(ek);
    std::fs::write(d.join("ek.pub"), &ek2b).unwrap();
    std::fs::write(d.join("secret.bin"), SECRET).unwrap();
    let mut other = soft.ak_name().to_vec();
    other[7] ^= 1;
    for (name, out) in [(soft.ak_name(), "good.bin"), (&other[..], "other.bin")] {
        run_ok(Command::new("tpm2_makecredential").current_dir(d).args([
            "--tcti",
            "none",
            "-u",
            "ek.pub",
            "-s",
            "secret.bin",
            "-n",
            &hex::encode(name),
            "-o",
            out,
        ]));
    }
    let read = |f: &str| {
        CredentialFile::parse(&std::fs::read(d.join(f)).unwrap())
            .unwrap()
            .0
    };
    assert_eq!(soft.activate_credential(&read("good.bin")).unwrap(), SECRET);
    assert!(soft.activate_credential(&read("other.bin")).is_err());
    // And the real TPM refuses what was made for the software EK.
    let tpm = Swtpm::start_tcp();
    let mut t = Tpm::open(&tpm.tcti()).unwrap();
    let c = read("good.bin");
    assert!(t
        .activate_credential(body(&c.id_object), body(&c.encrypted_secret))
        .is_err());
    drop(t);

    // The same credential through the TPM's TPM2_ActivateCredential and the software one: the
    // software EK's private key imported into swtpm (tpm2_import: a restricted decryption key,
    // SHA-256, AES-128-CFB like the EK template) opens the credential made for it, the
    // activated object being that imported key (its Name as the TPM reports it); the software
    // ActivateCredential, given that Name, opens the very same file to the same secret, and
    // both refuse it with one bit changed.
    std::fs::write(d.join("ek.key"), soft.ek_private_pem().unwrap()).unwrap();
    let tools = |args: &[&str]| {
        run_ok(
            Command::new(args[0])
                .args(&args[1..])
                .current_dir(d)
                .env("TPM2TOOLS_TCTI", tpm.tcti()),
        )
    };
    tools(&["tpm2_createprimary", "-C", "o", "-c", "parent.ctx", "-Q"]);
    tools(&[
        "tpm2_import",
        "-C",
        "parent.ctx",
        "-G",
        "rsa",
        "-i",
        "ek.key",
        "-u",
        "imp.pub",
        "-r",
        "imp.priv",
        "-a",
        "restricted|decrypt|userwithauth",
    ]);
    tools(&["tpm2_flushcontext", "-t"]);
    tools(&[
        "tpm2_load",
        "-C",
        "parent.ctx",
        "-u",
        "imp.pub",
        "-r",
        "imp.priv",
        "-c",
        "imp.ctx",
        "-n",
        "imp.name",
    ]);
    tools(&["tpm2_flushcontext", "-t"]);
    let name = std::fs::read(d.join("imp.name")).unwrap();
    let cred = make_credential(soft.ek(), &name, SECRET).unwrap();
    let mut bad = cred.clone();
    let last = bad.id_object.len() - 1;
    bad.id_object[last] ^= 1;
    for (c, f) in [(&cred, "same.bin"), (&bad, "bad.bin")] {
        std::fs::write(d.join(f), CredentialFile(c.clone()).encode()).unwrap();
    }
    tools(&[
        "tpm2_activatecredential",
        "-c",
        "imp.ctx",
        "-C",
        "imp.ctx",
        "-i",
        "same.bin",
        "-o",
        "tpm-out.bin",
    ]);
    assert_eq!(std::fs::read(d.join("tpm-out.bin")).unwrap(), SECRET);
    let ours = imgctl_service::credential::activate_credential(
        soft.ek(),
        soft.ek_private_key(),
        &name,
        &cred,
    );
    assert_eq!(ours.unwrap(), SECRET);
    let tpm_bad = Command::new("tpm2_activatecredential")
        .args([
            "-c",
            "imp.ctx",
            "-C",
            "imp.ctx",
            "-i",
            "bad.bin",
            "-o",
            "bad-out.bin",
        ])
        .current_dir(d)
        .env("TPM2TOOLS_TCTI", tpm.tcti())
        .output()
        .unwrap();
    assert!(
        !tpm_bad.status.success(),
        "the TPM opened a changed credential"
    );
    assert!(imgctl_service::credential::activate_credential(
        soft.ek(),
        soft.ek_private_key(),
        &name,
        &bad
    )
    .is_err());
}

/// The load run, small: 30 software machines (EK, AK, ActivateCredential and quotes in
/// software, re-signing the captured boot under each nonce) attest 3 times each through two
/// replicas on one PostgreSQL; replica A is killed with SIGKILL after 30 attestations and the
/// machines move to B. Then, from B's records and the database: every answered verdict is on
/// record, no nonce has two verdicts, no (nonce, secret) two releases, no consumed nonce lacks
/// its verdict, every machine finished. Invariants only; the figures are the bench's
/// (scripts/bench-serve.sh).
#[test]
fn load_two_replicas_one_killed_loses_and_duplicates_nothing_postgres() {
    if !tools() {
        return;
    }
    let Some(pg) = Postgres::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let Some(cap) = setup(d, 60, &pg.database()) else {
        return;
    };
    let a = serve(d);
    let b = serve(d);
    let pid = a.child.id().to_string();
    let (machines, rounds) = (30, 3);
    let cfg = imgctl_service::load::LoadConfig {
        servers: vec![a.url.clone(), b.url.clone()],
        machines,
        rounds,
        event_log: cap.log.clone(),
        selection: vec![(HashAlg::SHA256, POLICY_PCRS.to_vec())],
        secrets: vec![("disk-key".into(), SECRET.to_vec())],
    };
    let killed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let k = killed.clone();
    let kill: Box<dyn FnOnce() + Send> = Box::new(move || {
        run_ok(Command::new("kill").args(["-9", &pid]));
        k.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    let (report, logs) = imgctl_service::load::run(cfg, Some((machines, kill))).unwrap();
    eprintln!("{}", serde_json::to_string(&report).unwrap());
    assert!(killed.load(std::sync::atomic::Ordering::SeqCst));
    let audit = imgctl_service::load::check(&b.url, &logs, rounds, 1)
        .unwrap_or_else(|bad| panic!("{}", bad.join("\n")));
    assert_eq!(report.attestations, machines * rounds);
    assert!(
        Client::new(&a.url).verdicts(&logs[0].id).is_err(),
        "A still answers"
    );
    // The database itself: every consumed nonce has exactly one verdict; releases are unique.
    let sql = |q: &str| -> String {
        let out = run_ok(
            Command::new(pg.bin.join("psql"))
                .args(["-X", "-tA", "-c", q])
                .arg(pg.database()),
        );
        String::from_utf8(out).unwrap().trim().to_owned()
    };
    assert_eq!(
        sql("SELECT count(*) FROM nonces n WHERE used_at IS NOT NULL AND (SELECT count(*) FROM verdicts v WHERE v.nonce = n.nonce) <> 1"),
        "0"
    );
    assert_eq!(
        sql("SELECT count(*) FROM verdicts v WHERE NOT EXISTS (SELECT 1 FROM nonces n WHERE n.nonce = v.nonce AND n.used_at IS NOT NULL)"),
        "0"
    );
    assert_eq!(
        sql("SELECT count(*) - count(DISTINCT (nonce, secret)) FROM releases"),
        "0"
    );
    assert_eq!(
        sql("SELECT count(*) FROM verdicts"),
        audit.verdicts.to_string()
    );
    assert_eq!(
        sql("SELECT count(*) FROM verdicts WHERE accepted"),
        (machines * rounds + audit.lost_but_recorded).to_string()
    );
}

/// swtpm manufactured by `swtpm_setup --create-ek-cert` with `swtpm_localca` (its own CA in a
/// temporary folder): the EK certificate it wrote to NV index 0x01c00002.
fn manufactured_swtpm(ca: &Path) -> (Swtpm, Vec<u8>) {
    require_tool("swtpm_setup", "swtpm-tools");
    require_tool("swtpm_localca", "swtpm-tools");
    std::fs::create_dir_all(ca).unwrap();
    let conf = ca.join("localca.conf");
    std::fs::write(
        &conf,
        format!(
            "statedir = {0}\nsigningkey = {0}/signkey.pem\nissuercert = {0}/issuercert.pem\ncertserial = {0}/certserial\n",
            ca.display()
        ),
    )
    .unwrap();
    std::fs::write(
        ca.join("localca.options"),
        "--platform-manufacturer imgctl\n",
    )
    .unwrap();
    let setup = ca.join("swtpm_setup.conf");
    std::fs::write(
        &setup,
        format!(
            "create_certs_tool = /usr/bin/swtpm_localca\ncreate_certs_tool_config = {}\ncreate_certs_tool_options = {}\nactive_pcr_banks = sha256\n",
            conf.display(),
            ca.join("localca.options").display()
        ),
    )
    .unwrap();
    let tpm = Swtpm::start_tcp_with(|state| {
        run_ok(
            Command::new("swtpm_setup")
                .args(["--tpm2", "--create-ek-cert", "--overwrite", "--tpmstate"])
                .arg(state)
                .arg("--config")
                .arg(&setup),
        );
    });
    let out = ca.join(format!("ek-{}.der", tpm.port.unwrap()));
    run_ok(
        Command::new("tpm2_nvread")
            .env("TPM2TOOLS_TCTI", tpm.tcti())
            .args(["-C", "o", "-o"])
            .arg(&out)
            .arg("0x01c00002"),
    );
    (tpm, std::fs::read(&out).unwrap())
}

/// EK certificates: with CAs configured, a machine enrols only with a certificate a configured
/// CA issued for the very EK it presents. The certificates are real: swtpm_setup
/// --create-ek-cert with swtpm_localca; the impostors are openssl's.
#[test]
fn ek_certificates_from_configured_cas_only() {
    if !tools() || require_tool("openssl", "openssl").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let Some(cap) = setup(d, 60, "state.db") else {
        return;
    };
    let ca = d.join("localca");
    let (sa, cert_a) = manufactured_swtpm(&ca);
    let (sb, cert_b) = manufactured_swtpm(&ca);
    // The local CA's issuing certificate is the configured CA.
    std::fs::copy(ca.join("issuercert.pem"), d.join("tpm-ca.pem")).unwrap();
    let mut conf = std::fs::read_to_string(d.join("serve.yaml")).unwrap();
    conf.push_str("ek_ca_files: [tpm-ca.pem]\n");
    std::fs::write(d.join("serve.yaml"), conf).unwrap();
    let server = serve(d);
    let c = Client::new(&server.url);
    let mut a = Tpm::open(&sa.tcti()).unwrap();
    let mut b = Tpm::open(&sb.tcti()).unwrap();
    let req = |t: &mut Tpm, cert: Option<&[u8]>| EnrolRequest {
        ek_public: t.ek_public().unwrap(),
        ak_public: t.ak_public().unwrap(),
        ek_certificate: cert.map(<[u8]>::to_vec),
    };
    let refused_enrol = |r: EnrolRequest, kind: &str, words: &str| {
        let e = c.enrol(&r).unwrap_err();
        assert_eq!(e.kind(), Some(kind), "{e}");
        assert!(e.to_string().contains(words), "{e} lacks {words}");
    };
    // No certificate; another TPM's certificate (not this EK).
    refused_enrol(
        req(&mut a, None),
        "ek-certificate-required",
        "configured CAs",
    );
    refused_enrol(
        req(&mut a, Some(&cert_b)),
        "ek-certificate-refused",
        "not the presented EK",
    );
    // A certificate for this very EK from a CA that is not configured, and from one that
    // takes the configured CA's name with another key.
    let ek_pem = d.join("ek.pem");
    std::fs::write(d.join("ek-a.der"), &cert_a).unwrap();
    let ossl = |args: &[&str]| {
        run_ok(Command::new("openssl").current_dir(d).args(args));
    };
    ossl(&[
        "x509",
        "-inform",
        "DER",
        "-in",
        "ek-a.der",
        "-pubkey",
        "-noout",
        "-out",
        ek_pem.to_str().unwrap(),
    ]);
    for (cn, out) in [
        ("/CN=other-tpm-ca", "other.der"),
        ("/CN=swtpm-localca", "samename.der"),
    ] {
        ossl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "o.key",
            "-out",
            "o.pem",
            "-subj",
            cn,
            "-days",
            "3",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
        ]);
        ossl(&[
            "x509",
            "-new",
            "-subj",
            "/CN=impostor",
            "-force_pubkey",
            "ek.pem",
            "-CA",
            "o.pem",
            "-CAkey",
            "o.key",
            "-days",
            "3",
            "-outform",
            "DER",
            "-out",
            out,
        ]);
    }
    let other = std::fs::read(d.join("other.der")).unwrap();
    refused_enrol(
        req(&mut a, Some(&other)),
        "ek-certificate-refused",
        "no configured CA has that name",
    );
    let same = std::fs::read(d.join("samename.der")).unwrap();
    refused_enrol(
        req(&mut a, Some(&same)),
        "ek-certificate-refused",
        "signature does not verify",
    );
    refused_enrol(
        req(&mut a, Some(b"\x30\x03\x02\x01\x01")),
        "ek-certificate-refused",
        "not a DER X.509",
    );
    // The real certificate of this EK enrols, and the machine activates and attests.
    let e = c.enrol(&req(&mut a, Some(&cert_a))).unwrap();
    let secret = open_credential(&mut a, &e.credential).unwrap();
    c.activate(&ActivateRequest {
        machine: e.machine.clone(),
        secret,
    })
    .unwrap();
    let e = c.enrol(&req(&mut b, Some(&cert_b))).unwrap();
    assert_eq!(e.machine, machine_id(&mut b));

    // imgctl reads the EK certificate from NV as tpm2_nvread does; a TPM without one has none.
    assert_eq!(a.ek_certificate().unwrap().as_deref(), Some(&cert_a[..]));
    let plain = Swtpm::start_tcp();
    assert_eq!(
        Tpm::open(&plain.tcti()).unwrap().ek_certificate().unwrap(),
        None
    );

    // `imgctl attest` with no --ek-certificate sends the one in NV: a third manufactured TPM
    // enrols, activates and is accepted; the plain TPM is refused for want of a certificate.
    let (sc, _) = manufactured_swtpm(&ca);
    boot(&sc, &cap.log);
    std::fs::write(d.join("eventlog.bin"), &cap.log).unwrap();
    let attest = |tcti: String| {
        imgctl()
            .args(["attest", "--server", &server.url, "--tcti", &tcti, "--json"])
            .arg("--event-log")
            .arg(d.join("eventlog.bin"))
            .output()
            .unwrap()
    };
    let o = attest(sc.tcti());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let answer: EvidenceResponse = serde_json::from_slice(&o.stdout).unwrap();
    assert!(answer.accepted, "{answer:?}");
    boot(&plain, &cap.log);
    let o = attest(plain.tcti());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("ek-certificate-required"), "{err}");
}

/// EK certificate chains, with the CA swtpm_localca makes (a root, and an intermediate, its
/// `issuercert`, that signs the EK certificates): the root with the intermediate as
/// `ek_intermediate_files` enrols; the root alone refuses (no configured CA has the issuer's
/// name); the intermediate as an anchor enrols (the operator's choice); an intermediate another
/// root issued makes the configuration fail at start, naming it; an EK certificate from a
/// CA outside the chain is refused.
#[test]
fn ek_certificate_chains_to_a_configured_root() {
    if !tools() || require_tool("openssl", "openssl").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    if setup(d, 60, "state.db").is_none() {
        return;
    }
    let ca = d.join("localca");
    let (sa, cert_a) = manufactured_swtpm(&ca);
    let root = ca.join("swtpm-localca-rootca-cert.pem");
    assert!(
        root.exists(),
        "swtpm_localca made no root: {:?}",
        std::fs::read_dir(&ca).unwrap().collect::<Vec<_>>()
    );
    openssl_ca(d, "other");
    let base = std::fs::read_to_string(d.join("serve.yaml")).unwrap();
    let mut a = Tpm::open(&sa.tcti()).unwrap();
    let req = EnrolRequest {
        ek_public: a.ek_public().unwrap(),
        ak_public: a.ak_public().unwrap(),
        ek_certificate: Some(cert_a.clone()),
    };
    let with = |db: &str, extra: &str| {
        let conf = base.replace("state.db", db) + extra;
        std::fs::write(d.join("serve.yaml"), conf).unwrap();
    };
    let (r, i) = (
        root.display(),
        ca.join("issuercert.pem").display().to_string(),
    );
    for (n, extra, ok) in [
        (
            1,
            format!("ek_ca_files: ['{r}']\nek_intermediate_files: ['{i}']\n"),
            None,
        ),
        (
            2,
            format!("ek_ca_files: ['{r}']\n"),
            Some("no configured CA has that name"),
        ),
        (3, format!("ek_ca_files: ['{i}']\n"), None),
        (
            4,
            "ek_ca_files: [other.pem]\n".to_owned(),
            Some("no configured CA has that name"),
        ),
    ] {
        with(&format!("state{n}.db"), &extra);
        let server = serve(d);
        let c = Client::new(&server.url);
        match (c.enrol(&req), ok) {
            (Ok(e), None) => assert_eq!(e.machine, machine_id(&mut a)),
            (Err(e), Some(words)) => {
                assert_eq!(e.kind(), Some("ek-certificate-refused"), "{e}");
                assert!(e.to_string().contains(words), "{e}");
            }
            (r, _) => panic!("configuration {n}: {r:?}"),
        }
    }
    // An intermediate that does not chain to the configured root: the service does not start.
    with(
        "state5.db",
        &format!("ek_ca_files: [other.pem]\nek_intermediate_files: ['{i}']\n"),
    );
    let o = imgctl()
        .args(["serve", "--config"])
        .arg(d.join("serve.yaml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("issuercert.pem") && err.contains("not issued by a configured CA"),
        "{err}"
    );
}

/// Durable attestation: with `verdict_log`, every verdict (ACCEPT and REJECT) is appended to
/// an `imgctl log init` log as its canonical record, at the index the evidence response gives;
/// a refusal (a replayed nonce) appends nothing. The log's size equals the verdicts on record,
/// and `imgctl log verify --log --entry --index` proves each record the verdicts API
/// describes; a record with the verdict flipped does not verify.
#[test]
fn every_verdict_is_in_the_verdict_log() {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let Some(cap) = setup(d, 60, "state.db") else {
        return;
    };
    log_cmd(
        &[
            "init",
            "verdicts",
            "--key",
            "verdicts.key",
            "--origin",
            "example.org/verdicts",
        ],
        d,
    );
    let mut yaml = std::fs::read_to_string(d.join("serve.yaml")).unwrap();
    yaml.push_str("verdict_log: {dir: verdicts, key: verdicts.key}\n");
    std::fs::write(d.join("serve.yaml"), yaml).unwrap();
    let server = serve(d);
    let c = Client::new(&server.url);
    let tpm = Swtpm::start_tcp();
    boot(&tpm, &cap.log);
    let mut a = Tpm::open(&tpm.tcti()).unwrap();
    let id = enrol(&c, &mut a);
    let mut indices = Vec::new();
    for quote_nonce in [None, Some([7u8; 32]), None] {
        let n = nonce(&c, &id);
        let ev = evidence(
            &mut a,
            &id,
            &n,
            quote_nonce.as_ref().map_or(&n[..], |q| &q[..]),
            &cap.log,
        );
        let v = c.evidence(&ev).unwrap();
        assert_eq!(v.accepted, quote_nonce.is_none(), "{v:?}");
        indices.push(v.verdict_log_index.unwrap());
        refused(c.evidence(&ev), "nonce-used");
    }
    assert_eq!(indices, [0, 1, 2]);
    let rec = c.verdicts(&id).unwrap();
    let verdicts = rec["verdicts"].as_array().unwrap();
    assert_eq!(verdicts.len(), 3);
    let checkpoint = std::fs::read_to_string(d.join("verdicts/checkpoint")).unwrap();
    assert_eq!(checkpoint.lines().nth(1), Some("3"), "{checkpoint}");
    let verify = |record: &serde_json::Value, i: usize| {
        std::fs::write(d.join("record.json"), record.to_string()).unwrap();
        imgctl()
            .current_dir(d)
            .args([
                "log",
                "verify",
                "--vkey",
                "@verdicts.vkey",
                "--log",
                "verdicts",
            ])
            .args(["--entry", "record.json", "--index", &i.to_string()])
            .output()
            .unwrap()
    };
    for (i, v) in verdicts.iter().enumerate() {
        let mut record = serde_json::json!({
            "accepted": v["accepted"], "evidence_sha256": v["evidence_sha256"],
            "format": "imgctl-verdict/1", "log_checkpoint": v["log_checkpoint"], "machine": id,
            "nonce": v["nonce"], "policy": v["policy"], "policy_version": v["policy_version"],
            "verdict": v["id"],
        });
        let o = verify(&record, i);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        record["accepted"] = (!v["accepted"].as_bool().unwrap()).into();
        assert!(
            !verify(&record, i).status.success(),
            "a flipped verdict verified"
        );
    }
}

/// ECC EKs: our MakeCredential to a NIST P-256 EK (ephemeral ECDH, seed by KDFe, Part 1
/// Annex C.6.1) is opened by the TPM's own TPM2_ActivateCredential (tpm2_createek -G ecc,
/// tpm2_createak, tpm2_activatecredential on swtpm), for that AK's Name only: the credential
/// made for another Name fails the TPM's integrity check.
#[test]
fn make_credential_to_an_ecc_ek_opens_on_the_tpm() {
    if !tools() {
        return;
    }
    let tpm = Swtpm::start_tcp();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = |args: &[&str], ok: bool| {
        let o = Command::new(args[0])
            .args(&args[1..])
            .current_dir(d)
            .env("TPM2TOOLS_TCTI", tpm.tcti())
            .output()
            .unwrap();
        assert_eq!(
            o.status.success(),
            ok,
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    const EK: &str = "0x81010010";
    run(
        &["tpm2_createek", "-c", EK, "-G", "ecc", "-u", "ek.pub"],
        true,
    );
    run(&["tpm2_flushcontext", "-t"], true);
    run(
        &[
            "tpm2_createak",
            "-C",
            EK,
            "-c",
            "ak.ctx",
            "-G",
            "ecc",
            "-g",
            "sha256",
            "-s",
            "ecdsa",
            "-u",
            "ak.pub",
            "-n",
            "ak.name",
        ],
        true,
    );
    run(&["tpm2_flushcontext", "-t"], true);
    run(&["tpm2_flushcontext", "-s"], true);
    // TPM2_ActivateCredential of d/cred.bin into d/out.bin with the AK and the ECC EK (its
    // policy session, PolicySecret of the endorsement hierarchy); `ok`: whether it succeeds.
    let activate = |ok: bool| {
        run(
            &[
                "tpm2_startauthsession",
                "--policy-session",
                "-S",
                "session.ctx",
            ],
            true,
        );
        run(&["tpm2_policysecret", "-S", "session.ctx", "-c", "e"], true);
        run(
            &[
                "tpm2_activatecredential",
                "-c",
                "ak.ctx",
                "-C",
                EK,
                "-i",
                "cred.bin",
                "-o",
                "out.bin",
                "-P",
                "session:session.ctx",
            ],
            ok,
        );
        run(&["tpm2_flushcontext", "session.ctx"], true);
    };
    let ek = TpmPublic::parse(&std::fs::read(d.join("ek.pub")).unwrap()).unwrap();
    ek.check_ek().unwrap();
    let ak = TpmPublic::parse(&std::fs::read(d.join("ak.pub")).unwrap()).unwrap();
    let mut other_name = ak.name.clone();
    *other_name.last_mut().unwrap() ^= 1;
    for (name, ok) in [(&ak.name, true), (&other_name, false)] {
        let cred = make_credential(&ek, name, SECRET).unwrap();
        std::fs::write(d.join("cred.bin"), CredentialFile(cred).encode()).unwrap();
        let _ = std::fs::remove_file(d.join("out.bin"));
        activate(ok);
        run(&["tpm2_flushcontext", "-t"], true);
        if ok {
            assert_eq!(std::fs::read(d.join("out.bin")).unwrap(), SECRET);
        }
    }
    // Through the API: the machine with the ECC EK enrols, activates on its TPM, is active.
    let conf = tempfile::tempdir().unwrap();
    if setup(conf.path(), 60, "state.db").is_none() {
        return;
    }
    let server = serve(conf.path());
    let c = Client::new(&server.url);
    let e = c
        .enrol(&EnrolRequest {
            ek_public: std::fs::read(d.join("ek.pub")).unwrap(),
            ak_public: std::fs::read(d.join("ak.pub")).unwrap(),
            ek_certificate: None,
        })
        .unwrap();
    let file = imgctl_service::api::decode_blob(&e.credential).unwrap();
    std::fs::write(d.join("cred.bin"), file).unwrap();
    activate(true);
    c.activate(&ActivateRequest {
        machine: e.machine.clone(),
        secret: std::fs::read(d.join("out.bin")).unwrap(),
    })
    .unwrap();
    assert_eq!(e.machine, hex::encode(&ek.name));
    nonce(&c, &e.machine);
}
