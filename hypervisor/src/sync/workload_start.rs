//! Where the guest's workload starts, read from its console: the guest's
//! `/init` prints `vmsync-guest: workload NAME start` right before it runs
//! the workload. The hypervisor cuts an epoch there, once, whatever the
//! policy: the epochs up to that cut hold the initial copy of the guest as
//! the workload found it (boot included), every later one is the workload's
//! steady state, which is what the paper measured and `cargo xtask study`
//! reports. Plain data in, plain data out: tested on the host.

/// Longest console line looked at; a longer one is not the marker.
const MAX_LINE: usize = 128;
const PREFIX: &[u8] = b"vmsync-guest: workload ";
const SUFFIX: &[u8] = b" start";

#[derive(Default)]
pub struct WorkloadStart {
    line: heapless::Vec<u8, MAX_LINE>,
    /// The current line outgrew `line`.
    long: bool,
    seen: bool,
}

impl WorkloadStart {
    /// One byte the guest wrote to its console; true at the newline that
    /// ends the first workload start line, never after.
    pub fn feed(&mut self, b: u8) -> bool {
        if self.seen {
            return false;
        }
        if b == b'\n' {
            self.seen = !self.long && is_start(&self.line);
            self.line.clear();
            self.long = false;
            return self.seen;
        }
        if self.line.push(b).is_err() {
            self.long = true;
        }
        false
    }
}

fn is_start(line: &[u8]) -> bool {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    line.len() > PREFIX.len() + SUFFIX.len() && line.starts_with(PREFIX) && line.ends_with(SUFFIX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;

    fn feed(w: &mut WorkloadStart, text: &str) -> usize {
        text.bytes().filter(|&b| w.feed(b)).count()
    }

    #[test]
    fn fires_once_at_the_end_of_the_start_line() {
        let mut w = WorkloadStart::default();
        assert_eq!(feed(&mut w, "vmsync-guest: init\nvmsync-guest: workload dav1d start"), 0);
        assert_eq!(feed(&mut w, "\r\n"), 1);
        assert_eq!(feed(&mut w, "vmsync-guest: workload dav1d start\n"), 0, "only the first start counts");
    }

    #[test]
    fn other_lines_do_not_fire() {
        let mut w = WorkloadStart::default();
        let text = "vmsync-guest: workload video end rc=0\n\
                    vmsync-guest: workload  start\n\
                    xvmsync-guest: workload video start\n\
                    vmsync-guest: workload video started\n";
        assert_eq!(feed(&mut w, text), 0);
        let long = format!("vmsync-guest: workload {} start\n", "x".repeat(MAX_LINE));
        assert_eq!(feed(&mut w, &long), 0, "an overlong line is not the marker");
        assert_eq!(feed(&mut w, "vmsync-guest: workload /bin/vmsync-exec start\n"), 1);
    }
}
