//! One source of one download: a connection to a peer's file server that fetches the
//! piece layer (if nobody has yet), asks which pieces the peer holds, and then keeps a
//! few runs of pieces requested at once, more for a faster source, handing each piece
//! as it arrives to the hashing threads.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::anyhow;

use super::{DownloadConfig, Job, Shared};
use crate::content::{Bitfield, Hash, merkle};
use crate::net::{self, ConnectTimeouts, is_timeout};
use crate::peer::fileserver::MIN_PROGRESS;
use crate::text::escape;
use crate::wire::{self, FileReply, FileRequest, Message, Service};

/// Bytes kept requested from one source at least; then as many as it sends in
/// [`DEPTH_WINDOW`], within [`MAX_DEPTH_BYTES`]. Small, so that a slow source (a
/// seeder shared by a swarm) is not asked for pieces long before it can send them,
/// while others could.
const MIN_DEPTH_BYTES: u64 = 256 << 10;

/// How far ahead a source is kept busy: about a round trip on a slow path plus the
/// time to turn a request around, so that it never waits for our next request.
const DEPTH_WINDOW: Duration = Duration::from_millis(100);

/// The most bytes requested from one source at once.
const MAX_DEPTH_BYTES: u64 = 32 << 20;

/// Largest reply frame taken from a source: a piece layer of 4,096 hashes is the
/// largest a true source sends (128 KiB and a few bytes).
const MAX_REPLY_LEN: usize = 256 << 10;

/// How long a source with nothing to do waits before looking for work again (it is
/// woken sooner when a piece is verified or given back).
const IDLE_WAIT: Duration = Duration::from_millis(250);

/// Why a source stopped.
pub(super) enum End {
    /// Every piece is in, or the download stopped: nothing is wrong with this source.
    Finished,
    /// It failed; `penalize` if it stalled, lied or sent bytes that are wrong.
    Failed { why: anyhow::Error, penalize: bool },
    /// It refused for being busy (no upload slot): worth asking again later.
    Busy(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for End {
    fn from(e: E) -> End {
        End::Failed { why: e.into(), penalize: false }
    }
}

fn penalized(why: anyhow::Error) -> End {
    End::Failed { why, penalize: true }
}

/// Runs source number `id` at `addr` until the download is complete or the source
/// fails. Requests it still had out are given back.
pub(super) fn run(shared: &Shared, id: usize, addr: SocketAddr) -> End {
    let mut inflight: Vec<(u32, u32)> = Vec::new();
    let mut theirs = None;
    let end = match fetch(shared, id, addr, &mut inflight, &mut theirs) {
        Ok(()) => End::Finished,
        Err(end) => end,
    };
    let mut state = shared.lock();
    if let Some(theirs) = &theirs {
        state.scheduler.left(theirs);
    }
    for (first, count) in inflight {
        for i in first..first + count {
            state.scheduler.release(i, id);
        }
    }
    drop(state);
    shared.changed.notify_all();
    end
}

/// How often a source that holds only part of the file is asked again what it holds.
const HAVE_REFRESH: Duration = Duration::from_millis(500);

fn fetch(
    shared: &Shared,
    id: usize,
    addr: SocketAddr,
    inflight: &mut Vec<(u32, u32)>,
    held: &mut Option<Bitfield>,
) -> Result<(), End> {
    let config = shared.config;
    let root = shared.root;
    let link = Arc::new(Link::new(connect(addr, config)?, root));
    let Some(jobs) = shared.jobs() else { return Ok(()) };
    shared.lock().sources[id].link = Some(Arc::clone(&link));
    if shared.stopped() {
        return Ok(()); // stopped while we connected: the stop could not reach us
    }
    let geometry = shared.geometry;
    let mut pace = Pace::new(config.read_timeout);
    let mut reader = Paced { stream: &link.stream, pace: &mut pace };

    // The piece layer, if nobody has it yet, and what this source holds.
    let want_layer = shared.layer.get().is_none();
    if want_layer {
        link.send(&FileRequest::Layer { root })?;
    }
    link.send(&FileRequest::Have { root })?;
    if want_layer {
        match recv(&mut reader)? {
            FileReply::Layer(layer) => {
                if let Err(e) = merkle::check_layer(&geometry, &layer, &root) {
                    return Err(penalized(anyhow!("{e}")));
                }
                if let Err(e) = shared.set_layer(layer) {
                    return Err(End::Failed { why: e, penalize: false });
                }
            }
            FileReply::Error(why) => return Err(refusal(&why)),
            other => return Err(penalized(unexpected(&other, "its piece layer"))),
        }
    }
    let mut theirs = have(recv(&mut reader)?, geometry.pieces())?;
    shared.lock().scheduler.holds(&theirs);
    *held = Some(theirs.clone());
    let mut asked_have = Instant::now();
    // Runs whose answers come before that of a `Have` sent meanwhile, if one was.
    let mut have_after: Option<usize> = None;
    // The layer is known from here on: this source fetched it, or it was known when
    // this source started (it is never unset).

    let started = Instant::now();
    let mut received = 0u64;
    loop {
        if shared.stopped() || shared.lock().sources[id].bad.is_some() {
            return Ok(());
        }
        // Keep the pipeline full: as many bytes as this source sends in DEPTH_WINDOW.
        let rate = received as f64 / started.elapsed().as_secs_f64().max(0.001);
        let depth = ((rate * DEPTH_WINDOW.as_secs_f64()) as u64).clamp(MIN_DEPTH_BYTES, MAX_DEPTH_BYTES);
        let mut asked = inflight.iter().map(|&(f, c)| len_of(shared, f, c)).sum::<u64>();
        // Runs of half the depth at most (at least a piece).
        let most = u32::try_from((depth / 2 / geometry.piece_len).max(1)).unwrap_or(u32::MAX);
        while asked < depth || inflight.is_empty() {
            let mut state = shared.lock();
            let next = state.scheduler.pick(id, &theirs, most).or_else(|| {
                // Nothing fresh for this source: near the end, a piece another source
                // is still sending (the endgame). A request whose pieces all came
                // from elsewhere first is cancelled (see `verify::write_pieces`).
                let now = Instant::now();
                state.scheduler.pick_duplicate(id, &theirs, geometry.piece_len, now).map(|i| (i, 1))
            });
            drop(state);
            let Some((first, count)) = next else { break };
            inflight.push((first, count));
            asked += len_of(shared, first, count);
            link.send(&FileRequest::Get { root, first, count })?;
        }
        // A partial holder is asked again what it holds, between the other requests,
        // so that this download knows which pieces it can have from it (and which are
        // rare) as that grows.
        if !theirs.is_full() && have_after.is_none() && asked_have.elapsed() >= HAVE_REFRESH {
            link.send(&FileRequest::Have { root })?;
            have_after = Some(inflight.len());
            asked_have = Instant::now();
        }
        if have_after == Some(0) {
            let now = have(recv(&mut reader)?, geometry.pieces())?;
            let mut state = shared.lock();
            state.scheduler.left(&theirs);
            state.scheduler.holds(&now);
            drop(state);
            theirs = now;
            *held = Some(theirs.clone());
            have_after = None;
            continue;
        }
        if inflight.is_empty() {
            // Nothing to ask for now: every missing piece is on its way from others, or
            // this source does not have it (yet).
            let state = shared.lock();
            if state.scheduler.is_complete() {
                return Ok(());
            }
            drop(shared.changed.wait_timeout(state, IDLE_WAIT).expect("no panics under the lock"));
            reader.pace.restart();
            continue;
        }
        let (first, count) = inflight[0];
        let want = len_of(shared, first, count);
        let reply = recv(&mut reader)?;
        let cancelled = link.answered();
        match reply {
            FileReply::Data { first: f, count: c, len } if (f, c, len) == (first, count, want) => {}
            FileReply::Cancelled { first: f, count: c } if (f, c) == (first, count) && cancelled => {
                // Its pieces came from other sources first.
                inflight.remove(0);
                if let Some(n) = &mut have_after {
                    *n -= 1;
                }
                let mut state = shared.lock();
                for i in first..first + count {
                    state.scheduler.release(i, id);
                }
                drop(state);
                shared.changed.notify_all();
                continue;
            }
            FileReply::Data { first: f, count: c, len } => {
                return Err(penalized(anyhow!(
                    "it sent {len} bytes of pieces {f}..{} when pieces {first}..{} ({want} bytes) were next",
                    u64::from(f) + u64::from(c),
                    first + count
                )));
            }
            FileReply::Error(why) => return Err(refusal(&why)),
            other => return Err(penalized(unexpected(&other, "pieces"))),
        }
        for i in first..first + count {
            let r = geometry.piece(i);
            let mut buf = shared.buffer();
            buf.resize((r.end - r.start) as usize, 0);
            if let Err(e) = reader.read_exact(&mut buf) {
                shared.recycle(buf);
                return Err(stopped_short(e, reader.pace));
            }
            received += buf.len() as u64;
            // The piece leaves this source's hands: the hashers release it.
            inflight[0] = (i + 1, first + count - i - 1);
            if inflight[0].1 == 0 {
                inflight.remove(0);
                if let Some(n) = &mut have_after {
                    *n -= 1;
                }
            }
            if jobs.send(Job { piece: i, source: id, bytes: buf }).is_err() {
                return Ok(()); // the hashers stopped: so did the download
            }
        }
    }
}

/// A source's connection as the other threads of its download use it: to close it
/// when the download ends or the source is caught lying, and to cancel a request whose
/// pieces all came from other sources first (the endgame). Requests are written under
/// its lock, so that frames from two threads never interleave.
pub(super) struct Link {
    stream: TcpStream,
    root: Hash,
    out: Mutex<Out>,
}

/// The `Get`s on a [`Link`] whose answers have not begun.
#[derive(Default)]
struct Out {
    /// Runs asked for, as (first piece, count), in order.
    waiting: VecDeque<(u32, u32)>,
    /// Those of them cancelled.
    cancelled: Vec<(u32, u32)>,
}

impl Link {
    fn new(stream: TcpStream, root: Hash) -> Link {
        Link { stream, root, out: Mutex::default() }
    }

    fn out(&self) -> MutexGuard<'_, Out> {
        crate::lock(&self.out)
    }

    fn send(&self, request: &FileRequest) -> Result<(), End> {
        let mut out = self.out();
        wire::send_msg(&mut &self.stream, request).map_err(|e| End::from(refused(&e)))?;
        if let FileRequest::Get { first, count, .. } = *request {
            out.waiting.push_back((first, count));
        }
        Ok(())
    }

    /// The run asked for on this link, not yet begun, that holds piece `i`. `None`
    /// too while the source's thread is writing a request: the caller holds the
    /// download's lock and must not wait on one source's socket.
    pub(super) fn waiting_with(&self, i: u32) -> Option<(u32, u32)> {
        let out = self.out.try_lock().ok()?;
        out.waiting.iter().copied().find(|&(first, count)| (first..first + count).contains(&i))
    }

    /// Cancels the `Get` of `run`, unless its answer has begun. Called by the thread
    /// that writes pieces, which must not wait on one source: if the source's thread
    /// is writing a request, or the socket cannot take the few bytes at once, the
    /// request is left to be answered (and its pieces dropped).
    pub(super) fn cancel(&self, (first, count): (u32, u32)) {
        use rustix::net::{SendFlags, send};
        let Ok(mut out) = self.out.try_lock() else { return };
        if !out.waiting.contains(&(first, count)) || out.cancelled.contains(&(first, count)) {
            return;
        }
        let payload = FileRequest::Cancel { root: self.root, first, count }.encode();
        let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
        frame.extend(payload);
        match send(&self.stream, &frame, SendFlags::DONTWAIT | SendFlags::NOSIGNAL) {
            // Part of a frame cannot be left in the stream: the rest is written whole.
            Ok(n) if (&self.stream).write_all(&frame[n..]).is_ok() => out.cancelled.push((first, count)),
            _ => {}
        }
    }

    /// The answer to the first `Get` waiting has begun: was it cancelled?
    fn answered(&self) -> bool {
        let mut out = self.out();
        let Some(run) = out.waiting.pop_front() else { return false };
        let at = out.cancelled.iter().position(|&c| c == run);
        at.map(|at| out.cancelled.swap_remove(at)).is_some()
    }

    /// Ends the connection: the source thread's read returns at once.
    pub(super) fn close(&self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

/// The bitfield in a `Have` answer, checked against the file's piece count.
fn have(reply: FileReply, pieces: u32) -> Result<Bitfield, End> {
    match reply {
        FileReply::Have(bits) if bits.len() == pieces => Ok(bits),
        FileReply::Have(bits) => {
            Err(penalized(anyhow!("it sent a bitfield of {} pieces, not {pieces}", bits.len())))
        }
        FileReply::Error(why) => Err(refusal(&why)),
        other => Err(penalized(unexpected(&other, "which pieces it holds"))),
    }
}

/// Bytes in the pieces `first..first + count`.
fn len_of(shared: &Shared, first: u32, count: u32) -> u64 {
    let r = shared.geometry.pieces_range(first, count);
    r.end - r.start
}

fn connect(addr: SocketAddr, config: &DownloadConfig) -> Result<TcpStream, End> {
    let timeouts = ConnectTimeouts { connect: config.connect_timeout, io: config.read_timeout };
    net::connect(addr, Service::Files, timeouts).map_err(|e| {
        let why = match e.kind() {
            _ if is_timeout(&e) => silent(config.read_timeout),
            io::ErrorKind::ConnectionRefused
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable => anyhow!(e).context("cannot connect"),
            _ => anyhow!(e),
        };
        End::Failed { why, penalize: false }
    })
}

/// Receives one reply frame. A stall is the source's fault; anything else is a plain
/// failure.
fn recv(reader: &mut Paced) -> Result<FileReply, End> {
    let received = wire::recv_all(reader, MAX_REPLY_LEN).and_then(|frame| {
        let frame = frame.ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        Ok(FileReply::decode(&frame)?)
    });
    received.map_err(|e| match e.kind() {
        io::ErrorKind::InvalidData => penalized(anyhow!("it sent a malformed reply: {e}")),
        _ => stopped_short(e, reader.pace),
    })
}

/// The end for a read that failed: a stall (penalized), or the connection lost.
fn stopped_short(e: io::Error, pace: &Pace) -> End {
    match &pace.stalled {
        Some(why) => penalized(anyhow!("{why}")),
        None if is_timeout(&e) => penalized(silent(pace.window)),
        None => refused(&e).into(),
    }
}

/// What a failed read or write on a source's connection means to the user.
fn refused(e: &io::Error) -> anyhow::Error {
    use io::ErrorKind::*;
    match e.kind() {
        UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe => {
            anyhow!("the peer closed the connection")
        }
        _ => anyhow!("the connection failed: {e}"),
    }
}

fn refusal(why: &str) -> End {
    let e = anyhow!("the peer refused: {}", escape(why));
    // "busy: ..." is how a file server says it has no upload slot (see fileserver.rs).
    if why.starts_with("busy: ") { End::Busy(e) } else { e.into() }
}

fn unexpected(reply: &FileReply, wanted: &str) -> anyhow::Error {
    let what = match reply {
        FileReply::Layer(_) => "a piece layer",
        FileReply::Have(_) => "a bitfield",
        FileReply::Data { .. } => "pieces",
        FileReply::Error(_) => "an error",
        FileReply::Status { .. } => "a status",
        FileReply::Cancelled { .. } => "a cancel of a request that was not cancelled",
    };
    anyhow!("it answered with {what} when asked for {wanted}")
}

/// The error for a source that sent nothing within the stall window.
pub(super) fn silent(window: Duration) -> anyhow::Error {
    anyhow!("the peer sent nothing for {:.1} s", window.as_secs_f64())
}

/// The stall rule: while it has requests to answer, a source must deliver at least
/// [`MIN_PROGRESS`] bytes within every `window` (or everything asked, if less).
struct Pace {
    window: Duration,
    /// When the current window started, and the bytes received by then.
    start: Instant,
    at_start: u64,
    /// Bytes received in all.
    got: u64,
    /// Why the source was found stalled, once it was.
    stalled: Option<String>,
}

impl Pace {
    fn new(window: Duration) -> Pace {
        Pace { window, start: Instant::now(), at_start: 0, got: 0, stalled: None }
    }

    /// The source was given nothing to do for a while: that time does not count.
    fn restart(&mut self) {
        (self.start, self.at_start) = (Instant::now(), self.got);
    }

    /// Before a read: the read timeout to use, or (as an error) why the source is
    /// dropped (the window that just ended fell short).
    fn next(&mut self) -> Result<Duration, String> {
        let now = Instant::now();
        let end = self.start + self.window;
        if now < end {
            return Ok(end - now);
        }
        let moved = self.got - self.at_start;
        if moved < MIN_PROGRESS {
            let secs = self.window.as_secs_f64();
            return Err(match moved {
                0 => format!("the peer sent nothing for {secs:.1} s"),
                _ => format!(
                    "the peer sent only {moved} bytes in {secs:.1} s (at least {MIN_PROGRESS} are needed)"
                ),
            });
        }
        (self.start, self.at_start) = (now, self.got);
        Ok(self.window)
    }
}

/// A socket reader held to a [`Pace`]. The last piece of a file can be shorter than
/// [`MIN_PROGRESS`]: a source that sent all it was asked for by the end of a window
/// is never in the wrong, because a read only waits while something is owed.
struct Paced<'a> {
    stream: &'a TcpStream,
    pace: &'a mut Pace,
}

impl Read for Paced<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let timeout = match self.pace.next() {
                Ok(t) => t,
                Err(why) => {
                    self.pace.stalled = Some(why.clone());
                    return Err(io::Error::new(io::ErrorKind::TimedOut, why));
                }
            };
            self.stream.set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
            match (&mut &*self.stream).read(buf) {
                Ok(n) => {
                    self.pace.got += n as u64;
                    return Ok(n);
                }
                Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}
