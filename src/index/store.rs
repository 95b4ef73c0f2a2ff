//! The registry kept in PostgreSQL (`indexing-server --store postgres://...`), so that
//! several index servers serve one index: a peer registered at one is found at all.
//!
//! Every request keeps its meaning and its reply; only where the state lives changes.
//! State bound to connections stays bound to them: each server holds a row in
//! `servers` with a lease it renews every third of the lease ([`DEFAULT_LEASE`], an
//! option); its peers' rows point at that row, and go when their connection ends, as
//! in memory. When a server dies without a word (kill -9), another one deletes that
//! server's row, and so its peers' rows, once the lease has expired (its files first,
//! a batch a statement: [`Store::reap`]). A server that was only stopped that long
//! finds its row gone or marked gone, takes a new one and closes all its
//! connections, so that its peers register again (they reconnect by themselves).
//!
//! ```text
//! servers (id, address, lease_until)  <-  server_counts (server_id, files): its peers' files
//!    ^ on delete cascade
//! peers   (id, server_id, conn, ip, ip_key, port, files, gone)   unique (server_id, conn)
//!    ^ on delete cascade
//! files   (peer_id, name COLLATE "C", size, root, complete) primary key (peer_id, name)
//!          btree (name) include (complete, peer_id): lookups, and listings in
//!          name order (an index-only walk)
//!          gin (lower(name) gin_trgm_ops): listings of names containing a text
//! ```
//!
//! `files.complete` is false for a partial download a peer announced. `peers.files`
//! counts its complete files, so that the limits per address and in all are sums over
//! peers rather than counts over files; they hold across all servers, checked in the
//! transaction that makes the change. The changes that grow a count take one advisory
//! lock for the sums and the commit ([`GROWTH_LOCK`]), so that the limits hold
//! exactly however many connections, from however many addresses, at however many
//! servers, grow their counts at once. The sums are short: an address's peers through
//! their index, and all files as the living servers' counts (`server_counts`, kept by
//! each change of a peer's count, in its transaction), not a sum over every peer.
//!
//! The database's connections come from a pool (r2d2) sized by `--store-pool`, fit for
//! the thread per connection: a request takes one for its statements and gives it
//! back. Every statement is one round trip: the lookup is prepared once on each
//! connection, the others go with their parameters' types (nothing prepared first).
//! Lookups asked while this server's previous ones are being answered wait for them
//! and go together, as one statement ([`super::batch`], [`LOOKUP_MANY`]).
//! A listing's first page is one statement by keyset ([`Store::list_page`]: the names
//! after a given one, quick to its first row: a walk of at most [`FIRST_WALK`] names
//! unless its plan says otherwise); the rest is one query read through a
//! cursor a page at a time ([`Cursor`]), for as long as the client takes in each page
//! promptly. From a client that reads slowly, the rest comes by keyset again, a page
//! per statement, so that no connection waits on a client. What a listing asks the
//! trigram index for (a rare pattern's rarest trigrams), and whether it may walk the
//! names in order, is decided from PostgreSQL's own sample of the names
//! ([`super::plan`]). At most half
//! the pool's connections serve listings at once, so that many clients listing cannot
//! make lookups wait; no statement runs longer than [`STATEMENT_TIMEOUT`]. A request made
//! while the database cannot be reached gets `Error("index store unavailable")` (the
//! pool keeps trying to connect, with backoff); a disconnect's removal that fails is
//! retried by the lease thread, so a peer gone during an outage does not stay listed.
//! The lease thread has one more connection of its own, outside the pool, so that
//! requests holding every pooled connection cannot keep it from renewing the lease.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;
use postgres::NoTls;
use postgres::types::{ToSql, Type};
use r2d2_postgres::PostgresConnectionManager;

use super::Looked;
use super::batch::{Batcher, Deliver};
use super::plan::{Plan, Sample};
use super::registry::{self, Limits, ListPage, MAX_PARTIALS_PER_PEER, PageBudget, Pattern, RegistryError};
use crate::content::Hash;
use crate::lock;
use crate::name::SharePath;
use crate::net::client_key;
use crate::text::Clip;
use crate::wire::{FileInfo, ListEntry, PeerHit};

/// Files of dead servers' peers deleted in one statement by the lease thread
/// ([`Store::reap`]), so that it renews its own lease in time however many there are.
const REAP_BATCH: i64 = 10_000;

/// How long a server's peers outlive it, if it dies without a word: its lease.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(15);

/// The shortest lease `--lease` takes. A server renews every third of its lease, with
/// a round trip to the database that a busy one can make last tens of milliseconds
/// (p99 9-16 ms here at 50 clients); with a lease much shorter, living servers would
/// take each other for dead, and a lease thread would send hundreds of statements a
/// second.
pub const MIN_LEASE: Duration = Duration::from_secs(1);

/// The longest lease `--lease` takes: a day, for which a dead server's peers would
/// still be found. Longer ones are more likely a slip of the finger than a wish.
pub const MAX_LEASE: Duration = Duration::from_secs(24 * 60 * 60);

/// Database connections in the pool, by default: enough for the requests of a busy
/// server's threads to wait on each other for microseconds, and well within
/// PostgreSQL's default of 100 connections for three servers.
pub const DEFAULT_POOL: u32 = 16;

/// Longest name the store takes, in bytes: a btree entry of PostgreSQL holds at most
/// about 2,700 bytes (a third of an 8 KiB page), and the primary key's entries hold the
/// peer's id beside the name, the names' index its id and `complete` (a 2,600-byte
/// name of random characters fits both).
pub const MAX_STORED_NAME: usize = 2600;

/// Longest a statement may run before the database cancels it (its request is then
/// answered "index store unavailable"): a bound on what any request can cost the
/// database; a registration of 200,000 files takes a few seconds.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the database's host may leave what we sent unacknowledged, or stay
/// silent to keepalive probes, before its connection is taken for dead (TCP's own
/// patience is about 15 minutes). A host that vanishes without closing its connections
/// (powered off, cut off, a primary replaced by its standby) then costs each request
/// on one of them 10 s and an "index store unavailable", not a quarter of an hour,
/// and the lease thread reconnects in time.
const DEAD_HOST: Duration = Duration::from_secs(10);

/// How long a request waits for a pooled connection before it is told the store is
/// unavailable: long enough for a burst of requests on a busy server to be served in
/// turn, short enough that a peer hears of an outage well before its own timeouts.
const POOL_WAIT: Duration = Duration::from_secs(5);

/// The longest a listing holds a cursor (a pooled connection, a listing place and an
/// open transaction) while its client reads it: a listing of a million names out of
/// 10M took 8.2 s in all (docs/PERFORMANCE.md). Past it, the rest comes by keyset.
pub const LISTING_HOLD: Duration = Duration::from_secs(10);

/// How long a listing's page waits for a listing place: longer than a cursor may hold
/// one, so that a listing waiting behind others is refused only if places stay taken
/// for longer than that (by many listings at once).
const LISTING_WAIT: Duration = Duration::from_secs(LISTING_HOLD.as_secs() + POOL_WAIT.as_secs());

/// The schema, one migration a version, applied in order at start (in a transaction,
/// under an advisory lock, so that servers starting together apply each once).
const MIGRATIONS: [&str; 5] = [
    r#"
-- pg_trgm's operator classes are in the search path here: see `find_trigrams`.
CREATE TABLE servers (
    id bigserial PRIMARY KEY,
    address text NOT NULL,
    lease_until timestamptz NOT NULL
);
CREATE TABLE peers (
    id bigserial PRIMARY KEY,
    server_id bigint NOT NULL REFERENCES servers (id) ON DELETE CASCADE,
    conn text NOT NULL,
    ip text NOT NULL,
    ip_key text NOT NULL,
    port integer NOT NULL,
    files bigint NOT NULL DEFAULT 0,
    UNIQUE (server_id, conn)
);
CREATE INDEX peers_ip_key ON peers (ip_key);
CREATE TABLE files (
    peer_id bigint NOT NULL REFERENCES peers (id) ON DELETE CASCADE,
    name text COLLATE "C" NOT NULL,
    size bigint NOT NULL,
    root bytea NOT NULL,
    complete boolean NOT NULL,
    PRIMARY KEY (peer_id, name)
);
CREATE INDEX files_name ON files (name);
CREATE INDEX files_name_trgm ON files USING gin (name gin_trgm_ops);
"#,
    r#"
-- The trigram index on the name itself also serves `=` (pg_trgm 1.6), and PostgreSQL
-- chose it to join a listing page's names back to their rows: with names that share
-- their trigrams with 200,000 others, a page took 9 s. On the lowercased name, it
-- serves only the listings' `lower(name) LIKE`.
DROP INDEX files_name_trgm;
CREATE INDEX files_name_trgm ON files USING gin (lower(name) gin_trgm_ops);
"#,
    r#"
-- A listing's first page walks the names in order and tests each one; with what it
-- tests beside each name in the index (complete, peer_id), the walk reads the index
-- alone, never the table (an index-only scan, once vacuum has marked the table's pages
-- all-visible, as autovacuum does after inserts). Over 10M names, the first page of a
-- word in 1.2% of them took 49 ms of query instead of 0.5-1 s, and reached the client
-- after 113-126 ms instead of 631-740 ms (docs/PERFORMANCE.md, store).
-- It serves lookups and name order as the index it replaces did. Building it locks
-- the table's writes for as long as it takes: about 15 s at 10M files.
CREATE INDEX files_name_listing ON files (name) INCLUDE (complete, peer_id);
DROP INDEX files_name;
-- Whether that walk or the trigram index serves a listing, PostgreSQL decides from the
-- pattern's share of the names, which it estimates from a sample of lowercased names
-- (ANALYZE's statistics of the trigram index's expression). With the default 100
-- entries, a word in 1.2% of 10M names was estimated at 1-5% by four ANALYZEs, and in
-- one benchmark run so low that the trigram index was chosen: its first page took
-- 438 ms, against 88-134 ms by the walk. With 1,000 entries the estimates were
-- 1.0-1.9%. ANALYZE then samples 300,000 rows, not 30,000 (2.1-2.6 s at 10M names).
ALTER INDEX files_name_trgm ALTER COLUMN 1 SET STATISTICS 1000;
"#,
    r#"
-- A dead server's peers are marked gone when its lease is found expired, and leave
-- lookups, listings and the limits per address and in all at once; their files are deleted a
-- batch at a time after (turns of a sixth of the lease: a million files take many).
-- Before, they were found, and counted against their address, until the last batch.
-- Adding a column with a constant default rewrites nothing. Listings leave out the
-- files of the peers marked gone, found through this index (empty nearly always).
ALTER TABLE peers ADD COLUMN gone boolean NOT NULL DEFAULT false;
CREATE INDEX peers_gone ON peers (id) WHERE gone;
"#,
    r#"
-- The limit in all is checked against each living server's count of its peers'
-- complete files, kept here by the changes themselves, not by a sum over every peer's
-- row (1.7 ms at 10,000 peers, under the lock that the changes adding files take one
-- at a time). A row of its own, not a column of `servers`, so that the lease's renewal
-- never waits for a change. Servers of an older version do not keep it: stop them
-- before starting this one.
CREATE TABLE server_counts (
    server_id bigint PRIMARY KEY REFERENCES servers (id) ON DELETE CASCADE,
    files bigint NOT NULL
);
INSERT INTO server_counts (server_id, files)
    SELECT servers.id, coalesce(sum(peers.files), 0)
    FROM servers LEFT JOIN peers ON peers.server_id = servers.id GROUP BY servers.id;
"#,
];

/// A key for `pg_advisory_xact_lock` while migrating: "peerdex" in ASCII.
const MIGRATION_LOCK: i64 = 0x0070_6565_7264_6578;

/// The first key of the lock that the changes growing the number of files take at
/// the end of their transactions ([`Store::check_room`]): "pdx+" in ASCII. The second
/// key is the hash of the schema's name, so that indexes kept in different schemas
/// of one database do not wait for each other. Both keys are 32-bit: their lock
/// space is apart from the one-key locks of the migrations.
pub const GROWTH_LOCK: i32 = 0x7064_782b;

/// Takes the growth lock ([`GROWTH_LOCK`]) until the end of the transaction.
pub const TAKE_GROWTH_LOCK: &str = "SELECT pg_advisory_xact_lock($1, hashtext(current_schema()))";

type Pool = r2d2::Pool<Manager>;
type Client = r2d2::PooledConnection<Manager>;

/// The lookup, the statement run most: prepared once on each pooled connection, so
/// that the database neither parses nor plans it again.
///
/// Each holder's peer is read through its primary key (the subquery, which `OFFSET 0`
/// keeps from being merged into a join). Written as a plain join, the plan PostgreSQL
/// keeps for a prepared statement (its generic plan, from the sixth run on) expected a
/// few holders per name and chose a hash join that read every row of `peers` on every
/// lookup: 4.8k lookups/s at one client with 1,000 peers, against 13.9k/s this way
/// (pgbench, docs/PERFORMANCE.md), and slower with every peer added.
pub const LOOKUP: &str = "SELECT p.ip, p.port, f.size, f.root, f.complete FROM files f
     CROSS JOIN LATERAL (SELECT ip, port, id FROM peers WHERE peers.id = f.peer_id AND NOT gone OFFSET 0) p
     WHERE f.name = $1 ORDER BY f.complete DESC, p.id";

/// [`LOOKUP`] for several names at once (a batch of lookups, [`super::batch`]): each
/// holder's row comes with the place of its name in `$1`, counted from 1, and in that
/// order; a name's holders in the order [`LOOKUP`] gives them.
pub const LOOKUP_MANY: &str = "SELECT q.i, p.ip, p.port, f.size, f.root, f.complete
     FROM unnest($1::text[]) WITH ORDINALITY AS q(name, i)
     JOIN files f ON f.name = q.name
     CROSS JOIN LATERAL (SELECT ip, port, id FROM peers WHERE peers.id = f.peer_id AND NOT gone OFFSET 0) p
     ORDER BY q.i, f.complete DESC, p.id";

/// Threads that answer the lookups asked while others are being answered
/// ([`super::batch`]). One batch is answered by the database at a time (with two at
/// once, each was half as large, and p99 at 50 clients was 3.9-4.1 ms against
/// 2.8-3.3, docs/PERFORMANCE.md); a second thread starts the next batch while the
/// first writes its batch's replies.
const LOOKUP_THREADS: usize = 2;

/// The most lookups in one statement: a server's connections each wait for one
/// lookup, so a batch is as large as the number of clients asking at once, and more
/// than this (a few hundred kilobytes of names at most) are sent as another batch.
const LOOKUP_BATCH: usize = 128;

/// r2d2_postgres's manager, with each connection's prepared lookup beside it.
#[derive(Debug)]
struct Manager(PostgresConnectionManager<NoTls>);

/// A pooled connection: the client, and its prepared lookup once made.
struct Conn {
    client: postgres::Client,
    lookup: Option<postgres::Statement>,
    /// Its prepared [`LOOKUP_MANY`], once made.
    lookup_many: Option<postgres::Statement>,
    /// Left in a state no request may find it in (a listing's transaction that could
    /// not be ended): closed instead of given out again.
    broken: bool,
}

impl std::ops::Deref for Conn {
    type Target = postgres::Client;
    fn deref(&self) -> &postgres::Client {
        &self.client
    }
}

impl std::ops::DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut postgres::Client {
        &mut self.client
    }
}

impl r2d2::ManageConnection for Manager {
    type Connection = Conn;
    type Error = postgres::Error;

    /// A new connection that commits without waiting for the write-ahead log to reach
    /// the disk: the index is state that peers rebuild by registering again, so a
    /// database crash may lose its last few milliseconds of changes, and in return a
    /// change's transaction (and the per-address lock held to its end) is not a disk
    /// flush long. Without JIT compilation: every statement here is short, and a
    /// listing's estimated cost made PostgreSQL compile it, 100-200 ms before its first
    /// row.
    fn connect(&self) -> Result<Conn, postgres::Error> {
        let mut client = self.0.connect()?;
        configure(&mut client, STATEMENT_TIMEOUT)?;
        Ok(Conn { client, lookup: None, lookup_many: None, broken: false })
    }

    fn is_valid(&self, conn: &mut Conn) -> Result<(), postgres::Error> {
        self.0.is_valid(&mut conn.client)
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        conn.broken || self.0.has_broken(&mut conn.client)
    }
}

/// The registry in PostgreSQL. See the module docs.
pub struct Store {
    pool: Pool,
    /// This server's row in `servers`.
    server: AtomicI64,
    /// How this server is known in `servers` (its listening address).
    address: String,
    limits: Limits,
    lease: Duration,
    /// Disconnects whose removal failed, retried by the lease thread.
    pending: Mutex<Vec<SocketAddr>>,
    /// Listing pages being queried: at most half the pool, so that however many
    /// clients list at once, lookups and changes always find a connection.
    listing: Slots,
    /// The server's connections, shut down if this server's peers are removed while
    /// they are connected (see [`Store::renew`]).
    clients: std::sync::OnceLock<crate::net::Live>,
    /// PostgreSQL's sample of the names, for a listing's [`Plan`]: when it was last
    /// asked for, and what came.
    sample: Mutex<(Option<Instant>, Arc<Sample>)>,
    /// Lookups that wait at the same time, answered by one statement.
    lookups: Batcher<SharePath, Looked>,
}

/// How often a listing asks PostgreSQL for its sample of the names again
/// ([`Store::sample`]); ANALYZE, which makes it, runs after a tenth of the rows changed.
const SAMPLE_AGE: Duration = Duration::from_secs(60);

/// The statistics PostgreSQL keeps of the trigram index's lowercased names: its most
/// common ones and a histogram, up to 1,000 names (migration 3); and how many names it
/// last counted (-1 if it has not).
pub const SAMPLE: &str =
    "SELECT coalesce(most_common_vals::text::text[], '{}'), coalesce(most_common_freqs, '{}'),
            coalesce(histogram_bounds::text::text[], '{}'),
            coalesce((SELECT reltuples::float8 FROM pg_class WHERE oid = 'files'::regclass), -1)
     FROM pg_stats WHERE schemaname = current_schema() AND tablename = 'files_name_trgm'";

/// A count of places taken, at most `max`, waited for with a deadline, in turn: a
/// place given back goes to the one that has waited longest, never to one that came
/// after it. Without turns, a client listing without pause could take every freed
/// place before the waiters woke, and a listing behind it be refused after
/// [`LISTING_WAIT`] while places changed hands many times.
#[derive(Debug)]
struct Slots {
    state: Mutex<Turns>,
    freed: std::sync::Condvar,
    max: usize,
}

/// The places taken, and the tickets of those waiting, oldest first.
#[derive(Debug, Default)]
struct Turns {
    taken: usize,
    waiting: std::collections::VecDeque<u64>,
    next_ticket: u64,
}

impl Slots {
    fn new(max: usize) -> Slots {
        Slots { state: Mutex::default(), freed: std::sync::Condvar::new(), max: max.max(1) }
    }

    /// Takes a place, waiting in turn up to `wait` for one; `None` if none came free.
    fn take(&self, wait: Duration) -> Option<SlotGuard<'_>> {
        let deadline = Instant::now() + wait;
        let mut turns = lock(&self.state);
        let ticket = turns.next_ticket;
        turns.next_ticket += 1;
        turns.waiting.push_back(ticket);
        while !(turns.waiting.front() == Some(&ticket) && turns.taken < self.max) {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                turns.waiting.retain(|&t| t != ticket);
                // The next in line may be free to go now that this one is not ahead.
                self.freed.notify_all();
                return None;
            };
            turns = self.freed.wait_timeout(turns, left).unwrap_or_else(PoisonError::into_inner).0;
        }
        turns.waiting.pop_front();
        turns.taken += 1;
        // The next in line may take a place too, if one is left.
        self.freed.notify_all();
        Some(SlotGuard(self))
    }

    #[cfg(test)]
    fn waiting(&self) -> usize {
        lock(&self.state).waiting.len()
    }
}

/// A place taken in [`Slots`], given back when dropped.
struct SlotGuard<'a>(&'a Slots);

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        lock(&self.0.state).taken -= 1;
        // Every waiter looks: only the first in line may take it.
        self.0.freed.notify_all();
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("server", &self.server).field("address", &self.address).finish()
    }
}

/// A peer's row: id, port, complete files.
type PeerRow = (i64, u16, usize);

impl Store {
    /// Connects to the database at `url`, applies the migrations it lacks, takes a
    /// row for this server (known as `address`) and starts the thread that renews its
    /// lease and removes the peers of servers whose lease has expired.
    pub fn open(
        url: &str,
        pool: u32,
        lease: Duration,
        limits: Limits,
        address: String,
    ) -> anyhow::Result<Arc<Store>> {
        if limits.name_len > MAX_STORED_NAME {
            anyhow::bail!(
                "--max-name-len {} cannot be used with --store: PostgreSQL's btree index holds names of at most {MAX_STORED_NAME} bytes",
                limits.name_len
            );
        }
        let mut config: postgres::Config =
            url.parse().with_context(|| format!("invalid --store URL {url:?}"))?;
        // Unless the URL says otherwise (libpq's `tcp_user_timeout`, `keepalives_idle`).
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(DEAD_HOST);
        }
        if config.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
            config.keepalives_idle(DEAD_HOST).keepalives_interval(DEAD_HOST / 5);
        }
        // The pool would say only "timed out waiting for connection: db error" after its
        // wait: one connection first tells a wrong URL at once, with the database's
        // reason (`3D000: database "nodb" does not exist`).
        let mut first = config.clone();
        if first.get_connect_timeout().is_none() {
            first.connect_timeout(POOL_WAIT);
        }
        if let Err(e) = first.connect(NoTls) {
            anyhow::bail!("cannot connect to the index store {}: {}", redacted(url), Why(&e));
        }
        let manager = Manager(PostgresConnectionManager::new(config.clone(), NoTls));
        let pool = r2d2::Pool::builder()
            .max_size(pool.max(1))
            .min_idle(Some(1))
            .connection_timeout(POOL_WAIT)
            // No query before each use: a connection the database dropped is found so
            // when used, and its request goes on another (`Store::client_for`).
            .test_on_check_out(false)
            .error_handler(Box::new(ConnectFailures))
            .build(manager)
            .with_context(|| format!("cannot connect to the index store {}", redacted(url)))?;
        let places = pool.max_size();
        let mut client = pool.get().context("cannot connect to the index store")?;
        // Names are Unicode. In a database of another encoding, a name it cannot hold
        // fails its statement: a registration, and every lookup asked at the same time
        // (one statement for all).
        let encoding: String = client
            .query_one("SHOW server_encoding", &[])
            .context("cannot read the index store's encoding")?
            .get(0);
        if encoding != "UTF8" {
            anyhow::bail!(
                "the index store's database is in {}, and names are Unicode: --store needs a database in UTF8 (createdb --encoding UTF8 --template template0)",
                Clip(&encoding)
            );
        }
        migrate(&mut client).context("cannot apply the index store's migrations")?;
        let store = Arc::new(Store {
            pool,
            server: AtomicI64::new(0),
            address,
            limits,
            lease,
            pending: Mutex::default(),
            listing: Slots::new(places as usize / 2),
            clients: std::sync::OnceLock::new(),
            sample: Mutex::default(),
            lookups: Batcher::new(LOOKUP_BATCH),
        });
        store.take_server_row(&mut client).context("cannot register this server in the index store")?;
        drop(client);
        let renewing = Arc::clone(&store);
        thread::Builder::new()
            .name("lease".into())
            .spawn(move || renewing.keep_lease(config))
            .context("cannot start the lease thread")?;
        for _ in 0..LOOKUP_THREADS {
            let serving = Arc::clone(&store);
            thread::Builder::new()
                .name("lookups".into())
                .spawn(move || {
                    let failed = || Err(RegistryError::StoreUnavailable);
                    serving.lookups.serve(|names| serving.lookup_many(names), failed)
                })
                .context("cannot start the lookups' threads")?;
        }
        Ok(store)
    }

    /// [`super::Index::on_forgotten`].
    pub fn on_forgotten(&self, live: crate::net::Live) {
        let _ = self.clients.set(live);
    }

    /// This server's id in `servers`.
    pub fn server_id(&self) -> i64 {
        self.server.load(Ordering::SeqCst)
    }

    fn take_server_row(&self, client: &mut postgres::Client) -> Result<(), postgres::Error> {
        let row = client.query_one(
            "INSERT INTO servers (address, lease_until) VALUES ($1, now() + $2 * interval '1 millisecond') RETURNING id",
            &[&self.address, &(self.lease.as_millis() as f64)],
        )?;
        self.server.store(row.get(0), Ordering::SeqCst);
        log::info!("index store: this server is {} (lease {} s)", self.server_id(), self.lease.as_secs_f64());
        Ok(())
    }

    /// Every third of the lease: renews this server's lease, deletes the servers whose
    /// lease has expired (and so their peers), and retries failed removals. Runs for
    /// as long as the process.
    ///
    /// The thread has a connection of its own (`config`, connected again when lost),
    /// not one from the pool: the pool's connections can all be taken for longer than
    /// a lease, by requests waiting on a lock (a migration rebuilding an index, a bulk
    /// load) or by a crowd of clients, and a lease thread waiting for one would let
    /// the other servers take this one for dead and remove every peer it serves. Every
    /// statement on it may run for a sixth of the lease at most ([`Store::renew`]).
    ///
    /// After the database was out of reach, no server may have renewed: this one
    /// deletes no other until it has renewed its own for a whole lease again, by when
    /// every living server has too. (Otherwise the first server back would delete all
    /// the others, and every peer with them.)
    fn keep_lease(&self, mut config: postgres::Config) {
        let turn = self.lease / 6;
        config.connect_timeout(turn.max(Duration::from_secs(1)));
        let patience = config.get_tcp_user_timeout().copied().unwrap_or(DEAD_HOST);
        config.tcp_user_timeout(turn.max(Duration::from_secs(1)).min(patience));
        let mut own: Option<postgres::Client> = None;
        let mut may_reap = Instant::now() + self.lease;
        loop {
            thread::sleep(self.lease / 3); // the lease's own rhythm, not a wait for an event
            // A connection the database ended while idle (a restart, an administrator)
            // is found so only when used: a new one renews at once, in the same turn,
            // rather than a turn later (two turns without renewing, of the three a
            // lease lasts).
            for fresh in [false, true] {
                if own.as_ref().is_none_or(postgres::Client::is_closed) {
                    own = lease_connection(&config, turn)
                        .inspect_err(|e| {
                            log::warn!("index store: the lease thread cannot connect: {}", Why(e))
                        })
                        .ok();
                }
                let Some(client) = own.as_mut() else {
                    may_reap = Instant::now() + self.lease;
                    break;
                };
                match self.renew(client, Instant::now() >= may_reap) {
                    Ok(()) => break,
                    Err(_) if !fresh && connection_gone(client) => {
                        // The database may have restarted: the others may not have
                        // renewed meanwhile, as above.
                        own = None;
                        may_reap = Instant::now() + self.lease;
                    }
                    Err(e) => {
                        log::warn!("index store: cannot renew this server's lease: {}", Why(&e));
                        may_reap = Instant::now() + self.lease;
                        break;
                    }
                }
            }
        }
    }

    /// Renews the lease on `client` and, if `reap`, deletes the servers whose lease
    /// has expired; then retries the removals that failed.
    fn renew(&self, client: &mut postgres::Client, reap: bool) -> Result<(), postgres::Error> {
        let lease = self.lease.as_millis() as f64;
        let renewed = client.execute(
            "UPDATE servers SET lease_until = now() + $2 * interval '1 millisecond'
             WHERE id = $1 AND lease_until <> '-infinity'",
            &[&self.server_id(), &lease],
        )?;
        if renewed == 0 {
            // Our lease ran out (this process was stopped, or the database out of
            // reach, for longer than it) and another server is removing our peers, or
            // has removed them with our row.
            // Their connections go on, but the index has forgotten them: they are shut
            // down once this server has a new row, and the peers connect and register
            // again (a connection made meanwhile is shut down too, and does the same).
            self.take_server_row(client)?;
            let dropped = self.clients.get().map_or(0, crate::net::Live::shut_down_all);
            log::error!(
                "index store: this server's lease expired and its peers were removed from the index; closed its {} so that they register again",
                crate::text::count(dropped as u64, "connection")
            );
        }
        // The rest of the turn works for a sixth of the lease at most (each statement
        // too, see `lease_connection`): one that waits on a lock must not hold this
        // thread past the next renewal. What is not done is tried again at the next
        // turn; the lease itself was renewed.
        let by = Instant::now() + self.lease / 6;
        if reap && let Err(e) = self.reap(client, by) {
            log::warn!("index store: cannot remove the peers of servers whose lease expired: {}", Why(&e));
        }
        let pending = std::mem::take(&mut *lock(&self.pending));
        for conn in pending {
            if Instant::now() >= by || self.remove_with(client, conn).is_err() {
                lock(&self.pending).push(conn);
            }
        }
        Ok(())
    }

    /// Removes the servers whose lease has expired, with their peers, working until `by`
    /// at most; what is left then is removed at the next turn. Those servers are first
    /// marked as gone (`lease_until = '-infinity'`, in one statement that a renewal
    /// made meanwhile wins), so that none of them renews any more: one that was only
    /// stopped finds itself gone and takes a new row. Their peers' files are then
    /// deleted [`REAP_BATCH`] rows a statement, each peer's row once its files are gone,
    /// and the servers' rows last.
    ///
    /// One statement for it all, as before, held this thread for as long as a dead
    /// server's files took to delete: longer than its own lease, so that the other
    /// servers could remove this one too, with every peer it served.
    fn reap(&self, client: &mut postgres::Client, by: Instant) -> Result<(), postgres::Error> {
        let marked = client.execute(
            "UPDATE servers SET lease_until = '-infinity' WHERE lease_until < now() AND lease_until <> '-infinity'",
            &[],
        )?;
        if marked > 0 {
            log::info!("index store: {marked} server(s) let their lease expire; removing their peers");
        }
        // Their peers leave lookups and the limits now (this server's or another's
        // marking, whichever came first), not when their last files are deleted.
        client.execute(
            "UPDATE peers SET gone = true, files = 0
             WHERE NOT gone AND server_id IN (SELECT id FROM servers WHERE lease_until = '-infinity')",
            &[],
        )?;
        let gone = client.query(
            "SELECT peers.id FROM peers JOIN servers ON servers.id = peers.server_id
             WHERE servers.lease_until = '-infinity'",
            &[],
        )?;
        for peer in gone.iter().map(|r| r.get::<_, i64>(0)) {
            // Rows another server is deleting are skipped, not waited for; the peer's
            // row then waits for them, and takes whatever is left with it.
            loop {
                if Instant::now() >= by {
                    return Ok(());
                }
                let deleted = client.execute(
                    "DELETE FROM files WHERE ctid = ANY(ARRAY(
                         SELECT ctid FROM files WHERE peer_id = $1 LIMIT $2 FOR UPDATE SKIP LOCKED))",
                    &[&peer, &REAP_BATCH],
                )?;
                if deleted == 0 {
                    break;
                }
            }
            client.execute("DELETE FROM peers WHERE id = $1", &[&peer])?;
        }
        let reaped = client.execute("DELETE FROM servers WHERE lease_until = '-infinity'", &[])?;
        if reaped > 0 {
            log::info!("index store: removed {reaped} server(s) whose lease expired, with their peers");
        }
        Ok(())
    }

    /// A place among the listings being read (half the pool), waited for up to
    /// [`LISTING_WAIT`].
    fn listing_place(&self) -> Result<SlotGuard<'_>, RegistryError> {
        self.listing.take(LISTING_WAIT).ok_or_else(|| {
            log::warn!("index store: every listing place stayed taken for {} s", LISTING_WAIT.as_secs());
            RegistryError::StoreUnavailable
        })
    }

    /// PostgreSQL's sample of the names, asked for again when [`SAMPLE_AGE`] old (by one
    /// listing; the others meanwhile use the one before). Empty until ANALYZE has run,
    /// or until it can be read: listings then ask the trigram index for whole patterns.
    fn sample(&self, client: &mut Client) -> Arc<Sample> {
        {
            let mut cached = lock(&self.sample);
            if cached.0.is_some_and(|at| at.elapsed() < SAMPLE_AGE) {
                return Arc::clone(&cached.1);
            }
            cached.0 = Some(Instant::now());
        }
        let fresh = match client.query_opt(SAMPLE, &[]) {
            Ok(Some(row)) => Sample::from_statistics(row.get(0), row.get(1), row.get(2), row.get(3)),
            Ok(None) => Sample::default(),
            Err(e) => {
                // The one before, until a listing reads them again.
                log::debug!("index store: cannot read the names' statistics: {}", Why(&e));
                let mut cached = lock(&self.sample);
                cached.0 = None;
                return Arc::clone(&cached.1);
            }
        };
        log::debug!("index store: read a sample of {} names", fresh.len());
        let fresh = Arc::new(fresh);
        lock(&self.sample).1 = Arc::clone(&fresh);
        fresh
    }

    /// How a listing finds the names after `after` that contain `pattern`: all of them
    /// ([`Plan::new`]), or a page of at most `page` ([`Plan::for_page`]).
    fn plan(&self, client: &mut Client, pattern: &Pattern, after: &str, page: Option<usize>) -> Plan {
        let sample = self.sample(client);
        let plan = match page {
            Some(page) => Plan::for_page(pattern.text(), after, &sample, page),
            None => Plan::new(pattern.text(), after, &sample),
        };
        log::debug!("index store: listing plan for {} after {}: {plan:?}", Clip(pattern.text()), Clip(after));
        plan
    }

    fn client(&self) -> Result<Client, RegistryError> {
        self.pool.get().map_err(|e| {
            log::warn!("index store unavailable: {e}");
            RegistryError::StoreUnavailable
        })
    }

    /// What `work` gave on a pooled connection, with the connection. The database may
    /// have ended a connection while it sat in the pool (a restart, an administrator's
    /// `pg_terminate_backend`), which shows only when it is used; `work` then runs again
    /// on another, up to once for each connection the pool may hold, so that a
    /// database back from an outage costs no request an error. Running it again is
    /// safe: a transaction whose connection closes is rolled back, and a change that
    /// did commit stores the same rows when made twice (only an `Unregister` whose
    /// answer was lost would hear that its peer was not registered).
    fn client_for<T>(
        &self,
        mut work: impl FnMut(&mut Client) -> Result<T, RegistryError>,
    ) -> Result<(Client, T), RegistryError> {
        let mut closed = 0;
        loop {
            let mut client = self.client()?;
            match work(&mut client) {
                Err(RegistryError::StoreUnavailable)
                    if closed < self.pool.max_size() && lost(&mut client) =>
                {
                    closed += 1;
                    log::info!(
                        "index store: the database had closed a pooled connection; the request goes to another"
                    );
                }
                done => return done.map(|done| (client, done)),
            }
        }
    }

    /// What `work` gave on a pooled connection: [`Store::client_for`].
    fn with_client<T>(
        &self,
        work: impl FnMut(&mut Client) -> Result<T, RegistryError>,
    ) -> Result<T, RegistryError> {
        self.client_for(work).map(|(_, done)| done)
    }

    /// The row of the peer on `conn` at this server, if registered, locked until the
    /// end of the transaction `tx` (a change of it waits for another's to end).
    fn peer(
        &self,
        tx: &mut postgres::Transaction<'_>,
        conn: SocketAddr,
    ) -> Result<Option<PeerRow>, RegistryError> {
        self.peer_row(tx, conn, " FOR UPDATE")
    }

    /// The row of the peer on `conn` at this server, if registered, as it is now.
    fn peer_now(&self, client: &mut Client, conn: SocketAddr) -> Result<Option<PeerRow>, RegistryError> {
        self.peer_row(&mut ***client, conn, "")
    }

    fn peer_row(
        &self,
        client: &mut impl postgres::GenericClient,
        conn: SocketAddr,
        lock: &str,
    ) -> Result<Option<PeerRow>, RegistryError> {
        let rows = run(
            client,
            &format!("SELECT id, port, files FROM peers WHERE server_id = $1 AND conn = $2{lock}"),
            &[(&self.server_id(), Type::INT8), (&conn.to_string(), Type::TEXT)],
        )?;
        Ok(rows.first().map(|r| (r.get(0), r.get::<_, i32>(1) as u16, r.get::<_, i64>(2) as usize)))
    }

    /// Checks that the peer on `conn` may go from `before` to `after` complete files:
    /// the limits per peer, per address (over every server) and in all. `counted`: the
    /// peer's row already says `after` (the end of a change's transaction), else
    /// `before` (a check before a large request is even read).
    fn check_room(
        &self,
        tx: &mut impl postgres::GenericClient,
        conn: SocketAddr,
        (before, after): (usize, usize),
        counted: bool,
    ) -> Result<(), RegistryError> {
        let limits = &self.limits;
        if after > limits.files_per_peer {
            return Err(RegistryError::TooManyFiles { count: after, max: limits.files_per_peer });
        }
        if after <= before {
            return Ok(());
        }
        // The changes that grow a count are checked one at a time, on every server, at
        // the end of their transactions (the lock is held only for the sums and the
        // commit), so that the limits per address and in all hold exactly against any
        // number of connections from any number of addresses. (A lock for each address
        // let the registrations of different addresses at the same moment pass the
        // limit in all, one each at most.)
        let key = ip_key(conn.ip());
        if counted {
            run(tx, TAKE_GROWTH_LOCK, &[(&GROWTH_LOCK, Type::INT4)])?;
        }
        // The address's peers through their index; all files as the living servers'
        // counts (a dead server's peers leave the limits once it is marked gone).
        let sums = run(
            tx,
            "SELECT (SELECT coalesce(sum(files), 0) FROM peers WHERE ip_key = $1)::bigint,
                    (SELECT coalesce(sum(c.files), 0) FROM server_counts c JOIN servers s ON s.id = c.server_id
                     WHERE s.lease_until <> '-infinity')::bigint",
            &[(&key, Type::TEXT)],
        )?;
        let sums = &sums[0];
        let (from_ip, total) = (sums.get::<_, i64>(0) as usize, sums.get::<_, i64>(1) as usize);
        let counted = if counted { after } else { before };
        let from_ip = from_ip.saturating_sub(counted) + after;
        if from_ip > limits.files_per_ip {
            return Err(RegistryError::TooManyFromAddress { count: from_ip, max: limits.files_per_ip });
        }
        if total.saturating_sub(counted) + after > limits.files_total {
            return Err(RegistryError::IndexFull { max: limits.files_total });
        }
        Ok(())
    }

    /// [`registry::Registry::register`].
    pub fn register(
        &self,
        conn: SocketAddr,
        port: u16,
        files: Vec<FileInfo>,
    ) -> Result<usize, RegistryError> {
        registry::check_registration(&self.limits, port, &files)?;
        self.with_client(|client| {
            let mut tx = client.transaction().map_err(unavailable)?;
            let peer = self.peer(&mut tx, conn)?;
            let (before, count) = (peer.map_or(0, |p| p.2), files.len());
            let id = match peer {
                Some((id, _, _)) => {
                    // Downloads running go on through a new registration: their partials stay.
                    run(
                        &mut tx,
                        "WITH gone AS (DELETE FROM files WHERE peer_id = $1 AND complete)
                         UPDATE peers SET port = $2 WHERE id = $1",
                        &[(&id, Type::INT8), (&i32::from(port), Type::INT4)],
                    )?;
                    id
                }
                None => {
                    let ip = conn.ip().to_canonical();
                    let (conn, key) = (conn.to_string(), ip_key(ip));
                    run(
                        &mut tx,
                        "INSERT INTO peers (server_id, conn, ip, ip_key, port) VALUES ($1, $2, $3, $4, $5) RETURNING id",
                        &[
                            (&self.server_id(), Type::INT8),
                            (&conn, Type::TEXT),
                            (&ip.to_string(), Type::TEXT),
                            (&key, Type::TEXT),
                            (&i32::from(port), Type::INT4),
                        ],
                    )?[0]
                        .get(0)
                }
            };
            insert(&mut tx, id, &files, true)?;
            set_count(&mut tx, id, (before, count))?;
            // Refused: the transaction is rolled back, and nothing is half-stored.
            self.check_room(&mut tx, conn, (before, count), true)?;
            tx.commit().map_err(unavailable)?;
            Ok(count)
        })
    }

    /// [`registry::Registry::update`].
    pub fn update(&self, conn: SocketAddr, files: Vec<FileInfo>) -> Result<usize, RegistryError> {
        let port =
            self.with_client(|client| self.peer_now(client, conn))?.ok_or(RegistryError::NotRegistered)?.1;
        self.register(conn, port, files)
    }

    /// [`registry::Registry::add`].
    pub fn add(&self, conn: SocketAddr, new: Vec<FileInfo>) -> Result<usize, RegistryError> {
        self.with_client(|client| {
            let mut tx = client.transaction().map_err(unavailable)?;
            let (id, _, have) = self.peer(&mut tx, conn)?.ok_or(RegistryError::NotRegistered)?;
            registry::check_files(&self.limits, &new)?;
            let names: Vec<&str> = new.iter().map(|f| f.name.as_str()).collect();
            let known: i64 = run(
                &mut tx,
                "SELECT count(*) FROM files WHERE peer_id = $1 AND complete AND name = ANY($2)",
                &[(&id, Type::INT8), (&names, Type::TEXT_ARRAY)],
            )?[0]
                .get(0);
            let now = have + new.len() - known as usize;
            insert(&mut tx, id, &new, true)?;
            set_count(&mut tx, id, (have, now))?;
            self.check_room(&mut tx, conn, (have, now), true)?;
            tx.commit().map_err(unavailable)?;
            Ok(now)
        })
    }

    /// [`registry::Registry::delete`].
    pub fn delete(&self, conn: SocketAddr, names: &[SharePath]) -> Result<usize, RegistryError> {
        self.with_client(|client| {
            let mut tx = client.transaction().map_err(unavailable)?;
            let (id, _, have) = self.peer(&mut tx, conn)?.ok_or(RegistryError::NotRegistered)?;
            let names: Vec<&str> = names.iter().map(SharePath::as_str).collect();
            let gone: i64 = run(
                &mut tx,
                "WITH gone AS (DELETE FROM files WHERE peer_id = $1 AND name = ANY($2) RETURNING complete)
                 SELECT count(*) FILTER (WHERE complete) FROM gone",
                &[(&id, Type::INT8), (&names, Type::TEXT_ARRAY)],
            )?[0]
                .get(0);
            let now = have - gone as usize;
            set_count(&mut tx, id, (have, now))?;
            tx.commit().map_err(unavailable)?;
            Ok(now)
        })
    }

    /// [`registry::Registry::announce_partial`].
    pub fn announce_partial(&self, conn: SocketAddr, files: Vec<FileInfo>) -> Result<usize, RegistryError> {
        // More than a peer may have at all, as in memory: refused before any other work.
        if files.len() > registry::MAX_PARTIALS_PER_PEER {
            return Err(RegistryError::TooManyPartials { max: registry::MAX_PARTIALS_PER_PEER });
        }
        registry::check_files(&self.limits, &files)?;
        self.with_client(|client| {
            let mut tx = client.transaction().map_err(unavailable)?;
            let (id, _, have) = self.peer(&mut tx, conn)?.ok_or(RegistryError::NotRegistered)?;
            let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
            let rows = run(
                &mut tx,
                "SELECT name, complete FROM files WHERE peer_id = $1 AND name = ANY($2)",
                &[(&id, Type::INT8), (&names, Type::TEXT_ARRAY)],
            )?;
            let held: std::collections::HashMap<String, bool> =
                rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, bool>(1))).collect();
            // A name it shares whole is not a partial.
            let files: Vec<FileInfo> =
                files.iter().filter(|f| held.get(f.name.as_str()) != Some(&true)).cloned().collect();
            let new = files.iter().filter(|f| !held.contains_key(f.name.as_str())).count();
            let partials: i64 = run(
                &mut tx,
                "SELECT count(*) FROM files WHERE peer_id = $1 AND NOT complete",
                &[(&id, Type::INT8)],
            )?[0]
                .get(0);
            if partials as usize + new > MAX_PARTIALS_PER_PEER {
                return Err(RegistryError::TooManyPartials { max: MAX_PARTIALS_PER_PEER });
            }
            insert(&mut tx, id, &files, false)?;
            tx.commit().map_err(unavailable)?;
            Ok(have)
        })
    }

    /// [`registry::Registry::unregister`].
    pub fn unregister(&self, conn: SocketAddr) -> Result<(), RegistryError> {
        if self.remove(conn)? { Ok(()) } else { Err(RegistryError::NotRegistered) }
    }

    /// Removes the registration of the peer on `conn`, if any. Returns whether there was.
    pub fn remove(&self, conn: SocketAddr) -> Result<bool, RegistryError> {
        self.with_client(|client| self.remove_with(client, conn))
    }

    /// [`Store::remove`] on `client`: the peer's files first, then its row, with its
    /// server's count, in a statement of its own. The server's count is thus held
    /// locked only for that short statement, not while a peer's many files are
    /// deleted; meanwhile the peer is found no more, and still counted.
    fn remove_with(&self, client: &mut postgres::Client, conn: SocketAddr) -> Result<bool, RegistryError> {
        let params: [(&(dyn ToSql + Sync), Type); 2] =
            [(&self.server_id(), Type::INT8), (&conn.to_string(), Type::TEXT)];
        run(
            client,
            "DELETE FROM files WHERE peer_id = (SELECT id FROM peers WHERE server_id = $1 AND conn = $2)",
            &params,
        )?;
        let removed = run(
            client,
            "WITH gone AS (DELETE FROM peers WHERE server_id = $1 AND conn = $2 RETURNING server_id, files),
                  counted AS (UPDATE server_counts SET files = server_counts.files - gone.files
                              FROM gone WHERE server_counts.server_id = gone.server_id)
             SELECT 1 FROM gone",
            &params,
        )?;
        Ok(!removed.is_empty())
    }

    /// A disconnect: removes the registration, or, if the store cannot be reached,
    /// leaves it to the lease thread to remove later. Returns whether there was one.
    pub fn disconnected(&self, conn: SocketAddr) -> bool {
        match self.remove(conn) {
            Ok(removed) => removed,
            Err(_) => {
                lock(&self.pending).push(conn);
                false
            }
        }
    }

    /// [`registry::Registry::room_for`].
    pub fn room_for(&self, conn: SocketAddr, count: usize) -> Result<(), RegistryError> {
        self.with_client(|client| {
            let before = self.peer_now(client, conn)?.map_or(0, |p| p.2);
            self.check_room(&mut ***client, conn, (before, count), false)
        })
    }

    /// [`registry::Registry::lookup`]: the peers sharing `name` whole, then those
    /// holding part of it.
    ///
    /// `Some` answer at once if no other lookup is being answered; otherwise `None`,
    /// and `deliver` gets the answer from a lookups' thread, answered with the lookups
    /// that came meanwhile ([`super::batch`]).
    pub fn lookup(&self, name: &SharePath, deliver: Deliver<Looked>) -> Option<Looked> {
        self.lookups.ask(
            name.clone(),
            |names| self.lookup_many(names),
            || Err(RegistryError::StoreUnavailable),
            deliver,
        )
    }

    /// The holders of each of `names`, in their order: one statement on one pooled
    /// connection, [`LOOKUP`] for one name and [`LOOKUP_MANY`] for more. A lone lookup
    /// (one client) keeps the plain statement: pgbench at one client gave 11.4k/s for
    /// it, 10.6k/s for [`LOOKUP_MANY`] of one name.
    fn lookup_many(&self, names: &[SharePath]) -> Vec<Looked> {
        let found = self.with_client(|client| {
            let conn = &mut **client;
            let (prepared, statement, kind) = match names {
                [_] => (&mut conn.lookup, LOOKUP, Type::TEXT),
                _ => (&mut conn.lookup_many, LOOKUP_MANY, Type::TEXT_ARRAY),
            };
            let statement = match prepared {
                Some(prepared) => prepared.clone(),
                None => prepared
                    .insert(conn.client.prepare_typed(statement, &[kind]).map_err(unavailable)?)
                    .clone(),
            };
            let mut found = vec![Vec::new(); names.len()];
            if let [name] = names {
                let rows = conn.client.query(&statement, &[&name.as_str()]).map_err(unavailable)?;
                found[0] = rows.iter().filter_map(|r| hit(r, 0)).collect();
            } else {
                let names: Vec<&str> = names.iter().map(SharePath::as_str).collect();
                for r in conn.client.query(&statement, &[&names]).map_err(unavailable)? {
                    let place = usize::try_from(r.get::<_, i64>(0) - 1).ok();
                    if let (Some(hits), Some(hit)) = (place.and_then(|i| found.get_mut(i)), hit(&r, 1)) {
                        hits.push(hit);
                    }
                }
            }
            Ok(found)
        });
        let answers = match found {
            Ok(found) => found.into_iter().map(Ok).collect(),
            Err(e) => names.iter().map(|_| Err(e.clone())).collect(),
        };
        if names.len() > 1 {
            log::debug!("index store: {} lookups in one statement", names.len());
        }
        answers
    }

    /// The rest of a listing, after the name `after`: the names that contain `pattern`
    /// (ASCII case ignored), but not `asker`'s own, as one query in one read-only
    /// transaction, read a page at a time through a cursor. The whole rest costs one
    /// search of the index, where pages by keyset ([`Store::list_page`]) search again
    /// for the matches after each page: 121,046 names out of 10M took 43 s that way
    /// (docs/PERFORMANCE.md). Its plan is made for all its rows, not its first ones
    /// (`cursor_tuple_fraction`): the first page, read by keyset, is the one a user
    /// waits for. The cursor holds a pooled connection and a listing place until it is
    /// dropped.
    pub fn open_listing(
        &self,
        asker: SocketAddr,
        pattern: &Pattern,
        after: &SharePath,
    ) -> Result<Cursor<'_>, RegistryError> {
        let place = self.listing_place()?;
        let after = after.as_str();
        let (client, plan) = self.client_for(|client| {
            // Made before the transaction, which a failed read of the sample would abort.
            // Planned for all its rows: whether to walk the names is PostgreSQL's choice.
            let plan = self.plan(client, pattern, after, None);
            client
                .batch_execute("BEGIN READ ONLY; SET LOCAL cursor_tuple_fraction = 1")
                .map_err(unavailable)?;
            Ok(plan)
        })?;
        let mut cursor = Cursor { client, _place: place, held: Vec::new(), done: false };
        let like = contains(pattern);
        let (server, asker) = (self.server_id(), asker.to_string());
        let mut params: Vec<(&(dyn ToSql + Sync), Type)> =
            vec![(&after, Type::TEXT), (&like, Type::TEXT), (&server, Type::INT8), (&asker, Type::TEXT)];
        let matching = matching(&plan, "f.name", &mut params);
        let me = me(3, 4);
        run(
            &mut **cursor.client,
            &format!(
                "DECLARE peerdex_listing NO SCROLL CURSOR FOR
                 WITH {me}
                 SELECT f.name, f.size, f.root,
                        count(*) FILTER (WHERE f.complete), count(*) FILTER (WHERE NOT f.complete)
                 FROM files f, me
                 WHERE f.name > $1 AND {matching} AND f.peer_id <> me.id AND f.peer_id <> ALL(me.gone)
                 GROUP BY f.name, f.size, f.root
                 HAVING count(*) FILTER (WHERE f.complete) > 0
                 ORDER BY f.name, f.size, f.root"
            ),
            &params,
        )?;
        Ok(cursor)
    }

    /// [`registry::Registry::list_page`]: a page of at most `budget.names` names that
    /// contain the pattern (ASCII case ignored, through the trigram index), after
    /// `after`, each name's contents one entry, in name order. A listing's first page
    /// (no `after`) walks a bounded stretch of the names unless its plan says not to
    /// ([`Plan::first_walk`]): [`FIRST_WALK`] rows, then four times as many each step
    /// while it finds no match. If it is not full, its `next` is the last name walked,
    /// matched or not.
    pub fn list_page(
        &self,
        asker: SocketAddr,
        pattern: &Pattern,
        after: Option<&SharePath>,
        budget: PageBudget,
    ) -> Result<ListPage, RegistryError> {
        if pattern.matches_nothing() {
            return Ok(ListPage::default());
        }
        let _place = self.listing_place()?;
        self.with_client(|client| {
            let asker = asker.to_string();
            let names = budget.names.max(1) as i64;
            let is_first = after.is_none();
            let after = after.map_or("", SharePath::as_str);
            let plan = self.plan(client, pattern, after, Some(budget.names));
            let server = self.server_id();
            let mut page =
                Page { client, asker: &asker, like: contains(pattern), names, plan: &plan, server };
            if !is_first || plan.first_walk == 0 {
                return page.read(after);
            }
            // The first page walks a bounded stretch of the names, up to `upto` (to their
            // end if fewer follow), longer while it finds nothing: see [`Plan::first_walk`].
            let what = Clip(pattern.text());
            let mut from = after.to_owned();
            let (mut walked, mut stretch) = (0, FIRST_WALK.min(plan.first_walk));
            loop {
                let end =
                    run(&mut ***page.client, WALK_END, &[(&from, Type::TEXT), (&(stretch - 1), Type::INT8)])?;
                let upto = match end.first().map(|r| SharePath::parse(r.get(0))) {
                    None => None,
                    Some(Ok(name)) => Some(name),
                    // A name this server would not take cannot be where the rest begins:
                    // the page is read as the plan has it.
                    Some(Err(_)) => return page.read(&from),
                };
                match &upto {
                    None => log::debug!("index store: the first page of {what} walks to the names' end"),
                    Some(name) => {
                        log::debug!("index store: the first page of {what} walks to {}", Clip(name.as_str()))
                    }
                }
                let read = page.walk(&from, upto.as_ref())?;
                walked += stretch;
                let Some(upto) = upto.filter(|_| read.entries.is_empty() && walked < plan.first_walk) else {
                    return Ok(read);
                };
                from = upto.as_str().to_owned();
                stretch = (stretch * 4).min(plan.first_walk - walked);
            }
        })
    }
}

/// One page of a listing being read: see [`Store::list_page`].
struct Page<'a> {
    client: &'a mut Client,
    asker: &'a str,
    /// The LIKE pattern of the names that contain the pattern ([`contains`]).
    like: String,
    names: i64,
    plan: &'a Plan,
    /// This server's row.
    server: i64,
}

impl Page<'_> {
    /// The page after `from` as the plan has it.
    fn read(&mut self, from: &str) -> Result<ListPage, RegistryError> {
        self.query(from, None, self.plan.walk)
    }

    /// The page after `from`, up to `upto` (their end if `None`), by walking the names
    /// in order. Not full, its `next` is `upto`.
    fn walk(&mut self, from: &str, upto: Option<&SharePath>) -> Result<ListPage, RegistryError> {
        let page = self.query(from, upto, true)?;
        Ok(match page.next {
            Some(_) => page,
            None => ListPage { next: upto.cloned(), ..page },
        })
    }

    /// The page after `from` (and up to `upto`), by walking the names in order if
    /// `walk`. `next` is the page's last name if it is full.
    fn query(&mut self, from: &str, upto: Option<&SharePath>, walk: bool) -> Result<ListPage, RegistryError> {
        // A fence (`OFFSET 0`) that keeps the page's order and limit out of the query
        // that finds the matches, so that it is planned for all of them: through the
        // trigram index, not by walking the names in order.
        let fence = if self.plan.through_index && !walk { "OFFSET 0" } else { "" };
        let server = self.server;
        let mut params: Vec<(&(dyn ToSql + Sync), Type)> = vec![
            (&from, Type::TEXT),
            (&self.like, Type::TEXT),
            (&server, Type::INT8),
            (&self.names, Type::INT8),
            (&self.asker, Type::TEXT),
        ];
        let upto = upto.map(SharePath::as_str);
        let mut matching = matching(self.plan, "name", &mut params);
        if let Some(upto) = &upto {
            params.push((upto, Type::TEXT));
            matching = format!("{matching} AND name <= ${}", params.len());
        }
        let me = me(3, 5);
        // The asker's own files are left out (0: it is not registered here).
        let sql = format!(
            "WITH {me},
                 page AS (
                     SELECT DISTINCT name FROM (
                         SELECT name FROM files, me
                         WHERE complete AND name > $1 AND {matching} AND peer_id <> me.id
                             AND peer_id <> ALL(me.gone) {fence}) m
                     ORDER BY name LIMIT $4)
                 SELECT f.name, f.size, f.root,
                        count(*) FILTER (WHERE f.complete), count(*) FILTER (WHERE NOT f.complete),
                        (SELECT count(*) FROM page)
                 FROM files f JOIN page USING (name), me
                 WHERE f.peer_id <> me.id AND f.peer_id <> ALL(me.gone)
                 GROUP BY f.name, f.size, f.root
                 HAVING count(*) FILTER (WHERE f.complete) > 0
                 ORDER BY f.name, f.size, f.root"
        );
        let rows = match walk {
            // The walk and nothing else, whatever PostgreSQL estimates from the same
            // statistics (see plan.rs): no bitmap of the trigram index's matches, and
            // no scan of the whole table to sort. For this transaction only.
            true => {
                let mut tx = self.client.build_transaction().read_only(true).start().map_err(unavailable)?;
                tx.batch_execute("SET LOCAL enable_bitmapscan = off; SET LOCAL enable_seqscan = off")
                    .map_err(unavailable)?;
                let rows = run(&mut tx, &sql, &params)?;
                tx.commit().map_err(unavailable)?;
                rows
            }
            false => run(&mut ***self.client, &sql, &params)?,
        };
        let full = rows.first().is_some_and(|r| r.get::<_, i64>(5) >= self.names);
        let entries: Vec<ListEntry> = rows.iter().filter_map(list_entry).collect();
        let next = if full { entries.last().map(|e| e.name.clone()) } else { None };
        Ok(ListPage { entries, next })
    }
}

/// Rows (a name's holder each) that a listing's first page walks in name order first,
/// testing each, unless its plan insists on the walk ([`Plan::for_page`]: the sample
/// shows the pattern common and spread, and the walk sure to be short) or the sample's
/// matches surely all sort far from the start (the walk would find none). If it finds
/// nothing, it walks on, four times as many rows each step, up to [`Plan::first_walk`].
/// The listing's rest, from the last name walked, is then read through the cursor as
/// its plan has it for all its rows: through the trigram index for a rare pattern.
///
/// Over 10M names, reading every match of a word in 0.12% of them through the index
/// to list its first 32 took 0.13-0.8 s, and PostgreSQL, left to choose, walked to a
/// word in 0.015% for 0.24-1.1 s. This walk costs about 5 ms (0.4-0.6 µs a row to
/// find where it ends, 0.75 µs a row tested), finds a word in 0.12% of the names about
/// five times, and delays the first entry of a pattern it does not find by that much
/// (first entries 5-24 ms for the five words measured; with 8,192 rows, up to 34 ms
/// later, docs/PERFORMANCE.md).
pub const FIRST_WALK: i64 = 4_096;

/// The name of a listing's [`FIRST_WALK`]th row after `$1`, where its first page's walk
/// ends; no row if fewer follow.
const WALK_END: &str = "SELECT name FROM files WHERE name > $1 ORDER BY name OFFSET $2 LIMIT 1";

/// Entries fetched from a listing's cursor at a time: as many names as a page by keyset
/// holds ([`crate::index::server::LIST_PAGE`]).
const CURSOR_ROWS: usize = 1024;

/// A listing being read through a database cursor: see [`Store::open_listing`].
pub struct Cursor<'a> {
    client: Client,
    _place: SlotGuard<'a>,
    /// The entries of the last name fetched, sent with the next page: the next fetch
    /// may hold more of them, and a page ends with a whole name, so that a listing
    /// can go on by keyset after any page.
    held: Vec<ListEntry>,
    /// Every row has been fetched.
    done: bool,
}

impl Cursor<'_> {
    /// The next page: the entries of whole names, in name order, and `next` (the last
    /// name) unless the listing is complete.
    pub fn next_page(&mut self) -> Result<ListPage, RegistryError> {
        loop {
            let mut entries = std::mem::take(&mut self.held);
            if self.done {
                return Ok(ListPage { entries, next: None });
            }
            let rows = run(&mut **self.client, &format!("FETCH {CURSOR_ROWS} FROM peerdex_listing"), &[])?;
            self.done = rows.len() < CURSOR_ROWS;
            entries.extend(rows.iter().filter_map(list_entry));
            if self.done {
                return Ok(ListPage { entries, next: None });
            }
            let Some(last) = entries.last().map(|e| e.name.clone()) else { continue };
            let whole = entries.iter().rposition(|e| e.name != last).map_or(0, |i| i + 1);
            self.held = entries.split_off(whole);
            if let Some(next) = entries.last().map(|e| e.name.clone()) {
                return Ok(ListPage { entries, next: Some(next) });
            }
            // Every row fetched was the one name's: fetch on.
        }
    }
}

impl Drop for Cursor<'_> {
    /// Ends the transaction, which closes the cursor; a connection left inside it is
    /// closed rather than given out again.
    fn drop(&mut self) {
        if self.client.batch_execute("ROLLBACK").is_err() {
            self.client.broken = true;
        }
    }
}

/// A listing's entry from a row of (name, size, root, complete holders, partial
/// holders); `None` for a name or root this server would not have taken.
fn list_entry(r: &postgres::Row) -> Option<ListEntry> {
    let (Ok(name), Ok(root)) = (SharePath::parse(r.get(0)), Hash::try_from(r.get::<_, &[u8]>(2))) else {
        return None;
    };
    Some(ListEntry {
        name,
        size: r.get::<_, i64>(1) as u64,
        root,
        peers: r.get::<_, i64>(3) as u32,
        partial: r.get::<_, i64>(4) as u32,
    })
}

/// Inserts `files` for peer `id`, complete or partial, in one statement: a name it
/// already has gets the new size and root (a partial becomes complete; a complete
/// file never becomes partial).
fn insert(
    tx: &mut postgres::Transaction<'_>,
    id: i64,
    files: &[FileInfo],
    complete: bool,
) -> Result<(), RegistryError> {
    if files.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
    let sizes: Vec<i64> = files.iter().map(|f| f.size as i64).collect();
    let roots: Vec<&[u8]> = files.iter().map(|f| &f.root[..]).collect();
    run(
        tx,
        "INSERT INTO files (peer_id, name, size, root, complete)
         SELECT $1, n, s, r, $5 FROM unnest($2::text[], $3::bigint[], $4::bytea[]) AS t (n, s, r)
         ON CONFLICT (peer_id, name) DO UPDATE
             SET size = EXCLUDED.size, root = EXCLUDED.root, complete = EXCLUDED.complete
             WHERE EXCLUDED.complete OR NOT files.complete",
        &[
            (&id, Type::INT8),
            (&names, Type::TEXT_ARRAY),
            (&sizes, Type::INT8_ARRAY),
            (&roots, Type::BYTEA_ARRAY),
            (&complete, Type::BOOL),
        ],
    )?;
    Ok(())
}

/// Sets the count of complete files in peer `id`'s row from `before` to `now`, and its
/// server's count with it. The server's row stays locked until the commit, so that
/// the server's changes of counts end one at a time: each caller makes it the last
/// change of its transaction, after the files' rows, to hold it for as short as it can.
fn set_count(
    tx: &mut postgres::Transaction<'_>,
    id: i64,
    (before, now): (usize, usize),
) -> Result<(), RegistryError> {
    run(
        tx,
        "WITH p AS (UPDATE peers SET files = $2 WHERE id = $1 RETURNING server_id)
         INSERT INTO server_counts (server_id, files) SELECT server_id, $3 FROM p
         ON CONFLICT (server_id) DO UPDATE SET files = server_counts.files + EXCLUDED.files",
        &[(&id, Type::INT8), (&(now as i64), Type::INT8), (&(now as i64 - before as i64), Type::INT8)],
    )?;
    Ok(())
}

/// One statement in one round trip to the database: its parameters' types are given
/// here, so nothing is prepared first (`query` would take three round trips: prepare,
/// execute, close; on this design's hot paths that is most of a lookup's time).
fn run(
    client: &mut impl postgres::GenericClient,
    sql: &str,
    params: &[(&(dyn ToSql + Sync), Type)],
) -> Result<Vec<postgres::Row>, RegistryError> {
    client.query_typed(sql, params).map_err(unavailable)
}

/// A listing's `me`: the asker's own peer (`id`, 0 if it is not registered here), whose
/// files it is not shown, and the peers marked `gone` with their dead server, whose
/// files are being deleted (an empty array nearly always, read through a partial
/// index). Each row is tested against both as one join filter; over 1M names, the
/// first page's plans for the benchmark's patterns were the same with `gone` as
/// without. `$server` and `$conn` are the parameters naming this server and the
/// asker's connection.
fn me(server: usize, conn: usize) -> String {
    format!(
        "me AS (SELECT coalesce((SELECT id FROM peers WHERE server_id = ${server} AND conn = ${conn}), 0) AS id,
                ARRAY(SELECT id FROM peers WHERE gone) AS gone)"
    )
}

/// The lease thread's own connection ([`Store::keep_lease`]), on which no statement
/// runs longer than `turn`: a renewal, or a removal waiting on a lock, gives up in time
/// for the next renewal.
fn lease_connection(config: &postgres::Config, turn: Duration) -> Result<postgres::Client, postgres::Error> {
    let mut client = config.connect(NoTls)?;
    configure(&mut client, turn)?;
    Ok(client)
}

/// A new connection's settings ([`Manager::connect`] says why): no statement runs
/// longer than `statement_timeout`, and a step of a statement may use
/// [`LISTING_WORK_MEM`], or more if the database's own setting allows more.
fn configure(client: &mut postgres::Client, statement_timeout: Duration) -> Result<(), postgres::Error> {
    client.batch_execute(&format!(
        "SET synchronous_commit = off; SET jit = off; SET statement_timeout = {};
         SELECT set_config('work_mem', greatest(pg_size_bytes(current_setting('work_mem')), {}) / 1024 || 'kB', false)",
        statement_timeout.as_millis().max(1),
        LISTING_WORK_MEM,
    ))
}

/// The memory (`work_mem`) a step of a statement may use at least, in bytes: for a
/// listing that reads many matches through the trigram index, the bitmap of the
/// table's pages that hold them, and the sort of their rows. PostgreSQL's default,
/// 4 MiB, holds a bitmap of about 65,000 pages exactly, and past that it keeps only
/// which pages hold matches (lossy), and tests every row of those pages again. Over
/// 10M names (155,000 pages), a word in a million of them then tested 6.4M rows
/// and took 8.2-8.6 s to read and sort; with 16-32 MiB, 4.5-5.7 s (docs/PERFORMANCE.md).
/// 32 MiB holds the bitmap of a table of about 500,000 pages (4 GiB), more than the
/// 20M files the index holds at most. It is set on every pooled connection: a step
/// of any statement may use this much (a listing's two, the bitmap and the sort), so
/// a server's statements may use a few times the pool's size in all, at most half of
/// them listings. Only a step that needs the memory takes it.
const LISTING_WORK_MEM: u64 = 32 << 20;

/// Applies the migrations the database lacks, recording each in `peerdex_migrations`.
fn migrate(client: &mut postgres::Client) -> Result<(), postgres::Error> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS peerdex_migrations (version integer PRIMARY KEY, applied timestamptz NOT NULL DEFAULT now())",
    )?;
    let done: i32 = tx.query_one("SELECT coalesce(max(version), 0) FROM peerdex_migrations", &[])?.get(0);
    if (done as usize) < MIGRATIONS.len() {
        find_trigrams(&mut tx)?;
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(done as usize) {
        let version = i as i32 + 1;
        tx.batch_execute(sql)?;
        tx.execute("INSERT INTO peerdex_migrations (version) VALUES ($1)", &[&version])?;
        log::info!("index store: applied migration {version}");
    }
    tx.commit()
}

/// Installs pg_trgm if the database lacks it, and puts the schema it is in at the end
/// of the search path for the rest of `tx`, so that the migrations find its operator
/// classes (`gin_trgm_ops`).
///
/// An extension lives in one schema of its database. Created plainly, it goes to the
/// first schema of the search path: the index's own, for a server given
/// `search_path=mine,public`. The servers of another schema in that database then did
/// not find its operator classes and could not start, and dropping the first schema
/// would have dropped the extension and with it every other schema's trigram index.
/// So it goes to `public` where this role may create there, as a database's owner
/// installs it by hand (docs/SCALING.md), and only otherwise to the index's schema.
fn find_trigrams(tx: &mut postgres::Transaction) -> Result<(), postgres::Error> {
    const FIND: &str = "SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'pg_trgm'";
    let schema: String = match tx.query_opt(FIND, &[])? {
        Some(row) => row.get(0),
        None => {
            let public: bool = tx
                .query_one(
                    "SELECT coalesce((SELECT has_schema_privilege(oid, 'CREATE') FROM pg_namespace WHERE nspname = 'public'), false)",
                    &[],
                )?
                .get(0);
            tx.batch_execute(if public {
                "CREATE EXTENSION IF NOT EXISTS pg_trgm SCHEMA public"
            } else {
                "CREATE EXTENSION IF NOT EXISTS pg_trgm"
            })?;
            tx.query_one(FIND, &[])?.get(0)
        }
    };
    log::info!("index store: pg_trgm is in schema {}", Clip(&schema));
    tx.execute(
        "SELECT set_config('search_path', concat_ws(', ', nullif(current_setting('search_path'), ''), $1::text), true)",
        &[&schema],
    )?;
    Ok(())
}

/// The condition that the lowercased `column` contains the pattern (parameter `$2`),
/// as `plan` has it: with pieces (added to `params` as the last parameter), the trigram
/// index is asked for those, and the whole pattern is tested on an expression the
/// index does not serve (`|| ''`). Of that expression PostgreSQL's planner knows
/// nothing but the pattern's length, and so takes it for rare, as the plan found it.
fn matching<'a>(plan: &'a Plan, column: &str, params: &mut Vec<(&'a (dyn ToSql + Sync), Type)>) -> String {
    match &plan.pieces {
        Some(pieces) => {
            params.push((pieces, Type::TEXT));
            let at = params.len();
            format!("lower({column}) LIKE ${at} AND lower({column}) || '' LIKE $2")
        }
        None => format!("lower({column}) LIKE $2"),
    }
}

/// The key for the limits per address: see [`client_key`].
fn ip_key(ip: IpAddr) -> String {
    client_key(ip).to_string()
}

/// The LIKE pattern for the (lowercased) names that contain `pattern`'s text.
fn contains(pattern: &Pattern) -> String {
    format!("%{}%", escape_like(pattern.text()))
}

/// `text` for a LIKE pattern, its own `%`, `_` and `\` taken as they are.
fn escape_like(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A holder of a looked-up name, from a row of [`LOOKUP`] or [`LOOKUP_MANY`] whose
/// columns from `at` on are its address, port, size, root and completeness; `None` for
/// a row no peer could connect to (an address that does not parse, a wrong root).
fn hit(r: &postgres::Row, at: usize) -> Option<PeerHit> {
    let ip = r.get::<_, &str>(at).parse::<IpAddr>().ok()?;
    let root = Hash::try_from(r.get::<_, &[u8]>(at + 3)).ok()?;
    let addr = SocketAddr::new(ip, r.get::<_, i32>(at + 1) as u16);
    Some(PeerHit { addr, size: r.get::<_, i64>(at + 2) as u64, root, complete: r.get(at + 4) })
}

/// Whether the pooled `client`, on which a request just failed, has lost its
/// connection ([`connection_gone`]); it is then not given out again.
fn lost(client: &mut Client) -> bool {
    let lost = connection_gone(client);
    client.broken |= lost;
    lost
}

/// Whether `client`, on which a statement just failed, has lost its connection. The
/// database's last words before it closes one (57P01, "terminating connection due to
/// administrator command") may come as the answer to a statement, before the client
/// has read the end of the connection: an empty statement, sent only after a failure,
/// reads it.
fn connection_gone(client: &mut postgres::Client) -> bool {
    client.is_closed() || client.batch_execute("").is_err()
}

/// A database error as a request sees it; the cause goes to the log.
fn unavailable(e: postgres::Error) -> RegistryError {
    log::warn!("index store: {}", Why(&e));
    RegistryError::StoreUnavailable
}

/// A database error for the log, with its cause: the database's code and message
/// (`57P03: the database system is starting up`), or what failed and why (`error
/// communicating with the server: Connection reset by peer`), where the error's own
/// text says only `db error`. Escaped: the text came over the network.
struct Why<'a>(&'a postgres::Error);

impl std::fmt::Display for Why<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = match (self.0.as_db_error(), std::error::Error::source(self.0)) {
            (Some(db), _) => format!("{}: {}", db.code().code(), db.message()),
            (None, Some(cause)) => format!("{}: {cause}", self.0),
            (None, None) => self.0.to_string(),
        };
        f.write_str(&crate::text::escape(&text))
    }
}

/// The pool's failures to connect, to the log with their cause (r2d2's own handler
/// logs `db error` as an error, for each attempt).
#[derive(Debug)]
struct ConnectFailures;

impl r2d2::HandleError<postgres::Error> for ConnectFailures {
    fn handle_error(&self, e: postgres::Error) {
        log::warn!("index store: cannot connect: {}", Why(&e));
    }
}

/// `url` without its password, for messages.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listings_take_at_most_their_places_and_give_them_back() {
        let slots = Slots::new(2);
        let (a, b) = (slots.take(Duration::ZERO), slots.take(Duration::ZERO));
        assert!(a.is_some() && b.is_some());
        assert!(slots.take(Duration::from_millis(1)).is_none(), "a third waits, then gives up");
        drop(a);
        assert!(slots.take(Duration::ZERO).is_some(), "a place given back is taken again");
        assert!(Slots::new(0).take(Duration::ZERO).is_some(), "a pool of one still lists");
    }

    #[test]
    fn listing_places_go_to_those_waiting_in_the_order_they_came() {
        let slots = Slots::new(1);
        let held = slots.take(Duration::ZERO);
        let (order, got) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            // Each keeps its place until let go, so that the newcomer below finds it
            // either promised or taken, however the threads are scheduled.
            let mut let_go = Vec::new();
            for who in ["first", "second"] {
                let (slots, order) = (&slots, order.clone());
                let (go, gate) = std::sync::mpsc::channel::<()>();
                let_go.push(go);
                let before = slots.waiting();
                s.spawn(move || {
                    let place = slots.take(Duration::from_secs(60));
                    order.send(who).unwrap();
                    let _ = gate.recv();
                    drop(place);
                });
                // Each is in line before the next comes (a condition, not a pause).
                while slots.waiting() == before {
                    std::thread::yield_now();
                }
            }
            drop(held);
            // A newcomer that will not wait finds the freed place promised to the
            // first in line, not free for the taking.
            assert!(slots.take(Duration::ZERO).is_none(), "a newcomer went before those waiting");
            for (expected, go) in ["first", "second"].into_iter().zip(let_go) {
                assert_eq!(got.recv().unwrap(), expected);
                go.send(()).unwrap();
            }
        });
    }

    #[test]
    fn like_patterns_keep_their_wildcards_as_text() {
        assert_eq!(escape_like("a%b_c\\d"), "a\\%b\\_c\\\\d");
        assert_eq!(escape_like("plain"), "plain");
    }

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(redacted("postgres://ann:secret@db/test"), "postgres://ann:***@db/test");
        assert_eq!(redacted("postgres://postgres@127.0.0.1/test"), "postgres://postgres@127.0.0.1/test");
        assert_eq!(redacted("host=/run/postgresql"), "host=/run/postgresql");
    }
}
