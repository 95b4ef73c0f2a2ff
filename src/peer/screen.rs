//! The terminal's screen while a person types at the prompt: result lines, and below
//! them, just above the prompt, one progress bar per running download (indicatif
//! renders them; [`bars`] feeds it).
//!
//! Three writers share the screen: the line editor (rustyline) drawing the prompt and
//! the line being typed, the editor's own thread printing a command's results, and the
//! other threads (downloads, the bars) printing through the editor's external printer,
//! which clears the prompt, writes, and draws the prompt again below. What keeps them
//! apart is one rule, kept under one lock: **the bars fill the `drawn` rows just above
//! the cursor, and the cursor is at the start of a row**. Every write first moves up
//! over those rows and clears to the end of the screen, then writes its line and the
//! bars again, each ending its row. So a result line lands above the bars, the bars
//! never scroll the prompt away, and a finished download's bar is gone in the same
//! write that brings its result line.
//!
//! The rule breaks in two places, mended here: when the editor hands back a line, the
//! prompt and that line sit between the bars and the cursor ([`Screen::accepted`]
//! draws them again below the bars); and a completion list is printed below the
//! prompt by the editor ([`Screen::blank`] blanks the bars first).
//!
//! Without bars nothing of this shows: lines go out as they always did.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::{self, ThreadId};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle, TermLike};
use unicode_width::UnicodeWidthStr;

use super::node::Node;

use crate::lock;

/// How often the bars are drawn again: at most ten times a second, as the issue asks
/// and as indicatif's own default for a terminal.
pub const REDRAW_EVERY: Duration = Duration::from_millis(100);

/// Longest name shown in a bar, in columns; a longer one keeps its end (the file name)
/// behind `…`.
const NAME_COLUMNS: usize = 32;

/// The screen. See the module docs.
#[derive(Default)]
pub struct Screen {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The line editor's printer, while it owns the terminal.
    external: Option<Box<dyn rustyline::ExternalPrinter + Send>>,
    /// The editor's thread: it writes straight out, between two lines read.
    editor: Option<ThreadId>,
    /// Whether the editor is reading a line (in raw mode, drawing the prompt): the
    /// external printer then adds a line end after a write that lacks one.
    reading: bool,
    /// The bars, by key (a download's name, or a folder's with its `/`), as drawn next.
    bars: BTreeMap<String, String>,
    /// Rows of bars on the screen now, just above the cursor.
    drawn: usize,
    /// No bars are drawn while a password is asked for.
    paused: bool,
}

impl Screen {
    /// Prints `line` (to stderr if `to_stderr`, when no bars are shown) above the bars.
    pub fn print(&self, line: &str, to_stderr: bool) {
        let mut state = lock(&self.state);
        if state.drawn == 0 && state.bars.is_empty() && !self.through_editor(&state) {
            match to_stderr {
                false => crate::outln!("{line}"),
                true => crate::errln!("{line}"),
            }
            return;
        }
        self.write(&mut state, Some(line));
    }

    /// Forgets the bar under `key`, without drawing: the next write leaves it out
    /// (a download's result line, which takes its bar's place).
    pub fn forget(&self, key: &str) {
        lock(&self.state).bars.remove(key);
    }

    /// Draws `bars` in place of the ones on the screen, if they differ.
    fn set_bars(&self, bars: BTreeMap<String, String>) {
        let mut state = lock(&self.state);
        if state.bars == bars || state.paused {
            return;
        }
        state.bars = bars;
        self.write(&mut state, None);
    }

    /// Takes the bars off the screen for good (their drawing has stopped).
    pub fn clear_bars(&self) {
        self.set_bars(BTreeMap::new());
    }

    /// Sends other threads' text through a line editor's printer from now on, the
    /// calling thread's straight out; `None` once the editor is dropped (which
    /// releases a thread waiting on its printer): everything straight out again.
    pub fn print_through(&self, printer: Option<Box<dyn rustyline::ExternalPrinter + Send>>) {
        let mut state = lock(&self.state);
        state.editor = printer.as_ref().map(|_| thread::current().id());
        state.external = printer;
    }

    /// The editor starts reading a line.
    pub fn reading(&self) {
        lock(&self.state).reading = true;
    }

    /// The editor has handed back a line: `prompt` and `line` take `columns` on the
    /// screen, below the bars, and the cursor is at the start of the row after them.
    /// Draws them again above the bars, so that the rule holds again.
    ///
    /// (Between the editor leaving raw mode and this call, a write from another
    /// thread would assume the rule and clear the prompt's row: a window of
    /// microseconds, and a line drawn again below, at worst.)
    pub fn accepted(&self, prompt: &str, line: &str) {
        let mut state = lock(&self.state);
        state.reading = false;
        if state.drawn == 0 {
            return;
        }
        let rows = rows(prompt.width() + line.width(), width());
        state.drawn += rows;
        let echo = format!("{prompt}{line}");
        self.write(&mut state, Some(&echo));
    }

    /// Before the editor lists completions below the prompt (which would leave the
    /// bars stranded above): blanks the bars' rows, the cursor `columns` into the
    /// prompt and line, and draws the bars afresh above the next prompt.
    pub fn blank(&self, columns: usize) {
        let mut state = lock(&self.state);
        if state.drawn == 0 {
            return;
        }
        let up = rows(columns, width()) - 1 + state.drawn;
        let mut out = format!("\x1b7\x1b[{up}F");
        for _ in 0..state.drawn {
            out.push_str("\x1b[2K\x1b[1E");
        }
        out.push_str("\x1b8");
        state.drawn = 0;
        let mut stdout = io::stdout().lock();
        let _ = stdout.write_all(out.as_bytes()).and_then(|()| stdout.flush());
    }

    /// Stops drawing bars (while a password is typed), or starts again.
    pub fn pause(&self, paused: bool) {
        lock(&self.state).paused = paused;
    }

    fn through_editor(&self, state: &State) -> bool {
        state.external.is_some() && state.editor != Some(thread::current().id())
    }

    /// One write: over the bars on the screen, `line`, then the bars.
    fn write(&self, state: &mut State, line: Option<&str>) {
        let mut out = String::new();
        if state.drawn > 0 {
            let _ = write!(out, "\x1b[{}F\x1b[J", state.drawn);
        }
        if let Some(line) = line {
            out.push_str(line);
            out.push('\n');
        }
        let shown = !state.paused;
        if shown {
            for bar in state.bars.values() {
                out.push_str(bar);
                out.push('\n');
            }
        }
        state.drawn = if shown { state.bars.len() } else { 0 };
        if out.is_empty() {
            return;
        }
        if self.through_editor(state) {
            // The editor ends the write's row if it does not, then draws the prompt:
            // a write that only cleared goes back up one row first.
            if state.reading && !out.ends_with('\n') {
                out.push_str("\x1b[1F");
            }
            if let Some(printer) = &mut state.external {
                let _ = printer.print(out);
            }
        } else {
            let mut stdout = io::stdout().lock();
            let _ = stdout.write_all(out.as_bytes()).and_then(|()| stdout.flush());
        }
    }
}

/// Rows that `columns` of text take on a screen `width` wide, the cursor after them
/// included (at exactly the width, it has wrapped to a row of its own).
fn rows(columns: usize, width: usize) -> usize {
    columns / width.max(1) + 1
}

/// The terminal's width in columns (80 when it cannot be told).
pub fn width() -> usize {
    rustix::termios::tcgetwinsize(io::stdout())
        .ok()
        .map(|size| usize::from(size.ws_col))
        .filter(|&cols| cols > 0)
        .unwrap_or(80)
}

/// Draws the bars of `node`'s running downloads on its screen, [`REDRAW_EVERY`], until
/// `stop` sends or hangs up.
pub fn bars(node: &Node, stop: &mpsc::Receiver<()>) {
    let mut shown: BTreeMap<String, Bar> = BTreeMap::new();
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(REDRAW_EVERY) {
        let columns = width().saturating_sub(1).max(20);
        node.draw_bars(|live| {
            let mut lines = BTreeMap::new();
            shown.retain(|key, _| live.iter().any(|b| b.key == *key));
            for b in live {
                let bar = shown.entry(b.key.clone()).or_insert_with(|| Bar::new(&b.key));
                bar.bar.set_message(b.note);
                if b.total > 0 {
                    bar.bar.set_length(b.total);
                }
                bar.bar.set_position(b.done);
                let line = lock(&bar.line).clone();
                lines.insert(b.key, cut(&line, columns));
            }
            node.screen.set_bars(lines);
        });
    }
}

/// What a bar shows: a download's name (or a folder's), its bytes, and a note on the
/// right (its sources, or a folder's files done).
pub struct BarState {
    /// The name, a folder's with its `/`.
    pub key: String,
    /// Verified bytes.
    pub done: u64,
    /// Bytes in all; 0 while not known.
    pub total: u64,
    /// `2 sources`, `3/10 files`.
    pub note: String,
}

/// One download's bar: indicatif keeps its rate and ETA and renders it into `line`.
struct Bar {
    bar: ProgressBar,
    line: Arc<Mutex<String>>,
}

impl Bar {
    fn new(key: &str) -> Bar {
        let line = Arc::new(Mutex::new(String::new()));
        let capture = Capture { line: Arc::clone(&line), building: Mutex::default() };
        // Drawn whenever told: `bars` is what keeps it to ten times a second.
        let target = ProgressDrawTarget::term_like_with_hz(Box::new(capture), 200);
        let bar = ProgressBar::with_draw_target(None, target);
        let style = ProgressStyle::with_template(
            "{prefix}  {binary_bytes}/{binary_total_bytes} [{bar:20}] {percent:>3}%  {binary_bytes_per_sec}  ETA {eta}  {msg}",
        )
        .expect("a valid template")
        .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(shorten(key, NAME_COLUMNS));
        Bar { bar, line }
    }
}

/// `text` in at most `columns` columns, its start cut behind `…` if it is longer.
fn shorten(text: &str, columns: usize) -> String {
    if text.width() <= columns {
        return text.to_owned();
    }
    let mut kept: Vec<char> = Vec::new();
    let mut used = 1;
    for c in text.chars().rev() {
        used += unicode_width::UnicodeWidthChar::width(c).unwrap_or(0);
        if used > columns {
            break;
        }
        kept.push(c);
    }
    std::iter::once('…').chain(kept.into_iter().rev()).collect()
}

/// `line` in at most `columns` columns, its end cut: a bar must fit one row.
fn cut(line: &str, columns: usize) -> String {
    let mut used = 0;
    line.chars()
        .take_while(|&c| {
            used += unicode_width::UnicodeWidthChar::width(c).unwrap_or(0);
            used <= columns
        })
        .collect()
}

/// A terminal that keeps the last line indicatif drew, for the screen to show.
#[derive(Debug)]
struct Capture {
    line: Arc<Mutex<String>>,
    building: Mutex<String>,
}

impl TermLike for Capture {
    fn width(&self) -> u16 {
        u16::try_from(width().saturating_sub(1)).unwrap_or(u16::MAX)
    }
    fn move_cursor_up(&self, _: usize) -> io::Result<()> {
        Ok(())
    }
    fn move_cursor_down(&self, _: usize) -> io::Result<()> {
        Ok(())
    }
    fn move_cursor_right(&self, _: usize) -> io::Result<()> {
        Ok(())
    }
    fn move_cursor_left(&self, _: usize) -> io::Result<()> {
        Ok(())
    }
    fn write_line(&self, s: &str) -> io::Result<()> {
        self.write_str(s)
    }
    fn write_str(&self, s: &str) -> io::Result<()> {
        let mut building = lock(&self.building);
        match s {
            "\r" => building.clear(),
            s => building.push_str(s),
        }
        Ok(())
    }
    fn clear_line(&self) -> io::Result<()> {
        lock(&self.building).clear();
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        let building = std::mem::take(&mut *lock(&self.building));
        *lock(&self.line) = building.trim_end().to_owned();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_count_the_cursor_row() {
        assert_eq!(rows(0, 80), 1);
        assert_eq!(rows(79, 80), 1);
        assert_eq!(rows(80, 80), 2, "at the width the cursor has wrapped");
        assert_eq!(rows(170, 80), 3);
    }

    #[test]
    fn long_names_keep_their_end_and_lines_fit_a_row() {
        assert_eq!(shorten("short.txt", 12), "short.txt");
        assert_eq!(shorten("album/disc 1/01 intro.flac", 12), "… intro.flac");
        assert_eq!(shorten("album/disc 1/01 intro.flac", 12).width(), 12);
        assert_eq!(cut("abcdef", 4), "abcd");
        assert_eq!(cut("日本語", 4), "日本", "wide characters count twice");
    }

    #[test]
    fn a_bar_renders_name_bytes_rate_eta_and_sources() {
        let bar = Bar::new("big.iso");
        bar.bar.set_message("2 sources");
        bar.bar.set_length(4 << 20);
        bar.bar.set_position(1 << 20);
        let line = lock(&bar.line).clone();
        assert!(line.starts_with("big.iso  1.00 MiB/4.00 MiB [=====>   "), "{line}");
        assert!(line.contains(" 25%") && line.contains("ETA") && line.ends_with("2 sources"), "{line}");
    }
}
