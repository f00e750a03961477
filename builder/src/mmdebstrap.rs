//! I/O: the OS tree of a `kind: os` recipe, made by mmdebstrap from Debian's registry and kept
//! in a cache folder under a key that hashes what determines it.
//!
//! One tree per key: `CACHE/<key>/`, made in `CACHE/<key>.tmp/` and renamed into place once
//! complete (a killed run leaves only the `.tmp` folder, which the next run removes). The key
//! hashes the suite, the mirror, the variant, the sorted package list, SOURCE_DATE_EPOCH and
//! [`TREE_FORMAT`] (the post-processing below), so changing any of them makes a new tree.
//!
//! Reproducible settings: SOURCE_DATE_EPOCH for mmdebstrap and dracut (`--reproducible`),
//! documentation, manual pages and locales excluded by dpkg, `/etc/machine-id` set to
//! `uninitialized` (systemd's first-boot marker), apt's lists and caches and every log removed.
//!
//! The initrd is made in the finished tree by its own dracut ([`ensure_initrd`]), cached beside
//! the tree's files as `/boot/imgctl-initrd-<key>.img` under a key of the dracut arguments (so
//! changing them does not make the tree again). It is minimal, as a distribution's hostonly
//! initrd for one kind of machine is: exactly the dracut modules a systemd initrd needs to
//! find `/usr` by `usrhash=` and to extend the boot phases ([`DRACUT_MODULES`], with their
//! dependencies), exactly the kernel modules a QEMU virtio disk with erofs, ext4 and
//! dm-verity needs ([`DRACUT_DRIVERS`]; the TPM and virtio-pci drivers are built into Debian's
//! kernel), gzip-compressed: under TCG every byte of the UKI is hashed by the firmware
//! (PCR 4) and by the stub (PCR 11) in each bank, so a smaller initrd boots faster.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::os_recipe::OsRecipe;
use crate::Error;

/// The post-processing version; bump it when what is done to a tree after mmdebstrap changes.
pub const TREE_FORMAT: &str = "imgctl-os-tree/1";
/// mmdebstrap's variant: Essential and Priority required, plus the recipe's packages.
pub const VARIANT: &str = "minbase";
/// The file that marks a finished tree (written last, before the rename).
const COMPLETE: &str = ".imgctl-tree-complete";
/// The file that marks a `.tmp` tree whose mmdebstrap run finished.
const INSTALLED: &str = ".imgctl-mmdebstrap-done";
/// The initrds dracut makes inside the tree: `boot/imgctl-initrd-<key>.img`.
pub const INITRD_PREFIX: &str = "boot/imgctl-initrd-";
/// The dracut modules of the initrd, exactly (dracut adds what they depend on): systemd as
/// init, `usrhash=` (veritysetup), the boot phases (pcrphase, with tpm2-tss), the root and
/// `/usr` mounts, and the switch to the real root.
pub const DRACUT_MODULES: &str = "systemd-initrd systemd-veritysetup systemd-pcrphase tpm2-tss \
    dracut-systemd kernel-modules base fs-lib rootfs-block usrmount shutdown";
/// The kernel modules of the initrd, exactly: the virtio disk, its file systems, dm-verity.
pub const DRACUT_DRIVERS: &str = "virtio_blk erofs ext4 dm_verity dm_mod";
/// The initrd's format version: bump it when the dracut invocation changes other than by the
/// two lists above.
const INITRD_FORMAT: &str = "imgctl-os-initrd/2";
const DPKG_EXCLUDES: [&str; 4] = [
    "path-exclude=/usr/share/doc/*",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/info/*",
];

/// The cache key of the tree `recipe` needs (16 hex digits of a SHA-256).
pub fn tree_key(recipe: &OsRecipe, source_date_epoch: u64) -> String {
    let text = format!(
        "{TREE_FORMAT}\nsuite={}\nmirror={}\nvariant={VARIANT}\npackages={}\nsource_date_epoch={source_date_epoch}\n",
        recipe.suite,
        recipe.mirror,
        recipe.packages.join(",")
    );
    imgctl_measure::bank::HashAlg::SHA256
        .hash(text.as_bytes())
        .map(|d| hex::encode(d.as_bytes().get(..8).unwrap_or_default()))
        .unwrap_or_default()
}

/// A tree in the cache.
#[derive(Debug, Clone)]
pub struct Tree {
    pub root: PathBuf,
    pub key: String,
    /// The kernel release (the one folder under /usr/lib/modules).
    pub kernel_release: String,
    /// Whether this run made it (false: it was in the cache).
    pub made: bool,
}

impl Tree {
    pub fn kernel(&self) -> PathBuf {
        self.root
            .join("boot")
            .join(format!("vmlinuz-{}", self.kernel_release))
    }
}

/// The cache key of the initrd (16 hex digits of a SHA-256 of the dracut arguments).
pub fn initrd_key(source_date_epoch: u64) -> String {
    let text = format!(
        "{INITRD_FORMAT}\nmodules={}\ndrivers={DRACUT_DRIVERS}\nsource_date_epoch={source_date_epoch}\n",
        DRACUT_MODULES.split_whitespace().collect::<Vec<_>>().join(" ")
    );
    imgctl_measure::bank::HashAlg::SHA256
        .hash(text.as_bytes())
        .map(|d| hex::encode(d.as_bytes().get(..8).unwrap_or_default()))
        .unwrap_or_default()
}

/// Returns the tree's initrd, making it with the tree's own dracut when it is not cached yet
/// (written under a temporary name and renamed into place once complete).
pub fn ensure_initrd(tree: &Tree, source_date_epoch: u64) -> Result<PathBuf, Error> {
    let key = initrd_key(source_date_epoch);
    let rel = format!("{INITRD_PREFIX}{key}.img");
    let path = tree.root.join(&rel);
    if path.is_file() {
        return Ok(path);
    }
    // Per process, so that two builds making the same initrd do not write one file.
    let tmp_rel = format!("{rel}.{}.tmp", std::process::id());
    // dracut runs in the tree with /proc, /sys and /dev mounted in a private mount namespace
    // (gone when it exits, so nothing stays mounted on the host).
    let script = r#"set -e
T="$1"; shift
mount -t proc proc "$T/proc"
mount -t sysfs sysfs "$T/sys"
mount --rbind /dev "$T/dev"
exec chroot "$T" "$@""#;
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        "sh",
    ])
    .arg(&tree.root)
    .args([
        "dracut",
        "--quiet",
        "--force",
        "--no-hostonly",
        "--reproducible",
        "--compress",
        "gzip",
    ])
    .arg("--modules")
    .arg(
        DRACUT_MODULES
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" "),
    )
    .args(["--drivers", DRACUT_DRIVERS])
    .args(["--kver", &tree.kernel_release])
    .arg(format!("/{tmp_rel}"))
    .env("SOURCE_DATE_EPOCH", source_date_epoch.to_string());
    run(&mut cmd, "dracut (in the OS tree)")?;
    std::fs::rename(tree.root.join(&tmp_rel), &path)
        .map_err(|e| Error::io(&path, "renaming into place", e))?;
    Ok(path)
}

/// Returns the cached tree for `recipe`, making it first when it is not there.
pub fn ensure_tree(recipe: &OsRecipe, cache: &Path, source_date_epoch: u64) -> Result<Tree, Error> {
    let key = tree_key(recipe, source_date_epoch);
    let root = cache.join(&key);
    if root.join(COMPLETE).is_file() {
        let kernel_release = kernel_release(&root)?;
        return Ok(Tree {
            root,
            key,
            kernel_release,
            made: false,
        });
    }
    for tool in ["mmdebstrap", "unshare", "chroot"] {
        if imgctl_fsio::find_program(tool).is_none() {
            return Err(Error::InvalidInput(format!(
                "{tool} is needed to make the OS tree of {} (Debian: apt-get install mmdebstrap util-linux coreutils; scripts/setup.sh does it)",
                recipe.path.display()
            )));
        }
    }
    std::fs::create_dir_all(cache).map_err(|e| Error::io(cache, "creating", e))?;
    let tmp = cache.join(format!("{key}.tmp"));
    // A run killed after mmdebstrap finished resumes with the post-processing (which is
    // idempotent); anything else half-made is removed.
    if !tmp.join(INSTALLED).is_file() {
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, "removing a stale", e))?;
        }
        install(recipe, &tmp, source_date_epoch)?;
    }
    finish_tree(&tmp, source_date_epoch)?;
    std::fs::remove_file(tmp.join(INSTALLED))
        .map_err(|e| Error::io(&tmp.join(INSTALLED), "removing", e))?;
    std::fs::write(tmp.join(COMPLETE), format!("{key}\n"))
        .map_err(|e| Error::io(&tmp.join(COMPLETE), "writing", e))?;
    std::fs::rename(&tmp, &root).map_err(|e| Error::io(&root, "renaming into place", e))?;
    let kernel_release = kernel_release(&root)?;
    Ok(Tree {
        root,
        key,
        kernel_release,
        made: true,
    })
}

/// mmdebstrap into `tmp`, then the [`INSTALLED`] marker.
fn install(recipe: &OsRecipe, tmp: &Path, source_date_epoch: u64) -> Result<(), Error> {
    let mut cmd = Command::new("mmdebstrap");
    cmd.arg("--quiet")
        .arg(format!("--variant={VARIANT}"))
        .arg(format!("--include={}", recipe.packages.join(",")));
    for x in DPKG_EXCLUDES {
        cmd.arg(format!("--dpkgopt={x}"));
    }
    cmd.arg(&recipe.suite)
        .arg(tmp)
        .arg(&recipe.mirror)
        .env("SOURCE_DATE_EPOCH", source_date_epoch.to_string());
    run(&mut cmd, "mmdebstrap")?;
    std::fs::write(tmp.join(INSTALLED), "")
        .map_err(|e| Error::io(&tmp.join(INSTALLED), "writing", e))
}

/// The one kernel release under `/usr/lib/modules` (an OS image boots exactly one kernel).
pub fn kernel_release(root: &Path) -> Result<String, Error> {
    let dir = root.join("usr/lib/modules");
    let mut found = Vec::new();
    for e in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, "reading", e))? {
        let e = e.map_err(|e| Error::io(&dir, "reading", e))?;
        if e.path().join("modules.dep").is_file()
            || root
                .join("boot")
                .join(format!("vmlinuz-{}", e.file_name().to_string_lossy()))
                .is_file()
        {
            found.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    found.sort();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(Error::InvalidInput(format!(
            "{}: no kernel is installed (add linux-image-amd64 to packages)",
            dir.display()
        ))),
        many => Err(Error::InvalidInput(format!(
            "{}: more than one kernel is installed ({}); an OS image boots one",
            dir.display(),
            many.join(", ")
        ))),
    }
}

/// The reproducible clean-up, in the fresh tree `tmp`.
fn finish_tree(tmp: &Path, _source_date_epoch: u64) -> Result<(), Error> {
    kernel_release(tmp)?;
    // The distribution's own initrd (made by the kernel's postinst, not reproducibly) goes.
    for e in std::fs::read_dir(tmp.join("boot"))
        .map_err(|e| Error::io(&tmp.join("boot"), "reading", e))?
    {
        let e = e.map_err(|e| Error::io(&tmp.join("boot"), "reading", e))?;
        if e.file_name().to_string_lossy().starts_with("initrd.img-") {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let machine_id = tmp.join("etc/machine-id");
    std::fs::write(&machine_id, "uninitialized\n")
        .map_err(|e| Error::io(&machine_id, "writing", e))?;
    let _ = std::fs::remove_file(tmp.join("var/lib/dbus/machine-id"));
    for dir in [
        "var/cache/apt",
        "var/lib/apt/lists",
        "var/log",
        "var/cache/ldconfig",
        "tmp",
    ] {
        clear_files(&tmp.join(dir))?;
    }
    Ok(())
}

/// Removes the regular files below `dir` (folders stay, as packages expect them).
fn clear_files(dir: &Path) -> Result<(), Error> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in rd {
        let e = e.map_err(|e| Error::io(dir, "reading", e))?;
        let ft = e.file_type().map_err(|e| Error::io(dir, "reading", e))?;
        if ft.is_dir() {
            clear_files(&e.path())?;
        } else {
            std::fs::remove_file(e.path()).map_err(|x| Error::io(&e.path(), "removing", x))?;
        }
    }
    Ok(())
}

/// Runs a command; a failure is one line naming the tool, its status and its last message.
pub(crate) fn run(cmd: &mut Command, what: &str) -> Result<(), Error> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::io(Path::new(what), "running", e))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no message");
        return Err(Error::InvalidInput(format!(
            "{what} failed ({}): {last}",
            out.status
        )));
    }
    Ok(())
}
