//! Folder watching: while the peer is registered, changes to its folder reach the
//! index by themselves, within about a second.
//!
//! A thread waits for the operating system's change events on the folder and every
//! folder under it (`notify`: inotify on Linux, one watch per folder, new folders
//! watched as they appear; a folder created, moved in or deleted is picked up whole
//! by the rescan it causes). Events are debounced: after the first, the thread waits until
//! the folder has been quiet for [`DEBOUNCE`], then the peer rescans and sends its
//! list. Files modified less than [`SETTLE`] ago are left out of that list (and not
//! hashed): a copy in progress keeps touching its file, so it is advertised only once
//! it has been still for a moment, and the folder is looked at again after [`SETTLE`].
//! Download temporaries and the hash cache (names starting with `.peerdex-`) cause no
//! rescans at all, nor do mere reads: a rescan opens and reads files, and inotify
//! reports those opens, so a watcher that rescanned on them would rescan forever.
//!
//! If the folder cannot be watched (inotify limits, some network filesystems), the
//! thread says so once on stderr and rescans every [`POLL_INTERVAL`] instead.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{Event, RecursiveMode, Watcher};

use crate::name::RESERVED_PREFIX;

/// Quiet time after the last event before the folder is rescanned.
pub const DEBOUNCE: Duration = Duration::from_millis(300);

/// A file modified less recently than this is taken to be fully written. A copy that
/// stalls for longer than this (a slow network share) can still be advertised half
/// done; downloaders would then see a hash mismatch and try another peer.
pub const SETTLE: Duration = Duration::from_secs(1);

/// Set in the environment, makes the peer act as if the folder could not be watched.
pub const NO_WATCH_VAR: &str = "PEERDEX_NO_INOTIFY";

/// Rescan interval when the folder cannot be watched.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// Watches `folder` for as long as the process lives, calling `sync` after each burst
/// of changes (and every [`POLL_INTERVAL`] if watching is impossible). `sync` returns
/// whether some file was left out as still being written, in which case it is called
/// again after [`SETTLE`].
///
/// A folder deleted, moved away or replaced takes its watches with it. While nothing
/// is at its path, `sync` is called every [`POLL_INTERVAL`] (it finds the folder gone);
/// once a folder is there again, whatever its origin, it is watched and `sync`ed.
pub fn watch(folder: &Path, mut sync: impl FnMut() -> bool) {
    let (tx, events) = mpsc::channel();
    // The fallback must work where watching cannot; this lets the tests (and anyone
    // curious) take it on a machine where watching works.
    let watcher = match std::env::var_os(NO_WATCH_VAR) {
        Some(_) => Err(notify::Error::generic(&format!("{NO_WATCH_VAR} is set"))),
        None => Watching::start(folder, &tx),
    };
    let mut watching = match watcher {
        Ok(w) => Some(w),
        Err(e) => return poll(folder, &e, sync),
    };
    let mut again_after: Option<Duration> = None;
    loop {
        // Wait for a change (or for unsettled files to settle, or, while the folder is
        // gone, for the next look at its path). `tx` is held here: never disconnected.
        let wait = match &watching {
            Some(_) => again_after,
            None => Some(again_after.unwrap_or(POLL_INTERVAL).min(POLL_INTERVAL)),
        };
        match wait {
            Some(wait) => drop(events.recv_timeout(wait)),
            None => drop(events.recv()),
        }
        // Debounce: wait for the burst to end.
        while events.recv_timeout(DEBOUNCE).is_ok() {}
        // Watch what is at the folder's path now, before looking at it, so that no
        // change after the look goes unseen.
        let there = identity(folder);
        if there.is_some() && there != watching.as_ref().and_then(|w| w.folder) {
            watching = match Watching::start(folder, &tx) {
                Ok(w) => Some(w),
                Err(e) => return poll(folder, &e, sync),
            };
        } else if there.is_none() {
            watching = None;
        }
        again_after = sync().then_some(SETTLE);
    }
}

/// Where watching is impossible: says so once, then `sync`s every [`POLL_INTERVAL`].
fn poll(folder: &Path, e: &notify::Error, mut sync: impl FnMut() -> bool) {
    crate::errln!(
        "note: cannot watch {} for changes ({e}); rescanning it every {} s instead",
        folder.display(),
        POLL_INTERVAL.as_secs()
    );
    loop {
        thread::sleep(POLL_INTERVAL);
        sync();
    }
}

/// Which folder is at a path: its device and inode, or `None` if no folder is there.
fn identity(folder: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(folder).ok().filter(|m| m.is_dir()).map(|m| (m.dev(), m.ino()))
}

/// A folder being watched: the watcher, and which folder it watches.
struct Watching {
    _watcher: notify::RecommendedWatcher,
    folder: Option<(u64, u64)>,
}

impl Watching {
    /// Watches the folder at `folder` and every folder under it, sending on `tx` each
    /// burst's events that may change what is shared.
    fn start(folder: &Path, tx: &mpsc::Sender<()>) -> notify::Result<Watching> {
        // Taken before the watch is added: if the folder is replaced in between, the
        // next look finds it changed and watches again.
        let there = identity(folder);
        let tx = tx.clone();
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<Event>| {
            let ours = |e: &Event| {
                !e.paths.is_empty()
                    && e.paths.iter().all(|p| {
                        p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(RESERVED_PREFIX))
                    })
            };
            // Opening, reading or closing a file without writing changes nothing we share.
            let read_only = |e: &Event| matches!(e.kind, EventKind::Access(kind) if kind != AccessKind::Close(AccessMode::Write));
            match event {
                Ok(e) if ours(&e) || read_only(&e) => {}
                // An error (the queue overflowed, say) means changes may have been
                // missed: rescan to be safe.
                _ => drop(tx.send(())),
            }
        })?;
        watcher.watch(folder, RecursiveMode::Recursive)?;
        Ok(Watching { _watcher: watcher, folder: there })
    }
}
