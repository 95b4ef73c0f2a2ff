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
//! it has been still for a moment. So a burst that wrote something (a file created,
//! written or touched) is waited out for [`SETTLE`] (plus [`SETTLE_MARGIN`]) instead,
//! and its one rescan finds the files written settled: a rescan of a large folder
//! costs a walk of all of it, and a rescan that could only leave the new file out was
//! one such walk for nothing. A burst of removals and renames alone is rescanned after
//! [`DEBOUNCE`]. A burst that goes on without such a pause is rescanned after
//! [`LONGEST_BURST`] all the same, so that a file written all the time (a log) holds
//! back no other change. A file still found unsettled (its time set ahead, written
//! without an event, or still being written) is looked at again after [`SETTLE`].
//! Download temporaries and the hash cache (names starting with `.peerdex-`) cause no
//! rescans at all, nor do mere reads: a rescan opens and reads files, and inotify
//! reports those opens, so a watcher that rescanned on them would rescan forever.
//!
//! If the folder cannot be watched (inotify limits, some network filesystems), the
//! thread says so once on stderr and rescans every [`POLL_INTERVAL`] instead.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind, RenameMode};
use notify::{Event, RecursiveMode, Watcher};

use crate::name::RESERVED_PREFIX;

/// Quiet time after the last event before the folder is rescanned.
pub const DEBOUNCE: Duration = Duration::from_millis(300);

/// A file modified less recently than this is taken to be fully written. A copy that
/// stalls for longer than this (a slow network share) can still be advertised half
/// done; downloaders would then see a hash mismatch and try another peer.
pub const SETTLE: Duration = Duration::from_secs(1);

/// Added to [`SETTLE`] when a burst that wrote is waited out: a file's time is read
/// from the wall clock (at the file system's tick) and the wait is measured on the
/// monotonic clock; the margin covers the small differences between the two.
pub const SETTLE_MARGIN: Duration = Duration::from_millis(50);

/// Longest a burst of events is waited out before the rescan: a file written without
/// a pause (a log appended to several times a second, a slow copy) would otherwise
/// hold back every other change in the folder for as long as it is written. It is
/// left out of the rescan as still being written, and the rest reaches the index.
pub const LONGEST_BURST: Duration = Duration::from_secs(5);

/// What a burst of events asks for ([`watch`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stir {
    /// Something was created, written or had its times changed: what it made is
    /// listed only once settled.
    Wrote,
    /// Only removals, renames, or a lost event (the queue overflowed): a rescan finds
    /// it at once.
    Moved,
}

impl Stir {
    /// How long the folder must be quiet after such an event before the rescan.
    fn quiet(self) -> Duration {
        match self {
            Stir::Wrote => SETTLE + SETTLE_MARGIN,
            Stir::Moved => DEBOUNCE,
        }
    }

    /// What `event` asks for, or `None` if it changes nothing shared, or only what this
    /// peer put in the folder itself (`made_here`: a download, which told the index).
    fn of(event: &notify::Result<Event>, made_here: &impl Fn(&Path) -> bool) -> Option<Stir> {
        let e = match event {
            Ok(e) => e,
            // An error (the queue overflowed, say) means changes may have been missed:
            // rescan to be safe.
            Err(_) => return Some(Stir::Moved),
        };
        let reserved = |p: &PathBuf| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(RESERVED_PREFIX))
        };
        let ours = !e.paths.is_empty() && e.paths.iter().all(reserved);
        // What a download does to put its file in place: make the folders on its path,
        // rename its partial to the file's name, and close it (which inotify reports
        // under the new name). Only that: a removal, a rename away or a write of the
        // same path a moment later is the user's, and rescanned for.
        let download = match (e.kind, &e.paths[..]) {
            // A folder only: a file made at a downloaded file's path (after the user
            // removed it) is the user's.
            (EventKind::Create(CreateKind::Folder), paths) => {
                !paths.is_empty() && paths.iter().all(|p| made_here(p))
            }
            (EventKind::Access(AccessKind::Close(AccessMode::Write)), [path]) => made_here(path),
            (EventKind::Modify(ModifyKind::Name(RenameMode::To)), [to]) => made_here(to),
            (EventKind::Modify(ModifyKind::Name(RenameMode::Both)), [from, to]) => {
                reserved(from) && made_here(to)
            }
            _ => false,
        };
        match e.kind {
            _ if ours || download => None,
            // Opening, reading or closing a file without writing changes nothing we share.
            EventKind::Access(kind) if kind != AccessKind::Close(AccessMode::Write) => None,
            EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_)) => Some(Stir::Moved),
            _ if e.need_rescan() => Some(Stir::Moved),
            _ => Some(Stir::Wrote),
        }
    }
}

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
pub fn watch(
    folder: &Path,
    made_here: impl Fn(&Path) -> bool + Clone + Send + 'static,
    mut sync: impl FnMut() -> bool,
) {
    let (tx, events) = mpsc::channel();
    // The fallback must work where watching cannot; this lets the tests (and anyone
    // curious) take it on a machine where watching works.
    let watcher = match std::env::var_os(NO_WATCH_VAR) {
        Some(_) => Err(notify::Error::generic(&format!("{NO_WATCH_VAR} is set"))),
        None => Watching::start(folder, &tx, made_here.clone()),
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
        let first = match wait {
            Some(wait) => events.recv_timeout(wait).ok(),
            None => events.recv().ok(),
        };
        // Debounce: wait for the burst to end, for longer if it wrote (see the module
        // docs), but not past LONGEST_BURST.
        let burst = Instant::now();
        let mut stir = first.unwrap_or(Stir::Moved);
        loop {
            let left = LONGEST_BURST.saturating_sub(burst.elapsed());
            if left.is_zero() {
                break;
            }
            match events.recv_timeout(stir.quiet().min(left)) {
                Ok(Stir::Wrote) => stir = Stir::Wrote,
                Ok(Stir::Moved) => {}
                Err(_) => break,
            }
        }
        // Watch what is at the folder's path now, before looking at it, so that no
        // change after the look goes unseen.
        let there = identity(folder);
        if there.is_some() && there != watching.as_ref().and_then(|w| w.folder) {
            watching = match Watching::start(folder, &tx, made_here.clone()) {
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
    /// burst's events that may change what is shared, each with what it asks for.
    fn start(
        folder: &Path,
        tx: &mpsc::Sender<Stir>,
        made_here: impl Fn(&Path) -> bool + Send + 'static,
    ) -> notify::Result<Watching> {
        // Taken before the watch is added: if the folder is replaced in between, the
        // next look finds it changed and watches again.
        let there = identity(folder);
        let tx = tx.clone();
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<Event>| {
            if let Some(stir) = Stir::of(&event, &made_here) {
                let _ = tx.send(stir);
            }
        })?;
        watcher.watch(folder, RecursiveMode::Recursive)?;
        Ok(Watching { _watcher: watcher, folder: there })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{DataChange, Flag, MetadataKind, RemoveKind};

    fn of(kind: EventKind, name: &str) -> Option<Stir> {
        Stir::of(&Ok(Event::new(kind).add_path(format!("/shared/{name}").into())), &|p: &Path| {
            p.ends_with("downloaded.txt")
        })
    }

    #[test]
    fn writes_wait_to_settle_and_removals_and_renames_do_not() {
        let wrote = [
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::WriteTime)),
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Any,
        ];
        for kind in wrote {
            assert_eq!(of(kind, "a.txt"), Some(Stir::Wrote), "{kind:?}");
        }
        let moved = [
            EventKind::Remove(RemoveKind::File),
            EventKind::Remove(RemoveKind::Folder),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Modify(ModifyKind::Name(RenameMode::From)),
        ];
        for kind in moved {
            assert_eq!(of(kind, "a.txt"), Some(Stir::Moved), "{kind:?}");
        }
        let lost = Event::new(EventKind::Other).set_flag(Flag::Rescan);
        let none = |_: &Path| false;
        assert_eq!(Stir::of(&Ok(lost), &none), Some(Stir::Moved), "missed events are looked for at once");
        assert_eq!(Stir::of(&Err(notify::Error::generic("overflow")), &none), Some(Stir::Moved));
    }

    #[test]
    fn reads_peerdexs_own_files_and_its_downloads_stir_nothing() {
        for kind in [
            EventKind::Access(AccessKind::Open(notify::event::AccessMode::Any)),
            EventKind::Access(AccessKind::Read),
        ] {
            assert_eq!(of(kind, "a.txt"), None, "{kind:?}");
        }
        assert_eq!(of(EventKind::Create(CreateKind::File), ".peerdex-part-0a1b"), None);
        assert_eq!(of(EventKind::Modify(ModifyKind::Data(DataChange::Any)), ".peerdex-hashes"), None);
        // A download's own file, renamed into place: the download told the index.
        assert_eq!(of(EventKind::Modify(ModifyKind::Name(RenameMode::To)), "downloaded.txt"), None);
        let both = Event::new(EventKind::Modify(ModifyKind::Name(RenameMode::Both)))
            .add_path("/shared/.peerdex-part-0a1b".into())
            .add_path("/shared/downloaded.txt".into());
        assert_eq!(Stir::of(&Ok(both), &|p: &Path| p.ends_with("downloaded.txt")), None);
        assert_eq!(of(EventKind::Access(AccessKind::Close(AccessMode::Write)), "downloaded.txt"), None);
        let folder = Event::new(EventKind::Create(CreateKind::Folder)).add_path("/shared/album".into());
        assert_eq!(Stir::of(&Ok(folder), &|p: &Path| p.ends_with("album")), None);
        // But the user's removal or renaming of it a moment later is looked at.
        assert_eq!(of(EventKind::Remove(RemoveKind::File), "downloaded.txt"), Some(Stir::Moved));
        assert_eq!(
            of(EventKind::Modify(ModifyKind::Name(RenameMode::From)), "downloaded.txt"),
            Some(Stir::Moved)
        );
        assert_eq!(
            of(EventKind::Modify(ModifyKind::Data(DataChange::Any)), "downloaded.txt"),
            Some(Stir::Wrote)
        );
        // And a file made again at its path, once the user removed it, is the user's.
        assert_eq!(of(EventKind::Create(CreateKind::File), "downloaded.txt"), Some(Stir::Wrote));
    }
}
