//! A C2SP tlog-proof (`imgctl log verify --proof FILE`, `NAME.efi.tlog-proof`): parse, re-encode,
//! and check it against a fixed log key and entry as `log verify` does.
#![no_main]

use imgctl_tlog::TlogProof;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = TlogProof::parse(data) {
        assert_eq!(TlogProof::parse(p.to_text().as_bytes()).as_ref(), Ok(&p));
    }
});
