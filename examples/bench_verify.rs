//! Benchmark helper for scripts/bench.sh's "verify one demo boot" row:
//! `bench_verify SHARED_DIR N` times N complete verifications of one boot's evidence, in one
//! process, from the bytes (parsing included), and prints the median and the mean.
//!
//! The evidence, real captures from `SHARED_DIR/testdata/eventlogs` (no stored capture holds
//! all three of one boot):
//! - firmware log: `ovmf-swtpm/ovmf-stub252-eventlog.bin`, an OVMF + swtpm boot of a
//!   systemd-stub 252 UKI (45 records, 4 banks), verified against a policy of PCRs 0–7, 9 and
//!   11 in sha1 and sha256 (the guest's PCR values; PCR 11 through the UKI's reference record:
//!   its section digests and systemd-measure's PCR 11), with systemd's userspace log of the
//!   pcrphase steps `enter-initrd` and `leave-initrd` (CEL-JSON, as systemd 257 writes it);
//! - quote: go-attestation's Windows GCE bundle (a real TPM2_Quote, its RSA AK and the log it
//!   covers), its signature, nonce and PCR digest checked against that log's replay.
//!
//! Each run must accept, or the bench fails: a fast rejection is no figure.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use base64::Engine as _;
use imgctl_attest::eventlog::{self, EventLog, UserspaceLog};
use imgctl_attest::quote::{verify_quote, AkPublic, Signature};
use imgctl_attest::verify::{self, Policy, References};
use imgctl_measure::HashAlg;

type BoxError = Box<dyn std::error::Error>;

struct Evidence {
    firmware_log: Vec<u8>,
    userspace_log: Vec<u8>,
    policy: String,
    manifest: String,
    quote: Vec<u8>,
    signature: Vec<u8>,
    ak: Vec<u8>,
    quoted_log: Vec<u8>,
}

fn phase_log(words: &[&str]) -> Result<Vec<u8>, BoxError> {
    let mut out = Vec::new();
    for w in words {
        let mut digests = Vec::new();
        for b in [HashAlg::SHA1, HashAlg::SHA256] {
            digests.push(serde_json::json!({"hashAlg": b.to_string(), "digest": b.hash(w.as_bytes())?.to_hex()}));
        }
        out.push(0x1e);
        out.extend_from_slice(
            serde_json::json!({"pcr": 11, "digests": digests, "content_type": "systemd",
                "content": {"string": w, "bootId": "0", "timestamp": 1, "eventType": "phase"}})
            .to_string()
            .as_bytes(),
        );
        out.push(b'\n');
    }
    Ok(out)
}

fn load(shared: &Path) -> Result<Evidence, BoxError> {
    let ovmf = shared.join("testdata/eventlogs/ovmf-swtpm");
    let inputs: BTreeMap<String, String> =
        std::fs::read_to_string(ovmf.join("ovmf-stub252-inputs.sha256"))?
            .lines()
            .filter_map(|l| {
                let (h, n) = l.split_once(' ')?;
                Some((n.trim().to_owned(), h.to_owned()))
            })
            .collect();
    let pcrs = [0u32, 1, 2, 3, 4, 5, 6, 7, 9, 11];
    let mut expected: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for l in std::fs::read_to_string(ovmf.join("ovmf-stub252-pcrs.txt"))?.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        let (Some(bank), Some(pcr), Some(value)) = (f.get(1), f.get(2), f.get(3)) else {
            continue;
        };
        let n: u32 = pcr.parse()?;
        // PCR 11 is checked through the UKI's record (the phases extend it past the guest's).
        if pcrs.contains(&n) && n != 11 && (*bank == "sha1" || *bank == "sha256") {
            expected
                .entry((*bank).into())
                .or_default()
                .insert((*pcr).into(), value.to_lowercase());
        }
    }
    let policy =
        serde_json::json!({"pcrs": pcrs, "banks": ["sha1", "sha256"], "expected": expected});
    let section = |name: &str, file: &str| -> Result<serde_json::Value, BoxError> {
        let d = inputs
            .get(file)
            .ok_or_else(|| format!("no {file} in the inputs file"))?;
        Ok(
            serde_json::json!({"name": name, "measured": true, "digests": {"sha256": d},
            "offset": 0, "virtual_address": 0, "virtual_size": 0, "size_of_raw_data": 0}),
        )
    };
    let sections = vec![
        section(".linux", "vmlinuz")?,
        section(".osrel", "osrel")?,
        section(".cmdline", "cmdline")?,
        section(".initrd", "initrd.cpio")?,
    ];
    let predicted: serde_json::Value = serde_json::from_slice(&std::fs::read(
        ovmf.join("ovmf-stub252-systemd-measure.json"),
    )?)?;
    let none =
        serde_json::json!({"role": "reference", "path": "(reference)", "size": 0, "digests": {}});
    let manifest = serde_json::json!({
        "format": "imgctl-manifest/1", "name": "demo", "version": "0", "builder": "(reference)",
        "source_date_epoch": 0, "recipe": none, "inputs": [], "initrd": null,
        "uki": {"file": "demo.efi", "size": 0, "digests": {}, "authenticode": {},
                "stub": {"path": "(reference)", "sdmagic": null, "semantics": "systemd-252"},
                "sections": sections},
        "pcrs": predicted,
    });
    let gce: serde_json::Value = serde_json::from_slice(&std::fs::read(
        shared.join("testdata/eventlogs/go-attestation/windows_gcp_shielded_vm.json"),
    )?)?;
    let b64 = |v: &serde_json::Value| -> Result<Vec<u8>, BoxError> {
        Ok(base64::engine::general_purpose::STANDARD.decode(v.as_str().ok_or("not a string")?)?)
    };
    Ok(Evidence {
        firmware_log: std::fs::read(ovmf.join("ovmf-stub252-eventlog.bin"))?,
        userspace_log: phase_log(&["enter-initrd", "leave-initrd"])?,
        policy: policy.to_string(),
        manifest: manifest.to_string(),
        quote: b64(&gce["Quote"]["Quote"])?,
        signature: b64(&gce["Quote"]["Signature"])?,
        ak: b64(&gce["AK"]["Public"])?,
        quoted_log: b64(&gce["Log"]["Raw"])?,
    })
}

/// One boot's evidence verified from its bytes; an error unless everything is accepted.
fn verify_once(e: &Evidence) -> Result<(), BoxError> {
    let policy = Policy::parse(&e.policy)?;
    let mut refs = References::from_policy(&policy)?;
    refs.artifacts.push(verify::parse_manifest(
        "demo.manifest.json",
        e.manifest.as_bytes(),
    )?);
    let log = EventLog::parse(&e.firmware_log)?;
    let userspace = UserspaceLog::parse(&e.userspace_log)?;
    let v = verify::verify(&policy, &refs, &log, Some(&userspace), None);
    if !v.accepted {
        return Err(format!("the OVMF boot was not accepted: {:?}", v.findings).into());
    }
    let signature = Signature::parse(&e.signature)?;
    let ak = AkPublic::parse(&e.ak)?;
    let quoted = EventLog::parse(&e.quoted_log)?;
    let replay = eventlog::replay(&quoted);
    verify_quote(&e.quote, &signature, &ak, b"", |bank, pcr| {
        replay.value(bank, pcr)
    })?;
    Ok(())
}

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let shared = Path::new(args.first().ok_or("usage: bench_verify SHARED_DIR N")?);
    let n: usize = args.get(1).map_or(Ok(1000), |s| s.parse())?;
    let e = load(shared)?;
    verify_once(&e)?; // warm, and fail before timing anything that does not accept
    let mut times = Vec::with_capacity(n);
    let all = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        verify_once(&e)?;
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let total = all.elapsed().as_secs_f64();
    times.sort_by(f64::total_cmp);
    let median = times.get(n / 2).copied().unwrap_or(0.0);
    println!(
        "verify one boot: median {median:.1} µs, mean {:.1} µs over {n} runs (firmware log {} B + userspace log {} B + quote {} B)",
        total * 1e6 / n.max(1) as f64,
        e.firmware_log.len(),
        e.userspace_log.len(),
        e.quote.len() + e.signature.len() + e.ak.len() + e.quoted_log.len(),
    );
    Ok(())
}
