//! Keys on this machine: this installation's identity, the peers it is
//! paired with, and pairing itself.
//!
//! | module | owns |
//! |---|---|
//! | [`identity`] | this installation's long-term keys (key file 0600) and fingerprint |
//! | [`peers`] | the paired peers file (names → keys) |
//! | [`pairing`] | `burrow pair`: public identities exchanged under a code |

pub mod identity;
pub mod pairing;
pub mod peers;
