//! Text that came from elsewhere (over the network, from a file name), made safe to
//! print on a terminal or in a log.
//!
//! A terminal obeys what it is sent: an escape sequence can move the cursor, recolour
//! or retitle the window, a newline can forge a line of our own output, and a
//! bidirectional override can make text read differently from what it is. So every
//! string that did not come from this program is printed through [`escape`] (or
//! `{:?}`, which escapes the same characters), and file names may not hold them at
//! all ([`crate::name::SharePath`]).

use std::borrow::Cow;
use std::fmt::{self, Write as _};

/// Characters never printed raw: control characters (C0, DEL, C1; ESC among them),
/// the bidirectional embeddings, overrides and isolates (U+202A-U+202E,
/// U+2066-U+2069), and the line and paragraph separators U+2028 and U+2029.
pub fn is_unsafe(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{2028}' | '\u{2029}')
}

/// `text` with every [`is_unsafe`] character written as an escape (`\n`, `\t`, `\r`,
/// or `\u{1b}` style), and nothing else changed. Escaping twice changes nothing more.
///
/// ```
/// use peerdex::text::escape;
/// assert_eq!(escape("plain"), "plain");
/// assert_eq!(escape("a\u{1b}[2Jb\ndownloaded x"), "a\\u{1b}[2Jb\\ndownloaded x");
/// assert_eq!(escape("\u{202e}gpj.exe"), "\\u{202e}gpj.exe");
/// ```
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        push_escaped(&mut out, c);
    }
    Cow::Owned(out)
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if is_unsafe(c) => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
        c => out.push(c),
    }
}

/// A count and its noun, plural unless the count is one: `count(1, "file")` is
/// `1 file`, `count(3, "file")` is `3 files`.
pub fn count(n: impl Into<u64>, noun: &str) -> String {
    let n = n.into();
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

/// Most characters of one value that [`Clip`] shows.
pub const CLIP_CHARS: usize = 200;

/// Displays a value for a log record: escaped as [`escape`] does, in quotes, and cut to
/// [`CLIP_CHARS`] characters with the original length added, so that a client cannot
/// make one record as long as its request.
///
/// ```
/// use peerdex::text::Clip;
/// assert_eq!(Clip("a\tb").to_string(), "\"a\\tb\"");
/// let long = "x".repeat(1000);
/// assert_eq!(Clip(&long).to_string(), format!("\"{}\"... (1000 bytes)", "x".repeat(200)));
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Clip<'a>(pub &'a str);

impl fmt::Display for Clip<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::with_capacity(self.0.len().min(CLIP_CHARS) + 2);
        out.push('"');
        let mut chars = self.0.chars();
        for c in chars.by_ref().take(CLIP_CHARS) {
            match c {
                '"' | '\\' => {
                    out.push('\\');
                    out.push(c);
                }
                c => push_escaped(&mut out, c),
            }
        }
        out.push('"');
        if chars.next().is_some() {
            let _ = write!(out, "... ({} bytes)", self.0.len());
        }
        f.write_str(&out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsafe_characters_are_escaped_and_only_they() {
        for c in [
            '\0', '\u{7}', '\u{1b}', '\u{7f}', '\u{85}', '\u{9b}', '\u{202a}', '\u{202e}', '\u{2066}',
            '\u{2069}', '\u{2028}', '\u{2029}',
        ] {
            assert!(is_unsafe(c), "{c:?}");
            assert!(!escape(&format!("a{c}b")).contains(c), "{c:?}");
        }
        for c in ['a', ' ', 'é', '✓', '\u{200b}', '\u{2070}', '\u{2027}'] {
            assert!(!is_unsafe(c), "{c:?}");
        }
        let nasty = "x\u{1b}]0;owned\u{7}\r\n\u{202e}y";
        let once = escape(nasty).into_owned();
        assert_eq!(escape(&once), once, "escaping twice changes nothing more");
        assert!(!once.chars().any(is_unsafe));
    }

    #[test]
    fn counts_say_one_file_and_two_files() {
        assert_eq!(count(1u32, "file"), "1 file");
        assert_eq!(count(0u32, "file"), "0 files");
        assert_eq!(count(2u64, "peer"), "2 peers");
    }

    #[test]
    fn clips_count_characters_not_bytes() {
        let long: String = "é".repeat(300);
        let shown = Clip(&long).to_string();
        assert_eq!(shown, format!("\"{}\"... (600 bytes)", "é".repeat(200)));
        assert_eq!(Clip("say \"hi\"").to_string(), "\"say \\\"hi\\\"\"");
    }
}
