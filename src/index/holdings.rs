//! The registry's name index, `name -> holders`: which peers share a name, and where
//! the file is in each one's list. A lookup is one hash and one probe here, so this is
//! the part of the index a lookup's time depends on.
//!
//! Our own open-addressing table rather than std's `HashMap`, for one reason: where a
//! lookup's time goes. Over a million names, every memory load a lookup makes at a new
//! place misses the caches (and on a VM with 4 KiB pages, the TLB: a nested page walk,
//! hundreds of nanoseconds each). std's table keeps a name's hash tag in a control
//! array apart from its entry, so a probe loads the control bytes, then the entry,
//! then the name's text to compare: three misses one after another. Here an entry
//! carries its whole 64-bit hash beside the name and holders, and the table probes the
//! entries themselves (linear probing: the next entries are in the same or the next
//! cache line), so a probe is one miss and then the name's text. Removal shifts the
//! entries after it back (no tombstones), so probes stay short however many names
//! come and go.
//!
//! The index is cut into [`SHARDS`] such tables by the hash's top bits: a table that
//! fills up doubles and moves every entry, and at ten million names one table moving
//! all of them would hold the registry's lock for over a second, stopping every
//! lookup. A shard moves a 64th of them, without hashing them again (the hash is kept).

use std::hash::BuildHasher;

use crate::name::SharePath;

/// A small handle on a registered peer, so the index stores 4 bytes per holder rather
/// than a 32-byte `SocketAddr`.
pub type PeerId = u32;

/// One peer that shares a name: which peer, and where the file is in its list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Holder {
    pub peer: PeerId,
    pub idx: u32,
}

/// The holders of one name. Most names are shared by one peer; they need no vector.
///
/// `Many` boxes its vector so that `Holders` is 16 bytes rather than 32: it sits in
/// every entry, millions of them, and the extra allocation is paid only by the few
/// names that several peers share.
#[derive(Debug)]
#[allow(clippy::box_collection)]
pub enum Holders {
    One(Holder),
    Many(Box<Vec<Holder>>),
}

impl Holders {
    pub fn as_slice(&self) -> &[Holder] {
        match self {
            Holders::One(h) => std::slice::from_ref(h),
            Holders::Many(v) => v,
        }
    }

    pub fn find_mut(&mut self, peer: PeerId) -> Option<&mut Holder> {
        match self {
            Holders::One(h) => (h.peer == peer).then_some(h),
            Holders::Many(v) => v.iter_mut().find(|h| h.peer == peer),
        }
    }

    pub fn push(&mut self, h: Holder) {
        match self {
            Holders::One(first) => *self = Holders::Many(Box::new(vec![*first, h])),
            Holders::Many(v) => v.push(h),
        }
    }

    /// Removes `peer`; returns true if nobody is left.
    pub fn remove(&mut self, peer: PeerId) -> bool {
        match self {
            Holders::One(h) => h.peer == peer,
            Holders::Many(v) => {
                v.retain(|h| h.peer != peer);
                if let [only] = v[..] {
                    *self = Holders::One(only);
                }
                false
            }
        }
    }
}

/// Shards of the name index: see the module docs.
pub const SHARDS: usize = 64;

/// The name index. See the module docs.
#[derive(Debug)]
pub struct Holdings {
    /// SipHash with a random key, so that no client can choose names that collide.
    hasher: std::hash::RandomState,
    shards: Box<[Table]>,
}

impl Default for Holdings {
    fn default() -> Self {
        Holdings {
            hasher: std::hash::RandomState::new(),
            shards: (0..SHARDS).map(|_| Table::default()).collect(),
        }
    }
}

/// Where a name goes in the index: [`Holdings::entry`].
pub enum NameEntry<'a> {
    /// The name is indexed: its stored copy (to share its text) and its holders.
    Occupied(&'a SharePath, &'a mut Holders),
    /// It is not; [`Vacant::insert`] puts it in.
    Vacant(Vacant<'a>),
}

/// A name's place in a table, found empty.
pub struct Vacant<'a> {
    table: &'a mut Table,
    at: usize,
    hash: u64,
    name: SharePath,
}

impl Vacant<'_> {
    pub fn name(&self) -> &SharePath {
        &self.name
    }

    pub fn insert(self, holders: Holders) {
        self.table.slots[self.at] = Slot { hash: self.hash, entry: Some((self.name, holders)) };
        self.table.len += 1;
    }
}

impl Holdings {
    fn locate(&self, name: &SharePath) -> (u64, usize) {
        let hash = self.hasher.hash_one(name);
        // The top bits: the tables use the low ones to place entries.
        (hash, (hash >> 58) as usize % SHARDS)
    }

    pub fn get(&self, name: &SharePath) -> Option<&Holders> {
        let (hash, shard) = self.locate(name);
        let table = &self.shards[shard];
        table.find(hash, name).map(|at| table.holders(at))
    }

    /// `read(holders)` of `name`, if it is indexed: [`Holdings::get`] for a lookup,
    /// which is all cache misses. `read` runs on the first entry whose hash matches
    /// before its name is compared, so that the loads `read` makes (a holder's file)
    /// and the load of the stored name's text wait on memory at the same time rather
    /// than one after the other. With a 64-bit hash the name nearly always matches;
    /// if not, the result is dropped and the probe goes on. `read` must only read.
    pub fn read<R>(&self, name: &SharePath, read: impl Fn(&Holders) -> R) -> Option<R> {
        let (hash, shard) = self.locate(name);
        let table = &self.shards[shard];
        table.probe(hash).find_map(|at| match &table.slots[at] {
            Slot { hash: h, entry: Some((stored, holders)) } if *h == hash => {
                // Ask for the stored name's length (its allocation's first line) now,
                // before `read`'s loads are asked for.
                std::hint::black_box(stored.as_str().len());
                let got = read(holders);
                (stored == name).then_some(got)
            }
            _ => None,
        })
    }

    pub fn get_mut(&mut self, name: &SharePath) -> Option<&mut Holders> {
        let (hash, shard) = self.locate(name);
        let table = &mut self.shards[shard];
        let at = table.find(hash, name)?;
        Some(&mut table.slots[at].entry.as_mut().expect("found").1)
    }

    pub fn entry(&mut self, name: SharePath) -> NameEntry<'_> {
        let (hash, shard) = self.locate(&name);
        let table = &mut self.shards[shard];
        table.reserve_one();
        match table.place(hash, &name).expect("reserve_one made room") {
            Ok(at) => {
                let (stored, holders) = table.slots[at].entry.as_mut().expect("found");
                NameEntry::Occupied(stored, holders)
            }
            Err(at) => NameEntry::Vacant(Vacant { table, at, hash, name }),
        }
    }

    pub fn remove(&mut self, name: &SharePath) -> Option<Holders> {
        let (hash, shard) = self.locate(name);
        self.shards[shard].remove(hash, name)
    }

    /// Every name and its holders, in no order.
    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = (&SharePath, &Holders)> {
        self.shards.iter().flat_map(|t| t.slots.iter()).filter_map(|s| s.entry.as_ref().map(|(n, h)| (n, h)))
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.shards.iter().all(|t| t.len == 0)
    }
}

impl std::ops::Index<&SharePath> for Holdings {
    type Output = Holders;

    fn index(&self, name: &SharePath) -> &Holders {
        self.get(name).expect("every name in the index has holders")
    }
}

/// One place in a table: 32 bytes, two to a cache line.
#[derive(Debug, Default)]
struct Slot {
    /// The name's hash ([`Holdings::locate`]); meaningless in an empty slot.
    hash: u64,
    entry: Option<(SharePath, Holders)>,
}

/// One shard: a linear-probing table whose capacity is a power of two (or zero), at
/// most [`Table::MAX_LOAD_EIGHTHS`] eighths full. An entry sits at its hash's home slot or
/// after it, with no empty slot between: [`Table::remove`] keeps it so.
#[derive(Debug, Default)]
struct Table {
    slots: Box<[Slot]>,
    len: usize,
}

impl Table {
    /// Fullest a table may be, in eighths, before it doubles: as full as std's tables
    /// get, so that the index takes no more memory than with them (at 3/4, the lookup
    /// benchmark's 901,000 names took 32 MiB more). Near the top, a name found takes
    /// about 4 probes and a name not indexed about 30, adjacent slots whose cache lines
    /// the processor fetches ahead; a table is that full only just before it doubles.
    const MAX_LOAD_EIGHTHS: usize = 7;

    /// Capacity of a table's first allocation.
    const FIRST_CAPACITY: usize = 16;

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    fn home(&self, hash: u64) -> usize {
        hash as usize & self.mask()
    }

    /// The slots a probe for `hash` visits: from its home to the first empty slot,
    /// that one included (none in a table not yet allocated).
    fn probe(&self, hash: u64) -> impl Iterator<Item = usize> + '_ {
        let mut next = (!self.slots.is_empty()).then(|| self.home(hash));
        std::iter::from_fn(move || {
            let at = next?;
            next = self.slots[at].entry.is_some().then(|| (at + 1) & self.mask());
            Some(at)
        })
    }

    /// `Ok` with the slot holding `name`, or `Err` with the empty slot where its probe
    /// ended; `None` in a table not yet allocated.
    fn place(&self, hash: u64, name: &SharePath) -> Option<Result<usize, usize>> {
        let at = self.probe(hash).find(|&at| match &self.slots[at] {
            Slot { entry: None, .. } => true,
            Slot { hash: h, entry: Some((n, _)) } => *h == hash && n == name,
        })?;
        Some(if self.slots[at].entry.is_some() { Ok(at) } else { Err(at) })
    }

    fn find(&self, hash: u64, name: &SharePath) -> Option<usize> {
        self.place(hash, name)?.ok()
    }

    fn holders(&self, at: usize) -> &Holders {
        &self.slots[at].entry.as_ref().expect("an occupied slot").1
    }

    /// Makes room for one more entry, doubling if needed, so that a probe always ends.
    fn reserve_one(&mut self) {
        if (self.len + 1) * 8 <= self.slots.len() * Self::MAX_LOAD_EIGHTHS {
            return;
        }
        let capacity = (self.slots.len() * 2).max(Self::FIRST_CAPACITY);
        let old = std::mem::replace(&mut self.slots, (0..capacity).map(|_| Slot::default()).collect());
        for slot in old.into_vec() {
            if slot.entry.is_some() {
                let mut at = self.home(slot.hash);
                while self.slots[at].entry.is_some() {
                    at = (at + 1) & self.mask();
                }
                self.slots[at] = slot;
            }
        }
    }

    /// Removes `name`, then moves back each entry after it that may sit earlier, up to
    /// the next empty slot, so that no probe for them passes an empty slot.
    fn remove(&mut self, hash: u64, name: &SharePath) -> Option<Holders> {
        let mut hole = self.find(hash, name)?;
        let (_, holders) = self.slots[hole].entry.take().expect("found");
        self.len -= 1;
        let mut at = hole;
        loop {
            at = (at + 1) & self.mask();
            if self.slots[at].entry.is_none() {
                return Some(holders);
            }
            // The entry at `at` may fill the hole if its home is not cyclically within
            // (hole, at]: its probe passes the hole.
            let home = self.home(self.slots[at].hash);
            let stays = if hole < at { hole < home && home <= at } else { hole < home || home <= at };
            if !stays {
                self.slots[hole] = std::mem::take(&mut self.slots[at]);
                hole = at;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(i: usize) -> SharePath {
        SharePath::parse(&format!("name-{i}")).unwrap()
    }

    fn one(i: usize) -> Holders {
        Holders::One(Holder { peer: i as PeerId, idx: 0 })
    }

    fn insert(h: &mut Holdings, i: usize) {
        match h.entry(name(i)) {
            NameEntry::Vacant(v) => v.insert(one(i)),
            NameEntry::Occupied(..) => panic!("name-{i} is already in"),
        }
    }

    /// Every name in `live` is found with its own holder, every other one is not, and
    /// every entry can be reached by a probe from its home without an empty slot.
    fn check(h: &Holdings, live: &std::collections::BTreeSet<usize>, upto: usize) {
        for i in 0..upto {
            let got = h.get(&name(i)).map(|hs| hs.as_slice()[0].peer as usize);
            assert_eq!(got, live.contains(&i).then_some(i), "name-{i}");
        }
        assert_eq!(h.iter().count(), live.len());
        for t in h.shards.iter() {
            assert_eq!(t.slots.iter().filter(|s| s.entry.is_some()).count(), t.len);
            for (at, s) in t.slots.iter().enumerate() {
                if s.entry.is_some() {
                    let mut p = t.home(s.hash);
                    while p != at {
                        assert!(t.slots[p].entry.is_some(), "an empty slot between an entry and its home");
                        p = (p + 1) & t.mask();
                    }
                }
            }
        }
    }

    #[test]
    fn names_come_and_go_and_every_probe_still_finds_its_name() {
        let mut h = Holdings::default();
        let mut live = std::collections::BTreeSet::new();
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        // Inserts grow tables through several doublings; removals in random order then
        // shift entries back across the wrap-around at a table's end too.
        for i in 0..5_000 {
            insert(&mut h, i);
            live.insert(i);
        }
        check(&h, &live, 5_100);
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = (x % 5_000) as usize;
            if live.remove(&i) {
                assert!(h.remove(&name(i)).is_some());
            } else {
                assert!(h.remove(&name(i)).is_none());
                insert(&mut h, i);
                live.insert(i);
            }
        }
        check(&h, &live, 5_100);
        for i in live.clone() {
            assert!(h.remove(&name(i)).is_some());
            live.remove(&i);
        }
        check(&h, &live, 5_100);
        assert!(h.is_empty());
    }

    #[test]
    fn an_entry_is_found_again_through_entry() {
        let mut h = Holdings::default();
        insert(&mut h, 1);
        match h.entry(name(1)) {
            NameEntry::Occupied(stored, holders) => {
                assert_eq!(stored, &name(1));
                holders.push(Holder { peer: 7, idx: 3 });
            }
            NameEntry::Vacant(_) => panic!("name-1 was inserted"),
        }
        assert_eq!(h[&name(1)].as_slice(), [Holder { peer: 1, idx: 0 }, Holder { peer: 7, idx: 3 }]);
        assert!(h.get_mut(&name(2)).is_none());
    }

    #[test]
    fn a_name_whose_hash_another_name_has_is_told_apart() {
        let mut h = Holdings::default();
        // name-2 stored under name-1's hash, first on name-1's probe: as if their
        // hashes collided.
        let (hash, shard) = h.locate(&name(1));
        let table = &mut h.shards[shard];
        table.reserve_one();
        let at = table.place(hash, &name(2)).unwrap().unwrap_err();
        Vacant { table, at, hash, name: name(2) }.insert(one(2));
        assert_eq!(h.read(&name(1), |hs| hs.as_slice()[0].peer), None);
        insert(&mut h, 1);
        assert_eq!(h.read(&name(1), |hs| hs.as_slice()[0].peer), Some(1));
        assert_eq!(h.get(&name(1)).map(|hs| hs.as_slice()[0].peer), Some(1));
        assert_eq!(h.remove(&name(1)).map(|hs| hs.as_slice()[0].peer), Some(1));
        assert_eq!(h.read(&name(1), |hs| hs.as_slice()[0].peer), None);
        assert_eq!(h.shards[shard].len, 1, "name-2 is still there");
    }

    #[test]
    fn a_slot_is_32_bytes() {
        assert_eq!(std::mem::size_of::<Slot>(), 32);
        assert_eq!(std::mem::size_of::<Holders>(), 16);
    }
}
