//! Property tests of the stub's safe logic, compiled for the host from the very same sources:
//! the loaded-image section lookup (`efi/src/image.rs`) and systemd's command-line mangling
//! (`measure/src/pcr11.rs`, which the stub includes).

#![allow(clippy::unwrap_used)] // reason: test code; a panic is a test failure

#[allow(dead_code)]
#[path = "../efi/src/image.rs"]
mod image;

use imgctl_measure::pcr11::mangle_cmdline;
use proptest::prelude::*;

const NAMES: &[&str] = &[
    ".linux", ".osrel", ".cmdline", ".initrd", ".sbat", ".profile", ".text",
];

/// A loaded image (memory layout): MZ + PE headers, section table, sections at 0x1000 steps.
fn loaded_image(sections: &[(usize, Vec<u8>)]) -> Vec<u8> {
    let pe = 0x80usize;
    let opt = 0xf0usize;
    let table = pe + 24 + opt;
    let mut img = vec![0u8; 0x1000];
    img[..2].copy_from_slice(b"MZ");
    img[0x3c..0x40].copy_from_slice(&(pe as u32).to_le_bytes());
    img[pe..pe + 4].copy_from_slice(b"PE\0\0");
    img[pe + 6..pe + 8].copy_from_slice(&(sections.len() as u16).to_le_bytes());
    img[pe + 20..pe + 22].copy_from_slice(&(opt as u16).to_le_bytes());
    for (i, (name, data)) in sections.iter().enumerate() {
        let va = img.len();
        let h = table + 40 * i;
        let n = NAMES[*name].as_bytes();
        img[h..h + n.len()].copy_from_slice(n);
        img[h + 8..h + 12].copy_from_slice(&(data.len() as u32).to_le_bytes());
        img[h + 12..h + 16].copy_from_slice(&(va as u32).to_le_bytes());
        img.extend_from_slice(data);
        img.resize(va + data.len().div_ceil(0x1000).max(1) * 0x1000, 0);
    }
    img
}

/// systemd's rule restated: up to the first NUL, every control character or space (<= 0x20,
/// 0x7f) becomes a space, then leading and trailing spaces go.
fn reference_mangle(units: &[u16]) -> Vec<u16> {
    let mapped: Vec<u16> = units
        .iter()
        .take_while(|&&u| u != 0)
        .map(|&u| if u <= 0x20 || u == 0x7f { 0x20 } else { u })
        .collect();
    let start = mapped
        .iter()
        .position(|&u| u != 0x20)
        .unwrap_or(mapped.len());
    let end = mapped
        .iter()
        .rposition(|&u| u != 0x20)
        .map_or(start, |e| e + 1);
    mapped[start..end.max(start)].to_vec()
}

proptest! {
    #[test]
    fn image_parsing_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let mut b = bytes;
        if b.len() >= 2 { b[..2].copy_from_slice(b"MZ"); }
        if let Ok(img) = image::Image::parse(&b) {
            let _ = img.has_profiles();
            for n in NAMES {
                if let Ok(Some(s)) = img.section(n) {
                    prop_assert!(s.len() <= b.len());
                }
            }
        }
    }

    #[test]
    fn section_lookup_finds_the_first_nonempty_section(
        sections in proptest::collection::vec(
            (0..NAMES.len(), proptest::collection::vec(any::<u8>(), 0..300)), 0..8)
    ) {
        let bytes = loaded_image(&sections);
        let img = image::Image::parse(&bytes).unwrap();
        prop_assert_eq!(
            img.has_profiles().unwrap(),
            sections.iter().any(|(n, _)| NAMES[*n] == ".profile")
        );
        for (i, name) in NAMES.iter().enumerate() {
            let want = sections.iter().find(|(n, d)| *n == i && !d.is_empty()).map(|(_, d)| d.as_slice());
            prop_assert_eq!(img.section(name).unwrap(), want);
        }
    }

    #[test]
    fn mangle_cmdline_matches_systemds_rule(units in proptest::collection::vec(
        prop_oneof![Just(0u16), Just(0x20), Just(0x09), Just(0x7f), 0x21u16..0x7e, any::<u16>()], 0..64)
    ) {
        let mut buf = units.clone();
        let n = mangle_cmdline(&mut buf);
        let want = reference_mangle(&units);
        prop_assert_eq!(&buf[..n], want.as_slice());
        // Idempotent.
        let mut again = buf[..n].to_vec();
        let m = mangle_cmdline(&mut again);
        prop_assert_eq!(&again[..m], &buf[..n]);
    }
}
