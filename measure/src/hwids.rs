//! The `.hwids` UKI section (systemd 257+): which devicetree (`.dtbauto`) a machine gets, by
//! its Computer Hardware IDs (CHIDs).
//!
//! Layout (systemd `src/boot/chid.h` `Device`, written by ukify 257 `parse_hwid_dir()`):
//! - device records of 28 bytes: `descriptor` (u32 LE: `size | type << 28`, type 1 =
//!   devicetree, size 28), `chid` (16-byte EFI GUID: the UUID's first three fields
//!   little-endian), `name_offset`, `compatible_offset` (u32 LE, from the section start);
//! - one all-zero record ends the list;
//! - then the NUL-terminated UTF-8 strings the offsets point at.
//!
//! ukify's input is a folder of JSON files (`{"type": "devicetree", "name": …, "compatible":
//! …, "hwids": ["<uuid>", …]}`), read in sorted path order; devices with the same (name,
//! compatible) merge, each device's CHIDs sorted by UUID value, the strings sorted and
//! deduplicated. [`encode`] writes exactly that; [`decode`] reads a section back (untrusted).
//!
//! Not here: computing a machine's CHIDs from its SMBIOS tables (`src/boot/chid.c`), which
//! the stub matches against these records.

use crate::reader::Reader;
use crate::Error;

/// One record's size.
pub const DEVICE_SIZE: usize = 28;
/// `descriptor` of a devicetree record.
pub const DEVICETREE_DESCRIPTOR: u32 = DEVICE_SIZE as u32 | (1 << 28);
/// The largest `.hwids` [`decode`] reads.
pub const MAX_HWIDS: usize = 16 << 20;

/// A UUID as its 16 bytes in the usual (big-endian) order, as written `xxxxxxxx-xxxx-…`.
pub type Uuid = [u8; 16];

/// One device of a ukify hwid JSON file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub name: String,
    pub compatible: String,
    pub chids: Vec<Uuid>,
}

/// Reads a UUID in its canonical text form (`8-4-4-4-12` hex digits, either case).
pub fn parse_uuid(s: &str) -> Result<Uuid, Error> {
    let bad = || {
        Error::InvalidInput(format!(
            "{s:?} is not a UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)"
        ))
    };
    let groups: Vec<&str> = s.split('-').collect();
    if groups.iter().map(|g| g.len()).collect::<Vec<_>>() != [8, 4, 4, 4, 12] {
        return Err(bad());
    }
    let hex: String = groups.concat();
    let bytes = hex::decode(hex).map_err(|_| bad())?;
    bytes.try_into().map_err(|_| bad())
}

/// The UUID's text form.
pub fn format_uuid(u: &Uuid) -> String {
    let h = hex::encode(u);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// EFI GUID byte order: the first three fields little-endian (Python's `uuid.bytes_le`).
pub fn guid_bytes(u: &Uuid) -> [u8; 16] {
    let mut g = *u;
    g[0..4].reverse();
    g[4..6].reverse();
    g[6..8].reverse();
    g
}

/// Reads one ukify hwid JSON file (`file` names it in errors). `type`, when present, must be
/// `devicetree` (the only kind ukify 257 writes).
pub fn parse_json(file: &str, text: &[u8]) -> Result<Device, Error> {
    #[derive(serde::Deserialize)]
    struct Raw {
        #[serde(rename = "type")]
        kind: Option<String>,
        name: String,
        compatible: String,
        hwids: Vec<String>,
    }
    let raw: Raw = serde_json::from_slice(text).map_err(|e| {
        Error::InvalidInput(format!(
            "{file}: not a hwid description (name, compatible, hwids): {e}"
        ))
    })?;
    if raw.kind.as_deref().is_some_and(|k| k != "devicetree") {
        return Err(Error::InvalidInput(format!(
            "{file}: type {:?}: only devicetree hwids are supported",
            raw.kind.unwrap_or_default()
        )));
    }
    for (what, s) in [("name", &raw.name), ("compatible", &raw.compatible)] {
        if s.contains('\0') {
            return Err(Error::InvalidInput(format!("{file}: {what} contains NUL")));
        }
    }
    let chids = raw
        .hwids
        .iter()
        .map(|h| parse_uuid(h).map_err(|e| Error::InvalidInput(format!("{file}: hwids: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Device {
        name: raw.name,
        compatible: raw.compatible,
        chids,
    })
}

/// The `.hwids` section ukify 257 writes for these devices, given in its file order.
pub fn encode(devices: &[Device]) -> Result<Vec<u8>, Error> {
    // (name, compatible) → CHIDs, in first-seen order.
    let mut merged: Vec<(&str, &str, Vec<Uuid>)> = Vec::new();
    for d in devices {
        match merged
            .iter_mut()
            .find(|(n, c, _)| *n == d.name && *c == d.compatible)
        {
            Some((_, _, chids)) => chids.extend(&d.chids),
            None => merged.push((&d.name, &d.compatible, d.chids.clone())),
        }
    }
    for (_, _, chids) in &mut merged {
        chids.sort_unstable();
        chids.dedup();
    }
    let records: usize = merged.iter().map(|(_, _, c)| c.len()).sum::<usize>() + 1;
    let mut strings: Vec<&str> = merged.iter().flat_map(|(n, c, _)| [*n, *c]).collect();
    strings.sort_unstable();
    strings.dedup();
    let base = records * DEVICE_SIZE;
    let mut offsets: Vec<(&str, u32)> = Vec::new();
    let mut blob: Vec<u8> = Vec::new();
    for s in strings {
        let off = u32::try_from(base + blob.len())
            .map_err(|_| Error::InvalidInput(".hwids over 4 GiB".into()))?;
        offsets.push((s, off));
        blob.extend(s.as_bytes());
        blob.push(0);
    }
    let offset = |s: &str| offsets.iter().find(|(k, _)| *k == s).map_or(0, |(_, o)| *o);
    let mut out = Vec::with_capacity(base + blob.len());
    for (name, compatible, chids) in &merged {
        for chid in chids {
            out.extend(DEVICETREE_DESCRIPTOR.to_le_bytes());
            out.extend(guid_bytes(chid));
            out.extend(offset(name).to_le_bytes());
            out.extend(offset(compatible).to_le_bytes());
        }
    }
    out.extend([0u8; DEVICE_SIZE]);
    out.extend(blob);
    Ok(out)
}

/// One record of a `.hwids` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub chid: Uuid,
    pub name: String,
    pub compatible: String,
}

/// Reads a `.hwids` section (untrusted): devicetree records up to the all-zero one, each
/// offset inside the section and its string NUL-terminated UTF-8.
pub fn decode(data: &[u8]) -> Result<Vec<Record>, Error> {
    if data.len() > MAX_HWIDS {
        return Err(Error::InvalidInput(format!(
            ".hwids is {} bytes; at most {MAX_HWIDS} are read",
            data.len()
        )));
    }
    let string = |off: u32, what: &'static str| -> Result<String, Error> {
        let rest = data
            .get(off as usize..)
            .filter(|r| !r.is_empty())
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                    ".hwids: {what} offset {off:#x} is outside the section"
                ))
            })?;
        let end = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| Error::InvalidInput(format!(".hwids: {what} at {off:#x} has no NUL")))?;
        String::from_utf8(rest[..end].to_vec())
            .map_err(|_| Error::InvalidInput(format!(".hwids: {what} at {off:#x} is not UTF-8")))
    };
    let mut r = Reader::new(data);
    let mut out = Vec::new();
    loop {
        let at = r.offset();
        let descriptor = r.u32_le("descriptor")?;
        let guid: [u8; 16] = r.array("chid")?;
        let name = r.u32_le("name_offset")?;
        let compatible = r.u32_le("compatible_offset")?;
        if descriptor == 0 {
            return Ok(out);
        }
        if descriptor != DEVICETREE_DESCRIPTOR {
            return Err(Error::InvalidInput(format!(
                ".hwids: record at {at:#x} has descriptor {descriptor:#x}, not a devicetree record ({DEVICETREE_DESCRIPTOR:#x})"
            )));
        }
        out.push(Record {
            chid: guid_bytes(&guid),
            name: string(name, "name")?,
            compatible: string(compatible, "compatible")?,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(name: &str, compatible: &str, chids: &[&str]) -> Device {
        Device {
            name: name.into(),
            compatible: compatible.into(),
            chids: chids.iter().map(|c| parse_uuid(c).unwrap()).collect(),
        }
    }

    #[test]
    fn guids_are_little_endian_in_the_first_three_fields() {
        let u = parse_uuid("00112233-4455-6677-8899-aabbccddeeff").unwrap();
        assert_eq!(
            hex::encode(guid_bytes(&u)),
            "33221100554477668899aabbccddeeff"
        );
        assert_eq!(format_uuid(&u), "00112233-4455-6677-8899-aabbccddeeff");
        for bad in [
            "0011223344556677",
            "00112233-4455-6677-8899-aabbccddeefg",
            "{00112233-4455-6677-8899-aabbccddeeff}",
        ] {
            assert!(parse_uuid(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn encode_merges_sorts_and_decodes_back() {
        let a = "10000000-0000-0000-0000-000000000002";
        let b = "10000000-0000-0000-0000-000000000001";
        let c = "20000000-0000-0000-0000-000000000000";
        let devices = [
            dev("Board B", "vendor,b", &[c]),
            dev("Board A", "vendor,a", &[a]),
            dev("Board B", "vendor,b", &[b]),
        ];
        let data = encode(&devices).unwrap();
        assert_eq!(
            data.len(),
            4 * DEVICE_SIZE + "Board A\0Board B\0vendor,a\0vendor,b\0".len()
        );
        let back = decode(&data).unwrap();
        let got: Vec<(String, &str)> = back
            .iter()
            .map(|r| (format_uuid(&r.chid), r.compatible.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (b.to_owned(), "vendor,b"),
                (c.to_owned(), "vendor,b"),
                (a.to_owned(), "vendor,a")
            ]
        );
    }

    /// ukify 257's `parse_hwid_dir()` over one file of board A with two CHIDs (the fuzz seed).
    const UKIFY_HWIDS: &[u8] = include_bytes!("../../fuzz/corpus/hwids/ukify-257.hwids");

    #[test]
    fn ukifys_section_is_what_encode_writes() {
        let d = dev(
            "Board A",
            "vendor,board-a",
            &[
                "2a7c6e3e-4b7d-5c2e-9f0a-1b2c3d4e5f60",
                "0f6b8a52-1c3d-5e7f-8a9b-c0d1e2f3a4b5",
            ],
        );
        assert_eq!(encode(&[d]).unwrap(), UKIFY_HWIDS);
        let back = decode(UKIFY_HWIDS).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(
            format_uuid(&back[0].chid),
            "0f6b8a52-1c3d-5e7f-8a9b-c0d1e2f3a4b5"
        );
        assert_eq!(
            (back[0].name.as_str(), back[0].compatible.as_str()),
            ("Board A", "vendor,board-a")
        );
    }

    #[test]
    fn hostile_sections_are_refused() {
        let mut data = encode(&[dev("n", "c", &["10000000-0000-0000-0000-000000000001"])]).unwrap();
        data[24..28].copy_from_slice(&999u32.to_le_bytes());
        assert!(decode(&data).unwrap_err().to_string().contains("outside"));
        assert!(decode(&[0u8; 10]).is_err());
        assert!(decode(&[7u8; 28])
            .unwrap_err()
            .to_string()
            .contains("descriptor"));
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics_and_encode_round_trips(
            noise in proptest::collection::vec(proptest::num::u8::ANY, 0..512),
            names in proptest::collection::vec(("[a-zA-Z ]{1,12}", "[a-z,]{1,12}", proptest::collection::vec(proptest::array::uniform16(proptest::num::u8::ANY), 1..4)), 1..4),
        ) {
            let _ = decode(&noise);
            let devices: Vec<Device> = names.into_iter().map(|(n, c, chids)| Device { name: n, compatible: c, chids }).collect();
            let back = decode(&encode(&devices).unwrap()).unwrap();
            for d in &devices {
                for chid in &d.chids {
                    proptest::prop_assert!(back.iter().any(|r| r.chid == *chid && r.name == d.name && r.compatible == d.compatible));
                }
            }
        }
    }
}
