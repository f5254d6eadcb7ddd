//! Seed 001's channel API over HTTP (`/join`, `/channel` with its
//! long-poll, `/health`, `/metrics`): the tokio side of
//! [`burrow_proto::channel::table`].

pub mod http;

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use burrow_proto::channel::api::{ChannelRequest, JoinRequest, MAX_WAIT_MS, decode_json};
use burrow_proto::channel::table::ApiError;

use crate::admission::{Phase, Ticket};

use crate::server::*;

pub(crate) async fn handle_http(
    shared: &Shared,
    mut stream: TcpStream,
    ip: IpAddr,
    prefix: Vec<u8>,
    ticket: &Ticket,
) {
    let req = match greet(shared, ticket, http::read_request(&mut stream, prefix)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            shared.metrics.error(e.kind());
            if let Some(status) = e.status() {
                let _ = http::write_error(&mut stream, status, e.kind(), &e.to_string()).await;
                linger(&mut stream).await;
            }
            return;
        }
        Err(Cut::Timeout) => {
            let _ = http::write_error(&mut stream, 408, "timeout", "request not received in time").await;
            linger(&mut stream).await;
            return;
        }
        Err(Cut::Evicted) => {
            let _ = http::write_error(
                &mut stream,
                503,
                "capacity",
                "request not received in time; the relay is at capacity",
            )
            .await;
            return;
        }
    };
    ticket.set(Phase::Working);
    shared.metrics.http_requests.fetch_add(1, Ordering::Relaxed);
    let (status, ctype, body) = route(shared, ip, &req).await;
    let _ = http::write_response(&mut stream, status, ctype, &body).await;
}

fn json<T: serde::Serialize>(status: u16, v: &T) -> (u16, &'static str, Vec<u8>) {
    (
        status,
        "application/json",
        serde_json::to_vec(v).unwrap_or_default(),
    )
}

fn api_error(shared: &Shared, e: &ApiError) -> (u16, &'static str, Vec<u8>) {
    shared.metrics.error(e.kind());
    json(e.status(), &e.body())
}

fn bad_json(shared: &Shared, e: &dyn std::fmt::Display) -> (u16, &'static str, Vec<u8>) {
    shared.metrics.error("bad_json");
    json(
        400,
        &burrow_proto::channel::api::ErrorBody {
            error: format!("invalid request body: {e}"),
            kind: "bad_json".into(),
        },
    )
}

async fn route(shared: &Shared, ip: IpAddr, req: &http::Request) -> (u16, &'static str, Vec<u8>) {
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/health") => json(200, &serde_json::json!({"status": "ok"})),
        ("GET", "/metrics") => {
            let open = lock(&shared.table).len();
            (
                200,
                "text/plain; version=0.0.4",
                shared.metrics.render(open).into_bytes(),
            )
        }
        ("POST", "/join") => {
            let r: JoinRequest = match decode_json(&req.body) {
                Ok(r) => r,
                Err(e) => return bad_json(shared, &e),
            };
            let res = lock(&shared.table).join(Instant::now(), ip, &r, &mut fill);
            match res {
                Ok(ok) => {
                    shared.wake(&ok.channel);
                    json(200, &ok)
                }
                Err(e) => api_error(shared, &e),
            }
        }
        ("POST", "/channel") => {
            let r: ChannelRequest = match decode_json(&req.body) {
                Ok(r) => r,
                Err(e) => return bad_json(shared, &e),
            };
            channel(shared, ip, &r).await
        }
        (_, "/health" | "/metrics" | "/join" | "/channel") => {
            shared.metrics.error("method");
            json(
                405,
                &burrow_proto::channel::api::ErrorBody {
                    error: "method not allowed".into(),
                    kind: "method".into(),
                },
            )
        }
        _ => {
            shared.metrics.error("not_found");
            json(
                404,
                &burrow_proto::channel::api::ErrorBody {
                    error: "no such endpoint; see /join, /channel, /health, /metrics".into(),
                    kind: "not_found".into(),
                },
            )
        }
    }
}

/// `POST /channel`, with the long-poll: answers at once if the state changed
/// (or the request changed it), else waits up to `wait_ms` for a change.
async fn channel(shared: &Shared, ip: IpAddr, r: &ChannelRequest) -> (u16, &'static str, Vec<u8>) {
    let notify = shared.notifier(&r.channel);
    let notified = notify.notified();
    tokio::pin!(notified);
    notified.as_mut().enable();
    let before = lock(&shared.table).state(&r.channel).map(|s| s.version);
    let res = lock(&shared.table).post(Instant::now(), ip, r);
    let state = match res {
        Ok(s) => s,
        Err(e) => {
            if matches!(e, ApiError::UnknownChannel(_)) {
                lock(&shared.notify).remove(&r.channel);
            }
            return api_error(shared, &e);
        }
    };
    if Some(state.version) != before {
        shared.wake(&r.channel);
    }
    let wait = Duration::from_millis(r.wait_ms.unwrap_or(0).min(MAX_WAIT_MS));
    // Wait only for a caller who says which version it already has.
    if wait.is_zero() || r.seen != Some(state.version) || state.closed {
        return json(200, &state);
    }
    let _ = tokio::time::timeout(wait, notified).await;
    match lock(&shared.table).state(&r.channel) {
        Some(s) => json(200, &s),
        None => api_error(shared, &ApiError::UnknownChannel(r.channel.clone())),
    }
}
