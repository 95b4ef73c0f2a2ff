//! The peer's file server: one thread per downloader connection, which asks about one
//! content (named by its root) at a time, with pipelined requests answered in order:
//! its piece layer, which pieces are here, and runs of pieces, sent straight from the
//! file by the kernel. The messages are drawn in [`crate::wire::files`].
//!
//! What one client can take is bounded: connections per client address (the accept
//! loop, [`crate::net::serve`]), uploads per client address (a connection takes an
//! upload slot with its first `Get`, or its first `Layer` of a shared file, which may
//! mean hashing the file again, and keeps it until it closes; a request over the limit
//! is refused with a reason; a `Status` needs no upload slot, so it is answered
//! even when every slot is busy), and time: a downloader that takes less than
//! [`MIN_PROGRESS`] bytes in any `stall_timeout` is dropped, and a connection that asks
//! nothing for a stall window is closed.
//!
//! Super-seeding (BitTorrent's BEP 16, done with `Have`): while several downloaders
//! fetch one shared file from this peer at once, each is told it holds only the pieces
//! nobody has asked it for yet in this round, so that each piece leaves this peer
//! once and the downloaders trade the rest among themselves; once every piece has been
//! asked for, or with one downloader, every piece is listed. Any piece asked for is
//! sent: the list only steers what downloaders ask (they ask a source that lists
//! fewer than all pieces again every half second).

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use log::info;

use super::folder::{OpenFile, PartialView, SharedFolder};
use crate::content::{Bitfield, Geometry, Hash};
use crate::net::{self, ConnLimits, Full, Live, Slot, Slots, Timed, close_gently, is_timeout};
use crate::text::{count, escape};
use crate::wire::{self, FileReply, FileRequest, Message, Service};

/// Largest request frame a file server accepts: the longest request is a `Get` of 41
/// bytes, so 4 KiB is ample (OpenNap's whole command limit is 2,048 bytes).
pub const MAX_REQUEST_LEN: usize = 4096;

/// Most connections to a file server at once: twice [`MAX_UPLOADS`], so that
/// handshakes and `Status` questions find room while every upload slot is busy.
pub const MAX_CONNECTIONS: usize = 1024;

/// Most connections from one client address at once: a downloader needs one per
/// download it takes from this peer (4 by default) and one per status question; 16 leaves room for a few
/// peers behind one NAT, and 600 silent sockets from one address fill 16, not all.
pub const MAX_CONNECTIONS_PER_IP: usize = 16;

/// Most uploads served at once, nginx's default `worker_connections`; further
/// downloaders are refused with a reason and try another peer.
pub const MAX_UPLOADS: usize = 512;

/// Most uploads to one client address at once: as many as a peer downloads at once
/// ([`super::download::MAX_PARALLEL_DOWNLOADS`]).
pub const MAX_UPLOADS_PER_IP: usize = 4;

/// How long a downloader has, from connecting, to send its handshake and request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A transfer that moves fewer bytes than this in a stall window (30 s by default, an
/// option on each side) is given up: 64 KiB is one TCP window, about 17 kbit/s over
/// 30 s, far below any link that can carry files, far above what a slowloris drips.
pub const MIN_PROGRESS: u64 = 64 << 10;

/// The default stall window of uploads and downloads: see [`MIN_PROGRESS`].
pub const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Limits of a file server; `Default` has the documented defaults.
#[derive(Clone, Debug)]
pub struct FileServerConfig {
    /// See [`MAX_CONNECTIONS`] and [`MAX_CONNECTIONS_PER_IP`].
    pub connections: ConnLimits,
    /// See [`MAX_UPLOADS`] and [`MAX_UPLOADS_PER_IP`].
    pub uploads: ConnLimits,
    /// See [`REQUEST_TIMEOUT`].
    pub request_timeout: Duration,
    /// An upload whose downloader takes less than [`MIN_PROGRESS`] bytes in this long
    /// is closed: [`STALL_TIMEOUT`].
    pub stall_timeout: Duration,
}

impl Default for FileServerConfig {
    fn default() -> Self {
        FileServerConfig {
            connections: ConnLimits { max: MAX_CONNECTIONS, per_ip: MAX_CONNECTIONS_PER_IP },
            uploads: ConnLimits { max: MAX_UPLOADS, per_ip: MAX_UPLOADS_PER_IP },
            request_timeout: REQUEST_TIMEOUT,
            stall_timeout: STALL_TIMEOUT,
        }
    }
}

/// What every upload thread shares.
struct Shared {
    folder: Arc<SharedFolder>,
    config: FileServerConfig,
    uploads: Slots,
    throughput: Throughput,
    rounds: Rounds,
}

/// The super-seeding rounds of the shared files being served (see the module docs),
/// by root; a file's round ends when its last connection does.
#[derive(Clone, Default)]
struct Rounds(Arc<Mutex<HashMap<Hash, Round>>>);

struct Round {
    /// Connections asking about this file now.
    connections: usize,
    /// Its pieces asked for (by a `Get` on any of them) in this round.
    asked: Bitfield,
}

/// One connection's place in a file's [`Round`], left when dropped.
struct InRound {
    rounds: Rounds,
    root: Hash,
}

impl Rounds {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Hash, Round>> {
        crate::lock(&self.0)
    }

    fn join(&self, root: Hash, pieces: u32) -> InRound {
        let mut rounds = self.lock();
        let round =
            rounds.entry(root).or_insert_with(|| Round { connections: 0, asked: Bitfield::empty(pieces) });
        round.connections += 1;
        InRound { rounds: self.clone(), root }
    }
}

impl InRound {
    /// What this file's server tells a downloader it holds: the pieces not yet asked
    /// for while others fetch it too, otherwise all.
    fn have(&self, pieces: u32) -> Bitfield {
        let rounds = self.rounds.lock();
        match rounds.get(&self.root) {
            Some(round) if round.connections > 1 && !round.asked.is_full() => round.asked.complement(),
            _ => Bitfield::full(pieces),
        }
    }

    fn asked(&self, first: u32, count: u32) {
        if let Some(round) = self.rounds.lock().get_mut(&self.root) {
            (first..first + count).for_each(|i| round.asked.set(i));
        }
    }
}

impl Drop for InRound {
    fn drop(&mut self) {
        let mut rounds = self.rounds.lock();
        if let Some(round) = rounds.get_mut(&self.root) {
            round.connections -= 1;
            if round.connections == 0 {
                rounds.remove(&self.root);
            }
        }
    }
}

/// Serves files from `folder` on an already-bound listener, forever.
pub fn serve(listener: TcpListener, folder: Arc<SharedFolder>, config: FileServerConfig) -> io::Result<()> {
    let limits = config.connections;
    let uploads = Slots::new(config.uploads.max, config.uploads.per_ip);
    let rounds = Rounds::default();
    let shared = Arc::new(Shared { folder, config, uploads, throughput: Throughput::default(), rounds });
    net::serve(listener, "files", limits, Live::default(), move |stream, from, _slot: Slot| {
        if let Err(e) = handle(&shared, stream, from) {
            info!("upload to {from} failed: {e}");
            if e.kind() == io::ErrorKind::InvalidData {
                close_gently(stream, Duration::from_secs(1));
            }
        }
    })
}

fn handle(shared: &Shared, stream: &TcpStream, from: SocketAddr) -> io::Result<()> {
    let config = &shared.config;
    stream.set_nodelay(true)?;
    stream.set_write_timeout(Some(config.stall_timeout))?;
    // The handshake must arrive within one deadline, however slowly it trickles in.
    let mut reader = BufReader::new(Timed::deadline(stream, Instant::now() + config.request_timeout));
    let mut writer = stream;
    wire::server_handshake(&mut reader, &mut writer, Service::Files, MAX_REQUEST_LEN)?;

    let mut upload = None;
    let mut serving: Option<Serving> = None;
    let (mut requests, mut sent) = (0u64, 0u64);
    let mut queue = Queue::default();
    let result = loop {
        // Every request that has arrived is read before the next answer, so that a
        // `Cancel` finds the `Get` it names still waiting.
        if let Err(e) = queue.read_ahead(&mut reader, stream, config.request_timeout) {
            break Err(e);
        }
        let request = match queue.items.pop_front() {
            Some(Queued::Request { request: FileRequest::Get { first, count, .. }, cancelled: true }) => {
                wire::send_msg(&mut writer, &FileReply::Cancelled { first, count })?;
                continue;
            }
            Some(Queued::Request { request, .. }) => request,
            Some(Queued::Malformed { why, error }) => {
                // The stream may not be what we think it is any more: answer, then close.
                refuse(writer, from, why)?;
                break Err(error);
            }
            None if queue.done => break Ok(()),
            None => {
                // Between requests a downloader may wait for its other sources (a
                // stall window); once a request starts, it must arrive whole within the
                // request timeout.
                reader.get_mut().await_frame(config.stall_timeout, config.request_timeout);
                match queue.read(&mut reader) {
                    Ok(()) => continue,
                    Err(e) if is_timeout(&e) && reader.get_ref().frame_deadline().is_none() => break Ok(()), // idle
                    Err(e) => break Err(e),
                }
            }
        };
        let root = match request {
            FileRequest::Status => {
                // Uploads sending file bytes now: not this question, nor handshakes.
                let uploads = shared.uploads.taken() as u32;
                let reply = FileReply::Status { uploads, bytes_per_sec: shared.throughput.rate() };
                wire::send_msg(&mut writer, &reply)?;
                continue;
            }
            FileRequest::Cancel { .. } => unreachable!("a Cancel is never queued"),
            FileRequest::Layer { root } | FileRequest::Have { root } | FileRequest::Get { root, .. } => root,
        };
        if serving.as_ref().is_none_or(|s| s.root != root) {
            match shared.folder.open_root(&root) {
                Ok(open) => serving = Some(Serving::complete(open, &shared.rounds)),
                Err(why) => match shared.folder.offered(&root) {
                    Some(view) => serving = Some(Serving::partial(root, view)),
                    None => {
                        refuse(writer, from, format!("cannot send the content {}: {why}", short(&root)))?;
                        continue;
                    }
                },
            }
        }
        let s = serving.as_ref().expect("set above");
        match request {
            FileRequest::Layer { .. } => {
                // A shared file's layer may have to be computed again by hashing the
                // whole file: work like an upload's, so it takes an upload slot too (a
                // client cannot make us hash more files at once than it may download).
                if upload.is_none() && s.partial.is_none() {
                    match take_upload(shared, from) {
                        Ok(slot) => upload = Some(slot),
                        Err(why) => {
                            refuse(writer, from, why)?;
                            continue;
                        }
                    }
                }
                match s.layer(&shared.folder) {
                    Ok(layer) => wire::send_msg(&mut writer, &FileReply::Layer(layer.to_vec()))?,
                    Err(why) => {
                        refuse(writer, from, format!("cannot send the piece layer of {:?}: {why}", s.name()))?
                    }
                }
            }
            FileRequest::Have { .. } => wire::send_msg(&mut writer, &FileReply::Have(s.have()))?,
            FileRequest::Get { first, count, .. } => {
                let pieces = s.geometry.pieces();
                if count == 0 || first.checked_add(count).is_none_or(|end| end > pieces) {
                    let why = format!(
                        "cannot send pieces {first}..{} of {:?}: it has {}",
                        u64::from(first) + u64::from(count),
                        s.name(),
                        crate::text::count(pieces, "piece")
                    );
                    refuse(writer, from, why)?;
                    continue;
                }
                if let Some(view) = &s.partial {
                    let held = crate::lock(&view.have).clone();
                    if !(first..first + count).all(|i| held.get(i)) {
                        let why = format!(
                            "cannot send pieces {first}..{} of {:?}: this peer holds {} of its {pieces} pieces (it is downloading it)",
                            first + count,
                            s.name(),
                            held.count()
                        );
                        refuse(writer, from, why)?;
                        continue;
                    }
                }
                if upload.is_none() {
                    match take_upload(shared, from) {
                        Ok(slot) => upload = Some(slot),
                        Err(why) => {
                            refuse(writer, from, why)?;
                            continue;
                        }
                    }
                }
                if let Some(round) = &s.round {
                    round.asked(first, count);
                }
                let range = s.geometry.pieces_range(first, count);
                let len = range.end - range.start;
                wire::send_msg(&mut writer, &FileReply::Data { first, count, len })?;
                let n = send_body(s.file(), range.start, len, writer, shared)?;
                requests += 1;
                sent += n;
                if n < len {
                    // The file shrank under us: the stream is short, so it must end.
                    break Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("{:?} shrank while being sent", s.name()),
                    ));
                }
            }
            FileRequest::Status | FileRequest::Cancel { .. } => unreachable!("answered above"),
        }
    };
    if let Some(s) = &serving
        && requests > 0
    {
        info!("sent {:?} to {from}: {sent} bytes in {}", s.name(), count(requests, "request"));
    }
    result
}

/// Most requests read but not yet answered on one connection. A downloader keeps
/// about 100 ms of a source's bytes asked for, in runs of up to 1 MiB: a few dozen
/// requests. Past this many the server reads no further ahead (the rest waits in the
/// socket), which bounds a connection's memory however many requests it sends.
pub const MAX_QUEUED: usize = 256;

/// Requests read ahead of their answers, in order.
#[derive(Default)]
struct Queue {
    items: VecDeque<Queued>,
    /// Nothing more is to be read: the client closed its side, or sent something that
    /// was not a request (the stream may be out of step).
    done: bool,
}

enum Queued {
    /// A request to answer in its turn; a `Get` may have been cancelled meanwhile.
    Request { request: FileRequest, cancelled: bool },
    /// A frame that was not a request: refused with `why` in its turn, and then the
    /// connection ends with `error`.
    Malformed { why: String, error: io::Error },
}

impl Queue {
    /// Reads the requests that have arrived, without waiting for more. One whose first
    /// bytes arrived must arrive whole within `timeout`.
    fn read_ahead(
        &mut self,
        reader: &mut BufReader<Timed>,
        stream: &TcpStream,
        timeout: Duration,
    ) -> io::Result<()> {
        while !self.done
            && self.items.len() < MAX_QUEUED
            && (!reader.buffer().is_empty() || readable(stream)?)
        {
            reader.get_mut().await_frame(timeout, timeout);
            self.read(reader)?;
        }
        Ok(())
    }

    /// Reads one request (waiting for it as `reader` is set to): a `Cancel` marks the
    /// `Get` it names; anything else joins the queue.
    fn read(&mut self, reader: &mut BufReader<Timed>) -> io::Result<()> {
        let frame = match wire::recv_all(reader, MAX_REQUEST_LEN) {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                self.done = true;
                return Ok(());
            }
            Err(error) if error.kind() == io::ErrorKind::InvalidData => {
                self.malformed(format!("request refused: {error}"), error);
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        match FileRequest::decode(&frame) {
            Ok(FileRequest::Cancel { root, first, count }) => {
                let named = FileRequest::Get { root, first, count };
                let waiting = self.items.iter_mut().find_map(|q| match q {
                    Queued::Request { request, cancelled: cancelled @ false } if *request == named => {
                        Some(cancelled)
                    }
                    _ => None,
                });
                if let Some(cancelled) = waiting {
                    *cancelled = true;
                }
            }
            Ok(request) => self.items.push_back(Queued::Request { request, cancelled: false }),
            Err(e) => self.malformed(format!("malformed request: {e}"), e.into()),
        }
        Ok(())
    }

    fn malformed(&mut self, why: String, error: io::Error) {
        self.items.push_back(Queued::Malformed { why, error });
        self.done = true;
    }
}

/// Has `stream` bytes (or an end) to read now?
fn readable(stream: &TcpStream) -> io::Result<bool> {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let mut fds = [PollFd::new(stream, PollFlags::IN)];
    let now = Timespec { tv_sec: 0, tv_nsec: 0 };
    Ok(poll(&mut fds, Some(&now))? > 0)
}

/// The content a connection is asking about, opened once for all its requests: a
/// shared file, or a partial download whose verified pieces are on offer.
struct Serving {
    root: Hash,
    geometry: Geometry,
    open: Option<OpenFile>,
    partial: Option<Arc<PartialView>>,
    /// A shared file's super-seeding round.
    round: Option<InRound>,
}

impl Serving {
    fn complete(open: OpenFile, rounds: &Rounds) -> Serving {
        let geometry = Geometry::for_size(open.info.size);
        let round = Some(rounds.join(open.info.root, geometry.pieces()));
        Serving { root: open.info.root, geometry, open: Some(open), partial: None, round }
    }

    fn partial(root: Hash, view: Arc<PartialView>) -> Serving {
        Serving { root, geometry: view.geometry, open: None, partial: Some(view), round: None }
    }

    fn name(&self) -> &str {
        match (&self.open, &self.partial) {
            (Some(open), _) => open.info.name.as_str(),
            (None, Some(view)) => view.name.as_str(),
            (None, None) => unreachable!("a Serving is one or the other"),
        }
    }

    fn file(&self) -> &File {
        match (&self.open, &self.partial) {
            (Some(open), _) => &open.file,
            (None, Some(view)) => &view.file,
            (None, None) => unreachable!("a Serving is one or the other"),
        }
    }

    /// The verified pieces here, as told to a downloader: of a shared file, all, or
    /// those nobody asked for yet while others fetch it too (super-seeding).
    fn have(&self) -> Bitfield {
        match (&self.partial, &self.round) {
            (Some(view), _) => crate::lock(&view.have).clone(),
            (None, Some(round)) => round.have(self.geometry.pieces()),
            (None, None) => Bitfield::full(self.geometry.pieces()),
        }
    }

    fn layer(&self, folder: &SharedFolder) -> Result<Arc<Vec<Hash>>, String> {
        match (&self.open, &self.partial) {
            (Some(open), _) => folder.layer(open).map_err(|e| e.to_string()),
            (None, Some(view)) => {
                view.layer.get().cloned().ok_or_else(|| "this peer does not have it yet".to_owned())
            }
            (None, None) => unreachable!("a Serving is one or the other"),
        }
    }
}

/// An upload slot for `from`, or why there is none (a refusal starting with "busy: ",
/// which downloaders take as a reason to ask again later).
fn take_upload(shared: &Shared, from: SocketAddr) -> Result<Slot, String> {
    shared.uploads.take(from.ip()).map_err(|full| match full {
        Full::All(max) => format!("busy: {max} uploads already running; try another peer"),
        Full::ThisAddress(max) => {
            format!("busy: {max} uploads to your address already running (the most allowed)")
        }
    })
}

/// A root as a person reads it: its first 8 hex digits.
fn short(root: &Hash) -> String {
    hex::encode(&root[..4])
}

/// Sends `len` bytes of `file` from byte `offset`, letting the kernel move them
/// (`sendfile` on Linux), a chunk at a time so the throughput meter sees progress.
/// Exactly `len` bytes are sent even if the file grows meanwhile; if it shrinks, the
/// downloader sees a short transfer. A downloader that takes less than
/// [`MIN_PROGRESS`] bytes in any `stall_timeout` is given up on (`TimedOut`).
fn send_body(file: &File, offset: u64, len: u64, to: &TcpStream, shared: &Shared) -> io::Result<u64> {
    const CHUNK: u64 = 4 << 20;
    let stall = shared.config.stall_timeout;
    let mut sent = 0;
    let (mut window_start, mut at_window_start) = (Instant::now(), 0);
    while sent < len {
        let now = Instant::now();
        if now >= window_start + stall {
            if sent - at_window_start < MIN_PROGRESS {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "the downloader took only {} bytes in {:.0} s, less than the {MIN_PROGRESS} required; dropped",
                        sent - at_window_start,
                        stall.as_secs_f64()
                    ),
                ));
            }
            (window_start, at_window_start) = (now, sent);
        }
        to.set_write_timeout(Some((window_start + stall - now).max(Duration::from_millis(1))))?;
        match send_chunk(file, offset + sent, CHUNK.min(len - sent), to) {
            Ok(0) => break, // the file shrank
            Ok(n) => {
                sent += n;
                shared.throughput.record(n);
            }
            Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(sent)
}

/// Sends up to `len` bytes of `file` from byte `at`; returns how many went out.
#[cfg(target_os = "linux")]
fn send_chunk(file: &File, at: u64, len: u64, to: &TcpStream) -> io::Result<u64> {
    let mut offset = at;
    let n = rustix::fs::sendfile(to, file, Some(&mut offset), len as usize)?;
    Ok(n as u64)
}

/// Sends up to `len` bytes of `file` from byte `at`; returns how many went out.
#[cfg(not(target_os = "linux"))]
fn send_chunk(file: &File, at: u64, len: u64, mut to: &TcpStream) -> io::Result<u64> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut buf = vec![0u8; len.min(256 << 10) as usize];
    let mut f = file;
    f.seek(SeekFrom::Start(at))?;
    let n = f.read(&mut buf)?;
    let written = to.write(&buf[..n])?;
    Ok(written as u64)
}

/// Bytes sent per second over the last few seconds, in one-second buckets.
#[derive(Debug, Default)]
struct Throughput {
    /// (second since the epoch, bytes sent in it), indexed by second modulo the length.
    buckets: Mutex<[(u64, u64); 8]>,
}

impl Throughput {
    /// Seconds averaged over.
    const WINDOW: u64 = 5;

    fn now() -> u64 {
        SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
    }

    fn record(&self, bytes: u64) {
        let now = Throughput::now();
        let mut buckets = crate::lock(&self.buckets);
        let len = buckets.len() as u64;
        let slot = &mut buckets[(now % len) as usize];
        if slot.0 != now {
            *slot = (now, 0);
        }
        slot.1 += bytes;
    }

    fn rate(&self) -> u64 {
        let now = Throughput::now();
        let buckets = crate::lock(&self.buckets);
        let recent: u64 =
            buckets.iter().filter(|(sec, _)| now.saturating_sub(*sec) < Self::WINDOW).map(|b| b.1).sum();
        recent / Self::WINDOW
    }
}

fn refuse(mut w: &TcpStream, from: SocketAddr, why: String) -> io::Result<()> {
    info!("refused {from}: {}", escape(&why));
    wire::send_msg(&mut w, &FileReply::Error(why))
}
