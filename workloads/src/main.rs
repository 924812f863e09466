//! `vmsync-workload <name> [--seconds S] [--mib N] [--period-ms P] [--dir D] [--clip F] [--start-seconds B] [--write-seconds W]`
//!
//! Runs one guest workload and prints the per-second line described in the
//! library. `--seconds 0` runs until killed. Exits 0 at the end. `dav1d` and
//! `sqlite` drive Debian's programs, so they run only in the study initramfs.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use vmsync_workloads::{browse, burst, counter, cpuprobe, format_line, memtouch, player, sqlstore, storage, video};

const USAGE: &str = "usage: vmsync-workload <counter|video|idle|memtouch|storage|browse|burst|dav1d|sqlite|cpuprobe> \
[--seconds S (default 10, 0 = forever)] [--mib N] [--period-ms P] [--dir D] [--clip F] \
[--start-seconds B] [--write-seconds W] (burst: idles B seconds (default 0), writes W seconds (default half of S), idles)";

struct Args {
    workload: String,
    seconds: u64,
    mib: Option<usize>,
    period_ms: Option<u64>,
    dir: Option<String>,
    clip: Option<String>,
    start_seconds: u64,
    write_seconds: Option<u64>,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let workload = it.next().ok_or("no workload named")?;
    if workload == "--help" || workload == "-h" {
        return Err(String::new());
    }
    let mut args = Args { workload, seconds: 10, mib: None, period_ms: None, dir: None, clip: None, start_seconds: 0, write_seconds: None };
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let num = |v: String| v.parse::<u64>().map_err(|_| format!("{flag}: not a number: {v}"));
        match flag.as_str() {
            "--seconds" => args.seconds = num(value()?)?,
            "--mib" => args.mib = Some(num(value()?)? as usize),
            "--period-ms" => args.period_ms = Some(num(value()?)?.max(1)),
            "--dir" => args.dir = Some(value()?),
            "--clip" => args.clip = Some(value()?),
            "--start-seconds" => args.start_seconds = num(value()?)?,
            "--write-seconds" => args.write_seconds = Some(num(value()?)?),
            _ => return Err(format!("unknown argument {flag}")),
        }
    }
    Ok(args)
}

fn uptime() -> String {
    std::fs::read_to_string("/proc/uptime").ok().and_then(|s| s.split_whitespace().next().map(str::to_string)).unwrap_or_else(|| "unknown".to_string())
}

fn print_line(counter: u64, checksum: u64, extra: &str) {
    let line = format_line(counter, checksum, &uptime(), extra);
    // A closed console must not kill the workload: ignore write errors.
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

/// One workload as the pacing loop sees it.
trait Workload {
    /// How often `tick` runs; `None` for workloads that only report.
    fn period(&self) -> Option<Duration>;
    fn tick(&mut self) -> Result<(), String>;
    /// Called at each whole second: returns the checksum and extra fields.
    fn report(&mut self, dropped: u64) -> Result<(u64, String), String>;
}

fn slot_offset(period: Duration, slot: u64) -> Duration {
    Duration::from_nanos((period.as_nanos() as u64).saturating_mul(slot))
}

/// Runs `w` for `seconds` (0 = forever), printing one line per second. When
/// ticks fall behind (a slow TCG guest), missed slots are dropped rather than
/// replayed, as a video player drops frames; the state stays a function of
/// the ticks done, so checksums remain checkable.
fn run_paced(seconds: u64, w: &mut dyn Workload) -> Result<(), String> {
    let start = Instant::now();
    let (mut slot, mut dropped, mut second) = (0u64, 0u64, 0u64);
    loop {
        let line_at = start + Duration::from_secs(second + 1);
        match w.period() {
            Some(p) if start + slot_offset(p, slot) < line_at => {
                sleep_until(start + slot_offset(p, slot));
                w.tick()?;
                let due = (start.elapsed().as_nanos() / p.as_nanos()) as u64;
                let next = (slot + 1).max(due);
                dropped += next - slot - 1;
                slot = next;
            }
            _ => {
                sleep_until(line_at);
                second += 1;
                let (sum, extra) = w.report(dropped)?;
                print_line(second, sum, &extra);
                if seconds != 0 && second >= seconds {
                    return Ok(());
                }
            }
        }
    }
}

/// `counter` (mutates its working set each second) and `idle` (never does).
struct Counter {
    ws: counter::WorkingSet,
    mutate: bool,
}

impl Workload for Counter {
    fn period(&self) -> Option<Duration> {
        None
    }
    fn tick(&mut self) -> Result<(), String> {
        Ok(())
    }
    fn report(&mut self, _dropped: u64) -> Result<(u64, String), String> {
        if self.mutate {
            self.ws.step();
        }
        Ok((self.ws.checksum(), String::new()))
    }
}

struct Video(video::Video, Duration);

impl Workload for Video {
    fn period(&self) -> Option<Duration> {
        Some(self.1)
    }
    fn tick(&mut self) -> Result<(), String> {
        self.0.render_frame();
        Ok(())
    }
    fn report(&mut self, dropped: u64) -> Result<(u64, String), String> {
        Ok((self.0.checksum(), format!("frames={} dropped={dropped}", self.0.frames())))
    }
}

struct MemTouch(memtouch::MemTouch, Duration);

impl Workload for MemTouch {
    fn period(&self) -> Option<Duration> {
        Some(self.1)
    }
    fn tick(&mut self) -> Result<(), String> {
        self.0.touch();
        Ok(())
    }
    fn report(&mut self, dropped: u64) -> Result<(u64, String), String> {
        let extra = format!("periods={} pages={} dropped={dropped}", self.0.periods(), self.0.pages());
        Ok((self.0.checksum(), extra))
    }
}

struct Storage(storage::Storage, Duration);

impl Workload for Storage {
    fn period(&self) -> Option<Duration> {
        Some(self.1)
    }
    fn tick(&mut self) -> Result<(), String> {
        self.0.tick().map_err(|e| format!("{}: {e}", self.0.dir().display()))
    }
    fn report(&mut self, dropped: u64) -> Result<(u64, String), String> {
        let sum = self.0.checksum().map_err(|e| format!("{}: {e}", self.0.dir().display()))?;
        Ok((sum, format!("ticks={} dropped={dropped}", self.0.ticks())))
    }
}

/// `burst`: idle until `begin`, incompressible writes until `end` (times
/// since the start, so a slow guest writes less, never longer), then idle.
struct Burst {
    b: burst::Burst,
    period: Duration,
    start: Instant,
    begin: Duration,
    end: Duration,
}

impl Workload for Burst {
    fn period(&self) -> Option<Duration> {
        Some(self.period)
    }
    fn tick(&mut self) -> Result<(), String> {
        let t = self.start.elapsed();
        if t >= self.begin && t < self.end {
            self.b.tick();
        }
        Ok(())
    }
    fn report(&mut self, dropped: u64) -> Result<(u64, String), String> {
        let t = self.start.elapsed();
        let writing = t >= self.begin && t < self.end;
        let extra = format!("ticks={} written_mib={} writing={writing} dropped={dropped}", self.b.ticks(), self.b.written() >> 20);
        Ok((self.b.checksum(), extra))
    }
}

struct Browse(browse::Browse, Duration);

impl Workload for Browse {
    fn period(&self) -> Option<Duration> {
        Some(self.1)
    }
    fn tick(&mut self) -> Result<(), String> {
        self.0.tick();
        Ok(())
    }
    fn report(&mut self, dropped: u64) -> Result<(u64, String), String> {
        Ok((self.0.checksum(), format!("ticks={} dropped={dropped}", self.0.ticks())))
    }
}

/// `dav1d`: a real decoder's frames shown at the clip's frame rate.
struct Play(player::Player, Duration);

impl Workload for Play {
    fn period(&self) -> Option<Duration> {
        Some(self.1)
    }
    fn tick(&mut self) -> Result<(), String> {
        self.0.present_next().map_err(|e| e.to_string())
    }
    fn report(&mut self, dropped: u64) -> Result<(u64, String), String> {
        let extra = format!("frames={} dropped={dropped} loops={}", self.0.frames(), self.0.loops());
        Ok((self.0.checksum(), extra))
    }
}

/// `sqlite`: transactions on a real database, at a steady rate.
struct Sql(sqlstore::SqlStore, Duration);

impl Workload for Sql {
    fn period(&self) -> Option<Duration> {
        Some(self.1)
    }
    fn tick(&mut self) -> Result<(), String> {
        self.0.transaction().map_err(|e| e.to_string())
    }
    fn report(&mut self, dropped: u64) -> Result<(u64, String), String> {
        Ok((self.0.checksum(), format!("transactions={} dropped={dropped}", self.0.transactions())))
    }
}

/// Debian's programs are only in the study initramfs: say so plainly.
fn need_program(path: &str) -> Result<(), String> {
    if std::path::Path::new(path).exists() {
        Ok(())
    } else {
        Err(format!("{path} is not in this guest: real-program workloads need the study initramfs (initrd-study.cpio.gz)"))
    }
}

fn build(a: &Args) -> Result<Box<dyn Workload>, String> {
    let period = |default: Duration| a.period_ms.map(Duration::from_millis).unwrap_or(default);
    let per_second = |n: u64| Duration::from_nanos(1_000_000_000 / n);
    Ok(match a.workload.as_str() {
        "counter" => {
            let ws = counter::WorkingSet::new(a.mib.unwrap_or(counter::DEFAULT_MIB));
            Box::new(Counter { ws, mutate: true })
        }
        // A small resident set written once: the checksum still proves the
        // memory survived a switch.
        "idle" => Box::new(Counter { ws: counter::WorkingSet::new(a.mib.unwrap_or(1)), mutate: false }),
        "video" => Box::new(Video(video::Video::new(), period(per_second(video::FPS)))),
        "memtouch" => {
            let m = memtouch::MemTouch::new(a.mib.unwrap_or(memtouch::DEFAULT_MIB));
            Box::new(MemTouch(m, period(Duration::from_millis(memtouch::DEFAULT_PERIOD_MS))))
        }
        "storage" => {
            let dir = a.dir.as_deref().unwrap_or(storage::DEFAULT_DIR);
            let s = storage::Storage::create(dir.as_ref()).map_err(|e| format!("{dir}: {e}"))?;
            Box::new(Storage(s, period(per_second(storage::TICKS_PER_SECOND))))
        }
        "burst" => {
            let begin = Duration::from_secs(a.start_seconds);
            let end = begin + Duration::from_secs(a.write_seconds.unwrap_or(a.seconds / 2));
            let b = burst::Burst::new(a.mib.unwrap_or(burst::DEFAULT_MIB));
            Box::new(Burst { b, period: period(Duration::from_millis(burst::PERIOD_MS)), start: Instant::now(), begin, end })
        }
        "browse" => Box::new(Browse(browse::Browse::new(), period(per_second(browse::TICKS_PER_SECOND)))),
        "dav1d" => {
            need_program(player::DECODER)?;
            let clip = a.clip.as_deref().unwrap_or(player::CLIP);
            let p = player::Player::open(player::DECODER.as_ref(), clip.as_ref()).map_err(|e| format!("{clip}: {e}"))?;
            let fp = p.format().frame_period();
            Box::new(Play(p, period(fp)))
        }
        "sqlite" => {
            need_program(sqlstore::SQLITE)?;
            let dir = a.dir.as_deref().unwrap_or(sqlstore::DEFAULT_DIR);
            let s = sqlstore::SqlStore::create(sqlstore::SQLITE.as_ref(), dir.as_ref()).map_err(|e| format!("{dir}: {e}"))?;
            Box::new(Sql(s, period(per_second(sqlstore::TX_PER_SECOND))))
        }
        other => return Err(format!("unknown workload {other}")),
    })
}

/// `cpuprobe`: not a paced workload; see `cpuprobe`.
fn cpu_probe(zva_child: bool) -> ExitCode {
    if zva_child {
        return if cpuprobe::dc_zva() { ExitCode::SUCCESS } else { ExitCode::from(3) };
    }
    let (ctr, dczid) = cpuprobe::registers();
    println!("vmsync-cpu: ctr_el0={ctr:#x} dczid_el0={dczid:#x}");
    let child = std::env::current_exe().and_then(|exe| std::process::Command::new(exe).args(["cpuprobe", "--zva"]).status());
    match child {
        Ok(st) => {
            use std::os::unix::process::ExitStatusExt;
            println!("vmsync-cpu: dc_zva {}", cpuprobe::describe(st.code(), st.signal()));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vmsync-workload: cpuprobe: cannot start the DC ZVA child: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let mut raw = std::env::args().skip(1);
    if raw.next().as_deref() == Some("cpuprobe") {
        return cpu_probe(raw.next().as_deref() == Some("--zva"));
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("vmsync-workload: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match build(&args).and_then(|mut w| run_paced(args.seconds, w.as_mut())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmsync-workload: {}: {e}", args.workload);
            ExitCode::FAILURE
        }
    }
}
