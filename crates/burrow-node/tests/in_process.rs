//! A relay and two peers in one process: the whole channel flow end to end.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;

use burrow_node::{Code, Decision, Error, Event, Observer, OfferInfo, Sink, Source, Transfer};
use common::{relay_with, transfer};

#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<Event>>>);

struct Obs {
    log: Log,
    code_tx: Option<tokio::sync::oneshot::Sender<String>>,
    decision: Decision,
}

impl Observer for Obs {
    fn event(&mut self, e: Event) {
        if let Event::Code(c) = &e
            && let Some(tx) = self.code_tx.take()
        {
            let _ = tx.send(c.clone());
        }
        self.log.0.lock().unwrap().push(e);
    }
    fn decide(&mut self, _offer: &OfferInfo) -> Decision {
        self.decision.clone()
    }
}

fn obs(decision: Decision) -> (Obs, tokio::sync::oneshot::Receiver<String>, Log) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let log = Log::default();
    (
        Obs {
            log: log.clone(),
            code_tx: Some(tx),
            decision,
        },
        rx,
        log,
    )
}

async fn relay() -> burrow_relay::RelayHandle {
    relay_with(|_| {}).await
}

fn tree(root: &Path) {
    std::fs::create_dir_all(root.join("sub/empty")).unwrap();
    std::fs::write(root.join("sub/empty.txt"), b"").unwrap();
    std::fs::write(
        root.join("a.bin"),
        (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect::<Vec<_>>(),
    )
    .unwrap();
    std::fs::write(root.join("sub/run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.join("sub/run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folder_arrives_identical() {
    let r = relay().await;
    let addr = r.addr().to_string();
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let root = src.path().join("data");
    tree(&root);
    let (sobs, code_rx, slog) = obs(Decision::Accept);
    let sender = {
        let t = transfer(&addr);
        let root = root.clone();
        tokio::spawn(async move { t.send(Source::Paths(vec![root]), sobs).await })
    };
    let code = tokio::time::timeout(Duration::from_secs(10), code_rx)
        .await
        .unwrap()
        .unwrap();
    let (robs, _, rlog) = obs(Decision::Accept);
    // This receiver also hashes every file again (`--verify`).
    let report = common::builder(&addr)
        .verify_all(true)
        .build()
        .unwrap()
        .receive(&Code::parse(&code).unwrap(), Sink::Dir(dst.path().into()), robs)
        .await
        .unwrap();
    sender.await.unwrap().unwrap();
    assert_eq!(report.files, 3);
    let out = dst.path().join("data");
    for f in ["a.bin", "sub/empty.txt", "sub/run.sh"] {
        let h = |p: &Path| blake3::hash(&std::fs::read(p).unwrap());
        assert_eq!(h(&out.join(f)), h(&root.join(f)), "{f}");
    }
    assert!(out.join("sub/empty").is_dir());
    use std::os::unix::fs::PermissionsExt;
    assert_ne!(
        std::fs::metadata(out.join("sub/run.sh"))
            .unwrap()
            .permissions()
            .mode()
            & 0o100,
        0
    );
    assert_eq!(
        std::fs::metadata(out.join("a.bin")).unwrap().permissions().mode() & 0o100,
        0
    );
    // No temporary files left behind.
    let leftovers: Vec<_> = walk(dst.path())
        .into_iter()
        .filter(|p| p.contains(".burrow-") && p.ends_with(".part"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    for log in [slog, rlog] {
        assert!(
            log.0
                .lock()
                .unwrap()
                .iter()
                .any(|e| matches!(e, Event::Finished { files: 3, .. }))
        );
    }
}

fn walk(p: &Path) -> Vec<String> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(p).unwrap() {
        let e = e.unwrap();
        v.push(e.path().display().to_string());
        if e.file_type().unwrap().is_dir() {
            v.extend(walk(&e.path()));
        }
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_code_fails_both_sides_and_writes_nothing() {
    let r = relay().await;
    let addr = r.addr().to_string();
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("f"), b"secret").unwrap();
    let (sobs, code_rx, _) = obs(Decision::Accept);
    let sender = {
        let t = transfer(&addr);
        let p = src.path().join("f");
        tokio::spawn(async move { t.send(Source::Paths(vec![p]), sobs).await })
    };
    let code = code_rx.await.unwrap();
    let channel = code.split('-').next().unwrap();
    let wrong = Code::parse(&format!("{channel}-wrong-words-here")).unwrap();
    let (robs, _, _) = obs(Decision::Accept);
    let err = transfer(&addr)
        .receive(&wrong, Sink::Dir(dst.path().into()), robs)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::WrongCode), "{err}");
    let err = sender.await.unwrap().unwrap_err();
    assert!(matches!(err, Error::WrongCode), "{err}");
    assert!(walk(dst.path()).is_empty());
    // The channel is burnt: the right code no longer works either.
    let (robs, _, _) = obs(Decision::Accept);
    let err = transfer(&addr)
        .receive(&Code::parse(&code).unwrap(), Sink::Dir(dst.path().into()), robs)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Relay { .. } | Error::WrongCode), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_and_decline() {
    let r = relay().await;
    let addr = r.addr().to_string();
    let dst = tempfile::tempdir().unwrap();
    let (sobs, code_rx, _) = obs(Decision::Accept);
    let t = transfer(&addr);
    let sender =
        tokio::spawn(async move { t.send(Source::Text("hello \u{1b}[31m there".into()), sobs).await });
    let code = code_rx.await.unwrap();
    let (robs, _, _) = obs(Decision::Accept);
    let rep = transfer(&addr)
        .receive(&Code::parse(&code).unwrap(), Sink::Dir(dst.path().into()), robs)
        .await
        .unwrap();
    assert_eq!(rep.text.as_deref(), Some("hello \u{1b}[31m there"));
    sender.await.unwrap().unwrap();

    let (sobs, code_rx, _) = obs(Decision::Accept);
    let t = transfer(&addr);
    let sender = tokio::spawn(async move { t.send(Source::Text("no thanks".into()), sobs).await });
    let code = code_rx.await.unwrap();
    let (robs, _, _) = obs(Decision::Reject("not today".into()));
    let err = transfer(&addr)
        .receive(&Code::parse(&code).unwrap(), Sink::Dir(dst.path().into()), robs)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Declined(_)));
    let err = sender.await.unwrap().unwrap_err();
    assert!(matches!(&err, Error::Declined(r) if r == "not today"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_files_need_consent() {
    let r = relay().await;
    let addr = r.addr().to_string();
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("f"), b"new").unwrap();
    std::fs::write(dst.path().join("f"), b"old").unwrap();
    for (decision, expect) in [
        (Decision::Accept, &b"old"[..]),
        (Decision::AcceptOverwrite, &b"new"[..]),
    ] {
        let (sobs, code_rx, _) = obs(Decision::Accept);
        let t = transfer(&addr);
        let p = src.path().join("f");
        let sender = tokio::spawn(async move { t.send(Source::Paths(vec![p]), sobs).await });
        let code = code_rx.await.unwrap();
        let (robs, _, _) = obs(decision.clone());
        let res = transfer(&addr)
            .receive(&Code::parse(&code).unwrap(), Sink::Dir(dst.path().into()), robs)
            .await;
        let sres = sender.await.unwrap();
        assert_eq!(res.is_ok(), decision == Decision::AcceptOverwrite);
        assert_eq!(sres.is_ok(), decision == Decision::AcceptOverwrite);
        assert_eq!(std::fs::read(dst.path().join("f")).unwrap(), expect);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_may_start_a_moment_before_the_sender() {
    let r = relay().await;
    let addr = r.addr().to_string();
    let code = Code::parse("4711-absorb-zebra-captain").unwrap();
    let (robs, _, _) = obs(Decision::Accept);
    let t = transfer(&addr);
    let c = code.clone();
    let receiver = tokio::spawn(async move { t.receive(&c, Sink::Stdout, robs).await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (sobs, _, _) = obs(Decision::Accept);
    let sender = Transfer::builder()
        .relay(&addr)
        .code(code)
        .relay_only(true)
        .build()
        .unwrap();
    sender
        .send(Source::Text("early bird".into()), sobs)
        .await
        .unwrap();
    assert_eq!(
        receiver.await.unwrap().unwrap().text.as_deref(),
        Some("early bird")
    );
}
