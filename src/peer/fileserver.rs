//! The peer's file server: one thread per downloader, one file per connection.
//!
//! ```text
//! downloader                         file server
//!    Hello(Files)        ------>
//!                        <------     Welcome
//!    FileRequest::Get    ------>
//!                        <------     FileReply::Header { size, sha256 }, then `size` raw bytes
//!                                    (or FileReply::Error, and nothing more)
//! ```

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use log::{info, warn};

use super::folder::SharedFolder;
use crate::index::server::{CONNECTION_STACK_SIZE, WRITE_TIMEOUT};
use crate::name::ShareName;
use crate::net::{Slots, Timed, close_gently};
use crate::wire::{self, FileReply, FileRequest, Message, PROTOCOL_VERSION, Service, Welcome};

/// Largest request frame a file server accepts: a request is one name, so 4 KiB is
/// ample (OpenNap's whole command limit is 2,048 bytes).
pub const MAX_REQUEST_LEN: usize = 4096;

/// Most uploads served at once, nginx's default `worker_connections`; further
/// downloaders are refused with a reason and try another peer.
pub const MAX_UPLOADS: usize = 512;

/// How long a downloader has, from connecting, to send its handshake and request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Limits of a file server; `Default` has the documented defaults.
#[derive(Clone, Debug)]
pub struct FileServerConfig {
    /// See [`MAX_UPLOADS`].
    pub max_uploads: usize,
    /// See [`REQUEST_TIMEOUT`].
    pub request_timeout: Duration,
    /// How long one write of the file may block before the downloader is deemed gone
    /// ([`crate::index::server::WRITE_TIMEOUT`]).
    pub write_timeout: Duration,
}

impl Default for FileServerConfig {
    fn default() -> Self {
        FileServerConfig {
            max_uploads: MAX_UPLOADS,
            request_timeout: REQUEST_TIMEOUT,
            write_timeout: WRITE_TIMEOUT,
        }
    }
}

/// Serves files from `folder` on an already-bound listener, forever.
pub fn serve(listener: TcpListener, folder: Arc<SharedFolder>, config: FileServerConfig) -> io::Result<()> {
    let slots = Slots::new(config.max_uploads);
    let load = Arc::new(Load::default());
    loop {
        let (stream, from) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!("file server: accept failed: {e}");
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let Some(slot) = slots.take() else {
            info!("refused {from}: {} uploads already running", config.max_uploads);
            let _ = stream.set_nonblocking(true);
            let why = format!("busy: {} uploads already running; try another peer", config.max_uploads);
            let _ = wire::send_msg(&mut &stream, &Welcome { version: PROTOCOL_VERSION, refusal: Some(why) });
            continue;
        };
        let (folder, config, load) = (Arc::clone(&folder), config.clone(), Arc::clone(&load));
        let spawned = thread::Builder::new()
            .name(format!("upload {from}"))
            .stack_size(CONNECTION_STACK_SIZE)
            .spawn(move || {
                let _slot = slot;
                if let Err(e) = handle(&folder, &load, &stream, from, &config) {
                    info!("upload to {from} failed: {e}");
                    if e.kind() == io::ErrorKind::InvalidData {
                        close_gently(&stream, Duration::from_secs(1));
                    }
                }
            });
        if let Err(e) = spawned {
            warn!("file server: cannot start a thread for {from}: {e}");
        }
    }
}

fn handle(
    folder: &SharedFolder,
    load: &Load,
    stream: &TcpStream,
    from: SocketAddr,
    config: &FileServerConfig,
) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_write_timeout(Some(config.write_timeout))?;
    // The handshake and the request must both arrive within one deadline, however
    // slowly they trickle in.
    let mut reader = BufReader::new(Timed::deadline(stream, Instant::now() + config.request_timeout));
    let mut writer = stream;
    wire::server_handshake(&mut reader, &mut writer, Service::Files, MAX_REQUEST_LEN)?;

    let frame = match wire::recv_all(&mut reader, MAX_REQUEST_LEN) {
        Ok(Some(frame)) => frame,
        Ok(None) => return Err(io::ErrorKind::UnexpectedEof.into()),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            refuse(writer, from, format!("request refused: {e}"))?;
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    let (name, offset) = match FileRequest::decode(&frame) {
        Ok(FileRequest::Get { name, offset }) => (name, offset),
        Ok(FileRequest::Status) => {
            // Uploads sending file bytes now: not this question, nor handshakes in progress.
            let uploads = load.sending.load(Ordering::Relaxed) as u32;
            let reply = FileReply::Status { uploads, bytes_per_sec: load.throughput.rate() };
            return wire::send_msg(&mut writer, &reply);
        }
        Err(e) => return refuse(writer, from, format!("malformed request: {e}")),
    };
    let name = match ShareName::parse(&name) {
        Ok(name) => name,
        Err(why) => return refuse(writer, from, format!("invalid file name {name:?}: {why}")),
    };
    let mut open = match folder.open(&name) {
        Ok(open) => open,
        Err(why) => return refuse(writer, from, format!("cannot send {:?}: {why}", name.as_str())),
    };
    let (size, sha256) = (open.info.size, open.info.sha256);
    if offset > size {
        let why = format!("cannot send {:?} from byte {offset}: it has {size} bytes", name.as_str());
        return refuse(writer, from, why);
    }
    open.file.seek(SeekFrom::Start(offset))?;
    wire::send_msg(&mut writer, &FileReply::Header { size, sha256 })?;
    load.sending.fetch_add(1, Ordering::Relaxed);
    let sent = send_body(&open.file, size - offset, writer, &load.throughput);
    load.sending.fetch_sub(1, Ordering::Relaxed);
    let sent = sent?;
    info!("sent {:?} ({sent} bytes from byte {offset} of {size}) to {from}", name.as_str());
    Ok(())
}

/// Sends `len` bytes of `file` from its current position. `io::copy` from a `File` to
/// a `TcpStream` lets the kernel move the bytes (sendfile on Linux); it goes a chunk
/// at a time so the throughput meter sees progress. Exactly `len` bytes are sent even
/// if the file grows meanwhile; if it shrinks, the downloader sees a short transfer.
fn send_body(file: &File, len: u64, mut to: &TcpStream, meter: &Throughput) -> io::Result<u64> {
    const CHUNK: u64 = 4 << 20;
    let mut sent = 0;
    while sent < len {
        let n = io::copy(&mut file.take(CHUNK.min(len - sent)), &mut to)?;
        if n == 0 {
            break;
        }
        sent += n;
        meter.record(n);
    }
    Ok(sent)
}

/// How busy a file server is, for [`FileRequest::Status`].
#[derive(Debug, Default)]
pub struct Load {
    /// Uploads sending file bytes now.
    sending: AtomicUsize,
    throughput: Throughput,
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
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let len = buckets.len() as u64;
        let slot = &mut buckets[(now % len) as usize];
        if slot.0 != now {
            *slot = (now, 0);
        }
        slot.1 += bytes;
    }

    fn rate(&self) -> u64 {
        let now = Throughput::now();
        let buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let recent: u64 =
            buckets.iter().filter(|(sec, _)| now.saturating_sub(*sec) < Self::WINDOW).map(|b| b.1).sum();
        recent / Self::WINDOW
    }
}

fn refuse(mut w: &TcpStream, from: SocketAddr, why: String) -> io::Result<()> {
    info!("refused {from}: {why}");
    wire::send_msg(&mut w, &FileReply::Error(why))
}
