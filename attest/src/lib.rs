//! # imgctl-attest
//!
//! What a booted machine shows, and how imgctl judges it. Pure logic over bytes, like
//! `imgctl-measure` whose model it checks evidence against: nothing here opens a file, starts a
//! process or talks to a TPM.
//!
//! - [`eventlog`]: firmware (TCG PC Client PFP) and systemd userspace event logs: parsing,
//!   descriptions, lint, replay with named quirks, PCR values in JSON.
//! - [`quote`]: TPMS_ATTEST quotes and their signatures (RSASSA, RSA-PSS, ECDSA), AK keys.
//! - [`userspace_record`]: the records imgctl itself appends to systemd's userspace log
//!   (`imgctl measure`), and [`breakglass`], the break-glass record the auditor looks for.
//! - [`verify`]: the verifier: policy, references, verdict with the first divergence.
//! - [`published`]: references from a transparency log (read once, then its new entries),
//!   its checkpoints checked against one verified before (split view), `.tlog-proof`s.
//! - [`audit`]: the break-glass auditor (consistency first, then break-glass records).
//! - [`guest_report`]: the PCRs and event logs a booted guest prints on its console for
//!   `imgctl vm --capture`.
//!
//! Errors are `imgctl-measure`'s: a [`ParseError`] names the offset, the field and what was
//! wrong; an [`Error`] wraps it or an invalid value.

pub mod audit;
pub mod breakglass;
pub mod eventlog;
pub mod guest_report;
pub mod keyslot;
pub mod published;
pub mod quote;
pub mod tpm_public;
pub mod userspace_record;
pub mod verify;

pub use imgctl_measure::{Error, ParseError};
