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
