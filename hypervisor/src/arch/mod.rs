//! Architecture code. Only the pure-logic parts (syndrome decoding) build
//! on the host; the rest only for the bare-metal target.
pub mod aarch64;
