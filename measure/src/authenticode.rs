//! The Authenticode PE image hash: what UEFI firmware extends into PCR 4 for every boot
//! application it loads (`EV_EFI_BOOT_SERVICES_APPLICATION`), and what a Secure Boot
//! signature signs.
//!
//! Per "Windows Authenticode Portable Executable Signature Format" (Calculating the PE Image
//! Hash) and EDK2's `DxeTpm2MeasureBootLib`: hash the headers up to `SizeOfHeaders` except the
//! 4-byte `CheckSum` and the 8-byte Certificate Table directory entry; then each section's raw
//! data in ascending `PointerToRawData` order; then whatever follows the last section, minus the
//! attribute certificate table. Note that `sbsign` pads the file to 8 bytes before appending
//! the certificate table and that padding is hashed: emit images whose size is a multiple of 8.

use std::ops::Range;

use crate::bank::{Digest, HashAlg};
use crate::pe::{PeFile, DIR_SECURITY};
use crate::{Error, ParseError};

/// The header fields Authenticode leaves out, as file ranges in ascending order: the 4-byte
/// `CheckSum`, and the 8-byte Certificate Table directory entry when the image has that
/// directory. Everything else up to `SizeOfHeaders` is hashed. A writer that streams a PE
/// image (headers, then section data back to back, nothing after) hashes it by skipping these.
pub fn excluded_header_fields(pe: &PeFile<'_>) -> Result<Vec<Range<usize>>, ParseError> {
    let headers_end = pe.size_of_headers as usize;
    let checksum = pe.checksum_offset();
    if pe.data_directory(DIR_SECURITY).is_some() {
        let cert_entry = pe.data_directories_offset + DIR_SECURITY * 8;
        if !(checksum + 4 <= cert_entry && cert_entry + 8 <= headers_end) {
            return Err(ParseError::new(
                cert_entry,
                "Certificate Table entry",
                "lies outside the headers",
            ));
        }
        Ok(vec![checksum..checksum + 4, cert_entry..cert_entry + 8])
    } else {
        if checksum + 4 > headers_end {
            return Err(ParseError::new(
                checksum,
                "CheckSum",
                "lies outside the headers",
            ));
        }
        Ok(std::iter::once(checksum..checksum + 4).collect())
    }
}

/// The byte ranges Authenticode hashes, in order.
pub fn hashed_regions<'a>(pe: &PeFile<'a>) -> Result<Vec<&'a [u8]>, ParseError> {
    let data = pe.data;
    let headers_end = pe.size_of_headers as usize;
    if headers_end > data.len() {
        return Err(ParseError::new(
            pe.optional_header_offset + crate::pe::opt::SIZE_OF_HEADERS,
            "SizeOfHeaders",
            format!(
                "SizeOfHeaders {headers_end:#x} is past the end of the file ({:#x} bytes)",
                data.len()
            ),
        ));
    }
    let cert_dir = pe.data_directory(DIR_SECURITY);
    let mut regions: Vec<&'a [u8]> = Vec::new();
    let mut at = 0;
    for skip in excluded_header_fields(pe)? {
        regions.push(&data[at..skip.start]);
        at = skip.end;
    }
    regions.push(&data[at..headers_end]);

    let mut sections: Vec<_> = pe
        .sections
        .iter()
        .filter(|s| s.size_of_raw_data > 0)
        .collect();
    sections.sort_by_key(|s| s.pointer_to_raw_data);
    let mut hashed = headers_end as u64;
    for s in sections {
        regions.push(pe.raw_data(s));
        hashed += s.size_of_raw_data as u64;
    }

    let cert_size = cert_dir.map_or(0, |d| d.size as u64);
    let file_len = data.len() as u64;
    if file_len > hashed {
        let extra = file_len - hashed;
        if cert_size > extra {
            return Err(ParseError::new(
                pe.data_directories_offset + DIR_SECURITY * 8,
                "Certificate Table size",
                format!("certificate table of {cert_size} bytes is larger than the {extra} bytes after the last section"),
            ));
        }
        regions.push(&data[hashed as usize..(file_len - cert_size) as usize]);
    }
    Ok(regions)
}

/// The Authenticode hash of a PE image in each of `banks` (banks hashed in parallel).
pub fn authenticode_digests(pe: &PeFile<'_>, banks: &[HashAlg]) -> Result<Vec<Digest>, Error> {
    use rayon::prelude::*;
    let regions = hashed_regions(pe)?;
    banks
        .par_iter()
        .map(|b| {
            let mut h = b.hasher()?;
            for r in &regions {
                h.update(r);
            }
            Ok(h.finish())
        })
        .collect()
}
