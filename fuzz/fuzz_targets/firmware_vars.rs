//! The EDK2 variable store and signature database readers `predict-pcrs --pcr 7
//! --firmware-vars` uses, and the PCR 7 model over what they read.
#![no_main]

use imgctl_measure::secureboot::{pcr7_events, signature_database, VarStore};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = signature_database(data);
    if let Ok(store) = VarStore::parse(data) {
        let _ = pcr7_events(&store, data);
    }
});
