//! The shared folder: which files it holds, their roots (see [`crate::content`]), and
//! the only ways the peer reads or writes inside it.
//!
//! A file is shared if and only if [`SharedFolder::open`] accepts it: a regular file
//! whose real location is inside the folder, reached without passing through a
//! symlinked folder (`gate.rs`). Listing and serving go through the same check, so
//! nothing is ever listed that would not be served, or served that is not listed. The
//! check is made on the opened file itself, not only on the path, so swapping a file
//! or folder for a symlink between a check and the open cannot escape. What is looked
//! at in the first place is the [`walk`]'s business: every file under the folder, but
//! what the exclusion rules leave out.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::fs::{self, File, Metadata};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::debug;

use super::partial::{self, InUse, Partial};
use crate::content::merkle::{self, Hash};
use crate::lock;
use crate::name::{SharePath, TEMP_PREFIX};
use crate::wire::FileInfo;
pub use walk::Skip;

mod gate;
pub mod walk;

/// Bytes of piece layers kept in memory for serving (each at most 128 KiB): a layer not
/// kept is computed again, by hashing the file, when a downloader asks for it.
const LAYER_CACHE_BYTES: usize = 32 << 20;

/// Why a name cannot be opened as a shared file.
#[derive(Debug)]
pub enum OpenError {
    /// Nothing of that name in the folder.
    NotFound,
    /// A directory, FIFO, socket or device: only regular files are shared.
    NotRegular,
    /// A symlink whose target is outside the shared folder (or is peerdex's own).
    Outside,
    /// A folder on its path is a symlink: never followed.
    ThroughSymlink,
    /// Modified a moment ago: probably still being written.
    Unsettled,
    /// Its content is no longer the one asked for: it changed since it was hashed.
    Changed,
    /// Any other I/O error (permissions, ...).
    Io(io::Error),
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::NotFound => f.write_str("no such file in the shared folder"),
            OpenError::NotRegular => f.write_str("not a regular file"),
            OpenError::Outside => f.write_str("it resolves outside the shared folder"),
            OpenError::ThroughSymlink => {
                f.write_str("a folder on its path is a symlink, which is never followed")
            }
            OpenError::Unsettled => f.write_str("it is still being written"),
            OpenError::Changed => f.write_str("the file changed since it was registered"),
            OpenError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for OpenError {}

impl From<io::Error> for OpenError {
    fn from(e: io::Error) -> OpenError {
        match e.kind() {
            io::ErrorKind::NotFound => OpenError::NotFound,
            _ => OpenError::Io(e),
        }
    }
}

/// What a cached hash is valid for: if any of these change, the file is hashed again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    size: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

impl Stamp {
    fn of(meta: &Metadata) -> Stamp {
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(meta);
        #[cfg(not(unix))]
        let inode = 0;
        Stamp { size: meta.len(), modified: meta.modified().ok(), inode }
    }

    /// [`Stamp::of`] a `stat`'s result: the same values (`None` for a time before
    /// 1970, which [`Stamp::of`] is then asked for).
    // The fields' types differ from one target to another.
    #[allow(clippy::useless_conversion)]
    fn of_stat(stat: &rustix::fs::Stat) -> Option<Stamp> {
        let secs = u64::try_from(i64::from(stat.st_mtime)).ok()?;
        let nanos = u32::try_from(stat.st_mtime_nsec).ok()?;
        Some(Stamp {
            size: u64::try_from(stat.st_size).ok()?,
            modified: Some(UNIX_EPOCH + Duration::new(secs, nanos)),
            inode: u64::from(stat.st_ino),
        })
    }
}

/// A shared folder. See the module docs.
#[derive(Debug)]
pub struct SharedFolder {
    /// Canonical path: symlinks in the path to the folder itself are resolved once.
    root: PathBuf,
    /// The root of each file by name, valid while its [`Stamp`] is unchanged, so a file
    /// is hashed once, not on every scan or request (nor on every start: the cache is
    /// kept in [`CACHE_FILE`]).
    hashes: Mutex<HashCache>,
    /// Piece layers computed lately, by root.
    layers: Mutex<LayerCache>,
    /// Partial downloads being written now, by root.
    partials: InUse,
    /// Those of them whose verified pieces are offered to other peers, by root.
    offered: Mutex<HashMap<Hash, Arc<PartialView>>>,
    /// Exclusion patterns given on the command line (see [`walk::rules`]).
    excludes: Vec<String>,
    /// Longest path shared, in bytes ([`SharedFolder::sharing_paths_up_to`]).
    max_path: usize,
    /// What this peer put in the folder lately: [`SharedFolder::made_here`].
    made: Mutex<Made>,
}

/// The paths a peer's downloads made (a file, and the folders made for it), by path on
/// disk, with when; and when those older than [`MADE_MEMORY`] were last let go. They
/// are let go at most once per [`MADE_MEMORY`], not at every download: a folder of
/// small files downloads thousands a second.
#[derive(Debug, Default)]
struct Made {
    paths: HashMap<PathBuf, Instant>,
    pruned: Option<Instant>,
}

/// How long [`SharedFolder::made_here`] remembers a path: the watcher's events for it
/// come within milliseconds.
pub const MADE_MEMORY: Duration = Duration::from_secs(10);

/// What a scan found.
#[derive(Debug, Default)]
pub struct Scanned {
    /// The files shared, in name order.
    pub files: Vec<FileInfo>,
    /// Files left out because they were modified a moment ago.
    pub unsettled: usize,
    /// What is not shared, and why, by path.
    pub skipped: Vec<(String, Skip)>,
}

/// A partial download as the file server sees it: what it may serve of it.
#[derive(Debug)]
pub struct PartialView {
    /// The name it is downloaded under.
    pub name: SharePath,
    /// How the file is cut.
    pub geometry: merkle::Geometry,
    /// The partial data file, for reading verified pieces.
    pub file: File,
    /// The piece layer, once known.
    pub layer: std::sync::OnceLock<Arc<Vec<Hash>>>,
    /// The verified pieces, kept up to date by the download.
    pub have: Mutex<crate::content::Bitfield>,
}

/// The hash cache and whether it changed since it was last saved.
#[derive(Debug, Default)]
struct HashCache {
    map: HashMap<SharePath, (Stamp, Hash)>,
    /// A name that had each root when it was hashed: where to serve a root from.
    /// Rebuilt at every scan and kept up as files are hashed; checked against `map`
    /// when used, so a stale entry is a refusal, never a wrong file (and a root nobody
    /// has costs one probe, not a search: a downloader cannot make us walk the cache).
    by_root: HashMap<Hash, SharePath>,
    dirty: bool,
}

/// Piece layers by root, the oldest dropped first past [`LAYER_CACHE_BYTES`].
#[derive(Debug, Default)]
struct LayerCache {
    map: HashMap<Hash, Arc<Vec<Hash>>>,
    order: VecDeque<Hash>,
    bytes: usize,
}

impl LayerCache {
    fn get(&self, root: &Hash) -> Option<Arc<Vec<Hash>>> {
        self.map.get(root).cloned()
    }

    fn put(&mut self, root: Hash, layer: Arc<Vec<Hash>>) {
        if layer.len() <= 1 || self.map.contains_key(&root) {
            return; // a one-piece file's layer is its root: nothing to keep
        }
        self.bytes += layer.len() * 32;
        self.map.insert(root, layer);
        self.order.push_back(root);
        while self.bytes > LAYER_CACHE_BYTES
            && let Some(old) = self.order.pop_front()
        {
            if let Some(l) = self.map.remove(&old) {
                self.bytes -= l.len() * 32;
            }
        }
    }
}

/// The hash cache's file in the shared folder. Its name has the reserved prefix, so it
/// is never listed or served. Each line: root (hex), size, modification time
/// (seconds and nanoseconds since the epoch, or `-`), inode, name. An entry only
/// counts while the file's size, time and inode all match, so a stale or damaged
/// cache costs a re-hash, never a wrong hash.
pub const CACHE_FILE: &str = ".peerdex-hashes";
/// Version 1 held whole-file SHA-256s; they are not roots, so such a cache is ignored.
const CACHE_HEADER: &str = "peerdex hash cache v2";

impl HashCache {
    fn load(root: &Path) -> HashCache {
        let Ok(text) = fs::read_to_string(root.join(CACHE_FILE)) else { return HashCache::default() };
        let mut lines = text.lines();
        if lines.next() != Some(CACHE_HEADER) {
            return HashCache::default();
        }
        let map: HashMap<SharePath, (Stamp, Hash)> = lines.filter_map(parse_cache_line).collect();
        let by_root = map.iter().map(|(name, (_, root))| (*root, name.clone())).collect();
        HashCache { map, by_root, dirty: false }
    }

    fn save(&mut self, folder: &SharedFolder) -> io::Result<()> {
        let mut text = String::with_capacity(self.map.len() * 128);
        text.push_str(CACHE_HEADER);
        text.push('\n');
        for (name, (stamp, root)) in &self.map {
            let time = match stamp.modified.map(|t| t.duration_since(UNIX_EPOCH)) {
                Some(Ok(d)) => format!("{} {}", d.as_secs(), d.subsec_nanos()),
                _ => "- -".to_owned(),
            };
            let line = format!("{} {} {time} {} {name}\n", hex::encode(root), stamp.size, stamp.inode);
            text.push_str(&line);
        }
        // Written whole beside it, then renamed over it: a crash leaves the old cache
        // or the new one, never half of one. The temporary's name has the reserved
        // prefix, so it is never listed or served, and it is removed if writing fails.
        let mut temp = tempfile::Builder::new().prefix(TEMP_PREFIX).tempfile_in(&folder.root)?;
        temp.write_all(text.as_bytes())?;
        temp.persist(folder.root.join(CACHE_FILE)).map_err(|e| e.error)?;
        self.dirty = false;
        Ok(())
    }
}

fn parse_cache_line(line: &str) -> Option<(SharePath, (Stamp, Hash))> {
    let mut fields = line.splitn(6, ' ');
    let root = hex::decode(fields.next()?).ok()?.try_into().ok()?;
    let size = fields.next()?.parse().ok()?;
    let (secs, nanos) = (fields.next()?, fields.next()?);
    let modified = match (secs.parse::<u64>(), nanos.parse::<u32>()) {
        (Ok(s), Ok(n)) => Some(UNIX_EPOCH + Duration::new(s, n)),
        _ => None,
    };
    let inode = fields.next()?.parse().ok()?;
    let name = SharePath::parse(fields.next()?).ok()?;
    Some((name, (Stamp { size, modified, inode }, root)))
}

/// An opened shared file with its size and root.
#[derive(Debug)]
pub struct OpenFile {
    /// The file, positioned at its start.
    pub file: File,
    /// Its name, size and root.
    pub info: FileInfo,
}

impl SharedFolder {
    /// Opens the folder at `path`, which must be an existing directory.
    pub fn new(path: &Path) -> io::Result<SharedFolder> {
        SharedFolder::excluding(path, Vec::new())
    }

    /// Opens the folder at `path`, leaving out what the gitignore-style `excludes`
    /// match (besides the defaults and the folder's `.peerdexignore`). A pattern that
    /// does not parse is an error that names it.
    pub fn excluding(path: &Path, excludes: Vec<String>) -> io::Result<SharedFolder> {
        let root = fs::canonicalize(path)?;
        if !fs::metadata(&root)?.is_dir() {
            return Err(io::Error::new(io::ErrorKind::NotADirectory, "not a directory"));
        }
        walk::rules(&root, &excludes).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let hashes = Mutex::new(HashCache::load(&root));
        Ok(SharedFolder {
            root,
            hashes,
            layers: Mutex::default(),
            partials: InUse::default(),
            offered: Mutex::default(),
            excludes,
            max_path: crate::name::INDEX_NAME_LEN,
            made: Mutex::default(),
        })
    }

    /// Shares paths of at most `max` bytes (by default
    /// [`crate::name::INDEX_NAME_LEN`], what an index takes by default): a longer one
    /// is skipped and reported, where the index would refuse the whole registration
    /// for it.
    pub fn sharing_paths_up_to(mut self, max: usize) -> SharedFolder {
        self.max_path = max;
        self
    }

    /// The folder's canonical path.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every shared file: the regular files under the folder, in subfolders too, that
    /// the [`walk`] finds and [`SharedFolder::open`] accepts, in name order; and what
    /// was skipped, with why (peerdex's own files and what the exclusion rules match
    /// are left out without a word).
    ///
    /// Files are opened and, when not cached, hashed by one thread per core. If any
    /// hash was computed or any file is gone, the cache file is rewritten.
    pub fn scan(&self) -> io::Result<Scanned> {
        self.scan_settled(None)
    }

    /// Like [`SharedFolder::scan`], but with `settle`, leaves out (without hashing)
    /// the files modified less than `settle` ago: most likely still being written, by
    /// a copy or an editor, and counts them.
    pub fn scan_settled(&self, settle: Option<Duration>) -> io::Result<Scanned> {
        let rules = walk::rules(&self.root, &self.excludes)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        if !fs::metadata(&self.root)?.is_dir() {
            return Err(io::Error::new(io::ErrorKind::NotADirectory, "not a directory"));
        }
        let (mut names, mut walked) = walk::walk(&self.root, &rules);
        names.retain(|(name, _)| {
            let fits = name.as_str().len() <= self.max_path;
            if !fits {
                walked.push((name.to_string(), Skip::TooLong(self.max_path)));
            }
            fits
        });
        let skipped = Mutex::new(walked);
        let unsettled = AtomicUsize::new(0);
        let next = AtomicUsize::new(0);
        let workers = thread::available_parallelism().map_or(1, |n| n.get()).min(names.len().max(1));
        let mut files: Vec<FileInfo> = thread::scope(|scope| {
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    scope.spawn(|| {
                        let mut found = Vec::new();
                        while let Some((name, stamp)) = names.get(next.fetch_add(1, Ordering::Relaxed)) {
                            // Unchanged since it was hashed, and readable (as the walk saw
                            // it): listed from the cache without opening it. Opening
                            // 100,000 files took a rescan 2 s, each open also an event for
                            // the watcher. (A download still opens it through the gate,
                            // with every check.)
                            if let Some(stamp) = stamp
                                && let Some(root) = self.cached(name, *stamp)
                            {
                                found.push(FileInfo { name: name.clone(), size: stamp.size, root });
                                continue;
                            }
                            let why = match self.open_settled(name, settle) {
                                Ok(open) => {
                                    found.push(open.info);
                                    continue;
                                }
                                Err(OpenError::Unsettled) => {
                                    unsettled.fetch_add(1, Ordering::Relaxed);
                                    continue;
                                }
                                Err(OpenError::Outside) => Skip::Outside,
                                Err(OpenError::ThroughSymlink) => Skip::LinkedFolder,
                                Err(OpenError::NotRegular) => Skip::NotRegular,
                                Err(OpenError::NotFound | OpenError::Changed | OpenError::Io(_)) => {
                                    Skip::Unreadable
                                }
                            };
                            lock(&skipped).push((name.to_string(), why));
                        }
                        found
                    })
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().expect("opening files does not panic")).collect()
        });
        files.sort_by(|a, b| a.name.cmp(&b.name));
        let mut skipped = skipped.into_inner().unwrap_or_else(PoisonError::into_inner);
        skipped.sort();
        let mut cache = lock(&self.hashes);
        let before = cache.map.len();
        // Every file found is in the cache (found there, or hashed and put there): as
        // many entries as files means none is stale, and a rescan of an unchanged
        // folder leaves the cache as it is.
        if before != files.len() {
            cache.map.retain(|name, _| files.binary_search_by(|f| f.name.cmp(name)).is_ok());
            cache.by_root = cache.map.iter().map(|(name, (_, root))| (*root, name.clone())).collect();
        }
        if cache.dirty || cache.map.len() != before {
            cache.dirty = true;
            if let Err(e) = cache.save(self) {
                // A read-only folder can still be shared; it is just hashed on every start.
                debug!("cannot save the hash cache in {}: {e}", self.root.display());
            }
        }
        Ok(Scanned { files, unsettled: unsettled.into_inner(), skipped })
    }

    /// Opens a shared file for reading, with its size and root (from the cache when
    /// the file is unchanged). Refuses anything that is not a regular file whose real
    /// location is in the folder, and any path through a symlinked folder.
    pub fn open(&self, name: &SharePath) -> Result<OpenFile, OpenError> {
        self.open_settled(name, None)
    }

    /// [`SharedFolder::open`], refusing with [`OpenError::Unsettled`] a file modified
    /// less than `settle` ago (checked before hashing it).
    fn open_settled(&self, name: &SharePath, settle: Option<Duration>) -> Result<OpenFile, OpenError> {
        let file = gate::open_file(&self.root, name)?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(OpenError::NotRegular);
        }
        gate::inside(&self.root, &file)?;
        let stamp = Stamp::of(&meta);
        let cached = self.cached(name, stamp);
        // A file whose hash we already hold for this very stamp is complete (a verified
        // download, say), however recent.
        if let (None, Some(settle), Some(modified)) = (cached, settle, stamp.modified)
            && modified.elapsed().is_ok_and(|age| age < settle)
        {
            return Err(OpenError::Unsettled);
        }
        let root = match cached {
            Some(root) => root,
            None => {
                let tree = merkle::hash_file(&file, stamp.size)?;
                self.remember(name, stamp, tree.root);
                lock(&self.layers).put(tree.root, Arc::new(tree.layer));
                tree.root
            }
        };
        Ok(OpenFile { file, info: FileInfo { name: name.clone(), size: stamp.size, root } })
    }

    /// Opens the shared file whose content has this root, for serving it. Its name is
    /// known from the last hashing; the file is opened through [`SharedFolder::open`]
    /// (all its checks) and must still have this root.
    pub fn open_root(&self, root: &Hash) -> Result<OpenFile, OpenError> {
        let known = {
            let cache = lock(&self.hashes);
            cache
                .by_root
                .get(root)
                .filter(|name| cache.map.get(*name).is_some_and(|(_, r)| r == root))
                .cloned()
        };
        let name = known.ok_or(OpenError::NotFound)?;
        let open = self.open(&name)?;
        if open.info.root != *root {
            return Err(OpenError::Changed);
        }
        Ok(open)
    }

    /// The piece layer of an open file: kept from its hashing, or computed again (and
    /// checked against its root: a file changed since it was hashed is refused).
    pub fn layer(&self, open: &OpenFile) -> Result<Arc<Vec<Hash>>, OpenError> {
        let root = open.info.root;
        if let Some(layer) = lock(&self.layers).get(&root) {
            return Ok(layer);
        }
        let geometry = merkle::Geometry::for_size(open.info.size);
        if geometry.pieces() == 1 {
            return Ok(Arc::new(vec![root]));
        }
        let tree = merkle::hash_file(&open.file, open.info.size)?;
        if tree.root != root {
            return Err(OpenError::Changed);
        }
        let layer = Arc::new(tree.layer);
        lock(&self.layers).put(root, Arc::clone(&layer));
        Ok(layer)
    }

    fn cached(&self, name: &SharePath, stamp: Stamp) -> Option<Hash> {
        let cache = lock(&self.hashes);
        cache.map.get(name).filter(|(s, _)| *s == stamp).map(|(_, root)| *root)
    }

    fn remember(&self, name: &SharePath, stamp: Stamp, root: Hash) {
        let mut cache = lock(&self.hashes);
        cache.map.insert(name.clone(), (stamp, root));
        cache.by_root.insert(root, name.clone());
        cache.dirty = true;
    }

    /// Bytes that can still be written in the folder's filesystem (by us, not only by
    /// root), so that a download that cannot fit is refused before it starts.
    pub fn free_space(&self) -> io::Result<u64> {
        let stat = rustix::fs::statvfs(&self.root)?;
        Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
    }

    /// Can a download be put at `name`: nothing there (no file, folder or dangling
    /// symlink), and no symlink or file where it needs a folder? Otherwise, why not.
    pub fn vacant(&self, name: &SharePath) -> Result<(), String> {
        gate::vacant(&self.root, name)
    }

    /// Can downloads be put under the folder `folder`: no symlink or file where it, or
    /// a folder above it, should be? Otherwise, why not.
    pub fn room_under(&self, folder: &SharePath) -> Result<(), String> {
        gate::room_under(&self.root, folder)
    }

    /// The paths here that start with `typed`, a folder level at a time (`album/` for
    /// the folder, then `album/01 intro.flac` in it), for completing `delete`: names
    /// that could be shared, reached never through a symlink.
    pub fn complete(&self, typed: &str) -> Vec<String> {
        let (folder, start) = match typed.rsplit_once('/') {
            Some((folder, start)) => match SharePath::parse(folder) {
                Ok(folder) => (Some(folder), start),
                Err(_) => return Vec::new(),
            },
            None => (None, typed),
        };
        let Ok(entries) = gate::entries(&self.root, folder.as_ref()) else { return Vec::new() };
        let above = folder.map_or(String::new(), |f| format!("{f}/"));
        let mut found: Vec<String> = entries
            .into_iter()
            .filter(|(name, _)| name.starts_with(start) && crate::name::check_component(name).is_ok())
            .map(|(name, is_dir)| format!("{above}{name}{}", if is_dir { "/" } else { "" }))
            .collect();
        found.sort();
        found
    }

    /// Deletes the file `name` from the folder. A symlink is removed, never its target;
    /// a directory is refused, as is a path through a symlinked folder.
    pub fn delete(&self, name: &SharePath) -> Result<(), OpenError> {
        gate::remove(&self.root, name)?;
        let mut cache = lock(&self.hashes);
        if cache.map.remove(name).is_some() {
            cache.dirty = true;
        }
        Ok(())
    }

    /// The partial download of the content with root `root` and size `size`, claimed
    /// for one download (see [`super::partial`]); `None` if another download in this
    /// process is writing it now.
    pub fn partial(&self, root: &Hash, size: u64) -> io::Result<Option<Partial>> {
        Partial::open(&self.root, root, size, &self.partials)
    }

    /// Gives a complete, verified partial its name in the folder and records its root,
    /// so it is not hashed again when it is shared. Makes the folders on its path that
    /// are missing, never through a symlink. Never replaces an existing file: if
    /// `name` exists, fails with `AlreadyExists` and the partial is kept.
    pub fn commit(
        &self,
        partial: Partial,
        name: &SharePath,
        root: Hash,
        layer: Arc<Vec<Hash>>,
    ) -> io::Result<()> {
        // Before the folders and the file appear: the watcher may see them at once.
        {
            let mut made = lock(&self.made);
            let now = Instant::now();
            if made.pruned.is_none_or(|at| now.duration_since(at) >= MADE_MEMORY) {
                made.paths.retain(|_, at| now.duration_since(*at) < MADE_MEMORY);
                made.pruned = Some(now);
            }
            let mut path = self.root.clone();
            for part in name.as_str().split('/') {
                path.push(part);
                made.paths.insert(path.clone(), now);
            }
        }
        let dir = gate::make_parent(&self.root, name)?;
        let meta = partial.commit(&gate::in_dir(&dir, name.file_name()))?;
        self.remember(name, Stamp::of(&meta), root);
        lock(&self.layers).put(root, layer);
        Ok(())
    }

    /// Whether this peer itself put `path` (a path on disk under the folder) there
    /// lately: a downloaded file, or a folder made for one. Its download told the index
    /// already, so the watcher need not rescan for it.
    pub fn made_here(&self, path: &Path) -> bool {
        lock(&self.made).paths.get(path).is_some_and(|at| at.elapsed() < MADE_MEMORY)
    }

    /// Offers the verified pieces of the partial download of `root` to other peers,
    /// until [`SharedFolder::withdraw`].
    pub fn offer(&self, root: Hash, view: Arc<PartialView>) {
        lock(&self.offered).insert(root, view);
    }

    /// Stops offering the partial download of `root`.
    pub fn withdraw(&self, root: &Hash) {
        lock(&self.offered).remove(root);
    }

    /// The partial download of `root` on offer, if any.
    pub fn offered(&self, root: &Hash) -> Option<Arc<PartialView>> {
        lock(&self.offered).get(root).cloned()
    }

    /// Deletes the oldest kept partial downloads not being written now, until `needed`
    /// bytes are freed or none is left. Returns (bytes freed, partials deleted).
    pub fn evict_partials(&self, needed: u64) -> io::Result<(u64, usize)> {
        let in_use = lock(&self.partials).clone();
        partial::evict(&self.root, needed, &in_use)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> SharePath {
        SharePath::parse(s).unwrap()
    }

    #[test]
    fn lists_and_opens_only_regular_files_inside() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a b.txt"), b"hello").unwrap();
        fs::write(dir.path().join("empty"), b"").unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();
        fs::write(dir.path().join(".peerdex-part-0000"), b"partial").unwrap();
        fs::write(outside.path().join("secret"), b"secret").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::symlink;
            symlink(outside.path().join("secret"), dir.path().join("link-out")).unwrap();
            symlink(outside.path(), dir.path().join("dir-out")).unwrap();
            symlink(dir.path().join("a b.txt"), dir.path().join("link-in")).unwrap();
        }
        let folder = SharedFolder::new(dir.path()).unwrap();
        let names: Vec<String> =
            folder.scan().unwrap().files.into_iter().map(|f| f.name.to_string()).collect();
        #[cfg(unix)]
        assert_eq!(names, ["a b.txt", "empty", "link-in"]);
        let a = folder.open(&name("a b.txt")).unwrap();
        assert_eq!(a.info.size, 5);
        assert_eq!(
            hex::encode(a.info.root),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert!(matches!(folder.open(&name("sub")), Err(OpenError::NotRegular)));
        assert!(matches!(folder.open(&name("nope")), Err(OpenError::NotFound)));
        #[cfg(unix)]
        {
            assert!(matches!(folder.open(&name("link-out")), Err(OpenError::Outside)));
            assert!(matches!(folder.open(&name("dir-out")), Err(OpenError::NotRegular)));
        }
    }

    #[test]
    fn a_changed_file_is_hashed_again() {
        let dir = tempfile::tempdir().unwrap();
        let folder = SharedFolder::new(dir.path()).unwrap();
        fs::write(dir.path().join("f"), b"one").unwrap();
        let first = folder.open(&name("f")).unwrap().info.root;
        fs::write(dir.path().join("f"), b"two!").unwrap();
        let second = folder.open(&name("f")).unwrap().info;
        assert_ne!(first, second.root);
        assert_eq!(second.size, 4);
    }

    #[test]
    fn commit_never_replaces_and_temporaries_vanish() {
        let dir = tempfile::tempdir().unwrap();
        let folder = SharedFolder::new(dir.path()).unwrap();
        fs::write(dir.path().join("taken"), b"original").unwrap();
        let tree = crate::content::Tree::of_bytes(b"new");
        let complete = || {
            let mut p = folder.partial(&tree.root, 3).unwrap().unwrap();
            let have = crate::content::Bitfield::full(1);
            p.start(&tree.layer, &have).unwrap();
            partial::write_all_at(p.file(), b"new", 0).unwrap();
            p.record(0, &have).unwrap();
            p
        };
        let layer = Arc::new(tree.layer.clone());
        let err = folder.commit(complete(), &name("taken"), tree.root, Arc::clone(&layer)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(dir.path().join("taken")).unwrap(), b"original");

        folder.commit(complete(), &name("fresh"), tree.root, layer).unwrap();
        assert_eq!(fs::read(dir.path().join("fresh")).unwrap(), b"new");
        assert_eq!(folder.open_root(&tree.root).unwrap().info.name.as_str(), "fresh");

        let left: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left.len(), 2, "only taken and fresh remain: {left:?}");
    }

    #[test]
    fn hashes_survive_a_restart_but_not_a_change() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("kept"), b"same").unwrap();
        fs::write(dir.path().join("changed"), b"before").unwrap();
        let first = SharedFolder::new(dir.path()).unwrap().scan().unwrap().files;
        assert_eq!(first.len(), 2, "the cache file itself is not shared");

        // Plant a recognisable hash for "kept" in the cache: if a new instance reports
        // it, the cache was used instead of hashing.
        let cache = dir.path().join(CACHE_FILE);
        let text = fs::read_to_string(&cache).unwrap();
        assert!(text.starts_with(CACHE_HEADER));
        let real = hex::encode(first[1].root);
        assert_eq!(first[1].name.as_str(), "kept");
        fs::write(&cache, text.replace(&real, &"ab".repeat(32))).unwrap();
        fs::write(dir.path().join("changed"), b"after, longer").unwrap();

        let second = SharedFolder::new(dir.path()).unwrap().scan().unwrap().files;
        assert_eq!(second[1].root, [0xab; 32], "unchanged file: hash from the cache");
        let fresh = crate::content::Tree::of_bytes(b"after, longer").root;
        assert_eq!(second[0].root, fresh, "changed file: hashed again");

        // A damaged cache is ignored, not trusted.
        fs::write(&cache, "garbage\n").unwrap();
        let third = SharedFolder::new(dir.path()).unwrap().scan().unwrap().files;
        assert_eq!(third[1].root, first[1].root);
    }
}
