//! The users file: names and argon2id password hashes (never plaintext).
//!
//! ```toml
//! [[users]]
//! name = "alice"
//! password_hash = "$argon2id$v=19$m=19456,t=2,p=1$…"
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use serde::{Deserialize, Serialize};

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

/// The loaded users, ready to verify passwords.
#[derive(Clone)]
pub struct Users {
    hashes: HashMap<String, String>,
    /// Hash checked for unknown users so that they cost the same time as a wrong password.
    decoy: String,
}

/// Hashes `password` with argon2id and a random salt.
pub fn hash_password(password: &str) -> Result<String, UsersError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(UsersError::Hash)
}

impl Users {
    /// Users from entries (validated: argon2id hashes, unique names). Hashes a decoy
    /// password (argon2id): call from a blocking thread.
    pub fn from_entries(entries: Vec<UserEntry>, origin: &Path) -> Result<Self, UsersError> {
        let invalid = |message: String| UsersError::Invalid {
            path: origin.to_path_buf(),
            message,
        };
        let mut hashes = HashMap::new();
        for entry in entries {
            let parsed = PasswordHash::new(&entry.password_hash).map_err(|e| {
                invalid(format!(
                    "user {:?}: password_hash is not a PHC string: {e}",
                    entry.name
                ))
            })?;
            if parsed.algorithm.as_str() != "argon2id" {
                return Err(invalid(format!(
                    "user {:?}: password_hash must be argon2id",
                    entry.name
                )));
            }
            if hashes
                .insert(entry.name.clone(), entry.password_hash)
                .is_some()
            {
                return Err(invalid(format!("user {:?} appears twice", entry.name)));
            }
        }
        Ok(Users {
            hashes,
            decoy: hash_password("decoy password for unknown users")?,
        })
    }

    /// Loads the users file at `path`. Blocking (file read, argon2id): call from a blocking
    /// thread.
    pub fn load(path: &Path) -> Result<Self, UsersError> {
        let file = read_file(path)?;
        Self::from_entries(file.users, path)
    }

    /// The argon2id PHC string of `name`'s password, when `name` is a user.
    pub fn hash_of(&self, name: &str) -> Option<&str> {
        self.hashes.get(name).map(String::as_str)
    }

    /// Whether `name` is a user.
    pub fn contains(&self, name: &str) -> bool {
        self.hashes.contains_key(name)
    }

    /// The user names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.hashes.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// Whether there are no users.
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Whether `password` is `username`'s. Unknown users are checked against a decoy hash, so
    /// both failures take the same time. CPU-heavy: call from a blocking thread.
    pub fn verify(&self, username: &str, password: &str) -> bool {
        let (hash, known) = match self.hashes.get(username) {
            Some(hash) => (hash.as_str(), true),
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

fn read_file(path: &Path) -> Result<UsersFile, UsersError> {
    let text = std::fs::read_to_string(path).map_err(|source| UsersError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| UsersError::Invalid {
        path: path.to_path_buf(),
        message: e.to_string(),
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

/// Adds or replaces `name` in the users file at `path` (created if missing).
pub fn upsert_user(path: &Path, name: &str, password: &str) -> Result<(), UsersError> {
    let invalid = |message: String| UsersError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    check_user_name(name).map_err(|e| invalid(e.to_string()))?;
    if password.chars().count() < 8 {
        return Err(invalid("passwords need at least 8 characters".into()));
    }
    let mut file = if path.exists() {
        read_file(path)?
    } else {
        UsersFile::default()
    };
    let password_hash = hash_password(password)?;
    match file.users.iter_mut().find(|u| u.name == name) {
        Some(user) => user.password_hash = password_hash,
        None => file.users.push(UserEntry {
            name: name.to_string(),
            password_hash,
        }),
    }
    write_file(path, &file)
}

/// Removes `name` from the users file at `path`; returns whether the user existed.
pub fn remove_user(path: &Path, name: &str) -> Result<bool, UsersError> {
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

/// Writes the users file atomically: a temporary file beside it, synced, then renamed over
/// it, so a crash leaves either the old or the new file, never half of one. The file is
/// readable by its owner only.
fn write_file(path: &Path, file: &UsersFile) -> Result<(), UsersError> {
    use std::io::Write;
    let text = toml::to_string(file).map_err(|source| UsersError::Serialize {
        path: path.to_path_buf(),
        source,
    })?;
    let io = |source| UsersError::Io {
        path: path.to_path_buf(),
        source,
    };
    let temporary = path.with_extension("toml.tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut out = options.open(&temporary).map_err(io)?;
    out.write_all(
        format!(
            "# Sluice users: argon2id hashes, managed by `sluice users add|remove|list`.\n{text}"
        )
        .as_bytes(),
    )
    .map_err(io)?;
    out.sync_all().map_err(io)?;
    drop(out);
    std::fs::rename(&temporary, path).map_err(io)?;
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

    #[test]
    fn verifies_only_the_right_password() {
        let dir = tempfile_dir();
        let path = dir.join("users.toml");
        upsert_user(&path, "alice", "wonderland").unwrap();
        upsert_user(&path, "bob", "builder1").unwrap();
        assert_eq!(
            list_users(&path).unwrap(),
            vec!["alice".to_string(), "bob".to_string()]
        );
        assert!(upsert_user(&path, "eve", "short")
            .unwrap_err()
            .to_string()
            .contains("at least 8"));
        assert!(upsert_user(&path, "bad name", "long enough")
            .unwrap_err()
            .to_string()
            .contains("must be 1 to 64"));
        assert!(check_user_name(&"a".repeat(65)).is_err());
        assert!(check_user_name("alice@example.com").is_ok());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("wonderland"), "plaintext password written");
        assert!(text.contains("$argon2id$"));
        let users = Users::load(&path).unwrap();
        assert_eq!(users.len(), 2);
        assert!(users.verify("alice", "wonderland"));
        assert!(!users.verify("alice", "builder1"));
        assert!(!users.verify("nobody", "wonderland"));
        assert!(remove_user(&path, "alice").unwrap());
        assert!(!remove_user(&path, "alice").unwrap());
        assert_eq!(list_users(&path).unwrap(), vec!["bob".to_string()]);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn unknown_users_cost_one_verification_with_the_same_parameters() {
        let users = Users::from_entries(
            vec![UserEntry {
                name: "alice".into(),
                password_hash: hash_password("wonderland").unwrap(),
            }],
            Path::new("users.toml"),
        )
        .unwrap();
        let params = |hash: &str| PasswordHash::new(hash).unwrap().params.to_string();
        assert_eq!(
            params(&users.decoy),
            params(&users.hashes["alice"]),
            "the decoy must cost what a real check costs"
        );
    }

    #[test]
    fn rejects_non_argon2id_hashes() {
        let entries = vec![UserEntry {
            name: "x".into(),
            password_hash: "plaintext".into(),
        }];
        let error = Users::from_entries(entries, Path::new("users.toml"))
            .err()
            .unwrap();
        assert!(error.to_string().contains("not a PHC string"), "{error}");
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sluice-users-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
