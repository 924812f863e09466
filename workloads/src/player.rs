//! Video playback with a real decoder: Debian's `dav1d` decodes an AV1 clip
//! to YUV4MPEG2 on a pipe, and each decoded frame is copied into a
//! double-buffered frame buffer at the clip's frame rate, as a player hands
//! frames to the display. The clip plays in a loop: shortly before its end
//! the next decoder is started on it, so the loop has no gap (as a player
//! prerolls the next item for gapless playback).
//!
//! The pipe paces the decoder: dav1d blocks on its write once the pipe is
//! full, so it decodes a few frames ahead, as a player's small decode queue
//! does. The pipe is enlarged to hold whole frames: with the default 64 KiB
//! one, every 4 KiB that dav1d writes would wake the player for a partial
//! read, and those context switches halved the frame rate under QEMU's TCG.
//! Only in the study initramfs (the base one has no dav1d).

use crate::Checksum;
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

pub const DECODER: &str = "/usr/bin/dav1d";
pub const CLIP: &str = "/usr/share/vmsync/clip.ivf";
/// One decoding thread: the guest has one CPU, and a fixed count keeps the
/// decoder's memory use the same on every board.
const DECODER_THREADS: &str = "1";
/// How many frames before the clip's end the next decoder starts: its start
/// (exec, loading libraries) then overlaps playback instead of stalling it.
const PREROLL_FRAMES: u64 = 15;
/// The decoder's pipe: about three 640x360 frames (Linux's default limit for
/// unprivileged processes is 1 MiB).
const PIPE_BYTES: i32 = 1 << 20;
const F_SETPIPE_SZ: i32 = 1031;

extern "C" {
    /// From the C library std already links (musl in the guest).
    fn fcntl(fd: i32, cmd: i32, ...) -> i32;
}

/// What a YUV4MPEG2 stream header says about its frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Y4m {
    pub width: usize,
    pub height: usize,
    pub fps_num: u64,
    pub fps_den: u64,
}

impl Y4m {
    /// Bytes of one 8-bit 4:2:0 frame (the only layout the clip uses).
    pub fn frame_len(&self) -> usize {
        let (cw, ch) = (self.width.div_ceil(2), self.height.div_ceil(2));
        self.width * self.height + 2 * cw * ch
    }

    pub fn frame_period(&self) -> Duration {
        Duration::from_nanos(1_000_000_000 * self.fps_den / self.fps_num)
    }
}

/// Parses `YUV4MPEG2 W640 H360 F30:1 Ip A1:1 C420jpeg` (without the newline).
pub fn parse_y4m_header(line: &str) -> Result<Y4m, String> {
    let mut words = line.split_ascii_whitespace();
    if words.next() != Some("YUV4MPEG2") {
        return Err(format!("not a YUV4MPEG2 stream: {line:?}"));
    }
    let (mut w, mut h, mut fps) = (None, None, None);
    for word in words {
        let (tag, value) = word.split_at(1);
        match tag {
            "W" => w = value.parse().ok(),
            "H" => h = value.parse().ok(),
            "F" => {
                fps = value.split_once(':').and_then(|(n, d)| Some((n.parse().ok()?, d.parse().ok()?)));
            }
            // 8-bit 4:2:0 in any siting; 10-bit ("C420p10") or 4:4:4 would
            // need another frame size.
            "C" if !matches!(value, "420" | "420jpeg" | "420paldv" | "420mpeg2") => {
                return Err(format!("unsupported colour space C{value}: the clip must be 8-bit 4:2:0"));
            }
            _ => {}
        }
    }
    match (w, h, fps) {
        (Some(width), Some(height), Some((fps_num, fps_den))) if width > 0 && height > 0 && fps_num > 0 && fps_den > 0 => {
            Ok(Y4m { width, height, fps_num, fps_den })
        }
        _ => Err(format!("YUV4MPEG2 header without size or frame rate: {line:?}")),
    }
}

/// The frame count in an IVF file header (0 when the writer left it out).
pub fn ivf_frame_count(header: &[u8]) -> u64 {
    match header.get(..32) {
        Some(h) if h.starts_with(b"DKIF") => u64::from(u32::from_le_bytes(h[24..28].try_into().unwrap())),
        _ => 0,
    }
}

type Decoder = (Child, BufReader<ChildStdout>);

pub struct Player {
    decoder: PathBuf,
    clip: PathBuf,
    child: Child,
    out: BufReader<ChildStdout>,
    /// The decoder for the next loop, once started.
    next: Option<Decoder>,
    /// Frames in the clip, from its header (0: unknown, no preroll).
    clip_frames: u64,
    format: Y4m,
    fb: [Vec<u8>; 2],
    frames: u64,
    loops: u64,
    frames_this_loop: u64,
}

impl Player {
    /// Starts the decoder and reads the stream header.
    pub fn open(decoder: &Path, clip: &Path) -> io::Result<Self> {
        let mut header = [0u8; 32];
        std::fs::File::open(clip)?.read_exact(&mut header)?;
        let clip_frames = ivf_frame_count(&header);
        let (child, mut out) = spawn(decoder, clip)?;
        let format = read_header(&mut out)?;
        let fb = [vec![0u8; format.frame_len()], vec![0u8; format.frame_len()]];
        Ok(Player {
            decoder: decoder.to_path_buf(),
            clip: clip.to_path_buf(),
            child,
            out,
            next: None,
            clip_frames,
            format,
            fb,
            frames: 0,
            loops: 0,
            frames_this_loop: 0,
        })
    }

    pub fn format(&self) -> Y4m {
        self.format
    }

    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Times the clip started over.
    pub fn loops(&self) -> u64 {
        self.loops
    }

    /// Takes the next decoded frame into the back buffer and flips.
    pub fn present_next(&mut self) -> io::Result<()> {
        if !self.next_frame_header()? {
            self.restart()?;
            if !self.next_frame_header()? {
                let (d, c) = (self.decoder.display(), self.clip.display());
                return Err(io::Error::other(format!("{d} decoded no frame of {c}")));
            }
        }
        let back = &mut self.fb[(self.frames % 2) as usize];
        self.out.read_exact(back)?;
        self.frames += 1;
        self.frames_this_loop += 1;
        if self.next.is_none() && self.clip_frames > 0 && self.frames_this_loop + PREROLL_FRAMES >= self.clip_frames {
            self.next = Some(spawn(&self.decoder, &self.clip)?);
        }
        Ok(())
    }

    /// Checksum of the frame on show: a function of the frame's index in
    /// the clip alone (AV1 decoding is exact).
    pub fn checksum(&self) -> u64 {
        let mut c = Checksum::default();
        if self.frames > 0 {
            c.bytes(&self.fb[((self.frames - 1) % 2) as usize]);
        }
        c.finish()
    }

    /// Reads a `FRAME` line; false at the end of the stream.
    fn next_frame_header(&mut self) -> io::Result<bool> {
        let mut line = Vec::new();
        // Frame lines are short; a bound keeps a broken stream from eating RAM.
        (&mut self.out).take(256).read_until(b'\n', &mut line)?;
        if line.is_empty() {
            return Ok(false);
        }
        if !line.starts_with(b"FRAME") || !line.ends_with(b"\n") {
            return Err(io::Error::other(format!("expected a FRAME line from dav1d, got {:?}", String::from_utf8_lossy(&line))));
        }
        Ok(true)
    }

    /// The clip ended: reap the decoder (it must have succeeded) and go on
    /// with the next one (started now if it was not prerolled).
    fn restart(&mut self) -> io::Result<()> {
        let status = self.child.wait()?;
        if !status.success() {
            return Err(io::Error::other(format!("{} exited ({status})", self.decoder.display())));
        }
        if self.frames_this_loop == 0 {
            return Err(io::Error::other(format!("{} decoded no frame of {}", self.decoder.display(), self.clip.display())));
        }
        let (child, mut out) = match self.next.take() {
            Some(d) => d,
            None => spawn(&self.decoder, &self.clip)?,
        };
        let format = read_header(&mut out)?;
        if format != self.format {
            return Err(io::Error::other(format!("the clip changed format: {format:?} after {:?}", self.format)));
        }
        (self.child, self.out) = (child, out);
        self.loops += 1;
        self.frames_this_loop = 0;
        Ok(())
    }
}

impl Drop for Player {
    fn drop(&mut self) {
        for child in std::iter::once(&mut self.child).chain(self.next.as_mut().map(|d| &mut d.0)) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn spawn(decoder: &Path, clip: &Path) -> io::Result<Decoder> {
    let mut child = Command::new(decoder)
        .arg("--quiet")
        .arg("--input")
        .arg(clip)
        .args(["--output", "-", "--muxer", "yuv4mpeg2", "--threads", DECODER_THREADS])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("starting {}: {e}", decoder.display())))?;
    let out = child.stdout.take().expect("stdout is piped");
    // Best effort: a smaller pipe only costs speed.
    // SAFETY: fcntl on a pipe descriptor we own; no memory is passed.
    unsafe { fcntl(out.as_raw_fd(), F_SETPIPE_SZ, PIPE_BYTES) };
    // Small, so that frame reads (larger) bypass it and copy only once.
    Ok((child, BufReader::with_capacity(64 << 10, out)))
}

fn read_header(out: &mut BufReader<ChildStdout>) -> io::Result<Y4m> {
    let mut line = Vec::new();
    out.take(1024).read_until(b'\n', &mut line)?;
    if line.is_empty() {
        return Err(io::Error::other("dav1d wrote nothing (see its message above)"));
    }
    parse_y4m_header(String::from_utf8_lossy(&line).trim_end()).map_err(io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_dav1d_stream_headers() {
        let y = parse_y4m_header("YUV4MPEG2 W640 H360 F30:1 Ip A1:1 C420jpeg").unwrap();
        assert_eq!(y, Y4m { width: 640, height: 360, fps_num: 30, fps_den: 1 });
        assert_eq!(y.frame_len(), 640 * 360 * 3 / 2);
        assert_eq!(y.frame_period(), Duration::from_nanos(33_333_333));
        let odd = parse_y4m_header("YUV4MPEG2 W3 H3 F30000:1001").unwrap();
        assert_eq!(odd.frame_len(), 9 + 2 * 4);
        assert!(parse_y4m_header("YUV4MPEG2 W640 H360 F30:1 C420p10").unwrap_err().contains("C420p10"));
        assert!(parse_y4m_header("YUV4MPEG2 W640 F30:1").is_err());
        assert!(parse_y4m_header("RIFF").is_err());
    }

    #[test]
    fn reads_the_frame_count_of_an_ivf_header() {
        let mut h = *b"DKIF\0\0\x20\0AV01\x80\x02\x68\x01\x1e\0\0\0\x01\0\0\0\x2c\x01\0\0\0\0\0\0";
        assert_eq!(ivf_frame_count(&h), 300);
        h[0] = b'X';
        assert_eq!(ivf_frame_count(&h), 0);
        assert_eq!(ivf_frame_count(b"DKIF"), 0);
    }
}
