//! `kind: os` recipes: a whole bootable disk image made from Debian packages.
//!
//! ```yaml
//! kind: os
//! name: os                          # image name: [A-Za-z0-9._-], no leading dot
//! version: "1"
//! suite: trixie                     # the default; the Debian suite mmdebstrap installs
//! mirror: http://deb.debian.org/debian   # the default (scripts/setup.sh uses the same)
//! packages: [systemd, systemd-sysv, udev, linux-image-amd64, dracut, systemd-boot-efi]
//! cmdline: console=ttyS0            # usrhash= and the /usr mount options are added by imgctl
//! files:                            # placed into the tree after mmdebstrap (under /usr or /etc)
//!   - { src: os/imgctl-capture.service, dst: /usr/lib/systemd/system/imgctl-capture.service }
//! units: [imgctl-capture.service]   # enabled through their [Install] WantedBy= (links in /usr)
//! mask: [systemd-networkd.service]  # units the image does not need: linked to /dev/null in /usr
//! stub: tree                        # tree (the image's own systemd-stub, the default),
//!                                   # imgctl (our Rust stub), or a path to a stub
//! pcrpkey: pcr-public.pem           # optional .pcrpkey (else the public half of
//!                                   # `build --pcr-private-key`), as in UKI recipes
//! var:                              # optional: /var made at first boot by systemd-repart,
//!   encrypt: tpm2                   # LUKS2 enrolled to the TPM against .pcrpkey's signed
//!   size: 64M                       # PCR 11 policy; its size (K, M or G; default 64M)
//! ```
//!
//! Relative paths resolve against the recipe's folder. Unknown keys, wrong types and missing
//! files are errors that name the file, the line and the key. An [`OsRecipe`] is fully checked.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::recipe::{check_dst, decode_yaml, parse_mode, valid_name, Ctx, IMGCTL_STUB};
use crate::Error;

/// The Debian suite when the recipe names none.
pub const DEFAULT_SUITE: &str = "trixie";
/// The mirror scripts/setup.sh makes the systemd 257 chroot from.
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
/// The systemd-stub inside the tree (Debian's systemd-boot-efi).
pub const TREE_STUB: &str = "usr/lib/systemd/boot/efi/linuxx64.efi.stub";
/// At most this many packages (a bound on what the key and the command line carry).
const MAX_PACKAGES: usize = 512;

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "kebab-case",
    expecting = "an OS recipe (a mapping of kind, name, version, packages, ...)"
)]
struct RawOsRecipe {
    kind: String,
    name: String,
    version: String,
    #[serde(default)]
    suite: Option<String>,
    #[serde(default)]
    mirror: Option<String>,
    packages: Vec<String>,
    #[serde(default)]
    cmdline: Option<String>,
    #[serde(default)]
    files: Vec<RawOsFile>,
    #[serde(default)]
    units: Vec<String>,
    #[serde(default)]
    mask: Vec<String>,
    #[serde(default)]
    stub: Option<String>,
    #[serde(default)]
    pcrpkey: Option<String>,
    #[serde(default)]
    var: Option<RawOsVar>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "the /var partition (a mapping of encrypt, size)"
)]
struct RawOsVar {
    encrypt: String,
    #[serde(default)]
    size: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a file to add (a mapping of src, dst, mode)"
)]
struct RawOsFile {
    src: String,
    dst: String,
    #[serde(default)]
    mode: Option<String>,
}

/// Which systemd-stub the UKI is made with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OsStub {
    /// The tree's own `/usr/lib/systemd/boot/efi/linuxx64.efi.stub` (systemd-boot-efi).
    Tree,
    /// A stub file outside the tree (ours, or another systemd's).
    File(PathBuf),
}

/// A file added to the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsFile {
    pub src: PathBuf,
    /// Absolute, normalised path inside the tree.
    pub dst: String,
    pub mode: Option<u32>,
}

/// The encrypted `/var` an image makes at first boot: a `repart.d` definition (Type=var,
/// Format=ext4, Encrypt=tpm2) systemd-repart applies to the boot disk's free space, enrolling
/// the TPM against the UKI's `.pcrpkey` (signed PCR 11 policy), an `/etc/crypttab` entry that
/// unlocks it with the TPM (and measures its volume key into PCR 15), and its `/etc/fstab` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsVar {
    /// The partition's size in bytes (a multiple of 4096).
    pub size: u64,
}

/// The default size of the encrypted /var.
pub const DEFAULT_VAR_SIZE: u64 = 64 << 20;
/// Bounds of the encrypted /var's size: LUKS2's header takes 16 MiB, and the partition is
/// formatted under emulation at first boot.
const VAR_SIZE_RANGE: std::ops::RangeInclusive<u64> = (32 << 20)..=(1 << 40);

/// `64M`-style sizes: digits with an optional K, M or G suffix (powers of 1024).
fn parse_size(s: &str) -> Option<u64> {
    let (digits, shift) = match s.as_bytes().last()? {
        b'K' => (&s[..s.len() - 1], 10),
        b'M' => (&s[..s.len() - 1], 20),
        b'G' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.len() > 15 {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(1 << shift)
}

/// A fully checked OS recipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsRecipe {
    pub path: PathBuf,
    pub source: Vec<u8>,
    pub name: String,
    pub version: String,
    pub suite: String,
    pub mirror: String,
    /// Sorted and without duplicates (the order does not change what apt installs).
    pub packages: Vec<String>,
    pub cmdline: Option<String>,
    pub files: Vec<OsFile>,
    pub units: Vec<String>,
    /// Units masked in the image (their file in /usr/lib/systemd/system a link to /dev/null).
    pub mask: Vec<String>,
    pub stub: OsStub,
    /// The `.pcrpkey` content's file, when the recipe names one.
    pub pcrpkey: Option<PathBuf>,
    pub var: Option<OsVar>,
}

/// The `kind:` of recipe text, if it has one at the top level (UKI recipes have none).
pub fn recipe_kind(text: &[u8]) -> Option<String> {
    let text = imgctl_fsio::yaml::checked_text(text).ok()?;
    let v: serde_yaml::Value = serde_yaml::from_str(text).ok()?;
    v.get("kind")?.as_str().map(str::to_owned)
}

fn debian_word(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b))
}

impl OsRecipe {
    pub fn load(path: &Path) -> Result<OsRecipe, Error> {
        let source = imgctl_fsio::read_bounded(path, imgctl_fsio::caps::POLICY, "a recipe")?;
        OsRecipe::parse(path, source)
    }

    pub fn parse(path: &Path, source: Vec<u8>) -> Result<OsRecipe, Error> {
        let (raw, text): (RawOsRecipe, &str) = decode_yaml(path, &source)?;
        let dir = path.parent().unwrap_or(Path::new("")).to_owned();
        let ctx = Ctx {
            file: path,
            text,
            dir: &dir,
        };
        if raw.kind != "os" {
            return Err(ctx.err("kind", &raw.kind, "must be `os` for an OS recipe"));
        }
        if !valid_name(&raw.name) {
            return Err(ctx.err("name", &raw.name, "must be 1-64 characters of [A-Za-z0-9._-], not starting with '.' (it names the output folder and files)"));
        }
        if raw.version.is_empty() || raw.version.contains(['/', '\n']) || raw.version == "~" {
            return Err(ctx.err(
                "version",
                &raw.version,
                "must be non-empty and contain no '/' or newline",
            ));
        }
        let suite = raw.suite.unwrap_or_else(|| DEFAULT_SUITE.to_owned());
        if !debian_word(&suite) {
            return Err(ctx.err(
                "suite",
                &suite,
                "must be a Debian suite name such as trixie",
            ));
        }
        let mirror = raw.mirror.unwrap_or_else(|| DEFAULT_MIRROR.to_owned());
        if !(mirror.starts_with("http://") || mirror.starts_with("https://"))
            || mirror.contains(char::is_whitespace)
            || mirror.len() > 512
        {
            return Err(ctx.err(
                "mirror",
                &mirror,
                "must be an http:// or https:// URL without spaces",
            ));
        }
        if raw.packages.is_empty() {
            return Err(ctx.err(
                "packages",
                "packages",
                "is empty: name at least systemd and a kernel",
            ));
        }
        if raw.packages.len() > MAX_PACKAGES {
            return Err(ctx.err(
                "packages",
                "packages",
                &format!("has {} entries; at most {MAX_PACKAGES}", raw.packages.len()),
            ));
        }
        for p in &raw.packages {
            if !debian_word(p) {
                return Err(ctx.err(
                    "packages",
                    p,
                    &format!(
                        "{p:?} is not a Debian package name (lower-case letters, digits, + - .)"
                    ),
                ));
            }
        }
        let mut packages = raw.packages.clone();
        packages.sort();
        packages.dedup();
        for needed in ["systemd", "linux-image-amd64", "dracut"] {
            if !packages.iter().any(|p| p == needed) {
                return Err(ctx.err(
                    "packages",
                    "packages",
                    &format!("must include {needed} (the image boots its own kernel with a dracut initrd into systemd)"),
                ));
            }
        }
        let mut files: Vec<OsFile> = Vec::new();
        for f in raw.files {
            let src = ctx.file("files.src", &f.src)?;
            let dst = check_dst(&f.dst)
                .map_err(|why| ctx.err("files.dst", &f.dst.replace('\0', "\\0"), &why))?;
            if !(dst.starts_with("/usr/") || dst.starts_with("/etc/")) {
                return Err(ctx.err(
                    "files.dst",
                    &dst,
                    "must lie under /usr/ (the verity-protected partition) or /etc/",
                ));
            }
            if files.iter().any(|o| o.dst == dst) {
                return Err(ctx.err("files.dst", &dst, "is given twice"));
            }
            let mode = match f.mode {
                None => None,
                Some(m) => Some(parse_mode(&m).ok_or_else(|| {
                    ctx.err(
                        "files.mode",
                        &m,
                        "must be octal permission bits such as \"0755\"",
                    )
                })?),
            };
            files.push(OsFile { src, dst, mode });
        }
        for (key, u) in raw
            .units
            .iter()
            .map(|u| ("units", u))
            .chain(raw.mask.iter().map(|u| ("mask", u)))
        {
            let ok = !u.is_empty()
                && u.len() <= 255
                && !u.contains('/')
                && u.rsplit_once('.').is_some_and(|(stem, ext)| {
                    !stem.is_empty()
                        && matches!(
                            ext,
                            "service" | "target" | "socket" | "timer" | "path" | "mount"
                        )
                });
            if !ok {
                return Err(ctx.err(
                    key,
                    u,
                    "must be a unit file name such as foo.service (no folders)",
                ));
            }
        }
        if let Some(u) = raw.units.iter().find(|u| raw.mask.contains(u)) {
            return Err(ctx.err("mask", u, "is also in units: a unit is enabled or masked"));
        }
        let stub = match raw.stub.as_deref() {
            None | Some("tree") => OsStub::Tree,
            Some(IMGCTL_STUB) => {
                let p = std::env::var_os("IMGCTL_STUB").map_or_else(
                    || PathBuf::from(crate::recipe::IMGCTL_STUB_PATH),
                    PathBuf::from,
                );
                if !p.is_file() {
                    return Err(ctx.err("stub", IMGCTL_STUB, &format!(
                        "imgctl-stub is not built at {}: run scripts/build-stub.sh (or set IMGCTL_STUB)",
                        p.display()
                    )));
                }
                OsStub::File(p)
            }
            Some(s) => OsStub::File(ctx.file("stub", s)?),
        };
        let pcrpkey = match &raw.pcrpkey {
            Some(p) => Some(ctx.file("pcrpkey", p)?),
            None => None,
        };
        let var = match raw.var {
            None => None,
            Some(v) => {
                if v.encrypt != "tpm2" {
                    return Err(ctx.err(
                        "encrypt",
                        &v.encrypt,
                        "must be tpm2 (the TPM through the UKI's signed PCR policy)",
                    ));
                }
                let size = match &v.size {
                    None => DEFAULT_VAR_SIZE,
                    Some(t) => parse_size(t)
                        .filter(|n| VAR_SIZE_RANGE.contains(n) && n % 4096 == 0)
                        .ok_or_else(|| {
                            ctx.err(
                                "size",
                                t,
                                "must be a size such as 64M (K, M or G), a multiple of 4 KiB, from 32M to 1024G",
                            )
                        })?,
                };
                for needed in ["systemd-repart", "systemd-cryptsetup"] {
                    if !packages.iter().any(|p| p == needed) {
                        return Err(ctx.err(
                            "packages",
                            "packages",
                            &format!("must include {needed} for an encrypted /var (var:)"),
                        ));
                    }
                }
                Some(OsVar { size })
            }
        };
        Ok(OsRecipe {
            path: path.to_owned(),
            source: source.clone(),
            name: raw.name,
            version: raw.version,
            suite,
            mirror,
            packages,
            cmdline: raw.cmdline,
            files,
            units: raw.units,
            mask: raw.mask,
            stub,
            pcrpkey,
            var,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str =
        "kind: os\nname: t\nversion: '1'\npackages: [systemd, linux-image-amd64, dracut]\n";

    fn parse(text: &str) -> Result<OsRecipe, Error> {
        OsRecipe::parse(
            &std::env::temp_dir().join("os.yaml"),
            text.as_bytes().to_vec(),
        )
    }

    #[test]
    fn defaults_are_trixie_and_the_tree_stub() {
        let r = parse(BASE).unwrap();
        assert_eq!(r.suite, "trixie");
        assert_eq!(r.mirror, DEFAULT_MIRROR);
        assert_eq!(r.stub, OsStub::Tree);
        assert_eq!(r.packages, ["dracut", "linux-image-amd64", "systemd"]);
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = parse(&format!("{BASE}kernel: x\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("kernel"), "{e}");
        assert!(e.contains(":5"), "{e}");
    }

    #[test]
    fn bad_packages_and_units_are_named() {
        let e = parse("kind: os\nname: t\nversion: '1'\npackages: [systemd, 'a b']\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("packages") && e.contains("a b"), "{e}");
        let e = parse("kind: os\nname: t\nversion: '1'\npackages: [systemd]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("linux-image-amd64"), "{e}");
        let e = parse(&format!("{BASE}mask: [a/b.service]\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("mask"), "{e}");
        let e = parse(&format!("{BASE}units: [x.service]\nmask: [x.service]\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("enabled or masked"), "{e}");
        let e = parse(&format!("{BASE}units: [../x.service]\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("units"), "{e}");
    }

    #[test]
    fn var_is_checked() {
        let full = "kind: os\nname: t\nversion: '1'\npackages: [systemd, linux-image-amd64, dracut, systemd-repart, systemd-cryptsetup]\n";
        let r = parse(&format!("{full}var: {{encrypt: tpm2}}\n")).unwrap();
        assert_eq!(r.var, Some(OsVar { size: 64 << 20 }));
        let r = parse(&format!("{full}var: {{encrypt: tpm2, size: 1G}}\n")).unwrap();
        assert_eq!(r.var, Some(OsVar { size: 1 << 30 }));
        for (bad, word) in [
            ("{encrypt: fido2}", "tpm2"),
            ("{encrypt: tpm2, size: 1M}", "size"),
            ("{encrypt: tpm2, size: 64X}", "size"),
            ("{encrypt: tpm2, size: 99999999999999999G}", "size"),
            ("{encrypt: tpm2, size: 40000001}", "multiple"),
            ("{size: 64M}", "encrypt"),
        ] {
            let e = parse(&format!("{full}var: {bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(word), "{bad}: {e}");
        }
        let e = parse(&format!("{BASE}var: {{encrypt: tpm2}}\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("systemd-repart"), "{e}");
        assert_eq!(parse_size("64M"), Some(64 << 20));
        assert_eq!(parse_size("M"), None);
        assert_eq!(parse_size("-1"), None);
    }

    #[test]
    fn kind_is_read_from_the_text() {
        assert_eq!(recipe_kind(BASE.as_bytes()).as_deref(), Some("os"));
        assert_eq!(recipe_kind(b"name: demo\n"), None);
        assert_eq!(recipe_kind(b"\xff"), None);
    }
}
