//! The VMsync hypervisor. Host-testable logic lives in modules that are plain
//! data in, plain data out; architecture code only under `arch/<arch>/`.
#![no_std]
extern crate alloc;

pub mod arch;
pub mod config;
pub mod console_cmd;
pub mod memory;
pub mod net;
pub mod node;
pub mod rng;
pub mod stats;
pub mod storage;
pub mod sync;
pub mod vplatform;

#[cfg(target_os = "none")]
pub mod drivers;
#[cfg(all(target_os = "none", target_arch = "aarch64"))]
mod entry;
#[cfg(target_os = "none")]
mod heap;
#[cfg(target_os = "none")]
pub mod logger;

/// Reports a hypervisor panic on the console and stops the machine.
#[cfg(all(target_os = "none", target_arch = "aarch64"))]
pub fn panic(info: &core::panic::PanicInfo) -> ! {
    log::error!("hypervisor panic: {info}");
    arch::aarch64::power::system_off()
}
