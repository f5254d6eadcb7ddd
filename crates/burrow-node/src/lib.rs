//! burrow's peer runtime and public Rust API: "croc as a library" (seed 001).
//!
//! A [`Transfer`] is configured with a builder (relay, code, options), then
//! [`Transfer::send`]s a [`Source`] or [`Transfer::receive`]s into a [`Sink`].
//! Progress and the offer decision reach the caller through an [`Observer`].
//!
//! ```no_run
//! use burrow_node::{Decision, Event, Observer, OfferInfo, Sink, Source, Transfer};
//!
//! struct Print;
//! impl Observer for Print {
//!     fn event(&mut self, e: Event) {
//!         if let Event::Code(code) = &e {
//!             println!("on the other machine: burrow receive {code}");
//!         }
//!     }
//!     fn decide(&mut self, offer: &OfferInfo) -> Decision {
//!         println!("{} files, {} bytes", offer.files, offer.total);
//!         Decision::Accept
//!     }
//! }
//!
//! # async fn demo() -> Result<(), burrow_node::Error> {
//! let t = Transfer::builder().relay("relay.example:9009").build()?;
//! t.send(Source::Paths(vec!["photos".into()]), Print).await?;
//! # Ok(()) }
//! ```
//!
//! One folder per system, as in `burrow-proto`:
//!
//! | module | owns |
//! |---|---|
//! | [`meet`] | meeting a peer: [`meet::relay_client`] (API calls, stapling), [`meet::rendezvous`] (seed 001 steps 1–17), [`meet::paths`] (relay and direct connections, the race, reconnects), [`meet::lan`] (no relay configured), [`meet::lobby`] (seed 003), the one handshake driver |
//! | [`keys`] | [`keys::identity`] (this installation's keys, file 0600), [`keys::peers`] (paired peers), [`keys::pairing`] (`burrow pair`) |
//! | `transfer` | one task per connection driving the transfer machines, a blocking file worker |
//! | [`tunnel`] | seed 000: exit and proxy through the relay's connector, the mux driver |
//! | [`mesh`] | seed 002: `burrow node`, its link tasks, gossip and control socket |
//! | [`onion`] | seed 004: `burrow directory`, circuit relay and exit in `burrow node`, the circuit client (`burrow fetch`, `burrow proxy --hops`) |
//! | [`files`] | what a sender offers, where a receiver writes |
//! | [`platform`] | what the sans-IO core takes from the machine: the OS RNG, the AEAD choice |
//!
//! A runnable example is `examples/roundtrip.rs` (relay, sender and receiver in one process).

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod error;
pub mod files;
pub mod keys;
pub mod meet;
pub mod mesh;
pub mod onion;
pub mod platform;
mod transfer;
pub mod tunnel;

use std::io::Read;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use burrow_proto::channel::code::Code;
pub use burrow_proto::transfer::{Entry, EntryKind, OfferKind, Verify, escape_display};
pub use error::{Error, ErrorKind};
pub use meet::paths::PathKind;
use meet::{lan, lobby, paths, rendezvous};

use meet::relay_client::RelayClient;
use meet::rendezvous::RendezvousOptions;

/// Default for [`TransferBuilder::idle_timeout`].
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(15);

/// What to send.
pub enum Source {
    /// Files and folders.
    Paths(Vec<PathBuf>),
    /// A text message.
    Text(String),
    /// A byte stream of unknown length (e.g. standard input).
    Stream(Box<dyn Read + Send>),
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Paths(p) => f.debug_tuple("Paths").field(p).finish(),
            Source::Text(t) => f.debug_tuple("Text").field(&t.len()).finish(),
            Source::Stream(_) => f.write_str("Stream"),
        }
    }
}

/// Whether the sender compresses (zstd).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compress {
    /// Compress a file when its first chunk shrinks by at least a tenth.
    #[default]
    Auto,
    /// Try every chunk (a chunk that does not shrink still goes as is).
    Always,
    /// Never compress.
    Never,
}

/// Where received data goes.
#[derive(Debug, Clone)]
pub enum Sink {
    /// Files and streams into this folder.
    Dir(PathBuf),
    /// One file or stream to standard output.
    Stdout,
    /// Files into this folder, a stream to standard output.
    Auto(PathBuf),
}

/// What happened, in order. Text messages arrive in [`ReceiveReport::text`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// Sender: the code to give the other person. It contains the secret:
    /// show it, don't log it.
    Code(String),
    /// Items skipped while collecting files (links, special files).
    Skipped(Vec<String>),
    /// Sender, no relay configured: a relay is served on this port of every
    /// interface and announced on the local network.
    LocalRelay {
        /// The TCP port.
        port: u16,
    },
    /// Receiver, no relay configured: the sender's relay, found on the LAN.
    FoundOnLan {
        /// Its address.
        relay: String,
    },
    /// Lobby sender: waiting in the relay's lobby under this relay-given identity.
    InLobby {
        /// The identity (the address the relay sees).
        identity: String,
    },
    /// Lobby receiver: every sender tried so far (`tried`, maybe none yet)
    /// has another password; still waiting for one, for up to `wait` (or
    /// until the relay's lobby timeout when `None`).
    LobbyNoMatch {
        /// Senders tried.
        tried: usize,
        /// How much longer this side waits, if bounded.
        wait: Option<Duration>,
    },
    /// Lobby mode, sender: a receiver tried this sender and did not pair
    /// (another password, or it declined); the sender keeps waiting.
    LobbyMiss {
        /// The receiver's relay-given identity (escaped for display).
        receiver: String,
        /// The passwords matched and the receiver declined.
        declined: bool,
    },
    /// Lobby mode: the PAKE agreed with this peer (its relay-given identity).
    Paired {
        /// The other side's identity.
        peer: String,
    },
    /// Both sides are connected (again, after [`Event::Reconnecting`]).
    Connected {
        /// The relay address.
        relay: String,
        /// Whether the bytes go through the relay or straight to the peer.
        path: PathKind,
    },
    /// The connection dropped; trying to connect again.
    Reconnecting {
        /// What happened to the connection.
        reason: String,
        /// How long it keeps trying.
        for_up_to: Duration,
    },
    /// Sender: the offer is out; waiting for the other person to accept.
    WaitingForAccept,
    /// Data starts flowing.
    Started {
        /// Files in the transfer.
        files: usize,
        /// Total bytes, if known.
        total: Option<u64>,
    },
    /// Bytes moved so far.
    Progress {
        /// Bytes done.
        done: u64,
        /// Total bytes, if known.
        total: Option<u64>,
    },
    /// Everything arrived and was verified.
    Finished {
        /// Files moved.
        files: usize,
        /// Bytes moved.
        bytes: u64,
        /// Time from the first byte to the confirmation.
        elapsed: Duration,
    },
}

/// The offer, as shown to the receiving user.
#[derive(Debug, Clone)]
pub struct OfferInfo {
    /// Files, text or stream.
    pub kind: OfferKind,
    /// Number of files.
    pub files: usize,
    /// Number of folders.
    pub dirs: usize,
    /// Total bytes of the files.
    pub total: u64,
    /// Every entry; names come from the peer: print them with [`escape_display`].
    pub entries: Vec<Entry>,
    /// Files that exist already and would be replaced (escaped for display).
    pub existing: Vec<String>,
    /// Free space where files would go, if known.
    pub free: Option<u64>,
    /// A stream written into a folder: the name it will be saved under
    /// (the sender chose it; escaped for display).
    pub save_as: Option<String>,
    /// Lobby mode: the sender's relay-given identity.
    pub from: Option<String>,
}

/// The receiving user's answer to an offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Accept; existing files are replaced only if the transfer allows overwriting.
    Accept,
    /// Accept and replace files listed in [`OfferInfo::existing`].
    AcceptOverwrite,
    /// Decline, with a reason shown to the sender.
    Reject(String),
}

/// Receives events, and decides on offers.
pub trait Observer: Send {
    /// Called for each event, from the transfer's thread.
    fn event(&mut self, event: Event);

    /// Called once the offer is complete. The default declines.
    fn decide(&mut self, offer: &OfferInfo) -> Decision {
        let _ = offer;
        Decision::Reject("the receiver has no way to accept offers".into())
    }
}

/// What a finished send did.
#[derive(Debug, Clone)]
pub struct SendReport {
    /// Files sent.
    pub files: usize,
    /// Bytes sent in this transfer.
    pub bytes: u64,
    /// Bytes the receiver already had from an earlier, interrupted transfer.
    pub resumed: u64,
    /// Time from the first byte to the receiver's confirmation.
    pub elapsed: Duration,
}

/// What a finished receive did.
#[derive(Debug, Clone)]
pub struct ReceiveReport {
    /// Files received.
    pub files: usize,
    /// Bytes received in this transfer.
    pub bytes: u64,
    /// Bytes that were already here from an earlier, interrupted transfer.
    pub resumed: u64,
    /// Time from the first byte to the end.
    pub elapsed: Duration,
    /// Paths written.
    pub saved: Vec<PathBuf>,
    /// The text, for a text message.
    pub text: Option<String>,
}

/// A record reader holding bytes a handshake read past its end.
fn inbox_with(already: &[u8]) -> burrow_proto::session::Inbox {
    let mut inbox = burrow_proto::session::Inbox::new(meet::paths::READ_BUF.max(already.len()));
    let n = already.len().min(inbox.space().len());
    inbox.space()[..n].copy_from_slice(&already[..n]);
    inbox.filled(n);
    inbox
}

/// Receives into a mesh node's inbox from a paired node's `send --to`:
/// every offer accepted (the sender is paired), nothing overwritten.
pub(crate) async fn receive_into_inbox(
    stream: tokio::net::TcpStream,
    keys: (burrow_proto::session::Sealer, burrow_proto::session::Opener),
    already: Vec<u8>,
    dir: PathBuf,
    from: String,
    log: tunnel::Log,
) -> Result<ReceiveReport, Error> {
    struct Inbox {
        from: String,
        log: tunnel::Log,
    }
    impl Observer for Inbox {
        fn event(&mut self, _: Event) {}
        fn decide(&mut self, offer: &OfferInfo) -> Decision {
            (self.log)(format!(
                "{} sends {} file(s), {} bytes, to the inbox",
                self.from, offer.files, offer.total
            ));
            Decision::Accept
        }
    }
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let sink = std::sync::Arc::new(Sink::Dir(dir.clone()));
    let link = transfer::link::Link::new(stream, keys.0, keys.1, inbox_with(&already));
    let obs: transfer::Obs = std::sync::Arc::new(std::sync::Mutex::new(Inbox {
        from: from.clone(),
        log: log.clone(),
    }));
    let mut state = transfer::RecvState::default();
    let report = transfer::run_receive(link, &sink, false, &obs, DEFAULT_IDLE_TIMEOUT, &mut state).await?;
    for p in &report.saved {
        log(format!(
            "received from {from}: {}",
            escape_display(&p.display().to_string())
        ));
    }
    // A text message is kept too: a file of its own in the inbox (never
    // over an earlier one).
    if let Some(text) = &report.text {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut path = dir.join(format!("message-{secs}.txt"));
        let mut n = 1;
        while path.exists() {
            n += 1;
            path = dir.join(format!("message-{secs}-{n}.txt"));
        }
        std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
        log(format!(
            "message from {from} ({} bytes): {}",
            text.len(),
            escape_display(&path.display().to_string())
        ));
    }
    Ok(report)
}

/// The transfer's link over an established connection.
fn link_of(conn: paths::Established) -> Result<transfer::link::Link<tokio::net::TcpStream>, Error> {
    conn.stream.set_nodelay(true).map_err(Error::ConnectionLost)?;
    Ok(transfer::link::Link::new(
        conn.stream,
        conn.sealer,
        conn.opener,
        conn.inbox,
    ))
}

/// A configured transfer endpoint. Build it with [`Transfer::builder`].
#[derive(Debug, Clone)]
pub struct Transfer {
    /// None: LAN mode (serve a relay and announce it, or find one).
    relay: Option<RelayClient>,
    bind: Option<IpAddr>,
    code: Option<Code>,
    overwrite: bool,
    rendezvous: RendezvousOptions,
    idle_timeout: Duration,
    exclude: files::Exclude,
    compress: Compress,
    relay_only: bool,
    reconnect_for: Duration,
    discover_for: Duration,
    verify: Verify,
}

/// Builder for [`Transfer`].
#[derive(Debug, Clone, Default)]
pub struct TransferBuilder {
    relay: Option<String>,
    bind: Option<IpAddr>,
    code: Option<Code>,
    overwrite: bool,
    wait_for_peer: Option<Duration>,
    step_timeout: Option<Duration>,
    idle_timeout: Option<Duration>,
    exclude: Vec<String>,
    compress: Compress,
    relay_only: bool,
    reconnect_for: Option<Duration>,
    discover_for: Option<Duration>,
    verify: Verify,
}

/// Offers smaller than this (bytes) skip the direct-path race.
pub const SMALL_OFFER: u64 = 1 << 20;

/// Default for [`TransferBuilder::reconnect_for`].
pub const DEFAULT_RECONNECT: Duration = Duration::from_secs(60);

impl TransferBuilder {
    /// Receiver: hash every file again on arrival and check it against the
    /// sender's hash. By default only resumed files are (every byte is
    /// already authenticated by the session; see [`Verify`]).
    pub fn verify_all(mut self, yes: bool) -> Self {
        self.verify = if yes { Verify::All } else { Verify::Resumed };
        self
    }

    /// Never connect straight to the other peer, and tell it not to try:
    /// every byte goes through the relay (default: race a direct path).
    pub fn relay_only(mut self, yes: bool) -> Self {
        self.relay_only = yes;
        self
    }

    /// Receiver without a relay: how long to listen for the sender's LAN
    /// announcement (default 10 s).
    pub fn discover_for(mut self, d: Duration) -> Self {
        self.discover_for = Some(d);
        self
    }

    /// After a dropped connection, keep trying to connect again for this
    /// long (default 60 s; zero gives up at once).
    pub fn reconnect_for(mut self, d: Duration) -> Self {
        self.reconnect_for = Some(d);
        self
    }

    /// The relay, `HOST[:PORT]` (default port 9009). Without one, a sender
    /// serves a relay itself and announces it on the local network, and a
    /// receiver looks for it there.
    pub fn relay(mut self, addr: impl Into<String>) -> Self {
        self.relay = Some(addr.into());
        self
    }

    /// Local IP for relay connections (tests use 127.0.0.x).
    pub fn bind_ip(mut self, ip: IpAddr) -> Self {
        self.bind = Some(ip);
        self
    }

    /// Sender: use this code instead of a generated one.
    pub fn code(mut self, code: Code) -> Self {
        self.code = Some(code);
        self
    }

    /// Receiver: replace existing files without asking.
    pub fn overwrite(mut self, yes: bool) -> Self {
        self.overwrite = yes;
        self
    }

    /// Give up if no peer turns up within this time (default: wait): a sender
    /// whose code nobody enters, a lobby receiver whose password no sender has.
    pub fn wait_for_peer(mut self, d: Duration) -> Self {
        self.wait_for_peer = Some(d);
        self
    }

    /// How long to wait for the other side at each handshake step (default 120 s).
    pub fn step_timeout(mut self, d: Duration) -> Self {
        self.step_timeout = Some(d);
        self
    }

    /// The other side is reported gone after this long without data or a
    /// keepalive (default 15 s); keepalives go out every third of it.
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.idle_timeout = Some(d);
        self
    }

    /// Sender: leave out files and folders matching these shell patterns
    /// (matched against each name and each relative path).
    pub fn exclude(mut self, patterns: Vec<String>) -> Self {
        self.exclude = patterns;
        self
    }

    /// Sender: compression (default [`Compress::Auto`]).
    pub fn compress(mut self, c: Compress) -> Self {
        self.compress = c;
        self
    }

    /// Checks the settings.
    pub fn build(self) -> Result<Transfer, Error> {
        let relay = self.relay.filter(|r| !r.trim().is_empty());
        let d = RendezvousOptions::default();
        Ok(Transfer {
            relay: relay.map(|r| RelayClient::new(&r).bind(self.bind)),
            bind: self.bind,
            code: self.code,
            overwrite: self.overwrite,
            rendezvous: RendezvousOptions {
                wait_for_peer: self.wait_for_peer,
                step_timeout: self.step_timeout.unwrap_or(d.step_timeout),
            },
            exclude: files::Exclude::new(&self.exclude)?,
            compress: self.compress,
            relay_only: self.relay_only,
            verify: self.verify,
            reconnect_for: self.reconnect_for.unwrap_or(DEFAULT_RECONNECT),
            discover_for: self.discover_for.unwrap_or(lan::DISCOVER_TIMEOUT),
            idle_timeout: self
                .idle_timeout
                .unwrap_or(DEFAULT_IDLE_TIMEOUT)
                .max(Duration::from_millis(300)),
        })
    }
}

/// Two peers that share a key and a first connection: from a channel
/// rendezvous (seed 001) or a lobby pairing (seed 003).
struct Meeting {
    stream: tokio::net::TcpStream,
    key: burrow_proto::channel::pake::SessionKey,
    context: String,
}

impl From<rendezvous::Rendezvous> for Meeting {
    fn from(rv: rendezvous::Rendezvous) -> Self {
        Self {
            stream: rv.stream,
            key: rv.key,
            context: rv.channel,
        }
    }
}

impl From<lobby::Matched> for Meeting {
    fn from(p: lobby::Matched) -> Self {
        Self {
            stream: p.stream,
            key: p.key,
            context: p.context,
        }
    }
}

/// Lobby mode's sender password: four list words (44 bits).
pub fn lobby_password() -> String {
    burrow_proto::channel::code::random_words(4, &mut random).to_string()
}

use platform::random;

impl Transfer {
    /// Starts a builder.
    pub fn builder() -> TransferBuilder {
        TransferBuilder::default()
    }

    /// The configured relay, if any (none: LAN mode).
    pub fn relay_addr(&self) -> Option<&str> {
        self.relay.as_ref().map(|r| r.addr())
    }

    /// Collects what `source` offers (files are listed, not read).
    async fn payload(&self, source: Source, obs: &mut dyn Observer) -> Result<transfer::Payload, Error> {
        Ok(match source {
            Source::Paths(paths) => {
                if paths.is_empty() {
                    return Err(Error::Usage("nothing to send".into()));
                }
                let mut skipped = Vec::new();
                let exclude = self.exclude.clone();
                let items = tokio::task::spawn_blocking(move || {
                    let r = files::collect(&paths, &exclude, &mut skipped);
                    r.map(|i| (i, skipped))
                })
                .await
                .map_err(|e| Error::Usage(format!("collecting files failed: {e}")))??;
                if !items.1.is_empty() {
                    obs.event(Event::Skipped(items.1));
                }
                if items.0.is_empty() {
                    return Err(Error::Usage(
                        "nothing to send: everything was excluded or skipped".into(),
                    ));
                }
                transfer::Payload::Items(items.0)
            }
            Source::Text(t) => transfer::Payload::Text(t),
            Source::Stream(r) => transfer::Payload::Stream(r),
        })
    }

    /// Sends `source`. Emits [`Event::Code`] once the channel is open, and
    /// returns when the receiver confirmed everything.
    pub async fn send<O: Observer + 'static>(&self, source: Source, mut obs: O) -> Result<SendReport, Error> {
        let payload = self.payload(source, &mut obs).await?;
        let (code, pick) = match &self.code {
            Some(c) => (c.clone(), false),
            None => (
                Code::generate("0", &mut random).map_err(|e| Error::Usage(e.to_string()))?,
                true,
            ),
        };
        // No relay configured: serve one here and announce it on the LAN.
        let (relay, _local) = match &self.relay {
            Some(r) => (r.clone(), None),
            None => {
                let h = lan::embedded_relay().await?;
                let port = h.addr().port();
                obs.event(Event::LocalRelay { port });
                let client = RelayClient::new(&format!("127.0.0.1:{port}")).bind(self.bind);
                (client, Some(h))
            }
        };
        let mut announcer = None;
        let mut announce_err = None;
        let rv = rendezvous::sender(&relay, code, pick, &self.rendezvous, |c| {
            if let Some(h) = &_local {
                match lan::Announcer::start(h.addr().port(), c.channel()) {
                    Ok(a) => announcer = Some(a),
                    Err(e) => announce_err = Some(e),
                }
            }
            obs.event(Event::Code(c.reveal()));
        })
        .await;
        drop(announcer);
        if let Some(e) = announce_err {
            tracing::warn!("{e}");
        }
        let rv = rv?;
        let handle = rv.handle.clone();
        let res = self.drive_send(&relay, rv.into(), payload, obs).await;
        if let Err(e) = &res {
            handle.close(&format!("sender failed: {e}")).await;
        }
        res
    }

    /// Sends to a paired mesh node's inbox (`burrow send --to NAME`): a
    /// link to the node at `addrs` (direct, or through its relay; the keys
    /// it was paired with),
    /// the same transfer engine and checks, no code and no prompt.
    pub async fn send_to_node<O: Observer + 'static>(
        &self,
        addrs: &mesh::NodeAddrs,
        me: &keys::identity::Identity,
        node: &keys::identity::PublicIdentity,
        source: Source,
        mut obs: O,
    ) -> Result<SendReport, Error> {
        let payload = self.payload(source, &mut obs).await?;
        let (stream, sealer, opener, already) = mesh::client::connect(addrs, me, node, true).await?;
        let addr = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
        let link = transfer::link::Link::new(stream, sealer, opener, inbox_with(&already));
        let obs: transfer::Obs = std::sync::Arc::new(std::sync::Mutex::new(obs));
        transfer::obs_lock(&obs).event(Event::Connected {
            relay: addr,
            path: PathKind::Mesh,
        });
        let mut state = transfer::SendState::default();
        transfer::run_send(link, payload, &obs, self.idle_timeout, self.compress, &mut state)
            .await
            .0
    }

    async fn drive_send<O: Observer + 'static>(
        &self,
        relay: &RelayClient,
        rv: Meeting,
        mut payload: transfer::Payload,
        obs: O,
    ) -> Result<SendReport, Error> {
        // A small offer goes straight over the relay: racing a direct path
        // costs more than it saves (extra connections and handshakes, and up
        // to RELAY_DELAY where direct attempts are silently dropped).
        let small = match &payload {
            transfer::Payload::Items(items) => {
                items.iter().map(|i| i.entry.size).fold(0u64, u64::saturating_add) < SMALL_OFFER
            }
            transfer::Payload::Text(t) => (t.len() as u64) < SMALL_OFFER,
            transfer::Payload::Stream(_) => false,
        };
        let (mut paths, mut conn) = self
            .connect(relay, rv, burrow_proto::channel::api::Role::Sender, !small)
            .await?;
        let mut state = transfer::SendState::default();
        let obs: transfer::Obs = std::sync::Arc::new(std::sync::Mutex::new(obs));
        loop {
            transfer::obs_lock(&obs).event(Event::Connected {
                relay: relay.addr().to_owned(),
                path: conn.kind,
            });
            let link = link_of(conn)?;
            let (res, back) =
                transfer::run_send(link, payload, &obs, self.idle_timeout, self.compress, &mut state).await;
            payload = back;
            match res {
                Err(e) if e.is_transient() && payload.repeatable() && !self.reconnect_for.is_zero() => {
                    conn = self.reconnect(&mut paths, e, &obs).await?;
                }
                other => return other,
            }
        }
    }

    /// The session's first connection: the relay's, or a direct one that won the race.
    async fn connect(
        &self,
        relay: &RelayClient,
        rv: Meeting,
        role: burrow_proto::channel::api::Role,
        direct: bool,
    ) -> Result<(paths::Paths, paths::Established), Error> {
        let relay_only = self.relay_only || !direct;
        let mut paths = paths::Paths::new(rv.key, role, relay.clone(), relay_only, self.idle_timeout).await;
        let conn = paths.first(rv.stream, &rv.context).await?;
        Ok((paths, conn))
    }

    /// Reports the drop and connects again, or fails with both reasons.
    async fn reconnect(
        &self,
        paths: &mut paths::Paths,
        cause: Error,
        obs: &transfer::Obs,
    ) -> Result<paths::Established, Error> {
        transfer::obs_lock(obs).event(Event::Reconnecting {
            reason: cause.to_string(),
            for_up_to: self.reconnect_for,
        });
        let start = Instant::now();
        paths
            .reconnect(start + self.reconnect_for)
            .await
            .map_err(|last| Error::Reconnect {
                cause: Box::new(cause),
                last: Box::new(last),
                waited: start.elapsed(),
            })
    }

    /// Receives with `code` into `sink`. `obs.decide` is asked before any byte is written.
    pub async fn receive<O: Observer + 'static>(
        &self,
        code: &Code,
        sink: Sink,
        mut obs: O,
    ) -> Result<ReceiveReport, Error> {
        let relay = match &self.relay {
            Some(r) => r.clone(),
            None => {
                let found = lan::discover(code.channel(), self.discover_for).await?;
                obs.event(Event::FoundOnLan { relay: found.clone() });
                RelayClient::new(&found).bind(self.bind)
            }
        };
        let rv = rendezvous::recipient(&relay, code, &self.rendezvous).await?;
        let handle = rv.handle.clone();
        let res = self.drive_receive(&relay, rv.into(), sink, obs, None).await;
        // Step 18: the recipient closes the channel.
        match &res {
            Ok(_) => handle.close("transfer complete").await,
            Err(e) => handle.close(&format!("recipient failed: {e}")).await,
        }
        res
    }

    async fn drive_receive<O: Observer + 'static>(
        &self,
        relay: &RelayClient,
        rv: Meeting,
        sink: Sink,
        obs: O,
        from: Option<String>,
    ) -> Result<ReceiveReport, Error> {
        let (mut paths, mut conn) = self
            .connect(relay, rv, burrow_proto::channel::api::Role::Recipient, true)
            .await?;
        let mut state = transfer::RecvState::new(from, self.verify);
        let sink = std::sync::Arc::new(sink);
        let obs: transfer::Obs = std::sync::Arc::new(std::sync::Mutex::new(obs));
        loop {
            transfer::obs_lock(&obs).event(Event::Connected {
                relay: relay.addr().to_owned(),
                path: conn.kind,
            });
            let link = link_of(conn)?;
            let res =
                transfer::run_receive(link, &sink, self.overwrite, &obs, self.idle_timeout, &mut state).await;
            match res {
                Err(e) if e.is_transient() && state.continuable() && !self.reconnect_for.is_zero() => {
                    conn = self.reconnect(&mut paths, e, &obs).await?;
                }
                other => return other,
            }
        }
    }

    /// Lobby mode (seed 003), sender: waits in the relay's lobby under
    /// `password` (see [`lobby_password`]) until a receiver with the same
    /// password accepts, then sends. Emits [`Event::InLobby`] first.
    pub async fn send_lobby<O: Observer + 'static>(
        &self,
        password: &str,
        source: Source,
        mut obs: O,
    ) -> Result<SendReport, Error> {
        let relay = self
            .relay
            .clone()
            .ok_or_else(|| Error::Usage("lobby mode needs a relay (--relay)".into()))?;
        let payload = self.payload(source, &mut obs).await?;
        let mut salt = [0u8; 16];
        random(&mut salt);
        let shared = std::sync::Mutex::new(&mut obs);
        let say = |e: Event| {
            if let Ok(mut o) = shared.lock() {
                o.event(e);
            }
        };
        let paired = lobby::serve(
            &relay,
            password,
            salt,
            |me| {
                say(Event::InLobby {
                    identity: me.to_owned(),
                })
            },
            |receiver, miss| {
                say(Event::LobbyMiss {
                    receiver: burrow_proto::transfer::escape_display(receiver),
                    declined: miss == lobby::Miss::Declined,
                })
            },
        )
        .await?;
        obs.event(Event::Paired {
            peer: paired.peer.clone(),
        });
        self.drive_send(&relay, paired.into(), payload, obs).await
    }

    /// Lobby mode, receiver: tries every waiting sender with `password`;
    /// the one with the same password is asked about through
    /// [`Observer::decide`] once its offer arrives (its identity in
    /// [`OfferInfo::from`]).
    pub async fn receive_lobby<O: Observer + 'static>(
        &self,
        password: &str,
        sink: Sink,
        mut obs: O,
    ) -> Result<ReceiveReport, Error> {
        let relay = self
            .relay
            .clone()
            .ok_or_else(|| Error::Usage("lobby mode needs a relay (--relay)".into()))?;
        let wait = self.rendezvous.wait_for_peer;
        let start = std::time::Instant::now();
        let join = lobby::join(
            &relay,
            password,
            |_| lobby::Verdict::Accept,
            |tried| {
                obs.event(Event::LobbyNoMatch {
                    tried,
                    wait: wait.map(|w| w.saturating_sub(start.elapsed())),
                })
            },
        );
        let paired = match wait {
            Some(w) => tokio::time::timeout(w, join).await.map_err(|_| {
                Error::Timeout(format!(
                    "no sender with this password came to the lobby within {}s (--wait)",
                    w.as_secs()
                ))
            })??,
            None => join.await?,
        };
        obs.event(Event::Paired {
            peer: paired.peer.clone(),
        });
        let from = paired.peer.clone();
        self.drive_receive(&relay, paired.into(), sink, obs, Some(from))
            .await
    }
}
