//! N symmetric devices for switching runs (docs/protocol.md, "Switch"): all boot
//! at once through one link emulator, each with its console's input open so
//! the host can type hypervisor commands (`\x1dswitch\n`, `\x1dfailover\n`)
//! into it, and any of them may end up running the guest.
//!
//! A script drives a run from its own thread through a [`DevicesControl`]
//! while [`Devices::finish`] waits for the guest to power off:
//!
//! ```no_run
//! # use qemu_tests::devices::*; use qemu_tests::link::Profile; use std::time::Duration;
//! # let imgs: Vec<std::path::PathBuf> = vec![];
//! let refs: Vec<&std::path::Path> = imgs.iter().map(|p| p.as_path()).collect();
//! let run = run_scripted(&refs, 768, Profile::wifi(), Duration::from_secs(420), false, |c| {
//!     if !c.at(Duration::from_secs(20)) { return; }
//!     assert_eq!(c.switch_and_wait(1, Duration::from_secs(30)), SwitchOutcome::In);
//!     c.sleep(Duration::from_secs(10));
//!     assert_eq!(c.switch_and_wait(0, Duration::from_secs(30)), SwitchOutcome::In);
//! }).unwrap();
//! let t = run.timeline();
//! assert!(t.switches.iter().all(|s| s.digest_match));
//! let g = run.guest(Some("video"));
//! assert!(!g.rebooted && g.counter_continuous && g.time_monotonic);
//! ```
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::guest_check::{self, GuestVerdict};
use crate::link::{device_mac, Link, LinkConfig, LinkHandle, Profile, Snapshot};
use crate::multi::{device_ip, SYNC_PORT};
use crate::switching::{self, Timeline, FAILOVER, POWERED_OFF, SWITCH_FAILED, SWITCH_IN};

/// Starts a hypervisor console command (Ctrl-]).
pub const ESCAPE: u8 = 0x1d;
pub const SWITCH_COMMAND: &[u8] = b"\x1dswitch\n";
pub const FAILOVER_COMMAND: &[u8] = b"\x1dfailover\n";

/// How often waits look at the consoles.
const POLL: Duration = Duration::from_millis(50);
/// After the guest powered off, how long the others get to print their
/// last commits before they are stopped.
const SETTLE: Duration = Duration::from_secs(1);

/// The config lines of device `i` of `devices` (the guest starts on
/// `active`): role, address, listening port, every other device as a peer,
/// the pairing secret. The policy (and cmdline, mem_mib) come from the
/// guest spec, the same on every device.
pub fn device_config(i: usize, devices: usize, active: usize, secret: &str) -> String {
    let role = if i == active { "active" } else { "standby" };
    let mut c = format!("role={role}\nnet_ip={}\nlisten={SYNC_PORT}\n", device_ip(i));
    for j in (0..devices).filter(|&j| j != i) {
        c += &format!("peer={}:{SYNC_PORT}\n", device_ip(j));
    }
    c + &format!("secret={secret}\n")
}

/// Something the host did to a device, for the record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostEvent {
    /// Since the devices started.
    pub at: Duration,
    pub device: usize,
    pub what: String,
}

/// How a switch the host asked for turned out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SwitchOutcome {
    /// The target logged `vmsync: switch: in` (or `switch: failover`).
    In,
    /// Some device logged `vmsync: warning: switch: failed: <reason>`.
    Failed(String),
    /// Neither within the timeout (or the run ended first).
    TimedOut,
}

struct Dev {
    child: Child,
    stdin: Option<ChildStdin>,
    readers: Vec<JoinHandle<()>>,
    /// Set when QEMU exited by itself.
    status: Option<ExitStatus>,
    killed_at: Option<Duration>,
}

impl Dev {
    fn poll(&mut self) {
        if self.status.is_none() && self.killed_at.is_none() {
            if let Ok(Some(s)) = self.child.try_wait() {
                self.status = Some(s);
            }
        }
    }

    fn running(&mut self) -> bool {
        self.poll();
        self.status.is_none() && self.killed_at.is_none()
    }
}

struct Inner {
    devs: Vec<Mutex<Dev>>,
    outputs: Vec<Arc<Mutex<Vec<u8>>>>,
    start: Instant,
    /// The run is over: waits give up.
    done: AtomicBool,
    /// The script failed: `finish` stops at once.
    abort: AtomicBool,
    events: Mutex<Vec<HostEvent>>,
    link: LinkHandle,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a script can do to the running devices; cheap to clone, usable from
/// any thread.
#[derive(Clone)]
pub struct DevicesControl {
    inner: Arc<Inner>,
}

impl DevicesControl {
    pub fn devices(&self) -> usize {
        self.inner.devs.len()
    }

    /// Since the devices started.
    pub fn elapsed(&self) -> Duration {
        self.inner.start.elapsed()
    }

    /// Whether the run is over (the guest powered off, the deadline passed).
    pub fn done(&self) -> bool {
        self.inner.done.load(Ordering::Relaxed) || self.inner.abort.load(Ordering::Relaxed)
    }

    /// Ends the run at once: [`Devices::finish`] stops every device (a
    /// script's way out when the device it watches died).
    pub fn stop(&self) {
        self.inner.abort.store(true, Ordering::Relaxed);
    }

    /// Sleeps until `t` after the start; false if the run ended first.
    pub fn at(&self, t: Duration) -> bool {
        while self.elapsed() < t {
            if self.done() {
                return false;
            }
            std::thread::sleep(POLL.min(t - self.elapsed()));
        }
        !self.done()
    }

    /// Sleeps for `d`; false if the run ended first.
    pub fn sleep(&self, d: Duration) -> bool {
        self.at(self.elapsed() + d)
    }

    fn event(&self, device: usize, what: String) {
        lock(&self.inner.events).push(HostEvent { at: self.elapsed(), device, what });
    }

    /// Writes `bytes` to device `i`'s console input.
    pub fn console(&self, i: usize, bytes: &[u8]) -> io::Result<()> {
        let dev = self.inner.devs.get(i).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("no device {i}")))?;
        let mut d = lock(dev);
        if !d.running() {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, format!("device {i} is not running")));
        }
        let stdin = d.stdin.as_mut().ok_or_else(|| io::Error::new(io::ErrorKind::BrokenPipe, format!("device {i} has no console input")))?;
        stdin.write_all(bytes)?;
        stdin.flush()?;
        drop(d);
        self.event(i, format!("console {:?}", String::from_utf8_lossy(bytes)));
        Ok(())
    }

    /// Asks standby `i` to take the guest (`\x1dswitch\n`).
    pub fn switch_to(&self, i: usize) -> io::Result<()> {
        self.console(i, SWITCH_COMMAND)
    }

    /// Tells standby `i` to take over from its last committed epoch
    /// (`\x1dfailover\n`).
    pub fn failover(&self, i: usize) -> io::Result<()> {
        self.console(i, FAILOVER_COMMAND)
    }

    /// Kills device `i`'s QEMU (what it printed so far is kept).
    pub fn kill(&self, i: usize) -> io::Result<()> {
        let dev = self.inner.devs.get(i).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("no device {i}")))?;
        let mut d = lock(dev);
        if d.running() {
            d.child.kill()?;
            let _ = d.child.wait();
            d.killed_at = Some(self.elapsed());
            drop(d);
            self.event(i, "killed".into());
        }
        Ok(())
    }

    /// Whether device `i`'s QEMU is still running.
    pub fn running(&self, i: usize) -> bool {
        self.inner.devs.get(i).is_some_and(|d| lock(d).running())
    }

    /// What device `i` printed so far (`\r` removed).
    pub fn output(&self, i: usize) -> String {
        let bytes = lock(&self.inner.outputs[i]).clone();
        String::from_utf8_lossy(&bytes).replace('\r', "")
    }

    pub fn outputs(&self) -> Vec<String> {
        (0..self.devices()).map(|i| self.output(i)).collect()
    }

    /// Lines of device `i`'s console containing `pat`, so far.
    pub fn count(&self, i: usize, pat: &str) -> usize {
        self.output(i).lines().filter(|l| l.contains(pat)).count()
    }

    /// Waits until `pred` holds for device `i`'s output; false at the
    /// timeout, when the run ended, or when the device stopped without it.
    pub fn wait_for(&self, i: usize, timeout: Duration, pred: impl Fn(&str) -> bool) -> bool {
        let until = Instant::now() + timeout;
        loop {
            if pred(&self.output(i)) {
                return true;
            }
            if Instant::now() >= until || self.done() || !self.running(i) {
                // One last look: the device may have printed it as it ended.
                std::thread::sleep(POLL);
                return pred(&self.output(i));
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits until device `i` printed a line containing `pat`.
    pub fn wait_line(&self, i: usize, pat: &str, timeout: Duration) -> bool {
        self.wait_for(i, timeout, |o| o.contains(pat))
    }

    /// Which device runs the guest now, read from the consoles so far (the
    /// guest started on device 0).
    pub fn holder(&self) -> Option<usize> {
        switching::timeline(&self.outputs(), 0).last_holder()
    }

    /// Sends `command` to device `i`, then waits for a new `marker` line on
    /// it or a new `switch: failed` line on any device.
    fn command_and_wait(&self, i: usize, command: &[u8], marker: &str, timeout: Duration) -> SwitchOutcome {
        let before = self.count(i, marker);
        let failed_before: Vec<usize> = (0..self.devices()).map(|d| self.count(d, SWITCH_FAILED)).collect();
        if self.console(i, command).is_err() {
            return SwitchOutcome::Failed(format!("device {i} is not running"));
        }
        let until = Instant::now() + timeout;
        loop {
            if self.count(i, marker) > before {
                return SwitchOutcome::In;
            }
            for (d, &n) in failed_before.iter().enumerate() {
                let out = self.output(d);
                if let Some(l) = out.lines().filter(|l| l.contains(SWITCH_FAILED)).nth(n) {
                    return SwitchOutcome::Failed(format!("device-{d}: {}", l[l.find(SWITCH_FAILED).unwrap_or(0) + SWITCH_FAILED.len()..].trim()));
                }
            }
            if Instant::now() >= until || self.done() {
                return SwitchOutcome::TimedOut;
            }
            std::thread::sleep(POLL);
        }
    }

    /// [`switch_to`](Self::switch_to) `i`, then waits for its `vmsync:
    /// switch: in` line or a `switch: failed` line anywhere.
    pub fn switch_and_wait(&self, i: usize, timeout: Duration) -> SwitchOutcome {
        self.command_and_wait(i, SWITCH_COMMAND, SWITCH_IN, timeout)
    }

    /// [`failover`](Self::failover) to `i`, then waits for its `vmsync:
    /// switch: failover` line or a `switch: failed` line anywhere.
    pub fn failover_and_wait(&self, i: usize, timeout: Duration) -> SwitchOutcome {
        self.command_and_wait(i, FAILOVER_COMMAND, FAILOVER, timeout)
    }

    /// The link emulator (cut, restore, counters).
    pub fn link(&self) -> LinkHandle {
        self.inner.link.clone()
    }
}

/// The devices of a run; [`finish`](Devices::finish) ends it. Derefs to
/// its [`DevicesControl`].
pub struct Devices {
    control: DevicesControl,
    link: Link,
    logs: PathBuf,
}

impl std::ops::Deref for Devices {
    type Target = DevicesControl;
    fn deref(&self) -> &DevicesControl {
        &self.control
    }
}

/// Copies a pipe into `out`, into the device's log file as it comes (so
/// it can be followed while the run goes on) and, with `echo`, to our
/// stdout line by line as `[dK] ...`, until it closes.
fn reader(mut pipe: Box<dyn Read + Send>, out: Arc<Mutex<Vec<u8>>>, log: Option<Arc<Mutex<File>>>, echo: Option<usize>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut line = Vec::new();
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            lock(&out).extend_from_slice(&buf[..n]);
            if let Some(f) = &log {
                // Best effort, like the copy written at the end.
                let clean: Vec<u8> = buf[..n].iter().copied().filter(|&b| b != b'\r').collect();
                let _ = lock(f).write_all(&clean);
            }
            if let Some(k) = echo {
                line.extend_from_slice(&buf[..n]);
                while let Some(p) = line.iter().position(|&b| b == b'\n') {
                    let l: Vec<u8> = line.drain(..=p).collect();
                    let mut o = io::stdout().lock();
                    let _ = write!(o, "[d{k}] {}", String::from_utf8_lossy(&l).replace('\r', ""));
                    let _ = o.flush();
                }
            }
        }
        if let (Some(k), false) = (echo, line.is_empty()) {
            println!("[d{k}] {}", String::from_utf8_lossy(&line).replace('\r', ""));
        }
    })
}

/// Device `i`'s console log for the prefix `logs` (`<logs>-device-<i>.log`).
fn log_path(logs: &Path, i: usize) -> PathBuf {
    logs.with_file_name(format!("{}-device-{i}.log", file_name(logs)))
}

impl Devices {
    /// Starts the link emulator and one QEMU per image (device `i` boots
    /// `imgs[i]`), all at once. `echo` copies every console to our stdout,
    /// each line prefixed `[dK]`. Consoles go to files beside the first
    /// image as they come, `<its stem>-device-K.log` ([`log_paths`](Self::log_paths)).
    pub fn start(imgs: &[&Path], host_mem: u64, profile: Profile, echo: bool) -> io::Result<Devices> {
        let first = imgs.first().copied().unwrap_or(Path::new("devices.img"));
        Self::start_with(imgs.len(), profile, first, echo, |i, link| {
            let mut cmd = crate::qemu_command(imgs[i], host_mem);
            cmd.args(link.qemu_net_args(i, device_mac(i)));
            cmd
        })
    }

    /// [`start`](Self::start) with any program as device `i`
    /// (`command(i, &link)`); consoles are saved beside `logs_beside`.
    pub fn start_with(n: usize, profile: Profile, logs_beside: &Path, echo: bool, command: impl Fn(usize, &Link) -> Command) -> io::Result<Devices> {
        let link = Link::start(LinkConfig::new(n, profile))?;
        let stem = logs_beside.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "devices".into());
        let logs = logs_beside.with_file_name(stem);
        let start = Instant::now();
        let mut devs = Vec::new();
        let mut outputs = Vec::new();
        for i in 0..n {
            let mut cmd = command(i, &link);
            cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
            let mut child = cmd.spawn()?;
            let out = Arc::new(Mutex::new(Vec::new()));
            let log = File::create(log_path(&logs, i)).ok().map(|f| Arc::new(Mutex::new(f)));
            let pipes = [child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>), child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>)];
            let readers = pipes.into_iter().flatten().map(|p| reader(p, out.clone(), log.clone(), echo.then_some(i))).collect();
            let stdin = child.stdin.take();
            devs.push(Mutex::new(Dev { child, stdin, readers, status: None, killed_at: None }));
            outputs.push(out);
        }
        let inner =
            Inner { devs, outputs, start, done: AtomicBool::new(false), abort: AtomicBool::new(false), events: Mutex::new(Vec::new()), link: link.handle() };
        Ok(Devices { control: DevicesControl { inner: Arc::new(inner) }, link, logs })
    }

    /// Where each device's console goes (written as it comes, and whole
    /// again at the end).
    pub fn log_paths(&self) -> Vec<PathBuf> {
        (0..self.devices()).map(|i| log_path(&self.logs, i)).collect()
    }

    /// A handle for a script thread.
    pub fn control(&self) -> DevicesControl {
        self.control.clone()
    }

    /// Waits until a device prints `vmsync: guest powered off` and its QEMU
    /// exits, every QEMU has ended, a script aborted, or `deadline` (from
    /// the start) passes; then gives the others [`SETTLE`] to print their
    /// last commits (not after a timeout), stops them all and returns what
    /// happened.
    pub fn finish(self, deadline: Duration) -> io::Result<DevicesRun> {
        let inner = &self.control.inner;
        let n = inner.devs.len();
        let mut timed_out = false;
        let powered_off = loop {
            let mut all_ended = true;
            let mut off = None;
            for (i, d) in inner.devs.iter().enumerate() {
                let mut d = lock(d);
                if d.running() {
                    all_ended = false;
                } else if d.status.is_some() && off.is_none() && self.control.output(i).contains(POWERED_OFF) {
                    off = Some(i);
                }
            }
            if off.is_some() || all_ended || inner.abort.load(Ordering::Relaxed) {
                break off;
            }
            if inner.start.elapsed() >= deadline {
                timed_out = true;
                break None;
            }
            std::thread::sleep(POLL);
        };
        if powered_off.is_some() {
            std::thread::sleep(SETTLE);
        }
        inner.done.store(true, Ordering::Relaxed);
        let snapshot = self.link.snapshot();
        let mut statuses = Vec::new();
        let mut killed = Vec::new();
        for d in &inner.devs {
            let mut d = lock(d);
            d.poll();
            if d.status.is_none() && d.killed_at.is_none() {
                crate::kill(&mut d.child);
            }
            drop(d.stdin.take());
            for r in d.readers.drain(..) {
                let _ = r.join();
            }
            statuses.push(d.status);
            killed.push(d.killed_at);
        }
        let outputs: Vec<String> = (0..n).map(|i| self.control.output(i)).collect();
        let events = lock(&inner.events).clone();
        let elapsed = inner.start.elapsed();
        let logs = self.logs.clone();
        drop(self.link.stop());
        for (k, o) in outputs.iter().enumerate() {
            let _ = std::fs::write(log_path(&logs, k), o);
        }
        let _ = std::fs::write(logs.with_file_name(format!("{}-link-snapshot.txt", file_name(&logs))), format!("{snapshot:#?}"));
        Ok(DevicesRun { outputs, statuses, killed, powered_off, timed_out, snapshot, elapsed, events, first_active: 0, log_prefix: logs })
    }
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Starts the devices, runs `script` on its own thread beside them and
/// [`finish`](Devices::finish)es the run. A panic in the script (a failed
/// assertion) stops the devices at once and is raised again here once their
/// consoles are saved. The script's waits give up when the run ends
/// ([`DevicesControl::at`] returns false then).
pub fn run_scripted<F>(imgs: &[&Path], host_mem: u64, profile: Profile, deadline: Duration, echo: bool, script: F) -> io::Result<DevicesRun>
where
    F: FnOnce(&DevicesControl) + Send,
{
    Devices::start(imgs, host_mem, profile, echo)?.run_script(deadline, script)
}

impl Devices {
    /// [`run_scripted`] for devices already started.
    pub fn run_script<F>(self, deadline: Duration, script: F) -> io::Result<DevicesRun>
    where
        F: FnOnce(&DevicesControl) + Send,
    {
        let c = self.control();
        let (run, script_result) = std::thread::scope(|s| {
            let t = s.spawn(move || {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| script(&c)));
                if r.is_err() {
                    c.inner.abort.store(true, Ordering::Relaxed);
                }
                r
            });
            let run = self.finish(deadline);
            (run, t.join())
        });
        match script_result {
            Ok(Err(panic)) | Err(panic) => std::panic::resume_unwind(panic),
            Ok(Ok(())) => run,
        }
    }
}

/// A finished switching run.
#[derive(Debug)]
pub struct DevicesRun {
    /// Every device's whole console (`\r` removed), by index.
    pub outputs: Vec<String>,
    /// How each QEMU exited by itself; None if the host stopped or killed it.
    pub statuses: Vec<Option<ExitStatus>>,
    /// When the host killed a device ([`DevicesControl::kill`]).
    pub killed: Vec<Option<Duration>>,
    /// The device on which the guest powered off (its QEMU exited).
    pub powered_off: Option<usize>,
    /// The deadline passed first.
    pub timed_out: bool,
    pub snapshot: Snapshot,
    pub elapsed: Duration,
    /// Console commands and kills, in order.
    pub events: Vec<HostEvent>,
    /// Where the guest started.
    pub first_active: usize,
    /// The saved consoles are `<this>-device-K.log`.
    pub log_prefix: PathBuf,
}

impl DevicesRun {
    pub fn devices(&self) -> usize {
        self.outputs.len()
    }

    /// Who ran the guest when, the switches and failures.
    pub fn timeline(&self) -> Timeline {
        switching::timeline(&self.outputs, self.first_active)
    }

    /// The guest's verdict (`workload` names it for the checksum check).
    pub fn guest(&self, workload: Option<&str>) -> GuestVerdict {
        guest_check::verdict(&self.outputs, &self.timeline(), workload)
    }

    /// The guest's console across the devices in the order they ran it,
    /// with the hypervisor lines of whoever was active.
    pub fn guest_console(&self) -> String {
        self.timeline().guest_console(&self.outputs)
    }

    /// The guest powered off and that QEMU exited with status 0.
    pub fn powered_off_ok(&self) -> bool {
        self.powered_off.and_then(|i| self.statuses[i]).is_some_and(|s| s.success())
    }

    /// Bytes the link delivered to device `i`.
    pub fn received(&self, i: usize) -> u64 {
        self.snapshot.dirs.iter().filter(|d| d.to == i).map(|d| d.bytes).sum()
    }

    /// The last 60 lines of device `i`'s console, for failure messages.
    pub fn tail(&self, i: usize) -> String {
        let lines: Vec<&str> = self.outputs[i].lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// Every device's tail, headed by its index: for assertion messages.
    pub fn tails(&self) -> String {
        (0..self.devices()).map(|i| format!("--- device-{i} ---\n{}\n", self.tail(i))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    }

    /// Shell programs stand in for QEMU: device 0 answers what is typed
    /// into it and powers off; device 1 never ends by itself; device 2 is
    /// killed.
    #[test]
    fn a_scripted_run_types_waits_kills_and_finishes() {
        let dir = std::env::temp_dir().join(format!("vmsync-devices-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let logs = dir.join("t.img");
        let devices = Devices::start_with(3, Profile::loopback(), &logs, false, |i, _link| match i {
            0 => sh("echo ready; read x; echo \"got $x\"; sleep 0.2; echo 'vmsync: guest powered off (PSCI SYSTEM_OFF)'"),
            1 => sh("echo standby; exec cat"),
            _ => sh("echo doomed; exec sleep 60"),
        })
        .unwrap();
        let c = devices.control();
        let logs = devices.log_paths();
        assert_eq!(logs[1], dir.join("t-device-1.log"));
        let script = std::thread::spawn(move || {
            assert!(c.wait_line(0, "ready", Duration::from_secs(10)));
            assert!(c.wait_line(2, "doomed", Duration::from_secs(10)));
            // The log files fill while the devices run.
            let until = Instant::now() + Duration::from_secs(5);
            while std::fs::read_to_string(&logs[2]).unwrap_or_default() != "doomed\n" && Instant::now() < until {
                std::thread::sleep(POLL);
            }
            assert_eq!(std::fs::read_to_string(&logs[2]).unwrap(), "doomed\n");
            c.kill(2).unwrap();
            assert!(!c.running(2));
            assert!(c.console(2, b"x").is_err());
            c.switch_to(1).unwrap();
            assert!(c.wait_for(1, Duration::from_secs(10), |o| o.contains("switch")));
            c.console(0, b"hello\n").unwrap();
            // The run ends: the wait gives up.
            assert!(!c.wait_line(1, "never", Duration::from_secs(30)));
            assert!(!c.at(Duration::from_secs(60)));
        });
        let run = devices.finish(Duration::from_secs(30)).unwrap();
        script.join().unwrap();
        assert!(!run.timed_out);
        assert_eq!(run.powered_off, Some(0));
        assert!(run.powered_off_ok());
        assert!(run.outputs[0].contains("got hello"), "{}", run.outputs[0]);
        assert_eq!(run.outputs[1], "standby\n\x1dswitch\n");
        assert_eq!(run.outputs[2], "doomed\n");
        assert!(run.statuses[1].is_none() && run.killed[1].is_none());
        assert!(run.killed[2].is_some() && run.statuses[2].is_none());
        let what: Vec<(usize, &str)> = run.events.iter().map(|e| (e.device, e.what.as_str())).collect();
        assert_eq!(what, vec![(2, "killed"), (1, "console \"\\u{1d}switch\\n\""), (0, "console \"hello\\n\"")]);
        assert_eq!(std::fs::read_to_string(dir.join("t-device-0.log")).unwrap(), run.outputs[0]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_failing_script_stops_the_run_at_once_and_fails_the_caller() {
        let dir = std::env::temp_dir().join(format!("vmsync-devices-panic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let devices = Devices::start_with(2, Profile::loopback(), &dir.join("p.img"), false, |_, _| sh("exec sleep 60")).unwrap();
        let t0 = Instant::now();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            devices.run_script(Duration::from_secs(60), |c| {
                c.sleep(Duration::from_millis(200));
                panic!("scripted failure");
            })
        }));
        let msg = r.expect_err("the script's panic comes back").downcast::<&str>().map(|s| *s).unwrap_or("");
        assert_eq!(msg, "scripted failure");
        assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
        assert!(dir.join("p-device-1.log").exists());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn configs_name_every_other_device() {
        let c = device_config(1, 3, 0, "ab");
        assert_eq!(c, "role=standby\nnet_ip=169.254.0.2\nlisten=7000\npeer=169.254.0.1:7000\npeer=169.254.0.3:7000\nsecret=ab\n");
        assert!(device_config(0, 2, 0, "ab").starts_with("role=active\nnet_ip=169.254.0.1\n"));
    }
}
