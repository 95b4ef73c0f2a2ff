//! The peer's one persistent connection to the index server.
//!
//! The shell and the download threads share it: each request takes the connection's
//! lock, writes the request and reads the whole reply, so replies can never be read by
//! the wrong asker.

use std::io::{self, BufReader};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use log::debug;

use crate::wire::{self, ListEntry, Reply, Request, Service};

/// How long to wait for the index server to accept a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long to wait for any one reply from the index server.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// How often an idle peer pings the index, well inside the server's
/// [`crate::index::server::IDLE_TIMEOUT`] so that a quiet peer stays registered.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);

struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    /// Set after the first I/O error: a request may then have been half written or its
    /// reply half read, so nothing more can be said on this connection.
    broken: Option<String>,
}

/// A connection to the index server. See the module docs.
pub struct IndexClient {
    server: SocketAddr,
    local_ip: IpAddr,
    conn: Mutex<Conn>,
}

impl IndexClient {
    /// Connects to the index server at the first of `addrs` that answers (a host name
    /// can resolve to several, IPv6 and IPv4) and shakes hands.
    pub fn connect(addrs: &[SocketAddr]) -> anyhow::Result<IndexClient> {
        let mut last = None;
        for &server in addrs {
            match IndexClient::connect_one(server) {
                Ok(client) => return Ok(client),
                Err(e) => {
                    last = Some(
                        anyhow::Error::from(e)
                            .context(format!("cannot connect to the index server {server}")),
                    )
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no address to connect to the index server")))
    }

    fn connect_one(server: SocketAddr) -> io::Result<IndexClient> {
        let stream = TcpStream::connect_timeout(&server, CONNECT_TIMEOUT)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
        stream.set_write_timeout(Some(REPLY_TIMEOUT))?;
        let mut conn = Conn { reader: BufReader::new(stream.try_clone()?), writer: stream, broken: None };
        wire::client_handshake(&mut conn.reader, &mut conn.writer, Service::Index)?;
        let local_ip = conn.writer.local_addr()?.ip();
        Ok(IndexClient { server, local_ip, conn: Mutex::new(conn) })
    }

    /// The index server's address.
    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// Our side's IP on the connection: the address the index sees for this peer.
    pub fn local_ip(&self) -> IpAddr {
        self.local_ip
    }

    /// Runs one exchange on the connection, under its lock. After an I/O error the
    /// connection is marked broken and every later exchange fails at once.
    fn exchange<T>(&self, f: impl FnOnce(&mut Conn) -> io::Result<T>) -> io::Result<T> {
        let mut conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(why) = &conn.broken {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                format!("the connection to the index server {} was lost: {why}", self.server),
            ));
        }
        f(&mut conn).map_err(|e| {
            conn.broken = Some(e.to_string());
            io::Error::new(e.kind(), format!("index server {}: {e}", self.server))
        })
    }

    /// Sends one request and reads its one reply. Not for `List`, see [`Self::list`].
    pub fn call(&self, request: &Request) -> io::Result<Reply> {
        self.exchange(|conn| {
            wire::send_msg(&mut conn.writer, request)?;
            wire::recv_msg(&mut conn.reader)
        })
    }

    /// Sends a request that is answered by `Done` (register, unregister, update,
    /// delete) and returns the number of files the index now has for this peer. An
    /// `Error` reply becomes an error carrying the server's reason.
    pub fn change(&self, request: &Request) -> anyhow::Result<u32> {
        match self.call(request)? {
            Reply::Done { files } => Ok(files),
            Reply::Error(e) => Err(anyhow::anyhow!("the index server says: {e}")),
            other => Err(unexpected(&other).into()),
        }
    }

    /// Asks for a listing and hands each entry to `each` as it arrives. Returns whether
    /// the listing was cut short by `limit`, or the server's error text.
    pub fn list(
        &self,
        pattern: &str,
        limit: Option<u32>,
        mut each: impl FnMut(ListEntry),
    ) -> io::Result<Result<bool, String>> {
        self.exchange(|conn| {
            let request = Request::List { pattern: pattern.to_owned(), limit };
            wire::send_msg(&mut conn.writer, &request)?;
            loop {
                match wire::recv_msg(&mut conn.reader)? {
                    Reply::ListChunk(entries) => entries.into_iter().for_each(&mut each),
                    Reply::ListEnd { truncated } => return Ok(Ok(truncated)),
                    Reply::Error(e) => return Ok(Err(e)),
                    other => return Err(unexpected(&other)),
                }
            }
        })
    }

    /// Starts a thread that pings the index every [`KEEPALIVE_INTERVAL`], for as long
    /// as the process lives. A failed ping is left for the next real request to report.
    pub fn start_keepalive(self: &Arc<Self>) {
        let client = Arc::clone(self);
        let spawned = thread::Builder::new().name("keepalive".into()).spawn(move || {
            loop {
                thread::sleep(KEEPALIVE_INTERVAL);
                if let Err(e) = client.call(&Request::Ping) {
                    debug!("keepalive ping to {} failed: {e}", client.server);
                }
            }
        });
        if let Err(e) = spawned {
            debug!("no keepalive thread: {e}");
        }
    }
}

/// The error for a reply that makes no sense for the request.
pub fn unexpected(reply: &Reply) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("unexpected reply from the index server: {reply:?}"))
}
