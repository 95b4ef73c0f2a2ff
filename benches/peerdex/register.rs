//! `cargo bench -- register` and `-- list`: 10,000 peers x 1,000 files, their memory,
//! lookups with all of them connected, and listings of the 10 million entries.

use std::sync::Arc;
use std::time::{Duration, Instant};

use peerdex::wire::Request;
use rand::RngExt;

use crate::load::{self, Client, CpuMeter, Wire, lookup_load, register_many, us};
use crate::{Opts, index_server, row};

pub fn run(opts: &Opts, run_list: bool, run_register: bool) {
    let dir = tempfile::tempdir().unwrap();
    // 10,000 peers plus the lookup clients: above the default cap of 10,000.
    let (server, index) = index_server(dir.path(), &["--max-connections", "10100"]);
    let (rss0, threads0) = server.rss_and_threads();
    let (peers, files) = (10_000, 1_000);
    let meter = CpuMeter::start(server.pid());
    let t = Instant::now();
    let conns = register_many(index, peers, files, 16, |p, i| format!("peer{p:05}-file{i:04}.dat"));
    let took = t.elapsed();
    let cpu = meter.report();
    let (rss, threads) = server.rss_and_threads();
    let entries = (peers * files) as u64;
    if run_register {
        row(
            "register",
            format!(
                "{peers} peers x {files} files = {entries} entries from {} client addresses in {:.1} s ({:.0} entries/s); {cpu}",
                peers / load::PEERS_PER_ADDRESS,
                took.as_secs_f64(),
                entries as f64 / took.as_secs_f64()
            ),
        );
        row(
            "register",
            format!(
                "server RSS {} MiB ({:.0} bytes/entry over the empty server's {} MiB), {threads} threads (empty: {threads0})",
                rss >> 20,
                (rss - rss0) as f64 / entries as f64,
                rss0 >> 20
            ),
        );
        let names: Arc<Vec<String>> = Arc::new({
            let mut rng = rand::rng();
            (0..200_000)
                .map(|_| {
                    format!("peer{:05}-file{:04}.dat", rng.random_range(0..peers), rng.random_range(0..files))
                })
                .collect()
        });
        let window = Duration::from_secs(opts.seconds.min(5));
        for clients in [1, 50] {
            let r = lookup_load(Wire::Peerdex, index, server.pid(), &names, clients, window);
            row(
                "register",
                format!(
                    "lookups with all connected, {clients:>2} clients: {:.0}/s, p50 {}, p99 {}; {}",
                    r.rate,
                    us(r.p50),
                    us(r.p99),
                    r.cpu
                ),
            );
        }
    }
    if run_list {
        let mut c = Client::connect(index);
        for (label, request) in [
            ("everything", Request::List { pattern: String::new(), limit: None }),
            ("--limit 100", Request::List { pattern: String::new(), limit: Some(100) }),
            ("pattern", Request::List { pattern: "peer09999-file09".into(), limit: None }),
        ] {
            let (count, first, last) = load::time_listing(&mut c, &request);
            row(
                "list",
                format!(
                    "{label:<12} {count:>9} entries: first after {}, last after {:.3} s",
                    us(first),
                    last.as_secs_f64()
                ),
            );
        }
    }
    drop(conns);
}
