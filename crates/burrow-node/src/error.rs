//! The error type of the peer runtime, with a coarse kind for exit codes.

use std::path::PathBuf;

use burrow_proto::session::SessionError;
use burrow_proto::transfer::TransferError;

/// Coarse error classes; `burrow` maps each to an exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Bad arguments or configuration (exit 2).
    Usage,
    /// The codes did not match (exit 3).
    WrongCode,
    /// The relay could not be reached or refused us (exit 4).
    Relay,
    /// The offer was declined by either side (exit 5).
    Declined,
    /// Data failed an integrity check (exit 6).
    Integrity,
    /// A local file system problem: no space, exists, permissions (exit 7).
    Local,
    /// The other peer went away or misbehaved (exit 8).
    Peer,
    /// Anything else (exit 1).
    Other,
}

impl ErrorKind {
    /// The process exit code for this kind.
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorKind::Other => 1,
            ErrorKind::Usage => 2,
            ErrorKind::WrongCode => 3,
            ErrorKind::Relay => 4,
            ErrorKind::Declined => 5,
            ErrorKind::Integrity => 6,
            ErrorKind::Local => 7,
            ErrorKind::Peer => 8,
        }
    }
}

/// Everything that can end a transfer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A bad argument.
    #[error("{0}")]
    Usage(String),
    /// The relay's address did not resolve or refused the connection.
    #[error("cannot reach the relay at {addr}: {source}")]
    RelayUnreachable {
        /// The relay address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// No relay configured, and no sender announced on the local network.
    #[error("{0}")]
    NotFound(String),
    /// The relay answered with an error.
    #[error("the relay refused: {message}")]
    Relay {
        /// The relay's error kind (e.g. `full`).
        kind: String,
        /// Its message.
        message: String,
    },
    /// The relay answered something that is not its protocol.
    #[error("the relay answered something unexpected: {0}")]
    RelayProtocol(String),
    /// Key confirmation failed.
    #[error("wrong code: the two sides did not type the same code (this code is now used up; start again)")]
    WrongCode,
    /// The other peer closed the channel.
    #[error("the other side closed the channel: {0}")]
    PeerClosed(String),
    /// The other side stopped answering.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The receiver declined the offer.
    #[error("the offer was declined: {0}")]
    Declined(String),
    /// An integrity check failed.
    #[error("{0}")]
    Integrity(String),
    /// The peer broke the protocol.
    #[error("{0}")]
    Protocol(String),
    /// A connection dropped and no new one could be made in time.
    #[error(
        "{cause}; reconnecting failed for {}s: {last}. Run the same transfer again with a new code: \
         finished files are kept and the interrupted one resumes",
        .waited.as_secs()
    )]
    Reconnect {
        /// What ended the connection.
        cause: Box<Error>,
        /// Why the last attempt failed.
        last: Box<Error>,
        /// How long it tried.
        waited: std::time::Duration,
    },
    /// The peer's connection dropped.
    #[error("the connection to the other side was lost: {0}")]
    ConnectionLost(std::io::Error),
    /// A local file error.
    #[error("{}: {source}", shown(path))]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Not enough free space for the offer.
    #[error(
        "not enough disk space in {}: the offer needs {need} bytes, {avail} are free",
        shown(dir)
    )]
    NoSpace {
        /// Output folder.
        dir: PathBuf,
        /// Bytes offered.
        need: u64,
        /// Bytes free.
        avail: u64,
    },
    /// A stream of unknown size would have filled the file system.
    #[error(
        "stopped receiving the stream: the disk holding {} would fill up (it keeps {reserve} bytes free)",
        shown(dir)
    )]
    StreamFull {
        /// Output folder.
        dir: PathBuf,
        /// Bytes left free.
        reserve: u64,
    },
    /// Files would be overwritten without consent.
    #[error("{} already exist{} in the output folder (use --overwrite to replace): {}", .0.len(), if .0.len() == 1 { "s" } else { "" }, .0.join(", "))]
    Exists(Vec<String>),
}

/// A path as it may be printed: it can hold names the peer chose, so
/// control characters and bidirectional overrides are escaped.
pub fn shown(p: &std::path::Path) -> String {
    burrow_proto::transfer::escape_display(&p.to_string_lossy())
}

impl Error {
    /// A dropped or silent connection: worth connecting again within the session.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::ConnectionLost(_) | Error::Timeout(_))
    }

    /// The coarse kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Usage(_) => ErrorKind::Usage,
            Error::RelayUnreachable { .. }
            | Error::Relay { .. }
            | Error::RelayProtocol(_)
            | Error::NotFound(_) => ErrorKind::Relay,
            Error::WrongCode => ErrorKind::WrongCode,
            Error::Declined(_) => ErrorKind::Declined,
            Error::Integrity(_) => ErrorKind::Integrity,
            Error::Io { .. } | Error::NoSpace { .. } | Error::StreamFull { .. } | Error::Exists(_) => {
                ErrorKind::Local
            }
            Error::PeerClosed(_)
            | Error::Timeout(_)
            | Error::Protocol(_)
            | Error::ConnectionLost(_)
            | Error::Reconnect { .. } => ErrorKind::Peer,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

impl From<SessionError> for Error {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::Integrity => Error::Integrity(e.to_string()),
            SessionError::Handshake(_) => Error::Integrity(format!(
                "{e} (the relay or someone in the middle altered the connection)"
            )),
            other => Error::Protocol(other.to_string()),
        }
    }
}

impl From<TransferError> for Error {
    fn from(e: TransferError) -> Self {
        match e {
            TransferError::HashMismatch(_) => Error::Integrity(e.to_string()),
            TransferError::Rejected(r) => Error::Declined(r),
            TransferError::Peer(m) => Error::PeerClosed(m),
            TransferError::Silent(_) => Error::Timeout(e.to_string()),
            TransferError::Local(m) => Error::Usage(m),
            other => Error::Protocol(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_in_messages_are_escaped() {
        let e = Error::io("out/a\x1b]0;owned\x07/f", std::io::Error::other("no"));
        let m = e.to_string();
        assert!(
            !m.contains('\x1b') && !m.contains('\x07') && m.contains("owned"),
            "{m:?}"
        );
        let e = Error::NoSpace {
            dir: "o\u{202e}txt".into(),
            need: 2,
            avail: 1,
        };
        assert!(!e.to_string().contains('\u{202e}'));
    }
}
