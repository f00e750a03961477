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
//! dtbauto: [board-a.dtb, board-b.dtb] # .dtbauto sections (systemd 257+ picks one per machine)
//! hwids: hwids/                   # .hwids from ukify's hwid JSON files (systemd 257+)
//! ucode: ucode.cpio                  # .ucode: early microcode cpio (systemd 256+)
//! pcrpkey: pcr-public.pem
//! profile: "ID=default\nTITLE=Default"   # multi-profile UKI (systemd 257+): profile 0's .profile
//! profiles:                          # profiles 1, 2, …, each .profile then its own sections
//!   - { profile: "ID=debug\nTITLE=Debug", cmdline: console=ttyS0 debug }
//! stub: /usr/lib/systemd/boot/efi/linuxx64.efi.stub   # the default; `imgctl` = our Rust stub
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
/// `stub: imgctl` selects our Rust stub: the file named by `$IMGCTL_STUB`, else
/// [`IMGCTL_STUB_PATH`] (relative to the working directory), built by scripts/build-stub.sh.
pub const IMGCTL_STUB: &str = "imgctl";
pub const IMGCTL_STUB_PATH: &str = "target/uki-stub/imgctl-stub.efi";

// The `expecting` texts below replace serde's "expected struct RawRecipe" in messages.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "kebab-case",
    expecting = "a recipe (a mapping of name, version, kernel, ...)"
)]
struct RawRecipe {
    name: String,
    /// A `String` field keeps a plain YAML scalar's text as written (serde_yaml hands the
    /// scalar's source text to `deserialize_str`): `1.10` stays "1.10", as in extension recipes.
    version: String,
    #[serde(default)]
    os_release: Option<Fields>,
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
    dtbauto: Vec<String>,
    #[serde(default)]
    hwids: Option<String>,
    #[serde(default)]
    ucode: Option<String>,
    #[serde(default)]
    pcrpkey: Option<String>,
    #[serde(default)]
    stub: Option<String>,
    #[serde(default)]
    profile: Option<String>,
    #[serde(default)]
    profiles: Vec<RawProfile>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a profile (a mapping of profile, cmdline)"
)]
struct RawProfile {
    profile: String,
    #[serde(default)]
    cmdline: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "kebab-case",
    expecting = "a mapping of archives, tree, files, compression"
)]
pub(crate) struct RawInitrd {
    #[serde(default)]
    archives: Vec<String>,
    #[serde(default)]
    tree: Option<String>,
    #[serde(default)]
    files: Vec<RawFile>,
    #[serde(default)]
    compression: Compression,
}

impl RawInitrd {
    /// The checked initrd: every path exists, destinations are plain and distinct.
    pub(crate) fn check(self, ctx: &Ctx<'_>) -> Result<InitrdSpec, Error> {
        let archives = self
            .archives
            .iter()
            .map(|a| ctx.file("initrd.archives", a))
            .collect::<Result<Vec<_>, _>>()?;
        let tree = match self.tree {
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
        let mut files: Vec<ExtraFile> = Vec::new();
        for f in self.files {
            let src = ctx.file("initrd.files.src", &f.src)?;
            let dst = check_dst(&f.dst)
                .map_err(|why| ctx.err("initrd.files.dst", &f.dst.replace('\0', "\\0"), &why))?;
            for other in &files {
                let clash = if other.dst == dst {
                    Some("is given twice".to_owned())
                } else if dst.starts_with(&format!("{}/", other.dst)) {
                    Some(format!("lies under {}, which is a file", other.dst))
                } else if other.dst.starts_with(&format!("{dst}/")) {
                    Some(format!("is a file but {} lies under it", other.dst))
                } else {
                    None
                };
                if let Some(why) = clash {
                    return Err(ctx.err("initrd.files.dst", &dst, &format!("{dst} {why}")));
                }
            }
            let mode = match f.mode {
                None => None,
                Some(m) => Some(parse_mode(&m).ok_or_else(|| {
                    ctx.err(
                        "initrd.files.mode",
                        &m,
                        "must be octal permission bits such as \"0755\"",
                    )
                })?),
            };
            files.push(ExtraFile { src, dst, mode });
        }
        Ok(InitrdSpec {
            archives,
            tree,
            files,
            compression: self.compression,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "an initrd file (a mapping of src, dst, mode)"
)]
struct RawFile {
    src: String,
    dst: String,
    /// Octal text as written (`0755`, `"0755"` and `755` all mean rwxr-xr-x).
    #[serde(default)]
    mode: Option<String>,
}

/// `os-release:` fields in recipe order; keys and values are scalars kept as written.
#[derive(Debug, Default)]
struct Fields(Vec<(String, String)>);

impl<'de> Deserialize<'de> for Fields {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Fields;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a mapping of os-release fields (KEY: value)")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Fields, A::Error> {
                let mut out: Vec<(String, String)> = Vec::new();
                while let Some(k) = m.next_key::<String>()? {
                    let v: String = m.next_value()?;
                    if out.iter().any(|(o, _)| *o == k) {
                        return Err(serde::de::Error::custom(format!(
                            "os-release field {k} is given twice"
                        )));
                    }
                    out.push((k, v));
                }
                Ok(Fields(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// Whether `data` could be a recipe at all, for commands that take "a UKI or a recipe": UTF-8
/// text without NUL whose first line of content is a YAML mapping (`key:`, `{`, or `---`).
/// `Err` says what it is instead, e.g. "not UTF-8 text".
pub fn looks_like_recipe(data: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(data).map_err(|_| "not UTF-8 text".to_owned())?;
    if text.contains('\0') {
        return Err("text with NUL bytes".into());
    }
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let first = text
        .lines()
        .map(str::trim_end)
        .find(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with("%"));
    let Some(first) = first else {
        return Err("empty text".into());
    };
    let key_len = first
        .bytes()
        .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
        .count();
    let quoted_key = ['"', '\''].into_iter().any(|q| {
        first
            .strip_prefix(q)
            .and_then(|rest| rest.split_once(q))
            .is_some_and(|(_, after)| after.trim_start().starts_with(':'))
    });
    let mapping = first.starts_with('{')
        || first.starts_with("---")
        || quoted_key
        || (key_len > 0 && first[key_len..].starts_with(':'));
    if mapping {
        Ok(())
    } else {
        Err("text that is not a YAML mapping of name, version, kernel, ...".into())
    }
}

/// serde's messages, in the words a recipe author reads (the same rewording for every recipe).
pub(crate) fn yaml_message(e: &serde_yaml::Error) -> String {
    imgctl_fsio::yaml::plain_serde_message(&e.to_string())
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
    /// Permission bits; default: normalised like the tree's (0755 when the source has any x bit,
    /// else 0644), so the checkout's umask does not change the initrd.
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
    /// `.dtbauto` sections, in this order (systemd 257+ selects one by the machine's devicetree).
    pub dtbauto: Vec<PathBuf>,
    /// `.hwids`: a folder of ukify hwid JSON files (`ukify --hwids DIR`, systemd 257+).
    pub hwids: Option<PathBuf>,
    /// `.ucode`: an early microcode cpio (systemd 256+).
    pub ucode: Option<PathBuf>,
    pub pcrpkey: Option<PathBuf>,
    pub stub: PathBuf,
    /// `.profile` of the base (profile 0) of a multi-profile UKI (systemd 257+).
    pub profile: Option<String>,
    /// Profiles 1, 2, …: each a `.profile` text and the sections it overrides.
    pub profiles: Vec<Profile>,
}

/// One extra profile of a multi-profile UKI, as `ukify --join-profile` adds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// The `.profile` text (`ID=…`, `TITLE=…`).
    pub profile: String,
    /// Its own `.cmdline`, overriding the base's when it is booted.
    pub cmdline: Option<String>,
}

/// A recipe file's YAML, decoded into its raw form: UTF-8, no byte order mark, nesting bounded
/// (the rules every recipe reader shares); errors name the file and line.
pub(crate) fn decode_yaml<'a, T: serde::de::DeserializeOwned>(
    path: &Path,
    source: &'a [u8],
) -> Result<(T, &'a str), Error> {
    let text = imgctl_fsio::yaml::checked_text(source).map_err(|e| Error::Recipe {
        file: path.to_owned(),
        line: e.line,
        key: String::new(),
        message: e.message,
    })?;
    let raw = serde_yaml::from_str(text).map_err(|e| Error::Recipe {
        file: path.to_owned(),
        line: e.location().map(|l| l.line()),
        key: String::new(),
        message: yaml_message(&e),
    })?;
    Ok((raw, text))
}

impl Recipe {
    /// Reads and checks a recipe file.
    pub fn load(path: &Path) -> Result<Recipe, Error> {
        let source = imgctl_fsio::read_bounded(path, imgctl_fsio::caps::POLICY, "a recipe")?;
        Recipe::parse(path, source)
    }

    /// Checks recipe text that was read from `path` (used to resolve relative paths and in
    /// error messages).
    pub fn parse(path: &Path, source: Vec<u8>) -> Result<Recipe, Error> {
        let (raw, text): (RawRecipe, &str) = decode_yaml(path, &source)?;
        let dir = path.parent().unwrap_or(Path::new("")).to_owned();
        let ctx = Ctx {
            file: path,
            text,
            dir: &dir,
        };

        if !valid_name(&raw.name) {
            return Err(ctx.err("name", &raw.name, "must be 1-64 characters of [A-Za-z0-9._-], not starting with '.' (it names the output folder and files)"));
        }
        let version = raw.version;
        if matches!(version.as_str(), "null" | "Null" | "NULL" | "~") {
            return Err(ctx.err(
                "version",
                &version,
                "is null; give a version such as \"1.10\"",
            ));
        }
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
            (Some(Fields(fields)), None) => {
                for (key, _) in &fields {
                    let mut bytes = key.bytes();
                    let first_ok = bytes
                        .next()
                        .is_some_and(|b| b.is_ascii_uppercase() || b == b'_');
                    if !first_ok
                        || !bytes.all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
                    {
                        return Err(ctx.err(
                            "os-release",
                            key,
                            "field names are upper-case letters, digits and '_', not starting with a digit",
                        ));
                    }
                }
                if fields.is_empty() {
                    return Err(ctx.err("os-release", "os-release", "has no fields"));
                }
                OsRelease::Fields(fields)
            }
        };
        let kernel = ctx.file("kernel", &raw.kernel)?;
        let initrd = raw.initrd.map(|i| i.check(&ctx)).transpose()?;
        let opt_file =
            |key: &str, v: &Option<String>| v.as_ref().map(|v| ctx.file(key, v)).transpose();
        let stub = match raw.stub.as_deref() {
            None => PathBuf::from(DEFAULT_STUB),
            Some(IMGCTL_STUB) => {
                let p = std::env::var_os("IMGCTL_STUB")
                    .map_or_else(|| PathBuf::from(IMGCTL_STUB_PATH), PathBuf::from);
                if !p.is_file() {
                    return Err(ctx.err("stub", IMGCTL_STUB, &format!(
                        "imgctl-stub is not built at {}: run scripts/build-stub.sh (or set IMGCTL_STUB)",
                        p.display()
                    )));
                }
                p
            }
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
        for (key, text) in raw.profile.iter().map(|p| ("profile", p)).chain(
            raw.profiles
                .iter()
                .map(|p| ("profiles.profile", &p.profile)),
        ) {
            if text.trim().is_empty() || text.contains('\0') {
                return Err(ctx.err(
                    key,
                    text,
                    "must be non-empty text (ID=..., TITLE=...) without NUL",
                ));
            }
        }
        if !raw.profiles.is_empty() && raw.profile.is_none() {
            return Err(ctx.err("profile", "profiles", "profiles: needs profile: (the base profile 0's .profile text), as ukify --join-profile needs --profile"));
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
            dtbauto: raw
                .dtbauto
                .iter()
                .map(|v| ctx.file("dtbauto", v))
                .collect::<Result<_, _>>()?,
            hwids: match &raw.hwids {
                None => None,
                Some(h) => {
                    let p = ctx.resolve(h);
                    if !p.is_dir() {
                        return Err(ctx.err(
                            "hwids",
                            h,
                            &format!("{} is not a folder (of hwid JSON files)", p.display()),
                        ));
                    }
                    Some(p)
                }
            },
            ucode: opt_file("ucode", &raw.ucode)?,
            pcrpkey: opt_file("pcrpkey", &raw.pcrpkey)?,
            stub,
            profile: raw.profile,
            profiles: raw
                .profiles
                .into_iter()
                .map(|p| Profile {
                    profile: p.profile,
                    cmdline: p.cmdline,
                })
                .collect(),
        })
    }
}

pub(crate) struct Ctx<'a> {
    pub(crate) file: &'a Path,
    pub(crate) text: &'a str,
    pub(crate) dir: &'a Path,
}

impl Ctx<'_> {
    pub(crate) fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.dir.join(p)
        }
    }

    /// A path that must name an existing regular file.
    pub(crate) fn file(&self, key: &str, value: &str) -> Result<PathBuf, Error> {
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
    pub(crate) fn err(&self, key: &str, needle: &str, message: &str) -> Error {
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

pub(crate) fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && !n.starts_with('.')
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Longest initrd destination (the kernel's PATH_MAX, which the unpacker applies).
const MAX_DST: usize = 4095;

/// An initrd destination as written: `/` then non-empty components, none `.` or `..`, no NUL
/// or other control characters (the kernel's unpacker would cut the name or create something
/// else than the recipe says).
pub(crate) fn check_dst(d: &str) -> Result<String, String> {
    if let Some(c) = d.chars().find(|c| c.is_control()) {
        return Err(format!(
            "contains the control character {:?}; a destination is a plain path",
            c
        ));
    }
    let Some(rel) = d.strip_prefix('/') else {
        return Err("must be an absolute path inside the initrd (starting with /)".into());
    };
    if d.len() > MAX_DST {
        return Err(format!("is {} bytes long; at most {MAX_DST}", d.len()));
    }
    for part in rel.split('/') {
        match part {
            "" => return Err("has an empty component ('//' or a trailing '/')".into()),
            "." | ".." => return Err(format!("has a '{part}' component")),
            _ => {}
        }
    }
    Ok(d.to_owned())
}

/// Octal permission bits, read as extension recipes read them.
pub(crate) fn parse_mode(s: &str) -> Option<u32> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    if digits.is_empty() || digits.len() > 4 {
        return None;
    }
    u32::from_str_radix(digits, 8).ok().filter(|m| *m <= 0o7777)
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
    fn stub_imgctl_resolves_through_imgctl_stub() {
        // The only test that touches IMGCTL_STUB.
        std::env::set_var("IMGCTL_STUB", "/bin/sh");
        let r = parse("name: x\nversion: 1\nos-release: {ID: x}\nkernel: /bin/sh\nstub: imgctl\n")
            .unwrap();
        assert_eq!(r.stub, PathBuf::from("/bin/sh"));
        std::env::set_var("IMGCTL_STUB", "/nonexistent/imgctl-stub.efi");
        let e = parse("name: x\nversion: 1\nos-release: {ID: x}\nkernel: /bin/sh\nstub: imgctl\n")
            .unwrap_err()
            .to_string();
        std::env::remove_var("IMGCTL_STUB");
        assert!(e.contains("scripts/build-stub.sh"), "{e}");
        assert!(e.contains("r.yaml:5"), "{e}");
    }

    #[test]
    fn names_with_slashes_are_refused() {
        let e =
            parse("name: a/b\nversion: 1\nos-release: {ID: x}\nkernel: /bin/sh\nstub: /bin/sh\n")
                .unwrap_err();
        assert!(e.to_string().contains("name"), "{e}");
    }

    const TAIL: &str = "kernel: /bin/sh\nstub: /bin/sh\n";

    #[test]
    fn scalars_keep_the_text_as_written() {
        let r = parse(&format!(
            "name: x\nversion: 1.10\nos-release: {{ID: x, VERSION_ID: 1.0, LEVEL: 010, ON: yes}}\n{TAIL}"
        ))
        .unwrap();
        assert_eq!(r.version, "1.10");
        assert_eq!(
            r.os_release,
            OsRelease::Fields(vec![
                ("ID".into(), "x".into()),
                ("VERSION_ID".into(), "1.0".into()),
                ("LEVEL".into(), "010".into()),
                ("ON".into(), "yes".into()),
            ])
        );
        let r = parse(&format!(
            "name: x\nversion: 1.0\nos-release: {{ID: x}}\n{TAIL}"
        ))
        .unwrap();
        assert_eq!(r.version, "1.0");
    }

    #[test]
    fn type_errors_name_no_rust_types() {
        for (text, line) in [
            (
                format!("name: x\nversion: [1]\nos-release: {{ID: x}}\n{TAIL}"),
                2,
            ),
            (
                format!("name: x\nversion: 1\nos-release: {{ID: [x]}}\n{TAIL}"),
                3,
            ),
            ("- a\n- b\n".to_owned(), 1),
            (
                format!("name: x\nversion: 1\nos-release: {{ID: x}}\ninitrd: [1]\n{TAIL}"),
                4,
            ),
        ] {
            let e = parse(&text).unwrap_err().to_string();
            for leak in ["untagged", "Scalar", "Raw", "struct"] {
                assert!(!e.contains(leak), "{e}");
            }
            assert!(e.contains(&format!("r.yaml:{line}")), "{e}");
        }
    }

    #[test]
    fn a_null_version_points_at_its_line() {
        for v in ["null", "~"] {
            let e = parse(&format!(
                "name: x\nos-release: {{ID: x}}\nversion: {v}\n{TAIL}"
            ))
            .unwrap_err()
            .to_string();
            assert!(e.contains("r.yaml:3: version:"), "{e}");
        }
        let e = parse(&format!("name: x\nos-release: {{ID: x}}\nversion:\n{TAIL}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("r.yaml:3: version:"), "{e}");
    }

    #[test]
    fn a_byte_order_mark_is_accepted() {
        let r = parse(&format!(
            "\u{feff}name: x\nversion: 2\nos-release: {{ID: x}}\n{TAIL}"
        ))
        .unwrap();
        assert_eq!((r.name.as_str(), r.version.as_str()), ("x", "2"));
    }

    #[test]
    fn duplicate_and_bad_os_release_keys_are_refused() {
        let e = parse(&format!(
            "name: x\nversion: 1\nos-release: {{ID: x, ID: y}}\n{TAIL}"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("twice"), "{e}");
        let e = parse(&format!(
            "name: x\nversion: 1\nos-release: {{1: x}}\n{TAIL}"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("field names"), "{e}");
    }

    #[test]
    fn deep_nesting_is_refused_quickly() {
        let started = std::time::Instant::now();
        for text in [
            format!(
                "name: x\nversion: 1\ncmdline: {}{}\n",
                "[".repeat(100_000),
                "]".repeat(100_000)
            ),
            format!("name: x\nversion: 1\ncmdline: {}\n", "{a: ".repeat(50_000)),
            (0..2000)
                .map(|i| format!("{}- \n", " ".repeat(i * 2)))
                .collect(),
            format!("name: x\nversion: 1\ncmdline:\n{}x\n", "- ".repeat(100_000)),
        ] {
            let e = parse(&text).unwrap_err().to_string();
            assert!(e.contains("nest"), "{e}");
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        // Quotes and comments do not count.
        parse(&format!(
            "name: x\nversion: 1\nos-release: {{ID: x}}\ncmdline: \"{}\" # {}\n{TAIL}",
            "[".repeat(100),
            "{".repeat(100)
        ))
        .unwrap();
    }

    #[test]
    fn only_yaml_mappings_look_like_recipes() {
        for ok in [
            &b"name: x\n"[..],
            b"# c\n\nkernel: k\n",
            b"\xef\xbb\xbfname: x",
            b"{name: x}",
            b"---\nname: x",
            b"\"name\": x",
            b"'name' : x",
        ] {
            assert_eq!(looks_like_recipe(ok), Ok(()), "{ok:?}");
        }
        for (bad, why) in [
            (&[0x5au8; 3000][..], "not a YAML mapping"),
            (b"\xff\xfe\x00", "not UTF-8"),
            (b"name: x\0", "NUL"),
            (b"", "empty"),
            (b"- a\n- b\n", "not a YAML mapping"),
            (b"\"just a string\"\n", "not a YAML mapping"),
        ] {
            assert!(looks_like_recipe(bad).unwrap_err().contains(why), "{bad:?}");
        }
    }

    #[test]
    fn endless_recipes_are_refused() {
        let e = Recipe::load(Path::new("/dev/zero"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/dev/zero"), "{e}");
    }

    #[test]
    fn modes_and_destinations_are_normalised() {
        assert_eq!(parse_mode("0755"), Some(0o755));
        assert_eq!(parse_mode("0o644"), Some(0o644));
        assert_eq!(parse_mode("9"), None);
        assert_eq!(check_dst("/bin/busybox").as_deref(), Ok("/bin/busybox"));
        for bad in [
            "bin/x",
            "/a/../b",
            "/a/./b",
            "/bin//busybox",
            "/bin/",
            "/",
            "/a\0b",
            "/a\nb",
        ] {
            assert!(check_dst(bad).is_err(), "{bad:?}");
        }
        assert!(check_dst(&format!("/{}", "a".repeat(5000))).is_err());
    }

    #[test]
    fn initrd_destinations_that_clash_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"x").unwrap();
        let recipe = |files: &str| {
            Recipe::parse(
                &dir.path().join("r.yaml"),
                format!(
                    "name: x\nversion: 1\nos-release: {{ID: x}}\nkernel: f\nstub: f\ninitrd:\n  files:\n{files}"
                )
                .into_bytes(),
            )
        };
        recipe("    - { src: f, dst: /a/b }\n    - { src: f, dst: /a/c }\n").unwrap();
        for (files, needle) in [
            (
                "    - { src: f, dst: /a }\n    - { src: f, dst: /a }\n",
                "given twice",
            ),
            (
                "    - { src: f, dst: /a }\n    - { src: f, dst: /a/b }\n",
                "which is a file",
            ),
            (
                "    - { src: f, dst: /a/b }\n    - { src: f, dst: /a }\n",
                "lies under it",
            ),
            ("    - { src: f, dst: \"/a\\0b\" }\n", "control character"),
            ("    - { src: f, dst: /a/../b }\n", "'..'"),
        ] {
            let e = recipe(files).unwrap_err().to_string();
            assert!(e.contains(needle) && e.contains("r.yaml:"), "{files}: {e}");
            assert!(!e.contains('\0'), "{e:?}");
        }
    }
}
