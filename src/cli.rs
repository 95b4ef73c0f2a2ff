//! What both binaries share: logging set-up, printing that survives a closed pipe, and
//! turning a run's outcome into an exit status.

use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use anyhow::Context;
use simplelog::{ConfigBuilder, LevelFilter, WriteLogger};

/// `println!` that ignores a closed stdout instead of panicking: a peer whose output is
/// piped into `head` must not die for it.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {{
        use ::std::io::Write as _;
        let _ = writeln!(::std::io::stdout(), $($arg)*);
    }};
}

/// `eprintln!` that ignores a closed stderr.
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => {{
        use ::std::io::Write as _;
        let _ = writeln!(::std::io::stderr(), $($arg)*);
    }};
}

/// Sends log records at `level` and above to stderr and, if `file` is given, appends
/// them to that file too.
///
/// simplelog's `WriteLogger` writes each record in several small pieces (time, level,
/// message), which on a plain `File` or stderr is several system calls per record:
/// at tens of thousands of requests a second, most of the server's time. So records
/// are formatted into memory by a [`LineSink`] and written by one background thread,
/// which writes whatever has accumulated in one go. A record reaches the terminal and
/// the file within a few milliseconds ([`LOG_LINGER`]).
pub fn init_logging(level: LevelFilter, file: Option<&Path>) -> anyhow::Result<()> {
    let config = ConfigBuilder::new()
        .set_time_format_rfc3339()
        .set_thread_level(LevelFilter::Off)
        .set_target_level(LevelFilter::Off)
        .build();
    let mut outputs: Vec<Box<dyn Write + Send>> = vec![Box::new(io::stderr())];
    if let Some(path) = file {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open log file {}", path.display()))?;
        outputs.push(Box::new(BufWriter::with_capacity(64 * 1024, log)));
    }
    let sink = LineSink::start(outputs)?;
    WriteLogger::init(level, config, sink).context("cannot set up logging")
}

/// How long the writer thread lets records accumulate after the first one arrives
/// before it writes them: under load one write carries hundreds of records, and no
/// record waits longer than this (plus the write) to reach the terminal and the file.
const LOG_LINGER: Duration = Duration::from_millis(5);

/// Log records waiting for the writer thread, and the signal that there are some.
#[derive(Default)]
struct Pending {
    bytes: Mutex<Vec<u8>>,
    ready: Condvar,
}

/// A `Write` that appends formatted records to a shared buffer that one background
/// thread drains. See [`init_logging`]. Each record is appended whole, a `memcpy`
/// under a lock shared only with the writer thread; the writer is woken only when the
/// buffer goes from empty to not empty.
pub struct LineSink {
    /// The record being formatted; simplelog writes it in pieces.
    line: Vec<u8>,
    pending: Arc<Pending>,
}

impl LineSink {
    fn start(mut outputs: Vec<Box<dyn Write + Send>>) -> io::Result<LineSink> {
        let pending = Arc::new(Pending::default());
        let shared = Arc::clone(&pending);
        thread::Builder::new().name("log writer".into()).spawn(move || {
            let mut batch = Vec::new();
            loop {
                {
                    let mut bytes = shared.bytes.lock().unwrap_or_else(PoisonError::into_inner);
                    while bytes.is_empty() {
                        bytes = shared.ready.wait(bytes).unwrap_or_else(PoisonError::into_inner);
                    }
                }
                thread::sleep(LOG_LINGER);
                std::mem::swap(&mut batch, &mut *shared.bytes.lock().unwrap_or_else(PoisonError::into_inner));
                for out in outputs.iter_mut() {
                    let _ = out.write_all(&batch).and_then(|()| out.flush());
                }
                batch.clear();
            }
        })?;
        Ok(LineSink { line: Vec::with_capacity(256), pending })
    }
}

impl Write for LineSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.line.extend_from_slice(buf);
        // A record ends with its newline: hand it over whole.
        if self.line.ends_with(b"\n") {
            let mut bytes = self.pending.bytes.lock().unwrap_or_else(PoisonError::into_inner);
            if bytes.is_empty() {
                self.pending.ready.notify_one();
            }
            bytes.extend_from_slice(&self.line);
            self.line.clear();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Parses a duration given in seconds, as in `10` or `0.5` (for clap).
pub fn parse_secs(text: &str) -> Result<Duration, String> {
    let secs: f64 = text.trim().parse().map_err(|_| format!("{text:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{text:?} is not a positive number of seconds"))
}

/// Parses a byte count, as in `4096`, `64KiB` or `16MiB` (for clap).
pub fn parse_bytes(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let scale: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (use B, KiB, MiB or GiB)")),
    };
    digits
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{text:?} is not a positive byte count"))
}

/// The exit status for a run: 0 if it succeeded, 1 if it failed or reported failures
/// (the error chain is printed as `error: a: b: c`). A broken pipe on stdout is not a
/// failure: whoever read our output has simply stopped reading.
pub fn exit_code(outcome: anyhow::Result<bool>) -> ExitCode {
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<io::Error>().is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
            }) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            errln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_parse_or_say_why() {
        assert_eq!(parse_secs("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_secs("0.25"), Ok(Duration::from_millis(250)));
        assert!(parse_secs("0").is_err());
        assert!(parse_secs("-1").is_err());
        assert!(parse_secs("ten").unwrap_err().contains("not a number"));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("64KiB"), Ok(64 << 10));
        assert_eq!(parse_bytes("16 MiB"), Ok(16 << 20));
        assert!(parse_bytes("16 parsecs").unwrap_err().contains("unknown unit"));
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("99999999999999999999").is_err());
    }
}
