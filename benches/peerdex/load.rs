//! The load generator: raw index clients, registration of many peers, and the lookup
//! load that drives peerdex, the minimal responder and Redis alike.

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use peerdex::name::SharePath;
use peerdex::wire::{self, FileInfo, Message, Reply, Request, Service};
use rand::{RngExt, SeedableRng};

use crate::common::connect_from;
use crate::common::procfs::{cpu_seconds, cpu_user_system};

/// One descriptor per connection: the register scenario holds 10,000 of them.
pub struct Client {
    reader: BufReader<TcpStream>,
}

impl Client {
    pub fn connect(index: SocketAddr) -> Client {
        Client::connect_from("127.0.0.1", index)
    }

    /// Connects from the local address `from` (127.0.0.x: see `common::connect_from`).
    pub fn connect_from(from: &str, index: SocketAddr) -> Client {
        let stream = connect_from(from, index);
        stream.set_nodelay(true).unwrap();
        // Unbuffered, so that nothing past the Welcome can be read into a buffer that
        // is then dropped.
        wire::client_handshake(&mut &stream, &mut &stream, Service::Index).unwrap();
        Client { reader: BufReader::new(stream) }
    }

    pub fn stream(&self) -> &TcpStream {
        self.reader.get_ref()
    }

    pub fn into_stream(self) -> TcpStream {
        self.reader.into_inner()
    }

    pub fn call(&mut self, request: &Request) -> Reply {
        wire::send_msg(&mut self.stream(), request).unwrap();
        wire::recv_msg(&mut self.reader).unwrap()
    }

    pub fn recv(&mut self) -> Reply {
        wire::recv_msg(&mut self.reader).unwrap()
    }
}

pub fn name(s: &str) -> SharePath {
    SharePath::parse(s).unwrap()
}

pub fn file(n: String, i: u64) -> FileInfo {
    let mut root = [0u8; 32];
    root[..8].copy_from_slice(&i.to_be_bytes());
    FileInfo { name: name(&n), size: 1000 + i % 1_000_000, root }
}

/// Peers registered from one client address: within the index's default limits of 64
/// connections and 250,000 files per address, so that the benchmark runs with every
/// limit in force.
pub const PEERS_PER_ADDRESS: usize = 50;

/// The client address of peer `p`: 127.0.0.2 and up, [`PEERS_PER_ADDRESS`] each.
pub fn address_of(p: usize) -> String {
    let n = 2 + p / PEERS_PER_ADDRESS;
    format!("127.0.{}.{}", n / 250, n % 250 + 1)
}

/// Registers `peers` connections with `files_per_peer` files each, `threads` at a time;
/// `names(peer, i)` names file `i` of `peer`. Returns the open connections.
pub fn register_many(
    index: SocketAddr,
    peers: usize,
    files_per_peer: usize,
    threads: usize,
    names: fn(usize, usize) -> String,
) -> Vec<Client> {
    register_range(index, 0..peers, files_per_peer, threads, names)
}

/// [`register_many`] for the peers numbered `peers` (so that two calls, at two
/// servers, register different peers).
pub fn register_range(
    index: SocketAddr,
    peers: std::ops::Range<usize>,
    files_per_peer: usize,
    threads: usize,
    names: fn(usize, usize) -> String,
) -> Vec<Client> {
    let per_thread = peers.len().div_ceil(threads);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let peers = peers.clone();
            thread::spawn(move || {
                let mut conns = Vec::new();
                let first = peers.start + t * per_thread;
                for p in first..(first + per_thread).min(peers.end) {
                    let mut c = Client::connect_from(&address_of(p), index);
                    let files = (0..files_per_peer)
                        .map(|i| file(names(p, i), (p * files_per_peer + i) as u64))
                        .collect();
                    let reply = c.call(&Request::Register { port: 10_000 + (p % 50_000) as u16, files });
                    assert!(matches!(reply, Reply::Done { .. }), "{reply:?}");
                    conns.push(c);
                }
                conns
            })
        })
        .collect();
    handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
}

/// Sends the listing `request` on `c` and reads it whole: the entries, and when the
/// first and the last arrived.
pub fn time_listing(c: &mut Client, request: &Request) -> (usize, Duration, Duration) {
    let t = Instant::now();
    wire::send_msg(&mut c.stream(), request).unwrap();
    let (mut first, mut count) = (None, 0);
    loop {
        match c.recv() {
            Reply::ListChunk(e) => {
                first.get_or_insert_with(|| t.elapsed());
                count += e.len();
            }
            Reply::ListEnd { .. } => break,
            other => panic!("{other:?}"),
        }
    }
    let last = t.elapsed();
    (count, first.unwrap_or(last), last)
}

pub struct Latencies(pub Vec<Duration>);

impl Latencies {
    pub fn percentile(&mut self, p: f64) -> Duration {
        self.0.sort_unstable();
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.0.len() as f64 * p).ceil() as usize).clamp(1, self.0.len()) - 1;
        self.0[i]
    }
}

pub fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

/// Context switches (voluntary + involuntary) of a process so far, all threads.
pub fn context_switches(pid: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .flat_map(|status| {
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

pub fn cores() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get())
}

/// CPU used by this generator and by the server over a measured window.
pub struct CpuMeter {
    server: String,
    start: Instant,
    ours: f64,
    /// The server's (user, system) seconds at the start.
    theirs: (f64, f64),
}

impl CpuMeter {
    pub fn start(server_pid: u32) -> CpuMeter {
        let server = server_pid.to_string();
        CpuMeter {
            ours: cpu_seconds("self"),
            theirs: cpu_user_system(&server),
            server,
            start: Instant::now(),
        }
    }

    /// The server's (user, system) CPU seconds since the start.
    pub fn server_user_system(&self) -> (f64, f64) {
        let (user, system) = cpu_user_system(&self.server);
        (user - self.theirs.0, system - self.theirs.1)
    }

    /// (generator, server) CPU over the window, in % of one core.
    pub fn cpu(&self) -> (f64, f64) {
        let wall = self.start.elapsed().as_secs_f64();
        let ours = (cpu_seconds("self") - self.ours) / wall * 100.0;
        let (user, system) = self.server_user_system();
        (ours, (user + system) / wall * 100.0)
    }

    /// "generator X% / server Y%" of one core over the window.
    pub fn report(&self) -> String {
        let (ours, theirs) = self.cpu();
        format!("cpu: generator {ours:.0}%, server {theirs:.0}% (of one core; {} cores)", cores())
    }
}

/// The protocol the lookup load speaks: the same load, one request outstanding per
/// connection, against each server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    /// peerdex's own: a handshake, then `Lookup` frames.
    Peerdex,
    /// Redis's RESP: `GET key`, answered by a bulk string.
    Redis,
}

impl Wire {
    /// The request for `key`, ready to write.
    fn request(self, key: &str) -> Vec<u8> {
        match self {
            Wire::Peerdex => {
                let payload = Request::Lookup { name: name(key) }.encode();
                let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
                frame.extend_from_slice(&payload);
                frame
            }
            Wire::Redis => format!("*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len()).into_bytes(),
        }
    }

    /// The length of the one complete reply at the start of `inbox`, if it is there.
    fn complete(self, inbox: &[u8]) -> Option<usize> {
        match self {
            Wire::Peerdex => {
                let len = u32::from_be_bytes(inbox.get(..4)?.try_into().unwrap()) as usize;
                (inbox.len() >= 4 + len).then_some(4 + len)
            }
            Wire::Redis => {
                let end = inbox.windows(2).position(|w| w == b"\r\n")?;
                let len: i64 = std::str::from_utf8(&inbox[1..end]).ok()?.parse().ok()?;
                let total = if len < 0 { end + 2 } else { end + 2 + len as usize + 2 };
                (inbox.len() >= total).then_some(total)
            }
        }
    }

    /// A connection to a server that speaks this protocol.
    fn connect(self, server: SocketAddr) -> TcpStream {
        match self {
            Wire::Peerdex => Client::connect(server).into_stream(),
            Wire::Redis => {
                let s = TcpStream::connect(server).unwrap();
                s.set_nodelay(true).unwrap();
                s
            }
        }
    }
}

/// One measured window of lookups.
pub struct LoadResult {
    pub rate: f64,
    pub p50: Duration,
    pub p99: Duration,
    pub cpu: String,
}

/// `clients` connections send lookups of keys drawn from `keys` for `window`, one
/// request outstanding per connection (as `redis-benchmark -c N` without pipelining),
/// to the server at `server` (process `server_pid`), in its protocol.
///
/// One thread drives every connection with non-blocking sockets and epoll (mio), the
/// way redis-benchmark does, so the generator spends little CPU per request and does
/// not take the server's cores.
pub fn lookup_load(
    wire: Wire,
    server: SocketAddr,
    server_pid: u32,
    keys: &Arc<Vec<String>>,
    clients: usize,
    window: Duration,
) -> LoadResult {
    use mio::{Events, Interest, Poll, Token};

    // Encoded requests are prepared up front so the generator spends its CPU on I/O.
    let frames: Vec<Vec<u8>> = keys.iter().take(200_000).map(|k| wire.request(k)).collect();
    struct Conn {
        stream: mio::net::TcpStream,
        inbox: Vec<u8>,
        sent_at: Instant,
    }
    let mut poll = Poll::new().unwrap();
    let mut conns: Vec<Conn> = (0..clients)
        .map(|i| {
            let stream = wire.connect(server);
            stream.set_nonblocking(true).unwrap();
            let mut stream = mio::net::TcpStream::from_std(stream);
            poll.registry().register(&mut stream, Token(i), Interest::READABLE).unwrap();
            Conn { stream, inbox: Vec::with_capacity(64 * 1024), sent_at: Instant::now() }
        })
        .collect();
    let mut rng = rand::rngs::SmallRng::from_rng(&mut rand::rng());
    let send = |c: &mut Conn, rng: &mut rand::rngs::SmallRng| {
        let frame = &frames[rng.random_range(0..frames.len())];
        c.sent_at = Instant::now();
        // A request is ~40 bytes into an idle socket: it always fits the send buffer.
        c.stream.write_all(frame).expect("a request fits the socket buffer");
    };
    let switches = context_switches(&server_pid.to_string());
    let meter = CpuMeter::start(server_pid);
    let start = Instant::now();
    let end = start + window;
    for c in conns.iter_mut() {
        send(c, &mut rng);
    }
    let mut lat = Vec::with_capacity(1 << 22);
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 64 * 1024];
    while Instant::now() < end {
        poll.poll(&mut events, Some(end.saturating_duration_since(Instant::now()))).unwrap();
        for event in events.iter() {
            let c = &mut conns[event.token().0];
            loop {
                match c.stream.read(&mut buf) {
                    Ok(0) => panic!("the server closed a connection"),
                    Ok(n) => c.inbox.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("{e}"),
                }
            }
            while let Some(len) = wire.complete(&c.inbox) {
                lat.push(c.sent_at.elapsed());
                c.inbox.drain(..len);
                send(c, &mut rng);
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let switches = context_switches(&server_pid.to_string()) - switches;
    let (user, system) = meter.server_user_system();
    let lookups = lat.len().max(1) as f64;
    let cpu = format!(
        "{}; server per lookup: {:.1} µs user + {:.1} µs system, {:.2} context switches",
        meter.report(),
        user * 1e6 / lookups,
        system * 1e6 / lookups,
        switches as f64 / lookups
    );
    let mut all = Latencies(lat);
    let rate = all.0.len() as f64 / elapsed;
    LoadResult { rate, p50: all.percentile(0.50), p99: all.percentile(0.99), cpu }
}
