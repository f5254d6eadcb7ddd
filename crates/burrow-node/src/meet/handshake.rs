//! The one handshake driver: runs any [`Handshake`] (NNpsk0, XX) over an
//! async byte stream, writing when it is this side's turn and reading one
//! length-prefixed message otherwise, until it is finished, within a time
//! limit. What a message's payload must say (the relay's keys in seed 000)
//! is checked by the caller's `check`, which sees the handshake as it is
//! after that message.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use burrow_proto::session::{Handshake, LEN_PREFIX, Opener, Sealer};

use crate::error::Error;

/// Reads one length-prefixed frame (a handshake message or a record's
/// ciphertext), exactly: nothing after it is consumed.
pub(crate) async fn read_frame<S: AsyncRead + Unpin>(s: &mut S) -> Result<Vec<u8>, Error> {
    let mut len = [0u8; LEN_PREFIX];
    s.read_exact(&mut len).await.map_err(Error::ConnectionLost)?;
    let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut msg).await.map_err(Error::ConnectionLost)?;
    Ok(msg)
}

/// Runs `hs` to completion on `s`; `check` sees every payload read (with
/// the handshake after it). Fails after `limit` with a timeout naming `what`.
pub(crate) async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    mut hs: Handshake,
    limit: Duration,
    what: &str,
    mut check: impl FnMut(&Handshake, &[u8]) -> Result<(), Error>,
) -> Result<Handshake, Error> {
    let run = async {
        while !hs.is_finished() {
            if hs.is_my_turn() {
                s.write_all(&hs.write_message()?)
                    .await
                    .map_err(Error::ConnectionLost)?;
            } else {
                let payload = hs.read_message_payload(&read_frame(s).await?)?;
                check(&hs, &payload)?;
            }
        }
        Ok::<_, Error>(hs)
    };
    tokio::time::timeout(limit, run)
        .await
        .map_err(|_| Error::Timeout(format!("the other side did not answer during {what}")))?
}

/// [`drive`] with no payloads to check, straight to the transport halves.
pub(crate) async fn transport<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    hs: Handshake,
    limit: Duration,
    what: &str,
) -> Result<(Sealer, Opener), Error> {
    let hs = drive(s, hs, limit, what, |_, _| Ok(())).await?;
    Ok(hs.into_transport()?.split())
}
