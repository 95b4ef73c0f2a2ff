//! `peer <server-ip> <server-port> <my-port> <folder>`: a peerdex peer.

use std::io::{self, IsTerminal};
use std::net::{IpAddr, ToSocketAddrs};

use anyhow::Context;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use peerdex::cli;
use peerdex::net::ConnLimits;
use peerdex::peer::download::{self, DownloadConfig, PeerChoice};
use peerdex::peer::fileserver::{self, FileServerConfig};
use peerdex::peer::printer::Printer;
use peerdex::peer::{self, PeerConfig};

/// A peerdex peer: shares a folder's files with other peers and downloads theirs.
///
/// Prints `serving <folder> on <ip>:<port>` once its file server is bound, then reads
/// commands from stdin, one a line (type `help`). Results go to stdout, errors to
/// stderr as `error: ...`. At the end of input it waits for downloads in flight and
/// exits with status 0 if every command succeeded, 1 otherwise.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The index server's address: an IP address, or a host name such as localhost.
    server_ip: String,
    /// The index server's port.
    server_port: u16,
    /// Port for this peer's file server; 0 lets the system pick one.
    my_port: u16,
    /// The folder to share and to download into. It must exist.
    folder: PathBuf,
    /// Address for the file server. Default: if this peer reaches the index server over
    /// loopback, the loopback address it uses; otherwise all addresses (0.0.0.0 or ::).
    #[arg(long, value_name = "IP")]
    bind: Option<IpAddr>,
    /// Seconds to wait for another peer to accept a download connection.
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = cli::parse_secs)]
    connect_timeout: Duration,
    /// Seconds within which a source must deliver at least 64 KiB while it owes bytes,
    /// or be dropped (the other sources go on); also how long a download waits for
    /// busy sources without progress.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = cli::parse_secs)]
    read_timeout: Duration,
    /// Downloads run at once; more are queued.
    #[arg(long, value_name = "N", default_value_t = download::MAX_PARALLEL_DOWNLOADS)]
    max_downloads: usize,
    /// Uploads served at once; more downloaders are refused with a reason.
    #[arg(long, value_name = "N", default_value_t = fileserver::MAX_UPLOADS)]
    max_uploads: usize,
    /// Uploads served at once to one client address (an IPv6 client: its /64).
    #[arg(long, value_name = "N", default_value_t = fileserver::MAX_UPLOADS_PER_IP)]
    max_uploads_per_ip: usize,
    /// Connections to the file server at once; more are refused with a reason.
    #[arg(long, value_name = "N", default_value_t = fileserver::MAX_CONNECTIONS)]
    max_connections: usize,
    /// Connections to the file server at once from one client address.
    #[arg(long, value_name = "N", default_value_t = fileserver::MAX_CONNECTIONS_PER_IP)]
    max_connections_per_ip: usize,
    /// Seconds a downloader has to send its request once connected.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = cli::parse_secs)]
    request_timeout: Duration,
    /// Seconds within which a downloader must take at least 64 KiB of an upload, or be
    /// dropped.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = cli::parse_secs)]
    write_timeout: Duration,
    /// Seconds between pings to the index when idle (it drops silent peers after 180).
    #[arg(long, value_name = "SECS", default_value = "60", value_parser = cli::parse_secs)]
    keepalive: Duration,
    /// How to choose among the peers that share a file when there are more than a
    /// download uses at once (8): least-loaded asks each how busy it is and takes the
    /// least busy; random takes them in random order.
    #[arg(long, value_name = "HOW", default_value = "least-loaded")]
    peer_choice: PeerChoice,
    /// Log in to the index server as this user at start; the password comes from the
    /// PEERDEX_PASSWORD environment variable, or is asked for on the terminal.
    #[arg(long, value_name = "NAME")]
    user: Option<String>,
    /// Do not watch the folder: changes reach the index only by `update`.
    #[arg(long)]
    no_watch: bool,
    /// Do not share what matches PATTERN (gitignore syntax: `*.tmp`, `cache/`,
    /// `/only-at-the-top`); may be given several times. The folder's own
    /// `.peerdexignore` adds more, and .DS_Store, Thumbs.db, desktop.ini and @eaDir/
    /// are never shared.
    #[arg(long, value_name = "PATTERN")]
    exclude: Vec<String>,
    /// Longest path shared, in bytes (at most 4096); a longer one is skipped and
    /// reported. An index takes at most 1024 unless started with a larger
    /// --max-name-len: give this peer the same.
    #[arg(long, value_name = "BYTES", default_value_t = peerdex::name::INDEX_NAME_LEN as u16,
          value_parser = clap::value_parser!(u16).range(1..=peerdex::name::MAX_PATH_LEN as i64))]
    max_name_len: u16,
    /// Share the folder at start, as the `register` command does.
    #[arg(long)]
    register: bool,
    /// Print how far each running download has come, every 2 s: a line on stderr
    /// (`progress NAME: DONE of TOTAL bytes (P%), RATE bytes/s, N sources`), or a
    /// "progress" object with --json.
    #[arg(long)]
    progress: bool,
    /// Print every result as one JSON object a line on stdout (each with a "type";
    /// the README lists them), errors included, and nothing else there.
    #[arg(long)]
    json: bool,
    /// Log more about what the peer does (repeat for more): -v for uploads, -vv for
    /// debugging.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let outcome = run(args);
    let status = match &outcome {
        Ok(true) => 0,
        _ => 1,
    };
    log::info!("exiting with status {status}");
    peerdex::cli::exit_code(outcome)
}

fn run(args: Args) -> anyhow::Result<bool> {
    let level = match args.verbose {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Info,
        _ => log::LevelFilter::Debug,
    };
    peerdex::logging::init(peerdex::logging::Outputs { stderr: level, file: None })?;
    // Every upload and download holds a descriptor; the soft limit is often 1,024.
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        log::warn!("cannot raise the open file limit: {e}");
    }
    let index_addrs: Vec<_> = (args.server_ip.as_str(), args.server_port)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve the index server's address {:?}", args.server_ip))?
        .collect();
    peer::run(PeerConfig {
        index_addrs,
        port: args.my_port,
        folder: args.folder,
        bind: args.bind,
        files: FileServerConfig {
            connections: ConnLimits { max: args.max_connections, per_ip: args.max_connections_per_ip },
            uploads: ConnLimits { max: args.max_uploads, per_ip: args.max_uploads_per_ip },
            request_timeout: args.request_timeout,
            stall_timeout: args.write_timeout,
        },
        downloads: DownloadConfig {
            connect_timeout: args.connect_timeout,
            read_timeout: args.read_timeout,
            max_parallel: args.max_downloads,
            choice: args.peer_choice,
        },
        keepalive: args.keepalive,
        watch: !args.no_watch,
        excludes: args.exclude,
        max_name_len: usize::from(args.max_name_len),
        printer: match args.json {
            true => Printer::Json,
            // A person at a terminal: aligned listings and a line editor.
            false if io::stdin().is_terminal() && io::stdout().is_terminal() => Printer::Terminal,
            false => Printer::Text,
        },
        register: args.register,
        progress: args.progress,
        user: args.user,
    })
}
