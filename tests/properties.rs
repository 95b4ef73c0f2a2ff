//! Property tests of the codec: every message survives encode then decode, and
//! decoding any bytes at all neither panics nor allocates out of proportion to them
//! (and never more than the frame limit).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::SocketAddr;

use peerdex::content::Bitfield;
use peerdex::name::SharePath;
use peerdex::wire::{
    self, FileInfo, FileReply, FileRequest, Hello, ListEntry, MAX_FRAME_LEN, Message, PeerHit, Reply,
    Request, Service, Welcome,
};
use proptest::prelude::*;

/// Counts the bytes allocated by the current thread while `MEASURING` is set, and
/// keeps the peak; other threads (other tests) are not counted.
struct Counting;

thread_local! {
    static MEASURING: Cell<bool> = const { Cell::new(false) };
    static NOW: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded unchanged to the system allocator; the counting on
// the side touches only const-initialised thread-locals, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if MEASURING.with(Cell::get) {
            let now = NOW.with(|n| n.get()) + layout.size();
            NOW.with(|n| n.set(now));
            PEAK.with(|p| p.set(p.get().max(now)));
        }
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if MEASURING.with(Cell::get) {
            NOW.with(|n| n.set(n.get().saturating_sub(layout.size())));
        }
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` and returns its result with the peak bytes it held allocated at once.
fn peak_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    NOW.with(|n| n.set(0));
    PEAK.with(|p| p.set(0));
    MEASURING.with(|m| m.set(true));
    let out = f();
    MEASURING.with(|m| m.set(false));
    (out, PEAK.with(Cell::get))
}

fn share_name() -> impl Strategy<Value = SharePath> {
    "[a-zA-Z0-9 _.é✓-]{1,40}".prop_filter_map("not a valid name", |s| SharePath::parse(&s).ok())
}

fn sha() -> impl Strategy<Value = [u8; 32]> {
    any::<[u8; 32]>()
}

fn file_info() -> impl Strategy<Value = FileInfo> {
    (share_name(), any::<u64>(), sha()).prop_map(|(name, size, root)| FileInfo { name, size, root })
}

fn files() -> impl Strategy<Value = Vec<FileInfo>> {
    prop::collection::vec(file_info(), 0..20)
}

fn addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
        (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
    ]
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (any::<u16>(), files()).prop_map(|(port, files)| Request::Register { port, files }),
        Just(Request::Unregister),
        files().prop_map(|files| Request::Update { files }),
        prop::collection::vec(share_name(), 0..20).prop_map(|names| Request::Delete { names }),
        (".{0,30}", any::<Option<u32>>()).prop_map(|(pattern, limit)| Request::List { pattern, limit }),
        share_name().prop_map(|name| Request::Lookup { name }),
        Just(Request::Ping),
        files().prop_map(|files| Request::Add { files }),
        files().prop_map(|files| Request::Partial { files }),
    ]
}

fn reply() -> impl Strategy<Value = Reply> {
    let entry = (file_info(), any::<u32>(), any::<u32>()).prop_map(|(f, peers, partial)| ListEntry {
        name: f.name,
        size: f.size,
        root: f.root,
        peers,
        partial,
    });
    let hit = (addr(), any::<u64>(), sha(), any::<bool>()).prop_map(|(addr, size, root, complete)| PeerHit {
        addr,
        size,
        root,
        complete,
    });
    prop_oneof![
        any::<u32>().prop_map(|files| Reply::Done { files }),
        ".{0,100}".prop_map(Reply::Error),
        prop::collection::vec(entry, 0..20).prop_map(Reply::ListChunk),
        any::<bool>().prop_map(|truncated| Reply::ListEnd { truncated }),
        prop::collection::vec(hit, 0..20).prop_map(Reply::Peers),
        Just(Reply::NoPeers),
        Just(Reply::Pong),
    ]
}

fn round_trips<M: Message + PartialEq + std::fmt::Debug>(m: &M) -> Result<(), TestCaseError> {
    prop_assert_eq!(&M::decode(&m.encode()).unwrap(), m);
    Ok(())
}

/// Decodes `bytes` as every message type; none may panic (proptest reports a panic as
/// a failure), and together they may hold at most a few times the input allocated.
fn decodes_within_bounds(bytes: &[u8]) -> Result<(), TestCaseError> {
    let ((), peak) = peak_allocation(|| {
        let _ = Hello::decode(bytes);
        let _ = Welcome::decode(bytes);
        let _ = Request::decode(bytes);
        let _ = Reply::decode(bytes);
        let _ = FileRequest::decode(bytes);
        let _ = FileReply::decode(bytes);
    });
    prop_assert!(peak <= MAX_FRAME_LEN, "decoding {} bytes allocated {peak}", bytes.len());
    prop_assert!(peak <= 8 * bytes.len() + 4096, "decoding {} bytes allocated {peak}", bytes.len());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn requests_round_trip(m in request()) {
        round_trips(&m)?;
    }

    #[test]
    fn replies_round_trip(m in reply()) {
        round_trips(&m)?;
    }

    #[test]
    fn handshakes_and_file_messages_round_trip(
        version in any::<u16>(),
        files in any::<bool>(),
        refusal in any::<Option<String>>(),
        first in any::<u32>(),
        count in any::<u32>(),
        size in any::<u64>(),
        root in sha(),
        layer in prop::collection::vec(sha(), 0..50),
        bits in prop::collection::vec(any::<bool>(), 0..100),
        why in ".{0,50}",
    ) {
        let service = if files { Service::Files } else { Service::Index };
        round_trips(&Hello { version, service })?;
        round_trips(&Welcome { version, refusal })?;
        round_trips(&FileRequest::Layer { root })?;
        round_trips(&FileRequest::Have { root })?;
        round_trips(&FileRequest::Get { root, first, count })?;
        round_trips(&FileRequest::Status)?;
        round_trips(&FileRequest::Cancel { root, first, count })?;
        round_trips(&FileReply::Cancelled { first, count })?;
        round_trips(&FileReply::Status { uploads: version.into(), bytes_per_sec: size })?;
        round_trips(&FileReply::Layer(layer))?;
        let mut have = Bitfield::empty(bits.len() as u32);
        for (i, _) in bits.iter().enumerate().filter(|(_, b)| **b) {
            have.set(i as u32);
        }
        round_trips(&FileReply::Have(have))?;
        round_trips(&FileReply::Data { first, count, len: size })?;
        round_trips(&FileReply::Error(why))?;
    }

    #[test]
    fn arbitrary_bytes_never_panic_or_overallocate(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        decodes_within_bounds(&bytes)?;
    }

    /// Arbitrary bytes behind each real tag, so that the decoders get past the first
    /// byte: counts, lengths and names all come from the noise.
    #[test]
    fn arbitrary_bodies_behind_real_tags(tag in prop::sample::select(vec![1u8, 3, 4, 5, 6, 8, 0x0b, 0x81, 0x82, 0x83, 0x85, 0x11, 0x13, 0x91, 0x92, 0x93]),
                                         body in prop::collection::vec(any::<u8>(), 0..2048)) {
        let mut bytes = vec![tag];
        bytes.extend(body);
        decodes_within_bounds(&bytes)?;
    }

    /// Frames: any prefix of any stream of bytes reads as frames or a clean error.
    #[test]
    fn frame_reader_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let mut r = &bytes[..];
        while let Ok(Some(_)) = wire::recv_all(&mut r, 256) {}
    }
}

/// A count of four billion items in a short message is refused before anything is
/// allocated for them (the case that would otherwise ask for hundreds of gigabytes).
#[test]
fn huge_counts_allocate_nothing() {
    for tag in [1u8, 3, 4, 8, 0x0b] {
        let mut bytes = vec![tag];
        if tag == 1 {
            bytes.extend([0, 9]);
        }
        bytes.extend(u32::MAX.to_be_bytes());
        let (result, peak) = peak_allocation(|| Request::decode(&bytes));
        assert!(result.is_err());
        assert!(peak < 1024, "tag {tag}: {peak} bytes allocated");
    }
    // A piece layer of four billion hashes, and a bitfield of four billion pieces.
    for tag in [0x91u8, 0x92] {
        let mut bytes = vec![tag];
        bytes.extend(u32::MAX.to_be_bytes());
        let (result, peak) = peak_allocation(|| FileReply::decode(&bytes));
        assert!(result.is_err());
        assert!(peak < 1024, "tag {tag}: {peak} bytes allocated");
    }
}
