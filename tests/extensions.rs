//! `imgctl ext`: dm-verity trees byte-identical to `veritysetup format`, images systemd-dissect
//! recognises and systemd-repart 252 agrees with, signatures openssl verifies, fs-verity digests
//! `fsverity digest` agrees with, reproducible builds, and clean failures.

#![allow(clippy::unwrap_used)] // reason: test code; a panic is a test failure

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{imgctl, require_tool, run_ok};
use imgctl_extensions::verity::{format, TreeBuilder, VerityParams};
use serde_json::Value;

const EPOCH: &str = "1700000000";

/// A folder holding a sysext tree, optionally a key pair, and a recipe.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        // Created in reverse order, so that readdir order differs between fixtures.
        std::fs::create_dir_all(p.join("tree/usr/share/demo")).unwrap();
        std::fs::create_dir_all(p.join("tree/usr/bin")).unwrap();
        std::fs::write(p.join("tree/usr/share/demo/z"), b"zzz\n").unwrap();
        std::fs::write(p.join("tree/usr/share/demo/a"), vec![b'a'; 70_000]).unwrap();
        std::fs::write(p.join("tree/usr/bin/hello"), b"#!/bin/sh\necho hi\n").unwrap();
        std::os::unix::fs::symlink("hello", p.join("tree/usr/bin/hi")).unwrap();
        Fixture { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// Makes an RSA key and self-signed certificate named `stem.key` / `stem.crt`.
    fn keypair(&self, stem: &str) -> Option<()> {
        let openssl = require_tool("openssl", "openssl")?;
        run_ok(
            Command::new(openssl)
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                ])
                .args(["-subj", "/CN=imgctl-test", "-keyout"])
                .arg(self.path(&format!("{stem}.key")))
                .arg("-out")
                .arg(self.path(&format!("{stem}.crt"))),
        );
        Some(())
    }

    fn recipe(&self, name: &str, extra: &str) -> PathBuf {
        let r = self.path("recipe.yaml");
        std::fs::write(
            &r,
            format!(
                "kind: sysext\nname: {name}\nversion: \"1\"\ntree: tree\n\
                 files:\n  - {{path: /usr/bin/hello, mode: \"0755\"}}\n\
                 release:\n  ID: _any\n  ARCHITECTURE: x86-64\n{extra}"
            ),
        )
        .unwrap();
        r
    }

    fn signed_recipe(&self, name: &str) -> Option<PathBuf> {
        self.keypair("sign")?;
        Some(self.recipe(name, "signing: {key: sign.key, certificate: sign.crt}\n"))
    }
}

fn build(recipe: &Path, out: &Path) -> Output {
    imgctl()
        .args(["ext", "build"])
        .arg(recipe)
        .arg("-o")
        .arg(out)
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .output()
        .unwrap()
}

fn build_ok(recipe: &Path, out: &Path) -> Value {
    let o = build(recipe, out);
    assert!(
        o.status.success(),
        "build failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap()
}

fn partition<'a>(image: &'a [u8], manifest: &Value, designator: &str) -> &'a [u8] {
    let p = manifest["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["designator"] == designator)
        .unwrap_or_else(|| panic!("no {designator} partition"));
    let off = p["offset"].as_u64().unwrap() as usize;
    &image[off..off + p["size"].as_u64().unwrap() as usize]
}

/// `veritysetup format` with a fixed salt and UUID; returns (hash device bytes, root hash).
fn veritysetup_format(vs: &Path, data: &Path, salt: &str, uuid: &str) -> Option<(Vec<u8>, String)> {
    let hash = data.with_extension("hash");
    let _ = std::fs::remove_file(&hash);
    let o = Command::new(vs)
        .arg("format")
        .arg(format!("--salt={salt}"))
        .arg(format!("--uuid={uuid}"))
        .arg(data)
        .arg(&hash)
        .output()
        .unwrap();
    if !o.status.success() {
        return None;
    }
    let text = String::from_utf8(o.stdout).unwrap();
    let root = text
        .lines()
        .find_map(|l| l.strip_prefix("Root hash:"))
        .unwrap()
        .trim()
        .to_owned();
    Some((std::fs::read(&hash).unwrap(), root))
}

#[test]
fn verity_tree_equals_veritysetup_format_byte_for_byte() {
    let Some(vs) = require_tool("veritysetup", "cryptsetup-bin") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let uuid = "11111111-2222-3333-4444-555555555555";
    let cases: &[(&str, usize, &str)] = &[
        ("one block", 4096, "0011"),
        (
            "odd size",
            4096 * 3 + 1234,
            "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
        ),
        ("no salt", 4096 * 2, "-"),
        ("one full leaf block", 4096 * 128, "ab"),
        ("two levels", 4096 * 129, "cafe"),
        ("three levels", 4096 * 16_385, "beef"),
    ];
    for &(what, len, salt) in cases {
        let data: Vec<u8> = (0..len as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let file = dir.path().join("data");
        std::fs::write(&file, &data).unwrap();
        let (want_dev, want_root) = veritysetup_format(&vs, &file, salt, uuid).unwrap();
        let salt_bytes = if salt == "-" {
            vec![]
        } else {
            hex::decode(salt).unwrap()
        };
        let params = VerityParams::new(
            &salt_bytes,
            *b"\x11\x11\x11\x11\x22\x22\x33\x33\x44\x44\x55\x55\x55\x55\x55\x55",
        )
        .unwrap();
        let ours = format(&params, &data).unwrap();
        assert_eq!(ours.root_hash_hex(), want_root, "{what}: root hash");
        assert_eq!(
            ours.hash_device.len(),
            want_dev.len(),
            "{what}: hash device size"
        );
        assert!(
            ours.hash_device == want_dev,
            "{what}: hash device bytes differ"
        );
    }
    // Empty data: veritysetup refuses, and so do we.
    let empty = dir.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    assert!(veritysetup_format(&vs, &empty, "00", uuid).is_none());
    let params = VerityParams::new(&[0], [0x11; 16]).unwrap();
    assert!(format(&params, &[]).is_err());
    assert!(TreeBuilder::new(params).finish().is_err());
}

#[test]
fn veritysetup_verify_accepts_our_tree_and_rejects_a_flipped_bit() {
    let Some(vs) = require_tool("veritysetup", "cryptsetup-bin") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut data: Vec<u8> = (0..4096 * 300u32).map(|i| (i % 253) as u8).collect();
    let params = VerityParams::new(b"imgctl", [7; 16]).unwrap();
    let tree = format(&params, &data).unwrap();
    let (d, h) = (dir.path().join("data"), dir.path().join("hash"));
    std::fs::write(&d, &data).unwrap();
    std::fs::write(&h, &tree.hash_device).unwrap();
    let verify = |root: &str| {
        Command::new(&vs)
            .arg("verify")
            .arg(&d)
            .arg(&h)
            .arg(root)
            .status()
            .unwrap()
            .success()
    };
    assert!(verify(&tree.root_hash_hex()));
    data[4096 * 200 + 5] ^= 1;
    std::fs::write(&d, &data).unwrap();
    assert!(!verify(&tree.root_hash_hex()));
}

#[test]
fn systemd_dissect_recognises_the_signed_image_and_its_extension_release() {
    let Some(dissect) = require_tool("systemd-dissect", "systemd-container") else {
        return;
    };
    let Some(vs) = require_tool("veritysetup", "cryptsetup-bin") else {
        return;
    };
    let f = Fixture::new();
    let Some(recipe) = f.signed_recipe("dissectme") else {
        return;
    };
    let out = f.path("out");
    let m = build_ok(&recipe, &out);
    let image = out.join("dissectme.raw");
    let j: Value = serde_json::from_slice(&run_ok(
        Command::new(&dissect).arg("--json=short").arg(&image),
    ))
    .unwrap();
    let mounts = j["mounts"].as_array().unwrap();
    let got: Vec<(&str, &str, &str)> = mounts
        .iter()
        .map(|m| {
            (
                m["designator"].as_str().unwrap(),
                m["fstype"].as_str().unwrap(),
                m["partition_uuid"].as_str().unwrap(),
            )
        })
        .collect();
    let root = m["verity"]["root_hash"].as_str().unwrap();
    let uuid = |h: &str| {
        format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    };
    assert_eq!(got[0], ("usr", "erofs", uuid(&root[..32]).as_str()));
    assert_eq!(
        got[1],
        ("usr-verity", "DM_verity_hash", uuid(&root[32..]).as_str())
    );
    assert_eq!(got[2].0, "usr-verity-sig");
    assert_eq!(got[2].1, "verity_hash_signature");
    assert!(mounts.iter().all(|m| m["architecture"] == "x86-64"));
    assert_eq!(j["useSystemExtension"], true);
    // systemd-dissect 252 has no --list; it shows the extension-release file's lines in its
    // JSON, and --copy-from reads the file out of the mounted image.
    let release = m["extension_release"]["content"].as_str().unwrap();
    let lines: Vec<&str> = j["extensionRelease"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(lines, release.lines().collect::<Vec<_>>());
    let copy = f.path("release-copy");
    run_ok(
        Command::new(&dissect)
            .arg("--copy-from")
            .arg(&image)
            .arg("/usr/lib/extension-release.d/extension-release.dissectme")
            .arg(&copy),
    );
    assert_eq!(std::fs::read_to_string(&copy).unwrap(), release);

    // veritysetup verifies the partitions inside the image with the manifest's root hash.
    let bytes = std::fs::read(&image).unwrap();
    std::fs::write(f.path("p.data"), partition(&bytes, &m, "usr")).unwrap();
    std::fs::write(f.path("p.hash"), partition(&bytes, &m, "usr-verity")).unwrap();
    run_ok(
        Command::new(&vs)
            .arg("verify")
            .arg(f.path("p.data"))
            .arg(f.path("p.hash"))
            .arg(root),
    );

    // And our own reader agrees.
    let insp: Value = serde_json::from_slice(&run_ok(
        imgctl()
            .args(["ext", "inspect", "--verify", "--json"])
            .arg(&image),
    ))
    .unwrap();
    assert_eq!(insp["ok"], true);
    assert_eq!(insp["verify"]["root_hash"], root);
    assert_eq!(insp["inspection"]["signature"]["root_hash"], root);
}

#[test]
fn root_hash_signature_verifies_with_openssl_cms() {
    let Some(openssl) = require_tool("openssl", "openssl") else {
        return;
    };
    let f = Fixture::new();
    let Some(recipe) = f.signed_recipe("signed") else {
        return;
    };
    let out = f.path("out");
    let m = build_ok(&recipe, &out);
    let bytes = std::fs::read(out.join("signed.raw")).unwrap();
    let sig = partition(&bytes, &m, "usr-verity-sig");
    assert_eq!(sig.len() % 4096, 0);
    let end = sig.iter().position(|&b| b == 0).unwrap();
    assert!(sig[end..].iter().all(|&b| b == 0), "JSON is NUL-padded");
    let j: Value = serde_json::from_slice(&sig[..end]).unwrap();
    let root = m["verity"]["root_hash"].as_str().unwrap();
    assert_eq!(j["rootHash"], root);
    use base64::Engine;
    let der = base64::engine::general_purpose::STANDARD
        .decode(j["signature"].as_str().unwrap())
        .unwrap();
    std::fs::write(f.path("sig.der"), der).unwrap();
    std::fs::write(f.path("roothash.txt"), root).unwrap();
    run_ok(
        Command::new(&openssl)
            .args([
                "cms", "-verify", "-binary", "-inform", "DER", "-purpose", "any", "-in",
            ])
            .arg(f.path("sig.der"))
            .arg("-content")
            .arg(f.path("roothash.txt"))
            .arg("-CAfile")
            .arg(f.path("sign.crt"))
            .args(["-out", "/dev/null"]),
    );
    // A different content must not verify.
    std::fs::write(f.path("roothash.txt"), format!("{root}\n")).unwrap();
    let bad = Command::new(&openssl)
        .args([
            "cms", "-verify", "-binary", "-inform", "DER", "-purpose", "any", "-in",
        ])
        .arg(f.path("sig.der"))
        .arg("-content")
        .arg(f.path("roothash.txt"))
        .arg("-CAfile")
        .arg(f.path("sign.crt"))
        .args(["-out", "/dev/null"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    // certificateFingerprint is the SHA-256 of the certificate's DER.
    let cert_der = run_ok(
        Command::new(&openssl)
            .args(["x509", "-outform", "DER", "-in"])
            .arg(f.path("sign.crt")),
    );
    use sha2::Digest;
    assert_eq!(
        j["certificateFingerprint"],
        hex::encode(sha2::Sha256::digest(&cert_der))
    );
}

#[test]
fn image_agrees_with_systemd_repart_252_for_the_same_file_system() {
    let Some(repart) = require_tool("systemd-repart", "systemd-repart") else {
        return;
    };
    let f = Fixture::new();
    let Some(recipe) = f.signed_recipe("cmp") else {
        return;
    };
    let m1 = build_ok(&recipe, &f.path("out1"));
    let ours1 = std::fs::read(f.path("out1/cmp.raw")).unwrap();
    let fs_image = f.path("fs.img");
    std::fs::write(&fs_image, partition(&ours1, &m1, "usr")).unwrap();
    let fs_size = partition(&ours1, &m1, "usr").len();

    // systemd-repart over exactly that file system image.
    let defs = f.path("defs");
    std::fs::create_dir(&defs).unwrap();
    std::fs::write(defs.join("10-usr.conf"), format!(
        "[Partition]\nType=usr\nCopyBlocks={}\nVerity=data\nVerityMatchKey=usr\nSizeMinBytes={fs_size}\nSizeMaxBytes={fs_size}\n",
        fs_image.display())).unwrap();
    std::fs::write(
        defs.join("20-usr-verity.conf"),
        "[Partition]\nType=usr-verity\nVerity=hash\nVerityMatchKey=usr\n",
    )
    .unwrap();
    std::fs::write(
        defs.join("30-usr-verity-sig.conf"),
        "[Partition]\nType=usr-verity-sig\nVerity=signature\nVerityMatchKey=usr\n",
    )
    .unwrap();
    let theirs = f.path("repart.raw");
    let o = run_ok(
        Command::new(&repart)
            .arg(format!("--definitions={}", defs.display()))
            .args([
                "--empty=create",
                "--size=auto",
                "--dry-run=no",
                "--json=short",
            ])
            .args(["--seed=0fda5ba1-2a3e-4b3a-9c5a-3e3b8c1d2f10"])
            .arg(format!("--private-key={}", f.path("sign.key").display()))
            .arg(format!("--certificate={}", f.path("sign.crt").display()))
            .arg(&theirs),
    );
    let rj: Value = serde_json::from_slice(&o).unwrap();
    let rparts = rj.as_array().unwrap();
    let their_root = rparts[1]["roothash"].as_str().unwrap().to_owned();
    let their_bytes = std::fs::read(&theirs).unwrap();
    let their_hash_off = rparts[1]["offset"].as_u64().unwrap() as usize;
    let sb =
        imgctl_extensions::Superblock::parse(&their_bytes[their_hash_off..their_hash_off + 512])
            .unwrap();

    // Rebuild ours with repart's (seed-derived) salt and superblock UUID, and its block size:
    // systemd-repart 252 formats verity with 512-byte data and hash blocks.
    assert_eq!((sb.data_block_size, sb.hash_block_size), (512, 512));
    let recipe2 = f.recipe(
        "cmp",
        &format!(
            "signing: {{key: sign.key, certificate: sign.crt}}\nverity: {{salt: \"{}\", uuid: \"{}\", block_size: {}}}\n",
            hex::encode(&sb.salt),
            sb.uuid_string(),
            sb.data_block_size
        ),
    );
    let m2 = build_ok(&recipe2, &f.path("out2"));
    let ours2 = std::fs::read(f.path("out2/cmp.raw")).unwrap();
    assert_eq!(
        partition(&ours2, &m2, "usr"),
        partition(&ours1, &m1, "usr"),
        "same file system image"
    );
    assert_eq!(m2["verity"]["root_hash"], their_root.as_str(), "root hash");

    // Partition types, labels and the UUIDs derived from the root hash agree.
    let ours_parts = m2["partitions"].as_array().unwrap();
    for (i, (want_type, _)) in [("usr-x86-64", 0), ("usr-x86-64-verity", 1)]
        .iter()
        .enumerate()
    {
        assert_eq!(rparts[i]["type"], *want_type);
        assert_eq!(ours_parts[i]["label"], rparts[i]["label"]);
        assert_eq!(
            ours_parts[i]["uuid"], rparts[i]["uuid"],
            "partition {i} UUID"
        );
    }
    assert_eq!(ours_parts[2]["label"], rparts[2]["label"]);
    // The hash partitions hold the same superblock and tree.
    let our_hash = partition(&ours2, &m2, "usr-verity");
    let theirs_hash = &their_bytes[their_hash_off..their_hash_off + our_hash.len()];
    assert!(our_hash == theirs_hash, "hash partition bytes");
    // Signature JSON: same rootHash and certificate fingerprint as repart wrote.
    let sig_off = rparts[2]["offset"].as_u64().unwrap() as usize;
    let their_sig = &their_bytes[sig_off..sig_off + 16384];
    let end = their_sig.iter().position(|&b| b == 0).unwrap();
    let tj: Value = serde_json::from_slice(&their_sig[..end]).unwrap();
    let our_sig = partition(&ours2, &m2, "usr-verity-sig");
    let oend = our_sig.iter().position(|&b| b == 0).unwrap();
    let oj: Value = serde_json::from_slice(&our_sig[..oend]).unwrap();
    assert_eq!(oj["rootHash"], tj["rootHash"]);
    assert_eq!(oj["certificateFingerprint"], tj["certificateFingerprint"]);
    // Both are PKCS#7 with RSA PKCS#1 v1.5 over the same string with the same key, no signed
    // attributes: byte-identical.
    assert_eq!(oj["signature"], tj["signature"]);
    // The image systemd-repart wrote (its signature made by OpenSSL) verifies with ours.
    let (ok, v) = inspect_verify(&theirs, Some(&f.path("sign.crt")));
    assert!(ok, "{v}");
    assert_eq!(v["verify"]["signature"], "valid", "{v}");
}

/// Tree files whose modes already are the image's are staged by hard link instead of a copy
/// (a copy costs an inode and a write of every byte): the image and manifest are the same
/// bytes as when every file is copied (the same tree with modes the build must normalise),
/// two tree files that are hard links of each other stay two files, and the recipe's tree is
/// left as it was (modes, link counts).
#[test]
fn files_staged_by_link_or_by_copy_give_the_same_image() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if require_tool("mkfs.erofs", "erofs-utils").is_none() {
        return;
    }
    let (linked, copied) = (Fixture::new(), Fixture::new());
    for f in [&linked, &copied] {
        std::fs::write(f.path("tree/usr/share/demo/big"), vec![7u8; 300_000]).unwrap();
        std::fs::hard_link(
            f.path("tree/usr/share/demo/big"),
            f.path("tree/usr/share/demo/big2"),
        )
        .unwrap();
        std::fs::write(f.path("tree/usr/bin/tool"), b"#!/bin/sh\n").unwrap();
    }
    let set = |f: &Fixture, p: &str, mode: u32| {
        std::fs::set_permissions(f.path(p), std::fs::Permissions::from_mode(mode)).unwrap();
    };
    // The modes the image gets (0644, executables 0755) for one tree, others for the other.
    for (p, same, other) in [
        ("tree/usr/share/demo/a", 0o644, 0o600),
        ("tree/usr/share/demo/z", 0o644, 0o640),
        ("tree/usr/share/demo/big", 0o644, 0o600),
        ("tree/usr/bin/hello", 0o755, 0o700),
        ("tree/usr/bin/tool", 0o755, 0o750),
    ] {
        set(&linked, p, same);
        set(&copied, p, other);
    }
    let ml = build_ok(&linked.recipe("same", ""), &linked.path("out"));
    let mc = build_ok(&copied.recipe("same", ""), &copied.path("out"));
    assert_eq!(ml, mc);
    assert!(
        std::fs::read(linked.path("out/same.raw")).unwrap()
            == std::fs::read(copied.path("out/same.raw")).unwrap(),
        "linked and copied staging made different images"
    );
    let files = ml["files"].as_array().unwrap();
    for name in ["/usr/share/demo/big", "/usr/share/demo/big2"] {
        let r = files.iter().find(|r| r["path"] == name).unwrap();
        assert_eq!(r["size"], 300_000, "{r}");
    }
    let m = std::fs::metadata(linked.path("tree/usr/share/demo/big")).unwrap();
    assert_eq!((m.mode() & 0o7777, m.nlink()), (0o644, 2));
    let m = std::fs::metadata(copied.path("tree/usr/share/demo/big")).unwrap();
    assert_eq!((m.mode() & 0o7777, m.nlink()), (0o600, 2));
}

#[test]
fn two_builds_with_the_same_epoch_are_byte_identical() {
    if require_tool("mkfs.erofs", "erofs-utils").is_none() {
        return;
    }
    let (a, b) = (Fixture::new(), Fixture::new());
    // Give the second tree a different creation order and mtimes.
    std::fs::remove_file(b.path("tree/usr/share/demo/z")).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(b.path("tree/usr/share/demo/z"), b"zzz\n").unwrap();
    let (ra, rb) = (a.recipe("same", ""), b.recipe("same", ""));
    let ma = build_ok(&ra, &a.path("out"));
    let mb = build_ok(&rb, &b.path("out"));
    assert_eq!(ma, mb);
    assert!(
        std::fs::read(a.path("out/same.raw")).unwrap()
            == std::fs::read(b.path("out/same.raw")).unwrap()
    );
    // The epoch is really used.
    let o = imgctl()
        .args(["ext", "build"])
        .arg(&ra)
        .arg("-o")
        .arg(a.path("out3"))
        .env("SOURCE_DATE_EPOCH", "1")
        .output()
        .unwrap();
    assert!(o.status.success());
    assert_ne!(
        std::fs::read(a.path("out3/same.raw")).unwrap(),
        std::fs::read(a.path("out/same.raw")).unwrap()
    );
}

#[test]
fn fsverity_digests_match_the_fsverity_tool() {
    let Some(fsverity) = require_tool("fsverity", "fsverity") else {
        return;
    };
    let f = Fixture::new();
    let m = build_ok(&f.recipe("fsv", ""), &f.path("out"));
    let files = m["files"].as_array().unwrap();
    for (rel, src) in [
        ("/usr/share/demo/a", "tree/usr/share/demo/a"),
        ("/usr/bin/hello", "tree/usr/bin/hello"),
    ] {
        let rec = files.iter().find(|r| r["path"] == rel).unwrap();
        let out = String::from_utf8(run_ok(
            Command::new(&fsverity).arg("digest").arg(f.path(src)),
        ))
        .unwrap();
        let want = out.split_whitespace().next().unwrap();
        assert_eq!(rec["fsverity"], want, "{rel}");
    }
    let hello = files
        .iter()
        .find(|r| r["path"] == "/usr/bin/hello")
        .unwrap();
    assert_eq!(hello["mode"], "0755");
    let link = files.iter().find(|r| r["path"] == "/usr/bin/hi").unwrap();
    assert_eq!(link["target"], "hello");
}

#[test]
fn confext_and_squashfs_images_verify() {
    let Some(vs) = require_tool("veritysetup", "cryptsetup-bin") else {
        return;
    };
    if require_tool("mksquashfs", "squashfs-tools").is_none() {
        return;
    }
    let f = Fixture::new();
    std::fs::create_dir_all(f.path("etc-tree/etc/demo")).unwrap();
    std::fs::write(f.path("etc-tree/etc/demo/demo.conf"), b"x=1\n").unwrap();
    let r = f.path("c.yaml");
    std::fs::write(
        &r,
        "kind: confext\nname: conf\nversion: \"1\"\ntree: etc-tree\nfilesystem: squashfs\n\
                        release: {ID: debian, CONFEXT_LEVEL: \"1\"}\n",
    )
    .unwrap();
    let m = build_ok(&r, &f.path("out"));
    assert_eq!(m["image"], "conf.confext.raw");
    assert_eq!(m["partitions"][0]["designator"], "root");
    assert_eq!(m["partitions"][1]["designator"], "root-verity");
    assert_eq!(
        m["extension_release"]["path"],
        "/etc/extension-release.d/extension-release.conf"
    );
    let bytes = std::fs::read(f.path("out/conf.confext.raw")).unwrap();
    assert_eq!(&partition(&bytes, &m, "root")[..4], b"hsqs");
    std::fs::write(f.path("d"), partition(&bytes, &m, "root")).unwrap();
    std::fs::write(f.path("h"), partition(&bytes, &m, "root-verity")).unwrap();
    run_ok(
        Command::new(&vs)
            .arg("verify")
            .arg(f.path("d"))
            .arg(f.path("h"))
            .arg(m["verity"]["root_hash"].as_str().unwrap()),
    );
}

/// The build failed, said `needle`, and left neither the output folder nor temporary files.
fn assert_clean_failure(o: &Output, needle: &str, out: &Path) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success(),
        "expected failure mentioning {needle:?}"
    );
    assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
    assert!(!out.exists(), "{} was left behind", out.display());
    let parent = out.parent().unwrap();
    if parent.exists() {
        let left: Vec<_> = std::fs::read_dir(parent)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".imgctl"))
            .collect();
        assert!(left.is_empty(), "temporary files left: {left:?}");
    }
}

#[test]
fn bad_input_fails_clearly_and_leaves_nothing_behind() {
    let f = Fixture::new();
    let out = f.path("o/img");
    std::fs::create_dir_all(f.path("o")).unwrap();

    // A file outside /usr and /opt.
    std::fs::create_dir_all(f.path("tree/etc")).unwrap();
    std::fs::write(f.path("tree/etc/passwd"), b"x").unwrap();
    let o = build(&f.recipe("bad", ""), &out);
    assert_clean_failure(
        &o,
        "etc: not allowed in a sysext: a sysext may only contain /usr and /opt",
        &out,
    );
    std::fs::remove_dir_all(f.path("tree/etc")).unwrap();

    // A name with a slash.
    let o = build(&f.recipe("a/b", ""), &out);
    assert_clean_failure(&o, "contains a slash", &out);
    // E21: errors found checking the recipe (name, release, hierarchy) name the recipe file.
    let recipe = f.path("recipe.yaml");
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        err.contains(&format!("recipe {}: invalid image name", recipe.display())),
        "{err}"
    );
    // E21: `ID: "a b"` is an ID error, not a missing VERSION_ID.
    let r = f.recipe("idspace", "");
    let text = std::fs::read_to_string(&r)
        .unwrap()
        .replace("  ID: _any\n", "  ID: \"a b\"\n");
    std::fs::write(&r, text).unwrap();
    let o = build(&r, &out);
    assert_clean_failure(
        &o,
        &format!("recipe {}: extension-release ID: \"a b\"", recipe.display()),
        &out,
    );
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!err.contains("VERSION_ID"), "{err}");

    // A recipe file whose parent is a symlink in the tree (it would write outside the stage).
    std::os::unix::fs::symlink("/tmp", f.path("tree/usr/share/link")).unwrap();
    let r = f.recipe("link", "");
    let text = std::fs::read_to_string(&r).unwrap().replace(
        "files:\n",
        "files:\n  - {path: /usr/share/link/x, content: boom}\n",
    );
    std::fs::write(&r, text).unwrap();
    let o = build(&r, &out);
    assert_clean_failure(&o, "its parent /usr/share/link is not a folder", &out);
    assert!(!Path::new("/tmp/x").exists() || std::fs::read("/tmp/x").unwrap() != b"boom");
    std::fs::remove_file(f.path("tree/usr/share/link")).unwrap();

    // No mkfs.erofs on PATH.
    let empty = f.path("empty-path");
    std::fs::create_dir(&empty).unwrap();
    let o = imgctl()
        .args(["ext", "build"])
        .arg(f.recipe("nomkfs", ""))
        .arg("-o")
        .arg(&out)
        .env("PATH", &empty)
        .output()
        .unwrap();
    assert_clean_failure(
        &o,
        "mkfs.erofs not found on PATH (install the Debian package erofs-utils)",
        &out,
    );

    // A key that does not belong to the certificate.
    if f.keypair("one").is_none() || f.keypair("two").is_none() {
        return;
    }
    let o = build(
        &f.recipe(
            "mismatch",
            "signing: {key: one.key, certificate: two.crt}\n",
        ),
        &out,
    );
    assert_clean_failure(&o, "does not match certificate", &out);

    // A failure late in the build (mkfs.erofs itself fails) also cleans up.
    let fake = f.path("fake-path");
    std::fs::create_dir(&fake).unwrap();
    std::fs::write(
        fake.join("mkfs.erofs"),
        "#!/bin/sh\necho broken >&2\nexit 3\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        fake.join("mkfs.erofs"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let o = imgctl()
        .args(["ext", "build"])
        .arg(f.recipe("late", ""))
        .arg("-o")
        .arg(&out)
        .env("PATH", &fake)
        .output()
        .unwrap();
    assert_clean_failure(&o, "broken", &out);
}

#[test]
fn stub_sidecar_prediction_streams_the_archive_gnu_cpio_reads() {
    use imgctl_extensions::stub::{archive, Sidecar};
    let Some(cpio) = require_tool("cpio", "cpio") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let files = [
        ("b.raw", vec![1u8; 5]),
        ("a.raw", vec![2u8; 4099]),
        ("c.confext.raw", vec![3u8; 7]),
    ];
    for (n, d) in &files {
        std::fs::write(dir.path().join(n), d).unwrap();
    }
    let j: Value = serde_json::from_slice(&run_ok(
        imgctl()
            .args([
                "ext",
                "predict-pcrs",
                "--stub-semantics",
                "257",
                "--bank",
                "sha256",
                "--json",
            ])
            .args(files.iter().map(|(n, _)| dir.path().join(n))),
    ))
    .unwrap();
    // Sysext archive: a.raw then b.raw (strcmp order), confext excluded since 256.
    let model = archive(
        Sidecar::Sysext,
        &[("a.raw", &files[1].1), ("b.raw", &files[0].1)],
    )
    .unwrap();
    use sha2::Digest;
    let ev = sha2::Sha256::digest(&model);
    assert_eq!(j[0]["pcr"], 13);
    assert_eq!(j[0]["files"], serde_json::json!(["a.raw", "b.raw"]));
    assert_eq!(j[0]["banks"][0]["event_digest"], hex::encode(ev));
    let pcr = sha2::Sha256::new()
        .chain_update([0u8; 32])
        .chain_update(ev)
        .finalize();
    assert_eq!(j[0]["banks"][0]["pcr_value"], hex::encode(pcr));
    assert_eq!(j[1]["pcr"], 12);
    assert_eq!(j[1]["files"], serde_json::json!(["c.confext.raw"]));

    // GNU cpio unpacks the modelled archive to the stub's paths and modes.
    let out = dir.path().join("x");
    std::fs::create_dir(&out).unwrap();
    let mut child = Command::new(&cpio)
        .args(["-i", "-d", "--quiet", "--no-absolute-filenames"])
        .current_dir(&out)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&model).unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(
        std::fs::read(out.join(".extra/sysext/a.raw")).unwrap(),
        files[1].1
    );
    assert_eq!(
        std::fs::read(out.join(".extra/sysext/b.raw")).unwrap(),
        files[0].1
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(out.join(".extra/sysext/a.raw"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o444);

    // systemd 252's stub packs every *.raw, confext included, into PCR 13 only.
    let j: Value = serde_json::from_slice(&run_ok(
        imgctl()
            .args([
                "ext",
                "predict-pcrs",
                "--stub-semantics",
                "systemd-252",
                "--bank",
                "sha256",
                "--json",
            ])
            .args(files.iter().map(|(n, _)| dir.path().join(n))),
    ))
    .unwrap();
    assert_eq!(j.as_array().unwrap().len(), 1);
    assert_eq!(
        j[0]["files"],
        serde_json::json!(["a.raw", "b.raw", "c.confext.raw"])
    );
}

fn inspect_verify(image: &Path, cert: Option<&Path>) -> (bool, Value) {
    let mut c = imgctl();
    c.args(["ext", "inspect", "--verify", "--json"]).arg(image);
    if let Some(cert) = cert {
        c.arg("--certificate").arg(cert);
    }
    let o = c.output().unwrap();
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    if o.status.success() {
        assert_eq!(v["ok"], true, "exit 0 needs ok: true");
    }
    (o.status.success(), v)
}

/// `openssl cms -verify` of an image's signature over its JSON rootHash, or over `content`.
fn openssl_accepts(openssl: &Path, dir: &Path, sig_json: &Value, content: &str, ca: &Path) -> bool {
    use base64::Engine;
    let der = base64::engine::general_purpose::STANDARD
        .decode(sig_json["signature"].as_str().unwrap())
        .unwrap();
    std::fs::write(dir.join("t.sig"), der).unwrap();
    std::fs::write(dir.join("t.content"), content).unwrap();
    Command::new(openssl)
        .args([
            "cms", "-verify", "-binary", "-inform", "DER", "-purpose", "any", "-in",
        ])
        .arg(dir.join("t.sig"))
        .arg("-content")
        .arg(dir.join("t.content"))
        .arg("-CAfile")
        .arg(ca)
        .args(["-out", "/dev/null"])
        .output()
        .unwrap()
        .status
        .success()
}

fn sig_json(image: &[u8], m: &Value) -> Value {
    let sig = partition(image, m, "usr-verity-sig");
    let end = sig.iter().position(|&b| b == 0).unwrap();
    serde_json::from_slice(&sig[..end]).unwrap()
}

#[test]
fn inspect_verify_fails_closed_on_transplants_flips_strangers_and_missing_verity() {
    let Some(openssl) = require_tool("openssl", "openssl") else {
        return;
    };
    let f = Fixture::new();
    // One data block: a tree of a single leaf.
    std::fs::remove_dir_all(f.path("tree")).unwrap();
    std::fs::create_dir_all(f.path("tree/usr/bin")).unwrap();
    std::fs::write(f.path("tree/usr/bin/hello"), b"hi\n").unwrap();
    let Some(r) = f.signed_recipe("a") else {
        return;
    };
    let ma = build_ok(&r, &f.path("a"));
    let img_a = f.path("a/a.raw");
    let (ok, v) = inspect_verify(&img_a, Some(&f.path("sign.crt")));
    assert!(ok, "{v}");
    assert_eq!(v["verify"]["signature"], "valid");
    assert_eq!(v["verify"]["signer_trusted"], true);
    let (ok, v) = inspect_verify(&img_a, None);
    assert!(ok, "{v}");
    assert_eq!(
        v["verify"]["signer_trusted"], false,
        "no trust anchor given"
    );

    // A second signed image with other content.
    std::fs::write(f.path("tree/usr/bin/hello"), b"other\n").unwrap();
    let mb = build_ok(&r, &f.path("b"));
    let bytes_a = std::fs::read(&img_a).unwrap();
    let bytes_b = std::fs::read(f.path("b/a.raw")).unwrap();
    let off = |m: &Value, d: &str| {
        m["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["designator"] == d)
            .unwrap()["offset"]
            .as_u64()
            .unwrap() as usize
    };

    // 1. B's signature (and its JSON) transplanted into A: openssl rejects it over A's root hash,
    // and so do we, in every mode.
    let mut t = bytes_a.clone();
    let sb = partition(&bytes_b, &mb, "usr-verity-sig");
    let so = off(&ma, "usr-verity-sig");
    t[so..so + sb.len()].copy_from_slice(sb);
    let tp = f.path("transplant.raw");
    std::fs::write(&tp, &t).unwrap();
    let root_a = ma["verity"]["root_hash"].as_str().unwrap();
    let jb = sig_json(&bytes_b, &mb);
    assert!(!openssl_accepts(
        &openssl,
        &f.path(""),
        &jb,
        root_a,
        &f.path("sign.crt")
    ));
    assert!(!inspect_verify(&tp, None).0);
    assert!(!inspect_verify(&tp, Some(&f.path("sign.crt"))).0);
    // Only the signature moved (A's rootHash kept): still rejected.
    let ja = sig_json(&bytes_a, &ma);
    let mut forged = ja.clone();
    forged["signature"] = jb["signature"].clone();
    let mut body = serde_json::to_vec(&forged).unwrap();
    body.resize(4096, 0);
    let mut t2 = bytes_a.clone();
    t2[so..so + 4096].copy_from_slice(&body);
    std::fs::write(&tp, &t2).unwrap();
    assert!(!openssl_accepts(
        &openssl,
        &f.path(""),
        &forged,
        root_a,
        &f.path("sign.crt")
    ));
    let (ok, v) = inspect_verify(&tp, None);
    assert!(
        !ok && v["ok"] == false && v["verify"]["signature"] == "invalid",
        "{v}"
    );
    // openssl accepts our own signature, as a control.
    assert!(openssl_accepts(
        &openssl,
        &f.path(""),
        &ja,
        root_a,
        &f.path("sign.crt")
    ));

    // 2. One byte flipped in the one-block data partition.
    let mut t3 = bytes_a.clone();
    t3[off(&ma, "usr") + 100] ^= 1;
    std::fs::write(&tp, &t3).unwrap();
    let (ok, v) = inspect_verify(&tp, None);
    assert!(!ok && v["ok"] == false, "{v}");

    // 3. A certificate that is not the signer.
    f.keypair("stranger").unwrap();
    let (ok, v) = inspect_verify(&img_a, Some(&f.path("stranger.crt")));
    assert!(!ok, "{v}");
    assert!(
        v["verify"]["failures"].to_string().contains("not any of"),
        "{v}"
    );

    // 4. Two usr partitions and no verity, written with our GPT writer.
    use imgctl_extensions::gpt::{DiskLayout, NewPartition};
    let usr_type: imgctl_extensions::Guid = ma["partitions"][0]["type_uuid"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let p = |n: u8| NewPartition {
        type_guid: usr_type,
        unique_guid: imgctl_extensions::Guid([n; 16]),
        name: "usr-x86-64".into(),
        attributes: 0,
        size: 4096,
    };
    let layout = DiskLayout::plan(imgctl_extensions::Guid([9; 16]), &[p(1), p(2)]).unwrap();
    let mut t4 = vec![0u8; layout.size as usize];
    let primary = layout.primary();
    t4[..primary.len()].copy_from_slice(&primary);
    let backup = layout.backup();
    let bo = layout.backup_offset() as usize;
    t4[bo..bo + backup.len()].copy_from_slice(&backup);
    std::fs::write(&tp, &t4).unwrap();
    let o = imgctl()
        .args(["ext", "inspect", "--verify", "--json"])
        .arg(&tp)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ok"], false, "{v}");
    assert!(!v["verify"].is_null(), "{v}");
    let all = v.to_string();
    assert!(
        all.contains("no verity partition") && all.contains("2 root/usr partitions"),
        "{v}"
    );
}

#[test]
fn ext_verity_refuses_its_own_input_special_files_and_short_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let content = vec![7u8; 8192];
    std::fs::write(&data, &content).unwrap();
    let run = |d: &Path, h: &Path| {
        imgctl()
            .args(["ext", "verity", "--salt", "00", "--uuid"])
            .arg("11111111-2222-3333-4444-555555555555")
            .arg(d)
            .arg(h)
            .output()
            .unwrap()
    };
    // HASH is DATA, under its own name and through a hard link.
    let o = run(&data, &data);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("also an input"),
        "{o:?}"
    );
    std::fs::hard_link(&data, dir.path().join("alias")).unwrap();
    assert!(!run(&data, &dir.path().join("alias")).status.success());
    assert_eq!(std::fs::read(&data).unwrap(), content, "data untouched");
    // Special files.
    assert!(!run(Path::new("/dev/zero"), &dir.path().join("h"))
        .status
        .success());
    assert!(!run(&data, Path::new("/dev/null")).status.success());
    // 12 bytes: says so.
    let small = dir.path().join("small");
    std::fs::write(&small, b"twelve bytes").unwrap();
    let o = run(&small, &dir.path().join("h"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("12 bytes is less than one 4096-byte"),
        "{err}"
    );
    assert!(!dir.path().join("h").exists());
    // And the normal case writes the hash file, with no temporaries left.
    assert!(run(&data, &dir.path().join("h")).status.success());
    assert!(dir.path().join("h").exists());
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with('.')
        })
        .collect();
    assert!(left.is_empty());
}

#[test]
fn ext_build_refuses_endless_sources_and_reclaims_killed_staging() {
    if require_tool("mkfs.erofs", "erofs-utils").is_none() {
        return;
    }
    let f = Fixture::new();
    std::fs::create_dir_all(f.path("o")).unwrap();
    let out = f.path("o/img");
    // A staging folder of a killed run (PID that does not run).
    let stale = f.path("o/.imgctl-ext.imgctl-tmp-2147483632");
    std::fs::create_dir_all(stale.join("root")).unwrap();
    std::fs::write(stale.join("fs.img"), vec![0u8; 4096]).unwrap();
    for src in ["/dev/zero", "fifo"] {
        if src == "fifo" {
            assert!(Command::new("mkfifo")
                .arg(f.path("fifo"))
                .status()
                .unwrap()
                .success());
        }
        let r = f.recipe("endless", "");
        let text = std::fs::read_to_string(&r).unwrap().replace(
            "files:\n",
            &format!("files:\n  - {{path: /usr/share/big, source: {src}}}\n"),
        );
        std::fs::write(&r, text).unwrap();
        let o = build(&r, &out);
        assert_clean_failure(&o, "not a regular file", &out);
    }
    assert!(
        !stale.exists(),
        "the killed run's staging folder was reclaimed"
    );
}

/// Signatures that openssl made (not our signer) over the root hash, as other tools write them
/// (`openssl cms -sign` with its default signed attributes, without them, SHA-384, and an ECDSA
/// P-256 key), verify with `ext inspect --verify`; one over other content does not.
#[test]
fn root_hash_signatures_made_by_openssl_verify_with_ext_inspect() {
    use base64::Engine;
    let Some(openssl) = require_tool("openssl", "openssl") else {
        return;
    };
    let f = Fixture::new();
    let Some(r) = f.signed_recipe("o") else {
        return;
    };
    let m = build_ok(&r, &f.path("out"));
    let bytes = std::fs::read(f.path("out/o.raw")).unwrap();
    let root = m["verity"]["root_hash"].as_str().unwrap().to_owned();
    let sig_part = m["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["designator"] == "usr-verity-sig")
        .unwrap()
        .clone();
    let (off, size) = (
        sig_part["offset"].as_u64().unwrap() as usize,
        sig_part["size"].as_u64().unwrap() as usize,
    );
    // An EC P-256 key and certificate besides the RSA pair.
    run_ok(
        Command::new(&openssl)
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args(["-nodes", "-days", "2", "-subj", "/CN=imgctl-ec", "-keyout"])
            .arg(f.path("ec.key"))
            .arg("-out")
            .arg(f.path("ec.crt")),
    );
    let fingerprint = |crt: &str| {
        let pem = std::fs::read_to_string(f.path(crt)).unwrap();
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&der))
    };
    std::fs::write(f.path("root.txt"), &root).unwrap();
    std::fs::write(f.path("other.txt"), "00".repeat(32)).unwrap();
    // (content signed, key, certificate, extra openssl flags, accepted?)
    let cases: [(&str, &str, &str, &[&str], bool); 6] = [
        ("root.txt", "sign.key", "sign.crt", &[], true),
        ("root.txt", "sign.key", "sign.crt", &["-nocerts"], true),
        ("root.txt", "sign.key", "sign.crt", &["-noattr"], true),
        ("root.txt", "sign.key", "sign.crt", &["-md", "sha384"], true),
        ("root.txt", "ec.key", "ec.crt", &[], true),
        ("other.txt", "sign.key", "sign.crt", &[], false),
    ];
    for (content, key, crt, flags, want) in cases {
        let der = run_ok(
            Command::new(&openssl)
                .args(["cms", "-sign", "-binary", "-outform", "DER", "-in"])
                .arg(f.path(content))
                .arg("-signer")
                .arg(f.path(crt))
                .arg("-inkey")
                .arg(f.path(key))
                .args(flags),
        );
        let json = serde_json::json!({
            "rootHash": root,
            "certificateFingerprint": fingerprint(crt),
            "signature": base64::engine::general_purpose::STANDARD.encode(&der),
        });
        let mut body = serde_json::to_vec(&json).unwrap();
        assert!(body.len() < size);
        body.resize(size, 0);
        let mut img = bytes.clone();
        img[off..off + size].copy_from_slice(&body);
        let p = f.path("openssl.raw");
        std::fs::write(&p, &img).unwrap();
        let (ok, v) = inspect_verify(&p, Some(&f.path(crt)));
        assert_eq!(ok, want, "{content} {key} {flags:?}: {v}");
        if want {
            assert_eq!(v["verify"]["signature"], "valid", "{v}");
            assert_eq!(v["verify"]["signer_trusted"], true, "{v}");
            // The other certificate is not the signer.
            let stranger = if crt == "ec.crt" {
                "sign.crt"
            } else {
                "ec.crt"
            };
            assert!(!inspect_verify(&p, Some(&f.path(stranger))).0, "{v}");
        } else {
            assert_eq!(v["verify"]["signature"], "invalid", "{v}");
        }
    }
}

/// `ext build --log`: the image's artifact record (its sha256 as sha256sum computes it, the
/// root hash, the partition UUIDs, the signing certificate's fingerprint as openssl computes
/// it) is appended as a v2 entry and its proof, written beside the image, verifies; a wrong
/// log key fails before anything is built.
#[test]
fn ext_build_logs_the_image_record_and_writes_its_proof() {
    if require_tool("mkfs.erofs", "erofs-utils").is_none() {
        return;
    }
    let f = Fixture::new();
    let Some(recipe) = f.signed_recipe("logged") else {
        return;
    };
    let (log, key) = (f.path("log"), f.path("log.key"));
    run_ok(
        imgctl()
            .args(["log", "init"])
            .arg(&log)
            .arg("--key")
            .arg(&key)
            .args(["--origin", "example.org/ext-test"]),
    );
    // A wrong key: refused, nothing built.
    run_ok(
        imgctl()
            .args(["log", "init"])
            .arg(f.path("other"))
            .arg("--key")
            .arg(f.path("other.key"))
            .args(["--origin", "example.org/other"]),
    );
    let out = f.path("out");
    let o = imgctl()
        .args(["ext", "build"])
        .arg(&recipe)
        .arg("-o")
        .arg(&out)
        .arg("--log")
        .arg(&log)
        .arg("--log-key")
        .arg(f.path("other.key"))
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(!out.join("logged.raw").exists());
    run_ok(
        imgctl()
            .args(["ext", "build"])
            .arg(&recipe)
            .arg("-o")
            .arg(&out)
            .arg("--log")
            .arg(&log)
            .arg("--log-key")
            .arg(&key)
            .env("SOURCE_DATE_EPOCH", EPOCH),
    );
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    let proof = out.join("logged.raw.tlog-proof");
    let vkey = format!("@{}", f.path("log.vkey").display());
    let said = String::from_utf8(run_ok(
        imgctl()
            .args(["log", "verify", "--vkey", &vkey, "--proof"])
            .arg(&proof),
    ))
    .unwrap();
    assert!(said.contains("entry is in the log"), "{said}");
    let shown: Value = serde_json::from_slice(&run_ok(
        imgctl()
            .args(["log", "show", "--json", "--index", "0"])
            .arg(&log),
    ))
    .unwrap();
    let r = &shown["entries"][0]["entry"];
    assert_eq!(r["format"], "imgctl-record/2", "{shown}");
    assert_eq!(r["kind"], "sysext");
    assert_eq!(r["extension"]["root_hash"], manifest["verity"]["root_hash"]);
    let sha = String::from_utf8(run_ok(
        Command::new("sha256sum").arg(out.join("logged.raw")),
    ))
    .unwrap();
    assert_eq!(
        r["files"][0]["digests"]["sha256"].as_str().unwrap(),
        sha.split_whitespace().next().unwrap()
    );
    let uuids: Vec<&Value> = r["extension"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["uuid"])
        .collect();
    let want: Vec<&Value> = manifest["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["uuid"])
        .collect();
    assert_eq!(uuids, want);
    let fp = String::from_utf8(run_ok(
        Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
            .arg(f.path("sign.crt")),
    ))
    .unwrap();
    let fp = fp
        .trim()
        .rsplit('=')
        .next()
        .unwrap()
        .replace(':', "")
        .to_lowercase();
    assert_eq!(r["extension"]["signature_certificate_sha256"], fp.as_str());
    // The signers systemd main's `verity` NvPCR record names for this signature: the DER of
    // the signer certificate's serial INTEGER (hex) and issuer Name (base64), here cut out of
    // the certificate at the offsets `openssl asn1parse` gives.
    assert_eq!(
        r["extension"]["verity_signers"],
        openssl_verity_signer(&f.path("sign.crt")).as_str(),
        "{r}"
    );
}

/// `<serial DER hex>/<issuer DER base64>` of a PEM certificate, by `openssl asn1parse`: the
/// tbsCertificate's elements at depth 2 are [0] version, serial, signature algorithm, issuer.
fn openssl_verity_signer(cert: &Path) -> String {
    use base64::Engine;
    let der = run_ok(
        Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(cert),
    );
    let parsed = String::from_utf8(run_ok(
        Command::new("openssl").args(["asn1parse", "-in"]).arg(cert),
    ))
    .unwrap();
    // "    4:d=1  hl=4 l= 653 cons: SEQUENCE"
    let depth2: Vec<(usize, usize)> = parsed
        .lines()
        .filter(|l| l.contains(":d=2 "))
        .map(|l| {
            let off: usize = l.split(':').next().unwrap().trim().parse().unwrap();
            // `hl=N` (header length) and then `l=N` (content length), as asn1parse prints them.
            let field = |key: &str, nth: usize| -> usize {
                l.split(key)
                    .nth(nth)
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("no {key} in {l:?}"))
            };
            (off, off + field("hl=", 1) + field("l=", 2))
        })
        .collect();
    assert!(
        parsed
            .lines()
            .find(|l| l.contains(":d=2 "))
            .unwrap()
            .contains("cont [ 0 ]"),
        "{parsed}"
    );
    let (serial, issuer) = (depth2[1], depth2[3]);
    format!(
        "{}/{}",
        hex::encode(&der[serial.0..serial.1]),
        base64::engine::general_purpose::STANDARD.encode(&der[issuer.0..issuer.1])
    )
}
