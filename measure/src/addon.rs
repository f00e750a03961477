//! systemd-stub PE addons (`*.addon.efi`): what a 257 stub takes from them and measures.
//!
//! An addon is a PE image made from systemd's addon stub (`addonx64.efi.stub`, `.sdmagic`
//! `systemd-addon VERSION`) plus sections, as `ukify build --stub addonx64.efi.stub` makes it.
//! The stub loads every `*.addon.efi` (case-insensitive suffix, ASCII name of at most 255
//! characters, not starting with `.`) from `ESP\loader\addons\` (global) and then from
//! `<uki>.efi.extra.d\` (this UKI's), each folder sorted by `strcmp16`. It skips an addon that
//! carries `.linux` (a UKI) or whose `.uname` differs from the UKI's, and one with none of
//! `.cmdline .dtb .dtbauto .initrd .ucode`. (systemd `src/boot/stub.c`, `load_addons()`,
//! `load_all_addons()`, `cmdline_append_and_measure_addons()`.)
//!
//! Command lines: each addon's `.cmdline` (its memory image up to the first NUL) is mangled as a
//! passed command line is ([`crate::pcr11::mangle_cmdline`]); the results are joined with one
//! space, global addons first, and the whole is measured once into PCR 12 as an `EV_IPL` event:
//! digest over the UTF-16LE text with its NUL, description the same text
//! (`tpm_log_load_options()`). The event comes after a passed command line's and before the
//! SMBIOS extra command line's and the sidecar archives (credentials, confexts).
//!
//! Devicetree, initrd and microcode addons are measured as tagged events of their own; imgctl
//! does not predict them yet and refuses such addons rather than guess.

use crate::pcr11;
use crate::pe::PeFile;
use crate::Error;

/// `.sdmagic` name of systemd's addon stub.
pub const ADDON_STUB_NAME: &str = "systemd-addon";
/// The file-name suffix the stub picks addons by (compared case-insensitively).
pub const ADDON_SUFFIX: &str = ".addon.efi";
/// Where the stub finds global addons on the ESP.
pub const GLOBAL_ADDON_DIR: &str = "loader/addons";

/// Whether the stub would pick a file of this name up as an addon (`load_addons_from_dir()`).
pub fn picks_up(name: &str) -> bool {
    name.is_ascii()
        && !name.starts_with('.')
        && name.len() <= 255
        && name.len() > ADDON_SUFFIX.len()
        && name[name.len() - ADDON_SUFFIX.len()..].eq_ignore_ascii_case(ADDON_SUFFIX)
}

/// What the stub uses from one addon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addon {
    /// The `.cmdline` text as the stub converts it, before mangling: the section's memory
    /// image up to its first NUL. `None` without a `.cmdline` section.
    pub cmdline: Option<String>,
    /// The `.uname` bytes, if any (the stub skips the addon when it differs from the UKI's).
    pub uname: Option<Vec<u8>>,
}

/// Reads an addon (untrusted bytes): a PE image with a `.cmdline`, without `.linux`. Devicetree,
/// initrd and microcode sections are refused (not predicted), as is a command line that is not
/// ASCII (the stub's UTF-8 to UTF-16 conversion of other text is not modelled).
pub fn read(data: &[u8]) -> Result<Addon, Error> {
    let pe = PeFile::parse(data)?;
    if pe.section(".linux").is_some() {
        return Err(Error::InvalidInput(
            "carries a .linux section: a UKI, not an addon (the stub skips it)".into(),
        ));
    }
    if let Some(s) = [".dtb", ".dtbauto", ".initrd", ".ucode"]
        .into_iter()
        .find(|n| pe.section(n).is_some())
    {
        return Err(Error::InvalidInput(format!(
            "has a {s} section: devicetree, initrd and microcode addons are not predicted yet"
        )));
    }
    let Some(section) = pe.section(".cmdline") else {
        return Err(Error::InvalidInput(
            "has no .cmdline section: nothing the stub would use".into(),
        ));
    };
    let bytes = pe.memory_data(section)?;
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    let text = &bytes[..end];
    if !text.is_ascii() {
        return Err(Error::InvalidInput(
            ".cmdline is not ASCII; only ASCII command lines are predicted".into(),
        ));
    }
    let uname = match pe.section(".uname") {
        Some(s) => Some(pe.memory_data(s)?.into_owned()),
        None => None,
    };
    Ok(Addon {
        cmdline: Some(String::from_utf8_lossy(text).into_owned()),
        uname,
    })
}

/// Whether the stub applies an addon with this `.uname` to a UKI with `uki_uname` (both as
/// section bytes): when either has none, or the addon's equals the UKI's up to the addon's
/// length or its first NUL (`strneq8(uname, addon, addon_size)`).
pub fn uname_matches(addon_uname: Option<&[u8]>, uki_uname: Option<&[u8]>) -> bool {
    let (Some(a), Some(u)) = (addon_uname, uki_uname) else {
        return true;
    };
    let u_end = u.iter().position(|&b| b == 0).unwrap_or(u.len());
    let u = &u[..u_end];
    for (i, &ac) in a.iter().enumerate() {
        let uc = u.get(i).copied().unwrap_or(0);
        if ac != uc {
            return false;
        }
        if ac == 0 {
            return true;
        }
    }
    true
}

/// The combined addon command line the stub measures, given the addons' command lines in the
/// stub's order (global ones sorted, then the UKI's own sorted): each mangled, joined with one
/// space, mangled again. `None` when nothing is left (the stub then measures nothing).
pub fn combined_cmdline<'a>(cmdlines: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let mut joined: Vec<u16> = Vec::new();
    for c in cmdlines {
        let mut units: Vec<u16> = c.encode_utf16().collect();
        let n = pcr11::mangle_cmdline(&mut units);
        units.truncate(n);
        // xasprintf("%ls%ls%ls", tmp, isempty(tmp) ? "" : " ", extra16): a space after any
        // earlier text, even when this addon's own text is empty.
        if !joined.is_empty() {
            joined.push(u16::from(b' '));
        }
        joined.extend(units);
    }
    let n = pcr11::mangle_cmdline(&mut joined);
    joined.truncate(n);
    if joined.is_empty() {
        None
    } else {
        Some(String::from_utf16_lossy(&joined))
    }
}

/// The bytes the stub hashes for a command line it measures into PCR 12: UTF-16LE with the
/// terminating NUL (`strsize16`).
pub fn cmdline_event_data(cmdline: &str) -> Vec<u8> {
    crate::predict::utf16le_with_nul(cmdline)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_picked_as_the_stub_picks_them() {
        for ok in ["a.addon.efi", "X.ADDON.EFI", "debug.Addon.Efi"] {
            assert!(picks_up(ok), "{ok}");
        }
        for bad in [
            ".a.addon.efi",
            "a.efi",
            ".addon.efi",
            "ä.addon.efi",
            "a.addon.efi.bak",
        ] {
            assert!(!picks_up(bad), "{bad}");
        }
        assert!(!picks_up(&format!("{}.addon.efi", "a".repeat(250))));
    }

    #[test]
    fn command_lines_join_with_one_space_after_mangling() {
        assert_eq!(
            combined_cmdline(["  a=1\n", "b=2  c=3 "]).as_deref(),
            Some("a=1 b=2  c=3")
        );
        // An empty one after text leaves a trailing space, which the last mangle drops.
        assert_eq!(combined_cmdline(["a", " \n"]).as_deref(), Some("a"));
        // Between texts it leaves two spaces, as the stub's xasprintf does.
        assert_eq!(combined_cmdline(["a", "", "b"]).as_deref(), Some("a  b"));
        assert_eq!(combined_cmdline([" ", ""]), None);
        assert_eq!(combined_cmdline(std::iter::empty()), None);
    }

    #[test]
    fn the_event_data_is_utf16le_with_its_nul() {
        assert_eq!(cmdline_event_data("ab"), vec![b'a', 0, b'b', 0, 0, 0]);
    }

    #[test]
    fn uname_follows_strneq8() {
        assert!(uname_matches(None, Some(b"6.1")));
        assert!(uname_matches(Some(b"6.1"), None));
        assert!(uname_matches(Some(b"6.1.0"), Some(b"6.1.0")));
        assert!(uname_matches(Some(b"6.1.0\0\0"), Some(b"6.1.0")));
        assert!(!uname_matches(Some(b"6.1.0"), Some(b"6.1.1")));
        assert!(!uname_matches(Some(b"6.1.0-1"), Some(b"6.1.0")));
        // strneq8 compares the addon's length only.
        assert!(uname_matches(Some(b"6.1"), Some(b"6.1.0")));
    }

    /// ukify 257's addon (`ukify build --stub addonx64.efi.stub --cmdline "imgctl.addon=1
    /// quiet"`), the fuzz corpus seed.
    const UKIFY_ADDON: &[u8] = include_bytes!("../../fuzz/corpus/addon/cmdline.addon.efi");

    #[test]
    fn ukifys_addon_reads_back() {
        let a = read(UKIFY_ADDON).unwrap();
        assert_eq!(a.cmdline.as_deref(), Some("imgctl.addon=1 quiet"));
        assert_eq!(a.uname, None);
    }

    proptest::proptest! {
        /// Any bytes, and any corruption of a real addon, give an addon or an error, never a
        /// panic; what reads back has ASCII text without NUL.
        #[test]
        fn read_never_panics(
            noise in proptest::collection::vec(proptest::num::u8::ANY, 0..4096),
            flips in proptest::collection::vec((0usize..3072, proptest::num::u8::ANY), 0..8),
        ) {
            let _ = read(&noise);
            let mut data = UKIFY_ADDON.to_vec();
            for (at, b) in flips {
                data[at % UKIFY_ADDON.len()] = b;
            }
            if let Ok(a) = read(&data) {
                let c = a.cmdline.unwrap_or_default();
                proptest::prop_assert!(c.is_ascii() && !c.contains('\0'));
            }
        }

        /// The joined line equals mangling each part and joining them with a space.
        #[test]
        fn joined_lines_are_the_mangled_parts(parts in proptest::collection::vec("[ -~\t\n]{0,20}", 0..5)) {
            let mangle = |s: &str| {
                let mut u: Vec<u16> = s.encode_utf16().collect();
                let n = crate::pcr11::mangle_cmdline(&mut u);
                String::from_utf16_lossy(&u[..n])
            };
            let joined = parts.iter().map(|p| mangle(p)).collect::<Vec<_>>().join(" ");
            let want = mangle(&joined);
            proptest::prop_assert_eq!(combined_cmdline(parts.iter().map(String::as_str)).unwrap_or_default(), want);
        }
    }
}
