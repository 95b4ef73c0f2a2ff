//! What both binaries share: logging set-up, printing that survives a closed pipe, and
//! turning a run's outcome into an exit status.

use std::fs::OpenOptions;
use std::io::{self, IsTerminal};
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use simplelog::{
    ColorChoice, CombinedLogger, ConfigBuilder, LevelFilter, SharedLogger, TermLogger, TerminalMode,
    WriteLogger,
};

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
pub fn init_logging(level: LevelFilter, file: Option<&Path>) -> anyhow::Result<()> {
    let config = ConfigBuilder::new()
        .set_time_format_rfc3339()
        .set_thread_level(LevelFilter::Off)
        .set_target_level(LevelFilter::Off)
        .build();
    let color = if io::stderr().is_terminal() { ColorChoice::Auto } else { ColorChoice::Never };
    let mut loggers: Vec<Box<dyn SharedLogger>> =
        vec![TermLogger::new(level, config.clone(), TerminalMode::Stderr, color)];
    if let Some(path) = file {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open log file {}", path.display()))?;
        loggers.push(WriteLogger::new(level, config, log));
    }
    CombinedLogger::init(loggers).context("cannot set up logging")
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
