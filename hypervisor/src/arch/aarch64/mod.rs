//! aarch64 at EL2: set-up, vectors and the guest enter/exit, MMU, GIC,
//! stage 2, exits decoded into the seam's `VmExit`.
pub mod esr;
pub mod id_model;
pub mod sysreg_model;
pub mod vcpu_state;

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod board;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod boot;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod cpu;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod entropy;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod exits;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod gic;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod mmu;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod power;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod stage2_mem;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod sysreg;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod timer;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod vcpu;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod vectors;
