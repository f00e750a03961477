//! The Linux kernel image's own version string, for the `.uname` section.
//!
//! x86 boot protocol (Documentation/arch/x86/boot.rst): the setup header at 0x1f1 carries the
//! magic `HdrS` at 0x202, the protocol version at 0x206 and, from protocol 2.00, a pointer at
//! 0x20e to a NUL-terminated version string located at that value + 0x200. The string starts
//! with the release `uname -r` prints, e.g. `6.1.0-28-amd64 (debian-kernel@…) #1 SMP …`.

use imgctl_measure::reader::Reader;

/// Reads the kernel release from a bzImage, or `None` when the image has no such string.
pub fn kernel_release(image: &[u8]) -> Option<String> {
    let mut r = Reader::new(image);
    r.skip(0x202, "").ok()?;
    if r.array::<4>("").ok()? != *b"HdrS" {
        return None;
    }
    let version = r.u16_le("").ok()?;
    if version < 0x0200 {
        return None;
    }
    let mut r = Reader::new(image);
    r.skip(0x20e, "").ok()?;
    let ptr = r.u16_le("").ok()? as usize + 0x200;
    let tail = image.get(ptr..)?;
    let end = tail.iter().take(256).position(|&b| b == 0)?;
    let s = std::str::from_utf8(&tail[..end]).ok()?;
    let release = s.split_whitespace().next()?;
    (!release.is_empty()).then(|| release.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_release_from_a_setup_header() {
        let mut img = vec![0u8; 0x600];
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        img[0x20e..0x210].copy_from_slice(&0x0300u16.to_le_bytes());
        let s = b"6.1.0-28-amd64 (debian-kernel@lists.debian.org) #1 SMP\0";
        img[0x500..0x500 + s.len()].copy_from_slice(s);
        assert_eq!(kernel_release(&img).as_deref(), Some("6.1.0-28-amd64"));
        assert_eq!(kernel_release(b"short"), None);
        img[0x20e..0x210].copy_from_slice(&0xffffu16.to_le_bytes());
        assert_eq!(kernel_release(&img), None);
    }
}
