//! Login on the index server, without sockets: the challenge for a `Login`, the check
//! of a `Proof`, and the throttle that makes guessing passwords slow.
//!
//! ```text
//! Login { user }  -> Accounts::challenge -> Challenge (real, or fake but stable)
//! Proof { proof } -> Accounts::admit     -> Wait(until) | Answer(refusal)
//!                    ... the server sleeps until `until` ...
//!                 -> Accounts::check     -> LoggedIn | Error
//! ```
//!
//! # The throttle
//!
//! A proof is *checked* no sooner than the throttle allows; delaying only the answer
//! would not do, since an attacker can take any answer that does not come at once for
//! a failure. Every check is booked in advance as if it will fail (so that a hundred
//! proofs sent at once are spaced like a hundred failures) and the booking is given
//! back if it succeeds:
//!
//! - **per address** ([`crate::net::client_key`]), over all its connections: the
//!   `n`-th recent failure makes the next check wait `n` x [`FAILURE_DELAY`], up to
//!   [`MAX_FAILURE_DELAY`];
//! - **per user name**, for checks from addresses that have failed recently: at most
//!   one every [`USER_FAILURE_INTERVAL`] (10 a second), the interval doubling with
//!   every [`USER_FAILURES_PER_DOUBLING`] recent failures, up to [`MAX_FAILURE_DELAY`].
//!   An address with no recent failure is not held up by the user's throttle, so the
//!   real user logs in at once while someone elsewhere guesses their password.
//!
//! A check that would have to wait more than [`MAX_CHECK_WAIT`] is refused at once,
//! unchecked, with the time to wait. Failures are forgotten after [`FAILURE_MEMORY`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::RngExt;

use crate::auth::{self, Key, Users};
use crate::net::client_key;
use crate::wire::Reply;

/// Wait before the check after an address's first recent failure; each further
/// failure adds as much again, up to [`MAX_FAILURE_DELAY`].
pub const FAILURE_DELAY: Duration = Duration::from_secs(1);

/// Longest wait between two checks for one address, or for one user.
pub const MAX_FAILURE_DELAY: Duration = Duration::from_secs(10);

/// Least time between two checks for one user from addresses that have failed:
/// about 10 guesses a second, whatever the number of connections.
pub const USER_FAILURE_INTERVAL: Duration = Duration::from_millis(100);

/// Recent failures for one user after which [`USER_FAILURE_INTERVAL`] doubles.
pub const USER_FAILURES_PER_DOUBLING: u32 = 100;

/// A check that would have to wait longer than this is refused unchecked.
pub const MAX_CHECK_WAIT: Duration = Duration::from_secs(10);

/// How long failures are remembered.
pub const FAILURE_MEMORY: Duration = Duration::from_secs(15 * 60);

/// Most addresses and most user names whose failures are remembered; beyond it, only
/// those still delaying checks are kept, so that a flood of made-up names cannot
/// grow the server's memory.
pub const MAX_TRACKED: usize = 100_000;

/// The accounts of a server that requires login (`--users`), and the throttle.
#[derive(Debug)]
pub struct Accounts {
    users: Users,
    throttle: Mutex<Throttle>,
}

/// Where one connection stands with login.
#[derive(Debug, Default)]
pub struct Session {
    user: Option<String>,
    pending: Option<Pending>,
}

/// A challenge sent and not yet answered.
#[derive(Debug)]
struct Pending {
    user: String,
    nonce: [u8; 32],
    /// The user's key, or `None` for an unknown user (whose fake challenge no proof
    /// can answer).
    key: Option<Key>,
}

impl Session {
    /// The user logged in on this connection, if any.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The user of the challenge sent and not yet answered, if any.
    pub fn pending_user(&self) -> Option<&str> {
        self.pending.as_ref().map(|p| p.user.as_str())
    }
}

/// What to do with a `Proof`: see [`Accounts::admit`].
#[derive(Debug, PartialEq, Eq)]
pub enum ProofStep {
    /// Wait until then, and call [`Accounts::check`].
    CheckAt(Instant),
    /// Answer this at once, without checking.
    Answer(Reply),
}

impl Accounts {
    /// Login required, for these users.
    pub fn new(users: Users) -> Accounts {
        Accounts { users, throttle: Mutex::default() }
    }

    /// Answers `Login { user }`: the user's salt and rounds with a fresh nonce, or, for
    /// a user who does not exist, a salt derived from the users file's secret and the
    /// name, the same every time (and across restarts), so that the answer does not
    /// tell who exists.
    pub fn challenge(&self, session: &mut Session, user: &str) -> Reply {
        if let Err(why) = auth::check_user(user) {
            return Reply::Error(why);
        }
        let (salt, rounds, key) = match self.users.get(user) {
            Some(a) => (a.salt.clone(), a.rounds, Some(a.key)),
            None => (self.users.fake_salt(user), auth::PBKDF2_ROUNDS, None),
        };
        let nonce: [u8; 32] = rand::rng().random();
        session.pending = Some(Pending { user: user.to_owned(), nonce, key });
        Reply::Challenge { salt, rounds, nonce }
    }

    /// Books the check of a `Proof` from `ip`: when it may be made, or the refusal if
    /// there is no challenge to answer or the throttle would make it wait too long.
    pub fn admit(&self, session: &Session, ip: IpAddr, now: Instant) -> ProofStep {
        let Some(pending) = &session.pending else {
            return ProofStep::Answer(Reply::Error("send login first".into()));
        };
        let mut throttle = crate::lock(&self.throttle);
        match throttle.book(client_key(ip), &pending.user, now) {
            Ok(at) => ProofStep::CheckAt(at),
            Err(wait) => ProofStep::Answer(Reply::Error(format!(
                "too many failed logins from your address or for {:?}; try again in {} s",
                pending.user,
                wait.as_secs().max(1)
            ))),
        }
    }

    /// Checks a `Proof` booked by [`Accounts::admit`] (call it at the time `admit`
    /// gave). Answers `LoggedIn`, or the same refusal whether or not the user exists.
    pub fn check(&self, session: &mut Session, ip: IpAddr, proof: &[u8; 32], now: Instant) -> Reply {
        let Some(Pending { user, nonce, key }) = session.pending.take() else {
            return Reply::Error("send login first".into());
        };
        if key.is_some_and(|key| auth::verify(&key, &user, &nonce, proof)) {
            let mut throttle = crate::lock(&self.throttle);
            throttle.succeeded(client_key(ip), &user, now);
            session.user = Some(user);
            return Reply::LoggedIn;
        }
        Reply::Error("wrong user name or password".into())
    }
}

/// Recent failures of one address or one user name.
#[derive(Clone, Copy, Debug)]
struct Record {
    /// Failures (and checks booked) within [`FAILURE_MEMORY`].
    failures: u32,
    /// No check before this instant.
    next: Instant,
    /// The last booking.
    last: Instant,
}

/// See the module docs.
#[derive(Debug, Default)]
struct Throttle {
    by_ip: HashMap<IpAddr, Record>,
    by_user: HashMap<String, Record>,
    last_pruned: Option<Instant>,
}

impl Throttle {
    /// Books a check for `user` from address `key`: returns when it may be made, or
    /// how long it would have to wait if that is over [`MAX_CHECK_WAIT`].
    fn book(&mut self, key: IpAddr, user: &str, now: Instant) -> Result<Instant, Duration> {
        self.prune(now);
        let fresh = Record { failures: 0, next: now, last: now };
        let ip = self.by_ip.get(&key).copied().unwrap_or(fresh);
        let name = self.by_user.get(user).copied().unwrap_or(fresh);
        // An address that has failed recently waits for the user's throttle too.
        let tainted = ip.failures > 0;
        let mut at = ip.next.max(now);
        if tainted {
            at = at.max(name.next);
        }
        let wait = at - now;
        if wait > MAX_CHECK_WAIT {
            return Err(wait);
        }
        let ip_failures = ip.failures + 1;
        let ip_next = at + (FAILURE_DELAY * ip_failures).min(MAX_FAILURE_DELAY);
        let user_failures = name.failures + 1;
        let user_next = if tainted { at + user_interval(name.failures) } else { name.next };
        if self.by_ip.len() < MAX_TRACKED || self.by_ip.contains_key(&key) {
            self.by_ip.insert(key, Record { failures: ip_failures, next: ip_next, last: now });
        }
        if self.by_user.len() < MAX_TRACKED || self.by_user.contains_key(user) {
            self.by_user
                .insert(user.to_owned(), Record { failures: user_failures, next: user_next, last: now });
        }
        Ok(at)
    }

    /// A booked check succeeded: it was not a failure after all.
    fn succeeded(&mut self, key: IpAddr, user: &str, now: Instant) {
        for record in [self.by_ip.get_mut(&key), self.by_user.get_mut(user)].into_iter().flatten() {
            record.failures = record.failures.saturating_sub(1);
            if record.failures == 0 {
                record.next = now;
            }
        }
    }

    /// Forgets failures older than [`FAILURE_MEMORY`] (at most once a second), and,
    /// when more than [`MAX_TRACKED`] are remembered, all that no longer delay a check.
    fn prune(&mut self, now: Instant) {
        if self.last_pruned.is_some_and(|t| now.duration_since(t) < Duration::from_secs(1)) {
            return;
        }
        self.last_pruned = Some(now);
        let recent = |r: &Record| now.duration_since(r.last) < FAILURE_MEMORY && r.failures > 0;
        self.by_ip.retain(|_, r| recent(r));
        self.by_user.retain(|_, r| recent(r));
        if self.by_ip.len() >= MAX_TRACKED {
            self.by_ip.retain(|_, r| r.next > now);
        }
        if self.by_user.len() >= MAX_TRACKED {
            self.by_user.retain(|_, r| r.next > now);
        }
    }
}

/// The least time between two checks for a user with `failures` recent failures.
fn user_interval(failures: u32) -> Duration {
    let doublings = (failures / USER_FAILURES_PER_DOUBLING).min(16);
    (USER_FAILURE_INTERVAL * (1u32 << doublings)).min(MAX_FAILURE_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accounts() -> Accounts {
        let mut users = Users::default();
        users.set_with_rounds("ann", "s3cret", 1000).unwrap();
        Accounts::new(users)
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    /// Logs in as `user` with `password` from `from` at `now`, checking at once
    /// whatever the throttle says; returns the answer and when the check was booked.
    fn attempt(a: &Accounts, user: &str, password: &str, from: IpAddr, now: Instant) -> (Reply, ProofStep) {
        let mut session = Session::default();
        let Reply::Challenge { salt, rounds, nonce } = a.challenge(&mut session, user) else {
            panic!("no challenge")
        };
        let key = auth::derive_key(password, &salt, rounds.min(1000));
        let step = a.admit(&session, from, now);
        let reply = match &step {
            ProofStep::CheckAt(at) => a.check(&mut session, from, &auth::proof(&key, user, &nonce), *at),
            ProofStep::Answer(reply) => reply.clone(),
        };
        (reply, step)
    }

    #[test]
    fn the_right_password_logs_in_and_a_wrong_one_does_not() {
        let a = accounts();
        let t = Instant::now();
        let (reply, step) = attempt(&a, "ann", "s3cret", ip(1), t);
        assert_eq!(reply, Reply::LoggedIn);
        assert_eq!(step, ProofStep::CheckAt(t), "no wait for a clean address");
        let (reply, _) = attempt(&a, "ann", "wrong", ip(2), t);
        assert_eq!(reply, Reply::Error("wrong user name or password".into()));
        let (reply, _) = attempt(&a, "nobody", "wrong", ip(3), t);
        assert_eq!(reply, Reply::Error("wrong user name or password".into()), "the same answer");
        let mut s = Session::default();
        assert_eq!(a.admit(&s, ip(1), t), ProofStep::Answer(Reply::Error("send login first".into())));
        assert!(
            matches!(a.challenge(&mut s, "not a name"), Reply::Error(e) if e.contains("invalid user name"))
        );
    }

    #[test]
    fn an_unknown_users_challenge_is_stable() {
        let a = accounts();
        let salt = |a: &Accounts, user: &str| match a.challenge(&mut Session::default(), user) {
            Reply::Challenge { salt, rounds, .. } => (salt, rounds),
            other => panic!("{other:?}"),
        };
        assert_eq!(salt(&a, "nobody"), salt(&a, "nobody"));
        assert_ne!(salt(&a, "nobody").0, salt(&a, "somebody").0);
        assert_eq!(salt(&a, "nobody").0.len(), auth::SALT_LEN, "as long as a real salt");
    }

    #[test]
    fn many_connections_from_one_address_are_spaced_like_one() {
        let a = accounts();
        let t = Instant::now();
        // A hundred proofs booked at the same instant, as a hundred connections would.
        let steps: Vec<ProofStep> = (0..100)
            .map(|_| {
                let mut s = Session::default();
                a.challenge(&mut s, "ann");
                a.admit(&s, ip(9), t)
            })
            .collect();
        let waits: Vec<Duration> = steps
            .iter()
            .filter_map(|s| match s {
                ProofStep::CheckAt(at) => Some(*at - t),
                ProofStep::Answer(_) => None,
            })
            .collect();
        // 0, 1, 3, 6, 10 s: then the next would wait 15 s, more than the most allowed.
        assert_eq!(waits, [0, 1, 3, 6, 10].map(Duration::from_secs));
        let refused = steps
            .iter()
            .filter(
                |s| matches!(s, ProofStep::Answer(Reply::Error(e)) if e.contains("too many failed logins")),
            )
            .count();
        assert_eq!(refused, 95);
        // Meanwhile the real user, elsewhere, logs in at once.
        let (reply, step) = attempt(&a, "ann", "s3cret", ip(1), t);
        assert_eq!((reply, step), (Reply::LoggedIn, ProofStep::CheckAt(t)));
    }

    #[test]
    fn one_user_is_guessed_at_most_about_ten_times_a_second_from_many_addresses() {
        let a = accounts();
        let t = Instant::now();
        // 200 addresses, each of which has failed once already.
        for i in 0..200u32 {
            let from = IpAddr::from((0x0a01_0000u32 + i).to_be_bytes());
            attempt(&a, "ann", "guess", from, t);
        }
        // Now each tries again, all at once: the checks are spaced 100 ms apart.
        let mut ats: Vec<Instant> = (0..200u32)
            .filter_map(|i| {
                let from = IpAddr::from((0x0a01_0000u32 + i).to_be_bytes());
                let mut s = Session::default();
                a.challenge(&mut s, "ann");
                match a.admit(&s, from, t) {
                    ProofStep::CheckAt(at) => Some(at),
                    ProofStep::Answer(_) => None,
                }
            })
            .collect();
        ats.sort();
        let first_second = ats.iter().filter(|at| **at < t + Duration::from_secs(1)).count();
        assert!(first_second <= 10, "{first_second} checks in the first second");
        assert!(ats.windows(2).all(|w| w[1] - w[0] >= USER_FAILURE_INTERVAL));
        assert!(ats.len() <= 101, "no check booked more than 10 s ahead: {}", ats.len());
        // A clean address is not held up.
        assert_eq!(attempt(&a, "ann", "s3cret", ip(1), t).1, ProofStep::CheckAt(t));
    }

    #[test]
    fn failures_are_forgotten_and_successes_give_their_booking_back() {
        let a = accounts();
        let t = Instant::now();
        attempt(&a, "ann", "wrong", ip(5), t);
        assert_eq!(attempt(&a, "ann", "s3cret", ip(5), t).1, ProofStep::CheckAt(t + FAILURE_DELAY));
        let later = t + FAILURE_MEMORY + Duration::from_secs(2);
        assert_eq!(attempt(&a, "ann", "s3cret", ip(5), later).1, ProofStep::CheckAt(later));
        assert_eq!(
            attempt(&a, "ann", "s3cret", ip(5), later).1,
            ProofStep::CheckAt(later),
            "a success costs nothing"
        );
        assert_eq!(user_interval(0), USER_FAILURE_INTERVAL);
        assert_eq!(user_interval(250), USER_FAILURE_INTERVAL * 4);
        assert_eq!(user_interval(100_000), MAX_FAILURE_DELAY);
    }
}
