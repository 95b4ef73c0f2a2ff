//! The registry: which peer shares which files. A plain data structure, no locks, no
//! I/O; the server wraps it in a lock (see [`super::Index`]).
//!
//! - `peers`: each registered `Peer` (its connection's address, its file-server port
//!   and its files: the shape the design asked for), in a slab, at the small id the
//!   inverted index knows it by (ids of departed peers are reused). A lookup goes
//!   from a name's holder to its peer's file by two indexings, without hashing an
//!   address.
//! - `ids`: connection address -> that id.
//! - `by_name`: name -> the peers that share it, an inverted index so that a lookup
//!   touches only those peers. Each `Holder` names the peer by its id and gives the
//!   position of the file in that peer's list, so a lookup reads a peer's size and
//!   hash without searching its list. It is a hash table of our own
//!   ([`super::holdings`]): a lookup is one hash and one probe, where a search of a
//!   B-tree of a million names chases a pointer to a name's text at every one of its
//!   ~40 comparisons (a sixth of the server's time, measured), and std's table makes
//!   three dependent cache misses where ours makes two.
//! - `names`: every name in `by_name`, in order, so that a listing comes out in name
//!   order and can be read a page at a time from any name on.
//!
//! Beside them, the counts that the limits need: files per client address and in all.
//!
//! A change to a peer's files (a registration, an update, an add, a delete) is a
//! [`Change`]: worked out first, then made [`STEP_FILES`] files a step, so that the
//! server's lock is never held long for one peer however many files it has; a
//! removal likewise ([`Registry::remove_step`]).
//!
//! Names are [`SharePath`]s, whose text is reference-counted: a name is stored once,
//! shared by the peer's list and the index (and by every peer that shares it).
//!
//! Memory per entry (a file at a peer), measured at ten million: 195 bytes. By
//! construction, 48 for the file in its peer's list (an 8-byte name, size, hash), about
//! 48 for the name's allocation, about 55 for its slot in a `by_name` table (a 32-byte
//! slot: hash, name, holders; at the tables' usual load) and about 15 for its slot in
//! `names`; the rest is the allocator's. Measured figures and the trade-offs of the
//! hash index (bulk registration and full listings are slower than with one B-tree;
//! lookups at scale faster) are in `docs/PERFORMANCE.md`.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::Bound;
use std::time::{Duration, Instant};

use memchr::memmem;
use slab::Slab;

use super::holdings::{Holder, Holders, Holdings, NameEntry, PeerId};
use crate::content::Hash;
use crate::name::{MAX_PATH_LEN, SharePath};
use crate::net::client_key;
use crate::text::Clip;
use crate::wire::{FileInfo, ListEntry, MAX_FILES_PER_PEER, PeerHit};

/// Longest name (a file's path in its peer's folder) the index accepts by default, in
/// bytes: paths longer than Windows' 260 characters are rare, and with
/// [`MAX_FILES_PER_IP`] of them one address holds at most about 300 MB of the index's
/// memory. Up to [`MAX_PATH_LEN`] (4,096) with `--max-name-len`.
pub const MAX_NAME_BYTES: usize = crate::name::INDEX_NAME_LEN;

/// Most files registered from one client address, over all its connections: five
/// peers of [`MAX_FILES_PER_PEER`] files, and at about 400 bytes of memory per entry
/// with the longest names (the 255-byte name is most of it), 100 MB, so that one
/// address cannot take the index's memory.
pub const MAX_FILES_PER_IP: usize = 250_000;

/// Most files in the whole index: 20 million entries are about 4 GB of memory with
/// typical names (see `docs/PERFORMANCE.md`), a size one machine holds comfortably.
pub const MAX_FILES_TOTAL: usize = 20_000_000;

/// The registry's limits; `Default` has the documented defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Files one peer (one connection) may register: [`MAX_FILES_PER_PEER`].
    pub files_per_peer: usize,
    /// Files registered from one client address, over all its connections:
    /// [`MAX_FILES_PER_IP`].
    pub files_per_ip: usize,
    /// Files in the whole index: [`MAX_FILES_TOTAL`].
    pub files_total: usize,
    /// Longest name (a path) accepted, in bytes: [`MAX_NAME_BYTES`], at most
    /// [`MAX_PATH_LEN`].
    pub name_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            files_per_peer: MAX_FILES_PER_PEER,
            files_per_ip: MAX_FILES_PER_IP,
            files_total: MAX_FILES_TOTAL,
            name_len: MAX_NAME_BYTES,
        }
    }
}

/// Why the registry refused a change. Nothing is changed when it does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistryError {
    /// The connection has no registration to change.
    NotRegistered,
    /// Port 0 cannot be connected to.
    PortZero,
    /// The same name appears twice in one list.
    DuplicateName(SharePath),
    /// A name longer than this server accepts.
    NameTooLong {
        /// The name.
        name: SharePath,
        /// The limit, in bytes.
        max: usize,
    },
    /// More files than one peer may register.
    TooManyFiles {
        /// Files the peer would have.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// More files than one client address may register, over all its connections.
    TooManyFromAddress {
        /// Files the address would have.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The whole index would hold more files than it may.
    IndexFull {
        /// The limit.
        max: usize,
    },
    /// More partial downloads announced than one peer may have.
    TooManyPartials {
        /// The limit ([`MAX_PARTIALS_PER_PEER`]).
        max: usize,
    },
    /// The database behind the index (`--store`) cannot be reached.
    StoreUnavailable,
}

/// Most partial downloads one peer may announce at once ([`Registry::announce_partial`]):
/// a peer downloads 4 files at a time by default; 64 leaves room for a larger setting
/// and costs the index a few kilobytes a peer at most.
pub const MAX_PARTIALS_PER_PEER: usize = 64;

/// Files shared or dropped by one step of a change ([`Registry::step`]) or of a
/// removal ([`Registry::remove_step`]), each step under the registry's write lock on
/// its own, so that a lookup waits at most one step behind a registration of any size:
/// 0.8-0.9 ms on the benchmark's machine (`cargo bench -- lookup`, its in-process
/// `register` row), where replacing 200,000 files at once held the lock for 140 ms.
pub const STEP_FILES: usize = 2048;

/// A change to one peer's files: what it will stop sharing and what it will share
/// (new files, and names given a new size or root; files it keeps as they are cost
/// nothing). Worked out before the registry is changed, mostly without its lock
/// ([`super::Index`]), then carried out by [`Registry::begin`] and [`Registry::step`]s.
/// Between the steps a lookup may find some of the files changed and not others, as
/// between the parts of a list sent in parts.
#[derive(Debug)]
pub struct Change {
    conn: SocketAddr,
    /// The file-server port: a registration's.
    port: Option<u16>,
    /// Names it stops sharing, taken from the end.
    gone: Vec<SharePath>,
    /// Files it starts sharing or shares anew, taken from the end (so kept in reverse).
    fresh: Vec<FileInfo>,
    /// Names whose partial downloads end (a delete), at [`Registry::begin`].
    unpartial: Vec<SharePath>,
    /// Files the peer shares once it is done.
    size: Size,
}

/// How many files a peer shares after a [`Change`].
#[derive(Clone, Copy, Debug)]
enum Size {
    /// This many: a registration, or once [`Registry::begin`] has counted.
    Exactly(usize),
    /// This many more than now (an add).
    More(usize),
    /// This many fewer than now (a delete).
    Fewer(usize),
}

impl Change {
    /// The peer on `conn` is to share `files` (already checked) instead of `old`, its
    /// list now (`None`: it is not registered, and `port` must be given).
    pub fn replace(
        conn: SocketAddr,
        port: Option<u16>,
        files: Vec<FileInfo>,
        old: Option<&[FileInfo]>,
    ) -> Change {
        let after = files.len();
        let mut gone = Vec::new();
        let mut fresh = files;
        if let Some(old) = old.filter(|old| !old.is_empty()) {
            let at: HashMap<&SharePath, usize> =
                fresh.iter().enumerate().map(|(i, f)| (&f.name, i)).collect();
            let mut kept = vec![false; fresh.len()];
            for f in old {
                match at.get(&f.name) {
                    Some(&i) => kept[i] = fresh[i].size == f.size && fresh[i].root == f.root,
                    None => gone.push(f.name.clone()),
                }
            }
            drop(at);
            let mut kept = kept.into_iter();
            fresh.retain(|_| !kept.next().expect("one flag a file"));
        }
        fresh.reverse();
        Change { conn, port, gone, fresh, unpartial: Vec::new(), size: Size::Exactly(after) }
    }

    /// The registered peer on `conn`, sharing `copies` (the size and root of its copy of
    /// each of `new`, if any: [`Registry::copies`]), is to share `new` (already checked)
    /// too.
    fn adding(conn: SocketAddr, new: Vec<FileInfo>, copies: &[Option<(u64, Hash)>]) -> Change {
        let more = copies.iter().filter(|c| c.is_none()).count();
        let mut copies = copies.iter();
        let mut fresh = new;
        fresh.retain(|f| copies.next().expect("one copy a file").is_none_or(|c| c != (f.size, f.root)));
        fresh.reverse();
        Change { conn, port: None, gone: Vec::new(), fresh, unpartial: Vec::new(), size: Size::More(more) }
    }

    /// The registered peer on `conn`, sharing `copies` of `names` ([`Registry::copies`])
    /// and downloading `partials`, is to stop sharing and downloading `names`.
    fn deleting(
        conn: SocketAddr,
        names: &[SharePath],
        copies: &[Option<(u64, Hash)>],
        partials: &[SharePath],
    ) -> Change {
        let mut gone: Vec<SharePath> =
            names.iter().zip(copies).filter(|(_, c)| c.is_some()).map(|(n, _)| n.clone()).collect();
        gone.sort_unstable();
        gone.dedup();
        let unpartial = partials.iter().filter(|p| names.contains(p)).cloned().collect();
        let size = Size::Fewer(gone.len());
        Change { conn, port: None, gone, fresh: Vec::new(), unpartial, size }
    }

    /// Files the peer shares once it is done (known once [`Registry::begin`] has counted).
    pub fn after(&self) -> usize {
        match self.size {
            Size::Exactly(n) => n,
            Size::More(_) | Size::Fewer(_) => unreachable!("asked before the change began"),
        }
    }

    /// A `Register` of `files` on `conn`, checked, as seen through `view`.
    pub fn register(
        view: &impl View,
        conn: SocketAddr,
        port: u16,
        files: Vec<FileInfo>,
    ) -> Result<Change, RegistryError> {
        check_registration(&view.limits(), port, &files)?;
        let old = view.files(conn);
        Ok(Change::replace(conn, Some(port), files, old.as_deref()))
    }

    /// An `Update` to `files` of the registered peer on `conn`, checked.
    pub fn update(view: &impl View, conn: SocketAddr, files: Vec<FileInfo>) -> Result<Change, RegistryError> {
        let old = view.files(conn).ok_or(RegistryError::NotRegistered)?;
        check_files(&view.limits(), &files)?;
        Ok(Change::replace(conn, None, files, Some(&old)))
    }

    /// An `Add` of `new` files to the registered peer on `conn`, checked: a name it
    /// already shares gets the new size and root.
    pub fn add(view: &impl View, conn: SocketAddr, new: Vec<FileInfo>) -> Result<Change, RegistryError> {
        if !view.registered(conn) {
            return Err(RegistryError::NotRegistered);
        }
        check_files(&view.limits(), &new)?;
        let names: Vec<&SharePath> = new.iter().map(|f| &f.name).collect();
        let copies = view.copies(conn, &names).ok_or(RegistryError::NotRegistered)?;
        Ok(Change::adding(conn, new, &copies))
    }

    /// A `Delete` of `names` from the registered peer's list; names it does not share
    /// are ignored, so a delete can be repeated.
    pub fn delete(view: &impl View, conn: SocketAddr, names: &[SharePath]) -> Result<Change, RegistryError> {
        let refs: Vec<&SharePath> = names.iter().collect();
        let copies = view.copies(conn, &refs).ok_or(RegistryError::NotRegistered)?;
        let partials = view.partial_names(conn).unwrap_or_default();
        Ok(Change::deleting(conn, names, &copies, &partials))
    }
}

/// What working out a [`Change`] reads of the registry: the [`Registry`] itself, all
/// at once, or [`super::Index`]'s, a part at a time under its read lock. So a request
/// is worked out by the same code however it is then carried out.
pub trait View {
    /// The limits the files are checked against.
    fn limits(&self) -> Limits;
    /// Whether a peer is registered on `conn`.
    fn registered(&self, conn: SocketAddr) -> bool;
    /// The files of the peer on `conn`; `None` if it is not registered.
    fn files(&self, conn: SocketAddr) -> Option<Vec<FileInfo>>;
    /// [`Registry::copies`].
    fn copies(&self, conn: SocketAddr, names: &[&SharePath]) -> Option<Vec<Option<(u64, Hash)>>>;
    /// [`Registry::partial_names`].
    fn partial_names(&self, conn: SocketAddr) -> Option<Vec<SharePath>>;
}

impl View for Registry {
    fn limits(&self) -> Limits {
        self.limits
    }

    fn registered(&self, conn: SocketAddr) -> bool {
        self.is_registered(conn)
    }

    fn files(&self, conn: SocketAddr) -> Option<Vec<FileInfo>> {
        self.peer(conn).map(|p| p.files.clone())
    }

    fn copies(&self, conn: SocketAddr, names: &[&SharePath]) -> Option<Vec<Option<(u64, Hash)>>> {
        Registry::copies(self, conn, names)
    }

    fn partial_names(&self, conn: SocketAddr) -> Option<Vec<SharePath>> {
        Registry::partial_names(self, conn)
    }
}

/// Checks a registration before anything is stored: a port that can be connected to,
/// and the file list ([`check_files`]). The same for every backend.
pub fn check_registration(limits: &Limits, port: u16, files: &[FileInfo]) -> Result<(), RegistryError> {
    if port == 0 {
        return Err(RegistryError::PortZero);
    }
    check_files(limits, files)
}

/// Checks a file list's size and names against `limits`: not too many, not too long,
/// unique. The same for every backend.
pub fn check_files(limits: &Limits, files: &[FileInfo]) -> Result<(), RegistryError> {
    if files.len() > limits.files_per_peer {
        return Err(RegistryError::TooManyFiles { count: files.len(), max: limits.files_per_peer });
    }
    if let Some(f) = files.iter().find(|f| f.name.as_str().len() > limits.name_len) {
        return Err(RegistryError::NameTooLong { name: f.name.clone(), max: limits.name_len });
    }
    let mut names: Vec<&SharePath> = files.iter().map(|f| &f.name).collect();
    names.sort_unstable();
    match names.windows(2).find(|w| w[0] == w[1]) {
        Some(w) => Err(RegistryError::DuplicateName(w[0].clone())),
        None => Ok(()),
    }
}

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegistryError::NotRegistered => f.write_str("not registered (send register first)"),
            RegistryError::PortZero => f.write_str("port 0 is not a valid file-server port"),
            RegistryError::DuplicateName(n) => write!(f, "file name {} is listed twice", Clip(n.as_str())),
            RegistryError::NameTooLong { name, max } => {
                write!(f, "file name {} is longer than the limit of {max} bytes", Clip(name.as_str()))
            }
            RegistryError::TooManyFiles { count, max } => {
                write!(f, "{count} files is more than the limit of {max} per peer")
            }
            RegistryError::TooManyFromAddress { count, max } => write!(
                f,
                "{count} files from your address is more than the limit of {max} per address (over all its connections)"
            ),
            RegistryError::IndexFull { max } => {
                write!(f, "the index is full: it holds its limit of {max} files in all")
            }
            RegistryError::TooManyPartials { max } => {
                write!(f, "more than the limit of {max} partial downloads per peer")
            }
            RegistryError::StoreUnavailable => f.write_str("index store unavailable"),
        }
    }
}

impl std::error::Error for RegistryError {}

/// One page of a listing: see [`Registry::list_page`].
#[derive(Debug, Default)]
pub struct ListPage {
    /// Matching entries, in name order.
    pub entries: Vec<ListEntry>,
    /// Where the next page starts (exclusive), or `None` if the listing is complete.
    pub next: Option<SharePath>,
}

/// What a listing looks for: names containing a text, ignoring ASCII case.
///
/// Matching is linear in the name's length whatever the pattern (`memchr::memmem`
/// over a lowercased copy of the name made on the stack), so no pattern can make a
/// page of a listing slow.
#[derive(Debug)]
pub struct Pattern {
    finder: Option<memmem::Finder<'static>>,
    /// Longer than any name can be, or holding a character no name may hold (a
    /// control character such as NUL, a bidirectional override, a backslash): nothing
    /// matches, and nothing is asked of the store (PostgreSQL refuses NUL in text).
    impossible: bool,
}

impl Pattern {
    /// The pattern for `text`; empty matches everything.
    pub fn new(text: &str) -> Pattern {
        let lower = text.to_ascii_lowercase();
        Pattern {
            impossible: lower.len() > MAX_PATH_LEN
                || lower.chars().any(|c| c == '\\' || crate::text::is_unsafe(c)),
            finder: (!lower.is_empty()).then(|| memmem::Finder::new(lower.as_bytes()).into_owned()),
        }
    }

    /// The text looked for, lowercased (ASCII); empty for all.
    pub fn text(&self) -> &str {
        let needle = self.finder.as_ref().map_or(&b""[..], |f| f.needle());
        std::str::from_utf8(needle).expect("made from a str, lowercased in ASCII only")
    }

    /// True if no name can match (a pattern longer than any name, or with a
    /// character no name holds).
    pub fn matches_nothing(&self) -> bool {
        self.impossible
    }

    /// Does `name` contain the pattern, ignoring ASCII case?
    pub fn matches(&self, name: &str) -> bool {
        if self.impossible {
            return false;
        }
        let Some(finder) = &self.finder else { return true };
        let mut lower = [0u8; MAX_PATH_LEN];
        let name = &name.as_bytes()[..name.len().min(MAX_PATH_LEN)];
        let lower = &mut lower[..name.len()];
        lower.copy_from_slice(name);
        lower.make_ascii_lowercase();
        finder.find(lower).is_some()
    }
}

/// The most work one [`Registry::list_page`] does, so that a caller holding the lock
/// holds it briefly whatever the registry's size and the pattern: at most `names`
/// names examined, and no new name after `time`.
#[derive(Clone, Copy, Debug)]
pub struct PageBudget {
    /// Names examined at most.
    pub names: usize,
    /// Scanning time, checked every few names.
    pub time: Duration,
}

/// A registered peer.
#[derive(Debug)]
struct Peer {
    /// Its connection's address.
    conn: SocketAddr,
    /// Its file server's port.
    port: u16,
    /// Its id in `by_name`'s holders, and its place in `peers`.
    id: PeerId,
    /// Its files, in no particular order (holders point into this list; a change
    /// appends and fills holes with the last file).
    files: Vec<FileInfo>,
    /// The files it is downloading and holds in part (see [`Registry::announce_partial`]).
    partials: Vec<FileInfo>,
    /// Files counted against the limits for it: as many as it has, except while a
    /// change is carried out in steps, when it is what it will have ([`Registry::begin`]).
    booked: usize,
}

/// The registry. See the module docs.
#[derive(Debug, Default)]
pub struct Registry {
    peers: Slab<Peer>,
    ids: HashMap<SocketAddr, PeerId>,
    by_name: Holdings,
    names: BTreeSet<SharePath>,
    /// Peers holding part of a file under a name, with its size and root: a few per
    /// download running, kept apart from the complete holders.
    partials: HashMap<SharePath, Vec<PeerId>>,
    /// Files registered per client address ([`client_key`]); addresses with none are
    /// removed.
    per_ip: HashMap<IpAddr, usize>,
    /// Files registered in all.
    total: usize,
    limits: Limits,
}

impl Registry {
    /// An empty registry with these limits.
    pub fn new(limits: Limits) -> Registry {
        Registry { limits, ..Registry::default() }
    }

    /// The peer registered on connection `conn`.
    fn peer(&self, conn: SocketAddr) -> Option<&Peer> {
        self.ids.get(&conn).map(|&id| &self.peers[id as usize])
    }

    fn peer_mut(&mut self, conn: SocketAddr) -> Option<&mut Peer> {
        self.ids.get(&conn).map(|&id| &mut self.peers[id as usize])
    }

    /// Registers the peer on connection `conn`, or replaces its registration. Returns
    /// how many files it now shares. All at once: [`Change`] for the same in steps.
    pub fn register(
        &mut self,
        conn: SocketAddr,
        port: u16,
        files: Vec<FileInfo>,
    ) -> Result<usize, RegistryError> {
        let change = Change::register(self, conn, port, files)?;
        self.apply(change)
    }

    /// Records that the registered peer on `conn` holds part of each of `files` (it is
    /// downloading them and serves the pieces it has verified), or gives a name it
    /// already announced a new size and root. A name it shares whole is not a partial:
    /// those are skipped. Ends for a name with [`Registry::add`] (the download is
    /// complete) or [`Registry::delete`]. Returns how many files it shares whole.
    pub fn announce_partial(
        &mut self,
        conn: SocketAddr,
        files: Vec<FileInfo>,
    ) -> Result<usize, RegistryError> {
        // More than a peer may have at all: refused before any other work.
        if files.len() > MAX_PARTIALS_PER_PEER {
            return Err(RegistryError::TooManyPartials { max: MAX_PARTIALS_PER_PEER });
        }
        self.check(&files)?;
        let peer = self.peer(conn).ok_or(RegistryError::NotRegistered)?;
        let id = peer.id;
        let shares = |f: &FileInfo| {
            self.by_name.get(&f.name).is_some_and(|h| h.as_slice().iter().any(|h| h.peer == id))
        };
        let files: Vec<FileInfo> = files.into_iter().filter(|f| !shares(f)).collect();
        let new = files.iter().filter(|f| !peer.partials.iter().any(|p| p.name == f.name)).count();
        if peer.partials.len() + new > MAX_PARTIALS_PER_PEER {
            return Err(RegistryError::TooManyPartials { max: MAX_PARTIALS_PER_PEER });
        }
        let peer = &mut self.peers[id as usize];
        for f in files {
            match peer.partials.iter_mut().find(|p| p.name == f.name) {
                Some(p) => *p = f,
                None => {
                    self.partials.entry(f.name.clone()).or_default().push(id);
                    peer.partials.push(f);
                }
            }
        }
        Ok(peer.files.len())
    }

    /// Forgets that the peer `id` (at `conn`) holds part of `name`, if it did.
    fn end_partial(&mut self, conn: SocketAddr, id: PeerId, name: &SharePath) {
        let Some(peer) = self.peer_mut(conn) else { return };
        let Some(at) = peer.partials.iter().position(|p| p.name == *name) else { return };
        peer.partials.swap_remove(at);
        if let Some(ids) = self.partials.get_mut(name) {
            ids.retain(|&p| p != id);
            if ids.is_empty() {
                self.partials.remove(name);
            }
        }
    }

    /// Replaces a registered peer's file list. Returns how many files it now shares.
    pub fn update(&mut self, conn: SocketAddr, files: Vec<FileInfo>) -> Result<usize, RegistryError> {
        let change = Change::update(self, conn, files)?;
        self.apply(change)
    }

    /// Adds `new` files to a registered peer's list; a name it already shares gets the
    /// new size and hash. Returns how many files it now shares.
    pub fn add(&mut self, conn: SocketAddr, new: Vec<FileInfo>) -> Result<usize, RegistryError> {
        let change = Change::add(self, conn, new)?;
        self.apply(change)
    }

    /// Removes `names` from a registered peer's list; names it does not share are
    /// ignored, so a delete can be repeated. Returns how many files it now shares.
    pub fn delete(&mut self, conn: SocketAddr, names: &[SharePath]) -> Result<usize, RegistryError> {
        let change = Change::delete(self, conn, names)?;
        self.apply(change)
    }

    /// Carries out `change` whole.
    fn apply(&mut self, mut change: Change) -> Result<usize, RegistryError> {
        let id = self.begin(&mut change)?;
        while !self.step(id, &mut change) {}
        Ok(change.after())
    }

    /// Starts `change`: checks the limits on the counts as they are now (other peers may
    /// have registered since it was worked out), books its files against them at once,
    /// so that no other registration can take their room while it is carried out, sets
    /// the port and makes the peer if it is new, and ends the partials it deletes.
    /// Nothing is changed if it is refused. Returns the peer's id, for [`Registry::step`].
    pub fn begin(&mut self, change: &mut Change) -> Result<PeerId, RegistryError> {
        let conn = change.conn;
        let before = self.peer(conn).map_or(0, |p| p.booked);
        let after = match change.size {
            Size::Exactly(n) => n,
            Size::More(n) => before + n,
            Size::Fewer(n) => before - n,
        };
        self.check_room(conn, before, after)?;
        let id = match (self.ids.get(&conn), change.port) {
            (Some(&id), _) => id,
            (None, Some(port)) => {
                let id = PeerId::try_from(self.peers.vacant_key()).expect("fewer than 4 billion peers");
                let files = Vec::with_capacity(change.fresh.len());
                self.peers.insert(Peer { conn, port, id, files, partials: Vec::new(), booked: 0 });
                self.ids.insert(conn, id);
                id
            }
            (None, None) => return Err(RegistryError::NotRegistered),
        };
        for name in &change.unpartial {
            self.end_partial(conn, id, name);
        }
        self.count(conn, before, after);
        change.size = Size::Exactly(after);
        let peer = &mut self.peers[id as usize];
        peer.booked = after;
        if let Some(port) = change.port {
            peer.port = port;
        }
        let more = after.saturating_sub(peer.files.len());
        peer.files.reserve_exact(more);
        Ok(id)
    }

    /// Carries out up to [`STEP_FILES`] files of `change`, begun by [`Registry::begin`]:
    /// names it drops first, then the files it shares. Returns whether it is done.
    pub fn step(&mut self, id: PeerId, change: &mut Change) -> bool {
        for _ in 0..STEP_FILES {
            if let Some(name) = change.gone.pop() {
                self.unshare(id, &name);
            } else if let Some(file) = change.fresh.pop() {
                self.share(id, file);
            } else {
                break;
            }
        }
        let done = change.gone.is_empty() && change.fresh.is_empty();
        if done {
            let files = &mut self.peers[id as usize].files;
            debug_assert_eq!(files.len(), change.after(), "a change ends with the files it booked");
            // A list replaced by a much shorter one gives its room back.
            if files.capacity() > files.len() + files.len() / 4 + 16 {
                files.shrink_to_fit();
            }
        }
        done
    }

    /// Shares `f` at peer `id`: indexes its name, or gives the copy it shares already
    /// under that name the new size and root; a partial download of it has ended.
    fn share(&mut self, id: PeerId, mut f: FileInfo) {
        let peer = &self.peers[id as usize];
        if !peer.partials.is_empty() {
            let conn = peer.conn;
            self.end_partial(conn, id, &f.name); // a finished download
        }
        let files = &mut self.peers[id as usize].files;
        match self.by_name.entry(f.name.clone()) {
            NameEntry::Vacant(e) => {
                self.names.insert(e.name().clone());
                e.insert(Holders::One(Holder { peer: id, idx: files.len() as u32 }));
                files.push(f);
            }
            NameEntry::Occupied(stored, holders) => {
                // Keep one copy of the name's text for everyone who shares it.
                f.name = stored.clone();
                match holders.find_mut(id) {
                    Some(h) => files[h.idx as usize] = f,
                    None => {
                        holders.push(Holder { peer: id, idx: files.len() as u32 });
                        files.push(f);
                    }
                }
            }
        }
    }

    /// Stops sharing `name` at peer `id`, if it does.
    fn unshare(&mut self, id: PeerId, name: &SharePath) {
        let Some(holders) = self.by_name.get_mut(name) else { return };
        let Some(&mut Holder { idx, .. }) = holders.find_mut(id) else { return };
        if holders.remove(id) {
            self.by_name.remove(name);
            self.names.remove(name);
        }
        // The last file moves into the hole; its holder must follow it.
        let files = &mut self.peers[id as usize].files;
        files.swap_remove(idx as usize);
        if let Some(moved) = files.get(idx as usize) {
            let holder = self.by_name.get_mut(&moved.name).and_then(|h| h.find_mut(id));
            holder.expect("every file is indexed").idx = idx;
        }
    }

    /// The size and root of the copy of each of `names` that the peer on `conn` shares;
    /// `None` if it is not registered.
    pub fn copies(&self, conn: SocketAddr, names: &[&SharePath]) -> Option<Vec<Option<(u64, Hash)>>> {
        let peer = self.peer(conn)?;
        let copy = |name: &SharePath| {
            let holder = self.by_name.get(name)?.as_slice().iter().find(|h| h.peer == peer.id)?;
            let f = &peer.files[holder.idx as usize];
            Some((f.size, f.root))
        };
        Some(names.iter().map(|name| copy(name)).collect())
    }

    /// Up to `most` of the files the peer on `conn` shares, from the `from`th on; `None`
    /// if it is not registered. A change to a peer's files is made only by its own
    /// connection, so the parts read under the lock one after another add up to its
    /// list as it is.
    pub fn files_of(&self, conn: SocketAddr, from: usize, most: usize) -> Option<Vec<FileInfo>> {
        let files = &self.peer(conn)?.files;
        Some(files.iter().skip(from).take(most).cloned().collect())
    }

    /// The names of the partial downloads the peer on `conn` announced; `None` if it is
    /// not registered.
    pub fn partial_names(&self, conn: SocketAddr) -> Option<Vec<SharePath>> {
        Some(self.peer(conn)?.partials.iter().map(|p| p.name.clone()).collect())
    }

    /// The limits this registry keeps.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Removes a registration, or says there was none.
    pub fn unregister(&mut self, conn: SocketAddr) -> Result<(), RegistryError> {
        if self.remove(conn) { Ok(()) } else { Err(RegistryError::NotRegistered) }
    }

    /// Removes a registration if there is one (a disconnect). Returns whether there was.
    pub fn remove(&mut self, conn: SocketAddr) -> bool {
        self.remove_step(conn, usize::MAX).is_some()
    }

    /// Removes up to `most` of the files of the peer on `conn`, and the peer once none is
    /// left: a registration removed in steps. Its files stop counting against the
    /// limits at the first step. `None` if it is not registered; otherwise whether it is
    /// gone.
    pub fn remove_step(&mut self, conn: SocketAddr, most: usize) -> Option<bool> {
        let id = *self.ids.get(&conn)?;
        let booked = std::mem::take(&mut self.peers[id as usize].booked);
        self.count(conn, booked, 0);
        for _ in 0..most {
            // The last file: no other file moves, so no other holder changes.
            let Some(f) = self.peers[id as usize].files.pop() else { break };
            if let Some(holders) = self.by_name.get_mut(&f.name)
                && holders.remove(id)
            {
                self.by_name.remove(&f.name);
                self.names.remove(&f.name);
            }
        }
        if !self.peers[id as usize].files.is_empty() {
            return Some(false);
        }
        self.ids.remove(&conn);
        let Peer { partials, .. } = self.peers.remove(id as usize);
        for p in &partials {
            if let Some(ids) = self.partials.get_mut(&p.name) {
                ids.retain(|&i| i != id);
                if ids.is_empty() {
                    self.partials.remove(&p.name);
                }
            }
        }
        Some(true)
    }

    /// Is the peer on `conn` registered?
    pub fn is_registered(&self, conn: SocketAddr) -> bool {
        self.ids.contains_key(&conn)
    }

    /// Number of registered peers.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// Number of files registered in all.
    pub fn file_count(&self) -> usize {
        self.total
    }

    /// Every registered peer that shares `name`: the IP of its connection, its
    /// file-server port, and its copy's size and root; then the peers that hold part
    /// of it (`complete` false).
    pub fn lookup(&self, name: &SharePath) -> Vec<PeerHit> {
        let mut hits: Vec<PeerHit> = self
            .by_name
            .read(name, |holders| holders.as_slice().iter().map(|h| self.hit(*h)).collect())
            .unwrap_or_default();
        // Most of the time nobody is downloading anything: then a lookup does not hash
        // the name a second time for the partials' table.
        if !self.partials.is_empty()
            && let Some(ids) = self.partials.get(name)
        {
            hits.extend(ids.iter().filter_map(|&id| self.partial_hit(id, name)));
        }
        hits
    }

    /// A peer holding part of `name`, as a hit.
    fn partial_hit(&self, id: PeerId, name: &SharePath) -> Option<PeerHit> {
        let peer = &self.peers[id as usize];
        let f = peer.partials.iter().find(|p| p.name == *name)?;
        let addr = SocketAddr::new(peer.conn.ip().to_canonical(), peer.port);
        Some(PeerHit { addr, size: f.size, root: f.root, complete: false })
    }

    /// The peer address and file a holder points at.
    fn hit(&self, h: Holder) -> PeerHit {
        let peer = &self.peers[h.peer as usize];
        let f = &peer.files[h.idx as usize];
        // `to_canonical`: an IPv4 peer seen through a dual-stack socket is reported as
        // plain IPv4, which every client can connect to.
        PeerHit {
            addr: SocketAddr::new(peer.conn.ip().to_canonical(), peer.port),
            size: f.size,
            root: f.root,
            complete: true,
        }
    }

    /// One page of the listing seen by the peer on `asker`: files shared by every other
    /// registered peer whose name matches `pattern`, in name order, starting after
    /// `after`. A distinct (name, size, root) is one entry with the number of peers
    /// that share it whole and of those that hold part of it (a name that only partial
    /// holders have is not listed: nobody can complete it for sure).
    ///
    /// The page ends after `budget.names` names have been examined, or once
    /// `budget.time` has passed, or once about `budget.names` entries are found,
    /// whichever comes first, matching or not: a caller holding a lock holds it for a
    /// bounded time whatever the registry's size and the pattern. A page can be empty
    /// and still have a `next`.
    pub fn list_page(
        &self,
        asker: SocketAddr,
        pattern: &Pattern,
        after: Option<&SharePath>,
        budget: PageBudget,
    ) -> ListPage {
        let mut page = ListPage::default();
        if pattern.matches_nothing() {
            return page;
        }
        let asker = self.ids.get(&asker).copied();
        let max = budget.names.max(1);
        let started = Instant::now();
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut last: Option<&SharePath> = None;
        let mut contents: Vec<(u64, [u8; 32], bool)> = Vec::new();
        for (seen, name) in self.names.range((start, Bound::Unbounded)).enumerate() {
            let out_of_time = seen % 16 == 15 && started.elapsed() >= budget.time;
            if seen == max || page.entries.len() >= max || out_of_time {
                page.next = last.cloned();
                return page;
            }
            last = Some(name);
            if !pattern.matches(name.as_str()) {
                continue;
            }
            let holders = &self.by_name[name];
            // One entry per distinct content, with the number of peers that share it.
            contents.clear();
            contents.extend(holders.as_slice().iter().filter(|h| Some(h.peer) != asker).map(|h| {
                let f = self.hit(*h);
                (f.size, f.root, true)
            }));
            if !self.partials.is_empty()
                && let Some(ids) = self.partials.get(name)
            {
                let partial =
                    ids.iter().filter(|&&id| Some(id) != asker).filter_map(|&id| self.partial_hit(id, name));
                contents.extend(partial.map(|f| (f.size, f.root, false)));
            }
            contents.sort_unstable();
            for group in contents.chunk_by(|a, b| (a.0, a.1) == (b.0, b.1)) {
                let (size, root, _) = group[0];
                let peers = group.iter().filter(|c| c.2).count() as u32;
                if peers > 0 {
                    let partial = group.len() as u32 - peers;
                    page.entries.push(ListEntry { name: name.clone(), size, root, peers, partial });
                }
            }
        }
        page
    }

    /// Checks a file list's size and names: [`check_files`].
    fn check(&self, files: &[FileInfo]) -> Result<(), RegistryError> {
        check_files(&self.limits, files)
    }

    /// Checks, before a registration of `count` files is even read, that the peer on
    /// `conn` may have that many (a registration replaces what it has): the same limits
    /// as [`Registry::register`] checks, on the count alone.
    pub fn room_for(&self, conn: SocketAddr, count: usize) -> Result<(), RegistryError> {
        let before = self.peer(conn).map_or(0, |p| p.booked);
        self.check_room(conn, before, count)
    }

    /// Checks that the peer on `conn` may go from `before` to `after` files: within the
    /// limits per peer, per client address and in all.
    fn check_room(&self, conn: SocketAddr, before: usize, after: usize) -> Result<(), RegistryError> {
        let limits = &self.limits;
        if after > limits.files_per_peer {
            return Err(RegistryError::TooManyFiles { count: after, max: limits.files_per_peer });
        }
        let from_ip = self.per_ip.get(&client_key(conn.ip())).copied().unwrap_or(0) - before + after;
        if after > before && from_ip > limits.files_per_ip {
            return Err(RegistryError::TooManyFromAddress { count: from_ip, max: limits.files_per_ip });
        }
        if after > before && self.total - before + after > limits.files_total {
            return Err(RegistryError::IndexFull { max: limits.files_total });
        }
        Ok(())
    }

    /// Records that the peer on `conn` went from `before` to `after` files.
    fn count(&mut self, conn: SocketAddr, before: usize, after: usize) {
        self.total = self.total - before + after;
        let key = client_key(conn.ip());
        let n = self.per_ip.entry(key).or_insert(0);
        *n = *n - before + after;
        if *n == 0 {
            self.per_ip.remove(&key);
        }
    }

    /// Checks that the maps and counts agree; for tests.
    #[cfg(test)]
    fn assert_consistent(&self) {
        let mut entries = 0;
        let mut per_ip: HashMap<IpAddr, usize> = HashMap::new();
        for (id, peer) in &self.peers {
            let conn = &peer.conn;
            assert_eq!((self.ids[conn], peer.id), (id as PeerId, id as PeerId));
            for (idx, f) in peer.files.iter().enumerate() {
                let h = self.by_name[&f.name].as_slice().iter().find(|h| h.peer == peer.id).copied();
                assert_eq!(h, Some(Holder { peer: peer.id, idx: idx as u32 }), "{f:?}");
            }
            assert_eq!(peer.booked, peer.files.len(), "a peer's count, between changes");
            entries += peer.files.len();
            if !peer.files.is_empty() {
                *per_ip.entry(client_key(conn.ip())).or_default() += peer.files.len();
            }
        }
        let indexed: usize = self.by_name.iter().map(|(_, h)| h.as_slice().len()).sum();
        assert!(
            self.names.iter().eq(self.by_name.iter().map(|(n, _)| n).collect::<BTreeSet<_>>()),
            "names and by_name agree"
        );
        assert_eq!(indexed, entries, "no index entry without a file");
        assert_eq!(self.ids.len(), self.peers.len());
        assert_eq!(self.total, entries);
        let announced: usize = self.peers.iter().map(|(_, p)| p.partials.len()).sum();
        assert_eq!(self.partials.values().map(Vec::len).sum::<usize>(), announced);
        for (name, ids) in &self.partials {
            for &id in ids {
                assert!(self.peers[id as usize].partials.iter().any(|p| p.name == *name));
            }
        }
        assert_eq!(self.per_ip, per_ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn addr(n: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 50_000 + n))
    }

    fn name(s: &str) -> SharePath {
        SharePath::parse(s).unwrap()
    }

    fn file(s: &str, size: u64) -> FileInfo {
        FileInfo { name: name(s), size, root: [size as u8; 32] }
    }

    const UNLIMITED: PageBudget = PageBudget { names: usize::MAX, time: Duration::MAX };

    fn all(r: &Registry, asker: SocketAddr) -> Vec<(String, u64, u32)> {
        let page = r.list_page(asker, &Pattern::new(""), None, UNLIMITED);
        assert!(page.next.is_none());
        page.entries.into_iter().map(|e| (e.name.to_string(), e.size, e.peers)).collect()
    }

    #[test]
    fn index_slots_stay_small() {
        // The per-entry memory budget in the module docs depends on these.
        assert_eq!(std::mem::size_of::<Holders>(), 16);
        assert_eq!(std::mem::size_of::<FileInfo>(), 48);
        assert_eq!(std::mem::size_of::<SharePath>(), 8);
    }

    #[test]
    fn register_lookup_and_list() {
        let mut r = Registry::default();
        assert_eq!(r.register(addr(1), 7001, vec![file("b", 2), file("a", 1)]), Ok(2));
        assert_eq!(r.register(addr(2), 7002, vec![file("a", 1)]), Ok(1));
        let hits = r.lookup(&name("a"));
        let mut ports: Vec<u16> = hits.iter().map(|h| h.addr.port()).collect();
        ports.sort();
        assert_eq!(ports, [7001, 7002], "the registered port, not the connection's");
        assert!(hits.iter().all(|h| h.addr.ip() == addr(1).ip() && h.size == 1));
        assert!(r.lookup(&name("zzz")).is_empty());
        // Peer 2 sees only peer 1's files; a third party sees both, counted.
        assert_eq!(all(&r, addr(2)), [("a".into(), 1, 1), ("b".into(), 2, 1)]);
        assert_eq!(all(&r, addr(9)), [("a".into(), 1, 2), ("b".into(), 2, 1)]);
    }

    #[test]
    fn same_name_different_content_is_two_entries() {
        let mut r = Registry::default();
        r.register(addr(1), 1, vec![file("x", 1)]).unwrap();
        r.register(addr(2), 2, vec![file("x", 2)]).unwrap();
        r.register(addr(3), 3, vec![file("x", 2)]).unwrap();
        assert_eq!(all(&r, addr(9)), [("x".into(), 1, 1), ("x".into(), 2, 2)]);
    }

    #[test]
    fn partial_holders_are_found_counted_apart_and_end_when_complete() {
        let mut r = Registry::default();
        assert_eq!(r.announce_partial(addr(2), vec![file("x", 5)]), Err(RegistryError::NotRegistered));
        r.register(addr(1), 1, vec![file("x", 5)]).unwrap();
        r.register(addr(2), 2, vec![file("mine", 1)]).unwrap();
        r.register(addr(3), 3, vec![]).unwrap();
        assert_eq!(
            r.announce_partial(addr(2), vec![file("x", 5), file("mine", 1)]),
            Ok(1),
            "a name it has whole is no partial"
        );
        r.assert_consistent();
        let hits = r.lookup(&name("x"));
        assert_eq!(
            hits.iter().map(|h| (h.addr.port(), h.complete)).collect::<Vec<_>>(),
            [(1, true), (2, false)]
        );
        assert!(r.lookup(&name("mine")).iter().all(|h| h.complete));
        let page = r.list_page(
            addr(3),
            &Pattern::new("x"),
            None,
            PageBudget { names: 100, time: Duration::from_secs(1) },
        );
        assert_eq!((page.entries[0].peers, page.entries[0].partial), (1, 1));
        // A new registration (or an update) keeps the download; the Add that ends it
        // makes the peer a whole holder.
        r.update(addr(2), vec![file("other", 1)]).unwrap();
        assert_eq!(r.lookup(&name("x")).len(), 2);
        r.add(addr(2), vec![file("x", 5)]).unwrap();
        r.assert_consistent();
        assert!(r.lookup(&name("x")).iter().all(|h| h.complete));
        // Abandoned (Delete), or gone with its connection.
        r.announce_partial(addr(3), vec![file("y", 9)]).unwrap();
        r.delete(addr(3), &[name("y")]).unwrap();
        assert!(r.lookup(&name("y")).is_empty());
        r.announce_partial(addr(3), vec![file("y", 9)]).unwrap();
        r.remove(addr(3));
        r.assert_consistent();
        assert!(r.lookup(&name("y")).is_empty());
        // Bounded per peer.
        let many: Vec<FileInfo> = (0..=MAX_PARTIALS_PER_PEER).map(|i| file(&format!("p{i}"), 1)).collect();
        assert_eq!(
            r.announce_partial(addr(1), many),
            Err(RegistryError::TooManyPartials { max: MAX_PARTIALS_PER_PEER })
        );
        r.assert_consistent();
    }

    #[test]
    fn register_again_replaces() {
        let mut r = Registry::default();
        r.register(addr(1), 7001, vec![file("old", 1)]).unwrap();
        r.register(addr(1), 7009, vec![file("new", 1)]).unwrap();
        assert!(r.lookup(&name("old")).is_empty());
        assert_eq!(r.lookup(&name("new"))[0].addr.port(), 7009);
        assert_eq!(r.peer_count(), 1);
    }

    #[test]
    fn update_delete_unregister_and_remove() {
        let mut r = Registry::default();
        assert_eq!(r.update(addr(1), vec![]), Err(RegistryError::NotRegistered));
        assert_eq!(r.delete(addr(1), &[name("a")]), Err(RegistryError::NotRegistered));
        assert_eq!(r.unregister(addr(1)), Err(RegistryError::NotRegistered));

        r.register(addr(1), 7001, vec![file("a", 1), file("b", 2)]).unwrap();
        assert_eq!(r.update(addr(1), vec![file("b", 2), file("c", 3)]), Ok(2));
        assert!(r.lookup(&name("a")).is_empty());
        assert_eq!(r.lookup(&name("c"))[0].addr.port(), 7001, "update keeps the port");
        assert_eq!(r.delete(addr(1), &[name("b"), name("never-there")]), Ok(1));
        assert!(r.lookup(&name("b")).is_empty());
        assert_eq!(r.unregister(addr(1)), Ok(()));
        assert!(r.lookup(&name("c")).is_empty());
        assert!(!r.is_registered(addr(1)));
        assert!(r.by_name.is_empty(), "no index entry outlives its peer");
        r.assert_consistent();

        r.register(addr(2), 7002, vec![file("d", 1)]).unwrap();
        assert!(r.remove(addr(2)));
        assert!(!r.remove(addr(2)));
        assert!(r.by_name.is_empty());
    }

    #[test]
    fn refusals_change_nothing() {
        let mut r = Registry::new(Limits { files_per_peer: 2, name_len: 8, ..Limits::default() });
        r.register(addr(1), 7001, vec![file("keep", 1)]).unwrap();
        assert_eq!(r.register(addr(1), 0, vec![]), Err(RegistryError::PortZero));
        assert_eq!(
            r.register(addr(1), 7001, vec![file("a", 1), file("b", 1), file("c", 1)]),
            Err(RegistryError::TooManyFiles { count: 3, max: 2 })
        );
        assert_eq!(
            r.update(addr(1), vec![file("a", 1), file("a", 2)]),
            Err(RegistryError::DuplicateName(name("a")))
        );
        assert_eq!(
            r.register(addr(1), 7001, vec![file("ninebytes", 1)]),
            Err(RegistryError::NameTooLong { name: name("ninebytes"), max: 8 })
        );
        assert_eq!(r.lookup(&name("keep")).len(), 1);
        assert!(r.lookup(&name("a")).is_empty());
    }

    #[test]
    fn limits_per_address_and_in_all_hold_across_connections() {
        let limits = Limits { files_per_peer: 3, files_per_ip: 5, files_total: 8, name_len: 255 };
        let mut r = Registry::new(limits);
        let at = |ip: [u8; 4], port: u16| SocketAddr::from((ip, port));
        let files = |tag: &str, n: usize| (0..n).map(|i| file(&format!("{tag}{i}"), 1)).collect::<Vec<_>>();
        let (a1, a2, a3) = (at([10, 0, 0, 1], 1), at([10, 0, 0, 1], 2), at([10, 0, 0, 1], 3));
        assert_eq!(r.register(a1, 9, files("a", 3)), Ok(3));
        assert_eq!(r.register(a2, 9, files("b", 2)), Ok(2));
        // A third connection from the same address: over its 5, refused whole.
        assert_eq!(
            r.register(a3, 9, files("c", 1)),
            Err(RegistryError::TooManyFromAddress { count: 6, max: 5 })
        );
        assert_eq!(
            r.add(a2, files("b-more", 1)),
            Err(RegistryError::TooManyFromAddress { count: 6, max: 5 })
        );
        assert!(!r.is_registered(a3));
        // Replacing a registration counts what it replaces: 3 -> 3 is fine.
        assert_eq!(r.register(a1, 9, files("d", 3)), Ok(3));
        // Shrinking is always allowed; then there is room again.
        assert_eq!(r.update(a1, files("d", 1)), Ok(1));
        assert_eq!(r.register(a3, 9, files("c", 2)), Ok(2));
        // Another address has its own 5, but the index holds 8 in all.
        let (b1, b2) = (at([10, 0, 0, 2], 1), at([10, 0, 0, 2], 2));
        assert_eq!(r.register(b1, 9, files("e", 2)), Ok(2));
        assert_eq!(r.register(b2, 9, files("f", 2)), Err(RegistryError::IndexFull { max: 8 }));
        assert_eq!(r.file_count(), 7);
        r.assert_consistent();
        // Leaving gives the room back.
        assert!(r.remove(a1));
        assert_eq!(r.register(b2, 9, files("f", 2)), Ok(2));
        assert_eq!(r.file_count(), 8);
        r.assert_consistent();
        assert!(
            RegistryError::TooManyFromAddress { count: 6, max: 5 }
                .to_string()
                .contains("limit of 5 per address")
        );
    }

    #[test]
    fn a_page_examines_a_bounded_number_of_names_whatever_the_pattern() {
        let mut r = Registry::default();
        let long = |i: usize| file(&format!("{i:06}{}", "a".repeat(240)), 1);
        r.register(addr(1), 7001, (0..5000).map(long).collect()).unwrap();
        // A pathological pattern: long, almost matching everywhere, never matching.
        let nasty = Pattern::new(&format!("{}b", "A".repeat(200)));
        let budget = PageBudget { names: 1000, time: Duration::MAX };
        let mut after = None;
        let mut pages = 0;
        loop {
            let page = r.list_page(addr(2), &nasty, after.as_ref(), budget);
            assert!(page.entries.is_empty());
            pages += 1;
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        assert_eq!(pages, 5, "5,000 names, 1,000 examined per page");
        // A pattern longer than any name: nothing is examined at all.
        let impossible = Pattern::new(&"x".repeat(MAX_PATH_LEN + 1));
        assert!(impossible.matches_nothing());
        assert!(r.list_page(addr(2), &impossible, None, budget).next.is_none());
        // A page that runs out of time ends early, and the listing still covers it all.
        let hurried = PageBudget { names: usize::MAX, time: Duration::ZERO };
        let (mut seen, mut after, mut pages) = (0, None, 0);
        loop {
            let page = r.list_page(addr(2), &Pattern::new(""), after.as_ref(), hurried);
            seen += page.entries.len();
            pages += 1;
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        assert_eq!(seen, 5000);
        assert!(pages > 1, "a zero time budget cuts pages short");
    }

    #[test]
    fn patterns_match_case_insensitively_in_linear_time() {
        let p = Pattern::new("MP3");
        assert!(p.matches("song.mp3") && p.matches("SONG.Mp3") && !p.matches("song.mp4"));
        assert!(Pattern::new("").matches("anything"));
        assert!(Pattern::new("ünï").matches("xünïx"), "non-ASCII is matched exactly");
        for never in ["a\0b", "\u{1b}[", "\u{202e}", "a\\b", &"x".repeat(MAX_PATH_LEN + 1)] {
            assert!(Pattern::new(never).matches_nothing(), "{never:?}");
        }
        assert!(!Pattern::new("a/b c.mp3").matches_nothing());
    }

    #[test]
    fn pages_cover_the_listing_exactly_once() {
        let mut r = Registry::default();
        let files: Vec<FileInfo> = (0..100).map(|i| file(&format!("f{i:03}"), i)).collect();
        r.register(addr(1), 7001, files).unwrap();
        for max_names in [1, 3, 7, 100, 1000] {
            let mut seen = Vec::new();
            let mut after = None;
            loop {
                let budget = PageBudget { names: max_names, time: Duration::MAX };
                let page = r.list_page(addr(2), &Pattern::new(""), after.as_ref(), budget);
                assert!(page.entries.len() <= max_names);
                seen.extend(page.entries.into_iter().map(|e| e.name.to_string()));
                match page.next {
                    Some(n) => after = Some(n),
                    None => break,
                }
            }
            let want: Vec<String> = (0..100).map(|i| format!("f{i:03}")).collect();
            assert_eq!(seen, want, "max_names = {max_names}");
        }
    }

    #[test]
    fn pattern_ignores_case() {
        let mut r = Registry::default();
        r.register(addr(1), 7001, vec![file("Song.MP3", 1), file("notes.txt", 2)]).unwrap();
        let page = r.list_page(addr(2), &Pattern::new("mp3"), None, UNLIMITED);
        assert_eq!(page.entries.len(), 1);
        assert_eq!(page.entries[0].name.as_str(), "Song.MP3");
    }

    /// Random register/update/delete/remove sequences against a plain model: after
    /// every step, every name looks up to exactly what the model says.
    #[test]
    fn random_operations_match_a_model() {
        use rand::{RngExt, SeedableRng};
        type Model = HashMap<SocketAddr, (u16, BTreeMap<String, u64>)>;
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut r = Registry::default();
        let mut model: Model = HashMap::new();
        let names: Vec<String> = (0..12).map(|i| format!("n{i}")).collect();
        for step in 0..3000 {
            let conn = addr(rng.random_range(0..5));
            let pick = |rng: &mut rand::rngs::StdRng| -> BTreeMap<String, u64> {
                let mut files = BTreeMap::new();
                for n in &names {
                    if rng.random_bool(0.4) {
                        files.insert(n.clone(), rng.random_range(0..3));
                    }
                }
                files
            };
            match rng.random_range(0..5) {
                4 => {
                    let files = pick(&mut rng);
                    let list = files.iter().map(|(n, s)| file(n, *s)).collect();
                    let got = r.add(conn, list);
                    match model.get_mut(&conn) {
                        Some(m) => {
                            m.1.extend(files);
                            assert_eq!(got, Ok(m.1.len()));
                        }
                        None => assert_eq!(got, Err(RegistryError::NotRegistered)),
                    }
                }
                0 => {
                    let files = pick(&mut rng);
                    let port = rng.random_range(1..100);
                    let list = files.iter().map(|(n, s)| file(n, *s)).collect();
                    r.register(conn, port, list).unwrap();
                    model.insert(conn, (port, files));
                }
                1 => {
                    let files = pick(&mut rng);
                    let list = files.iter().map(|(n, s)| file(n, *s)).collect();
                    let got = r.update(conn, list);
                    match model.get_mut(&conn) {
                        Some(m) => {
                            assert!(got.is_ok());
                            m.1 = files;
                        }
                        None => assert_eq!(got, Err(RegistryError::NotRegistered)),
                    }
                }
                2 => {
                    let gone: Vec<String> = names.iter().filter(|_| rng.random_bool(0.3)).cloned().collect();
                    let got = r.delete(conn, &gone.iter().map(|n| name(n)).collect::<Vec<_>>());
                    match model.get_mut(&conn) {
                        Some(m) => {
                            for n in &gone {
                                m.1.remove(n);
                            }
                            assert_eq!(got, Ok(m.1.len()));
                        }
                        None => assert_eq!(got, Err(RegistryError::NotRegistered)),
                    }
                }
                _ => assert_eq!(r.remove(conn), model.remove(&conn).is_some()),
            }
            r.assert_consistent();
            for n in &names {
                let mut got: Vec<(u16, u64)> =
                    r.lookup(&name(n)).iter().map(|h| (h.addr.port(), h.size)).collect();
                let mut want: Vec<(u16, u64)> =
                    model.values().filter_map(|(port, files)| Some((*port, *files.get(n)?))).collect();
                got.sort();
                want.sort();
                assert_eq!(got, want, "step {step}, name {n}");
            }
        }
    }

    /// A change does at most [`STEP_FILES`] files a step, whatever its size, and costs
    /// nothing for the files it keeps as they are; its files count against the limits
    /// from its first step, so that no other registration can take their room.
    #[test]
    fn a_change_is_carried_out_in_bounded_steps() {
        let mut r = Registry::default();
        let conn = addr(1);
        let names: Vec<String> = (0..2 * STEP_FILES + 5).map(|i| format!("f{i:05}")).collect();
        let list = |size: u64| names.iter().map(|n| file(n, size)).collect::<Vec<_>>();
        let found = |r: &Registry| names.iter().filter(|n| !r.lookup(&name(n)).is_empty()).count();

        let mut change = Change::replace(conn, Some(9), list(1), None);
        let id = r.begin(&mut change).unwrap();
        assert_eq!((r.file_count(), found(&r)), (names.len(), 0));
        assert!(!r.step(id, &mut change));
        assert_eq!(found(&r), STEP_FILES);
        assert!(!r.step(id, &mut change));
        assert!(r.step(id, &mut change));
        assert_eq!(found(&r), names.len());
        r.assert_consistent();

        // The same list again: nothing to do. One file changed: one file's work.
        let old = r.files_of(conn, 0, usize::MAX).unwrap();
        let same = Change::replace(conn, None, list(1), Some(&old));
        assert_eq!((same.gone.len(), same.fresh.len()), (0, 0));
        let mut one = list(1);
        one[7].size = 2;
        let one = Change::replace(conn, None, one, Some(&old));
        assert_eq!((one.gone.len(), one.fresh.len()), (0, 1));
        assert_eq!(r.apply(one), Ok(names.len()));
        assert_eq!(r.lookup(&name(&names[7]))[0].size, 2);

        // Dropping all but five, a step at a time, from the names dropped first.
        let old = r.files_of(conn, 0, usize::MAX).unwrap();
        let mut change = Change::replace(conn, None, list(1)[..5].to_vec(), Some(&old));
        let id = r.begin(&mut change).unwrap();
        assert_eq!(r.file_count(), 5);
        assert!(!r.step(id, &mut change));
        assert_eq!(found(&r), names.len() - STEP_FILES);
        while !r.step(id, &mut change) {}
        assert_eq!(found(&r), 5);
        r.assert_consistent();

        // A removal in steps frees its room at the first.
        r.register(conn, 9, list(3)).unwrap();
        assert_eq!(r.remove_step(conn, STEP_FILES), Some(false));
        assert_eq!((r.file_count(), found(&r)), (0, names.len() - STEP_FILES));
        assert_eq!(r.remove_step(conn, usize::MAX), Some(true));
        assert_eq!((r.peer_count(), found(&r)), (0, 0));
        assert_eq!(r.remove_step(conn, 1), None);
        r.assert_consistent();
    }

    /// Registrations, updates, adds and deletes of lists several steps long, through
    /// the lock as the server makes them, agree with a model.
    #[test]
    fn changes_of_many_steps_match_a_model() {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let index = crate::index::Index::new(Registry::default());
        let pool: Vec<String> = (0..3 * STEP_FILES).map(|i| format!("p{i:05}")).collect();
        let mut model: HashMap<SocketAddr, BTreeMap<String, u64>> = HashMap::new();
        for round in 0..40 {
            let conn = addr(rng.random_range(0..3));
            let share = rng.random_range(0.0..0.9);
            let mut pick: BTreeMap<String, u64> = BTreeMap::new();
            for n in &pool {
                if rng.random_bool(share) {
                    pick.insert(n.clone(), rng.random_range(0..2));
                }
            }
            let list = || pick.iter().map(|(n, s)| file(n, *s)).collect::<Vec<_>>();
            let mine = model.get_mut(&conn);
            let registered = mine.is_some();
            let got = match (rng.random_range(0..5), mine) {
                (0, _) => {
                    model.insert(conn, pick.clone());
                    index.register(conn, 7, list())
                }
                (1, Some(m)) => {
                    *m = pick.clone();
                    index.update(conn, list())
                }
                (2, Some(m)) => {
                    m.extend(pick.clone());
                    index.add(conn, list())
                }
                (3, Some(m)) => {
                    m.retain(|n, _| !pick.contains_key(n));
                    index.delete(conn, &pick.keys().map(|n| name(n)).collect::<Vec<_>>())
                }
                (4, Some(_)) => {
                    model.remove(&conn);
                    index.remove(conn).then_some(0).ok_or(RegistryError::NotRegistered)
                }
                (_, None) => {
                    assert!(!registered);
                    continue;
                }
                _ => unreachable!(),
            };
            assert_eq!(got, Ok(model.get(&conn).map_or(0, BTreeMap::len)), "round {round}");
            index.with(|r| {
                r.assert_consistent();
                for n in pool.iter().step_by(97) {
                    let mut got: Vec<(u16, u64)> =
                        r.lookup(&name(n)).iter().map(|h| (h.addr.port(), h.size)).collect();
                    let mut want: Vec<(u16, u64)> = model
                        .iter()
                        .filter_map(|(conn, files)| Some((conn.port(), *files.get(n)?)))
                        .map(|(_, size)| (7, size))
                        .collect();
                    got.sort();
                    want.sort();
                    assert_eq!(got, want, "round {round}, name {n}");
                }
            });
        }
    }

    /// A change through the lock lets other threads in between its steps: a thread
    /// that reads, under the lock, names from both ends of two lists that a peer swaps
    /// back and forth sees a registration half made, which a change made under the
    /// lock at once (as before) never shows. Bounded by the swaps made, not by time.
    #[test]
    fn other_threads_get_the_lock_between_a_changes_steps() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let index = crate::index::Index::new(Registry::default());
        let conn = addr(1);
        let count = 4 * STEP_FILES;
        let list = |tag: &str| (0..count).map(|i| file(&format!("{tag}{i:05}"), 1)).collect::<Vec<_>>();
        index.register(conn, 9, list("a")).unwrap();
        let probes: Vec<(SharePath, SharePath)> = (0..4)
            .map(|k| k * STEP_FILES + STEP_FILES / 2)
            .map(|i| (name(&format!("a{i:05}")), name(&format!("b{i:05}"))))
            .collect();
        let done = std::sync::Arc::new(AtomicBool::new(false));
        let watcher = {
            let (index, done) = (index.clone(), std::sync::Arc::clone(&done));
            std::thread::spawn(move || {
                let mut looks = 0;
                while !done.load(Ordering::SeqCst) {
                    looks += 1;
                    let (a, b) = index.with(|r| {
                        let found = |n: &SharePath| usize::from(!r.lookup(n).is_empty());
                        probes.iter().fold((0, 0), |(a, b), (na, nb)| (a + found(na), b + found(nb)))
                    });
                    if (a, b) != (4, 0) && (a, b) != (0, 4) {
                        return Some((a, b, looks));
                    }
                }
                None
            })
        };
        for swap in 0..20 {
            let tag = if swap % 2 == 0 { "b" } else { "a" };
            assert_eq!(index.update(conn, list(tag)), Ok(count));
            if watcher.is_finished() {
                break;
            }
        }
        done.store(true, Ordering::SeqCst);
        let seen = watcher.join().unwrap();
        assert!(seen.is_some(), "no registration was ever seen half made in 20 swaps");
    }

    /// Threads changing and reading one shared registry through its lock at once: no
    /// deadlock, every thread's own files end up exactly as it left them, and the
    /// maps agree.
    #[test]
    fn threads_at_once_leave_a_consistent_registry() {
        use rand::{RngExt, SeedableRng};
        let index = crate::index::Index::new(Registry::default());
        let handles: Vec<_> = (0..8u16)
            .map(|t| {
                let index = index.clone();
                std::thread::spawn(move || {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(u64::from(t));
                    let conn = addr(t);
                    let names: Vec<String> = (0..6)
                        .map(|i| format!("t{t}-{i}"))
                        .chain((0..6).map(|i| format!("shared-{i}")))
                        .collect();
                    let mut mine: Option<BTreeMap<String, u64>> = None;
                    for _ in 0..2000 {
                        let pick: BTreeMap<String, u64> = names
                            .iter()
                            .filter(|_| rng.random_bool(0.5))
                            .map(|n| (n.clone(), u64::from(t)))
                            .collect();
                        let list: Vec<FileInfo> = pick.iter().map(|(n, s)| file(n, *s)).collect();
                        match rng.random_range(0..5) {
                            0 => {
                                index.register(conn, 1000 + t, list).unwrap();
                                mine = Some(pick);
                            }
                            1 => {
                                if index.update(conn, list).is_ok() {
                                    mine = Some(pick);
                                }
                            }
                            2 => {
                                let gone: Vec<SharePath> = pick.keys().map(|n| name(n)).collect();
                                if index.delete(conn, &gone).is_ok() {
                                    let m = mine.as_mut().unwrap();
                                    pick.keys().for_each(|n| {
                                        m.remove(n);
                                    });
                                }
                            }
                            3 => {
                                index.remove(conn);
                                mine = None;
                            }
                            _ => {
                                let n = &names[rng.random_range(0..names.len())];
                                let _ = index.lookup(&name(n), || unreachable!("answered at once in memory"));
                            }
                        }
                    }
                    for n in &names {
                        let hits = index
                            .lookup(&name(n), || unreachable!("answered at once in memory"))
                            .unwrap()
                            .unwrap();
                        let at_me = hits.iter().filter(|h| h.addr.port() == 1000 + t).count();
                        let want = usize::from(mine.as_ref().is_some_and(|m| m.contains_key(n)));
                        assert_eq!(at_me, want, "thread {t}, name {n}");
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        index.with(|r| r.assert_consistent());
    }
}
