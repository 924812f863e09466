//! Host tests only: an architecture for the node without a CPU. Its guest
//! is a program of writes into guest RAM that obeys the fake stage 2 (a
//! write to a read-only page exits as a write fault and is retried), its
//! clock is simulated and shared by every node of a test, its console is a
//! queue the test types into, and its vCPU state is the program's position.
//! Nodes talk over `net::test_link`'s in-memory cable with real smoltcp.
//!
//! A node that spins (a hand-over waiting for the target's commit)
//! advances the clock and lets the other nodes of the `World` take a step,
//! as the other devices would run meanwhile; a standby's sleep only
//! advances the clock.
extern crate std;

use alloc::collections::VecDeque;
use alloc::rc::{Rc, Weak};
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};
use core::net::Ipv4Addr;

use super::{Machine, Node, Parts, Stop};
use crate::arch::seam::{Arch, Completion, GuestPc, HostIrqs, Stage2Table, VmExit};
use crate::config::GuestConfig;
use crate::net::test_link::Link;
use crate::net::Stack;
use crate::vplatform::arm::ArmPlatform;

pub const RAM_BASE: u64 = 0x4000_0000;
/// Pages the program writes over (a small working set, so pages are
/// written again and again, in and across epochs).
pub const WORKING_SET: u64 = 48;
/// How much simulated time one guest run takes.
const RUN_NS: u64 = 50_000;
/// Writes per run, at most.
const WRITES_PER_RUN: u64 = 16;
/// PSCI SYSTEM_OFF, the program's last call.
const SYSTEM_OFF: u64 = 0x8400_0008;

/// The program's write number `i`: where and what.
pub fn write_of(i: u64) -> (u64, usize, u64) {
    let page = (i * 7) % WORKING_SET;
    let offset = ((i * 13) % 512) as usize * 8;
    (page, offset, i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
}

/// Guest RAM after the program's first `n` writes, from all zero.
pub fn expected_ram(pages: u64, n: u64) -> Vec<u8> {
    let mut ram = alloc::vec![0u8; (pages * 4096) as usize];
    for i in 0..n {
        let (page, off, v) = write_of(i);
        let at = page as usize * 4096 + off;
        ram[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }
    ram
}

pub struct FakeStage2 {
    writable: Rc<RefCell<Vec<bool>>>,
}

impl Stage2Table for FakeStage2 {
    fn protect_all(&mut self) {
        self.writable.borrow_mut().fill(false);
    }

    fn write_protect(&mut self, pages: &mut dyn Iterator<Item = u64>) {
        let mut w = self.writable.borrow_mut();
        for p in pages {
            w[p as usize] = false;
        }
    }

    fn make_writable(&mut self, ipa: u64) -> bool {
        let Some(page) = ipa.checked_sub(RAM_BASE).map(|o| o / 4096) else { return false };
        let mut w = self.writable.borrow_mut();
        match w.get_mut(page as usize) {
            Some(slot) => {
                *slot = true;
                true
            }
            None => false,
        }
    }

    fn flush(&mut self) {}
}

#[derive(Debug, PartialEq, Eq)]
pub struct BadState;

pub struct FakeArch {
    world: Weak<World>,
    me: usize,
    clock: Rc<Cell<u64>>,
    backing: *mut u8,
    writable: Rc<RefCell<Vec<bool>>>,
    /// The program's position: writes done.
    pub pc: u64,
    /// The program powers off after this many writes.
    pub end: u64,
    tick_at: Option<u64>,
    pub console: Rc<RefCell<VecDeque<u8>>>,
    pending_hypercall: bool,
    /// Whether a guest runs on this CPU (set by `enable_guest`/`restore`).
    pub running: bool,
    /// `restore` fails though `check_state` passes (a CPU that cannot load
    /// a state it accepts: the take-over fails after the request).
    pub refuse_restore: bool,
    /// How the last device access a test made was completed.
    pub last_mmio: Option<Completion>,
}

impl Arch for FakeArch {
    type Platform = ArmPlatform;
    type Stage2 = FakeStage2;
    type StateError = BadState;
    const RAM_BASE: u64 = RAM_BASE;

    fn run(&mut self, _platform: &mut ArmPlatform) -> VmExit {
        assert!(self.running, "a guest runs on a CPU that was not made ready for it");
        self.advance(RUN_NS);
        if self.tick_at.is_some_and(|t| self.clock.get() >= t) {
            self.tick_at = None;
            return VmExit::HostInterrupt(HostIrqs { count: 1, tick: true, console: false });
        }
        if !self.console.borrow().is_empty() {
            return VmExit::HostInterrupt(HostIrqs { count: 1, tick: false, console: true });
        }
        if self.pc >= self.end {
            self.pending_hypercall = true;
            return VmExit::Hypercall { args: [SYSTEM_OFF, 0, 0, 0], smc: false };
        }
        for _ in 0..WRITES_PER_RUN.min(self.end - self.pc) {
            let (page, off, v) = write_of(self.pc);
            if !self.writable.borrow()[page as usize] {
                return VmExit::WriteFault { ipa: RAM_BASE + page * 4096 + off as u64 };
            }
            // SAFETY: `backing` is the node's guest RAM (1 MiB, leaked);
            // the offset is inside page `page` < `WORKING_SET`.
            unsafe { (self.backing.add(page as usize * 4096 + off) as *mut u64).write_unaligned(v.to_le()) };
            self.pc += 1;
        }
        VmExit::Halt
    }

    fn complete(&mut self, how: Completion) {
        match how {
            Completion::Hypercall(_) if self.pending_hypercall => self.pending_hypercall = false,
            // Device accesses a test makes (`node/disk_tests.rs`).
            Completion::MmioRead(_) | Completion::MmioWritten | Completion::Abort => self.last_mmio = Some(how),
            other => panic!("unexpected completion {other:?}"),
        }
    }

    fn inject(&mut self, _platform: &mut ArmPlatform) {}

    fn capture(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"FAKE");
        out.extend_from_slice(&self.pc.to_le_bytes());
        out.extend_from_slice(&self.end.to_le_bytes());
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<(), BadState> {
        if bytes.len() != 20 || &bytes[..4] != b"FAKE" || self.refuse_restore {
            return Err(BadState);
        }
        self.pc = u64::from_le_bytes(bytes[4..12].try_into().map_err(|_| BadState)?);
        self.end = u64::from_le_bytes(bytes[12..20].try_into().map_err(|_| BadState)?);
        self.running = true;
        Ok(())
    }

    fn check_state(&self, bytes: &[u8]) -> Result<(), BadState> {
        if bytes.len() == 20 && &bytes[..4] == b"FAKE" {
            Ok(())
        } else {
            Err(BadState)
        }
    }

    fn enable_guest(&mut self) {
        self.running = true;
    }

    fn quiesce(&mut self) {
        self.running = false;
        self.tick_at = None;
    }

    fn guest_pc(&self) -> GuestPc {
        GuestPc { pc: self.pc, level: 1 }
    }

    fn now_ns(&self) -> u64 {
        self.clock.get()
    }

    fn arm_tick(&mut self, ns: u64) {
        self.tick_at = Some(self.clock.get() + ns);
    }

    fn stop_tick(&mut self) {
        self.tick_at = None;
    }

    fn spin(&mut self, ns: u64) {
        self.advance(ns);
        self.others_step();
    }

    /// A standby's sleep only lets time pass: the world's loop steps the
    /// others. (Stepping them from here could nest an active node's
    /// blocking wait inside this node's step, where it could never see
    /// this node answer.)
    fn sleep(&mut self, ns: u64) {
        self.advance(ns);
    }

    fn console_read(&mut self) -> Option<u8> {
        self.console.borrow_mut().pop_front()
    }

    fn console_write(&mut self, _byte: u8) {}
}

impl FakeArch {
    fn advance(&self, ns: u64) {
        self.clock.set(self.clock.get() + ns);
    }

    /// The other devices run meanwhile: each that is not busy (on the
    /// stack already) or frozen takes a step.
    fn others_step(&self) {
        let Some(world) = self.world.upgrade() else { return };
        world.watch();
        let n = world.nodes.borrow().len();
        for j in (0..n).filter(|&j| j != self.me) {
            world.step_node(j);
        }
    }
}

pub type FakeNode = Node<FakeArch, Link>;

/// A test's look at the world in the middle of a step (`World::watcher`).
pub type Watcher = alloc::boxed::Box<dyn FnMut(&World)>;

/// The devices of one test, on one simulated clock.
pub struct World {
    pub clock: Rc<Cell<u64>>,
    pub nodes: RefCell<Vec<Rc<RefCell<FakeNode>>>>,
    /// Nodes that do not run (a powered-off device, a frozen one).
    pub frozen: RefCell<Vec<bool>>,
    /// How each node's loop ended, if it did.
    pub stopped: RefCell<Vec<Option<Stop>>>,
    pub consoles: RefCell<Vec<Rc<RefCell<VecDeque<u8>>>>>,
    pub stage2s: RefCell<Vec<Rc<RefCell<Vec<bool>>>>>,
    /// Called whenever a node spins (a blocking wait, such as a hand-over
    /// with the guest paused) and at each round of `run_until`: a test acts
    /// there on what it sees, in the middle of another node's step.
    pub watcher: RefCell<Option<Watcher>>,
}

pub const SECRET: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

pub fn ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(169, 254, 0, 1 + i as u8)
}

/// Node `me`'s config: `peer` is the other device, `verify` adds the
/// local standby check.
pub fn config(me: usize, standby: bool, peer: Option<usize>, verify: bool) -> GuestConfig {
    config_with(me, standby, peer.as_slice(), verify)
}

/// Node `me`'s config with `peers`.
pub fn config_with(me: usize, standby: bool, peers: &[usize], verify: bool) -> GuestConfig {
    let mut text = alloc::format!("mem_mib=64\npolicy=interval:20ms\nsecret={SECRET}\nlisten=7000\n");
    if standby {
        text.push_str("role=standby\n");
    }
    if !peers.is_empty() {
        text.push_str(&alloc::format!("net_ip={}/16\n", ip(me)));
    }
    for p in peers {
        text.push_str(&alloc::format!("peer={}:7000\n", ip(*p)));
    }
    if verify {
        text.push_str("verify=on\n");
    }
    let mut c = GuestConfig::parse(text.as_bytes()).expect("test config parses");
    // Small guests keep the tests fast; the config's minimum is for real ones.
    c.mem_bytes = 1 << 20;
    c
}

fn leak_zeroed(bytes: u64) -> *mut u8 {
    std::vec![0u8; bytes as usize].leak().as_mut_ptr()
}

impl World {
    pub fn new() -> Rc<World> {
        init_log();
        Rc::new(World {
            clock: Rc::new(Cell::new(1_000_000_000)),
            nodes: RefCell::new(Vec::new()),
            frozen: RefCell::new(Vec::new()),
            stopped: RefCell::new(Vec::new()),
            consoles: RefCell::new(Vec::new()),
            stage2s: RefCell::new(Vec::new()),
            watcher: RefCell::new(None),
        })
    }

    /// A node's parts: its fake CPU, stage 2 and guest RAM, on `link`.
    pub fn parts(self: &Rc<World>, config: GuestConfig, link: Option<Link>, end: u64) -> Parts<FakeArch, Link> {
        let me = self.nodes.borrow().len();
        let pages = config.mem_bytes / 4096;
        let backing = leak_zeroed(config.mem_bytes);
        let writable = Rc::new(RefCell::new(alloc::vec![true; pages as usize]));
        let console = Rc::new(RefCell::new(VecDeque::new()));
        self.consoles.borrow_mut().push(console.clone());
        self.stage2s.borrow_mut().push(writable.clone());
        let arch = FakeArch {
            world: Rc::downgrade(self),
            me,
            clock: self.clock.clone(),
            backing,
            writable: writable.clone(),
            pc: 0,
            end,
            tick_at: None,
            console,
            pending_hypercall: false,
            running: false,
            refuse_restore: false,
            last_mmio: None,
        };
        let now_ms = self.clock.get() / 1_000_000;
        // The config's address: a device that reboots keeps its own.
        let addr = config.net.ip.unwrap_or(ip(me));
        let net = link.map(|l| Stack::new(l, addr, 16, 1 + me as u64, now_ms).expect("stack"));
        // Deterministic per node: a test run repeats exactly.
        let rng = crate::rng::Randomness::new(alloc::vec![alloc::boxed::Box::new(crate::rng::FakeEntropy(100 + me as u64))]);
        Parts { arch, s2: FakeStage2 { writable }, net, rng, machine: Machine { config, backing, spare_heap: 64 << 20, disk: None }, started_ns: None }
    }

    /// Calls `f` whenever a node spins and at each round of `run_until`.
    pub fn set_watcher(&self, f: impl FnMut(&World) + 'static) {
        *self.watcher.borrow_mut() = Some(alloc::boxed::Box::new(f));
    }

    /// Runs the watcher, if any (not from inside itself).
    pub fn watch(&self) {
        let Ok(mut w) = self.watcher.try_borrow_mut() else { return };
        if let Some(f) = w.as_mut() {
            f(self);
        }
    }

    pub fn add(&self, node: FakeNode) -> usize {
        self.nodes.borrow_mut().push(Rc::new(RefCell::new(node)));
        self.frozen.borrow_mut().push(false);
        self.stopped.borrow_mut().push(None);
        self.nodes.borrow().len() - 1
    }

    /// One step of node `j`, unless it is busy, frozen or stopped.
    pub fn step_node(&self, j: usize) {
        if self.frozen.borrow()[j] || self.stopped.borrow()[j].is_some() {
            return;
        }
        let node = self.nodes.borrow()[j].clone();
        let Ok(mut n) = node.try_borrow_mut() else { return };
        if let Some(stop) = n.step() {
            self.stopped.borrow_mut()[j] = Some(stop);
        }
    }

    /// Steps every node in turn until `done` holds; panics after `limit`
    /// rounds.
    pub fn run_until(&self, limit: u32, what: &str, mut done: impl FnMut(&World) -> bool) {
        for _ in 0..limit {
            if done(self) {
                return;
            }
            self.watch();
            for j in 0..self.nodes.borrow().len() {
                self.step_node(j);
            }
        }
        panic!("{what}: not reached in {limit} rounds (at {} ms)", self.clock.get() / 1_000_000);
    }

    pub fn node(&self, j: usize) -> Rc<RefCell<FakeNode>> {
        self.nodes.borrow()[j].clone()
    }

    pub fn type_on(&self, j: usize, text: &[u8]) {
        self.consoles.borrow()[j].borrow_mut().extend(text.iter().copied());
    }

    pub fn is_active(&self, j: usize) -> bool {
        self.node(j).borrow().vm().is_some()
    }

    pub fn committed(&self, j: usize) -> Option<u64> {
        self.node(j).borrow().standby().map(|s| s.node.applier.committed_epoch())
    }

    pub fn pc(&self, j: usize) -> u64 {
        self.node(j).borrow().parts.arch.pc
    }

    /// Node `j`'s standby: committed epoch, digest, lineage and term.
    pub fn held(&self, j: usize) -> Option<(u64, sync_core::wire::Digest, sync_core::fence::LineageId, sync_core::fence::Term)> {
        let n = self.node(j);
        let n = n.borrow();
        let a = &n.standby()?.node.applier;
        let (l, t) = a.lineage();
        Some((a.committed_epoch(), a.digest(), l, t))
    }

    /// Node `j`'s running guest: last cut, digest there, lineage and term.
    pub fn runs(&self, j: usize) -> Option<(u64, sync_core::wire::Digest, sync_core::fence::LineageId, sync_core::fence::Term)> {
        let n = self.node(j);
        let n = n.borrow();
        let e = n.vm()?.sync.as_ref()?;
        Some((e.last_cut(), e.digest(), e.standing.lineage, e.standing.term))
    }
}

std::thread_local! {
    /// This test's log lines (each test runs on its own thread).
    static LINES: RefCell<Vec<std::string::String>> = const { RefCell::new(Vec::new()) };
}

/// How many of this test's log lines contain `text`.
pub fn logged(text: &str) -> usize {
    LINES.with(|l| l.borrow().iter().filter(|line| line.contains(text)).count())
}

/// The fresh guest of an active node: zeroed RAM, tracking on.
pub fn active_vm(parts: &mut Parts<FakeArch, Link>, verify: bool) -> super::vm::Vm<ArmPlatform> {
    let size = parts.machine.config.mem_bytes;
    // SAFETY: the leaked backing is this node's guest RAM alone.
    let mut mem = unsafe { crate::memory::guest::GuestMemory::new(RAM_BASE, size, parts.machine.backing) };
    // The backing is zeroed and nothing is loaded: tracking from here.
    mem.start_tracking().expect("a dirty set for the guest");
    let verify_image = verify.then(|| {
        // SAFETY: a leaked zeroed buffer used by the verify image alone.
        unsafe { crate::sync::raw_pages::RawPages::new(leak_zeroed(size), size / 4096) }
    });
    let spec = parts.machine.config.policy.expect("test configs have a policy");
    let shadows = parts.machine.config.shadow.budget(size);
    let now = parts.arch.now_ns();
    let mut engine = super::epochs::start(spec, shadows, verify_image, &mut mem, &mut parts.s2, now).expect("tracking starts");
    super::add_peers(parts, &mut engine, super::Reign::FirstBoot);
    let disk = parts.machine.guest_disk();
    let mut vm = super::vm::Vm::new(mem, <ArmPlatform as crate::vplatform::Platform>::fresh(disk));
    vm.sync = Some(engine);
    vm.track_disk(disk);
    vm.sync_start_ns = now;
    vm
}

/// The node's log lines on the test's output (shown when a test fails).
struct TestLog;

impl log::Log for TestLog {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, r: &log::Record) {
        let line = std::format!("{}", r.args());
        std::println!("vmsync: {line}");
        LINES.with(|l| l.borrow_mut().push(line));
    }
    fn flush(&self) {}
}

pub fn init_log() {
    static LOG: TestLog = TestLog;
    if log::set_logger(&LOG).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
}
