//! The peer's state, whatever front end drives it: the registration, the order of
//! the folder's changes sent to the index, the download queue (a fixed pool of
//! workers on a channel), the folder watcher's syncs and the connection's supervisor.
//! It says what happens as [`Event`]s through its [`Printer`]; the shell parses
//! commands and calls it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use anyhow::{Context, bail};
use log::debug;
use rand::RngExt;

use super::client::{IndexClient, Watch};
use super::download::{DownloadConfig, Downloader, Note, Penalties, Progress};
use super::folder::{SharedFolder, Skip};
use super::printer::{Event, Printer};
use super::screen::{BarState, Screen};
use crate::lock;
use crate::name::SharePath;
use crate::text::escape;
use crate::wire::{FileInfo, LIST_PART_BYTES, MAX_FILES_PER_PEER, Request};

/// A queued download: a name, and the id of the content chosen, if one was.
type Queued = (SharePath, Option<String>);

/// What a scan skipped: each path with why.
pub type Skipped = Vec<(String, Skip)>;

/// First wait before reconnecting to a lost index; doubled after each failure.
pub const RECONNECT_FIRST: Duration = Duration::from_millis(100);

/// Longest wait between reconnection attempts.
pub const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// Counts a queued download out of [`Node::wait_downloads`]'s when dropped: once its
/// result line is out, or if its worker panicked (a `wait` must not hang on it).
struct Settle<'a>(&'a Node);

impl Drop for Settle<'_> {
    fn drop(&mut self) {
        *lock(&self.0.outstanding) -= 1;
        self.0.settled.notify_all();
    }
}

/// The peer's state. See the module docs.
pub struct Node {
    pub(super) index: Arc<IndexClient>,
    pub(super) folder: Arc<SharedFolder>,
    /// The file server's port, sent with `register`.
    port: u16,
    downloads: DownloadConfig,
    pub(super) registered: AtomicBool,
    /// Set once any command has failed; decides the exit status.
    failed: AtomicBool,
    /// Names queued or being downloaded, so one name is not fetched twice at once.
    in_flight: Mutex<HashSet<SharePath>>,
    /// Downloads queued whose result line is not out yet, for `wait`; signalled by
    /// `settled` as each ends.
    outstanding: Mutex<usize>,
    settled: Condvar,
    /// Set by Ctrl-C while a command runs on a terminal: a `wait` or a listing
    /// stops (see [`super::shell`]).
    pub(super) stop: Arc<AtomicBool>,
    /// The downloads running now, with how far each has come.
    running: Mutex<BTreeMap<SharePath, Arc<Progress>>>,
    /// Downloads cancelled or failed with verified pieces kept, this session: a later
    /// `download` of the name resumes them. Name, bytes kept, bytes in all.
    resumable: Mutex<BTreeMap<SharePath, (u64, u64)>>,
    /// Queued names cancelled before they started.
    cancelled: Mutex<HashSet<SharePath>>,
    /// Where queued downloads go; `None` once no more can come.
    queue: Mutex<Option<mpsc::Sender<Queued>>>,
    /// The download workers.
    workers: Mutex<Vec<JoinHandle<()>>>,
    /// Taken around each change sent to the index: a rescan and the `Update` it feeds
    /// are one step, so a download's `Add` cannot fall between them and be undone.
    pub(super) updates: Mutex<()>,
    /// The list the folder watcher last sent, so an unchanged folder sends nothing.
    last_watched: Mutex<Option<Vec<FileInfo>>>,
    /// Whether the watcher last found no folder at the shared folder's path.
    folder_gone: AtomicBool,
    /// Sources that stalled or sent wrong bytes, at the back of the order for a while.
    penalties: Penalties,
    /// How what happens is shown.
    pub printer: Printer,
    /// Whether running downloads say how far they have come (`--progress`).
    pub progress: bool,
    /// On a terminal, where lines and progress bars are drawn.
    pub screen: Screen,
    /// The folder downloads running, each with the files it is waiting for.
    folders: Mutex<Vec<Arc<FolderJob>>>,
    /// Held while the bars are drawn, and while a download ends: so the bars drawn
    /// never bring back one whose result line is out.
    drawing: Mutex<()>,
    /// On a terminal, the rows of the listing being printed, shown aligned at its end
    /// (or a block at a time, for a long one).
    rows: Mutex<super::printer::Table>,
}

/// A folder download, for its one bar: its files and bytes in all, and the files not
/// yet ended (downloaded, failed or cancelled), with their sizes.
struct FolderJob {
    /// The folder's name with its `/`, as its bar is keyed.
    key: String,
    files: usize,
    bytes: u64,
    waiting: Mutex<HashMap<SharePath, u64>>,
    /// Bytes of the files ended.
    ended: AtomicU64,
}

/// A download as `downloads` lists it.
pub struct Running {
    /// Its name.
    pub name: SharePath,
    /// How far it has come; `None` while queued.
    pub progress: Option<Arc<Progress>>,
}

impl Node {
    /// A node for a peer whose file server listens on `port`, with its download workers
    /// ([`DownloadConfig::max_parallel`] of them) started.
    pub fn start(
        index: Arc<IndexClient>,
        folder: Arc<SharedFolder>,
        port: u16,
        downloads: DownloadConfig,
        printer: Printer,
        progress: bool,
    ) -> anyhow::Result<Arc<Node>> {
        let (queue, jobs) = mpsc::channel::<Queued>();
        let workers = downloads.max_parallel.max(1);
        let node = Arc::new(Node {
            index,
            folder,
            port,
            downloads,
            registered: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            in_flight: Mutex::default(),
            outstanding: Mutex::default(),
            settled: Condvar::new(),
            stop: Arc::default(),
            running: Mutex::default(),
            cancelled: Mutex::default(),
            resumable: Mutex::default(),
            queue: Mutex::new(Some(queue)),
            workers: Mutex::default(),
            updates: Mutex::default(),
            last_watched: Mutex::default(),
            folder_gone: AtomicBool::new(false),
            penalties: Penalties::default(),
            printer,
            progress,
            screen: Screen::default(),
            folders: Mutex::default(),
            drawing: Mutex::default(),
            rows: Mutex::default(),
        });
        let jobs = Arc::new(Mutex::new(jobs));
        for _ in 0..workers {
            let (me, jobs) = (Arc::clone(&node), Arc::clone(&jobs));
            let worker = thread::Builder::new()
                .name("download".into())
                .spawn(move || {
                    loop {
                        let next = lock(&jobs).recv();
                        let Ok((name, content)) = next else { return };
                        let _settle = Settle(&me);
                        if lock(&me.cancelled).remove(&name) {
                            lock(&me.in_flight).remove(&name);
                            me.ended(&name);
                            me.emit(&Event::Cancelled { name: name.as_str(), why: "it had not started" });
                            continue;
                        }
                        me.fetch(&name, content.as_deref());
                    }
                })
                .context("cannot start a download worker")?;
            lock(&node.workers).push(worker);
        }
        Ok(node)
    }

    /// Prints `event`.
    pub fn emit(&self, event: &Event) {
        if self.printer == Printer::Terminal {
            if let Some(row) = super::printer::row(event) {
                let block = lock(&self.rows).push(row);
                for line in block {
                    self.screen.print(&line, false);
                }
                return;
            }
            if let Event::ListEnd { .. } = event {
                self.flush_rows();
            }
            if let Some((line, to_stderr)) = super::printer::text(event) {
                self.screen.print(&line, to_stderr);
            }
            return;
        }
        self.printer.emit(event);
    }

    /// Prints, on a terminal, the rows gathered of the listing being printed: at its
    /// `ListEnd`, or where it ended without one (the index's connection broke) or was
    /// stopped, as a script sees them, and not mixed into the next listing.
    pub fn flush_rows(&self) {
        if self.printer == Printer::Terminal {
            let rows = lock(&self.rows).finish();
            for line in rows {
                self.screen.print(&line, false);
            }
        }
    }

    /// Reports a failed command: the exit status will be 1.
    pub fn fail(&self, why: impl std::fmt::Display) {
        self.failed.store(true, Ordering::SeqCst);
        self.emit(&Event::Error(&why.to_string()));
    }

    /// Whether every command so far succeeded.
    pub fn succeeded(&self) -> bool {
        !self.failed.load(Ordering::SeqCst)
    }

    /// No more downloads can be queued: waits for the queued ones to end.
    pub fn finish(&self) {
        lock(&self.queue).take();
        let workers: Vec<_> = lock(&self.workers).drain(..).collect();
        for handle in workers {
            if handle.join().is_err() {
                self.failed.store(true, Ordering::SeqCst);
            }
        }
    }

    /// Queues a download of `name`: of the content whose root starts with the hex
    /// digits `content`, if given, else of the most shared.
    pub fn queue_download(&self, name: SharePath, content: Option<String>) -> anyhow::Result<()> {
        if !lock(&self.in_flight).insert(name.clone()) {
            bail!("cannot download {:?}: already downloading it", name.as_str());
        }
        self.emit(&Event::Queued { name: name.as_str() });
        // Counted before a worker can take it, and so end it.
        *lock(&self.outstanding) += 1;
        let sent = lock(&self.queue).as_ref().map(|q| q.send((name.clone(), content)));
        if sent.is_none_or(|r| r.is_err()) {
            lock(&self.in_flight).remove(&name);
            *lock(&self.outstanding) -= 1;
            bail!("cannot download {:?}: the peer is stopping", name.as_str());
        }
        Ok(())
    }

    /// Whether `name` is queued or being downloaded.
    pub fn is_downloading(&self, name: &SharePath) -> bool {
        lock(&self.in_flight).contains(name)
    }

    /// Waits until every download queued so far has ended and its result line is out
    /// (`wait`). Returns how many are still going if Ctrl-C stopped the wait first.
    pub fn wait_downloads(&self) -> Option<usize> {
        let mut outstanding = lock(&self.outstanding);
        while *outstanding > 0 {
            if self.stop.swap(false, Ordering::SeqCst) {
                return Some(*outstanding);
            }
            // Woken as each ends; looks at `stop` in between.
            outstanding = self
                .settled
                .wait_timeout(outstanding, Duration::from_millis(100))
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        None
    }

    /// A folder download of `files` (each with its size) is about to be queued: they
    /// get one bar, the folder's, until the last of them ends.
    pub fn start_folder(&self, folder: &SharePath, files: &[(SharePath, u64)]) {
        if files.is_empty() {
            return;
        }
        lock(&self.folders).push(Arc::new(FolderJob {
            key: format!("{folder}/"),
            files: files.len(),
            bytes: files.iter().map(|(_, size)| size).sum(),
            waiting: Mutex::new(files.iter().cloned().collect()),
            ended: AtomicU64::new(0),
        }));
    }

    /// `name` has ended, however: its bar goes with the line that says so, and so does
    /// its folder's, if it was the folder's last file.
    pub fn ended(&self, name: &SharePath) {
        self.screen.forget(name.as_str());
        let mut folders = lock(&self.folders);
        let Some(i) = folders.iter().position(|job| lock(&job.waiting).contains_key(name)) else {
            return;
        };
        let job = Arc::clone(&folders[i]);
        let mut waiting = lock(&job.waiting);
        if let Some(size) = waiting.remove(name) {
            job.ended.fetch_add(size, Ordering::Relaxed);
        }
        if waiting.is_empty() {
            self.screen.forget(&job.key);
            folders.remove(i);
        }
    }

    /// Draws the progress bars with `draw`, given each running download, but a
    /// folder download's files as one bar for the folder (files and bytes).
    pub fn draw_bars(&self, draw: impl FnOnce(Vec<BarState>)) {
        let _drawing = lock(&self.drawing);
        draw(self.bars());
    }

    fn bars(&self) -> Vec<BarState> {
        let running = lock(&self.running).clone();
        let folders = lock(&self.folders).clone();
        let mut bars = Vec::new();
        for job in &folders {
            let waiting = lock(&job.waiting);
            let going: u64 = running
                .iter()
                .filter(|(name, _)| waiting.contains_key(*name))
                .map(|(_, p)| p.done.load(Ordering::Relaxed))
                .sum();
            bars.push(BarState {
                key: job.key.clone(),
                done: job.ended.load(Ordering::Relaxed) + going,
                total: job.bytes,
                note: format!(
                    "{}/{}",
                    job.files - waiting.len(),
                    crate::text::count(job.files as u64, "file")
                ),
            });
        }
        for (name, p) in running {
            if folders.iter().any(|job| lock(&job.waiting).contains_key(&name)) {
                continue;
            }
            bars.push(BarState {
                key: name.to_string(),
                done: p.done.load(Ordering::Relaxed),
                total: p.total.load(Ordering::Relaxed),
                note: crate::text::count(p.sources.load(Ordering::Relaxed) as u64, "source"),
            });
        }
        bars
    }

    /// The downloads running and queued, running first, each in name order.
    pub fn downloads(&self) -> Vec<Running> {
        let running = lock(&self.running).clone();
        let cancelled = lock(&self.cancelled).clone();
        let mut queued: Vec<SharePath> = lock(&self.in_flight)
            .iter()
            .filter(|n| !running.contains_key(*n) && !cancelled.contains(*n))
            .cloned()
            .collect();
        queued.sort();
        let mut all: Vec<Running> =
            running.into_iter().map(|(name, p)| Running { name, progress: Some(p) }).collect();
        all.extend(queued.into_iter().map(|name| Running { name, progress: None }));
        all
    }

    /// The downloads cancelled or failed this session that kept verified pieces, in
    /// name order: name, bytes kept, bytes in all.
    pub fn resumable(&self) -> Vec<(SharePath, u64, u64)> {
        let busy = lock(&self.in_flight).clone();
        let resumable = lock(&self.resumable);
        resumable
            .iter()
            .filter(|(n, _)| !busy.contains(*n))
            .map(|(n, &(done, total))| (n.clone(), done, total))
            .collect()
    }

    /// Cancels the download of `name`, or every download: a running one stops and
    /// keeps what it verified, for a later `download` to resume; a queued one does not
    /// start. Returns the names cancelled.
    pub fn cancel(&self, name: Option<&SharePath>) -> Vec<SharePath> {
        let mut names = Vec::new();
        for d in self.downloads() {
            if name.is_some_and(|n| *n != d.name) {
                continue;
            }
            match &d.progress {
                Some(p) => p.cancel.store(true, std::sync::atomic::Ordering::SeqCst),
                None => drop(lock(&self.cancelled).insert(d.name.clone())),
            }
            names.push(d.name);
        }
        names
    }

    /// Scans the folder and registers it. Returns the number of files registered, and
    /// what was skipped. The one way to register, for the command and for a
    /// reconnection alike: it holds the lock that orders the folder's changes, so a
    /// download's `Add` cannot be lost.
    pub fn register(&self) -> anyhow::Result<(usize, Skipped)> {
        let _in_order = lock(&self.updates);
        let (files, skipped) = scan(&self.folder)?;
        let port = self.port;
        let count = self.send_list(files, |files| Request::Register { port, files })?;
        self.registered.store(true, Ordering::SeqCst);
        Ok((count as usize, skipped))
    }

    /// Rescans the folder and sends the new list (the peer must be registered).
    pub fn update(&self) -> anyhow::Result<(usize, Skipped)> {
        let _in_order = lock(&self.updates);
        let (list, skipped) = scan(&self.folder)?;
        let count = self.send_list(list, |files| Request::Update { files })?;
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
    /// being written, and sends the list. Returns whether it should be looked at again
    /// soon: some file was left out, or the list could not be sent.
    pub fn sync_watched(&self) -> bool {
        if !self.registered.load(Ordering::SeqCst) {
            return false;
        }
        let _in_order = lock(&self.updates);
        let root = self.folder.root();
        let mut gone = false;
        let (files, unsettled) = match self.folder.scan_settled(Some(super::watch::SETTLE)) {
            Ok(scanned) => (scanned.files, scanned.unsettled),
            // Deleted, moved away, or replaced by a file: none of its files can be
            // served, so none stays listed. The watcher looks for it again.
            Err(_) if !root.is_dir() => {
                gone = true;
                (Vec::new(), 0)
            }
            Err(e) => {
                let why = format!("cannot rescan the shared folder {}: {e}", root.display());
                self.emit(&Event::Error(&why));
                return false;
            }
        };
        log::debug!(
            "rescanned the shared folder after a change: {}, {} still being written",
            crate::text::count(files.len() as u64, "file"),
            unsettled
        );
        // Nothing new since the last look (a rescan without a change): say nothing.
        let mut last = lock(&self.last_watched);
        if last.as_ref() == Some(&files) && gone == self.folder_gone.load(Ordering::SeqCst) {
            return unsettled > 0;
        }
        match self.send_list(files.clone(), |files| Request::Update { files }) {
            Ok(count) => {
                *last = Some(files);
                if self.folder_gone.swap(gone, Ordering::SeqCst) != gone {
                    let what = match gone {
                        true => format!(
                            "the shared folder {} is gone: the index lists none of its files until it is back",
                            root.display()
                        ),
                        false => format!(
                            "the shared folder {} is back: sharing {}",
                            root.display(),
                            crate::text::count(count, "file")
                        ),
                    };
                    self.emit(&Event::Note(&what));
                }
            }
            Err(e) => {
                // Looked at again after a moment, as for a file still being written:
                // nothing else would send these changes before the folder changes again.
                log::warn!("sending the folder's changes to the index failed: {e:#}; trying again");
                return true;
            }
        }
        unsettled > 0
    }

    /// Keeps the connection to the index alive: pings it every `keepalive`; when the
    /// connection is lost, reconnects with exponential backoff (with jitter, so that
    /// many peers do not all knock at once when an index comes back) and, if this peer
    /// was registered, registers again. Runs for as long as the process does.
    pub fn supervise(&self, keepalive: Duration) {
        loop {
            match self.index.watch(keepalive) {
                Watch::Quiet => {
                    // A failed ping drops the connection; the next watch sees that.
                    let _ = self.index.call(&Request::Ping);
                }
                Watch::Lost(why) => {
                    let server = self.index.server();
                    self.emit(&Event::Note(&format!(
                        "lost the connection to the index server {server} ({why}); reconnecting"
                    )));
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
                        Ok(Some(user)) => self.emit(&Event::Note(&format!("logged in again as {user}"))),
                        Ok(None) => {}
                        Err(e) => self
                            .emit(&Event::Error(&format!("reconnected, but logging in again failed: {e:#}"))),
                    }
                    if !self.registered.load(Ordering::SeqCst) {
                        self.emit(&Event::Note(&format!("reconnected to the index server {server}")));
                        continue;
                    }
                    match self.register() {
                        Ok((n, _)) => self.emit(&Event::Note(&format!(
                            "reconnected to the index server {server}; registered {} again",
                            crate::text::count(n as u64, "file")
                        ))),
                        Err(e) => self.emit(&Event::Error(&format!(
                            "reconnected to the index server {server}, but registering again failed: {e:#}"
                        ))),
                    }
                }
            }
        }
    }

    /// One download, reported as it ends, then announced to the index.
    fn fetch(&self, name: &SharePath, content: Option<&str>) {
        let shown = name.as_str();
        let progress = Arc::new(Progress::default());
        lock(&self.running).insert(name.clone(), Arc::clone(&progress));
        lock(&self.resumable).remove(name);
        let downloader = Downloader {
            index: &self.index,
            folder: &self.folder,
            config: &self.downloads,
            penalties: &self.penalties,
            me: self
                .registered
                .load(Ordering::SeqCst)
                .then(|| SocketAddr::new(self.index.local_ip(), self.port)),
            progress: &progress,
            content,
        };
        // The peers that failed it, for a failure's report.
        let mut failed = Vec::new();
        let result = downloader.download(name, |note| match note {
            Note::SourceFailed { from, why, more } => {
                let why = format!("{why:#}");
                failed.push(from);
                self.emit(&Event::SourceFailed { name: shown, from, why: &why, more, bad_piece: None });
            }
            Note::BadPiece { from, piece, more } => {
                failed.push(from);
                self.emit(&Event::SourceFailed { name: shown, from, why: "", more, bad_piece: Some(piece) });
            }
            Note::Progress { done, total, sources } => {
                // On a terminal the bars say it.
                if self.progress && self.printer != Printer::Terminal {
                    let rate = rate(done, &progress);
                    self.emit(&Event::Progress { name: shown, done, total, rate, sources });
                }
            }
        });
        // Before any line about it is out: a script that reads the line may ask for the
        // name again at once.
        {
            let _drawing = lock(&self.drawing);
            lock(&self.running).remove(name);
            lock(&self.in_flight).remove(name);
            self.ended(name);
        }
        if result.is_err() {
            let (done, total) =
                (progress.done.load(Ordering::Relaxed), progress.total.load(Ordering::Relaxed));
            if done > 0 && done < total {
                lock(&self.resumable).insert(name.clone(), (done, total));
            }
        }
        let got = match result {
            Ok(got) => got,
            Err(e) if progress.cancel.load(std::sync::atomic::Ordering::SeqCst) => {
                return self.emit(&Event::Cancelled { name: shown, why: &format!("{e:#}") });
            }
            Err(e) => {
                self.failed.store(true, Ordering::SeqCst);
                let why = format!("{e:#}");
                return self.emit(&Event::Failed { name: shown, why: &why, peers: &failed });
            }
        };
        // The index hears of the new file first, so that once the line below is out,
        // other peers can already find the file here.
        let announced = if self.registered.load(Ordering::SeqCst) {
            let _in_order = lock(&self.updates);
            self.index.change(&Request::Add { files: vec![got.info.clone()] }).map(drop)
        } else {
            Ok(())
        };
        self.emit(&Event::Downloaded {
            name: shown,
            size: got.info.size,
            root: &got.info.root,
            sources: &got.sources,
            resumed: got.resumed,
            contents: got.contents,
        });
        if let Err(e) = announced {
            self.fail(format!("downloaded {shown:?}, but the index was not updated: {e:#}"));
        }
    }
}

/// Scans the folder for registration, refusing a folder with more files than the
/// index accepts rather than letting the index refuse it. Returns the files and what
/// was skipped; with `-v`, each skipped path is named in the log.
fn scan(folder: &SharedFolder) -> anyhow::Result<(Vec<FileInfo>, Skipped)> {
    let scanned = folder
        .scan()
        .with_context(|| format!("cannot read the shared folder {}", folder.root().display()))?;
    let files = scanned.files;
    if files.len() > MAX_FILES_PER_PEER {
        bail!("the folder has {} files; at most {MAX_FILES_PER_PEER} can be shared", files.len());
    }
    for (path, why) in &scanned.skipped {
        log::info!("not sharing \"{}\": {why}", escape(path));
    }
    Ok((files, scanned.skipped))
}

/// Bytes a second since the download started.
pub fn rate(done: u64, progress: &Progress) -> u64 {
    (done as f64 / progress.started.elapsed().as_secs_f64().max(0.001)) as u64
}
