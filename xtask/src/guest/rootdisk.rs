//! The guest's root disk (issue 18): `target/guest/root.ext4`, an ext4
//! filesystem holding busybox with its applet links, `/init` (the same
//! script as the initramfs's), the workload program, and the study's Debian
//! programs (dav1d, sqlite3, python3.11 with their libraries, the clip and
//! the browse script), from the study's staging root.
//!
//! Made with `mke2fs -d` from e2fsprogs: no root, no loop mount. The guest
//! boots the base initramfs with `root=/dev/vda`; its `/init` mounts the
//! disk and switch_roots into it (see init.sh). Each device gets a copy
//! (`qemu_tests::disk_copy`), so all start from the same base image.

use super::study::{self, copy_file, symlink, walk, CLIP_PATH, SCRIPT, SCRIPT_PATH};
use super::{cache_dir, clip, prepare_with_workload, write_atomically, Fnv, GuestAssets, BASE_DIRS, INIT_SCRIPT, WORKLOAD_BIN};
use crate::apt;
use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The disk's size. The files take about 20 MiB; the workloads write a
/// few (storage: a 1 MiB table and a 4 MiB log; sqlite: about 2 MiB and
/// its WAL); the rest is room for what users and benchmarks add (the
/// issue's sequential 64 MiB with fsync) with ext4's journal. Blocks never
/// written cost nothing: the image is sparse and the base of every device.
pub const ROOT_DISK_MIB: u64 = 384;
/// The file under `target/guest/`.
pub const ROOT_DISK_FILE: &str = "root.ext4";
/// On the disk only: tells `/init` that it runs from the disk, not from
/// the initramfs.
const MARKER: &str = "etc/vmsync-root-disk";
/// Where the storage and sqlite workloads keep their files (init.sh).
const DATA_DIR: &str = "var/lib/vmsync";
/// Bump when the disk's layout or mke2fs options change.
const ROOT_LAYOUT: u64 = 1;

/// The guest of a root-disk boot: the kernel and the base initramfs (which
/// loads the virtio modules and mounts the disk), and the disk image.
pub struct RootDisk {
    pub guest: GuestAssets,
    pub image: PathBuf,
}

/// Builds (or reuses) the kernel, the initramfs and `root.ext4`. `force`
/// ignores every cache.
pub fn prepare_root_disk(force: bool) -> Result<RootDisk> {
    let (guest, workload) = prepare_with_workload(force)?;
    let dir = cache_dir();
    let mke2fs = apt::ensure_e2fsprogs()?;
    let root = study::staged_root(&dir, force)?;
    let clip = clip::clip(&dir, force)?;
    let staging = dir.join("root-staging");
    stage(&staging, &dir.join("busybox"), &workload, &root, &clip)?;
    let image = dir.join(ROOT_DISK_FILE);
    let stamp_path = dir.join("root.stamp");
    let key = format!("layout={ROOT_LAYOUT} mib={ROOT_DISK_MIB} tree={:016x}\n", tree_hash(&staging)?);
    if !force && image.exists() && std::fs::read_to_string(&stamp_path).is_ok_and(|s| s == key) {
        println!("xtask: guest: using the cached root disk {}", image.display());
        let _ = std::fs::remove_dir_all(&staging);
        return Ok(RootDisk { guest, image });
    }
    let _ = std::fs::remove_file(&stamp_path);
    println!("xtask: guest: building the root disk {} ({ROOT_DISK_MIB} MiB ext4, mke2fs -d {})", image.display(), staging.display());
    let tmp = image.with_extension("ext4.tmp");
    let _ = std::fs::remove_file(&tmp);
    run(Command::new(&mke2fs).args(mke2fs_args(&staging, &tmp)))?;
    if !is_root() {
        // mke2fs -d copies each file's owner; the guest's files belong to root.
        chown_to_root(&staging, &tmp)?;
    }
    std::fs::rename(&tmp, &image).with_context(|| format!("renaming {} to {}", tmp.display(), image.display()))?;
    write_atomically(&stamp_path, key.as_bytes())?;
    println!("xtask: guest: root disk {} ({} MiB of files)", image.display(), study::tree_size(&staging)? >> 20);
    let _ = std::fs::remove_dir_all(&staging);
    Ok(RootDisk { guest, image })
}

/// mke2fs's arguments for an image of `staging`'s tree at `image`.
fn mke2fs_args(staging: &Path, image: &Path) -> Vec<std::ffi::OsString> {
    let mut a: Vec<std::ffi::OsString> = [
        "-q",
        "-F",
        "-t",
        "ext4",
        "-L",
        "vmsync-root",
        // 4 KiB blocks (mke2fs picks 1 KiB for a disk this small): a page,
        // and the unit the disk's dirty bitmap tracks.
        "-b",
        "4096",
        "-i",
        "16384",
        // The guest runs as root: no blocks kept back for it.
        "-m",
        "0",
        // Inode tables and journal written now, not by the guest's kernel
        // in the background after its first mount (those writes would be
        // sent to every standby).
        "-E",
        "root_owner=0:0,lazy_itable_init=0,lazy_journal_init=0",
        "-d",
    ]
    .iter()
    .map(Into::into)
    .collect();
    a.push(staging.into());
    a.push(image.into());
    a.push(format!("{}M", ROOT_DISK_MIB).into());
    a
}

/// Fills `staging` (emptied first) with the disk's tree.
fn stage(staging: &Path, busybox: &Path, workload: &Path, study_root: &Path, clip: &Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(staging);
    for d in BASE_DIRS.iter().chain(&[DATA_DIR, "usr/share/vmsync"]) {
        std::fs::create_dir_all(staging.join(d)).with_context(|| format!("creating {}", staging.join(d).display()))?;
    }
    // The study's Debian programs and libraries, as staged for its initramfs.
    for rel in walk(study_root)? {
        let (src, dst) = (study_root.join(&rel), staging.join(&rel));
        let meta = std::fs::symlink_metadata(&src)?;
        if meta.is_dir() {
            std::fs::create_dir_all(&dst)?;
        } else if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&src)?;
            symlink(&dst, target.to_str().context("non-UTF-8 symlink")?)?;
        } else {
            copy_file(&src, &dst)?;
        }
    }
    let bb = std::fs::read(busybox).with_context(|| format!("reading {}", busybox.display()))?;
    write_mode(&staging.join("bin/busybox"), &bb, 0o755)?;
    // All in /bin: init's PATH has it first, and nothing of the study's is there.
    for applet in busybox_applets(&bb)? {
        if applet != "busybox" {
            symlink(&staging.join("bin").join(applet), "busybox")?;
        }
    }
    write_mode(&staging.join("init"), INIT_SCRIPT.as_bytes(), 0o755)?;
    copy_file(workload, &staging.join("bin").join(WORKLOAD_BIN))?;
    copy_file(clip, &staging.join(CLIP_PATH))?;
    write_mode(&staging.join(SCRIPT_PATH), SCRIPT.as_bytes(), 0o644)?;
    write_mode(&staging.join(MARKER), b"the VMsync guest's root disk (cargo xtask guest --root-disk)\n", 0o644)?;
    Ok(())
}

fn write_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path.parent().context("a path with no parent")?)?;
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// The applet names compiled into a busybox binary. It is an arm64
/// program, which the host cannot run to ask (`busybox --list`); its
/// `applet_names` table is in the binary: the names, sorted, each ending in
/// a NUL, the table in another NUL, starting with `[` and `[[`.
fn busybox_applets(busybox: &[u8]) -> Result<Vec<&str>> {
    const START: &[u8] = b"[\0[[\0";
    let Some(at) = busybox.windows(START.len()).position(|w| w == START) else {
        bail!("no applet table (\"[\", \"[[\", ...) in busybox: cannot make its links");
    };
    let table = &busybox[at..];
    let end = table.windows(2).position(|w| w == b"\0\0").context("busybox's applet table has no end")?;
    let names: Vec<&str> = table[..end].split(|b| *b == 0).map(std::str::from_utf8).collect::<Result<_, _>>().context("an applet name is not UTF-8")?;
    ensure!(
        names.iter().all(|n| !n.is_empty() && !n.contains('/')) && names.windows(2).all(|w| w[0] < w[1]),
        "busybox's applet table is not a sorted list of names"
    );
    for needed in ["sh", "mount", "switch_root", "poweroff"] {
        ensure!(names.contains(&needed), "busybox has no {needed} applet, which the guest's init needs");
    }
    Ok(names)
}

/// A key for the tree: every path, its kind, mode and content.
fn tree_hash(dir: &Path) -> Result<u64> {
    use std::os::unix::fs::PermissionsExt;
    let mut h = Fnv::default();
    for rel in walk(dir)? {
        let path = dir.join(&rel);
        let meta = std::fs::symlink_metadata(&path)?;
        h.write(rel.as_bytes());
        h.write(&meta.permissions().mode().to_le_bytes());
        let content = if meta.file_type().is_symlink() {
            std::fs::read_link(&path)?.into_os_string().into_encoded_bytes()
        } else if meta.is_file() {
            std::fs::read(&path)?
        } else {
            Vec::new()
        };
        h.write(&(content.len() as u64).to_le_bytes());
        h.write(&content);
    }
    Ok(h.0)
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the process's effective uid.
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Sets every inode's owner to root with debugfs (one run, all commands).
fn chown_to_root(staging: &Path, image: &Path) -> Result<()> {
    let debugfs = apt::sbin_program("debugfs").context("e2fsprogs has no debugfs")?;
    let script = image.with_extension("debugfs");
    std::fs::write(&script, chown_script(&walk(staging)?))?;
    let r = run(Command::new(debugfs).arg("-w").arg("-f").arg(&script).arg(image));
    let _ = std::fs::remove_file(&script);
    r
}

/// debugfs commands setting uid and gid 0 on each path (relative to /).
fn chown_script(paths: &[String]) -> String {
    let mut s = String::new();
    for p in paths {
        // debugfs takes a path in double quotes when it holds spaces.
        s.push_str(&format!("sif \"/{p}\" uid 0\nsif \"/{p}\" gid 0\n"));
    }
    s
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("starting {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!("{:?} failed ({}): {}", cmd, out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_applet_table_in_a_busybox() {
        let mut bin = b"\x7fELF junk [ not it\0".to_vec();
        bin.extend_from_slice(b"[\0[[\0ash\0mount\0poweroff\0sh\0switch_root\0\0more");
        assert_eq!(busybox_applets(&bin).unwrap(), ["[", "[[", "ash", "mount", "poweroff", "sh", "switch_root"]);
        // One the init needs is missing.
        assert!(busybox_applets(b"[\0[[\0ash\0mount\0poweroff\0sh\0\0").is_err());
        assert!(busybox_applets(b"no table").is_err());
        // Not sorted: not the table.
        assert!(busybox_applets(b"[\0[[\0sh\0mount\0poweroff\0switch_root\0\0").is_err());
    }

    #[test]
    fn mke2fs_makes_a_sized_ext4_of_the_tree() {
        let args: Vec<String> = mke2fs_args(Path::new("/s"), Path::new("/t/root.ext4")).iter().map(|a| a.to_string_lossy().into_owned()).collect();
        let joined = args.join(" ");
        assert!(joined.contains("-t ext4") && joined.contains("-b 4096"), "{joined}");
        assert!(joined.contains("root_owner=0:0") && joined.contains("lazy_itable_init=0"), "{joined}");
        assert!(joined.ends_with(&format!("-d /s /t/root.ext4 {ROOT_DISK_MIB}M")), "{joined}");
    }

    #[test]
    fn chown_script_covers_each_path() {
        let s = chown_script(&["bin".into(), "bin/my file".into()]);
        assert_eq!(s, "sif \"/bin\" uid 0\nsif \"/bin\" gid 0\nsif \"/bin/my file\" uid 0\nsif \"/bin/my file\" gid 0\n");
    }

    #[test]
    fn the_init_script_knows_the_disk_layout() {
        assert!(INIT_SCRIPT.contains(&format!("/{MARKER}")), "init.sh must test for /{MARKER}");
        assert!(INIT_SCRIPT.contains(&format!("data_dir=/{DATA_DIR}")), "init.sh must keep files under /{DATA_DIR}");
        assert!(INIT_SCRIPT.contains("switch_root /mnt /init"));
    }

    /// Stages a tree from stand-ins, makes the image with the host's mke2fs
    /// and reads it back with debugfs (skipped when e2fsprogs is absent).
    #[test]
    fn a_staged_tree_becomes_an_ext4_image() {
        let Some(mke2fs) = apt::sbin_program("mke2fs") else {
            eprintln!("no mke2fs on this host: skipped");
            return;
        };
        let tmp = std::env::temp_dir().join(format!("vmsync-rootdisk-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let study_root = tmp.join("study");
        std::fs::create_dir_all(study_root.join("usr/bin")).unwrap();
        std::fs::write(study_root.join("usr/bin/sqlite3"), b"\x7fELF-sqlite").unwrap();
        symlink(&study_root.join("usr/bin/python3"), "python3.11").unwrap();
        let files = tmp.join("files");
        std::fs::create_dir_all(&files).unwrap();
        std::fs::write(files.join("busybox"), b"\x7fELF [\0[[\0ls\0mount\0poweroff\0sh\0switch_root\0\0").unwrap();
        std::fs::write(files.join("workload"), b"\x7fELF-workload").unwrap();
        std::fs::write(files.join("clip"), b"DKIF").unwrap();
        let staging = tmp.join("staging");
        stage(&staging, &files.join("busybox"), &files.join("workload"), &study_root, &files.join("clip")).unwrap();
        let h = tree_hash(&staging).unwrap();
        assert_eq!(h, tree_hash(&staging).unwrap());
        // A file of a user's, as every file is when the host runs as one.
        if is_root() {
            std::os::unix::fs::lchown(staging.join("init"), Some(1000), Some(1000)).unwrap();
        }
        let image = tmp.join("root.ext4");
        run(Command::new(mke2fs).args(mke2fs_args(&staging, &image))).unwrap();
        assert_eq!(std::fs::metadata(&image).unwrap().len(), ROOT_DISK_MIB << 20);
        let debugfs = apt::sbin_program("debugfs").unwrap();
        let owner = || {
            let o = Command::new(&debugfs).args(["-R", "stat /init"]).arg(&image).output().unwrap();
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.lines().find_map(|l| l.split("User:").nth(1)?.split_whitespace().next()?.parse::<u32>().ok()).unwrap()
        };
        assert_ne!(owner(), 0);
        chown_to_root(&staging, &image).unwrap();
        assert_eq!(owner(), 0);
        let ls = |dir: &str| {
            let o = Command::new(&debugfs).args(["-R", &format!("ls {dir}")]).arg(&image).output().unwrap();
            String::from_utf8_lossy(&o.stdout).into_owned()
        };
        let root = ls("/");
        for name in ["init", "bin", "etc", "var", "usr", "dev", "proc", "sys", "tmp", "mnt"] {
            assert!(root.contains(name), "no /{name} in:\n{root}");
        }
        let bin = ls("/bin");
        for name in ["busybox", "sh", "mount", "switch_root", WORKLOAD_BIN] {
            assert!(bin.contains(name), "no /bin/{name} in:\n{bin}");
        }
        assert!(ls("/usr/bin").contains("sqlite3") && ls("/usr/share/vmsync").contains("clip.ivf"));
        assert!(ls("/var/lib").contains("vmsync"));
        // A fresh filesystem is clean.
        let e2fsck = apt::sbin_program("e2fsck").unwrap();
        let st = Command::new(e2fsck).arg("-fn").arg(&image).output().unwrap();
        assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stdout));
        std::fs::remove_dir_all(tmp).unwrap();
    }
}
