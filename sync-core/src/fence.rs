//! Lineage and term: which guest a device holds, and which reign of it.
//!
//! A guest gets a random lineage id when it first boots; every take-over
//! (a switch or a failover) starts a new term, above every term the new
//! active device has seen. An epoch belongs to the term of the device that
//! cut it. Hello and HelloAck carry each side's `Standing` (lineage, term,
//! last epoch and its digest, and where the active device's term began),
//! and both sides run the same `judge` over the pair, so they agree on what
//! happens without another message:
//!
//! - a standby whose committed epoch is on the active device's history is
//!   sent what changed since it (`Follow`);
//! - one of the same guest whose epochs since a fork are not (a lower
//!   term's, which the take-over did not include: what a failover loses)
//!   is resynced whole, automatically (`Rewind`);
//! - one holding a higher term of the same guest ends the active device's
//!   term (`Fence`): the active device stops its guest at once and becomes
//!   a standby (a sealed `Fenced` tells it, so no clear text does);
//! - one holding another guest, or an unrelated history of this one,
//!   keeps its image until its user allows it to be replaced (`Unrelated`).
//!
//! A term is a count of take-overs in its high 48 bits and 16 random bits
//! below (`next_term`), so two devices that fail over from the same term at
//! once start different terms: one history per term, and terms are totally
//! ordered.

use crate::wire::{Digest, Epoch};

/// A guest's lineage: random, made at its first boot. All zero: none.
pub type LineageId = [u8; 16];
/// A term: take-overs counted in the high 48 bits, random low 16 bits.
pub type Term = u64;

pub const NO_LINEAGE: LineageId = [0; 16];
const RANDOM_BITS: u32 = 16;

/// The term after `seen` (the highest term a device knows of), with
/// `random` in its low bits.
pub fn next_term(seen: Term, random: u16) -> Term {
    (((seen >> RANDOM_BITS) + 1) << RANDOM_BITS) | random as u64
}

/// Take-overs counted in `term` (1 for a guest's first boot).
pub fn term_count(term: Term) -> u64 {
    term >> RANDOM_BITS
}

/// What one side of a handshake holds. For the active device: its lineage
/// and term, its last cut and the digest there, and where its term began
/// (epoch `took_over_at` of term `prior_term`; 0 and 0 for a guest's first
/// term). For a standby: the lineage and term of its committed epoch,
/// that epoch's digest (the `took_over_at`/`prior_term` of the term it
/// holds, as far as it knows; unused).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Standing {
    pub lineage: LineageId,
    pub term: Term,
    pub digest: Digest,
    pub prior_term: Term,
    pub took_over_at: Epoch,
}

/// Why a standby's image is not on the active device's history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unrelated {
    /// Another guest (a device that booted a new one, e.g. after a reboot).
    OtherLineage,
    /// The same guest and term, but the standby is ahead of the active
    /// device or holds another image at its epoch.
    Diverged,
}

/// What the handshake between an active device and a standby decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The standby's committed epoch `base` is on the active device's
    /// history (0: it holds nothing): sync from there.
    Follow { base: Epoch },
    /// Same guest; the standby's epochs since the fork are a lower term's
    /// that the active term does not include: resynced whole.
    Rewind,
    /// The standby holds term `term`, above the active device's: the
    /// active device's term is over.
    Fence { term: Term },
    /// The standby keeps its image unless its user allows otherwise.
    Unrelated(Unrelated),
}

/// The decision for active device `a` (last cut `a_epoch`) and standby `s`
/// (committed epoch `s_epoch`). Both sides call it on the two handshakes
/// as exchanged.
pub fn judge(a: &Standing, a_epoch: Epoch, s: &Standing, s_epoch: Epoch) -> Verdict {
    let same = s.lineage == a.lineage && s.lineage != NO_LINEAGE;
    if same && s.term > a.term {
        return Verdict::Fence { term: s.term };
    }
    // Nothing committed: nothing to keep.
    if s_epoch == 0 {
        return Verdict::Follow { base: 0 };
    }
    if !same {
        return Verdict::Unrelated(Unrelated::OtherLineage);
    }
    if s.term == a.term {
        // One history per term: the standby holds a prefix of ours.
        return match s_epoch {
            e if e < a_epoch => Verdict::Follow { base: e },
            e if e == a_epoch && s.digest == a.digest => Verdict::Follow { base: e },
            _ => Verdict::Unrelated(Unrelated::Diverged),
        };
    }
    // A lower term: ours took over at `took_over_at` of `prior_term`, so
    // that term's epochs up to there are ours too; anything else of a
    // lower term is a branch the take-over left behind.
    if s.term == a.prior_term && s_epoch <= a.took_over_at {
        Verdict::Follow { base: s_epoch }
    } else {
        Verdict::Rewind
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: LineageId = [7; 16];
    fn st(lineage: LineageId, count: u64, prior: u64, from: Epoch) -> Standing {
        Standing {
            lineage,
            term: count << 16 | 0x55,
            digest: [count as u8; 32],
            prior_term: if prior == 0 { 0 } else { prior << 16 | 0x55 },
            took_over_at: from,
        }
    }

    #[test]
    fn terms_grow_and_differ_between_concurrent_take_overs() {
        let t1 = next_term(0, 0xabcd);
        assert_eq!(term_count(t1), 1);
        let (b, c) = (next_term(t1, 1), next_term(t1, 2));
        assert!(b > t1 && c > t1 && b != c, "two failovers from one term start two different terms");
        assert_eq!(term_count(b), 2);
        assert!(next_term(b.max(c), 0) > b.max(c));
    }

    #[test]
    fn a_fresh_standby_follows_from_zero() {
        assert_eq!(judge(&st(L, 1, 0, 0), 40, &Standing::default(), 0), Verdict::Follow { base: 0 });
    }

    #[test]
    fn the_same_term_follows_from_the_standbys_epoch() {
        let a = st(L, 1, 0, 0);
        assert_eq!(judge(&a, 40, &st(L, 1, 0, 0), 39), Verdict::Follow { base: 39 });
        assert_eq!(judge(&a, 40, &st(L, 1, 0, 0), 40), Verdict::Follow { base: 40 });
        let mut other = st(L, 1, 0, 0);
        other.digest = [9; 32];
        assert_eq!(judge(&a, 40, &other, 40), Verdict::Unrelated(Unrelated::Diverged));
        assert_eq!(judge(&a, 40, &st(L, 1, 0, 0), 41), Verdict::Unrelated(Unrelated::Diverged));
    }

    #[test]
    fn a_higher_term_fences_the_active_device() {
        let a = st(L, 1, 0, 0);
        let s = st(L, 2, 1, 500);
        assert_eq!(judge(&a, 900, &s, 510), Verdict::Fence { term: s.term });
        // Even a standby that holds nothing committed of it yet.
        assert_eq!(judge(&a, 900, &s, 0), Verdict::Fence { term: s.term });
    }

    #[test]
    fn a_lower_term_follows_up_to_the_take_over_and_rewinds_past_it() {
        // Term 2 took over at epoch 500 of term 1.
        let a = st(L, 2, 1, 500);
        assert_eq!(judge(&a, 600, &st(L, 1, 0, 0), 500), Verdict::Follow { base: 500 }, "the old active device after a switch");
        assert_eq!(judge(&a, 600, &st(L, 1, 0, 0), 480), Verdict::Follow { base: 480 });
        assert_eq!(judge(&a, 600, &st(L, 1, 0, 0), 520), Verdict::Rewind, "term 1 went on past 500 elsewhere: lost by the failover");
        // A term older than the one we took over from: its history is unknown here.
        let a3 = st(L, 3, 2, 700);
        assert_eq!(judge(&a3, 800, &st(L, 1, 0, 0), 300), Verdict::Rewind);
    }

    #[test]
    fn another_lineage_is_unrelated_whatever_its_epoch() {
        let rebooted = st([8; 16], 1, 0, 0);
        assert_eq!(judge(&rebooted, 1, &st(L, 1, 0, 0), 500), Verdict::Unrelated(Unrelated::OtherLineage));
        assert_eq!(judge(&rebooted, 900, &st(L, 5, 4, 10), 500), Verdict::Unrelated(Unrelated::OtherLineage));
        // No lineage at all is no match for anyone's.
        assert_eq!(judge(&st(NO_LINEAGE, 1, 0, 0), 9, &st(NO_LINEAGE, 1, 0, 0), 5), Verdict::Unrelated(Unrelated::OtherLineage));
    }
}
