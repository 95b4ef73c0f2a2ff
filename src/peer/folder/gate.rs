//! The gate: how a [`SharePath`] becomes an open file or folder inside the shared
//! folder, and nothing else.
//!
//! A path is opened a component at a time from a descriptor of the folder, each
//! folder on the way with `O_NOFOLLOW | O_DIRECTORY` (`openat`), so a folder on the
//! path that is a symlink is refused, whatever it points to, even if it was swapped in
//! a moment ago: there is no second look at the path for a swap to slip between. Only
//! the last component may be a symlink, to a file; the file opened is then checked
//! where it really is (its descriptor's path in `/proc/self/fd`), which must be
//! inside the folder, under names that could be shared.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags, openat};
use rustix::io::Errno;

use super::OpenError;
use crate::name::{SharePath, check_component};

const DIR: OFlags = OFlags::DIRECTORY.union(OFlags::NOFOLLOW).union(OFlags::RDONLY).union(OFlags::CLOEXEC);

/// The folder `root` itself.
pub(super) fn open_root(root: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(root, OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?)
}

/// The folder that holds `name`, opened without following a symlink on the way.
pub(super) fn open_parent(root: &Path, name: &SharePath) -> Result<OwnedFd, OpenError> {
    let mut dir = open_root(root)?;
    for part in name.folders() {
        dir = match openat(&dir, part, DIR, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::LOOP) => return Err(OpenError::ThroughSymlink),
            Err(Errno::NOENT | Errno::NOTDIR) => return Err(OpenError::NotFound),
            Err(e) => return Err(io::Error::from(e).into()),
        };
    }
    Ok(dir)
}

/// The folder that is to hold `name`, made where missing (folders on the way as well),
/// never through a symlink or over a file.
pub(super) fn make_parent(root: &Path, name: &SharePath) -> io::Result<OwnedFd> {
    let mut dir = open_root(root)?;
    let mut so_far = String::new();
    for part in name.folders() {
        if !so_far.is_empty() {
            so_far.push('/');
        }
        so_far.push_str(part);
        let next = match openat(&dir, part, DIR, Mode::empty()) {
            Err(Errno::NOENT) => match rustix::fs::mkdirat(&dir, part, Mode::from_raw_mode(0o755)) {
                // Made by someone else meanwhile: open what is there, with the same checks.
                Ok(()) | Err(Errno::EXIST) => openat(&dir, part, DIR, Mode::empty()),
                Err(e) => Err(e),
            },
            other => other,
        };
        dir = next.map_err(|e| match e {
            Errno::LOOP => {
                io::Error::other(format!("{so_far:?} is a symlink, and downloads never go through one"))
            }
            Errno::NOTDIR => io::Error::other(format!("{so_far:?} is a file, not a folder")),
            e => io::Error::other(format!("cannot make the folder {so_far:?}: {}", io::Error::from(e))),
        })?;
    }
    Ok(dir)
}

/// Opens `name` for reading (a final symlink is followed; its target is checked by
/// [`inside`]). `O_NONBLOCK`: opening a FIFO for reading would otherwise wait for a
/// writer forever; it changes nothing for the regular files we go on to read.
pub(super) fn open_file(root: &Path, name: &SharePath) -> Result<File, OpenError> {
    let dir = open_parent(root, name)?;
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    let fd = openat(&dir, name.file_name(), flags, Mode::empty()).map_err(io::Error::from)?;
    Ok(File::from(fd))
}

/// Is anything (a file, a folder, a dangling symlink) at `name`? A folder on the way
/// that is a symlink counts as something in the way.
pub(super) fn exists(root: &Path, name: &SharePath) -> bool {
    match open_parent(root, name) {
        Ok(dir) => rustix::fs::statat(&dir, name.file_name(), AtFlags::SYMLINK_NOFOLLOW).is_ok(),
        Err(OpenError::NotFound) => false,
        Err(_) => true,
    }
}

/// Removes the file (or symlink, never its target) `name`; a folder is refused.
pub(super) fn remove(root: &Path, name: &SharePath) -> Result<(), OpenError> {
    let dir = open_parent(root, name)?;
    let stat =
        rustix::fs::statat(&dir, name.file_name(), AtFlags::SYMLINK_NOFOLLOW).map_err(io::Error::from)?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) == rustix::fs::FileType::Directory {
        return Err(OpenError::NotRegular);
    }
    rustix::fs::unlinkat(&dir, name.file_name(), AtFlags::empty()).map_err(io::Error::from)?;
    Ok(())
}

/// A path naming `leaf` in the open folder `dir` that does not walk any path again:
/// on Linux, through `/proc/self/fd`, whose entry is the very folder opened. (Valid
/// while `dir` is open.)
pub(super) fn in_dir(dir: &impl AsFd, leaf: &str) -> PathBuf {
    use std::os::fd::AsRawFd;
    PathBuf::from(format!("/proc/self/fd/{}/{leaf}", dir.as_fd().as_raw_fd()))
}

/// Checks that the opened `file` really is inside the folder `root`, under a path
/// whose every component could be shared (not peerdex's own files, say).
pub(super) fn inside(root: &Path, file: &File) -> Result<(), OpenError> {
    let real = real_path(file)?;
    let rel = real.strip_prefix(root).map_err(|_| OpenError::Outside)?;
    let ok = rel.components().count() > 0
        && rel.components().all(|c| c.as_os_str().to_str().is_some_and(|s| check_component(s).is_ok()));
    if ok { Ok(()) } else { Err(OpenError::Outside) }
}

/// Where the opened `file` is: read from its descriptor, so it is where the bytes we
/// will read live, whatever happened to any path since the open.
fn real_path(file: &File) -> io::Result<PathBuf> {
    use std::os::fd::AsRawFd;
    std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
}
