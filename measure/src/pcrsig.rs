//! The `.pcrsig` JSON: signed PCR 11 policies, as `systemd-measure sign` writes them and
//! systemd-stub/systemd-cryptsetup read them (../shared/reference/systemd.md §3.2).
//!
//! ```json
//! {"sha256":[{"pcrs":[11],"pkfp":"<hex>","pol":"<hex>","sig":"<base64>"}, …], …}
//! ```
//! One object per bank and phase path: `pol` is the PolicyPCR digest (always SHA-256) over
//! that bank's predicted PCR 11 value, `sig` the signature over `pol` with the bank's hash
//! ([`crate::keys`]), `pkfp` the key fingerprint ([`TpmPublicKey::fingerprint`]). Banks are
//! object keys in sorted order; entries follow the sorted phase paths. The text is compact JSON
//! (no spaces); systemd-measure prints it followed by a newline, the UKI section holds it alone
//! (as ukify writes it; a NUL after it makes systemd 257's JSON reader refuse the file the stub
//! makes of it).

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::bank::HashAlg;
use crate::keys::{KeyError, SigningKey, VerifyingKey};
use crate::pcr11::PCR_KERNEL_IMAGE;
use crate::policy::{policy_pcr, PcrSelection, PolicyDigest, TpmPublicKey, EMPTY_POLICY};
use crate::predict::Prediction;
use crate::Error;

/// Largest `.pcrsig` we parse: systemd's own are a few KiB per key; 16 MiB is generous.
pub const MAX_PCRSIG_SIZE: usize = 16 << 20;

/// One signed policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PcrSigEntry {
    pub pcrs: Vec<u32>,
    pub pkfp: String,
    pub pol: String,
    pub sig: String,
}

impl PcrSigEntry {
    /// The policy digest, if `pol` is 32 bytes of hex.
    pub fn policy(&self) -> Result<PolicyDigest, Error> {
        hex::decode(&self.pol)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| {
                Error::InvalidInput(format!("pol {:?} is not 32 bytes of hex", self.pol))
            })
    }

    /// The signature bytes.
    pub fn signature(&self) -> Result<Vec<u8>, Error> {
        base64::engine::general_purpose::STANDARD
            .decode(&self.sig)
            .map_err(|e| Error::InvalidInput(format!("sig is not base64: {e}")))
    }
}

/// A whole `.pcrsig` document: bank name → entries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PcrSignature {
    pub banks: BTreeMap<String, Vec<PcrSigEntry>>,
}

impl PcrSignature {
    /// Parses `.pcrsig` bytes (a trailing NUL, as in the UKI section, and whitespace are fine).
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() > MAX_PCRSIG_SIZE {
            return Err(Error::InvalidInput(format!(
                ".pcrsig of {} bytes exceeds the {MAX_PCRSIG_SIZE}-byte limit",
                bytes.len()
            )));
        }
        let end = bytes
            .iter()
            .rposition(|&b| !matches!(b, 0 | b'\n' | b' ' | b'\t' | b'\r'))
            .map_or(0, |p| p + 1);
        serde_json::from_slice(&bytes[..end])
            .map_err(|e| Error::InvalidInput(format!("not a .pcrsig JSON document: {e}")))
    }

    /// Compact JSON text, exactly as systemd-measure prints it (without the final newline).
    pub fn to_json(&self) -> String {
        // Serialising plain strings, integers and maps cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The JSON text ukify 257 embeds as `.pcrsig`: systemd-measure's document re-serialised by
    /// Python's `json.dumps` (`combine_signatures()`), i.e. the same members in the same order
    /// with `", "` between items and `": "` after keys.
    pub fn to_ukify_json(&self) -> String {
        python_json_spacing(&self.to_json())
    }

    /// Appends another document's entries (systemd-measure `--append`, ukify combining keys).
    pub fn append(&mut self, other: PcrSignature) {
        for (bank, entries) in other.banks {
            self.banks.entry(bank).or_default().extend(entries);
        }
    }

    /// The entry in `bank` whose `pol` equals `policy`, signed by the key with fingerprint
    /// `pkfp`, covering exactly PCR 11 — what systemd-cryptsetup looks up at unlock.
    pub fn find(
        &self,
        bank: HashAlg,
        policy: &PolicyDigest,
        pkfp: &[u8; 32],
    ) -> Option<&PcrSigEntry> {
        let pol = hex::encode(policy);
        let fp = hex::encode(pkfp);
        self.banks.get(&bank.to_string())?.iter().find(|e| {
            e.pol.eq_ignore_ascii_case(&pol)
                && e.pkfp.eq_ignore_ascii_case(&fp)
                && e.pcrs == [PCR_KERNEL_IMAGE]
        })
    }

    /// Checks every entry signed by `key` (entries of other keys are left alone). Returns how
    /// many were checked; any bad signature or malformed field is an error naming the entry.
    pub fn verify(&self, key: &VerifyingKey) -> Result<usize, Error> {
        let fp = hex::encode(key.tpm().fingerprint());
        let mut checked = 0;
        for (bank_name, entries) in &self.banks {
            let bank: HashAlg = bank_name
                .parse()
                .map_err(|e: crate::bank::UnknownBankName| Error::InvalidInput(e.to_string()))?;
            for (i, e) in entries.iter().enumerate() {
                if !e.pkfp.eq_ignore_ascii_case(&fp) {
                    continue;
                }
                if !key.verify(bank, &e.policy()?, &e.signature()?) {
                    return Err(Error::InvalidInput(format!(
                        "{bank_name} entry {i} (pol {}): signature does not verify",
                        e.pol
                    )));
                }
                checked += 1;
            }
        }
        Ok(checked)
    }
}

/// Compact JSON text (no whitespace between tokens) spaced as Python's `json.dumps` writes it
/// by default: a space after every `,` and `:` that is not inside a string.
fn python_json_spacing(compact: &str) -> String {
    let mut out = String::with_capacity(compact.len() + compact.len() / 8);
    let (mut in_string, mut escaped) = (false, false);
    for c in compact.chars() {
        out.push(c);
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if c == '"' {
            in_string = true;
        } else if c == ',' || c == ':' {
            out.push(' ');
        }
    }
    out
}

/// Signs predicted PCR 11 values the way `systemd-measure sign` does: for every bank in
/// `prediction` and every phase path of that bank, in order, an entry over the PolicyPCR
/// digest of the value. `public` (systemd's `--public-key`) must be the signing key's public
/// half; it defaults to it.
pub fn sign(
    key: &SigningKey,
    public: Option<&TpmPublicKey>,
    prediction: &Prediction,
) -> Result<PcrSignature, Error> {
    let own = key.public();
    if let Some(p) = public {
        if *p != own {
            return Err(Error::Key(KeyError::Mismatch));
        }
    }
    let pkfp = hex::encode(own.fingerprint());
    let mut out = PcrSignature::default();
    for (bank, values) in &prediction.banks {
        let selection = PcrSelection::new(*bank, &[PCR_KERNEL_IMAGE])?;
        let entries = out.banks.entry(bank.to_string()).or_default();
        for (_phase, value) in values {
            let pol = policy_pcr(&EMPTY_POLICY, &selection, std::slice::from_ref(value))?;
            let sig = key.sign(*bank, &pol)?;
            entries.push(PcrSigEntry {
                pcrs: vec![PCR_KERNEL_IMAGE],
                pkfp: pkfp.clone(),
                pol: hex::encode(pol),
                sig: base64::engine::general_purpose::STANDARD.encode(sig),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ukify_json_is_python_json_dumps_spacing() {
        // ukify 257's .pcrsig (json.dumps of systemd-measure's document), shortened.
        assert_eq!(
            python_json_spacing(
                r#"{"sha1":[{"pcrs":[11],"pkfp":"3f","pol":"dd","sig":"Aj/+=="},{"pcrs":[11,12],"pkfp":"a","pol":"b","sig":"c"}]}"#
            ),
            r#"{"sha1": [{"pcrs": [11], "pkfp": "3f", "pol": "dd", "sig": "Aj/+=="}, {"pcrs": [11, 12], "pkfp": "a", "pol": "b", "sig": "c"}]}"#
        );
        // Commas, colons and escaped quotes inside strings stay as they are.
        assert_eq!(
            python_json_spacing(r#"{"a":"x,y:\"z,"}"#),
            r#"{"a": "x,y:\"z,"}"#
        );
    }
    use crate::predict::{predict_pcr11, MeasuredSection, PhasePath};
    use crate::StubSemantics;

    fn prediction() -> Prediction {
        let s = [MeasuredSection {
            name: ".linux",
            data: b"A",
        }];
        let phases: Vec<PhasePath> = crate::pcr11::DEFAULT_PHASE_PATHS
            .iter()
            .map(|p| p.parse().unwrap())
            .collect();
        predict_pcr11(StubSemantics::Systemd252, &s, &HashAlg::ALL, &phases).unwrap()
    }

    // `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256`
    const EC_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgngubyBml9OVGeSex
mv3O03lkPxqGXupD+lbrxNaMLmWhRANCAASHz+12crwE1vZNBv65zQSwvyw0tq99
p4atw3+zsI5p3n+M1wK0pUAirCTKRsnqi9zY3gst0YSFORTFvyaeoUxk
-----END PRIVATE KEY-----
";

    #[test]
    fn ecdsa_document_verifies_parses_back_and_finds_entries() {
        let key = SigningKey::from_pem(EC_KEY.as_bytes()).unwrap();
        let doc = sign(&key, None, &prediction()).unwrap();
        assert_eq!(doc.banks.len(), 4);
        assert!(doc.banks.values().all(|v| v.len() == 4));
        assert_eq!(doc.verify(&key.verifying_key()).unwrap(), 16);
        let mut text = doc.to_json().into_bytes();
        text.push(0);
        let back = PcrSignature::parse(&text).unwrap();
        assert_eq!(back, doc);
        let e = &doc.banks["sha256"][1];
        let fp = key.public().fingerprint();
        assert_eq!(
            back.find(HashAlg::SHA256, &e.policy().unwrap(), &fp),
            Some(e)
        );
        assert_eq!(
            back.find(HashAlg::SHA256, &e.policy().unwrap(), &[0; 32]),
            None
        );
    }

    #[test]
    fn tampered_signatures_are_reported() {
        let key = SigningKey::from_pem(EC_KEY.as_bytes()).unwrap();
        let mut doc = sign(&key, None, &prediction()).unwrap();
        let e = doc.banks.get_mut("sha384").unwrap().get_mut(2).unwrap();
        e.pol = doc_pol_flip(&e.pol);
        let err = doc.verify(&key.verifying_key()).unwrap_err();
        assert!(err.to_string().contains("sha384 entry 2"), "{err}");
    }

    fn doc_pol_flip(p: &str) -> String {
        let mut b = hex::decode(p).unwrap();
        b[0] ^= 1;
        hex::encode(b)
    }

    #[test]
    fn garbage_is_refused() {
        assert!(PcrSignature::parse(b"{\"sha256\":[{\"pcrs\":\"x\"}]}").is_err());
        assert!(PcrSignature::parse(b"\0").is_err());
        assert!(PcrSignature::parse(b"{}\0").unwrap().banks.is_empty());
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = PcrSignature::parse(&data);
        }

        #[test]
        fn documents_round_trip(
            entries in proptest::collection::vec(("[0-9a-f]{64}", "[A-Za-z0-9+/]{4,40}"), 0..6)
        ) {
            let mut doc = PcrSignature::default();
            for (pol, sig) in entries {
                doc.banks.entry("sha256".into()).or_default().push(PcrSigEntry {
                    pcrs: vec![11], pkfp: "00".repeat(32), pol, sig,
                });
            }
            prop_assert_eq!(PcrSignature::parse(doc.to_json().as_bytes()).unwrap(), doc);
        }
    }
}
