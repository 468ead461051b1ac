//! The token secret of a development run that configures none.
//!
//! No secret that is public may ever sign a token Sluice accepts. So the shipped topology
//! sets no secret (`jwt_secret = "${SLUICE_JWT_SECRET:-}"`), and a development run without
//! any token key generates 32 random bytes into `generated_secret_file` (owner-only) on its
//! first start and reuses them afterwards; `sluice token` reads the same file. Production
//! mode never generates one: it refuses to start without a configured key. Secrets that
//! were ever published (a development default of earlier Sluice versions) are refused
//! in every mode.

use std::io::Write as _;
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
    refuse_published(auth)?;
    if auth.jwt_secret.is_some() || !auth.keys.is_empty() {
        return Ok(None);
    }
    if mode == Mode::Production {
        return Err(SecretError::NoKeyInProduction);
    }
    let path = sluice_core::topology::resolve_relative(base_dir, &auth.generated_secret_file);
    auth.jwt_secret = Some(load_or_generate(&path)?);
    Ok(Some(path))
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

/// The secret in `path`, generated first if the file does not exist. Two processes starting
/// at once agree on one secret: each writes a private temporary file and links it into
/// place, which fails for the second, who then reads the first one's.
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
    let temporary = path.with_extension(format!("{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&temporary);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options.open(&temporary).and_then(|mut file| {
        file.write_all(format!("{secret}\n").as_bytes())?;
        file.sync_all()
    });
    let linked = written.and_then(|()| std::fs::hard_link(&temporary, path));
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

/// Reads a generated secret, refusing a file others can read or one that holds anything
/// else.
fn read_secret(path: &Path) -> Result<String, SecretError> {
    let io = |source| SecretError::Io {
        path: path.to_path_buf(),
        source,
    };
    let text = std::fs::read_to_string(path).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).map_err(io)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(SecretError::Exposed {
                path: path.to_path_buf(),
            });
        }
    }
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
}
