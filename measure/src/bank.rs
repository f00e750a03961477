//! TPM hash banks (TPM_ALG_ID per TCG Algorithm Registry) and PCR extend arithmetic.
//!
//! A bank is an open set in the specification, so it is an integer newtype with named
//! constants: unknown algorithm IDs parse, round-trip and are reported by number.

use std::fmt;
use std::str::FromStr;

use rayon::prelude::*;
use ring::digest;

/// A TPM hash algorithm identifier (`TPM_ALG_ID`), i.e. a PCR bank.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HashAlg(pub u16);

impl HashAlg {
    pub const SHA1: HashAlg = HashAlg(0x0004);
    pub const SHA256: HashAlg = HashAlg(0x000B);
    pub const SHA384: HashAlg = HashAlg(0x000C);
    pub const SHA512: HashAlg = HashAlg(0x000D);

    /// The four banks systemd-measure computes by default, in its (sorted) output order.
    pub const ALL: [HashAlg; 4] = [Self::SHA1, Self::SHA256, Self::SHA384, Self::SHA512];

    /// Lower-case name as systemd and tpm2-tools print it, if the algorithm is known.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::SHA1 => "sha1",
            Self::SHA256 => "sha256",
            Self::SHA384 => "sha384",
            Self::SHA512 => "sha512",
            _ => return None,
        })
    }

    /// Digest size in bytes, if the algorithm is one we can compute.
    pub fn digest_size(self) -> Option<usize> {
        self.ring_alg().map(|a| a.output_len())
    }

    fn ring_alg(self) -> Option<&'static digest::Algorithm> {
        Some(match self {
            Self::SHA1 => &digest::SHA1_FOR_LEGACY_USE_ONLY,
            Self::SHA256 => &digest::SHA256,
            Self::SHA384 => &digest::SHA384,
            Self::SHA512 => &digest::SHA512,
            _ => return None,
        })
    }

    /// Whether we can compute digests in this bank.
    pub fn is_supported(self) -> bool {
        self.ring_alg().is_some()
    }

    /// A streaming hasher for this bank.
    pub fn hasher(self) -> Result<Hasher, UnsupportedAlg> {
        if self == Self::SHA1 {
            // ring's SHA-1 does not use the SHA extensions; RustCrypto's does (3× faster here).
            return Ok(Hasher(HasherImpl::Sha1(sha1::Sha1::default())));
        }
        self.ring_alg()
            .map(|a| Hasher(HasherImpl::Ring(digest::Context::new(a))))
            .ok_or(UnsupportedAlg(self))
    }

    /// `H(data)` in this bank.
    pub fn hash(self, data: &[u8]) -> Result<Digest, UnsupportedAlg> {
        let mut h = self.hasher()?;
        h.update(data);
        Ok(h.finish())
    }

    /// `H(data)` of one large input with the fastest code this machine has: OpenSSL's for
    /// SHA-384 and SHA-512 (its AVX2 code hashes about 1.4x as many bytes per CPU-second as
    /// ring's and RustCrypto's here, `cargo run --release -p imgctl-measure --example
    /// sha_rates`), [`HashAlg::hash`] for the others, or should OpenSSL refuse (a restricted
    /// provider configuration): the digest is the same either way.
    pub fn hash_large(self, data: &[u8]) -> Result<Digest, UnsupportedAlg> {
        let md = match self {
            Self::SHA384 => Some(openssl::hash::MessageDigest::sha384()),
            Self::SHA512 => Some(openssl::hash::MessageDigest::sha512()),
            _ => None,
        };
        if let Some(Ok(d)) = md.map(|md| openssl::hash::hash(md, data)) {
            return Ok(Digest(d.to_vec()));
        }
        self.hash(data)
    }

    /// The all-zero reset value of a PCR in this bank.
    pub fn zero(self) -> Result<Digest, UnsupportedAlg> {
        self.digest_size()
            .map(|n| Digest(vec![0; n]))
            .ok_or(UnsupportedAlg(self))
    }
}

impl fmt::Debug for HashAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for HashAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "alg-0x{:04x}", self.0),
        }
    }
}

impl FromStr for HashAlg {
    type Err = UnknownBankName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|b| b.name() == Some(lower.as_str()))
            .ok_or_else(|| UnknownBankName(s.to_owned()))
    }
}

/// Banks serialise as their names (`sha256`); only the four known names deserialise.
impl serde::Serialize for HashAlg {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for HashAlg {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A PCR index of a PC Client TPM: 0–23, checked on construction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PcrIndex(u32);

impl PcrIndex {
    /// The highest PCR index.
    pub const MAX: u32 = 23;

    pub fn new(index: u32) -> Result<Self, InvalidPcrIndex> {
        if index <= Self::MAX {
            Ok(PcrIndex(index))
        } else {
            Err(InvalidPcrIndex(index.to_string()))
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for PcrIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for PcrIndex {
    type Err = InvalidPcrIndex;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse::<u32>()
            .ok()
            .filter(|i| *i <= Self::MAX)
            .map(PcrIndex)
            .ok_or_else(|| InvalidPcrIndex(s.to_owned()))
    }
}

/// A PCR index that is not 0–23.
#[derive(Debug, Clone, thiserror::Error)]
#[error("PCR index {0:?} is not 0–23")]
pub struct InvalidPcrIndex(pub String);

impl serde::Serialize for PcrIndex {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.0)
    }
}

/// Accepts an integer (`7`) or, for map keys in JSON, a decimal string (`"7"`).
impl<'de> serde::Deserialize<'de> for PcrIndex {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = PcrIndex;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a PCR index 0–23")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<PcrIndex, E> {
                u32::try_from(v)
                    .ok()
                    .and_then(|v| PcrIndex::new(v).ok())
                    .ok_or_else(|| E::custom(InvalidPcrIndex(v.to_string())))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<PcrIndex, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom(InvalidPcrIndex(v.to_string())))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PcrIndex, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A bank name that is not one of sha1, sha256, sha384, sha512.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown PCR bank {0:?} (expected sha1, sha256, sha384 or sha512)")]
pub struct UnknownBankName(pub String);

/// An algorithm we cannot compute.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("hash algorithm {0} is not supported")]
pub struct UnsupportedAlg(pub HashAlg);

/// A digest value of some bank.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub Vec<u8>);

impl Digest {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
    pub fn to_hex(&self) -> String {
        hex::encode(&self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// A streaming hash computation in one bank. Whichever implementation is fastest on this CPU
/// per algorithm (both use the SHA extensions / AVX2 where present).
#[derive(Clone)]
pub struct Hasher(HasherImpl);

#[derive(Clone)]
enum HasherImpl {
    Sha1(sha1::Sha1),
    Ring(digest::Context),
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            HasherImpl::Sha1(_) => f.write_str("Hasher(sha1)"),
            HasherImpl::Ring(c) => f.debug_tuple("Hasher").field(c.algorithm()).finish(),
        }
    }
}

impl Hasher {
    pub fn update(&mut self, data: &[u8]) {
        match &mut self.0 {
            HasherImpl::Sha1(h) => sha1::Digest::update(h, data),
            HasherImpl::Ring(c) => c.update(data),
        }
    }
    pub fn finish(self) -> Digest {
        match self.0 {
            HasherImpl::Sha1(h) => Digest(sha1::Digest::finalize(h).to_vec()),
            HasherImpl::Ring(c) => Digest(c.finish().as_ref().to_vec()),
        }
    }
}

/// A streaming hash in one bank with the fastest code this machine has, for large inputs fed
/// chunk by chunk: OpenSSL's for SHA-384 and SHA-512 (as [`HashAlg::hash_large`]), the
/// [`Hasher`] of the bank for the others. OpenSSL calls can fail, so `update` and `finish` do
/// too; should OpenSSL refuse the algorithm at the start, the [`Hasher`] is used instead.
pub struct FastHasher(FastImpl);

enum FastImpl {
    OpenSsl(HashAlg, openssl::hash::Hasher),
    Plain(Hasher),
}

impl fmt::Debug for FastHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            FastImpl::OpenSsl(b, _) => write!(f, "FastHasher({b}, openssl)"),
            FastImpl::Plain(h) => f.debug_tuple("FastHasher").field(h).finish(),
        }
    }
}

/// OpenSSL failed in the middle of a digest (it never does with its default provider).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{bank} digest failed in OpenSSL: {message}")]
pub struct HashFailed {
    pub bank: HashAlg,
    pub message: String,
}

impl FastHasher {
    pub fn new(bank: HashAlg) -> Result<Self, UnsupportedAlg> {
        let md = match bank {
            HashAlg::SHA384 => Some(openssl::hash::MessageDigest::sha384()),
            HashAlg::SHA512 => Some(openssl::hash::MessageDigest::sha512()),
            _ => None,
        };
        if let Some(Ok(h)) = md.map(openssl::hash::Hasher::new) {
            return Ok(FastHasher(FastImpl::OpenSsl(bank, h)));
        }
        Ok(FastHasher(FastImpl::Plain(bank.hasher()?)))
    }

    pub fn update(&mut self, data: &[u8]) -> Result<(), HashFailed> {
        match &mut self.0 {
            FastImpl::OpenSsl(bank, h) => h.update(data).map_err(|e| HashFailed {
                bank: *bank,
                message: e.to_string(),
            }),
            FastImpl::Plain(h) => {
                h.update(data);
                Ok(())
            }
        }
    }

    pub fn finish(self) -> Result<Digest, HashFailed> {
        match self.0 {
            FastImpl::OpenSsl(bank, mut h) => {
                h.finish()
                    .map(|d| Digest(d.to_vec()))
                    .map_err(|e| HashFailed {
                        bank,
                        message: e.to_string(),
                    })
            }
            FastImpl::Plain(h) => Ok(h.finish()),
        }
    }
}

/// Relative CPU cost per byte of a bank on one core (nanoseconds per 100 bytes, from
/// `cargo run --release -p imgctl-measure --example sha_rates` on a Zen 4 with SHA-NI: SHA-1
/// 1.91 GB/s, SHA-256 1.79, OpenSSL's SHA-384 0.86 and SHA-512 0.84), only to share out work.
pub fn cost_per_100_bytes(bank: HashAlg) -> u64 {
    match bank {
        HashAlg::SHA1 => 52,
        HashAlg::SHA256 => 56,
        HashAlg::SHA384 => 116,
        _ => 119,
    }
}

/// Splits `banks` into at most `workers` groups of about equal hashing cost, so that each group
/// can hash the same bytes on its own core. SHA-384 and SHA-512 always share a group: a
/// [`MultiDigest`] runs them as lanes of one multi-buffer computation, which costs about what
/// one of them costs alone. With four banks on two cores: SHA-384 + SHA-512 and SHA-1 + SHA-256.
pub fn split_banks(banks: &[HashAlg], workers: usize) -> Vec<Vec<HashAlg>> {
    let laned = |b: HashAlg| b == HashAlg::SHA384 || b == HashAlg::SHA512;
    // Units of work: the laned banks together (costed as the dearer one, ×1.2 for the second
    // lane), every other bank alone.
    let mut units: Vec<(u64, Vec<HashAlg>)> = Vec::new();
    let lanes: Vec<HashAlg> = banks.iter().copied().filter(|b| laned(*b)).collect();
    if !lanes.is_empty() {
        let dearest = lanes
            .iter()
            .map(|b| cost_per_100_bytes(*b))
            .max()
            .unwrap_or(0);
        let cost = if imgctl_sha512x4::is_accelerated() {
            dearest * (10 + 2 * (lanes.len() as u64 - 1)) / 10
        } else {
            lanes.iter().map(|b| cost_per_100_bytes(*b)).sum()
        };
        units.push((cost, lanes));
    }
    units.extend(
        banks
            .iter()
            .filter(|b| !laned(**b))
            .map(|b| (cost_per_100_bytes(*b), vec![*b])),
    );
    units.sort_by_key(|u| std::cmp::Reverse(u.0));
    let n = workers.clamp(1, units.len().max(1));
    let mut groups: Vec<(u64, Vec<HashAlg>)> = vec![(0, Vec::new()); n];
    for (cost, unit) in units {
        if let Some(g) = groups.iter_mut().min_by_key(|g| g.0) {
            g.0 += cost;
            g.1.extend(unit);
        }
    }
    groups
        .into_iter()
        .map(|g| g.1)
        .filter(|g| !g.is_empty())
        .collect()
}

/// Digests of several inputs in a few banks, fed chunk by chunk: one worker's share of the
/// banks ([`split_banks`]) over every input. Each chunk is hashed in each bank in turn while
/// it is still in the core's cache; the SHA-384 and SHA-512 digests of every input are lanes of
/// one [`imgctl_sha512x4::Lanes`], four compressed at once.
#[derive(Debug)]
pub struct MultiDigest {
    banks: Vec<HashAlg>,
    /// `[input][bank]`: the hasher of a bank that is not laned.
    hashers: Vec<Vec<Option<FastHasher>>>,
    /// `[input][bank]`: the lane of a laned bank.
    lane_of: Vec<Vec<Option<usize>>>,
    lanes: imgctl_sha512x4::Lanes,
}

impl MultiDigest {
    pub fn new(banks: &[HashAlg], inputs: usize) -> Result<Self, UnsupportedAlg> {
        let mut variants = Vec::new();
        let mut hashers = Vec::with_capacity(inputs);
        let mut lane_of = Vec::with_capacity(inputs);
        for _ in 0..inputs {
            let mut row = Vec::with_capacity(banks.len());
            let mut lanes = Vec::with_capacity(banks.len());
            for b in banks {
                let variant = match *b {
                    HashAlg::SHA384 => Some(imgctl_sha512x4::Variant::Sha384),
                    HashAlg::SHA512 => Some(imgctl_sha512x4::Variant::Sha512),
                    _ => None,
                };
                match variant {
                    Some(v) => {
                        lanes.push(Some(variants.len()));
                        variants.push(v);
                        row.push(None);
                    }
                    None => {
                        lanes.push(None);
                        row.push(Some(FastHasher::new(*b)?));
                    }
                }
            }
            hashers.push(row);
            lane_of.push(lanes);
        }
        Ok(MultiDigest {
            banks: banks.to_vec(),
            hashers,
            lane_of,
            lanes: imgctl_sha512x4::Lanes::new(&variants),
        })
    }

    /// The banks this worker hashes.
    pub fn banks(&self) -> &[HashAlg] {
        &self.banks
    }

    /// Feeds the next bytes of input `input` (an index below the `inputs` given to `new`).
    pub fn update(&mut self, input: usize, data: &[u8]) -> Result<(), HashFailed> {
        self.update_many(&[(input, data)])
    }

    /// Feeds the next bytes of several inputs at once (each input at most once), so that their
    /// SHA-384/SHA-512 lanes are compressed together.
    pub fn update_many(&mut self, parts: &[(usize, &[u8])]) -> Result<(), HashFailed> {
        let mut laned: Vec<&[u8]> = vec![&[]; self.lanes.len()];
        for &(input, data) in parts {
            let (Some(hashers), Some(lanes)) =
                (self.hashers.get_mut(input), self.lane_of.get(input))
            else {
                return Err(HashFailed {
                    bank: self.banks.first().copied().unwrap_or(HashAlg(0)),
                    message: format!("no input {input}"),
                });
            };
            for h in hashers.iter_mut().flatten() {
                h.update(data)?;
            }
            for &l in lanes.iter().flatten() {
                laned[l] = data;
            }
        }
        if !self.lanes.is_empty() {
            self.lanes.update(&laned);
        }
        Ok(())
    }

    /// `[input][bank]` digests, the banks in the order of [`MultiDigest::banks`].
    pub fn finish(self) -> Result<Vec<Vec<Digest>>, HashFailed> {
        let laned = self.lanes.finish();
        self.hashers
            .into_iter()
            .zip(self.lane_of)
            .map(|(row, lanes)| {
                row.into_iter()
                    .zip(lanes)
                    .map(|(h, lane)| match (h, lane) {
                        (Some(h), _) => h.finish(),
                        (None, Some(l)) => Ok(Digest(laned.get(l).cloned().unwrap_or_default())),
                        (None, None) => Err(HashFailed {
                            bank: HashAlg(0),
                            message: "a bank with neither a hasher nor a lane".into(),
                        }),
                    })
                    .collect()
            })
            .collect()
    }
}

/// The value of one PCR in one bank, with TPM2_PCR_Extend semantics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pcr {
    bank: HashAlg,
    value: Digest,
}

impl Pcr {
    /// A PCR in its reset state (all zeros).
    pub fn reset(bank: HashAlg) -> Result<Self, UnsupportedAlg> {
        Ok(Pcr {
            bank,
            value: bank.zero()?,
        })
    }

    /// A PCR holding `value`, which must have the bank's digest size.
    pub fn with_value(bank: HashAlg, value: Digest) -> Result<Self, UnsupportedAlg> {
        match bank.digest_size() {
            Some(n) if n == value.0.len() => Ok(Pcr { bank, value }),
            _ => Err(UnsupportedAlg(bank)),
        }
    }

    pub fn bank(&self) -> HashAlg {
        self.bank
    }

    pub fn value(&self) -> &Digest {
        &self.value
    }

    /// `PCR := H(PCR || digest)`. The caller passes a digest of this bank's size.
    pub fn extend(&mut self, digest: &Digest) {
        let mut h = self
            .bank
            .hasher()
            .expect("a Pcr only exists for a supported bank");
        h.update(&self.value.0);
        h.update(&digest.0);
        self.value = h.finish();
    }

    /// `PCR := H(PCR || H(data))`, the way the stub and systemd-pcrphase measure bytes.
    pub fn extend_data(&mut self, data: &[u8]) {
        let d = self
            .bank
            .hash(data)
            .expect("a Pcr only exists for a supported bank");
        self.extend(&d);
    }
}

/// Hashes `data` in every bank of `banks`, the banks in parallel (one pass of the data per
/// bank, each on its own core where there is one).
pub fn hash_all(banks: &[HashAlg], data: &[u8]) -> Result<Vec<Digest>, UnsupportedAlg> {
    banks.par_iter().map(|b| b.hash(data)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_ids_display() {
        for b in HashAlg::ALL {
            assert_eq!(b.name().unwrap().parse::<HashAlg>().unwrap(), b);
        }
        assert_eq!("SHA256".parse::<HashAlg>().unwrap(), HashAlg::SHA256);
        assert!("md5".parse::<HashAlg>().is_err());
        assert_eq!(HashAlg(0x0012).to_string(), "alg-0x0012");
        assert!(!HashAlg(0x0012).is_supported());
    }

    #[test]
    fn every_bank_agrees_with_an_independent_implementation() {
        use sha2::Digest as _;
        let data = b"imgctl";
        // The NIST "abc" vector for SHA-1 (FIPS 180-2 appendix A.1).
        assert_eq!(
            HashAlg::SHA1.hash(b"abc").unwrap().to_hex(),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        assert_eq!(
            HashAlg::SHA1.hash(data).unwrap().0,
            sha1::Sha1::digest(data).to_vec()
        );
        assert_eq!(
            HashAlg::SHA256.hash(data).unwrap().0,
            sha2::Sha256::digest(data).to_vec()
        );
        assert_eq!(
            HashAlg::SHA384.hash(data).unwrap().0,
            sha2::Sha384::digest(data).to_vec()
        );
        assert_eq!(
            HashAlg::SHA512.hash(data).unwrap().0,
            sha2::Sha512::digest(data).to_vec()
        );
    }

    #[test]
    fn split_banks_keeps_the_laned_banks_together() {
        let g = split_banks(&HashAlg::ALL, 2);
        assert_eq!(g.len(), 2);
        let laned = |b: &HashAlg| *b == HashAlg::SHA384 || *b == HashAlg::SHA512;
        let with_lanes: Vec<&Vec<HashAlg>> = g.iter().filter(|g| g.iter().any(laned)).collect();
        assert_eq!(with_lanes.len(), 1, "{g:?}");
        assert_eq!(
            with_lanes[0].iter().filter(|b| laned(b)).count(),
            2,
            "{g:?}"
        );
        assert_eq!(g.iter().map(Vec::len).sum::<usize>(), 4, "{g:?}");
        assert_eq!(
            split_banks(&[HashAlg::SHA256], 2),
            vec![vec![HashAlg::SHA256]]
        );
        assert_eq!(split_banks(&HashAlg::ALL, 1)[0].len(), 4);
    }

    #[test]
    fn multi_digest_in_chunks_equals_rustcrypto_in_one_go() {
        use sha2::Digest as _;
        let a: Vec<u8> = (0..300_001u32).map(|i| (i * 31 % 253) as u8).collect();
        let b = b"second input".to_vec();
        let mut m = MultiDigest::new(&HashAlg::ALL, 2).unwrap();
        for c in a.chunks(65_537) {
            m.update(0, c).unwrap();
        }
        m.update(1, &b[..3]).unwrap();
        m.update_many(&[(1, &b[3..])]).unwrap();
        assert!(m.update(2, &b).is_err());
        let d = m.finish().unwrap();
        for (i, data) in [&a, &b].into_iter().enumerate() {
            assert_eq!(d[i][0].0, sha1::Sha1::digest(data).to_vec());
            assert_eq!(d[i][1].0, sha2::Sha256::digest(data).to_vec());
            assert_eq!(d[i][2].0, sha2::Sha384::digest(data).to_vec());
            assert_eq!(d[i][3].0, sha2::Sha512::digest(data).to_vec());
        }
    }

    #[test]
    fn extend_matches_the_published_pcrphase_vector() {
        // ../shared/reference/systemd.md §9 E1: `.linux\0`, "A", then "enter-initrd" (sha256).
        let mut p = Pcr::reset(HashAlg::SHA256).unwrap();
        p.extend_data(b".linux\0");
        p.extend_data(b"A");
        assert_eq!(
            p.value().to_hex(),
            "0a7ff16282ca19a55360c6e428cad84a2965eeaf5bbe24010ca598c2fbe5d92a"
        );
        p.extend_data(b"enter-initrd");
        assert_eq!(
            p.value().to_hex(),
            "2ccb64e2494a299a47994c804f7937bb5cbef8a849f2ca2d43d64f7c73e262c7"
        );
    }
}
