//! The active device listens on its sync port too. The only device that
//! connects to a device running the guest is another one running the same
//! guest (after a partition and a failover, two devices do until they
//! meet): it treats this one as a standby, and the handshake compares the
//! two terms (`sync_core::fence`). The lower term stops its guest:
//! - ours is higher: the HelloAck and a sealed `Fenced` tell the other
//!   device (its `ActivePeer` steps it down);
//! - theirs is higher: once its Confirm opens (the key is proven), `pump`
//!   reports the term that ends ours.
//!
//! Anything else (another guest, an equal term, garbage, silence past the
//! handshake time) closes the connection. One connection at a time.
use alloc::boxed::Box;
use alloc::vec::Vec;
use log::warn;
use sync_core::crypto::{Drbg, EphemeralKey, PairingSecret, Role};
use sync_core::fence::{judge, term_count, Term, Verdict};
use sync_core::wire::{decode_clear, encode_clear, FrameDecoder, Handshake, Message, Session};

use crate::net::stack::{Handle, NetDevice, Stack, TcpState};

/// A connection that has decided nothing by then is dropped.
const DEADLINE_MS: u64 = 5_000;
const READ_CHUNK: usize = 64 << 10;

enum State {
    AwaitHello {
        key: EphemeralKey,
        nonce: [u8; 32],
    },
    /// Their term is higher: their first sealed frame proves it.
    Proving {
        session: Box<Session>,
        term: Term,
    },
    /// Ours is higher: `Fenced` went out; the other device drops the
    /// connection.
    Told,
}

struct Conn {
    tcp: Handle,
    state: State,
    decoder: FrameDecoder,
    outbox: Vec<u8>,
    since_ms: u64,
}

pub struct FenceListener {
    port: u16,
    listener: Option<Handle>,
    conn: Option<Conn>,
}

/// What a connection's bytes decided.
enum Step {
    Wait,
    Close,
    /// A proven higher term: ours is over.
    Ours(Term),
}

impl FenceListener {
    pub fn new(port: u16) -> Self {
        FenceListener { port, listener: None, conn: None }
    }

    /// Stops listening (this device stops being active).
    pub fn shutdown<D: NetDevice>(&mut self, net: &mut Stack<D>) {
        if let Some(c) = self.conn.take() {
            net.abort(c.tcp);
            net.release(c.tcp);
        }
        if let Some(l) = self.listener.take() {
            net.abort(l);
            net.release(l);
        }
    }

    fn close<D: NetDevice>(&mut self, net: &mut Stack<D>) {
        if let Some(c) = self.conn.take() {
            net.close(c.tcp);
            net.release(c.tcp);
        }
    }

    /// Accepts and answers; `ours` is our handshake as Peers sends it now
    /// (last cut, standing with its digest). Some(term): a device proved
    /// it runs this guest under a higher term. Never waits.
    pub fn pump<D: NetDevice>(&mut self, net: &mut Stack<D>, ours: &Handshake, secret: &PairingSecret, rng: &mut Drbg, now_ms: u64) -> Option<Term> {
        if self.listener.is_none() {
            self.listener = net.tcp_listen(self.port).ok();
        }
        if let Some(l) = self.listener {
            if net.is_established(l) {
                self.listener = None;
                if self.conn.is_some() {
                    // One at a time: the newcomer waits for the next listen.
                    net.abort(l);
                    net.release(l);
                } else {
                    let mut mine = ours.clone();
                    let key = mine.refresh(rng);
                    let nonce = mine.nonce;
                    self.conn =
                        Some(Conn { tcp: l, state: State::AwaitHello { key, nonce }, decoder: FrameDecoder::new(), outbox: Vec::new(), since_ms: now_ms });
                }
            }
        }
        let c = self.conn.as_mut()?;
        if matches!(net.state(c.tcp), TcpState::Closed | TcpState::CloseWait | TcpState::TimeWait | TcpState::Closing | TcpState::LastAck)
            || now_ms.saturating_sub(c.since_ms) > DEADLINE_MS
        {
            self.close(net);
            return None;
        }
        let mut buf = Vec::new();
        let step = match net.recv(c.tcp, &mut buf, READ_CHUNK) {
            0 => Step::Wait,
            _ => on_bytes(c, &buf, ours, secret),
        };
        while !c.outbox.is_empty() {
            let sent = net.send(c.tcp, &c.outbox);
            if sent == 0 {
                break;
            }
            c.outbox.drain(..sent);
        }
        match step {
            Step::Wait => None,
            Step::Close => {
                self.close(net);
                None
            }
            Step::Ours(term) => {
                self.close(net);
                Some(term)
            }
        }
    }
}

fn on_bytes(c: &mut Conn, mut bytes: &[u8], ours: &Handshake, secret: &PairingSecret) -> Step {
    loop {
        let frame = match c.decoder.decode(&mut bytes) {
            Ok(Some(f)) => f,
            Ok(None) => return Step::Wait,
            Err(_) => return Step::Close,
        };
        match &mut c.state {
            State::AwaitHello { .. } => {
                let Ok(Message::Hello(hello)) = decode_clear(&frame) else { return Step::Close };
                let State::AwaitHello { key, nonce } = core::mem::replace(&mut c.state, State::Told) else { return Step::Close };
                // Our state as of now, with this connection's nonce and key.
                let mut ack = ours.clone();
                ack.nonce = nonce;
                ack.ephemeral = key.public();
                if ack.check_peer(&hello).is_err() || encode_clear(&Message::HelloAck(ack.clone()), &mut c.outbox).is_err() {
                    return Step::Close;
                }
                let Ok(mut session) = Session::establish(secret, Role::Responder, &hello, &ack, key) else { return Step::Close };
                // Our Confirm first, as a standby's: then its Confirm proves
                // the key to us, and our `Fenced` opens on its side.
                if session.seal_confirm(&mut c.outbox).is_err() {
                    return Step::Close;
                }
                let (theirs, mine) = (hello.standing, ack.standing);
                let same = theirs.lineage == mine.lineage;
                match judge(&theirs, hello.last_committed, &mine, ack.last_committed) {
                    Verdict::Fence { term } => {
                        warn!(
                            "fence: a device runs this guest under term {} (ours is {}): told it its term is over",
                            term_count(theirs.term),
                            term_count(term)
                        );
                        if session.seal(&Message::Fenced { term }, &mut c.outbox).is_err() {
                            return Step::Close;
                        }
                    }
                    _ if same && theirs.term > mine.term => c.state = State::Proving { session: Box::new(session), term: theirs.term },
                    _ => return Step::Close,
                }
            }
            State::Proving { session, term } => {
                return match session.open_confirm(frame) {
                    Ok(()) => Step::Ours(*term),
                    Err(_) => Step::Close,
                };
            }
            State::Told => return Step::Wait,
        }
    }
}
