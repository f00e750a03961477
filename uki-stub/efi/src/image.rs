//! The stub's own PE image as the firmware loaded it: find a section's in-memory bytes
//! (`VirtualSize` bytes at `VirtualAddress`, what systemd-stub measures and uses). Safe code
//! over the loaded image's bytes; every offset is checked.

/// Why the image's headers could not be read.
#[derive(Clone, Copy, Debug)]
pub struct BadImage(pub &'static str);

fn u16_at(b: &[u8], at: usize) -> Result<u16, BadImage> {
    let s = b.get(at..at + 2).ok_or(BadImage("PE header truncated"))?;
    Ok(u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, BadImage> {
    let s = b.get(at..at + 4).ok_or(BadImage("PE header truncated"))?;
    Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// The section headers of a loaded PE image.
pub struct Image<'a> {
    bytes: &'a [u8],
    table: usize,
    count: usize,
}

const SECTION_HEADER_SIZE: usize = 40;

impl<'a> Image<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Self, BadImage> {
        if bytes.get(..2) != Some(b"MZ") {
            return Err(BadImage("no MZ signature"));
        }
        let pe = u32_at(bytes, 0x3c)? as usize;
        if bytes.get(pe..pe + 4) != Some(b"PE\0\0") {
            return Err(BadImage("no PE signature"));
        }
        let count = u16_at(bytes, pe + 6)? as usize;
        let opt_size = u16_at(bytes, pe + 20)? as usize;
        let table = pe + 24 + opt_size;
        if bytes
            .get(table..table + count * SECTION_HEADER_SIZE)
            .is_none()
        {
            return Err(BadImage("section table outside the image"));
        }
        Ok(Image {
            bytes,
            table,
            count,
        })
    }

    /// Section headers in table order: (name, in-memory bytes). A section whose bytes lie
    /// outside the loaded image is reported as an error.
    fn sections(&self) -> impl Iterator<Item = Result<([u8; 8], &'a [u8]), BadImage>> + '_ {
        (0..self.count).map(move |i| {
            let h = self.table + i * SECTION_HEADER_SIZE;
            let mut name = [0u8; 8];
            name.copy_from_slice(
                self.bytes
                    .get(h..h + 8)
                    .ok_or(BadImage("section table truncated"))?,
            );
            let vsize = u32_at(self.bytes, h + 8)? as usize;
            let va = u32_at(self.bytes, h + 12)? as usize;
            let data = self
                .bytes
                .get(
                    va..va
                        .checked_add(vsize)
                        .ok_or(BadImage("section size overflows"))?,
                )
                .ok_or(BadImage("a section lies outside the loaded image"))?;
            Ok((name, data))
        })
    }

    /// Whether the image is a multi-profile UKI (has a `.profile` section).
    pub fn has_profiles(&self) -> Result<bool, BadImage> {
        for s in self.sections() {
            if name_is(&s?.0, ".profile") {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The first section called `name` with a non-zero VirtualSize (systemd's
    /// `PE_SECTION_VECTOR_IS_SET`), if any.
    pub fn section(&self, name: &str) -> Result<Option<&'a [u8]>, BadImage> {
        for s in self.sections() {
            let (n, data) = s?;
            if name_is(&n, name) && !data.is_empty() {
                return Ok(Some(data));
            }
        }
        Ok(None)
    }
}

/// Whether an 8-byte, NUL-padded section name equals `name`.
fn name_is(raw: &[u8; 8], name: &str) -> bool {
    let len = raw.iter().position(|&c| c == 0).unwrap_or(8);
    &raw[..len] == name.as_bytes()
}
