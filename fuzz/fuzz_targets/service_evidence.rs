#![no_main]
//! The body parser of `POST /v1/evidence` (imgctl serve): bounded, typed, never a panic; what
//! parses re-encodes to a body that parses to the same value.
use imgctl_service::api::EvidenceRequest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = EvidenceRequest::parse(data) {
        assert_eq!(EvidenceRequest::parse(&r.to_json()).ok(), Some(r));
    }
});
