//! # imgctl-tlog-store
//!
//! The I/O half of imgctl's transparency log: a folder laid out as C2SP tlog-tiles that any
//! static web server can serve as-is, written crash-safely, and the clients that read a log
//! from a folder or over HTTP. All format logic (Merkle math, notes, checkpoints, tiles) is in
//! `imgctl_measure::tlog`; this crate only moves bytes to and from disk and network.
//!
//! Folder layout:
//!
//! ```text
//! DIR/checkpoint                    signed checkpoint (the commit point)
//! DIR/tile/<L>/<N>[.p/<W>]          hash tiles
//! DIR/tile/entries/<N>[.p/<W>]      entry bundles
//! DIR/.imgctl-log/vkey              the log's verifier key
//! DIR/.imgctl-log/lock              appenders hold an exclusive flock on it
//! DIR/.imgctl-log/pending           intent of an append in progress (for cleanup)
//! ```
//!
//! Durability protocol of one (batched) append, under the lock:
//! 1. compute the new tiles and bundles from the right edge of the tree (pure);
//! 2. record the intent (old size, new size, paths to write) in `pending`;
//! 3. write every tile to a temporary name, fsync it, rename it into place; then fsync every
//!    folder that gained a name (new folders: their parents too);
//! 4. sign the new checkpoint, write it the same way, fsync `DIR`: **this rename is the commit**;
//!    entries are acknowledged only after it returns;
//! 5. delete partial tiles whose full tile now exists (the spec allows it) and the intent.
//!
//! A crash before step 4 leaves the old checkpoint, whose tiles were never touched (an append
//! only writes tiles the old tree does not have); the next appender reads the intent and
//! deletes what the dead one wrote. A crash after it leaves the new state. Either way the
//! published checkpoint and the tiles it names agree.

#![forbid(unsafe_code)]

pub mod client;
pub mod store;

pub use client::{FolderTiles, HttpTiles, TileFetch};
pub use store::{append_entries, check_writable, init, Appender, LogReader};

/// Errors of the store and the clients.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tlog(#[from] imgctl_measure::tlog::Error),
    #[error("{0}")]
    Log(String),
    #[error(transparent)]
    Fs(#[from] imgctl_fsio::Error),
    #[error("HTTP {url}: {message}")]
    Http { url: String, message: String },
}

pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.display().to_string(),
        source,
    }
}
