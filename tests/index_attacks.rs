//! The index server against hostile clients, with the real binary: each test is one
//! attack, with the attackers at 127.0.0.2, 127.0.0.3, ... (every 127/8 address is
//! loopback) and the honest peer elsewhere. After each, the honest peer is served.

mod common;

use std::fs;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::{Proc, RawIndexClient, Stream, TIMEOUT, connect_from, folder, handshaken, workspace};
use peerdex::name::SharePath;
use peerdex::wire::{self, FileInfo, Hello, PROTOCOL_VERSION, Reply, Request, Service, Welcome};

const MIB: u64 = 1 << 20;

fn name(s: &str) -> SharePath {
    SharePath::parse(s).unwrap()
}

/// The honest peer at `from` registers `tag.txt` and another client finds it. The
/// registration lasts as long as the returned connection.
fn honest_peer_is_served(index: SocketAddr, from: &str, tag: &str) -> RawIndexClient {
    let mut c = RawIndexClient::connect_from(from, index);
    let file = FileInfo { name: name(&format!("{tag}.txt")), size: 1, root: [1; 32] };
    assert_eq!(c.call(&Request::Register { port: 4000, files: vec![file] }), Reply::Done { files: 1 });
    let mut other = RawIndexClient::connect_from("127.0.0.200", index);
    match other.call(&Request::Lookup { name: name(&format!("{tag}.txt")) }) {
        Reply::Peers(hits) => assert_eq!(hits[0].addr.ip().to_string(), from),
        reply => panic!("the honest peer is not found: {reply:?}"),
    }
    c
}

#[test]
fn frames_held_open_take_no_more_than_the_receive_budget() {
    let ws = workspace();
    let (index, addr) = Proc::index_server(ws.path());
    honest_peer_is_served(addr, "127.0.0.100", "warm-up");
    let (before, _) = index.rss_and_threads();

    // 250 connections from 5 addresses, each sending all of a 16 MiB - 1 frame but its
    // last byte, and holding it there. (Not a registration, which the server would
    // refuse from its first bytes: an unknown request, found out only once complete.)
    let len = (16 * MIB - 1) as usize;
    let mut payload = vec![0u8; len - 1];
    payload[0] = 0x7f;
    let payload = Arc::new(payload);
    let attackers: Vec<_> = (0..250)
        .map(|i| {
            let payload = Arc::clone(&payload);
            thread::spawn(move || {
                let mut s = handshaken(&format!("127.0.0.{}", 2 + i % 5), addr, Service::Index);
                // Long enough for the server to take what it will; a writer the server
                // does not read from is left blocked, holding its connection.
                s.set_write_timeout(Some(Duration::from_secs(3))).unwrap();
                let _ = s.write_all(&(len as u32).to_be_bytes());
                let _ = s.write_all(&payload);
                s
            })
        })
        .collect();
    let held: Vec<TcpStream> = attackers.into_iter().map(|t| t.join().unwrap()).collect();

    // While they hold: a peer elsewhere registers and is found.
    honest_peer_is_served(addr, "127.0.0.101", "during-the-attack");
    let (after, _) = index.rss_and_threads();
    eprintln!("250 held frames of 16 MiB: server RSS {} -> {} MiB", before / MIB, after / MIB);
    assert!(after < before + 256 * MIB, "RSS grew from {} to {} MiB", before / MIB, after / MIB);
    drop(held);
}

#[test]
fn before_login_a_frame_may_be_4_kib_at_most() {
    let ws = workspace();
    let (_index, addr) = common::index_server_with_ann(ws.path());
    let mut c = RawIndexClient::connect_from("127.0.0.2", addr);
    // 4 KiB is fine (and refused for the login it lacks)...
    let pattern = "x".repeat(4000);
    assert_eq!(c.call(&Request::List { pattern, limit: None }), Reply::Error("login required".into()));
    // ...4 KiB and one byte is not: refused unread, and the connection closed.
    c.stream.write_all(&4097u32.to_be_bytes()).unwrap();
    let reply: Reply = wire::recv_msg(&mut c.stream).unwrap();
    assert_eq!(
        reply,
        Reply::Error("request refused: frame of 4097 bytes exceeds the maximum of 4096 before login".into())
    );
}

#[test]
fn one_address_cannot_take_every_connection() {
    let ws = workspace();
    let (_index, addr) = Proc::index_server(ws.path());
    let held: Vec<TcpStream> = (0..64).map(|_| handshaken("127.0.0.2", addr, Service::Index)).collect();
    let mut extra = connect_from("127.0.0.2", addr);
    let welcome: Welcome = wire::recv_msg(&mut extra).unwrap();
    assert_eq!(
        welcome.refusal.as_deref(),
        Some("too many connections from your address (64, the most allowed); close some and try again")
    );
    honest_peer_is_served(addr, "127.0.0.3", "other-address");
    drop(held);
}

/// A `Register` of `count` files with 255-byte names, unique to `tag`, built as raw
/// bytes (faster than through the encoder, for millions of names).
fn big_register(tag: usize, count: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(7 + count * 297);
    p.push(0x01);
    p.extend(4000u16.to_be_bytes());
    p.extend((count as u32).to_be_bytes());
    for i in 0..count {
        let mut n = format!("{tag:03}-{i:07}-").into_bytes();
        n.resize(255, b'x');
        p.extend(255u16.to_be_bytes());
        p.extend(n);
        p.extend(1u64.to_be_bytes());
        p.extend([7u8; 32]);
    }
    p
}

#[test]
fn one_address_registers_at_most_its_share() {
    let ws = workspace();
    let (index, addr) = Proc::index_server(ws.path());
    honest_peer_is_served(addr, "127.0.0.100", "warm-up");
    let (before, _) = index.rss_and_threads();
    // 20 connections from one address, 50,000 files with 255-byte names each.
    let results: Vec<_> = (0..4)
        .map(|t| {
            thread::spawn(move || {
                (0..5)
                    .map(|k| {
                        let mut c = RawIndexClient::connect_from("127.0.0.2", addr);
                        wire::send_all(&mut c.stream, &big_register(t * 5 + k, 50_000)).unwrap();
                        let reply: Reply = wire::recv_msg(&mut c.stream).unwrap();
                        (reply, c)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let results: Vec<(Reply, RawIndexClient)> = results.into_iter().flat_map(|t| t.join().unwrap()).collect();
    let accepted = results.iter().filter(|(r, _)| *r == Reply::Done { files: 50_000 }).count();
    assert_eq!(accepted, 5, "250,000 files per address: five registrations of 50,000");
    for (reply, _) in &results {
        match reply {
            Reply::Done { .. } => {}
            Reply::Error(e) => assert_eq!(
                e,
                "300000 files from your address is more than the limit of 250000 per address (over all its connections)"
            ),
            other => panic!("{other:?}"),
        }
    }
    honest_peer_is_served(addr, "127.0.0.3", "other-address");
    let (after, _) = index.rss_and_threads();
    eprintln!(
        "20 x 50,000 files of 255-byte names from one address: RSS {} -> {} MiB",
        before / MIB,
        after / MIB
    );
    assert!(after < before + 512 * MIB, "RSS grew from {} to {} MiB", before / MIB, after / MIB);
    // Nothing half-stored: every refused connection is not registered at all.
    for (reply, mut c) in results {
        if reply != (Reply::Done { files: 50_000 }) {
            assert_eq!(
                c.call(&Request::Unregister),
                Reply::Error("not registered (send register first)".into())
            );
        }
    }
}

#[test]
fn the_whole_index_has_a_limit_too() {
    let ws = workspace();
    let (_index, addr) = Proc::index_server_with(ws.path(), &["127.0.0.1", "0", "--max-files", "100"]);
    let files = |tag: &str, n: usize| -> Vec<FileInfo> {
        (0..n).map(|i| FileInfo { name: name(&format!("{tag}{i}")), size: 1, root: [0; 32] }).collect()
    };
    let mut a = RawIndexClient::connect_from("127.0.0.2", addr);
    assert_eq!(a.call(&Request::Register { port: 1, files: files("a", 60) }), Reply::Done { files: 60 });
    let mut b = RawIndexClient::connect_from("127.0.0.3", addr);
    assert_eq!(
        b.call(&Request::Register { port: 1, files: files("b", 60) }),
        Reply::Error("the index is full: it holds its limit of 100 files in all".into())
    );
    assert_eq!(b.call(&Request::Lookup { name: name("b0") }), Reply::NoPeers, "nothing half-stored");
    assert_eq!(b.call(&Request::Register { port: 1, files: files("b", 40) }), Reply::Done { files: 40 });
}

/// Sizes of log.log now.
fn log_len(dir: &std::path::Path) -> u64 {
    fs::metadata(dir.join("log.log")).map_or(0, |m| m.len())
}

#[test]
fn a_log_flood_is_cut_and_cannot_stall_the_server() {
    let ws = workspace();
    let log = ws.path().join("log.log");
    let args = ["127.0.0.1", "0", "-v", "--log-file", log.to_str().unwrap()];
    // -v copies every record to stderr, which nobody reads here: that pipe fills at once.
    let mut index = Proc::stderr_unread(env!("CARGO_BIN_EXE_indexing-server"), &args, ws.path());
    let addr: SocketAddr =
        index.expect(Stream::Out, "listening on ").trim_start_matches("listening on ").parse().unwrap();
    let _warm = honest_peer_is_served(addr, "127.0.0.100", "warm-up");
    let (rss_before, _) = index.rss_and_threads();
    let log_before = log_len(ws.path());

    // 8 connections listing with a 64 KiB pattern as fast as they can, for 5 s.
    let stop = Instant::now() + Duration::from_secs(5);
    let requests = Arc::new(AtomicUsize::new(0));
    let flooders: Vec<_> = (0..8)
        .map(|i| {
            let requests = Arc::clone(&requests);
            thread::spawn(move || {
                let mut c = RawIndexClient::connect_from(&format!("127.0.0.{}", 2 + i), addr);
                let request = Request::List { pattern: "\u{1b}[2J".repeat(20_000), limit: None };
                while Instant::now() < stop {
                    wire::send_msg(&mut c.stream, &request).unwrap();
                    assert_eq!(
                        wire::recv_msg::<Reply>(&mut c.stream).unwrap(),
                        Reply::ListEnd { truncated: false }
                    );
                    requests.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    // Meanwhile lookups from elsewhere; and the log file, sampled every half second.
    let mut c = RawIndexClient::connect_from("127.0.0.50", addr);
    let (mut slowest, mut lookups) = (Duration::ZERO, 0);
    let mut samples = Vec::new();
    let mut next_sample = Instant::now();
    while Instant::now() < stop {
        let t = Instant::now();
        match c.call(&Request::Lookup { name: name("warm-up.txt") }) {
            Reply::Peers(_) => {}
            r => panic!("{r:?}"),
        }
        slowest = slowest.max(t.elapsed());
        lookups += 1;
        if Instant::now() >= next_sample {
            samples.push(log_len(ws.path()));
            next_sample += Duration::from_millis(500);
        }
    }
    for f in flooders {
        f.join().unwrap();
    }
    let (rss_after, _) = index.rss_and_threads();
    let grew = log_len(ws.path()) - log_before;
    eprintln!(
        "{} listings of a 64 KiB pattern in 5 s: log.log +{} KiB, RSS {} -> {} MiB; {lookups} lookups meanwhile, the slowest {slowest:?}",
        requests.load(Ordering::Relaxed),
        grew >> 10,
        rss_before / MIB,
        rss_after / MIB
    );
    assert!(requests.load(Ordering::Relaxed) > 100, "the flood flowed");
    assert!(grew < 64 * MIB, "log.log grew by {grew} bytes");
    assert!(rss_after < rss_before + 128 * MIB, "RSS grew from {rss_before} to {rss_after}");
    // The log file kept receiving records all along, though stderr was stuck.
    let late = &samples[samples.len() / 2..];
    assert!(late.windows(2).any(|w| w[1] > w[0]), "log.log stopped growing: {samples:?}");
    let text = fs::read_to_string(&log).unwrap();
    assert!(text.lines().all(|l| l.len() < 1024), "a record was not clipped");
    assert!(!text.contains('\u{1b}'), "an escape character reached the log");
    assert!(text.contains("more log records suppressed"), "the flood is summarised");
    assert!(text.contains("\\u{1b}[2J"), "the pattern is shown, escaped");
}

/// Looks up `findable.txt` (an honest peer's: [`honest_peer_is_served`]) again and
/// again until `done`, each found; says how long the lookups took.
fn look_up_findable_until(c: &mut RawIndexClient, done: impl Fn() -> bool) -> String {
    let mut latencies = Vec::new();
    while !done() {
        let t = Instant::now();
        assert!(matches!(c.call(&Request::Lookup { name: name("findable.txt") }), Reply::Peers(_)));
        latencies.push(t.elapsed());
    }
    latencies.sort();
    let p = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    format!(
        "{} lookups beside them: p50 {:?}, p99 {:?}, max {:?}",
        latencies.len(),
        p(0.5),
        p(0.99),
        latencies.last().unwrap()
    )
}

#[test]
fn listings_with_pathological_patterns_leave_room_for_lookups() {
    let ws = workspace();
    let (_index, addr) = Proc::index_server(ws.path());
    // 200,000 names of 255 bytes, nearly all 'a'.
    let _sharers: Vec<RawIndexClient> = (0..4)
        .map(|k| {
            let mut c = RawIndexClient::connect_from("127.0.0.2", addr);
            let mut p = big_register(k, 50_000);
            for b in p.iter_mut().filter(|b| **b == b'x') {
                *b = b'a';
            }
            wire::send_all(&mut c.stream, &p).unwrap();
            assert_eq!(wire::recv_msg::<Reply>(&mut c.stream).unwrap(), Reply::Done { files: 50_000 });
            c
        })
        .collect();
    let _findable = honest_peer_is_served(addr, "127.0.0.3", "findable");
    // 8 listings at once, each looking for 200 'a's and a 'b' in every name, again and
    // again, while a lookup runs beside them.
    let stop = Instant::now() + Duration::from_secs(5);
    let listings = Arc::new(AtomicU64::new(0));
    let listers: Vec<_> = (0..8)
        .map(|i| {
            let listings = Arc::clone(&listings);
            thread::spawn(move || {
                let mut c = RawIndexClient::connect_from(&format!("127.0.0.{}", 10 + i), addr);
                let request = Request::List { pattern: format!("{}b", "a".repeat(200)), limit: None };
                while Instant::now() < stop {
                    wire::send_msg(&mut c.stream, &request).unwrap();
                    loop {
                        match wire::recv_msg::<Reply>(&mut c.stream).unwrap() {
                            Reply::ListEnd { .. } => break,
                            Reply::ListChunk(e) => {
                                assert!(e.is_empty() || e.iter().all(|e| e.name.as_str().contains('b')))
                            }
                            other => panic!("{other:?}"),
                        }
                    }
                    listings.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let mut c = RawIndexClient::connect_from("127.0.0.50", addr);
    let waits = look_up_findable_until(&mut c, || Instant::now() >= stop);
    for l in listers {
        l.join().unwrap();
    }
    // Printed, not asserted (timings depend on the machine): the issue asks that no
    // lookup wait more than 50 ms. The bound on the lock is tested in the registry.
    eprintln!(
        "{} full listings of 200,000 names with a pathological pattern; {waits}",
        listings.load(Ordering::Relaxed),
    );
    assert!(listings.load(Ordering::Relaxed) >= 8, "every listing finished at least once");
}

/// A peer that swaps 200,000 files for 200,000 others and back (an `Update`,
/// the longest list one request may carry) gets each swap done, and lookups beside it
/// are answered all along; its list ends as its last update said. How long the lookups
/// waited is printed, not asserted (it depends on the machine): a swap used to hold the
/// registry's lock whole, 140 ms on the benchmark's machine, and a lookup waited that
/// long; now it is made 2,048 files a step, and the bound on a step is tested in the
/// registry.
#[test]
fn registrations_of_200000_files_leave_room_for_lookups() {
    let ws = workspace();
    let (_index, addr) = Proc::index_server(ws.path());
    let _findable = honest_peer_is_served(addr, "127.0.0.3", "findable");
    let list = |tag: &str| -> Vec<FileInfo> {
        (0..200_000)
            .map(|i| FileInfo { name: name(&format!("{tag}-{i:06}")), size: 1, root: [2; 32] })
            .collect()
    };
    let mut big = RawIndexClient::connect_from("127.0.0.2", addr);
    assert_eq!(big.call(&Request::Register { port: 4000, files: list("a") }), Reply::Done { files: 200_000 });
    let swaps = Arc::new(AtomicUsize::new(0));
    let swapper = {
        let swaps = Arc::clone(&swaps);
        thread::spawn(move || {
            for tag in ["b", "a"] {
                assert_eq!(big.call(&Request::Update { files: list(tag) }), Reply::Done { files: 200_000 });
                swaps.fetch_add(1, Ordering::SeqCst);
            }
            big
        })
    };
    let mut c = RawIndexClient::connect_from("127.0.0.50", addr);
    let waits = look_up_findable_until(&mut c, || swapper.is_finished());
    let _big = swapper.join().unwrap();
    eprintln!("{} swaps of 200,000 files; {waits}", swaps.load(Ordering::SeqCst));
    for (n, found) in [("a-000000", true), ("a-199999", true), ("b-000000", false), ("b-123456", false)] {
        let reply = c.call(&Request::Lookup { name: name(n) });
        assert_eq!(matches!(reply, Reply::Peers(_)), found, "{n}: {reply:?}");
    }
}

#[test]
fn password_guessing_is_throttled_across_connections_and_addresses() {
    let ws = workspace();
    let (_index, addr) = common::index_server_with_ann(ws.path());

    // 300 connections from 5 addresses guess ann's password for 4 s.
    let seconds = 4;
    let stop = Instant::now() + Duration::from_secs(seconds);
    let (wrong, throttled) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let guessers: Vec<_> = (0..300)
        .map(|i| {
            let (wrong, throttled) = (Arc::clone(&wrong), Arc::clone(&throttled));
            thread::spawn(move || {
                let mut c = RawIndexClient::connect_from(&format!("127.0.0.{}", 2 + i % 5), addr);
                while Instant::now() < stop {
                    assert!(matches!(
                        c.call(&Request::Login { user: "ann".into() }),
                        Reply::Challenge { .. }
                    ));
                    match c.call(&Request::Proof { proof: rand::random() }) {
                        Reply::Error(e) if e == "wrong user name or password" => {
                            wrong.fetch_add(1, Ordering::Relaxed)
                        }
                        Reply::Error(e) if e.starts_with("too many failed logins") => {
                            throttled.fetch_add(1, Ordering::Relaxed)
                        }
                        other => panic!("{other:?}"),
                    };
                }
            })
        })
        .collect();
    // Meanwhile ann logs in, from her own address, at once.
    let a = folder(ws.path(), "a", &[]);
    let port = addr.port().to_string();
    let args = ["127.0.0.1", port.as_str(), "0", a.to_str().unwrap(), "--user", "ann"];
    let mut ann = Proc::start_with_env(
        env!("CARGO_BIN_EXE_peer"),
        &args,
        ws.path(),
        &[("PEERDEX_PASSWORD", std::ffi::OsStr::new("s3cret"))],
    );
    ann.expect(Stream::Out, "logged in as ann");
    for g in guessers {
        g.join().unwrap();
    }
    let (wrong, throttled) = (wrong.load(Ordering::Relaxed), throttled.load(Ordering::Relaxed));
    eprintln!(
        "300 connections guessing for {seconds} s: {wrong} guesses checked, {throttled} refused unchecked"
    );
    // About 10 a second for the user, and a first guess free per address: an upper
    // bound, so a slow machine can only do better.
    assert!(wrong <= 10 * seconds as usize + 5 + 5, "{wrong} guesses were checked in {seconds} s");
    assert!(throttled > 0);
}

#[test]
fn an_unknown_user_gets_the_same_challenge_after_a_restart() {
    let ws = workspace();
    let users = ws.path().join("users");
    common::adduser(ws.path(), &users, "ann", "s3cret");
    let salt = |user: &str| {
        let (mut index, addr) =
            Proc::index_server_with(ws.path(), &["127.0.0.1", "0", "--users", users.to_str().unwrap()]);
        let mut c = RawIndexClient::connect(addr);
        let reply = c.call(&Request::Login { user: user.into() });
        index.kill();
        match reply {
            Reply::Challenge { salt, rounds, .. } => (salt, rounds),
            other => panic!("{other:?}"),
        }
    };
    let (nobody, rounds) = salt("nobody");
    assert_eq!(salt("nobody"), (nobody.clone(), rounds), "the same after a restart");
    let (ann, ann_rounds) = salt("ann");
    assert_eq!((nobody.len(), rounds), (ann.len(), ann_rounds), "looks like a real one");
    assert_ne!(salt("somebody").0, nobody);
}

#[test]
fn a_slow_handshake_is_refused_like_any_other_slow_frame() {
    // Kept from the original slowloris test, at another address: the handshake's own
    // small maximum refuses a long one at once.
    let ws = workspace();
    let (_index, addr) = Proc::index_server(ws.path());
    let mut s = connect_from("127.0.0.2", addr);
    s.write_all(&5000u32.to_be_bytes()).unwrap();
    let welcome: Welcome = wire::recv_msg(&mut s).unwrap();
    assert!(welcome.refusal.unwrap().contains("frame of 5000 bytes exceeds the maximum of 4096"));
    let mut ok = connect_from("127.0.0.2", addr);
    wire::send_msg(&mut ok, &Hello { version: PROTOCOL_VERSION, service: Service::Index }).unwrap();
    ok.set_read_timeout(Some(TIMEOUT)).unwrap();
    let welcome: Welcome = wire::recv_msg(&mut ok).unwrap();
    assert_eq!(welcome.refusal, None);
}

/// Every reply to a `List` of `pattern`, to its end.
fn listing(c: &mut RawIndexClient, pattern: &str) -> Vec<Reply> {
    wire::send_msg(&mut c.stream, &Request::List { pattern: pattern.into(), limit: None }).unwrap();
    let mut replies = Vec::new();
    loop {
        let reply: Reply = wire::recv_msg(&mut c.stream).unwrap();
        let end = !matches!(reply, Reply::ListChunk(_));
        replies.push(reply);
        if end {
            return replies;
        }
    }
}

#[test]
fn a_listing_for_text_no_name_can_hold_is_empty_and_the_connection_goes_on() {
    // With PEERDEX_TEST_STORE=1, on PostgreSQL too, which refuses NUL in any text (it
    // answered "index store unavailable" to such a pattern).
    let ws = workspace();
    let (_index, addr) = Proc::index_server(ws.path());
    let _honest = honest_peer_is_served(addr, "127.0.0.1", "a b");
    let mut c = RawIndexClient::connect_from("127.0.0.2", addr);
    for pattern in ["a\0b", "\0", "a\\b", "\u{202e}", "a\u{2028}"] {
        assert_eq!(listing(&mut c, pattern), [Reply::ListEnd { truncated: false }], "{pattern:?}");
    }
    match &listing(&mut c, "A B")[..] {
        [Reply::ListChunk(entries), Reply::ListEnd { truncated: false }] => {
            assert_eq!(entries.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["a b.txt"])
        }
        other => panic!("{other:?}"),
    }
}
