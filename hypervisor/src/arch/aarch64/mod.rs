//! aarch64 at EL2: entry, vectors, MMU, GIC, traps.
pub mod esr;
pub mod vcpu_state;

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod board;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod boot;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod gic;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod mmu;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod power;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod stage2_mem;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod standby;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod switch;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod sysreg;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod timer;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod tracking;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod trap;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod vcpu;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod vectors;
