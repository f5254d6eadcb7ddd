//! `/join` cost against the size of the relay's channel table (issue 14,
//! 10: it used to grow with the table). Fills a table to each size with
//! senders from many addresses, then times fresh sender joins from one more
//! address, and prints joins per second at each size beside the empty
//! table's rate (the anchor).
//!
//! `cargo run --release -p burrow-proto --example join_rate`

use std::net::IpAddr;
use std::time::{Duration, Instant};

use burrow_proto::channel::api::{JoinRequest, Role};
use burrow_proto::channel::table::{ChannelTable, TableConfig};

fn main() {
    let mut seed = 0x1234_5678_9abc_def0u64;
    let mut fill = move |b: &mut [u8]| {
        for x in b {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            *x = seed as u8;
        }
    };
    let req = JoinRequest {
        channel: None,
        curve: None,
        role: Role::Sender,
    };
    let mut anchor = None;
    for size in [0usize, 10_000, 50_000, 100_000] {
        let mut t = ChannelTable::new(TableConfig {
            max_channels: 1_000_000,
            idle_ttl: Duration::from_secs(3600),
            ..TableConfig::default()
        });
        let now = Instant::now();
        for i in 0..size {
            let ip = IpAddr::from((0x0a00_0000u32 + (i as u32 / 60)).to_be_bytes());
            t.join(now, ip, &req, &mut fill).expect("fill");
        }
        let probe: IpAddr = "192.0.2.1".parse().expect("ip");
        let n = 20_000;
        let t0 = Instant::now();
        for i in 0..n {
            // A new address every 60 joins, like the table's fillers.
            let ip = IpAddr::from((0xc000_0200u32 + i / 60).to_be_bytes());
            let ip = if i == 0 { probe } else { ip };
            t.join(now, ip, &req, &mut fill).expect("join");
        }
        let rate = f64::from(n) / t0.elapsed().as_secs_f64();
        let base = *anchor.get_or_insert(rate);
        println!(
            "{size:>7} channels: {rate:>10.0} joins/s  ({:.0}% of the empty table's rate)",
            100.0 * rate / base
        );
    }
}
