//! Builds the hypervisor and packs boot images: the hypervisor's flat
//! binary followed by the payload container (guest kernel, initrd, config).
use anyhow::{bail, Context, Result};
use object::{Object, ObjectSegment, ObjectSymbol};
use std::path::{Path, PathBuf};
use std::process::Command;

pub const HV_TARGET: &str = "aarch64-unknown-none";

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives one level below the workspace root").to_path_buf()
}

/// Where cargo puts what it builds: `CARGO_TARGET_DIR` when set (relative
/// to where xtask was started, as cargo reads it), else the workspace's.
pub fn target_dir() -> Result<PathBuf> {
    Ok(match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => std::env::current_dir()?.join(d),
        None => workspace_root().join("target"),
    })
}

pub fn out_dir() -> PathBuf {
    workspace_root().join("target/vmsync")
}

pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(workspace_root());
    c
}

pub fn run_checked(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// Builds the hypervisor ELF and returns its flat binary (ending where the
/// payload goes), also written to `target/vmsync/hypervisor.bin`.
pub fn build_hypervisor() -> Result<PathBuf> {
    build_hypervisor_variant(None)
}

/// A build with a cargo feature (the test-only `negative-control`), written
/// to `target/vmsync/hypervisor-<feature>.bin`.
pub fn build_hypervisor_variant(feature: Option<&str>) -> Result<PathBuf> {
    crate::toolchain::ensure()?;
    crate::apt::ensure_clang()?;
    eprintln!("xtask: building the hypervisor for {HV_TARGET}{}", feature.map(|f| format!(" with feature {f}")).unwrap_or_default());
    let mut cmd = cargo();
    cmd.args(["build", "--release", "-p", "vmsync-hypervisor", "--bin", "vmsync", "--target", HV_TARGET]);
    if let Some(f) = feature {
        cmd.args(["--features", f]);
    }
    run_checked(&mut cmd)?;
    let elf_path = target_dir()?.join(HV_TARGET).join("release/vmsync");
    let elf = std::fs::read(&elf_path).with_context(|| format!("reading {}", elf_path.display()))?;
    let flat = flatten(&elf)?;
    std::fs::create_dir_all(out_dir())?;
    let out = out_dir().join(match feature {
        Some(f) => format!("hypervisor-{f}.bin"),
        None => "hypervisor.bin".into(),
    });
    std::fs::write(&out, &flat)?;
    eprintln!("xtask: hypervisor {} bytes loaded ({} KiB code+data)", flat.len(), loaded_bytes(&elf)? / 1024);
    Ok(out)
}

fn loaded_bytes(elf: &[u8]) -> Result<u64> {
    let file = object::File::parse(elf)?;
    Ok(file.segments().map(|s| s.data().map(|d| d.len() as u64).unwrap_or(0)).sum())
}

/// ELF → flat binary from the lowest loaded address up to `__payload_start`
/// (BSS as zeros), as a loader would place it.
pub fn flatten(elf: &[u8]) -> Result<Vec<u8>> {
    let file = object::File::parse(elf).context("parsing the hypervisor ELF")?;
    let sym = |name: &str| file.symbols().find(|s| s.name() == Ok(name)).map(|s| s.address());
    let base = sym("__image_start").context("no __image_start symbol: wrong linker script?")?;
    let end = sym("__payload_start").context("no __payload_start symbol: wrong linker script?")?;
    let mut flat = vec![0u8; (end - base) as usize];
    for seg in file.segments() {
        let data = seg.data()?;
        if data.is_empty() {
            continue;
        }
        let at = seg.address().checked_sub(base).context("segment below __image_start")? as usize;
        let Some(dst) = flat.get_mut(at..at + data.len()) else { bail!("segment at {:#x} beyond __payload_start", seg.address()) };
        dst.copy_from_slice(data);
    }
    vmsync_boot::image::parse(&flat).map_err(|e| anyhow::anyhow!("the hypervisor binary has no arm64 Image header: {e:?}"))?;
    Ok(flat)
}

#[derive(Clone, Copy)]
pub struct GuestSpec<'a> {
    pub kernel: &'a Path,
    pub initrd: Option<&'a Path>,
    pub cmdline: &'a str,
    pub mem_mib: u64,
    /// Epoch policy (`interval:200ms`, ...); None runs the guest untracked.
    pub policy: Option<&'a str>,
    pub verify: bool,
    /// The active device's shadow budget, percent of guest RAM (100: a
    /// shadow for every page); None: the hypervisor's default.
    pub shadow: Option<u8>,
}

impl GuestSpec<'_> {
    /// The guest config entry of the payload (parsed by the hypervisor's
    /// `config` module).
    pub fn config_text(&self) -> String {
        let mut c = format!("cmdline={}\nmem_mib={}\n", self.cmdline, self.mem_mib);
        if let Some(p) = self.policy {
            c += &format!("policy={p}\nverify={}\n", if self.verify { "on" } else { "off" });
        }
        match self.shadow {
            Some(100) => c += "shadow=full\n",
            Some(p) => c += &format!("shadow={p}%\n"),
            None => {}
        }
        c
    }
}

/// The bytes of a kernel as the guest needs them: a raw arm64 `Image`
/// (gzip-compressed `Image.gz` files are unpacked).
pub fn read_kernel(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).with_context(|| format!("reading kernel {}", path.display()))?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&raw[..]), &mut out).with_context(|| format!("gunzip {}", path.display()))?;
        out
    } else {
        raw
    };
    if let Err(e) = vmsync_boot::image::parse(&bytes) {
        bail!("{} is not an arm64 Linux Image ({e:?}); give the kernel's `Image` or `Image.gz`", path.display());
    }
    Ok(bytes)
}

pub fn pack(hypervisor_bin: &Path, guest: &GuestSpec, out: &Path) -> Result<()> {
    pack_extra(hypervisor_bin, guest, "", out)
}

/// `pack` with extra guest-config lines (network, role, peers, secret).
pub fn pack_extra(hypervisor_bin: &Path, guest: &GuestSpec, extra_config: &str, out: &Path) -> Result<()> {
    let hv = std::fs::read(hypervisor_bin)?;
    let kernel = read_kernel(guest.kernel)?;
    let initrd = match guest.initrd {
        Some(p) => std::fs::read(p).with_context(|| format!("reading initrd {}", p.display()))?,
        None => Vec::new(),
    };
    let config = guest.config_text() + extra_config;
    let mut entries: Vec<(&str, &[u8])> = vec![("kernel", &kernel), ("config", config.as_bytes())];
    if !initrd.is_empty() {
        entries.push(("initrd", &initrd));
    }
    let payload = vmsync_boot::container::pack(&entries).map_err(|e| anyhow::anyhow!("packing the payload: {e:?}"))?;
    let image = vmsync_boot::image::assemble(&hv, &payload).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(out, &image).with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}
