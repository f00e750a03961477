//! Reading a tiled log: from a folder, or over plain HTTP/1.1 (a static server on localhost or
//! behind a TLS-terminating proxy), plus the client-side checks a verifier runs.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use imgctl_measure::tlog::checkpoint::{self, Checkpoint, Policy, VerifiedCheckpoint};
use imgctl_measure::tlog::merkle::{
    consistency_proof, inclusion_proof, leaf_hash, verify_inclusion,
};
use imgctl_measure::tlog::tiles::{TileId, TileNodes};
use imgctl_measure::tlog::Error as TlogError;

use crate::Error;

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
        match std::fs::read(&p) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(crate::io_err(&p)(e)),
        }
    }
    fn describe(&self) -> String {
        self.0.display().to_string()
    }
}

/// A log served over HTTP at `http://host:port/prefix/`.
#[derive(Debug, Clone)]
pub struct HttpTiles {
    host: String,
    port: u16,
    prefix: String,
}

impl HttpTiles {
    /// Parses `http://host[:port][/prefix]`. Only plain HTTP; put TLS in a proxy.
    pub fn new(url: &str) -> Result<Self, Error> {
        let bad = |m: &str| Error::Http {
            url: url.to_owned(),
            message: m.to_owned(),
        };
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| bad("only http:// URLs are supported"))?;
        let (authority, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().map_err(|_| bad("invalid port"))?),
            None => (authority, 80),
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let prefix = prefix.trim_end_matches('/');
        Ok(HttpTiles {
            host: host.to_owned(),
            port,
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("/{prefix}")
            },
        })
    }
}

impl TileFetch for HttpTiles {
    fn get(&self, path: &str) -> Result<Option<Vec<u8>>, Error> {
        let target = format!("{}/{}", self.prefix, path);
        let url = format!("http://{}:{}{}", self.host, self.port, target);
        let err = |m: String| Error::Http {
            url: url.clone(),
            message: m,
        };
        let mut s = TcpStream::connect((self.host.as_str(), self.port))
            .map_err(|e| err(format!("connect: {e}")))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| err(e.to_string()))?;
        write!(
            s,
            "GET {target} HTTP/1.1\r\nHost: {}\r\nAccept-Encoding: identity\r\nConnection: close\r\n\r\n",
            self.host
        )
        .map_err(|e| err(format!("send: {e}")))?;
        let mut buf = Vec::new();
        s.take(MAX_RESOURCE as u64 + 65536)
            .read_to_end(&mut buf)
            .map_err(|e| err(format!("receive: {e}")))?;
        parse_response(&buf)
            .map(|b| b.map(<[u8]>::to_vec))
            .map_err(err)
    }
    fn describe(&self) -> String {
        format!("http://{}:{}{}", self.host, self.port, self.prefix)
    }
}

/// Parses a whole HTTP/1.1 response as [`HttpTiles`] receives it: the body of a 200, `None`
/// for 404/410, an error for anything else (a message without the URL).
pub fn parse_response(buf: &[u8]) -> Result<Option<&[u8]>, String> {
    let head_end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| "no end of headers".to_owned())?;
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| "headers not UTF-8".to_owned())?;
    let body = &buf[head_end + 4..];
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| "bad status line".to_owned())?;
    let mut len = None;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
        if k == "content-length" {
            len = Some(
                v.parse::<usize>()
                    .map_err(|_| "bad Content-Length".to_owned())?,
            );
        }
        if k == "transfer-encoding" && !v.eq_ignore_ascii_case("identity") {
            return Err(format!("Transfer-Encoding {v} is not supported"));
        }
        if k == "content-encoding" && !v.eq_ignore_ascii_case("identity") {
            return Err(format!("Content-Encoding {v} is not supported"));
        }
    }
    match status {
        200 => {}
        404 | 410 => return Ok(None),
        s => return Err(format!("status {s}")),
    }
    if let Some(n) = len {
        if body.len() != n {
            return Err(format!("body has {} bytes, Content-Length {n}", body.len()));
        }
    }
    if body.len() > MAX_RESOURCE {
        return Err("resource too large".to_owned());
    }
    Ok(Some(body))
}

/// A tile fetcher for `imgctl_measure::tlog::tiles` over any [`TileFetch`]: a partial tile
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
                if id.kind != imgctl_measure::tlog::tiles::TileKind::Entries && full.len() >= n {
                    return Ok(full[..n].to_vec());
                }
                if id.kind == imgctl_measure::tlog::tiles::TileKind::Entries {
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
    let entries = imgctl_measure::tlog::tiles::parse_bundle(&full_id, full)?;
    imgctl_measure::tlog::tiles::encode_bundle(&entries[..usize::from(id.width)])
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
