//! SHA-384 and SHA-512 computations advanced four at a time on one core ("multi-buffer"
//! hashing, as isa-l_crypto's `mb_sha512` does).
//!
//! Why a crate of its own: x86 CPUs without the SHA-512 extensions (Zen 4 among them) hash one
//! SHA-512 stream at about 0.85 GB/s, half the SHA-NI rate of SHA-256, and a prediction or a
//! build hashes the same bytes in SHA-384 and SHA-512 (and a build twice more: the file and its
//! Authenticode image). SHA-384 and SHA-512 share one compression function on 64-bit words, so
//! four independent streams fit the four 64-bit lanes of a 256-bit register: with AVX-512VL's
//! rotates and three-input logic each round is a handful of instructions for all four. No
//! maintained crate offers this, and it needs `unsafe` intrinsics, which the rest of the
//! workspace forbids: this crate holds them and nothing else. The CPU features are detected at
//! run time; without them every block goes through the portable compression function here,
//! checked against the `sha2` crate by the tests.

#![deny(unsafe_op_in_unsafe_fn)]

/// Which member of the SHA-512 family a lane computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    Sha384,
    Sha512,
}

impl Variant {
    fn iv(self) -> [u64; 8] {
        match self {
            Variant::Sha384 => [
                0xcbbb9d5dc1059ed8,
                0x629a292a367cd507,
                0x9159015a3070dd17,
                0x152fecd8f70e5939,
                0x67332667ffc00b31,
                0x8eb44a8768581511,
                0xdb0c2e0d64f98fa7,
                0x47b5481dbefa4fa4,
            ],
            Variant::Sha512 => [
                0x6a09e667f3bcc908,
                0xbb67ae8584caa73b,
                0x3c6ef372fe94f82b,
                0xa54ff53a5f1d36f1,
                0x510e527fade682d1,
                0x9b05688c2b3e6c1f,
                0x1f83d9abfb41bd6b,
                0x5be0cd19137e2179,
            ],
        }
    }

    /// The digest's length in bytes.
    pub fn output_len(self) -> usize {
        match self {
            Variant::Sha384 => 48,
            Variant::Sha512 => 64,
        }
    }
}

const BLOCK: usize = 128;

const K: [u64; 80] = [
    0x428a2f98d728ae22,
    0x7137449123ef65cd,
    0xb5c0fbcfec4d3b2f,
    0xe9b5dba58189dbbc,
    0x3956c25bf348b538,
    0x59f111f1b605d019,
    0x923f82a4af194f9b,
    0xab1c5ed5da6d8118,
    0xd807aa98a3030242,
    0x12835b0145706fbe,
    0x243185be4ee4b28c,
    0x550c7dc3d5ffb4e2,
    0x72be5d74f27b896f,
    0x80deb1fe3b1696b1,
    0x9bdc06a725c71235,
    0xc19bf174cf692694,
    0xe49b69c19ef14ad2,
    0xefbe4786384f25e3,
    0x0fc19dc68b8cd5b5,
    0x240ca1cc77ac9c65,
    0x2de92c6f592b0275,
    0x4a7484aa6ea6e483,
    0x5cb0a9dcbd41fbd4,
    0x76f988da831153b5,
    0x983e5152ee66dfab,
    0xa831c66d2db43210,
    0xb00327c898fb213f,
    0xbf597fc7beef0ee4,
    0xc6e00bf33da88fc2,
    0xd5a79147930aa725,
    0x06ca6351e003826f,
    0x142929670a0e6e70,
    0x27b70a8546d22ffc,
    0x2e1b21385c26c926,
    0x4d2c6dfc5ac42aed,
    0x53380d139d95b3df,
    0x650a73548baf63de,
    0x766a0abb3c77b2a8,
    0x81c2c92e47edaee6,
    0x92722c851482353b,
    0xa2bfe8a14cf10364,
    0xa81a664bbc423001,
    0xc24b8b70d0f89791,
    0xc76c51a30654be30,
    0xd192e819d6ef5218,
    0xd69906245565a910,
    0xf40e35855771202a,
    0x106aa07032bbd1b8,
    0x19a4c116b8d2d0c8,
    0x1e376c085141ab53,
    0x2748774cdf8eeb99,
    0x34b0bcb5e19b48a8,
    0x391c0cb3c5c95a63,
    0x4ed8aa4ae3418acb,
    0x5b9cca4f7763e373,
    0x682e6ff3d6b2b8a3,
    0x748f82ee5defb2fc,
    0x78a5636f43172f60,
    0x84c87814a1f0ab72,
    0x8cc702081a6439ec,
    0x90befffa23631e28,
    0xa4506cebde82bde9,
    0xbef9a3f7b2c67915,
    0xc67178f2e372532b,
    0xca273eceea26619c,
    0xd186b8c721c0c207,
    0xeada7dd6cde0eb1e,
    0xf57d4f7fee6ed178,
    0x06f067aa72176fba,
    0x0a637dc5a2c898a6,
    0x113f9804bef90dae,
    0x1b710b35131c471b,
    0x28db77f523047d84,
    0x32caab7b40c72493,
    0x3c9ebe0a15c9bebc,
    0x431d67c49c100d4c,
    0x4cc5d4becb3e42b6,
    0x597f299cfc657e2a,
    0x5fcb6fab3ad6faec,
    0x6c44198c4a475817,
];

/// The big-endian 64-bit word at `b[at..at + 8]`.
#[inline(always)]
fn be64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(w)
}

/// The portable compression function (FIPS 180-4, 6.4.2) over whole blocks.
fn compress1(h: &mut [u64; 8], blocks: &[u8]) {
    for block in blocks.chunks_exact(BLOCK) {
        let mut w = [0u64; 80];
        for (t, word) in w.iter_mut().take(16).enumerate() {
            *word = be64(block, t * 8);
        }
        for t in 16..80 {
            let s0 = w[t - 15].rotate_right(1) ^ w[t - 15].rotate_right(8) ^ (w[t - 15] >> 7);
            let s1 = w[t - 2].rotate_right(19) ^ w[t - 2].rotate_right(61) ^ (w[t - 2] >> 6);
            w[t] = w[t - 16]
                .wrapping_add(s0)
                .wrapping_add(w[t - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = *h;
        for t in 0..80 {
            let s1 = e.rotate_right(14) ^ e.rotate_right(18) ^ e.rotate_right(41);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[t])
                .wrapping_add(w[t]);
            let s0 = a.rotate_right(28) ^ a.rotate_right(34) ^ a.rotate_right(39);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (x, v) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *x = x.wrapping_add(v);
        }
    }
}

/// Whether the four-lane AVX-512VL code runs on this CPU (otherwise the portable code does).
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

#[derive(Debug, Clone)]
struct Lane {
    variant: Variant,
    h: [u64; 8],
    buf: [u8; BLOCK],
    buf_len: usize,
    /// Bytes fed so far (SHA-512 counts message length in 128 bits).
    total: u128,
}

/// Several SHA-384/SHA-512 computations, each fed its own bytes, whose blocks are compressed
/// four lanes at a time. Lanes may be fed different lengths at each [`Lanes::update`]; blocks
/// are paired up across lanes as they become whole.
#[derive(Debug, Clone)]
pub struct Lanes {
    lanes: Vec<Lane>,
    simd: bool,
}

impl Lanes {
    /// One lane per variant, in this order.
    pub fn new(variants: &[Variant]) -> Lanes {
        Lanes::with_simd(variants, is_accelerated())
    }

    fn with_simd(variants: &[Variant], simd: bool) -> Lanes {
        Lanes {
            lanes: variants
                .iter()
                .map(|&variant| Lane {
                    variant,
                    h: variant.iv(),
                    buf: [0; BLOCK],
                    buf_len: 0,
                    total: 0,
                })
                .collect(),
            simd,
        }
    }

    /// How many lanes there are.
    pub fn len(&self) -> usize {
        self.lanes.len()
    }

    /// Whether there is no lane.
    pub fn is_empty(&self) -> bool {
        self.lanes.is_empty()
    }

    /// Feeds `data[i]` to lane `i`.
    ///
    /// # Panics
    /// If `data` does not hold one slice per lane.
    pub fn update(&mut self, data: &[&[u8]]) {
        assert_eq!(data.len(), self.lanes.len(), "one slice per lane");
        // A lane with a partial block completes it first.
        let mut rest: Vec<&[u8]> = Vec::with_capacity(data.len());
        let mut full: Vec<usize> = Vec::new();
        for (i, (lane, d)) in self.lanes.iter_mut().zip(data).enumerate() {
            lane.total += d.len() as u128;
            let mut d = *d;
            if lane.buf_len > 0 {
                let take = (BLOCK - lane.buf_len).min(d.len());
                lane.buf[lane.buf_len..lane.buf_len + take].copy_from_slice(&d[..take]);
                lane.buf_len += take;
                d = &d[take..];
                if lane.buf_len == BLOCK {
                    full.push(i);
                }
            }
            rest.push(d);
        }
        if !full.is_empty() {
            let bufs: Vec<[u8; BLOCK]> = full.iter().map(|&i| self.lanes[i].buf).collect();
            let jobs: Vec<(usize, &[u8])> = full
                .iter()
                .zip(&bufs)
                .map(|(&i, b)| (i, b.as_slice()))
                .collect();
            self.compress(&jobs);
            for &i in &full {
                self.lanes[i].buf_len = 0;
            }
        }
        // Whole blocks straight from the input.
        let jobs: Vec<(usize, &[u8])> = rest
            .iter()
            .enumerate()
            .map(|(i, d)| (i, &d[..d.len() - d.len() % BLOCK]))
            .filter(|(_, d)| !d.is_empty())
            .collect();
        self.compress(&jobs);
        // The tail waits for more.
        for (lane, d) in self.lanes.iter_mut().zip(&rest) {
            let tail = &d[d.len() - d.len() % BLOCK..];
            lane.buf[lane.buf_len..lane.buf_len + tail.len()].copy_from_slice(tail);
            lane.buf_len += tail.len();
        }
    }

    /// Compresses each job's whole blocks into its lane, four lanes at a time.
    fn compress(&mut self, jobs: &[(usize, &[u8])]) {
        if !self.simd {
            for &(i, d) in jobs {
                compress1(&mut self.lanes[i].h, d);
            }
            return;
        }
        let mut at: Vec<usize> = vec![0; jobs.len()];
        loop {
            // Up to four jobs with blocks left, run together for as many blocks as the
            // shortest of them has.
            let group: Vec<usize> = (0..jobs.len())
                .filter(|&j| at[j] < jobs[j].1.len())
                .take(4)
                .collect();
            if group.is_empty() {
                return;
            }
            let n = group
                .iter()
                .map(|&j| (jobs[j].1.len() - at[j]) / BLOCK)
                .min()
                .unwrap_or(0);
            let mut states = [[0u64; 8]; 4];
            let mut data: [&[u8]; 4] = [&[]; 4];
            let mut active = [false; 4];
            for (slot, &j) in group.iter().enumerate() {
                states[slot] = self.lanes[jobs[j].0].h;
                data[slot] = &jobs[j].1[at[j]..at[j] + n * BLOCK];
                active[slot] = true;
            }
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `simd` is only set when `x86::supported()` found AVX2, AVX-512F and
            // AVX-512VL on this CPU; every active lane holds exactly `n` blocks.
            unsafe {
                x86::compress4(&mut states, &data, n, active)
            };
            #[cfg(not(target_arch = "x86_64"))]
            for slot in 0..group.len() {
                compress1(&mut states[slot], data[slot]);
            }
            for (slot, &j) in group.iter().enumerate() {
                self.lanes[jobs[j].0].h = states[slot];
                at[j] += n * BLOCK;
            }
        }
    }

    /// Each lane's digest, in lane order.
    pub fn finish(mut self) -> Vec<Vec<u8>> {
        let mut pads: Vec<Vec<u8>> = Vec::with_capacity(self.lanes.len());
        for lane in &self.lanes {
            let mut p = lane.buf[..lane.buf_len].to_vec();
            p.push(0x80);
            while p.len() % BLOCK != BLOCK - 16 {
                p.push(0);
            }
            p.extend_from_slice(&(lane.total << 3).to_be_bytes());
            pads.push(p);
        }
        let jobs: Vec<(usize, &[u8])> = pads.iter().map(|p| p.as_slice()).enumerate().collect();
        self.compress(&jobs);
        self.lanes
            .iter()
            .map(|l| {
                let mut out: Vec<u8> = l.h.iter().flat_map(|w| w.to_be_bytes()).collect();
                out.truncate(l.variant.output_len());
                out
            })
            .collect()
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{be64, BLOCK, K};
    use std::arch::x86_64::*;

    pub fn supported() -> bool {
        std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512vl")
    }

    /// Compresses `n` blocks of each active lane's `data` into its `h`, the four lanes side by
    /// side in the 64-bit lanes of 256-bit registers. Inactive lanes are computed on zeros and
    /// left as they were.
    ///
    /// # Safety
    /// The CPU must have AVX2, AVX-512F and AVX-512VL ([`supported`]).
    #[target_feature(enable = "avx2,avx512f,avx512vl")]
    pub unsafe fn compress4(h: &mut [[u64; 8]; 4], data: &[&[u8]; 4], n: usize, active: [bool; 4]) {
        macro_rules! add {
            ($a:expr, $b:expr $(,)?) => {
                _mm256_add_epi64($a, $b)
            };
        }
        let lane = |slot: usize, j: usize| h[slot][j] as i64;
        let mut s: [__m256i; 8] = std::array::from_fn(|j| {
            _mm256_set_epi64x(lane(3, j), lane(2, j), lane(1, j), lane(0, j))
        });
        for k in 0..n {
            let word = |slot: usize, t: usize| -> i64 {
                if active[slot] {
                    be64(data[slot], k * BLOCK + t * 8) as i64
                } else {
                    0
                }
            };
            let mut w: [__m256i; 16] = std::array::from_fn(|t| {
                _mm256_set_epi64x(word(3, t), word(2, t), word(1, t), word(0, t))
            });
            let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = s;
            for (t, kt) in K.iter().enumerate() {
                let wt = if t < 16 {
                    w[t]
                } else {
                    let w15 = w[(t + 1) & 15];
                    let w2 = w[(t + 14) & 15];
                    let s0 = _mm256_ternarylogic_epi64::<0x96>(
                        _mm256_ror_epi64::<1>(w15),
                        _mm256_ror_epi64::<8>(w15),
                        _mm256_srli_epi64::<7>(w15),
                    );
                    let s1 = _mm256_ternarylogic_epi64::<0x96>(
                        _mm256_ror_epi64::<19>(w2),
                        _mm256_ror_epi64::<61>(w2),
                        _mm256_srli_epi64::<6>(w2),
                    );
                    let new = add!(add!(w[t & 15], s0), add!(w[(t + 9) & 15], s1));
                    w[t & 15] = new;
                    new
                };
                let s1 = _mm256_ternarylogic_epi64::<0x96>(
                    _mm256_ror_epi64::<14>(e),
                    _mm256_ror_epi64::<18>(e),
                    _mm256_ror_epi64::<41>(e),
                );
                let ch = _mm256_ternarylogic_epi64::<0xca>(e, f, g);
                let t1 = add!(
                    add!(hh, s1),
                    add!(ch, add!(wt, _mm256_set1_epi64x(*kt as i64))),
                );
                let s0 = _mm256_ternarylogic_epi64::<0x96>(
                    _mm256_ror_epi64::<28>(a),
                    _mm256_ror_epi64::<34>(a),
                    _mm256_ror_epi64::<39>(a),
                );
                let maj = _mm256_ternarylogic_epi64::<0xe8>(a, b, c);
                hh = g;
                g = f;
                f = e;
                e = add!(d, t1);
                d = c;
                c = b;
                b = a;
                a = add!(t1, add!(s0, maj));
            }
            for (x, v) in s.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
                *x = add!(*x, v);
            }
        }
        for (j, v) in s.iter().enumerate() {
            let mut out = [0u64; 4];
            // SAFETY: `out` is 32 writable bytes; the store is unaligned.
            unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast(), *v) };
            for slot in 0..4 {
                if active[slot] {
                    h[slot][j] = out[slot];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use sha2::Digest as _;

    fn reference(v: Variant, data: &[u8]) -> Vec<u8> {
        match v {
            Variant::Sha384 => sha2::Sha384::digest(data).to_vec(),
            Variant::Sha512 => sha2::Sha512::digest(data).to_vec(),
        }
    }

    /// Lane `i` hashes `msgs[i]`, fed in pieces of the sizes `steps` cycles through.
    fn lanes_digest(
        simd: bool,
        variants: &[Variant],
        msgs: &[Vec<u8>],
        steps: &[usize],
    ) -> Vec<Vec<u8>> {
        let mut l = Lanes::with_simd(variants, simd);
        let mut at = vec![0usize; msgs.len()];
        let mut round = 0;
        while at.iter().zip(msgs).any(|(a, m)| *a < m.len()) {
            let pieces: Vec<&[u8]> = msgs
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    let step = steps[(round + i) % steps.len()];
                    let end = (at[i] + step).min(m.len());
                    let p = &m[at[i]..end];
                    at[i] = end;
                    p
                })
                .collect();
            l.update(&pieces);
            round += 1;
        }
        l.finish()
    }

    #[test]
    fn known_answers_fips_180_4() {
        // FIPS 180-4 examples: "abc".
        let l = {
            let mut l = Lanes::new(&[Variant::Sha384, Variant::Sha512]);
            l.update(&[b"abc", b"abc"]);
            l.finish()
        };
        assert_eq!(
            l[0],
            hex("cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed8086072ba1e7cc2358baeca134c825a7")
        );
        assert_eq!(
            l[1],
            hex("ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f")
        );
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap_or(0))
            .collect()
    }

    #[test]
    fn every_length_class_in_every_lane_count() {
        for lanes in 1..=6 {
            for len in [
                0usize,
                1,
                111,
                112,
                127,
                128,
                129,
                239,
                240,
                255,
                256,
                1000,
                4096 + 17,
            ] {
                let variants: Vec<Variant> = (0..lanes)
                    .map(|i| {
                        if i % 2 == 0 {
                            Variant::Sha384
                        } else {
                            Variant::Sha512
                        }
                    })
                    .collect();
                let msgs: Vec<Vec<u8>> = (0..lanes)
                    .map(|i| (0..len + i * 3).map(|b| (b * 7 + i) as u8).collect())
                    .collect();
                for simd in [false, is_accelerated()] {
                    let got = lanes_digest(simd, &variants, &msgs, &[len.max(1)]);
                    for i in 0..lanes {
                        assert_eq!(
                            got[i],
                            reference(variants[i], &msgs[i]),
                            "lanes {lanes} len {len} lane {i} simd {simd}"
                        );
                    }
                }
            }
        }
    }

    proptest! {
        #[test]
        fn equals_sha2_whatever_the_lanes_lengths_and_pieces(
            msgs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..1200), 1..7),
            steps in proptest::collection::vec(1usize..400, 1..5),
            kinds in proptest::collection::vec(any::<bool>(), 7),
        ) {
            let variants: Vec<Variant> = (0..msgs.len())
                .map(|i| if kinds[i] { Variant::Sha384 } else { Variant::Sha512 })
                .collect();
            for simd in [false, is_accelerated()] {
                let got = lanes_digest(simd, &variants, &msgs, &steps);
                for i in 0..msgs.len() {
                    prop_assert_eq!(&got[i], &reference(variants[i], &msgs[i]));
                }
            }
        }
    }
}
