//! GUID Partition Table: a writer for the images we build and a reader for `inspect`.
//!
//! Layout (UEFI 2.10 §5.2–5.3), 512-byte logical blocks (LBA):
//! - LBA 0: protective MBR, one partition of type `0xEE` from LBA 1 over the whole disk
//!   (capped at `0xFFFFFFFF` sectors), signature `55 AA` at byte 510.
//! - LBA 1: the header (92 bytes, rest of the block zero): `EFI PART`, revision `0x00010000`,
//!   header size, CRC32 of the header (computed with this field zero), reserved, my LBA,
//!   alternate LBA, first and last usable LBA, disk GUID, partition entry LBA, number of
//!   entries, entry size, CRC32 of the entry array.
//! - LBA 2–33: 128 entries of 128 bytes: type GUID, unique GUID, first LBA, last LBA
//!   (inclusive), attributes, name (36 UTF-16LE code units).
//! - At the end of the disk: the entry array again, then the backup header in the last LBA.
//!
//! GUIDs are stored mixed-endian: the first three fields little-endian, the last two as they
//! read. [`Guid`] keeps the bytes in text order, so `Guid(root_hash[..16])` prints as the first
//! 32 hex digits of the root hash, which is how systemd-repart names verity partitions.

use std::fmt;
use std::str::FromStr;

use imgctl_measure::reader::Reader;
use imgctl_measure::ParseError;

/// Logical block size of the images we write and read.
pub const SECTOR: u64 = 512;
/// Number of entries we write (the UEFI minimum array size: 16 KiB).
pub const ENTRIES: u32 = 128;
/// Size of one entry we write.
pub const ENTRY_SIZE: u32 = 128;
/// First partition offset: 1 MiB, as libfdisk (and so systemd-repart) aligns it.
pub const FIRST_PARTITION_OFFSET: u64 = 1 << 20;
/// Partition alignment after the first: 4 KiB, systemd-repart's grain.
pub const ALIGN: u64 = 4096;
/// Sectors taken by the entry array.
const ENTRY_SECTORS: u64 = (ENTRIES as u64 * ENTRY_SIZE as u64) / SECTOR;
/// The largest entry array the reader accepts (bytes): far above any real table.
pub const MAX_ENTRY_ARRAY: u64 = 1 << 20;

/// A GUID, bytes in the order its text form reads.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// A version-4 style GUID made from the first 16 bytes of `hash` (version and variant bits
    /// forced), as systemd does for GUIDs derived from a hash.
    pub fn v4_from(hash: &[u8; 32]) -> Guid {
        let mut b = [0u8; 16];
        b.copy_from_slice(&hash[..16]);
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        Guid(b)
    }

    /// The on-disk (mixed-endian) encoding.
    pub fn to_disk(self) -> [u8; 16] {
        let b = self.0;
        [
            b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13],
            b[14], b[15],
        ]
    }

    pub fn from_disk(d: [u8; 16]) -> Guid {
        // The byte swap is its own inverse.
        Guid(Guid(d).to_disk())
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = hex::encode(self.0);
        write!(
            f,
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Guid({self})")
    }
}

/// A GUID string that is not `8-4-4-4-12` hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid GUID {0:?}: expected 8-4-4-4-12 hex digits")]
pub struct BadGuid(pub String);

impl FromStr for Guid {
    type Err = BadGuid;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let groups: Vec<&str> = s.split('-').collect();
        let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
        if lens != [8, 4, 4, 4, 12] {
            return Err(BadGuid(s.to_owned()));
        }
        let mut b = [0u8; 16];
        hex::decode_to_slice(groups.concat(), &mut b).map_err(|_| BadGuid(s.to_owned()))?;
        Ok(Guid(b))
    }
}

impl serde::Serialize for Guid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One partition entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionEntry {
    pub type_guid: Guid,
    pub unique_guid: Guid,
    pub first_lba: u64,
    /// Inclusive.
    pub last_lba: u64,
    pub attributes: u64,
    pub name: String,
}

impl PartitionEntry {
    pub fn offset(&self) -> u64 {
        self.first_lba.saturating_mul(SECTOR)
    }
    pub fn size(&self) -> u64 {
        (self.last_lba.saturating_sub(self.first_lba) + 1).saturating_mul(SECTOR)
    }
    fn is_unused(&self) -> bool {
        self.type_guid == Guid::default()
    }
}

/// GPT attribute bits used by the Discoverable Partitions Specification.
pub mod attr {
    /// Bit 60: mount read-only.
    pub const READ_ONLY: u64 = 1 << 60;
    /// Bit 59: grow the file system to the partition.
    pub const GROWFS: u64 = 1 << 59;
}

/// The parsed header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub revision: u32,
    pub header_size: u32,
    pub my_lba: u64,
    pub alternate_lba: u64,
    pub first_usable_lba: u64,
    pub last_usable_lba: u64,
    pub disk_guid: Guid,
    pub entries_lba: u64,
    pub num_entries: u32,
    pub entry_size: u32,
    pub entries_crc32: u32,
}

impl Header {
    /// Parses and CRC-checks the header in `block` (one logical block). `block_offset` is only
    /// used to report absolute offsets.
    pub fn parse(block: &[u8], block_offset: usize) -> Result<Header, ParseError> {
        let mut r = Reader::at(block, block_offset);
        let sig: [u8; 8] = r.array("GPT header signature")?;
        if &sig != b"EFI PART" {
            return Err(ParseError::new(
                block_offset,
                "GPT header signature",
                "expected \"EFI PART\" (is this a GPT disk image?)",
            ));
        }
        let revision = r.u32_le("GPT revision")?;
        let hs_off = r.offset();
        let header_size = r.u32_le("GPT header size")?;
        if !(92..=512).contains(&header_size) || header_size as usize > block.len() {
            return Err(ParseError::new(
                hs_off,
                "GPT header size",
                format!("{header_size} is outside 92..=512"),
            ));
        }
        let crc_off = r.offset();
        let header_crc = r.u32_le("GPT header CRC32")?;
        let mut copy = block[..header_size as usize].to_vec();
        copy[16..20].fill(0);
        let actual = crc32fast::hash(&copy);
        if actual != header_crc {
            return Err(ParseError::new(
                crc_off,
                "GPT header CRC32",
                format!("stored {header_crc:#010x}, computed {actual:#010x}"),
            ));
        }
        r.skip(4, "GPT reserved")?;
        let my_lba = r.u64_le("GPT my LBA")?;
        let alternate_lba = r.u64_le("GPT alternate LBA")?;
        let first_usable_lba = r.u64_le("GPT first usable LBA")?;
        let last_usable_lba = r.u64_le("GPT last usable LBA")?;
        let disk_guid = Guid::from_disk(r.array("GPT disk GUID")?);
        let entries_lba = r.u64_le("GPT partition entry LBA")?;
        let ne_off = r.offset();
        let num_entries = r.u32_le("GPT number of entries")?;
        let es_off = r.offset();
        let entry_size = r.u32_le("GPT entry size")?;
        if entry_size < 128 || entry_size % 8 != 0 || entry_size > 4096 {
            return Err(ParseError::new(
                es_off,
                "GPT entry size",
                format!("{entry_size} is not a multiple of 8 in 128..=4096"),
            ));
        }
        if u64::from(num_entries) * u64::from(entry_size) > MAX_ENTRY_ARRAY {
            return Err(ParseError::new(
                ne_off,
                "GPT number of entries",
                format!("{num_entries} entries of {entry_size} bytes exceed 1 MiB"),
            ));
        }
        let entries_crc32 = r.u32_le("GPT entries CRC32")?;
        Ok(Header {
            revision,
            header_size,
            my_lba,
            alternate_lba,
            first_usable_lba,
            last_usable_lba,
            disk_guid,
            entries_lba,
            num_entries,
            entry_size,
            entries_crc32,
        })
    }

    /// Bytes of the entry array.
    pub fn entries_len(&self) -> u64 {
        u64::from(self.num_entries) * u64::from(self.entry_size)
    }

    /// Parses and CRC-checks the entry array; unused entries are dropped.
    pub fn parse_entries(
        &self,
        bytes: &[u8],
        base: usize,
    ) -> Result<Vec<PartitionEntry>, ParseError> {
        let len = self.entries_len() as usize;
        let mut r = Reader::at(bytes, base);
        let array = r.take(len, "GPT partition entry array")?;
        let actual = crc32fast::hash(array);
        if actual != self.entries_crc32 {
            return Err(ParseError::new(
                base,
                "GPT entries CRC32",
                format!(
                    "stored {:#010x}, computed {actual:#010x}",
                    self.entries_crc32
                ),
            ));
        }
        let mut out = Vec::new();
        let mut r = Reader::at(array, base);
        for _ in 0..self.num_entries {
            let mut e = r.sub(self.entry_size as usize, "GPT partition entry")?;
            let type_guid = Guid::from_disk(e.array("partition type GUID")?);
            let unique_guid = Guid::from_disk(e.array("partition unique GUID")?);
            let first_lba = e.u64_le("partition first LBA")?;
            let last_off = e.offset();
            let last_lba = e.u64_le("partition last LBA")?;
            let attributes = e.u64_le("partition attributes")?;
            let raw: [u8; 72] = e.array("partition name")?;
            let units: Vec<u16> = raw
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .take_while(|&u| u != 0)
                .collect();
            let entry = PartitionEntry {
                type_guid,
                unique_guid,
                first_lba,
                last_lba,
                attributes,
                name: String::from_utf16_lossy(&units),
            };
            if entry.is_unused() {
                continue;
            }
            if last_lba < first_lba {
                return Err(ParseError::new(
                    last_off,
                    "partition last LBA",
                    format!("{last_lba} is before first LBA {first_lba}"),
                ));
            }
            out.push(entry);
        }
        Ok(out)
    }
}

/// A parsed partition table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpt {
    pub header: Header,
    pub partitions: Vec<PartitionEntry>,
    /// Whether LBA 0 holds a protective MBR (type 0xEE, signature 55 AA).
    pub protective_mbr: bool,
}

impl Gpt {
    /// Bytes from the start of the image needed to parse the primary table we and libfdisk
    /// write: MBR, header and a 128-entry array right after it.
    pub const TYPICAL_PREFIX: usize = (2 + ENTRY_SECTORS as usize) * SECTOR as usize;

    /// Parses the primary GPT from the first bytes of an image. `prefix` must reach the end of
    /// the entry array; the error says how many bytes were needed if it does not.
    pub fn parse(prefix: &[u8]) -> Result<Gpt, ParseError> {
        let mut r = Reader::new(prefix);
        let mbr = r.take(SECTOR as usize, "protective MBR")?;
        let protective_mbr = mbr[510..512] == [0x55, 0xAA] && mbr[446 + 4] == 0xEE;
        let block = r.take(SECTOR as usize, "GPT header")?;
        let header = Header::parse(block, SECTOR as usize)?;
        if header.my_lba != 1 {
            return Err(ParseError::new(
                SECTOR as usize + 24,
                "GPT my LBA",
                format!("primary header claims to be at LBA {}", header.my_lba),
            ));
        }
        let start = header
            .entries_lba
            .checked_mul(SECTOR)
            .and_then(|s| usize::try_from(s).ok())
            .ok_or_else(|| {
                ParseError::new(
                    SECTOR as usize + 72,
                    "GPT partition entry LBA",
                    "out of range",
                )
            })?;
        let mut r = Reader::new(prefix);
        r.skip(start, "bytes before the GPT partition entry array")?;
        let rest = r.rest();
        let partitions = header.parse_entries(rest, start)?;
        Ok(Gpt {
            header,
            partitions,
            protective_mbr,
        })
    }
}

/// A partition to lay out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPartition {
    pub type_guid: Guid,
    pub unique_guid: Guid,
    pub name: String,
    pub attributes: u64,
    /// Content size; the partition is rounded up to [`ALIGN`].
    pub size: u64,
}

/// A planned disk: where each partition goes and the table's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskLayout {
    pub disk_guid: Guid,
    pub partitions: Vec<PartitionEntry>,
    /// Total image size in bytes (a multiple of 4 KiB).
    pub size: u64,
}

/// Errors planning a disk.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("partition name {0:?} is longer than 36 UTF-16 code units")]
    NameTooLong(String),
    #[error("more than {ENTRIES} partitions")]
    TooManyPartitions,
    #[error("disk image would exceed 2^64 bytes")]
    TooLarge,
}

impl DiskLayout {
    /// Places `parts` in order: the first at 1 MiB, each next one 4 KiB-aligned; the disk ends
    /// with the backup table, rounded up to 4 KiB.
    pub fn plan(disk_guid: Guid, parts: &[NewPartition]) -> Result<DiskLayout, LayoutError> {
        if parts.len() > ENTRIES as usize {
            return Err(LayoutError::TooManyPartitions);
        }
        let mut offset = FIRST_PARTITION_OFFSET;
        let mut partitions = Vec::with_capacity(parts.len());
        for p in parts {
            if p.name.encode_utf16().count() > 36 {
                return Err(LayoutError::NameTooLong(p.name.clone()));
            }
            let size = align_up(p.size.max(1), ALIGN).ok_or(LayoutError::TooLarge)?;
            let end = offset.checked_add(size).ok_or(LayoutError::TooLarge)?;
            partitions.push(PartitionEntry {
                type_guid: p.type_guid,
                unique_guid: p.unique_guid,
                first_lba: offset / SECTOR,
                last_lba: end / SECTOR - 1,
                attributes: p.attributes,
                name: p.name.clone(),
            });
            offset = end;
        }
        let size = offset
            .checked_add((ENTRY_SECTORS + 1) * SECTOR)
            .and_then(|s| align_up(s, ALIGN))
            .ok_or(LayoutError::TooLarge)?;
        Ok(DiskLayout {
            disk_guid,
            partitions,
            size,
        })
    }

    fn last_lba(&self) -> u64 {
        self.size / SECTOR - 1
    }

    fn entry_array(&self) -> Vec<u8> {
        let mut out = vec![0u8; (ENTRIES * ENTRY_SIZE) as usize];
        for (e, slot) in self
            .partitions
            .iter()
            .zip(out.chunks_exact_mut(ENTRY_SIZE as usize))
        {
            slot[0..16].copy_from_slice(&e.type_guid.to_disk());
            slot[16..32].copy_from_slice(&e.unique_guid.to_disk());
            slot[32..40].copy_from_slice(&e.first_lba.to_le_bytes());
            slot[40..48].copy_from_slice(&e.last_lba.to_le_bytes());
            slot[48..56].copy_from_slice(&e.attributes.to_le_bytes());
            for (i, u) in e.name.encode_utf16().take(36).enumerate() {
                slot[56 + 2 * i..58 + 2 * i].copy_from_slice(&u.to_le_bytes());
            }
        }
        out
    }

    fn header(&self, my_lba: u64, alternate_lba: u64, entries_lba: u64, crc: u32) -> Vec<u8> {
        let mut h = vec![0u8; SECTOR as usize];
        h[0..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&my_lba.to_le_bytes());
        h[32..40].copy_from_slice(&alternate_lba.to_le_bytes());
        // First usable LBA as libfdisk sets it for 1 MiB alignment.
        h[40..48].copy_from_slice(&(FIRST_PARTITION_OFFSET / SECTOR).to_le_bytes());
        h[48..56].copy_from_slice(&(self.last_lba() - ENTRY_SECTORS - 1).to_le_bytes());
        h[56..72].copy_from_slice(&self.disk_guid.to_disk());
        h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        h[80..84].copy_from_slice(&ENTRIES.to_le_bytes());
        h[84..88].copy_from_slice(&ENTRY_SIZE.to_le_bytes());
        h[88..92].copy_from_slice(&crc.to_le_bytes());
        let header_crc = crc32fast::hash(&h[..92]);
        h[16..20].copy_from_slice(&header_crc.to_le_bytes());
        h
    }

    /// Protective MBR, primary header and entry array: the image's first 34 blocks.
    pub fn primary(&self) -> Vec<u8> {
        let entries = self.entry_array();
        let crc = crc32fast::hash(&entries);
        let mut out = vec![0u8; SECTOR as usize];
        let sectors = u32::try_from(self.size / SECTOR - 1).unwrap_or(u32::MAX);
        let pe = &mut out[446..462];
        pe[1..4].copy_from_slice(&[0x00, 0x02, 0x00]); // CHS of LBA 1
        pe[4] = 0xEE;
        pe[5..8].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
        pe[8..12].copy_from_slice(&1u32.to_le_bytes());
        pe[12..16].copy_from_slice(&sectors.to_le_bytes());
        out[510] = 0x55;
        out[511] = 0xAA;
        out.extend(self.header(1, self.last_lba(), 2, crc));
        out.extend(entries);
        out
    }

    /// Offset of [`DiskLayout::backup`] in the image.
    pub fn backup_offset(&self) -> u64 {
        self.size - (ENTRY_SECTORS + 1) * SECTOR
    }

    /// Backup entry array followed by the backup header: the image's last 33 blocks.
    pub fn backup(&self) -> Vec<u8> {
        let entries = self.entry_array();
        let crc = crc32fast::hash(&entries);
        let mut out = entries;
        let last = self.last_lba();
        out.extend(self.header(last, 1, last - ENTRY_SECTORS, crc));
        out
    }
}

fn align_up(v: u64, a: u64) -> Option<u64> {
    v.checked_add(a - 1).map(|x| x / a * a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_text_and_disk_forms() {
        // The ESP type GUID: text form and the on-disk bytes from the UEFI specification.
        let g: Guid = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b".parse().unwrap();
        assert_eq!(hex::encode(g.to_disk()), "28732ac11ff8d211ba4b00a0c93ec93b");
        assert_eq!(Guid::from_disk(g.to_disk()), g);
        assert_eq!(g.to_string(), "c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
        assert!("c12a7328-f81f-11d2-ba4b-00a0c93ec93"
            .parse::<Guid>()
            .is_err());
    }

    #[test]
    fn planned_table_parses_back() {
        let parts = [
            NewPartition {
                type_guid: Guid([1; 16]),
                unique_guid: Guid([2; 16]),
                name: "usr-x86-64".into(),
                attributes: attr::READ_ONLY,
                size: 5000,
            },
            NewPartition {
                type_guid: Guid([3; 16]),
                unique_guid: Guid([4; 16]),
                name: "usr-x86-64-verity".into(),
                attributes: 0,
                size: 4096,
            },
        ];
        let l = DiskLayout::plan(Guid([9; 16]), &parts).unwrap();
        assert_eq!(l.partitions[0].offset(), 1 << 20);
        assert_eq!(l.partitions[0].size(), 8192);
        assert_eq!(l.partitions[1].offset(), (1 << 20) + 8192);
        assert_eq!(l.size % 4096, 0);
        let g = Gpt::parse(&l.primary()).unwrap();
        assert!(g.protective_mbr);
        assert_eq!(g.partitions, l.partitions);
        assert_eq!(g.header.disk_guid, Guid([9; 16]));
        // The backup header is valid where it claims to be.
        let b = l.backup();
        let h = Header::parse(&b[b.len() - 512..], 0).unwrap();
        assert_eq!(h.my_lba, l.size / 512 - 1);
        assert_eq!(h.parse_entries(&b, 0).unwrap(), l.partitions);
    }

    #[test]
    fn corrupt_header_crc_is_reported_with_offset() {
        let l = DiskLayout::plan(Guid([9; 16]), &[]).unwrap();
        let mut p = l.primary();
        p[512 + 60] ^= 1;
        let e = Gpt::parse(&p).unwrap_err();
        assert_eq!(e.what, "GPT header CRC32");
        assert_eq!(e.offset, 512 + 16);
    }
}
