//! The physical board's description, from `targets/<board>/board.rs`.
include!(concat!(env!("VMSYNC_BOARD_DIR"), "/board.rs"));
