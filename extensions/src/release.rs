//! Extension kinds, image names, extension-release files and the hierarchies an extension may
//! touch (UAPI Extension Image spec; systemd-sysext(8); `reference/systemd.md` §6.1).
//!
//! - sysext: extends `/usr` and `/opt`; release file `/usr/lib/extension-release.d/extension-release.NAME`.
//! - confext: extends `/etc`; release file `/etc/extension-release.d/extension-release.NAME`.
//!
//! `NAME` must equal the image file name without its suffix (`.raw`, `.sysext.raw`,
//! `.confext.raw`), otherwise systemd refuses the image (unless the file carries the
//! `user.extension-release.strict=0` xattr, which we never rely on). The file uses os-release
//! syntax: `KEY=value` lines, values double-quoted when they contain spaces.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Error;

/// System extension (`/usr`, `/opt`) or configuration extension (`/etc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", expecting = "sysext or confext")]
pub enum ExtensionKind {
    Sysext,
    Confext,
}

impl ExtensionKind {
    /// Top-level directories the tree may contain.
    pub fn allowed_top_dirs(self) -> &'static [&'static str] {
        match self {
            ExtensionKind::Sysext => &["usr", "opt"],
            ExtensionKind::Confext => &["etc"],
        }
    }

    /// Directory (relative to the image root) holding the release file.
    pub fn release_dir(self) -> &'static str {
        match self {
            ExtensionKind::Sysext => "usr/lib/extension-release.d",
            ExtensionKind::Confext => "etc/extension-release.d",
        }
    }

    /// File name suffix: systemd-stub sorts `*.confext.raw` into PCR 12, other `*.raw` into 13.
    pub fn image_suffix(self) -> &'static str {
        match self {
            ExtensionKind::Sysext => ".raw",
            ExtensionKind::Confext => ".confext.raw",
        }
    }

    /// Prefix of the extension-release keys specific to this kind.
    pub fn key_prefix(self) -> &'static str {
        match self {
            ExtensionKind::Sysext => "SYSEXT",
            ExtensionKind::Confext => "CONFEXT",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ExtensionKind::Sysext => "sysext",
            ExtensionKind::Confext => "confext",
        }
    }
}

impl fmt::Display for ExtensionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An image name: usable as a file name and in `extension-release.NAME`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct ImageName(String);

impl ImageName {
    pub fn new(name: &str) -> Result<ImageName, Error> {
        let bad = |why: &str| Error::BadName {
            name: name.to_owned(),
            why: why.to_owned(),
        };
        if name.is_empty() || name.len() > 128 {
            return Err(bad("must be 1 to 128 characters"));
        }
        if name.contains('/') {
            return Err(bad(
                "contains a slash; an image name is a file name, not a path",
            ));
        }
        if name.starts_with('.') || name.starts_with('-') {
            return Err(bad("must not start with '.' or '-'"));
        }
        if name.ends_with(".raw") {
            return Err(bad("must not carry the .raw suffix; imgctl adds it"));
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-+".contains(&b))
        {
            return Err(bad("only ASCII letters, digits and . _ - + are allowed"));
        }
        Ok(ImageName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ImageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Path of the release file inside the image root, e.g.
/// `usr/lib/extension-release.d/extension-release.demo`.
pub fn release_path(kind: ExtensionKind, name: &ImageName) -> String {
    format!("{}/extension-release.{}", kind.release_dir(), name)
}

/// os-release(5)'s rule for `ID` and `VERSION_ID`: non-empty, only `0-9 a-z . _ -`.
fn os_release_word(v: &str) -> bool {
    !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase() || b"._-".contains(&b))
}

/// A checked extension-release file: ordered `KEY=value` pairs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExtensionRelease {
    fields: Vec<(String, String)>,
}

impl ExtensionRelease {
    /// Checks the rules of the Extension Image spec: `ID` present; a version key
    /// (`VERSION_ID` or `*_LEVEL`) unless `ID=_any`; `*_LEVEL` in `[0-9a-z._-]`; level and scope
    /// keys only for the matching kind; scopes from `system initrd portable`; values without
    /// quotes, backslashes, `$`, backticks or control characters.
    pub fn new(kind: ExtensionKind, fields: Vec<(String, String)>) -> Result<Self, Error> {
        let bad = |key: &str, why: String| Error::BadRelease {
            key: key.to_owned(),
            why,
        };
        let get = |k: &str| {
            fields
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        let other = match kind {
            ExtensionKind::Sysext => ExtensionKind::Confext,
            ExtensionKind::Confext => ExtensionKind::Sysext,
        };
        for (k, v) in &fields {
            if k.is_empty()
                || !k
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
            {
                return Err(bad(k, "keys are upper-case letters, digits and _".into()));
            }
            if v.chars().any(|c| c.is_control() || "\"\\$`'".contains(c)) {
                return Err(bad(
                    k,
                    format!(
                        "value {v:?} contains a quote, backslash, $, backtick or control character"
                    ),
                ));
            }
            if k.starts_with(&format!("{}_", other.key_prefix())) {
                return Err(bad(k, format!("is a {other} key but this is a {kind}")));
            }
            if fields.iter().filter(|(k2, _)| k2 == k).count() > 1 {
                return Err(bad(k, "given twice".into()));
            }
        }
        let id = get("ID")
            .ok_or_else(|| bad("ID", "is required (use _any to match every OS)".into()))?;
        // os-release(5): ID and VERSION_ID are lower-case strings of 0-9 a-z . _ - (no spaces);
        // checked first, so a bad ID is reported as one and not as a missing VERSION_ID.
        for key in ["ID", "VERSION_ID"] {
            if let Some(v) = get(key) {
                if !os_release_word(v) {
                    return Err(bad(
                        key,
                        format!(
                            "{v:?} must be lower-case 0-9 a-z . _ - without spaces (os-release(5))"
                        ),
                    ));
                }
            }
        }
        let level_key = format!("{}_LEVEL", kind.key_prefix());
        if let Some(level) = get(&level_key) {
            if level.is_empty()
                || !level
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase() || b"._-".contains(&b))
            {
                return Err(bad(
                    &level_key,
                    format!("{level:?} must use only 0-9 a-z . _ -"),
                ));
            }
        }
        if id != "_any" && get("VERSION_ID").is_none() && get(&level_key).is_none() {
            return Err(bad(
                "VERSION_ID",
                format!("VERSION_ID or {level_key} is required unless ID=_any"),
            ));
        }
        if let Some(arch) = get("ARCHITECTURE") {
            if arch != "_any" && crate::dps::Architecture::from_name(arch).is_none() {
                return Err(bad(
                    "ARCHITECTURE",
                    format!("{arch:?} is not one of _any, x86-64, arm64"),
                ));
            }
        }
        let scope_key = format!("{}_SCOPE", kind.key_prefix());
        if let Some(scope) = get(&scope_key) {
            if scope
                .split_whitespace()
                .any(|s| !["system", "initrd", "portable"].contains(&s))
            {
                return Err(bad(
                    &scope_key,
                    format!("{scope:?}: scopes are system, initrd, portable"),
                ));
            }
        }
        Ok(ExtensionRelease { fields })
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The file's bytes.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (k, v) in &self.fields {
            if v.is_empty() || v.contains(|c: char| c.is_whitespace()) {
                out.push_str(&format!("{k}=\"{v}\"\n"));
            } else {
                out.push_str(&format!("{k}={v}\n"));
            }
        }
        out
    }
}

/// Checks that a relative path in the tree lies under the kind's hierarchies, and that it is
/// plain (no `..`, no empty or `.` components, not absolute).
pub fn check_tree_path(kind: ExtensionKind, path: &str) -> Result<(), Error> {
    let bad = |why: String| Error::OutsideHierarchy {
        path: path.to_owned(),
        kind,
        why,
    };
    if path.starts_with('/') {
        return Err(bad("must be relative to the tree".into()));
    }
    let mut comps = path.split('/');
    let top = comps.next().unwrap_or("");
    if path
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(bad("has an empty, '.' or '..' component".into()));
    }
    if !kind.allowed_top_dirs().contains(&top) {
        return Err(bad(format!(
            "a {kind} may only contain /{}",
            kind.allowed_top_dirs().join(" and /")
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn renders_os_release_syntax() {
        let r = ExtensionRelease::new(
            ExtensionKind::Sysext,
            kv(&[
                ("ID", "debian"),
                ("VERSION_ID", "12"),
                ("SYSEXT_SCOPE", "system portable"),
            ]),
        )
        .unwrap();
        assert_eq!(
            r.render(),
            "ID=debian\nVERSION_ID=12\nSYSEXT_SCOPE=\"system portable\"\n"
        );
    }

    #[test]
    fn release_rules() {
        let k = ExtensionKind::Sysext;
        assert!(ExtensionRelease::new(k, kv(&[("VERSION_ID", "1")])).is_err());
        assert!(ExtensionRelease::new(k, kv(&[("ID", "debian")])).is_err());
        assert!(ExtensionRelease::new(k, kv(&[("ID", "_any")])).is_ok());
        assert!(ExtensionRelease::new(k, kv(&[("ID", "x"), ("SYSEXT_LEVEL", "A")])).is_err());
        assert!(ExtensionRelease::new(k, kv(&[("ID", "x"), ("CONFEXT_LEVEL", "1")])).is_err());
        assert!(ExtensionRelease::new(k, kv(&[("ID", "x\"y"), ("VERSION_ID", "1")])).is_err());
        // A bad ID is an ID error, even without VERSION_ID; VERSION_ID follows the same rule.
        let e = ExtensionRelease::new(k, kv(&[("ID", "a b")])).unwrap_err();
        assert!(
            e.to_string().starts_with("extension-release ID: \"a b\""),
            "{e}"
        );
        let e = ExtensionRelease::new(k, kv(&[("ID", "Debian"), ("VERSION_ID", "1")])).unwrap_err();
        assert!(e.to_string().starts_with("extension-release ID:"), "{e}");
        let e =
            ExtensionRelease::new(k, kv(&[("ID", "debian"), ("VERSION_ID", "1 2")])).unwrap_err();
        assert!(
            e.to_string().starts_with("extension-release VERSION_ID:"),
            "{e}"
        );
        assert!(ExtensionRelease::new(k, kv(&[("ID", "_any"), ("ARCHITECTURE", "mips")])).is_err());
    }

    #[test]
    fn hierarchies_and_names() {
        assert!(check_tree_path(ExtensionKind::Sysext, "usr/bin/x").is_ok());
        assert!(check_tree_path(ExtensionKind::Sysext, "opt").is_ok());
        assert!(check_tree_path(ExtensionKind::Sysext, "etc/passwd").is_err());
        assert!(check_tree_path(ExtensionKind::Sysext, "usr/../etc").is_err());
        assert!(check_tree_path(ExtensionKind::Confext, "etc/x").is_ok());
        assert!(check_tree_path(ExtensionKind::Confext, "usr/x").is_err());
        assert!(ImageName::new("a/b")
            .unwrap_err()
            .to_string()
            .contains("slash"));
        assert!(ImageName::new("..").is_err());
        assert!(ImageName::new("demo-1.0").is_ok());
    }
}
