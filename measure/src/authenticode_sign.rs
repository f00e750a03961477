//! The PE side of Authenticode signing: the attribute certificate table, the content a signature
//! signs, and the image a signature is attached to. Pure: bytes in, bytes out; the CMS
//! SignedData itself (keys, certificates, signed attributes) is made by `imgctl-extensions`.
//!
//! Per "Windows Authenticode Portable Executable Signature Format" and the PE/COFF
//! specification ("The Attribute Certificate Table (Image Only)"):
//!
//! - The Certificate Table data directory (index 4) holds a *file offset* and a size; the table
//!   is a sequence of `WIN_CERTIFICATE { u32 dwLength; u16 wRevision; u16 wCertificateType;
//!   u8 bCertificate[] }`, each starting 8-byte aligned (`dwLength` excludes the padding). We
//!   write revision 0x0200 (`WIN_CERT_REVISION_2_0`) and type 0x0002
//!   (`WIN_CERT_TYPE_PKCS_SIGNED_DATA`), as sbsign does.
//! - The table sits at the end of the file and is not hashed. The image is zero-padded to 8
//!   bytes before signing and that padding *is* hashed (sbsign's `image_load` does the same;
//!   EDK2 wants the table aligned), so for an image whose size is a multiple of 8 the
//!   Authenticode hash is the same before and after signing.
//! - The signed content is `SpcIndirectDataContent { data SpcAttributeTypeAndOptionalValue {
//!   type SPC_PE_IMAGE_DATA_OBJID, value SpcPeImageData { flags '', file [0] { [2] file
//!   [0] unicode "<<<Obsolete>>>" } } }, messageDigest DigestInfo { sha256 NULL, hash } }`,
//!   exactly the DER sbsign (`idc.c`) writes; its message digest is over the content octets
//!   of that SEQUENCE (without its tag and length), as Authenticode specifies.
//! - The optional header's `CheckSum` is the PE checksum of the output (16-bit one's-complement
//!   sum of the file without the CheckSum field, plus the file length), as sbsign and
//!   `osslsigncode` compute it.

use crate::authenticode::authenticode_digests;
use crate::bank::HashAlg;
use crate::pe::{PeFile, DIR_SECURITY};
use crate::{Error, ParseError};

/// `WIN_CERT_REVISION_2_0`.
pub const WIN_CERT_REVISION_2_0: u16 = 0x0200;
/// `WIN_CERT_TYPE_PKCS_SIGNED_DATA`.
pub const WIN_CERT_TYPE_PKCS_SIGNED_DATA: u16 = 0x0002;
/// Size of the `WIN_CERTIFICATE` header.
pub const WIN_CERTIFICATE_HEADER: usize = 8;

/// One entry of the attribute certificate table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WinCertificate<'a> {
    /// File offset of the entry's header.
    pub offset: usize,
    pub revision: u16,
    pub certificate_type: u16,
    /// `bCertificate`: for type 2, a DER PKCS#7 SignedData.
    pub certificate: &'a [u8],
}

/// Where the certificate table is: `None` when the directory is absent or empty.
fn table_range(pe: &PeFile<'_>) -> Result<Option<(usize, usize)>, ParseError> {
    let Some(d) = pe.data_directory(DIR_SECURITY) else {
        return Ok(None);
    };
    if d.size == 0 {
        return Ok(None);
    }
    let at = pe.data_directories_offset + DIR_SECURITY * 8;
    let start = d.virtual_address as usize;
    let end = start.checked_add(d.size as usize);
    match end {
        Some(end) if end == pe.data.len() && start >= pe.size_of_headers as usize => {
            Ok(Some((start, end)))
        }
        Some(end) if end <= pe.data.len() => Err(ParseError::new(
            at,
            "Certificate Table",
            format!(
                "the certificate table {start:#x}..{end:#x} is not at the end of the file \
                 ({:#x} bytes) after the headers, where Authenticode puts it",
                pe.data.len()
            ),
        )),
        _ => Err(ParseError::new(
            at,
            "Certificate Table",
            format!(
                "the certificate table {start:#x}+{:#x} runs past the end of the file ({:#x} bytes)",
                d.size,
                pe.data.len()
            ),
        )),
    }
}

/// The entries of the image's attribute certificate table, each checked: inside the table,
/// 8-byte aligned, `dwLength` at least the header. Empty for an unsigned image.
pub fn certificate_table<'a>(pe: &PeFile<'a>) -> Result<Vec<WinCertificate<'a>>, ParseError> {
    let Some((start, end)) = table_range(pe)? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    let mut at = start;
    while at < end {
        let header = pe
            .data
            .get(at..at + WIN_CERTIFICATE_HEADER)
            .filter(|_| at + WIN_CERTIFICATE_HEADER <= end)
            .ok_or_else(|| {
                ParseError::new(
                    at,
                    "WIN_CERTIFICATE",
                    "truncated: fewer than 8 bytes left in the certificate table",
                )
            })?;
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let revision = u16::from_le_bytes([header[4], header[5]]);
        let certificate_type = u16::from_le_bytes([header[6], header[7]]);
        if len <= WIN_CERTIFICATE_HEADER || len > end - at {
            return Err(ParseError::new(
                at,
                "WIN_CERTIFICATE dwLength",
                format!(
                    "dwLength {len} does not fit the {} bytes left in the certificate table",
                    end - at
                ),
            ));
        }
        out.push(WinCertificate {
            offset: at,
            revision,
            certificate_type,
            certificate: &pe.data[at + WIN_CERTIFICATE_HEADER..at + len],
        });
        at += len.div_ceil(8) * 8;
    }
    Ok(out)
}

/// What to do with the signatures an image already has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExistingSignatures {
    /// Refuse an image that is already signed.
    Refuse,
    /// Drop them: the result equals signing the unsigned image.
    Replace,
    /// Keep them and add the new signature after them (sbsign's behaviour).
    Append,
}

/// An image ready to be signed: the bytes the signature covers (the input without its
/// certificate table, zero-padded to 8 bytes) and the certificate table entries to keep.
#[derive(Debug, Clone)]
pub struct Unsigned {
    image: Vec<u8>,
    kept: Vec<u8>,
    checksum_offset: usize,
    directory_offset: usize,
}

/// Errors of signing, each saying what is wrong with the image.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error(
        "the image is already signed ({0} signature(s)); say --replace to drop them or --append to keep them"
    )]
    AlreadySigned(usize),
    #[error("the image has no Certificate Table data directory (NumberOfRvaAndSizes {0} < 5), so it cannot carry a signature")]
    NoCertificateDirectory(usize),
    #[error("the image would be larger than 4 GiB, which a PE certificate table cannot address")]
    TooLarge,
    #[error(transparent)]
    Hash(#[from] Error),
}

impl Unsigned {
    /// Prepares `data` (a PE image, signed or not) for signing.
    pub fn new(data: &[u8], existing: ExistingSignatures) -> Result<Unsigned, SignError> {
        let pe = PeFile::parse(data)?;
        if pe.data_directories.len() <= DIR_SECURITY {
            return Err(SignError::NoCertificateDirectory(pe.data_directories.len()));
        }
        let entries = certificate_table(&pe)?;
        let (base_len, kept) = match table_range(&pe)? {
            None => (data.len(), Vec::new()),
            Some((start, end)) => {
                if existing == ExistingSignatures::Refuse {
                    return Err(SignError::AlreadySigned(entries.len()));
                }
                let kept = if existing == ExistingSignatures::Append {
                    data[start..end].to_vec()
                } else {
                    Vec::new()
                };
                (start, kept)
            }
        };
        let mut image = data[..base_len].to_vec();
        image.resize(base_len.div_ceil(8) * 8, 0);
        let directory_offset = pe.data_directories_offset + DIR_SECURITY * 8;
        image[directory_offset..directory_offset + 8].fill(0);
        // The hash must parse the same image the signature is attached to.
        PeFile::parse(&image)?;
        Ok(Unsigned {
            image,
            kept,
            checksum_offset: pe.checksum_offset(),
            directory_offset,
        })
    }

    /// The bytes the signature covers (no certificate table, 8-byte aligned).
    pub fn image(&self) -> &[u8] {
        &self.image
    }

    /// The Authenticode SHA-256 of [`Self::image`]: what the signature carries and what
    /// firmware extends into PCR 4 for the signed image.
    pub fn sha256(&self) -> Result<[u8; 32], SignError> {
        let pe = PeFile::parse(&self.image)?;
        let d = authenticode_digests(&pe, &[HashAlg::SHA256])?;
        let mut out = [0u8; 32];
        let bytes = d.first().map(|d| d.as_bytes()).unwrap_or_default();
        if bytes.len() != 32 {
            return Err(SignError::Hash(Error::InvalidInput(
                "SHA-256 digest is not 32 bytes".into(),
            )));
        }
        out.copy_from_slice(bytes);
        Ok(out)
    }

    /// The DER `SpcIndirectDataContent` for this image, byte for byte as sbsign writes it.
    pub fn indirect_data(&self) -> Result<Vec<u8>, SignError> {
        Ok(spc_indirect_data_sha256(&self.sha256()?))
    }

    /// The signed image: [`Self::image`], the kept entries, then one `WIN_CERTIFICATE` per
    /// signature in `signatures` (DER PKCS#7 SignedData), the directory and CheckSum updated.
    pub fn attach(&self, signatures: &[&[u8]]) -> Result<Vec<u8>, SignError> {
        let mut table = self.kept.clone();
        table.extend_from_slice(&win_certificates(signatures)?);
        let start = u32::try_from(self.image.len()).map_err(|_| SignError::TooLarge)?;
        let size = u32::try_from(table.len()).map_err(|_| SignError::TooLarge)?;
        if start.checked_add(size).is_none() {
            return Err(SignError::TooLarge);
        }
        let mut out = Vec::with_capacity(self.image.len() + table.len());
        out.extend_from_slice(&self.image);
        out.extend_from_slice(&table);
        let d = self.directory_offset;
        out[d..d + 4].copy_from_slice(&start.to_le_bytes());
        out[d + 4..d + 8].copy_from_slice(&size.to_le_bytes());
        let sum = pe_checksum(&out, self.checksum_offset);
        out[self.checksum_offset..self.checksum_offset + 4].copy_from_slice(&sum.to_le_bytes());
        Ok(out)
    }
}

/// `WIN_CERTIFICATE` entries (revision 2.0, PKCS#7 SignedData), one per DER signature, each
/// zero-padded to 8 bytes: what follows an 8-byte-aligned image in its certificate table.
pub fn win_certificates(signatures: &[&[u8]]) -> Result<Vec<u8>, SignError> {
    let mut table = Vec::new();
    for sig in signatures {
        let len =
            u32::try_from(WIN_CERTIFICATE_HEADER + sig.len()).map_err(|_| SignError::TooLarge)?;
        table.extend_from_slice(&len.to_le_bytes());
        table.extend_from_slice(&WIN_CERT_REVISION_2_0.to_le_bytes());
        table.extend_from_slice(&WIN_CERT_TYPE_PKCS_SIGNED_DATA.to_le_bytes());
        table.extend_from_slice(sig);
        table.resize(table.len().div_ceil(8) * 8, 0);
    }
    Ok(table)
}

/// Makes Authenticode signatures: implemented where the keys are (`imgctl-extensions`), used
/// where images are built (`imgctl-builder`), so that the builder needs no key code.
pub trait AuthenticodeSigner: Send + Sync + std::fmt::Debug {
    /// The PE image `pe` with a signature added after its existing ones (`sbsign`'s
    /// behaviour; what ukify's `--sign-kernel` does to the kernel).
    fn sign_pe(&self, pe: &[u8]) -> Result<Vec<u8>, String>;
    /// A DER PKCS#7 SignedData over the DER `SpcIndirectDataContent` `indirect_data`
    /// (see [`spc_indirect_data_sha256`]), for an image hashed elsewhere (streamed).
    fn sign_indirect_data(&self, indirect_data: &[u8]) -> Result<Vec<u8>, String>;
}

/// [`pe_checksum`] over a file read in pieces, in order: the `CheckSum` field at
/// `checksum_offset` is skipped wherever a piece boundary falls.
#[derive(Debug, Clone)]
pub struct PeChecksum {
    checksum_offset: u64,
    at: u64,
    sum: u32,
    odd: Option<u8>,
}

impl PeChecksum {
    pub fn new(checksum_offset: usize) -> Self {
        PeChecksum {
            checksum_offset: checksum_offset as u64,
            at: 0,
            sum: 0,
            odd: None,
        }
    }

    /// Adds the next bytes of the file.
    pub fn update(&mut self, piece: &[u8]) {
        let skip = self.checksum_offset..self.checksum_offset.saturating_add(4);
        for &b in piece {
            let at = self.at;
            self.at += 1;
            if skip.contains(&at) {
                // pe_checksum sums the bytes before the field on their own: an odd last one
                // counts as a word.
                if let Some(lo) = self.odd.take() {
                    self.add(u16::from(lo));
                }
                continue;
            }
            match self.odd.take() {
                None => self.odd = Some(b),
                Some(lo) => self.add(u16::from_le_bytes([lo, b])),
            }
        }
    }

    fn add(&mut self, word: u16) {
        self.sum += u32::from(word);
        self.sum = (self.sum >> 16) + (self.sum & 0xffff);
    }

    /// The checksum: the folded sum plus the file length.
    pub fn finish(mut self) -> u32 {
        if let Some(lo) = self.odd.take() {
            self.add(u16::from(lo));
        }
        self.sum.wrapping_add(self.at as u32)
    }
}

/// The PE image checksum (`CheckSumMappedFile`): 16-bit little-endian words summed with the
/// carry folded back, the 4-byte CheckSum field at `checksum_offset` skipped, an odd last byte
/// added as a word, then the file length added.
pub fn pe_checksum(data: &[u8], checksum_offset: usize) -> u32 {
    let mut sum: u32 = 0;
    let mut add = |chunk: &[u8]| {
        for w in chunk.chunks(2) {
            let v = u16::from_le_bytes([w[0], w.get(1).copied().unwrap_or(0)]) as u32;
            sum += v;
            sum = (sum >> 16) + (sum & 0xffff);
        }
    };
    let skip_end = checksum_offset.saturating_add(4).min(data.len());
    add(data.get(..checksum_offset).unwrap_or(data));
    add(data.get(skip_end..).unwrap_or_default());
    sum.wrapping_add(data.len() as u32)
}

/// `SPC_INDIRECT_DATA_OBJID` (1.3.6.1.4.1.311.2.1.4), DER content octets.
pub const SPC_INDIRECT_DATA_OID: &[u8] =
    &[0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0x37, 0x02, 0x01, 0x04];

/// `SpcIndirectDataContent` with `SpcPeImageData` and a SHA-256 digest, as sbsign encodes it:
/// empty flags, the file link `[2] { [0] BMPString "<<<Obsolete>>>" }`.
pub fn spc_indirect_data_sha256(digest: &[u8; 32]) -> Vec<u8> {
    const OBSOLETE: &str = "<<<Obsolete>>>";
    let mut bmp = Vec::new();
    for c in OBSOLETE.encode_utf16() {
        bmp.extend_from_slice(&c.to_be_bytes());
    }
    let tlv = |tag: u8, body: &[u8]| -> Vec<u8> {
        // Every length here is below 128: short form.
        let mut v = vec![tag, body.len() as u8];
        v.extend_from_slice(body);
        v
    };
    let spc_pe_image_data_oid = [0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0x37, 0x02, 0x01, 0x0f];
    let file = tlv(0xa0, &tlv(0xa2, &tlv(0x80, &bmp)));
    let pe_image_data = tlv(0x30, &[tlv(0x03, &[0x00]), file].concat());
    let data = tlv(
        0x30,
        &[tlv(0x06, &spc_pe_image_data_oid), pe_image_data].concat(),
    );
    let sha256_oid = [0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
    let alg = tlv(0x30, &[tlv(0x06, &sha256_oid), vec![0x05, 0x00]].concat());
    let digest_info = tlv(0x30, &[alg, tlv(0x04, digest)].concat());
    tlv(0x30, &[data, digest_info].concat())
}

/// The bytes an Authenticode message digest covers: the content octets of the DER
/// `SpcIndirectDataContent` SEQUENCE, without its tag and length.
pub fn indirect_data_content_octets(der: &[u8]) -> Option<&[u8]> {
    if der.first() != Some(&0x30) {
        return None;
    }
    let first = *der.get(1)?;
    let (len, hdr) = match first {
        n if n < 0x80 => (n as usize, 2),
        0x81 => (*der.get(2)? as usize, 3),
        0x82 => (((*der.get(2)? as usize) << 8) | *der.get(3)? as usize, 4),
        _ => return None,
    };
    der.get(hdr..hdr + len).filter(|_| hdr + len == der.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// sbsign 0.9.4's SpcIndirectDataContent (its signature's ContentInfo [0], from
    /// `openssl asn1parse`): the bytes around the 32-byte digest.
    #[test]
    fn indirect_data_is_sbsigns_encoding() {
        let digest = [0x5au8; 32];
        let der = spc_indirect_data_sha256(&digest);
        let sbsign_idc = hex::decode(concat!(
            "3068",
            "3033060a2b06010401823702010f",
            "3025030100a020a21e801c",
            "003c003c003c004f00620073006f006c00650074006500",
            "3e003e003e",
            "3031300d060960864801650304020105000420"
        ))
        .unwrap();
        assert_eq!(&der[..sbsign_idc.len()], &sbsign_idc[..]);
        assert_eq!(&der[sbsign_idc.len()..], &digest);
        assert_eq!(der.len(), 0x6a);
        assert_eq!(indirect_data_content_octets(&der).unwrap(), &der[2..]);
    }

    #[test]
    fn streamed_checksum_equals_the_whole_file_checksum() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7919 % 251) as u8).collect();
        for checksum_offset in [0usize, 2, 3, 216, 996] {
            let want = pe_checksum(&data, checksum_offset);
            for piece in [1usize, 3, 64, 1000] {
                let mut c = PeChecksum::new(checksum_offset);
                data.chunks(piece).for_each(|p| c.update(p));
                assert_eq!(
                    c.finish(),
                    want,
                    "offset {checksum_offset}, pieces of {piece}"
                );
            }
        }
    }

    #[test]
    fn checksum_of_odd_length_and_folding() {
        // 0xffff + 0x0001 folds to 0x0001; the CheckSum field (offset 2..6) is skipped and
        // the odd last byte counts as a word; then the length is added.
        let data = [0xff, 0xff, 9, 9, 9, 9, 0x01];
        assert_eq!(pe_checksum(&data, 2), 0x0001 + 7);
        let data = [0x01, 0x00, 9, 9, 9, 9, 0x02, 0x00];
        assert_eq!(pe_checksum(&data, 2), 0x0003 + 8);
    }
}
