//! References from a transparency log (imgctl_attest::published, what `imgctl verify --log`
//! and `imgctl serve` with `log` read): any bytes as a log's entry bundle, under a checkpoint
//! the fuzzer's own key signs over those entries, so that the entries reach the artifact
//! record parser; read, refreshed and checked against itself, an error or a view, never a
//! panic.
#![no_main]

use std::collections::BTreeMap;

use imgctl_attest::published::{PublishedLog, Trust};
use imgctl_tlog::note::VerifierKind;
use imgctl_tlog::tiles::{parse_bundle, TileId, TileKind};
use imgctl_tlog::{Checkpoint, MemTree, NoteSigner, StoreError, TileFetch};
use libfuzzer_sys::fuzz_target;

struct Mem(BTreeMap<String, Vec<u8>>);

impl TileFetch for Mem {
    fn get(&self, path: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.0.get(path).cloned())
    }
    fn describe(&self) -> String {
        "fuzz".into()
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&w, bundle)) = data.split_first() else {
        return;
    };
    let width = u16::from(w % 255) + 1;
    let id = TileId {
        kind: TileKind::Entries,
        index: 0,
        width,
    };
    let mut tree = MemTree::new();
    // A bundle that parses: the checkpoint is over its entries; else over nothing real.
    let size = match parse_bundle(&id, bundle) {
        Ok(entries) => {
            for e in &entries {
                tree.push(e);
            }
            tree.size()
        }
        Err(_) => u64::from(width),
    };
    let Ok(key) = NoteSigner::from_seed("example.org/fuzz", VerifierKind::Ed25519, [1; 32]) else {
        return;
    };
    let Ok(note) = (Checkpoint {
        origin: "example.org/fuzz".into(),
        size,
        root: tree.root(),
        extensions: Vec::new(),
    })
    .sign(&key) else {
        return;
    };
    let Ok(trust) = Trust::new(&key.verifier().vkey(), None) else {
        return;
    };
    let mut files = BTreeMap::new();
    files.insert("checkpoint".to_owned(), note.clone().into_bytes());
    files.insert(id.path(), bundle.to_vec());
    let log = Mem(files);
    if let Ok(mut view) = PublishedLog::read(&log, &trust) {
        assert_eq!(view.checkpoint().size, size);
        assert!(view.check_extends(note.as_bytes(), &trust).is_ok());
        assert_eq!(view.refresh(&log, &trust).ok(), Some(false));
        let mut refs = imgctl_attest::verify::References::default();
        view.add_references(&mut refs);
    }
});
