//! The HTTP/1.1 response parser of the tile client (`imgctl log verify --log http://…`): a
//! hostile server's bytes must give a body or an error, never a panic.
#![no_main]

use imgctl_tlog_store::client::parse_response;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(body)) = parse_response(data) {
        assert!(body.len() <= data.len());
    }
});
