//! The extension recipe (`imgctl ext build RECIPE`): YAML, then every field checked. Paths resolve
//! against a folder that does not exist, so nothing on this machine is read.
#![no_main]

use imgctl_extensions::ExtensionSpec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(spec) = ExtensionSpec::parse(data) {
        if let Ok(ext) = spec.check(std::path::Path::new("/nonexistent/fuzz")) {
            let _ = ext.image_file_name();
        }
    }
});
