//! The study guest (issue 7): everything in the base initramfs plus real
//! programs from Debian's arm64 packages, for the workloads `dav1d`,
//! `sqlite` and `python`:
//!
//! - `dav1d` with `libdav1d6`, and an AV1 clip made on the host (clip.rs);
//! - `sqlite3` with `libsqlite3-0`, `libreadline8`, `libtinfo6`, `zlib1g`;
//! - `python3.11` (`python3.11-minimal`) with its pure-Python standard
//!   library (`libpython3.11-minimal`) and `libexpat1`, and the browse script;
//! - glibc's loader and libraries (`libc6`) and `libgcc-s1`.
//!
//! Built only on request (`prepare_study`), into `initrd-study.cpio.gz`, so
//! the base guest that the fast tests boot stays small. The .debs are
//! unpacked once into a staging root of only what the guest needs
//! (`target/guest/study-root/`, cached with a stamp of the pins).

use super::{
    base_entries, build_workloads, cache_dir, candidate, debian_parts, download, dpkg_extract, ensure_arm64_architecture, output, read_modules,
    write_atomically, Fnv, GuestAssets, ARCH, BASE_DIRS,
};
use super::{clip, elf};
use crate::apt;
use crate::cpio::CpioWriter;
use anyhow::{ensure, Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// (package, bookworm version): pinned so the study is reproducible. When
/// the archive no longer has a pinned version (a security update replaced
/// it), apt's candidate is used and the change said aloud. Not here:
/// `libssl3`, which only python's `_hashlib`/`_ssl` extension modules need
/// (lib-dynload is left out), and every package's docs, man pages, locales,
/// gconv modules and maintainer files.
pub const PACKAGES: &[(&str, &str)] = &[
    ("libc6", "2.36-9+deb12u14"),
    ("libgcc-s1", "12.2.0-14+deb12u1"),
    ("dav1d", "1.0.0-2+deb12u1"),
    ("libdav1d6", "1.0.0-2+deb12u1"),
    ("sqlite3", "3.40.1-2+deb12u2"),
    ("libsqlite3-0", "3.40.1-2+deb12u2"),
    ("libreadline8", "8.2-1.3"),
    ("libtinfo6", "6.4-4"),
    ("zlib1g", "1:1.2.13.dfsg-1"),
    ("python3.11-minimal", "3.11.2-6+deb12u9"),
    ("libpython3.11-minimal", "3.11.2-6+deb12u9"),
    ("libexpat1", "2.5.0-1+deb12u5"),
];

/// The programs the workloads run; their libraries are found from them.
const PROGRAMS: &[&str] = &["usr/bin/dav1d", "usr/bin/sqlite3", "usr/bin/python3.11"];
/// glibc loads libgcc_s at run time (thread cancellation, unwinding), so no
/// DT_NEEDED names it.
const EXTRA_LIBS: &[&str] = &["libgcc_s.so.1"];
/// The loader every Debian arm64 program names as its interpreter.
const INTERP: &str = "/lib/ld-linux-aarch64.so.1";
const PYTHON_LIB: &str = "usr/lib/python3.11";
/// The browse script and where the workloads find it and the clip (the
/// paths init.sh and workloads/src/player.rs use).
pub(super) const SCRIPT: &str = include_str!("../../../workloads/scripts/browse.py");
pub(super) const SCRIPT_PATH: &str = "usr/share/vmsync/browse.py";
pub(super) const CLIP_PATH: &str = "usr/share/vmsync/clip.ivf";
/// Bump when the selection of files changes, to invalidate cached roots.
const STUDY_LAYOUT: u64 = 1;
/// The guest unpacks its initramfs into RAM (256 MiB by default).
const MAX_UNPACKED: usize = 60 << 20;

/// The kernel and the study initramfs (`initrd-study.cpio.gz`): the base
/// one plus Debian's dav1d, sqlite3 and python3.11, an AV1 clip and the
/// browse script. `force` ignores every cache.
pub fn prepare_study(force: bool) -> Result<GuestAssets> {
    let dir = cache_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let debian = debian_parts(&dir, force)?;
    let workload = build_workloads()?;
    let root = staged_root(&dir, force)?;
    let clip = clip::clip(&dir, force)?;
    let modules = read_modules(&debian.modules)?;
    let initrd = study_initramfs(&dir, &debian.busybox, &workload, &modules, &root, &clip)?;
    Ok(GuestAssets { kernel: debian.kernel, initrd, kernel_release: debian.kernel_release })
}

// ---- The staging root -------------------------------------------------------

/// What the cached staging root was made from.
fn root_key() -> String {
    let pins: Vec<String> = PACKAGES.iter().map(|(p, v)| format!("{p}={v}")).collect();
    format!("layout={STUDY_LAYOUT}\npins={}\nprograms={}\nextra-libs={}\n", pins.join(" "), PROGRAMS.join(" "), EXTRA_LIBS.join(" "))
}

/// Downloads and unpacks the packages and keeps only what the guest needs,
/// in `dir/study-root/`, unless a root made from the same pins is there.
pub(super) fn staged_root(dir: &Path, force: bool) -> Result<PathBuf> {
    let root = dir.join("study-root");
    let stamp_path = dir.join("study-root.stamp");
    let key = root_key();
    if !force && root.is_dir() && std::fs::read_to_string(&stamp_path).is_ok_and(|s| s.starts_with(&key)) {
        println!("xtask: guest: using the cached Debian programs in {} (--force refreshes)", root.display());
        return Ok(root);
    }
    let _ = std::fs::remove_file(&stamp_path);
    for tool in ["dpkg", "dpkg-deb", "apt-get", "apt-cache"] {
        ensure!(apt::find_in_path(tool).is_some(), "`{tool}` not found: the study guest's programs come from Debian packages");
    }
    ensure_arm64_architecture()?;
    let pkgs = resolve_pins(PACKAGES)?;
    let debs_dir = dir.join("study-debs");
    let refs: Vec<&str> = pkgs.iter().map(String::as_str).collect();
    let debs = download(&debs_dir, &refs)?;
    let extract = dir.join("study-extract");
    let _ = std::fs::remove_dir_all(&extract);
    for deb in &debs {
        // Each into its own scratch, merged: dpkg_extract empties its target.
        let one = dir.join("study-extract-one");
        dpkg_extract(deb, &one)?;
        merge_tree(&one, &extract)?;
        let _ = std::fs::remove_dir_all(&one);
    }
    let tmp = dir.join("study-root.tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    select(&extract, &tmp)?;
    let _ = std::fs::remove_dir_all(&root);
    std::fs::rename(&tmp, &root).with_context(|| format!("renaming {} to {}", tmp.display(), root.display()))?;
    let got: Vec<String> = pkgs.iter().map(|p| format!("used={p}")).collect();
    write_atomically(&stamp_path, format!("{key}{}\n", got.join("\n")).as_bytes())?;
    // The .debs and the full unpack are only needed again with --force.
    let _ = std::fs::remove_dir_all(&debs_dir);
    let _ = std::fs::remove_dir_all(&extract);
    println!("xtask: guest: Debian programs staged in {} ({} KiB)", root.display(), tree_size(&root)? >> 10);
    Ok(root)
}

/// `name:arm64=version` for each pin: the pinned version when apt has it,
/// else apt's candidate.
fn resolve_pins(pins: &[(&str, &str)]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (name, version) in pins {
        let q = format!("{name}:{ARCH}");
        let mut policy = output("apt-cache", &["policy", &q])?;
        if !policy_versions(&policy).contains(version) && !apt::updated() {
            // Stale lists, or none for arm64 yet.
            apt::update_once()?;
            policy = output("apt-cache", &["policy", &q])?;
        }
        if policy_versions(&policy).contains(version) {
            out.push(format!("{q}={version}"));
        } else {
            let c = candidate(&policy).with_context(|| format!("apt has no {q}, even after `apt-get update`"))?;
            println!("xtask: guest: {name} {version} is gone from the archive; using {c}");
            out.push(format!("{q}={c}"));
        }
    }
    Ok(out)
}

/// The versions in the "Version table:" of `apt-cache policy` output: the
/// lines indented by five (" *** " marks the installed one); the sources
/// under each are indented further.
fn policy_versions(policy: &str) -> Vec<&str> {
    policy
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("Version table:"))
        .filter(|l| (l.starts_with("     ") || l.starts_with(" *** ")) && l.as_bytes().get(5).is_some_and(|b| *b != b' '))
        .filter_map(|l| l[5..].split_whitespace().next())
        .collect()
}

/// Moves everything in `from` into `to` (both dirs), merging directories.
fn merge_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for e in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let e = e?;
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if e.file_type()?.is_dir() && dst.is_dir() {
            merge_tree(&src, &dst)?;
        } else {
            std::fs::rename(&src, &dst).with_context(|| format!("moving {} to {}", src.display(), dst.display()))?;
        }
    }
    Ok(())
}

/// Copies from the unpacked packages into `root` only what runs: the
/// programs, the libraries they need (checked here: a missing one fails the
/// build), the loader, and python's pure-Python standard library.
fn select(extract: &Path, root: &Path) -> Result<()> {
    for p in PROGRAMS {
        let bytes = std::fs::read(extract.join(p)).with_context(|| format!("the packages hold no {p}"))?;
        let (interp, _) = elf::dynamic_deps(&bytes).with_context(|| format!("reading {p}"))?;
        ensure!(interp.as_deref() == Some(INTERP), "{p} asks for the loader {interp:?}, not {INTERP}");
        copy_file(&extract.join(p), &root.join(p))?;
    }
    for lib in elf::library_closure(extract, PROGRAMS, EXTRA_LIBS)? {
        copy_file(&extract.join(&lib), &root.join(&lib))?;
    }
    let interp_rel = INTERP.trim_start_matches('/');
    let loader = Path::new(elf::LIB_DIRS[0]).join(Path::new(interp_rel).file_name().unwrap());
    ensure!(root.join(&loader).exists(), "no {} among the libraries", loader.display());
    // Debian's packages put the loader in the multiarch directory and link
    // /lib/ld-linux-aarch64.so.1 to it.
    symlink(&root.join(interp_rel), "aarch64-linux-gnu/ld-linux-aarch64.so.1")?;
    symlink(&root.join("usr/bin/python3"), "python3.11")?;
    copy_tree(&extract.join(PYTHON_LIB), &root.join(PYTHON_LIB), &|rel| {
        // Compiled modules need libssl (left out); __pycache__ is not shipped.
        !(rel.starts_with("lib-dynload/") || rel.contains("__pycache__"))
    })?;
    // python warns at start when lib-dynload is missing altogether.
    std::fs::create_dir_all(root.join(PYTHON_LIB).join("lib-dynload"))?;
    Ok(())
}

/// Copies a file's content (through symlinks: the guest needs no
/// versioned names) with its permissions.
pub(super) fn copy_file(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to.parent().unwrap())?;
    std::fs::copy(from, to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

pub(super) fn symlink(at: &Path, target: &str) -> Result<()> {
    std::fs::create_dir_all(at.parent().unwrap())?;
    std::os::unix::fs::symlink(target, at).with_context(|| format!("linking {} to {target}", at.display()))
}

/// Copies the files under `from` for which `keep(relative path)` holds.
fn copy_tree(from: &Path, to: &Path, keep: &dyn Fn(&str) -> bool) -> Result<()> {
    for rel in walk(from)? {
        let (src, dst) = (from.join(&rel), to.join(&rel));
        let meta = std::fs::symlink_metadata(&src)?;
        if meta.is_dir() || !keep(&rel) {
            continue;
        }
        copy_file(&src, &dst)?;
    }
    Ok(())
}

/// Every path under `dir`, relative to it, parents before children, in
/// name order (so archives are reproducible).
pub(super) fn walk(dir: &Path) -> Result<Vec<String>> {
    fn go(base: &Path, rel: &str, out: &mut Vec<String>) -> Result<()> {
        let here = if rel.is_empty() { base.to_path_buf() } else { base.join(rel) };
        let mut names: Vec<String> = std::fs::read_dir(&here)
            .with_context(|| format!("reading {}", here.display()))?
            .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_>>()?;
        names.sort();
        for n in names {
            let r = if rel.is_empty() { n } else { format!("{rel}/{n}") };
            let is_dir = std::fs::symlink_metadata(base.join(&r))?.is_dir();
            out.push(r.clone());
            if is_dir {
                go(base, &r, out)?;
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    go(dir, "", &mut out)?;
    Ok(out)
}

pub(super) fn tree_size(dir: &Path) -> Result<u64> {
    let mut n = 0;
    for rel in walk(dir)? {
        let m = std::fs::symlink_metadata(dir.join(rel))?;
        if m.is_file() {
            n += m.len();
        }
    }
    Ok(n)
}

// ---- The initramfs ------------------------------------------------------------

/// Builds `initrd-study.cpio.gz` unless the cached one holds the same
/// archive (the key is a hash of the uncompressed archive itself, which is
/// quick to assemble; compressing is the slow part).
fn study_initramfs(dir: &Path, busybox: &Path, workload: &Path, modules: &[(String, Vec<u8>)], root: &Path, clip: &Path) -> Result<PathBuf> {
    let out = dir.join("initrd-study.cpio.gz");
    let stamp_path = dir.join("initrd-study.stamp");
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let cpio = study_cpio(&read(busybox)?, &read(workload)?, modules, root, &read(clip)?)?;
    ensure!(
        cpio.len() <= MAX_UNPACKED,
        "the study initramfs unpacks to {} MiB, over the {} MiB budget (the guest unpacks it into its RAM)",
        cpio.len() >> 20,
        MAX_UNPACKED >> 20
    );
    let mut h = Fnv::default();
    h.write(&cpio);
    let key = format!("archive={:016x} len={}\n", h.0, cpio.len());
    if out.exists() && std::fs::read_to_string(&stamp_path).is_ok_and(|s| s == key) {
        println!("xtask: guest: using the cached study initramfs {}", out.display());
        return Ok(out);
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&cpio)?;
    let gz = gz.finish()?;
    write_atomically(&out, &gz)?;
    write_atomically(&stamp_path, key.as_bytes())?;
    println!(
        "xtask: guest: study initramfs {} ({} KiB, {} KiB unpacked: the base one, dav1d, sqlite3, python3.11, clip)",
        out.display(),
        gz.len() >> 10,
        cpio.len() >> 10
    );
    Ok(out)
}

/// The base initramfs's entries, then the clip, the script and the staged
/// Debian root.
fn study_cpio(busybox: &[u8], workload: &[u8], modules: &[(String, Vec<u8>)], root: &Path, clip: &[u8]) -> Result<Vec<u8>> {
    use std::os::unix::fs::PermissionsExt;
    let mut w = CpioWriter::new(Vec::new());
    base_entries(&mut w, busybox, workload, modules)?;
    let mut dirs: Vec<String> = BASE_DIRS.iter().map(|d| d.to_string()).collect();
    let mut dir = |w: &mut CpioWriter<Vec<u8>>, d: &str| -> Result<()> {
        if !dirs.iter().any(|x| x == d) {
            w.dir(d, 0o755)?;
            dirs.push(d.to_string());
        }
        Ok(())
    };
    for d in ["usr/share", "usr/share/vmsync"] {
        dir(&mut w, d)?;
    }
    w.file(CLIP_PATH, 0o644, clip)?;
    w.file(SCRIPT_PATH, 0o644, SCRIPT.as_bytes())?;
    for rel in walk(root)? {
        let path = root.join(&rel);
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.is_dir() {
            dir(&mut w, &rel)?;
        } else if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path)?;
            w.symlink(&rel, target.to_str().context("non-UTF-8 symlink")?)?;
        } else {
            let data = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            w.file(&rel, meta.permissions().mode() & 0o777, &data)?;
        }
    }
    Ok(w.finish()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_version_table_of_apt_cache_policy() {
        let policy = concat!(
            "zlib1g:arm64:\n",
            "  Installed: (none)\n",
            "  Candidate: 1:1.2.13.dfsg-1\n",
            "  Version table:\n",
            " *** 1:1.2.13.dfsg-2 100\n",
            "        100 /var/lib/dpkg/status\n",
            "     1:1.2.13.dfsg-1 500\n",
            "        500 http://deb.debian.org/debian bookworm/main arm64 Packages\n",
        );
        assert_eq!(policy_versions(policy), ["1:1.2.13.dfsg-2", "1:1.2.13.dfsg-1"]);
        assert!(policy_versions("foo:\n  Installed: (none)\n  Candidate: (none)\n").is_empty());
    }

    #[test]
    fn pins_name_each_package_once() {
        for (i, (p, v)) in PACKAGES.iter().enumerate() {
            assert!(!v.is_empty() && !p.contains(':'), "{p}");
            assert!(PACKAGES[..i].iter().all(|(q, _)| q != p), "{p} twice");
        }
        assert!(root_key().contains("dav1d=1.0.0-2+deb12u1"));
    }

    #[test]
    fn study_archive_adds_programs_to_the_base_one() {
        let root = std::env::temp_dir().join(format!("vmsync-study-test-{}", std::process::id()));
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::fs::create_dir_all(root.join("lib/aarch64-linux-gnu")).unwrap();
        std::fs::write(root.join("usr/bin/python3.11"), b"\x7fELF").unwrap();
        symlink(&root.join("usr/bin/python3"), "python3.11").unwrap();
        let cpio = study_cpio(b"\x7fELF-busybox", b"\x7fELF-workload", &[], &root, b"DKIF").unwrap();
        let text = String::from_utf8_lossy(&cpio);
        for name in ["init\0", "bin/vmsync-workload\0", "usr/share/vmsync/clip.ivf\0", "usr/share/vmsync/browse.py\0"] {
            assert!(text.contains(name), "no {name}");
        }
        for name in ["usr/bin/python3\0", "lib/aarch64-linux-gnu\0"] {
            assert!(text.contains(name), "no {name}");
        }
        // "usr/bin" comes from the base entries only.
        assert_eq!(text.matches("usr/bin\0").count(), 1);
        std::fs::remove_dir_all(root).unwrap();
    }

    /// Builds the whole study guest (downloads, ffmpeg): run by hand with
    /// `cargo test -p xtask -- --ignored prepare_study`.
    #[test]
    #[ignore]
    fn prepare_study_builds_the_study_initrd() {
        let g = prepare_study(false).unwrap();
        assert!(g.initrd.ends_with("initrd-study.cpio.gz") && g.initrd.exists());
    }

    /// (uptime seconds, progress) of each per-second line with `field`.
    fn progress(output: &str, field: &str) -> Vec<(f64, u64)> {
        output
            .lines()
            .filter(|l| l.contains("vmsync-workload: counter="))
            .filter_map(|l| {
                let get = |k: &str| l.split_whitespace().find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='));
                Some((get("uptime")?.parse().ok()?, get(field)?.parse().ok()?))
            })
            .collect()
    }

    /// Boots the study guest under plain QEMU (no hypervisor) with each
    /// real-program workload and prints its rate: run by hand with
    /// `cargo test -p xtask -- --ignored --nocapture study_workloads`.
    #[test]
    #[ignore]
    fn study_workloads_run_under_plain_qemu() {
        const SECONDS: u64 = 8;
        let g = prepare_study(false).unwrap();
        for (name, field) in [("dav1d", "frames"), ("sqlite", "transactions"), ("python", "objects")] {
            let append = format!("console=ttyAMA0 vmsync.workload={name} vmsync.seconds={SECONDS}");
            let cmd = qemu_tests::plain_command(&g.kernel, &g.initrd, &append, 256);
            let out = qemu_tests::run(cmd, std::time::Duration::from_secs(SECONDS + 120), &[], false).unwrap();
            let o = &out.output;
            assert!(o.contains(&format!("vmsync-guest: workload {name} start")), "{name}:\n{}", out.tail());
            assert!(o.contains(&format!("vmsync-guest: workload {name} end rc=0")), "{name}:\n{}", out.tail());
            assert!(o.contains("vmsync-guest: poweroff") && out.exited_ok(), "{name}:\n{}", out.tail());
            let p = progress(o, field);
            assert_eq!(p.len() as u64, SECONDS, "{name}: per-second lines:\n{}", out.tail());
            let ((t0, n0), (t1, n1)) = (p[0], p[p.len() - 1]);
            assert!(n1 > n0, "{name} made no progress:\n{}", out.tail());
            println!("{name}: {:.1} {field}/s", (n1 - n0) as f64 / (t1 - t0));
        }
    }
}
