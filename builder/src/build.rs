//! The build plan: recipe → initrd → UKI → measurements → manifest, written atomically.
//!
//! Output folder (default `images/NAME/`): `NAME.efi` (the UKI), `NAME.initrd` (the initrd
//! that went into it, when there is one), `pcrs.json` (PCR 11 predictions in
//! `systemd-measure calculate --json` shape) and `manifest.json` (written last).

use std::path::{Path, PathBuf};

use imgctl_measure::authenticode::authenticode_digests;
use imgctl_measure::pe::PeFile;
use imgctl_measure::predict::{digest_matrix, predict_from_digests};
use imgctl_measure::{Digest, HashAlg, PhasePath, Prediction, StubSemantics, Uki};
use serde::Serialize;

pub use crate::output::Stage;
use crate::recipe::{OsRelease, Recipe};
use crate::uki::{
    assemble, check_stub, check_stub_identity, merge_sbat, pe_sbat, NewSection, SBAT_UKI_DEFAULT,
};
use crate::Error;

pub use imgctl_measure::manifest::{
    Digests, FileRecord, Manifest, SectionRecord, StubRecord, UkiRecord, MANIFEST_FORMAT,
};

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
}

impl BuildOptions {
    pub fn new(out_dir: PathBuf, source_date_epoch: u64) -> Self {
        BuildOptions {
            out_dir,
            source_date_epoch,
            semantics: None,
            pcr_key: None,
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
    pub manifest: Manifest,
    pub prediction: Prediction,
}

fn digests_map(banks: &[HashAlg], d: &[Digest]) -> Digests {
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

/// One planned section with where its bytes came from.
#[derive(Debug, Clone)]
struct Planned {
    name: &'static str,
    role: &'static str,
    source: Option<PathBuf>,
    data: Vec<u8>,
}

/// A UKI assembled in memory from a recipe, not yet written.
#[derive(Debug, Clone)]
pub struct Assembled {
    pub uki: Vec<u8>,
    pub initrd: Option<Vec<u8>>,
    pub stub: Vec<u8>,
    plan: Vec<Planned>,
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
    let stub_err = |e: Error| match e {
        Error::Stub(m) => Error::Stub(format!("stub {}: {m}", recipe.stub.display())),
        other => other,
    };
    let stub_bytes = read(&recipe.stub, "reading the stub")?;
    let stub = PeFile::parse(&stub_bytes).map_err(|e| {
        Error::Stub(format!(
            "stub {}: not a valid PE image: {e}",
            recipe.stub.display()
        ))
    })?;
    check_stub(&stub).map_err(stub_err)?;
    check_stub_identity(&stub).map_err(stub_err)?;

    let kernel = read(&recipe.kernel, "reading the kernel")?;
    crate::kernel::check_kernel(&kernel)
        .map_err(|m| Error::InvalidInput(format!("kernel {}: {m}", recipe.kernel.display())))?;
    let uname = match &recipe.uname {
        Some(u) => Some(u.clone()),
        None => crate::kernel::kernel_release(&kernel),
    };
    let mtime = u32::try_from(source_date_epoch).map_err(|_| {
        Error::InvalidInput("SOURCE_DATE_EPOCH does not fit the cpio format (32 bits)".into())
    })?;
    let initrd = match &recipe.initrd {
        Some(spec) => Some(crate::initrd::build_initrd(spec, mtime)?),
        None => None,
    };
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

    // ukify's insertion order: .osrel .cmdline .dtb .uname .splash .pcrpkey .initrd, .sbat,
    // and .linux last (its PE file order does not affect PCR 11).
    let mut plan: Vec<Planned> = Vec::new();
    let mut push = |name, role, source: Option<PathBuf>, data: Vec<u8>| {
        if !data.is_empty() {
            plan.push(Planned {
                name,
                role,
                source,
                data,
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
    push(
        ".initrd",
        "initrd",
        None,
        initrd.clone().unwrap_or_default(),
    );
    push(".sbat", "sbat", None, sbat);
    push(".linux", "kernel", Some(recipe.kernel.clone()), kernel);

    let new_sections: Vec<NewSection> = plan
        .iter()
        .map(|p| NewSection {
            name: p.name.to_owned(),
            data: p.data.clone(),
        })
        .collect();
    let uki_bytes = assemble(&stub_bytes, &new_sections).map_err(stub_err)?;

    Ok(Assembled {
        uki: uki_bytes,
        initrd,
        stub: stub_bytes,
        plan,
    })
}

/// Builds the UKI a recipe describes and writes it, its initrd, pcrs.json and manifest.json.
pub fn build(recipe: &Recipe, opts: &BuildOptions) -> Result<BuildOutput, Error> {
    let (out, stage) = build_staged(recipe, opts)?;
    stage.commit()?;
    Ok(out)
}

/// Like [`build`], but leaves the files staged: the caller may add files (a log proof) and
/// commits them all, or drops the stage and nothing is written.
pub fn build_staged(recipe: &Recipe, opts: &BuildOptions) -> Result<(BuildOutput, Stage), Error> {
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
    let Assembled {
        uki: uki_bytes,
        initrd,
        stub: stub_bytes,
        plan,
    } = assemble_recipe(recipe, opts.source_date_epoch, pcrpkey.as_deref())?;
    let uki_bytes = match &opts.pcr_key {
        Some(key) => embed_pcrsig(uki_bytes, key, opts.semantics)?,
        None => uki_bytes,
    };
    // Measure what was built, from the built bytes.
    let uki = Uki::parse(&uki_bytes).map_err(imgctl_measure::Error::from)?;
    let identity = uki.identity();
    let semantics = opts.semantics.unwrap_or_else(|| identity.semantics());
    let sections = uki.sections_for_profile(0)?;
    let contents: Vec<&[u8]> = sections.iter().map(|(_, d)| d.as_ref()).collect();
    let mut digest_inputs = contents.clone();
    digest_inputs.push(&uki_bytes);
    digest_inputs.push(&recipe.source);
    let initrd_index = initrd.as_ref().map(|i| {
        digest_inputs.push(i);
        digest_inputs.len() - 1
    });
    let matrix = digest_matrix(&banks, &digest_inputs)?;
    let with: Vec<(&str, &[u8], &[Digest])> = sections
        .iter()
        .zip(&matrix)
        .map(|((n, d), m)| (n.as_str(), d.as_ref(), m.as_slice()))
        .collect();
    let prediction = predict_from_digests(semantics, &with, &banks, &PhasePath::defaults())?;
    let authenticode = authenticode_digests(&uki.pe, &banks)?;
    let kernel_authenticode = match sections.iter().find(|(n, _)| n == ".linux") {
        Some((_, data)) => match PeFile::parse(data) {
            Ok(kernel) => Some(digests_map(&banks, &authenticode_digests(&kernel, &banks)?)),
            Err(_) => None,
        },
        None => None,
    };
    let pcrs_json = prediction.to_json();

    let section_records: Vec<SectionRecord> = uki
        .pe
        .sections
        .iter()
        .map(|s| {
            let idx = sections.iter().position(|(n, _)| *n == s.name);
            SectionRecord {
                name: s.name.clone(),
                offset: s.pointer_to_raw_data,
                virtual_address: s.virtual_address,
                virtual_size: s.virtual_size,
                size_of_raw_data: s.size_of_raw_data,
                measured: semantics.measured_sections().any(|m| m == s.name),
                digests: idx
                    .map(|i| digests_map(&banks, &matrix[i]))
                    .unwrap_or_default(),
            }
        })
        .collect();
    let record = |role: &str, path: String, size: usize, d: &[Digest]| FileRecord {
        role: role.to_owned(),
        path,
        size: size as u64,
        digests: digests_map(&banks, d),
    };
    let mut inputs = vec![record(
        "stub",
        recipe.stub.display().to_string(),
        stub_bytes.len(),
        &digest_matrix(&banks, &[&stub_bytes])?[0],
    )];
    for p in &plan {
        let Some(i) = sections.iter().position(|(n, _)| n == p.name) else {
            continue;
        };
        let path = p.source.as_ref().map_or_else(
            || format!("(recipe {})", p.role),
            |s| s.display().to_string(),
        );
        inputs.push(record(p.role, path, p.data.len(), &matrix[i]));
    }
    let n = sections.len();
    let uki_file = format!("{}.efi", recipe.name);
    let initrd_file = format!("{}.initrd", recipe.name);
    let manifest = Manifest {
        format: MANIFEST_FORMAT.to_owned(),
        name: recipe.name.clone(),
        version: recipe.version.clone(),
        builder: format!("imgctl-builder {}", env!("CARGO_PKG_VERSION")),
        source_date_epoch: opts.source_date_epoch,
        recipe: record(
            "recipe",
            recipe.path.display().to_string(),
            recipe.source.len(),
            &matrix[n + 1],
        ),
        inputs,
        uki: UkiRecord {
            file: uki_file.clone(),
            size: uki_bytes.len() as u64,
            digests: digests_map(&banks, &matrix[n]),
            authenticode: digests_map(&banks, &authenticode),
            kernel_authenticode,
            stub: StubRecord {
                path: recipe.stub.display().to_string(),
                sdmagic: identity.sdmagic.clone(),
                semantics,
            },
            sections: section_records,
        },
        initrd: initrd_index.map(|i| {
            record(
                "initrd",
                initrd_file.clone(),
                initrd.as_ref().map_or(0, Vec::len),
                &matrix[i],
            )
        }),
        events: Vec::new(),
        pcrs: prediction.to_pcrs_json(),
    };

    let mut input_paths: Vec<&Path> = vec![&recipe.path, &recipe.stub];
    input_paths.extend(plan.iter().filter_map(|p| p.source.as_deref()));
    let mut stage = Stage::new(&opts.out_dir, &input_paths)?;
    let uki_path = stage.add(&uki_file, &uki_bytes)?;
    let initrd_path = match &initrd {
        Some(i) => Some(stage.add(&initrd_file, i)?),
        None => None,
    };
    let pcrs_path = stage.add("pcrs.json", &to_json_bytes(&pcrs_json)?)?;
    let manifest_path = stage.add("manifest.json", &manifest.to_json_bytes())?;
    let out = BuildOutput {
        uki: uki_path,
        initrd: initrd_path,
        pcrs: pcrs_path,
        manifest_path,
        manifest,
        prediction,
    };
    Ok((out, stage))
}

fn to_json_bytes<T: Serialize>(v: &T) -> Result<Vec<u8>, Error> {
    let mut out = serde_json::to_vec_pretty(v)
        .map_err(|e| Error::InvalidInput(format!("encoding JSON: {e}")))?;
    out.push(b'\n');
    Ok(out)
}

/// Signs the UKI's PCR 11 values (every bank, systemd-measure's default phase paths) and appends
/// the `.pcrsig` section.
fn embed_pcrsig(
    uki_bytes: Vec<u8>,
    key: &imgctl_measure::keys::SigningKey,
    semantics: Option<StubSemantics>,
) -> Result<Vec<u8>, Error> {
    let phases: Vec<PhasePath> = imgctl_measure::pcr11::DEFAULT_PHASE_PATHS
        .iter()
        .map(|p| p.parse())
        .collect::<Result<_, _>>()?;
    let signed = predict_uki(&uki_bytes, semantics, 0, &HashAlg::ALL, &phases)?;
    let doc = imgctl_measure::pcrsig::sign(key, None, &signed)
        .map_err(|e| Error::InvalidInput(format!("signing PCR 11: {e}")))?;
    append_pcrsig(&uki_bytes, &doc.to_json(), semantics, 0, &signed)
}

/// PCR 11 of a UKI's `profile` in `banks` and `phases` (semantics detected when `None`).
fn predict_uki(
    bytes: &[u8],
    semantics: Option<StubSemantics>,
    profile: u32,
    banks: &[HashAlg],
    phases: &[PhasePath],
) -> Result<Prediction, Error> {
    let uki = Uki::parse(bytes).map_err(imgctl_measure::Error::from)?;
    let semantics = semantics.unwrap_or_else(|| uki.identity().semantics());
    let sections = uki.sections_for_profile(profile)?;
    let measured = imgctl_measure::uki::as_measured(&sections);
    Ok(imgctl_measure::predict_pcr11(
        semantics, &measured, banks, phases,
    )?)
}

/// The UKI with `.pcrsig` = `json` + NUL (as ukify embeds it) appended as its last section.
/// Refuses a UKI that already has one, and checks that PCR 11 is still `signed`: `.pcrsig` is
/// never measured, so the signature stays valid for the result.
pub fn append_pcrsig(
    uki: &[u8],
    json: &str,
    semantics: Option<StubSemantics>,
    profile: u32,
    signed: &Prediction,
) -> Result<Vec<u8>, Error> {
    let before = Uki::parse(uki).map_err(imgctl_measure::Error::from)?;
    if before.pe.section(".pcrsig").is_some() {
        return Err(Error::InvalidInput(
            "the UKI already has a .pcrsig section".into(),
        ));
    }
    let mut data = json.as_bytes().to_vec();
    data.push(0);
    let out = assemble(
        uki,
        &[NewSection {
            name: ".pcrsig".into(),
            data,
        }],
    )?;
    let banks: Vec<HashAlg> = signed.banks.iter().map(|(b, _)| *b).collect();
    let phases: Vec<PhasePath> = signed
        .banks
        .first()
        .map(|(_, v)| v.iter().map(|(p, _)| p.clone()).collect())
        .unwrap_or_default();
    if predict_uki(&out, semantics, profile, &banks, &phases)? != *signed {
        return Err(Error::InvalidInput(
            "adding .pcrsig changed PCR 11; refusing to write".into(),
        ));
    }
    Ok(out)
}

/// The transparency-log entry for a built UKI: its digest in every bank, its PCR 11 predictions
/// per bank and phase, the recipe's digest and the builder's version.
pub fn log_entry(out: &BuildOutput) -> Result<imgctl_measure::tlog::LogEntry, Error> {
    use imgctl_measure::tlog::entry::PredictedPcr;
    use imgctl_measure::tlog::{ArtifactKind, LogEntry};
    let parse = |bank: &str, hex_value: &str| -> Result<(HashAlg, Digest), Error> {
        let b: HashAlg = bank
            .parse()
            .map_err(|e| Error::InvalidInput(format!("{e}")))?;
        let d = hex::decode(hex_value)
            .map_err(|e| Error::InvalidInput(format!("digest {hex_value}: {e}")))?;
        Ok((b, Digest(d)))
    };
    let digests = out
        .manifest
        .uki
        .digests
        .iter()
        .map(|(b, h)| parse(b, h))
        .collect::<Result<Vec<_>, _>>()?;
    let pcrs = out
        .prediction
        .banks
        .iter()
        .flat_map(|(bank, values)| {
            values.iter().map(move |(phase, value)| PredictedPcr {
                pcr: imgctl_measure::pcr11::PCR_KERNEL_IMAGE,
                bank: *bank,
                phase: phase.clone(),
                value: value.clone(),
            })
        })
        .collect();
    let recipe = parse(
        "sha256",
        out.manifest
            .recipe
            .digests
            .get("sha256")
            .map_or("", String::as_str),
    )?;
    let builder = format!("imgctl/{}", env!("CARGO_PKG_VERSION"));
    LogEntry::new(
        ArtifactKind::Uki,
        &out.manifest.name,
        &out.manifest.version,
        digests,
        pcrs,
        recipe,
        &builder,
    )
    .map_err(|e| Error::InvalidInput(format!("log entry: {e}")))
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
