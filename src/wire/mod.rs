//! The wire protocol: frames, and the messages carried in them. No sockets here:
//! everything works on any `Read`/`Write` and on byte slices, so it is tested without
//! a network. `docs/PROTOCOL.md` draws every message.
//!
//! # Frames
//!
//! Both conversations (peer to index, peer to peer) are a sequence of frames:
//!
//! ```text
//! +----------------+---------------------------+
//! | length: u32 BE | payload: `length` bytes   |
//! +----------------+---------------------------+
//! ```
//!
//! A length above the receiver's maximum is refused before a byte of payload is read
//! or allocated ([`recv_all`]), and the connection is then closed: after a bad length
//! the stream cannot be resynchronised.
//!
//! # Conversations
//!
//! Every connection opens with the client's [`Hello`] (magic, protocol version, which
//! service it expects) and the server's [`Welcome`]. After that:
//!
//! - peer to index: the peer sends [`Request`]s, the index answers each with one
//!   [`Reply`] (a listing is several `ListChunk`s closed by a `ListEnd`);
//! - peer to peer: the downloader sends [`FileRequest`]s about one content, without
//!   waiting for answers; the file server answers each with a [`FileReply`] in order,
//!   and after a `FileReply::Data` the pieces' bytes follow raw, outside any frame
//!   (so the kernel can copy them).
//!
//! The modules: `codec` (the encoding of integers, strings and lists), [`index`]
//! (the index's messages) and [`files`] (the file server's). Each message's first byte
//! is its tag, a named constant beside it.

mod codec;
pub mod files;
pub mod index;

use std::fmt;
use std::io::{self, Read, Write};

use codec::{Dec, Enc};
pub use files::{FileReply, FileRequest};
pub use index::{FileInfo, ListEntry, PeerHit, Reply, Request};

use crate::name::NameError;

/// Largest frame payload accepted by default, in bytes: 16 MiB. A peer sends a list of
/// files larger than [`LIST_PART_BYTES`] in parts (see [`MAX_FILES_PER_PEER`]); Redis's
/// request limit is 512 MB, but nothing in our protocol needs more than this, and a
/// smaller cap bounds what a stranger can make us buffer.
pub const MAX_FRAME_LEN: usize = 16 << 20;

/// Most files one peer can register: a large music collection, within the
/// [`crate::index::registry::MAX_FILES_PER_IP`] of one address. Such a list does not
/// fit one frame: a peer sends it in parts of at most [`LIST_PART_BYTES`], a
/// `Register` (or `Update`) with the first part and an `Add` with each other.
pub const MAX_FILES_PER_PEER: usize = 200_000;

/// Most bytes of file entries a peer puts in one `Register`, `Update` or `Add`: 4 MiB,
/// a quarter of [`MAX_FRAME_LEN`], about 40,000 entries of typical paths.
pub const LIST_PART_BYTES: usize = 4 << 20;

/// Version of this protocol, sent in every [`Hello`] and [`Welcome`]. Version 2
/// names contents by their Merkle root instead of their SHA-256, and the file server
/// serves pieces, pipelined; version 3 adds `Cancel` (a version 2 server would close
/// the connection on it). A client or server of another version is refused with both
/// versions named.
pub const PROTOCOL_VERSION: u16 = 3;

/// First bytes of every [`Hello`] and [`Welcome`]; tells a peerdex connection apart
/// from anything else that happens to connect.
pub const MAGIC: [u8; 8] = *b"PEERDEX\0";

/// A SHA-256 digest (a login proof).
pub type Sha256 = [u8; 32];

/// Frames up to this many bytes of payload are copied into one buffer with their length
/// and sent with one `write` (a lookup's reply is about 60 bytes).
const SMALL_SEND: usize = 512;

/// Sends one frame: the payload's length as a big-endian `u32`, then the payload.
pub fn send_all(w: &mut impl Write, payload: &[u8]) -> io::Result<()> {
    let header = frame_header(payload)?;
    // A small frame is copied behind its length and sent with one `write`: a socket's
    // `send` path in the kernel is shorter than `writev`'s (measured: see
    // docs/PERFORMANCE.md, lookup).
    if payload.len() <= SMALL_SEND {
        let mut frame = [0u8; 4 + SMALL_SEND];
        frame[..4].copy_from_slice(&header);
        frame[4..4 + payload.len()].copy_from_slice(payload);
        w.write_all(&frame[..4 + payload.len()])?;
        return w.flush();
    }
    // A larger one: one `writev` for the length and the payload, no copy, and on a
    // socket one system call.
    let mut slices = [io::IoSlice::new(&header), io::IoSlice::new(payload)];
    let mut left = &mut slices[..];
    while !left.is_empty() {
        match w.write_vectored(left) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => io::IoSlice::advance_slices(&mut left, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    w.flush()
}

/// A frame's length header for `payload`, refused (`InvalidInput`) over
/// [`MAX_FRAME_LEN`].
fn frame_header(payload: &[u8]) -> io::Result<[u8; 4]> {
    let len =
        u32::try_from(payload.len()).ok().filter(|&len| len as usize <= MAX_FRAME_LEN).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("frame of {} bytes exceeds the maximum of {MAX_FRAME_LEN}", payload.len()),
            )
        })?;
    Ok(len.to_be_bytes())
}

/// `msg` as the bytes of one frame, its length first: for a caller that writes them
/// its own way.
pub fn frame(msg: &impl Message) -> io::Result<Vec<u8>> {
    let mut frame = Vec::with_capacity(64);
    frame_into(msg, &mut frame)?;
    Ok(frame)
}

/// Puts `msg` in `buf` as one frame (its length, then its payload), in place of what
/// `buf` held: the payload is encoded behind room left for its length, so nothing is
/// copied.
fn frame_into(msg: &impl Message, buf: &mut Vec<u8>) -> io::Result<()> {
    buf.clear();
    buf.extend_from_slice(&[0; 4]);
    msg.encode_into(buf);
    let header = frame_header(&buf[4..])?;
    buf[..4].copy_from_slice(&header);
    Ok(())
}

/// Receives one frame of at most `max_len` bytes. `Ok(None)` is a clean end of stream
/// before a frame started; an end of stream inside a frame is `UnexpectedEof`.
///
/// The length is checked against `max_len` before anything is allocated, and the
/// buffer grows only as bytes actually arrive, so a peer that announces a large frame
/// and sends nothing costs us nothing.
pub fn recv_all(r: &mut impl Read, max_len: usize) -> io::Result<Option<Vec<u8>>> {
    match recv_len(r, max_len)? {
        Some(len) => recv_payload(r, len, len.min(64 * 1024)).map(Some),
        None => Ok(None),
    }
}

/// Receives a frame's length, refused (`InvalidData`, naming both numbers) if it is
/// over `max_len`. `Ok(None)` is a clean end of stream before a frame started. The
/// payload is then read with [`recv_payload`]; [`recv_all`] does both.
pub fn recv_len(r: &mut impl Read, max_len: usize) -> io::Result<Option<usize>> {
    let mut header = [0u8; 4];
    let mut got = 0;
    while got < header.len() {
        match r.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let len = u32::from_be_bytes(header) as usize;
    if len > max_len {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the maximum of {max_len}"),
        ));
    }
    Ok(Some(len))
}

/// Receives a payload of `len` bytes (after [`recv_len`]) into a buffer that starts
/// with `capacity` bytes: the full `len` when the caller has budgeted for it (no
/// reallocation on the way), less when the length has not been vouched for (the
/// buffer then grows only as bytes arrive).
pub fn recv_payload(r: &mut impl Read, len: usize, capacity: usize) -> io::Result<Vec<u8>> {
    let mut payload = Vec::with_capacity(capacity.min(len));
    r.take(len as u64).read_to_end(&mut payload)?;
    if payload.len() < len {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(payload)
}

/// Why a frame's payload is not a valid message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The payload ended in the middle of a field, or a count promised more items
    /// than the remaining bytes can hold.
    Truncated,
    /// The message was complete but this many bytes were left over.
    TrailingBytes(usize),
    /// The first byte names no message of this conversation.
    UnknownTag(u8),
    /// A handshake that does not start with [`MAGIC`]: not a peerdex client.
    BadMagic,
    /// A string field that is not UTF-8.
    InvalidUtf8,
    /// A file name that is not a valid [`crate::name::SharePath`]; carries the name (lossily
    /// decoded) and the reason.
    BadName(String, NameError),
    /// An address family other than 4 or 6, or a service byte we do not know.
    BadEnum(&'static str, u8),
    /// A bitfield with a bit set past its last piece.
    BadBitfield,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Truncated => f.write_str("message is truncated"),
            DecodeError::TrailingBytes(n) => write!(f, "message has {n} unexpected trailing bytes"),
            DecodeError::UnknownTag(t) => write!(f, "unknown message type 0x{t:02x}"),
            DecodeError::BadMagic => f.write_str("not a peerdex handshake"),
            DecodeError::InvalidUtf8 => f.write_str("a text field is not valid UTF-8"),
            DecodeError::BadName(name, why) => write!(f, "invalid file name {name:?}: {why}"),
            DecodeError::BadEnum(what, v) => write!(f, "unknown {what} {v}"),
            DecodeError::BadBitfield => f.write_str("a bitfield has bits set past its end"),
        }
    }
}

impl std::error::Error for DecodeError {}

impl From<DecodeError> for io::Error {
    fn from(e: DecodeError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// A message that has a byte encoding.
pub trait Message: Sized {
    /// Appends the message's encoding, one frame payload, to `out`.
    fn encode_into(&self, out: &mut Vec<u8>);
    /// Encodes the message as one frame payload.
    fn encode(&self) -> Vec<u8> {
        // Room for most messages (a lookup's reply with a hit is 52 bytes) at once.
        let mut out = Vec::with_capacity(64);
        self.encode_into(&mut out);
        out
    }
    /// Decodes a whole frame payload; every byte must be used.
    fn decode(payload: &[u8]) -> Result<Self, DecodeError>;
}

/// Encodes `msg` and sends it as one frame ([`send_all`]).
pub fn send_msg(w: &mut impl Write, msg: &impl Message) -> io::Result<()> {
    send_msg_in(w, msg, &mut Vec::with_capacity(64))
}

/// [`send_msg`], with the frame built in `buf` (whatever it held is replaced): a caller
/// that sends one message after another keeps `buf` between them, and a message then
/// costs no allocation.
pub fn send_msg_in(w: &mut impl Write, msg: &impl Message, buf: &mut Vec<u8>) -> io::Result<()> {
    buf.clear();
    msg.encode_into(buf);
    send_all(w, buf)
}

/// Receives one frame and decodes it. An end of stream is `UnexpectedEof` here: callers
/// that expect a message and get none have lost their peer.
pub fn recv_msg<M: Message>(r: &mut impl Read) -> io::Result<M> {
    let payload = recv_all(r, MAX_FRAME_LEN)?
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed by the other side"))?;
    Ok(M::decode(&payload)?)
}

/// The server side of the handshake: reads the client's [`Hello`] and answers with a
/// [`Welcome`], or with a refusal that says why before the error is returned (and the
/// caller closes the connection).
pub fn server_handshake(
    r: &mut impl Read,
    w: &mut impl Write,
    service: Service,
    max_len: usize,
) -> io::Result<()> {
    let frame = match recv_all(r, max_len) {
        Ok(Some(frame)) => frame,
        Ok(None) => {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before the handshake",
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            // Too long to be a handshake: most likely not a peerdex client at all.
            let why = format!("not a peerdex client (bad handshake: {e})");
            let _ = send_msg(w, &Welcome { version: PROTOCOL_VERSION, refusal: Some(why) });
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    match Hello::check(&frame, service) {
        Ok(()) => send_msg(w, &Welcome { version: PROTOCOL_VERSION, refusal: None }),
        Err(why) => {
            send_msg(w, &Welcome { version: PROTOCOL_VERSION, refusal: Some(why.clone()) })?;
            Err(io::Error::new(io::ErrorKind::InvalidData, format!("handshake refused: {why}")))
        }
    }
}

/// The client side of the handshake: sends our [`Hello`] for `service` and reads the
/// [`Welcome`]; a refusal becomes an error carrying the server's reason.
pub fn client_handshake(r: &mut impl Read, w: &mut impl Write, service: Service) -> io::Result<()> {
    send_msg(w, &Hello { version: PROTOCOL_VERSION, service })?;
    let welcome: Welcome = recv_msg(r)?;
    match welcome.refusal {
        None => Ok(()),
        Some(why) => Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!("refused: {}", crate::text::escape(&why)),
        )),
    }
}

/// Which server a client believes it is talking to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    /// The indexing server.
    Index = 1,
    /// A peer's file server.
    Files = 2,
}

/// The client's first frame on every connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The client's [`PROTOCOL_VERSION`].
    pub version: u16,
    /// The service the client expects at this address.
    pub service: Service,
}

/// The server's answer to [`Hello`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Welcome {
    /// The server's [`PROTOCOL_VERSION`].
    pub version: u16,
    /// `None` if the connection is accepted; otherwise why not, and the server closes it.
    pub refusal: Option<String>,
}

impl Message for Hello {
    fn encode_into(&self, out: &mut Vec<u8>) {
        Enc::new_after(out, &MAGIC).u16(self.version).u8(self.service as u8);
    }
    fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        let mut d = Dec(payload);
        d.magic(&MAGIC)?;
        let version = d.u16()?;
        let service = match d.u8()? {
            1 => Service::Index,
            2 => Service::Files,
            v => return Err(DecodeError::BadEnum("service", v)),
        };
        d.finish(Hello { version, service })
    }
}

impl Hello {
    /// Checks a client's first frame against the service it reached; `Err` says, for
    /// the client to read, why the connection is refused.
    pub fn check(frame: &[u8], expected: Service) -> Result<(), String> {
        let hello = Hello::decode(frame).map_err(|e| match e {
            DecodeError::BadMagic => "not a peerdex client (bad handshake)".to_owned(),
            e => format!("malformed handshake: {e}"),
        })?;
        if hello.version != PROTOCOL_VERSION {
            return Err(format!(
                "protocol version {} is not supported (this server speaks version {PROTOCOL_VERSION})",
                hello.version
            ));
        }
        if hello.service != expected {
            let (this, other) = match expected {
                Service::Index => ("an index server", "a peer's file server"),
                Service::Files => ("a peer's file server", "an index server"),
            };
            return Err(format!("this is {this}, not {other}"));
        }
        Ok(())
    }
}

impl Message for Welcome {
    fn encode_into(&self, out: &mut Vec<u8>) {
        let mut e = Enc::new_after(out, &MAGIC);
        e.u16(self.version);
        match &self.refusal {
            None => e.u8(0),
            Some(why) => e.u8(1).str(why),
        };
    }
    fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        let mut d = Dec(payload);
        d.magic(&MAGIC)?;
        let version = d.u16()?;
        let refusal = if d.bool()? { Some(d.str()?) } else { None };
        d.finish(Welcome { version, refusal })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::Bitfield;
    use crate::name::SharePath;

    fn name(s: &str) -> SharePath {
        SharePath::parse(s).unwrap()
    }

    fn file(s: &str, size: u64) -> FileInfo {
        FileInfo { name: name(s), size, root: [size as u8; 32] }
    }

    #[test]
    fn frames_round_trip_back_to_back() {
        let mut wire = Vec::new();
        for payload in [&b""[..], b"x", &vec![7u8; 100_000]] {
            send_all(&mut wire, payload).unwrap();
        }
        assert_eq!(&wire[..4], &[0, 0, 0, 0]);
        let mut r = &wire[..];
        assert_eq!(recv_all(&mut r, MAX_FRAME_LEN).unwrap().unwrap(), b"");
        assert_eq!(recv_all(&mut r, MAX_FRAME_LEN).unwrap().unwrap(), b"x");
        assert_eq!(recv_all(&mut r, MAX_FRAME_LEN).unwrap().unwrap(), vec![7u8; 100_000]);
        assert!(recv_all(&mut r, MAX_FRAME_LEN).unwrap().is_none(), "clean EOF");
    }

    #[test]
    fn oversized_length_is_refused_before_reading_the_payload() {
        for len in [u32::MAX, MAX_FRAME_LEN as u32 + 1] {
            let wire = len.to_be_bytes();
            let err = recv_all(&mut &wire[..], MAX_FRAME_LEN).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
            assert!(err.to_string().contains("exceeds the maximum"), "{err}");
        }
        let at_limit = (10u32).to_be_bytes();
        assert!(recv_all(&mut &at_limit[..], 10).unwrap_err().kind() == io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn truncated_frames_are_unexpected_eof() {
        for wire in [&[0u8, 0][..], &[0, 0, 0, 5, 1, 2]] {
            let err = recv_all(&mut &wire[..], MAX_FRAME_LEN).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        }
    }

    #[test]
    fn sending_an_oversized_frame_is_refused() {
        let big = vec![0u8; MAX_FRAME_LEN + 1];
        let err = send_all(&mut Vec::new(), &big).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn a_kept_buffer_sends_each_message_whole_and_alone() {
        let mut buf = b"left over from an earlier, longer message".to_vec();
        let mut wire = Vec::new();
        let messages = [Reply::Error("x".repeat(300)), Reply::NoPeers, Reply::Done { files: 7 }];
        for m in &messages {
            send_msg_in(&mut wire, m, &mut buf).unwrap();
        }
        let mut r = &wire[..];
        for m in &messages {
            assert_eq!(&recv_msg::<Reply>(&mut r).unwrap(), m);
        }
        assert!(r.is_empty(), "nothing but the three frames was sent");
        let too_big = Reply::ListChunk(vec![
            ListEntry {
                name: SharePath::parse("n").unwrap(),
                size: 0,
                root: [0; 32],
                peers: 1,
                partial: 0,
            };
            MAX_FRAME_LEN / 40
        ]);
        let err = send_msg_in(&mut Vec::new(), &too_big, &mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    fn round_trip<M: Message + PartialEq + fmt::Debug>(m: M) {
        let bytes = m.encode();
        assert_eq!(M::decode(&bytes).unwrap(), m);
        // Every strict prefix is an error, never a panic or a different message.
        for cut in 0..bytes.len() {
            assert!(M::decode(&bytes[..cut]).is_err(), "{m:?} cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(M::decode(&longer), Err(DecodeError::TrailingBytes(1)));
    }

    #[test]
    fn every_message_round_trips() {
        round_trip(Hello { version: PROTOCOL_VERSION, service: Service::Files });
        round_trip(Welcome { version: 1, refusal: None });
        round_trip(Welcome { version: 1, refusal: Some("no".into()) });
        round_trip(Request::Register { port: 4242, files: vec![file("a b", 0), file("c", 9)] });
        round_trip(Request::Unregister);
        round_trip(Request::Update { files: vec![] });
        round_trip(Request::Delete { names: vec![name("x"), name("y z")] });
        round_trip(Request::List { pattern: "txt".into(), limit: Some(10) });
        round_trip(Request::List { pattern: String::new(), limit: None });
        round_trip(Request::Lookup { name: name("ünï") });
        round_trip(Request::Ping);
        round_trip(Request::Add { files: vec![file("new", 7)] });
        round_trip(Request::Login { user: "ann".into() });
        round_trip(Request::Proof { proof: [5; 32] });
        round_trip(Request::Partial { files: vec![file("part", 1 << 30)] });
        round_trip(Reply::Challenge { salt: vec![1, 2, 3], rounds: 600_000, nonce: [9; 32] });
        round_trip(Reply::LoggedIn);
        round_trip(Reply::Done { files: 3 });
        round_trip(Reply::Error("nope".into()));
        round_trip(Reply::ListChunk(vec![ListEntry {
            name: name("a"),
            size: 1,
            root: [9; 32],
            peers: 2,
            partial: 1,
        }]));
        round_trip(Reply::ListEnd { truncated: true });
        round_trip(Reply::Peers(vec![
            PeerHit { addr: "127.0.0.1:9".parse().unwrap(), size: 5, root: [1; 32], complete: true },
            PeerHit { addr: "[::1]:65535".parse().unwrap(), size: u64::MAX, root: [2; 32], complete: false },
        ]));
        round_trip(Reply::NoPeers);
        round_trip(Reply::Pong);
        round_trip(FileRequest::Layer { root: [4; 32] });
        round_trip(FileRequest::Have { root: [5; 32] });
        round_trip(FileRequest::Get { root: [6; 32], first: 7, count: u32::MAX });
        round_trip(FileRequest::Status);
        round_trip(FileRequest::Cancel { root: [8; 32], first: 30, count: 1 });
        round_trip(FileReply::Cancelled { first: 30, count: 1 });
        round_trip(FileReply::Status { uploads: 3, bytes_per_sec: 1 << 30 });
        round_trip(FileReply::Layer(vec![[1; 32], [2; 32]]));
        round_trip(FileReply::Layer(vec![]));
        let mut bits = Bitfield::empty(11);
        bits.set(10);
        round_trip(FileReply::Have(bits));
        round_trip(FileReply::Have(Bitfield::empty(0)));
        round_trip(FileReply::Data { first: 1, count: 2, len: 1 << 40 });
        round_trip(FileReply::Error("gone".into()));
    }

    /// The worked example in docs/PROTOCOL.md, byte for byte.
    #[test]
    fn the_documented_example_is_what_we_send() {
        let register =
            Request::Register { port: 40000, files: vec![FileInfo { root: [0xab; 32], ..file("a b", 3) }] };
        let mut wire = Vec::new();
        send_msg(&mut wire, &register).unwrap();
        let mut want =
            vec![0, 0, 0, 0x34, 0x01, 0x9c, 0x40, 0, 0, 0, 1, 0, 3, b'a', b' ', b'b', 0, 0, 0, 0, 0, 0, 0, 3];
        want.extend([0xab; 32]);
        assert_eq!(wire, want);
        let mut done = Vec::new();
        send_msg(&mut done, &Reply::Done { files: 1 }).unwrap();
        assert_eq!(done, [0, 0, 0, 5, 0x81, 0, 0, 0, 1]);

        // The file server's example: a Get of pieces 4..6, a 10-piece bitfield, Data.
        let mut get = Vec::new();
        send_msg(&mut get, &FileRequest::Get { root: [0xcd; 32], first: 4, count: 2 }).unwrap();
        let mut want = vec![0, 0, 0, 41, 0x13];
        want.extend([0xcd; 32]);
        want.extend([0, 0, 0, 4, 0, 0, 0, 2]);
        assert_eq!(get, want);
        let mut bits = Bitfield::empty(10);
        bits.set(0);
        bits.set(9);
        let mut have = Vec::new();
        send_msg(&mut have, &FileReply::Have(bits)).unwrap();
        assert_eq!(have, [0, 0, 0, 7, 0x92, 0, 0, 0, 10, 0x80, 0x40]);
        let mut data = Vec::new();
        send_msg(&mut data, &FileReply::Data { first: 4, count: 2, len: 32768 }).unwrap();
        assert_eq!(data, [0, 0, 0, 17, 0x93, 0, 0, 0, 4, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0x80, 0]);
    }

    #[test]
    fn a_registrations_count_is_read_from_its_first_bytes() {
        let files = vec![file("a", 1), file("b", 2), file("c", 3)];
        let register = Request::Register { port: 9, files: files.clone() }.encode();
        assert_eq!(Request::file_count(&register[..Request::COUNT_HEAD]), Some(3));
        let update = Request::Update { files }.encode();
        assert_eq!(Request::file_count(&update[..Request::COUNT_HEAD]), Some(3));
        assert_eq!(Request::file_count(&Request::Ping.encode()), None);
        assert_eq!(Request::file_count(&register[..6]), None, "too short to say");
        assert_eq!(Request::name_of(Request::Unregister.encode()[0]), "unregister");
    }

    #[test]
    fn handshakes_accept_and_refuse_with_reasons() {
        let hello = Hello { version: PROTOCOL_VERSION, service: Service::Index }.encode();
        assert_eq!(Hello::check(&hello, Service::Index), Ok(()));
        assert_eq!(
            Hello::check(&hello, Service::Files),
            Err("this is a peer's file server, not an index server".into())
        );
        let old = Hello { version: 2, service: Service::Files }.encode();
        assert_eq!(
            Hello::check(&old, Service::Files).unwrap_err(),
            "protocol version 2 is not supported (this server speaks version 3)"
        );

        // Server side over in-memory streams: the refusal is written before the error.
        let mut input = Vec::new();
        send_all(&mut input, b"not a hello").unwrap();
        let mut output = Vec::new();
        let err = server_handshake(&mut &input[..], &mut output, Service::Index, MAX_FRAME_LEN).unwrap_err();
        assert!(err.to_string().contains("not a peerdex client"));
        let welcome: Welcome = recv_msg(&mut &output[..]).unwrap();
        assert_eq!(welcome.refusal.as_deref(), Some("not a peerdex client (bad handshake)"));

        // Client side: a refusal becomes an error carrying the reason.
        let mut reply = Vec::new();
        send_msg(&mut reply, &Welcome { version: 1, refusal: Some("go away".into()) }).unwrap();
        let err = client_handshake(&mut &reply[..], &mut Vec::new(), Service::Files).unwrap_err();
        assert_eq!(err.to_string(), "refused: go away");
    }

    #[test]
    fn bad_payloads_are_named_errors() {
        assert_eq!(Request::decode(&[]), Err(DecodeError::Truncated));
        assert_eq!(Request::decode(&[0x7f]), Err(DecodeError::UnknownTag(0x7f)));
        assert_eq!(Hello::decode(b"GET / HTTP/1.1\r\n"), Err(DecodeError::BadMagic));
        // A count of 4 billion files in a 7-byte message: refused, nothing allocated.
        assert_eq!(Request::decode(&[0x01, 0, 1, 0xff, 0xff, 0xff, 0xff]), Err(DecodeError::Truncated));
        let mut traversal = Vec::new();
        Enc::new(&mut traversal, 0x06).str("../etc/passwd");
        assert_eq!(
            Request::decode(&traversal),
            Err(DecodeError::BadName("../etc/passwd".into(), NameError::Dots))
        );
        let mut not_utf8 = Vec::new();
        Enc::new(&mut not_utf8, 0x06).u16(2).bytes(&[0xff, 0xfe]);
        assert_eq!(Request::decode(&not_utf8), Err(DecodeError::InvalidUtf8));
        // A bitfield of 10 pieces with a bit set past the tenth.
        assert_eq!(FileReply::decode(&[0x92, 0, 0, 0, 10, 0xff, 0xe0]), Err(DecodeError::BadBitfield));
        // A layer of a billion hashes in a few bytes: refused before allocating.
        assert_eq!(FileReply::decode(&[0x91, 0x40, 0, 0, 0, 1]), Err(DecodeError::Truncated));
    }
}
