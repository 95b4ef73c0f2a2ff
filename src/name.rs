//! [`ShareName`]: the name of a shared file, checked once.
//!
//! Every name that crosses the wire or comes from the command line becomes a
//! `ShareName` before anything else looks at it. A `ShareName` is a single path
//! component that can only mean "the file of this name directly inside the shared
//! folder": it cannot hold a separator, a parent reference, NUL or any other control
//! character, so joining it to the folder can never leave the folder. Nor can it hold
//! a bidirectional override or a line separator ([`crate::text::is_unsafe`]), so a
//! name printed on a terminal reads as what it is.

use std::fmt;

use arcstr::ArcStr;

/// Longest name accepted, in bytes. This is `NAME_MAX` on Linux, ext4, XFS, btrfs and
/// APFS, so every file a peer can have is nameable; anything longer is not a file name.
pub const MAX_NAME_LEN: usize = 255;

/// Prefix of the files peerdex itself keeps in a shared folder (download temporaries,
/// the hash cache). Names with this prefix are never listed, served or accepted, so a
/// half-written file or our own bookkeeping can never be advertised or fetched.
pub const RESERVED_PREFIX: &str = ".peerdex-";

/// Prefix of the temporary files a download writes into the shared folder.
pub const TEMP_PREFIX: &str = ".peerdex-part-";

/// A validated shared-file name. See the module docs for what it cannot hold.
///
/// The text is reference-counted, so a clone is a reference-count increment: the index
/// server keeps each name once however many peers and maps refer to it. It is an
/// `arcstr::ArcStr`, one word (the length lives in the allocation, beside the count)
/// where an `Arc<str>` is two: the index holds three of them per entry, so that is 24
/// bytes an entry, 230 MiB at ten million.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShareName(ArcStr);

/// Why a string is not a [`ShareName`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameError {
    /// The empty string.
    Empty,
    /// Longer than [`MAX_NAME_LEN`] bytes.
    TooLong,
    /// `.` or `..`.
    Dots,
    /// Contains `/` or `\`, so it would be a path rather than a name.
    Separator,
    /// Contains NUL or another control character (newline, tab, escape, ...), a
    /// bidirectional override or isolate (U+202A-U+202E, U+2066-U+2069), or a line or
    /// paragraph separator (U+2028, U+2029): see [`crate::text::is_unsafe`].
    Control,
    /// Starts with [`RESERVED_PREFIX`], reserved for peerdex's own files.
    Reserved,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameError::Empty => "the name is empty",
            NameError::TooLong => "the name is longer than 255 bytes",
            NameError::Dots => "\".\" and \"..\" are not file names",
            NameError::Separator => "the name contains a path separator ('/' or '\\')",
            NameError::Control => "the name contains NUL or another control character",
            NameError::Reserved => "names starting with \".peerdex-\" are reserved",
        })
    }
}

impl std::error::Error for NameError {}

impl ShareName {
    /// Checks `name` and wraps it.
    ///
    /// ```
    /// use peerdex::name::{NameError, ShareName};
    /// assert!(ShareName::parse("hello world.txt").is_ok());
    /// assert_eq!(ShareName::parse("../etc/passwd"), Err(NameError::Separator));
    /// assert_eq!(ShareName::parse(".."), Err(NameError::Dots));
    /// ```
    pub fn parse(name: &str) -> Result<ShareName, NameError> {
        if name.is_empty() {
            Err(NameError::Empty)
        } else if name.len() > MAX_NAME_LEN {
            Err(NameError::TooLong)
        } else if name == "." || name == ".." {
            Err(NameError::Dots)
        } else if name.contains(['/', '\\']) {
            Err(NameError::Separator)
        } else if name.chars().any(crate::text::is_unsafe) {
            Err(NameError::Control)
        } else if name.starts_with(RESERVED_PREFIX) {
            Err(NameError::Reserved)
        } else {
            Ok(ShareName(ArcStr::from(name)))
        }
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ShareName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<std::path::Path> for ShareName {
    fn as_ref(&self) -> &std::path::Path {
        std::path::Path::new(&*self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for ok in ["a", "a b.txt", ".hidden", "...", "ünïcödé ✓", "a..b", &"x".repeat(255)] {
            assert_eq!(ShareName::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn refuses_everything_that_is_not_one_name() {
        let cases = [
            ("", NameError::Empty),
            (".", NameError::Dots),
            ("..", NameError::Dots),
            ("../../etc/passwd", NameError::Separator),
            ("/etc/passwd", NameError::Separator),
            ("a/../../x", NameError::Separator),
            ("..\\x", NameError::Separator),
            ("a\0b", NameError::Control),
            ("a\nb", NameError::Control),
            ("\u{1b}[31m", NameError::Control),
            ("gpj\u{202e}.exe", NameError::Control),
            ("a\u{2066}b", NameError::Control),
            ("line\u{2028}break", NameError::Control),
            ("c1\u{9b}", NameError::Control),
            (".peerdex-part-1234", NameError::Reserved),
            (".peerdex-hashes", NameError::Reserved),
        ];
        for (name, want) in cases {
            assert_eq!(ShareName::parse(name), Err(want), "{name:?}");
        }
        assert_eq!(ShareName::parse(&"x".repeat(256)), Err(NameError::TooLong));
    }
}
