//! The indexing server: the [`registry`] (pure data) and the [`server`] loop around it.

pub mod registry;
pub mod server;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

pub use registry::{Registry, RegistryError};
pub use server::{Config, serve};

/// A cheap-to-clone handle on the shared registry; every connection thread has one.
///
/// The lock is a `std::sync::Mutex` and never leaves this module's callers' single
/// statements: each operation takes it, works on memory only, and drops it before any
/// socket I/O. Critical sections are microseconds long, so an async or sharded lock
/// would add complexity without removing any waiting worth having.
#[derive(Clone, Debug, Default)]
pub struct Index {
    shared: Arc<Mutex<Registry>>,
}

impl Index {
    /// A handle on a new registry.
    pub fn new(registry: Registry) -> Index {
        Index { shared: Arc::new(Mutex::new(registry)) }
    }

    /// Locks the registry. A thread that panicked while holding the lock cannot have
    /// left it half-changed (every `Registry` method checks before it changes), so a
    /// poisoned lock is used as it is rather than taking every other connection down.
    pub fn lock(&self) -> MutexGuard<'_, Registry> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Drops the registration of the peer on `conn`, if any (a disconnect).
    pub fn remove(&self, conn: SocketAddr) -> bool {
        self.lock().remove(conn)
    }
}
