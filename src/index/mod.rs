//! The indexing server: the [`registry`] (pure data), the [`login`] state machine
//! (pure logic), the receive [`budget`], the [`server`] loop around them, and the
//! [`store`] that keeps the registry in PostgreSQL for several servers instead (with
//! [`plan`], how its listings find their names, and `batch`, how lookups asked at
//! once go to the database together).

mod batch;
pub mod budget;
mod holdings;
pub mod login;
pub mod plan;
pub mod registry;
pub mod server;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::{RwLock, RwLockWriteGuard};

pub use registry::{
    Change, Limits, ListPage, PageBudget, Pattern, Registry, RegistryError, STEP_FILES, View,
};
pub use server::{Config, serve};
pub use store::Store;

use crate::content::Hash;
use crate::name::SharePath;
use crate::wire::{FileInfo, PeerHit};
pub use batch::Deliver;

/// A lookup's answer: the peers sharing the name, whole first.
pub type Looked = Result<Vec<PeerHit>, RegistryError>;

/// A cheap-to-clone handle on the shared registry; every connection thread has one.
///
/// The registry is in this process's memory (the default), or in PostgreSQL, shared
/// with other index servers ([`Store`], `--store`). Either way a request has the same
/// meaning and the same reply; only the store can also fail to be reached
/// ([`RegistryError::StoreUnavailable`]).
///
/// In memory, the lock never leaves this type: each method takes it, works on memory
/// only, and drops it before returning, so no lock is ever held across socket I/O.
/// Critical sections are short: a listing is read a bounded page at a time (see
/// [`Registry::list_page`]), and a change of any size is made [`STEP_FILES`] files at
/// a time, each step under the lock on its own and handed fairly to the threads
/// waiting ([`Index::carry_out`]): a peer replacing 200,000 files held the lock for
/// 140 ms at once, and a lookup waited that long; now a lookup waits at most a step,
/// about a millisecond. So an async or sharded lock would add complexity without
/// removing any waiting worth having.
///
/// It is a reader-writer lock (`parking_lot::RwLock`, the mutex of the design with
/// shared reading, and a fair unlock for a change's steps): lookups and listings only
/// read, so eight clients listing with the worst pattern they can find, each page a
/// millisecond of scanning, never make a lookup wait for them; changes wait for the
/// pages being read (the lock lets no new reader in while a writer waits).
#[derive(Clone, Debug)]
pub struct Index {
    backend: Backend,
}

#[derive(Clone, Debug)]
enum Backend {
    Memory(Arc<RwLock<Registry>>),
    Store(Arc<Store>),
}

impl Default for Index {
    fn default() -> Index {
        Index::new(Registry::default())
    }
}

type Changed = Result<usize, RegistryError>;

impl Index {
    /// A handle on a new registry in memory.
    pub fn new(registry: Registry) -> Index {
        Index { backend: Backend::Memory(Arc::new(RwLock::new(registry))) }
    }

    /// A handle on a registry in PostgreSQL.
    pub fn stored(store: Arc<Store>) -> Index {
        Index { backend: Backend::Store(store) }
    }

    /// Runs `f` on the registry in memory under its lock, to change it. A thread that
    /// panics while holding the lock cannot leave the registry inconsistent (every
    /// `Registry` method checks before it changes, and a change made in steps is
    /// consistent between them), so the lock has no poisoning to take every other
    /// connection down: `parking_lot`'s.
    fn write<T>(registry: &RwLock<Registry>, f: impl FnOnce(&mut Registry) -> T) -> T {
        f(&mut registry.write())
    }

    /// [`Index::write`], then hands the lock to the threads waiting for it, if any, before
    /// this thread may take it again: for a change made a step at a time, so that the
    /// lookups waiting are answered between its steps. (An unfair unlock, the default,
    /// lets the thread that unlocked take the lock back before a woken reader runs:
    /// measured, a lookup then waited as long as the whole change.)
    fn write_step<T>(registry: &RwLock<Registry>, f: impl FnOnce(&mut Registry) -> T) -> T {
        let mut registry = registry.write();
        let done = f(&mut registry);
        RwLockWriteGuard::unlock_fair(registry);
        done
    }

    /// Runs `f` on the registry in memory under its lock, to read it, beside other
    /// readers.
    fn read<T>(registry: &RwLock<Registry>, f: impl FnOnce(&Registry) -> T) -> T {
        f(&registry.read())
    }

    /// Carries out `change` a step at a time, each under the write lock on its own
    /// ([`registry::STEP_FILES`]). Returns how many files the peer then shares.
    fn carry_out(registry: &RwLock<Registry>, mut change: Change) -> Changed {
        let id = Index::write(registry, |r| r.begin(&mut change))?;
        while !Index::write_step(registry, |r| r.step(id, &mut change)) {}
        Ok(change.after())
    }

    /// Runs `f` on the registry in memory (tests).
    #[cfg(test)]
    pub fn with<T>(&self, f: impl FnOnce(&mut Registry) -> T) -> T {
        match &self.backend {
            Backend::Memory(r) => Index::write(r, f),
            Backend::Store(_) => unreachable!("a test of the memory registry"),
        }
    }

    /// Gives the connections being served to the registry, to shut them down should it
    /// forget their registrations behind their backs. Only the store can: when this
    /// server's lease ran out and another server removed its peers, its clients must
    /// connect and register again to be found (the peer does both by itself). In
    /// memory, a registration lives exactly as long as its connection.
    pub fn on_forgotten(&self, live: crate::net::Live) {
        if let Backend::Store(s) = &self.backend {
            s.on_forgotten(live);
        }
    }

    /// [`Registry::register`].
    pub fn register(&self, conn: SocketAddr, port: u16, files: Vec<FileInfo>) -> Changed {
        match &self.backend {
            Backend::Memory(r) => Index::carry_out(r, Change::register(&InParts(r), conn, port, files)?),
            Backend::Store(s) => s.register(conn, port, files),
        }
    }

    /// [`Registry::update`].
    pub fn update(&self, conn: SocketAddr, files: Vec<FileInfo>) -> Changed {
        match &self.backend {
            Backend::Memory(r) => Index::carry_out(r, Change::update(&InParts(r), conn, files)?),
            Backend::Store(s) => s.update(conn, files),
        }
    }

    /// [`Registry::add`].
    pub fn add(&self, conn: SocketAddr, files: Vec<FileInfo>) -> Changed {
        match &self.backend {
            Backend::Memory(r) => Index::carry_out(r, Change::add(&InParts(r), conn, files)?),
            Backend::Store(s) => s.add(conn, files),
        }
    }

    /// [`Registry::delete`].
    pub fn delete(&self, conn: SocketAddr, names: &[SharePath]) -> Changed {
        match &self.backend {
            Backend::Memory(r) => Index::carry_out(r, Change::delete(&InParts(r), conn, names)?),
            Backend::Store(s) => s.delete(conn, names),
        }
    }

    /// [`Registry::announce_partial`].
    pub fn announce_partial(&self, conn: SocketAddr, files: Vec<FileInfo>) -> Changed {
        match &self.backend {
            Backend::Memory(r) => Index::write(r, |r| r.announce_partial(conn, files)),
            Backend::Store(s) => s.announce_partial(conn, files),
        }
    }

    /// [`Registry::unregister`].
    pub fn unregister(&self, conn: SocketAddr) -> Result<(), RegistryError> {
        match &self.backend {
            Backend::Memory(_) => match self.remove(conn) {
                true => Ok(()),
                false => Err(RegistryError::NotRegistered),
            },
            Backend::Store(s) => s.unregister(conn),
        }
    }

    /// Drops the registration of the peer on `conn`, if any (a disconnect). Returns
    /// whether there was one.
    pub fn remove(&self, conn: SocketAddr) -> bool {
        match &self.backend {
            Backend::Memory(r) => {
                let mut removed = false;
                while let Some(done) = Index::write_step(r, |r| r.remove_step(conn, STEP_FILES)) {
                    removed = true;
                    if done {
                        break;
                    }
                }
                removed
            }
            Backend::Store(s) => s.disconnected(conn),
        }
    }

    /// [`Registry::room_for`].
    pub fn room_for(&self, conn: SocketAddr, count: usize) -> Result<(), RegistryError> {
        match &self.backend {
            Backend::Memory(r) => Index::read(r, |r| r.room_for(conn, count)),
            Backend::Store(s) => s.room_for(conn, count),
        }
    }

    /// [`Registry::lookup`]: `Some` answer now, or, in the store while other lookups
    /// are being answered, `None`, and the answer goes to the deliverer that
    /// `hand_over` makes ([`Store::lookup`]), from another thread.
    pub fn lookup(&self, name: &SharePath, hand_over: impl FnOnce() -> Deliver<Looked>) -> Option<Looked> {
        match &self.backend {
            Backend::Memory(r) => Some(Ok(Index::read(r, |r| r.lookup(name)))),
            Backend::Store(s) => s.lookup(name, hand_over()),
        }
    }

    /// Whether a lookup may be answered from another thread ([`Index::lookup`]).
    pub fn hands_over(&self) -> bool {
        matches!(self.backend, Backend::Store(_))
    }

    /// The rest of a listing after `after`, read through the store's cursor
    /// ([`Store::open_listing`]); `None` in memory, where a listing is read by pages
    /// ([`Index::list_page`]) to its end.
    pub fn open_listing(
        &self,
        asker: SocketAddr,
        pattern: &Pattern,
        after: &SharePath,
    ) -> Option<Result<store::Cursor<'_>, RegistryError>> {
        match &self.backend {
            Backend::Memory(_) => None,
            Backend::Store(s) => Some(s.open_listing(asker, pattern, after)),
        }
    }

    /// [`Registry::list_page`].
    pub fn list_page(
        &self,
        asker: SocketAddr,
        pattern: &Pattern,
        after: Option<&SharePath>,
        budget: PageBudget,
    ) -> Result<ListPage, RegistryError> {
        match &self.backend {
            Backend::Memory(r) => Ok(Index::read(r, |r| r.list_page(asker, pattern, after, budget))),
            Backend::Store(s) => s.list_page(asker, pattern, after, budget),
        }
    }
}

/// The registry in memory as a change is worked out: read a part of [`STEP_FILES`] at a
/// time under the read lock, so that working out a change of 200,000 files holds up
/// no lookup for long. A peer's files change only on its own connection, whose request
/// this is, so the parts make one whole.
struct InParts<'a>(&'a RwLock<Registry>);

impl View for InParts<'_> {
    fn limits(&self) -> Limits {
        Index::read(self.0, |r| *r.limits())
    }

    fn registered(&self, conn: SocketAddr) -> bool {
        Index::read(self.0, |r| r.is_registered(conn))
    }

    fn files(&self, conn: SocketAddr) -> Option<Vec<FileInfo>> {
        let mut files = Vec::new();
        loop {
            let part = Index::read(self.0, |r| r.files_of(conn, files.len(), STEP_FILES))?;
            let last = part.len() < STEP_FILES;
            files.extend(part);
            if last {
                return Some(files);
            }
        }
    }

    fn copies(&self, conn: SocketAddr, names: &[&SharePath]) -> Option<Vec<Option<(u64, Hash)>>> {
        let mut copies = Vec::with_capacity(names.len());
        // One part at least, so that no names still finds out whether `conn` is registered.
        for part in names.chunks(STEP_FILES).chain(names.is_empty().then_some(&[][..])) {
            copies.extend(Index::read(self.0, |r| r.copies(conn, part))?);
        }
        Some(copies)
    }

    fn partial_names(&self, conn: SocketAddr) -> Option<Vec<SharePath>> {
        Index::read(self.0, |r| r.partial_names(conn))
    }
}
