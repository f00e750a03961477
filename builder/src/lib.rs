//! # imgctl-builder
//!
//! Turns a recipe into artifacts: a Unified Kernel Image, its initrd, the predicted PCRs and a
//! manifest that lists every input and every UKI section with its digests in every bank.
//!
//! - [`recipe`]: the YAML schema, fully checked on load (paths resolved, files present).
//! - [`initrd`]: deterministic cpio (newc) archives from file trees, streamed.
//! - [`hashing`]: digests in every bank of what is written, in the one pass that writes it.
//! - [`uki`]: PE assembly from a stub, as ukify places sections (pure; large sections streamed).
//! - [`kernel`]: the kernel release string for `.uname`.
//! - [`build`]: the build plan, from recipe to written artifacts.
//! - [`output`]: atomic writes (temporary names, sync, rename, manifest last).
//!
//! Same inputs and the same SOURCE_DATE_EPOCH give the same bytes.
//!
//! ```no_run
//! use imgctl_builder::{build::{build, BuildOptions}, recipe::Recipe};
//! let recipe = Recipe::load("recipes/demo.yaml".as_ref())?;
//! let out = build(&recipe, &BuildOptions::new("images/demo".into(), 0))?;
//! println!("{}", out.uki.display());
//! # Ok::<(), imgctl_builder::Error>(())
//! ```

pub mod addon;
pub mod build;
pub mod hashing;
pub mod initrd;
pub mod kernel;
pub mod mmdebstrap;
pub mod os_image;
pub mod os_recipe;
pub mod output;
pub mod recipe;
pub mod uki;

use std::path::{Path, PathBuf};

/// Errors of the builder. Each names the file or key at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}{}: {}{message}", file.display(), line.map(|l| format!(":{l}")).unwrap_or_default(), if key.is_empty() { String::new() } else { format!("{key}: ") })]
    Recipe {
        file: PathBuf,
        line: Option<usize>,
        key: String,
        message: String,
    },
    #[error("{}: {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
    #[error("{0}")]
    Stub(String),
    #[error("{0}")]
    InvalidInput(String),
    #[error(transparent)]
    Measure(#[from] imgctl_measure::Error),
    #[error(transparent)]
    Fs(#[from] imgctl_fsio::Error),
    #[error(transparent)]
    Extensions(#[from] imgctl_extensions::Error),
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
