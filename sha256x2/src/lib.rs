//! SHA-256 of two messages of the same length at once, as two interleaved SHA-NI streams on one
//! core ("multi-buffer" hashing; Linux's `sha256_finup_2x`, which dm-verity uses, does the same).
//!
//! Why a crate of its own: one SHA-NI stream leaves the core's SHA unit idle while each round
//! waits for the previous one (`sha256rnds2` has a long latency and a short reciprocal
//! throughput), so a second, independent stream in the same loop runs in those gaps almost for
//! free. No maintained crate offers this, and it needs `unsafe` intrinsics, which the rest of
//! the workspace forbids: this crate holds them and nothing else. The CPU features are detected
//! at run time; without SHA-NI (or off x86-64) every digest comes from the `sha2` crate.
//!
//! The messages are `prefix ‖ body`: dm-verity hashes `salt ‖ block` for every block.

#![deny(unsafe_op_in_unsafe_fn)]

use sha2::{Digest, Sha256};

/// A SHA-256 digest.
pub type Digest32 = [u8; 32];

/// Whether the two-stream SHA-NI code runs on this CPU (otherwise the `sha2` crate does).
pub fn is_accelerated() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        x86::supported()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `SHA-256(prefix ‖ body)` with the `sha2` crate.
pub fn digest_one(prefix: &[u8], body: &[u8]) -> Digest32 {
    let mut h = Sha256::new();
    h.update(prefix);
    h.update(body);
    h.finalize().into()
}

/// `[SHA-256(prefix ‖ a), SHA-256(prefix ‖ b)]`.
///
/// # Panics
/// If `a` and `b` differ in length (the two streams run in lock step).
pub fn digest_pair(prefix: &[u8], a: &[u8], b: &[u8]) -> [Digest32; 2] {
    assert_eq!(a.len(), b.len(), "digest_pair needs equal lengths");
    #[cfg(target_arch = "x86_64")]
    if x86::supported() {
        return x86::digest_pair(prefix, [a, b]);
    }
    [digest_one(prefix, a), digest_one(prefix, b)]
}

/// `out[i] = SHA-256(prefix ‖ data[i·chunk .. (i+1)·chunk])` for every whole chunk of `data`;
/// `out` holds 32 bytes per chunk. Chunks are hashed two at a time.
///
/// # Panics
/// If `chunk` is 0, `data` is not a whole number of chunks, or `out` is not 32 bytes per chunk.
pub fn digest_chunks(prefix: &[u8], data: &[u8], chunk: usize, out: &mut [u8]) {
    assert!(chunk > 0 && data.len() % chunk == 0, "whole chunks only");
    assert_eq!(
        out.len(),
        data.len() / chunk * 32,
        "32 bytes of output per chunk"
    );
    let mut blocks = data.chunks_exact(chunk);
    let mut outs = out.chunks_exact_mut(32);
    loop {
        match (blocks.next(), blocks.next()) {
            (Some(a), Some(b)) => {
                let [da, db] = digest_pair(prefix, a, b);
                if let Some(o) = outs.next() {
                    o.copy_from_slice(&da);
                }
                if let Some(o) = outs.next() {
                    o.copy_from_slice(&db);
                }
            }
            (Some(a), None) => {
                if let Some(o) = outs.next() {
                    o.copy_from_slice(&digest_one(prefix, a));
                }
                return;
            }
            _ => return,
        }
    }
}

/// The `k`-th 64-byte block of the padded message `prefix ‖ body` (FIPS 180-4 §5.1.1) whose
/// padded form has `nblocks` blocks, assembled in `t`. Only used for the blocks that are not
/// wholly inside `body`.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn assemble_block(prefix: &[u8], body: &[u8], k: usize, nblocks: usize, t: &mut [u8; 64]) {
    let p = prefix.len();
    let len = p + body.len();
    let start = 64 * k;
    *t = [0; 64];
    if start < p {
        let n = (p - start).min(64);
        t[..n].copy_from_slice(&prefix[start..start + n]);
    }
    let (from, to) = (start.max(p), (start + 64).min(len));
    if from < to {
        t[from - start..to - start].copy_from_slice(&body[from - p..to - p]);
    }
    if (start..start + 64).contains(&len) {
        t[len - start] = 0x80;
    }
    if k + 1 == nblocks {
        t[56..].copy_from_slice(&(len as u64).wrapping_mul(8).to_be_bytes());
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use core::arch::x86_64::{
        __m128i, _mm_add_epi32, _mm_alignr_epi8, _mm_loadu_si128, _mm_set_epi32, _mm_set_epi64x,
        _mm_sha256msg1_epu32, _mm_sha256msg2_epu32, _mm_sha256rnds2_epu32, _mm_shuffle_epi32,
        _mm_shuffle_epi8, _mm_storeu_si128,
    };

    use super::{assemble_block, Digest32};

    /// FIPS 180-4 §4.2.2.
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];

    /// FIPS 180-4 §5.3.3.
    const H0: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];

    pub fn supported() -> bool {
        std::is_x86_feature_detected!("sha")
            && std::is_x86_feature_detected!("sse2")
            && std::is_x86_feature_detected!("ssse3")
            && std::is_x86_feature_detected!("sse4.1")
    }

    /// Both messages `prefix ‖ bodies[i]`; the caller checked [`supported`] and equal lengths.
    pub fn digest_pair(prefix: &[u8], bodies: [&[u8]; 2]) -> [Digest32; 2] {
        let p = prefix.len();
        let len = p + bodies[0].len();
        let nblocks = (len + 9).div_ceil(64);
        let mut temp = [[0u8; 64]; 2];
        // SAFETY: `supported()` was checked by the only caller (`crate::digest_pair`), so the
        // CPU has SHA, SSE2, SSSE3 and SSE4.1, the features `State::new` is compiled for.
        let mut state = unsafe { State::new() };
        for k in 0..nblocks {
            let start = 64 * k;
            let blocks: [&[u8; 64]; 2] = if start >= p && start + 64 <= len {
                let at = start - p;
                let a = bodies[0][at..at + 64].try_into();
                let b = bodies[1][at..at + 64].try_into();
                match (a, b) {
                    (Ok(a), Ok(b)) => [a, b],
                    _ => unreachable!("64-byte slices"),
                }
            } else {
                let [ta, tb] = &mut temp;
                assemble_block(prefix, bodies[0], k, nblocks, ta);
                assemble_block(prefix, bodies[1], k, nblocks, tb);
                [&*ta, &*tb]
            };
            // SAFETY: as above, the CPU has the features `compress2` is compiled for.
            unsafe { state.compress2(blocks) };
        }
        // SAFETY: as above.
        unsafe { state.finish() }
    }

    /// Two SHA-256 states in SHA-NI's register layout: `[ABEF, CDGH]` per stream.
    struct State([[__m128i; 2]; 2]);

    impl State {
        /// # Safety
        /// The CPU must have SHA, SSE2, SSSE3 and SSE4.1.
        #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
        unsafe fn new() -> State {
            let [a, b, c, d, e, f, g, h] = H0.map(|w| w as i32);
            // _mm_set_epi32 takes the highest lane first.
            let abef = _mm_set_epi32(a, b, e, f);
            let cdgh = _mm_set_epi32(c, d, g, h);
            State([[abef, cdgh], [abef, cdgh]])
        }

        /// One 64-byte block into each stream, the two streams' rounds interleaved: every
        /// instruction of one stream is independent of the other's, so the core runs them in
        /// each other's latency gaps. The message words live in named registers (no indexed
        /// array), so the loop stays in registers whether or not it is unrolled.
        ///
        /// # Safety
        /// The CPU must have SHA, SSE2, SSSE3 and SSE4.1.
        #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
        #[inline]
        unsafe fn compress2(&mut self, blocks: [&[u8; 64]; 2]) {
            // Byte order of each 32-bit word reversed: message words are big-endian.
            let bswap = _mm_set_epi64x(0x0c0d_0e0f_0809_0a0b, 0x0405_0607_0001_0203);
            let load = |block: &[u8; 64], i: usize| -> __m128i {
                let bytes: &[u8; 16] = match block[16 * i..16 * i + 16].try_into() {
                    Ok(b) => b,
                    Err(_) => unreachable!("sixteen bytes"),
                };
                // SAFETY: `bytes` is 16 readable bytes; the load is unaligned. SSSE3 (pshufb)
                // is enabled for this function, whose caller guarantees the CPU has it.
                unsafe { _mm_shuffle_epi8(_mm_loadu_si128(bytes.as_ptr().cast()), bswap) }
            };
            let k4 = |g: usize| -> __m128i {
                let k: &[u32; 4] = match K[4 * g..4 * g + 4].try_into() {
                    Ok(k) => k,
                    Err(_) => unreachable!("four words"),
                };
                // SAFETY: `k` is 16 readable bytes; the load is unaligned.
                unsafe { _mm_loadu_si128(k.as_ptr().cast()) }
            };
            // Four rounds of one stream: W+K into the ABEF/CDGH pair. Each `sha256rnds2` does
            // two rounds and returns the new ABEF; the old ABEF becomes the new CDGH.
            macro_rules! rounds4 {
                ($abef:ident, $cdgh:ident, $wk:expr) => {{
                    let wk = $wk;
                    $cdgh = _mm_sha256rnds2_epu32($cdgh, $abef, wk);
                    $abef = _mm_sha256rnds2_epu32($abef, $cdgh, _mm_shuffle_epi32(wk, 0x0e));
                }};
            }
            // W[t..t+4] from W[t-16..t-12], W[t-12..t-8], W[t-8..t-4], W[t-4..t].
            macro_rules! schedule {
                ($w16:expr, $w12:expr, $w8:expr, $w4:expr) => {{
                    let x = _mm_sha256msg1_epu32($w16, $w12);
                    let x = _mm_add_epi32(x, _mm_alignr_epi8($w4, $w8, 4));
                    _mm_sha256msg2_epu32(x, $w4)
                }};
            }
            let saved = self.0;
            let [[mut a0, mut c0], [mut a1, mut c1]] = saved;
            let (mut x0, mut x1, mut x2, mut x3) = (
                load(blocks[0], 0),
                load(blocks[0], 1),
                load(blocks[0], 2),
                load(blocks[0], 3),
            );
            let (mut y0, mut y1, mut y2, mut y3) = (
                load(blocks[1], 0),
                load(blocks[1], 1),
                load(blocks[1], 2),
                load(blocks[1], 3),
            );
            for (g, (x, y)) in [(x0, y0), (x1, y1), (x2, y2), (x3, y3)]
                .into_iter()
                .enumerate()
            {
                let k = k4(g);
                rounds4!(a0, c0, _mm_add_epi32(x, k));
                rounds4!(a1, c1, _mm_add_epi32(y, k));
            }
            for g in 4..16 {
                let k = k4(g);
                let nx = schedule!(x0, x1, x2, x3);
                let ny = schedule!(y0, y1, y2, y3);
                rounds4!(a0, c0, _mm_add_epi32(nx, k));
                rounds4!(a1, c1, _mm_add_epi32(ny, k));
                (x0, x1, x2, x3) = (x1, x2, x3, nx);
                (y0, y1, y2, y3) = (y1, y2, y3, ny);
            }
            self.0 = [
                [
                    _mm_add_epi32(a0, saved[0][0]),
                    _mm_add_epi32(c0, saved[0][1]),
                ],
                [
                    _mm_add_epi32(a1, saved[1][0]),
                    _mm_add_epi32(c1, saved[1][1]),
                ],
            ];
        }

        /// The two digests.
        ///
        /// # Safety
        /// The CPU must have SHA, SSE2, SSSE3 and SSE4.1.
        #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
        unsafe fn finish(&self) -> [Digest32; 2] {
            let mut out = [[0u8; 32]; 2];
            for (s, o) in out.iter_mut().enumerate() {
                let mut abef = [0u32; 4];
                let mut cdgh = [0u32; 4];
                // SAFETY: each array is 16 writable bytes; the stores are unaligned.
                unsafe {
                    _mm_storeu_si128(abef.as_mut_ptr().cast::<__m128i>(), self.0[s][0]);
                    _mm_storeu_si128(cdgh.as_mut_ptr().cast::<__m128i>(), self.0[s][1]);
                }
                // Lane 0 is the lowest: abef = [F, E, B, A], cdgh = [H, G, D, C].
                let h = [
                    abef[3], abef[2], cdgh[3], cdgh[2], abef[1], abef[0], cdgh[1], cdgh[0],
                ];
                for (chunk, word) in o.chunks_exact_mut(4).zip(h) {
                    chunk.copy_from_slice(&word.to_be_bytes());
                }
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reference(prefix: &[u8], body: &[u8]) -> Digest32 {
        Sha256::new()
            .chain_update(prefix)
            .chain_update(body)
            .finalize()
            .into()
    }

    fn bytes(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// The FIPS 180-2 vector "abc" and the 56-byte one, through both streams.
    #[test]
    fn spec_vectors() {
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let [a, b] = digest_pair(b"a", b"bc", b"bc");
        assert_eq!(hex(&a), abc);
        assert_eq!(hex(&b), abc);
        let long = b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
        let [a, _] = digest_pair(b"", long, long);
        assert_eq!(
            hex(&a),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
    }

    fn hex(d: &[u8]) -> String {
        d.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Every length class: prefix and body lengths around each block and padding boundary
    /// (55/56/63/64 bytes and multiples), against the `sha2` crate.
    #[test]
    fn every_length_class_matches_sha2() {
        let prefixes = [0usize, 1, 31, 32, 55, 56, 63, 64, 65, 119, 120, 128, 256];
        for &p in &prefixes {
            let prefix = bytes(p, 7);
            for n in 0..=300usize {
                let (a, b) = (bytes(n, 1), bytes(n, 2));
                let [da, db] = digest_pair(&prefix, &a, &b);
                assert_eq!(da, reference(&prefix, &a), "prefix {p} body {n}");
                assert_eq!(db, reference(&prefix, &b), "prefix {p} body {n}");
            }
        }
    }

    #[test]
    fn verity_blocks_match_sha2() {
        let salt = bytes(32, 9);
        let data = bytes(4096 * 7, 3);
        let mut out = vec![0u8; 7 * 32];
        digest_chunks(&salt, &data, 4096, &mut out);
        for (i, o) in out.chunks(32).enumerate() {
            assert_eq!(
                o,
                reference(&salt, &data[i * 4096..(i + 1) * 4096]),
                "block {i}"
            );
        }
    }

    proptest! {
        #[test]
        fn random_inputs_match_sha2(
            prefix in proptest::collection::vec(any::<u8>(), 0..300),
            a in proptest::collection::vec(any::<u8>(), 0..5000),
            seed in any::<u64>(),
        ) {
            // b: same length, different bytes (and sometimes equal to a).
            let b: Vec<u8> = if seed % 5 == 0 {
                a.clone()
            } else {
                a.iter().enumerate().map(|(i, x)| x ^ (seed >> (i % 57)) as u8).collect()
            };
            let [da, db] = digest_pair(&prefix, &a, &b);
            prop_assert_eq!(da, reference(&prefix, &a));
            prop_assert_eq!(db, reference(&prefix, &b));
        }

        #[test]
        fn random_chunks_match_sha2(
            prefix in proptest::collection::vec(any::<u8>(), 0..100),
            chunk in 1usize..700,
            count in 0usize..9,
            fill in any::<u8>(),
        ) {
            let data: Vec<u8> = (0..chunk * count).map(|i| (i as u8) ^ fill).collect();
            let mut out = vec![0u8; count * 32];
            digest_chunks(&prefix, &data, chunk, &mut out);
            for (i, o) in out.chunks(32).enumerate() {
                prop_assert_eq!(o, &reference(&prefix, &data[i * chunk..(i + 1) * chunk])[..]);
            }
        }
    }

    /// The accelerated path must be the one tested where the CPU has it (CI machines do).
    #[test]
    fn reports_acceleration_where_the_cpu_has_sha_ni() {
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            is_accelerated(),
            std::is_x86_feature_detected!("sha") && std::is_x86_feature_detected!("sse4.1")
        );
    }
}
