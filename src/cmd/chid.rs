//! `imgctl chid SMBIOS`: the Computer Hardware IDs a systemd 257 stub computes for a machine.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use imgctl_measure::chid::{self, HwidsMatch, SmbiosFields, CHID_TYPES, MATCH_PRIORITY};
use imgctl_measure::hwids::format_uuid;

use crate::output::outln;

/// Print the Computer Hardware IDs (CHIDs) systemd-stub 257 computes from a machine's SMBIOS
/// strings (like `systemd-analyze chid` of systemd 258), and with --uki which `.hwids` device of
/// a UKI they select.
///
/// SMBIOS is a raw table (`/sys/firmware/dmi/tables/DMI`) or JSON with fwupd's keys:
/// `{"Manufacturer", "Family", "ProductName", "ProductSku", "BaseboardManufacturer",
/// "BaseboardProduct"}` (a key left out or null: a missing string). The strings are shown as
/// the stub hashes them (leading spaces and zeros and trailing spaces removed). The stub
/// computes types 3–11 and 13 and matches in the order 3, 6, 8, 10, 4, 5, 7, 9, 11.
///
/// Example: imgctl chid /sys/firmware/dmi/tables/DMI --uki images/board/board.efi
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The machine's SMBIOS: a raw table or JSON (see above).
    smbios: PathBuf,
    /// A UKI (or recipe) whose `.hwids` device for this machine to show.
    #[arg(long, value_name = "UKI")]
    uki: Option<PathBuf>,
    /// Print JSON: `{"fields": {NAME: string | null}, "chids": [{"type", "chid", "fields",
    /// "match_rank"}], "device": …}`.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let data = imgctl_fsio::read_bounded(
        &args.smbios,
        imgctl_measure::smbios::MAX_TABLE as u64,
        "an SMBIOS table or JSON",
    )?;
    let fields = SmbiosFields::parse(&args.smbios.display().to_string(), &data)?;
    let chids = chid::chids(&fields);
    let device = match &args.uki {
        None => None,
        Some(path) => {
            let bytes = crate::uki_input::load_uki(path)?;
            let (_, _, sections) = crate::uki_input::measured_sections(
                path,
                &bytes,
                crate::uki_input::SemanticsArg::Auto,
                0,
            )?;
            let hwids = sections
                .iter()
                .find(|(n, _)| n == ".hwids")
                .with_context(|| format!("{}: no .hwids section", path.display()))?;
            Some(
                chid::match_hwids(&hwids.1, &chids)
                    .with_context(|| format!("{}: .hwids", path.display()))?,
            )
        }
    };
    let shown = |f: chid::Field| {
        fields
            .get(f)
            .map(|_| String::from_utf16_lossy(&fields.hashable(f)))
    };
    let rank = |k: u8| MATCH_PRIORITY.iter().position(|p| *p == k).map(|i| i + 1);
    if args.json {
        let mut f = serde_json::Map::new();
        for k in chid::Field::ALL {
            f.insert(k.name().into(), serde_json::json!(shown(k)));
        }
        let list: Vec<serde_json::Value> = chids
            .iter()
            .map(|(k, u)| {
                let used = CHID_TYPES
                    .iter()
                    .find(|(t, _)| t == k)
                    .map(|(_, fs)| fs.iter().map(|f| f.name()).collect::<Vec<_>>())
                    .unwrap_or_default();
                serde_json::json!({"type": k, "chid": format_uuid(u), "fields": used,
                                   "match_rank": rank(*k)})
            })
            .collect();
        let device = device.as_ref().map(|d| match d {
            HwidsMatch::Device {
                chid_type,
                chid,
                index,
                name,
                compatible,
            } => serde_json::json!({"chid_type": chid_type, "chid": format_uuid(chid),
                "index": index, "name": name, "compatible": compatible}),
            HwidsMatch::NoMatch => serde_json::Value::Null,
            HwidsMatch::Unsupported { index, descriptor } => {
                serde_json::json!({"unsupported_record": index, "descriptor": descriptor})
            }
        });
        let mut out = serde_json::json!({"fields": f, "chids": list});
        if let Some(d) = device {
            out["device"] = d;
        }
        crate::output::print_json(&out)?;
        return Ok(ExitCode::SUCCESS);
    }
    for k in chid::Field::ALL {
        outln!(
            "{}: {}",
            k.name(),
            shown(k).unwrap_or_else(|| "(missing)".into())
        );
    }
    for (k, u) in &chids {
        let used: Vec<&str> = CHID_TYPES
            .iter()
            .find(|(t, _)| t == k)
            .map(|(_, fs)| fs.iter().map(|f| f.name()).collect())
            .unwrap_or_default();
        outln!(
            "{{{}}}  type {k:>2} {}  <- {}",
            format_uuid(u),
            rank(*k).map_or("(not matched)".to_owned(), |r| format!("(match rank {r})")),
            used.join(" + ")
        );
    }
    match device {
        None => {}
        Some(HwidsMatch::Device {
            chid_type,
            index,
            name,
            compatible,
            ..
        }) => outln!(
            "device: .hwids record {index} {:?} (compatible {:?}) by CHID type {chid_type}",
            name.unwrap_or_default(),
            compatible.unwrap_or_default()
        ),
        Some(HwidsMatch::NoMatch) => outln!("device: none (no .hwids record has these CHIDs)"),
        Some(HwidsMatch::Unsupported { index, descriptor }) => outln!(
            "device: none (.hwids record {index} has descriptor {descriptor:#x}, not a devicetree record)"
        ),
    }
    Ok(ExitCode::SUCCESS)
}
