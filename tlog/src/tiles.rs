//! C2SP tlog-tiles: tile paths, hash tiles, entry bundles, and the right edge of a tiled tree.
//!
//! A tile is 256 consecutive hashes of one tree level that is a multiple of 8 (tile level `L`
//! holds tree level `8L`): the `n`-th tile at level `L` holds
//! `MTH(D[(n*256 + i) * 256^L : (n*256 + i + 1) * 256^L])` for `i` in `0..256`. Full tiles are
//! exactly 8,192 bytes. For a tree of size `s` the rightmost tile at level `L` is partial with
//! `floor(s / 256^L) mod 256` hashes and is served at `<path>.p/<W>`; empty tiles do not exist.
//! Entry bundles (`tile/entries/<N>[.p/<W>]`) hold the entries of the matching level-0 tile,
//! each as a big-endian `u16` length and the bytes.
//!
//! Paths: `tile/<L>/<N>`, where `N` is written in zero-padded 3-digit groups, every group but
//! the last prefixed with `x` (`1234067` → `x001/x234/067`).
//!
//! [`Edge`] is the part of the tree an appender needs: the partial tile at every level and the
//! partial entry bundle. From it alone it computes the root and the tiles a batch of appends
//! writes. [`TileNodes`] serves proof generation from tiles fetched by any closure (a folder,
//! HTTP), and [`audit`] recomputes every tile of a log from its entries.

use std::collections::HashMap;

use super::merkle::{empty_root, leaf_hash, node_hash, root_of, Hash, NodeSource};
use super::Error;
use imgctl_measure::reader::Reader;

/// Tree levels per tile.
pub const TILE_HEIGHT: u32 = 8;
/// Hashes (or entries) in a full tile.
pub const TILE_WIDTH: u16 = 256;
/// Bytes in a full hash tile.
pub const FULL_TILE_BYTES: usize = 256 * 32;
/// The highest tile level a path may name.
pub const MAX_TILE_LEVEL: u8 = 63;
/// The largest entry an entry bundle can hold.
pub const MAX_ENTRY_LEN: usize = u16::MAX as usize;

/// What a tile holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TileKind {
    /// Hashes of tree level `8 * L`.
    Hashes(u8),
    /// An entry bundle (the data behind level-0 tile of the same index).
    Entries,
}

/// One tile resource: kind, index within its level, width (1..=256; 256 is a full tile).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TileId {
    pub kind: TileKind,
    pub index: u64,
    pub width: u16,
}

fn shr(x: u64, bits: u32) -> u64 {
    x.checked_shr(bits).unwrap_or(0)
}

/// Tree level `8 * level` for the hash-tile level (entries count as level 0).
fn tile_level(kind: TileKind) -> u32 {
    match kind {
        TileKind::Hashes(l) => u32::from(l),
        TileKind::Entries => 0,
    }
}

/// Number of full tiles of `kind` in a tree of `size` leaves.
pub fn full_tiles(kind: TileKind, size: u64) -> u64 {
    shr(size, TILE_HEIGHT * (tile_level(kind) + 1))
}

/// Width of the partial tile of `kind` in a tree of `size` leaves (0: there is none).
pub fn partial_width(kind: TileKind, size: u64) -> u16 {
    (shr(size, TILE_HEIGHT * tile_level(kind)) & 0xff) as u16
}

impl TileId {
    pub fn is_full(&self) -> bool {
        self.width == TILE_WIDTH
    }

    /// The tile of `kind` with `index` as it exists in a tree of `size` leaves.
    pub fn for_size(kind: TileKind, index: u64, size: u64) -> Result<TileId, Error> {
        let full = full_tiles(kind, size);
        let width = if index < full {
            TILE_WIDTH
        } else {
            partial_width(kind, size)
        };
        if index > full || width == 0 {
            return Err(Error::Source(format!(
                "tile {:?} index {index} does not exist in a tree of size {size}",
                kind
            )));
        }
        Ok(TileId { kind, index, width })
    }

    /// The same tile, full (what a client falls back to if a partial tile was deleted).
    pub fn full(&self) -> TileId {
        TileId {
            width: TILE_WIDTH,
            ..*self
        }
    }

    /// The path of this resource below the log's prefix.
    pub fn path(&self) -> String {
        let mut p = match self.kind {
            TileKind::Hashes(l) => format!("tile/{l}/"),
            TileKind::Entries => "tile/entries/".to_owned(),
        };
        p.push_str(&index_path(self.index));
        if !self.is_full() {
            p.push_str(&format!(".p/{}", self.width));
        }
        p
    }

    /// The folder that holds a partial version of this tile (`<path>.p`).
    pub fn partial_dir(&self) -> String {
        self.full().path() + ".p"
    }

    /// Parses a tile path strictly (canonical form only).
    pub fn parse_path(path: &str) -> Result<TileId, Error> {
        let bad = |m: &str| Error::Tile {
            path: path.to_owned(),
            message: m.to_owned(),
        };
        let rest = path
            .strip_prefix("tile/")
            .ok_or_else(|| bad("does not start with tile/"))?;
        let (kind_s, rest) = rest.split_once('/').ok_or_else(|| bad("no tile index"))?;
        let kind = if kind_s == "entries" {
            TileKind::Entries
        } else {
            let l = parse_decimal(kind_s).ok_or_else(|| bad("level is not a canonical decimal"))?;
            if l > u64::from(MAX_TILE_LEVEL) {
                return Err(bad("level above 63"));
            }
            TileKind::Hashes(l as u8)
        };
        let (index_s, width) = match rest.split_once(".p/") {
            Some((i, w)) => {
                let w = parse_decimal(w).ok_or_else(|| bad("width is not a canonical decimal"))?;
                if !(1..=255).contains(&w) {
                    return Err(bad("partial width must be 1..255"));
                }
                (i, w as u16)
            }
            None => (rest, TILE_WIDTH),
        };
        let groups: Vec<&str> = index_s.split('/').collect();
        let mut index: u64 = 0;
        for (i, g) in groups.iter().enumerate() {
            let last = i + 1 == groups.len();
            let digits = if last {
                *g
            } else {
                g.strip_prefix('x')
                    .ok_or_else(|| bad("index group without x prefix"))?
            };
            if digits.len() != 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad("index group is not 3 digits"));
            }
            if i == 0 && !last && digits == "000" {
                return Err(bad("index has a leading zero group"));
            }
            let v: u64 = digits.parse().map_err(|_| bad("index group"))?;
            index = index
                .checked_mul(1000)
                .and_then(|x| x.checked_add(v))
                .ok_or_else(|| bad("index overflows 64 bits"))?;
        }
        let id = TileId { kind, index, width };
        if id.path() != path {
            return Err(bad("not in canonical form"));
        }
        Ok(id)
    }
}

fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    s.parse().ok()
}

/// `N` as zero-padded 3-digit groups, all but the last prefixed with `x`.
pub fn index_path(mut n: u64) -> String {
    let mut groups = Vec::new();
    loop {
        groups.push(n % 1000);
        n /= 1000;
        if n == 0 {
            break;
        }
    }
    let mut out = String::new();
    for (i, g) in groups.iter().rev().enumerate() {
        if i + 1 < groups.len() {
            out.push_str(&format!("x{g:03}/"));
        } else {
            out.push_str(&format!("{g:03}"));
        }
    }
    out
}

/// Every tile resource (hash tiles at every level, and entry bundles) of a tree of `size`.
pub fn tiles_for_size(size: u64) -> Vec<TileId> {
    let mut out = Vec::new();
    let mut kinds = vec![TileKind::Entries];
    let mut l = 0u8;
    while l <= MAX_TILE_LEVEL && shr(size, TILE_HEIGHT * u32::from(l)) > 0 {
        kinds.push(TileKind::Hashes(l));
        l += 1;
    }
    for kind in kinds {
        let full = full_tiles(kind, size);
        for index in 0..full {
            out.push(TileId {
                kind,
                index,
                width: TILE_WIDTH,
            });
        }
        let w = partial_width(kind, size);
        if w > 0 {
            out.push(TileId {
                kind,
                index: full,
                width: w,
            });
        }
    }
    out
}

/// A hash tile's bytes: the hashes concatenated.
pub fn encode_hash_tile(hashes: &[Hash]) -> Vec<u8> {
    hashes.concat()
}

/// Parses a hash tile that must hold exactly `width` hashes.
pub fn parse_hash_tile(id: &TileId, bytes: &[u8]) -> Result<Vec<Hash>, Error> {
    let want = usize::from(id.width) * 32;
    if bytes.len() != want {
        return Err(Error::Tile {
            path: id.path(),
            message: format!(
                "has {} bytes, expected {want} ({} hashes)",
                bytes.len(),
                id.width
            ),
        });
    }
    let mut r = Reader::new(bytes);
    (0..id.width)
        .map(|_| r.array::<32>("tile hash").map_err(Error::from))
        .collect()
}

/// An entry bundle's bytes: each entry as a big-endian u16 length and the bytes.
pub fn encode_bundle<E: AsRef<[u8]>>(entries: &[E]) -> Result<Vec<u8>, Error> {
    let mut out = Vec::with_capacity(entries.iter().map(|e| e.as_ref().len() + 2).sum());
    for e in entries {
        let e = e.as_ref();
        let len = u16::try_from(e.len()).map_err(|_| {
            Error::Entry(format!(
                "{} bytes is longer than an entry bundle can hold ({MAX_ENTRY_LEN})",
                e.len()
            ))
        })?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(e);
    }
    Ok(out)
}

/// Parses an entry bundle that must hold exactly `id.width` entries and nothing else.
pub fn parse_bundle<'a>(id: &TileId, bytes: &'a [u8]) -> Result<Vec<&'a [u8]>, Error> {
    let wrap = |e: imgctl_measure::ParseError| Error::Tile {
        path: id.path(),
        message: e.to_string(),
    };
    let mut r = Reader::new(bytes);
    let mut out = Vec::with_capacity(usize::from(id.width));
    for _ in 0..id.width {
        let len = r.u16_be("entry length").map_err(wrap)?;
        out.push(r.take(usize::from(len), "entry").map_err(wrap)?);
    }
    r.expect_end("entry bundle").map_err(wrap)?;
    Ok(out)
}

/// Splits `len` hashes into the perfect subtrees of the RFC 6962 decomposition, left to right.
fn perfect_chunks(hashes: &[Hash], out: &mut Vec<Hash>) {
    let mut off = 0usize;
    for b in (0..9).rev() {
        let n = 1usize << b;
        if hashes.len() & n != 0 {
            out.push(root_of(&hashes[off..off + n]));
            off += n;
        }
    }
}

/// The right edge of a tiled tree: the partial tile at each level and the partial entry
/// bundle. Enough to compute the root and to append.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Edge {
    size: u64,
    /// `levels[L]`: the hashes of the partial tile at level `L` (may be empty).
    levels: Vec<Vec<Hash>>,
    /// The entries of the partial entry bundle.
    bundle: Vec<Vec<u8>>,
}

impl Edge {
    /// The edge of the empty tree.
    pub fn empty() -> Self {
        Self::default()
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Reads the edge of a tree of `size` from its partial tiles and partial bundle.
    pub fn load(
        size: u64,
        mut fetch: impl FnMut(&TileId) -> Result<Vec<u8>, Error>,
    ) -> Result<Self, Error> {
        let mut edge = Edge {
            size,
            ..Self::default()
        };
        let mut l = 0u8;
        while l <= MAX_TILE_LEVEL && shr(size, TILE_HEIGHT * u32::from(l)) > 0 {
            let kind = TileKind::Hashes(l);
            let w = partial_width(kind, size);
            let hashes = if w > 0 {
                let id = TileId {
                    kind,
                    index: full_tiles(kind, size),
                    width: w,
                };
                parse_hash_tile(&id, &fetch(&id)?)?
            } else {
                Vec::new()
            };
            edge.levels.push(hashes);
            l += 1;
        }
        let w = partial_width(TileKind::Entries, size);
        if w > 0 {
            let id = TileId {
                kind: TileKind::Entries,
                index: full_tiles(TileKind::Entries, size),
                width: w,
            };
            let bytes = fetch(&id)?;
            let entries = parse_bundle(&id, &bytes)?;
            for (i, e) in entries.iter().enumerate() {
                if edge.levels.first().and_then(|l| l.get(i)) != Some(&leaf_hash(e)) {
                    return Err(Error::Tile {
                        path: id.path(),
                        message: format!(
                            "entry {} does not hash to the leaf hash in tile/0",
                            id.index * 256 + i as u64
                        ),
                    });
                }
            }
            edge.bundle = entries.into_iter().map(<[u8]>::to_vec).collect();
        }
        Ok(edge)
    }

    /// The root of the tree this edge ends.
    pub fn root(&self) -> Hash {
        let mut subtrees = Vec::new();
        for hashes in self.levels.iter().rev() {
            perfect_chunks(hashes, &mut subtrees);
        }
        let Some((last, rest)) = subtrees.split_last() else {
            return empty_root();
        };
        rest.iter().rev().fold(*last, |acc, s| node_hash(s, &acc))
    }

    /// Appends entries; returns the tiles and bundles to write (full ones that filled up, and
    /// the new partial ones), with their bytes. Nothing changes on error.
    pub fn append<E: AsRef<[u8]>>(
        &mut self,
        entries: &[E],
    ) -> Result<Vec<(TileId, Vec<u8>)>, Error> {
        if let Some(e) = entries.iter().find(|e| e.as_ref().len() > MAX_ENTRY_LEN) {
            return Err(Error::Entry(format!(
                "{} bytes is longer than an entry bundle can hold ({MAX_ENTRY_LEN})",
                e.as_ref().len()
            )));
        }
        let mut out = Vec::new();
        let mut dirty = vec![false; self.levels.len()];
        let mut bundle_dirty = false;
        for e in entries {
            let e = e.as_ref();
            self.size += 1;
            self.bundle.push(e.to_vec());
            bundle_dirty = true;
            if self.bundle.len() == usize::from(TILE_WIDTH) {
                let id = TileId {
                    kind: TileKind::Entries,
                    index: full_tiles(TileKind::Entries, self.size) - 1,
                    width: TILE_WIDTH,
                };
                out.push((id, encode_bundle(&self.bundle)?));
                self.bundle.clear();
                bundle_dirty = false;
            }
            let mut h = leaf_hash(e);
            let mut l = 0usize;
            loop {
                if self.levels.len() <= l {
                    self.levels.push(Vec::new());
                    dirty.push(false);
                }
                self.levels[l].push(h);
                dirty[l] = true;
                if self.levels[l].len() < usize::from(TILE_WIDTH) {
                    break;
                }
                let kind = TileKind::Hashes(l as u8);
                let id = TileId {
                    kind,
                    index: full_tiles(kind, self.size) - 1,
                    width: TILE_WIDTH,
                };
                h = root_of(&self.levels[l]);
                out.push((id, encode_hash_tile(&self.levels[l])));
                self.levels[l].clear();
                dirty[l] = false;
                l += 1;
            }
        }
        for (l, hashes) in self.levels.iter().enumerate() {
            if dirty[l] && !hashes.is_empty() {
                let kind = TileKind::Hashes(l as u8);
                let id = TileId {
                    kind,
                    index: full_tiles(kind, self.size),
                    width: hashes.len() as u16,
                };
                out.push((id, encode_hash_tile(hashes)));
            }
        }
        if bundle_dirty && !self.bundle.is_empty() {
            let id = TileId {
                kind: TileKind::Entries,
                index: full_tiles(TileKind::Entries, self.size),
                width: self.bundle.len() as u16,
            };
            out.push((id, encode_bundle(&self.bundle)?));
        }
        Ok(out)
    }
}

/// Proof generation over tiles: a [`NodeSource`] for a tree of `size` leaves whose tiles come
/// from `fetch` (a folder, HTTP ...). Tiles are parsed, checked for width and cached.
#[derive(Debug)]
pub struct TileNodes<F> {
    size: u64,
    fetch: F,
    cache: HashMap<TileId, Vec<Hash>>,
}

impl<F: FnMut(&TileId) -> Result<Vec<u8>, Error>> TileNodes<F> {
    pub fn new(size: u64, fetch: F) -> Self {
        TileNodes {
            size,
            fetch,
            cache: HashMap::new(),
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    fn tile(&mut self, id: TileId) -> Result<&Vec<Hash>, Error> {
        if !self.cache.contains_key(&id) {
            if self.cache.len() > 4096 {
                self.cache.clear();
            }
            let bytes = (self.fetch)(&id)?;
            let hashes = parse_hash_tile(&id, &bytes)?;
            self.cache.insert(id, hashes);
        }
        self.cache
            .get(&id)
            .ok_or_else(|| Error::Source("tile cache".into()))
    }
}

impl<F: FnMut(&TileId) -> Result<Vec<u8>, Error>> NodeSource for TileNodes<F> {
    fn node(&mut self, level: u32, index: u64) -> Result<Hash, Error> {
        let tl = level / TILE_HEIGHT;
        let r = level % TILE_HEIGHT;
        let missing = || {
            Error::Source(format!(
                "node at level {level}, index {index} is not in the tree"
            ))
        };
        let tl = u8::try_from(tl)
            .ok()
            .filter(|l| *l <= MAX_TILE_LEVEL)
            .ok_or_else(missing)?;
        let first = index
            .checked_shl(r)
            .filter(|f| f >> r == index)
            .ok_or_else(missing)?;
        let count = 1usize << r;
        let id = TileId::for_size(TileKind::Hashes(tl), first >> 8, self.size)?;
        let off = (first & 0xff) as usize;
        let hashes = self.tile(id)?;
        let chunk = hashes.get(off..off + count).ok_or_else(missing)?;
        Ok(root_of(chunk))
    }
}

/// What [`audit`] checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditReport {
    pub entries: u64,
    pub tiles: u64,
    pub bundles: u64,
}

/// Recomputes a whole log of `size` entries from its tiles and entry bundles: every entry
/// hashes to its level-0 hash, every hash above level 0 is the root of the full tile below,
/// and the tree's root is `root`. Errors name the tile that is wrong.
pub fn audit(
    size: u64,
    root: &Hash,
    mut fetch: impl FnMut(&TileId) -> Result<Vec<u8>, Error>,
) -> Result<AuditReport, Error> {
    let mut report = AuditReport {
        entries: 0,
        tiles: 0,
        bundles: 0,
    };
    // Parent tile currently loaded, per level.
    let mut parent: Option<(TileId, Vec<Hash>)> = None;
    let ids = tiles_for_size(size);
    for id in &ids {
        let bytes = fetch(id)?;
        match id.kind {
            TileKind::Entries => {
                let entries = parse_bundle(id, &bytes)?;
                let tile0 = TileId {
                    kind: TileKind::Hashes(0),
                    ..*id
                };
                let hashes = parse_hash_tile(&tile0, &fetch(&tile0)?)?;
                for (i, (e, h)) in entries.iter().zip(&hashes).enumerate() {
                    if leaf_hash(e) != *h {
                        return Err(Error::Tile {
                            path: id.path(),
                            message: format!(
                                "entry {} does not hash to its leaf hash in {}",
                                id.index * 256 + i as u64,
                                tile0.path()
                            ),
                        });
                    }
                }
                report.bundles += 1;
                report.entries += entries.len() as u64;
            }
            TileKind::Hashes(l) => {
                let hashes = parse_hash_tile(id, &bytes)?;
                report.tiles += 1;
                if id.is_full() {
                    let up = TileKind::Hashes(l.checked_add(1).ok_or_else(|| Error::Tile {
                        path: id.path(),
                        message: "full tile at the top level".into(),
                    })?);
                    let pid = TileId::for_size(up, id.index >> 8, size)?;
                    if parent.as_ref().map(|p| p.0) != Some(pid) {
                        parent = Some((pid, parse_hash_tile(&pid, &fetch(&pid)?)?));
                    }
                    let want = parent
                        .as_ref()
                        .and_then(|p| p.1.get((id.index & 0xff) as usize))
                        .copied();
                    if want != Some(root_of(&hashes)) {
                        return Err(Error::Tile {
                            path: id.path(),
                            message: format!(
                                "its root does not match hash {} of {}",
                                id.index & 0xff,
                                pid.path()
                            ),
                        });
                    }
                }
            }
        }
    }
    let edge = Edge::load(size, &mut fetch)?;
    let computed = edge.root();
    if computed != *root {
        return Err(Error::RootMismatch {
            what: format!("tree of size {size} recomputed from its tiles"),
            computed: super::b64_encode(&computed),
            expected: super::b64_encode(root),
        });
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::{consistency_proof, inclusion_proof, MemTree};
    use proptest::prelude::*;

    fn store_of(batches: &[u64]) -> (HashMap<TileId, Vec<u8>>, Edge, MemTree) {
        let mut files = HashMap::new();
        let mut edge = Edge::empty();
        let mut mem = MemTree::new();
        let mut next = 0u64;
        for &n in batches {
            let entries: Vec<Vec<u8>> =
                (next..next + n).map(|i| i.to_be_bytes().to_vec()).collect();
            for e in &entries {
                mem.push(e);
            }
            next += n;
            for (id, bytes) in edge.append(&entries).unwrap() {
                files.insert(id, bytes);
            }
        }
        (files, edge, mem)
    }

    #[test]
    fn index_paths_follow_the_spec_example() {
        assert_eq!(index_path(1234067), "x001/x234/067");
        assert_eq!(index_path(5), "005");
        assert_eq!(index_path(1000), "x001/000");
        let id = TileId {
            kind: TileKind::Hashes(0),
            index: 1234067,
            width: 5,
        };
        assert_eq!(id.path(), "tile/0/x001/x234/067.p/5");
        assert_eq!(TileId::parse_path(&id.path()).unwrap(), id);
        for bad in [
            "tile/0/x000/005",
            "tile/00/005",
            "tile/64/000",
            "tile/0/005.p/0",
            "tile/0/005.p/256",
            "tile/0/5",
            "tile/entries/001.p/07",
            "tile/0/x1/005",
        ] {
            assert!(TileId::parse_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tiles_of_size_70000_match_the_spec_example() {
        let ids = tiles_for_size(70_000);
        let count = |k, full: bool| {
            ids.iter()
                .filter(|t| t.kind == k && t.is_full() == full)
                .count()
        };
        assert_eq!(count(TileKind::Hashes(0), true), 273);
        assert_eq!(count(TileKind::Hashes(1), true), 1);
        let widths: Vec<(TileKind, u16)> = ids
            .iter()
            .filter(|t| !t.is_full())
            .map(|t| (t.kind, t.width))
            .collect();
        assert!(widths.contains(&(TileKind::Hashes(0), 112)));
        assert!(widths.contains(&(TileKind::Hashes(1), 17)));
        assert!(widths.contains(&(TileKind::Hashes(2), 1)));
        // Size 256: one full level-0 tile and a partial level-1 tile of width 1.
        let ids = tiles_for_size(256);
        assert!(ids.contains(&TileId {
            kind: TileKind::Hashes(0),
            index: 0,
            width: 256
        }));
        assert!(ids.contains(&TileId {
            kind: TileKind::Hashes(1),
            index: 0,
            width: 1
        }));
        assert!(!ids
            .iter()
            .any(|t| t.kind == TileKind::Hashes(0) && !t.is_full()));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn appended_tiles_give_the_memtree_root_and_proofs(
            batches in proptest::collection::vec(1u64..700, 1..5), a in any::<u64>(), b in any::<u64>()
        ) {
            let (files, edge, mut mem) = store_of(&batches);
            let size = mem.size();
            prop_assert_eq!(edge.size(), size);
            prop_assert_eq!(edge.root(), mem.root());
            let fetch = |id: &TileId| files.get(id).cloned().ok_or_else(|| Error::Source(id.path()));
            let reloaded = Edge::load(size, fetch).unwrap();
            prop_assert_eq!(&reloaded, &edge);
            audit(size, &mem.root(), fetch).unwrap();
            let mut nodes = TileNodes::new(size, fetch);
            let i = a % size;
            prop_assert_eq!(inclusion_proof(&mut nodes, i, size).unwrap(), inclusion_proof(&mut mem, i, size).unwrap());
            let s1 = 1 + b % size;
            prop_assert_eq!(consistency_proof(&mut nodes, s1, size).unwrap(), consistency_proof(&mut mem, s1, size).unwrap());
        }

        #[test]
        fn tile_path_parser_round_trips(path in "tile/(entries|[0-9]{1,2})/(x[0-9]{3}/){0,3}[0-9]{3}(\\.p/[0-9]{1,3})?") {
            if let Ok(id) = TileId::parse_path(&path) {
                prop_assert_eq!(id.path(), path);
            }
        }

        #[test]
        fn bundle_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600), w in 1u16..=256) {
            let id = TileId { kind: TileKind::Entries, index: 0, width: w };
            if let Ok(entries) = parse_bundle(&id, &bytes) {
                prop_assert_eq!(encode_bundle(&entries).unwrap(), bytes);
            }
        }
    }

    #[test]
    fn audit_names_a_changed_entry_and_a_truncated_tile() {
        let (mut files, _edge, mut mem) = store_of(&[600]);
        let root = mem.root();
        let bundle = TileId {
            kind: TileKind::Entries,
            index: 1,
            width: 256,
        };
        let mut changed = files.clone();
        if let Some(b) = changed.get_mut(&bundle) {
            b[5] ^= 1;
        }
        let err = audit(600, &root, |id| {
            changed
                .get(id)
                .cloned()
                .ok_or_else(|| Error::Source(id.path()))
        })
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("tile/entries/001: entry 256 does not hash"),
            "{err}"
        );
        let tile = TileId {
            kind: TileKind::Hashes(0),
            index: 2,
            width: 88,
        };
        if let Some(t) = files.get_mut(&tile) {
            t.truncate(100);
        }
        let err = audit(600, &root, |id| {
            files
                .get(id)
                .cloned()
                .ok_or_else(|| Error::Source(id.path()))
        })
        .unwrap_err();
        assert!(
            err.to_string().contains("tile/0/002.p/88: has 100 bytes"),
            "{err}"
        );
    }
}
