//! `kind: addon` recipes: systemd-stub PE addons, built as `ukify build --stub
//! addonx64.efi.stub` (systemd 257) builds them.
//!
//! ```yaml
//! kind: addon
//! name: debug                    # output NAME.addon.efi
//! version: "1"
//! cmdline: systemd.log_level=debug
//! uname: 6.12.48+deb13-amd64     # optional: the stub applies the addon only to this kernel
//! sbat: |                        # optional; default ukify's `uki-addon` line
//!   debug,1,Example,debug,1,https://example.org
//! stub: /usr/lib/systemd/boot/efi/addonx64.efi.stub   # the default
//! ```
//!
//! Section order as ukify 257 writes it: `.cmdline`, `.uname`, then `.sbat` (ukify's
//! `ADDON_SBAT`, or the recipe's lines under the SBAT header, merged as for a UKI). The addon
//! stub has no `.sbat` of its own, so the section is appended. Outputs, atomically, in the
//! output folder: `NAME.addon.efi` and `manifest.json` (an `addon` artifact record with the
//! PE facts and the PCR 12 event the addon's command line gives when it is the only addon).
//!
//! Devicetree, initrd and microcode addons are not built yet (their measurements are not
//! predicted either, [`imgctl_measure::addon`]).

use std::path::{Path, PathBuf};

use imgctl_measure::authenticode::authenticode_digests;
use imgctl_measure::pe::PeFile;
use imgctl_measure::predict::digest_matrix;
use imgctl_measure::{Digest, HashAlg, StubSemantics};
use serde::Deserialize;

use crate::build::{
    digests_map, ArtifactRecord, FileRecord, RecordKind, SectionRecord, StubRecord, UkiRecord,
    RECORD_FORMAT,
};
use crate::output::Stage;
use crate::recipe::{decode_yaml, valid_name, Ctx};
use crate::uki::{assemble, check_stub, merge_sbat, NewSection};
use crate::Error;

/// systemd's addon stub, the default `stub:` of an addon recipe.
pub const DEFAULT_ADDON_STUB: &str = "/usr/lib/systemd/boot/efi/addonx64.efi.stub";
/// ukify's SBAT line for addons (`ADDON_SBAT`), used when the recipe gives none.
pub const SBAT_ADDON_DEFAULT: &str = "uki-addon,1,UKI Addon,addon,1,https://www.freedesktop.org/software/systemd/man/latest/systemd-stub.html";

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "kebab-case",
    expecting = "an addon recipe (a mapping of kind, name, version, cmdline, ...)"
)]
struct RawAddonRecipe {
    kind: String,
    name: String,
    version: String,
    #[serde(default)]
    cmdline: Option<String>,
    #[serde(default)]
    uname: Option<String>,
    #[serde(default)]
    sbat: Option<String>,
    #[serde(default)]
    stub: Option<String>,
}

/// A fully checked addon recipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddonRecipe {
    pub path: PathBuf,
    pub source: Vec<u8>,
    pub name: String,
    pub version: String,
    pub cmdline: String,
    pub uname: Option<String>,
    pub sbat: Option<String>,
    pub stub: PathBuf,
}

impl AddonRecipe {
    /// Checks addon recipe text read from `path`.
    pub fn parse(path: &Path, source: Vec<u8>) -> Result<AddonRecipe, Error> {
        let (raw, text): (RawAddonRecipe, &str) = decode_yaml(path, &source)?;
        let dir = path.parent().unwrap_or(Path::new("")).to_owned();
        let ctx = Ctx {
            file: path,
            text,
            dir: &dir,
        };
        if raw.kind != "addon" {
            return Err(ctx.err("kind", &raw.kind, "must be addon"));
        }
        if !valid_name(&raw.name) {
            return Err(ctx.err(
                "name",
                &raw.name,
                "must be 1-64 characters of [A-Za-z0-9._-], not starting with '.'",
            ));
        }
        if raw.version.is_empty() || raw.version.contains(['/', '\n']) {
            return Err(ctx.err(
                "version",
                &raw.version,
                "must be non-empty and contain no '/' or newline",
            ));
        }
        // The stub skips an addon without a command line (nothing else is built yet), and
        // predicts only ASCII text.
        let cmdline = raw.cmdline.unwrap_or_default();
        if imgctl_measure::addon::combined_cmdline([cmdline.as_str()]).is_none() {
            return Err(ctx.err(
                "cmdline",
                "cmdline",
                "missing or blank: an addon without a command line does nothing (devicetree, initrd and microcode addons are not supported yet)",
            ));
        }
        if !cmdline.is_ascii() {
            return Err(ctx.err("cmdline", "cmdline", "must be ASCII"));
        }
        if let Some(u) = &raw.uname {
            if u.is_empty() || u.contains(char::is_whitespace) {
                return Err(ctx.err("uname", u, "must be one word, as `uname -r` prints it"));
            }
        }
        let stub = match raw.stub.as_deref() {
            Some(s) => ctx.file("stub", s)?,
            None if Path::new(DEFAULT_ADDON_STUB).is_file() => PathBuf::from(DEFAULT_ADDON_STUB),
            None => {
                return Err(ctx.err("stub", "stub", &format!(
                    "the default addon stub {DEFAULT_ADDON_STUB} is missing (systemd-boot-efi 257 ships it): set stub:"
                )))
            }
        };
        Ok(AddonRecipe {
            path: path.to_owned(),
            source,
            name: raw.name,
            version: raw.version,
            cmdline,
            uname: raw.uname,
            sbat: raw.sbat,
            stub,
        })
    }
}

/// The systemd version of an addon stub (`.sdmagic` `systemd-addon VERSION`), or an error
/// naming what the stub is instead.
fn check_addon_stub(stub: &PeFile<'_>) -> Result<StubSemantics, Error> {
    check_stub(stub)?;
    let identity = imgctl_measure::Uki { pe: stub.clone() }.identity();
    if identity.name.as_deref() != Some(imgctl_measure::addon::ADDON_STUB_NAME) {
        return Err(Error::Stub(format!(
            "is not systemd's addon stub (.sdmagic {:?}); give addonx64.efi.stub",
            identity.sdmagic.unwrap_or_default()
        )));
    }
    if let Some(s) = stub.sections.iter().find(|s| {
        [".linux", ".cmdline", ".initrd", ".uname", ".dtb", ".ucode"].contains(&s.name.as_str())
    }) {
        return Err(Error::Stub(format!(
            "already has a {} section; build from the bare addon stub",
            s.name
        )));
    }
    let major: u32 = identity
        .version
        .as_deref()
        .map(|v| {
            v.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        })
        .and_then(|d| d.parse().ok())
        .unwrap_or(0);
    Ok(StubSemantics::for_systemd_version(major))
}

/// The addon's bytes: the stub with `.cmdline`, `.uname` and `.sbat`, as ukify 257 adds them.
pub fn assemble_addon(recipe: &AddonRecipe, stub: &[u8]) -> Result<Vec<u8>, Error> {
    let sbat_text = recipe.sbat.as_deref().unwrap_or(SBAT_ADDON_DEFAULT);
    let mut sections = vec![NewSection {
        name: ".cmdline".into(),
        data: recipe.cmdline.clone().into_bytes(),
    }];
    if let Some(u) = &recipe.uname {
        sections.push(NewSection {
            name: ".uname".into(),
            data: u.clone().into_bytes(),
        });
    }
    sections.push(NewSection {
        name: ".sbat".into(),
        data: merge_sbat(&[sbat_text.as_bytes()]),
    });
    assemble(stub, &sections)
}

/// What an addon build wrote.
#[derive(Debug, Clone)]
pub struct AddonOutput {
    pub addon: PathBuf,
    pub manifest_path: PathBuf,
    pub record: ArtifactRecord,
}

/// Builds the addon and stages NAME.addon.efi and manifest.json in `out_dir`.
pub fn build_addon_staged(
    recipe: &AddonRecipe,
    out_dir: &Path,
) -> Result<(AddonOutput, Stage), Error> {
    let banks = HashAlg::ALL;
    let stub_bytes =
        std::fs::read(&recipe.stub).map_err(|e| Error::io(&recipe.stub, "reading the stub", e))?;
    let stub_error = |e: Error| Error::Stub(format!("stub {}: {e}", recipe.stub.display()));
    let semantics = {
        let stub = PeFile::parse(&stub_bytes).map_err(|e| {
            Error::Stub(format!(
                "stub {}: not a valid PE image: {e}",
                recipe.stub.display()
            ))
        })?;
        check_addon_stub(&stub).map_err(stub_error)?
    };
    let bytes = assemble_addon(recipe, &stub_bytes).map_err(stub_error)?;
    let pe = PeFile::parse(&bytes).map_err(imgctl_measure::Error::from)?;
    let file = format!("{}.addon.efi", recipe.name);

    let mut stage = Stage::new(out_dir, &[&recipe.path, &recipe.stub])?;
    for name in [file.as_str(), "manifest.json"] {
        stage.check(name)?;
    }
    let small = digest_matrix(&banks, &[&bytes, &stub_bytes, &recipe.source])?;
    let authenticode = authenticode_digests(&pe, &banks)?;
    let mut sections = Vec::new();
    for s in &pe.sections {
        let data = pe.memory_data(s).map_err(imgctl_measure::Error::from)?;
        let d = digest_matrix(&banks, &[&data])?;
        sections.push(SectionRecord {
            name: s.name.clone(),
            offset: s.pointer_to_raw_data,
            virtual_address: s.virtual_address,
            virtual_size: s.virtual_size,
            size_of_raw_data: s.size_of_raw_data,
            measured: false,
            digests: digests_map(&banks, &d[0]),
        });
    }
    // The PCR 12 event this addon's command line gives on its own (with others beside the
    // UKI the stub measures their joined text: `ext predict-pcrs` predicts that).
    let events = match imgctl_measure::addon::combined_cmdline([recipe.cmdline.as_str()]) {
        Some(text) => {
            let data = imgctl_measure::addon::cmdline_event_data(&text);
            let d = digest_matrix(&banks, &[&data])?;
            vec![imgctl_measure::manifest::EventRecord {
                pcr: imgctl_measure::pcr11::PCR_KERNEL_PARAMETERS,
                digests: digests_map(&banks, &d[0]),
                description: Some(text),
            }]
        }
        None => Vec::new(),
    };
    let record = |role: &str, path: String, size: usize, d: &[Digest]| FileRecord {
        role: role.to_owned(),
        path,
        size: size as u64,
        digests: digests_map(&banks, d),
    };
    let artifact = ArtifactRecord {
        format: RECORD_FORMAT.to_owned(),
        kind: RecordKind::Addon,
        name: recipe.name.clone(),
        version: recipe.version.clone(),
        builder: format!("imgctl-builder {}", env!("CARGO_PKG_VERSION")),
        source_date_epoch: None,
        recipe: Some(record(
            "recipe",
            recipe.path.display().to_string(),
            recipe.source.len(),
            &small[2],
        )),
        files: vec![
            record("addon", file.clone(), bytes.len(), &small[0]),
            record(
                "stub",
                recipe.stub.display().to_string(),
                stub_bytes.len(),
                &small[1],
            ),
        ],
        uki: Some(UkiRecord {
            file: file.clone(),
            size: bytes.len() as u64,
            digests: digests_map(&banks, &small[0]),
            authenticode: digests_map(&banks, &authenticode),
            kernel_authenticode: None,
            stub: StubRecord {
                path: recipe.stub.display().to_string(),
                sdmagic: imgctl_measure::Uki { pe: pe.clone() }.identity().sdmagic,
                semantics,
            },
            sections,
        }),
        pcrs: Default::default(),
        events,
        userspace_events: Vec::new(),
        extension: None,
        policy: None,
    };
    artifact
        .check()
        .map_err(|e| Error::InvalidInput(format!("artifact record: {e}")))?;
    let addon = stage.add(&file, &bytes)?;
    let manifest_path = stage.add("manifest.json", &artifact.to_json_bytes())?;
    Ok((
        AddonOutput {
            addon,
            manifest_path,
            record: artifact,
        },
        stage,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(dir: &Path, text: &str) -> Result<AddonRecipe, Error> {
        std::fs::write(dir.join("stub"), b"x").unwrap();
        AddonRecipe::parse(&dir.join("a.yaml"), text.as_bytes().to_vec())
    }

    #[test]
    fn addon_recipes_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let r = parse(
            dir.path(),
            "kind: addon\nname: dbg\nversion: 1\ncmdline: quiet\nstub: stub\n",
        )
        .unwrap();
        assert_eq!((r.name.as_str(), r.cmdline.as_str()), ("dbg", "quiet"));
        for (text, needle) in [
            (
                "kind: addon\nname: dbg\nversion: 1\nstub: stub\n",
                "cmdline",
            ),
            (
                "kind: addon\nname: dbg\nversion: 1\ncmdline: \" \"\nstub: stub\n",
                "blank",
            ),
            (
                "kind: addon\nname: a/b\nversion: 1\ncmdline: q\nstub: stub\n",
                "name",
            ),
            (
                "kind: addon\nname: d\nversion: 1\ncmdline: q\nstub: stub\ninitrd: x\n",
                "initrd",
            ),
            (
                "kind: addon\nname: d\nversion: 1\ncmdline: \"\u{e4}\"\nstub: stub\n",
                "ASCII",
            ),
            (
                "kind: addon\nname: d\nversion: 1\ncmdline: q\nstub: nostub\n",
                "nostub",
            ),
        ] {
            let e = parse(dir.path(), text).unwrap_err().to_string();
            assert!(e.contains(needle) && e.contains("a.yaml"), "{text}: {e}");
        }
    }
}
