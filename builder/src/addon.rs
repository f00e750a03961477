//! `kind: addon` recipes: systemd-stub PE addons, built as `ukify build --stub
//! addonx64.efi.stub` (systemd 257) builds them.
//!
//! ```yaml
//! kind: addon
//! name: debug                    # output NAME.addon.efi
//! version: "1"
//! cmdline: systemd.log_level=debug   # .cmdline
//! initrd:                        # .initrd (systemd 257+): the UKI recipe's initrd keys
//!   files: [{ src: fw.bin, dst: /lib/firmware/fw.bin }]
//! ucode: intel-ucode.cpio        # .ucode (systemd 257+): an early microcode cpio
//! dtb: board.dtb                 # .dtb: a devicetree blob
//! uname: 6.12.48+deb13-amd64     # optional: the stub applies the addon only to this kernel
//! sbat: |                        # optional; default ukify's `uki-addon` line
//!   debug,1,Example,debug,1,https://example.org
//! stub: /usr/lib/systemd/boot/efi/addonx64.efi.stub   # the default
//! ```
//!
//! At least one of `cmdline`, `initrd`, `ucode`, `dtb`. Section order as ukify 257 writes it
//! (`make_uki()`): `.cmdline .dtb .uname .initrd .ucode`, then `.sbat` (ukify's `ADDON_SBAT`,
//! or the recipe's lines under the SBAT header, merged as for a UKI); the addon stub has no
//! `.sbat` of its own, so the section is appended. The initrd is packed as a UKI's is
//! (SOURCE_DATE_EPOCH cpio mtimes). Outputs, atomically, in the output folder: `NAME.addon.efi`
//! and `manifest.json` (an `addon` artifact record with the PE facts and the PCR 12 events
//! the addon gives when it is the only addon: [`imgctl_measure::addon`]).

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
use crate::recipe::{decode_yaml, valid_name, Ctx, InitrdSpec, RawInitrd};
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
    initrd: Option<RawInitrd>,
    #[serde(default)]
    ucode: Option<String>,
    #[serde(default)]
    dtb: Option<String>,
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
    /// `.cmdline`: non-blank ASCII.
    pub cmdline: Option<String>,
    /// `.initrd`, packed as a UKI recipe's initrd.
    pub initrd: Option<InitrdSpec>,
    /// `.ucode`: an early microcode cpio.
    pub ucode: Option<PathBuf>,
    /// `.dtb`: a devicetree blob.
    pub dtb: Option<PathBuf>,
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
        if let Some(c) = &raw.cmdline {
            // Predicted only as ASCII; a blank one the stub drops.
            if imgctl_measure::addon::combined_cmdline([c.as_str()]).is_none() {
                return Err(ctx.err(
                    "cmdline",
                    "cmdline",
                    "is blank: the stub would add nothing (leave it out)",
                ));
            }
            if !c.is_ascii() {
                return Err(ctx.err("cmdline", "cmdline", "must be ASCII"));
            }
        }
        let initrd = raw.initrd.map(|i| i.check(&ctx)).transpose()?;
        let ucode = raw
            .ucode
            .as_deref()
            .map(|u| ctx.file("ucode", u))
            .transpose()?;
        let dtb = raw.dtb.as_deref().map(|d| ctx.file("dtb", d)).transpose()?;
        if raw.cmdline.is_none() && initrd.is_none() && ucode.is_none() && dtb.is_none() {
            return Err(ctx.err(
                "kind",
                "addon",
                "gives none of cmdline, initrd, ucode, dtb: the stub would skip the addon",
            ));
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
            cmdline: raw.cmdline,
            initrd,
            ucode,
            dtb,
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

/// The addon's bytes: the stub with `.cmdline .dtb .uname .initrd .ucode .sbat` (those given),
/// as ukify 257 adds them; `mtime` is the initrd's cpio mtime (SOURCE_DATE_EPOCH).
pub fn assemble_addon(recipe: &AddonRecipe, stub: &[u8], mtime: u32) -> Result<Vec<u8>, Error> {
    let read = |p: &Path, what: &'static str| std::fs::read(p).map_err(|e| Error::io(p, what, e));
    let sbat_text = recipe.sbat.as_deref().unwrap_or(SBAT_ADDON_DEFAULT);
    let mut sections = Vec::new();
    let mut push = |name: &str, data: Vec<u8>| {
        // ukify adds a section only when its content is not empty.
        if !data.is_empty() {
            sections.push(NewSection {
                name: name.into(),
                data,
            });
        }
    };
    if let Some(c) = &recipe.cmdline {
        push(".cmdline", c.clone().into_bytes());
    }
    if let Some(p) = &recipe.dtb {
        let blob = read(p, "reading the devicetree")?;
        if let Err(e) = imgctl_measure::dtb::root_compatible(&blob) {
            return Err(Error::InvalidInput(format!(
                "dtb {}: not a devicetree blob: {e}",
                p.display()
            )));
        }
        push(".dtb", blob);
    }
    if let Some(u) = &recipe.uname {
        push(".uname", u.clone().into_bytes());
    }
    if let Some(spec) = &recipe.initrd {
        let initrd = crate::initrd::build_initrd(spec, mtime)?;
        if initrd.is_empty() {
            return Err(Error::InvalidInput(format!(
                "{}: the initrd is empty",
                recipe.path.display()
            )));
        }
        push(".initrd", initrd);
    }
    if let Some(p) = &recipe.ucode {
        let ucode = read(p, "reading the microcode cpio")?;
        if ucode.is_empty() {
            return Err(Error::InvalidInput(format!(
                "ucode {}: the file is empty",
                p.display()
            )));
        }
        push(".ucode", ucode);
    }
    push(".sbat", merge_sbat(&[sbat_text.as_bytes()]));
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
    source_date_epoch: u64,
) -> Result<(AddonOutput, Stage), Error> {
    let mtime = u32::try_from(source_date_epoch).map_err(|_| {
        Error::InvalidInput("SOURCE_DATE_EPOCH does not fit the cpio format (32 bits)".into())
    })?;
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
    let bytes = assemble_addon(recipe, &stub_bytes, mtime).map_err(stub_error)?;
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
    // The PCR 12 events this addon gives on its own, as the stub reads it back (with others
    // beside the UKI the stub joins the command lines and orders the rest: `ext predict-pcrs`
    // predicts that).
    let read_back = imgctl_measure::addon::read(&bytes)?;
    let alone = [(recipe.name.clone(), file.clone(), read_back)];
    let predicted =
        imgctl_measure::addon::events(semantics.max(StubSemantics::Systemd256), &alone)?;
    let mut events = Vec::new();
    for e in predicted
        .before_sidecars
        .iter()
        .chain(&predicted.after_sidecars)
    {
        let d = digest_matrix(&banks, &[&e.data])?;
        events.push(imgctl_measure::manifest::EventRecord {
            pcr: imgctl_measure::pcr11::PCR_KERNEL_PARAMETERS,
            digests: digests_map(&banks, &d[0]),
            description: Some(match e.tag {
                None => e.description.clone(),
                Some(tag) => format!("EV_EVENT_TAG {tag:#010x} {}", e.description),
            }),
        });
    }
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
        assert_eq!(
            (r.name.as_str(), r.cmdline.as_deref()),
            ("dbg", Some("quiet"))
        );
        // No command line, a microcode cpio only: an addon the 257 stub uses.
        let r = parse(
            dir.path(),
            "kind: addon\nname: u\nversion: 1\nucode: stub\nstub: stub\n",
        )
        .unwrap();
        assert_eq!((r.cmdline, r.ucode), (None, Some(dir.path().join("stub"))));
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
