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
    Hash(String),
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
        .map_err(|e| UsersError::Hash(e.to_string()))
}

impl Users {
    /// Users from entries (validated: argon2id hashes, unique names).
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

    /// Loads the users file at `path`.
    pub fn load(path: &Path) -> Result<Self, UsersError> {
        let file = read_file(path)?;
        Self::from_entries(file.users, path)
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

/// Adds or replaces `name` in the users file at `path` (created if missing), writing the
/// file atomically (temporary file, then rename).
pub fn upsert_user(path: &Path, name: &str, password: &str) -> Result<(), UsersError> {
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
    let text = toml::to_string(&file).map_err(|e| UsersError::Hash(e.to_string()))?;
    let io = |source| UsersError::Io {
        path: path.to_path_buf(),
        source,
    };
    let temporary = path.with_extension("toml.tmp");
    std::fs::write(
        &temporary,
        format!("# Sluice users: argon2id hashes, managed by `sluice users add`.\n{text}"),
    )
    .map_err(io)?;
    std::fs::rename(&temporary, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_only_the_right_password() {
        let dir = tempfile_dir();
        let path = dir.join("users.toml");
        upsert_user(&path, "alice", "wonderland").unwrap();
        upsert_user(&path, "bob", "builder").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("wonderland"), "plaintext password written");
        assert!(text.contains("$argon2id$"));
        let users = Users::load(&path).unwrap();
        assert_eq!(users.len(), 2);
        assert!(users.verify("alice", "wonderland"));
        assert!(!users.verify("alice", "builder"));
        assert!(!users.verify("nobody", "wonderland"));
        let _ = std::fs::remove_dir_all(dir);
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
