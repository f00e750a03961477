//! Hashing while writing: [`HashingWriter`] passes bytes on to its writer in chunks of at most
//! [`CHUNK`] bytes and feeds every chunk to its [`Tap`]s (one hasher per bank each, all of them in
//! parallel), so a large artifact is digested in every bank in the one pass that writes it.
//! A tap may skip byte ranges (Authenticode leaves out header fields).
//!
//! Memory: one chunk buffer, whatever the size of what goes through.

use std::io::{self, Write};
use std::ops::Range;

use imgctl_measure::{Digest, HashAlg};
use rayon::prelude::*;

use crate::Error;

/// The most a [`HashingWriter`] buffers before hashing and writing.
pub const CHUNK: usize = 1 << 20;

/// Digests in some banks of the bytes written, except `skip` (ranges of stream offsets).
#[derive(Debug)]
pub struct Tap {
    hashers: Vec<imgctl_measure::bank::Hasher>,
    skip: Vec<Range<u64>>,
}

impl Tap {
    /// A tap hashing every byte in each of `banks`.
    pub fn new(banks: &[HashAlg]) -> Result<Tap, Error> {
        Tap::skipping(banks, Vec::new())
    }

    /// A tap hashing every byte outside `skip` in each of `banks`.
    pub fn skipping(banks: &[HashAlg], skip: Vec<Range<u64>>) -> Result<Tap, Error> {
        let hashers = banks
            .iter()
            .map(|b| b.hasher())
            .collect::<Result<_, _>>()
            .map_err(imgctl_measure::Error::from)?;
        Ok(Tap { hashers, skip })
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
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W, taps: Vec<Tap>) -> Self {
        HashingWriter {
            inner,
            buf: Vec::with_capacity(CHUNK),
            written: 0,
            taps,
        }
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
        let mut jobs: Vec<(&mut imgctl_measure::bank::Hasher, Vec<&[u8]>)> = Vec::new();
        for tap in &mut self.taps {
            let parts = tap.parts(chunk, at);
            for h in &mut tap.hashers {
                jobs.push((h, parts.clone()));
            }
        }
        jobs.par_iter_mut().with_max_len(1).for_each(|(h, parts)| {
            for p in parts.iter() {
                h.update(p);
            }
        });
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
        let digests = self
            .taps
            .into_iter()
            .map(|t| t.hashers.into_iter().map(|h| h.finish()).collect())
            .collect();
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
        let banks = [HashAlg::SHA1, HashAlg::SHA256];
        // Skips inside one chunk, across a chunk boundary, and at the very start.
        let skip = vec![0..3, 100..104, CHUNK as u64 - 2..CHUNK as u64 + 6];
        let mut w = HashingWriter::new(
            Vec::new(),
            vec![
                Tap::new(&banks).unwrap(),
                Tap::skipping(&banks, skip.clone()).unwrap(),
            ],
        );
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
