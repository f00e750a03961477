//! imgctl-stub's reading of untrusted bytes: its loaded image's section table
//! (uki-stub/efi/src/image.rs) and a passed command line (pcr11::mangle_cmdline).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../uki-stub/efi/src/image.rs"]
mod image;

fuzz_target!(|data: &[u8]| {
    if let Ok(img) = image::Image::parse(data) {
        let _ = img.has_profiles();
        for name in imgctl_measure::pcr11::SECTIONS_258 {
            if let Ok(Some(s)) = img.section(name) {
                assert!(s.len() <= data.len());
            }
        }
    }
    let mut units: Vec<u16> = data
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    let n = imgctl_measure::pcr11::mangle_cmdline(&mut units);
    assert!(n <= units.len());
});
