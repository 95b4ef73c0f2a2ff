//! Requests that wait at the same time go together: the store's lookups
//! ([`super::store::Store::lookup`]), each otherwise one statement and one round trip
//! to PostgreSQL, are sent as one statement for all the lookups that came while the
//! previous ones were being answered (group commit, applied to reads).
//!
//! With one statement a lookup, 50 clients make 50 database processes take turns on
//! the database's cores, and a lookup's wait is 50 turns of bind, execute and
//! reply (Little's law: p99 10-16 ms here, docs/SCALING.md). With statements for many
//! lookups, each turn answers many, and the database's cost per lookup is an index
//! search.
//!
//! At most `lanes` batches are being answered at once. A request that comes while one
//! is free is answered at once, alone (a lone client waits for nothing); one that
//! comes while all are busy queues, and when a lane's batch is answered, the whole
//! queue (up to `most`) becomes its next batch. The batch is answered by the thread
//! of its oldest request (it has nothing else to do), so no thread is added.
//!
//! A request joins only a batch that is sent after it came, never one already sent,
//! so a lookup sees every change made before it was asked, as alone: a registration
//! at another server, once answered, is found by the very next lookup here.
//!
//! Socket-free, and generic over what is asked and answered, so that it is tested here
//! on its own.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use crate::lock;

/// Batches of requests, at most `lanes` of them answered at once. See the module docs.
pub struct Batcher<Q, A> {
    queue: Mutex<Queue<Q, A>>,
    lanes: usize,
    most: usize,
}

impl<Q, A> std::fmt::Debug for Batcher<Q, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").field("lanes", &self.lanes).field("most", &self.most).finish()
    }
}

struct Queue<Q, A> {
    waiting: VecDeque<(Q, Arc<Slot<Q, A>>)>,
    /// Batches being answered.
    running: usize,
}

/// Where a queued request learns its answer, or that it is to answer a batch.
struct Slot<Q, A> {
    turn: Mutex<Turn<Q, A>>,
    changed: Condvar,
}

enum Turn<Q, A> {
    Waiting,
    /// Answer this batch (the request's own query first) and the lane is yours.
    Lead(Batch<Q, A>),
    Done(A),
}

/// A batch's queries and, beside them, where each one's answer goes; the first is the
/// leader's own and has no slot.
struct Batch<Q, A> {
    queries: Vec<Q>,
    slots: Vec<Arc<Slot<Q, A>>>,
}

impl<Q, A> Slot<Q, A> {
    fn set(&self, turn: Turn<Q, A>) {
        *lock(&self.turn) = turn;
        self.changed.notify_one();
    }
}

impl<Q, A> Batcher<Q, A> {
    /// At most `lanes` batches answered at once (at least one), each of at most `most`
    /// requests (at least one).
    pub fn new(lanes: usize, most: usize) -> Batcher<Q, A> {
        Batcher {
            queue: Mutex::new(Queue { waiting: VecDeque::new(), running: 0 }),
            lanes: lanes.max(1),
            most: most.max(1),
        }
    }

    /// The answer to `query`, answered with others in a batch by `run`, which gives
    /// the answers to a batch's queries in their order. A batch's requests whose
    /// answer `run` does not give (it gave too few, or panicked) get `failed()`.
    ///
    /// Every caller must pass a `run` that answers as any other would: the batch this
    /// call answers may hold other callers' queries.
    pub fn call(&self, query: Q, run: impl FnOnce(&[Q]) -> Vec<A>, failed: impl Fn() -> A) -> A {
        let batch = {
            let mut queue = lock(&self.queue);
            if queue.running < self.lanes {
                queue.running += 1;
                let mut batch = Batch { queries: vec![query], slots: Vec::new() };
                self.take(&mut queue, &mut batch);
                batch
            } else {
                let slot = Arc::new(Slot { turn: Mutex::new(Turn::Waiting), changed: Condvar::new() });
                queue.waiting.push_back((query, Arc::clone(&slot)));
                drop(queue);
                let mut turn = lock(&slot.turn);
                loop {
                    match std::mem::replace(&mut *turn, Turn::Waiting) {
                        Turn::Waiting => {
                            turn = slot.changed.wait(turn).unwrap_or_else(PoisonError::into_inner)
                        }
                        Turn::Done(answer) => return answer,
                        Turn::Lead(batch) => break batch,
                    }
                }
            }
        };
        self.lead(batch, run, failed)
    }

    /// Moves queued requests into `batch`, up to `most` in all.
    fn take(&self, queue: &mut Queue<Q, A>, batch: &mut Batch<Q, A>) {
        let room = self.most.saturating_sub(batch.queries.len()).min(queue.waiting.len());
        for (query, slot) in queue.waiting.drain(..room) {
            batch.queries.push(query);
            batch.slots.push(slot);
        }
    }

    /// Answers `batch` (holding a lane), passes the lane on to the queue's oldest
    /// request with the queue as its batch (or frees it), then gives the others their
    /// answers, and returns the leader's own.
    fn lead(&self, batch: Batch<Q, A>, run: impl FnOnce(&[Q]) -> Vec<A>, failed: impl Fn() -> A) -> A {
        let Batch { queries, slots } = batch;
        let mut leading = Leading { batcher: self, slots, handed_on: false, failed: &failed };
        let answers = run(&queries);
        drop(queries);
        leading.hand_on();
        let mut answers = answers.into_iter();
        let own = answers.next().unwrap_or_else(&failed);
        for slot in std::mem::take(&mut leading.slots) {
            slot.set(Turn::Done(answers.next().unwrap_or_else(&failed)));
        }
        own
    }
}

/// A lane held by a batch's leader: whatever happens to the leader (`run` panicked),
/// its lane is passed on and its batch's requests answered.
struct Leading<'a, Q, A, F: Fn() -> A> {
    batcher: &'a Batcher<Q, A>,
    /// The slots not yet answered.
    slots: Vec<Arc<Slot<Q, A>>>,
    handed_on: bool,
    failed: &'a F,
}

impl<Q, A, F: Fn() -> A> Leading<'_, Q, A, F> {
    fn hand_on(&mut self) {
        if std::mem::replace(&mut self.handed_on, true) {
            return;
        }
        let mut queue = lock(&self.batcher.queue);
        if let Some((query, slot)) = queue.waiting.pop_front() {
            let mut next = Batch { queries: vec![query], slots: Vec::new() };
            self.batcher.take(&mut queue, &mut next);
            drop(queue);
            slot.set(Turn::Lead(next));
        } else {
            queue.running -= 1;
        }
    }
}

impl<Q, A, F: Fn() -> A> Drop for Leading<'_, Q, A, F> {
    fn drop(&mut self) {
        self.hand_on();
        for slot in self.slots.drain(..) {
            slot.set(Turn::Done((self.failed)()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn a_lone_request_is_answered_at_once_alone() {
        let b = Batcher::new(2, 64);
        let mut sizes = Vec::new();
        for i in 0..5 {
            let got = b.call(
                i,
                |qs: &[i32]| {
                    sizes.push(qs.len());
                    qs.iter().map(|q| q * 10).collect()
                },
                || -1,
            );
            assert_eq!(got, i * 10);
        }
        assert_eq!(sizes, [1; 5]);
    }

    /// Requests that come while every lane is busy go together, each gets its own
    /// answer, and none is answered by a batch sent before it came.
    #[test]
    fn requests_that_wait_together_go_together_and_each_gets_its_own_answer() {
        let b = Batcher::new(1, 64);
        let (sent, batches) = (AtomicUsize::new(0), Mutex::new(Vec::new()));
        // The first request holds the only lane until the other 20 have queued.
        let queued = Barrier::new(2);
        std::thread::scope(|s| {
            s.spawn(|| {
                let got = b.call(
                    1000,
                    |qs: &[usize]| {
                        queued.wait();
                        qs.to_vec()
                    },
                    || usize::MAX,
                );
                assert_eq!(got, 1000);
            });
            // Until the lane is taken.
            while lock(&b.queue).running == 0 {
                std::thread::yield_now();
            }
            let waiting = (0..20)
                .map(|i| {
                    let (b, sent, batches) = (&b, &sent, &batches);
                    s.spawn(move || {
                        b.call(
                            i,
                            |qs: &[usize]| {
                                sent.fetch_add(1, Ordering::SeqCst);
                                lock(batches).push(qs.to_vec());
                                qs.iter().map(|q| q + 1).collect()
                            },
                            || usize::MAX,
                        )
                    })
                })
                .collect::<Vec<_>>();
            while lock(&b.queue).waiting.len() < 20 {
                std::thread::yield_now();
            }
            queued.wait();
            for (i, h) in waiting.into_iter().enumerate() {
                assert_eq!(h.join().unwrap(), i + 1);
            }
        });
        assert_eq!(sent.load(Ordering::SeqCst), 1, "{:?}", lock(&batches));
        let mut all = lock(&batches)[0].clone();
        all.sort();
        assert_eq!(all, (0..20).collect::<Vec<_>>());
        assert_eq!(lock(&b.queue).running, 0);
    }

    #[test]
    fn a_batch_is_at_most_most_requests_and_a_failed_one_answers_every_request() {
        let b = Batcher::new(1, 3);
        let queued = Barrier::new(2);
        let sizes = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            s.spawn(|| {
                b.call(
                    0,
                    |_: &[u32]| {
                        queued.wait();
                        vec![0]
                    },
                    || 99,
                )
            });
            while lock(&b.queue).running == 0 {
                std::thread::yield_now();
            }
            let waiting = (1..=7)
                .map(|i| {
                    let (b, sizes) = (&b, &sizes);
                    s.spawn(move || {
                        b.call(
                            i,
                            |qs: &[u32]| {
                                lock(sizes).push(qs.len());
                                // The first batch panics, the others give one answer too few.
                                if lock(sizes).len() == 1 {
                                    panic!("the store went away");
                                }
                                qs[..qs.len() - 1].to_vec()
                            },
                            || 99,
                        )
                    })
                })
                .collect::<Vec<_>>();
            while lock(&b.queue).waiting.len() < 7 {
                std::thread::yield_now();
            }
            queued.wait();
            let answers: Vec<_> = waiting.into_iter().map(|h| h.join()).collect();
            // The first batch's leader panicked and its two followers were failed; the
            // second batch's last request and the third's only one were not answered.
            let own = (1..=7).zip(&answers).filter(|(i, a)| matches!(a, Ok(x) if x == i)).count();
            let failed = answers.iter().filter(|a| matches!(a, Ok(99))).count();
            assert_eq!((answers.iter().filter(|a| a.is_err()).count(), own, failed), (1, 2, 4));
        });
        assert_eq!(*lock(&sizes), [3, 3, 1]);
        assert_eq!(lock(&b.queue).running, 0);
    }
}
