//! Per-core hash rates of the implementations we can use (run by hand, release build: not a
//! test): `cargo run --release -p imgctl-measure --example sha_rates [MIB]`.
//!
//! Prints GB per CPU-second for ring, RustCrypto and OpenSSL (sha1/sha2, which pick SHA-NI / AVX2 at run
//! time) over one large buffer, and for dm-verity's salted 4 KiB blocks, so the faster one per
//! algorithm can be chosen on this CPU and the two-core limit of each row computed.

use std::hint::black_box;

use ring::digest;
use sha2::Digest as _;

/// This thread's CPU time in seconds: on a shared machine, wall time says little.
fn cpu_now() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

/// GB hashed per CPU-second of this thread, the best of 7 runs.
fn rate(bytes: usize, f: impl Fn()) -> f64 {
    f(); // warm
    let mut best = f64::MAX;
    for _ in 0..7 {
        let t = cpu_now();
        f();
        best = best.min(cpu_now() - t);
    }
    bytes as f64 / best / 1e9
}

fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(64);
    let data: Vec<u8> = (0..mib << 20).map(|i| (i * 7 % 251) as u8).collect();
    let n = data.len();
    let ring_of = |alg: &'static digest::Algorithm| {
        rate(n, || {
            black_box(digest::digest(alg, &data));
        })
    };
    println!("one buffer of {mib} MiB, GB per CPU-second:");
    println!(
        "  sha1    ring {:.2}  rustcrypto {:.2}",
        ring_of(&digest::SHA1_FOR_LEGACY_USE_ONLY),
        rate(n, || {
            black_box(sha1::Sha1::digest(&data));
        })
    );
    println!(
        "  sha256  ring {:.2}  rustcrypto {:.2}",
        ring_of(&digest::SHA256),
        rate(n, || {
            black_box(sha2::Sha256::digest(&data));
        })
    );
    println!(
        "  sha384  ring {:.2}  rustcrypto {:.2}",
        ring_of(&digest::SHA384),
        rate(n, || {
            black_box(sha2::Sha384::digest(&data));
        })
    );
    println!(
        "  sha512  ring {:.2}  rustcrypto {:.2}",
        ring_of(&digest::SHA512),
        rate(n, || {
            black_box(sha2::Sha512::digest(&data));
        })
    );
    let ossl = |md: openssl::hash::MessageDigest| {
        rate(n, || {
            black_box(openssl::hash::hash(md, &data).ok());
        })
    };
    println!(
        "  openssl: sha1 {:.2}  sha256 {:.2}  sha384 {:.2}  sha512 {:.2}",
        ossl(openssl::hash::MessageDigest::sha1()),
        ossl(openssl::hash::MessageDigest::sha256()),
        ossl(openssl::hash::MessageDigest::sha384()),
        ossl(openssl::hash::MessageDigest::sha512()),
    );
    let salt = [0x5au8; 32];
    let ring_salted = {
        let mut c = digest::Context::new(&digest::SHA256);
        c.update(&salt);
        c
    };
    let rc_salted = {
        let mut c = sha2::Sha256::new();
        c.update(salt);
        c
    };
    println!("dm-verity blocks (SHA-256 of 32-byte salt + 4 KiB), GB per CPU-second:");
    println!(
        "  ring {:.2}  rustcrypto {:.2}  two interleaved streams (imgctl-sha256x2) {:.2}",
        rate(n, || {
            for b in data.chunks_exact(4096) {
                let mut c = ring_salted.clone();
                c.update(b);
                black_box(c.finish());
            }
        }),
        rate(n, || {
            for b in data.chunks_exact(4096) {
                let mut c = rc_salted.clone();
                c.update(b);
                black_box(c.finalize());
            }
        }),
        rate(n, || {
            let mut out = vec![0u8; n / 4096 * 32];
            imgctl_sha256x2::digest_chunks(&salt, &data, 4096, &mut out);
            black_box(out);
        })
    );
}
