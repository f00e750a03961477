//! Flattened devicetree blobs (DTB), as far as systemd-stub reads them: the first string of
//! the root node's `compatible` property, by which a `.dtbauto` section is selected.
//!
//! Layout (Devicetree Specification v0.4, ch. 5; big-endian): a 40-byte header (`magic`
//! 0xd00dfeed, `totalsize`, `off_dt_struct`, `off_dt_strings`, `off_mem_rsvmap`, `version`,
//! `last_comp_version`, `boot_cpuid_phys`, `size_dt_strings`, `size_dt_struct`), then the
//! structure block: 4-byte aligned tokens `FDT_BEGIN_NODE` (1, NUL-terminated name),
//! `FDT_END_NODE` (2), `FDT_PROP` (3, u32 len, u32 name offset into the strings block, value),
//! `FDT_NOP` (4), `FDT_END` (9). A node's properties precede its children.
//!
//! The stub (systemd `src/boot/devicetree.c` `devicetree_match_by_compatible`) compares only
//! the first string of each side's root `compatible`; a blob it cannot read never matches.

use crate::reader::Reader;
use crate::ParseError;

/// The DTB header magic.
pub const FDT_MAGIC: u32 = 0xd00d_feed;
const HEADER_LEN: usize = 40;
const FDT_BEGIN_NODE: u32 = 1;
const FDT_END_NODE: u32 = 2;
const FDT_PROP: u32 = 3;
const FDT_NOP: u32 = 4;
const FDT_END: u32 = 9;

fn at<'a>(data: &'a [u8], off: u32, len: u32, what: &'static str) -> Result<&'a [u8], ParseError> {
    let (off, len) = (off as usize, len as usize);
    off.checked_add(len)
        .and_then(|end| data.get(off..end))
        .ok_or_else(|| {
            ParseError::new(
                off,
                what,
                format!(
                    "{len} bytes at {off} are past the blob's {} bytes",
                    data.len()
                ),
            )
        })
}

fn nul_terminated<'a>(b: &'a [u8], off: usize, what: &'static str) -> Result<&'a [u8], ParseError> {
    let end = b
        .iter()
        .position(|&c| c == 0)
        .ok_or_else(|| ParseError::new(off, what, "no terminating NUL"))?;
    Ok(&b[..end])
}

fn align4(r: &mut Reader<'_>, consumed: usize, what: &'static str) -> Result<(), ParseError> {
    let pad = (4 - consumed % 4) % 4;
    r.skip(pad.min(r.remaining()), what)
}

/// The first string of the root node's `compatible` property; `None` when the root has none.
pub fn root_compatible(data: &[u8]) -> Result<Option<String>, ParseError> {
    let mut h = Reader::new(data);
    let magic = h.u32_be("FDT magic")?;
    if magic != FDT_MAGIC {
        return Err(ParseError::new(
            0,
            "FDT magic",
            format!("{magic:#010x}, not 0xd00dfeed"),
        ));
    }
    let total = h.u32_be("totalsize")?;
    let off_struct = h.u32_be("off_dt_struct")?;
    let off_strings = h.u32_be("off_dt_strings")?;
    h.skip(4, "off_mem_rsvmap")?;
    let version = h.u32_be("version")?;
    h.skip(8, "last_comp_version, boot_cpuid_phys")?;
    let size_strings = h.u32_be("size_dt_strings")?;
    let size_struct = h.u32_be("size_dt_struct")?;
    if version < 17 {
        return Err(ParseError::new(
            20,
            "version",
            format!("{version}; only version 17 is read"),
        ));
    }
    if (total as usize) < HEADER_LEN || total as usize > data.len() {
        return Err(ParseError::new(
            4,
            "totalsize",
            format!("{total}, but the blob has {} bytes", data.len()),
        ));
    }
    let blob = &data[..total as usize];
    let strings = at(blob, off_strings, size_strings, "strings block")?;
    let mut r = Reader::at(
        at(blob, off_struct, size_struct, "structure block")?,
        off_struct as usize,
    );
    let mut depth = 0usize;
    loop {
        let token = r.u32_be("structure token")?;
        match token {
            FDT_BEGIN_NODE => {
                let start = r.offset();
                let rest = r.rest();
                let name = nul_terminated(rest, start, "node name")?;
                let mut r2 = Reader::at(rest, start);
                r2.skip(name.len() + 1, "node name")?;
                align4(&mut r2, name.len() + 1, "node name padding")?;
                r = r2;
                depth += 1;
                // The root's properties come before its first child: a child ends the search.
                if depth > 1 {
                    return Ok(None);
                }
            }
            FDT_PROP => {
                let len = r.u32_be("property length")?;
                let nameoff = r.u32_be("property name offset")?;
                let value = r.take(len as usize, "property value")?;
                align4(&mut r, len as usize, "property padding")?;
                if depth != 1 {
                    return Err(ParseError::new(
                        r.offset(),
                        "property",
                        "outside the root node",
                    ));
                }
                let name_bytes = strings.get(nameoff as usize..).ok_or_else(|| {
                    ParseError::new(r.offset(), "property name offset", "past the strings block")
                })?;
                if nul_terminated(name_bytes, r.offset(), "property name")? == b"compatible" {
                    let first = nul_terminated(value, r.offset(), "compatible")?;
                    let s = std::str::from_utf8(first)
                        .map_err(|_| ParseError::new(r.offset(), "compatible", "not UTF-8"))?;
                    return Ok(Some(s.to_owned()));
                }
            }
            FDT_NOP => {}
            FDT_END_NODE | FDT_END => return Ok(None),
            other => {
                return Err(ParseError::new(
                    r.offset() - 4,
                    "structure token",
                    format!("{other:#x} is not a token"),
                ))
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A minimal version-17 DTB: a root node with `props` (name, value), then one child.
    pub fn dtb(props: &[(&str, &[u8])]) -> Vec<u8> {
        let mut strings = Vec::new();
        let mut st = Vec::new();
        let tok = |v: &mut Vec<u8>, t: u32| v.extend_from_slice(&t.to_be_bytes());
        let pad = |v: &mut Vec<u8>| {
            while v.len() % 4 != 0 {
                v.push(0)
            }
        };
        tok(&mut st, FDT_BEGIN_NODE);
        st.extend_from_slice(&[0, 0, 0, 0]);
        for (name, value) in props {
            tok(&mut st, FDT_PROP);
            tok(&mut st, value.len() as u32);
            tok(&mut st, strings.len() as u32);
            strings.extend_from_slice(name.as_bytes());
            strings.push(0);
            st.extend_from_slice(value);
            pad(&mut st);
        }
        tok(&mut st, FDT_BEGIN_NODE);
        st.extend_from_slice(b"cpus\0\0\0\0");
        tok(&mut st, FDT_END_NODE);
        tok(&mut st, FDT_END_NODE);
        tok(&mut st, FDT_END);
        let rsv = 16usize; // one empty reservation entry
        let off_rsv = HEADER_LEN;
        let off_struct = off_rsv + rsv;
        let off_strings = off_struct + st.len();
        let total = off_strings + strings.len();
        let mut out = Vec::new();
        for v in [
            FDT_MAGIC,
            total as u32,
            off_struct as u32,
            off_strings as u32,
            off_rsv as u32,
            17,
            16,
            0,
            strings.len() as u32,
            st.len() as u32,
        ] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        out.extend_from_slice(&[0; 16]);
        out.extend_from_slice(&st);
        out.extend_from_slice(&strings);
        out
    }

    #[test]
    fn reads_the_first_compatible_string_of_the_root() {
        let b = dtb(&[
            ("model", b"Board A\0"),
            ("compatible", b"vendor,board-a\0vendor,soc\0"),
        ]);
        assert_eq!(
            root_compatible(&b).unwrap().as_deref(),
            Some("vendor,board-a")
        );
        assert_eq!(root_compatible(&dtb(&[("model", b"x\0")])).unwrap(), None);
    }

    #[test]
    fn malformed_blobs_are_errors_naming_the_field() {
        let b = dtb(&[("compatible", b"a\0")]);
        let mut bad = b.clone();
        bad[0] = 0;
        assert!(root_compatible(&bad)
            .unwrap_err()
            .to_string()
            .contains("magic"));
        assert!(root_compatible(&b[..b.len() - 1])
            .unwrap_err()
            .to_string()
            .contains("totalsize"));
        let e = root_compatible(&dtb(&[("compatible", b"no-nul")])).unwrap_err();
        assert!(e.to_string().contains("compatible"), "{e}");
    }

    proptest! {
        #[test]
        fn never_panics_and_truncations_fail(data in proptest::collection::vec(any::<u8>(), 0..300), cut in 0usize..200) {
            let _ = root_compatible(&data);
            let b = dtb(&[("compatible", b"vendor,x\0")]);
            let cut = cut.min(b.len() - 1);
            prop_assert!(root_compatible(&b[..cut]).is_err());
        }
    }
}
