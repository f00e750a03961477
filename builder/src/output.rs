//! The build's output folder, written through `imgctl-fsio`'s [`Transaction`]: every file is
//! staged under a temporary name and synced; [`Stage::commit`] renames them all into place, the
//! manifest last, or none of them. A failed build leaves nothing new under the final names, the
//! old files untouched, no temporaries, and no output folder it created itself.

use std::path::{Path, PathBuf};

use imgctl_fsio::Transaction;

use crate::Error;

/// A set of files being written into one folder.
#[derive(Debug)]
pub struct Stage {
    dir: PathBuf,
    tx: Transaction,
    /// Folders this stage created (deepest first), removed again if it is never committed.
    created: Vec<PathBuf>,
}

impl Stage {
    /// Creates `dir` if needed and reclaims temporaries a killed run left there. `inputs` are
    /// the build's inputs: no output may be one of them.
    pub fn new(dir: &Path, inputs: &[&Path]) -> Result<Stage, Error> {
        let mut created = Vec::new();
        let mut d = Some(dir);
        while let Some(p) = d.filter(|p| !p.as_os_str().is_empty()) {
            if std::fs::symlink_metadata(p).is_ok() {
                break;
            }
            created.push(p.to_owned());
            d = p.parent();
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(dir, "creating the output folder", e))?;
        imgctl_fsio::reclaim_stale(dir);
        Ok(Stage {
            dir: dir.to_owned(),
            tx: Transaction::with_inputs(inputs.iter().copied()),
            created,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Names one more input (a key given on the command line).
    pub fn add_input(&mut self, input: &Path) {
        self.tx.add_input(input);
    }

    /// Checks that `name` could be written (not a folder, device, FIFO, socket, symlink or an
    /// input) without staging it. Returns the final path.
    pub fn check(&self, name: &str) -> Result<PathBuf, Error> {
        let fin = self.dir.join(name);
        self.tx.check(&fin)?;
        Ok(fin)
    }

    /// Stages `name` under a temporary name and syncs it. Returns the final path.
    pub fn add(&mut self, name: &str, data: &[u8]) -> Result<PathBuf, Error> {
        let fin = self.dir.join(name);
        self.tx.add(&fin, data)?;
        Ok(fin)
    }

    /// Stages `name` with the content `write` streams into the writer (a build's large outputs,
    /// never held in memory). Returns the final path and what `write` returned.
    pub fn add_streamed<T>(
        &mut self,
        name: &str,
        write: impl FnOnce(&mut std::io::BufWriter<&std::fs::File>) -> Result<T, Error>,
    ) -> Result<(PathBuf, T), Error> {
        let fin = self.dir.join(name);
        let t = self.tx.add_streamed(&fin, write)?;
        Ok((fin, t))
    }

    /// Where the staged `name` is until the commit, to read back what was written.
    pub fn temporary(&self, name: &str) -> Option<PathBuf> {
        self.tx.temporary(&self.dir.join(name)).map(Path::to_owned)
    }

    /// Renames every file into place, in the order added, and syncs the folder; all or nothing.
    pub fn commit(mut self) -> Result<(), Error> {
        let tx = std::mem::take(&mut self.tx);
        self.created.clear();
        tx.commit()?;
        Ok(())
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        // The transaction's own drop removes the temporaries; the folders go once empty.
        let tx = std::mem::take(&mut self.tx);
        drop(tx);
        for d in &self.created {
            let _ = std::fs::remove_dir(d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_uncommitted_stage_leaves_no_folder_it_created() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        {
            let mut s = Stage::new(&dir, &[]).unwrap();
            s.add("x.efi", b"uki").unwrap();
        }
        assert!(!tmp.path().join("a").exists());
        let mut s = Stage::new(&dir, &[]).unwrap();
        s.add("x.efi", b"uki").unwrap();
        s.commit().unwrap();
        assert_eq!(std::fs::read(dir.join("x.efi")).unwrap(), b"uki");
    }

    #[test]
    fn an_output_that_is_an_input_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("vmlinuz");
        std::fs::write(&input, b"kernel").unwrap();
        let mut s = Stage::new(tmp.path(), &[&input]).unwrap();
        let e = s.add("vmlinuz", b"x").unwrap_err();
        assert!(e.to_string().contains("also an input"), "{e}");
        assert_eq!(std::fs::read(&input).unwrap(), b"kernel");
    }
}
