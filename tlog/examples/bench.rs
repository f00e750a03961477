//! Log store benchmark (run by hand: scripts/bench-tlog.sh). Not a test.
//!
//! Usage: bench DIR [ENTRIES] [BATCH] [PER_ENTRY_N]

use std::path::{Path, PathBuf};
use std::time::Instant;

use imgctl_tlog::note::{NoteSigner, VerifierKind};
use imgctl_tlog::{init, Appender, LogReader};

fn key() -> NoteSigner {
    NoteSigner::from_seed("bench.example/log", VerifierKind::Ed25519, [3; 32]).expect("key")
}

fn entry(i: u64) -> Vec<u8> {
    // About the size of a real imgctl entry with one bank and a few PCR predictions.
    format!("imgctl.dev/log-entry/v1\nkind uki\nname bench\nversion {i}\ndigest sha256 {:064x}\nrecipe sha256 {:064x}\nbuilder imgctl/0.1.0\n", i, i * 7).into_bytes()
}

fn du(p: &Path) -> (u64, u64) {
    let mut bytes = 0;
    let mut files = 0;
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let m = e.metadata().expect("metadata");
            if m.is_dir() {
                stack.push(e.path());
            } else {
                bytes += m.len();
                files += 1;
            }
        }
    }
    (bytes, files)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let base = PathBuf::from(args.get(1).expect("DIR"));
    let n: u64 = args
        .get(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let batch: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let per_entry_n: u64 = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(2_000);

    let dir = base.join("batched");
    init(&dir, &key()).expect("init");
    let mut a = Appender::open(&dir, key()).expect("open");
    let t = Instant::now();
    let mut i = 0;
    let mut entry_bytes = 0u64;
    while i < n {
        let b: Vec<Vec<u8>> = (i..(i + batch).min(n)).map(entry).collect();
        entry_bytes += b.iter().map(|e| e.len() as u64).sum::<u64>();
        a.append(&b).expect("append");
        i += b.len() as u64;
    }
    let el = t.elapsed();
    drop(a);
    println!(
        "batched: {n} entries in batches of {batch}: {:.2?} = {:.0} entries/s",
        el,
        n as f64 / el.as_secs_f64()
    );
    let (bytes, files) = du(&dir);
    println!("storage: {bytes} bytes in {files} files = {:.1} bytes/entry (entries themselves {:.1} bytes/entry)", bytes as f64 / n as f64, entry_bytes as f64 / n as f64);

    let r = LogReader::open(&dir).expect("reader");
    let (c, _) = r.checkpoint().expect("checkpoint");
    let rounds = 1000u64;
    let t = Instant::now();
    for k in 0..rounds {
        let idx = (k * 7_919_993) % c.size;
        let p = r.inclusion(idx, c.size).expect("proof");
        assert!(!p.is_empty());
    }
    let el = t.elapsed();
    println!("inclusion proof at size {}: {:.1} µs each (tiles read from disk, fresh tile cache per proof; {rounds} proofs)", c.size, el.as_secs_f64() * 1e6 / rounds as f64);
    let t = Instant::now();
    for k in 0..rounds {
        let s1 = 1 + (k * 7_919_993) % (c.size - 1);
        r.consistency(s1, c.size).expect("consistency");
    }
    println!(
        "consistency proof at size {}: {:.1} µs each",
        c.size,
        t.elapsed().as_secs_f64() * 1e6 / rounds as f64
    );
    let t = Instant::now();
    for k in 0..rounds {
        r.prove((k * 7_919_993) % c.size).expect("tlog-proof");
    }
    println!(
        "full .tlog-proof (checkpoint read+verified, entry, proof): {:.1} µs each",
        t.elapsed().as_secs_f64() * 1e6 / rounds as f64
    );

    let dir = base.join("per-entry");
    init(&dir, &key()).expect("init");
    let mut a = Appender::open(&dir, key()).expect("open");
    let t = Instant::now();
    for i in 0..per_entry_n {
        a.append(&[entry(i)]).expect("append");
    }
    let el = t.elapsed();
    let rate = per_entry_n as f64 / el.as_secs_f64();
    println!("per-entry durability: {per_entry_n} single-entry appends in {:.2?} = {:.0} entries/s (1M would take ~{:.0} s, extrapolated)", el, rate, 1e6 / rate);
}
