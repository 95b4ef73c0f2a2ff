//! The design's extensions, with the real binaries: folder watching, least-loaded peer
//! choice, resumed downloads, login.

mod common;

use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Proc, Stream, adduser, folder, wait_for, workspace};

#[test]
fn a_watched_folder_reaches_the_index_by_itself() {
    let ws = workspace();
    let a = folder(ws.path(), "a", &[("first.txt", b"1")]);
    let b = folder(ws.path(), "b", &[]);
    let (_index, index_addr) = Proc::index_server(ws.path());
    let (_pa, _) = Proc::registered_peer(index_addr, &a, 1);
    let (mut pb, _) = Proc::peer(index_addr, &b);
    assert_eq!(pb.list(""), ["first.txt\t1 byte\t1 peer"]);

    // A file copied in appears in the other peer's listing; nobody types a command.
    let outside = ws.path().join("copy-me.txt");
    fs::write(&outside, b"copied").unwrap();
    let t = Instant::now();
    fs::copy(&outside, a.join("copied.txt")).unwrap();
    wait_for("the copy to be listed", || pb.list("copied") == ["copied.txt\t6 bytes\t1 peer"]);
    eprintln!("a new file was listed after {:?} (the issue asks for under 2 s)", t.elapsed());

    // Renamed: the old name goes, the new one comes.
    fs::rename(a.join("copied.txt"), a.join("renamed.txt")).unwrap();
    wait_for("the rename to be listed", || {
        pb.list("") == ["first.txt\t1 byte\t1 peer", "renamed.txt\t6 bytes\t1 peer"]
    });

    // Removed: gone from the listing.
    let t = Instant::now();
    fs::remove_file(a.join("renamed.txt")).unwrap();
    wait_for("the removal to be listed", || pb.list("") == ["first.txt\t1 byte\t1 peer"]);
    eprintln!("a removed file left the listing after {:?}", t.elapsed());
}

#[test]
fn where_the_folder_cannot_be_watched_it_is_rescanned() {
    let ws = workspace();
    let a = folder(ws.path(), "a", &[]);
    let b = folder(ws.path(), "b", &[]);
    let (_index, index_addr) = Proc::index_server(ws.path());
    let mut pa = peer_env(index_addr, &a, &[("PEERDEX_NO_INOTIFY", "1")], &[]);
    let note = pa.expect(Stream::Err, "note: cannot watch");
    assert!(note.ends_with("(PEERDEX_NO_INOTIFY is set); rescanning it every 2 s instead"), "{note}");
    pa.send("register");
    pa.expect(Stream::Out, "registered 0 files");
    let (mut pb, _) = Proc::peer(index_addr, &b);
    fs::write(a.join("polled.txt"), b"found by a rescan").unwrap();
    wait_for("the rescan to find the file", || pb.list("") == ["polled.txt\t17 bytes\t1 peer"]);
    pa.close_stdin();
    pa.finish();
    assert_eq!(pa.lines(Stream::Err).iter().filter(|l| l.contains("cannot watch")).count(), 1, "said once");
}

#[test]
fn a_file_still_being_written_is_never_advertised() {
    let ws = workspace();
    let a = folder(ws.path(), "a", &[]);
    let b = folder(ws.path(), "b", &[]);
    let (_index, index_addr) = Proc::index_server(ws.path());
    let (_pa, _) = Proc::registered_peer(index_addr, &a, 0);
    let (mut pb, _) = Proc::peer(index_addr, &b);

    // A slow copy: 5 chunks, 400 ms apart. That is longer than the watcher's 300 ms of
    // quiet, so it rescans between chunks, and shorter than the 1 s after which it
    // takes a file to be finished. The writer has a thread of its own so that nothing
    // the test does can hold it up; meanwhile the other peer must never see the file.
    let path = a.join("slow.bin");
    let writer = std::thread::spawn(move || {
        let mut slow = fs::File::create(path).unwrap();
        for _ in 0..5 {
            slow.write_all(&[7u8; 8000]).unwrap();
            slow.flush().unwrap();
            std::thread::sleep(Duration::from_millis(400)); // the copy's pace, not a wait
        }
    });
    while !writer.is_finished() {
        assert!(pb.list("slow").is_empty(), "a half-written file was advertised");
    }
    writer.join().unwrap();
    wait_for("the finished file to be listed", || pb.list("slow") == ["slow.bin\t40000 bytes\t1 peer"]);
    // Downloads' temporary files never appear in any listing either.
    assert!(pb.list("peerdex").is_empty());
}

/// Asks a file server how busy it is, as a downloader does.
fn status(addr: std::net::SocketAddr) -> (u32, u64) {
    match common::status_from("127.0.0.1", addr) {
        peerdex::wire::FileReply::Status { uploads, bytes_per_sec } => (uploads, bytes_per_sec),
        other => panic!("{other:?}"),
    }
}

/// With more sharers than a download uses at once, the least loaded are used and the
/// busy ones are kept in reserve.
#[test]
fn downloads_go_to_idle_peers_rather_than_busy_ones() {
    use peerdex::content::Tree;
    use peerdex::peer::download::MAX_SOURCES;
    use peerdex::wire::{self, FileRequest, Service};
    let ws = workspace();
    let mut content = vec![0u8; 1 << 20];
    rand::RngExt::fill(&mut rand::rng(), &mut content[..]);
    let tree = Tree::of_bytes(&content);
    let (_index, index_addr) = Proc::index_server(ws.path());
    let mut sharers = Vec::new();
    for i in 0..MAX_SOURCES + 2 {
        let dir = folder(ws.path(), &format!("s{i}"), &[("f.bin", &content)]);
        sharers.push(Proc::registered_peer(index_addr, &dir, 1));
    }
    // Make two of them busy: three downloaders each that ask for the file and never
    // read, holding upload slots.
    let busy = [sharers[0].1, sharers[1].1];
    let stuck: Vec<std::net::TcpStream> = busy
        .iter()
        .flat_map(|&addr| (0..3).map(move |_| addr))
        .map(|addr| {
            let s = std::net::TcpStream::connect(addr).unwrap();
            let (mut r, mut w) = (&s, &s);
            wire::client_handshake(&mut r, &mut w, Service::Files).unwrap();
            let get = FileRequest::Get { root: tree.root, first: 0, count: tree.geometry.pieces() };
            wire::send_msg(&mut w, &get).unwrap();
            s
        })
        .collect();
    for addr in busy {
        wait_for("the busy peers to report their uploads", || status(addr).0 == 3);
    }
    assert_eq!(status(sharers[2].1).0, 0);

    let d = folder(ws.path(), "d", &[]);
    let (mut pd, _) = common::peer_with(index_addr, &d, &["-v"]);
    pd.send("download f.bin");
    let plan = pd.expect(Stream::Err, "downloading \"f.bin\" (1048576 bytes) from");
    let reserve = plan.rsplit("in reserve: ").next().unwrap();
    for addr in busy {
        assert!(reserve.contains(&addr.to_string()), "{addr} is not in reserve: {plan}");
    }
    pd.expect(Stream::Out, "downloaded f.bin");
    assert!(fs::read(d.join("f.bin")).unwrap() == content);
    drop(stuck);
}

/// `peer` with environment variables and options.
fn peer_env(index: std::net::SocketAddr, dir: &Path, env: &[(&str, &str)], opts: &[&str]) -> Proc {
    let port = index.port().to_string();
    let mut args = vec!["127.0.0.1", port.as_str(), "0", dir.to_str().unwrap()];
    args.extend(opts);
    let env: Vec<(&str, &std::ffi::OsStr)> =
        env.iter().map(|(k, v)| (*k, std::ffi::OsStr::new(*v))).collect();
    let mut p = Proc::start_with_env(env!("CARGO_BIN_EXE_peer"), &args, dir.parent().unwrap(), &env);
    p.expect(Stream::Out, "serving ");
    p
}

#[test]
fn accounts_are_stored_as_salted_hashes_never_as_passwords() {
    let ws = workspace();
    let users = ws.path().join("users");
    let p = adduser(ws.path(), &users, "ann", "correct horse");
    assert_eq!(p.lines(Stream::Out), [format!("added user ann in {}", users.display())]);
    let first = fs::read_to_string(&users).unwrap();
    assert!(!first.contains("correct horse"), "the password is in the file: {first}");
    let p = adduser(ws.path(), &users, "ann", "correct horse");
    assert_eq!(p.lines(Stream::Out), [format!("changed the password of user ann in {}", users.display())]);
    let second = fs::read_to_string(&users).unwrap();
    assert_ne!(first, second, "a new salt each time");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(fs::metadata(&users).unwrap().permissions().mode() & 0o777, 0o600);

    let mut bad =
        Proc::start(env!("CARGO_BIN_EXE_indexing-server"), &["adduser", "users", "not a name"], ws.path());
    bad.close_stdin();
    assert_eq!(bad.finish().code(), Some(1));
    assert!(bad.lines(Stream::Err)[0].contains("invalid user name"), "{}", bad.dump());
}

#[test]
fn adduser_takes_the_password_from_peerdex_password_as_the_peer_does() {
    let ws = workspace();
    let mut add = Proc::start_with_env(
        env!("CARGO_BIN_EXE_indexing-server"),
        &["adduser", "users", "ann"],
        ws.path(),
        &[("PEERDEX_PASSWORD", std::ffi::OsStr::new("from the environment"))],
    );
    add.close_stdin();
    assert!(add.finish().success(), "{}", add.dump());
    let users = ws.path().join("users");
    let (_index, index_addr) =
        Proc::index_server_with(ws.path(), &["127.0.0.1", "0", "--users", users.to_str().unwrap()]);
    let a = folder(ws.path(), "a", &[]);
    let mut pa =
        peer_env(index_addr, &a, &[("PEERDEX_PASSWORD", "from the environment")], &["--user", "ann"]);
    pa.expect(Stream::Out, "logged in as ann");
}

#[test]
fn with_accounts_everything_needs_a_login() {
    let ws = workspace();
    let users = ws.path().join("users");
    adduser(ws.path(), &users, "ann", "s3cret");
    let (_index, index_addr) =
        Proc::index_server_with(ws.path(), &["127.0.0.1", "0", "--users", users.to_str().unwrap()]);

    // Logged in at start: everything works.
    let a = folder(ws.path(), "a", &[("x.txt", b"x")]);
    let mut pa = peer_env(index_addr, &a, &[("PEERDEX_PASSWORD", "s3cret")], &["--user", "ann"]);
    pa.expect(Stream::Out, "logged in as ann");
    pa.send("register");
    pa.expect(Stream::Out, "registered 1 file ");
    // The log names the user of a logged-in connection in each of its records.
    wait_for("the registration's log record", || {
        fs::read_to_string(ws.path().join("log.log")).unwrap().contains("(ann) register port ")
    });

    // Not logged in: refused, clearly; then `login` works.
    let b = folder(ws.path(), "b", &[]);
    let mut pb = peer_env(index_addr, &b, &[("PEERDEX_PASSWORD", "s3cret")], &[]);
    pb.send("get_files_list");
    pb.expect(Stream::Err, "error: get_files_list failed: the index server says: login required");
    pb.send("download x.txt");
    pb.expect(
        Stream::Err,
        "error: cannot download \"x.txt\": the index server refused the lookup: login required",
    );
    pb.send("register");
    pb.expect(Stream::Err, "error: register failed: the index server says: login required");
    pb.send("login ann");
    pb.expect(Stream::Out, "logged in as ann");
    assert_eq!(pb.list(""), ["x.txt\t1 byte\t1 peer"]);
    pb.send("download x.txt");
    pb.expect(Stream::Out, "downloaded x.txt");

    // A script without the password in its environment is told how to give it.
    let c = folder(ws.path(), "c", &[]);
    let mut pc = peer_env(index_addr, &c, &[], &[]);
    pc.send("login ann");
    pc.expect(Stream::Err, "error: login failed: set PEERDEX_PASSWORD");
}

#[test]
fn wrong_passwords_are_refused_ever_more_slowly() {
    let ws = workspace();
    let users = ws.path().join("users");
    adduser(ws.path(), &users, "ann", "s3cret");
    let (_index, index_addr) =
        Proc::index_server_with(ws.path(), &["127.0.0.1", "0", "--users", users.to_str().unwrap()]);
    let b = folder(ws.path(), "b", &[]);
    let mut pb = peer_env(index_addr, &b, &[("PEERDEX_PASSWORD", "wrong")], &[]);
    let start = Instant::now();
    let mut answered = Vec::new();
    for user in ["ann", "nobody", "ann"] {
        pb.send(&format!("login {user}"));
        // The same answer whether or not the user exists.
        pb.expect(Stream::Err, "error: login failed: the index server says: wrong user name or password");
        answered.push(start.elapsed());
    }
    // After one failure, the address's next proof is checked no sooner than 1 s after
    // it; after two, 2 s after the second: so no sooner than 1 s and 3 s after the
    // first was sent. Lower bounds only: a slow machine can only make these later.
    assert!(answered[1] >= Duration::from_secs(1), "the second failure came after {:?}", answered[1]);
    assert!(answered[2] >= Duration::from_secs(3), "the third failure came after {:?}", answered[2]);
    pb.send("register");
    pb.expect(Stream::Err, "login required");
    assert_eq!(pb.finish().code(), Some(1));
}

#[test]
fn without_accounts_login_is_not_needed() {
    let ws = workspace();
    let (_index, index_addr) = Proc::index_server(ws.path());
    let a = folder(ws.path(), "a", &[]);
    let mut pa = peer_env(index_addr, &a, &[("PEERDEX_PASSWORD", "x")], &[]);
    pa.send("login ann");
    pa.expect(Stream::Err, "error: login failed: the index server says: this server has no accounts");
    pa.send("register");
    pa.expect(Stream::Out, "registered 0 files");
}
