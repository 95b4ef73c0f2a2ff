//! The index server's memory budget for requests being received.
//!
//! A client can announce a frame of up to `--max-frame` bytes, send all of it but the
//! last byte, and hold it there: 16 MiB of the server's memory per connection for as
//! long as the read timeout allows. So every request frame books its length in one
//! [`Budget`] shared by all connections before its payload is read, and gives it back
//! once the request has been carried out. A frame that does not fit waits for room
//! until its read deadline, then its connection is closed with a reason.
//!
//! The smallest frames (at most [`UNBOOKED_FRAME`]: lookups, pings, logins, most
//! listings) are not booked one by one: room for one per connection is set aside from
//! the budget when the server starts ([`Budget::for_server`]), so the requests that
//! make up nearly all the traffic never touch the count that every connection shares.
//! Small frames (at most [`SMALL_FRAME`], every request but a registration of many
//! files) may use the rest of the budget; larger ones leave the last eighth to them, so
//! that a crowd of large frames held open can slow registrations but never stop the
//! others. A large frame books twice its length: its bytes, and the request decoded
//! from them (about as large) while it is carried out.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Default budget: 256 MiB. At the default 10,000 connections, 39 MiB of it is set
/// aside for their small requests, and five of the largest (16 MiB) requests fit at
/// once, each with what it decodes to; small requests are never short of room.
pub const RECEIVE_BUDGET: usize = 256 << 20;

/// Frames of at most this many bytes may use the whole budget; larger ones leave
/// [`Budget::reserve`] to them.
pub const SMALL_FRAME: usize = 64 << 10;

/// Frames of at most this many bytes are not booked: see [`Budget::for_server`].
pub const UNBOOKED_FRAME: usize = 4096;

/// Longest a waiter sleeps before looking again (a safety net; releases wake waiters).
const RECHECK: Duration = Duration::from_millis(100);

/// See the module docs. Cheap to clone; all clones share one budget.
#[derive(Clone, Debug)]
pub struct Budget {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    max: usize,
    used: AtomicUsize,
    waiters: AtomicUsize,
    lock: Mutex<()>,
    freed: Condvar,
}

/// Bytes booked in a [`Budget`], given back when dropped.
#[derive(Debug)]
pub struct Booking<'a> {
    shared: &'a Shared,
    bytes: usize,
}

impl Budget {
    /// A budget of `max` bytes.
    pub fn new(max: usize) -> Budget {
        let shared = Shared {
            max,
            used: AtomicUsize::new(0),
            waiters: AtomicUsize::new(0),
            lock: Mutex::new(()),
            freed: Condvar::new(),
        };
        Budget { shared: Arc::new(shared) }
    }

    /// The budget of a server of `total` bytes that serves at most `connections`: what
    /// is left once every connection has room for one frame of [`UNBOOKED_FRAME`]
    /// bytes. `None` if nothing would be left for larger frames.
    pub fn for_server(total: usize, connections: usize) -> Option<Budget> {
        let left = total.checked_sub(connections.checked_mul(UNBOOKED_FRAME)?)?;
        (left > 0).then(|| Budget::new(left))
    }

    /// The part of the budget that only small frames may use: an eighth.
    pub fn reserve(&self) -> usize {
        self.shared.max / 8
    }

    /// The largest frame that can ever be booked.
    pub fn largest_frame(&self) -> usize {
        (self.shared.max - self.reserve()) / 2
    }

    /// Bytes booked now.
    pub fn used(&self) -> usize {
        self.shared.used.load(Ordering::SeqCst)
    }

    /// Books room for a frame of `len` bytes, waiting until `deadline` for it. `None`
    /// if there was no room by then.
    pub fn book(&self, len: usize, deadline: Instant) -> Option<Booking<'_>> {
        let (bytes, limit) = if len <= SMALL_FRAME {
            (len, self.shared.max)
        } else {
            (len.saturating_mul(2), self.shared.max - self.reserve())
        };
        if let Some(booking) = self.try_book(bytes, limit) {
            return Some(booking);
        }
        let shared = &self.shared;
        shared.waiters.fetch_add(1, Ordering::SeqCst);
        let mut guard = crate::lock(&shared.lock);
        let booked = loop {
            if let Some(booking) = self.try_book(bytes, limit) {
                break Some(booking);
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else { break None };
            guard =
                shared.freed.wait_timeout(guard, left.min(RECHECK)).unwrap_or_else(PoisonError::into_inner).0;
        };
        drop(guard);
        shared.waiters.fetch_sub(1, Ordering::SeqCst);
        booked
    }

    fn try_book(&self, bytes: usize, limit: usize) -> Option<Booking<'_>> {
        let used = &self.shared.used;
        used.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |u| {
            u.checked_add(bytes).filter(|n| *n <= limit)
        })
        .ok()
        .map(|_| Booking { shared: &self.shared, bytes })
    }
}

impl Drop for Booking<'_> {
    fn drop(&mut self) {
        let shared = self.shared;
        shared.used.fetch_sub(self.bytes, Ordering::SeqCst);
        // Taking the lock orders this release after a waiter's last look, so the
        // waiter is either looking again (and sees the room) or waiting (and is woken).
        if shared.waiters.load(Ordering::SeqCst) > 0 {
            let _guard = crate::lock(&shared.lock);
            shared.freed.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_frames_leave_room_for_small_ones() {
        let budget = Budget::new(800);
        let now = Instant::now();
        // SMALL_FRAME is 64 KiB: use a budget in those units.
        let budget_big = Budget::new(16 * SMALL_FRAME);
        let big = SMALL_FRAME * 2;
        let held: Vec<Booking> = (0..3).map(|_| budget_big.book(big, now).unwrap()).collect();
        assert_eq!(budget_big.used(), 12 * SMALL_FRAME, "a large frame books twice its length");
        assert!(budget_big.book(big, now).is_none(), "the last eighth is not for large frames");
        let small = budget_big.book(SMALL_FRAME, now).expect("small frames use the reserve");
        assert!(budget_big.book(SMALL_FRAME, now).is_some());
        drop(held);
        drop(small);
        assert!(budget.book(100, now).is_some());
    }

    #[test]
    fn a_server_sets_aside_room_for_every_connections_small_frames() {
        let budget = Budget::for_server(RECEIVE_BUDGET, 10_000).unwrap();
        assert_eq!(budget.shared.max, RECEIVE_BUDGET - 10_000 * UNBOOKED_FRAME);
        assert!(budget.largest_frame() >= 16 << 20, "the default --max-frame fits");
        assert!(Budget::for_server(1 << 20, 1000).is_none(), "4 KiB each is all of it");
        assert!(Budget::for_server(usize::MAX, usize::MAX).is_none());
    }

    #[test]
    fn a_waiting_frame_gets_room_when_another_is_done() {
        let budget = Budget::new(16 * SMALL_FRAME);
        let big = budget.largest_frame();
        let first = budget.book(big, Instant::now()).unwrap();
        let waiter = {
            let budget = budget.clone();
            std::thread::spawn(move || budget.book(big, Instant::now() + Duration::from_secs(60)).is_some())
        };
        // Give the room back; the waiter must get it (it waits up to a minute).
        while budget.shared.waiters.load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        drop(first);
        assert!(waiter.join().unwrap());
        assert!(budget.book(big + 1, Instant::now()).is_none(), "bigger than can ever fit");
    }
}
