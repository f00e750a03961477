//! The crash-safe log folder: init, appends under an exclusive lock, reading and proving.
//! The protocol is described on the crate's front page.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

use crate::checkpoint::{self, Checkpoint, Policy};
use crate::merkle::{consistency_proof, empty_root, inclusion_proof, Hash};
use crate::note::{NoteSigner, NoteVerifier};
use crate::tiles::{self, audit, AuditReport, Edge, TileId, TileKind, TileNodes};
use crate::TlogProof;

use crate::client::{fetch_tile, tile_fetcher, FolderTiles};
use crate::{io_err, StoreError as Error};

const STATE_DIR: &str = ".imgctl-log";
const CHECKPOINT: &str = "checkpoint";

fn state(dir: &Path, name: &str) -> PathBuf {
    dir.join(STATE_DIR).join(name)
}

fn sync_dir(path: &Path) -> Result<(), Error> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io_err(path))
}

/// Creates `path` and missing parents; records the folders whose entries changed.
fn mkdir_all(path: &Path, changed: &mut BTreeSet<PathBuf>) -> Result<(), Error> {
    if path.is_dir() {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        mkdir_all(parent, changed)?;
        match fs::create_dir(path) {
            Ok(()) => {
                changed.insert(parent.to_path_buf());
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(path)(e)),
        }
    }
    Ok(())
}

fn tmp_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

/// Stages `bytes` for `path` in `tx` (imgctl-fsio: temporary name, fsync; the commit renames
/// and fsyncs the file's folder), creating missing folders first; folders that gained a
/// subfolder are recorded in `changed` for the caller to fsync after the commit.
fn stage(
    tx: &mut imgctl_fsio::Transaction,
    path: &Path,
    bytes: &[u8],
    changed: &mut BTreeSet<PathBuf>,
) -> Result<(), Error> {
    let parent = path
        .parent()
        .ok_or_else(|| Error::Log(format!("{} has no parent folder", path.display())))?;
    mkdir_all(parent, changed)?;
    tx.add(path, bytes)?;
    Ok(())
}

fn read_vkey(dir: &Path) -> Result<NoteVerifier, Error> {
    let p = state(dir, "vkey");
    let s = fs::read_to_string(&p).map_err(io_err(&p))?;
    Ok(NoteVerifier::parse_vkey(s.trim())?)
}

/// Creates a new, empty log in `dir` signed by `signer` (origin = the key's name).
pub fn init(dir: &Path, signer: &NoteSigner) -> Result<String, Error> {
    let dir = &std::path::absolute(dir).map_err(io_err(dir))?;
    if dir.join(CHECKPOINT).exists() {
        return Err(Error::Log(format!(
            "{} already holds a log (checkpoint exists)",
            dir.display()
        )));
    }
    let mut changed = BTreeSet::new();
    let mut tx = imgctl_fsio::Transaction::new();
    stage(
        &mut tx,
        &state(dir, "vkey"),
        format!("{}\n", signer.verifier().vkey()).as_bytes(),
        &mut changed,
    )?;
    let c = Checkpoint {
        origin: signer.name().to_owned(),
        size: 0,
        root: empty_root(),
        extensions: Vec::new(),
    };
    let signed = c.sign(signer)?;
    stage(
        &mut tx,
        &dir.join(CHECKPOINT),
        signed.as_bytes(),
        &mut changed,
    )?;
    tx.commit()?;
    for d in &changed {
        sync_dir(d)?;
    }
    Ok(signed)
}

/// The intent of an append: enough to undo it if the checkpoint was not committed.
struct Pending {
    old_size: u64,
    new_size: u64,
    paths: Vec<String>,
}

impl Pending {
    fn encode(&self) -> String {
        let mut s = format!("{} {}\n", self.old_size, self.new_size);
        for p in &self.paths {
            s.push_str(p);
            s.push('\n');
        }
        s
    }
    fn parse(s: &str) -> Option<Pending> {
        let mut lines = s.lines();
        let (a, b) = lines.next()?.split_once(' ')?;
        let paths: Vec<String> = lines.map(str::to_owned).collect();
        // Only tile paths: never let a damaged intent file name anything else.
        if paths.iter().any(|p| TileId::parse_path(p).is_err()) {
            return None;
        }
        Some(Pending {
            old_size: a.parse().ok()?,
            new_size: b.parse().ok()?,
            paths,
        })
    }
}

/// The exclusive writer of a log folder. Holds the folder's lock while it lives, so appends
/// from several processes are serialised; state is re-read when the lock is taken.
#[derive(Debug)]
pub struct Appender {
    dir: PathBuf,
    _lock: File,
    signer: NoteSigner,
    edge: Edge,
    checkpoint: Checkpoint,
    signed: String,
}

/// What one append did.
#[derive(Debug, Clone)]
pub struct Appended {
    /// Index of the first appended entry.
    pub first_index: u64,
    /// The committed checkpoint (body) and its signed note.
    pub checkpoint: Checkpoint,
    pub signed_checkpoint: String,
}

/// Checks, without taking the lock, that `dir` holds a log whose key is `signer`'s and whose
/// checkpoint verifies: what a command that will append later checks before doing any work.
pub fn check_writable(dir: &Path, signer: &NoteSigner) -> Result<(), Error> {
    let vkey = read_vkey(dir)?;
    check_key(&vkey, signer)?;
    read_checkpoint(dir, &vkey).map(drop)
}

fn check_key(vkey: &NoteVerifier, signer: &NoteSigner) -> Result<(), Error> {
    if vkey != signer.verifier() {
        return Err(Error::Log(format!(
            "the key {}+{:08x} is not this log's key ({}+{:08x})",
            signer.name(),
            signer.verifier().key_id,
            vkey.name,
            vkey.key_id
        )));
    }
    Ok(())
}

impl Appender {
    /// Takes the folder's lock (waiting for other appenders), finishes or undoes an append a
    /// crashed process left, and loads the tree's right edge, checking it against the signed
    /// checkpoint.
    pub fn open(dir: &Path, signer: NoteSigner) -> Result<Appender, Error> {
        let dir = &std::path::absolute(dir).map_err(io_err(dir))?;
        let vkey = read_vkey(dir)?;
        check_key(&vkey, &signer)?;
        let lock_path = state(dir, "lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        // flock(2) through rustix: std's File::lock needs Rust 1.89, above our MSRV.
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| io_err(&lock_path)(e.into()))?;
        let (checkpoint, signed) = read_checkpoint(dir, &vkey)?;
        recover(dir, checkpoint.size)?;
        let edge = Edge::load(
            checkpoint.size,
            tile_fetcher(&FolderTiles(dir.to_path_buf())),
        )?;
        let root = edge.root();
        if root != checkpoint.root {
            return Err(Error::Log(format!(
                "{}: the partial tiles give root {} but the checkpoint says {}: tiles were changed or lost",
                dir.display(),
                hex(&root),
                hex(&checkpoint.root)
            )));
        }
        Ok(Appender {
            dir: dir.to_path_buf(),
            _lock: lock,
            signer,
            edge,
            checkpoint,
            signed,
        })
    }

    pub fn size(&self) -> u64 {
        self.edge.size()
    }

    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    pub fn signed_checkpoint(&self) -> &str {
        &self.signed
    }

    /// Appends a batch durably; returns after the new checkpoint is committed.
    pub fn append<E: AsRef<[u8]>>(&mut self, entries: &[E]) -> Result<Appended, Error> {
        let first_index = self.edge.size();
        if entries.is_empty() {
            return Ok(Appended {
                first_index,
                checkpoint: self.checkpoint.clone(),
                signed_checkpoint: self.signed.clone(),
            });
        }
        let mut edge = self.edge.clone();
        let files = edge.append(entries)?;
        let pending = Pending {
            old_size: first_index,
            new_size: edge.size(),
            paths: files.iter().map(|(id, _)| id.path()).collect(),
        };
        // The intent is best effort (not fsynced): losing it only leaves unreferenced files.
        let pending_path = state(&self.dir, "pending");
        let mut ignored = BTreeSet::new();
        write_durable_nosync(&pending_path, pending.encode().as_bytes(), &mut ignored)?;

        // Step 3: every tile staged and synced, renamed into place, its folder synced (the
        // commit), then the folders that gained a subfolder.
        let mut changed = BTreeSet::new();
        let mut tx = imgctl_fsio::Transaction::new();
        for (id, bytes) in &files {
            stage(&mut tx, &self.dir.join(id.path()), bytes, &mut changed)?;
        }
        tx.commit()?;
        for d in &changed {
            sync_dir(d)?;
        }
        let checkpoint = Checkpoint {
            origin: self.checkpoint.origin.clone(),
            size: edge.size(),
            root: edge.root(),
            extensions: Vec::new(),
        };
        let signed = checkpoint.sign(&self.signer)?;
        // Step 4: renamed into place and DIR synced by fsio; this rename is the commit.
        imgctl_fsio::write_atomic(&self.dir.join(CHECKPOINT), signed.as_bytes(), &[])?;
        // Committed.
        collect_partials(&self.dir, &pending);
        let _ = fs::remove_file(&pending_path);
        self.edge = edge;
        self.checkpoint = checkpoint.clone();
        self.signed = signed.clone();
        Ok(Appended {
            first_index,
            checkpoint,
            signed_checkpoint: signed,
        })
    }

    /// Publishes the current checkpoint again with `cosignatures` (witness lines, already
    /// verified by the caller) added: written to a temporary name, fsynced and renamed, under
    /// the lock, so it cannot replace a newer checkpoint. Proofs made after this carry them.
    pub fn add_cosignatures(
        &mut self,
        cosignatures: &[crate::note::NoteSignature],
    ) -> Result<String, Error> {
        if cosignatures.is_empty() {
            return Ok(self.signed.clone());
        }
        let signed = crate::witness::add_signatures(self.signed.as_bytes(), cosignatures)?;
        // Still the same checkpoint, still signed by the log.
        let again =
            checkpoint::verify(signed.as_bytes(), &Policy::log_only(self.signer.verifier()))?;
        if again.checkpoint != self.checkpoint {
            return Err(Error::Log(
                "cosigned checkpoint differs from the log's".into(),
            ));
        }
        imgctl_fsio::write_atomic(&self.dir.join(CHECKPOINT), signed.as_bytes(), &[])?;
        self.signed = signed.clone();
        Ok(signed)
    }

    /// A consistency proof between two sizes of this log (for witnesses).
    pub fn consistency(&self, size1: u64, size2: u64) -> Result<Vec<Hash>, Error> {
        LogReader {
            dir: self.dir.clone(),
            vkey: self.signer.verifier().clone(),
        }
        .consistency(size1, size2)
    }

    /// A `.tlog-proof` for `index` against the current checkpoint, with the entry as extra data.
    pub fn prove(&self, index: u64) -> Result<TlogProof, Error> {
        let reader = LogReader {
            dir: self.dir.clone(),
            vkey: self.signer.verifier().clone(),
        };
        reader.prove_at(index, &self.checkpoint, &self.signed)
    }
}

fn write_durable_nosync(
    path: &Path,
    bytes: &[u8],
    changed: &mut BTreeSet<PathBuf>,
) -> Result<(), Error> {
    let parent = path
        .parent()
        .ok_or_else(|| Error::Log(format!("{} has no parent folder", path.display())))?;
    mkdir_all(parent, changed)?;
    let tmp = tmp_name(path);
    fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

/// Deletes the partial versions of tiles that became full (tlog-tiles allows it).
fn collect_partials(dir: &Path, pending: &Pending) {
    for p in &pending.paths {
        if let Ok(id) = TileId::parse_path(p) {
            if id.is_full() {
                let _ = fs::remove_dir_all(dir.join(id.partial_dir()));
            }
        }
    }
}

/// Finishes or undoes the append a crashed appender left behind.
fn recover(dir: &Path, committed: u64) -> Result<(), Error> {
    let pending_path = state(dir, "pending");
    let _ = fs::remove_file(tmp_name(&pending_path));
    let _ = fs::remove_file(tmp_name(&dir.join(CHECKPOINT)));
    imgctl_fsio::reclaim_stale(dir);
    let text = match fs::read_to_string(&pending_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(&pending_path)(e)),
    };
    match Pending::parse(&text) {
        Some(p) if p.new_size == committed => collect_partials(dir, &p),
        Some(p) if p.old_size == committed => {
            let mut changed = BTreeSet::new();
            for path in &p.paths {
                let full = dir.join(path);
                if let Some(parent) = full.parent() {
                    imgctl_fsio::reclaim_stale(parent);
                }
                for f in [tmp_name(&full), full] {
                    match fs::remove_file(&f) {
                        Ok(()) => {
                            if let Some(parent) = f.parent() {
                                changed.insert(parent.to_path_buf());
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(io_err(&f)(e)),
                    }
                }
            }
            for d in &changed {
                sync_dir(d)?;
            }
        }
        // An intent for neither state: leave the files (unreferenced) and drop it.
        _ => {}
    }
    fs::remove_file(&pending_path).map_err(io_err(&pending_path))
}

fn hex(h: &Hash) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

fn read_checkpoint(dir: &Path, vkey: &NoteVerifier) -> Result<(Checkpoint, String), Error> {
    let p = dir.join(CHECKPOINT);
    let bytes = fs::read(&p).map_err(io_err(&p))?;
    let vc = checkpoint::verify(&bytes, &Policy::log_only(vkey))
        .map_err(|e| Error::Log(format!("{}: {e}", p.display())))?;
    Ok((vc.checkpoint, String::from_utf8_lossy(&bytes).into_owned()))
}

/// Appends `entries` to the log in `dir` as one durable batch and returns a `.tlog-proof` for
/// each, against the checkpoint that committed them (the entry bytes are the proof's extra
/// data). Waits for other appenders. This is what `imgctl build --log DIR` calls.
pub fn append_entries<E: AsRef<[u8]>>(
    dir: &Path,
    signer: NoteSigner,
    entries: &[E],
) -> Result<Vec<TlogProof>, Error> {
    let mut a = Appender::open(dir, signer)?;
    let done = a.append(entries)?;
    (0..entries.len() as u64)
        .map(|i| a.prove(done.first_index + i))
        .collect()
}

/// Read access to a log folder (no lock: appends only add files and rename the checkpoint).
#[derive(Debug, Clone)]
pub struct LogReader {
    dir: PathBuf,
    vkey: NoteVerifier,
}

impl LogReader {
    /// Opens a log folder, trusting the verifier key stored in it.
    pub fn open(dir: &Path) -> Result<LogReader, Error> {
        Ok(LogReader {
            dir: dir.to_path_buf(),
            vkey: read_vkey(dir)?,
        })
    }

    pub fn vkey(&self) -> &NoteVerifier {
        &self.vkey
    }

    /// The current checkpoint, verified with the log's key.
    pub fn checkpoint(&self) -> Result<(Checkpoint, String), Error> {
        read_checkpoint(&self.dir, &self.vkey)
    }

    fn fetch(&self) -> impl FnMut(&TileId) -> Result<Vec<u8>, crate::Error> + '_ {
        let dir = self.dir.clone();
        move |id: &TileId| fetch_tile(&FolderTiles(dir.clone()), id)
    }

    /// The entry at `index` in a tree of `size`.
    pub fn entry(&self, index: u64, size: u64) -> Result<Vec<u8>, Error> {
        if index >= size {
            return Err(Error::Log(format!(
                "index {index} is beyond tree size {size}"
            )));
        }
        let id = TileId::for_size(TileKind::Entries, index >> 8, size)?;
        let bytes = self.fetch()(&id)?;
        let entries = tiles::parse_bundle(&id, &bytes)?;
        entries
            .get((index & 0xff) as usize)
            .map(|e| e.to_vec())
            .ok_or_else(|| Error::Log(format!("{}: no entry {index}", id.path())))
    }

    /// Inclusion proof hashes for `index` in the tree of `size`.
    pub fn inclusion(&self, index: u64, size: u64) -> Result<Vec<Hash>, Error> {
        let mut nodes = TileNodes::new(size, self.fetch());
        Ok(inclusion_proof(&mut nodes, index, size)?)
    }

    /// Consistency proof hashes between sizes `size1` and `size2`.
    pub fn consistency(&self, size1: u64, size2: u64) -> Result<Vec<Hash>, Error> {
        let mut nodes = TileNodes::new(size2, self.fetch());
        Ok(consistency_proof(&mut nodes, size1, size2)?)
    }

    /// A `.tlog-proof` for `index` against the current checkpoint.
    pub fn prove(&self, index: u64) -> Result<TlogProof, Error> {
        let (c, signed) = self.checkpoint()?;
        self.prove_at(index, &c, &signed)
    }

    /// The proof is verified (checkpoint signature, inclusion of the entry under its root)
    /// before it is returned: a damaged tile gives an error, never a proof that does not hold.
    fn prove_at(&self, index: u64, c: &Checkpoint, signed: &str) -> Result<TlogProof, Error> {
        let entry = self.entry(index, c.size)?;
        let proof = TlogProof {
            extra: Some(entry.clone()),
            index,
            proof: self.inclusion(index, c.size)?,
            checkpoint: signed.to_owned(),
        };
        proof
            .verify(&entry, &Policy::log_only(&self.vkey))
            .map_err(|e| {
                Error::Log(format!(
                    "{}: the proof for entry {index} does not verify against the checkpoint: {e} \
                 (tiles were changed or damaged; `imgctl log verify --log {} --audit` finds them)",
                    self.dir.display(),
                    self.dir.display()
                ))
            })?;
        Ok(proof)
    }

    /// Recomputes every tile from the entries and checks the checkpoint's root.
    pub fn audit(&self) -> Result<(Checkpoint, AuditReport), Error> {
        let (c, _) = self.checkpoint()?;
        let report = audit(c.size, &c.root, self.fetch())?;
        Ok((c, report))
    }
}

/// A witness's state folder (`imgctl log witness --state DIR`): `DIR/witness-state` holds the
/// [`WitnessState`](crate::witness::WitnessState) record, `DIR/lock` an exclusive flock held by
/// the one witness process that may use it.
#[derive(Debug)]
pub struct WitnessStore {
    path: PathBuf,
    _lock: File,
}

impl WitnessStore {
    /// Creates the folder if needed, takes its lock (failing if another process holds it),
    /// and reads the record (empty if there is none yet).
    pub fn open(dir: &Path) -> Result<(WitnessStore, crate::witness::WitnessState), Error> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
            |_| {
                Error::Log(format!(
                    "{}: another witness process uses this state folder",
                    dir.display()
                ))
            },
        )?;
        let path = dir.join("witness-state");
        let state = match fs::metadata(&path) {
            Ok(_) => {
                let bytes = imgctl_fsio::read_bounded(
                    &path,
                    crate::witness::MAX_STATE as u64,
                    "a witness state",
                )?;
                crate::witness::WitnessState::parse(&bytes)
                    .map_err(|e| Error::Log(format!("{}: {e}", path.display())))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Default::default(),
            Err(e) => return Err(io_err(&path)(e)),
        };
        Ok((WitnessStore { path, _lock: lock }, state))
    }

    /// Replaces the record durably (temporary name, fsync, rename, fsync of the folder).
    pub fn save(&self, state: &crate::witness::WitnessState) -> Result<(), Error> {
        imgctl_fsio::write_atomic(&self.path, state.encode().as_bytes(), &[])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::note::VerifierKind;

    fn key() -> NoteSigner {
        NoteSigner::from_seed("example.com/test-log", VerifierKind::Ed25519, [42; 32]).unwrap()
    }

    #[test]
    fn append_prove_audit_and_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("log");
        init(&dir, &key()).unwrap();
        let entries: Vec<Vec<u8>> = (0..300u32)
            .map(|i| format!("entry {i}").into_bytes())
            .collect();
        let proofs = append_entries(&dir, key(), &entries[..10]).unwrap();
        assert_eq!(proofs.len(), 10);
        let mut a = Appender::open(&dir, key()).unwrap();
        a.append(&entries[10..]).unwrap();
        drop(a);
        let r = LogReader::open(&dir).unwrap();
        let (c, report) = r.audit().unwrap();
        assert_eq!((c.size, report.entries), (300, 300));
        // Partial tiles of the tile that filled up were collected.
        assert!(!dir.join("tile/0/000.p").exists());
        assert!(dir.join("tile/0/001.p/44").exists());
        let p = r.prove(7).unwrap();
        p.verify(&entries[7], &Policy::log_only(r.vkey())).unwrap();
        // An old proof still verifies against its own checkpoint.
        proofs[3]
            .verify(&entries[3], &Policy::log_only(r.vkey()))
            .unwrap();
        let old = Checkpoint::parse_text(
            &crate::note::Note::parse(proofs[0].checkpoint.as_bytes())
                .unwrap()
                .text,
        )
        .unwrap();
        let cp = r.consistency(old.size, c.size).unwrap();
        checkpoint::check_consistency(&old, &c, &cp).unwrap();
    }

    #[test]
    fn prove_refuses_a_proof_over_a_damaged_entry_tile() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("log");
        init(&dir, &key()).unwrap();
        append_entries(&dir, key(), &[b"a".to_vec(), b"b".to_vec()]).unwrap();
        let bundle = dir.join("tile/entries/000.p/2");
        let mut b = fs::read(&bundle).unwrap();
        let last = b.len() - 1;
        b[last] ^= 1;
        fs::write(&bundle, b).unwrap();
        let e = LogReader::open(&dir).unwrap().prove(1).unwrap_err();
        assert!(e.to_string().contains("does not verify"), "{e}");
    }

    #[test]
    fn temporaries_of_a_killed_appender_are_reclaimed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("log");
        init(&dir, &key()).unwrap();
        // PID 0x7fff_fff0 does not run.
        let stale = dir.join(".checkpoint.imgctl-tmp-2147483632");
        fs::write(&stale, b"half a checkpoint").unwrap();
        append_entries(&dir, key(), &[b"a".to_vec()]).unwrap();
        assert!(!stale.exists());
        let stale_tile = dir.join("tile/0/000.p/.1.imgctl-tmp-2147483632");
        fs::write(&stale_tile, b"half a tile").unwrap();
        append_entries(&dir, key(), &[b"b".to_vec()]).unwrap();
        assert!(!stale_tile.exists());
        assert_eq!(LogReader::open(&dir).unwrap().audit().unwrap().1.entries, 2);
    }

    #[test]
    fn a_crashed_append_is_undone() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("log");
        init(&dir, &key()).unwrap();
        append_entries(&dir, key(), &[b"a".to_vec(), b"b".to_vec()]).unwrap();
        // Simulate a crash after tiles were written but before the checkpoint was.
        let mut edge = Edge::load(2, tile_fetcher(&FolderTiles(dir.clone()))).unwrap();
        let files = edge.append(&[b"c".to_vec()]).unwrap();
        let pending = Pending {
            old_size: 2,
            new_size: 3,
            paths: files.iter().map(|(i, _)| i.path()).collect(),
        };
        fs::write(state(&dir, "pending"), pending.encode()).unwrap();
        for (id, b) in &files {
            fs::write(dir.join(id.path()), b).unwrap();
        }
        assert!(dir.join("tile/0/000.p/3").exists());
        let a = Appender::open(&dir, key()).unwrap();
        assert_eq!(a.size(), 2);
        assert!(!dir.join("tile/0/000.p/3").exists());
        assert!(dir.join("tile/0/000.p/2").exists());
    }
}
