//! Value parsers for the command line: bad input is refused by clap while
//! the arguments are parsed (one `error:` line, exit code 2), before
//! anything is built or booted.
//!
//! Every parser is a `fn(&str) -> Result<T, String>`, usable as
//! `#[arg(value_parser = cli::policy)]`.
use qemu_tests::link::Profile;
use sync_core::policy::PolicySpec;

/// The synthetic workloads every guest image carries (`vmsync.workload=`).
pub const SYNTHETIC_WORKLOADS: &[&str] = &["video", "storage", "browse", "idle", "counter", "memtouch", "burst"];

/// The real programs only the study's guest carries, besides the synthetic
/// ones: Debian's dav1d, sqlite3 and python3.
pub const STUDY_WORKLOADS: &[&str] = &["dav1d", "sqlite", "python"];

/// Names the study used before the real and the synthetic workloads were
/// named by what they are: old name, new name.
const RENAMED: &[(&str, &str)] = &[("synth-video", "video"), ("synth-storage", "storage"), ("synth-browse", "browse")];

/// An epoch policy: `interval:<duration>`, `threshold:<size>`,
/// `adaptive[:<duration>]` or `switch-only`.
pub fn policy(s: &str) -> Result<PolicySpec, String> {
    s.parse::<PolicySpec>().map_err(|e| e.to_string())
}

/// A policy, or `off` (no dirty tracking): `None`. Give the field the
/// type `std::option::Option<PolicySpec>`: clap's derive reads a plain
/// `Option<_>` as "may be absent" and expects the parser to give the inner
/// type.
pub fn policy_or_off(s: &str) -> Result<Option<PolicySpec>, String> {
    if s.trim() == "off" {
        return Ok(None);
    }
    s.parse::<PolicySpec>().map(Some).map_err(|e| format!("{e}, or off"))
}

/// A link profile: `loopback`, `wifi`, `lte` or `bt`, with options as in
/// `lte,loss=1%,jitter=2`.
pub fn link(s: &str) -> Result<Profile, String> {
    s.parse::<Profile>().map_err(|e| e.to_string())
}

/// A workload of the demo and bench guests: one of [`SYNTHETIC_WORKLOADS`].
pub fn synthetic_workload(s: &str) -> Result<String, String> {
    let s = s.trim();
    if SYNTHETIC_WORKLOADS.contains(&s) {
        return Ok(s.to_string());
    }
    let here = SYNTHETIC_WORKLOADS.join(", ");
    if STUDY_WORKLOADS.contains(&s) {
        return Err(format!("{s} runs in the study's guest only (cargo xtask study --workloads {s}); here: {here}"));
    }
    Err(match renamed(s) {
        Some(new) => format!("{s} is now called {new}; the workloads: {here}"),
        None => format!("unknown workload; the workloads: {here}"),
    })
}

/// A workload of the study's guest: a real program ([`STUDY_WORKLOADS`]) or
/// a synthetic one ([`SYNTHETIC_WORKLOADS`]).
pub fn study_workload(s: &str) -> Result<String, String> {
    let s = s.trim();
    if STUDY_WORKLOADS.contains(&s) || SYNTHETIC_WORKLOADS.contains(&s) {
        return Ok(s.to_string());
    }
    let known = format!("the study's workloads: {}, {}", STUDY_WORKLOADS.join(", "), SYNTHETIC_WORKLOADS.join(", "));
    Err(match renamed(s) {
        Some(new) => format!("{s} is now called {new}; {known}"),
        None => format!("unknown workload; {known}"),
    })
}

/// The hypervisor's default shadow budget (`shadow=` in its guest config),
/// as a percent of guest RAM.
pub const DEFAULT_SHADOW: u8 = 25;

/// A shadow budget: a percent of guest RAM, 1 to 100 (`%` optional), or
/// `full` (= 100).
pub fn shadow(s: &str) -> Result<u8, String> {
    let s = s.trim();
    if s == "full" {
        return Ok(100);
    }
    match s.strip_suffix('%').unwrap_or(s).parse::<u8>() {
        Ok(p @ 1..=100) => Ok(p),
        _ => Err("a shadow budget is a percent of guest RAM, 1 to 100 (25 or 25%), or full".into()),
    }
}

/// `--partition-at S:I`: at S seconds, device I's links are cut.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PartitionAt {
    pub at: f64,
    pub device: usize,
}

/// `S:I`: a time in seconds and a device index.
pub fn partition_at(s: &str) -> Result<PartitionAt, String> {
    let (at, device) = s.split_once(':').ok_or("S:I: the time in seconds, a colon, the device (0-based) to cut off")?;
    let at: f64 = at.trim().parse().map_err(|_| format!("{at:?} is not a time in seconds (S:I)"))?;
    if !at.is_finite() || at < 0.0 {
        return Err(format!("{at} is not a time in seconds (S:I)"));
    }
    let device = device.trim().parse().map_err(|_| format!("{device:?} is not a device index (S:I)"))?;
    Ok(PartitionAt { at, device })
}

fn renamed(s: &str) -> Option<&'static str> {
    RENAMED.iter().find(|(old, _)| *old == s).map(|&(_, new)| new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct T {
        #[arg(long, value_parser = policy)]
        policy: Option<PolicySpec>,
        #[arg(long, value_parser = policy_or_off, default_value = "interval:200ms")]
        policy_or_off: std::option::Option<PolicySpec>,
        #[arg(long, value_parser = link)]
        link: Option<Profile>,
        #[arg(long, value_parser = synthetic_workload)]
        workload: Option<String>,
        #[arg(long, value_parser = study_workload, value_delimiter = ',')]
        workloads: Vec<String>,
        #[arg(long, value_parser = shadow, value_delimiter = ',')]
        shadows: Vec<u8>,
    }

    fn parse(args: &[&str]) -> Result<T, clap::Error> {
        T::try_parse_from(std::iter::once("t").chain(args.iter().copied()))
    }

    /// The error clap prints (without colour), checked to be a usage error
    /// that exits with 2.
    fn refused(args: &[&str]) -> String {
        let e = parse(args).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ValueValidation, "{e}");
        assert_eq!(e.exit_code(), 2);
        e.render().to_string()
    }

    #[test]
    fn good_values_parse() {
        let t =
            parse(&["--policy", "interval:200ms", "--policy-or-off", "off", "--link", "lte,loss=1%", "--workload", "memtouch", "--workloads", "dav1d,video"])
                .unwrap();
        assert_eq!(t.policy, Some(PolicySpec::Interval { period_ns: 200_000_000 }));
        assert_eq!(t.policy_or_off, None);
        assert_eq!(t.link.map(|l| l.name), Some("lte".into()));
        assert_eq!(t.workload.as_deref(), Some("memtouch"));
        assert_eq!(t.workloads, ["dav1d", "video"]);
        let t = parse(&["--policy-or-off", "switch-only"]).unwrap();
        assert_eq!(t.policy_or_off, Some(PolicySpec::SwitchOnly));
        assert_eq!(parse(&[]).unwrap().policy_or_off, Some(PolicySpec::Interval { period_ns: 200_000_000 }));
    }

    #[test]
    fn bad_policies_say_why() {
        let e = refused(&["--policy", "interval:fast"]);
        assert!(e.contains("'interval:fast'") && e.contains("the value must start with a decimal number"), "{e}");
        assert!(!e.contains("BadNumber"), "{e}");
        let e = refused(&["--policy", "often"]);
        assert!(e.contains("unknown policy (one of interval:<duration>"), "{e}");
        let e = refused(&["--policy", "off"]);
        assert!(e.contains("unknown policy"), "{e}");
        let e = refused(&["--policy-or-off", "threshold"]);
        assert!(e.contains("need a value") && e.contains("or off"), "{e}");
    }

    #[test]
    fn bad_links_say_why() {
        let e = refused(&["--link", "5g"]);
        assert!(e.contains("unknown link profile") && e.contains("wifi"), "{e}");
        let e = refused(&["--link", "wifi,loss=lots"]);
        assert!(e.contains("bad number"), "{e}");
    }

    #[test]
    fn workloads_are_checked() {
        let e = refused(&["--workload", "vidoe"]);
        assert!(e.contains("'vidoe'") && e.contains("video, storage, browse, idle, counter, memtouch"), "{e}");
        let e = refused(&["--workload", "dav1d"]);
        assert!(e.contains("dav1d runs in the study's guest only (cargo xtask study --workloads dav1d)"), "{e}");
        let e = refused(&["--workload", "synth-video"]);
        assert!(e.contains("synth-video is now called video"), "{e}");
        let e = refused(&["--workloads", "dav1d,vidoe"]);
        assert!(e.contains("'vidoe'") && e.contains("dav1d, sqlite, python, video"), "{e}");
        let e = refused(&["--workloads", "synth-storage"]);
        assert!(e.contains("synth-storage is now called storage"), "{e}");
    }

    #[test]
    fn shadow_budgets() {
        assert_eq!(parse(&["--shadows", "100,50%,full, 10"]).unwrap().shadows, [100, 50, 100, 10]);
        for bad in ["0", "101", "half", "25%%", "1e2"] {
            let e = refused(&["--shadows", bad]);
            assert!(e.contains("a shadow budget is a percent of guest RAM, 1 to 100"), "{e}");
        }
    }

    /// The guest's init runs every name given here.
    #[test]
    fn the_guest_init_knows_every_workload() {
        let init = include_str!("../guest/init.sh");
        let doc: String = init.lines().skip_while(|l| !l.contains("vmsync.workload=NAME")).take_while(|l| !l.contains("vmsync.seconds=")).collect();
        let names: Vec<&str> = doc.split(|c: char| !c.is_ascii_alphanumeric()).collect();
        for w in SYNTHETIC_WORKLOADS.iter().chain(STUDY_WORKLOADS) {
            assert!(names.contains(w), "{w} is not among init.sh's workloads: {doc}");
        }
    }

    /// One line: clap prints `error: ...` and a hint, nothing of Debug.
    #[test]
    fn the_error_is_one_line() {
        let e = refused(&["--workload", "vidoe"]);
        let first = e.lines().next().unwrap();
        assert!(first.starts_with("error: invalid value 'vidoe' for '--workload <WORKLOAD>': unknown workload"), "{e}");
    }
}
