//! The Linux kernel image's own version string, for the `.uname` section.
//!
//! x86 boot protocol (Documentation/arch/x86/boot.rst): the setup header at 0x1f1 carries the
//! magic `HdrS` at 0x202, the protocol version at 0x206 and, from protocol 2.00, a pointer at
//! 0x20e to a NUL-terminated version string located at that value + 0x200. The string starts
//! with the release `uname -r` prints, e.g. `6.1.0-28-amd64 (debian-kernel@…) #1 SMP …`.

use imgctl_measure::pe::PeFile;
use imgctl_measure::reader::Reader;

/// Offset of the boot sector's `boot_flag` (0xAA55) in the x86 setup header.
const BOOT_FLAG: usize = 0x1fe;
/// Offset of the setup header magic `HdrS`.
const HEADER_MAGIC: usize = 0x202;
/// The arm64 Image header's magic (`ARM\x64`) sits at 0x38 (Documentation/arch/arm64/booting.rst).
const ARM64_MAGIC: usize = 0x38;

/// Checks that `image` is a kernel the x86-64 stub can start: an x86 Linux boot image with the
/// boot sector's `boot_flag` 0xAA55 at 0x1fe and the setup header magic `HdrS` at 0x202. The
/// error says what the file is instead (empty, an arm64 Image, a finished UKI, anything else).
pub fn check_kernel(image: &[u8]) -> Result<(), String> {
    if image.is_empty() {
        return Err("is empty; a UKI needs a kernel in its .linux section".into());
    }
    if image.get(ARM64_MAGIC..ARM64_MAGIC + 4) == Some(b"ARM\x64") {
        return Err(
            "is an arm64 kernel Image; the stub is x86-64 and starts an x86 bzImage".into(),
        );
    }
    if let Ok(pe) = PeFile::parse(image) {
        if pe.section(".linux").is_some() {
            return Err("is already a UKI (it has a .linux section), not a kernel".into());
        }
    }
    let boot_flag = image.get(BOOT_FLAG..BOOT_FLAG + 2) == Some(&[0x55, 0xaa][..]);
    let magic = image.get(HEADER_MAGIC..HEADER_MAGIC + 4) == Some(b"HdrS");
    if !boot_flag || !magic {
        return Err(format!(
            "is not an x86 Linux kernel (bzImage): no boot_flag 0xAA55 at 0x1fe and setup header \"HdrS\" at 0x202 ({} bytes)",
            image.len()
        ));
    }
    Ok(())
}

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

    #[test]
    fn only_x86_boot_images_are_kernels() {
        let mut img = vec![0u8; 0x600];
        assert!(check_kernel(&[]).unwrap_err().contains("empty"));
        assert!(check_kernel(&img).unwrap_err().contains("HdrS"));
        img[0x1fe..0x200].copy_from_slice(&[0x55, 0xaa]);
        img[0x202..0x206].copy_from_slice(b"HdrS");
        check_kernel(&img).unwrap();
        let mut arm = vec![0u8; 0x600];
        arm[0x38..0x3c].copy_from_slice(b"ARM\x64");
        assert!(check_kernel(&arm).unwrap_err().contains("arm64"));
        assert!(check_kernel(b"random bytes")
            .unwrap_err()
            .contains("bzImage"));
    }
}
