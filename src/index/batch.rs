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
//! One batch is answered by the database at a time (the *lane*). A request that comes
//! while the lane is free takes it and is answered at once, alone, on its caller's
//! thread (a lone client waits for nothing). One that comes while the lane is taken
//! queues with a way to deliver its answer, and its caller goes on at once: it does
//! not wait. The queue is answered by serving threads ([`Batcher::serve`]), a batch (up
//! to `most`) at a time, until it is empty. A serving thread whose batch's answers are
//! in passes the lane to another before it delivers them, so that the database answers
//! the next batch meanwhile. So under load a lookup costs its connection's thread no
//! sleep and wake-up beside the one for its request: the serving thread writes the
//! reply (docs/PERFORMANCE.md, "Replies written by the lookups' threads").
//!
//! A request joins only a batch that is sent after it came, never one already sent,
//! so a lookup sees every change made before it was asked, as alone: a registration
//! at another server, once answered, is found by the very next lookup here.
//!
//! Socket-free, and generic over what is asked and answered, so that it is tested here
//! on its own.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Condvar, Mutex};

use crate::lock;

/// Where a queued request's answer goes.
pub type Deliver<A> = Box<dyn FnOnce(A) + Send>;

/// Batches of requests, answered one at a time. See the module docs.
pub struct Batcher<Q, A> {
    queue: Mutex<Queue<Q, A>>,
    /// The serving threads wait here for the lane.
    handed: Condvar,
    most: usize,
}

impl<Q, A> std::fmt::Debug for Batcher<Q, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").field("most", &self.most).finish()
    }
}

struct Queue<Q, A> {
    waiting: VecDeque<(Q, Deliver<A>)>,
    lane: Lane,
    /// With the lane [`Lane::Serving`]: a serving thread holds it (its batch is being
    /// answered by the database); if not, the next serving thread free takes it.
    held: bool,
    /// [`Batcher::close`] was called: the serving threads end.
    closed: bool,
}

/// Who answers now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lane {
    /// Nobody: the next request is answered at once, alone.
    Free,
    /// A caller, its own request alone; the queue waits for it.
    Caller,
    /// The serving threads, a batch of the queue at a time.
    Serving,
}

impl<Q, A> Batcher<Q, A> {
    /// Batches of at most `most` requests (at least one).
    pub fn new(most: usize) -> Batcher<Q, A> {
        Batcher {
            queue: Mutex::new(Queue {
                waiting: VecDeque::new(),
                lane: Lane::Free,
                held: false,
                closed: false,
            }),
            handed: Condvar::new(),
            most: most.max(1),
        }
    }

    /// `Some` answer to `query`, by `run` on this thread, alone, if the lane is free
    /// (`failed()` if `run` gives none). Otherwise `None`: `query` is queued, and
    /// [`Batcher::serve`] answers it with others and gives `deliver` its answer.
    ///
    /// `run` must answer as the serving threads' would: the queue waits for it.
    pub fn ask(
        &self,
        query: Q,
        run: impl FnOnce(&[Q]) -> Vec<A>,
        failed: impl Fn() -> A,
        deliver: impl FnOnce(A) + Send + 'static,
    ) -> Option<A> {
        {
            let mut queue = lock(&self.queue);
            if queue.lane != Lane::Free {
                queue.waiting.push_back((query, Box::new(deliver)));
                return None;
            }
            queue.lane = Lane::Caller;
        }
        // Whatever happens in `run` (a panic), the lane goes on.
        struct Release<'a, Q, A>(&'a Batcher<Q, A>);
        impl<Q, A> Drop for Release<'_, Q, A> {
            fn drop(&mut self) {
                let mut queue = lock(&self.0.queue);
                if queue.waiting.is_empty() {
                    queue.lane = Lane::Free;
                } else {
                    queue.lane = Lane::Serving;
                    self.0.handed.notify_one();
                }
            }
        }
        let release = Release(self);
        let answer = run(std::slice::from_ref(&query)).into_iter().next();
        drop(release);
        Some(answer.unwrap_or_else(failed))
    }

    /// Answers the queue, a batch at a time, each batch by `run`, which gives the
    /// answers to a batch's queries in their order; a request whose answer `run` does
    /// not give (it gave too few, or panicked) gets `failed()`. A panicking `deliver`
    /// costs only its own answer. Runs on a thread of its own until [`Batcher::close`],
    /// and then fails what is still queued.
    pub fn serve(&self, run: impl Fn(&[Q]) -> Vec<A>, failed: impl Fn() -> A) {
        let mut queue = lock(&self.queue);
        loop {
            if queue.closed {
                let waiting = std::mem::take(&mut queue.waiting);
                drop(queue);
                for (_, deliver) in waiting {
                    let _ = catch_unwind(AssertUnwindSafe(|| deliver(failed())));
                }
                return;
            }
            if queue.lane != Lane::Serving || queue.held {
                queue = self.handed.wait(queue).unwrap_or_else(std::sync::PoisonError::into_inner);
                continue;
            }
            if queue.waiting.is_empty() {
                queue.lane = Lane::Free;
                continue;
            }
            let n = self.most.min(queue.waiting.len());
            let (queries, delivers): (Vec<Q>, Vec<Deliver<A>>) = queue.waiting.drain(..n).unzip();
            queue.held = true;
            drop(queue);
            let answers = catch_unwind(AssertUnwindSafe(|| run(&queries))).unwrap_or_default();
            drop(queries);
            // The lane goes on before the answers go out, so that the next batch is
            // being answered by the database while they do.
            {
                let mut queue = lock(&self.queue);
                queue.held = false;
                if queue.waiting.is_empty() {
                    queue.lane = Lane::Free;
                } else {
                    self.handed.notify_one();
                }
            }
            let mut answers = answers.into_iter();
            for deliver in delivers {
                let answer = answers.next().unwrap_or_else(&failed);
                let _ = catch_unwind(AssertUnwindSafe(|| deliver(answer)));
            }
            queue = lock(&self.queue);
        }
    }

    /// Ends [`Batcher::serve`] (for tests: a server's batcher serves for as long as
    /// the process runs).
    #[cfg(test)]
    pub fn close(&self) {
        lock(&self.queue).closed = true;
        self.handed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    /// How long a test waits for an answer before it fails (instead of hanging).
    const PATIENCE: Duration = Duration::from_secs(20);

    /// A deliverer that sends `(which, answer)` down `tx`.
    fn to<A: Send + 'static>(tx: &mpsc::Sender<(u32, A)>, which: u32) -> impl FnOnce(A) + Send + 'static {
        let tx = tx.clone();
        move |answer| tx.send((which, answer)).unwrap()
    }

    /// A request for `query` that takes the free lane and holds it until `go` gets a
    /// message, then is answered with itself; returned once the lane is taken.
    fn hold_lane<'s, 'e>(
        s: &'s std::thread::Scope<'s, 'e>,
        b: &'e Batcher<u32, u32>,
        go: &'e Mutex<mpsc::Receiver<()>>,
        query: u32,
    ) -> std::thread::ScopedJoinHandle<'s, Option<u32>> {
        let first = s.spawn(move || {
            let run = |qs: &[u32]| {
                lock(go).recv_timeout(PATIENCE).unwrap();
                qs.to_vec()
            };
            b.ask(query, run, || u32::MAX, |_| panic!("answered at once"))
        });
        while lock(&b.queue).lane != Lane::Caller {
            std::thread::yield_now();
        }
        first
    }

    /// Until `b` holds `n` requests in its queue.
    fn until_queued<Q, A>(b: &Batcher<Q, A>, n: usize) {
        while lock(&b.queue).waiting.len() < n {
            std::thread::yield_now();
        }
    }

    #[test]
    fn a_lone_request_is_answered_at_once_alone_on_its_callers_thread() {
        let b = Batcher::new(64);
        let (tx, rx) = mpsc::channel();
        let mut sizes = Vec::new();
        for i in 0..5u32 {
            let got = b.ask(
                i,
                |qs: &[u32]| {
                    sizes.push(qs.len());
                    qs.iter().map(|q| q * 10).collect()
                },
                || u32::MAX,
                to(&tx, i),
            );
            assert_eq!(got, Some(i * 10));
        }
        assert_eq!(sizes, [1; 5]);
        drop(tx);
        assert!(rx.recv().is_err(), "nothing is delivered for a request answered at once");
        assert_eq!(lock(&b.queue).lane, Lane::Free);
    }

    /// Requests that come while one is being answered queue, their callers go on at
    /// once, and the serving thread answers them together, each to its own deliverer;
    /// none is answered by a batch sent before it came.
    #[test]
    fn requests_asked_while_one_is_answered_go_together_and_each_gets_its_own_answer() {
        let b = Batcher::new(64);
        let batches = Mutex::new(Vec::new());
        let (tx, rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let go_rx = Mutex::new(go_rx);
        std::thread::scope(|s| {
            s.spawn(|| {
                b.serve(
                    |qs: &[u32]| {
                        lock(&batches).push(qs.to_vec());
                        qs.iter().map(|q| q + 1).collect()
                    },
                    || u32::MAX,
                )
            });
            // The first request holds the lane until the other 20 have queued.
            let first = hold_lane(s, &b, &go_rx, 1000);
            for i in 0..20 {
                let got = b.ask(i, |_| panic!("the lane is taken"), || u32::MAX, to(&tx, i));
                assert_eq!(got, None, "a request asked while another is answered queues");
            }
            go_tx.send(()).unwrap();
            assert_eq!(first.join().unwrap(), Some(1000));
            let mut answers: Vec<(u32, u32)> = (0..20).map(|_| rx.recv_timeout(PATIENCE).unwrap()).collect();
            answers.sort();
            assert_eq!(answers, (0..20).map(|i| (i, i + 1)).collect::<Vec<_>>());
            assert_eq!(*lock(&batches), [(0..20).collect::<Vec<_>>()], "one batch, sent after they came");
            assert_eq!(lock(&b.queue).lane, Lane::Free);
            b.close();
        });
    }

    #[test]
    fn a_batch_is_at_most_most_requests_and_a_failed_one_still_answers_every_request() {
        let b = Batcher::new(3);
        let sizes = Mutex::new(Vec::new());
        let (tx, rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let go_rx = Mutex::new(go_rx);
        std::thread::scope(|s| {
            s.spawn(|| {
                b.serve(
                    |qs: &[u32]| {
                        lock(&sizes).push(qs.len());
                        // The first batch panics, the others give one answer too few.
                        if lock(&sizes).len() == 1 {
                            panic!("the store went away");
                        }
                        qs[..qs.len() - 1].to_vec()
                    },
                    || 99,
                )
            });
            let first = hold_lane(s, &b, &go_rx, 0);
            for i in 1..=7 {
                let deliver = to(&tx, i);
                // A deliverer that panics costs only its own answer.
                let deliver =
                    move |answer| if i == 5 { panic!("the client went away") } else { deliver(answer) };
                assert_eq!(b.ask(i, |_| panic!("the lane is taken"), || 99, deliver), None);
            }
            until_queued(&b, 7);
            go_tx.send(()).unwrap();
            assert_eq!(first.join().unwrap(), Some(0));
            let mut answers: Vec<(u32, u32)> = (0..6).map(|_| rx.recv_timeout(PATIENCE).unwrap()).collect();
            answers.sort();
            // [1, 2, 3] panicked; of [4, 5, 6] the last had no answer; [7] had none.
            assert_eq!(answers, [(1, 99), (2, 99), (3, 99), (4, 4), (6, 99), (7, 99)]);
            b.close();
        });
        assert_eq!(*lock(&sizes), [3, 3, 1]);
        assert_eq!(lock(&b.queue).lane, Lane::Free);
    }

    /// With two serving threads, the lane passes on before a batch's answers go out:
    /// the next batch is answered while a deliverer of the last one is still busy (a
    /// client slow to take its reply holds up no one else).
    #[test]
    fn the_next_batch_is_answered_while_the_last_ones_answers_go_out() {
        let b = Batcher::new(64);
        let (tx, rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let go_rx = Mutex::new(go_rx);
        let (queued_tx, queued_rx) = mpsc::channel::<()>();
        let queued_rx = Mutex::new(queued_rx);
        let (second_tx, second_rx) = mpsc::channel::<()>();
        let second_rx = Mutex::new(second_rx);
        let run = |qs: &[u32]| {
            if qs == [1] {
                // The first batch waits, being answered, until the second has queued.
                lock(&queued_rx).recv_timeout(PATIENCE).unwrap();
            } else {
                second_tx.send(()).unwrap();
            }
            qs.iter().map(|q| q * 10).collect()
        };
        std::thread::scope(|s| {
            let serving = [s.spawn(|| b.serve(run, || 99)), s.spawn(|| b.serve(run, || 99))];
            let first = hold_lane(s, &b, &go_rx, 0);
            // Request 1's deliverer waits until the second batch is being answered.
            let one = to(&tx, 1);
            let slow = move |answer| {
                lock(&second_rx).recv_timeout(PATIENCE).expect("the next batch was answered meanwhile");
                one(answer)
            };
            assert_eq!(b.ask(1, |_| panic!("the lane is taken"), || 99, slow), None);
            go_tx.send(()).unwrap();
            assert_eq!(first.join().unwrap(), Some(0));
            // While batch [1] is answered, request 2 queues.
            while !lock(&b.queue).held {
                std::thread::yield_now();
            }
            assert_eq!(b.ask(2, |_| panic!("the lane is taken"), || 99, to(&tx, 2)), None);
            queued_tx.send(()).unwrap();
            let mut answers: Vec<(u32, u32)> = (0..2).map(|_| rx.recv_timeout(PATIENCE).unwrap()).collect();
            answers.sort();
            assert_eq!(answers, [(1, 10), (2, 20)]);
            b.close();
            for t in serving {
                t.join().unwrap();
            }
        });
    }
}
