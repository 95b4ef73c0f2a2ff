//! `cargo bench -- store`: the index kept in PostgreSQL (`--store`), beside the
//! registry in memory, in the same run:
//!
//! - 1,000 peers x 1,000 files registered through two servers at once (and, for
//!   reference, into memory);
//! - lookups at 1 and 50 clients, p50 and p99: in memory, one server on PostgreSQL,
//!   and two servers on one PostgreSQL (25 clients each); and for reference the
//!   database's own ceiling on this machine, PostgreSQL alone: pgbench sending the
//!   store's lookup statement (prepared) straight to it, with as many clients;
//! - a listing with a pattern over 10,000,000 names (`--names N` to change), loaded
//!   straight into the database with SQL: the first entry, and all of them; over names
//!   of a few letters and digits (the trigram index's worst case), then over as many
//!   names made of words, at a third server on a schema of its own.
//!
//! It uses a schema of its own in the database the tests use (tests/common/pg.rs),
//! dropped at the end; without PostgreSQL it says so and is skipped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;

use crate::common::pg::Schema;
use crate::load::{Client, Latencies, LoadResult, Wire, lookup_load, register_range, us};
use crate::{Opts, index_server, row};
use peerdex::wire::Request;

/// 900 names unique to each peer, and 100 shared by 100 peers each (as `lookup`).
fn shared_or_unique(p: usize, i: usize) -> String {
    if i < 900 {
        format!("peer{p:04}-file{i:03}.dat")
    } else {
        format!("shared-{:04}.dat", (p % 10) * 100 + (i - 900))
    }
}

pub fn run(opts: &Opts, names: usize) {
    let Some(schema) = Schema::new("the store benchmark") else {
        row("store", "skipped: no PostgreSQL".into());
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let place = |name: &str| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    };
    let store = ["--store", schema.url.as_str()];
    let (memory, at_memory) = index_server(&place("memory"), &[]);
    let (a, at_a) = index_server(&place("a"), &store);
    let (b, at_b) = index_server(&place("b"), &store);

    // Registrations.
    let t = Instant::now();
    let _in_memory = register_range(at_memory, 0..1000, 1000, 8, shared_or_unique);
    let memory_time = t.elapsed();
    let t = Instant::now();
    let (half_a, half_b) = std::thread::scope(|s| {
        let at_a = s.spawn(|| register_range(at_a, 0..500, 1000, 4, shared_or_unique));
        let at_b = s.spawn(|| register_range(at_b, 500..1000, 1000, 4, shared_or_unique));
        (at_a.join().unwrap(), at_b.join().unwrap())
    });
    let store_time = t.elapsed();
    // As autovacuum would, before the lookups: fresh statistics, a clean GIN index.
    schema.admin("VACUUM ANALYZE files");
    let size: i64 = schema.admin("SELECT pg_total_relation_size('files')")[0].get(0);
    row(
        "store",
        format!(
            "register 1,000 peers x 1,000 files: through two servers on PostgreSQL {:.1} s (table and indexes {} MiB); into memory {:.1} s",
            store_time.as_secs_f64(),
            size >> 20,
            memory_time.as_secs_f64()
        ),
    );

    // Lookups.
    let mut keys: Vec<String> =
        (0..1000).flat_map(|p| (0..900).map(move |i| shared_or_unique(p, i))).collect();
    keys.extend((0..1000).map(|s| format!("shared-{s:04}.dat")));
    keys.shuffle(&mut rand::rng());
    let keys = Arc::new(keys);
    let window = Duration::from_secs(opts.seconds);
    for clients in [1, 50] {
        let show = |who: &str, r: &LoadResult| {
            row(
                "store",
                format!(
                    "lookup, {clients:>2} clients, {who:<22}: {:>7.0}/s, p50 {}, p99 {}; {}",
                    r.rate,
                    us(r.p50),
                    us(r.p99),
                    r.cpu
                ),
            )
        };
        show("memory", &lookup_load(Wire::Peerdex, at_memory, memory.pid(), &keys, clients, window));
        match pgbench_lookups(&schema, clients, window) {
            Ok(r) => show("PostgreSQL alone", &r),
            Err(why) => {
                row("store", format!("lookup, {clients:>2} clients, PostgreSQL alone: skipped ({why})"))
            }
        }
        show("one server, PostgreSQL", &lookup_load(Wire::Peerdex, at_a, a.pid(), &keys, clients, window));
        if clients > 1 {
            let (pid_a, pid_b) = (a.pid(), b.pid());
            let (ra, rb) = std::thread::scope(|s| {
                let ra = s.spawn(|| lookup_load(Wire::Peerdex, at_a, pid_a, &keys, clients / 2, window));
                let rb = s.spawn(|| lookup_load(Wire::Peerdex, at_b, pid_b, &keys, clients / 2, window));
                (ra.join().unwrap(), rb.join().unwrap())
            });
            let both = LoadResult {
                rate: ra.rate + rb.rate,
                p50: ra.p50.max(rb.p50),
                p99: ra.p99.max(rb.p99),
                cpu: format!("A: {}; B: {}", ra.cpu, rb.cpu),
            };
            show("two servers (the worse p)", &both);
        }
    }

    // A listing over many names, loaded with SQL: 1,000 peers of A's.
    let t = Instant::now();
    let per_peer = names.div_ceil(1000);
    schema.admin(&format!(
        "DROP INDEX files_name_trgm;
         INSERT INTO peers (server_id, conn, ip, ip_key, port, files)
             SELECT {server}, 'bulk:' || p, '127.0.0.9', 'bulk', 9, {per_peer} FROM generate_series(1, 1000) p;
         INSERT INTO files (peer_id, name, size, root, complete)
             SELECT peers.id, format('bulk%s-file%s.dat', to_char(split_part(peers.conn, ':', 2)::int, 'FM00000'), to_char(i, 'FM00000')), i, decode(repeat('00', 32), 'hex'), true
             FROM peers, generate_series(1, {per_peer}) i WHERE peers.conn LIKE 'bulk:%';
         {TRIGRAM_INDEX}",
        server = a_server_id(&schema),
    ));
    // What autovacuum does after a table's inserts, done now, on its own as autovacuum
    // would: made in the loading transaction, the statistics held a sample of 100
    // names, not the trigram index's 1,000 (which a listing's plan reads).
    schema.admin("VACUUM ANALYZE files");
    let count: i64 = schema.admin("SELECT count(*) FROM files")[0].get(0);
    row(
        "store",
        format!(
            "{count} names in the database, loaded with SQL and indexed in {:.0} s; {}",
            t.elapsed().as_secs_f64(),
            sample_size(&schema)
        ),
    );
    let mut c = Client::connect(at_b);
    // The last two match names that sort together, far into the names (peer 77's
    // files; peers 770-779's): a walk of the names in order passes 77% of them first.
    for (label, pattern) in [
        ("a rare pattern", "bulk00777-file0004"),
        ("a common one", "file00042"),
        ("a bunched rare", "00777-file0"),
        ("a bunched one", "bulk0077"),
    ] {
        list_row(&mut c, &format!("{label:<14} ({pattern:?}) at B"), pattern);
    }
    drop((half_a, half_b));
    drop((a, b, memory));
    words_listing(names, &place("c"));
}

/// The trigram index as the migrations leave it, made again after a bulk load (which
/// runs without it, for speed): its statistics target is part of what a listing's plan
/// depends on.
const TRIGRAM_INDEX: &str = "CREATE INDEX files_name_trgm ON files USING gin (lower(name) gin_trgm_ops);
         ALTER INDEX files_name_trgm ALTER COLUMN 1 SET STATISTICS 1000;";

/// Listings over `names` names made of words, at a server of their own on a schema of
/// its own: the trigram index's usual case, beside the worst case above (names of a few
/// letters and digits, whose every trigram is in hundreds of thousands of names).
///
/// Each name is four words and a number (`vuzqe tol - ecnktlg xfmz 123.mp3`), the words
/// drawn from 50,000 random ones of 4 to 9 letters so that the k-th is about k times
/// rarer than the first (log-uniformly), as words in real file names are; the same
/// words every run (`setseed`). Each listed pattern is one word, from the most common
/// ones to the rarest.
fn words_listing(names: usize, dir: &std::path::Path) {
    let Some(schema) = Schema::new("the store benchmark's word listing") else { return };
    let (_c, at_c) = index_server(dir, &["--store", schema.url.as_str()]);
    let t = Instant::now();
    let rank = "least(50000, floor(exp(random() * ln(50000)))::int)";
    schema.admin(&format!(
        "SELECT setseed(0.42);
         CREATE TEMP TABLE vocab AS SELECT i AS id, string_agg(chr(97 + floor(random() * 26)::int), '' ORDER BY j) AS w
             FROM generate_series(1, 50000) i, generate_series(1, 4 + i % 6) j GROUP BY i;
         DROP INDEX files_name_trgm;
         INSERT INTO peers (server_id, conn, ip, ip_key, port, files)
             SELECT {server}, 'bulk:' || p, '127.0.0.9', 'bulk', 9, {per_peer} FROM generate_series(0, 999) p;
         INSERT INTO files (peer_id, name, size, root, complete)
             SELECT (SELECT min(id) FROM peers) + g % 1000, format('%s %s - %s %s %s.mp3', a.w, b.w, c.w, d.w, g), g, decode(repeat('00', 32), 'hex'), true
             FROM (SELECT g, {rank} r1, {rank} r2, {rank} r3, {rank} r4 FROM generate_series(1, {names}) g) x
             JOIN vocab a ON a.id = x.r1 JOIN vocab b ON b.id = x.r2 JOIN vocab c ON c.id = x.r3 JOIN vocab d ON d.id = x.r4;
         {TRIGRAM_INDEX}
         CREATE TABLE bench_words AS SELECT id, w FROM vocab WHERE id IN (3, 30, 300, 3000, 30000);",
        server = a_server_id(&schema),
        per_peer = names.div_ceil(1000),
    ));
    // What autovacuum does after a table's inserts, done now: the statistics, and the
    // pages marked all-visible, which a listing's index-only walk of the names needs.
    schema.admin("VACUUM ANALYZE files");
    row(
        "store",
        format!(
            "{names} names made of words in another schema, loaded with SQL and indexed in {:.0} s; {}",
            t.elapsed().as_secs_f64(),
            sample_size(&schema)
        ),
    );
    let words = schema.admin("SELECT id, w FROM bench_words ORDER BY id");
    let mut c = Client::connect(at_c);
    for word in &words {
        let (rank, pattern): (i32, String) = (word.get(0), word.get(1));
        list_row(&mut c, &format!("word {rank:>5} by frequency ({pattern:?})"), &pattern);
    }
}

/// Lists `pattern` on `c` and prints a row: how many entries, the first after how
/// long, all after how long.
fn list_row(c: &mut Client, label: &str, pattern: &str) {
    let request = Request::List { pattern: pattern.into(), limit: None };
    let (n, first, last) = crate::load::time_listing(c, &request);
    row(
        "store",
        format!(
            "list {label}: {n:>8} entries, first after {}, all after {:.3} s",
            us(first),
            last.as_secs_f64()
        ),
    );
}

/// How many names PostgreSQL's sample of the trigram index's names holds, which a
/// listing's plan is made from (src/index/plan.rs).
fn sample_size(schema: &Schema) -> String {
    let rows = schema.admin(peerdex::index::store::SAMPLE);
    let count = |i: usize| rows.first().map_or(0, |r| r.get::<_, Vec<String>>(i).len());
    format!("PostgreSQL's sample of the names: {} common ones and {} in a histogram", count(0), count(2))
}

/// The id of a living server's row, for rows loaded straight into the database.
fn a_server_id(schema: &Schema) -> i64 {
    schema.admin("SELECT min(id) FROM servers")[0].get(0)
}

/// The store's lookup statement ([`peerdex::index::store::LOOKUP`]) sent straight to PostgreSQL by pgbench (prepared, `clients`
/// connections on two threads, for `window`), with a random one of the peers' unique
/// names each time: what the database alone does on this machine, without an index
/// server between. Latencies come from pgbench's log of every transaction.
fn pgbench_lookups(schema: &Schema, clients: usize, window: Duration) -> Result<LoadResult, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let script = dir.path().join("lookup.sql");
    // The statement the store prepares, with the name made from two random numbers.
    let name = "'peer' || lpad(:p::text, 4, '0') || '-file' || lpad(:i::text, 3, '0') || '.dat'";
    let lookup = peerdex::index::store::LOOKUP.replace("$1", name);
    std::fs::write(&script, format!("\\set p random(0, 999)\n\\set i random(0, 899)\n{lookup};\n"))
        .map_err(|e| e.to_string())?;
    let out = std::process::Command::new("pgbench")
        .current_dir(dir.path())
        .env("PGOPTIONS", format!("-c search_path={},public", schema.name))
        .args(["-n", "-M", "prepared", "-l", "-f"])
        .arg(&script)
        .args(["-c", &clients.to_string(), "-j", &clients.min(2).to_string()])
        .args(["-T", &window.as_secs().max(1).to_string()])
        .arg(crate::common::pg::admin_url())
        .output()
        .map_err(|e| format!("pgbench: {e}"))?;
    if !out.status.success() {
        return Err(format!("pgbench failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    // Each line of each log: client, transaction, latency in µs, ...
    let mut latencies = Latencies(Vec::new());
    for log in std::fs::read_dir(dir.path()).map_err(|e| e.to_string())?.flatten() {
        if log.file_name().to_string_lossy().starts_with("pgbench_log") {
            let text = std::fs::read_to_string(log.path()).map_err(|e| e.to_string())?;
            let micros = text.lines().filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok());
            latencies.0.extend(micros.map(Duration::from_micros));
        }
    }
    if latencies.0.is_empty() {
        return Err("pgbench logged no transaction".into());
    }
    let transactions = latencies.0.len();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let tps: Option<f64> =
        stdout.lines().find_map(|l| l.strip_prefix("tps = ")?.split_whitespace().next()?.parse().ok());
    Ok(LoadResult {
        rate: tps.unwrap_or(transactions as f64 / window.as_secs_f64()),
        p50: latencies.percentile(0.50),
        p99: latencies.percentile(0.99),
        cpu: "pgbench's own figures".into(),
    })
}
