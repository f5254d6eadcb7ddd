//! Seed 002: the mesh of a user's own machines. Nodes link to each other
//! over any ordered byte stream, keep the links alive, tell each other
//! about the nodes they know (signed node records), pair, and carry
//! datagrams and tunnel streams for each other.
//!
//! | module | owns |
//! |---|---|
//! | [`packet`] | the seed's packets 0x00–0x0d, the link's preamble and framing |
//! | [`record`] | signed node records, their checks, the node list digest |
//! | [`table`] | the node table: checked records, bounded, digest and pages for NLIST |
//! | [`pair`] | pairing inside a link (SPAKE2 bound to the link's handshake hash) |
//! | [`link`] | one link as a machine: handshake (Noise `XX` / `IK` under HELLO … FIN_ACK), keepalives, rekeying, DISCONNECT |
//!
//! Message flow of a link, from dial to close:
//!
//! ```text
//! outbound                                   inbound
//!   BRWM 01 HELLO                     ->
//!                                     <-     HELLO_ACK
//!   FIN (+ first packets)             ->
//!                                     <-     FIN_ACK (+ first packets)
//!   NLIST_REQ / NLIST_RES / PAIR_* / DATA / TUNNEL_*  <->
//!                                     <-     KEEP_ALIVE (probe, after an idle interval)
//!   KEEP_ALIVE (answer)               ->
//!   DISCONNECT(reason)                <->
//! ```

pub mod link;
pub mod packet;
pub mod pair;
pub mod record;
pub mod table;
