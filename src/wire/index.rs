//! The conversation between a peer and the index server: a [`Request`], answered by
//! one [`Reply`] (a listing by several `ListChunk`s closed by a `ListEnd`).

use super::codec::{Dec, Enc};
use super::{DecodeError, Message, Sha256};
use crate::content::Hash;
use crate::name::SharePath;
use std::net::SocketAddr;

/// A shared file as the index knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileInfo {
    /// The file's name in its peer's folder.
    pub name: SharePath,
    /// Size in bytes.
    pub size: u64,
    /// The content's root ([`crate::content::merkle`]).
    pub root: Hash,
}

/// One line of a listing: a distinct file (name and content) and how many peers share it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListEntry {
    /// The file's name.
    pub name: SharePath,
    /// Size in bytes.
    pub size: u64,
    /// The content's root ([`crate::content::merkle`]).
    pub root: Hash,
    /// How many registered peers (other than the asker) share this name with this
    /// content, whole.
    pub peers: u32,
    /// How many more hold part of it (they are downloading it).
    pub partial: u32,
}

/// One peer that shares a looked-up name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerHit {
    /// The peer's file server: the IP the index sees on the peer's connection and the
    /// port the peer registered.
    pub addr: SocketAddr,
    /// Size in bytes of that peer's copy.
    pub size: u64,
    /// The root of that peer's copy.
    pub root: Hash,
    /// Whether it has the whole file; if not, it is downloading it and serves the
    /// pieces it has verified.
    pub complete: bool,
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
        names: Vec<SharePath>,
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
        name: SharePath,
    },
    /// Keeps an idle connection from timing out. Answered by `Pong`.
    Ping,
    /// Add files to a registered peer's list, or replace the size and root of names it
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
    /// This registered peer holds part of these files: it is downloading them, and
    /// serves the pieces it has verified. Ends with `Add` (complete) or `Delete`
    /// (abandoned). Answered by `Done` or `Error`.
    Partial {
        /// The files being downloaded.
        files: Vec<FileInfo>,
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

/// The first byte of each [`Request`].
pub mod request_tag {
    /// [`super::Request::Register`]
    pub const REGISTER: u8 = 0x01;
    /// [`super::Request::Unregister`]
    pub const UNREGISTER: u8 = 0x02;
    /// [`super::Request::Update`]
    pub const UPDATE: u8 = 0x03;
    /// [`super::Request::Delete`]
    pub const DELETE: u8 = 0x04;
    /// [`super::Request::List`]
    pub const LIST: u8 = 0x05;
    /// [`super::Request::Lookup`]
    pub const LOOKUP: u8 = 0x06;
    /// [`super::Request::Ping`]
    pub const PING: u8 = 0x07;
    /// [`super::Request::Add`]
    pub const ADD: u8 = 0x08;
    /// [`super::Request::Login`]
    pub const LOGIN: u8 = 0x09;
    /// [`super::Request::Proof`]
    pub const PROOF: u8 = 0x0a;
    /// [`super::Request::Partial`]
    pub const PARTIAL: u8 = 0x0b;
}

/// The first byte of each [`Reply`].
pub mod reply_tag {
    /// [`super::Reply::Done`]
    pub const DONE: u8 = 0x81;
    /// [`super::Reply::Error`]
    pub const ERROR: u8 = 0x82;
    /// [`super::Reply::ListChunk`]
    pub const LIST_CHUNK: u8 = 0x83;
    /// [`super::Reply::ListEnd`]
    pub const LIST_END: u8 = 0x84;
    /// [`super::Reply::Peers`]
    pub const PEERS: u8 = 0x85;
    /// [`super::Reply::NoPeers`]
    pub const NO_PEERS: u8 = 0x86;
    /// [`super::Reply::Pong`]
    pub const PONG: u8 = 0x87;
    /// [`super::Reply::Challenge`]
    pub const CHALLENGE: u8 = 0x88;
    /// [`super::Reply::LoggedIn`]
    pub const LOGGED_IN: u8 = 0x89;
}

use reply_tag as rp;
use request_tag as rq;

/// Fewest bytes each list item takes on the wire; a count is checked against it before
/// a list is allocated.
const MIN_FILE_LEN: usize = 2 + 1 + 8 + 32;
const MIN_NAME_LEN: usize = 2 + 1;
const MIN_HIT_LEN: usize = 1 + 4 + 2 + 8 + 32 + 1;
const MIN_ENTRY_LEN: usize = MIN_FILE_LEN + 4 + 4;

impl Enc<'_> {
    fn file(&mut self, f: &FileInfo) -> &mut Self {
        self.str(f.name.as_str()).u64(f.size).bytes(&f.root)
    }
}

impl Dec<'_> {
    fn file(&mut self) -> Result<FileInfo, DecodeError> {
        Ok(FileInfo { name: self.name()?, size: self.u64()?, root: self.array()? })
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
        let count = match *head {
            [rq::REGISTER, _, _, a, b, c, d, ..] => [a, b, c, d],
            [rq::UPDATE, a, b, c, d, ..] => [a, b, c, d],
            _ => return None,
        };
        Some(u32::from_be_bytes(count) as usize)
    }

    /// The name of the request whose tag is `tag`, for a log record about one that
    /// could not be decoded.
    pub fn name_of(tag: u8) -> &'static str {
        match tag {
            rq::REGISTER => "register",
            rq::UNREGISTER => "unregister",
            rq::UPDATE => "update",
            rq::DELETE => "delete",
            rq::LIST => "list",
            rq::LOOKUP => "lookup",
            rq::PING => "ping",
            rq::ADD => "add",
            rq::LOGIN => "login",
            rq::PROOF => "proof",
            rq::PARTIAL => "partial",
            _ => "unknown type",
        }
    }
}

impl Message for Request {
    fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Request::Register { port, files } => {
                Enc::new(out, rq::REGISTER).u16(*port).list(files, |e, f| {
                    e.file(f);
                });
            }
            Request::Unregister => {
                Enc::new(out, rq::UNREGISTER);
            }
            Request::Update { files } => {
                Enc::new(out, rq::UPDATE).list(files, |e, f| {
                    e.file(f);
                });
            }
            Request::Delete { names } => {
                Enc::new(out, rq::DELETE).list(names, |e, n| {
                    e.str(n.as_str());
                });
            }
            Request::List { pattern, limit } => {
                Enc::new(out, rq::LIST).str(pattern).opt_u32(*limit);
            }
            Request::Lookup { name } => {
                Enc::new(out, rq::LOOKUP).str(name.as_str());
            }
            Request::Ping => {
                Enc::new(out, rq::PING);
            }
            Request::Add { files } => {
                Enc::new(out, rq::ADD).list(files, |e, f| {
                    e.file(f);
                });
            }
            Request::Login { user } => {
                Enc::new(out, rq::LOGIN).str(user);
            }
            Request::Proof { proof } => {
                Enc::new(out, rq::PROOF).bytes(proof);
            }
            Request::Partial { files } => {
                Enc::new(out, rq::PARTIAL).list(files, |e, f| {
                    e.file(f);
                });
            }
        }
    }
    fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        let mut d = Dec(payload);
        let msg = match d.u8()? {
            rq::REGISTER => {
                let port = d.u16()?;
                Request::Register { port, files: d.list(MIN_FILE_LEN, Dec::file)? }
            }
            rq::UNREGISTER => Request::Unregister,
            rq::UPDATE => Request::Update { files: d.list(MIN_FILE_LEN, Dec::file)? },
            rq::DELETE => Request::Delete { names: d.list(MIN_NAME_LEN, Dec::name)? },
            rq::LIST => Request::List { pattern: d.str()?, limit: d.opt_u32()? },
            rq::LOOKUP => Request::Lookup { name: d.name()? },
            rq::PING => Request::Ping,
            rq::ADD => Request::Add { files: d.list(MIN_FILE_LEN, Dec::file)? },
            rq::LOGIN => Request::Login { user: d.str()? },
            rq::PROOF => Request::Proof { proof: d.array()? },
            rq::PARTIAL => Request::Partial { files: d.list(MIN_FILE_LEN, Dec::file)? },
            t => return Err(DecodeError::UnknownTag(t)),
        };
        d.finish(msg)
    }
}

impl Message for Reply {
    fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Reply::Done { files } => {
                Enc::new(out, rp::DONE).u32(*files);
            }
            Reply::Error(why) => {
                Enc::new(out, rp::ERROR).str(why);
            }
            Reply::ListChunk(entries) => {
                Enc::new(out, rp::LIST_CHUNK).list(entries, |e, x| {
                    e.str(x.name.as_str()).u64(x.size).bytes(&x.root).u32(x.peers).u32(x.partial);
                });
            }
            Reply::ListEnd { truncated } => {
                Enc::new(out, rp::LIST_END).bool(*truncated);
            }
            Reply::Peers(hits) => {
                Enc::new(out, rp::PEERS).list(hits, |e, h| {
                    e.addr(&h.addr).u64(h.size).bytes(&h.root).bool(h.complete);
                });
            }
            Reply::NoPeers => {
                Enc::new(out, rp::NO_PEERS);
            }
            Reply::Pong => {
                Enc::new(out, rp::PONG);
            }
            Reply::Challenge { salt, rounds, nonce } => {
                Enc::new(out, rp::CHALLENGE)
                    .u16(u16::try_from(salt.len()).expect("salts are short"))
                    .bytes(salt)
                    .u32(*rounds)
                    .bytes(nonce);
            }
            Reply::LoggedIn => {
                Enc::new(out, rp::LOGGED_IN);
            }
        }
    }
    fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        let mut d = Dec(payload);
        let msg = match d.u8()? {
            rp::DONE => Reply::Done { files: d.u32()? },
            rp::ERROR => Reply::Error(d.str()?),
            rp::LIST_CHUNK => Reply::ListChunk(d.list(MIN_ENTRY_LEN, |d| {
                let FileInfo { name, size, root } = d.file()?;
                Ok(ListEntry { name, size, root, peers: d.u32()?, partial: d.u32()? })
            })?),
            rp::LIST_END => Reply::ListEnd { truncated: d.bool()? },
            rp::PEERS => Reply::Peers(d.list(MIN_HIT_LEN, |d| {
                Ok(PeerHit { addr: d.addr()?, size: d.u64()?, root: d.array()?, complete: d.bool()? })
            })?),
            rp::NO_PEERS => Reply::NoPeers,
            rp::PONG => Reply::Pong,
            rp::CHALLENGE => {
                let len = d.u16()? as usize;
                let salt = d.take(len)?.to_vec();
                Reply::Challenge { salt, rounds: d.u32()?, nonce: d.array()? }
            }
            rp::LOGGED_IN => Reply::LoggedIn,
            t => return Err(DecodeError::UnknownTag(t)),
        };
        d.finish(msg)
    }
}
