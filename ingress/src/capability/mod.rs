//! Capability tokens ([Biscuit](https://www.biscuitsec.org/)) for `POST /order`.
//!
//! A capability token is minted with the root **private** key (Ed25519) and verified at the
//! ingress with the root **public** key alone. Whoever holds a token can *attenuate* it
//! offline — append a block of checks that narrows what it allows (products, quantity,
//! expiry) — without any key; nobody can widen it, and removing or changing a block breaks
//! the signature chain.
//!
//! # Datalog vocabulary
//!
//! Authority block (signed by the root key, see [`mint`]):
//!
//! - `user("alice")` — the principal the token speaks for;
//! - `right("order")` — the operation it allows;
//! - optionally `check if time($t), $t <= <expiry>` — a lifetime.
//!
//! Request facts added by the ingress for each request (see [`VerifiedCapability::authorize`]):
//!
//! - `operation("order")`, `request_user("alice")`, `product("widget")`, `quantity(3)`,
//!   `time(<now>)`.
//!
//! Attenuation blocks ([`attenuate`]) only carry checks over those request facts:
//!
//! - `check if product($p), {"gizmo", "widget"}.contains($p)` (a set);
//! - `check if quantity($q), $q <= 5`;
//! - `check if time($t), $t <= <expiry>`.
//!
//! Policies of the ingress, tried in order after every check of every block passed:
//!
//! ```text
//! allow if user($u), request_user($u), right($op), operation($op);
//! deny if true;
//! ```
//!
//! Policies only trust facts of the authority block and of the ingress itself (biscuit's
//! default scope), so attenuation could not grant anything anyway.
//!
//! # Nothing else is evaluated
//!
//! Anyone holding a token can append blocks to it, and a Datalog block can be made to cost
//! seconds to minutes of CPU (a rule joining a few hundred facts with themselves), which
//! biscuit's run limits do not stop: they count new facts and look at the clock only between
//! iterations. So [`CapabilityAuthority::verify`] reads every block as data first, without
//! evaluating anything, and refuses ([`CapabilityError::Unsupported`], `401`) any token that
//! holds more than the vocabulary above:
//!
//! - the authority block holds exactly `user(<string>)` and `right("order")`, and at most one
//!   check, `check if time($t), $t <= <date>`: what [`mint`] makes;
//! - an appended block holds no facts, no rules, no scopes (`trusting …`) and no context, and at
//!   most [`MAX_CHECKS_PER_BLOCK`] checks, each exactly one of the three documented forms (one
//!   predicate, one expression; the variable name is free), with at most
//!   [`MAX_PRODUCTS_PER_CHECK`] products in a set;
//! - at most [`MAX_BLOCKS`] blocks, none of them third-party (signed by another key).
//!
//! Before that, the expiry is compared with the time of the request: the earliest bound of the
//! `check if time($t), $t <= <date>` checks of all blocks. An expired token is refused
//! ([`CapabilityError::Expired`], `401`) whatever else it holds. The Datalog of a token that
//! passes is a handful of facts, no rules and a few one-predicate checks: its one evaluation,
//! in [`VerifiedCapability::authorize`], runs under the tight [`DEFAULT_LIMITS`].
//!
//! # Errors
//!
//! [`CapabilityError::is_unauthenticated`] (malformed token, bad signature, unknown root key,
//! revoked, expired, outside the vocabulary) is answered with `401`,
//! [`CapabilityError::is_forbidden`] (a failed check, a denial, an evaluation limit) with `403`
//! (see [`crate::error`]). Every message is safe to
//! show the client: failed checks are rendered as the Datalog source of the token's own
//! checks, never anything of the key.

use std::collections::{BTreeSet, HashSet};
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use biscuit_auth::builder::{self, Algorithm, Binary, CheckKind, Convert as _, Op, Term};
use biscuit_auth::datalog::SymbolTable;
use biscuit_auth::error::{FailedCheck, Format, Logic, Token};
use biscuit_auth::format::{convert::proto_block_to_token_block, schema};
use biscuit_auth::macros::{authorizer, biscuit, block};
use biscuit_auth::{
    AuthorizerLimits, Biscuit, BlockBuilder, KeyPair, PrivateKey, PublicKey, UnverifiedBiscuit,
};
use prost::Message as _;

/// The operation name of order submission (`right("order")`, `operation("order")`).
pub const ORDER_OPERATION: &str = "order";

/// Length of a revocation id: the Ed25519 signature of a block.
pub const REVOCATION_ID_BYTES: usize = 64;

/// The longest base64 token accepted, in characters (checked before any decoding).
/// It leaves room for the other headers within the default `max_header_bytes` (16 KiB).
pub const MAX_TOKEN_LEN: usize = 12 * 1024;
/// Why a token longer than [`MAX_TOKEN_LEN`] is refused.
const TOO_LONG: &str = "longer than 12288 characters";

/// The most blocks a token may have: the authority block and up to 15 attenuations.
pub const MAX_BLOCKS: usize = 16;

/// The most checks one appended block may hold.
pub const MAX_CHECKS_PER_BLOCK: usize = 8;

/// The most products one `check if product($p), {..}.contains($p)` set may list.
pub const MAX_PRODUCTS_PER_CHECK: usize = 256;

/// The longest part of a refused check quoted back in an error message, in characters.
const QUOTED_CHECK_CHARS: usize = 120;

/// Datalog evaluation limits of one authorization.
///
/// Only tokens of the documented vocabulary are evaluated (see the
/// [module documentation](self)): two facts of the token, five of the request, no rules (one
/// iteration) and a few one-predicate checks, which take well under a millisecond. These
/// limits are a second line behind that structural check: the fact and iteration caps leave
/// room for nothing else. The time is wall-clock and only looked at between evaluation steps:
/// short, yet long enough that a thread waiting for a core on a loaded machine does not refuse
/// a genuine token, and shorter than the ingress's bound on the whole answer
/// ([`CAPABILITY_JOB_DEADLINE`](crate::principal::CAPABILITY_JOB_DEADLINE)).
pub const DEFAULT_LIMITS: AuthorizerLimits = AuthorizerLimits {
    max_facts: 32,
    max_iterations: 2,
    max_time: Duration::from_millis(100),
};

/// Why a capability token was refused, or a tooling operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CapabilityError {
    /// The token is not a biscuit (bad base64, bad encoding). `401`.
    #[error("malformed capability token: {0}")]
    Malformed(#[source] Token),
    /// The token is empty, or longer than any Sluice capability token. `401`.
    #[error("malformed capability token: {0}")]
    BadSize(&'static str),
    /// The signature chain does not verify with the root public key (forged, tampered, or
    /// minted by another root key). `401`.
    #[error("capability token signature is invalid or from an unknown root key")]
    BadSignature(#[source] Token),
    /// One of the token's blocks has a revocation id listed in the revocation file. `401`.
    #[error("capability token has been revoked")]
    Revoked,
    /// The token expired: the earliest `check if time($t), $t <= <date>` of its blocks is in
    /// the past. Found before any evaluation, whatever else the token holds. Holds the date
    /// (RFC 3339). `401`.
    #[error("capability token expired at {0}")]
    Expired(String),
    /// A block holds something outside the vocabulary Sluice documents (facts or rules in an
    /// appended block, checks of another form, too many checks or products, too many blocks,
    /// a third-party block…): refused before any evaluation. Says which block and why. `401`.
    #[error("capability token refused before evaluation: {0}")]
    Unsupported(String),
    /// The token is genuine but some of its checks do not hold for this request (product,
    /// quantity, expiry, …). Holds the source of each failed check. `403`.
    #[error("capability check failed: {}", .0.join("; "))]
    ChecksFailed(Vec<String>),
    /// Every check held but no allow policy matched (e.g. a token for another user, or
    /// without `right("order")`). `403`.
    #[error("capability does not allow this request")]
    Denied,
    /// Evaluating the token hit the run limits (too many facts, iterations or time), or an
    /// expression in it failed. `403`.
    #[error("capability token could not be evaluated: {0}")]
    Evaluation(#[source] Token),
    /// A key (hex Ed25519, optionally prefixed `ed25519/` or `ed25519-private/`) is unusable.
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// A key file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        #[source]
        source: std::sync::Arc<std::io::Error>,
    },
    /// An argument of a tooling operation is unusable (empty user, no restriction, …).
    #[error("{0}")]
    InvalidInput(String),
    /// Building or serializing a token failed.
    #[error("capability token error: {0}")]
    Internal(#[source] Token),
}

impl CapabilityError {
    /// Whether the credential itself is bad (malformed, forged, unknown root): HTTP `401`.
    pub fn is_unauthenticated(&self) -> bool {
        matches!(
            self,
            CapabilityError::Malformed(_)
                | CapabilityError::BadSize(_)
                | CapabilityError::BadSignature(_)
                | CapabilityError::Revoked
                | CapabilityError::Expired(_)
                | CapabilityError::Unsupported(_)
        )
    }

    /// Whether the credential is genuine but does not allow the request: HTTP `403`.
    pub fn is_forbidden(&self) -> bool {
        matches!(
            self,
            CapabilityError::ChecksFailed(_)
                | CapabilityError::Denied
                | CapabilityError::Evaluation(_)
        )
    }
}

/// Sorts a biscuit error into a [`CapabilityError`].
fn classify(error: Token) -> CapabilityError {
    match &error {
        Token::Base64(_) => CapabilityError::Malformed(error),
        Token::Format(format) => match format {
            Format::Signature(_)
            | Format::SealedSignature
            | Format::UnknownPublicKey
            | Format::UnknownExternalKey
            | Format::InvalidSignatureSize(_)
            | Format::SignatureDeserializationError(_)
            | Format::BlockSignatureDeserializationError(_) => CapabilityError::BadSignature(error),
            _ => CapabilityError::Malformed(error),
        },
        Token::FailedLogic(logic) => match logic {
            Logic::Unauthorized { checks, .. } | Logic::NoMatchingPolicy { checks } => {
                if checks.is_empty() {
                    CapabilityError::Denied
                } else {
                    CapabilityError::ChecksFailed(checks.iter().map(render_check).collect())
                }
            }
            Logic::InvalidBlockRule(..) => CapabilityError::Evaluation(error),
            Logic::AuthorizerNotEmpty => CapabilityError::Internal(error),
        },
        Token::RunLimit(_) | Token::Execution(_) => CapabilityError::Evaluation(error),
        Token::AppendOnSealed => {
            CapabilityError::InvalidInput("the token is sealed and cannot be attenuated".into())
        }
        _ => CapabilityError::Internal(error),
    }
}

/// A failed check as `block N: <check source>` (or `ingress: …`).
fn render_check(check: &FailedCheck) -> String {
    match check {
        FailedCheck::Block(b) => format!("block {}: {}", b.block_id, b.rule),
        FailedCheck::Authorizer(a) => format!("ingress: {}", a.rule),
    }
}

/// A Datalog date for `t` (whole seconds; times before 1970 are the epoch).
fn date(t: SystemTime) -> Term {
    Term::Date(epoch_secs(t))
}

/// Whole seconds since the epoch of `t` (times before 1970 are the epoch).
fn epoch_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A Datalog date as biscuit prints it (RFC 3339).
fn render_date(secs: u64) -> String {
    Term::Date(secs).to_string()
}

/// Parses an Ed25519 public key: hex, optionally prefixed `ed25519/`.
fn parse_public_key(hex: &str) -> Result<PublicKey, CapabilityError> {
    let hex = hex.trim();
    let hex = hex.strip_prefix("ed25519/").unwrap_or(hex);
    PublicKey::from_bytes_hex(hex, Algorithm::Ed25519)
        .map_err(|e| CapabilityError::InvalidKey(format!("public key: {e}")))
}

/// Parses an Ed25519 private key: hex, optionally prefixed `ed25519-private/`.
fn parse_private_key(hex: &str) -> Result<PrivateKey, CapabilityError> {
    let hex = hex.trim();
    let hex = hex.strip_prefix("ed25519-private/").unwrap_or(hex);
    // The error of the hex decoder could quote the key: say nothing of its content.
    PrivateKey::from_bytes_hex(hex, Algorithm::Ed25519).map_err(|_| {
        CapabilityError::InvalidKey("private key: expected 64 hex digits (Ed25519)".into())
    })
}

/// Parses a base64 token without verifying any signature (size checked first).
fn parse_unverified(token_base64: &str) -> Result<UnverifiedBiscuit, CapabilityError> {
    let token = token_base64.trim();
    if token.is_empty() {
        return Err(CapabilityError::BadSize("empty token"));
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(CapabilityError::BadSize(TOO_LONG));
    }
    UnverifiedBiscuit::from_base64(token).map_err(classify)
}

/// The facts of one order request that the token's checks and the policies see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRequestFacts {
    /// The user the order is placed for (`request_user(..)`).
    pub user_id: String,
    /// The product ordered (`product(..)`).
    pub product: String,
    /// The quantity ordered (`quantity(..)`).
    pub quantity: i64,
}

/// Verifies capability tokens: the signature chain must start at one of the trusted root
/// public keys (several during a rotation), and no block may be revoked.
#[derive(Debug, Clone)]
pub struct CapabilityAuthority {
    roots: Vec<PublicKey>,
    revoked: HashSet<Vec<u8>>,
    limits: AuthorizerLimits,
    verifications: metrics::Counter,
}

/// The verification counter of capability tokens, registered once per authority.
fn verification_counter() -> metrics::Counter {
    metrics::counter!(crate::principal::AUTH_VERIFICATIONS, "kind" => "capability")
}

impl CapabilityAuthority {
    /// An authority trusting the Ed25519 root public key in hex (as printed by
    /// `sluice biscuit keygen`; an `ed25519/` prefix is accepted).
    pub fn from_public_key_hex(hex: &str) -> Result<Self, CapabilityError> {
        Ok(CapabilityAuthority {
            roots: vec![parse_public_key(hex)?],
            revoked: HashSet::new(),
            limits: DEFAULT_LIMITS,
            verifications: verification_counter(),
        })
    }

    /// An authority trusting every root public key in `path`: hex, one per line; blank lines
    /// and `#` comments are ignored. To rotate the root key, list the new key beside the old
    /// one, mint new tokens with the new private key, and remove the old key once its
    /// tokens have expired.
    pub fn from_public_key_file(path: impl AsRef<Path>) -> Result<Self, CapabilityError> {
        let path = path.as_ref();
        let mut roots = Vec::new();
        for (number, line) in content_lines(path)? {
            roots.push(parse_public_key(&line).map_err(|error| {
                CapabilityError::InvalidKey(format!("{} line {number}: {error}", path.display()))
            })?);
        }
        if roots.is_empty() {
            return Err(CapabilityError::InvalidKey(format!(
                "{} holds no public key",
                path.display()
            )));
        }
        Ok(CapabilityAuthority {
            roots,
            revoked: HashSet::new(),
            limits: DEFAULT_LIMITS,
            verifications: verification_counter(),
        })
    }

    /// The same authority refusing every token with a block whose revocation id (hex, as
    /// `sluice biscuit inspect` prints it) is listed in `path`, one per line; blank lines and
    /// `#` comments are ignored.
    pub fn with_revocation_file(mut self, path: impl AsRef<Path>) -> Result<Self, CapabilityError> {
        let path = path.as_ref();
        for (number, line) in content_lines(path)? {
            // An id is a block's Ed25519 signature: a shortened one would silently never match.
            let id = hex_decode(&line)
                .filter(|id| id.len() == REVOCATION_ID_BYTES)
                .ok_or_else(|| {
                    CapabilityError::InvalidInput(format!(
                        "{} line {number}: not a revocation id ({} hex digits expected, as `sluice biscuit inspect` prints them)",
                        path.display(),
                        2 * REVOCATION_ID_BYTES
                    ))
                })?;
            self.revoked.insert(id);
        }
        Ok(self)
    }

    /// Number of revoked ids in force.
    pub fn revoked_count(&self) -> usize {
        self.revoked.len()
    }

    /// The same authority with other evaluation limits (default: [`DEFAULT_LIMITS`]).
    pub fn with_limits(mut self, limits: AuthorizerLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The first trusted root public key, in hex.
    pub fn public_key_hex(&self) -> String {
        self.roots[0].to_bytes_hex()
    }

    /// Appends a block with `restrictions` to a token this authority verifies. No private key
    /// is needed: any holder can narrow a token offline.
    pub fn attenuate(
        &self,
        token_base64: &str,
        restrictions: &Restrictions,
    ) -> Result<String, CapabilityError> {
        let block = restrictions.block()?;
        let attenuated = self
            .verify_signatures(token_base64, None)?
            .append(block)
            .and_then(|token| token.to_base64())
            .map_err(classify)?;
        // Never hand out a token the ingress would refuse (too many blocks or products, too
        // long, already expired).
        self.verify(&attenuated, SystemTime::now())
            .map_err(|refused| {
                CapabilityError::InvalidInput(format!(
                    "the ingress would refuse the attenuated token ({refused}); narrow it with fewer blocks or products"
                ))
            })?;
        Ok(attenuated)
    }

    /// A human-readable listing of a token this authority verifies: each block's facts, rules
    /// and checks as Datalog, with its revocation id.
    pub fn inspect(&self, token_base64: &str) -> Result<String, CapabilityError> {
        let token = self.verify_signatures(token_base64, None)?;
        let revocation = token.revocation_identifiers();
        let mut out = String::new();
        for index in 0..token.block_count() {
            let source = token.print_block_source(index).map_err(classify)?;
            let kind = if index == 0 {
                "authority"
            } else {
                "attenuation"
            };
            let _ = writeln!(out, "block {index} ({kind}):");
            for line in source.lines().filter(|l| !l.trim().is_empty()) {
                let _ = writeln!(out, "    {line}");
            }
            if let Some(id) = revocation.get(index) {
                let _ = writeln!(out, "    // revocation id: {}", hex_encode(id));
            }
        }
        Ok(out)
    }

    /// Parses `token_base64` and verifies it against the trusted roots and the revocation
    /// list; with `max_blocks`, a token of more blocks is refused before any signature is
    /// checked. Counted in [`AUTH_VERIFICATIONS`](crate::principal::AUTH_VERIFICATIONS).
    fn verify_signatures(
        &self,
        token_base64: &str,
        max_blocks: Option<usize>,
    ) -> Result<Biscuit, CapabilityError> {
        self.verifications.increment(1);
        let unverified = parse_unverified(token_base64)?;
        if let Some(max) = max_blocks.filter(|max| unverified.block_count() > *max) {
            return Err(CapabilityError::Unsupported(format!(
                "{} blocks (at most {max})",
                unverified.block_count()
            )));
        }
        // `roots` is never empty (a key file without a key is refused).
        let mut refused = CapabilityError::BadSignature(Token::Format(Format::UnknownPublicKey));
        for root in &self.roots {
            match unverified.clone().verify(*root) {
                Ok(token) => {
                    let revoked = token
                        .revocation_identifiers()
                        .iter()
                        .any(|id| self.revoked.contains(id));
                    return if revoked {
                        Err(CapabilityError::Revoked)
                    } else {
                        Ok(token)
                    };
                }
                Err(error) => match classify(Token::Format(error)) {
                    // Signed by another root, maybe the next one.
                    error @ CapabilityError::BadSignature(_) => refused = error,
                    error => return Err(error),
                },
            }
        }
        Err(refused)
    }

    /// Verifies a token at time `now` without evaluating any of it: signature chain,
    /// revocation, expiry, then the vocabulary of every block (see the
    /// [module documentation](self)); learns the user it speaks for from its authority block.
    /// The ingress does this once per request, before it can describe the request, then calls
    /// [`VerifiedCapability::authorize`], the one evaluation.
    pub fn verify(
        &self,
        token_base64: &str,
        now: SystemTime,
    ) -> Result<VerifiedCapability, CapabilityError> {
        // More blocks than Sluice allows are refused before their signatures are checked.
        let token = self.verify_signatures(token_base64, Some(MAX_BLOCKS))?;
        let user = vocabulary::admit(&vocabulary::blocks_of(&token)?, now)?;
        Ok(VerifiedCapability {
            user,
            token,
            limits: self.limits.clone(),
        })
    }

    /// Verifies the token and authorizes `request` at time `now` with it; returns the
    /// principal (the token's `user`) on success. See the [module documentation](self) for
    /// the Datalog involved.
    pub fn authorize(
        &self,
        token_base64: &str,
        request: &OrderRequestFacts,
        now: SystemTime,
    ) -> Result<String, CapabilityError> {
        let verified = self.verify(token_base64, now)?;
        verified.authorize(request, now)?;
        Ok(verified.user)
    }
}

/// A capability token whose signature chain verified with a trusted root, that no revocation
/// lists, that has not expired and that holds nothing but Sluice's vocabulary, with the user it
/// speaks for. What it allows is still to be authorized per request
/// ([`authorize`](Self::authorize)), since its checks are about the request.
#[derive(Debug, Clone)]
pub struct VerifiedCapability {
    user: String,
    token: Biscuit,
    limits: AuthorizerLimits,
}

impl VerifiedCapability {
    /// The user the token speaks for.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Authorizes `request` at time `now`: every check of every block must hold and the
    /// ingress's allow policy must match (see the [module documentation](self)). No
    /// signature is verified again. This is the one Datalog evaluation of a token, under the
    /// authority's limits ([`DEFAULT_LIMITS`]); it runs on the calling thread.
    pub fn authorize(
        &self,
        request: &OrderRequestFacts,
        now: SystemTime,
    ) -> Result<(), CapabilityError> {
        let mut authorizer = authorizer!(
            r#"
            operation({operation});
            request_user({user});
            product({product});
            quantity({quantity});
            time({now});
            allow if user($u), request_user($u), right($op), operation($op);
            deny if true;
            "#,
            operation = ORDER_OPERATION,
            user = request.user_id.as_str(),
            product = request.product.as_str(),
            quantity = request.quantity,
            now = date(now),
        )
        .set_limits(self.limits.clone())
        .build(&self.token)
        .map_err(classify)?;
        authorizer.authorize().map_err(classify)?;
        Ok(())
    }
}

/// A new Ed25519 root key pair: `(private key hex, public key hex)`. Keep the private key
/// secret (it mints tokens); give the public key to the ingress.
pub fn generate_root_keypair() -> (String, String) {
    let pair = KeyPair::new();
    (pair.private().to_bytes_hex(), pair.public().to_bytes_hex())
}

/// Mints a token for `user` allowing `order`, signed with the root private key (hex); with
/// `ttl`, the token expires that long from now (`sluice biscuit mint` gives a default).
/// `user` must follow the user name rule ([`check_user_name`](crate::users::check_user_name)),
/// as every user of the users file does: the error says so without repeating it.
pub fn mint(
    private_key_hex: &str,
    user: &str,
    ttl: Option<Duration>,
) -> Result<String, CapabilityError> {
    crate::users::check_user_name(user)
        .map_err(|e| CapabilityError::InvalidInput(format!("the user is refused: {e}")))?;
    mint_any_user(private_key_hex, user, ttl)
}

/// [`mint`] without the user name rule (so tests can make tokens for names the rule refuses,
/// as someone holding the root key could).
fn mint_any_user(
    private_key_hex: &str,
    user: &str,
    ttl: Option<Duration>,
) -> Result<String, CapabilityError> {
    let root = KeyPair::from(&parse_private_key(private_key_hex)?);
    let mut builder = biscuit!(
        r#"
        user({user});
        right({operation});
        "#,
        user = user,
        operation = ORDER_OPERATION,
    );
    if let Some(ttl) = ttl {
        let expiry = SystemTime::now()
            .checked_add(ttl)
            .ok_or_else(|| CapabilityError::InvalidInput("the time to live is too long".into()))?;
        builder = builder.merge(block!(
            r#"check if time($t), $t <= {expiry};"#,
            expiry = date(expiry)
        ));
    }
    builder
        .build(&root)
        .and_then(|token| token.to_base64())
        .map_err(classify)
}

/// Restrictions that [`attenuate`] appends to a token; `None` leaves that aspect as it was.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Restrictions {
    /// Only these products (`check if product($p), {..}.contains($p)`); must not be empty.
    pub products: Option<Vec<String>>,
    /// At most this quantity per order (`check if quantity($q), $q <= N`).
    pub max_quantity: Option<i64>,
    /// Not after this time (`check if time($t), $t <= T`; whole seconds).
    pub expires_at: Option<SystemTime>,
}

impl Restrictions {
    /// The block of checks for these restrictions.
    fn block(&self) -> Result<BlockBuilder, CapabilityError> {
        let mut block = BlockBuilder::new();
        let mut any = false;
        if let Some(products) = &self.products {
            if products.is_empty() {
                return Err(CapabilityError::InvalidInput(
                    "the list of products must not be empty".into(),
                ));
            }
            let set: BTreeSet<Term> = products.iter().map(|p| Term::Str(p.clone())).collect();
            block = block.merge(block!(
                r#"check if product($p), {products}.contains($p);"#,
                products = Term::Set(set),
            ));
            any = true;
        }
        if let Some(max) = self.max_quantity {
            block = block.merge(block!(r#"check if quantity($q), $q <= {max};"#, max = max));
            any = true;
        }
        if let Some(expiry) = self.expires_at {
            block = block.merge(block!(
                r#"check if time($t), $t <= {expiry};"#,
                expiry = date(expiry),
            ));
            any = true;
        }
        if !any {
            return Err(CapabilityError::InvalidInput(
                "give at least one restriction (products, max quantity or expiry)".into(),
            ));
        }
        Ok(block)
    }
}

/// Appends a block with `restrictions` to a token, after verifying it with the root public
/// key. No private key is needed: any holder can narrow a token offline.
pub fn attenuate(
    token_base64: &str,
    root_public_hex: &str,
    restrictions: &Restrictions,
) -> Result<String, CapabilityError> {
    CapabilityAuthority::from_public_key_hex(root_public_hex)?.attenuate(token_base64, restrictions)
}

/// A human-readable listing of a verified token: each block's facts, rules and checks as
/// Datalog, with its revocation id.
pub fn inspect(token_base64: &str, root_public_hex: &str) -> Result<String, CapabilityError> {
    CapabilityAuthority::from_public_key_hex(root_public_hex)?.inspect(token_base64)
}

/// The lines of `path` that hold something: `(line number, trimmed text)`, without blank
/// lines and `#` comments.
fn content_lines(path: &Path) -> Result<Vec<(usize, String)>, CapabilityError> {
    let text = std::fs::read_to_string(path).map_err(|e| CapabilityError::Io {
        path: path.display().to_string(),
        source: std::sync::Arc::new(e),
    })?;
    Ok(text
        .lines()
        .enumerate()
        .map(|(index, line)| (index + 1, line.trim().to_string()))
        .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
        .collect())
}

/// Reading a token's blocks as data and holding them to Sluice's vocabulary, without
/// evaluating anything (see the [module documentation](self)).
mod vocabulary;

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(user: &str, product: &str, quantity: i64) -> OrderRequestFacts {
        OrderRequestFacts {
            user_id: user.into(),
            product: product.into(),
            quantity,
        }
    }

    fn setup() -> (String, CapabilityAuthority, String) {
        let (private, public) = generate_root_keypair();
        let authority = CapabilityAuthority::from_public_key_hex(&public).unwrap();
        (private, authority, public)
    }

    #[test]
    fn keypair_is_hex_ed25519() {
        let (private, public) = generate_root_keypair();
        assert_eq!(private.len(), 64);
        assert_eq!(public.len(), 64);
        assert!(private.chars().all(|c| c.is_ascii_hexdigit()));
        let authority = CapabilityAuthority::from_public_key_hex(&public).unwrap();
        assert_eq!(authority.public_key_hex(), public);
        let prefixed = CapabilityAuthority::from_public_key_hex(&format!(" ed25519/{public}\n"));
        assert_eq!(prefixed.unwrap().public_key_hex(), public);
        assert!(matches!(
            CapabilityAuthority::from_public_key_hex("zz"),
            Err(CapabilityError::InvalidKey(_))
        ));
    }

    #[test]
    fn public_key_file_is_trimmed() {
        let (_, public) = generate_root_keypair();
        let dir = std::env::temp_dir().join(format!("sluice-cap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("root.pub");
        std::fs::write(&path, format!("  {public}\n\n")).unwrap();
        let authority = CapabilityAuthority::from_public_key_file(&path).unwrap();
        assert_eq!(authority.public_key_hex(), public);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(
            CapabilityAuthority::from_public_key_file(&path),
            Err(CapabilityError::Io { .. })
        ));
    }

    #[test]
    fn minted_token_allows_its_user_only() {
        let (private, authority, _) = setup();
        let token = mint(&private, "alice", None).unwrap();
        let now = SystemTime::now();
        assert_eq!(
            authority
                .authorize(&token, &request("alice", "widget", 3), now)
                .unwrap(),
            "alice"
        );
        let refused = authority
            .authorize(&token, &request("bob", "widget", 3), now)
            .unwrap_err();
        assert!(matches!(refused, CapabilityError::Denied), "{refused:?}");
        assert!(refused.is_forbidden());
        assert_eq!(authority.verify(&token, now).unwrap().user(), "alice");
    }

    #[test]
    fn user_names_are_data_not_code() {
        let (private, authority, _) = setup();
        let tricky = r#"al"ice"); right("admin"#;
        let token = mint_any_user(&private, tricky, None).unwrap();
        let now = SystemTime::now();
        assert_eq!(
            authority
                .authorize(&token, &request(tricky, "widget", 1), now)
                .unwrap(),
            tricky
        );
        assert!(authority
            .authorize(&token, &request("alice", "widget", 1), now)
            .is_err());
        assert!(mint(&private, "  ", None).is_err());
    }

    #[test]
    fn mint_applies_the_user_name_rule() {
        let (private, authority, _) = setup();
        for bad in [
            r#"al"ice"); right("admin"#,
            "",
            "  ",
            "a b",
            "ünï",
            &"a".repeat(65),
        ] {
            let error = mint(&private, bad, None).unwrap_err();
            assert!(matches!(error, CapabilityError::InvalidInput(_)), "{error}");
            let message = error.to_string();
            assert!(message.contains("must be 1 to 64"), "{message}");
            if bad.trim().len() > 1 {
                assert!(!message.contains(bad), "{message}");
            }
        }
        let token = mint(&private, "carol@example.com", None).unwrap();
        let now = SystemTime::now();
        assert_eq!(
            authority
                .authorize(&token, &request("carol@example.com", "widget", 1), now)
                .unwrap(),
            "carol@example.com"
        );
    }

    #[test]
    fn ttl_expires() {
        let (private, authority, _) = setup();
        let token = mint(&private, "alice", Some(Duration::from_secs(60))).unwrap();
        let now = SystemTime::now();
        assert!(authority
            .authorize(&token, &request("alice", "widget", 1), now)
            .is_ok());
        let later = now + Duration::from_secs(120);
        match authority.authorize(&token, &request("alice", "widget", 1), later) {
            Err(error @ CapabilityError::Expired(_)) => {
                assert!(error.is_unauthenticated());
                assert!(error
                    .to_string()
                    .starts_with("capability token expired at 20"));
            }
            other => panic!("expected an expired token, got {other:?}"),
        }
        // The Datalog check agrees, should the structural one ever miss it.
        let verified = authority.verify(&token, now).unwrap();
        match verified.authorize(&request("alice", "widget", 1), later) {
            Err(CapabilityError::ChecksFailed(checks)) => {
                assert_eq!(checks.len(), 1);
                assert!(
                    checks[0].starts_with("block 0: check if time($t)"),
                    "{checks:?}"
                );
            }
            other => panic!("expected a failed check, got {other:?}"),
        }
    }

    #[test]
    fn attenuation_narrows() {
        let (private, authority, public) = setup();
        let token = mint(&private, "alice", None).unwrap();
        let now = SystemTime::now();
        let narrowed = attenuate(
            &token,
            &public,
            &Restrictions {
                products: Some(vec!["widget".into(), "gizmo".into()]),
                max_quantity: Some(5),
                expires_at: Some(now + Duration::from_secs(3600)),
            },
        )
        .unwrap();
        let ok = |product: &str, quantity: i64, at: SystemTime| {
            authority.authorize(&narrowed, &request("alice", product, quantity), at)
        };
        assert!(ok("widget", 5, now).is_ok());
        assert!(ok("gizmo", 1, now).is_ok());
        let gadget = ok("gadget", 1, now).unwrap_err();
        assert!(gadget.is_forbidden());
        assert!(gadget.to_string().contains("product($p)"), "{gadget}");
        assert!(ok("widget", 6, now)
            .unwrap_err()
            .to_string()
            .contains("$q <= 5"));
        assert!(matches!(
            ok("widget", 1, now + Duration::from_secs(7200)),
            Err(CapabilityError::Expired(_))
        ));
        // Several failures are all reported.
        match ok("gadget", 9, now) {
            Err(CapabilityError::ChecksFailed(checks)) => assert_eq!(checks.len(), 2),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn attenuate_never_makes_a_token_the_ingress_refuses() {
        let (private, authority, public) = setup();
        let mut token = mint(&private, "alice", None).unwrap();
        let narrower = Restrictions {
            max_quantity: Some(5),
            ..Restrictions::default()
        };
        for _ in 1..MAX_BLOCKS {
            token = attenuate(&token, &public, &narrower).unwrap();
            assert!(authority.verify(&token, SystemTime::now()).is_ok());
        }
        let refused = attenuate(&token, &public, &narrower).unwrap_err();
        assert!(
            matches!(&refused, CapabilityError::InvalidInput(message) if message.contains("would refuse")),
            "{refused}"
        );
        let too_many = Restrictions {
            products: Some(
                (0..=MAX_PRODUCTS_PER_CHECK)
                    .map(|i| format!("p{i}"))
                    .collect(),
            ),
            ..Restrictions::default()
        };
        let fresh = mint(&private, "alice", None).unwrap();
        assert!(matches!(
            attenuate(&fresh, &public, &too_many),
            Err(CapabilityError::InvalidInput(_))
        ));
    }

    #[test]
    fn attenuation_needs_a_restriction() {
        let (private, _, public) = setup();
        let token = mint(&private, "alice", None).unwrap();
        assert!(matches!(
            attenuate(&token, &public, &Restrictions::default()),
            Err(CapabilityError::InvalidInput(_))
        ));
        let empty = Restrictions {
            products: Some(vec![]),
            ..Restrictions::default()
        };
        assert!(matches!(
            attenuate(&token, &public, &empty),
            Err(CapabilityError::InvalidInput(_))
        ));
    }

    #[test]
    fn foreign_root_and_garbage_are_unauthenticated() {
        let (_, authority, _) = setup();
        let (other_private, _) = generate_root_keypair();
        let token = mint(&other_private, "alice", None).unwrap();
        let now = SystemTime::now();
        let error = authority
            .authorize(&token, &request("alice", "widget", 1), now)
            .unwrap_err();
        assert!(
            matches!(error, CapabilityError::BadSignature(_)),
            "{error:?}"
        );
        assert!(error.is_unauthenticated());
        for garbage in ["", "not a token!", "AAAA", &"A".repeat(MAX_TOKEN_LEN + 4)] {
            let error = authority
                .authorize(garbage, &request("alice", "widget", 1), now)
                .unwrap_err();
            assert!(error.is_unauthenticated(), "{garbage:.20}: {error:?}");
        }
    }

    #[test]
    fn inspect_lists_blocks() {
        let (private, _, public) = setup();
        let token = mint(&private, "alice", Some(Duration::from_secs(60))).unwrap();
        let token = attenuate(
            &token,
            &public,
            &Restrictions {
                products: Some(vec!["widget".into()]),
                max_quantity: Some(5),
                expires_at: None,
            },
        )
        .unwrap();
        let text = inspect(&token, &public).unwrap();
        assert!(text.contains("block 0 (authority):"), "{text}");
        assert!(text.contains(r#"user("alice");"#), "{text}");
        assert!(text.contains(r#"right("order");"#), "{text}");
        assert!(text.contains("block 1 (attenuation):"), "{text}");
        assert!(
            text.contains(r#"check if product($p), {"widget"}.contains($p)"#),
            "{text}"
        );
        assert!(text.contains("check if quantity($q), $q <= 5"), "{text}");
        assert!(!text.contains(&private), "{text}");
        let (_, other_public) = generate_root_keypair();
        assert!(matches!(
            inspect(&token, &other_public),
            Err(CapabilityError::BadSignature(_))
        ));
    }

    /// `token` (verified with `public`) with `block` appended, as any holder can do offline.
    fn append(token: &str, public: &str, block: BlockBuilder) -> String {
        Biscuit::from_base64(token, parse_public_key(public).unwrap())
            .unwrap()
            .append(block)
            .unwrap()
            .to_base64()
            .unwrap()
    }

    fn code(source: &str) -> BlockBuilder {
        BlockBuilder::new()
            .code(source)
            .unwrap_or_else(|e| panic!("{source}: {e}"))
    }

    /// A block of facts and a rule joining them with themselves that never derives anything:
    /// seconds of evaluation if it were ever evaluated.
    fn self_join() -> BlockBuilder {
        let facts: String = (0..200).map(|i| format!("n({i});\n")).collect();
        code(&format!(
            "{facts}never($x) <- n($x), n($y), n($z), $x + $y + $z < 0;"
        ))
    }

    fn unsupported(result: Result<VerifiedCapability, CapabilityError>) -> String {
        match result {
            Err(error @ CapabilityError::Unsupported(_)) => {
                assert!(error.is_unauthenticated());
                error.to_string()
            }
            other => panic!("expected a refusal before evaluation, got {other:?}"),
        }
    }

    #[test]
    fn the_documented_checks_are_recognised_whatever_their_variable() {
        use vocabulary::{documented, Documented};
        let check = |source: &str| {
            let block = code(source);
            assert_eq!(block.checks.len(), 1, "{source}");
            documented(&block.checks[0])
        };
        assert_eq!(
            check(r#"check if product($p), {"a", "b"}.contains($p);"#),
            Some(Documented::Products(2))
        );
        assert_eq!(
            check(r#"check if product($item), {"a"}.contains($item);"#),
            Some(Documented::Products(1))
        );
        assert_eq!(
            check("check if quantity($n), $n <= 5;"),
            Some(Documented::MaxQuantity(5))
        );
        assert_eq!(
            check("check if time($t), $t <= 2030-01-01T00:00:00Z;"),
            Some(Documented::Expiry(1_893_456_000))
        );
        for other in [
            "check if quantity($q), $q < 5;",
            "check if quantity($q), $q >= 5;",
            "check if quantity($q), 5 >= $q;",
            "check if quantity($q), $r <= 5;",
            "check if quantity($q), ($q <= 5);",
            "check if quantity($q), $q <= 5, $q >= 0;",
            "check if quantity($q), quantity($r), $q <= 5;",
            "check if quantity($q), $q <= 5 or quantity($q), $q <= 6;",
            "check all quantity($q), $q <= 5;",
            "reject if quantity($q), $q > 5;",
            "check if quantity($q), $q <= 5 trusting authority;",
            "check if amount($q), $q <= 5;",
            "check if time($t), $t <= 5;",
            "check if quantity(5);",
            "check if true;",
            "check if product($p), {1, 2}.contains($p);",
            r#"check if product($p), ["a"].contains($p);"#,
            r#"check if product($p), {"a"}.any($x -> $x == $p);"#,
            r#"check if product($p), $p.matches("a*");"#,
            r#"check if product($p), {"a"}.contains($q);"#,
        ] {
            assert_eq!(check(other), None, "{other}");
        }
    }

    #[test]
    fn appended_blocks_may_only_add_few_documented_checks() {
        let (private, authority, public) = setup();
        let token = mint(&private, "alice", Some(Duration::from_secs(600))).unwrap();
        let now = SystemTime::now();
        let products = |n: usize| {
            let set: Vec<String> = (0..n).map(|i| format!("\"p{i}\"")).collect();
            format!("check if product($p), {{{}}}.contains($p);", set.join(", "))
        };
        let refused = [
            (r#"user("bob");"#.to_string(), "adds 1 fact(s)"),
            ("r($x) <- right($x);".to_string(), "adds 1 rule(s)"),
            (
                "time(1970-01-01T00:00:00Z);\ncheck if quantity($q), $q <= 5;".to_string(),
                "adds 1 fact(s)",
            ),
            (
                r#"check if right("order");"#.to_string(),
                "does not document",
            ),
            (
                "check all quantity($q), $q <= 5;".to_string(),
                "does not document",
            ),
            (
                "check if quantity($q), $q <= 5;\n".repeat(MAX_CHECKS_PER_BLOCK + 1),
                "holds 9 checks",
            ),
            (products(MAX_PRODUCTS_PER_CHECK + 1), "lists 257 products"),
        ];
        for (source, why) in refused {
            let message =
                unsupported(authority.verify(&append(&token, &public, code(&source)), now));
            assert!(message.contains("block 1"), "{message}");
            assert!(message.contains(why), "{source:.60}: {message}");
        }
        let mut scoped = code("check if quantity($q), $q <= 5;");
        scoped.scopes.push(builder::Scope::Previous);
        assert!(
            unsupported(authority.verify(&append(&token, &public, scoped), now)).contains("trusts")
        );
        let with_context = code("check if quantity($q), $q <= 5;").context("note".into());
        assert!(
            unsupported(authority.verify(&append(&token, &public, with_context), now))
                .contains("context")
        );

        // The most that is allowed passes, and is then authorized as usual.
        let mut most = products(MAX_PRODUCTS_PER_CHECK).replace("\"p0\"", "\"widget\"");
        most.push_str(&"\ncheck if quantity($q), $q <= 5;".repeat(MAX_CHECKS_PER_BLOCK - 1));
        let widest = append(&token, &public, code(&most));
        let verified = authority.verify(&widest, now).unwrap();
        assert_eq!(verified.user(), "alice");
        verified
            .authorize(&request("alice", "widget", 5), now)
            .unwrap();
        assert!(verified
            .authorize(&request("alice", "widget", 6), now)
            .is_err());
        assert!(verified
            .authorize(&request("alice", "gadget", 1), now)
            .is_err());
    }

    #[test]
    fn the_authority_block_must_be_what_mint_makes() {
        let (private, authority, _) = setup();
        let root = KeyPair::from(&parse_private_key(&private).unwrap());
        let now = SystemTime::now();
        let build = |source: &str| {
            let mut builder = Biscuit::builder();
            builder = builder.code(source).unwrap();
            builder.build(&root).unwrap().to_base64().unwrap()
        };
        let same_as_mint = build(
            r#"user("alice"); right("order"); check if time($t), $t <= 2999-01-01T00:00:00Z;"#,
        );
        assert_eq!(
            authority.verify(&same_as_mint, now).unwrap().user(),
            "alice"
        );
        for (source, why) in [
            (
                r#"user("alice"); right("order"); right("admin");"#,
                "unexpected fact",
            ),
            (
                r#"user("alice"); user("bob"); right("order");"#,
                "unexpected fact",
            ),
            (r#"user("alice");"#, "lacks"),
            (r#"right("order");"#, "lacks"),
            (r#"user(1); right("order");"#, "unexpected fact"),
            (
                r#"user("alice"); right("order"); r($x) <- user($x);"#,
                "rules",
            ),
            (
                r#"user("alice"); right("order"); check if quantity($q), $q <= 5;"#,
                "checks",
            ),
            (
                r#"user("alice"); right("order");
                   check if time($t), $t <= 2999-01-01T00:00:00Z;
                   check if time($t), $t <= 2998-01-01T00:00:00Z;"#,
                "checks",
            ),
        ] {
            let message = unsupported(authority.verify(&build(source), now));
            assert!(message.contains("block 0"), "{source}: {message}");
            assert!(message.contains(why), "{source}: {message}");
        }
    }

    #[test]
    fn a_self_join_block_is_refused_without_evaluation() {
        let (private, authority, public) = setup();
        let token = mint(&private, "alice", Some(Duration::from_secs(600))).unwrap();
        let heavy = append(&token, &public, self_join());
        let message = unsupported(authority.verify(&heavy, SystemTime::now()));
        assert!(message.contains("block 1 adds 200 fact(s)"), "{message}");
        let refused = authority
            .authorize(&heavy, &request("alice", "widget", 1), SystemTime::now())
            .unwrap_err();
        assert!(
            matches!(refused, CapabilityError::Unsupported(_)),
            "{refused:?}"
        );
    }

    #[test]
    fn expiry_is_read_before_anything_else() {
        let (private, authority, public) = setup();
        let now = SystemTime::now();
        let token = mint(&private, "alice", Some(Duration::from_secs(600))).unwrap();
        let heavy = append(&token, &public, self_join());
        let error = authority
            .verify(&heavy, now + Duration::from_secs(601))
            .unwrap_err();
        assert!(matches!(error, CapabilityError::Expired(_)), "{error:?}");
        // The earliest expiry of any block counts, even in a block refused otherwise.
        let narrowed = append(
            &token,
            &public,
            code("check if time($t), $t <= 2000-01-01T00:00:00Z;\nn(1);"),
        );
        let error = authority.verify(&narrowed, now).unwrap_err();
        assert_eq!(
            error.to_string(),
            "capability token expired at 2000-01-01T00:00:00Z"
        );
        // Valid up to and including its last second.
        let at = UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let until = append(
            &mint(&private, "alice", None).unwrap(),
            &public,
            code("check if time($t), $t <= 2033-05-18T03:33:20Z;"),
        );
        assert!(authority.verify(&until, at).is_ok());
        assert!(authority
            .verify(&until, at + Duration::from_millis(999))
            .is_ok());
        assert!(matches!(
            authority.verify(&until, at + Duration::from_secs(1)),
            Err(CapabilityError::Expired(_))
        ));
    }

    #[test]
    fn blocks_are_bounded_in_number_and_first_party() {
        let (private, authority, public) = setup();
        let now = SystemTime::now();
        let mut token = mint(&private, "alice", None).unwrap();
        for _ in 1..MAX_BLOCKS {
            token = append(&token, &public, code("check if quantity($q), $q <= 5;"));
        }
        assert!(authority.verify(&token, now).is_ok());
        let one_more = append(&token, &public, code("check if quantity($q), $q <= 5;"));
        assert!(unsupported(authority.verify(&one_more, now)).contains("17 blocks"));

        let token = mint(&private, "alice", None).unwrap();
        let parsed = Biscuit::from_base64(&token, parse_public_key(&public).unwrap()).unwrap();
        let external = KeyPair::new();
        let third_party = parsed
            .third_party_request()
            .unwrap()
            .create_block(&external.private(), code("check if quantity($q), $q <= 5;"))
            .unwrap();
        let with_third_party = parsed
            .append_third_party(external.public(), third_party)
            .unwrap()
            .to_base64()
            .unwrap();
        assert!(unsupported(authority.verify(&with_third_party, now))
            .contains("block 1 is a third-party block"));
    }
}
