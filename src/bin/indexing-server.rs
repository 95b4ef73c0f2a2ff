//! `indexing-server <ip> <port>`: the peerdex index.

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use log::{info, warn};
use peerdex::index::{self, Config, Index};

/// The peerdex indexing server: keeps track of which peer shares which files and
/// answers peers' lookups.
///
/// Prints `listening on <ip>:<port>` once bound; logs every connection, request and
/// disconnect to stderr and to the log file.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Address to listen on, e.g. 127.0.0.1, 0.0.0.0 or ::1.
    ip: IpAddr,
    /// Port to listen on; 0 lets the system pick one (the line printed says which).
    port: u16,
    /// File the log is appended to.
    #[arg(long, value_name = "PATH", default_value = "log.log")]
    log_file: PathBuf,
    /// Least severe log records kept: info logs every connection and request; warn
    /// only problems (malformed input, refused handshakes); off nothing.
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    log_level: log::LevelFilter,
}

fn main() -> ExitCode {
    let args = Args::parse();
    peerdex::cli::exit_code(run(args))
}

fn run(args: Args) -> anyhow::Result<bool> {
    peerdex::cli::init_logging(args.log_level, Some(&args.log_file))?;
    // One descriptor per peer: the usual soft limit of 1,024 would cap the index at
    // about a thousand peers, so take whatever the hard limit allows.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => info!("open file limit: {limit} (so at most about {limit} peers)"),
        Err(e) => warn!("cannot raise the open file limit: {e}"),
    }
    let wanted = SocketAddr::new(args.ip, args.port);
    let listener = TcpListener::bind(wanted).with_context(|| format!("cannot listen on {wanted}"))?;
    let local = listener.local_addr()?;
    peerdex::outln!("listening on {local}");
    info!("listening on {local}");
    index::serve(listener, Index::default(), Config::default())?;
    Ok(true)
}
