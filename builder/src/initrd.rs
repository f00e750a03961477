//! Initrds: deterministic cpio "newc" archives from a file tree, and concatenation of existing
//! archives.
//!
//! Determinism (same tree, same bytes): entries sorted by path, every parent directory present,
//! owner 0:0, mtime = SOURCE_DATE_EPOCH, inode numbers assigned in order from 1, device numbers
//! 0, `nlink` 2 for directories and 1 otherwise. Modes are normalised as the extension images'
//! are, so the umask of a checkout does not leak into the archive (and PCR 11): directories and
//! executables (any x bit) 0755, other files 0644, symlinks 0777, unless the recipe sets a mode. Symlinks and directories are kept; device
//! nodes, FIFOs and sockets are refused (create them at boot, or pack them in an archive).
//! The format is the kernel's (Documentation/driver-api/early-userspace/buffer-format.rst).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use crate::recipe::{Compression, InitrdSpec};
use crate::Error;

/// What an archive entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
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

/// Encodes entries as a newc archive with a trailer. Missing parent directories are added
/// (mode 0755); later entries for the same path replace earlier ones.
pub fn encode_newc(entries: &[CpioEntry], mtime: u32) -> Result<Vec<u8>, Error> {
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

    let mut w: Vec<u8> = Vec::new();
    for (ino, (path, e)) in (1u32..).zip(by_path) {
        let (ftype, nlink, data): (u32, u32, &[u8]) = match &e.kind {
            EntryKind::Dir => (S_IFDIR, 2, &[]),
            EntryKind::File(d) => (S_IFREG, 1, d),
            EntryKind::Symlink(t) => (S_IFLNK, 1, t.as_bytes()),
        };
        let size = u32::try_from(data.len()).map_err(|_| {
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
        member
            .write_all(data)
            .map_err(|e| Error::InvalidInput(format!("encoding {path}: {e}")))?;
        member
            .finish()
            .map_err(|e| Error::InvalidInput(format!("encoding {path}: {e}")))?;
    }
    cpio::newc::trailer(&mut w)
        .map_err(|e| Error::InvalidInput(format!("encoding the trailer: {e}")))?;
    Ok(w)
}

/// Walks a directory tree into entries (sorted; paths relative to `root`).
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
            let data = std::fs::read(&p).map_err(|e| Error::io(&p, "reading", e))?;
            out.push(CpioEntry {
                path: rel,
                mode: normal_mode(&meta),
                kind: EntryKind::File(data),
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

/// Builds the initrd a spec describes: archives (each padded to 4 bytes), then the packed tree.
pub fn build_initrd(spec: &InitrdSpec, mtime: u32) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    for a in &spec.archives {
        let data = std::fs::read(a).map_err(|e| Error::io(a, "reading the initrd archive", e))?;
        out.extend_from_slice(&data);
        out.resize(out.len().div_ceil(4) * 4, 0);
    }
    if spec.packs_tree() {
        let mut entries = match &spec.tree {
            Some(t) => collect_tree(t)?,
            None => Vec::new(),
        };
        for f in &spec.files {
            let data = std::fs::read(&f.src).map_err(|e| Error::io(&f.src, "reading", e))?;
            let mode = match f.mode {
                Some(m) => m,
                None => normal_mode(
                    &std::fs::metadata(&f.src).map_err(|e| Error::io(&f.src, "reading", e))?,
                ),
            };
            entries.push(CpioEntry {
                path: f.dst.trim_start_matches('/').to_owned(),
                mode,
                kind: EntryKind::File(data),
            });
        }
        let cpio = encode_newc(&entries, mtime)?;
        match spec.compression {
            Compression::None => out.extend_from_slice(&cpio),
            Compression::Gzip => out.extend_from_slice(&gzip(&cpio)?),
        }
    }
    Ok(out)
}

/// gzip with no name and mtime 0, so the output depends on the input only.
fn gzip(data: &[u8]) -> Result<Vec<u8>, Error> {
    let mut enc = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(3)
        .write(Vec::new(), flate2::Compression::best());
    enc.write_all(data)
        .and_then(|_| enc.finish())
        .map_err(|e| Error::InvalidInput(format!("compressing the initrd: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(p: &str, d: &[u8]) -> CpioEntry {
        CpioEntry {
            path: p.into(),
            mode: 0o644,
            kind: EntryKind::File(d.to_vec()),
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

    #[test]
    fn gzip_is_deterministic() {
        assert_eq!(gzip(b"abc").unwrap(), gzip(b"abc").unwrap());
        assert_eq!(&gzip(b"abc").unwrap()[..2], &[0x1f, 0x8b]);
    }
}
