//! Hypervisor commands typed on a device's console. An escape byte (0x1d,
//! Ctrl-]) starts one, so guest input is never mistaken for a command:
//! `ESC switch` + Enter asks the active device for the guest, `ESC
//! failover` + Enter takes it over from this device's last committed
//! epoch, `ESC resync` + Enter lets the next active device of another
//! guest (or of a history that does not include this standby's epoch)
//! replace its image. `ESC ESC` is one literal 0x1d for the guest.

pub const ESCAPE: u8 = 0x1d;
const MAX_WORD: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Switch,
    Failover,
    Resync,
    Unknown(heapless::String<MAX_WORD>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A byte for the guest.
    Guest(u8),
    /// Swallowed (part of a command being typed).
    Held,
    Command(Command),
}

#[derive(Default)]
pub struct ConsoleCommands {
    /// `Some` while a command is being typed after the escape.
    word: Option<heapless::String<MAX_WORD>>,
    overlong: bool,
}

impl ConsoleCommands {
    pub fn feed(&mut self, b: u8) -> Input {
        let Some(word) = self.word.as_mut() else {
            if b == ESCAPE {
                self.word = Some(heapless::String::new());
                self.overlong = false;
                return Input::Held;
            }
            return Input::Guest(b);
        };
        match b {
            ESCAPE if word.is_empty() => {
                self.word = None;
                Input::Guest(ESCAPE)
            }
            b'\r' | b'\n' => {
                let w = self.word.take().unwrap_or_default();
                if w.is_empty() && !self.overlong {
                    // A bare escape and Enter: nothing asked.
                    return Input::Held;
                }
                Input::Command(match (w.as_str(), self.overlong) {
                    ("switch", false) => Command::Switch,
                    ("failover", false) => Command::Failover,
                    ("resync", false) => Command::Resync,
                    _ => Command::Unknown(w),
                })
            }
            0x20..=0x7e => {
                if word.push(b as char).is_err() {
                    self.overlong = true;
                }
                Input::Held
            }
            // Control bytes inside a command are dropped.
            _ => Input::Held,
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    fn feed_all(c: &mut ConsoleCommands, bytes: &[u8]) -> Vec<Input> {
        bytes.iter().map(|&b| c.feed(b)).filter(|i| *i != Input::Held).collect()
    }

    #[test]
    fn commands_are_recognised_and_guest_bytes_pass() {
        let mut c = ConsoleCommands::default();
        assert_eq!(feed_all(&mut c, b"ls\n"), [Input::Guest(b'l'), Input::Guest(b's'), Input::Guest(b'\n')]);
        assert_eq!(feed_all(&mut c, b"\x1dswitch\n"), [Input::Command(Command::Switch)]);
        assert_eq!(feed_all(&mut c, b"\x1dfailover\r"), [Input::Command(Command::Failover)]);
        assert_eq!(feed_all(&mut c, b"\x1dresync\r"), [Input::Command(Command::Resync)]);
        assert_eq!(feed_all(&mut c, b"\x1d\x1dx"), [Input::Guest(ESCAPE), Input::Guest(b'x')]);
        let Input::Command(Command::Unknown(w)) = feed_all(&mut c, b"\x1dreboot\n")[0].clone() else { panic!() };
        assert_eq!(w.as_str(), "reboot");
        // Overlong words are unknown, not truncated into a known one.
        let r = feed_all(&mut c, b"\x1dswitchswitchswitchswitch\n");
        assert!(matches!(r[..], [Input::Command(Command::Unknown(_))]), "{r:?}");
        assert_eq!(feed_all(&mut c, b"\x1d\n"), []);
        assert_eq!(feed_all(&mut c, b"a"), [Input::Guest(b'a')]);
    }
}
