//! The guest's disk: a raw image attached to the board is the device's
//! storage, which the hypervisor drives; the guest gets a virtio-blk disk
//! of its own over it (and sees nothing of the physical device). The guest
//! reads what the host put in the image, writes, flushes, discards; after
//! power-off the image holds what the guest wrote.
use qemu_tests::{attach_disk, host_mem_mib, qemu_command, run, Assets, RunOutput};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

const MEM_MIB: u64 = 256;
const DEADLINE: Duration = Duration::from_secs(300);
const DISK: u64 = 64 << 20;
const MIB: usize = 1 << 20;
/// Where init.sh's disk test reads the host's bytes, writes its own and
/// discards (`vmsync.test=disk`).
const HOST_AT: usize = 8 << 20;
const GUEST_AT: usize = 16 << 20;
const DISCARD_AT: usize = 24 << 20;

/// The host's bytes at `HOST_AT`: no two sectors alike.
fn host_pattern() -> Vec<u8> {
    (0..MIB).map(|i| (i as u32).wrapping_mul(2_654_435_761).rotate_right((i / 512) as u32 % 32) as u8).collect()
}

/// What init.sh writes at `GUEST_AT`.
fn guest_pattern() -> Vec<u8> {
    b"vmsync guest wrote this line\n".iter().copied().cycle().take(MIB).collect()
}

fn md5(bytes: &[u8]) -> String {
    let mut c = Command::new("md5sum").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("md5sum");
    c.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = c.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_string()
}

fn make_image(path: &Path) {
    let mut img = vec![0u8; DISK as usize];
    img[HOST_AT..HOST_AT + MIB].copy_from_slice(&host_pattern());
    // Bytes the guest discards: they must read as zeros after.
    img[DISCARD_AT..DISCARD_AT + MIB].fill(0xa5);
    std::fs::write(path, img).expect("writing the disk image");
}

struct DiskRun {
    out: RunOutput,
    image: PathBuf,
}

fn disk_run() -> &'static DiskRun {
    static RUN: OnceLock<DiskRun> = OnceLock::new();
    RUN.get_or_init(|| {
        let a = Assets::from_env();
        let image = a.workdir.join("disk-test.raw");
        make_image(&image);
        let img = a.image("disk.img", "console=ttyAMA0 vmsync.workload=none vmsync.test=disk", MEM_MIB);
        let mut cmd = qemu_command(&img, host_mem_mib(MEM_MIB));
        attach_disk(&mut cmd, &image);
        let out = run(cmd, DEADLINE, &["vmsync-guest: init"], false).expect("starting QEMU");
        assert!(!out.timed_out(), "the guest did not power off within {DEADLINE:?}:\n{}", out.tail());
        DiskRun { out, image }
    })
}

/// The value after `prefix` on its first line.
fn value<'a>(out: &'a RunOutput, prefix: &'a str) -> &'a str {
    let line = out.lines_with(prefix).next().unwrap_or_else(|| panic!("no '{prefix}' line:\n{}", out.tail()));
    line.split_once(prefix).map(|(_, v)| v.trim()).unwrap_or_default()
}

/// `key=N` on the hypervisor's power-off disk line.
fn disk_stat(out: &RunOutput, key: &str) -> u64 {
    let line = value(out, "vmsync: disk: requests ");
    line.split_whitespace().find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok()).unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

#[test]
#[cfg_attr(not(vmsync_test_assets), ignore = "boots QEMU: run it with `cargo xtask test`")]
fn guest_disk_reads_writes_flushes_and_discards_into_the_image() {
    let DiskRun { out, image } = disk_run();
    assert!(out.exited_ok(), "QEMU exit status {:?}:\n{}", out.status, out.tail());
    assert!(out.output.contains("vmsync: guest powered off (PSCI SYSTEM_OFF)"), "{}", out.tail());
    assert!(out.lines_with("vmsync: disk: 64 MiB virtio-blk at 0x").next().is_some(), "no boot line for the disk:\n{}", out.tail());
    assert_eq!(value(out, "vmsync-guest: disk size "), DISK.to_string(), "the guest's disk is the image's size");

    // The guest read what the host put there.
    assert_eq!(value(out, "vmsync-guest: disk host-md5 "), md5(&host_pattern()), "the guest read other bytes than the host wrote");

    // It wrote its own, read them back from the disk, and they are in the
    // file after power-off.
    let wrote = value(out, "vmsync-guest: disk wrote-md5 ");
    assert_eq!(wrote, md5(&guest_pattern()));
    assert_eq!(value(out, "vmsync-guest: disk write rc="), "0");
    assert_eq!(value(out, "vmsync-guest: disk readback-md5 "), wrote, "read back other bytes than written");
    let img = std::fs::read(image).expect("reading the image");
    assert_eq!(img.len() as u64, DISK);
    assert!(img[GUEST_AT..GUEST_AT + MIB] == guest_pattern()[..], "the image does not hold the guest's bytes");
    assert!(img[HOST_AT..HOST_AT + MIB] == host_pattern()[..], "the host's bytes changed");

    // Discard: zeros where busybox could ask for it.
    if out.output.contains("vmsync-guest: disk discard skipped") {
        eprintln!("disk test: busybox has no blkdiscard; discard not checked");
    } else {
        assert_eq!(value(out, "vmsync-guest: disk discard rc="), "0");
        assert!(img[DISCARD_AT..DISCARD_AT + MIB].iter().all(|&b| b == 0), "the discarded range is not zeros");
        assert!(disk_stat(out, "discard") > 0);
    }

    // The hypervisor's counters: writes flushed, nothing failed.
    assert!(disk_stat(out, "flush") > 0, "no FLUSH reached the disk");
    assert!(disk_stat(out, "bytes_written") >= MIB as u64);
    assert!(disk_stat(out, "bytes_read") >= MIB as u64);
    assert_eq!(disk_stat(out, "errors"), 0);
}

#[test]
#[cfg_attr(not(vmsync_test_assets), ignore = "boots QEMU: run it with `cargo xtask test`")]
fn guest_disk_is_the_only_virtio_device_the_guest_sees() {
    let out = &disk_run().out;
    // The board also has a virtio-rng and the physical virtio-blk, both
    // the hypervisor's: the guest sees one device, a block device (ID 2).
    assert_eq!(value(out, "vmsync-guest: virtio-devices "), "1: virtio0=0x0002");
    let dt = out.section("vmsync-guest: dt-begin", "vmsync-guest: dt-end", 0).expect("no device-tree listing");
    let virtio: Vec<_> = dt.lines().filter(|l| l.contains("virtio")).collect();
    assert_eq!(virtio, ["dt-node /virtio_mmio@a000000 compatible=virtio,mmio"], "{dt}");
}

/// A boot with `extra_config`, a fresh disk image attached.
fn boot_with_disk(name: &str, extra_config: &str) -> RunOutput {
    let a = Assets::from_env();
    let image = a.workdir.join(format!("{name}.raw"));
    make_image(&image);
    let img = a.image_with(&format!("{name}.img"), &a.hypervisor, "console=ttyAMA0 vmsync.workload=none vmsync.test=disk", MEM_MIB, extra_config);
    let mut cmd = qemu_command(&img, host_mem_mib(MEM_MIB));
    attach_disk(&mut cmd, &image);
    let out = run(cmd, DEADLINE, &[], false).expect("starting QEMU");
    assert!(!out.timed_out(), "no power-off within {DEADLINE:?}:\n{}", out.tail());
    out
}

#[test]
#[cfg_attr(not(vmsync_test_assets), ignore = "boots QEMU: run it with `cargo xtask test`")]
fn disk_off_hides_the_disk_from_the_guest() {
    let out = boot_with_disk("disk-off", "disk=off\n");
    assert!(out.exited_ok(), "QEMU exit status {:?}:\n{}", out.status, out.tail());
    assert!(out.output.contains("vmsync: disk: hidden from the guest (disk=off)"), "{}", out.tail());
    assert_eq!(value(&out, "vmsync-guest: virtio-devices "), "0:");
    assert!(out.output.contains("vmsync-guest: disk none (no /dev/vda)"), "{}", out.tail());
    assert!(out.lines_with("vmsync: disk: requests ").next().is_none(), "a disk line without a disk:\n{}", out.tail());
}

#[test]
#[cfg_attr(not(vmsync_test_assets), ignore = "boots QEMU: run it with `cargo xtask test`")]
fn a_disk_with_sync_peers_is_refused_at_boot_naming_disk_off() {
    let secret = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    let out = boot_with_disk("disk-peers", &format!("policy=interval:200ms\nnet_ip=169.254.0.1/16\npeer=169.254.0.2:7000\nsecret={secret}\n"));
    let line = out.lines_with("vmsync: error: fatal: disk: refused").next().unwrap_or_else(|| panic!("not refused:\n{}", out.tail()));
    assert!(line.contains("set disk=off"), "{line}");
    assert!(!out.output.contains("vmsync-guest: init"), "the guest ran:\n{}", out.tail());
}
