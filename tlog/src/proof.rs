//! C2SP tlog-proof: an offline-verifiable proof that an entry is in a log.
//!
//! ```text
//! c2sp.org/tlog-proof@v1
//! extra <base64 opaque data>          (optional; imgctl puts the log entry bytes here)
//! index <decimal>
//! <base64 hash>                        (zero or more: the RFC 6962 inclusion proof)
//!
//! <the signed checkpoint, verbatim>
//! ```
//! The extra data is not authenticated by itself: it is trusted only because its leaf hash is
//! bound to the checkpoint's root by the inclusion proof.

use super::checkpoint::{self, Policy, VerifiedCheckpoint};
use super::merkle::{leaf_hash, verify_inclusion, Hash};
use super::{b64_decode, b64_encode, Error};

const HEADER: &str = "c2sp.org/tlog-proof@v1";

/// A parsed `.tlog-proof`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlogProof {
    pub extra: Option<Vec<u8>>,
    pub index: u64,
    pub proof: Vec<Hash>,
    /// The signed checkpoint note, verbatim.
    pub checkpoint: String,
}

fn bad(m: impl Into<String>) -> Error {
    Error::Proof(format!("tlog-proof: {}", m.into()))
}

impl TlogProof {
    pub fn to_text(&self) -> String {
        let mut s = format!("{HEADER}\n");
        if let Some(e) = &self.extra {
            s.push_str(&format!("extra {}\n", b64_encode(e)));
        }
        s.push_str(&format!("index {}\n", self.index));
        for h in &self.proof {
            s.push_str(&b64_encode(h));
            s.push('\n');
        }
        s.push('\n');
        s.push_str(&self.checkpoint);
        s
    }

    pub fn parse(bytes: &[u8]) -> Result<TlogProof, Error> {
        if bytes.len() > super::note::MAX_NOTE_LEN * 2 {
            return Err(bad("too large"));
        }
        let s = std::str::from_utf8(bytes).map_err(|_| bad("not UTF-8"))?;
        let (head, checkpoint) = s
            .split_once("\n\n")
            .ok_or_else(|| bad("no blank line before the checkpoint"))?;
        let mut lines = head.split('\n');
        if lines.next() != Some(HEADER) {
            return Err(bad(format!("first line is not {HEADER}")));
        }
        let mut line = lines.next().ok_or_else(|| bad("missing index line"))?;
        let mut extra = None;
        if let Some(e) = line.strip_prefix("extra ") {
            extra = Some(b64_decode(e).ok_or_else(|| bad("extra is not base64"))?);
            line = lines.next().ok_or_else(|| bad("missing index line"))?;
        }
        let idx = line
            .strip_prefix("index ")
            .ok_or_else(|| bad("missing index line"))?;
        if idx.is_empty()
            || !idx.bytes().all(|b| b.is_ascii_digit())
            || (idx.len() > 1 && idx.starts_with('0'))
        {
            return Err(bad(format!("index {idx:?} is not a canonical decimal")));
        }
        let index = idx.parse().map_err(|_| bad("index overflows"))?;
        let proof = lines
            .enumerate()
            .map(|(i, l)| {
                b64_decode(l)
                    .and_then(|h| h.try_into().ok())
                    .ok_or_else(|| bad(format!("proof line {} is not a base64 hash", i + 1)))
            })
            .collect::<Result<Vec<Hash>, Error>>()?;
        if proof.len() > 64 {
            return Err(bad("more than 64 proof hashes"));
        }
        Ok(TlogProof {
            extra,
            index,
            proof,
            checkpoint: checkpoint.to_owned(),
        })
    }

    /// Verifies the checkpoint under `policy` and that `entry` is at `index` in it.
    pub fn verify(&self, entry: &[u8], policy: &Policy<'_>) -> Result<VerifiedCheckpoint, Error> {
        let vc = checkpoint::verify(self.checkpoint.as_bytes(), policy)?;
        let c = &vc.checkpoint;
        verify_inclusion(self.index, c.size, &leaf_hash(entry), &self.proof, &c.root).map_err(
            |e| {
                Error::Proof(format!(
                    "entry is not at index {} of {} at size {}: {e}",
                    self.index, c.origin, c.size
                ))
            },
        )?;
        Ok(vc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_shaped_proof_parses_and_round_trips() {
        let p = TlogProof {
            extra: Some(b"age-v1.2.1".to_vec()),
            index: 73894,
            proof: vec![[1; 32], [2; 32]],
            checkpoint: "example.com/fancylog\n109482\nsFodV/vSp5O8n9a8QpW6PRY97tfOSW5bsc2Xl/EQi08=\n\n\u{2014} example.com/fancylog AAAAAAA=\n".into(),
        };
        let t = p.to_text();
        assert!(t.starts_with("c2sp.org/tlog-proof@v1\nextra "));
        assert_eq!(TlogProof::parse(t.as_bytes()).unwrap(), p);
        assert!(TlogProof::parse(t.replace("index 73894", "index 073894").as_bytes()).is_err());
    }
}
