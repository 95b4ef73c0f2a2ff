//! Hostile and malformed input against the real binaries: path traversal at the CLI
//! and on a file server's socket, garbage and oversized frames at the index server.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use common::{Proc, RawIndexClient, Stream, TIMEOUT, entries, workspace};
use peerdex::content::{Bitfield, Tree};
use peerdex::name::SharePath;
use peerdex::wire::{
    self, FileReply, FileRequest, Hello, MAX_FRAME_LEN, Message, Reply, Request, Service, Welcome,
};

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s
}

/// Reads until the server closes the connection; returns what it sent meanwhile. A
/// reset counts as closed.
fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("expected the server to close the connection, got {e}"),
        }
    }
}

/// A connection to a file server that has shaken hands.
fn files_conn(addr: SocketAddr) -> TcpStream {
    let mut s = connect(addr);
    let mut r = s.try_clone().unwrap();
    wire::client_handshake(&mut r, &mut s, Service::Files).unwrap();
    s
}

#[test]
fn traversal_names_are_refused_at_the_cli() {
    let ws = workspace();
    let shared = ws.path().join("shared");
    fs::create_dir(&shared).unwrap();
    fs::write(ws.path().join("outside.txt"), b"not yours").unwrap();
    let (_index, index_addr) = Proc::index_server(ws.path());
    let (mut p, _) = Proc::peer(index_addr, &shared);
    let bad = ["../outside.txt", "/etc/passwd", "a/../../x", "..\\x", "..", ".", ".peerdex-part-1"];
    for name in bad {
        p.send(&format!("download {name}"));
        p.send(&format!("delete {name}"));
    }
    p.send_bytes(b"download a\0b\n");
    p.send("register");
    assert_eq!(p.finish().code(), Some(1));
    let errors = p.lines(Stream::Err);
    assert_eq!(errors.len(), bad.len() * 2 + 1, "{}", p.dump());
    for (i, name) in bad.iter().enumerate() {
        for line in &errors[2 * i..2 * i + 2] {
            assert!(line.starts_with(&format!("error: invalid file name {name:?}: ")), "{line}");
        }
    }
    assert!(errors.last().unwrap().contains("control character"));
    assert!(p.lines(Stream::Out).iter().any(|l| l.starts_with("registered 0 files")), "the loop went on");
    assert_eq!(fs::read(ws.path().join("outside.txt")).unwrap(), b"not yours");
    assert!(entries(&shared).is_empty());
}

/// A file server serves contents by root, and only those of files its folder shares:
/// the content of a file outside (behind a symlink) is refused, as is a root nobody
/// has; requests are pipelined and answered in order; a bad range is refused with a
/// reason and the connection goes on; a version 1 client is told both versions.
#[test]
fn a_file_server_refuses_everything_outside_its_folder() {
    let ws = workspace();
    let shared = ws.path().join("shared");
    fs::create_dir(&shared).unwrap();
    fs::write(shared.join("ok.txt"), b"fine").unwrap();
    fs::create_dir(shared.join("subdir")).unwrap();
    fs::write(ws.path().join("secret"), b"secret").unwrap();
    std::os::unix::fs::symlink(ws.path().join("secret"), shared.join("link-to-file")).unwrap();
    std::os::unix::fs::symlink(ws.path(), shared.join("link-to-dir")).unwrap();
    let fifo = std::process::Command::new("mkfifo").arg(shared.join("fifo")).status().unwrap();
    assert!(fifo.success());

    let (_index, index_addr) = Proc::index_server(ws.path());
    let (_p, files) = Proc::registered_peer(index_addr, &shared, 1);
    let ok = Tree::of_bytes(b"fine").root;
    for root in [Tree::of_bytes(b"secret").root, [0; 32], Tree::of_bytes(b"").root] {
        let mut s = files_conn(files);
        for request in [
            FileRequest::Layer { root },
            FileRequest::Have { root },
            FileRequest::Get { root, first: 0, count: 1 },
        ] {
            wire::send_msg(&mut s, &request).unwrap();
            match wire::recv_msg(&mut s).unwrap() {
                FileReply::Error(e) => assert!(e.ends_with(": no such file in the shared folder"), "{e}"),
                other => panic!("{request:?} was not refused: {other:?}"),
            }
        }
    }

    // Five requests in one write, answered in order; the bad ranges do not end it.
    let mut s = files_conn(files);
    let mut batch = Vec::new();
    for request in [
        FileRequest::Layer { root: ok },
        FileRequest::Have { root: ok },
        FileRequest::Get { root: ok, first: 1, count: 1 },
        FileRequest::Get { root: ok, first: u32::MAX, count: 2 },
        FileRequest::Get { root: ok, first: 0, count: 0 },
        FileRequest::Get { root: ok, first: 0, count: 1 },
        FileRequest::Status,
    ] {
        wire::send_msg(&mut batch, &request).unwrap();
    }
    s.write_all(&batch).unwrap();
    assert_eq!(wire::recv_msg::<FileReply>(&mut s).unwrap(), FileReply::Layer(vec![ok]));
    assert_eq!(wire::recv_msg::<FileReply>(&mut s).unwrap(), FileReply::Have(Bitfield::full(1)));
    for range in ["1..2", "4294967295..4294967297", "0..0"] {
        assert_eq!(
            wire::recv_msg::<FileReply>(&mut s).unwrap(),
            FileReply::Error(format!("cannot send pieces {range} of \"ok.txt\": it has 1 piece"))
        );
    }
    assert_eq!(wire::recv_msg::<FileReply>(&mut s).unwrap(), FileReply::Data { first: 0, count: 1, len: 4 });
    let mut body = [0u8; 4];
    s.read_exact(&mut body).unwrap();
    assert_eq!(&body, b"fine");
    assert!(matches!(wire::recv_msg::<FileReply>(&mut s).unwrap(), FileReply::Status { .. }));
    // A request that is not one: refused, and the connection closed.
    wire::send_all(&mut s, &[0x01, 0, 4, b'f', b'i', b'l', b'e', 0, 0, 0, 0, 0, 0, 0, 0]).unwrap();
    match wire::recv_msg::<FileReply>(&mut s).unwrap() {
        FileReply::Error(e) => assert_eq!(e, "malformed request: unknown message type 0x01"),
        other => panic!("{other:?}"),
    }
    assert!(read_to_close(&mut s).is_empty());

    // A downloader of an earlier version is told why it cannot be served.
    let mut s = connect(files);
    wire::send_msg(&mut s, &Hello { version: 2, service: Service::Files }).unwrap();
    let welcome: Welcome = wire::recv_msg(&mut s).unwrap();
    assert_eq!(
        welcome.refusal.as_deref(),
        Some("protocol version 2 is not supported (this server speaks version 3)")
    );
}

#[test]
fn the_index_survives_garbage_and_oversized_frames() {
    let ws = workspace();
    let (_index, index_addr) = Proc::index_server(ws.path());

    // Not a frame at all: "GET " is read as a 1.2 GB length and refused unread, with
    // the reason, then the connection is closed.
    let mut s = connect(index_addr);
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let welcome: Welcome = wire::recv_msg(&mut s).unwrap();
    let why = welcome.refusal.unwrap();
    assert!(why.contains("not a peerdex client") && why.contains("exceeds the maximum"), "{why}");
    assert!(read_to_close(&mut s).is_empty());

    // Lengths of 4 GiB and one byte over the maximum, before and after a handshake:
    // refused with the reason, closed, nothing allocated.
    for len in [u32::MAX, MAX_FRAME_LEN as u32 + 1] {
        let mut s = connect(index_addr);
        s.write_all(&len.to_be_bytes()).unwrap();
        let welcome: Welcome = wire::recv_msg(&mut s).unwrap();
        assert!(welcome.refusal.unwrap().contains(&format!("frame of {len} bytes exceeds the maximum")));
        assert!(read_to_close(&mut s).is_empty(), "length {len}");

        let mut c = RawIndexClient::connect(index_addr);
        c.stream.write_all(&len.to_be_bytes()).unwrap();
        let reply: Reply = wire::recv_msg(&mut c.stream).unwrap();
        let want = format!("request refused: frame of {len} bytes exceeds the maximum of {MAX_FRAME_LEN}");
        assert_eq!(reply, Reply::Error(want));
        assert!(read_to_close(&mut c.stream).is_empty());
    }

    // A well-formed frame that is not a handshake: refused with a reason, then closed.
    let mut s = connect(index_addr);
    wire::send_all(&mut s, b"hello there").unwrap();
    let welcome: Welcome = wire::recv_msg(&mut s).unwrap();
    assert_eq!(welcome.refusal.as_deref(), Some("not a peerdex client (bad handshake)"));
    assert!(read_to_close(&mut s).is_empty());

    // A future protocol version: refused with both versions named.
    let mut s = connect(index_addr);
    wire::send_msg(&mut s, &Hello { version: 99, service: Service::Index }).unwrap();
    let welcome: Welcome = wire::recv_msg(&mut s).unwrap();
    assert!(welcome.refusal.unwrap().contains("protocol version 99 is not supported"));

    // After a good handshake: bad requests get error replies, the connection lives on.
    let mut c = RawIndexClient::connect(index_addr);
    for payload in [&b""[..], b"\x7f", b"\x01\x00", b"\x07extra", b"\x01\x1f\x90\xff\xff\xff\xff"] {
        wire::send_all(&mut c.stream, payload).unwrap();
        match wire::recv_msg::<Reply>(&mut c.stream).unwrap() {
            Reply::Error(e) => assert!(e.starts_with("malformed request: "), "{e}"),
            other => panic!("{payload:?}: {other:?}"),
        }
    }
    assert_eq!(c.call(&Request::Ping), Reply::Pong);

    // A registration with a traversal name: refused, naming it; nothing stored.
    let mut register = Request::Register { port: 9, files: vec![] }.encode();
    register.truncate(3); // tag + port
    register.extend_from_slice(&1u32.to_be_bytes());
    register.extend_from_slice(&5u16.to_be_bytes());
    register.extend_from_slice(b"../up");
    register.extend_from_slice(&[0u8; 40]);
    wire::send_all(&mut c.stream, &register).unwrap();
    let reply: Reply = wire::recv_msg(&mut c.stream).unwrap();
    assert_eq!(
        reply,
        Reply::Error(
            "malformed request: invalid file name \"../up\": \".\" and \"..\" are not file or folder names"
                .into()
        )
    );
    assert_eq!(
        c.call(&Request::Register { port: 0, files: vec![] }),
        Reply::Error("port 0 is not a valid file-server port".into())
    );
    assert_eq!(
        c.call(&Request::Update { files: vec![] }),
        Reply::Error("not registered (send register first)".into())
    );

    // A frame cut short by EOF: that connection ends, nothing half-registered.
    let mut t = RawIndexClient::connect(index_addr);
    t.stream.write_all(&100u32.to_be_bytes()).unwrap();
    t.stream.write_all(&[0x01, 0x00]).unwrap();
    t.stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(read_to_close(&mut t.stream).is_empty());

    // Everyone else is still served.
    let a = ws.path().join("a");
    fs::create_dir(&a).unwrap();
    fs::write(a.join("still.txt"), b"here").unwrap();
    let (_pa, _) = Proc::registered_peer(index_addr, &a, 1);
    let name = SharePath::parse("still.txt").unwrap();
    match c.call(&Request::Lookup { name }) {
        Reply::Peers(hits) => assert_eq!(hits.len(), 1),
        other => panic!("expected one peer, got {other:?}"),
    }
}
