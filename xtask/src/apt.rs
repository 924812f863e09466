//! Installs missing host tools from Debian packages, so a fresh machine needs
//! no manual setup. The decisions (what is missing, which commands to run,
//! root or sudo) are plain functions with tests; only `ensure_*` and
//! `run_as_root` touch the machine.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once `apt-get update` ran in this process: once is enough.
static UPDATED: AtomicBool = AtomicBool::new(false);

/// `pkgs`: (Debian package, a binary on PATH or an absolute file that shows
/// it is installed). Installs the missing ones with `apt-get`.
pub fn ensure_debian_packages(pkgs: &[(&str, &str)]) -> Result<()> {
    let missing = missing_packages(pkgs, is_present);
    if missing.is_empty() {
        return Ok(());
    }
    if find_in_path("apt-get").is_none() {
        let probes: Vec<&str> = pkgs.iter().filter(|(pkg, _)| missing.contains(pkg)).map(|(_, probe)| *probe).collect();
        bail!(
            "{} not found and this host has no apt-get: install the Debian package(s) {} (or your distribution's equivalent), then run this again",
            probes.join(", "),
            missing.join(" ")
        );
    }
    println!("xtask: installing {} from Debian packages", missing.join(" "));
    for argv in install_plan(&missing, Privilege::detect(), UPDATED.load(Ordering::Relaxed))? {
        run_argv(&argv)?;
        if argv.iter().any(|a| a == "update") {
            UPDATED.store(true, Ordering::Relaxed);
        }
    }
    let still: Vec<&str> = pkgs.iter().filter(|(_, probe)| !is_present(probe)).map(|(_, probe)| *probe).collect();
    if !still.is_empty() {
        bail!("installed {} but {} still cannot be found", missing.join(" "), still.join(", "));
    }
    Ok(())
}

/// QEMU for the aarch64 `virt` machine.
pub fn ensure_qemu_aarch64() -> Result<()> {
    ensure_debian_packages(&[("qemu-system-arm", "qemu-system-aarch64")])
}

/// The C toolchain that builds zstd for the bare-metal targets.
pub fn ensure_clang() -> Result<()> {
    ensure_debian_packages(&[("clang-14", "clang-14"), ("llvm-14", "llvm-ar-14")])
}

/// e2fsprogs, which makes the guest's root disk (`mke2fs -d`). Returns
/// mke2fs's path: it lives in /sbin, which a user's PATH may lack.
pub fn ensure_e2fsprogs() -> Result<PathBuf> {
    if let Some(p) = sbin_program("mke2fs") {
        return Ok(p);
    }
    // /sbin/mke2fs: where e2fsprogs puts it, with or without merged /usr.
    ensure_debian_packages(&[("e2fsprogs", "/sbin/mke2fs")])?;
    sbin_program("mke2fs").context("e2fsprogs is installed but mke2fs cannot be found")
}

/// An administrator's program: on PATH, else in /usr/sbin or /sbin.
pub fn sbin_program(name: &str) -> Option<PathBuf> {
    find_in_path(name).or_else(|| ["/usr/sbin", "/sbin"].iter().map(|d| Path::new(d).join(name)).find(|p| p.is_file()))
}

/// `apt-get update`, at most once per run.
pub fn update_once() -> Result<()> {
    if updated() {
        return Ok(());
    }
    update()
}

/// `apt-get update` even if it ran (after `dpkg --add-architecture`, the
/// lists must be fetched again).
pub fn update() -> Result<()> {
    run_as_root(&["apt-get", "update"])?;
    UPDATED.store(true, Ordering::Relaxed);
    Ok(())
}

/// Whether `apt-get update` already ran in this process.
pub fn updated() -> bool {
    UPDATED.load(Ordering::Relaxed)
}

/// Runs a command that needs root (apt-get, dpkg): directly when root,
/// through sudo when it is there, else fails naming the command to run.
pub fn run_as_root(argv: &[&str]) -> Result<()> {
    let argv = as_root(argv.iter().map(|s| s.to_string()).collect(), Privilege::detect())?;
    run_argv(&argv)
}

fn run_argv(argv: &[String]) -> Result<()> {
    println!("xtask: running {}", argv.join(" "));
    let status = Command::new(&argv[0])
        .args(&argv[1..])
        // No debconf questions; sudo's env_reset may drop it, which only
        // matters for a person at a terminal.
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .with_context(|| format!("starting {}", argv[0]))?;
    if !status.success() {
        bail!("`{}` failed ({status})", argv.join(" "));
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Privilege {
    Root,
    Sudo,
    /// Neither root nor sudo: the user has to run the command.
    None,
}

impl Privilege {
    fn detect() -> Self {
        use std::os::unix::fs::MetadataExt;
        // /proc/self belongs to the process's effective uid: no libc needed.
        let root = std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false);
        if root {
            Privilege::Root
        } else if find_in_path("sudo").is_some() {
            Privilege::Sudo
        } else {
            Privilege::None
        }
    }
}

fn as_root(argv: Vec<String>, p: Privilege) -> Result<Vec<String>> {
    match p {
        Privilege::Root => Ok(argv),
        Privilege::Sudo => Ok(std::iter::once("sudo".to_string()).chain(argv).collect()),
        Privilege::None => bail!("`{}` needs root and there is no sudo: run it as root, then run this command again", argv.join(" ")),
    }
}

/// The packages whose probe is absent, in order, without repeats.
fn missing_packages<'a>(pkgs: &[(&'a str, &str)], present: impl Fn(&str) -> bool) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for &(pkg, probe) in pkgs {
        if !present(probe) && !out.contains(&pkg) {
            out.push(pkg);
        }
    }
    out
}

/// Commands that install `missing`: `apt-get update` unless it already ran,
/// then one `apt-get install` (`--no-install-recommends`: without it the
/// resolver fails on this image, and it keeps installs small).
fn install_plan(missing: &[&str], p: Privilege, updated: bool) -> Result<Vec<Vec<String>>> {
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    let mut install: Vec<String> = ["apt-get", "install", "-y", "--no-install-recommends"].map(String::from).to_vec();
    install.extend(missing.iter().map(|s| s.to_string()));
    let mut plan = Vec::new();
    if !updated {
        plan.push(vec!["apt-get".to_string(), "update".to_string()]);
    }
    plan.push(install);
    plan.into_iter().map(|argv| as_root(argv, p)).collect()
}

fn is_present(probe: &str) -> bool {
    if probe.contains('/') {
        Path::new(probe).exists()
    } else {
        find_in_path(probe).is_some()
    }
}

pub fn find_in_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strs(plan: &[Vec<String>]) -> Vec<String> {
        plan.iter().map(|a| a.join(" ")).collect()
    }

    #[test]
    fn nothing_to_do_when_every_probe_is_present() {
        let pkgs = [("qemu-system-arm", "qemu-system-aarch64")];
        assert!(missing_packages(&pkgs, |_| true).is_empty());
        assert!(install_plan(&[], Privilege::None, false).unwrap().is_empty());
    }

    #[test]
    fn missing_packages_are_listed_once_in_order() {
        let pkgs = [("clang-14", "clang-14"), ("llvm-14", "llvm-ar-14"), ("llvm-14", "llvm-objcopy-14")];
        assert_eq!(missing_packages(&pkgs, |p| p == "clang-14"), ["llvm-14"]);
        assert_eq!(missing_packages(&pkgs, |_| false), ["clang-14", "llvm-14"]);
    }

    #[test]
    fn root_updates_once_then_installs() {
        let plan = install_plan(&["clang-14", "llvm-14"], Privilege::Root, false).unwrap();
        assert_eq!(strs(&plan), ["apt-get update", "apt-get install -y --no-install-recommends clang-14 llvm-14"]);
        let plan = install_plan(&["clang-14"], Privilege::Root, true).unwrap();
        assert_eq!(strs(&plan), ["apt-get install -y --no-install-recommends clang-14"]);
    }

    #[test]
    fn non_root_uses_sudo() {
        let plan = install_plan(&["qemu-system-arm"], Privilege::Sudo, false).unwrap();
        assert_eq!(strs(&plan), ["sudo apt-get update", "sudo apt-get install -y --no-install-recommends qemu-system-arm"]);
    }

    #[test]
    fn without_root_or_sudo_the_error_names_the_command() {
        let e = install_plan(&["qemu-system-arm"], Privilege::None, true).unwrap_err().to_string();
        assert!(e.contains("apt-get install -y --no-install-recommends qemu-system-arm"), "{e}");
        assert!(e.contains("as root"), "{e}");
    }

    #[test]
    fn probes_find_binaries_and_files() {
        assert!(is_present("sh"));
        assert!(is_present("/proc/self"));
        assert!(!is_present("vmsync-no-such-binary"));
        assert!(!is_present("/vmsync/no/such/file"));
    }

    #[test]
    fn sbin_programs_are_found_off_path_too() {
        assert!(sbin_program("sh").is_some());
        assert!(sbin_program("vmsync-no-such-binary").is_none());
    }
}
