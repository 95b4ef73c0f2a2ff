//! Which pieces to ask which source for: pure bookkeeping, no I/O.
//!
//! Pieces are handed out in runs of consecutive pieces (so that a request moves about
//! [`RUN_BYTES`]), each to one source at a time, rarest first: the piece fewest of the
//! sources hold, so that what only a leaving peer has is fetched before it leaves, and
//! so that downloaders of one file fetch different pieces from a seeder and can then
//! trade them. Among equally rare pieces, the first from a position chosen at random
//! for each download. A piece stays requested until it is verified or given back. When
//! no piece is left unrequested, a source with room is given a piece another source is
//! still sending (the endgame): whichever copy arrives first is kept, the other
//! request is cancelled, and the download ends without waiting for the slowest source.

use std::time::{Duration, Instant};

use crate::content::{Bitfield, Geometry};

/// The endgame starts when no more than this is missing: a few requests' worth,
/// about what the slowest sources hold when the rest is in.
pub const ENDGAME_BYTES: u64 = 4 << 20;

/// A piece is asked of a second source only once the first has had it this long: well
/// past a piece's time on any link that moves files, short beside a stall window.
pub const ENDGAME_AGE: Duration = Duration::from_secs(1);

/// Bytes one request asks for, at most (but at least one piece): large enough that a
/// request's overhead is nothing beside its bytes, small enough that several sources
/// share even a small file.
pub const RUN_BYTES: u64 = 1 << 20;

/// The pieces still to fetch and who is fetching them.
#[derive(Debug)]
pub struct Scheduler {
    have: Bitfield,
    /// The sources each piece is requested from (or being checked from): one, or
    /// several in the endgame.
    requested: Vec<Vec<usize>>,
    /// When each piece was first requested, while it is.
    since: Vec<Option<Instant>>,
    /// Pieces per run.
    run: u32,
    /// How many sources hold each piece.
    available: Vec<u16>,
    /// Where the search for the rarest piece starts.
    start: u32,
    /// Sources holding pieces now (as told by [`Scheduler::holds`] and
    /// [`Scheduler::left`]).
    holders: u32,
    /// A xorshift state: with several sources, each search starts somewhere new.
    rng: u64,
}

impl Scheduler {
    /// A scheduler for a file cut as `geometry` of which `have` is already verified;
    /// among equally rare pieces, those from `start` on go first.
    pub fn new(geometry: &Geometry, have: Bitfield, start: u32) -> Scheduler {
        let pieces = geometry.pieces();
        // At least 16 runs a file, so that several sources share it.
        let run = (RUN_BYTES / geometry.piece_len).min(u64::from(pieces / 16)).max(1) as u32;
        let n = pieces as usize;
        Scheduler {
            requested: vec![Vec::new(); n],
            since: vec![None; n],
            have,
            run,
            available: vec![0; n],
            start: start % pieces,
            holders: 0,
            rng: u64::from(start) | 1,
        }
    }

    /// A source holding `theirs` joined (or told us it holds more).
    pub fn holds(&mut self, theirs: &Bitfield) {
        self.holders += 1;
        for i in theirs.ones() {
            self.available[i as usize] = self.available[i as usize].saturating_add(1);
        }
    }

    /// A source that held `theirs` left (or is about to say what it holds now).
    pub fn left(&mut self, theirs: &Bitfield) {
        self.holders = self.holders.saturating_sub(1);
        for i in theirs.ones() {
            self.available[i as usize] = self.available[i as usize].saturating_sub(1);
        }
    }

    /// The verified pieces.
    pub fn have(&self) -> &Bitfield {
        &self.have
    }

    /// Is every piece verified?
    pub fn is_complete(&self) -> bool {
        self.have.is_full()
    }

    /// The next run of fresh pieces (requested from nobody) for `source`, which holds
    /// `theirs`, as (first piece, count), of at most `most` pieces (a slow source gets
    /// shorter runs, so that it does not sit on pieces others could bring sooner);
    /// `None` if it holds none. The run is counted as requested from it until
    /// [`Scheduler::release`].
    pub fn pick(&mut self, source: usize, theirs: &Bitfield, most: u32) -> Option<(u32, u32)> {
        let wanted = |i: u32| !self.have.get(i) && theirs.get(i);
        let pieces = self.requested.len() as u32;
        let fresh = |i: u32| wanted(i) && self.requested[i as usize].is_empty();
        // With one source, runs follow each other through the file. With several (a
        // swarm), each search starts at a random place: downloaders of one file that
        // all went through it in order would soon be asking a seeder for the very
        // pieces another has just asked it for.
        let start = if self.holders > 1 {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            (self.rng % u64::from(pieces)) as u32
        } else {
            self.start
        };
        let first = (start..pieces)
            .chain(0..start)
            .filter(|&i| fresh(i))
            .min_by_key(|&i| self.available[i as usize])?;
        let mut count = 1;
        while count < self.run.min(most) && first + count < pieces && fresh(first + count) {
            count += 1;
        }
        let now = Instant::now();
        for i in first..first + count {
            self.requested[i as usize].push(source);
            self.since[i as usize] = Some(now);
        }
        Some((first, count))
    }

    /// The endgame, for a source with room and no fresh piece to fetch: once no more
    /// than [`ENDGAME_BYTES`] are missing, one piece another source has been sending
    /// for at least [`ENDGAME_AGE`] by `now` (the one with the fewest sources on it),
    /// so that the download does not wait for the slowest source. Whichever copy
    /// arrives first is kept and the other requests are cancelled. Otherwise `None`:
    /// a duplicate the sender has begun takes its upload from other downloaders.
    pub fn pick_duplicate(
        &mut self,
        source: usize,
        theirs: &Bitfield,
        piece_len: u64,
        now: Instant,
    ) -> Option<u32> {
        let missing = u64::from(self.have.len() - self.have.count());
        if missing * piece_len > ENDGAME_BYTES {
            return None;
        }
        let pieces = self.requested.len() as u32;
        let slow =
            |i: u32| self.since[i as usize].is_some_and(|t| now.saturating_duration_since(t) >= ENDGAME_AGE);
        let i = (0..pieces)
            .filter(|&i| {
                !self.have.get(i) && theirs.get(i) && slow(i) && !self.requested[i as usize].contains(&source)
            })
            .min_by_key(|&i| self.requested[i as usize].len())?;
        self.requested[i as usize].push(source);
        Some(i)
    }

    /// The sources piece `i` is requested from now.
    pub fn requesters(&self, i: u32) -> &[usize] {
        &self.requested[i as usize]
    }

    /// `source`'s request for piece `i` is over (arrived and checked, or abandoned).
    pub fn release(&mut self, i: u32, source: usize) {
        if let Some(on) = self.requested.get_mut(i as usize)
            && let Some(at) = on.iter().position(|&s| s == source)
        {
            on.swap_remove(at);
            if on.is_empty() {
                self.since[i as usize] = None;
            }
        }
    }

    /// Piece `i` is to be fetched again (its source was caught lying).
    pub fn undo(&mut self, i: u32) {
        self.have.unset(i);
    }

    /// Piece `i` is verified and written. Returns whether it is new.
    pub fn done(&mut self, i: u32) -> bool {
        let new = !self.have.get(i);
        self.have.set(i);
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::merkle::BLOCK_LEN;

    /// A moment when every request made so far is older than [`ENDGAME_AGE`].
    fn later() -> Instant {
        Instant::now() + ENDGAME_AGE
    }

    fn geometry(pieces: u64) -> Geometry {
        Geometry { size: pieces * BLOCK_LEN, piece_len: BLOCK_LEN }
    }

    #[test]
    fn runs_go_to_sources_in_order_and_never_twice_until_the_endgame() {
        let g = geometry(64); // runs of 4 pieces
        let mut s = Scheduler::new(&g, Bitfield::empty(64), 0);
        let all = Bitfield::full(64);
        let a: Vec<_> = (0..15).map(|_| s.pick(0, &all, u32::MAX).unwrap()).collect();
        assert_eq!(&a[..2], [(0, 4), (4, 4)]);
        assert_eq!(s.pick(1, &all, u32::MAX), Some((60, 4)), "the last fresh run");
        assert_eq!(s.pick(1, &all, u32::MAX), None, "nothing fresh is left");
        // 1 MiB missing: the endgame hands out pieces another source has had for a
        // while, never one this source is already sending.
        assert_eq!(s.pick_duplicate(1, &all, BLOCK_LEN, Instant::now()), None, "not yet");
        assert_eq!(s.pick_duplicate(1, &all, BLOCK_LEN, later()), Some(0));
        assert_eq!(s.pick_duplicate(1, &all, BLOCK_LEN, later()), Some(1));
        for _ in 2..60 {
            s.pick_duplicate(1, &all, BLOCK_LEN, later()).unwrap();
        }
        assert_eq!(s.pick_duplicate(1, &all, BLOCK_LEN, later()), None, "source 1 has every piece requested");
        assert_eq!(
            s.pick_duplicate(0, &all, BLOCK_LEN, later()),
            Some(60),
            "source 0 duplicates source 1's run"
        );
        // With more than ENDGAME_BYTES missing, no duplicates.
        assert_eq!(s.pick_duplicate(2, &all, 1 << 20, later()), None);
        assert_eq!(s.pick(3, &Bitfield::full(64), 2), None, "nothing fresh, whatever the length");
        // A piece given back by everyone is fresh again and goes out as a run of its own.
        s.release(61, 1);
        assert_eq!(s.pick(2, &all, u32::MAX), Some((61, 1)));
    }

    #[test]
    fn a_source_is_asked_only_for_what_it_holds_and_done_pieces_are_skipped() {
        let g = geometry(32); // runs of 2
        let mut have = Bitfield::empty(32);
        have.set(0);
        let mut s = Scheduler::new(&g, have, 0);
        let mut theirs = Bitfield::empty(32);
        for i in [0, 1, 2, 5] {
            theirs.set(i);
        }
        assert_eq!(s.pick(0, &theirs, u32::MAX), Some((1, 2)));
        assert_eq!(s.pick(0, &theirs, u32::MAX), Some((5, 1)));
        // Nothing fresh left that it holds, and it is sending all of it.
        assert_eq!(s.pick(0, &theirs, u32::MAX), None);
        assert_eq!(s.pick_duplicate(0, &theirs, BLOCK_LEN, later()), None);
        assert_eq!(s.pick_duplicate(1, &theirs, BLOCK_LEN, later()), Some(1), "another source duplicates");
        for i in 1..32 {
            assert!(s.done(i));
        }
        assert!(!s.done(5), "a duplicate is not new");
        assert!(s.is_complete());
        assert_eq!(s.pick(2, &Bitfield::full(32), u32::MAX), None);
    }

    #[test]
    fn the_rarest_pieces_go_first() {
        let g = geometry(32); // runs of 2
        let mut s = Scheduler::new(&g, Bitfield::empty(32), 20);
        let all = Bitfield::full(32);
        let mut few = Bitfield::empty(32);
        for i in [7, 8, 9] {
            few.set(i);
        }
        s.holds(&few);
        // One source: from the start, in order.
        assert_eq!(s.pick(0, &few, u32::MAX), Some((7, 2)));
        s.left(&few);
        s.holds(&all);
        s.holds(&all);
        s.holds(&few);
        // Pieces 7-9 are held by three sources, the rest by two: never 7-9 while any
        // other is fresh, and never a piece twice.
        let mut taken = Bitfield::empty(32);
        taken.set(7);
        taken.set(8);
        while let Some((first, count)) = s.pick(1, &all, u32::MAX) {
            for i in first..first + count {
                assert!(!taken.get(i), "piece {i} twice");
                taken.set(i);
            }
            if first == 9 {
                assert_eq!(taken.count(), 32, "9 came last");
            }
        }
        assert!(taken.is_full());
    }

    #[test]
    fn a_one_piece_file_is_one_run() {
        let g = Geometry::for_size(0);
        let mut s = Scheduler::new(&g, Bitfield::empty(1), 0);
        assert_eq!(s.pick(0, &Bitfield::full(1), u32::MAX), Some((0, 1)));
        assert_eq!(s.pick(0, &Bitfield::full(1), u32::MAX), None);
        assert_eq!(
            s.pick_duplicate(1, &Bitfield::full(1), BLOCK_LEN, later()),
            Some(0),
            "an endgame duplicate"
        );
    }
}
