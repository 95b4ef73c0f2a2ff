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

use std::io::{self, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

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
        let (folder, config) = (Arc::clone(&folder), config.clone());
        let spawned = thread::Builder::new()
            .name(format!("upload {from}"))
            .stack_size(CONNECTION_STACK_SIZE)
            .spawn(move || {
                let _slot = slot;
                if let Err(e) = handle(&folder, &stream, from, &config) {
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
    let name = match FileRequest::decode(&frame) {
        Ok(FileRequest::Get { name }) => name,
        Err(e) => return refuse(writer, from, format!("malformed request: {e}")),
    };
    let name = match ShareName::parse(&name) {
        Ok(name) => name,
        Err(why) => return refuse(writer, from, format!("invalid file name {name:?}: {why}")),
    };
    let open = match folder.open(&name) {
        Ok(open) => open,
        Err(why) => return refuse(writer, from, format!("cannot send {:?}: {why}", name.as_str())),
    };
    let (size, sha256) = (open.info.size, open.info.sha256);
    wire::send_msg(&mut writer, &FileReply::Header { size, sha256 })?;
    // `io::copy` from a `File` to a `TcpStream` lets the kernel move the bytes
    // (sendfile/splice on Linux). `take` sends exactly the announced size even if the
    // file grows meanwhile; if it shrinks, the downloader sees a short transfer.
    let sent = io::copy(&mut open.file.take(size), &mut writer)?;
    info!("sent {:?} ({sent} of {size} bytes) to {from}", name.as_str());
    Ok(())
}

fn refuse(mut w: &TcpStream, from: SocketAddr, why: String) -> io::Result<()> {
    info!("refused {from}: {why}");
    wire::send_msg(&mut w, &FileReply::Error(why))
}
