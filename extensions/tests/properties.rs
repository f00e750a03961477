//! Property tests for the readers of untrusted bytes (GPT, verity superblock, signature
//! partition) and for the streaming verity tree against a naive sequential model.

#![allow(clippy::unwrap_used)] // reason: test code; a panic is a test failure

use imgctl_extensions::gpt::{attr, DiskLayout, Gpt, Guid, NewPartition};
use imgctl_extensions::sigpart::VeritySignature;
use imgctl_extensions::verity::{format, Superblock, TreeBuilder, VerityParams};
use proptest::prelude::*;
use sha2::{Digest, Sha256};

/// The tree computed the slow, obvious way: levels bottom-up until one digest remains, then
/// laid out top-down after a superblock block.
fn naive(salt: &[u8], bs: usize, data: &[u8]) -> (Vec<Vec<u8>>, [u8; 32]) {
    let h = |b: &[u8]| -> [u8; 32] {
        Sha256::new()
            .chain_update(salt)
            .chain_update(b)
            .finalize()
            .into()
    };
    let mut digests: Vec<[u8; 32]> = data.chunks(bs).map(h).collect();
    let mut levels = Vec::new();
    while digests.len() > 1 {
        let mut level: Vec<u8> = digests.concat();
        level.resize(level.len().div_ceil(bs) * bs, 0);
        digests = level.chunks(bs).map(h).collect();
        levels.push(level);
    }
    (levels, digests[0])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn streaming_tree_matches_the_naive_model(
        blocks in 1usize..300,
        salt in proptest::collection::vec(any::<u8>(), 0..=256),
        seed in any::<u8>(),
        chunk_blocks in 1usize..50,
        small in any::<bool>(),
    ) {
        let bs = if small { 512 } else { 4096 };
        let data: Vec<u8> = (0..blocks * bs).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
        let params = VerityParams::with_block_sizes(&salt, [3; 16], bs as u32, bs as u32).unwrap();
        let mut b = TreeBuilder::new(params.clone());
        for c in data.chunks(chunk_blocks * bs) {
            b.update(c).unwrap();
        }
        let tree = b.finish().unwrap();
        prop_assert_eq!(&tree, &format(&params, &data).unwrap());
        let (levels, root) = naive(&salt, bs, &data);
        prop_assert_eq!(tree.root_hash, root);
        let mut dev = tree.superblock.encode().to_vec();
        dev.resize(bs, 0);
        for l in levels.iter().rev() {
            dev.extend_from_slice(l);
        }
        prop_assert!(dev == tree.hash_device);
    }

    #[test]
    fn superblock_reader_never_panics(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = Superblock::parse(&data);
    }

    #[test]
    fn superblock_round_trips(
        salt in proptest::collection::vec(any::<u8>(), 0..=256),
        uuid in any::<[u8; 16]>(),
        blocks in any::<u64>(),
        shift in 9u32..=16,
    ) {
        let params = VerityParams::with_block_sizes(&salt, uuid, 1 << shift, 4096).unwrap();
        let tree = format(&params, &vec![0u8; 1 << shift]).unwrap();
        let mut sb = tree.superblock;
        sb.data_blocks = blocks;
        prop_assert_eq!(Superblock::parse(&sb.encode()).unwrap(), sb);
    }

    #[test]
    fn gpt_reader_never_panics(data in proptest::collection::vec(any::<u8>(), 0..20_000)) {
        let _ = Gpt::parse(&data);
    }

    #[test]
    fn planned_disks_parse_back_and_every_header_byte_is_protected(
        parts in proptest::collection::vec(("[a-z0-9-]{0,36}", 1u64..1_000_000, any::<[u8; 16]>()), 0..5),
        flip in 0usize..92,
    ) {
        let parts: Vec<NewPartition> = parts
            .into_iter()
            .map(|(name, size, g)| NewPartition {
                type_guid: Guid::v4_from(&[g, g].concat().try_into().unwrap()),
                unique_guid: Guid(g),
                name,
                attributes: attr::READ_ONLY,
                size,
            })
            .collect();
        let layout = DiskLayout::plan(Guid([5; 16]), &parts).unwrap();
        let mut primary = layout.primary();
        let gpt = Gpt::parse(&primary).unwrap();
        prop_assert_eq!(&gpt.partitions, &layout.partitions);
        primary[512 + flip] ^= 0x40;
        prop_assert!(Gpt::parse(&primary).is_err());
    }

    #[test]
    fn signature_reader_never_panics_and_round_trips(
        data in proptest::collection::vec(any::<u8>(), 0..300),
        root in proptest::collection::vec(any::<u8>(), 1..64),
        sig in proptest::collection::vec(any::<u8>(), 0..300),
        fp in proptest::option::of(any::<[u8; 32]>()),
    ) {
        let _ = VeritySignature::parse(&data);
        let s = VeritySignature { root_hash: hex::encode(root), certificate_fingerprint: fp, signature: sig };
        let p = s.to_partition();
        prop_assert_eq!(p.len() % 4096, 0);
        prop_assert_eq!(VeritySignature::parse(&p).unwrap(), s);
    }
}
