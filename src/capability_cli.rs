//! `sluice biscuit …`: tooling for capability tokens (see [`sluice_ingress::capability`]).
//!
//! - `keygen` makes a root key pair (Ed25519, hex); it is the only command that ever prints a
//!   private key, and only when it is not written to a file;
//! - `mint` signs a token for a user with the root private key, valid for
//!   [`DEFAULT_TTL_SECS`] (30 days) unless `--ttl-secs` says otherwise (`--no-expiry`: never
//!   expires, with a warning);
//! - `attenuate` narrows a token (products, quantity, expiry) with the public key only;
//! - `inspect` verifies a token and lists its blocks as Datalog.
//!
//! Each function returns what to print on standard output, or an error message.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Subcommand;
use sluice_ingress::capability::{self, Restrictions};

/// Lifetime of a token minted without `--ttl-secs`: 30 days.
pub const DEFAULT_TTL_SECS: u64 = 30 * 24 * 3600;

/// The `sluice biscuit` subcommands.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum BiscuitCommand {
    /// Generate a root key pair (Ed25519, hex).
    ///
    /// Without files, prints both keys. With --private-key-file, the private key is written
    /// there (mode 0600) and not printed.
    Keygen {
        /// Write the private key (hex) to this file, with mode 0600.
        #[arg(long)]
        private_key_file: Option<PathBuf>,
        /// Write the public key (hex) to this file.
        #[arg(long)]
        public_key_file: Option<PathBuf>,
        /// Overwrite existing key files.
        #[arg(long)]
        force: bool,
    },
    /// Mint a token allowing a user to place orders, signed with the root private key.
    ///
    /// The token expires after 30 days unless --ttl-secs says otherwise; --no-expiry mints
    /// one that never expires.
    Mint {
        /// File holding the root private key (hex).
        #[arg(long)]
        private_key_file: PathBuf,
        /// The user the token speaks for.
        #[arg(long)]
        user: String,
        /// Lifetime of the token in seconds; default: 30 days (2592000).
        #[arg(long)]
        ttl_secs: Option<u64>,
        /// Mint a token that never expires (it stays valid until its root key is retired or
        /// it is revoked).
        #[arg(long, conflicts_with = "ttl_secs")]
        no_expiry: bool,
    },
    /// Narrow a token offline (no private key needed): products, quantity, expiry.
    Attenuate {
        /// File holding the root public key (hex), to verify the token first.
        #[arg(long)]
        public_key_file: PathBuf,
        /// The token (base64), or `-` to read it from standard input.
        #[arg(long)]
        token: String,
        /// Allow only this product (repeatable).
        #[arg(long = "product")]
        products: Vec<String>,
        /// Allow at most this quantity per order.
        #[arg(long)]
        max_quantity: Option<i64>,
        /// Expire at this time: RFC 3339 (`2026-11-25T10:00:00Z`) or `@<epoch seconds>`.
        #[arg(long, value_parser = parse_expiry)]
        expires: Option<SystemTime>,
    },
    /// Verify a token and print its blocks (facts and checks).
    Inspect {
        /// File holding the root public key (hex).
        #[arg(long)]
        public_key_file: PathBuf,
        /// The token (base64), or `-` to read it from standard input.
        #[arg(long)]
        token: String,
    },
}

/// Runs one `sluice biscuit` subcommand; `Ok` holds what to print on standard output.
pub fn run(cmd: BiscuitCommand) -> Result<String, String> {
    match cmd {
        BiscuitCommand::Keygen {
            private_key_file,
            public_key_file,
            force,
        } => keygen(
            private_key_file.as_deref(),
            public_key_file.as_deref(),
            force,
        ),
        BiscuitCommand::Mint {
            private_key_file,
            user,
            ttl_secs,
            no_expiry,
        } => {
            let lifetime = match (ttl_secs, no_expiry) {
                (Some(_), true) => {
                    return Err("--ttl-secs and --no-expiry exclude each other".into())
                }
                (Some(secs), false) => Some(secs),
                (None, false) => Some(DEFAULT_TTL_SECS),
                (None, true) => {
                    eprintln!(
                        "warning: this token never expires: it stays valid until its root key is retired or it is revoked"
                    );
                    None
                }
            };
            mint(&private_key_file, &user, lifetime)
        }
        BiscuitCommand::Attenuate {
            public_key_file,
            token,
            products,
            max_quantity,
            expires,
        } => attenuate(
            &public_key_file,
            &read_token_arg(&token)?,
            &products,
            max_quantity,
            expires,
        ),
        BiscuitCommand::Inspect {
            public_key_file,
            token,
        } => inspect(&public_key_file, &read_token_arg(&token)?),
    }
}

/// A token argument: itself, or standard input for `-`.
fn read_token_arg(arg: &str) -> Result<String, String> {
    if arg != "-" {
        return Ok(arg.trim().to_string());
    }
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read the token from standard input: {e}"))?;
    Ok(text.trim().to_string())
}

/// Generates a root key pair. Keys are written to the given files (the private key with mode
/// 0600; existing files are kept unless `force`); the private key is printed only when no
/// private key file is given.
pub fn keygen(
    private_key_file: Option<&Path>,
    public_key_file: Option<&Path>,
    force: bool,
) -> Result<String, String> {
    let (private, public) = capability::generate_root_keypair();
    let mut out = String::new();
    if let Some(path) = public_key_file {
        // Check both destinations before writing either.
        refuse_existing(path, force)?;
    }
    match private_key_file {
        Some(path) => {
            write_key_file(path, &private, true, force)?;
            out.push_str(&format!(
                "private key written to {} (mode 0600)\n",
                path.display()
            ));
        }
        None => out.push_str(&format!("private key: {private}\n")),
    }
    if let Some(path) = public_key_file {
        write_key_file(path, &public, false, force)?;
        out.push_str(&format!("public key written to {}\n", path.display()));
    }
    out.push_str(&format!("public key: {public}\n"));
    Ok(out)
}

fn refuse_existing(path: &Path, force: bool) -> Result<(), String> {
    if !force && path.exists() {
        return Err(format!(
            "{} already exists (use --force to overwrite it)",
            path.display()
        ));
    }
    Ok(())
}

/// Writes `key` and a newline to `path`; a private key file is created with mode 0600 (and
/// brought back to 0600 when overwritten).
fn write_key_file(path: &Path, key: &str, private: bool, force: bool) -> Result<(), String> {
    refuse_existing(path, force)?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    let mut file = options
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    #[cfg(unix)]
    if private {
        // `mode` only applies to new files: tighten an overwritten one before writing.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("cannot restrict {}: {e}", path.display()))?;
    }
    #[cfg(not(unix))]
    let _ = private;
    file.write_all(format!("{key}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Reads a key file (hex; surrounding whitespace ignored). Errors never quote the content.
fn read_key_file(path: &Path, what: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the {what} key file {}: {e}", path.display()))?;
    let key = text.trim();
    if key.is_empty() {
        return Err(format!("the {what} key file {} is empty", path.display()));
    }
    Ok(key.to_string())
}

/// The root public keys of `path`, read as the ingress reads `biscuit_public_key_file` (one
/// per line; during a rotation the old and the new root).
fn root_keys(path: &Path) -> Result<capability::CapabilityAuthority, String> {
    capability::CapabilityAuthority::from_public_key_file(path).map_err(|e| e.to_string())
}

/// Mints a token for `user` with the private key in `private_key_file`, valid for `ttl_secs`
/// if given, else forever (`sluice biscuit mint` passes [`DEFAULT_TTL_SECS`] unless told
/// `--no-expiry`). Prints the token.
pub fn mint(private_key_file: &Path, user: &str, ttl_secs: Option<u64>) -> Result<String, String> {
    let private = read_key_file(private_key_file, "private")?;
    if ttl_secs == Some(0) {
        return Err("--ttl-secs must be positive".into());
    }
    let token = capability::mint(&private, user, ttl_secs.map(Duration::from_secs))
        .map_err(|e| e.to_string())?;
    Ok(format!("{token}\n"))
}

/// Narrows `token` (verified with a root public key in `public_key_file`) to `products` (if not
/// empty), `max_quantity` and `expires`. Prints the new token.
pub fn attenuate(
    public_key_file: &Path,
    token: &str,
    products: &[String],
    max_quantity: Option<i64>,
    expires: Option<SystemTime>,
) -> Result<String, String> {
    if let Some(expires) = expires {
        if expires <= SystemTime::now() {
            return Err("--expires is in the past: the token would never be valid".into());
        }
    }
    let restrictions = Restrictions {
        products: (!products.is_empty()).then(|| products.to_vec()),
        max_quantity,
        expires_at: expires,
    };
    let token = root_keys(public_key_file)?
        .attenuate(token, &restrictions)
        .map_err(|e| match e {
            capability::CapabilityError::InvalidInput(_) => {
                format!("{e}: give --product, --max-quantity or --expires")
            }
            other => other.to_string(),
        })?;
    Ok(format!("{token}\n"))
}

/// Verifies `token` with a root public key in `public_key_file` and lists its blocks.
pub fn inspect(public_key_file: &Path, token: &str) -> Result<String, String> {
    root_keys(public_key_file)?
        .inspect(token)
        .map_err(|e| e.to_string())
}

/// Parses an `--expires` value: RFC 3339 (`2026-11-25T10:00:00Z`, any offset) or
/// `@<seconds since the epoch>`.
pub fn parse_expiry(text: &str) -> Result<SystemTime, String> {
    let text = text.trim();
    let secs = if let Some(secs) = text.strip_prefix('@') {
        secs.parse::<i64>()
            .map_err(|_| format!("{text:?}: after '@' give seconds since the epoch"))?
    } else {
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
            .map_err(|_| {
                format!(
                    "{text:?} is not an RFC 3339 time (2026-11-25T10:00:00Z) or @<epoch seconds>"
                )
            })?
            .unix_timestamp()
    };
    let secs = u64::try_from(secs).map_err(|_| format!("{text:?} is before 1970"))?;
    UNIX_EPOCH
        .checked_add(Duration::from_secs(secs))
        .ok_or_else(|| format!("{text:?} is too far in the future"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_forms() {
        assert_eq!(
            parse_expiry("@1000"),
            Ok(UNIX_EPOCH + Duration::from_secs(1000))
        );
        assert_eq!(
            parse_expiry("1970-01-01T00:16:40Z"),
            Ok(UNIX_EPOCH + Duration::from_secs(1000))
        );
        assert_eq!(
            parse_expiry("1970-01-01T01:16:40+01:00"),
            Ok(UNIX_EPOCH + Duration::from_secs(1000))
        );
        assert!(parse_expiry("@-5").is_err());
        assert!(parse_expiry("tomorrow").is_err());
        assert!(parse_expiry("@x").is_err());
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        command: BiscuitCommand,
    }

    #[test]
    fn command_line_parses() {
        use clap::{CommandFactory, Parser};
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "biscuit",
            "attenuate",
            "--public-key-file",
            "root.pub",
            "--token",
            "-",
            "--product",
            "widget",
            "--product",
            "gizmo",
            "--max-quantity",
            "5",
            "--expires",
            "@100",
        ])
        .unwrap();
        assert_eq!(
            cli.command,
            BiscuitCommand::Attenuate {
                public_key_file: "root.pub".into(),
                token: "-".into(),
                products: vec!["widget".into(), "gizmo".into()],
                max_quantity: Some(5),
                expires: Some(UNIX_EPOCH + Duration::from_secs(100)),
            }
        );
        let cli = Cli::try_parse_from([
            "biscuit",
            "mint",
            "--private-key-file",
            "root.key",
            "--user",
            "alice",
            "--ttl-secs",
            "60",
        ])
        .unwrap();
        assert_eq!(
            cli.command,
            BiscuitCommand::Mint {
                private_key_file: "root.key".into(),
                user: "alice".into(),
                ttl_secs: Some(60),
                no_expiry: false,
            }
        );
        let mint = [
            "biscuit",
            "mint",
            "--private-key-file",
            "k",
            "--user",
            "alice",
        ];
        let cli = Cli::try_parse_from(mint).unwrap();
        assert!(matches!(
            cli.command,
            BiscuitCommand::Mint {
                ttl_secs: None,
                no_expiry: false,
                ..
            }
        ));
        let cli = Cli::try_parse_from([&mint[..], &["--no-expiry"]].concat()).unwrap();
        assert!(matches!(
            cli.command,
            BiscuitCommand::Mint {
                ttl_secs: None,
                no_expiry: true,
                ..
            }
        ));
        assert!(
            Cli::try_parse_from([&mint[..], &["--no-expiry", "--ttl-secs", "5"]].concat()).is_err()
        );
        assert!(Cli::try_parse_from(["biscuit", "attenuate", "--expires", "soon"]).is_err());
    }

    #[test]
    fn keygen_without_files_prints_both_keys() {
        let out = keygen(None, None, false).unwrap();
        assert!(out.starts_with("private key: "), "{out}");
        assert!(out.contains("\npublic key: "), "{out}");
    }

    #[cfg(unix)]
    #[test]
    fn keygen_writes_private_key_0600_and_keeps_existing_files() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let private = dir.path().join("root.key");
        let public = dir.path().join("root.pub");
        let out = keygen(Some(&private), Some(&public), false).unwrap();
        let private_hex = std::fs::read_to_string(&private).unwrap();
        assert!(!out.contains(private_hex.trim()), "{out}");
        let mode = std::fs::metadata(&private).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let public_hex = std::fs::read_to_string(&public).unwrap();
        assert!(out.contains(&format!("public key: {}", public_hex.trim())));
        assert!(keygen(Some(&private), None, false)
            .unwrap_err()
            .contains("already exists"));
        assert_eq!(std::fs::read_to_string(&private).unwrap(), private_hex);
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o644)).unwrap();
        keygen(Some(&private), None, true).unwrap();
        assert_ne!(std::fs::read_to_string(&private).unwrap(), private_hex);
        let mode = std::fs::metadata(&private).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn mint_attenuate_inspect() {
        let dir = tempfile::tempdir().unwrap();
        let private = dir.path().join("k");
        let public = dir.path().join("p");
        keygen(Some(&private), Some(&public), false).unwrap();
        let token = mint(&private, "alice", Some(600)).unwrap();
        let narrowed = attenuate(
            &public,
            token.trim(),
            &["widget".to_string()],
            Some(5),
            None,
        )
        .unwrap();
        let text = inspect(&public, narrowed.trim()).unwrap();
        assert!(text.contains(r#"user("alice")"#), "{text}");
        assert!(text.contains("$q <= 5"), "{text}");
        assert!(attenuate(&public, token.trim(), &[], None, None).is_err());
        assert!(mint(&private, "alice", Some(0)).is_err());
        let refused = mint(&private, "alice smith", Some(600)).unwrap_err();
        assert!(refused.contains("must be 1 to 64"), "{refused}");
        assert!(mint(&dir.path().join("missing"), "alice", None).is_err());
    }

    #[test]
    fn a_rotation_key_file_verifies_tokens_of_either_root() {
        let dir = tempfile::tempdir().unwrap();
        let (old_private, old_public) = (dir.path().join("old.key"), dir.path().join("old.pub"));
        let (new_private, new_public) = (dir.path().join("new.key"), dir.path().join("new.pub"));
        keygen(Some(&old_private), Some(&old_public), false).unwrap();
        keygen(Some(&new_private), Some(&new_public), false).unwrap();
        let both = dir.path().join("roots.pub");
        let read = |p: &Path| std::fs::read_to_string(p).unwrap();
        std::fs::write(
            &both,
            format!(
                "# new root\n{}\n# old root, until its tokens expire\n{}",
                read(&new_public),
                read(&old_public)
            ),
        )
        .unwrap();
        for private in [&old_private, &new_private] {
            let token = mint(private, "alice", Some(600)).unwrap();
            assert!(inspect(&both, token.trim())
                .unwrap()
                .contains(r#"user("alice")"#));
            assert!(attenuate(&both, token.trim(), &[], Some(2), None).is_ok());
        }
        let (stranger, stranger_public) = (dir.path().join("s.key"), dir.path().join("s.pub"));
        keygen(Some(&stranger), Some(&stranger_public), false).unwrap();
        let foreign = mint(&stranger, "alice", None).unwrap();
        let refused = inspect(&both, foreign.trim()).unwrap_err();
        assert!(refused.contains("unknown root key"), "{refused}");
    }
}
