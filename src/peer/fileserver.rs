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
use std::time::Duration;

use log::{info, warn};

use super::folder::SharedFolder;
use crate::index::server::{CONNECTION_STACK_SIZE, HANDSHAKE_TIMEOUT, WRITE_TIMEOUT};
use crate::name::ShareName;
use crate::wire::{self, FileReply, FileRequest, Message, Service};

/// Largest request frame a file server accepts: a request is one name, so 4 KiB is
/// ample (OpenNap's whole command limit is 2,048 bytes).
pub const MAX_REQUEST_LEN: usize = 4096;

/// Serves files from `folder` on an already-bound listener, forever.
pub fn serve(listener: TcpListener, folder: Arc<SharedFolder>) -> io::Result<()> {
    loop {
        let (stream, from) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!("file server: accept failed: {e}");
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let folder = Arc::clone(&folder);
        let spawned = thread::Builder::new()
            .name(format!("upload {from}"))
            .stack_size(CONNECTION_STACK_SIZE)
            .spawn(move || {
                if let Err(e) = handle(&folder, stream, from) {
                    info!("upload to {from} failed: {e}");
                }
            });
        if let Err(e) = spawned {
            warn!("file server: cannot start a thread for {from}: {e}");
        }
    }
}

fn handle(folder: &SharedFolder, stream: TcpStream, from: SocketAddr) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let mut reader = BufReader::new(&stream);
    let mut writer = &stream;
    wire::server_handshake(&mut reader, &mut writer, Service::Files, MAX_REQUEST_LEN)?;

    let frame = wire::recv_all(&mut reader, MAX_REQUEST_LEN)?.ok_or(io::ErrorKind::UnexpectedEof)?;
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
