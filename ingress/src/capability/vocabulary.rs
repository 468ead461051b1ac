//! Reading a token's blocks as data and holding them to Sluice's vocabulary, without
//! evaluating anything (see the [parent module's documentation](super)).

use super::*;

/// The blocks of a verified token (authority first) as builder values, with every symbol
/// resolved, read from the token's own encoding: exactly what an authorizer would load.
pub(super) fn blocks_of(token: &Biscuit) -> Result<Vec<BlockBuilder>, CapabilityError> {
    if token.block_count() > MAX_BLOCKS {
        return Err(CapabilityError::Unsupported(format!(
            "{} blocks (at most {MAX_BLOCKS})",
            token.block_count()
        )));
    }
    let encoded = token.container().to_proto();
    let signed: Vec<&schema::SignedBlock> = std::iter::once(&encoded.authority)
        .chain(&encoded.blocks)
        .collect();
    let mut blocks = Vec::with_capacity(signed.len());
    // One symbol table over every block, as biscuit builds it for an authorizer.
    let mut symbols = SymbolTable::new();
    for (index, block) in signed.iter().enumerate() {
        if block.external_signature.is_some() {
            return Err(CapabilityError::Unsupported(format!(
                "block {index} is a third-party block"
            )));
        }
        let block = schema::Block::decode(&block.block[..]).map_err(|e| {
            malformed(Format::BlockDeserializationError(format!(
                "block {index}: {e}"
            )))
        })?;
        let table = SymbolTable::from(block.symbols.clone()).map_err(malformed)?;
        symbols.extend(&table).map_err(malformed)?;
        blocks.push(block);
    }
    blocks
        .iter()
        .map(|block| {
            let block = proto_block_to_token_block(block, None).map_err(malformed)?;
            let facts = block
                .facts
                .iter()
                .map(|fact| builder::Fact::convert_from(fact, &symbols))
                .collect::<Result<_, _>>();
            let rules = block
                .rules
                .iter()
                .map(|rule| builder::Rule::convert_from(rule, &symbols))
                .collect::<Result<_, _>>();
            let checks = block
                .checks
                .iter()
                .map(|check| builder::Check::convert_from(check, &symbols))
                .collect::<Result<_, _>>();
            let scopes = block
                .scopes
                .iter()
                .map(|scope| builder::Scope::convert_from(scope, &symbols))
                .collect::<Result<_, _>>();
            Ok(BlockBuilder {
                facts: facts.map_err(malformed)?,
                rules: rules.map_err(malformed)?,
                checks: checks.map_err(malformed)?,
                scopes: scopes.map_err(malformed)?,
                context: block.context,
            })
        })
        .collect()
}

fn malformed(error: Format) -> CapabilityError {
    CapabilityError::Malformed(Token::Format(error))
}

/// One of the checks Sluice documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Documented {
    /// `check if product($p), {..}.contains($p)`, with this many products.
    Products(usize),
    /// `check if quantity($q), $q <= N`.
    MaxQuantity(i64),
    /// `check if time($t), $t <= T` (seconds since the epoch).
    Expiry(u64),
}

/// Which documented check `check` is, if any: `check if`, one query, one predicate over
/// one variable, one expression of the documented form over that variable, no scope.
pub(super) fn documented(check: &builder::Check) -> Option<Documented> {
    let [query] = check.queries.as_slice() else {
        return None;
    };
    let ([predicate], [expression]) = (query.body.as_slice(), query.expressions.as_slice()) else {
        return None;
    };
    let [Term::Variable(variable)] = predicate.terms.as_slice() else {
        return None;
    };
    if check.kind != CheckKind::One || !query.head.terms.is_empty() || !query.scopes.is_empty() {
        return None;
    }
    let is = |term: &Term| matches!(term, Term::Variable(v) if v == variable);
    match (predicate.name.as_str(), expression.ops.as_slice()) {
        (
            "product",
            [Op::Value(Term::Set(products)), Op::Value(term), Op::Binary(Binary::Contains)],
        ) if is(term) && products.iter().all(|p| matches!(p, Term::Str(_))) => {
            Some(Documented::Products(products.len()))
        }
        (
            "quantity",
            [Op::Value(term), Op::Value(Term::Integer(max)), Op::Binary(Binary::LessOrEqual)],
        ) if is(term) => Some(Documented::MaxQuantity(*max)),
        ("time", [Op::Value(term), Op::Value(Term::Date(at)), Op::Binary(Binary::LessOrEqual)])
            if is(term) =>
        {
            Some(Documented::Expiry(*at))
        }
        _ => None,
    }
}

/// The earliest expiry of the documented `time` checks of all `blocks`, if any.
pub(super) fn expiry(blocks: &[BlockBuilder]) -> Option<u64> {
    blocks
        .iter()
        .flat_map(|block| &block.checks)
        .filter_map(|check| match documented(check) {
            Some(Documented::Expiry(at)) => Some(at),
            _ => None,
        })
        .min()
}

/// Refuses an expired token, then any block outside the vocabulary; returns the user of
/// the authority block.
pub(super) fn admit(blocks: &[BlockBuilder], now: SystemTime) -> Result<String, CapabilityError> {
    // Expiry first: an expired token is refused whatever else it holds.
    if let Some(expiry) = expiry(blocks) {
        if epoch_secs(now) > expiry {
            return Err(CapabilityError::Expired(render_date(expiry)));
        }
    }
    let (authority, attenuations) = blocks
        .split_first()
        .ok_or_else(|| CapabilityError::Unsupported("no authority block".into()))?;
    let user = authority_user(authority)?;
    for (index, block) in attenuations.iter().enumerate() {
        check_attenuation(index + 1, block)?;
    }
    Ok(user)
}

/// The user of an authority block as [`mint`] makes it: `user(<string>)`,
/// `right("order")`, at most one expiry check, nothing else.
pub(super) fn authority_user(block: &BlockBuilder) -> Result<String, CapabilityError> {
    let refuse = |why: String| Err(CapabilityError::Unsupported(format!("block 0 {why}")));
    if !block.rules.is_empty() {
        return refuse("holds rules".into());
    }
    if !block.scopes.is_empty() || block.context.is_some() {
        return refuse("holds a scope or context".into());
    }
    let mut user = None;
    let mut right = false;
    for fact in &block.facts {
        match (
            fact.predicate.name.as_str(),
            fact.predicate.terms.as_slice(),
        ) {
            ("user", [Term::Str(name)]) if user.is_none() => user = Some(name.clone()),
            ("right", [Term::Str(operation)]) if operation == ORDER_OPERATION && !right => {
                right = true
            }
            _ => {
                return refuse(format!(
                    "holds an unexpected fact: {}",
                    quote(&fact.to_string())
                ))
            }
        }
    }
    match block.checks.as_slice() {
        [] => {}
        [check] if matches!(documented(check), Some(Documented::Expiry(_))) => {}
        _ => return refuse("holds checks other than one expiry".into()),
    }
    match (user, right) {
        (Some(user), true) => Ok(user),
        _ => refuse(format!("lacks user(..) or right(\"{ORDER_OPERATION}\")")),
    }
}

/// Refuses an appended block that holds anything but a few documented checks.
pub(super) fn check_attenuation(index: usize, block: &BlockBuilder) -> Result<(), CapabilityError> {
    let refuse = |why: String| {
        Err(CapabilityError::Unsupported(format!(
            "block {index} {why}; appended blocks may only add checks on product, quantity or time"
        )))
    };
    if !block.facts.is_empty() {
        return refuse(format!("adds {} fact(s)", block.facts.len()));
    }
    if !block.rules.is_empty() {
        return refuse(format!("adds {} rule(s)", block.rules.len()));
    }
    if !block.scopes.is_empty() {
        return refuse("changes which blocks it trusts".into());
    }
    if block.context.is_some() {
        return refuse("carries a context".into());
    }
    if block.checks.len() > MAX_CHECKS_PER_BLOCK {
        return refuse(format!(
            "holds {} checks (at most {MAX_CHECKS_PER_BLOCK})",
            block.checks.len()
        ));
    }
    for check in &block.checks {
        match documented(check) {
            Some(Documented::Products(count)) if count > MAX_PRODUCTS_PER_CHECK => {
                return refuse(format!(
                    "lists {count} products in one check (at most {MAX_PRODUCTS_PER_CHECK})"
                ));
            }
            Some(_) => {}
            None => {
                return refuse(format!(
                    "holds a check of a form Sluice does not document: {}",
                    quote(&check.to_string())
                ))
            }
        }
    }
    Ok(())
}

/// `text`, shortened to [`QUOTED_CHECK_CHARS`] characters.
fn quote(text: &str) -> String {
    match text.char_indices().nth(QUOTED_CHECK_CHARS) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}
