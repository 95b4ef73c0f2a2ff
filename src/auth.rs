//! Accounts and login: a users file of salted slow hashes, and a challenge-response
//! that never sends the password.
//!
//! ```text
//! peer                                   index server (with --users FILE)
//!   Login { user }            ------>
//!                             <------    Challenge { salt, rounds, nonce }
//!   key   = PBKDF2-HMAC-SHA256(password, salt, rounds)
//!   Proof { HMAC-SHA256(key, "peerdex login" | user | nonce) }  ------>
//!                             <------    LoggedIn, or (after a delay) Error
//! ```
//!
//! The users file stores, per user, the salt, the round count and the derived key,
//! never the password; and one secret of the server's, from which an unknown user's
//! fake challenge is derived (so that it is the same across restarts, and a challenge
//! does not tell who exists). The server checks a proof with the stored key, so it never
//! needs the password either; the nonce is fresh for every attempt, so a proof cannot
//! be replayed. The derived key is what a proof needs: the users file must be kept as
//! private as any password database.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io::{self, BufRead, IsTerminal, Write};
use std::path::Path;

use anyhow::{Context, anyhow, bail};
use hmac::{Hmac, KeyInit, Mac};
use rand::RngExt;
use sha2::Sha256;

/// PBKDF2 rounds for new passwords: OWASP's 2023 recommendation for
/// PBKDF2-HMAC-SHA256. About 0.3 s of one core here: once per login, on the peer.
pub const PBKDF2_ROUNDS: u32 = 600_000;

/// Fewest PBKDF2 rounds a peer accepts in a challenge. Fewer would let whoever sent
/// the challenge (a fake index, say) crack the proof offline cheaply: OWASP's floor for
/// PBKDF2-HMAC-SHA256 was 100,000 before 2023.
pub const MIN_ROUNDS: u32 = 100_000;

/// Most PBKDF2 rounds a peer accepts in a challenge: about 5 s of one core here. More
/// would let a fake index keep the peer busy for as long as it likes.
pub const MAX_ROUNDS: u32 = 10_000_000;

/// Salt length in bytes (NIST SP 800-132 asks for at least 16).
pub const SALT_LEN: usize = 16;

/// Longest salt accepted in a users file or a challenge.
pub const MAX_SALT_LEN: usize = 64;

/// Checks a challenge's salt and rounds before a peer derives a key with them: see
/// [`MIN_ROUNDS`] and [`MAX_ROUNDS`]. `Err` says why no proof will be sent.
pub fn check_challenge(salt: &[u8], rounds: u32) -> Result<(), String> {
    if !(MIN_ROUNDS..=MAX_ROUNDS).contains(&rounds) {
        return Err(format!(
            "the index server asks for {rounds} PBKDF2 rounds, outside the {MIN_ROUNDS} to {MAX_ROUNDS} this peer accepts; no proof was sent"
        ));
    }
    if !(1..=MAX_SALT_LEN).contains(&salt.len()) {
        return Err(format!(
            "the index server sent a salt of {} bytes, not 1 to {MAX_SALT_LEN}; no proof was sent",
            salt.len()
        ));
    }
    Ok(())
}

/// A key derived from a password.
pub type Key = [u8; 32];

/// Longest user name, in bytes.
pub const MAX_USER_LEN: usize = 64;

/// Checks a user name: 1 to 64 letters, digits, `.`, `_`, `-` or `@`.
pub fn check_user(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_USER_LEN
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid user name {}: use 1 to {MAX_USER_LEN} letters, digits, '.', '_', '-' or '@'",
            crate::text::Clip(name)
        ))
    }
}

/// The slow hash of a password.
pub fn derive_key(password: &str, salt: &[u8], rounds: u32) -> Key {
    pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(password.as_bytes(), salt, rounds)
}

fn mac(key: &Key, user: &str, nonce: &[u8; 32]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(b"peerdex login\0");
    mac.update(user.as_bytes());
    mac.update(b"\0");
    mac.update(nonce);
    mac
}

/// The proof that answers a challenge: an HMAC over the nonce, keyed by the derived key.
///
/// ```
/// use peerdex::auth::{derive_key, proof, verify};
/// let key = derive_key("hunter2", b"some salt", 1000);
/// let nonce = [7u8; 32];
/// assert!(verify(&key, "ann", &nonce, &proof(&key, "ann", &nonce)));
/// assert!(!verify(&derive_key("hunter3", b"some salt", 1000), "ann", &nonce, &proof(&key, "ann", &nonce)));
/// ```
pub fn proof(key: &Key, user: &str, nonce: &[u8; 32]) -> [u8; 32] {
    mac(key, user, nonce).finalize().into_bytes().into()
}

/// Checks a proof, in constant time.
pub fn verify(key: &Key, user: &str, nonce: &[u8; 32], proof: &[u8; 32]) -> bool {
    mac(key, user, nonce).verify_slice(proof).is_ok()
}

/// One account: what is needed to check a proof, nothing more.
#[derive(Clone, PartialEq, Eq)]
pub struct Account {
    /// The salt of the derived key.
    pub salt: Vec<u8>,
    /// PBKDF2 rounds.
    pub rounds: u32,
    /// The derived key.
    pub key: Key,
}

impl fmt::Debug for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Account").field("rounds", &self.rounds).finish_non_exhaustive()
    }
}

/// The users file: one line per user, `name:rounds:salt:key` (salt and key in hex),
/// and one line `secret <64 hex digits>`, written by `adduser` when it creates the
/// file, that keys the fake challenges for unknown users.
#[derive(Default)]
pub struct Users {
    accounts: HashMap<String, Account>,
    /// The `secret` line, if the file has one.
    secret: Option<[u8; 32]>,
}

impl fmt::Debug for Users {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Users").field("users", &self.accounts.len()).finish_non_exhaustive()
    }
}

/// The start of the users file's secret line.
const SECRET_PREFIX: &str = "secret ";

impl Users {
    /// Reads a users file. A missing file is an empty one only if `missing_ok`.
    pub fn load(path: &Path, missing_ok: bool) -> anyhow::Result<Users> {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound && missing_ok => return Ok(Users::default()),
            Err(e) => {
                return Err(anyhow!(e).context(format!("cannot read the users file {}", path.display())));
            }
        };
        let mut accounts = HashMap::new();
        let mut secret = None;
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let bad = || {
                anyhow!("{}, line {}: not a users file line (name:rounds:salt:key)", path.display(), i + 1)
            };
            if let Some(hex) = line.strip_prefix(SECRET_PREFIX) {
                let bytes = hex::decode(hex.trim()).ok().and_then(|b| <[u8; 32]>::try_from(b).ok());
                let bad = || anyhow!("{}, line {}: the secret is not 64 hex digits", path.display(), i + 1);
                secret = Some(bytes.ok_or_else(bad)?);
                continue;
            }
            let mut fields = line.split(':');
            let (Some(name), Some(rounds), Some(salt), Some(key), None) =
                (fields.next(), fields.next(), fields.next(), fields.next(), fields.next())
            else {
                return Err(bad());
            };
            check_user(name).map_err(|e| anyhow!("{}, line {}: {e}", path.display(), i + 1))?;
            let account = Account {
                // Peers refuse challenges outside these bounds: better to say so now.
                rounds: rounds.parse().ok().filter(|r| (MIN_ROUNDS..=MAX_ROUNDS).contains(r)).ok_or_else(
                    || {
                        anyhow!(
                            "{}, line {}: the round count must be a number from {MIN_ROUNDS} to {MAX_ROUNDS}",
                            path.display(),
                            i + 1
                        )
                    },
                )?,
                // A salt is sent in every challenge: keep it to a sane length.
                salt: hex::decode(salt)
                    .ok()
                    .filter(|s| (1..=MAX_SALT_LEN).contains(&s.len()))
                    .ok_or_else(bad)?,
                key: hex::decode(key).ok().and_then(|k| k.try_into().ok()).ok_or_else(bad)?,
            };
            accounts.insert(name.to_owned(), account);
        }
        Ok(Users { accounts, secret })
    }

    /// Adds a user or changes their password, with a fresh salt.
    pub fn set(&mut self, name: &str, password: &str) -> anyhow::Result<()> {
        self.set_with_rounds(name, password, PBKDF2_ROUNDS)
    }

    /// [`Users::set`] with a given round count (tests use few, to run fast).
    pub(crate) fn set_with_rounds(&mut self, name: &str, password: &str, rounds: u32) -> anyhow::Result<()> {
        check_user(name).map_err(|e| anyhow!(e))?;
        if password.is_empty() {
            bail!("the password is empty");
        }
        let salt: [u8; SALT_LEN] = rand::rng().random();
        let key = derive_key(password, &salt, rounds);
        self.accounts.insert(name.to_owned(), Account { salt: salt.to_vec(), rounds, key });
        Ok(())
    }

    /// The salt of the fake challenge for `user`, who has no account: keyed by the
    /// file's secret, so the same across restarts and unguessable. A file written before
    /// secrets existed has none; its accounts' keys (as secret as the file) stand in.
    pub fn fake_salt(&self, user: &str) -> Vec<u8> {
        let secret = self.secret.unwrap_or_else(|| {
            let mut names: Vec<&String> = self.accounts.keys().collect();
            names.sort();
            let mut h = <Sha256 as sha2::Digest>::new();
            for name in names {
                sha2::Digest::update(&mut h, self.accounts[name].key);
            }
            sha2::Digest::finalize(h).into()
        });
        let mut mac = Hmac::<Sha256>::new_from_slice(&secret).expect("HMAC takes keys of any length");
        mac.update(b"peerdex fake salt\0");
        mac.update(user.as_bytes());
        mac.finalize().into_bytes()[..SALT_LEN].to_vec()
    }

    /// The account of `name`, if any.
    pub fn get(&self, name: &str) -> Option<&Account> {
        self.accounts.get(name)
    }

    /// Writes the file: to a freshly created temporary beside it (never one that was
    /// there before, so nobody can have opened it or made it a symlink), readable by
    /// its owner only, then renamed over the old one, so a crash never leaves half a
    /// file. A file without a secret gets one.
    pub fn save(&mut self, path: &Path) -> anyhow::Result<()> {
        let secret = *self.secret.get_or_insert_with(|| rand::rng().random());
        let mut names: Vec<&String> = self.accounts.keys().collect();
        names.sort();
        let mut text = format!("{SECRET_PREFIX}{}\n", hex::encode(secret));
        for name in names {
            let a = &self.accounts[name];
            text.push_str(&format!("{name}:{}:{}:{}\n", a.rounds, hex::encode(&a.salt), hex::encode(a.key)));
        }
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let write = || -> io::Result<()> {
            // `tempfile` creates it with O_EXCL under a random name, mode 0600.
            let mut temp = tempfile::Builder::new().prefix(".users-").tempfile_in(dir)?;
            temp.write_all(text.as_bytes())?;
            temp.as_file().sync_all()?;
            temp.persist(path).map_err(|e| e.error)?;
            Ok(())
        };
        write().with_context(|| format!("cannot write the users file {}", path.display()))
    }
}

/// The environment variable a password can be given in: the peer's for `login` and
/// `--user`, and `indexing-server adduser`'s, where a script has no terminal to type
/// it in.
pub const PASSWORD_VAR: &str = "PEERDEX_PASSWORD";

/// Reads a password: from the terminal without echo if stdin is one (after printing
/// `prompt` to stderr), otherwise one line from stdin.
pub fn read_password(prompt: &str) -> anyhow::Result<String> {
    read_password_from(prompt, &mut io::stdin().lock())
}

/// [`read_password`], reading the line from `input` (which must be stdin, or a lock
/// on it): for a caller that already holds stdin.
pub fn read_password_from(prompt: &str, input: &mut impl BufRead) -> anyhow::Result<String> {
    let stdin = io::stdin();
    let mut line = String::new();
    if stdin.is_terminal() {
        eprint!("{prompt}");
        let _ = io::stderr().flush();
        let _echo_off = EchoOff::new(&stdin)?;
        input.read_line(&mut line)?;
        eprintln!();
    } else {
        input.read_line(&mut line)?;
    }
    let password = line.trim_end_matches(['\n', '\r']).to_owned();
    if password.is_empty() {
        bail!("no password given");
    }
    Ok(password)
}

/// Turns the terminal's echo off until dropped.
struct EchoOff<'a> {
    stdin: &'a io::Stdin,
    saved: rustix::termios::Termios,
}

impl<'a> EchoOff<'a> {
    fn new(stdin: &'a io::Stdin) -> io::Result<EchoOff<'a>> {
        use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
        let saved = tcgetattr(stdin)?;
        let mut quiet = saved.clone();
        quiet.local_modes.remove(LocalModes::ECHO);
        tcsetattr(stdin, OptionalActions::Now, &quiet)?;
        Ok(EchoOff { stdin, saved })
    }
}

impl Drop for EchoOff<'_> {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(self.stdin, rustix::termios::OptionalActions::Now, &self.saved);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_users_file_round_trips_and_never_holds_the_password() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        let mut users = Users::load(&path, true).unwrap();
        users.set("ann", "correct horse battery staple").unwrap();
        users.save(&path).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(!text.contains("correct horse"), "{text}");
        let again = Users::load(&path, false).unwrap();
        let ann = again.get("ann").unwrap();
        assert_eq!(ann.key, derive_key("correct horse battery staple", &ann.salt, ann.rounds));
        assert!(users.set("bad name", "x").is_err());
        assert!(users.set("bob", "").is_err());
        assert!(text.starts_with("secret "), "{text}");
        assert_eq!(again.fake_salt("nobody"), users.fake_salt("nobody"), "stable across loads");
        fs::write(&path, "ann:1:zz:00\n").unwrap();
        assert!(Users::load(&path, false).unwrap_err().to_string().contains("line 1"));
        let low = format!("ann:1000:{}:{}\n", hex::encode([1u8; 16]), hex::encode([2u8; 32]));
        fs::write(&path, low).unwrap();
        assert!(Users::load(&path, false).unwrap_err().to_string().contains("round count"));
    }

    #[test]
    fn saving_never_writes_through_a_planted_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        // The old temporary name, planted as a symlink to a file the attacker reads.
        let loot = dir.path().join("loot");
        fs::write(&loot, "").unwrap();
        std::os::unix::fs::symlink(&loot, dir.path().join("users.tmp")).unwrap();
        let mut users = Users::default();
        users.set_with_rounds("ann", "pw", MIN_ROUNDS).unwrap();
        users.save(&path).unwrap();
        assert_eq!(fs::read_to_string(&loot).unwrap(), "", "nothing written through the link");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let left: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left.len(), 3, "users, loot, the planted link; no temporary: {left:?}");
    }

    #[test]
    fn a_refused_user_name_is_shown_clipped_and_escaped() {
        let err = check_user(&format!("\u{1b}[2J{}", "x".repeat(4000))).unwrap_err();
        assert!(err.len() < 400, "{} bytes", err.len());
        assert!(err.contains("\\u{1b}[2J") && err.contains("(4004 bytes)"), "{err}");
    }

    #[test]
    fn challenges_outside_the_bounds_are_refused() {
        assert!(check_challenge(&[1; 16], PBKDF2_ROUNDS).is_ok());
        assert!(check_challenge(&[1; 16], 1).unwrap_err().contains("no proof was sent"));
        assert!(check_challenge(&[1; 16], u32::MAX).unwrap_err().contains("4294967295 PBKDF2 rounds"));
        assert!(check_challenge(&[], PBKDF2_ROUNDS).unwrap_err().contains("salt of 0 bytes"));
    }
}
