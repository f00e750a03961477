//! The one SIGINT/SIGTERM handler of the process.
//!
//! [`install`] sets it once, first thing in `main`, and every command shares it. A signal wakes
//! a handler thread (signal-hook's `Signals`: a sigaction handler that writes to a self-pipe),
//! which removes every temporary a transaction has not committed
//! (`imgctl_fsio::remove_registered_temporaries`, which first lets a commit or a log append in
//! progress finish) and exits 128 + the signal's number: 130 after SIGINT, 143 after SIGTERM,
//! as a shell reports a process the signal killed.
//!
//! A command that tears down by itself (`imgctl vm` stops QEMU and swtpm, then reports) calls
//! [`cooperate`]: from then on a signal only records itself for [`interrupted`].
//!
//! Why not sigwait(2) on blocked signals: the blocked mask is inherited by child processes (std
//! does not reset it; see the test below), so mkfs.erofs, QEMU and swtpm would ignore the
//! SIGTERM that stops them. A sigaction handler is reset to the default action in a child by
//! execve(2), and no signal is ever blocked.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use signal_hook::consts::{SIGINT, SIGTERM};

static COOPERATIVE: AtomicBool = AtomicBool::new(false);
/// The signal that arrived since [`cooperate`]; 0 for none.
static INTERRUPTED: AtomicI32 = AtomicI32::new(0);

/// The exit code after `signal`: 128 + its number (130 for SIGINT, 143 for SIGTERM).
pub fn exit_code(signal: i32) -> i32 {
    128 + signal
}

/// Installs the handler. Call once, first thing in `main`.
pub fn install() {
    // An error leaves the default action (terminate): temporaries then wait for the next
    // run's reclaim, as after a kill -9.
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) else {
        return;
    };
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if COOPERATIVE.load(Ordering::SeqCst) {
                    // The first signal is the one reported.
                    let _ =
                        INTERRUPTED.compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst);
                    continue;
                }
                imgctl_fsio::remove_registered_temporaries();
                std::process::exit(exit_code(signal));
            }
        });
    // Without the thread nobody would act on a signal: terminate as by default.
    if spawned.is_err() {
        let always = std::sync::Arc::new(AtomicBool::new(true));
        for s in [SIGINT, SIGTERM] {
            let _ = signal_hook::flag::register_conditional_default(s, always.clone());
        }
    }
}

/// From now on a signal sets [`interrupted`] instead of ending the process.
pub fn cooperate() {
    COOPERATIVE.store(true, Ordering::SeqCst);
}

/// The signal (SIGINT or SIGTERM) that arrived since [`cooperate`], if any.
pub fn interrupted() -> Option<i32> {
    match INTERRUPTED.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
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

    #[test]
    fn exit_codes_are_128_plus_the_signal() {
        assert_eq!(super::exit_code(signal_hook::consts::SIGINT), 130);
        assert_eq!(super::exit_code(signal_hook::consts::SIGTERM), 143);
    }
}
