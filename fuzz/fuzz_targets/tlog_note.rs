//! Signed notes, checkpoints, vkeys/skeys and tlog-proofs from untrusted bytes.
#![no_main]

use imgctl_tlog::checkpoint::Checkpoint;
use imgctl_tlog::note::{self, Note, NoteSigner, NoteVerifier};
use imgctl_tlog::TlogProof;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(n) = Note::parse(data) {
        // What parses re-encodes to the same bytes.
        assert_eq!(n.to_text().as_bytes(), data);
        if let Ok(c) = Checkpoint::parse_text(&n.text) {
            assert_eq!(c.to_text(), n.text);
        }
    }
    let key = NoteVerifier::parse_vkey("example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k");
    if let Ok(k) = key {
        let _ = note::open(data, &[&k]);
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = NoteVerifier::parse_vkey(s);
        let _ = NoteSigner::parse_skey(s);
        let _ = Checkpoint::parse_text(s);
    }
    if let Ok(p) = TlogProof::parse(data) {
        assert_eq!(TlogProof::parse(p.to_text().as_bytes()).as_ref(), Ok(&p));
    }
});
