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
//! - peer to peer: the downloader sends one [`FileRequest`]; the file server answers
//!   with a [`FileReply`], and after a `FileReply::Header` the file's bytes follow raw,
//!   from the requested offset to the end, outside any frame (so the kernel can copy
//!   them).

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::name::{NameError, ShareName};

/// Largest frame payload accepted by default, in bytes: 16 MiB. A registration of the
/// maximum number of files with the longest names fits (see
/// [`MAX_FILES_PER_PEER`]); Redis's request limit is 512 MB, but nothing in our protocol
/// needs more than this, and a smaller cap bounds what a stranger can make us buffer.
pub const MAX_FRAME_LEN: usize = 16 << 20;

/// Most files one peer can register. A registration of this many files with
/// 255-byte names is 50,000 x 298 bytes = 14.2 MiB, which fits [`MAX_FRAME_LEN`].
pub const MAX_FILES_PER_PEER: usize = 50_000;

/// Version of this protocol, sent in every [`Hello`] and [`Welcome`].
pub const PROTOCOL_VERSION: u16 = 1;

/// First bytes of every [`Hello`] and [`Welcome`]; tells a peerdex connection apart
/// from anything else that happens to connect.
pub const MAGIC: [u8; 8] = *b"PEERDEX\0";

/// A SHA-256 digest.
pub type Sha256 = [u8; 32];

/// Sends one frame: the payload's length as a big-endian `u32`, then the payload.
pub fn send_all(w: &mut impl Write, payload: &[u8]) -> io::Result<()> {
    let len =
        u32::try_from(payload.len()).ok().filter(|&len| len as usize <= MAX_FRAME_LEN).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("frame of {} bytes exceeds the maximum of {MAX_FRAME_LEN}", payload.len()),
            )
        })?;
    // One `writev` for the length and the payload: no copy, and on a socket one
    // system call and one TCP segment for a small frame.
    let header = len.to_be_bytes();
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
    /// A file name that is not a valid [`ShareName`]; carries the name (lossily
    /// decoded) and the reason.
    BadName(String, NameError),
    /// An address family other than 4 or 6, or a service byte we do not know.
    BadEnum(&'static str, u8),
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
    /// Encodes the message as one frame payload.
    fn encode(&self) -> Vec<u8>;
    /// Decodes a whole frame payload; every byte must be used.
    fn decode(payload: &[u8]) -> Result<Self, DecodeError>;
}

/// Encodes `msg` and sends it as one frame.
pub fn send_msg(w: &mut impl Write, msg: &impl Message) -> io::Result<()> {
    send_all(w, &msg.encode())
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

/// A shared file as the index knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileInfo {
    /// The file's name in its peer's folder.
    pub name: ShareName,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the content.
    pub sha256: Sha256,
}

/// One line of a listing: a distinct file (name and content) and how many peers share it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListEntry {
    /// The file's name.
    pub name: ShareName,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the content.
    pub sha256: Sha256,
    /// How many registered peers (other than the asker) share this name with this content.
    pub peers: u32,
}

/// One peer that shares a looked-up name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerHit {
    /// The peer's file server: the IP the index sees on the peer's connection and the
    /// port the peer registered.
    pub addr: SocketAddr,
    /// Size in bytes of that peer's copy.
    pub size: u64,
    /// SHA-256 of that peer's copy.
    pub sha256: Sha256,
}

/// A request from a peer to the index server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Register (or re-register, replacing) this connection's peer: its file-server
    /// port and every file it shares. Answered by `Done` or `Error`.
    Register {
        /// The peer's file-server port; never 0.
        port: u16,
        /// Every shared file; names are unique.
        files: Vec<FileInfo>,
    },
    /// Remove this connection's registration. Answered by `Done` or `Error`.
    Unregister,
    /// Replace a registered peer's file list. Answered by `Done` or `Error`.
    Update {
        /// The full new list.
        files: Vec<FileInfo>,
    },
    /// Remove these names from a registered peer's list (names it does not share are
    /// ignored). Answered by `Done` or `Error`.
    Delete {
        /// Names to remove.
        names: Vec<ShareName>,
    },
    /// List files shared by the other registered peers, in name order. Answered by
    /// zero or more `ListChunk`s and one `ListEnd`, or by `Error`.
    List {
        /// Only names containing this text, ignoring ASCII case; empty for all.
        pattern: String,
        /// At most this many entries; `None` for all.
        limit: Option<u32>,
    },
    /// Which registered peers share this name? Answered by `Peers` or `NoPeers`.
    Lookup {
        /// The name looked up.
        name: ShareName,
    },
    /// Keeps an idle connection from timing out. Answered by `Pong`.
    Ping,
    /// Add files to a registered peer's list, or replace the size and hash of names it
    /// already shares (a finished download). Answered by `Done` or `Error`.
    Add {
        /// The files added or changed.
        files: Vec<FileInfo>,
    },
    /// Start logging in as `user` (see [`crate::auth`]). Answered by `Challenge`.
    Login {
        /// The user name.
        user: String,
    },
    /// Answer the last `Challenge`. Answered by `LoggedIn` or `Error`.
    Proof {
        /// HMAC-SHA256 of the challenge, keyed by the password-derived key.
        proof: Sha256,
    },
}

/// The index server's answer to a [`Request`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// The request was carried out; the peer now has this many files registered.
    Done {
        /// Files registered for this peer after the request.
        files: u32,
    },
    /// The request was refused or malformed; the text says why. The connection stays up.
    Error(String),
    /// Part of a listing.
    ListChunk(Vec<ListEntry>),
    /// End of a listing.
    ListEnd {
        /// True if `limit` cut the listing short.
        truncated: bool,
    },
    /// Every registered peer that shares the looked-up name.
    Peers(Vec<PeerHit>),
    /// No registered peer shares the looked-up name.
    NoPeers,
    /// Answer to `Ping`.
    Pong,
    /// Answer to `Login`: derive the key with these and prove it over the nonce.
    Challenge {
        /// The user's salt.
        salt: Vec<u8>,
        /// PBKDF2 rounds.
        rounds: u32,
        /// Fresh random bytes for this attempt.
        nonce: [u8; 32],
    },
    /// The proof was right: this connection is logged in.
    LoggedIn,
}

/// A downloader's request to a peer's file server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileRequest {
    /// Send the file of this name from byte `offset` on. Answered by `Header` and the
    /// bytes from `offset` to the end, or `Error`.
    Get {
        /// The name, as raw text: the server checks it and says what is wrong, so a bad
        /// name gets an error reply that names it.
        name: String,
        /// Where to start: 0 for the whole file, more to resume a download.
        offset: u64,
    },
    /// How busy are you? Answered by `Status`; lets a downloader choose the peer that
    /// will serve it fastest.
    Status,
}

/// A file server's answer to a [`FileRequest`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileReply {
    /// The file follows: exactly `size` raw bytes after this frame.
    Header {
        /// Number of bytes that follow.
        size: u64,
        /// SHA-256 of those bytes, for the downloader to check.
        sha256: Sha256,
    },
    /// No file is sent; the text says why.
    Error(String),
    /// The answer to `Status`.
    Status {
        /// Uploads running now (not counting this question).
        uploads: u32,
        /// Bytes per second sent over the last few seconds.
        bytes_per_sec: u64,
    },
}

// ---------------------------------------------------------------------------------
// Encoding primitives. Integers are big-endian; strings are a u16 byte count and UTF-8;
// lists are a u32 item count and the items.

struct Enc(Vec<u8>);

impl Enc {
    fn new(tag: u8) -> Enc {
        // Room for most messages (a lookup's reply with a hit is 52 bytes) at once.
        let mut bytes = Vec::with_capacity(64);
        bytes.push(tag);
        Enc(bytes)
    }
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.0.extend_from_slice(v);
        self
    }
    /// Strings longer than a u16 can count are cut at a character boundary; only
    /// error texts and patterns could be that long, and nobody needs 64 KiB of either.
    fn str(&mut self, v: &str) -> &mut Self {
        let mut end = v.len().min(u16::MAX as usize);
        while !v.is_char_boundary(end) {
            end -= 1;
        }
        self.u16(end as u16).bytes(&v.as_bytes()[..end])
    }
    fn count(&mut self, n: usize) -> &mut Self {
        self.u32(u32::try_from(n).expect("lists are bounded far below u32::MAX"))
    }
    fn addr(&mut self, a: &SocketAddr) -> &mut Self {
        match a.ip() {
            IpAddr::V4(ip) => self.u8(4).bytes(&ip.octets()),
            IpAddr::V6(ip) => self.u8(6).bytes(&ip.octets()),
        };
        self.u16(a.port())
    }
    fn file(&mut self, f: &FileInfo) -> &mut Self {
        self.str(f.name.as_str()).u64(f.size).bytes(&f.sha256)
    }
}

struct Dec<'a>(&'a [u8]);

/// Fewest bytes each list item takes on the wire; a count is checked against it before
/// a list is allocated.
const MIN_FILE_LEN: usize = 2 + 1 + 8 + 32;
const MIN_NAME_LEN: usize = 2 + 1;
const MIN_HIT_LEN: usize = 1 + 4 + 2 + 8 + 32;
const MIN_ENTRY_LEN: usize = MIN_FILE_LEN + 4;

impl<'a> Dec<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        Ok(self.take(N)?.try_into().expect("take returns N bytes"))
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(DecodeError::BadEnum("boolean", v)),
        }
    }
    fn str(&mut self) -> Result<String, DecodeError> {
        let len = self.u16()? as usize;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::InvalidUtf8)
    }
    fn name(&mut self) -> Result<ShareName, DecodeError> {
        let len = self.u16()? as usize;
        let bytes = self.take(len)?;
        let text = std::str::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8)?;
        ShareName::parse(text).map_err(|why| {
            let mut shown: String = text.chars().take(64).collect();
            if shown.len() < text.len() {
                shown.push_str("...");
            }
            DecodeError::BadName(shown, why)
        })
    }
    /// A list count, refused if the remaining bytes cannot hold that many items of at
    /// least `min_item` bytes each: a count never allocates more than the frame holds.
    fn count(&mut self, min_item: usize) -> Result<usize, DecodeError> {
        let n = self.u32()? as usize;
        if n.checked_mul(min_item).is_none_or(|need| need > self.0.len()) {
            return Err(DecodeError::Truncated);
        }
        Ok(n)
    }
    fn list<T>(
        &mut self,
        min_item: usize,
        mut item: impl FnMut(&mut Self) -> Result<T, DecodeError>,
    ) -> Result<Vec<T>, DecodeError> {
        let n = self.count(min_item)?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(item(self)?);
        }
        Ok(out)
    }
    fn addr(&mut self) -> Result<SocketAddr, DecodeError> {
        let ip = match self.u8()? {
            4 => IpAddr::V4(Ipv4Addr::from(self.array::<4>()?)),
            6 => IpAddr::V6(Ipv6Addr::from(self.array::<16>()?)),
            v => return Err(DecodeError::BadEnum("address family", v)),
        };
        Ok(SocketAddr::new(ip, self.u16()?))
    }
    fn file(&mut self) -> Result<FileInfo, DecodeError> {
        Ok(FileInfo { name: self.name()?, size: self.u64()?, sha256: self.array()? })
    }
    fn finish<T>(self, value: T) -> Result<T, DecodeError> {
        if self.0.is_empty() { Ok(value) } else { Err(DecodeError::TrailingBytes(self.0.len())) }
    }
}

impl Message for Hello {
    fn encode(&self) -> Vec<u8> {
        let mut e = Enc(MAGIC.to_vec());
        e.u16(self.version).u8(self.service as u8);
        e.0
    }
    fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        let mut d = Dec(payload);
        if d.take(MAGIC.len()).ok() != Some(&MAGIC[..]) {
            return Err(DecodeError::BadMagic);
        }
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
    fn encode(&self) -> Vec<u8> {
        let mut e = Enc(MAGIC.to_vec());
        e.u16(self.version);
        match &self.refusal {
            None => e.u8(0),
            Some(why) => e.u8(1).str(why),
        };
        e.0
    }
    fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        let mut d = Dec(payload);
        if d.take(MAGIC.len()).ok() != Some(&MAGIC[..]) {
            return Err(DecodeError::BadMagic);
        }
        let version = d.u16()?;
        let refusal = if d.bool()? { Some(d.str()?) } else { None };
        d.finish(Welcome { version, refusal })
    }
}

impl Request {
    /// Bytes at the start of a payload that hold a `Register`'s or an `Update`'s file
    /// count: a `Register`'s tag, port and count.
    pub const COUNT_HEAD: usize = 7;

    /// The file count of a `Register` or `Update` from the first [`Request::COUNT_HEAD`]
    /// bytes of its payload, if that is what they start: lets a server refuse a
    /// registration over a limit before it reads (and buffers) the rest.
    pub fn file_count(head: &[u8]) -> Option<usize> {
        let count = match head {
            [0x01, _, _, a, b, c, d, ..] => [*a, *b, *c, *d],
            [0x03, a, b, c, d, ..] => [*a, *b, *c, *d],
            _ => return None,
        };
        Some(u32::from_be_bytes(count) as usize)
    }

    /// The name of the request whose tag is `tag`, for a log record about one that
    /// could not be decoded.
    pub fn name_of(tag: u8) -> &'static str {
        match tag {
            0x01 => "register",
            0x02 => "unregister",
            0x03 => "update",
            0x04 => "delete",
            0x05 => "list",
            0x06 => "lookup",
            0x07 => "ping",
            0x08 => "add",
            0x09 => "login",
            0x0a => "proof",
            _ => "unknown type",
        }
    }
}

impl Message for Request {
    fn encode(&self) -> Vec<u8> {
        let e = match self {
            Request::Register { port, files } => {
                let mut e = Enc::new(0x01);
                e.u16(*port).count(files.len());
                for f in files {
                    e.file(f);
                }
                e
            }
            Request::Unregister => Enc::new(0x02),
            Request::Update { files } => {
                let mut e = Enc::new(0x03);
                e.count(files.len());
                for f in files {
                    e.file(f);
                }
                e
            }
            Request::Delete { names } => {
                let mut e = Enc::new(0x04);
                e.count(names.len());
                for n in names {
                    e.str(n.as_str());
                }
                e
            }
            Request::List { pattern, limit } => {
                let mut e = Enc::new(0x05);
                e.str(pattern);
                match limit {
                    None => e.u8(0),
                    Some(n) => e.u8(1).u32(*n),
                };
                e
            }
            Request::Lookup { name } => {
                let mut e = Enc::new(0x06);
                e.str(name.as_str());
                e
            }
            Request::Ping => Enc::new(0x07),
            Request::Add { files } => {
                let mut e = Enc::new(0x08);
                e.count(files.len());
                for f in files {
                    e.file(f);
                }
                e
            }
            Request::Login { user } => {
                let mut e = Enc::new(0x09);
                e.str(user);
                e
            }
            Request::Proof { proof } => {
                let mut e = Enc::new(0x0a);
                e.bytes(proof);
                e
            }
        };
        e.0
    }
    fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        let mut d = Dec(payload);
        let msg = match d.u8()? {
            0x01 => {
                let port = d.u16()?;
                Request::Register { port, files: d.list(MIN_FILE_LEN, Dec::file)? }
            }
            0x02 => Request::Unregister,
            0x03 => Request::Update { files: d.list(MIN_FILE_LEN, Dec::file)? },
            0x04 => Request::Delete { names: d.list(MIN_NAME_LEN, Dec::name)? },
            0x05 => {
                let pattern = d.str()?;
                let limit = if d.bool()? { Some(d.u32()?) } else { None };
                Request::List { pattern, limit }
            }
            0x06 => Request::Lookup { name: d.name()? },
            0x07 => Request::Ping,
            0x08 => Request::Add { files: d.list(MIN_FILE_LEN, Dec::file)? },
            0x09 => Request::Login { user: d.str()? },
            0x0a => Request::Proof { proof: d.array()? },
            t => return Err(DecodeError::UnknownTag(t)),
        };
        d.finish(msg)
    }
}

impl Message for Reply {
    fn encode(&self) -> Vec<u8> {
        let e = match self {
            Reply::Done { files } => {
                let mut e = Enc::new(0x81);
                e.u32(*files);
                e
            }
            Reply::Error(why) => {
                let mut e = Enc::new(0x82);
                e.str(why);
                e
            }
            Reply::ListChunk(entries) => {
                let mut e = Enc::new(0x83);
                e.count(entries.len());
                for x in entries {
                    e.str(x.name.as_str()).u64(x.size).bytes(&x.sha256).u32(x.peers);
                }
                e
            }
            Reply::ListEnd { truncated } => {
                let mut e = Enc::new(0x84);
                e.u8(u8::from(*truncated));
                e
            }
            Reply::Peers(hits) => {
                let mut e = Enc::new(0x85);
                e.count(hits.len());
                for h in hits {
                    e.addr(&h.addr).u64(h.size).bytes(&h.sha256);
                }
                e
            }
            Reply::NoPeers => Enc::new(0x86),
            Reply::Pong => Enc::new(0x87),
            Reply::Challenge { salt, rounds, nonce } => {
                let mut e = Enc::new(0x88);
                e.u16(u16::try_from(salt.len()).expect("salts are short"))
                    .bytes(salt)
                    .u32(*rounds)
                    .bytes(nonce);
                e
            }
            Reply::LoggedIn => Enc::new(0x89),
        };
        e.0
    }
    fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        let mut d = Dec(payload);
        let msg = match d.u8()? {
            0x81 => Reply::Done { files: d.u32()? },
            0x82 => Reply::Error(d.str()?),
            0x83 => Reply::ListChunk(d.list(MIN_ENTRY_LEN, |d| {
                let FileInfo { name, size, sha256 } = d.file()?;
                Ok(ListEntry { name, size, sha256, peers: d.u32()? })
            })?),
            0x84 => Reply::ListEnd { truncated: d.bool()? },
            0x85 => Reply::Peers(d.list(MIN_HIT_LEN, |d| {
                Ok(PeerHit { addr: d.addr()?, size: d.u64()?, sha256: d.array()? })
            })?),
            0x86 => Reply::NoPeers,
            0x87 => Reply::Pong,
            0x88 => {
                let len = d.u16()? as usize;
                let salt = d.take(len)?.to_vec();
                Reply::Challenge { salt, rounds: d.u32()?, nonce: d.array()? }
            }
            0x89 => Reply::LoggedIn,
            t => return Err(DecodeError::UnknownTag(t)),
        };
        d.finish(msg)
    }
}

impl Message for FileRequest {
    fn encode(&self) -> Vec<u8> {
        let e = match self {
            FileRequest::Get { name, offset } => {
                let mut e = Enc::new(0x01);
                e.str(name).u64(*offset);
                e
            }
            FileRequest::Status => Enc::new(0x02),
        };
        e.0
    }
    fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        let mut d = Dec(payload);
        let msg = match d.u8()? {
            0x01 => FileRequest::Get { name: d.str()?, offset: d.u64()? },
            0x02 => FileRequest::Status,
            t => return Err(DecodeError::UnknownTag(t)),
        };
        d.finish(msg)
    }
}

impl Message for FileReply {
    fn encode(&self) -> Vec<u8> {
        let e = match self {
            FileReply::Header { size, sha256 } => {
                let mut e = Enc::new(0x81);
                e.u64(*size).bytes(sha256);
                e
            }
            FileReply::Error(why) => {
                let mut e = Enc::new(0x82);
                e.str(why);
                e
            }
            FileReply::Status { uploads, bytes_per_sec } => {
                let mut e = Enc::new(0x83);
                e.u32(*uploads).u64(*bytes_per_sec);
                e
            }
        };
        e.0
    }
    fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        let mut d = Dec(payload);
        let msg = match d.u8()? {
            0x81 => FileReply::Header { size: d.u64()?, sha256: d.array()? },
            0x82 => FileReply::Error(d.str()?),
            0x83 => FileReply::Status { uploads: d.u32()?, bytes_per_sec: d.u64()? },
            t => return Err(DecodeError::UnknownTag(t)),
        };
        d.finish(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> ShareName {
        ShareName::parse(s).unwrap()
    }

    fn file(s: &str, size: u64) -> FileInfo {
        FileInfo { name: name(s), size, sha256: [size as u8; 32] }
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
        round_trip(Reply::Challenge { salt: vec![1, 2, 3], rounds: 600_000, nonce: [9; 32] });
        round_trip(Reply::LoggedIn);
        round_trip(Reply::Done { files: 3 });
        round_trip(Reply::Error("nope".into()));
        round_trip(Reply::ListChunk(vec![ListEntry { name: name("a"), size: 1, sha256: [9; 32], peers: 2 }]));
        round_trip(Reply::ListEnd { truncated: true });
        round_trip(Reply::Peers(vec![
            PeerHit { addr: "127.0.0.1:9".parse().unwrap(), size: 5, sha256: [1; 32] },
            PeerHit { addr: "[::1]:65535".parse().unwrap(), size: u64::MAX, sha256: [2; 32] },
        ]));
        round_trip(Reply::NoPeers);
        round_trip(Reply::Pong);
        round_trip(FileRequest::Get { name: "../x".into(), offset: 7 });
        round_trip(FileRequest::Status);
        round_trip(FileReply::Status { uploads: 3, bytes_per_sec: 1 << 30 });
        round_trip(FileReply::Header { size: 1 << 40, sha256: [3; 32] });
        round_trip(FileReply::Error("gone".into()));
    }

    /// The worked example in docs/PROTOCOL.md, byte for byte.
    #[test]
    fn the_documented_example_is_what_we_send() {
        let register =
            Request::Register { port: 40000, files: vec![FileInfo { sha256: [0xab; 32], ..file("a b", 3) }] };
        let mut wire = Vec::new();
        send_msg(&mut wire, &register).unwrap();
        let mut want =
            vec![0, 0, 0, 0x34, 0x01, 0x9c, 0x40, 0, 0, 0, 1, 0, 3, b'a', b' ', b'b', 0, 0, 0, 0, 0, 0, 0, 3];
        want.extend([0xab; 32]);
        assert_eq!(wire, want);
        let mut done = Vec::new();
        send_msg(&mut done, &Reply::Done { files: 1 }).unwrap();
        assert_eq!(done, [0, 0, 0, 5, 0x81, 0, 0, 0, 1]);
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
        let future = Hello { version: 2, service: Service::Index }.encode();
        assert!(Hello::check(&future, Service::Index).unwrap_err().contains("version 2 is not supported"));

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
        let mut traversal = Enc::new(0x06);
        traversal.str("../etc/passwd");
        assert_eq!(
            Request::decode(&traversal.0),
            Err(DecodeError::BadName("../etc/passwd".into(), NameError::Separator))
        );
        let mut not_utf8 = Enc::new(0x06);
        not_utf8.u16(2).bytes(&[0xff, 0xfe]);
        assert_eq!(Request::decode(&not_utf8.0), Err(DecodeError::InvalidUtf8));
    }
}
