//! The guest boots from its root disk (issue 18): the base initramfs loads
//! the virtio modules, mounts `/dev/vda` (ext4) and switch_roots into it;
//! the disk's init runs sqlite, which keeps its database on the disk. The
//! run boots a copy of the base image, as each device does, and the host
//! checks the copy afterwards with e2fsprogs; without a disk the guest
//! stays in its initramfs. With an epoch policy the hypervisor counts the
//! guest's disk writes per epoch on the epoch lines (`disk_dirty_blocks`,
//! `disk_guest_bytes`). Keep the test names in step with
//! `ROOT_DISK_TESTS` in xtask/src/test.rs.
use qemu_tests::{attach_disk, disk_copy, e2fs_program, epochs, host_mem_mib, plain_command, qemu_command, run, Assets};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Under the hypervisor: the copy is the device's backing store, which
/// the hypervisor drives and emulates the guest's disk from (`false` boots
/// the same guest in plain QEMU, where the kernel sees QEMU's own disk: the
/// baseline when something here looks wrong).
const UNDER_HYPERVISOR: bool = true;
const MEM_MIB: u64 = 256;
const SECONDS: u64 = 5;
/// About 40 s under TCG (boot, two inits, sqlite, power-off); room for a
/// busy host.
const DEADLINE: Duration = Duration::from_secs(150);

/// The device booting the kernel with `cmdline` and `disk` attached.
fn command(a: &Assets, name: &str, disk: Option<&Path>, cmdline: &str) -> Command {
    let mut cmd = if UNDER_HYPERVISOR {
        let img = a.image(&format!("{name}.img"), cmdline, MEM_MIB);
        qemu_command(&img, host_mem_mib(MEM_MIB))
    } else {
        plain_command(&a.kernel, &a.initrd, cmdline, MEM_MIB)
    };
    if let Some(disk) = disk {
        attach_disk(&mut cmd, disk);
    }
    cmd
}

/// What an e2fsprogs program says of the image (stdout and stderr), and
/// whether it succeeded.
fn e2fs(program: &str, args: &[&str], image: &Path) -> (bool, String) {
    let out = Command::new(e2fs_program(program)).args(args).arg(image).output().unwrap_or_else(|e| panic!("starting {program}: {e}"));
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
#[cfg_attr(not(vmsync_test_assets), ignore = "boots QEMU: run it with `cargo xtask test`")]
fn sqlite_runs_on_a_copy_of_the_root_disk() {
    let a = Assets::from_env();
    let disk = disk_copy(a.root_disk(), &a.workdir, "root_disk-sqlite.ext4").expect("copying the root disk");
    let cmdline = format!("console=ttyAMA0 root=/dev/vda vmsync.workload=sqlite vmsync.seconds={SECONDS}");
    let out = run(command(&a, "root_disk-sqlite", Some(&disk), &cmdline), DEADLINE, &[], false).expect("starting QEMU");
    assert!(!out.timed_out(), "the guest did not power off within {DEADLINE:?}:\n{}", out.tail());
    let o = &out.output;
    // The initramfs's init, then the disk's.
    assert!(o.contains("vmsync-guest: root /dev/vda mounted; switching to it"), "{}", out.tail());
    assert_eq!(out.lines_with("vmsync-guest: init").count(), 2, "{}", out.tail());
    let root = out.lines_with("vmsync-guest: root-disk /dev/vda").next().unwrap_or_else(|| panic!("no root-disk line:\n{}", out.tail()));
    assert!(root.contains("/dev/vda / ext4 rw,"), "{root}");
    assert!(o.contains("vmsync-guest: workload sqlite end rc=0"), "{}", out.tail());
    let done: u64 = out
        .lines_with("vmsync-workload: counter=")
        .filter_map(|l| l.split_whitespace().find_map(|kv| kv.strip_prefix("transactions=")?.parse().ok()))
        .max()
        .unwrap_or(0);
    assert!(done > 0, "sqlite committed no transaction:\n{}", out.tail());
    assert!(o.contains("vmsync-guest: root-disk clean") && o.contains("vmsync-guest: poweroff"), "{}", out.tail());
    assert!(out.exited_ok(), "QEMU exit status {:?}:\n{}", out.status, out.tail());

    // The database is on the disk, not in a tmpfs.
    let (ok, stat) = e2fs("debugfs", &["-R", "stat /var/lib/vmsync/sqlite/app.db"], &disk);
    let size: u64 = stat.lines().find_map(|l| l.split("Size: ").nth(1)?.split_whitespace().next()?.parse().ok()).unwrap_or(0);
    assert!(ok && size > 0, "no database on the disk:\n{stat}");
    // The guest left the filesystem clean: nothing to replay, nothing to fix.
    let (clean, fsck) = e2fs("e2fsck", &["-fn"], &disk);
    assert!(clean, "e2fsck -fn finds problems:\n{fsck}");
    let _ = std::fs::remove_file(&disk);
}

/// `root=` with no disk attached: the initramfs's init waits for it (10 s),
/// says so and runs the workload from the initramfs, as without `root=`.
#[test]
#[cfg_attr(not(vmsync_test_assets), ignore = "boots QEMU: run it with `cargo xtask test`")]
fn without_its_root_disk_the_guest_stays_in_the_initramfs() {
    let a = Assets::from_env();
    let cmdline = "console=ttyAMA0 root=/dev/vda vmsync.workload=counter vmsync.seconds=1";
    let out = run(command(&a, "root_disk-missing", None, cmdline), DEADLINE, &[], false).expect("starting QEMU");
    assert!(!out.timed_out(), "the guest did not power off within {DEADLINE:?}:\n{}", out.tail());
    let o = &out.output;
    assert!(o.contains("vmsync-guest: warning: root /dev/vda: no such disk; staying in the initramfs"), "{}", out.tail());
    assert!(!o.contains("vmsync-guest: root-disk"), "{}", out.tail());
    assert_eq!(out.lines_with("vmsync-guest: init").count(), 1, "{}", out.tail());
    assert!(o.contains("vmsync-guest: workload counter end rc=0") && out.exited_ok(), "{}", out.tail());
}

/// One device with an epoch policy booted from a copy of the root disk
/// (`name`.ext4) with `cmdline`: its console, and the disk's 4 KiB blocks.
fn tracked_run(a: &Assets, name: &str, cmdline: &str) -> (qemu_tests::RunOutput, u64) {
    let disk = disk_copy(a.root_disk(), &a.workdir, &format!("{name}.ext4")).expect("copying the root disk");
    let blocks = std::fs::metadata(&disk).expect("the copy").len() / 4096;
    let img = a.image_with(&format!("{name}.img"), &a.hypervisor, cmdline, MEM_MIB, "policy=interval:200ms\n");
    let mut cmd = qemu_command(&img, host_mem_mib(MEM_MIB));
    attach_disk(&mut cmd, &disk);
    let out = run(cmd, DEADLINE, &[], false).expect("starting QEMU");
    let _ = std::fs::remove_file(&disk);
    assert!(!out.timed_out(), "the guest did not power off within {DEADLINE:?}:\n{}", out.tail());
    assert!(out.output.contains("vmsync-guest: root /dev/vda mounted; switching to it"), "{}", out.tail());
    assert!(out.exited_ok(), "QEMU exit status {:?}:\n{}", out.status, out.tail());
    (out, blocks)
}

/// Sums of the epochs' (disk_dirty_blocks, disk_guest_bytes), each epoch
/// checked to touch no more blocks than the disk has.
fn disk_sums(out: &qemu_tests::RunOutput, blocks: u64) -> (u64, u64) {
    let e = epochs(&out.output);
    assert!(e.len() >= 3, "{} epochs:\n{}", e.len(), out.tail());
    for s in &e {
        assert!(s.disk_dirty_blocks <= blocks, "epoch {}: {} dirty blocks on a disk of {blocks}", s.epoch, s.disk_dirty_blocks);
    }
    (e.iter().map(|s| s.disk_dirty_blocks).sum(), e.iter().map(|s| s.disk_guest_bytes).sum())
}

/// The storage workload (its files on the disk) for a few seconds under
/// interval:200ms: the epochs count its disk writes.
#[test]
#[cfg_attr(not(vmsync_test_assets), ignore = "boots QEMU: run it with `cargo xtask test`")]
fn root_disk_epochs_count_the_storage_workloads_writes() {
    let a = Assets::from_env();
    let cmdline = format!("console=ttyAMA0 root=/dev/vda vmsync.workload=storage vmsync.seconds={SECONDS}");
    let (out, blocks) = tracked_run(&a, "root_disk-epochs-storage", &cmdline);
    assert!(out.output.contains("vmsync-guest: workload storage end rc=0"), "{}", out.tail());
    let (dirty, guest) = disk_sums(&out, blocks);
    assert!(dirty > 0 && guest > 0, "no disk writes counted: {dirty} blocks, {guest} bytes:\n{}", out.tail());
    eprintln!("storage: {dirty} dirty blocks ({} MB), {guest} guest bytes over the run", dirty * 4096 / 1_000_000);
}

/// The guest writes 4 MiB to a file on its disk and fsyncs it: the epochs
/// count at least that (1024 blocks, 4 MiB of write requests).
#[test]
#[cfg_attr(not(vmsync_test_assets), ignore = "boots QEMU: run it with `cargo xtask test`")]
fn root_disk_epochs_count_a_known_write() {
    let a = Assets::from_env();
    let cmdline = "console=ttyAMA0 root=/dev/vda vmsync.exec=/bin/dd vmsync.args=if=/dev/urandom,of=/var/lib/vmsync/known,bs=1M,count=4,conv=fsync";
    let (out, blocks) = tracked_run(&a, "root_disk-epochs-known", cmdline);
    assert!(out.output.contains("vmsync-guest: workload /bin/dd end rc=0"), "{}", out.tail());
    let (dirty, guest) = disk_sums(&out, blocks);
    assert!(dirty >= 1024, "{dirty} dirty blocks for 4 MiB written:\n{}", out.tail());
    assert!(guest >= 4 << 20, "{guest} guest bytes for 4 MiB written:\n{}", out.tail());
}
