//! Names a sender chooses must not break or fool the receiver: any valid
//! name arrives, nothing reported saved goes missing, and no name reaches
//! the receiver's terminal raw.

use std::path::Path;

mod common;

use common::{relay_with, round_trip};

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_of_255_bytes_are_received() {
    let r = relay_with(|_| {}).await;
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let top = src.path().join("top");
    std::fs::create_dir(&top).unwrap();
    let mut names = Vec::new();
    for len in [243, 250, 255] {
        // Two-byte characters too: the limit is in bytes.
        let name = format!("{len}{}{}", "é".repeat((len - 3) / 2), "x".repeat((len - 3) % 2));
        assert_eq!(name.len(), len, "{name}");
        std::fs::write(top.join(&name), name.as_bytes()).unwrap();
        names.push(name);
    }
    let (s, rcv) = round_trip(&r.addr().to_string(), &top, dst.path()).await;
    s.unwrap();
    let rep = rcv.unwrap();
    assert_eq!(rep.saved.len(), 3);
    names.sort();
    assert_eq!(names_in(&dst.path().join("top")), names);
    for n in &names {
        assert_eq!(
            std::fs::read(dst.path().join("top").join(n)).unwrap(),
            n.as_bytes()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_named_like_a_temporary_survives_the_file_it_names() {
    let r = relay_with(|_| {}).await;
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let top = src.path().join("top");
    std::fs::create_dir(&top).unwrap();
    // The old temporary of `x`, and today's: both sort before `x`, so they
    // are saved before `x`'s temporary is created.
    let today = burrow_node::files::part_path(Path::new(""), "top/x", |_| false);
    let today = today.file_name().unwrap().to_str().unwrap().to_owned();
    for name in [".x.burrow-part", today.as_str(), "x"] {
        std::fs::write(top.join(name), format!("I am {name}")).unwrap();
    }
    let (s, rcv) = round_trip(&r.addr().to_string(), &top, dst.path()).await;
    s.unwrap();
    let rep = rcv.unwrap();
    assert_eq!(rep.saved.len(), 3);
    for p in &rep.saved {
        let name = p.file_name().unwrap().to_str().unwrap();
        assert_eq!(
            std::fs::read_to_string(p).unwrap_or_default(),
            format!("I am {name}"),
            "{name} was reported saved"
        );
    }
    let mut want = vec![".x.burrow-part".to_owned(), today, "x".to_owned()];
    want.sort();
    assert_eq!(names_in(&dst.path().join("top")), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_names_in_local_errors_are_escaped() {
    let r = relay_with(|_| {}).await;
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let evil = "a\x1b]0;owned\x07";
    let top = src.path().join("top");
    std::fs::create_dir_all(top.join(evil)).unwrap();
    std::fs::write(top.join(evil).join("f"), b"x").unwrap();
    // On the receiving side that name is a file, where a folder must go.
    std::fs::create_dir(dst.path().join("top")).unwrap();
    std::fs::write(dst.path().join("top").join(evil), b"mine").unwrap();
    let (_, rcv) = round_trip(&r.addr().to_string(), &top, dst.path()).await;
    let msg = rcv.unwrap_err().to_string();
    assert!(msg.contains("owned"), "{msg}");
    assert!(
        !msg.contains('\x1b') && !msg.contains('\x07'),
        "raw escape in {msg:?}"
    );
    assert_eq!(std::fs::read(dst.path().join("top").join(evil)).unwrap(), b"mine");
}
