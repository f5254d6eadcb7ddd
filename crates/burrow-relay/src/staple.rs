//! Stapling: two connections that meet under one key (a channel of the
//! table, an accepted lobby pair, a reconnect token) are joined and piped
//! (splice(2) where the kernel has it). One rule for every kind:
//! [`Shared::meet`](crate::server) pairs with a waiting partner or waits.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::oneshot;

use burrow_proto::channel::api::Role;
use burrow_proto::lobby::relay::Side;
use burrow_proto::staple::{
    IDENTITY_MAGIC, IdentityHello, MAX_HELLO_LEN, STAPLE_MAGIC, StapleHello, StapleReply, TOKEN_HELLO_LEN,
    TOKEN_MAGIC, TokenHello,
};

use crate::admission::{Phase, Ticket};

use crate::server::*;

pub(crate) async fn refuse(shared: &Shared, stream: &mut TcpStream, kind: &'static str, reason: &str) {
    shared.metrics.error(kind);
    let _ = stream
        .write_all(&StapleReply::Refused(reason.to_owned()).encode())
        .await;
    linger(stream).await;
}

/// Refuses a stapling connection whose greeting was cut short. An evicted
/// one does not linger: its slot is wanted now.
async fn refuse_cut(shared: &Shared, stream: &mut TcpStream, cut: Cut) {
    match cut {
        Cut::Timeout => refuse(shared, stream, "timeout", "hello not received in time").await,
        Cut::Evicted => {
            let why = "the relay is at capacity and needed this waiting connection's slot; try again later";
            let _ = stream.write_all(&StapleReply::Refused(why.into()).encode()).await;
            let _ = stream.shutdown().await;
        }
    }
}

async fn read_hello(stream: &mut TcpStream) -> Result<StapleHello, String> {
    let mut buf = STAPLE_MAGIC.to_vec();
    loop {
        match StapleHello::decode(&buf) {
            Ok(Some((h, n))) if n == buf.len() => return Ok(h),
            Ok(Some(_)) => return Err("bytes after the hello before stapling".into()),
            Ok(None) => {}
            Err(e) => return Err(format!("malformed hello: {e}")),
        }
        if buf.len() >= MAX_HELLO_LEN {
            return Err("hello too long".into());
        }
        let mut b = [0u8; MAX_HELLO_LEN];
        let want = MAX_HELLO_LEN - buf.len();
        let n = stream.read(&mut b[..want]).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed during hello".into());
        }
        buf.extend_from_slice(&b[..n]);
    }
}

pub(crate) async fn handle_staple(shared: Arc<Shared>, mut stream: TcpStream, ip: IpAddr, slot: &Ticket) {
    let hello = match greet(&shared, slot, read_hello(&mut stream)).await {
        Ok(Ok(h)) => h,
        Ok(Err(reason)) => return refuse(&shared, &mut stream, "bad_hello", &reason).await,
        Err(cut) => return refuse_cut(&shared, &mut stream, cut).await,
    };
    let ch = hello.channel.clone();
    let checked = lock(&shared.table).staple_check(Instant::now(), ip, &ch, &hex_bytes(&hello.uuid));
    let checked = match checked {
        Ok(t) => t,
        Err(e) => return refuse(&shared, &mut stream, e.kind(), &e.to_string()).await,
    };
    // The table vouched for it: a channel's peer is never evicted.
    slot.set(Phase::Working);
    staple(
        shared,
        stream,
        MeetKey::Channel(ch),
        checked.role,
        SameRole::Refuse,
        slot,
    )
    .await;
}

/// Pairs `stream` with its partner under `key`, or waits for it, then pipes.
async fn staple(
    shared: Arc<Shared>,
    mut stream: TcpStream,
    key: MeetKey,
    role: Role,
    same: SameRole,
    slot: &Ticket,
) {
    match shared.meet(&key, role, same) {
        Meet::Pair(tx) => {
            if let MeetKey::Lobby(pair) = &key {
                shared.lobby.forget_pair(pair);
            }
            if let Err(mut back) = tx.send(stream) {
                // The waiting side gave up a moment ago.
                refuse(&shared, &mut back, "staple_timeout", "the other peer is gone").await;
            }
        }
        Meet::Wait(id, rx) => wait_for_partner(shared, stream, key, (id, rx), slot).await,
        Meet::Duplicate => {
            refuse(
                &shared,
                &mut stream,
                "already_set",
                "this role is already connected",
            )
            .await
        }
    }
}

/// A lobby pair's second connection: it names its relay-given identity.
pub(crate) async fn handle_identity(shared: Arc<Shared>, mut stream: TcpStream, ip: IpAddr, slot: &Ticket) {
    let mut buf = IDENTITY_MAGIC.to_vec();
    let read = greet(&shared, slot, async {
        loop {
            match IdentityHello::decode(&buf) {
                Ok(Some((h, n))) if n == buf.len() => return Ok(h),
                Ok(Some(_)) => return Err("bytes after the hello before stapling"),
                Ok(None) => {}
                Err(_) => return Err("malformed identity hello"),
            }
            let mut b = [0u8; 1];
            match stream.read(&mut b).await {
                Ok(1) => buf.push(b[0]),
                _ => return Err("closed during hello"),
            }
        }
    })
    .await;
    let hello = match read {
        Ok(Ok(h)) => h,
        Ok(Err(reason)) => return refuse(&shared, &mut stream, "bad_hello", reason).await,
        Err(cut) => return refuse_cut(&shared, &mut stream, cut).await,
    };
    let Some((pair, side)) = shared.lobby.second_connection(hello.identity.as_str(), ip) else {
        return refuse(
            &shared,
            &mut stream,
            "no_pair",
            "no accepted lobby pair with this identity from this address",
        )
        .await;
    };
    let role = match side {
        Side::Server => Role::Sender,
        Side::Client => Role::Recipient,
    };
    // The lobby vouched for it (an accepted pair, from this address).
    slot.set(Phase::Working);
    staple(
        shared,
        stream,
        MeetKey::Lobby(pair),
        role,
        SameRole::Replace,
        slot,
    )
    .await;
}

/// A reconnecting pair: no channel, just a token both peers derived from
/// their session key. The newest connection per token and role waits; the
/// first of the other role staples to it.
pub(crate) async fn handle_token(shared: Arc<Shared>, mut stream: TcpStream, slot: &Ticket) {
    let mut buf = [0u8; TOKEN_HELLO_LEN];
    buf[..4].copy_from_slice(TOKEN_MAGIC);
    let read = greet(&shared, slot, stream.read_exact(&mut buf[4..])).await;
    let hello = match read {
        Ok(Ok(_)) => match TokenHello::decode(&buf) {
            Ok(Some((h, _))) => h,
            _ => return refuse(&shared, &mut stream, "bad_hello", "malformed token hello").await,
        },
        Ok(Err(_)) => return refuse(&shared, &mut stream, "bad_hello", "closed during hello").await,
        Err(cut) => return refuse_cut(&shared, &mut stream, cut).await,
    };
    // A newer connection of the same side replaces the waiting one (whose
    // wait then ends as expired). Anyone can make up a token: it waits
    // unvouched for, and may make room for a newcomer.
    slot.set(Phase::Waiting);
    staple(
        shared,
        stream,
        MeetKey::Token(hello.token),
        hello.role,
        SameRole::Replace,
        slot,
    )
    .await;
}

fn hex_bytes(u: &[u8]) -> String {
    u.iter().map(|b| format!("{b:02x}")).collect()
}

/// Waits for the partner under `ch`, then pipes (a channel's table entry
/// learns that it is stapled, and when the pipe ends).
async fn wait_for_partner(
    shared: Arc<Shared>,
    mut stream: TcpStream,
    ch: MeetKey,
    (id, rx): (u64, oneshot::Receiver<TcpStream>),
    slot: &Ticket,
) {
    if stream.write_all(&StapleReply::Waiting.encode()).await.is_err() {
        shared.forget(&ch, id);
        return;
    }
    // Wait for the partner, but notice if this peer hangs up meanwhile (so
    // that it can come back without being refused as "already connected"),
    // or talks before it is stapled.
    enum Waited {
        Partner(TcpStream),
        Gone,
        Chatter,
        Expired,
        Evicted,
    }
    let waited = tokio::time::timeout(shared.cfg.staple_timeout, async {
        let mut probe = [0u8; 1];
        tokio::select! {
            p = rx => match p {
                Ok(p) => Waited::Partner(p),
                Err(_) => Waited::Expired,
            },
            n = stream.peek(&mut probe) => match n {
                Ok(0) | Err(_) => Waited::Gone,
                Ok(_) => Waited::Chatter,
            },
            () = slot.evicted() => Waited::Evicted,
        }
    })
    .await;
    let partner = match waited {
        Ok(Waited::Partner(p)) => p,
        Ok(Waited::Gone) => {
            shared.forget(&ch, id);
            shared.metrics.error("staple_gone");
            return;
        }
        Ok(Waited::Chatter) => {
            shared.forget(&ch, id);
            return refuse(&shared, &mut stream, "bad_hello", "bytes sent before stapling").await;
        }
        Ok(Waited::Evicted) => {
            shared.forget(&ch, id);
            return refuse_cut(&shared, &mut stream, Cut::Evicted).await;
        }
        Ok(Waited::Expired) | Err(_) => {
            shared.forget(&ch, id);
            return refuse(
                &shared,
                &mut stream,
                "staple_timeout",
                "the other peer did not connect in time",
            )
            .await;
        }
    };
    slot.set(Phase::Working);
    if let Some(c) = ch.channel() {
        lock(&shared.table).set_stapled(Instant::now(), c);
        shared.wake(c);
    }
    shared.metrics.staples_total.fetch_add(1, Ordering::Relaxed);
    shared.metrics.staples_active.fetch_add(1, Ordering::Relaxed);
    let mut partner = partner;
    let ok = StapleReply::Stapled.encode();
    if stream.write_all(&ok).await.is_ok() && partner.write_all(&ok).await.is_ok() {
        pipe(&shared, stream, partner).await;
    }
    shared.metrics.staples_active.fetch_sub(1, Ordering::Relaxed);
    if let Some(c) = ch.channel() {
        lock(&shared.table).close(Instant::now(), c, "the relay connection ended");
        shared.wake(c);
    }
}

/// Copies bytes both ways until both directions are finished. End of stream
/// (or an error) in one direction is passed on as a half-close.
pub(crate) async fn pipe(shared: &Shared, a: TcpStream, b: TcpStream) {
    let (ar, aw) = a.into_split();
    let (br, bw) = b.into_split();
    let size = shared.cfg.pipe_buffer;
    // Each direction runs to its own end: when one side fails (say, writing to
    // a receiver that closed), the other direction must still deliver what
    // that receiver said last (its error message). It ends promptly anyway,
    // since the failed side's socket is closed.
    let (r1, r2) = tokio::join!(copy_half(shared, ar, bw, size), copy_half(shared, br, aw, size));
    for r in [r1, r2] {
        if let Err(e) = r {
            tracing::debug!("pipe direction ended: {e}");
        }
    }
}

async fn copy_half(
    shared: &Shared,
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    size: usize,
) -> std::io::Result<()> {
    let res =
        match rustix::pipe::pipe_with(rustix::pipe::PipeFlags::NONBLOCK | rustix::pipe::PipeFlags::CLOEXEC) {
            Ok(pipe) => splice_half(shared, &from, &to, pipe, size).await,
            Err(_) => copy_loop(shared, &mut from, &mut to, size).await,
        };
    // Pass the end on, clean or not, so the other peer is not left waiting.
    let _ = to.shutdown().await;
    res
}

/// Moves bytes socket → pipe → socket in the kernel (splice(2)): the relay
/// never copies them into its own memory.
async fn splice_half(
    shared: &Shared,
    from: &OwnedReadHalf,
    to: &OwnedWriteHalf,
    (pr, pw): (std::os::fd::OwnedFd, std::os::fd::OwnedFd),
    size: usize,
) -> std::io::Result<()> {
    use rustix::pipe::{SpliceFlags, splice};
    use tokio::io::Interest;
    let _ = rustix::pipe::fcntl_setpipe_size(&pw, size);
    let flags = SpliceFlags::NONBLOCK | SpliceFlags::MOVE;
    let (src, dst): (&TcpStream, &TcpStream) = (from.as_ref(), to.as_ref());
    loop {
        src.readable().await?;
        let n = match src.try_io(Interest::READABLE, || {
            splice(src, None, &pw, None, size, flags).map_err(std::io::Error::from)
        }) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        let mut left = n;
        while left > 0 {
            dst.writable().await?;
            match dst.try_io(Interest::WRITABLE, || {
                splice(&pr, None, dst, None, left, flags).map_err(std::io::Error::from)
            }) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(m) => left -= m,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        shared
            .metrics
            .bytes_relayed
            .fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// The portable fallback: copy through a buffer.
async fn copy_loop(
    shared: &Shared,
    from: &mut OwnedReadHalf,
    to: &mut OwnedWriteHalf,
    size: usize,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; size];
    async {
        loop {
            let n = from.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            to.write_all(&buf[..n]).await?;
            shared
                .metrics
                .bytes_relayed
                .fetch_add(n as u64, Ordering::Relaxed);
        }
    }
    .await
}
