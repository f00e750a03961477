//! The extension recipe: a YAML schema (`deny_unknown_fields`) that `imgctl ext build` reads on
//! its own and that the main recipe can embed as an `extensions:` list.
//!
//! ```yaml
//! kind: sysext                 # or confext
//! name: demo                   # image file demo.raw (confext: demo.confext.raw)
//! version: "1.0"
//! tree: demo-sysext            # folder, relative to this file; holds usr/ and opt/ (etc/)
//! files:                       # optional: extra files, or modes for files of the tree
//!   - { path: /usr/bin/hello, source: hello.sh, mode: "0755" }
//!   - { path: /usr/share/demo/motd, content: "hi\n" }
//! release:                     # extension-release keys, spelled as systemd spells them
//!   ID: _any
//!   SYSEXT_LEVEL: "1.0"
//!   ARCHITECTURE: x86-64
//! filesystem: erofs            # or squashfs
//! signing: { key: key.pem, certificate: cert.pem }   # optional; key: also a pkcs11: URI
//! verity: { salt: HEX, uuid: UUID, block_size: 4096 } # optional; salt/UUID derived from content
//! ```
//!
//! Modes are read as octal text (`0755`, `"0755"` and `755` all mean rwxr-xr-x): the field is a
//! string, so the YAML number's digits are kept as written and never reinterpreted as decimal.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::dps::Architecture;
use crate::gpt::Guid;
use crate::release::{check_tree_path, ExtensionKind, ExtensionRelease, ImageName};
use crate::Error;

/// The YAML document, as written.
// The `expecting` texts replace serde's "expected struct ExtensionSpec" in messages.
#[derive(Debug, Clone, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "an extension recipe (a mapping of kind, name, version, release, ...)"
)]
pub struct ExtensionSpec {
    pub kind: ExtensionKind,
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub tree: Option<PathBuf>,
    #[serde(default)]
    pub files: Vec<FileSpec>,
    pub release: ReleaseSpec,
    #[serde(default)]
    pub filesystem: Filesystem,
    /// DPS architecture of the partition types; default: `release.ARCHITECTURE`, else the host.
    #[serde(default)]
    pub architecture: Option<String>,
    #[serde(default)]
    pub signing: Option<SigningSpec>,
    #[serde(default)]
    pub verity: VeritySpec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a file (a mapping of path, source, content, mode)"
)]
pub struct FileSpec {
    /// Absolute path in the running system, e.g. `/usr/bin/hello`.
    pub path: String,
    #[serde(default)]
    pub source: Option<PathBuf>,
    #[serde(default)]
    pub content: Option<String>,
    /// Quoted octal, e.g. `"0755"`.
    #[serde(default)]
    pub mode: Option<String>,
}

/// extension-release keys (UAPI Extension Image spec).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "extension-release fields (a mapping of ID, VERSION_ID, SYSEXT_LEVEL, ...)"
)]
#[allow(non_snake_case)] // reason: the keys are spelled as in the file
pub struct ReleaseSpec {
    pub ID: String,
    #[serde(default)]
    pub VERSION_ID: Option<String>,
    #[serde(default)]
    pub SYSEXT_LEVEL: Option<String>,
    #[serde(default)]
    pub CONFEXT_LEVEL: Option<String>,
    #[serde(default)]
    pub ARCHITECTURE: Option<String>,
    #[serde(default)]
    pub SYSEXT_SCOPE: Option<String>,
    #[serde(default)]
    pub CONFEXT_SCOPE: Option<String>,
    #[serde(default)]
    pub SYSEXT_ID: Option<String>,
    #[serde(default)]
    pub SYSEXT_VERSION_ID: Option<String>,
    #[serde(default)]
    pub CONFEXT_ID: Option<String>,
    #[serde(default)]
    pub CONFEXT_VERSION_ID: Option<String>,
    #[serde(default)]
    pub EXTENSION_RELOAD_MANAGER: Option<String>,
}

impl ReleaseSpec {
    fn pairs(&self) -> Vec<(String, String)> {
        let fields = [
            ("ID", Some(&self.ID)),
            ("VERSION_ID", self.VERSION_ID.as_ref()),
            ("SYSEXT_LEVEL", self.SYSEXT_LEVEL.as_ref()),
            ("CONFEXT_LEVEL", self.CONFEXT_LEVEL.as_ref()),
            ("ARCHITECTURE", self.ARCHITECTURE.as_ref()),
            ("SYSEXT_SCOPE", self.SYSEXT_SCOPE.as_ref()),
            ("CONFEXT_SCOPE", self.CONFEXT_SCOPE.as_ref()),
            ("SYSEXT_ID", self.SYSEXT_ID.as_ref()),
            ("SYSEXT_VERSION_ID", self.SYSEXT_VERSION_ID.as_ref()),
            ("CONFEXT_ID", self.CONFEXT_ID.as_ref()),
            ("CONFEXT_VERSION_ID", self.CONFEXT_VERSION_ID.as_ref()),
            (
                "EXTENSION_RELOAD_MANAGER",
                self.EXTENSION_RELOAD_MANAGER.as_ref(),
            ),
        ];
        fields
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v.clone())))
            .collect()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase", expecting = "erofs or squashfs")]
pub enum Filesystem {
    #[default]
    Erofs,
    Squashfs,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "signing (a mapping of key, certificate)"
)]
pub struct SigningSpec {
    pub key: PathBuf,
    pub certificate: PathBuf,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "verity (a mapping of salt, uuid, block_size)"
)]
pub struct VeritySpec {
    /// Hex; default: derived from the file system image's SHA-256.
    #[serde(default)]
    pub salt: Option<String>,
    /// Superblock UUID; default: derived like the salt.
    #[serde(default)]
    pub uuid: Option<String>,
    /// Data and hash block size; default 4096 (veritysetup's default). systemd-repart 252 uses
    /// 512.
    #[serde(default)]
    pub block_size: Option<u32>,
}

/// Where a file's content comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileSource {
    /// A file on the build machine (resolved path).
    Path(PathBuf),
    Content(Vec<u8>),
    /// Only the mode of a file of the tree is set.
    ModeOnly,
}

/// A checked file entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// Relative to the image root, e.g. `usr/bin/hello`.
    pub path: String,
    pub source: FileSource,
    pub mode: Option<u32>,
}

/// A fully checked recipe: paths resolved, names and release fields valid.
#[derive(Debug, Clone)]
pub struct Extension {
    pub kind: ExtensionKind,
    pub name: ImageName,
    pub version: String,
    pub tree: Option<PathBuf>,
    pub files: Vec<FileEntry>,
    pub release: ExtensionRelease,
    pub filesystem: Filesystem,
    pub architecture: Architecture,
    pub signing: Option<SigningSpec>,
    pub verity_salt: Option<Vec<u8>>,
    pub verity_uuid: Option<Guid>,
    pub verity_block_size: u32,
}

impl Extension {
    /// The image's file name: `NAME.raw`, or `NAME.confext.raw`.
    pub fn image_file_name(&self) -> String {
        format!("{}{}", self.name, self.kind.image_suffix())
    }
}

fn parse_mode(s: &str) -> Option<u32> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    if digits.is_empty() || digits.len() > 4 {
        return None;
    }
    u32::from_str_radix(digits, 8).ok().filter(|m| *m <= 0o7777)
}

impl ExtensionSpec {
    /// Reads and checks a recipe file; relative paths resolve against its folder.
    pub fn load(path: &Path) -> Result<Extension, Error> {
        let data = imgctl_fsio::read_bounded(path, imgctl_fsio::caps::POLICY, "a recipe")?;
        let spec = ExtensionSpec::parse(&data).map_err(|message| Error::Recipe {
            path: path.to_owned(),
            message,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        // Every error names the recipe: its own checks, and those of the parts it names
        // (image name, extension-release, hierarchy, files).
        spec.check(base).map_err(|e| match e {
            Error::Recipe { message, .. } => Error::Recipe {
                path: path.to_owned(),
                message,
            },
            other => Error::InRecipe {
                path: path.to_owned(),
                error: Box::new(other),
            },
        })
    }

    /// Parses recipe text under the rules every recipe reader shares (UTF-8, a byte order mark
    /// stripped, nesting bounded: `imgctl_fsio::yaml`); the error is one line, with the line
    /// number where there is one.
    pub fn parse(data: &[u8]) -> Result<ExtensionSpec, String> {
        let text = imgctl_fsio::yaml::checked_text(data).map_err(|e| e.to_string())?;
        let spec: ExtensionSpec = serde_yaml::from_str(text).map_err(|e| {
            let message = imgctl_fsio::yaml::plain_serde_message(&e.to_string());
            match e.location() {
                Some(l) if !message.contains(" at line ") => {
                    format!("line {}: {message}", l.line())
                }
                _ => message,
            }
        })?;
        if matches!(spec.version.as_str(), "" | "null" | "Null" | "NULL" | "~") {
            let line = text
                .lines()
                .position(|l| l.starts_with("version:"))
                .map(|i| format!("line {}: ", i + 1))
                .unwrap_or_default();
            return Err(format!(
                "{line}version is empty or null; give a version such as \"1.10\""
            ));
        }
        Ok(spec)
    }

    /// Checks every field; relative paths resolve against `base`.
    pub fn check(self, base: &Path) -> Result<Extension, Error> {
        let recipe_err = |message: String| Error::Recipe {
            path: PathBuf::new(),
            message,
        };
        let name = ImageName::new(&self.name)?;
        if self.version.is_empty()
            || self
                .version
                .contains(|c: char| c.is_whitespace() || c == '/')
        {
            return Err(recipe_err(format!(
                "version {:?} must be non-empty, without spaces or slashes",
                self.version
            )));
        }
        let release = ExtensionRelease::new(self.kind, self.release.pairs())?;
        let release_arch = release
            .get("ARCHITECTURE")
            .filter(|a| *a != "_any")
            .map(str::to_owned);
        let arch_name = match (&self.architecture, release_arch) {
            (Some(a), Some(r)) if *a != r => {
                return Err(recipe_err(format!(
                    "architecture {a:?} differs from release.ARCHITECTURE {r:?}"
                )))
            }
            (Some(a), _) => Some(a.clone()),
            (None, r) => r,
        };
        let architecture = match arch_name {
            Some(a) => Architecture::from_name(&a).ok_or_else(|| {
                recipe_err(format!(
                    "architecture {a:?}: DPS types known here: x86-64, arm64"
                ))
            })?,
            None => Architecture::native().ok_or_else(|| {
                recipe_err("the host architecture has no DPS types here; set architecture".into())
            })?,
        };
        let mut seen = BTreeSet::new();
        let mut files = Vec::new();
        for f in self.files {
            let rel = f
                .path
                .strip_prefix('/')
                .ok_or_else(|| recipe_err(format!("files: path {:?} must be absolute", f.path)))?
                .to_owned();
            check_tree_path(self.kind, &rel)?;
            if !seen.insert(rel.clone()) {
                return Err(recipe_err(format!("files: {} listed twice", f.path)));
            }
            let mode = match &f.mode {
                None => None,
                Some(m) => Some(parse_mode(m).ok_or_else(|| {
                    recipe_err(format!(
                        "files: {}: mode {m:?} is not octal like \"0755\"",
                        f.path
                    ))
                })?),
            };
            let source = match (f.source, f.content) {
                (Some(_), Some(_)) => {
                    return Err(recipe_err(format!(
                        "files: {}: give source or content, not both",
                        f.path
                    )))
                }
                (Some(s), None) => FileSource::Path(base.join(s)),
                (None, Some(c)) => FileSource::Content(c.into_bytes()),
                (None, None) if mode.is_some() => FileSource::ModeOnly,
                (None, None) => {
                    return Err(recipe_err(format!(
                        "files: {}: needs source, content or mode",
                        f.path
                    )))
                }
            };
            files.push(FileEntry {
                path: rel,
                source,
                mode,
            });
        }
        let verity_salt = match &self.verity.salt {
            None => None,
            Some(s) => {
                let salt = hex::decode(s)
                    .map_err(|_| recipe_err(format!("verity.salt {s:?} is not hex")))?;
                if salt.len() > crate::verity::MAX_SALT_SIZE {
                    return Err(recipe_err("verity.salt is longer than 256 bytes".into()));
                }
                Some(salt)
            }
        };
        let verity_uuid = match &self.verity.uuid {
            None => None,
            Some(u) => Some(
                u.parse::<Guid>()
                    .map_err(|e| recipe_err(format!("verity.uuid: {e}")))?,
            ),
        };
        let verity_block_size = self.verity.block_size.unwrap_or(4096);
        if !verity_block_size.is_power_of_two() || !(512..=4096).contains(&verity_block_size) {
            return Err(recipe_err(format!(
                "verity.block_size {verity_block_size} must be 512, 1024, 2048 or 4096"
            )));
        }
        Ok(Extension {
            kind: self.kind,
            name,
            version: self.version,
            tree: self.tree.map(|t| base.join(t)),
            files,
            release,
            filesystem: self.filesystem,
            architecture,
            signing: self.signing.map(|s| SigningSpec {
                // A PKCS#11 URI names a key on a token, not a file beside the recipe.
                key: if s.key.to_str().is_some_and(imgctl_pkcs11::is_pkcs11_uri) {
                    s.key
                } else {
                    base.join(s.key)
                },
                certificate: base.join(s.certificate),
            }),
            verity_salt,
            verity_uuid,
            verity_block_size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Extension, Error> {
        let spec = ExtensionSpec::parse(yaml.as_bytes()).map_err(|message| Error::Recipe {
            path: PathBuf::new(),
            message,
        })?;
        spec.check(Path::new("/r"))
    }

    const BASE: &str = "kind: sysext\nname: d\nversion: '1'\nrelease: {ID: _any}\n";

    #[test]
    fn messages_name_no_rust_types_and_null_versions_point_at_their_line() {
        for (text, line) in [
            ("- a\n- b\n".to_owned(), "line 1"),
            (
                "kind: sysext\nname: d\nversion: [1]\nrelease: {ID: _any}\n".into(),
                "line 3",
            ),
            (
                "kind: sysext\nname: d\nversion: '1'\nrelease: [1]\n".into(),
                "line 4",
            ),
            (format!("{BASE}files: [1]\n"), "line 5"),
            (format!("{BASE}signing: 1\n"), "line 5"),
            (format!("{BASE}verity: {{block_size: x}}\n"), "line 5"),
            (format!("{BASE}filesystem: [x]\n"), "line 5"),
            (
                "kind: [1]\nname: d\nversion: '1'\nrelease: {ID: _any}\n".into(),
                "line 1",
            ),
            (
                "kind: sysext\nname: d\nrelease: {ID: _any}\nversion: null\n".into(),
                "line 4",
            ),
            (
                "kind: sysext\nname: d\nrelease: {ID: _any}\nversion: ~\n".into(),
                "line 4",
            ),
            (
                "kind: sysext\nname: d\nrelease: {ID: _any}\nversion:\n".into(),
                "line 4",
            ),
        ] {
            let e = parse(&text).unwrap_err().to_string();
            for leak in ["struct", "enum", "untagged", "Spec", "u32", "ExtensionKind"] {
                assert!(!e.contains(leak), "{text:?}: {e}");
            }
            assert!(e.contains(line), "{text:?}: want {line}: {e}");
        }
    }

    #[test]
    fn a_byte_order_mark_is_accepted_and_deep_nesting_refused_quickly() {
        let e = parse(&format!("\u{feff}{BASE}")).unwrap();
        assert_eq!(e.version, "1");
        let started = std::time::Instant::now();
        let deep = format!(
            "{BASE}files: {}{}\n",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert!(deep.len() > 200_000);
        let e = parse(&deep).unwrap_err().to_string();
        assert!(e.contains("line 5") && e.contains("nest"), "{e}");
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn minimal_recipe() {
        let e = parse(
            "kind: sysext\nname: demo\nversion: '1'\nrelease: {ID: _any, ARCHITECTURE: arm64}\n\
             files: [{path: /usr/bin/x, content: hi, mode: '0755'}]\n",
        )
        .unwrap();
        assert_eq!(e.architecture, Architecture::Arm64);
        assert_eq!(e.files[0].mode, Some(0o755));
        assert_eq!(e.files[0].path, "usr/bin/x");
        assert_eq!(e.image_file_name(), "demo.raw");
    }

    #[test]
    fn rejects_unknown_keys_bad_modes_and_foreign_paths() {
        assert!(
            parse("kind: sysext\nname: d\nversion: '1'\nrelease: {ID: _any}\nbogus: 1\n").is_err()
        );
        assert!(parse(
            "kind: sysext\nname: d\nversion: '1'\nrelease: {ID: _any}\n\
                       files: [{path: /usr/x, content: a, mode: \"0999\"}]\n"
        )
        .is_err());
        let e = parse(
            "kind: sysext\nname: d\nversion: '1'\nrelease: {ID: _any}\n\
                       files: [{path: /usr/x, content: a, mode: 0755}]\n",
        )
        .unwrap();
        assert_eq!(e.files[0].mode, Some(0o755));
        let e = parse(
            "kind: confext\nname: d\nversion: '1'\nrelease: {ID: _any}\n\
                       files: [{path: /usr/x, content: a}]\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("only contain /etc"), "{e}");
        assert!(parse("kind: sysext\nname: a/b\nversion: '1'\nrelease: {ID: _any}\n").is_err());
    }
}
