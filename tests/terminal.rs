//! The peer on a terminal, driven through a pseudo-terminal (rexpect): listings in
//! aligned columns with human sizes, line editing with a prompt redrawn after
//! background messages, tab completion of commands and of
//! names with spaces a folder level at a time, history recalled with up-arrow and kept
//! across runs, and Ctrl-C (once: cancel the downloads; twice: quit).

mod common;

use std::fs;
use std::process::Command;

use common::{
    Gate, Gates, Misbehaviour, Proc, fake_sender_gated, info, random_bytes, register_fake, workspace,
};

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

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_peer"));
    cmd.args(["127.0.0.1", &index_addr.port().to_string(), "0"]).arg(&b);
    cmd.env("XDG_STATE_HOME", &state).env("TERM", "xterm");
    let mut p = rexpect::session::spawn_command(cmd, Some(30_000)).unwrap();
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
    p.send_control('c').unwrap();
    p.exp_eof().unwrap();

    let history = fs::read_to_string(state.join("peerdex/history")).unwrap();
    for line in
        ["get_files_list", "download hello world.txt", "get album/disc 1/01 intro.flac", "download slow.bin"]
    {
        assert!(history.lines().any(|l| l.trim_end() == line), "{line:?} is not in the history: {history:?}");
    }
}
