//! Boots QEMU machines for tests and benchmarks and reads their serial
//! console. Every run has a deadline and is killed when it passes; output is
//! kept whole so a failing test can show it.
pub mod devices;
pub mod guest_check;
pub mod link;
pub mod multi;
pub mod switching;
pub mod third_host;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The machine every VMsync device runs on under QEMU: EL2 available, GICv3.
pub const MACHINE: &str = "virt,virtualization=on,gic-version=3";
pub const CPU: &str = "cortex-a57";

/// Host RAM for a device whose guest has `guest_mib`: the guest's backing;
/// with sync as much again for shadow pages; with verify twice more (the
/// local standby's image and its staging of a whole epoch); plus the
/// hypervisor image, heap and tables. QEMU backs it lazily, so what a run
/// does not use costs nothing.
pub fn host_mem_mib(guest_mib: u64) -> u64 {
    4 * guest_mib + 256
}

/// The hypervisor's randomness on the board: a virtio-rng device (it
/// drives it; the guest never sees it) fed from the host's /dev/urandom.
/// `cortex-a57` has no RNDR.
pub const RNG_ARGS: [&str; 4] = ["-object", "rng-random,id=rng0,filename=/dev/urandom", "-device", "virtio-rng-device,rng=rng0"];

/// The QEMU command for one device booting `image` (a VMsync boot image or,
/// with `plain`, a guest kernel run directly without the hypervisor).
pub fn qemu_command(image: &Path, mem_mib: u64) -> Command {
    let mut c = Command::new("qemu-system-aarch64");
    c.args(["-M", MACHINE, "-cpu", CPU, "-m", &format!("{mem_mib}M")]);
    // `-nic none`: no default PCI NIC, whose option ROM (ipxe-qemu) a
    // --no-install-recommends QEMU lacks; the board needs none.
    c.args(["-display", "none", "-monitor", "none", "-serial", "stdio", "-no-reboot", "-nic", "none"]);
    c.args(RNG_ARGS);
    c.arg("-kernel").arg(image);
    c
}

/// Attaches the raw disk image `image` to the board as a virtio-blk device
/// on virtio-mmio (under the hypervisor: the device's own storage, which
/// the hypervisor drives; under a plain run: the guest's disk). Each call
/// adds one more disk with a drive id of its own.
pub fn attach_disk(cmd: &mut Command, image: &Path) {
    let n = cmd.get_args().filter(|a| *a == "-drive").count();
    // QEMU's option syntax doubles a comma inside a value.
    let path = image.to_string_lossy().replace(',', ",,");
    let drive = format!("file={path},if=none,format=raw,id=vmsync-disk{n}");
    cmd.arg("-drive").arg(drive);
    cmd.args(["-device", &format!("virtio-blk-device,drive=vmsync-disk{n}")]);
}

/// A device's own disk: a copy of `base` (the root disk every device
/// starts from, so blocks never written since are the same everywhere) at
/// `dir/name`. `cp --reflink=auto` shares the blocks where the filesystem
/// can (btrfs, XFS) and `--sparse=always` keeps the unwritten ones holes.
pub fn disk_copy(base: &Path, dir: &Path, name: &str) -> std::io::Result<PathBuf> {
    let out = dir.join(name);
    // cp writes into an existing file in place: start afresh.
    match std::fs::remove_file(&out) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let st = Command::new("cp").args(["--reflink=auto", "--sparse=always"]).arg(base).arg(&out).status()?;
    if !st.success() {
        return Err(std::io::Error::other(format!("cp {} {} failed ({st})", base.display(), out.display())));
    }
    Ok(out)
}

/// An e2fsprogs program (`e2fsck`, `debugfs`) for checking a disk after a
/// run: on PATH, else in /usr/sbin or /sbin, which a user's PATH may lack.
pub fn e2fs_program(name: &str) -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join(name)).find(|p| p.is_file()));
    on_path.or_else(|| ["/usr/sbin", "/sbin"].iter().map(|d| Path::new(d).join(name)).find(|p| p.is_file())).unwrap_or_else(|| name.into())
}

/// A plain QEMU run of a Linux kernel, the baseline the hypervisor is
/// compared with: same machine and CPU, no EL2.
pub fn plain_command(kernel: &Path, initrd: &Path, append: &str, mem_mib: u64) -> Command {
    let mut c = Command::new("qemu-system-aarch64");
    c.args(["-M", "virt,gic-version=3", "-cpu", CPU, "-m", &format!("{mem_mib}M")]);
    // `-nic none`: no default PCI NIC, whose option ROM (ipxe-qemu) a
    // --no-install-recommends QEMU lacks; the board needs none.
    c.args(["-display", "none", "-monitor", "none", "-serial", "stdio", "-no-reboot", "-nic", "none"]);
    c.arg("-kernel").arg(kernel).arg("-initrd").arg(initrd).arg("-append").arg(append);
    c
}

#[derive(Clone)]
pub struct RunOutput {
    /// None when the run was killed at its deadline.
    pub status: Option<ExitStatus>,
    pub output: String,
    /// When each watched marker first appeared, from the start of the run.
    pub marks: Vec<(String, Duration)>,
    pub elapsed: Duration,
}

impl RunOutput {
    pub fn timed_out(&self) -> bool {
        self.status.is_none()
    }

    pub fn exited_ok(&self) -> bool {
        self.status.map(|s| s.success()).unwrap_or(false)
    }

    pub fn mark(&self, m: &str) -> Option<Duration> {
        self.marks.iter().find(|(n, _)| n == m).map(|(_, d)| *d)
    }

    /// Lines containing `pat`.
    pub fn lines_with<'a>(&'a self, pat: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.output.lines().filter(move |l| l.contains(pat))
    }

    /// The output between two marker lines (exclusive), first occurrence after `from`.
    pub fn section(&self, begin: &str, end: &str, nth: usize) -> Option<String> {
        let mut rest = self.output.as_str();
        for _ in 0..nth {
            let i = rest.find(begin)?;
            rest = &rest[i + begin.len()..];
        }
        let i = rest.find(begin)?;
        let after = &rest[i + begin.len()..];
        let j = after.find(end)?;
        Some(after[..j].to_string())
    }

    /// The last 60 lines, for failure messages.
    pub fn tail(&self) -> String {
        let lines: Vec<&str> = self.output.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }
}

/// Runs `cmd` to its end or its deadline, recording when each of `watch`
/// first appears in its output. `echo` copies the output to our stdout as it
/// comes (the console of a demo, progress on long runs).
pub fn run(mut cmd: Command, deadline: Duration, watch: &[&str], echo: bool) -> std::io::Result<RunOutput> {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn()?;
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let mut readers = Vec::new();
    for mut pipe in [child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>), child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>)]
        .into_iter()
        .flatten()
    {
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        }));
    }
    drop(tx);
    let mut raw = Vec::new();
    let mut marks: Vec<(String, Duration)> = Vec::new();
    let mut status = None;
    loop {
        let left = deadline.saturating_sub(start.elapsed());
        match rx.recv_timeout(left.min(Duration::from_millis(50))) {
            Ok(chunk) => {
                if echo {
                    use std::io::Write;
                    let mut o = std::io::stdout();
                    let _ = o.write_all(&chunk);
                    let _ = o.flush();
                }
                raw.extend_from_slice(&chunk);
                let text = String::from_utf8_lossy(&raw);
                for w in watch {
                    if !marks.iter().any(|(n, _)| n == w) && text.contains(w) {
                        marks.push((w.to_string(), start.elapsed()));
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                status = Some(child.wait()?);
                break;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if let Some(s) = child.try_wait()? {
            // Drain what is still in the pipes.
            while let Ok(chunk) = rx.recv_timeout(Duration::from_millis(200)) {
                raw.extend_from_slice(&chunk);
            }
            status = Some(s);
            break;
        }
        if start.elapsed() >= deadline {
            kill(&mut child);
            break;
        }
    }
    let output = String::from_utf8_lossy(&raw).replace('\r', "");
    for w in watch {
        if !marks.iter().any(|(n, _)| n == w) && output.contains(w) {
            marks.push((w.to_string(), start.elapsed()));
        }
    }
    Ok(RunOutput { status, output, marks, elapsed: start.elapsed() })
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Paths that `cargo xtask test` hands to the tests.
pub struct Assets {
    /// The hypervisor's flat binary (`target/vmsync/hypervisor.bin`).
    pub hypervisor: PathBuf,
    /// The test-only build that leaves one page per epoch unprotected.
    pub hypervisor_negative: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub kernel_release: String,
    pub workdir: PathBuf,
    /// The base root disk (`target/guest/root.ext4`), when `cargo xtask
    /// test` built it (for the tests named in its `ROOT_DISK_TESTS`). Boot
    /// a copy of it ([`disk_copy`]) with `root=/dev/vda`.
    pub root_disk: Option<PathBuf>,
}

impl Assets {
    /// From the environment `cargo xtask test` sets. Panics with the command
    /// to run when a test is started some other way.
    pub fn from_env() -> Self {
        let get = |k: &str| std::env::var_os(k).unwrap_or_else(|| panic!("{k} is not set: run the QEMU tests through `cargo xtask test`"));
        Assets {
            hypervisor: get("VMSYNC_TEST_HYPERVISOR").into(),
            hypervisor_negative: get("VMSYNC_TEST_HYPERVISOR_NEGATIVE").into(),
            kernel: get("VMSYNC_TEST_KERNEL").into(),
            initrd: get("VMSYNC_TEST_INITRD").into(),
            kernel_release: get("VMSYNC_TEST_KERNEL_RELEASE").to_string_lossy().into_owned(),
            workdir: get("VMSYNC_TEST_WORKDIR").into(),
            root_disk: std::env::var_os("VMSYNC_TEST_ROOT_DISK").map(PathBuf::from),
        }
    }

    /// The base root disk; panics naming the command when it was not built.
    pub fn root_disk(&self) -> &Path {
        self.root_disk.as_deref().unwrap_or_else(|| {
            panic!("VMSYNC_TEST_ROOT_DISK is not set: `cargo xtask test` builds the root disk for the tests in ROOT_DISK_TESTS (xtask/src/test.rs)")
        })
    }

    /// Packs a boot image for a guest with this command line and RAM size
    /// and writes it to the work directory as `name`.
    pub fn image(&self, name: &str, cmdline: &str, mem_mib: u64) -> PathBuf {
        let bytes = self.image_bytes(cmdline, mem_mib);
        let path = self.workdir.join(name);
        std::fs::write(&path, bytes).expect("writing a test image");
        path
    }

    pub fn image_bytes(&self, cmdline: &str, mem_mib: u64) -> Vec<u8> {
        self.image_bytes_with(&self.hypervisor, cmdline, mem_mib, "")
    }

    /// An image of the given hypervisor build with extra guest-config lines
    /// (`policy=...`, `verify=on`).
    pub fn image_with(&self, name: &str, hypervisor: &Path, cmdline: &str, mem_mib: u64, extra_config: &str) -> PathBuf {
        let bytes = self.image_bytes_with(hypervisor, cmdline, mem_mib, extra_config);
        let path = self.workdir.join(name);
        std::fs::write(&path, bytes).expect("writing a test image");
        path
    }

    pub fn image_bytes_with(&self, hypervisor: &Path, cmdline: &str, mem_mib: u64, extra_config: &str) -> Vec<u8> {
        let read = |p: &Path| std::fs::read(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
        let hv = read(hypervisor);
        let kernel = read(&self.kernel);
        let initrd = read(&self.initrd);
        let config = format!("cmdline={cmdline}\nmem_mib={mem_mib}\n{extra_config}");
        let payload = vmsync_boot::container::pack(&[("kernel", &kernel), ("initrd", &initrd), ("config", config.as_bytes())]).expect("packing a payload");
        vmsync_boot::image::assemble(&hv, &payload).expect("assembling an image")
    }
}

/// The epochs a run printed (`vmsync: epoch ...` lines).
pub fn epochs(output: &str) -> Vec<sync_core::stats::EpochStats> {
    output
        .lines()
        .filter_map(|l| l.split_once("vmsync: epoch ").map(|(_, rest)| rest))
        .map(|rest| sync_core::stats::parse_epoch_line(rest.trim()).unwrap_or_else(|e| panic!("bad epoch line {rest:?}: {e:?}")))
        .collect()
}

/// `(checks, mismatches)` from the `vmsync: verify checks=.. mismatches=..` summary.
pub fn verify_summary(output: &str) -> Option<(u64, u64)> {
    let line = output.lines().find_map(|l| l.split_once("vmsync: verify checks=").map(|(_, r)| r))?;
    let mut it = line.split_whitespace();
    let checks = it.next()?.parse().ok()?;
    let mismatches = it.next()?.strip_prefix("mismatches=")?.parse().ok()?;
    Some((checks, mismatches))
}

/// A QEMU running in the background (a standby device), its output
/// collected until it is stopped.
pub struct Background {
    child: Child,
    output: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Background {
    pub fn spawn(mut cmd: Command) -> std::io::Result<Self> {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn()?;
        let output = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        for mut pipe in [child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>), child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>)]
            .into_iter()
            .flatten()
        {
            let out = output.clone();
            readers.push(std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if let Ok(mut o) = out.lock() {
                        o.extend_from_slice(&buf[..n]);
                    }
                }
            }));
        }
        Ok(Background { child, output, readers })
    }

    /// What it printed so far.
    pub fn output(&self) -> String {
        let bytes = self.output.lock().map(|o| o.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).replace('\r', "")
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Stops it and returns everything it printed.
    pub fn stop(mut self) -> String {
        kill(&mut self.child);
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        self.output()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// `(epoch, digest)` of every `vmsync: digest epoch=E d=HEX` (active) or
/// `vmsync: standby committed epoch=E digest=HEX` (standby) line.
pub fn digests(output: &str) -> Vec<(u64, String)> {
    output
        .lines()
        .filter_map(|l| {
            let rest = l.split_once("vmsync: digest epoch=").map(|(_, r)| r).or_else(|| l.split_once("vmsync: standby committed epoch=").map(|(_, r)| r))?;
            let (e, d) = rest.split_once(' ')?;
            let d = d.trim().trim_start_matches("d=").trim_start_matches("digest=");
            Some((e.parse().ok()?, d.to_string()))
        })
        .collect()
}

/// Key=value numbers of the `vmsync: peer standby=N ...` line for standby `n`.
/// What the consoles of the devices that ran the guest say of device
/// `device`'s lag as a standby (`sync_core::lag` lines about its address):
/// the most it was owed and when it was last back in step.
pub fn lag_summary<'a>(consoles: impl IntoIterator<Item = &'a str>, device: usize) -> sync_core::lag::LagSummary {
    let ip = multi::device_ip(device).parse().expect("device_ip is an IPv4 address");
    sync_core::lag::summarise(consoles.into_iter().flat_map(|c| c.lines()), ip)
}

pub fn peer_stat(output: &str, n: usize, key: &str) -> Option<u64> {
    let prefix = format!("vmsync: peer standby={n} ");
    let line = output.lines().find_map(|l| l.split_once(prefix.as_str()).map(|(_, r)| r))?;
    line.split_whitespace().find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disk_copy_has_the_base_bytes_and_replaces_an_old_copy() {
        let tmp = std::env::temp_dir().join(format!("vmsync-disk-copy-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        let base = tmp.join("base.img");
        let mut bytes = vec![0u8; 1 << 20];
        bytes[4096..4100].copy_from_slice(b"ext4");
        std::fs::write(&base, &bytes).unwrap();
        std::fs::write(tmp.join("a.img"), b"an older, longer disk than the base one".repeat(40_000)).unwrap();
        let a = disk_copy(&base, &tmp, "a.img").unwrap();
        assert_eq!(a, tmp.join("a.img"));
        assert_eq!(std::fs::read(&a).unwrap(), bytes);
        assert!(disk_copy(&tmp.join("none.img"), &tmp, "b.img").is_err());
        std::fs::remove_dir_all(tmp).unwrap();
    }

    #[test]
    fn each_attached_disk_gets_a_drive_of_its_own() {
        let mut cmd = Command::new("qemu-system-aarch64");
        attach_disk(&mut cmd, Path::new("/t/a,b.img"));
        attach_disk(&mut cmd, Path::new("/t/state.img"));
        let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(
            args,
            [
                "-drive",
                "file=/t/a,,b.img,if=none,format=raw,id=vmsync-disk0",
                "-device",
                "virtio-blk-device,drive=vmsync-disk0",
                "-drive",
                "file=/t/state.img,if=none,format=raw,id=vmsync-disk1",
                "-device",
                "virtio-blk-device,drive=vmsync-disk1",
            ]
        );
    }
}
