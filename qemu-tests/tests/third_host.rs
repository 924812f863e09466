//! A hostile third host on the link (issue 17): the test process joins the
//! emulated link as a third device (`qemu_tests::third_host`) beside an
//! active device running a workload and its standby, and attacks the
//! standby: a SYN flood from addresses nobody answers for, handshakes that
//! go too slowly, a stale Hello followed by garbage, a garbage Hello, and a
//! replay of the active device's recorded first session to the standby
//! after it rebooted. The guest runs on, the standby commits only the
//! active device's epochs (during the attack too), logs each refusal, and
//! serves no connection but the active device's.
use qemu_tests::guest_check;
use qemu_tests::link::{device_mac, Links, Profile};
use qemu_tests::multi::{self, Control, SYNC_PORT};
use qemu_tests::switching::timeline;
use qemu_tests::third_host::{first_frame, garbage, syn_frame, Endpoint, Recording, TcpState, ThirdHost};
use qemu_tests::{digests, host_mem_mib, Assets};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MEM_MIB: u64 = 128;
const SECONDS: u64 = 45;
const DEADLINE: Duration = Duration::from_secs(400);
const SECRET: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";
/// The third host: device 2 on the link, with an address of the devices' net.
const HOST: usize = 2;
const HOST_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 3);
const STANDBY_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 2);
const SYNS: usize = 400;
/// How much of the active device's first session is recorded and replayed:
/// its Hello, Confirm and the start of its first epoch.
const RECORD_LIMIT: usize = 256 << 10;
/// Where a Hello frame holds `last_committed`: after the frame header (5),
/// the tag (1), magic (4), version (2), vm_id (16), platform_id (32), RAM
/// base and size (16) and page size (4) (docs/protocol.md, "Messages").
const LAST_COMMITTED: usize = 80;
/// The clear Hello and HelloAck frames, and a sealed Confirm, on the wire.
const HELLO_FRAME: usize = 224;
const CONFIRM_FRAME: usize = 54;
/// The standby's handshake deadline (`HANDSHAKE_MS` in standby_node.rs).
const HANDSHAKE: Duration = Duration::from_secs(5);

/// What the attack saw, filled in by the script (its thread's panics are
/// not seen by the test, so failures are kept as text).
#[derive(Debug, Default)]
struct Attack {
    /// The standby's last committed epoch at each step, in order.
    commits: Vec<(&'static str, u64)>,
    /// Local ports of the third host's connections, by what they did.
    slow: Vec<u16>,
    stale_hello: Option<u16>,
    forged_hello: Option<u16>,
    garbage_hello: Option<u16>,
    replay: Option<u16>,
    /// Bytes the standby answered the stale Hello with (HelloAck) and the
    /// forged one (HelloAck, Confirm).
    stale_answer: usize,
    forged_answer: usize,
    /// How long each slow handshake held its connection.
    slow_held: Vec<Duration>,
    /// The replayed bytes and how many the standby took before its reset.
    replay_len: usize,
    replay_sent: usize,
    failure: Option<String>,
}

/// The standby's output since its last restart.
fn incarnation(out: &str) -> &str {
    out.rsplit("--- restarted ---").next().unwrap_or("")
}

fn last_commit(out: &str) -> u64 {
    digests(incarnation(out)).last().map(|c| c.0).unwrap_or(0)
}

/// Runs the host (and the recording) until standby 1's output satisfies
/// `pred`, the run ends or `limit` passes.
fn wait(c: &Control, host: &mut ThirdHost, rec: &mut Recording, limit: Duration, pred: impl Fn(&str) -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end && !c.finished() {
        rec.pump();
        if pred(&c.standby_output(1)) {
            return true;
        }
        host.run_for(Duration::from_millis(50));
    }
    false
}

fn check(ok: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    ok.then_some(()).ok_or_else(what)
}

/// Waits for one more commit than `after` within `limit`.
fn commits_past(c: &Control, host: &mut ThirdHost, rec: &mut Recording, after: u64, limit: Duration, during: &str) -> Result<u64, String> {
    let ok = wait(c, host, rec, limit, |o| last_commit(o) > after);
    check(ok, || format!("the standby committed nothing past epoch {after} {during}"))?;
    Ok(last_commit(&c.standby_output(1)))
}

/// Connects to the standby, retrying while its listening sockets are all
/// taken (a refused SYN closes the socket at once).
fn connect(host: &mut ThirdHost) -> Result<smoltcp::iface::SocketHandle, String> {
    let end = Instant::now() + Duration::from_secs(20);
    while Instant::now() < end {
        let h = host.connect(STANDBY_IP, SYNC_PORT);
        if host.wait_established(h, Duration::from_secs(3)) {
            return Ok(h);
        }
        host.run_for(Duration::from_millis(300));
    }
    Err("the third host could not connect to the standby for 20 s".into())
}

/// Runs the host until `h` is closed (reset by the standby) or `limit`
/// passes; what it received meanwhile.
fn until_closed(host: &mut ThirdHost, h: smoltcp::iface::SocketHandle, limit: Duration) -> (bool, Vec<u8>) {
    let end = Instant::now() + limit;
    let mut got = Vec::new();
    while Instant::now() < end {
        host.poll();
        got.extend(host.recv(h));
        // Reset, or closed by the standby (its FIN after a refusal's HelloAck).
        if matches!(host.state(h), TcpState::Closed | TcpState::CloseWait) {
            return (true, got);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    (false, got)
}

fn attack(c: &Control, a: &mut Attack) -> Result<(), String> {
    // The active device's first session, as the standby received it.
    let tap = c.link.tap(Links::Dir { from: 0, to: 1 }).map_err(|e| format!("tap: {e}"))?;
    let mut rec = Recording::new(tap, SYNC_PORT, RECORD_LIMIT);
    let mut host = ThirdHost::join(&c.link, HOST, device_mac(HOST), HOST_IP).map_err(|e| format!("joining the link: {e}"))?;
    let ok = wait(c, &mut host, &mut rec, Duration::from_secs(240), |o| !digests(o).is_empty());
    check(ok, || "the standby never committed a first epoch".into())?;
    let e = last_commit(&c.standby_output(1));
    a.commits.push(("before the attack", e));
    let hello = first_frame(rec.stream()).ok_or("no Hello recorded")?.to_vec();

    // 1. A SYN flood from addresses nobody answers for (the standby's
    // SYN-ACKs wait for ARP replies that never come), ~2 s.
    let standby = Endpoint { mac: device_mac(1), ip: STANDBY_IP, port: SYNC_PORT };
    let noise = garbage(17, SYNS * 4);
    for k in 0..SYNS {
        let src = Endpoint {
            mac: [0x02, 0x5e, 0x10, 0, (k >> 8) as u8, k as u8],
            ip: Ipv4Addr::new(169, 254, 200 + (k / 250) as u8, (k % 250) as u8 + 1),
            port: 20_000 + k as u16,
        };
        let seq = u32::from_le_bytes(noise[4 * k..4 * k + 4].try_into().expect("four bytes"));
        host.raw(&syn_frame(src, standby, seq)).map_err(|e| format!("sending a SYN: {e}"))?;
        if k % 20 == 19 {
            host.run_for(Duration::from_millis(100));
        }
    }
    let e = commits_past(c, &mut host, &mut rec, e, Duration::from_secs(10), "during the SYN flood")?;
    a.commits.push(("during the SYN flood", e));
    // The flood's half-open connections end at the handshake deadline.
    host.run_for(HANDSHAKE + Duration::from_secs(1));

    // 2. Slow handshakes: each takes a listening socket and sends a byte
    // of a Hello every 500 ms, so it never finishes within the deadline.
    let mut slow = Vec::new();
    for _ in 0..3 {
        let h = connect(&mut host)?;
        a.slow.push(host.local_port(h).unwrap_or(0));
        slow.push((h, Instant::now(), None::<Duration>));
    }
    let end = Instant::now() + HANDSHAKE + Duration::from_secs(4);
    let mut sent = 0;
    let mut held = None;
    while Instant::now() < end && slow.iter().any(|s| s.2.is_none()) {
        // While all three hold a socket, the active device's epochs still commit.
        if held.is_none() && slow[0].1.elapsed() >= HANDSHAKE - Duration::from_secs(1) && slow.iter().all(|s| host.state(s.0) == TcpState::Established) {
            held = Some(last_commit(&c.standby_output(1)));
        }
        for s in slow.iter_mut().filter(|s| s.2.is_none()) {
            if host.state(s.0) == TcpState::Closed {
                s.2 = Some(s.1.elapsed());
            } else if sent < hello.len() {
                host.send(s.0, &hello[sent..sent + 1]);
            }
        }
        sent += 1;
        host.run_for(Duration::from_millis(500));
    }
    a.slow_held = slow.iter().map(|s| s.2.unwrap_or(Duration::MAX)).collect();
    check(slow.iter().all(|s| s.2.is_some()), || format!("a slow handshake outlived the deadline: {:?}", a.slow_held))?;
    let held = held.ok_or("the slow handshakes did not all hold their sockets")?;
    check(held > e, || format!("no commit past epoch {e} while the slow handshakes held the sockets"))?;
    a.commits.push(("during the slow handshakes", held));
    let e = commits_past(c, &mut host, &mut rec, held, Duration::from_secs(10), "after the slow handshakes")?;
    a.commits.push(("after the slow handshakes", e));

    // 3. The recorded Hello again, then garbage: the standby holds a later
    // epoch of that history, so it refuses the Hello as a history without
    // its epoch (and reads no further). The same Hello claiming a later
    // epoch (clear text: anyone can), then garbage: the standby answers
    // with HelloAck and its Confirm, then the garbage ends it. A Hello that
    // is garbage after its tag.
    let h = connect(&mut host)?;
    a.stale_hello = host.local_port(h);
    host.send(h, &hello);
    host.send(h, &garbage(3, 300));
    let (closed, got) = until_closed(&mut host, h, HANDSHAKE + Duration::from_secs(2));
    a.stale_answer = got.len();
    check(closed, || "the standby kept a connection with a stale Hello".into())?;
    let h = connect(&mut host)?;
    a.forged_hello = host.local_port(h);
    let mut forged = hello.clone();
    forged[LAST_COMMITTED..LAST_COMMITTED + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    host.send(h, &forged);
    let (_, got) = until_closed(&mut host, h, Duration::from_secs(1));
    a.forged_answer = got.len();
    host.send(h, &garbage(4, 300));
    let (closed, _) = until_closed(&mut host, h, HANDSHAKE + Duration::from_secs(2));
    check(closed, || "the standby kept a connection that sent garbage after its Hello".into())?;
    let h = connect(&mut host)?;
    a.garbage_hello = host.local_port(h);
    let mut bad = hello.clone();
    bad[6..].copy_from_slice(&garbage(5, hello.len() - 6));
    host.send(h, &bad);
    let (closed, _) = until_closed(&mut host, h, HANDSHAKE + Duration::from_secs(2));
    check(closed, || "the standby kept a connection whose Hello was garbage".into())?;
    let e = commits_past(c, &mut host, &mut rec, e, Duration::from_secs(10), "after the garbage")?;
    a.commits.push(("after the garbage", e));

    // 4. The standby reboots (holding nothing); the recorded session is
    // replayed to it as soon as it listens.
    let replay = rec.stream().to_vec();
    a.replay_len = replay.len();
    rec.stop();
    c.restart_standby(1).map_err(|e| format!("restarting the standby: {e}"))?;
    let ok = wait(c, &mut host, &mut rec, Duration::from_secs(60), |o| incarnation(o).contains("listening on port"));
    check(ok, || "the rebooted standby never listened".into())?;
    let h = connect(&mut host)?;
    a.replay = host.local_port(h);
    a.replay_sent = host.send_all(h, &replay, HANDSHAKE);
    let (closed, _) = until_closed(&mut host, h, HANDSHAKE + Duration::from_secs(2));
    check(closed, || "the standby kept the replayed session's connection".into())?;
    // The active device reconnects, resyncs the rebooted standby whole and
    // goes on.
    let e = commits_past(c, &mut host, &mut rec, 0, Duration::from_secs(120), "after the reboot")?;
    a.commits.push(("after the reboot", e));
    let e = commits_past(c, &mut host, &mut rec, e, Duration::from_secs(20), "after the replay")?;
    a.commits.push(("after the replay", e));
    Ok(())
}

/// Handshake failures standby logged from the third host, by local port.
fn refusals(out: &str, port: u16) -> Vec<&str> {
    let from = format!("standby: handshake from {HOST_IP}:{port} failed: ");
    out.lines().filter_map(|l| l.split_once(from.as_str()).map(|(_, why)| why)).collect()
}

#[test]
#[cfg_attr(not(vmsync_test_assets), ignore = "boots QEMU: run it with `cargo xtask test`")]
fn a_hostile_third_host_commits_nothing_and_cuts_nobody_off() {
    let assets = Assets::from_env();
    let cmdline = &format!("console=ttyAMA0 vmsync.workload=video vmsync.seconds={SECONDS}");
    let active = assets.image_with("third-a.img", &assets.hypervisor, cmdline, MEM_MIB, &format!("policy=interval:200ms\n{}", multi::active_config(2, SECRET)));
    let standby = assets.image_with("third-1.img", &assets.hypervisor, cmdline, MEM_MIB, &multi::standby_config(1, SECRET));
    let report = Arc::new(Mutex::new(Attack::default()));
    let shared = report.clone();
    let script: multi::Script = Box::new(move |c: &Control| {
        let mut a = Attack::default();
        a.failure = attack(c, &mut a).err();
        *shared.lock().unwrap_or_else(|e| e.into_inner()) = a;
    });
    let start = Instant::now();
    let r = multi::run_with_hosts(&active, &[standby.as_path()], 1, host_mem_mib(MEM_MIB), Profile::wifi(), DEADLINE, false, Some(script))
        .expect("starting the devices");
    let a = std::mem::take(&mut *report.lock().unwrap_or_else(|e| e.into_inner()));
    let out = &r.active.output;
    let sb = &r.standbys[0];
    let _ = std::fs::write(active.with_file_name("third-active.log"), out);
    eprintln!("third host: run took {:.0} s; {a:?}", start.elapsed().as_secs_f64());
    assert!(a.failure.is_none(), "the attack: {}\nstandby:\n{sb}\nactive:\n{}", a.failure.as_deref().unwrap_or(""), r.active.tail());
    assert!(r.active.exited_ok(), "active QEMU status {:?}:\n{}", r.active.status, r.active.tail());
    assert!(out.contains("vmsync-guest: workload video end rc=0"), "the workload did not finish:\n{}", r.active.tail());

    // The guest ran on: its per-second counter continues, read with the
    // helpers that join lines a hypervisor log line cut in two.
    let outputs = [out.clone(), sb.clone()];
    let t = timeline(&outputs, 0);
    let v = guest_check::verdict(&outputs, &t, Some("video"));
    assert!(v.counter_continuous && v.time_monotonic && !v.rebooted, "the guest did not run on: {:?}", v.problems);
    assert!(v.last_counter >= Some(SECONDS - 1), "the guest's counter stopped at {:?}", v.last_counter);

    // The standby committed only the active device's epochs, in each of
    // its lives, and more of them during and after every step of the attack.
    let cut = digests(out);
    let lives: Vec<&str> = sb.split("--- restarted ---").collect();
    assert_eq!(lives.len(), 2, "the standby was restarted once");
    for (k, life) in lives.iter().enumerate() {
        let commits = digests(life);
        assert!(!commits.is_empty(), "the standby committed nothing in life {k}");
        for (e, d) in &commits {
            assert_eq!(cut.iter().find(|c| c.0 == *e).map(|c| &c.1), Some(d), "life {k}: epoch {e} is not the active device's");
        }
    }
    for w in a.commits.windows(2) {
        assert!(w[1].1 > w[0].1 || w[1].0 == "after the reboot", "no commit between {:?} and {:?}", w[0], w[1]);
    }

    // Nobody but the active device was ever served: one connection in each
    // life, from the active device's address; in the second, nothing
    // committed before it (the replay before it committed nothing).
    for (k, life) in lives.iter().enumerate() {
        let served: Vec<&str> = life.lines().filter(|l| l.contains("standby: connection ")).collect();
        assert_eq!(served.len(), 1, "life {k}: served {served:?}");
        assert!(served[0].contains("from Some((169.254.0.1, "), "life {k}: served {served:?}");
    }
    let second = lives[1];
    let served_at = second.find("standby: connection 1 ").expect("served once");
    assert!(digests(&second[..served_at]).is_empty(), "the rebooted standby committed before the active device connected");

    // Each refusal is logged, with its reason.
    for (k, p) in a.slow.iter().enumerate() {
        assert_eq!(refusals(lives[0], *p), ["the key not proved within 5000 ms"], "slow handshake {k} (port {p})");
    }
    assert!(a.slow_held.iter().all(|d| *d >= HANDSHAKE - Duration::from_millis(500) && *d <= HANDSHAKE + Duration::from_secs(2)), "{:?}", a.slow_held);
    let (stale, forged, bad) = (a.stale_hello.expect("connected"), a.forged_hello.expect("connected"), a.garbage_hello.expect("connected"));
    assert_eq!(a.stale_answer, HELLO_FRAME, "the stale Hello gets a HelloAck (it hears why), no Confirm");
    assert!(refusals(lives[0], stale).is_empty(), "a refused history is logged as such, not as a failed handshake");
    assert!(lives[0].contains("offers a history of this guest that does not include our epoch"), "the stale Hello's refusal was not logged");
    assert_eq!(a.forged_answer, HELLO_FRAME + CONFIRM_FRAME, "a Hello that follows gets HelloAck and Confirm");
    assert_eq!(refusals(lives[0], forged), ["bad input in the handshake"], "garbage after a Hello (port {forged})");
    assert_eq!(refusals(lives[0], bad), ["bad input in the handshake"], "a garbage Hello (port {bad})");
    let p = a.replay.expect("the replay connected");
    assert_eq!(refusals(second, p), ["bad input in the handshake"], "the replay (port {p})");
    assert!(a.replay_len > 1000, "only {} bytes of the first session recorded", a.replay_len);
    eprintln!(
        "third host: {SYNS} SYNs; slow handshakes held {:?}; replayed {} of {} recorded bytes; commits {:?}; guest counter {:?}..{:?}",
        a.slow_held, a.replay_sent, a.replay_len, a.commits, v.first_counter, v.last_counter
    );
}
