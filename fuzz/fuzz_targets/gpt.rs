//! The GPT reader `imgctl ext inspect` runs on the first bytes of an image, and the consistency
//! checks over whatever it finds.
#![no_main]

use imgctl_extensions::gpt::{Gpt, Header};
use imgctl_extensions::inspect;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(gpt) = Gpt::parse(data) {
        for p in &gpt.partitions {
            let _ = (p.offset(), p.size());
        }
        let _ = inspect::describe(&gpt, None, None);
    }
    if data.len() >= 512 {
        if let Ok(h) = Header::parse(&data[..512], 0) {
            let _ = h.parse_entries(&data[512..], 512);
        }
    }
});
