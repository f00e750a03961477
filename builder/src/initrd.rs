//! Initrds: deterministic cpio "newc" archives from a file tree, and concatenation of existing
//! archives.
//!
//! Determinism (same tree, same bytes): entries sorted by path, every parent directory present,
//! owner 0:0, mtime = SOURCE_DATE_EPOCH, inode numbers assigned in order from 1, device numbers
//! 0, `nlink` 2 for directories and 1 otherwise. Modes are normalised as the extension images'
//! are, so the umask of a checkout does not leak into the archive (and PCR 11): directories and
//! executables (any x bit) 0755, other files 0644, symlinks 0777, unless the recipe sets a mode.
//! Symlinks and directories are kept; device nodes, FIFOs and sockets are refused (create them
//! at boot, or pack them in an archive).
//! The format is the kernel's (Documentation/driver-api/early-userspace/buffer-format.rst).
//!
//! Streaming: file contents are copied from disk through a bounded buffer straight into the
//! writer (the build's temporary file), never held whole; a file must still have the size it had
//! when the tree was listed, or the build fails.

use crate::hashing::CountingWriter;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::recipe::{Compression, InitrdSpec};
use crate::Error;

/// What an archive entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File(FileData),
    Symlink(String),
}

/// Where a member's content comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileData {
    Bytes(Vec<u8>),
    /// A regular file, streamed when the archive is written; `size` is its length when listed.
    Path {
        path: PathBuf,
        size: u64,
    },
}

impl FileData {
    fn len(&self) -> u64 {
        match self {
            FileData::Bytes(b) => b.len() as u64,
            FileData::Path { size, .. } => *size,
        }
    }
}

/// One archive member. `path` is relative (no leading `/`), `mode` the permission bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpioEntry {
    pub path: String,
    pub mode: u32,
    pub kind: EntryKind,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

/// The buffer file contents are copied through.
const COPY_BUFFER: usize = 256 << 10;

/// Swallows flushes: the cpio crate flushes after every member, which would make a gzip
/// stream below it emit a sync block each time (other bytes than compressing the whole archive
/// at once, and worse compression).
struct NoFlush<W>(W);

impl<W: Write> Write for NoFlush<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Encodes entries as a newc archive with a trailer, in memory. See [`write_newc`].
pub fn encode_newc(entries: &[CpioEntry], mtime: u32) -> Result<Vec<u8>, Error> {
    let mut w = Vec::new();
    write_newc(entries, mtime, &mut w, Path::new("(memory)"))?;
    Ok(w)
}

/// Writes entries as a newc archive with a trailer to `w` (`out` names it in errors). Missing
/// parent directories are added (mode 0755); later entries for the same path replace earlier
/// ones.
pub fn write_newc<W: Write>(
    entries: &[CpioEntry],
    mtime: u32,
    w: &mut W,
    out: &Path,
) -> Result<(), Error> {
    let mut by_path: BTreeMap<String, &CpioEntry> = BTreeMap::new();
    for e in entries {
        by_path.insert(e.path.clone(), e);
    }
    let implied: Vec<CpioEntry> = by_path
        .keys()
        .flat_map(|p| {
            let parts: Vec<&str> = p.split('/').collect();
            (1..parts.len())
                .map(move |i| parts[..i].join("/"))
                .collect::<Vec<_>>()
        })
        .filter(|d| !by_path.contains_key(d))
        .map(|d| CpioEntry {
            path: d,
            mode: 0o755,
            kind: EntryKind::Dir,
        })
        .collect();
    for d in &implied {
        by_path.entry(d.path.clone()).or_insert(d);
    }

    let werr = |e| Error::io(out, "writing", e);
    let mut w = NoFlush(w);
    let mut buf = vec![0u8; COPY_BUFFER];
    for (ino, (path, e)) in (1u32..).zip(by_path) {
        let (ftype, nlink, len) = match &e.kind {
            EntryKind::Dir => (S_IFDIR, 2, 0),
            EntryKind::File(d) => (S_IFREG, 1, d.len()),
            EntryKind::Symlink(t) => (S_IFLNK, 1, t.len() as u64),
        };
        let size = u32::try_from(len).map_err(|_| {
            Error::InvalidInput(format!("initrd member {path} is larger than 4 GiB"))
        })?;
        let mut member = cpio::newc::Builder::new(&path)
            .ino(ino)
            .mode(ftype | (e.mode & 0o7777))
            .uid(0)
            .gid(0)
            .nlink(nlink)
            .mtime(mtime)
            .write(&mut w, size);
        match &e.kind {
            EntryKind::Dir => {}
            EntryKind::File(FileData::Bytes(d)) => member.write_all(d).map_err(werr)?,
            EntryKind::File(FileData::Path { path: src, size }) => {
                copy_exact(src, *size, &mut member, out, &mut buf)?
            }
            EntryKind::Symlink(t) => member.write_all(t.as_bytes()).map_err(werr)?,
        }
        member.finish().map_err(werr)?;
    }
    cpio::newc::trailer(&mut w).map_err(werr)?;
    Ok(())
}

/// Copies the regular file `src`, which must hold exactly `size` bytes (its size when it was
/// listed), to `w` through `buf`.
fn copy_exact(
    src: &Path,
    size: u64,
    w: &mut impl Write,
    out: &Path,
    buf: &mut [u8],
) -> Result<(), Error> {
    let changed = || {
        Error::InvalidInput(format!(
            "{}: changed while the initrd was being written (it had {size} bytes)",
            src.display()
        ))
    };
    let (mut f, len) = imgctl_fsio::open_regular(src)?;
    if len != size {
        return Err(changed());
    }
    let mut left = size;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = match f.read(&mut buf[..want]) {
            Ok(0) => return Err(changed()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io(src, "reading", e)),
        };
        w.write_all(&buf[..n])
            .map_err(|e| Error::io(out, "writing", e))?;
        left -= n as u64;
    }
    loop {
        match f.read(&mut buf[..1]) {
            Ok(0) => return Ok(()),
            Ok(_) => return Err(changed()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io(src, "reading", e)),
        }
    }
}

/// Walks a directory tree into entries (sorted; paths relative to `root`; file contents are
/// referenced, not read).
pub fn collect_tree(root: &Path) -> Result<Vec<CpioEntry>, Error> {
    let mut out = Vec::new();
    walk(root, root, &mut out)?;
    Ok(out)
}

/// The mode a file gets when the recipe sets none: 0755 if any x bit is set, else 0644.
fn normal_mode(meta: &std::fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    if meta.permissions().mode() & 0o111 != 0 {
        0o755
    } else {
        0o644
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<CpioEntry>) -> Result<(), Error> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, "reading the initrd tree", e))?
        .map(|r| r.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(|e| Error::io(dir, "reading the initrd tree", e))?;
    names.sort();
    for p in names {
        let meta = std::fs::symlink_metadata(&p).map_err(|e| Error::io(&p, "reading", e))?;
        let rel = p
            .strip_prefix(root)
            .map_err(|_| Error::InvalidInput(format!("{} escapes the tree", p.display())))?
            .to_str()
            .ok_or_else(|| Error::InvalidInput(format!("{} is not valid UTF-8", p.display())))?
            .to_owned();
        let ft = meta.file_type();
        if ft.is_dir() {
            out.push(CpioEntry {
                path: rel,
                mode: 0o755,
                kind: EntryKind::Dir,
            });
            walk(root, &p, out)?;
        } else if ft.is_file() {
            out.push(CpioEntry {
                path: rel,
                mode: normal_mode(&meta),
                kind: EntryKind::File(FileData::Path {
                    path: p.clone(),
                    size: meta.len(),
                }),
            });
        } else if ft.is_symlink() {
            let t = std::fs::read_link(&p).map_err(|e| Error::io(&p, "reading the link", e))?;
            let t = t.to_str().ok_or_else(|| {
                Error::InvalidInput(format!("link target of {} is not UTF-8", p.display()))
            })?;
            out.push(CpioEntry {
                path: rel,
                mode: 0o777,
                kind: EntryKind::Symlink(t.to_owned()),
            });
        } else {
            return Err(Error::InvalidInput(format!(
                "{} is a device node, FIFO or socket; the initrd tree may hold only files, directories and symlinks",
                p.display()
            )));
        }
    }
    Ok(())
}

/// Builds the initrd a spec describes, in memory. See [`write_initrd`].
pub fn build_initrd(spec: &InitrdSpec, mtime: u32) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    write_initrd(spec, mtime, &mut out, Path::new("(memory)"))?;
    Ok(out)
}

/// Writes the initrd a spec describes to `w` (`out` names it in errors): archives (each padded
/// to 4 bytes), then the packed tree, compressed as the spec says. Returns its length.
pub fn write_initrd<W: Write>(
    spec: &InitrdSpec,
    mtime: u32,
    w: W,
    out: &Path,
) -> Result<u64, Error> {
    let werr = |e| Error::io(out, "writing", e);
    let mut w = CountingWriter { inner: w, count: 0 };
    let mut buf = vec![0u8; COPY_BUFFER];
    for a in &spec.archives {
        let (_, size) = imgctl_fsio::open_regular(a)?;
        copy_exact(a, size, &mut w, out, &mut buf)?;
        let pad = w.count.next_multiple_of(4) - w.count;
        w.write_all(&[0; 4][..pad as usize]).map_err(werr)?;
    }
    drop(buf);
    if spec.packs_tree() {
        let mut entries = match &spec.tree {
            Some(t) => collect_tree(t)?,
            None => Vec::new(),
        };
        let tree: BTreeMap<String, bool> = entries
            .iter()
            .map(|e| (e.path.clone(), e.kind == EntryKind::Dir))
            .collect();
        for f in &spec.files {
            check_placement(&tree, &f.dst)?;
            let (file, size) = imgctl_fsio::open_regular(&f.src)?;
            let mode = match f.mode {
                Some(m) => m,
                None => normal_mode(
                    &file
                        .metadata()
                        .map_err(|e| Error::io(&f.src, "reading", e))?,
                ),
            };
            entries.push(CpioEntry {
                path: f.dst.trim_start_matches('/').to_owned(),
                mode,
                kind: EntryKind::File(FileData::Path {
                    path: f.src.clone(),
                    size,
                }),
            });
        }
        match spec.compression {
            Compression::None => write_newc(&entries, mtime, &mut w, out)?,
            Compression::Gzip => {
                let mut enc = gzip_writer(NoFlush(&mut w));
                write_newc(&entries, mtime, &mut enc, out)?;
                enc.finish().map_err(werr)?;
            }
        }
    }
    w.flush().map_err(werr)?;
    Ok(w.count)
}

/// Refuses a `files:` destination that the tree already holds, or that lies under a tree
/// entry that is not a directory (a file, or a symlink the unpacker would follow). `tree` maps
/// each tree path to whether it is a directory.
fn check_placement(tree: &BTreeMap<String, bool>, dst: &str) -> Result<(), Error> {
    let rel = dst.trim_start_matches('/');
    if tree.contains_key(rel) {
        return Err(Error::InvalidInput(format!(
            "initrd.files: {dst} is also in the initrd tree; give each destination once"
        )));
    }
    let mut parent = rel;
    while let Some((up, _)) = parent.rsplit_once('/') {
        if tree.get(up) == Some(&false) {
            return Err(Error::InvalidInput(format!(
                "initrd.files: {dst} lies under /{up}, which the initrd tree has as a file or symlink"
            )));
        }
        parent = up;
    }
    Ok(())
}

/// gzip with no name and mtime 0, so the output depends on the input only.
fn gzip_writer<W: Write>(w: W) -> flate2::write::GzEncoder<W> {
    flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(3)
        .write(w, flate2::Compression::best())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(p: &str, d: &[u8]) -> CpioEntry {
        CpioEntry {
            path: p.into(),
            mode: 0o644,
            kind: EntryKind::File(FileData::Bytes(d.to_vec())),
        }
    }

    #[test]
    fn archive_is_sorted_with_parents_and_reads_back() {
        let a = encode_newc(&[file("b/c/d", b"x"), file("a", b"hello")], 42).unwrap();
        let b = encode_newc(&[file("a", b"hello"), file("b/c/d", b"x")], 42).unwrap();
        assert_eq!(a, b, "input order must not matter");
        let mut names = Vec::new();
        let mut r = std::io::Cursor::new(a);
        loop {
            let entry = cpio::newc::Reader::new(r).unwrap();
            if entry.entry().is_trailer() {
                break;
            }
            let e = entry.entry();
            names.push((e.name().to_owned(), e.ino(), e.uid(), e.mtime(), e.mode()));
            r = entry.finish().unwrap();
        }
        let just: Vec<_> = names.iter().map(|n| n.0.as_str()).collect();
        assert_eq!(just, ["a", "b", "b/c", "b/c/d"]);
        assert!(names.iter().all(|n| n.2 == 0 && n.3 == 42));
        assert_eq!(names[1].4, 0o040755);
        assert_eq!(names.iter().map(|n| n.1).collect::<Vec<_>>(), [1, 2, 3, 4]);
    }

    /// gzip of the whole archive at once, as the builder compressed before it streamed.
    fn gzip_at_once(data: &[u8]) -> Vec<u8> {
        let mut enc = gzip_writer(Vec::new());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn gzip_is_deterministic() {
        assert_eq!(gzip_at_once(b"abc"), gzip_at_once(b"abc"));
        assert_eq!(&gzip_at_once(b"abc")[..2], &[0x1f, 0x8b]);
    }

    /// Streaming files from disk through the cpio writer into gzip gives the bytes that
    /// compressing the archive built in memory gives: the flushes the cpio crate makes after
    /// each member must not reach the compressor.
    #[test]
    fn streamed_initrd_equals_the_archive_built_in_memory() {
        let tmp = tempfile::tempdir().unwrap();
        let tree = tmp.path().join("tree");
        std::fs::create_dir_all(tree.join("a/b")).unwrap();
        let mut contents = Vec::new();
        for (i, name) in ["a/b/one", "a/two", "three", "a/b/four"].iter().enumerate() {
            // Compressible and larger than the copy buffer for some.
            let data: Vec<u8> = (0..(i * 200_000 + 17))
                .map(|j| (j % (7 + i)) as u8)
                .collect();
            std::fs::write(tree.join(name), &data).unwrap();
            contents.push((name.to_string(), data));
        }
        let in_memory: Vec<CpioEntry> = contents.iter().map(|(n, d)| file(n, d)).collect();
        let cpio = encode_newc(&in_memory, 7).unwrap();
        for compression in [Compression::None, Compression::Gzip] {
            let spec = InitrdSpec {
                tree: Some(tree.clone()),
                compression,
                ..Default::default()
            };
            let streamed = build_initrd(&spec, 7).unwrap();
            let want = match compression {
                Compression::None => cpio.clone(),
                Compression::Gzip => gzip_at_once(&cpio),
            };
            assert!(streamed == want, "{compression:?} differs");
        }
    }

    #[test]
    fn a_file_that_changes_size_while_being_packed_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("f");
        std::fs::write(&p, b"12345").unwrap();
        let entry = |size| CpioEntry {
            path: "f".into(),
            mode: 0o644,
            kind: EntryKind::File(FileData::Path {
                path: p.clone(),
                size,
            }),
        };
        assert!(encode_newc(&[entry(5)], 0).is_ok());
        for size in [4, 6] {
            let e = encode_newc(&[entry(size)], 0).unwrap_err().to_string();
            assert!(
                e.contains("changed while the initrd was being written"),
                "{e}"
            );
        }
    }
}
