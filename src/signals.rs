//! The one SIGINT/SIGTERM handler of the process.
//!
//! [`install`] runs first in `main`: it blocks both signals in the main thread (so every thread
//! started later inherits the mask; std resets it for child processes) and starts one thread
//! that waits for them with sigwait(2). On a signal that thread removes every temporary a
//! transaction has not committed (`imgctl_fsio::remove_registered_temporaries`, which first
//! lets a commit in progress finish) and exits 130 (SIGINT) or 143 (SIGTERM), as a shell
//! reports a process killed by them.
//!
//! A command that tears down by itself (`imgctl vm` stops QEMU and swtpm, then reports) calls
//! [`cooperate`]: from then on a signal only sets the flag [`interrupted`] reads.
//!
//! This replaces `ctrlc`: it allows one handler per process and does not say which signal came,
//! so the exit code could not follow it.

use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::{SigSet, Signal};

static COOPERATIVE: AtomicBool = AtomicBool::new(false);
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Installs the handler. Call once, before any other thread starts.
pub fn install() {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    if set.thread_block().is_err() {
        // Signals keep their default action (terminate): temporaries then wait for the next
        // run's reclaim, as after a kill -9.
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            let Ok(sig) = set.wait() else { continue };
            if COOPERATIVE.load(Ordering::SeqCst) {
                INTERRUPTED.store(true, Ordering::SeqCst);
                continue;
            }
            imgctl_fsio::remove_registered_temporaries();
            std::process::exit(128 + sig as i32);
        });
    if spawned.is_err() {
        let _ = set.thread_unblock();
    }
}

/// From now on a signal sets [`interrupted`] instead of ending the process.
pub fn cooperate() {
    COOPERATIVE.store(true, Ordering::SeqCst);
}

/// Whether SIGINT or SIGTERM arrived since [`cooperate`].
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}
