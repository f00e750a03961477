//! SMBIOS input for CHIDs: a raw table as systemd-stub 257 walks it
//! (`imgctl_measure::smbios::raw_info`), the JSON field description
//! (`chid::SmbiosFields::parse`), and the `.hwids` match over the same bytes.
#![no_main]

use imgctl_measure::{chid, smbios};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let info = smbios::raw_info(data);
    if let Some(m) = info.manufacturer {
        let _ = chid::hashable(Some(m));
    }
    if let Ok(fields) = chid::SmbiosFields::parse("fuzz", data) {
        let chids = chid::chids(&fields);
        let _ = chid::match_hwids(data, &chids);
    }
    let _ = chid::match_hwids(data, &[(3, [0u8; 16])]);
});
