//! peerdex: a Napster-style peer-to-peer file-sharing system.
//!
//! A central **indexing server** knows which peer shares which files; each **peer**
//! registers its shared folder with it, asks it who has a file, and downloads the file
//! straight from those peers, piece by piece, checking every piece against the
//! file's Merkle root before keeping it.
//!
//! A tour of the modules:
//!
//! - [`auth`]: accounts (the users file) and the challenge-response login;
//! - [`content`]: a file's identity (size and the root of a SHA-256 Merkle tree over
//!   its 16 KiB blocks, as in BitTorrent v2), its piece layer, and bitfields of pieces;
//! - [`name`]: [`name::SharePath`], a shared file's name, checked once so that it can
//!   never be a path;
//! - [`wire`]: the protocol: length-prefixed frames ([`wire::send_all`],
//!   [`wire::recv_all`]) and every message, encoded and decoded without sockets;
//! - [`index`]: the indexing server: the [`index::Registry`] (pure data, with an
//!   inverted name index and the per-address limits), the login state machine, the
//!   memory budget for requests, and the per-connection conversation;
//! - [`net`]: socket helpers both servers and their clients share: the accept loop with
//!   its caps on connections (in all and per address), one way to connect and shake
//!   hands, frame deadlines that a slow client cannot stretch, a gentle close;
//! - [`logging`]: log records through bounded queues, one writer thread per output,
//!   and a per-connection rate limit;
//! - [`text`]: text from elsewhere made safe to print ([`text::escape`], [`text::Clip`]);
//! - [`peer`]: the peer: its shared folder, file server, index client, downloader and
//!   command shell.
//!
//! The binaries `indexing-server` and `peer` (in `src/bin/`) parse arguments, set up
//! logging and call [`index::serve`] and [`peer::run`].

#![forbid(unsafe_code)]

pub mod auth;
pub mod cli;
pub mod content;
pub mod index;
pub mod logging;
pub mod name;
pub mod net;
pub mod peer;
pub mod text;
pub mod wire;

/// Locks `m`, taking a poisoned lock as it is, so that one thread's panic (one
/// connection's, one download's) does not take down every thread sharing the lock.
/// Every mutex in the crate is locked this way; this is the one place it is written.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
