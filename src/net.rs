//! Socket helpers shared by the two servers: deadlines that a slow sender cannot
//! stretch, a cap on connections, and a close that lets a final error reply arrive.

use std::io::{self, Read};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A reader over a socket that enforces deadlines on whole frames, not single reads.
///
/// A socket's read timeout restarts with every byte, so a client sending one byte a
/// second would never time out (slowloris). Here the caller says when a frame may
/// start ([`Timed::await_frame`]: an idle timeout for its first byte, then a read
/// timeout for the rest) or gives one fixed deadline ([`Timed::deadline`], for the
/// handshake); each read gets only the time that is left.
#[derive(Debug)]
pub struct Timed<'a> {
    stream: &'a TcpStream,
    phase: Phase,
    /// The socket's read timeout as last set, to skip redundant `setsockopt` calls.
    current: Option<Duration>,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Everything must arrive by this instant.
    Fixed(Instant),
    /// Waiting for a frame: its first byte within `idle`; then, from that byte, the
    /// rest by `deadline` (set when the first byte arrives).
    Frame { idle: Duration, read: Duration, deadline: Option<Instant> },
}

impl<'a> Timed<'a> {
    /// A reader that must finish whatever it reads by `deadline`.
    pub fn deadline(stream: &'a TcpStream, deadline: Instant) -> Timed<'a> {
        Timed { stream, phase: Phase::Fixed(deadline), current: None }
    }

    /// Starts waiting for the next frame: its first byte may take up to `idle`, the
    /// whole frame up to `read` after that.
    pub fn await_frame(&mut self, idle: Duration, read: Duration) {
        self.phase = Phase::Frame { idle, read, deadline: None };
    }

    fn set_timeout(&mut self, wanted: Duration) -> io::Result<()> {
        // A zero timeout means "none" to the OS: never ask for less than 1 ms.
        let wanted = wanted.max(Duration::from_millis(1));
        if self.current != Some(wanted) {
            self.stream.set_read_timeout(Some(wanted))?;
            self.current = Some(wanted);
        }
        Ok(())
    }
}

impl Read for Timed<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let timeout = match self.phase {
            Phase::Frame { idle, deadline: None, .. } => idle,
            Phase::Frame { deadline: Some(at), .. } | Phase::Fixed(at) => {
                at.checked_duration_since(Instant::now()).ok_or(io::ErrorKind::TimedOut)?
            }
        };
        self.set_timeout(timeout)?;
        let n = (&mut &*self.stream).read(buf)?;
        if let Phase::Frame { read, deadline: deadline @ None, .. } = &mut self.phase
            && n > 0
        {
            *deadline = Some(Instant::now() + *read);
        }
        Ok(n)
    }
}

/// Counts open connections against a maximum. Each accepted connection holds a
/// [`Slot`]; dropping it frees the place.
#[derive(Debug, Clone)]
pub struct Slots {
    open: Arc<AtomicUsize>,
    max: usize,
}

/// One connection's place in [`Slots`].
#[derive(Debug)]
pub struct Slot(Arc<AtomicUsize>);

impl Slots {
    /// Room for `max` connections.
    pub fn new(max: usize) -> Slots {
        Slots { open: Arc::new(AtomicUsize::new(0)), max }
    }

    /// Takes a place, or `None` if all `max` are taken.
    pub fn take(&self) -> Option<Slot> {
        let taken =
            self.open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.max).then_some(n + 1));
        taken.ok().map(|_| Slot(Arc::clone(&self.open)))
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Most bytes [`close_gently`] reads and discards before closing.
const DRAIN_LIMIT: u64 = 1 << 20;

/// Closes a connection so that the reply just written still reaches the client.
///
/// Closing a socket with unread input makes the kernel send a reset, and a reset can
/// destroy the reply in flight before the client reads it. So: no more writes (the
/// client sees the end after our reply), then read and discard what the client still
/// sends, up to [`DRAIN_LIMIT`] bytes or `patience`, then close.
pub fn close_gently(stream: &TcpStream, patience: Duration) {
    let _ = stream.shutdown(Shutdown::Write);
    let mut rest = Timed::deadline(stream, Instant::now() + patience).take(DRAIN_LIMIT);
    let _ = io::copy(&mut rest, &mut io::sink());
}
