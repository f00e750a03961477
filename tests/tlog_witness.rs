//! Witnessing and monitoring the log (issue 13, items 4 and 5), with real processes on
//! loopback: `imgctl log witness` services cosign what `log checkpoint --witness-policy`
//! publishes; the witness answers add-checkpoint with the statuses C2SP tlog-witness
//! specifies, spoken to over a raw TCP socket (not imgctl's client); `log monitor` prints new
//! entries and rejects a split view. The independent Python checker (tests/tlog_check.py)
//! verifies the cosignatures from the C2SP tlog-cosignature text.

#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: test code

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{imgctl, run_ok, spawn_witness};

/// A valid cosignature/v1 vkey of a witness that never runs.
const ABSENT_WITNESS: &str = "w.example+fd0a1844+BAcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcH";

struct Log {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

impl Log {
    fn dir(&self) -> PathBuf {
        self.root.join("log")
    }
    fn key(&self) -> PathBuf {
        self.root.join("log.key")
    }
    fn vkey(&self) -> String {
        std::fs::read_to_string(self.root.join("log.vkey"))
            .unwrap()
            .trim()
            .to_owned()
    }
    fn append_raw(&self, text: &str) -> PathBuf {
        let f = self.root.join(format!("{}.raw", text.replace(' ', "_")));
        std::fs::write(&f, text).unwrap();
        run_ok(
            imgctl()
                .args(["log", "append"])
                .arg(self.dir())
                .arg("--key")
                .arg(self.key())
                .arg("--raw")
                .arg(&f),
        );
        f
    }
    fn write(&self, name: &str, data: &str) -> PathBuf {
        let p = self.root.join(name);
        std::fs::write(&p, data).unwrap();
        p
    }
    /// `log checkpoint DIR --key KEY --witness-policy POLICY`.
    fn publish(&self, policy: &Path) -> std::process::Output {
        imgctl()
            .args(["log", "checkpoint"])
            .arg(self.dir())
            .arg("--key")
            .arg(self.key())
            .arg("--witness-policy")
            .arg(policy)
            .output()
            .unwrap()
    }
    /// `log verify --witness-policy POLICY --log DIR --index I --entry E`: exit code, stderr.
    fn verify(&self, policy: &Path, index: u64, entry: &Path) -> (bool, String) {
        let o = imgctl()
            .args(["log", "verify", "--vkey", &self.vkey(), "--witness-policy"])
            .arg(policy)
            .arg("--log")
            .arg(self.dir())
            .args(["--index", &index.to_string(), "--entry"])
            .arg(entry)
            .output()
            .unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }
}

fn new_log(origin: &str) -> Log {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let l = Log { _tmp: tmp, root };
    run_ok(
        imgctl()
            .args(["log", "init"])
            .arg(l.dir())
            .arg("--key")
            .arg(l.key())
            .args(["--origin", origin]),
    );
    l
}

fn python_check(dir: &Path, args: &[&str]) -> Option<std::process::Output> {
    common::require_tool("python3", "python3")?;
    let probe = Command::new("python3")
        .args(["-c", "import cryptography"])
        .status()
        .unwrap();
    if !probe.success() {
        common::missing("python3-cryptography");
        return None;
    }
    Some(
        Command::new("python3")
            .arg(common::repo_root().join("tests/tlog_check.py"))
            .arg(dir)
            .args(args)
            .output()
            .unwrap(),
    )
}

/// Flips one character of the base64 signature on the `— <name> ` line of a note.
fn forge_line(note: &str, name: &str) -> String {
    let prefix = format!("\u{2014} {name} ");
    note.lines()
        .map(|l| match l.strip_prefix(&prefix) {
            Some(sig) => {
                let mut b = sig.as_bytes().to_vec();
                let i = b.len() - 10;
                b[i] = if b[i] == b'A' { b'B' } else { b'A' };
                format!("{prefix}{}\n", String::from_utf8(b).unwrap())
            }
            None => format!("{l}\n"),
        })
        .collect()
}

#[test]
fn two_witnesses_cosign_and_the_policy_quorum_decides() {
    let l = new_log("example.com/witnessed");
    let e0 = l.append_raw("first entry");
    l.append_raw("second entry");
    l.append_raw("third entry");
    let vkey = l.vkey();
    let w1 = spawn_witness(&l.root, "witness.example/w1", &vkey);
    let w2 = spawn_witness(&l.root, "witness.example/w2", &vkey);
    let both = l.write(
        "both.policy",
        &format!(
            "log {vkey}\nwitness w1 {} {}\nwitness w2 {} {}\ngroup both all w1 w2\nquorum both\n",
            w1.vkey, w1.url, w2.vkey, w2.url
        ),
    );
    let three = l.write(
        "three.policy",
        &format!(
            "log {vkey}\nwitness w1 {} {}\nwitness w2 {} {}\nwitness w3 {ABSENT_WITNESS}\n\
             group all3 all w1 w2 w3\nquorum all3\n",
            w1.vkey, w1.url, w2.vkey, w2.url
        ),
    );
    // Before publishing, the log's checkpoint has no cosignature: 2 of 2 rejects.
    let (ok, err) = l.verify(&both, 0, &e0);
    assert!(!ok && err.contains("quorum is not met"), "{err}");

    let o = l.publish(&both);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let published = std::fs::read_to_string(l.dir().join("checkpoint")).unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), published);
    assert!(published.contains("\u{2014} witness.example/w1 "));
    assert!(published.contains("\u{2014} witness.example/w2 "));

    let (ok, err) = l.verify(&both, 0, &e0);
    assert!(ok, "2 of 2: {err}");
    let (ok, err) = l.verify(&three, 0, &e0);
    assert!(
        !ok && err.contains("quorum is not met"),
        "needs a third: {err}"
    );

    // `log prove` writes the cosigned checkpoint into the .tlog-proof.
    let proof = l.root.join("0.tlog-proof");
    run_ok(
        imgctl()
            .args(["log", "prove"])
            .arg(l.dir())
            .args(["--index", "0", "--out"])
            .arg(&proof),
    );
    let verify_proof = |p: &Path, policy: &Path| {
        imgctl()
            .args(["log", "verify", "--vkey", &vkey, "--witness-policy"])
            .arg(policy)
            .arg("--proof")
            .arg(p)
            .output()
            .unwrap()
    };
    assert!(verify_proof(&proof, &both).status.success());
    assert!(!verify_proof(&proof, &three).status.success());
    // A forged cosignature (bytes flipped) rejects.
    let forged = l.write(
        "forged.tlog-proof",
        &forge_line(
            &std::fs::read_to_string(&proof).unwrap(),
            "witness.example/w2",
        ),
    );
    let o = verify_proof(&forged, &both);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("does not verify"), "{err}");

    // The independent checker verifies both cosignatures from the spec's text.
    if let Some(o) = python_check(&l.dir(), &[&vkey, &w1.vkey, &w2.vkey]) {
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{out}");
        assert!(
            out.starts_with("ok 3 ") && out.contains("cosigned by 2"),
            "{out}"
        );
        let o = python_check(&l.dir(), &[&vkey, ABSENT_WITNESS]).unwrap();
        assert!(!o.status.success());
    }

    // `log append --witness-policy --proof-dir`: the new checkpoint is cosigned (the witnesses
    // answered 409 with size 3 first and got a consistency proof) and so are the proofs.
    let e3 = l.write("e3.raw", "fourth entry");
    let pd = l.root.join("proofs");
    let o = imgctl()
        .args(["log", "append"])
        .arg(l.dir())
        .arg("--key")
        .arg(l.key())
        .arg("--raw")
        .arg(&e3)
        .arg("--witness-policy")
        .arg(&both)
        .arg("--proof-dir")
        .arg(&pd)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(verify_proof(&pd.join("3.tlog-proof"), &both)
        .status
        .success());
    let (ok, err) = l.verify(&both, 3, &e3);
    assert!(ok, "{err}");

    // The folder's checkpoint with a flipped cosignature: rejected, by imgctl and Python.
    let cp = l.dir().join("checkpoint");
    let good = std::fs::read_to_string(&cp).unwrap();
    std::fs::write(&cp, forge_line(&good, "witness.example/w1")).unwrap();
    let (ok, err) = l.verify(&both, 0, &e0);
    assert!(!ok && err.contains("does not verify"), "{err}");
    if let Some(o) = python_check(&l.dir(), &[&vkey, &w1.vkey]) {
        assert!(!o.status.success());
    }
    std::fs::write(&cp, &good).unwrap();

    // A witness that is down: the append is durable and says so loudly; `log checkpoint`
    // fails, naming it; what the other witness cosigned is still published.
    drop(w2);
    let e4 = l.write("e4.raw", "fifth entry");
    let o = imgctl()
        .args(["log", "append"])
        .arg(l.dir())
        .arg("--key")
        .arg(l.key())
        .arg("--raw")
        .arg(&e4)
        .arg("--witness-policy")
        .arg(&both)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "4\n");
    assert!(err.contains("WARNING: witness w2"), "{err}");
    let o = l.publish(&both);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("did not cosign: w2"));
    let published = std::fs::read_to_string(&cp).unwrap();
    assert!(published.starts_with("example.com/witnessed\n5\n"));
    assert!(published.contains("\u{2014} witness.example/w1 "));
    assert!(!published.contains("\u{2014} witness.example/w2 "));
}

/// One HTTP/1.1 request over a plain socket: (status, content type, body).
fn post(url: &str, path: &str, body: &[u8]) -> (u16, String, String) {
    let addr = url.strip_prefix("http://").unwrap().trim_end_matches('/');
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let text = String::from_utf8_lossy(&resp).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let ctype = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type:")
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_default();
    (status, ctype, rest.to_owned())
}

fn checkpoint_of(dir: &Path) -> String {
    String::from_utf8(run_ok(imgctl().args(["log", "checkpoint"]).arg(dir))).unwrap()
}

#[test]
fn the_witness_answers_add_checkpoint_as_the_spec_says() {
    let l = new_log("example.com/spoken-to");
    for i in 0..3 {
        l.append_raw(&format!("entry {i}"));
    }
    let vkey = l.vkey();
    let root = l.root.clone();
    let mut w = spawn_witness(&root, "witness.example/spec", &vkey);
    let policy = l.write(
        "w.policy",
        &format!("witness w {} {}\nquorum w\n", w.vkey, w.url),
    );
    assert!(l.publish(&policy).status.success());
    let c3 = checkpoint_of(&l.dir());

    // The witness has size 3: a request from `old 0` is stale.
    let (status, ctype, body) = post(
        &w.url,
        "/add-checkpoint",
        format!("old 0\n\n{c3}").as_bytes(),
    );
    assert_eq!(
        (status, ctype.as_str(), body.as_str()),
        (409, "text/x.tlog.size", "3\n")
    );
    // The same checkpoint again from the recorded size: cosigned (a cosignature line).
    let (status, _, body) = post(
        &w.url,
        "/add-checkpoint",
        format!("old 3\n\n{c3}").as_bytes(),
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("\u{2014} witness.example/spec ") && body.ends_with('\n'));

    l.append_raw("entry 3");
    l.append_raw("entry 4");
    let c5 = checkpoint_of(&l.dir());
    // A consistency proof that does not verify: 422.
    let bogus = "PlRNCrwHpqhGrupue0L7gxbjbMiKA9temvuZZDDpkaw=\n";
    let (status, _, body) = post(
        &w.url,
        "/add-checkpoint",
        format!("old 3\n{bogus}{bogus}\n{c5}").as_bytes(),
    );
    assert_eq!(status, 422, "{body}");
    // old above the checkpoint's size: 400; a malformed body: 400.
    let (status, _, _) = post(
        &w.url,
        "/add-checkpoint",
        format!("old 9\n\n{c5}").as_bytes(),
    );
    assert_eq!(status, 400);
    let (status, _, _) = post(&w.url, "/add-checkpoint", b"hello\n");
    assert_eq!(status, 400);
    // Same origin, another key: 403. Another origin: 404.
    let forger = root.join("forger");
    run_ok(
        imgctl()
            .args(["log", "init"])
            .arg(&forger)
            .arg("--key")
            .arg(root.join("forger.key"))
            .args(["--origin", "example.com/spoken-to"]),
    );
    let (status, _, _) = post(
        &w.url,
        "/add-checkpoint",
        format!("old 0\n\n{}", checkpoint_of(&forger)).as_bytes(),
    );
    assert_eq!(status, 403);
    let stranger = root.join("stranger");
    run_ok(
        imgctl()
            .args(["log", "init"])
            .arg(&stranger)
            .arg("--key")
            .arg(root.join("stranger.key"))
            .args(["--origin", "example.com/stranger"]),
    );
    let (status, _, _) = post(
        &w.url,
        "/add-checkpoint",
        format!("old 0\n\n{}", checkpoint_of(&stranger)).as_bytes(),
    );
    assert_eq!(status, 404);
    // A body above the bound is refused without being read whole.
    let (status, _, _) = post(&w.url, "/add-checkpoint", &vec![b'a'; 2 << 20]);
    assert_eq!(status, 413);

    // Restarted, the witness still knows size 3 (its record was persisted before it answered).
    drop(w);
    w = spawn_witness(&root, "witness.example/spec", &vkey);
    let (status, ctype, body) = post(
        &w.url,
        "/add-checkpoint",
        format!("old 0\n\n{c5}").as_bytes(),
    );
    assert_eq!(
        (status, ctype.as_str(), body.as_str()),
        (409, "text/x.tlog.size", "3\n")
    );
    let state = std::fs::read_to_string(w.state.join("witness-state")).unwrap();
    assert!(
        state.starts_with("3 ") && state.ends_with(" example.com/spoken-to\n"),
        "{state}"
    );
    // The log's client follows the 409 with a real consistency proof: cosigned at 5.
    let policy = l.write(
        "w2.policy",
        &format!("witness w {} {}\nquorum w\n", w.vkey, w.url),
    );
    let o = l.publish(&policy);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let state = std::fs::read_to_string(w.state.join("witness-state")).unwrap();
    assert!(state.starts_with("5 "), "{state}");
}

/// The artifact digest `entry_json` records for `version`: SHA-256 of the version string.
fn digest_of(version: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(version.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn entry_json(l: &Log, name: &str, version: &str) -> PathBuf {
    let z = "0".repeat(64);
    l.write(
        &format!("{name}-{version}.json"),
        &serde_json::json!({"kind": "uki", "name": name, "version": version,
            "digests": {"sha256": digest_of(version)}, "pcrs": [],
            "recipe": format!("sha256:{z}"), "builder": "ci.example/builder"})
        .to_string(),
    )
}

fn append_entry(dir: &Path, key: &Path, entry: &Path) {
    run_ok(
        imgctl()
            .args(["log", "append"])
            .arg(dir)
            .arg("--key")
            .arg(key)
            .arg("--entry")
            .arg(entry),
    );
}

fn monitor(log: &Path, vkey: &str, state: &Path) -> (bool, String, String) {
    let o = imgctl()
        .args(["log", "monitor"])
        .arg(log)
        .args(["--vkey", vkey, "--state"])
        .arg(state)
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn monitor_prints_new_entries_and_rejects_a_split_view() {
    let l = new_log("example.com/monitored");
    let vkey = l.vkey();
    let state = l.root.join("monitor.state");
    append_entry(&l.dir(), &l.key(), &entry_json(&l, "web-uki", "1"));
    append_entry(&l.dir(), &l.key(), &entry_json(&l, "web-uki", "2"));
    let (ok, out, err) = monitor(&l.dir(), &vkey, &state);
    assert!(ok, "{err}");
    assert!(
        out.contains("0\tuki web-uki 1 builder=ci.example/builder\n"),
        "{out}"
    );
    assert!(
        out.contains("1\tuki web-uki 2 builder=ci.example/builder\n"),
        "{out}"
    );
    assert!(
        out.contains(&format!("artifact sha256:{}", digest_of("2"))),
        "{out}"
    );
    assert!(out.contains("size 2 ") && out.contains("(2 new)"), "{out}");
    // Nothing new: nothing printed but the checkpoint.
    let (ok, out, _) = monitor(&l.dir(), &vkey, &state);
    assert!(
        ok && out.contains("(0 new)") && !out.contains("web-uki"),
        "{out}"
    );
    // After an append: only the new entry.
    append_entry(&l.dir(), &l.key(), &entry_json(&l, "web-uki", "3"));
    let (ok, out, _) = monitor(&l.dir(), &vkey, &state);
    assert!(ok, "{out}");
    assert!(
        out.contains("2\tuki web-uki 3 ") && !out.contains("web-uki 1"),
        "{out}"
    );
    // --json: one object per entry.
    let o = imgctl()
        .args(["log", "monitor"])
        .arg(l.dir())
        .args(["--vkey", &vkey, "--json"])
        .output()
        .unwrap();
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|s| serde_json::from_str(s).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[2]["entry"]["version"], "3");
    assert_eq!(lines[3]["checkpoint"]["size"], 3);

    // A split view: another log with the same origin and key, diverging after entry 0.
    let fork = l.root.join("fork");
    run_ok(
        imgctl()
            .args(["log", "init"])
            .arg(&fork)
            .arg("--key")
            .arg(l.key()),
    );
    append_entry(&fork, &l.key(), &entry_json(&l, "web-uki", "1"));
    for v in ["evil-2", "evil-3", "evil-4"] {
        append_entry(&fork, &l.key(), &entry_json(&l, "web-uki", v));
    }
    let before = std::fs::read(&state).unwrap();
    let (ok, out, err) = monitor(&fork, &vkey, &state);
    assert!(!ok, "{out}");
    assert!(
        err.contains("inconsistent with the checkpoint seen before"),
        "{err}"
    );
    assert!(!out.contains("evil"), "{out}");
    assert_eq!(
        std::fs::read(&state).unwrap(),
        before,
        "state kept on rejection"
    );
}
