//! The users file: names and argon2id password hashes (never plaintext).
//!
//! ```toml
//! [[users]]
//! name = "alice"
//! password_hash = "$argon2id$v=19$m=19456,t=2,p=1$…"
//! ```

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use serde::{Deserialize, Serialize};

use crate::security::password_weakness;
pub use crate::security::WeakPassword;

/// Errors reading or writing the users file.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// The file could not be read or written.
    #[error("users file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("users file {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Hashing failed.
    #[error("could not hash the password: {0}")]
    Hash(#[source] argon2::password_hash::Error),
    /// `sluice users add` refused a weak password.
    #[error("{0}; or pass --allow-weak to accept it for a demo")]
    WeakPassword(#[source] WeakPassword),
    /// The users could not be written out as TOML.
    #[error("users file {path}: cannot write the users as TOML: {source}")]
    Serialize {
        /// The file.
        path: PathBuf,
        /// The serializer's error.
        source: toml::ser::Error,
    },
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default)]
    users: Vec<UserEntry>,
}

/// One user of the users file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserEntry {
    /// Login name; also the `sub` of the user's tokens and the `userId` of their orders.
    pub name: String,
    /// argon2id PHC string.
    pub password_hash: String,
}

/// The loaded users, ready to verify passwords: one hash-map entry per user (name and PHC
/// string, each in an allocation of its own size), so lookups are O(1) and loading is linear
/// in the file's size, with no hashing.
#[derive(Clone)]
pub struct Users {
    hashes: HashMap<Box<str>, Box<str>>,
    /// Hash checked for unknown users so that they cost the same time as a wrong password:
    /// the users' own argon2 parameters, with a random salt and output (see [`decoy_hash`]).
    decoy: String,
    /// How many argon2 parameter sets (with output lengths) the users' hashes hold.
    parameter_sets: usize,
}

/// Hashes `password` with argon2id (Argon2's default parameters) and a random salt.
pub fn hash_password(password: &str) -> Result<String, UsersError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(UsersError::Hash)
}

/// What decides the cost of verifying a password against a PHC string: everything before the
/// salt (algorithm, version and parameters) and the length of the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Cost<'a> {
    head: &'a str,
    output_len: usize,
}

/// A PHC string that no password matches, costing exactly what verifying against a hash with
/// `like`'s algorithm, version, parameters, salt length and output length costs (Argon2's
/// defaults when `None`): `like`'s head, a random salt and a random output. Nothing is hashed.
pub fn decoy_hash(like: Option<&PasswordHash<'_>>) -> Result<String, UsersError> {
    use argon2::password_hash::rand_core::RngCore;
    use argon2::password_hash::{Output, ParamsString};
    let (algorithm, version, params, salt_len, output_len) = match like {
        Some(hash) => (
            hash.algorithm,
            hash.version,
            hash.params.clone(),
            // Base64 without padding: 4 characters per 3 bytes.
            hash.salt.map_or(16, |s| s.as_str().len() * 3 / 4),
            hash.hash
                .map_or(argon2::Params::DEFAULT_OUTPUT_LEN, |h| h.len()),
        ),
        None => (
            argon2::ARGON2ID_IDENT,
            Some(argon2::Version::default().into()),
            ParamsString::try_from(&argon2::Params::default()).map_err(UsersError::Hash)?,
            16,
            argon2::Params::DEFAULT_OUTPUT_LEN,
        ),
    };
    let random = |len: usize| {
        let mut bytes = vec![0u8; len];
        OsRng.fill_bytes(&mut bytes);
        bytes
    };
    let salt = SaltString::encode_b64(&random(salt_len)).map_err(UsersError::Hash)?;
    let output = Output::new(&random(output_len)).map_err(UsersError::Hash)?;
    Ok(PasswordHash {
        algorithm,
        version,
        params,
        salt: Some(salt.as_salt()),
        hash: Some(output),
    }
    .to_string())
}

impl Users {
    /// Users from entries, validated: every name follows [`check_user_name`], every hash is
    /// an argon2id PHC string whose parameters are within [`MAX_ARGON2_M_KIB`],
    /// [`MAX_ARGON2_T`] and [`MAX_ARGON2_P`], names are unique. Builds the decoy hash from the
    /// most common parameter set of the entries without hashing anything: cost linear in the
    /// number of users, about a microsecond each. Logs a warning when the entries hold more
    /// than one parameter set: users of the other sets can be told from unknown users by a
    /// login's timing.
    pub fn from_entries(entries: Vec<UserEntry>, origin: &Path) -> Result<Self, UsersError> {
        let invalid = |message: String| UsersError::Invalid {
            path: origin.to_path_buf(),
            message,
        };
        // Validate every entry and count the cost parameters, before taking the entries apart.
        let mut costs: HashMap<Cost<'_>, (usize, usize)> = HashMap::new();
        for (index, entry) in entries.iter().enumerate() {
            // The name is checked first, and never repeated when it is invalid (it may be a
            // password typed in the wrong place).
            check_user_name(&entry.name).map_err(|e| {
                invalid(format!(
                    "user #{} (counting from 1, in file order) has an invalid name: {e}; fix or remove that entry",
                    index + 1
                ))
            })?;
            let parsed = PasswordHash::new(&entry.password_hash).map_err(|e| {
                invalid(format!(
                    "user {:?}: password_hash is not a PHC string: {e}",
                    entry.name
                ))
            })?;
            if parsed.algorithm != argon2::ARGON2ID_IDENT {
                return Err(invalid(format!(
                    "user {:?}: password_hash must be argon2id",
                    entry.name
                )));
            }
            let (Some(_), Some(output)) = (parsed.salt, parsed.hash) else {
                return Err(invalid(format!(
                    "user {:?}: password_hash has no salt or no hash",
                    entry.name
                )));
            };
            check_parameters(&parsed).map_err(|problem| {
                invalid(format!(
                    "user {:?}: password_hash {problem}; set a new password with `sluice users add {}`",
                    entry.name, entry.name
                ))
            })?;
            let cost = Cost {
                head: entry
                    .password_hash
                    .rsplitn(3, '$')
                    .nth(2)
                    .unwrap_or_default(),
                output_len: output.len(),
            };
            costs.entry(cost).or_insert((0, index)).0 += 1;
        }
        let parameter_sets = costs.len();
        if parameter_sets > 1 {
            tracing::warn!(
                file = %origin.display(),
                parameter_sets = costs.len(),
                "the users file holds password hashes with different argon2 parameters: unknown users are checked with the most common set, so a login's timing can tell the users of the other sets from unknown users; set their passwords again with `sluice users add` to give every user the same parameters"
            );
        }
        // The most common cost (ties: the one seen first, so the choice is stable).
        let like = costs
            .values()
            .max_by_key(|(count, first)| (*count, std::cmp::Reverse(*first)))
            .map(|&(_, index)| index);
        let decoy = match like {
            Some(index) => decoy_hash(Some(
                &PasswordHash::new(&entries[index].password_hash).map_err(UsersError::Hash)?,
            ))?,
            None => decoy_hash(None)?,
        };
        drop(costs);
        let mut hashes = HashMap::with_capacity(entries.len());
        for entry in entries {
            match hashes.entry(entry.name.into_boxed_str()) {
                Entry::Occupied(taken) => {
                    return Err(invalid(format!("user {:?} appears twice", taken.key())))
                }
                Entry::Vacant(free) => {
                    free.insert(entry.password_hash.into_boxed_str());
                }
            }
        }
        Ok(Users {
            hashes,
            decoy,
            parameter_sets,
        })
    }

    /// Loads the users file at `path`. Blocking (file read, parse): call from a blocking
    /// thread. Hashes nothing.
    pub fn load(path: &Path) -> Result<Self, UsersError> {
        let file = read_file(path)?;
        Self::from_entries(file.users, path)
    }

    /// The argon2id PHC string of `name`'s password, when `name` is a user.
    pub fn hash_of(&self, name: &str) -> Option<&str> {
        self.hashes.get(name).map(|hash| &**hash)
    }

    /// The users whose PHC string is exactly `hash` (a linear scan of string comparisons).
    pub(crate) fn names_with_hash<'a>(&'a self, hash: &'a str) -> impl Iterator<Item = &'a str> {
        self.hashes
            .iter()
            .filter(move |(_, h)| &***h == hash)
            .map(|(name, _)| &**name)
    }

    /// Disables `names`: from now on they are refused exactly as unknown users are (their
    /// logins check the decoy hash and fail, their tokens are refused).
    pub fn disable(&mut self, names: &[String]) {
        for name in names {
            self.hashes.remove(name.as_str());
        }
    }

    /// How many argon2 parameter sets (with output lengths) the users' hashes hold. More than
    /// one is warned about at load: only the most common set is as slow for unknown users.
    pub fn parameter_sets(&self) -> usize {
        self.parameter_sets
    }

    /// Whether `name` is a user.
    pub fn contains(&self, name: &str) -> bool {
        self.hashes.contains_key(name)
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// Whether there are no users.
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Heap bytes the table asks the allocator for: the hash map's slots and control bytes,
    /// and each name and PHC string (allocator overhead not counted).
    pub fn heap_bytes(&self) -> usize {
        let slot = std::mem::size_of::<(Box<str>, Box<str>)>() + 1;
        let strings: usize = self
            .hashes
            .iter()
            .map(|(name, hash)| name.len() + hash.len())
            .sum();
        self.hashes.capacity() * slot + strings + self.decoy.capacity()
    }

    /// Whether `password` is `username`'s. Unknown users are checked against a decoy hash, so
    /// both failures take the same time. CPU-heavy: call from a blocking thread.
    pub fn verify(&self, username: &str, password: &str) -> bool {
        let (hash, known) = match self.hashes.get(username) {
            Some(hash) => (&**hash, true),
            None => (self.decoy.as_str(), false),
        };
        let matches = PasswordHash::new(hash)
            .map(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false);
        known && matches
    }
}

/// Largest argon2 memory cost (`m`, KiB) a users file may hold: 256 MiB. Each check of a
/// hash costs that much memory, and the decoy hash of unknown users copies the most common
/// parameters, so a huge `m` would let any login attempt take GiBs.
pub const MAX_ARGON2_M_KIB: u32 = 262_144;

/// Largest argon2 time cost (`t`, passes) a users file may hold.
pub const MAX_ARGON2_T: u32 = 16;

/// Largest argon2 parallelism (`p`, lanes) a users file may hold.
pub const MAX_ARGON2_P: u32 = 16;

/// Whether `hash`'s argon2 parameters are valid and within the bounds above; the problem, in
/// words, when not.
fn check_parameters(hash: &PasswordHash<'_>) -> Result<(), String> {
    let params = argon2::Params::try_from(hash)
        .map_err(|e| format!("has invalid argon2 parameters ({e})"))?;
    let bounds = [
        ("m", params.m_cost(), MAX_ARGON2_M_KIB, " KiB"),
        ("t", params.t_cost(), MAX_ARGON2_T, ""),
        ("p", params.p_cost(), MAX_ARGON2_P, ""),
    ];
    for (name, value, max, unit) in bounds {
        if value > max {
            return Err(format!(
                "has argon2 parameter {name}={value}{unit}, above the largest Sluice accepts ({name}={max}{unit}), as every login check would cost that much"
            ));
        }
    }
    Ok(())
}

/// The entries of a users file's text (`origin` names it in errors). The layout `sluice users
/// add` writes is read by a line scanner ([`parse_canonical`]), several times faster than a
/// TOML parser and leaving no garbage behind; anything else goes through the TOML parser.
pub(crate) fn parse(text: &str, origin: &Path) -> Result<Vec<UserEntry>, UsersError> {
    if let Some(entries) = parse_canonical(text) {
        return Ok(entries);
    }
    toml::from_str::<UsersFile>(text)
        .map(|file| file.users)
        .map_err(|e| UsersError::Invalid {
            path: origin.to_path_buf(),
            // Never `e.to_string()`: it quotes the offending line (a hash, or a password
            // someone wrote by hand).
            message: crate::toml_error::describe(&e, text),
        })
}

/// Reads the users file layout that [`write_file`] produces, and only that: blank lines,
/// `#` comment lines, and `[[users]]` headers each followed by exactly one
/// `name = "…"` and one `password_hash = "…"` line, whose strings hold no quote, backslash
/// or control character (so they mean the same in TOML as they read). Returns `None` for
/// anything else, which then goes to the TOML parser, which also words the errors: this
/// never accepts a file differently from it.
fn parse_canonical(text: &str) -> Option<Vec<UserEntry>> {
    fn plain(text: &str) -> bool {
        !text
            .chars()
            .any(|c| (c.is_control() && c != '\t') || c == '"' || c == '\\')
    }
    fn string(value: &str) -> Option<String> {
        let inner = value.strip_prefix('"')?.strip_suffix('"')?;
        plain(inner).then(|| inner.to_string())
    }
    let mut entries = Vec::with_capacity(text.len() / 128);
    let mut current: Option<(Option<String>, Option<String>)> = None;
    let mut finish = |entry: Option<(Option<String>, Option<String>)>| match entry {
        None => Some(()),
        Some((Some(name), Some(password_hash))) => {
            entries.push(UserEntry {
                name,
                password_hash,
            });
            Some(())
        }
        Some(_) => None,
    };
    for line in text.split_inclusive('\n') {
        // A `\r` ends a line only before a `\n` (CRLF); anywhere else TOML refuses it, and so
        // does this scanner (the line then matches nothing and the file goes to TOML).
        let line = match line.strip_suffix('\n') {
            Some(line) => line.strip_suffix('\r').unwrap_or(line),
            None => line,
        };
        let comment = line.starts_with('#') && !line.chars().any(|c| c.is_control() && c != '\t');
        if line.is_empty() || comment {
            continue;
        }
        if line == "[[users]]" {
            finish(current.replace((None, None)))?;
        } else if let Some(value) = line.strip_prefix("name = ") {
            let (name, _) = current.as_mut()?;
            if name.replace(string(value)?).is_some() {
                return None;
            }
        } else if let Some(value) = line.strip_prefix("password_hash = ") {
            let (_, hash) = current.as_mut()?;
            if hash.replace(string(value)?).is_some() {
                return None;
            }
        } else {
            return None;
        }
    }
    finish(current)?;
    Some(entries)
}

fn read_file(path: &Path) -> Result<UsersFile, UsersError> {
    let text = std::fs::read_to_string(path).map_err(|source| UsersError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(UsersFile {
        users: parse(&text, path)?,
    })
}

/// Longest user name, in characters (ASCII, so also in bytes).
pub const MAX_USER_NAME_LEN: usize = 64;

/// A user name that breaks the rule every user name follows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a user name must be 1 to {MAX_USER_NAME_LEN} letters, digits, '_', '.', '@' or '-'")]
pub struct BadUserName;

/// Checks the one rule for user names, applied by `sluice users add` and, before any other
/// work, by `POST /login`: 1 to [`MAX_USER_NAME_LEN`] ASCII letters, digits, `_`, `.`, `@` or
/// `-`. The error never repeats the name (it may be anything a client sent).
pub fn check_user_name(name: &str) -> Result<(), BadUserName> {
    let valid = !name.is_empty()
        && name.len() <= MAX_USER_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.@-".contains(&b));
    if valid {
        Ok(())
    } else {
        Err(BadUserName)
    }
}

/// Whether `sluice users add` accepts a weak password (see [`password_weakness`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PasswordPolicy {
    /// Weak passwords are refused ([`UsersError::WeakPassword`]).
    #[default]
    RefuseWeak,
    /// Weak passwords are accepted (for demos); [`upsert_user`] returns the weakness so the
    /// caller can warn.
    AllowWeak,
}

/// Adds or replaces `name` in the users file at `path` (created if missing), with an argon2id
/// hash of `password` (nothing else about the password is recorded). A weak password is
/// refused unless `policy` allows it; then `Ok(Some(weakness))` says what is weak about it.
pub fn upsert_user(
    path: &Path,
    name: &str,
    password: &str,
    policy: PasswordPolicy,
) -> Result<Option<WeakPassword>, UsersError> {
    let invalid = |message: String| UsersError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    check_user_name(name).map_err(|e| invalid(e.to_string()))?;
    let weakness = password_weakness(name, password);
    if let (Some(weakness), PasswordPolicy::RefuseWeak) = (weakness, policy) {
        return Err(UsersError::WeakPassword(weakness));
    }
    // Hashed before taking the lock, so other writers wait for file I/O only.
    let password_hash = hash_password(password)?;
    let _lock = lock_writers(path)?;
    let mut file = if path.exists() {
        read_file(path)?
    } else {
        UsersFile::default()
    };
    match file.users.iter_mut().find(|u| u.name == name) {
        Some(user) => user.password_hash = password_hash,
        None => file.users.push(UserEntry {
            name: name.to_string(),
            password_hash,
        }),
    }
    write_file(path, &file)?;
    Ok(weakness)
}

/// Removes `name` from the users file at `path`; returns whether the user existed.
pub fn remove_user(path: &Path, name: &str) -> Result<bool, UsersError> {
    let _lock = lock_writers(path)?;
    let mut file = read_file(path)?;
    let before = file.users.len();
    file.users.retain(|u| u.name != name);
    if file.users.len() == before {
        return Ok(false);
    }
    write_file(path, &file)?;
    Ok(true)
}

/// The entries of the users file at `path`, in file order (for tools: no checks).
pub fn read_entries(path: &Path) -> Result<Vec<UserEntry>, UsersError> {
    Ok(read_file(path)?.users)
}

/// The user names in the users file at `path`, in file order.
pub fn list_users(path: &Path) -> Result<Vec<String>, UsersError> {
    Ok(read_file(path)?.users.into_iter().map(|u| u.name).collect())
}

/// Takes the writers' lock of the users file at `path` (an exclusive lock on `<file>.lock`
/// beside it, created owner-only and kept), waiting for another `sluice users add|remove` to
/// finish; released when the returned file is dropped. Held around each read-modify-write,
/// so concurrent writers never lose each other's updates. Blocking.
fn lock_writers(path: &Path) -> Result<std::fs::File, UsersError> {
    let mut name = path
        .file_name()
        .map(|name| name.to_os_string())
        .unwrap_or_default();
    name.push(".lock");
    let lock_path = path.with_file_name(name);
    let io = |source| UsersError::Io {
        path: lock_path.clone(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let lock = options.open(&lock_path).map_err(io)?;
    lock.lock().map_err(io)?;
    Ok(lock)
}

/// Writes the users file atomically: a temporary file beside it (a random name of its own),
/// synced, then renamed over it, so a crash leaves either the old or the new file, never half
/// of one, and concurrent writers never break each other's write. The file is readable by its
/// owner only. Callers that read, modify and write hold [`lock_writers`], so that two
/// concurrent `sluice users add` do not lose one of the updates.
fn write_file(path: &Path, file: &UsersFile) -> Result<(), UsersError> {
    let text = toml::to_string(file).map_err(|source| UsersError::Serialize {
        path: path.to_path_buf(),
        source,
    })?;
    let io = |source| UsersError::Io {
        path: path.to_path_buf(),
        source,
    };
    // A random name of its own, so that concurrent writers (two `sluice users add`) never
    // touch each other's temporary file.
    let temporary = crate::private_file::write_temporary(
        path,
        format!(
            "# Sluice users: argon2id hashes, managed by `sluice users add|remove|list`.\n{text}"
        )
        .as_bytes(),
    )
    .map_err(io)?;
    if let Err(error) = std::fs::rename(&temporary, path) {
        let _ = std::fs::remove_file(&temporary);
        return Err(io(error));
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if let Ok(dir) = std::fs::File::open(parent) {
            let _ = dir.sync_all();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRONG: &str = "plum orbit canvas seventeen";

    #[test]
    fn verifies_only_the_right_password() {
        let dir = tempfile_dir();
        let path = dir.join("users.toml");
        let strict = PasswordPolicy::RefuseWeak;
        assert_eq!(upsert_user(&path, "alice", STRONG, strict).unwrap(), None);
        upsert_user(&path, "bob", "another good passphrase", strict).unwrap();
        assert_eq!(
            list_users(&path).unwrap(),
            vec!["alice".to_string(), "bob".to_string()]
        );
        assert!(upsert_user(&path, "bad name", STRONG, strict)
            .unwrap_err()
            .to_string()
            .contains("must be 1 to 64"));
        assert!(check_user_name(&"a".repeat(65)).is_err());
        assert!(check_user_name("alice@example.com").is_ok());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(STRONG), "plaintext password written");
        assert!(text.contains("$argon2id$"));
        let users = Users::load(&path).unwrap();
        assert_eq!(users.len(), 2);
        assert!(users.verify("alice", STRONG));
        assert!(!users.verify("alice", "another good passphrase"));
        assert!(!users.verify("nobody", STRONG));
        assert!(users.hash_of("alice").unwrap().starts_with("$argon2id$"));
        assert!(remove_user(&path, "alice").unwrap());
        assert!(!remove_user(&path, "alice").unwrap());
        assert_eq!(list_users(&path).unwrap(), vec!["bob".to_string()]);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn weak_passwords_are_refused_unless_allowed_and_leave_no_trace() {
        let dir = tempfile_dir();
        let path = dir.join("users.toml");
        for (password, expected) in [
            ("short", WeakPassword::TooShort),
            ("Wonderland", WeakPassword::Common),
            ("carol in wonderland", WeakPassword::ContainsUserName),
        ] {
            let error =
                upsert_user(&path, "carol", password, PasswordPolicy::RefuseWeak).unwrap_err();
            assert!(
                matches!(error, UsersError::WeakPassword(w) if w == expected),
                "{password}: {error}"
            );
            let message = error.to_string();
            assert!(message.contains("--allow-weak"), "{message}");
            assert!(!message.to_lowercase().contains(&password.to_lowercase()));
            assert!(!path.exists(), "a refused password must write nothing");
        }
        assert_eq!(
            upsert_user(&path, "carol", "Wonderland", PasswordPolicy::AllowWeak).unwrap(),
            Some(WeakPassword::Common)
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.to_lowercase().contains("wonderland"));
        assert!(!text.to_lowercase().contains("weak"), "{text}");
        let entries = parse(&text, &path).unwrap();
        assert_eq!(entries.len(), 1);
        assert!(entries[0].password_hash.starts_with("$argon2id$"));
        assert!(Users::load(&path).unwrap().verify("carol", "Wonderland"));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[cfg(unix)]
    #[test]
    fn the_users_file_is_owner_only_and_leaves_other_temporary_files_alone() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile_dir();
        let path = dir.join("users.toml");
        // The fixed name earlier versions used: another writer's, never touched.
        let other = dir.join("users.toml.tmp");
        std::fs::write(&other, "another writer's").unwrap();
        std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o666)).unwrap();
        upsert_user(&path, "carol", STRONG, PasswordPolicy::RefuseWeak).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "users file mode {mode:o}");
        assert_eq!(std::fs::read_to_string(&other).unwrap(), "another writer's");
        assert_eq!(list_users(&path).unwrap(), vec!["carol".to_string()]);
        assert_eq!(
            files_in(&dir),
            ["users.toml", "users.toml.lock", "users.toml.tmp"]
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn concurrent_writers_never_break_each_other() {
        let dir = tempfile_dir();
        let path = dir.join("users.toml");
        upsert_user(&path, "first", STRONG, PasswordPolicy::RefuseWeak).unwrap();
        let entries = read_entries(&path).unwrap();
        std::thread::scope(|scope| {
            for writer in 0..4 {
                let (path, entries) = (&path, &entries);
                scope.spawn(move || {
                    for round in 0..25 {
                        let mut file = UsersFile {
                            users: entries.clone(),
                        };
                        file.users.push(entry(
                            &format!("w{writer}r{round}"),
                            entries[0].password_hash.clone(),
                        ));
                        write_file(path, &file).unwrap();
                    }
                });
            }
        });
        // Whichever write came last, the file is whole, and no temporary file is left.
        let users = Users::load(&path).unwrap();
        assert_eq!(users.len(), 2);
        assert_eq!(files_in(&dir), ["users.toml", "users.toml.lock"]);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn concurrent_adds_and_removes_lose_no_update() {
        let dir = tempfile_dir();
        let path = dir.join("users.toml");
        upsert_user(&path, "leaving", STRONG, PasswordPolicy::RefuseWeak).unwrap();
        std::thread::scope(|scope| {
            for writer in 0..4 {
                let path = &path;
                scope.spawn(move || {
                    for round in 0..3 {
                        let name = format!("w{writer}r{round}");
                        upsert_user(path, &name, STRONG, PasswordPolicy::RefuseWeak).unwrap();
                    }
                });
            }
            scope.spawn(|| assert!(remove_user(&path, "leaving").unwrap()));
        });
        let mut names = list_users(&path).unwrap();
        names.sort();
        let mut expected: Vec<String> = (0..4)
            .flat_map(|w| (0..3).map(move |r| format!("w{w}r{r}")))
            .collect();
        expected.sort();
        assert_eq!(names, expected);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// The names of the files in `dir`, sorted.
    fn files_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// A PHC string with cheap parameters (tests only), so several can be made quickly.
    fn cheap_hash(password: &str, m_kib: u32, t: u32) -> String {
        let params = argon2::Params::new(m_kib, t, 1, None).unwrap();
        Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
            .hash_password(password.as_bytes(), &SaltString::generate(&mut OsRng))
            .unwrap()
            .to_string()
    }

    fn entry(name: &str, password_hash: String) -> UserEntry {
        UserEntry {
            name: name.into(),
            password_hash,
        }
    }

    #[test]
    fn the_decoy_takes_the_most_common_parameters_of_the_file() {
        let parts = |hash: &str| {
            let parsed = PasswordHash::new(hash).unwrap();
            (
                parsed.algorithm.to_string(),
                parsed.version,
                parsed.params.to_string(),
                parsed.salt.unwrap().as_str().len(),
                parsed.hash.unwrap().len(),
            )
        };
        let common = cheap_hash("one", 64, 3);
        let users = Users::from_entries(
            vec![
                entry("alice", cheap_hash("two", 32, 1)),
                entry("bob", common.clone()),
                entry("carol", cheap_hash("three", 64, 3)),
            ],
            Path::new("users.toml"),
        )
        .unwrap();
        assert_eq!(parts(&users.decoy), parts(&common));
        assert_eq!(users.parameter_sets(), 2);
        assert!(users.decoy.contains("m=64,t=3,p=1"), "{}", users.decoy);
        assert_ne!(users.decoy, common, "the decoy has its own salt and output");
        assert!(!users.verify("nobody", "one"));

        // The shipped users file's parameters are Argon2's defaults, as is an empty file's
        // decoy.
        let empty = Users::from_entries(Vec::new(), Path::new("users.toml")).unwrap();
        assert_eq!(empty.parameter_sets(), 0);
        let uniform = Users::from_entries(
            vec![
                entry("alice", cheap_hash("one", 32, 1)),
                entry("bob", cheap_hash("two", 32, 1)),
            ],
            Path::new("users.toml"),
        )
        .unwrap();
        assert_eq!(uniform.parameter_sets(), 1);
        let real = hash_password("a real password here").unwrap();
        assert_eq!(parts(&empty.decoy), parts(&real));
        let two = Users::from_entries(Vec::new(), Path::new("users.toml")).unwrap();
        assert_ne!(empty.decoy, two.decoy, "each decoy is random");
    }

    /// Verifying an unknown user runs one argon2id check with the same parameters as a known
    /// user's. The two are timed alternately (so a burst of load hits both) and the fastest
    /// of each compared; the ratio is generous, for loaded machines: skipping the check for
    /// unknown users would make it thousands.
    #[test]
    fn unknown_and_known_users_take_comparable_time() {
        use std::time::{Duration, Instant};
        let users = Users::from_entries(
            vec![entry("alice", hash_password(STRONG).unwrap())],
            Path::new("users.toml"),
        )
        .unwrap();
        let time = |user: &str| {
            let started = Instant::now();
            assert!(!users.verify(user, "not the password at all"));
            started.elapsed()
        };
        let (mut known, mut unknown) = (Duration::MAX, Duration::MAX);
        for _ in 0..7 {
            known = known.min(time("alice"));
            unknown = unknown.min(time("mallory"));
        }
        let ratio = unknown.as_secs_f64() / known.as_secs_f64();
        assert!(
            (0.33..3.0).contains(&ratio),
            "fastest check: unknown user {unknown:?}, known user {known:?}"
        );
    }

    #[test]
    fn rejects_invalid_hashes_and_duplicate_names() {
        let invalid = |entries| {
            Users::from_entries(entries, Path::new("users.toml"))
                .err()
                .unwrap()
                .to_string()
        };
        let error = invalid(vec![entry("x", "plaintext".into())]);
        assert!(error.contains("not a PHC string"), "{error}");
        let argon2i = "$argon2i$v=19$m=32,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo".to_string();
        let error = invalid(vec![entry("x", argon2i)]);
        assert!(error.contains("must be argon2id"), "{error}");
        let hash = cheap_hash("x", 32, 1);
        let error = invalid(vec![entry("x", hash.clone()), entry("x", hash)]);
        assert!(error.contains("appears twice"), "{error}");
    }

    #[test]
    fn bad_names_are_refused_by_index_without_repeating_them() {
        let hash = cheap_hash("x", 32, 1);
        for bad in [
            "hunter2 is my password",
            "",
            "tab\there",
            "ünïcode",
            &"a".repeat(65),
        ] {
            let error = Users::from_entries(
                vec![entry("alice", hash.clone()), entry(bad, hash.clone())],
                Path::new("users.toml"),
            )
            .err()
            .unwrap()
            .to_string();
            assert!(error.contains("user #2 "), "{error}");
            assert!(error.contains("must be 1 to 64"), "{error}");
            if !bad.is_empty() {
                assert!(!error.contains(bad), "{error}");
            }
        }
        // Through the file, too (both the line scanner and the TOML parser).
        let dir = tempfile_dir();
        let path = dir.join("users.toml");
        for text in [
            format!("[[users]]\nname = \"my secret pw\"\npassword_hash = \"{hash}\"\n"),
            format!("[[users]]\nname = 'my secret pw'\npassword_hash = \"{hash}\"\n"),
        ] {
            std::fs::write(&path, text).unwrap();
            let error = Users::load(&path).err().unwrap().to_string();
            assert!(error.contains("user #1 "), "{error}");
            assert!(!error.contains("my secret pw"), "{error}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn argon2_parameters_are_bounded_at_load() {
        let load =
            |hash: String| Users::from_entries(vec![entry("alice", hash)], Path::new("users.toml"));
        let salt_and_output = "$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaA";
        for (params, named) in [
            ("m=4194304,t=2,p=1", "m=4194304 KiB"),
            ("m=19456,t=100,p=1", "t=100"),
            ("m=19456,t=2,p=64", "p=64"),
        ] {
            let error = load(format!("$argon2id$v=19${params}{salt_and_output}"))
                .err()
                .unwrap()
                .to_string();
            assert!(error.contains(named), "{error}");
            assert!(error.contains("largest Sluice accepts"), "{error}");
            assert!(error.contains("sluice users add alice"), "{error}");
        }
        let error = load(format!("$argon2id$v=19$m=1,t=0,p=1{salt_and_output}"))
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("invalid argon2 parameters"), "{error}");
        // At the bounds: accepted (nothing is hashed at load).
        let at_bounds = format!(
            "$argon2id$v=19$m={MAX_ARGON2_M_KIB},t={MAX_ARGON2_T},p={MAX_ARGON2_P}{salt_and_output}"
        );
        assert!(load(at_bounds).is_ok());
        assert!(load(DEMO_HASH.to_string()).is_ok());
    }

    #[test]
    fn disabled_users_are_unknown() {
        let hash = hash_password(STRONG).unwrap();
        let mut users = Users::from_entries(
            vec![entry("alice", hash.clone()), entry("bob", hash)],
            Path::new("users.toml"),
        )
        .unwrap();
        users.disable(&["alice".to_string()]);
        assert!(!users.contains("alice") && users.hash_of("alice").is_none());
        assert!(!users.verify("alice", STRONG));
        assert!(users.verify("bob", STRONG));
        // Only bob is left in the table.
        assert_eq!(users.len(), 1);
        assert!(users.contains("bob"));
    }

    #[test]
    fn the_line_scanner_reads_what_users_add_writes_and_leaves_the_rest_to_toml() {
        let dir = tempfile_dir();
        let path = dir.join("users.toml");
        for name in ["alice", "bob", "carol@example.com"] {
            upsert_user(&path, name, STRONG, PasswordPolicy::RefuseWeak).unwrap();
        }
        let written = std::fs::read_to_string(&path).unwrap();
        let shipped = include_str!("../../users.toml");
        for text in [
            written.as_str(),
            shipped,
            &written.replace('\n', "\r\n"),
            "",
            "# none\n",
        ] {
            let scanned = parse_canonical(text).expect("the written layout is scanned");
            let toml: UsersFile = toml::from_str(text).unwrap();
            let pairs = |entries: &[UserEntry]| {
                entries
                    .iter()
                    .map(|e| (e.name.clone(), e.password_hash.clone()))
                    .collect::<Vec<_>>()
            };
            assert_eq!(pairs(&scanned), pairs(&toml.users));
        }
        assert_eq!(parse_canonical(&written).unwrap().len(), 3);
        // Valid TOML in another layout: parsed by toml, to the same users.
        let hash = DEMO_HASH;
        let others = [
            format!("[[users]]\nname=\"alice\"\npassword_hash = \"{hash}\"\n"),
            format!("[[users]]\nname = 'alice'\npassword_hash = \"{hash}\"\n"),
            format!("[[users]]\nname = \"alice\" # the first\npassword_hash = \"{hash}\"\n"),
            format!("users = [{{ name = \"alice\", password_hash = \"{hash}\" }}]\n"),
            format!("[[users]]\n  name = \"alice\"\npassword_hash = \"{hash}\"\n"),
            format!("[[users]]\nname = \"al\\u0069ce\"\npassword_hash = \"{hash}\"\n"),
        ];
        for text in &others {
            assert!(parse_canonical(text).is_none(), "{text}");
            let entries = parse(text, &path).unwrap();
            assert_eq!(entries.len(), 1, "{text}");
            assert_eq!(entries[0].name, "alice", "{text}");
        }
        // Broken files: not scanned, and toml words the error.
        let broken = [
            format!("[[users]]\nname = \"alice\"\nname = \"bob\"\npassword_hash = \"{hash}\"\n"),
            "[[users]]\nname = \"alice\"\n".to_string(),
            format!("name = \"alice\"\npassword_hash = \"{hash}\"\n"),
            format!("[[users]]\nname = \"alice\"\npassword_hash = \"{hash}\"\nrole = \"admin\"\n"),
        ];
        for text in &broken {
            assert!(parse_canonical(text).is_none(), "{text}");
            assert!(parse(text, &path).is_err(), "{text}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_broken_users_file_is_not_quoted_in_the_error() {
        let path = Path::new("users.toml");
        let plaintext = "correct-horse-battery-staple";
        let broken = [
            // A hand-written plaintext password, with a syntax error on its line.
            format!("[[users]]\nname = \"alice\"\npassword = {plaintext}\n"),
            // An unterminated string holding a hash.
            format!("[[users]]\nname = \"alice\"\npassword_hash = \"{DEMO_HASH}\n"),
            // An unknown key next to a hash.
            format!("[[users]]\nname = \"alice\"\npassword_hash = \"{DEMO_HASH}\"\npassword = \"{plaintext}\"\n"),
            // A hash where a table is expected.
            format!("users = \"{DEMO_HASH}\"\n"),
        ];
        for text in &broken {
            let message = parse(text, path).unwrap_err().to_string();
            assert!(message.contains("line "), "{message}");
            assert!(!message.contains(plaintext), "{message}");
            assert!(!message.contains("$argon2id$"), "{message}");
            assert!(!message.contains("m=19456"), "{message}");
        }
        let message = parse(&broken[0], path).unwrap_err().to_string();
        assert!(message.contains("line 3, column "), "{message}");
    }

    #[test]
    fn a_bare_carriage_return_at_the_end_is_left_to_toml() {
        let path = Path::new("users.toml");
        let good = format!("[[users]]\nname = \"alice\"\npassword_hash = \"{DEMO_HASH}\"");
        assert_eq!(parse_canonical(&good).unwrap().len(), 1);
        for ending in ["\r", "\n\r", "\r\n\r"] {
            let text = format!("{good}{ending}");
            assert!(parse_canonical(&text).is_none(), "{text:?}");
            assert!(toml::from_str::<UsersFile>(&text).is_err(), "{text:?}");
            assert!(parse(&text, path).is_err(), "{text:?}");
        }
    }

    mod scanner_agrees_with_toml {
        //! Property tests: on any users file, valid or slightly broken, the line scanner either
        //! reads exactly the entries TOML reads, or defers to TOML.
        use proptest::prelude::*;

        use super::super::*;
        use super::DEMO_HASH;

        /// One line of a users file, without its line ending.
        fn line() -> impl Strategy<Value = String> {
            let name = prop_oneof![
                Just("alice"),
                Just("bob"),
                Just("a b"),
                Just(""),
                Just("é"),
                Just("x\ty"),
            ];
            let quoted = prop_oneof![
                name.clone().prop_map(|n| format!("\"{n}\"")),
                name.clone().prop_map(|n| format!("'{n}'")),
                Just(r#""al\u0069ce""#.to_string()),
                Just(r#""a\"b""#.to_string()),
                Just(r#""a\\b""#.to_string()),
                Just("\"a\rb\"".to_string()),
                Just("\"unterminated".to_string()),
                Just("\"\"\"alice\"\"\"".to_string()),
            ];
            prop_oneof![
                4 => Just("[[users]]".to_string()),
                1 => Just("[users]".to_string()),
                1 => Just("[[ users ]]".to_string()),
                4 => quoted.clone().prop_map(|v| format!("name = {v}")),
                1 => quoted.prop_map(|v| format!("name={v}")),
                4 => Just(format!("password_hash = \"{DEMO_HASH}\"")),
                1 => Just(format!("password_hash = '{DEMO_HASH}'")),
                1 => Just(format!("password_hash = \"{DEMO_HASH}\" # note")),
                2 => Just("# a comment".to_string()),
                1 => Just("#\ta comment with a tab \"quoted\"".to_string()),
                1 => Just("# a \r in a comment".to_string()),
                2 => Just(String::new()),
                1 => Just("role = \"admin\"".to_string()),
                1 => Just("\r".to_string()),
            ]
        }

        fn file() -> impl Strategy<Value = String> {
            let ending =
                prop_oneof![4 => Just("\n"), 2 => Just("\r\n"), 1 => Just("\r"), 1 => Just("")];
            let indent = prop_oneof![6 => Just(""), 1 => Just("  "), 1 => Just("\t")];
            proptest::collection::vec((indent, line(), ending), 0..12).prop_map(|lines| {
                lines
                    .into_iter()
                    .map(|(indent, line, ending)| format!("{indent}{line}{ending}"))
                    .collect()
            })
        }

        /// A file in the layout `sluice users add` writes, with LF or CRLF line endings.
        fn canonical() -> impl Strategy<Value = String> {
            let user = (
                prop_oneof![Just("alice"), Just("bob.b"), Just("c@d"), Just("x\ty")],
                any::<bool>(),
            );
            (
                proptest::collection::vec(user, 0..5),
                any::<bool>(),
                any::<bool>(),
            )
                .prop_map(|(users, crlf, final_newline)| {
                    let mut text = String::from("# Sluice users\n");
                    for (index, (name, hash_first)) in users.into_iter().enumerate() {
                        let name = format!("{name}{index}");
                        let (a, b) = (
                            format!("name = \"{name}\""),
                            format!("password_hash = \"{DEMO_HASH}\""),
                        );
                        let (first, second) = if hash_first { (b, a) } else { (a, b) };
                        text.push_str(&format!("\n[[users]]\n{first}\n{second}\n"));
                    }
                    if !final_newline {
                        text = text.trim_end_matches('\n').to_string();
                    }
                    if crlf {
                        text = text.replace('\n', "\r\n");
                    }
                    text
                })
        }

        fn pairs(entries: &[UserEntry]) -> Vec<(String, String)> {
            entries
                .iter()
                .map(|e| (e.name.clone(), e.password_hash.clone()))
                .collect()
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

            #[test]
            fn on_any_file(text in file()) {
                let toml = toml::from_str::<UsersFile>(&text);
                if let Some(scanned) = parse_canonical(&text) {
                    let toml = toml.map_err(|e| crate::toml_error::describe(&e, &text));
                    prop_assert!(toml.is_ok(), "scanned, but TOML refuses {text:?}: {toml:?}");
                    prop_assert_eq!(pairs(&scanned), pairs(&toml.unwrap().users), "{:?}", text);
                }
            }

            #[test]
            fn on_the_written_layout(text in canonical()) {
                let scanned = parse_canonical(&text);
                prop_assert!(scanned.is_some(), "the written layout is not scanned: {text:?}");
                let toml = toml::from_str::<UsersFile>(&text).unwrap();
                prop_assert_eq!(pairs(&scanned.unwrap()), pairs(&toml.users));
            }
        }
    }

    const DEMO_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$3vsPJ483E0WZx7FzdRzZ7A$4rpq8AbJV8pOwTDW8W0nMtslxUj3BtbKYF+BIMceGOQ";

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sluice-users-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
