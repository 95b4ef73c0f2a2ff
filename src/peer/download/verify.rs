//! The threads that check pieces and put them in the file: hashers on every core, and
//! one writer (concurrent writes to one file spin on its inode's lock). A download with
//! one hasher (one piece to come, or one core) has it write too: no writer thread.

use std::sync::{Arc, Mutex, mpsc};

use anyhow::anyhow;

use super::source::Link;
use super::{Job, Shared, State};
use crate::content::merkle;
use crate::peer::partial;

/// A hashing thread: checks each piece against the layer and passes a good one on
/// (`good`: to the writer, or [`write_piece`] itself; false ends the thread); a bad one
/// marks its source bad, and undoes every piece it sent.
pub(super) fn hash_pieces(
    shared: &Shared,
    queue: &Mutex<mpsc::Receiver<Job>>,
    mut good: impl FnMut(Job) -> bool,
) {
    loop {
        let job = crate::lock(queue).recv();
        let Ok(job) = job else { return };
        let Job { piece, source, .. } = job;
        let skip = shared.lock().sources[source].bad.is_some();
        if !skip {
            let layer = shared.layer.get().expect("pieces are requested only once the layer is known");
            if merkle::piece_hash(&shared.geometry, &job.bytes) == layer[piece as usize] {
                if !good(job) {
                    return;
                }
                continue;
            }
        }
        let mut state = shared.lock();
        state.scheduler.release(piece, source);
        // Nothing more is taken from a source caught sending a bad piece.
        if !skip {
            let s = &mut state.sources[source];
            s.bad.get_or_insert(piece);
            if let Some(link) = &s.link {
                link.close();
            }
            // Nothing it sent is kept, not even pieces that matched: a source caught
            // lying is trusted with nothing. (Unless the file is already complete: then
            // every piece is proven, and the lie changed nothing.)
            if !shared.stopped() {
                let theirs: Vec<u32> = (0..state.sent_by.len() as u32)
                    .filter(|&i| state.sent_by[i as usize] == Some(source))
                    .collect();
                for i in theirs {
                    state.sent_by[i as usize] = None;
                    state.scheduler.undo(i);
                    shared.offer(i, false);
                    let State { scheduler, partial, .. } = &mut *state;
                    if let Err(e) = partial.record(i, scheduler.have()) {
                        log::debug!("cannot record piece {i} of a partial download: {e}");
                    }
                }
                let s = &mut state.sources[source];
                (s.pieces, s.bytes) = (0, 0);
            }
        }
        if state.spare.len() < 16 {
            state.spare.push(job.bytes);
        }
        drop(state);
        shared.changed.notify_all();
    }
}

/// The writing thread: [`write_piece`] for each verified piece of the hashers.
pub(super) fn write_pieces(shared: &Shared, pieces: mpsc::Receiver<Job>) {
    for job in pieces {
        write_piece(shared, job);
    }
}

/// Writes a verified piece at its offset and records it, unless it is already in (an
/// endgame duplicate) or its source was caught lying meanwhile.
pub(super) fn write_piece(shared: &Shared, Job { piece, source, bytes }: Job) {
    let mut cancel: Vec<(Arc<Link>, (u32, u32))> = Vec::new();
    let skip = {
        let state = shared.lock();
        state.scheduler.have().get(piece) || state.sources[source].bad.is_some()
    };
    let written = if skip {
        Ok(())
    } else {
        partial::write_all_at(&shared.data, &bytes, shared.geometry.piece(piece).start)
    };
    let mut state = shared.lock();
    state.scheduler.release(piece, source);
    match written {
        Err(e) => state.local = Some(anyhow!(e).context("cannot write to the shared folder")),
        Ok(()) if !skip && state.sources[source].bad.is_none() && state.scheduler.done(piece) => {
            // Others were asked for it too (the endgame): a request of theirs
            // whose every piece is now in is not needed.
            for &other in state.scheduler.requesters(piece) {
                let Some(link) = &state.sources[other].link else { continue };
                if let Some((first, count)) = link.waiting_with(piece)
                    && (first..first + count).all(|i| state.scheduler.have().get(i))
                {
                    cancel.push((Arc::clone(link), (first, count)));
                }
            }
            state.sources[source].pieces += 1;
            state.sources[source].bytes += bytes.len() as u64;
            state.sent_by[piece as usize] = Some(source);
            shared.offer(piece, true);
            let State { scheduler, partial, .. } = &mut *state;
            if let Err(e) = partial.record(piece, scheduler.have()) {
                log::debug!("cannot record piece {piece} of a partial download: {e}");
            }
        }
        Ok(()) => {}
    }
    if state.spare.len() < 16 {
        state.spare.push(bytes);
    }
    drop(state);
    // Before the others are told: the last piece in ends the download, and then
    // the connections close.
    for (link, run) in cancel {
        link.cancel(run);
    }
    shared.changed.notify_all();
}
