//! The peer's front ends, from scripts: `--json` (every line on stdout one JSON object
//! with a "type", checked field by field, errors included; the exit status contract
//! unchanged), `--register`, the short aliases and `help COMMAND`, and `download` of
//! several names, globs and lines of the last listing.

mod common;

use std::fs;
use std::net::SocketAddr;

use common::{Proc, Stream, folder, workspace};
use serde_json::{Value, json};

/// The next `n` lines of `stream` containing `pattern`, sorted: results that come from
/// the download workers, in whichever order they end.
fn sorted(p: &mut Proc, stream: Stream, pattern: &str, n: usize) -> Vec<String> {
    let mut lines: Vec<String> = (0..n).map(|_| p.expect(stream, pattern)).collect();
    lines.sort();
    lines
}

/// Reads the next stdout line of `p` containing `"type":"<kind>"` as JSON.
fn next(p: &mut Proc, kind: &str) -> Value {
    let line = p.expect(Stream::Out, &format!("\"type\":\"{kind}\""));
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

#[test]
fn every_result_is_a_json_object_and_nothing_else_reaches_stdout() {
    let ws = workspace();
    let a = folder(ws.path(), "a", &[("hello world.txt", b"hello"), ("two.txt", b"2")]);
    fs::create_dir(a.join("sub")).unwrap();
    fs::write(a.join("sub/deep.txt"), b"deep").unwrap();
    std::os::unix::fs::symlink(ws.path(), a.join("out")).unwrap();
    let (_index, index_addr) = Proc::index_server(ws.path());
    let (_pa, a_files) = Proc::registered_peer(index_addr, &a, 3);

    let b = folder(ws.path(), "b", &[]);
    let port = index_addr.port().to_string();
    let args = ["127.0.0.1", port.as_str(), "0", b.to_str().unwrap(), "--json"];
    let mut pb = Proc::start(env!("CARGO_BIN_EXE_peer"), &args, ws.path());
    let serving = next(&mut pb, "serving");
    assert_eq!(serving["folder"], json!(b.to_str().unwrap()));
    let _: SocketAddr = serving["address"].as_str().unwrap().parse().unwrap();

    pb.send("register");
    let registered = next(&mut pb, "registered");
    assert_eq!(registered["files"], json!(0));
    assert_eq!(registered["server"], json!(index_addr.to_string()));
    assert_eq!(registered["skipped"], json!([]));

    pb.send("get_files_list");
    let root = hex::encode(peerdex::content::Tree::of_bytes(b"hello").root);
    let first = next(&mut pb, "entry");
    assert_eq!(
        first,
        json!({"type": "entry", "name": "hello world.txt", "size": 5, "root": root, "peers": 1, "downloading": 0})
    );
    assert_eq!(next(&mut pb, "entry")["name"], json!("sub/deep.txt"));
    assert_eq!(next(&mut pb, "entry")["name"], json!("two.txt"));
    assert_eq!(
        next(&mut pb, "list_end"),
        json!({"type": "list_end", "files": 3, "folders": null, "truncated": false})
    );

    pb.send("get_files_list --dirs");
    assert_eq!(next(&mut pb, "folder"), json!({"type": "folder", "path": "sub", "files": 1, "bytes": 4}));
    assert_eq!(next(&mut pb, "list_end")["folders"], json!(1));

    pb.send("download hello world.txt");
    assert_eq!(next(&mut pb, "queued"), json!({"type": "queued", "name": "hello world.txt"}));
    let done = next(&mut pb, "downloaded");
    assert_eq!(done["name"], json!("hello world.txt"));
    assert_eq!(done["size"], json!(5));
    assert_eq!(done["root"], json!(root));
    assert_eq!(done["sources"], json!([{"peer": a_files.to_string(), "bytes": 5}]));
    assert_eq!(done["resumed_bytes"], json!(0));
    assert_eq!(fs::read(b.join("hello world.txt")).unwrap(), b"hello");

    pb.send("download nothing.txt");
    next(&mut pb, "queued");
    assert_eq!(
        next(&mut pb, "failed"),
        json!({"type": "failed", "name": "nothing.txt", "reason": "no registered peer shares it", "peers": []})
    );
    // A download whose one source is gone: the failure names it.
    let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let _fake = common::register_fake(index_addr, gone.port(), common::info("gone.bin", b"gone"));
    pb.send("download gone.bin");
    next(&mut pb, "queued");
    assert_eq!(next(&mut pb, "source_failed")["peer"], json!(gone.to_string()));
    let failed = next(&mut pb, "failed");
    assert_eq!(failed["peers"], json!([gone.to_string()]), "{failed}");
    assert!(
        failed["reason"].as_str().unwrap().starts_with("the only peer that shares it failed"),
        "{failed}"
    );
    pb.send("delete hello world.txt");
    assert_eq!(next(&mut pb, "deleted"), json!({"type": "deleted", "name": "hello world.txt"}));
    pb.send("frobnicate");
    assert_eq!(
        next(&mut pb, "error"),
        json!({"type": "error", "message": "unknown command \"frobnicate\" (type help for the list)"})
    );
    assert_eq!(pb.finish().code(), Some(1), "a failed command still means status 1");
    for line in pb.lines(Stream::Out) {
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["type"].is_string(), "{line}");
    }
    assert!(pb.lines(Stream::Err).is_empty(), "{}", pb.dump());
}

/// What a register skipped is listed, path by path, with the reason.
#[test]
fn skipped_files_are_listed_with_their_reasons() {
    let ws = workspace();
    let a = folder(ws.path(), "a", &[("ok.txt", b"ok")]);
    std::os::unix::fs::symlink(ws.path(), a.join("out")).unwrap();
    let (_index, index_addr) = Proc::index_server(ws.path());
    let port = index_addr.port().to_string();
    let args = ["127.0.0.1", port.as_str(), "0", a.to_str().unwrap(), "--json"];
    let mut p = Proc::start(env!("CARGO_BIN_EXE_peer"), &args, ws.path());
    p.send("register");
    let registered = next(&mut p, "registered");
    assert_eq!(registered["files"], json!(1));
    assert_eq!(
        registered["skipped"],
        json!([{"path": "out", "reason": "a symlink to a folder (not followed)"}])
    );
    assert!(p.finish().success());
}

/// `--register` shares the folder at start; the short aliases and `help COMMAND` work
/// from a script like the seed's commands.
#[test]
fn register_at_start_aliases_and_help_for_a_command() {
    let ws = workspace();
    let a = folder(ws.path(), "a", &[("song.flac", b"la la")]);
    let (_index, index_addr) = Proc::index_server(ws.path());
    let (mut pa, _) = common::peer_with(index_addr, &a, &["--register"]);
    let line = pa.expect(Stream::Out, "registered ");
    assert_eq!(line, format!("registered 1 file with the index server {index_addr}"));

    let b = folder(ws.path(), "b", &[]);
    let (mut pb, _) = Proc::peer(index_addr, &b);
    pb.send("ls flac");
    pb.expect(Stream::Out, "song.flac\t5 bytes\t1 peer");
    pb.send("get song.flac");
    pb.expect(Stream::Out, "downloaded song.flac (5 bytes) from ");
    pb.send("rm song.flac");
    pb.expect(Stream::Out, "deleted song.flac");
    pb.send("help rm");
    pb.expect(Stream::Out, "delete NAME   (alias: rm)");
    pb.expect(Stream::Out, "example: delete old.txt");
    assert!(pb.finish().success(), "{}", pb.dump());
    assert!(!b.join("song.flac").exists());
}

/// `downloads` lists a running download with how far it has come, `--progress` says so
/// every few seconds on stderr, and `cancel` stops it keeping what it verified: a later
/// `download` of the name fetches only the rest. A cancel is no failure.
#[test]
fn a_cancelled_download_keeps_its_pieces_and_resumes() {
    use common::{Gates, Misbehaviour, fake_sender_gated, random_bytes, register_fake};
    let ws = workspace();
    let content = random_bytes(1 << 20); // 64 pieces of 16 KiB
    let (_index, index_addr) = Proc::index_server(ws.path());
    // A source that holds only the first half, as a peer still downloading it would.
    let half = Gates { up_to: Some(1 << 19), ..Gates::default() };
    let (first, _) = fake_sender_gated(content.clone(), Misbehaviour::Honest, half);
    let _f = register_fake(index_addr, first.port(), common::info("big.bin", &content));

    let b = folder(ws.path(), "b", &[]);
    let (mut pb, _) = common::peer_with(index_addr, &b, &["--progress"]);
    pb.send("download big.bin");
    common::wait_for("half the file to be verified", || {
        pb.send("downloads");
        let lines = pb.read_until(Stream::Out, " queued");
        lines
            .iter()
            .any(|l| l.starts_with("big.bin\t524288 of 1048576 bytes (50%)\t") && l.ends_with("\t1 source"))
    });
    pb.expect(Stream::Err, "progress big.bin: 524288 of 1048576 bytes (50%), ");
    pb.send("cancel big.bin");
    let line = pb.expect(Stream::Out, "cancelled big.bin");
    assert_eq!(line, "cancelled big.bin: cancelled; 32 of its 64 pieces are kept, to resume from there");
    pb.send("downloads");
    assert_eq!(
        pb.read_until(Stream::Out, " queued"),
        ["big.bin\t524288 of 1048576 bytes (50%)\tresumable", "0 running, 0 queued, 1 resumable"]
    );
    pb.send("cancel big.bin");
    pb.expect(Stream::Err, "error: cannot cancel \"big.bin\": it is not being downloaded");

    let (whole, sent) = fake_sender_gated(content.clone(), Misbehaviour::Honest, Gates::default());
    let _w = register_fake(index_addr, whole.port(), common::info("big.bin", &content));
    pb.send("download big.bin");
    let done = pb.expect(Stream::Out, "downloaded big.bin");
    assert!(done.ends_with(", 524288 bytes of it already here"), "{done}");
    pb.send("downloads");
    assert_eq!(
        pb.read_until(Stream::Out, " queued"),
        ["0 running, 0 queued"],
        "resumed: no longer resumable"
    );
    assert_eq!(fs::read(b.join("big.bin")).unwrap(), content);
    assert_eq!(sent.load(std::sync::atomic::Ordering::SeqCst), 1 << 19, "only the missing half was fetched");
    assert_eq!(pb.finish().code(), Some(1), "the wrong cancel failed; the cancel itself did not");
}

/// A download cancelled before any piece arrived says that nothing is kept, and leaves
/// nothing behind to resume.
#[test]
fn a_download_cancelled_before_its_first_piece_keeps_nothing() {
    use common::{Gate, Gates, Misbehaviour, fake_sender_gated, random_bytes, register_fake};
    let ws = workspace();
    let content = random_bytes(1 << 20);
    let (_index, index_addr) = Proc::index_server(ws.path());
    let held = Gates { before_data: Some(Gate::default()), ..Gates::default() };
    let (source, _) = fake_sender_gated(content.clone(), Misbehaviour::Honest, held);
    let _f = register_fake(index_addr, source.port(), common::info("big.bin", &content));

    let b = folder(ws.path(), "b", &[]);
    let (mut pb, _) = Proc::peer(index_addr, &b);
    pb.send("download big.bin");
    common::wait_for("the download to be running", || {
        pb.send("downloads");
        let lines = pb.read_until(Stream::Out, " queued");
        lines.iter().any(|l| l.starts_with("big.bin\t0 of 1048576 bytes (0%)\t"))
    });
    pb.send("cancel big.bin");
    let line = pb.expect(Stream::Out, "cancelled big.bin");
    assert_eq!(line, "cancelled big.bin: cancelled before any piece was verified; nothing is kept");
    pb.send("downloads");
    assert_eq!(pb.read_until(Stream::Out, " queued"), ["0 running, 0 queued"]);
    assert_eq!(common::entries(&b), Vec::<String>::new(), "no partial left");
    assert_eq!(pb.finish().code(), Some(0), "a cancel is no failure");
}

/// A name with two contents: `download NAME` takes the most shared and says which;
/// `download NAME@ID` takes the one chosen; an id nobody has is refused.
#[test]
fn a_content_is_chosen_by_its_id_or_by_how_widely_it_is_shared() {
    use common::Misbehaviour::Honest;
    use common::{fake_sender, info, random_bytes, register_fake};
    let ws = workspace();
    let (wide, rare) = (random_bytes(3000), random_bytes(2000));
    let (_index, index_addr) = Proc::index_server(ws.path());
    let mut regs = Vec::new();
    for content in [&wide, &wide, &rare] {
        let addr = fake_sender(content.clone(), Honest);
        regs.push(register_fake(index_addr, addr.port(), info("same.bin", content)));
    }
    let id = |c: &[u8]| hex::encode(&peerdex::content::Tree::of_bytes(c).root[..4]);
    let b = folder(ws.path(), "b", &[]);
    let (mut pb, _) = Proc::peer(index_addr, &b);
    pb.send("download same.bin");
    let done = pb.expect(Stream::Out, "downloaded same.bin");
    assert!(done.ends_with(&format!("; content {} of the 2 under that name", id(&wide))), "{done}");
    assert_eq!(fs::read(b.join("same.bin")).unwrap(), wide);
    pb.send("delete same.bin");
    pb.expect(Stream::Out, "deleted same.bin");
    pb.send(&format!("download same.bin@{}", id(&rare)));
    let done = pb.expect(Stream::Out, "downloaded same.bin");
    assert!(done.starts_with("downloaded same.bin (2000 bytes) from "), "{done}");
    assert_eq!(fs::read(b.join("same.bin")).unwrap(), rare);
    pb.send("delete same.bin");
    pb.expect(Stream::Out, "deleted same.bin");
    pb.send("download same.bin@00000000");
    let err = pb.expect(Stream::Err, "no content");
    assert!(
        err.starts_with("error: cannot download \"same.bin\": no content of that name has the id 00000000"),
        "{err}"
    );
    assert!(!pb.finish().success());
}

/// `download` takes several quoted names, globs (`*` within a folder level, `**`
/// across, a quoted `*` a character), and `#N` lines of the last listing (folders
/// included); each file gets its own result line, and a target that fails does not
/// stop the others but sets the exit status.
#[test]
fn download_takes_several_names_globs_and_lines_of_the_last_listing() {
    let ws = workspace();
    let a = folder(
        ws.path(),
        "a",
        &[
            ("one.flac", b"1"),
            ("two.flac", b"22"),
            ("notes.txt", b"333"),
            ("a b.txt", b"4444"),
            ("star*.txt", b"55555"),
            ("starry.txt", b"666666"),
        ],
    );
    fs::create_dir_all(a.join("album/disc 1")).unwrap();
    fs::write(a.join("album/disc 1/01.flac"), b"7777777").unwrap();
    fs::write(a.join("album/cover.jpg"), b"88888888").unwrap();
    let (_index, index_addr) = Proc::index_server(ws.path());
    let (_pa, _) = Proc::registered_peer(index_addr, &a, 8);
    let b = folder(ws.path(), "b", &[]);
    let (mut pb, _) = Proc::peer(index_addr, &b);

    // A glob: both .flac files at the top, not the one in album/disc 1.
    pb.send("download *.flac");
    pb.expect(Stream::Out, "downloading 2 files matching *.flac");
    let got = sorted(&mut pb, Stream::Out, "downloaded ", 2);
    assert!(got[0].starts_with("downloaded one.flac (1 byte) from "), "{got:?}");
    assert!(got[1].starts_with("downloaded two.flac (2 bytes) from "), "{got:?}");
    assert!(!b.join("album").exists());

    // Several names, quoted; a quoted '*' is a character.
    pb.send("download \"a b.txt\" 'star*.txt' notes.txt");
    let got = sorted(&mut pb, Stream::Out, "downloaded ", 3);
    assert!(got[0].starts_with("downloaded a b.txt (4 bytes)"), "{got:?}");
    assert!(got[1].starts_with("downloaded notes.txt (3 bytes)"), "{got:?}");
    assert!(got[2].starts_with("downloaded star*.txt (5 bytes)"), "{got:?}");
    assert!(!b.join("starry.txt").exists(), "'star*.txt' quoted is one name");

    // `**` crosses folders; a file already here is said and passed over.
    pb.send("download **/*.flac");
    pb.expect(Stream::Out, "already here: one.flac");
    pb.expect(Stream::Out, "downloading 1 file matching **/*.flac");
    pb.expect(Stream::Out, "downloaded album/disc 1/01.flac (7 bytes)");

    // Lines of the last listing: a file, then a folder of a `--dirs` listing.
    pb.send("get_files_list starr");
    pb.expect(Stream::Out, "starry.txt\t6 bytes\t1 peer");
    pb.expect(Stream::Out, "1 file at other peers");
    pb.send("download #1");
    pb.expect(Stream::Out, "downloaded starry.txt (6 bytes)");
    pb.send("get_files_list --dirs album");
    pb.expect(Stream::Out, "album/disc 1/\t7 bytes\t1 file");
    pb.expect(Stream::Out, "album/cover.jpg\t8 bytes\t1 peer");
    pb.expect(Stream::Out, "1 folder and 1 file in album/ at other peers");
    pb.send("download #2");
    pb.expect(Stream::Out, "downloaded album/cover.jpg (8 bytes)");
    pb.send("download #1");
    pb.expect(Stream::Out, "already here: album/disc 1/01.flac");
    pb.expect(Stream::Out, "downloading 0 files under album/disc 1/");

    // Failures name the target and do not stop the others.
    pb.send("download #3");
    pb.expect(Stream::Err, "error: cannot download #3: the last listing had 2 lines");
    pb.send("download *.nothing");
    pb.expect(Stream::Err, "error: cannot download \"*.nothing\": no file at other peers matches it");
    pb.send("download 'gone.txt' *.nothing 'a b.txt'");
    // (The downloads' errors come from their workers, in whichever order.)
    let errs = sorted(&mut pb, Stream::Err, "error: ", 3);
    assert_eq!(
        errs,
        [
            "error: cannot download \"*.nothing\": no file at other peers matches it",
            "error: cannot download \"a b.txt\": a file of that name is already in the shared folder (delete it first)",
            "error: cannot download \"gone.txt\": no registered peer shares it",
        ]
    );
    pb.send("download [z-a]*.txt");
    let err = pb.expect(Stream::Err, "invalid pattern");
    assert!(err.starts_with("error: invalid pattern \"[z-a]*.txt\": "), "{err}");
    assert_eq!(pb.finish().code(), Some(1));
    assert_eq!(fs::read(b.join("album/disc 1/01.flac")).unwrap(), b"7777777");
}

/// Downloads run in the background: a script's `delete` of a name being downloaded
/// says so, and `wait` lets the script go on only once every download has ended and
/// its line is out.
#[test]
fn wait_lets_a_script_use_what_it_downloaded() {
    use common::{Gate, Gates, Misbehaviour, fake_sender_gated, random_bytes, register_fake};
    let ws = workspace();
    let content = random_bytes(100_000);
    let (_index, index_addr) = Proc::index_server(ws.path());
    let gate = Gate::default();
    let held = Gates { before_data: Some(gate.clone()), ..Gates::default() };
    let (source, _) = fake_sender_gated(content.clone(), Misbehaviour::Honest, held);
    let _f = register_fake(index_addr, source.port(), common::info("f.bin", &content));

    let b = folder(ws.path(), "b", &[]);
    let (mut pb, _) = Proc::peer(index_addr, &b);
    pb.send("download f.bin");
    pb.send("delete f.bin");
    let err = pb.expect(Stream::Err, "error: cannot delete");
    assert_eq!(
        err,
        "error: cannot delete \"f.bin\": it is being downloaded (cancel it first, or let it end: wait)"
    );
    pb.send("wait");
    pb.send("delete f.bin");
    gate.open();
    let out = pb.read_until(Stream::Out, "deleted f.bin");
    assert!(out[0].starts_with("downloaded f.bin (100000 bytes) from "), "{out:?}");
    assert_eq!(out.len(), 2, "{out:?}");
    assert!(!b.join("f.bin").exists());
    assert_eq!(pb.finish().code(), Some(1), "the first delete failed");
}

/// A `--json` peer of a fake index that holds the lookup of its `download later.bin`:
/// the index has been asked once this returns, and answers (no peer shares it) once
/// the gate returned opens.
fn a_held_lookup(ws: &tempfile::TempDir) -> (Proc, common::FakeIndex, common::Gate) {
    use common::{FakeIndex, Gate};
    use peerdex::wire::{Message, Reply, Request};
    let (asked, answer) = (Gate::default(), Gate::default());
    let (asking, answering) = (asked.clone(), answer.clone());
    let fake = FakeIndex::start(move |request| match request {
        Request::Lookup { .. } => {
            asking.open();
            answering.wait();
            Some(Reply::NoPeers.encode())
        }
        _ => None,
    });
    let dir = folder(ws.path(), "d", &[]);
    let port = fake.addr.port().to_string();
    let args = ["127.0.0.1", port.as_str(), "0", dir.to_str().unwrap(), "--json"];
    let mut p = Proc::start(env!("CARGO_BIN_EXE_peer"), &args, ws.path());
    next(&mut p, "serving");
    p.send("download later.bin");
    asked.wait();
    (p, fake, answer)
}

/// A download cancelled while the index is asked who shares it ends as cancelled,
/// for that reason, whatever the index then answers: not as "cancelled: no registered
/// peer shares it", which mixes the user's choice with a failure that no longer matters.
#[test]
fn a_download_cancelled_during_its_lookup_says_so() {
    let ws = workspace();
    let (mut p, _fake, answer) = a_held_lookup(&ws);
    p.send("cancel --all");
    // Commands run in order: once `downloads` answers, the cancel is made.
    p.send("downloads");
    next(&mut p, "running");
    answer.open();
    let line = p.expect(Stream::Out, r#""name":"later.bin""#);
    let ended: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        (&ended["type"], &ended["reason"]),
        (&json!("cancelled"), &json!("cancelled while the index was asked who shares it")),
        "{line}"
    );
    p.send("quit");
    p.finish();
}

/// In `--json`, a running download whose size is not known yet (the index has not
/// answered its lookup) has a `total` of null, not 0, which is an empty file's size.
#[test]
fn a_download_of_a_size_not_known_yet_has_a_null_total() {
    let ws = workspace();
    let (mut p, _fake, answer) = a_held_lookup(&ws);
    p.send("downloads");
    let running = next(&mut p, "running");
    assert_eq!(
        (&running["name"], &running["done"], &running["total"]),
        (&json!("later.bin"), &json!(0), &Value::Null)
    );
    answer.open();
    let failed = next(&mut p, "failed");
    assert_eq!(failed["name"], "later.bin");
    p.send("quit");
    p.finish();
}
