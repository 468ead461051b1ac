//! Production readiness of the ingress settings.
//!
//! In `mode = "production"` Sluice refuses to start, or to reload, while any of these
//! weaknesses remain, and says which setting to change; in development mode it starts but
//! warns loudly about each.

use crate::config::{IngressConfig, JwtAlgorithm};

use crate::users::Users;

/// The development JWT secret shipped in `topology.toml`.
pub const DEVELOPMENT_SECRET: &str = "sluice-development-secret-change-me-0123456789";

/// Passwords that must never guard a real account (including the demo users' passwords).
pub const DEFAULT_PASSWORDS: &[&str] = &[
    "wonderland",
    "builder",
    "password",
    "changeme",
    "admin",
    "sluice",
    "secret",
    "123456",
    "letmein",
];

/// Shortest HMAC secret accepted in production: HS256 needs 256 bits.
pub const MIN_HMAC_SECRET_BYTES: usize = 32;

/// Every weakness of `config` and `users`, each saying what to change. CPU-heavy (see
/// [`password_weakness`]): call from a blocking thread.
pub fn weaknesses(config: &IngressConfig, users: &Users) -> Vec<String> {
    let mut found = setting_weaknesses(config);
    found.extend(
        users
            .names()
            .into_iter()
            .filter_map(|name| password_weakness(config, users, name)),
    );
    found
}

/// The weaknesses of the token key settings (development or short HS256 secrets).
pub fn setting_weaknesses(config: &IngressConfig) -> Vec<String> {
    let mut found = Vec::new();
    let mut check_secret = |setting: String, secret: &str| {
        if secret == DEVELOPMENT_SECRET {
            found.push(format!("{setting} is the development default; set SLUICE_JWT_SECRET (or the key's secret) to {MIN_HMAC_SECRET_BYTES}+ random bytes"));
        } else if secret.len() < MIN_HMAC_SECRET_BYTES {
            found.push(format!(
                "{setting} is {} bytes; HS256 needs at least {MIN_HMAC_SECRET_BYTES} random bytes",
                secret.len()
            ));
        }
    };
    if let Some(secret) = &config.auth.jwt_secret {
        check_secret("ingress.auth.jwt_secret".into(), secret);
    }
    for key in &config.auth.keys {
        if key.algorithm == JwtAlgorithm::HS256 {
            check_secret(
                format!("ingress.auth.keys {:?} secret", key.kid),
                key.secret.as_deref().unwrap_or_default(),
            );
        }
    }
    found
}

/// The weakness of user `name`, when their password is one of [`DEFAULT_PASSWORDS`]. Runs
/// up to one argon2id check per default password (tens of milliseconds each): call from a
/// blocking thread.
pub fn password_weakness(config: &IngressConfig, users: &Users, name: &str) -> Option<String> {
    // Never repeat the password itself.
    DEFAULT_PASSWORDS
        .iter()
        .any(|password| users.verify(name, password))
        .then(|| {
            format!(
                "user {name:?} in {} has a well-known default password; change it with `sluice users add {name}`",
                config.auth.users_file.display()
            )
        })
}
