//! Seed 004: onion circuits through the mesh.
//!
//! | module | owns |
//! |---|---|
//! | [`cgo`] | Counter Galois Onion: the per-hop, per-cell encryption of relay cells (Tor proposal 359) |

pub mod cgo;
