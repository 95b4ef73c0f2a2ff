//! Transfers (protocol version 3) with the real binaries: pieces from several sources at
//! once, each verified as it arrives; a source that corrupts a piece, one that dies;
//! a downloader that dies and resumes; sizes at the edges of blocks and pieces; the
//! endgame's duplicate requests cancelled, and a file server's answers to `Cancel`.

mod common;

use std::fs;
use std::io::Read;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::thread;

use common::{
    Gate, Gates, Misbehaviour, Proc, Stream, entries, fake_sender_gated, folder, info, peer_with,
    random_bytes, register_fake, wait_for, workspace,
};
use peerdex::content::{Hash, Tree};
use peerdex::wire::{self, FileReply, FileRequest, Reply, Request, Service};

/// How many pieces the record of the partial download of `root` in `dir` lists as
/// verified, read as the peer wrote it (see `peer::partial`); `None` if there is none.
fn recorded_pieces(dir: &Path, root: &Hash) -> Option<u32> {
    let bytes = fs::read(dir.join(format!(".peerdex-part-{}.pieces", hex::encode(root)))).ok()?;
    let count = u32::from_be_bytes(bytes.get(26..30)?.try_into().unwrap());
    let bits = bytes.get(30 + 32 * count as usize..)?;
    Some(bits.iter().map(|b| b.count_ones()).sum())
}

/// Four sources, used at once: the file is identical, and each sent pieces. (The
/// senders wait until all four have been asked for pieces before sending any, so that
/// none can finish the file before another is asked.)
#[test]
fn four_sources_give_an_identical_file_and_each_sends_pieces() {
    let ws = workspace();
    let content = random_bytes(16 << 20);
    let (_index, index_addr) = Proc::index_server(ws.path());
    let meeting = common::Meeting::of(4);
    let mut counts = Vec::new();
    let mut regs = Vec::new();
    for _ in 0..4 {
        let gates = Gates { meet: Some(meeting.clone()), ..Gates::default() };
        let (addr, sent) = fake_sender_gated(content.clone(), Misbehaviour::Honest, gates);
        regs.push(register_fake(index_addr, addr.port(), info("big.bin", &content)));
        counts.push(sent);
    }
    let d = folder(ws.path(), "d", &[]);
    let (mut pd, _) = Proc::peer(index_addr, &d);
    pd.send("download big.bin");
    let line = pd.expect(Stream::Out, "downloaded big.bin");
    assert!(line.starts_with("downloaded big.bin (16777216 bytes) from 127.0.0.1:"), "{line}");
    assert!(line.ends_with(" and 1 more (4 peers)"), "every source sent verified pieces: {line}");
    assert!(fs::read(d.join("big.bin")).unwrap() == content, "the file differs");
    let sent: Vec<u64> = counts.iter().map(|c| c.load(Ordering::SeqCst)).collect();
    assert!(sent.iter().all(|&n| n > 0), "{sent:?}");
    assert!(sent.iter().sum::<u64>() >= 16 << 20, "{sent:?}");
    assert!(pd.finish().success());
}

/// A source that corrupts one piece is caught at that piece, dropped and named; the
/// file completes from the other source, which is never blamed, and nothing the liar
/// sent is kept.
#[test]
fn a_corrupt_piece_is_caught_at_once_and_the_others_finish() {
    let ws = workspace();
    let content = random_bytes(4 << 20);
    let (_index, index_addr) = Proc::index_server(ws.path());
    // The honest source sends nothing until the corrupter has sent its first run, so
    // the corrupter is sure to be used.
    let first = Gate::default();
    let liar = Gates { after_first_data: Some(first.clone()), ..Gates::default() };
    let (corrupt, _) = fake_sender_gated(content.clone(), Misbehaviour::Corrupt, liar);
    let patient = Gates { before_data: Some(first), ..Gates::default() };
    let (honest, sent) = fake_sender_gated(content.clone(), Misbehaviour::Honest, patient);
    let _c = register_fake(index_addr, corrupt.port(), info("f.bin", &content));
    let _h = register_fake(index_addr, honest.port(), info("f.bin", &content));

    let b = folder(ws.path(), "b", &[]);
    let (mut pb, _) = Proc::peer(index_addr, &b);
    pb.send("download f.bin");
    let err = pb.expect(Stream::Err, &format!("from {corrupt}: piece "));
    let piece: u32 = err.split("piece ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(piece < 256, "{err}");
    assert_eq!(
        err,
        format!(
            "error: cannot download \"f.bin\" from {corrupt}: piece {piece} failed its hash; nothing it sent is kept, and it goes to the back of the order for 10 minutes; going on with the other peers"
        )
    );
    pb.expect(Stream::Out, &format!("downloaded f.bin (4194304 bytes) from {honest}"));
    assert!(fs::read(b.join("f.bin")).unwrap() == content);
    assert_eq!(sent.load(Ordering::SeqCst), 4 << 20, "every byte came from the honest source");
    pb.finish();
    assert_eq!(pb.lines(Stream::Err).len(), 1, "{}", pb.dump());
    assert_eq!(entries(&b), ["f.bin"]);
}

/// Not a test: the body of a separate sender process for
/// [`killing_one_of_two_sources_mid_transfer_still_completes`], which starts this test
/// binary again and kills it with SIGKILL. It holds `PEERDEX_HELPER_FILE`'s first half,
/// sends a quarter of the file, then waits to be killed with requests unanswered.
#[test]
#[ignore = "a helper process, started by another test"]
fn helper_sender_serves_half_then_waits() {
    let Some(_connection) = common::helper_first_half(2) else { return };
    println!("helper is half way");
    loop {
        thread::park(); // until SIGKILL, with requests unanswered
    }
}

#[test]
fn killing_one_of_two_sources_mid_transfer_still_completes() {
    let ws = workspace();
    let content = random_bytes(4 << 20);
    let a = folder(ws.path(), "a", &[("f.bin", &content)]);
    let (_index, index_addr) = Proc::index_server(ws.path());
    let (mut helper, helper_addr) =
        common::start_helper("helper_sender_serves_half_then_waits", &a.join("f.bin"), ws.path());
    let _h = register_fake(index_addr, helper_addr.port(), info("f.bin", &content));
    // The other source waits until the helper is dead.
    let dead = Gate::default();
    let patient = Gates { before_data: Some(dead.clone()), ..Gates::default() };
    let (other, _) = fake_sender_gated(content.clone(), Misbehaviour::Honest, patient);
    let _o = register_fake(index_addr, other.port(), info("f.bin", &content));

    let b = folder(ws.path(), "b", &[]);
    let (mut pb, _) = Proc::peer(index_addr, &b);
    pb.send("download f.bin");
    helper.expect(Stream::Out, "helper is half way");
    helper.kill(); // SIGKILL, with requests in flight
    let err = pb.expect(Stream::Err, &format!("from {helper_addr}"));
    assert_eq!(
        err,
        format!(
            "error: cannot download \"f.bin\" from {helper_addr}: the peer closed the connection; going on with the other peers"
        )
    );
    dead.open();
    let done = pb.expect(Stream::Out, "downloaded f.bin (4194304 bytes) from ");
    assert!(done.contains(&other.to_string()), "{done}");
    assert!(fs::read(b.join("f.bin")).unwrap() == content);
    assert_eq!(entries(&b), ["f.bin"]);
}

/// A downloader killed mid-download keeps its verified pieces; started again, it
/// fetches only the others.
#[test]
fn a_restarted_downloader_fetches_only_the_missing_pieces() {
    let ws = workspace();
    let content = random_bytes(4 << 20); // 256 pieces of 16 KiB
    let root = Tree::of_bytes(&content).root;
    let (_index, index_addr) = Proc::index_server(ws.path());
    let half = Gates { up_to: Some(2 << 20), ..Gates::default() };
    let (first, _) = fake_sender_gated(content.clone(), Misbehaviour::Honest, half);
    let mut first_reg = register_fake(index_addr, first.port(), info("f.bin", &content));

    let b = folder(ws.path(), "b", &[]);
    let (mut pb, _) = Proc::peer(index_addr, &b);
    pb.send("download f.bin");
    wait_for("half the pieces to be recorded", || recorded_pieces(&b, &root) == Some(128));
    pb.kill(); // SIGKILL
    assert_eq!(first_reg.call(&Request::Unregister), Reply::Done { files: 0 });

    let (second, sent) = fake_sender_gated(content.clone(), Misbehaviour::Honest, Gates::default());
    let _s = register_fake(index_addr, second.port(), info("f.bin", &content));
    let (mut again, _) = Proc::peer(index_addr, &b);
    again.send("download f.bin");
    let done = again.expect(Stream::Out, "downloaded f.bin");
    assert_eq!(
        done,
        format!("downloaded f.bin (4194304 bytes) from {second}, 2097152 bytes of it already here")
    );
    assert_eq!(sent.load(Ordering::SeqCst), 2 << 20, "only the missing half was fetched");
    assert!(fs::read(b.join("f.bin")).unwrap() == content);
    assert_eq!(entries(&b), ["f.bin"]);
}

/// Two files are equal, compared a megabyte at a time.
fn same_file(a: &Path, b: &Path) -> bool {
    let (mut fa, mut fb) = (fs::File::open(a).unwrap(), fs::File::open(b).unwrap());
    if fa.metadata().unwrap().len() != fb.metadata().unwrap().len() {
        return false;
    }
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = fa.read(&mut ba).unwrap();
        if n == 0 {
            return true;
        }
        fb.read_exact(&mut bb[..n]).unwrap();
        if ba[..n] != bb[..n] {
            return false;
        }
    }
}

/// Sizes at the edges: empty, one byte, a block less one, one block, a power of two,
/// and 1 GiB + 1 (pieces of 512 KiB, the last of one byte).
#[test]
fn sizes_at_the_edges_of_blocks_and_pieces_arrive_whole() {
    let ws = workspace();
    let a = folder(ws.path(), "a", &[]);
    let sizes = [0usize, 1, 16383, 16384, 1 << 20];
    for size in sizes {
        fs::write(a.join(format!("f{size}")), random_bytes(size)).unwrap();
    }
    // 1 GiB + 1: sparse, with random bytes at the start, across a piece boundary and
    // at the very end.
    let big = fs::File::create(a.join("big")).unwrap();
    big.set_len((1 << 30) + 1).unwrap();
    for at in [0u64, (512 << 10) - 8, 1 << 29, 1 << 30] {
        let bytes = random_bytes(if at == 1 << 30 { 1 } else { 16 });
        std::os::unix::fs::FileExt::write_all_at(&big, &bytes, at).unwrap();
    }
    drop(big);
    let (_index, index_addr) = Proc::index_server(ws.path());
    let (_pa, _) = Proc::registered_peer(index_addr, &a, sizes.len() + 1);
    let b = folder(ws.path(), "b", &[]);
    let (mut pb, _) = Proc::peer(index_addr, &b);
    for size in sizes {
        pb.send(&format!("download f{size}"));
    }
    pb.send("download big");
    let mut done: Vec<String> = (0..sizes.len() + 1).map(|_| pb.expect(Stream::Out, "downloaded ")).collect();
    done.sort();
    assert!(done[0].starts_with("downloaded big (1073741825 bytes) from "), "{done:?}");
    assert!(pb.finish().success(), "{}", pb.dump());
    for name in sizes.iter().map(|s| format!("f{s}")).chain(["big".to_owned()]) {
        assert!(same_file(&a.join(&name), &b.join(&name)), "{name} differs");
    }
}

/// A registered peer that is downloading a file offers the pieces it has verified:
/// the index lists it as holding part of the file, its file server sends those pieces
/// and refuses the others with a reason, and a third peer completes the file from it
/// and a seeder that has only the other half.
#[test]
fn a_partial_holder_serves_its_verified_pieces_to_others() {
    let ws = workspace();
    let content = random_bytes(4 << 20); // 256 pieces of 16 KiB
    let tree = Tree::of_bytes(&content);
    let (_index, index_addr) = Proc::index_server(ws.path());
    // The first seeder has (serves) only the first half.
    let first = Gates { up_to: Some(2 << 20), ..Gates::default() };
    let (front, _) = fake_sender_gated(content.clone(), Misbehaviour::Honest, first);
    let mut front_reg = register_fake(index_addr, front.port(), info("f.bin", &content));

    let b = folder(ws.path(), "b", &[]);
    let (mut pb, b_files) = peer_with(index_addr, &b, &["--read-timeout", "600"]);
    pb.send("register");
    pb.expect(Stream::Out, "registered 0 files");
    pb.send("download f.bin");
    wait_for("B to verify the first half", || recorded_pieces(&b, &tree.root) == Some(128));
    assert_eq!(front_reg.call(&Request::Unregister), Reply::Done { files: 0 });

    // B's file server: its pieces, and a reasoned refusal for the others.
    let mut s = common::handshaken("127.0.0.2", b_files, Service::Files);
    wire::send_msg(&mut s, &FileRequest::Have { root: tree.root }).unwrap();
    match wire::recv_msg::<FileReply>(&mut s).unwrap() {
        FileReply::Have(bits) => assert_eq!(bits.ones().collect::<Vec<_>>(), (0..128).collect::<Vec<_>>()),
        other => panic!("{other:?}"),
    }
    wire::send_msg(&mut s, &FileRequest::Get { root: tree.root, first: 127, count: 2 }).unwrap();
    assert_eq!(
        wire::recv_msg::<FileReply>(&mut s).unwrap(),
        FileReply::Error(
            "cannot send pieces 127..129 of \"f.bin\": this peer holds 128 of its 256 pieces (it is downloading it)".into()
        )
    );
    wire::send_msg(&mut s, &FileRequest::Get { root: tree.root, first: 0, count: 1 }).unwrap();
    assert_eq!(
        wire::recv_msg::<FileReply>(&mut s).unwrap(),
        FileReply::Data { first: 0, count: 1, len: 16384 }
    );
    let mut piece = vec![0u8; 16384];
    s.read_exact(&mut piece).unwrap();
    assert!(piece == content[..16384]);

    // A seeder of the second half only, and a third peer: the file comes whole from
    // the two.
    let second = Gates { from: Some(2 << 20), ..Gates::default() };
    let (back, _) = fake_sender_gated(content.clone(), Misbehaviour::Honest, second);
    let _back = register_fake(index_addr, back.port(), info("f.bin", &content));
    let c = folder(ws.path(), "c", &[]);
    let (mut pc, _) = Proc::peer(index_addr, &c);
    assert_eq!(pc.list(""), ["f.bin\t4194304 bytes\t1 peer, 1 downloading"]);
    pc.send("download f.bin");
    let done = pc.expect(Stream::Out, "downloaded f.bin");
    let (x, y) =
        (format!("from {b_files} and {back} (2 peers)"), format!("from {back} and {b_files} (2 peers)"));
    assert!(done.ends_with(&x) || done.ends_with(&y), "{done}");
    assert!(fs::read(c.join("f.bin")).unwrap() == content);
}

/// A file server reads every request that has arrived before it answers the next: a
/// `Get` cancelled before it began is answered `Cancelled` and sends nothing, in its
/// turn; a `Cancel` that names no waiting `Get` (another count, or one already
/// answered) changes nothing, and the connection goes on.
#[test]
fn a_file_server_answers_a_cancelled_get_with_cancelled_in_its_turn() {
    let ws = workspace();
    let content = random_bytes(1 << 20); // 64 pieces of 16 KiB
    let (_processes, files, root) = one_seeder(ws.path(), &content);
    let mut s = common::handshaken("127.0.0.1", files, Service::Files);
    let read_data = |s: &mut std::net::TcpStream, first, count| read_run(s, &content, first, count);

    // All in one write: the server has them all before it answers the first.
    let mut batch = Vec::new();
    for request in [
        FileRequest::Get { root, first: 0, count: 4 },
        FileRequest::Get { root, first: 10, count: 2 },
        FileRequest::Cancel { root, first: 10, count: 2 },
        FileRequest::Get { root, first: 20, count: 1 },
        FileRequest::Cancel { root, first: 20, count: 2 },
        FileRequest::Status,
    ] {
        wire::send_msg(&mut batch, &request).unwrap();
    }
    std::io::Write::write_all(&mut s, &batch).unwrap();
    read_data(&mut s, 0, 4);
    assert_eq!(wire::recv_msg::<FileReply>(&mut s).unwrap(), FileReply::Cancelled { first: 10, count: 2 });
    read_data(&mut s, 20, 1); // a Cancel of another count leaves a Get alone
    assert!(matches!(wire::recv_msg::<FileReply>(&mut s).unwrap(), FileReply::Status { .. }));

    // Cancelling a Get already answered does nothing; the connection goes on.
    wire::send_msg(&mut s, &FileRequest::Cancel { root, first: 20, count: 1 }).unwrap();
    wire::send_msg(&mut s, &FileRequest::Get { root, first: 63, count: 1 }).unwrap();
    read_data(&mut s, 63, 1);
}

/// An index server and a registered peer sharing `content` as `f.bin` in `dir`; the
/// peer's file server's address, and the content's root.
fn one_seeder(dir: &Path, content: &[u8]) -> ([Proc; 2], std::net::SocketAddr, Hash) {
    let shared = folder(dir, "shared", &[("f.bin", content)]);
    let (index, index_addr) = Proc::index_server(dir);
    let (peer, files) = Proc::registered_peer(index_addr, &shared, 1);
    ([index, peer], files, Tree::of_bytes(content).root)
}

/// Reads the answer to a `Get` of the 16 KiB pieces `first..first + count` of
/// `content`: a `Data` header saying so, then exactly those bytes.
fn read_run(s: &mut std::net::TcpStream, content: &[u8], first: u32, count: u32) {
    let len = u64::from(count) << 14;
    assert_eq!(wire::recv_msg::<FileReply>(s).unwrap(), FileReply::Data { first, count, len });
    let mut body = vec![0; len as usize];
    s.read_exact(&mut body).unwrap();
    assert!(body == content[(first as usize) << 14..((first + count) as usize) << 14], "wrong bytes");
}

/// The requests a [`hoarder`] read, in order.
type Seen = std::sync::Arc<std::sync::Mutex<Vec<FileRequest>>>;

/// A source that says it holds all of `content` and never sends a piece: it reads and
/// keeps every request (opening `asked` at its first `Get`), and answers a cancelled
/// `Get` with `Cancelled` once every `Get` before it is cancelled too (requests are
/// answered in order).
fn hoarder(content: &[u8], asked: Gate) -> (std::net::SocketAddr, Seen) {
    let tree = Tree::of_bytes(content);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Seen::default();
    let log = std::sync::Arc::clone(&seen);
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let (tree, log, asked) = (tree.clone(), std::sync::Arc::clone(&log), asked.clone());
            thread::spawn(move || {
                let mut r = s.try_clone().unwrap();
                if wire::server_handshake(&mut r, &mut s, Service::Files, 4096).is_err() {
                    return;
                }
                // Gets not answered, each with whether it was cancelled.
                let mut waiting: Vec<(u32, u32, bool)> = Vec::new();
                while let Ok(request) = wire::recv_msg::<FileRequest>(&mut r) {
                    log.lock().unwrap().push(request.clone());
                    let reply = match request {
                        FileRequest::Layer { .. } => FileReply::Layer(tree.layer.clone()),
                        FileRequest::Have { .. } => {
                            FileReply::Have(peerdex::content::Bitfield::full(tree.geometry.pieces()))
                        }
                        FileRequest::Status => FileReply::Status { uploads: 0, bytes_per_sec: 0 },
                        FileRequest::Get { first, count, .. } => {
                            waiting.push((first, count, false));
                            asked.open();
                            continue;
                        }
                        FileRequest::Cancel { first, count, .. } => {
                            if let Some(w) = waiting.iter_mut().find(|w| (w.0, w.1) == (first, count)) {
                                w.2 = true;
                            }
                            while waiting.first().is_some_and(|w| w.2) {
                                let (first, count, _) = waiting.remove(0);
                                if wire::send_msg(&mut s, &FileReply::Cancelled { first, count }).is_err() {
                                    return;
                                }
                            }
                            continue;
                        }
                    };
                    if wire::send_msg(&mut s, &reply).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// The endgame: pieces asked of a source that sends nothing are asked of another too,
/// once they have been out a while; when every piece of a request has come from the
/// other source, the first is told with a `Cancel` of exactly that request (before
/// the download ends). The file is whole, and all of it came from the one that sent.
#[test]
fn endgame_duplicates_are_cancelled_at_the_slow_source() {
    let ws = workspace();
    let content = random_bytes(2 << 20);
    let (_index, index_addr) = Proc::index_server(ws.path());
    // The honest source sends nothing until the hoarder has been asked for pieces.
    let asked = Gate::default();
    let (slow, seen) = hoarder(&content, asked.clone());
    let patient = Gates { before_data: Some(asked), ..Gates::default() };
    let (honest, sent) = fake_sender_gated(content.clone(), Misbehaviour::Honest, patient);
    let _s = register_fake(index_addr, slow.port(), info("f.bin", &content));
    let _h = register_fake(index_addr, honest.port(), info("f.bin", &content));

    let d = folder(ws.path(), "d", &[]);
    let (mut pd, _) = Proc::peer(index_addr, &d);
    pd.send("download f.bin");
    let done = pd.expect(Stream::Out, "downloaded f.bin");
    assert_eq!(done, format!("downloaded f.bin (2097152 bytes) from {honest}"));
    assert!(fs::read(d.join("f.bin")).unwrap() == content, "the file differs");
    assert_eq!(sent.load(Ordering::SeqCst), 2 << 20, "every byte came from the honest source");
    // The `Cancel` left the peer before the download ended, but the hoarder's thread
    // may not have read it yet: wait for it.
    let cancelled = |r: &FileRequest| matches!(r, FileRequest::Cancel { .. });
    wait_for("the slow source to be told a Cancel", || seen.lock().unwrap().iter().any(cancelled));
    let requests = seen.lock().unwrap().clone();
    let gets: Vec<(u32, u32)> = requests
        .iter()
        .filter_map(|r| match *r {
            FileRequest::Get { first, count, .. } => Some((first, count)),
            _ => None,
        })
        .collect();
    let cancels: Vec<(u32, u32)> = requests
        .iter()
        .filter_map(|r| match *r {
            FileRequest::Cancel { first, count, .. } => Some((first, count)),
            _ => None,
        })
        .collect();
    assert!(!gets.is_empty(), "{requests:?}");
    assert!(!cancels.is_empty(), "no request was cancelled: {requests:?}");
    assert!(cancels.iter().all(|c| gets.contains(c)), "a Cancel names exactly a Get: {requests:?}");
    assert!(pd.finish().success());
    assert!(pd.lines(Stream::Err).is_empty(), "{}", pd.dump());
}

/// Super-seeding: while two downloaders fetch one shared file at once, the file server
/// tells each it holds only the pieces nobody has asked for yet (and still sends any
/// piece asked for); alone, or once every piece has been asked for, it lists them all.
#[test]
fn a_seeder_lists_only_pieces_nobody_asked_for_while_several_fetch_a_file() {
    let ws = workspace();
    let content = random_bytes(256 << 10); // 16 pieces of 16 KiB
    let (_processes, files, root) = one_seeder(ws.path(), &content);
    let have = |s: &mut std::net::TcpStream| -> Vec<u32> {
        wire::send_msg(s, &FileRequest::Have { root }).unwrap();
        match wire::recv_msg::<FileReply>(s).unwrap() {
            FileReply::Have(bits) => bits.ones().collect(),
            other => panic!("{other:?}"),
        }
    };
    let get = |s: &mut std::net::TcpStream, first, count| {
        wire::send_msg(s, &FileRequest::Get { root, first, count }).unwrap();
        read_run(s, &content, first, count);
    };
    let all: Vec<u32> = (0..16).collect();
    let mut one = common::handshaken("127.0.0.1", files, Service::Files);
    assert_eq!(have(&mut one), all, "alone, a downloader is told every piece");
    get(&mut one, 0, 4);
    let mut two = common::handshaken("127.0.0.2", files, Service::Files);
    assert_eq!(have(&mut two), (4..16).collect::<Vec<_>>(), "the pieces nobody asked for");
    get(&mut two, 4, 10);
    assert_eq!(have(&mut one), [14, 15]);
    get(&mut two, 0, 2); // asked for already: sent all the same
    get(&mut one, 14, 2);
    assert_eq!(have(&mut two), all, "every piece was asked for: the round is over");
}
