//! `cargo xtask guest`: the Linux guest. Debian's arm64 cloud kernel and
//! busybox-static come through apt; the initramfs (busybox, our `/init`,
//! the workload programs) is built here. Everything is cached under
//! `target/guest/` with stamps, so a second run only checks them.

// The study guest (issue 7), for `cargo xtask study`.
mod clip;
mod elf;
mod study;
// The root disk (issue 18), `cargo xtask guest --root-disk`.
mod rootdisk;

pub use rootdisk::prepare_root_disk;
pub use study::prepare_study;

use crate::apt;
use crate::cpio::CpioWriter;
use anyhow::{bail, ensure, Context, Result};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The pinned kernel ABI (tests stay reproducible). When the archive no
/// longer has it, the newest one, through `KERNEL_META`, is used instead.
pub const KERNEL_PACKAGE: &str = "linux-image-6.1.0-50-cloud-arm64";
const KERNEL_META: &str = "linux-image-cloud-arm64";
const BUSYBOX_PACKAGE: &str = "busybox-static";
const ARCH: &str = "arm64";
const WORKLOAD_TARGET: &str = "aarch64-unknown-linux-musl";
const WORKLOAD_BIN: &str = "vmsync-workload";
const INIT_SCRIPT: &str = include_str!("../guest/init.sh");
/// Bump when the initramfs layout changes, to invalidate cached ones.
const INITRD_LAYOUT: u64 = 2;
/// The kernel modules a virtio disk needs, in load order (each needs the
/// ones before it): the Debian cloud kernel builds virtio and its block
/// driver as modules, and ext4 in. They go into every initramfs under
/// `lib/modules/`; `/init` loads them, so a guest given a disk finds
/// `/dev/vda` (a guest without one loads them for nothing: a few ms).
const DISK_MODULES: &[&str] =
    &["kernel/drivers/virtio/virtio.ko", "kernel/drivers/virtio/virtio_ring.ko", "kernel/drivers/virtio/virtio_mmio.ko", "kernel/drivers/block/virtio_blk.ko"];

pub struct GuestAssets {
    /// Raw arm64 `Image` (magic `ARM\x64` at offset 56).
    pub kernel: PathBuf,
    /// newc cpio, gzip-compressed.
    pub initrd: PathBuf,
    /// `uname -r` of the kernel, e.g. `6.1.0-50-cloud-arm64`.
    pub kernel_release: String,
}

/// The cargo workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask has a parent directory").to_path_buf()
}

pub fn cache_dir() -> PathBuf {
    workspace_root().join("target").join("guest")
}

/// Downloads (or reuses) the kernel and busybox, builds the workloads and the
/// initramfs. `force` ignores every cache.
pub fn prepare(force: bool) -> Result<GuestAssets> {
    Ok(prepare_with_workload(force)?.0)
}

/// `prepare`, and the workload binary it built (the root disk holds it too).
fn prepare_with_workload(force: bool) -> Result<(GuestAssets, PathBuf)> {
    let dir = cache_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let debian = debian_parts(&dir, force)?;
    let workload = build_workloads()?;
    let initrd = initramfs(&dir, &debian.busybox, &workload, &debian.modules, force)?;
    Ok((GuestAssets { kernel: debian.kernel, initrd, kernel_release: debian.kernel_release }, workload))
}

/// Copies `base` (an initrd from `prepare`) to `out` and appends a second,
/// gzip-compressed archive holding `files` (guest path, host path), each
/// mode 0755. The kernel unpacks concatenated archives in order, so this is
/// how an arbitrary static program joins the guest (`vmsync.exec=`).
pub fn initrd_with_files(base: &Path, files: &[(&str, &Path)], out: &Path) -> Result<()> {
    let mut bytes = std::fs::read(base).with_context(|| format!("reading {}", base.display()))?;
    let mut w = CpioWriter::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default()));
    let mut dirs: Vec<String> = Vec::new();
    for (guest, host) in files {
        // Parents first: the kernel does not create them.
        let comps: Vec<&str> = guest.trim_start_matches('/').split('/').collect();
        for i in 1..comps.len() {
            let parent = comps[..i].join("/");
            if !dirs.contains(&parent) {
                w.dir(&parent, 0o755)?;
                dirs.push(parent);
            }
        }
        let data = std::fs::read(host).with_context(|| format!("reading {}", host.display()))?;
        w.file(guest, 0o755, &data)?;
    }
    bytes.extend(w.finish()?.finish()?);
    write_atomically(out, &bytes)
}

// ---- Debian packages ------------------------------------------------------

struct DebianParts {
    kernel: PathBuf,
    busybox: PathBuf,
    kernel_release: String,
    /// The directory holding [`DISK_MODULES`] by file name.
    modules: PathBuf,
}

/// A module's file name (`virtio_blk.ko`) from its path in `DISK_MODULES`.
fn module_file(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The disk modules as (initramfs path, bytes), in load order.
fn read_modules(modules: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    DISK_MODULES
        .iter()
        .map(|m| {
            let f = modules.join(module_file(m));
            let bytes = std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?;
            Ok((format!("lib/modules/{}", module_file(m)), bytes))
        })
        .collect()
}

/// The stamp records what the cache holds. It is valid for the pinned
/// package it was made for (a changed pin refreshes it).
fn debian_parts(dir: &Path, force: bool) -> Result<DebianParts> {
    let stamp_path = dir.join("debian.stamp");
    let kernel = dir.join("Image");
    let busybox = dir.join("busybox");
    let modules = dir.join("modules");
    let have_modules = DISK_MODULES.iter().all(|m| modules.join(module_file(m)).exists());
    if !force && kernel.exists() && busybox.exists() && have_modules {
        if let Ok(stamp) = std::fs::read_to_string(&stamp_path) {
            if stamp_field(&stamp, "pinned") == Some(KERNEL_PACKAGE) {
                if let Some(release) = stamp_field(&stamp, "kernel-release") {
                    println!("xtask: guest: using the cached kernel {release} and busybox in {} (--force refreshes)", dir.display());
                    return Ok(DebianParts { kernel, busybox, kernel_release: release.to_string(), modules });
                }
            }
        }
    }
    let _ = std::fs::remove_file(&stamp_path);
    for tool in ["dpkg", "dpkg-deb", "apt-get", "apt-cache"] {
        ensure!(apt::find_in_path(tool).is_some(), "`{tool}` not found: the guest comes from Debian packages, so this needs a Debian (or derived) host");
    }
    ensure_arm64_architecture()?;
    let kernel_pkg = resolve_kernel_package(KERNEL_PACKAGE)?;
    let debs = dir.join("debs");
    let files = download(&debs, &[&kernel_pkg, BUSYBOX_PACKAGE])?;

    let (release, image) = extract_kernel(&files[0], &dir.join("extract"), &modules)?;
    write_atomically(&kernel, &image)?;
    let bb = extract_file(&files[1], &dir.join("extract"), "bin/busybox")?;
    ensure!(is_aarch64_elf(&bb), "{} holds no arm64 bin/busybox", files[1].display());
    write_atomically(&busybox, &bb)?;
    let stamp = format!(
        "pinned={KERNEL_PACKAGE}\nkernel-package={kernel_pkg}\nkernel-release={release}\nkernel-version={}\nbusybox-version={}\n",
        deb_version(&files[0])?,
        deb_version(&files[1])?,
    );
    write_atomically(&stamp_path, stamp.as_bytes())?;
    // The .debs are only needed again with --force, which downloads anew.
    let _ = std::fs::remove_dir_all(&debs);
    println!("xtask: guest: kernel {release} ({} MiB Image), busybox in {}", image.len() >> 20, dir.display());
    Ok(DebianParts { kernel, busybox, kernel_release: release, modules })
}

fn stamp_field<'a>(stamp: &'a str, key: &str) -> Option<&'a str> {
    stamp.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

fn ensure_arm64_architecture() -> Result<()> {
    let native = output("dpkg", &["--print-architecture"])?;
    let foreign = output("dpkg", &["--print-foreign-architectures"])?;
    if native.trim() == ARCH || foreign.split_whitespace().any(|a| a == ARCH) {
        return Ok(());
    }
    println!("xtask: guest: adding the {ARCH} architecture to dpkg (for the guest's packages)");
    apt::run_as_root(&["dpkg", "--add-architecture", ARCH])?;
    // The package lists have no arm64 entries until the next update.
    apt::update()
}

/// Whether apt knows a downloadable version of `pkg` (arch-qualified).
fn available(pkg: &str) -> Result<bool> {
    let policy = output("apt-cache", &["policy", pkg])?;
    Ok(candidate(&policy).is_some())
}

/// The `Candidate:` of `apt-cache policy` output, if any.
fn candidate(policy: &str) -> Option<&str> {
    policy.lines().find_map(|l| l.trim().strip_prefix("Candidate:")).map(str::trim).filter(|c| *c != "(none)")
}

/// The pinned kernel package when apt has it; otherwise the one the
/// metapackage depends on (the newest ABI), said aloud.
fn resolve_kernel_package(pinned_package: &str) -> Result<String> {
    let pinned = format!("{pinned_package}:{ARCH}");
    let busybox = format!("{BUSYBOX_PACKAGE}:{ARCH}");
    // Lists that do not know the packages at all are stale or lack arm64.
    if !(available(&pinned)? && available(&busybox)?) {
        apt::update_once()?;
    }
    ensure!(available(&busybox)?, "apt has no {busybox}, even after `apt-get update`");
    if available(&pinned)? {
        return Ok(pinned);
    }
    let meta = format!("{KERNEL_META}:{ARCH}");
    let depends = output("apt-cache", &["depends", &meta])?;
    let newest = kernel_dependency(&depends).with_context(|| format!("{pinned} is gone from the archive and {meta} names no kernel:\n{depends}"))?;
    let newest = format!("{}:{ARCH}", newest.split(':').next().unwrap());
    println!("xtask: guest: {pinned_package} is gone from the archive; using {newest} (what {meta} depends on)");
    Ok(newest)
}

/// The `linux-image-*` package in `apt-cache depends` output.
fn kernel_dependency(depends: &str) -> Option<&str> {
    depends.lines().filter_map(|l| l.trim().strip_prefix("Depends:")).map(str::trim).find(|d| d.starts_with("linux-image-") && !d.starts_with(KERNEL_META))
}

/// `apt-get download` into `debs` (emptied first); returns the .deb of each
/// package in order. Retries once after `apt-get update`, for stale lists.
fn download(debs: &Path, pkgs: &[&str]) -> Result<Vec<PathBuf>> {
    let _ = std::fs::remove_dir_all(debs);
    std::fs::create_dir_all(debs).with_context(|| format!("creating {}", debs.display()))?;
    let qualified: Vec<String> = pkgs.iter().map(|p| if p.contains(':') { p.to_string() } else { format!("{p}:{ARCH}") }).collect();
    println!("xtask: guest: downloading {}", qualified.join(" "));
    if let Err(e) = apt_download(debs, &qualified) {
        if apt::updated() {
            return Err(e);
        }
        println!("xtask: guest: download failed ({e:#}); updating the package lists and retrying");
        apt::update_once()?;
        apt_download(debs, &qualified)?;
    }
    let entries: Vec<PathBuf> = std::fs::read_dir(debs)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    qualified
        .iter()
        .map(|q| {
            let name = q.split(':').next().unwrap();
            entries
                .iter()
                .find(|p| p.file_name().and_then(|f| f.to_str()).is_some_and(|f| f.starts_with(&format!("{name}_")) && f.ends_with(".deb")))
                .cloned()
                .with_context(|| format!("apt-get download left no {name}_*.deb in {}", debs.display()))
        })
        .collect()
}

fn apt_download(debs: &Path, pkgs: &[String]) -> Result<()> {
    let out = Command::new("apt-get")
        .arg("download")
        .args(pkgs)
        .current_dir(debs)
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .output()
        .context("starting apt-get download")?;
    // As root apt warns that its `_apt` user cannot write here and
    // downloads unsandboxed: harmless, so not shown.
    let stderr = String::from_utf8_lossy(&out.stderr);
    for line in stderr.lines().filter(|l| !l.contains("unsandboxed as root")) {
        eprintln!("{line}");
    }
    ensure!(out.status.success(), "`apt-get download {}` failed ({})", pkgs.join(" "), out.status);
    Ok(())
}

/// Unpacks the kernel package, copies [`DISK_MODULES`] into `modules` and
/// returns (release, raw arm64 Image).
fn extract_kernel(deb: &Path, scratch: &Path, modules: &Path) -> Result<(String, Vec<u8>)> {
    dpkg_extract(deb, scratch)?;
    let boot = scratch.join("boot");
    let vmlinuz = std::fs::read_dir(&boot)
        .with_context(|| format!("{} has no boot/", deb.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.file_name().and_then(|f| f.to_str()).is_some_and(|f| f.starts_with("vmlinuz-")))
        .with_context(|| format!("{} has no boot/vmlinuz-*", deb.display()))?;
    let release = vmlinuz.file_name().unwrap().to_str().unwrap().trim_start_matches("vmlinuz-").to_string();
    let bytes = std::fs::read(&vmlinuz)?;
    std::fs::create_dir_all(modules).with_context(|| format!("creating {}", modules.display()))?;
    for m in DISK_MODULES {
        let from = scratch.join("lib/modules").join(&release).join(m);
        // A kernel with compressed modules (.ko.xz) would need them
        // unpacked first; the pinned one has plain ones.
        std::fs::copy(&from, modules.join(module_file(m)))
            .with_context(|| format!("{} has no lib/modules/{release}/{m}: the guest needs it to see a virtio disk", deb.display()))?;
    }
    let _ = std::fs::remove_dir_all(scratch);
    let image = raw_image(bytes).with_context(|| format!("{}", vmlinuz.display()))?;
    Ok((release, image))
}

/// Debian's arm64 vmlinuz is already a raw `Image`; older or other builds
/// gzip it. Either way the result must carry the arm64 Image magic.
fn raw_image(bytes: Vec<u8>) -> Result<Vec<u8>> {
    let image = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&bytes[..]).read_to_end(&mut out).context("gunzip of the kernel")?;
        out
    } else {
        bytes
    };
    ensure!(image.len() > 64 && &image[56..60] == b"ARM\x64", "not an arm64 Linux Image (no ARM\\x64 magic at 56)");
    Ok(image)
}

fn extract_file(deb: &Path, scratch: &Path, path: &str) -> Result<Vec<u8>> {
    dpkg_extract(deb, scratch)?;
    let data = std::fs::read(scratch.join(path)).with_context(|| format!("{} has no {path}", deb.display()));
    let _ = std::fs::remove_dir_all(scratch);
    data
}

fn dpkg_extract(deb: &Path, scratch: &Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(scratch);
    let status = Command::new("dpkg-deb").arg("-x").arg(deb).arg(scratch).status().context("starting dpkg-deb")?;
    ensure!(status.success(), "`dpkg-deb -x {}` failed ({status})", deb.display());
    Ok(())
}

fn deb_version(deb: &Path) -> Result<String> {
    Ok(output("dpkg-deb", &["-f", deb.to_str().context("non-UTF-8 path")?, "Version"])?.trim().to_string())
}

fn is_aarch64_elf(b: &[u8]) -> bool {
    const EM_AARCH64: u16 = 183;
    b.len() > 20 && b.starts_with(b"\x7fELF") && u16::from_le_bytes([b[18], b[19]]) == EM_AARCH64
}

// ---- Workloads and the initramfs -------------------------------------------

/// Builds `vmsync-workload` for the guest with the cargo that runs us, and
/// returns the binary. Stripped and without debug info: it goes into the
/// initramfs and so into every boot image.
fn build_workloads() -> Result<PathBuf> {
    crate::toolchain::ensure()?;
    eprintln!("xtask: building the guest's workload programs for {WORKLOAD_TARGET}");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target_dir = crate::image::target_dir()?;
    let status = Command::new(&cargo)
        .current_dir(workspace_root())
        .args(["build", "--release", "--package", "vmsync-workloads", "--target", WORKLOAD_TARGET])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("CARGO_PROFILE_RELEASE_DEBUG", "0")
        .env("CARGO_PROFILE_RELEASE_STRIP", "symbols")
        .status()
        .context("starting cargo to build the workloads")?;
    ensure!(status.success(), "building vmsync-workloads for {WORKLOAD_TARGET} failed ({status})");
    let bin = target_dir.join(WORKLOAD_TARGET).join("release").join(WORKLOAD_BIN);
    ensure!(bin.exists(), "cargo built no {}", bin.display());
    Ok(bin)
}

/// Where cargo puts build output: `CARGO_TARGET_DIR` when set (relative to
/// where we were started, as cargo reads it), else the workspace's target/.
/// Builds `initrd.cpio.gz` unless one made from the same inputs is cached.
fn initramfs(dir: &Path, busybox: &Path, workload: &Path, modules: &Path, force: bool) -> Result<PathBuf> {
    let out = dir.join("initrd.cpio.gz");
    let stamp_path = dir.join("initrd.stamp");
    let busybox_bytes = std::fs::read(busybox).with_context(|| format!("reading {}", busybox.display()))?;
    let workload_bytes = std::fs::read(workload).with_context(|| format!("reading {}", workload.display()))?;
    let module_bytes = read_modules(modules)?;
    let mut h = Fnv::default();
    h.write(&INITRD_LAYOUT.to_le_bytes());
    let parts = [INIT_SCRIPT.as_bytes(), &busybox_bytes, &workload_bytes].into_iter().chain(module_bytes.iter().map(|(_, b)| &b[..]));
    for part in parts {
        h.write(&(part.len() as u64).to_le_bytes());
        h.write(part);
    }
    let key = format!("inputs={:016x}\n", h.0);
    if !force && out.exists() && std::fs::read_to_string(&stamp_path).is_ok_and(|s| s == key) {
        println!("xtask: guest: using the cached initramfs {}", out.display());
        return Ok(out);
    }
    let cpio = initramfs_cpio(&busybox_bytes, &workload_bytes, &module_bytes)?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&cpio)?;
    let gz = gz.finish()?;
    write_atomically(&out, &gz)?;
    write_atomically(&stamp_path, key.as_bytes())?;
    println!("xtask: guest: initramfs {} ({} KiB, {} KiB unpacked: busybox, /init, {WORKLOAD_BIN})", out.display(), gz.len() >> 10, cpio.len() >> 10);
    Ok(out)
}

/// The initramfs: busybox (its applet links are made by `/init` with
/// `busybox --install -s`; only /bin/sh must exist beforehand), `/init`,
/// the workload binary, the disk modules, and /dev/console, which the
/// kernel opens for init's stdio before anything is mounted.
fn initramfs_cpio(busybox: &[u8], workload: &[u8], modules: &[(String, Vec<u8>)]) -> Result<Vec<u8>> {
    let mut w = CpioWriter::new(Vec::new());
    base_entries(&mut w, busybox, workload, modules)?;
    Ok(w.finish()?)
}

/// The directories of the base initramfs (the study one adds to them).
const BASE_DIRS: [&str; 15] = ["bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "root", "etc", "mnt", "run", "lib", "lib/modules"];

/// Every entry of the base initramfs, without the trailer.
fn base_entries<W: Write>(w: &mut CpioWriter<W>, busybox: &[u8], workload: &[u8], modules: &[(String, Vec<u8>)]) -> Result<()> {
    for d in BASE_DIRS {
        w.dir(d, 0o755)?;
    }
    w.char_device("dev/console", 0o600, 5, 1)?;
    w.file("bin/busybox", 0o755, busybox)?;
    w.symlink("bin/sh", "busybox")?;
    w.file("init", 0o755, INIT_SCRIPT.as_bytes())?;
    w.file(&format!("bin/{WORKLOAD_BIN}"), 0o755, workload)?;
    for (path, bytes) in modules {
        w.file(path, 0o644, bytes)?;
    }
    Ok(())
}

// ---- Small helpers ---------------------------------------------------------

/// FNV-1a, 64-bit: a stable content key for the cache stamp (std's hasher
/// may change between Rust releases).
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// Writes through a temporary file and a rename, so an interrupted run never
/// leaves a truncated file that a stamp vouches for.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

fn output(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program).args(args).output().with_context(|| format!("starting {program}"))?;
    if !out.status.success() {
        bail!("`{program} {}` failed ({}): {}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_apt_cache_answers() {
        let policy = "linux-image-6.1.0-50-cloud-arm64:arm64:\n  Installed: (none)\n  Candidate: 6.1.176-1\n  Version table:\n";
        assert_eq!(candidate(policy), Some("6.1.176-1"));
        assert_eq!(candidate("foo:\n  Installed: (none)\n  Candidate: (none)\n"), None);
        assert_eq!(candidate(""), None);
        let depends = "linux-image-cloud-arm64:arm64\n  Depends: linux-image-6.1.0-56-cloud-arm64:arm64\n";
        assert_eq!(kernel_dependency(depends), Some("linux-image-6.1.0-56-cloud-arm64:arm64"));
        assert_eq!(kernel_dependency("x\n  Depends: libc6\n"), None);
    }

    #[test]
    fn accepts_raw_and_gzipped_images_only() {
        let mut image = vec![0u8; 128];
        image[56..60].copy_from_slice(b"ARM\x64");
        assert_eq!(raw_image(image.clone()).unwrap(), image);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&image).unwrap();
        assert_eq!(raw_image(gz.finish().unwrap()).unwrap(), image);
        assert!(raw_image(vec![0u8; 128]).is_err());
    }

    #[test]
    fn stamp_fields() {
        let s = "pinned=a\nkernel-release=6.1.0-50-cloud-arm64\n";
        assert_eq!(stamp_field(s, "kernel-release"), Some("6.1.0-50-cloud-arm64"));
        assert_eq!(stamp_field(s, "kernel"), None);
    }

    #[test]
    fn module_files_are_named_by_their_last_component() {
        assert_eq!(module_file("kernel/drivers/block/virtio_blk.ko"), "virtio_blk.ko");
        // Load order: the core before the ring, the transport and the driver.
        let names: Vec<_> = DISK_MODULES.iter().map(|m| module_file(m)).collect();
        assert_eq!(names, ["virtio.ko", "virtio_ring.ko", "virtio_mmio.ko", "virtio_blk.ko"]);
    }

    #[test]
    fn initramfs_has_init_console_and_shell() {
        let modules = vec![("lib/modules/virtio_blk.ko".to_string(), b"\x7fELF-module".to_vec())];
        let cpio = initramfs_cpio(b"\x7fELF-busybox", b"\x7fELF-workload", &modules).unwrap();
        let text = String::from_utf8_lossy(&cpio);
        for name in ["init\0", "dev/console\0", "bin/sh\0", "bin/busybox\0", "bin/vmsync-workload\0", "lib/modules/virtio_blk.ko\0"] {
            assert!(text.contains(name), "no {name}");
        }
        assert!(INIT_SCRIPT.starts_with("#!/bin/sh\n"));
    }

    #[test]
    fn extra_files_ride_in_a_second_archive() {
        let tmp = std::env::temp_dir().join(format!("vmsync-initrd-test-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        let base = tmp.join("base.cpio.gz");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&initramfs_cpio(b"bb", b"wl", &[]).unwrap()).unwrap();
        std::fs::write(&base, gz.finish().unwrap()).unwrap();
        let prog = tmp.join("prog");
        std::fs::write(&prog, b"\x7fELF-prog").unwrap();
        let out = tmp.join("out.cpio.gz");
        initrd_with_files(&base, &[("/opt/x/prog", &prog)], &out).unwrap();
        let mut all = Vec::new();
        flate2::read::MultiGzDecoder::new(&std::fs::read(&out).unwrap()[..]).read_to_end(&mut all).unwrap();
        let text = String::from_utf8_lossy(&all);
        // Both archives, each with its trailer; parents before the file.
        assert_eq!(text.matches("TRAILER!!!").count(), 2);
        let (opt, x, p) = (text.find("opt\0").unwrap(), text.find("opt/x\0").unwrap(), text.find("opt/x/prog\0").unwrap());
        assert!(text.find("bin/busybox\0").unwrap() < opt && opt < x && x < p);
        std::fs::remove_dir_all(tmp).unwrap();
    }
}
