//! The AV1 clip that the `dav1d` workload plays: ffmpeg's `testsrc2` test
//! pattern encoded on the host with Debian's ffmpeg, in an IVF container,
//! cached under target/guest/ with a stamp of the settings.
//!
//! 640x360: under QEMU's TCG, dav1d decodes this clip at about 75 frames/s
//! but 1280x720 at only about 27, short of the 30 that playback needs.

use super::{output, write_atomically};
use crate::apt;
use anyhow::{ensure, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

pub const WIDTH: u32 = 640;
pub const HEIGHT: u32 = 360;
pub const FPS: u32 = 30;
pub const SECONDS: u32 = 10;
/// A key frame every 2 s, and a bit rate a streaming service might use at
/// this size.
const GOP: u32 = 60;
const BITRATE: &str = "500k";

/// Bookworm's ffmpeg has all three; the first one present is used. libaom
/// single-threaded in real-time mode: fast, and the same bitstream on every
/// host; real-time mode has no hidden frames, so decoding cost is even.
const ENCODERS: &[(&str, &[&str])] =
    &[("libaom-av1", &["-usage", "realtime", "-cpu-used", "8", "-threads", "1"]), ("libsvtav1", &["-preset", "10"]), ("librav1e", &["-speed", "10"])];

/// The clip (encoding it when the cache does not hold one with the same
/// settings).
pub fn clip(dir: &Path, force: bool) -> Result<PathBuf> {
    let out = dir.join("clip.ivf");
    let stamp_path = dir.join("clip.stamp");
    let settings = settings();
    if !force && out.exists() {
        if let Ok(stamp) = std::fs::read_to_string(&stamp_path) {
            if stamp.lines().next() == Some(settings.as_str()) {
                println!("xtask: guest: using the cached AV1 clip {}", out.display());
                return Ok(out);
            }
        }
    }
    let _ = std::fs::remove_file(&stamp_path);
    apt::ensure_debian_packages(&[("ffmpeg", "ffmpeg")])?;
    let encoders = output("ffmpeg", &["-hide_banner", "-encoders"])?;
    let (encoder, options) = pick_encoder(&encoders).with_context(|| {
        let names: Vec<&str> = ENCODERS.iter().map(|e| e.0).collect();
        format!("this ffmpeg has no AV1 encoder ({}); Debian's bookworm ffmpeg has all three", names.join(", "))
    })?;
    let tmp = dir.join("clip.tmp.ivf");
    let args = ffmpeg_args(encoder, options, &tmp);
    println!("xtask: guest: encoding the AV1 clip with ffmpeg's {encoder} ({WIDTH}x{HEIGHT}, {FPS} fps, {SECONDS} s)");
    let status = Command::new("ffmpeg").args(&args).status().context("starting ffmpeg")?;
    ensure!(status.success(), "`ffmpeg {}` failed ({status})", args.join(" "));
    let bytes = std::fs::read(&tmp).with_context(|| format!("reading {}", tmp.display()))?;
    ensure!(bytes.starts_with(b"DKIF"), "ffmpeg wrote no IVF file to {}", tmp.display());
    std::fs::rename(&tmp, &out).with_context(|| format!("renaming {} to {}", tmp.display(), out.display()))?;
    let version = output("ffmpeg", &["-hide_banner", "-version"])?;
    let version = version.lines().next().unwrap_or("").to_string();
    write_atomically(&stamp_path, format!("{settings}\nencoder={encoder}\nffmpeg={version}\n").as_bytes())?;
    println!("xtask: guest: AV1 clip {} ({} KiB)", out.display(), bytes.len() >> 10);
    Ok(out)
}

/// The cache key: every setting that shapes the clip.
fn settings() -> String {
    let encoders: Vec<String> = ENCODERS.iter().map(|(e, o)| format!("{e} {}", o.join(" "))).collect();
    format!("clip=testsrc2 {WIDTH}x{HEIGHT} {FPS}fps {SECONDS}s gop={GOP} bitrate={BITRATE} encoders={}", encoders.join(","))
}

/// The first of `ENCODERS` that `ffmpeg -encoders` lists.
fn pick_encoder(listing: &str) -> Option<(&'static str, &'static [&'static str])> {
    let names: Vec<&str> = listing.lines().filter_map(|l| l.split_whitespace().nth(1)).collect();
    ENCODERS.iter().copied().find(|(e, _)| names.contains(e))
}

fn ffmpeg_args(encoder: &str, options: &[&str], out: &Path) -> Vec<String> {
    let source = format!("testsrc2=size={WIDTH}x{HEIGHT}:rate={FPS}:duration={SECONDS}");
    let mut a: Vec<String> = ["-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i"].map(String::from).to_vec();
    a.push(source);
    a.extend(["-pix_fmt", "yuv420p", "-c:v", encoder].map(String::from));
    a.extend(options.iter().map(|s| s.to_string()));
    a.extend(["-g".to_string(), GOP.to_string(), "-b:v".to_string(), BITRATE.to_string()]);
    a.extend(["-f", "ivf"].map(String::from));
    a.push(out.display().to_string());
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_first_av1_encoder_ffmpeg_has() {
        let all = " V....D libaom-av1           libaom AV1 (codec av1)\n V....D librav1e             librav1e AV1 (codec av1)\n V..... libsvtav1            SVT-AV1\n";
        assert_eq!(pick_encoder(all).unwrap().0, "libaom-av1");
        assert_eq!(pick_encoder(" V..... libsvtav1  SVT-AV1\n A..... wmav1  Windows Media Audio 1\n").unwrap().0, "libsvtav1");
        assert!(pick_encoder(" A..... wmav1  Windows Media Audio 1\n").is_none());
    }

    #[test]
    fn encodes_the_test_pattern_to_ivf() {
        let a = ffmpeg_args("libaom-av1", &["-cpu-used", "8"], Path::new("/t/c.ivf")).join(" ");
        assert!(a.contains("-f lavfi -i testsrc2=size=640x360:rate=30:duration=10"), "{a}");
        assert!(a.contains("-c:v libaom-av1 -cpu-used 8 -g 60"), "{a}");
        assert!(a.ends_with("-f ivf /t/c.ivf"), "{a}");
    }
}
