//! VMsync's architecture-free core. `no_std` + `alloc`; everything here runs
//! under `cargo test` on the host and links into the hypervisor on every target.
#![no_std]
extern crate alloc;
