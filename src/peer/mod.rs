//! The peer: a file server and a client of the index, side by side in one process.
//!
//! - [`folder`]: the shared folder, its file names and cached hashes, and the checks
//!   that keep every read and write inside it;
//! - [`fileserver`]: serves the folder's files to other peers;
//! - [`client`]: the persistent connection to the index server;
//! - [`download`]: lookup, then pieces from several sources at once, each verified
//!   as it arrives, offered to other peers while the download runs, then the rename;
//! - [`partial`]: partial downloads: the data and the record of verified pieces that
//!   lets a download resume, eviction, expiry;
//! - [`shell`]: the command loop on stdin; [`node`]: the state it drives;
//!   [`printer`]: how events look (text or JSON); [`screen`]: the terminal's lines and
//!   progress bars;
//! - [`watch`]: folder watching, so that changes reach the index by themselves.

pub mod client;
pub mod download;
pub mod fileserver;
pub mod folder;
pub mod node;
pub mod partial;
pub mod printer;
pub mod screen;
pub mod shell;
pub mod watch;

use std::io::{self, IsTerminal};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use anyhow::Context;
use log::error;

use client::IndexClient;
use download::DownloadConfig;
use fileserver::FileServerConfig;
use folder::SharedFolder;
use node::Node;
use printer::{Event, Printer};
use shell::Shell;

/// Everything a peer needs to start.
#[derive(Clone, Debug)]
pub struct PeerConfig {
    /// The index server's addresses (a host name may resolve to several); the first
    /// that answers is used.
    pub index_addrs: Vec<SocketAddr>,
    /// Port of our file server; 0 lets the OS pick.
    pub port: u16,
    /// The shared folder.
    pub folder: PathBuf,
    /// Address for the file server; `None` for [`default_bind_ip`] of the index
    /// connection's local address.
    pub bind: Option<IpAddr>,
    /// The file server's limits.
    pub files: FileServerConfig,
    /// The downloader's limits.
    pub downloads: DownloadConfig,
    /// How often to ping the index when idle ([`client::KEEPALIVE_INTERVAL`]).
    pub keepalive: Duration,
    /// Whether to watch the folder and send changes by themselves ([`watch`]).
    pub watch: bool,
    /// Log in as this user at start (the password from `PEERDEX_PASSWORD` or asked for).
    pub user: Option<String>,
    /// What not to share, in gitignore syntax, besides the defaults and the folder's
    /// `.peerdexignore` ([`folder::walk::rules`]).
    pub excludes: Vec<String>,
    /// Longest path shared, in bytes: [`SharedFolder::sharing_paths_up_to`].
    pub max_name_len: usize,
    /// How results are printed: lines, or JSON objects (`--json`).
    pub printer: Printer,
    /// Register at start, as the `register` command does (`--register`).
    pub register: bool,
    /// Print how far each running download has come, every few seconds (`--progress`).
    pub progress: bool,
}

/// Where the file server listens unless told otherwise, given `seen`, the local address
/// of our connection to the index (which is the IP the index will give other peers):
/// that very address when it is a loopback one (a local setup; nothing is exposed to
/// the network), otherwise every address of its family, since other machines must
/// reach us.
pub fn default_bind_ip(seen: IpAddr) -> IpAddr {
    match seen {
        ip if ip.is_loopback() => ip,
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

/// Runs a peer until its input ends: connects to the index, binds the file server and
/// prints `serving <folder> on <address>`, then runs the shell on stdin. Returns
/// whether every command succeeded.
pub fn run(config: PeerConfig) -> anyhow::Result<bool> {
    let shown = config.folder.display();
    let folder = SharedFolder::excluding(&config.folder, config.excludes.clone())
        .with_context(|| format!("cannot share folder {shown}"))?
        .sharing_paths_up_to(config.max_name_len);
    match partial::remove_stale(folder.root(), partial::MAX_AGE) {
        Ok(0) => {}
        Ok(n) => config
            .printer
            .emit(&Event::Note(&format!("deleted {n} partial downloads untouched for 7 days or more"))),
        Err(e) => log::warn!("cannot look for old partial downloads in {shown}: {e}"),
    }
    let index = Arc::new(IndexClient::connect(&config.index_addrs)?);
    let bind = config.bind.unwrap_or_else(|| default_bind_ip(index.local_ip()));
    let listener = TcpListener::bind((bind, config.port))
        .with_context(|| format!("cannot listen on {}", SocketAddr::new(bind, config.port)))?;
    let local = listener.local_addr()?;
    config.printer.emit(&Event::Serving { folder: &shown.to_string(), addr: local });

    let folder = Arc::new(folder);
    let serving = Arc::clone(&folder);
    thread::Builder::new().name("file server".into()).spawn(move || {
        if let Err(e) = fileserver::serve(listener, serving, config.files) {
            error!("the file server stopped: {e}");
        }
    })?;
    if let Some(user) = &config.user {
        crate::auth::check_user(user).map_err(|e| anyhow::anyhow!(e))?;
        let interactive = io::stdin().is_terminal();
        let password = || shell::password_for(user, interactive, &mut io::stdin().lock());
        index.login(user, password).with_context(|| format!("cannot log in as {user}"))?;
        config.printer.emit(&Event::LoggedIn { user });
    }
    let node = Node::start(index, folder, local.port(), config.downloads, config.printer, config.progress)?;
    if config.watch {
        let watcher = Arc::clone(&node);
        thread::Builder::new().name("watch".into()).spawn(move || {
            let root = watcher.folder.root().to_path_buf();
            let folder = Arc::clone(&watcher.folder);
            watch::watch(&root, move |path| folder.made_here(path), || watcher.sync_watched())
        })?;
    }
    let shell = Shell::new(node);
    if config.register {
        shell.execute_line("register");
    }
    Ok(shell.run(io::stdin().lock(), config.keepalive))
}
