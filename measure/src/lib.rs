//! # imgctl-measure
//!
//! Pure measurement logic over bytes: what a machine's TPM will show when it boots an image,
//! and the formats needed to prove it. Nothing in this crate opens a file, starts a process or
//! talks to a TPM; every function takes bytes and values and returns values.
//!
//! What it implements:
//! - [`record`]: the versioned artifact record (JSON form and canonical log entry v2).
//! - [`bank`]: TPM hash banks (`TPM_ALG_ID`) and PCR extend arithmetic.
//! - [`pcr11`]: the systemd-stub PCR 11 model (canonical section order, pcrphase words),
//!   `core`-only so the Rust stub can share it.
//! - [`predict`]: PCR 11 prediction per bank and boot phase, in `systemd-measure`'s JSON shape.
//! - [`pe`]: a bounds-checked PE/COFF reader; [`authenticode`]: the PE image hash (PCR 4);
//!   [`authenticode_sign`]: the certificate table and what a Secure Boot signature signs.
//! - [`uki`]: UKI sections per profile and the identity of the stub inside.
//! - [`reader`]: the cursor every parser of untrusted bytes reads through.
//! - [`manifest`]: the build manifest (`manifest.json`); [`keys`], [`policy`], [`pcrsig`]:
//!   PCR policy keys, TPM policy digests and the signed `.pcrsig` policy; [`tpm_wire`]: the
//!   TPM 2.0 structures they are encoded in; [`dtb`]: the device-tree facts `.dtbauto` needs;
//!   [`hwids`]: the `.hwids` section; [`chid`]: a machine's Computer Hardware IDs from its
//!   SMBIOS strings ([`smbios`]: the raw table) and the `.hwids` device they select.
//!
//! What it deliberately does not do: build images (`imgctl-builder`), read evidence (`imgctl-attest`),
//! keep the transparency log (`imgctl-tlog`), talk to a TPM, or read files.
//!
//! ```
//! use imgctl_measure::{bank::HashAlg, pcr11::StubSemantics, predict::*};
//! let sections = [MeasuredSection { name: ".linux", data: b"A" }];
//! let p = predict_pcr11(StubSemantics::Systemd252, &sections, &[HashAlg::SHA256],
//!                       &["enter-initrd".parse().unwrap()]).unwrap();
//! assert_eq!(p.banks[0].1[0].1.to_hex(),
//!            "2ccb64e2494a299a47994c804f7937bb5cbef8a849f2ca2d43d64f7c73e262c7");
//! ```

pub mod addon;
pub mod authenticode;
pub mod authenticode_sign;
pub mod bank;
pub mod chid;
pub mod dtb;
pub mod hwids;
pub mod keys;
pub mod manifest;
pub mod pcr11;
pub mod pcrsig;
pub mod pe;
pub mod policy;
pub mod predict;
pub mod reader;
pub mod record;
pub mod secureboot;
pub mod smbios;
pub mod tpm_wire;
pub mod uki;

use std::fmt;

pub use bank::{Digest, HashAlg, Pcr};
pub use pcr11::StubSemantics;
pub use pe::PeFile;
pub use predict::{predict_pcr11, MeasuredSection, PhasePath, Prediction};
pub use uki::{StubIdentity, Uki};

/// A malformed input: where, in which field, and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ParseError {
    /// Byte offset in the input.
    pub offset: usize,
    /// The field or structure being read.
    pub what: &'static str,
    pub message: String,
}

impl ParseError {
    pub fn new(offset: usize, what: &'static str, message: impl Into<String>) -> Self {
        ParseError {
            offset,
            what,
            message: message.into(),
        }
    }

    pub fn truncated(offset: usize, what: &'static str, needed: usize, available: usize) -> Self {
        ParseError::new(
            offset,
            what,
            format!("truncated: needed {needed} bytes, only {available} left"),
        )
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "at offset {:#x} ({}): {}",
            self.offset, self.what, self.message
        )
    }
}

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error(transparent)]
    UnsupportedAlg(#[from] bank::UnsupportedAlg),
    #[error("{0}")]
    InvalidInput(String),
    #[error(transparent)]
    Key(#[from] keys::KeyError),
}
