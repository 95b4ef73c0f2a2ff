//! Test support: starting the real binaries and talking to them.
//!
//! [`Proc`] owns a child process: its stdout and stderr lines arrive on a channel (read
//! by threads, so a chatty child never blocks), its stdin is written by another thread
//! (so a full pipe never blocks a test), and `Drop` kills and reaps it.

#![allow(dead_code)]

pub mod netns;
pub mod pg;
pub mod procfs;

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant};

use peerdex::wire::{self, Reply, Request, Service};

/// Generous: these waits end as soon as the awaited line arrives, and a loaded 2-core
/// CI machine must not turn a slow start into a failure.
pub const TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Out,
    Err,
}

pub struct Proc {
    name: String,
    child: Child,
    /// The child's stderr when it is deliberately never read (see
    /// [`Proc::stderr_unread`]): held open so that the pipe fills up.
    _unread: Option<std::process::ChildStderr>,
    stdin: Option<Sender<Vec<u8>>>,
    lines: Receiver<(Stream, String)>,
    /// Every line seen so far, in arrival order.
    seen: Vec<(Stream, String)>,
    /// Per stream, how far `expect` has read in `seen`.
    pos: [usize; 2],
    /// An index server's schema in PostgreSQL, dropped after the server is killed.
    schema: Option<pg::Schema>,
}

fn pump(stream: impl Read + Send + 'static, tag: Stream, tx: Sender<(Stream, String)>) {
    thread::spawn(move || {
        for line in BufReader::new(stream).split(b'\n') {
            let Ok(line) = line else { break };
            if tx.send((tag, String::from_utf8_lossy(&line).into_owned())).is_err() {
                break;
            }
        }
    });
}

fn feed(mut stdin: ChildStdin) -> Sender<Vec<u8>> {
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    thread::spawn(move || {
        for chunk in rx {
            if stdin.write_all(&chunk).and_then(|()| stdin.flush()).is_err() {
                break;
            }
        }
        // Dropping stdin here closes the child's input.
    });
    tx
}

impl Proc {
    pub fn start<S: AsRef<OsStr>>(bin: &str, args: &[S], dir: &Path) -> Proc {
        Proc::start_with_env(bin, args, dir, &[])
    }

    /// Like [`Proc::start`], with extra environment variables.
    pub fn start_with_env<S: AsRef<OsStr>>(
        bin: &str,
        args: &[S],
        dir: &Path,
        env: &[(&str, &OsStr)],
    ) -> Proc {
        Proc::spawn(bin, args, dir, env, true)
    }

    /// Like [`Proc::start`], but nobody ever reads the child's stderr: once the pipe's
    /// buffer (64 KiB) is full, every write the child makes to stderr blocks.
    pub fn stderr_unread<S: AsRef<OsStr>>(bin: &str, args: &[S], dir: &Path) -> Proc {
        Proc::spawn(bin, args, dir, &[], false)
    }

    fn spawn<S: AsRef<OsStr>>(
        bin: &str,
        args: &[S],
        dir: &Path,
        env: &[(&str, &OsStr)],
        read_stderr: bool,
    ) -> Proc {
        let mut child = Command::new(bin)
            .args(args)
            .envs(env.iter().copied())
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        let (tx, lines) = mpsc::channel();
        pump(child.stdout.take().unwrap(), Stream::Out, tx.clone());
        let unread = if read_stderr {
            pump(child.stderr.take().unwrap(), Stream::Err, tx);
            None
        } else {
            child.stderr.take()
        };
        let stdin = Some(feed(child.stdin.take().unwrap()));
        let name = Path::new(bin).file_name().unwrap().to_string_lossy().into_owned();
        Proc { name, child, _unread: unread, stdin, lines, seen: Vec::new(), pos: [0, 0], schema: None }
    }

    /// Starts `indexing-server 127.0.0.1 0` in `dir` and returns it with its address.
    pub fn index_server(dir: &Path) -> (Proc, SocketAddr) {
        Proc::index_server_on(dir, "127.0.0.1")
    }

    /// Starts `indexing-server <ip> 0` in `dir` and returns it with its address.
    pub fn index_server_on(dir: &Path, ip: &str) -> (Proc, SocketAddr) {
        Proc::index_server_with(dir, &[ip, "0"])
    }

    /// Starts `indexing-server` with `args` (address, port, options) in `dir`, logging
    /// to `dir/log.log`; returns it with its address.
    ///
    /// With `PEERDEX_TEST_STORE=1`, the server keeps its registry in a fresh schema of
    /// PostgreSQL (`--store`), so that every black-box test of the index runs against
    /// that backend too (`.ci/run` runs them both ways).
    pub fn index_server_with(dir: &Path, args: &[&str]) -> (Proc, SocketAddr) {
        let schema = match std::env::var_os("PEERDEX_TEST_STORE").is_some_and(|v| v == "1") {
            true => Some(pg::Schema::new("this test").expect("PEERDEX_TEST_STORE=1 needs PostgreSQL")),
            false => None,
        };
        let log = dir.join("log.log");
        let mut args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        args.extend([OsStr::new("--log-file"), log.as_os_str()]);
        if let Some(schema) = &schema {
            args.extend([OsStr::new("--store"), OsStr::new(&schema.url)]);
        }
        let mut p = Proc::start(env!("CARGO_BIN_EXE_indexing-server"), &args, dir);
        p.schema = schema;
        let line = p.expect(Stream::Out, "listening on ");
        let addr = line.trim_start_matches("listening on ").parse().expect("an address");
        (p, addr)
    }

    /// Starts `peer <index> 0 <folder>` and returns it with its file server's address.
    pub fn peer(index: SocketAddr, folder: &Path) -> (Proc, SocketAddr) {
        let (ip, port) = (index.ip().to_string(), index.port().to_string());
        let args = [ip.as_ref(), port.as_ref(), "0".as_ref(), folder.as_os_str()];
        let mut p = Proc::start(env!("CARGO_BIN_EXE_peer"), &args, folder.parent().unwrap());
        let line = p.expect(Stream::Out, "serving ");
        let addr = line.rsplit(" on ").next().unwrap().parse().expect("an address");
        (p, addr)
    }

    /// Starts a peer on `folder`, registers it and waits until the index has its
    /// `files` files; returns it with its file server's address.
    pub fn registered_peer(index: SocketAddr, folder: &Path, files: usize) -> (Proc, SocketAddr) {
        let (mut p, addr) = Proc::peer(index, folder);
        let line = p.register();
        let files = format!("registered {} ", peerdex::peer::shell::files(files));
        assert!(line.starts_with(&files), "{line}");
        (p, addr)
    }

    /// Sends `register` to a peer and returns its `registered ...` line.
    pub fn register(&mut self) -> String {
        self.send("register");
        self.expect(Stream::Out, "registered ")
    }

    /// Writes one line to the child's stdin.
    pub fn send(&self, line: &str) {
        let tx = self.stdin.as_ref().expect("stdin is open");
        tx.send(format!("{line}\n").into_bytes()).expect("stdin writer alive");
    }

    /// Writes raw bytes to the child's stdin.
    pub fn send_bytes(&self, bytes: &[u8]) {
        self.stdin.as_ref().expect("stdin is open").send(bytes.to_vec()).expect("stdin writer alive");
    }

    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    fn idx(stream: Stream) -> usize {
        match stream {
            Stream::Out => 0,
            Stream::Err => 1,
        }
    }

    /// Reads lines of `stream` until one contains `pattern`; returns every line of that
    /// stream read on the way, the match last. Panics after [`TIMEOUT`] with all output.
    pub fn read_until(&mut self, stream: Stream, pattern: &str) -> Vec<String> {
        let deadline = Instant::now() + TIMEOUT;
        let mut got = Vec::new();
        loop {
            while self.pos[Self::idx(stream)] < self.seen.len() {
                let i = self.pos[Self::idx(stream)];
                self.pos[Self::idx(stream)] += 1;
                let (s, line) = &self.seen[i];
                if *s == stream {
                    got.push(line.clone());
                    if line.contains(pattern) {
                        return got;
                    }
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "{}: no {stream:?} line containing {pattern:?} within {TIMEOUT:?}\n{}",
                        self.name,
                        self.dump()
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!(
                        "{}: exited without a {stream:?} line containing {pattern:?}\n{}",
                        self.name,
                        self.dump()
                    )
                }
            }
        }
    }

    /// The first line of `stream` containing `pattern`, after the last one read.
    pub fn expect(&mut self, stream: Stream, pattern: &str) -> String {
        self.read_until(stream, pattern).pop().unwrap()
    }

    /// The first line of either stream, after the last one read of it, that contains
    /// one of `patterns`; `None` if none comes within `timeout` (no panic: for the
    /// benchmark's soak, which counts what never came).
    pub fn expect_any(&mut self, patterns: &[&str], timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut i = self.pos[0].min(self.pos[1]);
        loop {
            while i < self.seen.len() {
                let (s, line) = &self.seen[i];
                let at = Self::idx(*s);
                if i >= self.pos[at] {
                    self.pos[at] = i + 1;
                    if patterns.iter().any(|p| line.contains(p)) {
                        return Some(line.clone());
                    }
                }
                i += 1;
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => return None,
            }
        }
    }

    /// Everything seen so far, for failure messages.
    pub fn dump(&self) -> String {
        self.seen.iter().map(|(s, l)| format!("  [{s:?}] {l}\n")).collect()
    }

    /// [`Proc::dump`], with the lines that arrived and were not read yet.
    pub fn dump_all(&mut self) -> String {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        self.dump()
    }

    /// Every line of `stream` seen so far.
    pub fn lines(&self, stream: Stream) -> Vec<String> {
        self.seen.iter().filter(|(s, _)| *s == stream).map(|(_, l)| l.clone()).collect()
    }

    /// Closes stdin and waits for the child to exit; collects all its output.
    pub fn finish(&mut self) -> ExitStatus {
        self.close_stdin();
        let deadline = Instant::now() + TIMEOUT;
        // Drain output until both pipes close, then reap.
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    panic!("{}: did not exit within {TIMEOUT:?}\n{}", self.name, self.dump())
                }
            }
        }
        self.child.wait().expect("wait")
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// (resident set size in bytes, thread count) of the child, from /proc.
    pub fn rss_and_threads(&self) -> (u64, u64) {
        procfs::rss_and_threads(self.pid())
    }

    /// CPU time the child has used so far, in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        procfs::cpu_seconds(&self.pid().to_string())
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `get_files_list` (with `args`), returning the listing's lines without the summary.
    pub fn list(&mut self, args: &str) -> Vec<String> {
        self.send(&format!("get_files_list {args}"));
        let mut lines = self.read_until(Stream::Out, " at other peers");
        lines.pop();
        lines
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `condition` until it holds, or panics after [`TIMEOUT`]. Each poll is a real
/// round trip, so no sleep is needed between them beyond a short pause to not spin.
pub fn wait_for(what: &str, condition: impl FnMut() -> bool) {
    wait_showing(what, condition, &mut []);
}

/// [`wait_for`], and on timeout everything `shown` printed, for the failure to say why.
pub fn wait_showing(what: &str, mut condition: impl FnMut() -> bool, shown: &mut [&mut Proc]) {
    let deadline = Instant::now() + TIMEOUT;
    while !condition() {
        if Instant::now() >= deadline {
            let seen: Vec<String> = shown.iter_mut().map(|p| p.dump_all()).collect();
            panic!("timed out waiting for {what}\n{}", seen.join("\n"));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Connects to `addr` from the local address `from` (127.0.0.2, 127.0.0.3, ...: every
/// 127/8 address is loopback), so that a server sees another client address.
pub fn connect_from(from: &str, addr: SocketAddr) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).unwrap();
    let local: SocketAddr = format!("{from}:0").parse().unwrap();
    socket.bind(&local.into()).unwrap_or_else(|e| panic!("cannot bind {local}: {e}"));
    socket.connect(&addr.into()).unwrap_or_else(|e| panic!("cannot connect from {from} to {addr}: {e}"));
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream
}

/// A connection from `from` to `addr` that has shaken hands for `service`.
pub fn handshaken(from: &str, addr: SocketAddr, service: Service) -> TcpStream {
    let mut s = connect_from(from, addr);
    let mut r = s.try_clone().unwrap();
    wire::client_handshake(&mut r, &mut s, service).unwrap();
    s
}

/// Asks the file server at `addr`, from `from`, how busy it is.
pub fn status_from(from: &str, addr: SocketAddr) -> peerdex::wire::FileReply {
    let mut s = handshaken(from, addr, Service::Files);
    wire::send_msg(&mut s, &peerdex::wire::FileRequest::Status).unwrap();
    wire::recv_msg(&mut s).unwrap()
}

/// A raw protocol client of the index server, for tests that play a peer by hand.
pub struct RawIndexClient {
    pub stream: TcpStream,
}

impl RawIndexClient {
    pub fn connect(index: SocketAddr) -> RawIndexClient {
        RawIndexClient::connect_from("127.0.0.1", index)
    }

    /// Connects from the local address `from` (see [`connect_from`]).
    pub fn connect_from(from: &str, index: SocketAddr) -> RawIndexClient {
        let stream =
            if index.is_ipv6() { TcpStream::connect(index).unwrap() } else { connect_from(from, index) };
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut reader = stream.try_clone().unwrap();
        let mut writer = stream.try_clone().unwrap();
        wire::client_handshake(&mut reader, &mut writer, Service::Index).unwrap();
        RawIndexClient { stream }
    }

    pub fn call(&mut self, request: &Request) -> Reply {
        wire::send_msg(&mut self.stream, request).unwrap();
        wire::recv_msg(&mut self.stream).unwrap()
    }
}

/// A folder `name` inside `root` (created, with its parents), holding the given files
/// (a path such as `album/01.flac` in its folder, made too).
pub fn folder(root: &Path, name: &str, files: &[(&str, &[u8])]) -> std::path::PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for (file, content) in files {
        let path = dir.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    dir
}

/// `len` random bytes.
pub fn random_bytes(len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    rand::RngExt::fill(&mut rand::rng(), &mut bytes[..]);
    bytes
}

/// A fresh temporary directory with a `shared` folder (and room for others) in it.
pub fn workspace() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// Names of the entries in `dir`, sorted, without the peer's hash cache (which a
/// registered peer keeps there). Download temporaries are included, so a test can
/// check that none is left.
pub fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != peerdex::peer::folder::CACHE_FILE)
        .collect();
    names.sort();
    names
}

/// How a [`fake_sender`] misbehaves. It always answers `Layer` and `Have` truly (every
/// piece of `content`); what it does with `Get` is the misbehaviour.
#[derive(Clone, Copy, Debug)]
pub enum Misbehaviour {
    /// Sends the right number of bytes, one bit of the first piece it sends flipped.
    Corrupt,
    /// Sends one byte too few, then closes.
    Short,
    /// Sends ten bytes too many.
    Long,
    /// Announces the pieces, then sends nothing and keeps the connection open.
    Silent,
    /// Announces 2^63 bytes for the pieces asked and sends them.
    Huge,
    /// Claims to be idle and the fastest there is, then sends one byte every 200 ms.
    Drip,
    /// Claims to be idle and the fastest there is, then sends junk of the right length.
    Junk,
    /// Refuses every request with this text.
    Refuse(&'static str),
    /// Serves everything right, counting the bytes it sends in the returned counter.
    Honest,
}

/// A file server (protocol version 2) for the content `content`, whatever root it is
/// asked for, that misbehaves as `how` says; serves each connection on a thread of its
/// own until the test ends. Returns its address.
pub fn fake_sender(content: Vec<u8>, how: Misbehaviour) -> SocketAddr {
    fake_sender_counted(content, how).0
}

/// [`fake_sender`], with the count of piece bytes it has sent.
pub fn fake_sender_counted(
    content: Vec<u8>,
    how: Misbehaviour,
) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    fake_sender_gated(content, how, Gates::default())
}

/// A condition one thread waits for and another opens: lets a test order what two
/// fake senders do without sleeping.
#[derive(Clone, Debug, Default)]
pub struct Gate(std::sync::Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>);

impl Gate {
    pub fn open(&self) {
        *self.0.0.lock().unwrap() = true;
        self.0.1.notify_all();
    }

    pub fn wait(&self) {
        let mut open = self.0.0.lock().unwrap();
        while !*open {
            open = self.0.1.wait(open).unwrap();
        }
    }
}

/// When a [`fake_sender_gated`] waits and what it signals.
#[derive(Clone, Debug, Default)]
pub struct Gates {
    /// Sends no piece bytes until this opens.
    pub before_data: Option<Gate>,
    /// Opened once its first run of pieces is written to the socket.
    pub after_first_data: Option<Gate>,
    /// Sends no piece bytes after its first run until this opens.
    pub before_more_data: Option<Gate>,
    /// Holds (says it has, and sends) only the pieces that end by this byte, as a
    /// peer still downloading the file would.
    pub up_to: Option<u64>,
    /// Holds only the pieces that start from this byte on.
    pub from: Option<u64>,
    /// Sends no piece bytes until every sender sharing this meeting has been asked
    /// for pieces.
    pub meet: Option<Meeting>,
}

/// A meeting of fake senders: none sends piece bytes until all of them have been
/// asked for some (see [`Gates::meet`]).
#[derive(Clone, Debug)]
pub struct Meeting(std::sync::Arc<(std::sync::Mutex<usize>, std::sync::Condvar)>, usize);

impl Meeting {
    pub fn of(senders: usize) -> Meeting {
        Meeting(std::sync::Arc::default(), senders)
    }

    fn arrive_and_wait(&self) {
        let (count, all) = &*self.0;
        let mut n = count.lock().unwrap();
        *n += 1;
        all.notify_all();
        while *n < self.1 {
            n = all.wait(n).unwrap();
        }
    }
}

impl Gates {
    /// Does it hold the bytes `range`?
    fn holds(&self, range: &std::ops::Range<u64>) -> bool {
        self.up_to.is_none_or(|end| range.end <= end) && self.from.is_none_or(|start| range.start >= start)
    }
}

/// [`fake_sender_counted`], ordered by `gates`.
pub fn fake_sender_gated(
    content: Vec<u8>,
    how: Misbehaviour,
    gates: Gates,
) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let content = std::sync::Arc::new(content);
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = std::sync::Arc::clone(&sent);
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(s) = stream else { continue };
            let (content, sent, gates) =
                (std::sync::Arc::clone(&content), std::sync::Arc::clone(&sent), gates.clone());
            thread::spawn(move || misbehave(s, &content, how, &sent, &gates));
        }
    });
    (addr, counter)
}

fn misbehave(
    mut s: TcpStream,
    content: &[u8],
    how: Misbehaviour,
    sent: &std::sync::atomic::AtomicU64,
    gates: &Gates,
) {
    use peerdex::content::{Bitfield, Tree};
    use peerdex::wire::{FileReply, FileRequest};
    let tree = Tree::of_bytes(content);
    let mut r = s.try_clone().unwrap();
    if wire::server_handshake(&mut r, &mut s, Service::Files, 4096).is_err() {
        return;
    }
    let mut corrupted = false;
    let mut met = false;
    while let Ok(request) = wire::recv_msg::<FileRequest>(&mut r) {
        let (first, count) = match request {
            FileRequest::Status => {
                // Idle and eager: a least-loaded downloader picks it; the liars also
                // claim to be the fastest there is.
                let rate = if matches!(how, Misbehaviour::Drip | Misbehaviour::Junk) { u64::MAX } else { 0 };
                let _ = wire::send_msg(&mut s, &FileReply::Status { uploads: 0, bytes_per_sec: rate });
                continue;
            }
            _ if matches!(how, Misbehaviour::Refuse(_)) => {
                let Misbehaviour::Refuse(why) = how else { unreachable!() };
                let _ = wire::send_msg(&mut s, &FileReply::Error(why.into()));
                continue;
            }
            FileRequest::Layer { .. } => {
                let _ = wire::send_msg(&mut s, &FileReply::Layer(tree.layer.clone()));
                continue;
            }
            FileRequest::Have { .. } => {
                let mut have = Bitfield::empty(tree.geometry.pieces());
                for i in (0..tree.geometry.pieces()).filter(|&i| gates.holds(&tree.geometry.piece(i))) {
                    have.set(i);
                }
                let _ = wire::send_msg(&mut s, &FileReply::Have(have));
                continue;
            }
            FileRequest::Get { first, count, .. } => (first, count),
            // Requests are answered one by one as they come: a Get is always answered
            // before a Cancel of it is read, so there is never one to cancel.
            FileRequest::Cancel { .. } => continue,
        };
        let range = tree.geometry.pieces_range(first, count);
        if !gates.holds(&range) {
            let _ = wire::send_msg(&mut s, &FileReply::Error("this fake does not hold those pieces".into()));
            continue;
        }
        if let Some(gate) = &gates.before_data {
            gate.wait();
        }
        if let Some(gate) = &gates.before_more_data
            && sent.load(std::sync::atomic::Ordering::SeqCst) > 0
        {
            gate.wait();
        }
        if let Some(meeting) = &gates.meet
            && sent.load(std::sync::atomic::Ordering::SeqCst) == 0
            && !met
        {
            met = true;
            meeting.arrive_and_wait();
        }
        let mut body = content[range.start as usize..range.end as usize].to_vec();
        let len = match how {
            Misbehaviour::Huge => 1 << 63,
            _ => body.len() as u64,
        };
        if wire::send_msg(&mut s, &FileReply::Data { first, count, len }).is_err() {
            return;
        }
        match how {
            Misbehaviour::Silent => {
                // Hold the connection open, silent, until the downloader gives up
                // (reading what it sends, so that closing does not reset it).
                let _ = std::io::copy(&mut r, &mut std::io::sink());
                return;
            }
            Misbehaviour::Drip => {
                for b in body {
                    if s.write_all(&[b]).is_err() {
                        return;
                    }
                    thread::sleep(Duration::from_millis(200)); // the attacker's pace, not a wait
                }
                return;
            }
            Misbehaviour::Junk => body.fill(0x5a),
            Misbehaviour::Corrupt if !corrupted => {
                corrupted = true;
                if let Some(b) = body.first_mut() {
                    *b ^= 1;
                }
            }
            Misbehaviour::Short => {
                body.pop();
                let _ = s.write_all(&body);
                return;
            }
            Misbehaviour::Long => body.extend_from_slice(&[0; 10]),
            _ => {}
        }
        if s.write_all(&body).is_err() {
            return;
        }
        sent.fetch_add(body.len() as u64, std::sync::atomic::Ordering::SeqCst);
        if let Some(gate) = &gates.after_first_data {
            gate.open();
        }
    }
}

/// A fake index server for one peer: shakes hands, then answers each request as
/// `answer` says (`None`: the usual `Pong` for a ping, else an error), and records the
/// requests it saw. Serves connections one at a time until the test ends.
pub struct FakeIndex {
    pub addr: SocketAddr,
    pub seen: std::sync::Arc<std::sync::Mutex<Vec<Request>>>,
}

impl FakeIndex {
    pub fn start(answer: impl Fn(&Request) -> Option<Vec<u8>> + Send + 'static) -> FakeIndex {
        FakeIndex::start_many(move |request| answer(request).map(|reply| vec![reply]))
    }

    /// [`FakeIndex::start`], answering a request with several frames (a listing's).
    pub fn start_many(answer: impl Fn(&Request) -> Option<Vec<Vec<u8>>> + Send + 'static) -> FakeIndex {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = std::sync::Arc::clone(&seen);
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let mut r = s.try_clone().unwrap();
                if wire::server_handshake(&mut r, &mut s, Service::Index, 4096).is_err() {
                    continue;
                }
                while let Ok(Some(frame)) = wire::recv_all(&mut r, 1 << 20) {
                    let Ok(request) = <Request as peerdex::wire::Message>::decode(&frame) else { break };
                    let replies = match (answer(&request), &request) {
                        (Some(raw), _) => raw,
                        (None, Request::Ping) => vec![peerdex::wire::Message::encode(&Reply::Pong)],
                        (None, _) => {
                            vec![peerdex::wire::Message::encode(&Reply::Error("not in this fake".into()))]
                        }
                    };
                    log.lock().unwrap().push(request);
                    if replies.iter().any(|reply| wire::send_all(&mut s, reply).is_err()) {
                        break;
                    }
                }
            }
        });
        FakeIndex { addr, seen }
    }
}

/// A file's name, size and root, as the index knows it.
pub fn info(name: &str, content: &[u8]) -> peerdex::wire::FileInfo {
    peerdex::wire::FileInfo {
        name: peerdex::name::SharePath::parse(name).unwrap(),
        size: content.len() as u64,
        root: peerdex::content::Tree::of_bytes(content).root,
    }
}

/// Registers a fake peer (a raw connection) that claims `file` on `port`; the
/// registration lasts as long as the returned connection.
pub fn register_fake(index: SocketAddr, port: u16, file: peerdex::wire::FileInfo) -> RawIndexClient {
    let mut c = RawIndexClient::connect(index);
    assert_eq!(c.call(&Request::Register { port, files: vec![file] }), Reply::Done { files: 1 });
    c
}

/// `peer <index> 0 <dir> <opts>`, started in `dir`'s parent; returns it with its file
/// server's address.
pub fn peer_with(index: SocketAddr, dir: &Path, opts: &[&str]) -> (Proc, SocketAddr) {
    let port = index.port().to_string();
    let mut args = vec!["127.0.0.1", port.as_str(), "0", dir.to_str().unwrap()];
    args.extend(opts);
    let mut p = Proc::start(env!("CARGO_BIN_EXE_peer"), &args, dir.parent().unwrap());
    let line = p.expect(Stream::Out, "serving ");
    (p, line.rsplit(" on ").next().unwrap().parse().unwrap())
}

/// `indexing-server adduser FILE NAME` in `dir`, with the password on stdin; returns
/// the finished process.
pub fn adduser(dir: &Path, file: &Path, name: &str, password: &str) -> Proc {
    let args = [OsStr::new("adduser"), file.as_os_str(), OsStr::new(name)];
    let mut p = Proc::start(env!("CARGO_BIN_EXE_indexing-server"), &args, dir);
    p.send(password);
    assert!(p.finish().success(), "{}", p.dump());
    p
}

/// An index server in `dir` that requires login, with one account, `ann` with the
/// password `s3cret`, in `dir/users`; returns it with its address.
pub fn index_server_with_ann(dir: &Path) -> (Proc, SocketAddr) {
    let users = dir.join("users");
    adduser(dir, &users, "ann", "s3cret");
    Proc::index_server_with(dir, &["127.0.0.1", "0", "--users", users.to_str().unwrap()])
}

/// Starts this test binary again as a helper process running the ignored test `test`
/// (which calls [`helper_first_half`]) with `file` to serve; returns it and the address
/// it listens on.
pub fn start_helper(test: &str, file: &Path, dir: &Path) -> (Proc, SocketAddr) {
    let me = std::env::current_exe().unwrap();
    let args = ["--ignored", "--exact", test, "--nocapture"];
    let env = [("PEERDEX_HELPER_FILE", file.as_os_str())];
    let mut helper = Proc::start_with_env(me.to_str().unwrap(), &args, dir, &env);
    let line = helper.expect(Stream::Out, "helper listening on ");
    (helper, line.trim_start_matches("helper listening on ").parse().unwrap())
}

/// The body of a helper process (see [`start_helper`]): a sender that a test can kill
/// with SIGKILL. It reads the file named by `PEERDEX_HELPER_FILE`, listens on
/// 127.0.0.1, prints `helper listening on ADDR`, accepts one downloader, says it holds
/// the file's first half (as a peer still downloading it would), and answers requests,
/// in order, until it has sent `half / divisor` bytes of pieces. Returns the
/// connection (to read, to write); `None` when not started as a helper.
pub fn helper_first_half(divisor: u64) -> Option<(TcpStream, TcpStream)> {
    use peerdex::content::{Bitfield, Tree};
    use peerdex::wire::{FileReply, FileRequest};
    let path = std::env::var_os("PEERDEX_HELPER_FILE")?;
    let content = std::fs::read(path).unwrap();
    let tree = Tree::of_bytes(&content);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    println!("helper listening on {}", listener.local_addr().unwrap());
    let (mut s, _) = listener.accept().unwrap();
    let mut r = s.try_clone().unwrap();
    wire::server_handshake(&mut r, &mut s, Service::Files, 4096).unwrap();
    let half = content.len() as u64 / 2;
    let mut sent = 0;
    while sent < half / divisor {
        match wire::recv_msg(&mut r).unwrap() {
            FileRequest::Status => unreachable!("one downloader, which does not ask"),
            FileRequest::Layer { .. } => {
                wire::send_msg(&mut s, &FileReply::Layer(tree.layer.clone())).unwrap()
            }
            FileRequest::Have { .. } => {
                let mut have = Bitfield::empty(tree.geometry.pieces());
                for i in (0..tree.geometry.pieces()).filter(|&i| tree.geometry.piece(i).end <= half) {
                    have.set(i);
                }
                wire::send_msg(&mut s, &FileReply::Have(have)).unwrap()
            }
            FileRequest::Get { first, count, .. } => {
                let range = tree.geometry.pieces_range(first, count);
                assert!(range.end <= half, "asked for pieces it does not hold");
                let len = range.end - range.start;
                wire::send_msg(&mut s, &FileReply::Data { first, count, len }).unwrap();
                s.write_all(&content[range.start as usize..range.end as usize]).unwrap();
                sent += len;
            }
            FileRequest::Cancel { .. } => {} // answered already (requests are taken one by one)
        }
    }
    Some((r, s))
}
