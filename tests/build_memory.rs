//! D16: `imgctl build` streams the initrd and the UKI. A generated 200 MiB initrd tree (one
//! 32 MiB file and a thousand smaller ones, made in a temporary folder) must build with a peak
//! resident set (VmHWM of the child, polled from /proc) below 64 MiB plus the largest file,
//! whatever the size of the tree. Before streaming, the builder held every file, the archive
//! and the UKI in memory at once: about five times the tree.
#![allow(clippy::unwrap_used)] // reason: test code; a panic is a test failure

mod common;

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{imgctl, require_tool};

const STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";
const MIB: u64 = 1 << 20;

/// Writes `len` pseudo-random (incompressible) bytes to `path`.
fn random_file(path: &Path, len: u64, seed: &mut u64) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut left = len;
    let mut block = vec![0u8; 64 << 10];
    while left > 0 {
        for chunk in block.chunks_mut(8) {
            // xorshift64
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            chunk.copy_from_slice(&seed.to_le_bytes()[..chunk.len()]);
        }
        let n = left.min(block.len() as u64) as usize;
        f.write_all(&block[..n]).unwrap();
        left -= n as u64;
    }
    f.flush().unwrap();
}

/// The peak resident set of a running process in bytes (VmHWM), if it is still there.
fn vm_hwm(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[test]
fn a_200_mib_initrd_tree_builds_in_bounded_memory() {
    if require_tool(STUB, "systemd-boot-efi").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let largest = 32 * MIB;
    let tree = p.join("tree");
    std::fs::create_dir_all(tree.join("big")).unwrap();
    random_file(&tree.join("big/largest.bin"), largest, &mut seed);
    let mut total = largest;
    for d in 0..10 {
        let sub = tree.join(format!("d{d}"));
        std::fs::create_dir(&sub).unwrap();
        for i in 0..100 {
            let len = 100_000 + ((d * 100 + i) as u64 * 7919) % 150_000;
            random_file(&sub.join(format!("f{i}")), len, &mut seed);
            total += len;
        }
    }
    assert!(total > 190 * MIB, "the tree is {total} bytes");
    std::fs::write(p.join("vmlinuz"), common::fake_kernel(4096)).unwrap();
    std::fs::write(
        p.join("recipe.yaml"),
        "name: big\nversion: 1\nos-release:\n  ID: big\nkernel: vmlinuz\nuname: 6.1.0-test\n\
         initrd:\n  tree: tree\n",
    )
    .unwrap();

    let start = Instant::now();
    let mut child = imgctl()
        .arg("build")
        .arg(p.join("recipe.yaml"))
        .arg("-o")
        .arg(p.join("out"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut peak = 0;
    let status = loop {
        if let Some(hwm) = vm_hwm(child.id()) {
            peak = peak.max(hwm);
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let elapsed = start.elapsed();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(status.success(), "{err}");
    let initrd = std::fs::metadata(p.join("out/big.initrd")).unwrap().len();
    assert!(
        initrd > total,
        "the initrd ({initrd} bytes) holds the tree ({total})"
    );
    eprintln!(
        "tree {} MiB, largest file {} MiB: peak RSS {:.1} MiB, {:.1} s",
        total / MIB,
        largest / MIB,
        peak as f64 / MIB as f64,
        elapsed.as_secs_f64()
    );
    assert!(peak > 0, "VmHWM was never read");
    assert!(
        peak < 64 * MIB + largest,
        "peak RSS {} MiB for a {} MiB tree whose largest file is {} MiB",
        peak / MIB,
        total / MIB,
        largest / MIB
    );
}
