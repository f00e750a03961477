//! Crash test of the log store: appenders are killed with SIGKILL at random points while they
//! append; afterwards every acknowledged entry must be in the log at the index it was
//! acknowledged with, the whole tree must verify from its entries, and the final checkpoint
//! must be consistent with every checkpoint that was ever visible after a kill.
//!
//! IMGCTL_CRASH_KILLS sets the number of kills (default 200); IMGCTL_CRASH_SEED the seed.

#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: test code

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use imgctl_tlog::checkpoint::{self, Policy};
use imgctl_tlog::note::NoteSigner;
use imgctl_tlog::{Appender, LogReader};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn sigkilled_appenders_lose_no_acknowledged_entry() {
    let kills: usize = std::env::var("IMGCTL_CRASH_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let seed: u64 = std::env::var("IMGCTL_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
                | 1
        });
    eprintln!("crash test: {kills} kills, seed {seed}");
    let mut rng = Rng(seed);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let key = tmp.path().join("log.key");
    common::run_ok(
        common::imgctl()
            .args(["log", "init"])
            .arg(&dir)
            .arg("--key")
            .arg(&key)
            .args(["--origin", "example.com/crash"]),
    );

    let start = Instant::now();
    let mut acked: Vec<(u64, String)> = Vec::new();
    let mut seen_checkpoints: Vec<Vec<u8>> = Vec::new();
    let mut kills_during_append = 0;
    for round in 0..kills {
        let batch = 1 + rng.below(16);
        let mut child = common::imgctl()
            .args(["log", "append"])
            .arg(&dir)
            .arg("--key")
            .arg(&key)
            .args(["--stdin=raw", "--batch", &batch.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let writer = std::thread::spawn(move || {
            let mut sent = 0u64;
            // Write until the appender dies (broken pipe).
            while stdin
                .write_all(format!("round {round} entry {sent}\n").as_bytes())
                .is_ok()
            {
                sent += 1;
                if sent % 64 == 0 {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        });
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<String>>()
        });
        std::thread::sleep(Duration::from_micros(rng.below(25_000)));
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        if status.code().is_none() {
            kills_during_append += 1;
        }
        writer.join().unwrap();
        let mut line_no = 0u64;
        for ack in reader.join().unwrap() {
            let f: Vec<u64> = ack.split(' ').skip(1).map(|x| x.parse().unwrap()).collect();
            let (first, count) = (f[0], f[1]);
            for i in 0..count {
                acked.push((first + i, format!("round {round} entry {}", line_no + i)));
            }
            line_no += count;
        }
        seen_checkpoints.push(std::fs::read(dir.join("checkpoint")).unwrap());
    }
    let elapsed = start.elapsed();

    // Reopen (recovers a half-done append), then check everything.
    let signer = NoteSigner::parse_skey(std::fs::read_to_string(&key).unwrap().trim()).unwrap();
    drop(Appender::open(&dir, signer).unwrap());
    let reader = LogReader::open(&dir).unwrap();
    let (final_cp, report) = reader.audit().unwrap();
    for (index, text) in &acked {
        let e = reader.entry(*index, final_cp.size).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&e),
            *text,
            "acknowledged entry {index} changed or lost"
        );
    }
    let policy = Policy::log_only(reader.vkey());
    let mut distinct = std::collections::BTreeSet::new();
    for cp in &seen_checkpoints {
        let old = checkpoint::verify(cp, &policy).unwrap().checkpoint;
        let proof = if old.size > 0 {
            reader.consistency(old.size, final_cp.size).unwrap()
        } else {
            Vec::new()
        };
        checkpoint::check_consistency(&old, &final_cp, &proof).unwrap();
        distinct.insert(old.size);
    }
    eprintln!(
        "crash test: {kills} SIGKILLs ({kills_during_append} died by the signal) in {:.1?}; {} acknowledged entries all present; \
         final size {} ({} tiles, {} bundles) audits; consistent with {} distinct earlier checkpoints",
        elapsed, acked.len(), final_cp.size, report.tiles, report.bundles, distinct.len()
    );
    assert!(
        kills_during_append >= kills * 9 / 10,
        "most kills must hit a live appender"
    );
    assert!(!acked.is_empty());
}
