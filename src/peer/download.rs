//! The downloader: ask the index who shares a name, then fetch it from one of them,
//! verified, into the shared folder.
//!
//! Bytes go to a [`TempFile`] in the folder while being hashed; only when the size and
//! SHA-256 match what the index advertised is the file given its name, and never over
//! an existing file. On any failure the temporary is removed and the next peer that
//! shares the name is tried, in random order.

use std::io::{self, BufReader, Read, Write};
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

/// The downloader's limits; `Default` has the documented defaults.
#[derive(Clone, Debug)]
pub struct DownloadConfig {
    /// See [`CONNECT_TIMEOUT`].
    pub connect_timeout: Duration,
    /// See [`READ_TIMEOUT`].
    pub read_timeout: Duration,
    /// See [`MAX_PARALLEL_DOWNLOADS`].
    pub max_parallel: usize,
}

impl Default for DownloadConfig {
    fn default() -> Self {
        DownloadConfig {
            connect_timeout: CONNECT_TIMEOUT,
            read_timeout: READ_TIMEOUT,
            max_parallel: MAX_PARALLEL_DOWNLOADS,
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
    hits.shuffle(&mut rand::rng());
    let tried = hits.len();
    for hit in hits {
        match fetch(&hit, folder, name, config) {
            Ok(temp) => {
                temp.commit(folder, name, hit.sha256).map_err(|e| match e.kind() {
                    io::ErrorKind::AlreadyExists => {
                        anyhow!("a file of that name appeared in the folder meanwhile; it was kept")
                    }
                    _ => anyhow!(e).context("cannot give the download its name"),
                })?;
                let info = FileInfo { name: name.clone(), size: hit.size, sha256: hit.sha256 };
                return Ok(Downloaded { info, from: hit.addr });
            }
            Err(e) => on_peer_failure(hit.addr, &e),
        }
    }
    bail!("all {tried} peers that share it failed")
}

/// Fetches `name` from one peer into a temporary file and verifies it against what the
/// index advertised for that peer.
fn fetch(
    hit: &PeerHit,
    folder: &SharedFolder,
    name: &ShareName,
    config: &DownloadConfig,
) -> anyhow::Result<TempFile> {
    let stream = TcpStream::connect_timeout(&hit.addr, config.connect_timeout).context("cannot connect")?;
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
    wire::client_handshake(&mut reader, &mut writer, Service::Files).map_err(silent)?;
    wire::send_msg(&mut writer, &FileRequest::Get { name: name.to_string() })?;
    let (size, sha256) = match wire::recv_msg(&mut reader).map_err(silent)? {
        FileReply::Header { size, sha256 } => (size, sha256),
        FileReply::Error(e) => bail!("the peer refused: {e}"),
    };
    if (size, sha256) != (hit.size, hit.sha256) {
        bail!(
            "the peer now offers {size} bytes with SHA-256 {}, not the {} bytes with SHA-256 {} it registered",
            hex::encode(sha256),
            hit.size,
            hex::encode(hit.sha256)
        );
    }
    let free = folder.free_space().unwrap_or(u64::MAX);
    if size > free {
        bail!("the file is {size} bytes, more than the {free} bytes free in the shared folder");
    }

    let mut temp = folder.create_temp().context("cannot create a temporary file in the shared folder")?;
    // The body is read straight from the socket into the pipeline's buffers; only what
    // the header's read already buffered is taken from the BufReader.
    let mut body = io::Cursor::new(reader.buffer().to_vec()).chain(&stream);
    let (got, actual) = receive(&mut body, temp.file(), size, config.read_timeout)?;
    if got < size {
        bail!("the peer sent only {got} of {size} bytes");
    }
    let mut extra = [0u8; 1];
    if body.read(&mut extra).unwrap_or(0) > 0 {
        bail!("the peer sent more than the {size} bytes it announced");
    }
    if actual != sha256 {
        bail!("SHA-256 mismatch: expected {}, received {}", hex::encode(sha256), hex::encode(actual));
    }
    Ok(temp)
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
) -> anyhow::Result<(u64, wire::Sha256)> {
    if size <= RECV_BUF_LEN as u64 {
        // One buffer's worth: a second thread would cost more than it saves.
        let mut buf = vec![0u8; size as usize];
        let n = fill(r, &mut buf, 0, size, timeout)?;
        out.write_all(&buf[..n]).context("cannot write to the shared folder")?;
        return Ok((n as u64, Sha256::digest(&buf[..n]).into()));
    }
    let (to_hasher, filled) = mpsc::sync_channel::<Vec<u8>>(PIPELINE_BUFFERS);
    let (to_pool, emptied) = mpsc::channel::<Vec<u8>>();
    thread::scope(|scope| {
        let hasher = scope.spawn(move || {
            let mut hasher = Sha256::new();
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
                bail!("the peer sent nothing for {:.1} s after {got} of {size} bytes", timeout.as_secs_f64())
            }
            Err(e) => {
                let got = before + n as u64;
                return Err(anyhow!(e).context(format!("receiving failed after {got} of {size} bytes")));
            }
        }
    }
    Ok(n)
}
