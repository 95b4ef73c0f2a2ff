//! The ceiling of the design on this machine: a minimal thread-per-connection server
//! that answers every request with one fixed `Peers` reply and does nothing else (no
//! decoding, no registry, no lock, no log, no limits). `cargo bench -- lookup` starts
//! it as a process of its own (this benchmark binary, with `--responder`) and drives
//! it with the same load as the index server.

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::thread;

use peerdex::wire::{self, Message, PeerHit, Reply, Service};

/// The responder's flag on this binary's command line.
pub const FLAG: &str = "--responder";

/// Serves forever on 127.0.0.1, on a port the system picks; prints `listening on ...`.
pub fn run() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    println!("listening on {}", listener.local_addr().unwrap());
    // The same reply the index server sends for a name one peer shares.
    let hit = PeerHit {
        addr: SocketAddr::from(([127, 0, 0, 1], 10_000)),
        size: 1000,
        root: [7; 32],
        complete: true,
    };
    let payload = Reply::Peers(vec![hit]).encode();
    let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&payload);
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let frame = frame.clone();
        thread::spawn(move || {
            stream.set_nodelay(true).unwrap();
            let mut reader = BufReader::new(&stream);
            let mut writer = &stream;
            if wire::server_handshake(&mut reader, &mut writer, Service::Index, 4096).is_err() {
                return;
            }
            while let Ok(Some(_request)) = wire::recv_all(&mut reader, 4096) {
                if writer.write_all(&frame).is_err() {
                    return;
                }
            }
        });
    }
}
