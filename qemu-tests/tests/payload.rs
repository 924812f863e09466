//! A damaged boot image stops with a clear message instead of hanging.
use qemu_tests::{host_mem_mib, qemu_command, run, Assets};
use std::time::Duration;

const MEM_MIB: u64 = 128;
const DEADLINE: Duration = Duration::from_secs(60);

fn hypervisor_len(a: &Assets) -> usize {
    std::fs::metadata(&a.hypervisor).unwrap().len() as usize
}

#[test]
#[cfg_attr(not(vmsync_test_assets), ignore = "boots QEMU: run it with `cargo xtask test`")]
fn a_flipped_byte_in_the_kernel_stops_the_boot_with_an_error() {
    let a = Assets::from_env();
    let mut img = a.image_bytes("console=ttyAMA0", MEM_MIB);
    // The kernel entry's data starts one page into the payload (header and
    // entry table fill the first page); flip a byte well inside it.
    let at = hypervisor_len(&a) + 4096 + 100_000;
    img[at] ^= 0x01;
    let path = a.workdir.join("corrupt.img");
    std::fs::write(&path, &img).unwrap();
    let out = run(qemu_command(&path, host_mem_mib(MEM_MIB)), DEADLINE, &[], false).unwrap();
    assert!(!out.timed_out(), "hung instead of stopping:\n{}", out.tail());
    assert!(
        out.output.contains("vmsync: error: fatal: boot image payload corrupt: entry 'kernel' does not match its hash"),
        "no clear message:\n{}",
        out.tail()
    );
    assert!(!out.output.contains("Booting Linux"), "a corrupt kernel was started");
}

#[test]
#[cfg_attr(not(vmsync_test_assets), ignore = "boots QEMU: run it with `cargo xtask test`")]
fn a_truncated_image_stops_the_boot_with_an_error() {
    let a = Assets::from_env();
    let img = a.image_bytes("console=ttyAMA0", MEM_MIB);
    let cut = &img[..img.len() - 300_000];
    let path = a.workdir.join("truncated.img");
    std::fs::write(&path, cut).unwrap();
    let out = run(qemu_command(&path, host_mem_mib(MEM_MIB)), DEADLINE, &[], false).unwrap();
    assert!(!out.timed_out(), "hung instead of stopping:\n{}", out.tail());
    assert!(out.output.contains("vmsync: error: fatal: boot image payload"), "no clear message:\n{}", out.tail());
    assert!(!out.output.contains("Booting Linux"));
}
