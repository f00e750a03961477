//! `imgctl build` and `imgctl inspect`: reproducible output, sections holding exactly the
//! recipe's bytes (read back by goblin, objdump and sbverify), a cpio that GNU cpio reads, and
//! clear failures that leave nothing behind.

#![allow(clippy::unwrap_used)] // reason: test code; a panic is a test failure

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{imgctl, require_tool, run_ok};

const STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    /// A recipe folder with a fake kernel, an initrd tree and a recipe using the real stub.
    fn new(extra: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::write(p.join("vmlinuz"), common::fake_kernel(100_000)).unwrap();
        std::fs::create_dir_all(p.join("tree/etc")).unwrap();
        std::fs::write(p.join("tree/init"), b"#!/bin/sh\necho hello\n").unwrap();
        std::fs::write(p.join("tree/etc/motd"), b"motd\n").unwrap();
        std::os::unix::fs::symlink("init", p.join("tree/linuxrc")).unwrap();
        std::fs::write(p.join("extra.bin"), b"extra").unwrap();
        std::fs::write(
            p.join("recipe.yaml"),
            format!(
                "name: t\nversion: 2\nos-release:\n  ID: t\n  VERSION_ID: 2\nkernel: vmlinuz\n\
                 initrd:\n  tree: tree\n  files:\n    - {{ src: extra.bin, dst: /usr/extra.bin, mode: \"0600\" }}\n\
                 cmdline: console=ttyS0 quiet\nuname: 6.1.0-test\n{extra}"
            ),
        )
        .unwrap();
        Fixture { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn build(&self, out: &Path) -> Output {
        imgctl()
            .arg("build")
            .arg(self.path("recipe.yaml"))
            .arg("-o")
            .arg(out)
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .output()
            .unwrap()
    }
}

fn section<'a>(pe: &goblin::pe::PE<'_>, data: &'a [u8], name: &str) -> &'a [u8] {
    let s = pe
        .sections
        .iter()
        .find(|s| s.name().ok() == Some(name))
        .unwrap_or_else(|| panic!("no {name} section"));
    &data[s.pointer_to_raw_data as usize..][..s.virtual_size as usize]
}

#[test]
fn build_is_reproducible_and_sections_hold_the_recipe_bytes() {
    if require_tool(STUB, "systemd-boot-efi").is_none() {
        return;
    }
    let f = Fixture::new("");
    let (a, b) = (f.path("out-a"), f.path("out-b"));
    for out in [&a, &b] {
        let o = f.build(out);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    for file in ["t.efi", "t.initrd", "pcrs.json", "manifest.json"] {
        assert_eq!(
            std::fs::read(a.join(file)).unwrap(),
            std::fs::read(b.join(file)).unwrap(),
            "{file} differs between builds"
        );
    }

    let data = std::fs::read(a.join("t.efi")).unwrap();
    let pe = goblin::pe::PE::parse(&data).expect("goblin reads the UKI");
    assert_eq!(
        section(&pe, &data, ".linux"),
        std::fs::read(f.path("vmlinuz")).unwrap()
    );
    assert_eq!(section(&pe, &data, ".cmdline"), b"console=ttyS0 quiet");
    assert_eq!(section(&pe, &data, ".uname"), b"6.1.0-test");
    assert_eq!(section(&pe, &data, ".osrel"), b"ID=t\nVERSION_ID=2\n");
    assert_eq!(
        section(&pe, &data, ".initrd"),
        std::fs::read(a.join("t.initrd")).unwrap()
    );
    let sbat = String::from_utf8(section(&pe, &data, ".sbat").to_vec()).unwrap();
    assert!(sbat.starts_with("sbat,1,SBAT Version,"), "{sbat}");
    assert!(sbat.contains("\nuki,1,UKI,"), "{sbat}");
    assert_eq!(
        data.len() % 8,
        0,
        "size must be 8-aligned for sbsign/Authenticode"
    );

    // objdump reads the same sections with the same sizes.
    if let Some(objdump) = require_tool("objdump", "binutils") {
        let out = String::from_utf8(run_ok(Command::new(objdump).arg("-h").arg(a.join("t.efi"))))
            .unwrap();
        for s in &pe.sections {
            let name = s.name().unwrap();
            let line = out
                .lines()
                .find(|l| l.split_whitespace().nth(1) == Some(name))
                .unwrap_or_else(|| panic!("objdump does not list {name}:\n{out}"));
            let size = u64::from_str_radix(line.split_whitespace().nth(2).unwrap(), 16).unwrap();
            assert_eq!(size, s.virtual_size as u64, "{name}");
        }
    }
    // sbsigntool parses it as a PE (no signature yet).
    if let Some(sbverify) = require_tool("sbverify", "sbsigntool") {
        let o = Command::new(sbverify)
            .arg("--list")
            .arg(a.join("t.efi"))
            .output()
            .unwrap();
        let text =
            String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
        assert!(
            o.status.success() && text.contains("No signature table present"),
            "{text}"
        );
    }
}

#[test]
fn initrd_is_a_cpio_that_gnu_cpio_reads_with_fixed_owner_and_time() {
    let Some(cpio) = require_tool("cpio", "cpio") else {
        return;
    };
    if require_tool(STUB, "systemd-boot-efi").is_none() {
        return;
    }
    let f = Fixture::new("");
    let out = f.path("out");
    assert!(f.build(&out).status.success());
    let listing = run_ok(
        Command::new(&cpio)
            .args(["-itv", "--quiet", "-F"])
            .arg(out.join("t.initrd"))
            .env("TZ", "UTC"),
    );
    let listing = String::from_utf8(listing).unwrap();
    let names = run_ok(
        Command::new(&cpio)
            .args(["-it", "--quiet", "-F"])
            .arg(out.join("t.initrd")),
    );
    let names = String::from_utf8(names).unwrap();
    assert_eq!(
        names.lines().collect::<Vec<_>>(),
        ["etc", "etc/motd", "init", "linuxrc", "usr", "usr/extra.bin"]
    );
    for line in listing.lines() {
        assert!(line.contains(" root "), "owner must be root: {line}");
        assert!(
            line.contains("Nov 14  2023"),
            "mtime must be SOURCE_DATE_EPOCH: {line}"
        );
    }
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("-rw-------") && l.ends_with("usr/extra.bin")),
        "{listing}"
    );
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("lrwxrwxrwx") && l.ends_with("linuxrc -> init")),
        "{listing}"
    );
}

/// G26: the same tree checked out under umask 022 and under umask 002 (0775 folders, 0664
/// files) gives the same initrd, the same UKI and the same PCR 11: modes are normalised (folders
/// and executables 0755, other files 0644, symlinks 0777) unless the recipe sets one.
#[test]
fn initrd_modes_do_not_depend_on_the_umask() {
    let Some(cpio) = require_tool("cpio", "cpio") else {
        return;
    };
    if require_tool(STUB, "systemd-boot-efi").is_none() {
        return;
    }
    let top = tempfile::tempdir().unwrap();
    let mut outs = Vec::new();
    for umask in ["022", "002", "077"] {
        let dir = top.path().join(format!("umask-{umask}"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("vmlinuz"), common::fake_kernel(4096)).unwrap();
        // A checkout as git makes it: the umask decides the folder and file modes.
        run_ok(
            Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "umask {umask} && mkdir -p tree/etc tree/bin && \
                     printf '#!/bin/sh\\n' > tree/init && chmod +x tree/init && \
                     printf 'motd\\n' > tree/etc/motd && \
                     printf 'secret\\n' > tree/etc/secret && chmod go-rwx tree/etc/secret && \
                     printf 'tool\\n' > tree/bin/tool && chmod u+x tree/bin/tool && \
                     ln -s init tree/linuxrc && \
                     printf 'run\\n' > run.sh && chmod +x run.sh && printf 'x' > extra.bin"
                ))
                .current_dir(&dir),
        );
        std::fs::write(
            dir.join("recipe.yaml"),
            "name: t\nversion: 1\nos-release:\n  ID: t\nkernel: vmlinuz\nuname: 6.1.0-test\n\
             initrd:\n  tree: tree\n  files:\n    - { src: run.sh, dst: /usr/run.sh }\n    \
             - { src: extra.bin, dst: /usr/extra.bin, mode: \"0600\" }\n",
        )
        .unwrap();
        let out = dir.join("out");
        let o = imgctl()
            .arg("build")
            .arg(dir.join("recipe.yaml"))
            .arg("-o")
            .arg(&out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        outs.push(out);
    }
    for file in ["t.initrd", "t.efi", "pcrs.json"] {
        for other in &outs[1..] {
            assert!(
                std::fs::read(outs[0].join(file)).unwrap()
                    == std::fs::read(other.join(file)).unwrap(),
                "{file} depends on the umask ({})",
                other.display()
            );
        }
    }
    // GNU cpio reads the modes we say.
    let listing = run_ok(
        Command::new(&cpio)
            .args(["-itv", "--quiet", "-F"])
            .arg(outs[1].join("t.initrd")),
    );
    let modes: Vec<(String, String)> = String::from_utf8(listing)
        .unwrap()
        .lines()
        .map(|l| {
            let mode = l.split_whitespace().next().unwrap().to_owned();
            let name = l.split_whitespace().nth(8).unwrap().to_owned();
            (name, mode)
        })
        .collect();
    let want = [
        ("bin", "drwxr-xr-x"),
        ("bin/tool", "-rwxr-xr-x"),
        ("etc", "drwxr-xr-x"),
        ("etc/motd", "-rw-r--r--"),
        ("etc/secret", "-rw-r--r--"),
        ("init", "-rwxr-xr-x"),
        ("linuxrc", "lrwxrwxrwx"),
        ("usr", "drwxr-xr-x"),
        ("usr/extra.bin", "-rw-------"),
        ("usr/run.sh", "-rwxr-xr-x"),
    ];
    let got: Vec<(&str, &str)> = modes
        .iter()
        .map(|(n, m)| (n.as_str(), m.as_str()))
        .collect();
    assert_eq!(got, want);
}

/// The build digests its outputs while it streams them to disk (D16): every digest in the
/// manifest is that of the bytes written, as coreutils' sha*sum sees the files, goblin the
/// sections (their VirtualSize bytes, what the stub measures) and the Authenticode hasher the
/// image.
#[test]
fn manifest_digests_are_those_of_the_written_files() {
    if require_tool(STUB, "systemd-boot-efi").is_none() {
        return;
    }
    let f = Fixture::new("");
    let out = f.path("out");
    let o = f.build(&out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    let sum = |tool: &str, file: &Path| -> String {
        let o = run_ok(Command::new(tool).arg(file));
        String::from_utf8(o).unwrap()[..]
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned()
    };
    for (bank, tool) in [
        ("sha1", "sha1sum"),
        ("sha256", "sha256sum"),
        ("sha384", "sha384sum"),
        ("sha512", "sha512sum"),
    ] {
        assert_eq!(
            manifest["uki"]["digests"][bank],
            sum(tool, &out.join("t.efi")),
            "{bank}"
        );
        let initrd = manifest["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["role"] == "initrd")
            .unwrap();
        assert_eq!(
            initrd["digests"][bank],
            sum(tool, &out.join("t.initrd")),
            "{bank}"
        );
    }
    let data = std::fs::read(out.join("t.efi")).unwrap();
    assert_eq!(manifest["uki"]["size"], data.len() as u64);
    let pe = goblin::pe::PE::parse(&data).unwrap();
    let records = manifest["uki"]["sections"].as_array().unwrap();
    assert_eq!(records.len(), pe.sections.len());
    for (s, r) in pe.sections.iter().zip(records) {
        let name = s.name().unwrap();
        assert_eq!(r["name"], name);
        assert_eq!(r["offset"], s.pointer_to_raw_data as u64, "{name}");
        let mut image =
            data[s.pointer_to_raw_data as usize..][..s.size_of_raw_data as usize].to_vec();
        image.resize(s.virtual_size as usize, 0);
        assert_eq!(r["digests"]["sha256"], hex(&sha2_256(&image)), "{name}");
    }
    let ours = imgctl_measure::authenticode::authenticode_digests(
        &imgctl_measure::PeFile::parse(&data).unwrap(),
        &[imgctl_measure::HashAlg::SHA256],
    )
    .unwrap();
    assert_eq!(manifest["uki"]["authenticode"]["sha256"], ours[0].to_hex());
}

fn sha2_256(data: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(data).to_vec()
}

fn assert_clean_failure(o: &Output, needle: &str, out: &Path) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        o.status.code(),
        Some(1),
        "expected exit 1, got {:?}: {err}",
        o.status
    );
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        err.trim().lines().count(),
        1,
        "one-line error expected: {err}"
    );
    assert!(err.contains(needle), "error should name {needle:?}: {err}");
    if out.exists() {
        let left: Vec<_> = std::fs::read_dir(out).unwrap().collect();
        assert!(left.is_empty(), "output left behind: {left:?}");
    }
}

#[test]
fn bad_input_fails_cleanly_and_leaves_nothing_behind() {
    if require_tool(STUB, "systemd-boot-efi").is_none() {
        return;
    }
    // A stub that is not a PE file.
    let f = Fixture::new("stub: not-a-pe.efi\n");
    std::fs::write(f.path("not-a-pe.efi"), b"\x7fELF not a PE").unwrap();
    let out = f.path("out");
    assert_clean_failure(&f.build(&out), "not-a-pe.efi", &out);

    // A truncated stub.
    let f = Fixture::new("stub: short.efi\n");
    let stub = std::fs::read(STUB).unwrap();
    std::fs::write(f.path("short.efi"), &stub[..300]).unwrap();
    assert_clean_failure(&f.build(&out), "short.efi", &out);

    // A PE that is not an EFI application: the real stub with subsystem set to console (3).
    let f = Fixture::new("stub: console.exe\n");
    let mut pe = stub.clone();
    let lfanew = u32::from_le_bytes(pe[0x3c..0x40].try_into().unwrap()) as usize;
    let subsystem = lfanew + 4 + 20 + 68;
    pe[subsystem..subsystem + 2].copy_from_slice(&3u16.to_le_bytes());
    std::fs::write(f.path("console.exe"), &pe).unwrap();
    assert_clean_failure(&f.build(&out), "not an EFI application", &out);

    // A recipe with an unknown key: file, line and key named.
    let f = Fixture::new("kernal: vmlinuz\n");
    let o = f.build(&out);
    assert_clean_failure(&o, "kernal", &out);
    assert!(String::from_utf8_lossy(&o.stderr).contains("recipe.yaml:"));

    // A missing file.
    let f = Fixture::new("splash: missing.bmp\n");
    assert_clean_failure(&f.build(&out), "missing.bmp", &out);

    // An output folder that cannot be created (a regular file is in the way).
    let f = Fixture::new("");
    std::fs::write(f.path("blocker"), b"").unwrap();
    let o = f.build(&f.path("blocker/out"));
    assert_clean_failure(&o, "blocker/out", &f.path("blocker/out"));
}

/// Like [`assert_clean_failure`], and the error also says `why`.
fn assert_refused(o: &Output, file: &str, why: &str, out: &Path) {
    assert_clean_failure(o, file, out);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(why), "error should say {why:?}: {err}");
}

/// DEFECT 24 (review of 2026-12-01): what is not a kernel, not an x86-64 UKI stub or not a public
/// key is refused, naming the file and what it is, instead of building a UKI without `.linux`,
/// on systemd-boot, on an arm64 stub or on a finished UKI, or embedding a private key.
#[test]
fn build_refuses_what_is_not_a_kernel_a_stub_or_a_public_key() {
    if require_tool(STUB, "systemd-boot-efi").is_none() {
        return;
    }
    let stub = std::fs::read(STUB).unwrap();
    // Kernels: empty, random bytes, an arm64 Image, a finished UKI.
    let mut arm64 = vec![0u8; 4096];
    arm64[0x38..0x3c].copy_from_slice(b"ARM\x64");
    let f = Fixture::new("");
    let out = f.path("out");
    assert!(f.build(&f.path("built")).status.success());
    let uki = std::fs::read(f.path("built/t.efi")).unwrap();
    let random: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for (bytes, why) in [
        (&[][..], "is empty"),
        (&random[..], "not an x86 Linux kernel"),
        (&arm64[..], "arm64 kernel"),
        (&uki[..], "already a UKI"),
    ] {
        std::fs::write(f.path("vmlinuz"), bytes).unwrap();
        assert_refused(&f.build(&out), "vmlinuz", why, &out);
    }

    // Stubs: systemd-boot, an arm64 stub, systemd's addon stub, a finished UKI.
    let mut stubs: Vec<(String, Vec<u8>, &str)> = vec![(
        "uki.efi".into(),
        uki.clone(),
        "already a UKI (it has .osrel, .cmdline",
    )];
    let boot = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";
    if let Some(p) = require_tool(boot, "systemd-boot-efi") {
        stubs.push((
            "systemd-bootx64.efi".into(),
            std::fs::read(p).unwrap(),
            "is systemd-boot",
        ));
    }
    let chroot_efi = common::repo_root().join(".cache/trixie-257/usr/lib/systemd/boot/efi");
    match std::fs::read(chroot_efi.join("linuxaa64.efi.stub")) {
        Ok(b) => stubs.push(("linuxaa64.efi.stub".into(), b, "arm64 EFI image")),
        Err(_) => {
            // The x86-64 stub with its COFF Machine set to arm64 (0xaa64).
            let lfanew = u32::from_le_bytes(stub[0x3c..0x40].try_into().unwrap()) as usize;
            let mut b = stub.clone();
            b[lfanew + 4..lfanew + 6].copy_from_slice(&0xaa64u16.to_le_bytes());
            stubs.push(("arm64.efi.stub".into(), b, "arm64 EFI image"));
        }
    }
    if let Ok(b) = std::fs::read(chroot_efi.join("addonx64.efi.stub")) {
        stubs.push(("addonx64.efi.stub".into(), b, "is systemd-addon"));
    }
    std::fs::write(f.path("vmlinuz"), common::fake_kernel(100_000)).unwrap();
    for (name, bytes, why) in &stubs {
        let g = Fixture::new(&format!("stub: {name}\n"));
        std::fs::write(g.path(name), bytes).unwrap();
        assert_refused(&g.build(&out), name, why, &out);
    }

    // .pcrpkey: a private key, and something that is no key at all.
    let (key, _) = common::genkey(f.dir.path(), "k", common::EC);
    for (file, why) in [
        (key.clone(), "is a private key"),
        (f.path("extra.bin"), "not a PEM public key"),
    ] {
        let g = Fixture::new(&format!("pcrpkey: {}\n", file.display()));
        assert_refused(
            &g.build(&out),
            &file.file_name().unwrap().to_string_lossy(),
            why,
            &out,
        );
    }

    // Initrd destinations that clash with the tree: a file it has, under a file, under a symlink.
    for (dst, why) in [
        ("/etc/motd", "also in the initrd tree"),
        ("/init/x", "lies under /init"),
        ("/linuxrc/x", "lies under /linuxrc"),
        (
            "/usr/extra.bin/x",
            "lies under /usr/extra.bin, which is a file",
        ),
        ("/usr/extra.bin", "given twice"),
    ] {
        let g = Fixture::new("");
        let text = std::fs::read_to_string(g.path("recipe.yaml"))
            .unwrap()
            .replace(
                "mode: \"0600\" }\n",
                &format!("mode: \"0600\" }}\n    - {{ src: extra.bin, dst: {dst} }}\n"),
            );
        std::fs::write(g.path("recipe.yaml"), text).unwrap();
        assert_refused(&g.build(&out), dst, why, &out);
    }
}

#[test]
fn inspect_shows_sections_stub_and_texts() {
    if require_tool(STUB, "systemd-boot-efi").is_none() {
        return;
    }
    let f = Fixture::new("");
    let out = f.path("out");
    assert!(f.build(&out).status.success());
    let json: serde_json::Value = serde_json::from_slice(&run_ok(
        imgctl().arg("inspect").arg(out.join("t.efi")).arg("--json"),
    ))
    .unwrap();
    assert_eq!(json["stub"], "systemd-stub");
    assert_eq!(json["semantics"], "systemd-252");
    assert_eq!(json["cmdline"], "console=ttyS0 quiet");
    assert_eq!(json["uname"], "6.1.0-test");
    let sections = json["sections"].as_array().unwrap();
    let linux = sections.iter().find(|s| s["name"] == ".linux").unwrap();
    assert_eq!(linux["measured"], true);
    let kernel = std::fs::read(f.path("vmlinuz")).unwrap();
    use sha2::Digest;
    assert_eq!(linux["sha256"], hex(&sha2::Sha256::digest(&kernel)));
    // Under v252 semantics .uname and .sbat are not measured.
    assert_eq!(
        sections.iter().find(|s| s["name"] == ".uname").unwrap()["measured"],
        false
    );

    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(
        manifest["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["role"] == "kernel")
            .unwrap()["digests"]["sha256"],
        hex(&sha2::Sha256::digest(&kernel))
    );
    for bank in ["sha1", "sha256", "sha384", "sha512"] {
        assert!(manifest["uki"]["authenticode"][bank].is_string());
        assert!(manifest["uki"]["sections"][0]["digests"][bank].is_string());
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Eight new sections do not fit in the v252 stub's 0x400-byte headers (ukify refuses with "Not
/// enough header space"): the builder re-lays the headers, and every reader still agrees.
#[test]
fn headers_are_relaid_when_the_stub_has_no_room() {
    if require_tool(STUB, "systemd-boot-efi").is_none() {
        return;
    }
    let f = Fixture::new("splash: extra.bin\ndtb: extra.bin\npcrpkey: pcr.pub.pem\n");
    let (_, public) = common::genkey(f.dir.path(), "pcr", common::EC);
    let out = f.path("out");
    let o = f.build(&out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let data = std::fs::read(out.join("t.efi")).unwrap();
    let pe = goblin::pe::PE::parse(&data).expect("goblin reads the re-laid UKI");
    assert_eq!(pe.sections.len(), 16);
    let size_of_headers = pe
        .header
        .optional_header
        .unwrap()
        .windows_fields
        .size_of_headers;
    assert!(
        size_of_headers > 0x400,
        "headers should have grown: {size_of_headers:#x}"
    );
    for name in [".splash", ".dtb"] {
        assert_eq!(section(&pe, &data, name), b"extra");
    }
    assert_eq!(
        section(&pe, &data, ".pcrpkey"),
        std::fs::read(&public).unwrap()
    );
    assert_eq!(
        section(&pe, &data, ".linux"),
        std::fs::read(f.path("vmlinuz")).unwrap()
    );
    // The stub's own code moved in the file but not in memory.
    let stub = std::fs::read(STUB).unwrap();
    let stub_pe = goblin::pe::PE::parse(&stub).unwrap();
    assert_eq!(
        section(&pe, &data, ".text"),
        section(&stub_pe, &stub, ".text")
    );
    if let Some(sbverify) = require_tool("sbverify", "sbsigntool") {
        let o = Command::new(sbverify)
            .arg("--list")
            .arg(out.join("t.efi"))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    if let Some(objdump) = require_tool("objdump", "binutils") {
        let listing = String::from_utf8(run_ok(
            Command::new(objdump).arg("-h").arg(out.join("t.efi")),
        ))
        .unwrap();
        assert!(
            listing.contains(".pcrpkey") && listing.contains(".linux"),
            "{listing}"
        );
    }
}

/// DEFECT 23: a distribution's SBAT (three vendor lines) is longer than the 252 stub's `.sbat`
/// can hold (0x200 raw bytes, and .sdmagic starts 0x100 bytes after it in memory): the build
/// gives it a section of its own, which objdump reads whole, and no two sections overlap in
/// memory. (tests/systemd257.rs checks the same against ukify 257 and systemd-measure 257.)
#[test]
fn a_long_sbat_gets_a_section_of_its_own() {
    if require_tool(STUB, "systemd-boot-efi").is_none() {
        return;
    }
    let Some(objdump) = require_tool("objdump", "binutils") else {
        return;
    };
    let vendor = "uki,1,UKI,uki,1,https://uapi-group.org/specifications/specs/unified_kernel_image/\n  \
                  uki.debian,1,Debian GNU/Linux,uki,1,https://tracker.debian.org/pkg/systemd\n  \
                  uki.acme,1,ACME Corporation,acme-uki,2.4.1-3,https://security.acme.example/uki\n  \
                  uki.acme-fleet,1,ACME Fleet Images,acme-fleet-uki,2026.12.1,mailto:secalert@acme.example\n";
    let f = Fixture::new(&format!("sbat: |\n  {vendor}"));
    let out = f.path("out");
    let o = f.build(&out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let data = std::fs::read(out.join("t.efi")).unwrap();
    let pe = goblin::pe::PE::parse(&data).unwrap();
    let sbats: Vec<_> = pe
        .sections
        .iter()
        .filter(|s| s.name().ok() == Some(".sbat"))
        .collect();
    assert_eq!(sbats.len(), 1, "one .sbat section");
    let sbat = String::from_utf8(section(&pe, &data, ".sbat").to_vec()).unwrap();
    assert!(sbat.len() > 0x200, "{} bytes", sbat.len());
    for line in [
        "systemd,1,The systemd Developers",
        "systemd.debian,1,",
        "uki,1,UKI",
        "uki.acme,1,",
        "uki.acme-fleet,1,",
    ] {
        assert!(
            sbat.contains(&format!("\n{line}")),
            "{line} missing: {sbat}"
        );
    }
    assert!(
        sbat.ends_with("mailto:secalert@acme.example\n\0"),
        "{sbat:?}"
    );
    // objdump reads the same bytes.
    let dump = String::from_utf8(run_ok(
        Command::new(&objdump)
            .args(["-s", "-j", ".sbat"])
            .arg(out.join("t.efi")),
    ))
    .unwrap();
    // " ADDR 4 groups of 8 hex digits  ASCII": the hex area is the 35 columns after ADDR.
    let hex_dump: String = dump
        .lines()
        .filter_map(|l| l.strip_prefix(' ')?.split_once(' '))
        .flat_map(|(_, rest)| rest.chars().take(35).filter(|c| !c.is_whitespace()))
        .collect();
    assert_eq!(hex_dump, hex(sbat.as_bytes()));
    // No two sections overlap in memory.
    let mut ranges: Vec<(u32, u32, String)> = pe
        .sections
        .iter()
        .map(|s| {
            (
                s.virtual_address,
                s.virtual_address + s.virtual_size,
                s.name().unwrap().to_owned(),
            )
        })
        .collect();
    ranges.sort();
    for w in ranges.windows(2) {
        assert!(w[0].1 <= w[1].0, "{} overlaps {} in memory", w[0].2, w[1].2);
    }
}

/// `build --log`: the UKI's entry (digests, PCR 11 predictions, recipe digest) is appended to a
/// transparency log and its inclusion proof lands next to the UKI, verifiable by `log verify`.
#[test]
fn build_appends_to_the_log_and_writes_a_verifiable_proof() {
    if require_tool(STUB, "systemd-boot-efi").is_none() {
        return;
    }
    let f = Fixture::new("");
    let (log, key) = (f.path("log"), f.path("log.key"));
    run_ok(
        imgctl()
            .arg("log")
            .arg("init")
            .arg(&log)
            .arg("--key")
            .arg(&key)
            .args(["--origin", "example.org/imgctl-test"]),
    );
    let out = f.path("out");
    run_ok(
        imgctl()
            .arg("build")
            .arg(f.path("recipe.yaml"))
            .arg("-o")
            .arg(&out)
            .arg("--log")
            .arg(&log)
            .arg("--log-key")
            .arg(&key),
    );
    let proof = out.join("t.efi.tlog-proof");
    let vkey = format!("@{}", f.path("log.vkey").display());
    let said = String::from_utf8(run_ok(
        imgctl()
            .args(["log", "verify", "--vkey", &vkey, "--proof"])
            .arg(&proof),
    ))
    .unwrap();
    assert!(said.contains("entry is in the log"), "{said}");
    // The logged entry carries the same PCR 11 prediction pcrs.json has.
    let text = std::fs::read_to_string(&proof).unwrap();
    let extra = text.lines().find_map(|l| l.strip_prefix("extra ")).unwrap();
    use base64::Engine;
    let entry = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(extra)
            .unwrap(),
    )
    .unwrap();
    let pcrs: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("pcrs.json")).unwrap()).unwrap();
    let empty_path = pcrs["sha256"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v.get("phase").is_none())
        .unwrap();
    // A version-2 entry: the artifact record, whose PCR 11 values are pcrs.json's and whose
    // UKI digest is manifest.json's.
    let json = entry
        .strip_prefix("imgctl.dev/log-entry/v2\n")
        .unwrap_or_else(|| panic!("not a v2 entry: {entry}"));
    let record: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(record["format"], "imgctl-record/2", "{entry}");
    assert_eq!(record["pcrs"], pcrs, "{entry}");
    assert!(
        record["pcrs"]["sha256"]
            .as_array()
            .unwrap()
            .contains(empty_path),
        "{entry}"
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    // manifest.json is the record's JSON form: the same record, field for field.
    assert_eq!(record, manifest, "{entry}");
    assert!(
        record["uki"]["authenticode"]["sha384"].is_string(),
        "{entry}"
    );
    // A tampered proof is rejected.
    std::fs::write(&proof, text.replace("index 0", "index 1")).unwrap();
    let o = imgctl()
        .args(["log", "verify", "--vkey", &vkey, "--proof"])
        .arg(&proof)
        .output()
        .unwrap();
    assert!(!o.status.success());
}

/// `build --pcr-private-key`: .pcrsig (the JSON alone, no NUL) and .pcrpkey are embedded as ukify does; the
/// embedded signature equals `imgctl sign-pcrs` on the same UKI (which tests/sign_pcrs.rs holds
/// byte-identical to systemd-measure sign), and .pcrsig does not move PCR 11.
#[test]
fn build_with_a_pcr_key_embeds_pcrsig_and_pcrpkey() {
    if require_tool(STUB, "systemd-boot-efi").is_none()
        || require_tool("openssl", "openssl").is_none()
    {
        return;
    }
    let f = Fixture::new("");
    let (key, public) = common::genkey(f.dir.path(), "pcr", common::RSA);
    let out = f.path("out");
    run_ok(
        imgctl()
            .arg("build")
            .arg(f.path("recipe.yaml"))
            .arg("-o")
            .arg(&out)
            .arg("--pcr-private-key")
            .arg(&key),
    );
    let uki = out.join("t.efi");
    let data = std::fs::read(&uki).unwrap();
    let pe = goblin::pe::PE::parse(&data).unwrap();
    let pcrsig = section(&pe, &data, ".pcrsig");
    assert_eq!(
        pcrsig.last(),
        Some(&b'}'),
        ".pcrsig is the JSON alone, as ukify writes it"
    );
    let embedded: serde_json::Value = serde_json::from_slice(pcrsig).unwrap();
    let pem = String::from_utf8(section(&pe, &data, ".pcrpkey").to_vec()).unwrap();
    assert_eq!(pem.trim(), std::fs::read_to_string(&public).unwrap().trim());
    let signed: serde_json::Value = serde_json::from_slice(&run_ok(
        imgctl()
            .arg("sign-pcrs")
            .arg(&uki)
            .arg("--private-key")
            .arg(&key),
    ))
    .unwrap();
    assert_eq!(embedded, signed);
    for bank in ["sha1", "sha256", "sha384", "sha512"] {
        assert_eq!(
            embedded[bank].as_array().unwrap().len(),
            4,
            "{bank}: the four default phases"
        );
    }
}

/// Every file of a folder with its bytes, sorted by name (dotfiles, i.e. temporaries, included).
fn snapshot(dir: &Path) -> Vec<(String, Option<Vec<u8>>)> {
    let mut v: Vec<(String, Option<Vec<u8>>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let data = e
                .file_type()
                .unwrap()
                .is_file()
                .then(|| std::fs::read(e.path()).unwrap());
            (e.file_name().into_string().unwrap(), data)
        })
        .collect();
    v.sort();
    v
}

fn log_init(f: &Fixture, name: &str, origin: &str) -> (PathBuf, PathBuf) {
    let (log, key) = (f.path(name), f.path(&format!("{name}.key")));
    run_ok(
        imgctl()
            .args(["log", "init"])
            .arg(&log)
            .arg("--key")
            .arg(&key)
            .args(["--origin", origin]),
    );
    (log, key)
}

fn build_logged(f: &Fixture, out: &Path, log: &Path, key: &Path) -> Command {
    let mut c = imgctl();
    c.arg("build")
        .arg(f.path("recipe.yaml"))
        .arg("-o")
        .arg(out)
        .arg("--log")
        .arg(log)
        .arg("--log-key")
        .arg(key);
    c
}

/// C11: a rebuild whose commit cannot finish (pcrs.json is now a folder) exits 1 naming it and
/// leaves every old output as it was, with no temporaries beside them.
#[test]
fn a_failed_rebuild_leaves_the_old_outputs_untouched_and_no_temporaries() {
    if require_tool(STUB, "systemd-boot-efi").is_none() {
        return;
    }
    let f = Fixture::new("");
    let out = f.path("out");
    assert!(f.build(&out).status.success());
    std::fs::remove_file(out.join("pcrs.json")).unwrap();
    std::fs::create_dir(out.join("pcrs.json")).unwrap();
    let before = snapshot(&out);
    let recipe = std::fs::read_to_string(f.path("recipe.yaml")).unwrap();
    std::fs::write(
        f.path("recipe.yaml"),
        recipe.replace("console=ttyS0 quiet", "console=ttyS0 changed"),
    )
    .unwrap();
    let o = f.build(&out);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("pcrs.json") && err.contains("folder"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(snapshot(&out), before);
}

/// C12: `build --log` with a missing log or another log's key fails before anything is
/// written: no output folder, and the log unchanged.
#[test]
fn build_log_checks_the_log_and_its_key_before_writing_anything() {
    if require_tool(STUB, "systemd-boot-efi").is_none() {
        return;
    }
    let f = Fixture::new("");
    let (log, _key) = log_init(&f, "log", "example.org/imgctl-a");
    let (_other, other_key) = log_init(&f, "other", "example.org/imgctl-b");
    let log_before = snapshot(&log);
    let out = f.path("out");
    let o = build_logged(&f, &out, &f.path("missing-log"), &other_key)
        .output()
        .unwrap();
    assert_clean_failure(&o, "missing-log", &out);
    assert!(!out.exists());
    let o = build_logged(&f, &out, &log, &other_key).output().unwrap();
    assert_clean_failure(&o, "not this log's key", &out);
    assert!(!out.exists());
    assert_eq!(snapshot(&log), log_before);
    // An output name taken by a folder is found before the append, too.
    std::fs::create_dir_all(out.join("t.efi.tlog-proof")).unwrap();
    let o = build_logged(&f, &out, &log, &_key).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("t.efi.tlog-proof"), "{err}");
    assert_eq!(snapshot(&log), log_before);
    assert_eq!(snapshot(&out).len(), 1);
}

/// C13: temporaries left by a killed build (a dead PID in the name) are reclaimed by the next
/// build into the same folder; a live process's temporary is left alone.
#[test]
fn stale_temporaries_of_a_killed_build_are_reclaimed() {
    if require_tool(STUB, "systemd-boot-efi").is_none() {
        return;
    }
    let f = Fixture::new("");
    let out = f.path("out");
    std::fs::create_dir_all(&out).unwrap();
    let mut dead = Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    let stale = out.join(format!(".t.efi.imgctl-tmp-{dead_pid}"));
    let stale_backup = out.join(format!(".manifest.json.imgctl-bak-{dead_pid}"));
    let live = out.join(format!(".t.efi.imgctl-tmp-{}", std::process::id()));
    for p in [&stale, &stale_backup, &live] {
        std::fs::write(p, vec![0u8; 4096]).unwrap();
    }
    assert!(f.build(&out).status.success());
    assert!(!stale.exists() && !stale_backup.exists());
    assert!(live.exists());
}

/// A build stopped by SIGTERM or SIGINT while its outputs are staged (here: waiting for the
/// log's lock, which another process holds) removes its temporaries and exits 128 + the signal:
/// 143 after SIGTERM, 130 after SIGINT.
#[test]
fn a_signalled_build_removes_its_temporaries_and_exits_143_or_130() {
    if require_tool(STUB, "systemd-boot-efi").is_none()
        || require_tool("/usr/bin/flock", "util-linux").is_none()
    {
        return;
    }
    let f = Fixture::new("");
    let (log, key) = log_init(&f, "log", "example.org/imgctl-a");
    for (signal, code) in [("TERM", 143), ("INT", 130)] {
        let out = f.path(&format!("out-{signal}"));
        let mut holder = Command::new("flock")
            .arg(log.join(".imgctl-log/lock"))
            .args(["sleep", "60"])
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let mut build = build_logged(&f, &out, &log, &key)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Wait until the outputs are staged (temporaries exist).
        let staged = (0..200).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(50));
            out.is_dir()
                && snapshot(&out)
                    .iter()
                    .any(|(n, _)| n.contains(".imgctl-tmp-"))
        });
        assert!(staged, "the build never staged its outputs");
        std::thread::sleep(std::time::Duration::from_millis(200));
        run_ok(
            Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(build.id().to_string()),
        );
        let status = build.wait().unwrap();
        holder.kill().unwrap();
        holder.wait().unwrap();
        assert_eq!(status.code(), Some(code), "SIG{signal}");
        let left = snapshot(&out);
        assert!(left.is_empty(), "SIG{signal} left {left:?}");
    }
}
