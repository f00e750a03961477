//! dm-verity (hash type 1) as `veritysetup format` lays it out: a v1 superblock followed by the
//! hash tree, computed natively and in parallel.
//!
//! Format (cryptsetup's `VERITY_create`/`VERITY_write_sb`, reproduced on veritysetup 2.6.1; see
//! `reference/systemd.md` §6.4):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | signature `verity\0\0` |
//! | 8 | 4 | version (1) |
//! | 12 | 4 | hash_type (1 normal, 0 Chrome OS) |
//! | 16 | 16 | uuid |
//! | 32 | 32 | algorithm, NUL-padded (`sha256`) |
//! | 64 | 4 | data_block_size |
//! | 68 | 4 | hash_block_size |
//! | 72 | 8 | data_blocks |
//! | 80 | 2 | salt_size (≤ 256) |
//! | 82 | 6 | padding |
//! | 88 | 256 | salt, zero-padded |
//! | 344 | 168 | padding |
//!
//! All integers little-endian. The superblock occupies the first hash block. The tree follows
//! it top-down: the level with a single block first, the leaf level (one digest per data
//! block) last. Every digest is `SHA-256(salt ‖ block)`; each level's digests are packed
//! (`hash_block_size / 32` per block) and zero-padded to whole blocks. The root hash is the
//! digest of the top level's single block; with a single data block there are no levels and
//! the root hash is the digest of that data block. `veritysetup` covers only whole data blocks
//! (a trailing partial block is not protected) and refuses empty data; so do we.
//!
//! The tree builder is streaming: feed data blocks in any chunking with [`TreeBuilder::update`]
//! (each chunk is hashed across all cores with rayon), or let every core read and hash its own
//! chunks with [`TreeBuilder::update_from`] (what files use: one pass, no reader thread); only
//! the leaf digests (32 bytes per 4 KiB) are kept in memory.

use rayon::prelude::*;

use imgctl_measure::reader::Reader;
use imgctl_measure::ParseError;

/// Size of the on-disk superblock; it is padded to a whole hash block.
pub const SUPERBLOCK_SIZE: usize = 512;
/// `verity\0\0`.
pub const SIGNATURE: [u8; 8] = *b"verity\0\0";
/// The largest salt the superblock can hold.
pub const MAX_SALT_SIZE: usize = 256;
/// SHA-256, the only hash this module computes.
pub const DIGEST_SIZE: usize = 32;
const ALGORITHM: &str = "sha256";

/// Errors building a hash tree.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerityError {
    #[error("dm-verity needs at least one whole data block of {block_size} bytes; got {len} bytes (veritysetup refuses this too)")]
    NoData { len: u64, block_size: u32 },
    #[error("salt is {0} bytes; the verity superblock holds at most 256")]
    SaltTooLong(usize),
    #[error("{what} block size {size} is not a power of two between 512 and 65536")]
    BadBlockSize { what: &'static str, size: u32 },
    #[error("data chunk of {len} bytes is not a whole number of {block_size}-byte blocks")]
    PartialBlock { len: usize, block_size: u32 },
    #[error("hash tree too large for this machine ({0} data blocks)")]
    TooLarge(u64),
}

/// `hash_type` of the superblock: an open enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashType(pub u32);

impl HashType {
    pub const CHROME_OS: HashType = HashType(0);
    pub const NORMAL: HashType = HashType(1);
}

/// The dm-verity v1 superblock, as stored at offset 0 of the hash device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub version: u32,
    pub hash_type: HashType,
    pub uuid: [u8; 16],
    /// Hash algorithm name as stored (without the NUL padding).
    pub algorithm: String,
    pub data_block_size: u32,
    pub hash_block_size: u32,
    pub data_blocks: u64,
    pub salt: Vec<u8>,
}

impl Superblock {
    /// Parses the first 512 bytes of `bytes` (the rest of the first hash block is ignored, as
    /// veritysetup ignores it).
    pub fn parse(bytes: &[u8]) -> Result<Superblock, ParseError> {
        let mut r = Reader::new(bytes);
        let sig: [u8; 8] = r.array("verity superblock signature")?;
        if sig != SIGNATURE {
            return Err(ParseError::new(
                0,
                "verity superblock signature",
                format!("expected \"verity\\0\\0\", found {}", hex::encode(sig)),
            ));
        }
        let version = r.u32_le("verity superblock version")?;
        if version != 1 {
            return Err(ParseError::new(
                8,
                "verity superblock version",
                format!("unsupported version {version} (only 1 exists)"),
            ));
        }
        let hash_type = HashType(r.u32_le("verity hash_type")?);
        let uuid = r.array("verity uuid")?;
        let alg_off = r.offset();
        let alg: [u8; 32] = r.array("verity algorithm")?;
        let alg_len = alg.iter().position(|&b| b == 0).ok_or_else(|| {
            ParseError::new(alg_off, "verity algorithm", "name is not NUL-terminated")
        })?;
        let algorithm = std::str::from_utf8(&alg[..alg_len])
            .ok()
            .filter(|s| s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
            .ok_or_else(|| ParseError::new(alg_off, "verity algorithm", "name is not ASCII"))?
            .to_owned();
        let dbs_off = r.offset();
        let data_block_size = r.u32_le("verity data_block_size")?;
        check_block_size("data", data_block_size)
            .map_err(|e| ParseError::new(dbs_off, "verity data_block_size", e.to_string()))?;
        let hbs_off = r.offset();
        let hash_block_size = r.u32_le("verity hash_block_size")?;
        check_block_size("hash", hash_block_size)
            .map_err(|e| ParseError::new(hbs_off, "verity hash_block_size", e.to_string()))?;
        let data_blocks = r.u64_le("verity data_blocks")?;
        let salt_off = r.offset();
        let salt_size = usize::from(r.u16_le("verity salt_size")?);
        if salt_size > MAX_SALT_SIZE {
            return Err(ParseError::new(
                salt_off,
                "verity salt_size",
                format!("{salt_size} exceeds the 256-byte salt field"),
            ));
        }
        r.skip(6, "verity padding")?;
        let salt_field: [u8; MAX_SALT_SIZE] = r.array("verity salt")?;
        r.skip(168, "verity padding")?;
        Ok(Superblock {
            version,
            hash_type,
            uuid,
            algorithm,
            data_block_size,
            hash_block_size,
            data_blocks,
            salt: salt_field[..salt_size].to_vec(),
        })
    }

    /// The 512 bytes veritysetup writes.
    pub fn encode(&self) -> [u8; SUPERBLOCK_SIZE] {
        let mut out = [0u8; SUPERBLOCK_SIZE];
        out[0..8].copy_from_slice(&SIGNATURE);
        out[8..12].copy_from_slice(&self.version.to_le_bytes());
        out[12..16].copy_from_slice(&self.hash_type.0.to_le_bytes());
        out[16..32].copy_from_slice(&self.uuid);
        let alg = self.algorithm.as_bytes();
        let n = alg.len().min(31);
        out[32..32 + n].copy_from_slice(&alg[..n]);
        out[64..68].copy_from_slice(&self.data_block_size.to_le_bytes());
        out[68..72].copy_from_slice(&self.hash_block_size.to_le_bytes());
        out[72..80].copy_from_slice(&self.data_blocks.to_le_bytes());
        let salt = &self.salt[..self.salt.len().min(MAX_SALT_SIZE)];
        // Cannot truncate: the length is at most 256.
        out[80..82].copy_from_slice(&(salt.len() as u16).to_le_bytes());
        out[88..88 + salt.len()].copy_from_slice(salt);
        out
    }

    /// The UUID in its usual text form.
    pub fn uuid_string(&self) -> String {
        crate::gpt::Guid(self.uuid).to_string()
    }
}

fn check_block_size(what: &'static str, size: u32) -> Result<(), VerityError> {
    if size.is_power_of_two() && (512..=65536).contains(&size) {
        Ok(())
    } else {
        Err(VerityError::BadBlockSize { what, size })
    }
}

/// What `veritysetup format --salt=… --uuid=…` is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityParams {
    salt: Vec<u8>,
    uuid: [u8; 16],
    data_block_size: u32,
    hash_block_size: u32,
}

impl VerityParams {
    /// SHA-256 with 4 KiB data and hash blocks (veritysetup's defaults).
    pub fn new(salt: &[u8], uuid: [u8; 16]) -> Result<Self, VerityError> {
        Self::with_block_sizes(salt, uuid, 4096, 4096)
    }

    pub fn with_block_sizes(
        salt: &[u8],
        uuid: [u8; 16],
        data_block_size: u32,
        hash_block_size: u32,
    ) -> Result<Self, VerityError> {
        if salt.len() > MAX_SALT_SIZE {
            return Err(VerityError::SaltTooLong(salt.len()));
        }
        check_block_size("data", data_block_size)?;
        check_block_size("hash", hash_block_size)?;
        Ok(VerityParams {
            salt: salt.to_vec(),
            uuid,
            data_block_size,
            hash_block_size,
        })
    }

    /// The parameters a superblock records (only SHA-256 superblocks are accepted).
    pub fn from_superblock(sb: &Superblock) -> Result<Self, VerityError> {
        Self::with_block_sizes(&sb.salt, sb.uuid, sb.data_block_size, sb.hash_block_size)
    }

    pub fn salt(&self) -> &[u8] {
        &self.salt
    }
    pub fn uuid(&self) -> [u8; 16] {
        self.uuid
    }
    pub fn data_block_size(&self) -> u32 {
        self.data_block_size
    }
    pub fn hash_block_size(&self) -> u32 {
        self.hash_block_size
    }

    fn superblock(&self, data_blocks: u64) -> Superblock {
        Superblock {
            version: 1,
            hash_type: HashType::NORMAL,
            uuid: self.uuid,
            algorithm: ALGORITHM.to_owned(),
            data_block_size: self.data_block_size,
            hash_block_size: self.hash_block_size,
            data_blocks,
            salt: self.salt.clone(),
        }
    }
}

/// One level of the tree: where it starts on the hash device and how many blocks it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Level {
    pub offset: u64,
    pub blocks: u64,
}

/// Where each level of the tree goes. `levels[0]` is the leaf level (digests of data blocks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeLayout {
    pub data_blocks: u64,
    pub hash_block_size: u64,
    pub levels: Vec<Level>,
}

impl TreeLayout {
    pub fn new(data_blocks: u64, hash_block_size: u32) -> TreeLayout {
        let hbs = u64::from(hash_block_size);
        let per_block = (hbs / DIGEST_SIZE as u64).max(1);
        let mut sizes = Vec::new();
        if data_blocks > 1 {
            let mut n = data_blocks;
            loop {
                let blocks = n.div_ceil(per_block);
                sizes.push(blocks);
                if blocks <= 1 {
                    break;
                }
                n = blocks;
            }
        }
        // Top level first, right after the superblock's block.
        let mut offset = hbs;
        let mut levels = vec![
            Level {
                offset: 0,
                blocks: 0
            };
            sizes.len()
        ];
        for (i, &blocks) in sizes.iter().enumerate().rev() {
            levels[i] = Level { offset, blocks };
            offset = offset.saturating_add(blocks.saturating_mul(hbs));
        }
        TreeLayout {
            data_blocks,
            hash_block_size: hbs,
            levels,
        }
    }

    /// Bytes of the hash device: superblock block plus every level.
    pub fn hash_device_size(&self) -> u64 {
        self.levels.iter().fold(self.hash_block_size, |acc, l| {
            acc.saturating_add(l.blocks.saturating_mul(self.hash_block_size))
        })
    }
}

/// A finished tree: the hash device's bytes and the root hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityTree {
    pub superblock: Superblock,
    pub layout: TreeLayout,
    pub root_hash: [u8; DIGEST_SIZE],
    /// Superblock block followed by the levels, top-down: what `veritysetup format` writes.
    pub hash_device: Vec<u8>,
}

impl VerityTree {
    pub fn root_hash_hex(&self) -> String {
        hex::encode(self.root_hash)
    }
}

/// Builds the tree from data blocks streamed in.
#[derive(Debug)]
pub struct TreeBuilder {
    params: VerityParams,
    /// One digest per data block seen so far.
    leaves: Vec<u8>,
}

/// Blocks per rayon task: big enough to amortise scheduling, small enough to balance two cores.
const MIN_BLOCKS_PER_TASK: usize = 64;

impl TreeBuilder {
    pub fn new(params: VerityParams) -> Self {
        TreeBuilder {
            params,
            leaves: Vec::new(),
        }
    }

    /// Reserves room for the digests of `data_blocks` blocks.
    pub fn with_capacity(params: VerityParams, data_blocks: u64) -> Result<Self, VerityError> {
        let bytes = usize::try_from(data_blocks)
            .ok()
            .and_then(|n| n.checked_mul(DIGEST_SIZE))
            .ok_or(VerityError::TooLarge(data_blocks))?;
        let mut b = Self::new(params);
        b.leaves.reserve_exact(bytes);
        Ok(b)
    }

    pub fn params(&self) -> &VerityParams {
        &self.params
    }

    /// Hashes whole data blocks, in parallel.
    pub fn update(&mut self, blocks: &[u8]) -> Result<(), VerityError> {
        let bs = self.params.data_block_size as usize;
        if blocks.len() % bs != 0 {
            return Err(VerityError::PartialBlock {
                len: blocks.len(),
                block_size: self.params.data_block_size,
            });
        }
        let start = self.leaves.len();
        self.leaves
            .resize(start + blocks.len() / bs * DIGEST_SIZE, 0);
        hash_blocks(&self.params.salt, blocks, bs, &mut self.leaves[start..]);
        Ok(())
    }

    /// Hashes `data_blocks` more data blocks that `read(offset, buf)` supplies: `offset` is
    /// the byte offset of `buf` from the start of the data (counting the blocks already
    /// hashed), `buf` a whole number of blocks, at most [`READ_CHUNK`] bytes.
    ///
    /// Every core reads its own chunk and hashes it at once, so the data is read once, by all
    /// cores, and hashed while it is still in that core's cache (no reader thread, no copy
    /// from a shared buffer). An error from `read` stops the work and is returned.
    pub fn update_from<E, F>(&mut self, data_blocks: u64, read: F) -> Result<(), E>
    where
        E: From<VerityError> + Send,
        F: Fn(u64, &mut [u8]) -> Result<(), E> + Sync,
    {
        let bs = self.params.data_block_size as usize;
        let start = self.leaves.len();
        let end = usize::try_from(data_blocks)
            .ok()
            .and_then(|n| n.checked_mul(DIGEST_SIZE))
            .and_then(|n| n.checked_add(start))
            .ok_or(VerityError::TooLarge(data_blocks))?;
        let first = self.data_blocks();
        self.leaves.resize(end, 0);
        let chunk_blocks = (READ_CHUNK / bs).max(1);
        let salt = &self.params.salt;
        let result = self.leaves[start..]
            .par_chunks_mut(chunk_blocks * DIGEST_SIZE)
            .enumerate()
            .try_for_each(|(i, out)| {
                CHUNK_BUF.with(|buf| {
                    let mut buf = buf.borrow_mut();
                    let len = out.len() / DIGEST_SIZE * bs;
                    if buf.len() < len {
                        buf.resize(len, 0);
                    }
                    let block = first + (i * chunk_blocks) as u64;
                    read(block * bs as u64, &mut buf[..len])?;
                    imgctl_sha256x2::digest_chunks(salt, &buf[..len], bs, out);
                    Ok(())
                })
            });
        if result.is_err() {
            self.leaves.truncate(start);
        }
        result
    }

    /// Data blocks hashed so far.
    pub fn data_blocks(&self) -> u64 {
        (self.leaves.len() / DIGEST_SIZE) as u64
    }

    /// Computes the upper levels and lays out the hash device.
    pub fn finish(self) -> Result<VerityTree, VerityError> {
        let data_blocks = self.data_blocks();
        if data_blocks == 0 {
            return Err(VerityError::NoData {
                len: 0,
                block_size: self.params.data_block_size,
            });
        }
        let layout = TreeLayout::new(data_blocks, self.params.hash_block_size);
        let hbs = self.params.hash_block_size as usize;
        let size = usize::try_from(layout.hash_device_size())
            .map_err(|_| VerityError::TooLarge(data_blocks))?;
        let mut dev = vec![0u8; size];
        let superblock = self.params.superblock(data_blocks);
        dev[..SUPERBLOCK_SIZE].copy_from_slice(&superblock.encode());
        let salt = &self.params.salt;

        // `digests` holds the digests that make up the current level's content.
        let mut digests = self.leaves;
        for level in &layout.levels {
            let off = level.offset as usize;
            let len = level.blocks as usize * hbs;
            let region = &mut dev[off..off + len];
            region[..digests.len()].copy_from_slice(&digests);
            let mut next = vec![0u8; level.blocks as usize * DIGEST_SIZE];
            hash_blocks(salt, region, hbs, &mut next);
            digests = next;
        }
        // Whatever remains is a single digest: of the top level block, or of the only data
        // block when there are no levels.
        let mut root_hash = [0u8; DIGEST_SIZE];
        root_hash.copy_from_slice(&digests[..DIGEST_SIZE]);
        Ok(VerityTree {
            superblock,
            layout,
            root_hash,
            hash_device: dev,
        })
    }
}

/// The largest read [`TreeBuilder::update_from`] asks for: a quarter of a core's L2 cache on
/// current x86 server parts, so the chunk is still there when it is hashed, and one large
/// request per read.
pub const READ_CHUNK: usize = 512 << 10;

thread_local! {
    /// Each rayon worker's read buffer for [`TreeBuilder::update_from`], reused across calls so
    /// its pages are faulted in once.
    static CHUNK_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `out[i] = SHA-256(salt ‖ blocks[i])`, split across the rayon pool in runs of blocks; each
/// run is hashed two blocks at a time ([`imgctl_sha256x2`]: two interleaved SHA-NI streams per
/// core where the CPU has them).
fn hash_blocks(salt: &[u8], blocks: &[u8], bs: usize, out: &mut [u8]) {
    blocks
        .par_chunks(bs * MIN_BLOCKS_PER_TASK)
        .zip(out.par_chunks_mut(DIGEST_SIZE * MIN_BLOCKS_PER_TASK))
        .for_each(|(run, out)| imgctl_sha256x2::digest_chunks(salt, run, bs, out));
}

/// `veritysetup format` over an in-memory data device: whole blocks only, like veritysetup.
pub fn format(params: &VerityParams, data: &[u8]) -> Result<VerityTree, VerityError> {
    let bs = params.data_block_size as usize;
    let whole = data.len() - data.len() % bs;
    if whole == 0 {
        return Err(VerityError::NoData {
            len: data.len() as u64,
            block_size: params.data_block_size,
        });
    }
    let mut b = TreeBuilder::with_capacity(params.clone(), (whole / bs) as u64)?;
    b.update(&data[..whole])?;
    b.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    fn h(salt: &[u8], block: &[u8]) -> [u8; 32] {
        let mut s = Sha256::new();
        s.update(salt);
        s.update(block);
        s.finalize().into()
    }

    const UUID: [u8; 16] = [
        0x11, 0x11, 0x11, 0x11, 0x22, 0x22, 0x33, 0x33, 0x44, 0x44, 0x55, 0x55, 0x55, 0x55, 0x55,
        0x55,
    ];

    #[test]
    fn single_block_has_no_levels_and_hashes_the_block() {
        let p = VerityParams::new(b"\x00\x11", UUID).unwrap();
        let data = vec![7u8; 4096];
        let t = format(&p, &data).unwrap();
        assert!(t.layout.levels.is_empty());
        assert_eq!(t.hash_device.len(), 4096);
        assert_eq!(t.root_hash, h(b"\x00\x11", &data));
    }

    #[test]
    fn levels_are_stored_top_down() {
        // 129 blocks: leaf level of 2 blocks, one top block.
        let l = TreeLayout::new(129, 4096);
        assert_eq!(
            l.levels,
            vec![
                Level {
                    offset: 8192,
                    blocks: 2
                },
                Level {
                    offset: 4096,
                    blocks: 1
                }
            ]
        );
        assert_eq!(TreeLayout::new(128, 4096).levels.len(), 1);
        assert_eq!(TreeLayout::new(16385, 4096).levels.len(), 3);
    }

    #[test]
    fn superblock_round_trips_and_matches_the_reference_table() {
        let p = VerityParams::new(&[0xab; 32], UUID).unwrap();
        let sb = p.superblock(256);
        let bytes = sb.encode();
        assert_eq!(&bytes[0..8], b"verity\0\0");
        assert_eq!(&bytes[32..38], b"sha256");
        assert_eq!(u16::from_le_bytes([bytes[80], bytes[81]]), 32);
        assert_eq!(Superblock::parse(&bytes).unwrap(), sb);
        assert_eq!(sb.uuid_string(), "11111111-2222-3333-4444-555555555555");
    }

    #[test]
    fn streaming_in_odd_chunks_equals_one_shot() {
        let p = VerityParams::new(b"salt", UUID).unwrap();
        let data: Vec<u8> = (0..300 * 4096u32).map(|i| (i * 7 % 251) as u8).collect();
        let one = format(&p, &data).unwrap();
        let mut b = TreeBuilder::new(p);
        for chunk in data.chunks(4096 * 37) {
            b.update(chunk).unwrap();
        }
        assert_eq!(b.finish().unwrap(), one);
    }

    #[test]
    fn reading_on_every_core_equals_one_shot() {
        // More than one READ_CHUNK, not a multiple of it, after blocks fed by `update`.
        let p = VerityParams::new(b"salt", UUID).unwrap();
        let blocks = READ_CHUNK / 4096 * 3 + 5;
        let data: Vec<u8> = (0..(blocks + 2) * 4096)
            .map(|i| (i * 13 % 251) as u8)
            .collect();
        let one = format(&p, &data).unwrap();
        let mut b = TreeBuilder::new(p);
        b.update(&data[..2 * 4096]).unwrap();
        b.update_from(
            blocks as u64,
            |at, buf: &mut [u8]| -> Result<(), VerityError> {
                let at = at as usize;
                buf.copy_from_slice(&data[at..at + buf.len()]);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(b.finish().unwrap(), one);
    }

    #[test]
    fn a_failed_read_is_returned_and_adds_no_blocks() {
        let p = VerityParams::new(b"", UUID).unwrap();
        let mut b = TreeBuilder::new(p);
        let r = b.update_from(1000, |at, _buf: &mut [u8]| {
            if at >= 4096 * 300 {
                Err(VerityError::TooLarge(at))
            } else {
                Ok(())
            }
        });
        assert!(matches!(r, Err(VerityError::TooLarge(_))));
        assert_eq!(b.data_blocks(), 0);
    }

    #[test]
    fn empty_and_partial_input_is_refused() {
        let p = VerityParams::new(b"", UUID).unwrap();
        assert!(matches!(format(&p, &[]), Err(VerityError::NoData { .. })));
        assert!(matches!(
            format(&p, &[0; 100]),
            Err(VerityError::NoData { .. })
        ));
        let mut b = TreeBuilder::new(p);
        assert!(b.update(&[0; 100]).is_err());
    }
}
