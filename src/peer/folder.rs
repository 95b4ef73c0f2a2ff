//! The shared folder: which files it holds, their hashes, and the only ways the peer
//! reads or writes inside it.
//!
//! A file is shared if and only if [`SharedFolder::open`] accepts it: a regular file
//! whose real location is directly inside the folder. Listing and serving go through
//! the same check, so nothing is ever listed that would not be served, or served that
//! is not listed. The check is made on the opened file itself, not only on the path,
//! so swapping a file for a symlink between a check and the open cannot escape.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use log::debug;
use rand::RngExt;
use sha2::{Digest, Sha256};

use super::partial::{self, Contribution};
use crate::name::{ShareName, TEMP_PREFIX};
use crate::wire::{self, FileInfo};

/// Read buffer for hashing: large enough that the hash, not the system calls, sets
/// the pace.
const HASH_BUF_LEN: usize = 1 << 20;

/// Why a name cannot be opened as a shared file.
#[derive(Debug)]
pub enum OpenError {
    /// Nothing of that name in the folder.
    NotFound,
    /// A directory, FIFO, socket or device: only regular files are shared.
    NotRegular,
    /// A symlink whose target is outside the shared folder.
    Outside,
    /// Modified a moment ago: probably still being written.
    Unsettled,
    /// Any other I/O error (permissions, ...).
    Io(io::Error),
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::NotFound => f.write_str("no such file in the shared folder"),
            OpenError::NotRegular => f.write_str("not a regular file"),
            OpenError::Outside => f.write_str("it resolves outside the shared folder"),
            OpenError::Unsettled => f.write_str("it is still being written"),
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
}

/// A shared folder. See the module docs.
#[derive(Debug)]
pub struct SharedFolder {
    /// Canonical path: symlinks in the path to the folder itself are resolved once.
    root: PathBuf,
    /// SHA-256 of each file by name, valid while its [`Stamp`] is unchanged, so a file
    /// is hashed once, not on every scan or request (nor on every start: the cache is
    /// kept in [`CACHE_FILE`]).
    hashes: Mutex<HashCache>,
    /// Partial downloads being written now, by content hash.
    partials: Arc<Mutex<HashSet<wire::Sha256>>>,
}

/// The hash cache and whether it changed since it was last saved.
#[derive(Debug, Default)]
struct HashCache {
    map: HashMap<ShareName, (Stamp, wire::Sha256)>,
    dirty: bool,
}

/// The hash cache's file in the shared folder. Its name has the reserved prefix, so it
/// is never listed or served. Each line: SHA-256 (hex), size, modification time
/// (seconds and nanoseconds since the epoch, or `-`), inode, name. An entry only
/// counts while the file's size, time and inode all match, so a stale or damaged
/// cache costs a re-hash, never a wrong hash.
pub const CACHE_FILE: &str = ".peerdex-hashes";
const CACHE_HEADER: &str = "peerdex hash cache v1";

impl HashCache {
    fn load(root: &Path) -> HashCache {
        let Ok(text) = fs::read_to_string(root.join(CACHE_FILE)) else { return HashCache::default() };
        let mut lines = text.lines();
        if lines.next() != Some(CACHE_HEADER) {
            return HashCache::default();
        }
        let map = lines.filter_map(parse_cache_line).collect();
        HashCache { map, dirty: false }
    }

    fn save(&mut self, folder: &SharedFolder) -> io::Result<()> {
        let mut text = String::with_capacity(self.map.len() * 128);
        text.push_str(CACHE_HEADER);
        text.push('\n');
        for (name, (stamp, sha256)) in &self.map {
            let time = match stamp.modified.map(|t| t.duration_since(UNIX_EPOCH)) {
                Some(Ok(d)) => format!("{} {}", d.as_secs(), d.subsec_nanos()),
                _ => "- -".to_owned(),
            };
            let line = format!("{} {} {time} {} {name}\n", hex::encode(sha256), stamp.size, stamp.inode);
            text.push_str(&line);
        }
        let mut temp = folder.create_temp()?;
        temp.file().write_all(text.as_bytes())?;
        temp.replace(&folder.root.join(CACHE_FILE))?;
        self.dirty = false;
        Ok(())
    }
}

fn parse_cache_line(line: &str) -> Option<(ShareName, (Stamp, wire::Sha256))> {
    let mut fields = line.splitn(6, ' ');
    let sha256 = hex::decode(fields.next()?).ok()?.try_into().ok()?;
    let size = fields.next()?.parse().ok()?;
    let (secs, nanos) = (fields.next()?, fields.next()?);
    let modified = match (secs.parse::<u64>(), nanos.parse::<u32>()) {
        (Ok(s), Ok(n)) => Some(UNIX_EPOCH + Duration::new(s, n)),
        _ => None,
    };
    let inode = fields.next()?.parse().ok()?;
    let name = ShareName::parse(fields.next()?).ok()?;
    Some((name, (Stamp { size, modified, inode }, sha256)))
}

/// An opened shared file with its size and hash.
#[derive(Debug)]
pub struct OpenFile {
    /// The file, positioned at its start.
    pub file: File,
    /// Its name, size and SHA-256.
    pub info: FileInfo,
}

impl SharedFolder {
    /// Opens the folder at `path`, which must be an existing directory.
    pub fn new(path: &Path) -> io::Result<SharedFolder> {
        let root = fs::canonicalize(path)?;
        if !fs::metadata(&root)?.is_dir() {
            return Err(io::Error::new(io::ErrorKind::NotADirectory, "not a directory"));
        }
        let hashes = Mutex::new(HashCache::load(&root));
        Ok(SharedFolder { root, hashes, partials: Arc::default() })
    }

    /// The folder's canonical path.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every shared file: the regular files directly inside the folder that
    /// [`SharedFolder::open`] accepts, in name order. Names that cannot be shared (not
    /// UTF-8, control characters, peerdex's own files) are skipped.
    ///
    /// Files are opened and, when not cached, hashed by one thread per core. If any
    /// hash was computed or any file is gone, the cache file is rewritten.
    pub fn scan(&self) -> io::Result<Vec<FileInfo>> {
        Ok(self.scan_settled(None)?.0)
    }

    /// Like [`SharedFolder::scan`], but with `settle`, leaves out (without hashing)
    /// the files modified less than `settle` ago: most likely still being written, by
    /// a copy or an editor. Returns the files and how many were left out.
    pub fn scan_settled(&self, settle: Option<Duration>) -> io::Result<(Vec<FileInfo>, usize)> {
        let unsettled = AtomicUsize::new(0);
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.root)? {
            let entry = entry?;
            match entry.file_name().to_str().and_then(|n| ShareName::parse(n).ok()) {
                Some(name) => names.push(name),
                None => debug!("not sharing {:?}: not a shareable name", entry.file_name()),
            }
        }
        let next = AtomicUsize::new(0);
        let workers = thread::available_parallelism().map_or(1, |n| n.get()).min(names.len().max(1));
        let mut files: Vec<FileInfo> = thread::scope(|scope| {
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    scope.spawn(|| {
                        let mut found = Vec::new();
                        while let Some(name) = names.get(next.fetch_add(1, Ordering::Relaxed)) {
                            match self.open_settled(name, settle) {
                                Ok(open) => found.push(open.info),
                                Err(OpenError::Unsettled) => drop(unsettled.fetch_add(1, Ordering::Relaxed)),
                                Err(e) => debug!("not sharing {name:?}: {e}"),
                            }
                        }
                        found
                    })
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().expect("opening files does not panic")).collect()
        });
        files.sort_by(|a, b| a.name.cmp(&b.name));
        let mut cache = self.hashes.lock().unwrap_or_else(PoisonError::into_inner);
        let before = cache.map.len();
        cache.map.retain(|name, _| files.binary_search_by(|f| f.name.cmp(name)).is_ok());
        if cache.dirty || cache.map.len() != before {
            cache.dirty = true;
            if let Err(e) = cache.save(self) {
                // A read-only folder can still be shared; it is just hashed on every start.
                debug!("cannot save the hash cache in {}: {e}", self.root.display());
            }
        }
        Ok((files, unsettled.into_inner()))
    }

    /// Opens a shared file for reading, with its size and SHA-256 (from the cache when
    /// the file is unchanged). Refuses anything that is not a regular file whose real
    /// location is directly in the folder.
    pub fn open(&self, name: &ShareName) -> Result<OpenFile, OpenError> {
        self.open_settled(name, None)
    }

    /// [`SharedFolder::open`], refusing with [`OpenError::Unsettled`] a file modified
    /// less than `settle` ago (checked before hashing it).
    fn open_settled(&self, name: &ShareName, settle: Option<Duration>) -> Result<OpenFile, OpenError> {
        let path = self.root.join(name);
        let mut options = OpenOptions::new();
        options.read(true);
        #[cfg(unix)]
        {
            // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer
            // forever. It changes nothing for the regular files we go on to read.
            use std::os::unix::fs::OpenOptionsExt;
            let flags = rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::NOCTTY;
            options.custom_flags(flags.bits() as i32);
        }
        let mut file = options.open(&path)?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(OpenError::NotRegular);
        }
        if self.real_parent(&file, &path)? != self.root {
            return Err(OpenError::Outside);
        }
        let stamp = Stamp::of(&meta);
        let cached = self.cached(name, stamp);
        // A file whose hash we already hold for this very stamp is complete (a verified
        // download, say), however recent.
        if let (None, Some(settle), Some(modified)) = (cached, settle, stamp.modified)
            && modified.elapsed().is_ok_and(|age| age < settle)
        {
            return Err(OpenError::Unsettled);
        }
        let sha256 = match cached {
            Some(sha256) => sha256,
            None => {
                let sha256 = hash(&mut file)?;
                file.rewind()?;
                self.remember(name, stamp, sha256);
                sha256
            }
        };
        Ok(OpenFile { file, info: FileInfo { name: name.clone(), size: stamp.size, sha256 } })
    }

    /// The directory that really holds the opened `file`. On Linux this is read from
    /// the open descriptor itself, so it is where the bytes we will read live, whatever
    /// happened to `path` since the open.
    fn real_parent(&self, file: &File, path: &Path) -> io::Result<PathBuf> {
        #[cfg(target_os = "linux")]
        let real = {
            use std::os::fd::AsRawFd;
            let _ = path;
            fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))?
        };
        #[cfg(not(target_os = "linux"))]
        let real = {
            let _ = file;
            fs::canonicalize(path)?
        };
        Ok(real.parent().map(Path::to_path_buf).unwrap_or_default())
    }

    fn cached(&self, name: &ShareName, stamp: Stamp) -> Option<wire::Sha256> {
        let cache = self.hashes.lock().unwrap_or_else(PoisonError::into_inner);
        cache.map.get(name).filter(|(s, _)| *s == stamp).map(|(_, sha)| *sha)
    }

    fn remember(&self, name: &ShareName, stamp: Stamp, sha256: wire::Sha256) {
        let mut cache = self.hashes.lock().unwrap_or_else(PoisonError::into_inner);
        cache.map.insert(name.clone(), (stamp, sha256));
        cache.dirty = true;
    }

    /// Bytes that can still be written in the folder's filesystem (by us, not only by
    /// root), so that a download that cannot fit is refused before it starts.
    pub fn free_space(&self) -> io::Result<u64> {
        let stat = rustix::fs::statvfs(&self.root)?;
        Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
    }

    /// Is there anything (file, directory, dangling symlink) called `name` in the folder?
    pub fn contains(&self, name: &ShareName) -> bool {
        fs::symlink_metadata(self.root.join(name)).is_ok()
    }

    /// Deletes the file `name` from the folder. A symlink is removed, never its target;
    /// a directory is refused.
    pub fn delete(&self, name: &ShareName) -> Result<(), OpenError> {
        let path = self.root.join(name);
        if fs::symlink_metadata(&path)?.is_dir() {
            return Err(OpenError::NotRegular);
        }
        fs::remove_file(&path)?;
        let mut cache = self.hashes.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.map.remove(name).is_some() {
            cache.dirty = true;
        }
        Ok(())
    }

    /// Creates a new, empty temporary file in the folder for a download. It is removed
    /// when dropped unless [`TempFile::commit`] gave it its final name.
    pub fn create_temp(&self) -> io::Result<TempFile> {
        let suffix: u64 = rand::rng().random();
        let path = self.root.join(format!("{TEMP_PREFIX}{suffix:016x}"));
        let file = OpenOptions::new().write(true).create_new(true).open(&path)?;
        Ok(TempFile { path, file: Some(file), partial: None })
    }

    /// The partial download of the content with hash `sha256`, kept in the folder as
    /// `.peerdex-part-<sha256 in hex>` so that an interrupted download can be resumed,
    /// and only with the same content (see [`super::partial`]). Created empty if there
    /// is none. Returns it, positioned at its end, with the number of bytes it already
    /// holds; or `None` if another download in this process is writing it now.
    pub fn partial(&self, sha256: &wire::Sha256) -> io::Result<Option<(TempFile, u64)>> {
        if !self.partials.lock().unwrap_or_else(PoisonError::into_inner).insert(*sha256) {
            return Ok(None);
        }
        let claim = Claim { partials: Arc::clone(&self.partials), sha256: *sha256 };
        let path = partial::data_path(&self.root, sha256);
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true);
        #[cfg(unix)]
        {
            // Never follow a symlink planted under this name: we would write through it.
            use std::os::unix::fs::OpenOptionsExt;
            options.custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32);
        }
        let mut file = options.open(&path)?;
        if !file.metadata()?.is_file() {
            return Err(io::Error::other(format!("{} is not a regular file", path.display())));
        }
        let have = file.seek(SeekFrom::End(0))?;
        let sources = partial::load_sources(&path, have);
        let state = PartialState { _claim: claim, sources };
        Ok(Some((TempFile { path, file: Some(file), partial: Some(state) }, have)))
    }

    /// Deletes the oldest kept partial downloads not being written now, until `needed`
    /// bytes are freed or none is left. Returns (bytes freed, partials deleted).
    pub fn evict_partials(&self, needed: u64) -> io::Result<(u64, usize)> {
        let in_use = self.partials.lock().unwrap_or_else(PoisonError::into_inner).clone();
        partial::evict(&self.root, needed, &in_use)
    }
}

/// A partial download being written, so that no other download in this process writes
/// the same one; released when its [`TempFile`] goes.
#[derive(Debug)]
struct Claim {
    partials: Arc<Mutex<HashSet<wire::Sha256>>>,
    sha256: wire::Sha256,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.partials.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.sha256);
    }
}

/// A download in progress: a temporary file in the shared folder, never listed or
/// served (its name starts with [`TEMP_PREFIX`]), removed on drop unless committed.
#[derive(Debug)]
pub struct TempFile {
    path: PathBuf,
    file: Option<File>,
    /// For a partial download: its claim and the sources of its bytes.
    partial: Option<PartialState>,
}

/// What a [`TempFile`] that is a partial download also holds.
#[derive(Debug)]
struct PartialState {
    /// Its place in the folder's set of partials in use, given back when it goes.
    _claim: Claim,
    /// Which source sent which bytes, covering the file from byte 0.
    sources: Vec<Contribution>,
}

impl TempFile {
    /// The open file, for writing.
    pub fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("the file is only taken by commit")
    }

    /// Where the bytes of a partial download came from, in order from byte 0.
    pub fn sources(&self) -> &[Contribution] {
        self.partial.as_ref().map_or(&[], |p| &p.sources)
    }

    /// Records that `from` sent the bytes `start..end` (a partial download).
    pub fn record_source(&mut self, from: SocketAddr, start: u64, end: u64) {
        if let Some(p) = &mut self.partial {
            partial::record(&mut p.sources, from, start, end);
        }
    }

    /// Leaves the file in the folder (a partial download, to be resumed later), with
    /// the list of its sources, unless it is empty (nothing worth keeping) or not a
    /// partial (a temporary under a random name could never be resumed): then it goes.
    pub fn keep(mut self) {
        let len = self.file.as_ref().and_then(|f| f.metadata().ok()).map_or(0, |m| m.len());
        if len > 0 && self.partial.is_some() {
            if let Some(p) = &self.partial
                && let Err(e) = partial::save_sources(&self.path, &p.sources)
            {
                debug!("cannot record the sources of {}: {e}", self.path.display());
            }
            self.path = PathBuf::new();
        }
    }

    /// Empties the file (a partial download that cannot be continued).
    pub fn truncate(&mut self) -> io::Result<()> {
        if let Some(p) = &mut self.partial {
            p.sources.clear();
        }
        let file = self.file();
        file.set_len(0)?;
        file.rewind()?;
        Ok(())
    }

    /// Closes the file and returns its stamp, for the hash cache.
    fn close(&mut self) -> io::Result<Stamp> {
        let mut file = self.file.take().expect("the temporary is closed once");
        file.flush()?;
        Ok(Stamp::of(&file.metadata()?))
    }

    /// Gives the verified temporary file its final name in `folder` and records its
    /// hash, so it is not hashed again when it is shared. Never replaces an existing
    /// file: if `name` exists, fails with `AlreadyExists` and the temporary is removed.
    pub fn commit(mut self, folder: &SharedFolder, name: &ShareName, sha256: wire::Sha256) -> io::Result<()> {
        let stamp = self.close()?;
        let target = folder.root.join(name);
        no_replace_rename(&self.path, &target)?;
        if self.partial.is_some() {
            // The data is renamed away; this removes the list of its sources.
            let _ = partial::remove(&self.path);
        }
        self.path = PathBuf::new(); // nothing left to remove on drop
        folder.remember(name, stamp, sha256);
        Ok(())
    }

    /// Renames the temporary file over `target`, replacing it: for peerdex's own files
    /// only, never for a shared file (see [`TempFile::commit`]).
    fn replace(mut self, target: &Path) -> io::Result<()> {
        self.close()?;
        fs::rename(&self.path, target)?;
        self.path = PathBuf::new();
        Ok(())
    }
}

/// Renames `from` to `to` unless `to` exists (`AlreadyExists`), atomically: a plain
/// rename would replace a file that appeared meanwhile.
///
/// Linux's `renameat2(RENAME_NOREPLACE)` does it in one step. Elsewhere, or on a
/// filesystem without it, a hard link (which also fails if the name exists) and an
/// unlink of the old name do the same in two; on ext4 that unlink is the slowest part
/// of a small download (about 0.3 ms), hence the first choice.
fn no_replace_rename(from: &Path, to: &Path) -> io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use rustix::fs::{CWD, RenameFlags, renameat_with};
        use rustix::io::Errno;
        match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
            Ok(()) => return Ok(()),
            Err(Errno::EXIST) => return Err(io::ErrorKind::AlreadyExists.into()),
            Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => {} // not supported here
            Err(e) => return Err(e.into()),
        }
    }
    match fs::hard_link(from, to) {
        Ok(()) => fs::remove_file(from),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(e),
        // No hard links either (FAT, some network filesystems): check, then rename.
        Err(_) if fs::symlink_metadata(to).is_ok() => Err(io::ErrorKind::AlreadyExists.into()),
        Err(_) => fs::rename(from, to),
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        // Unless it was given a name or kept, the temporary is removed, with the list of
        // its sources.
        if !self.path.as_os_str().is_empty() {
            let _ = partial::remove(&self.path);
        }
    }
}

/// SHA-256 of everything `r` yields.
pub fn hash(r: &mut impl Read) -> io::Result<wire::Sha256> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; HASH_BUF_LEN];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok(hasher.finalize().into()),
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> ShareName {
        ShareName::parse(s).unwrap()
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
        let names: Vec<String> = folder.scan().unwrap().into_iter().map(|f| f.name.to_string()).collect();
        #[cfg(unix)]
        assert_eq!(names, ["a b.txt", "empty", "link-in"]);
        let a = folder.open(&name("a b.txt")).unwrap();
        assert_eq!(a.info.size, 5);
        assert_eq!(
            hex::encode(a.info.sha256),
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
        let first = folder.open(&name("f")).unwrap().info.sha256;
        fs::write(dir.path().join("f"), b"two!").unwrap();
        let second = folder.open(&name("f")).unwrap().info;
        assert_ne!(first, second.sha256);
        assert_eq!(second.size, 4);
    }

    #[test]
    fn commit_never_replaces_and_temporaries_vanish() {
        let dir = tempfile::tempdir().unwrap();
        let folder = SharedFolder::new(dir.path()).unwrap();
        fs::write(dir.path().join("taken"), b"original").unwrap();

        let mut t = folder.create_temp().unwrap();
        t.file().write_all(b"new").unwrap();
        let err = t.commit(&folder, &name("taken"), [0; 32]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(dir.path().join("taken")).unwrap(), b"original");

        let mut t = folder.create_temp().unwrap();
        t.file().write_all(b"new").unwrap();
        t.commit(&folder, &name("fresh"), [0; 32]).unwrap();
        assert_eq!(fs::read(dir.path().join("fresh")).unwrap(), b"new");

        drop(folder.create_temp().unwrap());
        let left: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left.len(), 2, "only taken and fresh remain: {left:?}");
    }

    #[test]
    fn hashes_survive_a_restart_but_not_a_change() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("kept"), b"same").unwrap();
        fs::write(dir.path().join("changed"), b"before").unwrap();
        let first = SharedFolder::new(dir.path()).unwrap().scan().unwrap();
        assert_eq!(first.len(), 2, "the cache file itself is not shared");

        // Plant a recognisable hash for "kept" in the cache: if a new instance reports
        // it, the cache was used instead of hashing.
        let cache = dir.path().join(CACHE_FILE);
        let text = fs::read_to_string(&cache).unwrap();
        assert!(text.starts_with(CACHE_HEADER));
        let real = hex::encode(first[1].sha256);
        assert_eq!(first[1].name.as_str(), "kept");
        fs::write(&cache, text.replace(&real, &"ab".repeat(32))).unwrap();
        fs::write(dir.path().join("changed"), b"after, longer").unwrap();

        let second = SharedFolder::new(dir.path()).unwrap().scan().unwrap();
        assert_eq!(second[1].sha256, [0xab; 32], "unchanged file: hash from the cache");
        let fresh = hash(&mut &b"after, longer"[..]).unwrap();
        assert_eq!(second[0].sha256, fresh, "changed file: hashed again");

        // A damaged cache is ignored, not trusted.
        fs::write(&cache, "garbage\n").unwrap();
        let third = SharedFolder::new(dir.path()).unwrap().scan().unwrap();
        assert_eq!(third[1].sha256, first[1].sha256);
    }
}
