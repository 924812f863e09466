//! Where the guest's workload starts and where it reaches its steady state,
//! read from its console. The guest's `/init` prints `vmsync-guest:
//! workload NAME start` right before it runs the workload, and every
//! workload prints `vmsync-workload: counter=1 ...` one second into its run
//! (and a line each second after). The hypervisor cuts an epoch at each of
//! the two, once, whatever the policy:
//!
//! - at the start line, before the workload's clock runs, so the initial
//!   copy of the guest (all of boot; with `switch-only` the whole of guest
//!   RAM, seconds of encoding) does not eat into the workload's time;
//! - at the first progress line, so the workload's start-up (loading the
//!   program, filling its first buffers) is left behind too.
//!
//! Every epoch after the second cut is the workload's steady state, which
//! is what the paper measured and `cargo xtask study` reports. Plain data
//! in, plain data out: tested on the host.

/// Bytes of a line kept: enough for both markers.
const KEEP: usize = 128;
const START_PREFIX: &[u8] = b"vmsync-guest: workload ";
const START_SUFFIX: &[u8] = b" start";
const PROGRESS_PREFIX: &[u8] = b"vmsync-workload: counter=";

/// What a console line told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mark {
    /// The workload is about to run.
    Start,
    /// Its first progress line: the steady state starts here.
    Steady,
}

#[derive(Default)]
pub struct WorkloadStart {
    /// The current line's first `KEEP` bytes.
    line: heapless::Vec<u8, KEEP>,
    /// The current line is longer than `line`.
    long: bool,
    started: bool,
    steady: bool,
}

impl WorkloadStart {
    /// One byte the guest wrote to its console; at the newline that ends
    /// the first start line and the first progress line, their mark.
    pub fn feed(&mut self, b: u8) -> Option<Mark> {
        if self.steady {
            return None;
        }
        if b != b'\n' {
            if self.line.push(b).is_err() {
                self.long = true;
            }
            return None;
        }
        let line = self.line.strip_suffix(b"\r").unwrap_or(&self.line);
        let mark = if !self.started && !self.long && is_start(line) {
            self.started = true;
            Some(Mark::Start)
        } else if line.starts_with(PROGRESS_PREFIX) {
            // A workload run without the start line (a program started by
            // hand) still gets its steady state.
            self.started = true;
            self.steady = true;
            Some(Mark::Steady)
        } else {
            None
        };
        self.line.clear();
        self.long = false;
        mark
    }
}

fn is_start(line: &[u8]) -> bool {
    line.len() > START_PREFIX.len() + START_SUFFIX.len() && line.starts_with(START_PREFIX) && line.ends_with(START_SUFFIX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;
    use alloc::vec::Vec;

    fn feed(w: &mut WorkloadStart, text: &str) -> Vec<Mark> {
        text.bytes().filter_map(|b| w.feed(b)).collect()
    }

    #[test]
    fn start_then_steady_once_each() {
        let mut w = WorkloadStart::default();
        assert_eq!(feed(&mut w, "vmsync-guest: init\nvmsync-guest: workload dav1d start"), []);
        assert_eq!(feed(&mut w, "\r\n"), [Mark::Start]);
        assert_eq!(feed(&mut w, "vmsync-guest: workload dav1d start\n"), [], "only the first start counts");
        assert_eq!(feed(&mut w, "vmsync-workload: counter=1 checksum=ab uptime=5.00 frames=30\n"), [Mark::Steady]);
        assert_eq!(feed(&mut w, "vmsync-workload: counter=2 checksum=cd uptime=6.00 frames=60\n"), [], "only the first counts");
    }

    #[test]
    fn other_lines_do_not_mark() {
        let mut w = WorkloadStart::default();
        let text = "vmsync-guest: workload video end rc=0\n\
                    vmsync-guest: workload  start\n\
                    xvmsync-guest: workload video start\n\
                    vmsync-guest: workload video started\n\
                    vmsync-workload: sqlite: cannot open\n\
                    xvmsync-workload: counter=1\n";
        assert_eq!(feed(&mut w, text), []);
        let long = format!("vmsync-guest: workload {} start\n", "x".repeat(KEEP));
        assert_eq!(feed(&mut w, &long), [], "an overlong line is not the start marker");
        // A progress line however long; without a start line before it.
        let long = format!("vmsync-workload: counter=1 {}\n", "x".repeat(500));
        assert_eq!(feed(&mut w, &long), [Mark::Steady]);
    }
}
