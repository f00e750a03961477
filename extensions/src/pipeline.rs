//! I/O: builds an extension image from a checked recipe, and reads images back.
//!
//! Build order: check everything that can be checked before writing (name, hierarchy, tools,
//! key against certificate); stage the tree with fixed modes into a temporary folder beside the
//! output folder; make the file system; stream it through the verity tree builder; sign the root
//! hash; write the GPT image sequentially (hashing it on the way) and the manifest; rename both
//! into place. Any failure removes the temporary folder and anything created under the final
//! names, so a failed build leaves nothing behind.
//!
//! Determinism: a sorted tree walk; modes normalised to 0755/0644 (0755 when any execute bit is
//! set) unless the recipe sets one; owners root; timestamps SOURCE_DATE_EPOCH; the verity salt
//! and UUID, the file system UUID, the disk and signature partition UUIDs derived from content
//! digests (salt/UUID can be pinned in the recipe).
//!
//! Compared with systemd-repart 252 given the same file system image (`CopyBlocks=`,
//! `Verity=data/hash/signature`; checked by `tests/extensions.rs`), these agree: partition types
//! and labels (`usr-x86-64`, `usr-x86-64-verity`, `usr-x86-64-verity-sig`), the data and verity
//! partition UUIDs (the root hash's first and last 128 bits, verbatim), the hash partition bytes and
//! root hash (for the same salt, UUID and block size), and the signature JSON (`rootHash`,
//! `certificateFingerprint`, `signature`, byte-identical PKCS#7). Differences we keep:
//! - verity block size: 4096 (veritysetup's default) where repart 252 uses 512-byte data and hash
//!   blocks (`verity.block_size: 512` in the recipe reproduces repart);
//! - salt and superblock UUID: derived from the staged content here, from `--seed` in repart;
//! - disk GUID and signature partition UUID: derived from the root hash here, from `--seed` in
//!   repart (the DPS specifies neither);
//! - sizes: partitions are as small as their content (4 KiB aligned, signature padded to 4 KiB);
//!   repart pads to its 10 MiB default minimum and reserves 16 KiB for the signature;
//! - offsets: the first partition at 1 MiB, as libfdisk places it on all but tiny disks (repart
//!   252 placed it at LBA 40 for a 20 KiB disk);
//! - attributes: read-only (bit 60) on the data and verity partitions; repart 252 sets growfs (bit
//!   59) on the data partition, which is meaningless for a read-only erofs under dm-verity.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use ring::digest::{Context, SHA256};
use serde::Serialize;

use crate::dps::{Designator, PartitionType};
use crate::fsverity::FsVerityHasher;
use crate::gpt::{attr, DiskLayout, Gpt, Guid, NewPartition, SECTOR};
use crate::inspect::{self, Inspection};
use crate::mkfs;
use crate::recipe::{Extension, FileSource, Filesystem};
use crate::release::{check_tree_path, release_path, ExtensionKind};
use crate::sign::Signer;
use crate::sigpart::VeritySignature;
use crate::verity::{Superblock, TreeBuilder, VerityParams};
use crate::Error;

/// Read size when streaming large files.
const CHUNK: usize = 8 << 20;

#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Folder receiving `NAME.raw` (or `NAME.confext.raw`) and `manifest.json`.
    pub out_dir: PathBuf,
    pub source_date_epoch: u64,
    /// The PKCS#11 module for a recipe whose `signing.key` is a `pkcs11:` URI (else the URI's
    /// module-path).
    pub pkcs11_module: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct BuildOutput {
    pub image: PathBuf,
    pub manifest_path: PathBuf,
    pub manifest: Manifest,
}

#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    pub name: String,
    pub kind: ExtensionKind,
    pub version: String,
    pub filesystem: Filesystem,
    pub architecture: String,
    pub image: String,
    pub size: u64,
    pub sha256: String,
    pub source_date_epoch: u64,
    pub disk_uuid: Guid,
    pub extension_release: ReleaseRecord,
    pub verity: VerityRecord,
    pub partitions: Vec<PartitionRecord>,
    pub files: Vec<FileRecord>,
}

impl Manifest {
    /// The artifact record of this image (what `ext build --log` appends, as a version-2 log
    /// entry): the image's sha256, the root hash, the partitions' type and own UUIDs and the
    /// signing certificate's fingerprint. PCR 12/13 are not predicted per image (the stub's
    /// sidecar cpio depends on every image beside the UKI; `ext predict-pcrs` computes it).
    pub fn record(&self) -> Result<imgctl_measure::record::ArtifactRecord, Error> {
        use imgctl_measure::manifest::FileRecord as MFile;
        use imgctl_measure::record::{
            ArtifactRecord, ExtensionRecord, PartitionRecord as MPart, RecordKind, RECORD_FORMAT,
        };
        let r = ArtifactRecord {
            format: RECORD_FORMAT.into(),
            kind: match self.kind {
                ExtensionKind::Sysext => RecordKind::Sysext,
                ExtensionKind::Confext => RecordKind::Confext,
            },
            name: self.name.clone(),
            version: self.version.clone(),
            builder: format!("imgctl/{}", env!("CARGO_PKG_VERSION")),
            source_date_epoch: Some(self.source_date_epoch),
            recipe: None,
            files: vec![MFile {
                role: "image".into(),
                path: self.image.clone(),
                size: self.size,
                digests: [("sha256".to_string(), self.sha256.clone())].into(),
            }],
            uki: None,
            pcrs: Default::default(),
            events: vec![],
            userspace_events: Vec::new(),
            extension: Some(ExtensionRecord {
                root_hash: self.verity.root_hash.clone(),
                partitions: self
                    .partitions
                    .iter()
                    .map(|p| MPart {
                        role: p.designator.to_string(),
                        type_uuid: p.type_uuid.to_string(),
                        uuid: p.uuid.to_string(),
                    })
                    .collect(),
                signature_certificate_sha256: self.verity.certificate_fingerprint.clone(),
                verity_signers: self.verity.signers.clone(),
            }),
            policy: None,
        };
        r.check()
            .map_err(|e| Error::Unsupported(format!("artifact record: {e}")))?;
        Ok(r)
    }

    pub fn filesystem_name(&self) -> &'static str {
        match self.filesystem {
            Filesystem::Erofs => "erofs",
            Filesystem::Squashfs => "squashfs",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ReleaseRecord {
    pub path: String,
    pub content: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerityRecord {
    pub root_hash: String,
    pub hash_algorithm: &'static str,
    pub salt: String,
    pub uuid: Guid,
    pub data_block_size: u32,
    pub hash_block_size: u32,
    pub data_blocks: u64,
    pub signed: bool,
    pub certificate_fingerprint: Option<String>,
    /// The signature's signers as systemd's `verity` NvPCR record names them
    /// ([`crate::pkcs7::verity_signers`]), when signed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signers: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PartitionRecord {
    pub designator: &'static str,
    pub type_uuid: Guid,
    pub uuid: Guid,
    pub label: String,
    pub offset: u64,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FileRecord {
    /// Absolute path in the running system.
    pub path: String,
    /// `file` or `symlink`.
    pub kind: &'static str,
    pub mode: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// `sha256:HEX`, as `fsverity digest` prints it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fsverity: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// One entry of the staged tree.
#[derive(Debug, Clone)]
enum Node {
    Dir,
    File { source: FileSource, mode: u32 },
    Symlink(PathBuf),
}

fn normal_mode(meta: &fs::Metadata) -> u32 {
    if meta.permissions().mode() & 0o111 != 0 {
        0o755
    } else {
        0o644
    }
}

/// Walks `root` in sorted order into `nodes` (paths relative to `root`).
fn walk(
    kind: ExtensionKind,
    root: &Path,
    rel: &str,
    nodes: &mut BTreeMap<String, Node>,
) -> Result<(), Error> {
    let dir = if rel.is_empty() {
        root.to_owned()
    } else {
        root.join(rel)
    };
    let mut names = Vec::new();
    for entry in fs::read_dir(&dir).map_err(|e| Error::io(&dir, "reading folder", e))? {
        let entry = entry.map_err(|e| Error::io(&dir, "reading folder", e))?;
        let name = entry.file_name().into_string().map_err(|n| {
            Error::Unsupported(format!("{}: file name {n:?} is not UTF-8", dir.display()))
        })?;
        names.push(name);
    }
    names.sort();
    for name in names {
        let path = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        check_tree_path(kind, &path)?;
        let full = root.join(&path);
        let meta = fs::symlink_metadata(&full).map_err(|e| Error::io(&full, "reading", e))?;
        let ft = meta.file_type();
        if ft.is_dir() {
            nodes.insert(path.clone(), Node::Dir);
            walk(kind, root, &path, nodes)?;
        } else if ft.is_file() {
            let mode = normal_mode(&meta);
            nodes.insert(
                path,
                Node::File {
                    source: FileSource::Path(full),
                    mode,
                },
            );
        } else if ft.is_symlink() {
            let target = fs::read_link(&full).map_err(|e| Error::io(&full, "reading link", e))?;
            nodes.insert(path, Node::Symlink(target));
        } else {
            return Err(Error::Unsupported(format!(
                "{}: only folders, regular files and symlinks can go into an extension",
                full.display()
            )));
        }
    }
    Ok(())
}

/// Adds the folders leading to `path`; a parent that is not a folder (say a symlink in the tree)
/// is refused, so that nothing is ever written through a link out of the staging folder.
fn add_parents(nodes: &mut BTreeMap<String, Node>, path: &str) -> Result<(), Error> {
    let mut acc = String::new();
    let comps: Vec<&str> = path.split('/').collect();
    for comp in &comps[..comps.len().saturating_sub(1)] {
        if !acc.is_empty() {
            acc.push('/');
        }
        acc.push_str(comp);
        match nodes.entry(acc.clone()).or_insert(Node::Dir) {
            Node::Dir => {}
            _ => {
                return Err(Error::Unsupported(format!(
                    "/{path}: its parent /{acc} is not a folder in the tree"
                )))
            }
        }
    }
    Ok(())
}

/// The tree to stage: the recipe's tree, its `files`, and the extension-release file.
fn plan_tree(ext: &Extension) -> Result<(BTreeMap<String, Node>, String, String), Error> {
    let mut nodes = BTreeMap::new();
    if let Some(tree) = &ext.tree {
        if !tree.is_dir() {
            return Err(Error::io(
                tree,
                "reading tree",
                std::io::Error::new(std::io::ErrorKind::NotFound, "not a folder"),
            ));
        }
        walk(ext.kind, tree, "", &mut nodes)?;
    }
    for f in &ext.files {
        let node = match (&f.source, nodes.get(&f.path)) {
            (FileSource::ModeOnly, Some(Node::File { source, .. })) => Node::File {
                source: source.clone(),
                mode: f.mode.unwrap_or(0o644),
            },
            (FileSource::ModeOnly, _) => {
                return Err(Error::Unsupported(format!(
                    "files: /{} sets a mode but the tree has no such regular file",
                    f.path
                )))
            }
            (source, _) => Node::File {
                source: source.clone(),
                mode: f.mode.unwrap_or(0o644),
            },
        };
        if let Node::File {
            source: FileSource::Path(p),
            ..
        } = &node
        {
            // An endless or special source (/dev/zero, a FIFO) is refused before anything is
            // written.
            // (By metadata first: opening a FIFO would block until a writer appears.)
            let meta = fs::metadata(p).map_err(|e| Error::io(p, "reading", e))?;
            if !meta.is_file() {
                return Err(Error::Unsupported(format!(
                    "{}: not a regular file: endless and special sources are refused",
                    p.display()
                )));
            }
        }
        add_parents(&mut nodes, &f.path)?;
        nodes.insert(f.path.clone(), node);
    }
    let rel = release_path(ext.kind, &ext.name);
    if nodes.contains_key(&rel) {
        return Err(Error::Unsupported(format!(
            "/{rel} is written by imgctl from the recipe's release: section; remove it from the tree"
        )));
    }
    let content = ext.release.render();
    add_parents(&mut nodes, &rel)?;
    nodes.insert(
        rel.clone(),
        Node::File {
            source: FileSource::Content(content.clone().into_bytes()),
            mode: 0o644,
        },
    );
    Ok((nodes, rel, content))
}

/// What identifies a file's content on disk: (size, mtime, ctime); a write or a chmod of the
/// inode changes it.
type Stamp = (u64, i64, i64, i64, i64);

/// Files staged as links, each with its stamp after linking.
type StagedLinks = Vec<(PathBuf, Stamp)>;

fn stamp_of(m: &fs::Metadata) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    (
        m.len(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
    )
}

/// Stages a tree file by a hard link instead of a copy when nothing about it changes: a
/// regular file (not a symlink) whose permission bits already are `mode`, on the same file
/// system as the staging folder. The copy costs a new inode and a write of every byte (the
/// larger part of an extension build on ext4, where inode allocation dominates); the mkfs
/// reads the same inode either way. Returns the link's stamp after linking (the link itself
/// changes the ctime), or `None` when the file must be copied (any failure to link included).
/// An inode is linked into the stage once (`seen`): two tree files that are hard links of each
/// other are staged as two files, as copies would be, or the mkfs would store them as one.
fn link_unchanged(
    source: &Path,
    dest: &Path,
    mode: u32,
    seen: &mut std::collections::HashSet<(u64, u64)>,
) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::symlink_metadata(source).ok()?;
    if !m.file_type().is_file()
        || m.permissions().mode() & 0o7777 != mode
        || !seen.insert((m.dev(), m.ino()))
    {
        return None;
    }
    fs::hard_link(source, dest).ok()?;
    fs::symlink_metadata(dest).ok().map(|m| stamp_of(&m))
}

/// Copies `source` to `dest` (or links it, [`link_unchanged`]), returning (size, sha256,
/// fs-verity digest) and, for a link, its stamp to check after the mkfs read it.
fn copy_hashing(
    source: &FileSource,
    dest: &Path,
    mode: u32,
    seen: &mut std::collections::HashSet<(u64, u64)>,
) -> Result<(u64, String, String, Option<Stamp>), Error> {
    if let FileSource::Path(p) = source {
        if let Some(stamp) = link_unchanged(p, dest, mode, seen) {
            let (size, sha, fsv) = hash_file(dest)?;
            return Ok((size, sha, fsv, Some(stamp)));
        }
    }
    let (size, sha, fsv) = copy_hashing_to(source, Some(dest))?;
    Ok((size, sha, fsv, None))
}

/// (size, sha256, fs-verity digest) of a staged file.
fn hash_file(path: &Path) -> Result<(u64, String, String), Error> {
    copy_hashing_to(&FileSource::Path(path.to_owned()), None)
}

/// Copies `source` to `dest` (when given), returning (size, sha256, fs-verity digest).
fn copy_hashing_to(
    source: &FileSource,
    dest: Option<&Path>,
) -> Result<(u64, String, String), Error> {
    let mut out = match dest {
        Some(d) => Some((File::create(d).map_err(|e| Error::io(d, "creating", e))?, d)),
        None => None,
    };
    let mut sha = Context::new(&SHA256);
    let mut fsv = FsVerityHasher::default();
    let mut size = 0u64;
    let mut feed = |chunk: &[u8]| -> Result<(), Error> {
        sha.update(chunk);
        fsv.update(chunk);
        size += chunk.len() as u64;
        match &mut out {
            Some((f, d)) => f.write_all(chunk).map_err(|e| Error::io(d, "writing", e)),
            None => Ok(()),
        }
    };
    match source {
        FileSource::Content(c) => feed(c)?,
        FileSource::Path(p) => {
            let (mut f, _) = imgctl_fsio::open_regular(p)?;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = f.read(&mut buf).map_err(|e| Error::io(p, "reading", e))?;
                if n == 0 {
                    break;
                }
                feed(&buf[..n])?;
            }
        }
        FileSource::ModeOnly => {}
    }
    Ok((
        size,
        hex::encode(sha.finish()),
        format!("sha256:{}", hex::encode(fsv.finish())),
    ))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), Error> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io(path, "setting mode of", e))
}

/// Stages `nodes` under `stage`; returns the file records and the files staged as links, with
/// their stamps ([`check_links`]).
fn stage_tree(
    nodes: &BTreeMap<String, Node>,
    stage: &Path,
) -> Result<(Vec<FileRecord>, StagedLinks), Error> {
    fs::create_dir(stage).map_err(|e| Error::io(stage, "creating", e))?;
    set_mode(stage, 0o755)?;
    let mut records = Vec::new();
    let mut links = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (rel, node) in nodes {
        let dest = stage.join(rel);
        match node {
            Node::Dir => {
                fs::create_dir(&dest).map_err(|e| Error::io(&dest, "creating", e))?;
                set_mode(&dest, 0o755)?;
            }
            Node::File { source, mode } => {
                let (size, sha, fsv, linked) = copy_hashing(source, &dest, *mode, &mut seen)?;
                match linked {
                    Some(stamp) => links.push((dest.clone(), stamp)),
                    None => set_mode(&dest, *mode)?,
                }
                records.push(FileRecord {
                    path: format!("/{rel}"),
                    kind: "file",
                    mode: format!("{mode:04o}"),
                    size: Some(size),
                    sha256: Some(sha),
                    fsverity: Some(fsv),
                    target: None,
                });
            }
            Node::Symlink(target) => {
                symlink(target, &dest).map_err(|e| Error::io(&dest, "creating symlink", e))?;
                records.push(FileRecord {
                    path: format!("/{rel}"),
                    kind: "symlink",
                    mode: "0777".into(),
                    size: None,
                    sha256: None,
                    fsverity: None,
                    target: Some(target.to_string_lossy().into_owned()),
                });
            }
        }
    }
    Ok((records, links))
}

/// Fails when a file staged as a link to the recipe's tree changed after it was hashed (so
/// the image might hold other bytes than the manifest lists).
fn check_links(links: &[(PathBuf, Stamp)]) -> Result<(), Error> {
    for (p, stamp) in links {
        let now = fs::symlink_metadata(p).map_err(|e| Error::io(p, "checking", e))?;
        if stamp_of(&now) != *stamp {
            return Err(Error::io(
                p,
                "building the image (the tree file changed while it was read; build again)",
                std::io::ErrorKind::Other.into(),
            ));
        }
    }
    Ok(())
}

fn sha256_of(parts: &[&[u8]]) -> [u8; 32] {
    let mut c = Context::new(&SHA256);
    for p in parts {
        c.update(&(p.len() as u64).to_le_bytes());
        c.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(c.finish().as_ref());
    out
}

/// Streams a file through the verity tree builder (whole blocks; the file is block-aligned).
pub fn verity_of_file(path: &Path, params: VerityParams) -> Result<crate::VerityTree, Error> {
    let f = File::open(path).map_err(|e| Error::io(path, "opening", e))?;
    let len = f
        .metadata()
        .map_err(|e| Error::io(path, "reading", e))?
        .len();
    let bs = u64::from(params.data_block_size());
    verity_of_file_at(&f, path, 0, len / bs, params)
}

/// `veritysetup format DATA HASH`: refuses a special DATA, a HASH that is DATA (by inode) or a
/// special file, and DATA shorter than one block; writes HASH atomically (a failure, say a full
/// disk, leaves nothing under its name).
pub fn write_verity(
    data: &Path,
    hash: &Path,
    params: VerityParams,
) -> Result<crate::VerityTree, Error> {
    let (_, len) = imgctl_fsio::open_regular(data)?;
    imgctl_fsio::check_output(hash, &[data])?;
    let bs = params.data_block_size();
    if len < u64::from(bs) {
        return Err(Error::Unsupported(format!(
            "{}: {len} bytes is less than one {bs}-byte data block; dm-verity covers whole blocks only",
            data.display()
        )));
    }
    let tree = verity_of_file(data, params)?;
    imgctl_fsio::write_atomic(hash, &tree.hash_device, &[data])?;
    Ok(tree)
}

/// Hashes `blocks` data blocks of `f` (named `path`) starting at byte `offset`: each core
/// reads its own chunks with positional reads and hashes them at once
/// ([`TreeBuilder::update_from`]). A file shorter than that is an error, not a shorter tree.
fn verity_of_file_at(
    f: &File,
    path: &Path,
    offset: u64,
    blocks: u64,
    params: VerityParams,
) -> Result<crate::VerityTree, Error> {
    use std::os::unix::fs::FileExt;
    let mut builder = TreeBuilder::with_capacity(params, blocks)?;
    builder.update_from(blocks, |at, buf: &mut [u8]| {
        let pos = offset
            .checked_add(at)
            .ok_or_else(|| Error::io(path, "reading", std::io::ErrorKind::InvalidInput.into()))?;
        f.read_exact_at(buf, pos)
            .map_err(|e| Error::io(path, "reading", e))
    })?;
    Ok(builder.finish()?)
}

/// Removes what a failed commit created.
struct Cleanup {
    paths: Vec<PathBuf>,
    dir: Option<PathBuf>,
    armed: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if self.armed {
            for p in &self.paths {
                let _ = fs::remove_file(p);
            }
            if let Some(d) = &self.dir {
                let _ = fs::remove_dir(d);
            }
        }
    }
}

/// Copies `len` bytes of `src` into `out`, hashing them.
fn copy_into(
    src: &mut impl Read,
    out: &mut impl Write,
    sha: &mut Context,
    mut len: u64,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    while len > 0 {
        let n = usize::try_from(len.min(CHUNK as u64)).unwrap_or(CHUNK);
        src.read_exact(&mut buf[..n])?;
        sha.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        len -= n as u64;
    }
    Ok(())
}

fn write_zeros(out: &mut impl Write, sha: &mut Context, mut len: u64) -> std::io::Result<()> {
    let zeros = vec![0u8; 1 << 20];
    while len > 0 {
        let n = usize::try_from(len.min(zeros.len() as u64)).unwrap_or(zeros.len());
        sha.update(&zeros[..n]);
        out.write_all(&zeros[..n])?;
        len -= n as u64;
    }
    Ok(())
}

/// Builds the image and its manifest into `opts.out_dir`.
pub fn build(ext: &Extension, opts: &BuildOptions) -> Result<BuildOutput, Error> {
    // 0. Staging folders of killed runs beside the output folder go first.
    if let Some(p) = opts.out_dir.parent().filter(|p| p.is_dir()) {
        imgctl_fsio::reclaim_stale(p);
    } else if opts
        .out_dir
        .parent()
        .is_some_and(|p| p.as_os_str().is_empty())
    {
        imgctl_fsio::reclaim_stale(Path::new("."));
    }
    // 1. Everything checkable before writing anything.
    let (tool, package) = mkfs::tool_for(ext.filesystem);
    let mkfs_tool = mkfs::find_tool(tool, package)?;
    let signer = match &ext.signing {
        None => None,
        Some(s) => Some(Signer::open(
            &s.key,
            &s.certificate,
            None,
            opts.pkcs11_module.as_deref(),
        )?),
    };
    let (nodes, release_rel, release_content) = plan_tree(ext)?;
    let designator = match ext.kind {
        ExtensionKind::Sysext if !nodes.keys().any(|k| k == "opt" || k.starts_with("opt/")) => {
            Designator::Usr
        }
        // /opt cannot live in a usr partition, and /etc only in a root partition (as mkosi does).
        _ => Designator::Root,
    };
    let Some((verity_designator, sig_designator)) = designator.verity_pair() else {
        return Err(Error::Unsupported("no verity pair".into()));
    };

    // 2. A temporary folder beside the output folder (same file system, so renames are atomic).
    let parent = match opts.out_dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, "creating", e))?;
    // Named as fsio names temporaries (`.imgctl-ext.imgctl-tmp-PID`), so that the staging
    // folder of a killed run is reclaimed by the next one (at the start of `build`).
    let tmp = tempfile::Builder::new()
        .prefix(&imgctl_fsio::temporary_name("imgctl-ext"))
        .rand_bytes(0)
        .tempdir_in(&parent)
        .map_err(|e| Error::io(&parent, "creating a temporary folder in", e))?;

    // 3. Stage the tree and make the file system.
    let stage = tmp.path().join("root");
    let (files, links) = stage_tree(&nodes, &stage)?;
    let content_id = {
        let listing = serde_json::to_vec(&files).unwrap_or_default();
        sha256_of(&[
            ext.kind.name().as_bytes(),
            ext.name.as_str().as_bytes(),
            ext.version.as_bytes(),
            format!("{:?}", ext.filesystem).as_bytes(),
            &listing,
        ])
    };
    let fs_uuid = Guid::v4_from(&sha256_of(&[b"imgctl fs uuid", &content_id]));
    let fs_source = match designator {
        Designator::Usr => stage.join("usr"),
        _ => stage.clone(),
    };
    let fs_image = tmp.path().join("fs.img");
    mkfs::make_filesystem(
        ext.filesystem,
        &mkfs_tool,
        &fs_source,
        &fs_image,
        opts.source_date_epoch,
        fs_uuid,
    )?;
    check_links(&links)?;
    // Pad to whole 4 KiB blocks, so verity covers every byte of the partition.
    let fs_len = {
        let f = fs::OpenOptions::new()
            .write(true)
            .open(&fs_image)
            .map_err(|e| Error::io(&fs_image, "opening", e))?;
        let len = f
            .metadata()
            .map_err(|e| Error::io(&fs_image, "reading", e))?
            .len();
        let padded = len.div_ceil(4096).max(1) * 4096;
        f.set_len(padded)
            .map_err(|e| Error::io(&fs_image, "padding", e))?;
        padded
    };

    // 4. dm-verity.
    let salt = ext
        .verity_salt
        .clone()
        .unwrap_or_else(|| sha256_of(&[b"imgctl verity salt", &content_id]).to_vec());
    let vuuid = ext
        .verity_uuid
        .unwrap_or_else(|| Guid::v4_from(&sha256_of(&[b"imgctl verity uuid", &content_id])));
    let bs = ext.verity_block_size;
    let tree = verity_of_file(
        &fs_image,
        VerityParams::with_block_sizes(&salt, vuuid.0, bs, bs)?,
    )?;
    let root_hex = tree.root_hash_hex();

    // 5. Signature.
    let signature = match &signer {
        None => None,
        Some(s) => Some(VeritySignature {
            root_hash: root_hex.clone(),
            certificate_fingerprint: Some(s.certificate_fingerprint()),
            signature: s.sign(root_hex.as_bytes())?,
        }),
    };
    let sig_bytes = signature.as_ref().map(VeritySignature::to_partition);

    // 6. The disk.
    let arch = ext.architecture;
    let mut halves = [[0u8; 16]; 2];
    halves[0].copy_from_slice(&tree.root_hash[..16]);
    halves[1].copy_from_slice(&tree.root_hash[16..]);
    let part = |d: Designator, uuid: Guid, size: u64| {
        let t = PartitionType::of(arch, d);
        NewPartition {
            type_guid: t.0,
            unique_guid: uuid,
            name: t.repart_name().unwrap_or_default(),
            attributes: attr::READ_ONLY,
            size,
        }
    };
    let mut parts = vec![
        part(designator, Guid(halves[0]), fs_len),
        part(
            verity_designator,
            Guid(halves[1]),
            tree.hash_device.len() as u64,
        ),
    ];
    if let Some(s) = &sig_bytes {
        let uuid = Guid::v4_from(&sha256_of(&[b"imgctl verity-sig uuid", &tree.root_hash]));
        let mut p = part(sig_designator, uuid, s.len() as u64);
        p.attributes = 0;
        parts.push(p);
    }
    let disk_uuid = Guid::v4_from(&sha256_of(&[b"imgctl disk uuid", &tree.root_hash]));
    let layout = DiskLayout::plan(disk_uuid, &parts)?;

    let image_name = ext.image_file_name();
    let tmp_image = tmp.path().join(&image_name);
    let mut sha = Context::new(&SHA256);
    {
        let mut out = std::io::BufWriter::with_capacity(
            1 << 20,
            File::create(&tmp_image).map_err(|e| Error::io(&tmp_image, "creating", e))?,
        );
        let w = |e| Error::io(&tmp_image, "writing", e);
        let primary = layout.primary();
        sha.update(&primary);
        out.write_all(&primary).map_err(w)?;
        let mut pos = primary.len() as u64;
        let mut fs_file = File::open(&fs_image).map_err(|e| Error::io(&fs_image, "opening", e))?;
        for (i, p) in layout.partitions.iter().enumerate() {
            write_zeros(&mut out, &mut sha, p.offset() - pos).map_err(w)?;
            let written = match i {
                0 => {
                    copy_into(&mut fs_file, &mut out, &mut sha, fs_len).map_err(w)?;
                    fs_len
                }
                1 => {
                    sha.update(&tree.hash_device);
                    out.write_all(&tree.hash_device).map_err(w)?;
                    tree.hash_device.len() as u64
                }
                _ => {
                    let s = sig_bytes.as_deref().unwrap_or_default();
                    sha.update(s);
                    out.write_all(s).map_err(w)?;
                    s.len() as u64
                }
            };
            write_zeros(&mut out, &mut sha, p.size() - written).map_err(w)?;
            pos = p.offset() + p.size();
        }
        write_zeros(&mut out, &mut sha, layout.backup_offset() - pos).map_err(w)?;
        let backup = layout.backup();
        sha.update(&backup);
        out.write_all(&backup).map_err(w)?;
        let f = out.into_inner().map_err(|e| w(e.into_error()))?;
        f.sync_all().map_err(w)?;
    }
    let image_sha = hex::encode(sha.finish());

    let partitions = layout
        .partitions
        .iter()
        .map(|p| PartitionRecord {
            designator: PartitionType(p.type_guid)
                .lookup()
                .map_or("unknown", |(_, d)| d.name()),
            type_uuid: p.type_guid,
            uuid: p.unique_guid,
            label: p.name.clone(),
            offset: p.offset(),
            size: p.size(),
        })
        .collect();
    let manifest = Manifest {
        name: ext.name.to_string(),
        kind: ext.kind,
        version: ext.version.clone(),
        filesystem: ext.filesystem,
        architecture: arch.name().to_owned(),
        image: image_name.clone(),
        size: layout.size,
        sha256: image_sha,
        source_date_epoch: opts.source_date_epoch,
        disk_uuid,
        extension_release: ReleaseRecord {
            path: format!("/{release_rel}"),
            content: release_content,
        },
        verity: VerityRecord {
            root_hash: root_hex,
            hash_algorithm: "sha256",
            salt: hex::encode(&salt),
            uuid: vuuid,
            data_block_size: bs,
            hash_block_size: bs,
            data_blocks: tree.superblock.data_blocks,
            signed: signature.is_some(),
            certificate_fingerprint: signature
                .as_ref()
                .and_then(|s| s.certificate_fingerprint.map(hex::encode)),
            signers: signature
                .as_ref()
                .map(|s| {
                    crate::pkcs7::verity_signers(&s.signature)
                        .map_err(|e| Error::Unsupported(format!("root hash signature: {e}")))
                })
                .transpose()?,
        },
        partitions,
        files,
    };
    let tmp_manifest = tmp.path().join("manifest.json");
    let mut json = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
    json.push(b'\n');
    fs::write(&tmp_manifest, &json).map_err(|e| Error::io(&tmp_manifest, "writing", e))?;

    // 7. Commit.
    let mut cleanup = Cleanup {
        paths: Vec::new(),
        dir: None,
        armed: true,
    };
    if !opts.out_dir.is_dir() {
        fs::create_dir(&opts.out_dir).map_err(|e| Error::io(&opts.out_dir, "creating", e))?;
        cleanup.dir = Some(opts.out_dir.clone());
    }
    let image = opts.out_dir.join(&image_name);
    let manifest_path = opts.out_dir.join("manifest.json");
    for (from, to) in [(&tmp_image, &image), (&tmp_manifest, &manifest_path)] {
        fs::rename(from, to).map_err(|e| Error::io(to, "renaming into place", e))?;
        cleanup.paths.push(to.clone());
    }
    File::open(&opts.out_dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(&opts.out_dir, "syncing", e))?;
    cleanup.armed = false;
    Ok(BuildOutput {
        image,
        manifest_path,
        manifest,
    })
}

fn read_at(f: &mut File, path: &Path, offset: u64, len: u64) -> Result<Vec<u8>, Error> {
    let file_len = f
        .metadata()
        .map_err(|e| Error::io(path, "reading", e))?
        .len();
    if offset.saturating_add(len) > file_len {
        return Err(Error::Parse {
            file: path.to_owned(),
            source: imgctl_measure::ParseError::truncated(
                usize::try_from(offset).unwrap_or(usize::MAX),
                "image region",
                usize::try_from(len).unwrap_or(usize::MAX),
                usize::try_from(file_len.saturating_sub(offset)).unwrap_or(usize::MAX),
            ),
        });
    }
    let mut buf = vec![0u8; usize::try_from(len).unwrap_or(0)];
    f.seek(SeekFrom::Start(offset))
        .and_then(|_| f.read_exact(&mut buf))
        .map_err(|e| Error::io(path, "reading", e))?;
    Ok(buf)
}

/// Result of `--verify`: the hash tree recomputed over the data partition and compared with
/// everything that claims a root hash, and the signature checked cryptographically.
#[derive(Debug, Clone, Serialize)]
pub struct TreeCheck {
    /// Recomputed from the data partition (absent when that could not be done).
    pub root_hash: Option<String>,
    /// The stored hash partition equals the recomputed superblock and tree.
    pub hash_partition_matches: bool,
    /// The data/verity partition UUIDs are the recomputed root hash's halves.
    pub partition_uuids_match: bool,
    /// The recomputed root hash equals the signature partition's `rootHash`, if there is one.
    pub matches_signature: Option<bool>,
    /// `valid` (verified against the root hash), `absent`, or `invalid`.
    pub signature: &'static str,
    /// Subject and SHA-256 fingerprint of the certificate that made a valid signature.
    pub signer: Option<String>,
    pub signer_fingerprint: Option<String>,
    /// The signer is one of the `--certificate` certificates. False: the signature is valid but
    /// the signer was not checked against any trust anchor.
    pub signer_trusted: bool,
    /// Every check that failed; `ok` only when empty.
    pub failures: Vec<String>,
    pub ok: bool,
}

/// Reads an image's GPT, verity superblock and signature partition; with `verify`, recomputes
/// the hash tree over the data partition and verifies the signature (against `trusted` when
/// given: then a signature is required and its signer must be one of them).
pub fn inspect_file(
    path: &Path,
    verify: bool,
    trusted: Option<&[crate::pkcs7::Cert]>,
) -> Result<(Inspection, Option<TreeCheck>), Error> {
    let (mut f, file_len) = imgctl_fsio::open_regular(path)?;
    let perr = |source| Error::Parse {
        file: path.to_owned(),
        source,
    };
    let head = read_at(&mut f, path, 0, 2 * SECTOR)?;
    let header = crate::gpt::Header::parse(&head[512..], 512).map_err(perr)?;
    // The backup header sits in the LBA the primary names; an image cut short has lost it.
    let needed = header
        .alternate_lba
        .saturating_add(1)
        .saturating_mul(SECTOR);
    if file_len < needed {
        return Err(Error::Unsupported(format!(
            "{}: truncated: {file_len} bytes, but the backup GPT header is at LBA {} (the image must be {needed} bytes)",
            path.display(),
            header.alternate_lba
        )));
    }
    let end = header
        .entries_lba
        .saturating_mul(SECTOR)
        .saturating_add(header.entries_len());
    let prefix = read_at(&mut f, path, 0, end.max(2 * SECTOR))?;
    let gpt = Gpt::parse(&prefix).map_err(perr)?;
    let superblock = match inspect::find(&gpt, inspect::is_verity) {
        None => None,
        Some(p) => {
            let b = read_at(&mut f, path, p.offset(), 512.min(p.size()))?;
            Some(Superblock::parse(&b).map_err(perr)?)
        }
    };
    let signature = match inspect::find(&gpt, inspect::is_signature) {
        None => None,
        Some(p) => {
            let len = p.size().min(crate::sigpart::MAX_SIZE as u64);
            let b = read_at(&mut f, path, p.offset(), len)?;
            Some(VeritySignature::parse(&b).map_err(perr)?)
        }
    };
    let inspection = inspect::describe(&gpt, superblock.as_ref(), signature.as_ref());
    if !verify {
        return Ok((inspection, None));
    }
    let mut failures: Vec<String> = inspection.problems.clone();
    let data = inspect::find(&gpt, inspect::is_data);
    let hash_part = inspect::find(&gpt, inspect::is_verity);
    let mut root: Option<[u8; 32]> = None;
    let mut hash_partition_matches = false;
    match (&superblock, data, hash_part) {
        (Some(sb), Some(data), Some(h)) => {
            let covered = sb.data_blocks.saturating_mul(u64::from(sb.data_block_size));
            let file_len = f
                .metadata()
                .map_err(|e| Error::io(path, "reading", e))?
                .len();
            if sb.algorithm != "sha256" || sb.hash_type != crate::verity::HashType::NORMAL {
                failures.push("only sha256 hash type 1 trees can be verified".into());
            } else if covered != data.size() || data.offset().saturating_add(data.size()) > file_len
            {
                failures.push(format!(
                    "verity covers {covered} bytes but the data partition has {} (or extends past the end of the file)",
                    data.size()
                ));
            } else {
                let params = VerityParams::from_superblock(sb)?;
                let tree = verity_of_file_at(&f, path, data.offset(), sb.data_blocks, params)?;
                let len = tree.hash_device.len() as u64;
                hash_partition_matches =
                    h.size() >= len && read_at(&mut f, path, h.offset(), len)? == tree.hash_device;
                if !hash_partition_matches {
                    failures.push(
                        "the hash partition differs from the tree recomputed over the data".into(),
                    );
                }
                root = Some(tree.root_hash);
            }
        }
        _ => failures.push("no data partition with a verity partition and superblock".into()),
    }
    let root_hex = root.map(hex::encode);
    let partition_uuids_match = match (root, data, hash_part) {
        (Some(r), Some(d), Some(h)) => d.unique_guid.0 == r[..16] && h.unique_guid.0 == r[16..],
        _ => false,
    };
    if root.is_some() && !partition_uuids_match {
        failures.push("the data/verity partition UUIDs are not the root hash's halves".into());
    }
    let matches_signature = signature
        .as_ref()
        .map(|s| root_hex.as_deref() == Some(s.root_hash.as_str()));
    if matches_signature == Some(false) {
        failures.push("the signature partition's rootHash is not the recomputed root hash".into());
    }
    let mut sig_state = "absent";
    let (mut signer, mut signer_fingerprint, mut signer_trusted) = (None, None, false);
    match (&signature, &root_hex) {
        (None, _) if trusted.is_some() => {
            failures.push("no signature partition, but --certificate requires a signature".into())
        }
        (None, _) => {}
        (Some(_), None) => sig_state = "invalid",
        (Some(s), Some(r)) => {
            // Over the recomputed root hash: a signature made for other data never verifies.
            match crate::pkcs7::verify_detached(&s.signature, r.as_bytes(), trusted) {
                Ok(who) => {
                    if s.certificate_fingerprint
                        .is_some_and(|f| f != who.fingerprint)
                    {
                        sig_state = "invalid";
                        failures
                            .push("certificateFingerprint is not the signer's certificate".into());
                    } else {
                        sig_state = "valid";
                    }
                    signer = Some(who.subject);
                    signer_fingerprint = Some(hex::encode(who.fingerprint));
                    signer_trusted = who.trusted;
                }
                Err(e) => {
                    sig_state = "invalid";
                    failures.push(format!("signature: {e}"));
                }
            }
        }
    }
    let ok = failures.is_empty();
    Ok((
        inspection,
        Some(TreeCheck {
            root_hash: root_hex,
            hash_partition_matches,
            partition_uuids_match,
            matches_signature,
            signature: sig_state,
            signer,
            signer_fingerprint,
            signer_trusted,
            failures,
            ok,
        }),
    ))
}

/// One sidecar archive's measurement as systemd-stub would make it.
#[derive(Debug, Clone, Serialize)]
pub struct SidecarMeasurement {
    pub pcr: u32,
    /// The event's description: the archive's, or for addons the command line measured.
    pub description: String,
    /// File names in archive order.
    pub files: Vec<String>,
    /// Per bank: the event digest (hash of the archive) and the PCR value after the stub's
    /// sidecar extends up to this one into a reset PCR (PCR 12: credentials, then confexts).
    pub banks: Vec<SidecarBank>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SidecarBank {
    pub bank: String,
    pub event_digest: String,
    pub pcr_value: String,
}

/// Predicts what systemd-stub measures for `files` placed in `<uki>.efi.extra.d/` (streamed,
/// never loaded whole). Returns one entry per non-empty sidecar, in the stub's order:
/// credentials (`*.cred`) → PCR 12, sysext → PCR 13, confext → PCR 12 (systemd 256 and later).
pub fn predict_sidecars(
    semantics: imgctl_measure::StubSemantics,
    files: &[PathBuf],
    banks: &[imgctl_measure::HashAlg],
) -> Result<Vec<SidecarMeasurement>, Error> {
    predict_beside_uki(semantics, files, &Addons::default(), banks)
}

/// Addons and what decides whether the stub applies them, for [`predict_beside_uki`].
#[derive(Debug, Clone, Default)]
pub struct Addons {
    /// Files in `ESP/loader/addons/`, named as they will be there.
    pub global: Vec<PathBuf>,
    /// The UKI's `.uname` (the stub skips an addon whose `.uname` differs). `None`: the UKI
    /// has none or was not given; then an addon with `.uname` is refused, not guessed.
    pub uki_uname: Option<Vec<u8>>,
    /// Whether the UKI is known (given), so that an absent `uki_uname` means "none".
    pub uki_known: bool,
}

/// The events extended so far, per PCR and bank.
type Extended = BTreeMap<(u32, imgctl_measure::HashAlg), Vec<imgctl_measure::Digest>>;

/// One addon measurement with its event digest per bank (in `banks` order).
type AddonMeasurement = (SidecarMeasurement, Vec<imgctl_measure::Digest>);

/// The addons' PCR 12 events (global addons sorted, then `local`, the `*.addon.efi` among the
/// files beside the UKI, sorted), as the stub measures them: those it makes before the sidecar
/// archives (the joined command lines, then devicetrees), and those after them (microcode in
/// reverse order, then initrds). The PCR values are filled in by the caller.
fn addon_measurements(
    semantics: imgctl_measure::StubSemantics,
    local: &[(&str, &Path)],
    addons: &Addons,
    banks: &[imgctl_measure::HashAlg],
) -> Result<(Vec<AddonMeasurement>, Vec<AddonMeasurement>), Error> {
    use imgctl_measure::addon;
    let mut global: Vec<(&str, &Path)> = Vec::new();
    for f in &addons.global {
        let name = f
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| Error::Unsupported(format!("{}: no usable file name", f.display())))?;
        if global.iter().any(|(n, _)| *n == name) {
            return Err(Error::Unsupported(format!(
                "global addon {name} given twice"
            )));
        }
        if addon::picks_up(name) {
            global.push((name, f.as_path()));
        }
    }
    global.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut local = local.to_vec();
    local.sort_unstable_by(|a, b| a.0.cmp(b.0));
    if global.is_empty() && local.is_empty()
        || semantics == imgctl_measure::StubSemantics::Systemd252
    {
        return Ok((Vec::new(), Vec::new())); // no addons before 254
    }
    let mut loaded: Vec<(String, String, addon::Addon)> = Vec::new();
    for (prefix, (name, path)) in global
        .iter()
        .map(|g| (addon::GLOBAL_ADDON_DIR, g))
        .chain(local.iter().map(|l| ("extra.d", l)))
    {
        let data = imgctl_fsio::read_bounded(path, imgctl_fsio::caps::ADDON, "an addon")?;
        let a = addon::read(&data)
            .map_err(|e| Error::Unsupported(format!("addon {}: {e}", path.display())))?;
        if a.uname.is_some() && !addons.uki_known {
            return Err(Error::Unsupported(format!(
                "addon {}: carries .uname; give the UKI (--uki) to predict whether the stub applies it",
                path.display()
            )));
        }
        if !addon::uname_matches(a.uname.as_deref(), addons.uki_uname.as_deref()) {
            continue; // the stub skips it: ".uname mismatch between addon and UKI"
        }
        loaded.push((format!("{prefix}/{name}"), (*name).to_owned(), a));
    }
    let events =
        addon::events(semantics, &loaded).map_err(|e| Error::Unsupported(e.to_string()))?;
    let measure = |list: &[addon::AddonEvent<'_>]| -> Result<Vec<AddonMeasurement>, Error> {
        let mut out = Vec::new();
        for e in list {
            let mut digests = Vec::new();
            let mut rows = Vec::new();
            for bank in banks {
                let mut h = bank
                    .hasher()
                    .map_err(|e| Error::Unsupported(e.to_string()))?;
                h.update(&e.data);
                let ev = h.finish();
                rows.push(SidecarBank {
                    bank: bank.to_string(),
                    event_digest: ev.to_hex(),
                    pcr_value: String::new(),
                });
                digests.push(ev);
            }
            let description = match e.tag {
                None => e.description.clone(),
                Some(addon::INITRD_ADDON_EVENT_TAG_ID) => format!("initrd addon {}", e.description),
                Some(addon::UCODE_ADDON_EVENT_TAG_ID) => {
                    format!("microcode addon {}", e.description)
                }
                Some(_) => format!("devicetree addon {}", e.description),
            };
            out.push((
                SidecarMeasurement {
                    pcr: imgctl_measure::pcr11::PCR_KERNEL_PARAMETERS,
                    description,
                    files: e.addons.clone(),
                    banks: rows,
                },
                digests,
            ));
        }
        Ok(out)
    };
    Ok((
        measure(&events.before_sidecars)?,
        measure(&events.after_sidecars)?,
    ))
}

/// [`predict_sidecars`] with addons: the addons' joined command line first (PCR 12, systemd
/// 256 and later; `*.addon.efi` among `files` are the UKI's own, `addons.global` those in
/// `loader/addons/`), then the sidecar archives.
pub fn predict_beside_uki(
    semantics: imgctl_measure::StubSemantics,
    files: &[PathBuf],
    addons: &Addons,
    banks: &[imgctl_measure::HashAlg],
) -> Result<Vec<SidecarMeasurement>, Error> {
    use crate::stub::{pcr_after, select, ArchiveHasher, Sidecar};
    let mut by_name = BTreeMap::new();
    for f in files {
        let name = f
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| Error::Unsupported(format!("{}: no usable file name", f.display())))?;
        if by_name.insert(name.to_owned(), f.clone()).is_some() {
            return Err(Error::Unsupported(format!("{name} given twice")));
        }
    }
    let names: Vec<&str> = by_name.keys().map(String::as_str).collect();
    let mut out = Vec::new();
    // The events extended so far, per PCR and bank: PCR 12 takes the addons' command line,
    // credentials, confexts, then microcode and initrd addons.
    let mut extended: Extended = BTreeMap::new();
    let local: Vec<(&str, &Path)> = by_name
        .iter()
        .filter(|(n, _)| imgctl_measure::addon::picks_up(n))
        .map(|(n, p)| (n.as_str(), p.as_path()))
        .collect();
    let (before, after) = addon_measurements(semantics, &local, addons, banks)?;
    fn add_addon(
        (mut m, events): AddonMeasurement,
        banks: &[imgctl_measure::HashAlg],
        extended: &mut Extended,
        out: &mut Vec<SidecarMeasurement>,
    ) -> Result<(), Error> {
        for ((bank, ev), row) in banks.iter().zip(events).zip(m.banks.iter_mut()) {
            let before = extended.entry((m.pcr, *bank)).or_default();
            before.push(ev);
            row.pcr_value = crate::stub::pcr_after(*bank, &before.iter().collect::<Vec<_>>())
                .map_err(|e| Error::Unsupported(e.to_string()))?
                .to_hex();
        }
        out.push(m);
        Ok(())
    }
    for m in before {
        add_addon(m, banks, &mut extended, &mut out)?;
    }
    for sidecar in Sidecar::IN_STUB_ORDER {
        let chosen = select(semantics, sidecar, &names);
        let mut h =
            ArchiveHasher::new(sidecar, banks).map_err(|e| Error::Unsupported(e.to_string()))?;
        for name in &chosen {
            let path = &by_name[*name];
            let mut f = File::open(path).map_err(|e| Error::io(path, "opening", e))?;
            let len = f
                .metadata()
                .map_err(|e| Error::io(path, "reading", e))?
                .len();
            let size = u32::try_from(len).map_err(|_| {
                Error::Unsupported(format!(
                    "{}: cpio cannot hold files over 4 GiB",
                    path.display()
                ))
            })?;
            h.begin_file(name, size);
            let mut buf = vec![0u8; CHUNK];
            let mut left = len;
            while left > 0 {
                let n = usize::try_from(left.min(CHUNK as u64)).unwrap_or(CHUNK);
                f.read_exact(&mut buf[..n])
                    .map_err(|e| Error::io(path, "reading", e))?;
                h.data(&buf[..n]);
                left -= n as u64;
            }
            h.end_file(size);
        }
        let Some(events) = h.finish() else { continue };
        let mut rows = Vec::new();
        for (bank, ev) in events {
            let before = extended.entry((sidecar.pcr(), bank)).or_default();
            before.push(ev.clone());
            let pcr = pcr_after(bank, &before.iter().collect::<Vec<_>>())
                .map_err(|e| Error::Unsupported(e.to_string()))?;
            rows.push(SidecarBank {
                bank: bank.to_string(),
                event_digest: ev.to_hex(),
                pcr_value: pcr.to_hex(),
            });
        }
        out.push(SidecarMeasurement {
            pcr: sidecar.pcr(),
            description: sidecar.description().to_owned(),
            files: chosen.iter().map(|s| s.to_string()).collect(),
            banks: rows,
        });
    }
    for m in after {
        add_addon(m, banks, &mut extended, &mut out)?;
    }
    Ok(out)
}

/// What systemd-stub measures when `image` is the only extension beside the UKI
/// (`<uki>.efi.extra.d/`), under the stubs before confexts (every `*.raw` a sysext, PCR 13) and
/// since (v256: `*.confext.raw` into PCR 12): one event per distinct measurement, in every bank.
/// The record of an extension carries these, so a verifier can resolve a boot's PCR 12/13 event
/// to the published image; several images beside one UKI make another archive, which only
/// `ext predict-pcrs` over all of them predicts.
pub fn alone_beside_uki_events(
    image: &Path,
) -> Result<Vec<imgctl_measure::manifest::EventRecord>, Error> {
    use imgctl_measure::{HashAlg, StubSemantics};
    let mut out: Vec<imgctl_measure::manifest::EventRecord> = Vec::new();
    for major in [252, 258] {
        let semantics = StubSemantics::for_systemd_version(major);
        for m in predict_sidecars(semantics, &[image.to_owned()], &HashAlg::ALL)? {
            let digests: BTreeMap<String, String> = m
                .banks
                .iter()
                .map(|b| (b.bank.clone(), b.event_digest.clone()))
                .collect();
            if out.iter().any(|e| e.pcr == m.pcr && e.digests == digests) {
                continue;
            }
            out.push(imgctl_measure::manifest::EventRecord {
                pcr: m.pcr,
                digests,
                description: Some(format!(
                    "{} of {} alone beside the UKI ({})",
                    m.description,
                    m.files.join(" "),
                    if semantics.version().confext_sidecars {
                        "systemd 256 and later"
                    } else {
                        "systemd before 256"
                    }
                )),
            });
        }
    }
    Ok(out)
}
