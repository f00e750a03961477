//! A cursor over untrusted bytes that cannot overrun.
//!
//! Every read names what it was reading, so that a truncated or malformed input produces an
//! error that says which field at which offset was missing. Lengths read from the input are
//! checked against what remains before anything is sliced or allocated.

use crate::ParseError;

/// A bounds-checked reader over a borrowed byte slice.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Offset of `buf[0]` in the whole input, so errors report absolute offsets.
    base: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self {
            buf,
            pos: 0,
            base: 0,
        }
    }

    /// A reader whose reported offsets start at `base`.
    pub fn at(buf: &'a [u8], base: usize) -> Self {
        Self { buf, pos: 0, base }
    }

    /// Absolute offset of the next byte to be read.
    pub fn offset(&self) -> usize {
        self.base + self.pos
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    /// Takes exactly `n` bytes, or fails naming `what`.
    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ParseError> {
        if n > self.remaining() {
            return Err(ParseError::truncated(
                self.offset(),
                what,
                n,
                self.remaining(),
            ));
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    /// A sub-reader over the next `n` bytes (offsets stay absolute).
    pub fn sub(&mut self, n: usize, what: &'static str) -> Result<Reader<'a>, ParseError> {
        let base = self.offset();
        Ok(Reader::at(self.take(n, what)?, base))
    }

    pub fn skip(&mut self, n: usize, what: &'static str) -> Result<(), ParseError> {
        self.take(n, what).map(|_| ())
    }

    /// Everything that is left.
    pub fn rest(&mut self) -> &'a [u8] {
        let out = &self.buf[self.pos..];
        self.pos = self.buf.len();
        out
    }

    pub fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], ParseError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, ParseError> {
        Ok(self.array::<1>(what)?[0])
    }

    pub fn u16_le(&mut self, what: &'static str) -> Result<u16, ParseError> {
        self.array(what).map(u16::from_le_bytes)
    }

    pub fn u32_le(&mut self, what: &'static str) -> Result<u32, ParseError> {
        self.array(what).map(u32::from_le_bytes)
    }

    pub fn u64_le(&mut self, what: &'static str) -> Result<u64, ParseError> {
        self.array(what).map(u64::from_le_bytes)
    }

    pub fn u16_be(&mut self, what: &'static str) -> Result<u16, ParseError> {
        self.array(what).map(u16::from_be_bytes)
    }

    pub fn u32_be(&mut self, what: &'static str) -> Result<u32, ParseError> {
        self.array(what).map(u32::from_be_bytes)
    }

    pub fn u64_be(&mut self, what: &'static str) -> Result<u64, ParseError> {
        self.array(what).map(u64::from_be_bytes)
    }

    /// Fails unless every byte has been consumed.
    pub fn expect_end(&self, what: &'static str) -> Result<(), ParseError> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(ParseError::new(
                self.offset(),
                what,
                format!("{} unexpected trailing bytes", self.remaining()),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_past_end_names_the_field_and_offset() {
        let mut r = Reader::at(&[1, 2, 3], 100);
        assert_eq!(r.u16_le("a").unwrap(), 0x0201);
        let err = r.u32_le("the length field").unwrap_err();
        assert_eq!(err.offset, 102);
        assert!(err.to_string().contains("the length field"), "{err}");
        // A failed read consumes nothing.
        assert_eq!(r.u8("b").unwrap(), 3);
        assert!(r.expect_end("x").is_ok());
    }
}
