//! The downloader: ask the index who shares a name, then fetch the file's pieces from
//! all of them at once, each piece verified on arrival, into the shared folder.
//!
//! 1. The index names every peer that shares the name, each with its copy's size and
//!    root. The content most of them share is taken (then the next, if none of its
//!    sources can deliver it).
//! 2. Up to [`MAX_SOURCES`] sources are used at once, penalized ones last; with more
//!    candidates than that, the least loaded are chosen by asking them how busy they
//!    are ([`PeerChoice`]), and the rest wait in reserve to replace sources that fail.
//! 3. The piece layer comes from the first source that answers and is checked against
//!    the root. Each source (`source.rs`) is then kept a few runs of pieces ahead, more
//!    for a faster one; the scheduler (`scheduler.rs`) hands out runs, rarest first, and
//!    at the end (the last few MiB) gives a source with nothing else to do a piece
//!    another has been sending for a second, keeping the first copy that arrives.
//! 4. Pieces are verified on a pool of hashing threads, one per core, written at their
//!    offsets in the partial file by one writing thread, and recorded in its record of pieces
//!    ([`super::partial`]), so that a resumed download fetches only what is missing.
//! 5. When every piece is in, the file is given its name, never over an existing file.
//!
//! A source whose piece fails its hash is dropped at once and named; nothing it sent
//! in this download is kept (even its pieces that matched are fetched again: a source
//! caught lying is trusted with nothing), and it goes to the back of the order for
//! [`PENALTY`]. A source that stalls (less than [`super::fileserver::MIN_PROGRESS`]
//! bytes in a stall window while it owes some) or dies is dropped too; the others
//! finish the file.
//!
//! Swarming: a registered peer announces the download to the index as a partial and
//! offers its verified pieces through its file server ([`super::folder::PartialView`])
//! while the download runs; downloaders ask the index again for sources every second,
//! so peers downloading the same file find each other.

mod choice; // asking many sharers how busy they are
mod scheduler; // which pieces from which source
mod source; // one source's connection
mod verify; // the hashing threads and the writer

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use rand::seq::SliceRandom;

use super::client::{IndexClient, unexpected};
use super::fileserver::STALL_TIMEOUT;
use super::folder::{PartialView, SharedFolder};
use super::partial::Partial;
use crate::content::{Bitfield, Geometry, Hash};
use crate::name::SharePath;
use crate::text::escape;
use crate::wire::{FileInfo, PeerHit, Reply, Request};
use scheduler::Scheduler;
use source::End;

/// How long to wait for a sending peer to accept the connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Downloads that run at once; more wait their turn in a queue. Browsers allow 6
/// connections per host for the same reason: beyond a few, parallel transfers only
/// contend (for the network, for the folder's directory lock) without finishing
/// sooner, and each costs a thread.
pub const MAX_PARALLEL_DOWNLOADS: usize = 4;

/// Sources one download uses at once. Past a handful, more sources add connections
/// and endgame duplicates rather than speed (aria2's default `--split` is 5).
pub const MAX_SOURCES: usize = 8;

/// How long a candidate has to answer "how busy are you?" before it is skipped.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(1);

/// Most candidates asked how busy they are, in parallel, for one download.
pub const STATUS_SAMPLE: usize = 16;

/// How often a download that uses fewer than [`MAX_SOURCES`] asks the index again who
/// shares the file: peers that start sharing it, or downloading it (a swarm), join.
pub const LOOKUP_REFRESH: Duration = Duration::from_secs(1);

/// When a download first asks the index again who shares the file.
pub const FIRST_REFRESH: Duration = Duration::from_millis(300);

/// How long a source that refused for being busy waits to be asked again.
pub const BUSY_RETRY: Duration = Duration::from_secs(3);

/// How long a source that stalled or sent wrong bytes stays at the back of the order.
pub const PENALTY: Duration = Duration::from_secs(10 * 60);

/// How the downloader orders the peers that share a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PeerChoice {
    /// In random order (the original design).
    Random,
    /// Least busy first: fewest uploads running, then most recent throughput, ties
    /// at random; peers that do not answer are skipped. Only asked when there are more
    /// candidates than sources used at once.
    LeastLoaded,
}

/// The downloader's limits; `Default` has the documented defaults.
#[derive(Clone, Debug)]
pub struct DownloadConfig {
    /// See [`CONNECT_TIMEOUT`].
    pub connect_timeout: Duration,
    /// The stall window: a source must deliver [`super::fileserver::MIN_PROGRESS`] bytes within each
    /// while it owes some, and its handshake within one ([`STALL_TIMEOUT`]).
    pub read_timeout: Duration,
    /// See [`MAX_PARALLEL_DOWNLOADS`].
    pub max_parallel: usize,
    /// See [`PeerChoice`].
    pub choice: PeerChoice,
}

impl Default for DownloadConfig {
    fn default() -> Self {
        DownloadConfig {
            connect_timeout: CONNECT_TIMEOUT,
            read_timeout: STALL_TIMEOUT,
            max_parallel: MAX_PARALLEL_DOWNLOADS,
            choice: PeerChoice::LeastLoaded,
        }
    }
}

/// Sources that stalled or sent wrong bytes, each until its [`PENALTY`] is over. One
/// per peer, shared by its downloads.
#[derive(Debug, Default)]
pub struct Penalties {
    until: Mutex<HashMap<SocketAddr, Instant>>,
}

impl Penalties {
    /// Sends `source` to the back of the order for [`PENALTY`].
    pub fn penalize(&self, source: SocketAddr) {
        let mut until = crate::lock(&self.until);
        let now = Instant::now();
        until.retain(|_, t| *t > now);
        until.insert(source, now + PENALTY);
    }

    /// Is `source` at the back of the order now?
    pub fn holds(&self, source: SocketAddr) -> bool {
        let until = crate::lock(&self.until);
        until.get(&source).is_some_and(|t| *t > Instant::now())
    }
}

/// What a download has to say on its way, for the shell to print.
#[derive(Debug)]
pub enum Note {
    /// A source failed; `more` if other sources go on (or wait to be tried).
    SourceFailed {
        /// The source.
        from: SocketAddr,
        /// Why.
        why: anyhow::Error,
        /// Whether another source is left.
        more: bool,
    },
    /// How far the download has come, every [`PROGRESS_EVERY`].
    Progress {
        /// Verified bytes.
        done: u64,
        /// Bytes in all.
        total: u64,
        /// Sources sending now.
        sources: usize,
    },
    /// A piece from this source failed its hash: the source is dropped from this
    /// download and goes to the back of the order.
    BadPiece {
        /// The source.
        from: SocketAddr,
        /// The piece.
        piece: u32,
        /// Whether another source is left.
        more: bool,
    },
}

/// A completed download.
#[derive(Debug)]
pub struct Downloaded {
    /// The file as it now is in the folder: name, size and root, verified.
    pub info: FileInfo,
    /// The peers that sent verified pieces, with how many bytes each, most first.
    pub sources: Vec<(SocketAddr, u64)>,
    /// Bytes that were already here from an interrupted attempt (0 if none).
    pub resumed: u64,
    /// How many contents the index had under the name (the most shared is taken,
    /// unless one was chosen by its id).
    pub contents: usize,
}

/// Everything a download needs besides the name.
pub struct Downloader<'a> {
    /// The connection to the index.
    pub index: &'a IndexClient,
    /// The shared folder, where the file goes.
    pub folder: &'a SharedFolder,
    /// Limits and the peer choice.
    pub config: &'a DownloadConfig,
    /// Sources at the back of the order.
    pub penalties: &'a Penalties,
    /// This peer's own file server as the index knows it, if it is registered: the
    /// download is then announced to the index as a partial, its verified pieces are
    /// offered to others, and this peer is never its own source.
    pub me: Option<SocketAddr>,
    /// Kept up to date as the download goes, and read for a cancel.
    pub progress: &'a Progress,
    /// The content to take when the name has several: the first hex digits of its
    /// root (`download NAME@abcd1234`); `None` for the most shared.
    pub content: Option<&'a str>,
}

/// How far a download has come, for `downloads` and progress lines; and its cancel.
#[derive(Debug)]
pub struct Progress {
    /// Verified bytes.
    pub done: AtomicU64,
    /// Bytes in all, once known.
    pub total: AtomicU64,
    /// Sources sending now.
    pub sources: AtomicUsize,
    /// When it started.
    pub started: Instant,
    /// Set to stop the download, keeping what it verified.
    pub cancel: AtomicBool,
}

impl Default for Progress {
    fn default() -> Progress {
        Progress {
            done: AtomicU64::new(0),
            total: AtomicU64::new(0),
            sources: AtomicUsize::new(0),
            started: Instant::now(),
            cancel: AtomicBool::new(false),
        }
    }
}

/// How often a running download says how far it has come (`Note::Progress`).
pub const PROGRESS_EVERY: Duration = Duration::from_secs(2);

impl Downloader<'_> {
    /// Downloads `name` into the folder. `note` hears about each failed source as it
    /// happens. Fails if the name exists in the folder (checked before anything is
    /// fetched), if no peer shares it, or if every one fails.
    pub fn download(&self, name: &SharePath, mut note: impl FnMut(Note)) -> anyhow::Result<Downloaded> {
        if let Err(why) = self.folder.vacant(name) {
            bail!("{why}");
        }
        let looked = self.index.call(&Request::Lookup { name: name.clone() });
        // A cancel that came while the index was asked wins over whatever it answered:
        // the user no longer wants the file, so why it could not have been had is moot.
        if self.progress.cancel.load(Ordering::SeqCst) {
            bail!("cancelled while the index was asked who shares it");
        }
        let hits = match looked? {
            Reply::Peers(hits) => hits,
            Reply::NoPeers => bail!("no registered peer shares it"),
            Reply::Error(e) => bail!("the index server refused the lookup: {}", escape(&e)),
            other => return Err(unexpected(&other).into()),
        };
        // A partial of ours that the index knows (an earlier attempt) is no source.
        let hits: Vec<PeerHit> = hits.into_iter().filter(|h| Some(h.addr) != self.me).collect();
        if hits.is_empty() {
            bail!("no other registered peer shares it");
        }
        let tried = hits.len();
        // Most-shared content first; a name's other contents come after, in case none
        // of its sources can deliver it.
        let mut contents: Vec<((u64, Hash), Vec<PeerHit>)> = Vec::new();
        for hit in hits {
            match contents.iter_mut().find(|(c, _)| *c == (hit.size, hit.root)) {
                Some((_, group)) => group.push(hit),
                None => contents.push(((hit.size, hit.root), vec![hit])),
            }
        }
        contents.sort_by_key(|(_, group)| std::cmp::Reverse(group.len()));
        let choices = contents.len();
        if let Some(id) = self.content {
            contents.retain(|((_, root), _)| hex::encode(root).starts_with(id));
            if contents.is_empty() {
                bail!(
                    "no content of that name has the id {id} (a listing on a terminal shows the ids of a name with several)"
                );
            }
        }
        let mut failure = None;
        for ((size, root), group) in contents {
            let candidates = self.order(name, group, &mut note);
            match self.fetch(name, size, root, candidates, &mut note) {
                Ok(done) => return Ok(Downloaded { contents: choices, ..done }),
                Err(Failed::Local(e)) => return Err(e),
                Err(Failed::Sources(e)) => failure = Some(e),
            }
        }
        Err(failure.unwrap_or_else(|| match tried {
            1 => anyhow!("the only peer that shares it failed"),
            n => anyhow!("all {n} peers that share it failed"),
        }))
    }

    /// The candidates in the order to use them: see the module docs.
    fn order(&self, name: &SharePath, mut hits: Vec<PeerHit>, note: &mut impl FnMut(Note)) -> Vec<PeerHit> {
        hits.shuffle(&mut rand::rng());
        // With no more candidates than sources used at once, all are used: asking them
        // how busy they are would only cost a round trip.
        if self.config.choice == PeerChoice::LeastLoaded && hits.len() > MAX_SOURCES {
            // A popular file can have thousands of sharers: ask a random sample of them
            // (one thread each); the others stay behind, in random order, as a reserve.
            let reserve = hits.split_off(hits.len().min(STATUS_SAMPLE));
            let (ranked, dead) = choice::rank(hits, self.config);
            let more = !ranked.is_empty() || !reserve.is_empty();
            for (hit, why) in dead {
                note(Note::SourceFailed { from: hit.addr, why, more });
            }
            if let Some((best, (uploads, rate))) = ranked.first() {
                log::debug!(
                    "downloading {:?}: {} has {uploads} uploads running, {rate} bytes/s recently; the least loaded of {} asked",
                    name.as_str(),
                    best.addr,
                    ranked.len()
                );
            }
            hits = ranked.into_iter().map(|(hit, _)| hit).chain(reserve).collect();
        }
        // A peer's own account of itself is a hint: a source that stalled or lied
        // recently goes last, whatever it says.
        let (mut fine, held): (Vec<PeerHit>, Vec<PeerHit>) =
            hits.into_iter().partition(|h| !self.penalties.holds(h.addr));
        fine.extend(held);
        fine
    }

    /// Fetches the content (`size`, `root`) from `candidates` into its partial file and
    /// gives it `name`.
    fn fetch(
        &self,
        name: &SharePath,
        size: u64,
        root: Hash,
        candidates: Vec<PeerHit>,
        note: &mut impl FnMut(Note),
    ) -> Result<Downloaded, Failed> {
        let folder = self.folder;
        let geometry = Geometry::for_size(size);
        let partial = match folder.partial(&root, size) {
            Ok(Some(partial)) => partial,
            Ok(None) => return Err(Failed::Local(anyhow!("this peer is already downloading that content"))),
            Err(e) => {
                return Err(Failed::Local(
                    anyhow!(e).context("cannot create a temporary file in the shared folder"),
                ));
            }
        };
        let (layer, have) = match partial.earlier() {
            Some((layer, have)) => (Some(layer.clone()), have.clone()),
            None if geometry.pieces() == 1 => (Some(vec![root]), Bitfield::empty(1)),
            None => (None, Bitfield::empty(geometry.pieces())),
        };
        let resumed: u64 = have.ones().map(|i| geometry.piece(i).end - geometry.piece(i).start).sum();
        self.make_room(name, size - resumed).map_err(Failed::Local)?;
        let data =
            partial.file().try_clone().context("cannot open the partial file").map_err(Failed::Local)?;
        // Offered to others while it runs (swarming): the file server serves the
        // verified pieces, and the index lists this peer as holding part of the file.
        // (A one-piece file has nothing to offer until it is complete.)
        let view = match self.me {
            Some(_) if geometry.pieces() > 1 => {
                let file = data.try_clone().context("cannot open the partial file").map_err(Failed::Local)?;
                let view = Arc::new(PartialView {
                    name: name.clone(),
                    geometry,
                    file,
                    layer: OnceLock::new(),
                    have: Mutex::new(have.clone()),
                });
                if let Some(layer) = &layer {
                    let _ = view.layer.set(Arc::new(layer.clone()));
                }
                self.folder.offer(root, Arc::clone(&view));
                let info = FileInfo { name: name.clone(), size, root };
                if let Err(e) = self.index.call(&Request::Partial { files: vec![info] }) {
                    log::debug!("cannot tell the index that {:?} is being downloaded: {e:#}", name.as_str());
                }
                Some(view)
            }
            _ => None,
        };
        let start = Start { partial, data, layer, have, resumed, view: view.clone() };
        let result = self.fetch_from(name, size, root, candidates, start, note);
        if view.is_some() {
            self.folder.withdraw(&root);
            // A download that did not complete is no longer offered; one that did is
            // announced whole by the caller (an `Add`), which ends the partial.
            if result.is_err() {
                let _ = self.index.call(&Request::Delete { names: vec![name.clone()] });
            }
        }
        result
    }

    /// The body of [`Downloader::fetch`], once the partial is open.
    fn fetch_from(
        &self,
        name: &SharePath,
        size: u64,
        root: Hash,
        candidates: Vec<PeerHit>,
        start: Start,
        note: &mut impl FnMut(Note),
    ) -> Result<Downloaded, Failed> {
        let folder = self.folder;
        let geometry = Geometry::for_size(size);
        let Start { partial, data, layer, have, resumed, view } = start;
        // No more hashers than pieces to come: a small file's download starts one
        // thread fewer (a folder of small files is thousands of downloads).
        let missing = (geometry.pieces() - have.count()) as usize;
        let workers = cores().min(missing).max(1);
        let (jobs, queue) = mpsc::sync_channel::<Job>(2 * workers);
        let shared = Shared {
            geometry,
            root,
            config: self.config,
            layer: OnceLock::new(),
            view,
            state: Mutex::new(State {
                scheduler: Scheduler::new(&geometry, have, rand::random()),
                partial,
                sources: Vec::new(),
                local: None,
                spare: Vec::new(),
                sent_by: vec![None; geometry.pieces() as usize],
            }),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
            jobs: Mutex::new(Some(jobs)),
            data,
        };
        if let Some(layer) = layer {
            shared.set_layer(layer).map_err(Failed::Local)?;
        }
        if shared.lock().scheduler.is_complete() {
            shared.stop.store(true, Ordering::SeqCst);
        }

        let (now, later) = candidates.split_at(candidates.len().min(MAX_SOURCES));
        let shown = |hits: &[PeerHit]| hits.iter().map(|h| h.addr.to_string()).collect::<Vec<_>>().join(", ");
        log::info!(
            "downloading {:?} ({size} bytes) from {}: {}; in reserve: {}",
            name.as_str(),
            crate::text::count(now.len() as u64, "peer"),
            shown(now),
            if later.is_empty() { "none".to_owned() } else { shown(later) }
        );
        let mut reserve: VecDeque<PeerHit> = candidates.into();
        let mut known: HashSet<SocketAddr> = reserve.iter().map(|h| h.addr).collect();
        let (ended, endings) = mpsc::channel::<(usize, End)>();
        let queue = Mutex::new(queue);
        let mut cancelled = false;
        let blamed = thread::scope(|scope| {
            // Hashers on every core; one writer, so that verified pieces reach the file
            // one at a time (concurrent writes to one file spin on its inode's lock: 13%
            // of the receiver's time when the hashers wrote). A lone hasher writes too.
            let (shared_ref, queue_ref) = (&shared, &queue);
            if workers == 1 {
                scope.spawn(move || {
                    verify::hash_pieces(shared_ref, queue_ref, |job| {
                        verify::write_piece(shared_ref, job);
                        true
                    })
                });
            } else {
                let (to_writer, writes) = mpsc::sync_channel::<Job>(2 * workers);
                for _ in 0..workers {
                    let to_writer = to_writer.clone();
                    scope.spawn(move || {
                        verify::hash_pieces(shared_ref, queue_ref, |job| to_writer.send(job).is_ok())
                    });
                }
                drop(to_writer);
                scope.spawn(move || verify::write_pieces(shared_ref, writes));
            }
            // Sources by id, as started (a source asked again later gets a new id).
            let mut started: Vec<PeerHit> = Vec::new();
            let start = |hit: &PeerHit| {
                let id = {
                    let mut state = shared.lock();
                    let s = SourceState { addr: hit.addr, pieces: 0, bytes: 0, bad: None, link: None };
                    state.sources.push(s);
                    state.sources.len() - 1
                };
                let (shared, ended, addr) = (&shared, ended.clone(), hit.addr);
                scope.spawn(move || {
                    let end = source::run(shared, id, addr);
                    let _ = ended.send((id, end));
                });
            };
            let mut running = 0;
            let mut blamed = Vec::new();
            // Sources that were busy, each with when to ask it again.
            let mut busy: Vec<(Instant, PeerHit)> = Vec::new();
            let mut told_busy: HashSet<SocketAddr> = HashSet::new();
            // The first lookup again comes sooner: peers that started downloading the
            // file at the same moment as this one have announced themselves by then.
            let mut last_lookup = Instant::now() - LOOKUP_REFRESH + FIRST_REFRESH;
            let (mut pieces, mut progress_at) = (shared.lock().scheduler.have().count(), Instant::now());
            let mut told_progress = Instant::now();
            loop {
                self.stop_when_done(&shared);
                let finished = shared.stopped();
                if finished && running == 0 {
                    break;
                }
                if !finished {
                    let now = Instant::now();
                    // Fill the places: sources due to be asked again, then the reserve.
                    while running < MAX_SOURCES {
                        let hit = match busy.iter().position(|(at, _)| *at <= now) {
                            Some(i) => busy.swap_remove(i).1,
                            None => match reserve.pop_front() {
                                Some(hit) => hit,
                                None => break,
                            },
                        };
                        start(&hit);
                        started.push(hit);
                        running += 1;
                    }
                    // Peers that began sharing the file, or downloading it, since.
                    if running < MAX_SOURCES && last_lookup.elapsed() >= LOOKUP_REFRESH {
                        last_lookup = now;
                        for hit in self.more_sources(name, size, root) {
                            if known.insert(hit.addr) {
                                reserve.push_back(hit);
                            }
                        }
                        if !reserve.is_empty() {
                            continue;
                        }
                    }
                    let have = shared.lock().scheduler.have().count();
                    if have != pieces {
                        (pieces, progress_at) = (have, now);
                    }
                    let progress = self.progress;
                    let done = (u64::from(have) * geometry.piece_len).min(size);
                    progress.done.store(done, Ordering::Relaxed);
                    progress.total.store(size, Ordering::Relaxed);
                    progress.sources.store(running, Ordering::Relaxed);
                    if now >= told_progress + PROGRESS_EVERY {
                        told_progress = now;
                        note(Note::Progress { done, total: size, sources: running });
                    }
                    if progress.cancel.load(Ordering::SeqCst) {
                        // Stopped as when every piece is in: what is verified stays.
                        cancelled = true;
                        self.stop(&shared);
                        continue;
                    }
                    // Nothing running and nothing to try: give up, but wait for busy
                    // sources as long as a stall window since the last piece.
                    let patience = progress_at.elapsed() >= self.config.read_timeout;
                    if running == 0 && reserve.is_empty() && (busy.is_empty() || patience) {
                        break;
                    }
                }
                let Ok((id, end)) = endings.recv_timeout(Duration::from_millis(200)) else { continue };
                running -= 1;
                self.stop_when_done(&shared);
                let (addr, bad) = {
                    let state = shared.lock();
                    (state.sources[id].addr, state.sources[id].bad)
                };
                let finished = shared.stopped();
                let more = running > 0 || !reserve.is_empty() || !busy.is_empty();
                if let Some(piece) = bad {
                    self.penalties.penalize(addr);
                    note(Note::BadPiece { from: addr, piece, more });
                    blamed.push(id);
                    continue;
                }
                match end {
                    End::Finished => {}
                    End::Busy(why) if !finished => {
                        // Asked again in a while; said once.
                        busy.push((Instant::now() + BUSY_RETRY, started[id].clone()));
                        if told_busy.insert(addr) {
                            let why = anyhow!("{why:#}; asking it again every {} s", BUSY_RETRY.as_secs());
                            // "going on with the other peers" only if there are some.
                            let more = running > 0 || !reserve.is_empty();
                            note(Note::SourceFailed { from: addr, why, more });
                        }
                    }
                    End::Busy(_) => {}
                    End::Failed { why, penalize } => {
                        if penalize {
                            self.penalties.penalize(addr);
                        }
                        if !finished {
                            note(Note::SourceFailed { from: addr, why, more });
                        }
                    }
                }
            }
            // No source left: the hashers finish what they hold, then stop.
            shared.stop.store(true, Ordering::SeqCst);
            crate::lock(&shared.jobs).take();
            blamed
        });

        let Shared { state, layer, .. } = shared;
        let state = state.into_inner().unwrap_or_else(PoisonError::into_inner);
        // A bad piece still being checked when its source stopped is named now.
        for (id, s) in state.sources.iter().enumerate() {
            if let Some(piece) = s.bad
                && !blamed.contains(&id)
            {
                self.penalties.penalize(s.addr);
                note(Note::BadPiece { from: s.addr, piece, more: false });
            }
        }
        if let Some(e) = state.local {
            state.partial.discard();
            // Nothing is kept, so nothing is resumable: `downloads` must not offer it.
            self.progress.done.store(0, Ordering::Relaxed);
            return Err(Failed::Local(e));
        }
        if cancelled && !state.scheduler.is_complete() {
            return Err(Failed::Local(match state.scheduler.have().count() {
                0 => anyhow!("cancelled before any piece was verified; nothing is kept"),
                got => anyhow!(
                    "cancelled; {got} of its {} pieces are kept, to resume from there",
                    geometry.pieces()
                ),
            }));
        }
        if !state.scheduler.is_complete() {
            let got = state.scheduler.have().count();
            let pieces = geometry.pieces();
            let kept = match got {
                0 => String::new(),
                n => format!(" ({n} of {pieces} pieces are kept, to resume from there)"),
            };
            let tried: HashSet<SocketAddr> = state.sources.iter().map(|s| s.addr).collect();
            let why = match tried.len() {
                0 => anyhow!("no peer that shares it could be reached{kept}"),
                1 => anyhow!("the only peer that shares it failed{kept}"),
                n => anyhow!("all {n} peers that share it failed{kept}"),
            };
            return Err(Failed::Sources(why));
        }
        let layer = Arc::new(layer.into_inner().expect("a complete download had its layer"));
        folder.commit(state.partial, name, root, layer).map_err(|e| {
            Failed::Local(match e.kind() {
                io::ErrorKind::AlreadyExists => {
                    anyhow!("a file of that name appeared in the folder meanwhile; it was kept")
                }
                _ => anyhow!(e).context("cannot give the download its name"),
            })
        })?;
        let mut sources: HashMap<SocketAddr, u64> = HashMap::new();
        for s in &state.sources {
            if s.pieces > 0 {
                *sources.entry(s.addr).or_default() += s.bytes;
            }
        }
        let mut sources: Vec<(SocketAddr, u64)> = sources.into_iter().collect();
        sources.sort_by_key(|&(addr, bytes)| (std::cmp::Reverse(bytes), addr));
        Ok(Downloaded { info: FileInfo { name: name.clone(), size, root }, sources, resumed, contents: 1 })
    }

    /// Peers the index now names for this content, other than this one.
    fn more_sources(&self, name: &SharePath, size: u64, root: Hash) -> Vec<PeerHit> {
        match self.index.call(&Request::Lookup { name: name.clone() }) {
            Ok(Reply::Peers(hits)) => hits
                .into_iter()
                .filter(|h| (h.size, h.root) == (size, root) && Some(h.addr) != self.me)
                .collect(),
            _ => Vec::new(),
        }
    }

    /// When every piece is in: stops the sources, closing their connections so that
    /// none waits on a duplicate it no longer needs.
    fn stop_when_done(&self, shared: &Shared) {
        let done = {
            let state = shared.lock();
            state.scheduler.is_complete() || state.local.is_some()
        };
        if done {
            self.stop(shared);
        }
    }

    /// Stops the sources, closing their connections.
    fn stop(&self, shared: &Shared) {
        let state = shared.lock();
        if !shared.stop.swap(true, Ordering::SeqCst) {
            for link in state.sources.iter().filter_map(|s| s.link.as_ref()) {
                link.close();
            }
            drop(state);
            shared.changed.notify_all();
        }
    }

    /// Makes sure `needed` more bytes fit in the folder, deleting the oldest kept
    /// partials if that is what it takes.
    fn make_room(&self, name: &SharePath, needed: u64) -> anyhow::Result<()> {
        let folder = self.folder;
        let mut free = folder.free_space().unwrap_or(u64::MAX);
        if needed > free
            && let Ok((freed, n)) = folder.evict_partials(needed - free)
            && n > 0
        {
            crate::errln!(
                "note: deleted the {n} oldest partial downloads ({freed} bytes) to make room for {:?}",
                name.as_str()
            );
            free = folder.free_space().unwrap_or(u64::MAX);
        }
        if needed > free {
            bail!("it needs {needed} more bytes, more than the {free} bytes free in the shared folder");
        }
        Ok(())
    }
}

/// How fetching one content failed.
enum Failed {
    /// Nothing to do with the sources (the folder, the disk): stop.
    Local(anyhow::Error),
    /// Every source failed: another content of the name may still be tried.
    Sources(anyhow::Error),
}

/// What the threads of one download share.
pub(super) struct Shared<'a> {
    geometry: Geometry,
    root: Hash,
    config: &'a DownloadConfig,
    /// The piece layer, checked against the root, once known.
    layer: OnceLock<Vec<Hash>>,
    state: Mutex<State>,
    /// Signalled when a piece is verified or given back, or the download stops.
    changed: Condvar,
    /// Set when every piece is in, or on a local error.
    stop: AtomicBool,
    /// Pieces for the hashers (each source takes a copy); taken away at the end, so
    /// that the hashers stop once the last source is gone.
    jobs: Mutex<Option<mpsc::SyncSender<Job>>>,
    /// The partial's data file, for writing verified pieces at their offsets.
    data: File,
    /// What the file server offers of this download, kept up to date.
    view: Option<Arc<PartialView>>,
}

/// A download's partial, opened, with what an earlier attempt left in it.
struct Start {
    partial: Partial,
    data: File,
    layer: Option<Vec<Hash>>,
    have: Bitfield,
    resumed: u64,
    view: Option<Arc<PartialView>>,
}

struct State {
    scheduler: Scheduler,
    partial: Partial,
    sources: Vec<SourceState>,
    /// A local error (writing to the folder) that stops the download.
    local: Option<anyhow::Error>,
    /// Piece buffers to reuse.
    spare: Vec<Vec<u8>>,
    /// Which source sent each piece verified in this download.
    sent_by: Vec<Option<usize>>,
}

struct SourceState {
    addr: SocketAddr,
    /// Verified pieces it sent, and their bytes.
    pieces: u32,
    bytes: u64,
    /// The first piece it sent that failed its hash.
    bad: Option<u32>,
    /// Its connection, to close when the download ends and to cancel requests on.
    link: Option<Arc<source::Link>>,
}

/// A piece received, for a hasher to check.
pub(super) struct Job {
    piece: u32,
    source: usize,
    bytes: Vec<u8>,
}

impl Shared<'_> {
    fn lock(&self) -> MutexGuard<'_, State> {
        crate::lock(&self.state)
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Sets the layer (already checked) unless another source did, and starts the
    /// partial's record with it.
    fn set_layer(&self, layer: Vec<Hash>) -> anyhow::Result<()> {
        let mut state = self.lock();
        if self.layer.get().is_none() {
            let have = state.scheduler.have().clone();
            state.partial.start(&layer, &have).context("cannot write the record of a partial download")?;
            if let Some(view) = &self.view {
                let _ = view.layer.set(Arc::new(layer.clone()));
            }
            let _ = self.layer.set(layer);
        }
        drop(state);
        self.changed.notify_all();
        Ok(())
    }

    /// A buffer for a piece.
    fn buffer(&self) -> Vec<u8> {
        self.lock().spare.pop().unwrap_or_default()
    }

    fn recycle(&self, buf: Vec<u8>) {
        let mut state = self.lock();
        if state.spare.len() < 16 {
            state.spare.push(buf);
        }
    }

    /// Offers piece `i` to other peers, or stops offering it.
    fn offer(&self, i: u32, verified: bool) {
        if let Some(view) = &self.view {
            let mut have = crate::lock(&view.have);
            if verified { have.set(i) } else { have.unset(i) }
        }
    }

    /// A sender of pieces to the hashers; `None` once the download is over.
    fn jobs(&self) -> Option<mpsc::SyncSender<Job>> {
        crate::lock(&self.jobs).clone()
    }
}

/// The cores to hash pieces on, asked once: std's answer reads the cgroup's CPU quota
/// files each time (three opens), which a download of many small files would pay for
/// each file.
fn cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| thread::available_parallelism().map_or(1, |n| n.get()))
}
