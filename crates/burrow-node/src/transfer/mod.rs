//! Transfers on a connection: the tokio driver of the
//! [`burrow_proto::transfer`] machines.
//!
//! One task per connection owns the socket ([`link::Link`]), the machine
//! and its timers (keepalives and the silence limit are the machine's, not
//! threads'); file reads and writes run on one blocking worker that fills
//! or drains record buffers through a short channel, so the data path stays
//! zero-copy and the task never waits on the disk.
//!
//! ```text
//! sender:   worker: read + hash (+ compress) into DataBatch ──► task: machine checks,
//!           seal in place, write ──► socket; written batches go back to the worker
//! receiver: socket ──► task: read 512 KiB, open records in place, machine checks
//!           (+ hash for --verify) ──► worker: write the pieces of that buffer,
//!           rename finished files, sync; buffers go back to the task
//! ```
//!
//! Both directions are bounded: a few batches or buffers in flight, never
//! more (`send::BATCHES`, `receive::BUFFERS`). A transfer runs over any
//! ordered byte stream (`AsyncRead + AsyncWrite`), a mux stream included.

pub(crate) mod link;
pub(crate) mod receive;
pub(crate) mod send;
#[cfg(test)]
mod tests;

use std::io::Read;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use burrow_proto::transfer::{Entry, EntryKind, OfferKind, UNKNOWN_SIZE};

use crate::files::Item;
use crate::{Event, Observer};

pub(crate) use receive::{RecvState, run_receive};
pub(crate) use send::{SendState, run_send};

/// Largest text message a receiver accepts.
pub const MAX_TEXT: u64 = 1 << 20;
/// Progress events at most this often.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// The observer, shared between the connection task and the blocking
/// worker that asks the user about an offer.
pub(crate) type Obs = Arc<Mutex<dyn Observer>>;

pub(crate) fn obs_lock(o: &Obs) -> MutexGuard<'_, dyn Observer + 'static> {
    o.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the sender streams.
pub(crate) enum Payload {
    Items(Vec<Item>),
    Text(String),
    Stream(Box<dyn Read + Send>),
}

impl Payload {
    /// Whether the payload can be offered again on a new connection (a
    /// stream cannot be rewound).
    pub(crate) fn repeatable(&self) -> bool {
        !matches!(self, Payload::Stream(_))
    }

    /// What is offered.
    fn offer(&self) -> (OfferKind, Vec<Entry>) {
        match self {
            Payload::Items(items) => (OfferKind::Files, items.iter().map(|i| i.entry.clone()).collect()),
            Payload::Text(t) => (
                OfferKind::Text,
                vec![Entry {
                    kind: EntryKind::File,
                    executable: false,
                    size: t.len() as u64,
                    path: "text".into(),
                }],
            ),
            Payload::Stream(_) => (
                OfferKind::Stream,
                vec![Entry {
                    kind: EntryKind::File,
                    executable: false,
                    size: UNKNOWN_SIZE,
                    path: "stdin".into(),
                }],
            ),
        }
    }
}

/// Bytes done, reported at most every [`PROGRESS_EVERY`].
struct Progress {
    done: u64,
    total: Option<u64>,
    last: Instant,
}

impl Progress {
    fn new(total: Option<u64>) -> Self {
        Self {
            done: 0,
            total,
            last: Instant::now(),
        }
    }

    fn add(&mut self, n: u64, obs: &Obs) {
        self.done += n;
        if self.last.elapsed() >= PROGRESS_EVERY {
            self.last = Instant::now();
            self.finish(obs);
        }
    }

    /// Counts bytes already present on the other side (resumed).
    fn skip(&mut self, n: u64) {
        self.done += n;
    }

    fn finish(&self, obs: &Obs) {
        obs_lock(obs).event(Event::Progress {
            done: self.done,
            total: self.total,
        });
    }
}

/// The bytes of the file entries in `entries`.
fn file_bytes(entries: &[Entry]) -> u64 {
    entries
        .iter()
        .filter(|e| e.kind == EntryKind::File)
        .map(|e| e.size)
        .fold(0, u64::saturating_add)
}

/// The machine's timer as a tokio sleep, re-armed when its deadline moves.
struct Timer {
    sleep: Pin<Box<tokio::time::Sleep>>,
    armed: Option<Instant>,
}

impl Timer {
    fn new() -> Self {
        Self {
            sleep: Box::pin(tokio::time::sleep(Duration::from_secs(3600))),
            armed: None,
        }
    }

    /// `Ready(now)` once `at` has passed.
    fn poll(&mut self, cx: &mut Context<'_>, at: Option<Instant>) -> Poll<Instant> {
        let Some(at) = at else {
            self.armed = None;
            return Poll::Pending;
        };
        if self.armed != Some(at) {
            self.sleep.as_mut().reset(tokio::time::Instant::from_std(at));
            self.armed = Some(at);
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.armed = None;
                Poll::Ready(Instant::now().max(at))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
