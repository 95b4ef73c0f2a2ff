//! The registry: which peer shares which files. A plain data structure, no locks, no
//! I/O; the server wraps it in a mutex (see [`super::Index`]).
//!
//! - `peers`: connection address -> (file-server port, files), the shape the design
//!   asked for. Each peer's files stay in the order it sent them.
//! - `by_name`: name -> the peers that share it, an inverted index so that a lookup
//!   touches only those peers. Each [`Holder`] names the peer by a small id and gives
//!   the position of the file in that peer's list, so a lookup reads a peer's size and
//!   hash without searching its list. It is a `BTreeMap` so a listing comes out in name
//!   order and can be read a page at a time from any name on.
//!
//! Names are [`ShareName`]s, whose text is reference-counted: a name is stored once,
//! shared by the peer's list and the index (and by every peer that shares it).
//!
//! Memory per entry (a file at a peer) is about 160 bytes: 56 for the file in its
//! peer's list, 48 for the name's allocation and 50 for the B-tree slot. Measured
//! figures are in `docs/PERFORMANCE.md`.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::ops::Bound;

use crate::name::{MAX_NAME_LEN, ShareName};
use crate::wire::{FileInfo, ListEntry, MAX_FILES_PER_PEER, PeerHit};

/// Why the registry refused a change. Nothing is changed when it does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistryError {
    /// The connection has no registration to change.
    NotRegistered,
    /// Port 0 cannot be connected to.
    PortZero,
    /// The same name appears twice in one list.
    DuplicateName(ShareName),
    /// A name longer than this server accepts.
    NameTooLong {
        /// The name.
        name: ShareName,
        /// The limit, in bytes.
        max: usize,
    },
    /// More files than one peer may register.
    TooManyFiles {
        /// Files in the request.
        count: usize,
        /// The limit.
        max: usize,
    },
}

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegistryError::NotRegistered => f.write_str("not registered (send register first)"),
            RegistryError::PortZero => f.write_str("port 0 is not a valid file-server port"),
            RegistryError::DuplicateName(n) => write!(f, "file name {:?} is listed twice", n.as_str()),
            RegistryError::NameTooLong { name, max } => {
                write!(f, "file name {:?} is longer than the limit of {max} bytes", name.as_str())
            }
            RegistryError::TooManyFiles { count, max } => {
                write!(f, "{count} files is more than the limit of {max} per peer")
            }
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
    pub next: Option<ShareName>,
}

/// A small handle on a registered peer, so the index stores 4 bytes per holder rather
/// than a 32-byte `SocketAddr`.
type PeerId = u32;

/// One peer that shares a name: which peer, and where the file is in its list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Holder {
    peer: PeerId,
    idx: u32,
}

/// The holders of one name. Most names are shared by one peer; they need no vector.
///
/// `Many` boxes its vector so that `Holders` is 16 bytes rather than 32: it sits in
/// every B-tree slot, millions of them, and the extra allocation is paid only by the
/// few names that several peers share.
#[derive(Debug)]
#[allow(clippy::box_collection)]
enum Holders {
    One(Holder),
    Many(Box<Vec<Holder>>),
}

impl Holders {
    fn as_slice(&self) -> &[Holder] {
        match self {
            Holders::One(h) => std::slice::from_ref(h),
            Holders::Many(v) => v,
        }
    }

    fn find(&self, peer: PeerId) -> Option<&Holder> {
        self.as_slice().iter().find(|h| h.peer == peer)
    }

    fn find_mut(&mut self, peer: PeerId) -> Option<&mut Holder> {
        match self {
            Holders::One(h) => (h.peer == peer).then_some(h),
            Holders::Many(v) => v.iter_mut().find(|h| h.peer == peer),
        }
    }

    fn push(&mut self, h: Holder) {
        match self {
            Holders::One(first) => *self = Holders::Many(Box::new(vec![*first, h])),
            Holders::Many(v) => v.push(h),
        }
    }

    /// Removes `peer`; returns true if nobody is left.
    fn remove(&mut self, peer: PeerId) -> bool {
        match self {
            Holders::One(h) => h.peer == peer,
            Holders::Many(v) => {
                v.retain(|h| h.peer != peer);
                if let [only] = v[..] {
                    *self = Holders::One(only);
                }
                false
            }
        }
    }
}

/// The registry. See the module docs.
#[derive(Debug)]
pub struct Registry {
    /// Connection -> (file-server port, files).
    peers: HashMap<SocketAddr, (u16, Vec<FileInfo>)>,
    /// Connection -> its id in `by_name`; ids are reused after a peer leaves.
    ids: HashMap<SocketAddr, PeerId>,
    /// Id -> connection (`None` for a free id).
    conns: Vec<Option<SocketAddr>>,
    free_ids: Vec<PeerId>,
    by_name: BTreeMap<ShareName, Holders>,
    max_files: usize,
    max_name_len: usize,
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new(MAX_FILES_PER_PEER, MAX_NAME_LEN)
    }
}

impl Registry {
    /// An empty registry that accepts at most `max_files` files per peer, with names
    /// of at most `max_name_len` bytes.
    pub fn new(max_files: usize, max_name_len: usize) -> Registry {
        Registry {
            peers: HashMap::new(),
            ids: HashMap::new(),
            conns: Vec::new(),
            free_ids: Vec::new(),
            by_name: BTreeMap::new(),
            max_files,
            max_name_len,
        }
    }

    /// Registers the peer on connection `conn`, or replaces its registration. Returns
    /// how many files it now shares.
    pub fn register(
        &mut self,
        conn: SocketAddr,
        port: u16,
        mut files: Vec<FileInfo>,
    ) -> Result<usize, RegistryError> {
        if port == 0 {
            return Err(RegistryError::PortZero);
        }
        self.check(&files)?;
        self.remove(conn);
        let id = self.new_id(conn);
        for (idx, f) in files.iter_mut().enumerate() {
            let holder = Holder { peer: id, idx: idx as u32 };
            match self.by_name.entry(f.name.clone()) {
                Entry::Vacant(e) => {
                    e.insert(Holders::One(holder));
                }
                Entry::Occupied(mut e) => {
                    // Keep one copy of the name's text for everyone who shares it.
                    f.name = e.key().clone();
                    e.get_mut().push(holder);
                }
            }
        }
        let count = files.len();
        files.shrink_to_fit();
        self.peers.insert(conn, (port, files));
        Ok(count)
    }

    /// Replaces a registered peer's file list. Returns how many files it now shares.
    pub fn update(&mut self, conn: SocketAddr, files: Vec<FileInfo>) -> Result<usize, RegistryError> {
        let port = self.peers.get(&conn).ok_or(RegistryError::NotRegistered)?.0;
        self.register(conn, port, files)
    }

    /// Adds `new` files to a registered peer's list; a name it already shares gets the
    /// new size and hash. Returns how many files it now shares.
    pub fn add(&mut self, conn: SocketAddr, new: Vec<FileInfo>) -> Result<usize, RegistryError> {
        let id = *self.ids.get(&conn).ok_or(RegistryError::NotRegistered)?;
        self.check(&new)?;
        let (_, files) = self.peers.get_mut(&conn).expect("ids and peers agree");
        let fresh =
            new.iter().filter(|f| self.by_name.get(&f.name).is_none_or(|h| h.find(id).is_none())).count();
        if files.len() + fresh > self.max_files {
            return Err(RegistryError::TooManyFiles { count: files.len() + fresh, max: self.max_files });
        }
        for mut f in new {
            match self.by_name.entry(f.name.clone()) {
                Entry::Vacant(e) => {
                    e.insert(Holders::One(Holder { peer: id, idx: files.len() as u32 }));
                    files.push(f);
                }
                Entry::Occupied(mut e) => {
                    f.name = e.key().clone();
                    match e.get_mut().find_mut(id) {
                        Some(h) => files[h.idx as usize] = f,
                        None => {
                            e.get_mut().push(Holder { peer: id, idx: files.len() as u32 });
                            files.push(f);
                        }
                    }
                }
            }
        }
        Ok(files.len())
    }

    /// Removes `names` from a registered peer's list; names it does not share are
    /// ignored, so a delete can be repeated. Returns how many files it now shares.
    pub fn delete(&mut self, conn: SocketAddr, names: &[ShareName]) -> Result<usize, RegistryError> {
        let id = *self.ids.get(&conn).ok_or(RegistryError::NotRegistered)?;
        let (_, files) = self.peers.get_mut(&conn).expect("ids and peers agree");
        for name in names {
            let Some(holders) = self.by_name.get_mut(name) else { continue };
            let Some(&mut Holder { idx, .. }) = holders.find_mut(id) else { continue };
            if holders.remove(id) {
                self.by_name.remove(name);
            }
            // The last file moves into the hole; its holder must follow it.
            files.swap_remove(idx as usize);
            if let Some(moved) = files.get(idx as usize) {
                let holder = self.by_name.get_mut(&moved.name).and_then(|h| h.find_mut(id));
                holder.expect("every file is indexed").idx = idx;
            }
        }
        Ok(files.len())
    }

    /// Removes a registration, or says there was none.
    pub fn unregister(&mut self, conn: SocketAddr) -> Result<(), RegistryError> {
        if self.remove(conn) { Ok(()) } else { Err(RegistryError::NotRegistered) }
    }

    /// Removes a registration if there is one (a disconnect). Returns whether there was.
    pub fn remove(&mut self, conn: SocketAddr) -> bool {
        let Some((_, files)) = self.peers.remove(&conn) else { return false };
        let id = self.ids.remove(&conn).expect("ids and peers agree");
        for f in &files {
            if let Some(holders) = self.by_name.get_mut(&f.name)
                && holders.remove(id)
            {
                self.by_name.remove(&f.name);
            }
        }
        self.conns[id as usize] = None;
        self.free_ids.push(id);
        true
    }

    /// Is the peer on `conn` registered?
    pub fn is_registered(&self, conn: SocketAddr) -> bool {
        self.peers.contains_key(&conn)
    }

    /// Number of registered peers.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// Every registered peer that shares `name`: the IP of its connection, its
    /// file-server port, and its copy's size and hash.
    pub fn lookup(&self, name: &ShareName) -> Vec<PeerHit> {
        let Some(holders) = self.by_name.get(name) else { return Vec::new() };
        holders.as_slice().iter().map(|h| self.hit(*h)).collect()
    }

    /// The peer address and file a holder points at.
    fn hit(&self, h: Holder) -> PeerHit {
        let conn = self.conns[h.peer as usize].expect("holders point at live peers");
        let (port, files) = &self.peers[&conn];
        let f = &files[h.idx as usize];
        // `to_canonical`: an IPv4 peer seen through a dual-stack socket is reported as
        // plain IPv4, which every client can connect to.
        PeerHit { addr: SocketAddr::new(conn.ip().to_canonical(), *port), size: f.size, sha256: f.sha256 }
    }

    /// One page of the listing seen by the peer on `asker`: files shared by every other
    /// registered peer whose name contains `pattern` (ignoring ASCII case), in name
    /// order, starting after `after`. A distinct (name, size, hash) is one entry with
    /// the number of peers that share it.
    ///
    /// At most `max_names` names are examined and at most about `max_names` entries
    /// returned, so a caller holding a lock holds it for a bounded time whatever the
    /// registry's size; a page can be empty and still have a `next`.
    pub fn list_page(
        &self,
        asker: SocketAddr,
        pattern: &str,
        after: Option<&ShareName>,
        max_names: usize,
    ) -> ListPage {
        let asker = self.ids.get(&asker).copied();
        let pattern = pattern.to_ascii_lowercase();
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut page = ListPage::default();
        let mut last: Option<&ShareName> = None;
        for (seen, (name, holders)) in self.by_name.range((start, Bound::Unbounded)).enumerate() {
            if seen == max_names.max(1) || page.entries.len() >= max_names.max(1) {
                page.next = last.cloned();
                return page;
            }
            last = Some(name);
            if !pattern.is_empty() && !contains_ignoring_ascii_case(name.as_str(), &pattern) {
                continue;
            }
            let first = page.entries.len();
            for h in holders.as_slice().iter().filter(|h| Some(h.peer) != asker) {
                let f = self.hit(*h);
                match page.entries[first..].iter_mut().find(|e| e.size == f.size && e.sha256 == f.sha256) {
                    Some(e) => e.peers += 1,
                    None => page.entries.push(ListEntry {
                        name: name.clone(),
                        size: f.size,
                        sha256: f.sha256,
                        peers: 1,
                    }),
                }
            }
            page.entries[first..].sort_by_key(|e| (e.size, e.sha256));
        }
        page
    }

    fn new_id(&mut self, conn: SocketAddr) -> PeerId {
        let id = match self.free_ids.pop() {
            Some(id) => {
                self.conns[id as usize] = Some(conn);
                id
            }
            None => {
                self.conns.push(Some(conn));
                PeerId::try_from(self.conns.len() - 1).expect("fewer than 4 billion peers")
            }
        };
        self.ids.insert(conn, id);
        id
    }

    /// Checks a file list's size and that its names are unique.
    fn check(&self, files: &[FileInfo]) -> Result<(), RegistryError> {
        if files.len() > self.max_files {
            return Err(RegistryError::TooManyFiles { count: files.len(), max: self.max_files });
        }
        if let Some(f) = files.iter().find(|f| f.name.as_str().len() > self.max_name_len) {
            return Err(RegistryError::NameTooLong { name: f.name.clone(), max: self.max_name_len });
        }
        let mut names: Vec<&ShareName> = files.iter().map(|f| &f.name).collect();
        names.sort_unstable();
        match names.windows(2).find(|w| w[0] == w[1]) {
            Some(w) => Err(RegistryError::DuplicateName(w[0].clone())),
            None => Ok(()),
        }
    }

    /// Checks that the two maps agree; for tests.
    #[cfg(test)]
    fn assert_consistent(&self) {
        let mut entries = 0;
        for (conn, (_, files)) in &self.peers {
            let id = self.ids[conn];
            assert_eq!(self.conns[id as usize], Some(*conn));
            for (idx, f) in files.iter().enumerate() {
                let h = self.by_name[&f.name].as_slice().iter().find(|h| h.peer == id).copied();
                assert_eq!(h, Some(Holder { peer: id, idx: idx as u32 }), "{f:?}");
            }
            entries += files.len();
        }
        let indexed: usize = self.by_name.values().map(|h| h.as_slice().len()).sum();
        assert_eq!(indexed, entries, "no index entry without a file");
        assert_eq!(self.ids.len(), self.peers.len());
    }
}

/// Does `text` contain `lower` (already lowercase ASCII), ignoring ASCII case? Without
/// allocating: this runs for every name of a filtered listing.
fn contains_ignoring_ascii_case(text: &str, lower: &str) -> bool {
    let (text, lower) = (text.as_bytes(), lower.as_bytes());
    lower.is_empty() || text.windows(lower.len()).any(|w| w.eq_ignore_ascii_case(lower))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(n: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 50_000 + n))
    }

    fn name(s: &str) -> ShareName {
        ShareName::parse(s).unwrap()
    }

    fn file(s: &str, size: u64) -> FileInfo {
        FileInfo { name: name(s), size, sha256: [size as u8; 32] }
    }

    fn all(r: &Registry, asker: SocketAddr) -> Vec<(String, u64, u32)> {
        let page = r.list_page(asker, "", None, usize::MAX);
        assert!(page.next.is_none());
        page.entries.into_iter().map(|e| (e.name.to_string(), e.size, e.peers)).collect()
    }

    #[test]
    fn index_slots_stay_small() {
        // The per-entry memory budget in the module docs depends on these.
        assert_eq!(std::mem::size_of::<Holders>(), 16);
        assert_eq!(std::mem::size_of::<FileInfo>(), 56);
        assert_eq!(std::mem::size_of::<ShareName>(), 16);
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
        let mut r = Registry::new(2, 8);
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
    fn pages_cover_the_listing_exactly_once() {
        let mut r = Registry::default();
        let files: Vec<FileInfo> = (0..100).map(|i| file(&format!("f{i:03}"), i)).collect();
        r.register(addr(1), 7001, files).unwrap();
        for max_names in [1, 3, 7, 100, 1000] {
            let mut seen = Vec::new();
            let mut after = None;
            loop {
                let page = r.list_page(addr(2), "", after.as_ref(), max_names);
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
        let page = r.list_page(addr(2), "mp3", None, 10);
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
                                index.lock().register(conn, 1000 + t, list).unwrap();
                                mine = Some(pick);
                            }
                            1 => {
                                if index.lock().update(conn, list).is_ok() {
                                    mine = Some(pick);
                                }
                            }
                            2 => {
                                let gone: Vec<ShareName> = pick.keys().map(|n| name(n)).collect();
                                if index.lock().delete(conn, &gone).is_ok() {
                                    let m = mine.as_mut().unwrap();
                                    pick.keys().for_each(|n| {
                                        m.remove(n);
                                    });
                                }
                            }
                            3 => {
                                index.lock().remove(conn);
                                mine = None;
                            }
                            _ => {
                                let n = &names[rng.random_range(0..names.len())];
                                let _ = index.lock().lookup(&name(n));
                            }
                        }
                    }
                    for n in &names {
                        let hits = index.lock().lookup(&name(n));
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
        index.lock().assert_consistent();
    }
}
