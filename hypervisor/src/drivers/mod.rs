//! Drivers for the physical devices the hypervisor itself owns.
pub mod pl011;
