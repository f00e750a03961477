//! The systemd-stub PCR 11 model: which UKI sections the stub measures, in which order, and the
//! systemd-pcrphase words that follow. Shared by the predictor and by our own stub, so that the
//! two cannot disagree. This module uses `core` only.
//!
//! For each present, measured section, in canonical order (not PE file order), the stub extends
//! PCR 11 twice with `EV_IPL` events whose description is the UTF-16 section name:
//! 1. `H(name || 0x00)` — the ASCII section name with one trailing NUL;
//! 2. `H(content)` — `VirtualSize` bytes of the section as loaded (zero-filled past raw data).
//!
//! `.pcrsig` is never measured (it holds the signature over these very values).
//! Sources: systemd `src/fundamental/uki.h` (enum `UnifiedSection`, "the canonical order in which
//! we measure the sections into TPM PCR 11"), `src/boot/stub.c` `measure_sections()`;
//! ../shared/reference/systemd.md §1.1–1.2.

/// PCR the stub measures UKI sections into.
pub const PCR_KERNEL_IMAGE: u32 = 11;
/// PCR for the kernel command line passed in LoadOptions, credentials, confext cpios.
pub const PCR_KERNEL_PARAMETERS: u32 = 12;
/// PCR for system extension images handed over through the ESP.
pub const PCR_INITRD_SYSEXTS: u32 = 13;

/// The EV_IPL descriptions of the sidecar cpio archives the stub builds from the files beside
/// the UKI (src/boot/stub.c `generate_sidecar_initrds()`, 252 through 258). The event's data is
/// the description (UTF-16), its digest the archive's hash, not the description's.
pub const CREDENTIALS_INITRD: &str = "Credentials initrd";
pub const GLOBAL_CREDENTIALS_INITRD: &str = "Global credentials initrd";
pub const SYSEXT_INITRD: &str = "System extension initrd";
pub const CONFEXT_INITRD: &str = "Configuration extension initrd";
/// Every sidecar archive description, with the PCR it is measured into.
pub const SIDECAR_ARCHIVES: [(&str, u32); 4] = [
    (CREDENTIALS_INITRD, PCR_KERNEL_PARAMETERS),
    (GLOBAL_CREDENTIALS_INITRD, PCR_KERNEL_PARAMETERS),
    (SYSEXT_INITRD, PCR_INITRD_SYSEXTS),
    (CONFEXT_INITRD, PCR_KERNEL_PARAMETERS),
];

/// Which systemd-stub's measurements apply: one row of [`STUB_VERSIONS`] per systemd version
/// that changed what the stub measures. Sections a stub does not know are ignored by it
/// (neither measured nor used), so the same UKI can measure differently under different stubs.
///
/// Serialised (manifest, log entries) as [`StubSemantics::name`] spells it, `systemd-<version>`
/// (the serde impls are in `manifest.rs`: this file is also compiled into the `no_std` stub).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StubSemantics {
    /// systemd 252–253 (Debian 12).
    Systemd252,
    /// systemd 254–255: `.uname` and `.sbat` measured.
    Systemd254,
    /// systemd 256: `.ucode`; confext images beside the UKI (PCR 12).
    Systemd256,
    /// systemd 257 (Debian 13): `.profile`, `.dtbauto` (measured only when selected), `.hwids`;
    /// the profile tag in PCR 12.
    Systemd257,
    /// systemd 258 and later: `.efifw`.
    Systemd258,
}

/// One row of the version table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StubVersion {
    pub semantics: StubSemantics,
    /// The first systemd version that measures this way.
    pub since: u32,
    /// The spelling in manifests, log entries and `--stub-semantics`.
    pub name: &'static str,
    /// Every section the stub knows, in canonical measurement order (`enum UnifiedSection` of
    /// that version's `src/fundamental/uki.h`, or `tpm-pcr.h` before 254).
    pub sections: &'static [&'static str],
    /// Whether `*.confext.raw` beside the UKI become a confext cpio measured into PCR 12 (else
    /// every `*.raw` is a sysext, PCR 13).
    pub confext_sidecars: bool,
}

/// Canonical order of `enum UnifiedSection` in systemd 252.
pub const SECTIONS_252: &[&str] = &[
    ".linux", ".osrel", ".cmdline", ".initrd", ".splash", ".dtb", ".pcrsig", ".pcrpkey",
];

/// systemd 254: `.uname` and `.sbat` after `.dtb`.
pub const SECTIONS_254: &[&str] = &[
    ".linux", ".osrel", ".cmdline", ".initrd", ".splash", ".dtb", ".uname", ".sbat", ".pcrsig",
    ".pcrpkey",
];

/// systemd 256: `.ucode` after `.initrd`.
pub const SECTIONS_256: &[&str] = &[
    ".linux", ".osrel", ".cmdline", ".initrd", ".ucode", ".splash", ".dtb", ".uname", ".sbat",
    ".pcrsig", ".pcrpkey",
];

/// systemd 257: `.profile`, `.dtbauto`, `.hwids` at the end.
pub const SECTIONS_257: &[&str] = &[
    ".linux", ".osrel", ".cmdline", ".initrd", ".ucode", ".splash", ".dtb", ".uname", ".sbat",
    ".pcrsig", ".pcrpkey", ".profile", ".dtbauto", ".hwids",
];

/// systemd 258: `.efifw` at the end.
pub const SECTIONS_258: &[&str] = &[
    ".linux", ".osrel", ".cmdline", ".initrd", ".ucode", ".splash", ".dtb", ".uname", ".sbat",
    ".pcrsig", ".pcrpkey", ".profile", ".dtbauto", ".hwids", ".efifw",
];

/// What each systemd-stub version measures, oldest first. Sources: systemd NEWS and
/// `src/fundamental/uki.h` of each release; ../shared/reference/systemd-257-and-later.md.
pub const STUB_VERSIONS: &[StubVersion] = &[
    StubVersion {
        semantics: StubSemantics::Systemd252,
        since: 252,
        name: "systemd-252",
        sections: SECTIONS_252,
        confext_sidecars: false,
    },
    StubVersion {
        semantics: StubSemantics::Systemd254,
        since: 254,
        name: "systemd-254",
        sections: SECTIONS_254,
        confext_sidecars: false,
    },
    StubVersion {
        semantics: StubSemantics::Systemd256,
        since: 256,
        name: "systemd-256",
        sections: SECTIONS_256,
        confext_sidecars: true,
    },
    StubVersion {
        semantics: StubSemantics::Systemd257,
        since: 257,
        name: "systemd-257",
        sections: SECTIONS_257,
        confext_sidecars: true,
    },
    StubVersion {
        semantics: StubSemantics::Systemd258,
        since: 258,
        name: "systemd-258",
        sections: SECTIONS_258,
        confext_sidecars: true,
    },
];

/// The section that is never measured: it carries the signature over the measured values.
pub const PCRSIG: &str = ".pcrsig";

impl StubSemantics {
    /// The newest row of the table.
    pub const LATEST: StubSemantics = StubSemantics::Systemd258;
    /// What our own stub (uki-stub/) implements; its `.sdmagic` names it `imgctl-stub`.
    pub const IMGCTL_STUB: StubSemantics = StubSemantics::Systemd258;

    /// This row of [`STUB_VERSIONS`].
    pub fn version(self) -> &'static StubVersion {
        let mut i = 0;
        while i + 1 < STUB_VERSIONS.len() && STUB_VERSIONS[i].semantics != self {
            i += 1;
        }
        &STUB_VERSIONS[i]
    }

    /// Every section this stub knows, in canonical measurement order.
    pub fn sections(self) -> &'static [&'static str] {
        self.version().sections
    }

    /// The sections this stub measures into PCR 11, in order.
    pub fn measured_sections(self) -> impl Iterator<Item = &'static str> {
        self.sections().iter().copied().filter(|s| *s != PCRSIG)
    }

    /// Whether this stub knows (and so uses) a section of that name.
    pub fn knows(self, name: &str) -> bool {
        self.sections().contains(&name)
    }

    /// Which row a systemd-stub of that major version follows: the newest row not newer than
    /// it (a stub older than 252 is taken as 252; one newer than the table as its last row).
    pub fn for_systemd_version(major: u32) -> Self {
        let mut out = STUB_VERSIONS[0].semantics;
        for v in STUB_VERSIONS {
            if v.since <= major {
                out = v.semantics;
            }
        }
        out
    }

    /// `systemd-<version>`.
    pub fn name(self) -> &'static str {
        self.version().name
    }

    /// Reads `systemd-<N>` or `<N>` for any systemd version N ≥ 252 (`257`, `systemd-255`):
    /// the row that version measures by. `None` for anything else.
    pub fn from_version_name(s: &str) -> Option<Self> {
        let digits = s.strip_prefix("systemd-").unwrap_or(s);
        if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let mut major = 0u32;
        for b in digits.bytes() {
            major = major * 10 + u32::from(b - b'0');
        }
        (major >= STUB_VERSIONS[0].since).then(|| Self::for_systemd_version(major))
    }
}

/// One PCR 11 measurement the stub makes: the event description is `section` in UTF-16, the
/// digest is taken over `data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SectionEvent<'a> {
    /// The section name with its trailing NUL, e.g. `b".linux\0"`.
    Name(&'a str),
    /// The section's in-memory bytes.
    Content(&'a [u8]),
}

/// The ASCII bytes the stub hashes for a section name: the name and one NUL.
/// Returned as a fixed buffer and length (section names have at most 8 bytes).
pub fn name_bytes(name: &str) -> ([u8; 9], usize) {
    let mut buf = [0u8; 9];
    let n = name.len().min(8);
    buf[..n].copy_from_slice(&name.as_bytes()[..n]);
    (buf, n + 1)
}

/// systemd-stub's `mangle_stub_cmdline()` on a UTF-16 command line (no NUL): leading
/// whitespace dropped, every inner control character or space (`<= 0x20`, `0x7f`) turned into
/// one space, trailing whitespace dropped. Works in place; returns the new length. The stub
/// measures the result, UTF-16LE with a trailing NUL (`strsize16`), into PCR 12 as an `EV_IPL`
/// event whose description is the same string (systemd `src/boot/util.c`, `src/boot/stub.c`
/// `use_load_options()`, `src/boot/measure.c` `tpm_log_load_options()`).
pub fn mangle_cmdline(buf: &mut [u16]) -> usize {
    let is_space = |c: u16| c <= 0x20 || c == 0x7f;
    let mut out = 0;
    let mut end = 0;
    let mut started = false;
    let mut i = 0;
    while i < buf.len() {
        let c = buf[i];
        i += 1;
        if c == 0 {
            break;
        }
        if is_space(c) {
            if started {
                buf[out] = b' ' as u16;
                out += 1;
            }
            continue;
        }
        started = true;
        buf[out] = c;
        out += 1;
        end = out;
    }
    end
}

/// The systemd-pcrphase words, in the order a normal boot extends them.
pub const PHASE_WORDS: &[&str] = &[
    "enter-initrd",
    "leave-initrd",
    "sysinit",
    "ready",
    "shutdown",
    "final",
];

/// The phase paths `systemd-measure calculate/sign` uses when none are given.
pub const DEFAULT_PHASE_PATHS: &[&str] = &[
    "enter-initrd",
    "enter-initrd:leave-initrd",
    "enter-initrd:leave-initrd:sysinit",
    "enter-initrd:leave-initrd:sysinit:ready",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcrsig_is_never_measured_and_order_is_canonical() {
        for v in STUB_VERSIONS {
            let s = v.semantics;
            assert_eq!(s.version(), v);
            assert!(s.knows(PCRSIG));
            assert!(s.measured_sections().all(|n| n != PCRSIG));
            assert_eq!(s.measured_sections().next(), Some(".linux"));
        }
        // Each version's list is the next one's with that version's additions removed, order
        // kept: sections are only ever added.
        for pair in STUB_VERSIONS.windows(2) {
            let (old, new) = (pair[0].sections, pair[1].sections);
            let filtered: Vec<_> = new.iter().filter(|s| old.contains(s)).collect();
            assert_eq!(filtered, old.iter().collect::<Vec<_>>(), "{}", pair[1].name);
            assert!(pair[0].since < pair[1].since && pair[0].semantics < pair[1].semantics);
        }
    }

    #[test]
    fn a_systemd_version_maps_to_the_newest_row_not_newer_than_it() {
        use StubSemantics::*;
        for (major, want) in [
            (249, Systemd252),
            (252, Systemd252),
            (253, Systemd252),
            (254, Systemd254),
            (255, Systemd254),
            (256, Systemd256),
            (257, Systemd257),
            (258, Systemd258),
            (260, Systemd258),
        ] {
            assert_eq!(StubSemantics::for_systemd_version(major), want, "{major}");
        }
        assert_eq!(
            StubSemantics::from_version_name("systemd-255"),
            Some(Systemd254)
        );
        assert_eq!(StubSemantics::from_version_name("257"), Some(Systemd257));
        for bad in [
            "",
            "systemd-",
            "251",
            "systemd252",
            "upstream",
            "257.13",
            "99999",
            "-1",
        ] {
            assert_eq!(StubSemantics::from_version_name(bad), None, "{bad:?}");
        }
        for v in STUB_VERSIONS {
            assert_eq!(StubSemantics::from_version_name(v.name), Some(v.semantics));
        }
    }

    #[test]
    fn mangle_cmdline_trims_and_turns_controls_into_spaces() {
        let mangle = |s: &str| {
            let mut v: Vec<u16> = s.encode_utf16().collect();
            let n = mangle_cmdline(&mut v);
            String::from_utf16_lossy(&v[..n])
        };
        assert_eq!(mangle("  console=ttyS0\tquiet \n "), "console=ttyS0 quiet");
        assert_eq!(mangle("a\x7fb"), "a b");
        assert_eq!(mangle("a  b"), "a  b");
        assert_eq!(mangle("ab\0cd"), "ab");
        assert_eq!(mangle(" \r\n"), "");
    }

    #[test]
    fn name_bytes_end_in_one_nul() {
        let (b, n) = name_bytes(".linux");
        assert_eq!(&b[..n], b".linux\0");
        let (b, n) = name_bytes(".pcrpkey");
        assert_eq!(&b[..n], b".pcrpkey\0");
    }
}
