//! The VMsync boot image: the Linux arm64 `Image` header the hypervisor
//! presents to loaders, the payload container that carries the guest after
//! the hypervisor, and the early entry code per architecture.
//!
//! File layout (aarch64): hypervisor text+data, zero-filled BSS span,
//! payload container. The header's `image_size` covers all of it, so a
//! loader reserves (and a relocating loader copies) the payload too.
#![no_std]
extern crate alloc;

pub mod container;
pub mod image;

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod aarch64;
