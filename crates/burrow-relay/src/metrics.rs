//! Relay counters, rendered in the Prometheus text format at `GET /metrics`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters and gauges of one relay.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Bytes copied between stapled peers (both directions).
    pub bytes_relayed: AtomicU64,
    /// Stapled pairs currently piping.
    pub staples_active: AtomicU64,
    /// Stapled pairs since start.
    pub staples_total: AtomicU64,
    /// Lobby connections since start.
    pub lobby_total: AtomicU64,
    /// HTTP requests answered.
    pub http_requests: AtomicU64,
    /// Connections accepted.
    pub connections: AtomicU64,
    errors: Mutex<BTreeMap<&'static str, u64>>,
}

impl Metrics {
    /// Counts one error of `kind`.
    pub fn error(&self, kind: &'static str) {
        if let Ok(mut m) = self.errors.lock() {
            *m.entry(kind).or_default() += 1;
        }
    }

    /// Errors of `kind` so far.
    pub fn errors_of(&self, kind: &str) -> u64 {
        self.errors
            .lock()
            .map(|m| m.get(kind).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// Renders every metric; `channels_open` is read from the table by the caller.
    pub fn render(&self, channels_open: usize) -> String {
        let mut s = String::new();
        let g = |s: &mut String, name: &str, help: &str, kind: &str, v: u64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        g(
            &mut s,
            "burrow_relay_channels_open",
            "Channels held by the relay.",
            "gauge",
            channels_open as u64,
        );
        let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
        g(
            &mut s,
            "burrow_relay_staples_active",
            "Stapled pairs piping now.",
            "gauge",
            ld(&self.staples_active),
        );
        g(
            &mut s,
            "burrow_relay_staples_total",
            "Stapled pairs since start.",
            "counter",
            ld(&self.staples_total),
        );
        g(
            &mut s,
            "burrow_relay_lobby_connections_total",
            "Lobby (seed 003) connections since start.",
            "counter",
            ld(&self.lobby_total),
        );
        g(
            &mut s,
            "burrow_relay_bytes_relayed_total",
            "Bytes piped between stapled peers.",
            "counter",
            ld(&self.bytes_relayed),
        );
        g(
            &mut s,
            "burrow_relay_http_requests_total",
            "HTTP requests answered.",
            "counter",
            ld(&self.http_requests),
        );
        g(
            &mut s,
            "burrow_relay_connections_total",
            "Connections accepted.",
            "counter",
            ld(&self.connections),
        );
        let _ = writeln!(
            s,
            "# HELP burrow_relay_errors_total Refused requests and connections, by kind."
        );
        let _ = writeln!(s, "# TYPE burrow_relay_errors_total counter");
        if let Ok(m) = self.errors.lock() {
            for (k, v) in m.iter() {
                let _ = writeln!(s, "burrow_relay_errors_total{{kind=\"{k}\"}} {v}");
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.error("full");
        m.error("full");
        m.bytes_relayed.fetch_add(5, Ordering::Relaxed);
        let s = m.render(3);
        assert!(s.contains("burrow_relay_channels_open 3\n"));
        assert!(s.contains("burrow_relay_bytes_relayed_total 5\n"));
        assert!(s.contains("burrow_relay_errors_total{kind=\"full\"} 2\n"));
        assert_eq!(m.errors_of("full"), 2);
    }
}
