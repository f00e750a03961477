//! One module per subcommand: each has an `Args` struct (clap derive) and a `run` function.

#[cfg(feature = "tpm")]
pub mod attest;
pub mod audit;
pub mod build;
pub mod chid;
pub mod completions;
pub mod eventlog;
pub mod ext;
pub mod inspect;
pub mod keygen;
pub mod log;
#[cfg(feature = "tpm")]
pub mod measure;
pub mod predict;
pub mod serve;
pub mod sign_pcrs;
pub mod sign_pe;
#[cfg(feature = "tpm")]
pub mod tpm;
pub mod verify;
pub mod vm;
pub mod witness;
