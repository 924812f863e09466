//! A standby whose memory is smaller than an incoming epoch: a device that
//! started active has a sync heap sized for its shadows (a quarter of guest
//! RAM by default), and after a switch it stages each incoming epoch there.
//! Here the standby's allocations (and only those) draw on a bounded heap
//! (`Limited`), far smaller than a catch-up of the whole guest: the
//! standby never asks for memory the heap does not have, never panics, its
//! image is a committed epoch's whenever it claims one, and it commits the
//! last cut once the guest stops writing.

mod common;

use common::{assert_image_is_a_committed_epoch, handshake};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use sync_core::applier::Applier;
use sync_core::catchup::{worst_case_bytes, EPOCH_FRAMES};
use sync_core::compress::ZstdConfig;
use sync_core::digest::{content_digest, PageHashes, VecMemory};
use sync_core::epoch::{ActiveEvent, ActiveSync, Link};
use sync_core::page::PAGE_SIZE;
use sync_core::shadow::Budget;
use sync_core::standby::{Event, StandbyReceiver};
use sync_core::wire::{Digest, FrameDecoder};

/// Allocations made on a thread that set `BOUNDED` count against `LIMIT`
/// bytes and fail past it (as the hypervisor's heap does); the others (the
/// test harness, the simulated active device) go to the system allocator
/// unbounded. Each block carries a header saying whether it was counted.
struct Limited;

thread_local! {
    static BOUNDED: Cell<bool> = const { Cell::new(false) };
}
static USED: AtomicUsize = AtomicUsize::new(0);
static LIMIT: AtomicUsize = AtomicUsize::new(usize::MAX);
static FAILED: AtomicU64 = AtomicU64::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn header(layout: Layout) -> usize {
    layout.align().max(16)
}

// SAFETY: every block is the system allocator's, `header` bytes larger and
// as aligned as asked; the header's last 8 bytes hold the size counted (0:
// not counted), read back at dealloc with the same layout.
unsafe impl GlobalAlloc for Limited {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let h = header(layout);
        let counted = BOUNDED.try_with(|b| b.get()).unwrap_or(false);
        if counted {
            let used = USED.load(Ordering::Relaxed);
            if used + layout.size() > LIMIT.load(Ordering::Relaxed) {
                FAILED.fetch_add(1, Ordering::Relaxed);
                return std::ptr::null_mut();
            }
            PEAK.fetch_max(used + layout.size(), Ordering::Relaxed);
            USED.fetch_add(layout.size(), Ordering::Relaxed);
        }
        let Ok(full) = Layout::from_size_align(layout.size() + h, h) else { return std::ptr::null_mut() };
        // SAFETY: `full` has a non-zero size.
        let base = unsafe { System.alloc(full) };
        if base.is_null() {
            return base;
        }
        // SAFETY: `h` >= 16 bytes precede the block, inside `full`.
        unsafe {
            let p = base.add(h);
            (p.sub(8) as *mut usize).write(if counted { layout.size() } else { 0 });
            p
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let h = header(layout);
        // SAFETY: `ptr` came from `alloc` with this layout: its header is
        // the `h` bytes before it.
        unsafe {
            let counted = (ptr.sub(8) as *const usize).read();
            USED.fetch_sub(counted, Ordering::Relaxed);
            System.dealloc(ptr.sub(h), Layout::from_size_align_unchecked(layout.size() + h, h));
        }
    }
}

#[global_allocator]
static ALLOC: Limited = Limited;

/// Runs `f` with this thread's allocations bounded.
fn bounded<T>(f: impl FnOnce() -> T) -> T {
    BOUNDED.with(|b| b.set(true));
    let r = f();
    BOUNDED.with(|b| b.set(false));
    r
}

const PAGES: usize = 2048;

struct Sim {
    guest: VecMemory,
    active: ActiveSync,
    applier: Applier<VecMemory>,
    link: Link,
    rx: StandbyReceiver,
    rx_dec: FrameDecoder,
    tx_dec: FrameDecoder,
    history: Vec<Digest>,
    dirty: Vec<u64>,
    rng: u64,
    resyncs: u64,
    /// The standby's image was not a committed epoch's at some point.
    torn_seen: bool,
}

impl Sim {
    fn new() -> Self {
        let n = PAGES as u64;
        let mut active = ActiveSync::new(n, Budget::Full).unwrap();
        let id = active.add_standby();
        let applier = Applier::with_hashes(VecMemory::zeroed(PAGES), 0, PageHashes::zeroed(n));
        let (a, b) = handshake(n, 0, 0, 1);
        active.connect(id, 0).unwrap();
        let link = Link::new(id, a, ZstdConfig::default()).unwrap();
        let rx = StandbyReceiver::new(b, ZstdConfig::default()).unwrap();
        let zero = VecMemory::zeroed(PAGES);
        Sim {
            history: vec![content_digest(&zero)],
            guest: zero,
            active,
            applier,
            link,
            rx,
            rx_dec: FrameDecoder::new(),
            tx_dec: FrameDecoder::new(),
            dirty: Vec::new(),
            rng: 0x2545_f491_4f6c_dd1d,
            resyncs: 0,
            torn_seen: false,
        }
    }

    /// Incompressible bytes over all of `page`.
    fn write(&mut self, page: usize) {
        for b in self.guest.pages_mut()[page].iter_mut() {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            *b = self.rng as u8;
        }
        if !self.dirty.contains(&(page as u64)) {
            self.dirty.push(page as u64);
        }
    }

    fn cut(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        let (m, _) = self.active.cut(dirty, &self.guest, &mut [&mut self.link]).unwrap();
        assert_eq!(self.history.len() as u64, m);
        self.history.push(content_digest(&self.guest));
    }

    /// The link carries up to `n` bytes to the standby (its allocations
    /// bounded) and the replies back.
    fn drain(&mut self, mut n: usize) {
        let mut replies = Vec::new();
        while n > 0 && !self.link.out.is_empty() {
            let front = self.link.out.front();
            let k = front.len().min(n);
            let mut input = &front[..k];
            while !input.is_empty() {
                let Some(f) = self.rx_dec.decode(&mut input).unwrap() else { continue };
                let ev = bounded(|| self.rx.on_frame(f, &mut self.applier, &mut replies)).unwrap();
                if let Event::Resyncing(e) = ev {
                    self.resyncs += 1;
                    if self.resyncs == 1 {
                        println!("the standby dropped an epoch: {e:?}");
                    }
                }
                if self.applier.holds_committed_image() {
                    assert_image_is_a_committed_epoch(&self.applier, &self.history);
                } else {
                    // An image that is no committed epoch's claims none.
                    assert_eq!(self.applier.committed_epoch(), 0);
                    self.torn_seen = true;
                }
            }
            self.link.out.consume(k);
            n -= k;
        }
        let mut input = &replies[..];
        while let Some(f) = self.tx_dec.decode(&mut input).unwrap() {
            match self.active.on_frame(&mut self.link, f).unwrap() {
                ActiveEvent::Acked(_) | ActiveEvent::Resync(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// Streams, drains and cuts with the guest idle until the standby holds
    /// the last cut (true) or `rounds` pass.
    fn settle(&mut self, rounds: usize, drain: usize) -> bool {
        for _ in 0..rounds {
            if self.link.wants_stream() {
                self.link.stream(&self.guest, |_| false).unwrap();
            }
            self.drain(drain);
            self.cut();
            self.drain(usize::MAX);
            assert!(self.link.broken().is_none());
            if self.applier.committed_epoch() == self.active.tracker().last_cut() && self.link.out.is_empty() {
                return true;
            }
        }
        false
    }
}

/// The standby holds a committed epoch of the whole guest; then the guest
/// rewrites all of it with incompressible bytes, faster than the link: the
/// catch-up that follows owes every page, four times what the standby's
/// heap could stage. It must still converge, within its heap.
#[test]
fn an_epoch_larger_than_the_standbys_heap_converges_within_it() {
    let mut s = Sim::new();
    for p in 0..PAGES {
        s.write(p);
    }
    s.cut();
    s.drain(usize::MAX);
    assert_eq!(s.applier.committed_epoch(), 1);
    assert!(s.applier.holds_committed_image());
    // As after a switch: the device that ran the guest keeps its image and
    // hashes in a new applier (no page buffers kept from earlier epochs).
    let applier = std::mem::replace(&mut s.applier, Applier::with_hashes(VecMemory::zeroed(0), 0, PageHashes::zeroed(0)));
    let (image, hashes, epoch) = applier.into_parts();
    s.applier = Applier::with_hashes(image, epoch, hashes);
    // Staging may use a quarter of the guest's size; the rest of the heap
    // is the receive path's (frames, decompression).
    s.applier.set_staging_budget(PAGES / 4 * PAGE_SIZE);

    // The standby's heap from now on: what it holds now, plus room for a
    // quarter of the guest's pages and a batch's decompression.
    let room = PAGES / 4 * PAGE_SIZE + (3 << 19);
    let base = USED.load(Ordering::Relaxed);
    LIMIT.store(base + room, Ordering::Relaxed);
    s.link.set_budget(worst_case_bytes(16) + EPOCH_FRAMES);
    for p in 0..PAGES {
        s.write(p);
    }
    s.cut();
    assert!(s.link.catchup().is_some(), "the rewrite did not fit the link: a catch-up owes every page");
    let converged = s.settle(2_000, 64 << 10);
    println!(
        "standby heap: limit {room} bytes over its base, peak {} bytes over it, failed allocations {}; epochs dropped {}; torn image seen {}; committed {} of {}",
        PEAK.load(Ordering::Relaxed).saturating_sub(base),
        FAILED.load(Ordering::Relaxed),
        s.resyncs,
        s.torn_seen,
        s.applier.committed_epoch(),
        s.active.tracker().last_cut()
    );
    assert!(converged, "the standby never committed the last cut");
    assert!(s.torn_seen, "the catch-up fitted the staging budget: this test no longer tests what it says");
    assert_eq!(FAILED.load(Ordering::Relaxed), 0, "the standby asked its heap for more than it has");
    assert_eq!(content_digest(s.applier.image()), content_digest(&s.guest));
    assert!(s.applier.holds_committed_image());
}
