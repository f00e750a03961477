//! `imgctl predict-pcrs` against the real systemd-measure (Debian's systemd 252): the expected
//! values are whatever systemd-measure prints for the same section contents.

#![allow(clippy::unwrap_used)] // reason: test code; a panic is a test failure

mod common;

use std::path::Path;
use std::process::Command;

use common::{imgctl, require_tool, run_ok};
use imgctl_builder::uki::{assemble, NewSection};
use proptest::prelude::*;

const SYSTEMD_MEASURE: &str = "/lib/systemd/systemd-measure";
const STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";

/// The sections systemd-measure 252 accepts, as (section, option).
const SECTIONS: &[(&str, &str)] = &[
    (".linux", "--linux"),
    (".osrel", "--osrel"),
    (".cmdline", "--cmdline"),
    (".initrd", "--initrd"),
    (".splash", "--splash"),
    (".dtb", "--dtb"),
    (".pcrpkey", "--pcrpkey"),
];

fn systemd_measure(
    dir: &Path,
    contents: &[(usize, Vec<u8>)],
    phases: &[String],
) -> serde_json::Value {
    let mut cmd = Command::new(SYSTEMD_MEASURE);
    cmd.arg("calculate").arg("--json=short");
    for (i, data) in contents {
        let (name, opt) = SECTIONS[*i];
        let f = dir.join(name.trim_start_matches('.'));
        std::fs::write(&f, data).unwrap();
        cmd.arg(format!("{opt}={}", f.display()));
    }
    for p in phases {
        cmd.arg(format!("--phase={p}"));
    }
    serde_json::from_slice(&run_ok(&mut cmd)).unwrap()
}

fn ours(uki: &Path, phases: &[String]) -> serde_json::Value {
    let mut cmd = imgctl();
    cmd.arg("predict-pcrs").arg(uki).arg("--json");
    for p in phases {
        cmd.arg(format!("--phase={p}"));
    }
    serde_json::from_slice(&run_ok(&mut cmd)).unwrap()
}

fn peers() -> bool {
    require_tool(SYSTEMD_MEASURE, "systemd").is_some()
        && require_tool(STUB, "systemd-boot-efi").is_some()
}

/// Section contents: mostly small, sometimes empty, sometimes several MiB.
fn content() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => proptest::collection::vec(any::<u8>(), 1..600),
        1 => Just(Vec::new()),
        1 => (1usize..6 << 20, any::<u8>()).prop_map(|(n, b)| (0..n).map(|i| (i as u8) ^ b).collect()),
    ]
}

fn phase_word() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("enter-initrd".to_owned()),
        Just("leave-initrd".to_owned()),
        Just("sysinit".to_owned()),
        Just("ready".to_owned()),
        "[a-z]{1,12}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn predict_matches_systemd_measure_for_every_bank(
        linux in proptest::collection::vec(any::<u8>(), 1..4096),
        optional in proptest::collection::vec(proptest::option::of(content()), 6),
        phases in proptest::collection::vec(proptest::collection::vec(phase_word(), 0..4), 0..4),
    ) {
        if !peers() {
            return Ok(());
        }
        let dir = tempfile::tempdir().unwrap();
        let mut contents = vec![(0usize, linux)];
        for (i, c) in optional.into_iter().enumerate() {
            if let Some(c) = c {
                contents.push((i + 1, c));
            }
        }
        // The UKI gets the non-empty sections (systemd-measure skips empty files, as the stub
        // does with absent sections) in a shuffled PE order: measurement order is canonical.
        let mut new: Vec<NewSection> = contents
            .iter()
            .filter(|(_, d)| !d.is_empty())
            .map(|(i, d)| NewSection { name: SECTIONS[*i].0.to_owned(), data: d.clone() })
            .collect();
        new.reverse();
        let stub = std::fs::read(STUB).unwrap();
        let uki = dir.path().join("test.efi");
        std::fs::write(&uki, assemble(&stub, &new).unwrap()).unwrap();

        let phases: Vec<String> = if phases.is_empty() {
            // systemd-measure's defaults plus the empty path.
            vec![":".into(), "enter-initrd".into(), "enter-initrd:leave-initrd".into(),
                 "enter-initrd:leave-initrd:sysinit".into(), "enter-initrd:leave-initrd:sysinit:ready".into()]
        } else {
            phases.iter().map(|p| p.join(":")).map(|p| if p.is_empty() { ":".into() } else { p }).collect()
        };
        let expected = systemd_measure(dir.path(), &contents, &phases);
        prop_assert_eq!(ours(&uki, &phases), expected);
    }
}

#[test]
fn predict_matches_systemd_measure_on_the_demo_uki() {
    if !peers() {
        return;
    }
    let recipe = common::repo_root().join("recipes/demo.yaml");
    if !common::repo_root().join(".cache/demo/vmlinuz").exists() {
        common::missing("the demo kernel .cache/demo/vmlinuz (run scripts/setup.sh)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    run_ok(imgctl().arg("build").arg(&recipe).arg("-o").arg(dir.path()));
    let uki = dir.path().join("demo.efi");
    let data = std::fs::read(&uki).unwrap();
    let pe = goblin::pe::PE::parse(&data).unwrap();
    let mut contents = Vec::new();
    for (i, (name, _)) in SECTIONS.iter().enumerate() {
        if let Some(s) = pe.sections.iter().find(|s| s.name().ok() == Some(*name)) {
            let start = s.pointer_to_raw_data as usize;
            contents.push((i, data[start..start + s.virtual_size as usize].to_vec()));
        }
    }
    assert!(
        contents.len() >= 4,
        "the demo UKI has .linux .osrel .cmdline .initrd"
    );
    let phases: Vec<String> = [
        ":",
        "enter-initrd",
        "enter-initrd:leave-initrd",
        "enter-initrd:leave-initrd:sysinit",
        "enter-initrd:leave-initrd:sysinit:ready",
    ]
    .map(String::from)
    .to_vec();
    assert_eq!(
        ours(&uki, &phases),
        systemd_measure(dir.path(), &contents, &phases)
    );
    // pcrs.json written by the build holds the same values as predict-pcrs.
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("pcrs.json")).unwrap()).unwrap();
    assert_eq!(written, ours(&uki, &phases));
}

/// Multi-profile UKIs (UAPI UKI spec): the stub measures the base sections overridden by the
/// selected profile's. No peer here predicts profiles (systemd-measure 252 predates them), so
/// this checks the override rule: profile N of a multi-profile UKI measures like a
/// single-profile UKI holding the merged sections.
#[test]
fn profiles_measure_base_sections_overridden_by_the_selected_profile() {
    let Ok(stub) = std::fs::read(STUB) else {
        common::missing(STUB);
        return;
    };
    let s = |n: &str, d: &str| NewSection {
        name: n.into(),
        data: d.as_bytes().to_vec(),
    };
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, sections: &[NewSection]| {
        let p = dir.path().join(name);
        std::fs::write(&p, assemble(&stub, sections).unwrap()).unwrap();
        p
    };
    let multi = write(
        "multi.efi",
        &[
            s(".linux", "K"),
            s(".osrel", "ID=x\n"),
            s(".cmdline", "base"),
            s(".profile", "ID=one\n"),
            s(".cmdline", "one"),
            s(".profile", "ID=two\n"),
            s(".cmdline", "two"),
            s(".osrel", "ID=y\n"),
        ],
    );
    let single1 = write(
        "p1.efi",
        &[
            s(".linux", "K"),
            s(".osrel", "ID=y\n"),
            s(".profile", "ID=two\n"),
            s(".cmdline", "two"),
        ],
    );
    let single0 = write(
        "p0.efi",
        &[
            s(".linux", "K"),
            s(".osrel", "ID=x\n"),
            s(".profile", "ID=one\n"),
            s(".cmdline", "one"),
        ],
    );
    let predict = |uki: &Path, profile: &str| -> serde_json::Value {
        serde_json::from_slice(&run_ok(imgctl().arg("predict-pcrs").arg(uki).args([
            "--json",
            "--stub-semantics",
            "systemd-257",
            "--profile",
            profile,
        ])))
        .unwrap()
    };
    // Profile N != 0 adds its PCR 12 (the profile tag) to systemd-measure's shape.
    let pcr = |mut v: serde_json::Value, n: u32| {
        for list in v.as_object_mut().unwrap().values_mut() {
            list.as_array_mut().unwrap().retain(|e| e["pcr"] == n);
        }
        v
    };
    let tag = pcr(predict(&multi, "1"), 12);
    assert_eq!(tag["sha256"].as_array().unwrap().len(), 1, "{tag}");
    assert_eq!(
        pcr(predict(&multi, "0"), 12)["sha256"],
        serde_json::json!([])
    );
    // Every UKI here carries the stub's .sbat, which stubs since 254 measure too.
    assert_eq!(pcr(predict(&multi, "1"), 11), predict(&single1, "0"));
    assert_eq!(predict(&multi, "0"), predict(&single0, "0"));
    assert_ne!(predict(&multi, "0"), predict(&multi, "1"));
    let o = imgctl()
        .arg("predict-pcrs")
        .arg(&multi)
        .args(["--profile", "2"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("only 2 profiles"));
}

/// The streamed reader (each section read once in chunks, the banks split across the cores):
/// sections that span several read chunks and end inside one, and a section whose VirtualSize
/// runs past its raw data (the firmware zero-fills it, so the stub measures the zeros), equal
/// systemd-measure given the bytes the stub sees, in every bank and with one bank alone.
#[test]
fn streamed_prediction_of_large_and_zero_filled_sections_matches_systemd_measure() {
    if !peers() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pattern = |n: usize, k: u32| -> Vec<u8> {
        (0..n as u32)
            .map(|i| (i.wrapping_mul(k) >> 3) as u8)
            .collect()
    };
    let linux = pattern((3 << 20) + 12_345, 2_654_435_761);
    let initrd = pattern((1 << 20) - 1, 40_503);
    let cmdline = b"console=ttyS0 quiet".to_vec();
    let new = vec![
        NewSection {
            name: ".linux".into(),
            data: linux.clone(),
        },
        NewSection {
            name: ".cmdline".into(),
            data: cmdline.clone(),
        },
        NewSection {
            name: ".initrd".into(),
            data: initrd.clone(),
        },
    ];
    let stub = std::fs::read(STUB).unwrap();
    let mut uki = assemble(&stub, &new).unwrap();
    let phases: Vec<String> = [
        ":",
        "enter-initrd",
        "enter-initrd:leave-initrd:sysinit:ready",
    ]
    .map(String::from)
    .to_vec();
    let plain = dir.path().join("plain.efi");
    std::fs::write(&plain, &uki).unwrap();
    let contents = vec![
        (0, linux.clone()),
        (2, cmdline.clone()),
        (3, initrd.clone()),
    ];
    assert_eq!(
        ours(&plain, &phases),
        systemd_measure(dir.path(), &contents, &phases)
    );

    // .cmdline's VirtualSize raised 300 KiB past its raw data: raw bytes (with the file
    // alignment's padding), then zeros, 300 KiB of them spanning read chunks.
    let pe = goblin::pe::PE::parse(&uki).unwrap();
    let s = pe
        .sections
        .iter()
        .find(|s| s.name().ok() == Some(".cmdline"))
        .unwrap();
    let (raw_at, raw_len) = (s.pointer_to_raw_data as usize, s.size_of_raw_data as usize);
    let vsize = raw_len + (300 << 10);
    let pe_at = u32::from_le_bytes(uki[0x3c..0x40].try_into().unwrap()) as usize;
    let table = pe_at + 24 + pe.header.coff_header.size_of_optional_header as usize;
    let index = pe
        .sections
        .iter()
        .position(|s| s.name().ok() == Some(".cmdline"))
        .unwrap();
    let h = table + index * 40;
    uki[h + 8..h + 12].copy_from_slice(&(vsize as u32).to_le_bytes());
    let filled = dir.path().join("filled.efi");
    std::fs::write(&filled, &uki).unwrap();
    let mut in_memory = uki[raw_at..raw_at + raw_len].to_vec();
    in_memory.resize(vsize, 0);
    let contents = vec![(0, linux), (2, in_memory), (3, initrd)];
    let expected = systemd_measure(dir.path(), &contents, &phases);
    assert_eq!(ours(&filled, &phases), expected);
    // One bank at a time (one worker) gives the same values.
    let mut cmd = imgctl();
    cmd.arg("predict-pcrs")
        .arg(&filled)
        .args(["--json", "--bank", "sha384"]);
    for p in &phases {
        cmd.arg(format!("--phase={p}"));
    }
    let one: serde_json::Value = serde_json::from_slice(&run_ok(&mut cmd)).unwrap();
    assert_eq!(one["sha384"], expected["sha384"]);
}
