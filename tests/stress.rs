//! 200 clients registering, updating, deleting, adding, unregistering and looking up
//! at once against the real index server, for 30 s (PEERDEX_STRESS_SECS to change):
//! no deadlock, and at the end the server's answers match what each client did.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{Proc, RawIndexClient, workspace};
use peerdex::name::SharePath;
use peerdex::wire::{FileInfo, Reply, Request};
use rand::RngExt;

const CLIENTS: usize = 200;

fn name(s: &str) -> SharePath {
    SharePath::parse(s).unwrap()
}

fn file(n: &str, size: u64) -> FileInfo {
    FileInfo { name: name(n), size, root: [size as u8; 32] }
}

/// The names client `c` works with: 8 of its own and 8 that every client shares.
fn names(c: usize) -> Vec<String> {
    (0..8).map(|i| format!("own-{c:03}-{i}")).chain((0..8).map(|i| format!("common-{i}"))).collect()
}

#[test]
fn two_hundred_clients_at_once_end_in_the_state_they_made() {
    let secs: u64 = std::env::var("PEERDEX_STRESS_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(30);
    let ws = workspace();
    let (index, addr) = Proc::index_server_with(ws.path(), &["127.0.0.1", "0", "--log-level", "warn"]);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            std::thread::spawn(move || {
                let mut rng = rand::rng();
                let mut conn = RawIndexClient::connect_from(&format!("127.0.0.{}", 10 + c % 20), addr);
                let port = 10_000 + c as u16;
                let pool = names(c);
                // What this client believes the server holds for it: None when not
                // registered.
                let mut mine: Option<BTreeMap<String, u64>> = None;
                let pick = |rng: &mut rand::rngs::ThreadRng| {
                    let mut m = BTreeMap::new();
                    for n in &pool {
                        if rng.random_bool(0.5) {
                            m.insert(n.clone(), rng.random_range(1..4));
                        }
                    }
                    m
                };
                let list = |m: &BTreeMap<String, u64>| m.iter().map(|(n, s)| file(n, *s)).collect::<Vec<_>>();
                let mut ops = 0u64;
                while Instant::now() < deadline {
                    ops += 1;
                    let reply = match rng.random_range(0..6) {
                        0 => {
                            let m = pick(&mut rng);
                            let r = conn.call(&Request::Register { port, files: list(&m) });
                            mine = Some(m);
                            r
                        }
                        1 => {
                            let m = pick(&mut rng);
                            let r = conn.call(&Request::Update { files: list(&m) });
                            if mine.is_some() {
                                mine = Some(m);
                            }
                            r
                        }
                        2 => {
                            let gone: Vec<String> =
                                pool.iter().filter(|_| rng.random_bool(0.3)).cloned().collect();
                            let r =
                                conn.call(&Request::Delete { names: gone.iter().map(|n| name(n)).collect() });
                            if let Some(m) = &mut mine {
                                gone.iter().for_each(|n| {
                                    m.remove(n);
                                });
                            }
                            r
                        }
                        3 => {
                            let more = pick(&mut rng);
                            let r = conn.call(&Request::Add { files: list(&more) });
                            if let Some(m) = &mut mine {
                                m.extend(more);
                            }
                            r
                        }
                        4 => {
                            let r = conn.call(&Request::Unregister);
                            mine = None;
                            r
                        }
                        _ => {
                            conn.call(&Request::Lookup { name: name(&pool[rng.random_range(0..pool.len())]) })
                        }
                    };
                    match (&reply, &mine) {
                        (Reply::Done { files }, Some(m)) => {
                            assert_eq!(*files as usize, m.len(), "client {c}")
                        }
                        (Reply::Done { .. }, None) => {} // unregister
                        (Reply::Error(e), None) => assert!(e.starts_with("not registered"), "{e}"),
                        (Reply::Peers(_) | Reply::NoPeers, _) => {}
                        (other, _) => panic!("client {c}: {other:?}"),
                    }
                }
                // The server's view of this client must be exactly what it did.
                for n in &pool {
                    let hits = match conn.call(&Request::Lookup { name: name(n) }) {
                        Reply::Peers(hits) => hits,
                        Reply::NoPeers => vec![],
                        other => panic!("{other:?}"),
                    };
                    let at_me: Vec<u64> =
                        hits.iter().filter(|h| h.addr.port() == port).map(|h| h.size).collect();
                    let want: Vec<u64> = mine.as_ref().and_then(|m| m.get(n)).copied().into_iter().collect();
                    assert_eq!(at_me, want, "client {c}, name {n}");
                }
                (conn, ops)
            })
        })
        .collect();
    let mut total = 0;
    let conns: Vec<RawIndexClient> = clients
        .into_iter()
        .map(|h| {
            let (conn, ops) = h.join().expect("a client failed");
            total += ops;
            conn
        })
        .collect();
    assert!(total > CLIENTS as u64, "the clients did work: {total} requests");

    // Every client gone: nothing is left registered.
    drop(conns);
    let mut c = RawIndexClient::connect(addr);
    common::wait_for("every registration to go", || {
        (0..8).all(|i| c.call(&Request::Lookup { name: name(&format!("common-{i}")) }) == Reply::NoPeers)
    });
    drop(index);
}
