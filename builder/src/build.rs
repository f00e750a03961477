//! The build plan: recipe → initrd → UKI → measurements → manifest, written atomically.
//!
//! Output folder (default `images/NAME/`): `NAME.efi` (the UKI), `NAME.initrd` (the initrd
//! that went into it, when there is one), `pcrs.json` (PCR 11 predictions in
//! `systemd-measure calculate --json` shape) and `manifest.json` (written last).

use std::path::{Path, PathBuf};

use imgctl_measure::authenticode::authenticode_digests;
use imgctl_measure::authenticode_sign::AuthenticodeSigner;
use imgctl_measure::pe::PeFile;
use imgctl_measure::predict::{digest_matrix, predict_from_section_digests};
use imgctl_measure::{Digest, HashAlg, PhasePath, Prediction, StubSemantics, Uki};
use serde::Serialize;

pub use crate::output::Stage;
use crate::recipe::{OsRelease, Recipe};
use crate::uki::{
    assemble, check_stub, check_stub_identity, merge_sbat, pe_sbat, Content, Layout, NewSection,
    Origin, PlacedSection, SectionInput, SBAT_UKI_DEFAULT,
};
use crate::Error;

pub use imgctl_measure::manifest::{Digests, FileRecord, SectionRecord, StubRecord, UkiRecord};
use imgctl_measure::record::PolicyRecord;
pub use imgctl_measure::record::{ArtifactRecord, RecordKind, RECORD_FORMAT};

/// How to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub out_dir: PathBuf,
    /// Timestamp for every embedded time (cpio mtimes).
    pub source_date_epoch: u64,
    /// Stub semantics for the prediction; default: detected from the stub.
    pub semantics: Option<StubSemantics>,
    /// Sign the predicted PCR 11 values with this key and embed `.pcrsig` (and `.pcrpkey`, when
    /// the recipe has none), as ukify does with `--pcr-private-key`.
    pub pcr_key: Option<imgctl_measure::keys::SigningKey>,
    /// Sign the UKI for Secure Boot (last, after `.pcrsig` is embedded) and, if asked, the
    /// kernel it carries (first), as ukify does with `--secureboot-private-key` and
    /// `--sign-kernel`.
    pub secure_boot: Option<SecureBootSigning>,
}

/// Secure Boot signing of a build.
#[derive(Debug, Clone)]
pub struct SecureBootSigning {
    pub signer: std::sync::Arc<dyn AuthenticodeSigner>,
    /// Also sign the kernel before it goes into `.linux` (its signatures are kept: sbsign
    /// appends), which changes PCR 11 and so comes before anything is measured.
    pub sign_kernel: bool,
}

impl BuildOptions {
    pub fn new(out_dir: PathBuf, source_date_epoch: u64) -> Self {
        BuildOptions {
            out_dir,
            source_date_epoch,
            semantics: None,
            pcr_key: None,
            secure_boot: None,
        }
    }
}

/// What a build wrote.
#[derive(Debug, Clone)]
pub struct BuildOutput {
    pub uki: PathBuf,
    pub initrd: Option<PathBuf>,
    pub pcrs: PathBuf,
    pub manifest_path: PathBuf,
    /// The artifact record, whose JSON form is manifest.json (`imgctl-record/2`).
    pub record: ArtifactRecord,
    pub prediction: Prediction,
}

impl BuildOutput {
    /// The UKI's facts in the record (always there for a build).
    pub fn uki_record(&self) -> Option<&UkiRecord> {
        self.record.uki.as_ref()
    }
}

/// `{bank: hex}` of digests given in `banks` order.
pub(crate) fn digests_map(banks: &[HashAlg], d: &[Digest]) -> Digests {
    banks
        .iter()
        .zip(d)
        .map(|(b, d)| (b.to_string(), d.to_hex()))
        .collect()
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| Error::io(path, what, e))
}

/// The os-release file content for recipe fields: `KEY=value` lines, values quoted when they
/// hold anything but `[A-Za-z0-9._-]` (os-release(5) uses shell-compatible quoting).
pub fn os_release_text(fields: &[(String, String)]) -> String {
    let mut s = String::new();
    for (k, v) in fields {
        let plain = !v.is_empty()
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if plain {
            s.push_str(&format!("{k}={v}\n"));
        } else {
            let escaped: String = v
                .chars()
                .flat_map(|c| match c {
                    '"' | '\\' | '$' | '`' => vec!['\\', c],
                    _ => vec![c],
                })
                .collect();
            s.push_str(&format!("{k}=\"{escaped}\"\n"));
        }
    }
    s
}

/// Checks `.pcrpkey` content: a PEM public key (SPKI, `BEGIN PUBLIC KEY`, RSA or ECDSA P-256),
/// as systemd-stub passes it on and systemd-cryptenroll reads it. A private key is refused: the
/// section is readable by anyone who has the UKI.
pub fn check_pcrpkey(pem: &[u8]) -> Result<(), String> {
    let text = String::from_utf8_lossy(pem);
    let label = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("-----BEGIN "))
        .and_then(|l| l.strip_suffix("-----"));
    match label {
        Some(l) if l.ends_with("PRIVATE KEY") => Err(format!(
            "is a private key ({l}); .pcrpkey must hold the public key (openssl pkey -pubout)"
        )),
        Some("PUBLIC KEY") => imgctl_measure::keys::VerifyingKey::from_pem(pem)
            .map(|_| ())
            .map_err(|e| format!("not a usable public key: {e}")),
        Some(l) => Err(format!("is a PEM {l}, not a public key (BEGIN PUBLIC KEY)")),
        None => Err("is not a PEM public key (no BEGIN PUBLIC KEY line)".into()),
    }
}

/// What a planned section holds.
#[derive(Debug, Clone)]
enum PlannedData {
    Bytes(Vec<u8>),
    /// The initrd, written on its own (streamed to its file) and taken from there.
    Initrd,
}

/// One planned section with where its bytes came from.
#[derive(Debug, Clone)]
struct Planned {
    name: &'static str,
    role: &'static str,
    source: Option<PathBuf>,
    data: PlannedData,
}

/// Everything a UKI is made of but the initrd: read, checked, in ukify's order.
#[derive(Debug)]
struct Prepared {
    stub: Vec<u8>,
    plan: Vec<Planned>,
    /// The cpio mtime (SOURCE_DATE_EPOCH).
    mtime: u32,
}

/// A UKI assembled in memory from a recipe, not yet written.
#[derive(Debug, Clone)]
pub struct Assembled {
    pub uki: Vec<u8>,
    pub initrd: Option<Vec<u8>>,
    pub stub: Vec<u8>,
}

/// Reads and checks every input of a recipe but the initrd tree, and plans the sections.
///
/// `pcrpkey` is the `.pcrpkey` content to use when the recipe names none (the public half of
/// the PCR signing key, as ukify derives it).
fn prepare(
    recipe: &Recipe,
    source_date_epoch: u64,
    pcrpkey: Option<&[u8]>,
    kernel_signer: Option<&dyn AuthenticodeSigner>,
) -> Result<Prepared, Error> {
    let stub_bytes = read(&recipe.stub, "reading the stub")?;
    let stub = PeFile::parse(&stub_bytes).map_err(|e| {
        Error::Stub(format!(
            "stub {}: not a valid PE image: {e}",
            recipe.stub.display()
        ))
    })?;
    check_stub(&stub).map_err(|e| stub_error(recipe, e))?;
    check_stub_identity(&stub).map_err(|e| stub_error(recipe, e))?;

    let mut kernel = read(&recipe.kernel, "reading the kernel")?;
    crate::kernel::check_kernel(&kernel)
        .map_err(|m| Error::InvalidInput(format!("kernel {}: {m}", recipe.kernel.display())))?;
    if let Some(signer) = kernel_signer {
        kernel = signer.sign_pe(&kernel).map_err(|m| {
            Error::InvalidInput(format!(
                "signing the kernel {} for Secure Boot: {m}",
                recipe.kernel.display()
            ))
        })?;
    }
    let uname = match &recipe.uname {
        Some(u) => Some(u.clone()),
        None => crate::kernel::kernel_release(&kernel),
    };
    let mtime = u32::try_from(source_date_epoch).map_err(|_| {
        Error::InvalidInput("SOURCE_DATE_EPOCH does not fit the cpio format (32 bits)".into())
    })?;
    let (osrel, osrel_source) = match &recipe.os_release {
        OsRelease::Fields(f) => (os_release_text(f).into_bytes(), None),
        OsRelease::File(p) => (read(p, "reading the os-release file")?, Some(p.clone())),
    };
    let kernel_sbat = PeFile::parse(&kernel).ok().and_then(|k| pe_sbat(&k));
    let stub_sbat = pe_sbat(&stub).unwrap_or_default();
    let recipe_sbat = recipe
        .sbat
        .clone()
        .unwrap_or_else(|| SBAT_UKI_DEFAULT.to_owned());
    let sbat = merge_sbat(&[
        &stub_sbat,
        kernel_sbat.as_deref().unwrap_or_default(),
        recipe_sbat.as_bytes(),
    ]);

    // ukify 257's insertion order (`make_uki()`): .osrel .cmdline .dtb .dtbauto… .hwids .uname
    // .splash .pcrpkey .linux .initrd .ucode, then .sbat (the stub's, refilled in place). The
    // file order does not affect PCR 11, which the stub measures in its own order.
    let mut plan: Vec<Planned> = Vec::new();
    let mut push = |name, role, source: Option<PathBuf>, data: Vec<u8>| {
        if !data.is_empty() {
            plan.push(Planned {
                name,
                role,
                source,
                data: PlannedData::Bytes(data),
            });
        }
    };
    push(".osrel", "os-release", osrel_source, osrel);
    push(
        ".cmdline",
        "cmdline",
        None,
        recipe.cmdline.clone().unwrap_or_default().into_bytes(),
    );
    if let Some(p) = &recipe.dtb {
        push(
            ".dtb",
            "dtb",
            Some(p.clone()),
            read(p, "reading the devicetree")?,
        );
    }
    // ukify 257: each .dtbauto after .dtb, in the recipe's order. A blob the stub cannot read
    // would never be selected: refused.
    let mut compatibles: Vec<String> = Vec::new();
    for p in &recipe.dtbauto {
        let blob = read(p, "reading the devicetree")?;
        match imgctl_measure::dtb::root_compatible(&blob) {
            Ok(Some(c)) if compatibles.contains(&c) => {
                return Err(Error::InvalidInput(format!(
                    "dtbauto {}: an earlier dtbauto is also {c:?}; the stub would never select this one",
                    p.display()
                )))
            }
            Ok(Some(c)) => compatibles.push(c),
            Ok(None) => {
                return Err(Error::InvalidInput(format!(
                    "dtbauto {}: the root node has no compatible, so no machine selects it",
                    p.display()
                )))
            }
            Err(e) => {
                return Err(Error::InvalidInput(format!(
                    "dtbauto {}: not a devicetree blob: {e}",
                    p.display()
                )))
            }
        }
        push(".dtbauto", "dtbauto", Some(p.clone()), blob);
    }
    if let Some(dir) = &recipe.hwids {
        push(".hwids", "hwids", Some(dir.clone()), hwids_section(dir)?);
    }
    push(
        ".uname",
        "uname",
        None,
        uname.clone().unwrap_or_default().into_bytes(),
    );
    if let Some(p) = &recipe.splash {
        push(
            ".splash",
            "splash",
            Some(p.clone()),
            read(p, "reading the splash image")?,
        );
    }
    if let Some(p) = &recipe.pcrpkey {
        let pem = read(p, "reading the PCR public key")?;
        check_pcrpkey(&pem)
            .map_err(|m| Error::InvalidInput(format!("pcrpkey {}: {m}", p.display())))?;
        push(".pcrpkey", "pcrpkey", Some(p.clone()), pem);
    } else if let Some(pem) = pcrpkey {
        push(".pcrpkey", "pcrpkey", None, pem.to_vec());
    }
    push(".linux", "kernel", Some(recipe.kernel.clone()), kernel);
    if recipe.initrd.is_some() {
        plan.push(Planned {
            name: ".initrd",
            role: "initrd",
            source: None,
            data: PlannedData::Initrd,
        });
    }
    let mut push = |name, role, source: Option<PathBuf>, data: Vec<u8>| {
        if !data.is_empty() {
            plan.push(Planned {
                name,
                role,
                source,
                data: PlannedData::Bytes(data),
            });
        }
    };
    if let Some(p) = &recipe.ucode {
        push(
            ".ucode",
            "ucode",
            Some(p.clone()),
            read(p, "reading the microcode cpio")?,
        );
    }
    push(".sbat", "sbat", None, sbat);
    // Multi-profile (ukify 257 --profile with --join-profile): the base's `.profile` last of
    // the base, then each profile's `.profile` and its sections, in ukify's import order.
    if let Some(p) = &recipe.profile {
        push(".profile", "profile", None, p.clone().into_bytes());
    }
    for p in &recipe.profiles {
        push(".profile", "profile", None, p.profile.clone().into_bytes());
        if let Some(c) = &p.cmdline {
            push(".cmdline", "cmdline", None, c.clone().into_bytes());
        }
    }
    Ok(Prepared {
        stub: stub_bytes,
        plan,
        mtime,
    })
}

/// The `.hwids` section of a folder of ukify hwid JSON files, as ukify 257 makes it: every
/// `*.json` below it in sorted path order (`parse_hwid_dir()`).
pub fn hwids_section(dir: &Path) -> Result<Vec<u8>, Error> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), Error> {
        let entries =
            std::fs::read_dir(dir).map_err(|e| Error::io(dir, "reading the hwids folder", e))?;
        for e in entries {
            let e = e.map_err(|e| Error::io(dir, "reading the hwids folder", e))?;
            let path = e.path();
            let kind = e.file_type().map_err(|e| Error::io(&path, "reading", e))?;
            if kind.is_dir() {
                walk(&path, out)?;
            } else if path.extension().is_some_and(|x| x == "json") {
                out.push(path);
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(dir, &mut files)?;
    // pathlib's order: component by component.
    files.sort_by(|a, b| a.components().cmp(b.components()));
    if files.is_empty() {
        return Err(Error::InvalidInput(format!(
            "hwids {}: no *.json files",
            dir.display()
        )));
    }
    let mut devices = Vec::new();
    for f in &files {
        let text = imgctl_fsio::read_bounded(f, imgctl_fsio::caps::POLICY, "a hwid description")?;
        devices.push(imgctl_measure::hwids::parse_json(
            &f.display().to_string(),
            &text,
        )?);
    }
    Ok(imgctl_measure::hwids::encode(&devices)?)
}

fn stub_error(recipe: &Recipe, e: Error) -> Error {
    match e {
        Error::Stub(m) => Error::Stub(format!("stub {}: {m}", recipe.stub.display())),
        other => other,
    }
}

/// The sections to add, in plan order: the initrd as `initrd` (left out when empty), and the
/// `.pcrsig` of each profile where ukify 257 puts it (`call_systemd_measure()` adds it after the
/// sections it signed): profile k's right before profile k+1's `.profile`, the last one at the
/// end. A UKI without profiles takes one `.pcrsig`, at the end.
fn section_inputs<'a>(
    plan: &'a [Planned],
    initrd: Content<'a>,
    pcrsigs: &[&'a [u8]],
) -> Vec<SectionInput<'a>> {
    let mut inputs: Vec<SectionInput<'a>> = Vec::new();
    let mut profiles_seen = 0usize;
    for p in plan {
        let content = match &p.data {
            PlannedData::Bytes(b) => Content::Bytes(b),
            PlannedData::Initrd if initrd.is_empty() => continue,
            PlannedData::Initrd => initrd,
        };
        if p.name == ".profile" {
            if let Some(data) = profiles_seen.checked_sub(1).and_then(|k| pcrsigs.get(k)) {
                inputs.push(SectionInput {
                    name: ".pcrsig",
                    content: Content::Bytes(data),
                });
            }
            profiles_seen += 1;
        }
        inputs.push(SectionInput {
            name: p.name,
            content,
        });
    }
    if let Some(data) = pcrsigs.get(profiles_seen.saturating_sub(1)) {
        inputs.push(SectionInput {
            name: ".pcrsig",
            content: Content::Bytes(data),
        });
    }
    inputs
}

/// Assembles the UKI a recipe describes, in memory.
///
/// `pcrpkey` is the `.pcrpkey` content to use when the recipe names none (the public half of
/// the PCR signing key, as ukify derives it).
pub fn assemble_recipe(
    recipe: &Recipe,
    source_date_epoch: u64,
    pcrpkey: Option<&[u8]>,
) -> Result<Assembled, Error> {
    let prepared = prepare(recipe, source_date_epoch, pcrpkey, None)?;
    let initrd = match &recipe.initrd {
        Some(spec) => Some(crate::initrd::build_initrd(spec, prepared.mtime)?),
        None => None,
    };
    let initrd_content = Content::Bytes(initrd.as_deref().unwrap_or_default());
    let inputs = section_inputs(&prepared.plan, initrd_content, &[]);
    let layout = crate::uki::layout(&prepared.stub, &inputs).map_err(|e| stub_error(recipe, e))?;
    let mut uki = Vec::new();
    layout.write(&mut uki, Path::new("(memory)"), &mut |i, _| {
        Err(Error::InvalidInput(format!("section {i} has no content")))
    })?;
    Ok(Assembled {
        uki,
        initrd,
        stub: prepared.stub,
    })
}

/// Builds the UKI a recipe describes and writes it, its initrd, pcrs.json and manifest.json.
pub fn build(recipe: &Recipe, opts: &BuildOptions) -> Result<BuildOutput, Error> {
    let (out, stage) = build_staged(recipe, opts)?;
    stage.commit()?;
    Ok(out)
}

/// The digests of every section's memory image (`VirtualSize` bytes, what the stub measures),
/// each computed once per bank: the stub's own sections from the stub, added sections from
/// their content (`known` for streamed ones, hashed while they were written).
#[derive(Debug)]
struct SectionDigests {
    stub: Vec<Vec<Digest>>,
    inputs: Vec<Vec<Digest>>,
}

impl SectionDigests {
    fn new(
        stub: &PeFile<'_>,
        inputs: &[SectionInput<'_>],
        known: &[(usize, Vec<Digest>)],
        banks: &[HashAlg],
    ) -> Result<SectionDigests, Error> {
        let images = stub
            .sections
            .iter()
            .map(|s| stub.memory_data(s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(imgctl_measure::Error::from)?;
        let refs: Vec<&[u8]> = images.iter().map(|c| c.as_ref()).collect();
        let stub_digests = digest_matrix(banks, &refs)?;
        let mut d = SectionDigests {
            stub: stub_digests,
            inputs: Vec::new(),
        };
        d.add_inputs(inputs, known, banks)?;
        Ok(d)
    }

    /// Digests the inputs not digested yet (those past the ones already known).
    fn add_inputs(
        &mut self,
        inputs: &[SectionInput<'_>],
        known: &[(usize, Vec<Digest>)],
        banks: &[HashAlg],
    ) -> Result<(), Error> {
        let start = self.inputs.len();
        let bytes: Vec<&[u8]> = inputs[start..]
            .iter()
            .map(|s| match s.content {
                Content::Bytes(b) => b,
                Content::Streamed(_) => &[],
            })
            .collect();
        let mut digests = digest_matrix(banks, &bytes)?;
        for (i, d) in known {
            if let Some(slot) = i.checked_sub(start).and_then(|j| digests.get_mut(j)) {
                *slot = d.clone();
            }
        }
        self.inputs.extend(digests);
        Ok(())
    }

    /// Re-indexes the digests for `inputs`, which are the inputs digested so far with
    /// `.pcrsig` sections inserted among them; hashes those.
    fn insert_pcrsigs(
        &mut self,
        inputs: &[SectionInput<'_>],
        banks: &[HashAlg],
    ) -> Result<(), Error> {
        let mut old = std::mem::take(&mut self.inputs).into_iter();
        for s in inputs {
            let d = match (s.name, s.content) {
                (".pcrsig", Content::Bytes(b)) => digest_matrix(banks, &[b])?.remove(0),
                _ => old.next().ok_or_else(|| {
                    Error::InvalidInput("section digests out of step with the layout".into())
                })?,
            };
            self.inputs.push(d);
        }
        if old.next().is_some() {
            return Err(Error::InvalidInput(
                "section digests out of step with the layout".into(),
            ));
        }
        Ok(())
    }

    fn of(&self, s: &PlacedSection) -> &[Digest] {
        match s.origin {
            Origin::Stub(i) => &self.stub[i],
            Origin::Input(i) => &self.inputs[i],
        }
    }
}

/// A laid-out UKI seen as the stub sees it.
#[derive(Debug)]
struct Measured<'l> {
    identity: imgctl_measure::StubIdentity,
    semantics: StubSemantics,
    /// The sections of the profile it was made for (placed indices), as
    /// `Uki::sections_for_profile` lists them.
    selected: Vec<usize>,
    /// The memory image of a section that is in memory (the stub's, or given as bytes).
    images: Vec<Option<std::borrow::Cow<'l, [u8]>>>,
}

impl<'l> Measured<'l> {
    fn new(
        layout: &Layout<'l>,
        stub: &PeFile<'l>,
        inputs: &[SectionInput<'l>],
        semantics: Option<StubSemantics>,
        profile: u32,
    ) -> Result<Measured<'l>, Error> {
        let images: Vec<Option<std::borrow::Cow<'l, [u8]>>> = layout
            .sections()
            .iter()
            .map(|s| match s.origin {
                Origin::Stub(i) => stub
                    .memory_data(&stub.sections[i])
                    .map(Some)
                    .map_err(|e| Error::Measure(e.into())),
                Origin::Input(i) => Ok(match inputs[i].content {
                    Content::Bytes(b) => Some(std::borrow::Cow::Borrowed(b)),
                    Content::Streamed(_) => None,
                }),
            })
            .collect::<Result<_, _>>()?;
        let first = |name: &str| {
            layout
                .sections()
                .iter()
                .position(|s| s.name == name)
                .and_then(|i| images[i].as_deref())
        };
        let identity =
            imgctl_measure::StubIdentity::from_sections(first(".sdmagic"), first(".sbat"));
        let semantics = semantics.unwrap_or_else(|| identity.semantics());
        let names: Vec<&str> = layout.sections().iter().map(|s| s.name.as_str()).collect();
        let selected = imgctl_measure::uki::profile_sections(&names, profile)?;
        Ok(Measured {
            identity,
            semantics,
            selected,
            images,
        })
    }

    /// PCR 11 on a machine that selects no `.dtbauto` (what pcrs.json holds).
    fn predict(
        &self,
        layout: &Layout<'_>,
        digests: &SectionDigests,
        banks: &[HashAlg],
        phases: &[PhasePath],
    ) -> Result<Prediction, Error> {
        self.predict_with_dtb(layout, digests, banks, phases, None)
    }

    /// PCR 11 in every case: no `.dtbauto` selected, then each `.dtbauto` in turn (the recipe's
    /// blobs have distinct compatibles, so each is selected on some machine). One case when the
    /// stub does not select `.dtbauto` sections or the UKI has none.
    fn predict_cases(
        &self,
        layout: &Layout<'_>,
        digests: &SectionDigests,
        banks: &[HashAlg],
        phases: &[PhasePath],
    ) -> Result<Vec<Prediction>, Error> {
        let n = if self.semantics.knows(".dtbauto") {
            self.selected
                .iter()
                .filter(|&&i| layout.sections()[i].name == ".dtbauto")
                .count()
        } else {
            0
        };
        std::iter::once(None)
            .chain((0..n).map(Some))
            .map(|dtb| self.predict_with_dtb(layout, digests, banks, phases, dtb))
            .collect()
    }

    /// PCR 11 with the `dtb`-th `.dtbauto` selected (`None`: none), when the stub selects them.
    fn predict_with_dtb(
        &self,
        layout: &Layout<'_>,
        digests: &SectionDigests,
        banks: &[HashAlg],
        phases: &[PhasePath],
        dtb: Option<usize>,
    ) -> Result<Prediction, Error> {
        let selects = self.semantics.knows(".dtbauto");
        let mut nth = 0;
        let with: Vec<(&str, u64, &[Digest])> = self
            .selected
            .iter()
            .filter(|&&i| {
                if !selects || layout.sections()[i].name != ".dtbauto" {
                    return true;
                }
                nth += 1;
                dtb == Some(nth - 1)
            })
            .map(|&i| {
                let s = &layout.sections()[i];
                (s.name.as_str(), s.virtual_size as u64, digests.of(s))
            })
            .collect();
        Ok(predict_from_section_digests(
            self.semantics,
            &with,
            banks,
            phases,
        )?)
    }

    /// The first selected section named `name`.
    fn find(&self, layout: &Layout<'_>, name: &str) -> Option<usize> {
        self.selected
            .iter()
            .copied()
            .find(|&i| layout.sections()[i].name == name)
    }
}

/// Copies a staged file (the initrd) of `len` bytes into the UKI being written.
fn copy_staged(path: &Path, len: u64, w: &mut dyn std::io::Write, out: &Path) -> Result<(), Error> {
    use std::io::Read;
    let (mut f, size) = imgctl_fsio::open_regular(path)?;
    if size != len {
        return Err(Error::InvalidInput(format!(
            "{}: {size} bytes staged, {len} expected",
            path.display()
        )));
    }
    let mut buf = vec![0u8; crate::hashing::CHUNK];
    let mut left = len;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = match f.read(&mut buf[..want]) {
            Ok(0) => {
                return Err(Error::InvalidInput(format!(
                    "{}: ends {left} bytes early",
                    path.display()
                )))
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io(path, "reading", e)),
        };
        w.write_all(&buf[..n])
            .map_err(|e| Error::io(out, "writing", e))?;
        left -= n as u64;
    }
    Ok(())
}

/// Like [`build`], but leaves the files staged: the caller may add files (a log proof) and
/// commits them all, or drops the stage and nothing is written.
///
/// Streaming: the initrd is written to its temporary file while it is packed and hashed; the
/// UKI is then written to its own, its `.initrd` copied from the initrd's temporary, the file
/// and its Authenticode image hash digested on the way. What stays in memory is the stub, the
/// kernel and the small sections.
pub fn build_staged(recipe: &Recipe, opts: &BuildOptions) -> Result<(BuildOutput, Stage), Error> {
    use crate::hashing::{HashingWriter, Tap};
    let banks = HashAlg::ALL;
    let pcrpkey = match &opts.pcr_key {
        Some(k) => Some(
            k.verifying_key()
                .to_pem()
                .map_err(|e| Error::InvalidInput(format!("PCR signing key: {e}")))?
                .into_bytes(),
        ),
        None => None,
    };
    let kernel_signer = opts
        .secure_boot
        .as_ref()
        .filter(|s| s.sign_kernel)
        .map(|s| s.signer.as_ref());
    let prepared = prepare(
        recipe,
        opts.source_date_epoch,
        pcrpkey.as_deref(),
        kernel_signer,
    )?;
    let stub = PeFile::parse(&prepared.stub).map_err(imgctl_measure::Error::from)?;
    let uki_file = format!("{}.efi", recipe.name);
    let initrd_file = format!("{}.initrd", recipe.name);

    let mut input_paths: Vec<&Path> = vec![&recipe.path, &recipe.stub];
    input_paths.extend(prepared.plan.iter().filter_map(|p| p.source.as_deref()));
    let mut stage = Stage::new(&opts.out_dir, &input_paths)?;
    // Every output is checked before the long work starts.
    for name in [
        uki_file.as_str(),
        initrd_file.as_str(),
        "pcrs.json",
        "manifest.json",
    ] {
        stage.check(name)?;
    }

    // The initrd, to its file, hashed on the way.
    let initrd = match &recipe.initrd {
        Some(spec) => {
            let (path, (len, digests)) = stage.add_streamed(&initrd_file, |w| {
                let fin = opts.out_dir.join(&initrd_file);
                let mut hw = HashingWriter::new(w, vec![Tap::new(&banks)?])?;
                crate::initrd::write_initrd(spec, prepared.mtime, &mut hw, &fin)?;
                let (_, len, mut digests) =
                    hw.finish().map_err(|e| Error::io(&fin, "writing", e))?;
                Ok((len, digests.remove(0)))
            })?;
            let staged = stage
                .temporary(&initrd_file)
                .ok_or_else(|| Error::InvalidInput(format!("{}: not staged", path.display())))?;
            Some((path, staged, len, digests))
        }
        None => None,
    };
    let initrd_content = Content::Streamed(initrd.as_ref().map_or(0, |i| i.2));

    // Lay the UKI out and measure it from the section digests; sign PCR 11 and add .pcrsig.
    let inputs = section_inputs(&prepared.plan, initrd_content, &[]);
    let known: Vec<(usize, Vec<Digest>)> = inputs
        .iter()
        .position(|s| matches!(s.content, Content::Streamed(_)))
        .zip(initrd.as_ref().map(|i| i.3.clone()))
        .into_iter()
        .collect();
    let layout = crate::uki::layout(&prepared.stub, &inputs).map_err(|e| stub_error(recipe, e))?;
    let mut digests = SectionDigests::new(&stub, &inputs, &known, &banks)?;
    // Profiles 0..n of a multi-profile UKI (one, 0, otherwise): each is signed on its own and
    // gets its own .pcrsig, as ukify 257 signs each with systemd-measure over the sections the
    // stub measures when booting it.
    let profiles = layout
        .sections()
        .iter()
        .filter(|s| s.name == ".profile")
        .count()
        .max(1) as u32;
    let pcrsig = match &opts.pcr_key {
        Some(key) => {
            if layout.sections().iter().any(|s| s.name == ".pcrsig") {
                return Err(Error::InvalidInput(
                    "the UKI already has a .pcrsig section".into(),
                ));
            }
            let phases: Vec<PhasePath> = imgctl_measure::pcr11::DEFAULT_PHASE_PATHS
                .iter()
                .map(|p| p.parse())
                .collect::<Result<_, _>>()?;
            let mut sections = Vec::new();
            let mut signed_all = Vec::new();
            for profile in 0..profiles {
                let measured = Measured::new(&layout, &stub, &inputs, opts.semantics, profile)?;
                // Every .dtbauto case is signed: systemd uses the entry the TPM's PCR 11 matches.
                let signed = measured.predict_cases(&layout, &digests, &banks, &phases)?;
                let mut doc = imgctl_measure::pcrsig::PcrSignature::default();
                for case in &signed {
                    doc.append(
                        imgctl_measure::pcrsig::sign(key, None, case)
                            .map_err(|e| Error::InvalidInput(format!("signing PCR 11: {e}")))?,
                    );
                }
                sections.push(pcrsig_section(&doc));
                signed_all.push(signed);
            }
            Some((sections, signed_all, phases))
        }
        None => None,
    };
    let pcrsig_refs: Vec<&[u8]> = pcrsig
        .as_ref()
        .map(|p| p.0.iter().map(Vec::as_slice).collect())
        .unwrap_or_default();
    let inputs = section_inputs(&prepared.plan, initrd_content, &pcrsig_refs);
    let layout = crate::uki::layout(&prepared.stub, &inputs).map_err(|e| stub_error(recipe, e))?;
    // The .pcrsig sections shift the inputs after them: their digests move along, only the
    // .pcrsig sections are hashed.
    digests.insert_pcrsigs(&inputs, &banks)?;
    if let Some((_, signed_all, phases)) = &pcrsig {
        for (profile, signed) in signed_all.iter().enumerate() {
            let measured = Measured::new(&layout, &stub, &inputs, opts.semantics, profile as u32)?;
            if measured.predict_cases(&layout, &digests, &banks, phases)? != *signed {
                return Err(Error::InvalidInput(format!(
                    "adding .pcrsig changed PCR 11 of profile {profile}; refusing to write"
                )));
            }
        }
    }
    let measured = Measured::new(&layout, &stub, &inputs, opts.semantics, 0)?;
    let prediction = measured.predict(&layout, &digests, &banks, &PhasePath::defaults())?;
    let semantics = measured.semantics;

    // The UKI, to its file, digested (file and Authenticode) on the way.
    let (uki_path, (mut uki_size, mut uki_digests, authenticode)) =
        stage.add_streamed(&uki_file, |w| {
            let fin = opts.out_dir.join(&uki_file);
            let taps = vec![
                Tap::new(&banks)?,
                Tap::skipping(&banks, layout.authenticode_excluded())?,
            ];
            let mut hw = HashingWriter::new(w, taps)?;
            layout.write(
                &mut hw,
                &fin,
                &mut |_, w: &mut dyn std::io::Write| match &initrd {
                    Some((_, staged, len, _)) => copy_staged(staged, *len, w, &fin),
                    None => Err(Error::InvalidInput("no initrd to copy".into())),
                },
            )?;
            let (_, size, mut d) = hw.finish().map_err(|e| Error::io(&fin, "writing", e))?;
            let authenticode = d.pop().unwrap_or_default();
            let file = d.pop().unwrap_or_default();
            Ok((size, file, authenticode))
        })?;
    // Secure Boot last: the signature covers every byte of the UKI but its certificate table,
    // so nothing may change after it (ukify's order: .pcrsig, then sbsign).
    if let Some(sb) = &opts.secure_boot {
        let staged = stage
            .temporary(&uki_file)
            .ok_or_else(|| Error::InvalidInput(format!("{}: not staged", uki_path.display())))?;
        (uki_size, uki_digests) = sign_staged_uki(
            &staged,
            &uki_path,
            uki_size,
            &layout.authenticode_excluded(),
            &authenticode,
            sb.signer.as_ref(),
            &banks,
        )?;
    }

    let kernel_authenticode = match measured.find(&layout, ".linux") {
        Some(i) => match measured.images[i].as_deref().map(PeFile::parse) {
            Some(Ok(kernel)) => Some(digests_map(&banks, &authenticode_digests(&kernel, &banks)?)),
            _ => None,
        },
        None => None,
    };
    let pcrs_json = prediction.to_json();

    let section_records: Vec<SectionRecord> = layout
        .sections()
        .iter()
        .map(|s| SectionRecord {
            name: s.name.clone(),
            offset: s.pointer_to_raw_data,
            virtual_address: s.virtual_address,
            virtual_size: s.virtual_size,
            size_of_raw_data: s.size_of_raw_data,
            measured: semantics.measured_sections().any(|m| m == s.name),
            digests: measured
                .find(&layout, &s.name)
                .map(|i| digests_map(&banks, digests.of(&layout.sections()[i])))
                .unwrap_or_default(),
        })
        .collect();
    let record = |role: &str, path: String, size: u64, d: &[Digest]| FileRecord {
        role: role.to_owned(),
        path,
        size,
        digests: digests_map(&banks, d),
    };
    let small = digest_matrix(&banks, &[&prepared.stub, &recipe.source])?;
    let mut inputs_records = vec![record(
        "stub",
        recipe.stub.display().to_string(),
        prepared.stub.len() as u64,
        &small[0],
    )];
    for p in &prepared.plan {
        let size = match &p.data {
            PlannedData::Bytes(b) => b.len() as u64,
            PlannedData::Initrd => initrd.as_ref().map_or(0, |i| i.2),
        };
        let Some(i) = measured.find(&layout, p.name).filter(|_| size > 0) else {
            continue;
        };
        let path = p.source.as_ref().map_or_else(
            || format!("(recipe {})", p.role),
            |s| s.display().to_string(),
        );
        inputs_records.push(record(
            p.role,
            path,
            size,
            digests.of(&layout.sections()[i]),
        ));
    }
    let mut files = vec![record("uki", uki_file.clone(), uki_size, &uki_digests)];
    files.extend(
        initrd
            .as_ref()
            .map(|(_, _, len, d)| record("initrd", initrd_file.clone(), *len, d)),
    );
    files.extend(inputs_records);
    let artifact = ArtifactRecord {
        format: RECORD_FORMAT.to_owned(),
        kind: RecordKind::Uki,
        name: recipe.name.clone(),
        version: recipe.version.clone(),
        builder: format!("imgctl-builder {}", env!("CARGO_PKG_VERSION")),
        source_date_epoch: Some(opts.source_date_epoch),
        recipe: Some(record(
            "recipe",
            recipe.path.display().to_string(),
            recipe.source.len() as u64,
            &small[1],
        )),
        files,
        uki: Some(UkiRecord {
            file: uki_file.clone(),
            size: uki_size,
            digests: digests_map(&banks, &uki_digests),
            authenticode: digests_map(&banks, &authenticode),
            kernel_authenticode,
            stub: StubRecord {
                path: recipe.stub.display().to_string(),
                sdmagic: measured.identity.sdmagic.clone(),
                semantics,
            },
            sections: section_records,
        }),
        pcrs: prediction.to_pcrs_json(),
        events: Vec::new(),
        userspace_events: Vec::new(),
        extension: None,
        // The .pcrsig sections it carries (one per profile): whose key, signing which PCR 11
        // values (every profile's).
        policy: match (&opts.pcr_key, &pcrsig) {
            (Some(key), Some((_, signed_all, _))) => Some(PolicyRecord::new(
                &key.public().fingerprint(),
                &signed_all.iter().flatten().collect::<Vec<_>>(),
            )),
            _ => None,
        },
    };
    artifact
        .check()
        .map_err(|e| Error::InvalidInput(format!("artifact record: {e}")))?;

    let pcrs_path = stage.add("pcrs.json", &to_json_bytes(&pcrs_json)?)?;
    let manifest_path = stage.add("manifest.json", &artifact.to_json_bytes())?;
    let out = BuildOutput {
        uki: uki_path,
        initrd: initrd.map(|i| i.0),
        pcrs: pcrs_path,
        manifest_path,
        record: artifact,
        prediction,
    };
    Ok((out, stage))
}

/// Signs the UKI staged at `staged` in place: one `WIN_CERTIFICATE` appended, the Certificate
/// Table directory and the CheckSum set, as [`imgctl_measure::authenticode_sign::Unsigned`]
/// does in memory. `authenticode` is the image's Authenticode hash in every bank, taken while
/// it was written; the SHA-256 one is what the signature carries. Streams: the file is read
/// back twice (CheckSum, then the file digests), never held. Returns the new size and file
/// digests.
fn sign_staged_uki(
    staged: &Path,
    fin: &Path,
    size: u64,
    excluded: &[std::ops::Range<u64>],
    authenticode: &[Digest],
    signer: &dyn AuthenticodeSigner,
    banks: &[HashAlg],
) -> Result<(u64, Vec<Digest>), Error> {
    use imgctl_measure::authenticode_sign::{
        spc_indirect_data_sha256, win_certificates, PeChecksum,
    };
    use std::io::{Read, Seek, SeekFrom, Write};
    let invalid = |m: String| Error::InvalidInput(format!("{}: {m}", fin.display()));
    if size % 8 != 0 {
        // The layout pads every section to FileAlignment; a UKI of another size would need
        // the padding hashed first.
        return Err(invalid(format!(
            "{size} bytes is not a multiple of 8; cannot sign it"
        )));
    }
    // What Authenticode leaves out of the headers: the CheckSum field (4 bytes) and the
    // Certificate Table directory entry (8 bytes), the two fields signing sets.
    let field = |len: u64| {
        excluded
            .iter()
            .find(|r| r.end - r.start == len)
            .cloned()
            .ok_or_else(|| invalid("no CheckSum or Certificate Table entry to set".into()))
    };
    let (checksum, directory) = (field(4)?, field(8)?);
    let sha256: [u8; 32] = banks
        .iter()
        .position(|b| *b == HashAlg::SHA256)
        .and_then(|i| authenticode.get(i))
        .and_then(|d| d.as_bytes().try_into().ok())
        .ok_or_else(|| invalid("no SHA-256 Authenticode hash".into()))?;
    let signature = signer
        .sign_indirect_data(&spc_indirect_data_sha256(&sha256))
        .map_err(|m| invalid(format!("signing for Secure Boot: {m}")))?;
    let table = win_certificates(&[&signature]).map_err(|e| invalid(e.to_string()))?;
    let start = u32::try_from(size).map_err(|_| invalid("larger than 4 GiB".into()))?;
    let table_len =
        u32::try_from(table.len()).map_err(|_| invalid("signature too large".into()))?;
    start
        .checked_add(table_len)
        .ok_or_else(|| invalid("larger than 4 GiB once signed".into()))?;

    let io = |action| move |e| Error::io(fin, action, e);
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(staged)
        .map_err(io("opening"))?;
    f.seek(SeekFrom::Start(size)).map_err(io("seeking"))?;
    f.write_all(&table).map_err(io("writing"))?;
    let mut dir = [0u8; 8];
    dir[..4].copy_from_slice(&start.to_le_bytes());
    dir[4..].copy_from_slice(&table_len.to_le_bytes());
    f.seek(SeekFrom::Start(directory.start))
        .map_err(io("seeking"))?;
    f.write_all(&dir).map_err(io("writing"))?;

    let checksum_offset =
        usize::try_from(checksum.start).map_err(|_| invalid("CheckSum offset".into()))?;
    let mut sum = PeChecksum::new(checksum_offset);
    let mut buf = vec![0u8; 1 << 20];
    f.seek(SeekFrom::Start(0)).map_err(io("seeking"))?;
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io(fin, "reading", e)),
        };
        sum.update(&buf[..n]);
    }
    f.seek(SeekFrom::Start(checksum.start))
        .map_err(io("seeking"))?;
    f.write_all(&sum.finish().to_le_bytes())
        .map_err(io("writing"))?;

    f.seek(SeekFrom::Start(0)).map_err(io("seeking"))?;
    let mut hw = crate::hashing::HashingWriter::new(
        std::io::sink(),
        vec![crate::hashing::Tap::new(banks)?],
    )?;
    std::io::copy(&mut f, &mut hw).map_err(io("reading"))?;
    let (_, total, mut digests) = hw.finish().map_err(io("hashing"))?;
    f.sync_all().map_err(io("syncing"))?;
    Ok((total, digests.pop().unwrap_or_default()))
}

fn to_json_bytes<T: Serialize>(v: &T) -> Result<Vec<u8>, Error> {
    let mut out = serde_json::to_vec_pretty(v)
        .map_err(|e| Error::InvalidInput(format!("encoding JSON: {e}")))?;
    out.push(b'\n');
    Ok(out)
}

/// The `.pcrsig` section's content: the JSON text alone, as ukify 257 writes it (Python's
/// `json.dumps` spacing, no NUL: [`PcrSignature::to_ukify_json`]). The stub passes the whole
/// section to the initrd as `/.extra/tpm2-pcr-signature.json`, which systemd-cryptsetup and
/// systemd-cryptenroll parse as JSON: a trailing NUL makes systemd 257 refuse it ("Failed to
/// load pcr signature: Bad message", seen booting this image), and the TPM unlock with it.
pub fn pcrsig_section(doc: &imgctl_measure::pcrsig::PcrSignature) -> Vec<u8> {
    doc.to_ukify_json().into_bytes()
}

/// The UKI with `.pcrsig` = [`pcrsig_section`] of `doc` appended as its last section.
/// Refuses a UKI that already has one, and checks that every other section, name and loaded
/// bytes, is unchanged: `.pcrsig` is never measured, so whatever PCR 11 was signed (any profile,
/// any `.dtbauto` selection, any stub version) stays valid for the result.
pub fn append_pcrsig(
    uki: &[u8],
    doc: &imgctl_measure::pcrsig::PcrSignature,
) -> Result<Vec<u8>, Error> {
    let before = Uki::parse(uki).map_err(imgctl_measure::Error::from)?;
    if before.pe.section(".pcrsig").is_some() {
        return Err(Error::InvalidInput(
            "the UKI already has a .pcrsig section".into(),
        ));
    }
    let out = assemble(
        uki,
        &[NewSection {
            name: ".pcrsig".into(),
            data: pcrsig_section(doc),
        }],
    )?;
    let after = Uki::parse(&out).map_err(imgctl_measure::Error::from)?;
    let loaded = |u: &Uki<'_>| -> Result<Vec<(String, Vec<u8>)>, Error> {
        u.pe.sections
            .iter()
            .filter(|s| s.name != ".pcrsig")
            .map(|s| Ok((s.name.clone(), u.pe.memory_data(s)?.into_owned())))
            .collect::<Result<_, imgctl_measure::ParseError>>()
            .map_err(|e| Error::from(imgctl_measure::Error::from(e)))
    };
    if loaded(&before)? != loaded(&after)? {
        return Err(Error::InvalidInput(
            "adding .pcrsig changed the measured sections; refusing to write".into(),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_values_are_quoted_when_needed() {
        let t = os_release_text(&[
            ("ID".into(), "demo".into()),
            ("PRETTY_NAME".into(), "Demo \"1\" $x".into()),
        ]);
        assert_eq!(t, "ID=demo\nPRETTY_NAME=\"Demo \\\"1\\\" \\$x\"\n");
    }
}
