//! Throughput of the lanes against OpenSSL-free single streams (run by hand, not a test):
//! `cargo run --release -p imgctl-sha512x4 --example rate`.

use std::time::Instant;

use imgctl_sha512x4::{Lanes, Variant};
use sha2::Digest as _;

fn main() {
    let data: Vec<u8> = (0..64u32 << 20).map(|i| (i * 2654435761) as u8).collect();
    let mb = data.len() as f64 / 1e6;
    println!("accelerated: {}", imgctl_sha512x4::is_accelerated());
    for lanes in [1usize, 2, 4] {
        let variants = vec![Variant::Sha512; lanes];
        let t = Instant::now();
        let mut l = Lanes::new(&variants);
        for chunk in data.chunks(1 << 20) {
            let pieces = vec![chunk; lanes];
            l.update(&pieces);
        }
        let d = l.finish();
        let s = t.elapsed().as_secs_f64();
        assert_eq!(d[0], sha2::Sha512::digest(&data).to_vec());
        println!(
            "{lanes} lane(s): {:.0} MB/s per lane, {:.0} MB/s in all",
            mb / s,
            mb * lanes as f64 / s
        );
    }
    let t = Instant::now();
    let _ = sha2::Sha512::digest(&data);
    println!(
        "sha2 crate, one stream: {:.0} MB/s",
        mb / t.elapsed().as_secs_f64()
    );
}
