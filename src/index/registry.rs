//! The registry: which peer shares which files. A plain data structure, no locks, no
//! I/O; the server wraps it in a mutex (see [`super::Index`]).
//!
//! Two maps are kept in step:
//! - `peers`: connection address -> (file-server port, files sorted by name), the shape
//!   the design asked for;
//! - `by_name`: name -> the connections that share it, an inverted index so that a
//!   lookup touches only the peers that have the name. It is a `BTreeMap` so a listing
//!   comes out in name order and can be read a page at a time from any name on.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::ops::Bound;

use crate::name::ShareName;
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

/// The registry. See the module docs.
#[derive(Debug)]
pub struct Registry {
    peers: HashMap<SocketAddr, (u16, Vec<FileInfo>)>,
    by_name: BTreeMap<ShareName, Vec<SocketAddr>>,
    max_files: usize,
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new(MAX_FILES_PER_PEER)
    }
}

impl Registry {
    /// An empty registry that accepts at most `max_files` files per peer.
    pub fn new(max_files: usize) -> Registry {
        Registry { peers: HashMap::new(), by_name: BTreeMap::new(), max_files }
    }

    /// Registers the peer on connection `conn`, or replaces its registration. Returns
    /// how many files it now shares.
    pub fn register(
        &mut self,
        conn: SocketAddr,
        port: u16,
        files: Vec<FileInfo>,
    ) -> Result<usize, RegistryError> {
        if port == 0 {
            return Err(RegistryError::PortZero);
        }
        let files = self.checked(files)?;
        self.remove(conn);
        for f in &files {
            self.by_name.entry(f.name.clone()).or_default().push(conn);
        }
        let count = files.len();
        self.peers.insert(conn, (port, files));
        Ok(count)
    }

    /// Replaces a registered peer's file list. Returns how many files it now shares.
    pub fn update(&mut self, conn: SocketAddr, files: Vec<FileInfo>) -> Result<usize, RegistryError> {
        let port = self.peers.get(&conn).ok_or(RegistryError::NotRegistered)?.0;
        self.register(conn, port, files)
    }

    /// Removes `names` from a registered peer's list; names it does not share are
    /// ignored, so a delete can be repeated. Returns how many files it now shares.
    pub fn delete(&mut self, conn: SocketAddr, names: &[ShareName]) -> Result<usize, RegistryError> {
        let (_, files) = self.peers.get_mut(&conn).ok_or(RegistryError::NotRegistered)?;
        for name in names {
            if let Ok(i) = files.binary_search_by(|f| f.name.cmp(name)) {
                files.remove(i);
                unindex(&mut self.by_name, name, conn);
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
        for f in &files {
            unindex(&mut self.by_name, &f.name, conn);
        }
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
        let Some(conns) = self.by_name.get(name) else { return Vec::new() };
        conns
            .iter()
            .filter_map(|conn| {
                let f = self.file(*conn, name)?;
                let (port, _) = self.peers[conn];
                // `to_canonical`: an IPv4 peer seen through a dual-stack socket is reported
                // as plain IPv4, which every client can connect to.
                let addr = SocketAddr::new(conn.ip().to_canonical(), port);
                Some(PeerHit { addr, size: f.size, sha256: f.sha256 })
            })
            .collect()
    }

    /// One page of the listing seen by the peer on `asker`: files shared by every other
    /// registered peer whose name contains `pattern` (ignoring ASCII case), in name
    /// order, starting after `after`. A distinct (name, size, hash) is one entry with
    /// the number of peers that share it.
    ///
    /// At most `max_names` names are examined and at most about `max_names` entries
    /// returned, so a caller holding a lock holds it for
    /// a bounded time whatever the registry's size; a page can be empty and still have
    /// a `next`.
    pub fn list_page(
        &self,
        asker: SocketAddr,
        pattern: &str,
        after: Option<&ShareName>,
        max_names: usize,
    ) -> ListPage {
        let pattern = pattern.to_ascii_lowercase();
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut page = ListPage::default();
        let mut last: Option<&ShareName> = None;
        for (seen, (name, conns)) in self.by_name.range((start, Bound::Unbounded)).enumerate() {
            if seen == max_names.max(1) || page.entries.len() >= max_names.max(1) {
                page.next = last.cloned();
                return page;
            }
            last = Some(name);
            if !pattern.is_empty() && !name.as_str().to_ascii_lowercase().contains(&pattern) {
                continue;
            }
            let first = page.entries.len();
            for conn in conns.iter().filter(|c| **c != asker) {
                let Some(f) = self.file(*conn, name) else { continue };
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

    fn file(&self, conn: SocketAddr, name: &ShareName) -> Option<&FileInfo> {
        let (_, files) = self.peers.get(&conn)?;
        files.binary_search_by(|f| f.name.cmp(name)).ok().map(|i| &files[i])
    }

    /// Sorts a file list by name and checks its size and that names are unique.
    fn checked(&self, mut files: Vec<FileInfo>) -> Result<Vec<FileInfo>, RegistryError> {
        if files.len() > self.max_files {
            return Err(RegistryError::TooManyFiles { count: files.len(), max: self.max_files });
        }
        files.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        if let Some(w) = files.windows(2).find(|w| w[0].name == w[1].name) {
            return Err(RegistryError::DuplicateName(w[0].name.clone()));
        }
        Ok(files)
    }
}

fn unindex(by_name: &mut BTreeMap<ShareName, Vec<SocketAddr>>, name: &ShareName, conn: SocketAddr) {
    if let Some(conns) = by_name.get_mut(name) {
        conns.retain(|c| *c != conn);
        if conns.is_empty() {
            by_name.remove(name);
        }
    }
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

        r.register(addr(2), 7002, vec![file("d", 1)]).unwrap();
        assert!(r.remove(addr(2)));
        assert!(!r.remove(addr(2)));
        assert!(r.by_name.is_empty());
    }

    #[test]
    fn refusals_change_nothing() {
        let mut r = Registry::new(2);
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
}
