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

/// Why a folder on a path could not be opened.
enum Blocked {
    /// Nothing of that name.
    Missing,
    /// A symlink: never followed.
    Symlink,
    /// Something that is not a folder.
    File,
    Io(io::Error),
}

/// Opens the folder `part` in `dir`, not following a symlink. (Linux answers
/// `O_NOFOLLOW | O_DIRECTORY` on a symlink with `ENOTDIR`, as for a file, or `ELOOP`:
/// a second look tells them apart, and whatever it sees, nothing was opened.)
fn open_folder(dir: &OwnedFd, part: &str) -> Result<OwnedFd, Blocked> {
    match openat(dir, part, DIR, Mode::empty()) {
        Ok(fd) => Ok(fd),
        Err(Errno::NOENT) => Err(Blocked::Missing),
        Err(Errno::LOOP) => Err(Blocked::Symlink),
        Err(Errno::NOTDIR) => match rustix::fs::statat(dir, part, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Symlink => {
                Err(Blocked::Symlink)
            }
            _ => Err(Blocked::File),
        },
        Err(e) => Err(Blocked::Io(e.into())),
    }
}

impl Blocked {
    /// What stops a download at the folder `so_far`.
    fn why(self, so_far: &str) -> String {
        match self {
            Blocked::Missing => format!("the folder {so_far:?} vanished"),
            Blocked::Symlink => format!("{so_far:?} is a symlink, and downloads never go through one"),
            Blocked::File => format!("{so_far:?} is a file, not a folder"),
            Blocked::Io(e) => format!("cannot open the folder {so_far:?}: {e}"),
        }
    }
}

/// The folder `root` itself.
pub(super) fn open_root(root: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(root, OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?)
}

/// Goes down to the folder that holds `name`, a folder at a time, never through a
/// symlink; with `make`, making the folders that are missing. `Ok(None)`: a folder
/// is missing (and was not to be made). On an obstacle, it and the path up to it.
fn descend(root: &Path, name: &SharePath, make: bool) -> Result<Option<OwnedFd>, (Blocked, String)> {
    let mut dir = open_root(root).map_err(|e| (Blocked::Io(e), String::new()))?;
    let mut so_far = String::new();
    for part in name.folders() {
        if !so_far.is_empty() {
            so_far.push('/');
        }
        so_far.push_str(part);
        let next = match open_folder(&dir, part) {
            Err(Blocked::Missing) if !make => return Ok(None),
            Err(Blocked::Missing) => match rustix::fs::mkdirat(&dir, part, Mode::from_raw_mode(0o755)) {
                // Made by someone else meanwhile: open what is there, with the same checks.
                Ok(()) | Err(Errno::EXIST) => open_folder(&dir, part),
                Err(e) => Err(Blocked::Io(e.into())),
            },
            other => other,
        };
        dir = next.map_err(|b| (b, so_far.clone()))?;
    }
    Ok(Some(dir))
}

/// The names in the folder `folder` (the shared folder itself with `None`), reached
/// as a download would be, never through a symlink; each with whether it is a folder
/// (a symlink is not). Nothing if the folder is missing or cannot be reached.
pub(super) fn entries(root: &Path, folder: Option<&SharePath>) -> io::Result<Vec<(String, bool)>> {
    let dir = match folder {
        None => open_root(root)?,
        Some(folder) => {
            // A name inside it: its folders are `folder`'s path.
            let Ok(inside) = SharePath::join(folder, "x") else { return Ok(Vec::new()) };
            match descend(root, &inside, false) {
                Ok(Some(dir)) => dir,
                Err((Blocked::Io(e), _)) => return Err(e),
                Ok(None) | Err(_) => return Ok(Vec::new()),
            }
        }
    };
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(&dir)? {
        let entry = entry?;
        let Ok(name) = entry.file_name().to_str() else { continue };
        if name == "." || name == ".." {
            continue;
        }
        let is_dir = match entry.file_type() {
            rustix::fs::FileType::Directory => true,
            rustix::fs::FileType::Unknown => rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW)
                .is_ok_and(|st| {
                    rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory
                }),
            _ => false,
        };
        names.push((name.to_owned(), is_dir));
    }
    Ok(names)
}

/// The folder that holds `name`, opened without following a symlink on the way.
pub(super) fn open_parent(root: &Path, name: &SharePath) -> Result<OwnedFd, OpenError> {
    match descend(root, name, false) {
        Ok(Some(dir)) => Ok(dir),
        Ok(None) | Err((Blocked::Missing | Blocked::File, _)) => Err(OpenError::NotFound),
        Err((Blocked::Symlink, _)) => Err(OpenError::ThroughSymlink),
        Err((Blocked::Io(e), _)) => Err(e.into()),
    }
}

/// The folder that is to hold `name`, made where missing (folders on the way as well),
/// never through a symlink or over a file.
pub(super) fn make_parent(root: &Path, name: &SharePath) -> io::Result<OwnedFd> {
    match descend(root, name, true) {
        Ok(Some(dir)) => Ok(dir),
        Ok(None) => unreachable!("missing folders are made"),
        Err((b, so_far)) => Err(io::Error::other(b.why(&so_far))),
    }
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

/// Can a file be put at `name`: is nothing (a file, a folder, a dangling symlink)
/// there, and is nothing in the way of the folders it needs (a symlink, a file)?
/// Missing folders are no obstacle: [`make_parent`] makes them.
pub(super) fn vacant(root: &Path, name: &SharePath) -> Result<(), String> {
    let dir = match descend(root, name, false) {
        Ok(Some(dir)) => dir,
        Ok(None) => return Ok(()),
        Err((b, so_far)) => return Err(b.why(&so_far)),
    };
    match rustix::fs::statat(&dir, name.file_name(), AtFlags::SYMLINK_NOFOLLOW) {
        Err(Errno::NOENT) => Ok(()),
        _ => Err("a file of that name is already in the shared folder (delete it first)".into()),
    }
}

/// Can files be put under the folder `folder`: is no symlink or file where it, or a
/// folder above it, should be? Missing folders are no obstacle.
pub(super) fn room_under(root: &Path, folder: &SharePath) -> Result<(), String> {
    // A name inside it: its folders are `folder`'s path. (A folder too deep for one
    // more part has no file under it to download.)
    let Ok(inside) = SharePath::join(folder, "x") else { return Ok(()) };
    match descend(root, &inside, false) {
        Ok(_) => Ok(()),
        Err((b, so_far)) => Err(b.why(&so_far)),
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
