//! The Debian kernel boots under the hypervisor on its virtual board.
//! One boot (video workload, an access outside guest RAM, a probe of the
//! CPU model, power-off) is
//! shared by the tests that read different parts of its console.
use qemu_tests::{host_mem_mib, qemu_command, run, Assets, RunOutput};
use std::sync::OnceLock;
use std::time::Duration;

const MEM_MIB: u64 = 256;
const DEADLINE: Duration = Duration::from_secs(240);

fn shared_boot() -> &'static RunOutput {
    static BOOT: OnceLock<RunOutput> = OnceLock::new();
    BOOT.get_or_init(|| {
        let a = Assets::from_env();
        let img = a.image("boot.img", "console=ttyAMA0 vmsync.workload=video vmsync.seconds=3 vmsync.test=badaccess,cpumodel", MEM_MIB);
        run(qemu_command(&img, host_mem_mib(MEM_MIB)), DEADLINE, &["vmsync-guest: init"], false).expect("starting QEMU")
    })
}

fn boot() -> &'static RunOutput {
    let out = shared_boot();
    assert!(!out.timed_out(), "the guest did not power off within {DEADLINE:?}:\n{}", out.tail());
    out
}

#[test]
#[cfg_attr(not(vmsync_test_assets), ignore = "boots QEMU: run it with `cargo xtask test`")]
fn debian_kernel_boots_to_init_and_powers_off_cleanly() {
    let out = boot();
    let a = Assets::from_env();
    assert!(out.exited_ok(), "QEMU exit status {:?}:\n{}", out.status, out.tail());
    assert!(out.output.contains("vmsync-guest: init"), "no init marker:\n{}", out.tail());
    let uname = out.lines_with("vmsync-guest: uname ").next().expect("no uname line");
    assert_eq!(uname.trim_start_matches("vmsync-guest: uname ").trim(), a.kernel_release);
    assert!(out.output.contains("vmsync-guest: workload video end rc=0"), "workload did not finish cleanly:\n{}", out.tail());
    assert!(out.output.contains("vmsync: guest powered off (PSCI SYSTEM_OFF)"), "{}", out.tail());
    // The hypervisor reports its traps by kind when the guest stops.
    assert!(out.lines_with("vmsync: traps: total=").next().is_some(), "{}", out.tail());
}

/// The count on the arch timer's line of /proc/interrupts.
fn timer_count(interrupts: &str) -> u64 {
    let line = interrupts.lines().find(|l| l.contains("arch_timer")).unwrap_or_else(|| panic!("no arch_timer line in:\n{interrupts}"));
    line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("no count in {line:?}"))
}

#[test]
#[cfg_attr(not(vmsync_test_assets), ignore = "boots QEMU: run it with `cargo xtask test`")]
fn guest_timer_interrupts_arrive() {
    let out = boot();
    let first = out.section("vmsync-guest: interrupts-begin", "vmsync-guest: interrupts-end", 0).expect("first /proc/interrupts");
    let second = out.section("vmsync-guest: interrupts-begin", "vmsync-guest: interrupts-end", 1).expect("second /proc/interrupts");
    let (a, b) = (timer_count(&first), timer_count(&second));
    // Three seconds of a busy workload on a CONFIG_HZ=250 NO_HZ kernel: the
    // count must move by far more than a stray interrupt or two.
    assert!(b > a + 20, "timer count went from {a} to {b}");
}

#[test]
#[cfg_attr(not(vmsync_test_assets), ignore = "boots QEMU: run it with `cargo xtask test`")]
fn device_tree_holds_only_the_virtual_board() {
    let out = boot();
    let dt = out.section("vmsync-guest: dt-begin", "vmsync-guest: dt-end", 0).expect("no device-tree listing");
    assert!(!dt.contains("virtio"), "virtio node visible to the guest:\n{dt}");
    assert_eq!(dt.matches("pl011@").count(), 1, "expected exactly one UART:\n{dt}");
    for node in ["intc@8000000", "psci", "timer", "memory@40000000", "cpus", "chosen"] {
        assert!(dt.contains(node), "no {node} node:\n{dt}");
    }
}

#[test]
#[cfg_attr(not(vmsync_test_assets), ignore = "boots QEMU: run it with `cargo xtask test`")]
fn access_outside_guest_ram_is_a_bus_error_and_the_hypervisor_survives() {
    let out = boot();
    assert!(out.output.contains("vmsync-guest: badaccess rc=135"), "devmem did not die of SIGBUS:\n{}", out.tail());
    assert!(
        out.lines_with("unmapped IPA 0xa000000").any(|l| l.contains("reflected as a synchronous external abort")),
        "the hypervisor did not report the access:\n{}",
        out.tail()
    );
    // The guest carried on to its orderly power-off afterwards.
    let bad = out.output.find("vmsync-guest: badaccess").unwrap();
    assert!(out.output[bad..].contains("vmsync-guest: poweroff"));
}

/// The value of `key=` on `line`.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

#[test]
#[cfg_attr(not(vmsync_test_assets), ignore = "boots QEMU: run it with `cargo xtask test`")]
fn guest_programs_see_the_cpu_model_and_dc_zva_is_prohibited() {
    let out = boot();
    let regs = out.lines_with("vmsync-cpu: ctr_el0=").next().unwrap_or_else(|| panic!("no probe line:\n{}", out.tail()));
    // The model's CTR_EL0, not the A57's 0x8444c004 (QEMU's, which a plain
    // QEMU boot shows).
    assert_eq!(field(regs, "ctr_el0"), Some("0x80028002"), "{regs}");
    // DZP (bit 4) set: DC ZVA prohibited; the block size (3:0) is the CPU's.
    let dczid = u64::from_str_radix(field(regs, "dczid_el0").expect("dczid_el0").trim_start_matches("0x"), 16).expect("hex");
    assert_ne!(dczid & 1 << 4, 0, "DCZID_EL0 {dczid:#x} does not say prohibited");
    // A DC ZVA anyway: SIGILL (4), and the guest carried on.
    assert!(out.output.contains("vmsync-cpu: dc_zva signal=4"), "{}", out.tail());
    assert!(out.output.contains("vmsync-guest: cpumodel rc=0"), "{}", out.tail());
    // The hypervisor reports the first trap of each kind, and counts them.
    for reg in ["(CTR_EL0)", "(CLIDR_EL1)", "(DC ZVA)"] {
        assert!(out.lines_with("vmsync: guest").any(|l| l.contains("trapped") && l.contains(reg)), "no first-trap line for {reg}:\n{}", out.tail());
    }
    let counts = out.lines_with("vmsync: cpu model traps:").next().unwrap_or_else(|| panic!("no trap counters:\n{}", out.tail()));
    let ctr: u64 = field(counts, "ctr_el0").and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{counts}"));
    let zva: u64 = field(counts, "dc_zva").and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{counts}"));
    assert!(ctr >= 1 && zva >= 1, "{counts}");
}
