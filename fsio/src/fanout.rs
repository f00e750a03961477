//! Reading parts of a file once and handing every chunk to several workers, each on its own
//! thread (I/O): one read of the bytes, consumed on every core at once, e.g. the banks of a
//! PCR prediction split across the cores.
//!
//! The calling thread reads the extents in order with positioned reads into a few reused
//! buffers (no buffer per chunk, so no page faults after the first round) and sends each
//! chunk to every worker; a buffer goes back to the reader when the last worker is done with
//! it. Memory: [`BUFFERS`] x [`CHUNK`] bytes, whatever the file's size. A worker's error stops
//! the read; a file that is shorter than its extents say is an error, not a short result.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::Arc;

use crate::Error;

/// Bytes per chunk: small enough that a chunk stays in a core's L2 cache while the worker
/// hashes it in each of its banks, large enough that a read costs little per byte.
pub const CHUNK: usize = 256 << 10;
/// Buffers in flight: the reader runs this far ahead of the slowest worker.
pub const BUFFERS: usize = 8;

/// A part of the file: `len` bytes at `offset`, then `zeros` zero bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub len: u64,
    pub zeros: u64,
}

/// Why [`read_fanned_out`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum FanOutError<E> {
    #[error(transparent)]
    Io(#[from] Error),
    #[error(transparent)]
    Worker(E),
}

/// A chunk of extent `extent`; its buffer returns to the reader when the last worker drops it
/// (also when a failed worker's queue is dropped unread, so the reader never waits forever).
struct Chunk {
    extent: usize,
    len: usize,
    buf: Vec<u8>,
    back: Sender<Vec<u8>>,
}

impl Drop for Chunk {
    fn drop(&mut self) {
        // The reader may be gone (it stopped on an error): the buffer is then simply freed.
        let _ = self.back.send(std::mem::take(&mut self.buf));
    }
}

/// Reads `extents` of `file` (named `path` in errors) once, in order, and calls every worker
/// with `(extent index, bytes)` for each chunk, the workers in parallel, each on its own
/// thread and each seeing every extent's bytes in order. Returns the workers when all of
/// them have seen everything.
pub fn read_fanned_out<W, E>(
    file: &File,
    path: &Path,
    extents: &[Extent],
    workers: Vec<W>,
) -> Result<Vec<W>, FanOutError<E>>
where
    W: FnMut(usize, &[u8]) -> Result<(), E> + Send,
    E: Send,
{
    std::thread::scope(|scope| {
        let (back_tx, back_rx) = mpsc::channel::<Vec<u8>>();
        let mut queues: Vec<SyncSender<Arc<Chunk>>> = Vec::new();
        let mut handles = Vec::new();
        for mut w in workers {
            let (tx, rx) = mpsc::sync_channel::<Arc<Chunk>>(BUFFERS);
            queues.push(tx);
            handles.push(scope.spawn(move || -> Result<W, E> {
                for chunk in rx {
                    w(chunk.extent, &chunk.buf[..chunk.len])?;
                }
                Ok(w)
            }));
        }
        let read = read_into(file, path, extents, &queues, &back_tx, &back_rx);
        drop(queues);
        let mut out = Vec::new();
        let mut failed = None;
        for h in handles {
            match h.join() {
                Ok(Ok(w)) => out.push(w),
                Ok(Err(e)) => {
                    failed.get_or_insert(FanOutError::Worker(e));
                }
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        // A worker's error explains a stopped read better than the read does.
        match (failed, read) {
            (Some(e), _) => Err(e),
            (None, Err(e)) => Err(FanOutError::Io(e)),
            (None, Ok(())) => Ok(out),
        }
    })
}

/// The reader's side: returns when every chunk is sent or a worker has gone (its error is
/// then reported by the caller).
fn read_into(
    file: &File,
    path: &Path,
    extents: &[Extent],
    queues: &[SyncSender<Arc<Chunk>>],
    back_tx: &Sender<Vec<u8>>,
    back_rx: &Receiver<Vec<u8>>,
) -> Result<(), Error> {
    let mut allocated = 0;
    let mut next_buffer = || -> Vec<u8> {
        if let Ok(b) = back_rx.try_recv() {
            return b;
        }
        if allocated < BUFFERS {
            allocated += 1;
            return vec![0; CHUNK];
        }
        // Every buffer is in a queue or with a worker; one comes back when it is dropped.
        back_rx.recv().unwrap_or_else(|_| vec![0; CHUNK])
    };
    for (index, e) in extents.iter().enumerate() {
        let mut pos = e.offset;
        let mut left = e.len;
        let mut zeros = e.zeros;
        while left > 0 || zeros > 0 {
            let mut buf = next_buffer();
            let len;
            if left > 0 {
                len = usize::try_from(left).unwrap_or(CHUNK).min(CHUNK);
                file.read_exact_at(&mut buf[..len], pos).map_err(|err| {
                    let action = if err.kind() == std::io::ErrorKind::UnexpectedEof {
                        "reading (the file is shorter than its headers say; did it change?)"
                    } else {
                        "reading"
                    };
                    Error::io(path, action, err)
                })?;
                pos += len as u64;
                left -= len as u64;
            } else {
                len = usize::try_from(zeros).unwrap_or(CHUNK).min(CHUNK);
                buf[..len].fill(0);
                zeros -= len as u64;
            }
            let chunk = Arc::new(Chunk {
                extent: index,
                len,
                buf,
                back: back_tx.clone(),
            });
            for q in queues {
                if q.send(Arc::clone(&chunk)).is_err() {
                    return Ok(()); // that worker failed; the caller reports its error
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_of(data: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(data).unwrap();
        f
    }

    #[test]
    fn every_worker_sees_every_extent_in_order() {
        let data: Vec<u8> = (0..3 * CHUNK as u32 + 77)
            .map(|i| (i % 251) as u8)
            .collect();
        let f = file_of(&data);
        let extents = [
            Extent {
                offset: 10,
                len: 2 * CHUNK as u64 + 5,
                zeros: CHUNK as u64 + 3,
            },
            Extent {
                offset: 0,
                len: 9,
                zeros: 0,
            },
            Extent {
                offset: 7,
                len: 0,
                zeros: 4,
            },
        ];
        let mut seen: Vec<Vec<Vec<u8>>> = vec![Vec::new(); 2];
        let workers: Vec<_> = seen
            .iter_mut()
            .map(|s| {
                *s = vec![Vec::new(); 3];
                move |i: usize, b: &[u8]| -> Result<(), ()> {
                    s[i].extend_from_slice(b);
                    Ok(())
                }
            })
            .collect();
        read_fanned_out(f.as_file(), f.path(), &extents, workers).unwrap();
        let mut want0 = data[10..10 + 2 * CHUNK + 5].to_vec();
        want0.extend(std::iter::repeat_n(0, CHUNK + 3));
        for s in &seen {
            assert_eq!(s[0], want0);
            assert_eq!(s[1], data[..9]);
            assert_eq!(s[2], [0; 4]);
        }
    }

    #[test]
    fn a_short_file_and_a_failing_worker_are_errors() {
        let f = file_of(&[1; 100]);
        let extents = [Extent {
            offset: 50,
            len: 51,
            zeros: 0,
        }];
        let ok = |_: usize, _: &[u8]| -> Result<(), String> { Ok(()) };
        let Err(e) = read_fanned_out(f.as_file(), f.path(), &extents, vec![ok, ok]) else {
            panic!("a file shorter than its extents was read")
        };
        assert!(e.to_string().contains("shorter"), "{e}");
        let big = [Extent {
            offset: 0,
            len: 100,
            zeros: 40 * CHUNK as u64,
        }];
        let mut calls = 0;
        let failing = move |_: usize, _: &[u8]| -> Result<(), String> {
            calls += 1;
            if calls == 3 {
                return Err("worker gave up".into());
            }
            Ok(())
        };
        let Err(e) = read_fanned_out(f.as_file(), f.path(), &big, vec![failing, failing]) else {
            panic!("a failing worker went unnoticed")
        };
        assert!(
            matches!(e, FanOutError::Worker(ref m) if m == "worker gave up"),
            "{e}"
        );
    }
}
