//! What both binaries share: logging set-up, printing that survives a closed pipe, and
//! turning a run's outcome into an exit status.

use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::mpsc::{self, SyncSender};
use std::thread;

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
/// which writes whatever has queued up in one go and flushes whenever it catches up.
/// A record reaches the terminal and the file as soon as that thread runs.
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

/// Most log records queued for the writer thread; past this, logging callers wait for
/// it (the disk sets the pace) rather than the queue growing without bound.
const LOG_QUEUE_LEN: usize = 64 * 1024;

/// A `Write` that collects one record and hands each complete line (a record ends
/// with a newline) to the writer thread. See [`init_logging`].
pub struct LineSink {
    line: Vec<u8>,
    queue: SyncSender<Vec<u8>>,
}

impl LineSink {
    fn start(mut outputs: Vec<Box<dyn Write + Send>>) -> io::Result<LineSink> {
        let (queue, lines) = mpsc::sync_channel::<Vec<u8>>(LOG_QUEUE_LEN);
        thread::Builder::new().name("log writer".into()).spawn(move || {
            while let Ok(line) = lines.recv() {
                let mut write = |line: &[u8]| {
                    for out in outputs.iter_mut() {
                        let _ = out.write_all(line);
                    }
                };
                write(&line);
                while let Ok(more) = lines.try_recv() {
                    write(&more);
                }
                for out in outputs.iter_mut() {
                    let _ = out.flush();
                }
            }
        })?;
        Ok(LineSink { line: Vec::with_capacity(256), queue })
    }
}

impl Write for LineSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.line.extend_from_slice(buf);
        if self.line.ends_with(b"\n") {
            let line = std::mem::replace(&mut self.line, Vec::with_capacity(256));
            // The writer thread only stops with the process.
            let _ = self.queue.send(line);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
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
