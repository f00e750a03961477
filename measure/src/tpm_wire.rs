//! TPM 2.0 wire structures shared by every module that reads or writes them (quotes, PCR
//! policies, `.pcrsig` signatures, sealed blobs): algorithm identifiers, `TPM2B_*` size-prefixed
//! buffers and `TPML_PCR_SELECTION`. TPM 2.0 Library Part 2 (Structures); every integer is
//! big-endian.
//!
//! Hash algorithm identifiers are [`HashAlg`]'s associated constants (`HashAlg::SHA256.0` is
//! `TPM_ALG_SHA256`); the other `TPM_ALG_ID`s imgctl uses are here.

use crate::bank::HashAlg;
use crate::reader::Reader;
use crate::ParseError;

/// `TPM_ALG_RSA`.
pub const TPM_ALG_RSA: u16 = 0x0001;
/// `TPM_ALG_SHA256` (the same value as `HashAlg::SHA256.0`).
pub const TPM_ALG_SHA256: u16 = HashAlg::SHA256.0;
/// `TPM_ALG_NULL`.
pub const TPM_ALG_NULL: u16 = 0x0010;
/// `TPM_ALG_RSASSA` (RSASSA-PKCS1-v1_5).
pub const TPM_ALG_RSASSA: u16 = 0x0014;
/// `TPM_ALG_RSAPSS`.
pub const TPM_ALG_RSAPSS: u16 = 0x0016;
/// `TPM_ALG_ECDSA`.
pub const TPM_ALG_ECDSA: u16 = 0x0018;
/// `TPM_ALG_ECDAA`.
pub const TPM_ALG_ECDAA: u16 = 0x001a;
/// `TPM_ALG_ECC`.
pub const TPM_ALG_ECC: u16 = 0x0023;
/// `TPM_ECC_NIST_P256`.
pub const TPM_ECC_NIST_P256: u16 = 0x0003;
/// `TPM_ECC_NIST_P384`.
pub const TPM_ECC_NIST_P384: u16 = 0x0004;

/// A buffer too long for a `TPM2B_*` (whose size is a `u16`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} of {len} bytes does not fit a TPM2B (at most 65535)")]
pub struct TooLong {
    pub what: &'static str,
    pub len: usize,
}

/// Reads a `TPM2B_*`: a `u16` size, then that many bytes.
pub fn read_tpm2b<'a>(r: &mut Reader<'a>, what: &'static str) -> Result<&'a [u8], ParseError> {
    let n = r.u16_be(what)?;
    r.take(usize::from(n), what)
}

/// Appends a `TPM2B_*`: `data`'s length as a `u16`, then `data`.
pub fn put_tpm2b(out: &mut Vec<u8>, data: &[u8], what: &'static str) -> Result<(), TooLong> {
    let n = u16::try_from(data.len()).map_err(|_| TooLong {
        what,
        len: data.len(),
    })?;
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(data);
    Ok(())
}

/// Reads a whole buffer that must be exactly one `TPM2B_*` (a sealed blob's public or private
/// part as tpm2-tools and imgctl store them).
pub fn unwrap_tpm2b<'a>(data: &'a [u8], what: &'static str) -> Result<&'a [u8], ParseError> {
    let mut r = Reader::new(data);
    let body = read_tpm2b(&mut r, what)?;
    r.expect_end(what)?;
    Ok(body)
}

/// `TPML_PCR_SELECTION`: for each bank in order, the selected PCR indexes, ascending (bit `j` of
/// byte `i` of `pcrSelect` selects PCR `8i + j`).
pub fn read_pcr_selection_list(r: &mut Reader<'_>) -> Result<Vec<(HashAlg, Vec<u32>)>, ParseError> {
    let at = r.offset();
    let count = r.u32_be("TPML_PCR_SELECTION.count")?;
    // Each TPMS_PCR_SELECTION takes at least 3 bytes: bound the count before allocating.
    if count as usize > r.remaining() / 3 {
        return Err(ParseError::new(
            at,
            "TPML_PCR_SELECTION.count",
            format!("{count} selections cannot fit"),
        ));
    }
    let mut selections = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let bank = HashAlg(r.u16_be("TPMS_PCR_SELECTION.hash")?);
        let n = r.u8("TPMS_PCR_SELECTION.sizeofSelect")?;
        let bits = r.take(usize::from(n), "TPMS_PCR_SELECTION.pcrSelect")?;
        let pcrs = bits
            .iter()
            .enumerate()
            .flat_map(|(i, b)| {
                (0..8)
                    .filter(move |j| b & (1 << j) != 0)
                    .map(move |j| (i * 8 + j) as u32)
            })
            .collect();
        selections.push((bank, pcrs));
    }
    Ok(selections)
}

/// Appends a `TPML_PCR_SELECTION` with a 3-byte `pcrSelect` per bank (PCRs 0–23, what systemd
/// and tpm2-tools marshal for PC Client TPMs). Indexes above 23 are the caller's to refuse;
/// here they are an error too.
pub fn put_pcr_selection_list(
    out: &mut Vec<u8>,
    selections: &[(HashAlg, u32)],
) -> Result<(), TooLong> {
    let count = u32::try_from(selections.len()).map_err(|_| TooLong {
        what: "TPML_PCR_SELECTION",
        len: selections.len(),
    })?;
    out.extend_from_slice(&count.to_be_bytes());
    for (bank, mask) in selections {
        if mask >> 24 != 0 {
            return Err(TooLong {
                what: "pcrSelect (PCRs above 23)",
                len: 4,
            });
        }
        out.extend_from_slice(&bank.0.to_be_bytes());
        out.push(3);
        out.extend_from_slice(&mask.to_le_bytes()[..3]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// TPM 2.0 Part 2 §10.6.2: PCRs 0, 7 and 11 in SHA-256 are `00000001 000b 03 81 08 00`.
    #[test]
    fn pcr_selection_lists_round_trip_in_the_specs_layout() {
        let mut out = Vec::new();
        put_pcr_selection_list(&mut out, &[(HashAlg::SHA256, 1 | 1 << 7 | 1 << 11)]).unwrap();
        assert_eq!(hex::encode(&out), "00000001000b03810800");
        let mut r = Reader::new(&out);
        assert_eq!(
            read_pcr_selection_list(&mut r).unwrap(),
            vec![(HashAlg::SHA256, vec![0, 7, 11])]
        );
        assert!(put_pcr_selection_list(&mut Vec::new(), &[(HashAlg::SHA1, 1 << 24)]).is_err());
        let mut r = Reader::new(&[0xff, 0xff, 0xff, 0xff, 0]);
        assert!(read_pcr_selection_list(&mut r).is_err());
    }

    #[test]
    fn tpm2b_is_a_u16_size_then_the_bytes() {
        let mut out = Vec::new();
        put_tpm2b(&mut out, b"abc", "x").unwrap();
        assert_eq!(out, b"\x00\x03abc");
        assert_eq!(unwrap_tpm2b(&out, "x").unwrap(), b"abc");
        assert!(unwrap_tpm2b(b"\x00\x04abc", "x").is_err());
        assert!(unwrap_tpm2b(b"\x00\x02abc", "x").is_err());
        assert!(put_tpm2b(&mut out, &vec![0; 65536], "x").is_err());
    }
}
