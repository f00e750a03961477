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
//! Devicetree, initrd and microcode addons (systemd 257, `load_addons()` and `run()`): each is
//! measured into PCR 12 as an `EV_EVENT_TAG` event of its own, the digest over the section's
//! memory image (not a digest of it), the tagged event's data the addon's bare file name in
//! UTF-16LE with its NUL (`tpm_log_tagged_event()`), global addons before the UKI's own:
//! - a devicetree (`.dtb`, tag [`DEVICETREE_ADDON_EVENT_TAG_ID`]) once it is installed
//!   (`install_addon_devicetrees()`), after the SMBIOS command line and before the sidecar
//!   archives. The 257 stub installs it on x86 too, where the firmware has no devicetree
//!   (seen on OVMF: tests/vm.rs);
//! - microcode (`.ucode`, tag [`UCODE_ADDON_EVENT_TAG_ID`]) after the sidecar archives, in
//!   reverse load order (the kernel takes the first microcode it finds), then
//! - initrds (`.initrd`, tag [`INITRD_ADDON_EVENT_TAG_ID`]) in load order; both are appended to
//!   the initrd the kernel gets (ucode addons first of all, initrd addons last of all, so an
//!   initrd addon's files replace the UKI's).
//!
//! A `.dtbauto` in an addon is used only where the stub selects it by the machine's devicetree
//! or hardware IDs; that is not predicted, so such addons are refused. Stubs before 257 use only
//! `.cmdline` (and `.dtb`, not predicted there) of an addon and skip one with neither.

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

/// `EV_EVENT_TAG` ID of a devicetree addon's event (systemd `DEVICETREE_ADDON_EVENT_TAG_ID`).
pub const DEVICETREE_ADDON_EVENT_TAG_ID: u32 = 0x6c46_f751;
/// `EV_EVENT_TAG` ID of an initrd addon's event (systemd 257 `INITRD_ADDON_EVENT_TAG_ID`).
pub const INITRD_ADDON_EVENT_TAG_ID: u32 = 0x49df_fe0f;
/// `EV_EVENT_TAG` ID of a microcode addon's event (systemd 257 `UCODE_ADDON_EVENT_TAG_ID`).
pub const UCODE_ADDON_EVENT_TAG_ID: u32 = 0xdac0_8e1a;

/// What the stub uses from one addon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addon {
    /// The `.cmdline` text as the stub converts it, before mangling: the section's memory
    /// image up to its first NUL. `None` without a `.cmdline` section.
    pub cmdline: Option<String>,
    /// The `.uname` bytes, if any (the stub skips the addon when it differs from the UKI's).
    pub uname: Option<Vec<u8>>,
    /// The `.dtb` section's memory image.
    pub dtb: Option<Vec<u8>>,
    /// Whether the addon carries `.dtbauto` (used only where the stub selects it for the
    /// machine).
    pub dtbauto: bool,
    /// The `.initrd` section's memory image.
    pub initrd: Option<Vec<u8>>,
    /// The `.ucode` section's memory image.
    pub ucode: Option<Vec<u8>>,
}

/// Reads an addon (untrusted bytes): a PE image without `.linux` carrying at least one of
/// `.cmdline .dtb .dtbauto .initrd .ucode`. A command line that is not ASCII is refused (the
/// stub's UTF-8 to UTF-16 conversion of other text is not modelled), as is a `.dtbauto` (which
/// one a machine with a devicetree selects is not predicted for addons).
pub fn read(data: &[u8]) -> Result<Addon, Error> {
    let pe = PeFile::parse(data)?;
    if pe.section(".linux").is_some() {
        return Err(Error::InvalidInput(
            "carries a .linux section: a UKI, not an addon (the stub skips it)".into(),
        ));
    }
    let image = |name: &str| -> Result<Option<Vec<u8>>, Error> {
        match pe.section(name) {
            Some(s) => Ok(Some(pe.memory_data(s)?.into_owned())),
            None => Ok(None),
        }
    };
    let cmdline = match image(".cmdline")? {
        Some(bytes) => {
            let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
            let text = &bytes[..end];
            if !text.is_ascii() {
                return Err(Error::InvalidInput(
                    ".cmdline is not ASCII; only ASCII command lines are predicted".into(),
                ));
            }
            Some(String::from_utf8_lossy(text).into_owned())
        }
        None => None,
    };
    let addon = Addon {
        cmdline,
        uname: image(".uname")?,
        dtb: image(".dtb")?,
        dtbauto: pe.section(".dtbauto").is_some(),
        initrd: image(".initrd")?,
        ucode: image(".ucode")?,
    };
    if addon.cmdline.is_none()
        && addon.dtb.is_none()
        && !addon.dtbauto
        && addon.initrd.is_none()
        && addon.ucode.is_none()
    {
        return Err(Error::InvalidInput(
            "has none of .cmdline .dtb .dtbauto .initrd .ucode: nothing the stub would use".into(),
        ));
    }
    Ok(addon)
}

/// One PCR 12 measurement the stub makes for addons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddonEvent<'a> {
    /// `None`: the `EV_IPL` event of the joined command lines; else the `EV_EVENT_TAG` ID.
    pub tag: Option<u32>,
    /// The event's description: the joined command line, or the addon's file name.
    pub description: String,
    /// The bytes the stub hashes.
    pub data: std::borrow::Cow<'a, [u8]>,
    /// Which addons it covers (their labels as given).
    pub addons: Vec<String>,
}

/// The addons' PCR 12 events, split where the stub measures other things between them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddonEvents<'a> {
    /// Before the sidecar archives (after a passed command line): the joined command lines,
    /// then each installed devicetree.
    pub before_sidecars: Vec<AddonEvent<'a>>,
    /// After the sidecar archives: microcode (reverse load order), then initrds.
    pub after_sidecars: Vec<AddonEvent<'a>>,
}

/// What a stub of `semantics` measures into PCR 12 for `addons`, given in the stub's load order
/// (global ones sorted, then the UKI's own sorted; those it skips for `.uname` left out), each
/// as (label, file name, addon). Refused: stubs before 256 (254 measured each command line on
/// its own and 255 devicetree addons differently; neither is predicted), devicetree addons
/// before 257, and `.dtbauto` in an addon.
pub fn events<'a>(
    semantics: pcr11::StubSemantics,
    addons: &'a [(String, String, Addon)],
) -> Result<AddonEvents<'a>, Error> {
    use pcr11::StubSemantics;
    let mut out = AddonEvents::default();
    if semantics < StubSemantics::Systemd256 {
        return Err(Error::InvalidInput(
            "addons under systemd 254-255 (measured one by one in 254, joined from 255) are not predicted; give --stub-semantics 256 or later".into(),
        ));
    }
    // Before 257 the stub takes only .cmdline and .dtb and skips an addon with neither.
    let v257 = semantics >= StubSemantics::Systemd257;
    let used: Vec<&(String, String, Addon)> = addons
        .iter()
        .filter(|(_, _, a)| v257 || a.cmdline.is_some() || a.dtb.is_some())
        .collect();
    if let Some((label, _, _)) = used.iter().find(|(_, _, a)| a.dtbauto) {
        return Err(Error::InvalidInput(format!(
            "addon {label} has .dtbauto: whether the stub selects it for a machine is not predicted"
        )));
    }
    if let Some((label, _, _)) = used.iter().find(|(_, _, a)| !v257 && a.dtb.is_some()) {
        return Err(Error::InvalidInput(format!(
            "addon {label} has .dtb: devicetree addons are predicted for systemd 257 and later"
        )));
    }
    let with_cmdline: Vec<&(String, String, Addon)> = used
        .iter()
        .copied()
        .filter(|(_, _, a)| a.cmdline.is_some())
        .collect();
    if let Some(text) = combined_cmdline(
        with_cmdline
            .iter()
            .filter_map(|(_, _, a)| a.cmdline.as_deref()),
    ) {
        out.before_sidecars.push(AddonEvent {
            tag: None,
            data: cmdline_event_data(&text).into(),
            description: text,
            addons: with_cmdline.iter().map(|(l, _, _)| l.clone()).collect(),
        });
    }
    let tagged =
        |(label, file, _): &(String, String, Addon), tag: u32, data: &'a [u8]| AddonEvent {
            tag: Some(tag),
            description: file.clone(),
            data: data.into(),
            addons: vec![label.clone()],
        };
    if v257 {
        for entry in used.iter().copied() {
            if let Some(d) = &entry.2.dtb {
                out.before_sidecars
                    .push(tagged(entry, DEVICETREE_ADDON_EVENT_TAG_ID, d));
            }
        }
        for entry in used.iter().rev().copied() {
            if let Some(d) = &entry.2.ucode {
                out.after_sidecars
                    .push(tagged(entry, UCODE_ADDON_EVENT_TAG_ID, d));
            }
        }
        for entry in used.iter().copied() {
            if let Some(d) = &entry.2.initrd {
                out.after_sidecars
                    .push(tagged(entry, INITRD_ADDON_EVENT_TAG_ID, d));
            }
        }
    }
    Ok(out)
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

    fn addon(
        cmdline: Option<&str>,
        dtb: Option<&[u8]>,
        initrd: Option<&[u8]>,
        ucode: Option<&[u8]>,
    ) -> Addon {
        Addon {
            cmdline: cmdline.map(str::to_owned),
            uname: None,
            dtb: dtb.map(<[u8]>::to_vec),
            dtbauto: false,
            initrd: initrd.map(<[u8]>::to_vec),
            ucode: ucode.map(<[u8]>::to_vec),
        }
    }

    #[test]
    fn events_follow_the_257_stubs_order() {
        use crate::pcr11::StubSemantics;
        // Load order: global a, global b, then the UKI's own c.
        let addons = vec![
            (
                "g/a".to_owned(),
                "a.addon.efi".to_owned(),
                addon(Some("x=1"), None, Some(b"IA"), Some(b"UA")),
            ),
            (
                "g/b".to_owned(),
                "b.addon.efi".to_owned(),
                addon(None, Some(b"DB"), None, Some(b"UB")),
            ),
            (
                "l/c".to_owned(),
                "c.addon.efi".to_owned(),
                addon(Some(" y=2 "), Some(b"DC"), Some(b"IC"), None),
            ),
        ];
        let e = events(StubSemantics::Systemd257, &addons).unwrap();
        let show = |v: &[AddonEvent<'_>]| -> Vec<(Option<u32>, String, Vec<u8>)> {
            v.iter()
                .map(|e| (e.tag, e.description.clone(), e.data.to_vec()))
                .collect()
        };
        assert_eq!(
            show(&e.before_sidecars),
            vec![
                (None, "x=1 y=2".to_owned(), cmdline_event_data("x=1 y=2")),
                (
                    Some(DEVICETREE_ADDON_EVENT_TAG_ID),
                    "b.addon.efi".to_owned(),
                    b"DB".to_vec()
                ),
                (
                    Some(DEVICETREE_ADDON_EVENT_TAG_ID),
                    "c.addon.efi".to_owned(),
                    b"DC".to_vec()
                ),
            ]
        );
        // Microcode in reverse load order, then initrds in load order.
        assert_eq!(
            show(&e.after_sidecars),
            vec![
                (
                    Some(UCODE_ADDON_EVENT_TAG_ID),
                    "b.addon.efi".to_owned(),
                    b"UB".to_vec()
                ),
                (
                    Some(UCODE_ADDON_EVENT_TAG_ID),
                    "a.addon.efi".to_owned(),
                    b"UA".to_vec()
                ),
                (
                    Some(INITRD_ADDON_EVENT_TAG_ID),
                    "a.addon.efi".to_owned(),
                    b"IA".to_vec()
                ),
                (
                    Some(INITRD_ADDON_EVENT_TAG_ID),
                    "c.addon.efi".to_owned(),
                    b"IC".to_vec()
                ),
            ]
        );
        // 256 takes command lines only; a devicetree there is not predicted; 254 not at all.
        let only_initrd = vec![(
            "l/i".to_owned(),
            "i.addon.efi".to_owned(),
            addon(Some("z"), None, Some(b"I"), Some(b"U")),
        )];
        let e = events(StubSemantics::Systemd256, &only_initrd).unwrap();
        assert_eq!(e.before_sidecars.len(), 1);
        assert!(e.after_sidecars.is_empty());
        assert!(events(StubSemantics::Systemd256, &addons).is_err());
        assert!(events(StubSemantics::Systemd254, &only_initrd).is_err());
        let mut auto = addons.clone();
        auto[1].2.dtbauto = true;
        assert!(events(StubSemantics::Systemd258, &auto)
            .unwrap_err()
            .to_string()
            .contains(".dtbauto"));
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

    /// ukify 257's addon with every kind (`--cmdline imgctl.addon=2 --initrd --microcode
    /// --devicetree`), a fuzz corpus seed.
    const UKIFY_ALL: &[u8] = include_bytes!("../../fuzz/corpus/addon/initrd-ucode-dtb.addon.efi");

    #[test]
    fn ukifys_initrd_ucode_dtb_addon_reads_back() {
        let a = read(UKIFY_ALL).unwrap();
        assert_eq!(a.cmdline.as_deref(), Some("imgctl.addon=2"));
        assert_eq!(a.initrd.as_deref(), Some(&b"IMGCTLINITRD0000"[..]));
        assert_eq!(a.ucode.as_deref(), Some(&b"UCODE"[..]));
        assert_eq!(
            a.dtb.as_ref().map(|d| &d[..4]),
            Some(&[0xd0, 0x0d, 0xfe, 0xed][..])
        );
        assert!(!a.dtbauto);
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
            let mut all = UKIFY_ALL.to_vec();
            let mut data = UKIFY_ADDON.to_vec();
            for (at, b) in flips {
                data[at % UKIFY_ADDON.len()] = b;
                let n = all.len();
                all[at % n] = b;
            }
            if let Ok(a) = read(&all) {
                let addons = [("p".to_owned(), "p.addon.efi".to_owned(), a)];
                let _ = events(crate::pcr11::StubSemantics::Systemd257, &addons);
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
