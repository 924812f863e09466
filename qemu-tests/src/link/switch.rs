//! A learning switch: where a frame goes, by destination MAC.
use super::frame;
use std::collections::HashMap;

#[derive(Debug, Default)]
pub struct MacTable {
    port_of: HashMap<[u8; 6], usize>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// To this device only.
    One(usize),
    /// Broadcast, multicast or not yet learned: to every other device.
    Flood,
    /// Addressed to a station on the sender's own port: a switch filters it.
    Filtered,
}

impl MacTable {
    /// Learns where `frame`'s sender is and says where the frame goes.
    pub fn route(&mut self, from: usize, frame: &[u8]) -> Route {
        if let Some(src) = frame::src_mac(frame).filter(|m| !frame::is_group(m)) {
            self.port_of.insert(src, from);
        }
        let Some(dst) = frame::dst_mac(frame) else { return Route::Filtered };
        if frame::is_group(&dst) {
            return Route::Flood;
        }
        match self.port_of.get(&dst) {
            Some(&to) if to == from => Route::Filtered,
            Some(&to) => Route::One(to),
            None => Route::Flood,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
        [&dst[..], &src[..], &[0x08, 0x00]].concat()
    }

    #[test]
    fn learns_and_floods() {
        let (a, b) = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let mut t = MacTable::default();
        assert_eq!(t.route(0, &frame(b, a)), Route::Flood);
        assert_eq!(t.route(1, &frame(a, b)), Route::One(0));
        assert_eq!(t.route(0, &frame(b, a)), Route::One(1));
        assert_eq!(t.route(0, &frame([0xff; 6], a)), Route::Flood);
        assert_eq!(t.route(1, &frame(b, b)), Route::Filtered);
    }
}
