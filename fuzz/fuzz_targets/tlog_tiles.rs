//! Tile paths, hash tiles, entry bundles and log entries from untrusted bytes.
#![no_main]

use imgctl_tlog::tiles::{encode_bundle, parse_bundle, parse_hash_tile, TileId, TileKind};
use imgctl_tlog::LogEntry;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&w, rest)) = data.split_first() else { return };
    let width = u16::from(w) + 1;
    let id = TileId { kind: TileKind::Entries, index: 0, width };
    if let Ok(entries) = parse_bundle(&id, rest) {
        assert_eq!(encode_bundle(&entries).ok().as_deref(), Some(rest));
    }
    let id = TileId { kind: TileKind::Hashes(0), index: 0, width };
    let _ = parse_hash_tile(&id, rest);
    if let Ok(s) = std::str::from_utf8(rest) {
        if let Ok(t) = TileId::parse_path(s) {
            assert_eq!(t.path(), s);
        }
    }
    if let Ok(e) = LogEntry::parse(rest) {
        assert_eq!(e.encode(), rest);
    }
});
