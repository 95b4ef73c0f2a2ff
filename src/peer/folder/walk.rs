//! The walk: which paths under the shared folder are candidates for sharing, and why
//! the others are not.
//!
//! Every regular file under the folder is a candidate, in subfolders too, down to
//! [`MAX_DEPTH`] levels. A symlink to a file is a candidate (the gate checks where it
//! leads); a symlink to a folder is not followed, so there are no loops and no
//! escapes. Excluded, silently, as the user asked: peerdex's own files; what the
//! rules exclude (gitignore syntax, the `ignore` crate): [`DEFAULT_EXCLUDES`], the
//! folder's own `.peerdexignore`, and `--exclude` patterns. Anything else not shared
//! is counted with its reason, so that a register can say what it skipped.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::path::Path;

use ignore::gitignore::{Gitignore, GitignoreBuilder};

use super::Stamp;
use crate::name::{MAX_DEPTH, RESERVED_PREFIX, SharePath, check_component};
use crate::text::count;

/// Excluded by default: what operating systems and NAS boxes leave in folders, never
/// what anyone means to share. `.DS_Store`: macOS Finder's view settings; `Thumbs.db`:
/// Windows Explorer's thumbnail cache; `desktop.ini`: Windows folder settings;
/// `@eaDir`: the folders of thumbnails and indexes a Synology NAS makes beside files.
pub const DEFAULT_EXCLUDES: [&str; 4] = [".DS_Store", "Thumbs.db", "desktop.ini", "@eaDir/"];

/// The file of exclusion rules a folder may hold at its top, in gitignore syntax.
pub const IGNORE_FILE: &str = ".peerdexignore";

/// Why something under the folder is not shared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Skip {
    /// A symlink that leads outside the folder (or to peerdex's own files).
    Outside,
    /// A symlink to a folder: not followed.
    LinkedFolder,
    /// Its name, or a folder's on its way, cannot be shared (not UTF-8, control
    /// characters, a backslash, too long).
    BadName,
    /// Below [`MAX_DEPTH`] levels of folders.
    TooDeep,
    /// A path longer than the peer shares (`--max-name-len`, by default what an index
    /// takes by default: [`crate::name::INDEX_NAME_LEN`]).
    TooLong(usize),
    /// Not a regular file: a FIFO, a socket, a device.
    NotRegular,
    /// It could not be read (permissions, an I/O error), or vanished meanwhile.
    Unreadable,
}

impl Skip {
    /// "2 symlinks outside the folder", "1 unreadable", ...
    fn counted(self, n: usize) -> String {
        let n64 = n as u64;
        match self {
            Skip::Outside => format!("{} outside the folder", count(n64, "symlink")),
            Skip::LinkedFolder => format!("{} to a folder (not followed)", count(n64, "symlink")),
            Skip::BadName => format!("{} with a name that cannot be shared", count(n64, "file")),
            Skip::TooDeep => format!("{n} more than {MAX_DEPTH} levels down"),
            Skip::TooLong(max) => format!("{} with a path longer than {max} bytes", count(n64, "file")),
            Skip::NotRegular => format!("{n} not a regular file"),
            Skip::Unreadable => format!("{n} unreadable"),
        }
    }
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Skip::Outside => "a symlink that leads outside the folder",
            Skip::LinkedFolder => "a symlink to a folder (not followed)",
            Skip::BadName => "its name cannot be shared",
            Skip::TooDeep => "more than 32 levels down",
            Skip::TooLong(max) => {
                return write!(
                    f,
                    "its path is longer than {max} bytes, the most an index takes (see --max-name-len)"
                );
            }
            Skip::NotRegular => "not a regular file",
            Skip::Unreadable => "it cannot be read",
        })
    }
}

/// What was skipped and why, as `register` and `update` report it: "3 (2 symlinks
/// outside the folder, 1 unreadable)".
pub fn summary(skipped: &[(String, Skip)]) -> String {
    let mut by: BTreeMap<Skip, usize> = BTreeMap::new();
    for (_, why) in skipped {
        *by.entry(*why).or_default() += 1;
    }
    let parts: Vec<String> = by.into_iter().map(|(why, n)| why.counted(n)).collect();
    format!("{} ({})", skipped.len(), parts.join(", "))
}

/// The exclusion rules of the folder at `root`: the defaults, its [`IGNORE_FILE`] if
/// it has one, and `extra` patterns (gitignore syntax: `*.tmp`, `cache/`, `/top-only`).
/// A pattern that does not parse is an error naming it.
pub fn rules(root: &Path, extra: &[String]) -> Result<Gitignore, String> {
    let mut b = GitignoreBuilder::new(root);
    for line in DEFAULT_EXCLUDES {
        b.add_line(None, line).map_err(|e| e.to_string())?;
    }
    let file = root.join(IGNORE_FILE);
    // Most folders have none.
    if file.is_file()
        && let Some(e) = b.add(file)
    {
        return Err(format!("{IGNORE_FILE}: {e}"));
    }
    for pattern in extra {
        b.add_line(None, pattern).map_err(|e| format!("--exclude {pattern:?}: {e}"))?;
    }
    b.build().map_err(|e| e.to_string())
}

/// A path the walk found, with its [`Stamp`] if it is a regular file (from its folder
/// entry: not opened, no symlink followed).
pub(super) type Found = (SharePath, Option<Stamp>);

/// Every candidate under `root` (not yet opened: the gate has the last word), in no
/// particular order, and what was skipped on the way, by path (lossy for names that
/// are not UTF-8).
pub(super) fn walk(root: &Path, rules: &Gitignore) -> (Vec<Found>, Vec<(String, Skip)>) {
    let mut found = Vec::new();
    let mut skipped = Vec::new();
    // Folders to read: their path on disk, their path as shared, their depth.
    let mut todo = vec![(root.to_path_buf(), String::new(), 0usize)];
    while let Some((dir, rel, depth)) = todo.pop() {
        // For looking at its files relative to it: one name to look up each, not a
        // whole path.
        let dirfd = fs::File::open(&dir).ok();
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(_) => {
                if !rel.is_empty() {
                    skipped.push((rel, Skip::Unreadable));
                }
                continue;
            }
        };
        for entry in entries {
            let Ok(entry) = entry else { continue };
            let raw = entry.file_name();
            let below = |name: &str| if rel.is_empty() { name.to_owned() } else { format!("{rel}/{name}") };
            let Some(name) = raw.to_str() else {
                skipped.push((below(&raw.to_string_lossy()), Skip::BadName));
                continue;
            };
            if depth == 0 && name == IGNORE_FILE || name.starts_with(RESERVED_PREFIX) {
                continue; // ours
            }
            let path = below(name);
            let Ok(kind) = entry.file_type() else {
                skipped.push((path, Skip::Unreadable));
                continue;
            };
            if rules.matched(&path, kind.is_dir()).is_ignore() {
                continue;
            }
            if check_component(name).is_err() {
                skipped.push((path, Skip::BadName));
            } else if kind.is_dir() {
                // Files in a folder at MAX_DEPTH - 1 levels are MAX_DEPTH components.
                if depth + 1 < MAX_DEPTH {
                    todo.push((entry.path(), path, depth + 1));
                } else {
                    skipped.push((path, Skip::TooDeep));
                }
            } else if kind.is_symlink() && fs::metadata(entry.path()).is_ok_and(|m| m.is_dir()) {
                skipped.push((path, Skip::LinkedFolder));
            } else {
                // A regular file's stamp, from the folder's entry (no open, no symlink
                // followed): a rescan lists it from the hash cache if it is unchanged.
                let stamp = match &dirfd {
                    Some(dirfd) if kind.is_file() => stamp_at(dirfd, &raw),
                    _ => None,
                };
                match SharePath::parse(&path) {
                    Ok(p) => found.push((p, stamp)),
                    Err(_) => skipped.push((path, Skip::BadName)), // the whole path is too long
                }
            }
        }
    }
    (found, skipped)
}

/// The stamp of the regular file `name` in the folder `dir`, if it can be read: looked
/// up relative to the folder, without opening the file or following a symlink.
fn stamp_at(dir: &fs::File, name: &std::ffi::OsStr) -> Option<Stamp> {
    use rustix::fs::{Access, AtFlags, accessat, statat};
    let stat = statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).ok()?;
    accessat(dir, name, Access::READ_OK, AtFlags::SYMLINK_NOFOLLOW).ok()?;
    Stamp::of_stat(&stat)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_counts_each_reason() {
        let skipped = vec![
            ("a".to_owned(), Skip::Outside),
            ("b".to_owned(), Skip::Unreadable),
            ("c".to_owned(), Skip::Outside),
        ];
        assert_eq!(summary(&skipped), "3 (2 symlinks outside the folder, 1 unreadable)");
    }

    #[test]
    fn the_walk_goes_down_folders_but_not_through_symlinked_ones() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("album/disc 1")).unwrap();
        fs::write(root.join("album/disc 1/01.flac"), b"x").unwrap();
        fs::write(root.join("top.txt"), b"x").unwrap();
        fs::write(root.join("album/.DS_Store"), b"x").unwrap();
        fs::create_dir(root.join("@eaDir")).unwrap();
        fs::write(root.join("@eaDir/thumb"), b"x").unwrap();
        fs::write(root.join("skip.tmp"), b"x").unwrap();
        fs::write(root.join(IGNORE_FILE), b"*.log\n").unwrap();
        fs::write(root.join("album/x.log"), b"x").unwrap();
        fs::write(root.join(".peerdex-hashes"), b"x").unwrap();
        std::os::unix::fs::symlink(root.join("album"), root.join("loop")).unwrap();
        let rules = rules(root, &["*.tmp".to_owned()]).unwrap();
        let (mut found, skipped) = walk(root, &rules);
        found.sort_by(|a, b| a.0.cmp(&b.0));
        assert!(found.iter().all(|(_, stamp)| stamp.is_some_and(|s| s.size == 1)), "{found:?}");
        let found: Vec<&str> = found.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(found, ["album/disc 1/01.flac", "top.txt"]);
        assert_eq!(skipped, [("loop".to_owned(), Skip::LinkedFolder)]);
    }

    #[test]
    fn a_bad_pattern_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let e = rules(dir.path(), &["a[z-a]".to_owned()]).unwrap_err();
        assert!(e.starts_with("--exclude \"a[z-a]\": "), "{e}");
    }
}
