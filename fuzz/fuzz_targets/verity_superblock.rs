//! The dm-verity superblock reader `imgctl ext inspect` runs on an image's hash partition;
//! whatever parses must encode back to the same 512 bytes' meaning.
#![no_main]

use imgctl_extensions::verity::{Superblock, VerityParams};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(sb) = Superblock::parse(data) else { return };
    let again = Superblock::parse(&sb.encode()).expect("encoded superblock parses");
    assert_eq!(again, sb);
    let _ = sb.uuid_string();
    let _ = VerityParams::from_superblock(&sb);
});
