//! The peerdex benchmark harness: real `indexing-server` and `peer` processes on
//! loopback, driven over their real protocol, one printed row per scenario.
//!
//! ```text
//! cargo bench                         # every scenario
//! cargo bench -- lookup               # one (or several: lookup register list ...)
//! cargo bench -- lookup --seconds 3   # shorter measuring windows
//! ```
//!
//! Scenarios: lookup, register, list, transfer, small, startup. Each row also gives the
//! CPU used by this load generator and by the server during the measurement, so that
//! a saturated generator cannot pass for a slow server.

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use peerdex::name::ShareName;
use peerdex::wire::{self, FileInfo, Message, Reply, Request, Service};
use rand::seq::SliceRandom;
use rand::{Rng, RngExt, SeedableRng};

const INDEX_BIN: &str = env!("CARGO_BIN_EXE_indexing-server");
const PEER_BIN: &str = env!("CARGO_BIN_EXE_peer");

// ---------------------------------------------------------------------------------
// Processes and /proc readings.

/// A child process that is killed when dropped.
struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    fn start(bin: &str, args: &[&str], dir: &Path) -> Proc {
        Proc::start_capturing(bin, args, dir, false)
    }

    /// Starts `bin`; its stdout lines (and, with `stderr`, its stderr lines too) arrive
    /// on one channel.
    fn start_capturing(bin: &str, args: &[&str], dir: &Path, stderr: bool) -> Proc {
        let mut child = Command::new(bin)
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(if stderr { Stdio::piped() } else { Stdio::null() })
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        let (tx, lines) = mpsc::channel();
        let pump = |out: Box<dyn Read + Send>, tx: mpsc::Sender<String>| {
            thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        };
        pump(Box::new(child.stdout.take().unwrap()), tx.clone());
        if let Some(err) = child.stderr.take() {
            pump(Box::new(err), tx);
        }
        let stdin = child.stdin.take();
        Proc { child, stdin, lines }
    }

    /// Waits up to `timeout` for a line containing any of `patterns`.
    fn expect_any(&self, patterns: &[&str], timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if patterns.iter().any(|p| line.contains(p)) => return Some(line),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (up to 10 minutes) for a stdout line containing `pattern`.
    fn expect(&self, pattern: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(pattern) => return line,
                Ok(_) => {}
                Err(e) => panic!("no line containing {pattern:?}: {e}"),
            }
        }
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn index_server(dir: &Path) -> (Proc, SocketAddr) {
    index_server_with(dir, &[])
}

/// An index server with extra options.
fn index_server_with(dir: &Path, extra: &[&str]) -> (Proc, SocketAddr) {
    let log = dir.join("log.log");
    let level = std::env::var("PEERDEX_BENCH_LOG_LEVEL").unwrap_or_else(|_| "info".into());
    let mut args = vec!["127.0.0.1", "0", "--log-file", log.to_str().unwrap(), "--log-level", &level];
    args.extend(extra);
    let p = Proc::start(INDEX_BIN, &args, dir);
    let addr = p.expect("listening on ").trim_start_matches("listening on ").parse().unwrap();
    (p, addr)
}

fn peer(index: SocketAddr, folder: &Path) -> Proc {
    let port = index.port().to_string();
    let p =
        Proc::start(PEER_BIN, &["127.0.0.1", &port, "0", folder.to_str().unwrap()], folder.parent().unwrap());
    p.expect("serving ");
    p
}

/// Context switches (voluntary + involuntary) of a process so far, all threads.
fn context_switches(pid: &str) -> u64 {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .flatten()
        .filter_map(|t| fs::read_to_string(t.path().join("status")).ok())
        .flat_map(|status| {
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

#[path = "../tests/common/procfs.rs"]
mod procfs;
use procfs::{cpu_seconds, rss_and_threads};

/// CPU used by this generator and by the server over a measured window.
struct CpuMeter {
    server: String,
    start: Instant,
    ours: f64,
    theirs: f64,
}

impl CpuMeter {
    fn start(server_pid: u32) -> CpuMeter {
        let server = server_pid.to_string();
        CpuMeter { ours: cpu_seconds("self"), theirs: cpu_seconds(&server), server, start: Instant::now() }
    }

    /// (generator, server) CPU over the window, in % of one core.
    fn cpu(&self) -> (f64, f64) {
        let wall = self.start.elapsed().as_secs_f64();
        let ours = (cpu_seconds("self") - self.ours) / wall * 100.0;
        let theirs = (cpu_seconds(&self.server) - self.theirs) / wall * 100.0;
        (ours, theirs)
    }

    /// "generator X% / server Y%" of one core over the window.
    fn report(&self) -> String {
        let (ours, theirs) = self.cpu();
        format!("cpu: generator {ours:.0}%, server {theirs:.0}% (of one core; {} cores)", cores())
    }
}

fn cores() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get())
}

// ---------------------------------------------------------------------------------
// A raw index client.

/// One descriptor per connection: the register scenario holds 10,000 of them.
struct Client {
    reader: BufReader<TcpStream>,
}

impl Client {
    fn connect(index: SocketAddr) -> Client {
        let stream = TcpStream::connect(index).expect("connect to the index");
        stream.set_nodelay(true).unwrap();
        // Unbuffered, so that nothing past the Welcome can be read into a buffer that
        // is then dropped.
        wire::client_handshake(&mut &stream, &mut &stream, Service::Index).unwrap();
        Client { reader: BufReader::new(stream) }
    }

    fn stream(&self) -> &TcpStream {
        self.reader.get_ref()
    }

    fn call(&mut self, request: &Request) -> Reply {
        wire::send_msg(&mut self.stream(), request).unwrap();
        wire::recv_msg(&mut self.reader).unwrap()
    }
}

fn name(s: &str) -> ShareName {
    ShareName::parse(s).unwrap()
}

fn file(n: String, i: u64) -> FileInfo {
    let mut sha256 = [0u8; 32];
    sha256[..8].copy_from_slice(&i.to_be_bytes());
    FileInfo { name: name(&n), size: 1000 + i % 1_000_000, sha256 }
}

/// Registers `peers` connections with `files_per_peer` files each, `threads` at a time;
/// `names(peer, i)` names file `i` of `peer`. Returns the open connections.
fn register_many(
    index: SocketAddr,
    peers: usize,
    files_per_peer: usize,
    threads: usize,
    names: fn(usize, usize) -> String,
) -> Vec<Client> {
    let per_thread = peers.div_ceil(threads);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            thread::spawn(move || {
                let mut conns = Vec::new();
                for p in (t * per_thread)..((t + 1) * per_thread).min(peers) {
                    let mut c = Client::connect(index);
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

// ---------------------------------------------------------------------------------
// Latency statistics.

struct Latencies(Vec<Duration>);

impl Latencies {
    fn percentile(&mut self, p: f64) -> Duration {
        self.0.sort_unstable();
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.0.len() as f64 * p).ceil() as usize).clamp(1, self.0.len()) - 1;
        self.0[i]
    }
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

/// `clients` connections send lookups of names drawn from `names` for `window`, one
/// request outstanding per connection (as `redis-benchmark -c N` without pipelining);
/// returns (lookups per second, p50, p99, cpu report).
///
/// One thread drives every connection with non-blocking sockets and epoll (mio), the
/// way redis-benchmark does, so the generator spends little CPU per request and does
/// not take the server's cores.
fn lookup_load(
    index: SocketAddr,
    server_pid: u32,
    names: &Arc<Vec<String>>,
    clients: usize,
    window: Duration,
) -> (f64, Duration, Duration, String) {
    use mio::{Events, Interest, Poll, Token};

    // Encoded requests are prepared up front so the generator spends its CPU on I/O.
    let frames: Vec<Vec<u8>> = names
        .iter()
        .take(200_000)
        .map(|n| {
            let payload = Request::Lookup { name: name(n) }.encode();
            let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
            frame.extend_from_slice(&payload);
            frame
        })
        .collect();
    struct Conn {
        stream: mio::net::TcpStream,
        inbox: Vec<u8>,
        sent_at: Instant,
    }
    let mut poll = Poll::new().unwrap();
    let mut conns: Vec<Conn> = (0..clients)
        .map(|i| {
            let c = Client::connect(index);
            let stream = c.reader.into_inner();
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
            while c.inbox.len() >= 4 {
                let len = u32::from_be_bytes(c.inbox[..4].try_into().unwrap()) as usize;
                if c.inbox.len() < 4 + len {
                    break;
                }
                debug_assert!(matches!(c.inbox[4], 0x85 | 0x86));
                lat.push(c.sent_at.elapsed());
                c.inbox.drain(..4 + len);
                send(c, &mut rng);
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let switches = context_switches(&server_pid.to_string()) - switches;
    let cpu = format!(
        "{}; server context switches per lookup {:.2}",
        meter.report(),
        switches as f64 / lat.len() as f64
    );
    let mut all = Latencies(lat);
    let rate = all.0.len() as f64 / elapsed;
    (rate, all.percentile(0.50), all.percentile(0.99), cpu)
}

// ---------------------------------------------------------------------------------
// Scenarios.

struct Opts {
    seconds: u64,
    minutes: f64,
}

fn row(scenario: &str, result: String) {
    println!("{scenario:<9} | {result}");
}

fn shared_or_unique(p: usize, i: usize) -> String {
    // 900 names unique to this peer, and 100 of the 1,000 shared names: peer p shares
    // the block (p % 10), so each shared name is held by 100 of the 1,000 peers.
    if i < 900 {
        format!("peer{p:04}-file{i:03}.dat")
    } else {
        format!("shared-{:04}.dat", (p % 10) * 100 + (i - 900))
    }
}

fn lookup(opts: &Opts) {
    let dir = tempfile::tempdir().unwrap();
    let (server, index) = index_server(dir.path());
    let t = Instant::now();
    let _conns = register_many(index, 1000, 1000, 8, shared_or_unique);
    let loaded = t.elapsed();
    let mut names: Vec<String> =
        (0..1000).flat_map(|p| (0..900).map(move |i| shared_or_unique(p, i))).collect();
    names.extend((0..1000).map(|s| format!("shared-{s:04}.dat")));
    names.shuffle(&mut rand::rng());
    let names = Arc::new(names);
    let (rss, threads) = rss_and_threads(server.pid());
    row(
        "lookup",
        format!(
            "index of 1,000 peers x 1,000 files loaded in {:.1} s; server RSS {} MiB, {threads} threads",
            loaded.as_secs_f64(),
            rss >> 20
        ),
    );
    for clients in [50, 1] {
        let window = Duration::from_secs(opts.seconds);
        let (rate, p50, p99, cpu) = lookup_load(index, server.pid(), &names, clients, window);
        row(
            "lookup",
            format!("{clients:>2} clients: {rate:>8.0} lookups/s, p50 {}, p99 {}; {cpu}", us(p50), us(p99)),
        );
    }
}

fn register_and_list(opts: &Opts, run_list: bool, run_register: bool) {
    let dir = tempfile::tempdir().unwrap();
    // 10,000 peers plus the lookup clients: above the default cap of 10,000.
    let (server, index) = index_server_with(dir.path(), &["--max-connections", "10100"]);
    let (rss0, threads0) = rss_and_threads(server.pid());
    let (peers, files) = (10_000, 1_000);
    let meter = CpuMeter::start(server.pid());
    let t = Instant::now();
    let conns = register_many(index, peers, files, 16, |p, i| format!("peer{p:05}-file{i:04}.dat"));
    let took = t.elapsed();
    let cpu = meter.report();
    let (rss, threads) = rss_and_threads(server.pid());
    let entries = (peers * files) as u64;
    if run_register {
        row(
            "register",
            format!(
                "{peers} peers x {files} files = {entries} entries in {:.1} s ({:.0} entries/s); {cpu}",
                took.as_secs_f64(),
                entries as f64 / took.as_secs_f64()
            ),
        );
        row(
            "register",
            format!(
                "server RSS {} MiB ({:.0} bytes/entry over the empty server's {} MiB), {threads} threads (empty: {threads0})",
                rss >> 20,
                (rss - rss0) as f64 / entries as f64,
                rss0 >> 20
            ),
        );
        let names: Arc<Vec<String>> = Arc::new({
            let mut rng = rand::rng();
            (0..200_000)
                .map(|_| {
                    format!("peer{:05}-file{:04}.dat", rng.random_range(0..peers), rng.random_range(0..files))
                })
                .collect()
        });
        let window = Duration::from_secs(opts.seconds.min(5));
        for clients in [1, 50] {
            let (rate, p50, p99, cpu) = lookup_load(index, server.pid(), &names, clients, window);
            row(
                "register",
                format!(
                    "lookups with all connected, {clients:>2} clients: {rate:.0}/s, p50 {}, p99 {}; {cpu}",
                    us(p50),
                    us(p99)
                ),
            );
        }
    }
    if run_list {
        let mut c = Client::connect(index);
        for (label, request) in [
            ("everything", Request::List { pattern: String::new(), limit: None }),
            ("--limit 100", Request::List { pattern: String::new(), limit: Some(100) }),
            ("pattern", Request::List { pattern: "peer09999-file09".into(), limit: None }),
        ] {
            let t = Instant::now();
            wire::send_msg(&mut c.stream(), &request).unwrap();
            let mut first = None;
            let mut count = 0usize;
            loop {
                match wire::recv_msg::<Reply>(&mut c.reader).unwrap() {
                    Reply::ListChunk(e) => {
                        first.get_or_insert_with(|| t.elapsed());
                        count += e.len();
                    }
                    Reply::ListEnd { .. } => break,
                    other => panic!("{other:?}"),
                }
            }
            let last = t.elapsed();
            row(
                "list",
                format!(
                    "{label:<12} {count:>9} entries: first after {}, last after {:.3} s",
                    us(first.unwrap_or(last)),
                    last.as_secs_f64()
                ),
            );
        }
    }
    drop(conns);
}

/// Writes `len` random bytes to `path`, fast.
fn random_file(path: &Path, len: u64) {
    let mut rng = rand::rngs::SmallRng::from_rng(&mut rand::rng());
    let mut out = std::io::BufWriter::with_capacity(1 << 20, fs::File::create(path).unwrap());
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill_bytes(&mut buf[..n]);
        out.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    out.flush().unwrap();
}

fn same_content(a: &Path, b: &Path) -> bool {
    let mut fa = BufReader::with_capacity(1 << 20, fs::File::open(a).unwrap());
    let mut fb = BufReader::with_capacity(1 << 20, fs::File::open(b).unwrap());
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = fa.read(&mut ba).unwrap();
        let m = fb.read_exact(&mut bb[..n]).is_ok();
        if !m || ba[..n] != bb[..n] {
            return false;
        }
        if n == 0 {
            return fb.read(&mut bb).unwrap() == 0;
        }
    }
}

fn transfer(_opts: &Opts) {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    fs::create_dir(&a).unwrap();
    fs::create_dir(&b).unwrap();
    let size: u64 = 1 << 30;
    random_file(&a.join("big.bin"), size);
    let (server, index) = index_server(dir.path());
    let mut pa = peer(index, &a);
    pa.send("register");
    pa.expect("registered 1 files");
    let mut pb = peer(index, &b);
    let mut speeds = Vec::new();
    for run in 1..=3 {
        let meter_a = CpuMeter::start(pa.pid());
        let meter_b = CpuMeter::start(pb.pid());
        let t = Instant::now();
        pb.send("download big.bin");
        pb.expect("downloaded big.bin");
        let took = t.elapsed().as_secs_f64();
        let (cpu_a, cpu_b) = (meter_a.cpu(), meter_b.cpu());
        assert!(same_content(&a.join("big.bin"), &b.join("big.bin")), "the copy differs");
        let speed = size as f64 / 1e6 / took;
        speeds.push(speed);
        row(
            "transfer",
            format!(
                "run {run}: 1 GiB in {took:.2} s = {speed:.0} MB/s, verified and renamed; cpu: sender {:.0}%, receiver {:.0}%",
                cpu_a.1, cpu_b.1
            ),
        );
        pb.send("delete big.bin");
        pb.expect("deleted big.bin");
    }
    speeds.sort_by(f64::total_cmp);
    row("transfer", format!("median {:.0} MB/s", speeds[1]));
    drop(server);
}

fn small(_opts: &Opts) {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    fs::create_dir(&a).unwrap();
    fs::create_dir(&b).unwrap();
    let count = 1000;
    let mut rng = rand::rng();
    for i in 0..count {
        let mut content = vec![0u8; 4096];
        rng.fill_bytes(&mut content);
        fs::write(a.join(format!("small-{i:04}.bin")), content).unwrap();
    }
    let (server, index) = index_server(dir.path());
    let mut pa = peer(index, &a);
    pa.send("register");
    pa.expect(&format!("registered {count} files"));
    // B is registered, as a sharing peer would be: each download also updates the index.
    let mut pb = peer(index, &b);
    pb.send("register");
    pb.expect("registered 0 files");
    let (meter_a, meter_b) = (CpuMeter::start(pa.pid()), CpuMeter::start(pb.pid()));
    let meter_index = CpuMeter::start(server.pid());
    let t = Instant::now();
    for i in 0..count {
        pb.send(&format!("download small-{i:04}.bin"));
    }
    for _ in 0..count {
        pb.expect("downloaded small-");
    }
    let took = t.elapsed().as_secs_f64();
    let cpu = (meter_a.cpu(), meter_b.cpu(), meter_index.cpu());
    for i in 0..count {
        let n = format!("small-{i:04}.bin");
        assert_eq!(fs::read(a.join(&n)).unwrap(), fs::read(b.join(&n)).unwrap());
    }
    row(
        "small",
        format!(
            "{count} files of 4 KiB in {took:.2} s = {:.0} files/s; cpu: sender {:.0}%, receiver {:.0}%, index {:.0}%, generator {:.0}%",
            count as f64 / took,
            cpu.0.1,
            cpu.1.1,
            cpu.2.1,
            cpu.0.0
        ),
    );
}

fn startup(_opts: &Opts) {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    fs::create_dir(&a).unwrap();
    let count = 10_000u64;
    let total: u64 = 1 << 30;
    for i in 0..count {
        random_file(&a.join(format!("file-{i:05}.bin")), total / count);
    }
    let (_server, index) = index_server(dir.path());
    for run in ["first run", "second run"] {
        let mut p = peer(index, &a);
        let t = Instant::now();
        p.send("register");
        p.expect(&format!("registered {count} files"));
        let took = t.elapsed().as_secs_f64();
        let mut c = Client::connect(index);
        let reply = c.call(&Request::Lookup { name: name("file-09999.bin") });
        assert!(matches!(reply, Reply::Peers(_)), "{reply:?}");
        row("startup", format!("{run}: {count} files, 1 GiB registered in {took:.2} s"));
    }
}

/// Content of file `k` of soak peer `p`: 64 KiB from a seed, so any copy can be
/// checked against its hash.
fn soak_content(p: usize, k: usize) -> Vec<u8> {
    let mut rng = rand::rngs::SmallRng::seed_from_u64((p * 100 + k) as u64);
    let mut bytes = vec![0u8; 64 * 1024];
    rng.fill_bytes(&mut bytes);
    bytes
}

/// 50 peers churn for `--minutes`: each downloads random files of the others,
/// verifies and deletes them, and now and then quits or is killed and comes back.
fn soak(opts: &Opts) {
    const PEERS: usize = 50;
    const FILES: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let (server, index) = index_server(dir.path());
    let expected: Arc<HashMap<String, [u8; 32]>> = Arc::new(
        (0..PEERS)
            .flat_map(|p| (0..FILES).map(move |k| (p, k)))
            .map(|(p, k)| {
                let sha = peerdex::peer::folder::hash(&mut &soak_content(p, k)[..]).unwrap();
                (format!("p{p:02}-{k}.bin"), sha)
            })
            .collect(),
    );
    let folders: Vec<PathBuf> = (0..PEERS)
        .map(|p| {
            let f = dir.path().join(format!("peer{p:02}"));
            fs::create_dir(&f).unwrap();
            for k in 0..FILES {
                fs::write(f.join(format!("p{p:02}-{k}.bin")), soak_content(p, k)).unwrap();
            }
            f
        })
        .collect();
    let start_peer = |folder: &Path| -> Proc {
        let port = index.port().to_string();
        let p = Proc::start_capturing(
            PEER_BIN,
            &["127.0.0.1", &port, "0", folder.to_str().unwrap()],
            dir.path(),
            true,
        );
        p.expect("serving ");
        p
    };
    let mut peers: Vec<Proc> = folders.iter().map(|f| start_peer(f)).collect();
    for p in peers.iter_mut() {
        p.send("register");
        p.expect("registered");
    }
    let (rss0, threads0) = rss_and_threads(server.pid());
    let deadline = Instant::now() + Duration::from_secs_f64(opts.minutes * 60.0);
    #[derive(Default)]
    struct Tally {
        verified: u64,
        corrupt: u64,
        unavailable: u64,
        lost: u64,
        restarts: u64,
    }
    let workers: Vec<_> = peers
        .drain(..)
        .enumerate()
        .map(|(me, mut proc)| {
            let (folder, expected) = (folders[me].clone(), Arc::clone(&expected));
            let port = index.port().to_string();
            let root = dir.path().to_path_buf();
            thread::spawn(move || {
                let mut rng = rand::rngs::SmallRng::from_rng(&mut rand::rng());
                let mut t = Tally::default();
                while Instant::now() < deadline {
                    let roll = rng.random_range(0..100);
                    if roll < 3 {
                        // Leave and come back: a clean quit, or a SIGKILL.
                        if roll == 0 {
                            let _ = proc.child.kill();
                        } else {
                            proc.stdin = None;
                        }
                        let _ = proc.child.wait();
                        let args = ["127.0.0.1", port.as_str(), "0", folder.to_str().unwrap()];
                        proc = Proc::start_capturing(PEER_BIN, &args, &root, true);
                        proc.expect("serving ");
                        proc.send("register");
                        proc.expect("registered");
                        t.restarts += 1;
                        continue;
                    }
                    let other = (me + rng.random_range(1..PEERS)) % PEERS;
                    let name = format!("p{other:02}-{}.bin", rng.random_range(0..FILES));
                    proc.send(&format!("download {name}"));
                    let done = format!("downloaded {name} ");
                    let failed = format!("cannot download \"{name}\": ");
                    match proc.expect_any(&[&done, &failed], Duration::from_secs(60)) {
                        None => t.lost += 1,
                        Some(line) if line.contains(&failed) => t.unavailable += 1,
                        Some(_) => {
                            let got =
                                peerdex::peer::folder::hash(&mut fs::File::open(folder.join(&name)).unwrap());
                            if got.ok() == expected.get(&name).copied() {
                                t.verified += 1;
                            } else {
                                t.corrupt += 1;
                            }
                            proc.send(&format!("delete {name}"));
                            if proc
                                .expect_any(&[&format!("deleted {name}")], Duration::from_secs(60))
                                .is_none()
                            {
                                t.lost += 1;
                            }
                        }
                    }
                }
                (t, proc)
            })
        })
        .collect();
    let mut total = Tally::default();
    let mut peers = Vec::new();
    for w in workers {
        let (t, proc) = w.join().unwrap();
        total.verified += t.verified;
        total.corrupt += t.corrupt;
        total.unavailable += t.unavailable;
        total.lost += t.lost;
        total.restarts += t.restarts;
        peers.push(proc);
    }
    let (rss1, threads1) = rss_and_threads(server.pid());
    row(
        "soak",
        format!(
            "{PEERS} peers for {:.1} min: {} downloads verified, {} corrupt, {} lost, {} refused while the source was away; {} restarts",
            opts.minutes, total.verified, total.corrupt, total.lost, total.unavailable, total.restarts
        ),
    );
    row(
        "soak",
        format!(
            "server threads {threads0} -> {threads1}, RSS {:.1} -> {:.1} MiB",
            rss0 as f64 / 1048576.0,
            rss1 as f64 / 1048576.0
        ),
    );
    drop(peers);
}

fn machine() -> String {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map_or("unknown CPU", |m| m.trim_start_matches([' ', '\t', ':']));
    let sha = if cpuinfo.contains(" sha_ni") { "SHA extensions present" } else { "no SHA extensions" };
    format!("{} cores, {model}, {sha}", cores())
}

fn main() {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let mut wanted = Vec::new();
    let mut opts = Opts { seconds: 10, minutes: 1.0 };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--bench" => {} // cargo bench passes this
            "--seconds" => opts.seconds = args.next().and_then(|s| s.parse().ok()).expect("--seconds N"),
            "--minutes" => opts.minutes = args.next().and_then(|s| s.parse().ok()).expect("--minutes N"),
            s if s.starts_with('-') => {}
            s => wanted.push(s.to_owned()),
        }
    }
    let all = ["lookup", "register", "list", "transfer", "small", "startup", "soak"];
    // The soak runs for minutes: only when asked for by name.
    let run = |s: &str| (wanted.is_empty() && s != "soak") || wanted.iter().any(|w| w == s);
    println!("peerdex benchmark on {}", machine());
    println!("{:<9} | result", "scenario");
    for scenario in all {
        if !run(scenario) {
            continue;
        }
        match scenario {
            "lookup" => lookup(&opts),
            "register" => register_and_list(&opts, run("list"), true),
            "list" if !run("register") => register_and_list(&opts, true, false),
            "list" => {}
            "transfer" => transfer(&opts),
            "small" => small(&opts),
            "startup" => startup(&opts),
            "soak" => soak(&opts),
            _ => unreachable!(),
        }
    }
}
