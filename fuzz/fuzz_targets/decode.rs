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
    let _ = Hello::decode(bytes);
    let _ = Welcome::decode(bytes);
    let _ = FileRequest::decode(bytes);
    let _ = FileReply::decode(bytes);
}
