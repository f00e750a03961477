//! PE reading as `imgctl inspect` and `predict-pcrs` do it (the streamed section table too):
//! headers, sections, the stub
//! identity, per-profile section sets, the Authenticode regions, and a UKI assembled on top.
#![no_main]

use imgctl_measure::{authenticode, Uki};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // predict-pcrs' streamed reader: the section table from the first bytes of a file of a
    // claimed length, and where each section's in-memory bytes come from.
    for head in [data.len().min(4096), data.len()] {
        let claimed = data.len() as u64 + u64::from(data.first().copied().unwrap_or(0));
        if let Ok(table) = imgctl_measure::PeFile::section_table(&data[..head], claimed) {
            for s in &table {
                let _ = s.memory_extent();
            }
        }
    }
    let Ok(uki) = Uki::parse(data) else { return };
    let _ = uki.identity();
    for profile in 0..2 {
        if let Ok(sections) = uki.sections_for_profile(profile) {
            let _ = imgctl_measure::predict::pcr11_event_data(
                imgctl_measure::StubSemantics::LATEST,
                &imgctl_measure::uki::as_measured(&sections),
            );
        }
    }
    let _ = authenticode::hashed_regions(&uki.pe);
    let _ = imgctl_builder::kernel::kernel_release(data);
    let _ = imgctl_builder::uki::assemble(
        data,
        &[imgctl_builder::uki::NewSection { name: ".linux".into(), data: vec![1, 2, 3] }],
    );
});
