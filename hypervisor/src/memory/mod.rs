//! Memory: the board's physical RAM, guest RAM and stage-2 translation.
pub mod guest;
pub mod layout;
pub mod phys;
pub mod stage2;
