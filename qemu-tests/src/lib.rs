//! Helpers for tests that boot QEMU machines.
