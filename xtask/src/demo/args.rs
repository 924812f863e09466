//! The demo's command line and its checks. Values that do not parse are
//! refused by clap's value parsers (`crate::cli`); what only makes sense
//! together, or needs a look at a file, is refused by [`DemoArgs::check`]
//! with a one-line clap error (exit code 2), before anything is built or
//! booted.
use clap::error::ErrorKind;
use clap::Args;
use qemu_tests::link::Profile;
use std::path::{Path, PathBuf};
use sync_core::policy::PolicySpec;

use crate::{cli, image, switching};

/// The most devices the demo boots (each is a QEMU with 4× the guest's RAM).
pub const MAX_DEVICES: usize = 4;

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Number of devices, 1 to 4. Device 0 starts with the guest, the
    /// others are standbys kept in sync over the emulated link. With 2 or
    /// more, unless --switch-at, --failover-at or --no-switch says
    /// otherwise, the guest moves to device 1 halfway through the workload
    /// and back to device 0 at 85 % of it. 1: the single device of old.
    #[arg(long, default_value = "2", value_parser = devices, value_name = "N")]
    pub devices: usize,
    /// Link profile between the devices: loopback, wifi (50 Mbit/s,
    /// 5 ms), lte (10 Mbit/s, 40 ms), bt (2 Mbit/s, 30 ms); options as
    /// in `lte,loss=1%,jitter=2`.
    #[arg(long, default_value = "wifi", value_parser = cli::link)]
    pub link: Profile,
    /// Guest workload: video, storage, browse, idle, counter, memtouch or
    /// burst (incompressible writes, then idle).
    #[arg(long, default_value = "video", value_parser = cli::synthetic_workload, conflicts_with = "workload_exec")]
    pub workload: String,
    /// Run this static arm64 Linux program (copied into the initramfs) as
    /// the workload, with the arguments that follow it. Put it last.
    #[arg(long, num_args = 1.., allow_hyphen_values = true, value_name = "PATH [ARGS]")]
    pub workload_exec: Option<Vec<String>>,
    /// How long the workload runs, in seconds.
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// Epoch policy: interval:<duration>, threshold:<size>, adaptive,
    /// switch-only, or off (one device only).
    // The full path keeps clap from reading `Option` as "may be absent".
    #[arg(long, default_value = "interval:200ms", value_parser = cli::policy_or_off)]
    pub policy: std::option::Option<PolicySpec>,
    /// Keep a second image built only from the encoded epochs and check
    /// it against guest RAM at every cut.
    #[arg(long)]
    pub verify: bool,
    /// Shadow budget of the active device: percent of guest RAM (1 to 100)
    /// or full. Pages beyond it are sent whole. [default: the
    /// hypervisor's, 25]
    #[arg(long, value_parser = cli::shadow, value_name = "P")]
    pub shadow: Option<u8>,
    /// Write the JSON report here (default target/vmsync/report.json).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Guest RAM in MiB.
    #[arg(long, default_value_t = 256)]
    pub mem: u64,
    /// Move the running guest to another device at these times (seconds
    /// since the devices started, comma-separated) instead of the default
    /// plan. Each sends the hypervisor's switch command (Ctrl-] "switch")
    /// to the target's console, by default the next device round robin
    /// after the one running the guest. The command fails if a switch's
    /// digests differ, the guest rebooted or a requested switch did not
    /// happen. Needs --devices 2 or more.
    #[arg(long, value_delimiter = ',', value_name = "S[,S...]")]
    pub switch_at: Vec<f64>,
    /// The target device (0-based) of each --switch-at, in time order.
    #[arg(long, value_delimiter = ',', value_name = "I[,I...]", requires = "switch_at")]
    pub switch_to: Vec<usize>,
    /// At this time (seconds since the start) kill the QEMU of the device
    /// running the guest (unless --partition-at cut it off: then it runs
    /// on) and tell the next device (round robin) that is not cut off to
    /// take over from its last committed epoch (Ctrl-] "failover").
    #[arg(long, value_name = "S")]
    pub failover_at: Option<f64>,
    /// At S seconds (since the start) the link emulator cuts every link of
    /// device I (0-based), both ways. A --failover-at while I runs the
    /// guest leaves it running, unaware, as a real one would be (its QEMU
    /// is not killed), and hands the guest to a device that can still
    /// reach the others; then --heal-at is needed. A partition or a
    /// failover first waits for every standby it needs to commit its first
    /// epoch (the steps after it move by that wait).
    #[arg(long, value_parser = cli::partition_at, value_name = "S:I")]
    pub partition_at: Option<cli::PartitionAt>,
    /// At S seconds restore the links --partition-at cut. A device that ran
    /// the guest cut off must then stop it within 30 s (fenced by the
    /// higher term) and never run it again: the command fails if two
    /// devices ran the guest at once after the heal.
    #[arg(long, value_name = "S")]
    pub heal_at: Option<f64>,
    /// With 2 or more devices: no switch; the guest stays on device 0 and
    /// the others follow it as standbys (the report gains `standbys`).
    #[arg(long, conflicts_with_all = ["switch_at", "switch_to", "failover_at", "partition_at", "heal_at"])]
    pub no_switch: bool,
    /// Show the devices' consoles here as they come, each line prefixed
    /// [dK] (they always go to target/vmsync/demo-device-K.log).
    #[arg(long)]
    pub console: bool,
}

/// `--devices`: 1 to [`MAX_DEVICES`].
fn devices(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if (1..=MAX_DEVICES).contains(&n) => Ok(n),
        _ => Err(format!("1 to {MAX_DEVICES} devices (device 0 runs the guest, the others are standbys)")),
    }
}

/// The workload the guest runs.
#[derive(Clone, Debug, PartialEq)]
pub enum Workload {
    /// One the guest's `vmsync-workload` carries.
    Named(String),
    /// A program copied into the initramfs, with its arguments.
    Exec { path: PathBuf, args: Vec<String> },
}

/// How the devices run.
#[derive(Clone, Debug, PartialEq)]
pub enum Mode {
    /// One device, no link.
    One,
    /// Device 0 keeps the guest; the others follow.
    Follow,
    /// Every device can run the guest; it moves as planned.
    Switch(switching::Plan),
}

/// The demo's arguments once checked.
#[derive(Clone, Debug)]
pub struct Demo {
    pub devices: usize,
    pub link: Profile,
    pub workload: Workload,
    pub seconds: u64,
    pub policy: Option<PolicySpec>,
    pub verify: bool,
    /// Percent of guest RAM kept as shadows (None: the hypervisor's default).
    pub shadow: Option<u8>,
    pub report: PathBuf,
    pub mem: u64,
    pub mode: Mode,
    pub console: bool,
}

impl Demo {
    /// The policy as the image's config and the report spell it.
    pub fn policy_text(&self) -> String {
        self.policy.map(|p| p.to_string()).unwrap_or_else(|| "off".into())
    }
}

/// A usage error: clap prints `error: <message>` on one line and exits 2.
fn refuse(kind: ErrorKind, message: impl std::fmt::Display) -> clap::Error {
    use clap::CommandFactory;
    clap::Error::raw(kind, format!("{message}\n")).with_cmd(&crate::Cli::command())
}

impl DemoArgs {
    /// Everything the parsers could not see on their own; a clap error
    /// (exit code 2) for the first problem.
    pub fn check(self) -> Result<Demo, clap::Error> {
        let explicit = !self.switch_at.is_empty() || self.failover_at.is_some() || self.partition_at.is_some() || self.heal_at.is_some();
        let mode = if explicit {
            let steps = switching::Steps {
                switch_at: &self.switch_at,
                switch_to: &self.switch_to,
                failover_at: self.failover_at,
                partition_at: self.partition_at,
                heal_at: self.heal_at,
            };
            let actions = switching::plan(self.devices, &steps).map_err(|e| refuse(ErrorKind::ValueValidation, e))?;
            Mode::Switch(switching::Plan { actions, clock: switching::Clock::DevicesStart })
        } else if self.devices == 1 {
            Mode::One
        } else if self.no_switch {
            Mode::Follow
        } else {
            Mode::Switch(switching::default_plan(self.seconds))
        };
        if self.policy.is_none() {
            if self.verify {
                return Err(refuse(ErrorKind::ArgumentConflict, "--verify checks the epochs: it needs a --policy other than off"));
            }
            if self.devices > 1 {
                return Err(refuse(
                    ErrorKind::ArgumentConflict,
                    format!("--devices {} keeps standbys in sync: it needs a --policy other than off", self.devices),
                ));
            }
        }
        let workload = match self.workload_exec {
            None => Workload::Named(self.workload),
            Some(v) => {
                let (path, args) = v.split_first().ok_or_else(|| refuse(ErrorKind::InvalidValue, "--workload-exec needs a program"))?;
                exec_program(Path::new(path), args).map_err(|why| refuse(ErrorKind::ValueValidation, format!("--workload-exec {path}: {why}")))?;
                Workload::Exec { path: path.into(), args: args.to_vec() }
            }
        };
        Ok(Demo {
            devices: self.devices,
            link: self.link,
            workload,
            seconds: self.seconds,
            policy: self.policy,
            verify: self.verify,
            shadow: self.shadow,
            report: self.report.unwrap_or_else(|| image::out_dir().join("report.json")),
            mem: self.mem,
            mode,
            console: self.console,
        })
    }
}

/// Why `path` with `args` cannot be the guest's workload program.
pub fn exec_program(path: &Path, args: &[String]) -> Result<(), String> {
    if args.iter().any(|a| a.contains(',') || a.contains(char::is_whitespace)) {
        return Err("its arguments may not contain ',' or spaces (they travel on the kernel command line)".into());
    }
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))?;
    static_arm64(&bytes)
}

const EM_AARCH64: u16 = 183;
const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;
const PT_INTERP: u32 = 3;

/// Whether an ELF file is a program the guest can run alone: 64-bit,
/// little-endian, arm64, an executable (or a static PIE), with no
/// interpreter (`PT_INTERP`), since the guest has no libraries.
pub fn static_arm64(b: &[u8]) -> Result<(), String> {
    let u16_at = |o: usize| b.get(o..o + 2).map(|s| u16::from_le_bytes([s[0], s[1]]));
    let u32_at = |o: usize| b.get(o..o + 4).map(|s| u32::from_le_bytes(s.try_into().expect("4 bytes")));
    let u64_at = |o: usize| b.get(o..o + 8).map(|s| u64::from_le_bytes(s.try_into().expect("8 bytes")));
    if !b.starts_with(b"\x7fELF") {
        return Err("not an ELF program (a static arm64 Linux executable is needed)".into());
    }
    match b.get(4) {
        Some(2) => {}
        Some(1) => return Err("a 32-bit ELF program; the guest runs 64-bit arm64 ones".into()),
        _ => return Err("an ELF file of unknown class".into()),
    }
    if b.get(5) != Some(&1) {
        return Err("a big-endian ELF program; the guest runs little-endian arm64 ones".into());
    }
    let machine = u16_at(18).ok_or("a truncated ELF header")?;
    if machine != EM_AARCH64 {
        let name = match machine {
            62 => "x86-64".to_string(),
            3 => "x86".to_string(),
            40 => "32-bit Arm".to_string(),
            243 => "RISC-V".to_string(),
            m => format!("machine {m}"),
        };
        return Err(format!("built for {name}; the guest runs arm64 (AArch64) programs"));
    }
    let kind = u16_at(16).ok_or("a truncated ELF header")?;
    if kind != ET_EXEC && kind != ET_DYN {
        return Err("an ELF file that is not an executable (an object file or core dump?)".into());
    }
    let (phoff, phentsize, phnum) = match (u64_at(32), u16_at(54), u16_at(56)) {
        (Some(o), Some(s), Some(n)) => (o as usize, s as usize, n as usize),
        _ => return Err("a truncated ELF header".into()),
    };
    for i in 0..phnum {
        let at = phentsize.checked_mul(i).and_then(|x| x.checked_add(phoff)).ok_or("a corrupt program header table")?;
        if u32_at(at).ok_or("a truncated program header table")? == PT_INTERP {
            return Err(
                "dynamically linked (it names an interpreter); the guest has no libraries: link it statically, e.g. for aarch64-unknown-linux-musl".into()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cli, Cmd};
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<DemoArgs, clap::Error> {
        let cli = Cli::try_parse_from(["cargo xtask", "demo"].iter().chain(args))?;
        match cli.cmd {
            Cmd::Demo(a) => Ok(a),
            _ => unreachable!("parsed as demo"),
        }
    }

    fn checked(args: &[&str]) -> Result<Demo, clap::Error> {
        parse(args)?.check()
    }

    /// The rendered error of a refused command line, checked to exit 2.
    fn refused(args: &[&str]) -> String {
        let e = checked(args).expect_err("refused");
        assert_eq!(e.exit_code(), 2, "{e}");
        e.render().to_string()
    }

    /// A minimal 64-bit little-endian ELF header with program headers of
    /// the given types.
    fn elf(machine: u16, kind: u16, phdrs: &[u32]) -> Vec<u8> {
        let mut b = vec![0u8; 64];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[16..18].copy_from_slice(&kind.to_le_bytes());
        b[18..20].copy_from_slice(&machine.to_le_bytes());
        b[32..40].copy_from_slice(&64u64.to_le_bytes());
        b[54..56].copy_from_slice(&56u16.to_le_bytes());
        b[56..58].copy_from_slice(&(phdrs.len() as u16).to_le_bytes());
        for t in phdrs {
            let mut ph = vec![0u8; 56];
            ph[..4].copy_from_slice(&t.to_le_bytes());
            b.extend(ph);
        }
        b
    }

    #[test]
    fn the_default_is_two_devices_over_wifi_going_and_coming_back() {
        let d = checked(&[]).unwrap();
        assert_eq!(d.devices, 2);
        assert_eq!(d.link.name, "wifi");
        assert_eq!(d.workload, Workload::Named("video".into()));
        assert_eq!(d.mode, Mode::Switch(switching::default_plan(20)));
        assert_eq!(d.policy_text(), "interval:200ms");
        assert!(!d.console);
        assert_eq!(checked(&["--devices", "1"]).unwrap().mode, Mode::One);
        assert_eq!(checked(&["--devices", "3", "--no-switch"]).unwrap().mode, Mode::Follow);
        let Mode::Switch(p) = checked(&["--devices", "3", "--switch-at", "30,40", "--switch-to", "2,0"]).unwrap().mode else { panic!("a switching run") };
        assert_eq!(p.clock, switching::Clock::DevicesStart);
        let Mode::Switch(p) = checked(&["--devices", "3", "--partition-at", "20:0", "--failover-at", "22", "--heal-at", "35"]).unwrap().mode else {
            panic!("a switching run")
        };
        assert_eq!(p.actions.len(), 3);
        assert_eq!(p.clock, switching::Clock::DevicesStart);
        assert_eq!(checked(&["--devices", "1", "--policy", "off"]).unwrap().policy, None);
    }

    #[test]
    fn bad_values_are_refused_by_the_parsers() {
        let e = refused(&["--workload", "vidoe"]);
        assert!(e.starts_with("error: invalid value 'vidoe' for '--workload <WORKLOAD>': unknown workload; the workloads: video,"), "{e}");
        let e = refused(&["--workload", "sqlite"]);
        assert!(e.contains("sqlite runs in the study's guest only"), "{e}");
        let e = refused(&["--policy", "interval:soon"]);
        assert!(e.contains("the value must start with a decimal number"), "{e}");
        let e = refused(&["--link", "5g"]);
        assert!(e.contains("unknown link profile \"5g\""), "{e}");
        let e = refused(&["--devices", "0"]);
        assert!(e.starts_with("error: invalid value '0' for '--devices <N>': 1 to 4 devices"), "{e}");
        let e = refused(&["--devices", "5"]);
        assert!(e.contains("1 to 4 devices"), "{e}");
    }

    #[test]
    fn what_only_makes_sense_together_is_refused_on_one_line() {
        let one_line = |e: String| {
            assert_eq!(e.lines().count(), 1, "{e}");
            e
        };
        let e = one_line(refused(&["--devices", "1", "--switch-at", "10"]));
        assert_eq!(e, "error: --switch-at, --failover-at and --partition-at need --devices 2 or more\n");
        let e = one_line(refused(&["--devices", "3", "--heal-at", "30"]));
        assert_eq!(e, "error: --heal-at restores the links --partition-at cuts: it needs --partition-at\n");
        let e = one_line(refused(&["--devices", "3", "--partition-at", "20:0", "--failover-at", "22"]));
        assert!(e.contains("device 0 running the guest cut off to the end: --heal-at must end the partition"), "{e}");
        let e = one_line(refused(&["--devices", "3", "--partition-at", "20:3", "--heal-at", "30"]));
        assert!(e.contains("--partition-at 20:3: devices are 0 to 2"), "{e}");
        let e = one_line(refused(&["--devices", "3", "--partition-at", "20:0", "--heal-at", "10"]));
        assert!(e.contains("--heal-at 10 must come after the partition at 20 s"), "{e}");
        // The value parser's own errors, as clap words them.
        let e = refused(&["--devices", "3", "--partition-at", "20"]);
        assert!(e.starts_with("error: invalid value '20' for '--partition-at <S:I>': S:I"), "{e}");
        let e = refused(&["--devices", "3", "--partition-at", "soon:1"]);
        assert!(e.contains("not a time in seconds"), "{e}");
        assert_eq!(parse(&["--no-switch", "--partition-at", "20:0"]).unwrap_err().exit_code(), 2);
        let e = one_line(refused(&["--devices", "1", "--failover-at", "10"]));
        assert!(e.contains("need --devices 2 or more"), "{e}");
        let e = one_line(refused(&["--switch-at", "10", "--switch-to", "0"]));
        assert!(e.contains("goes to device 0, which runs the guest then"), "{e}");
        let e = one_line(refused(&["--policy", "off"]));
        assert!(e.contains("--devices 2 keeps standbys in sync: it needs a --policy other than off"), "{e}");
        let e = one_line(refused(&["--devices", "1", "--policy", "off", "--verify"]));
        assert!(e.contains("--verify checks the epochs"), "{e}");
        let e = one_line(refused(&["--workload-exec", "/nonexistent/prog"]));
        assert!(e.starts_with("error: --workload-exec /nonexistent/prog: cannot read it"), "{e}");
        // A host program: not arm64 (or not even ELF on an odd host).
        let e = one_line(refused(&["--workload-exec", "/bin/sh"]));
        assert!(e.starts_with("error: --workload-exec /bin/sh: "), "{e}");
        let e = one_line(refused(&["--workload-exec", "/bin/sh", "a,b"]));
        assert!(e.contains("may not contain ','"), "{e}");
        // clap's own conflicts stay usage errors too.
        assert_eq!(parse(&["--no-switch", "--switch-at", "10"]).unwrap_err().exit_code(), 2);
        assert_eq!(parse(&["--workload", "idle", "--workload-exec", "/bin/sh"]).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn a_workload_program_must_be_a_static_arm64_elf() {
        assert_eq!(static_arm64(&elf(EM_AARCH64, ET_EXEC, &[1, 1])), Ok(()));
        assert_eq!(static_arm64(&elf(EM_AARCH64, ET_DYN, &[1])), Ok(()), "a static PIE");
        assert!(static_arm64(&elf(EM_AARCH64, ET_DYN, &[6, PT_INTERP, 1])).unwrap_err().starts_with("dynamically linked"));
        assert!(static_arm64(&elf(62, ET_EXEC, &[])).unwrap_err().starts_with("built for x86-64"));
        assert!(static_arm64(&elf(EM_AARCH64, 1, &[])).unwrap_err().contains("not an executable"));
        let mut big = elf(EM_AARCH64, ET_EXEC, &[]);
        big[5] = 2;
        assert!(static_arm64(&big).unwrap_err().contains("big-endian"));
        let mut small = elf(EM_AARCH64, ET_EXEC, &[]);
        small[4] = 1;
        assert!(static_arm64(&small).unwrap_err().contains("32-bit"));
        assert!(static_arm64(b"#!/bin/sh\n").unwrap_err().starts_with("not an ELF program"));
        let mut cut = elf(EM_AARCH64, ET_EXEC, &[1, 1]);
        cut.truncate(64 + 56 + 2);
        assert!(static_arm64(&cut).unwrap_err().contains("truncated program header"));
    }

    #[test]
    fn a_real_static_arm64_file_is_accepted() {
        let dir = std::env::temp_dir().join(format!("vmsync-demo-args-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("prog");
        std::fs::write(&p, elf(EM_AARCH64, ET_EXEC, &[1])).unwrap();
        let d = checked(&["--devices", "1", "--workload-exec", p.to_str().unwrap(), "-x", "7"]).unwrap();
        assert_eq!(d.workload, Workload::Exec { path: p.clone(), args: vec!["-x".into(), "7".into()] });
        std::fs::remove_dir_all(dir).unwrap();
    }
}
