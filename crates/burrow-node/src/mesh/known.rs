//! Known nodes across restarts: the node table's signed records in a file
//! beside the identity (`mesh-nodes`, mode 0600, one hex record per
//! line, written whole and renamed into place). On start, records that
//! still check go back into the table; those that ran out meanwhile keep
//! their keys and last addresses for dialling (a node off for a day still
//! finds its mesh), but are never gossiped: a record stays its owner's word.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use burrow_proto::mesh::record::{NodeRecord, RecordError};

use super::{Shared, unix_now};

/// Most lines read back (the table's own bound).
const MAX_LINES: usize = 10_000;

/// Loads `path` into the table; returns how many nodes it brought back.
pub(crate) fn load(shared: &Shared, path: &Path) -> usize {
    let Ok(text) = std::fs::read_to_string(path) else {
        return 0;
    };
    let now = unix_now();
    let mut st = shared.lock();
    let mut n = 0;
    for line in text.lines().take(MAX_LINES) {
        let Ok(bytes) = hex::decode(line.trim()) else {
            continue;
        };
        let Ok(rec) = NodeRecord::decode(&bytes) else {
            continue;
        };
        if rec.id() == shared.id {
            continue;
        }
        match rec.check(&bytes, now, None) {
            Ok(()) => {
                if st.table.insert(&bytes, now).changed().is_some() {
                    n += 1;
                }
            }
            Err(RecordError::Expired) if rec.check_signature(&bytes).is_ok() => {
                st.remembered
                    .insert(rec.id(), (rec.keys.x25519, rec.addrs.clone()));
                n += 1;
            }
            Err(_) => {}
        }
    }
    n
}

/// Writes the table (but this node's own record) to `path`.
pub(crate) fn save(shared: &Shared, path: &Path) -> std::io::Result<()> {
    let mut text = String::new();
    {
        let st = shared.lock();
        for (id, _) in st.table.iter() {
            if *id == shared.id {
                continue;
            }
            if let Some(b) = st.table.bytes(id) {
                text.push_str(&hex::encode(b));
                text.push('\n');
            }
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
