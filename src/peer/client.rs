//! The peer's one persistent connection to the index server.
//!
//! The shell and the download workers share it: each request takes the connection's
//! lock, writes the request and reads the whole reply, so replies can never be read by
//! the wrong asker.
//!
//! The connection can be lost (the index restarts, the network fails). Requests then
//! fail at once with a clear error, and [`IndexClient::watch`], run by the peer's
//! supervisor thread, notices the loss (the socket reports the other end hung up, or a
//! keepalive ping fails) so that the supervisor can [`IndexClient::reconnect`] with
//! backoff and register again.

use std::io::{self, BufReader};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{anyhow, bail};

use crate::auth;
use crate::lock;
use crate::net::{self, ConnectTimeouts};
use crate::text::escape;
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
    /// The rest of a listing stopped by its asker is still on its way: it is read and
    /// dropped before the next request ([`IndexClient::list`]).
    owed: bool,
}

/// How a listing ended ([`IndexClient::list`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Listing {
    /// The server sent all of it; `truncated` if its `limit` cut it short.
    Whole { truncated: bool },
    /// Its asker stopped it; the rest is read later, before the next request.
    Stopped,
}

/// How often a listing waiting for its next part looks at its asker's stop flag.
const STOP_LOOK: Duration = Duration::from_millis(100);

/// What [`IndexClient::watch`] saw.
#[derive(Debug, PartialEq, Eq)]
pub enum Watch {
    /// The connection is up and was quiet for the whole wait.
    Quiet,
    /// The connection is gone (now or before the call); the text says how.
    Lost(String),
}

/// A connection to the index server. See the module docs.
pub struct IndexClient {
    addrs: Vec<SocketAddr>,
    /// The connection, or why there is none. After any I/O error a request may have
    /// been half written or its reply half read, so the connection is dropped.
    conn: Mutex<Result<Conn, String>>,
    /// A second handle on the current socket, for [`IndexClient::watch`] to wait on
    /// without holding the connection's lock.
    watched: Mutex<Option<TcpStream>>,
    /// The server's address and our side's IP on the current connection.
    ends: Mutex<(SocketAddr, IpAddr)>,
    /// After a login: the user and what their key was derived with, and the key, so
    /// that a new connection can log in again without the password.
    credentials: Mutex<Option<Credentials>>,
}

#[derive(Clone)]
struct Credentials {
    user: String,
    salt: Vec<u8>,
    rounds: u32,
    key: auth::Key,
}

impl IndexClient {
    /// Connects to the index server at the first of `addrs` that answers (a host name
    /// can resolve to several, IPv6 and IPv4) and shakes hands.
    pub fn connect(addrs: &[SocketAddr]) -> anyhow::Result<IndexClient> {
        let (conn, ends) = connect_any(addrs)?;
        let watched = conn.writer.try_clone()?;
        Ok(IndexClient {
            addrs: addrs.to_vec(),
            conn: Mutex::new(Ok(conn)),
            watched: Mutex::new(Some(watched)),
            ends: Mutex::new(ends),
            credentials: Mutex::new(None),
        })
    }

    /// Logs in as `user`: asks the server for a challenge first (so that a server
    /// without accounts, or one that asks for an unsafe number of rounds, is refused
    /// before anyone types a password), then calls `password` and answers with a proof.
    /// The password never leaves this process; only the proof does (see
    /// [`crate::auth`]).
    pub fn login(&self, user: &str, password: impl FnOnce() -> anyhow::Result<String>) -> anyhow::Result<()> {
        let (salt, rounds, nonce) = self.challenge(user)?;
        let key = auth::derive_key(&password()?, &salt, rounds);
        self.prove(user, &key, &nonce)?;
        *lock(&self.credentials) = Some(Credentials { user: user.to_owned(), salt, rounds, key });
        Ok(())
    }

    /// Logs in again, on a new connection, as the user of the last successful login.
    /// Returns the user name, or `None` if there was no login.
    pub fn login_again(&self) -> anyhow::Result<Option<String>> {
        let Some(c) = lock(&self.credentials).clone() else { return Ok(None) };
        let (salt, rounds, nonce) = self.challenge(&c.user)?;
        if (salt, rounds) != (c.salt, c.rounds) {
            bail!("the account of {:?} has changed on the server; log in again", c.user);
        }
        self.prove(&c.user, &c.key, &nonce)?;
        Ok(Some(c.user))
    }

    /// Asks for a challenge, and checks it is one a key may be derived for.
    fn challenge(&self, user: &str) -> anyhow::Result<(Vec<u8>, u32, [u8; 32])> {
        match self.call(&Request::Login { user: user.to_owned() })? {
            Reply::Challenge { salt, rounds, nonce } => {
                auth::check_challenge(&salt, rounds).map_err(|e| anyhow!(e))?;
                Ok((salt, rounds, nonce))
            }
            Reply::Error(e) => Err(server_says(&e)),
            other => Err(unexpected(&other).into()),
        }
    }

    fn prove(&self, user: &str, key: &auth::Key, nonce: &[u8; 32]) -> anyhow::Result<()> {
        match self.call(&Request::Proof { proof: auth::proof(key, user, nonce) })? {
            Reply::LoggedIn => Ok(()),
            Reply::Error(e) => Err(server_says(&e)),
            other => Err(unexpected(&other).into()),
        }
    }

    /// Makes a new connection, replacing the current one (if any).
    pub fn reconnect(&self) -> anyhow::Result<()> {
        let (conn, ends) = connect_any(&self.addrs)?;
        let watched = conn.writer.try_clone()?;
        *lock(&self.ends) = ends;
        *lock(&self.watched) = Some(watched);
        *lock(&self.conn) = Ok(conn);
        Ok(())
    }

    /// The index server's address.
    pub fn server(&self) -> SocketAddr {
        lock(&self.ends).0
    }

    /// Our side's IP on the connection: the address the index sees for this peer.
    pub fn local_ip(&self) -> IpAddr {
        lock(&self.ends).1
    }

    /// Runs one exchange on the connection, under its lock. An I/O error drops the
    /// connection; until a reconnect, every exchange then fails at once.
    fn exchange<T>(&self, f: impl FnOnce(&mut Conn) -> io::Result<T>) -> io::Result<T> {
        let mut guard = lock(&self.conn);
        let server = self.server();
        let conn = match &mut *guard {
            Ok(conn) => conn,
            Err(why) => {
                return Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    format!("no connection to the index server {server} ({why}); reconnecting"),
                ));
            }
        };
        let owed = |conn: &mut Conn| {
            while std::mem::take(&mut conn.owed) {
                // The rest of a stopped listing, up to its end.
                match wire::recv_msg(&mut conn.reader)? {
                    Reply::ListChunk(_) => conn.owed = true,
                    Reply::ListEnd { .. } | Reply::Error(_) => {}
                    other => return Err(unexpected(&other)),
                }
            }
            Ok(())
        };
        owed(conn).and_then(|()| f(conn)).map_err(|e| {
            *guard = Err(format!("lost: {e}"));
            *lock(&self.watched) = None;
            io::Error::new(e.kind(), format!("index server {server}: {e}"))
        })
    }

    /// Waits up to `timeout` for the connection to be lost. Returns at once if it
    /// already is.
    pub fn watch(&self, timeout: Duration) -> Watch {
        let watched = match &*lock(&self.watched) {
            Some(s) => s.try_clone(),
            None => Err(io::ErrorKind::NotConnected.into()),
        };
        let Ok(watched) = watched else {
            return Watch::Lost(lock(&self.conn).as_ref().err().cloned().unwrap_or_else(|| "lost".into()));
        };
        if hung_up(&watched, timeout) {
            *lock(&self.conn) = Err("the index server closed the connection".into());
            *lock(&self.watched) = None;
            return Watch::Lost("the index server closed the connection".into());
        }
        Watch::Quiet
    }

    /// Sends one request and reads its one reply. Not for `List`, see [`Self::list`].
    pub fn call(&self, request: &Request) -> io::Result<Reply> {
        self.exchange(|conn| {
            wire::send_msg(&mut conn.writer, request)?;
            wire::recv_msg(&mut conn.reader)
        })
    }

    /// Sends a request that is answered by `Done` (register, unregister, update,
    /// delete, add) and returns the number of files the index now has for this peer.
    /// An `Error` reply becomes an error carrying the server's reason.
    pub fn change(&self, request: &Request) -> anyhow::Result<u32> {
        match self.call(request)? {
            Reply::Done { files } => Ok(files),
            Reply::Error(e) => Err(server_says(&e)),
            other => Err(unexpected(&other).into()),
        }
    }

    /// Asks for a listing and hands each entry to `each` as it arrives. Returns how it
    /// ended, or the server's error text.
    ///
    /// `stop` (Ctrl-C on a terminal) stops it between parts, and while it waits for
    /// the next: at once, whatever the server does, so the asker gets its prompt back.
    /// The rest, up to the server's end of the listing, is read and dropped before the
    /// next request on the connection (the protocol has no way to cancel a listing,
    /// and the connection carries the registration, so it is not closed).
    pub fn list(
        &self,
        pattern: &str,
        limit: Option<u32>,
        stop: &AtomicBool,
        mut each: impl FnMut(ListEntry),
    ) -> io::Result<Result<Listing, String>> {
        self.exchange(|conn| {
            let request = Request::List { pattern: pattern.to_owned(), limit };
            wire::send_msg(&mut conn.writer, &request)?;
            let mut left = limit.map_or(u64::MAX, u64::from);
            loop {
                let stopped = || stop.load(Ordering::SeqCst);
                if conn.reader.buffer().is_empty() {
                    // Waiting for the next part: a look at `stop` every STOP_LOOK, for as
                    // long as a reply may take; then the read below times out.
                    let mut waited = Duration::ZERO;
                    while waited < REPLY_TIMEOUT && !readable(&conn.writer, STOP_LOOK) {
                        if stopped() {
                            conn.owed = true;
                            return Ok(Ok(Listing::Stopped));
                        }
                        waited += STOP_LOOK;
                    }
                }
                if stopped() {
                    conn.owed = true;
                    return Ok(Ok(Listing::Stopped));
                }
                match wire::recv_msg(&mut conn.reader)? {
                    Reply::ListChunk(entries) => {
                        // Past the limit the listing is out of step with what was asked:
                        // the connection goes, as for any reply that breaks the protocol.
                        left = left.checked_sub(entries.len() as u64).ok_or_else(|| {
                            io::Error::new(
                                io::ErrorKind::InvalidData,
                                format!(
                                    "the index server sent more entries than the limit of {}",
                                    limit.unwrap_or(u32::MAX)
                                ),
                            )
                        })?;
                        entries.into_iter().for_each(&mut each)
                    }
                    Reply::ListEnd { truncated } => return Ok(Ok(Listing::Whole { truncated })),
                    Reply::Error(e) => return Ok(Err(escape(&e).into_owned())),
                    other => return Err(unexpected(&other)),
                }
            }
        })
    }
}

/// Connects to the first of `addrs` that answers and shakes hands.
fn connect_any(addrs: &[SocketAddr]) -> anyhow::Result<(Conn, (SocketAddr, IpAddr))> {
    let mut last = None;
    for &server in addrs {
        match connect_one(server) {
            Ok(conn) => {
                let local = conn.writer.local_addr()?.ip();
                return Ok((conn, (server, local)));
            }
            Err(e) => last = Some(anyhow!(e).context(format!("cannot connect to the index server {server}"))),
        }
    }
    Err(last.unwrap_or_else(|| anyhow!("no address to connect to the index server")))
}

fn connect_one(server: SocketAddr) -> io::Result<Conn> {
    let timeouts = ConnectTimeouts { connect: CONNECT_TIMEOUT, io: REPLY_TIMEOUT };
    let stream = net::connect(server, Service::Index, timeouts)?;
    Ok(Conn { reader: BufReader::new(stream.try_clone()?), writer: stream, owed: false })
}

/// The error for an `Error` reply: the server's text, escaped, since it came over the
/// network.
pub fn server_says(text: &str) -> anyhow::Error {
    anyhow!("the index server says: {}", escape(text))
}

/// Waits up to `timeout` for something to read on `stream` (or its end, or an error).
fn readable(stream: &TcpStream, timeout: Duration) -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let mut fds = [PollFd::new(stream, PollFlags::IN)];
    let timeout = Timespec::try_from(timeout).ok();
    match poll(&mut fds, timeout.as_ref()) {
        Ok(n) => n > 0,
        // A signal (Ctrl-C itself, before its handler has set the stop flag): not yet,
        // so that the caller looks at the flag again rather than block in a read.
        Err(rustix::io::Errno::INTR) => false,
        // Said readable, so that the caller reads and finds out.
        Err(_) => true,
    }
}

/// Waits up to `timeout` for the other end to hang up (or the socket to fail). Only
/// the hang-up is waited for, never incoming data, so replies are left to their reader.
fn hung_up(stream: &TcpStream, timeout: Duration) -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let mut fds = [PollFd::new(stream, PollFlags::RDHUP)];
    let timeout = Timespec::try_from(timeout).ok();
    match poll(&mut fds, timeout.as_ref()) {
        Ok(0) => false,
        Ok(_) => {
            let seen = fds[0].revents();
            seen.intersects(PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR | PollFlags::NVAL)
        }
        Err(_) => false, // interrupted: the next watch looks again
    }
}

/// The error for a reply that makes no sense for the request.
pub fn unexpected(reply: &Reply) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("unexpected reply from the index server: {reply:?}"))
}
