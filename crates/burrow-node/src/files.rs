//! The file system side: what a sender offers, where a receiver writes.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use burrow_proto::transfer::{Entry, EntryKind, escape_display, validate_rel_path};

use crate::error::{Error, shown};

/// A file or folder to send, with where to read it.
#[derive(Debug, Clone)]
pub struct Item {
    /// What the receiver sees.
    pub entry: Entry,
    /// Where the sender reads it (files only).
    pub source: Option<PathBuf>,
}

fn is_exec(meta: &fs::Metadata) -> bool {
    meta.permissions().mode() & 0o111 != 0
}

fn display_name(p: &Path) -> Result<String, Error> {
    let name = match p.file_name() {
        Some(n) => n.to_owned(),
        None => fs::canonicalize(p)
            .map_err(|e| Error::io(p, e))?
            .file_name()
            .map(|n| n.to_owned())
            .ok_or_else(|| Error::Usage(format!("{}: cannot send the root folder", p.display())))?,
    };
    name.into_string()
        .map_err(|n| Error::Usage(format!("{}: the name is not valid UTF-8", n.to_string_lossy())))
}

/// Shell patterns (`*.o`, `node_modules`, `build/*`) of things not to send.
#[derive(Debug, Clone, Default)]
pub struct Exclude(Vec<glob::Pattern>);

impl Exclude {
    /// Parses the patterns; an invalid one is a usage error.
    pub fn new(patterns: &[String]) -> Result<Self, Error> {
        patterns
            .iter()
            .map(|p| glob::Pattern::new(p).map_err(|e| Error::Usage(format!("--exclude {p:?}: {e}"))))
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    /// Whether `rel` (a `/`-separated path as it will be sent) is excluded:
    /// a pattern matches its last component or the whole path.
    pub fn matches(&self, rel: &str) -> bool {
        let name = rel.rsplit('/').next().unwrap_or(rel);
        let opts = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: false,
        };
        self.0
            .iter()
            .any(|p| p.matches_with(name, opts) || p.matches_with(rel, opts))
    }
}

/// Walks the paths the user named. Folders are walked in sorted order without
/// following symbolic links; links and special files inside folders are
/// skipped (reported in `skipped`), as are names that are not UTF-8.
/// Anything `exclude` matches is left out silently (a folder with all it holds).
pub fn collect(paths: &[PathBuf], exclude: &Exclude, skipped: &mut Vec<String>) -> Result<Vec<Item>, Error> {
    let mut items = Vec::new();
    let mut top = HashSet::new();
    for p in paths {
        // The user named it: follow a link given on the command line.
        let meta = fs::metadata(p).map_err(|e| Error::io(p, e))?;
        let name = display_name(p)?;
        if exclude.matches(&name) {
            continue;
        }
        if let Err(e) = validate_rel_path(&name) {
            return Err(Error::Usage(format!(
                "{}: cannot be sent: {e}",
                escape_display(&name)
            )));
        }
        if !top.insert(name.clone()) {
            return Err(Error::Usage(format!(
                "two of the paths are both named {}",
                escape_display(&name)
            )));
        }
        if meta.is_file() {
            items.push(Item {
                entry: Entry {
                    kind: EntryKind::File,
                    executable: is_exec(&meta),
                    size: meta.len(),
                    path: name,
                },
                source: Some(p.clone()),
            });
        } else if meta.is_dir() {
            walk_dir(p, name, exclude, &mut items, skipped)?;
        } else {
            return Err(Error::Usage(format!(
                "{}: not a regular file or folder",
                p.display()
            )));
        }
    }
    Ok(items)
}

fn walk_dir(
    root: &Path,
    name: String,
    exclude: &Exclude,
    items: &mut Vec<Item>,
    skipped: &mut Vec<String>,
) -> Result<(), Error> {
    let mut stack = vec![(root.to_path_buf(), name)];
    while let Some((dir, rel)) = stack.pop() {
        items.push(Item {
            entry: Entry {
                kind: EntryKind::Dir,
                executable: false,
                size: 0,
                path: rel.clone(),
            },
            source: None,
        });
        let mut children: Vec<(String, PathBuf)> = Vec::new();
        for de in fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
            let de = de.map_err(|e| Error::io(&dir, e))?;
            match de.file_name().into_string() {
                Ok(n) => children.push((n, de.path())),
                Err(n) => skipped.push(format!("{rel}/{} (name is not UTF-8)", n.to_string_lossy())),
            }
        }
        children.sort();
        let mut subdirs = Vec::new();
        for (n, path) in children {
            let child_rel = format!("{rel}/{n}");
            if exclude.matches(&child_rel) {
                continue;
            }
            // What no receiver may accept (a backslash in a name, a path
            // over 4 KiB) is left out and said, like links.
            if let Err(e) = validate_rel_path(&child_rel) {
                skipped.push(format!("{} ({e})", escape_display(&child_rel)));
                continue;
            }
            let meta = fs::symlink_metadata(&path).map_err(|e| Error::io(&path, e))?;
            let ft = meta.file_type();
            if ft.is_symlink() {
                skipped.push(format!("{} (symbolic link)", escape_display(&child_rel)));
            } else if ft.is_dir() {
                subdirs.push((path, child_rel));
            } else if ft.is_file() {
                items.push(Item {
                    entry: Entry {
                        kind: EntryKind::File,
                        executable: is_exec(&meta),
                        size: meta.len(),
                        path: child_rel,
                    },
                    source: Some(path),
                });
            } else {
                skipped.push(format!("{} (not a regular file)", escape_display(&child_rel)));
            }
        }
        // Reverse so the stack pops them in sorted order.
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(())
}

/// Joins a validated relative path onto the output folder.
pub fn target(out: &Path, rel: &str) -> PathBuf {
    let mut p = out.to_path_buf();
    p.extend(rel.split('/'));
    p
}

/// The hidden temporary file that entry `rel` is written to until it is
/// complete, in the same folder (so the final rename is atomic):
/// `.burrow-<24 hex digits>.part`, 37 bytes whatever the name's length (a
/// name of 255 bytes must be receivable), derived from the name so that a
/// later transfer of the same file finds it to resume. `offered` tells
/// which paths the offer itself names: a temporary never takes the name of
/// another entry (a sender could otherwise name a file after the
/// temporary of one that follows, and see it deleted once saved).
pub fn part_path(out: &Path, rel: &str, offered: impl Fn(&str) -> bool) -> PathBuf {
    let (dir, name) = rel.rsplit_once('/').map_or(("", rel), |(d, n)| (d, n));
    let mut attempt = 0u32;
    loop {
        let mut h = blake3::Hasher::new_derive_key("burrow v1 partial file name");
        h.update(&attempt.to_le_bytes());
        h.update(name.as_bytes());
        let part = format!(".burrow-{}.part", hex::encode(&h.finalize().as_bytes()[..12]));
        let part_rel = if dir.is_empty() {
            part
        } else {
            format!("{dir}/{part}")
        };
        if !offered(&part_rel) {
            return target(out, &part_rel);
        }
        attempt += 1;
    }
}

/// Checks that no existing component of `rel` under `out` is a symbolic link
/// or a non-folder (so nothing can be redirected outside `out`).
pub fn check_components(out: &Path, rel: &str) -> Result<(), Error> {
    let comps: Vec<&str> = rel.split('/').collect();
    let mut p = out.to_path_buf();
    for c in &comps[..comps.len().saturating_sub(1)] {
        p.push(c);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(Error::Usage(format!(
                    "{} is a symbolic link in the output folder; refusing to write through it",
                    shown(&p)
                )));
            }
            Ok(m) if !m.is_dir() => {
                return Err(Error::Usage(format!("{} exists and is not a folder", shown(&p))));
            }
            Ok(_) => {}
            Err(_) => return Ok(()),
        }
    }
    Ok(())
}

/// Free bytes for an unprivileged user in the file system holding `dir`.
pub fn free_space(dir: &Path) -> Option<u64> {
    space(dir).map(|(free, _)| free)
}

/// Free bytes (for an unprivileged user) and the size of the file system
/// holding `dir`.
pub fn space(dir: &Path) -> Option<(u64, u64)> {
    let st = rustix::fs::statvfs(dir).ok()?;
    Some((
        st.f_bavail.saturating_mul(st.f_frsize),
        st.f_blocks.saturating_mul(st.f_frsize),
    ))
}

/// What a stream of unknown size leaves free on a file system of `total`
/// bytes: 5% of it, at most 256 MiB.
pub fn reserve(total: u64) -> u64 {
    (total / 20).min(256 << 20)
}

/// Sets the executable bit where the sender had one.
pub fn set_executable(path: &Path) -> Result<(), Error> {
    let meta = fs::metadata(path).map_err(|e| Error::io(path, e))?;
    let mode = meta.permissions().mode();
    fs::set_permissions(path, fs::Permissions::from_mode(mode | ((mode & 0o444) >> 2)))
        .map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_sorted_and_skips_links() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("top");
        fs::create_dir_all(root.join("b/empty")).unwrap();
        fs::write(root.join("b/z"), b"zz").unwrap();
        fs::write(root.join("a"), b"a").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("link")).unwrap();
        let mut skipped = Vec::new();
        let items = collect(std::slice::from_ref(&root), &Exclude::default(), &mut skipped).unwrap();
        let paths: Vec<&str> = items.iter().map(|i| i.entry.path.as_str()).collect();
        // Per folder: its files (sorted), then its subfolders (sorted).
        assert_eq!(paths, ["top", "top/a", "top/b", "top/b/z", "top/b/empty"]);
        assert_eq!(skipped, ["top/link (symbolic link)"]);
        // Names no receiver accepts are left out, and said.
        fs::write(root.join("back\\slash"), b"x").unwrap();
        let mut skipped = Vec::new();
        let items = collect(std::slice::from_ref(&root), &Exclude::default(), &mut skipped).unwrap();
        assert!(items.iter().all(|i| !i.entry.path.contains('\\')));
        assert!(
            skipped.iter().any(|s| s.starts_with("top/back\\slash (")),
            "{skipped:?}"
        );
        fs::remove_file(root.join("back\\slash")).unwrap();
        let ex = Exclude::new(&["empty".into(), "top/a".into()]).unwrap();
        let items = collect(std::slice::from_ref(&root), &ex, &mut Vec::new()).unwrap();
        let paths: Vec<&str> = items.iter().map(|i| i.entry.path.as_str()).collect();
        assert_eq!(paths, ["top", "top/b", "top/b/z"]);
        let ex = Exclude::new(&["*".into()]).unwrap();
        assert!(collect(&[root], &ex, &mut Vec::new()).unwrap().is_empty());
        assert!(Exclude::new(&["[".into()]).is_err());
    }

    #[test]
    fn symlinked_components_are_refused() {
        let d = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/tmp", d.path().join("evil")).unwrap();
        assert!(check_components(d.path(), "evil/x").is_err());
        assert!(check_components(d.path(), "fine/x").is_ok());
    }

    #[test]
    fn component_errors_escape_the_peers_names() {
        let d = tempfile::tempdir().unwrap();
        let evil = "a\x1b]0;owned\x07";
        fs::write(d.path().join(evil), b"a file").unwrap();
        std::os::unix::fs::symlink("/tmp", d.path().join("l\x1b[2J")).unwrap();
        for rel in [format!("{evil}/f"), "l\x1b[2J/f".to_owned()] {
            let m = check_components(d.path(), &rel).unwrap_err().to_string();
            assert!(!m.contains('\x1b') && !m.contains('\x07'), "{m:?}");
        }
    }

    #[test]
    fn partial_names_are_short_stable_and_never_an_offered_name() {
        let out = Path::new("/o");
        let long = "n".repeat(255);
        let p = part_path(out, &format!("a/{long}"), |_| false);
        let name = p.file_name().unwrap().to_str().unwrap();
        assert_eq!(p.parent(), Some(Path::new("/o/a")));
        assert!(name.starts_with(".burrow-") && name.ends_with(".part") && name.len() == 37);
        assert_eq!(p, part_path(out, &format!("a/{long}"), |_| false));
        assert_ne!(p, part_path(out, "a/other", |_| false));
        // The offer names this very temporary: the next one is taken.
        let taken = format!("a/{name}");
        let q = part_path(out, &format!("a/{long}"), |r| r == taken);
        assert_ne!(p, q);
        assert_eq!(q.parent(), Some(Path::new("/o/a")));
    }
}
