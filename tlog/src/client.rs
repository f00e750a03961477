//! Reading a tiled log: from a folder, or over HTTP(S) (any static web server, object store or
//! CDN that serves the tiles), plus the client-side checks a verifier runs.

use std::path::PathBuf;
use std::time::Duration;

use crate::checkpoint::{self, Checkpoint, Policy, VerifiedCheckpoint};
use crate::merkle::{consistency_proof, inclusion_proof, leaf_hash, verify_inclusion};
use crate::tiles::{TileId, TileNodes};
use crate::Error as TlogError;

use crate::StoreError as Error;

/// The largest resource we download (a checkpoint with many cosignatures, a full bundle).
pub const MAX_RESOURCE: usize = 64 << 20;

/// Something that serves a log's resources by path (`checkpoint`, `tile/0/000.p/5`).
pub trait TileFetch {
    /// The resource's bytes, or `None` if it does not exist.
    fn get(&self, path: &str) -> Result<Option<Vec<u8>>, Error>;
    /// Where the log is, for messages.
    fn describe(&self) -> String;
}

/// A log folder on disk.
#[derive(Debug, Clone)]
pub struct FolderTiles(pub PathBuf);

impl TileFetch for FolderTiles {
    fn get(&self, path: &str) -> Result<Option<Vec<u8>>, Error> {
        let p = self.0.join(path);
        // A log folder may be anybody's: a tile is read as the HTTP client reads one, capped.
        match imgctl_fsio::read_bounded(&p, MAX_RESOURCE as u64, "a log tile") {
            Ok(b) => Ok(Some(b)),
            Err(imgctl_fsio::Error::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }
    fn describe(&self) -> String {
        self.0.display().to_string()
    }
}

/// A log's resources from `src`: an `http://` or `https://` URL, or else a folder.
pub fn open(src: &str) -> Result<Box<dyn TileFetch + Send + Sync>, Error> {
    if src.starts_with("http://") || src.starts_with("https://") {
        Ok(Box::new(HttpTiles::new(src)?))
    } else {
        Ok(Box::new(FolderTiles(PathBuf::from(src))))
    }
}

/// How long one request may take in all (connect, send, receive), and to connect.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(60);
pub const HTTP_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A log served over HTTP(S) at `http[s]://host[:port][/prefix]/` (ureq: rustls for https,
/// a connect and an overall deadline per request, bodies capped at [`MAX_RESOURCE`]).
#[derive(Debug, Clone)]
pub struct HttpTiles {
    base: String,
    agent: ureq::Agent,
}

impl HttpTiles {
    pub fn new(url: &str) -> Result<Self, Error> {
        Self::with_timeout(url, HTTP_TIMEOUT)
    }

    /// Like [`HttpTiles::new`] with another overall deadline per request.
    pub fn with_timeout(url: &str, timeout: Duration) -> Result<Self, Error> {
        let bad = |m: &str| Error::Http {
            url: url.to_owned(),
            message: m.to_owned(),
        };
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .ok_or_else(|| bad("only http:// and https:// URLs are supported"))?;
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.is_empty() || authority.starts_with(':') {
            return Err(bad("no host"));
        }
        if url.contains(['?', '#']) {
            return Err(bad("a log URL has no query or fragment"));
        }
        url.parse::<ureq::http::Uri>()
            .map_err(|e| bad(&e.to_string()))?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .timeout_connect(Some(HTTP_CONNECT_TIMEOUT.min(timeout)))
            .http_status_as_error(false)
            .max_redirects(0)
            .build()
            .into();
        Ok(HttpTiles {
            base: url.trim_end_matches('/').to_owned(),
            agent,
        })
    }
}

impl TileFetch for HttpTiles {
    fn get(&self, path: &str) -> Result<Option<Vec<u8>>, Error> {
        let url = format!("{}/{}", self.base, path);
        let err = |m: String| Error::Http {
            url: url.clone(),
            message: m,
        };
        let mut response = self
            .agent
            .get(&url)
            .header("Accept-Encoding", "identity")
            .call()
            .map_err(|e| err(e.to_string()))?;
        match response.status().as_u16() {
            200 => {}
            404 | 410 => return Ok(None),
            s => return Err(err(format!("status {s}"))),
        }
        if let Some(enc) = response.headers().get("content-encoding") {
            if !enc.as_bytes().eq_ignore_ascii_case(b"identity") {
                return Err(err(format!(
                    "Content-Encoding {} is not supported",
                    String::from_utf8_lossy(enc.as_bytes())
                )));
            }
        }
        response
            .body_mut()
            .with_config()
            .limit(MAX_RESOURCE as u64)
            .read_to_vec()
            .map_err(|e| err(e.to_string()))
            .map(Some)
    }
    fn describe(&self) -> String {
        self.base.clone()
    }
}

/// A tile fetcher for `crate::tiles` over any [`TileFetch`]: a partial tile
/// that is gone is replaced by the prefix of its full tile, as tlog-tiles allows clients to.
pub fn tile_fetcher<'a>(
    src: &'a dyn TileFetch,
) -> impl FnMut(&TileId) -> Result<Vec<u8>, TlogError> + 'a {
    move |id: &TileId| fetch_tile(src, id)
}

/// One tile from `src`, falling back from a missing partial tile to its full tile.
pub fn fetch_tile(src: &dyn TileFetch, id: &TileId) -> Result<Vec<u8>, TlogError> {
    {
        let fail = |e: Error| TlogError::Source(e.to_string());
        if let Some(b) = src.get(&id.path()).map_err(fail)? {
            return Ok(b);
        }
        if !id.is_full() {
            if let Some(full) = src.get(&id.full().path()).map_err(fail)? {
                let n = usize::from(id.width) * 32;
                if id.kind != crate::tiles::TileKind::Entries && full.len() >= n {
                    return Ok(full[..n].to_vec());
                }
                if id.kind == crate::tiles::TileKind::Entries {
                    return truncate_bundle(&full, id);
                }
            }
        }
        Err(TlogError::Tile {
            path: id.path(),
            message: format!("missing from {}", src.describe()),
        })
    }
}

fn truncate_bundle(full: &[u8], id: &TileId) -> Result<Vec<u8>, TlogError> {
    let full_id = id.full();
    let entries = crate::tiles::parse_bundle(&full_id, full)?;
    crate::tiles::encode_bundle(&entries[..usize::from(id.width)])
}

/// Fetches and verifies the log's current checkpoint.
pub fn fetch_checkpoint(
    src: &dyn TileFetch,
    policy: &Policy<'_>,
) -> Result<(VerifiedCheckpoint, Vec<u8>), Error> {
    let bytes = src
        .get("checkpoint")?
        .ok_or_else(|| Error::Log(format!("{}: no checkpoint", src.describe())))?;
    let vc = checkpoint::verify(&bytes, policy)?;
    Ok((vc, bytes))
}

/// A log read whole: its verified checkpoint, the checkpoint's note bytes, every entry.
pub type WholeLog = (Checkpoint, Vec<u8>, Vec<Vec<u8>>);

/// The most entries [`read_all_entries`] reads.
pub const MAX_READ_ENTRIES: u64 = 1 << 22;

/// Every entry of the log as of its current checkpoint (verified under `policy`), with the
/// checkpoint's note text: the entries' Merkle tree is recomputed and must have the signed
/// root, which proves each one's inclusion at once.
pub fn read_all_entries(src: &dyn TileFetch, policy: &Policy<'_>) -> Result<WholeLog, Error> {
    let (vc, bytes) = fetch_checkpoint(src, policy)?;
    let c = vc.checkpoint;
    if c.size > MAX_READ_ENTRIES {
        return Err(Error::Log(format!(
            "{}: the log has {} entries, more than the {MAX_READ_ENTRIES} read at once",
            src.describe(),
            c.size
        )));
    }
    let mut entries = Vec::with_capacity(c.size as usize);
    let mut tree = crate::MemTree::new();
    for t in 0..c.size.div_ceil(256) {
        let id = TileId::for_size(crate::tiles::TileKind::Entries, t, c.size)?;
        let bundle = fetch_tile(src, &id)?;
        for e in crate::tiles::parse_bundle(&id, &bundle)? {
            tree.push(e);
            entries.push(e.to_vec());
        }
    }
    if tree.size() != c.size || tree.root() != c.root {
        return Err(Error::Log(format!(
            "{}: the entries do not hash to the checkpoint's root (size {})",
            src.describe(),
            c.size
        )));
    }
    Ok((c, bytes, entries))
}

/// Checks that `entry` is at `index` in the log as of its current (verified) checkpoint,
/// computing the inclusion proof from the log's tiles.
pub fn check_entry_in_log(
    src: &dyn TileFetch,
    policy: &Policy<'_>,
    entry: &[u8],
    index: u64,
) -> Result<Checkpoint, Error> {
    let (vc, _) = fetch_checkpoint(src, policy)?;
    let c = vc.checkpoint;
    if index >= c.size {
        return Err(Error::Log(format!(
            "index {index} is not in the log: its checkpoint has size {}",
            c.size
        )));
    }
    let mut nodes = TileNodes::new(c.size, tile_fetcher(src));
    let proof = inclusion_proof(&mut nodes, index, c.size)?;
    verify_inclusion(index, c.size, &leaf_hash(entry), &proof, &c.root)?;
    Ok(c)
}

/// Checks that the log's current checkpoint is consistent with an older trusted one
/// (`old_bytes`, verified under the same policy). Returns the new checkpoint.
pub fn check_log_consistency(
    src: &dyn TileFetch,
    policy: &Policy<'_>,
    old_bytes: &[u8],
) -> Result<Checkpoint, Error> {
    let old = checkpoint::verify(old_bytes, policy)?.checkpoint;
    let (vc, _) = fetch_checkpoint(src, policy)?;
    let new = vc.checkpoint;
    let proof = if new.size > old.size && old.size > 0 {
        let mut nodes = TileNodes::new(new.size, tile_fetcher(src));
        consistency_proof(&mut nodes, old.size, new.size)?
    } else {
        Vec::new()
    };
    checkpoint::check_consistency(&old, &new, &proof)?;
    Ok(new)
}

/// Checks that `new_bytes` is consistent with the older trusted `old_bytes` (both verified
/// under `policy`). Checkpoints of the same size must have the same root; otherwise the
/// consistency proof is computed from `src`, the log's tiles, which is then required.
/// Returns both checkpoints.
pub fn check_checkpoints_consistency(
    src: Option<&dyn TileFetch>,
    policy: &Policy<'_>,
    old_bytes: &[u8],
    new_bytes: &[u8],
) -> Result<(Checkpoint, Checkpoint), Error> {
    let old = checkpoint::verify(old_bytes, policy)?.checkpoint;
    let new = checkpoint::verify(new_bytes, policy)?.checkpoint;
    let proof =
        match src {
            Some(src) if new.size > old.size && old.size > 0 => {
                let mut nodes = TileNodes::new(new.size, tile_fetcher(src));
                consistency_proof(&mut nodes, old.size, new.size)?
            }
            None if new.size != old.size => return Err(Error::Log(
                "checkpoints of different sizes need the log's tiles (--log) to compute the proof"
                    .to_owned(),
            )),
            _ => Vec::new(),
        };
    checkpoint::check_consistency(&old, &new, &proof)?;
    Ok((old, new))
}

/// How long one `add-checkpoint` request to a witness may take in all.
pub const WITNESS_TIMEOUT: Duration = Duration::from_secs(15);

/// A witness's answer to `add-checkpoint` (C2SP tlog-witness).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WitnessReply {
    /// 200: the body, cosignature lines.
    Cosigned(Vec<u8>),
    /// 409 with `text/x.tlog.size`: the size the witness last cosigned.
    Conflict(u64),
    /// Any other status, with the start of the body.
    Refused { status: u16, body: String },
}

/// Sends one `add-checkpoint` request to the witness at `prefix` (its submission prefix).
pub fn add_checkpoint(prefix: &str, body: &[u8]) -> Result<WitnessReply, Error> {
    let url = format!("{}/add-checkpoint", prefix.trim_end_matches('/'));
    let err = |m: String| Error::Http {
        url: url.clone(),
        message: m,
    };
    if !(prefix.starts_with("http://") || prefix.starts_with("https://")) {
        return Err(err("a witness URL is http:// or https://".into()));
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(WITNESS_TIMEOUT))
        .timeout_connect(Some(HTTP_CONNECT_TIMEOUT))
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into();
    let mut response = agent
        .post(&url)
        .header("Content-Type", "text/plain")
        .send(body)
        .map_err(|e| err(e.to_string()))?;
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let bytes = response
        .body_mut()
        .with_config()
        .limit(crate::witness::MAX_REQUEST as u64)
        .read_to_vec()
        .map_err(|e| err(e.to_string()))?;
    match status {
        200 => Ok(WitnessReply::Cosigned(bytes)),
        409 if content_type
            .as_deref()
            .is_some_and(|t| t.starts_with(crate::witness::SIZE_CONTENT_TYPE)) =>
        {
            let size = std::str::from_utf8(&bytes)
                .ok()
                .and_then(|t| t.strip_suffix('\n'))
                .and_then(|t| t.parse::<u64>().ok())
                .ok_or_else(|| err("409 body is not a tree size line".into()))?;
            Ok(WitnessReply::Conflict(size))
        }
        status => Ok(WitnessReply::Refused {
            status,
            body: String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
                .trim_end()
                .to_owned(),
        }),
    }
}

/// Asks the witness `key` at `prefix` to cosign `signed` (the log's current checkpoint, of
/// `size`), starting from `old` 0 and retrying once with the size a 409 names, the proof
/// from `consistency(old, size)`. Returns the verified cosignature lines.
pub fn collect_cosignature(
    prefix: &str,
    key: &crate::note::NoteVerifier,
    signed: &[u8],
    size: u64,
    mut consistency: impl FnMut(u64, u64) -> Result<Vec<crate::Hash>, Error>,
) -> Result<Vec<crate::note::NoteSignature>, Error> {
    let mut old = 0u64;
    for _ in 0..3 {
        let proof = if old == 0 || old == size {
            Vec::new()
        } else {
            consistency(old, size)?
        };
        let body = crate::witness::AddCheckpoint {
            old,
            proof,
            checkpoint: signed.to_vec(),
        }
        .encode();
        match add_checkpoint(prefix, &body)? {
            WitnessReply::Cosigned(b) => {
                return Ok(crate::witness::cosignatures_from_response(signed, &b, key)?)
            }
            WitnessReply::Conflict(latest) if latest > size => {
                return Err(Error::Log(format!(
                "witness {} at {prefix} has cosigned size {latest}, more than the log's {size}: \
                     the log lost entries or forked",
                key.name
            )))
            }
            WitnessReply::Conflict(latest) if latest != old => old = latest,
            WitnessReply::Conflict(latest) => {
                return Err(Error::Log(format!(
                    "witness {} at {prefix} answered 409 for its own size {latest}",
                    key.name
                )))
            }
            WitnessReply::Refused { status, body } => {
                return Err(Error::Log(format!(
                    "witness {} at {prefix} refused the checkpoint: {status} {body}",
                    key.name
                )))
            }
        }
    }
    Err(Error::Log(format!(
        "witness {} at {prefix}: its size kept changing (3 attempts)",
        key.name
    )))
}

#[cfg(test)]
mod http_tests {
    use super::*;

    /// Defect H29: the hand-written client had no overall deadline, so a server that accepts
    /// and then sends nothing (or a byte every 29 s) held the verifier forever.
    #[test]
    fn a_server_that_never_answers_is_an_error_within_the_deadline() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let hold = std::thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            std::thread::sleep(Duration::from_secs(4));
            drop(conn);
        });
        let tiles = HttpTiles::with_timeout(
            &format!("http://127.0.0.1:{port}/log/"),
            Duration::from_secs(1),
        )
        .unwrap();
        let start = std::time::Instant::now();
        let e = tiles.get("checkpoint").unwrap_err().to_string();
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );
        assert!(e.contains("/log/checkpoint"), "{e}");
        hold.join().unwrap();
    }

    #[test]
    fn only_http_and_https_urls_with_a_host_are_accepted() {
        for bad in [
            "ftp://x/",
            "http://",
            "http://:80/",
            "file:///tmp",
            "http://x/?a=b",
        ] {
            assert!(HttpTiles::new(bad).is_err(), "{bad}");
        }
        assert_eq!(
            HttpTiles::new("https://log.example/a/").unwrap().describe(),
            "https://log.example/a"
        );
    }
}
