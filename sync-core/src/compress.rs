//! zstd for epoch batches, through `zstd-safe`.
//!
//! One long zstd frame per link: each epoch's batch of page records is fed
//! to a `CCtx` kept across epochs and flushed (`ZSTD_e_flush`), so the batch
//! becomes complete blocks the standby can decode at once, and later epochs
//! can reference earlier ones (a page rewritten with content sent before, a
//! framebuffer that returns to an earlier picture) within the window.
//! Both ends must see the same sequence of batches; after a lost or
//! rejected batch the stream is broken, and both sides `reset` (a Resync).

use alloc::vec::Vec;
use zstd_safe::{CCtx, CParameter, DCtx, DParameter, InBuffer, OutBuffer, ResetDirective};

/// Settings shared by the two ends of a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ZstdConfig {
    /// zstd level; 1 is fastest, 3 zstd's default.
    pub level: i32,
    /// log2 of the window (how far back a batch may reference). The standby
    /// keeps about this much decoded history: 20 = 1 MiB.
    pub window_log: u32,
}

impl Default for ZstdConfig {
    fn default() -> Self {
        ZstdConfig { level: 3, window_log: 20 }
    }
}

/// Why a zstd step failed. `Zstd` carries zstd's error code
/// (`zstd_safe::get_error_name` names it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZstdError {
    /// zstd could not allocate a context.
    NoContext,
    /// zstd rejected a parameter or failed on the data.
    Zstd(usize),
    /// The decoded batch would be larger than the caller's bound.
    OutputTooLarge,
    /// Decoding stopped making progress (input that ends mid-block).
    Stalled,
    /// No memory for the output buffer.
    OutOfMemory,
}

/// The active side's end: compresses each epoch's batch as flushed blocks of
/// one stream.
pub struct Compressor {
    cctx: CCtx<'static>,
    config: ZstdConfig,
}

impl Compressor {
    pub fn new(config: ZstdConfig) -> Result<Self, ZstdError> {
        let cctx = CCtx::try_create().ok_or(ZstdError::NoContext)?;
        let mut c = Compressor { cctx, config };
        c.apply_config()?;
        Ok(c)
    }

    fn apply_config(&mut self) -> Result<(), ZstdError> {
        self.cctx.set_parameter(CParameter::CompressionLevel(self.config.level)).map_err(ZstdError::Zstd)?;
        self.cctx.set_parameter(CParameter::WindowLog(self.config.window_log)).map_err(ZstdError::Zstd)?;
        Ok(())
    }

    /// Compresses `input` (one epoch's records) and appends the flushed
    /// blocks to `out`. Returns the number of bytes appended.
    pub fn compress_batch(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, ZstdError> {
        let start = out.len();
        // One reservation that fits the whole batch (plus frame header and
        // block headers) keeps the loop to a single pass in practice.
        out.try_reserve(zstd_safe::compress_bound(input.len()) + 32).map_err(|_| ZstdError::OutOfMemory)?;
        let mut inb = InBuffer::around(input);
        loop {
            if out.capacity() - out.len() < 64 {
                out.try_reserve(4096).map_err(|_| ZstdError::OutOfMemory)?;
            }
            let pos = out.len();
            let mut outb = OutBuffer::around_pos(out, pos);
            let remaining = self.cctx.compress_stream2(&mut outb, &mut inb, zstd_safe::zstd_sys::ZSTD_EndDirective::ZSTD_e_flush).map_err(ZstdError::Zstd)?;
            if remaining == 0 && inb.pos() == input.len() {
                break;
            }
        }
        Ok(out.len() - start)
    }

    /// Starts a new stream (a new frame); the peer's `Decompressor` must
    /// `reset` at the same point.
    pub fn reset(&mut self) -> Result<(), ZstdError> {
        self.cctx.reset(ResetDirective::SessionOnly).map_err(ZstdError::Zstd)?;
        Ok(())
    }

    pub fn config(&self) -> ZstdConfig {
        self.config
    }
}

/// The standby's end: decodes the batches of one stream, in order.
pub struct Decompressor {
    dctx: DCtx<'static>,
}

impl Decompressor {
    pub fn new(config: ZstdConfig) -> Result<Self, ZstdError> {
        let mut dctx = DCtx::try_create().ok_or(ZstdError::NoContext)?;
        // Refuse frames asking for a bigger window than agreed: it bounds the
        // history buffer zstd allocates for a hostile or broken peer.
        dctx.set_parameter(DParameter::WindowLogMax(config.window_log.max(10))).map_err(ZstdError::Zstd)?;
        Ok(Decompressor { dctx })
    }

    /// Decodes one batch, appending at most `max_out` bytes to `out`.
    /// Returns the number of bytes appended. More output than `max_out` is
    /// an error, never a reallocation beyond the bound.
    pub fn decompress_batch(&mut self, input: &[u8], out: &mut Vec<u8>, max_out: usize) -> Result<usize, ZstdError> {
        let start = out.len();
        // One byte more than allowed: filling it proves the batch is too big.
        let limit = start.checked_add(max_out).and_then(|l| l.checked_add(1));
        let limit = limit.ok_or(ZstdError::OutputTooLarge)?;
        let mut inb = InBuffer::around(input);
        loop {
            let in_before = inb.pos();
            let out_before = out.len();
            if out.len() >= limit {
                return Err(ZstdError::OutputTooLarge);
            }
            // Grow in steps, never past the bound.
            let want = (limit - out.len()).min(128 * 1024);
            if out.try_reserve_exact(want.saturating_sub(out.capacity() - out.len())).is_err() {
                out.truncate(start);
                return Err(ZstdError::OutOfMemory);
            }
            let cap = (out.len() + want).min(out.capacity());
            // OutBuffer writes up to the Vec's capacity; LimitedVec keeps it
            // to the bound.
            let res = {
                let mut tmp = LimitedVec { vec: &mut *out, cap };
                let pos = tmp.vec.len();
                let mut outb = OutBuffer::around_pos(&mut tmp, pos);
                self.dctx.decompress_stream(&mut outb, &mut inb)
            };
            if let Err(code) = res {
                out.truncate(start);
                return Err(ZstdError::Zstd(code));
            }
            if out.len() > start + max_out {
                out.truncate(start);
                return Err(ZstdError::OutputTooLarge);
            }
            let consumed_all = inb.pos() == input.len();
            let out_room_left = out.len() < cap;
            if consumed_all && out_room_left {
                // zstd stops only when it has no input or no room: with room
                // left and all input taken, everything decodable is out.
                return Ok(out.len() - start);
            }
            if inb.pos() == in_before && out.len() == out_before {
                out.truncate(start);
                return Err(ZstdError::Stalled);
            }
        }
    }

    /// Forgets the stream; the next batch must start a new frame.
    pub fn reset(&mut self) -> Result<(), ZstdError> {
        self.dctx.reset(ResetDirective::SessionOnly).map_err(ZstdError::Zstd)?;
        Ok(())
    }
}

/// A `Vec` whose usable capacity is cut to `cap`, so zstd cannot write past
/// the caller's bound.
struct LimitedVec<'a> {
    vec: &'a mut Vec<u8>,
    cap: usize,
}

// SAFETY: as_slice covers only initialised bytes (the Vec's len); capacity is
// at most the Vec's real capacity, so zstd writes only into owned memory;
// filled_until is called by zstd-safe with the count zstd wrote, which is
// initialised, and never above `capacity()`.
unsafe impl zstd_safe::WriteBuf for LimitedVec<'_> {
    fn as_slice(&self) -> &[u8] {
        self.vec.as_slice()
    }
    fn capacity(&self) -> usize {
        self.cap.min(self.vec.capacity())
    }
    fn as_mut_ptr(&mut self) -> *mut u8 {
        self.vec.as_mut_ptr()
    }
    unsafe fn filled_until(&mut self, n: usize) {
        // SAFETY: see the impl's SAFETY comment: n <= capacity() and the
        // first n bytes were written by zstd.
        unsafe { self.vec.set_len(n) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn text(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| b"the quick brown fox "[(i + seed as usize) % 20]).collect()
    }

    #[test]
    fn batches_round_trip_in_one_stream() {
        let mut c = Compressor::new(ZstdConfig::default()).unwrap();
        let mut d = Decompressor::new(ZstdConfig::default()).unwrap();
        for epoch in 0..5u8 {
            let input = text(10_000 + epoch as usize * 777, epoch);
            let mut wire = Vec::new();
            let n = c.compress_batch(&input, &mut wire).unwrap();
            assert_eq!(n, wire.len());
            assert!(n < input.len() / 10, "text compresses: {n}");
            let mut back = Vec::new();
            d.decompress_batch(&wire, &mut back, input.len()).unwrap();
            assert_eq!(back, input);
        }
    }

    #[test]
    fn later_epochs_reference_earlier_ones() {
        // Random-looking data repeated in the next epoch: the second batch
        // costs almost nothing because the window still holds the first.
        let mut x = 0x1234_5678u32;
        let data: Vec<u8> = (0..20_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        let mut c = Compressor::new(ZstdConfig::default()).unwrap();
        let mut d = Decompressor::new(ZstdConfig::default()).unwrap();
        let mut w1 = Vec::new();
        c.compress_batch(&data, &mut w1).unwrap();
        let mut w2 = Vec::new();
        c.compress_batch(&data, &mut w2).unwrap();
        assert!(w1.len() > 19_000);
        assert!(w2.len() < 200, "second batch {} bytes", w2.len());
        let mut out = Vec::new();
        d.decompress_batch(&w1, &mut out, data.len()).unwrap();
        out.clear();
        d.decompress_batch(&w2, &mut out, data.len()).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn output_bound_is_enforced() {
        let mut c = Compressor::new(ZstdConfig::default()).unwrap();
        let input = vec![7u8; 100_000];
        let mut wire = Vec::new();
        c.compress_batch(&input, &mut wire).unwrap();
        let mut d = Decompressor::new(ZstdConfig::default()).unwrap();
        let mut out = vec![1, 2, 3];
        assert_eq!(d.decompress_batch(&wire, &mut out, 99_999), Err(ZstdError::OutputTooLarge));
        assert_eq!(out, [1, 2, 3], "nothing appended on error");
        let mut d = Decompressor::new(ZstdConfig::default()).unwrap();
        let mut out = Vec::new();
        assert_eq!(d.decompress_batch(&wire, &mut out, 100_000), Ok(100_000));
        assert!(out.capacity() <= 100_001 + 128 * 1024);
    }

    #[test]
    fn garbage_and_bit_flips_are_errors_not_panics() {
        let mut c = Compressor::new(ZstdConfig::default()).unwrap();
        let input = text(5000, 3);
        let mut wire = Vec::new();
        c.compress_batch(&input, &mut wire).unwrap();
        let mut d = Decompressor::new(ZstdConfig::default()).unwrap();
        let mut out = Vec::new();
        assert!(d.decompress_batch(b"not zstd at all", &mut out, 1 << 20).is_err());
        for i in 0..wire.len() {
            for bit in [0, 3, 7] {
                let mut bad = wire.clone();
                bad[i] ^= 1 << bit;
                let mut d = Decompressor::new(ZstdConfig::default()).unwrap();
                let mut out = Vec::new();
                // Either an error or some output within the bound; never a
                // panic. (Record hashes catch silently wrong output.)
                if d.decompress_batch(&bad, &mut out, 1 << 16).is_ok() {
                    assert!(out.len() <= 1 << 16);
                }
            }
        }
    }

    #[test]
    fn reset_starts_a_new_stream_on_both_ends() {
        let mut c = Compressor::new(ZstdConfig { level: 1, window_log: 17 }).unwrap();
        let mut d = Decompressor::new(ZstdConfig { level: 1, window_log: 17 }).unwrap();
        let a = text(3000, 1);
        let mut w = Vec::new();
        c.compress_batch(&a, &mut w).unwrap();
        // The standby lost this batch; both sides resync.
        c.reset().unwrap();
        d.reset().unwrap();
        w.clear();
        c.compress_batch(&a, &mut w).unwrap();
        let mut out = Vec::new();
        d.decompress_batch(&w, &mut out, a.len()).unwrap();
        assert_eq!(out, a);
    }

    #[test]
    fn window_bigger_than_agreed_is_refused() {
        let big = ZstdConfig { level: 1, window_log: 24 };
        let small = ZstdConfig { level: 1, window_log: 17 };
        let mut c = Compressor::new(big).unwrap();
        let mut w = Vec::new();
        c.compress_batch(&text(3000, 2), &mut w).unwrap();
        let mut d = Decompressor::new(small).unwrap();
        let mut out = Vec::new();
        assert!(matches!(d.decompress_batch(&w, &mut out, 1 << 20), Err(ZstdError::Zstd(_))));
    }
}
