//! Published transparency-log vectors: transparency-dev/merkle's RFC 6962 inclusion and
//! consistency proofs (every happy path verifies, every `wantErr` case is rejected), its
//! reference tree of 8 leaves (roots at every size, and our generated proofs equal the
//! published ones), and the C2SP signed-note example.

#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: test code

mod common;

use std::path::{Path, PathBuf};

use base64::Engine;
use imgctl_tlog::merkle::{
    consistency_proof, inclusion_proof, verify_consistency, verify_inclusion, MemTree,
};
use imgctl_tlog::note::{self, NoteVerifier};
use serde_json::Value;

fn b64(v: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(v.as_str().unwrap_or(""))
        .unwrap_or_else(|e| panic!("base64 {v}: {e}"))
}

fn proof_of(v: &Value) -> Vec<Vec<u8>> {
    v.as_array()
        .map(|a| a.iter().map(b64).collect())
        .unwrap_or_default()
}

fn vector_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for sub in std::fs::read_dir(dir).unwrap() {
        let sub = sub.unwrap().path();
        for f in std::fs::read_dir(&sub).unwrap() {
            out.push(f.unwrap().path());
        }
    }
    out.sort();
    out
}

fn load(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// transparency-dev/merkle testonly/constants.go: the RFC 6962 reference tree's leaves.
const LEAVES: [&str; 8] = [
    "",
    "00",
    "10",
    "2021",
    "3031",
    "40414243",
    "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
];
/// ... and its roots at sizes 1..=8.
const ROOTS: [&str; 8] = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
];

fn reference_tree(n: usize) -> MemTree {
    let mut t = MemTree::new();
    for l in &LEAVES[..n] {
        t.push(&hex::decode(l).unwrap());
    }
    t
}

#[test]
fn reference_tree_roots_match_published_values() {
    for n in 1..=8 {
        assert_eq!(
            hex::encode(reference_tree(n).root()),
            ROOTS[n - 1],
            "size {n}"
        );
    }
}

#[test]
fn merkle_inclusion_vectors() {
    let Some(shared) = common::shared_dir() else {
        return;
    };
    let files = vector_files(&shared.join("testdata/tlog/merkle/inclusion"));
    assert!(files.len() >= 80, "only {} inclusion vectors", files.len());
    let (mut ok, mut rejected) = (0, 0);
    for f in &files {
        let v = load(f);
        let (idx, size) = (
            v["leafIdx"].as_u64().unwrap(),
            v["treeSize"].as_u64().unwrap(),
        );
        let proof = proof_of(&v["proof"]);
        let res = verify_inclusion(idx, size, &b64(&v["leafHash"]), &proof, &b64(&v["root"]));
        if v["wantErr"].as_bool().unwrap() {
            assert!(res.is_err(), "{} should be rejected", f.display());
            rejected += 1;
        } else {
            res.unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            ok += 1;
            // Our generator produces the same proof for the reference tree.
            if size <= 8 && size > 1 {
                let mut t = reference_tree(size as usize);
                let gen: Vec<Vec<u8>> = inclusion_proof(&mut t, idx, size)
                    .unwrap()
                    .iter()
                    .map(|h| h.to_vec())
                    .collect();
                assert_eq!(gen, proof, "{}", f.display());
            }
        }
    }
    eprintln!("inclusion vectors: {ok} verified, {rejected} rejected");
    assert!(ok >= 5 && rejected >= 70);
}

#[test]
fn merkle_consistency_vectors() {
    let Some(shared) = common::shared_dir() else {
        return;
    };
    let files = vector_files(&shared.join("testdata/tlog/merkle/consistency"));
    assert!(
        files.len() >= 80,
        "only {} consistency vectors",
        files.len()
    );
    let (mut ok, mut rejected) = (0, 0);
    for f in &files {
        let v = load(f);
        let (s1, s2) = (v["size1"].as_u64().unwrap(), v["size2"].as_u64().unwrap());
        let proof = proof_of(&v["proof"]);
        let res = verify_consistency(s1, s2, &proof, &b64(&v["root1"]), &b64(&v["root2"]));
        if v["wantErr"].as_bool().unwrap() {
            assert!(res.is_err(), "{} should be rejected", f.display());
            rejected += 1;
        } else {
            res.unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            ok += 1;
            if s2 <= 8 {
                let mut t = reference_tree(s2 as usize);
                let gen: Vec<Vec<u8>> = consistency_proof(&mut t, s1, s2)
                    .unwrap()
                    .iter()
                    .map(|h| h.to_vec())
                    .collect();
                assert_eq!(gen, proof, "{}", f.display());
            }
        }
    }
    eprintln!("consistency vectors: {ok} verified, {rejected} rejected");
    assert!(ok >= 5 && rejected >= 70);
}

#[test]
fn c2sp_signed_note_example_verifies() {
    let Some(shared) = common::shared_dir() else {
        return;
    };
    let note_bytes = std::fs::read(shared.join("testdata/tlog/signed-note-example.txt")).unwrap();
    let vkey = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k";
    let v = NoteVerifier::parse_vkey(vkey).unwrap();
    assert_eq!(v.key_id, 0x530d903a);
    let opened = note::open(&note_bytes, &[&v]).unwrap();
    assert_eq!(opened.text, "This is an example message.\n");
    // One flipped bit in the text: the known key's signature fails and the note is rejected.
    let mut bad = note_bytes.clone();
    bad[0] ^= 0x20;
    assert!(note::open(&bad, &[&v]).is_err());
    // The same note checked against an unrelated key: no known signature.
    let other = NoteVerifier::parse_vkey(
        "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
    )
    .unwrap();
    let err = note::open(&note_bytes, &[&other]).unwrap_err();
    assert!(
        err.to_string().contains("no signature from a known key"),
        "{err}"
    );
}
