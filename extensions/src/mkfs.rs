//! I/O: runs mkfs.erofs or mksquashfs over a staged tree, deterministically.
//!
//! mkfs.erofs (erofs-utils 1.5, Debian 12): `-T EPOCH` gives every inode and the superblock the
//! same timestamp, `-U UUID` fixes the file system UUID, `--all-root` makes every file owned by
//! 0:0, `-x -1` stores no extended attributes (so nothing from the build machine leaks in).
//! Directory entries are sorted by erofs itself; the staged tree has fixed modes.
//!
//! mksquashfs (squashfs-tools 4.5): `-mkfs-time`/`-all-time EPOCH`, `-all-root`, `-no-xattrs`,
//! `-noappend`, `-reproducible` (its default in Debian, given for clarity).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::gpt::Guid;
use crate::recipe::Filesystem;
use crate::Error;

/// The program that makes `fs`, and its Debian package.
pub fn tool_for(fs: Filesystem) -> (&'static str, &'static str) {
    match fs {
        Filesystem::Erofs => ("mkfs.erofs", "erofs-utils"),
        Filesystem::Squashfs => ("mksquashfs", "squashfs-tools"),
    }
}

/// Finds `tool` with the workspace's one program lookup (`imgctl_fsio::find_program`).
pub fn find_tool(tool: &'static str, package: &'static str) -> Result<PathBuf, Error> {
    imgctl_fsio::find_program(tool).ok_or(Error::MissingTool { tool, package })
}

/// Runs a command, returning stdout; a failure carries the command's stderr.
pub(crate) fn run(cmd: &mut Command, stdin: Option<&[u8]>) -> Result<Vec<u8>, Error> {
    use std::io::Write;
    use std::process::Stdio;
    let tool = cmd.get_program().to_string_lossy().into_owned();
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::io(Path::new(&tool), "running", e))?;
    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(data)
            .map_err(|e| Error::io(Path::new(&tool), "writing to", e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::io(Path::new(&tool), "waiting for", e))?;
    if !out.status.success() {
        return Err(Error::ToolFailed {
            tool,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(out.stdout)
}

/// Makes the file system image `out` from `source`.
pub fn make_filesystem(
    fs: Filesystem,
    tool: &Path,
    source: &Path,
    out: &Path,
    epoch: u64,
    uuid: Guid,
) -> Result<(), Error> {
    let mut cmd = Command::new(tool);
    match fs {
        Filesystem::Erofs => {
            cmd.arg("--quiet")
                .arg(format!("-T{epoch}"))
                .arg(format!("-U{uuid}"))
                .arg("--all-root")
                .arg("-x-1")
                .arg(out)
                .arg(source);
        }
        Filesystem::Squashfs => {
            cmd.arg(source)
                .arg(out)
                .args(["-noappend", "-all-root", "-no-xattrs", "-reproducible"])
                .args(["-quiet", "-no-progress"])
                .arg("-mkfs-time")
                .arg(epoch.to_string())
                .arg("-all-time")
                .arg(epoch.to_string());
        }
    }
    // Timestamps come from the arguments only (mksquashfs refuses both at once).
    cmd.env_remove("SOURCE_DATE_EPOCH");
    run(&mut cmd, None).map(|_| ())
}
