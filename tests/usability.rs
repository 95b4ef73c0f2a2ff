//! What a new user runs into, with the real binaries: an idle peer that keeps busy, a
//! register that loses a download, names with spaces at their ends, options in the
//! wrong place, a login that asks for a password it does not need, log records lost
//! at exit.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::time::Duration;

use common::{Proc, RawIndexClient, Stream, folder, workspace};
use peerdex::name::SharePath;
use peerdex::wire::{Reply, Request};

#[test]
fn an_idle_watching_peer_uses_no_cpu() {
    let ws = workspace();
    let a = folder(ws.path(), "a", &[]);
    for i in 0..5000 {
        fs::write(a.join(format!("file-{i:04}.txt")), format!("content {i}")).unwrap();
    }
    let (_index, index_addr) = Proc::index_server(ws.path());
    let (pa, _) = Proc::registered_peer(index_addr, &a, 5000);
    // Whatever the registration stirred up (debounce, the rule for files still being
    // written) settles: wait until a whole second passes without a tick of CPU.
    let deadline = std::time::Instant::now() + common::TIMEOUT;
    loop {
        let before = pa.cpu_seconds();
        std::thread::sleep(Duration::from_secs(1)); // the quiet second being looked for
        if pa.cpu_seconds() == before {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the peer never goes quiet");
    }
    let before = pa.cpu_seconds();
    std::thread::sleep(Duration::from_secs(10)); // the idle period being measured
    let used = pa.cpu_seconds() - before;
    eprintln!("an idle peer watching 5,000 files used {used:.2} s of CPU in 10 s");
    assert!(used < 0.1, "an idle peer used {used:.2} s of CPU in 10 s");
}

#[test]
fn downloads_between_registrations_are_never_lost_from_the_index() {
    let ws = workspace();
    let files: Vec<(String, Vec<u8>)> =
        (0..30).map(|i| (format!("f{i:02}.txt"), format!("file {i}").into_bytes())).collect();
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, c)| (n.as_str(), c.as_slice())).collect();
    let a = folder(ws.path(), "a", &refs);
    let (_index, index_addr) = Proc::index_server(ws.path());
    let (_pa, _) = Proc::registered_peer(index_addr, &a, 30);
    let b = folder(ws.path(), "b", &[]);
    let port = index_addr.port().to_string();
    // Without watching, only the commands (and the downloads' own announcements)
    // change what the index has.
    let args = ["127.0.0.1", port.as_str(), "0", b.to_str().unwrap(), "--no-watch"];
    let mut pb = Proc::start(env!("CARGO_BIN_EXE_peer"), &args, ws.path());
    let b_files = pb
        .expect(Stream::Out, "serving ")
        .rsplit(" on ")
        .next()
        .unwrap()
        .parse::<std::net::SocketAddr>()
        .unwrap();
    pb.send("register");
    pb.expect(Stream::Out, "registered 0 files");
    for (i, (name, _)) in files.iter().enumerate() {
        pb.send(&format!("download {name}"));
        if i % 3 == 2 {
            pb.send("register");
        }
    }
    for _ in 0..30 {
        pb.expect(Stream::Out, "downloaded ");
    }
    pb.send("register");
    pb.expect(Stream::Out, "registered 30 files");
    // Every file B downloaded is at B in the index, after all those registrations.
    let mut c = RawIndexClient::connect(index_addr);
    for (name, _) in &files {
        match c.call(&Request::Lookup { name: SharePath::parse(name).unwrap() }) {
            Reply::Peers(hits) => {
                assert!(hits.iter().any(|h| h.addr == b_files), "{name} is not at B: {hits:?}")
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn quoted_names_keep_the_spaces_at_their_ends() {
    let ws = workspace();
    let a = folder(ws.path(), "a", &[(" lead.txt", b"lead"), ("trail.txt ", b"trail"), ("a b", b"ab")]);
    let (_index, index_addr) = Proc::index_server(ws.path());
    let (_pa, _) = Proc::registered_peer(index_addr, &a, 3);
    let b = folder(ws.path(), "b", &[]);
    let (mut pb, _) = Proc::peer(index_addr, &b);
    pb.send("download \" lead.txt\"");
    pb.expect(Stream::Out, "downloaded  lead.txt (4 bytes)");
    pb.send("download 'trail.txt '");
    pb.expect(Stream::Out, "downloaded trail.txt  (5 bytes)");
    pb.send("download a b");
    pb.expect(Stream::Out, "downloaded a b (2 bytes)");
    pb.send("delete 'a b'");
    pb.expect(Stream::Out, "deleted a b");
    assert_eq!(fs::read(b.join(" lead.txt")).unwrap(), b"lead");
    assert_eq!(fs::read(b.join("trail.txt ")).unwrap(), b"trail");
    assert!(!b.join("a b").exists());
    pb.send("download \"unclosed");
    pb.expect(Stream::Err, "error: unmatched quote");
}

#[test]
fn options_may_come_anywhere_on_the_line() {
    let ws = workspace();
    let a = folder(ws.path(), "a", &[("big-1", b"1"), ("big-2", b"2"), ("small", b"3")]);
    let (_index, index_addr) = Proc::index_server(ws.path());
    let (_pa, _) = Proc::registered_peer(index_addr, &a, 3);
    let b = folder(ws.path(), "b", &[]);
    let (mut pb, _) = Proc::peer(index_addr, &b);
    pb.send("get_files_list big --limit 1");
    assert_eq!(
        pb.read_until(Stream::Out, " at other peers"),
        ["big-1\t1 byte\t1 peer", "1 file at other peers (more not shown)"]
    );
    assert_eq!(pb.list("--limit=5 BIG"), ["big-1\t1 byte\t1 peer", "big-2\t1 byte\t1 peer"]);
}

#[test]
fn login_asks_the_server_before_it_asks_for_a_password() {
    let ws = workspace();
    let (_index, index_addr) = Proc::index_server(ws.path());
    let a = folder(ws.path(), "a", &[]);
    // No password anywhere: had the peer asked for one first, it would fail for that.
    let (mut pa, _) = Proc::peer(index_addr, &a);
    pa.send("login ann");
    pa.expect(
        Stream::Err,
        "error: login failed: the index server says: this server has no accounts: no login is needed",
    );
}

#[test]
fn the_last_log_records_are_written_at_exit() {
    let ws = workspace();
    let (_index, index_addr) = Proc::index_server(ws.path());
    let a = folder(ws.path(), "a", &[]);
    let port = index_addr.port().to_string();
    let args = ["127.0.0.1", port.as_str(), "0", a.to_str().unwrap(), "-v"];
    let mut p = Proc::start_with_env(
        env!("CARGO_BIN_EXE_peer"),
        &args,
        ws.path(),
        &[("RUST_BACKTRACE", OsStr::new("0"))],
    );
    p.expect(Stream::Out, "serving ");
    assert_eq!(p.finish().code(), Some(0));
    let last = p.lines(Stream::Err).pop().unwrap_or_default();
    assert!(last.ends_with("[INFO] exiting with status 0"), "{}", p.dump());
}
