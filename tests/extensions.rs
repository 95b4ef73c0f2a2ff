//! The design's extensions, with the real binaries: folder watching, least-loaded peer
//! choice, resumed downloads, login.

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Proc, Stream, wait_for, workspace};

fn folder(root: &Path, name: &str, files: &[(&str, &[u8])]) -> PathBuf {
    let dir = root.join(name);
    fs::create_dir_all(&dir).unwrap();
    for (file, content) in files {
        fs::write(dir.join(file), content).unwrap();
    }
    dir
}

#[test]
fn a_watched_folder_reaches_the_index_by_itself() {
    let ws = workspace();
    let a = folder(ws.path(), "a", &[("first.txt", b"1")]);
    let b = folder(ws.path(), "b", &[]);
    let (_index, index_addr) = Proc::index_server(ws.path());
    let (mut pa, _) = Proc::peer(index_addr, &a);
    pa.send("register");
    pa.expect(Stream::Out, "registered 1 files");
    let (mut pb, _) = Proc::peer(index_addr, &b);
    assert_eq!(pb.list(""), ["first.txt\t1 bytes\t1 peer"]);

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
        pb.list("") == ["first.txt\t1 bytes\t1 peer", "renamed.txt\t6 bytes\t1 peer"]
    });

    // Removed: gone from the listing.
    let t = Instant::now();
    fs::remove_file(a.join("renamed.txt")).unwrap();
    wait_for("the removal to be listed", || pb.list("") == ["first.txt\t1 bytes\t1 peer"]);
    eprintln!("a removed file left the listing after {:?}", t.elapsed());
}

#[test]
fn a_file_still_being_written_is_never_advertised() {
    let ws = workspace();
    let a = folder(ws.path(), "a", &[]);
    let b = folder(ws.path(), "b", &[]);
    let (_index, index_addr) = Proc::index_server(ws.path());
    let (mut pa, _) = Proc::peer(index_addr, &a);
    pa.send("register");
    pa.expect(Stream::Out, "registered 0 files");
    let (mut pb, _) = Proc::peer(index_addr, &b);

    // A slow copy: 40 chunks, the next one while the folder's watcher would otherwise
    // have settled on the file. Between chunks, the other peer must not see it.
    let mut slow = fs::File::create(a.join("slow.bin")).unwrap();
    for _ in 0..40 {
        slow.write_all(&[7u8; 1000]).unwrap();
        slow.flush().unwrap();
        assert!(pb.list("slow").is_empty(), "a half-written file was advertised");
        std::thread::sleep(Duration::from_millis(20)); // the writer's pace, not a wait
    }
    drop(slow);
    wait_for("the finished file to be listed", || pb.list("slow") == ["slow.bin\t40000 bytes\t1 peer"]);
    // Downloads' temporary files never appear in any listing either.
    assert!(pb.list("peerdex").is_empty());
}

/// Asks a file server how busy it is, as a downloader does.
fn status(addr: std::net::SocketAddr) -> (u32, u64) {
    use peerdex::wire::{self, FileReply, FileRequest, Service};
    let s = std::net::TcpStream::connect(addr).unwrap();
    let (mut r, mut w) = (&s, &s);
    wire::client_handshake(&mut r, &mut w, Service::Files).unwrap();
    wire::send_msg(&mut w, &FileRequest::Status).unwrap();
    match wire::recv_msg(&mut r).unwrap() {
        FileReply::Status { uploads, bytes_per_sec } => (uploads, bytes_per_sec),
        other => panic!("{other:?}"),
    }
}

#[test]
fn downloads_go_to_an_idle_peer_rather_than_a_busy_one() {
    use peerdex::wire::{self, FileRequest, Service};
    let ws = workspace();
    let mut content = vec![0u8; 16 << 20];
    rand::RngExt::fill(&mut rand::rng(), &mut content[..]);
    let (_index, index_addr) = Proc::index_server(ws.path());
    let mut sharers = Vec::new();
    for i in 0..4 {
        let dir = folder(ws.path(), &format!("s{i}"), &[("f.bin", &content)]);
        let (mut p, addr) = Proc::peer(index_addr, &dir);
        p.send("register");
        p.expect(Stream::Out, "registered 1 files");
        sharers.push((p, addr));
    }
    // Make the first one busy: three downloaders that ask for the file and never read,
    // so its uploads sit blocked on full socket buffers.
    let busy = sharers[0].1;
    let stuck: Vec<std::net::TcpStream> = (0..3)
        .map(|_| {
            let s = std::net::TcpStream::connect(busy).unwrap();
            let (mut r, mut w) = (&s, &s);
            wire::client_handshake(&mut r, &mut w, Service::Files).unwrap();
            wire::send_msg(&mut w, &FileRequest::Get { name: "f.bin".into(), offset: 0 }).unwrap();
            s
        })
        .collect();
    wait_for("the busy peer to report its uploads", || status(busy).0 == 3);
    assert_eq!(status(sharers[1].1).0, 0);

    // Five downloads in a row: with a random choice, each would have one chance in four
    // of landing on the busy peer.
    let d = folder(ws.path(), "d", &[]);
    let (mut pd, _) = Proc::peer(index_addr, &d);
    for _ in 0..5 {
        pd.send("download f.bin");
        let line = pd.expect(Stream::Out, "downloaded f.bin");
        assert!(!line.ends_with(&busy.to_string()), "the busy peer was chosen: {line}");
        assert!(fs::read(d.join("f.bin")).unwrap() == content);
        pd.send("delete f.bin");
        pd.expect(Stream::Out, "deleted f.bin");
    }
    drop(stuck);
}
