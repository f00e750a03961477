//! The recipe parser on arbitrary text: errors, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = imgctl_builder::recipe::Recipe::parse(std::path::Path::new("/nonexistent/fuzz.yaml"), data.to_vec());
});
