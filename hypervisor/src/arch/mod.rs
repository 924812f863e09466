//! Architecture code, behind the seam the node is generic over. Only the
//! seam and the pure-logic parts (syndrome decoding, the vCPU state's
//! bytes) build on the host; the rest only for the bare-metal target.
pub mod aarch64;
pub mod seam;
