//! A C2SP tlog-policy file as `--witness-policy` reads it: parse, then evaluate its quorum over
//! every subset of the first witnesses the input names.
#![no_main]

use imgctl_tlog::TrustPolicy;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = TrustPolicy::parse(data) {
        let n = p.witnesses.len().min(8);
        for mask in 0u32..(1 << n) {
            let set = (0..n).filter(|i| mask & (1 << i) != 0).collect();
            let _ = p.quorum.satisfied_by(&set);
        }
    }
});
