//! The VMsync hypervisor. Host-testable logic lives in modules that are plain
//! data in, plain data out; architecture code only under `arch/<arch>/`.
#![no_std]
extern crate alloc;
