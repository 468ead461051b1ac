//! The token secret of a development run that configures none.
//!
//! No secret that is public may ever sign a token Sluice accepts. So the shipped topology
//! sets no secret (`jwt_secret = "${SLUICE_JWT_SECRET:-}"`), and a development run without
//! any token key generates 32 random bytes into `generated_secret_file` (owner-only) on its
//! first start and reuses them afterwards; `sluice token` reads the same file and never
//! creates it ([`settle_read_only`]). The file is opened once and checked as opened: a
//! regular file reached without a symbolic link, owned by the user Sluice runs as (Linux) and
//! readable by that user only. Production mode never generates one: it refuses to start
//! without a configured key. Secrets that were ever published (a development default of
//! earlier Sluice versions) are refused in every mode.

use std::path::{Path, PathBuf};

use argon2::password_hash::rand_core::{OsRng, RngCore};

use crate::config::{AuthConfig, JwtAlgorithm, Mode};

/// Secrets that were published (in this repository's history) and so must never sign or
/// verify a token: the development defaults earlier versions shipped in `topology.toml` and
/// in the compose stack.
pub const PUBLISHED_SECRETS: &[&str] = &[
    "sluice-development-secret-change-me-0123456789",
    "compose-local-dev-secret-do-not-use-in-production",
];

/// Bytes of a generated secret (HS256 wants 256 bits).
pub const GENERATED_SECRET_BYTES: usize = 32;

/// Why the token secret could not be settled.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// A configured secret is one that was published.
    #[error("{setting} is a published secret (a development default of earlier Sluice versions), so anyone could sign tokens with it; remove it to let development mode generate one, or set SLUICE_JWT_SECRET to 32+ random bytes (e.g. `openssl rand -hex 32`)")]
    Published {
        /// The setting that holds it.
        setting: String,
    },
    /// Production mode has no key to sign or verify tokens with.
    #[error("production mode needs a token key: set SLUICE_JWT_SECRET (ingress.auth.jwt_secret) to 32+ random bytes, e.g. `openssl rand -hex 32`, or configure [[ingress.auth.keys]]")]
    NoKeyInProduction,
    /// The generated secret file could not be read or written.
    #[error("ingress.auth.generated_secret_file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The generated secret file holds something else than a generated secret.
    #[error("ingress.auth.generated_secret_file {path} does not hold {} hex digits; delete it and a new secret is generated at the next start (tokens signed with the old one stop working)", 2 * GENERATED_SECRET_BYTES)]
    Corrupt {
        /// The file.
        path: PathBuf,
    },
    /// The generated secret file is a symbolic link, not a regular file, or was replaced
    /// while being opened.
    #[error("ingress.auth.generated_secret_file {path} is not a regular file (a symbolic link, a directory, or replaced while it was opened); remove it, and a new secret is generated at the next `sluice run`")]
    NotAFile {
        /// The file.
        path: PathBuf,
    },
    /// The generated secret file belongs to another user.
    #[error("ingress.auth.generated_secret_file {path} belongs to user id {owner}, not to user id {user} that Sluice runs as; remove it (and consider it leaked), and a new secret is generated at the next `sluice run`")]
    NotOwned {
        /// The file.
        path: PathBuf,
        /// Its owner's user id.
        owner: u32,
        /// The user id Sluice runs as.
        user: u32,
    },
    /// A tool (`sluice token`) needs the generated secret and it was never generated.
    #[error("ingress.auth.generated_secret_file {path} does not exist: start `sluice run` once (development mode generates it), or set SLUICE_JWT_SECRET (ingress.auth.jwt_secret)")]
    NotGenerated {
        /// The file.
        path: PathBuf,
    },
    /// The generated secret file can be read by others than its owner.
    #[error("ingress.auth.generated_secret_file {path} can be read by other users; run `chmod 600 {path}` (and consider it leaked: delete it to generate a new one)")]
    Exposed {
        /// The file.
        path: PathBuf,
    },
}

/// Settles the token secret of `auth` before any key is built from it:
/// - refuses a published secret, in every mode;
/// - in development mode without any key (no `jwt_secret`, no `[[keys]]`), reads the
///   generated secret (relative to `base_dir`), generating it on first use, and sets it as
///   `jwt_secret`; returns the file it came from;
/// - in production mode without any key, refuses.
///
/// Blocking (file I/O): call from a blocking thread.
pub fn settle(
    auth: &mut AuthConfig,
    mode: Mode,
    base_dir: &Path,
) -> Result<Option<PathBuf>, SecretError> {
    let Some(path) = generated_secret_needed(auth, mode, base_dir)? else {
        return Ok(None);
    };
    auth.jwt_secret = Some(load_or_generate(&path)?);
    Ok(Some(path))
}

/// The checks [`settle`] and [`settle_read_only`] share: refuses published secrets, and a
/// production mode without a key; returns the generated secret's file when `auth` needs it
/// (no key configured).
fn generated_secret_needed(
    auth: &AuthConfig,
    mode: Mode,
    base_dir: &Path,
) -> Result<Option<PathBuf>, SecretError> {
    refuse_published(auth)?;
    if auth.jwt_secret.is_some() || !auth.keys.is_empty() {
        return Ok(None);
    }
    if mode == Mode::Production {
        return Err(SecretError::NoKeyInProduction);
    }
    Ok(Some(sluice_core::topology::resolve_relative(
        base_dir,
        &auth.generated_secret_file,
    )))
}

fn refuse_published(auth: &AuthConfig) -> Result<(), SecretError> {
    let published = |secret: &str| PUBLISHED_SECRETS.contains(&secret);
    if auth.jwt_secret.as_deref().is_some_and(published) {
        return Err(SecretError::Published {
            setting: "ingress.auth.jwt_secret".into(),
        });
    }
    for key in &auth.keys {
        if key.algorithm == JwtAlgorithm::HS256 && key.secret.as_deref().is_some_and(published) {
            return Err(SecretError::Published {
                setting: format!("ingress.auth.keys {:?} secret", key.kid),
            });
        }
    }
    Ok(())
}

/// Like [`settle`], for tools that only read (`sluice token`): never creates the generated
/// secret file. When it is missing, says to start `sluice run` once (which generates it) or
/// to set SLUICE_JWT_SECRET.
///
/// Blocking (file I/O): call from a blocking thread.
pub fn settle_read_only(
    auth: &mut AuthConfig,
    mode: Mode,
    base_dir: &Path,
) -> Result<Option<PathBuf>, SecretError> {
    let Some(path) = generated_secret_needed(auth, mode, base_dir)? else {
        return Ok(None);
    };
    match read_secret(&path) {
        Ok(secret) => {
            auth.jwt_secret = Some(secret);
            Ok(Some(path))
        }
        Err(SecretError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Err(SecretError::NotGenerated { path })
        }
        Err(error) => Err(error),
    }
}

/// The secret in `path`, generated first if the file does not exist. Two processes starting
/// at once agree on one secret: each writes a private temporary file (random name, created
/// new) and links it into place, which fails for the second, who then reads the first one's.
fn load_or_generate(path: &Path) -> Result<String, SecretError> {
    let io = |source| SecretError::Io {
        path: path.to_path_buf(),
        source,
    };
    match read_secret(path) {
        Err(SecretError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
        other => return other,
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let mut bytes = [0u8; GENERATED_SECRET_BYTES];
    OsRng.fill_bytes(&mut bytes);
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let temporary =
        crate::private_file::write_temporary(path, format!("{secret}\n").as_bytes()).map_err(io)?;
    let linked = std::fs::hard_link(&temporary, path);
    let _ = std::fs::remove_file(&temporary);
    match linked {
        Ok(()) => {
            tracing::info!(file = %path.display(), "generated a token secret for development mode (owner-only file); set SLUICE_JWT_SECRET to use your own");
            Ok(secret)
        }
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => read_secret(path),
        Err(error) => Err(io(error)),
    }
}

/// The user id this process runs as, when it can be found without `unsafe`: the owner of
/// `/proc/self` (Linux). `None` elsewhere, and the owner check is then skipped.
#[cfg(unix)]
fn current_uid() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

/// Reads a generated secret: opens the file once and checks what was opened (a regular
/// file, not reached through a symbolic link, owned by this process's user, readable by
/// its owner only), refusing one that holds anything else than a generated secret.
fn read_secret(path: &Path) -> Result<String, SecretError> {
    use std::io::Read as _;
    let io = |source| SecretError::Io {
        path: path.to_path_buf(),
        source,
    };
    // The link itself, not what it points to: a symbolic link is refused before opening.
    let link = std::fs::symlink_metadata(path).map_err(io)?;
    if !link.file_type().is_file() {
        return Err(SecretError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    let mut file = std::fs::File::open(path).map_err(io)?;
    // Everything below is checked on the opened file, so the file checked is the file read.
    let opened = file.metadata().map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        // Replaced between the look and the open (by a link, or another file): refused.
        if (opened.dev(), opened.ino()) != (link.dev(), link.ino()) || !opened.is_file() {
            return Err(SecretError::NotAFile {
                path: path.to_path_buf(),
            });
        }
        if opened.mode() & 0o077 != 0 {
            return Err(SecretError::Exposed {
                path: path.to_path_buf(),
            });
        }
        if let Some(uid) = current_uid() {
            if opened.uid() != uid {
                return Err(SecretError::NotOwned {
                    path: path.to_path_buf(),
                    owner: opened.uid(),
                    user: uid,
                });
            }
        }
    }
    #[cfg(not(unix))]
    if !opened.is_file() {
        return Err(SecretError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    // A generated secret is 64 hex digits and a newline: read a little more than that, so a
    // huge file is not read whole.
    let mut text = String::new();
    (&mut file)
        .take(4 * GENERATED_SECRET_BYTES as u64)
        .read_to_string(&mut text)
        .map_err(|error| match error.kind() {
            std::io::ErrorKind::InvalidData => SecretError::Corrupt {
                path: path.to_path_buf(),
            },
            _ => io(error),
        })?;
    let secret = text.trim();
    if secret.len() != 2 * GENERATED_SECRET_BYTES || !secret.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Err(SecretError::Corrupt {
            path: path.to_path_buf(),
        });
    }
    Ok(secret.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(secret: Option<&str>) -> AuthConfig {
        let mut auth: AuthConfig = toml::from_str(r#"users_file = "users.toml""#).unwrap();
        auth.jwt_secret = secret.map(str::to_string);
        auth
    }

    #[test]
    fn development_generates_once_owner_only_and_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = auth(None);
        let path = settle(&mut first, Mode::Development, dir.path())
            .unwrap()
            .expect("a generated secret");
        assert_eq!(path, dir.path().join("data/jwt-secret"));
        let secret = first.jwt_secret.clone().unwrap();
        assert_eq!(secret.len(), 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let mut again = auth(None);
        settle(&mut again, Mode::Development, dir.path()).unwrap();
        assert_eq!(
            again.jwt_secret,
            Some(secret),
            "the secret must survive restarts"
        );

        let other = tempfile::tempdir().unwrap();
        let mut elsewhere = auth(None);
        settle(&mut elsewhere, Mode::Development, other.path()).unwrap();
        assert_ne!(
            elsewhere.jwt_secret, first.jwt_secret,
            "secrets must be random"
        );
    }

    #[test]
    fn published_secrets_are_refused_in_every_mode_and_production_needs_a_key() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [Mode::Development, Mode::Production] {
            let error =
                settle(&mut auth(Some(PUBLISHED_SECRETS[0])), mode, dir.path()).unwrap_err();
            assert!(matches!(error, SecretError::Published { .. }), "{error}");
        }
        let error = settle(&mut auth(None), Mode::Production, dir.path()).unwrap_err();
        assert!(error.to_string().contains("SLUICE_JWT_SECRET"), "{error}");
        assert!(
            !dir.path().join("data").exists(),
            "production never generates"
        );
        let mut configured = auth(Some("a-configured-secret-of-enough-bytes-0123"));
        assert_eq!(
            settle(&mut configured, Mode::Production, dir.path()).unwrap(),
            None
        );
    }

    #[test]
    fn exposed_or_corrupt_files_are_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data/jwt-secret");
        settle(&mut auth(None), Mode::Development, dir.path()).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let error = settle(&mut auth(None), Mode::Development, dir.path()).unwrap_err();
            assert!(error.to_string().contains("chmod 600"), "{error}");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        std::fs::write(&path, "not a secret\n").unwrap();
        let error = settle(&mut auth(None), Mode::Development, dir.path()).unwrap_err();
        assert!(matches!(error, SecretError::Corrupt { .. }), "{error}");
    }

    #[test]
    fn tools_read_the_secret_but_never_create_it() {
        let dir = tempfile::tempdir().unwrap();
        let error = settle_read_only(&mut auth(None), Mode::Development, dir.path()).unwrap_err();
        assert!(matches!(error, SecretError::NotGenerated { .. }), "{error}");
        let message = error.to_string();
        assert!(message.contains("sluice run"), "{message}");
        assert!(message.contains("SLUICE_JWT_SECRET"), "{message}");
        assert!(!dir.path().join("data").exists(), "a tool created the file");
        let mut run = auth(None);
        settle(&mut run, Mode::Development, dir.path()).unwrap();
        let mut tool = auth(None);
        let path = settle_read_only(&mut tool, Mode::Development, dir.path()).unwrap();
        assert_eq!(path, Some(dir.path().join("data/jwt-secret")));
        assert_eq!(tool.jwt_secret, run.jwt_secret);
        // Published secrets and production without a key: refused as by `settle`.
        let error = settle_read_only(
            &mut auth(Some(PUBLISHED_SECRETS[1])),
            Mode::Development,
            dir.path(),
        )
        .unwrap_err();
        assert!(matches!(error, SecretError::Published { .. }), "{error}");
        let error = settle_read_only(&mut auth(None), Mode::Production, dir.path()).unwrap_err();
        assert!(matches!(error, SecretError::NoKeyInProduction), "{error}");
    }

    #[test]
    fn a_stale_temporary_file_of_this_process_id_is_left_alone() {
        // Replicas sharing a volume often all run as PID 1: a temporary name derived from the
        // process id would be shared, and one replica would remove or reuse another's file.
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let other = data.join(format!("jwt-secret.{}.tmp", std::process::id()));
        std::fs::write(&other, "another replica's half-written secret").unwrap();
        let mut first = auth(None);
        settle(&mut first, Mode::Development, dir.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(&other).unwrap(),
            "another replica's half-written secret"
        );
        let leftovers: Vec<_> = std::fs::read_dir(&data)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|name| name.to_string_lossy().ends_with(".tmp") && data.join(name) != other)
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[cfg(unix)]
    #[test]
    fn a_symbolic_link_or_a_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        // A valid, owner-only secret elsewhere, linked into place.
        let elsewhere = dir.path().join("elsewhere");
        let mut other = auth(None);
        other.generated_secret_file = elsewhere.clone();
        settle(&mut other, Mode::Development, dir.path()).unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::os::unix::fs::symlink(&elsewhere, data.join("jwt-secret")).unwrap();
        for settle in [settle, settle_read_only] {
            let error = settle(&mut auth(None), Mode::Development, dir.path()).unwrap_err();
            assert!(matches!(error, SecretError::NotAFile { .. }), "{error}");
        }
        std::fs::remove_file(data.join("jwt-secret")).unwrap();
        std::fs::create_dir(data.join("jwt-secret")).unwrap();
        let error = settle(&mut auth(None), Mode::Development, dir.path()).unwrap_err();
        assert!(matches!(error, SecretError::NotAFile { .. }), "{error}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_owner_check_knows_this_process_user() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let mine = std::fs::metadata(dir.path()).unwrap().uid();
        assert_eq!(current_uid(), Some(mine));
    }
}
