//! A C2SP tlog-witness `add-checkpoint` request body (what `imgctl log witness` reads from the
//! network): parse and re-encode, decide it as the witness would (fixed keys, empty and
//! non-empty state), and parse the witness state record.
#![no_main]

use imgctl_tlog::note::{NoteSigner, VerifierKind};
use imgctl_tlog::witness::{AddCheckpoint, Cosigned, Witness, WitnessState};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = AddCheckpoint::parse(data) {
        assert_eq!(AddCheckpoint::parse(&r.encode()).as_ref(), Ok(&r));
    }
    let log = NoteSigner::from_seed("example.com/log", VerifierKind::Ed25519, [1; 32]).unwrap();
    let w = NoteSigner::from_seed("w.example", VerifierKind::CosignatureV1, [2; 32]).unwrap();
    let witness = Witness::new(w, &[log.verifier().clone()]).unwrap();
    let mut state = WitnessState::default();
    let _ = witness.decide(&state, data, 1);
    state.logs.insert(
        "example.com/log".into(),
        Cosigned {
            size: 3,
            root: [7; 32],
        },
    );
    let _ = witness.decide(&state, data, 1);
    if let Ok(s) = WitnessState::parse(data) {
        assert_eq!(WitnessState::parse(s.encode().as_bytes()).as_ref(), Ok(&s));
    }
});
