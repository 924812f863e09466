//! QEMU's own live migration of the VMsync guest: the baseline of
//! `cargo xtask bench switch`.
//!
//! Two plain QEMU processes (no hypervisor; same machine, CPU, kernel,
//! initrd and command line as [`qemu_tests::plain_command`]), each with a
//! QMP monitor on a unix socket. The destination waits with `-incoming
//! tcp:127.0.0.1:D`; the source migrates to the link emulator's TCP proxy,
//! which forwards to D shaped by the link profile. xbzrle is on; the
//! downtime limit and bandwidth cap are QEMU's defaults (300 ms; 128 MiB/s
//! in 7.2, above every link profile, so the link is what limits).
//!
//! QEMU 7.2 notes: `-qmp unix:P,server=on,wait=off` (the short
//! `server,nowait` still works but is deprecated); the xbzrle cache size is
//! the `xbzrle-cache-size` parameter of `migrate-set-parameters`;
//! `query-migrate`'s `downtime` is the source's view (VM stop until its last
//! byte is written to its socket, not delivered: 1 ms on `wifi` where the
//! guest really stood still for most of a second), so the pause reported is
//! taken from the QMP events: the source's `STOP` to the destination's
//! `RESUME`, both stamped with the host's wall clock.
use anyhow::{anyhow, bail, Context, Result};
use qemu_tests::link::{tcp_proxy, Profile, ProxySnapshot, BUCKET};
use qemu_tests::Background;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The line every workload prints once a second (`counter=` counts them).
const PROGRESS: &str = "vmsync-workload: counter=";

/// The window of "bytes in the minute before" the request.
const MINUTE: Duration = Duration::from_secs(60);

pub struct MigrationArgs<'a> {
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    /// The guest's whole kernel command line (with a workload that runs far
    /// longer than warm-up plus migration).
    pub append: &'a str,
    pub mem_mib: u64,
    pub profile: Profile,
    /// How long the source runs its workload after its first progress line
    /// before the migration is requested.
    pub warmup: Duration,
    /// Give up on a migration that has not completed in this time.
    pub timeout: Duration,
    pub xbzrle_cache_bytes: u64,
    /// Where the QMP sockets go.
    pub work_dir: &'a Path,
}

#[derive(Debug, Clone)]
pub struct MigrationFigures {
    /// From just before `migrate` is sent to the guest running on the
    /// destination (its `RESUME` event; the polled `query-status` if the
    /// event was missed).
    pub switch_ms: f64,
    /// Stream bytes through the proxy, both directions, from the request
    /// to the guest running on the destination.
    pub bytes_during: u64,
    /// Stream bytes through the proxy in the minute before the request
    /// (the window is shorter if the proxy had run less than a minute;
    /// see `minute_window_s`). QEMU sends nothing before it is asked.
    pub bytes_minute_before: u64,
    /// How long the guest did not run: the source's `STOP` event to the
    /// destination's `RESUME` event (host wall clock), ms; QEMU's `downtime`
    /// if an event was missed.
    pub pause_ms: f64,
    /// `query-migrate` `total-time` on the source, ms.
    pub qemu_total_ms: f64,
    /// The destination's console went on with the workload's progress
    /// lines from where the source's stopped.
    pub guest_continued: bool,
    /// `query-migrate` `downtime` on the source, ms: QEMU's own figure, from
    /// the stop to its last byte written to the socket.
    pub qemu_downtime_ms: f64,
    /// Whether `pause_ms` came from the events.
    pub pause_from_events: bool,
    pub minute_window_s: f64,
    /// `query-migrate` `setup-time`, ms.
    pub qemu_setup_ms: f64,
    /// `ram.transferred`: what QEMU counts as sent.
    pub ram_transferred: u64,
    /// `ram.dirty-sync-count`: passes over guest memory.
    pub dirty_sync_count: u64,
    /// `xbzrle-cache.bytes` and `.pages`: what went as XBZRLE deltas.
    pub xbzrle_bytes: u64,
    pub xbzrle_pages: u64,
    /// The last progress counter on the source and the first on the
    /// destination.
    pub last_counter_source: Option<u64>,
    pub first_counter_destination: Option<u64>,
}

/// A QMP connection: commands and their replies, with the asynchronous
/// events read on the way kept for later.
struct Qmp {
    name: &'static str,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    events: Vec<Value>,
}

impl Qmp {
    /// Connects once QEMU has made the socket, reads the greeting and leaves
    /// capabilities negotiation mode.
    fn connect(name: &'static str, path: &Path, qemu: &mut Background, within: Duration) -> Result<Qmp> {
        let start = Instant::now();
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) => {
                    if !qemu.running() {
                        bail!("the {name} QEMU exited before its QMP socket was up:\n{}", tail(&qemu.output()));
                    }
                    if start.elapsed() > within {
                        bail!("no QMP socket {} from the {name} QEMU after {within:?}: {e}", path.display());
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        };
        // A QEMU that stops answering fails the run instead of hanging it.
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut q = Qmp { name, reader: BufReader::new(stream.try_clone()?), writer: stream, events: Vec::new() };
        let greeting = q.read()?;
        if greeting.get("QMP").is_none() {
            bail!("{name} QMP: expected a greeting, got {greeting}");
        }
        q.execute("qmp_capabilities", json!({}))?;
        Ok(q)
    }

    fn read(&mut self) -> Result<Value> {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).with_context(|| format!("reading from the {} QMP socket", self.name))?;
        if n == 0 {
            bail!("the {} QEMU closed its QMP socket", self.name);
        }
        serde_json::from_str(&line).with_context(|| format!("{} QMP sent {line:?}", self.name))
    }

    /// Runs a command; its `return` value, or its `error` as an error.
    fn execute(&mut self, cmd: &str, args: Value) -> Result<Value> {
        let mut msg = json!({ "execute": cmd });
        if args.as_object().is_some_and(|o| !o.is_empty()) {
            msg["arguments"] = args;
        }
        let mut text = msg.to_string();
        text.push('\n');
        self.writer.write_all(text.as_bytes()).with_context(|| format!("writing to the {} QMP socket", self.name))?;
        loop {
            let v = self.read()?;
            if v.get("event").is_some() {
                self.events.push(v);
            } else if let Some(r) = v.get("return") {
                return Ok(r.clone());
            } else if let Some(e) = v.get("error") {
                bail!("{} QMP {cmd}: {} ({})", self.name, e["desc"].as_str().unwrap_or("?"), e["class"].as_str().unwrap_or("?"));
            } else {
                bail!("{} QMP {cmd}: unexpected reply {v}", self.name);
            }
        }
    }

    /// Host wall-clock time (seconds since the epoch) of the first event
    /// called `name` read so far.
    fn event_time(&self, name: &str) -> Option<f64> {
        self.events.iter().find(|e| e["event"] == name).and_then(|e| Some(e["timestamp"]["seconds"].as_f64()? + e["timestamp"]["microseconds"].as_f64()? / 1e6))
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

fn wall_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// The `counter=` values of the complete progress lines in a console's
/// output, in order.
pub fn counters(out: &str) -> Vec<u64> {
    out.lines().filter_map(|l| l.split_once(PROGRESS)?.1.split_whitespace().next()?.parse().ok()).collect()
}

/// Whether the destination's progress lines carry on from the source's:
/// the first is at most two past the source's last (one line may be cut in
/// two by the stop, its halves on both consoles) and they keep counting up.
pub fn continues(source: &[u64], destination: &[u64]) -> bool {
    let (Some(&last), Some(&first)) = (source.last(), destination.first()) else { return false };
    first > last && first <= last + 2 && destination.windows(2).all(|w| w[1] == w[0] + 1)
}

/// Stream bytes in the proxy's series in `[from, to)` since its start.
fn bytes_between(s: &ProxySnapshot, from: Duration, to: Duration) -> u64 {
    let (a, b) = ((from.as_nanos() / BUCKET.as_nanos()) as usize, (to.as_nanos() / BUCKET.as_nanos()) as usize);
    [&s.up.series, &s.down.series].iter().map(|series| series.iter().take(b).skip(a).sum::<u64>()).sum()
}

fn free_tcp_port() -> Result<u16> {
    // Free now; released for QEMU to bind (another process could take it
    // in between, and QEMU would then fail to start).
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}

fn qemu(a: &MigrationArgs, qmp: &Path, incoming: Option<u16>) -> std::process::Command {
    let mut c = qemu_tests::plain_command(a.kernel, a.initrd, a.append, a.mem_mib);
    c.arg("-qmp").arg(format!("unix:{},server=on,wait=off", qmp.display()));
    if let Some(port) = incoming {
        c.args(["-incoming", &format!("tcp:127.0.0.1:{port}")]);
    }
    c
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// One QEMU live migration of the running guest through the link
/// emulator's TCP proxy; see the module docs.
pub fn qemu_migration(a: &MigrationArgs) -> Result<MigrationFigures> {
    std::fs::create_dir_all(a.work_dir)?;
    let sock = |n: &str| -> PathBuf { a.work_dir.join(format!("bench-switch-{n}-{}.qmp", std::process::id())) };
    let (src_sock, dst_sock) = (sock("src"), sock("dst"));
    for p in [&src_sock, &dst_sock] {
        let _ = std::fs::remove_file(p);
    }
    let dst_port = free_tcp_port()?;
    let proxy = tcp_proxy(([127, 0, 0, 1], dst_port).into(), a.profile.clone()).context("starting the link emulator's TCP proxy")?;

    let mut src = Background::spawn(qemu(a, &src_sock, None)).context("starting the source QEMU")?;
    let mut src_qmp = Qmp::connect("source", &src_sock, &mut src, Duration::from_secs(30))?;
    let mut dst = Background::spawn(qemu(a, &dst_sock, Some(dst_port))).context("starting the destination QEMU")?;
    let mut dst_qmp = Qmp::connect("destination", &dst_sock, &mut dst, Duration::from_secs(30))?;
    let result = migrate(a, &proxy, &mut src, &mut src_qmp, &mut dst, &mut dst_qmp);
    let _ = (src.stop(), dst.stop());
    for p in [&src_sock, &dst_sock] {
        let _ = std::fs::remove_file(p);
    }
    result
}

fn migrate(
    a: &MigrationArgs,
    proxy: &qemu_tests::link::TcpProxy,
    src: &mut Background,
    src_qmp: &mut Qmp,
    dst: &mut Background,
    dst_qmp: &mut Qmp,
) -> Result<MigrationFigures> {
    let caps = json!({ "capabilities": [{ "capability": "xbzrle", "state": true }] });
    src_qmp.execute("migrate-set-capabilities", caps.clone())?;
    dst_qmp.execute("migrate-set-capabilities", caps)?;
    src_qmp.execute("migrate-set-parameters", json!({ "xbzrle-cache-size": a.xbzrle_cache_bytes }))?;
    let params = src_qmp.execute("query-migrate-parameters", json!({}))?;
    eprintln!(
        "qemu migration: downtime-limit {} ms, max-bandwidth {} B/s, xbzrle-cache-size {} B, link {}",
        params["downtime-limit"], params["max-bandwidth"], params["xbzrle-cache-size"], a.profile
    );

    // Warm-up: the workload's first progress line, then `warmup` more.
    let boot = Instant::now();
    while !src.output().contains(PROGRESS) {
        if !src.running() || boot.elapsed() > Duration::from_secs(240) {
            bail!("the source guest printed no progress line:\n{}", tail(&src.output()));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("qemu migration: workload running after {:.1} s; warming up {} s", boot.elapsed().as_secs_f64(), a.warmup.as_secs());
    std::thread::sleep(a.warmup);
    if !src.running() {
        bail!("the source QEMU ended during warm-up:\n{}", tail(&src.output()));
    }
    let dst_state = dst_qmp.execute("query-status", json!({}))?;
    if dst_state["status"] != "inmigrate" {
        bail!("the destination is {} before the migration, not inmigrate", dst_state["status"]);
    }

    let before = proxy.snapshot();
    let wall_req = wall_now();
    let t_req = Instant::now();
    src_qmp.execute("migrate", json!({ "uri": format!("tcp:127.0.0.1:{}", proxy.port()) }))?;
    let mut running_at = None;
    let mut info;
    let mut last_report = Instant::now();
    loop {
        if running_at.is_none() && dst_qmp.execute("query-status", json!({}))?["status"] == "running" {
            running_at = Some(t_req.elapsed());
        }
        info = src_qmp.execute("query-migrate", json!({}))?;
        match info["status"].as_str().unwrap_or("") {
            "completed" if running_at.is_some() => break,
            "failed" | "cancelled" => bail!("the migration {}: {}", info["status"], info["error-desc"]),
            _ => {}
        }
        if t_req.elapsed() > a.timeout {
            let _ = src_qmp.execute("migrate_cancel", json!({}));
            bail!("the migration did not complete in {:?} over {}; last query-migrate: {info}", a.timeout, a.profile);
        }
        if !src.running() || !dst.running() {
            bail!("a QEMU ended during the migration.\nsource:\n{}\ndestination:\n{}", tail(&src.output()), tail(&dst.output()));
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            last_report = Instant::now();
            let r = &info["ram"];
            eprintln!(
                "qemu migration: {:5.1} s {}: transferred {} B, remaining {} B, pass {}, dirty {} pages/s, xbzrle cache miss rate {}",
                t_req.elapsed().as_secs_f64(),
                info["status"],
                r["transferred"],
                r["remaining"],
                r["dirty-sync-count"],
                r["dirty-pages-rate"],
                info["xbzrle-cache"]["cache-miss-rate"]
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let polled = running_at.ok_or_else(|| anyhow!("unreachable: left the loop before the destination ran"))?;
    // Collect the events that came with the last replies.
    dst_qmp.execute("query-status", json!({}))?;
    src_qmp.execute("query-status", json!({}))?;
    let resume = dst_qmp.event_time("RESUME");
    let switch_ms = resume.map(|t| (t - wall_req) * 1e3).unwrap_or(polled.as_secs_f64() * 1e3);
    let pause_observed_ms = match (src_qmp.event_time("STOP"), resume) {
        (Some(s), Some(r)) => Some((r - s) * 1e3),
        _ => None,
    };
    let during = proxy.snapshot();
    let req_at = before.elapsed;
    let window = req_at.min(MINUTE);
    let bytes_minute_before = bytes_between(&during, req_at - window, req_at);

    // The guest goes on: the destination prints the next progress lines.
    let source_counters = counters(&src.output());
    let waited = Instant::now();
    while counters(&dst.output()).len() < 2 && waited.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let dest_counters = counters(&dst.output());
    let guest_continued = dst.running() && continues(&source_counters, &dest_counters);
    if !guest_continued {
        eprintln!(
            "qemu migration: the guest did not visibly continue on the destination.\nsource console:\n{}\ndestination console:\n{}",
            tail(&src.output()),
            tail(&dst.output())
        );
    }
    let r = &info["ram"];
    Ok(MigrationFigures {
        switch_ms,
        bytes_during: during.bytes() - before.bytes(),
        bytes_minute_before,
        pause_ms: pause_observed_ms.unwrap_or(num(&info["downtime"])),
        qemu_downtime_ms: num(&info["downtime"]),
        pause_from_events: pause_observed_ms.is_some(),
        qemu_total_ms: num(&info["total-time"]),
        guest_continued,
        minute_window_s: window.as_secs_f64(),
        qemu_setup_ms: num(&info["setup-time"]),
        ram_transferred: r["transferred"].as_u64().unwrap_or(0),
        dirty_sync_count: r["dirty-sync-count"].as_u64().unwrap_or(0),
        xbzrle_bytes: info["xbzrle-cache"]["bytes"].as_u64().unwrap_or(0),
        xbzrle_pages: info["xbzrle-cache"]["pages"].as_u64().unwrap_or(0),
        last_counter_source: source_counters.last().copied(),
        first_counter_destination: dest_counters.first().copied(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_continuity() {
        let src = "boot\nvmsync-workload: counter=1 checksum=00 uptime=1.0 frames=3\nvmsync-workload: counter=2 checksum=01 uptime=2.0\nvmsync-workl";
        let dst =
            "oad: counter=3 checksum=02 uptime=3.0\nvmsync-workload: counter=4 checksum=03 uptime=4.0\nvmsync-workload: counter=5 checksum=04 uptime=5.0\n";
        let (s, d) = (counters(src), counters(dst));
        assert_eq!(s, [1, 2]);
        assert_eq!(d, [4, 5]);
        assert!(continues(&s, &d));
        assert!(continues(&s, &[3, 4]));
        assert!(!continues(&s, &[1, 2]), "starting over is not continuing");
        assert!(!continues(&s, &[]));
        assert!(!continues(&s, &[3, 5]));
    }

    #[test]
    fn minute_window_from_series() {
        let mut s = ProxySnapshot::default();
        s.up.series = vec![1; 1000];
        s.down.series = vec![0, 2];
        assert_eq!(bytes_between(&s, Duration::ZERO, Duration::from_secs(1)), 10 + 2);
        assert_eq!(bytes_between(&s, Duration::from_secs(40), Duration::from_secs(100)), 600);
        assert_eq!(bytes_between(&s, Duration::from_secs(200), Duration::from_secs(260)), 0);
    }
}
