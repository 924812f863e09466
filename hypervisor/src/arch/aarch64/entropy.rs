//! The CPU's and the firmware's own randomness, behind `rng::Entropy`:
//! `RNDR` where the CPU has FEAT_RNG (ID_AA64ISAR0_EL1.RNDR), and the Arm
//! SMCCC TRNG call where the firmware offers it. QEMU's `cortex-a57` has
//! neither (`-cpu max` has RNDR); its board has virtio-rng (`rng::virtio`).
use aarch64_cpu::registers::{Readable, ID_AA64ISAR0_EL1};
use alloc::boxed::Box;
use alloc::vec::Vec;

use crate::rng::{Entropy, RngError};

/// RNDR may report "not ready" now and then; this many in a row is a failure.
const RNDR_TRIES: u32 = 32;

/// Whether the CPU implements RNDR.
pub fn has_rndr() -> bool {
    ID_AA64ISAR0_EL1.read(ID_AA64ISAR0_EL1::RNDR) >= 1
}

pub struct Rndr;

impl Rndr {
    fn read() -> Option<u64> {
        let (v, ok): (u64, u64);
        // SAFETY: only called when ID_AA64ISAR0_EL1 says RNDR exists
        // (`has_rndr`); it reads a register and sets the flags, nothing else.
        // s3_3_c2_c4_0 is RNDR, spelled out for assemblers without FEAT_RNG.
        unsafe {
            core::arch::asm!("mrs {v}, s3_3_c2_c4_0", "cset {ok}, ne", v = out(reg) v, ok = out(reg) ok, options(nomem, nostack));
        }
        // Z set means the generator had no value ready (v reads 0).
        (ok == 1).then_some(v)
    }
}

impl Entropy for Rndr {
    fn name(&self) -> &'static str {
        "rndr"
    }

    fn fill(&mut self, buf: &mut [u8]) -> Result<(), RngError> {
        for chunk in buf.chunks_mut(8) {
            let v = (0..RNDR_TRIES).find_map(|_| Rndr::read()).ok_or(RngError::NotReady)?;
            chunk.copy_from_slice(&v.to_le_bytes()[..chunk.len()]);
        }
        Ok(())
    }
}

const PSCI_VERSION: u64 = 0x8400_0000;
const PSCI_FEATURES: u64 = 0x8400_000A;
const SMCCC_VERSION: u64 = 0x8000_0000;
const TRNG_VERSION: u64 = 0x8400_0050;
const TRNG_RND64: u64 = 0xC400_0053;

fn smc(fid: u64, arg: u64) -> [u64; 4] {
    let r: [u64; 4];
    // SAFETY: an SMCCC call into firmware, only with function IDs the
    // firmware said it knows (see `trng`); the registers SMCCC lets it
    // clobber are declared so.
    unsafe {
        let (a, b, c, d): (u64, u64, u64, u64);
        // SMCCC 1.0 firmware may clobber x4-x17 as well.
        core::arch::asm!(
            "smc #0",
            inout("x0") fid => a, inout("x1") arg => b, out("x2") c, out("x3") d,
            out("x4") _, out("x5") _, out("x6") _, out("x7") _, out("x8") _, out("x9") _, out("x10") _, out("x11") _,
            out("x12") _, out("x13") _, out("x14") _, out("x15") _, out("x16") _, out("x17") _,
            options(nostack)
        );
        r = [a, b, c, d];
    }
    r
}

/// The SMCCC TRNG, if the firmware offers it. Each call is asked only once
/// the one before says the next exists: an unknown SMC on a board without
/// EL3 firmware (QEMU's built-in PSCI) is an undefined instruction here.
pub fn trng() -> Option<Trng> {
    // PSCI_FEATURES exists from PSCI 1.0.
    if smc(PSCI_VERSION, 0)[0] as u32 >= 0x1_0000 && (smc(PSCI_FEATURES, SMCCC_VERSION)[0] as i32) >= 0 {
        // SMCCC 1.1 and later answer NOT_SUPPORTED (negative) to unknown calls.
        let v = smc(SMCCC_VERSION, 0)[0] as i32;
        if v >= 0x1_0001 && (smc(TRNG_VERSION, 0)[0] as i32) >= 0x1_0000 {
            return Some(Trng);
        }
    }
    None
}

pub struct Trng;

impl Entropy for Trng {
    fn name(&self) -> &'static str {
        "smccc-trng"
    }

    fn fill(&mut self, buf: &mut [u8]) -> Result<(), RngError> {
        for chunk in buf.chunks_mut(8) {
            // 64 bits come back in x3; a negative x0 is an error (no entropy now).
            let r = (0..RNDR_TRIES).map(|_| smc(TRNG_RND64, 64)).find(|r| r[0] as i64 == 0).ok_or(RngError::NotReady)?;
            chunk.copy_from_slice(&r[3].to_le_bytes()[..chunk.len()]);
        }
        Ok(())
    }
}

/// The CPU's and firmware's sources on this machine.
pub fn sources() -> Vec<Box<dyn Entropy>> {
    let mut v: Vec<Box<dyn Entropy>> = Vec::new();
    if has_rndr() {
        v.push(Box::new(Rndr));
    }
    if let Some(t) = trng() {
        v.push(Box::new(t));
    }
    v
}
