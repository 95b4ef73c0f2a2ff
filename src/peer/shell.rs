//! The peer's command loop: one command a line on stdin, results on stdout, errors on
//! stderr starting with `error:`.
//!
//! Downloads run in background threads so the shell stays usable; at the end of input
//! (or `quit`) the shell waits for them. The exit status says whether every command,
//! downloads included, succeeded, so a script can pipe commands in and trust it.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use unicode_width::UnicodeWidthStr;

use super::client::Listing;
use super::node::Node;
use super::printer::{Event, Printer};
use crate::auth;
use crate::content::Hash;
use crate::name::SharePath;
use crate::text::count;
use crate::wire::Request;

/// Longest command line accepted, in bytes: a command and the longest name (a path of
/// 4,096 bytes) need less; the cap keeps a runaway input from being buffered whole.
pub const MAX_LINE_LEN: usize = 8192;

/// Most lines of a listing kept for `download #N` (about 100 bytes each), and most
/// files and folders that `get_files_list --dirs` gathers at one level: a listing of
/// millions of names (or an index that never ends one) must not take the peer's
/// memory. Past it, `#N` says so, and `--dirs` shows what it kept and says that there
/// is more.
pub const MAX_KEPT_LINES: usize = 100_000;

/// The help text printed by `help`.
pub const HELP: &str = "\
commands:
  register                          share this folder's files with the index
  unregister                        stop sharing
  get_files_list [--limit N] [TEXT] list files at other peers (names containing TEXT)
  get_files_list --dirs [FOLDER]    list one level of FOLDER (the top if none):
                                    folders first, with their file counts and sizes
  download NAME                     fetch NAME from a peer into this folder
                                    (album/01.flac: into the folder album, made if need be)
  download FOLDER/                  fetch every file listed under FOLDER, with its folders
  download GLOB | #N | \"A\" \"B\"      fetch the files matching GLOB (*.flac), line N of
                                    the last listing, or several names, each quoted
  delete NAME                       delete NAME from this folder (and from the index)
                                    (quote a name with spaces at its ends: \" a.txt\")
  update                            rescan this folder and send the new list
  downloads                         list the running, queued and resumable downloads
  cancel NAME | --all               stop a download (or all), keeping what it verified
  wait                              wait until every download has ended (for scripts)
  login NAME                        log in to the index server (password from
                                    PEERDEX_PASSWORD, or asked for)
  help [COMMAND]                    this text, or one command's with an example
  quit                              wait for downloads, then exit
aliases: ls = get_files_list, get = download, rm = delete";

/// Each command's own help, with an example: `help COMMAND`.
const COMMAND_HELP: [(&str, &str); 11] = [
    (
        "downloads",
        "downloads\n  list the running downloads (name, bytes done of all, rate, sources), then the queued ones,\n  then those cancelled or failed with pieces kept, which a download of the name resumes.\n  example: downloads",
    ),
    (
        "wait",
        "wait\n  wait until every queued and running download has ended and its result line is out:\n  downloads run in the background, and a script's next line may need the file.\n  example: download a.txt, then wait, then delete a.txt",
    ),
    (
        "cancel",
        "cancel NAME | --all\n  stop the download of NAME (or every download); what it verified is kept, and a later\n  download of NAME resumes from there. A queued download does not start.\n  examples: cancel big.iso    cancel --all",
    ),
    (
        "register",
        "register\n  share this folder's files (every file under it) with the index server.\n  example: register",
    ),
    ("unregister", "unregister\n  stop sharing: the index forgets this peer's files.\n  example: unregister"),
    (
        "get_files_list",
        "get_files_list [--limit N] [--dirs] [TEXT]   (alias: ls)\n  list the files at other peers whose names contain TEXT (ASCII case ignored); with\n  --dirs, one level of the folder TEXT, folders first.\n  examples: get_files_list flac --limit 20    ls --dirs album",
    ),
    (
        "download",
        "download NAME | FOLDER/ | GLOB | #N | \"NAME\" \"NAME\" ...   (alias: get)\n  fetch NAME (a path such as album/01.flac) from the peers that share it, verified piece\n  by piece; with a trailing '/', every file under FOLDER; with a bare * or ?, every file\n  whose path matches (* within a folder, ** across); #N, line N of the last listing.\n  Quote a name with spaces at its ends, and each of several names.\n  examples: download album/01 intro.flac    get album/    get *.flac    get #3\n            download \"a.txt\" \"b c.txt\"",
    ),
    (
        "delete",
        "delete NAME   (alias: rm)\n  delete NAME from this folder and, if registered, from the index.\n  example: delete old.txt",
    ),
    (
        "update",
        "update\n  rescan this folder and send the new list (the folder is watched, so rarely needed).\n  example: update",
    ),
    (
        "login",
        "login NAME\n  log in to the index server (password from PEERDEX_PASSWORD, or asked for).\n  example: login ann",
    ),
    (
        "quit",
        "quit   (or exit, or the end of input)\n  wait for downloads, then exit with status 0 if every command succeeded.\n  example: quit",
    ),
];

/// What one `download` fetches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A file, the content most shared under its name.
    File(SharePath),
    /// One content of a name that has several (`NAME@abcd1234`).
    Content(SharePath, String),
    /// Every file the index lists under a folder (`album/`).
    Folder(SharePath),
    /// Every file at other peers whose name matches a glob (`*.flac`): `*` and `?`
    /// within one folder level, `**` across levels, `[...]` and `{a,b}` as in a shell.
    Glob(String),
    /// The N-th line of the last listing (`#3`), counted from 1.
    Line(usize),
}

/// One parsed command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Register this peer and its files.
    Register,
    /// Remove this peer's registration.
    Unregister,
    /// List files at other peers.
    List {
        /// Only names containing this text (ASCII case ignored); empty for all. With
        /// `dirs`, the folder to list instead (empty for the top).
        pattern: String,
        /// At most this many lines.
        limit: Option<u32>,
        /// List one level of a folder, folders first, with their file counts and sizes.
        dirs: bool,
    },
    /// Download files: each target in turn.
    Download(Vec<Target>),
    /// Delete a file from the folder.
    Delete(SharePath),
    /// Rescan the folder and send the list.
    Update,
    /// List the running and queued downloads.
    Downloads,
    /// Wait until every queued and running download has ended.
    Wait,
    /// Cancel one download (`None`: all of them), keeping what it verified.
    Cancel(Option<SharePath>),
    /// Log in to the index server as this user.
    Login(String),
    /// Print the help text, or one command's.
    Help(Option<String>),
    /// Stop reading commands.
    Quit,
}

impl Command {
    /// Parses one line. `Ok(None)` for a blank line.
    ///
    /// After `download` or `delete`, the rest of the line is the name, so names may
    /// contain spaces as they are (`download a b.txt`); a name that starts with a quote
    /// is read shell-style instead, so that it can keep leading or trailing spaces
    /// (`download " lead.txt"`, `delete 'a b '`). After `get_files_list`, words are
    /// split shell-style, `--limit N` may come anywhere, `--` ends the options, and the
    /// other words, joined by single spaces, are the text to look for.
    pub fn parse(line: &str) -> Result<Option<Command>, String> {
        let line = line.trim_matches(|c: char| c.is_ascii_whitespace());
        if line.is_empty() {
            return Ok(None);
        }
        let (word, rest) = line.split_once(|c: char| c.is_ascii_whitespace()).unwrap_or((line, ""));
        let rest = rest.trim_start_matches(|c: char| c.is_ascii_whitespace());
        let no_args = |c: Command| {
            if rest.is_empty() { Ok(Some(c)) } else { Err(format!("{word} takes no arguments")) }
        };
        // Short names beside the seed's.
        let word = match word {
            "ls" => "get_files_list",
            "get" => "download",
            "rm" => "delete",
            other => other,
        };
        match word {
            "register" => no_args(Command::Register),
            "unregister" => no_args(Command::Unregister),
            "update" => no_args(Command::Update),
            "downloads" => no_args(Command::Downloads),
            "wait" => no_args(Command::Wait),
            "cancel" if rest == "--all" => Ok(Some(Command::Cancel(None))),
            "cancel" => checked(&one_name(word, rest)?).map(|n| Some(Command::Cancel(Some(n)))),
            "help" if rest.is_empty() => Ok(Some(Command::Help(None))),
            "help" => {
                let topic = match rest {
                    "ls" => "get_files_list",
                    "get" => "download",
                    "rm" => "delete",
                    "exit" => "quit",
                    other => other,
                };
                match COMMAND_HELP.iter().find(|(name, _)| *name == topic) {
                    Some((_, text)) => Ok(Some(Command::Help(Some((*text).to_owned())))),
                    None => Err(format!("no command {rest:?} (type help for the list)")),
                }
            }
            "quit" | "exit" => no_args(Command::Quit),
            "download" => targets(rest).map(|t| Some(Command::Download(t))),
            "delete" => checked(&one_name(word, rest)?).map(|n| Some(Command::Delete(n))),
            "login" => {
                if rest.is_empty() {
                    return Err("login needs a user name, as in: login ann".into());
                }
                auth::check_user(rest).map(|()| Some(Command::Login(rest.to_owned())))
            }
            "get_files_list" => list(rest).map(Some),
            _ => Err(format!("unknown command {:?} (type help for the list)", word)),
        }
    }
}

/// `NAME@ID`, where ID is a content's 8 hex digits (as listings on a terminal show a
/// name with several contents): the name and the id.
fn content_id(text: &str) -> Option<(&str, &str)> {
    let (name, id) = text.rsplit_once('@')?;
    let hex = |c: char| c.is_ascii_digit() || ('a'..='f').contains(&c);
    (id.len() == 8 && id.chars().all(hex) && !name.is_empty()).then_some((name, id))
}

/// The targets of `download`: see [`Command::parse`].
///
/// A line with no quote at its start, no `*` or `?` and more than `#N` words is one
/// name, spaces and all, as it always was. Otherwise it is split into words as a shell
/// would: a quoted word is a name (or folder) as it is, `#N` a line of the last listing,
/// and a word with a bare `*`, `?`, `[` or `{` a glob.
fn targets(rest: &str) -> Result<Vec<Target>, String> {
    if rest.is_empty() {
        return Err("download needs a file name, as in: download notes.txt".into());
    }
    let lines = rest.split_ascii_whitespace().all(|w| line_number(w).is_some());
    if !lines && !rest.starts_with(['"', '\'']) && !rest.contains(['*', '?']) {
        return Ok(vec![target(rest)?]);
    }
    let words = split_marked(rest)?;
    let mut targets = Vec::with_capacity(words.len());
    for word in words {
        let text: String = word.iter().map(|(c, _)| c).collect();
        let bare = |set: &[char]| word.iter().any(|(c, quoted)| !quoted && set.contains(c));
        if word.iter().all(|(_, quoted)| !quoted)
            && let Some(n) = line_number(&text)
        {
            if n == 0 {
                return Err("there is no line #0: a listing's lines are numbered from 1".into());
            }
            targets.push(Target::Line(n));
        } else if bare(&['*', '?', '[', '{']) {
            let mut glob = String::new();
            for (c, quoted) in &word {
                match quoted {
                    true => glob.push_str(&globset::escape(&c.to_string())),
                    false => glob.push(*c),
                }
            }
            globset::GlobBuilder::new(&glob)
                .literal_separator(true)
                .build()
                .map_err(|e| format!("invalid pattern {text:?}: {}", e.kind()))?;
            targets.push(Target::Glob(glob));
        } else {
            targets.push(target(&text)?);
        }
    }
    Ok(targets)
}

/// `#N`: N (0 too, which [`targets`] refuses).
fn line_number(word: &str) -> Option<usize> {
    let digits = word.strip_prefix('#')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// One name as `download` takes it: a folder with a trailing '/', a content with
/// `@` and its id, else a file.
fn target(name: &str) -> Result<Target, String> {
    if name.ends_with('/') {
        let folder = name.trim_end_matches('/');
        return SharePath::parse(folder)
            .map(Target::Folder)
            .map_err(|why| format!("invalid folder name {name:?}: {why}"));
    }
    match content_id(name) {
        Some((base, id)) => checked(base).map(|n| Target::Content(n, id.to_owned())),
        None => checked(name).map(Target::File),
    }
}

/// Splits `text` into words as a POSIX shell does (single quotes, double quotes with
/// `\` escapes, a backslash outside them), each character marked with whether it was
/// quoted or escaped: that decides whether a `*` is a pattern or a character.
fn split_marked(text: &str) -> Result<Vec<Vec<(char, bool)>>, String> {
    let unmatched = || format!("unmatched quote in {text:?}: close it, as in: download \"a name.txt\"");
    let (mut words, mut word, mut started) = (Vec::new(), Vec::new(), false);
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_ascii_whitespace() => {
                if started {
                    words.push(std::mem::take(&mut word));
                    started = false;
                }
            }
            '\'' => {
                started = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push((c, true)),
                        None => return Err(unmatched()),
                    }
                }
            }
            '"' => {
                started = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push((c, true)),
                            Some(c) => word.extend([('\\', true), (c, true)]),
                            None => return Err(unmatched()),
                        },
                        Some(c) => word.push((c, true)),
                        None => return Err(unmatched()),
                    }
                }
            }
            '\\' => {
                started = true;
                match chars.next() {
                    Some(c) => word.push((c, true)),
                    None => return Err(format!("a backslash ends {text:?}: put a character after it")),
                }
            }
            c => {
                started = true;
                word.push((c, false));
            }
        }
    }
    if started {
        words.push(word);
    }
    Ok(words)
}

/// `name` as a [`SharePath`], or an error that names it.
fn checked(name: &str) -> Result<SharePath, String> {
    SharePath::parse(name).map_err(|why| format!("invalid file name {name:?}: {why}"))
}

/// The one file name after `word`, unquoted: see [`Command::parse`].
fn one_name(word: &str, rest: &str) -> Result<String, String> {
    if rest.is_empty() {
        return Err(format!("{word} needs a file name, as in: {word} notes.txt"));
    }
    let name = if rest.starts_with(['"', '\'']) {
        let words = shell_words::split(rest)
            .map_err(|_| format!("unmatched quote in {rest:?}: close it, as in: {word} \" a name.txt\""))?;
        match <[String; 1]>::try_from(words) {
            Ok([name]) => name,
            Err(_) => {
                return Err(format!("{word} takes one name; put it in quotes, as in: {word} \"a name.txt\""));
            }
        }
    } else {
        rest.to_owned()
    };
    Ok(name)
}

/// The arguments of `get_files_list`: see [`Command::parse`].
fn list(rest: &str) -> Result<Command, String> {
    let words = shell_words::split(rest).map_err(|_| {
        format!("unmatched quote in {rest:?}: put the text in double quotes, as in: get_files_list \"don't\"")
    })?;
    let (mut limit, mut pattern, mut options, mut dirs) = (None, Vec::new(), true, false);
    let mut words = words.into_iter();
    while let Some(w) = words.next() {
        if options && w == "--" {
            options = false;
        } else if options && (w == "--limit" || w.starts_with("--limit=")) {
            let n = match w.strip_prefix("--limit=") {
                Some(n) => n.to_owned(),
                None => words.next().ok_or("--limit needs a number, as in: --limit 10")?,
            };
            limit = Some(n.parse::<u32>().map_err(|_| format!("--limit needs a number, not {n:?}"))?);
        } else if options && w == "--dirs" {
            dirs = true;
        } else if options && w.starts_with("--") {
            return Err(format!("unknown option {w:?} (put -- before text that starts with --)"));
        } else {
            pattern.push(w);
        }
    }
    let pattern = pattern.join(" ");
    if dirs {
        let folder = pattern.trim_end_matches('/');
        if !folder.is_empty() {
            SharePath::parse(folder).map_err(|why| format!("invalid folder name {pattern:?}: {why}"))?;
        }
    }
    Ok(Command::List { pattern, limit, dirs })
}

/// What one line of input turned out to be.
enum Line {
    Text(String),
    Bad(String),
    End,
}

/// Reads one line of at most [`MAX_LINE_LEN`] bytes. A longer line is read to its end
/// and reported; a line that is not UTF-8 is reported; neither stops the loop.
fn read_line(input: &mut impl BufRead) -> io::Result<Line> {
    let mut buf = Vec::new();
    let n = io::Read::take(&mut *input, MAX_LINE_LEN as u64 + 1).read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(Line::End);
    }
    if buf.len() > MAX_LINE_LEN && buf.last() != Some(&b'\n') {
        // Skip the rest of the line without keeping it.
        loop {
            let chunk = input.fill_buf()?;
            if chunk.is_empty() {
                break;
            }
            match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    input.consume(i + 1);
                    break;
                }
                None => {
                    let len = chunk.len();
                    input.consume(len);
                }
            }
        }
        return Ok(Line::Bad(format!("line longer than {MAX_LINE_LEN} bytes ignored")));
    }
    match String::from_utf8(buf) {
        Ok(text) => Ok(Line::Text(text)),
        Err(_) => Ok(Line::Bad("line is not valid UTF-8; ignored".into())),
    }
}

/// Names the index lists, each with its contents: size, root, and how many peers
/// share it.
type Offers = BTreeMap<SharePath, Vec<(u64, Hash, u32)>>;

/// The command loop. See the module docs.
pub struct Shell {
    node: Arc<Node>,
    /// The lines of the last listing, for `download #N`.
    last: std::sync::Mutex<Listed>,
}

/// The last listing, as `download #N` picks from it.
#[derive(Default)]
struct Listed {
    /// Its first [`MAX_KEPT_LINES`] lines.
    picks: Vec<Pick>,
    /// How many lines it had.
    lines: usize,
}

/// A line of a listing, as `download #N` takes it.
#[derive(Clone)]
enum Pick {
    /// A file, with the content listed on that line.
    File(SharePath, Hash),
    /// A folder (`get_files_list --dirs`).
    Folder(SharePath),
}

impl Shell {
    /// A shell over `node`.
    pub fn new(node: Arc<Node>) -> Shell {
        Shell { node, last: std::sync::Mutex::default() }
    }

    /// Runs commands from `input` until it ends or `quit`, then waits for downloads.
    /// Meanwhile a supervisor thread pings the index every `keepalive` and, if the
    /// connection is lost, reconnects and registers again. Returns true if every
    /// command succeeded.
    pub fn run(self, mut input: impl BufRead, keepalive: Duration) -> bool {
        let supervisor = Arc::clone(&self.node);
        let spawned =
            thread::Builder::new().name("supervisor".into()).spawn(move || supervisor.supervise(keepalive));
        if let Err(e) = spawned {
            self.node.fail(format!("cannot start the supervisor thread: {e}"));
        }
        let terminal = io::stdin().is_terminal() && io::stdout().is_terminal();
        if terminal && self.node.printer == Printer::Terminal {
            self.edit_lines(&mut input);
        } else {
            let interactive = io::stdin().is_terminal();
            loop {
                if interactive && self.node.printer != Printer::Json {
                    print!("peerdex> ");
                    let _ = io::stdout().flush();
                }
                let line = match read_line(&mut input) {
                    Ok(Line::End) => break,
                    Ok(Line::Text(line)) => line,
                    Ok(Line::Bad(why)) => {
                        self.node.fail(why);
                        continue;
                    }
                    Err(e) => {
                        self.node.fail(format!("cannot read input: {e}"));
                        break;
                    }
                };
                if self.line(&line, interactive, &mut input) == Flow::Quit {
                    break;
                }
            }
        }
        // No more downloads can be queued: every worker ends once the queue is empty.
        self.node.finish();
        self.node.succeeded()
    }

    /// The terminal's loop: a line editor (rustyline) with history kept across runs
    /// ([`history_path`]), Ctrl-R search, tab completion of commands and of names the
    /// index lists, and background messages printed above the line being typed. At
    /// the prompt, the first Ctrl-C cancels the running downloads (keeping what they
    /// verified); a second one in a row quits. While a command runs, Ctrl-C stops a
    /// `wait` or a listing; a second one before the command ends quits.
    fn edit_lines(&self, input: &mut impl BufRead) {
        let config = rustyline::Config::builder()
            .auto_add_history(true)
            .completion_type(rustyline::CompletionType::List)
            // A list at the first Tab where it is ambiguous, as bash's
            // show-all-if-ambiguous: the one moment the screen knows it comes.
            .completion_show_all_if_ambiguous(true)
            .build();
        let mut editor =
            match rustyline::Editor::<Completion, rustyline::history::FileHistory>::with_config(config) {
                Ok(editor) => editor,
                Err(e) => return self.node.fail(format!("cannot edit lines on this terminal: {e}")),
            };
        let typed = Arc::new(std::sync::Mutex::new(String::new()));
        editor.set_helper(Some(Completion { node: Arc::clone(&self.node), typed: Arc::clone(&typed) }));
        let history = history_path();
        if let Some(path) = &history {
            let _ = editor.load_history(path);
        }
        let screen = &self.node.screen;
        // Progress bars, only where other threads can print above the prompt.
        let (stop_bars, bars) = mpsc::channel::<()>();
        let mut drawing = None;
        if let Ok(printer) = editor.create_external_printer() {
            screen.print_through(Some(Box::new(printer)));
            let node = Arc::clone(&self.node);
            drawing = thread::Builder::new()
                .name("bars".into())
                .spawn(move || super::screen::bars(&node, &bars))
                .ok();
        }
        // Ctrl-C while a command runs (the editor reads it as a key only at the prompt):
        // the first stops a `wait` or a listing; a second before the command has ended
        // quits, as Ctrl-C did before it was caught.
        let stop = Arc::clone(&self.node.stop);
        let caught = ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            // Straight to the terminal: this thread must never wait on the screen's
            // locks, or a second Ctrl-C could not quit.
            eprintln!("note: interrupted; Ctrl-C again to quit");
        });
        if let Err(e) = caught {
            log::warn!("cannot catch Ctrl-C: {e}");
        }
        let mut interrupted = false;
        loop {
            screen.reading();
            // A Ctrl-C that no command took (one that cannot be stopped) is forgotten
            // here, before the editor reads: from the moment it hands a line back, a
            // Ctrl-C is the command's.
            self.node.stop.store(false, Ordering::SeqCst);
            let read = editor.readline(PROMPT);
            let drawn = std::mem::take(&mut *crate::lock(&typed));
            let line = match &read {
                Ok(line) => line.clone(),
                // Ctrl-C or Ctrl-D: the line as it was drawn.
                Err(_) => drawn,
            };
            screen.accepted(PROMPT, &line);
            match read {
                Ok(line) => {
                    interrupted = false;
                    if self.line(&line, true, input) == Flow::Quit {
                        break;
                    }
                }
                Err(rustyline::error::ReadlineError::Interrupted) if !interrupted => {
                    interrupted = true;
                    let n = self.node.cancel(None).len();
                    let note = format!("cancelled {}; Ctrl-C again to quit", count(n as u64, "download"));
                    self.node.emit(&Event::Note(&note));
                }
                Err(rustyline::error::ReadlineError::Interrupted | rustyline::error::ReadlineError::Eof) => {
                    break;
                }
                Err(e) => {
                    self.node.fail(format!("cannot read input: {e}"));
                    break;
                }
            }
        }
        if let Some(path) = &history
            && let Some(dir) = path.parent()
            && fs::create_dir_all(dir).is_ok()
            && let Err(e) = editor.save_history(path)
        {
            log::warn!("cannot save the history in {}: {e}", path.display());
        }
        // Downloads still running at `quit` end with their lines alone.
        drop(stop_bars);
        if let Some(drawing) = drawing {
            let _ = drawing.join();
        }
        screen.clear_bars();
        // Dropped first: a thread waiting on its printer is released.
        drop(editor);
        screen.print_through(None);
    }

    /// One line of input, from whichever loop read it.
    fn line(&self, line: &str, interactive: bool, input: &mut impl BufRead) -> Flow {
        match Command::parse(line) {
            Ok(None) => {}
            Ok(Some(Command::Quit)) => return Flow::Quit,
            Ok(Some(Command::Login(user))) => {
                // The server is asked first; only then the password, which may have
                // to be read from this same input.
                let password = || {
                    self.node.screen.pause(true);
                    let typed = password_for(&user, interactive, input);
                    self.node.screen.pause(false);
                    typed
                };
                match self.node.index.login(&user, password) {
                    Ok(()) => self.node.emit(&Event::LoggedIn { user: &user }),
                    Err(e) => self.node.fail(format!("login failed: {e:#}")),
                }
            }
            Ok(Some(command)) => self.reporting(command),
            Err(why) => self.node.fail(why),
        }
        Flow::Go
    }

    /// Runs one command line as if it had been typed (`--register` at start).
    pub fn execute_line(&self, line: &str) {
        match Command::parse(line) {
            Ok(Some(command)) => self.reporting(command),
            Ok(None) => {}
            Err(why) => self.node.fail(why),
        }
    }

    /// Runs `command`; a failure is reported, and counts for the exit status.
    fn reporting(&self, command: Command) {
        if let Err(e) = self.execute(command) {
            self.node.fail(format!("{e:#}"));
        }
    }

    fn execute(&self, command: Command) -> anyhow::Result<()> {
        let node = &self.node;
        match command {
            Command::Register => {
                let (files, skipped) = node.register().context("register failed")?;
                let server = node.index.server();
                node.emit(&Event::Registered { files, server, skipped: &skipped, updated: false });
            }
            Command::Unregister => {
                node.index.change(&Request::Unregister).context("unregister failed")?;
                node.registered.store(false, Ordering::SeqCst);
                node.emit(&Event::Unregistered);
            }
            Command::Update => {
                let (files, skipped) = node.update().context("update failed")?;
                let server = node.index.server();
                node.emit(&Event::Registered { files, server, skipped: &skipped, updated: true });
            }
            Command::List { pattern, limit, dirs: true } => self.list_folder(&pattern, limit)?,
            Command::List { pattern, limit, dirs: false } => {
                let (mut picks, mut shown) = (Vec::new(), 0);
                // Ctrl-C on a terminal stops it at once: the rest is not shown (and the
                // flag stays up until the prompt, so that a second Ctrl-C quits).
                let listed = node.index.list(&pattern, limit, &node.stop, |e| {
                    if picks.len() < MAX_KEPT_LINES {
                        picks.push(Pick::File(e.name.clone(), e.root));
                    }
                    shown += 1;
                    node.emit(&Event::Entry(&e));
                });
                self.remember(picks, shown);
                if !matches!(listed, Ok(Ok(Listing::Whole { .. }))) {
                    node.flush_rows();
                }
                if matches!(listed, Ok(Ok(Listing::Stopped))) {
                    node.emit(&Event::Note("stopped listing; the rest is not shown"));
                }
                let truncated = match listing_ended(listed)? {
                    Listing::Whole { truncated } => truncated,
                    Listing::Stopped => true,
                };
                node.emit(&Event::ListEnd { files: shown, folders: None, place: None, truncated });
            }
            Command::Delete(name) => {
                if node.is_downloading(&name) {
                    bail!(
                        "cannot delete {:?}: it is being downloaded (cancel it first, or let it end: wait)",
                        name.as_str()
                    );
                }
                node.folder.delete(&name).map_err(|e| anyhow!("cannot delete {:?}: {e}", name.as_str()))?;
                if node.registered.load(Ordering::SeqCst) {
                    node.index
                        .change(&Request::Delete { names: vec![name.clone()] })
                        .context("the file is deleted, but the index was not told")?;
                }
                // Only now: once this line is out, no other peer is offered the file.
                node.emit(&Event::Deleted { name: name.as_str() });
            }
            Command::Download(targets) => {
                // Each target on its own: one that fails does not stop the others.
                for target in targets {
                    if let Err(e) = self.download(target) {
                        node.fail(format!("{e:#}"));
                    }
                }
            }
            Command::Wait => {
                if let Some(going) = node.wait_downloads() {
                    let note = format!("stopped waiting; {} not ended yet", count(going as u64, "download"));
                    node.emit(&Event::Note(&note));
                }
            }
            Command::Downloads => {
                let all = node.downloads();
                let mut running = 0;
                for d in &all {
                    match &d.progress {
                        Some(p) => {
                            running += 1;
                            let (done, total) =
                                (p.done.load(Ordering::Relaxed), p.total.load(Ordering::Relaxed));
                            let sources = p.sources.load(Ordering::Relaxed);
                            let rate = super::node::rate(done, p);
                            node.emit(&Event::Running { name: d.name.as_str(), done, total, rate, sources });
                        }
                        None => node.emit(&Event::Waiting { name: d.name.as_str() }),
                    }
                }
                let resumable = node.resumable();
                for (name, done, total) in &resumable {
                    node.emit(&Event::Resumable { name: name.as_str(), done: *done, total: *total });
                }
                let (queued, resumable) = (all.len() - running, resumable.len());
                node.emit(&Event::DownloadsEnd { running, queued, resumable });
            }
            Command::Cancel(name) => {
                if node.cancel(name.as_ref()).is_empty() {
                    match name {
                        Some(name) => bail!("cannot cancel {:?}: it is not being downloaded", name.as_str()),
                        None => bail!("cannot cancel: no download is running or queued"),
                    }
                }
            }
            Command::Help(None) => node.emit(&Event::Help(HELP)),
            Command::Help(Some(text)) => node.emit(&Event::Help(&text)),
            Command::Quit | Command::Login(_) => unreachable!("handled by the loop"),
        }
        Ok(())
    }

    /// `get_files_list --dirs FOLDER`: one level of `folder` (empty: the top) as the
    /// index lists it, its subfolders first (each with its file count and bytes), then
    /// its files as `get_files_list` shows them.
    fn list_folder(&self, folder: &str, limit: Option<u32>) -> anyhow::Result<()> {
        let folder = folder.trim_end_matches('/');
        let prefix = if folder.is_empty() { String::new() } else { format!("{folder}/") };
        let mut folders: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        let mut here = Vec::new();
        // What did not fit in MAX_KEPT_LINES: not shown, but said to be there.
        let mut beyond = false;
        // The index matches text anywhere in a name, ignoring case: keep what is
        // really under the folder.
        let listed = self.node.index.list(&prefix, None, &self.node.stop, |e| {
            let Some(rest) = e.name.as_str().strip_prefix(&prefix) else { return };
            match rest.split_once('/') {
                Some((sub, _)) => {
                    let room = folders.len() < MAX_KEPT_LINES;
                    match folders.get_mut(sub) {
                        Some(f) => (f.0, f.1) = (f.0 + 1, f.1.saturating_add(e.size)),
                        None if room => {
                            folders.insert(sub.to_owned(), (1, e.size));
                        }
                        None => beyond = true,
                    }
                }
                None if here.len() < MAX_KEPT_LINES => here.push(e),
                None => beyond = true,
            }
        });
        let listed = listing_ended(listed)?;
        if listed == Listing::Stopped {
            // Ctrl-C: counts of part of a listing would mislead, so nothing is shown.
            self.remember(Vec::new(), 0);
            self.node
                .emit(&Event::Note("stopped listing; nothing is shown (folders are counted at its end)"));
            return Ok(());
        }
        here.sort_by(|a, b| a.name.cmp(&b.name));
        let limit = limit.map_or(usize::MAX, |n| n as usize);
        let total = folders.len() + here.len();
        let mut shown = Vec::new();
        for (sub, (files, bytes)) in folders.iter().take(limit) {
            let path = format!("{prefix}{sub}");
            self.node.emit(&Event::Folder { path: &path, files: *files, bytes: *bytes });
            // A folder listed is a folder the index knows: its path is a valid one.
            if let Ok(path) = SharePath::parse(&path) {
                shown.push(Pick::Folder(path));
            }
        }
        for e in here.iter().take(limit - shown.len()) {
            self.node.emit(&Event::Entry(e));
            shown.push(Pick::File(e.name.clone(), e.root));
        }
        let lines = shown.len();
        self.remember(shown, lines);
        let place = Some(prefix.as_str());
        let (folders, files) = (Some(folders.len()), here.len());
        self.node.emit(&Event::ListEnd { files, folders, place, truncated: lines < total || beyond });
        Ok(())
    }

    /// Keeps a listing's first lines, `picks`, for `download #N`; it had `lines`.
    fn remember(&self, picks: Vec<Pick>, lines: usize) {
        *crate::lock(&self.last) = Listed { picks, lines };
    }

    /// One target of `download`.
    fn download(&self, target: Target) -> anyhow::Result<()> {
        match target {
            Target::File(name) => self.node.queue_download(name, None),
            Target::Content(name, id) => self.node.queue_download(name, Some(id)),
            Target::Folder(folder) => self.download_folder(&folder),
            Target::Glob(glob) => self.download_glob(&glob),
            Target::Line(n) => {
                let last = crate::lock(&self.last);
                let Some(pick) = last.picks.get(n - 1).cloned() else {
                    match last.lines {
                        0 => {
                            bail!("cannot download #{n}: list files first (get_files_list), then pick a line")
                        }
                        lines if n <= lines => bail!(
                            "cannot download #{n}: only the first {MAX_KEPT_LINES} lines of a listing are kept for #N; list fewer (get_files_list TEXT) or give the name"
                        ),
                        lines => bail!(
                            "cannot download #{n}: the last listing had {}",
                            count(lines as u64, "line")
                        ),
                    }
                };
                drop(last);
                match pick {
                    Pick::File(name, root) => {
                        self.node.queue_download(name, Some(crate::peer::printer::short_id(&root)))
                    }
                    Pick::Folder(folder) => self.download_folder(&folder),
                }
            }
        }
    }

    /// `download FOLDER/`: queues every file the index lists under `folder`, to be
    /// fetched into the same place here, several at once, under one progress bar. A
    /// file already here with the same content is passed over; any other that cannot
    /// be fetched is an error.
    fn download_folder(&self, folder: &SharePath) -> anyhow::Result<()> {
        let prefix = format!("{folder}/");
        // Said once for the folder, not once for each of its files.
        if let Err(why) = self.node.folder.room_under(folder) {
            bail!("cannot download {prefix:?}: {why}");
        }
        let offers = self
            .offers(&prefix, |name| name.starts_with(&prefix))
            .with_context(|| format!("cannot download {prefix:?}"))?;
        if offers.is_empty() {
            bail!("cannot download {prefix:?}: no registered peer shares a file under it");
        }
        let todo = self.not_here(offers);
        self.node.start_folder(folder, &todo);
        // Said before any of them can finish, so the lines come in this order.
        self.node.emit(&Event::FolderQueued { folder: folder.as_str(), files: todo.len() });
        self.queue_all(todo);
        Ok(())
    }

    /// `download GLOB`: queues every file at other peers whose name matches `glob`.
    fn download_glob(&self, glob: &str) -> anyhow::Result<()> {
        let matcher = globset::GlobBuilder::new(glob)
            .literal_separator(true)
            .build()
            .map_err(|e| anyhow!("invalid pattern {glob:?}: {}", e.kind()))?
            .compile_matcher();
        let offers = self
            .offers(&literal_hint(glob), |name| matcher.is_match(name))
            .with_context(|| format!("cannot download {glob:?}"))?;
        if offers.is_empty() {
            bail!("cannot download {glob:?}: no file at other peers matches it");
        }
        let todo = self.not_here(offers);
        self.node.emit(&Event::GlobQueued { pattern: glob, files: todo.len() });
        self.queue_all(todo);
        Ok(())
    }

    /// The names the index lists for `text` that pass `keep`, each with its contents
    /// (size, root, peers).
    fn offers(&self, text: &str, keep: impl Fn(&str) -> bool) -> anyhow::Result<Offers> {
        let mut offers = Offers::new();
        let listed = self.node.index.list(text, None, &self.node.stop, |e| {
            if keep(e.name.as_str()) {
                offers.entry(e.name).or_default().push((e.size, e.root, e.peers));
            }
        });
        let listed = listed
            .context("cannot list the files")?
            .map_err(|e| anyhow!("cannot list the files: the index server says: {e}"))?;
        if listed == Listing::Stopped {
            bail!("stopped (Ctrl-C) while listing the files; nothing is queued");
        }
        Ok(offers)
    }

    /// Of `offers`, the names to fetch, each with the size of its most shared content:
    /// a name already here with one of the contents listed is said and passed over.
    fn not_here(&self, offers: Offers) -> Vec<(SharePath, u64)> {
        let mut todo = Vec::new();
        for (name, contents) in offers {
            if let Ok(open) = self.node.folder.open(&name)
                && contents.iter().any(|&(size, root, _)| (size, root) == (open.info.size, open.info.root))
            {
                self.node.emit(&Event::AlreadyHere { name: name.as_str() });
                continue;
            }
            let size = contents.iter().max_by_key(|c| c.2).map_or(0, |c| c.0);
            todo.push((name, size));
        }
        todo
    }

    /// Queues each of `names`; one that cannot be queued is an error of its own.
    fn queue_all(&self, names: Vec<(SharePath, u64)>) {
        for (name, _) in names {
            if let Err(e) = self.node.queue_download(name.clone(), None) {
                self.node.ended(&name);
                self.node.fail(format!("{e:#}"));
            }
        }
    }
}

/// How a listing from the index ended, or the error that ended it: the connection's
/// (`get_files_list failed: ...`) or the server's refusal (`... the index server says: ...`).
fn listing_ended(listed: io::Result<Result<Listing, String>>) -> anyhow::Result<Listing> {
    listed
        .context("get_files_list failed")?
        .map_err(|e| anyhow!("get_files_list failed: the index server says: {e}"))
}

/// The longest run of plain characters in `glob` (a text every match contains), for
/// the index to narrow its listing with; empty where there is none to be sure of.
fn literal_hint(glob: &str) -> String {
    if glob.contains('{') {
        // An alternation: no one run is in every match.
        return String::new();
    }
    let (mut best, mut run) = (String::new(), String::new());
    let mut chars = glob.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' | '?' | '[' => {
                if run.len() > best.len() {
                    best = std::mem::take(&mut run);
                }
                run.clear();
                if c == '[' {
                    // A class: skip to its end ('[]]' holds a ']').
                    if chars.peek() == Some(&']') {
                        chars.next();
                    }
                    for c in chars.by_ref() {
                        if c == ']' {
                            break;
                        }
                    }
                }
            }
            c => run.push(c),
        }
    }
    if run.len() > best.len() { run } else { best }
}

/// The password for `user`: from `PEERDEX_PASSWORD` if set, else asked for on the
/// terminal (read from `input` with echo off). A script must set the variable: its
/// next input line is a command, not a password.
pub fn password_for(user: &str, interactive: bool, input: &mut impl BufRead) -> anyhow::Result<String> {
    if let Ok(password) = std::env::var(auth::PASSWORD_VAR) {
        return Ok(password);
    }
    if !interactive {
        bail!("set {}, or run the peer in a terminal to be asked for the password", auth::PASSWORD_VAR);
    }
    auth::read_password_from(&format!("password for {user}: "), input)
}

/// The terminal's prompt.
const PROMPT: &str = "peerdex> ";

/// Whether the loop goes on after a line.
#[derive(PartialEq, Eq)]
enum Flow {
    Go,
    Quit,
}

/// Where the terminal's history is kept: `$XDG_STATE_HOME/peerdex/history`, or
/// `~/.local/state/peerdex/history` (the XDG default); `None` without a home.
pub fn history_path() -> Option<PathBuf> {
    let state = match std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".local/state"),
    };
    Some(state.join("peerdex").join("history"))
}

/// Commands a completion offers for the first word.
const COMMANDS: [&str; 16] = [
    "cancel",
    "delete",
    "download",
    "downloads",
    "exit",
    "get",
    "get_files_list",
    "help",
    "login",
    "ls",
    "quit",
    "register",
    "rm",
    "unregister",
    "update",
    "wait",
];

/// Tab completion: command names; after `download` (or `get`) the names the index
/// lists that start with what is typed, one folder level at a time; after `delete` (or
/// `rm`) the names in the shared folder, likewise; after `cancel` the downloads
/// running or queued; after `help` command names.
#[derive(rustyline::Helper, rustyline::Highlighter, rustyline::Validator)]
struct Completion {
    node: Arc<Node>,
    /// The line being typed, kept up to date as it is edited: what is on the screen
    /// when the editor gives up a line without handing it back (Ctrl-C).
    typed: Arc<std::sync::Mutex<String>>,
}

impl rustyline::hint::Hinter for Completion {
    type Hint = String;

    /// No hints; called on every change of the line, it keeps [`Completion::typed`].
    fn hint(&self, line: &str, _: usize, _: &rustyline::Context<'_>) -> Option<String> {
        line.clone_into(&mut crate::lock(&self.typed));
        None
    }
}

impl rustyline::completion::Completer for Completion {
    type Candidate = rustyline::completion::Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _: &rustyline::Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Self::Candidate>)> {
        use rustyline::completion::Pair;
        let line = &line[..pos];
        let Some((word, _)) = line.split_once(' ') else {
            let names = COMMANDS.iter().filter(|c| c.starts_with(line));
            let pairs =
                names.map(|c| Pair { display: (*c).to_owned(), replacement: format!("{c} ") }).collect();
            return Ok((0, pairs));
        };
        let start = word.len() + 1;
        let typed = &line[start..];
        let found: Vec<String> = match word {
            "download" | "get" => self.listed(typed),
            "delete" | "rm" => self.node.folder.complete(typed),
            "cancel" => {
                let running = self.node.downloads().into_iter().map(|d| d.name.to_string());
                running.chain(["--all".to_owned()]).filter(|n| n.starts_with(typed)).collect()
            }
            "help" => COMMANDS.iter().filter(|c| c.starts_with(typed)).map(|c| (*c).to_owned()).collect(),
            _ => return Ok((pos, Vec::new())),
        };
        if found.len() > 1 {
            // The editor is about to list them below the prompt.
            self.node.screen.blank(PROMPT.width() + line.width());
        }
        let pairs = found.into_iter().map(|name| Pair { display: name.clone(), replacement: name }).collect();
        Ok((start, pairs))
    }
}

impl Completion {
    /// The names the index lists that start with `typed`, a folder level at a time.
    fn listed(&self, typed: &str) -> Vec<String> {
        let mut found = std::collections::BTreeSet::new();
        let _ = self.node.index.list(typed, Some(COMPLETION_LIMIT), &AtomicBool::new(false), |e| {
            if let Some(rest) = e.name.as_str().strip_prefix(typed) {
                // One folder level at a time: up to and with the next '/'.
                let level = match rest.find('/') {
                    Some(i) => &rest[..=i],
                    None => rest,
                };
                found.insert(format!("{typed}{level}"));
            }
        });
        found.into_iter().collect()
    }
}

/// Most names a completion asks the index for.
const COMPLETION_LIMIT: u32 = 1000;

/// "1 file", "2 files".
pub fn files(n: usize) -> String {
    count(n as u64, "file")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Option<Command>, String> {
        Command::parse(s)
    }

    #[test]
    fn parses_commands_and_names_with_spaces() {
        assert_eq!(parse("register\n"), Ok(Some(Command::Register)));
        assert_eq!(parse("   "), Ok(None));
        assert_eq!(
            parse("download  a b.txt \r\n"),
            Ok(Some(Command::Download(vec![Target::File(SharePath::parse("a b.txt").unwrap())])))
        );
        assert_eq!(
            parse("get_files_list"),
            Ok(Some(Command::List { pattern: "".into(), limit: None, dirs: false }))
        );
        assert_eq!(
            parse("get_files_list --limit 5 mp3 song"),
            Ok(Some(Command::List { pattern: "mp3 song".into(), limit: Some(5), dirs: false }))
        );
        assert_eq!(
            parse("get_files_list big --limit 1"),
            Ok(Some(Command::List { pattern: "big".into(), limit: Some(1), dirs: false }))
        );
        assert_eq!(
            parse("get_files_list rock --limit=3 roll"),
            Ok(Some(Command::List { pattern: "rock roll".into(), limit: Some(3), dirs: false }))
        );
        assert_eq!(
            parse("get_files_list -- --limit 2"),
            Ok(Some(Command::List { pattern: "--limit 2".into(), limit: None, dirs: false }))
        );
        assert_eq!(
            parse("get_files_list \"two  spaces\""),
            Ok(Some(Command::List { pattern: "two  spaces".into(), limit: None, dirs: false }))
        );
        assert_eq!(
            parse("get_files_list --dirs album/"),
            Ok(Some(Command::List { pattern: "album/".into(), limit: None, dirs: true }))
        );
        assert!(parse("get_files_list --dirs ../x").unwrap_err().contains("invalid folder name"));
        assert_eq!(
            parse("download album/disc 1/"),
            Ok(Some(Command::Download(vec![Target::Folder(SharePath::parse("album/disc 1").unwrap())])))
        );
        assert_eq!(
            parse("download album/01 intro.flac"),
            Ok(Some(Command::Download(vec![Target::File(SharePath::parse("album/01 intro.flac").unwrap())])))
        );
        assert!(parse("get_files_list --limitless").unwrap_err().contains("unknown option"));
        assert!(parse("get_files_list don't").unwrap_err().contains("unmatched quote"));
    }

    #[test]
    fn a_content_is_chosen_by_its_id() {
        let name = |s: &str| SharePath::parse(s).unwrap();
        assert_eq!(
            parse("download a b.iso@0123abcd"),
            Ok(Some(Command::Download(vec![Target::Content(name("a b.iso"), "0123abcd".into())])))
        );
        // Not 8 lowercase hex digits: part of the name.
        assert_eq!(
            parse("download x@0123ABCD"),
            Ok(Some(Command::Download(vec![Target::File(name("x@0123ABCD"))])))
        );
        assert_eq!(parse("download x@123"), Ok(Some(Command::Download(vec![Target::File(name("x@123"))]))));
        assert_eq!(
            parse("download @0123abcd"),
            Ok(Some(Command::Download(vec![Target::File(name("@0123abcd"))]))),
            "no name before it"
        );
    }

    #[test]
    fn aliases_and_help_for_one_command() {
        assert_eq!(parse("ls mp3"), parse("get_files_list mp3"));
        assert_eq!(parse("get a b.txt"), parse("download a b.txt"));
        assert_eq!(parse("rm x"), parse("delete x"));
        let Ok(Some(Command::Help(Some(text)))) = parse("help get") else { panic!() };
        assert!(
            text.starts_with("download NAME | FOLDER/ | GLOB | #N") && text.contains("example"),
            "{text}"
        );
        for (name, _) in COMMAND_HELP {
            assert!(matches!(parse(&format!("help {name}")), Ok(Some(Command::Help(Some(_))))), "{name}");
            assert!(HELP.contains(&format!("  {name}")), "{name} is in the list");
        }
        assert_eq!(parse("help frob"), Err("no command \"frob\" (type help for the list)".into()));
    }

    #[test]
    fn quoted_names_keep_their_spaces() {
        let name = |s: &str| Ok(Some(Command::Download(vec![Target::File(SharePath::parse(s).unwrap())])));
        assert_eq!(parse("download \" lead.txt\""), name(" lead.txt"));
        assert_eq!(parse("download 'trail.txt  '"), name("trail.txt  "));
        assert_eq!(parse("download it's fine.txt"), name("it's fine.txt"), "a quote inside is a character");
        assert_eq!(parse("download  a  b.txt "), name("a  b.txt"), "unquoted: the rest of the line as it is");
        assert_eq!(parse("delete 'a b'"), Ok(Some(Command::Delete(SharePath::parse("a b").unwrap()))));
        assert!(parse("download \"open").unwrap_err().contains("unmatched quote"));
    }

    #[test]
    fn download_takes_several_names_globs_and_listing_lines() {
        let file = |s: &str| Target::File(SharePath::parse(s).unwrap());
        let targets = |line: &str| match parse(line) {
            Ok(Some(Command::Download(t))) => Ok(t),
            other => Err(format!("{other:?}")),
        };
        // Quoted words: names, as they are; a bare word beside them is a name too.
        assert_eq!(
            targets("download \"a.txt\" 'b c.txt' d.txt"),
            Ok(vec![file("a.txt"), file("b c.txt"), file("d.txt")])
        );
        assert_eq!(
            targets("download \"album/\" x@0123abcd"),
            Ok(vec![
                Target::Folder(SharePath::parse("album").unwrap()),
                Target::Content(SharePath::parse("x").unwrap(), "0123abcd".into())
            ])
        );
        // Globs: a bare '*' or '?' makes the line words; quoted, it is a character.
        assert_eq!(targets("download *.flac"), Ok(vec![Target::Glob("*.flac".into())]));
        assert_eq!(
            targets("download *.flac \"my *\"*"),
            Ok(vec![Target::Glob("*.flac".into()), Target::Glob("my [*]*".into())])
        );
        assert_eq!(
            targets("download a\\ b?.txt"),
            Ok(vec![Target::Glob("a b?.txt".into())]),
            "an escaped space"
        );
        assert_eq!(targets("download 'x*y'"), Ok(vec![file("x*y")]));
        assert_eq!(
            targets("download *.{flac,ogg} [ab].txt"),
            Ok(vec![Target::Glob("*.{flac,ogg}".into()), Target::Glob("[ab].txt".into())])
        );
        // Lines of the last listing.
        assert_eq!(targets("download #3"), Ok(vec![Target::Line(3)]));
        assert_eq!(targets("download #1 #12"), Ok(vec![Target::Line(1), Target::Line(12)]));
        assert_eq!(targets("download '#1'"), Ok(vec![file("#1")]), "quoted: a name");
        assert_eq!(
            targets("download #0"),
            Err(r#"Err("there is no line #0: a listing's lines are numbered from 1")"#.into()),
            "every #N is a line, and 0 is none"
        );
        assert_eq!(targets("download '#0'"), Ok(vec![file("#0")]), "quoted: a name");
        // Without quotes, globs or only lines: one name, spaces and brackets and all.
        assert_eq!(targets("download song [live].mp3"), Ok(vec![file("song [live].mp3")]));
        assert_eq!(targets("download #1 b.txt"), Ok(vec![file("#1 b.txt")]));
        // Errors name the problem.
        assert!(targets("download *.flac 'open").unwrap_err().contains("unmatched quote"));
        assert!(targets("download [z-a]*").unwrap_err().contains("invalid pattern"));
        assert!(targets("download *.txt ../x").unwrap_err().contains("invalid file name"));
    }

    #[test]
    fn a_globs_plain_run_narrows_the_listing() {
        assert_eq!(literal_hint("*.flac"), ".flac");
        assert_eq!(literal_hint("a/*/0?-intro*.flac"), "-intro");
        assert_eq!(literal_hint("[abc]xy[*]z"), "xy");
        assert_eq!(literal_hint("[]]longer"), "longer");
        assert_eq!(literal_hint("*.{flac,ogg}"), "", "an alternation: nothing sure");
    }

    #[test]
    fn bad_lines_are_named_errors() {
        assert_eq!(
            parse("frobnicate"),
            Err("unknown command \"frobnicate\" (type help for the list)".into())
        );
        assert_eq!(parse("register now"), Err("register takes no arguments".into()));
        assert!(parse("download").unwrap_err().contains("needs a file name"));
        assert!(parse("download ../../etc/passwd").unwrap_err().contains("are not file or folder names"));
        assert!(parse("download /etc/passwd").unwrap_err().contains("empty part"));
        assert!(parse("download a\\b").unwrap_err().contains("backslash"));
        assert!(parse("delete ..").unwrap_err().contains("invalid file name"));
        assert!(parse("get_files_list --limit x").unwrap_err().contains("--limit needs a number"));
    }

    #[test]
    fn long_and_non_utf8_lines_are_skipped_not_fatal() {
        let mut input = Vec::new();
        input.extend(vec![b'x'; MAX_LINE_LEN * 3]);
        input.extend(b"\n\xff\xfe\nhelp\n");
        let mut r = io::BufReader::with_capacity(64, &input[..]);
        assert!(matches!(read_line(&mut r).unwrap(), Line::Bad(w) if w.contains("longer")));
        assert!(matches!(read_line(&mut r).unwrap(), Line::Bad(w) if w.contains("UTF-8")));
        assert!(matches!(read_line(&mut r).unwrap(), Line::Text(t) if t == "help\n"));
        assert!(matches!(read_line(&mut r).unwrap(), Line::End));
    }
}
