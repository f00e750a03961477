//! C2SP signed notes with Ed25519 signatures and Ed25519 witness cosignatures.
//!
//! A note is UTF-8 text ending in a newline, a blank line, then one or more lines
//! `— <key name> <base64(4-byte key ID ‖ signature)>` (U+2014 EM DASH, space). The text is
//! everything up to the *last* blank line. No ASCII control characters other than newline.
//!
//! Keys (C2SP signed-note §Signatures, tlog-cosignature):
//! - key ID = `SHA-256(name ‖ 0x0A ‖ type ‖ public key)[:4]`, big-endian; type `0x01` is an
//!   Ed25519 note signature, `0x04` an Ed25519 timestamped cosignature (`cosignature/v1`);
//! - a verifier key (vkey) is `<name>+<hex key ID>+<base64(type ‖ public key)>`; a signer key
//!   (skey) is written as golang.org/x/mod/sumdb/note writes it:
//!   `PRIVATE+KEY+<name>+<hex key ID>+<base64(type ‖ 32-byte seed)>`.
//!
//! Verification rules: signatures whose (name, key ID) match no known key are ignored; a
//! signature from a known key that fails rejects the whole note; a note with no valid signature
//! from a known key is rejected.

use ring::signature::{self, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

use super::{b64_decode, b64_encode, Error};

/// Signature type byte of an Ed25519 note signature.
pub const SIG_ED25519: u8 = 0x01;
/// Signature type byte of an Ed25519 timestamped cosignature.
pub const SIG_COSIGNATURE_ED25519: u8 = 0x04;

/// Verifiers must accept at least 16 signatures; we accept up to this many.
pub const MAX_SIGNATURES: usize = 100;
/// Largest note we parse (post-quantum signatures are ~5 kB each).
pub const MAX_NOTE_LEN: usize = 1 << 20;

const DASH: &str = "\u{2014} ";

/// `SHA-256(name ‖ "\n" ‖ type ‖ public key)[:4]` as a big-endian integer.
pub fn key_id(name: &str, sig_type: u8, public_key: &[u8]) -> u32 {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(name.as_bytes());
    ctx.update(b"\n");
    ctx.update(&[sig_type]);
    ctx.update(public_key);
    let d = ctx.finish();
    let b = d.as_ref();
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Whether `name` is a valid key name: non-empty, no Unicode spaces, no `+`.
pub fn valid_key_name(name: &str) -> bool {
    !name.is_empty()
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c == '+' || c.is_control())
}

fn check_name(name: &str) -> Result<(), Error> {
    if valid_key_name(name) {
        Ok(())
    } else {
        Err(Error::Note(format!(
            "invalid key name {name:?} (must be non-empty, without spaces or '+')"
        )))
    }
}

/// One signature line of a note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteSignature {
    pub name: String,
    pub key_id: u32,
    /// The signature bytes after the key ID.
    pub signature: Vec<u8>,
}

impl NoteSignature {
    /// The signature line, with its trailing newline.
    pub fn to_line(&self) -> String {
        let mut raw = self.key_id.to_be_bytes().to_vec();
        raw.extend_from_slice(&self.signature);
        format!("{DASH}{} {}\n", self.name, b64_encode(&raw))
    }
}

/// A parsed (not yet verified) signed note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The text, including its final newline.
    pub text: String,
    pub signatures: Vec<NoteSignature>,
}

impl Note {
    /// Parses a signed note, checking its shape only.
    pub fn parse(bytes: &[u8]) -> Result<Note, Error> {
        if bytes.len() > MAX_NOTE_LEN {
            return Err(Error::Note(format!(
                "{} bytes is larger than the {MAX_NOTE_LEN}-byte limit",
                bytes.len()
            )));
        }
        let s = std::str::from_utf8(bytes)
            .map_err(|e| Error::Note(format!("not valid UTF-8 at offset {}", e.valid_up_to())))?;
        if let Some(off) = s.bytes().position(|b| b < 0x20 && b != b'\n') {
            return Err(Error::Note(format!(
                "control character {:#04x} at offset {off}",
                bytes[off]
            )));
        }
        if !s.ends_with('\n') {
            return Err(Error::Note("does not end with a newline".into()));
        }
        let split = s
            .rfind("\n\n")
            .ok_or_else(|| Error::Note("no blank line before the signatures".into()))?;
        let text = &s[..split + 1];
        let sigs = &s[split + 2..];
        let mut signatures = Vec::new();
        for (i, line) in sigs.split_terminator('\n').enumerate() {
            if signatures.len() == MAX_SIGNATURES {
                return Err(Error::Note(format!(
                    "more than {MAX_SIGNATURES} signatures"
                )));
            }
            let bad = |m: &str| Error::Note(format!("signature line {}: {m}", i + 1));
            let rest = line
                .strip_prefix(DASH)
                .ok_or_else(|| bad("does not start with an em dash and a space"))?;
            let (name, b64) = rest
                .split_once(' ')
                .ok_or_else(|| bad("no space between key name and signature"))?;
            if !valid_key_name(name) {
                return Err(bad("invalid key name"));
            }
            let raw = b64_decode(b64).ok_or_else(|| bad("signature is not valid base64"))?;
            if raw.len() < 5 {
                return Err(bad("signature is shorter than a key ID and one byte"));
            }
            signatures.push(NoteSignature {
                name: name.to_owned(),
                key_id: u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]),
                signature: raw[4..].to_vec(),
            });
        }
        if signatures.is_empty() {
            return Err(Error::Note("no signature lines".into()));
        }
        Ok(Note {
            text: text.to_owned(),
            signatures,
        })
    }

    /// The note as bytes: text, blank line, signature lines.
    pub fn to_text(&self) -> String {
        let mut s = self.text.clone();
        s.push('\n');
        for sig in &self.signatures {
            s.push_str(&sig.to_line());
        }
        s
    }
}

/// What a verifier key checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifierKind {
    /// An Ed25519 note signature (type 0x01): the log's key.
    Ed25519,
    /// An Ed25519 `cosignature/v1` (type 0x04): a witness.
    CosignatureV1,
}

impl VerifierKind {
    fn sig_type(self) -> u8 {
        match self {
            VerifierKind::Ed25519 => SIG_ED25519,
            VerifierKind::CosignatureV1 => SIG_COSIGNATURE_ED25519,
        }
    }
}

/// A public key that checks note signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteVerifier {
    pub name: String,
    pub key_id: u32,
    pub kind: VerifierKind,
    pub public_key: [u8; 32],
}

impl NoteVerifier {
    pub fn new(name: &str, kind: VerifierKind, public_key: [u8; 32]) -> Result<Self, Error> {
        check_name(name)?;
        Ok(NoteVerifier {
            name: name.to_owned(),
            key_id: key_id(name, kind.sig_type(), &public_key),
            kind,
            public_key,
        })
    }

    /// Parses a vkey, `<name>+<hex key ID>+<base64(type ‖ key)>`; the key ID must match.
    pub fn parse_vkey(vkey: &str) -> Result<Self, Error> {
        let vkey = vkey.trim_end_matches(['\n', '\r']);
        let mut parts = vkey.splitn(3, '+');
        let (Some(name), Some(id_hex), Some(key_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Error::Note(format!(
                "verifier key {vkey:?} is not name+id+key"
            )));
        };
        check_name(name)?;
        let id = parse_key_id(id_hex)?;
        let key = b64_decode(key_b64)
            .ok_or_else(|| Error::Note("verifier key material is not valid base64".into()))?;
        let (kind, pk) = match key.split_first() {
            Some((&SIG_ED25519, pk)) => (VerifierKind::Ed25519, pk),
            Some((&SIG_COSIGNATURE_ED25519, pk)) => (VerifierKind::CosignatureV1, pk),
            Some((t, _)) => {
                return Err(Error::Note(format!(
                    "verifier key type {t:#04x} is not supported (0x01 Ed25519, 0x04 Ed25519 cosignature)"
                )))
            }
            None => return Err(Error::Note("empty verifier key".into())),
        };
        let pk: [u8; 32] = pk.try_into().map_err(|_| {
            Error::Note(format!(
                "Ed25519 public key has {} bytes, expected 32",
                pk.len()
            ))
        })?;
        let v = NoteVerifier::new(name, kind, pk)?;
        if v.key_id != id {
            return Err(Error::Note(format!(
                "verifier key {name}: key ID {id:08x} does not match the key ({:08x})",
                v.key_id
            )));
        }
        Ok(v)
    }

    /// The vkey string.
    pub fn vkey(&self) -> String {
        let mut k = vec![self.kind.sig_type()];
        k.extend_from_slice(&self.public_key);
        format!("{}+{:08x}+{}", self.name, self.key_id, b64_encode(&k))
    }

    /// Checks one signature over `text`; for cosignatures returns the timestamp.
    fn check(&self, text: &str, sig: &[u8]) -> Result<Option<u64>, Error> {
        let pk = UnparsedPublicKey::new(&signature::ED25519, &self.public_key);
        let fail = || {
            Error::Note(format!(
                "signature by known key {}+{:08x} does not verify",
                self.name, self.key_id
            ))
        };
        match self.kind {
            VerifierKind::Ed25519 => {
                pk.verify(text.as_bytes(), sig).map_err(|_| fail())?;
                Ok(None)
            }
            VerifierKind::CosignatureV1 => {
                if sig.len() != 8 + 64 {
                    return Err(fail());
                }
                let ts = u64::from_be_bytes(sig[..8].try_into().map_err(|_| fail())?);
                if ts > i64::MAX as u64 {
                    return Err(Error::Note(format!(
                        "cosignature by {} has timestamp {ts} above 2^63-1",
                        self.name
                    )));
                }
                pk.verify(cosigned_message(text, ts).as_bytes(), &sig[8..])
                    .map_err(|_| fail())?;
                Ok(Some(ts))
            }
        }
    }
}

fn parse_key_id(s: &str) -> Result<u32, Error> {
    if s.len() != 8 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::Note(format!("key ID {s:?} is not 8 hex digits")));
    }
    u32::from_str_radix(s, 16).map_err(|_| Error::Note(format!("key ID {s:?}")))
}

/// The message an Ed25519 witness signs: `cosignature/v1`, `time <T>`, then the checkpoint.
pub fn cosigned_message(text: &str, timestamp: u64) -> String {
    format!("cosignature/v1\ntime {timestamp}\n{text}")
}

/// An Ed25519 private key that signs notes (type 0x01) or cosigns checkpoints (type 0x04).
#[derive(Debug)]
pub struct NoteSigner {
    verifier: NoteVerifier,
    seed: [u8; 32],
    pair: Ed25519KeyPair,
}

impl NoteSigner {
    /// A signer from a 32-byte RFC 8032 seed.
    pub fn from_seed(name: &str, kind: VerifierKind, seed: [u8; 32]) -> Result<Self, Error> {
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed)
            .map_err(|_| Error::Note("invalid Ed25519 seed".into()))?;
        let pk: [u8; 32] = pair
            .public_key()
            .as_ref()
            .try_into()
            .map_err(|_| Error::Note("Ed25519 public key size".into()))?;
        Ok(NoteSigner {
            verifier: NoteVerifier::new(name, kind, pk)?,
            seed,
            pair,
        })
    }

    /// A fresh key from the system's random source.
    pub fn generate(name: &str, kind: VerifierKind) -> Result<Self, Error> {
        use ring::rand::SecureRandom;
        let mut seed = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut seed)
            .map_err(|_| Error::Note("no randomness for a new key".into()))?;
        Self::from_seed(name, kind, seed)
    }

    /// Parses `PRIVATE+KEY+<name>+<hex id>+<base64(type ‖ seed)>`.
    pub fn parse_skey(skey: &str) -> Result<Self, Error> {
        let skey = skey.trim_end_matches(['\n', '\r']);
        let rest = skey
            .strip_prefix("PRIVATE+KEY+")
            .ok_or_else(|| Error::Note("signer key does not start with PRIVATE+KEY+".into()))?;
        let mut parts = rest.splitn(3, '+');
        let (Some(name), Some(id_hex), Some(key_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Error::Note(
                "signer key is not PRIVATE+KEY+name+id+key".into(),
            ));
        };
        let id = parse_key_id(id_hex)?;
        let key = b64_decode(key_b64)
            .ok_or_else(|| Error::Note("signer key material is not valid base64".into()))?;
        let (kind, seed) = match key.split_first() {
            Some((&SIG_ED25519, s)) => (VerifierKind::Ed25519, s),
            Some((&SIG_COSIGNATURE_ED25519, s)) => (VerifierKind::CosignatureV1, s),
            _ => return Err(Error::Note("signer key type is not supported".into())),
        };
        let seed: [u8; 32] = seed
            .try_into()
            .map_err(|_| Error::Note("Ed25519 seed must be 32 bytes".into()))?;
        let s = Self::from_seed(name, kind, seed)?;
        if s.verifier.key_id != id {
            return Err(Error::Note(format!(
                "signer key {name}: key ID {id:08x} does not match the key"
            )));
        }
        Ok(s)
    }

    /// The skey string (secret).
    pub fn skey(&self) -> String {
        let mut k = vec![self.verifier.kind.sig_type()];
        k.extend_from_slice(&self.seed);
        format!(
            "PRIVATE+KEY+{}+{:08x}+{}",
            self.verifier.name,
            self.verifier.key_id,
            b64_encode(&k)
        )
    }

    pub fn verifier(&self) -> &NoteVerifier {
        &self.verifier
    }

    pub fn name(&self) -> &str {
        &self.verifier.name
    }

    /// Signs `text` (a note signature for 0x01 keys; a cosignature at `timestamp` for 0x04).
    pub fn sign(&self, text: &str, timestamp: u64) -> NoteSignature {
        let signature = match self.verifier.kind {
            VerifierKind::Ed25519 => self.pair.sign(text.as_bytes()).as_ref().to_vec(),
            VerifierKind::CosignatureV1 => {
                let mut s = timestamp.to_be_bytes().to_vec();
                s.extend_from_slice(
                    self.pair
                        .sign(cosigned_message(text, timestamp).as_bytes())
                        .as_ref(),
                );
                s
            }
        };
        NoteSignature {
            name: self.verifier.name.clone(),
            key_id: self.verifier.key_id,
            signature,
        }
    }
}

/// A note whose signatures were checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedNote {
    pub text: String,
    /// The known keys that signed, with the cosignature timestamp where there is one.
    pub verified_by: Vec<(NoteVerifier, Option<u64>)>,
    /// Signature lines from keys we do not know (ignored).
    pub unknown: Vec<String>,
}

impl VerifiedNote {
    pub fn signed_by(&self, v: &NoteVerifier) -> bool {
        self.verified_by.iter().any(|(k, _)| k == v)
    }
}

/// Parses and verifies a note against known keys, following the C2SP rules.
pub fn open(bytes: &[u8], known: &[&NoteVerifier]) -> Result<VerifiedNote, Error> {
    let note = Note::parse(bytes)?;
    let mut verified_by: Vec<(NoteVerifier, Option<u64>)> = Vec::new();
    let mut unknown = Vec::new();
    for sig in &note.signatures {
        match known
            .iter()
            .find(|k| k.name == sig.name && k.key_id == sig.key_id)
        {
            None => unknown.push(format!("{}+{:08x}", sig.name, sig.key_id)),
            Some(k) => {
                let ts = k.check(&note.text, &sig.signature)?;
                if !verified_by.iter().any(|(v, _)| v == *k) {
                    verified_by.push(((*k).clone(), ts));
                }
            }
        }
    }
    if verified_by.is_empty() {
        return Err(Error::Note(format!(
            "no signature from a known key (signed by: {})",
            unknown.join(", ")
        )));
    }
    Ok(VerifiedNote {
        text: note.text,
        verified_by,
        unknown,
    })
}

/// Signs `text` with each signer and returns the whole note.
pub fn sign(text: &str, signers: &[&NoteSigner], timestamp: u64) -> Result<String, Error> {
    if !text.ends_with('\n') {
        return Err(Error::Note("note text must end with a newline".into()));
    }
    let note = Note {
        text: text.to_owned(),
        signatures: signers.iter().map(|s| s.sign(text, timestamp)).collect(),
    };
    // What we sign must parse back under the same rules we verify with.
    let out = note.to_text();
    Note::parse(out.as_bytes())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PETER_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const PETER_SKEY: &str =
        "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";

    #[test]
    fn go_sumdb_key_pair_vectors_parse_and_match() {
        let v = NoteVerifier::parse_vkey(PETER_VKEY).unwrap();
        assert_eq!(v.key_id, 0xc74f20a3);
        assert_eq!(v.vkey(), PETER_VKEY);
        let s = NoteSigner::parse_skey(PETER_SKEY).unwrap();
        assert_eq!(s.verifier(), &v);
        assert_eq!(s.skey(), PETER_SKEY);
    }

    #[test]
    fn bad_vkeys_are_rejected() {
        for bad in [
            "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10",
            "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            "PeterNeumann+c74f20a3+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            "PeterNeumann+c74f20a3",
        ] {
            assert!(NoteVerifier::parse_vkey(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unknown_keys_are_ignored_and_a_failing_known_key_rejects() {
        let log = NoteSigner::from_seed("example.com/log", VerifierKind::Ed25519, [7; 32]).unwrap();
        let other =
            NoteSigner::from_seed("example.com/other", VerifierKind::Ed25519, [8; 32]).unwrap();
        let text = "hello\n";
        let note = sign(text, &[&other, &log], 0).unwrap();
        let opened = open(note.as_bytes(), &[log.verifier()]).unwrap();
        assert_eq!(opened.text, text);
        assert_eq!(opened.unknown.len(), 1);
        // Only an unknown key: rejected.
        let only_other = sign(text, &[&other], 0).unwrap();
        let err = open(only_other.as_bytes(), &[log.verifier()]).unwrap_err();
        assert!(
            err.to_string().contains("no signature from a known key"),
            "{err}"
        );
        // Same name and ID as the log key but a bad signature: the whole note is rejected.
        let mut n = Note::parse(note.as_bytes()).unwrap();
        n.signatures[0].signature = n.signatures[1].signature.clone();
        n.signatures[0].name = log.name().into();
        n.signatures[0].key_id = log.verifier().key_id;
        n.signatures[1].signature[0] ^= 1;
        let err = open(n.to_text().as_bytes(), &[log.verifier()]).unwrap_err();
        assert!(err.to_string().contains("does not verify"), "{err}");
    }

    #[test]
    fn cosignatures_round_trip() {
        let w =
            NoteSigner::from_seed("witness.example", VerifierKind::CosignatureV1, [9; 32]).unwrap();
        let text = "example.com/log\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n";
        let note = sign(text, &[&w], 1679315147).unwrap();
        let opened = open(note.as_bytes(), &[w.verifier()]).unwrap();
        assert_eq!(opened.verified_by[0].1, Some(1679315147));
        assert!(w.verifier().vkey().starts_with("witness.example+"));
    }

    #[test]
    fn malformed_notes_are_rejected_with_a_reason() {
        for (bad, why) in [
            (&b"no newline"[..], "newline"),
            (b"text\n\n", "no signature"),
            (b"text\n\n- k AAAA\n", "em dash"),
            (b"te\x01xt\n\n\xe2\x80\x94 k AAAAAAA=\n", "control"),
            (b"text\n\xe2\x80\x94 k AAAAAAA=\n", "blank line"),
        ] {
            let err = Note::parse(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{err} should mention {why}");
        }
    }
}
