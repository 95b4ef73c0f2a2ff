//! What the peer tells its user, as events, and the two ways of printing them: lines
//! for people and scripts that read text (results on stdout, errors and notes on
//! stderr, as they always were), or one JSON object per line on stdout (`--json`),
//! each with a `"type"` (the README documents every type with an example). The node
//! and the shell only say what happened; this module alone decides how it looks, as
//! ripgrep's standard and JSON printers do over one searcher.

use std::io::Write;
use std::net::SocketAddr;

use serde_json::{Value, json};
use unicode_width::UnicodeWidthStr;

use super::folder::Skip;
use super::folder::walk;
use crate::content::Hash;
use crate::text::{count, escape};
use crate::wire::ListEntry;

/// Something to tell the user. Text that came over the network is escaped (text) or
/// carried as a JSON string (which cannot break a line).
pub enum Event<'a> {
    /// The file server is listening.
    Serving { folder: &'a str, addr: SocketAddr },
    /// Logged in to the index.
    LoggedIn { user: &'a str },
    /// `register` or `update` went through; `update` when `updated`.
    Registered { files: usize, server: SocketAddr, skipped: &'a [(String, Skip)], updated: bool },
    /// `unregister` went through.
    Unregistered,
    /// One line of a listing.
    Entry(&'a ListEntry),
    /// One folder in a listing of one level (`--dirs`).
    Folder { path: &'a str, files: u64, bytes: u64 },
    /// The end of a listing: `files` lines (and `folders`), where (`--dirs`), and
    /// whether some were left out.
    ListEnd { files: usize, folders: Option<usize>, place: Option<&'a str>, truncated: bool },
    /// A download is queued.
    Queued { name: &'a str },
    /// A file of a folder download is already here, with the same content.
    AlreadyHere { name: &'a str },
    /// A folder download queued this many files.
    FolderQueued { folder: &'a str, files: usize },
    /// A download of the files matching a glob queued this many.
    GlobQueued { pattern: &'a str, files: usize },
    /// One source of a download failed; `more` if others go on.
    SourceFailed { name: &'a str, from: SocketAddr, why: &'a str, more: bool, bad_piece: Option<u32> },
    /// A download is complete and verified.
    Downloaded {
        name: &'a str,
        size: u64,
        root: &'a Hash,
        sources: &'a [(SocketAddr, u64)],
        resumed: u64,
        /// Contents the index had under the name.
        contents: usize,
    },
    /// A download failed; `peers` are the sources that failed it, in order.
    Failed { name: &'a str, why: &'a str, peers: &'a [SocketAddr] },
    /// A download was cancelled (what it verified is kept).
    Cancelled { name: &'a str, why: &'a str },
    /// How far a running download has come, every few seconds (`--progress`).
    Progress { name: &'a str, done: u64, total: u64, rate: u64, sources: usize },
    /// A running download, in the list of `downloads`.
    Running { name: &'a str, done: u64, total: u64, rate: u64, sources: usize },
    /// A queued download, in the list of `downloads`.
    Waiting { name: &'a str },
    /// A download cancelled or failed with pieces kept, in the list of `downloads`.
    Resumable { name: &'a str, done: u64, total: u64 },
    /// The end of the list of `downloads`.
    DownloadsEnd { running: usize, queued: usize, resumable: usize },
    /// A file was deleted.
    Deleted { name: &'a str },
    /// The help text.
    Help(&'a str),
    /// Something worth knowing that is no failure (a reconnection, say).
    Note(&'a str),
    /// A command failed: the exit status will be 1.
    Error(&'a str),
}

/// How events are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Printer {
    /// Lines: results on stdout, errors and notes on stderr.
    Text,
    /// As `Text`, for a person at a terminal: listings in aligned columns with sizes
    /// as people read them (`1.4 GiB`), printed whole at their end.
    Terminal,
    /// One JSON object per line on stdout, and nothing else there.
    Json,
}

/// A size as people read it: `175 B`, `4.0 KiB`, `1.4 GiB` (powers of 1,024).
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A content's short id: the first 8 hex digits of its root, as `download NAME@ID`
/// takes it.
pub fn short_id(root: &Hash) -> String {
    hex::encode(&root[..4])
}

/// A listing's row on a terminal: name, size, holders; and the content's root.
pub fn row(event: &Event) -> Option<([String; 3], Option<Hash>)> {
    match event {
        Event::Entry(e) => {
            let partial = match e.partial {
                0 => String::new(),
                n => format!(", {n} downloading"),
            };
            let row = [e.name.to_string(), human(e.size), format!("{}{partial}", count(e.peers, "peer"))];
            Some((row, Some(e.root)))
        }
        Event::Folder { path, files, bytes } => {
            Some(([format!("{path}/"), human(*bytes), count(*files, "file")], None))
        }
        _ => None,
    }
}

/// A listing's rows, a name listed with several contents shown as `NAME@ID` each.
pub fn with_ids(rows: Vec<([String; 3], Option<Hash>)>) -> Vec<[String; 3]> {
    let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for (row, _) in &rows {
        *seen.entry(row[0].clone()).or_default() += 1;
    }
    rows.into_iter()
        .map(|(mut row, root)| {
            if let Some(root) = root
                && seen[&row[0]] > 1
            {
                row[0] = format!("{}@{}", row[0], short_id(&root));
            }
            row
        })
        .collect()
}

/// Rows in aligned columns, numbered (as `download #N` takes them), the sizes to the
/// right, following `before` rows already printed and as wide as those at least:
/// `widths` (of the number, name and size columns) grows to fit these.
fn table_from(rows: &[[String; 3]], before: usize, widths: &mut [usize; 3]) -> Vec<String> {
    let width = |i: usize| rows.iter().map(|r| r[i].width()).max().unwrap_or(0);
    let wider = [format!("#{}", before + rows.len()).len(), width(0), width(1)];
    for (w, new) in widths.iter_mut().zip(wider) {
        *w = (*w).max(new);
    }
    let [number, name, size] = *widths;
    let pad = |text: &str, to: usize| " ".repeat(to.saturating_sub(text.width()));
    rows.iter()
        .enumerate()
        .map(|(i, r)| {
            let n = format!("#{}", before + i + 1);
            format!("{n:>number$}  {}{}  {}{}  {}", r[0], pad(&r[0], name), pad(&r[1], size), r[1], r[2])
        })
        .collect()
}

/// Most rows of a listing a terminal's [`Table`] holds to align them: a listing of
/// millions of names must not take the peer's memory. Past it, the rows so far are
/// printed, and the next ones aligned with them.
pub const TABLE_BLOCK: usize = 10_000;

/// A listing on a terminal, gathered to be printed in aligned columns ([`table_from`])
/// a block of at most [`TABLE_BLOCK`] rows at a time.
#[derive(Default)]
pub struct Table {
    rows: Vec<([String; 3], Option<Hash>)>,
    /// Rows already printed: the next is numbered one more.
    printed: usize,
    /// The widths of the columns printed so far, which the next rows keep at least.
    widths: [usize; 3],
}

impl Table {
    /// Adds a row; returns the lines to print now. Those are none until a block has
    /// gathered; then the block, but for the rows of its last name, which may have
    /// more contents to come (`NAME@ID` tells a name's contents apart: see
    /// [`with_ids`]).
    pub fn push(&mut self, row: ([String; 3], Option<Hash>)) -> Vec<String> {
        self.rows.push(row);
        if self.rows.len() < TABLE_BLOCK {
            return Vec::new();
        }
        let last = &self.rows[self.rows.len() - 1].0[0];
        let held = match self.rows.iter().rposition(|(r, _)| r[0] != *last) {
            Some(i) => i + 1,
            // One name's contents fill the whole block.
            None => self.rows.len(),
        };
        let rest = self.rows.split_off(held);
        let block = std::mem::replace(&mut self.rows, rest);
        self.print(block)
    }

    /// The lines of the rows left; the table is then empty, for the next listing.
    pub fn finish(&mut self) -> Vec<String> {
        let rows = std::mem::take(&mut self.rows);
        let lines = self.print(rows);
        *self = Table::default();
        lines
    }

    fn print(&mut self, rows: Vec<([String; 3], Option<Hash>)>) -> Vec<String> {
        let rows = with_ids(rows);
        let lines = table_from(&rows, self.printed, &mut self.widths);
        self.printed += rows.len();
        lines
    }
}

impl Printer {
    /// Prints `event`. A closed stdout or stderr is ignored (a script may stop reading).
    pub fn emit(&self, event: &Event) {
        match self {
            Printer::Json => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{}", json(event));
            }
            Printer::Text | Printer::Terminal => match text(event) {
                Some((line, false)) => crate::outln!("{line}"),
                Some((line, true)) => crate::errln!("{line}"),
                None => {}
            },
        }
    }
}

/// An event as a line of text, and whether it goes to stderr; `None` for an event
/// text does not show (a queued download: its result line follows).
pub fn text(event: &Event) -> Option<(String, bool)> {
    if let Event::Queued { .. } = event {
        return None;
    }
    Some(match event {
        Event::Serving { folder, addr } => (format!("serving {folder} on {addr}"), false),
        Event::LoggedIn { user } => (format!("logged in as {user}"), false),
        Event::Registered { files, server, skipped, updated } => {
            let skipped = match skipped.len() {
                0 => String::new(),
                _ => format!("; skipped {}", walk::summary(skipped)),
            };
            let files = count(*files as u64, "file");
            match updated {
                false => (format!("registered {files} with the index server {server}{skipped}"), false),
                true => (format!("updated: {files} registered{skipped}"), false),
            }
        }
        Event::Unregistered => ("unregistered".into(), false),
        Event::Entry(e) => {
            // Peers downloading it too, when there are any: they serve what they have.
            let partial = match e.partial {
                0 => String::new(),
                n => format!(", {n} downloading"),
            };
            (format!("{}\t{}\t{}{partial}", e.name, count(e.size, "byte"), count(e.peers, "peer")), false)
        }
        Event::Folder { path, files, bytes } => {
            (format!("{path}/\t{}\t{}", count(*bytes, "byte"), count(*files, "file")), false)
        }
        Event::ListEnd { files, folders, place, truncated } => {
            let more = if *truncated { " (more not shown)" } else { "" };
            let files = count(*files as u64, "file");
            match (folders, place) {
                (Some(n), Some(place)) => {
                    let folders = count(*n as u64, "folder");
                    let place =
                        if place.is_empty() { "at the top".to_owned() } else { format!("in {place}") };
                    (format!("{folders} and {files} {place} at other peers{more}"), false)
                }
                _ => (format!("{files} at other peers{more}"), false),
            }
        }
        Event::Queued { .. } => unreachable!("shown by none"),
        Event::AlreadyHere { name } => (format!("already here: {name}"), false),
        Event::FolderQueued { folder, files } => {
            (format!("downloading {} under {folder}/", count(*files as u64, "file")), false)
        }
        Event::GlobQueued { pattern, files } => {
            (format!("downloading {} matching {pattern}", count(*files as u64, "file")), false)
        }
        Event::SourceFailed { name, from, why, more, bad_piece } => {
            let next = if *more { "; going on with the other peers" } else { "" };
            let why = match bad_piece {
                Some(piece) => format!(
                    "piece {piece} failed its hash; nothing it sent is kept, and it goes to the back of the order for {} minutes",
                    super::download::PENALTY.as_secs() / 60
                ),
                None => escape(why).into_owned(),
            };
            (format!("error: cannot download {name:?} from {from}: {why}{next}"), true)
        }
        Event::Downloaded { name, size, root, sources, resumed, contents } => {
            let resumed = match resumed {
                0 => String::new(),
                n => format!(", {} of it already here", count(*n, "byte")),
            };
            // Which one, when the name had several.
            let which = match contents {
                0 | 1 => String::new(),
                n => format!("; content {} of the {n} under that name", short_id(root)),
            };
            (
                format!(
                    "downloaded {name} ({}) {}{resumed}{which}",
                    count(*size, "byte"),
                    from_sources(sources)
                ),
                false,
            )
        }
        Event::Failed { name, why, .. } => {
            (format!("error: cannot download {name:?}: {}", escape(why)), true)
        }
        Event::Cancelled { name, why } => (format!("cancelled {name}: {}", escape(why)), false),
        Event::Progress { name, done, total, rate, sources } => {
            let [done, rate, sources] = progress(*done, *total, *rate, *sources);
            (format!("progress {name}: {done}, {rate}, {sources}"), true)
        }
        Event::Running { name, done, total, rate, sources } => {
            let [done, rate, sources] = progress(*done, *total, *rate, *sources);
            (format!("{name}\t{done}\t{rate}\t{sources}"), false)
        }
        Event::Waiting { name } => (format!("{name}\tqueued"), false),
        Event::Resumable { name, done, total } => {
            let [done, ..] = progress(*done, *total, 0, 0);
            (format!("{name}\t{done}\tresumable"), false)
        }
        Event::DownloadsEnd { running, queued, resumable } => match resumable {
            0 => (format!("{running} running, {queued} queued"), false),
            n => (format!("{running} running, {queued} queued, {n} resumable"), false),
        },
        Event::Deleted { name } => (format!("deleted {name}"), false),
        Event::Help(text) => ((*text).to_owned(), false),
        Event::Note(note) => (format!("note: {}", escape(note)), true),
        // Errors can carry text from the network; the escaping is idempotent.
        Event::Error(why) => (format!("error: {}", escape(why)), true),
    })
}

/// How far a download has come, as words: "524288 of 1048576 bytes (50%)",
/// "210000 bytes/s", "2 sources". A total of 0 is a size not known yet (the index
/// not yet answered): "size not known yet", not "0 of 0 bytes (100%)" (an empty file's
/// download ends as soon as its size is known).
fn progress(done: u64, total: u64, rate: u64, sources: usize) -> [String; 3] {
    let percent = (done * 100).checked_div(total).unwrap_or(100);
    [
        match total {
            0 => "size not known yet".to_owned(),
            _ => format!("{done} of {total} bytes ({percent}%)"),
        },
        format!("{rate} bytes/s"),
        count(sources as u64, "source"),
    ]
}

/// Where a download came from: "from A", "from A and B (2 peers)", "from A, B, C and
/// 2 more (5 peers)": up to three peers, the ones that sent the most first.
fn from_sources(sources: &[(SocketAddr, u64)]) -> String {
    let named: Vec<String> = sources.iter().take(3).map(|(addr, _)| addr.to_string()).collect();
    match sources.len() {
        0 => "from the partial download already here".to_owned(),
        1 => format!("from {}", named[0]),
        n @ (2 | 3) => format!("from {} and {} ({n} peers)", named[..n - 1].join(", "), named[n - 1]),
        n => format!("from {} and {} more ({n} peers)", named.join(", "), n - 3),
    }
}

/// A running download's size for JSON: `null` while it is not known yet (the index
/// has not answered), as the text says "size not known yet".
fn known(total: u64) -> Option<u64> {
    (total > 0).then_some(total)
}

/// An event as one JSON object.
fn json(event: &Event) -> Value {
    match event {
        Event::Serving { folder, addr } => {
            json!({"type": "serving", "folder": folder, "address": addr.to_string()})
        }
        Event::LoggedIn { user } => json!({"type": "logged_in", "user": user}),
        Event::Registered { files, server, skipped, updated } => json!({
            "type": if *updated { "updated" } else { "registered" },
            "files": files,
            "server": server.to_string(),
            "skipped": skipped.iter().map(|(path, why)| json!({"path": path, "reason": why.to_string()})).collect::<Vec<_>>(),
        }),
        Event::Unregistered => json!({"type": "unregistered"}),
        Event::Entry(e) => json!({
            "type": "entry",
            "name": e.name.as_str(),
            "size": e.size,
            "root": hex::encode(e.root),
            "peers": e.peers,
            "downloading": e.partial,
        }),
        Event::Folder { path, files, bytes } => {
            json!({"type": "folder", "path": path, "files": files, "bytes": bytes})
        }
        Event::ListEnd { files, folders, truncated, .. } => {
            json!({"type": "list_end", "files": files, "folders": folders, "truncated": truncated})
        }
        Event::Queued { name } => json!({"type": "queued", "name": name}),
        Event::AlreadyHere { name } => json!({"type": "already_here", "name": name}),
        Event::FolderQueued { folder, files } => {
            json!({"type": "folder_queued", "folder": folder, "files": files})
        }
        Event::GlobQueued { pattern, files } => {
            json!({"type": "glob_queued", "pattern": pattern, "files": files})
        }
        Event::SourceFailed { name, from, why, more, bad_piece } => json!({
            "type": "source_failed",
            "name": name,
            "peer": from.to_string(),
            "reason": match bad_piece { Some(p) => format!("piece {p} failed its hash"), None => (*why).to_owned() },
            "bad_piece": bad_piece,
            "others_go_on": more,
        }),
        Event::Downloaded { name, size, root, sources, resumed, contents } => json!({
            "contents": contents,
            "type": "downloaded",
            "name": name,
            "size": size,
            "root": hex::encode(root),
            "sources": sources.iter().map(|(a, bytes)| json!({"peer": a.to_string(), "bytes": bytes})).collect::<Vec<_>>(),
            "resumed_bytes": resumed,
        }),
        Event::Failed { name, why, peers } => json!({
            "type": "failed",
            "name": name,
            "reason": why,
            "peers": peers.iter().map(ToString::to_string).collect::<Vec<_>>(),
        }),
        Event::Cancelled { name, why } => json!({"type": "cancelled", "name": name, "reason": why}),
        Event::Progress { name, done, total, rate, sources } => json!({
            "type": "progress", "name": name, "done": done, "total": known(*total), "bytes_per_sec": rate, "sources": sources,
        }),
        Event::Running { name, done, total, rate, sources } => json!({
            "type": "running", "name": name, "done": done, "total": known(*total), "bytes_per_sec": rate, "sources": sources,
        }),
        Event::Waiting { name } => json!({"type": "waiting", "name": name}),
        Event::Resumable { name, done, total } => {
            json!({"type": "resumable", "name": name, "done": done, "total": total})
        }
        Event::DownloadsEnd { running, queued, resumable } => {
            json!({"type": "downloads_end", "running": running, "queued": queued, "resumable": resumable})
        }
        Event::Deleted { name } => json!({"type": "deleted", "name": name}),
        Event::Help(text) => json!({"type": "help", "text": text}),
        Event::Note(note) => json!({"type": "note", "message": note}),
        Event::Error(why) => json!({"type": "error", "message": why}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_read_them() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1023), "1023 B");
        assert_eq!(human(4096), "4.0 KiB");
        assert_eq!(human(1_503_238_553), "1.4 GiB");
        assert_eq!(human(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn a_download_whose_size_is_not_known_yet_says_so_rather_than_100_percent() {
        assert_eq!(progress(0, 0, 0, 0), ["size not known yet", "0 bytes/s", "0 sources"]);
        assert_eq!(progress(524_288, 1_048_576, 210_000, 2)[0], "524288 of 1048576 bytes (50%)");
        assert_eq!(progress(1, 3, 0, 1), ["1 of 3 bytes (33%)", "0 bytes/s", "1 source"]);
    }

    #[test]
    fn a_name_with_several_contents_shows_their_ids() {
        let row = |name: &str| [name.to_owned(), "1 B".to_owned(), "1 peer".to_owned()];
        let rows =
            vec![(row("a"), Some([0xab; 32])), (row("a"), Some([0xcd; 32])), (row("b"), Some([1; 32]))];
        let shown: Vec<String> = with_ids(rows).into_iter().map(|r| r[0].clone()).collect();
        assert_eq!(shown, ["a@abababab", "a@cdcdcdcd", "b"]);
    }

    /// A whole table at once.
    fn table(rows: &[[String; 3]]) -> Vec<String> {
        table_from(rows, 0, &mut [0; 3])
    }

    #[test]
    fn a_table_aligns_names_left_and_sizes_right() {
        let rows = [
            ["a.txt".to_owned(), "5 B".to_owned(), "1 peer".to_owned()],
            ["album/".to_owned(), "1.4 GiB".to_owned(), "12 files".to_owned()],
        ];
        assert_eq!(table(&rows), ["#1  a.txt       5 B  1 peer", "#2  album/  1.4 GiB  12 files"]);
        let wide = [["日本.txt".to_owned(), "5 B".to_owned(), "1 peer".to_owned()], rows[0].clone()];
        assert_eq!(table(&wide), ["#1  日本.txt  5 B  1 peer", "#2  a.txt     5 B  1 peer"], "by columns");
    }

    #[test]
    fn a_long_table_is_printed_a_block_at_a_time_numbered_on_and_never_narrower() {
        let row = |name: String, root: u8| ([name, "1 B".to_owned(), "1 peer".to_owned()], Some([root; 32]));
        let mut table = Table::default();
        let mut lines = Vec::new();
        // Rows 1..=9,999 and a name with two contents across the first block's end.
        for i in 1..TABLE_BLOCK {
            assert_eq!(table.push(row(format!("f{i}"), 1)), Vec::<String>::new());
        }
        let block = table.push(row("twice".into(), 0xab));
        assert_eq!(block.len(), TABLE_BLOCK - 1, "the last name is held back for its other contents");
        lines.extend(block);
        lines.extend(table.push(row("twice".into(), 0xcd)));
        lines.extend(table.push(row("g".into(), 1)));
        let rest = table.finish();
        assert_eq!(rest.len(), 3);
        lines.extend(rest);
        assert_eq!(lines[0], "   #1  f1     1 B  1 peer");
        assert_eq!(lines[TABLE_BLOCK - 2], "#9999  f9999  1 B  1 peer");
        assert_eq!(lines[TABLE_BLOCK - 1], "#10000  twice@abababab  1 B  1 peer");
        assert_eq!(lines[TABLE_BLOCK], "#10001  twice@cdcdcdcd  1 B  1 peer");
        assert_eq!(lines[TABLE_BLOCK + 1], "#10002  g               1 B  1 peer");
        // The next listing starts afresh.
        table.push(row("h".into(), 1));
        assert_eq!(table.finish(), ["#1  h  1 B  1 peer"]);
    }
}
