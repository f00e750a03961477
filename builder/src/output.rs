//! Atomic output: every file is written under a temporary name, synced, and renamed into place
//! only when all of them were written, the manifest last. A failed build leaves nothing under
//! the final names (temporary files are removed when the stage is dropped).

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::Error;

/// A set of files being written into one folder.
#[derive(Debug)]
pub struct Stage {
    dir: PathBuf,
    pending: Vec<(PathBuf, PathBuf)>,
}

impl Stage {
    /// Creates `dir` if needed and checks that it is writable.
    pub fn new(dir: &Path) -> Result<Stage, Error> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(dir, "creating the output folder", e))?;
        Ok(Stage {
            dir: dir.to_owned(),
            pending: Vec::new(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes `name` under a temporary name and syncs it. Returns the final path.
    pub fn add(&mut self, name: &str, data: &[u8]) -> Result<PathBuf, Error> {
        let fin = self.dir.join(name);
        let tmp = self.dir.join(format!(".{name}.tmp-{}", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(data)?;
            f.sync_all()
        };
        // Record before writing so that a partial temp file is cleaned up too.
        self.pending.push((tmp.clone(), fin.clone()));
        write().map_err(|e| Error::io(&tmp, "writing", e))?;
        Ok(fin)
    }

    /// Renames every file into place, in the order added, then syncs the folder.
    pub fn commit(mut self) -> Result<(), Error> {
        for (tmp, fin) in std::mem::take(&mut self.pending) {
            std::fs::rename(&tmp, &fin).map_err(|e| Error::io(&fin, "renaming into place", e))?;
        }
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io(&self.dir, "syncing the output folder", e))
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        for (tmp, _) in &self.pending {
            let _ = std::fs::remove_file(tmp);
        }
    }
}
