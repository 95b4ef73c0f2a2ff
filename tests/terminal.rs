//! The peer on a terminal, driven through a pseudo-terminal (rexpect): listings in
//! aligned columns with human sizes, line editing with a prompt redrawn after
//! background messages, progress bars drawn above the prompt and cleared by their
//! result lines, `cancel` keeping a partial that a later `get` resumes, numbered
//! listings for `get #N`, tab completion of commands, of names with spaces a folder
//! level at a time (the index's after `get`, the folder's after `rm`), of downloads
//! after `cancel`, history recalled with up-arrow and kept across runs, Ctrl-C (once:
//! cancel the downloads; twice: quit), and a listing cut short by an error, whose rows
//! stay its own.

mod common;

use std::fs;
use std::process::Command;

use peerdex::text::count;

use common::{
    Gate, Gates, Misbehaviour, Proc, fake_sender_gated, info, random_bytes, register_fake, workspace,
};

/// `peer 127.0.0.1 <index port> 0 <folder>` on a pseudo-terminal (an xterm), its
/// history kept under `state`.
fn terminal_peer(
    index: std::net::SocketAddr,
    folder: &std::path::Path,
    state: &std::path::Path,
) -> rexpect::session::PtySession {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_peer"));
    cmd.args(["127.0.0.1", &index.port().to_string(), "0"]).arg(folder);
    cmd.env("XDG_STATE_HOME", state).env("TERM", "xterm");
    rexpect::session::spawn_command(cmd, Some(30_000)).unwrap()
}

/// [`terminal_peer`], seen through a [`Screen`] of 40 rows and `columns`, once its
/// first prompt is up.
fn terminal_at_prompt(
    index: std::net::SocketAddr,
    folder: &std::path::Path,
    state: &std::path::Path,
    columns: u16,
) -> (rexpect::session::PtySession, Screen) {
    let mut p = terminal_peer(index, folder, state);
    let mut screen = Screen::new(40, columns);
    screen.expect(&mut p, "peerdex> ");
    (p, screen)
}

/// Types `keys` at the terminal.
fn typed(p: &mut rexpect::session::PtySession, keys: &str) {
    p.send(keys).unwrap();
    p.flush().unwrap();
}

#[test]
fn the_terminal_edits_completes_recalls_and_quits_on_two_ctrl_c() {
    let ws = workspace();
    let a = ws.path().join("a");
    fs::create_dir_all(a.join("album/disc 1")).unwrap();
    fs::write(a.join("hello world.txt"), b"hello").unwrap();
    fs::write(a.join("album/disc 1/01 intro.flac"), b"intro").unwrap();
    let (_index, index_addr) = Proc::index_server(ws.path());
    let (_pa, _) = Proc::registered_peer(index_addr, &a, 2);
    let b = ws.path().join("b");
    fs::create_dir(&b).unwrap();
    let state = ws.path().join("state");

    let mut p = terminal_peer(index_addr, &b, &state);
    p.exp_string("peerdex> ").unwrap();

    // A command completed from its first letters.
    typed(&mut p, "get_f\t");
    typed(&mut p, "\r");
    // Listed in aligned columns, sizes as people read them.
    p.exp_string("album/disc 1/01 intro.flac  5 B  1 peer").unwrap();
    p.exp_string("hello world.txt             5 B  1 peer").unwrap();
    p.exp_string("2 files at other peers").unwrap();
    p.exp_string("peerdex> ").unwrap();

    // A name with spaces completed whole; the result is printed and the prompt comes back.
    typed(&mut p, "download hel\t\r");
    p.exp_string("downloaded hello world.txt (5 bytes) from ").unwrap();
    p.exp_string("peerdex> ").unwrap();
    assert_eq!(fs::read(b.join("hello world.txt")).unwrap(), b"hello");

    // A path completed a folder at a time.
    typed(&mut p, "get al\t");
    typed(&mut p, "di\t");
    typed(&mut p, "\t\r");
    p.exp_string("downloaded album/disc 1/01 intro.flac (5 bytes) from ").unwrap();
    assert_eq!(fs::read(b.join("album/disc 1/01 intro.flac")).unwrap(), b"intro");

    // A download that ends while a line is half typed: its message comes above the
    // prompt, and the half-typed line is drawn again after it, whole.
    let content = random_bytes(40_000);
    let gate = Gate::default();
    let held = Gates { before_data: Some(gate.clone()), ..Gates::default() };
    let (slow, _) = fake_sender_gated(content.clone(), Misbehaviour::Honest, held);
    let _slow = register_fake(index_addr, slow.port(), info("slow.bin", &content));
    // (Keys typed before the editor is back, in raw mode, would be dropped: the
    // prompt drawn after the command is the sign that it is.)
    p.exp_string("peerdex> ").unwrap();
    typed(&mut p, "download slow.bin\r");
    p.exp_string("download slow.bin").unwrap();
    p.exp_string("peerdex> ").unwrap();
    typed(&mut p, "get_fi");
    p.exp_string("get_fi").unwrap();
    gate.open();
    p.exp_string("downloaded slow.bin (40000 bytes) from ").unwrap();
    p.exp_string("peerdex> get_fi").unwrap();
    typed(&mut p, "\x15"); // Ctrl-U: the line is emptied

    // Up-arrow: the commands typed before, most recent first.
    typed(&mut p, "\x1b[A\x1b[A\x1b[A\x1b[A\r");
    p.exp_string("3 files at other peers").unwrap();
    p.exp_string("peerdex> ").unwrap();

    // Ctrl-C once cancels (nothing runs), twice quits.
    p.send_control('c').unwrap();
    p.exp_string("cancelled 0 downloads; Ctrl-C again to quit").unwrap();
    // The editor is back (raw mode) once the prompt is drawn again: a Ctrl-C before
    // that is the terminal's SIGINT, which the peer takes for an interrupt of a
    // command, not for the second Ctrl-C at the prompt.
    p.exp_string("peerdex> ").unwrap();
    p.send_control('c').unwrap();
    p.exp_eof().unwrap();

    let history = fs::read_to_string(state.join("peerdex/history")).unwrap();
    for line in
        ["get_files_list", "download hello world.txt", "get album/disc 1/01 intro.flac", "download slow.bin"]
    {
        assert!(history.lines().any(|l| l.trim_end() == line), "{line:?} is not in the history: {history:?}");
    }
}

/// Everything the terminal was sent, as it reads: a screen of `rows` x `cols`.
struct Screen {
    parser: vt100::Parser,
}

impl Screen {
    fn new(rows: u16, cols: u16) -> Screen {
        let size = |n: u16| std::num::NonZeroU16::new(n).unwrap();
        Screen { parser: vt100::Parser::new(size(rows), size(cols), 0) }
    }

    /// Waits for `text` from the terminal, putting everything up to it on the screen.
    fn expect(&mut self, p: &mut rexpect::session::PtySession, text: &str) {
        let before = p.exp_string(text).unwrap_or_else(|e| panic!("waiting for {text:?}: {e}"));
        self.parser.process(before.as_bytes());
        self.parser.process(text.as_bytes());
    }

    /// The screen's rows, their trailing blanks cut, the empty ones at the end left out.
    fn rows(&self) -> Vec<String> {
        let mut rows: Vec<String> =
            self.parser.screen().rows(0, 100).map(|r| r.trim_end().to_owned()).collect();
        while rows.last().is_some_and(|r| r.is_empty()) {
            rows.pop();
        }
        rows
    }
}

#[test]
fn progress_bars_are_drawn_above_the_prompt_and_leave_only_the_result_lines() {
    let ws = workspace();
    let (_index, index_addr) = Proc::index_server(ws.path());
    // Three downloads held before their first byte: one file, and a folder of two.
    let gate = Gate::default();
    let held = || Gates { before_data: Some(gate.clone()), ..Gates::default() };
    let mut fakes = Vec::new();
    for (name, len) in [("slow.bin", 40_000), ("album/a.flac", 30_000), ("album/b.flac", 50_000)] {
        let content = random_bytes(len);
        let (sender, _) = fake_sender_gated(content.clone(), Misbehaviour::Honest, held());
        fakes.push(register_fake(index_addr, sender.port(), info(name, &content)));
    }
    let b = ws.path().join("b");
    fs::create_dir(&b).unwrap();

    // rexpect's terminal is 80 columns; the rows are the emulator's own.
    let (mut p, mut screen) = terminal_at_prompt(index_addr, &b, &ws.path().join("state"), 80);

    // A listing is numbered, and `get #N` takes its N-th line.
    typed(&mut p, "ls slow\r");
    screen.expect(&mut p, "#1  slow.bin  39.1 KiB  1 peer");
    screen.expect(&mut p, "peerdex> ");
    typed(&mut p, "get #1\r");
    // Its bar: name, bytes done of all, rate, ETA and sources.
    screen.expect(&mut p, "slow.bin  0 B/39.06 KiB [");
    screen.expect(&mut p, "1 source");
    screen.expect(&mut p, "peerdex> ");
    // A folder download: one bar for the folder, with its files.
    typed(&mut p, "get album/\r");
    screen.expect(&mut p, "downloading 2 files under album/");
    screen.expect(&mut p, "album/  0 B/78.12 KiB [");
    screen.expect(&mut p, "0/2 files");
    screen.expect(&mut p, "peerdex> ");
    typed(&mut p, "dow");
    screen.expect(&mut p, "dow");
    let rows = screen.rows();
    let n = rows.len();
    assert!(n >= 3, "{rows:#?}");
    assert!(rows[n - 3].starts_with("album/  0 B/78.12 KiB ["), "the bars, just above the prompt: {rows:#?}");
    assert!(rows[n - 2].starts_with("slow.bin  0 B/39.06 KiB ["), "{rows:#?}");
    assert!(rows[n - 2].contains("ETA") && rows[n - 2].ends_with("1 source"), "{rows:#?}");
    assert_eq!(rows[n - 1], "peerdex> dow", "{rows:#?}");

    // Done: each result line takes its bar's place; the line being typed stays.
    gate.open();
    // (In whichever order they end.)
    for _ in 0..3 {
        screen.expect(&mut p, "downloaded ");
    }
    typed(&mut p, "nloads\r");
    screen.expect(&mut p, "0 running, 0 queued");
    screen.expect(&mut p, "peerdex> ");
    let rows = screen.rows();
    assert!(!rows.iter().any(|r| r.contains("ETA")), "no bar is left: {rows:#?}");
    for line in
        ["peerdex> get #1", "peerdex> get album/", "downloading 2 files under album/", "peerdex> downloads"]
    {
        assert_eq!(rows.iter().filter(|r| *r == line).count(), 1, "{line:?} once: {rows:#?}");
    }
    for name in ["slow.bin (40000 bytes)", "album/a.flac (30000 bytes)", "album/b.flac (50000 bytes)"] {
        let line = format!("downloaded {name} from 127.0.0.1:");
        assert_eq!(rows.iter().filter(|r| r.starts_with(&line)).count(), 1, "{line:?} once: {rows:#?}");
    }
    assert_eq!(rows.last().unwrap(), "peerdex>", "{rows:#?}");
    assert_eq!(fs::read(b.join("album/b.flac")).unwrap().len(), 50_000);
    p.send_control('d').unwrap();
    p.exp_eof().unwrap();
}

/// On the terminal, `cancel` stops a running download and keeps what it verified; a
/// later `download` of the name fetches only the rest.
#[test]
fn cancel_at_the_terminal_keeps_a_partial_that_a_later_download_resumes() {
    let ws = workspace();
    let content = random_bytes(1 << 20); // 64 pieces of 16 KiB
    let (_index, index_addr) = Proc::index_server(ws.path());
    // A source that holds only the first half, as a peer still downloading it would.
    let half = Gates { up_to: Some(1 << 19), ..Gates::default() };
    let (first, _) = fake_sender_gated(content.clone(), Misbehaviour::Honest, half);
    let _f = register_fake(index_addr, first.port(), info("big.bin", &content));
    let b = ws.path().join("b");
    fs::create_dir(&b).unwrap();

    let (mut p, mut screen) = terminal_at_prompt(index_addr, &b, &ws.path().join("state"), 80);
    typed(&mut p, "get big.bin\r");
    // The bar shows the half the source holds, then stays there.
    screen.expect(&mut p, "big.bin  512.00 KiB/1.00 MiB [");
    screen.expect(&mut p, "peerdex> ");
    typed(&mut p, "cancel big.bin\r");
    screen.expect(&mut p, "cancelled big.bin: cancelled; 32 of its 64 pieces are kept, to resume from there");
    screen.expect(&mut p, "peerdex> ");

    let (whole, sent) = fake_sender_gated(content.clone(), Misbehaviour::Honest, Gates::default());
    let _w = register_fake(index_addr, whole.port(), info("big.bin", &content));
    typed(&mut p, "get big.bin\r");
    screen.expect(&mut p, "downloaded big.bin (1048576 bytes) from ");
    screen.expect(&mut p, ", 524288 bytes of it already here");
    screen.expect(&mut p, "peerdex> ");
    assert_eq!(fs::read(b.join("big.bin")).unwrap(), content);
    assert_eq!(sent.load(std::sync::atomic::Ordering::SeqCst), 1 << 19, "only the missing half was fetched");
    let rows = screen.rows();
    assert!(!rows.iter().any(|r| r.contains("ETA")), "no bar is left: {rows:#?}");
    p.send_control('d').unwrap();
    p.exp_eof().unwrap();
}

#[test]
fn a_listing_cut_short_shows_its_rows_and_the_next_one_starts_afresh() {
    use peerdex::name::SharePath;
    use peerdex::wire::{ListEntry, Message, Reply, Request};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let entry = |name: &str| ListEntry {
        name: SharePath::parse(name).unwrap(),
        size: 5,
        root: [7; 32],
        peers: 1,
        partial: 0,
    };
    // The first listing fails after its first rows (as one does when the index store
    // goes away mid-listing); the second is whole.
    let lists = AtomicUsize::new(0);
    let fake = common::FakeIndex::start_many(move |request| match request {
        Request::List { .. } if lists.fetch_add(1, Ordering::SeqCst) == 0 => Some(vec![
            Reply::ListChunk(vec![entry("old1.txt"), entry("old2.txt")]).encode(),
            Reply::Error("index store unavailable".into()).encode(),
        ]),
        Request::List { .. } => Some(vec![
            Reply::ListChunk(vec![entry("new.txt")]).encode(),
            Reply::ListEnd { truncated: false }.encode(),
        ]),
        _ => None,
    });
    let ws = workspace();
    let b = ws.path().join("b");
    fs::create_dir(&b).unwrap();
    let (mut p, mut screen) = terminal_at_prompt(fake.addr, &b, &ws.path().join("state"), 100);
    typed(&mut p, "ls\r");
    screen.expect(&mut p, "error: get_files_list failed: the index server says: index store unavailable");
    screen.expect(&mut p, "peerdex> ");
    typed(&mut p, "ls\r");
    screen.expect(&mut p, "1 file at other peers");
    screen.expect(&mut p, "peerdex> ");
    let rows = screen.rows();
    let listed: Vec<&String> = rows.iter().filter(|r| r.starts_with('#')).collect();
    assert_eq!(
        listed,
        ["#1  old1.txt  5 B  1 peer", "#2  old2.txt  5 B  1 peer", "#1  new.txt  5 B  1 peer"],
        "{rows:#?}"
    );
    p.send_control('d').unwrap();
    p.exp_eof().unwrap();
}

#[test]
fn tab_completes_local_names_after_rm_downloads_after_cancel_and_commands_after_help() {
    let ws = workspace();
    let (_index, index_addr) = Proc::index_server(ws.path());
    // A download held before its first byte, to be cancelled.
    let content = random_bytes(40_000);
    let held = Gates { before_data: Some(Gate::default()), ..Gates::default() };
    let (slow, _) = fake_sender_gated(content.clone(), Misbehaviour::Honest, held);
    let _f = register_fake(index_addr, slow.port(), info("slow download.bin", &content));
    let b = ws.path().join("b");
    fs::create_dir_all(b.join("old photos")).unwrap();
    fs::write(b.join("old photos/cat 1.jpg"), b"cat").unwrap();
    fs::write(b.join("notes.txt"), b"n").unwrap();
    // A symlinked folder is never gone through, as `delete` itself never goes.
    std::os::unix::fs::symlink(ws.path(), b.join("outside")).unwrap();

    let (mut p, mut screen) = terminal_at_prompt(index_addr, &b, &ws.path().join("state"), 100);
    // The shared folder's names, a folder level at a time, spaces and all.
    typed(&mut p, "rm ol\t");
    typed(&mut p, "c\t\r");
    screen.expect(&mut p, "deleted old photos/cat 1.jpg");
    screen.expect(&mut p, "peerdex> ");
    assert!(!b.join("old photos/cat 1.jpg").exists());
    typed(&mut p, "rm outside/\t\t\r");
    screen.expect(&mut p, "error: invalid file name \"outside/\"");
    screen.expect(&mut p, "peerdex> ");
    let rows = screen.rows();
    assert!(!rows.iter().any(|r| r.contains("outside/b")), "nothing offered through the symlink: {rows:#?}");

    typed(&mut p, "help reg\t\r");
    screen.expect(&mut p, "share this folder's files");
    screen.expect(&mut p, "peerdex> ");

    typed(&mut p, "get slow download.bin\r");
    screen.expect(&mut p, "peerdex> ");
    typed(&mut p, "cancel sl\t\r");
    screen.expect(&mut p, "cancelled slow download.bin: ");
    screen.expect(&mut p, "peerdex> ");
    let rows = screen.rows();
    assert!(rows.iter().any(|r| r == "peerdex> rm old photos/cat 1.jpg"), "{rows:#?}");
    assert!(rows.iter().any(|r| r == "peerdex> help register"), "{rows:#?}");
    assert!(rows.iter().any(|r| r == "peerdex> cancel slow download.bin"), "{rows:#?}");
    p.send_control('d').unwrap();
    p.exp_eof().unwrap();
}

/// A fake index whose listing sends 3 entries, opens the first gate, and sends 5
/// more once the second opens; serves one connection.
fn held_listing() -> (std::net::SocketAddr, Gate, Gate) {
    use peerdex::name::SharePath;
    use peerdex::wire::{self, ListEntry, Message, Reply, Request, Service};
    let (first, rest) = (Gate::default(), Gate::default());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let index = listener.local_addr().unwrap();
    let (sent, more) = (first.clone(), rest.clone());
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut r = s.try_clone().unwrap();
        wire::server_handshake(&mut r, &mut s, Service::Index, 4096).unwrap();
        let entry = |i: usize| ListEntry {
            name: SharePath::parse(&format!("f{i}.txt")).unwrap(),
            size: 5,
            root: [7; 32],
            peers: 1,
            partial: 0,
        };
        while let Ok(request) = wire::recv_msg::<Request>(&mut r) {
            let reply = match request {
                Request::List { .. } => {
                    let _ = wire::send_msg(&mut s, &Reply::ListChunk((0..3).map(entry).collect()));
                    sent.open();
                    more.wait();
                    let _ = wire::send_msg(&mut s, &Reply::ListChunk((3..8).map(entry).collect()));
                    Reply::ListEnd { truncated: false }
                }
                Request::Ping => Reply::Pong,
                _ => Reply::Error("not in this fake".into()),
            };
            if wire::send_all(&mut s, &reply.encode()).is_err() {
                break;
            }
        }
    });
    (index, first, rest)
}

/// A terminal peer of a fresh [`held_listing`] index in `folder`, with `command`
/// typed and Ctrl-C pressed once the index has sent the first part of its listing; the
/// index holds back the rest until the gate returned opens.
fn ctrl_c_in_a_held_listing(
    screen: &mut Screen,
    folder: &std::path::Path,
    state: &std::path::Path,
    command: &str,
) -> (rexpect::session::PtySession, Gate) {
    let (index, first, rest) = held_listing();
    let mut p = terminal_peer(index, folder, state);
    screen.expect(&mut p, "peerdex> ");
    typed(&mut p, &format!("{command}\r"));
    first.wait();
    p.send_control('c').unwrap();
    (p, rest)
}

#[test]
fn ctrl_c_while_a_command_runs_stops_a_wait_or_a_listing_and_the_peer_goes_on() {
    let ws = workspace();
    let b = ws.path().join("b");
    fs::create_dir(&b).unwrap();
    let mut screen = Screen::new(40, 100);
    let (mut p, rest) = ctrl_c_in_a_held_listing(&mut screen, &b, &ws.path().join("state"), "ls");
    // The prompt is back at once, though the index still holds back the rest. The
    // entries read before the Ctrl-C are shown (some or none of the first three: it
    // may come before the peer has read them).
    screen.expect(&mut p, "at other peers (more not shown)");
    screen.expect(&mut p, "peerdex> ");
    let rows = screen.rows();
    let shown = rows.iter().filter(|r| r.starts_with('#')).count();
    assert!(shown <= 3, "{rows:#?}");
    let end = rows.iter().find(|r| r.ends_with("at other peers (more not shown)")).unwrap();
    assert_eq!(end, &format!("{} at other peers (more not shown)", count(shown as u64, "file")), "{rows:#?}");
    assert!(rows.iter().any(|r| r == "note: stopped listing; the rest is not shown"), "{rows:#?}");
    typed(&mut p, "help wait\r");
    screen.expect(&mut p, "wait until every queued and running download has ended");
    screen.expect(&mut p, "peerdex> ");
    // The next request to the index comes after the rest of the stopped listing, which
    // is read and dropped: a listing now (this fake sends the same one, whole) has only
    // its own entries.
    rest.open();
    typed(&mut p, "ls\r");
    screen.expect(&mut p, "8 files at other peers");
    let rows = screen.rows();
    assert!(rows.iter().any(|r| r.starts_with("#8 ")), "{rows:#?}");
    assert!(!rows.iter().any(|r| r.starts_with("#9 ")), "{rows:#?}");

    // `wait` on a download held before its first byte: Ctrl-C stops the wait, and
    // the download goes on.
    drop(p);
    let (_index, index_addr) = Proc::index_server(ws.path());
    let content = random_bytes(40_000);
    let gate = Gate::default();
    let held = Gates { before_data: Some(gate.clone()), ..Gates::default() };
    let (slow, _) = fake_sender_gated(content.clone(), Misbehaviour::Honest, held);
    let _f = register_fake(index_addr, slow.port(), info("slow.bin", &content));
    let mut p = terminal_peer(index_addr, &b, &ws.path().join("state"));
    screen.expect(&mut p, "peerdex> ");
    typed(&mut p, "get slow.bin\r");
    screen.expect(&mut p, "peerdex> ");
    typed(&mut p, "wait\r");
    // Once the editor has turned bracketed paste off, it has given the terminal back
    // (it restores the terminal's mode first), and Ctrl-C is a signal, not a key.
    screen.expect(&mut p, "wait\x1b[?2004l");
    p.send_control('c').unwrap();
    // (The note that Ctrl-C came may print before or after this one.)
    screen.expect(&mut p, "note: stopped waiting; 1 download not ended yet");
    screen.expect(&mut p, "peerdex> ");
    gate.open();
    screen.expect(&mut p, "downloaded slow.bin (40000 bytes) from ");
    assert_eq!(fs::read(b.join("slow.bin")).unwrap(), content);
    p.send_control('d').unwrap();
    p.exp_eof().unwrap();

    // A glob or folder download stopped while it lists queues nothing.
    for (command, target) in [("get f*.txt", "f*.txt"), ("get album/", "album/")] {
        let (mut p, _rest) = ctrl_c_in_a_held_listing(&mut screen, &b, &ws.path().join("state"), command);
        screen.expect(
            &mut p,
            &format!("error: cannot download \"{target}\": stopped (Ctrl-C) while listing the files; nothing is queued"),
        );
        screen.expect(&mut p, "peerdex> ");
        typed(&mut p, "downloads\r");
        screen.expect(&mut p, "0 running, 0 queued");
        p.send_control('d').unwrap();
        p.exp_eof().unwrap();
    }

    // A listing by folders, stopped, shows nothing (its counts would be of a part).
    let (mut p, _rest) = ctrl_c_in_a_held_listing(&mut screen, &b, &ws.path().join("state"), "ls --dirs");
    screen.expect(&mut p, "note: stopped listing; nothing is shown (folders are counted at its end)");
    screen.expect(&mut p, "peerdex> ");
    // A second Ctrl-C before the command has ended quits: here a listing that waits
    // for the rest of the stopped one, which the index still holds back.
    typed(&mut p, "ls\r");
    screen.expect(&mut p, "ls\x1b[?2004l");
    p.send_control('c').unwrap();
    screen.expect(&mut p, "note: interrupted; Ctrl-C again to quit");
    p.send_control('c').unwrap();
    p.exp_eof().unwrap();
    let status = p.process().wait().unwrap();
    assert!(matches!(status, rexpect::process::WaitStatus::Exited(_, 130)), "{status:?}");
}
