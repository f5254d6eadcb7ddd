//! Pairing over a link ([`burrow_proto::mesh::pair`]): this node either
//! offers (it showed a code, `burrow pair --mesh NODE`) or joins (its user
//! typed the other node's code). The result goes back to the command that
//! asked, which writes the peer book.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use zeroize::Zeroizing;

use burrow_proto::channel::pake::{RecipientAwaitConfirm, RecipientStart, SenderStart};
use burrow_proto::keys::{NodeId, PublicIdentity};
use burrow_proto::mesh::link::Link;
use burrow_proto::mesh::packet::Packet;
use burrow_proto::mesh::pair::{Status, code_for_link, split_confirm, split_y};

use super::{Cmd, Shared};
use crate::platform::OsRandom;

/// How long a shown code waits for the other node.
pub(crate) const OFFER_FOR: Duration = Duration::from_secs(300);

/// A pairing's outcome: the other node's keys (authenticated by the link)
/// and the name it suggests.
#[derive(Debug, Clone)]
pub(crate) struct Paired {
    pub node: NodeId,
    pub keys: PublicIdentity,
    pub name: String,
}

pub(crate) type Done = oneshot::Sender<Result<Paired, String>>;

/// A code this node showed, for one node.
pub(crate) struct Offer {
    pub words: Zeroizing<String>,
    pub expires: Instant,
    /// After the first PAIR_REQ: waiting for its confirmation.
    pub wait: Option<RecipientAwaitConfirm>,
    pub done: Option<Done>,
}

/// A code this node's user typed, being tried.
pub(crate) struct Join {
    pub start: Option<SenderStart>,
    pub done: Option<Done>,
}

fn send_res(link: &mut Link, step: u8, status: Status, body: &[u8]) {
    let _ = link.send(&Packet::PairRes {
        step,
        status: status.code(),
        body,
    });
}

fn peer_of(shared: &Shared, id: u64) -> Option<(NodeId, PublicIdentity, [u8; 32])> {
    let st = shared.lock();
    let l = st.links.get(&id)?;
    Some((l.peer?, l.keys?, l.hash?))
}

/// A PAIR_REQ from the node on link `id` (this node offered).
pub(crate) fn on_request(shared: &Arc<Shared>, id: u64, link: &mut Link, step: u8, body: &[u8]) {
    let Some((peer, keys, hash)) = peer_of(shared, id) else {
        return;
    };
    let mut st = shared.lock();
    let live = st.offers.get(&peer).is_some_and(|o| Instant::now() < o.expires);
    if !live {
        st.offers.remove(&peer);
        drop(st);
        return send_res(link, step, Status::NotExpected, b"");
    }
    let Some(offer) = st.offers.get_mut(&peer) else {
        return;
    };
    match (step, offer.wait.is_some()) {
        (1, false) => {
            let answer = code_for_link(&offer.words, &hash)
                .ok()
                .and_then(|code| RecipientStart::respond(&code, body, &mut OsRandom).ok());
            match answer {
                Some((wait, y, hh)) => {
                    offer.wait = Some(wait);
                    drop(st);
                    let mut b = y;
                    b.extend_from_slice(&hh);
                    send_res(link, 1, Status::Ok, &b);
                }
                None => {
                    drop(st);
                    send_res(link, 1, Status::Malformed, b"");
                }
            }
        }
        (2, true) => {
            let Some(mut offer) = st.offers.remove(&peer) else {
                return;
            };
            let my_name = shared.cfg.name.clone();
            drop(st);
            let verdict = match (split_confirm(body), offer.wait.take()) {
                (Ok((h_k, name)), Some(wait)) => wait.verify(&h_k).map(|_| name.to_owned()).ok(),
                _ => None,
            };
            let done = offer.done.take();
            match verdict {
                Some(name) => {
                    send_res(link, 2, Status::Ok, my_name.as_bytes());
                    if let Some(d) = done {
                        let _ = d.send(Ok(Paired {
                            node: peer,
                            keys,
                            name,
                        }));
                    }
                }
                None => {
                    send_res(link, 2, Status::WrongCode, b"");
                    if let Some(d) = done {
                        let _ = d.send(Err(
                            "wrong code: the other node typed another code; nothing was stored".into(),
                        ));
                    }
                }
            }
        }
        _ => {
            // A second guess, or steps out of order: the code is spent.
            let offer = st.offers.remove(&peer);
            drop(st);
            send_res(link, step, Status::WrongCode, b"");
            if let Some(d) = offer.and_then(|mut o| o.done.take()) {
                let _ = d.send(Err("the other node tried the code twice; it is spent".into()));
            }
        }
    }
}

/// A PAIR_RES from the node on link `id` (this node joined).
pub(crate) fn on_answer(shared: &Arc<Shared>, id: u64, step: u8, status: u8, body: &[u8]) {
    let Some((peer, keys, _)) = peer_of(shared, id) else {
        return;
    };
    let mut st = shared.lock();
    let Some(join) = st.joins.get_mut(&peer) else {
        return;
    };
    let status = Status::from_code(status);
    let fail = |st: &mut super::State, why: String| {
        if let Some(mut j) = st.joins.remove(&peer)
            && let Some(d) = j.done.take()
        {
            let _ = d.send(Err(why));
        }
    };
    if status != Status::Ok {
        return fail(&mut st, status.explain().to_owned());
    }
    match (step, join.start.take()) {
        (1, Some(start)) => {
            let confirm = split_y(body).ok().map(|(y, hh)| start.finish(y, &hh));
            let tx = st.links.get(&id).map(|l| l.tx.clone());
            match confirm {
                Some(Ok((_, h_k))) => {
                    let mut b = h_k.to_vec();
                    b.extend_from_slice(shared.cfg.name.as_bytes());
                    let mut pkt = Vec::new();
                    let _ = Packet::PairReq { step: 2, body: &b }.encode(&mut pkt);
                    drop(st);
                    if let Some(tx) = tx {
                        let _ = tx.try_send(Cmd::Send(pkt));
                    }
                }
                _ => {
                    // Tell the offerer too (its code is spent), then give up.
                    let mut pkt = Vec::new();
                    let _ = Packet::PairReq {
                        step: 2,
                        body: &[0u8; 32],
                    }
                    .encode(&mut pkt);
                    if let Some(tx) = tx {
                        let _ = tx.try_send(Cmd::Send(pkt));
                    }
                    fail(
                        &mut st,
                        "wrong code: the other node showed another code; nothing was stored".into(),
                    );
                }
            }
        }
        (2, None) => {
            let name = std::str::from_utf8(body).unwrap_or_default().to_owned();
            if let Some(mut j) = st.joins.remove(&peer)
                && let Some(d) = j.done.take()
            {
                let _ = d.send(Ok(Paired {
                    node: peer,
                    keys,
                    name,
                }));
            }
        }
        _ => fail(&mut st, "the other node answered out of order".into()),
    }
}

/// Starts an offer to `node` (replacing an earlier one); the code's words.
pub(crate) fn offer(shared: &Shared, node: NodeId, done: Done) -> Result<Zeroizing<String>, String> {
    let mut st = shared.lock();
    if !st.by_node.contains_key(&node) {
        return Err(format!("no link to {node}: pairing runs over a direct link"));
    }
    let words = burrow_proto::channel::code::random_words(3, &mut crate::platform::random);
    st.offers.insert(
        node,
        Offer {
            words: words.clone(),
            expires: Instant::now() + OFFER_FOR,
            wait: None,
            done: Some(done),
        },
    );
    Ok(words)
}

/// Starts a join to `node` with the words its user showed.
pub(crate) fn join(shared: &Shared, node: NodeId, words: &str, done: Done) -> Result<(), String> {
    let mut st = shared.lock();
    let link = st.by_node.get(&node).copied();
    let Some((tx, hash)) = link
        .and_then(|l| st.links.get(&l))
        .and_then(|l| Some((l.tx.clone(), l.hash?)))
    else {
        return Err(format!("no link to {node}: pairing runs over a direct link"));
    };
    let code = code_for_link(words, &hash).map_err(|e| format!("invalid code: {e}"))?;
    let (start, x) = SenderStart::new(&code, &mut OsRandom);
    st.joins.insert(
        node,
        Join {
            start: Some(start),
            done: Some(done),
        },
    );
    drop(st);
    let mut pkt = Vec::new();
    let _ = Packet::PairReq { step: 1, body: &x }.encode(&mut pkt);
    tx.try_send(Cmd::Send(pkt))
        .map_err(|_| "the link is busy; try again".to_owned())
}
