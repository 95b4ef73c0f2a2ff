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

use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError};
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
pub fn watch(folder: &Path, mut sync: impl FnMut() -> bool) {
    let (tx, events) = mpsc::channel();
    let watcher = notify::recommended_watcher(move |event: notify::Result<Event>| {
        let ours = |e: &Event| {
            !e.paths.is_empty()
                && e.paths.iter().all(|p| {
                    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(RESERVED_PREFIX))
                })
        };
        // Opening, reading or closing a file without writing changes nothing we share.
        let read_only = |e: &Event| {
            matches!(e.kind, EventKind::Access(kind) if kind != AccessKind::Close(AccessMode::Write))
        };
        match event {
            Ok(e) if ours(&e) || read_only(&e) => {}
            // An error (the queue overflowed, say) means changes may have been missed:
            // rescan to be safe.
            _ => drop(tx.send(())),
        }
    })
    .and_then(|mut w| w.watch(folder, RecursiveMode::Recursive).map(|()| w));
    // The fallback must work where watching cannot; this lets the tests (and anyone
    // curious) take it on a machine where watching works.
    let watcher = match std::env::var_os(NO_WATCH_VAR) {
        Some(_) => Err(notify::Error::generic(&format!("{NO_WATCH_VAR} is set"))),
        None => watcher,
    };
    let _watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
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
    };
    let mut again_after: Option<Duration> = None;
    loop {
        // Wait for a change (or for unsettled files to settle).
        let first = match again_after {
            Some(wait) => events.recv_timeout(wait),
            None => events.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        if first == Err(RecvTimeoutError::Disconnected) {
            return;
        }
        // Debounce: wait for the burst to end.
        while events.recv_timeout(DEBOUNCE).is_ok() {}
        again_after = sync().then_some(SETTLE);
    }
}
