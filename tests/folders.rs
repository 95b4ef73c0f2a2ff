//! Folders, with the real binaries: a whole tree is shared under relative paths, what
//! is skipped is said, exclusions hold; a file server never reads through a symlinked
//! folder, even one swapped in while it serves; downloads make their folders and never
//! go through a symlink; a folder is downloaded whole and listed a level at a time.

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::Duration;

use common::{Proc, Stream, peer_with, random_bytes, wait_for, workspace};
use peerdex::content::Tree;
use peerdex::wire::{self, FileReply, FileRequest, Service};

/// Writes `content` at `path` under `root`, making its folders.
fn put(root: &Path, path: &str, content: &[u8]) {
    let path = root.join(path);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, content).unwrap();
}

/// Every file under a tree is shared under its path; symlinked folders are not
/// followed, links that lead out are refused, and both are reported; exclusions
/// (defaults, .peerdexignore, --exclude) are left out silently; with -v each skipped
/// path is named.
#[test]
fn a_tree_is_shared_under_paths_and_what_is_skipped_is_said() {
    let ws = workspace();
    let shared = ws.path().join("shared");
    put(&shared, "album/disc 1/01 intro.flac", b"intro");
    put(&shared, "album/cover.jpg", b"cover");
    put(&shared, "top.txt", b"top");
    put(&shared, "album/.DS_Store", b"junk");
    put(&shared, "@eaDir/top.txt/thumb", b"junk");
    put(&shared, "notes.tmp", b"excluded by --exclude");
    put(&shared, "deep/x.log", b"excluded by .peerdexignore");
    put(&shared, ".peerdexignore", b"*.log\n");
    put(ws.path(), "outside/secret", b"secret");
    symlink(ws.path().join("outside/secret"), shared.join("album/leak")).unwrap();
    symlink(ws.path().join("outside"), shared.join("outdir")).unwrap();
    symlink(shared.join("album"), shared.join("loop")).unwrap();
    symlink(shared.join("top.txt"), shared.join("album/top-link.txt")).unwrap();

    let (_index, index_addr) = Proc::index_server(ws.path());
    let (mut p, _) = peer_with(index_addr, &shared, &["--exclude", "*.tmp", "-v"]);
    let line = p.register();
    assert_eq!(
        line,
        format!(
            "registered 4 files with the index server {index_addr}; skipped 3 (1 symlink outside the folder, 2 symlinks to a folder (not followed))"
        )
    );
    let err = p.read_until(Stream::Err, "\"outdir\"").join("\n");
    assert!(err.contains("not sharing \"album/leak\": a symlink that leads outside the folder"), "{err}");

    let other = ws.path().join("other");
    fs::create_dir(&other).unwrap();
    let (mut q, _) = Proc::peer(index_addr, &other);
    let names: Vec<String> = q.list("").iter().map(|l| l.split('\t').next().unwrap().to_owned()).collect();
    assert_eq!(names, ["album/cover.jpg", "album/disc 1/01 intro.flac", "album/top-link.txt", "top.txt"]);
}

/// A file server opens a shared file's path a folder at a time, never through a
/// symlink: with the file's folder swapped for a symlink to a look-alike outside, over
/// and over while a downloader asks for the file, every answer is the true file or a
/// refusal that names the symlink; the look-alike is never read (its content would be
/// refused as "changed", a different refusal).
#[test]
fn a_folder_swapped_for_a_symlink_is_never_read_through() {
    let ws = workspace();
    let shared = ws.path().join("shared");
    let content = random_bytes(20_000);
    put(&shared, "a/x.bin", &content);
    let mut lookalike = content.clone();
    lookalike[0] ^= 1;
    put(ws.path(), "outside/x.bin", &lookalike);
    let (_index, index_addr) = Proc::index_server(ws.path());
    let (_p, files) = Proc::registered_peer(index_addr, &shared, 1);
    let root = Tree::of_bytes(&content).root;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let (stop, shared, outside) = (stop.clone(), shared.clone(), ws.path().join("outside"));
        std::thread::spawn(move || {
            let mut swaps = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                fs::rename(shared.join("a"), shared.join("a.real")).unwrap();
                symlink(&outside, shared.join("a")).unwrap();
                fs::remove_file(shared.join("a")).unwrap();
                fs::rename(shared.join("a.real"), shared.join("a")).unwrap();
                swaps += 1;
            }
            swaps
        })
    };
    let (mut served, mut through) = (0, 0);
    for _ in 0..2000 {
        // A connection opens the file once for all its requests: one each, to open it
        // each time.
        let mut s = common::handshaken("127.0.0.1", files, Service::Files);
        wire::send_msg(&mut s, &FileRequest::Get { root, first: 0, count: 2 }).unwrap();
        match wire::recv_msg::<FileReply>(&mut s).unwrap() {
            FileReply::Data { len, .. } => {
                let mut body = vec![0; len as usize];
                std::io::Read::read_exact(&mut s, &mut body).unwrap();
                assert!(body == content, "only the true file is ever sent");
                served += 1;
            }
            FileReply::Error(e)
                if e.ends_with("a folder on its path is a symlink, which is never followed") =>
            {
                through += 1
            }
            FileReply::Error(e) => assert!(e.ends_with("no such file in the shared folder"), "{e}"),
            other => panic!("{other:?}"),
        }
        // Closed, and the close seen through before the next connection: the server
        // frees the upload's place before its end of the connection closes, and an
        // address may have 4 uploads at most (not yet noticed closes took them all).
        s.set_read_timeout(Some(common::TIMEOUT)).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        std::io::Read::read_to_end(&mut s, &mut Vec::new()).unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let swaps = swapper.join().unwrap();
    println!("served {served}, refused for the symlink {through}, {swaps} swaps");
    assert!(swaps > 0 && served > 0, "served {served}, refused for the symlink {through}, {swaps} swaps");
}

/// `download album/disc 1/01.flac` makes the folders it needs; one that is a symlink
/// in this peer's folder is never gone through (nothing is written outside), and a
/// file where a folder is needed is named; `download album/` fetches the rest of the
/// folder with its structure, passing over what is already here, and exits 0;
/// `get_files_list --dirs` lists a level, folders first.
#[test]
fn downloads_make_their_folders_and_a_folder_comes_whole() {
    let ws = workspace();
    let a = ws.path().join("a");
    let (intro, cover, x) = (random_bytes(70_000), random_bytes(1000), random_bytes(10));
    put(&a, "album/disc 1/01 intro.flac", &intro);
    put(&a, "album/cover.jpg", &cover);
    put(&a, "album/empty", b"");
    put(&a, "linked/x", &x);
    put(&a, "blocked/y", &x);
    put(&a, "top.txt", b"top");
    let (_index, index_addr) = Proc::index_server(ws.path());
    let (_pa, _) = Proc::registered_peer(index_addr, &a, 6);

    let b = ws.path().join("b");
    fs::create_dir(&b).unwrap();
    fs::create_dir(ws.path().join("elsewhere")).unwrap();
    symlink(ws.path().join("elsewhere"), b.join("linked")).unwrap();
    fs::write(b.join("blocked"), b"a file").unwrap();
    let (mut pb, _) = Proc::peer(index_addr, &b);
    assert_eq!(
        pb.list("--dirs"),
        [
            "album/\t71000 bytes\t3 files",
            "blocked/\t10 bytes\t1 file",
            "linked/\t10 bytes\t1 file",
            "top.txt\t3 bytes\t1 peer",
        ]
    );
    assert_eq!(
        pb.list("--dirs album"),
        [
            "album/disc 1/\t70000 bytes\t1 file",
            "album/cover.jpg\t1000 bytes\t1 peer",
            "album/empty\t0 bytes\t1 peer"
        ]
    );

    pb.send("download album/disc 1/01 intro.flac");
    pb.expect(Stream::Out, "downloaded album/disc 1/01 intro.flac (70000 bytes) from ");
    assert!(fs::read(b.join("album/disc 1/01 intro.flac")).unwrap() == intro);

    pb.send("download linked/x");
    let err = pb.expect(Stream::Err, "linked");
    assert_eq!(
        err,
        "error: cannot download \"linked/x\": \"linked\" is a symlink, and downloads never go through one"
    );
    pb.send("download blocked/y");
    let err = pb.expect(Stream::Err, "blocked");
    assert_eq!(err, "error: cannot download \"blocked/y\": \"blocked\" is a file, not a folder");
    // A whole folder that cannot be put here: one error for it, not one for each file.
    pb.send("download blocked/");
    pb.send("download linked/");
    assert_eq!(
        pb.read_until(Stream::Err, "\"linked/\""),
        [
            "error: cannot download \"blocked/\": \"blocked\" is a file, not a folder",
            "error: cannot download \"linked/\": \"linked\" is a symlink, and downloads never go through one",
        ]
    );
    assert_eq!(fs::read_dir(ws.path().join("elsewhere")).unwrap().count(), 0, "nothing written outside");

    let (mut pc, _) = Proc::peer(index_addr, &b);
    pc.send("download album/");
    pc.expect(Stream::Out, "already here: album/disc 1/01 intro.flac");
    pc.expect(Stream::Out, "downloading 2 files under album/");
    let mut done = vec![pc.expect(Stream::Out, "downloaded "), pc.expect(Stream::Out, "downloaded ")];
    done.sort();
    assert!(done[0].starts_with("downloaded album/cover.jpg (1000 bytes) from "), "{done:?}");
    assert!(done[1].starts_with("downloaded album/empty (0 bytes) from "), "{done:?}");
    assert!(fs::read(b.join("album/cover.jpg")).unwrap() == cover);
    assert_eq!(fs::read(b.join("album/empty")).unwrap(), b"");
    assert!(pc.finish().success(), "{}", pc.dump());

    pb.send("download nothing/");
    let err = pb.expect(Stream::Err, "nothing/");
    assert_eq!(err, "error: cannot download \"nothing/\": no registered peer shares a file under it");
    assert!(!pb.finish().success());
}

/// Paths that could leave the folder or mean something else are refused at the command
/// line with the reason, and by the index on the wire; nothing outside is touched.
#[test]
fn traversal_paths_are_refused_everywhere() {
    let ws = workspace();
    let shared = ws.path().join("shared");
    put(&shared, "a/b", b"b");
    put(ws.path(), "x", b"outside");
    let (_index, index_addr) = Proc::index_server(ws.path());
    let (mut p, _) = Proc::peer(index_addr, &shared);
    let bad = [
        ("a/../../x", "\".\" and \"..\" are not file or folder names"),
        ("/etc/passwd", "empty part"),
        ("a//b", "empty part"),
        ("a/./b", "\".\" and \"..\" are not file or folder names"),
        ("a\\b", "backslash"),
    ];
    let on_the_wire = [bad.as_slice(), &[("a/b/", "empty part")]].concat();
    for (path, why) in bad {
        for command in ["download", "delete"] {
            p.send(&format!("{command} {path}"));
            let err = p.expect(Stream::Err, "invalid file name");
            assert!(
                err.starts_with(&format!("error: invalid file name {path:?}: ")) && err.contains(why),
                "{err}"
            );
        }
    }
    // A trailing '/' names a folder: `download a/` fetches one (see below), but no
    // file has such a name.
    p.send("delete a/");
    let err = p.expect(Stream::Err, "invalid file name");
    assert!(err.starts_with("error: invalid file name \"a/\": ") && err.contains("empty part"), "{err}");
    p.send("delete a");
    let err = p.expect(Stream::Err, "cannot delete");
    assert_eq!(err, "error: cannot delete \"a\": not a regular file");
    assert_eq!(fs::read(ws.path().join("x")).unwrap(), b"outside");
    assert_eq!(fs::read(shared.join("a/b")).unwrap(), b"b");

    let mut raw = common::RawIndexClient::connect(index_addr);
    for (path, why) in on_the_wire {
        let mut payload = vec![0x01, 0, 9, 0, 0, 0, 1];
        payload.extend((path.len() as u16).to_be_bytes());
        payload.extend(path.as_bytes());
        payload.extend([0u8; 40]);
        wire::send_all(&mut raw.stream, &payload).unwrap();
        match wire::recv_msg::<peerdex::wire::Reply>(&mut raw.stream).unwrap() {
            peerdex::wire::Reply::Error(e) => assert!(e.contains(why), "{e}"),
            other => panic!("{other:?}"),
        }
    }
}

/// An index, a registered peer watching the folder `a` that holds `first` (1 byte), and
/// a peer to list what the index holds: [`names`].
struct Watched {
    _index: Proc,
    a: std::path::PathBuf,
    pa: Proc,
    pb: Proc,
}

fn watched(root: &Path, first: &str) -> Watched {
    watched_with(root, first, &[])
}

/// [`watched`], the watching peer started with `opts` as well.
fn watched_with(root: &Path, first: &str, opts: &[&str]) -> Watched {
    let a = root.join("a");
    put(&a, first, b"1");
    let (_index, index_addr) = Proc::index_server(root);
    let (mut pa, _) = peer_with(index_addr, &a, opts);
    let registered = pa.register();
    assert!(registered.starts_with("registered 1 file "), "{registered}");
    let b = root.join("b");
    fs::create_dir(&b).unwrap();
    let (pb, _) = Proc::peer(index_addr, &b);
    Watched { _index, a, pa, pb }
}

/// What `pb` lists: each name and size (`top.txt 1 byte`).
fn names(pb: &mut Proc) -> Vec<String> {
    pb.list("").iter().map(|l| l.split('\t').take(2).collect::<Vec<_>>().join(" ")).collect()
}

/// A watched tree: a file written deep in a new folder, a folder moved in whole, a file
/// in a subfolder changed, and a folder deleted all reach the index by themselves.
#[test]
fn a_watched_tree_reaches_the_index_by_itself() {
    let ws = workspace();
    let Watched { _index, a, mut pa, mut pb } = watched(ws.path(), "top.txt");

    put(&a, "new/deeper/x.txt", b"xx");
    // (The watching peer's own output, if this ever times out.)
    common::wait_showing(
        "a file in new folders to be listed",
        || names(&mut pb) == ["new/deeper/x.txt 2 bytes", "top.txt 1 byte"],
        &mut [&mut pa],
    );
    put(ws.path(), "staging/album/01.flac", b"one");
    put(ws.path(), "staging/album/02.flac", b"two!");
    fs::rename(ws.path().join("staging/album"), a.join("album")).unwrap();
    wait_for("a folder moved in to be listed whole", || {
        names(&mut pb)
            == [
                "album/01.flac 3 bytes",
                "album/02.flac 4 bytes",
                "new/deeper/x.txt 2 bytes",
                "top.txt 1 byte",
            ]
    });
    // Nothing changes at the top: only a watch on the subfolder sees this.
    fs::write(a.join("new/deeper/x.txt"), b"changed").unwrap();
    wait_for("a change in a subfolder to be listed", || {
        names(&mut pb)
            == [
                "album/01.flac 3 bytes",
                "album/02.flac 4 bytes",
                "new/deeper/x.txt 7 bytes",
                "top.txt 1 byte",
            ]
    });
    fs::remove_dir_all(a.join("new")).unwrap();
    wait_for("a deleted folder to be listed", || {
        names(&mut pb) == ["album/01.flac 3 bytes", "album/02.flac 4 bytes", "top.txt 1 byte"]
    });
}

/// A shared folder deleted while the peer watches it is no longer listed (its files
/// cannot be served), and one made again at its path is watched and shared: changes in
/// it reach the index as before. So is a folder swapped in by a rename.
#[test]
fn a_shared_folder_deleted_and_made_again_is_watched_again() {
    let ws = workspace();
    let Watched { _index, a, mut pa, mut pb } = watched(ws.path(), "old.txt");

    fs::remove_dir_all(&a).unwrap();
    let gone = pa.expect(Stream::Err, "is gone");
    assert!(gone.contains("the index lists none of its files until it is back"), "{gone}");
    wait_for("the deleted folder's file to leave the index", || names(&mut pb).is_empty());

    put(&a, "new.txt", b"22");
    let back = pa.expect(Stream::Err, "is back");
    assert!(back.ends_with("is back: sharing 1 file"), "{back}");
    wait_for("the new folder's file to be listed", || names(&mut pb) == ["new.txt 2 bytes"]);
    // Only a watch on the new folder sees this.
    put(&a, "later/deep.txt", b"333");
    common::wait_showing(
        "a change in the new folder to be listed",
        || names(&mut pb) == ["later/deep.txt 3 bytes", "new.txt 2 bytes"],
        &mut [&mut pa],
    );

    // Swapped at once, with no moment without a folder at the path.
    fs::rename(&a, ws.path().join("away")).unwrap();
    put(ws.path(), "next/swapped.txt", b"4444");
    fs::rename(ws.path().join("next"), &a).unwrap();
    wait_for("the swapped-in folder's file to be listed", || names(&mut pb) == ["swapped.txt 4 bytes"]);
    put(&a, "seen.txt", b"6");
    wait_for("a change in the swapped-in folder to be listed", || {
        names(&mut pb) == ["seen.txt 1 byte", "swapped.txt 4 bytes"]
    });
}

/// A file written into a watched folder costs one rescan, made once the file has
/// settled: a rescan walks the whole folder, and the one that came right after the
/// write could only leave the file out as still being written (two walks a change,
/// before). The peer's debug records (`-vv`) say what each rescan found.
#[test]
fn a_written_file_costs_one_rescan_which_finds_it_settled() {
    let ws = workspace();
    let Watched { _index, a, mut pa, mut pb } = watched_with(ws.path(), "old.txt", &["-vv"]);

    put(&a, "new.txt", b"22");
    let rescan = pa.expect(Stream::Err, "rescanned the shared folder");
    assert!(rescan.ends_with("2 files, 0 still being written"), "{rescan}");
    wait_for("the new file to be listed", || names(&mut pb) == ["new.txt 2 bytes", "old.txt 1 byte"]);
    let rescans: Vec<String> =
        pa.lines(Stream::Err).into_iter().filter(|l| l.contains("rescanned the shared folder")).collect();
    assert_eq!(rescans.len(), 1, "{rescans:#?}");

    // A removal alone is nothing to settle: it is rescanned for at once, and listed.
    fs::remove_file(a.join("old.txt")).unwrap();
    wait_for("the removed file to leave the index", || names(&mut pb) == ["new.txt 2 bytes"]);
}

/// A peer's own downloads cause no rescan of its watched folder: each download tells
/// the index itself (an `Add`), and a rescan walks the whole folder. So after a folder
/// of downloads, the first rescan is the one a change of the user's causes, and it
/// finds that change settled.
#[test]
fn a_peers_own_downloads_cause_no_rescan() {
    let ws = workspace();
    let a = ws.path().join("a");
    for i in 0..5 {
        put(&a, &format!("album/{i}.txt"), format!("song {i}").as_bytes());
    }
    let (_index, index_addr) = Proc::index_server(ws.path());
    let (_pa, _) = Proc::registered_peer(index_addr, &a, 5);
    let b = ws.path().join("b");
    fs::create_dir(&b).unwrap();
    let (mut pb, _) = peer_with(index_addr, &b, &["-vv"]);
    assert!(pb.register().starts_with("registered 0 files "));

    pb.send("download album/");
    pb.send("wait");
    for _ in 0..5 {
        pb.expect(Stream::Out, "downloaded album/");
    }
    // An absence, watched for 2 s: a rescan for the downloads would come 300 ms after
    // the last one. (Not a wait for something to happen: with the code right, nothing
    // comes, however slow the machine.)
    let early = pb.expect_any(&["rescanned the shared folder"], Duration::from_secs(2));
    assert_eq!(early, None, "a rescan for the peer's own downloads");
    put(&b, "mine.txt", b"the user's");
    let rescan = pb.expect(Stream::Err, "rescanned the shared folder");
    assert!(rescan.ends_with("6 files, 0 still being written"), "{rescan}");
}

/// A file written to all the time (a log appended to five times a second) holds back
/// no other change: the burst of its events is waited out for at most
/// `LONGEST_BURST`, and the rescan then lists the new file (and leaves the busy one
/// out, as still being written). Before, a burst lasted as long as the writes came within 300 ms of each other.
#[test]
fn a_file_written_all_the_time_holds_back_no_other_change() {
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, Ordering};
    let ws = workspace();
    let Watched { _index, a, mut pa, mut pb } = watched(ws.path(), "top.txt");
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, path) = (std::sync::Arc::clone(&stop), a.join("busy.log"));
        std::thread::spawn(move || {
            let mut log = fs::File::create(path).unwrap();
            // Bounded: at most five minutes of lines, should the test not stop it.
            for i in 0..1500 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                writeln!(log, "line {i}").unwrap();
                // The pace of the workload: writes closer together than any quiet
                // period the watcher waits for.
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    put(&a, "new.txt", b"22");
    common::wait_showing(
        "a new file to be listed while another is written",
        || names(&mut pb).contains(&"new.txt 2 bytes".to_owned()),
        &mut [&mut pa],
    );
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    wait_for("the log to be listed once it is still", || {
        names(&mut pb).iter().any(|n| n.starts_with("busy.log"))
    });
}

/// A rescan lists the files it hashed before from the hash cache, without opening
/// them: opening 100,000 files took a rescan 2 s, and each open was one more event for
/// the watcher. A watched folder of 300 files gets a new one; a watch of the test's
/// own sees the new file opened (to hash it), and none of the others.
#[test]
fn a_rescan_opens_only_the_files_that_changed() {
    use notify::event::{AccessKind, EventKind};
    use notify::{RecursiveMode, Watcher};
    let ws = workspace();
    let a = ws.path().join("a");
    for i in 0..300 {
        put(&a, &format!("d{}/f{i:03}.txt", i % 3), b"x");
    }
    let (_index, index_addr) = Proc::index_server(ws.path());
    let (_pa, _) = Proc::registered_peer(index_addr, &a, 300);
    let b = ws.path().join("b");
    fs::create_dir(&b).unwrap();
    let (mut pb, _) = Proc::peer(index_addr, &b);
    let (tx, events) = std::sync::mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |e: notify::Result<notify::Event>| {
        if let Ok(e) = e {
            let _ = tx.send(e);
        }
    })
    .unwrap();
    watcher.watch(&a, RecursiveMode::Recursive).unwrap();

    put(&a, "new.txt", b"new");
    wait_for("the new file to be listed", || pb.list("new").len() == 1);
    // The peer's rescans opened what they opened before the index had the new file. A
    // file of peerdex's own (which the peer neither watches nor shares) marks the end
    // of their events: events come in order.
    fs::write(a.join(".peerdex-marker"), b"").unwrap();
    let mut opened = std::collections::BTreeSet::new();
    loop {
        let e = events.recv_timeout(common::TIMEOUT).expect("the marker's event");
        if e.paths.iter().any(|p| p.ends_with(".peerdex-marker")) {
            break;
        }
        if matches!(e.kind, EventKind::Access(AccessKind::Open(_))) {
            opened.extend(
                e.paths
                    .iter()
                    .filter(|p| p.extension().is_some_and(|x| x == "txt"))
                    .map(|p| p.strip_prefix(&a).unwrap().to_string_lossy().into_owned()),
            );
        }
    }
    assert_eq!(opened.into_iter().collect::<Vec<_>>(), ["new.txt"]);
}

/// A list of files too large for one request (7,000 paths of 969 bytes: 7 MB of
/// entries, to an index that takes frames of 5 MB) is sent in parts, and all of it is
/// registered and found.
#[test]
fn a_list_larger_than_one_request_is_registered_whole() {
    let ws = workspace();
    let shared = ws.path().join("shared");
    let long = vec!["d".repeat(240); 4].join("/");
    fs::create_dir_all(shared.join(&long)).unwrap();
    for i in 0..7000 {
        fs::write(shared.join(format!("{long}/{i:04}")), i.to_string()).unwrap();
    }
    let (_index, index_addr) =
        Proc::index_server_with(ws.path(), &["127.0.0.1", "0", "--max-frame", "5000000"]);
    let (_p, files) = Proc::registered_peer(index_addr, &shared, 7000);
    let mut c = common::RawIndexClient::connect(index_addr);
    for i in [0, 6999] {
        let name = peerdex::name::SharePath::parse(&format!("{long}/{i:04}")).unwrap();
        match c.call(&peerdex::wire::Request::Lookup { name }) {
            peerdex::wire::Reply::Peers(hits) => assert_eq!(hits[0].addr, files),
            other => panic!("{other:?}"),
        }
    }
}

/// A path longer than an index takes by default (1,024 bytes) would make the index
/// refuse the whole registration: the peer skips it, says so, and shares the rest.
/// An index and a peer both started with a larger --max-name-len share it.
#[test]
fn a_path_longer_than_the_index_takes_is_skipped_and_the_rest_is_shared() {
    let ws = workspace();
    let shared = ws.path().join("shared");
    let long: Vec<String> = (0..5).map(|i| format!("{}{i}", "d".repeat(250))).collect();
    let long = format!("{}/f.txt", long.join("/"));
    assert!(long.len() > 1024 && long.len() <= 2048);
    put(&shared, &long, b"deep");
    put(&shared, "short.txt", b"short");
    // And a name no rule allows, named escaped once in -v's record.
    put(&shared, "esc\u{1b}[2J.txt", b"esc");

    let (_index, index_addr) = Proc::index_server(ws.path());
    let (mut p, _) = peer_with(index_addr, &shared, &["-v"]);
    let line = p.register();
    assert_eq!(
        line,
        format!(
            "registered 1 file with the index server {index_addr}; skipped 2 (1 file with a name that cannot be shared, 1 file with a path longer than 1024 bytes)"
        )
    );
    let err = p.read_until(Stream::Err, "dddd").join("\n");
    assert!(
        err.contains(&format!(
            "not sharing \"{long}\": its path is longer than 1024 bytes, the most an index takes (see --max-name-len)"
        )),
        "{err}"
    );
    let err = p.read_until(Stream::Err, "esc").join("\n") + &err;
    assert!(err.contains("not sharing \"esc\\u{1b}[2J.txt\": its name cannot be shared"), "{err}");

    let (_big, big_addr) = Proc::index_server_with(ws.path(), &["127.0.0.1", "0", "--max-name-len", "2048"]);
    let (mut q, _) = peer_with(big_addr, &shared, &["--max-name-len", "2048"]);
    let line = q.register();
    assert_eq!(
        line,
        format!(
            "registered 2 files with the index server {big_addr}; skipped 1 (1 file with a name that cannot be shared)"
        )
    );
}
