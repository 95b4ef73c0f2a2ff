//! Logging for both binaries: records go to stderr and, for the index server, to a log
//! file, each output through its own bounded queue and writer thread.
//!
//! ```text
//! log::info!(..) -> simplelog formats the record -> Sink (per output) -> Queue (bounded)
//!                                                        writer thread -> stderr / log.log
//! ```
//!
//! simplelog's `WriteLogger` writes a record in several small pieces, which on a plain
//! file or stderr is several system calls per record: at tens of thousands of requests
//! a second, most of a server's time. So a [`Sink`] gathers a record in memory and
//! appends it whole to its output's `Queue`, and a writer thread writes whatever has
//! gathered in one go (within [`LINGER`] of the first record).
//!
//! Nothing a client does can make logging grow the server's memory or stop its log:
//!
//! - a queue holds at most [`QUEUE_BYTES`]; when it is full, records are dropped and
//!   counted, and the writer says how many in a record of its own;
//! - each output has its own queue and thread, so a stderr that nobody reads (a full
//!   pipe) fills its own queue and drops its own records, while the log file goes on;
//! - values that came from clients are cut and escaped ([`crate::text::Clip`]), and
//!   the index server limits each connection's records ([`RateLimit`]).

use std::fmt;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;
use simplelog::{CombinedLogger, ConfigBuilder, LevelFilter, SharedLogger, WriteLogger};

/// Most bytes of records waiting for one output's writer. At about 150 bytes a record,
/// 25,000 records: a burst far above any steady rate the limits allow.
pub const QUEUE_BYTES: usize = 4 << 20;

/// How long a writer lets records gather after the first one before writing them:
/// under load one write carries hundreds of records, and no record waits longer than
/// this (plus the write) to reach its output.
pub const LINGER: Duration = Duration::from_millis(5);

/// How long [`flush`] waits for an output to take what is queued: a stderr nobody
/// reads must not keep the process from exiting.
pub const FLUSH_PATIENCE: Duration = Duration::from_secs(2);

/// Where records go, and from which level.
#[derive(Debug)]
pub struct Outputs<'a> {
    /// Least severe level written to stderr.
    pub stderr: LevelFilter,
    /// A file records are appended to, and its least severe level.
    pub file: Option<(&'a Path, LevelFilter)>,
}

/// Sets up logging to `outputs`. A log file is opened (created if missing) here.
pub fn init(outputs: Outputs<'_>) -> anyhow::Result<()> {
    let config = ConfigBuilder::new()
        .set_time_format_rfc3339()
        .set_thread_level(LevelFilter::Off)
        .set_target_level(LevelFilter::Off)
        .build();
    let mut loggers: Vec<Box<dyn SharedLogger>> = vec![WriteLogger::new(
        outputs.stderr,
        config.clone(),
        Sink::start("stderr", Box::new(io::stderr()))?,
    )];
    if let Some((path, level)) = outputs.file {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open log file {}", path.display()))?;
        loggers.push(WriteLogger::new(level, config, Sink::start("log file", Box::new(file))?));
    }
    CombinedLogger::init(loggers).context("cannot set up logging")
}

/// Writes out every record logged so far, waiting up to [`FLUSH_PATIENCE`] for each
/// output. Call it before the process exits.
pub fn flush() {
    log::logger().flush();
}

/// One output's records, waiting for its writer thread. See the module docs.
#[derive(Default)]
struct Queue {
    state: Mutex<Waiting>,
    /// Signalled when records arrive in an empty queue.
    ready: Condvar,
    /// Signalled when the writer has written a batch.
    written: Condvar,
}

#[derive(Default)]
struct Waiting {
    bytes: Vec<u8>,
    /// Records dropped because the queue was full, not yet reported.
    dropped: u64,
    /// The writer is writing a batch now.
    busy: bool,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, Waiting> {
        crate::lock(&self.state)
    }

    /// Appends one whole record, or counts it dropped if it does not fit.
    fn push(&self, record: &[u8]) {
        let mut waiting = self.lock();
        if waiting.bytes.len() + record.len() > QUEUE_BYTES {
            waiting.dropped += 1;
            return;
        }
        if waiting.bytes.is_empty() && waiting.dropped == 0 {
            self.ready.notify_one();
        }
        waiting.bytes.extend_from_slice(record);
    }

    /// The writer thread: takes what has gathered and writes it, forever.
    fn drain(&self, mut out: Box<dyn Write + Send>) {
        let mut batch = Vec::new();
        loop {
            let dropped = {
                let mut waiting = self.lock();
                while waiting.bytes.is_empty() && waiting.dropped == 0 {
                    waiting = self.ready.wait(waiting).unwrap_or_else(PoisonError::into_inner);
                }
                drop(waiting);
                thread::sleep(LINGER);
                let mut waiting = self.lock();
                std::mem::swap(&mut batch, &mut waiting.bytes);
                waiting.busy = true;
                std::mem::take(&mut waiting.dropped)
            };
            if dropped > 0 {
                let note = format!(
                    "{} [WARN] {dropped} log records dropped: this output could not keep up\n",
                    now_rfc3339()
                );
                let _ = out.write_all(note.as_bytes());
            }
            let _ = out.write_all(&batch).and_then(|()| out.flush());
            batch.clear();
            if batch.capacity() > QUEUE_BYTES {
                batch.shrink_to(QUEUE_BYTES);
            }
            self.lock().busy = false;
            self.written.notify_all();
        }
    }

    /// Waits until everything queued so far is written, or `patience` has passed.
    fn flush(&self, patience: Duration) {
        let deadline = Instant::now() + patience;
        let mut waiting = self.lock();
        while !waiting.bytes.is_empty() || waiting.dropped > 0 || waiting.busy {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else { return };
            waiting = self.written.wait_timeout(waiting, left).unwrap_or_else(PoisonError::into_inner).0;
        }
    }
}

/// The time now as RFC 3339 in UTC, as simplelog writes it, for the writer's own
/// records.
fn now_rfc3339() -> String {
    use time::format_description::well_known::Rfc3339;
    time::OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default()
}

/// The `Write` that simplelog formats records into: gathers a record's pieces and hands
/// the record whole to its output's `Queue`. See the module docs.
pub struct Sink {
    /// The record being formatted; simplelog writes it in pieces.
    record: Vec<u8>,
    queue: Arc<Queue>,
}

impl Sink {
    /// A sink whose records `out` receives, written by a new thread.
    fn start(what: &str, out: Box<dyn Write + Send>) -> io::Result<Sink> {
        let queue = Arc::new(Queue::default());
        let writer = Arc::clone(&queue);
        thread::Builder::new().name(format!("log writer ({what})")).spawn(move || writer.drain(out))?;
        Ok(Sink { record: Vec::with_capacity(256), queue })
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.record.extend_from_slice(buf);
        // A record ends with its newline: hand it over whole.
        if self.record.ends_with(b"\n") {
            self.queue.push(&self.record);
            self.record.clear();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.queue.flush(FLUSH_PATIENCE);
        Ok(())
    }
}

/// Most records one connection may log a second, on average; a burst of as many is
/// allowed. An attacker's connection can make a record per request, tens of thousands
/// a second; at this rate a hundred such connections write about 3 MB a second.
pub const RECORDS_PER_SECOND: u32 = 100;

/// How often, at most, a connection whose records are being suppressed says so.
pub const SUPPRESSED_SUMMARY_EVERY: Duration = Duration::from_secs(1);

/// Limits the records of one source (an index server's connection) to about
/// [`RECORDS_PER_SECOND`]: a token bucket. The records over the limit are counted, and
/// the count is logged in one line at most every [`SUPPRESSED_SUMMARY_EVERY`] and when
/// the source ends ([`RateLimit::finish`]).
#[derive(Debug)]
pub struct RateLimit {
    tokens: f64,
    refilled: Duration,
    suppressed: u64,
    suppressed_since: Duration,
}

/// A monotonic clock a few milliseconds coarse, cheap to read: the rate limit reads
/// the clock for every record it is asked about (one per request at an index server),
/// and on some VMs a precise reading is a system call (`read_tsc`: 9% of an index
/// server's time under lookups in one profile); a coarse one is a memory read.
fn coarse_now() -> Duration {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
        Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        START.get_or_init(Instant::now).elapsed()
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        let now = coarse_now();
        RateLimit {
            tokens: f64::from(RECORDS_PER_SECOND),
            refilled: now,
            suppressed: 0,
            suppressed_since: now,
        }
    }
}

impl RateLimit {
    /// Logs `args` at `level`, prefixed by `who`, unless over the rate.
    pub fn log(&mut self, level: log::Level, who: impl fmt::Display, args: fmt::Arguments<'_>) {
        if self.allow(level, &who) {
            log::log!(level, "{who} {args}");
        }
    }

    /// Whether a record at `level` from `who` is to be logged now (the caller then logs
    /// it), taking its place in the rate; first logs the summary of suppressed records
    /// if one is due. For callers that build a record only once it is allowed: under a
    /// flood nearly every record is suppressed, and its text is then never made.
    pub fn allow(&mut self, level: log::Level, who: &dyn fmt::Display) -> bool {
        if level > log::max_level() {
            return false;
        }
        let (summary, allowed) = self.admit(coarse_now());
        if let Some((count, over)) = summary {
            summarise(who, count, over);
        }
        allowed
    }

    /// Logs the count of suppressed records, if any (the source is ending).
    pub fn finish(&mut self, who: impl fmt::Display) {
        if self.suppressed > 0 {
            summarise(&who, self.suppressed, coarse_now().saturating_sub(self.suppressed_since));
            self.suppressed = 0;
        }
    }

    /// Decides about a record at `now`: whether to log it, and whether first to log a
    /// summary of (count, over how long) records suppressed.
    fn admit(&mut self, now: Duration) -> (Option<(u64, Duration)>, bool) {
        let rate = f64::from(RECORDS_PER_SECOND);
        self.tokens = (self.tokens + now.saturating_sub(self.refilled).as_secs_f64() * rate).min(rate);
        self.refilled = now;
        let mut summary = None;
        let since = now.saturating_sub(self.suppressed_since);
        if self.suppressed > 0 && since >= SUPPRESSED_SUMMARY_EVERY {
            summary = Some((self.suppressed, since));
            self.suppressed = 0;
        }
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return (summary, true);
        }
        if self.suppressed == 0 {
            self.suppressed_since = now;
        }
        self.suppressed += 1;
        (summary, false)
    }
}

fn summarise(who: &dyn fmt::Display, count: u64, over: Duration) {
    log::warn!(
        "{who} {count} more log records suppressed over {:.1} s (more than {RECORDS_PER_SECOND} a second from one connection)",
        over.as_secs_f64()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_growing() {
        let q = Queue::default();
        let record = vec![b'x'; 1000];
        for _ in 0..(QUEUE_BYTES / 1000 + 50) {
            q.push(&record);
        }
        let waiting = q.lock();
        assert!(waiting.bytes.len() <= QUEUE_BYTES);
        assert_eq!(waiting.dropped, 50);
    }

    #[test]
    fn the_writer_writes_everything_and_flush_waits_for_it() {
        #[derive(Clone, Default)]
        struct Shared(Arc<Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let out = Shared::default();
        let mut sink = Sink::start("test", Box::new(out.clone())).unwrap();
        for i in 0..1000 {
            write!(sink, "record ").unwrap();
            writeln!(sink, "{i}").unwrap();
        }
        sink.flush().unwrap();
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1000);
        assert!(text.ends_with("record 999\n"));
    }

    #[test]
    fn a_flood_is_cut_to_the_rate_with_one_summary_a_second() {
        let mut limit = RateLimit::default();
        let start = coarse_now();
        let (mut logged, mut summaries, mut counted) = (0, 0, 0);
        // 10,000 records a second for 5 seconds.
        for i in 0..50_000u32 {
            let now = start + Duration::from_micros(u64::from(i) * 100);
            let (summary, allowed) = limit.admit(now);
            logged += u32::from(allowed);
            if let Some((n, _)) = summary {
                summaries += 1;
                counted += n;
            }
        }
        assert!((500..=600).contains(&logged), "{logged} records logged in 5 s");
        assert!((4..=5).contains(&summaries), "{summaries} summaries in 5 s");
        let left = limit.suppressed;
        assert_eq!(u64::from(logged) + counted + left, 50_000, "every record logged or counted");
    }

    #[test]
    fn allow_lets_a_burst_through_and_refuses_the_rest_of_a_flood() {
        // No logger is installed in unit tests; the level filter alone decides.
        log::set_max_level(log::LevelFilter::Info);
        let mut limit = RateLimit::default();
        let start = Instant::now();
        let allowed = (0..10_000).filter(|_| limit.allow(log::Level::Info, &"test")).count();
        // The burst, and whatever the rate refilled while the loop ran.
        let refilled = (start.elapsed().as_secs_f64() * f64::from(RECORDS_PER_SECOND)).ceil() as usize;
        let burst = RECORDS_PER_SECOND as usize;
        assert!((burst..=burst + refilled + 1).contains(&allowed), "{allowed} of 10,000 allowed");
        assert!(!limit.allow(log::Level::Trace, &"test"), "a level the filter drops is never allowed");
    }

    #[test]
    fn the_time_is_rfc_3339() {
        let t = now_rfc3339();
        assert!(t.starts_with("20") && t.ends_with('Z') && &t[10..11] == "T", "{t}");
    }
}
