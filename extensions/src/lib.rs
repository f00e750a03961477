//! # imgctl-extensions
//!
//! System extension (sysext, `/usr` and `/opt`) and configuration extension (confext, `/etc`)
//! disk images the way systemd-sysext, systemd-confext and systemd-dissect expect them:
//! a GPT disk image per the Discoverable Partitions Specification with an erofs (or squashfs)
//! data partition, its dm-verity hash partition and a signature partition holding a PKCS#7
//! signature of the root hash; plus the digests a verifier needs (root hash, image SHA-256,
//! fs-verity digests of every file).
//!
//! Pure format modules (bytes in, bytes out): [`verity`] (superblock and hash tree, parallel),
//! [`gpt`] (writer and reader), [`dps`] (partition types), [`sigpart`] (signature partition
//! JSON), [`release`] (kinds, names, extension-release, allowed hierarchies), [`fsverity`],
//! [`pkcs7`] (root hash signatures: sign and verify; Authenticode SignedData), [`authenticode`]
//! (Secure Boot signatures of PE images), [`stub`] (the cpio systemd-stub builds from `*.raw` files next to a UKI, and the PCR 13/12
//! extend), [`inspect`] (what an image's headers say, checked against each other), [`recipe`]
//! (the YAML schema). Modules that run programs or touch files say so: [`mkfs`] (mkfs.erofs/mksquashfs),
//! [`sign`] (reads keys, signs), [`pipeline`] (the build, written atomically, and reading images back).
//!
//! It does not mount, merge or activate extensions (systemd-sysext does). Root hash signatures
//! are made and checked in Rust ([`pkcs7`]: RustCrypto `cms`, `rsa`, `p256`), never by running
//! openssl, so nothing prompts for a passphrase.
//!
//! ```
//! use imgctl_extensions::verity::{format, VerityParams};
//! let params = VerityParams::new(b"salt", [0x11; 16]).unwrap();
//! let tree = format(&params, &[0u8; 4096 * 3]).unwrap();
//! assert_eq!(tree.hash_device.len(), 2 * 4096); // superblock + one tree block
//! ```

pub mod authenticode;
pub mod dps;
pub mod fsverity;
pub mod gpt;
pub mod inspect;
pub mod keygen;
pub mod mkfs;
pub mod pipeline;
pub mod pkcs7;
pub mod recipe;
pub mod release;
pub mod sign;
pub mod sigpart;
pub mod stub;
pub mod verity;

use std::path::{Path, PathBuf};

pub use dps::{Architecture, Designator, PartitionType};
pub use gpt::Guid;
pub use recipe::{Extension, ExtensionSpec};
pub use release::{ExtensionKind, ExtensionRelease, ImageName};
pub use verity::{Superblock, TreeBuilder, VerityParams, VerityTree};

/// Errors of this crate; each names the file, key or path involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid image name {name:?}: {why}")]
    BadName { name: String, why: String },
    #[error("extension-release {key}: {why}")]
    BadRelease { key: String, why: String },
    #[error("{path}: not allowed in a {kind}: {why}")]
    OutsideHierarchy {
        path: String,
        kind: ExtensionKind,
        why: String,
    },
    #[error("recipe {path}: {message}")]
    Recipe { path: PathBuf, message: String },
    /// Another error found while checking the recipe at `path` (not a `source`: its text is
    /// part of this message).
    #[error("recipe {path}: {error}")]
    InRecipe { path: PathBuf, error: Box<Error> },
    #[error("{action} {path}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
    #[error("{tool} not found on PATH (install the Debian package {package})")]
    MissingTool {
        tool: &'static str,
        package: &'static str,
    },
    #[error("{tool} failed ({status}): {stderr}")]
    ToolFailed {
        tool: String,
        status: String,
        stderr: String,
    },
    #[error("{}: {message}", path.display())]
    Signing { path: PathBuf, message: String },
    #[error(transparent)]
    File(#[from] imgctl_fsio::Error),
    #[error("private key {key} does not match certificate {cert} (their public keys differ)")]
    KeyCertMismatch { key: PathBuf, cert: PathBuf },
    #[error(transparent)]
    Verity(#[from] verity::VerityError),
    #[error(transparent)]
    Layout(#[from] gpt::LayoutError),
    #[error("{file}: {source}")]
    Parse {
        file: PathBuf,
        source: imgctl_measure::ParseError,
    },
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Authenticode(#[from] authenticode::AuthenticodeError),
    #[error(transparent)]
    Pkcs11(#[from] imgctl_pkcs11::Pkcs11Error),
}

impl Error {
    pub fn io(path: &Path, action: &'static str, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_owned(),
            action,
            source,
        }
    }
}
