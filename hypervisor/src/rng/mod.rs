//! Randomness for the hypervisor's own use (handshake nonces, ephemeral
//! keys, the TCP stack's initial sequence numbers): an arch-neutral
//! `Entropy` source trait, the board's sources behind it (the CPU's own,
//! from the arch: `RNDR` on aarch64; a virtio-rng device the hypervisor
//! drives, never shown to the guest), and `Randomness`, which the node
//! reaches through its parts and which seeds `sync_core::crypto::Drbg`s.
//!
//! With no source at all, sync with other devices does not start (a guest
//! without peers still runs): the boot counter is no secret.
use alloc::boxed::Box;
use alloc::vec::Vec;
use log::warn;
use sync_core::crypto::{Drbg, SEED_LEN};

pub mod virtio;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RngError {
    /// The board offers no source of randomness.
    NoSource,
    /// A device failed or gave fewer bytes than asked.
    Device,
    /// The CPU kept reporting its generator not ready.
    NotReady,
    /// Every source there is failed.
    AllFailed,
}

/// A source of true (or cryptographically seeded) random bytes.
pub trait Entropy {
    /// For the boot log.
    fn name(&self) -> &'static str;
    /// Fills all of `buf`, or fails.
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), RngError>;
}

const CONTEXT_SEED: &str = "VMsync 2025 hypervisor seed from the board's entropy sources v1";

/// The board's sources of randomness.
pub struct Randomness {
    sources: Vec<Box<dyn Entropy>>,
}

impl Randomness {
    pub fn new(sources: Vec<Box<dyn Entropy>>) -> Self {
        Randomness { sources }
    }

    /// A board without any source: sync with other devices refuses to start.
    pub fn none() -> Self {
        Randomness { sources: Vec::new() }
    }

    pub fn is_available(&self) -> bool {
        !self.sources.is_empty()
    }

    /// The sources' names, for the boot log.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.sources.iter().map(|s| s.name())
    }

    /// 32 bytes from every source that works, hashed together: no weaker
    /// than the best of them. A failing source is skipped (logged).
    pub fn seed(&mut self) -> Result<[u8; SEED_LEN], RngError> {
        if self.sources.is_empty() {
            return Err(RngError::NoSource);
        }
        let mut h = blake3::Hasher::new_derive_key(CONTEXT_SEED);
        let mut any = false;
        for s in self.sources.iter_mut() {
            let mut b = [0u8; SEED_LEN];
            match s.fill(&mut b) {
                Ok(()) => {
                    h.update(&b);
                    any = true;
                }
                Err(e) => warn!("rng: {} failed: {e:?}", s.name()),
            }
        }
        if !any {
            return Err(RngError::AllFailed);
        }
        Ok(*h.finalize().as_bytes())
    }

    /// A fresh generator for one user (a set of peers, a standby).
    pub fn drbg(&mut self) -> Result<Drbg, RngError> {
        self.seed().map(Drbg::new)
    }

    pub fn u64(&mut self) -> Result<u64, RngError> {
        let s = self.seed()?;
        let mut b = [0u8; 8];
        b.copy_from_slice(&s[..8]);
        Ok(u64::from_le_bytes(b))
    }
}

/// The board's sources: the arch's own (CPU, firmware), then a virtio-rng
/// device in the host device tree (opened only if `dma`, the virtio DMA
/// pool, is set). Logs one line saying which there are.
#[cfg(target_os = "none")]
pub fn board<A: crate::arch::seam::ArchBoot>(arch: &mut A, host_fdt: &fdt::Fdt, device_window: core::ops::Range<u64>, dma: bool) -> Randomness {
    let mut sources = arch.entropy();
    if let Some((base, size)) = crate::net::find_virtio(host_fdt, device_window, virtio::DEVICE_ID_RNG).filter(|_| dma) {
        // SAFETY: a virtio-mmio slot inside the Device-mapped window, found
        // once; nothing else drives it (the guest has no device mapped); the
        // DMA pool is set (`dma`).
        match unsafe { virtio::VirtioRng::open(base, size) } {
            Ok(d) => sources.push(Box::new(d)),
            Err(e) => warn!("rng: virtio-rng at {base:#x}: {e:?}"),
        }
    }
    let r = Randomness::new(sources);
    if r.is_available() {
        let mut names: heapless::String<64> = heapless::String::new();
        for n in r.names() {
            let _ = core::fmt::Write::write_fmt(&mut names, format_args!(" {n}"));
        }
        log::info!("rng: sources:{names}");
    } else {
        warn!("rng: no source of randomness (no RNDR, no SMCCC TRNG, no virtio-rng): sync with other devices is off");
    }
    r
}

/// A deterministic source for host tests: the same seed gives the same
/// bytes; different seeds, different bytes.
#[cfg(test)]
pub struct FakeEntropy(pub u64);

#[cfg(test)]
impl Entropy for FakeEntropy {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), RngError> {
        let mut h = blake3::Hasher::new();
        h.update(&self.0.to_le_bytes());
        h.finalize_xof().fill(buf);
        self.0 = self.0.wrapping_add(1);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Broken;
    impl Entropy for Broken {
        fn name(&self) -> &'static str {
            "broken"
        }
        fn fill(&mut self, _: &mut [u8]) -> Result<(), RngError> {
            Err(RngError::Device)
        }
    }

    #[test]
    fn no_source_no_seed() {
        let mut r = Randomness::none();
        assert!(!r.is_available());
        assert_eq!(r.seed(), Err(RngError::NoSource));
        assert!(r.drbg().is_err());
    }

    #[test]
    fn a_broken_source_alone_gives_no_seed_and_is_skipped_beside_a_good_one() {
        let mut r = Randomness::new(alloc::vec![Box::new(Broken)]);
        assert_eq!(r.seed(), Err(RngError::AllFailed));
        let mut r = Randomness::new(alloc::vec![Box::new(Broken), Box::new(FakeEntropy(1))]);
        let mut only = Randomness::new(alloc::vec![Box::new(FakeEntropy(1))]);
        assert_eq!(r.seed().unwrap(), only.seed().unwrap());
    }

    #[test]
    fn seeds_differ_per_draw_and_per_source_state() {
        let mut r = Randomness::new(alloc::vec![Box::new(FakeEntropy(7))]);
        let (a, b) = (r.seed().unwrap(), r.seed().unwrap());
        assert_ne!(a, b);
        let mut again = Randomness::new(alloc::vec![Box::new(FakeEntropy(7))]);
        assert_eq!(again.seed().unwrap(), a);
    }
}
