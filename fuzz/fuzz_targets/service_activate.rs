#![no_main]
//! The body parser of `POST /v1/activate` (imgctl serve): bounded, typed, never a panic; what
//! parses re-encodes to a body that parses to the same value.
use imgctl_service::api::ActivateRequest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = ActivateRequest::parse(data) {
        assert_eq!(ActivateRequest::parse(&r.to_json()).ok(), Some(r));
    }
});
