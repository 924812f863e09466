//! Issue 15's big guests, tens of minutes under TCG: run with `cargo xtask
//! test --long` (listed as ignored otherwise; an ignore attribute cannot be
//! given twice, hence `all(assets, not(long))` for the second). Each prints its figures
//! (`long: ...` lines on stderr; run with `--nocapture` to see them).
use qemu_tests::devices::{device_config, run_scripted, DevicesControl, SwitchOutcome};
use qemu_tests::link::{Profile, Snapshot};
use qemu_tests::multi::{self, Control};
use qemu_tests::{digests, host_mem_mib, lag_summary, peer_stat, Assets};
use std::time::Duration;

const SECRET: &str = "7e7e7e7e7e7e7e7e7e7e7e7e7e7e7e7e7e7e7e7e7e7e7e7e7e7e7e7e7e7e7e7e";

/// One big run at a time: each is two emulated CPUs and gigabytes.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

fn to_device(s: &Snapshot, i: usize) -> u64 {
    s.dirs.iter().filter(|d| d.to == i).map(|d| d.bytes).sum()
}

/// A standby joins a running 512 MiB guest whose memory is mostly written
/// with incompressible bytes (the `burst` workload over 384 MiB): its link
/// is down until the writer has stopped, then it catches up over wifi
/// (every page owed, streamed as the link drains), commits, and its
/// digests match; it is never dropped or reconnected.
#[test]
#[cfg_attr(not(vmsync_test_assets), ignore = "boots QEMU: run it with `cargo xtask test`")]
#[cfg_attr(all(vmsync_test_assets, not(vmsync_test_long)), ignore = "long: cargo xtask test --long")]
fn a_new_standby_catches_up_with_a_512_mib_guest_of_incompressible_data() {
    const MEM_MIB: u64 = 512;
    const BURST_MIB: u64 = 384;
    // Under TCG the writer manages about 3.5 MiB/s (69 MiB in 20 s): it
    // needs about two minutes to write most of the region.
    const WRITE_S: u64 = 120;
    const SECONDS: u64 = 400;
    // The link comes up this long after the devices start: the guest has
    // booted and the writer has stopped by then (checked below).
    const JOIN_AT: Duration = Duration::from_secs(200);
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let a = Assets::from_env();
    let args = format!("--mib,{BURST_MIB},--start-seconds,0,--write-seconds,{WRITE_S}");
    let cmdline = &format!("console=ttyAMA0 vmsync.workload=burst vmsync.seconds={SECONDS} vmsync.args={args}");
    let config = format!("policy=interval:200ms\n{}", multi::active_config(2, SECRET));
    let active = a.image_with("join512-a.img", &a.hypervisor, cmdline, MEM_MIB, &config);
    let standby = a.image_with("join512-1.img", &a.hypervisor, cmdline, MEM_MIB, &multi::standby_config(1, SECRET));
    let script = Box::new(|c: &Control| {
        c.link.isolate(1).expect("isolating the standby");
        while c.link.elapsed() < JOIN_AT {
            std::thread::sleep(Duration::from_millis(200));
        }
        c.link.rejoin(1).expect("the standby's link up");
    });
    let r = multi::run_scripted(&active, &[standby.as_path()], host_mem_mib(MEM_MIB), Profile::wifi(), Duration::from_secs(SECONDS + 600), false, Some(script))
        .expect("starting the devices");
    let out = &r.active.output;
    let _ = std::fs::write(active.with_file_name("join512-active.log"), out);
    assert!(!r.active.timed_out(), "the active device did not power off:\n{}", r.active.tail());
    assert!(out.contains("vmsync-guest: workload burst end rc=0"), "the guest's workload did not finish:\n{}", r.active.tail());
    assert!(!out.contains("heap region") && !out.contains("OutOfMemory"), "an allocation failed:\n{}", r.active.tail());
    let lines: Vec<&str> = out.lines().collect();
    let wrote = lines.iter().rposition(|l| l.contains("writing=true")).expect("the writer never wrote");
    let joined = lines.iter().position(|l| l.contains("sync: standby 1 at ")).expect("the standby never connected");
    assert!(joined > wrote, "the standby joined before the writer stopped: not the case under test");
    let written_mib = lines[wrote].split_whitespace().find_map(|kv| kv.strip_prefix("written_mib=")?.parse::<u64>().ok()).unwrap_or(0);
    assert!(written_mib >= MEM_MIB / 2, "the writer wrote only {written_mib} MiB: the guest's memory is not mostly incompressible");
    assert_eq!(peer_stat(out, 1, "reconnects"), Some(0), "the standby reconnected:\n{}", r.active.tail());
    assert_eq!(peer_stat(out, 1, "full_resyncs"), Some(0));
    // Every commit matches the active device at its epoch; the last cut too.
    let active_d = digests(out);
    let commits = digests(&r.standbys[0]);
    assert!(!commits.is_empty(), "the standby committed nothing:\n{}", tail(&r.standbys[0]));
    for (e, d) in &commits {
        assert_eq!(active_d.iter().find(|(ae, _)| ae == e).map(|(_, d)| d), Some(d), "epoch {e}: digests differ");
    }
    assert_eq!(commits.last().map(|c| c.0), active_d.last().map(|c| c.0), "the standby did not get the last epoch");
    // Figures: what the link carried against what was owed, and how long it took.
    let lag = lag_summary([out.as_str()], 1);
    let first_lag = out.lines().filter_map(|l| sync_core::lag::parse_lag_line(l).ok()).find(|l| l.standby == 1);
    let owed = peer_stat(out, 1, "owed_pages").unwrap_or(0);
    let took_ms = lag.caught_up_at_ms.zip(first_lag.map(|l| l.at_ms)).map(|(b, a)| b - a);
    eprintln!(
        "long: join 512 MiB ({written_mib} MiB written): owed {owed} pages ({} MiB), link carried {} bytes to the standby, catch-up bytes {:?}, streamed {:?} + final {:?} pages, max lag {} bytes, caught up at {:?} ms, catch-up took {:?} ms",
        (owed * 4096) >> 20,
        to_device(&r.snapshot, 1),
        peer_stat(out, 1, "catchup_bytes"),
        peer_stat(out, 1, "streamed_pages"),
        peer_stat(out, 1, "final_pages"),
        lag.max_lag_bytes,
        lag.caught_up_at_ms,
        took_ms,
    );
    assert!(owed * 4096 >= BURST_MIB << 20, "only {owed} pages owed: the written memory was not part of the join");
    assert!(lag.caught_up_at_ms.is_some(), "no lag line says the standby got in step");
}

/// Phone-sized memory: a 2 GiB guest on two devices over wifi boots, takes
/// its initial copy and moves to the other device and back; neither
/// hypervisor runs out of memory (each holds a full shadow or staging of
/// the guest: QEMU gets `host_mem_mib`, room for that).
#[test]
#[cfg_attr(not(vmsync_test_assets), ignore = "boots QEMU: run it with `cargo xtask test`")]
#[cfg_attr(all(vmsync_test_assets, not(vmsync_test_long)), ignore = "long: cargo xtask test --long")]
fn a_2_gib_guest_takes_its_initial_copy_and_switches_over_wifi() {
    const MEM_MIB: u64 = 2048;
    const SECONDS: u64 = 60;
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let a = Assets::from_env();
    let cmdline = format!("console=ttyAMA0 vmsync.workload=video vmsync.seconds={SECONDS}");
    let imgs: Vec<_> = (0..2)
        .map(|i| {
            let config = format!("policy=interval:200ms\n{}", device_config(i, 2, 0, SECRET));
            a.image_with(&format!("big2g-{i}.img"), &a.hypervisor, &cmdline, MEM_MIB, &config)
        })
        .collect();
    let refs: Vec<&std::path::Path> = imgs.iter().map(|p| p.as_path()).collect();
    let wait_commits = |c: &DevicesControl, d: usize| {
        let n = c.count(d, "vmsync: standby committed epoch=");
        assert!(
            c.wait_for(d, Duration::from_secs(600), |o| o.matches("vmsync: standby committed epoch=").count() > n + 2),
            "device {d} commits nothing:\n{}",
            tail(&c.output(d))
        );
    };
    let r = run_scripted(&refs, host_mem_mib(MEM_MIB), Profile::wifi(), Duration::from_secs(1800), false, |c| {
        assert!(c.wait_for(0, Duration::from_secs(600), |o| o.contains("vmsync-workload: counter=")), "the workload never ran:\n{}", tail(&c.output(0)));
        wait_commits(c, 1);
        assert_eq!(c.switch_and_wait(1, Duration::from_secs(120)), SwitchOutcome::In, "switch to device 1:\n{}", tail(&c.output(1)));
        wait_commits(c, 0);
        assert_eq!(c.switch_and_wait(0, Duration::from_secs(120)), SwitchOutcome::In, "switch back to device 0:\n{}", tail(&c.output(0)));
    })
    .expect("starting the devices");
    for (i, o) in r.outputs.iter().enumerate() {
        let _ = std::fs::write(imgs[i].with_file_name(format!("big2g-{i}.log")), o);
        assert!(!o.contains("heap region") && !o.contains("OutOfMemory") && !o.contains("fatal:"), "device {i} ran out of memory or stopped:\n{}", tail(o));
    }
    assert!(!r.timed_out, "the guest did not power off in time");
    assert!(r.powered_off_ok(), "the guest did not power off cleanly: {:?} {:?}", r.powered_off, r.statuses);
    let t = r.timeline();
    assert_eq!(t.holders(), [0, 1, 0], "who ran the guest: {t:#?}");
    assert!(t.switches.iter().all(|s| s.digest_match), "{:?}", t.switches);
    let heap: Vec<String> = r.outputs.iter().filter_map(|o| o.lines().rev().find(|l| l.contains("vmsync: heap ")).map(str::to_owned)).collect();
    eprintln!("long: 2 GiB: switches {:?}; heap lines {heap:?}", t.switches.iter().map(|s| s.latency_ms).collect::<Vec<_>>());
}
