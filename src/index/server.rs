//! The index server's accept loop and per-connection conversation.
//!
//! One `std::thread` per connection reads requests until the peer disconnects; when
//! the conversation ends, for whatever reason, the peer's registration goes with it.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, BufReader};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use log::{info, warn};

use super::Index;
use crate::auth::{self, Key, Users};
use crate::name::ShareName;
use crate::net::{Slot, Slots, Timed, close_gently};
use crate::wire::{self, MAX_FRAME_LEN, Message, PROTOCOL_VERSION, Reply, Request, Service, Welcome};
use rand::RngExt;

/// How long a new connection has to complete its [`wire::Hello`], however it trickles
/// in: libtorrent's `handshake_timeout`.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a connection may stay silent between requests before it is dropped (and
/// its registration with it). Peers ping every
/// [`crate::peer::client::KEEPALIVE_INTERVAL`], well inside this.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(180);

/// How long a request may take to arrive once its first byte has: nginx's
/// `client_header_timeout` is 60 s for a whole request header; our largest frame is
/// 16 MiB, which loopback or a LAN carries in well under a second.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a reply may take to be written before the client is deemed gone: a client
/// that stops reading cannot hold a thread forever.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Most connections served at once: Redis's `maxclients` default. Each costs a thread
/// and a descriptor; further connections are refused with a reason.
pub const MAX_CONNECTIONS: usize = 10_000;

/// Stack size of a connection thread. A connection needs a few KiB of stack; the
/// default 2 MiB of address space per thread would be wasted at thousands of peers.
pub const CONNECTION_STACK_SIZE: usize = 256 * 1024;

/// How long a refused or failed connection is given to read our last words.
const CLOSE_PATIENCE: Duration = Duration::from_secs(1);

/// Names examined per listing page. The registry lock is held for one page at a time,
/// so a listing of millions of files never blocks other connections for long.
const LIST_PAGE_NAMES: usize = 1024;

/// First delay before answering a wrong password; each further failure from the same
/// address within [`FAILURE_MEMORY`] adds as much again, up to [`MAX_FAILURE_DELAY`].
pub const FAILURE_DELAY: Duration = Duration::from_secs(1);

/// Longest delay before answering a wrong password.
pub const MAX_FAILURE_DELAY: Duration = Duration::from_secs(10);

/// How long failed logins from an address are remembered.
pub const FAILURE_MEMORY: Duration = Duration::from_secs(15 * 60);

/// Accounts, when the server requires login (`--users`).
#[derive(Debug)]
pub struct Accounts {
    users: Users,
    /// Keys fake challenges for unknown users, so a challenge does not tell whether a
    /// user exists.
    secret: [u8; 32],
    /// Recent failed logins by address: (count, last).
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl Accounts {
    /// Login required, for these users.
    pub fn new(users: Users) -> Accounts {
        Accounts { users, secret: rand::rng().random(), failures: Mutex::default() }
    }

    /// The challenge for `user`: their salt and rounds, or plausible fake ones.
    fn challenge(&self, user: &str) -> (Vec<u8>, u32, Option<Key>) {
        match self.users.get(user) {
            Some(a) => (a.salt.clone(), a.rounds, Some(a.key)),
            None => (
                auth::proof(&self.secret, user, &[0; 32])[..auth::SALT_LEN].to_vec(),
                auth::PBKDF2_ROUNDS,
                None,
            ),
        }
    }

    /// Notes a failure from `ip` and returns how long to wait before saying so.
    fn failed(&self, ip: IpAddr) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        failures.retain(|_, (_, last)| now.duration_since(*last) < FAILURE_MEMORY);
        let entry = failures.entry(ip).or_insert((0, now));
        *entry = (entry.0 + 1, now);
        (FAILURE_DELAY * entry.0).min(MAX_FAILURE_DELAY)
    }
}

/// Where a connection stands with login.
#[derive(Debug, Default)]
struct Session {
    /// The user logged in on this connection.
    user: Option<String>,
    /// The challenge sent and not yet answered: user, nonce, and their key if known.
    pending: Option<(String, [u8; 32], Option<Key>)>,
}

/// Limits and timeouts of a server; `Config::default()` has the documented defaults.
#[derive(Clone, Debug)]
pub struct Config {
    /// `Some` to require login with these accounts.
    pub accounts: Option<Arc<Accounts>>,
    /// Largest request frame accepted: [`MAX_FRAME_LEN`].
    pub max_frame_len: usize,
    /// See [`MAX_CONNECTIONS`].
    pub max_connections: usize,
    /// See [`HANDSHAKE_TIMEOUT`].
    pub handshake_timeout: Duration,
    /// See [`IDLE_TIMEOUT`].
    pub idle_timeout: Duration,
    /// See [`READ_TIMEOUT`].
    pub read_timeout: Duration,
    /// See [`WRITE_TIMEOUT`].
    pub write_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            accounts: None,
            max_frame_len: MAX_FRAME_LEN,
            max_connections: MAX_CONNECTIONS,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
            read_timeout: READ_TIMEOUT,
            write_timeout: WRITE_TIMEOUT,
        }
    }
}

/// Serves the index on an already-bound listener, forever.
pub fn serve(listener: TcpListener, index: Index, config: Config) -> io::Result<()> {
    let slots = Slots::new(config.max_connections);
    loop {
        let (stream, conn) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors or memory: not this listener's fault, and
                // accepting again at once would only spin. Back off and go on.
                warn!("accept failed: {e}");
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let Some(slot) = slots.take() else {
            warn!("{conn} refused: {} connections open, the maximum", config.max_connections);
            refuse(
                &stream,
                &format!("the server is full ({} connections); try again later", config.max_connections),
            );
            continue;
        };
        let (index, config) = (index.clone(), config.clone());
        let spawned = thread::Builder::new()
            .name(format!("conn {conn}"))
            .stack_size(CONNECTION_STACK_SIZE)
            .spawn(move || handle(index, stream, conn, &config, slot));
        if let Err(e) = spawned {
            warn!("{conn}: cannot start a thread for it: {e}; connection dropped");
        }
    }
}

/// Turns a connection away from the accept loop itself, without a thread: the reason
/// goes out as a refused handshake, and the socket is closed at once (input that
/// arrives after this look may still turn the close into a reset).
fn refuse(stream: &TcpStream, why: &str) {
    let refusal = Welcome { version: PROTOCOL_VERSION, refusal: Some(why.to_owned()) };
    let _ = stream.set_nonblocking(true);
    let _ = wire::send_msg(&mut &*stream, &refusal);
    let _ = stream.shutdown(Shutdown::Write);
    // Whatever the client has sent already (its hello) is read and dropped, so that
    // the close is an orderly one and the refusal is not lost to a reset.
    let _ = io::Read::read(&mut &*stream, &mut [0u8; 256]);
}

/// Runs one connection to its end and removes its registration.
fn handle(index: Index, stream: TcpStream, conn: SocketAddr, config: &Config, _slot: Slot) {
    info!("{conn} connected");
    // Whatever happens below, a panic included, the registration goes with the
    // connection.
    let registration = Registration { index: &index, conn };
    let why = match converse(&index, &stream, conn, config) {
        Ok(()) => "closed by the peer".to_owned(),
        Err(e) if is_timeout(&e) => "timed out".to_owned(),
        Err(e) => {
            // The last words (a refused handshake, a frame that is too big) are
            // already written; let them arrive before the close.
            close_gently(&stream, CLOSE_PATIENCE);
            e.to_string()
        }
    };
    let dropped = if registration.end() { "; its registration is removed" } else { "" };
    info!("{conn} disconnected ({why}){dropped}");
}

/// Removes a connection's registration when dropped, so that not even a panic in the
/// connection's thread can leave a peer listed that nobody can reach any more.
struct Registration<'a> {
    index: &'a Index,
    conn: SocketAddr,
}

impl Registration<'_> {
    /// Removes the registration now; returns whether there was one.
    fn end(self) -> bool {
        let removed = self.index.remove(self.conn);
        std::mem::forget(self);
        removed
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        if self.index.remove(self.conn) {
            warn!("{} disconnected abnormally; its registration is removed", self.conn);
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

fn converse(index: &Index, stream: &TcpStream, conn: SocketAddr, config: &Config) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_write_timeout(Some(config.write_timeout))?;
    // One descriptor per connection (no `try_clone`): at 10,000 peers, descriptors are
    // the resource that runs out first.
    let mut reader = BufReader::new(Timed::deadline(stream, Instant::now() + config.handshake_timeout));
    let mut writer = stream;

    if let Err(e) = wire::server_handshake(&mut reader, &mut writer, Service::Index, config.max_frame_len) {
        warn!("{conn} handshake failed: {e}");
        return Err(e);
    }
    let mut session = Session::default();
    loop {
        reader.get_mut().await_frame(config.idle_timeout, config.read_timeout);
        let frame = match wire::recv_all(&mut reader, config.max_frame_len) {
            Ok(Some(frame)) => frame,
            Ok(None) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                // A length over the maximum: say so, then close (the stream cannot be
                // resynchronised after a bad length).
                warn!("{conn} {e}");
                let _ = wire::send_msg(&mut writer, &Reply::Error(format!("request refused: {e}")));
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        match Request::decode(&frame) {
            Ok(request) => match (&config.accounts, request) {
                (accounts, Request::Login { user }) => {
                    login(accounts.as_deref(), &mut session, conn, user, writer)?
                }
                (accounts, Request::Proof { proof }) => {
                    prove(accounts.as_deref(), &mut session, conn, &proof, writer)?;
                }
                (Some(_), request) if session.user.is_none() && request != Request::Ping => {
                    info!("{conn} request refused: login required");
                    wire::send_msg(&mut writer, &Reply::Error("login required".into()))?;
                }
                (_, request) => respond(index, conn, request, writer)?,
            },
            Err(e) => {
                warn!("{conn} malformed request: {e}");
                wire::send_msg(&mut writer, &Reply::Error(format!("malformed request: {e}")))?;
            }
        }
    }
}

/// Answers `Login` with a challenge.
fn login(
    accounts: Option<&Accounts>,
    session: &mut Session,
    conn: SocketAddr,
    user: String,
    mut w: &TcpStream,
) -> io::Result<()> {
    let Some(accounts) = accounts else {
        info!("{conn} login as {user:?} -> this server has no accounts");
        return wire::send_msg(
            &mut w,
            &Reply::Error("this server has no accounts: no login is needed".into()),
        );
    };
    if let Err(why) = auth::check_user(&user) {
        return wire::send_msg(&mut w, &Reply::Error(why));
    }
    let (salt, rounds, key) = accounts.challenge(&user);
    let nonce: [u8; 32] = rand::rng().random();
    session.pending = Some((user, nonce, key));
    wire::send_msg(&mut w, &Reply::Challenge { salt, rounds, nonce })
}

/// Answers `Proof`: logged in, or (after a delay that grows with each failure from the
/// same address) a refusal that does not say whether the user exists.
fn prove(
    accounts: Option<&Accounts>,
    session: &mut Session,
    conn: SocketAddr,
    proof: &[u8; 32],
    mut w: &TcpStream,
) -> io::Result<()> {
    let (Some(accounts), Some((user, nonce, key))) = (accounts, session.pending.take()) else {
        return wire::send_msg(&mut w, &Reply::Error("send login first".into()));
    };
    if key.is_some_and(|key| auth::verify(&key, &user, &nonce, proof)) {
        info!("{conn} login as {user:?} -> ok");
        session.user = Some(user);
        return wire::send_msg(&mut w, &Reply::LoggedIn);
    }
    let delay = accounts.failed(conn.ip());
    warn!("{conn} login as {user:?} -> wrong user name or password; answering in {} s", delay.as_secs());
    thread::sleep(delay);
    wire::send_msg(&mut w, &Reply::Error("wrong user name or password".into()))
}

/// What a request was, for the log; built without allocating.
enum Summary {
    Register { port: u16, files: usize },
    Unregister,
    Update { files: usize },
    Delete { names: usize },
    Add { files: usize },
    Lookup(ShareName),
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Summary::Register { port, files } => write!(f, "register port {port}, {files} files"),
            Summary::Unregister => f.write_str("unregister"),
            Summary::Update { files } => write!(f, "update, {files} files"),
            Summary::Delete { names } => write!(f, "delete {names} names"),
            Summary::Add { files } => write!(f, "add {files} files"),
            Summary::Lookup(name) => write!(f, "lookup {:?}", name.as_str()),
        }
    }
}

/// Carries out one request, writes its reply, then logs the request and its outcome
/// (after the reply, so the log costs the client no latency).
fn respond(index: &Index, conn: SocketAddr, request: Request, mut w: &TcpStream) -> io::Result<()> {
    let done = |r: Result<usize, super::RegistryError>| match r {
        Ok(n) => Reply::Done { files: n as u32 },
        Err(e) => Reply::Error(e.to_string()),
    };
    let (what, reply) = match request {
        Request::Register { port, files } => {
            (Summary::Register { port, files: files.len() }, done(index.lock().register(conn, port, files)))
        }
        Request::Unregister => (Summary::Unregister, done(index.lock().unregister(conn).map(|()| 0))),
        Request::Update { files } => {
            (Summary::Update { files: files.len() }, done(index.lock().update(conn, files)))
        }
        Request::Delete { names } => {
            (Summary::Delete { names: names.len() }, done(index.lock().delete(conn, &names)))
        }
        Request::Add { files } => (Summary::Add { files: files.len() }, done(index.lock().add(conn, files))),
        Request::Lookup { name } => {
            let hits = index.lock().lookup(&name);
            (Summary::Lookup(name), if hits.is_empty() { Reply::NoPeers } else { Reply::Peers(hits) })
        }
        Request::List { pattern, limit } => {
            let sent = send_listing(index, conn, &pattern, limit, w)?;
            let limit = limit.map_or("none".to_owned(), |n| n.to_string());
            info!("{conn} list matching {pattern:?}, limit {limit} -> {sent} entries");
            return Ok(());
        }
        Request::Ping => return wire::send_msg(&mut w, &Reply::Pong),
        Request::Login { .. } | Request::Proof { .. } => unreachable!("handled by the connection loop"),
    };
    wire::send_msg(&mut w, &reply)?;
    match &reply {
        Reply::Error(e) => info!("{conn} {what} -> error: {e}"),
        Reply::Done { files } => info!("{conn} {what} -> ok, {files} files registered"),
        Reply::Peers(hits) => info!("{conn} {what} -> {} peer(s)", hits.len()),
        Reply::NoPeers => info!("{conn} {what} -> no registered peer shares it"),
        _ => info!("{conn} {what}"),
    }
    Ok(())
}

/// Streams a listing a page at a time, taking the lock once per page and never across
/// a write. Returns the number of entries sent.
fn send_listing(
    index: &Index,
    conn: SocketAddr,
    pattern: &str,
    limit: Option<u32>,
    mut w: &TcpStream,
) -> io::Result<usize> {
    let mut left = limit.map_or(usize::MAX, |n| n as usize);
    let mut sent = 0;
    let mut after = None;
    let mut truncated = false;
    loop {
        let mut page = index.lock().list_page(conn, pattern, after.as_ref(), LIST_PAGE_NAMES);
        if page.entries.len() > left {
            page.entries.truncate(left);
            truncated = true;
        } else if left == 0 && !page.entries.is_empty() {
            truncated = true;
        }
        if !page.entries.is_empty() {
            left -= page.entries.len();
            sent += page.entries.len();
            wire::send_msg(&mut w, &Reply::ListChunk(page.entries))?;
        }
        match page.next {
            Some(next) if !truncated => after = Some(next),
            _ => break,
        }
    }
    wire::send_msg(&mut w, &Reply::ListEnd { truncated })?;
    Ok(sent)
}
