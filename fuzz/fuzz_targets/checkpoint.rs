//! A signed checkpoint as a log client fetches it (`imgctl log verify --log`): the signed note,
//! then the checkpoint body, under a fixed log key with and without witnesses.
#![no_main]

use imgctl_tlog::checkpoint::{self, Checkpoint, Policy};
use imgctl_tlog::note::NoteVerifier;
use libfuzzer_sys::fuzz_target;

const VKEY: &str = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k";

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(c) = Checkpoint::parse_text(s) {
            assert_eq!(Checkpoint::parse_text(&c.to_text()).as_ref(), Ok(&c));
        }
    }
    let Ok(log) = NoteVerifier::parse_vkey(VKEY) else { return };
    let _ = checkpoint::verify(data, &Policy::log_only(&log));
    let witnesses = [log.clone()];
    let _ = checkpoint::verify(
        data,
        &Policy { log: &log, origin: Some("example.com/foo"), witnesses: &witnesses, quorum: imgctl_tlog::Quorum::threshold(1, witnesses.len()) },
    );
});
