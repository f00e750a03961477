#![no_main]
//! PKCS#11 URIs (RFC 7512), as `--key`, `--private-key` and a recipe's `signing.key` take them.

use imgctl_pkcs11::Pkcs11Uri;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(uri) = Pkcs11Uri::parse(text) {
            // What names the key in messages parses back to the same selection, without a PIN.
            let again = Pkcs11Uri::parse(&uri.redacted()).expect("a redacted URI parses");
            assert_eq!(again.object, uri.object);
            assert_eq!(again.id, uri.id);
            assert_eq!(again.token, uri.token);
            assert!(again.pin_value.is_none());
        }
    }
});
