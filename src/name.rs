//! [`SharePath`]: the name of a shared file, its path inside the shared folder,
//! checked once.
//!
//! Every name that crosses the wire or comes from the command line becomes a
//! `SharePath` before anything else looks at it. A `SharePath` is a relative path of
//! components separated by `/` (`album/01 intro.flac`), each of which names one thing
//! inside the one before: no component is empty, `.` or `..`, or holds `\`, NUL or any
//! other control character, so joining it to the folder can never leave the folder
//! (symlinks aside: the folder module opens paths a component at a time and never
//! follows a symlinked folder). Nor can it hold a bidirectional override or a line
//! separator ([`crate::text::is_unsafe`]), so a name printed on a terminal reads as
//! what it is. No component starts with [`RESERVED_PREFIX`].

use std::fmt;

use arcstr::ArcStr;

/// Longest component accepted, in bytes. This is `NAME_MAX` on Linux, ext4, XFS,
/// btrfs and APFS, so every file a peer can have is nameable.
pub const MAX_NAME_LEN: usize = 255;

/// Longest path accepted, in bytes: Linux's `PATH_MAX`, 4,096.
pub const MAX_PATH_LEN: usize = 4096;

/// Longest path an index server accepts by default, in bytes (its `--max-name-len`;
/// why: [`crate::index::registry::MAX_NAME_BYTES`]), and so the longest a peer shares
/// by default (its own `--max-name-len`): a longer one would make the index refuse the
/// whole registration.
pub const INDEX_NAME_LEN: usize = 1024;

/// Most components in a path: folders nested deeper are not shared (and a walk of a
/// tree stops there, so a pathological tree cannot exhaust it).
pub const MAX_DEPTH: usize = 32;

/// Prefix of the files peerdex itself keeps in a shared folder (download temporaries,
/// the hash cache). Names with a component with this prefix are never listed, served
/// or accepted, so a half-written file or our own bookkeeping can never be advertised
/// or fetched.
pub const RESERVED_PREFIX: &str = ".peerdex-";

/// Prefix of the temporary files a download writes into the shared folder.
pub const TEMP_PREFIX: &str = ".peerdex-part-";

/// A validated shared-file path. See the module docs for what it cannot hold.
///
/// The text is reference-counted, so a clone is a reference-count increment: the index
/// server keeps each name once however many peers and maps refer to it. It is an
/// `arcstr::ArcStr`, one word (the length lives in the allocation, beside the count)
/// where an `Arc<str>` is two: the index holds three of them per entry, so that is 24
/// bytes an entry, 230 MiB at ten million.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SharePath(ArcStr);

/// Why a string is not a [`SharePath`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameError {
    /// The empty string, or an empty component: a leading, trailing or doubled `/`.
    Empty,
    /// A component longer than [`MAX_NAME_LEN`] bytes.
    TooLong,
    /// Longer than [`MAX_PATH_LEN`] bytes in all.
    PathTooLong,
    /// More than [`MAX_DEPTH`] components.
    TooDeep,
    /// A component that is `.` or `..`.
    Dots,
    /// Contains `\`: a separator elsewhere, so not a name here.
    Separator,
    /// Contains NUL or another control character (newline, tab, escape, ...), a
    /// bidirectional override or isolate (U+202A-U+202E, U+2066-U+2069), or a line or
    /// paragraph separator (U+2028, U+2029): see [`crate::text::is_unsafe`].
    Control,
    /// A component starts with [`RESERVED_PREFIX`], reserved for peerdex's own files.
    Reserved,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameError::Empty => "the name is empty, or has an empty part (a leading, trailing or double '/')",
            NameError::TooLong => "a part of the name is longer than 255 bytes",
            NameError::PathTooLong => "the name is longer than 4096 bytes",
            NameError::TooDeep => "the name has more than 32 parts",
            NameError::Dots => "\".\" and \"..\" are not file or folder names",
            NameError::Separator => "the name contains a backslash ('\\')",
            NameError::Control => "the name contains NUL or another control character",
            NameError::Reserved => "names starting with \".peerdex-\" are reserved",
        })
    }
}

impl std::error::Error for NameError {}

impl SharePath {
    /// Checks `name` and wraps it.
    ///
    /// ```
    /// use peerdex::name::{NameError, SharePath};
    /// assert!(SharePath::parse("hello world.txt").is_ok());
    /// assert!(SharePath::parse("album/01 intro.flac").is_ok());
    /// assert_eq!(SharePath::parse("../etc/passwd"), Err(NameError::Dots));
    /// assert_eq!(SharePath::parse("/etc/passwd"), Err(NameError::Empty));
    /// ```
    pub fn parse(name: &str) -> Result<SharePath, NameError> {
        if name.len() > MAX_PATH_LEN {
            return Err(NameError::PathTooLong);
        }
        let mut depth = 0;
        for part in name.split('/') {
            depth += 1;
            check_component(part)?;
        }
        if depth > MAX_DEPTH {
            return Err(NameError::TooDeep);
        }
        Ok(SharePath(ArcStr::from(name)))
    }

    /// The path as a string slice, `/` between its components.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Its components, in order.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// The last component: the file's own name.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// The folders it is in, outermost first (none for a file at the top).
    pub fn folders(&self) -> impl Iterator<Item = &str> {
        self.0.rsplit_once('/').map(|(folders, _)| folders.split('/')).into_iter().flatten()
    }

    /// This path inside the folder `folder` (a `SharePath` itself).
    pub fn join(folder: &SharePath, name: &str) -> Result<SharePath, NameError> {
        SharePath::parse(&format!("{folder}/{name}"))
    }
}

/// Checks one component of a path: what a file or folder may be called.
pub fn check_component(part: &str) -> Result<(), NameError> {
    if part.is_empty() {
        Err(NameError::Empty)
    } else if part.len() > MAX_NAME_LEN {
        Err(NameError::TooLong)
    } else if part == "." || part == ".." {
        Err(NameError::Dots)
    } else if part.contains('\\') {
        Err(NameError::Separator)
    } else if part.chars().any(crate::text::is_unsafe) {
        Err(NameError::Control)
    } else if part.starts_with(RESERVED_PREFIX) {
        Err(NameError::Reserved)
    } else {
        Ok(())
    }
}

impl fmt::Display for SharePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<std::path::Path> for SharePath {
    fn as_ref(&self) -> &std::path::Path {
        std::path::Path::new(&*self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names_and_paths() {
        let deep = vec!["d"; MAX_DEPTH].join("/");
        let long = [&"x".repeat(255)[..]; 16].join("/");
        for ok in [
            "a",
            "a b.txt",
            ".hidden",
            "...",
            "ünïcödé ✓",
            "a..b",
            &"x".repeat(255),
            "album/01 intro.flac",
            " lead/trail ",
            &deep,
            &long,
        ] {
            assert_eq!(SharePath::parse(ok).unwrap().as_str(), ok);
        }
        let p = SharePath::parse("a/b/c.txt").unwrap();
        assert_eq!(p.file_name(), "c.txt");
        assert_eq!(p.folders().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(SharePath::parse("top").unwrap().folders().count(), 0);
    }

    #[test]
    fn refuses_everything_that_could_leave_the_folder_or_mislead() {
        let cases = [
            ("", NameError::Empty),
            (".", NameError::Dots),
            ("..", NameError::Dots),
            ("../../etc/passwd", NameError::Dots),
            ("a/../../x", NameError::Dots),
            ("a/./b", NameError::Dots),
            ("/etc/passwd", NameError::Empty),
            ("a//b", NameError::Empty),
            ("a/", NameError::Empty),
            ("..\\x", NameError::Separator),
            ("a\\b", NameError::Separator),
            ("a\0b", NameError::Control),
            ("a\nb", NameError::Control),
            ("\u{1b}[31m", NameError::Control),
            ("gpj\u{202e}.exe", NameError::Control),
            ("a\u{2066}b", NameError::Control),
            ("line\u{2028}break", NameError::Control),
            ("c1\u{9b}", NameError::Control),
            (".peerdex-part-1234", NameError::Reserved),
            ("a/.peerdex-hashes", NameError::Reserved),
        ];
        for (name, want) in cases {
            assert_eq!(SharePath::parse(name), Err(want), "{name:?}");
        }
        assert_eq!(SharePath::parse(&"x".repeat(256)), Err(NameError::TooLong));
        assert_eq!(SharePath::parse(&vec!["d"; MAX_DEPTH + 1].join("/")), Err(NameError::TooDeep));
        assert_eq!(SharePath::parse(&["x"; 2049].join("/")), Err(NameError::PathTooLong));
    }
}
