//! imgctl's file I/O edge, in one place.
//!
//! - **Reading untrusted inputs** ([`read_bounded`], [`open_regular`]): every input must be a
//!   regular file (a FIFO, `/dev/zero` or a folder is refused with a message); inputs whose format
//!   has a natural bound (keys, policies, proofs, event logs, quotes, notes, recipes) are read
//!   with a cap and refused past it; large inputs are opened for streaming.
//! - **Writing outputs** ([`Transaction`], [`write_atomic`]): every file is written under a
//!   temporary name beside its final one, fsynced, and renamed into place only when all of a
//!   command's files were written, then the folder is fsynced. A failed or interrupted command
//!   leaves nothing new under a final name and the old files untouched. Temporaries are removed
//!   on error, on drop, and on SIGINT/SIGTERM ([`remove_registered_temporaries`], called from the
//!   CLI's signal handler); those left by a killed run (`kill -9`) are reclaimed by the next run
//!   that writes into the same folder ([`reclaim_stale`]).
//! - **Output paths** ([`check_output`]): an output never replaces a device node, FIFO, socket,
//!   symlink or folder, and is never one of the command's inputs.
//!
//! - **Recipe text** ([`yaml::checked_text`]): UTF-8, byte order mark stripped, nesting bounded
//!   before any YAML parser sees it; shared by the UKI and the extension recipe readers.
//!
//! This is the only crate whose job is file I/O; pure crates (`measure`) never open files.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// What went wrong, naming the path.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
    #[error("{}: not a regular file ({kind}){hint}", path.display())]
    NotRegular {
        path: PathBuf,
        kind: &'static str,
        hint: &'static str,
    },
    #[error("{}: {size_desc} is larger than the {cap}-byte limit for {what}", path.display())]
    TooLarge {
        path: PathBuf,
        what: &'static str,
        cap: u64,
        size_desc: String,
    },
    #[error("{}: refusing to write over a {kind}", path.display())]
    OutputIsSpecial { path: PathBuf, kind: &'static str },
    #[error("{}: the output is also an input ({})", path.display(), input.display())]
    OutputIsInput { path: PathBuf, input: PathBuf },
    #[error("{}: has no file name", path.display())]
    NoFileName { path: PathBuf },
    #[error("{}: not a folder ({kind}){}", path.display(), within.as_ref().map(|w| format!(", so {} cannot be created", w.display())).unwrap_or_default())]
    NotAFolder {
        path: PathBuf,
        kind: &'static str,
        /// The folder that was to be made inside it, when `path` is one of its parents.
        within: Option<PathBuf>,
    },
    #[error("{}: folder is not writable: {source}", path.display())]
    FolderNotWritable {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Error {
    pub fn io(path: &Path, action: &'static str, source: std::io::Error) -> Error {
        Error::Io {
            path: path.to_owned(),
            action,
            source,
        }
    }

    /// The path the error is about.
    pub fn path(&self) -> &Path {
        match self {
            Error::Io { path, .. }
            | Error::NotRegular { path, .. }
            | Error::TooLarge { path, .. }
            | Error::OutputIsSpecial { path, .. }
            | Error::OutputIsInput { path, .. }
            | Error::NoFileName { path }
            | Error::NotAFolder { path, .. }
            | Error::FolderNotWritable { path, .. } => path,
        }
    }
}

fn kind_of(ft: &std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "a folder"
    } else if ft.is_symlink() {
        "a symbolic link"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_socket() {
        "a socket"
    } else {
        "a regular file"
    }
}

// ---------------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------------

/// Opens `path` for reading after checking that it is a regular file (following symlinks, as
/// `open` does). Returns the file and its size.
pub fn open_regular(path: &Path) -> Result<(File, u64), Error> {
    // Checked before opening too: opening a FIFO blocks until a writer comes.
    if let Ok(m) = std::fs::metadata(path) {
        not_regular(path, &m.file_type())?;
    }
    // O_NONBLOCK: a FIFO swapped in after the check must not block either (it is refused
    // below); on a regular file the flag changes nothing.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
        .map_err(|e| Error::io(path, "opening", e))?;
    let meta = file
        .metadata()
        .map_err(|e| Error::io(path, "reading metadata", e))?;
    not_regular(path, &meta.file_type())?;
    Ok((file, meta.len()))
}

fn not_regular(path: &Path, ft: &std::fs::FileType) -> Result<(), Error> {
    if !ft.is_file() {
        let hint = if ft.is_dir() {
            ""
        } else {
            ": endless and special inputs are refused"
        };
        return Err(Error::NotRegular {
            path: path.to_owned(),
            kind: kind_of(ft),
            hint,
        });
    }
    Ok(())
}

/// Reads a whole regular file of at most `cap` bytes. `what` names the kind of input in the
/// error ("an event log", "a policy"). The file is read through a `take(cap + 1)` so a file that
/// grows while being read is refused too.
pub fn read_bounded(path: &Path, cap: u64, what: &'static str) -> Result<Vec<u8>, Error> {
    let (file, len) = open_regular(path)?;
    if len > cap {
        return Err(Error::TooLarge {
            path: path.to_owned(),
            what,
            cap,
            size_desc: format!("its {len} bytes are"),
        });
    }
    let mut data = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.take(cap.saturating_add(1))
        .read_to_end(&mut data)
        .map_err(|e| Error::io(path, "reading", e))?;
    if data.len() as u64 > cap {
        return Err(Error::TooLarge {
            path: path.to_owned(),
            what,
            cap,
            size_desc: "it grew while being read and".to_owned(),
        });
    }
    Ok(data)
}

/// Reads at most `cap` bytes from a stream (stdin), refusing more.
pub fn read_stream_bounded(
    mut r: impl Read,
    name: &Path,
    cap: u64,
    what: &'static str,
) -> Result<Vec<u8>, Error> {
    let mut data = Vec::new();
    (&mut r)
        .take(cap.saturating_add(1))
        .read_to_end(&mut data)
        .map_err(|e| Error::io(name, "reading", e))?;
    if data.len() as u64 > cap {
        return Err(Error::TooLarge {
            path: name.to_owned(),
            what,
            cap,
            size_desc: "the input".to_owned(),
        });
    }
    Ok(data)
}

pub mod fanout;
pub mod yaml;

/// Size caps for inputs whose format has a natural bound. Generous for real data, small enough
/// that an endless or hostile input is refused quickly.
pub mod caps {
    /// PEM/DER keys and certificates.
    pub const KEY: u64 = 1 << 20;
    /// Verification policies, recipes, manifests, pcrs.json.
    pub const POLICY: u64 = 16 << 20;
    /// Firmware event logs (real ones are 10–100 KiB).
    pub const EVENT_LOG: u64 = 64 << 20;
    /// systemd's userspace measurement log.
    pub const USERSPACE_LOG: u64 = 64 << 20;
    /// TPM quotes, signatures, AK public areas.
    pub const QUOTE: u64 = 1 << 20;
    /// Signed notes, checkpoints, proofs.
    pub const NOTE: u64 = 1 << 20;
    /// A raw log entry.
    pub const ENTRY: u64 = 16 << 20;
    /// A systemd-stub PE addon (command-line addons are a few KiB; initrd addons carry
    /// firmware or modules).
    pub const ADDON: u64 = 256 << 20;
}

// ---------------------------------------------------------------------------------------------
// Output paths
// ---------------------------------------------------------------------------------------------

/// Checks that `out` may be written: if something is there it is a regular file (not a device,
/// FIFO, socket, symlink or folder), and it is none of `inputs` (compared by device and inode,
/// so another spelling of the same file is caught).
pub fn check_output(out: &Path, inputs: &[&Path]) -> Result<(), Error> {
    match std::fs::symlink_metadata(out) {
        Ok(m) => {
            let ft = m.file_type();
            if !ft.is_file() {
                return Err(Error::OutputIsSpecial {
                    path: out.to_owned(),
                    kind: kind_of(&ft),
                });
            }
            for i in inputs {
                if let Ok(im) = std::fs::metadata(i) {
                    if im.dev() == m.dev() && im.ino() == m.ino() {
                        return Err(Error::OutputIsInput {
                            path: out.to_owned(),
                            input: i.to_path_buf(),
                        });
                    }
                }
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(out, "checking the output path", e)),
    }
}

/// Checks that `dir` can be an output folder, without creating anything: it is a folder (a
/// symlink to one counts) we may write into, or it does not exist and its nearest existing
/// parent is such a folder. A file (or FIFO, device …) where a folder or one of its parents
/// should be is named: `-o ofile/sub` says that `ofile` is not a folder.
pub fn check_output_dir(dir: &Path) -> Result<(), Error> {
    let mut cur = dir;
    loop {
        match std::fs::metadata(cur) {
            Ok(m) if m.is_dir() => return writable(cur),
            Ok(m) => {
                return Err(Error::NotAFolder {
                    path: cur.to_owned(),
                    kind: kind_of(&m.file_type()),
                    within: (cur != dir).then(|| dir.to_owned()),
                })
            }
            // Missing, or a file further up (ENOTDIR): look at the parent.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                match cur.parent() {
                    Some(p) if !p.as_os_str().is_empty() => cur = p,
                    _ => return writable(Path::new(".")),
                }
            }
            Err(e) => return Err(Error::io(cur, "checking the output folder", e)),
        }
    }
}

/// Whether this process may create files in `dir` (access(2) W_OK|X_OK: a read-only file
/// system and missing permissions are both caught).
fn writable(dir: &Path) -> Result<(), Error> {
    use rustix::fs::Access;
    rustix::fs::access(dir, Access::WRITE_OK | Access::EXEC_OK).map_err(|e| {
        Error::FolderNotWritable {
            path: dir.to_owned(),
            source: e.into(),
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Programs
// ---------------------------------------------------------------------------------------------

/// Where an external program is: the first executable `name` on `PATH` (the `which` crate's
/// lookup), then in /usr/sbin and /sbin, where administration tools such as mkfs.vfat live and
/// which a user's `PATH` often lacks. A name with a slash is taken as a path.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(["/usr/sbin", "/sbin"].map(PathBuf::from));
    let dirs = std::env::join_paths(dirs).ok()?;
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    which::which_in(name, Some(dirs), cwd).ok()
}

// ---------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------

/// The marker in every temporary name: `.NAME.imgctl-tmp-PID`.
const TMP_MARK: &str = ".imgctl-tmp-";
/// The marker of an old file kept during a commit, to put it back if the commit fails:
/// `.NAME.imgctl-bak-PID`.
const BAK_MARK: &str = ".imgctl-bak-";

fn backup_name(name: &str) -> String {
    format!(".{name}{BAK_MARK}{}", std::process::id())
}

static REGISTERED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn register(p: &Path) {
    if let Ok(mut r) = REGISTERED.lock() {
        r.push(p.to_owned());
    }
}

fn unregister(p: &Path) {
    if let Ok(mut r) = REGISTERED.lock() {
        r.retain(|x| x != p);
    }
}

/// Removes every temporary that a transaction of this process has not committed yet. The CLI
/// calls it from its SIGINT/SIGTERM handler before exiting.
///
/// It first waits for every [`CriticalSection`] to end (a commit in progress finishes, or
/// rolls back), and from then on no new one starts: the caller is about to exit.
pub fn remove_registered_temporaries() {
    {
        let mut c = match CRITICAL.lock() {
            Ok(c) => c,
            Err(p) => p.into_inner(),
        };
        c.closing = true;
        while c.depth > 0 {
            c = match CRITICAL_DONE.wait(c) {
                Ok(c) => c,
                Err(p) => p.into_inner(),
            };
        }
    }
    if let Ok(r) = REGISTERED.lock() {
        for p in r.iter() {
            let _ = std::fs::remove_file(p);
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

/// Registers a temporary folder (a staging tree) for removal on a signal; [`forget_temporary`]
/// once it is committed or removed.
pub fn register_temporary(p: &Path) {
    register(p);
}

/// Stops tracking a temporary registered with [`register_temporary`].
pub fn forget_temporary(p: &Path) {
    unregister(p);
}

fn pid_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// The temporary name for `name` in this process: `.NAME.imgctl-tmp-PID`.
pub fn temporary_name(name: &str) -> String {
    format!(".{name}{TMP_MARK}{}", std::process::id())
}

/// Removes temporaries in `dir` left by imgctl processes that no longer run (a `kill -9`).
/// Returns how many were removed. Errors reading the folder are ignored: reclaiming is a
/// courtesy, never a reason to fail the command.
pub fn reclaim_stale(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut n = 0;
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(pid) = [TMP_MARK, BAK_MARK]
            .iter()
            .find_map(|m| name.rfind(m).map(|pos| &name[pos + m.len()..]))
        else {
            continue;
        };
        if !name.starts_with('.') {
            continue;
        }
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() || pid_alive(pid) {
            continue;
        }
        let p = e.path();
        let removed = match e.file_type() {
            Ok(t) if t.is_dir() => std::fs::remove_dir_all(&p).is_ok(),
            _ => std::fs::remove_file(&p).is_ok(),
        };
        if removed {
            n += 1;
        }
    }
    n
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Syncs each `(path, name)` (the name is what an error reports), several at once: fsyncs in
/// flight together are committed by one journal transaction on ext4 and xfs, where one after
/// the other each waits for its own. Up to [`SYNC_THREADS`] threads; one path is synced inline.
fn sync_side_by_side<'p>(items: impl Iterator<Item = (&'p Path, &'p Path)>) -> Result<(), Error> {
    let items: Vec<(&Path, &Path)> = items.collect();
    let sync = |(p, name): (&Path, &Path)| {
        File::open(p)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::io(name, "syncing", e))
    };
    if items.len() <= 1 {
        return items.into_iter().try_for_each(sync);
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let threads = items.len().min(SYNC_THREADS);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    match items.get(i) {
                        Some(&item) => sync(item)?,
                        None => return Ok(()),
                    }
                })
            })
            .collect();
        let mut result = Ok(());
        for w in workers {
            let r = w.join().unwrap_or_else(|_| {
                Err(Error::io(
                    items[0].1,
                    "syncing",
                    std::io::Error::other("a syncing thread panicked"),
                ))
            });
            if result.is_ok() {
                result = r;
            }
        }
        result
    })
}

/// How many fsyncs [`sync_side_by_side`] keeps in flight: they wait on the disk, not a core.
const SYNC_THREADS: usize = 16;

fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, "syncing the folder", e))
}

/// How a staged file takes its final name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replace {
    /// Renamed over whatever regular file is there.
    Allowed,
    /// Linked into place: fails if anything exists under the final name (new secret keys).
    Never,
}

#[derive(Debug)]
struct Staged {
    tmp: PathBuf,
    fin: PathBuf,
    replace: Replace,
}

/// A set of files written together: each is staged under a temporary name beside its final
/// path; [`Transaction::commit`] checks every final path, syncs every temporary (side by side,
/// so the file system can commit them in one journal transaction rather than one per file),
/// then renames them into place in the order added and syncs their folders. Commit is all or nothing: if one rename
/// fails, the files already renamed are put back as they were (the old ones restored from a
/// hard link taken before the first rename, new ones removed). Dropping an uncommitted
/// transaction removes its temporaries.
#[derive(Debug, Default)]
pub struct Transaction {
    pending: Vec<Staged>,
    inputs: Vec<PathBuf>,
    /// Folders whose stale temporaries were reclaimed already (once per folder is enough).
    reclaimed: Vec<PathBuf>,
}

impl Transaction {
    pub fn new() -> Transaction {
        Transaction::default()
    }

    /// Names the command's inputs, so no output may be one of them.
    pub fn with_inputs<P: AsRef<Path>>(inputs: impl IntoIterator<Item = P>) -> Transaction {
        Transaction {
            pending: Vec::new(),
            inputs: inputs.into_iter().map(|p| p.as_ref().to_owned()).collect(),
            reclaimed: Vec::new(),
        }
    }

    /// Adds inputs after creation (an input read later, e.g. a key named by an option).
    pub fn add_input(&mut self, input: &Path) {
        self.inputs.push(input.to_owned());
    }

    /// Checks that `path` could be an output of this transaction (see [`check_output`])
    /// without staging anything: for checking every output before any work is done.
    pub fn check(&self, path: &Path) -> Result<(), Error> {
        let inputs: Vec<&Path> = self.inputs.iter().map(PathBuf::as_path).collect();
        check_output(path, &inputs)?;
        if self.pending.iter().any(|s| s.fin == path) {
            return Err(Error::io(
                path,
                "staging",
                std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "named twice as an output",
                ),
            ));
        }
        Ok(())
    }

    fn stage_path(&mut self, path: &Path, replace: Replace) -> Result<PathBuf, Error> {
        self.check(path)?;
        if replace == Replace::Never && std::fs::symlink_metadata(path).is_ok() {
            return Err(Error::io(
                path,
                "creating",
                std::io::Error::new(std::io::ErrorKind::AlreadyExists, "already exists"),
            ));
        }
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| Error::NoFileName {
                path: path.to_owned(),
            })?;
        let dir = parent_of(path);
        if !self.reclaimed.iter().any(|d| d == dir) {
            reclaim_stale(dir);
            self.reclaimed.push(dir.to_owned());
        }
        let tmp = dir.join(temporary_name(name));
        // Recorded before writing, so a partial temporary is removed too.
        register(&tmp);
        self.pending.push(Staged {
            tmp: tmp.clone(),
            fin: path.to_owned(),
            replace,
        });
        Ok(tmp)
    }

    /// Stages `data` for `path`.
    pub fn add(&mut self, path: &Path, data: &[u8]) -> Result<(), Error> {
        self.add_with(path, |w| w.write_all(data))
    }

    /// Stages a new secret for `path`: created with mode 0600, and the commit fails rather
    /// than replace anything already at `path`.
    pub fn add_new_secret(&mut self, path: &Path, data: &[u8]) -> Result<(), Error> {
        let tmp = self.stage_path(path, Replace::Never)?;
        self.write_temporary(&tmp, path, 0o600, |w| w.write_all(data))
    }

    /// Stages a new public file for `path` (mode 0666 less the umask): the commit fails rather
    /// than replace anything already at `path`.
    pub fn add_new(&mut self, path: &Path, data: &[u8]) -> Result<(), Error> {
        let tmp = self.stage_path(path, Replace::Never)?;
        self.write_temporary(&tmp, path, 0o666, |w| w.write_all(data))
    }

    /// Stages a secret for `path` (mode 0600), replacing a regular file that is there.
    pub fn add_secret(&mut self, path: &Path, data: &[u8]) -> Result<(), Error> {
        let tmp = self.stage_path(path, Replace::Allowed)?;
        self.write_temporary(&tmp, path, 0o600, |w| w.write_all(data))
    }

    /// Stages a file for `path` whose content `write` streams into the given writer.
    pub fn add_with(
        &mut self,
        path: &Path,
        write: impl FnOnce(&mut std::io::BufWriter<&File>) -> std::io::Result<()>,
    ) -> Result<(), Error> {
        let tmp = self.stage_path(path, Replace::Allowed)?;
        self.write_temporary(&tmp, path, 0o666, write)
    }

    /// Stages a file for `path` whose content `write` streams into the given writer, and returns
    /// what `write` returns. `write`'s own error passes through unchanged (so an error reading
    /// an input can name that input); the temporary is removed with the transaction. The
    /// staged bytes can be read back from [`Transaction::temporary`] until the commit.
    pub fn add_streamed<T, E: From<Error>>(
        &mut self,
        path: &Path,
        write: impl FnOnce(&mut std::io::BufWriter<&File>) -> Result<T, E>,
    ) -> Result<T, E> {
        let tmp = self.stage_path(path, Replace::Allowed)?;
        let (mut done, mut failed) = (None, None);
        let written = self.write_temporary(&tmp, path, 0o666, |w| match write(w) {
            Ok(t) => {
                done = Some(t);
                Ok(())
            }
            Err(e) => {
                // Stops before the flush and sync: the temporary is discarded anyway.
                failed = Some(e);
                Err(std::io::Error::other("abandoned"))
            }
        });
        if let Some(e) = failed {
            return Err(e);
        }
        written?;
        done.ok_or_else(|| {
            Error::io(
                path,
                "writing",
                std::io::Error::other("nothing was written"),
            )
            .into()
        })
    }

    /// The temporary a staged `path` is written to, while the transaction is uncommitted.
    pub fn temporary(&self, path: &Path) -> Option<&Path> {
        self.pending
            .iter()
            .find(|s| s.fin == path)
            .map(|s| s.tmp.as_path())
    }

    fn write_temporary(
        &self,
        tmp: &Path,
        path: &Path,
        mode: u32,
        write: impl FnOnce(&mut std::io::BufWriter<&File>) -> std::io::Result<()>,
    ) -> Result<(), Error> {
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(tmp)
            .map_err(|e| Error::io(tmp, "creating", e))?;
        let mut w = std::io::BufWriter::new(&f);
        // Synced by the commit, with every other file of the transaction.
        write(&mut w)
            .and_then(|()| w.flush())
            .map_err(|e| Error::io(path, "writing", e))
    }

    /// Stages an existing file (written by a tool) for `path`: `produce` gets the temporary
    /// path to write to; the commit syncs it.
    pub fn add_path(
        &mut self,
        path: &Path,
        produce: impl FnOnce(&Path) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let tmp = self.stage_path(path, Replace::Allowed)?;
        produce(&tmp)
    }

    /// The final paths staged so far.
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.pending.iter().map(|s| s.fin.as_path())
    }

    /// Checks every final path, then renames every staged file into place, in the order
    /// staged, and syncs each folder. All or nothing: on any error the old files are back
    /// under their names and no new file is left under a final name or a temporary one. Runs
    /// as a [`critical_section`], so SIGINT/SIGTERM wait for it.
    pub fn commit(mut self) -> Result<(), Error> {
        let _critical = critical_section();
        let pending = std::mem::take(&mut self.pending);
        let result = commit_all(&pending, &self.inputs);
        for s in &pending {
            let _ = std::fs::remove_file(&s.tmp);
            unregister(&s.tmp);
        }
        result
    }
}

/// What a commit did to one final name, to undo it.
enum Done {
    /// The name was free: remove the new file.
    Created(PathBuf),
    /// An old file was replaced: its hard-linked backup goes back.
    Replaced { fin: PathBuf, backup: PathBuf },
}

fn commit_all(pending: &[Staged], inputs: &[PathBuf]) -> Result<(), Error> {
    let inputs: Vec<&Path> = inputs.iter().map(PathBuf::as_path).collect();
    // Everything is checked before anything is renamed: a special file or an input under
    // one of the names fails the commit with every old file untouched.
    for s in pending {
        check_output(&s.fin, &inputs)?;
        if s.replace == Replace::Never && std::fs::symlink_metadata(&s.fin).is_ok() {
            return Err(Error::io(
                &s.fin,
                "creating",
                std::io::Error::new(std::io::ErrorKind::AlreadyExists, "already exists"),
            ));
        }
    }
    // Every new content is durable before any name points at it.
    sync_side_by_side(pending.iter().map(|s| (s.tmp.as_path(), s.fin.as_path())))?;
    let mut done: Vec<Done> = Vec::new();
    let mut dirs: Vec<PathBuf> = Vec::new();
    let result = (|| {
        for s in pending {
            let step = rename_one(s)?;
            done.push(step);
            let d = parent_of(&s.fin).to_owned();
            if !dirs.contains(&d) {
                dirs.push(d);
            }
        }
        sync_side_by_side(dirs.iter().map(|d| (d.as_path(), d.as_path())))
    })();
    match result {
        Ok(()) => {
            for d in done {
                if let Done::Replaced { backup, .. } = d {
                    let _ = std::fs::remove_file(&backup);
                    unregister(&backup);
                }
            }
            Ok(())
        }
        Err(e) => {
            for d in done.into_iter().rev() {
                match d {
                    Done::Created(fin) => {
                        let _ = std::fs::remove_file(&fin);
                    }
                    Done::Replaced { fin, backup } => {
                        let _ = std::fs::rename(&backup, &fin);
                        unregister(&backup);
                    }
                }
            }
            for d in &dirs {
                let _ = sync_dir(d);
            }
            Err(e)
        }
    }
}

fn rename_one(s: &Staged) -> Result<Done, Error> {
    if s.replace == Replace::Never {
        // link(2) fails if the name exists, unlike rename(2).
        std::fs::hard_link(&s.tmp, &s.fin).map_err(|e| Error::io(&s.fin, "creating", e))?;
        return Ok(Done::Created(s.fin.clone()));
    }
    let exists = match std::fs::symlink_metadata(&s.fin) {
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(Error::io(&s.fin, "checking the output path", e)),
    };
    if !exists {
        std::fs::rename(&s.tmp, &s.fin).map_err(|e| Error::io(&s.fin, "renaming into place", e))?;
        return Ok(Done::Created(s.fin.clone()));
    }
    let name = s
        .fin
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::NoFileName {
            path: s.fin.clone(),
        })?;
    let backup = parent_of(&s.fin).join(backup_name(name));
    let _ = std::fs::remove_file(&backup);
    register(&backup);
    if let Err(e) = std::fs::hard_link(&s.fin, &backup) {
        unregister(&backup);
        return Err(Error::io(
            &s.fin,
            "keeping the old file until the commit ends",
            e,
        ));
    }
    if let Err(e) = fail_point().and_then(|()| std::fs::rename(&s.tmp, &s.fin)) {
        let _ = std::fs::remove_file(&backup);
        unregister(&backup);
        return Err(Error::io(&s.fin, "renaming into place", e));
    }
    Ok(Done::Replaced {
        fin: s.fin.clone(),
        backup,
    })
}

#[cfg(test)]
thread_local! {
    /// Tests: how many renames over old files succeed before one fails.
    static RENAMES_BEFORE_FAILURE: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

#[cfg(test)]
fn fail_point() -> std::io::Result<()> {
    RENAMES_BEFORE_FAILURE.with(|c| match c.get() {
        Some(0) => Err(std::io::Error::other("injected failure")),
        Some(n) => {
            c.set(Some(n - 1));
            Ok(())
        }
        None => Ok(()),
    })
}

#[cfg(not(test))]
fn fail_point() -> std::io::Result<()> {
    Ok(())
}

impl Drop for Transaction {
    fn drop(&mut self) {
        for s in &self.pending {
            let _ = std::fs::remove_file(&s.tmp);
            unregister(&s.tmp);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Signals
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct Critical {
    depth: usize,
    closing: bool,
}

static CRITICAL: Mutex<Critical> = Mutex::new(Critical {
    depth: 0,
    closing: false,
});
static CRITICAL_DONE: std::sync::Condvar = std::sync::Condvar::new();

/// While alive, [`remove_registered_temporaries`] (the signal handler's cleanup) waits: for a
/// step that must not be cut in half, such as a commit, or a log append and the commit of the
/// outputs it describes. Nests. Do not hold one across a wait for another process.
#[derive(Debug)]
pub struct CriticalSection(());

/// Enters a [`CriticalSection`]. Once the signal handler has started its cleanup, this blocks
/// until the process exits.
pub fn critical_section() -> CriticalSection {
    let mut c = match CRITICAL.lock() {
        Ok(c) => c,
        Err(p) => p.into_inner(),
    };
    while c.closing {
        c = match CRITICAL_DONE.wait(c) {
            Ok(c) => c,
            Err(p) => p.into_inner(),
        };
    }
    c.depth += 1;
    CriticalSection(())
}

impl Drop for CriticalSection {
    fn drop(&mut self) {
        let mut c = match CRITICAL.lock() {
            Ok(c) => c,
            Err(p) => p.into_inner(),
        };
        c.depth = c.depth.saturating_sub(1);
        CRITICAL_DONE.notify_all();
    }
}

/// Writes one file atomically (a [`Transaction`] of one).
pub fn write_atomic(path: &Path, data: &[u8], inputs: &[&Path]) -> Result<(), Error> {
    let mut t = Transaction::with_inputs(inputs.iter().copied());
    t.add(path, data)?;
    t.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_bounded_refuses_special_and_oversized_inputs() {
        let e = read_bounded(Path::new("/dev/zero"), 10, "a key").unwrap_err();
        assert!(e.to_string().contains("character device"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, [0u8; 11]).unwrap();
        let e = read_bounded(&p, 10, "a key").unwrap_err();
        assert!(e.to_string().contains("10-byte limit for a key"), "{e}");
        assert_eq!(read_bounded(&p, 11, "a key").unwrap().len(), 11);
        let fifo = dir.path().join("fifo");
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        let e = read_bounded(&fifo, 10, "a key").unwrap_err();
        assert!(e.to_string().contains("FIFO"), "{e}");
        let e = read_bounded(dir.path(), 10, "a key").unwrap_err();
        assert!(e.to_string().contains("a folder"), "{e}");
    }

    #[test]
    fn outputs_never_replace_special_files_or_inputs() {
        let dir = tempfile::tempdir().unwrap();
        let e = write_atomic(Path::new("/dev/null"), b"x", &[]).unwrap_err();
        assert!(e.to_string().contains("character device"), "{e}");
        let input = dir.path().join("in");
        std::fs::write(&input, b"data").unwrap();
        let e = write_atomic(&input, b"x", &[&input]).unwrap_err();
        assert!(matches!(e, Error::OutputIsInput { .. }), "{e}");
        std::os::unix::fs::symlink(&input, dir.path().join("link")).unwrap();
        let e = write_atomic(&dir.path().join("link"), b"x", &[]).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read(&input).unwrap(), b"data");
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        assert!(write_atomic(&dir.path().join("sub"), b"x", &[]).is_err());
    }

    #[test]
    fn a_dropped_transaction_leaves_nothing_and_commit_renames_all() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::write(&a, b"old").unwrap();
        {
            let mut t = Transaction::new();
            t.add(&a, b"new").unwrap();
            t.add(&b, b"new").unwrap();
        }
        assert_eq!(std::fs::read(&a).unwrap(), b"old");
        assert!(!b.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let mut t = Transaction::new();
        t.add(&a, b"new").unwrap();
        t.add(&b, b"new").unwrap();
        t.commit().unwrap();
        assert_eq!(std::fs::read(&b).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn commit_checks_every_name_before_renaming_any() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (
            dir.path().join("a"),
            dir.path().join("b"),
            dir.path().join("c"),
        );
        std::fs::write(&a, b"old a").unwrap();
        std::fs::write(&c, b"old c").unwrap();
        let mut t = Transaction::new();
        t.add(&a, b"new").unwrap();
        t.add(&b, b"new").unwrap();
        t.add(&c, b"new").unwrap();
        // Something puts a folder where the last output goes after it was staged.
        std::fs::remove_file(&c).unwrap();
        std::fs::create_dir(&c).unwrap();
        let e = t.commit().unwrap_err();
        assert!(e.to_string().contains("folder"), "{e}");
        assert_eq!(std::fs::read(&a).unwrap(), b"old a");
        assert_eq!(names(dir.path()), ["a", "c"]);
    }

    #[test]
    fn a_failed_rename_puts_every_old_file_back() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (
            dir.path().join("a"),
            dir.path().join("b"),
            dir.path().join("c"),
        );
        std::fs::write(&a, b"old a").unwrap();
        std::fs::write(&c, b"old c").unwrap();
        let mut t = Transaction::new();
        t.add(&a, b"new").unwrap();
        t.add(&b, b"new").unwrap();
        t.add(&c, b"new").unwrap();
        // a is replaced, b created, then replacing c fails.
        RENAMES_BEFORE_FAILURE.with(|f| f.set(Some(1)));
        let e = t.commit().unwrap_err();
        RENAMES_BEFORE_FAILURE.with(|f| f.set(None));
        assert!(e.to_string().contains("injected"), "{e}");
        assert_eq!(std::fs::read(&a).unwrap(), b"old a");
        assert_eq!(std::fs::read(&c).unwrap(), b"old c");
        assert_eq!(names(dir.path()), ["a", "c"]);
    }

    #[test]
    fn a_new_secret_is_private_and_never_replaces() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("k");
        let mut t = Transaction::new();
        t.add_new_secret(&k, b"secret").unwrap();
        t.commit().unwrap();
        let mode = std::fs::metadata(&k).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let mut t = Transaction::new();
        assert!(t.add_new_secret(&k, b"other").is_err());
        // Appearing between staging and commit is caught by link(2).
        let k2 = dir.path().join("k2");
        let mut t = Transaction::new();
        t.add_new_secret(&k2, b"mine").unwrap();
        std::fs::write(&k2, b"theirs").unwrap();
        assert!(t.commit().is_err());
        assert_eq!(std::fs::read(&k2).unwrap(), b"theirs");
        assert_eq!(names(dir.path()), ["k", "k2"]);
    }

    #[test]
    fn output_folders_are_checked_without_creating_anything() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ofile");
        std::fs::write(&file, b"x").unwrap();
        // A file as the folder, and as a parent of it.
        let e = check_output_dir(&file).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("{}: not a folder (a regular file)", file.display())
        );
        let e = check_output_dir(&file.join("sub/deeper")).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}: not a folder (a regular file), so {} cannot be created",
                file.display(),
                file.join("sub/deeper").display()
            )
        );
        assert_eq!(e.path(), file);
        // A FIFO is not a folder either.
        let fifo = dir.path().join("fifo");
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        let e = check_output_dir(&fifo.join("x")).unwrap_err();
        assert!(e.to_string().contains("not a folder (a FIFO)"), "{e}");
        // A folder, and a folder to be made (nothing is created).
        check_output_dir(dir.path()).unwrap();
        let new = dir.path().join("a/b/c");
        check_output_dir(&new).unwrap();
        assert!(!dir.path().join("a").exists());
    }

    #[test]
    fn programs_are_found_on_path_and_in_sbin() {
        assert!(find_program("sh").is_some_and(|p| p.is_absolute() && p.ends_with("sh")));
        assert!(find_program("imgctl-no-such-program").is_none());
        // Not executable: not a program.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("prog"), b"#!/bin/sh\n").unwrap();
        assert!(find_program(dir.path().join("prog").to_str().unwrap()).is_none());
    }

    #[test]
    fn stale_temporaries_of_dead_processes_are_reclaimed() {
        let dir = tempfile::tempdir().unwrap();
        // PID 0x7fff_fff0 does not run; our own PID does.
        let dead = dir
            .path()
            .join(format!(".x.efi{TMP_MARK}{}", 0x7fff_fff0u32));
        let live = dir.path().join(temporary_name("y"));
        let other = dir.path().join(".not-ours.tmp-123");
        let backup = dir.path().join(format!(".z{BAK_MARK}{}", 0x7fff_fff0u32));
        std::fs::write(&backup, b"old").unwrap();
        std::fs::write(&dead, b"partial").unwrap();
        std::fs::write(&live, b"in use").unwrap();
        std::fs::write(&other, b"keep").unwrap();
        assert_eq!(reclaim_stale(dir.path()), 2);
        assert!(!dead.exists() && !backup.exists() && live.exists() && other.exists());
    }
}
