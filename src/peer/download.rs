//! The downloader: ask the index who shares a name, then fetch it from one of them,
//! verified, into the shared folder.
//!
//! The candidates are tried best first: by default the least loaded, found by asking
//! every candidate's file server how busy it is (in parallel, with a short timeout;
//! one that does not answer is skipped at once), or in random order. A candidate's
//! answer is only a hint: a source that stalled or sent wrong bytes goes to the back
//! of the order for [`PENALTY`], whatever it says about itself ([`Penalties`]).
//!
//! Bytes go to a partial file in the folder, named after the content's SHA-256, while
//! being hashed; only when the size and SHA-256 of the whole file match what the index
//! advertised is the file given its name, and never over an existing file. A source
//! must deliver at least [`MIN_PROGRESS`] bytes (or the rest of the file) in every
//! stall window, or it is dropped. If a transfer is interrupted (the sender dies,
//! stalls, or stops short), the partial file stays, with a record of who sent its
//! bytes ([`super::partial`]), and the next attempt asks only for the rest.
//!
//! If a file assembled from several attempts fails its hash, nobody can tell from the
//! hash alone whose bytes were wrong: the partial is discarded, every source named, and
//! the download starts again once from byte 0 from a source that sent none of the
//! discarded bytes (or none of those before the last attempt). When that succeeds, the
//! discarded ranges are compared with the verified file, and only the sources whose
//! bytes differ are named as wrong and sent to the back of the order.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Mutex, PoisonError, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use rand::seq::SliceRandom;
use sha2::{Digest, Sha256};

use super::client::{IndexClient, unexpected};
use super::fileserver::{MIN_PROGRESS, STALL_TIMEOUT};
use super::folder::{SharedFolder, TempFile};
use super::partial::Contribution;
use crate::name::ShareName;
use crate::net::{self, ConnectTimeouts, Timed, is_timeout};
use crate::text::escape;
use crate::wire::{self, FileInfo, FileReply, FileRequest, PeerHit, Reply, Request, Service};

/// How long to wait for a sending peer to accept the connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Downloads that run at once; more wait their turn in a queue. Browsers allow 6
/// connections per host for the same reason: beyond a few, parallel transfers only
/// contend (for the network, for the folder's directory lock) without finishing
/// sooner, and each costs a thread.
pub const MAX_PARALLEL_DOWNLOADS: usize = 4;

/// How long a candidate has to answer "how busy are you?" before it is skipped.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(1);

/// Most candidates asked how busy they are, in parallel, for one download.
pub const STATUS_SAMPLE: usize = 16;

/// How long a source that stalled or sent wrong bytes stays at the back of the order.
pub const PENALTY: Duration = Duration::from_secs(10 * 60);

/// How the downloader orders the peers that share a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PeerChoice {
    /// In random order (the original design).
    Random,
    /// Least busy first: fewest uploads running, then most recent throughput, ties
    /// at random; peers that do not answer are skipped.
    LeastLoaded,
}

/// The downloader's limits; `Default` has the documented defaults.
#[derive(Clone, Debug)]
pub struct DownloadConfig {
    /// See [`CONNECT_TIMEOUT`].
    pub connect_timeout: Duration,
    /// The stall window: a source must deliver [`MIN_PROGRESS`] bytes (or the rest of
    /// the file) within each, and its handshake and header within one
    /// ([`STALL_TIMEOUT`]).
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

/// Receive buffer: large reads keep system calls off the profile at loopback speed.
const RECV_BUF_LEN: usize = 256 << 10;

/// Buffers in flight between the receiving and the hashing thread.
const PIPELINE_BUFFERS: usize = 8;

/// Sources that stalled or sent wrong bytes, each until its [`PENALTY`] is over. One
/// per peer, shared by its downloads.
#[derive(Debug, Default)]
pub struct Penalties {
    until: Mutex<HashMap<SocketAddr, Instant>>,
}

impl Penalties {
    /// Sends `source` to the back of the order for [`PENALTY`].
    pub fn penalize(&self, source: SocketAddr) {
        let mut until = self.until.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        until.retain(|_, t| *t > now);
        until.insert(source, now + PENALTY);
    }

    /// Is `source` at the back of the order now?
    pub fn holds(&self, source: SocketAddr) -> bool {
        let until = self.until.lock().unwrap_or_else(PoisonError::into_inner);
        until.get(&source).is_some_and(|t| *t > Instant::now())
    }
}

/// What a download has to say on its way, for the shell to print.
#[derive(Debug)]
pub enum Note {
    /// A source failed; `more` if another is left to try.
    SourceFailed {
        /// The source.
        from: SocketAddr,
        /// Why.
        why: anyhow::Error,
        /// Whether another source is left.
        more: bool,
    },
    /// The file assembled from several sources failed its hash and was discarded;
    /// the download starts again from byte 0 from `restart` (if any source is left).
    Discarded {
        /// Which sources sent which bytes of the discarded file.
        sources: Vec<Contribution>,
        /// The source the download starts again from.
        restart: Option<SocketAddr>,
    },
    /// Once the file was right: these bytes, from this source, were wrong; it goes to
    /// the back of the order.
    Wrong(Contribution),
}

/// A completed download.
#[derive(Debug)]
pub struct Downloaded {
    /// The file as it now is in the folder: name, size and SHA-256, verified.
    pub info: FileInfo,
    /// The peer it came from.
    pub from: SocketAddr,
    /// Bytes that were already here from an interrupted attempt (0 if none).
    pub resumed_at: u64,
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
}

/// How one attempt at one source failed.
enum Failure {
    /// This source failed. What it sent is kept if it was right so far; `penalize` if
    /// it stalled or sent bytes that are wrong.
    Source { why: anyhow::Error, penalize: bool },
    /// The whole file, assembled from several attempts, is not the advertised content:
    /// it is discarded. Each range comes with the SHA-256 of its bytes.
    Assembled { ranges: Vec<(Contribution, wire::Sha256)> },
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Failure {
        Failure::Source { why: e.into(), penalize: false }
    }
}

impl Downloader<'_> {
    /// Downloads `name` into the folder. `note` hears about each failed source, and
    /// about a discarded file, as they happen. Fails if the name exists in the folder
    /// (checked before anything is fetched), if no peer shares it, or if every one fails.
    pub fn download(&self, name: &ShareName, mut note: impl FnMut(Note)) -> anyhow::Result<Downloaded> {
        let folder = self.folder;
        if folder.contains(name) {
            bail!("a file of that name is already in the shared folder (delete it first)");
        }
        let hits = match self.index.call(&Request::Lookup { name: name.clone() })? {
            Reply::Peers(hits) => hits,
            Reply::NoPeers => bail!("no registered peer shares it"),
            Reply::Error(e) => bail!("the index server refused the lookup: {}", escape(&e)),
            other => return Err(unexpected(&other).into()),
        };
        let tried = hits.len();
        let mut queue: VecDeque<PeerHit> = self.order(name, hits, &mut note).into();
        // Set once a discarded file has made the download start again.
        let mut suspects: Option<Vec<(Contribution, wire::Sha256)>> = None;
        while let Some(hit) = queue.pop_front() {
            match self.fetch(&hit, name) {
                Ok((temp, resumed_at)) => {
                    temp.commit(folder, name, hit.sha256).map_err(|e| match e.kind() {
                        io::ErrorKind::AlreadyExists => {
                            anyhow!("a file of that name appeared in the folder meanwhile; it was kept")
                        }
                        _ => anyhow!(e).context("cannot give the download its name"),
                    })?;
                    if let Some(ranges) = suspects {
                        self.find_wrong(name, &ranges, &mut note);
                    }
                    let info = FileInfo { name: name.clone(), size: hit.size, sha256: hit.sha256 };
                    return Ok(Downloaded { info, from: hit.addr, resumed_at });
                }
                Err(Failure::Source { why, penalize }) => {
                    if penalize {
                        self.penalties.penalize(hit.addr);
                    }
                    note(Note::SourceFailed { from: hit.addr, why, more: !queue.is_empty() });
                }
                Err(Failure::Assembled { ranges }) => {
                    // The partial is gone: whoever comes next starts from byte 0.
                    let sources: Vec<Contribution> = ranges.iter().map(|(c, _)| *c).collect();
                    let restart = if suspects.is_none() {
                        suspects = Some(ranges);
                        // Start again from a source that sent none of the discarded bytes,
                        // else one that sent none before this attempt (this one, usually).
                        let sent_any = |addr: SocketAddr| sources.iter().any(|c| c.from == Some(addr));
                        let before = &sources[..sources.len() - 1];
                        let sent_before = |addr: SocketAddr| before.iter().any(|c| c.from == Some(addr));
                        queue.push_front(hit);
                        let pick = queue
                            .iter()
                            .position(|h| !sent_any(h.addr))
                            .or_else(|| queue.iter().position(|h| !sent_before(h.addr)));
                        match pick {
                            Some(i) => {
                                let chosen = queue.remove(i).expect("a position in the queue");
                                let addr = chosen.addr;
                                queue.push_front(chosen);
                                Some(addr)
                            }
                            None => {
                                queue.pop_front();
                                None
                            }
                        }
                    } else {
                        None
                    };
                    note(Note::Discarded { sources, restart });
                }
            }
        }
        match tried {
            1 => bail!("the only peer that shares it failed"),
            n => bail!("all {n} peers that share it failed"),
        }
    }

    /// The candidates in the order to try them: see the module docs.
    fn order(&self, name: &ShareName, mut hits: Vec<PeerHit>, note: &mut impl FnMut(Note)) -> Vec<PeerHit> {
        hits.shuffle(&mut rand::rng());
        // With one candidate there is nothing to choose: do not ask it how busy it is.
        if self.config.choice == PeerChoice::LeastLoaded && hits.len() > 1 {
            // A popular file can have thousands of sharers: ask a random sample of them
            // (one thread each); the others stay behind, in random order, as a reserve.
            let reserve = hits.split_off(hits.len().min(STATUS_SAMPLE));
            let (ranked, dead) = rank(hits, self.config);
            let more = !ranked.is_empty() || !reserve.is_empty();
            for (hit, why) in dead {
                note(Note::SourceFailed { from: hit.addr, why, more });
            }
            if let Some((best, (uploads, rate))) = ranked.first() {
                log::debug!(
                    "downloading {name:?} from {}: {uploads} uploads running, {rate} bytes/s recently; the least loaded of {} asked",
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

    /// After a restart succeeded: compares each range of the discarded file with the
    /// verified one, and names (and penalizes) the sources whose bytes were wrong.
    fn find_wrong(
        &self,
        name: &ShareName,
        ranges: &[(Contribution, wire::Sha256)],
        note: &mut impl FnMut(Note),
    ) {
        let Ok(mut file) = File::open(self.folder.root().join(name)) else { return };
        let contributions: Vec<Contribution> = ranges.iter().map(|(c, _)| *c).collect();
        let Ok(right) = hash_ranges(&mut file, &contributions) else { return };
        for ((c, sent), right) in ranges.iter().zip(right) {
            if *sent != right {
                if let Some(from) = c.from {
                    self.penalties.penalize(from);
                }
                note(Note::Wrong(*c));
            }
        }
    }

    /// Fetches `name` from one source into its partial file, resuming from what is
    /// already there, and verifies the whole file against what the index advertised for
    /// that source. Returns the file and where this attempt started.
    fn fetch(&self, hit: &PeerHit, name: &ShareName) -> Result<(TempFile, u64), Failure> {
        let (folder, config) = (self.folder, self.config);
        let (size, sha256) = (hit.size, hit.sha256);
        let partial =
            folder.partial(&sha256).context("cannot create a temporary file in the shared folder")?;
        let (mut temp, mut have) = match partial {
            Some(partial) => partial,
            // The same content is being fetched under another name right now: start afresh.
            None => (folder.create_temp().context("cannot create a temporary file in the shared folder")?, 0),
        };
        if have > size {
            temp.truncate()?;
            have = 0;
        }
        let mut free = folder.free_space().unwrap_or(u64::MAX);
        if size - have > free {
            // Partials kept from other downloads give way before this one is refused.
            if let Ok((freed, n)) = folder.evict_partials(size - have - free)
                && n > 0
            {
                log::info!("deleted {n} kept partial downloads ({freed} bytes) to make room for {name:?}");
                free = folder.free_space().unwrap_or(u64::MAX);
            }
        }
        if size - have > free {
            return Err(anyhow!(
                "the file is {size} bytes, more than the {free} bytes free in the shared folder"
            )
            .into());
        }
        // The whole file is verified, so the bytes already here are hashed first.
        let mut hasher = Sha256::new();
        if have > 0
            && let Err(e) = hash_range(temp.file(), 0, have, &mut hasher)
        {
            temp.truncate()?;
            return Err(anyhow!(e).context("cannot read the partial download").into());
        }
        let keep = |temp: TempFile, why: anyhow::Error, penalize: bool| {
            temp.keep();
            Failure::Source { why, penalize }
        };
        let stream = match request(hit.addr, name, have, config) {
            Ok(stream) => stream,
            Err(e) => return Err(keep(temp, e, false)),
        };
        let header = {
            let mut r = Timed::deadline(&stream, Instant::now() + config.read_timeout);
            wire::recv_msg::<FileReply>(&mut r)
        };
        let header = match header {
            Ok(FileReply::Header { size, sha256 }) => (size, sha256),
            Ok(FileReply::Error(e)) => {
                return Err(keep(temp, anyhow!("the peer refused: {}", escape(&e)), false));
            }
            Ok(FileReply::Status { .. }) => {
                return Err(keep(temp, anyhow!("the peer answered a status"), true));
            }
            Err(e) if is_timeout(&e) => return Err(keep(temp, silent(config), true)),
            Err(e) => return Err(keep(temp, e.into(), false)),
        };
        if header != (size, sha256) {
            let e = anyhow!(
                "the peer now offers {} bytes with SHA-256 {}, not the {size} bytes with SHA-256 {} it registered",
                header.0,
                hex::encode(header.1),
                hex::encode(sha256)
            );
            return Err(keep(temp, e, false));
        }

        let mut pace = Pace::new(config.read_timeout, have, size);
        let received = receive(&stream, temp.file(), &mut pace, hasher);
        let (got, actual) = match received {
            Ok(received) => received,
            Err(Stop::Interrupted { got, why, stalled }) => {
                temp.record_source(hit.addr, have, have + got);
                let at = have + got;
                let why = match at {
                    0 => anyhow!("{why}"),
                    at => anyhow!("{why} (the first {at} bytes are kept, to resume from there)"),
                };
                return Err(keep(temp, why, stalled));
            }
            Err(Stop::Local(e)) => return Err(e.into()),
        };
        temp.record_source(hit.addr, have, have + got);
        if have + got < size {
            let kept = match have + got {
                0 => String::new(),
                n => format!(" (kept, to resume from byte {n})"),
            };
            return Err(keep(
                temp,
                anyhow!("the peer sent only {} of {size} bytes{kept}", have + got),
                false,
            ));
        }
        let mut extra = [0u8; 1];
        if (&stream).read(&mut extra).unwrap_or(0) > 0 {
            let why = anyhow!("the peer sent more than the {size} bytes it announced");
            return Err(Failure::Source { why, penalize: true });
        }
        if actual != sha256 {
            let sources = temp.sources().to_vec();
            if sources.iter().all(|c| c.from == Some(hit.addr)) {
                // Every byte came from this source: it is the one that is wrong.
                let why = anyhow!(
                    "SHA-256 mismatch: expected {}, received {}",
                    hex::encode(sha256),
                    hex::encode(actual)
                );
                return Err(Failure::Source { why, penalize: true });
            }
            let hashes = hash_ranges(temp.file(), &sources)?;
            return Err(Failure::Assembled { ranges: sources.into_iter().zip(hashes).collect() });
        }
        Ok((temp, have))
    }
}

/// The error for a source that sent nothing within the stall window.
fn silent(config: &DownloadConfig) -> anyhow::Error {
    anyhow!("the peer sent nothing for {:.1} s", config.read_timeout.as_secs_f64())
}

/// Connects to a source and asks for `name` from byte `offset`.
fn request(
    addr: SocketAddr,
    name: &ShareName,
    offset: u64,
    config: &DownloadConfig,
) -> anyhow::Result<TcpStream> {
    let timeouts = ConnectTimeouts { connect: config.connect_timeout, io: config.read_timeout };
    let stream = net::connect(addr, Service::Files, timeouts).map_err(|e| match e.kind() {
        _ if is_timeout(&e) => silent(config),
        io::ErrorKind::ConnectionRefused
        | io::ErrorKind::HostUnreachable
        | io::ErrorKind::NetworkUnreachable => anyhow!(e).context("cannot connect"),
        _ => anyhow!(e),
    })?;
    wire::send_msg(&mut &stream, &FileRequest::Get { name: name.to_string(), offset })?;
    Ok(stream)
}

/// Asks every candidate how busy it is, in parallel. Returns those that answered,
/// least loaded first (the order of `hits`, already random, breaks ties), each with
/// its answer, and those that did not, with why.
#[allow(clippy::type_complexity)]
fn rank(
    hits: Vec<PeerHit>,
    config: &DownloadConfig,
) -> (Vec<(PeerHit, (u32, u64))>, Vec<(PeerHit, anyhow::Error)>) {
    let answers: Vec<anyhow::Result<Load>> = thread::scope(|scope| {
        let asks: Vec<_> = hits.iter().map(|hit| scope.spawn(|| status(hit.addr, config))).collect();
        asks.into_iter().map(|a| a.join().expect("asking does not panic")).collect()
    });
    let (mut ranked, mut dead) = (Vec::new(), Vec::new());
    for (hit, answer) in hits.into_iter().zip(answers) {
        match answer {
            Ok(load) => ranked.push((hit, load)),
            Err(e) => dead.push((hit, anyhow!("{e:#} (when asked how busy it is)"))),
        }
    }
    // Fewest uploads first; among equals, the one that has been sending fastest.
    ranked.sort_by_key(|(_, (uploads, rate))| (*uploads, std::cmp::Reverse(*rate)));
    (ranked, dead)
}

/// One peer's answer to "how busy are you?": (uploads running, recent bytes per second).
type Load = (u32, u64);

/// Asks one peer how busy it is.
fn status(addr: SocketAddr, config: &DownloadConfig) -> anyhow::Result<Load> {
    let timeouts =
        ConnectTimeouts { connect: STATUS_TIMEOUT.min(config.connect_timeout), io: STATUS_TIMEOUT };
    let answer = net::connect(addr, Service::Files, timeouts).and_then(|stream| {
        wire::send_msg(&mut &stream, &FileRequest::Status)?;
        wire::recv_msg(&mut Timed::deadline(&stream, Instant::now() + STATUS_TIMEOUT))
    });
    let answer = answer.map_err(|e| match e.kind() {
        _ if is_timeout(&e) => anyhow!("the peer sent nothing for {:.1} s", STATUS_TIMEOUT.as_secs_f64()),
        io::ErrorKind::ConnectionRefused => anyhow!(e).context("cannot connect"),
        _ => anyhow!(e),
    })?;
    match answer {
        FileReply::Status { uploads, bytes_per_sec } => Ok((uploads, bytes_per_sec)),
        FileReply::Error(e) => bail!("the peer refused: {}", escape(&e)),
        FileReply::Header { .. } => bail!("the peer answered with a file"),
    }
}

/// Feeds the bytes `start..end` of `file` to `hasher`; leaves the file at `end`.
fn hash_range(file: &mut File, start: u64, end: u64, hasher: &mut Sha256) -> io::Result<()> {
    file.seek(io::SeekFrom::Start(start))?;
    let mut buf = vec![0u8; RECV_BUF_LEN];
    let mut left = end - start;
    while left > 0 {
        let n = file.read(&mut buf[..(left.min(RECV_BUF_LEN as u64) as usize)])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(())
}

/// The SHA-256 of each range of `file`.
fn hash_ranges(file: &mut File, ranges: &[Contribution]) -> io::Result<Vec<wire::Sha256>> {
    ranges
        .iter()
        .map(|c| {
            let mut hasher = Sha256::new();
            hash_range(file, c.start, c.end, &mut hasher)?;
            Ok(hasher.finalize().into())
        })
        .collect()
}

/// The stall rule: a source must deliver at least [`MIN_PROGRESS`] bytes (or the rest
/// of the file) within every `window`.
struct Pace {
    window: Duration,
    /// When the current window started, and the bytes received by then.
    start: Instant,
    at_start: u64,
    /// Bytes received before this attempt, and the file's size.
    before: u64,
    size: u64,
}

impl Pace {
    fn new(window: Duration, before: u64, size: u64) -> Pace {
        Pace { window, start: Instant::now(), at_start: 0, before, size }
    }

    /// Before a read, with `got` bytes received in this attempt: the read timeout to
    /// use, or why the source is dropped (the window that just ended fell short).
    fn next(&mut self, got: u64) -> Result<Duration, String> {
        let now = Instant::now();
        let end = self.start + self.window;
        if now < end {
            return Ok(end - now);
        }
        let left = self.size - self.before - self.at_start;
        let need = MIN_PROGRESS.min(left);
        let moved = got - self.at_start;
        if moved < need {
            let at = self.before + got;
            let secs = self.window.as_secs_f64();
            return Err(match moved {
                0 => format!("the peer sent nothing for {secs:.1} s after {at} of {} bytes", self.size),
                _ => format!(
                    "the peer sent only {moved} bytes in {secs:.1} s (at least {need} are needed), after {at} of {} bytes",
                    self.size
                ),
            });
        }
        (self.start, self.at_start) = (now, got);
        Ok(self.window)
    }
}

/// Why [`receive`] stopped early.
enum Stop {
    /// The source stopped part-way (died, stalled, failed) through bytes that were
    /// correct so far as we know: what was received is worth keeping.
    Interrupted {
        /// Bytes received in this attempt (all written).
        got: u64,
        /// What happened.
        why: String,
        /// The source stalled (rather than failing outright).
        stalled: bool,
    },
    /// Writing to the folder failed.
    Local(anyhow::Error),
}

/// Copies at most `size` bytes from `stream` to `out` and hashes them, in one pass
/// over the data, holding the source to `pace`. Returns the count and the hash. An
/// early end of stream is a short count.
///
/// Receiving and writing run on this thread while a second thread hashes the buffers
/// just written (still in cache): SHA-256 is the most expensive step, and on two cores
/// running it beside the network copy instead of after it nearly doubles throughput.
/// Buffers go round a small pool, so memory stays at [`PIPELINE_BUFFERS`] x
/// [`RECV_BUF_LEN`].
fn receive(
    stream: &TcpStream,
    out: &mut impl Write,
    pace: &mut Pace,
    mut hasher: Sha256,
) -> Result<(u64, wire::Sha256), Stop> {
    let size = pace.size - pace.before;
    if size <= RECV_BUF_LEN as u64 {
        // One buffer's worth: a second thread would cost more than it saves.
        let mut buf = vec![0u8; size as usize];
        let filled = fill(stream, &mut buf, 0, pace);
        let n = match &filled {
            Ok(n) => *n,
            Err(Stop::Interrupted { got, .. }) => *got as usize,
            Err(Stop::Local(_)) => 0,
        };
        // What arrived before an interruption is written too: it is kept for resuming.
        out.write_all(&buf[..n]).context("cannot write to the shared folder").map_err(Stop::Local)?;
        filled?;
        hasher.update(&buf[..n]);
        return Ok((n as u64, hasher.finalize().into()));
    }
    let (to_hasher, filled) = mpsc::sync_channel::<Vec<u8>>(PIPELINE_BUFFERS);
    let (to_pool, emptied) = mpsc::channel::<Vec<u8>>();
    thread::scope(|scope| {
        let hasher = scope.spawn(move || {
            for buf in filled {
                hasher.update(&buf);
                let _ = to_pool.send(buf);
            }
            wire::Sha256::from(hasher.finalize())
        });
        let mut got = 0u64;
        let mut allocated = 0;
        let copied = (|| {
            while got < size {
                let mut buf = match emptied.try_recv() {
                    Ok(buf) => buf,
                    Err(_) if allocated < PIPELINE_BUFFERS => {
                        allocated += 1;
                        Vec::with_capacity(RECV_BUF_LEN)
                    }
                    Err(_) => emptied.recv().expect("the hasher returns every buffer"),
                };
                let want = (size - got).min(RECV_BUF_LEN as u64) as usize;
                buf.resize(want, 0);
                let filled = fill(stream, &mut buf, got, pace);
                let n = match &filled {
                    Ok(n) => *n,
                    Err(Stop::Interrupted { got: at, .. }) => (*at - got) as usize,
                    Err(Stop::Local(_)) => 0,
                };
                buf.truncate(n);
                out.write_all(&buf).context("cannot write to the shared folder").map_err(Stop::Local)?;
                got += n as u64;
                to_hasher.send(buf).expect("the hasher runs until the sender is dropped");
                filled?;
                if n < want {
                    break; // end of stream: a short transfer
                }
            }
            Ok(())
        })();
        drop(to_hasher);
        let sha256 = hasher.join().expect("hashing does not panic");
        copied.map(|()| (got, sha256))
    })
}

/// Reads into `buf` until it is full or the stream ends; returns the bytes read.
/// `before` bytes of this attempt were received before this call; an interruption
/// reports the total including what this call read (the caller keeps those bytes).
fn fill(mut stream: &TcpStream, buf: &mut [u8], before: u64, pace: &mut Pace) -> Result<usize, Stop> {
    let mut n = 0;
    while n < buf.len() {
        let got = before + n as u64;
        let interrupted = |why: String, stalled: bool| Stop::Interrupted { got, why, stalled };
        let timeout = pace.next(got).map_err(|why| interrupted(why, true))?;
        stream
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
            .map_err(|e| Stop::Local(e.into()))?;
        match stream.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted || is_timeout(&e) => {}
            Err(e) => {
                let why = format!("receiving failed after {} of {} bytes: {e}", pace.before + got, pace.size);
                return Err(interrupted(why, false));
            }
        }
    }
    Ok(n)
}
