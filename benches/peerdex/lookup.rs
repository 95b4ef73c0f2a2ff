//! `cargo bench -- lookup`: lookups against an index of 1,000 peers x 1,000 files,
//! next to the two references measured in the same run with the same load generator:
//! the minimal responder (the ceiling of a thread-per-connection design here) and
//! Redis GET (an event loop).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use peerdex::index::registry::{Change, Limits, Registry, STEP_FILES};
use peerdex::name::SharePath;
use peerdex::wire::FileInfo;
use rand::seq::SliceRandom;

use crate::common::Proc;
use crate::load::{self, LoadResult, Wire, lookup_load, register_many, us};
use crate::{Opts, index_server, row};

/// The address of a local Redis, if one answers.
const REDIS: &str = "127.0.0.1:6379";

fn shared_or_unique(p: usize, i: usize) -> String {
    // 900 names unique to this peer, and 100 of the 1,000 shared names: peer p shares
    // the block (p % 10), so each shared name is held by 100 of the 1,000 peers.
    if i < 900 {
        format!("peer{p:04}-file{i:03}.dat")
    } else {
        format!("shared-{:04}.dat", (p % 10) * 100 + (i - 900))
    }
}

pub fn run(opts: &Opts) {
    let dir = tempfile::tempdir().unwrap();
    let (server, index) = index_server(dir.path(), &[]);
    let t = Instant::now();
    let _conns = register_many(index, 1000, 1000, 8, shared_or_unique);
    let loaded = t.elapsed();
    let mut names: Vec<String> =
        (0..1000).flat_map(|p| (0..900).map(move |i| shared_or_unique(p, i))).collect();
    names.extend((0..1000).map(|s| format!("shared-{s:04}.dat")));
    names.shuffle(&mut rand::rng());
    let names = Arc::new(names);
    in_process(&names);
    let (rss, threads) = server.rss_and_threads();
    row(
        "lookup",
        format!(
            "index of 1,000 peers x 1,000 files loaded in {:.1} s (from {} client addresses); server RSS {} MiB, {threads} threads",
            loaded.as_secs_f64(),
            1000 / load::PEERS_PER_ADDRESS,
            rss >> 20
        ),
    );
    let responder = Proc::start(
        std::env::current_exe().unwrap().to_str().unwrap(),
        &[crate::responder::FLAG],
        dir.path(),
    );
    let mut responder = responder;
    let responder_addr: SocketAddr = responder
        .expect(crate::common::Stream::Out, "listening on ")
        .trim_start_matches("listening on ")
        .parse()
        .unwrap();
    let redis = redis_pid().and_then(|pid| preload_redis(&names).then_some(pid));
    if redis.is_none() {
        row("lookup", format!("Redis: none answers at {REDIS}; its rows are skipped"));
    }
    // The machine is shared and its speed drifts: the servers take turns, in a new
    // order each round, each figure is the median of its rounds, and each ratio the
    // median of the rounds' own ratios (each compares runs a few seconds apart).
    let window = Duration::from_secs(opts.seconds);
    let mut servers = vec![
        ("peerdex", Wire::Peerdex, index, server.pid()),
        ("responder", Wire::Peerdex, responder_addr, responder.pid()),
    ];
    if let Some(pid) = redis {
        servers.push(("redis", Wire::Redis, REDIS.parse().unwrap(), pid));
    }
    for clients in [50, 1] {
        let mut results: Vec<Vec<LoadResult>> = servers.iter().map(|_| Vec::new()).collect();
        for round in 0..ROUNDS {
            let mut order: Vec<usize> = (0..servers.len()).collect();
            order.rotate_left(round % servers.len());
            for i in order {
                let (_, wire, addr, pid) = servers[i];
                results[i].push(lookup_load(wire, addr, pid, &names, clients, window));
            }
        }
        let per_round = |i: usize, key: fn(&LoadResult) -> f64| -> String {
            let mut r: Vec<f64> = (0..ROUNDS).map(|k| key(&results[0][k]) / key(&results[i][k])).collect();
            r.sort_by(f64::total_cmp);
            format!("{:.2} (rounds {:.2}-{:.2})", r[ROUNDS / 2], r[0], r[ROUNDS - 1])
        };
        let rate_vs = |i: usize| per_round(i, |r| r.rate);
        let p99_vs = |i: usize| per_round(i, |r| r.p99.as_secs_f64());
        let mut ratios =
            format!("{clients:>2} clients: peerdex/responder {} in rate, {} in p99", rate_vs(1), p99_vs(1));
        if servers.len() > 2 {
            ratios += &format!(
                "; peerdex/redis {} in rate, {} in p50",
                rate_vs(2),
                per_round(2, |r| r.p50.as_secs_f64())
            );
        }
        let medians: Vec<LoadResult> = results.into_iter().map(median).collect();
        for ((who, ..), r) in servers.iter().zip(&medians) {
            row(
                "lookup",
                format!(
                    "{clients:>2} clients, {who:<9}: {:>8.0}/s, p50 {}, p99 {} (medians of {ROUNDS} rounds); last round's {}",
                    r.rate,
                    us(r.p50),
                    us(r.p99),
                    r.cpu
                ),
            );
        }
        row("lookup", ratios);
    }
    drop(responder);
}

/// Rounds of each measurement.
const ROUNDS: usize = 5;

/// The index's own part of a lookup, without a server: the same 1,000 x 1,000 files in
/// a [`Registry`] in this process, looked up one after another, each lookup's address
/// depending on the one before (as a server thread's next request waits on its
/// reply), so that their cache misses cannot overlap. A request's name is made fresh
/// for each, as a server decodes it (in the processor's cache); making it is timed
/// apart and taken off.
fn in_process(names: &[String]) {
    let mut registry = Registry::new(Limits::default());
    for p in 0..1000 {
        let conn = SocketAddr::from(([127, 0, (p / 200) as u8, (p % 200 + 1) as u8], 10_000 + p as u16));
        let files = (0..1000)
            .map(|i| FileInfo {
                name: SharePath::parse(&shared_or_unique(p, i)).unwrap(),
                size: 1,
                root: [1; 32],
            })
            .collect();
        registry.register(conn, 9000, files).unwrap();
    }
    let count = 1_000_000.min(names.len());
    let mut rounds: Vec<f64> = (0..ROUNDS)
        .map(|round| {
            let time = |look: bool| {
                let t = Instant::now();
                let mut carry = 0;
                for step in 0..count {
                    let name =
                        SharePath::parse(&names[(round * count + step + carry) % names.len()]).unwrap();
                    carry = match look {
                        true => usize::from(registry.lookup(&name)[0].size == u64::MAX),
                        false => usize::from(name.as_str().is_empty()),
                    };
                }
                t.elapsed().as_nanos() as f64 / count as f64
            };
            time(true) - time(false)
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    row(
        "lookup",
        format!(
            "in process: Registry::lookup {:.0} ns (rounds {:.0}-{:.0}), one after another over {} names",
            rounds[ROUNDS / 2],
            rounds[0],
            rounds[ROUNDS - 1],
            names.len()
        ),
    );
    swaps_in_process(&mut registry);
}

/// How long a change holds the registry's lock: a peer beside those 1,000 x 1,000
/// files swaps 200,000 files for 200,000 others, made whole (as one hold of the lock
/// made it before session 21) and a step at a time ([`Registry::step`], each step
/// under the lock on its own in the server), ROUNDS times each.
fn swaps_in_process(registry: &mut Registry) {
    let conn = SocketAddr::from(([127, 9, 9, 9], 5));
    let list = |k: usize| -> Vec<FileInfo> {
        let name = |i| SharePath::parse(&format!("swap{}-{i:06}", k % 2)).unwrap();
        (0..200_000).map(|i| FileInfo { name: name(i), size: 1, root: [2; 32] }).collect()
    };
    registry.register(conn, 9000, list(0)).unwrap();
    let mut whole = Vec::new();
    let (mut steps, mut longest, mut all) = (0u32, Duration::ZERO, Duration::ZERO);
    for _ in 0..ROUNDS {
        // From list 0 to list 1 whole, and back a step at a time.
        let files = list(1);
        let t = Instant::now();
        registry.register(conn, 9000, files).unwrap();
        whole.push(t.elapsed());
        let old = registry.files_of(conn, 0, usize::MAX).unwrap();
        let mut change = Change::replace(conn, None, list(0), Some(&old));
        let id = registry.begin(&mut change).unwrap();
        loop {
            let t = Instant::now();
            let done = registry.step(id, &mut change);
            let took = t.elapsed();
            (steps, longest, all) = (steps + 1, longest.max(took), all + took);
            if done {
                break;
            }
        }
    }
    whole.sort();
    registry.remove(conn);
    row(
        "register",
        format!(
            "in process: a swap of 200,000 files beside 1,000,000, made whole {:.0} ms (rounds {:.0}-{:.0}); a step at a time, {} steps of {STEP_FILES} files: {:.2} ms each, the longest {:.2} ms",
            whole[ROUNDS / 2].as_secs_f64() * 1e3,
            whole[0].as_secs_f64() * 1e3,
            whole[ROUNDS - 1].as_secs_f64() * 1e3,
            steps,
            all.as_secs_f64() * 1e3 / f64::from(steps),
            longest.as_secs_f64() * 1e3,
        ),
    );
}

/// The median of each figure over the rounds (the CPU report is the last round's).
fn median(mut rounds: Vec<LoadResult>) -> LoadResult {
    let mid = rounds.len() / 2;
    let pick = |key: fn(&LoadResult) -> f64| {
        let mut v: Vec<f64> = rounds.iter().map(key).collect();
        v.sort_by(f64::total_cmp);
        v[mid]
    };
    let rate = pick(|r| r.rate);
    let p50 = Duration::from_secs_f64(pick(|r| r.p50.as_secs_f64()));
    let p99 = Duration::from_secs_f64(pick(|r| r.p99.as_secs_f64()));
    let cpu = rounds.pop().map(|r| r.cpu).unwrap_or_default();
    LoadResult { rate, p50, p99, cpu }
}

/// The process id of the local Redis, if it runs (for its CPU figures).
fn redis_pid() -> Option<u32> {
    std::net::TcpStream::connect(REDIS).ok()?;
    let out = std::process::Command::new("pgrep").args(["-o", "redis-server"]).output().ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// Stores every name in Redis with a value the size of the index's reply, for ten
/// minutes (so that nothing is left behind), pipelined. Returns whether it worked.
fn preload_redis(names: &[String]) -> bool {
    use std::io::{BufRead, BufReader, Write};
    let Ok(stream) = std::net::TcpStream::connect(REDIS) else { return false };
    let mut w = std::io::BufWriter::new(&stream);
    let value = "x".repeat(52);
    for n in names {
        let _ = write!(
            w,
            "*5\r\n$3\r\nSET\r\n${}\r\n{n}\r\n$52\r\n{value}\r\n$2\r\nEX\r\n$3\r\n600\r\n",
            n.len()
        );
    }
    if w.flush().is_err() {
        return false;
    }
    let mut r = BufReader::new(&stream);
    let mut line = String::new();
    for _ in names {
        line.clear();
        if r.read_line(&mut line).is_err() || line != "+OK\r\n" {
            return false;
        }
    }
    true
}
