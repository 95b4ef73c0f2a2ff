//! The peer's command loop: one command a line on stdin, results on stdout, errors on
//! stderr starting with `error:`.
//!
//! Downloads run in background threads so the shell stays usable; at the end of input
//! (or `quit`) the shell waits for them. The exit status says whether every command,
//! downloads included, succeeded, so a script can pipe commands in and trust it.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fmt::Display;
use std::io::{self, BufRead, IsTerminal, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use log::debug;
use rand::RngExt;

use super::client::{IndexClient, Watch};
use super::download::{DownloadConfig, Downloader, Note, PENALTY, Penalties};
use super::folder::SharedFolder;
use crate::auth;
use crate::content::Hash;
use crate::name::SharePath;
use crate::text::{count, escape};
use crate::wire::{FileInfo, LIST_PART_BYTES, ListEntry, MAX_FILES_PER_PEER, Request};

/// Longest command line accepted, in bytes: a command and the longest name (a path of
/// 4,096 bytes) need less; the cap keeps a runaway input from being buffered whole.
pub const MAX_LINE_LEN: usize = 8192;

/// The help text printed by `help`.
pub const HELP: &str = "\
commands:
  register                          share this folder's files with the index
  unregister                        stop sharing
  get_files_list [--limit N] [TEXT] list files at other peers (names containing TEXT)
  get_files_list --dirs [FOLDER]    list one level of FOLDER (the top if none):
                                    folders first, with their file counts and sizes
  download NAME                     fetch NAME from a peer into this folder
                                    (album/01.flac: into the folder album, made if need be)
  download FOLDER/                  fetch every file listed under FOLDER, with its folders
  delete NAME                       delete NAME from this folder (and from the index)
                                    (quote a name with spaces at its ends: \" a.txt\")
  update                            rescan this folder and send the new list
  login NAME                        log in to the index server (password from
                                    PEERDEX_PASSWORD, or asked for)
  help                              this text
  quit                              wait for downloads, then exit";

/// One parsed command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Register this peer and its files.
    Register,
    /// Remove this peer's registration.
    Unregister,
    /// List files at other peers.
    List {
        /// Only names containing this text (ASCII case ignored); empty for all. With
        /// `dirs`, the folder to list instead (empty for the top).
        pattern: String,
        /// At most this many lines.
        limit: Option<u32>,
        /// List one level of a folder, folders first, with their file counts and sizes.
        dirs: bool,
    },
    /// Download a file.
    Download(SharePath),
    /// Download every file the index lists under a folder (`download album/`).
    DownloadFolder(SharePath),
    /// Delete a file from the folder.
    Delete(SharePath),
    /// Rescan the folder and send the list.
    Update,
    /// Log in to the index server as this user.
    Login(String),
    /// Print the help text.
    Help,
    /// Stop reading commands.
    Quit,
}

impl Command {
    /// Parses one line. `Ok(None)` for a blank line.
    ///
    /// After `download` or `delete`, the rest of the line is the name, so names may
    /// contain spaces as they are (`download a b.txt`); a name that starts with a quote
    /// is read shell-style instead, so that it can keep leading or trailing spaces
    /// (`download " lead.txt"`, `delete 'a b '`). After `get_files_list`, words are
    /// split shell-style, `--limit N` may come anywhere, `--` ends the options, and the
    /// other words, joined by single spaces, are the text to look for.
    pub fn parse(line: &str) -> Result<Option<Command>, String> {
        let line = line.trim_matches(|c: char| c.is_ascii_whitespace());
        if line.is_empty() {
            return Ok(None);
        }
        let (word, rest) = line.split_once(|c: char| c.is_ascii_whitespace()).unwrap_or((line, ""));
        let rest = rest.trim_start_matches(|c: char| c.is_ascii_whitespace());
        let no_args = |c: Command| {
            if rest.is_empty() { Ok(Some(c)) } else { Err(format!("{word} takes no arguments")) }
        };
        match word {
            "register" => no_args(Command::Register),
            "unregister" => no_args(Command::Unregister),
            "update" => no_args(Command::Update),
            "help" => no_args(Command::Help),
            "quit" | "exit" => no_args(Command::Quit),
            "download" => match one_name(word, rest)? {
                // A trailing '/': the folder, not a file.
                name if name.ends_with('/') => {
                    let folder = name.trim_end_matches('/');
                    SharePath::parse(folder)
                        .map(|f| Some(Command::DownloadFolder(f)))
                        .map_err(|why| format!("invalid folder name {name:?}: {why}"))
                }
                name => checked(&name).map(|n| Some(Command::Download(n))),
            },
            "delete" => checked(&one_name(word, rest)?).map(|n| Some(Command::Delete(n))),
            "login" => {
                if rest.is_empty() {
                    return Err("login needs a user name, as in: login ann".into());
                }
                auth::check_user(rest).map(|()| Some(Command::Login(rest.to_owned())))
            }
            "get_files_list" => list(rest).map(Some),
            _ => Err(format!("unknown command {:?} (type help for the list)", word)),
        }
    }
}

/// `name` as a [`SharePath`], or an error that names it.
fn checked(name: &str) -> Result<SharePath, String> {
    SharePath::parse(name).map_err(|why| format!("invalid file name {name:?}: {why}"))
}

/// The one file name after `word`, unquoted: see [`Command::parse`].
fn one_name(word: &str, rest: &str) -> Result<String, String> {
    if rest.is_empty() {
        return Err(format!("{word} needs a file name, as in: {word} notes.txt"));
    }
    let name = if rest.starts_with(['"', '\'']) {
        let words = shell_words::split(rest)
            .map_err(|_| format!("unmatched quote in {rest:?}: close it, as in: {word} \" a name.txt\""))?;
        match <[String; 1]>::try_from(words) {
            Ok([name]) => name,
            Err(_) => {
                return Err(format!("{word} takes one name; put it in quotes, as in: {word} \"a name.txt\""));
            }
        }
    } else {
        rest.to_owned()
    };
    Ok(name)
}

/// The arguments of `get_files_list`: see [`Command::parse`].
fn list(rest: &str) -> Result<Command, String> {
    let words = shell_words::split(rest).map_err(|_| {
        format!("unmatched quote in {rest:?}: put the text in double quotes, as in: get_files_list \"don't\"")
    })?;
    let (mut limit, mut pattern, mut options, mut dirs) = (None, Vec::new(), true, false);
    let mut words = words.into_iter();
    while let Some(w) = words.next() {
        if options && w == "--" {
            options = false;
        } else if options && (w == "--limit" || w.starts_with("--limit=")) {
            let n = match w.strip_prefix("--limit=") {
                Some(n) => n.to_owned(),
                None => words.next().ok_or("--limit needs a number, as in: --limit 10")?,
            };
            limit = Some(n.parse::<u32>().map_err(|_| format!("--limit needs a number, not {n:?}"))?);
        } else if options && w == "--dirs" {
            dirs = true;
        } else if options && w.starts_with("--") {
            return Err(format!("unknown option {w:?} (put -- before text that starts with --)"));
        } else {
            pattern.push(w);
        }
    }
    let pattern = pattern.join(" ");
    if dirs {
        let folder = pattern.trim_end_matches('/');
        if !folder.is_empty() {
            SharePath::parse(folder).map_err(|why| format!("invalid folder name {pattern:?}: {why}"))?;
        }
    }
    Ok(Command::List { pattern, limit, dirs })
}

/// What one line of input turned out to be.
enum Line {
    Text(String),
    Bad(String),
    End,
}

/// Reads one line of at most [`MAX_LINE_LEN`] bytes. A longer line is read to its end
/// and reported; a line that is not UTF-8 is reported; neither stops the loop.
fn read_line(input: &mut impl BufRead) -> io::Result<Line> {
    let mut buf = Vec::new();
    let n = io::Read::take(&mut *input, MAX_LINE_LEN as u64 + 1).read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(Line::End);
    }
    if buf.len() > MAX_LINE_LEN && buf.last() != Some(&b'\n') {
        // Skip the rest of the line without keeping it.
        loop {
            let chunk = input.fill_buf()?;
            if chunk.is_empty() {
                break;
            }
            match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    input.consume(i + 1);
                    break;
                }
                None => {
                    let len = chunk.len();
                    input.consume(len);
                }
            }
        }
        return Ok(Line::Bad(format!("line longer than {MAX_LINE_LEN} bytes ignored")));
    }
    match String::from_utf8(buf) {
        Ok(text) => Ok(Line::Text(text)),
        Err(_) => Ok(Line::Bad("line is not valid UTF-8; ignored".into())),
    }
}

/// First wait before reconnecting to a lost index; doubled after each failure.
pub const RECONNECT_FIRST: Duration = Duration::from_millis(100);

/// Longest wait between reconnection attempts.
pub const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// What the shell and its download workers share.
struct Peer {
    index: Arc<IndexClient>,
    folder: Arc<SharedFolder>,
    /// The file server's port, sent with `register`.
    port: u16,
    downloads: DownloadConfig,
    registered: AtomicBool,
    /// Set once any command has failed; decides the exit status.
    failed: AtomicBool,
    /// Names queued or being downloaded, so one name is not fetched twice at once.
    in_flight: Mutex<HashSet<SharePath>>,
    /// Downloads waiting for a worker, and how many workers run.
    queue: Mutex<Queue>,
    /// Taken around each change sent to the index: a rescan and the `Update` it feeds
    /// are one step, so a download's `Add` cannot fall between them and be undone.
    updates: Mutex<()>,
    /// The list the folder watcher last sent, so an unchanged folder sends nothing.
    last_watched: Mutex<Option<Vec<FileInfo>>>,
    /// Sources that stalled or sent wrong bytes, at the back of the order for a while.
    penalties: Penalties,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<SharePath>,
    workers: usize,
}

/// The command loop. See the module docs.
pub struct Shell {
    peer: Arc<Peer>,
    /// Download workers started so far; each exits when the queue is empty.
    workers: Vec<JoinHandle<()>>,
}

impl Shell {
    /// A shell for a peer whose file server listens on `port`.
    pub fn new(
        index: Arc<IndexClient>,
        folder: Arc<SharedFolder>,
        port: u16,
        downloads: DownloadConfig,
    ) -> Shell {
        let peer = Peer {
            index,
            folder,
            port,
            downloads,
            registered: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            in_flight: Mutex::default(),
            queue: Mutex::default(),
            updates: Mutex::default(),
            last_watched: Mutex::default(),
            penalties: Penalties::default(),
        };
        Shell { peer: Arc::new(peer), workers: Vec::new() }
    }

    /// Starts the thread that watches the folder and, while the peer is registered,
    /// sends the index each change (see [`super::watch`]).
    pub fn start_watching(&self) -> io::Result<()> {
        let peer = Arc::clone(&self.peer);
        thread::Builder::new().name("watch".into()).spawn(move || {
            let root = peer.folder.root().to_path_buf();
            super::watch::watch(&root, || peer.sync_watched())
        })?;
        Ok(())
    }

    /// Runs commands from `input` until it ends or `quit`, then waits for downloads.
    /// Meanwhile a supervisor thread pings the index every `keepalive` and, if the
    /// connection is lost, reconnects and registers again. Returns true if every
    /// command succeeded.
    pub fn run(mut self, mut input: impl BufRead, keepalive: Duration) -> bool {
        let supervisor = Arc::clone(&self.peer);
        let spawned =
            thread::Builder::new().name("supervisor".into()).spawn(move || supervisor.supervise(keepalive));
        if let Err(e) = spawned {
            self.peer.fail(format!("cannot start the supervisor thread: {e}"));
        }
        let interactive = io::stdin().is_terminal();
        loop {
            if interactive {
                print!("peerdex> ");
                let _ = io::stdout().flush();
            }
            let line = match read_line(&mut input) {
                Ok(Line::End) => break,
                Ok(Line::Text(line)) => line,
                Ok(Line::Bad(why)) => {
                    self.peer.fail(why);
                    continue;
                }
                Err(e) => {
                    self.peer.fail(format!("cannot read input: {e}"));
                    break;
                }
            };
            match Command::parse(&line) {
                Ok(None) => {}
                Ok(Some(Command::Quit)) => break,
                Ok(Some(Command::Login(user))) => {
                    // The server is asked first; only then the password, which may have
                    // to be read from this same input.
                    let password = || password_for(&user, interactive, &mut input);
                    match self.peer.index.login(&user, password) {
                        Ok(()) => crate::outln!("logged in as {user}"),
                        Err(e) => self.peer.fail(format!("login failed: {e:#}")),
                    }
                }
                Ok(Some(command)) => {
                    if let Err(e) = self.execute(command) {
                        self.peer.fail(format!("{e:#}"));
                    }
                }
                Err(why) => self.peer.fail(why),
            }
        }
        // No more downloads can be queued: every worker ends once the queue is empty.
        for handle in self.workers.drain(..) {
            if handle.join().is_err() {
                self.peer.failed.store(true, Ordering::SeqCst);
            }
        }
        !self.peer.failed.load(Ordering::SeqCst)
    }

    fn execute(&mut self, command: Command) -> anyhow::Result<()> {
        let peer = &self.peer;
        match command {
            Command::Register => {
                let (count, skipped) = peer.register().context("register failed")?;
                let server = peer.index.server();
                crate::outln!("registered {} with the index server {server}{skipped}", files(count));
            }
            Command::Unregister => {
                peer.index.change(&Request::Unregister).context("unregister failed")?;
                peer.registered.store(false, Ordering::SeqCst);
                crate::outln!("unregistered");
            }
            Command::Update => {
                let _in_order = peer.updates.lock().unwrap_or_else(PoisonError::into_inner);
                let (list, skipped) = scan(&peer.folder)?;
                let count =
                    peer.send_list(list, |files| Request::Update { files }).context("update failed")?;
                crate::outln!("updated: {} registered{skipped}", files(count as usize));
            }
            Command::List { pattern, limit, dirs: true } => self.list_folder(&pattern, limit)?,
            Command::DownloadFolder(folder) => self.download_folder(&folder)?,
            Command::List { pattern, limit, dirs: false } => {
                let mut shown = 0u64;
                let mut out = io::stdout().lock();
                let listed = peer.index.list(&pattern, limit, |e| {
                    shown += 1;
                    let _ = writeln!(out, "{}", listing_line(&e));
                });
                let truncated = listed
                    .context("get_files_list failed")?
                    .map_err(|e| anyhow!("get_files_list failed: the index server says: {e}"))?;
                let more = if truncated { " (more not shown)" } else { "" };
                let _ = writeln!(out, "{} at other peers{more}", files(shown as usize));
            }
            Command::Delete(name) => {
                peer.folder.delete(&name).map_err(|e| anyhow!("cannot delete {:?}: {e}", name.as_str()))?;
                if peer.registered.load(Ordering::SeqCst) {
                    peer.index
                        .change(&Request::Delete { names: vec![name.clone()] })
                        .context("the file is deleted, but the index was not told")?;
                }
                // Only now: once this line is out, no other peer is offered the file.
                crate::outln!("deleted {name}");
            }
            Command::Download(name) => self.queue_download(name)?,
            Command::Help => crate::outln!("{HELP}"),
            Command::Quit | Command::Login(_) => unreachable!("handled by the loop"),
        }
        Ok(())
    }

    /// `get_files_list --dirs FOLDER`: one level of `folder` (empty: the top) as the
    /// index lists it, its subfolders first (each with its file count and bytes), then
    /// its files as `get_files_list` shows them.
    fn list_folder(&self, folder: &str, limit: Option<u32>) -> anyhow::Result<()> {
        let folder = folder.trim_end_matches('/');
        let prefix = if folder.is_empty() { String::new() } else { format!("{folder}/") };
        let mut folders: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        let mut here = Vec::new();
        // The index matches text anywhere in a name, ignoring case: keep what is
        // really under the folder.
        let listed = self.peer.index.list(&prefix, None, |e| {
            let Some(rest) = e.name.as_str().strip_prefix(&prefix) else { return };
            match rest.split_once('/') {
                Some((sub, _)) => {
                    let f = folders.entry(sub.to_owned()).or_default();
                    (f.0, f.1) = (f.0 + 1, f.1 + e.size);
                }
                None => here.push(e),
            }
        });
        listed
            .context("get_files_list failed")?
            .map_err(|e| anyhow!("get_files_list failed: the index server says: {e}"))?;
        here.sort_by(|a, b| a.name.cmp(&b.name));
        let limit = limit.map_or(usize::MAX, |n| n as usize);
        let mut out = io::stdout().lock();
        let (mut shown, total) = (0, folders.len() + here.len());
        for (sub, (n, bytes)) in folders.iter().take(limit) {
            let _ = writeln!(out, "{prefix}{sub}/	{bytes} bytes	{}", files(*n as usize));
            shown += 1;
        }
        for e in here.iter().take(limit - shown) {
            let _ = writeln!(out, "{}", listing_line(e));
            shown += 1;
        }
        let more = if shown < total { " (more not shown)" } else { "" };
        let where_ = if prefix.is_empty() { "at the top".to_owned() } else { format!("in {prefix}") };
        let (n_folders, n_files) = (folders.len() as u64, here.len());
        let _ = writeln!(
            out,
            "{} and {} {where_} at other peers{more}",
            count(n_folders, "folder"),
            files(n_files)
        );
        Ok(())
    }

    /// `download FOLDER/`: queues every file the index lists under `folder`, to be
    /// fetched into the same place here, several at once. A file already here with
    /// the same content is passed over; any other that cannot be fetched is an error.
    fn download_folder(&mut self, folder: &SharePath) -> anyhow::Result<()> {
        let prefix = format!("{folder}/");
        let mut contents: BTreeMap<SharePath, Vec<(u64, Hash)>> = BTreeMap::new();
        let listed = self.peer.index.list(&prefix, None, |e| {
            if e.name.as_str().starts_with(&prefix) {
                contents.entry(e.name).or_default().push((e.size, e.root));
            }
        });
        listed
            .context("cannot list the folder")?
            .map_err(|e| anyhow!("cannot list the folder: the index server says: {e}"))?;
        if contents.is_empty() {
            bail!("cannot download {prefix:?}: no registered peer shares a file under it");
        }
        let mut todo = Vec::new();
        for (name, offers) in contents {
            if let Ok(open) = self.peer.folder.open(&name)
                && offers.contains(&(open.info.size, open.info.root))
            {
                crate::outln!("already here: {name}");
            } else {
                todo.push(name);
            }
        }
        // Said before any of them can finish, so the lines come in this order.
        crate::outln!("downloading {} under {prefix}", files(todo.len()));
        for name in todo {
            if let Err(e) = self.queue_download(name) {
                self.peer.fail(format!("{e:#}"));
            }
        }
        Ok(())
    }

    /// Queues a download and starts a worker for it if fewer than
    /// [`DownloadConfig::max_parallel`] run.
    fn queue_download(&mut self, name: SharePath) -> anyhow::Result<()> {
        if !self.peer.in_flight.lock().unwrap_or_else(PoisonError::into_inner).insert(name.clone()) {
            bail!("cannot download {:?}: already downloading it", name.as_str());
        }
        let mut queue = self.peer.queue.lock().unwrap_or_else(PoisonError::into_inner);
        queue.waiting.push_back(name);
        if queue.workers < self.peer.downloads.max_parallel.max(1) {
            let peer = Arc::clone(&self.peer);
            let worker = thread::Builder::new().name("download".into()).spawn(move || peer.work())?;
            queue.workers += 1;
            self.workers.push(worker);
        }
        Ok(())
    }
}

impl Peer {
    fn fail(&self, why: impl Display) {
        report_failure(&self.failed, why);
    }

    /// Scans the folder and registers it. Returns the number of files registered, and
    /// what was skipped as [`scan`] says it. The one way to register, for the command
    /// and for a reconnection alike: it holds the lock that orders the folder's
    /// changes, so a download's `Add` cannot be lost.
    fn register(&self) -> anyhow::Result<(usize, String)> {
        let _in_order = self.updates.lock().unwrap_or_else(PoisonError::into_inner);
        let (files, skipped) = scan(&self.folder)?;
        let port = self.port;
        let count = self.send_list(files, |files| Request::Register { port, files })?;
        self.registered.store(true, Ordering::SeqCst);
        Ok((count as usize, skipped))
    }

    /// Sends the folder's list as `first` (a `Register` or `Update`) of its first part
    /// and an `Add` of each other part, in parts of at most [`LIST_PART_BYTES`] of
    /// entries, so that any list fits the index's frames. Returns the files the index
    /// then holds for this peer. (Between the parts, a lookup may find only some of
    /// the files: a list that large takes a moment to send anyway.)
    fn send_list(
        &self,
        files: Vec<FileInfo>,
        first: impl FnOnce(Vec<FileInfo>) -> Request,
    ) -> anyhow::Result<u32> {
        let mut parts: Vec<Vec<FileInfo>> = vec![Vec::new()];
        let mut bytes = 0;
        for f in files {
            // A name's u16 length, its bytes, its size and root.
            let entry = 2 + f.name.as_str().len() + 8 + 32;
            if bytes + entry > LIST_PART_BYTES && !parts[parts.len() - 1].is_empty() {
                parts.push(Vec::new());
                bytes = 0;
            }
            bytes += entry;
            parts.last_mut().expect("one at least").push(f);
        }
        let mut parts = parts.into_iter();
        let mut count = self.index.change(&first(parts.next().unwrap_or_default()))?;
        for files in parts {
            count = self.index.change(&Request::Add { files })?;
        }
        Ok(count)
    }

    /// After a change in the folder: if registered, rescans it, leaving out files still
    /// being written, and sends the list. Returns whether some file was left out.
    fn sync_watched(&self) -> bool {
        if !self.registered.load(Ordering::SeqCst) {
            return false;
        }
        let _in_order = self.updates.lock().unwrap_or_else(PoisonError::into_inner);
        let (files, unsettled) = match self.folder.scan_settled(Some(super::watch::SETTLE)) {
            Ok(scanned) => (scanned.files, scanned.unsettled),
            Err(e) => {
                crate::errln!("error: cannot rescan the shared folder {}: {e}", self.folder.root().display());
                return false;
            }
        };
        // Nothing new since the last look (a rescan without a change): say nothing.
        let mut last = self.last_watched.lock().unwrap_or_else(PoisonError::into_inner);
        if last.as_ref() == Some(&files) {
            return unsettled > 0;
        }
        match self.send_list(files.clone(), |files| Request::Update { files }) {
            Ok(_) => *last = Some(files),
            Err(e) => log::warn!("sending the folder's changes to the index failed: {e:#}"),
        }
        unsettled > 0
    }

    /// Keeps the connection to the index alive: pings it every `keepalive`; when the
    /// connection is lost, reconnects with exponential backoff (with jitter, so that
    /// many peers do not all knock at once when an index comes back) and, if this peer
    /// was registered, registers again. Runs for as long as the process does.
    fn supervise(&self, keepalive: Duration) {
        loop {
            match self.index.watch(keepalive) {
                Watch::Quiet => {
                    // A failed ping drops the connection; the next watch sees that.
                    let _ = self.index.call(&Request::Ping);
                }
                Watch::Lost(why) => {
                    let server = self.index.server();
                    crate::errln!(
                        "note: lost the connection to the index server {server} ({why}); reconnecting"
                    );
                    let mut wait = RECONNECT_FIRST;
                    loop {
                        let jitter = rand::rng().random_range(0.5..1.5);
                        thread::sleep(wait.mul_f64(jitter));
                        match self.index.reconnect() {
                            Ok(()) => break,
                            Err(e) => debug!("reconnecting to the index server failed: {e:#}"),
                        }
                        wait = (wait * 2).min(RECONNECT_MAX);
                    }
                    let server = self.index.server();
                    match self.index.login_again() {
                        Ok(Some(user)) => crate::errln!("note: logged in again as {user}"),
                        Ok(None) => {}
                        Err(e) => crate::errln!("error: reconnected, but logging in again failed: {e:#}"),
                    }
                    if !self.registered.load(Ordering::SeqCst) {
                        crate::errln!("note: reconnected to the index server {server}");
                        continue;
                    }
                    match self.register() {
                        Ok((n, _)) => crate::errln!(
                            "note: reconnected to the index server {server}; registered {} again",
                            files(n)
                        ),
                        Err(e) => crate::errln!(
                            "error: reconnected to the index server {server}, but registering again failed: {e:#}"
                        ),
                    }
                }
            }
        }
    }

    /// A download worker: takes queued names until there are none left.
    fn work(&self) {
        loop {
            let next = {
                let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
                let next = queue.waiting.pop_front();
                if next.is_none() {
                    queue.workers -= 1;
                }
                next
            };
            let Some(name) = next else { return };
            self.fetch(&name);
        }
    }

    /// One download, reported on stdout or stderr, then announced to the index.
    fn fetch(&self, name: &SharePath) {
        let shown = format!("{:?}", name.as_str());
        let downloader = Downloader {
            index: &self.index,
            folder: &self.folder,
            config: &self.downloads,
            penalties: &self.penalties,
            me: self
                .registered
                .load(Ordering::SeqCst)
                .then(|| SocketAddr::new(self.index.local_ip(), self.port)),
        };
        let result = downloader.download(name, |note| match note {
            Note::SourceFailed { from, why, more } => {
                let next = if more { "; going on with the other peers" } else { "" };
                crate::errln!("error: cannot download {shown} from {from}: {}{next}", escape(&format!("{why:#}")));
            }
            Note::BadPiece { from, piece, more } => {
                let next = if more { "; going on with the other peers" } else { "" };
                crate::errln!(
                    "error: cannot download {shown} from {from}: piece {piece} failed its hash; nothing it sent is kept, and it goes to the back of the order for {} minutes{next}",
                    PENALTY.as_secs() / 60
                );
            }
        });
        // Before any line about it is out: a script that reads the line may ask for the
        // name again at once.
        self.in_flight.lock().unwrap_or_else(PoisonError::into_inner).remove(name);
        let got = match result {
            Ok(got) => got,
            Err(e) => return self.fail(format!("cannot download {shown}: {e:#}")),
        };
        // The index hears of the new file first, so that once the line below is out,
        // other peers can already find the file here.
        let announced = if self.registered.load(Ordering::SeqCst) {
            let _in_order = self.updates.lock().unwrap_or_else(PoisonError::into_inner);
            self.index.change(&Request::Add { files: vec![got.info.clone()] }).map(drop)
        } else {
            Ok(())
        };
        let resumed = match got.resumed {
            0 => String::new(),
            n => format!(", {n} bytes of it already here"),
        };
        crate::outln!("downloaded {name} ({} bytes) {}{resumed}", got.info.size, from_sources(&got.sources));
        if let Err(e) = announced {
            self.fail(format!("downloaded {shown}, but the index was not updated: {e:#}"));
        }
    }
}

/// The password for `user`: from `PEERDEX_PASSWORD` if set, else asked for on the
/// terminal (read from `input` with echo off). A script must set the variable: its
/// next input line is a command, not a password.
pub fn password_for(user: &str, interactive: bool, input: &mut impl BufRead) -> anyhow::Result<String> {
    if let Ok(password) = std::env::var(PASSWORD_VAR) {
        return Ok(password);
    }
    if !interactive {
        bail!("set {PASSWORD_VAR}, or run the peer in a terminal to be asked for the password");
    }
    auth::read_password_from(&format!("password for {user}: "), input)
}

/// The environment variable a peer's password can be given in.
pub const PASSWORD_VAR: &str = "PEERDEX_PASSWORD";

fn report_failure(failed: &AtomicBool, why: impl Display) {
    failed.store(true, Ordering::SeqCst);
    // Errors can carry text from the network; the escaping is idempotent.
    crate::errln!("error: {}", escape(&why.to_string()));
}

/// Where a download came from: "from A", "from A and B (2 peers)", "from A, B, C and
/// 2 more (5 peers)": up to three peers, the ones that sent the most first.
fn from_sources(sources: &[(SocketAddr, u64)]) -> String {
    let named: Vec<String> = sources.iter().take(3).map(|(addr, _)| addr.to_string()).collect();
    match sources.len() {
        0 => "from the partial download already here".to_owned(),
        1 => format!("from {}", named[0]),
        n @ (2 | 3) => format!("from {} and {} ({n} peers)", named[..n - 1].join(", "), named[n - 1]),
        n => format!("from {} and {} more ({n} peers)", named.join(", "), n - 3),
    }
}

/// A listing entry as `get_files_list` shows it: `NAME<TAB>SIZE bytes<TAB>3 peers`,
/// and the peers downloading it too, when there are any (they serve what they have).
fn listing_line(e: &ListEntry) -> String {
    let partial = match e.partial {
        0 => String::new(),
        n => format!(", {n} downloading"),
    };
    format!("{}\t{} bytes\t{}{partial}", e.name, e.size, count(e.peers, "peer"))
}

/// "1 file", "2 files".
pub fn files(n: usize) -> String {
    count(n as u64, "file")
}

/// Scans the folder for registration, refusing a folder with more files than the
/// index accepts rather than letting the index refuse it. Returns the files, and what
/// was skipped as the end of a sentence ("; skipped 3 (2 symlinks outside the folder,
/// 1 unreadable)", or nothing); with `-v`, each skipped path is named in the log.
fn scan(folder: &SharedFolder) -> anyhow::Result<(Vec<FileInfo>, String)> {
    let scanned = folder
        .scan()
        .with_context(|| format!("cannot read the shared folder {}", folder.root().display()))?;
    let files = scanned.files;
    if files.len() > MAX_FILES_PER_PEER {
        bail!("the folder has {} files; at most {MAX_FILES_PER_PEER} can be shared", files.len());
    }
    for (path, why) in &scanned.skipped {
        log::info!("not sharing {:?}: {why}", escape(path));
    }
    let skipped = match scanned.skipped.len() {
        0 => String::new(),
        _ => format!("; skipped {}", super::folder::walk::summary(&scanned.skipped)),
    };
    Ok((files, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Option<Command>, String> {
        Command::parse(s)
    }

    #[test]
    fn parses_commands_and_names_with_spaces() {
        assert_eq!(parse("register\n"), Ok(Some(Command::Register)));
        assert_eq!(parse("   "), Ok(None));
        assert_eq!(
            parse("download  a b.txt \r\n"),
            Ok(Some(Command::Download(SharePath::parse("a b.txt").unwrap())))
        );
        assert_eq!(
            parse("get_files_list"),
            Ok(Some(Command::List { pattern: "".into(), limit: None, dirs: false }))
        );
        assert_eq!(
            parse("get_files_list --limit 5 mp3 song"),
            Ok(Some(Command::List { pattern: "mp3 song".into(), limit: Some(5), dirs: false }))
        );
        assert_eq!(
            parse("get_files_list big --limit 1"),
            Ok(Some(Command::List { pattern: "big".into(), limit: Some(1), dirs: false }))
        );
        assert_eq!(
            parse("get_files_list rock --limit=3 roll"),
            Ok(Some(Command::List { pattern: "rock roll".into(), limit: Some(3), dirs: false }))
        );
        assert_eq!(
            parse("get_files_list -- --limit 2"),
            Ok(Some(Command::List { pattern: "--limit 2".into(), limit: None, dirs: false }))
        );
        assert_eq!(
            parse("get_files_list \"two  spaces\""),
            Ok(Some(Command::List { pattern: "two  spaces".into(), limit: None, dirs: false }))
        );
        assert_eq!(
            parse("get_files_list --dirs album/"),
            Ok(Some(Command::List { pattern: "album/".into(), limit: None, dirs: true }))
        );
        assert!(parse("get_files_list --dirs ../x").unwrap_err().contains("invalid folder name"));
        assert_eq!(
            parse("download album/disc 1/"),
            Ok(Some(Command::DownloadFolder(SharePath::parse("album/disc 1").unwrap())))
        );
        assert_eq!(
            parse("download album/01 intro.flac"),
            Ok(Some(Command::Download(SharePath::parse("album/01 intro.flac").unwrap())))
        );
        assert!(parse("get_files_list --limitless").unwrap_err().contains("unknown option"));
        assert!(parse("get_files_list don't").unwrap_err().contains("unmatched quote"));
    }

    #[test]
    fn quoted_names_keep_their_spaces() {
        let name = |s: &str| Ok(Some(Command::Download(SharePath::parse(s).unwrap())));
        assert_eq!(parse("download \" lead.txt\""), name(" lead.txt"));
        assert_eq!(parse("download 'trail.txt  '"), name("trail.txt  "));
        assert_eq!(parse("download it's fine.txt"), name("it's fine.txt"), "a quote inside is a character");
        assert_eq!(parse("download  a  b.txt "), name("a  b.txt"), "unquoted: the rest of the line as it is");
        assert_eq!(parse("delete 'a b'"), Ok(Some(Command::Delete(SharePath::parse("a b").unwrap()))));
        assert!(parse("download \"a.txt\" b.txt").unwrap_err().contains("takes one name"));
        assert!(parse("download \"open").unwrap_err().contains("unmatched quote"));
    }

    #[test]
    fn bad_lines_are_named_errors() {
        assert_eq!(
            parse("frobnicate"),
            Err("unknown command \"frobnicate\" (type help for the list)".into())
        );
        assert_eq!(parse("register now"), Err("register takes no arguments".into()));
        assert!(parse("download").unwrap_err().contains("needs a file name"));
        assert!(parse("download ../../etc/passwd").unwrap_err().contains("are not file or folder names"));
        assert!(parse("download /etc/passwd").unwrap_err().contains("empty part"));
        assert!(parse("download a\\b").unwrap_err().contains("backslash"));
        assert!(parse("delete ..").unwrap_err().contains("invalid file name"));
        assert!(parse("get_files_list --limit x").unwrap_err().contains("--limit needs a number"));
    }

    #[test]
    fn long_and_non_utf8_lines_are_skipped_not_fatal() {
        let mut input = Vec::new();
        input.extend(vec![b'x'; MAX_LINE_LEN * 3]);
        input.extend(b"\n\xff\xfe\nhelp\n");
        let mut r = io::BufReader::with_capacity(64, &input[..]);
        assert!(matches!(read_line(&mut r).unwrap(), Line::Bad(w) if w.contains("longer")));
        assert!(matches!(read_line(&mut r).unwrap(), Line::Bad(w) if w.contains("UTF-8")));
        assert!(matches!(read_line(&mut r).unwrap(), Line::Text(t) if t == "help\n"));
        assert!(matches!(read_line(&mut r).unwrap(), Line::End));
    }
}
