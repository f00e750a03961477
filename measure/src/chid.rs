//! Computer Hardware IDs (CHIDs) as systemd-stub 257 computes them from SMBIOS, and which
//! `.hwids` device they select (systemd 257.13 `src/fundamental/chid-fundamental.c`,
//! `src/boot/chid.c`, `src/boot/pe.c`).
//!
//! A CHID is Microsoft's hardware ID: a UUID version 5 (RFC 4122 §4.3, SHA-1) in the namespace
//! `70ffd812-4c7f-4c7d-0000-000000000000` of SMBIOS strings joined by `&`, in UTF-16LE without
//! a NUL. The fields always come in this order, each CHID type taking a subset:
//! Manufacturer, Family, ProductName, ProductSku, BaseboardManufacturer, BaseboardProduct
//! (type 1 strings 4, 0x1a, 5, 0x19; type 2 strings 4, 5; [`crate::smbios`]).
//!
//! What the 257 stub does, exactly:
//! - each string is stripped of leading spaces, *then* leading `0`s, then trailing spaces (as
//!   fwupd does), and converted from UTF-8 to UCS-2 its own way: code points above U+FFFF and
//!   surrogates are dropped, a malformed sequence is skipped as a whole (its claimed length);
//! - a missing string (no structure, string number 0 or past the last) hashes as empty, its
//!   `&` kept;
//! - it computes types 3–11 and 13 only (0–2 need BIOS fields, 12 the enclosure type: they stay
//!   zero), and matches in the order 3, 6, 8, 10, 4, 5, 7, 9, 11 (13 is never used);
//! - for each CHID in that order, the first `.hwids` device (in section order) with that CHID
//!   wins; a record that is not a devicetree record makes the whole match fail (no device),
//!   and only records followed by at least one more byte of the section are read.
//!
//! The device's `compatible` then picks the first `.dtbauto` whose root compatible equals it
//! ([`crate::uki::DtbChoice::Compatible`]), and only when the firmware has no devicetree of its
//! own (x86); a device without a compatible, or no device, selects none.
//!
//! Machine-readable input besides a raw table: [`SmbiosFields::from_json`], an object with the
//! keys fwupd prints (`fwupdtool hwids`): `{"Manufacturer": "…", "Family": "…", "ProductName":
//! "…", "ProductSku": "…", "BaseboardManufacturer": "…", "BaseboardProduct": "…"}`; a key left
//! out or `null` is a missing string. Values are the raw SMBIOS strings (the stub's trimming is
//! applied here).

use sha1::{Digest as _, Sha1};

use crate::hwids::{guid_bytes, Uuid, DEVICETREE_DESCRIPTOR, DEVICE_SIZE};
use crate::smbios;
use crate::Error;

/// An SMBIOS string a CHID is made of, in hashing order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Field {
    Manufacturer,
    Family,
    ProductName,
    ProductSku,
    BaseboardManufacturer,
    BaseboardProduct,
}

impl Field {
    pub const ALL: [Field; 6] = [
        Field::Manufacturer,
        Field::Family,
        Field::ProductName,
        Field::ProductSku,
        Field::BaseboardManufacturer,
        Field::BaseboardProduct,
    ];

    /// fwupd's name (`fwupdtool hwids`), also the JSON key.
    pub fn name(self) -> &'static str {
        match self {
            Field::Manufacturer => "Manufacturer",
            Field::Family => "Family",
            Field::ProductName => "ProductName",
            Field::ProductSku => "ProductSku",
            Field::BaseboardManufacturer => "BaseboardManufacturer",
            Field::BaseboardProduct => "BaseboardProduct",
        }
    }
}

use Field::*;

/// The CHID types the 257 stub computes, with their fields (Microsoft's HardwareID-N).
pub const CHID_TYPES: [(u8, &[Field]); 10] = [
    (
        3,
        &[
            Manufacturer,
            Family,
            ProductName,
            ProductSku,
            BaseboardManufacturer,
            BaseboardProduct,
        ],
    ),
    (4, &[Manufacturer, Family, ProductName, ProductSku]),
    (5, &[Manufacturer, Family, ProductName]),
    (
        6,
        &[
            Manufacturer,
            ProductSku,
            BaseboardManufacturer,
            BaseboardProduct,
        ],
    ),
    (7, &[Manufacturer, ProductSku]),
    (
        8,
        &[
            Manufacturer,
            ProductName,
            BaseboardManufacturer,
            BaseboardProduct,
        ],
    ),
    (9, &[Manufacturer, ProductName]),
    (
        10,
        &[
            Manufacturer,
            Family,
            BaseboardManufacturer,
            BaseboardProduct,
        ],
    ),
    (11, &[Manufacturer, Family]),
    (13, &[Manufacturer, BaseboardManufacturer, BaseboardProduct]),
];

/// The order in which the stub looks for a device: most specific first.
pub const MATCH_PRIORITY: [u8; 9] = [3, 6, 8, 10, 4, 5, 7, 9, 11];

/// The CHID namespace, `70ffd812-4c7f-4c7d-0000-000000000000`, in hashing (big-endian) order.
pub const NAMESPACE: Uuid = [
    0x70, 0xff, 0xd8, 0x12, 0x4c, 0x7f, 0x4c, 0x7d, 0, 0, 0, 0, 0, 0, 0, 0,
];

/// The largest JSON field description read.
pub const MAX_JSON: usize = 64 << 10;

/// A machine's SMBIOS strings, raw (as the firmware has them); `None`: missing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SmbiosFields {
    values: [Option<Vec<u8>>; 6],
}

impl SmbiosFields {
    pub fn get(&self, f: Field) -> Option<&[u8]> {
        self.values[f as usize].as_deref()
    }

    pub fn set(&mut self, f: Field, value: Option<Vec<u8>>) {
        self.values[f as usize] = value;
    }

    /// The strings the stub reads from a raw SMBIOS table (`/sys/firmware/dmi/tables/DMI`);
    /// `file` names it in errors. A table without a System Information structure (type 1, 27
    /// bytes or more) is refused: it is not a machine's table, or one the stub reads nothing
    /// from.
    pub fn from_table(file: &str, table: &[u8]) -> Result<Self, Error> {
        if table.len() > smbios::MAX_TABLE {
            return Err(Error::InvalidInput(format!(
                "{file}: {} bytes; an SMBIOS table is read up to {} bytes",
                table.len(),
                smbios::MAX_TABLE
            )));
        }
        let info = smbios::raw_info(table);
        if !info.has_system {
            return Err(Error::InvalidInput(format!(
                "{file}: no SMBIOS System Information structure (type 1, at least {} bytes) before the end of the table; not a DMI table (/sys/firmware/dmi/tables/DMI)?",
                smbios::SYSTEM_MIN_LENGTH
            )));
        }
        let mut out = SmbiosFields::default();
        for (f, v) in [
            (Manufacturer, info.manufacturer),
            (Family, info.family),
            (ProductName, info.product_name),
            (ProductSku, info.product_sku),
            (BaseboardManufacturer, info.baseboard_manufacturer),
            (BaseboardProduct, info.baseboard_product),
        ] {
            out.set(f, v.map(<[u8]>::to_vec));
        }
        Ok(out)
    }

    /// The JSON description (see the module doc); unknown keys are refused.
    pub fn from_json(file: &str, text: &[u8]) -> Result<Self, Error> {
        if text.len() > MAX_JSON {
            return Err(Error::InvalidInput(format!(
                "{file}: {} bytes; an SMBIOS field description is read up to {MAX_JSON} bytes",
                text.len()
            )));
        }
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields, rename_all = "PascalCase")]
        struct Raw {
            manufacturer: Option<String>,
            family: Option<String>,
            product_name: Option<String>,
            product_sku: Option<String>,
            baseboard_manufacturer: Option<String>,
            baseboard_product: Option<String>,
        }
        let raw: Raw = serde_json::from_slice(text).map_err(|e| {
            Error::InvalidInput(format!(
                "{file}: not an SMBIOS field description ({{\"Manufacturer\": …, \"Family\", \"ProductName\", \"ProductSku\", \"BaseboardManufacturer\", \"BaseboardProduct\"}}): {e}"
            ))
        })?;
        let mut out = SmbiosFields::default();
        for (f, v) in [
            (Manufacturer, raw.manufacturer),
            (Family, raw.family),
            (ProductName, raw.product_name),
            (ProductSku, raw.product_sku),
            (BaseboardManufacturer, raw.baseboard_manufacturer),
            (BaseboardProduct, raw.baseboard_product),
        ] {
            if v.as_deref().is_some_and(|s| s.contains('\0')) {
                return Err(Error::InvalidInput(format!(
                    "{file}: {}: an SMBIOS string holds no NUL",
                    f.name()
                )));
            }
            out.set(f, v.map(String::into_bytes));
        }
        Ok(out)
    }

    /// Either input: JSON when the first non-blank byte is `{`, else a raw table.
    pub fn parse(file: &str, data: &[u8]) -> Result<Self, Error> {
        match data.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{') => Self::from_json(file, data),
            _ => Self::from_table(file, data),
        }
    }

    /// The string the stub hashes for `f` ([`hashable`]).
    pub fn hashable(&self, f: Field) -> Vec<u16> {
        hashable(self.get(f))
    }
}

/// A raw SMBIOS string as the stub hashes it: leading spaces, then leading `0`s, then trailing
/// spaces removed; UTF-8 converted to UCS-2 as `xstrn8_to_16()` does. Missing is empty.
pub fn hashable(raw: Option<&[u8]>) -> Vec<u16> {
    let Some(mut s) = raw else {
        return Vec::new();
    };
    // The stub's strings end at the first NUL.
    if let Some(end) = s.iter().position(|&b| b == 0) {
        s = &s[..end];
    }
    while let [b' ', rest @ ..] = s {
        s = rest;
    }
    while let [b'0', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' '] = s {
        s = rest;
    }
    ucs2_like_the_stub(s)
}

/// `xstrn8_to_16()` of systemd-boot 257 over `s` (no NUL inside): a lead byte claims 1–6 bytes;
/// a claim past the end, or a continuation byte that is not `10xxxxxx`, skips the claimed
/// bytes; code points kept are U+0000–U+D7FF and U+E000–U+FFFF (overlong forms included).
fn ucs2_like_the_stub(s: &[u8]) -> Vec<u16> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while let Some(&lead) = s.get(i) {
        let (len, init) = match lead {
            b if b & 0x80 == 0 => (1, u32::from(b)),
            b if b & 0xe0 == 0xc0 => (2, u32::from(b & 0x1f)),
            b if b & 0xf0 == 0xe0 => (3, u32::from(b & 0x0f)),
            b if b & 0xf8 == 0xf0 => (4, u32::from(b & 0x07)),
            b if b & 0xfc == 0xf8 => (5, u32::from(b & 0x03)),
            b if b & 0xfe == 0xfc => (6, u32::from(b & 0x01)),
            _ => (1, u32::MAX),
        };
        let c = match s.get(i..i + len) {
            None => None,
            Some(seq) => seq[1..].iter().try_fold(init, |acc, &b| {
                (b & 0xc0 == 0x80).then_some((acc << 6) | u32::from(b & 0x3f))
            }),
        }
        .unwrap_or(u32::MAX);
        if let Some(u) = u16::try_from(c)
            .ok()
            .filter(|u| !(0xd800..=0xdfff).contains(u))
        {
            out.push(u);
        }
        i += len;
    }
    // An overlong NUL (e.g. C0 80) ends the stub's UCS-2 string.
    if let Some(end) = out.iter().position(|&u| u == 0) {
        out.truncate(end);
    }
    out
}

/// CHID `kind` of these fields, `None` for a type the 257 stub does not compute.
pub fn chid(fields: &SmbiosFields, kind: u8) -> Option<Uuid> {
    let (_, used) = CHID_TYPES.iter().find(|(k, _)| *k == kind)?;
    let mut h = Sha1::new();
    h.update(NAMESPACE);
    for (n, f) in used.iter().enumerate() {
        if n > 0 {
            h.update(b"&\0");
        }
        for u in fields.hashable(*f) {
            h.update(u.to_le_bytes());
        }
    }
    let d = h.finalize();
    let mut u = [0u8; 16];
    u.copy_from_slice(&d[..16]);
    u[6] = (u[6] & 0x0f) | 0x50;
    u[8] = (u[8] & 0x3f) | 0x80;
    Some(u)
}

/// Every CHID the 257 stub computes, by type.
pub fn chids(fields: &SmbiosFields) -> Vec<(u8, Uuid)> {
    CHID_TYPES
        .iter()
        .filter_map(|(k, _)| Some((*k, chid(fields, *k)?)))
        .collect()
}

/// The `.hwids` device the stub picks for a machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HwidsMatch {
    /// The first device of the first CHID type in [`MATCH_PRIORITY`] that has one.
    Device {
        /// Which CHID type matched, and the CHID.
        chid_type: u8,
        chid: Uuid,
        /// The record's index in the section.
        index: usize,
        /// Its name and devicetree compatible (`None`: offset 0, none).
        name: Option<String>,
        compatible: Option<String>,
    },
    /// No record carries any of the machine's CHIDs (or the section has no records).
    NoMatch,
    /// A record before the end is not a devicetree record: the stub matches nothing.
    Unsupported { index: usize, descriptor: u32 },
}

/// Which device of a `.hwids` section (its in-memory bytes) the stub selects for a machine
/// with these CHIDs ([`chids`]). A string offset outside the section is an error: the stub
/// would read past it, which cannot be predicted.
pub fn match_hwids(section: &[u8], machine: &[(u8, Uuid)]) -> Result<HwidsMatch, Error> {
    if section.len() > crate::hwids::MAX_HWIDS {
        return Err(Error::InvalidInput(format!(
            ".hwids is {} bytes; at most {} are read",
            section.len(),
            crate::hwids::MAX_HWIDS
        )));
    }
    // The stub reads record n only while (n + 1) * 28 < the section's size.
    let mut records: Vec<(usize, Uuid, u32, u32)> = Vec::new();
    for (index, rec) in section.chunks_exact(DEVICE_SIZE).enumerate() {
        if (index + 1) * DEVICE_SIZE >= section.len() {
            break;
        }
        let u32_at = |o: usize| u32::from_le_bytes([rec[o], rec[o + 1], rec[o + 2], rec[o + 3]]);
        let descriptor = u32_at(0);
        if descriptor == 0 {
            break;
        }
        if descriptor != DEVICETREE_DESCRIPTOR {
            return Ok(HwidsMatch::Unsupported { index, descriptor });
        }
        let mut guid = [0u8; 16];
        guid.copy_from_slice(&rec[4..20]);
        records.push((index, guid_bytes(&guid), u32_at(20), u32_at(24)));
    }
    let string = |off: u32, what: &str| -> Result<Option<String>, Error> {
        if off == 0 {
            return Ok(None);
        }
        let bad =
            |why: &str| Error::InvalidInput(format!(".hwids: {what} at offset {off:#x} {why}"));
        let rest = section
            .get(off as usize..)
            .filter(|r| !r.is_empty())
            .ok_or_else(|| bad("is outside the section"))?;
        let end = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| bad("has no NUL in the section"))?;
        String::from_utf8(rest[..end].to_vec())
            .map(Some)
            .map_err(|_| bad("is not UTF-8"))
    };
    for kind in MATCH_PRIORITY {
        let Some((_, want)) = machine.iter().find(|(k, _)| *k == kind) else {
            continue;
        };
        if let Some((index, chid, name, compatible)) =
            records.iter().find(|(_, chid, _, _)| chid == want)
        {
            return Ok(HwidsMatch::Device {
                chid_type: kind,
                chid: *chid,
                index: *index,
                name: string(*name, "name")?,
                compatible: string(*compatible, "compatible")?,
            });
        }
    }
    Ok(HwidsMatch::NoMatch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hwids::{encode, format_uuid, parse_uuid, Device};
    use proptest::prelude::*;

    fn fields(values: [&str; 6]) -> SmbiosFields {
        let mut f = SmbiosFields::default();
        for (k, v) in Field::ALL.iter().zip(values) {
            f.set(*k, Some(v.as_bytes().to_vec()));
        }
        f
    }

    /// systemd's `src/test/test-chid.c` (v257): the strings of an MSI board and the CHIDs
    /// `fwupdtool hwids` printed for it (an independent implementation, on the real machine).
    #[test]
    fn chids_equal_fwupds_for_the_msi_board_of_systemds_test() {
        let msi = fields([
            "Micro-Star International Co., Ltd.",
            "To be filled by O.E.M.",
            "MS-7D70",
            "To be filled by O.E.M.",
            "Micro-Star International Co., Ltd.",
            "MPG X670E CARBON WIFI (MS-7D70)",
        ]);
        let want = [
            (3, "01e09b32-de05-56ca-b9d1-9486ad5f381d"),
            (4, "cad87a11-1813-507b-9aab-9a5f457b649c"),
            (5, "377c823d-60d1-55b0-9678-76cd2af9d086"),
            (6, "28ac9cf2-5bde-59f7-aebe-4b3d008090fe"),
            (7, "e821e0e2-e11a-5e94-bf5d-ffe53c5e5048"),
            (8, "1c092f1d-dc7b-564f-8a3d-128d7292fab8"),
            (9, "c12c1f4a-332d-5d72-aa36-7a3d413b479a"),
            (10, "28ac9cf2-5bde-59f7-aebe-4b3d008090fe"),
            (11, "e821e0e2-e11a-5e94-bf5d-ffe53c5e5048"),
            (13, "b2e58e8b-fb10-5cd0-8fb0-5bd931f1871a"),
        ];
        let got: Vec<(u8, String)> = chids(&msi)
            .iter()
            .map(|(k, u)| (*k, format_uuid(u)))
            .collect();
        let want: Vec<(u8, String)> = want.iter().map(|(k, u)| (*k, u.to_string())).collect();
        assert_eq!(got, want);
        assert_eq!(chid(&msi, 0), None);
        assert_eq!(chid(&msi, 12), None);
        // The same strings read from a raw table.
        let t = crate::smbios::tests::table(
            [
                b"Micro-Star International Co., Ltd.",
                b"MS-7D70",
                b"To be filled by O.E.M.",
                b"To be filled by O.E.M.",
            ],
            [
                b"Micro-Star International Co., Ltd.",
                b"MPG X670E CARBON WIFI (MS-7D70)",
            ],
        );
        assert_eq!(SmbiosFields::from_table("t", &t).unwrap(), msi);
    }

    #[test]
    fn strings_are_trimmed_and_converted_as_the_stub_does() {
        let h = |s: &[u8]| String::from_utf16(&hashable(Some(s))).unwrap();
        assert_eq!(h(b"  007 Board  "), "7 Board");
        assert_eq!(h(b"0 0x"), " 0x");
        assert_eq!(h(b"000"), "");
        assert_eq!(h(b"caf\xc3\xa9"), "caf\u{e9}");
        // Outside the BMP and surrogates are dropped; a bad sequence is skipped as claimed.
        assert_eq!(h("a\u{1f600}b".as_bytes()), "ab");
        assert_eq!(h(b"a\xed\xa0\x80b"), "ab");
        assert_eq!(h(b"a\xc3(b"), "ab");
        assert_eq!(h(b"a\xe2\x82"), "a");
        assert_eq!(h(b"a\xffb"), "ab");
        assert_eq!(h(b"a\xc0\x80b"), "a");
        assert!(hashable(None).is_empty());
        // A missing string hashes as an empty one.
        let mut a = fields(["M", "F", "P", "S", "BM", "BP"]);
        let mut b = a.clone();
        a.set(Family, None);
        b.set(Family, Some(b"  ".to_vec()));
        assert_eq!(chids(&a), chids(&b));
    }

    #[test]
    fn json_fields_are_fwupds_keys() {
        let j = br#"{"Manufacturer": "M", "Family": null, "ProductName": "P"}"#;
        let f = SmbiosFields::parse("f.json", j).unwrap();
        assert_eq!(f.get(Manufacturer), Some(&b"M"[..]));
        assert_eq!(f.get(Family), None);
        assert_eq!(f.get(BaseboardProduct), None);
        let e = SmbiosFields::parse("f.json", br#"{"Manufactuer": "M"}"#).unwrap_err();
        assert!(e.to_string().contains("f.json"), "{e}");
        let e = SmbiosFields::parse("f.json", br#"{"Manufacturer": "a\u0000"}"#).unwrap_err();
        assert!(e.to_string().contains("NUL"), "{e}");
        let e = SmbiosFields::parse("dmi", b"\x00\x01").unwrap_err();
        assert!(e.to_string().contains("System Information"), "{e}");
    }

    fn device(name: &str, compatible: &str, chids: &[Uuid]) -> Device {
        Device {
            name: name.into(),
            compatible: compatible.into(),
            chids: chids.to_vec(),
        }
    }

    #[test]
    fn the_most_specific_chid_type_wins_then_section_order() {
        let m = fields(["M", "F", "P", "S", "BM", "BP"]);
        let c = chids(&m);
        let of = |k: u8| c.iter().find(|(t, _)| *t == k).unwrap().1;
        // Board B carries type 11 (less specific), board A type 6: A wins though B comes first.
        let section = encode(&[
            device("Board B", "vendor,b", &[of(11)]),
            device("Board A", "vendor,a", &[of(6)]),
        ])
        .unwrap();
        match match_hwids(&section, &c).unwrap() {
            HwidsMatch::Device {
                chid_type,
                name,
                compatible,
                ..
            } => {
                assert_eq!(chid_type, 6);
                assert_eq!(name.as_deref(), Some("Board A"));
                assert_eq!(compatible.as_deref(), Some("vendor,a"));
            }
            other => panic!("{other:?}"),
        }
        // Type 13 is computed but never matched.
        let only13 = encode(&[device("X", "vendor,x", &[of(13)])]).unwrap();
        assert_eq!(match_hwids(&only13, &c).unwrap(), HwidsMatch::NoMatch);
        let other = parse_uuid("10000000-0000-5000-8000-000000000000").unwrap();
        let none = encode(&[device("X", "vendor,x", &[other])]).unwrap();
        assert_eq!(match_hwids(&none, &c).unwrap(), HwidsMatch::NoMatch);
        // A foreign record first: the stub gives up.
        let mut bad = section.clone();
        bad[0] = 0x1d;
        assert!(matches!(
            match_hwids(&bad, &c).unwrap(),
            HwidsMatch::Unsupported { index: 0, .. }
        ));
        // A record that ends the section is not read.
        let last = &section[..DEVICE_SIZE];
        assert_eq!(match_hwids(last, &c).unwrap(), HwidsMatch::NoMatch);
        // An offset past the section cannot be predicted.
        let mut far = section.clone();
        far[DEVICE_SIZE + 24..DEVICE_SIZE + 28].copy_from_slice(&9999u32.to_le_bytes());
        assert!(match_hwids(&far, &c)
            .unwrap_err()
            .to_string()
            .contains("outside"));
    }

    proptest! {
        #[test]
        fn chids_are_v5_uuids_and_a_listed_chid_always_matches(
            values in proptest::collection::vec(proptest::option::of(proptest::collection::vec(any::<u8>(), 0..24)), 6),
            noise in proptest::collection::vec(any::<u8>(), 0..300),
            pick in 0usize..10,
        ) {
            let mut f = SmbiosFields::default();
            for (k, v) in Field::ALL.iter().zip(values) {
                f.set(*k, v);
            }
            let c = chids(&f);
            prop_assert_eq!(c.len(), 10);
            for (_, u) in &c {
                prop_assert_eq!(u[6] >> 4, 5);
                prop_assert_eq!(u[8] & 0xc0, 0x80);
            }
            let _ = match_hwids(&noise, &c);
            let _ = SmbiosFields::parse("n", &noise);
            let (kind, want) = c[pick];
            let section = encode(&[device("D", "vendor,d", &[want])]).unwrap();
            let got = match_hwids(&section, &c).unwrap();
            if MATCH_PRIORITY.contains(&kind) {
                let is_device = matches!(got, HwidsMatch::Device { chid, .. } if chid == want);
                prop_assert!(is_device);
            }
        }
    }
}
