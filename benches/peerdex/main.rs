//! The peerdex benchmark harness: real `indexing-server` and `peer` processes on
//! loopback, driven over their real protocol, one printed row per scenario.
//!
//! ```text
//! cargo bench                         # every scenario but the soak
//! cargo bench -- lookup               # one (or several: lookup register list ...)
//! cargo bench -- lookup --seconds 3   # shorter measuring windows
//! cargo bench -- soak --minutes 2     # the soak, only when named
//! cargo bench -- store --names 1000000  # PostgreSQL (--store), with a smaller listing
//! ```
//!
//! One file per scenario: [`lookup`] (against the minimal [`responder`] and Redis in
//! the same run), [`register`] (and list), [`transfer`] (against curl from nginx; and
//! small, startup), [`pieces`] (multi-source against aria2c, and the swarm, in a
//! network namespace made by [`netns`]), [`folders`] (a tree registered, a folder
//! downloaded, against cp -r and rsync), [`store`] (the index in PostgreSQL beside the
//! one in memory), [`soak`];
//! [`load`] is the load generator they share. Each row also gives the CPU used by the
//! generator and by the server during the measurement, so that a saturated generator
//! cannot pass for a slow server. Processes are started and reaped by the tests'
//! `Proc` ([`common`]).

use std::net::SocketAddr;
use std::path::Path;

#[path = "../../tests/common/mod.rs"]
mod common;
mod folders;
mod load;
mod lookup;
mod netns;
mod pieces;
mod register;
mod responder;
mod soak;
mod store;
mod transfer;

use common::Proc;

/// Options for every scenario.
pub struct Opts {
    /// Length of each measuring window.
    pub seconds: u64,
    /// Length of the soak.
    pub minutes: f64,
    /// Names in the store scenario's listing.
    pub names: usize,
}

/// Prints one result row.
pub fn row(scenario: &str, result: String) {
    println!("{scenario:<9} | {result}");
}

/// An index server logging every request to `dir/log.log` (the level can be changed
/// with `PEERDEX_BENCH_LOG_LEVEL`), with `extra` options; returns it and its address.
pub fn index_server(dir: &Path, extra: &[&str]) -> (Proc, SocketAddr) {
    let level = std::env::var("PEERDEX_BENCH_LOG_LEVEL").unwrap_or_else(|_| "info".into());
    let mut args = vec!["127.0.0.1", "0", "--log-level", &level];
    args.extend(extra);
    Proc::index_server_with(dir, &args)
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map_or("unknown CPU", |m| m.trim_start_matches([' ', '\t', ':']));
    let sha = if cpuinfo.contains(" sha_ni") { "SHA extensions present" } else { "no SHA extensions" };
    format!("{} cores, {model}, {sha}", load::cores())
}

fn main() {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    if std::env::args().any(|a| a == responder::FLAG) {
        return responder::run();
    }
    let mut wanted = Vec::new();
    let mut opts = Opts { seconds: 10, minutes: 1.0, names: 10_000_000 };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--bench" => {} // cargo bench passes this
            "--seconds" => opts.seconds = args.next().and_then(|s| s.parse().ok()).expect("--seconds N"),
            "--minutes" => opts.minutes = args.next().and_then(|s| s.parse().ok()).expect("--minutes N"),
            "--names" => opts.names = args.next().and_then(|s| s.parse().ok()).expect("--names N"),
            s if s.starts_with('-') => {}
            s => wanted.push(s.to_owned()),
        }
    }
    let all = [
        "lookup", "register", "list", "store", "transfer", "multi", "swarm", "small", "startup", "folders",
        "soak",
    ];
    // The soak runs for minutes: only when asked for by name.
    let run = |s: &str| (wanted.is_empty() && s != "soak") || wanted.iter().any(|w| w == s);
    println!("peerdex benchmark on {}", machine());
    println!("{:<9} | result", "scenario");
    for scenario in all {
        if !run(scenario) {
            continue;
        }
        match scenario {
            "lookup" => lookup::run(&opts),
            "register" => register::run(&opts, run("list"), true),
            "list" if !run("register") => register::run(&opts, true, false),
            "list" => {}
            "transfer" => transfer::transfer(&opts),
            "multi" => pieces::multi(&opts),
            "swarm" => pieces::swarm(&opts),
            "small" => transfer::small(&opts),
            "startup" => transfer::startup(&opts),
            "folders" => folders::run(&opts),
            "store" => store::run(&opts, opts.names),
            "soak" => soak::run(&opts),
            _ => unreachable!(),
        }
    }
}
