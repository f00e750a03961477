//! The kernel release read from a bzImage's setup header (`kernel_version` pointer), as `build`
//! and `inspect` do for `.uname`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(r) = imgctl_builder::kernel::kernel_release(data) {
        assert!(r.len() <= data.len());
    }
});
