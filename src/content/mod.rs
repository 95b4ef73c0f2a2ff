//! What a file is, independent of its name: its size and the root of a SHA-256 Merkle
//! tree over its blocks ([`merkle`]), and which of its pieces a peer holds
//! ([`bitfield`]). Pure functions on bytes; only [`merkle::hash_file`] reads a file.

pub mod bitfield;
pub mod merkle;

pub use bitfield::Bitfield;
pub use merkle::{Geometry, Hash, Tree};
