//! The downloader: ask the index who shares a name, then fetch it from one of them,
//! verified, into the shared folder.
//!
//! The candidates are tried best first: by default the least loaded, found by asking
//! every candidate's file server how busy it is (in parallel, with a short timeout;
//! one that does not answer is skipped at once), or in random order.
//!
//! Bytes go to a partial file in the folder, named after the content's SHA-256, while
//! being hashed; only when the size and SHA-256 of the whole file match what the index
//! advertised is the file given its name, and never over an existing file. If a
//! transfer is interrupted (the sender dies, stalls, or stops short), the partial file
//! stays, and the next attempt, from that peer or another, asks only for the rest. If
//! the bytes are wrong (bad hash, too many), the partial file is removed.

use std::io::{self, BufReader, Read, Seek, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use rand::seq::SliceRandom;
use sha2::{Digest, Sha256};

use super::client::{IndexClient, unexpected};
use super::folder::{SharedFolder, TempFile};
use crate::name::ShareName;
use crate::wire::{self, FileInfo, FileReply, FileRequest, PeerHit, Reply, Request, Service};

/// How long to wait for a sending peer to accept the connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a sending peer may go without sending a byte before we give up on it and
/// try the next one.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Downloads that run at once; more wait their turn in a queue. Browsers allow 6
/// connections per host for the same reason: beyond a few, parallel transfers only
/// contend (for the network, for the folder's directory lock) without finishing
/// sooner, and each costs a thread.
pub const MAX_PARALLEL_DOWNLOADS: usize = 4;

/// How long a candidate has to answer "how busy are you?" before it is skipped.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(1);

/// Most candidates asked how busy they are, in parallel, for one download.
pub const STATUS_SAMPLE: usize = 16;

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
    /// See [`READ_TIMEOUT`].
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
            read_timeout: READ_TIMEOUT,
            max_parallel: MAX_PARALLEL_DOWNLOADS,
            choice: PeerChoice::LeastLoaded,
        }
    }
}

/// Receive buffer: large reads keep system calls off the profile at loopback speed.
const RECV_BUF_LEN: usize = 256 << 10;

/// Buffers in flight between the receiving and the hashing thread.
const PIPELINE_BUFFERS: usize = 8;

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

/// Downloads `name` into `folder`. `on_peer_failure` hears about each peer that
/// failed before the next one is tried. Fails if the name exists in the folder
/// (checked before anything is fetched), if no peer shares it, or if every one fails.
pub fn download(
    index: &IndexClient,
    folder: &SharedFolder,
    name: &ShareName,
    config: &DownloadConfig,
    mut on_peer_failure: impl FnMut(SocketAddr, &anyhow::Error),
) -> anyhow::Result<Downloaded> {
    if folder.contains(name) {
        bail!("a file of that name is already in the shared folder (delete it first)");
    }
    let mut hits = match index.call(&Request::Lookup { name: name.clone() })? {
        Reply::Peers(hits) => hits,
        Reply::NoPeers => bail!("no registered peer shares it"),
        Reply::Error(e) => bail!("the index server refused the lookup: {e}"),
        other => return Err(unexpected(&other).into()),
    };
    let tried = hits.len();
    hits.shuffle(&mut rand::rng());
    // With one candidate there is nothing to choose: do not ask it how busy it is.
    if config.choice == PeerChoice::LeastLoaded && hits.len() > 1 {
        // A popular file can have thousands of sharers: ask a random sample of them
        // (one thread each); the others stay behind, in random order, as a reserve.
        let reserve = hits.split_off(hits.len().min(STATUS_SAMPLE));
        let (ranked, dead) = rank(hits, config);
        for (hit, e) in dead {
            on_peer_failure(hit.addr, &e);
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
    for hit in hits {
        match fetch(&hit, folder, name, config) {
            Ok((temp, resumed_at)) => {
                temp.commit(folder, name, hit.sha256).map_err(|e| match e.kind() {
                    io::ErrorKind::AlreadyExists => {
                        anyhow!("a file of that name appeared in the folder meanwhile; it was kept")
                    }
                    _ => anyhow!(e).context("cannot give the download its name"),
                })?;
                let info = FileInfo { name: name.clone(), size: hit.size, sha256: hit.sha256 };
                return Ok(Downloaded { info, from: hit.addr, resumed_at });
            }
            Err(e) => on_peer_failure(hit.addr, &e),
        }
    }
    bail!("all {tried} peers that share it failed")
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
    let timeout = STATUS_TIMEOUT.min(config.connect_timeout);
    let stream = TcpStream::connect_timeout(&addr, timeout).context("cannot connect")?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(STATUS_TIMEOUT))?;
    stream.set_write_timeout(Some(STATUS_TIMEOUT))?;
    let (mut r, mut w) = (&stream, &stream);
    let answer = wire::client_handshake(&mut r, &mut w, Service::Files)
        .and_then(|()| wire::send_msg(&mut w, &FileRequest::Status))
        .and_then(|()| wire::recv_msg(&mut r));
    let answer = answer.map_err(|e| match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            anyhow!("the peer sent nothing for {:.1} s", STATUS_TIMEOUT.as_secs_f64())
        }
        _ => anyhow!(e),
    })?;
    match answer {
        FileReply::Status { uploads, bytes_per_sec } => Ok((uploads, bytes_per_sec)),
        FileReply::Error(e) => bail!("the peer refused: {e}"),
        FileReply::Header { .. } => bail!("the peer answered with a file"),
    }
}

/// A transfer that stopped part-way through a body that was correct so far (the
/// sender died, stalled or closed early): what was received is worth keeping.
#[derive(Debug)]
struct Interrupted(String);

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Interrupted {}

/// Fetches `name` from one peer into its partial file, resuming from what is already
/// there, and verifies the whole file against what the index advertised for that
/// peer. Returns the file and where this attempt started.
fn fetch(
    hit: &PeerHit,
    folder: &SharedFolder,
    name: &ShareName,
    config: &DownloadConfig,
) -> anyhow::Result<(TempFile, u64)> {
    let (size, sha256) = (hit.size, hit.sha256);
    let free = folder.free_space().unwrap_or(u64::MAX);
    let partial = folder.partial(&sha256).context("cannot create a temporary file in the shared folder")?;
    let (mut temp, mut have) = match partial {
        Some(partial) => partial,
        // The same content is being fetched under another name right now: start afresh.
        None => (folder.create_temp().context("cannot create a temporary file in the shared folder")?, 0),
    };
    if have > size {
        temp.truncate()?;
        have = 0;
    }
    if size - have > free {
        bail!("the file is {size} bytes, more than the {free} bytes free in the shared folder");
    }
    // The whole file is verified, so the bytes already here are hashed first.
    let mut hasher = Sha256::new();
    if have > 0 {
        let prefix = hash_prefix(temp.file(), have, &mut hasher);
        if let Err(e) = prefix {
            temp.truncate()?;
            return Err(anyhow!(e).context("cannot read the partial download"));
        }
    }

    let stream = TcpStream::connect_timeout(&hit.addr, config.connect_timeout).context("cannot connect");
    let keep = |temp: TempFile, e: anyhow::Error| {
        if have > 0 {
            temp.keep();
        }
        e
    };
    let stream = match stream {
        Ok(s) => s,
        Err(e) => return Err(keep(temp, e)),
    };
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(config.read_timeout))?;
    stream.set_write_timeout(Some(config.read_timeout))?;
    let mut reader = BufReader::new(&stream);
    let mut writer = &stream;
    let silent = |e: io::Error| match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            anyhow!("the peer sent nothing for {:.1} s", config.read_timeout.as_secs_f64())
        }
        _ => anyhow!(e),
    };
    let header = wire::client_handshake(&mut reader, &mut writer, Service::Files)
        .and_then(|()| {
            wire::send_msg(&mut writer, &FileRequest::Get { name: name.to_string(), offset: have })
        })
        .and_then(|()| wire::recv_msg(&mut reader));
    let header = match header {
        Ok(FileReply::Header { size, sha256 }) => (size, sha256),
        Ok(FileReply::Error(e)) => return Err(keep(temp, anyhow!("the peer refused: {e}"))),
        Ok(FileReply::Status { .. }) => return Err(keep(temp, anyhow!("the peer answered a status"))),
        Err(e) => return Err(keep(temp, silent(e))),
    };
    if header != (size, sha256) {
        let e = anyhow!(
            "the peer now offers {} bytes with SHA-256 {}, not the {size} bytes with SHA-256 {} it registered",
            header.0,
            hex::encode(header.1),
            hex::encode(sha256)
        );
        return Err(keep(temp, e));
    }

    // The body is read straight from the socket into the pipeline's buffers; only what
    // the header's read already buffered is taken from the BufReader.
    let mut body = io::Cursor::new(reader.buffer().to_vec()).chain(&stream);
    let (got, actual) = match receive(&mut body, temp.file(), size - have, config.read_timeout, hasher) {
        Ok(received) => received,
        Err(e) if e.is::<Interrupted>() => {
            let at = temp.file().stream_position().unwrap_or(0);
            temp.keep();
            if at == 0 {
                return Err(e);
            }
            bail!("{e} (the first {at} bytes are kept, to resume from there)");
        }
        Err(e) => return Err(e),
    };
    if have + got < size {
        temp.keep();
        let kept = match have + got {
            0 => String::new(),
            n => format!(" (kept, to resume from byte {n})"),
        };
        bail!("the peer sent only {} of {size} bytes{kept}", have + got);
    }
    let mut extra = [0u8; 1];
    if body.read(&mut extra).unwrap_or(0) > 0 {
        bail!("the peer sent more than the {size} bytes it announced");
    }
    if actual != sha256 {
        bail!("SHA-256 mismatch: expected {}, received {}", hex::encode(sha256), hex::encode(actual));
    }
    Ok((temp, have))
}

/// Feeds the first `len` bytes of `file` to `hasher`, then leaves the file at `len`.
fn hash_prefix(file: &mut std::fs::File, len: u64, hasher: &mut Sha256) -> io::Result<()> {
    file.rewind()?;
    let mut buf = vec![0u8; RECV_BUF_LEN];
    let mut left = len;
    while left > 0 {
        let n = file.read(&mut buf[..(left.min(RECV_BUF_LEN as u64) as usize)])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    file.seek(io::SeekFrom::Start(len))?;
    Ok(())
}

/// Copies at most `size` bytes from `r` to `out` and hashes them, in one pass over the
/// data. Returns the count and the hash. A write error (disk full, ...) is an error;
/// an early end of stream is a short count.
///
/// Receiving and writing run on this thread while a second thread hashes the buffers
/// just written (still in cache): SHA-256 is the most expensive step, and on two cores
/// running it beside the network copy instead of after it nearly doubles throughput.
/// Buffers go round a small pool, so memory stays at [`PIPELINE_BUFFERS`] x
/// [`RECV_BUF_LEN`].
fn receive(
    r: &mut impl Read,
    out: &mut impl Write,
    size: u64,
    timeout: Duration,
    mut hasher: Sha256,
) -> anyhow::Result<(u64, wire::Sha256)> {
    if size <= RECV_BUF_LEN as u64 {
        // One buffer's worth: a second thread would cost more than it saves.
        let mut buf = vec![0u8; size as usize];
        let n = fill(r, &mut buf, 0, size, timeout)?;
        out.write_all(&buf[..n]).context("cannot write to the shared folder")?;
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
                let n = fill(r, &mut buf, got, size, timeout)?;
                buf.truncate(n);
                out.write_all(&buf).context("cannot write to the shared folder")?;
                got += n as u64;
                to_hasher.send(buf).expect("the hasher runs until the sender is dropped");
                if n < want {
                    break; // end of stream: a short transfer
                }
            }
            anyhow::Ok(())
        })();
        drop(to_hasher);
        let sha256 = hasher.join().expect("hashing does not panic");
        copied.map(|()| (got, sha256))
    })
}

/// Reads into `buf` until it is full or the stream ends; returns the bytes read.
fn fill(
    r: &mut impl Read,
    buf: &mut [u8],
    before: u64,
    size: u64,
    timeout: Duration,
) -> anyhow::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                let got = before + n as u64;
                let why = format!(
                    "the peer sent nothing for {:.1} s after {got} of {size} bytes",
                    timeout.as_secs_f64()
                );
                return Err(Interrupted(why).into());
            }
            Err(e) => {
                let got = before + n as u64;
                return Err(Interrupted(format!("receiving failed after {got} of {size} bytes: {e}")).into());
            }
        }
    }
    Ok(n)
}
