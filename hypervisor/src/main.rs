//! The VMsync hypervisor binary: the boot crate's entry calls into the
//! library's `vmsync_main`; this file only adds what a bare-metal binary needs.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
use vmsync_boot as _;
#[cfg(target_os = "none")]
use vmsync_hypervisor as _;

#[cfg(target_os = "none")]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    vmsync_hypervisor::panic(info)
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("vmsync: the hypervisor is built for a bare-metal target; use `cargo xtask build`");
    std::process::exit(2);
}
