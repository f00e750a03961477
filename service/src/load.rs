//! A fleet in one process, against `imgctl serve` replicas over HTTP (I/O: threads and the
//! [`Client`]): each simulated machine is a [`SoftTpm`] that enrols through the API
//! (MakeCredential / its software ActivateCredential), then answers `rounds` challenges with
//! quotes that re-sign a recorded boot (the event log's replayed PCRs under each new nonce),
//! and opens every released secret. A machine prefers one replica and moves to the next when
//! a request fails in transport (a replica killed): a step that can be repeated is repeated
//! there; evidence whose answer was lost is not resent (its nonce may be consumed), the
//! machine asks the other replica for a new challenge instead.
//!
//! [`check`] then reads every machine's record back and states the invariants: no answered
//! verdict lost, no verdict or release duplicated (one per nonce, one per (nonce, secret)),
//! only lost answers' nonces recorded beyond the answered ones, every machine finished.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use imgctl_attest::eventlog::replay::{replay, Replay};
use imgctl_attest::eventlog::EventLog;
use imgctl_measure::bank::HashAlg;

use crate::api::{self, ActivateRequest, ChallengeRequest, EnrolRequest, EvidenceRequest};
use crate::client::{Client, ClientError};
use crate::credential::CredentialFile;
use crate::soft_tpm::SoftTpm;

/// How many transport failures one machine tolerates before it gives up.
const MAX_RETRIES: usize = 50;

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Base URLs of the replicas; machine i starts with replica i mod n.
    pub servers: Vec<String>,
    pub machines: usize,
    /// Accepted attestations each machine must complete.
    pub rounds: usize,
    /// The recorded firmware event log every machine presents (its replay is what it quotes).
    pub event_log: Vec<u8>,
    /// The PCRs quoted.
    pub selection: Vec<(HashAlg, Vec<u32>)>,
    /// The secrets the policy releases, by name: each must open to these bytes.
    pub secrets: Vec<(String, Vec<u8>)>,
}

/// Called once, from the machine that completes this many attestations in all (to kill a
/// replica in the middle of the run).
pub type MidRun = Option<(usize, Box<dyn FnOnce() + Send>)>;

/// One machine's view of what happened, for [`check`].
#[derive(Debug, Default, Clone)]
pub struct MachineLog {
    pub id: String,
    /// (verdict id, nonce hex, accepted, evidence sha256) of every answer received.
    pub answered: Vec<(i64, String, bool, String)>,
    /// Nonces whose evidence was sent and whose answer was lost in transport.
    pub lost: Vec<String>,
    pub accepted: usize,
    pub finished: bool,
    pub error: Option<String>,
}

/// Figures of a run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadReport {
    pub machines: usize,
    pub replicas: usize,
    /// Accepted attestations (challenge + evidence with every secret opened).
    pub attestations: usize,
    pub seconds: f64,
    pub per_second: f64,
    /// Latency of one attestation (challenge request to evidence answer), milliseconds.
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Requests that failed in transport and were moved to another replica.
    pub transport_failures: usize,
    /// Evidence sent whose answer never came back.
    pub lost_answers: usize,
    pub enrol_seconds: f64,
}

/// Any transport failure (connection refused or reset, the replica gone) is retried on the
/// next replica; a refusal is an answer.
fn is_transport(e: &ClientError) -> bool {
    matches!(e, ClientError::Transport { .. })
}

struct Machine<'a> {
    tpm: SoftTpm,
    clients: &'a [Client],
    at: usize,
    failures: &'a AtomicUsize,
    retries: usize,
    log: MachineLog,
}

impl Machine<'_> {
    fn client(&self) -> &Client {
        &self.clients[self.at % self.clients.len()]
    }

    /// A transport failure: count it, move to the next replica, give up after too many.
    fn moved(&mut self, e: &ClientError) -> Result<(), String> {
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.retries += 1;
        self.at += 1;
        if self.retries > MAX_RETRIES {
            return Err(format!(
                "gave up after {MAX_RETRIES} transport failures: {e}"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
        Ok(())
    }

    fn open(&self, b64: &str) -> Result<Vec<u8>, String> {
        let file = api::decode_blob(b64).map_err(|e| e.to_string())?;
        let cred = CredentialFile::parse(&file).map_err(|e| e.to_string())?.0;
        self.tpm
            .activate_credential(&cred)
            .map_err(|e| e.to_string())
    }

    fn enrol(&mut self) -> Result<(), String> {
        let req = EnrolRequest {
            ek_public: self.tpm.ek_public().to_vec(),
            ak_public: self.tpm.ak_public().to_vec(),
            ek_certificate: None,
        };
        loop {
            let e = match self.client().enrol(&req) {
                Ok(e) => e,
                Err(e) if is_transport(&e) => {
                    self.moved(&e)?;
                    continue;
                }
                Err(e) => return Err(e.to_string()),
            };
            self.log.id.clone_from(&e.machine);
            let secret = self.open(&e.credential)?;
            let act = ActivateRequest {
                machine: e.machine.clone(),
                secret,
            };
            let mut lost = false;
            loop {
                match self.client().activate(&act) {
                    Ok(()) => return Ok(()),
                    Err(e) if is_transport(&e) => {
                        lost = true;
                        self.moved(&e)?;
                    }
                    // Our earlier activation landed before its answer was lost.
                    Err(e) if lost && e.kind() == Some("not-pending") => return Ok(()),
                    Err(e) => return Err(e.to_string()),
                }
            }
        }
    }

    /// One accepted attestation, or an error; returns its latency.
    fn attest(&mut self, cfg: &LoadConfig, replayed: &Replay) -> Result<Option<Duration>, String> {
        let start = Instant::now();
        let ch = match self.client().challenge(&ChallengeRequest {
            machine: self.log.id.clone(),
        }) {
            Ok(c) => c,
            Err(e) if is_transport(&e) => {
                self.moved(&e)?;
                return Ok(None);
            }
            Err(e) => return Err(e.to_string()),
        };
        let nonce = hex::decode(&ch.nonce).map_err(|e| format!("challenge nonce: {e}"))?;
        let (quote, signature) = self
            .tpm
            .quote(&nonce, &cfg.selection, |b, p| replayed.value(b, p))
            .map_err(|e| e.to_string())?;
        let req = EvidenceRequest {
            machine: self.log.id.clone(),
            nonce,
            quote,
            signature,
            event_log: cfg.event_log.clone(),
            userspace_log: None,
        };
        let v = match self.client().evidence(&req) {
            Ok(v) => v,
            Err(e) if is_transport(&e) => {
                self.log.lost.push(ch.nonce);
                self.moved(&e)?;
                return Ok(None);
            }
            Err(e) => return Err(e.to_string()),
        };
        let took = start.elapsed();
        self.log.answered.push((
            v.verdict_id,
            ch.nonce.clone(),
            v.accepted,
            v.evidence_sha256.clone(),
        ));
        if !v.accepted {
            return Err(format!("REJECT: {}", v.findings));
        }
        let mut names = BTreeSet::new();
        for r in &v.releases {
            let got = self.open(&r.credential)?;
            let want = cfg
                .secrets
                .iter()
                .find(|(n, _)| *n == r.name)
                .ok_or_else(|| format!("released an unknown secret {}", r.name))?;
            if got != want.1 {
                return Err(format!("secret {} opened to other bytes", r.name));
            }
            names.insert(r.name.clone());
        }
        if names.len() != cfg.secrets.len() || v.releases.len() != cfg.secrets.len() {
            return Err(format!("released {:?}, not each secret once", names));
        }
        Ok(Some(took))
    }
}

/// Runs the fleet; returns the figures and each machine's log (for [`check`]).
pub fn run(cfg: LoadConfig, mid_run: MidRun) -> Result<(LoadReport, Vec<MachineLog>), String> {
    if cfg.servers.is_empty() || cfg.machines == 0 || cfg.rounds == 0 {
        return Err("load: no servers, machines or rounds".into());
    }
    let log = EventLog::parse(&cfg.event_log).map_err(|e| format!("event log: {e}"))?;
    let replayed = replay(&log);
    let clients: Vec<Client> = cfg.servers.iter().map(|s| Client::new(s)).collect();
    // Key generation (RSA-2048 EKs) is the machines' work, not the service's: done first.
    let tpms: Vec<SoftTpm> = std::thread::scope(|s| {
        let per = cfg.machines.div_ceil(4);
        let hs: Vec<_> = (0..4)
            .map(|i| {
                let n = per.min(cfg.machines.saturating_sub(i * per));
                s.spawn(move || (0..n).map(|_| SoftTpm::new()).collect::<Vec<_>>())
            })
            .collect();
        hs.into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect::<Result<Vec<_>, _>>()
    })
    .map_err(|e| e.to_string())?;
    if tpms.len() != cfg.machines {
        return Err("load: a key generation thread failed".into());
    }
    let failures = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let mid_run = Mutex::new(mid_run);
    let latencies = Mutex::new(Vec::new());
    let enrolled = std::sync::Barrier::new(cfg.machines + 1);
    let cfg = &cfg;
    let (logs, enrol_seconds, seconds) = std::thread::scope(|s| {
        let hs: Vec<_> = tpms
            .into_iter()
            .enumerate()
            .map(|(i, tpm)| {
                let (clients, failures, done, mid_run, latencies, enrolled, replayed) = (
                    &clients, &failures, &done, &mid_run, &latencies, &enrolled, &replayed,
                );
                std::thread::Builder::new()
                    .stack_size(256 << 10)
                    .spawn_scoped(s, move || {
                        let mut m = Machine {
                            tpm,
                            clients,
                            at: i,
                            failures,
                            retries: 0,
                            log: MachineLog::default(),
                        };
                        let r = m.enrol();
                        enrolled.wait();
                        if let Err(e) = r {
                            m.log.error = Some(format!("enrolment: {e}"));
                            return m.log;
                        }
                        while m.log.accepted < cfg.rounds {
                            match m.attest(cfg, replayed) {
                                Ok(Some(took)) => {
                                    m.log.accepted += 1;
                                    if let Ok(mut l) = latencies.lock() {
                                        l.push(took);
                                    }
                                    let n = done.fetch_add(1, Ordering::SeqCst) + 1;
                                    if let Ok(mut g) = mid_run.lock() {
                                        if g.as_ref().is_some_and(|(at, _)| n >= *at) {
                                            if let Some((_, f)) = g.take() {
                                                f();
                                            }
                                        }
                                    }
                                }
                                Ok(None) => {}
                                Err(e) => {
                                    m.log.error = Some(e);
                                    return m.log;
                                }
                            }
                        }
                        m.log.finished = true;
                        m.log
                    })
            })
            .collect();
        let t0 = Instant::now();
        enrolled.wait();
        let enrol_seconds = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let logs: Vec<MachineLog> = hs
            .into_iter()
            .map(|h| match h {
                Ok(h) => h.join().unwrap_or_else(|_| MachineLog {
                    error: Some("machine thread panicked".into()),
                    ..MachineLog::default()
                }),
                Err(e) => MachineLog {
                    error: Some(format!("machine thread: {e}")),
                    ..MachineLog::default()
                },
            })
            .collect();
        (logs, enrol_seconds, t1.elapsed().as_secs_f64())
    });
    let mut lat: Vec<Duration> = latencies.into_inner().unwrap_or_default();
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 - 1.0) * p).round() as usize;
        lat.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let attestations = lat.len();
    let report = LoadReport {
        machines: cfg.machines,
        replicas: cfg.servers.len(),
        attestations,
        seconds,
        per_second: attestations as f64 / seconds.max(1e-9),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        max_ms: pct(1.0),
        transport_failures: failures.load(Ordering::Relaxed),
        lost_answers: logs.iter().map(|l| l.lost.len()).sum(),
        enrol_seconds,
    };
    Ok((report, logs))
}

/// What [`check`] found in the records.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Audit {
    pub verdicts: usize,
    pub releases: usize,
    /// Lost answers whose verdict was recorded nonetheless (the replica died after commit).
    pub lost_but_recorded: usize,
}

/// Reads every machine's verdicts and releases from `server` and checks the invariants;
/// every violation is listed.
pub fn check(
    server: &str,
    logs: &[MachineLog],
    rounds: usize,
    secrets: usize,
) -> Result<Audit, Vec<String>> {
    let c = Client::new(server);
    let mut bad = Vec::new();
    let mut audit = Audit::default();
    for l in logs {
        if let Some(e) = &l.error {
            bad.push(format!("machine {}: {e}", l.id));
        }
        if !l.finished || l.accepted != rounds {
            bad.push(format!(
                "machine {}: {} of {rounds} attestations",
                l.id, l.accepted
            ));
        }
        let rec = match c.verdicts(&l.id) {
            Ok(r) => r,
            Err(e) => {
                bad.push(format!("machine {}: {e}", l.id));
                continue;
            }
        };
        let empty = Vec::new();
        let verdicts = rec["verdicts"].as_array().unwrap_or(&empty);
        let releases = rec["releases"].as_array().unwrap_or(&empty);
        audit.verdicts += verdicts.len();
        audit.releases += releases.len();
        let mut by_nonce: BTreeMap<String, (i64, bool, String)> = BTreeMap::new();
        for v in verdicts {
            let nonce = v["nonce"].as_str().unwrap_or_default().to_owned();
            let row = (
                v["id"].as_i64().unwrap_or(-1),
                v["accepted"].as_bool().unwrap_or(false),
                v["evidence_sha256"].as_str().unwrap_or_default().to_owned(),
            );
            if by_nonce.insert(nonce.clone(), row).is_some() {
                bad.push(format!("machine {}: two verdicts for nonce {nonce}", l.id));
            }
        }
        for (id, nonce, accepted, sha) in &l.answered {
            match by_nonce.get(nonce) {
                Some((rid, racc, rsha)) if rid == id && racc == accepted && rsha == sha => {}
                Some(r) => bad.push(format!(
                    "machine {}: verdict {id} for {nonce} answered, {r:?} recorded",
                    l.id
                )),
                None => bad.push(format!(
                    "machine {}: verdict {id} for {nonce} answered but not recorded (lost)",
                    l.id
                )),
            }
        }
        let answered: BTreeSet<&str> = l.answered.iter().map(|a| a.1.as_str()).collect();
        let lost: BTreeSet<&str> = l.lost.iter().map(String::as_str).collect();
        for nonce in by_nonce.keys() {
            if lost.contains(nonce.as_str()) {
                audit.lost_but_recorded += 1;
            } else if !answered.contains(nonce.as_str()) {
                bad.push(format!(
                    "machine {}: a verdict for nonce {nonce} nobody sent",
                    l.id
                ));
            }
        }
        let mut seen = BTreeSet::new();
        let mut per_nonce: BTreeMap<String, usize> = BTreeMap::new();
        for r in releases {
            let nonce = r["nonce"].as_str().unwrap_or_default().to_owned();
            let secret = r["secret"].as_str().unwrap_or_default().to_owned();
            if !seen.insert((nonce.clone(), secret.clone())) {
                bad.push(format!(
                    "machine {}: secret {secret} released twice for nonce {nonce}",
                    l.id
                ));
            }
            if !by_nonce.get(&nonce).is_some_and(|v| v.1) {
                bad.push(format!(
                    "machine {}: a release for nonce {nonce} without an ACCEPT",
                    l.id
                ));
            }
            *per_nonce.entry(nonce).or_default() += 1;
        }
        for (nonce, (_, accepted, _)) in &by_nonce {
            let n = per_nonce.get(nonce).copied().unwrap_or(0);
            if *accepted && n != secrets {
                bad.push(format!(
                    "machine {}: ACCEPT for {nonce} with {n} releases, not {secrets}",
                    l.id
                ));
            }
        }
    }
    if bad.is_empty() {
        Ok(audit)
    } else {
        Err(bad)
    }
}
