//! How the store's listing finds its names: which parts of the pattern it asks the
//! trigram index for, and whether it may walk the names in order.
//!
//! A listing's page is the first names in name order that contain a pattern.
//! PostgreSQL finds them one of two ways, and picks by its estimate of how common the
//! pattern is:
//!
//! - It **walks** the names' btree in order and tests each, until the page is full:
//!   quick when matches are everywhere, but it walks past every name before the first
//!   match. PostgreSQL takes matches to be spread evenly; names are not. Over 10M
//!   names `bulkPPPPP-fileFFFFF.dat`, `bulk0077`'s 100,000 matches all sort after 77%
//!   of the names, and its first page took 3.1 s.
//! - It asks the **trigram index** (pg_trgm in a GIN index) for all the names that
//!   hold each of the pattern's trigrams, intersects those lists, and reads and sorts
//!   the names left. A list costs its length to read however few names are left:
//!   every trigram of `bulk00777-file0004` but one is in 5-100% of those names, and
//!   its 10 matches took 0.57 s, 290 MB of lists read.
//!
//! [`Plan::new`] looks at a sample of the names (the one PostgreSQL keeps of the
//! index's lowercased names, up to 1,000, for planning; [`Sample`]):
//!
//! - A pattern no sample name holds is rare, and read through the index. The index
//!   is asked only for its rarest trigrams, rarest first (one that overlaps a chosen
//!   one by a letter only with the trigram between them), until no sample name holds
//!   them all, and then for those in at most [`CHEAP_SHARE`] of the names: the pieces
//!   of the pattern they make (`%0777%e000%`). The whole pattern is then tested on the
//!   few names the pieces leave (199, found in 14 ms, where all its trigrams took
//!   0.57 s). If the pieces are all its trigrams, the index is asked for the whole
//!   pattern.
//! - A pattern whose sample matches all sort far after the listing's start, so far
//!   that walking to them (weighed by how likely the sample makes it that they are
//!   bunched there, not spread evenly) would cost more than reading all its matches,
//!   is listed through the index, never by a walk (`bulk0077`: 0.6 s).
//! - For a page (the first one above all, which a user waits for), a pattern that the
//!   sample shows in at least [`MIN_WALK_HOLDERS`] of its names after the page's
//!   start, spread rather than bunched late, is found by **walking**: the walk is then
//!   sure to be short (a word in 1.2% of 10M names: 5,563 names walked, 4-17 ms),
//!   where reading all the matches through the index costs their number (121,046:
//!   0.35 s). PostgreSQL's own estimate, from the same statistics, walked for such
//!   words after every `ANALYZE` tried by hand, but in one run of the benchmark it
//!   read that word's matches through the index (310 ms). [`Plan::for_page`].
//! - Otherwise PostgreSQL chooses.
//!
//! A listing's first page, unless its plan insists on the walk or the sample shows the
//! matches surely bunched late, walks the names in order, [`super::store::FIRST_WALK`]
//! of them and then four times as many each step while it finds none, up to as many as
//! the index's way would cost ([`Plan::first_walk`]), and leaves the rest to the
//! listing's cursor, from where it ended, with this plan.
//!
//! Pure: no database, unit-tested below.

use memchr::memmem;

/// Fewest names a sample may hold to be trusted (PostgreSQL keeps up to 1,000 for the
/// store's index, its statistics target; 100 by default).
const MIN_SAMPLE: usize = 100;

/// A trigram in more than this share of the names never narrows: its list costs half
/// the index's names to read, for at most half the names to test.
const USEFUL_SHARE: f64 = 0.5;

/// If the rare trigrams leave more than this share of the names to test (or twice the
/// pattern's own share, if more), the whole pattern is asked for instead: testing a
/// name costs a read of the table, hundreds of times what a trigram list's entry
/// costs.
const MOST_LEFT: f64 = 0.01;

/// Once a rare pattern's pieces leave none of the sample's names, a trigram in at
/// most this share of the names is still asked for: the sample cannot tell how many
/// names the pieces leave to test (up to a few in a thousand), and each one the
/// trigram keeps out saves a read of the table (4-13 µs here), where its list costs at
/// most this share of the names at about 8 ns an entry (under 2 ms over 10M names).
/// Over 10M names made of words, `wcug` by its rarest trigram left 3,936 names to
/// test, 17-54 ms; by both, 122, 2-4 ms (docs/PERFORMANCE.md).
const CHEAP_SHARE: f64 = 0.02;

/// The most, as a share of the names, that the lists of the trigrams asked for only
/// because they are cheap ([`CHEAP_SHARE`]) may hold in all.
const CHEAP_LISTS: f64 = 0.05;

/// Trigrams of a pattern weighed against the sample, from its start: each costs a
/// search of every sample name, and a pattern may be 4,096 bytes long.
const MOST_TRIGRAMS: usize = 64;

/// Names a walk in name order passes in the time that the trigram index's way takes
/// to read and sort one match (about 10 here: 0.4 µs a name walked, 3-5 µs a match),
/// with a margin for how little a sample tells.
const WALKED_PER_MATCH: f64 = 50.0;

/// Fewest names of the sample (after a page's start) that must hold a pattern for the
/// page to be found by a walk ([`Plan::for_page`]). A walk's length is the inverse of
/// the pattern's share, so a share guessed too high costs much more than one guessed
/// too low: with 5 of 1,000 sample names, the share is taken as 4 in 1,000, and a walk
/// for 32 names expected to pass 8,000.
const MIN_WALK_HOLDERS: usize = 5;

/// Names a first page's walk passes in the time that the trigram index's way takes to
/// read and test one name it finds (a candidate: a name that holds every trigram asked
/// for, whether or not it holds the pattern). Over 10M names made of words, 121,046
/// candidates of `tpmu tpmu` took 250 ms and 45,991 of `99999` 127 ms (2-3 µs each,
/// a read of the table's page), where a walk costs 0.5-0.8 µs a name (finding its end,
/// then testing each): docs/PERFORMANCE.md.
const WALKED_PER_CANDIDATE: f64 = 3.0;

/// Most rows a listing's first page walks in name order, in steps four times longer
/// each ([`super::store::FIRST_WALK`] first), while none of its matches is found
/// ([`Plan::first_walk`]): 26 ms over 10M names in session 18, on a VM that was twice
/// as slow the day before. A pattern in one name in 50,000 is found within it nearly
/// three times in four.
pub const MOST_FIRST_WALK: i64 = 65_536;

/// How many times cheaper than reading every match through the index (counted in
/// names walked, [`WALKED_PER_MATCH`] a match) a page's walk must look before the plan
/// insists on it.
const WALK_MARGIN: f64 = 4.0;

/// A listing's plan: see the module docs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// A LIKE pattern of the pattern's rare pieces (`%0777%e000%`), to ask the trigram
    /// index for instead of the whole pattern, which is then tested on the names left.
    pub pieces: Option<String>,
    /// Read all the matches through the trigram index and sort them: never walk the
    /// names in order.
    pub through_index: bool,
    /// Walk the names in order, testing each, until the page is full: never read the
    /// matches through the trigram index ([`Plan::for_page`]).
    pub walk: bool,
    /// The sample's matches all sort far after the listing's start (and so
    /// `through_index`).
    pub bunched_late: bool,
    /// Most rows a listing's first page walks in name order, testing each, before the
    /// rest is read as the plan has it from where the walk ended; 0 for none (the
    /// plan walks anyway, or the sample shows the matches far from the start in at
    /// least [`MIN_WALK_HOLDERS`] names: the walk would find none). Between
    /// [`super::store::FIRST_WALK`] and [`MOST_FIRST_WALK`]: as many as the index's
    /// way costs in names walked ([`WALKED_PER_CANDIDATE`] a candidate), so that a
    /// pattern rare among names that hold its trigrams (`tpmu tpmu`: 182 names of
    /// 121,046 with `tpmu`) is found by the walk, not after all its candidates are
    /// read, and one whose trigrams are rare is not walked for long.
    pub first_walk: i64,
}

impl Plan {
    /// The plan for the names after `after` that contain `pattern` (lowercased), by
    /// what `sample` shows of the names.
    pub fn new(pattern: &str, after: &str, sample: &Sample) -> Plan {
        Plan::make(pattern, after, sample, None)
    }

    /// The plan for one page of at most `page` names after `after`: [`Plan::new`]'s,
    /// or, where that leaves the way to PostgreSQL, a walk of the names in order if
    /// the sample shows the pattern common enough after `after` that the walk is sure
    /// to be short and reading all the matches is not ([`Sample::walk_pays`]).
    pub fn for_page(pattern: &str, after: &str, sample: &Sample, page: usize) -> Plan {
        Plan::make(pattern, after, sample, Some(page))
    }

    /// [`Plan::new`], or with a `page`, [`Plan::for_page`].
    fn make(pattern: &str, after: &str, sample: &Sample, page: Option<usize>) -> Plan {
        let bounded = |first_walk: i64| if page.is_some() { first_walk } else { 0 };
        if sample.len() < MIN_SAMPLE || pattern.is_empty() {
            return Plan { first_walk: bounded(super::store::FIRST_WALK), ..Plan::default() };
        }
        let holders = sample.holders(pattern);
        let share = sample.share(&holders);
        // With pieces, the sample's names that hold every trigram in them.
        let (mut plan, candidates) = if share == 0.0 {
            // Rare: through the index, by its pieces or whole, if it has a trigram to
            // ask for; without one, the index cannot serve it.
            let (pieces, candidates) = narrow(pattern, sample, share).unzip();
            let through_index = pieces.is_some() || !trigrams(pattern).is_empty();
            (Plan { through_index, pieces, ..Plan::default() }, candidates)
        } else if !sample.bunched_late(&holders, share, after) {
            let walk = page.is_some_and(|page| sample.walk_pays(&holders, after, page));
            (Plan { walk, ..Plan::default() }, None)
        } else {
            let (pieces, candidates) = narrow(pattern, sample, share).unzip();
            (Plan { pieces, through_index: true, bunched_late: true, ..Plan::default() }, candidates)
        };
        // One or a few sample names far in are weak evidence that the matches are all
        // there: `zvvdfiw zvvdfiw`, in one name of 700 throughout, was read through its
        // 1M candidates (0.8 s) because the sample's one match was 60% in.
        let surely_late = plan.bunched_late && sample.found_after(&holders, after) >= MIN_WALK_HOLDERS;
        if !plan.walk && !surely_late {
            plan.first_walk = bounded(sample.first_walk(pattern, candidates.as_deref()));
        }
        plan
    }
}

/// Lowercased names with the share of all names each one stands for: PostgreSQL's
/// most common values, then its histogram (in name order).
#[derive(Debug, Clone, Default)]
pub struct Sample {
    names: Vec<(String, f64)>,
    total: f64,
    /// Where the names in name order begin.
    sorted_from: usize,
    /// How many names there are, as PostgreSQL last counted them (0 if unknown).
    rows: f64,
}

impl Sample {
    /// A sample of `names` in no order, each with its weight (the share of all names
    /// it stands for).
    #[cfg(test)]
    fn new(names: Vec<(String, f64)>) -> Sample {
        let total = names.iter().map(|(_, w)| w).sum();
        Sample { sorted_from: names.len(), names, total, rows: 0.0 }
    }

    /// PostgreSQL's statistics of a column of `rows` rows (its estimate; negative if
    /// unknown): its most common values with their frequencies, then a histogram
    /// (values splitting the rest into equal shares).
    pub fn from_statistics(
        common: Vec<String>,
        frequencies: Vec<f32>,
        histogram: Vec<String>,
        rows: f64,
    ) -> Sample {
        let rest = (1.0 - frequencies.iter().map(|&f| f64::from(f)).sum::<f64>()).max(0.0);
        let each = rest / histogram.len().max(1) as f64;
        let common: Vec<(String, f64)> =
            common.into_iter().zip(frequencies.into_iter().map(f64::from)).collect();
        let sorted_from = common.len();
        let names: Vec<(String, f64)> =
            common.into_iter().chain(histogram.into_iter().map(|h| (h, each))).collect();
        let total = names.iter().map(|(_, w)| w).sum();
        Sample { names, total, sorted_from, rows: rows.max(0.0) }
    }

    /// Do the sample's names in name order after `after` that contain the pattern (its
    /// `holders`, `share` of all names) come so late that a walk from `after` would
    /// likely cost more than reading all the matches through the trigram index? (The
    /// sample's order is that of the lowercased names: the names' own, but for
    /// capitals.)
    ///
    /// The sample's first match lies a share `before` of the names in. Either the
    /// matches are bunched there, and a walk passes that share of the names, or they
    /// are spread evenly and the walk is short: an even spread leaves all `k` sample
    /// matches after that place with chance `(1 - before)^k`, and the bunching explains
    /// it for sure, so, from even odds, the matches are bunched with chance
    /// `1 / (1 + (1 - before)^k)`. The walk's cost is weighed by that chance. With
    /// one match 60% in (a pattern in 0.07% of 3M names, where a hard test of `(1 -
    /// before)^k < 1/4` took it for spread), its first page took 0.47-0.61 s by the
    /// walk and 24 ms through the index.
    fn bunched_late(&self, holders: &[bool], share: f64, after: &str) -> bool {
        let rest = self.after(holders, after);
        let Some(first) = rest.iter().position(|h| *h) else { return false };
        let before = first as f64 / rest.len() as f64;
        let found = rest.iter().filter(|h| **h).count();
        let bunched = 1.0 / (1.0 + (1.0 - before).powi(found as i32));
        bunched * before > WALKED_PER_MATCH * share
    }

    /// How many of the sample's names after `after` are marked in `holders`.
    fn found_after(&self, holders: &[bool], after: &str) -> usize {
        self.after(holders, after).iter().filter(|h| **h).count()
    }

    /// [`Plan::first_walk`] for `pattern` (lowercased): [`WALKED_PER_CANDIDATE`] names
    /// for each name that holds every trigram the index is asked for (the share of the
    /// sample's names that do, of PostgreSQL's count of the names), within its bounds.
    /// Those names are `candidates` where the index is asked for the pattern's pieces
    /// ([`narrow`] found them), else the names holding all of its trigrams; all names
    /// if it has none.
    fn first_walk(&self, pattern: &str, candidates: Option<&[bool]>) -> i64 {
        let candidates = match candidates {
            Some(held) => self.share(held),
            None => {
                let asked = trigrams(pattern);
                let mut all = vec![true; self.names.len()];
                for &i in &asked {
                    all.iter_mut().zip(self.holders(&pattern[i..i + 3])).for_each(|(a, h)| *a &= h);
                }
                if asked.is_empty() { 1.0 } else { self.share(&all) }
            }
        };
        let rows = WALKED_PER_CANDIDATE * candidates * self.rows;
        (rows as i64).clamp(super::store::FIRST_WALK, MOST_FIRST_WALK)
    }

    /// Would walking the names in order from `after` fill a page of `page` names with
    /// names the sample marks in `holders` surely and much sooner than reading all of
    /// those after `after` through the index? Only if the sample's names after `after`
    /// hold at least [`MIN_WALK_HOLDERS`]; their share is then taken low, as `found -
    /// 1` of them, and the walk must look [`WALK_MARGIN`] times cheaper. Whether they
    /// are bunched is [`Sample::bunched_late`]'s question, asked first.
    fn walk_pays(&self, holders: &[bool], after: &str, page: usize) -> bool {
        let rest = self.after(holders, after);
        let found = rest.iter().filter(|h| **h).count();
        if found < MIN_WALK_HOLDERS || self.rows == 0.0 {
            return false;
        }
        let walked = page as f64 * rest.len() as f64 / (found - 1) as f64;
        let matches = self.rows * found as f64 / (self.names.len() - self.sorted_from) as f64;
        walked * WALK_MARGIN < WALKED_PER_MATCH * matches
    }

    /// Of `holders` (one mark per sample name), those of the names in name order
    /// after `after` (compared lowercased, as the sample's names are).
    fn after<'h>(&self, holders: &'h [bool], after: &str) -> &'h [bool] {
        let after = after.to_ascii_lowercase();
        let start = self.names[self.sorted_from..].partition_point(|(n, _)| *n <= after);
        &holders[self.sorted_from + start..]
    }

    /// How many names the sample holds.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether the sample holds no names (no statistics yet).
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Which names of the sample contain `text`.
    fn holders(&self, text: &str) -> Vec<bool> {
        let finder = memmem::Finder::new(text.as_bytes());
        self.names.iter().map(|(n, _)| finder.find(n.as_bytes()).is_some()).collect()
    }

    /// The share of all names that the sample's names marked in `which` stand for.
    fn share(&self, which: &[bool]) -> f64 {
        let held: f64 = self.names.iter().zip(which).filter(|(_, in_it)| **in_it).map(|((_, w), _)| w).sum();
        if self.total > 0.0 { held / self.total } else { 0.0 }
    }
}

/// A LIKE pattern (`%0777%e000%`) that every name containing `pattern` (lowercased,
/// held by `share` of the names as the `sample` shows them) matches, made of
/// `pattern`'s rare trigrams, rarest first, until the sample's names that hold them all
/// are no more than those that hold the pattern, and then its cheap ones
/// ([`CHEAP_SHARE`], [`CHEAP_LISTS`]); `None` to ask the index for the whole pattern.
/// With it, which of the sample's names hold every trigram chosen (the index's
/// candidates, for [`Sample::first_walk`]).
///
/// A trigram here is three ASCII letters or digits in a row (pg_trgm also makes
/// trigrams of word boundaries, which the whole pattern still has). Trigrams that
/// overlap go in one piece (`077` and `777` make `0777`), and pieces are apart in the
/// pattern, so that `%piece%piece%` holds wherever the pattern does; a trigram that
/// would overlap a chosen one by a letter without being next to it is passed over.
/// Only the first [`MOST_TRIGRAMS`] are weighed.
fn narrow(pattern: &str, sample: &Sample, share: f64) -> Option<(String, Vec<bool>)> {
    let bytes = pattern.as_bytes();
    let windows = trigrams(pattern);
    if windows.len() < 2 {
        return None;
    }
    let mut rarest: Vec<(usize, Vec<bool>, f64)> = windows
        .iter()
        .map(|&i| {
            let holders = sample.holders(&pattern[i..i + 3]);
            let share = sample.share(&holders);
            (i, holders, share)
        })
        .collect();
    rarest.sort_by(|a, b| a.2.total_cmp(&b.2).then(a.0.cmp(&b.0)));
    let mut chosen: Vec<usize> = Vec::new();
    let mut left = vec![true; sample.len()];
    // The lists read since only the pattern's own names were left in the sample.
    let mut cheap = 0.0;
    // Rarest first; after each trigram chosen, from the rarest again: one passed over
    // for overlapping a chosen one by a letter may now join it through the trigram
    // between (`e00` and `004` of `file00042`, once `000` is chosen).
    'scan: loop {
        // Once only the pattern's own names are left (none, for a rare one), the
        // sample no longer tells what a trigram saves; only cheap ones are still
        // worth their lists.
        let narrowed = sample.share(&left) <= share;
        for (at, holders, in_names) in rarest.iter().filter(|(at, ..)| !chosen.contains(at)) {
            if *in_names > USEFUL_SHARE
                || (narrowed && (*in_names > CHEAP_SHARE || cheap + in_names > CHEAP_LISTS))
            {
                break 'scan;
            }
            let apart = |c: &usize| c.abs_diff(*at) != 2 || chosen.contains(&(c.min(at) + 1));
            if chosen.iter().all(apart) {
                chosen.push(*at);
                left.iter_mut().zip(holders).for_each(|(l, h)| *l &= *h);
                if narrowed {
                    cheap += in_names;
                }
                continue 'scan;
            }
        }
        break;
    }
    if chosen.len() == windows.len() || sample.share(&left) > MOST_LEFT.max(2.0 * share) {
        return None;
    }
    chosen.sort_unstable();
    let mut like = String::from("%");
    for (k, &at) in chosen.iter().enumerate() {
        match k.checked_sub(1).map(|p| chosen[p]) {
            Some(before) if before + 1 == at => like.push(char::from(bytes[at + 2])),
            Some(_) => {
                like.push('%');
                like.push_str(&pattern[at..at + 3]);
            }
            None => like.push_str(&pattern[at..at + 3]),
        }
    }
    like.push('%');
    Some((like, left))
}

/// Where `pattern`'s first [`MOST_TRIGRAMS`] trigrams begin: three ASCII letters or
/// digits in a row (see [`narrow`]).
fn trigrams(pattern: &str) -> Vec<usize> {
    let bytes = pattern.as_bytes();
    (0..bytes.len().saturating_sub(2))
        .filter(|&i| bytes[i..i + 3].iter().all(u8::is_ascii_alphanumeric))
        .take(MOST_TRIGRAMS)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::store::FIRST_WALK;

    /// 1,000 names as the store benchmark makes them: `bulkPPPPP-fileFFFFF.dat`, a
    /// thousand peers' numbers and ten thousand files' numbers, evenly spread.
    fn digit_names() -> Sample {
        let names = (0..1000)
            .map(|k| (format!("bulk{:05}-file{:05}.dat", 1 + k, 1 + (k * 7919) % 10_000), 0.001))
            .collect();
        Sample::new(names)
    }

    /// [`digit_names`] as PostgreSQL's histogram of a table of `rows` rows.
    fn digit_names_of(rows: f64) -> Sample {
        let mut names: Vec<String> = digit_names().names.into_iter().map(|(n, _)| n).collect();
        names.sort();
        Sample::from_statistics(Vec::new(), Vec::new(), names, rows)
    }

    /// Does `like` (only `%` as a wildcard) match `name`?
    fn like_matches(like: &str, name: &str) -> bool {
        let mut rest = name;
        for piece in like.split('%').filter(|p| !p.is_empty()) {
            match rest.find(piece) {
                Some(at) => rest = &rest[at + piece.len()..],
                None => return false,
            }
        }
        true
    }

    #[test]
    fn a_pattern_of_common_trigrams_is_narrowed_to_its_rare_ones() {
        let plan = Plan::new("bulk00777-file0004", "", &digit_names());
        assert!(plan.through_index, "{plan:?}");
        let like = plan.pieces.expect("narrowed");
        assert!(!like.contains("bul") && !like.contains("fil"), "common trigrams asked for: {like}");
        assert!(like.contains("777"), "the rarest trigram is left out: {like}");
        assert!(like_matches(&like, "bulk00777-file00042.dat"));
    }

    #[test]
    fn every_name_that_holds_the_pattern_matches_the_narrowed_one() {
        let sample = digit_names();
        for pattern in ["file00042", "bulk00777-file0004", "e00042", "k0012", "file0999", "00777-file0"] {
            let Some((like, _)) = narrow(pattern, &sample, 0.0) else { continue };
            for (before, after) in [("", ""), ("bulk00001-", ".dat"), ("x", "9")] {
                let name = format!("{before}{pattern}{after}");
                assert!(like_matches(&like, &name), "{name} does not match {like} (from {pattern})");
            }
        }
    }

    #[test]
    fn trigrams_one_letter_apart_are_never_two_pieces() {
        // `e00` and `004` are in no name, `000` in all: as `%e00%004%` the two rare
        // ones would miss `e0004` itself, since they share its middle `0`.
        let sample = Sample::new((0..200).map(|k| (format!("x000y{k:03}"), 1.0)).collect());
        let (like, _) = narrow("e0004", &sample, 0.0).expect("narrowed");
        assert!(like_matches(&like, "e0004"), "{like} misses the pattern itself");
        assert!(!like.contains("000"), "{like} asks for the common trigram");
    }

    #[test]
    fn a_trigram_one_letter_from_a_chosen_one_joins_it_through_the_one_between() {
        // `e00042`: `042` in 2% of the names, `000` in 10%, `004` in 12%, `e00` in 15%.
        // `042` and `004` leave 2% (names that hold both apart); `000` joins them once
        // `004` is chosen, and leaves none. Passed over for good, it left 2%, too many
        // to test, and the whole pattern was asked for: every list.
        let names = (0..1000)
            .map(|k| {
                let name = match k {
                    0..20 => "x042y004",
                    20..120 => "z000",
                    120..220 => "w004",
                    220..370 => "e00q",
                    _ => "plain",
                };
                (name.to_owned(), 0.001)
            })
            .collect();
        let (like, _) = narrow("e00042", &Sample::new(names), 0.0).expect("narrowed");
        assert_eq!(like, "%00042%");
        assert!(like_matches(&like, "e00042"));
    }

    #[test]
    fn a_long_pattern_is_narrowed_by_its_first_trigrams_only() {
        // 4,000 letters and digits: weighing each of its trigrams against the sample
        // would cost a listing hundreds of milliseconds of the server's time.
        let pattern: String =
            (0..4000).map(|i| char::from(b"0123456789qwxz"[(i * 7 + i / 13) % 14])).collect();
        let (like, _) = narrow(&pattern, &digit_names(), 0.0).expect("narrowed");
        assert!(like_matches(&like, &pattern), "{like}");
        assert!(like_matches(&like, &pattern[..MOST_TRIGRAMS + 2]), "{like} goes past the first trigrams");
    }

    #[test]
    fn a_pattern_the_sample_holds_is_asked_for_whole() {
        // In the sample: common enough that PostgreSQL may walk the names in order.
        assert_eq!(Plan::new("bulk00007", "", &digit_names()), Plan::default());
        assert_eq!(Plan::new("file", "", &digit_names()), Plan::default());
    }

    #[test]
    fn a_pattern_whose_trigrams_are_all_rare_is_asked_for_whole_through_the_index() {
        // Narrowing would ask for the same trigrams.
        let whole = Plan { through_index: true, ..Plan::default() };
        assert_eq!(Plan::new("qwxz", "", &digit_names()), whole);
        // Without a trigram the index cannot serve it: PostgreSQL's choice.
        assert_eq!(Plan::new("q-z", "", &digit_names()), Plan::default());
    }

    #[test]
    fn a_rare_words_cheap_trigrams_are_asked_for_beside_its_rarest() {
        // Names made of words: `wcug`'s `wcu` is in none of the sample's names, `cug`
        // in 1% of them, `ugx` in 3%. `wcu` alone leaves none of the sample, but the
        // sample cannot say how many of all the names it leaves to test; `cug` is
        // cheap enough to ask for, `ugx` is not.
        let names = (0..1000)
            .map(|k| {
                let word = match k {
                    _ if k % 100 == 7 => "acugb",
                    _ if k % 100 < 3 => "ugxab",
                    _ => "plain",
                };
                (format!("name{k:03} {word}.mp3"), 0.001)
            })
            .collect();
        let sample = Sample::new(names);
        let whole = Plan { through_index: true, ..Plan::default() };
        assert_eq!(Plan::new("wcug", "", &sample), whole, "both trigrams: the whole pattern");
        let plan = Plan::new("wcugx", "", &sample);
        assert_eq!(plan.pieces.as_deref(), Some("%wcug%"), "{plan:?}");
        assert!(plan.through_index);
    }

    #[test]
    fn too_small_a_sample_or_too_short_a_pattern_narrows_nothing() {
        let small = Sample::new((0..10).map(|k| (format!("bulk{k:05}"), 0.1)).collect());
        assert_eq!(Plan::new("bulk00777-file0004", "", &small), Plan::default());
        assert_eq!(Plan::new("bu", "", &digit_names()), Plan::default());
        assert_eq!(Plan::new("", "", &Sample::default()), Plan::default());
    }

    /// A histogram of 1,000 names in name order, `name000` to `name999`, where the
    /// ones for which `holds` is true end in `-x`.
    fn histogram(holds: impl Fn(usize) -> bool) -> Sample {
        histogram_of(1e7, holds)
    }

    /// [`histogram`], of a table PostgreSQL counted `rows` rows in.
    fn histogram_of(rows: f64, holds: impl Fn(usize) -> bool) -> Sample {
        let names = (0..1000).map(|k| format!("name{k:03}{}", if holds(k) { "-x" } else { "" })).collect();
        Sample::from_statistics(Vec::new(), Vec::new(), names, rows)
    }

    #[test]
    fn matches_bunched_far_into_the_names_are_never_walked_to() {
        // `bulk0077`'s: all after 77% of the names.
        let far = Plan::new("-x", "", &histogram(|k| (770..780).contains(&k)));
        assert!(far.through_index && far.bunched_late, "{far:?}");
        // One match only, but far: an even spread would put it there one time in ten.
        assert!(Plan::new("-x", "", &histogram(|k| k == 900)).through_index);
        // One match 60% in: an even spread would put it there 40 times in 100, but the
        // walk there costs so much more than reading the few matches (a tenth of a
        // percent of the names) that the index is the safer way.
        assert!(Plan::new("-x", "", &histogram(|k| k == 600)).through_index);
    }

    #[test]
    fn bunched_matches_are_read_through_their_rare_trigrams() {
        // `bulk0077` in names of peers 1 to 1,000, in name order: `bul`, `ulk`, `lk0`
        // and `k00` are in every name.
        let names =
            (1..=1000).map(|k| format!("bulk{k:05}-file{:05}.dat", 1 + (k * 7919) % 10_000)).collect();
        let plan = Plan::new("bulk0077", "", &Sample::from_statistics(Vec::new(), Vec::new(), names, 1e7));
        assert!(plan.through_index, "{plan:?}");
        let like = plan.pieces.expect("narrowed");
        assert!(!like.contains("bul") && !like.contains("k00"), "common trigrams asked for: {like}");
        assert!(like_matches(&like, "bulk00771-file00001.dat"), "{like}");
    }

    #[test]
    fn a_first_page_walks_as_far_as_the_index_would_cost_within_its_bounds() {
        // Names made of words: `tpmu` in a tenth of them, `tpmu tpmu` in none of the
        // sample's. The index can be asked only for `tpm` and `pmu`, which leave a
        // tenth of 10M names to read: the walk may go to its most.
        let words = |rows| {
            let names = (0..1000)
                .map(|k| format!("{:05} {} z{k}.mp3", k, if k % 10 == 3 { "tpmu" } else { "ab" }))
                .collect();
            Sample::from_statistics(Vec::new(), Vec::new(), names, rows)
        };
        let plan = Plan::for_page("tpmu tpmu", "", &words(1e7), 32);
        assert!(plan.through_index && !plan.walk, "{plan:?}");
        assert_eq!(plan.first_walk, MOST_FIRST_WALK, "{plan:?}");
        // Over 100,000 names, the index's candidates cost 30,000 names walked.
        assert_eq!(Plan::for_page("tpmu tpmu", "", &words(1e5), 32).first_walk, 30_000);
        // A pattern whose rare trigrams leave no sample name: the shortest walk.
        let rare = Plan::for_page("bulk00777-file0004", "", &digit_names_of(1e7), 32);
        assert!(rare.pieces.is_some(), "{rare:?}");
        assert_eq!(rare.first_walk, FIRST_WALK, "{rare:?}");
        // The plan for a cursor (all the rest) has no first page to walk.
        assert_eq!(Plan::new("tpmu tpmu", "", &words(1e7)).first_walk, 0);
    }

    #[test]
    fn only_matches_surely_bunched_late_are_not_walked_to_on_a_first_page() {
        // `bulk0077`'s ten sample names, all after 77%: the walk would find nothing.
        let far = Plan::for_page("-x", "", &histogram(|k| (770..780).contains(&k)), 32);
        assert!(far.bunched_late && far.first_walk == 0, "{far:?}");
        // One sample name 60% in is taken for bunched there, and the rest is read
        // through the index, but the first page walks first: `zvvdfiw zvvdfiw`, in one
        // name of 700 throughout, had its first entry after 0.8 s.
        let one = Plan::for_page("-x", "", &histogram(|k| k == 600), 32);
        assert!(one.bunched_late && one.through_index, "{one:?}");
        assert_eq!(one.first_walk, MOST_FIRST_WALK, "{one:?}");
        // A page the plan walks anyway.
        let spread = Plan::for_page("-x", "", &histogram(|k| k % 50 == 7), 32);
        assert!(spread.walk && spread.first_walk == 0, "{spread:?}");
    }

    #[test]
    fn matches_spread_evenly_or_near_the_start_are_left_to_postgresql() {
        assert_eq!(Plan::new("-x", "", &histogram(|k| k % 100 == 50)), Plan::default());
        assert_eq!(Plan::new("-x", "", &histogram(|k| (20..30).contains(&k))), Plan::default());
        // A common pattern: reading all its matches costs more than the walk.
        assert_eq!(Plan::new("-x", "", &histogram(|k| k >= 500)), Plan::default());
        // Bunched, but the listing goes on from just before them.
        assert_eq!(Plan::new("-x", "name769", &histogram(|k| (770..780).contains(&k))), Plan::default());
    }

    #[test]
    fn a_page_of_a_pattern_common_and_spread_over_the_names_is_found_by_a_walk() {
        // In 2% of 10M names, evenly: the first page's walk passes about 1,700 names;
        // reading all 200,000 matches through the index costs far more.
        let spread = histogram(|k| k % 50 == 7);
        assert_eq!(Plan::new("-x", "", &spread), Plan::default(), "the plan for all the matches");
        assert_eq!(Plan::for_page("-x", "", &spread, 32), Plan { walk: true, ..Plan::default() });
        assert!(Plan::for_page("-x", "name500", &spread, 1024).walk, "a later page");
        // With 5 of the sample's names: taken as 4 in 1,000, the walk is still short.
        assert!(Plan::for_page("-x", "", &histogram(|k| k % 200 == 3), 32).walk);
    }

    #[test]
    fn a_page_is_left_to_postgresql_where_a_walk_is_not_sure_to_be_short() {
        // Too few of the sample's names to trust the share: the walk grows as its
        // inverse, and a share of 0.015% took a walk of 1-8 s.
        // `-x` has no trigram: every name is the index's candidate, and the first
        // page walks as far as it may before PostgreSQL is left to choose.
        let bounded = |first_walk| Plan { first_walk, ..Plan::default() };
        for few in [1, 2, 4] {
            let plan = Plan::for_page("-x", "", &histogram(|k| k % 250 == 9 && k / 250 < few), 32);
            assert_eq!(plan, bounded(MOST_FIRST_WALK), "{few} of the sample's names");
        }
        // Common, but all before the page's start.
        assert_eq!(
            Plan::for_page("-x", "name500", &histogram(|k| k < 400 && k % 10 == 0), 32),
            bounded(MOST_FIRST_WALK)
        );
        // Few names in all: reading every match costs little.
        let small = histogram_of(1000.0, |k| k % 50 == 7);
        assert_eq!(Plan::for_page("-x", "", &small, 32), bounded(FIRST_WALK));
        // No count of the names.
        let unknown = histogram_of(-1.0, |k| k % 50 == 7);
        assert_eq!(Plan::for_page("-x", "", &unknown, 32), bounded(FIRST_WALK));
        // Bunched late: read through the index, as [`Plan::new`] has it.
        let late = Plan::for_page("-x", "", &histogram(|k| (770..780).contains(&k)), 32);
        assert!(late.through_index && !late.walk, "{late:?}");
    }

    #[test]
    fn statistics_weigh_common_values_by_their_frequency() {
        // Half the names are one common value; a trigram only it holds is in half.
        let sample = Sample::from_statistics(
            vec!["shared-0001.dat".into()],
            vec![0.5],
            (0..200).map(|k| format!("peer{k:04}-x.dat")).collect(),
            1e6,
        );
        let holders = sample.holders("sha");
        assert!((sample.share(&holders) - 0.5).abs() < 1e-9);
    }
}
