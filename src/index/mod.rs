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
use std::sync::{Arc, PoisonError, RwLock};

pub use registry::{Limits, ListPage, PageBudget, Pattern, Registry, RegistryError};
pub use server::{Config, serve};
pub use store::Store;

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
/// Critical sections are microseconds long (a listing is read a bounded page at a
/// time, see [`Registry::list_page`]), so an async or sharded lock would add
/// complexity without removing any waiting worth having.
///
/// It is a reader-writer lock (`std::sync::RwLock`, the mutex of the design with
/// shared reading): lookups and listings only read, so eight clients listing with the
/// worst pattern they can find, each page a millisecond of scanning, never make a
/// lookup wait for them; changes wait for the pages being read (std's lock on Linux
/// lets no new reader in while a writer waits).
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
    /// panicked while holding the lock cannot have left the registry half-changed
    /// (every `Registry` method checks before it changes), so a poisoned lock is used
    /// as it is rather than taking every other connection down.
    fn write<T>(registry: &RwLock<Registry>, f: impl FnOnce(&mut Registry) -> T) -> T {
        f(&mut registry.write().unwrap_or_else(PoisonError::into_inner))
    }

    /// Runs `f` on the registry in memory under its lock, to read it, beside other
    /// readers.
    fn read<T>(registry: &RwLock<Registry>, f: impl FnOnce(&Registry) -> T) -> T {
        f(&registry.read().unwrap_or_else(PoisonError::into_inner))
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
            Backend::Memory(r) => Index::write(r, |r| r.register(conn, port, files)),
            Backend::Store(s) => s.register(conn, port, files),
        }
    }

    /// [`Registry::update`].
    pub fn update(&self, conn: SocketAddr, files: Vec<FileInfo>) -> Changed {
        match &self.backend {
            Backend::Memory(r) => Index::write(r, |r| r.update(conn, files)),
            Backend::Store(s) => s.update(conn, files),
        }
    }

    /// [`Registry::add`].
    pub fn add(&self, conn: SocketAddr, files: Vec<FileInfo>) -> Changed {
        match &self.backend {
            Backend::Memory(r) => Index::write(r, |r| r.add(conn, files)),
            Backend::Store(s) => s.add(conn, files),
        }
    }

    /// [`Registry::delete`].
    pub fn delete(&self, conn: SocketAddr, names: &[SharePath]) -> Changed {
        match &self.backend {
            Backend::Memory(r) => Index::write(r, |r| r.delete(conn, names)),
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
            Backend::Memory(r) => Index::write(r, |r| r.unregister(conn)),
            Backend::Store(s) => s.unregister(conn),
        }
    }

    /// Drops the registration of the peer on `conn`, if any (a disconnect). Returns
    /// whether there was one.
    pub fn remove(&self, conn: SocketAddr) -> bool {
        match &self.backend {
            Backend::Memory(r) => Index::write(r, |r| r.remove(conn)),
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
