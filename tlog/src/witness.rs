//! C2SP tlog-witness: the `add-checkpoint` request, the witness's decision, and the record of
//! the latest checkpoint it cosigned per log. Pure: the HTTP service (`imgctl log witness`)
//! and the client ([`crate::client::add_checkpoint`]) do the I/O.
//!
//! Request body (tlog-witness §add-checkpoint): `old <size>\n` (ASCII decimal, no leading
//! zeros), at most 63 lines each the base64 of one 32-byte consistency-proof hash, an empty
//! line, then the signed checkpoint note. Each line ends in `\n`.
//!
//! The witness's checks, in the spec's order, and the status of each rejection:
//! - malformed body or checkpoint: 400;
//! - the checkpoint's origin is not a log the witness knows: 404;
//! - no signature by a trusted key of that log, or one that fails: 403;
//! - `old` above the checkpoint's size: 400;
//! - `old` is not the size of the latest checkpoint cosigned for the origin (0 if none):
//!   409 Conflict, `Content-Type: text/x.tlog.size`, body that size and `\n`;
//! - a size-0 checkpoint whose root is not the empty tree's, a proof given with `old` 0, a
//!   same-size checkpoint with another root, or a consistency proof that does not verify: 422.
//!
//! Otherwise the witness records (origin, size, root) — the caller persists it before it
//! answers — and answers 200 with its `cosignature/v1` line (C2SP tlog-cosignature, timestamp
//! not zero).
//!
//! State record: one line per log, `<size> <base64 root> <origin>\n`, sorted by origin.

use std::collections::BTreeMap;

use crate::checkpoint::Checkpoint;
use crate::merkle::{empty_root, verify_consistency, Hash};
use crate::note::{self, Note, NoteSignature, NoteSigner, NoteVerifier};
use crate::{b64_decode, b64_encode, Error};

/// Largest request body a witness reads (a checkpoint note is well below; tlog-witness allows
/// 63 proof lines of 45 bytes).
pub const MAX_REQUEST: usize = 1 << 20;
/// At most this many consistency proof lines (tlog-witness).
pub const MAX_PROOF_LINES: usize = 63;
/// Largest state record read (one line per log, each under 1 KiB for sane origins).
pub const MAX_STATE: usize = 1 << 20;
/// The media type of a 409 response body.
pub const SIZE_CONTENT_TYPE: &str = "text/x.tlog.size";

/// A parsed `add-checkpoint` request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddCheckpoint {
    /// The size of the checkpoint the client believes the witness saw last.
    pub old: u64,
    /// The consistency proof from `old` to the checkpoint's size.
    pub proof: Vec<Hash>,
    /// The signed checkpoint note, as sent.
    pub checkpoint: Vec<u8>,
}

fn malformed(m: impl Into<String>) -> Error {
    Error::Witness(m.into())
}

/// A decimal without leading zeros ("0" alone is zero).
fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    s.parse().ok()
}

/// Splits off one `\n`-terminated line.
fn take_line(rest: &[u8]) -> Option<(&[u8], &[u8])> {
    let i = rest.iter().position(|&b| b == b'\n')?;
    Some((&rest[..i], &rest[i + 1..]))
}

impl AddCheckpoint {
    /// Parses a request body strictly (the checkpoint note is parsed by [`Witness::decide`]).
    pub fn parse(body: &[u8]) -> Result<AddCheckpoint, Error> {
        if body.len() > MAX_REQUEST {
            return Err(malformed(format!(
                "request body of {} bytes is larger than {MAX_REQUEST}",
                body.len()
            )));
        }
        let (first, mut rest) =
            take_line(body).ok_or_else(|| malformed("no old size line (no newline)"))?;
        let old = std::str::from_utf8(first)
            .ok()
            .and_then(|l| l.strip_prefix("old "))
            .and_then(parse_decimal)
            .ok_or_else(|| {
                malformed(format!(
                    "first line {:?} is not `old <size>` (decimal, no leading zeros)",
                    String::from_utf8_lossy(&first[..first.len().min(40)])
                ))
            })?;
        let mut proof = Vec::new();
        loop {
            let (line, after) =
                take_line(rest).ok_or_else(|| malformed("no empty line before the checkpoint"))?;
            rest = after;
            if line.is_empty() {
                break;
            }
            if proof.len() == MAX_PROOF_LINES {
                return Err(malformed(format!(
                    "more than {MAX_PROOF_LINES} consistency proof lines"
                )));
            }
            let hash: Hash = std::str::from_utf8(line)
                .ok()
                .and_then(b64_decode)
                .and_then(|h| h.try_into().ok())
                .ok_or_else(|| {
                    malformed(format!(
                        "consistency proof line {} is not the base64 of a 32-byte hash",
                        proof.len() + 1
                    ))
                })?;
            proof.push(hash);
        }
        if rest.is_empty() {
            return Err(malformed("no checkpoint after the empty line"));
        }
        Ok(AddCheckpoint {
            old,
            proof,
            checkpoint: rest.to_vec(),
        })
    }

    /// The request body.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = format!("old {}\n", self.old).into_bytes();
        for h in &self.proof {
            out.extend_from_slice(b64_encode(h).as_bytes());
            out.push(b'\n');
        }
        out.push(b'\n');
        out.extend_from_slice(&self.checkpoint);
        out
    }
}

/// What the witness last cosigned for one log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cosigned {
    pub size: u64,
    pub root: Hash,
}

/// The witness's record: origin → the latest checkpoint it cosigned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WitnessState {
    pub logs: BTreeMap<String, Cosigned>,
}

impl WitnessState {
    /// Parses the state record (see the module documentation).
    pub fn parse(bytes: &[u8]) -> Result<WitnessState, Error> {
        let bad = |line: usize, m: &str| malformed(format!("state line {line}: {m}"));
        if bytes.len() > MAX_STATE {
            return Err(malformed(format!(
                "state of {} bytes is larger than {MAX_STATE}",
                bytes.len()
            )));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| malformed("state is not UTF-8"))?;
        if !text.is_empty() && !text.ends_with('\n') {
            return Err(malformed("state does not end with a newline"));
        }
        let mut logs = BTreeMap::new();
        for (i, line) in text.split_terminator('\n').enumerate() {
            let n = i + 1;
            let mut parts = line.splitn(3, ' ');
            let (Some(size), Some(root), Some(origin)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(bad(n, "not `<size> <root> <origin>`"));
            };
            let size = parse_decimal(size).ok_or_else(|| bad(n, "size is not a decimal"))?;
            let root: Hash = b64_decode(root)
                .and_then(|r| r.try_into().ok())
                .ok_or_else(|| bad(n, "root is not the base64 of 32 bytes"))?;
            if origin.is_empty() || origin.chars().any(char::is_control) {
                return Err(bad(n, "empty origin or control character"));
            }
            if logs
                .insert(origin.to_owned(), Cosigned { size, root })
                .is_some()
            {
                return Err(bad(n, "origin listed twice"));
            }
        }
        Ok(WitnessState { logs })
    }

    /// The state record.
    pub fn encode(&self) -> String {
        self.logs
            .iter()
            .map(|(o, c)| format!("{} {} {o}\n", c.size, b64_encode(&c.root)))
            .collect()
    }
}

/// Why a request is refused, with the HTTP status tlog-witness gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// 400: malformed, or `old` above the checkpoint's size.
    BadRequest(String),
    /// 403: no valid signature by the log's key.
    Forbidden(String),
    /// 404: unknown origin.
    NotFound(String),
    /// 409: `old` is not the size the witness recorded; that size.
    Conflict { origin: String, latest: u64 },
    /// 422: not consistent with what the witness recorded.
    Unprocessable(String),
}

impl Rejection {
    pub fn status(&self) -> u16 {
        match self {
            Rejection::BadRequest(_) => 400,
            Rejection::Forbidden(_) => 403,
            Rejection::NotFound(_) => 404,
            Rejection::Conflict { .. } => 409,
            Rejection::Unprocessable(_) => 422,
        }
    }

    /// The response body (409: the size line; otherwise the reason).
    pub fn body(&self) -> String {
        match self {
            Rejection::Conflict { latest, .. } => format!("{latest}\n"),
            Rejection::BadRequest(m)
            | Rejection::Forbidden(m)
            | Rejection::NotFound(m)
            | Rejection::Unprocessable(m) => format!("{m}\n"),
        }
    }

    /// The response's Content-Type.
    pub fn content_type(&self) -> &'static str {
        match self {
            Rejection::Conflict { .. } => SIZE_CONTENT_TYPE,
            _ => "text/plain; charset=utf-8",
        }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejection::Conflict { origin, latest } => write!(
                f,
                "409: {origin}: the latest cosigned checkpoint has size {latest}"
            ),
            r => write!(f, "{}: {}", r.status(), r.body().trim_end()),
        }
    }
}

/// An accepted request: the record to persist, then the response body to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub origin: String,
    pub cosigned: Cosigned,
    /// The cosignature line(s), each ending in `\n`.
    pub body: String,
}

/// A witness: its cosigning key and the logs it follows (origin → trusted keys).
#[derive(Debug)]
pub struct Witness {
    signer: NoteSigner,
    logs: BTreeMap<String, Vec<NoteVerifier>>,
}

impl Witness {
    /// A witness with a `cosignature/v1` key following `logs` (each log's origin is its key's
    /// name, as for C2SP tlog-policy `log` lines).
    pub fn new(signer: NoteSigner, logs: &[NoteVerifier]) -> Result<Witness, Error> {
        if signer.verifier().kind != note::VerifierKind::CosignatureV1 {
            return Err(Error::Witness(format!(
                "witness key {} is not a cosignature/v1 (type 0x04) key",
                signer.name()
            )));
        }
        let mut map: BTreeMap<String, Vec<NoteVerifier>> = BTreeMap::new();
        for l in logs {
            if l.kind != note::VerifierKind::Ed25519 {
                return Err(Error::Witness(format!(
                    "log key {} is not an Ed25519 (type 0x01) note key",
                    l.name
                )));
            }
            map.entry(l.name.clone()).or_default().push(l.clone());
        }
        Ok(Witness { signer, logs: map })
    }

    pub fn verifier(&self) -> &NoteVerifier {
        self.signer.verifier()
    }

    /// The origins this witness follows.
    pub fn origins(&self) -> impl Iterator<Item = &str> {
        self.logs.keys().map(String::as_str)
    }

    /// Decides one request against `state`; `now` is the cosignature's timestamp (Unix
    /// seconds, not zero). Does not change `state`: on [`Accepted`] the caller persists
    /// `state` with the new record and only then answers.
    pub fn decide(
        &self,
        state: &WitnessState,
        body: &[u8],
        now: u64,
    ) -> Result<Accepted, Rejection> {
        let req = AddCheckpoint::parse(body).map_err(|e| Rejection::BadRequest(e.to_string()))?;
        let parsed =
            Note::parse(&req.checkpoint).map_err(|e| Rejection::BadRequest(e.to_string()))?;
        let cp = Checkpoint::parse_text(&parsed.text)
            .map_err(|e| Rejection::BadRequest(e.to_string()))?;
        let keys = self
            .logs
            .get(&cp.origin)
            .ok_or_else(|| Rejection::NotFound(format!("unknown log origin {:?}", cp.origin)))?;
        let known: Vec<&NoteVerifier> = keys.iter().collect();
        note::open(&req.checkpoint, &known).map_err(|e| {
            Rejection::Forbidden(format!("{}: no valid signature by the log: {e}", cp.origin))
        })?;
        if req.old > cp.size {
            return Err(Rejection::BadRequest(format!(
                "old size {} is above the checkpoint size {}",
                req.old, cp.size
            )));
        }
        let latest = state.logs.get(&cp.origin).copied();
        let latest_size = latest.map_or(0, |c| c.size);
        if req.old != latest_size {
            return Err(Rejection::Conflict {
                origin: cp.origin.clone(),
                latest: latest_size,
            });
        }
        if cp.size == 0 && cp.root != empty_root() {
            return Err(Rejection::Unprocessable(
                "a checkpoint of size 0 must have the empty tree's root".into(),
            ));
        }
        match latest {
            // old = recorded size = 0: the empty tree is consistent with every tree.
            _ if req.old == 0 => {
                if !req.proof.is_empty() {
                    return Err(Rejection::Unprocessable(
                        "old size 0 needs an empty consistency proof".into(),
                    ));
                }
            }
            Some(l) if l.size == cp.size => {
                if l.root != cp.root || !req.proof.is_empty() {
                    return Err(Rejection::Unprocessable(format!(
                        "size {} was cosigned with another root (or a proof was given for equal sizes)",
                        cp.size
                    )));
                }
            }
            Some(l) => {
                verify_consistency(l.size, cp.size, &req.proof, &l.root, &cp.root).map_err(
                    |e| {
                        Rejection::Unprocessable(format!(
                            "size {} is not consistent with the cosigned size {}: {e}",
                            cp.size, l.size
                        ))
                    },
                )?;
            }
            // old != 0 equals the recorded size, so there is a record.
            None => {
                return Err(Rejection::Conflict {
                    origin: cp.origin.clone(),
                    latest: 0,
                })
            }
        }
        let sig: NoteSignature = self.signer.sign(&parsed.text, now.max(1));
        Ok(Accepted {
            origin: cp.origin,
            cosigned: Cosigned {
                size: cp.size,
                root: cp.root,
            },
            body: sig.to_line(),
        })
    }
}

/// Checks a 200 response's cosignature lines against the checkpoint `signed` and the witness
/// key `witness`: returns the lines by that key that verify (the spec: lines from other keys
/// are ignored); an error if none does.
pub fn cosignatures_from_response(
    signed: &[u8],
    response: &[u8],
    witness: &NoteVerifier,
) -> Result<Vec<NoteSignature>, Error> {
    if response.len() > MAX_REQUEST {
        return Err(malformed("response larger than 1 MiB"));
    }
    let text = std::str::from_utf8(response).map_err(|_| malformed("response is not UTF-8"))?;
    if text.is_empty() || !text.ends_with('\n') {
        return Err(malformed(
            "response is not signature lines ending in newline",
        ));
    }
    let base = Note::parse(signed)?;
    // The response lines appended to the checkpoint form a note; parse it that way.
    let mut joined = signed.to_vec();
    joined.extend_from_slice(response);
    let note = Note::parse(&joined)?;
    let added: Vec<NoteSignature> = note
        .signatures
        .into_iter()
        .skip(base.signatures.len())
        .filter(|s| s.name == witness.name && s.key_id == witness.key_id)
        .collect();
    if added.is_empty() {
        return Err(malformed(format!(
            "no cosignature by {}+{:08x} in the response",
            witness.name, witness.key_id
        )));
    }
    for s in &added {
        let one = Note {
            text: base.text.clone(),
            signatures: vec![s.clone()],
        };
        note::open(one.to_text().as_bytes(), &[witness])?;
    }
    Ok(added)
}

/// The signed checkpoint `signed` with `extra` signature lines added (those already present
/// are not repeated).
pub fn add_signatures(signed: &[u8], extra: &[NoteSignature]) -> Result<String, Error> {
    let mut note = Note::parse(signed)?;
    for s in extra {
        if !note.signatures.contains(s) {
            note.signatures
                .retain(|o| !(o.name == s.name && o.key_id == s.key_id));
            note.signatures.push(s.clone());
        }
    }
    let out = note.to_text();
    Note::parse(out.as_bytes())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::{consistency_proof, MemTree};
    use crate::note::VerifierKind;
    use proptest::prelude::*;

    /// The example request body of C2SP tlog-witness §add-checkpoint.
    const SPEC_BODY: &str = "old 20852014\n\
PlRNCrwHpqhGrupue0L7gxbjbMiKA9temvuZZDDpkaw=\n\
jrJZDmY8Y7SyJE0MWLpLozkIVMSMZcD5kvuKxPC3swk=\n\
5+pKlUdi2LeF/BcMHBn+Ku6yhPGNCswZZD1X/6QgPd8=\n\
/6WVhPs2CwSsb5rYBH5cjHV/wSmA79abXAwhXw3Kj/0=\n\
\n\
example.com/behind-the-sofa\n\
20852163\n\
CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\
\n\
\u{2014} example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n\
\u{2014} example.com/behind-the-sofa opLqBQsREYCgu6xQkYQwJr9fo45a62DN9EdmHXnZdXNqlcVGlCum2Wks+49/V6267UEjw6QUXTS5Rovnzv++qbSzm9Q=\n";

    #[test]
    fn spec_example_request_parses_and_round_trips() {
        let r = AddCheckpoint::parse(SPEC_BODY.as_bytes()).unwrap();
        assert_eq!(r.old, 20852014);
        assert_eq!(r.proof.len(), 4);
        let note = Note::parse(&r.checkpoint).unwrap();
        let cp = Checkpoint::parse_text(&note.text).unwrap();
        assert_eq!(cp.origin, "example.com/behind-the-sofa");
        assert_eq!(cp.size, 20852163);
        assert_eq!(note.signatures.len(), 2);
        assert_eq!(r.encode(), SPEC_BODY.as_bytes());
    }

    #[test]
    fn malformed_requests_are_rejected() {
        let cp = "o\n1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\n\u{2014} o AAAA\n";
        let many: String = (0..64)
            .map(|_| "PlRNCrwHpqhGrupue0L7gxbjbMiKA9temvuZZDDpkaw=\n")
            .collect();
        for bad in [
            format!("old 01\n\n{cp}"),
            format!("old -1\n\n{cp}"),
            format!("old 1 \n\n{cp}"),
            format!("Old 1\n\n{cp}"),
            format!("old 1\n{cp}"),
            format!("old 1\nAAAA\n\n{cp}"),
            format!("old 1\n{many}\n{cp}"),
            "old 1\n\n".to_owned(),
            "old 1".to_owned(),
            format!("old 18446744073709551616\n\n{cp}"),
        ] {
            assert!(AddCheckpoint::parse(bad.as_bytes()).is_err(), "{bad:?}");
        }
        let sixty_three: String = many.lines().take(63).map(|l| format!("{l}\n")).collect();
        assert!(AddCheckpoint::parse(format!("old 1\n{sixty_three}\n{cp}").as_bytes()).is_ok());
    }

    struct Fixture {
        log: NoteSigner,
        witness: Witness,
        tree: MemTree,
    }

    fn fixture() -> Fixture {
        let log = NoteSigner::from_seed("example.com/log", VerifierKind::Ed25519, [1; 32]).unwrap();
        let w = NoteSigner::from_seed("w.example", VerifierKind::CosignatureV1, [2; 32]).unwrap();
        let witness = Witness::new(w, &[log.verifier().clone()]).unwrap();
        Fixture {
            log,
            witness,
            tree: MemTree::new(),
        }
    }

    impl Fixture {
        fn grow(&mut self, n: u64) -> String {
            for i in 0..n {
                self.tree
                    .push(format!("entry {}", self.tree.size() + i).as_bytes());
            }
            Checkpoint {
                origin: "example.com/log".into(),
                size: self.tree.size(),
                root: self.tree.root(),
                extensions: vec![],
            }
            .sign(&self.log)
            .unwrap()
        }
        fn body(&mut self, old: u64, signed: &str) -> Vec<u8> {
            let size = self.tree.size();
            let proof = if old == 0 || old == size {
                vec![]
            } else {
                consistency_proof(&mut self.tree, old, size).unwrap()
            };
            AddCheckpoint {
                old,
                proof,
                checkpoint: signed.as_bytes().to_vec(),
            }
            .encode()
        }
    }

    #[test]
    fn witness_cosigns_consistent_checkpoints_and_refuses_the_rest() {
        let mut f = fixture();
        let mut state = WitnessState::default();
        let c3 = f.grow(3);
        let b = f.body(0, &c3);
        let a = f.witness.decide(&state, &b, 1_700_000_000).unwrap();
        // The cosignature verifies as tlog-cosignature/v1 over the checkpoint text.
        let sigs =
            cosignatures_from_response(c3.as_bytes(), a.body.as_bytes(), f.witness.verifier())
                .unwrap();
        let cosigned = add_signatures(c3.as_bytes(), &sigs).unwrap();
        let opened = note::open(cosigned.as_bytes(), &[f.witness.verifier()]).unwrap();
        assert_eq!(opened.verified_by[0].1, Some(1_700_000_000));
        state.logs.insert(a.origin.clone(), a.cosigned);

        // Stale old size: 409 with the recorded size.
        let r = f.witness.decide(&state, &b, 1).unwrap_err();
        assert_eq!(r.status(), 409);
        assert_eq!(r.body(), "3\n");
        assert_eq!(r.content_type(), "text/x.tlog.size");

        let c8 = f.grow(5);
        let good = f.body(3, &c8);
        // A flipped proof hash: 422.
        let mut req = AddCheckpoint::parse(&good).unwrap();
        req.proof[0][0] ^= 1;
        assert_eq!(
            f.witness
                .decide(&state, &req.encode(), 1)
                .unwrap_err()
                .status(),
            422
        );
        // old above the size: 400.
        let mut over = AddCheckpoint::parse(&good).unwrap();
        over.old = 9;
        assert_eq!(
            f.witness
                .decide(&state, &over.encode(), 1)
                .unwrap_err()
                .status(),
            400
        );
        let a = f.witness.decide(&state, &good, 2).unwrap();
        assert_eq!(a.cosigned.size, 8);
        state.logs.insert(a.origin, a.cosigned);

        // Same size, another root: 422.
        let fork = Checkpoint {
            origin: "example.com/log".into(),
            size: 8,
            root: [9; 32],
            extensions: vec![],
        }
        .sign(&f.log)
        .unwrap();
        let fb = AddCheckpoint {
            old: 8,
            proof: vec![],
            checkpoint: fork.into_bytes(),
        };
        assert_eq!(
            f.witness
                .decide(&state, &fb.encode(), 1)
                .unwrap_err()
                .status(),
            422
        );

        // Another key for the origin: 403; another origin: 404.
        let other =
            NoteSigner::from_seed("example.com/log", VerifierKind::Ed25519, [7; 32]).unwrap();
        let c = Checkpoint::parse_text(&Note::parse(c8.as_bytes()).unwrap().text).unwrap();
        let forged = AddCheckpoint {
            old: 8,
            proof: vec![],
            checkpoint: c.sign(&other).unwrap().into_bytes(),
        };
        assert_eq!(
            f.witness
                .decide(&state, &forged.encode(), 1)
                .unwrap_err()
                .status(),
            403
        );
        let stranger =
            NoteSigner::from_seed("example.com/other", VerifierKind::Ed25519, [7; 32]).unwrap();
        let unknown = AddCheckpoint {
            old: 0,
            proof: vec![],
            checkpoint: Checkpoint {
                origin: "example.com/other".into(),
                ..c
            }
            .sign(&stranger)
            .unwrap()
            .into_bytes(),
        };
        assert_eq!(
            f.witness
                .decide(&state, &unknown.encode(), 1)
                .unwrap_err()
                .status(),
            404
        );
    }

    #[test]
    fn state_round_trips_and_rejects_damage() {
        let mut s = WitnessState::default();
        s.logs.insert(
            "example.com/a log".into(),
            Cosigned {
                size: 5,
                root: [3; 32],
            },
        );
        s.logs.insert(
            "b".into(),
            Cosigned {
                size: 0,
                root: empty_root(),
            },
        );
        let text = s.encode();
        assert_eq!(WitnessState::parse(text.as_bytes()).unwrap(), s);
        for bad in [
            "5 AAAA o\n",
            "05 x o\n",
            "1 AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwM= \n",
        ] {
            assert!(WitnessState::parse(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn request_parser_never_panics_and_round_trips(
            old in any::<u64>(),
            proof in proptest::collection::vec(any::<[u8; 32]>(), 0..=63),
            cp in proptest::collection::vec(any::<u8>(), 1..200),
        ) {
            let r = AddCheckpoint { old, proof, checkpoint: cp };
            let enc = r.encode();
            prop_assert_eq!(AddCheckpoint::parse(&enc).unwrap(), r);
        }

        #[test]
        fn arbitrary_bodies_are_decided_without_panic(body in proptest::collection::vec(any::<u8>(), 0..400)) {
            let f = fixture();
            let _ = AddCheckpoint::parse(&body);
            let _ = f.witness.decide(&WitnessState::default(), &body, 1);
            let _ = WitnessState::parse(&body);
        }
    }
}
