//! The indexing server: the [`registry`] (pure data), the [`login`] state machine
//! (pure logic), the receive [`budget`], and the [`server`] loop around them.

pub mod budget;
pub mod login;
pub mod registry;
pub mod server;

use std::net::SocketAddr;
use std::sync::{Arc, PoisonError, RwLock};

pub use registry::{Limits, ListPage, PageBudget, Pattern, Registry, RegistryError};
pub use server::{Config, serve};

use crate::name::SharePath;
use crate::wire::{FileInfo, PeerHit};

/// A cheap-to-clone handle on the shared registry; every connection thread has one.
///
/// The lock never leaves this type: each method takes it, works on memory only, and
/// drops it before returning, so no lock is ever held across socket I/O. Critical
/// sections are microseconds long (a listing is read a bounded page at a time, see
/// [`Registry::list_page`]), so an async or sharded lock would add complexity without
/// removing any waiting worth having.
///
/// It is a reader-writer lock (`std::sync::RwLock`, the mutex of the design with
/// shared reading): lookups and listings only read, so eight clients listing with the
/// worst pattern they can find, each page a millisecond of scanning, never make a
/// lookup wait for them; changes wait for the pages being read (std's lock on Linux
/// lets no new reader in while a writer waits).
#[derive(Clone, Debug, Default)]
pub struct Index {
    shared: Arc<RwLock<Registry>>,
}

type Changed = Result<usize, RegistryError>;

impl Index {
    /// A handle on a new registry.
    pub fn new(registry: Registry) -> Index {
        Index { shared: Arc::new(RwLock::new(registry)) }
    }

    /// Runs `f` on the registry under its lock, to change it. A thread that panicked
    /// while holding the lock cannot have left the registry half-changed (every
    /// `Registry` method checks before it changes), so a poisoned lock is used as it
    /// is rather than taking every other connection down.
    pub fn with<T>(&self, f: impl FnOnce(&mut Registry) -> T) -> T {
        f(&mut self.shared.write().unwrap_or_else(PoisonError::into_inner))
    }

    /// Runs `f` on the registry under its lock, to read it, beside other readers.
    pub fn read<T>(&self, f: impl FnOnce(&Registry) -> T) -> T {
        f(&self.shared.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// [`Registry::register`].
    pub fn register(&self, conn: SocketAddr, port: u16, files: Vec<FileInfo>) -> Changed {
        self.with(|r| r.register(conn, port, files))
    }

    /// [`Registry::update`].
    pub fn update(&self, conn: SocketAddr, files: Vec<FileInfo>) -> Changed {
        self.with(|r| r.update(conn, files))
    }

    /// [`Registry::add`].
    pub fn add(&self, conn: SocketAddr, files: Vec<FileInfo>) -> Changed {
        self.with(|r| r.add(conn, files))
    }

    /// [`Registry::delete`].
    pub fn delete(&self, conn: SocketAddr, names: &[SharePath]) -> Changed {
        self.with(|r| r.delete(conn, names))
    }

    /// [`Registry::unregister`].
    pub fn unregister(&self, conn: SocketAddr) -> Result<(), RegistryError> {
        self.with(|r| r.unregister(conn))
    }

    /// Drops the registration of the peer on `conn`, if any (a disconnect).
    pub fn remove(&self, conn: SocketAddr) -> bool {
        self.with(|r| r.remove(conn))
    }

    /// [`Registry::room_for`].
    pub fn room_for(&self, conn: SocketAddr, count: usize) -> Result<(), RegistryError> {
        self.read(|r| r.room_for(conn, count))
    }

    /// [`Registry::lookup`].
    pub fn lookup(&self, name: &SharePath) -> Vec<PeerHit> {
        self.read(|r| r.lookup(name))
    }

    /// [`Registry::list_page`].
    pub fn list_page(
        &self,
        asker: SocketAddr,
        pattern: &Pattern,
        after: Option<&SharePath>,
        budget: PageBudget,
    ) -> ListPage {
        self.read(|r| r.list_page(asker, pattern, after, budget))
    }
}
