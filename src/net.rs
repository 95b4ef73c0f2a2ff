//! Socket helpers shared by the two servers and their clients: one accept loop with
//! connection caps (in all and per client address), one way to connect and shake
//! hands, deadlines that a slow sender cannot stretch, and a close that lets a final
//! error reply arrive.

use std::collections::HashMap;
use std::io::{self, Read};
use std::net::{IpAddr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use log::warn;

use crate::wire::{self, PROTOCOL_VERSION, Service, Welcome};

/// Stack size of a connection thread. A connection needs a few KiB of stack; the
/// default 2 MiB of address space per thread would be wasted at thousands of peers.
pub const CONNECTION_STACK_SIZE: usize = 256 * 1024;

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
    /// rest within `read`.
    Frame { idle: Duration, read: Duration, got: Got },
}

/// How far a frame has come.
#[derive(Debug, Clone, Copy)]
enum Got {
    /// Nothing yet.
    Nothing,
    /// Its first bytes. Most frames arrive whole in the read that brings their first
    /// byte, so the clock is not read for them: a deadline is only set if another
    /// read is needed (a microsecond later, not a read timeout later).
    Started,
    /// More reads were needed: the rest must come by then.
    Until(Instant),
}

impl<'a> Timed<'a> {
    /// A reader that must finish whatever it reads by `deadline`.
    pub fn deadline(stream: &'a TcpStream, deadline: Instant) -> Timed<'a> {
        Timed { stream, phase: Phase::Fixed(deadline), current: None }
    }

    /// Starts waiting for the next frame: its first byte may take up to `idle`, the
    /// whole frame up to `read` after that.
    pub fn await_frame(&mut self, idle: Duration, read: Duration) {
        self.phase = Phase::Frame { idle, read, got: Got::Nothing };
    }

    /// The instant by which the frame being read must be complete, once one started.
    pub fn frame_deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Fixed(at) | Phase::Frame { got: Got::Until(at), .. } => Some(at),
            Phase::Frame { got: Got::Started, read, .. } => Some(Instant::now() + read),
            Phase::Frame { got: Got::Nothing, .. } => None,
        }
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
        let timeout = match &mut self.phase {
            Phase::Frame { idle, got: Got::Nothing, .. } => *idle,
            Phase::Frame { read, got: got @ Got::Started, .. } => {
                *got = Got::Until(Instant::now() + *read);
                *read
            }
            Phase::Frame { got: Got::Until(at), .. } | Phase::Fixed(at) => {
                at.checked_duration_since(Instant::now()).ok_or(io::ErrorKind::TimedOut)?
            }
        };
        self.set_timeout(timeout)?;
        let n = (&mut &*self.stream).read(buf)?;
        if let Phase::Frame { got: got @ Got::Nothing, .. } = &mut self.phase
            && n > 0
        {
            *got = Got::Started;
        }
        Ok(n)
    }
}

/// Writes as much of `buf` to `stream` as its reader takes in by `by`, and returns
/// how many bytes that was (all of them if it kept up). The socket's write timeout is
/// `usual` again afterwards. For a reply written while something scarce is held (a
/// listing's database cursor), so that it can be let go before waiting on a slow
/// reader for the rest.
pub fn write_by(stream: &TcpStream, buf: &[u8], by: Instant, usual: Duration) -> io::Result<usize> {
    let mut written = 0;
    let result = loop {
        let left = by.saturating_duration_since(Instant::now());
        if written == buf.len() || left.is_zero() {
            break Ok(written);
        }
        // A zero timeout means "none" to the OS: never ask for less than 1 ms.
        if let Err(e) = stream.set_write_timeout(Some(left.max(Duration::from_millis(1)))) {
            break Err(e);
        }
        match io::Write::write(&mut &*stream, &buf[written..]) {
            Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if is_timeout(&e) => break Ok(written),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    stream.set_write_timeout(Some(usual))?;
    result
}

/// The part of a client's address that per-address limits count: an IPv4 address
/// (an IPv4 client seen on a dual-stack socket included), or an IPv6 address's /64
/// network, since one IPv6 host is usually given a whole /64 and could otherwise
/// take a fresh address for every connection.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// Counts places against a maximum in all and a maximum per client address (see
/// [`client_key`]). A taken place is a [`Slot`]; dropping it frees the place.
///
/// Used for connections (by [`serve`]) and for uploads (by the file server).
#[derive(Debug, Clone)]
pub struct Slots {
    shared: Arc<SlotsShared>,
}

#[derive(Debug)]
struct SlotsShared {
    max: usize,
    per_ip: usize,
    /// Places taken: in all, and by client address (addresses with none are removed).
    taken: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// Why [`Slots::take`] refused a place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Full {
    /// All places are taken; the maximum.
    All(usize),
    /// This client address holds its maximum already.
    ThisAddress(usize),
}

/// One place in [`Slots`].
#[derive(Debug)]
pub struct Slot {
    shared: Arc<SlotsShared>,
    key: IpAddr,
}

impl Slots {
    /// Room for `max` places, at most `per_ip` of them for one client address.
    pub fn new(max: usize, per_ip: usize) -> Slots {
        Slots { shared: Arc::new(SlotsShared { max, per_ip, taken: Mutex::default() }) }
    }

    /// Takes a place for a client at `ip`, or says why there is none.
    pub fn take(&self, ip: IpAddr) -> Result<Slot, Full> {
        let key = client_key(ip);
        let mut taken = crate::lock(&self.shared.taken);
        let (all, by_ip) = &mut *taken;
        if *all >= self.shared.max {
            return Err(Full::All(self.shared.max));
        }
        if by_ip.get(&key).copied().unwrap_or(0) >= self.shared.per_ip {
            // Checked before the entry is made: a refusal leaves no entry behind.
            return Err(Full::ThisAddress(self.shared.per_ip));
        }
        *by_ip.entry(key).or_insert(0) += 1;
        *all += 1;
        Ok(Slot { shared: Arc::clone(&self.shared), key })
    }

    /// Places taken now.
    pub fn taken(&self) -> usize {
        crate::lock(&self.shared.taken).0
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut taken = crate::lock(&self.shared.taken);
        let (all, by_ip) = &mut *taken;
        *all -= 1;
        if let Some(mine) = by_ip.get_mut(&self.key) {
            *mine -= 1;
            if *mine == 0 {
                by_ip.remove(&self.key);
            }
        }
    }
}

/// How many connections a server takes: in all, and from one client address.
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    /// Connections open at once.
    pub max: usize,
    /// Connections open at once from one client address (see [`client_key`]).
    pub per_ip: usize,
}

/// The connections a server is serving, so that all of them can be shut down at once
/// ([`Live::shut_down_all`]): an index server whose registrations were removed from
/// under it (its lease in the index store ran out) drops its clients, so that they
/// connect and register again. Each socket is shared with its connection's thread
/// (no second descriptor): it closes when both have let go of it.
#[derive(Clone, Debug, Default)]
pub struct Live {
    sockets: Arc<Mutex<slab::Slab<Arc<TcpStream>>>>,
}

impl Live {
    /// Holds `stream` until the returned guard is dropped (a panicking thread's too).
    fn enter(&self, stream: &Arc<TcpStream>) -> Entered<'_> {
        let key = crate::lock(&self.sockets).insert(Arc::clone(stream));
        Entered { live: self, key }
    }

    /// Shuts down every connection being served (each thread sees its client gone and
    /// ends as it would then). Returns how many there were.
    pub fn shut_down_all(&self) -> usize {
        let sockets = crate::lock(&self.sockets);
        for (_, stream) in sockets.iter() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        sockets.len()
    }
}

/// A connection's place in [`Live`], left when dropped.
struct Entered<'a> {
    live: &'a Live,
    key: usize,
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        crate::lock(&self.live.sockets).remove(self.key);
    }
}

/// The accept loop of both servers: accepts connections on an already-bound
/// listener, forever, and runs `handle` for each on a thread of its own
/// (named `"{what} {address}"`), holding a [`Slot`] for as long as it runs, and its
/// socket in `live`.
///
/// A connection over `limits` is turned away from this loop itself, without a thread:
/// it gets a refused handshake that says why, and is closed. Refusals are logged at
/// most [`crate::logging::RECORDS_PER_SECOND`] a second, the rest counted.
pub fn serve<H>(
    listener: TcpListener,
    what: &str,
    limits: ConnLimits,
    live: Live,
    handle: H,
) -> io::Result<()>
where
    H: Fn(&Arc<TcpStream>, SocketAddr, Slot) + Clone + Send + 'static,
{
    let slots = Slots::new(limits.max, limits.per_ip);
    let mut refusals = crate::logging::RateLimit::default();
    loop {
        let (stream, from) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors or memory: not this listener's fault, and
                // accepting again at once would only spin. Back off and go on.
                warn!("{what}: accept failed: {e}");
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let slot = match slots.take(from.ip()) {
            Ok(slot) => slot,
            Err(full) => {
                let why = match full {
                    Full::All(max) => format!("the server is full ({max} connections); try again later"),
                    Full::ThisAddress(max) => format!(
                        "too many connections from your address ({max}, the most allowed); close some and try again"
                    ),
                };
                refusals.log(
                    log::Level::Info,
                    format_args!("{what}:"),
                    format_args!("{from} refused: {why}"),
                );
                refuse(&stream, &why);
                continue;
            }
        };
        let handle = handle.clone();
        let live = live.clone();
        let spawned = thread::Builder::new()
            .name(format!("{what} {from}"))
            .stack_size(CONNECTION_STACK_SIZE)
            .spawn(move || {
                let stream = Arc::new(stream);
                let _entered = live.enter(&stream);
                handle(&stream, from, slot);
            });
        if let Err(e) = spawned {
            warn!("{what}: cannot start a thread for {from}: {e}; connection dropped");
        }
    }
}

/// Turns a connection away from the accept loop itself, without a thread: the reason
/// goes out as a refused handshake, and the socket is closed at once (input that
/// arrives after this look may still turn the close into a reset).
fn refuse(stream: &TcpStream, why: &str) {
    let refusal = Welcome { version: PROTOCOL_VERSION, refusal: Some(why.to_owned()) };
    let _ = stream.set_nonblocking(true);
    let _ = wire::send_msg(&mut &*stream, &refusal);
    let _ = stream.shutdown(Shutdown::Write);
    // Whatever the client has sent already (its hello) is read and dropped, so that
    // the close is an orderly one and the refusal is not lost to a reset.
    let _ = Read::read(&mut &*stream, &mut [0u8; 256]);
}

/// Timeouts for [`connect`].
#[derive(Clone, Copy, Debug)]
pub struct ConnectTimeouts {
    /// For the server to accept the connection.
    pub connect: Duration,
    /// For the whole handshake (hello sent, welcome read); afterwards, the socket's
    /// read and write timeouts.
    pub io: Duration,
}

/// Connects to `addr`, shakes hands for `service` within `timeouts.io`, and returns
/// the stream with `timeouts.io` as its read and write timeouts and Nagle off. A
/// refused handshake is an error carrying the server's reason; a server that stays
/// silent is a `TimedOut` error.
pub fn connect(addr: SocketAddr, service: Service, timeouts: ConnectTimeouts) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, timeouts.connect)?;
    stream.set_nodelay(true)?;
    stream.set_write_timeout(Some(timeouts.io))?;
    {
        // One deadline for the whole welcome, however slowly it trickles in.
        let mut reader = Timed::deadline(&stream, Instant::now() + timeouts.io);
        wire::client_handshake(&mut reader, &mut &stream, service)?;
    }
    stream.set_read_timeout(Some(timeouts.io))?;
    Ok(stream)
}

/// Most bytes [`close_gently`] reads and discards before closing.
const DRAIN_LIMIT: u64 = 1 << 20;

/// Closes a connection so that the reply just written still reaches the client.
///
/// Closing a socket with unread input makes the kernel send a reset, and a reset can
/// destroy the reply in flight before the client reads it. So: no more writes (the
/// client sees the end after our reply), then read and discard what the client still
/// sends, up to `DRAIN_LIMIT` bytes or `patience`, then close.
pub fn close_gently(stream: &TcpStream, patience: Duration) {
    let _ = stream.shutdown(Shutdown::Write);
    let mut rest = Timed::deadline(stream, Instant::now() + patience).take(DRAIN_LIMIT);
    let _ = io::copy(&mut rest, &mut io::sink());
}

/// Is this error a timeout (a socket timeout reports `WouldBlock` on Unix)?
pub fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_count_in_all_and_per_address() {
        let slots = Slots::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = slots.take(a).unwrap();
        let _a2 = slots.take(a).unwrap();
        assert_eq!(slots.take(a).unwrap_err(), Full::ThisAddress(2));
        let _b1 = slots.take(b).unwrap();
        assert_eq!(slots.take(b).unwrap_err(), Full::All(3));
        drop(a1);
        assert_eq!(slots.taken(), 2);
        let _a3 = slots.take(a).unwrap();
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64_network() {
        let one: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let other: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        assert_eq!(client_key(one), client_key(other));
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(client_key(mapped), "10.1.2.3".parse::<IpAddr>().unwrap());
        let slots = Slots::new(10, 1);
        let _held = slots.take(one).unwrap();
        assert_eq!(slots.take(other).unwrap_err(), Full::ThisAddress(1));
    }
}
