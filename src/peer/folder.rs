//! The shared folder: which files it holds, their hashes, and the only ways the peer
//! reads or writes inside it.
//!
//! A file is shared if and only if [`SharedFolder::open`] accepts it: a regular file
//! whose real location is directly inside the folder. Listing and serving go through
//! the same check, so nothing is ever listed that would not be served, or served that
//! is not listed. The check is made on the opened file itself, not only on the path,
//! so swapping a file for a symlink between a check and the open cannot escape.

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use log::debug;
use rand::RngExt;
use sha2::{Digest, Sha256};

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
    /// Any other I/O error (permissions, ...).
    Io(io::Error),
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::NotFound => f.write_str("no such file in the shared folder"),
            OpenError::NotRegular => f.write_str("not a regular file"),
            OpenError::Outside => f.write_str("it resolves outside the shared folder"),
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
    /// is hashed once, not on every scan or request.
    hashes: Mutex<HashMap<ShareName, (Stamp, wire::Sha256)>>,
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
        Ok(SharedFolder { root, hashes: Mutex::new(HashMap::new()) })
    }

    /// The folder's canonical path.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every shared file: the regular files directly inside the folder that
    /// [`SharedFolder::open`] accepts, in name order. Names that cannot be shared (not
    /// UTF-8, control characters, download temporaries) are skipped.
    pub fn scan(&self) -> io::Result<Vec<FileInfo>> {
        let mut files = Vec::new();
        for entry in fs::read_dir(&self.root)? {
            let entry = entry?;
            let Some(name) = entry.file_name().to_str().and_then(|n| ShareName::parse(n).ok()) else {
                debug!("not sharing {:?}: not a shareable name", entry.file_name());
                continue;
            };
            match self.open(&name) {
                Ok(open) => files.push(open.info),
                Err(e) => debug!("not sharing {name:?}: {e}"),
            }
        }
        files.sort_by(|a, b| a.name.cmp(&b.name));
        let mut hashes = self.hashes.lock().unwrap_or_else(PoisonError::into_inner);
        hashes.retain(|name, _| files.binary_search_by(|f| f.name.cmp(name)).is_ok());
        Ok(files)
    }

    /// Opens a shared file for reading, with its size and SHA-256 (from the cache when
    /// the file is unchanged). Refuses anything that is not a regular file whose real
    /// location is directly in the folder.
    pub fn open(&self, name: &ShareName) -> Result<OpenFile, OpenError> {
        let path = self.root.join(name);
        let mut options = OpenOptions::new();
        options.read(true);
        #[cfg(unix)]
        {
            // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer
            // forever. It changes nothing for the regular files we go on to read.
            use std::os::unix::fs::OpenOptionsExt;
            options.custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY);
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
        let hashes = self.hashes.lock().unwrap_or_else(PoisonError::into_inner);
        hashes.get(name).filter(|(s, _)| *s == stamp).map(|(_, sha)| *sha)
    }

    fn remember(&self, name: &ShareName, stamp: Stamp, sha256: wire::Sha256) {
        let mut hashes = self.hashes.lock().unwrap_or_else(PoisonError::into_inner);
        hashes.insert(name.clone(), (stamp, sha256));
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
        self.hashes.lock().unwrap_or_else(PoisonError::into_inner).remove(name);
        Ok(())
    }

    /// Creates a new, empty temporary file in the folder for a download. It is removed
    /// when dropped unless [`TempFile::commit`] gave it its final name.
    pub fn create_temp(&self) -> io::Result<TempFile> {
        let suffix: u64 = rand::rng().random();
        let path = self.root.join(format!("{TEMP_PREFIX}{suffix:016x}"));
        let file = OpenOptions::new().write(true).create_new(true).open(&path)?;
        Ok(TempFile { path, file: Some(file) })
    }
}

/// A download in progress: a temporary file in the shared folder, never listed or
/// served (its name starts with [`TEMP_PREFIX`]), removed on drop unless committed.
#[derive(Debug)]
pub struct TempFile {
    path: PathBuf,
    file: Option<File>,
}

impl TempFile {
    /// The open file, for writing.
    pub fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("the file is only taken by commit")
    }

    /// Gives the verified temporary file its final name in `folder` and records its
    /// hash, so it is not hashed again when it is shared. Never replaces an existing
    /// file: if `name` exists, fails with `AlreadyExists` and the temporary is removed.
    pub fn commit(mut self, folder: &SharedFolder, name: &ShareName, sha256: wire::Sha256) -> io::Result<()> {
        let mut file = self.file.take().expect("commit is called once");
        file.flush()?;
        let stamp = Stamp::of(&file.metadata()?);
        drop(file);
        let target = folder.root.join(name);
        // A hard link is created atomically and fails if the name exists, which a
        // rename would silently replace. Filesystems without hard links fall back to
        // check-then-rename.
        match fs::hard_link(&self.path, &target) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(e),
            Err(_) if fs::symlink_metadata(&target).is_ok() => {
                return Err(io::ErrorKind::AlreadyExists.into());
            }
            Err(_) => fs::rename(&self.path, &target)?,
        }
        folder.remember(name, stamp, sha256);
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        // After a successful hard link this removes the temporary name only; after a
        // rename there is nothing left to remove.
        let _ = fs::remove_file(&self.path);
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
}
