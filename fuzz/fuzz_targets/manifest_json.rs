//! The build manifest (`manifest.json`, `imgctl-manifest/1`) as `imgctl verify` reads it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = imgctl_attest::verify::parse_manifest("manifest.json", data);
});
