//! systemd's userspace measurement log (`/run/log/systemd/tpm2-measure.log`): the records
//! systemd-pcrextend/pcrphase append, and the break-glass record imgctl adds to it.
//!
//! The log is JSON-SEQ (RFC 7464): each record is `0x1E`, a JSON object, `\n`. Records follow
//! the TCG Canonical Event Log JSON shape without `recnum` (../shared/reference/systemd.md §4.1):
//!
//! ```json
//! {"pcr":11,"digests":[{"hashAlg":"sha256","digest":"<hex>"}],"content_type":"systemd",
//!  "content":{"string":"enter-initrd","bootId":"<32 hex>","timestamp":<CLOCK_BOOTTIME µs>,
//!             "eventType":"phase"}}
//! ```
//! Each digest is `H_bank(string)` over the UTF-8 string without NUL, extended into `pcr` in
//! every listed bank by a single `TPM2_PCR_Extend`.
//!
//! ## The break-glass record
//!
//! Someone used emergency access (a root shell, a recovery key, a debug console) and says why.
//! The record must let an auditor see who, when and why, and make the claim tamper-evident:
//! - `eventType` is `"break-glass"`;
//! - `string` — the measured bytes — is `break-glass:` followed by the canonical JSON object
//!   `{"actor":…,"kind":…,"reason":…,"time":…}` (keys sorted, compact, `time` RFC 3339 UTC
//!   to the second). Changing any field changes the digest, so the log no longer replays to
//!   the quoted PCR. This follows systemd's own `login:<user>:<canonical JSON>` NvPCR records.
//!   `content_type` is `"imgctl"` (the record is ours, not systemd's). Records are the one
//!   [`UserspaceRecord`] type of [`crate::eventlog::userspace`], which the verifier and the
//!   auditor parse them back with.
//! - PCR: **15** by default. Every PCR a PC Client TPM lets locality 0 extend without letting
//!   it reset (0–15) already has an owner: 0–7 firmware, 8–9 boot loader/kernel, 10 IMA,
//!   11–13 systemd-stub, 14 shim; 16 and 23 are resettable and 17–22 belong to DRTM. PCR 15 is
//!   systemd's PCR for userspace system-state events (machine-id, file systems, cryptsetup),
//!   measured after the boot chain, so PCR 11 predictions and signed PCR 11 policies are not
//!   disturbed. A deliberate side effect: secrets sealed to PCR 15's untouched value stop
//!   unsealing until reboot once glass is broken. systemd itself moved later event kinds
//!   (logins, verity) to NvPCRs; a `break-glass` NvPCR would be the long-term home.

use serde::{Deserialize, Serialize};

pub use crate::eventlog::userspace::{Origin, UserspaceRecord, RS};
use crate::Error;
use imgctl_measure::bank::{Digest, HashAlg};

/// Where systemd keeps the log.
pub const DEFAULT_LOG: &str = "/run/log/systemd/tpm2-measure.log";
/// PCR imgctl measures break-glass events into (see the module doc).
pub const BREAK_GLASS_PCR: u32 = 15;
/// `eventType` of a break-glass record.
pub const BREAK_GLASS: &str = "break-glass";

/// A break-glass claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakGlass {
    /// Who broke the glass (user name, ticket holder, key id).
    pub actor: String,
    /// What kind of override, e.g. `debug-shell`, `emergency-login`, `recovery-key`.
    pub kind: String,
    /// Why, in the actor's words.
    pub reason: String,
    /// RFC 3339 UTC, e.g. `2026-11-23T01:30:00Z`.
    pub time: String,
}

impl BreakGlass {
    /// A claim at `unix_seconds`; every field must be non-empty text without control
    /// characters.
    pub fn new(actor: &str, kind: &str, reason: &str, unix_seconds: u64) -> Result<Self, Error> {
        for (name, v) in [("actor", actor), ("kind", kind), ("reason", reason)] {
            if v.trim().is_empty() || v.chars().any(char::is_control) {
                return Err(Error::InvalidInput(format!(
                    "a break-glass {name} must be non-empty text without control characters"
                )));
            }
        }
        Ok(BreakGlass {
            actor: actor.to_owned(),
            kind: kind.to_owned(),
            reason: reason.to_owned(),
            time: rfc3339_utc(unix_seconds),
        })
    }

    /// The measured string: `break-glass:` + canonical JSON (sorted keys, compact).
    pub fn string(&self) -> String {
        // Struct fields are declared in sorted order: actor, kind, reason, time.
        format!(
            "{BREAK_GLASS}:{}",
            serde_json::to_string(self).unwrap_or_default()
        )
    }

    /// The log record, in `pcr` (normally [`BREAK_GLASS_PCR`]).
    pub fn record(
        &self,
        pcr: u32,
        banks: &[HashAlg],
        origin: &Origin,
    ) -> Result<UserspaceRecord, Error> {
        let mut r = UserspaceRecord::new(pcr, banks, self.string(), BREAK_GLASS, origin)?;
        // imgctl logs the measured string itself (systemd logs it C-escaped).
        r.content_type = Some("imgctl".into());
        r.string = Some(self.string());
        Ok(r)
    }

    /// The claim a break-glass record makes, checked against its measured string. `None` for
    /// records that are not break-glass records by [`break_glass_claim`]'s one rule.
    pub fn from_record(r: &UserspaceRecord) -> Option<Result<Self, String>> {
        // What was measured: a break-glass string written by systemd-pcrextend (an image's
        // PAM hook) is logged C-escaped, its quotes as `\"`.
        let measured = r.measured_string().or_else(|| r.string.clone());
        break_glass_claim(r.event_type.as_deref(), measured.as_deref())
    }
}

/// The one rule for break-glass records, used by the recorder's and the verifier's parsers: a
/// record is one when its `eventType` is `break-glass` **or** its string starts with
/// `break-glass:` (a record that hides its type is still reported); it is valid only when the
/// string is `break-glass:` + the canonical JSON of a [`BreakGlass`].
pub fn break_glass_claim(
    event_type: Option<&str>,
    string: Option<&str>,
) -> Option<Result<BreakGlass, String>> {
    const PREFIX: &str = "break-glass:";
    let by_type = event_type == Some(BREAK_GLASS);
    let by_string = string.is_some_and(|s| s.starts_with(PREFIX));
    if !by_type && !by_string {
        return None;
    }
    let s = string.unwrap_or_default();
    Some(match s.strip_prefix(PREFIX) {
        Some(json) => serde_json::from_str::<BreakGlass>(json)
            .map_err(|e| format!("undecodable: {e}"))
            .and_then(|b| {
                if b.string() == s {
                    Ok(b)
                } else {
                    Err("not in canonical form".into())
                }
            }),
        None => Err("eventType break-glass without a break-glass: string".into()),
    })
}

/// Prefix of an extension-activation record.
pub const VERITY_PREFIX: &str = "verity:";

/// An activated dm-verity image (a system or configuration extension merged on the running
/// OS), in the string format of systemd's `verity` NvPCR (systemd main,
/// `pcrextend_verity_word`): `verity:<name>:<root hash hex>:<signers>`. `<name>` is escaped as
/// systemd's `xescape(name, ":")`; `<signers>` is empty for an unsigned root hash, otherwise a
/// comma list of `<serial hex>/<issuer base64>` (the PKCS#7 signers). systemd 257 has no
/// NvPCRs: the OS image measures these into PCR 15 (recipes/os/imgctl-sysext-measure), and the
/// verifier resolves each root hash to a published extension record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerityRecord {
    /// The image's name, unescaped.
    pub name: String,
    /// The root hash the kernel enforces, lower-case hex.
    pub root_hash: String,
    /// `(serial hex, issuer base64)` of each signer of the root hash; empty when unsigned.
    pub signers: Vec<(String, String)>,
}

impl VerityRecord {
    /// Parses `verity:<name>:<root hash>:<signers>`; `None` without the prefix.
    pub fn parse(s: &str) -> Option<Result<VerityRecord, String>> {
        let rest = s.strip_prefix(VERITY_PREFIX)?;
        Some(Self::parse_fields(rest).map_err(|why| format!("{s:?}: {why}")))
    }

    /// Reads an activation record from a userspace log record: `None` if its string does not
    /// start with [`VERITY_PREFIX`].
    pub fn from_record(r: &UserspaceRecord) -> Option<Result<VerityRecord, String>> {
        Self::parse(r.string.as_deref()?)
    }

    fn parse_fields(rest: &str) -> Result<VerityRecord, String> {
        let fields: Vec<&str> = rest.split(':').collect();
        let [name, hash, signers] = fields[..] else {
            return Err(format!(
                "expected <name>:<root hash>:<signers> after {VERITY_PREFIX}, found {} field(s)",
                fields.len()
            ));
        };
        let name = crate::keyslot::unescape(name)?;
        if name.is_empty() {
            return Err("the image name is empty".into());
        }
        // SHA-256 to SHA-512 root hashes, as systemd's hexmem writes them (lower case).
        let lower_hex = |h: &str| h.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
        if !(32..=64).contains(&(hash.len() / 2)) || hash.len() % 2 != 0 || !lower_hex(hash) {
            return Err(format!("{hash:?} is not a root hash (lower-case hex)"));
        }
        let mut list = Vec::new();
        if !signers.is_empty() {
            for one in signers.split(',') {
                let (serial, issuer) = one
                    .split_once('/')
                    .ok_or_else(|| format!("signer {one:?} is not <serial hex>/<issuer base64>"))?;
                let base64 = issuer
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'='));
                if serial.is_empty() || !lower_hex(serial) || issuer.is_empty() || !base64 {
                    return Err(format!(
                        "signer {one:?} is not <serial hex>/<issuer base64>"
                    ));
                }
                list.push((serial.to_owned(), issuer.to_owned()));
            }
        }
        Ok(VerityRecord {
            name,
            root_hash: hash.to_owned(),
            signers: list,
        })
    }

    /// The measured string.
    pub fn string(&self) -> String {
        let signers: Vec<String> = self
            .signers
            .iter()
            .map(|(serial, issuer)| format!("{serial}/{issuer}"))
            .collect();
        format!(
            "{VERITY_PREFIX}{}:{}:{}",
            crate::keyslot::escape(&self.name),
            self.root_hash,
            signers.join(",")
        )
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` for seconds since the Unix epoch (proleptic Gregorian, UTC).
pub fn rfc3339_utc(unix_seconds: u64) -> String {
    let days = unix_seconds / 86_400;
    let secs = unix_seconds % 86_400;
    // Howard Hinnant's civil_from_days, for days since 1970-01-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eventlog::UserspaceLog;

    fn origin() -> Origin {
        Origin {
            boot_id: "0123456789abcdef0123456789abcdef".into(),
            timestamp_usec: 1234,
        }
    }

    #[test]
    fn break_glass_round_trips_and_tampering_is_detected() {
        let bg = BreakGlass::new(
            "alice",
            "recovery-key",
            "disk unlock failed: key \"x\"",
            1_795_000_000,
        )
        .unwrap();
        assert_eq!(bg.time, "2026-11-18T11:06:40Z");
        assert_eq!(
            bg.string(),
            "break-glass:{\"actor\":\"alice\",\"kind\":\"recovery-key\",\"reason\":\"disk unlock failed: key \\\"x\\\"\",\"time\":\"2026-11-18T11:06:40Z\"}"
        );
        let r = bg
            .record(BREAK_GLASS_PCR, &HashAlg::ALL, &origin())
            .unwrap();
        let mut log = r.to_json_seq();
        log.extend(
            UserspaceRecord::phase("ready", &HashAlg::ALL, &origin())
                .unwrap()
                .to_json_seq(),
        );
        let parsed = UserspaceLog::parse(&log).unwrap().records;
        assert_eq!(parsed[0], r);
        assert_eq!(BreakGlass::from_record(&parsed[0]).unwrap().unwrap(), bg);
        assert!(BreakGlass::from_record(&parsed[1]).is_none());
        let mut forged = parsed[0].clone();
        forged.string = forged
            .string
            .map(|s| s.replace("{\"actor\"", "{ \"actor\""));
        assert!(BreakGlass::from_record(&forged).unwrap().is_err());
        assert!(BreakGlass::new("alice", "debug-shell", " ", 0).is_err());
    }

    #[test]
    /// Expected values printed by GNU `date -u -d @N +%FT%TZ`.
    fn rfc3339_matches_known_dates() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(4_102_444_799), "2099-12-31T23:59:59Z");
    }
}

#[cfg(test)]
mod verity {
    use super::*;
    use proptest::prelude::*;

    const HASH: &str = "4a7c1e1b1a0c2b0e9f8d7c6b5a4938271605f4e3d2c1b0a99887766554433221";

    #[test]
    fn activation_records_parse_and_round_trip() {
        let s = format!("verity:demo-sysext:{HASH}:");
        let v = VerityRecord::parse(&s).unwrap().unwrap();
        assert_eq!(v.name, "demo-sysext");
        assert_eq!(v.root_hash, HASH);
        assert!(v.signers.is_empty());
        assert_eq!(v.string(), s);
        // Signed: serial/issuer pairs, the issuer's base64 may hold '/'.
        let signed = format!("verity:a\\x3ab:{HASH}:01ff/MA0x/CzAJ=,02/QQ==");
        let v = VerityRecord::parse(&signed).unwrap().unwrap();
        assert_eq!(v.name, "a:b");
        assert_eq!(
            v.signers,
            vec![
                ("01ff".into(), "MA0x/CzAJ=".into()),
                ("02".into(), "QQ==".into())
            ]
        );
        assert_eq!(v.string(), signed);
        assert_eq!(VerityRecord::parse("cryptsetup-keyslot:var"), None);
    }

    #[test]
    fn malformed_activation_records_are_errors() {
        for bad in [
            "verity:".to_owned(),
            format!("verity:x:{HASH}"),
            format!("verity::{HASH}:"),
            format!("verity:x:{}:", HASH.to_uppercase()),
            format!("verity:x:{}:", &HASH[..63]),
            "verity:x:abcd:".to_owned(),
            format!("verity:x:{HASH}:nosigner"),
            format!("verity:x:{HASH}:01/"),
            format!("verity:x:{HASH}:zz/QQ=="),
            format!("verity:x:{HASH}::extra"),
            format!("verity:x\\q:{HASH}:"),
        ] {
            assert!(matches!(VerityRecord::parse(&bad), Some(Err(_))), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn activation_records_round_trip_through_their_string(
            name in "\\PC{1,24}",
            hash in "([0-9a-f]{2}){32,64}",
            signers in proptest::collection::vec(("([0-9a-f]{2}){1,20}", "[A-Za-z0-9+/]{1,40}={0,2}"), 0..3),
        ) {
            let v = VerityRecord { name, root_hash: hash, signers };
            let s = v.string();
            prop_assert_eq!(s.matches(':').count(), 3);
            prop_assert_eq!(VerityRecord::parse(&s).unwrap().unwrap(), v);
        }

        #[test]
        fn activation_record_parsing_never_panics(s in "verity:\\PC{0,200}") {
            let _ = VerityRecord::parse(&s);
        }
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use crate::eventlog::UserspaceLog;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = UserspaceLog::parse(&data);
        }

        #[test]
        fn records_round_trip_and_break_glass_claims_survive(
            actor in "\\PC{1,20}", reason in "\\PC{1,60}", secs in 0u64..4_000_000_000,
        ) {
            prop_assume!(!actor.trim().is_empty() && !reason.trim().is_empty());
            let o = Origin { boot_id: "00".repeat(16), timestamp_usec: secs };
            let bg = BreakGlass::new(&actor, "debug-shell", &reason, secs).unwrap();
            let r = bg.record(BREAK_GLASS_PCR, &HashAlg::ALL, &o).unwrap();
            let parsed = UserspaceLog::parse(&r.to_json_seq()).unwrap().records;
            prop_assert_eq!(&parsed[0], &r);
            prop_assert_eq!(BreakGlass::from_record(&parsed[0]).unwrap().unwrap(), bg);
        }
    }
}

/// The sticky bit that marks the log dirty between the extend and the append.
pub const S_ISVTX: u32 = 0o1000;

/// The log file as the write protocol needs it (the caller holds its exclusive flock).
pub trait LogFile {
    type Error;
    /// The file's permission bits (`st_mode & 0o7777`).
    fn mode(&mut self) -> Result<u32, Self::Error>;
    fn set_mode(&mut self, mode: u32) -> Result<(), Self::Error>;
    /// Appends and syncs.
    fn append(&mut self, data: &[u8]) -> Result<(), Self::Error>;
}

/// How one write went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// The log was already marked dirty by an earlier writer (the mark stays).
    pub was_dirty: bool,
}

/// A failure of the protocol, saying what state the log was left in.
#[derive(Debug)]
pub enum WriteError<L, T> {
    /// Reading or setting the mode, before the extend: nothing changed.
    Log(L),
    /// The extend failed: nothing was appended and the dirty mark was lifted again (unless an
    /// earlier writer had set it).
    Extend(T),
    /// The PCR was extended but the record could not be appended: the log stays marked dirty.
    Append(L),
}

/// systemd's userspace-log write protocol (systemd-pcrextend): mark the log dirty (sticky bit),
/// extend the PCR, append the record, lift the mark; a crash in between leaves the mark, so an
/// auditor sees the log does not replay. `extend` receives the record's PCR and digests.
pub fn write_record<F: LogFile, T>(
    log: &mut F,
    record: &UserspaceRecord,
    banks: &[HashAlg],
    extend: impl FnOnce(u32, &[(HashAlg, Digest)]) -> Result<(), T>,
) -> Result<Written, WriteError<F::Error, T>>
where
    F::Error: From<Error>,
{
    let pcr = record
        .pcr
        .ok_or_else(|| WriteError::Log(Error::InvalidInput("record has no PCR".into()).into()))?;
    let digests = banks
        .iter()
        .map(|b| match record.digest(*b) {
            Some(d) => Ok((*b, d.clone())),
            None => Err(Error::InvalidInput(format!("record lacks a {b} digest"))),
        })
        .collect::<Result<Vec<_>, Error>>()
        .map_err(|e| WriteError::Log(e.into()))?;
    let mode = log.mode().map_err(WriteError::Log)? & 0o7777;
    let was_dirty = mode & S_ISVTX != 0;
    log.set_mode(mode | S_ISVTX).map_err(WriteError::Log)?;
    if let Err(e) = extend(pcr, &digests) {
        if !was_dirty {
            // Best effort: the extend did not happen, so the log is still in step.
            let _ = log.set_mode(mode & !S_ISVTX);
        }
        return Err(WriteError::Extend(e));
    }
    log.append(&record.to_json_seq())
        .map_err(WriteError::Append)?;
    if !was_dirty {
        log.set_mode(mode & !S_ISVTX).map_err(WriteError::Append)?;
    }
    Ok(Written { was_dirty })
}

#[cfg(test)]
mod protocol {
    use super::*;

    #[derive(Default)]
    struct Fake {
        mode: u32,
        data: Vec<u8>,
        fail_append: bool,
        modes: Vec<u32>,
    }

    impl LogFile for Fake {
        type Error = FakeError;
        fn mode(&mut self) -> Result<u32, FakeError> {
            Ok(self.mode)
        }
        fn set_mode(&mut self, m: u32) -> Result<(), FakeError> {
            self.mode = m;
            self.modes.push(m);
            Ok(())
        }
        fn append(&mut self, d: &[u8]) -> Result<(), FakeError> {
            if self.fail_append {
                return Err(FakeError("disk full".into()));
            }
            self.data.extend_from_slice(d);
            Ok(())
        }
    }

    #[derive(Debug, PartialEq)]
    struct FakeError(String);

    impl From<Error> for FakeError {
        fn from(e: Error) -> FakeError {
            FakeError(e.to_string())
        }
    }

    fn rec() -> UserspaceRecord {
        let o = Origin {
            boot_id: "0".into(),
            timestamp_usec: 1,
        };
        UserspaceRecord::phase("ready", &[HashAlg::SHA256], &o).unwrap()
    }

    #[test]
    fn dirty_mark_brackets_the_extend_and_stays_when_the_append_fails() {
        let r = rec();
        let mut f = Fake {
            mode: 0o600,
            ..Fake::default()
        };
        let mut extended = None;
        let w = write_record(&mut f, &r, &[HashAlg::SHA256], |p, d| {
            extended = Some((p, d.to_vec()));
            Ok::<(), String>(())
        })
        .unwrap();
        assert!(!w.was_dirty);
        assert_eq!(f.modes, vec![0o1600, 0o600]);
        assert_eq!(
            crate::eventlog::UserspaceLog::parse(&f.data)
                .unwrap()
                .records,
            vec![r.clone()]
        );
        assert_eq!(extended.unwrap().0, 11);
        // The extend fails: nothing appended, mark lifted.
        let mut f = Fake {
            mode: 0o600,
            ..Fake::default()
        };
        let e = write_record(&mut f, &r, &[HashAlg::SHA256], |_, _| Err("no TPM"));
        assert!(matches!(e, Err(WriteError::Extend("no TPM"))));
        assert!(f.data.is_empty() && f.mode == 0o600);
        // The append fails after the extend: the mark stays.
        let mut f = Fake {
            mode: 0o600,
            fail_append: true,
            ..Fake::default()
        };
        let e = write_record(&mut f, &r, &[HashAlg::SHA256], |_, _| Ok::<(), String>(()));
        assert!(matches!(e, Err(WriteError::Append(_))));
        assert_eq!(f.mode, 0o1600);
    }
}
