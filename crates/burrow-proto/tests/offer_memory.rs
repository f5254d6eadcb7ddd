//! A hostile offer must not make the receiver hold more than a small
//! multiple of the bytes it received. Measured with a counting allocator
//! (this test binary's only test, so nothing else allocates meanwhile).

use burrow_proto::transfer::{Entry, EntryKind, Message, OfferKind, Receiver, RxEvent};
use peak_alloc::PeakAlloc;

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

/// The shape a hostile sender used: many entries, each ~4 KiB deep in
/// 2,000 one-letter folders, each under its own top folder.
#[test]
fn deep_paths_cost_memory_linear_in_the_bytes_received() {
    let entries = 200u64;
    let records: Vec<Vec<u8>> = std::iter::once(
        Message::Offer {
            kind: OfferKind::Files,
            entries,
            total: 0,
        }
        .to_vec(),
    )
    .chain((0..entries).map(|i| {
        let path = format!("{i:04}{}", "/a".repeat(2046));
        Message::Entry(Entry {
            kind: EntryKind::File,
            executable: false,
            size: 0,
            path,
        })
        .to_vec()
    }))
    .chain(std::iter::once(Message::OfferEnd.to_vec()))
    .collect();
    let wire: usize = records.iter().map(Vec::len).sum();

    let before = ALLOC.current_usage();
    ALLOC.reset_peak_usage();
    let mut rx = Receiver::new();
    let mut last = RxEvent::Nothing;
    for rec in &records {
        last = rx.handle(std::time::Instant::now(), rec).expect("a valid offer");
    }
    assert_eq!(last, RxEvent::OfferReady);
    let held = ALLOC.peak_usage() - before;
    assert!(
        held <= 4 * wire,
        "the receiver held {held} bytes for {wire} bytes received"
    );
    assert_eq!(rx.entries().len() as u64, entries);
}
