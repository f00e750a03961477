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

/// Which stub's section list applies. Sections a stub does not know are ignored by it (neither
/// measured nor used), so the same UKI can measure differently under different stubs.
///
/// Serialised (manifest, log entries) as [`StubSemantics::name`] spells it, and only so (the
/// serde impls are in `manifest.rs`: this file is also compiled into the `no_std` stub).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StubSemantics {
    /// systemd 252/253 (Debian 12's systemd-stub): `.linux .osrel .cmdline .initrd .splash .dtb
    /// .pcrsig .pcrpkey`.
    Systemd252,
    /// Current upstream systemd-stub: adds `.ucode .uname .sbat .profile .dtbauto .hwids .efifw`.
    Upstream,
}

/// Canonical order of `enum UnifiedSection` in systemd 252.
pub const SECTIONS_252: &[&str] = &[
    ".linux", ".osrel", ".cmdline", ".initrd", ".splash", ".dtb", ".pcrsig", ".pcrpkey",
];

/// Canonical order of `enum UnifiedSection` in current upstream systemd (uki.h).
pub const SECTIONS_UPSTREAM: &[&str] = &[
    ".linux", ".osrel", ".cmdline", ".initrd", ".ucode", ".splash", ".dtb", ".uname", ".sbat",
    ".pcrsig", ".pcrpkey", ".profile", ".dtbauto", ".hwids", ".efifw",
];

/// The section that is never measured: it carries the signature over the measured values.
pub const PCRSIG: &str = ".pcrsig";

impl StubSemantics {
    /// Every section this stub knows, in canonical measurement order.
    pub fn sections(self) -> &'static [&'static str] {
        match self {
            StubSemantics::Systemd252 => SECTIONS_252,
            StubSemantics::Upstream => SECTIONS_UPSTREAM,
        }
    }

    /// The sections this stub measures into PCR 11, in order.
    pub fn measured_sections(self) -> impl Iterator<Item = &'static str> {
        self.sections().iter().copied().filter(|s| *s != PCRSIG)
    }

    /// Whether this stub knows (and so uses) a section of that name.
    pub fn knows(self, name: &str) -> bool {
        self.sections().contains(&name)
    }

    /// Which semantics a systemd-stub of that major version follows. Only 252 (Debian 12) has
    /// been checked against a real boot; later versions are taken to follow the upstream list,
    /// which measures identically for UKIs without the sections added after 252.
    pub fn for_systemd_version(major: u32) -> Self {
        if major <= 252 {
            StubSemantics::Systemd252
        } else {
            StubSemantics::Upstream
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            StubSemantics::Systemd252 => "systemd-252",
            StubSemantics::Upstream => "upstream",
        }
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
        for s in [StubSemantics::Systemd252, StubSemantics::Upstream] {
            assert!(s.knows(PCRSIG));
            assert!(s.measured_sections().all(|n| n != PCRSIG));
            assert_eq!(s.measured_sections().next(), Some(".linux"));
        }
        // The v252 list is the upstream list with the later additions removed, order kept.
        let filtered: Vec<_> = SECTIONS_UPSTREAM
            .iter()
            .filter(|s| SECTIONS_252.contains(s))
            .collect();
        assert_eq!(filtered, SECTIONS_252.iter().collect::<Vec<_>>());
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
