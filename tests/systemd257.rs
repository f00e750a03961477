//! imgctl against the real systemd 257 (Debian 13): `systemd-measure` 257 and `ukify` 257 run in
//! the Debian 13 chroot that `scripts/setup.sh` makes in `.cache/trixie-257`, and the 257 stub
//! comes from it. The expected values are whatever systemd-measure 257 prints for the exact bytes
//! the stub measures (each section's VirtualSize bytes, read back from the built UKI with goblin,
//! an independent PE reader). Sections where systemd-measure 257.13 itself is wrong (`.dtbauto`
//! and `.hwids`, whose options it swaps: systemd PR #35765) are left to the boot tests.

#![allow(clippy::unwrap_used)] // reason: test code; a panic is a test failure

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{imgctl, run_ok};
use imgctl_builder::uki::{assemble, NewSection};
use proptest::prelude::*;

/// The version the chroot must hold: tests never take "whatever the archive serves today".
const SYSTEMD_257: &str = "257.";

/// The sections systemd-measure 257 predicts correctly, as (section, option), in the stub's
/// canonical order (`.profile`, `.dtbauto`, `.hwids` are left out, see the module doc).
const SECTIONS: &[(&str, &str)] = &[
    (".linux", "--linux"),
    (".osrel", "--osrel"),
    (".cmdline", "--cmdline"),
    (".initrd", "--initrd"),
    (".ucode", "--ucode"),
    (".splash", "--splash"),
    (".dtb", "--dtb"),
    (".uname", "--uname"),
    (".sbat", "--sbat"),
    (".pcrpkey", "--pcrpkey"),
];

const PHASES: &[&str] = &[
    ":",
    "enter-initrd",
    "enter-initrd:leave-initrd",
    "enter-initrd:leave-initrd:sysinit",
    "enter-initrd:leave-initrd:sysinit:ready",
];

/// The chroot, checked to hold systemd 257; `None` (after a loud report, or a panic in CI) when
/// it is missing.
fn chroot() -> Option<PathBuf> {
    let root = common::repo_root().join(".cache/trixie-257");
    let version = std::fs::read_to_string(root.join("VERSION")).unwrap_or_default();
    if !root.join("usr/lib/systemd/systemd-measure").exists() || version.is_empty() {
        common::missing("the Debian 13 chroot .cache/trixie-257 (run scripts/setup.sh)");
        return None;
    }
    assert!(
        version.starts_with(SYSTEMD_257),
        "{}: systemd {version} is not 257",
        root.display()
    );
    Some(root)
}

/// The chroot and a folder in its /tmp holding the demo kernel as `vmlinuz`, with that folder's
/// path inside the chroot; `None` (reported) when either is missing.
fn chroot_with_demo_kernel() -> Option<(PathBuf, tempfile::TempDir, PathBuf)> {
    let root = chroot()?;
    let kernel = common::repo_root().join(".cache/demo/vmlinuz");
    if !kernel.exists() {
        common::missing("the demo kernel .cache/demo/vmlinuz (run scripts/setup.sh)");
        return None;
    }
    let dir = tempfile::tempdir_in(root.join("tmp")).unwrap();
    let inside = Path::new("/tmp").join(dir.path().file_name().unwrap());
    std::fs::copy(&kernel, dir.path().join("vmlinuz")).unwrap();
    Some((root, dir, inside))
}

fn stub(root: &Path) -> Vec<u8> {
    std::fs::read(root.join("usr/lib/systemd/boot/efi/linuxx64.efi.stub")).unwrap()
}

/// The VirtualSize bytes of every section of a PE image, by name, read with goblin.
fn sections_of(data: &[u8]) -> Vec<(String, Vec<u8>)> {
    let pe = goblin::pe::PE::parse(data).unwrap();
    pe.sections
        .iter()
        .map(|s| {
            let start = s.pointer_to_raw_data as usize;
            let len = (s.virtual_size as usize).min(s.size_of_raw_data as usize);
            let mut bytes = data[start..start + len].to_vec();
            // Memory past the raw data is zero-filled by the loader, and the stub measures it.
            bytes.resize(s.virtual_size as usize, 0);
            (s.name().unwrap().to_owned(), bytes)
        })
        .collect()
}

/// `systemd-measure calculate` 257 (in the chroot) over the measured sections of `uki`.
fn systemd_measure(root: &Path, uki: &[u8], phases: &[&str]) -> serde_json::Value {
    systemd_measure_with(root, uki, phases, &[])
}

/// [`systemd_measure`] with more `(option, file content)` pairs.
fn systemd_measure_with(
    root: &Path,
    uki: &[u8],
    phases: &[&str],
    extra: &[(&str, &[u8])],
) -> serde_json::Value {
    let dir = tempfile::tempdir_in(root.join("tmp")).unwrap();
    let inside = Path::new("/tmp").join(dir.path().file_name().unwrap());
    let mut cmd = Command::new("chroot");
    cmd.arg(root)
        .arg("/usr/lib/systemd/systemd-measure")
        .arg("calculate")
        .arg("--json=short");
    for (name, data) in sections_of(uki) {
        let Some((_, opt)) = SECTIONS.iter().find(|(n, _)| *n == name) else {
            continue;
        };
        // systemd-measure skips empty files; the stub skips sections of size 0 likewise.
        let file = name.trim_start_matches('.');
        std::fs::write(dir.path().join(file), &data).unwrap();
        cmd.arg(format!("{opt}={}", inside.join(file).display()));
    }
    for (i, (opt, data)) in extra.iter().enumerate() {
        let file = format!("extra{i}");
        std::fs::write(dir.path().join(&file), data).unwrap();
        cmd.arg(format!("{opt}={}", inside.join(file).display()));
    }
    for p in phases {
        cmd.arg(format!("--phase={p}"));
    }
    serde_json::from_slice(&run_ok(&mut cmd)).unwrap()
}

fn ours(uki: &Path, phases: &[&str]) -> serde_json::Value {
    let mut cmd = imgctl();
    cmd.arg("predict-pcrs").arg(uki).arg("--json");
    for p in phases {
        cmd.arg(format!("--phase={p}"));
    }
    serde_json::from_slice(&run_ok(&mut cmd)).unwrap()
}

fn content() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => proptest::collection::vec(any::<u8>(), 1..600),
        1 => (1usize..3 << 20, any::<u8>()).prop_map(|(n, b)| (0..n).map(|i| (i as u8) ^ b).collect()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, failure_persistence: None, ..ProptestConfig::default() })]

    /// UKIs assembled by imgctl on the 257 stub with random present/absent sections (the stub's
    /// own `.sbat` stays and is measured, unless the UKI replaces it) in a shuffled PE order.
    #[test]
    fn predict_matches_systemd_measure_257_on_the_257_stub(
        linux in proptest::collection::vec(any::<u8>(), 1..4096),
        optional in proptest::collection::vec(proptest::option::of(content()), SECTIONS.len() - 1),
    ) {
        let Some(root) = chroot() else { return Ok(()) };
        let mut new = vec![NewSection { name: ".linux".into(), data: linux }];
        for (i, c) in optional.into_iter().enumerate() {
            let name = SECTIONS[i + 1].0;
            // `.sbat` is the stub's own (merged SBAT is the build tests' business).
            if let (Some(data), false) = (c, name == ".sbat") {
                new.push(NewSection { name: name.into(), data });
            }
        }
        new.reverse();
        let dir = tempfile::tempdir().unwrap();
        let uki = dir.path().join("test.efi");
        let bytes = assemble(&stub(&root), &new).unwrap();
        std::fs::write(&uki, &bytes).unwrap();
        prop_assert_eq!(ours(&uki, PHASES), systemd_measure(&root, &bytes, PHASES));
    }
}

/// A UKI that ukify 257 builds on the 257 stub (the way Debian 13 users build them): imgctl
/// predicts what systemd-measure 257 computes for its sections, the stub's `.sbat` included.
#[test]
fn predict_matches_systemd_measure_257_on_a_ukify_257_uki() {
    let Some((root, dir, inside)) = chroot_with_demo_kernel() else {
        return;
    };
    std::fs::write(dir.path().join("initrd"), vec![7u8; 300_000]).unwrap();
    std::fs::write(
        dir.path().join("os-release"),
        "ID=imgctl-test\nVERSION_ID=257\n",
    )
    .unwrap();
    run_ok(
        Command::new("chroot")
            .arg(&root)
            .arg("ukify")
            .arg("build")
            .arg(format!("--linux={}", inside.join("vmlinuz").display()))
            .arg(format!("--initrd={}", inside.join("initrd").display()))
            .arg(format!(
                "--os-release=@{}",
                inside.join("os-release").display()
            ))
            .arg("--cmdline=console=ttyS0 quiet")
            .arg("--uname=6.1.0-imgctl")
            .arg(format!("--output={}", inside.join("uki.efi").display())),
    );
    let uki = dir.path().join("uki.efi");
    let bytes = std::fs::read(&uki).unwrap();
    let names: Vec<String> = sections_of(&bytes).into_iter().map(|(n, _)| n).collect();
    for s in [".linux", ".osrel", ".cmdline", ".initrd", ".uname", ".sbat"] {
        assert!(
            names.iter().any(|n| n == s),
            "ukify's UKI has {s}: {names:?}"
        );
    }
    let theirs = systemd_measure(&root, &bytes, PHASES);
    assert_eq!(ours(&uki, PHASES), theirs);
    // The stub was detected as 257 from its .sdmagic, and the manifest spelling is recorded.
    let text = String::from_utf8(run_ok(imgctl().arg("predict-pcrs").arg(&uki))).unwrap();
    assert!(text.contains("# stub semantics: systemd-257"), "{text}");
    // The version table: this UKI has no section added after 254, so every row from 254 on
    // predicts what systemd-measure 257 computes; 252 measures neither .uname nor .sbat.
    let with = |v: &str| {
        let mut cmd = imgctl();
        cmd.arg("predict-pcrs")
            .arg(&uki)
            .args(["--json", "--stub-semantics", v]);
        for p in PHASES {
            cmd.arg(format!("--phase={p}"));
        }
        serde_json::from_slice::<serde_json::Value>(&run_ok(&mut cmd)).unwrap()
    };
    for v in ["254", "255", "systemd-256", "257", "258"] {
        assert_eq!(with(v), theirs, "--stub-semantics {v}");
    }
    assert_ne!(with("252"), theirs);
    let o = imgctl()
        .arg("predict-pcrs")
        .arg(&uki)
        .args(["--stub-semantics", "upstream"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "clap refuses an unknown version");
}

/// `imgctl sign-pcrs` against `systemd-measure sign` 257 (which needs no TPM) on a UKI on the
/// 257 stub: RSA output byte for byte (PKCS#1 v1.5 is deterministic); for ECDSA P-256, which 257
/// signs too, every field but the (randomised) signature, and each signature checked by
/// `openssl dgst -verify` over the policy digest.
#[test]
fn sign_pcrs_equals_systemd_measure_257_sign() {
    let Some(root) = chroot() else { return };
    let dir = tempfile::tempdir_in(root.join("tmp")).unwrap();
    let inside = Path::new("/tmp").join(dir.path().file_name().unwrap());
    let new: Vec<NewSection> = [
        (".linux", &b"not really a kernel\n"[..]),
        (".osrel", b"ID=imgctl\nVERSION_ID=257\n"),
        (".cmdline", b"console=ttyS0 quiet"),
        (".initrd", b"07070100000000"),
        (".uname", b"6.1.0-imgctl"),
    ]
    .iter()
    .map(|(n, d)| NewSection {
        name: (*n).to_owned(),
        data: d.to_vec(),
    })
    .collect();
    let bytes = assemble(&stub(&root), &new).unwrap();
    let uki = dir.path().join("test.efi");
    std::fs::write(&uki, &bytes).unwrap();
    for (name, alg) in [("rsa", common::RSA), ("ec", common::EC)] {
        let (key, public) = common::genkey(dir.path(), name, alg);
        for extra in [
            vec![],
            vec![
                "--bank=sha256",
                "--phase=enter-initrd:leave-initrd",
                "--phase=ready",
            ],
        ] {
            let mut sd = Command::new("chroot");
            sd.arg(&root)
                .arg("/usr/lib/systemd/systemd-measure")
                .arg("sign")
                .arg("--json=short")
                .arg(format!(
                    "--private-key={}",
                    inside.join(format!("{name}.pem")).display()
                ))
                .arg(format!(
                    "--public-key={}",
                    inside.join(format!("{name}.pub.pem")).display()
                ))
                .args(&extra);
            for (section, data) in sections_of(&bytes) {
                let Some((_, opt)) = SECTIONS.iter().find(|(n, _)| *n == section) else {
                    continue;
                };
                let file = format!("s{}", section.trim_start_matches('.'));
                std::fs::write(dir.path().join(&file), &data).unwrap();
                sd.arg(format!("{opt}={}", inside.join(&file).display()));
            }
            let expected: serde_json::Value = serde_json::from_slice(&run_ok(&mut sd)).unwrap();
            let ours: serde_json::Value = serde_json::from_slice(&run_ok(
                imgctl()
                    .arg("sign-pcrs")
                    .arg(&uki)
                    .arg("--private-key")
                    .arg(&key)
                    .arg("--public-key")
                    .arg(&public)
                    .args(&extra),
            ))
            .unwrap();
            if name == "rsa" {
                assert_eq!(ours, expected, "{name} {extra:?}");
                continue;
            }
            let strip = |v: &serde_json::Value| {
                let mut v = v.clone();
                for entries in v.as_object_mut().unwrap().values_mut() {
                    for e in entries.as_array_mut().unwrap() {
                        e.as_object_mut().unwrap().remove("sig");
                    }
                }
                v
            };
            assert_eq!(strip(&ours), strip(&expected), "{name} {extra:?}");
            let mut checked = 0;
            for (bank, entries) in ours.as_object().unwrap() {
                for e in entries.as_array().unwrap() {
                    let pol = hex::decode(e["pol"].as_str().unwrap()).unwrap();
                    assert!(
                        common::openssl_verifies(
                            dir.path(),
                            bank,
                            &public,
                            &pol,
                            e["sig"].as_str().unwrap()
                        ),
                        "openssl rejects the {bank} signature"
                    );
                    checked += 1;
                }
            }
            assert!(checked >= 2, "{checked} signatures checked");
        }
    }
}

/// `dtc` makes a devicetree blob whose root compatible is `compatible` (a list).
fn dtb(dir: &Path, name: &str, compatible: &[&str]) -> Vec<u8> {
    let Some(dtc) = common::require_tool("dtc", "device-tree-compiler") else {
        return Vec::new();
    };
    let list: Vec<String> = compatible.iter().map(|c| format!("\"{c}\"")).collect();
    let src = dir.join(format!("{name}.dts"));
    std::fs::write(
        &src,
        format!(
            "/dts-v1/;\n/ {{\n\tmodel = \"{name}\";\n\tcompatible = {};\n\tcpus {{ }};\n}};\n",
            list.join(", ")
        ),
    )
    .unwrap();
    let out = dir.join(format!("{name}.dtb"));
    run_ok(
        Command::new(dtc)
            .args(["-I", "dts", "-O", "dtb", "-o"])
            .arg(&out)
            .arg(&src),
    );
    std::fs::read(out).unwrap()
}

/// A UKI that ukify 257 builds with two `.dtbauto` sections (`--devicetree-auto`, made by
/// dtc): the stub selects the first whose root compatible matches the machine's, or none.
/// `predict-pcrs` lists every case; each equals systemd-measure 257 given the selected blob
/// (through `--hwids=`, the option 257.13 wrongly measures as `.dtbauto`, PR #35765) or no blob.
#[test]
fn dtbauto_predictions_follow_the_stubs_selection_and_systemd_measure_257() {
    let Some(root) = chroot() else { return };
    let kernel = common::repo_root().join(".cache/demo/vmlinuz");
    if !kernel.exists() {
        common::missing("the demo kernel .cache/demo/vmlinuz (run scripts/setup.sh)");
        return;
    }
    let dir = tempfile::tempdir_in(root.join("tmp")).unwrap();
    let inside = Path::new("/tmp").join(dir.path().file_name().unwrap());
    let a = dtb(dir.path(), "a", &["imgctl,board-a", "imgctl,soc"]);
    let b = dtb(dir.path(), "b", &["imgctl,board-b"]);
    if a.is_empty() {
        return;
    }
    // fdtget, the devicetree tools' own reader, agrees on the compatible we select by.
    if let Some(fdtget) = common::require_tool("fdtget", "device-tree-compiler") {
        let o = run_ok(
            Command::new(fdtget)
                .args(["-t", "s"])
                .arg(dir.path().join("a.dtb"))
                .args(["/", "compatible"]),
        );
        assert!(String::from_utf8(o).unwrap().starts_with("imgctl,board-a"));
    }
    std::fs::copy(&kernel, dir.path().join("vmlinuz")).unwrap();
    run_ok(
        Command::new("chroot")
            .arg(&root)
            .arg("ukify")
            .arg("build")
            .arg(format!("--linux={}", inside.join("vmlinuz").display()))
            .arg("--cmdline=console=ttyS0")
            .arg(format!(
                "--devicetree-auto={}",
                inside.join("a.dtb").display()
            ))
            .arg(format!(
                "--devicetree-auto={}",
                inside.join("b.dtb").display()
            ))
            .arg(format!("--output={}", inside.join("uki.efi").display())),
    );
    let uki = dir.path().join("uki.efi");
    let bytes = std::fs::read(&uki).unwrap();
    let n = sections_of(&bytes)
        .iter()
        .filter(|(n, _)| n == ".dtbauto")
        .count();
    assert_eq!(n, 2, "ukify wrote both .dtbauto sections");
    let predict = |extra: &[&str]| -> serde_json::Value {
        let mut cmd = imgctl();
        cmd.arg("predict-pcrs").arg(&uki).arg("--json").args(extra);
        for p in PHASES {
            cmd.arg(format!("--phase={p}"));
        }
        serde_json::from_slice(&run_ok(&mut cmd)).unwrap()
    };
    let none = systemd_measure(&root, &bytes, PHASES);
    let with_a = systemd_measure_with(&root, &bytes, PHASES, &[("--hwids", &a)]);
    let with_b = systemd_measure_with(&root, &bytes, PHASES, &[("--hwids", &b)]);
    assert_ne!(with_a, none);
    assert_ne!(with_a, with_b);
    assert_eq!(predict(&["--no-dtb"]), none);
    assert_eq!(predict(&["--dtb-match", "imgctl,board-a"]), with_a);
    assert_eq!(predict(&["--dtb-match", "imgctl,board-b"]), with_b);
    // Only the first string of the root compatible is compared.
    assert_eq!(predict(&["--dtb-match", "imgctl,soc"]), none);
    // Without a machine: every case, labelled, none first.
    let all = predict(&[]);
    let c = all["candidates"].as_array().unwrap();
    assert_eq!(c.len(), 3, "{all}");
    assert_eq!(c[0]["dtbauto"], serde_json::Value::Null);
    assert_eq!(c[0]["pcrs"], none);
    assert_eq!(c[1]["dtbauto"]["compatible"], "imgctl,board-a");
    assert_eq!(c[1]["pcrs"], with_a);
    assert_eq!(
        (c[2]["dtbauto"]["index"].as_u64(), &c[2]["pcrs"]),
        (Some(1), &with_b)
    );
    let text = String::from_utf8(run_ok(imgctl().arg("predict-pcrs").arg(&uki))).unwrap();
    assert!(
        text.contains("# devicetree: none selected")
            && text.contains("# devicetree: .dtbauto #1 (imgctl,board-b)"),
        "{text}"
    );
    // 256 does not know .dtbauto: one prediction, the sections it measures.
    assert_eq!(predict(&["--stub-semantics", "256"]), none);

    // sign-pcrs signs every case (systemd picks the entry whose policy the TPM matches), each
    // equal to systemd-measure sign 257 for that case (RSA PKCS#1 v1.5 is deterministic).
    let (key, public) = common::genkey(dir.path(), "rsa", common::RSA);
    let measure_sign = |extra: Option<&[u8]>| -> serde_json::Value {
        let mut sd = Command::new("chroot");
        sd.arg(&root)
            .arg("/usr/lib/systemd/systemd-measure")
            .arg("sign")
            .arg("--json=short")
            .arg(format!(
                "--private-key={}",
                inside.join("rsa.pem").display()
            ))
            .arg(format!(
                "--public-key={}",
                inside.join("rsa.pub.pem").display()
            ));
        for (section, data) in sections_of(&bytes) {
            let Some((_, opt)) = SECTIONS.iter().find(|(n, _)| *n == section) else {
                continue;
            };
            let file = format!("s{}", section.trim_start_matches('.'));
            std::fs::write(dir.path().join(&file), &data).unwrap();
            sd.arg(format!("{opt}={}", inside.join(&file).display()));
        }
        if let Some(blob) = extra {
            std::fs::write(dir.path().join("selected.dtb"), blob).unwrap();
            sd.arg(format!("--hwids={}", inside.join("selected.dtb").display()));
        }
        serde_json::from_slice(&run_ok(&mut sd)).unwrap()
    };
    let sign = |extra: &[&str]| -> serde_json::Value {
        serde_json::from_slice(&run_ok(
            imgctl()
                .arg("sign-pcrs")
                .arg(&uki)
                .arg("--private-key")
                .arg(&key)
                .arg("--public-key")
                .arg(&public)
                .args(extra),
        ))
        .unwrap()
    };
    let (s_none, s_a, s_b) = (
        measure_sign(None),
        measure_sign(Some(&a)),
        measure_sign(Some(&b)),
    );
    assert_eq!(sign(&["--no-dtb"]), s_none);
    assert_eq!(sign(&["--dtb-match", "imgctl,board-b"]), s_b);
    let all = sign(&[]);
    for (bank, entries) in all.as_object().unwrap() {
        let mut want = Vec::new();
        for doc in [&s_none, &s_a, &s_b] {
            want.extend(doc[bank].as_array().unwrap().iter().cloned());
        }
        assert_eq!(entries.as_array().unwrap(), &want, "{bank}");
    }
    // Embedding keeps every measured section (the check is on the loaded bytes).
    run_ok(
        imgctl()
            .arg("sign-pcrs")
            .arg(&uki)
            .arg("--private-key")
            .arg(&key)
            .arg("--embed")
            .arg(dir.path().join("signed.efi"))
            .arg("-o")
            .arg(dir.path().join("signed.pcrsig")),
    );
    let signed = std::fs::read(dir.path().join("signed.efi")).unwrap();
    assert_eq!(systemd_measure(&root, &signed, PHASES), none);
}

/// A distribution's SBAT: the UKI line and three vendor lines, as a distribution and a vendor
/// would add them (about 400 bytes; with the 257 stub's own two lines the merged text is over
/// the 512 bytes the stub's `.sbat` has).
const DISTRO_SBAT: &str =
    "sbat,1,SBAT Version,sbat,1,https://github.com/rhboot/shim/blob/main/SBAT.md
uki,1,UKI,uki,1,https://uapi-group.org/specifications/specs/unified_kernel_image/
uki.debian,1,Debian GNU/Linux,uki,1,https://tracker.debian.org/pkg/systemd
uki.acme,1,ACME Corporation,acme-uki,2.4.1-3,https://security.acme.example/uki
uki.acme-fleet,1,ACME Fleet Images,acme-fleet-uki,2026.12.1,mailto:secalert@acme.example
";

/// ukify 257's own `merge_sbat()` (imported from the chroot's ukify) over the stub, the kernel
/// and `sbat`: the `.sbat` text ukify means for a UKI, also where its build refuses.
fn ukify_merge_sbat(root: &Path, inside: &Path, kernel: &str, sbat: &str) -> Vec<u8> {
    let script = format!(
        "import importlib.machinery, importlib.util, sys\n\
         from pathlib import Path\n\
         loader = importlib.machinery.SourceFileLoader('ukify', '/usr/lib/systemd/ukify')\n\
         spec = importlib.util.spec_from_loader('ukify', loader)\n\
         m = importlib.util.module_from_spec(spec)\n\
         loader.exec_module(m)\n\
         text = Path('{sbat}').read_text()\n\
         stub = Path('/usr/lib/systemd/boot/efi/linuxx64.efi.stub')\n\
         sys.stdout.buffer.write(m.merge_sbat([stub, Path('{kernel}')], [text]).encode())\n",
        sbat = inside.join(sbat).display(),
        kernel = inside.join(kernel).display(),
    );
    run_ok(
        Command::new("chroot")
            .arg(root)
            .args(["python3", "-c", &script]),
    )
}

/// `objdump -h`'s (size, file offset) of a section, and those bytes of the file.
fn objdump_section(uki: &Path, name: &str) -> Vec<u8> {
    let listing = String::from_utf8(run_ok(Command::new("objdump").arg("-h").arg(uki))).unwrap();
    let fields: Vec<&str> = listing
        .lines()
        .map(str::split_whitespace)
        .map(Iterator::collect::<Vec<_>>)
        .find(|f| f.get(1) == Some(&name))
        .unwrap_or_else(|| panic!("objdump -h lists no {name}: {listing}"))
        .to_vec();
    let size = usize::from_str_radix(fields[2], 16).unwrap();
    let offset = usize::from_str_radix(fields[5], 16).unwrap();
    std::fs::read(uki).unwrap()[offset..offset + size].to_vec()
}

/// `imgctl build` on the 257 stub in the chroot with the SBAT text of the file `sbat` (the same
/// inputs ukify gets); returns the UKI's path.
fn build_257(root: &Path, dir: &Path, sbat: &str) -> PathBuf {
    let text = std::fs::read_to_string(dir.join(sbat)).unwrap();
    // A JSON string is a YAML double-quoted scalar.
    std::fs::write(
        dir.join("recipe.yaml"),
        format!(
            "name: sbat\nversion: \"1\"\nos-release-file: os-release\nkernel: vmlinuz\n\
             cmdline: console=ttyS0 quiet\nuname: 6.1.0-imgctl\nsbat: {}\nstub: {}\n",
            serde_json::to_string(&text).unwrap(),
            root.join("usr/lib/systemd/boot/efi/linuxx64.efi.stub")
                .display()
        ),
    )
    .unwrap();
    let out = dir.join(format!("out-{sbat}"));
    run_ok(
        imgctl()
            .arg("build")
            .arg(dir.join("recipe.yaml"))
            .arg("-o")
            .arg(&out),
    );
    out.join("sbat.efi")
}

/// DEFECT 23 (review of 2026-12-01). ukify 257 puts the merged SBAT into the stub's own `.sbat`
/// (`pe_add_sections()`: same header, raw size kept, VirtualSize = the text's length) and
/// refuses when it does not fit ("Not enough space in existing section .sbat"). imgctl does the
/// same where it fits, byte for byte, and where it does not (a distribution SBAT) drops the
/// stub's `.sbat` and appends a new one: its content is what ukify's own `merge_sbat()` makes,
/// objdump and `imgctl inspect` read it there, and PCR 11 is what systemd-measure 257 computes.
#[test]
fn a_distribution_sbat_that_does_not_fit_the_stub_gets_its_own_section() {
    let Some(root) = chroot() else { return };
    let kernel = common::repo_root().join(".cache/demo/vmlinuz");
    if !kernel.exists() {
        common::missing("the demo kernel .cache/demo/vmlinuz (run scripts/setup.sh)");
        return;
    }
    let dir = tempfile::tempdir_in(root.join("tmp")).unwrap();
    let d = dir.path();
    let inside = Path::new("/tmp").join(d.file_name().unwrap());
    std::fs::copy(&kernel, d.join("vmlinuz")).unwrap();
    std::fs::write(d.join("os-release"), "ID=imgctl-test\nVERSION_ID=257\n").unwrap();
    let short: String = DISTRO_SBAT
        .lines()
        .take(2)
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(d.join("short.sbat"), &short).unwrap();
    std::fs::write(d.join("distro.sbat"), DISTRO_SBAT).unwrap();
    let ukify = |sbat: &str| {
        Command::new("chroot")
            .arg(&root)
            .arg("ukify")
            .arg("build")
            .arg(format!("--linux={}", inside.join("vmlinuz").display()))
            .arg(format!(
                "--os-release=@{}",
                inside.join("os-release").display()
            ))
            .arg("--cmdline=console=ttyS0 quiet")
            .arg("--uname=6.1.0-imgctl")
            .arg(format!("--sbat=@{}", inside.join(sbat).display()))
            .arg(format!(
                "--output={}",
                inside.join(format!("{sbat}.efi")).display()
            ))
            .output()
            .unwrap()
    };
    let stub_sbat_raw = 0x200;

    // Fits: every section ukify writes, ours holds byte for byte.
    let o = ukify("short.sbat");
    assert!(
        o.status.success(),
        "ukify: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let theirs = std::fs::read(d.join("short.sbat.efi")).unwrap();
    let ours_path = build_257(&root, d, "short.sbat");
    let ours_bytes = std::fs::read(&ours_path).unwrap();
    let mut a = sections_of(&theirs);
    let mut b = sections_of(&ours_bytes);
    a.sort();
    b.sort();
    assert_eq!(
        a.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        b.iter().map(|(n, _)| n).collect::<Vec<_>>()
    );
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        assert!(x == y, "{name} differs from ukify's");
    }
    let merged = ukify_merge_sbat(&root, &inside, "vmlinuz", "short.sbat");
    assert!(merged.len() <= stub_sbat_raw, "{} bytes", merged.len());
    assert_eq!(objdump_section(&ours_path, ".sbat"), merged);
    assert_eq!(
        ours(&ours_path, PHASES),
        systemd_measure(&root, &ours_bytes, PHASES)
    );

    // Does not fit: ukify refuses; ours builds, with ukify's merged text in a section of its own.
    let merged = ukify_merge_sbat(&root, &inside, "vmlinuz", "distro.sbat");
    assert!(merged.len() > stub_sbat_raw, "{} bytes", merged.len());
    let o = ukify("distro.sbat");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("Not enough space in existing section .sbat"),
        "ukify 257 was expected to refuse the long SBAT (if it builds now, compare with it): {err}"
    );
    let ours_path = build_257(&root, d, "distro.sbat");
    let ours_bytes = std::fs::read(&ours_path).unwrap();
    assert_eq!(objdump_section(&ours_path, ".sbat"), merged);
    let sbat: Vec<(String, Vec<u8>)> = sections_of(&ours_bytes)
        .into_iter()
        .filter(|(n, _)| n == ".sbat")
        .collect();
    assert_eq!(sbat.len(), 1, "exactly one .sbat section");
    assert_eq!(sbat[0].1, merged);
    let inspect: serde_json::Value = serde_json::from_slice(&run_ok(
        imgctl().arg("inspect").arg(&ours_path).arg("--json"),
    ))
    .unwrap();
    let text = String::from_utf8(merged.clone()).unwrap();
    assert_eq!(
        inspect["sbat"]
            .as_str()
            .map(|s| s.trim_end_matches(['\0', '\n'])),
        Some(text.trim_end_matches(['\0', '\n']))
    );
    // The stub's code and data are where they were in memory; only .sbat moved.
    let stub_pe = goblin::pe::PE::parse(
        &std::fs::read(root.join("usr/lib/systemd/boot/efi/linuxx64.efi.stub")).unwrap(),
    )
    .unwrap()
    .sections
    .iter()
    .map(|s| (s.name().unwrap().to_owned(), s.virtual_address))
    .collect::<Vec<_>>();
    let ours_pe = goblin::pe::PE::parse(&ours_bytes).unwrap();
    for (name, va) in &stub_pe {
        let s = ours_pe
            .sections
            .iter()
            .find(|s| s.name().unwrap() == name)
            .unwrap();
        if name == ".sbat" {
            assert!(
                s.virtual_address > *va,
                ".sbat should have moved past the stub"
            );
        } else {
            assert_eq!(s.virtual_address, *va, "{name} moved in memory");
        }
    }
    if let Some(sbverify) = common::require_tool("sbverify", "sbsigntool") {
        run_ok(Command::new(sbverify).arg("--list").arg(&ours_path));
    }
    assert_eq!(
        ours(&ours_path, PHASES),
        systemd_measure(&root, &ours_bytes, PHASES)
    );
}

/// A recipe with two `dtbauto:` blobs on the 257 stub: the UKI carries both `.dtbauto`
/// sections, pcrs.json holds the none-selected case (what systemd-measure 257 gives without a
/// blob), the embedded `.pcrsig` signs all three cases, and a blob no machine could select (a
/// second one with the same compatible) is refused.
#[test]
fn a_recipe_with_dtbauto_builds_and_signs_every_case() {
    let Some(root) = chroot() else { return };
    let kernel = common::repo_root().join(".cache/demo/vmlinuz");
    if !kernel.exists() {
        common::missing("the demo kernel .cache/demo/vmlinuz (run scripts/setup.sh)");
        return;
    }
    let dir = tempfile::tempdir_in(root.join("tmp")).unwrap();
    let d = dir.path();
    let a = dtb(d, "a", &["imgctl,board-a"]);
    if a.is_empty() {
        return;
    }
    dtb(d, "b", &["imgctl,board-b"]);
    dtb(d, "a2", &["imgctl,board-a"]);
    let (key, _) = common::genkey(d, "rsa", common::RSA);
    let recipe = |blobs: &str| {
        let r = d.join("r.yaml");
        std::fs::write(
            &r,
            format!(
                "name: dt\nversion: \"1\"\nos-release:\n  ID: dt\nkernel: {}\ncmdline: console=ttyS0\n\
                 stub: {}\ndtbauto: [{blobs}]\n",
                kernel.display(),
                root.join("usr/lib/systemd/boot/efi/linuxx64.efi.stub").display()
            ),
        )
        .unwrap();
        r
    };
    run_ok(
        imgctl()
            .arg("build")
            .arg(recipe("a.dtb, b.dtb"))
            .arg("-o")
            .arg(d.join("out"))
            .arg("--pcr-private-key")
            .arg(&key),
    );
    let bytes = std::fs::read(d.join("out/dt.efi")).unwrap();
    let names: Vec<String> = sections_of(&bytes).into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names.iter().filter(|n| *n == ".dtbauto").count(),
        2,
        "{names:?}"
    );
    let pcrs: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("out/pcrs.json")).unwrap()).unwrap();
    // systemd-measure's four default paths (what .pcrsig signs); pcrs.json also has ":".
    let defaults = &PHASES[1..];
    let mut phased = pcrs.clone();
    for list in phased.as_object_mut().unwrap().values_mut() {
        list.as_array_mut()
            .unwrap()
            .retain(|e| e.get("phase").is_some());
    }
    assert_eq!(
        phased,
        systemd_measure(&root, &bytes, defaults),
        "pcrs.json: none selected"
    );
    let (_, sig) = sections_of(&bytes)
        .into_iter()
        .find(|(n, _)| n == ".pcrsig")
        .unwrap();
    let end = sig.iter().position(|&b| b == 0).unwrap_or(sig.len());
    let doc: serde_json::Value = serde_json::from_slice(&sig[..end]).unwrap();
    assert_eq!(
        doc["sha256"].as_array().unwrap().len(),
        3 * defaults.len(),
        "none, board-a and board-b, each for every phase path"
    );
    // The build's record states the policy its .pcrsig carries: the key .pcrsig names and
    // every PCR 11 value signed, systemd-measure 257's "none selected" values among them.
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("out/manifest.json")).unwrap()).unwrap();
    let policy = &record["policy"];
    assert_eq!(policy["key_fingerprint_sha256"], doc["sha256"][0]["pkfp"]);
    let signed = policy["signs"]["sha256"].as_array().unwrap();
    assert_eq!(signed.len(), 3 * defaults.len(), "{policy}");
    for e in systemd_measure(&root, &bytes, defaults)["sha256"]
        .as_array()
        .unwrap()
    {
        assert!(
            signed
                .iter()
                .any(|s| s["phase"] == e["phase"] && s["hash"] == e["hash"]),
            "{e} not in the record's policy: {policy}"
        );
    }
    let o = imgctl()
        .arg("build")
        .arg(recipe("a.dtb, a2.dtb"))
        .arg("-o")
        .arg(d.join("out2"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("a2.dtb") && e.contains("never select"), "{e}");
    assert!(!d.join("out2/dt.efi").exists());
}

/// What an addon test puts into an addon: `cmdline`, `uname`, `sbat` as text; `initrd`
/// (one archive, taken verbatim: its length is a multiple of 4), `ucode` and `dtb` as bytes.
#[derive(Debug, Default)]
struct AddonInputs<'a> {
    cmdline: Option<&'a str>,
    uname: Option<&'a str>,
    sbat: Option<&'a str>,
    initrd: Option<&'a [u8]>,
    ucode: Option<&'a [u8]>,
    dtb: Option<&'a [u8]>,
}

impl AddonInputs<'_> {
    /// Writes the binary inputs into `dir` (as initrd.bin, ucode.cpio, board.dtb).
    fn write_files(&self, dir: &Path) {
        for (file, data) in [
            ("initrd.bin", self.initrd),
            ("ucode.cpio", self.ucode),
            ("board.dtb", self.dtb),
        ] {
            if let Some(d) = data {
                std::fs::write(dir.join(file), d).unwrap();
            }
        }
    }
}

/// An addon recipe (`kind: addon`) built by `imgctl build`, written with serde_yaml so any
/// text survives; returns NAME.addon.efi.
fn imgctl_addon(dir: &Path, root: &Path, inputs: &AddonInputs<'_>) -> Vec<u8> {
    inputs.write_files(dir);
    let mut y = serde_yaml::Mapping::new();
    for (k, v) in [
        ("kind", Some("addon")),
        ("name", Some("a")),
        ("version", Some("1")),
        ("cmdline", inputs.cmdline),
        ("uname", inputs.uname),
        ("sbat", inputs.sbat),
        ("ucode", inputs.ucode.map(|_| "ucode.cpio")),
        ("dtb", inputs.dtb.map(|_| "board.dtb")),
    ] {
        if let Some(v) = v {
            y.insert(k.into(), v.into());
        }
    }
    if inputs.initrd.is_some() {
        y.insert(
            "initrd".into(),
            serde_yaml::from_str("{archives: [initrd.bin]}").unwrap(),
        );
    }
    let stub = root.join("usr/lib/systemd/boot/efi/addonx64.efi.stub");
    y.insert("stub".into(), stub.to_str().unwrap().into());
    let recipe = dir.join("addon.yaml");
    std::fs::write(&recipe, serde_yaml::to_string(&y).unwrap()).unwrap();
    let out = dir.join("out");
    run_ok(imgctl().arg("build").arg(&recipe).arg("-o").arg(&out));
    std::fs::read(out.join("a.addon.efi")).unwrap()
}

/// `ukify build --stub addonx64.efi.stub` 257 in the chroot with the same inputs
/// (`--cmdline=@FILE --uname --sbat=@FILE --initrd --microcode --devicetree`).
fn ukify_addon(dir: &Path, root: &Path, inputs: &AddonInputs<'_>) -> Vec<u8> {
    inputs.write_files(dir);
    let inside = Path::new("/").join(dir.strip_prefix(root).unwrap());
    let mut cmd = Command::new("chroot");
    cmd.arg(root).args([
        "ukify",
        "build",
        "--stub",
        "/usr/lib/systemd/boot/efi/addonx64.efi.stub",
    ]);
    if let Some(c) = inputs.cmdline {
        std::fs::write(dir.join("cmdline.txt"), c).unwrap();
        cmd.arg(format!(
            "--cmdline=@{}",
            inside.join("cmdline.txt").display()
        ));
    }
    if let Some(u) = inputs.uname {
        cmd.arg(format!("--uname={u}"));
    }
    if let Some(s) = inputs.sbat {
        std::fs::write(dir.join("sbat.txt"), s).unwrap();
        cmd.arg(format!("--sbat=@{}", inside.join("sbat.txt").display()));
    }
    for (opt, file, data) in [
        ("--initrd", "initrd.bin", inputs.initrd),
        ("--microcode", "ucode.cpio", inputs.ucode),
        ("--devicetree", "board.dtb", inputs.dtb),
    ] {
        if data.is_some() {
            cmd.arg(format!("{opt}={}", inside.join(file).display()));
        }
    }
    cmd.arg(format!("--output={}", inside.join("u.addon.efi").display()));
    run_ok(&mut cmd);
    std::fs::read(dir.join("u.addon.efi")).unwrap()
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(data))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, failure_persistence: None, ..ProptestConfig::default() })]
    /// Addons (issue 12): `imgctl build` of a `kind: addon` recipe is byte-identical to `ukify
    /// build --stub addonx64.efi.stub` 257 over random command lines, initrds, microcode cpios
    /// and a devicetree (each present or not, at least one of them), with and without `.uname`
    /// and a recipe SBAT line. `ext predict-pcrs` reads ukify's addon back: its PCR 12 events
    /// are the SHA-256 of the mangled text in UTF-16LE with its NUL, the devicetree's bytes,
    /// then (after the sidecar archives, here none) the microcode's and the initrd's bytes
    /// (the order and data the 257 stub measures, tests/vm.rs boots it).
    #[test]
    fn addons_are_byte_identical_to_ukify_257(
        cmdline in proptest::option::of("[a-z][a-z0-9=._ \t-]{0,60}[a-z0-9]"),
        uname in proptest::option::of("6\\.[0-9]{1,2}\\.[0-9]{1,2}-[a-z0-9]{1,8}"),
        vendor in proptest::option::of("[a-z]{1,8}"),
        initrd in proptest::option::of(proptest::collection::vec(any::<u32>(), 1..3000)),
        ucode in proptest::option::of(proptest::collection::vec(any::<u8>(), 1..700)),
        with_dtb in any::<bool>(),
    ) {
        let Some(root) = chroot() else { return Ok(()) };
        let tmp = tempfile::tempdir_in(root.join("tmp")).unwrap();
        let initrd: Option<Vec<u8>> = initrd.map(|w| w.iter().flat_map(|x| x.to_le_bytes()).collect());
        let dtb_blob = if with_dtb { dtb(tmp.path(), "board", &["imgctl,addon-board"]) } else { Vec::new() };
        // At least one thing the stub uses.
        let cmdline = match (&cmdline, &initrd, &ucode, dtb_blob.is_empty()) {
            (None, None, None, true) => Some("imgctl.addon=1".to_owned()),
            _ => cmdline,
        };
        let sbat = vendor.as_ref().map(|v| {
            format!("sbat,1,SBAT Version,sbat,1,https://github.com/rhboot/shim/blob/main/SBAT.md\n{v},1,Vendor,{v},1,https://example.org\n")
        });
        let inputs = AddonInputs {
            cmdline: cmdline.as_deref(),
            uname: uname.as_deref(),
            sbat: sbat.as_deref(),
            initrd: initrd.as_deref(),
            ucode: ucode.as_deref(),
            dtb: (!dtb_blob.is_empty()).then_some(dtb_blob.as_slice()),
        };
        let ours = imgctl_addon(tmp.path(), &root, &inputs);
        let theirs = ukify_addon(tmp.path(), &root, &inputs);
        let names = |b: &[u8]| sections_of(b).into_iter().map(|(n, _)| n).collect::<Vec<_>>();
        prop_assert_eq!(names(&ours), names(&theirs), "section order for {:?}", inputs);
        prop_assert!(ours == theirs, "imgctl and ukify 257 addons differ for {:?}", inputs);

        let addon = tmp.path().join("u.addon.efi");
        let mut cmd = imgctl();
        cmd.args(["ext", "predict-pcrs", "--json", "--stub-semantics", "257", "--bank", "sha256"]).arg(&addon);
        if uname.is_some() {
            // The UKI with the same .uname: the stub applies the addon.
            let uki = tmp.path().join("uki.efi");
            let data = assemble(&stub(&root), &[NewSection { name: ".linux".into(), data: b"k".to_vec() }, NewSection { name: ".uname".into(), data: uname.clone().unwrap().into_bytes() }]).unwrap();
            std::fs::write(&uki, data).unwrap();
            cmd.arg("--uki").arg(&uki);
        }
        let v: serde_json::Value = serde_json::from_slice(&run_ok(&mut cmd)).unwrap();
        let mut want: Vec<(String, String)> = Vec::new();
        if let Some(c) = &cmdline {
            let mangled: String = c.split([' ', '\t']).collect::<Vec<_>>().join(" ");
            let mangled = mangled.trim().to_owned();
            let data: Vec<u8> = mangled.encode_utf16().chain([0]).flat_map(u16::to_le_bytes).collect();
            want.push((mangled, sha256_hex(&data)));
        }
        if !dtb_blob.is_empty() {
            want.push(("devicetree addon u.addon.efi".into(), sha256_hex(&dtb_blob)));
        }
        if let Some(u) = &ucode {
            want.push(("microcode addon u.addon.efi".into(), sha256_hex(u)));
        }
        if let Some(i) = &initrd {
            want.push(("initrd addon u.addon.efi".into(), sha256_hex(i)));
        }
        let got: Vec<(String, String)> = v.as_array().unwrap().iter().map(|r| (
            r["description"].as_str().unwrap().to_owned(),
            r["banks"][0]["event_digest"].as_str().unwrap().to_owned(),
        )).collect();
        prop_assert_eq!(got, want);
    }
}

/// Multi-profile UKIs (issue 12): a recipe with `profile:` and one more profile (its own
/// `.cmdline`) builds byte-identically to `ukify build --profile … --join-profile P1.efi` 257
/// (P1.efi made by `ukify build --profile … --cmdline …`, on the addon stub as ukify picks it),
/// and `predict-pcrs --profile N` equals `systemd-measure calculate` 257 over profile N's
/// sections (the base's `.osrel .uname .linux .sbat`, profile N's `.cmdline` and `.profile`).
#[test]
fn a_multi_profile_recipe_builds_as_ukify_257_and_predicts_as_systemd_measure_257() {
    let Some((root, dir, inside)) = chroot_with_demo_kernel() else {
        return;
    };
    let osrel = "ID=imgctl-test\nVERSION_ID=257\n";
    std::fs::write(dir.path().join("os-release"), osrel).unwrap();
    let (base_cmdline, p1_cmdline) = ("console=ttyS0 quiet", "console=ttyS0 debug");
    let (base_profile, p1_profile) = ("ID=main\nTITLE=Main", "ID=debug\nTITLE=Debug");
    let at = |f: &str| inside.join(f).display().to_string();
    run_ok(Command::new("chroot").arg(&root).args([
        "ukify",
        "build",
        &format!("--profile={p1_profile}"),
        &format!("--cmdline={p1_cmdline}"),
        &format!("--output={}", at("p1.efi")),
    ]));
    run_ok(Command::new("chroot").arg(&root).args([
        "ukify",
        "build",
        &format!("--linux={}", at("vmlinuz")),
        &format!("--os-release=@{}", at("os-release")),
        &format!("--cmdline={base_cmdline}"),
        "--uname=6.1.0-imgctl",
        &format!("--profile={base_profile}"),
        &format!("--join-profile={}", at("p1.efi")),
        &format!("--output={}", at("ukify.efi")),
    ]));
    let mut y = serde_yaml::Mapping::new();
    for (k, v) in [
        ("name", "multi"),
        ("version", "1"),
        ("os-release-file", "os-release"),
        ("kernel", "vmlinuz"),
        ("cmdline", base_cmdline),
        ("uname", "6.1.0-imgctl"),
        ("profile", base_profile),
    ] {
        y.insert(k.into(), v.into());
    }
    let stub_path = root.join("usr/lib/systemd/boot/efi/linuxx64.efi.stub");
    y.insert("stub".into(), stub_path.to_str().unwrap().into());
    let mut p1 = serde_yaml::Mapping::new();
    p1.insert("profile".into(), p1_profile.into());
    p1.insert("cmdline".into(), p1_cmdline.into());
    y.insert(
        "profiles".into(),
        serde_yaml::Value::Sequence(vec![serde_yaml::Value::Mapping(p1)]),
    );
    std::fs::write(
        dir.path().join("multi.yaml"),
        serde_yaml::to_string(&y).unwrap(),
    )
    .unwrap();
    let out = dir.path().join("out");
    run_ok(
        imgctl()
            .arg("build")
            .arg(dir.path().join("multi.yaml"))
            .arg("-o")
            .arg(&out),
    );
    let ours_bytes = std::fs::read(out.join("multi.efi")).unwrap();
    let theirs_bytes = std::fs::read(dir.path().join("ukify.efi")).unwrap();
    assert!(
        ours_bytes == theirs_bytes,
        "imgctl's multi-profile UKI differs from ukify 257's"
    );
    let sbat = sections_of(&ours_bytes)
        .into_iter()
        .find(|(n, _)| n == ".sbat")
        .unwrap()
        .1;
    let kernel_bytes = std::fs::read(dir.path().join("vmlinuz")).unwrap();
    let addon_stub =
        std::fs::read(root.join("usr/lib/systemd/boot/efi/addonx64.efi.stub")).unwrap();
    for (profile, cmdline, text) in [
        ("0", base_cmdline, base_profile),
        ("1", p1_cmdline, p1_profile),
    ] {
        let files: [(&str, &[u8]); 6] = [
            ("--linux", &kernel_bytes),
            ("--osrel", osrel.as_bytes()),
            ("--cmdline", cmdline.as_bytes()),
            ("--uname", b"6.1.0-imgctl"),
            ("--sbat", &sbat),
            ("--profile", text.as_bytes()),
        ];
        // The addon stub has no section systemd-measure takes: only `files` are measured.
        let theirs = systemd_measure_with(&root, &addon_stub, PHASES, &files);
        let mut cmd = imgctl();
        cmd.arg("predict-pcrs")
            .arg(out.join("multi.efi"))
            .args(["--json", "--profile", profile]);
        for p in PHASES {
            cmd.arg(format!("--phase={p}"));
        }
        let mut ours: serde_json::Value = serde_json::from_slice(&run_ok(&mut cmd)).unwrap();
        // PCR 12 (the profile tag) is imgctl's addition to systemd-measure's shape.
        for list in ours.as_object_mut().unwrap().values_mut() {
            list.as_array_mut().unwrap().retain(|e| e["pcr"] == 11);
        }
        assert_eq!(
            ours, theirs,
            "profile {profile}: PCR 11 vs systemd-measure 257"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, failure_persistence: None, ..ProptestConfig::default() })]
    /// Section order (issue 12): a UKI recipe with an initrd (random archive bytes), with or
    /// without `.cmdline`, `.ucode` and a second profile, builds byte-identically to `ukify
    /// build` 257 given the same inputs (imgctl's `NAME.initrd` as `--initrd`; `.linux
    /// .initrd .ucode` in that order, then the stub's `.sbat`, then the profiles). PCR 11 of
    /// the build equals systemd-measure 257's over the image's sections.
    #[test]
    fn ukis_with_an_initrd_are_byte_identical_to_ukify_257(
        initrd in proptest::collection::vec(any::<u8>(), 1..5000),
        cmdline in proptest::option::of("[a-z][a-z0-9=._ -]{0,40}[a-z0-9]"),
        ucode in proptest::option::of(proptest::collection::vec(any::<u8>(), 1..700)),
        second_profile in proptest::option::of("[a-z][a-z0-9=._ -]{0,30}[a-z0-9]"),
    ) {
        let Some((root, dir, inside)) = chroot_with_demo_kernel() else { return Ok(()) };
        let d = dir.path();
        let at = |f: &str| inside.join(f).display().to_string();
        std::fs::write(d.join("os-release"), "ID=imgctl-test\nVERSION_ID=257\n").unwrap();
        std::fs::write(d.join("initrd.bin"), &initrd).unwrap();
        let mut y = serde_yaml::Mapping::new();
        for (k, v) in [("name", "ord"), ("version", "1"), ("os-release-file", "os-release"), ("kernel", "vmlinuz"), ("uname", "6.1.0-imgctl")] {
            y.insert(k.into(), v.into());
        }
        let stub_path = root.join("usr/lib/systemd/boot/efi/linuxx64.efi.stub");
        y.insert("stub".into(), stub_path.to_str().unwrap().into());
        y.insert("initrd".into(), serde_yaml::from_str("{archives: [initrd.bin]}").unwrap());
        let mut ukify: Vec<String> = vec![
            "ukify".into(), "build".into(),
            format!("--linux={}", at("vmlinuz")),
            format!("--os-release=@{}", at("os-release")),
            "--uname=6.1.0-imgctl".into(),
            format!("--initrd={}", at("out/ord.initrd")),
            format!("--output={}", at("ukify.efi")),
        ];
        if let Some(c) = &cmdline {
            y.insert("cmdline".into(), c.as_str().into());
            std::fs::write(d.join("cmdline"), c).unwrap();
            ukify.push(format!("--cmdline=@{}", at("cmdline")));
        }
        if let Some(u) = &ucode {
            std::fs::write(d.join("ucode.cpio"), u).unwrap();
            y.insert("ucode".into(), "ucode.cpio".into());
            ukify.push(format!("--microcode={}", at("ucode.cpio")));
        }
        if let Some(c) = &second_profile {
            y.insert("profile".into(), "ID=main".into());
            let mut p1 = serde_yaml::Mapping::new();
            p1.insert("profile".into(), "ID=second".into());
            p1.insert("cmdline".into(), c.as_str().into());
            y.insert("profiles".into(), serde_yaml::Value::Sequence(vec![serde_yaml::Value::Mapping(p1)]));
            std::fs::write(d.join("p1-cmdline"), c).unwrap();
            run_ok(Command::new("chroot").arg(&root).args([
                "ukify".to_owned(), "build".into(), "--profile=ID=second".into(),
                format!("--cmdline=@{}", at("p1-cmdline")),
                format!("--output={}", at("p1.efi")),
            ]));
            ukify.push("--profile=ID=main".into());
            ukify.push(format!("--join-profile={}", at("p1.efi")));
        }
        std::fs::write(d.join("ord.yaml"), serde_yaml::to_string(&y).unwrap()).unwrap();
        run_ok(imgctl().arg("build").arg(d.join("ord.yaml")).arg("-o").arg(d.join("out")));
        run_ok(Command::new("chroot").arg(&root).args(&ukify));
        let ours_bytes = std::fs::read(d.join("out/ord.efi")).unwrap();
        let theirs_bytes = std::fs::read(d.join("ukify.efi")).unwrap();
        let names = |b: &[u8]| sections_of(b).into_iter().map(|(n, _)| n).collect::<Vec<_>>();
        prop_assert_eq!(names(&ours_bytes), names(&theirs_bytes), "section order");
        prop_assert!(ours_bytes == theirs_bytes, "imgctl's UKI differs from ukify 257's");
        if second_profile.is_none() {
            let pcrs: serde_json::Value = serde_json::from_slice(&std::fs::read(d.join("out/pcrs.json")).unwrap()).unwrap();
            let theirs = systemd_measure(&root, &ours_bytes, &[]);
            for (bank, list) in theirs.as_object().unwrap() {
                // systemd-measure without --phase: the default phases; pcrs.json has them too.
                for e in list.as_array().unwrap() {
                    prop_assert!(pcrs[bank].as_array().unwrap().iter().any(|o| o["phase"] == e["phase"] && o["hash"] == e["hash"]), "{} {} not in pcrs.json", bank, e);
                }
            }
        }
    }
}

/// Signing PCR 11 of a multi-profile UKI (issue 12): `imgctl build --pcr-private-key` of a
/// recipe with an initrd, `profile:` and two more profiles is byte-identical to `ukify build
/// --pcr-private-key … --profile … --join-profile P1.efi --join-profile P2.efi` 257 (RSA key):
/// one `.pcrsig` per profile, each `systemd-measure sign` 257 over what the stub measures when
/// booting that profile (ukify calls it once for the base, placing it after the base's
/// `.profile`, and once after each joined profile's sections), and the same `.pcrpkey`. Each
/// profile's `.pcrsig` equals `imgctl sign-pcrs --profile N` (which signs `predict-pcrs
/// --profile N`), and they differ between profiles.
#[test]
fn a_signed_multi_profile_build_is_byte_identical_to_ukify_257() {
    let Some((root, dir, inside)) = chroot_with_demo_kernel() else {
        return;
    };
    if common::require_tool("openssl", "openssl").is_none() {
        return;
    }
    let d = dir.path();
    let (key, _) = common::genkey(d, "pcr", common::RSA);
    let at = |f: &str| inside.join(f).display().to_string();
    std::fs::write(d.join("os-release"), "ID=imgctl-test\nVERSION_ID=257\n").unwrap();
    std::fs::write(d.join("initrd.bin"), vec![0x5au8; 4096]).unwrap();
    let profiles = [
        ("ID=debug\nTITLE=Debug", "console=ttyS0 debug"),
        ("ID=rescue\nTITLE=Rescue", "console=ttyS0 rescue"),
    ];
    for (i, (profile, cmdline)) in profiles.iter().enumerate() {
        run_ok(Command::new("chroot").arg(&root).args([
            "ukify".to_owned(),
            "build".into(),
            format!("--profile={profile}"),
            format!("--cmdline={cmdline}"),
            format!("--output={}", at(&format!("p{}.efi", i + 1))),
        ]));
    }
    let mut y = serde_yaml::Mapping::new();
    for (k, v) in [
        ("name", "signed"),
        ("version", "1"),
        ("os-release-file", "os-release"),
        ("kernel", "vmlinuz"),
        ("cmdline", "console=ttyS0 quiet"),
        ("uname", "6.1.0-imgctl"),
        ("profile", "ID=main\nTITLE=Main"),
    ] {
        y.insert(k.into(), v.into());
    }
    let stub_path = root.join("usr/lib/systemd/boot/efi/linuxx64.efi.stub");
    y.insert("stub".into(), stub_path.to_str().unwrap().into());
    y.insert(
        "initrd".into(),
        serde_yaml::from_str("{archives: [initrd.bin]}").unwrap(),
    );
    let list: Vec<serde_yaml::Value> = profiles
        .iter()
        .map(|(p, c)| {
            let mut m = serde_yaml::Mapping::new();
            m.insert("profile".into(), (*p).into());
            m.insert("cmdline".into(), (*c).into());
            serde_yaml::Value::Mapping(m)
        })
        .collect();
    y.insert("profiles".into(), serde_yaml::Value::Sequence(list));
    std::fs::write(d.join("signed.yaml"), serde_yaml::to_string(&y).unwrap()).unwrap();
    run_ok(
        imgctl()
            .arg("build")
            .arg(d.join("signed.yaml"))
            .arg("-o")
            .arg(d.join("out"))
            .arg("--pcr-private-key")
            .arg(&key),
    );
    run_ok(Command::new("chroot").arg(&root).args([
        "ukify".to_owned(),
        "build".into(),
        format!("--linux={}", at("vmlinuz")),
        format!("--os-release=@{}", at("os-release")),
        "--cmdline=console=ttyS0 quiet".into(),
        "--uname=6.1.0-imgctl".into(),
        format!("--initrd={}", at("out/signed.initrd")),
        "--profile=ID=main\nTITLE=Main".into(),
        format!("--join-profile={}", at("p1.efi")),
        format!("--join-profile={}", at("p2.efi")),
        format!("--pcr-private-key={}", at("pcr.pem")),
        format!("--output={}", at("ukify.efi")),
    ]));
    let ours = std::fs::read(d.join("out/signed.efi")).unwrap();
    let theirs = std::fs::read(d.join("ukify.efi")).unwrap();
    let names = |b: &[u8]| {
        sections_of(b)
            .into_iter()
            .map(|(n, _)| n)
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&ours), names(&theirs), "section order");
    for ((n, a), (_, b)) in sections_of(&ours).iter().zip(sections_of(&theirs).iter()) {
        assert!(a == b, "section {n} differs from ukify 257's");
    }
    assert!(
        ours == theirs,
        "imgctl's signed multi-profile UKI differs from ukify 257's"
    );
    let pcrsigs: Vec<serde_json::Value> = sections_of(&ours)
        .into_iter()
        .filter(|(n, _)| n == ".pcrsig")
        .map(|(_, data)| serde_json::from_slice(&data).unwrap())
        .collect();
    assert_eq!(pcrsigs.len(), 3, "one .pcrsig per profile");
    for (n, embedded) in pcrsigs.iter().enumerate() {
        let signed: serde_json::Value = serde_json::from_slice(&run_ok(
            imgctl()
                .arg("sign-pcrs")
                .arg(d.join("out/signed.efi"))
                .args(["--profile", &n.to_string()])
                .arg("--private-key")
                .arg(&key),
        ))
        .unwrap();
        assert_eq!(
            *embedded, signed,
            "profile {n}: .pcrsig vs sign-pcrs --profile {n}"
        );
    }
    assert_ne!(pcrsigs[0], pcrsigs[1]);
    assert_ne!(pcrsigs[1], pcrsigs[2]);
    // One .pcrsig appended at the end would serve only the last profile: refused.
    let o = imgctl()
        .arg("sign-pcrs")
        .arg(d.join("out/signed.efi"))
        .arg("--private-key")
        .arg(&key)
        .arg("--embed")
        .arg(d.join("embedded.efi"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("multi-profile"), "{e}");
}

/// `.hwids` (issue 12): a recipe with two `.dtbauto` blobs and `hwids:` (a folder of ukify
/// hwid JSON files, two for the same board, whose CHIDs merge) builds byte-identically to
/// `ukify build --devicetree-auto … --hwids DIR` 257; the section decodes to every CHID with
/// its board's compatible; and `predict-pcrs` with no `.dtbauto` selected equals
/// systemd-measure 257 given `.hwids` (through `--dtbauto=`, the option 257.13 measures as
/// `.hwids`, PR #35765).
#[test]
fn a_recipe_with_hwids_builds_as_ukify_257() {
    let Some((root, dir, inside)) = chroot_with_demo_kernel() else {
        return;
    };
    let a = dtb(dir.path(), "a", &["vendor,board-a"]);
    let b = dtb(dir.path(), "b", &["vendor,board-b"]);
    if a.is_empty() || b.is_empty() {
        return;
    }
    let hw = dir.path().join("hwids");
    std::fs::create_dir_all(hw.join("sub")).unwrap();
    let chids = [
        "2a7c6e3e-4b7d-5c2e-9f0a-1b2c3d4e5f60",
        "0f6b8a52-1c3d-5e7f-8a9b-c0d1e2f3a4b5",
        "7d4e2c1b-9a8f-5e6d-b4c3-a2b1c0d9e8f7",
    ];
    std::fs::write(
        hw.join("board-b.json"),
        format!(r#"{{"type": "devicetree", "name": "Board B", "compatible": "vendor,board-b", "hwids": ["{}"]}}"#, chids[2]),
    )
    .unwrap();
    std::fs::write(
        hw.join("board-a.json"),
        format!(r#"{{"type": "devicetree", "name": "Board A", "compatible": "vendor,board-a", "hwids": ["{}"]}}"#, chids[0]),
    )
    .unwrap();
    std::fs::write(
        hw.join("sub/board-a-rev2.json"),
        format!(r#"{{"type": "devicetree", "name": "Board A", "compatible": "vendor,board-a", "hwids": ["{}"]}}"#, chids[1]),
    )
    .unwrap();
    let at = |f: &str| inside.join(f).display().to_string();
    run_ok(Command::new("chroot").arg(&root).args([
        "ukify",
        "build",
        &format!("--linux={}", at("vmlinuz")),
        "--cmdline=console=ttyS0",
        "--uname=6.1.0-imgctl",
        &format!("--devicetree-auto={}", at("a.dtb")),
        &format!("--devicetree-auto={}", at("b.dtb")),
        &format!("--hwids={}", at("hwids")),
        &format!("--output={}", at("ukify.efi")),
    ]));
    std::fs::write(
        dir.path().join("hw.yaml"),
        format!(
            "name: hw\nversion: \"1\"\nos-release: {{ID: x}}\nkernel: vmlinuz\ncmdline: console=ttyS0\n\
             uname: 6.1.0-imgctl\ndtbauto: [a.dtb, b.dtb]\nhwids: hwids\nstub: {}\n",
            root.join("usr/lib/systemd/boot/efi/linuxx64.efi.stub").display()
        ),
    )
    .unwrap();
    // ukify gets no os-release here; the recipe needs one: compare everything but .osrel.
    let out = dir.path().join("out");
    run_ok(
        imgctl()
            .arg("build")
            .arg(dir.path().join("hw.yaml"))
            .arg("-o")
            .arg(&out),
    );
    let ours_bytes = std::fs::read(out.join("hw.efi")).unwrap();
    let theirs_bytes = std::fs::read(dir.path().join("ukify.efi")).unwrap();
    let hwids_of = |b: &[u8]| {
        sections_of(b)
            .into_iter()
            .find(|(n, _)| n == ".hwids")
            .unwrap()
            .1
    };
    let (ours_hw, theirs_hw) = (hwids_of(&ours_bytes), hwids_of(&theirs_bytes));
    assert_eq!(ours_hw, theirs_hw, ".hwids differs from ukify 257's");
    let decoded = imgctl_measure::hwids::decode(&theirs_hw).unwrap();
    let mut got: Vec<(String, String)> = decoded
        .iter()
        .map(|r| {
            (
                imgctl_measure::hwids::format_uuid(&r.chid),
                r.compatible.clone(),
            )
        })
        .collect();
    got.sort();
    let mut want = vec![
        (chids[0].to_owned(), "vendor,board-a".to_owned()),
        (chids[1].to_owned(), "vendor,board-a".to_owned()),
        (chids[2].to_owned(), "vendor,board-b".to_owned()),
    ];
    want.sort();
    assert_eq!(got, want);
    let names: Vec<String> = sections_of(&ours_bytes)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let theirs_names: Vec<String> = sections_of(&theirs_bytes)
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| n != ".osrel")
        .collect();
    let ours_names: Vec<String> = names.iter().filter(|n| *n != ".osrel").cloned().collect();
    assert_eq!(ours_names, theirs_names, "section order");
    // No .dtbauto selected (QEMU x86): PCR 11 over .hwids and the rest, as systemd-measure 257
    // computes it when given .hwids through its swapped --dtbauto option.
    let mut cmd = imgctl();
    cmd.arg("predict-pcrs")
        .arg(out.join("hw.efi"))
        .args(["--json", "--no-dtb"]);
    for p in PHASES {
        cmd.arg(format!("--phase={p}"));
    }
    let ours: serde_json::Value = serde_json::from_slice(&run_ok(&mut cmd)).unwrap();
    let theirs = systemd_measure_with(&root, &ours_bytes, PHASES, &[("--dtbauto", &ours_hw)]);
    assert_eq!(ours, theirs, "PCR 11 with .hwids vs systemd-measure 257");
}

/// An SMBIOS table laid out by hand (type 0, type 1 of 27 bytes, type 2, type 127) with these
/// type 1 strings (manufacturer, product, SKU, family) and type 2 strings (manufacturer,
/// product), and an SMBIOS 3 entry point for it, as Linux exports them.
fn smbios_table(system: [&str; 4], baseboard: [&str; 2]) -> (Vec<u8>, Vec<u8>) {
    let structure = |kind: u8, formatted: &[u8], strings: &[&str]| {
        let mut s = vec![kind, 4 + formatted.len() as u8, kind, 0];
        s.extend(formatted);
        for t in strings {
            s.extend(t.as_bytes());
            s.push(0);
        }
        s.push(0);
        if strings.is_empty() {
            s.push(0);
        }
        s
    };
    let mut t1 = vec![1, 2, 0, 0];
    t1.extend([0x11; 16]); // UUID
    t1.extend([6, 3, 4]); // wake-up type, SKU = string 3, family = string 4
    let mut dmi = structure(
        0,
        &[1, 2, 0, 0xe8, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        &["EDK II", "1.0"],
    );
    dmi.extend(structure(1, &t1, &system));
    dmi.extend(structure(2, &[1, 2, 0, 0], &baseboard));
    dmi.extend(structure(127, &[], &[]));
    let mut ep = b"_SM3_\0\x18\x03\x00\x00\x01\x00".to_vec();
    ep.extend((dmi.len() as u32).to_le_bytes());
    ep.extend(0x1000u64.to_le_bytes());
    ep[5] = 0u8.wrapping_sub(ep.iter().fold(0u8, |a, b| a.wrapping_add(*b)));
    (ep, dmi)
}

/// CHIDs of a raw SMBIOS table: `imgctl chid` equals fwupd's `fwupdtool hwids` (Debian 13, an
/// independent implementation reading the same bytes) for every CHID the 257 stub computes,
/// with strings that need the trimming both do (spaces around) and non-ASCII UTF-8.
#[test]
fn chids_of_a_raw_smbios_table_equal_fwupdtool_hwids() {
    let Some(root) = common::fwupd_chroot() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for (system, baseboard) in [
        (
            [
                "LENOVO",
                "20ARS19C0C",
                "LENOVO_MT_20AR_BU_Think_FM_ThinkPad T440s",
                "ThinkPad T440s",
            ],
            ["LENOVO", "20ARS19C0C"],
        ),
        (
            ["  Fabrique Générale  ", "Modèle 7 ", " SKU-é", "Famille Ω"],
            [" Carte Mère ", "CM-1"],
        ),
    ] {
        let (ep, dmi) = smbios_table(system, baseboard);
        let file = dir.path().join("DMI");
        std::fs::write(&file, &dmi).unwrap();
        let ours = common::imgctl_chids(&file);
        assert_eq!(ours.len(), 10);
        let theirs = common::fwupdtool_hwids(&root, &ep, &dmi);
        for c in &ours {
            assert!(
                theirs.contains(c),
                "fwupdtool hwids lacks {c:?}: {theirs:?}"
            );
        }
    }
}
