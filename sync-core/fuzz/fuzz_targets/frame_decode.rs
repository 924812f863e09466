//! Fuzzes what a standby does with bytes from the network: the frame
//! decoder, the session opener, message decoding, zstd, the page-record
//! codec and the applier. Run: `cd sync-core/fuzz && cargo +nightly fuzz
//! run frame_decode`.
//!
//! The first input byte picks a mode:
//! - 0: raw stream bytes (a stranger without the key): framing + opener.
//! - 1: a hostile *authenticated* peer: the rest is a sequence of
//!   length-prefixed message bodies, sealed with the session's real key,
//!   so message parsing, decompression and the applier are reached.
//! - 2: a decompressed record batch straight into the applier.
//!
//! Invariant checked in every mode: nothing panics, and the committed
//! image only ever changes through a commit whose digest matched (its
//! incremental digest always equals a recomputed one; without a commit
//! it equals the initial image).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sync_core::applier::Applier;
use sync_core::compress::ZstdConfig;
use sync_core::crypto::{derive_session_keys, Drbg, PairingSecret, Role, Sealer, TAG_LEN};
use sync_core::digest::{PageHashes, VecMemory};
use sync_core::standby::{Event, StandbyReceiver};
use sync_core::wire::{
    transcript_hash, Frame, FrameDecoder, FrameKind, Handshake, Message, RamLayout, Session,
    PROTOCOL_VERSION, WIRE_PAGE_SIZE,
};

const PAGES: usize = 8;

fn hs(nonce: u8) -> Handshake {
    Handshake {
        version: PROTOCOL_VERSION,
        vm_id: [1; 16],
        platform_id: [2; 32],
        ram: RamLayout {
            base: 0,
            size: (PAGES * 4096) as u64,
        },
        page_size: WIRE_PAGE_SIZE,
        last_committed: 1,
        nonce: [nonce; 32],
        ephemeral: [0; 32],
        standing: Default::default(),
    }
}

fn image() -> VecMemory {
    let mut m = VecMemory::zeroed(PAGES);
    for (i, p) in m.pages_mut().iter_mut().enumerate() {
        p[i * 7] = i as u8 + 1;
    }
    m
}

fn check(a: &Applier<VecMemory>, initial: &VecMemory, commits: u32) {
    assert_eq!(a.digest(), PageHashes::of_memory(a.image()).digest());
    if commits == 0 {
        assert!(a.image() == initial, "image changed without a commit");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let secret = PairingSecret::new([9; 32]);
    let (mut h, mut ack) = (hs(1), hs(2));
    let mut rng = Drbg::new([5; 32]);
    let k_active = h.refresh(&mut rng);
    let k_standby = ack.refresh(&mut rng);
    let Ok(shared) = k_active.agree(&ack.ephemeral) else { return };
    let keys = derive_session_keys(&secret, &shared, &transcript_hash(&h, &ack));
    let (mut active, _) = keys.split(Role::Initiator);
    let Ok(mut standby) = Session::establish(&secret, Role::Responder, &h, &ack, k_standby) else { return };
    // Key confirmation first, as on the wire: our Confirm, then the active
    // side's (sealed with its real key), so the fuzzed frames are opened.
    if standby.seal_confirm(&mut Vec::new()).is_err() {
        return;
    }
    let mut confirm = Vec::new();
    if (Message::Confirm { transcript: transcript_hash(&h, &ack) }).encode(&mut confirm).is_err() {
        return;
    }
    if standby.open_confirm(seal_raw(&mut active, &confirm)).is_err() {
        return;
    }
    let mut rx = match StandbyReceiver::new(standby, ZstdConfig::default()) {
        Ok(r) => r,
        Err(_) => return,
    };
    let initial = image();
    let mut a = Applier::new(initial.clone(), 1);
    let mut commits = 0;
    let mut out = Vec::new();
    match mode % 3 {
        0 => {
            let mut dec = FrameDecoder::new();
            let mut input = rest;
            while !input.is_empty() {
                match dec.decode(&mut input) {
                    Ok(Some(f)) => {
                        if rx.on_frame(f, &mut a, &mut out).is_err() {
                            break;
                        }
                    }
                    Ok(None) => {}
                    Err(_) => break,
                }
                check(&a, &initial, commits);
            }
            let _ = dec.finish();
        }
        1 => {
            // u16 length ‖ body, repeated.
            let mut input = rest;
            while input.len() >= 2 {
                let len = u16::from_le_bytes([input[0], input[1]]) as usize;
                let body = &input[2..(2 + len).min(input.len())];
                input = &input[(2 + len).min(input.len())..];
                // Seal the body as the active side would (bypassing Message
                // encoding, so malformed bodies reach the parser).
                let frame = seal_raw(&mut active, body);
                match rx.on_frame(frame, &mut a, &mut out) {
                    Ok(Event::Committed(_)) => commits += 1,
                    Ok(_) => {}
                    Err(_) => break,
                }
                check(&a, &initial, commits);
            }
        }
        _ => {
            if a.begin(2, 1).is_ok() && a.apply_batch(rest).is_ok() {
                // A commit with the unchanged image's digest succeeds only
                // if the batch left every page as it was.
                let d = a.digest();
                if a.commit(2, &d, u64::MAX).is_ok() {
                    commits += 1;
                }
            }
            check(&a, &initial, commits);
        }
    }
});

/// Seals arbitrary plaintext as one sealed frame, as `Session::seal` frames
/// a message (header = body length u32 LE ‖ kind 0x02, the header is the
/// AEAD's associated data), so bodies that are not valid messages reach
/// the parser.
fn seal_raw(sealer: &mut Sealer, body: &[u8]) -> Frame {
    let mut buf = body.to_vec();
    let mut header = [0u8; 5];
    header[..4].copy_from_slice(&((body.len() + TAG_LEN) as u32).to_le_bytes());
    header[4] = 0x02;
    // u16 bodies are far from the AEAD's limits; the counter follows the Confirm's.
    let tag = sealer
        .seal(&header, &mut buf)
        .expect("sealing a short body");
    buf.extend_from_slice(&tag);
    Frame {
        kind: FrameKind::Sealed,
        body: buf,
    }
}
