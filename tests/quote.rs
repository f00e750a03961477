//! TPM2 quote verification against the real quote in go-attestation's Windows GCE bundle.

#![allow(clippy::unwrap_used)] // reason: test code; a panic is a test failure

mod common;

use base64::Engine as _;
use imgctl_attest::eventlog::{self, EventLog};
use imgctl_attest::quote::{verify_quote, AkPublic, Attest, QuoteError, Signature};
use imgctl_measure::{Digest, HashAlg};

struct Bundle {
    quote: Vec<u8>,
    sig: Vec<u8>,
    ak: Vec<u8>,
    log: EventLog,
}

fn b64(s: &serde_json::Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(s.as_str().unwrap())
        .unwrap()
}

fn bundle() -> Option<Bundle> {
    let d = common::shared_dir()?
        .join("testdata/eventlogs/go-attestation/windows_gcp_shielded_vm.json");
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(d).unwrap()).unwrap();
    Some(Bundle {
        quote: b64(&j["Quote"]["Quote"]),
        sig: b64(&j["Quote"]["Signature"]),
        ak: b64(&j["AK"]["Public"]),
        log: EventLog::parse(&b64(&j["Log"]["Raw"])).unwrap(),
    })
}

fn check(
    b: &Bundle,
    quote: &[u8],
    sig: &[u8],
    ak: &[u8],
    nonce: &[u8],
    log: &EventLog,
) -> Result<(), QuoteError> {
    let sig = Signature::parse(sig)?;
    let ak = AkPublic::parse(ak)?;
    let replay = eventlog::replay(log);
    let _ = b;
    verify_quote(quote, &sig, &ak, nonce, |bank, pcr| replay.value(bank, pcr)).map(|_| ())
}

#[test]
fn windows_gce_quote_verifies_against_the_replayed_log() {
    let Some(b) = bundle() else { return };
    let (attest, _) = Attest::parse(&b.quote).unwrap();
    let info = attest.quote.as_ref().unwrap();
    // All 24 SHA-1 PCRs, the quote says (ff544347 8018 … 000403ffffff).
    assert_eq!(info.selections, vec![(HashAlg::SHA1, (0..24).collect())]);
    check(&b, &b.quote, &b.sig, &b.ak, b"", &b.log).unwrap();
}

#[test]
fn a_flipped_bit_anywhere_in_quote_or_signature_is_rejected() {
    let Some(b) = bundle() else { return };
    for i in 0..b.quote.len() * 8 {
        let mut q = b.quote.clone();
        q[i / 8] ^= 1 << (i % 8);
        assert!(
            check(&b, &q, &b.sig, &b.ak, b"", &b.log).is_err(),
            "quote bit {i}"
        );
    }
    for i in 0..b.sig.len() * 8 {
        let mut s = b.sig.clone();
        s[i / 8] ^= 1 << (i % 8);
        assert!(
            check(&b, &b.quote, &s, &b.ak, b"", &b.log).is_err(),
            "signature bit {i}"
        );
    }
    // The modulus of the AK (its last 256 bytes).
    for i in (b.ak.len() - 256) * 8..b.ak.len() * 8 {
        let mut k = b.ak.clone();
        k[i / 8] ^= 1 << (i % 8);
        assert!(
            check(&b, &b.quote, &b.sig, &k, b"", &b.log).is_err(),
            "AK bit {i}"
        );
    }
}

#[test]
fn wrong_nonce_and_a_log_that_does_not_replay_are_rejected() {
    let Some(b) = bundle() else { return };
    assert!(matches!(
        check(&b, &b.quote, &b.sig, &b.ak, b"fresh", &b.log),
        Err(QuoteError::Nonce { .. })
    ));
    // Drop one event that extends a PCR: the replay no longer matches the quoted digest.
    let mut log = b.log.clone();
    let i = log.events.iter().rposition(|e| e.pcr == 7).unwrap();
    log.events.remove(i);
    assert!(matches!(
        check(&b, &b.quote, &b.sig, &b.ak, b"", &log),
        Err(QuoteError::PcrDigest { .. })
    ));
    // Change one digest.
    let mut log = b.log.clone();
    log.events[5].digests[0].1 = Digest(vec![0; 20]);
    assert!(check(&b, &b.quote, &b.sig, &b.ak, b"", &log).is_err());
}
