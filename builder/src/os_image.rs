//! The OS disk image of a `kind: os` recipe: a GPT disk with Discoverable Partitions
//! Specification types, made from the cached mmdebstrap tree ([`crate::mmdebstrap`]).
//!
//! | partition | type | content |
//! |---|---|---|
//! | ESP | `c12a7328-…` | FAT (mkfs.vfat + mtools): the UKI at `\EFI\BOOT\BOOTX64.EFI` and `\EFI\Linux\NAME.efi` |
//! | usr | usr-x86-64 | erofs of the tree's `/usr` (mkfs.erofs, as extension images are made) |
//! | usr-verity | usr-x86-64-verity | the dm-verity hash device, byte-identical to `veritysetup format` |
//! | root | root-x86-64 | ext4 (mkfs.ext4 -d): `/etc`, `/var` and the rest of the tree but `/usr` |
//!
//! The usr and usr-verity partition UUIDs are the halves of the verity root hash (as
//! systemd-repart makes them), and the UKI's command line carries `usrhash=` and the partitions
//! by PARTUUID, so PCR 11 covers the whole of `/usr`. The UKI is the tree's own kernel and
//! dracut initrd with the tree's systemd-stub (or the recipe's), built by [`crate::build`].
//!
//! I/O: runs cp, mkfs.erofs, mkfs.ext4, mkfs.vfat and mtools; every output is staged in the
//! output folder and committed all or nothing with the UKI's.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use imgctl_extensions::gpt::{attr, DiskLayout, Guid, NewPartition};
use imgctl_extensions::{Architecture, Designator, PartitionType, VerityParams};
use serde::Serialize;

use crate::build::{build_staged, BuildOptions, BuildOutput};
use crate::mmdebstrap::{ensure_initrd, ensure_tree, run, Tree};
use crate::os_recipe::{OsRecipe, OsStub, TREE_STUB};
use crate::output::Stage;
use crate::recipe::{InitrdSpec, OsRelease, Recipe};
use crate::Error;

/// The ESP's partition type (UEFI 2.10 §5.3.3).
pub const ESP_TYPE: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
/// The root file system's size (ext4; /etc and /var of a minimal Debian need a few MiB).
const ROOT_SIZE: u64 = 256 << 20;
const MIB: u64 = 1 << 20;

/// Where the OS trees are cached unless told otherwise (the workspace's shared cache).
pub const DEFAULT_CACHE: &str = ".cache/os-trees";

/// How to build an OS image.
#[derive(Debug, Clone)]
pub struct OsBuildOptions {
    pub uki: BuildOptions,
    /// The folder of cached OS trees.
    pub cache: PathBuf,
}

/// One partition of the image, as manifest.json's `os_image` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct OsPartition {
    pub designator: &'static str,
    pub type_uuid: Guid,
    pub uuid: Guid,
    pub label: String,
    pub offset: u64,
    pub size: u64,
}

/// The disk image's facts (written as `image.json` beside the UKI's manifest).
#[derive(Debug, Clone, Serialize)]
pub struct OsImageRecord {
    pub name: String,
    pub version: String,
    pub image: String,
    pub size: u64,
    pub disk_uuid: Guid,
    pub tree_key: String,
    pub suite: String,
    pub packages: Vec<String>,
    pub kernel_release: String,
    pub usr_root_hash: String,
    pub usr_salt: String,
    pub cmdline: String,
    pub partitions: Vec<OsPartition>,
    /// The file-system records systemd-pcrfs extends into PCR 15 at boot (the image's
    /// `/etc/fstab` marks `/` and `/usr` `x-systemd.pcrfs`), as systemd-pcrextend words them:
    /// `file-system:WHERE:FSTYPE:FS-UUID:FS-LABEL:PART-UUID:PART-TYPE:PART-LABEL`, the partition
    /// fields empty for `/usr`, whose device is the dm-verity mapping. Each record's digest in a
    /// bank is that bank's hash of the string.
    pub pcr15_file_systems: Vec<String>,
    /// The activation record of the `/usr` dm-verity device the image's
    /// `imgctl-usr-verity-measure.service` extends into PCR 15 (systemd 257 measures none), in
    /// the format systemd main's systemd-veritysetup writes to its `verity` NvPCR:
    /// `verity:usr:<root hash>:<signers>`, `usr` being the volume name the veritysetup generator
    /// gives the device of `usrhash=`. The signers are empty: `/usr` is activated from
    /// `usrhash=` without a root hash signature. Its digest is the hash of the string.
    pub pcr15_verity_records: Vec<String>,
    /// The encrypted `/var` systemd-repart makes at first boot, when the recipe has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub var: Option<OsVarRecord>,
}

/// The encrypted `/var` of an image (recipe `var:`), as image.json records it.
#[derive(Debug, Clone, Serialize)]
pub struct OsVarRecord {
    /// The partition label repart gives it and crypttab finds it by (`PARTLABEL=`).
    pub partition_label: String,
    /// The device-mapper name crypttab unlocks it as (`/dev/mapper/NAME`).
    pub mapping: String,
    pub size: u64,
    /// The TPM binding repart enrolls: the signed PCR 11 policy of the UKI's `.pcrpkey`.
    pub tpm2_public_key_pcrs: Vec<u32>,
    /// The PCR 15 `volume-key` records systemd-cryptsetup 257 writes when it unlocks the volume
    /// (crypttab `tpm2-measure-pcr=yes`), as prefixes: each record's string is the prefix
    /// followed by the LUKS UUID repart gives the volume at first boot, and its digest an HMAC
    /// keyed by the volume key; neither is known to the build.
    pub pcr15_volume_key_prefixes: Vec<String>,
    /// The unlock-mechanism record the image's `imgctl-var-keyslot.service` measures into PCR
    /// 15 (systemd 259's `cryptsetup-keyslot:<name>:<uuid>:<mechanism>:<slot>`) for a TPM
    /// unlock, with [`LUKS_UUID_PLACEHOLDER`] for the LUKS UUID made at first boot: repart
    /// enrolls the TPM in key slot 0. Its digest is the hash of the string.
    pub pcr15_unlock_record_templates: Vec<String>,
}

/// Where the LUKS UUID goes in [`OsVarRecord::pcr15_unlock_record_templates`] (one of the
/// record's [`imgctl_measure::record::USERSPACE_PLACEHOLDERS`]).
pub const LUKS_UUID_PLACEHOLDER: &str = "{luks-uuid}";

/// systemd-pcrmachine's record, with the machine ID only the first boot makes.
const MACHINE_ID_TEMPLATE: &str = "machine-id:{machine-id}";

/// The volume name systemd's veritysetup generator gives the dm-verity device of `usrhash=`
/// (`/dev/mapper/usr`), which names it in its activation record.
pub const USR_VERITY_VOLUME: &str = "usr";

/// The unit and script every OS image ships (in `/usr`, under verity) to measure the `/usr`
/// dm-verity device's activation record ([`OsImageRecord::pcr15_verity_records`]).
const USR_VERITY_MEASURE_UNIT: (&str, &str) = (
    "imgctl-usr-verity-measure.service",
    include_str!("os/imgctl-usr-verity-measure.service"),
);
const USR_VERITY_MEASURE_SCRIPT: (&str, &str) =
    ("usr-verity-measure", include_str!("os/usr-verity-measure"));

/// The `/usr` activation record for root hash `root_hash` (lower-case hex), unsigned.
pub fn usr_verity_record(root_hash: &str) -> String {
    format!("verity:{USR_VERITY_VOLUME}:{root_hash}:")
}

/// The device-mapper name of the encrypted /var, and its partition label.
pub const VAR_MAPPING: &str = "var";

/// The repart.d definition of the encrypted /var (shipped in /usr, so verity covers it):
/// systemd-repart 257 creates it in the boot disk's free space at first boot, formats it
/// LUKS2 + ext4 and enrolls a TPM2 key slot bound to the signed PCR 11 policy of the public key
/// the stub passes (`/run/systemd/tpm2-pcr-public-key.pem`, from `.pcrpkey`).
pub fn var_repart_conf(size: u64) -> String {
    format!(
        "# imgctl: the encrypted /var, made by systemd-repart at first boot.\n\
         [Partition]\n\
         Type=var\n\
         Label={VAR_MAPPING}\n\
         Format=ext4\n\
         Encrypt=tpm2\n\
         SizeMinBytes={size}\n\
         SizeMaxBytes={size}\n"
    )
}

/// The crypttab line of the encrypted /var: unlocked by the TPM (the token repart enrolled,
/// with the signed policy from `/run/systemd/tpm2-pcr-signature.json`), the volume key
/// measured into PCR 15. When the TPM refuses (the running UKI's signed policy does not match
/// the measured boot), systemd-cryptsetup falls back to a passphrase: the system credential
/// `cryptsetup.passphrase` (the recovery key, as a hypervisor or provisioning tool passes it),
/// else a prompt for at most [`VAR_PASSPHRASE_TIMEOUT`], then the unlock fails and so does the
/// boot. Not `headless`: systemd-cryptsetup 257 then refuses the credential too ("Password
/// querying disabled via 'headless' option").
pub fn var_crypttab() -> String {
    format!(
        "# imgctl: the encrypted /var (systemd-repart makes it at first boot).\n\
         {VAR_MAPPING} PARTLABEL={VAR_MAPPING} - tpm2-device=auto,tpm2-measure-pcr=yes,timeout={VAR_PASSPHRASE_TIMEOUT}\n"
    )
}

/// How long systemd-cryptsetup asks for the recovery key of /var when the TPM refused and no
/// credential holds it (crypttab `timeout=`).
pub const VAR_PASSPHRASE_TIMEOUT: &str = "2min";

impl OsImageRecord {
    /// What the booted image's systemd records in PCR 15, as the artifact record lists it:
    /// the machine ID (made at first boot: its form, not its value), the file-system records
    /// of [`OsImageRecord::pcr15_file_systems`], and with an encrypted /var its volume-key
    /// record (systemd-cryptsetup's `volume-key` event; UUID made at first boot, digest an
    /// HMAC of the volume key) and the unlock-mechanism record (a `phase` event, as
    /// systemd-pcrextend 257 logs a word).
    pub fn userspace_events(&self) -> Vec<imgctl_measure::record::UserspaceEventRecord> {
        use imgctl_measure::record::UserspaceEventRecord;
        let event = |event_type: &str, string: String| UserspaceEventRecord {
            pcr: 15,
            event_type: event_type.into(),
            string,
        };
        let mut v = vec![event("machine-id", MACHINE_ID_TEMPLATE.into())];
        v.extend(
            self.pcr15_file_systems
                .iter()
                .map(|s| event("filesystem", s.clone())),
        );
        // systemd-pcrextend 257 logs a word it is given as a `phase` event.
        v.extend(
            self.pcr15_verity_records
                .iter()
                .map(|s| event("phase", s.clone())),
        );
        if let Some(var) = &self.var {
            v.extend(
                var.pcr15_volume_key_prefixes
                    .iter()
                    .map(|p| event("volume-key", format!("{p}{LUKS_UUID_PLACEHOLDER}"))),
            );
            v.extend(
                var.pcr15_unlock_record_templates
                    .iter()
                    .map(|t| event("phase", t.clone())),
            );
        }
        v
    }
}

/// What an OS build wrote.
#[derive(Debug)]
pub struct OsBuildOutput {
    pub image: PathBuf,
    pub record: OsImageRecord,
    pub uki: BuildOutput,
    pub tree: Tree,
}

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut data = Vec::new();
    for p in parts {
        data.extend_from_slice(&(p.len() as u64).to_le_bytes());
        data.extend_from_slice(p);
    }
    let d = imgctl_measure::bank::HashAlg::SHA256
        .hash(&data)
        .map(|d| d.as_bytes().to_vec())
        .unwrap_or_default();
    let mut out = [0u8; 32];
    if d.len() == 32 {
        out.copy_from_slice(&d);
    }
    out
}

fn sha256_file(path: &Path) -> Result<[u8; 32], Error> {
    let mut f = File::open(path).map_err(|e| Error::io(path, "opening", e))?;
    let mut h = imgctl_measure::bank::HashAlg::SHA256
        .hasher()
        .map_err(|e| Error::InvalidInput(e.to_string()))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| Error::io(path, "reading", e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let d = h.finish();
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_bytes().get(..32).unwrap_or(&[0; 32]));
    Ok(out)
}

fn tool(name: &'static str, package: &str) -> Result<PathBuf, Error> {
    imgctl_fsio::find_program(name).ok_or_else(|| {
        Error::InvalidInput(format!(
            "{name} is needed to build an OS image (Debian package {package}; scripts/setup.sh installs it)"
        ))
    })
}

/// Builds the disk image, the UKI, pcrs.json, manifest.json and image.json into the output
/// folder; returns the staged outputs uncommitted (the caller commits).
pub fn build_os_staged(
    recipe: &OsRecipe,
    opts: &OsBuildOptions,
) -> Result<(OsBuildOutput, Stage), Error> {
    if recipe.var.is_some() && recipe.pcrpkey.is_none() && opts.uki.pcr_key.is_none() {
        return Err(Error::InvalidInput(format!(
            "{}: var: the encrypted /var is bound to the UKI's signed PCR policy: give \
             --pcr-private-key (or pcrpkey: in the recipe)",
            recipe.path.display()
        )));
    }
    let epoch = opts.uki.source_date_epoch;
    let mkfs_erofs = tool("mkfs.erofs", "erofs-utils")?;
    let mkfs_ext4 = tool("mkfs.ext4", "e2fsprogs")?;
    let mkfs_vfat = tool("mkfs.vfat", "dosfstools")?;
    let mcopy = tool("mcopy", "mtools")?;
    let mmd = tool("mmd", "mtools")?;
    let cp = tool("cp", "coreutils")?;

    let tree = ensure_tree(recipe, &opts.cache, epoch)?;
    let initrd = ensure_initrd(&tree, epoch)?;

    // A scratch folder beside the output folder, named as fsio names temporaries so that a
    // killed run's is reclaimed.
    let out_dir = &opts.uki.out_dir;
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, "creating", e))?;
    let scratch = tempfile::Builder::new()
        .prefix(&imgctl_fsio::temporary_name("imgctl-os"))
        .tempdir_in(out_dir)
        .map_err(|e| Error::io(out_dir, "creating a temporary folder in", e))?;
    let s = scratch.path();

    // 1. /usr: the tree's, plus the recipe's files and unit links.
    let usr_stage = s.join("usr-root");
    let root_stage = s.join("root");
    std::fs::create_dir_all(&usr_stage).map_err(|e| Error::io(&usr_stage, "creating", e))?;
    std::fs::create_dir_all(&root_stage).map_err(|e| Error::io(&root_stage, "creating", e))?;
    run(
        Command::new(&cp)
            .args(["-a", "--reflink=auto"])
            .arg(tree.root.join("usr"))
            .arg(&usr_stage),
        "cp (the tree's /usr)",
    )?;
    stage_root(&tree.root, &root_stage, &cp)?;
    mark_updated(&root_stage, epoch)?;
    for f in &recipe.files {
        let rel = f.dst.trim_start_matches('/');
        let dst = if rel.starts_with("usr/") {
            usr_stage.join(rel)
        } else {
            root_stage.join(rel)
        };
        if let Some(p) = dst.parent() {
            std::fs::create_dir_all(p).map_err(|e| Error::io(p, "creating", e))?;
        }
        let data = imgctl_fsio::read_bounded(&f.src, 64 << 20, "a file to add")?;
        std::fs::write(&dst, &data).map_err(|e| Error::io(&dst, "writing", e))?;
        let mode = f.mode.unwrap_or_else(|| {
            use std::os::unix::fs::PermissionsExt;
            let m = std::fs::metadata(&f.src)
                .map(|m| m.permissions().mode())
                .unwrap_or(0o644);
            if m & 0o111 != 0 {
                0o755
            } else {
                0o644
            }
        });
        set_mode(&dst, mode)?;
    }
    // The measurement of the /usr verity device's activation (image.json
    // pcr15_verity_records): shipped by the builder, which predicts its record.
    {
        let units = usr_stage.join("usr/lib/systemd/system");
        let lib = usr_stage.join("usr/lib/imgctl");
        for (dir, (name, text), mode) in [
            (&units, USR_VERITY_MEASURE_UNIT, 0o644),
            (&lib, USR_VERITY_MEASURE_SCRIPT, 0o755),
        ] {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, "creating", e))?;
            let path = dir.join(name);
            std::fs::write(&path, text).map_err(|e| Error::io(&path, "writing", e))?;
            set_mode(&path, mode)?;
        }
        enable_unit(&units, USR_VERITY_MEASURE_UNIT.0, &recipe.path)?;
    }
    for unit in &recipe.mask {
        mask_unit(&usr_stage.join("usr/lib/systemd/system"), unit)?;
    }
    for unit in &recipe.units {
        enable_unit(
            &usr_stage.join("usr/lib/systemd/system"),
            unit,
            &recipe.path,
        )?;
    }

    if let Some(var) = &recipe.var {
        let repart = usr_stage.join("usr/lib/repart.d");
        std::fs::create_dir_all(&repart).map_err(|e| Error::io(&repart, "creating", e))?;
        let conf = repart.join("50-var.conf");
        std::fs::write(&conf, var_repart_conf(var.size))
            .map_err(|e| Error::io(&conf, "writing", e))?;
        set_mode(&conf, 0o644)?;
    }

    // 2. erofs + dm-verity for /usr.
    let usr_img = s.join("usr.erofs");
    let content = sha256(&[tree.key.as_bytes(), &recipe.source]);
    let fs_uuid = Guid::v4_from(&sha256(&[b"imgctl os usr fs uuid", &content]));
    imgctl_extensions::mkfs::make_filesystem(
        imgctl_extensions::recipe::Filesystem::Erofs,
        &mkfs_erofs,
        &usr_stage.join("usr"),
        &usr_img,
        epoch,
        fs_uuid,
    )?;
    let usr_len = pad_to(&usr_img, 4096)?;
    let usr_sha = sha256_file(&usr_img)?;
    let salt = sha256(&[b"imgctl os verity salt", &usr_sha]);
    let vuuid = Guid::v4_from(&sha256(&[b"imgctl os verity uuid", &usr_sha]));
    let tree_v = imgctl_extensions::pipeline::verity_of_file(
        &usr_img,
        VerityParams::new(&salt, vuuid.0).map_err(imgctl_extensions::Error::from)?,
    )?;
    let root_hash = tree_v.root_hash_hex();
    let mut halves = [[0u8; 16]; 2];
    halves[0].copy_from_slice(&tree_v.root_hash[..16]);
    halves[1].copy_from_slice(&tree_v.root_hash[16..]);
    let usr_uuid = Guid(halves[0]);
    let verity_uuid = Guid(halves[1]);

    // 3. The root file system, with an fstab that asks systemd-pcrfs to measure / and /usr.
    let root_uuid = Guid::v4_from(&sha256(&[b"imgctl os root uuid", &content]));
    let fstab = root_stage.join("etc/fstab");
    let mut fstab_text = format!(
        "# imgctl: the file systems of this image. x-systemd.pcrfs: systemd-pcrfs measures each\n\
         # into PCR 15 (imgctl predicts the records: image.json pcr15_file_systems).\n\
         PARTUUID={root_uuid} / ext4 rw,x-systemd.pcrfs 0 0\n\
         /dev/mapper/usr /usr erofs ro,x-systemd.pcrfs 0 0\n"
    );
    if recipe.var.is_some() {
        fstab_text.push_str(&format!("/dev/mapper/{VAR_MAPPING} /var ext4 rw 0 0\n"));
        let crypttab = root_stage.join("etc/crypttab");
        std::fs::write(&crypttab, var_crypttab())
            .map_err(|e| Error::io(&crypttab, "writing", e))?;
        set_mode(&crypttab, 0o644)?;
    }
    std::fs::write(&fstab, fstab_text).map_err(|e| Error::io(&fstab, "writing", e))?;
    let root_img = s.join("root.ext4");
    File::create(&root_img)
        .and_then(|f| f.set_len(ROOT_SIZE))
        .map_err(|e| Error::io(&root_img, "creating", e))?;
    run(
        Command::new(&mkfs_ext4)
            .args(["-q", "-F", "-t", "ext4", "-L", "root"])
            .arg("-U")
            .arg(root_uuid.to_string())
            .arg("-E")
            .arg(format!("hash_seed={root_uuid},root_owner=0:0"))
            .arg("-d")
            .arg(&root_stage)
            .arg(&root_img)
            .env("E2FSPROGS_FAKE_TIME", epoch.max(1).to_string())
            .env("SOURCE_DATE_EPOCH", epoch.to_string()),
        "mkfs.ext4 (the root file system)",
    )?;

    // 4. The UKI: the tree's kernel and initrd, the command line with usrhash=.
    let arch = Architecture::X86_64;
    let usr_type = PartitionType::of(arch, Designator::Usr);
    let verity_type = PartitionType::of(arch, Designator::UsrVerity);
    let root_type = PartitionType::of(arch, Designator::Root);
    let esp_uuid = Guid::v4_from(&sha256(&[b"imgctl os esp uuid", &content]));
    let mut cmdline = format!(
        "root=PARTUUID={root_uuid} rw mount.usr=/dev/mapper/usr mount.usrfstype=erofs mount.usrflags=ro \
         usrhash={root_hash} systemd.verity_usr_data=PARTUUID={usr_uuid} systemd.verity_usr_hash=PARTUUID={verity_uuid}"
    );
    if let Some(extra) = &recipe.cmdline {
        cmdline.push(' ');
        cmdline.push_str(extra.trim());
    }
    let stub = match &recipe.stub {
        OsStub::Tree => tree.root.join(TREE_STUB),
        OsStub::File(p) => p.clone(),
    };
    if !stub.is_file() {
        return Err(Error::InvalidInput(format!(
            "{}: stub: {} is missing (add systemd-boot-efi to packages, or name a stub)",
            recipe.path.display(),
            stub.display()
        )));
    }
    let uki_recipe = Recipe {
        path: recipe.path.clone(),
        source: recipe.source.clone(),
        name: recipe.name.clone(),
        version: recipe.version.clone(),
        os_release: OsRelease::File(usr_stage.join("usr/lib/os-release")),
        kernel: tree.kernel(),
        initrd: Some(InitrdSpec {
            archives: vec![initrd],
            ..InitrdSpec::default()
        }),
        cmdline: Some(cmdline.clone()),
        uname: Some(tree.kernel_release.clone()),
        sbat: None,
        splash: None,
        dtb: None,
        dtbauto: Vec::new(),
        hwids: None,
        ucode: None,
        pcrpkey: recipe.pcrpkey.clone(),
        stub,
        profile: None,
        profiles: Vec::new(),
    };
    let (uki, mut stage) = build_staged(&uki_recipe, &opts.uki)?;
    let uki_tmp = stage
        .temporary(&format!("{}.efi", recipe.name))
        .ok_or_else(|| Error::InvalidInput("the UKI was not staged".into()))?;

    // 5. The ESP.
    let uki_len = std::fs::metadata(&uki_tmp)
        .map_err(|e| Error::io(&uki_tmp, "reading", e))?
        .len();
    let esp_size = (2 * uki_len + 16 * MIB).max(64 * MIB).div_ceil(MIB) * MIB;
    let esp_img = s.join("esp.vfat");
    File::create(&esp_img)
        .and_then(|f| f.set_len(esp_size))
        .map_err(|e| Error::io(&esp_img, "creating", e))?;
    let esp_id = hex::encode(&esp_uuid.0[..4]);
    run(
        Command::new(&mkfs_vfat)
            .args(["--invariant", "-F", "32", "-i", &esp_id, "-n", "ESP"])
            .arg(&esp_img),
        "mkfs.vfat (the ESP)",
    )?;
    run(
        Command::new(&mmd)
            .env("SOURCE_DATE_EPOCH", epoch.to_string())
            .arg("-i")
            .arg(&esp_img)
            .args(["::/EFI", "::/EFI/BOOT", "::/EFI/Linux"]),
        "mmd (the ESP)",
    )?;
    for dst in [
        "::/EFI/BOOT/BOOTX64.EFI".to_owned(),
        format!("::/EFI/Linux/{}.efi", recipe.name),
    ] {
        run(
            Command::new(&mcopy)
                .env("SOURCE_DATE_EPOCH", epoch.to_string())
                .arg("-i")
                .arg(&esp_img)
                .arg(&uki_tmp)
                .arg(&dst),
            "mcopy (the UKI into the ESP)",
        )?;
    }

    // 6. The disk.
    let verity_len = tree_v.hash_device.len() as u64;
    let parts = vec![
        NewPartition {
            type_guid: ESP_TYPE
                .parse()
                .map_err(|_| Error::InvalidInput("ESP type".into()))?,
            unique_guid: esp_uuid,
            name: "esp".into(),
            attributes: 0,
            size: esp_size,
        },
        NewPartition {
            type_guid: usr_type.0,
            unique_guid: usr_uuid,
            name: usr_type.repart_name().unwrap_or_default(),
            attributes: attr::READ_ONLY,
            size: usr_len,
        },
        NewPartition {
            type_guid: verity_type.0,
            unique_guid: verity_uuid,
            name: verity_type.repart_name().unwrap_or_default(),
            attributes: attr::READ_ONLY,
            size: verity_len,
        },
        NewPartition {
            type_guid: root_type.0,
            unique_guid: root_uuid,
            name: root_type.repart_name().unwrap_or_default(),
            attributes: 0,
            size: ROOT_SIZE,
        },
    ];
    let disk_uuid = Guid::v4_from(&sha256(&[
        b"imgctl os disk uuid",
        &tree_v.root_hash,
        &content,
    ]));
    let layout = DiskLayout::plan(disk_uuid, &parts).map_err(imgctl_extensions::Error::from)?;
    let image_name = format!("{}.raw", recipe.name);
    let image_path = stage.dir().join(&image_name);
    let hash_device = tree_v.hash_device;
    let sources: [Source; 4] = [
        Source::File(&esp_img),
        Source::File(&usr_img),
        Source::Bytes(&hash_device),
        Source::File(&root_img),
    ];
    stage.add_streamed(&image_name, |w| {
        write_disk(&layout, &sources, w, &image_path)
    })?;

    let partitions: Vec<OsPartition> = layout
        .partitions
        .iter()
        .map(|p| OsPartition {
            designator: PartitionType(p.type_guid)
                .lookup()
                .map_or("esp", |(_, d)| d.name()),
            type_uuid: p.type_guid,
            uuid: p.unique_guid,
            label: p.name.clone(),
            offset: p.offset(),
            size: p.size(),
        })
        .collect();
    let record = OsImageRecord {
        name: recipe.name.clone(),
        version: recipe.version.clone(),
        image: image_name,
        size: layout.size,
        disk_uuid,
        tree_key: tree.key.clone(),
        suite: recipe.suite.clone(),
        packages: recipe.packages.clone(),
        kernel_release: tree.kernel_release.clone(),
        pcr15_verity_records: vec![usr_verity_record(&root_hash)],
        usr_root_hash: root_hash,
        usr_salt: hex::encode(salt),
        cmdline,
        partitions,
        pcr15_file_systems: vec![
            format!(
                "file-system:/:ext4:{root_uuid}:root:{root_uuid}:{}:{}",
                root_type.0,
                root_type.repart_name().unwrap_or_default()
            ),
            format!("file-system:/usr:erofs:{fs_uuid}::::"),
        ],
        var: recipe.var.as_ref().map(|v| OsVarRecord {
            partition_label: VAR_MAPPING.into(),
            mapping: VAR_MAPPING.into(),
            size: v.size,
            tpm2_public_key_pcrs: vec![11],
            pcr15_volume_key_prefixes: vec![format!("cryptsetup:{VAR_MAPPING}:")],
            pcr15_unlock_record_templates: vec![format!(
                "cryptsetup-keyslot:{VAR_MAPPING}:{LUKS_UUID_PLACEHOLDER}:tpm2:0"
            )],
        }),
    };
    let mut json = serde_json::to_vec_pretty(&record).unwrap_or_default();
    json.push(b'\n');
    stage.add("image.json", &json)?;
    drop(scratch);
    Ok((
        OsBuildOutput {
            image: image_path,
            record,
            uki,
            tree,
        },
        stage,
    ))
}

enum Source<'a> {
    File(&'a Path),
    Bytes(&'a [u8]),
}

fn write_disk(
    layout: &DiskLayout,
    sources: &[Source<'_>],
    w: &mut impl Write,
    name: &Path,
) -> Result<(), Error> {
    let werr = |e| Error::io(name, "writing", e);
    let primary = layout.primary();
    w.write_all(&primary).map_err(werr)?;
    let mut pos = primary.len() as u64;
    for (p, src) in layout.partitions.iter().zip(sources) {
        zeros(w, p.offset() - pos).map_err(werr)?;
        let written = match src {
            Source::File(path) => {
                let mut f = File::open(path).map_err(|e| Error::io(path, "opening", e))?;
                std::io::copy(&mut f, w).map_err(werr)?
            }
            Source::Bytes(b) => {
                w.write_all(b).map_err(werr)?;
                b.len() as u64
            }
        };
        if written > p.size() {
            return Err(Error::InvalidInput(format!(
                "{}: partition {} content ({written} bytes) exceeds its {} bytes",
                name.display(),
                p.name,
                p.size()
            )));
        }
        zeros(w, p.size() - written).map_err(werr)?;
        pos = p.offset() + p.size();
    }
    zeros(w, layout.backup_offset() - pos).map_err(werr)?;
    w.write_all(&layout.backup()).map_err(werr)?;
    Ok(())
}

fn zeros(w: &mut impl Write, mut len: u64) -> std::io::Result<()> {
    let z = vec![0u8; 1 << 20];
    while len > 0 {
        let n = usize::try_from(len.min(z.len() as u64)).unwrap_or(z.len());
        w.write_all(&z[..n])?;
        len -= n as u64;
    }
    Ok(())
}

fn pad_to(path: &Path, block: u64) -> Result<u64, Error> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| Error::io(path, "opening", e))?;
    let len = f
        .metadata()
        .map_err(|e| Error::io(path, "reading", e))?
        .len();
    let padded = len.div_ceil(block).max(1) * block;
    f.set_len(padded)
        .map_err(|e| Error::io(path, "padding", e))?;
    Ok(padded)
}

fn set_mode(path: &Path, mode: u32) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io(path, "setting the mode of", e))
}

/// The root file system: everything of the tree but /usr, /boot and the API file systems'
/// contents (empty mount points stay), with the merged-/usr links.
fn stage_root(tree: &Path, stage: &Path, cp: &Path) -> Result<(), Error> {
    let mut names: Vec<_> = std::fs::read_dir(tree)
        .map_err(|e| Error::io(tree, "reading", e))?
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    names.sort();
    for n in names {
        let s = n.to_string_lossy();
        if s.starts_with(".imgctl") {
            continue;
        }
        let dst = stage.join(&n);
        match s.as_ref() {
            "usr" | "proc" | "sys" | "dev" | "run" | "tmp" | "boot" => {
                std::fs::create_dir(&dst).map_err(|e| Error::io(&dst, "creating", e))?;
                if s == "tmp" {
                    set_mode(&dst, 0o1777)?;
                }
            }
            _ => run(
                Command::new(cp)
                    .args(["-a", "--reflink=auto"])
                    .arg(tree.join(&n))
                    .arg(&dst),
                "cp (the root file system)",
            )?,
        }
    }
    Ok(())
}

/// Writes `/etc/.updated` and `/var/.updated` as systemd-update-done does, with the time of
/// `/usr` (every erofs inode carries SOURCE_DATE_EPOCH): the image's /etc and /var are made
/// from this very /usr, so `ConditionNeedsUpdate=` units (hwdb, ldconfig, the journal catalog,
/// sysusers' update) have nothing to do at first boot. mkosi writes them likewise.
fn mark_updated(root: &Path, epoch: u64) -> Result<(), Error> {
    let text = format!(
        "# This file was created by imgctl: /usr is as old as this image.\nTIMESTAMP_NSEC={}\n",
        u128::from(epoch) * 1_000_000_000
    );
    for dir in ["etc", "var"] {
        let p = root.join(dir).join(".updated");
        std::fs::write(&p, &text).map_err(|e| Error::io(&p, "writing", e))?;
        set_mode(&p, 0o644)?;
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(epoch);
        File::options()
            .write(true)
            .open(&p)
            .and_then(|f| f.set_modified(t))
            .map_err(|e| Error::io(&p, "setting the time of", e))?;
    }
    Ok(())
}

/// Masks `unit` in /usr (so verity covers it): its unit file becomes a link to /dev/null,
/// which systemd loads as masked ("the image does not need it"), whatever pulls it in.
fn mask_unit(unit_dir: &Path, unit: &str) -> Result<(), Error> {
    std::fs::create_dir_all(unit_dir).map_err(|e| Error::io(unit_dir, "creating", e))?;
    let path = unit_dir.join(unit);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(&path, "removing", e)),
    }
    std::os::unix::fs::symlink("/dev/null", &path).map_err(|e| Error::io(&path, "linking", e))
}

/// Links `unit` into the `.wants/` folder of each target its `[Install]` section names in
/// `WantedBy=` (in /usr, so the link is covered by verity).
fn enable_unit(unit_dir: &Path, unit: &str, recipe: &Path) -> Result<(), Error> {
    let path = unit_dir.join(unit);
    let text = std::fs::read_to_string(&path).map_err(|_| {
        Error::InvalidInput(format!(
            "{}: units: {unit} is not in /usr/lib/systemd/system of the image (add it under files:)",
            recipe.display()
        ))
    })?;
    let mut in_install = false;
    let mut targets = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_install = line == "[Install]";
        } else if in_install {
            if let Some(v) = line.strip_prefix("WantedBy=") {
                targets.extend(v.split_whitespace().map(str::to_owned));
            }
        }
    }
    if targets.is_empty() {
        return Err(Error::InvalidInput(format!(
            "{}: units: {unit} has no WantedBy= in its [Install] section, so it cannot be enabled",
            recipe.display()
        )));
    }
    for t in targets {
        let wants = unit_dir.join(format!("{t}.wants"));
        std::fs::create_dir_all(&wants).map_err(|e| Error::io(&wants, "creating", e))?;
        let link = wants.join(unit);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(format!("../{unit}"), &link)
            .map_err(|e| Error::io(&link, "linking", e))?;
    }
    Ok(())
}
