//! The conversation between a downloader and a peer's file server (protocol version
//! 2): pipelined requests about one content, named by its root, each answered in order.
//!
//! ```text
//! downloader                               file server
//!    Hello(Files, version 3)    ------>
//!                               <------    Welcome
//!    Layer(root)                ------>
//!    Have(root)                 ------>
//!    Get(root, 0, 4)            ------>     (requests need not wait for answers)
//!    Get(root, 4, 4)            ------>
//!                               <------    Layer(hashes)
//!                               <------    Have(bitfield)
//!                               <------    Data { first: 0, count: 4, len }, then `len` raw bytes
//!                               <------    Data { first: 4, count: 4, len }, then `len` raw bytes
//! ```
//!
//! An `Error` answers one request and the connection goes on; a malformed frame closes
//! it. A `Cancel` has no answer of its own: the `Get` it names is answered by
//! `Cancelled` instead of `Data` if the server had not begun it, as BitTorrent's Fast
//! Extension (BEP 6) answers a cancelled request by a reject or the piece, so that
//! every `Get` still gets exactly one answer and both sides keep count.
//!
//! ```text
//!    Get(root, 8, 16)           ------>
//!    Get(root, 30, 1)           ------>    (the endgame: piece 30 is also on its way from another source)
//!    Cancel(root, 30, 1)        ------>    (it came from there first)
//!                               <------    Data { first: 8, count: 16, len }, bytes
//!                               <------    Cancelled { first: 30, count: 1 }
//! ```

use super::codec::{Dec, Enc};
use super::{DecodeError, Message};
use crate::content::{Bitfield, Hash};

/// A downloader's request to a peer's file server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileRequest {
    /// The piece layer of the content with this root. Answered by `Layer` or `Error`.
    Layer {
        /// The content's root.
        root: Hash,
    },
    /// Which verified pieces of this content do you hold? Answered by `Have` (every
    /// piece for a complete file) or `Error`.
    Have {
        /// The content's root.
        root: Hash,
    },
    /// Send the pieces `first..first + count`. Answered by `Data` and their bytes, or
    /// by `Error` (nothing follows).
    Get {
        /// The content's root.
        root: Hash,
        /// The first piece.
        first: u32,
        /// How many pieces, at least 1.
        count: u32,
    },
    /// How busy are you? Answered by `Status`; needs no upload slot.
    Status,
    /// The pieces of an earlier `Get` with exactly this root, `first` and `count` are
    /// no longer wanted. Not answered itself: that `Get` is answered by `Cancelled`
    /// if the server had not begun to send it, by its `Data` otherwise. A `Cancel`
    /// that names no unanswered `Get` is ignored.
    Cancel {
        /// The content's root.
        root: Hash,
        /// The first piece of the `Get`.
        first: u32,
        /// Its count of pieces.
        count: u32,
    },
}

/// A file server's answer to one [`FileRequest`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileReply {
    /// The piece layer: one hash per piece, in order.
    Layer(Vec<Hash>),
    /// The verified pieces held.
    Have(Bitfield),
    /// The pieces asked for follow: exactly `len` raw bytes after this frame, outside
    /// any frame (so the kernel can copy them).
    Data {
        /// The first piece.
        first: u32,
        /// How many pieces.
        count: u32,
        /// Bytes that follow.
        len: u64,
    },
    /// This request is refused; the text says why. The connection goes on.
    Error(String),
    /// The answer to `Status`.
    Status {
        /// Uploads running now (not counting this question).
        uploads: u32,
        /// Bytes per second sent over the last few seconds.
        bytes_per_sec: u64,
    },
    /// The answer to a `Get` cancelled before the server began it: no bytes follow.
    Cancelled {
        /// The first piece of the `Get`.
        first: u32,
        /// Its count of pieces.
        count: u32,
    },
}

/// The first byte of each [`FileRequest`].
pub mod file_request_tag {
    /// [`super::FileRequest::Layer`]
    pub const LAYER: u8 = 0x11;
    /// [`super::FileRequest::Have`]
    pub const HAVE: u8 = 0x12;
    /// [`super::FileRequest::Get`]
    pub const GET: u8 = 0x13;
    /// [`super::FileRequest::Status`]
    pub const STATUS: u8 = 0x14;
    /// [`super::FileRequest::Cancel`]
    pub const CANCEL: u8 = 0x15;
}

/// The first byte of each [`FileReply`].
pub mod file_reply_tag {
    /// [`super::FileReply::Layer`]
    pub const LAYER: u8 = 0x91;
    /// [`super::FileReply::Have`]
    pub const HAVE: u8 = 0x92;
    /// [`super::FileReply::Data`]
    pub const DATA: u8 = 0x93;
    /// [`super::FileReply::Error`]
    pub const ERROR: u8 = 0x94;
    /// [`super::FileReply::Status`]
    pub const STATUS: u8 = 0x95;
    /// [`super::FileReply::Cancelled`]
    pub const CANCELLED: u8 = 0x96;
}

use file_reply_tag as rp;
use file_request_tag as rq;

impl Message for FileRequest {
    fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            FileRequest::Layer { root } => {
                Enc::new(out, rq::LAYER).bytes(root);
            }
            FileRequest::Have { root } => {
                Enc::new(out, rq::HAVE).bytes(root);
            }
            FileRequest::Get { root, first, count } => {
                Enc::new(out, rq::GET).bytes(root).u32(*first).u32(*count);
            }
            FileRequest::Status => {
                Enc::new(out, rq::STATUS);
            }
            FileRequest::Cancel { root, first, count } => {
                Enc::new(out, rq::CANCEL).bytes(root).u32(*first).u32(*count);
            }
        }
    }
    fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        let mut d = Dec(payload);
        let msg = match d.u8()? {
            rq::LAYER => FileRequest::Layer { root: d.array()? },
            rq::HAVE => FileRequest::Have { root: d.array()? },
            rq::GET => FileRequest::Get { root: d.array()?, first: d.u32()?, count: d.u32()? },
            rq::STATUS => FileRequest::Status,
            rq::CANCEL => FileRequest::Cancel { root: d.array()?, first: d.u32()?, count: d.u32()? },
            t => return Err(DecodeError::UnknownTag(t)),
        };
        d.finish(msg)
    }
}

impl Message for FileReply {
    fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            FileReply::Layer(hashes) => {
                Enc::new(out, rp::LAYER).list(hashes, |e, h| {
                    e.bytes(h);
                });
            }
            FileReply::Have(bits) => {
                Enc::new(out, rp::HAVE).u32(bits.len()).bytes(bits.as_bytes());
            }
            FileReply::Data { first, count, len } => {
                Enc::new(out, rp::DATA).u32(*first).u32(*count).u64(*len);
            }
            FileReply::Error(why) => {
                Enc::new(out, rp::ERROR).str(why);
            }
            FileReply::Status { uploads, bytes_per_sec } => {
                Enc::new(out, rp::STATUS).u32(*uploads).u64(*bytes_per_sec);
            }
            FileReply::Cancelled { first, count } => {
                Enc::new(out, rp::CANCELLED).u32(*first).u32(*count);
            }
        }
    }
    fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        let mut d = Dec(payload);
        let msg = match d.u8()? {
            rp::LAYER => FileReply::Layer(d.list(32, Dec::array)?),
            rp::HAVE => {
                let len = d.u32()?;
                let bytes = d.take((len as usize).div_ceil(8))?;
                FileReply::Have(Bitfield::from_bytes(len, bytes).ok_or(DecodeError::BadBitfield)?)
            }
            rp::DATA => FileReply::Data { first: d.u32()?, count: d.u32()?, len: d.u64()? },
            rp::ERROR => FileReply::Error(d.str()?),
            rp::STATUS => FileReply::Status { uploads: d.u32()?, bytes_per_sec: d.u64()? },
            rp::CANCELLED => FileReply::Cancelled { first: d.u32()?, count: d.u32()? },
            t => return Err(DecodeError::UnknownTag(t)),
        };
        d.finish(msg)
    }
}
