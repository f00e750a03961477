//! The JSON bodies of the service's API (service/openapi.yaml), parsed into typed values.
//!
//! Every body is bounded before it is parsed ([`MAX_BODY`], and a bound per field), unknown
//! keys are errors, and binary fields are standard base64. A body that parses is well formed;
//! whether its contents are true is for [`crate::service`] to decide.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// The largest request body (an event log of a real machine is tens of KiB; the OVMF capture
/// 11 KiB, a Windows one 43 KiB): 1 MiB leaves room and bounds every allocation.
pub const MAX_BODY: usize = 1 << 20;
/// The largest firmware or userspace event log accepted inside a body.
pub const MAX_LOG: usize = 512 * 1024;
/// The largest `TPMT_PUBLIC`, `TPMS_ATTEST`, `TPMT_SIGNATURE` or secret accepted.
pub const MAX_BLOB: usize = 2048;
/// A machine id is the hex of its EK Name (2 + up to 64 bytes).
pub const MAX_ID: usize = 132;

/// A request body that is not what the API takes; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BodyError(pub String);

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

fn decode(field: &str, s: &str, max: usize) -> Result<Vec<u8>, BodyError> {
    // base64 is 4/3 of the bytes: refuse before decoding anything larger than the bound.
    if s.len() > max.div_ceil(3) * 4 {
        return Err(BodyError(format!("{field}: longer than {max} bytes")));
    }
    let v = b64()
        .decode(s)
        .map_err(|e| BodyError(format!("{field}: not base64 ({e})")))?;
    if v.is_empty() {
        return Err(BodyError(format!("{field}: empty")));
    }
    Ok(v)
}

fn machine_id(s: &str) -> Result<String, BodyError> {
    let ok = !s.is_empty()
        && s.len() <= MAX_ID
        && s.len() % 2 == 0
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !ok {
        return Err(BodyError(
            "machine: not a machine id (lowercase hex of the EK Name)".into(),
        ));
    }
    Ok(s.to_owned())
}

fn json<'a, T: Deserialize<'a>>(what: &str, body: &'a [u8]) -> Result<T, BodyError> {
    if body.len() > MAX_BODY {
        return Err(BodyError(format!(
            "{what} body of {} bytes, more than {MAX_BODY}",
            body.len()
        )));
    }
    serde_json::from_slice(body).map_err(|e| BodyError(format!("{what} body: {e}")))
}

pub fn encode(data: &[u8]) -> String {
    b64().encode(data)
}

/// Decodes a base64 blob of an answer (bounded like a request's).
pub fn decode_blob(s: &str) -> Result<Vec<u8>, BodyError> {
    decode("blob", s, MAX_BLOB)
}

/// `POST /v1/enrol`: the machine's EK and AK public areas, and the EK's certificate (DER)
/// when it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrolRequest {
    pub ek_public: Vec<u8>,
    pub ak_public: Vec<u8>,
    pub ek_certificate: Option<Vec<u8>>,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct EnrolJson {
    ek_public: String,
    ak_public: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ek_certificate: Option<String>,
}

impl EnrolRequest {
    pub fn parse(body: &[u8]) -> Result<Self, BodyError> {
        let j: EnrolJson = json("enrol", body)?;
        Ok(EnrolRequest {
            ek_public: decode("ek_public", &j.ek_public, MAX_BLOB)?,
            ak_public: decode("ak_public", &j.ak_public, MAX_BLOB)?,
            ek_certificate: j
                .ek_certificate
                .as_deref()
                .map(|c| decode("ek_certificate", c, crate::ek_cert::MAX_CERT))
                .transpose()?,
        })
    }

    pub fn to_json(&self) -> Vec<u8> {
        to_vec(&EnrolJson {
            ek_public: encode(&self.ek_public),
            ak_public: encode(&self.ak_public),
            ek_certificate: self.ek_certificate.as_deref().map(encode),
        })
    }
}

/// `POST /v1/activate`: the secret the machine's TPM recovered from the enrolment credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivateRequest {
    pub machine: String,
    pub secret: Vec<u8>,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct ActivateJson {
    machine: String,
    secret: String,
}

impl ActivateRequest {
    pub fn parse(body: &[u8]) -> Result<Self, BodyError> {
        let j: ActivateJson = json("activate", body)?;
        Ok(ActivateRequest {
            machine: machine_id(&j.machine)?,
            secret: decode("secret", &j.secret, MAX_BLOB)?,
        })
    }

    pub fn to_json(&self) -> Vec<u8> {
        to_vec(&ActivateJson {
            machine: self.machine.clone(),
            secret: encode(&self.secret),
        })
    }
}

/// `POST /v1/challenge`: a nonce for this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChallengeRequest {
    pub machine: String,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct ChallengeJson {
    machine: String,
}

impl ChallengeRequest {
    pub fn parse(body: &[u8]) -> Result<Self, BodyError> {
        let j: ChallengeJson = json("challenge", body)?;
        Ok(ChallengeRequest {
            machine: machine_id(&j.machine)?,
        })
    }

    pub fn to_json(&self) -> Vec<u8> {
        to_vec(&ChallengeJson {
            machine: self.machine.clone(),
        })
    }
}

/// `POST /v1/evidence`: the answer to a challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvidenceRequest {
    pub machine: String,
    /// The nonce the service issued, as it was issued (hex).
    pub nonce: Vec<u8>,
    /// `TPMS_ATTEST` (bare or TPM2B).
    pub quote: Vec<u8>,
    /// `TPMT_SIGNATURE`.
    pub signature: Vec<u8>,
    /// The firmware event log (binary_bios_measurements).
    pub event_log: Vec<u8>,
    /// systemd's userspace log (/run/log/systemd/tpm2-measure.log), when there is one.
    pub userspace_log: Option<Vec<u8>>,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct EvidenceJson {
    machine: String,
    nonce: String,
    quote: String,
    signature: String,
    event_log: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    userspace_log: Option<String>,
}

impl EvidenceRequest {
    pub fn parse(body: &[u8]) -> Result<Self, BodyError> {
        let j: EvidenceJson = json("evidence", body)?;
        let nonce = hex::decode(&j.nonce)
            .ok()
            .filter(|n| !n.is_empty() && n.len() <= 64)
            .ok_or_else(|| BodyError("nonce: not 1 to 64 bytes of hex".into()))?;
        Ok(EvidenceRequest {
            machine: machine_id(&j.machine)?,
            nonce,
            quote: decode("quote", &j.quote, MAX_BLOB)?,
            signature: decode("signature", &j.signature, MAX_BLOB)?,
            event_log: decode("event_log", &j.event_log, MAX_LOG)?,
            userspace_log: j
                .userspace_log
                .as_deref()
                .map(|s| decode("userspace_log", s, MAX_LOG))
                .transpose()?,
        })
    }

    pub fn to_json(&self) -> Vec<u8> {
        to_vec(&EvidenceJson {
            machine: self.machine.clone(),
            nonce: hex::encode(&self.nonce),
            quote: encode(&self.quote),
            signature: encode(&self.signature),
            event_log: encode(&self.event_log),
            userspace_log: self.userspace_log.as_deref().map(encode),
        })
    }
}

fn to_vec<T: Serialize>(v: &T) -> Vec<u8> {
    // Serialising plain structs of strings cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

/// `POST /v1/enrol`'s answer: the credential the machine must activate on its TPM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrolResponse {
    pub machine: String,
    /// tpm2-tools' credential file (base64): TPM2B_ID_OBJECT and TPM2B_ENCRYPTED_SECRET.
    pub credential: String,
    pub expires_at: i64,
}

/// `POST /v1/challenge`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChallengeResponse {
    pub nonce: String,
    pub expires_at: i64,
}

/// A secret released to the machine: MakeCredential to its EK, bound to its AK's Name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub name: String,
    /// tpm2-tools' credential file (base64).
    pub credential: String,
}

/// `POST /v1/evidence`'s answer: the verdict, and the secrets released on ACCEPT.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvidenceResponse {
    pub verdict_id: i64,
    pub accepted: bool,
    pub evidence_sha256: String,
    pub policy: String,
    pub policy_version: i64,
    pub log_checkpoint: Option<String>,
    pub findings: serde_json::Value,
    pub releases: Vec<Release>,
    /// With a verdict log configured: the index of this verdict's record in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict_log_index: Option<u64>,
}

/// The record of a verdict appended to the verdict log (durable attestation): canonical JSON
/// (keys in this order, which is sorted, no whitespace), the bytes of one log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerdictRecord {
    pub accepted: bool,
    pub evidence_sha256: String,
    /// `imgctl-verdict/1`.
    pub format: String,
    pub log_checkpoint: Option<String>,
    pub machine: String,
    /// Hex, as issued.
    pub nonce: String,
    pub policy: String,
    pub policy_version: i64,
    /// The verdict's id in the service's database.
    pub verdict: i64,
}

impl VerdictRecord {
    pub const FORMAT: &'static str = "imgctl-verdict/1";

    /// The entry bytes.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// An error answer: a stable kind (`nonce-used`, `ak-not-activated`, …) and a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub error: String,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_round_trip_and_refuse_what_is_not_the_api() {
        let e = EvidenceRequest {
            machine: "000b00".into(),
            nonce: vec![1; 32],
            quote: vec![2; 10],
            signature: vec![3; 5],
            event_log: vec![4; 100],
            userspace_log: None,
        };
        assert_eq!(EvidenceRequest::parse(&e.to_json()).unwrap(), e);
        for (body, want) in [
            (&br#"{}"#[..], "missing field `machine`"),
            (br#"{"machine":"0G"}"#, "machine: not a machine id"),
            (br#"{"machine":"00","x":1}"#, "unknown field `x`"),
            (b"\xff", "challenge body"),
        ] {
            let msg = ChallengeRequest::parse(body).unwrap_err().0;
            assert!(msg.contains(want), "{msg} lacks {want}");
        }
        let big = format!(
            r#"{{"ek_public":"{}","ak_public":"AA=="}}"#,
            "A".repeat(4 * MAX_BLOB)
        );
        assert!(EnrolRequest::parse(big.as_bytes())
            .unwrap_err()
            .0
            .contains("ek_public: longer than"));
        assert!(ActivateRequest::parse(br#"{"machine":"00","secret":""}"#)
            .unwrap_err()
            .0
            .contains("secret: empty"));
    }
}
