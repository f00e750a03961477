//! TPM event logs: the TCG PC Client firmware log (binary, legacy SHA-1 or crypto-agile) and
//! systemd's userspace measurement log (CEL-JSON-like JSON-SEQ), their parsers, decoded
//! descriptions and replay to PCR values.
//!
//! References: TCG PC Client Platform Firmware Profile (PFP) §10; tpm2-tools
//! `lib/efi_event.h`; go-attestation `attest/eventlog.go`; systemd
//! `docs/TPM2_PCR_MEASUREMENTS.md` (../shared/reference/tlog-eventlog.md §B,
//! ../shared/reference/systemd.md §1.2–1.3, §2, §4).

pub mod describe;
pub mod lint;
pub mod replay;
pub mod tcg;
pub mod types;
pub mod userspace;

pub use describe::describe;
pub use replay::{
    pcr_values_from_json, replay, replay_against, PcrValues, PcrValuesError, PcrValuesJson, Quirk,
    Replay,
};
pub use tcg::{Event, EventLog, LogFormat, SpecIdEvent};
pub use types::EventType;
pub use userspace::{UserspaceLog, UserspaceRecord};
