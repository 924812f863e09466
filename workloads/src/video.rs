//! Video playback stand-in: a double-buffered 1280x720 RGBA frame buffer at
//! 30 frames per second where a sprite moves, a small timecode region is
//! redrawn and a decoder keeps a little reference state. As with real video
//! on a phone, each frame dirties many pages but changes few bytes in each —
//! the effect the VMsync paper measured.

use crate::{rand2, Checksum};

pub const WIDTH: usize = 1280;
pub const HEIGHT: usize = 720;
pub const FPS: u64 = 30;
const SPRITE_W: usize = 192;
const SPRITE_H: usize = 108;
const TIMECODE_W: usize = 96;
const TIMECODE_H: usize = 16;
/// Decoder reference state: 256 KiB, a few 1 KiB blocks updated per frame.
const DECODER_WORDS: usize = 256 * 1024 / 8;
const DECODER_BLOCK_WORDS: usize = 1024 / 8;
const DECODER_BLOCKS_PER_FRAME: u64 = 4;

pub struct Video {
    fb: [Vec<u32>; 2],
    decoder: Vec<u64>,
    frames: u64,
}

impl Default for Video {
    fn default() -> Self {
        Self::new()
    }
}

impl Video {
    pub fn new() -> Self {
        let mut bg = vec![0u32; WIDTH * HEIGHT];
        for y in 0..HEIGHT {
            for x in 0..WIDTH {
                bg[y * WIDTH + x] = background(x, y);
            }
        }
        let decoder = (0..DECODER_WORDS as u64).map(|i| rand2(1, i)).collect();
        Video { fb: [bg.clone(), bg], decoder, frames: 0 }
    }

    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Index of the buffer being shown (the last one rendered).
    pub fn front(&self) -> usize {
        (self.frames.wrapping_sub(1) % 2) as usize
    }

    /// Renders the next frame into the back buffer and "flips".
    pub fn render_frame(&mut self) {
        let f = self.frames;
        let buf = &mut self.fb[(f % 2) as usize];
        // The back buffer still shows frame f-2: restore the background there.
        if f >= 2 {
            let (x, y) = sprite_pos(f - 2);
            for row in y..y + SPRITE_H {
                for col in x..x + SPRITE_W {
                    buf[row * WIDTH + col] = background(col, row);
                }
            }
        }
        let (x, y) = sprite_pos(f);
        for row in 0..SPRITE_H {
            let line = &mut buf[(y + row) * WIDTH + x..][..SPRITE_W];
            for (col, px) in line.iter_mut().enumerate() {
                *px = sprite(col, row);
            }
        }
        // Timecode in the bottom-left corner: 32 bars, one per bit of f.
        let (tx, ty) = (16, HEIGHT - TIMECODE_H - 16);
        for row in 0..TIMECODE_H {
            let line = &mut buf[(ty + row) * WIDTH + tx..][..TIMECODE_W];
            for (col, px) in line.iter_mut().enumerate() {
                let bit = (f >> (col / 3)) & 1;
                *px = if bit == 1 { 0xffff_ffff } else { 0xff20_2020 };
            }
        }
        for j in 0..DECODER_BLOCKS_PER_FRAME {
            let r = rand2(f, j);
            let blocks = DECODER_WORDS / DECODER_BLOCK_WORDS;
            let base = (r % blocks as u64) as usize * DECODER_BLOCK_WORDS;
            for (k, w) in self.decoder[base..base + DECODER_BLOCK_WORDS].iter_mut().enumerate() {
                *w ^= rand2(r, k as u64);
            }
        }
        self.frames += 1;
    }

    pub fn checksum(&self) -> u64 {
        let mut c = Checksum::default();
        c.words32(&self.fb[0]);
        c.words32(&self.fb[1]);
        c.words(&self.decoder);
        c.word(self.frames);
        c.finish()
    }

    /// The checksum a guest prints at `frames=n` (host-side check).
    pub fn checksum_after(frames: u64) -> u64 {
        let mut v = Video::new();
        for _ in 0..frames {
            v.render_frame();
        }
        v.checksum()
    }
}

fn background(x: usize, y: usize) -> u32 {
    let r = (x * 255 / WIDTH) as u32;
    let g = (y * 255 / HEIGHT) as u32;
    let b = 0x40;
    0xff00_0000 | (b << 16) | (g << 8) | r
}

fn sprite(col: usize, row: usize) -> u32 {
    if col < 4 || row < 4 || col >= SPRITE_W - 4 || row >= SPRITE_H - 4 {
        0xffff_ffff
    } else if ((col / 12) + (row / 12)).is_multiple_of(2) {
        0xff30_60e0
    } else {
        0xffe0_a030
    }
}

/// Top-left corner of the sprite in frame `f`: it bounces around the screen.
fn sprite_pos(f: u64) -> (usize, usize) {
    fn bounce(p: u64, max: u64) -> usize {
        let m = p % (2 * max);
        (if m <= max { m } else { 2 * max - m }) as usize
    }
    (bounce(f * 7, (WIDTH - SPRITE_W) as u64), bounce(f * 5, (HEIGHT - SPRITE_H - TIMECODE_H - 32) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_deterministic_and_small_changes() {
        let mut v = Video::new();
        for _ in 0..3 {
            v.render_frame();
        }
        assert_eq!(v.checksum(), Video::checksum_after(3));
        assert_ne!(v.checksum(), Video::checksum_after(4));
        // Frame 3 differs from frame 1 (same buffer) only around the sprite
        // and the timecode: a small fraction of the buffer.
        let before = v.fb[1].clone();
        v.render_frame();
        let changed = before.iter().zip(&v.fb[1]).filter(|(a, b)| a != b).count();
        assert!(changed > 0 && changed < 2 * SPRITE_W * SPRITE_H + TIMECODE_W * TIMECODE_H);
    }

    #[test]
    fn sprite_stays_on_screen() {
        for f in 0..10_000 {
            let (x, y) = sprite_pos(f);
            assert!(x + SPRITE_W <= WIDTH && y + SPRITE_H <= HEIGHT - TIMECODE_H - 16);
        }
    }
}
