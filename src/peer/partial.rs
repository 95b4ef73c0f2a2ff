//! Partial downloads kept in the shared folder, and what is known about them: which
//! of their pieces are verified, and how old they are.
//!
//! A partial download of the content with root `R` is two files:
//!
//! - `.peerdex-part-<R in hex>`: the data, at its full size (sparse until written),
//!   each verified piece at its place;
//! - `.peerdex-part-<R in hex>.pieces`: its record, written once the piece layer is
//!   known and updated a bit at a time:
//!
//! ```text
//! +---------------------------+---------+------------+--------------------+----------------------+
//! | "peerdex pieces v1\n" (18) | size u64 | pieces u32 | layer: 32 x pieces | bitfield: pieces / 8 |
//! +---------------------------+---------+------------+--------------------+----------------------+
//! ```
//!
//! A piece's bit is set only after its bytes, verified against the layer, are written,
//! and the layer is checked against the root whenever the record is read; the pieces
//! it lists are hashed again when a download resumes, so a record that outlived its
//! data (a crash, a power failure) costs a fetch, never a wrong byte. Neither file is
//! ever listed or served by name (the prefix is reserved).
//!
//! Partials are bounded: the oldest are deleted when a download needs their space
//! ([`evict`]), and those untouched for [`MAX_AGE`] are deleted when a peer starts
//! ([`remove_stale`]).

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::content::Bitfield;
use crate::content::merkle::{self, Geometry, Hash};
use crate::name::TEMP_PREFIX;

/// Partials untouched for this long are removed when the peer starts: a week is long
/// enough for any interrupted download to be taken up again.
pub const MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// The suffix of a partial's record of pieces.
const RECORD_SUFFIX: &str = ".pieces";

/// The first bytes of a record.
const RECORD_MAGIC: &[u8; 18] = b"peerdex pieces v1\n";

/// The path of the partial of content `root` in `folder`.
pub fn data_path(folder: &Path, root: &Hash) -> PathBuf {
    folder.join(format!("{TEMP_PREFIX}{}", hex::encode(root)))
}

/// The path of the record of pieces of the partial at `data`.
pub fn record_path(data: &Path) -> PathBuf {
    let mut name = data.as_os_str().to_owned();
    name.push(RECORD_SUFFIX);
    PathBuf::from(name)
}

/// Partials being written now, by root, so that two downloads in one process never
/// write the same one.
pub type InUse = Arc<Mutex<HashSet<Hash>>>;

/// A partial download claimed by one download: its data file and, once the piece layer
/// is known, its record. Dropped without [`Partial::commit`], it stays in the folder
/// if it holds a verified piece, and goes otherwise.
#[derive(Debug)]
pub struct Partial {
    data_path: PathBuf,
    data: File,
    root: Hash,
    geometry: Geometry,
    /// The record, once [`Partial::start`] wrote it.
    record: Option<File>,
    /// Layer and verified pieces read from an earlier record, until `start` takes them.
    earlier: Option<(Vec<Hash>, Bitfield)>,
    /// Any piece verified (now or before): worth keeping.
    holds_any: bool,
    in_use: InUse,
    /// Set once committed: nothing left to remove on drop.
    done: bool,
}

impl Partial {
    /// Claims and opens (creating it if need be) the partial of `root` and `size` in
    /// `folder`; `None` if another download in this process holds it. An earlier
    /// record is read, its layer checked against the root and its pieces hashed again;
    /// a record that does not check out is ignored.
    pub fn open(folder: &Path, root: &Hash, size: u64, in_use: &InUse) -> io::Result<Option<Partial>> {
        if !crate::lock(in_use).insert(*root) {
            return Ok(None);
        }
        let data_path = data_path(folder, root);
        let geometry = Geometry::for_size(size);
        // From here on, dropping `partial` gives the claim back.
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true);
        #[cfg(unix)]
        {
            // Never follow a symlink planted under this name: we would write through it.
            use std::os::unix::fs::OpenOptionsExt;
            options.custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32);
        }
        let opened = options.open(&data_path).and_then(|f| {
            if f.metadata()?.is_file() {
                Ok(f)
            } else {
                Err(io::Error::other(format!("{} is not a regular file", data_path.display())))
            }
        });
        let data = match opened {
            Ok(data) => data,
            Err(e) => {
                crate::lock(in_use).remove(root);
                return Err(e);
            }
        };
        let mut partial = Partial {
            data_path,
            data,
            root: *root,
            geometry,
            record: None,
            earlier: None,
            holds_any: false,
            in_use: Arc::clone(in_use),
            done: false,
        };
        if let Some((layer, mut have)) = read_record(&record_path(&partial.data_path), root, size) {
            // Only what still hashes right counts.
            let mut buf = Vec::new();
            for i in have.clone().ones() {
                let r = geometry.piece(i);
                buf.resize((r.end - r.start) as usize, 0);
                let good = merkle::read_exact_at(&partial.data, &mut buf, r.start).is_ok()
                    && merkle::piece_hash(&geometry, &buf) == layer[i as usize];
                if !good {
                    have.unset(i);
                }
            }
            partial.holds_any = !have.is_empty();
            partial.earlier = Some((layer, have));
        }
        Ok(Some(partial))
    }

    /// The layer and the verified pieces of an earlier attempt, if any.
    pub fn earlier(&self) -> Option<&(Vec<Hash>, Bitfield)> {
        self.earlier.as_ref()
    }

    /// The data file, for reading and writing at offsets.
    pub fn file(&self) -> &File {
        &self.data
    }

    /// Starts (or continues) the record with `layer` (checked against the root by the
    /// caller) and `have`, and gives the data file its full size. A one-piece file
    /// gets no record.
    pub fn start(&mut self, layer: &[Hash], have: &Bitfield) -> io::Result<()> {
        self.data.set_len(self.geometry.size)?;
        if self.geometry.pieces() == 1 {
            // Nothing to resume part of: a one-piece file is whole or nothing. (This
            // spares small files a record's creation and removal.)
            return Ok(());
        }
        let path = record_path(&self.data_path);
        let mut bytes =
            Vec::with_capacity(RECORD_MAGIC.len() + 12 + layer.len() * 32 + have.as_bytes().len());
        bytes.extend_from_slice(RECORD_MAGIC);
        bytes.extend_from_slice(&self.geometry.size.to_be_bytes());
        bytes.extend_from_slice(&(layer.len() as u32).to_be_bytes());
        for h in layer {
            bytes.extend_from_slice(h);
        }
        bytes.extend_from_slice(have.as_bytes());
        let mut options = OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32);
        }
        let mut record = options.open(&path)?;
        record.write_all(&bytes)?;
        self.record = Some(record);
        self.earlier = None;
        Ok(())
    }

    /// Records whether piece `i` is verified and written, as `have` (every verified
    /// piece) says. Call with the bitfield's lock held, so that two pieces sharing a
    /// byte cannot undo each other.
    pub fn record(&mut self, i: u32, have: &Bitfield) -> io::Result<()> {
        self.holds_any = !have.is_empty();
        let Some(record) = &self.record else { return Ok(()) };
        let at = RECORD_MAGIC.len() as u64 + 12 + u64::from(have.len()) * 32 + u64::from(i / 8);
        write_all_at(record, &have.as_bytes()[(i / 8) as usize..=(i / 8) as usize], at)
    }

    /// Deletes the partial and its record (a download that failed for a local reason,
    /// such as a full disk: what it holds cannot be kept there anyway).
    pub fn discard(mut self) {
        self.holds_any = false;
    }

    /// Gives the complete, verified partial the name `to` (never over an existing file:
    /// `AlreadyExists`) and removes its record.
    pub fn commit(mut self, to: &Path) -> io::Result<fs::Metadata> {
        self.data.flush()?;
        // `renameat2(RENAME_NOREPLACE)` where the kernel and filesystem have it, else a
        // hard link and an unlink: either fails if `to` exists. On failure the partial
        // stays where it is (`keep` disarms the delete-on-drop of `TempPath`).
        let data = tempfile::TempPath::try_from_path(&self.data_path)?;
        if let Err(e) = data.persist_noclobber(to) {
            let _ = e.path.keep();
            return Err(e.error);
        }
        let _ = remove_if_there(&record_path(&self.data_path));
        self.done = true;
        self.data.metadata()
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.done && !self.holds_any {
            let _ = remove(&self.data_path);
        }
        crate::lock(&self.in_use).remove(&self.root);
    }
}

/// Writes all of `buf` at byte `at` of `file`, leaving its position alone.
pub fn write_all_at(file: &File, buf: &[u8], at: u64) -> io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::write_all_at(file, buf, at)
    }
    #[cfg(windows)]
    {
        let mut done = 0;
        while done < buf.len() {
            done += std::os::windows::fs::FileExt::seek_write(file, &buf[done..], at + done as u64)?;
        }
        Ok(())
    }
}

/// The layer and verified pieces in the record at `path`, if it is whole, for this
/// size, and its layer matches `root`.
fn read_record(path: &Path, root: &Hash, size: u64) -> Option<(Vec<Hash>, Bitfield)> {
    let bytes = fs::read(path).ok()?;
    let rest = bytes.strip_prefix(RECORD_MAGIC.as_slice())?;
    let (head, rest) = rest.split_at_checked(12)?;
    let recorded_size = u64::from_be_bytes(head[..8].try_into().ok()?);
    let pieces = u32::from_be_bytes(head[8..].try_into().ok()?);
    let geometry = Geometry::for_size(size);
    if recorded_size != size || pieces != geometry.pieces() {
        return None;
    }
    let (layer, bits) = rest.split_at_checked(pieces as usize * 32)?;
    let layer: Vec<Hash> = layer.chunks_exact(32).map(|h| h.try_into().expect("32 bytes")).collect();
    merkle::check_layer(&geometry, &layer, root).ok()?;
    Some((layer, Bitfield::from_bytes(pieces, bits)?))
}

fn remove_if_there(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Removes the partial at `data` and its record.
pub fn remove(data: &Path) -> io::Result<()> {
    remove_if_there(&record_path(data))?;
    remove_if_there(data)
}

/// Bytes a file takes on disk (a partial is sparse until its pieces arrive).
fn allocated(meta: &fs::Metadata) -> u64 {
    #[cfg(unix)]
    {
        std::os::unix::fs::MetadataExt::blocks(meta).saturating_mul(512).min(meta.len())
    }
    #[cfg(not(unix))]
    {
        meta.len()
    }
}

/// The partials in `folder` (data files, not records): (path, root, bytes on disk,
/// last modified).
fn partials(folder: &Path) -> io::Result<Vec<(PathBuf, Hash, u64, SystemTime)>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(folder)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(hex) = name.to_str().and_then(|n| n.strip_prefix(TEMP_PREFIX)) else { continue };
        let Some(root) = hex::decode(hex).ok().and_then(|b| Hash::try_from(b).ok()) else { continue };
        let meta = entry.metadata()?;
        if meta.is_file() {
            found.push((
                entry.path(),
                root,
                allocated(&meta),
                meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            ));
        }
    }
    Ok(found)
}

/// Deletes the oldest partials in `folder`, except those in `in_use`, until at least
/// `needed` bytes are freed. If deleting them all would not free that much, deletes
/// none (nothing is lost for a download that cannot fit anyway). Returns the bytes
/// freed and how many partials were deleted.
pub fn evict(folder: &Path, needed: u64, in_use: &HashSet<Hash>) -> io::Result<(u64, usize)> {
    let mut candidates: Vec<_> = partials(folder)?.into_iter().filter(|p| !in_use.contains(&p.1)).collect();
    if candidates.iter().map(|p| p.2).sum::<u64>() < needed {
        return Ok((0, 0));
    }
    candidates.sort_by_key(|p| p.3);
    let (mut freed, mut deleted) = (0, 0);
    for (path, _, len, _) in candidates {
        if freed >= needed {
            break;
        }
        remove(&path)?;
        freed += len;
        deleted += 1;
    }
    Ok((freed, deleted))
}

/// Deletes every file with the temporaries' prefix in `folder` last modified more than
/// `max_age` ago: partials, their records, and temporaries a crash left. Returns how
/// many were deleted.
pub fn remove_stale(folder: &Path, max_age: Duration) -> io::Result<usize> {
    let Some(cutoff) = SystemTime::now().checked_sub(max_age) else { return Ok(0) };
    let mut deleted = 0;
    for entry in fs::read_dir(folder)? {
        let entry = entry?;
        if !entry.file_name().to_str().is_some_and(|n| n.starts_with(TEMP_PREFIX)) {
            continue;
        }
        let meta = entry.metadata()?;
        if meta.is_file() && meta.modified().is_ok_and(|t| t < cutoff) {
            remove_if_there(&entry.path())?;
            deleted += 1;
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::Tree;

    fn content(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn a_record_keeps_only_pieces_that_still_hash_right() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = content(100_000); // 7 pieces of 16 KiB
        let tree = Tree::of_bytes(&bytes);
        let in_use = InUse::default();
        let mut p = Partial::open(dir.path(), &tree.root, 100_000, &in_use).unwrap().unwrap();
        assert!(p.earlier().is_none());
        assert!(Partial::open(dir.path(), &tree.root, 100_000, &in_use).unwrap().is_none(), "claimed");
        let mut have = Bitfield::empty(7);
        p.start(&tree.layer, &have).unwrap();
        for i in [0, 3, 6] {
            let r = tree.geometry.piece(i);
            write_all_at(p.file(), &bytes[r.start as usize..r.end as usize], r.start).unwrap();
            have.set(i);
            p.record(i, &have).unwrap();
        }
        drop(p);
        // Piece 3 is damaged behind the record's back.
        write_all_at(
            &File::options().write(true).open(data_path(dir.path(), &tree.root)).unwrap(),
            b"x",
            3 * 16384,
        )
        .unwrap();
        let p = Partial::open(dir.path(), &tree.root, 100_000, &in_use).unwrap().unwrap();
        let (layer, have) = p.earlier().unwrap();
        assert_eq!((layer, have.ones().collect::<Vec<_>>()), (&tree.layer, vec![0, 6]));
        drop(p);
        // A damaged record, or one for another size, is ignored.
        let record = record_path(&data_path(dir.path(), &tree.root));
        let good = fs::read(&record).unwrap();
        let mut damaged = good.clone();
        damaged[40] ^= 1;
        fs::write(&record, damaged).unwrap();
        let p = Partial::open(dir.path(), &tree.root, 100_000, &in_use).unwrap().unwrap();
        assert!(p.earlier().is_none(), "a layer that does not match the root");
        std::mem::forget(p); // keep the files for the next check
        in_use.lock().unwrap().clear();
        fs::write(&record, good).unwrap();
        assert!(Partial::open(dir.path(), &tree.root, 99_999, &in_use).unwrap().unwrap().earlier().is_none());
    }

    #[test]
    fn a_partial_without_a_verified_piece_is_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let in_use = InUse::default();
        let p = Partial::open(dir.path(), &[5; 32], 10, &in_use).unwrap().unwrap();
        drop(p);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        assert!(in_use.lock().unwrap().is_empty());
    }

    #[test]
    fn the_oldest_partials_go_first_and_those_in_use_stay() {
        let dir = tempfile::tempdir().unwrap();
        let old = SystemTime::now() - Duration::from_secs(3600);
        for (i, age) in [(1u8, 3), (2, 1), (3, 2)] {
            let data = data_path(dir.path(), &[i; 32]);
            fs::write(&data, vec![1u8; 8192]).unwrap();
            fs::write(record_path(&data), b"record").unwrap();
            let f = fs::File::options().write(true).open(&data).unwrap();
            f.set_modified(old - Duration::from_secs(age * 60)).unwrap();
        }
        fs::write(dir.path().join("keep.txt"), b"shared").unwrap();
        let in_use: HashSet<Hash> = [[3; 32]].into();
        // Partial 1 is the oldest; 3 is older than 2 but in use.
        assert_eq!(
            evict(dir.path(), 50_000, &in_use).unwrap(),
            (0, 0),
            "not enough to make room: none deleted"
        );
        assert_eq!(evict(dir.path(), 12_000, &in_use).unwrap(), (16384, 2));
        assert!(data_path(dir.path(), &[3; 32]).exists());
        assert_eq!(evict(dir.path(), 1, &in_use).unwrap(), (0, 0), "nothing left but what is in use");
        assert!(dir.path().join("keep.txt").exists());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 3, "partial 3, its record, keep.txt");
    }

    #[test]
    fn stale_temporaries_are_removed_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let stale = data_path(dir.path(), &[1; 32]);
        let fresh = data_path(dir.path(), &[2; 32]);
        for p in [&stale, &fresh, &dir.path().join("shared.txt")] {
            fs::write(p, b"x").unwrap();
        }
        let week_ago = SystemTime::now() - MAX_AGE - Duration::from_secs(60);
        fs::File::options().write(true).open(&stale).unwrap().set_modified(week_ago).unwrap();
        fs::File::options()
            .write(true)
            .open(dir.path().join("shared.txt"))
            .unwrap()
            .set_modified(week_ago)
            .unwrap();
        assert_eq!(remove_stale(dir.path(), MAX_AGE).unwrap(), 1);
        assert!(!stale.exists() && fresh.exists() && dir.path().join("shared.txt").exists());
    }
}
