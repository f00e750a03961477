//! The one SIGINT/SIGTERM handler of the process.
//!
//! `ctrlc` allows one handler per process, so [`install`] sets it once, first thing in `main`,
//! and every command shares it. On a signal it removes every temporary a transaction has not
//! committed (`imgctl_fsio::remove_registered_temporaries`, which first lets a commit or a
//! log append in progress finish) and exits 130.
//!
//! A command that tears down by itself (`imgctl vm` stops QEMU and swtpm, then reports) calls
//! [`cooperate`]: from then on a signal only sets the flag [`interrupted`] reads.
//!
//! Why not sigwait(2) on blocked signals, which would tell SIGINT from SIGTERM (to exit 143 on
//! the latter): the blocked mask is inherited by child processes (std does not reset it; see
//! the test below), so mkfs.erofs, QEMU and swtpm would ignore the SIGTERM that stops them.
//! `ctrlc` installs a sigaction handler instead, which children do not inherit, but does not
//! say which signal came: both exit 130.

use std::sync::atomic::{AtomicBool, Ordering};

static COOPERATIVE: AtomicBool = AtomicBool::new(false);
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// The exit code after SIGINT or SIGTERM.
pub const EXIT_SIGNALLED: i32 = 130;

/// Installs the handler. Call once, first thing in `main`.
pub fn install() {
    // An error leaves the default action (terminate): temporaries then wait for the next
    // run's reclaim, as after a kill -9.
    let _ = ctrlc::set_handler(|| {
        if COOPERATIVE.load(Ordering::SeqCst) {
            INTERRUPTED.store(true, Ordering::SeqCst);
            return;
        }
        imgctl_fsio::remove_registered_temporaries();
        std::process::exit(EXIT_SIGNALLED);
    });
}

/// From now on a signal sets [`interrupted`] instead of ending the process.
pub fn cooperate() {
    COOPERATIVE.store(true, Ordering::SeqCst);
}

/// Whether SIGINT or SIGTERM arrived since [`cooperate`].
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

#[cfg(test)]
mod tests {
    /// Children (mkfs.erofs, qemu, swtpm) start with no blocked signals: the handler is a
    /// sigaction one, never a blocked mask they would inherit.
    #[test]
    fn children_start_with_no_blocked_signals() {
        super::install();
        let out = std::process::Command::new("grep")
            .args(["SigBlk", "/proc/self/status"])
            .output()
            .unwrap();
        let line = String::from_utf8(out.stdout).unwrap();
        assert!(line.trim_end().ends_with("0000000000000000"), "{line}");
    }
}
