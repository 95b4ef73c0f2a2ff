//! `indexing-server <ip> <port>`: the peerdex index.

use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use log::{info, warn};
use peerdex::auth::{self, Users};
use peerdex::index::budget::{self, Budget};
use peerdex::index::login::Accounts;
use peerdex::index::{self, Config, Index, Limits, Registry, registry};
use peerdex::net::ConnLimits;
use peerdex::{cli, logging, name, wire};

/// The peerdex indexing server: keeps track of which peer shares which files and
/// answers peers' lookups.
///
/// Prints `listening on <ip>:<port>` once bound. Logs every connection, request and
/// disconnect to the log file; stderr gets only warnings and errors (and every record
/// with -v). `indexing-server adduser FILE NAME` adds an account to a users file
/// instead.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Address to listen on: an IP address (127.0.0.1, 0.0.0.0, ::1, ...) or a host
    /// name (localhost); the first of its addresses that can be bound is used.
    ip: String,
    /// Port to listen on; 0 lets the system pick one (the line printed says which).
    port: u16,
    /// Require login, with the accounts in this users file (see `adduser`).
    #[arg(long, value_name = "FILE")]
    users: Option<PathBuf>,
    /// File the log is appended to (opened once the server is listening).
    #[arg(long, value_name = "PATH", default_value = "log.log")]
    log_file: PathBuf,
    /// Least severe log records kept in the log file: info logs every connection and
    /// request; warn only problems (malformed input, refused handshakes); off nothing.
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    log_level: log::LevelFilter,
    /// Also write every record kept in the log file to stderr (by default stderr gets
    /// only warnings and errors).
    #[arg(short, long)]
    verbose: bool,
    /// Most connections at once; more are refused with a reason (Redis's maxclients).
    #[arg(long, value_name = "N", default_value_t = index::server::MAX_CONNECTIONS)]
    max_connections: usize,
    /// Most connections at once from one client address (an IPv6 client: its /64).
    #[arg(long, value_name = "N", default_value_t = index::server::MAX_CONNECTIONS_PER_IP)]
    max_connections_per_ip: usize,
    /// Largest request accepted, as in 4096, 64KiB, 16MiB; a longer one is refused
    /// and its connection closed.
    #[arg(long, value_name = "BYTES", default_value = "16MiB", value_parser = cli::parse_bytes)]
    max_frame: usize,
    /// Memory for requests being received at once, over all connections; a large
    /// request that does not fit waits for room, and is refused after --read-timeout.
    #[arg(long, value_name = "BYTES", default_value = "256MiB", value_parser = cli::parse_bytes)]
    receive_budget: usize,
    /// Most files one peer may register.
    #[arg(long, value_name = "N", default_value_t = wire::MAX_FILES_PER_PEER)]
    max_files_per_peer: usize,
    /// Most files registered from one client address, over all its connections.
    #[arg(long, value_name = "N", default_value_t = registry::MAX_FILES_PER_IP)]
    max_files_per_ip: usize,
    /// Most files in the whole index.
    #[arg(long, value_name = "N", default_value_t = registry::MAX_FILES_TOTAL)]
    max_files: usize,
    /// Longest file name accepted, in bytes: a path in the peer's folder, such as
    /// "album/01 intro.flac" (at most 4096).
    #[arg(long, value_name = "BYTES", default_value_t = registry::MAX_NAME_BYTES as u16,
          value_parser = clap::value_parser!(u16).range(1..=name::MAX_PATH_LEN as i64))]
    max_name_len: u16,
    /// Seconds a new connection has to complete its handshake.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = cli::parse_secs)]
    handshake_timeout: Duration,
    /// Seconds a connection may stay silent between requests (peers ping every 60).
    #[arg(long, value_name = "SECS", default_value = "180", value_parser = cli::parse_secs)]
    idle_timeout: Duration,
    /// Seconds a request may take to arrive once it has started.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = cli::parse_secs)]
    read_timeout: Duration,
    /// Seconds a reply may take to be written before the client is dropped.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = cli::parse_secs)]
    write_timeout: Duration,
    /// Keep the registry in PostgreSQL instead of memory, shared with every index
    /// server given the same database: postgres://USER@HOST:PORT/DB (the port may be
    /// left out; libpq's key=value form works too). The schema is created or
    /// migrated at start.
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// Connections to the --store database, at most.
    #[arg(long, value_name = "N", default_value_t = index::store::DEFAULT_POOL, requires = "store")]
    store_pool: u32,
    /// Seconds this server's peers outlive it in the --store database if it dies
    /// without a word; it renews its lease every third of that.
    #[arg(long, value_name = "SECS", default_value = "15", value_parser = parse_lease, requires = "store")]
    lease: Duration,
}

/// `--lease`: seconds, within [`index::store::MIN_LEASE`] and [`index::store::MAX_LEASE`].
fn parse_lease(text: &str) -> Result<Duration, String> {
    let (min, max) = (index::store::MIN_LEASE, index::store::MAX_LEASE);
    Some(cli::parse_secs(text)?).filter(|lease| (min..=max).contains(lease)).ok_or_else(|| {
        format!(
            "a lease of {text} s is out of range: it must be {} to {} seconds",
            min.as_secs(),
            max.as_secs()
        )
    })
}

/// `indexing-server adduser FILE NAME`: adds an account to a users file, or changes
/// its password. The password is taken from `PEERDEX_PASSWORD` if set, else read from
/// the terminal without echo, or from stdin when that is not a terminal. The file
/// stores a salt and a slow hash, never the password; it is created, readable by its
/// owner only, if missing.
#[derive(Parser, Debug)]
#[command(name = "indexing-server adduser")]
struct AddUser {
    /// The users file.
    file: PathBuf,
    /// The user name: letters, digits, '.', '_', '-' or '@'.
    name: String,
}

fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv.get(1).is_some_and(|a| a == "adduser") {
        let args = AddUser::parse_from(argv.into_iter().skip(1));
        return cli::exit_code(adduser(args));
    }
    let args = Args::parse_from(argv);
    cli::exit_code(run(args))
}

fn adduser(args: AddUser) -> anyhow::Result<bool> {
    auth::check_user(&args.name).map_err(|e| anyhow::anyhow!(e))?;
    let mut users = Users::load(&args.file, true)?;
    let existed = users.get(&args.name).is_some();
    let password = match std::env::var(auth::PASSWORD_VAR) {
        Ok(password) if !password.is_empty() => password,
        _ => auth::read_password(&format!("password for {}: ", args.name))?,
    };
    users.set(&args.name, &password)?;
    users.save(&args.file)?;
    let done = if existed { "changed the password of" } else { "added" };
    peerdex::outln!("{done} user {} in {}", args.name, args.file.display());
    Ok(true)
}

fn run(args: Args) -> anyhow::Result<bool> {
    // Every connection has room for a small request set aside; what is left must hold
    // the largest request twice (its bytes and what they decode to), and an eighth more.
    let fits = Budget::for_server(args.receive_budget, args.max_connections)
        .is_some_and(|budget| args.max_frame <= budget.largest_frame());
    if !fits {
        anyhow::bail!(
            "--receive-budget {} MiB cannot hold a request of --max-frame {} MiB beside 4 KiB for each of --max-connections {} (it needs at least {} MiB)",
            args.receive_budget >> 20,
            args.max_frame >> 20,
            args.max_connections,
            (args.max_frame * 16)
                .div_ceil(7)
                .saturating_add(args.max_connections * budget::UNBOOKED_FRAME)
                .div_ceil(1 << 20)
                + 1
        );
    }
    let accounts = match &args.users {
        Some(path) => Some(Arc::new(Accounts::new(Users::load(path, false)?))),
        None => None,
    };
    // Bind first: a server that cannot start leaves no log file behind.
    let listener = bind(&args.ip, args.port)?;
    let local = listener.local_addr()?;
    // The store too: a server that cannot reach its database does not start.
    let limits = Limits {
        files_per_peer: args.max_files_per_peer,
        files_per_ip: args.max_files_per_ip,
        files_total: args.max_files,
        name_len: usize::from(args.max_name_len),
    };
    let store = match &args.store {
        Some(url) => Some(index::Store::open(url, args.store_pool, args.lease, limits, local.to_string())?),
        None => None,
    };
    let stderr_level = if args.verbose { args.log_level } else { args.log_level.min(log::LevelFilter::Warn) };
    logging::init(logging::Outputs { stderr: stderr_level, file: Some((&args.log_file, args.log_level)) })?;
    peerdex::outln!("listening on {local}");
    if !args.verbose {
        peerdex::errln!("indexing-server: listening on {local}; logging to {}", args.log_file.display());
    }
    info!("listening on {local}");
    // One descriptor per peer: the usual soft limit of 1,024 would cap the index at
    // about a thousand peers, so take whatever the hard limit allows.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => info!("open file limit: {limit} (so at most about {limit} peers)"),
        Err(e) => warn!("cannot raise the open file limit: {e}"),
    }
    let config = Config {
        accounts,
        max_frame_len: args.max_frame,
        receive_budget: args.receive_budget,
        connections: ConnLimits { max: args.max_connections, per_ip: args.max_connections_per_ip },
        handshake_timeout: args.handshake_timeout,
        idle_timeout: args.idle_timeout,
        read_timeout: args.read_timeout,
        write_timeout: args.write_timeout,
    };
    let index = match store {
        None => Index::new(Registry::new(limits)),
        Some(store) => {
            info!("registry kept in the index store, as server {}", store.server_id());
            Index::stored(store)
        }
    };
    index::serve(listener, index, config)?;
    Ok(true)
}

/// Binds the first address of `host` (an IP address or a name) that can be bound.
fn bind(host: &str, port: u16) -> anyhow::Result<TcpListener> {
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve the address to listen on, {host:?}"))?
        .collect();
    let mut last = None;
    for addr in &addrs {
        match TcpListener::bind(addr) {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(anyhow::Error::from(e).context(format!("cannot listen on {addr}"))),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("{host:?} has no address to listen on")))
}
