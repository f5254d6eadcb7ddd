//! Seed 004 in the runtime: onion circuits through the mesh.
//!
//! | module | owns |
//! |---|---|
//! | [`directory`] | `burrow directory` (one authority), and the directory client calls |
//! | `relay` | a node's circuit relay and exit (`burrow node --directory ... [--exit]`) |
//! | [`client`] | circuits for a client: path, build ahead of need, streams; `burrow fetch`, `burrow proxy --hops` |
//! | `link` | a client's link to its entry node, under a fresh key |
//! | `streams` | a circuit's streams tied to sockets, with the mux's flow control |
//! | `http` | the directory's HTTP/1.1, bounded |

pub mod client;
pub mod directory;
mod http;
mod link;
pub mod relay;
mod streams;

pub use client::{FetchReport, OnionClient, OnionClientConfig, fetch, parse_http_url, serve_proxy};
pub use directory::{DirectoryAddr, DirectoryConfig, run_directory};
pub use relay::{OnionNodeConfig, default_exit_ports};
