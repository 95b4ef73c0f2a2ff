//! The index server's per-connection conversation, on a thread of its own (the accept
//! loop is [`crate::net::serve`]).
//!
//! A connection reads requests until the peer disconnects; when the conversation ends,
//! for whatever reason, the peer's registration goes with it. On the way in, a request
//! frame books its memory in the server's [`Budget`]; on the way out, the request and
//! its outcome are logged, at most [`crate::logging::RECORDS_PER_SECOND`] records a
//! second per connection.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use log::Level;

use super::budget::{Budget, RECEIVE_BUDGET, SMALL_FRAME, UNBOOKED_FRAME};
use super::login::{Accounts, ProofStep, Session};
use super::{Deliver, Index, Looked, PageBudget, Pattern, RegistryError, store};
use crate::lock;
use crate::logging::RateLimit;
use crate::name::SharePath;
use crate::net::{self, ConnLimits, Live, Slot, Timed, close_gently, is_timeout};
use crate::text::{Clip, count};
use crate::wire::{self, FileInfo, MAX_FRAME_LEN, Message, Reply, Request, Service};

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

/// Most connections from one client address ([`crate::net::client_key`]): a peer
/// needs one, a host running a few peers a few; 64 leaves room for NAT, while one
/// address can no longer take every place.
pub const MAX_CONNECTIONS_PER_IP: usize = 64;

/// Largest frame a connection may send before it has logged in, on a server that
/// requires login: `Login` and `Proof` are a few dozen bytes, so a stranger cannot
/// make the server buffer more than this.
pub const MAX_UNAUTHENTICATED_FRAME: usize = 4096;

/// Largest handshake frame accepted: a `Hello` is 11 bytes.
pub const MAX_HANDSHAKE_FRAME: usize = 4096;

/// How long a refused or failed connection is given to read our last words.
const CLOSE_PATIENCE: Duration = Duration::from_secs(1);

/// The most work one listing page does under the registry lock: 1,024 names, or about
/// a millisecond of scanning, whichever ends first, so that no listing (however large
/// the registry, however odd the pattern) holds up lookups for long.
pub const LIST_PAGE: PageBudget = PageBudget { names: 1024, time: Duration::from_millis(1) };

/// A listing's first page: 32 names, so that its first entries reach the user as soon
/// as they are found. In the store, a first page of a common pattern is a walk of the
/// names in order that stops at the page's last match: over 10M names, a word in 1.2%
/// of them was first listed after 113-125 ms with 1,024 names a page and after 5-7 ms
/// with 32, and a word in 0.12% (which PostgreSQL now walks to, where it searched the
/// trigram index for 1,024) after 97-120 ms and 27-28 ms (docs/PERFORMANCE.md). The
/// rest of the listing comes by [`LIST_PAGE`]s, or through the store's cursor.
pub const FIRST_LIST_PAGE: PageBudget = PageBudget { names: 32, ..LIST_PAGE };

/// Largest reply buffer a connection keeps from one reply to the next, so that a
/// lookup's reply (52 bytes for one peer) costs no allocation, while 10,000 idle
/// connections keep at most 40 MB between them.
const REPLY_BUFFER_KEPT: usize = 4096;

/// Names shown in a log record of a change; the rest are counted.
const NAMES_LOGGED: usize = 3;

/// How long a client may take to take in each page of a listing read through the
/// store's cursor before the cursor is let go (see [`send_listing`]): a page is about
/// 100 KB, which the socket's buffer takes at once from a client that reads on.
pub const LISTING_PATIENCE: Duration = Duration::from_secs(1);

/// Limits and timeouts of a server; `Config::default()` has the documented defaults.
#[derive(Clone, Debug)]
pub struct Config {
    /// `Some` to require login with these accounts.
    pub accounts: Option<Arc<Accounts>>,
    /// Largest request frame accepted: [`MAX_FRAME_LEN`].
    pub max_frame_len: usize,
    /// Bytes of request frames received at once, over all connections:
    /// [`RECEIVE_BUDGET`].
    pub receive_budget: usize,
    /// See [`MAX_CONNECTIONS`] and [`MAX_CONNECTIONS_PER_IP`].
    pub connections: ConnLimits,
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
            receive_budget: RECEIVE_BUDGET,
            connections: ConnLimits { max: MAX_CONNECTIONS, per_ip: MAX_CONNECTIONS_PER_IP },
            handshake_timeout: HANDSHAKE_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
            read_timeout: READ_TIMEOUT,
            write_timeout: WRITE_TIMEOUT,
        }
    }
}

/// Serves the index on an already-bound listener, forever.
pub fn serve(listener: TcpListener, index: Index, config: Config) -> io::Result<()> {
    let budget = Budget::for_server(config.receive_budget, config.connections.max).ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "the receive budget is smaller than 4 KiB per connection")
    })?;
    let limits = config.connections;
    let config = Arc::new(config);
    let live = Live::default();
    index.on_forgotten(live.clone());
    net::serve(listener, "index", limits, live, move |stream, from, slot| {
        Connection::new(&index, &config, &budget, from, stream).run(stream, slot)
    })
}

/// One connection: what it needs from the server, and its own state.
struct Connection<'a> {
    index: &'a Index,
    config: &'a Config,
    budget: &'a Budget,
    /// The client's address: the connection's name in the registry and in the log.
    conn: SocketAddr,
    session: Session,
    log: Limit,
    /// The last reply's frame, kept for the next one's (see [`REPLY_BUFFER_KEPT`]).
    out: Vec<u8>,
    /// With the store, where the lookups' thread writes this connection's replies to
    /// lookups answered in a batch ([`Index::lookup`]).
    outbox: Option<Arc<Outbox>>,
}

/// A connection's rate limit for its records: its own, or, with the store, shared with
/// the lookups' thread, which logs the lookups it answers for it.
enum Limit {
    Own(RateLimit),
    Shared(Arc<Outbox>),
}

impl Limit {
    /// [`RateLimit::allow`].
    fn allow(&mut self, level: Level, who: &dyn fmt::Display) -> bool {
        match self {
            Limit::Own(limit) => limit.allow(level, who),
            Limit::Shared(outbox) => lock(&outbox.log).allow(level, who),
        }
    }

    /// [`RateLimit::finish`].
    fn finish(&mut self, who: &dyn fmt::Display) {
        match self {
            Limit::Own(limit) => limit.finish(who),
            Limit::Shared(outbox) => lock(&outbox.log).finish(who),
        }
    }
}

/// Where the lookups' thread of a store ([`super::batch`]) writes a connection's reply
/// to a lookup answered in a batch, so that the connection's thread need not sleep
/// until the batch is answered and be woken for the reply: it goes back to reading
/// its client at once. Under load that is one sleep and wake-up a lookup instead of two
/// (docs/PERFORMANCE.md, "Replies written by the lookups' threads").
///
/// Replies go out in the order their requests came: while one is on its way, the
/// connection writes nothing ([`Outbox::wait_sent`]). A client that waits for each
/// reply never makes it wait.
struct Outbox {
    stream: Arc<TcpStream>,
    conn: SocketAddr,
    /// A reply is on its way from another thread.
    pending: Mutex<bool>,
    sent: Condvar,
    /// The connection's rate limit for its records ([`Limit::Shared`]).
    log: Mutex<RateLimit>,
}

impl Outbox {
    /// Waits until no reply is on its way. Asked before each request is answered:
    /// nearly always at once, since a client asks again once it has its reply.
    fn wait_sent(&self) {
        let mut pending = lock(&self.pending);
        while *pending {
            pending = self.sent.wait(pending).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Ends the connection: a reply that cannot be written whole leaves the client
    /// nothing it could read after it.
    fn close(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

/// A reply on its way ([`Outbox`]): the connection writes nothing until this is
/// dropped, whether the reply was written, failed, or was never asked for (the lookup
/// was answered at once, on the connection's own thread).
struct OnItsWay(Arc<Outbox>);

impl OnItsWay {
    fn new(outbox: &Arc<Outbox>) -> OnItsWay {
        *lock(&outbox.pending) = true;
        OnItsWay(Arc::clone(outbox))
    }

    /// Writes the reply to the lookup of `name` by `user` and logs it, on a lookups'
    /// thread. What the socket cannot take at once (a client that does not read, a
    /// very long list of holders) is written by a thread of its own, with the
    /// connection's write timeout, so that no client holds up the other lookups.
    fn deliver(self, name: SharePath, user: Option<&str>, answer: Looked) {
        let outbox = &self.0;
        let reply = lookup_reply(answer);
        let frame = wire::frame(&reply);
        let mut at = 0;
        if let Ok(frame) = &frame {
            while at < frame.len() {
                let flags = rustix::net::SendFlags::DONTWAIT | rustix::net::SendFlags::NOSIGNAL;
                match rustix::net::send(&*outbox.stream, &frame[at..], flags) {
                    Ok(n) => at += n,
                    Err(rustix::io::Errno::INTR) => {}
                    Err(rustix::io::Errno::AGAIN) => break,
                    // The connection's thread finds out for itself, reading.
                    Err(_) => at = frame.len(),
                }
            }
        }
        // After the reply, as on the connection's own thread: the log costs the client
        // no latency.
        let who = Who(outbox.conn, user);
        if lock(&outbox.log).allow(Level::Info, &who) {
            log::info!("{who} {}{}", Summary::Lookup(name), Outcome(&reply));
        }
        let Ok(frame) = frame else {
            // Longer than a frame may be: no client could read it.
            outbox.close();
            return;
        };
        if at == frame.len() {
            return;
        }
        let name = format!("index {} reply", outbox.conn);
        let outbox = Arc::clone(outbox);
        let rest = move || {
            if (&*self.0.stream).write_all(&frame[at..]).is_err() {
                self.0.close();
            }
        };
        if let Err(e) = thread::Builder::new().name(name).stack_size(net::CONNECTION_STACK_SIZE).spawn(rest) {
            // The closure, this reply's `OnItsWay` in it, is dropped: the reply is over,
            // half written.
            log::warn!(
                "{} cannot start a thread to write a reply ({e}); the connection is closed",
                outbox.conn
            );
            outbox.close();
        }
    }
}

impl Drop for OnItsWay {
    fn drop(&mut self) {
        *lock(&self.0.pending) = false;
        self.0.sent.notify_all();
    }
}

/// The reply to a lookup.
fn lookup_reply(answer: Looked) -> Reply {
    match answer {
        Ok(hits) if hits.is_empty() => Reply::NoPeers,
        Ok(hits) => Reply::Peers(hits),
        Err(e) => Reply::Error(e.to_string()),
    }
}

/// A reply's outcome as a request's record ends with it: ` -> ok, 3 files registered`.
struct Outcome<'a>(&'a Reply);

impl fmt::Display for Outcome<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Reply::Error(e) => write!(f, " -> refused: {e}"),
            Reply::Done { files } => write!(f, " -> ok, {} registered", count(*files, "file")),
            Reply::Peers(hits) => write!(f, " -> {}", count(hits.len() as u64, "peer")),
            Reply::NoPeers => write!(f, " -> no registered peer shares it"),
            _ => Ok(()),
        }
    }
}

/// How a connection is named in the log: its address, and its user once logged in.
struct Who<'a>(SocketAddr, Option<&'a str>);

impl fmt::Display for Who<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.1 {
            Some(user) => write!(f, "{} ({user})", self.0),
            None => write!(f, "{}", self.0),
        }
    }
}

/// Logs through the connection's rate limit: `record!(self, Level::Info, "...", ..)`.
/// The record's arguments are evaluated only if it is allowed.
macro_rules! record {
    ($conn:expr, $level:expr, $($arg:tt)+) => {{
        let level = $level;
        let who = Who($conn.conn, $conn.session.user());
        if $conn.log.allow(level, &who) {
            log::log!(level, "{who} {}", format_args!($($arg)+));
        }
    }};
}

impl<'a> Connection<'a> {
    fn new(
        index: &'a Index,
        config: &'a Config,
        budget: &'a Budget,
        conn: SocketAddr,
        stream: &Arc<TcpStream>,
    ) -> Connection<'a> {
        let outbox = index.hands_over().then(|| {
            Arc::new(Outbox {
                stream: Arc::clone(stream),
                conn,
                pending: Mutex::new(false),
                sent: Condvar::new(),
                log: Mutex::default(),
            })
        });
        Connection {
            index,
            config,
            budget,
            conn,
            session: Session::default(),
            log: outbox.clone().map_or_else(|| Limit::Own(RateLimit::default()), Limit::Shared),
            out: Vec::new(),
            outbox,
        }
    }

    /// Where the lookups' thread delivers the answer to a lookup of `name` (with the
    /// store, [`Index::lookup`]); from now until then, this connection writes nothing.
    fn hand_over(&self, name: &SharePath) -> Deliver<Looked> {
        let reply = OnItsWay::new(self.outbox.as_ref().expect("only the store hands lookups over"));
        let (name, user) = (name.clone(), self.session.user().map(Box::<str>::from));
        Box::new(move |answer| reply.deliver(name, user.as_deref(), answer))
    }

    /// [`Outbox::wait_sent`], with the store.
    fn wait_sent(&mut self) {
        if self.outbox.as_ref().is_some_and(|outbox| *lock(&outbox.pending)) {
            record!(
                self,
                Level::Debug,
                "asked again before the reply to its last lookup is out: waiting for it"
            );
            if let Some(outbox) = &self.outbox {
                outbox.wait_sent();
            }
        }
    }

    /// Runs the connection to its end and removes its registration.
    fn run(mut self, stream: &TcpStream, _slot: Slot) {
        record!(self, Level::Info, "connected");
        // Whatever happens below, a panic included, the registration goes with the
        // connection.
        let registration = Registration { index: self.index, conn: self.conn };
        let why = match self.converse(stream) {
            Ok(()) => "closed by the peer".to_owned(),
            Err(e) if is_timeout(&e) => "timed out".to_owned(),
            Err(e) => {
                // The last words (a refused handshake, a frame that is too big) are
                // already written; let them arrive before the close.
                close_gently(stream, CLOSE_PATIENCE);
                e.to_string()
            }
        };
        let dropped = if registration.end() { "; its registration is removed" } else { "" };
        let who = Who(self.conn, self.session.user());
        self.log.finish(&who);
        // The last record always gets out: it is what an operator looks for.
        log::info!("{who} disconnected ({why}){dropped}");
    }

    /// Whether this connection must still log in.
    fn before_login(&self) -> bool {
        self.config.accounts.is_some() && self.session.user().is_none()
    }

    /// The largest frame this connection may send now.
    fn max_frame(&self) -> usize {
        match self.before_login() {
            true => MAX_UNAUTHENTICATED_FRAME.min(self.config.max_frame_len),
            false => self.config.max_frame_len,
        }
    }

    fn converse(&mut self, stream: &TcpStream) -> io::Result<()> {
        let config = self.config;
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(config.write_timeout))?;
        // One descriptor per connection (no `try_clone`): at 10,000 peers, descriptors
        // are the resource that runs out first.
        let mut reader = BufReader::new(Timed::deadline(stream, Instant::now() + config.handshake_timeout));
        let mut writer = stream;

        if let Err(e) = wire::server_handshake(&mut reader, &mut writer, Service::Index, MAX_HANDSHAKE_FRAME)
        {
            // A connection closed without a word (a port scanner, a health check) is no
            // problem worth a warning; a wrong handshake is.
            let level = if e.kind() == io::ErrorKind::UnexpectedEof { Level::Info } else { Level::Warn };
            record!(self, level, "handshake failed: {e}");
            return Err(e);
        }
        loop {
            reader.get_mut().await_frame(config.idle_timeout, config.read_timeout);
            let max = self.max_frame();
            let len = wire::recv_len(&mut reader, max);
            self.wait_sent();
            let len = match len {
                Ok(Some(len)) => len,
                Ok(None) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    // A length over the maximum: say so, then close (the stream cannot
                    // be resynchronised after a bad length).
                    let why = match self.before_login() {
                        true => format!("request refused: {e} before login"),
                        false => format!("request refused: {e}"),
                    };
                    record!(self, Level::Warn, "{why}");
                    let _ = wire::send_msg(&mut writer, &Reply::Error(why));
                    return Err(e);
                }
                Err(e) => return Err(e),
            };
            // A large registration that cannot fit is refused from its first bytes: its
            // payload is read past, never buffered.
            let mut head = Vec::new();
            if len > SMALL_FRAME {
                (&mut reader).take(Request::COUNT_HEAD as u64).read_to_end(&mut head)?;
                if let Some(Err(e)) =
                    Request::file_count(&head).map(|count| self.index.room_for(self.conn, count))
                {
                    let skipped =
                        io::copy(&mut (&mut reader).take((len - head.len()) as u64), &mut io::sink())?;
                    if skipped < (len - head.len()) as u64 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    wire::send_msg(&mut writer, &Reply::Error(e.to_string()))?;
                    let what = Request::name_of(head[0]);
                    record!(self, Level::Info, "{what} of {len} bytes -> refused unread: {e}");
                    continue;
                }
            }
            let booked = match len {
                ..=UNBOOKED_FRAME => None,
                _ => {
                    let deadline = reader.get_ref().frame_deadline();
                    Some(
                        self.budget
                            .book(len, deadline.unwrap_or_else(|| Instant::now() + config.read_timeout)),
                    )
                }
            };
            if let Some(None) = booked {
                let why = format!(
                    "request refused: the server is receiving too many large requests at once (its memory budget of {} MiB is in use); try again later",
                    config.receive_budget >> 20
                );
                record!(self, Level::Warn, "a request of {len} bytes waited for memory in vain; closing");
                let _ = wire::send_msg(&mut writer, &Reply::Error(why));
                return Err(io::Error::new(io::ErrorKind::OutOfMemory, "no room in the receive budget"));
            };
            let (decoded, tag) = if head.is_empty() && reader.buffer().len() >= len {
                // The whole request is in the reader's buffer already (nearly always, for
                // a small one): decoded from there, without a copy.
                let frame = &reader.buffer()[..len];
                let decoded = (Request::decode(frame), frame.first().copied());
                reader.consume(len);
                decoded
            } else if head.is_empty() {
                let frame = wire::recv_payload(&mut reader, len, len)?;
                (Request::decode(&frame), frame.first().copied())
            } else {
                let mut frame = Vec::with_capacity(len);
                frame.extend_from_slice(&head);
                (&mut reader).take((len - head.len()) as u64).read_to_end(&mut frame)?;
                if frame.len() < len {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                (Request::decode(&frame), frame.first().copied())
            };
            match decoded {
                Ok(request) => self.respond(request, writer)?,
                Err(e) => {
                    let what = tag.map_or("an empty request", Request::name_of);
                    record!(self, Level::Warn, "malformed request ({what}): {e}");
                    wire::send_msg(&mut writer, &Reply::Error(format!("malformed request: {e}")))?;
                }
            }
        }
    }

    /// Carries out one request and writes its reply, then logs the request and its
    /// outcome (after the reply, so the log costs the client no latency).
    fn respond(&mut self, request: Request, mut w: &TcpStream) -> io::Result<()> {
        let (index, conn, config) = (self.index, self.conn, self.config);
        match (&config.accounts, request) {
            (Some(accounts), Request::Login { user }) => {
                let reply = accounts.challenge(&mut self.session, &user);
                wire::send_msg(&mut w, &reply)?;
                match reply {
                    Reply::Error(e) => record!(self, Level::Info, "login as {} -> refused: {e}", Clip(&user)),
                    _ => record!(self, Level::Info, "login as {} -> challenge sent", Clip(&user)),
                }
                return Ok(());
            }
            (Some(accounts), Request::Proof { proof }) => {
                let user = self.session.pending_user().unwrap_or("").to_owned();
                let reply = match accounts.admit(&self.session, conn.ip(), Instant::now()) {
                    ProofStep::CheckAt(at) => {
                        if let Some(wait) = at.checked_duration_since(Instant::now()) {
                            thread::sleep(wait);
                        }
                        accounts.check(&mut self.session, conn.ip(), &proof, Instant::now())
                    }
                    ProofStep::Answer(reply) => reply,
                };
                wire::send_msg(&mut w, &reply)?;
                match &reply {
                    Reply::LoggedIn => record!(self, Level::Info, "login -> ok"),
                    Reply::Error(e) => record!(self, Level::Warn, "login as {} -> refused: {e}", Clip(&user)),
                    _ => {}
                }
                return Ok(());
            }
            (None, Request::Login { user }) => {
                let why = "this server has no accounts: no login is needed";
                record!(self, Level::Info, "login as {} -> refused: {why}", Clip(&user));
                return wire::send_msg(&mut w, &Reply::Error(why.into()));
            }
            (None, Request::Proof { .. }) => {
                return wire::send_msg(&mut w, &Reply::Error("this server has no accounts".into()));
            }
            (Some(_), request) if self.session.user().is_none() && request != Request::Ping => {
                wire::send_msg(&mut w, &Reply::Error("login required".into()))?;
                record!(self, Level::Info, "{} -> refused: login required", Summary::of(&request));
                return Ok(());
            }
            (_, Request::Ping) => return wire::send_msg(&mut w, &Reply::Pong),
            (_, Request::List { pattern, limit }) => {
                let sent = send_listing(index, conn, &pattern, limit, w, config.write_timeout)?;
                let limit = limit.map_or("none".to_owned(), |n| n.to_string());
                record!(
                    self,
                    Level::Info,
                    "list matching {}, limit {limit} -> {sent} {}",
                    Clip(&pattern),
                    if sent == 1 { "entry" } else { "entries" }
                );
                return Ok(());
            }
            (_, request) => {
                let done = |r: Result<usize, super::RegistryError>| match r {
                    Ok(n) => Reply::Done { files: n as u32 },
                    Err(e) => Reply::Error(e.to_string()),
                };
                let (what, reply) = match request {
                    // The hot path: the name moves to the log's summary after the
                    // lookup, with no copy taken before.
                    Request::Lookup { name } => {
                        let Some(answer) = index.lookup(&name, || self.hand_over(&name)) else {
                            // Answered in a batch: a lookups' thread replies and logs.
                            return Ok(());
                        };
                        (Summary::Lookup(name), lookup_reply(answer))
                    }
                    change => (
                        Summary::of(&change),
                        done(match change {
                            Request::Register { port, files } => index.register(conn, port, files),
                            Request::Unregister => index.unregister(conn).map(|()| 0),
                            Request::Update { files } => index.update(conn, files),
                            Request::Delete { names } => index.delete(conn, &names),
                            Request::Add { files } => index.add(conn, files),
                            Request::Partial { files } => index.announce_partial(conn, files),
                            Request::Lookup { .. }
                            | Request::Ping
                            | Request::List { .. }
                            | Request::Login { .. }
                            | Request::Proof { .. } => unreachable!("answered above"),
                        }),
                    ),
                };
                wire::send_msg_in(&mut w, &reply, &mut self.out)?;
                if self.out.capacity() > REPLY_BUFFER_KEPT {
                    self.out = Vec::new();
                }
                record!(self, Level::Info, "{what}{}", Outcome(&reply));
            }
        }
        Ok(())
    }
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
            log::warn!("{} disconnected abnormally; its registration is removed", self.conn);
        }
    }
}

/// What a request was, for the log: its kind and the names it carries (the first
/// [`NAMES_LOGGED`], then a count), every name clipped and escaped when shown. Taken
/// before the request is carried out (which consumes it), without copying a name's text.
enum Summary {
    Register { port: u16, files: Names },
    Unregister,
    Update(Names),
    Delete(Names),
    Add(Names),
    Partial(Names),
    Lookup(SharePath),
    Other(&'static str),
}

/// How many names, and the first few of them.
struct Names {
    count: usize,
    first: [Option<SharePath>; NAMES_LOGGED],
}

impl Names {
    fn of<'n>(count: usize, mut names: impl Iterator<Item = &'n SharePath>) -> Names {
        Names { count, first: std::array::from_fn(|_| names.next().cloned()) }
    }

    fn files(files: &[FileInfo]) -> Names {
        Names::of(files.len(), files.iter().map(|f| &f.name))
    }
}

impl Summary {
    fn of(request: &Request) -> Summary {
        match request {
            Request::Register { port, files } => {
                Summary::Register { port: *port, files: Names::files(files) }
            }
            Request::Unregister => Summary::Unregister,
            Request::Update { files } => Summary::Update(Names::files(files)),
            Request::Delete { names } => Summary::Delete(Names::of(names.len(), names.iter())),
            Request::Add { files } => Summary::Add(Names::files(files)),
            Request::Partial { files } => Summary::Partial(Names::files(files)),
            Request::Lookup { name } => Summary::Lookup(name.clone()),
            Request::List { .. } => Summary::Other("list"),
            Request::Ping => Summary::Other("ping"),
            Request::Login { .. } => Summary::Other("login"),
            Request::Proof { .. } => Summary::Other("proof"),
        }
    }
}

/// `3 files: "a", "b", "c"` or `50000 files: "a", "b", "c" and 49997 more`.
impl fmt::Display for Names {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&count(self.count as u64, "file"))?;
        for (i, name) in self.first.iter().flatten().enumerate() {
            write!(f, "{}{}", if i == 0 { ": " } else { ", " }, Clip(name.as_str()))?;
        }
        if self.count > NAMES_LOGGED {
            write!(f, " and {} more", self.count - NAMES_LOGGED)?;
        }
        Ok(())
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Summary::Register { port, files } => write!(f, "register port {port}, {files}"),
            Summary::Unregister => f.write_str("unregister"),
            Summary::Update(files) => write!(f, "update, {files}"),
            Summary::Delete(names) => write!(f, "delete {names}"),
            Summary::Add(files) => write!(f, "add {files}"),
            Summary::Partial(files) => write!(f, "downloading {files}"),
            Summary::Lookup(name) => write!(f, "lookup {}", Clip(name.as_str())),
            Summary::Other(what) => f.write_str(what),
        }
    }
}

/// Streams a listing a page at a time. In memory, each page takes the lock once (a
/// bounded amount of work, [`LIST_PAGE`]), never across a write. The first page is a
/// short one ([`FIRST_LIST_PAGE`]). In the store, it is read by keyset (quick to its
/// first entry whatever the pattern), and
/// the rest through one cursor while the client takes in each page within
/// [`LISTING_PATIENCE`], for at most [`store::LISTING_HOLD`]; after that (a slow or hostile
/// client, a huge listing) the cursor and its connection are let go and the rest
/// comes by keyset, a statement a page. Returns the number of entries sent.
fn send_listing(
    index: &Index,
    conn: SocketAddr,
    pattern: &str,
    limit: Option<u32>,
    mut w: &TcpStream,
    write_timeout: Duration,
) -> io::Result<usize> {
    let pattern = Pattern::new(pattern);
    let mut left = limit.map_or(usize::MAX, |n| n as usize);
    let mut sent = 0;
    let mut after = None;
    let mut truncated = false;
    // The store's cursor, and until when it may be held; opened once, after the first
    // page, and not again once let go.
    let mut cursor: Option<(store::Cursor<'_>, Instant)> = None;
    loop {
        let page = match &mut cursor {
            Some((cursor, _)) => cursor.next_page(),
            None => {
                let budget = if after.is_none() { FIRST_LIST_PAGE } else { LIST_PAGE };
                index.list_page(conn, &pattern, after.as_ref(), budget)
            }
        };
        let mut page = match page {
            Ok(page) => page,
            Err(e) => {
                drop(cursor);
                return listing_failed(w, e, sent);
            }
        };
        if page.entries.len() > left {
            page.entries.truncate(left);
            truncated = true;
        } else if left == 0 && !page.entries.is_empty() {
            truncated = true;
        }
        if !page.entries.is_empty() {
            left -= page.entries.len();
            sent += page.entries.len();
            let chunk = Reply::ListChunk(page.entries);
            match &cursor {
                Some((_, held_until)) => {
                    let frame = wire::frame(&chunk)?;
                    let by = (Instant::now() + LISTING_PATIENCE).min(*held_until);
                    let written = net::write_by(w, &frame, by, write_timeout)?;
                    if written < frame.len() {
                        // The client reads slowly: the cursor goes before waiting on it.
                        cursor = None;
                        io::Write::write_all(&mut w, &frame[written..])?;
                    }
                }
                None => wire::send_msg(&mut w, &chunk)?,
            }
        }
        let Some(next) = page.next.filter(|_| !truncated) else { break };
        if after.is_none() {
            match index.open_listing(conn, &pattern, &next) {
                Some(Ok(opened)) => cursor = Some((opened, Instant::now() + store::LISTING_HOLD)),
                Some(Err(e)) => return listing_failed(w, e, sent),
                None => {}
            }
        }
        after = Some(next);
    }
    drop(cursor);
    wire::send_msg(&mut w, &Reply::ListEnd { truncated })?;
    Ok(sent)
}

/// A listing that failed part way: the peer takes an error in place of its rest.
fn listing_failed(mut w: &TcpStream, e: RegistryError, sent: usize) -> io::Result<usize> {
    wire::send_msg(&mut w, &Reply::Error(e.to_string()))?;
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_summaries_name_a_few_files_and_count_the_rest() {
        let file = |n: &str| FileInfo { name: SharePath::parse(n).unwrap(), size: 1, root: [0; 32] };
        let files: Vec<FileInfo> = (0..5).map(|i| file(&format!("f{i}"))).collect();
        let request = Request::Update { files };
        assert_eq!(Summary::of(&request).to_string(), "update, 5 files: \"f0\", \"f1\", \"f2\" and 2 more");
        let one = Request::Add { files: vec![file("only one.txt")] };
        assert_eq!(Summary::of(&one).to_string(), "add 1 file: \"only one.txt\"");
        let none = Request::Delete { names: vec![] };
        assert_eq!(Summary::of(&none).to_string(), "delete 0 files");
        let long = Request::Lookup { name: SharePath::parse(&"y".repeat(255)).unwrap() };
        assert!(Summary::of(&long).to_string().ends_with("\"... (255 bytes)"));
    }

    /// A reply that the socket cannot take at once (a client that does not read it, a
    /// long list of holders) does not hold up the lookups' thread that delivers it:
    /// a thread of its own writes the rest, and the connection writes nothing until
    /// it is out. The client, reading at last, gets the whole reply.
    #[test]
    fn a_reply_too_long_for_the_socket_leaves_the_lookups_thread_free() {
        use crate::wire::PeerHit;
        use std::sync::mpsc;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        rustix::net::sockopt::set_socket_recv_buffer_size(&client, 4096).unwrap();
        let (server, from) = listener.accept().unwrap();
        rustix::net::sockopt::set_socket_send_buffer_size(&server, 4096).unwrap();
        let outbox = Arc::new(Outbox {
            stream: Arc::new(server),
            conn: from,
            pending: Mutex::new(false),
            sent: Condvar::new(),
            log: Mutex::default(),
        });
        // About 270 KB of reply: far more than the two sockets hold.
        let hits: Vec<PeerHit> = (0..5000u16)
            .map(|i| PeerHit {
                addr: SocketAddr::from(([10, 0, 0, 1], i)),
                size: 7,
                root: [3; 32],
                complete: true,
            })
            .collect();
        let reply = OnItsWay::new(&outbox);
        let (done_tx, done_rx) = mpsc::channel();
        let answer = Ok(hits.clone());
        thread::spawn(move || {
            reply.deliver(SharePath::parse("popular.iso").unwrap(), None, answer);
            done_tx.send(()).unwrap();
        });
        done_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("deliver returns while the client reads nothing");
        assert!(*lock(&outbox.pending), "the rest is still on its way, and the connection waits for it");
        let got: Reply = wire::recv_msg(&mut &client).unwrap();
        assert_eq!(got, Reply::Peers(hits));
        outbox.wait_sent();
    }
}
