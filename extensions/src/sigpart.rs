//! The verity signature partition (DPS, "Verity signature partition"; `reference/systemd.md`
//! §6.3): a JSON object `{"rootHash": hex, "certificateFingerprint": hex, "signature": base64}`
//! NUL-padded to a multiple of 4096 bytes. `signature` is a DER PKCS#7 detached signature over
//! the exact `rootHash` string; `certificateFingerprint` (optional) is the SHA-256 of the signing
//! certificate's DER. Keys are written in the order systemd-repart 252 writes them.

use base64::Engine;
use serde::{Deserialize, Serialize};

use imgctl_measure::ParseError;

/// Signature partition payloads are padded to this.
pub const PAD: usize = 4096;
/// The largest signature partition the reader looks at.
pub const MAX_SIZE: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Json {
    root_hash: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    certificate_fingerprint: Option<String>,
    signature: String,
}

/// The content of a verity signature partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VeritySignature {
    /// Lowercase hex, as signed.
    pub root_hash: String,
    pub certificate_fingerprint: Option<[u8; 32]>,
    /// DER PKCS#7.
    pub signature: Vec<u8>,
}

impl VeritySignature {
    /// JSON, NUL-padded to a multiple of 4096 bytes.
    pub fn to_partition(&self) -> Vec<u8> {
        let json = Json {
            root_hash: self.root_hash.clone(),
            certificate_fingerprint: self.certificate_fingerprint.map(hex::encode),
            signature: base64::engine::general_purpose::STANDARD.encode(&self.signature),
        };
        // Serialising strings cannot fail.
        let mut out = serde_json::to_vec(&json).unwrap_or_default();
        out.resize(out.len().div_ceil(PAD) * PAD, 0);
        out
    }

    /// Parses a partition's bytes (trailing NULs ignored).
    pub fn parse(bytes: &[u8]) -> Result<VeritySignature, ParseError> {
        if bytes.len() > MAX_SIZE {
            return Err(ParseError::new(
                0,
                "verity signature partition",
                format!("{} bytes exceed the 1 MiB limit", bytes.len()),
            ));
        }
        let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        let json: Json = serde_json::from_slice(&bytes[..end])
            .map_err(|e| ParseError::new(e.column(), "verity signature JSON", e.to_string()))?;
        let rh = &json.root_hash;
        if rh.is_empty()
            || rh.len() % 2 != 0
            || !rh
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(ParseError::new(
                0,
                "verity signature rootHash",
                format!("{rh:?} is not lowercase hex"),
            ));
        }
        let certificate_fingerprint = match &json.certificate_fingerprint {
            None => None,
            Some(f) => {
                let mut out = [0u8; 32];
                hex::decode_to_slice(f, &mut out).map_err(|_| {
                    ParseError::new(
                        0,
                        "verity signature certificateFingerprint",
                        format!("{f:?} is not 64 hex digits"),
                    )
                })?;
                Some(out)
            }
        };
        let signature = base64::engine::general_purpose::STANDARD
            .decode(&json.signature)
            .map_err(|e| ParseError::new(0, "verity signature signature", e.to_string()))?;
        Ok(VeritySignature {
            root_hash: json.root_hash,
            certificate_fingerprint,
            signature,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padded_json_round_trips_in_repart_key_order() {
        let s = VeritySignature {
            root_hash: "00ff".into(),
            certificate_fingerprint: Some([0xab; 32]),
            signature: vec![1, 2, 3],
        };
        let p = s.to_partition();
        assert_eq!(p.len(), 4096);
        let text = std::str::from_utf8(&p[..p.iter().position(|&b| b == 0).unwrap()]).unwrap();
        assert!(text.starts_with("{\"rootHash\":\"00ff\",\"certificateFingerprint\":\"abab"));
        assert!(text.ends_with("\"signature\":\"AQID\"}"));
        assert_eq!(VeritySignature::parse(&p).unwrap(), s);
        assert!(VeritySignature::parse(b"{\"rootHash\":\"XY\",\"signature\":\"\"}").is_err());
    }
}
