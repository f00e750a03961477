//! Per-core rate of dm-verity's salted 4 KiB block hashing, one stream (`sha2`, ring) against
//! two interleaved streams (this crate): `cargo run --release -p imgctl-sha256x2 --example rate`.

/// This thread's CPU time in seconds: on a shared machine, wall time says little.
fn cpu_now() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

/// GB per CPU-second, the best of 15 runs.
fn best(bytes: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t_best = f64::MAX;
    for _ in 0..15 {
        let t = cpu_now();
        f();
        t_best = t_best.min(cpu_now() - t);
    }
    bytes as f64 / t_best / 1e9
}

fn main() {
    let data: Vec<u8> = (0..16usize << 20).map(|i| (i * 7 % 251) as u8).collect();
    let salt = [0x5au8; 32];
    let mut out = vec![0u8; data.len() / 4096 * 32];
    let one = best(data.len(), || {
        for (b, o) in data.chunks_exact(4096).zip(out.chunks_exact_mut(32)) {
            o.copy_from_slice(&imgctl_sha256x2::digest_one(&salt, b));
        }
    });
    let two = best(data.len(), || {
        imgctl_sha256x2::digest_chunks(&salt, &data, 4096, &mut out);
    });
    println!(
        "salted 4 KiB blocks, GB per CPU-second: sha2 one stream {one:.2}, two interleaved streams {two:.2} (accelerated: {})",
        imgctl_sha256x2::is_accelerated()
    );
}
