//! End-to-end tests: the real `indexing-server` and `peer` binaries on loopback, driven
//! through stdin the way a user's script drives them.

mod common;

use std::fs;

use common::{
    Misbehaviour, Proc, RawIndexClient, Stream, entries, fake_sender, folder, random_bytes, wait_for,
    workspace,
};
use peerdex::wire::{Reply, Request};

#[test]
fn two_peers_register_list_and_download_byte_identical() {
    let ws = workspace();
    let big = random_bytes(5 * 1024 * 1024 + 123);
    let a =
        folder(ws.path(), "a", &[("hello world.txt", b"hello, world\n"), ("empty", b""), ("big.bin", &big)]);
    let b = folder(ws.path(), "b", &[("mine.txt", b"b's own file")]);

    let (_index, index_addr) = Proc::index_server(ws.path());
    let (mut pa, _) = Proc::registered_peer(index_addr, &a, 3);

    let (mut pb, _) = Proc::registered_peer(index_addr, &b, 1);
    let listing = pb.list("");
    assert_eq!(
        listing,
        [
            format!("big.bin\t{} bytes\t1 peer", big.len()),
            "empty\t0 bytes\t1 peer".to_string(),
            "hello world.txt\t13 bytes\t1 peer".to_string(),
        ],
        "B sees A's files, not its own"
    );
    assert_eq!(pa.list(""), ["mine.txt\t12 bytes\t1 peer"]);

    pb.send("download hello world.txt");
    pb.send("download empty");
    pb.send("download big.bin");
    // Downloads run in parallel and finish in any order.
    let mut done: Vec<String> = (0..3).map(|_| pb.expect(Stream::Out, "downloaded ")).collect();
    done.sort();
    for (line, (name, size)) in
        done.iter().zip([("big.bin", big.len()), ("empty", 0), ("hello world.txt", 13)])
    {
        assert!(line.starts_with(&format!("downloaded {name} ({size} bytes) from 127.0.0.1:")), "{line}");
    }
    // Once downloaded, B shares them too, at once: A sees them at B.
    assert_eq!(
        pa.list(""),
        [
            format!("big.bin\t{} bytes\t1 peer", big.len()),
            "empty\t0 bytes\t1 peer".to_string(),
            "hello world.txt\t13 bytes\t1 peer".to_string(),
            "mine.txt\t12 bytes\t1 peer".to_string(),
        ]
    );

    let status = pb.finish();
    assert!(status.success(), "exit status {status:?}\n{}", pb.dump());
    for name in ["hello world.txt", "empty", "big.bin"] {
        assert_eq!(fs::read(a.join(name)).unwrap(), fs::read(b.join(name)).unwrap(), "{name} differs");
    }
    assert_eq!(entries(&b), ["big.bin", "empty", "hello world.txt", "mine.txt"], "no temporary left");
    assert!(pb.lines(Stream::Err).is_empty(), "no errors: {:?}", pb.lines(Stream::Err));
}

#[test]
fn a_killed_peer_leaves_the_listing() {
    let ws = workspace();
    let a = folder(ws.path(), "a", &[("only-at-a.txt", b"a")]);
    let b = folder(ws.path(), "b", &[]);
    let (_index, index_addr) = Proc::index_server(ws.path());
    let (mut pa, _) = Proc::registered_peer(index_addr, &a, 1);
    let (mut pb, _) = Proc::peer(index_addr, &b);
    assert_eq!(pb.list(""), ["only-at-a.txt\t1 byte\t1 peer"]);

    pa.kill(); // SIGKILL: no chance to unregister
    wait_for("A's files to leave the listing", || pb.list("").is_empty());
    pb.send("download only-at-a.txt");
    pb.expect(Stream::Err, "error: cannot download \"only-at-a.txt\": no registered peer shares it");
}

#[test]
fn downloading_a_name_nobody_shares_fails_with_status_1() {
    let ws = workspace();
    let b = folder(ws.path(), "b", &[]);
    let (_index, index_addr) = Proc::index_server(ws.path());
    let (mut pb, _) = Proc::peer(index_addr, &b);
    pb.send("download no such file.txt");
    let status = pb.finish();
    assert_eq!(status.code(), Some(1), "{}", pb.dump());
    assert_eq!(
        pb.lines(Stream::Err),
        ["error: cannot download \"no such file.txt\": no registered peer shares it"]
    );
    assert!(entries(&b).is_empty());
}

#[test]
fn a_successful_script_exits_0_and_bad_commands_do_not_stop_the_loop() {
    let ws = workspace();
    let a = folder(ws.path(), "a", &[("x", b"x")]);
    let (_index, index_addr) = Proc::index_server(ws.path());
    let (mut ok, _) = Proc::peer(index_addr, &a);
    ok.send("register");
    ok.send("help");
    ok.send("get_files_list");
    ok.send("unregister");
    let status = ok.finish();
    assert!(status.success(), "{}", ok.dump());
    assert!(ok.lines(Stream::Out).iter().any(|l| l.contains("download NAME")), "help was printed");

    let (mut bad, _) = Proc::peer(index_addr, &a);
    bad.send("frobnicate");
    bad.send("register please");
    bad.send("download");
    bad.send("unregister"); // not registered
    bad.send_bytes(b"\xff\xfe\n");
    bad.send("register");
    let status = bad.finish();
    assert_eq!(status.code(), Some(1));
    assert_eq!(
        bad.lines(Stream::Err),
        [
            "error: unknown command \"frobnicate\" (type help for the list)",
            "error: register takes no arguments",
            "error: download needs a file name, as in: download notes.txt",
            "error: unregister failed: the index server says: not registered (send register first)",
            "error: line is not valid UTF-8; ignored",
        ]
    );
    assert!(bad.lines(Stream::Out).iter().any(|l| l.starts_with("registered 1 file ")), "the loop went on");
}

#[test]
fn an_existing_file_is_never_overwritten() {
    let ws = workspace();
    let a = folder(ws.path(), "a", &[("same.txt", b"from a")]);
    let b = folder(ws.path(), "b", &[("same.txt", b"b's precious version")]);
    let (_index, index_addr) = Proc::index_server(ws.path());
    let (mut pa, _) = Proc::peer(index_addr, &a);
    pa.send("register");
    pa.expect(Stream::Out, "registered");
    let (mut pb, _) = Proc::peer(index_addr, &b);
    pb.send("download same.txt");
    let status = pb.finish();
    assert_eq!(status.code(), Some(1));
    assert!(pb.lines(Stream::Err)[0].contains("already in the shared folder"), "{}", pb.dump());
    assert_eq!(fs::read(b.join("same.txt")).unwrap(), b"b's precious version");
}

#[test]
fn delete_and_update_reach_the_other_peers() {
    let ws = workspace();
    let a = folder(ws.path(), "a", &[("keep", b"1"), ("drop", b"22")]);
    let b = folder(ws.path(), "b", &[]);
    let (_index, index_addr) = Proc::index_server(ws.path());
    let (mut pa, _) = Proc::registered_peer(index_addr, &a, 2);
    let (mut pb, _) = Proc::peer(index_addr, &b);
    assert_eq!(pb.list("").len(), 2);

    pa.send("delete drop");
    pa.expect(Stream::Out, "deleted drop");
    assert!(!a.join("drop").exists());
    assert_eq!(pb.list(""), ["keep\t1 byte\t1 peer"]);

    fs::write(a.join("new one"), b"333").unwrap();
    pa.send("update");
    pa.expect(Stream::Out, "updated: 2 files registered");
    assert_eq!(pb.list(""), ["keep\t1 byte\t1 peer", "new one\t3 bytes\t1 peer"]);
    assert_eq!(pb.list("NEW"), ["new one\t3 bytes\t1 peer"], "pattern ignores case");
    pb.send("get_files_list --limit 1");
    assert_eq!(
        pb.read_until(Stream::Out, " at other peers"),
        ["keep\t1 byte\t1 peer", "1 file at other peers (more not shown)"]
    );

    pa.send("delete drop");
    pa.expect(Stream::Err, "error: cannot delete \"drop\": no such file in the shared folder");
    pa.send("unregister");
    pa.expect(Stream::Out, "unregistered");
    assert!(pb.list("").is_empty());
}

#[test]
fn a_failing_peer_is_skipped_for_the_next_one() {
    let ws = workspace();
    let content = random_bytes(100_000);
    let a = folder(ws.path(), "a", &[("f.bin", &content)]);
    let b = folder(ws.path(), "b", &[]);
    let (_index, index_addr) = Proc::index_server(ws.path());
    let (mut pa, _) = Proc::peer(index_addr, &a);
    pa.send("register");
    pa.expect(Stream::Out, "registered");

    // A fake peer advertises the same file on a port where nobody listens.
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let info = common::info("f.bin", &content);
    let mut fake = RawIndexClient::connect(index_addr);
    assert_eq!(
        fake.call(&Request::Register { port: dead_port, files: vec![info] }),
        Reply::Done { files: 1 }
    );

    let (mut pb, _) = Proc::peer(index_addr, &b);
    assert_eq!(pb.list(""), [format!("f.bin\t{} bytes\t2 peers", content.len())]);
    pb.send("download f.bin");
    pb.expect(Stream::Out, "downloaded f.bin");
    assert!(pb.finish().success(), "{}", pb.dump());
    assert_eq!(fs::read(b.join("f.bin")).unwrap(), content);
    for line in pb.lines(Stream::Err) {
        assert!(line.contains(&format!("from 127.0.0.1:{dead_port}: cannot connect")), "{line}");
    }
}

#[test]
fn bad_arguments_are_usage_errors() {
    let ws = workspace();
    for args in [&["127.0.0.1"][..], &["127.0.0.1", "70000"], &["127.0.0.1", "0", "--max-files", "x"], &[]] {
        let mut p = Proc::start(env!("CARGO_BIN_EXE_indexing-server"), args, ws.path());
        let status = p.finish();
        assert_eq!(status.code(), Some(2), "{args:?}\n{}", p.dump());
        assert!(p.lines(Stream::Err)[0].starts_with("error:"), "{args:?}\n{}", p.dump());
    }
    // A lease so short that servers would take each other for dead, or absurdly long:
    // refused before any database is asked, naming the range.
    for lease in ["0.01", "100000"] {
        let args = ["127.0.0.1", "0", "--store", "postgres://nobody@127.0.0.1:1/none", "--lease", lease];
        let mut p = Proc::start(env!("CARGO_BIN_EXE_indexing-server"), &args, ws.path());
        assert_eq!(p.finish().code(), Some(2), "{}", p.dump());
        let error = p.lines(Stream::Err).join("\n");
        assert!(
            error.contains(&format!("a lease of {lease} s is out of range: it must be 1 to 86400 seconds")),
            "{error}"
        );
    }
    let mut p = Proc::start(env!("CARGO_BIN_EXE_peer"), &["127.0.0.1", "1"], ws.path());
    assert_eq!(p.finish().code(), Some(2));
}

#[test]
fn the_index_takes_host_names_and_a_failed_start_leaves_no_log() {
    let ws = workspace();
    // A name that does not resolve, then an address that is not ours: clear errors,
    // status 1, and no log file, since the server never listened.
    for (host, why) in
        [("no-such-host.invalid", "cannot resolve"), ("192.0.2.1", "cannot listen on 192.0.2.1")]
    {
        let mut p = Proc::start(env!("CARGO_BIN_EXE_indexing-server"), &[host, "0"], ws.path());
        assert_eq!(p.finish().code(), Some(1), "{}", p.dump());
        assert!(p.lines(Stream::Err)[0].starts_with(&format!("error: {why}")), "{}", p.dump());
        assert!(!ws.path().join("log.log").exists(), "a failed start left a log file");
    }
    // localhost is a name like any other: the server listens on what it resolves to,
    // and a peer that names it the same way finds it.
    let (_index, addr) = Proc::index_server_on(ws.path(), "localhost");
    assert!(addr.ip().is_loopback(), "{addr}");
    let a = folder(ws.path(), "a", &[("x.txt", b"x")]);
    let port = addr.port().to_string();
    let mut p = Proc::start(
        env!("CARGO_BIN_EXE_peer"),
        &["localhost", port.as_str(), "0", a.to_str().unwrap()],
        ws.path(),
    );
    p.expect(Stream::Out, "serving ");
    p.send("register");
    p.expect(Stream::Out, "registered 1 file with the index server");
}

#[test]
fn a_missing_folder_or_index_is_a_clear_error() {
    let ws = workspace();
    let (_index, index_addr) = Proc::index_server(ws.path());
    let (ip, port) = (index_addr.ip().to_string(), index_addr.port().to_string());
    let missing = ws.path().join("missing");
    let mut p = Proc::start(
        env!("CARGO_BIN_EXE_peer"),
        &[ip.as_ref(), port.as_ref(), "0", missing.to_str().unwrap()],
        ws.path(),
    );
    assert_eq!(p.finish().code(), Some(1));
    assert!(
        p.lines(Stream::Err)[0].starts_with(&format!("error: cannot share folder {}", missing.display())),
        "{}",
        p.dump()
    );

    // A peer's file server is not an index server: the handshake says so.
    let a = folder(ws.path(), "a", &[]);
    let (_pa, files_addr) = Proc::peer(index_addr, &a);
    let port = files_addr.port().to_string();
    let mut p = Proc::start(
        env!("CARGO_BIN_EXE_peer"),
        &[ip.as_ref(), port.as_ref(), "0", a.to_str().unwrap()],
        ws.path(),
    );
    assert_eq!(p.finish().code(), Some(1));
    assert!(
        p.lines(Stream::Err).iter().any(|l| l.contains("this is a peer's file server, not an index server")),
        "{}",
        p.dump()
    );
}

#[test]
fn the_server_logs_requests_to_its_log_file() {
    let ws = workspace();
    let a = folder(ws.path(), "a", &[("x", b"x")]);
    let (_index, index_addr) = Proc::index_server(ws.path());
    let (mut pa, _) = Proc::peer(index_addr, &a);
    pa.send("register");
    pa.send("download nothing");
    assert_eq!(pa.finish().code(), Some(1));
    wait_for("the disconnect to be logged", || {
        fs::read_to_string(ws.path().join("log.log")).unwrap().contains("disconnected")
    });
    let log = fs::read_to_string(ws.path().join("log.log")).unwrap();
    for want in [
        "connected",
        "register port",
        "lookup \"nothing\" -> no registered peer shares it",
        "registration is removed",
    ] {
        assert!(log.contains(want), "{want:?} not in the log:\n{log}");
    }
}

#[test]
fn everything_works_over_ipv6_loopback() {
    let ws = workspace();
    let a = folder(ws.path(), "a", &[("six.txt", b"over IPv6")]);
    let b = folder(ws.path(), "b", &[]);
    let (_index, index_addr) = Proc::index_server_on(ws.path(), "::1");
    assert_eq!(index_addr.ip().to_string(), "::1");
    let (mut pa, files_addr) = Proc::peer(index_addr, &a);
    assert_eq!(files_addr.ip().to_string(), "::1", "a loopback index means a loopback file server");
    pa.send("register");
    pa.expect(Stream::Out, "registered 1 file ");
    let (mut pb, _) = Proc::peer(index_addr, &b);
    pb.send("download six.txt");
    let line = pb.expect(Stream::Out, "downloaded six.txt");
    assert_eq!(line, format!("downloaded six.txt (9 bytes) from {files_addr}"));
    assert!(pb.finish().success());
    assert_eq!(fs::read(b.join("six.txt")).unwrap(), b"over IPv6");
}

#[test]
fn an_unreachable_index_is_a_clear_error() {
    let ws = workspace();
    let a = folder(ws.path(), "a", &[]);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let port = closed.port().to_string();
    let mut p = Proc::start(
        env!("CARGO_BIN_EXE_peer"),
        &["127.0.0.1", port.as_str(), "0", a.to_str().unwrap()],
        ws.path(),
    );
    assert_eq!(p.finish().code(), Some(1));
    let errors = p.lines(Stream::Err);
    assert!(
        errors[0].starts_with(&format!("error: cannot connect to the index server {closed}: ")),
        "{errors:?}"
    );
    assert!(p.lines(Stream::Out).is_empty(), "nothing is served without an index");
}

/// A file of one piece is checked by a download's lone hasher, which also writes it (no
/// writer thread): a corrupt copy is caught, named and not kept, and with an honest peer
/// beside the liar the download ends with the right bytes.
#[test]
fn a_corrupt_file_of_one_piece_is_caught_and_the_honest_copy_kept() {
    let ws = workspace();
    let content = random_bytes(10_000);
    let b = folder(ws.path(), "b", &[]);
    let (_index, index_addr) = Proc::index_server(ws.path());
    let info = common::info("one.bin", &content);
    let (mut pb, _) = Proc::peer(index_addr, &b);
    let liar = fake_sender(content.clone(), Misbehaviour::Corrupt);
    let registration = common::register_fake(index_addr, liar.port(), info.clone());
    pb.send("download one.bin");
    let errors = pb.read_until(Stream::Err, "the only peer that shares it failed");
    let prefix = format!("error: cannot download \"one.bin\" from {liar}: piece 0");
    assert!(errors.iter().any(|e| e.starts_with(&prefix)), "no {prefix:?} in {errors:#?}");
    assert!(!b.join("one.bin").exists());

    let a = folder(ws.path(), "a", &[("one.bin", &content)]);
    let (_pa, _) = Proc::registered_peer(index_addr, &a, 1);
    pb.send("download one.bin");
    pb.expect(Stream::Out, "downloaded one.bin (10000 bytes)");
    assert_eq!(fs::read(b.join("one.bin")).unwrap(), content);
    drop(registration);
}

/// Each kind of lying sender, alone, is caught and named: one that corrupts a piece
/// (at that piece), one that stops short, one that sends more than it announced. With
/// an honest peer among them, the download succeeds.
#[test]
fn corrupt_short_and_long_transfers_are_rejected_and_the_next_peer_tried() {
    let ws = workspace();
    let content = random_bytes(64 * 1024);
    let b = folder(ws.path(), "b", &[("unrelated", b"keep me")]);
    let (_index, index_addr) = Proc::index_server(ws.path());
    let info = common::info("f.bin", &content);
    let (mut pb, _) = Proc::peer(index_addr, &b);
    let mut fakes = Vec::new();
    for how in [Misbehaviour::Corrupt, Misbehaviour::Short, Misbehaviour::Long] {
        let addr = fake_sender(content.clone(), how);
        let mut registration = RawIndexClient::connect(index_addr);
        let reply = registration.call(&Request::Register { port: addr.port(), files: vec![info.clone()] });
        assert_eq!(reply, Reply::Done { files: 1 });
        pb.send("download f.bin");
        let errors = pb.read_until(Stream::Err, "the only peer that shares it failed");
        let why = match how {
            Misbehaviour::Corrupt => "piece ",
            Misbehaviour::Short => "the peer closed the connection",
            _ => "it sent a malformed reply: ",
        };
        let prefix = format!("error: cannot download \"f.bin\" from {addr}: {why}");
        assert!(errors.iter().any(|e| e.starts_with(&prefix)), "no {prefix:?} in {errors:#?}");
        assert_eq!(registration.call(&Request::Unregister), Reply::Done { files: 0 });
        fakes.push(addr);
    }
    // Nothing under the final name, nothing else touched; only verified pieces are
    // ever kept.
    let left = entries(&b);
    assert!(left.iter().all(|n| n == "unrelated" || n.starts_with(".peerdex-part-")), "{left:?}");

    // With one honest peer among the liars, the download succeeds.
    let a = folder(ws.path(), "a", &[("f.bin", &content)]);
    let (_pa, _) = Proc::registered_peer(index_addr, &a, 1);
    let _liars: Vec<RawIndexClient> =
        fakes.iter().map(|f| common::register_fake(index_addr, f.port(), info.clone())).collect();
    pb.send("download f.bin");
    pb.expect(Stream::Out, "downloaded f.bin");
    assert_eq!(pb.finish().code(), Some(1), "the first downloads' failures still count");
    assert_eq!(fs::read(b.join("f.bin")).unwrap(), content);
    assert_eq!(entries(&b), ["f.bin", "unrelated"]);
}
