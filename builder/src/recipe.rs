//! Recipes: the declarative YAML that describes a UKI.
//!
//! ```yaml
//! name: demo                      # image name: [A-Za-z0-9._-], no leading dot
//! version: "1"
//! os-release:                     # fields, written as an os-release file (or os-release-file: PATH)
//!   ID: demo
//!   VERSION_ID: 1
//! kernel: ../.cache/demo/vmlinuz  # the .linux section
//! initrd:                         # all optional; archives first, then the packed tree
//!   archives: [early-ucode.cpio]  # existing initrd files, concatenated (each padded to 4 bytes)
//!   tree: demo/initrd             # a file tree packed as a deterministic cpio (newc)
//!   files:                        # extra files placed into the packed tree
//!     - { src: /bin/busybox, dst: /bin/busybox, mode: "0755" }
//!   compression: none             # none | gzip
//! cmdline: console=ttyS0 quiet
//! uname: 6.1.0-28-amd64           # default: read from the kernel's version string
//! sbat: |                         # lines merged into the stub's .sbat
//!   demo,1,Demo,demo,1,https://example.org
//! splash: splash.bmp              # optional .splash, .dtb and .pcrpkey sections
//! dtb: board.dtb
//! pcrpkey: pcr-public.pem
//! stub: /usr/lib/systemd/boot/efi/linuxx64.efi.stub   # the default
//! ```
//!
//! Relative paths resolve against the recipe's folder. Unknown keys, wrong types and missing
//! files are errors that name the file, the line and the key. A [`Recipe`] is fully checked:
//! every path exists and every value is valid.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::Error;

/// Debian's systemd-stub, the default stub.
pub const DEFAULT_STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawRecipe {
    name: String,
    version: Scalar,
    #[serde(default)]
    os_release: Option<serde_yaml::Mapping>,
    #[serde(default)]
    os_release_file: Option<String>,
    kernel: String,
    #[serde(default)]
    initrd: Option<RawInitrd>,
    #[serde(default)]
    cmdline: Option<String>,
    #[serde(default)]
    uname: Option<String>,
    #[serde(default)]
    sbat: Option<String>,
    #[serde(default)]
    splash: Option<String>,
    #[serde(default)]
    dtb: Option<String>,
    #[serde(default)]
    pcrpkey: Option<String>,
    #[serde(default)]
    stub: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawInitrd {
    #[serde(default)]
    archives: Vec<String>,
    #[serde(default)]
    tree: Option<String>,
    #[serde(default)]
    files: Vec<RawFile>,
    #[serde(default)]
    compression: Compression,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    src: String,
    dst: String,
    #[serde(default)]
    mode: Option<Scalar>,
}

/// A YAML scalar that may be written as a string or a number (`version: 1`, `mode: "0755"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Scalar {
    String(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl Scalar {
    fn text(&self) -> String {
        match self {
            Scalar::String(s) => s.clone(),
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Bool(b) => b.to_string(),
        }
    }
}

/// Initrd compression. The Linux kernel unpacks gzip when built with `CONFIG_RD_GZIP` (Debian
/// kernels are).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    None,
    Gzip,
}

/// A file placed into the initrd tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraFile {
    pub src: PathBuf,
    /// Absolute path inside the initrd, normalised (no `.`/`..`, no trailing slash).
    pub dst: String,
    /// Permission bits; default: the source file's.
    pub mode: Option<u32>,
}

/// The initrd: existing archives, then a packed tree.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InitrdSpec {
    pub archives: Vec<PathBuf>,
    pub tree: Option<PathBuf>,
    pub files: Vec<ExtraFile>,
    pub compression: Compression,
}

impl InitrdSpec {
    /// Whether anything is packed from a tree (as opposed to only concatenating archives).
    pub fn packs_tree(&self) -> bool {
        self.tree.is_some() || !self.files.is_empty()
    }
}

/// Where the os-release content comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OsRelease {
    /// `KEY=value` fields in recipe order.
    Fields(Vec<(String, String)>),
    File(PathBuf),
}

/// A fully checked recipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipe {
    /// The recipe file.
    pub path: PathBuf,
    /// The recipe file's bytes (its digest goes into the manifest).
    pub source: Vec<u8>,
    pub name: String,
    pub version: String,
    pub os_release: OsRelease,
    pub kernel: PathBuf,
    pub initrd: Option<InitrdSpec>,
    pub cmdline: Option<String>,
    pub uname: Option<String>,
    pub sbat: Option<String>,
    pub splash: Option<PathBuf>,
    pub dtb: Option<PathBuf>,
    pub pcrpkey: Option<PathBuf>,
    pub stub: PathBuf,
}

impl Recipe {
    /// Reads and checks a recipe file.
    pub fn load(path: &Path) -> Result<Recipe, Error> {
        let source = std::fs::read(path).map_err(|e| Error::io(path, "reading the recipe", e))?;
        Recipe::parse(path, source)
    }

    /// Checks recipe text that was read from `path` (used to resolve relative paths and in
    /// error messages).
    pub fn parse(path: &Path, source: Vec<u8>) -> Result<Recipe, Error> {
        let text = std::str::from_utf8(&source).map_err(|e| Error::Recipe {
            file: path.to_owned(),
            line: None,
            key: String::new(),
            message: format!("not UTF-8 text: {e}"),
        })?;
        let raw: RawRecipe = serde_yaml::from_str(text).map_err(|e| Error::Recipe {
            file: path.to_owned(),
            line: e.location().map(|l| l.line()),
            key: String::new(),
            message: e.to_string(),
        })?;
        let dir = path.parent().unwrap_or(Path::new("")).to_owned();
        let ctx = Ctx {
            file: path,
            text,
            dir: &dir,
        };

        if !valid_name(&raw.name) {
            return Err(ctx.err("name", &raw.name, "must be 1-64 characters of [A-Za-z0-9._-], not starting with '.' (it names the output folder and files)"));
        }
        let version = raw.version.text();
        if version.is_empty() || version.contains(['/', '\n']) {
            return Err(ctx.err(
                "version",
                &version,
                "must be non-empty and contain no '/' or newline",
            ));
        }
        let os_release = match (raw.os_release, raw.os_release_file) {
            (Some(_), Some(f)) => {
                return Err(ctx.err(
                    "os-release-file",
                    &f,
                    "give either os-release (fields) or os-release-file, not both",
                ))
            }
            (None, None) => {
                return Err(ctx.err(
                    "os-release",
                    "",
                    "missing: give os-release fields or an os-release-file",
                ))
            }
            (None, Some(f)) => OsRelease::File(ctx.file("os-release-file", &f)?),
            (Some(map), None) => {
                let mut fields = Vec::new();
                for (k, v) in map {
                    let key = match &k {
                        serde_yaml::Value::String(s) => s.clone(),
                        other => {
                            return Err(ctx.err(
                                "os-release",
                                &format!("{other:?}"),
                                "keys must be strings",
                            ))
                        }
                    };
                    if key.is_empty()
                        || !key
                            .bytes()
                            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
                    {
                        return Err(ctx.err(
                            "os-release",
                            &key,
                            "field names are upper-case letters, digits and '_'",
                        ));
                    }
                    let value: Scalar = serde_yaml::from_value(v).map_err(|e| {
                        ctx.err(
                            &format!("os-release.{key}"),
                            &key,
                            &format!("must be a scalar: {e}"),
                        )
                    })?;
                    fields.push((key, value.text()));
                }
                if fields.is_empty() {
                    return Err(ctx.err("os-release", "os-release", "has no fields"));
                }
                OsRelease::Fields(fields)
            }
        };
        let kernel = ctx.file("kernel", &raw.kernel)?;
        let initrd = match raw.initrd {
            None => None,
            Some(i) => {
                let archives = i
                    .archives
                    .iter()
                    .map(|a| ctx.file("initrd.archives", a))
                    .collect::<Result<Vec<_>, _>>()?;
                let tree = match i.tree {
                    None => None,
                    Some(t) => {
                        let p = ctx.resolve(&t);
                        if !p.is_dir() {
                            return Err(ctx.err(
                                "initrd.tree",
                                &t,
                                &format!("{} is not a directory", p.display()),
                            ));
                        }
                        Some(p)
                    }
                };
                let mut files = Vec::new();
                for f in i.files {
                    let src = ctx.file("initrd.files.src", &f.src)?;
                    let dst = normalise_dst(&f.dst).ok_or_else(|| {
                        ctx.err(
                            "initrd.files.dst",
                            &f.dst,
                            "must be an absolute path inside the initrd without '.' or '..'",
                        )
                    })?;
                    let mode = match f.mode {
                        None => None,
                        Some(m) => Some(parse_mode(&m.text()).ok_or_else(|| {
                            ctx.err(
                                "initrd.files.mode",
                                &m.text(),
                                "must be octal permission bits such as \"0755\"",
                            )
                        })?),
                    };
                    files.push(ExtraFile { src, dst, mode });
                }
                Some(InitrdSpec {
                    archives,
                    tree,
                    files,
                    compression: i.compression,
                })
            }
        };
        let opt_file =
            |key: &str, v: &Option<String>| v.as_ref().map(|v| ctx.file(key, v)).transpose();
        let stub = match raw.stub.as_deref() {
            None => PathBuf::from(DEFAULT_STUB),
            Some(s) => ctx.file("stub", s)?,
        };
        if raw.stub.is_none() && !stub.is_file() {
            return Err(ctx.err("stub", "stub", &format!(
                "the default stub {DEFAULT_STUB} is missing: install Debian's systemd-boot-efi (scripts/setup.sh) or set stub:"
            )));
        }
        if let Some(u) = &raw.uname {
            if u.is_empty() || u.contains(char::is_whitespace) {
                return Err(ctx.err("uname", u, "must be one word, as `uname -r` prints it"));
            }
        }
        Ok(Recipe {
            path: path.to_owned(),
            source: source.clone(),
            name: raw.name,
            version,
            os_release,
            kernel,
            initrd,
            cmdline: raw.cmdline,
            uname: raw.uname,
            sbat: raw.sbat,
            splash: opt_file("splash", &raw.splash)?,
            dtb: opt_file("dtb", &raw.dtb)?,
            pcrpkey: opt_file("pcrpkey", &raw.pcrpkey)?,
            stub,
        })
    }
}

struct Ctx<'a> {
    file: &'a Path,
    text: &'a str,
    dir: &'a Path,
}

impl Ctx<'_> {
    fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.dir.join(p)
        }
    }

    /// A path that must name an existing regular file.
    fn file(&self, key: &str, value: &str) -> Result<PathBuf, Error> {
        let p = self.resolve(value);
        match std::fs::metadata(&p) {
            Ok(m) if m.is_file() => Ok(p),
            Ok(_) => Err(self.err(
                key,
                value,
                &format!("{} is not a regular file", p.display()),
            )),
            Err(e) => Err(self.err(key, value, &format!("{}: {e}", p.display()))),
        }
    }

    /// An error about `key`, located at the first line that mentions `needle`.
    fn err(&self, key: &str, needle: &str, message: &str) -> Error {
        let leaf = key.rsplit('.').next().unwrap_or(key);
        let line = self
            .text
            .lines()
            .position(|l| !needle.is_empty() && l.contains(needle) && l.contains(leaf))
            .or_else(|| {
                self.text
                    .lines()
                    .position(|l| !needle.is_empty() && l.contains(needle))
            })
            .or_else(|| {
                self.text.lines().position(|l| {
                    l.trim_start()
                        .trim_start_matches("- ")
                        .starts_with(&format!("{leaf}:"))
                })
            })
            .map(|i| i + 1);
        Error::Recipe {
            file: self.file.to_owned(),
            line,
            key: key.to_owned(),
            message: message.to_owned(),
        }
    }
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && !n.starts_with('.')
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn normalise_dst(d: &str) -> Option<String> {
    if !d.starts_with('/') {
        return None;
    }
    let parts: Vec<&str> = d.split('/').filter(|p| !p.is_empty()).collect();
    if parts.is_empty() || parts.iter().any(|p| *p == "." || *p == "..") {
        return None;
    }
    Some(format!("/{}", parts.join("/")))
}

fn parse_mode(s: &str) -> Option<u32> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    let m = u32::from_str_radix(digits, 8).ok()?;
    (m <= 0o7777).then_some(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Recipe, Error> {
        let dir = std::env::temp_dir();
        Recipe::parse(&dir.join("r.yaml"), text.as_bytes().to_vec())
    }

    #[test]
    fn unknown_keys_are_reported_with_the_line() {
        let e = parse("name: x\nversion: 1\nkernal: /bin/sh\n").unwrap_err();
        let s = e.to_string();
        assert!(s.contains("r.yaml:3"), "{s}");
        assert!(s.contains("kernal"), "{s}");
    }

    #[test]
    fn wrong_types_are_reported_with_the_key() {
        let e = parse("name: [a]\nversion: 1\nkernel: /bin/sh\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("r.yaml:1"), "{e}");
        assert!(e.contains("name"), "{e}");
    }

    #[test]
    fn missing_files_name_the_key_and_line() {
        let e = parse("name: x\nversion: 1\nos-release: {ID: x}\nkernel: /nonexistent/vmlinuz\nstub: /bin/sh\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("r.yaml:4"), "{e}");
        assert!(e.contains("kernel"), "{e}");
        assert!(e.contains("/nonexistent/vmlinuz"), "{e}");
    }

    #[test]
    fn names_with_slashes_are_refused() {
        let e =
            parse("name: a/b\nversion: 1\nos-release: {ID: x}\nkernel: /bin/sh\nstub: /bin/sh\n")
                .unwrap_err();
        assert!(e.to_string().contains("name"), "{e}");
    }

    #[test]
    fn modes_and_destinations_are_normalised() {
        assert_eq!(parse_mode("0755"), Some(0o755));
        assert_eq!(parse_mode("0o644"), Some(0o644));
        assert_eq!(parse_mode("9"), None);
        assert_eq!(
            normalise_dst("/bin//busybox/").as_deref(),
            Some("/bin/busybox")
        );
        assert_eq!(normalise_dst("bin/x"), None);
        assert_eq!(normalise_dst("/a/../b"), None);
    }
}
