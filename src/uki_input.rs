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

/// Which stub semantics to predict with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SemanticsArg {
    /// Detect from the stub inside the UKI (.sdmagic): systemd-stub 252 or upstream.
    #[default]
    Auto,
    /// Debian 12's systemd-stub 252: .linux .osrel .cmdline .initrd .splash .dtb .pcrpkey.
    #[value(name = "systemd-252")]
    Systemd252,
    /// Current upstream systemd-stub: adds .ucode .uname .sbat .profile .dtbauto .hwids .efifw.
    Upstream,
}

impl SemanticsArg {
    /// The semantics named, for inputs that carry no stub to detect it from (`auto` is refused).
    pub fn explicit(self, what: &str) -> anyhow::Result<imgctl_measure::StubSemantics> {
        use imgctl_measure::StubSemantics;
        match self {
            SemanticsArg::Auto => anyhow::bail!(
                "--stub-semantics auto: {what} carries no stub to detect it from; give systemd-252 or upstream"
            ),
            SemanticsArg::Systemd252 => Ok(StubSemantics::Systemd252),
            SemanticsArg::Upstream => Ok(StubSemantics::Upstream),
        }
    }

    pub fn resolve(self, uki: &imgctl_measure::Uki<'_>) -> imgctl_measure::StubSemantics {
        use imgctl_measure::StubSemantics;
        match self {
            SemanticsArg::Auto => uki.identity().semantics(),
            SemanticsArg::Systemd252 => StubSemantics::Systemd252,
            SemanticsArg::Upstream => StubSemantics::Upstream,
        }
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
