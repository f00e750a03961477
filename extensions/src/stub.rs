//! What systemd-stub measures for the files it finds next to the UKI on the ESP
//! (`<uki>.efi.extra.d/`): credentials (`*.cred`) and extension images (`*.raw`). It packs each
//! kind into a cpio "sidecar initrd" and measures the whole archive as one EV_IPL event, digest =
//! hash of the archive: credentials into PCR 12, system extensions into PCR 13, configuration
//! extensions into PCR 12, in that order (`generate_sidecar_initrds()` in src/boot/stub.c, 252
//! through 258). `reference/systemd.md` §1.5 step 8.
//!
//! Archive layout, read from systemd's `src/boot/cpio.c` (identical at three versions: the
//! v251/252-era `src/boot/efi/cpio.c` with `measure_cpio(tpm_pcr[], n_tpm_pcr)`, a later
//! `src/boot/efi/cpio.c` and the current `src/boot/cpio.c`):
//! - newc records (`070701`, 13 eight-digit lowercase hex fields: ino, mode, uid 0, gid 0,
//!   nlink 1, mtime 0, filesize, devmajor 0, devminor 0, rdevmajor 0, rdevminor 0, namesize
//!   including the NUL, check 0), name and NUL padded to 4 bytes, data padded to 4 bytes;
//! - inodes count from 1: first a directory record for every leading component of the target
//!   prefix (mode `040555`), then the prefix itself (`040000 | dir_mode`), then one record per
//!   file named `PREFIX/NAME` (`0100000 | access_mode`), files sorted by `strcmp16` (byte order
//!   for the ASCII names it accepts); credentials use dir mode 0500 and access mode 0400,
//!   extensions 0555 and 0444;
//! - the fixed trailer record `TRAILER!!!` (namesize `0000000B`, nlink 1, 124 bytes).
//!
//! File selection: names not starting with `.`, ASCII, at most 255 characters, suffix matched
//! case-insensitively; v252 packs every `*.raw` as sysext (no confext); upstream packs `*.raw`
//! minus `*.confext.raw` as sysext under `.extra/sysext` and `*.confext.raw` under
//! `.extra/confext`; every version packs `*.cred` under `.extra/credentials` ("Credentials
//! initrd", PCR 12). No files: nothing is measured.

use imgctl_measure::bank::{Digest, HashAlg, Hasher, Pcr, UnsupportedAlg};
use imgctl_measure::{pcr11, StubSemantics};

/// Which sidecar archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sidecar {
    Credentials,
    Sysext,
    Confext,
}

impl Sidecar {
    /// Every sidecar, in the order the stub packs and measures them.
    pub const IN_STUB_ORDER: [Sidecar; 3] =
        [Sidecar::Credentials, Sidecar::Sysext, Sidecar::Confext];

    pub fn pcr(self) -> u32 {
        match self {
            Sidecar::Credentials | Sidecar::Confext => pcr11::PCR_KERNEL_PARAMETERS,
            Sidecar::Sysext => pcr11::PCR_INITRD_SYSEXTS,
        }
    }
    /// The EV_IPL event description (UTF-16 in the log).
    pub fn description(self) -> &'static str {
        match self {
            Sidecar::Credentials => pcr11::CREDENTIALS_INITRD,
            Sidecar::Sysext => pcr11::SYSEXT_INITRD,
            Sidecar::Confext => pcr11::CONFEXT_INITRD,
        }
    }
    pub fn prefix(self) -> &'static str {
        match self {
            Sidecar::Credentials => ".extra/credentials",
            Sidecar::Sysext => ".extra/sysext",
            Sidecar::Confext => ".extra/confext",
        }
    }
    /// The prefix directory's mode (its parents are always 0555).
    fn dir_mode(self) -> u32 {
        match self {
            Sidecar::Credentials => 0o500,
            Sidecar::Sysext | Sidecar::Confext => 0o555,
        }
    }
    /// Every packed file's mode.
    fn file_mode(self) -> u32 {
        match self {
            Sidecar::Credentials => 0o400,
            Sidecar::Sysext | Sidecar::Confext => 0o444,
        }
    }
}

/// The stub's trailer record (note the upper-case `B` in its namesize field).
pub const TRAILER: &[u8] = concat!(
    "070701",
    "00000000",
    "00000000",
    "00000000",
    "00000000",
    "00000001",
    "00000000",
    "00000000",
    "00000000",
    "00000000",
    "00000000",
    "00000000",
    "0000000B",
    "00000000",
    "TRAILER!!!\0\0\0\0"
)
.as_bytes();

fn ends_with_no_case(name: &str, suffix: &str) -> bool {
    name.len() >= suffix.len()
        && name.as_bytes()[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
}

/// The file names (as on the ESP) the stub packs into `sidecar`, in archive order.
pub fn select<'a>(semantics: StubSemantics, sidecar: Sidecar, names: &[&'a str]) -> Vec<&'a str> {
    let mut out: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| !n.starts_with('.') && n.is_ascii() && n.len() <= 255)
        .filter(|n| {
            let confext = ends_with_no_case(n, ".confext.raw");
            match (semantics.version().confext_sidecars, sidecar) {
                (_, Sidecar::Credentials) => ends_with_no_case(n, ".cred"),
                // Before confexts (v256), every *.raw is a system extension.
                (false, Sidecar::Sysext) => ends_with_no_case(n, ".raw"),
                (false, Sidecar::Confext) => false,
                (true, Sidecar::Sysext) => ends_with_no_case(n, ".raw") && !confext,
                (true, Sidecar::Confext) => confext,
            }
        })
        .collect();
    out.sort_unstable();
    out
}

fn record(ino: u32, mode: u32, size: u32, name: &str) -> Vec<u8> {
    let mut r = b"070701".to_vec();
    // namesize counts the NUL; a name fits easily in u32 (at most 255 + prefix).
    let namesize = name.len() as u32 + 1;
    for v in [ino, mode, 0, 0, 1, 0, size, 0, 0, 0, 0, namesize, 0] {
        r.extend(format!("{v:08x}").bytes());
    }
    r.extend(name.bytes());
    r.push(0);
    r.resize(r.len().div_ceil(4) * 4, 0);
    r
}

/// Zero bytes that follow `len` bytes of file data.
pub fn data_padding(len: u64) -> usize {
    ((4 - len % 4) % 4) as usize
}

/// The records before the first file: one per directory of the prefix. Returns the next inode.
pub fn prefix_records(sidecar: Sidecar) -> (Vec<u8>, u32) {
    let prefix = sidecar.prefix();
    let mut out = Vec::new();
    let mut ino = 1;
    for (i, _) in prefix.match_indices('/').filter(|(i, _)| *i > 0) {
        out.extend(record(ino, 0o040000 | 0o555, 0, &prefix[..i]));
        ino += 1;
    }
    out.extend(record(ino, 0o040000 | sidecar.dir_mode(), 0, prefix));
    (out, ino + 1)
}

/// The header of one file's record (name included, padded); the data and
/// [`data_padding`] follow.
pub fn file_header(sidecar: Sidecar, ino: u32, name: &str, size: u32) -> Vec<u8> {
    record(
        ino,
        0o100000 | sidecar.file_mode(),
        size,
        &format!("{}/{name}", sidecar.prefix()),
    )
}

/// The whole archive for in-memory files (name, content), or `None` when the stub would find
/// nothing to pack. Files must already be selected and sorted ([`select`]).
pub fn archive(sidecar: Sidecar, files: &[(&str, &[u8])]) -> Option<Vec<u8>> {
    if files.is_empty() {
        return None;
    }
    let (mut out, mut ino) = prefix_records(sidecar);
    for (name, data) in files {
        let size = u32::try_from(data.len()).ok()?;
        out.extend(file_header(sidecar, ino, name, size));
        out.extend_from_slice(data);
        out.resize(out.len() + data_padding(data.len() as u64), 0);
        ino += 1;
    }
    out.extend_from_slice(TRAILER);
    Some(out)
}

/// Hashes an archive as it is produced, in every bank at once.
#[derive(Debug)]
pub struct ArchiveHasher {
    sidecar: Sidecar,
    hashers: Vec<(HashAlg, Hasher)>,
    next_ino: u32,
    files: usize,
}

impl ArchiveHasher {
    pub fn new(sidecar: Sidecar, banks: &[HashAlg]) -> Result<Self, UnsupportedAlg> {
        let hashers = banks
            .iter()
            .map(|b| b.hasher().map(|h| (*b, h)))
            .collect::<Result<Vec<_>, _>>()?;
        let (prefix, next_ino) = prefix_records(sidecar);
        let mut s = ArchiveHasher {
            sidecar,
            hashers,
            next_ino,
            files: 0,
        };
        s.feed(&prefix);
        Ok(s)
    }

    fn feed(&mut self, data: &[u8]) {
        for (_, h) in &mut self.hashers {
            h.update(data);
        }
    }

    /// Starts a file; feed exactly `size` bytes with [`ArchiveHasher::data`], then
    /// [`ArchiveHasher::end_file`].
    pub fn begin_file(&mut self, name: &str, size: u32) {
        let h = file_header(self.sidecar, self.next_ino, name, size);
        self.feed(&h);
        self.next_ino += 1;
        self.files += 1;
    }

    pub fn data(&mut self, chunk: &[u8]) {
        self.feed(chunk);
    }

    pub fn end_file(&mut self, size: u32) {
        let pad = [0u8; 4];
        self.feed(&pad[..data_padding(u64::from(size))]);
    }

    /// The event digest per bank (`None` when no file was added: nothing is measured).
    pub fn finish(mut self) -> Option<Vec<(HashAlg, Digest)>> {
        if self.files == 0 {
            return None;
        }
        self.feed(TRAILER);
        Some(
            self.hashers
                .into_iter()
                .map(|(b, h)| (b, h.finish()))
                .collect(),
        )
    }
}

/// The PCR value after the stub's extends of `events` (in order) into a reset PCR: PCR 13 holds
/// nothing before them; PCR 12 holds these unless the stub also measured a passed command line,
/// addons or a profile.
pub fn pcr_after(bank: HashAlg, events: &[&Digest]) -> Result<Digest, UnsupportedAlg> {
    let mut p = Pcr::reset(bank)?;
    for e in events {
        p.extend(e);
    }
    Ok(p.value().clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailer_is_the_stubs_124_bytes() {
        assert_eq!(TRAILER.len(), 124);
        assert_eq!(TRAILER.len() % 4, 0);
    }

    #[test]
    fn layout_follows_cpio_c() {
        let a = archive(Sidecar::Sysext, &[("a.raw", b"xyz")]).unwrap();
        // ".extra" (ino 1, 040555), ".extra/sysext" (ino 2, 040555), the file (ino 3, 0100444).
        let s = String::from_utf8_lossy(&a);
        assert!(s.starts_with("070701000000010000416d0000000000000000000000010000000000000000"));
        assert!(s.contains("00000003000081240000000000000000000000010000000000000003"));
        assert!(s.contains(".extra/sysext/a.raw\0"));
        assert!(a.ends_with(TRAILER));
        let mut h = ArchiveHasher::new(Sidecar::Sysext, &[HashAlg::SHA256]).unwrap();
        h.begin_file("a.raw", 3);
        h.data(b"xyz");
        h.end_file(3);
        let d = h.finish().unwrap();
        assert_eq!(d[0].1, HashAlg::SHA256.hash(&a).unwrap());
    }

    #[test]
    fn selection_per_stub_version() {
        let names = ["b.raw", "A.RAW", "c.confext.raw", ".hidden.raw", "x.cred"];
        assert_eq!(
            select(StubSemantics::Systemd252, Sidecar::Sysext, &names),
            ["A.RAW", "b.raw", "c.confext.raw"]
        );
        assert_eq!(
            select(StubSemantics::Systemd254, Sidecar::Sysext, &names),
            ["A.RAW", "b.raw", "c.confext.raw"]
        );
        for s in [StubSemantics::Systemd256, StubSemantics::Systemd257] {
            assert_eq!(select(s, Sidecar::Sysext, &names), ["A.RAW", "b.raw"]);
            assert_eq!(select(s, Sidecar::Confext, &names), ["c.confext.raw"]);
        }
        assert!(select(StubSemantics::Systemd252, Sidecar::Confext, &names).is_empty());
        for s in [StubSemantics::Systemd252, StubSemantics::Systemd257] {
            let names = ["b.cred", "A.CRED", ".h.cred", "x.raw", "c.cred.txt"];
            assert_eq!(
                select(s, Sidecar::Credentials, &names),
                ["A.CRED", "b.cred"]
            );
        }
    }

    #[test]
    fn credentials_are_packed_private_under_extra_credentials() {
        let a = archive(Sidecar::Credentials, &[("k.cred", b"secret")]).unwrap();
        let s = String::from_utf8_lossy(&a);
        // ".extra" (ino 1, 040555), ".extra/credentials" (ino 2, 040500: dir_mode 0500),
        // the file (ino 3, 0100400: access_mode 0400), as stub.c packs "Credentials initrd".
        assert!(s.starts_with("070701000000010000416d"));
        assert!(s.contains("0707010000000200004140"));
        assert!(s.contains("07070100000003000081000000000000000000000000010000000000000006"));
        assert!(s.contains(".extra/credentials/k.cred\0"));
        assert_eq!(Sidecar::Credentials.pcr(), 12);
    }

    #[test]
    fn pcr_after_extends_in_order() {
        let b = HashAlg::SHA256;
        let (x, y) = (b.hash(b"x").unwrap(), b.hash(b"y").unwrap());
        let mut p = Pcr::reset(b).unwrap();
        p.extend(&x);
        p.extend(&y);
        assert_eq!(&pcr_after(b, &[&x, &y]).unwrap(), p.value());
        assert_ne!(
            pcr_after(b, &[&y, &x]).unwrap(),
            pcr_after(b, &[&x, &y]).unwrap()
        );
    }
}
