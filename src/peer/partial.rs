//! Partial downloads kept in the shared folder for resuming, and what is known about
//! them: which source sent which bytes, and how old they are.
//!
//! A partial download of the content with SHA-256 `H` is the file
//! `.peerdex-part-<H in hex>` ([`crate::name::TEMP_PREFIX`]); beside it,
//! `.peerdex-part-<H in hex>.src` lists the sources of its bytes, one range a line:
//!
//! ```text
//! 127.0.0.2:41000 0 1048576
//! 127.0.0.1:40122 1048576 4194304
//! ```
//!
//! (source, first byte, end). If the whole file then fails its hash, every source is
//! named, and the ranges let the downloader find out, once it has the right file, who
//! sent the wrong bytes ([`crate::peer::download`]). Neither file is ever listed or
//! served (the prefix is reserved).
//!
//! Partials are bounded: the oldest are deleted when a download needs their space
//! ([`evict`]), and those untouched for [`MAX_AGE`] are deleted when a peer starts
//! ([`remove_stale`]).

use std::collections::HashSet;
use std::fmt;
use std::fs;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::name::TEMP_PREFIX;
use crate::wire;

/// Partials untouched for this long are removed when the peer starts: a week is long
/// enough for any interrupted download to be taken up again.
pub const MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// The suffix of a partial's list of sources.
const SOURCES_SUFFIX: &str = ".src";

/// The bytes `start..end` of a partial came from `from` (`None`: not recorded, as for
/// a partial from before sources were kept).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Contribution {
    /// The source's file server.
    pub from: Option<SocketAddr>,
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

impl fmt::Display for Contribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.from {
            Some(from) => write!(f, "{from}")?,
            None => f.write_str("an earlier download")?,
        }
        write!(f, " (bytes {}-{})", self.start, self.end.saturating_sub(1))
    }
}

/// The path of the partial of content `sha256` in `root`.
pub fn data_path(root: &Path, sha256: &wire::Sha256) -> PathBuf {
    root.join(format!("{TEMP_PREFIX}{}", hex::encode(sha256)))
}

/// The path of the list of sources of the partial at `data`.
pub fn sources_path(data: &Path) -> PathBuf {
    let mut name = data.as_os_str().to_owned();
    name.push(SOURCES_SUFFIX);
    PathBuf::from(name)
}

/// The sources of the partial at `data`, which holds `len` bytes: as recorded if the
/// record covers exactly `0..len` in order, else one unrecorded range.
pub fn load_sources(data: &Path, len: u64) -> Vec<Contribution> {
    let unknown =
        || if len == 0 { Vec::new() } else { vec![Contribution { from: None, start: 0, end: len }] };
    let Ok(text) = fs::read_to_string(sources_path(data)) else { return unknown() };
    let parse = |line: &str| -> Option<Contribution> {
        let mut f = line.split(' ');
        let from = match f.next()? {
            "-" => None,
            addr => Some(addr.parse().ok()?),
        };
        let c = Contribution { from, start: f.next()?.parse().ok()?, end: f.next()?.parse().ok()? };
        f.next().is_none().then_some(c)
    };
    let ranges: Option<Vec<Contribution>> = text.lines().map(parse).collect();
    match ranges {
        Some(ranges) if covers(&ranges, len) => ranges,
        _ => unknown(),
    }
}

/// Do `ranges` cover `0..len` exactly, in order, none empty?
fn covers(ranges: &[Contribution], len: u64) -> bool {
    let mut at = 0;
    for r in ranges {
        if r.start != at || r.end <= r.start {
            return false;
        }
        at = r.end;
    }
    at == len
}

/// Writes the list of sources of the partial at `data` (removes it if empty).
pub fn save_sources(data: &Path, sources: &[Contribution]) -> io::Result<()> {
    let path = sources_path(data);
    if sources.is_empty() {
        return remove_if_there(&path);
    }
    let text: String = sources
        .iter()
        .map(|c| {
            let from = c.from.map_or("-".to_owned(), |a| a.to_string());
            format!("{from} {} {}\n", c.start, c.end)
        })
        .collect();
    fs::write(path, text)
}

/// Appends `from` sent `start..end` to `sources`, merging with the last range when it
/// is the same source's continuation.
pub fn record(sources: &mut Vec<Contribution>, from: SocketAddr, start: u64, end: u64) {
    if end <= start {
        return;
    }
    match sources.last_mut() {
        Some(last) if last.from == Some(from) && last.end == start => last.end = end,
        _ => sources.push(Contribution { from: Some(from), start, end }),
    }
}

fn remove_if_there(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Removes the partial at `data` and its list of sources.
pub fn remove(data: &Path) -> io::Result<()> {
    remove_if_there(&sources_path(data))?;
    remove_if_there(data)
}

/// The partials in `root` (data files, not lists of sources): (path, content hash,
/// size, last modified).
fn partials(root: &Path) -> io::Result<Vec<(PathBuf, wire::Sha256, u64, SystemTime)>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(root)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(hex) = name.to_str().and_then(|n| n.strip_prefix(TEMP_PREFIX)) else { continue };
        let Some(sha256) = hex::decode(hex).ok().and_then(|b| wire::Sha256::try_from(b).ok()) else {
            continue;
        };
        let meta = entry.metadata()?;
        if meta.is_file() {
            found.push((entry.path(), sha256, meta.len(), meta.modified().unwrap_or(SystemTime::UNIX_EPOCH)));
        }
    }
    Ok(found)
}

/// Deletes the oldest partials in `root`, except those in `in_use`, until at least
/// `needed` bytes are freed. If deleting them all would not free that much, deletes
/// none (nothing is lost for a download that cannot fit anyway). Returns the bytes
/// freed and how many partials were deleted.
pub fn evict(root: &Path, needed: u64, in_use: &HashSet<wire::Sha256>) -> io::Result<(u64, usize)> {
    let mut candidates: Vec<_> = partials(root)?.into_iter().filter(|p| !in_use.contains(&p.1)).collect();
    if candidates.iter().map(|p| p.2).sum::<u64>() < needed {
        return Ok((0, 0));
    }
    candidates.sort_by_key(|p| p.3);
    let (mut freed, mut deleted) = (0, 0);
    for (path, _, len, _) in candidates {
        if freed >= needed {
            break;
        }
        remove(&path)?;
        freed += len;
        deleted += 1;
    }
    Ok((freed, deleted))
}

/// Deletes every file with the temporaries' prefix in `root` last modified more than
/// `max_age` ago: partials, their lists of sources, and temporaries a crash left.
/// Returns how many were deleted.
pub fn remove_stale(root: &Path, max_age: Duration) -> io::Result<usize> {
    let Some(cutoff) = SystemTime::now().checked_sub(max_age) else { return Ok(0) };
    let mut deleted = 0;
    for entry in fs::read_dir(root)? {
        let entry = entry?;
        if !entry.file_name().to_str().is_some_and(|n| n.starts_with(TEMP_PREFIX)) {
            continue;
        }
        let meta = entry.metadata()?;
        if meta.is_file() && meta.modified().is_ok_and(|t| t < cutoff) {
            remove_if_there(&entry.path())?;
            deleted += 1;
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_round_trip_and_a_bad_record_means_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let data = data_path(dir.path(), &[7; 32]);
        fs::write(&data, vec![0u8; 300]).unwrap();
        let (a, b): (SocketAddr, SocketAddr) = ("10.0.0.1:1".parse().unwrap(), "[::1]:2".parse().unwrap());
        let mut sources = Vec::new();
        record(&mut sources, a, 0, 100);
        record(&mut sources, a, 100, 150);
        record(&mut sources, b, 150, 300);
        assert_eq!(sources.len(), 2, "a continuation merges");
        save_sources(&data, &sources).unwrap();
        assert_eq!(load_sources(&data, 300), sources);
        let unknown = vec![Contribution { from: None, start: 0, end: 299 }];
        assert_eq!(load_sources(&data, 299), unknown, "a record that does not cover the file");
        fs::write(sources_path(&data), "garbage\n").unwrap();
        assert_eq!(load_sources(&data, 299), unknown);
        assert_eq!(sources[1].to_string(), "[::1]:2 (bytes 150-299)");
        remove(&data).unwrap();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn the_oldest_partials_go_first_and_those_in_use_stay() {
        let dir = tempfile::tempdir().unwrap();
        let old = SystemTime::now() - Duration::from_secs(3600);
        for (i, age) in [(1u8, 3), (2, 1), (3, 2)] {
            let data = data_path(dir.path(), &[i; 32]);
            fs::write(&data, vec![0u8; 1000]).unwrap();
            save_sources(&data, &[Contribution { from: None, start: 0, end: 1000 }]).unwrap();
            let f = fs::File::options().write(true).open(&data).unwrap();
            f.set_modified(old - Duration::from_secs(age * 60)).unwrap();
        }
        fs::write(dir.path().join("keep.txt"), b"shared").unwrap();
        let in_use: HashSet<wire::Sha256> = [[3; 32]].into();
        // Partial 1 is the oldest; 3 is older than 2 but in use.
        assert_eq!(
            evict(dir.path(), 5000, &in_use).unwrap(),
            (0, 0),
            "not enough to make room: none deleted"
        );
        assert_eq!(evict(dir.path(), 1500, &in_use).unwrap(), (2000, 2));
        assert!(data_path(dir.path(), &[3; 32]).exists());
        assert_eq!(evict(dir.path(), 1, &in_use).unwrap(), (0, 0), "nothing left but what is in use");
        assert!(dir.path().join("keep.txt").exists());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 3, "partial 3, its sources, keep.txt");
    }

    #[test]
    fn stale_temporaries_are_removed_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let stale = data_path(dir.path(), &[1; 32]);
        let fresh = data_path(dir.path(), &[2; 32]);
        for p in [&stale, &fresh, &dir.path().join("shared.txt")] {
            fs::write(p, b"x").unwrap();
        }
        let week_ago = SystemTime::now() - MAX_AGE - Duration::from_secs(60);
        fs::File::options().write(true).open(&stale).unwrap().set_modified(week_ago).unwrap();
        fs::File::options()
            .write(true)
            .open(dir.path().join("shared.txt"))
            .unwrap()
            .set_modified(week_ago)
            .unwrap();
        assert_eq!(remove_stale(dir.path(), MAX_AGE).unwrap(), 1);
        assert!(!stale.exists() && fresh.exists() && dir.path().join("shared.txt").exists());
    }
}
