//! Seed 004: onion circuits through the mesh.
//!
//! | module | owns |
//! |---|---|
//! | [`cgo`] | Counter Galois Onion: the per-hop, per-cell encryption of relay cells (Tor proposal 359) |
//! | [`handshake`] | the per-hop `NK` handshake against a node's onion key, its replay cache, the hop keys |
//! | [`cell`] | the fixed-size cells on a link and the relay messages inside them |
//! | [`directory`] | seed's main controller: descriptors, authorities' votes, the signed node list (majority of pinned authorities) |
//! | [`authority`] | one authority's state: registrations, reachability, votes, the consensus and its signatures |
//! | [`path`] | path selection: exit by policy, guard, middles; no node twice, no shared /16 or family |
//! | [`circuit`] | the client's circuit machine and a node's relay machine: telescoping builds, layers both ways, windows |

pub mod authority;
pub mod cell;
pub mod cgo;
pub mod circuit;
pub mod directory;
pub mod handshake;
pub mod path;
