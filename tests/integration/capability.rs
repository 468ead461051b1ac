//! Capability tokens (biscuit) through the library: minting, attenuation, refusal kinds,
//! and the `sluice biscuit` CLI functions.

use std::time::{Duration, SystemTime};

use biscuit_auth::builder::Algorithm;
use biscuit_auth::macros::block;
use biscuit_auth::{Biscuit, PublicKey};
use sluice::capability_cli::{self, BiscuitCommand};
use sluice_ingress::capability::{
    attenuate, generate_root_keypair, inspect, mint, CapabilityAuthority, CapabilityError,
    OrderRequestFacts, Restrictions,
};
use sluice_ingress::error::ApiError;

struct Root {
    private: String,
    public: String,
    authority: CapabilityAuthority,
}

fn root() -> Root {
    let (private, public) = generate_root_keypair();
    let authority = CapabilityAuthority::from_public_key_hex(&public).unwrap();
    Root {
        private,
        public,
        authority,
    }
}

fn order(user: &str, product: &str, quantity: i64) -> OrderRequestFacts {
    OrderRequestFacts {
        user_id: user.to_string(),
        product: product.to_string(),
        quantity,
    }
}

fn forbidden(result: Result<String, CapabilityError>) -> CapabilityError {
    let error = result.expect_err("expected a refusal");
    assert!(
        error.is_forbidden(),
        "expected a 403-kind error, got {error:?}"
    );
    assert!(!error.is_unauthenticated());
    assert_eq!(ApiError::from(error.clone()).status.as_u16(), 403);
    error
}

fn unauthenticated(result: Result<String, CapabilityError>) -> CapabilityError {
    let error = result.expect_err("expected a refusal");
    assert!(
        error.is_unauthenticated(),
        "expected a 401-kind error, got {error:?}"
    );
    assert!(!error.is_forbidden());
    assert_eq!(ApiError::from(error.clone()).status.as_u16(), 401);
    error
}

#[test]
fn minted_token_is_accepted_for_its_user_and_refused_for_another() {
    let root = root();
    let token = mint(&root.private, "alice", None).unwrap();
    let now = SystemTime::now();
    assert_eq!(
        root.authority
            .authorize(&token, &order("alice", "widget", 3), now)
            .unwrap(),
        "alice"
    );
    let error = forbidden(
        root.authority
            .authorize(&token, &order("bob", "widget", 3), now),
    );
    assert!(matches!(error, CapabilityError::Denied), "{error:?}");
}

#[test]
fn attenuated_token_holds_inside_its_checks_only() {
    let root = root();
    let token = mint(&root.private, "alice", None).unwrap();
    let now = SystemTime::now();
    let expiry = now + Duration::from_secs(600);
    let narrowed = attenuate(
        &token,
        &root.public,
        &Restrictions {
            products: Some(vec!["widget".to_string()]),
            max_quantity: Some(5),
            expires_at: Some(expiry),
        },
    )
    .unwrap();
    let authorize = |product: &str, quantity: i64, at: SystemTime| {
        root.authority
            .authorize(&narrowed, &order("alice", product, quantity), at)
    };

    assert_eq!(authorize("widget", 5, now).unwrap(), "alice");
    assert_eq!(authorize("widget", 1, now).unwrap(), "alice");

    let error = forbidden(authorize("gadget", 1, now));
    assert!(
        matches!(&error, CapabilityError::ChecksFailed(checks)
            if checks.len() == 1 && checks[0].contains("product($p)")),
        "{error:?}"
    );
    let error = forbidden(authorize("widget", 6, now));
    assert!(error.to_string().contains("$q <= 5"), "{error}");
    let error = unauthenticated(authorize("widget", 5, expiry + Duration::from_secs(2)));
    assert!(matches!(error, CapabilityError::Expired(_)), "{error:?}");

    // The original token is unaffected by its attenuated copy.
    assert!(root
        .authority
        .authorize(&token, &order("alice", "gadget", 100), now)
        .is_ok());
}

#[test]
fn token_from_another_root_is_a_bad_signature() {
    let root = root();
    let (other_private, _) = generate_root_keypair();
    let token = mint(&other_private, "alice", None).unwrap();
    let error = unauthenticated(root.authority.authorize(
        &token,
        &order("alice", "widget", 1),
        SystemTime::now(),
    ));
    assert!(
        matches!(error, CapabilityError::BadSignature(_)),
        "{error:?}"
    );
}

#[test]
fn tampered_token_is_refused() {
    let root = root();
    let token = mint(&root.private, "alice", None).unwrap();
    let now = SystemTime::now();
    // Flip one character at several places: in the authority block's content, in a
    // signature, near the end.
    let bytes = token.as_bytes();
    for position in [10, bytes.len() / 3, bytes.len() / 2, bytes.len() - 8] {
        let mut tampered = bytes.to_vec();
        tampered[position] = if tampered[position] == b'A' {
            b'B'
        } else {
            b'A'
        };
        let tampered = String::from_utf8(tampered).unwrap();
        assert_ne!(tampered, token);
        unauthenticated(
            root.authority
                .authorize(&tampered, &order("alice", "widget", 1), now),
        );
    }
    // Truncated and non-base64 tokens too.
    unauthenticated(root.authority.authorize(
        &token[..token.len() / 2],
        &order("alice", "widget", 1),
        now,
    ));
    unauthenticated(
        root.authority
            .authorize("%%%", &order("alice", "widget", 1), now),
    );
}

/// A token whose authority block now names another user but which is still a well-formed
/// biscuit (it parses, and says "carol"): only the signature check can refuse it.
#[test]
fn tampered_but_well_formed_token_is_refused_by_the_signature_check() {
    let root = root();
    let token = mint(&root.private, "alice", None).unwrap();
    let mut bytes = biscuit_auth::UnverifiedBiscuit::from_base64(&token)
        .unwrap()
        .to_vec()
        .unwrap();
    let at = bytes
        .windows(5)
        .position(|w| w == b"alice")
        .expect("the authority block names its user");
    bytes[at..at + 5].copy_from_slice(b"carol");
    // Well-formed: it parses without the root key, and its authority block names carol.
    let unverified = biscuit_auth::UnverifiedBiscuit::from(&bytes).expect("still a biscuit");
    let source = unverified.print_block_source(0).unwrap();
    assert!(source.contains("\"carol\""), "{source}");
    let tampered = unverified.to_base64().unwrap();
    assert_ne!(tampered, token);
    let error = unauthenticated(root.authority.authorize(
        &tampered,
        &order("carol", "widget", 1),
        SystemTime::now(),
    ));
    assert!(
        matches!(error, CapabilityError::BadSignature(_)),
        "{error:?}"
    );
}

/// An expired token is refused as unauthenticated (401) before any evaluation, naming when it
/// expired.
#[test]
fn expired_minted_token_is_refused() {
    let root = root();
    let token = mint(&root.private, "alice", Some(Duration::from_secs(30))).unwrap();
    let now = SystemTime::now();
    assert!(root
        .authority
        .authorize(&token, &order("alice", "widget", 1), now)
        .is_ok());
    let error = unauthenticated(root.authority.authorize(
        &token,
        &order("alice", "widget", 1),
        now + Duration::from_secs(60),
    ));
    assert!(
        matches!(&error, CapabilityError::Expired(at) if at.starts_with("20")),
        "{error:?}"
    );
    assert!(error.to_string().contains("expired"), "{error}");
}

/// Appended blocks may only add checks: a holder cannot turn alice's token into bob's, nor add
/// rights, nor feed the authority block's expiry check with a fake time. Such blocks are
/// refused outright (401) before any evaluation, though their signature chain is valid.
#[test]
fn attenuation_cannot_widen_rights() {
    let root = root();
    let public = PublicKey::from_bytes_hex(&root.public, Algorithm::Ed25519).unwrap();
    let now = SystemTime::now();

    let token = mint(&root.private, "alice", None).unwrap();
    let parsed = Biscuit::from_base64(&token, public).unwrap();
    let forged = parsed
        .append(block!(
            r#"
            user("bob");
            right("order");
            right("admin");
            "#
        ))
        .unwrap()
        .to_base64()
        .unwrap();
    // The signature chain is valid: this is a genuine, if hostile, attenuation.
    assert!(inspect(&forged, &root.public)
        .unwrap()
        .contains(r#"user("bob")"#));
    for user in ["bob", "alice"] {
        let error = unauthenticated(root.authority.authorize(
            &forged,
            &order(user, "widget", 1),
            now,
        ));
        assert!(
            matches!(&error, CapabilityError::Unsupported(why) if why.contains("block 1 adds 3 fact(s)")),
            "{error:?}"
        );
    }
    assert!(root.authority.verify(&forged, now).is_err());
    assert_eq!(root.authority.verify(&token, now).unwrap().user(), "alice");

    // A later block cannot feed the authority block's expiry check an old time.
    let expiring = mint(&root.private, "alice", Some(Duration::from_secs(30))).unwrap();
    let parsed = Biscuit::from_base64(&expiring, public).unwrap();
    let stale_clock = parsed
        .append(block!(r#"time(1970-01-01T00:00:00Z);"#))
        .unwrap()
        .to_base64()
        .unwrap();
    unauthenticated(
        root.authority
            .authorize(&stale_clock, &order("alice", "widget", 1), now),
    );
    unauthenticated(root.authority.authorize(
        &stale_clock,
        &order("alice", "widget", 1),
        now + Duration::from_secs(60),
    ));
}

#[test]
fn cli_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let private_file = dir.path().join("root.key");
    let public_file = dir.path().join("root.pub");

    let out = capability_cli::run(BiscuitCommand::Keygen {
        private_key_file: Some(private_file.clone()),
        public_key_file: Some(public_file.clone()),
        force: false,
    })
    .unwrap();
    let private_hex = std::fs::read_to_string(&private_file).unwrap();
    assert!(
        !out.contains(private_hex.trim()),
        "keygen echoed the private key: {out}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&private_file)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let token = capability_cli::run(BiscuitCommand::Mint {
        private_key_file: private_file.clone(),
        user: "alice".to_string(),
        ttl_secs: Some(3600),
        no_expiry: false,
    })
    .unwrap();
    assert!(!token.contains(private_hex.trim()));

    let expires = capability_cli::parse_expiry("2999-01-01T00:00:00Z").unwrap();
    let narrowed = capability_cli::run(BiscuitCommand::Attenuate {
        public_key_file: public_file.clone(),
        token: token.trim().to_string(),
        products: vec!["widget".to_string(), "gizmo".to_string()],
        max_quantity: Some(5),
        expires: Some(expires),
    })
    .unwrap();

    let listing = capability_cli::run(BiscuitCommand::Inspect {
        public_key_file: public_file.clone(),
        token: narrowed.trim().to_string(),
    })
    .unwrap();
    for expected in [
        "block 0 (authority):",
        r#"user("alice");"#,
        r#"right("order");"#,
        "check if time($t), $t <= ",
        "block 1 (attenuation):",
        r#"check if product($p), {"gizmo", "widget"}.contains($p);"#,
        "check if quantity($q), $q <= 5;",
        "check if time($t), $t <= 2999-01-01T00:00:00Z;",
    ] {
        assert!(
            listing.contains(expected),
            "missing {expected:?} in:\n{listing}"
        );
    }
    assert!(!listing.contains(private_hex.trim()));

    // The CLI's token is what the ingress accepts.
    let authority = CapabilityAuthority::from_public_key_file(&public_file).unwrap();
    let now = SystemTime::now();
    assert_eq!(
        authority
            .authorize(narrowed.trim(), &order("alice", "gizmo", 5), now)
            .unwrap(),
        "alice"
    );
    forbidden(authority.authorize(narrowed.trim(), &order("alice", "gadget", 5), now));

    // Errors come back as messages, not panics.
    assert!(capability_cli::run(BiscuitCommand::Inspect {
        public_key_file: public_file,
        token: "garbage".to_string(),
    })
    .is_err());
}
