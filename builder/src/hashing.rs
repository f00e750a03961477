//! Hashing while writing: [`HashingWriter`] passes bytes on to its writer in chunks of at most
//! [`CHUNK`] bytes and feeds every chunk to its [`Tap`]s, so a large artifact is digested in
//! every bank in the one pass that writes it. The banks are shared out among the cores
//! ([`imgctl_measure::bank::split_banks`]); each core's [`MultiDigest`] hashes every tap in its
//! banks (the SHA-384/SHA-512 digests of all taps as lanes of one multi-buffer computation).
//! A tap may skip byte ranges (Authenticode leaves out header fields).
//!
//! Memory: one chunk buffer, whatever the size of what goes through.

use std::io::{self, Write};
use std::ops::Range;

use imgctl_measure::bank::{split_banks, MultiDigest};
use imgctl_measure::{Digest, HashAlg};
use rayon::prelude::*;

use crate::Error;

/// The most a [`HashingWriter`] buffers before hashing and writing.
pub const CHUNK: usize = 1 << 20;

/// Digests in some banks of the bytes written, except `skip` (ranges of stream offsets).
#[derive(Debug)]
pub struct Tap {
    banks: Vec<HashAlg>,
    skip: Vec<Range<u64>>,
}

impl Tap {
    /// A tap hashing every byte in each of `banks`.
    pub fn new(banks: &[HashAlg]) -> Result<Tap, Error> {
        Tap::skipping(banks, Vec::new())
    }

    /// A tap hashing every byte outside `skip` in each of `banks`.
    pub fn skipping(banks: &[HashAlg], skip: Vec<Range<u64>>) -> Result<Tap, Error> {
        if let Some(b) = banks.iter().find(|b| !b.is_supported()) {
            return Err(
                imgctl_measure::Error::from(imgctl_measure::bank::UnsupportedAlg(*b)).into(),
            );
        }
        Ok(Tap {
            banks: banks.to_vec(),
            skip,
        })
    }

    /// The parts of `chunk` (at stream offset `at`) this tap hashes.
    fn parts<'c>(&self, chunk: &'c [u8], at: u64) -> Vec<&'c [u8]> {
        let end = at + chunk.len() as u64;
        let mut parts = Vec::with_capacity(self.skip.len() + 1);
        let mut from = at;
        for s in &self.skip {
            if s.end <= from || s.start >= end {
                continue;
            }
            if s.start > from {
                parts.push(&chunk[(from - at) as usize..(s.start - at) as usize]);
            }
            from = from.max(s.end.min(end));
        }
        if from < end {
            parts.push(&chunk[(from - at) as usize..]);
        }
        parts
    }
}

/// A writer that hashes what it writes; see the module documentation.
#[derive(Debug)]
pub struct HashingWriter<W: Write> {
    inner: W,
    buf: Vec<u8>,
    /// Bytes hashed and passed on so far.
    written: u64,
    taps: Vec<Tap>,
    /// One per core: every tap in that core's banks.
    workers: Vec<MultiDigest>,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W, taps: Vec<Tap>) -> Result<Self, Error> {
        let mut banks: Vec<HashAlg> = Vec::new();
        for b in taps.iter().flat_map(|t| &t.banks) {
            if !banks.contains(b) {
                banks.push(*b);
            }
        }
        let cores = rayon::current_num_threads();
        let workers = split_banks(&banks, cores)
            .iter()
            .map(|g| MultiDigest::new(g, taps.len()))
            .collect::<Result<_, _>>()
            .map_err(imgctl_measure::Error::from)?;
        Ok(HashingWriter {
            inner,
            buf: Vec::with_capacity(CHUNK),
            written: 0,
            taps,
            workers,
        })
    }

    /// Bytes written so far (passed on or buffered).
    pub fn position(&self) -> u64 {
        self.written + self.buf.len() as u64
    }

    fn drain(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let (chunk, at) = (&self.buf[..], self.written);
        let parts: Vec<Vec<&[u8]>> = self.taps.iter().map(|t| t.parts(chunk, at)).collect();
        let rounds = parts.iter().map(Vec::len).max().unwrap_or(0);
        self.workers
            .par_iter_mut()
            .with_max_len(1)
            .try_for_each(|w| {
                (0..rounds).try_for_each(|r| {
                    let round: Vec<(usize, &[u8])> = parts
                        .iter()
                        .enumerate()
                        .filter_map(|(t, p)| p.get(r).map(|p| (t, *p)))
                        .collect();
                    w.update_many(&round)
                })
            })
            .map_err(io::Error::other)?;
        self.inner.write_all(chunk)?;
        self.written += chunk.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// Writes out what is buffered, flushes the writer and returns it, the byte count and each
    /// tap's digests (in the order of its banks).
    pub fn finish(mut self) -> io::Result<(W, u64, Vec<Vec<Digest>>)> {
        self.drain()?;
        self.inner.flush()?;
        // [worker][tap][the worker's banks]
        let mut per_worker = Vec::with_capacity(self.workers.len());
        for w in self.workers {
            let banks = w.banks().to_vec();
            per_worker.push((banks, w.finish().map_err(io::Error::other)?));
        }
        let mut digests = Vec::with_capacity(self.taps.len());
        for (t, tap) in self.taps.iter().enumerate() {
            let mut row = Vec::with_capacity(tap.banks.len());
            for bank in &tap.banks {
                let d = per_worker.iter().find_map(|(banks, d)| {
                    let j = banks.iter().position(|b| b == bank)?;
                    d.get(t)?.get(j).cloned()
                });
                row.push(d.ok_or_else(|| io::Error::other(format!("no {bank} digest")))?);
            }
            digests.push(row);
        }
        Ok((self.inner, self.written, digests))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() == CHUNK {
            self.drain()?;
        }
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        Ok(n)
    }

    /// Does not pass the flush on: the cpio and gzip layers above flush at points of their
    /// own choosing, and nothing is final before [`HashingWriter::finish`].
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taps_hash_what_is_written_minus_their_skips_whatever_the_write_sizes() {
        let data: Vec<u8> = (0..3 * CHUNK as u32 + 12345)
            .map(|i| (i % 251) as u8)
            .collect();
        let banks = HashAlg::ALL;
        // Skips inside one chunk, across a chunk boundary, and at the very start.
        let skip = vec![0..3, 100..104, CHUNK as u64 - 2..CHUNK as u64 + 6];
        let mut w = HashingWriter::new(
            Vec::new(),
            vec![
                Tap::new(&banks).unwrap(),
                Tap::skipping(&banks, skip.clone()).unwrap(),
            ],
        )
        .unwrap();
        let mut at = 0;
        for (i, step) in [1usize, 7, 4096, CHUNK + 3, 65_537]
            .iter()
            .cycle()
            .enumerate()
        {
            if at == data.len() || i > 10_000 {
                break;
            }
            let end = (at + step).min(data.len());
            w.write_all(&data[at..end]).unwrap();
            at = end;
        }
        let (out, n, digests) = w.finish().unwrap();
        assert_eq!(out, data);
        assert_eq!(n, data.len() as u64);
        let mut kept = Vec::new();
        for (i, b) in data.iter().enumerate() {
            if !skip.iter().any(|s| s.contains(&(i as u64))) {
                kept.push(*b);
            }
        }
        for (j, b) in banks.iter().enumerate() {
            assert_eq!(digests[0][j], b.hash(&data).unwrap());
            assert_eq!(digests[1][j], b.hash(&kept).unwrap());
        }
    }
}

/// Passes bytes on and counts them (where the output is, e.g. for padding).
#[derive(Debug)]
pub(crate) struct CountingWriter<W> {
    pub(crate) inner: W,
    pub(crate) count: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
