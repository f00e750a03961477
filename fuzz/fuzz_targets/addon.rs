//! PE addons as `ext predict-pcrs` reads them (`imgctl_measure::addon`): the PE, the sections
//! the stub uses, the `.uname` rule, the joined command line and the devicetree, microcode and
//! initrd events it would measure.
#![no_main]

use imgctl_measure::addon;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(a) = addon::read(data) {
        let _ = addon::uname_matches(a.uname.as_deref(), Some(b"6.12.0"));
        if let Some(text) = addon::combined_cmdline(a.cmdline.iter().map(String::as_str)) {
            let _ = addon::cmdline_event_data(&text);
        }
        let addons = [("fuzz".to_owned(), "fuzz.addon.efi".to_owned(), a)];
        let _ = addon::events(imgctl_measure::StubSemantics::Systemd257, &addons);
    }
    if let Ok(name) = std::str::from_utf8(data) {
        let _ = addon::picks_up(name);
    }
});
