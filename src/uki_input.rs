//! Reading the thing a command is pointed at: a built UKI, or a recipe to assemble in memory.

use std::path::Path;

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

/// Which `.dtbauto` the machine makes a 257+ stub select (`--dtb-match`, `--no-dtb`); neither:
/// every case.
#[derive(Debug, Clone, clap::Args)]
pub struct DtbArgs {
    /// The machine's devicetree compatible (the first string of its firmware devicetree's root
    /// `compatible`, or the one the UKI's .hwids entry for it names): use the `.dtbauto` the
    /// stub selects for it (systemd 257+). Default: every `.dtbauto` the stub may select, and none.
    #[arg(long, value_name = "COMPATIBLE", conflicts_with = "no_dtb")]
    dtb_match: Option<String>,
    /// The machine selects no `.dtbauto` (e.g. x86 without a devicetree).
    #[arg(long)]
    no_dtb: bool,
}

impl DtbArgs {
    pub fn choice(&self) -> Option<imgctl_measure::uki::DtbChoice> {
        use imgctl_measure::uki::DtbChoice;
        match (&self.dtb_match, self.no_dtb) {
            (Some(c), _) => Some(DtbChoice::Compatible(c.clone())),
            (None, true) => Some(DtbChoice::None),
            (None, false) => None,
        }
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
        let rows = crate::output::with_spinner("hashing sections", || {
            imgctl_measure::predict::predict_pcr11_per_dtb(
                semantics,
                sections,
                banks,
                phases,
                self.choice().as_ref(),
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
