//! # imgctl-service
//!
//! `imgctl serve`: a verifier service for a fleet. It enrols machines (their EK and AK, the AK
//! trusted only after TPM2_ActivateCredential proves it sits on the EK's TPM), challenges them
//! with single-use expiring nonces, verifies their evidence (a quote by the enrolled AK over
//! the nonce, the firmware and systemd event logs) with [`imgctl_attest::verify`] against the
//! machine's policy, stores every verdict with the evidence digest, the policy version and the
//! log checkpoint, and on ACCEPT releases the policy's secrets wrapped by TPM2_MakeCredential
//! to that machine's EK for its AK's Name, so only that TPM can open them. Every release is
//! recorded.
//!
//! - [`credential`]: MakeCredential in pure Rust (no TPM on the server), tpm2-tools' file format.
//! - [`tpm_public`]: `TPMT_PUBLIC` of EKs and AKs, their Names and attribute checks.
//! - [`api`]: the request bodies, bounded and parsed into typed values; the answers.
//! - [`store`]: the database, SQLite or PostgreSQL, and its migrations (`migrations/`).
//! - [`service`]: the decisions; [`server`]: the axum routes; [`client`]: the machine's side.
//! - [`soft_tpm`]: a TPM stand-in in software (EK, AK, ActivateCredential, quotes) for load
//!   runs; [`load`]: many simulated machines against replicas, and the invariants after.
//!
//! - [`ek_cert`]: EK certificates checked against the configured CAs.
//!
//! With `log` configured, the references are a transparency log's records
//! ([`imgctl_attest::published`]), read at each evidence; the log's checkpoint is checked
//! against the last one stored in the database (split view refused) and stored with the
//! verdict.
//!
//! With `tls` configured, [`server::serve_tls`] serves the API over HTTPS (rustls, ring).
//!
//! With `verdict_log`, each verdict's record ([`api::VerdictRecord`], canonical JSON) is
//! appended to an imgctl transparency log (durable attestation); its index is in the answer.
//!
//! EKs: RSA (seed by RSA-OAEP) and NIST P-256 (seed by ephemeral ECDH and KDFe).
//!
//! Not yet: one policy per service; `imgctl attest` itself uses the TPM's RSA EK.

pub mod api;
pub mod client;
pub mod credential;
pub mod ek_cert;
pub mod load;
pub mod server;
pub mod service;
pub mod soft_tpm;
pub mod store;
