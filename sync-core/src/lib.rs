//! VMsync's architecture-free core. `no_std` + `alloc`; everything here runs
//! under `cargo test` on the host and links into the hypervisor on every target.
#![no_std]
extern crate alloc;

// Delta sync building blocks: pages and their hash, dirty sets, shadow pages,
// the delta codec (and QEMU's XBZRLE as its baseline), zstd batches.
pub mod page;
pub mod simd;
pub mod dirty;
pub mod shadow;
pub mod delta;
pub mod xbzrle;
pub mod compress;
#[cfg(target_os = "none")]
mod baremetal_libc;

// The protocol around them: sealing, wire messages and framing, the image
// digest, the standby's applier and receiver, resume bookkeeping, the
// active side's epoch encoder, cut policies and stats.
pub mod crypto;
pub mod wire;
pub mod digest;
pub mod applier;
pub mod standby;
pub mod resume;
pub mod epoch;
pub mod policy;
pub mod stats;
