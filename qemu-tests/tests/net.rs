//! The hypervisor's own network: two QEMU devices wired directly to each
//! other (`-netdev socket`, one listening, one connecting, no link
//! emulator), each hypervisor driving its virtio-net device with smoltcp.
//! With `net_test` in the config the hypervisors run a TCP transfer instead
//! of the guest: the client sends N MiB of a pattern, the server counts and
//! checks it.
use qemu_tests::{host_mem_mib, qemu_command, run, Assets, RunOutput};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Transfer size; `VMSYNC_NET_TEST_MIB` overrides it for measurements.
const MIB: u64 = 8;

fn mib() -> u64 {
    std::env::var("VMSYNC_NET_TEST_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(MIB)
}

/// The test mode needs no guest RAM; the smallest the config accepts.
const MEM_MIB: u64 = 64;
const DEADLINE: Duration = Duration::from_secs(240);
const SERVER_IP: &str = "169.254.0.1";

/// The two-device test runs two QEMUs: never run another beside it (the
/// suite's budget is two emulated CPUs at once).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a free port");
    l.local_addr().expect("its address").port()
}

/// One device with a virtio-net NIC on a socket netdev (`listen=` or
/// `connect=` 127.0.0.1:port).
fn device(image: &Path, socket: &str, mac: &str) -> Command {
    let mut c = qemu_command(image, host_mem_mib(MEM_MIB));
    // `qemu_command` passes `-nic none`, which only drops the default PCI
    // NIC: an explicit virtio-mmio NIC is still plugged.
    c.args(["-netdev", &format!("socket,id=n0,{socket}"), "-device", &format!("virtio-net-device,netdev=n0,mac={mac}")]);
    c
}

fn net_test_image(a: &Assets, name: &str, ip: &str, role: &str) -> std::path::PathBuf {
    let extra = format!("net_ip={ip}/16\nnet_test={role}\nnet_test_mib={}\n", mib());
    a.image_with(name, &a.hypervisor, "console=ttyAMA0", MEM_MIB, &extra)
}

/// Whether something listens on 127.0.0.1:`port` (from /proc/net/tcp: a
/// probe connection would be taken as the peer, a probe bind would steal
/// the port).
fn listening(port: u16) -> bool {
    let want = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .map(|t| {
            t.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 3 && f[1] == want && f[3] == "0A"
            })
        })
        .unwrap_or(false)
}

/// Boots the listening server, then, once its socket listens, the client.
/// (QEMU 7.2's `connect=` fails silently when it races the listener: the
/// link stays down and every frame is dropped.)
fn two_devices() -> (RunOutput, RunOutput) {
    let a = Assets::from_env();
    let server_img = net_test_image(&a, "net-server.img", SERVER_IP, "server");
    let client_img = net_test_image(&a, "net-client.img", "169.254.0.2", &format!("client:{SERVER_IP}"));
    let port = free_port();
    let server_cmd = device(&server_img, &format!("listen=127.0.0.1:{port}"), "52:54:00:00:00:01");
    let server = std::thread::spawn(move || run(server_cmd, DEADLINE, &[], false).expect("starting the server's QEMU"));
    let start = std::time::Instant::now();
    while !listening(port) && start.elapsed() < Duration::from_secs(30) && !server.is_finished() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let client = run(device(&client_img, &format!("connect=127.0.0.1:{port}"), "52:54:00:00:00:02"), DEADLINE, &[], false).expect("starting the client's QEMU");
    (server.join().expect("server thread"), client)
}

fn figure<'a>(out: &'a RunOutput, pat: &'a str) -> &'a str {
    out.lines_with(pat).next().unwrap_or_else(|| panic!("no `{pat}` line:\n{}", out.tail()))
}

#[test]
#[cfg_attr(not(vmsync_test_assets), ignore = "boots QEMU: run it with `cargo xtask test`")]
fn two_devices_move_bytes_over_tcp() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (server, client) = two_devices();
    let both = format!("--- server:\n{}\n--- client:\n{}", server.tail(), client.tail());
    for (who, out) in [("server", &server), ("client", &client)] {
        assert!(!out.timed_out(), "{who}: no power-off within {DEADLINE:?}:\n{both}");
        assert!(out.exited_ok(), "{who}: QEMU status {:?}:\n{both}", out.status);
        assert!(out.output.contains("vmsync: net: virtio-net at 0x"), "{who}: the NIC was not found:\n{both}");
        assert!(!out.output.contains("net-test failed"), "{who}:\n{both}");
        assert!(!out.output.contains("hypervisor panic"), "{who}:\n{both}");
    }
    let bytes = mib() << 20;
    let got = figure(&server, "vmsync: net-test received");
    assert!(got.contains(&format!("received {bytes} bytes")), "server byte count: {got}");
    assert!(got.ends_with("pattern ok"), "server pattern check: {got}");
    let sent = figure(&client, "vmsync: net-test sent");
    assert!(sent.contains(&format!("sent {bytes} bytes")), "client byte count: {sent}");
    // No guest ran on either device.
    assert!(!server.output.contains("Linux version") && !client.output.contains("Linux version"));
    eprintln!("{got}\n{sent}");
}

/// Today's single-device boots are unchanged: no NIC, networking off, one line.
#[test]
#[cfg_attr(not(vmsync_test_assets), ignore = "boots QEMU: run it with `cargo xtask test`")]
fn no_nic_means_networking_off() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let a = Assets::from_env();
    let img = a.image_with("net-none.img", &a.hypervisor, "console=ttyAMA0", MEM_MIB, "net_ip=169.254.0.1\nnet_test=server\n");
    let out = run(qemu_command(&img, host_mem_mib(MEM_MIB)), Duration::from_secs(60), &[], false).expect("starting QEMU");
    assert!(out.exited_ok(), "QEMU status {:?}:\n{}", out.status, out.tail());
    assert_eq!(out.lines_with("vmsync: net: no virtio-net device: networking off").count(), 1, "{}", out.tail());
    assert!(out.output.contains("net-test failed: the network is off"), "{}", out.tail());
}
