//! What an extension image's headers say, checked against each other: the GPT, the verity
//! superblock in the hash partition and the signature partition's JSON. Pure: the caller reads
//! the bytes ([`crate::pipeline::inspect_file`] does, for a file).

use serde::Serialize;

use crate::dps::{Designator, PartitionType};
use crate::gpt::{Gpt, Guid, PartitionEntry};
use crate::sigpart::VeritySignature;
use crate::verity::Superblock;

#[derive(Debug, Clone, Serialize)]
pub struct PartitionInfo {
    /// systemd-dissect's designator (`usr`, `usr-verity` …), if the type is a DPS type here.
    pub designator: Option<&'static str>,
    pub architecture: Option<&'static str>,
    pub type_uuid: Guid,
    pub uuid: Guid,
    pub label: String,
    pub offset: u64,
    pub size: u64,
    pub attributes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerityInfo {
    pub hash_algorithm: String,
    pub hash_type: u32,
    pub uuid: String,
    pub salt: String,
    pub data_block_size: u32,
    pub hash_block_size: u32,
    pub data_blocks: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SignatureInfo {
    pub root_hash: String,
    pub certificate_fingerprint: Option<String>,
    pub signature_size: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    pub disk_uuid: Guid,
    pub protective_mbr: bool,
    pub partitions: Vec<PartitionInfo>,
    pub verity: Option<VerityInfo>,
    pub signature: Option<SignatureInfo>,
    /// Inconsistencies found; empty for a well-formed image.
    pub problems: Vec<String>,
}

/// The partitions of `gpt` with the given designator kind.
pub fn find(gpt: &Gpt, pred: impl Fn(Designator) -> bool) -> Option<&PartitionEntry> {
    gpt.partitions.iter().find(|p| {
        PartitionType(p.type_guid)
            .lookup()
            .is_some_and(|(_, d)| pred(d))
    })
}

pub fn is_data(d: Designator) -> bool {
    matches!(d, Designator::Root | Designator::Usr)
}
pub fn is_verity(d: Designator) -> bool {
    matches!(d, Designator::RootVerity | Designator::UsrVerity)
}
pub fn is_signature(d: Designator) -> bool {
    matches!(d, Designator::RootVeritySig | Designator::UsrVeritySig)
}

/// Puts the pieces together and checks the DPS rules that tie them: data/verity partition UUIDs
/// are the root hash's halves, the hash tree covers the data partition, types pair up.
pub fn describe(
    gpt: &Gpt,
    superblock: Option<&Superblock>,
    signature: Option<&VeritySignature>,
) -> Inspection {
    let mut problems = Vec::new();
    let partitions = gpt
        .partitions
        .iter()
        .map(|p| {
            let known = PartitionType(p.type_guid).lookup();
            PartitionInfo {
                designator: known.map(|(_, d)| d.name()),
                architecture: known.map(|(a, _)| a.name()),
                type_uuid: p.type_guid,
                uuid: p.unique_guid,
                label: p.name.clone(),
                offset: p.offset(),
                size: p.size(),
                attributes: p.attributes,
            }
        })
        .collect();
    let data = find(gpt, is_data);
    let hash = find(gpt, is_verity);
    if data.is_none() {
        problems.push("no root or usr partition".to_owned());
    }
    if hash.is_none() {
        problems.push("no verity partition: the data cannot be verified".to_owned());
    }
    for (what, pred) in [
        ("root/usr", is_data as fn(Designator) -> bool),
        ("verity", is_verity),
        ("verity signature", is_signature),
    ] {
        let n = gpt
            .partitions
            .iter()
            .filter(|p| {
                PartitionType(p.type_guid)
                    .lookup()
                    .is_some_and(|(_, d)| pred(d))
            })
            .count();
        if n > 1 {
            problems.push(format!("{n} {what} partitions; an extension image has one"));
        }
    }
    if find(gpt, is_signature).is_some() && hash.is_none() {
        problems.push("a signature partition without a verity partition".to_owned());
    }
    if let (Some(d), Some(h)) = (data, hash) {
        let dd = PartitionType(d.type_guid).lookup().map(|(_, x)| x);
        let hd = PartitionType(h.type_guid).lookup().map(|(_, x)| x);
        if dd.and_then(|x| x.verity_pair()).map(|p| p.0) != hd {
            problems.push("verity partition type does not match the data partition".into());
        }
    }
    if let (Some(sb), Some(d)) = (superblock, data) {
        let covered = sb.data_blocks.saturating_mul(u64::from(sb.data_block_size));
        if covered > d.size() {
            problems.push(format!(
                "verity covers {covered} bytes but the data partition has {}",
                d.size()
            ));
        }
    }
    if let Some(sig) = signature {
        let mut rh = [0u8; 32];
        if hex::decode_to_slice(&sig.root_hash, &mut rh).is_ok() {
            let (first, second) = rh.split_at(16);
            if let Some(d) = data {
                if d.unique_guid.0 != first {
                    problems.push("data partition UUID is not the root hash's first half".into());
                }
            }
            if let Some(h) = hash {
                if h.unique_guid.0 != second {
                    problems
                        .push("verity partition UUID is not the root hash's second half".into());
                }
            }
        } else {
            problems.push("signature rootHash is not a SHA-256 hash".into());
        }
    }
    Inspection {
        disk_uuid: gpt.header.disk_guid,
        protective_mbr: gpt.protective_mbr,
        partitions,
        verity: superblock.map(|sb| VerityInfo {
            hash_algorithm: sb.algorithm.clone(),
            hash_type: sb.hash_type.0,
            uuid: sb.uuid_string(),
            salt: hex::encode(&sb.salt),
            data_block_size: sb.data_block_size,
            hash_block_size: sb.hash_block_size,
            data_blocks: sb.data_blocks,
        }),
        signature: signature.map(|s| SignatureInfo {
            root_hash: s.root_hash.clone(),
            certificate_fingerprint: s.certificate_fingerprint.map(hex::encode),
            signature_size: s.signature.len(),
        }),
        problems,
    }
}
