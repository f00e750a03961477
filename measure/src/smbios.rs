//! The SMBIOS structure table, as far as systemd-stub 257 reads it for Computer Hardware IDs
//! (`src/boot/smbios.c`: `get_smbios_table`, `smbios_get_string`, `smbios_raw_info_populate`).
//!
//! Layout (DMTF DSP0134 §6.1): a sequence of structures, each a formatted area (`type` u8,
//! `length` u8 = size of the formatted area including this 4-byte header, `handle` u16 LE, then
//! type-specific fields) followed by a string set: NUL-terminated strings ended by one more NUL
//! (two NULs when the structure has no strings). A string field of the formatted area holds the
//! 1-based number of its string; 0 means none. Type 127 ends the table.
//!
//! The input is the table alone, as Linux exports it in `/sys/firmware/dmi/tables/DMI` (the
//! bytes the firmware's entry point points at; the entry point itself is not needed). The walk
//! is the stub's, quirks included: the first structure of a type counts; one shorter than the
//! stub's struct for that type counts as absent; a string set that runs past the table, or a
//! structure longer than what is left, ends the search (absent), as does type 127. A string that
//! runs past the table is absent too. Nothing is allocated from the input's sizes.
//!
//! Fields read (DSP0134 §7.2, §7.3): type 1 (System Information, at least 27 bytes: the SMBIOS
//! 2.4 layout) `Manufacturer` (offset 4), `Product Name` (5), `SKU Number` (0x19), `Family`
//! (0x1a); type 2 (Baseboard Information, at least 8 bytes) `Manufacturer` (4), `Product` (5).

/// The largest table read: real ones are a few KiB (SMBIOS 3 allows up to 4 GiB).
pub const MAX_TABLE: usize = 4 << 20;
/// System Information.
pub const TYPE_SYSTEM: u8 = 1;
/// Baseboard (or Module) Information.
pub const TYPE_BASEBOARD: u8 = 2;
/// End-of-Table.
pub const TYPE_END: u8 = 127;
/// `sizeof(SmbiosTableType1)` in the stub: header, four strings, UUID, wake-up type, SKU, family.
pub const SYSTEM_MIN_LENGTH: usize = 27;
/// `sizeof(SmbiosTableType2)` in the stub: header, four strings.
pub const BASEBOARD_MIN_LENGTH: usize = 8;
const HEADER_LENGTH: usize = 4;

/// One structure found in a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Structure<'a> {
    /// Offset of its header in the table.
    pub offset: usize,
    /// Its formatted area (`length` bytes, the header included).
    pub formatted: &'a [u8],
    /// Everything after the formatted area to the end of the table (its strings come first).
    strings: &'a [u8],
}

impl<'a> Structure<'a> {
    /// The structure's type.
    pub fn kind(&self) -> u8 {
        self.formatted.first().copied().unwrap_or(0)
    }

    /// String number `nr` (1-based) of the string set, as the stub reads it; `None` for 0, a
    /// number past the last string, or a string that runs past the table.
    pub fn string(&self, nr: u8) -> Option<&'a [u8]> {
        let mut rest = self.strings;
        for index in 1..=nr {
            let end = rest.iter().position(|&b| b == 0)?;
            if end == 0 {
                return None; // the double NUL: no more strings
            }
            if index == nr {
                return rest.get(..end);
            }
            rest = rest.get(end + 1..)?;
        }
        None
    }

    /// The string whose number is the byte at `field` of the formatted area.
    pub fn string_at(&self, field: usize) -> Option<&'a [u8]> {
        self.string(*self.formatted.get(field)?)
    }
}

/// The first structure of type `kind` with at least `min_length` bytes in its formatted area,
/// found as the stub finds it (see the module doc); `None` when the stub finds none.
pub fn find(table: &[u8], kind: u8, min_length: usize) -> Option<Structure<'_>> {
    let mut p = 0usize;
    loop {
        let here = table.get(p..)?;
        if here.len() < HEADER_LENGTH {
            return None;
        }
        let (t, length) = (here[0], usize::from(here[1]));
        if t == TYPE_END || here.len() < length {
            return None;
        }
        if t == kind {
            if length < min_length {
                return None;
            }
            return Some(Structure {
                offset: p,
                formatted: &here[..length],
                strings: &here[length..],
            });
        }
        // Over the formatted area, then the string set (every step moves forward: a string
        // set is at least one byte).
        p += length;
        let rest = table.get(p..)?;
        if rest.starts_with(&[0, 0]) {
            p += 2;
            continue;
        }
        let mut first = true;
        loop {
            let rest = table.get(p..)?;
            let end = rest.iter().position(|&b| b == 0)?;
            if !first && end == 0 {
                p += 1;
                break;
            }
            p += end + 1;
            first = false;
        }
    }
}

/// The strings the stub takes from a table: each `None` when absent (no such structure, no
/// such string). Raw bytes, as the firmware wrote them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawInfo<'a> {
    pub manufacturer: Option<&'a [u8]>,
    pub product_name: Option<&'a [u8]>,
    pub product_sku: Option<&'a [u8]>,
    pub family: Option<&'a [u8]>,
    pub baseboard_manufacturer: Option<&'a [u8]>,
    pub baseboard_product: Option<&'a [u8]>,
    /// Whether a System Information structure was found (a table without one is most likely
    /// not an SMBIOS table at all).
    pub has_system: bool,
}

/// What `smbios_raw_info_populate()` reads from `table`.
pub fn raw_info(table: &[u8]) -> RawInfo<'_> {
    let mut info = RawInfo::default();
    if let Some(s) = find(table, TYPE_SYSTEM, SYSTEM_MIN_LENGTH) {
        info.has_system = true;
        info.manufacturer = s.string_at(4);
        info.product_name = s.string_at(5);
        info.product_sku = s.string_at(0x19);
        info.family = s.string_at(0x1a);
    }
    if let Some(s) = find(table, TYPE_BASEBOARD, BASEBOARD_MIN_LENGTH) {
        info.baseboard_manufacturer = s.string_at(4);
        info.baseboard_product = s.string_at(5);
    }
    info
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// One structure: header, `fields` after it, then the strings (or the two NULs of none).
    pub fn structure(kind: u8, handle: u16, fields: &[u8], strings: &[&[u8]]) -> Vec<u8> {
        let mut out = vec![kind, (HEADER_LENGTH + fields.len()) as u8];
        out.extend(handle.to_le_bytes());
        out.extend(fields);
        if strings.is_empty() {
            out.extend([0, 0]);
        }
        for s in strings {
            out.extend(*s);
            out.push(0);
        }
        if !strings.is_empty() {
            out.push(0);
        }
        out
    }

    /// Type 1 (27 bytes) and type 2 (8 bytes) with these strings, a type 0 before and type 127
    /// after, as firmware lays them out.
    pub fn table(system: [&[u8]; 4], baseboard: [&[u8]; 2]) -> Vec<u8> {
        let [manufacturer, product, sku, family] = system;
        let mut t1 = vec![1, 2, 0, 0];
        t1.extend([0u8; 16]);
        t1.extend([6, 3, 4]);
        let mut out = structure(
            0,
            0,
            &[1, 2, 0, 0xe8, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            &[b"EDK II", b"stable", b"02/06/2015"],
        );
        out.extend(structure(
            1,
            0x100,
            &t1,
            &[manufacturer, product, sku, family],
        ));
        out.extend(structure(2, 0x200, &[1, 2, 0, 0], &baseboard));
        out.extend(structure(TYPE_END, 0x7f00, &[], &[]));
        out
    }

    #[test]
    fn reads_the_fields_the_stub_reads() {
        let t = table(
            [b"Vendor", b"Model 7", b"SKU1", b"Family X"],
            [b"Board Co", b"B-1"],
        );
        let i = raw_info(&t);
        assert!(i.has_system);
        assert_eq!(i.manufacturer, Some(&b"Vendor"[..]));
        assert_eq!(i.product_name, Some(&b"Model 7"[..]));
        assert_eq!(i.product_sku, Some(&b"SKU1"[..]));
        assert_eq!(i.family, Some(&b"Family X"[..]));
        assert_eq!(i.baseboard_manufacturer, Some(&b"Board Co"[..]));
        assert_eq!(i.baseboard_product, Some(&b"B-1"[..]));
    }

    #[test]
    fn missing_short_and_unterminated_structures_are_absent() {
        // String number 0 and one past the last: absent.
        let s = structure(1, 1, &[0; 23], &[b"a"]);
        let found = find(&s, 1, SYSTEM_MIN_LENGTH).unwrap();
        assert_eq!(found.string(0), None);
        assert_eq!(found.string(1), Some(&b"a"[..]));
        assert_eq!(found.string(2), None);
        // A type 1 of the SMBIOS 2.0 size (8 bytes) is shorter than the stub's struct.
        let old = structure(1, 1, &[1, 2, 3, 4], &[b"a", b"b", b"c", b"d"]);
        assert_eq!(find(&old, 1, SYSTEM_MIN_LENGTH), None);
        // A string set that never ends, before type 1: the walk stops there.
        let mut cut = structure(0, 0, &[1], &[b"x"]);
        cut.truncate(cut.len() - 2);
        assert_eq!(find(&cut, 1, SYSTEM_MIN_LENGTH), None);
        // Type 127 ends the search.
        let mut ended = structure(TYPE_END, 0, &[], &[]);
        ended.extend(structure(1, 1, &[0; 23], &[]));
        assert_eq!(find(&ended, 1, SYSTEM_MIN_LENGTH), None);
        assert_eq!(raw_info(b""), RawInfo::default());
    }

    proptest! {
        #[test]
        fn never_panics_and_finds_what_was_laid_out(
            noise in proptest::collection::vec(any::<u8>(), 0..400),
            strings in proptest::collection::vec("[ -~]{1,20}", 6),
            cut in 0usize..400,
        ) {
            let _ = raw_info(&noise);
            let b: Vec<&[u8]> = strings.iter().map(|s| s.as_bytes()).collect();
            let t = table([b[0], b[1], b[2], b[3]], [b[4], b[5]]);
            let i = raw_info(&t);
            prop_assert_eq!(i.manufacturer, Some(b[0]));
            prop_assert_eq!(i.family, Some(b[3]));
            prop_assert_eq!(i.baseboard_product, Some(b[5]));
            // Any truncation reads without panicking, and only what is wholly there.
            let short = raw_info(&t[..cut.min(t.len())]);
            if let Some(m) = short.manufacturer {
                prop_assert_eq!(m, b[0]);
            }
        }
    }
}
