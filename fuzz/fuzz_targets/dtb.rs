//! Devicetree blobs as the `.dtbauto` selection reads them (the root node's compatible).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(c)) = imgctl_measure::dtb::root_compatible(data) {
        assert!(!c.contains('\0'));
    }
});
