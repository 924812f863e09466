//! The standby's side of one session: opens frames, decompresses batches
//! and drives the applier through EpochBegin / PageRecords / EpochCommit,
//! answering Ack.
//!
//! Two kinds of failure, two recoveries:
//! - A frame that does not open or parse (tampered, replayed, truncated,
//!   not ours): the session is dead (`StandbyError::Wire`); the caller
//!   closes the connection and reconnects; HelloAck names the committed
//!   epoch and the active side resumes from it.
//! - An epoch that does not apply (a record against another base, a hash
//!   or digest mismatch, a bad batch): the epoch is dropped, a Resync
//!   naming the committed epoch is sent, and frames are skipped until an
//!   EpochBegin whose base is the committed epoch, which starts a fresh zstd
//!   stream (the active side resets its compressor when it takes the Resync).
//!
//! Either way the committed image stays the last committed epoch's.

use alloc::vec::Vec;

use crate::applier::{Applier, ApplyError};
use crate::compress::{Decompressor, ZstdConfig, ZstdError};
use crate::digest::PageMemoryMut;
use crate::fence::{LineageId, Term};
use crate::wire::{Epoch, Frame, Message, Session, WireError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StandbyError {
    /// The session is dead: reconnect.
    Wire(WireError),
    /// Making the zstd context failed.
    Zstd(ZstdError),
}

/// Why an epoch was dropped (reported with the Resync that followed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EpochFault {
    Apply(ApplyError),
    Zstd(ZstdError),
    /// PageRecords of another epoch, or out of sequence.
    BadBatch,
    /// The batch decompressed to another size than it announced.
    BadRawLength,
    /// A message the active side must not send here.
    Unexpected,
    /// The epoch is of a lower term than the committed one: never
    /// committed (`fence`).
    StaleTerm,
}

/// What a frame did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Nothing visible (an epoch began, a batch was staged, a skipped frame).
    None,
    /// `epoch` committed; an Ack was queued.
    Committed(Epoch),
    /// The epoch in flight was dropped and a Resync queued.
    Resyncing(EpochFault),
    CpuState(Vec<u8>),
    DeviceState(Vec<u8>),
    /// The active side handed over at `epoch` (our committed epoch).
    SwitchDone(Epoch),
}

enum State {
    Idle,
    /// Staging `epoch`; the next batch has sequence `next_seq`.
    Receiving {
        epoch: Epoch,
        next_seq: u32,
    },
    /// A Resync was sent; skip until an EpochBegin on our committed epoch.
    AwaitResync,
}

pub struct StandbyReceiver {
    session: Session,
    decompressor: Decompressor,
    state: State,
    scratch: Vec<u8>,
    dead: bool,
    /// The guest and term of the active side, as its Hello said: every
    /// epoch of this session is of that term (`fence`).
    lineage: Option<(LineageId, Term)>,
    /// Give the committed image up once the first frame proves the key
    /// (the handshake decided a whole resync; clear text alone never
    /// costs the image).
    forget_on_open: bool,
}

impl StandbyReceiver {
    /// A receiver for an established session; the zstd stream starts fresh.
    pub fn new(session: Session, zstd: ZstdConfig) -> Result<Self, StandbyError> {
        let decompressor = Decompressor::new(zstd).map_err(StandbyError::Zstd)?;
        Ok(Self { session, decompressor, state: State::Idle, scratch: Vec::new(), dead: false, lineage: None, forget_on_open: false })
    }

    /// The session's epochs are of `term` of guest `lineage`; with
    /// `forget`, the committed image is given up (`Applier::forget`) when
    /// the first frame opens.
    pub fn set_lineage(&mut self, lineage: LineageId, term: Term, forget: bool) {
        self.lineage = Some((lineage, term));
        self.forget_on_open = forget;
    }

    /// Seals a message of ours (SwitchRequest, Ack, Resync) onto `out`.
    pub fn send(&mut self, msg: &Message, out: &mut Vec<u8>) -> Result<usize, StandbyError> {
        self.session.seal(msg, out).map_err(StandbyError::Wire)
    }

    /// Handles one frame from the active side; replies go to `out`.
    pub fn on_frame<M: PageMemoryMut>(&mut self, frame: Frame, applier: &mut Applier<M>, out: &mut Vec<u8>) -> Result<Event, StandbyError> {
        if self.dead {
            return Err(StandbyError::Wire(WireError::Poisoned));
        }
        let msg = match self.session.open(frame) {
            Ok(m) => m,
            Err(e) => return Err(self.die(applier, e)),
        };
        if core::mem::take(&mut self.forget_on_open) {
            applier.forget();
        }
        match self.on_message(msg, applier) {
            Ok(ev) => {
                if let Event::Committed(epoch) = ev {
                    self.reply(&Message::Ack { epoch }, applier, out)?;
                }
                Ok(ev)
            }
            Err(fault) => {
                applier.abort();
                self.state = State::AwaitResync;
                let from = applier.committed_epoch();
                self.reply(&Message::Resync { from_epoch: from }, applier, out)?;
                Ok(Event::Resyncing(fault))
            }
        }
    }

    fn reply<M: PageMemoryMut>(&mut self, msg: &Message, applier: &mut Applier<M>, out: &mut Vec<u8>) -> Result<(), StandbyError> {
        match self.session.seal(msg, out) {
            Ok(_) => Ok(()),
            Err(e) => Err(self.die(applier, e)),
        }
    }

    fn die<M: PageMemoryMut>(&mut self, applier: &mut Applier<M>, e: WireError) -> StandbyError {
        self.dead = true;
        applier.abort();
        StandbyError::Wire(e)
    }

    fn on_message<M: PageMemoryMut>(&mut self, msg: Message, applier: &mut Applier<M>) -> Result<Event, EpochFault> {
        if let State::AwaitResync = self.state {
            match msg {
                Message::EpochBegin { base, .. } if base == applier.committed_epoch() => {
                    // The first epoch the active side encoded after our Resync:
                    // it starts a new zstd stream.
                    self.decompressor.reset().map_err(EpochFault::Zstd)?;
                }
                // Epochs and batches already in flight when we asked.
                _ => return Ok(Event::None),
            }
        }
        match msg {
            Message::EpochBegin { epoch, base } => {
                applier.begin(epoch, base).map_err(EpochFault::Apply)?;
                self.state = State::Receiving { epoch, next_seq: 0 };
                Ok(Event::None)
            }
            Message::PageRecords { epoch, seq, raw_len, data } => {
                let State::Receiving { epoch: cur, next_seq } = &mut self.state else {
                    return Err(EpochFault::BadBatch);
                };
                if epoch != *cur || seq != *next_seq {
                    return Err(EpochFault::BadBatch);
                }
                *next_seq += 1;
                self.scratch.clear();
                // raw_len was bounded by MAX_BATCH_RAW when the message was decoded.
                let n = self.decompressor.decompress_batch(&data, &mut self.scratch, raw_len as usize).map_err(EpochFault::Zstd)?;
                if n != raw_len as usize {
                    return Err(EpochFault::BadRawLength);
                }
                applier.apply_batch(&self.scratch).map_err(EpochFault::Apply)?;
                Ok(Event::None)
            }
            Message::EpochCommit { epoch, digest, page_count } => {
                // A catch-up begun at `cur` commits at a later cut (`catchup`).
                if !matches!(self.state, State::Receiving { epoch: cur, .. } if epoch >= cur) {
                    return Err(EpochFault::BadBatch);
                }
                // Never an epoch of a lower term over a higher one's (the
                // handshake refuses such a session; this holds regardless).
                let (held, held_term) = applier.lineage();
                if let Some((lineage, term)) = self.lineage {
                    if lineage == held && term < held_term {
                        return Err(EpochFault::StaleTerm);
                    }
                }
                applier.commit(epoch, &digest, page_count).map_err(EpochFault::Apply)?;
                if let Some((lineage, term)) = self.lineage {
                    applier.set_lineage(lineage, term);
                }
                self.state = State::Idle;
                Ok(Event::Committed(epoch))
            }
            // The connection is alive; the caller saw bytes arrive.
            Message::KeepAlive => Ok(Event::None),
            Message::CpuState(b) => Ok(Event::CpuState(b)),
            Message::DeviceState(b) => Ok(Event::DeviceState(b)),
            Message::SwitchDone { epoch } => {
                if epoch != applier.committed_epoch() || applier.staging_epoch().is_some() {
                    return Err(EpochFault::Unexpected);
                }
                Ok(Event::SwitchDone(epoch))
            }
            Message::Hello(_)
            | Message::HelloAck(_)
            | Message::Ack { .. }
            | Message::SwitchRequest
            | Message::Resync { .. }
            | Message::Confirm { .. }
            | Message::Fenced { .. }
            | Message::SwitchTaken { .. } => Err(EpochFault::Unexpected),
        }
    }
}
