//! Production readiness of the ingress settings and users, and the password rules.
//!
//! In `mode = "production"` Sluice refuses to start, or to reload, while any of these
//! weaknesses remain, and says which setting to change; in development mode it starts but
//! warns loudly about each.
//!
//! Nothing here hashes a password: start-up and reload cost the same whatever the number of
//! users. Weak passwords are refused when they are known, by `sluice users add`
//! ([`password_weakness`]); the shipped demo users are recognised by their password hashes
//! ([`demo_users`]).

use std::net::SocketAddr;

use crate::config::{IngressConfig, JwtAlgorithm};

use crate::users::Users;

/// The users of the shipped `users.toml` and their password hashes (alice's password is
/// `wonderland`, bob's `builder`: the README's walk-through uses them, so everyone knows them).
/// A user whose `password_hash` is one of these has a published password, whatever its name.
pub const DEMO_USERS: &[(&str, &str)] = &[
    (
        "alice",
        "$argon2id$v=19$m=19456,t=2,p=1$3vsPJ483E0WZx7FzdRzZ7A$4rpq8AbJV8pOwTDW8W0nMtslxUj3BtbKYF+BIMceGOQ",
    ),
    (
        "bob",
        "$argon2id$v=19$m=19456,t=2,p=1$AdTul4pH10AYpgvFWF+DdQ$unUABxWM+ggPTDO06e8DSSgvLa/2dCC5NxDIsyKRNg0",
    ),
];

/// Well-known passwords, one a line, lower case (lines starting with `#` are comments): the
/// most common passwords of leaked password sets, and the demo passwords.
pub const COMMON_PASSWORDS: &str = include_str!("common-passwords.txt");

/// Shortest password `sluice users add` accepts, in characters.
pub const MIN_PASSWORD_CHARS: usize = 10;

/// Shortest HMAC secret accepted in production: HS256 needs 256 bits.
pub const MIN_HMAC_SECRET_BYTES: usize = 32;

/// Why a password is too weak to guard an account. The messages never repeat the password.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WeakPassword {
    /// Fewer than [`MIN_PASSWORD_CHARS`] characters.
    #[error("the password has fewer than {MIN_PASSWORD_CHARS} characters; choose a longer one (a few unrelated words are easy to remember)")]
    TooShort,
    /// On the list of well-known passwords that attackers try first.
    #[error(
        "the password is one of the well-known passwords that attackers try first; choose another"
    )]
    Common,
    /// Contains the user name, the first thing an attacker tries with it.
    #[error("the password contains the user name; choose one that does not")]
    ContainsUserName,
}

/// Whether `password` is too weak for user `name`: shorter than [`MIN_PASSWORD_CHARS`]
/// characters, one of [`COMMON_PASSWORDS`] (compared case-insensitively), or containing the
/// user name (case-insensitively; for a name like `alice@example.com` also its part before
/// the `@`; parts shorter than 3 characters are not looked for).
pub fn password_weakness(name: &str, password: &str) -> Option<WeakPassword> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Some(WeakPassword::TooShort);
    }
    let lower = password.to_lowercase();
    if is_common_password(&lower) {
        return Some(WeakPassword::Common);
    }
    let name = name.to_lowercase();
    let local_part = name.split('@').next().unwrap_or_default();
    if [name.as_str(), local_part]
        .iter()
        .any(|part| part.len() >= 3 && lower.contains(part))
    {
        return Some(WeakPassword::ContainsUserName);
    }
    None
}

/// Whether `lower` (a lower-cased password) is one of [`COMMON_PASSWORDS`].
fn is_common_password(lower: &str) -> bool {
    COMMON_PASSWORDS
        .lines()
        .filter(|line| !line.starts_with('#'))
        .any(|line| line == lower)
}

/// The users whose password hash is one of the shipped demo users' ([`DEMO_USERS`]), sorted.
/// Compares strings only: nothing is hashed.
pub fn demo_users(users: &Users) -> Vec<String> {
    let mut found: Vec<String> = DEMO_USERS
        .iter()
        .flat_map(|(_, hash)| users.names_with_hash(hash))
        .map(str::to_string)
        .collect();
    found.sort_unstable();
    found
}

/// Whether only this machine can reach the ingress: every listener (`login_listen`,
/// `order_listen`) is a loopback address and no `trusted_proxies` are set (a proxy on this
/// machine forwards other machines' requests to a loopback listener).
pub fn only_this_machine_reaches(config: &IngressConfig) -> bool {
    let loopback = |address: &SocketAddr| address.ip().to_canonical().is_loopback();
    loopback(&config.login_listen)
        && loopback(&config.order_listen)
        && config.trusted_proxies.is_empty()
}

/// Every weakness of `config` and `users` that production mode refuses, each saying what to
/// change: the token key settings and the shipped demo users. Cheap (no hashing).
pub fn weaknesses(config: &IngressConfig, users: &Users) -> Vec<String> {
    let mut found = setting_weaknesses(config);
    found.extend(demo_users(users).into_iter().map(|name| {
        format!(
            "user {name:?} in {} has the shipped demo password, which everyone knows; give them a new one with `sluice users add {name}` or remove them with `sluice users remove {name}`",
            config.auth.users_file.display()
        )
    }));
    found
}

/// The weaknesses of the token key settings (HS256 secrets too short).
pub fn setting_weaknesses(config: &IngressConfig) -> Vec<String> {
    let mut found = Vec::new();
    let mut check_secret = |setting: String, secret: &str| {
        // Published secrets never get this far: `generated_secret::settle` refuses them.
        if secret.len() < MIN_HMAC_SECRET_BYTES {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::users::UserEntry;

    const SHIPPED_USERS: &str = include_str!("../../users.toml");

    #[test]
    fn the_demo_hashes_are_the_shipped_users_file_and_its_published_passwords() {
        let path = std::path::Path::new("users.toml");
        let shipped = crate::users::parse(SHIPPED_USERS, path).unwrap();
        let entries: Vec<(String, String)> = shipped
            .into_iter()
            .map(|e| (e.name, e.password_hash))
            .collect();
        let constants: Vec<(String, String)> = DEMO_USERS
            .iter()
            .map(|(n, h)| (n.to_string(), h.to_string()))
            .collect();
        assert_eq!(entries, constants, "DEMO_USERS must match users.toml");
        let users =
            Users::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../users.toml"))
                .unwrap();
        assert!(users.verify("alice", "wonderland"));
        assert!(users.verify("bob", "builder"));
        assert_eq!(demo_users(&users), vec!["alice", "bob"]);
    }

    #[test]
    fn demo_users_are_found_by_hash_whatever_their_name() {
        let entries = vec![
            UserEntry {
                name: "mallory".into(),
                password_hash: DEMO_USERS[1].1.into(),
            },
            UserEntry {
                name: "carol".into(),
                // Same parameters and salt as alice's, another output: not a demo password.
                password_hash: DEMO_USERS[0].1.replace(
                    "4rpq8AbJV8pOwTDW8W0nMtslxUj3BtbKYF",
                    "5rpq8AbJV8pOwTDW8W0nMtslxUj3BtbKYF",
                ),
            },
        ];
        let users = Users::from_entries(entries, std::path::Path::new("users.toml")).unwrap();
        assert_eq!(demo_users(&users), vec!["mallory"]);
    }

    #[test]
    fn weak_passwords_are_refused_for_what_makes_them_weak() {
        assert_eq!(
            password_weakness("carol", "short"),
            Some(WeakPassword::TooShort)
        );
        assert_eq!(
            password_weakness("carol", "ninechars"),
            Some(WeakPassword::TooShort)
        );
        for common in [
            "wonderland",
            "WonderLand",
            "password123",
            "qwertyuiop",
            "1234567890",
        ] {
            assert_eq!(
                password_weakness("carol", common),
                Some(WeakPassword::Common),
                "{common}"
            );
        }
        assert_eq!(
            password_weakness("carol", "Carol-is-the-best"),
            Some(WeakPassword::ContainsUserName)
        );
        assert_eq!(
            password_weakness("carol@example.com", "my name is carol!"),
            Some(WeakPassword::ContainsUserName)
        );
        assert_eq!(
            password_weakness("carol", "correct horse battery staple"),
            None
        );
        // Short names are not looked for: "al" is in too many good passwords.
        assert_eq!(password_weakness("al", "totally unrelated phrase"), None);
        for weakness in [
            WeakPassword::TooShort,
            WeakPassword::Common,
            WeakPassword::ContainsUserName,
        ] {
            assert!(!weakness.to_string().contains("wonderland"));
        }
    }

    #[test]
    fn the_common_password_list_is_a_real_list() {
        let entries: Vec<&str> = COMMON_PASSWORDS
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect();
        assert!(entries.len() > 2_000, "{} entries", entries.len());
        assert!(entries
            .iter()
            .all(|e| !e.is_empty() && *e == e.to_lowercase()));
        for expected in [
            "123456", "password", "letmein", "builder", "changeme", "sluice",
        ] {
            assert!(entries.contains(&expected), "{expected} missing");
        }
    }

    #[test]
    fn loopback_listeners_are_told_apart_from_reachable_ones() {
        let config = |login: &str, order: &str| {
            let mut config: IngressConfig = toml::from_str(
                "orders_topic = \"o\"\nlogins_topic = \"l\"\n[auth]\nusers_file = \"users.toml\"\n",
            )
            .unwrap();
            config.login_listen = login.parse().unwrap();
            config.order_listen = order.parse().unwrap();
            config
        };
        assert!(only_this_machine_reaches(&config(
            "127.0.0.1:3000",
            "[::1]:3001"
        )));
        assert!(only_this_machine_reaches(&config(
            "127.0.0.1:3000",
            "[::ffff:127.0.0.1]:3001"
        )));
        assert!(!only_this_machine_reaches(&config(
            "127.0.0.1:3000",
            "0.0.0.0:3001"
        )));
        assert!(!only_this_machine_reaches(&config(
            "[::]:3000",
            "127.0.0.1:3001"
        )));
        assert!(!only_this_machine_reaches(&config(
            "192.0.2.7:3000",
            "127.0.0.1:3001"
        )));
        // Behind a proxy, loopback listeners serve other machines.
        let mut proxied = config("127.0.0.1:3000", "127.0.0.1:3001");
        proxied.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
        assert!(!only_this_machine_reaches(&proxied));
    }
}
