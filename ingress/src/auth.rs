//! JWT issuing and verification with a key ring.
//!
//! Every key has a key id (`kid`) and exactly one algorithm (HS256, EdDSA or RS256). A token
//! must name its key (unless the ring holds a single key) and is verified only with that key's
//! algorithm, so `alg: none`, algorithm confusion (an HS256 token "signed" with a public key)
//! and unknown key ids all fail. `iss`, `sub`, `iat` and `exp` are required, `nbf` and `aud`
//! checked, with a configurable leeway. Key files are re-read by [`TokenAuthority::reload`]
//! (the ingress's [`Reloader`](crate::Reloader) calls it on SIGHUP), so keys rotate without
//! a restart.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use crate::config::{AuthConfig, JwtAlgorithm};
use jsonwebtoken::{
    decode, decode_header, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation,
};
use serde::{Deserialize, Serialize};

/// Claims of a Sluice token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user the token speaks for.
    pub sub: String,
    /// Issuer.
    pub iss: String,
    /// Audience, when the service has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// Issued at (seconds since the Unix epoch).
    pub iat: u64,
    /// Not valid before (seconds since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Expires at (seconds since the Unix epoch).
    pub exp: u64,
    /// Credential version: [`credential_version`] of the user's password hash when the token
    /// was issued. Once the password changes (or the user is removed) and the users file is
    /// reloaded, it no longer matches and the token is refused. Required on tokens of keys
    /// this service signs with; tokens of verify-only keys (another issuer's public key) may
    /// leave it out, and then live until `exp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cred: Option<String>,
}

/// The credential version of a password hash (argon2id PHC string): 128 bits of its SHA-256,
/// in base64url. The hash is salted afresh by every `sluice users add`, so setting even the
/// same password again changes it. Says nothing usable about the password: the hash itself
/// never leaves the users file.
pub fn credential_version(password_hash: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::new()
        .chain_update(b"sluice credential version 1\0")
        .chain_update(password_hash.as_bytes())
        .finalize();
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..16])
}

/// Why the key ring could not be built.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A key file could not be read.
    #[error("ingress.auth.keys {kid:?}: cannot read {path}: {source}")]
    KeyFile {
        /// The key.
        kid: String,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A key is not valid for its algorithm.
    #[error("ingress.auth.keys {kid:?}: {message}")]
    BadKey {
        /// The key.
        kid: String,
        /// What is wrong.
        message: String,
    },
}

/// Why a token could not be issued.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The key ring is empty.
    #[error("cannot issue tokens: no token key is configured; set ingress.auth.jwt_secret (or SLUICE_JWT_SECRET) or add an [[ingress.auth.keys]] entry")]
    NoKeys,
    /// `signing_kid` names a key the ring does not hold.
    #[error("cannot issue tokens: ingress.auth.signing_kid {kid:?} names no configured key; set it to the kid of a key that can sign")]
    UnknownSigningKey {
        /// The missing key.
        kid: String,
    },
    /// The signing key (`signing_kid`, or the first key when it is not set) has no private
    /// key: it can only verify.
    #[error("cannot issue tokens: key {kid:?} has no private_key_file, so it can only verify; add its private_key_file, or set ingress.auth.signing_kid to a key that has one")]
    CannotSign {
        /// The key.
        kid: String,
    },
    /// The signing key refused to sign.
    #[error("cannot sign a token with key {kid:?}: {source}; check that its key file holds a valid private key for its algorithm")]
    Sign {
        /// The signing key.
        kid: String,
        /// What jsonwebtoken reported.
        #[source]
        source: jsonwebtoken::errors::Error,
    },
}

/// Why a token was refused. The messages are safe to show the client: they say nothing of
/// the keys.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token is not a JWT, or its header or claims do not parse.
    #[error("the token is malformed")]
    Malformed(#[source] jsonwebtoken::errors::Error),
    /// The token names a key id the ring does not hold (unknown or retired).
    #[error("the token's key id is not known")]
    UnknownKey,
    /// The ring holds several keys and the token does not say which one signed it.
    #[error("the token does not name its key (kid)")]
    NoKeyId,
    /// The token's `alg` is not the algorithm of the key it names (e.g. `none`, or HS256
    /// "signed" with a public key).
    #[error("the token's algorithm is not accepted for its key")]
    AlgorithmMismatch,
    /// The token's `exp` has passed.
    #[error("the token has expired; log in again")]
    Expired(#[source] jsonwebtoken::errors::Error),
    /// The token's `nbf` is still to come.
    #[error("the token is not valid yet")]
    NotYetValid(#[source] jsonwebtoken::errors::Error),
    /// The signature does not match (forged, tampered, or signed with another key).
    #[error("the token's signature is not valid")]
    BadSignature(#[source] jsonwebtoken::errors::Error),
    /// The verifier refused the token's algorithm.
    #[error("the token's algorithm is not accepted")]
    AlgorithmNotAccepted(#[source] jsonwebtoken::errors::Error),
    /// The token's `iss` is not this service's issuer.
    #[error("the token was not issued by this service")]
    WrongIssuer(#[source] jsonwebtoken::errors::Error),
    /// The token's `aud` is missing or not this service's audience.
    #[error("the token is not meant for this service")]
    WrongAudience(#[source] jsonwebtoken::errors::Error),
    /// The token is signed with a key this service signs with, but lacks the `cred` claim
    /// every token it issues carries (issued before `cred` existed, or forged with a leaked
    /// key).
    #[error("the token lacks its credential version; log in again")]
    NoCredential,
    /// A claim the service requires (`exp`, `iat`, `sub`, `iss`, `aud`) is missing.
    #[error("the token lacks a required claim")]
    MissingClaim(#[source] jsonwebtoken::errors::Error),
}

impl TokenError {
    /// Sorts a failed decoding into the reason it gives the client.
    fn from_decoding(error: jsonwebtoken::errors::Error) -> Self {
        use jsonwebtoken::errors::ErrorKind;
        match error.kind() {
            ErrorKind::ExpiredSignature => TokenError::Expired(error),
            ErrorKind::ImmatureSignature => TokenError::NotYetValid(error),
            ErrorKind::InvalidSignature => TokenError::BadSignature(error),
            ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                TokenError::AlgorithmNotAccepted(error)
            }
            ErrorKind::InvalidIssuer => TokenError::WrongIssuer(error),
            ErrorKind::InvalidAudience => TokenError::WrongAudience(error),
            ErrorKind::MissingRequiredClaim(_) => TokenError::MissingClaim(error),
            _ => TokenError::Malformed(error),
        }
    }
}

struct VerifyKey {
    algorithm: Algorithm,
    decoding: DecodingKey,
    /// Whether this service holds the key's signing half (an HS256 secret, or a private key
    /// file): then every genuine token of the key was issued here, with a `cred` claim.
    signs_here: bool,
}

struct SigningKey {
    kid: String,
    algorithm: Algorithm,
    encoding: EncodingKey,
}

/// The loaded keys.
struct KeyRing {
    verify: HashMap<String, VerifyKey>,
    signing: Option<SigningKey>,
    /// The key that should sign, whether or not it can.
    signing_kid: Option<String>,
}

fn algorithm(a: JwtAlgorithm) -> Algorithm {
    match a {
        JwtAlgorithm::HS256 => Algorithm::HS256,
        JwtAlgorithm::EdDSA => Algorithm::EdDSA,
        JwtAlgorithm::RS256 => Algorithm::RS256,
    }
}

fn load_ring(config: &AuthConfig, base_dir: &Path) -> Result<KeyRing, AuthError> {
    let read = |kid: &str, path: &Path| {
        let path = sluice_core::topology::resolve_relative(base_dir, path);
        std::fs::read(&path).map_err(|source| AuthError::KeyFile {
            kid: kid.to_string(),
            path,
            source,
        })
    };
    let bad = |kid: &str, error: jsonwebtoken::errors::Error| AuthError::BadKey {
        kid: kid.to_string(),
        message: format!("not a valid key for its algorithm: {error}"),
    };
    let signing_kid = config.signing_kid.clone().or_else(|| {
        if config.jwt_secret.is_some() {
            Some("default".into())
        } else {
            config.keys.first().map(|k| k.kid.clone())
        }
    });
    let mut verify = HashMap::new();
    let mut signing = None;
    if let Some(secret) = &config.jwt_secret {
        verify.insert(
            "default".to_string(),
            VerifyKey {
                algorithm: Algorithm::HS256,
                decoding: DecodingKey::from_secret(secret.as_bytes()),
                signs_here: true,
            },
        );
        if signing_kid.as_deref() == Some("default") {
            signing = Some(SigningKey {
                kid: "default".into(),
                algorithm: Algorithm::HS256,
                encoding: EncodingKey::from_secret(secret.as_bytes()),
            });
        }
    }
    for key in &config.keys {
        let alg = algorithm(key.algorithm);
        let (decoding, encoding) = match key.algorithm {
            JwtAlgorithm::HS256 => {
                let secret = key.secret.as_deref().unwrap_or_default().as_bytes();
                (
                    DecodingKey::from_secret(secret),
                    Some(EncodingKey::from_secret(secret)),
                )
            }
            JwtAlgorithm::EdDSA | JwtAlgorithm::RS256 => {
                let public = key
                    .public_key_file
                    .as_deref()
                    .ok_or_else(|| AuthError::BadKey {
                        kid: key.kid.clone(),
                        message: "needs public_key_file".into(),
                    })?;
                let public = read(&key.kid, public)?;
                let decoding = if key.algorithm == JwtAlgorithm::EdDSA {
                    DecodingKey::from_ed_pem(&public)
                } else {
                    DecodingKey::from_rsa_pem(&public)
                }
                .map_err(|e| bad(&key.kid, e))?;
                let encoding = match &key.private_key_file {
                    Some(path) => {
                        let private = read(&key.kid, path)?;
                        Some(
                            if key.algorithm == JwtAlgorithm::EdDSA {
                                EncodingKey::from_ed_pem(&private)
                            } else {
                                EncodingKey::from_rsa_pem(&private)
                            }
                            .map_err(|e| bad(&key.kid, e))?,
                        )
                    }
                    None => None,
                };
                (decoding, encoding)
            }
        };
        let signs_here = encoding.is_some();
        if signing_kid.as_deref() == Some(key.kid.as_str()) {
            signing = encoding.map(|encoding| SigningKey {
                kid: key.kid.clone(),
                algorithm: alg,
                encoding,
            });
        }
        verify.insert(
            key.kid.clone(),
            VerifyKey {
                algorithm: alg,
                decoding,
                signs_here,
            },
        );
    }
    Ok(KeyRing {
        verify,
        signing,
        signing_kid,
    })
}

/// Issues and verifies tokens with the configured key ring.
pub struct TokenAuthority {
    config: RwLock<Arc<AuthConfig>>,
    base_dir: PathBuf,
    ring: RwLock<Arc<KeyRing>>,
    /// Counts [`verify`](Self::verify) calls (registered once, here).
    verifications: metrics::Counter,
}

/// The verification counter of JWTs.
fn verification_counter() -> metrics::Counter {
    metrics::counter!(crate::principal::AUTH_VERIFICATIONS, "kind" => "jwt")
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl TokenAuthority {
    /// Loads the keys of `config`; key files resolve against `base_dir`.
    pub fn from_config(config: &AuthConfig, base_dir: &Path) -> Result<Self, AuthError> {
        let ring = load_ring(config, base_dir)?;
        Ok(TokenAuthority {
            config: RwLock::new(Arc::new(config.clone())),
            base_dir: base_dir.to_path_buf(),
            ring: RwLock::new(Arc::new(ring)),
            verifications: verification_counter(),
        })
    }

    /// An authority with one HS256 secret (key id `default`), for tools and tests.
    pub fn with_secret(secret: &str, issuer: &str, ttl_secs: u64) -> Self {
        let config = AuthConfig {
            jwt_secret: Some(secret.to_string()),
            keys: Vec::new(),
            signing_kid: None,
            issuer: issuer.to_string(),
            audience: None,
            biscuit_public_key_file: None,
            biscuit_revocation_file: None,
            leeway_secs: 30,
            token_ttl_secs: ttl_secs,
            users_file: PathBuf::new(),
            generated_secret_file: PathBuf::new(),
        };
        // Secrets load without touching files, so this cannot fail.
        let ring = load_ring(&config, Path::new(".")).unwrap_or(KeyRing {
            verify: HashMap::new(),
            signing: None,
            signing_kid: None,
        });
        TokenAuthority {
            config: RwLock::new(Arc::new(config)),
            base_dir: PathBuf::new(),
            ring: RwLock::new(Arc::new(ring)),
            verifications: verification_counter(),
        }
    }

    /// Re-reads the key files, with `config` replacing the key settings when given (a
    /// reloaded topology); on error the current keys stay in force.
    pub fn reload(&self, config: Option<&AuthConfig>) -> Result<(), AuthError> {
        let config = match config {
            Some(config) => Arc::new(config.clone()),
            None => self.config(),
        };
        let ring = load_ring(&config, &self.base_dir)?;
        if let Ok(mut current) = self.ring.write() {
            *current = Arc::new(ring);
        }
        if let Ok(mut current) = self.config.write() {
            *current = config;
        }
        Ok(())
    }

    fn config(&self) -> Arc<AuthConfig> {
        self.config
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    fn ring(&self) -> Arc<KeyRing> {
        self.ring
            .read()
            .map(|r| r.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    /// Lifetime of issued tokens, in seconds.
    pub fn ttl_secs(&self) -> u64 {
        self.config().token_ttl_secs
    }

    /// A token for `subject`, whose password hash is `password_hash`, valid for the configured
    /// lifetime; it ends when the password changes (see [`Claims::cred`]).
    pub fn issue(&self, subject: &str, password_hash: &str) -> Result<String, IssueError> {
        self.issue_for(subject, password_hash, self.config().token_ttl_secs)
    }

    /// A token for `subject`, whose password hash is `password_hash`, valid for `ttl_secs`; it
    /// ends when the password changes.
    pub fn issue_for(
        &self,
        subject: &str,
        password_hash: &str,
        ttl_secs: u64,
    ) -> Result<String, IssueError> {
        let (ring, config) = (self.ring(), self.config());
        let signing = ring
            .signing
            .as_ref()
            .ok_or_else(|| match &ring.signing_kid {
                None => IssueError::NoKeys,
                Some(kid) if ring.verify.contains_key(kid) => {
                    IssueError::CannotSign { kid: kid.clone() }
                }
                Some(kid) => IssueError::UnknownSigningKey { kid: kid.clone() },
            })?;
        let iat = now_secs();
        let claims = Claims {
            sub: subject.to_string(),
            iss: config.issuer.clone(),
            aud: config.audience.clone(),
            iat,
            nbf: Some(iat),
            exp: iat + ttl_secs,
            cred: Some(credential_version(password_hash)),
        };
        let mut header = Header::new(signing.algorithm);
        header.kid = Some(signing.kid.clone());
        encode(&header, &claims, &signing.encoding).map_err(|source| IssueError::Sign {
            kid: signing.kid.clone(),
            source,
        })
    }

    /// The claims of a valid token. Counted in
    /// [`AUTH_VERIFICATIONS`](crate::principal::AUTH_VERIFICATIONS).
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        self.verifications.increment(1);
        let header = decode_header(token).map_err(TokenError::Malformed)?;
        let (ring, config) = (self.ring(), self.config());
        let key = match &header.kid {
            Some(kid) => ring.verify.get(kid).ok_or(TokenError::UnknownKey)?,
            None if ring.verify.len() == 1 => {
                ring.verify.values().next().ok_or(TokenError::UnknownKey)?
            }
            None => return Err(TokenError::NoKeyId),
        };
        if header.alg != key.algorithm {
            return Err(TokenError::AlgorithmMismatch);
        }
        let mut validation = Validation::new(key.algorithm);
        validation.set_issuer(&[&config.issuer]);
        validation.leeway = config.leeway_secs;
        validation.validate_nbf = true;
        match &config.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                validation.set_required_spec_claims(&["exp", "iat", "sub", "iss", "aud"]);
            }
            None => {
                validation.validate_aud = false;
                validation.set_required_spec_claims(&["exp", "iat", "sub", "iss"]);
            }
        }
        let claims = decode::<Claims>(token, &key.decoding, &validation)
            .map(|data| data.claims)
            .map_err(TokenError::from_decoding)?;
        // Tokens this service signs carry `cred`; without it, a token signed with one of our
        // own keys would outlive a password change.
        if key.signs_here && claims.cred.is_none() {
            return Err(TokenError::NoCredential);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "secret-one-secret-one-secret-one!";
    /// A password hash for the tokens of these tests (only its credential version matters).
    const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g";

    #[test]
    fn credential_versions_follow_the_hash_and_are_base64url() {
        let version = credential_version(HASH);
        assert_eq!(version.len(), 22, "{version}");
        assert!(version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(version, credential_version(HASH));
        assert_ne!(version, credential_version(&HASH.replace("c2Fsd", "c2Fse")));
    }

    #[test]
    fn round_trip_and_forgeries() {
        let authority = TokenAuthority::with_secret(SECRET, "sluice", 60);
        let token = authority.issue("alice", HASH).unwrap();
        assert_eq!(authority.verify(&token).unwrap().sub, "alice");

        let other = TokenAuthority::with_secret("another-secret-another-secret-xx", "sluice", 60);
        assert_eq!(
            other.verify(&token).unwrap_err().to_string(),
            "the token's signature is not valid"
        );

        let wrong_issuer = TokenAuthority::with_secret(SECRET, "elsewhere", 60);
        assert_eq!(
            authority
                .verify(&wrong_issuer.issue("alice", HASH).unwrap())
                .unwrap_err()
                .to_string(),
            "the token was not issued by this service"
        );

        // alg: none — header {"alg":"none","typ":"JWT"}, no signature.
        let unsigned = format!(
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.",
            token.split('.').nth(1).unwrap()
        );
        let error = authority.verify(&unsigned).unwrap_err();
        assert!(matches!(error, TokenError::Malformed(_)), "{error:?}");
    }

    /// A token whose claims were changed but which stays well-formed (valid base64url, valid
    /// JSON, every claim valid): only the signature check can refuse it.
    #[test]
    fn tampered_claims_are_refused_by_the_signature_check() {
        let authority = TokenAuthority::with_secret(SECRET, "sluice", 60);
        let token = authority.issue("alice", HASH).unwrap();
        let mut claims: Claims = jsonwebtoken::dangerous::insecure_decode_claims(&token).unwrap();
        claims.sub = "mallory".into();
        // `encode` writes its claims as unpadded base64url JSON: its middle segment is the
        // tampered payload. The key is irrelevant, as only that segment is kept.
        let reencoded = encode(
            &decode_header(&token).unwrap(),
            &claims,
            &EncodingKey::from_secret(b"irrelevant"),
        )
        .unwrap();
        let payload = reencoded.split('.').nth(1).unwrap();
        assert!(!payload.contains('='));
        let mut parts: Vec<&str> = token.split('.').collect();
        assert_ne!(parts[1], payload);
        parts[1] = payload;
        let tampered = parts.join(".");
        // Well-formed: it decodes, and says it is mallory's, under alice's original signature.
        let decoded: Claims = jsonwebtoken::dangerous::insecure_decode_claims(&tampered).unwrap();
        assert_eq!(decoded.sub, "mallory");
        assert_eq!(
            tampered.rsplit('.').next(),
            token.rsplit('.').next(),
            "the original signature is kept"
        );

        let error = authority.verify(&tampered).unwrap_err();
        assert!(matches!(error, TokenError::BadSignature(_)), "{error:?}");
        assert_eq!(
            crate::error::ApiError::from(error).message,
            "the token's signature is not valid"
        );
    }

    #[test]
    fn issuing_without_a_signing_key_says_which_setting_to_change() {
        let mut config = TokenAuthority::with_secret(SECRET, "sluice", 60)
            .config()
            .as_ref()
            .clone();
        config.jwt_secret = None;
        let error = TokenAuthority::from_config(&config, Path::new("."))
            .unwrap()
            .issue("alice", HASH)
            .unwrap_err();
        assert!(matches!(error, IssueError::NoKeys), "{error:?}");
        assert!(
            error.to_string().contains("ingress.auth.jwt_secret"),
            "{error}"
        );

        config.jwt_secret = Some(SECRET.into());
        config.signing_kid = Some("retired".into());
        let authority = TokenAuthority::from_config(&config, Path::new(".")).unwrap();
        let error = authority.issue("alice", HASH).unwrap_err();
        assert!(
            matches!(&error, IssueError::UnknownSigningKey { kid } if kid == "retired"),
            "{error:?}"
        );
        assert!(
            error.to_string().contains("ingress.auth.signing_kid"),
            "{error}"
        );
        // Verification still works with the keys there are.
        let token = TokenAuthority::with_secret(SECRET, "sluice", 60)
            .issue("alice", HASH)
            .unwrap();
        assert_eq!(authority.verify(&token).unwrap().sub, "alice");
    }

    #[test]
    fn expired_and_immature_tokens_fail() {
        let authority = TokenAuthority::with_secret(SECRET, "sluice", 60);
        let sign = |claims: &Claims| {
            let mut header = Header::new(Algorithm::HS256);
            header.kid = Some("default".into());
            encode(
                &header,
                claims,
                &EncodingKey::from_secret(SECRET.as_bytes()),
            )
            .unwrap()
        };
        let expired = Claims {
            sub: "alice".into(),
            iss: "sluice".into(),
            aud: None,
            iat: 1_000,
            nbf: None,
            exp: 2_000,
            cred: None,
        };
        assert_eq!(
            authority.verify(&sign(&expired)).unwrap_err().to_string(),
            "the token has expired; log in again"
        );
        let now = now_secs();
        let future = Claims {
            sub: "alice".into(),
            iss: "sluice".into(),
            aud: None,
            iat: now,
            nbf: Some(now + 3_600),
            exp: now + 7_200,
            cred: None,
        };
        assert_eq!(
            authority.verify(&sign(&future)).unwrap_err().to_string(),
            "the token is not valid yet"
        );
        // Within the leeway, a slightly early token passes.
        let skewed = Claims {
            nbf: Some(now + 10),
            cred: Some(credential_version(HASH)),
            ..future.clone()
        };
        assert!(authority.verify(&sign(&skewed)).is_ok());
        // A token of one of our own keys without `cred` was not issued by this service.
        let without_cred = Claims {
            cred: None,
            ..skewed.clone()
        };
        assert!(matches!(
            authority.verify(&sign(&without_cred)),
            Err(TokenError::NoCredential)
        ));
    }

    #[test]
    fn unknown_kid_and_wrong_algorithm_fail() {
        let authority = TokenAuthority::with_secret(SECRET, "sluice", 60);
        let now = now_secs();
        let claims = Claims {
            sub: "alice".into(),
            iss: "sluice".into(),
            aud: None,
            iat: now,
            nbf: None,
            exp: now + 60,
            cred: None,
        };
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("nope".into());
        let token = encode(
            &header,
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert_eq!(
            authority.verify(&token).unwrap_err().to_string(),
            "the token's key id is not known"
        );
        let mut header = Header::new(Algorithm::HS384);
        header.kid = Some("default".into());
        let token = encode(
            &header,
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert_eq!(
            authority.verify(&token).unwrap_err().to_string(),
            "the token's algorithm is not accepted for its key"
        );
    }
}
