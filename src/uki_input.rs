//! Reading the thing a command is pointed at: a built UKI, or a recipe to assemble in memory.

use std::path::{Path, PathBuf};

use anyhow::Context;
use imgctl_builder::recipe::Recipe;

/// The largest UKI (or recipe) a command reads whole: far above any real one (tens of MiB).
pub const MAX_INPUT: u64 = 4 << 30;

/// UKI bytes from a path that is either a PE image or a recipe.
pub fn load_uki(path: &Path) -> anyhow::Result<Vec<u8>> {
    let data = imgctl_fsio::read_bounded(path, crate::uki_input::MAX_INPUT, "a UKI or a recipe")?;
    if data.starts_with(b"MZ") {
        return Ok(data);
    }
    if let Err(what) = imgctl_builder::recipe::looks_like_recipe(&data) {
        anyhow::bail!(
            "{}: neither a PE image (no MZ) nor a recipe ({what})",
            path.display()
        );
    }
    let recipe = Recipe::parse(path, data)?;
    let sde = crate::output::source_date_epoch()?;
    let assembled = imgctl_builder::build::assemble_recipe(&recipe, sde, None)?;
    Ok(assembled.uki)
}

/// `--stub-semantics`: which systemd-stub's measurements to predict with.
///
/// `auto` detects it from the stub inside the UKI (`.sdmagic`); otherwise a systemd version,
/// `257` or `systemd-257`, read as the row of the version table that version follows
/// (`imgctl_measure::pcr11::STUB_VERSIONS`: 252, 254, 256, 257, 258).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SemanticsArg {
    #[default]
    Auto,
    Fixed(imgctl_measure::StubSemantics),
}

impl std::str::FromStr for SemanticsArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "auto" {
            return Ok(SemanticsArg::Auto);
        }
        imgctl_measure::StubSemantics::from_version_name(s)
            .map(SemanticsArg::Fixed)
            .ok_or_else(|| {
                format!(
                    "{s:?} is neither `auto` nor a systemd version 252 or later (e.g. 257 or systemd-257)"
                )
            })
    }
}

impl SemanticsArg {
    /// The semantics named, for inputs that carry no stub to detect it from (`auto` is refused).
    pub fn explicit(self, what: &str) -> anyhow::Result<imgctl_measure::StubSemantics> {
        match self {
            SemanticsArg::Auto => anyhow::bail!(
                "--stub-semantics auto: {what} carries no stub to detect it from; give the systemd version of the stub (e.g. 252 or 257)"
            ),
            SemanticsArg::Fixed(s) => Ok(s),
        }
    }

    /// The semantics named, or `None` for `auto`.
    pub fn fixed(self) -> Option<imgctl_measure::StubSemantics> {
        match self {
            SemanticsArg::Auto => None,
            SemanticsArg::Fixed(s) => Some(s),
        }
    }

    pub fn resolve(self, uki: &imgctl_measure::Uki<'_>) -> imgctl_measure::StubSemantics {
        self.fixed().unwrap_or_else(|| uki.identity().semantics())
    }
}

/// Phase paths from `--phase` arguments, sorted and deduplicated as systemd-measure does; the
/// `defaults` when none are given.
pub fn phase_paths(
    args: &[String],
    defaults: Vec<imgctl_measure::PhasePath>,
) -> anyhow::Result<Vec<imgctl_measure::PhasePath>> {
    if args.is_empty() {
        return Ok(defaults);
    }
    let parsed = args
        .iter()
        .map(|p| p.parse::<imgctl_measure::PhasePath>())
        .collect::<Result<Vec<_>, _>>()?;
    Ok(imgctl_measure::PhasePath::sort_uniq(parsed))
}

/// Parses UKI bytes and returns the stub semantics to apply and the sections the stub sees for
/// `profile`; errors name `input`.
pub fn measured_sections<'a>(
    input: &Path,
    data: &'a [u8],
    semantics: SemanticsArg,
    profile: u32,
) -> anyhow::Result<(
    imgctl_measure::Uki<'a>,
    imgctl_measure::StubSemantics,
    Vec<imgctl_measure::uki::SectionData<'a>>,
)> {
    let uki = imgctl_measure::Uki::parse(data)
        .with_context(|| format!("{}: not a valid PE image", input.display()))?;
    let semantics = semantics.resolve(&uki);
    let sections = uki
        .sections_for_profile(profile)
        .with_context(|| input.display().to_string())?;
    Ok((uki, semantics, sections))
}

/// Which `.dtbauto` the machine makes a 257+ stub select (`--dtb-match`, `--hwids`, `--no-dtb`);
/// none of them: every case.
#[derive(Debug, Clone, clap::Args)]
pub struct DtbArgs {
    /// The machine's devicetree compatible (the first string of its firmware devicetree's root
    /// `compatible`, or the one the UKI's .hwids entry for it names): use the `.dtbauto` the
    /// stub selects for it (systemd 257+). Default: every `.dtbauto` the stub may select, and none.
    #[arg(long, value_name = "COMPATIBLE", conflicts_with_all = ["no_dtb", "hwids"])]
    dtb_match: Option<String>,
    /// The machine's SMBIOS: a raw table (/sys/firmware/dmi/tables/DMI) or JSON with fwupd's
    /// keys ({"Manufacturer", "Family", "ProductName", "ProductSku", "BaseboardManufacturer",
    /// "BaseboardProduct"}). Its CHIDs pick the UKI's .hwids device and so the `.dtbauto` a
    /// systemd 257 stub selects on a machine without a firmware devicetree (x86), or none.
    #[arg(long, value_name = "SMBIOS", conflicts_with = "no_dtb")]
    hwids: Option<PathBuf>,
    /// The machine selects no `.dtbauto` (e.g. x86 without a devicetree).
    #[arg(long)]
    no_dtb: bool,
    /// What `--hwids` selected, once resolved (for the text output).
    #[arg(skip)]
    selected: std::cell::OnceCell<String>,
}

/// The most a `--hwids` file may hold (a raw SMBIOS table or its JSON).
const MAX_SMBIOS_FILE: u64 = imgctl_measure::smbios::MAX_TABLE as u64;

impl DtbArgs {
    /// The machine's choice, or `None` for every case. With `--hwids`, the `.hwids` device its
    /// CHIDs select among `sections` (the first `.hwids`, as the stub reads it) gives the
    /// compatible; what was selected is said on stderr and kept for [`Self::selection`]. (The
    /// stub matches the base's `.dtbauto` with the base's `.hwids` and a profile's with the
    /// profile's; here the first `.hwids` the booted profile sees serves both.)
    pub fn choice<'b>(
        &self,
        input: &Path,
        semantics: imgctl_measure::StubSemantics,
        sections: impl Iterator<Item = (&'b str, &'b [u8])> + Clone,
    ) -> anyhow::Result<Option<imgctl_measure::uki::DtbChoice>> {
        use imgctl_measure::chid::{self, HwidsMatch};
        use imgctl_measure::uki::DtbChoice;
        let Some(file) = &self.hwids else {
            return Ok(match (&self.dtb_match, self.no_dtb) {
                (Some(c), _) => Some(DtbChoice::Compatible(c.clone())),
                (None, true) => Some(DtbChoice::None),
                (None, false) => None,
            });
        };
        let data = imgctl_fsio::read_bounded(file, MAX_SMBIOS_FILE, "an SMBIOS table or JSON")?;
        let fields = chid::SmbiosFields::parse(&file.display().to_string(), &data)?;
        let chids = chid::chids(&fields);
        let say = |what: String| {
            eprintln!("imgctl: --hwids {}: {what}", file.display());
            let _ = self.selected.set(what);
        };
        if !semantics.knows(".hwids") {
            say(format!(
                "a {} stub does not read .hwids: none selected",
                semantics.name()
            ));
            return Ok(Some(DtbChoice::None));
        }
        let Some((_, hwids)) = sections.clone().find(|(n, _)| *n == ".hwids") else {
            say(format!(
                "{} has no .hwids section: none selected",
                input.display()
            ));
            return Ok(Some(DtbChoice::None));
        };
        let matched = chid::match_hwids(hwids, &chids)
            .with_context(|| format!("{}: .hwids", input.display()))?;
        let (kind, uuid, name, compatible) = match matched {
            HwidsMatch::Device {
                chid_type,
                chid,
                name,
                compatible,
                ..
            } => (chid_type, chid, name, compatible),
            HwidsMatch::NoMatch => {
                say("no .hwids device has one of the machine's CHIDs: none selected".into());
                return Ok(Some(DtbChoice::None));
            }
            HwidsMatch::Unsupported { index, descriptor } => {
                say(format!(
                    ".hwids record {index} is not a devicetree record (descriptor {descriptor:#x}), so the stub matches nothing: none selected"
                ));
                return Ok(Some(DtbChoice::None));
            }
        };
        let device = format!(
            "CHID type {kind} {} is .hwids device {:?}",
            imgctl_measure::hwids::format_uuid(&uuid),
            name.as_deref().unwrap_or("(no name)")
        );
        let Some(compatible) = compatible else {
            say(format!(
                "{device}, which names no compatible: none selected"
            ));
            return Ok(Some(DtbChoice::None));
        };
        let (candidates, _) = imgctl_measure::uki::dtbauto_candidates_of(sections);
        match candidates.iter().find(|c| c.compatible == compatible) {
            Some(c) => say(format!(
                "{device} ({compatible}): .dtbauto #{} selected",
                c.index
            )),
            None => say(format!(
                "{device} ({compatible}), but no .dtbauto is {compatible:?}: none selected"
            )),
        }
        Ok(Some(DtbChoice::Compatible(compatible)))
    }

    /// What `--hwids` selected, after [`Self::choice`].
    pub fn selection(&self) -> Option<&str> {
        self.selected.get().map(String::as_str)
    }

    /// PCR 11 for the machine named (or every `.dtbauto` case), with a spinner, errors naming
    /// `input`; warns when `--dtb-match` names a compatible no `.dtbauto` of `input` has.
    pub fn predict(
        &self,
        input: &Path,
        semantics: imgctl_measure::StubSemantics,
        sections: &[imgctl_measure::uki::SectionData<'_>],
        banks: &[imgctl_measure::HashAlg],
        phases: &[imgctl_measure::PhasePath],
    ) -> anyhow::Result<
        Vec<(
            Option<imgctl_measure::uki::DtbCandidate>,
            imgctl_measure::Prediction,
        )>,
    > {
        let choice = self.choice(
            input,
            semantics,
            sections.iter().map(|(n, d)| (n.as_str(), d.as_ref())),
        )?;
        let rows = crate::output::with_spinner("hashing sections", || {
            imgctl_measure::predict::predict_pcr11_per_dtb(
                semantics,
                sections,
                banks,
                phases,
                choice.as_ref(),
            )
        })
        .with_context(|| input.display().to_string())?;
        self.warn_unmatched(input, semantics, sections);
        Ok(rows)
    }

    /// Warns when `--dtb-match` names a compatible no `.dtbauto` of `input` has.
    fn warn_unmatched(
        &self,
        input: &Path,
        semantics: imgctl_measure::StubSemantics,
        sections: &[imgctl_measure::uki::SectionData<'_>],
    ) {
        if let (Some(c), true) = (&self.dtb_match, semantics.knows(".dtbauto")) {
            let (candidates, _) = imgctl_measure::uki::dtbauto_candidates(sections);
            if !candidates.iter().any(|d| d.compatible == *c) {
                eprintln!(
                    "imgctl: warning: no .dtbauto of {} is {c:?}: none is selected",
                    input.display()
                );
            }
        }
    }
}

/// A UKI file's PCR 11 prediction, computed without holding the file ([`predict_streamed`]).
#[derive(Debug)]
pub struct StreamedPrediction {
    pub semantics: imgctl_measure::StubSemantics,
    /// The names of the sections of the profile booted, in section-table order.
    pub section_names: Vec<String>,
    pub rows: Vec<(
        Option<imgctl_measure::uki::DtbCandidate>,
        imgctl_measure::Prediction,
    )>,
}

/// Bytes read first for the PE headers and section table (a UKI's are under 4 KiB).
const HEAD: u64 = 64 << 10;

/// PCR 11 for the UKI at `input`, reading each measured section once from the file while every
/// bank hashes it: the banks are split across the cores (two slow, SHA-384 and SHA-512, on
/// different ones) and each core hashes every chunk in its banks as it is read, so the read
/// overlaps the hashing and no copy of the file is made. Only what decides what is measured is
/// read ahead (`.sdmagic` and `.sbat` for `--stub-semantics auto`, the `.dtbauto` devicetrees).
/// `Ok(None)` when `input` is not a PE file whose headers this reads (a recipe, or a file the
/// whole-file path should judge and name the fault of). The file must not change while it is
/// read: its size and times are compared before and after.
pub fn predict_streamed(
    input: &Path,
    semantics: SemanticsArg,
    profile: u32,
    dtb: &DtbArgs,
    banks: &[imgctl_measure::HashAlg],
    phases: &[imgctl_measure::PhasePath],
) -> anyhow::Result<Option<StreamedPrediction>> {
    use imgctl_fsio::fanout::{read_fanned_out, Extent};
    use imgctl_measure::bank::{split_banks, MultiDigest};
    use imgctl_measure::pe::{PeFile, Section};
    use imgctl_measure::predict::{predict_per_dtb_from_digests, sections_to_digest, SectionInfo};
    use std::os::unix::fs::{FileExt, MetadataExt};

    let (file, len) = imgctl_fsio::open_regular(input)?;
    if len > MAX_INPUT {
        return Ok(None);
    }
    let stamp = |f: &std::fs::File| {
        f.metadata()
            .map(|m| {
                (
                    m.len(),
                    m.mtime(),
                    m.mtime_nsec(),
                    m.ctime(),
                    m.ctime_nsec(),
                )
            })
            .with_context(|| format!("{}: reading metadata", input.display()))
    };
    let before = stamp(&file)?;
    let mut head = vec![0; usize::try_from(len.min(HEAD))?];
    file.read_exact_at(&mut head, 0)
        .with_context(|| format!("{}: reading", input.display()))?;
    if !head.starts_with(b"MZ") {
        return Ok(None);
    }
    let Ok(table) = PeFile::section_table(&head, len) else {
        return Ok(None);
    };
    let read_section = |s: &Section| -> anyhow::Result<Vec<u8>> {
        let e = s
            .memory_extent()
            .with_context(|| input.display().to_string())?;
        let mut v = vec![0; usize::try_from(e.len())?];
        file.read_exact_at(&mut v[..usize::try_from(e.file_bytes)?], e.offset)
            .with_context(|| format!("{}: reading section {}", input.display(), s.name))?;
        Ok(v)
    };
    let semantics = match semantics.fixed() {
        Some(s) => s,
        None => {
            let first = |n: &str| table.iter().find(|s| s.name == n).map(read_section);
            let sdmagic = first(".sdmagic").transpose()?;
            let sbat = first(".sbat").transpose()?;
            imgctl_measure::StubIdentity::from_sections(sdmagic.as_deref(), sbat.as_deref())
                .semantics()
        }
    };
    let names: Vec<&str> = table.iter().map(|s| s.name.as_str()).collect();
    let chosen: Vec<&Section> = imgctl_measure::uki::profile_sections(&names, profile)
        .with_context(|| input.display().to_string())?
        .into_iter()
        .filter_map(|i| table.get(i))
        .collect();
    let mut extents = Vec::with_capacity(chosen.len());
    let mut dtbs = Vec::with_capacity(chosen.len());
    for s in &chosen {
        let e = s
            .memory_extent()
            .with_context(|| input.display().to_string())?;
        extents.push(e);
        // Read ahead: what decides which .dtbauto is measured.
        dtbs.push(
            if s.name == ".dtbauto" || (s.name == ".hwids" && dtb.hwids.is_some()) {
                read_section(s)?
            } else {
                Vec::new()
            },
        );
    }
    let infos: Vec<SectionInfo<'_>> = chosen
        .iter()
        .zip(&extents)
        .zip(&dtbs)
        .map(|((s, e), d)| SectionInfo {
            name: &s.name,
            len: e.len(),
            content: d,
        })
        .collect();
    let wanted = sections_to_digest(semantics, &infos);
    let choice = dtb.choice(input, semantics, infos.iter().map(|s| (s.name, s.content)))?;
    let to_read: Vec<Extent> = wanted
        .iter()
        .map(|&i| Extent {
            offset: extents[i].offset,
            len: extents[i].file_bytes,
            zeros: extents[i].zeros,
        })
        .collect();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let groups = split_banks(banks, cores);
    let mut workers = groups
        .iter()
        .map(|g| MultiDigest::new(g, to_read.len()))
        .collect::<Result<Vec<_>, _>>()?;
    crate::output::with_spinner("hashing sections", || {
        let sinks: Vec<_> = workers
            .iter_mut()
            .map(|m| move |i: usize, b: &[u8]| m.update(i, b))
            .collect();
        read_fanned_out(&file, input, &to_read, sinks).map(drop)
    })
    .with_context(|| input.display().to_string())?;
    if stamp(&file)? != before {
        anyhow::bail!(
            "{}: the file changed while it was read; predict again",
            input.display()
        );
    }
    // [section][bank] in the order of `banks`, from each worker's [section][its banks].
    let mut digests = vec![Vec::new(); infos.len()];
    let mut per_worker = Vec::new();
    for w in workers {
        let group = w.banks().to_vec();
        per_worker.push((group, w.finish()?));
    }
    for (k, &i) in wanted.iter().enumerate() {
        for bank in banks {
            let d = per_worker
                .iter()
                .find_map(|(g, d)| {
                    let b = g.iter().position(|x| x == bank)?;
                    d.get(k)?.get(b).cloned()
                })
                .with_context(|| format!("no {bank} digest of section {}", infos[i].name))?;
            digests[i].push(d);
        }
    }
    let rows =
        predict_per_dtb_from_digests(semantics, &infos, &digests, banks, phases, choice.as_ref())
            .with_context(|| input.display().to_string())?;
    if let (Some(c), true) = (&dtb.dtb_match, semantics.knows(".dtbauto")) {
        let (candidates, _) =
            imgctl_measure::uki::dtbauto_candidates_of(infos.iter().map(|s| (s.name, s.content)));
        if !candidates.iter().any(|d| d.compatible == *c) {
            eprintln!(
                "imgctl: warning: no .dtbauto of {} is {c:?}: none is selected",
                input.display()
            );
        }
    }
    Ok(Some(StreamedPrediction {
        semantics,
        section_names: chosen.iter().map(|s| s.name.clone()).collect(),
        rows,
    }))
}
