//! Shared helpers for integration tests that run real peer tools and read real test data.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// True when running in CI (`CI=true`): missing tools or data are failures there.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Returns the tool's path if it exists. Outside CI a missing tool is reported loudly and the
/// caller skips; in CI it panics, so that a skipped peer check can never pass silently.
pub fn require_tool(path: &str, package: &str) -> Option<PathBuf> {
    let p = if path.contains('/') {
        PathBuf::from(path)
    } else {
        imgctl_fsio::find_program(path).unwrap_or_else(|| PathBuf::from(path))
    };
    if p.exists() {
        return Some(p);
    }
    missing(&format!(
        "peer tool {path} (Debian package {package}; run scripts/setup.sh)"
    ));
    None
}

/// Reports missing test prerequisites: panics in CI, prints a loud warning otherwise.
pub fn missing(what: &str) {
    if in_ci() {
        panic!("CI=true and {what} is missing");
    }
    eprintln!("\n!!!!! SKIPPED: {what} is missing — this test did not check anything !!!!!\n");
}

/// The shared data folder: `$IMGCTL_SHARED`, else `../shared` beside the repository.
pub fn shared_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("IMGCTL_SHARED") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"),
    };
    if dir.is_dir() {
        Some(dir)
    } else {
        missing(&format!(
            "shared test data folder {} (set IMGCTL_SHARED)",
            dir.display()
        ));
        None
    }
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Path of the built imgctl binary.
pub fn imgctl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_imgctl"))
}

/// Runs a command, panicking with its stderr if it fails; returns stdout.
pub fn run_ok(cmd: &mut Command) -> Vec<u8> {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `openssl genpkey` options for an RSA-2048 and an ECDSA P-256 key.
pub const RSA: &[&str] = &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"];
pub const EC: &[&str] = &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"];

/// A fresh private key `NAME.pem` (openssl genpkey with `alg`) and its public key `NAME.pub.pem`.
pub fn genkey(dir: &Path, name: &str, alg: &[&str]) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{name}.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    run_ok(
        Command::new("openssl")
            .arg("genpkey")
            .args(alg)
            .arg("-out")
            .arg(&key),
    );
    run_ok(
        Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&key)
            .arg("-out")
            .arg(&public),
    );
    (key, public)
}

/// `openssl dgst -<bank> -verify PUBLIC -signature SIG POL`: does a `.pcrsig` entry's base64
/// `sig` verify over the raw policy digest `pol`? (Files are written into `dir`.)
pub fn openssl_verifies(dir: &Path, bank: &str, public: &Path, pol: &[u8], sig_b64: &str) -> bool {
    use base64::Engine as _;
    let pol_file = dir.join("pol.bin");
    let sig_file = dir.join("sig.bin");
    std::fs::write(&pol_file, pol).unwrap();
    let sig = base64::engine::general_purpose::STANDARD
        .decode(sig_b64)
        .unwrap();
    std::fs::write(&sig_file, sig).unwrap();
    Command::new("openssl")
        .arg("dgst")
        .arg(format!("-{bank}"))
        .arg("-verify")
        .arg(public)
        .arg("-signature")
        .arg(&sig_file)
        .arg(&pol_file)
        .output()
        .unwrap()
        .status
        .success()
}

/// A complete `imgctl-manifest/1` for a UKI imgctl did not build (the shared OVMF capture's):
/// `sections` are `{"name", "measured", "digests"}` objects; layout and provenance fields the
/// verifier does not read are zero or "(reference)".
#[allow(dead_code)]
pub fn reference_manifest(
    name: &str,
    file: &str,
    semantics: &str,
    sections: &[serde_json::Value],
    pcrs: serde_json::Value,
) -> serde_json::Value {
    let none =
        serde_json::json!({"role": "reference", "path": "(reference)", "size": 0, "digests": {}});
    let sections: Vec<serde_json::Value> = sections
        .iter()
        .map(|s| {
            let mut s = s.clone();
            for k in [
                "offset",
                "virtual_address",
                "virtual_size",
                "size_of_raw_data",
            ] {
                s[k] = 0.into();
            }
            s
        })
        .collect();
    serde_json::json!({
        "format": "imgctl-manifest/1", "name": name, "version": "0", "builder": "(reference)",
        "source_date_epoch": 0, "recipe": none, "inputs": [], "initrd": null,
        "uki": {"file": file, "size": 0, "digests": {}, "authenticode": {},
                "stub": {"path": "(reference)", "sdmagic": null, "semantics": semantics},
                "sections": sections},
        "pcrs": pcrs,
    })
}

/// `len` patterned bytes that pass for an x86 Linux kernel: the boot sector's boot_flag 0xAA55
/// at 0x1fe and the setup header magic `HdrS` at 0x202 (x86 boot protocol), which the builder
/// requires of a kernel; the rest is not a real kernel.
#[allow(dead_code)]
pub fn fake_kernel(len: usize) -> Vec<u8> {
    assert!(
        len >= 0x210,
        "a fake kernel needs room for the setup header"
    );
    let mut k: Vec<u8> = (0..len as u32).map(|i| (i * 7) as u8).collect();
    k[0x1fe..0x200].copy_from_slice(&[0x55, 0xaa]);
    k[0x202..0x206].copy_from_slice(b"HdrS");
    k
}

/// sbverify's verdict on `image` with `crt` as the trusted certificate.
pub fn sbverify(crt: &Path, image: &Path) -> bool {
    Command::new("sbverify")
        .arg("--cert")
        .arg(crt)
        .arg(image)
        .output()
        .unwrap()
        .status
        .success()
}

/// osslsigncode's verdict and its "Calculated message digest" (the Authenticode SHA-256).
pub fn osslsigncode(crt: &Path, image: &Path) -> (bool, String) {
    let out = Command::new("osslsigncode")
        .args(["verify", "-CAfile"])
        .arg(crt)
        .arg("-in")
        .arg(image)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let calculated = text
        .lines()
        .find_map(|l| l.strip_prefix("Calculated message digest"))
        .and_then(|r| r.split(':').nth(1))
        .map(|h| h.trim().to_ascii_lowercase())
        .unwrap_or_default();
    (
        out.status.success() && text.contains("Succeeded"),
        calculated,
    )
}

/// A running `imgctl log witness` on a free loopback port (port 0, the URL it prints); killed
/// when dropped.
pub struct WitnessProc {
    child: std::process::Child,
    pub url: String,
    pub vkey: String,
    pub key: PathBuf,
    pub state: PathBuf,
}

impl Drop for WitnessProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns an imgctl HTTP service that prints its URL as its first stdout line; returns the
/// child and that URL (on loopback).
pub fn spawn_http_service(cmd: &mut Command, what: &str) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut child = cmd.stdout(std::process::Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line.trim().to_owned();
    assert!(
        url.starts_with("http://127.0.0.1:") || url.starts_with("https://127.0.0.1:"),
        "{what} printed {line:?}"
    );
    (child, url)
}

/// Starts (or restarts: same key and state folder) a witness named `name` for the log whose
/// vkey (or @FILE) is `log_vkey`, keeping its key and state in `dir`.
pub fn spawn_witness(dir: &Path, name: &str, log_vkey: &str) -> WitnessProc {
    let stem: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let key = dir.join(format!("{stem}.key"));
    let state = dir.join(format!("{stem}-state"));
    let mut cmd = imgctl();
    cmd.args(["log", "witness", "--name", name, "--listen", "127.0.0.1:0"])
        .arg("--key")
        .arg(&key)
        .arg("--state")
        .arg(&state)
        .args(["--log-vkey", log_vkey])
        .stderr(std::process::Stdio::null());
    let (child, url) = spawn_http_service(&mut cmd, "witness");
    let vkey = std::fs::read_to_string(key.with_extension("vkey"))
        .unwrap()
        .trim()
        .to_owned();
    WitnessProc {
        child,
        url,
        vkey,
        key,
        state,
    }
}

/// A new transparency log in `dir/NAME` with its key (origin `example.org/NAME`); returns (log,
/// key, "@vkey file").
pub fn new_log(dir: &Path, name: &str) -> (PathBuf, PathBuf, String) {
    let (log, key) = (dir.join(name), dir.join(format!("{name}.key")));
    run_ok(
        imgctl()
            .args(["log", "init"])
            .arg(&log)
            .arg("--key")
            .arg(&key)
            .args(["--origin", &format!("example.org/{name}")]),
    );
    let vkey = format!("@{}", dir.join(format!("{name}.vkey")).display());
    (log, key, vkey)
}

/// The Debian 13 chroot with fwupd that scripts/setup.sh makes for the CHID cross-check.
pub fn fwupd_chroot() -> Option<PathBuf> {
    let root = repo_root().join(".cache/trixie-fwupd-chid");
    if root.join("usr/bin/fwupdtool").exists() {
        // The fwupd the tests were written against (Debian 13's 2.0), not whatever is current.
        let version = std::fs::read_to_string(root.join("VERSION")).unwrap_or_default();
        assert!(
            version.starts_with("2."),
            "{}/VERSION: fwupd {version:?}, expected 2.x",
            root.display()
        );
        Some(root)
    } else {
        missing("fwupdtool in .cache/trixie-fwupd-chid (run scripts/setup.sh)");
        None
    }
}

/// `fwupdtool hwids` (fwupd, Debian 13) over an SMBIOS table laid out as Linux exports it
/// (`dmi/tables/smbios_entry_point` and `dmi/tables/DMI` under `FWUPD_SYSFSFWDIR`): each
/// Hardware ID line as (CHID, the fields it is made of joined by " + ").
pub fn fwupdtool_hwids(root: &Path, entry_point: &[u8], dmi: &[u8]) -> Vec<(String, String)> {
    let inside = tempfile::tempdir_in(root.join("tmp")).unwrap();
    let tables = inside.path().join("dmi/tables");
    std::fs::create_dir_all(&tables).unwrap();
    std::fs::write(tables.join("smbios_entry_point"), entry_point).unwrap();
    std::fs::write(tables.join("DMI"), dmi).unwrap();
    let at = Path::new("/tmp").join(inside.path().file_name().unwrap());
    let out = run_ok(
        Command::new("chroot")
            .arg(root)
            .args(["env", "LANG=C.UTF-8"])
            .arg(format!("FWUPD_SYSFSFWDIR={}", at.display()))
            .args(["fwupdtool", "hwids"]),
    );
    String::from_utf8_lossy(&out)
        .lines()
        .filter_map(|l| {
            let (guid, fields) = l.trim().split_once("   <- ")?;
            let guid = guid.strip_prefix('{')?.strip_suffix('}')?;
            Some((guid.to_owned(), fields.to_owned()))
        })
        .collect()
}

/// `imgctl chid FILE --json`'s CHIDs as (CHID, fields joined by " + "), fwupd's form.
pub fn imgctl_chids(smbios: &Path) -> Vec<(String, String)> {
    let v: serde_json::Value =
        serde_json::from_slice(&run_ok(imgctl().arg("chid").arg(smbios).arg("--json"))).unwrap();
    v["chids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let fields: Vec<&str> = c["fields"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f.as_str().unwrap())
                .collect();
            (c["chid"].as_str().unwrap().to_owned(), fields.join(" + "))
        })
        .collect()
}

/// systemd-measure's `.pcrsig` JSON as ukify 257 embeds it: re-serialised by Python's
/// `json.dumps` (`combine_signatures()`), computed by python3 itself.
#[allow(dead_code)] // reason: not every test binary embeds .pcrsig
pub fn ukify_pcrsig_json(systemd_measure_json: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut py = Command::new("python3")
        .args([
            "-c",
            "import json,sys; sys.stdout.write(json.dumps(json.loads(sys.stdin.read())))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 (ukify's JSON formatting)");
    py.stdin
        .take()
        .unwrap()
        .write_all(systemd_measure_json)
        .unwrap();
    let out = py.wait_with_output().unwrap();
    assert!(out.status.success(), "python3 json.dumps failed");
    out.stdout
}
