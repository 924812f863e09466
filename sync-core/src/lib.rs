//! VMsync's architecture-free core. `no_std` + `alloc`; everything here runs
//! under `cargo test` on the host and links into the hypervisor on every target.
#![no_std]
extern crate alloc;

// Delta sync building blocks: pages and their hash, dirty sets, shadow pages,
// the delta codec (and QEMU's XBZRLE as its baseline), zstd batches.
#[cfg(target_os = "none")]
mod baremetal_libc;
pub mod compress;
pub mod delta;
pub mod dirty;
pub mod page;
pub mod shadow;
pub mod simd;
pub mod xbzrle;

// The protocol around them: sealing, wire messages and framing, the image
// digest, the standby's applier and receiver, resume bookkeeping, the
// active side's epoch encoder and its shadow probes, cut policies, stats
// and lag lines.
pub mod applier;
pub mod catchup;
pub mod crypto;
pub mod digest;
pub mod epoch;
pub mod fence;
pub mod lag;
pub mod outq;
pub mod policy;
pub mod probe;
pub mod resume;
pub mod standby;
pub mod stats;
pub mod wire;
