//! Sync glue: the epochs of the running guest, encoded exactly as they will
//! be sent, through `sync-core`. Until the network lands, the sealed frames
//! go to an in-process standby (with `--verify`) or are counted and dropped.
pub mod engine;
pub mod fence_listener;
pub mod loopback;
pub mod peers;
pub mod raw_pages;
pub mod session;
pub mod standby_node;
pub mod workload_start;
