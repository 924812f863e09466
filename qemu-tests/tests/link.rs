//! The link emulator's model, checked with plain UDP sockets standing in for
//! QEMU devices (no QEMU needed). Timing checks use generous tolerances and
//! measure spans long enough that a loaded 2-core machine's wake-up delays
//! stay small beside them; they check the model, not our speed.
use qemu_tests::link::{self, Command, Filter, FlipAt, Link, LinkConfig, Links, Profile};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

/// An Ethertype from the IEEE "local experimental" range: test frames are
/// not IP, so only the switch and the shaper look at them.
const ETHERTYPE_TEST: [u8; 2] = [0x88, 0xb5];
const BCAST: [u8; 6] = [0xff; 6];

fn mac(i: usize) -> [u8; 6] {
    link::device_mac(i)
}

/// A fake device: a UDP socket where its QEMU would be.
struct Dev {
    sock: UdpSocket,
    to_link: u16,
}

impl Dev {
    fn new(link: &Link, i: usize) -> Dev {
        let sock = UdpSocket::bind(("127.0.0.1", link.device_port(i))).expect("binding a fake device's port");
        sock.set_read_timeout(Some(Duration::from_millis(20))).expect("setting a timeout");
        Dev { sock, to_link: link.port(i) }
    }

    fn send(&self, frame: &[u8]) {
        self.sock.send_to(frame, ("127.0.0.1", self.to_link)).expect("sending to the emulator");
    }

    /// `collect` on a thread of its own, so the socket is read while the
    /// test sends (its buffer holds only a few hundred frames).
    fn spawn_collect(&self) -> std::thread::JoinHandle<Vec<(Instant, Vec<u8>)>> {
        let d = Dev { sock: self.sock.try_clone().expect("cloning a socket"), to_link: self.to_link };
        std::thread::spawn(move || d.collect(Duration::from_millis(300), Duration::from_secs(20)))
    }

    /// Frames received until none came for `quiet`, or `limit` passed.
    fn collect(&self, quiet: Duration, limit: Duration) -> Vec<(Instant, Vec<u8>)> {
        let start = Instant::now();
        let mut last = Instant::now();
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        while last.elapsed() < quiet && start.elapsed() < limit {
            if let Ok(n) = self.sock.recv(&mut buf) {
                last = Instant::now();
                got.push((last, buf[..n].to_vec()));
            }
        }
        got
    }
}

/// A test frame of `len` bytes from device `src` carrying `seq`.
fn frame(dst: [u8; 6], src: usize, seq: u32, len: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&mac(src));
    f.extend_from_slice(&ETHERTYPE_TEST);
    f.extend_from_slice(&seq.to_be_bytes());
    f.resize(len.max(18), 0xa5);
    f
}

fn seq(f: &[u8]) -> u32 {
    u32::from_be_bytes([f[14], f[15], f[16], f[17]])
}

/// Each device announces itself so the switch learns its MAC; the floods
/// are drained.
fn learn(devs: &[Dev]) {
    for (i, d) in devs.iter().enumerate() {
        d.send(&frame(BCAST, i, u32::MAX, 60));
    }
    for d in devs {
        d.collect(Duration::from_millis(150), Duration::from_secs(2));
    }
}

fn start(devices: usize, profile: Profile) -> (Link, Vec<Dev>) {
    let link = Link::start(LinkConfig::new(devices, profile)).expect("starting the emulator");
    let devs = (0..devices).map(|i| Dev::new(&link, i)).collect();
    (link, devs)
}

fn quick() -> Profile {
    Profile::loopback()
}

// ---- The Internet checksum, written again here so the emulator's own is
// not what checks it.

fn csum(data: &[u8], mut acc: u32) -> u16 {
    for c in data.chunks(2) {
        acc += u32::from(c[0]) << 8 | u32::from(*c.get(1).unwrap_or(&0));
    }
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// A real IPv4/TCP frame 169.254.0.1:40000 -> 169.254.0.2:7000 with valid
/// checksums.
fn tcp_frame(dst: usize, src: usize, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&mac(dst));
    f.extend_from_slice(&mac(src));
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + 20 + payload.len()) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0, 169, 254, 0, 1, 169, 254, 0, 2];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    let c = csum(&ip, 0);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut tcp = vec![0x9c, 0x40, 0x1b, 0x58, 0, 0, 0x10, 0, 0, 0, 0x20, 0, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0];
    tcp.extend_from_slice(payload);
    let c = tcp_csum(&ip, &tcp);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&tcp);
    f
}

fn tcp_csum(ip: &[u8], tcp_with_zero_field: &[u8]) -> u16 {
    let mut pseudo = ip[12..20].to_vec();
    pseudo.extend_from_slice(&[0, 6]);
    pseudo.extend_from_slice(&(tcp_with_zero_field.len() as u16).to_be_bytes());
    let mut t = tcp_with_zero_field.to_vec();
    t[16] = 0;
    t[17] = 0;
    pseudo.extend_from_slice(&t);
    csum(&pseudo, 0)
}

/// (IPv4 checksum ok, TCP checksum ok) of a frame built by `tcp_frame`.
fn checks(f: &[u8]) -> (bool, bool) {
    let ip = &f[14..34];
    let tcp = &f[34..];
    (csum(ip, 0) == 0, u16::from_be_bytes([tcp[16], tcp[17]]) == tcp_csum(ip, tcp))
}

fn bit_diff(a: &[u8], b: &[u8]) -> Vec<usize> {
    assert_eq!(a.len(), b.len());
    (0..a.len() * 8).filter(|&i| (a[i / 8] ^ b[i / 8]) & (0x80 >> (i % 8)) != 0).collect()
}

// ---- The tests.

/// Offers 2x the link rate for about a second in small paced bursts and
/// measures the rate at which frames arrive.
fn measure_rate(profile: Profile, expect_bytes_per_s: f64) -> (f64, link::Snapshot, usize) {
    let (link, devs) = start(2, profile);
    learn(&devs);
    let [a, b] = <[Dev; 2]>::try_from(devs).ok().expect("two devices");
    let len = 1000;
    let frames = (expect_bytes_per_s / len as f64) as u32; // one second's worth
    let rx = std::thread::spawn(move || b.collect(Duration::from_millis(400), Duration::from_secs(20)));
    // 2x the rate: `burst` frames every 10 ms.
    let burst = ((2.0 * expect_bytes_per_s / len as f64) / 100.0).ceil().max(1.0) as u32;
    let t0 = Instant::now();
    for s in 0..2 * frames {
        a.send(&frame(mac(1), 0, s, len));
        if s % burst == burst - 1 {
            let next = t0 + Duration::from_millis(10 * u64::from(s / burst + 1));
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
    }
    let got = rx.join().expect("receiver");
    assert!(got.len() > 10, "only {} frames arrived", got.len());
    let span = got[got.len() - 1].0 - got[0].0;
    let bytes: usize = got[1..].iter().map(|f| f.1.len()).sum();
    let snap = link.stop();
    (bytes as f64 / span.as_secs_f64(), snap, got.len())
}

#[test]
fn bandwidth_follows_the_profile_and_a_full_queue_drops_tail() {
    // bt: 2 Mbit/s, 25 kB of queue; offered twice that, the link runs full
    // and drops the excess at its queue.
    let (rate, snap, got) = measure_rate(Profile::bt().with_jitter(Duration::ZERO), 250_000.0);
    let ratio = rate / 250_000.0;
    eprintln!("bt: {rate:.0} B/s, {ratio:.3} of the profile");
    assert!((0.85..=1.15).contains(&ratio), "bt delivered {rate:.0} B/s, {ratio:.3} of the profile");
    let d = snap.dir(0, 1).expect("direction 0->1");
    // The counts include device 0's announcement.
    assert_eq!(d.frames as usize, got + 1, "delivered count vs received");
    assert!(d.drops.queue_full > 0, "no drop-tail at 2x the rate: {d:?}");
    assert_eq!(d.drops.total(), d.drops.queue_full, "{d:?}");
    assert_eq!(snap.devices[0].frames_in, d.frames + d.drops.total(), "sent = delivered + dropped");
}

#[test]
fn bandwidth_without_drops_when_the_queue_holds_the_burst() {
    // 4 Mbit/s with a queue big enough for everything offered.
    let mut p = Profile::wifi().with_rate(Some(4_000_000)).with_jitter(Duration::ZERO);
    p.queue_bytes = 4 << 20;
    p.queue_time = Duration::from_secs(10);
    let (rate, snap, got) = measure_rate(p, 500_000.0);
    let ratio = rate / 500_000.0;
    eprintln!("4 Mbit/s: {rate:.0} B/s, {ratio:.3} of the profile");
    assert!((0.85..=1.15).contains(&ratio), "delivered {rate:.0} B/s, {ratio:.3} of the profile");
    let d = snap.dir(0, 1).expect("direction 0->1");
    assert_eq!(d.drops.total(), 0, "{d:?}");
    assert_eq!(got, 1000, "every frame arrives");
}

#[test]
fn delay_and_jitter_stay_in_their_bounds_and_order_is_kept() {
    // lte: 40 ms one way ± 5 ms. Small frames spaced 15 ms apart.
    let (link, devs) = start(2, Profile::lte());
    learn(&devs);
    let mut sent = Vec::new();
    let rx = devs[1].spawn_collect();
    for s in 0..40u32 {
        sent.push(Instant::now());
        devs[0].send(&frame(mac(1), 0, s, 100));
        std::thread::sleep(Duration::from_millis(15));
    }
    let got = rx.join().expect("receiver");
    assert_eq!(got.iter().map(|f| seq(&f.1)).collect::<Vec<_>>(), (0..40).collect::<Vec<_>>(), "all arrive, in order");
    let mut lat: Vec<f64> = got.iter().map(|(t, f)| (*t - sent[seq(f) as usize]).as_secs_f64() * 1e3).collect();
    lat.sort_by(f64::total_cmp);
    // Never earlier than the model allows (40 - 5 ms); late wake-ups on a
    // loaded machine only add.
    assert!(lat[0] >= 34.5, "a frame arrived after {:.1} ms: {lat:?}", lat[0]);
    let median = lat[lat.len() / 2];
    eprintln!("lte one-way delay: min {:.1} median {median:.1} max {:.1} ms", lat[0], lat[lat.len() - 1]);
    assert!((36.0..=60.0).contains(&median), "median one-way delay {median:.1} ms: {lat:?}");
    drop(link);
}

#[test]
fn jitter_never_reorders_a_fast_stream() {
    // 20 ms of jitter on 5 ms of delay, frames every ~0.2 ms: unconstrained
    // jitter would reorder most of them.
    let p = Profile::wifi().with_jitter(Duration::from_millis(20));
    let (link, devs) = start(2, p);
    learn(&devs);
    let rx = devs[1].spawn_collect();
    for s in 0..300u32 {
        devs[0].send(&frame(mac(1), 0, s, 200));
        if s % 20 == 19 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let got = rx.join().expect("receiver");
    let seqs: Vec<u32> = got.iter().map(|f| seq(&f.1)).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "out of order: {seqs:?}");
    let snap = link.snapshot();
    assert_eq!(snap.drops().total(), 0);
    assert_eq!(seqs.len(), 300, "lost at the test's own socket: {:?}", snap.devices[1].host_drops_out);
}

#[test]
fn cut_drops_everything_until_restored_in_flight_too() {
    let (link, devs) = start(3, Profile::lte());
    learn(&devs);
    // In flight when the cut comes (40 ms of delay): dropped as well.
    for s in 0..5 {
        devs[0].send(&frame(mac(1), 0, s, 100));
    }
    std::thread::sleep(Duration::from_millis(5));
    link.cut(0, 1).expect("cut");
    assert!(link.is_cut(0, 1) && link.is_cut(1, 0) && !link.is_cut(0, 2));
    for s in 5..10 {
        devs[0].send(&frame(mac(1), 0, s, 100));
        devs[1].send(&frame(mac(0), 1, s, 100));
        devs[0].send(&frame(mac(2), 0, s, 100)); // the other link still works
    }
    assert!(devs[1].collect(Duration::from_millis(150), Duration::from_secs(5)).is_empty());
    assert!(devs[0].collect(Duration::from_millis(50), Duration::from_secs(5)).is_empty());
    assert_eq!(devs[2].collect(Duration::from_millis(150), Duration::from_secs(5)).len(), 5);
    link.restore(0, 1).expect("restore");
    devs[0].send(&frame(mac(1), 0, 10, 100));
    let got = devs[1].collect(Duration::from_millis(150), Duration::from_secs(5));
    assert_eq!(got.iter().map(|f| seq(&f.1)).collect::<Vec<_>>(), vec![10]);
    let snap = link.snapshot();
    assert_eq!(snap.dir(0, 1).map(|d| d.drops.cut), Some(10), "5 in flight + 5 offered");
    assert_eq!(snap.dir(1, 0).map(|d| d.drops.cut), Some(5));

    // Isolating a device cuts all its links; rejoining restores them.
    link.isolate(2).expect("isolate");
    devs[0].send(&frame(mac(2), 0, 11, 100));
    devs[1].send(&frame(mac(2), 1, 11, 100));
    devs[0].send(&frame(mac(1), 0, 11, 100));
    assert!(devs[2].collect(Duration::from_millis(150), Duration::from_secs(5)).is_empty());
    assert_eq!(devs[1].collect(Duration::from_millis(150), Duration::from_secs(5)).len(), 1);
    link.rejoin(2).expect("rejoin");
    devs[1].send(&frame(mac(2), 1, 12, 100));
    assert_eq!(devs[2].collect(Duration::from_millis(150), Duration::from_secs(5)).len(), 1);
}

#[test]
fn scheduled_cut_and_restore() {
    let mut cfg = LinkConfig::new(2, quick());
    cfg.schedule = vec![(Duration::from_millis(300), Command::Cut(Links::All)), (Duration::from_millis(600), Command::Restore(Links::All))];
    let link = Link::start(cfg).expect("start");
    let devs: Vec<Dev> = (0..2).map(|i| Dev::new(&link, i)).collect();
    let rx = {
        let (b, h) = (devs[1].sock.try_clone().expect("clone"), link.handle());
        std::thread::spawn(move || {
            let mut at = Vec::new();
            let mut buf = [0u8; 100];
            while h.elapsed() < Duration::from_millis(1000) {
                if b.recv(&mut buf).is_ok() {
                    at.push(h.elapsed().as_millis());
                }
            }
            at
        })
    };
    let mut s = 0;
    while link.elapsed() < Duration::from_millis(900) {
        devs[0].send(&frame(BCAST, 0, s, 60));
        s += 1;
        std::thread::sleep(Duration::from_millis(10));
    }
    let ms = rx.join().expect("receiver");
    // Nothing arrives well inside the cut; frames arrive before and after.
    assert!(ms.iter().all(|&m| !(340..560).contains(&m)), "arrivals during the cut: {ms:?}");
    assert!(ms.iter().any(|&m| m < 290) && ms.iter().any(|&m| m > 650), "{ms:?}");
    let d = link.snapshot().dir(0, 1).expect("dir").clone();
    assert!(d.drops.cut >= 10, "{d:?}");
    assert_eq!(d.frames + d.drops.cut, u64::from(s));
}

#[test]
fn drop_next_n_drops_exactly_n() {
    let (link, devs) = start(2, quick());
    learn(&devs);
    link.drop_next(3, Filter::any()).expect("command");
    for s in 0..10 {
        devs[0].send(&frame(mac(1), 0, s, 100));
    }
    let got = devs[1].collect(Duration::from_millis(150), Duration::from_secs(5));
    assert_eq!(got.iter().map(|f| seq(&f.1)).collect::<Vec<_>>(), (3..10).collect::<Vec<_>>());
    assert_eq!(link.snapshot().dir(0, 1).map(|d| d.drops.command), Some(3));

    // Only TCP segments with payload, only on 0 -> 1.
    link.drop_next(1, Filter::tcp_payload(Links::Dir { from: 0, to: 1 })).expect("command");
    devs[0].send(&frame(mac(1), 0, 20, 100));
    devs[0].send(&tcp_frame(1, 0, b"record"));
    devs[0].send(&tcp_frame(1, 0, b"next"));
    let got = devs[1].collect(Duration::from_millis(150), Duration::from_secs(5));
    assert_eq!(got.len(), 2);
    assert_eq!(seq(&got[0].1), 20);
    assert!(got[1].1.ends_with(b"next"));
}

/// A tap records what one direction delivered, in order, and only that:
/// not frames dropped before delivery, not other directions.
#[test]
fn a_tap_records_one_direction_as_delivered() {
    let (link, devs) = start(3, quick());
    learn(&devs);
    let tap = link.tap(Links::Dir { from: 0, to: 1 }).expect("tap");
    assert!(link.tap(Links::Device(3)).is_err(), "a tap names devices that exist");
    link.drop_next(1, Filter::tcp_payload(Links::Dir { from: 0, to: 1 })).expect("command");
    devs[0].send(&tcp_frame(1, 0, b"dropped"));
    for s in 0..5 {
        devs[0].send(&frame(mac(1), 0, s, 100));
        devs[1].send(&frame(mac(0), 1, 100 + s, 100));
        devs[0].send(&frame(mac(2), 0, 200 + s, 100));
    }
    let got = devs[1].collect(Duration::from_millis(500), Duration::from_secs(5));
    let recorded: Vec<_> = tap.try_iter().collect();
    assert_eq!(recorded.iter().map(|t| seq(&t.data)).collect::<Vec<_>>(), (0..5).collect::<Vec<_>>());
    assert!(recorded.iter().all(|t| (t.from, t.to) == (0, 1)));
    assert_eq!(recorded.iter().map(|t| t.data.clone()).collect::<Vec<_>>(), got.into_iter().map(|f| f.1).collect::<Vec<_>>());
    // A tap whose receiver is gone is dropped and costs nothing.
    drop(tap);
    devs[0].send(&frame(mac(1), 0, 9, 100));
    let got = devs[1].collect(Duration::from_millis(500), Duration::from_secs(5));
    assert_eq!(got.iter().map(|f| seq(&f.1)).collect::<Vec<_>>(), [9]);
}

#[test]
fn bit_flip_happens_once_and_can_keep_tcp_checksums_valid() {
    let (link, devs) = start(2, quick());
    learn(&devs);
    let payload: Vec<u8> = (0..200u8).collect();
    let original = tcp_frame(1, 0, &payload);
    assert_eq!(checks(&original), (true, true), "the test's own frame is valid");

    // Checksums fixed: the corrupted segment would pass the receiver's TCP.
    link.flip_bit(Filter::tcp_payload(Links::Dir { from: 0, to: 1 }), FlipAt::Bit(13), true).expect("command");
    devs[0].send(&frame(mac(1), 0, 1, 100)); // not TCP: left alone
    devs[0].send(&tcp_frame(1, 0, b"")); // a bare ACK: no payload, left alone
    for _ in 0..3 {
        devs[0].send(&original);
    }
    let got = devs[1].collect(Duration::from_millis(150), Duration::from_secs(5));
    assert_eq!(got.len(), 5);
    assert_eq!(got[0].1, frame(mac(1), 0, 1, 100));
    assert_eq!(got[1].1, tcp_frame(1, 0, b""));
    let flipped = &got[2].1;
    let payload_at = 14 + 20 + 20;
    assert_eq!(bit_diff(&original[payload_at..], &flipped[payload_at..]), vec![13], "exactly payload bit 13");
    // Outside the payload only the TCP checksum changed.
    let tcp_sum = 14 + 20 + 16;
    assert_eq!(original[..tcp_sum], flipped[..tcp_sum]);
    assert_eq!(original[tcp_sum + 2..payload_at], flipped[tcp_sum + 2..payload_at]);
    assert_eq!(checks(flipped), (true, true), "checksums fixed up");
    assert_eq!(got[3].1, original, "only once");
    assert_eq!(got[4].1, original);

    // Raw: the TCP checksum no longer matches.
    link.flip_bit(Filter::tcp_payload(Links::All), FlipAt::Random, false).expect("command");
    devs[0].send(&original);
    devs[0].send(&original);
    let got = devs[1].collect(Duration::from_millis(150), Duration::from_secs(5));
    assert_eq!(got.len(), 2);
    let d = bit_diff(&original, &got[0].1);
    assert_eq!(d.len(), 1, "one bit: {d:?}");
    assert!(d[0] >= payload_at * 8, "in the payload: {d:?}");
    assert_eq!(checks(&got[0].1), (true, false), "TCP would reject it");
    assert_eq!(got[1].1, original);
    assert_eq!(link.snapshot().flipped(), 2);
}

#[test]
fn counters_add_up_with_random_loss() {
    let p = Profile::loopback().with_loss(0.25);
    let mut cfg = LinkConfig::new(3, p);
    cfg.seed = 42;
    let link = Link::start(cfg).expect("start");
    let devs: Vec<Dev> = (0..3).map(|i| Dev::new(&link, i)).collect();
    learn(&devs);
    let before = link.snapshot();
    let rx = devs[1].spawn_collect();
    let mut sent_bytes = 0;
    for s in 0..400u32 {
        let len = 60 + (s as usize * 7) % 1400;
        sent_bytes += len as u64;
        devs[0].send(&frame(mac(1), 0, s, len));
        if s % 50 == 49 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let got = rx.join().expect("receiver");
    let snap = link.snapshot();
    let (d0, d) = (before.dir(0, 1).expect("dir").clone(), snap.dir(0, 1).expect("dir"));
    let frames = d.frames - d0.frames;
    let lost = d.drops.loss - d0.drops.loss;
    assert_eq!(frames as usize, got.len());
    assert_eq!(frames + lost, 400, "delivered + lost = sent");
    assert!((60..140).contains(&lost), "25% of 400 lost, roughly: {lost}");
    let got_bytes: u64 = got.iter().map(|f| f.1.len() as u64).sum();
    assert_eq!(d.bytes - d0.bytes, got_bytes, "byte count = what arrived");
    assert!(got_bytes < sent_bytes);
    assert_eq!(snap.devices[0].bytes_in - before.devices[0].bytes_in, sent_bytes);
    let series = link.series();
    let s01: u64 = series.dirs.iter().find(|s| (s.0, s.1) == (0, 1)).map(|s| s.2.iter().sum()).unwrap_or(0);
    assert_eq!(s01, d.bytes, "the time series sums to the count");
    assert_eq!(series.total().iter().sum::<u64>(), snap.delivered_bytes());
    assert_eq!(snap.devices[0].host_drops_in.unwrap_or(0), 0);
    // Announcements were flooded to both others; nothing else reached 2.
    assert_eq!(snap.dir(0, 2).map(|d| d.frames + d.drops.loss), Some(1));
}

#[test]
fn profile_change_takes_effect() {
    let (link, devs) = start(2, quick());
    learn(&devs);
    link.set_profile(Links::Pair(0, 1), Profile::loopback().with_delay(Duration::from_millis(120))).expect("command");
    let t = Instant::now();
    devs[0].send(&frame(mac(1), 0, 1, 100));
    let got = devs[1].collect(Duration::from_millis(300), Duration::from_secs(5));
    assert_eq!(got.len(), 1);
    assert!(got[0].0 - t >= Duration::from_millis(119), "{:?}", got[0].0 - t);
    assert_eq!(link.snapshot().dir(1, 0).map(|d| d.profile.clone()), Some("loopback".into()));
}

#[test]
fn commands_name_devices_that_exist() {
    let (link, _devs) = start(2, quick());
    assert!(link.cut(0, 2).is_err());
    assert!(link.schedule(Duration::ZERO, Command::Cut(Links::Device(5))).is_err());
}

#[test]
fn qemu_arguments() {
    let (link, _devs) = start(2, quick());
    let args = link.qemu_net_args(1, link::device_mac(1));
    assert_eq!(
        args,
        vec![
            "-netdev".to_string(),
            format!(
                "dgram,id=n0,local.type=inet,local.host=127.0.0.1,local.port={},remote.type=inet,remote.host=127.0.0.1,remote.port={}",
                link.device_port(1),
                link.port(1)
            ),
            "-device".to_string(),
            "virtio-net-device,netdev=n0,mac=52:54:00:56:53:01".to_string(),
        ]
    );
}

/// QEMU 7.2 accepts the arguments and runs with them (no guest driver, so
/// no frames: the hypervisor's own tests carry frames end to end).
#[test]
fn qemu_starts_with_the_net_arguments() {
    if std::process::Command::new("qemu-system-aarch64").arg("--version").output().is_err() {
        eprintln!("qemu-system-aarch64 not installed; skipped");
        return;
    }
    let link = Link::start(LinkConfig::new(1, quick())).expect("start");
    let mut c = std::process::Command::new("qemu-system-aarch64");
    c.args(["-M", qemu_tests::MACHINE, "-cpu", qemu_tests::CPU, "-m", "64M", "-display", "none", "-monitor", "none", "-serial", "none", "-nic", "none", "-S"]);
    c.args(link.qemu_net_args(0, link::device_mac(0)));
    let out = qemu_tests::run(c, Duration::from_secs(2), &[], false).expect("starting QEMU");
    assert!(out.timed_out(), "QEMU exited with {:?}: {}", out.status, out.output);
    // QEMU's own errors and warnings start with its name.
    assert!(!out.output.contains("qemu-system-aarch64:"), "{}", out.output);
}

#[test]
fn tcp_proxy_shapes_a_stream_and_counts_it() {
    // 8 Mbit/s, 20 ms each way.
    let p = Profile::wifi().with_rate(Some(8_000_000)).with_delay(Duration::from_millis(20)).with_jitter(Duration::ZERO);
    let server = TcpListener::bind("127.0.0.1:0").expect("bind");
    let target = server.local_addr().expect("addr");
    let proxy = link::tcp_proxy(target, p).expect("proxy");
    const TOTAL: usize = 1_000_000;
    let sink = std::thread::spawn(move || {
        let (mut s, _) = server.accept().expect("accept");
        let mut buf = vec![0u8; 65536];
        // A round trip first: the model's delay both ways.
        let mut ping = [0u8; 4];
        s.read_exact(&mut ping).expect("ping");
        s.write_all(b"pong").expect("pong");
        let mut n = 0;
        let mut first = None;
        let mut sum = 0u64;
        while n < TOTAL {
            let k = s.read(&mut buf).expect("read");
            assert!(k > 0, "stream ended early at {n}");
            first.get_or_insert_with(Instant::now);
            sum += buf[..k].iter().map(|&b| u64::from(b)).sum::<u64>();
            n += k;
        }
        let span = first.map(|f| f.elapsed()).unwrap_or_default();
        s.write_all(b"done").expect("reply");
        (span, sum)
    });
    let mut c = TcpStream::connect(("127.0.0.1", proxy.port())).expect("connect");
    let t = Instant::now();
    c.write_all(b"ping").expect("ping");
    let mut pong = [0u8; 4];
    c.read_exact(&mut pong).expect("pong");
    let rtt = t.elapsed();
    assert_eq!(&pong, b"pong");
    assert!(rtt >= Duration::from_millis(40), "round trip {rtt:?} through 2 x 20 ms");
    let data: Vec<u8> = (0..TOTAL).map(|i| (i % 251) as u8).collect();
    c.write_all(&data).expect("send");
    let mut done = [0u8; 4];
    c.read_exact(&mut done).expect("done");
    let (span, sum) = sink.join().expect("sink");
    assert_eq!(sum, data.iter().map(|&b| u64::from(b)).sum::<u64>(), "bytes intact");
    // The link carries payload plus 66 header bytes per 1448-byte segment.
    let expect = 1_000_000.0 * 1448.0 / (1448.0 + 66.0);
    let rate = TOTAL as f64 / span.as_secs_f64();
    let ratio = rate / expect;
    eprintln!("proxy: rtt {rtt:?}, {rate:.0} B/s, {ratio:.3} of the model");
    assert!((0.85..=1.15).contains(&ratio), "stream at {rate:.0} B/s, {ratio:.3} of the model's {expect:.0}");
    let snap = proxy.stop();
    assert_eq!(snap.connections, 1);
    assert_eq!(snap.up.bytes, (TOTAL + 4) as u64);
    assert_eq!(snap.down.bytes, 8);
    assert!(snap.up.frame_bytes >= snap.up.bytes + 66 * (TOTAL as u64 / 1448));
    assert_eq!(snap.up.series.iter().sum::<u64>(), snap.up.bytes);
}
