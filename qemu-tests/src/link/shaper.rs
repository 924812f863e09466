//! The model of one direction of a link: a transmit queue drained at the
//! link rate (serialisation delay), then a propagation delay with jitter.
//! Frames leave in the order they came; both the frame switch and the
//! byte-stream proxy use it.
use super::profile::Profile;
use super::rng::Rng;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Arrives at the far end at this time.
    Deliver(Instant),
    /// The transmit queue was full (drop-tail).
    QueueFull,
    /// Crossed the link and was lost (random loss).
    Lost,
}

#[derive(Debug, Clone)]
pub struct Shaper {
    /// When the transmitter finishes what is queued.
    busy_until: Instant,
    /// When the last frame arrives at the far end; no frame arrives before.
    last_arrival: Instant,
}

impl Shaper {
    pub fn new(now: Instant) -> Shaper {
        Shaper { busy_until: now, last_arrival: now }
    }

    /// Time the queue needs to drain what is in it.
    pub fn backlog(&self, now: Instant) -> Duration {
        self.busy_until.saturating_duration_since(now)
    }

    /// A frame of `bytes` offered to the link at `now`.
    pub fn admit(&mut self, p: &Profile, now: Instant, bytes: usize, rng: &mut Rng) -> Admit {
        if p.rate_bps.is_some() && p.bytes_in(self.backlog(now)).saturating_add(bytes) > p.queue_limit() {
            return Admit::QueueFull;
        }
        let sent = self.transmit(p, now, bytes);
        if rng.chance(p.loss) {
            return Admit::Lost;
        }
        Admit::Deliver(self.arrive(p, sent, rng))
    }

    /// The byte-stream mode: never drops (TCP would retransmit; the caller
    /// applies back-pressure from `backlog` instead) and ignores loss.
    pub fn admit_reliable(&mut self, p: &Profile, now: Instant, bytes: usize, rng: &mut Rng) -> Instant {
        let sent = self.transmit(p, now, bytes);
        self.arrive(p, sent, rng)
    }

    /// Queues `bytes` behind what is there; returns when its last bit is sent.
    fn transmit(&mut self, p: &Profile, now: Instant, bytes: usize) -> Instant {
        let start = self.busy_until.max(now);
        self.busy_until = start + p.serialisation(bytes);
        self.busy_until
    }

    fn arrive(&mut self, p: &Profile, sent: Instant, rng: &mut Rng) -> Instant {
        let delay = (p.delay.as_nanos() as i128 + rng.jitter_ns(p.jitter)).max(0);
        // Delays are far below u64 nanoseconds (584 years).
        let at = sent + Duration::from_nanos(delay as u64);
        let at = at.max(self.last_arrival);
        self.last_arrival = at;
        at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialisation_delay_and_drop_tail() {
        let t0 = Instant::now();
        let p = Profile::wifi().with_jitter(Duration::ZERO);
        let mut s = Shaper::new(t0);
        let mut rng = Rng::new(1);
        // 1250 bytes at 50 Mbit/s take 200 µs; then 5 ms of flight.
        assert_eq!(s.admit(&p, t0, 1250, &mut rng), Admit::Deliver(t0 + Duration::from_micros(5200)));
        assert_eq!(s.admit(&p, t0, 1250, &mut rng), Admit::Deliver(t0 + Duration::from_micros(5400)));
        // Fill the 256 KiB queue at one instant: the rest is dropped.
        let mut queued = 2500;
        loop {
            match s.admit(&p, t0, 1250, &mut rng) {
                Admit::Deliver(_) => queued += 1250,
                Admit::QueueFull => break,
                Admit::Lost => unreachable!("no loss in this profile"),
            }
        }
        assert!(queued <= 256 * 1024 && queued + 1250 > 256 * 1024 - 1250, "{queued}");
        // Once it has drained, frames are accepted again.
        let later = t0 + Duration::from_millis(100);
        assert!(matches!(s.admit(&p, later, 1250, &mut rng), Admit::Deliver(_)));
    }

    #[test]
    fn jitter_never_reorders() {
        let t0 = Instant::now();
        let p = Profile::lte().with_jitter(Duration::from_millis(20));
        let mut s = Shaper::new(t0);
        let mut rng = Rng::new(7);
        let mut last = t0;
        for i in 0..2000u64 {
            if let Admit::Deliver(at) = s.admit(&p, t0 + Duration::from_micros(i * 300), 100, &mut rng) {
                assert!(at >= last);
                last = at;
            }
        }
    }
}
