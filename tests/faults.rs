//! Faults around the peers, with the real binaries: senders that die, stall or lie,
//! downloaders that die, a folder that is full or read-only, an index server that
//! restarts, many downloads at once, bad input lines.

mod common;

use std::fs;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::thread;

use common::{
    Gate, Gates, Misbehaviour, Proc, Stream, entries, fake_sender, fake_sender_counted, fake_sender_gated,
    folder, info, peer_with, random_bytes, register_fake, wait_for, workspace,
};
use peerdex::content::Tree;
use peerdex::wire::{self, FileInfo, FileReply, FileRequest, Service};

#[test]
fn a_silent_sender_times_out_and_the_next_peer_is_tried() {
    let ws = workspace();
    let content = random_bytes(50_000);
    let (_index, index_addr) = Proc::index_server(ws.path());
    let silent = fake_sender(content.clone(), Misbehaviour::Silent);
    let _fake = register_fake(index_addr, silent.port(), info("f.bin", &content));

    let b = folder(ws.path(), "b", &[]);
    let (mut pb, _) = peer_with(index_addr, &b, &["--read-timeout", "1"]);
    pb.send("download f.bin");
    let err = pb.expect(Stream::Err, "error: cannot download \"f.bin\"");
    // It answered the handshake, the piece layer and the bitfield, then nothing.
    assert!(
        err.starts_with(&format!("error: cannot download \"f.bin\" from {silent}: the peer sent only ")),
        "{err}"
    );
    assert!(err.ends_with(" bytes in 1.0 s (at least 65536 are needed)"), "{err}");
    pb.expect(Stream::Err, "error: cannot download \"f.bin\": the only peer that shares it failed");
    assert!(entries(&b).is_empty(), "no partial file: {:?}", entries(&b));

    // With an honest peer as well, the download completes whichever is tried first.
    let a = folder(ws.path(), "a", &[("f.bin", &content)]);
    let (_pa, _) = Proc::registered_peer(index_addr, &a, 1);
    pb.send("download f.bin");
    pb.expect(Stream::Out, "downloaded f.bin");
    assert_eq!(fs::read(b.join("f.bin")).unwrap(), content);
}

#[test]
fn a_sender_that_never_answers_the_handshake_times_out() {
    let ws = workspace();
    let (_index, index_addr) = Proc::index_server(ws.path());
    // Accepts connections (the kernel does, from the backlog) and never says a word.
    let mute = TcpListener::bind("127.0.0.1:0").unwrap();
    let content = b"whatever";
    let _fake = register_fake(index_addr, mute.local_addr().unwrap().port(), info("m.txt", content));
    let b = folder(ws.path(), "b", &[]);
    let (mut pb, _) = peer_with(index_addr, &b, &["--read-timeout", "1", "--peer-choice", "random"]);
    pb.send("download m.txt");
    let err = pb.expect(Stream::Err, "error: cannot download \"m.txt\" from");
    assert!(err.ends_with("the peer sent nothing for 1.0 s"), "{err}");
    drop(mute);
}

#[test]
fn a_size_of_2_pow_63_is_refused_before_a_byte_is_written() {
    let ws = workspace();
    let content = random_bytes(1000);
    let (_index, index_addr) = Proc::index_server(ws.path());
    let huge = fake_sender(content.clone(), Misbehaviour::Huge);
    let claim = FileInfo { size: 1 << 63, ..info("huge.bin", &content) };
    let _fake = register_fake(index_addr, huge.port(), claim);
    let b = folder(ws.path(), "b", &[("keep.txt", b"untouched")]);
    let (mut pb, _) = Proc::peer(index_addr, &b);
    pb.send("download huge.bin");
    let err = pb.expect(Stream::Err, "error: cannot download \"huge.bin\"");
    assert!(
        err.starts_with(
            "error: cannot download \"huge.bin\": it needs 9223372036854775808 more bytes, more than the"
        ),
        "{err}"
    );
    assert_eq!(pb.finish().code(), Some(1));
    assert_eq!(entries(&b), ["keep.txt"]);
    assert_eq!(fs::read(b.join("keep.txt")).unwrap(), b"untouched");
}

/// Not a test: the body of a separate sender process for
/// [`a_sender_killed_mid_transfer_is_resumed_from_another_peer`], which starts this
/// test binary again with `--ignored --exact` and kills it with SIGKILL. It serves the
/// file named by `PEERDEX_HELPER_FILE` to one downloader: every piece in its first
/// half, then it closes its side and waits to be killed.
#[test]
#[ignore = "a helper process, started by another test"]
fn helper_sender_sends_half_then_waits() {
    let Some((mut r, s)) = common::helper_first_half(1) else { return };
    // Ends its side after the half; once the downloader has read all of it and
    // closed, the test is told, and kills this process.
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let _ = std::io::copy(&mut r, &mut std::io::sink());
    println!("helper sent half");
    loop {
        thread::park(); // until SIGKILL
    }
}

/// A sender killed mid-transfer gives an error at once and leaves nothing under the
/// final name. The pieces received are kept in the partial file (named after the
/// content's root) with a record of which are verified, and the retry, from another
/// peer, asks it only for the others.
#[test]
fn a_sender_killed_mid_transfer_is_resumed_from_another_peer() {
    let ws = workspace();
    let content = random_bytes(4 << 20);
    let root = Tree::of_bytes(&content).root;
    let a = folder(ws.path(), "a", &[("f.bin", &content)]);
    let (_index, index_addr) = Proc::index_server(ws.path());

    let (mut helper, helper_addr) =
        common::start_helper("helper_sender_sends_half_then_waits", &a.join("f.bin"), ws.path());
    let fake = register_fake(index_addr, helper_addr.port(), info("f.bin", &content));

    let b = folder(ws.path(), "b", &[]);
    let (mut pb, _) = Proc::peer(index_addr, &b);
    pb.send("download f.bin");
    helper.expect(Stream::Out, "helper sent half");
    helper.kill(); // SIGKILL
    let err = pb.expect(Stream::Err, "error: cannot download \"f.bin\" from");
    assert_eq!(
        err,
        format!("error: cannot download \"f.bin\" from {helper_addr}: the peer closed the connection")
    );
    let err = pb.expect(Stream::Err, "error: cannot download \"f.bin\":");
    assert_eq!(
        err,
        "error: cannot download \"f.bin\": the only peer that shares it failed (128 of 256 pieces are kept, to resume from there)"
    );
    let partial = format!(".peerdex-part-{}", hex::encode(root));
    let record = format!("{partial}.pieces");
    assert_eq!(entries(&b), [partial.clone(), record.clone()], "nothing under the final name, the half kept");
    assert_eq!(&fs::read(b.join(&partial)).unwrap()[..2 << 20], &content[..2 << 20]);

    // The retry goes to another peer, which is asked only for the other half.
    drop(fake);
    let (other, sent) = fake_sender_counted(content.clone(), Misbehaviour::Honest);
    let _other = register_fake(index_addr, other.port(), info("f.bin", &content));
    pb.send("download f.bin");
    let done = pb.expect(Stream::Out, "downloaded f.bin");
    assert_eq!(
        done,
        format!("downloaded f.bin ({} bytes) from {other}, 2097152 bytes of it already here", content.len())
    );
    assert_eq!(sent.load(std::sync::atomic::Ordering::SeqCst), 2 << 20, "only the missing half was sent");
    assert!(fs::read(b.join("f.bin")).unwrap() == content, "the resumed file differs");
    assert_eq!(entries(&b), ["f.bin"], "the partial file and its record are gone");
}

#[test]
fn a_downloader_that_dies_mid_transfer_does_not_stop_the_sender() {
    let ws = workspace();
    let content = random_bytes(8 << 20);
    let a = folder(ws.path(), "a", &[("big.bin", &content)]);
    let (_index, index_addr) = Proc::index_server(ws.path());
    let (pa, files_addr) = Proc::registered_peer(index_addr, &a, 1);

    // Downloaders that read a little and vanish, as a killed process would: the kernel
    // closes their sockets with data unread, which resets the connection.
    let tree = Tree::of_bytes(&content);
    for _ in 0..5 {
        let mut s = TcpStream::connect(files_addr).unwrap();
        let mut r = s.try_clone().unwrap();
        wire::client_handshake(&mut r, &mut s, Service::Files).unwrap();
        let get = FileRequest::Get { root: tree.root, first: 0, count: tree.geometry.pieces() };
        wire::send_msg(&mut s, &get).unwrap();
        let mut some = [0u8; 1000];
        r.read_exact(&mut some).unwrap();
    }
    let b = folder(ws.path(), "b", &[]);
    let (mut pb, _) = Proc::peer(index_addr, &b);
    pb.send("download big.bin");
    pb.expect(Stream::Out, "downloaded big.bin");
    assert_eq!(fs::read(b.join("big.bin")).unwrap(), content);
    assert!(pa.lines(Stream::Err).is_empty(), "the sender reported nothing: {:?}", pa.lines(Stream::Err));
}

#[test]
fn a_hundred_concurrent_downloads_of_one_file_are_all_identical() {
    let ws = workspace();
    let content = random_bytes(1 << 20);
    let tree = Tree::of_bytes(&content);
    let a = folder(ws.path(), "a", &[("one.bin", &content)]);
    let (_index, index_addr) = Proc::index_server(ws.path());
    let (_pa, files_addr) = Proc::registered_peer(index_addr, &a, 1);
    // From 25 addresses, 4 each: as many uploads as one address may have at once.
    let downloads: Vec<_> = (0..100)
        .map(|i| {
            thread::spawn(move || {
                let mut s = common::connect_from(&format!("127.0.0.{}", 10 + i / 4), files_addr);
                let mut r = s.try_clone().unwrap();
                wire::client_handshake(&mut r, &mut s, Service::Files).unwrap();
                let get = FileRequest::Get { root: tree.root, first: 0, count: tree.geometry.pieces() };
                wire::send_msg(&mut s, &get).unwrap();
                let header: FileReply = wire::recv_msg(&mut r).unwrap();
                let mut body = vec![0; 1 << 20];
                r.read_exact(&mut body).unwrap();
                (header, body)
            })
        })
        .collect();
    for d in downloads {
        let (header, body) = d.join().unwrap();
        assert_eq!(header, FileReply::Data { first: 0, count: 64, len: 1 << 20 });
        assert!(body == content, "a download differs");
    }
}

#[test]
fn symlinks_out_of_the_folder_are_never_listed() {
    let ws = workspace();
    let outside = folder(ws.path(), "outside", &[("secret.txt", b"secret")]);
    let a = folder(ws.path(), "a", &[("shared.txt", b"shared")]);
    std::os::unix::fs::symlink(outside.join("secret.txt"), a.join("to-file")).unwrap();
    std::os::unix::fs::symlink(&outside, a.join("to-dir")).unwrap();
    std::os::unix::fs::symlink(a.join("shared.txt"), a.join("inside-link")).unwrap();
    let (_index, index_addr) = Proc::index_server(ws.path());
    let (_pa, _) = Proc::registered_peer(index_addr, &a, 2);
    let b = folder(ws.path(), "b", &[]);
    let (mut pb, _) = Proc::peer(index_addr, &b);
    assert_eq!(pb.list(""), ["inside-link\t6 bytes\t1 peer", "shared.txt\t6 bytes\t1 peer"]);
}

/// A tmpfs of `size` mounted on a new folder, unmounted when dropped.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(dir: PathBuf, size: &str) -> Mount {
        fs::create_dir_all(&dir).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status();
        assert!(status.is_ok_and(|s| s.success()), "mounting a tmpfs needs root");
        Mount(dir)
    }

    fn read_only(&self) {
        let status = Command::new("mount").args(["-o", "remount,ro"]).arg(&self.0).status().unwrap();
        assert!(status.success());
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_or_read_only_folder_is_a_clear_error_and_nothing_is_lost() {
    let ws = workspace();
    let big = random_bytes(3 << 20);
    let small = b"small enough".to_vec();
    let a = folder(ws.path(), "a", &[("big.bin", &big), ("small.txt", &small), ("tiny.txt", b"t")]);
    let (_index, index_addr) = Proc::index_server(ws.path());
    let (mut pa, _) = Proc::registered_peer(index_addr, &a, 3);

    // A 2 MiB folder holding a file of its own: the 3 MiB download cannot fit.
    let mount = Mount::tmpfs(ws.path().join("b"), "2m");
    fs::write(mount.0.join("mine.txt"), b"precious").unwrap();
    let (mut pb, _) = Proc::peer(index_addr, &mount.0);
    pb.send("download big.bin");
    let err = pb.expect(Stream::Err, "error: cannot download \"big.bin\"");
    assert!(
        err.starts_with("error: cannot download \"big.bin\": it needs 3145728 more bytes, more than the"),
        "{err}"
    );
    assert!(err.ends_with("bytes free in the shared folder"), "{err}");
    // Two downloads that each fit but not together: the second runs out of room
    // (while writing, or already at the free-space check, depending on timing).
    let halves = [random_bytes(1_200_000), random_bytes(1_200_000)];
    fs::write(a.join("half1.bin"), &halves[0]).unwrap();
    fs::write(a.join("half2.bin"), &halves[1]).unwrap();
    pa.send("update");
    pa.expect(Stream::Out, "updated: 5 files registered");
    pb.send("download half1.bin");
    pb.send("download half2.bin");
    // Once they have ended (the one that ran out of room has given it back): while the
    // other was still writing, even a small file might not have fitted.
    pb.send("wait");
    pb.send("download small.txt");
    let status = pb.finish();
    assert_eq!(status.code(), Some(1));
    let errors = pb.lines(Stream::Err).join("\n");
    assert!(
        errors.contains("No space left on device")
            || errors.matches("bytes free in the shared folder").count() >= 2,
        "{errors}"
    );
    let left = entries(&mount.0);
    assert!(left.iter().all(|n| !n.starts_with(".peerdex-part")), "no temporary left: {left:?}");
    assert!(left.contains(&"small.txt".to_string()), "the small download still worked: {left:?}");
    assert_eq!(fs::read(mount.0.join("mine.txt")).unwrap(), b"precious");
    for (i, half) in halves.iter().enumerate() {
        let path = mount.0.join(format!("half{}.bin", i + 1));
        if path.exists() {
            assert!(fs::read(&path).unwrap() == *half, "a completed file is whole");
        }
    }

    // Read-only: refused at once, nothing changes.
    mount.read_only();
    let (mut pc, _) = Proc::peer(index_addr, &mount.0);
    pc.send("delete mine.txt");
    pc.send("download tiny.txt");
    assert_eq!(pc.finish().code(), Some(1));
    let errors = pc.lines(Stream::Err).join("\n");
    assert!(errors.contains("cannot delete \"mine.txt\": Read-only file system"), "{errors}");
    assert!(errors.contains("cannot create a temporary file in the shared folder"), "{errors}");
    assert_eq!(fs::read(mount.0.join("mine.txt")).unwrap(), b"precious");
}

#[test]
fn peers_reconnect_and_register_again_when_the_index_restarts() {
    let ws = workspace();
    let a = folder(ws.path(), "a", &[("x.txt", b"from a")]);
    let b = folder(ws.path(), "b", &[]);
    let (mut index, index_addr) = Proc::index_server(ws.path());
    let (mut pa, _) = Proc::registered_peer(index_addr, &a, 1);
    let (mut pb, _) = Proc::peer(index_addr, &b);
    assert_eq!(pb.list(""), ["x.txt\t6 bytes\t1 peer"]);

    index.kill();
    pa.expect(Stream::Err, "note: lost the connection to the index server");
    pb.send("get_files_list");
    pb.expect(Stream::Err, "error: get_files_list failed");

    // The same address again, as after a restart.
    let port = index_addr.port().to_string();
    let (_index, again) = Proc::index_server_with(ws.path(), &["127.0.0.1", &port]);
    assert_eq!(again, index_addr);
    let note = pa.expect(Stream::Err, "note: reconnected to the index server");
    assert_eq!(note, format!("note: reconnected to the index server {index_addr}; registered 1 file again"));
    pb.expect(Stream::Err, "note: reconnected to the index server 127.0.0.1");
    // Nobody typed anything: A's files are back in B's listing.
    assert_eq!(pb.list(""), ["x.txt\t6 bytes\t1 peer"]);
    pb.send("download x.txt");
    pb.expect(Stream::Out, "downloaded x.txt");
}

#[test]
fn bad_input_lines_are_reported_and_the_loop_goes_on() {
    let ws = workspace();
    let a = folder(ws.path(), "a", &[]);
    let (_index, index_addr) = Proc::index_server(ws.path());
    let (mut p, _) = Proc::peer(index_addr, &a);
    let mut huge = vec![b'x'; 1 << 20];
    huge.push(b'\n');
    p.send_bytes(&huge);
    p.send_bytes(b"download \xc3\x28\n");
    p.send("frobnicate now");
    p.send("unregister please");
    p.send("help");
    let status = p.finish();
    assert_eq!(status.code(), Some(1));
    assert_eq!(
        p.lines(Stream::Err),
        [
            "error: line longer than 8192 bytes ignored",
            "error: line is not valid UTF-8; ignored",
            "error: unknown command \"frobnicate\" (type help for the list)",
            "error: unregister takes no arguments",
        ]
    );
    assert!(p.lines(Stream::Out).iter().any(|l| l.starts_with("commands:")), "help still ran");
}

#[test]
fn kept_partials_give_way_to_a_download_that_needs_their_room() {
    let ws = workspace();
    let content = random_bytes(2 << 20);
    let a = folder(ws.path(), "a", &[("new.bin", &content)]);
    let (_index, index_addr) = Proc::index_server(ws.path());
    let (_pa, _) = Proc::registered_peer(index_addr, &a, 1);

    // A 4 MiB folder holding two kept partials of 1.5 MB, from an hour and two ago.
    let mount = Mount::tmpfs(ws.path().join("b"), "4m");
    let partial = |byte: u8, hours: u64| {
        let path = mount.0.join(format!(".peerdex-part-{}", hex::encode([byte; 32])));
        fs::write(&path, vec![byte; 1_500_000]).unwrap();
        let when = std::time::SystemTime::now() - std::time::Duration::from_secs(hours * 3600);
        fs::File::options().write(true).open(&path).unwrap().set_modified(when).unwrap();
        path
    };
    let (older, newer) = (partial(1, 2), partial(2, 1));
    let (mut pb, _) = Proc::peer(index_addr, &mount.0);
    pb.send("download new.bin");
    pb.expect(Stream::Out, "downloaded new.bin");
    assert!(fs::read(mount.0.join("new.bin")).unwrap() == content);
    assert!(!older.exists(), "the oldest partial made room");
    assert!(newer.exists(), "only as many as needed were deleted");
}

#[test]
fn a_download_that_runs_out_of_room_keeps_nothing_and_offers_no_resume() {
    let ws = workspace();
    let content = random_bytes(2 << 20);
    let (_index, index_addr) = Proc::index_server(ws.path());
    // A source that sends its first run of pieces, then waits until the folder is full.
    let (first, full) = (Gate::default(), Gate::default());
    let gates = Gates {
        after_first_data: Some(first.clone()),
        before_more_data: Some(full.clone()),
        ..Gates::default()
    };
    let (source, _) = fake_sender_gated(content.clone(), Misbehaviour::Honest, gates);
    let _fake = register_fake(index_addr, source.port(), info("big.bin", &content));

    // Room for the download when it starts, taken by another program meanwhile.
    let mount = Mount::tmpfs(ws.path().join("b"), "3m");
    let (mut pb, _) = Proc::peer(index_addr, &mount.0);
    pb.send("download big.bin");
    first.wait();
    wait_for("the first pieces to be verified", || {
        pb.send("downloads");
        let lines = pb.read_until(Stream::Out, " running, ");
        lines.iter().any(|l| {
            l.starts_with("big.bin\t") && !l.starts_with("big.bin\t0 of") && !l.contains("not known")
        })
    });
    let mut filler = fs::File::create(mount.0.join("filler")).unwrap();
    while std::io::Write::write_all(&mut filler, &[7; 65536]).is_ok() {}
    full.open();

    let err = pb.expect(Stream::Err, "error: cannot download \"big.bin\"");
    assert_eq!(
        err,
        "error: cannot download \"big.bin\": cannot write to the shared folder: No space left on device (os error 28)"
    );
    assert_eq!(entries(&mount.0), ["filler"], "the partial and its record are gone");
    pb.send("downloads");
    assert_eq!(pb.read_until(Stream::Out, " running, "), ["0 running, 0 queued"], "nothing to resume");
}

#[test]
fn a_busy_source_is_asked_again_and_the_line_says_what_goes_on() {
    const BUSY: &str = "busy: 4 uploads to your address already running (the most allowed)";
    let ws = workspace();
    let content = random_bytes(1 << 20);
    let (_index, index_addr) = Proc::index_server(ws.path());
    let busy = fake_sender(content.clone(), Misbehaviour::Refuse(BUSY));
    let _b = register_fake(index_addr, busy.port(), info("f.bin", &content));

    // Alone, it is waited for through a stall window (1 s here), then given up.
    let alone = folder(ws.path(), "alone", &[]);
    let (mut p, _) = peer_with(index_addr, &alone, &["--read-timeout", "1"]);
    p.send("download f.bin");
    let line = p.expect(Stream::Err, "error: cannot download \"f.bin\" from");
    assert_eq!(
        line,
        format!(
            "error: cannot download \"f.bin\" from {busy}: the peer refused: {BUSY}; asking it again every 3 s"
        )
    );
    p.expect(Stream::Err, "error: cannot download \"f.bin\": the only peer that shares it failed");

    // Beside an honest source (which sends nothing until the busy one has been heard),
    // the download goes on with it.
    let gate = Gate::default();
    let held = Gates { before_data: Some(gate.clone()), ..Gates::default() };
    let (honest, _) = fake_sender_gated(content.clone(), Misbehaviour::Honest, held);
    let _h = register_fake(index_addr, honest.port(), info("f.bin", &content));
    let b = folder(ws.path(), "b", &[]);
    let (mut pb, _) = Proc::peer(index_addr, &b);
    pb.send("download f.bin");
    let line = pb.expect(Stream::Err, "error: cannot download \"f.bin\" from");
    assert_eq!(
        line,
        format!(
            "error: cannot download \"f.bin\" from {busy}: the peer refused: {BUSY}; asking it again every 3 s; going on with the other peers"
        )
    );
    gate.open();
    pb.expect(Stream::Out, &format!("downloaded f.bin (1048576 bytes) from {honest}"));
}
