//! Feeds arbitrary bytes to every decoder: frames (with a small limit, so that the
//! length check is exercised) and every message type. Any panic is a bug.

#![no_main]

use libfuzzer_sys::fuzz_target;
use peerdex::wire::{self, FileReply, FileRequest, Hello, Message, Reply, Request, Welcome};

fuzz_target!(|data: &[u8]| {
    let mut stream = data;
    while let Ok(Some(frame)) = wire::recv_all(&mut stream, 4096) {
        decode_all(&frame);
    }
    decode_all(data);
});

fn decode_all(bytes: &[u8]) {
    if let Ok(m) = Request::decode(bytes) {
        assert_eq!(Request::decode(&m.encode()).as_ref(), Ok(&m), "re-encoding changes a request");
    }
    if let Ok(m) = Reply::decode(bytes) {
        assert_eq!(Reply::decode(&m.encode()).as_ref(), Ok(&m), "re-encoding changes a reply");
    }
    // The file messages (Layer, Have with its bitfield, Get, Data, Cancel, Cancelled, ...) too.
    if let Ok(m) = FileRequest::decode(bytes) {
        assert_eq!(FileRequest::decode(&m.encode()).as_ref(), Ok(&m), "re-encoding changes a file request");
    }
    if let Ok(m) = FileReply::decode(bytes) {
        assert_eq!(FileReply::decode(&m.encode()).as_ref(), Ok(&m), "re-encoding changes a file reply");
    }
    let _ = Hello::decode(bytes);
    let _ = Welcome::decode(bytes);
}
