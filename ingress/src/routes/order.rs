//! `POST /order` (accept an order once the log has it) and `GET /order/{id}` (its fate).

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;
use sluice_core::log::{LogError, OutRecord};
use sluice_core::lookup::OrderStatus;
use sluice_core::order::{now_ms, RawOrder, HEADER_TRACEPARENT};
use sluice_core::telemetry;
use sluice_core::trace::{self, FinishedSpan, Hop, SpanKind, TraceParent};
use uuid::Uuid;
use warp::http::{HeaderMap, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::Reply;

use crate::capability::OrderRequestFacts;
use crate::error::ApiError;
use crate::{Principal, State};

/// The order request body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct OrderRequest {
    user_id: String,
    product: String,
    quantity: i64,
}

/// The client's trace context: the request's one `traceparent` header if it is valid per W3C
/// Trace Context level 1; `None` (a new trace is started) if it is missing, invalid or repeated.
fn client_traceparent(headers: &HeaderMap) -> Option<TraceParent> {
    let mut values = headers.get_all(HEADER_TRACEPARENT).iter();
    match (values.next(), values.next()) {
        (Some(value), None) => value.to_str().ok().and_then(TraceParent::parse),
        _ => None,
    }
}

/// Accepts one order from an authenticated `principal` (whose client address was charged
/// already, before authentication): rate-limit per user, parse, check that the `userId` is the
/// principal's, authorize a capability token's checks, append, answer 202 once durable.
///
/// The order's trace continues the request's `traceparent` (or starts here): the record
/// carries the ingress's `traceparent` header, and the 202 answers with it, so the client
/// learns the trace id.
pub async fn create(
    state: &State,
    principal: &Principal,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    let hop = Hop::after(client_traceparent(headers));
    let started = trace::exporter().map(|_| trace::now_unix_nanos());
    let mut order_id = None;
    let answer = accept(state, principal, headers, body, &hop, &mut order_id).await;
    if let (Some(exporter), Some(started)) = (trace::exporter(), started) {
        let status = match &answer {
            Ok(_) => StatusCode::ACCEPTED,
            Err(error) => error.status,
        };
        let mut attributes = vec![("http.response.status_code", status.as_str().to_string())];
        if let Some(order_id) = order_id {
            attributes.push(("sluice.order_id", order_id.to_string()));
        }
        exporter.export(FinishedSpan {
            hop,
            name: "POST /order".into(),
            kind: SpanKind::Server,
            start_unix_nanos: started,
            end_unix_nanos: trace::now_unix_nanos(),
            attributes,
        });
    }
    let mut response = answer?;
    if let Ok(value) = HeaderValue::from_str(&hop.traceparent().header()) {
        response.headers_mut().insert(HEADER_TRACEPARENT, value);
    }
    Ok(response)
}

/// [`create`]'s work, in the trace `hop`; sets `order_id` once the order has one.
async fn accept(
    state: &State,
    principal: &Principal,
    headers: &HeaderMap,
    body: &[u8],
    hop: &Hop,
    order_id_out: &mut Option<Uuid>,
) -> Result<Response, ApiError> {
    state
        .limits
        .orders_per_principal
        .check(&principal.user().to_string())?;
    let request: OrderRequest = crate::body::parse_json(body)?;
    if request.user_id != principal.user() {
        // Not repeated: the value is the client's, of any length.
        return Err(ApiError::forbidden(
            "userId is not the token's user; send the user the token was issued to",
        ));
    }
    if let Principal::Capability(capability) = principal {
        let facts = OrderRequestFacts {
            user_id: request.user_id.clone(),
            product: request.product.clone(),
            quantity: request.quantity,
        };
        state.authorize_capability(capability, facts).await?;
    }
    let idempotent = state
        .idempotency
        .entry(principal.user(), headers, body, now_ms())
        .await?;
    // A keyed order's id is derived from the user and the key, so a retry reaching another or a
    // restarted process appends the same id and its shard stores it once; an order without a
    // key gets a time-ordered UUIDv7 (much cheaper to insert into InnoDB).
    let (order_id, received_at_ms) = match &idempotent {
        Some(entry) => (entry.order_id, entry.received_at_ms),
        None => (Uuid::now_v7(), now_ms()),
    };
    *order_id_out = Some(order_id);
    let order = RawOrder {
        order_id,
        user_id: request.user_id,
        product: request.product,
        quantity: request.quantity,
        received_at_ms,
    };
    let answer = match &idempotent {
        // Concurrent requests with one key wait for each other: one append, one answer.
        Some(entry) => entry
            .answer
            .get_or_try_init(|| append(state, &order, hop))
            .await?
            .clone(),
        None => append(state, &order, hop).await?,
    };
    Ok(warp::reply::with_status(warp::reply::json(&answer), StatusCode::ACCEPTED).into_response())
}

/// Appends `order` to the orders topic, with the `traceparent` of `hop`, and returns the 202
/// body once the log acknowledged it.
async fn append(state: &State, order: &RawOrder, hop: &Hop) -> Result<serde_json::Value, ApiError> {
    let payload = serde_json::to_vec(order).map_err(|e| ApiError::unavailable(e.to_string()))?;
    let timeout = Duration::from_millis(state.config.ack_timeout_ms);
    let record = OutRecord::new(order.user_id.as_bytes(), payload)
        .with_header(HEADER_TRACEPARENT, hop.traceparent().header());
    let delivery = state
        .log
        .try_send(&state.config.orders_topic, record, timeout)
        .await
        .map_err(|error| {
            if let LogError::Overloaded(reason) = &error {
                // Refused before it was taken: nothing was stored. Refusals come in floods, so
                // they are counted by the log's metrics rather than logged one by one.
                tracing::debug!(
                    %error, trace.id = %hop.trace_id, span.id = %hop.span_id, order_id = %order.order_id,
                    "log has no room; answering 503"
                );
                return ApiError::unavailable(format!(
                    "the event log has no room for new orders now ({reason}); the order was not taken: retry after Retry-After"
                ));
            }
            tracing::warn!(
                %error, trace.id = %hop.trace_id, span.id = %hop.span_id, order_id = %order.order_id,
                "order not acknowledged; answering 503"
            );
            let why = match error {
                LogError::Timeout(_) => "the event log did not acknowledge the order in time",
                _ => "the event log is not accepting orders",
            };
            ApiError::unavailable(format!(
                "{why}; it may not be stored: retry with the same Idempotency-Key, which cannot create a second order"
            ))
        })?;
    accepted_counter().increment(1);
    tracing::debug!(
        trace.id = %hop.trace_id, span.id = %hop.span_id, order_id = %order.order_id,
        partition = delivery.partition, offset = delivery.offset,
        "order accepted"
    );
    Ok(json!({
        "orderId": order.order_id,
        "status": "accepted",
        "userId": order.user_id,
        "receivedAtMs": order.received_at_ms,
        "partition": delivery.partition,
        "offset": delivery.offset,
    }))
}

/// Reports one of `principal`'s orders: stored (with the row), rejected (with the reason),
/// pending (recent and not yet anywhere), or 404.
pub async fn status(state: &State, principal: &Principal, id: &str) -> Result<Response, ApiError> {
    if matches!(principal, Principal::Capability(_)) {
        // Capability tokens grant placing orders under their checks, nothing more.
        return Err(ApiError::forbidden(
            "capability tokens can only place orders; read orders with a token from POST /login",
        ));
    }
    state
        .limits
        .orders_per_principal
        .check(&principal.user().to_string())?;
    let order_id = Uuid::parse_str(id).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_order_id",
            format!("{id:?} is not an order id (a UUID)"),
        )
    })?;
    let timeout = Duration::from_millis(state.config.lookup_timeout_ms);
    let found = tokio::time::timeout(timeout, state.lookup.find(principal.user(), order_id))
        .await
        .map_err(|_| {
            tracing::warn!(
                limit_ms = state.config.lookup_timeout_ms,
                "order lookup timed out: the user's shard did not answer"
            );
            ApiError::unavailable("the order store did not answer in time; try again")
        })?
        .map_err(|error| {
            tracing::warn!(%error, "order lookup failed");
            ApiError::unavailable("the order store cannot be reached; try again")
        })?;
    let body = match found {
        OrderStatus::Stored { order } => {
            json!({ "orderId": order_id, "status": "stored", "order": order })
        }
        OrderStatus::Rejected { stage, reason } => {
            json!({ "orderId": order_id, "status": "rejected", "stage": stage, "reason": reason })
        }
        OrderStatus::Unknown
            if is_recent(
                order_id,
                state.idempotency.received_at_ms(order_id).await,
                state.config.pending_window_secs,
            ) =>
        {
            json!({ "orderId": order_id, "status": "pending" })
        }
        OrderStatus::Unknown => {
            let message = if order_id.get_version() == Some(uuid::Version::Custom) {
                "no such order among yours (an order placed with an Idempotency-Key reads as \
                 unknown to other Sluice processes than the one that accepted it until it is \
                 stored: ask again later)"
            } else {
                "no such order among yours"
            };
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "order_not_found",
                message,
            ));
        }
    };
    Ok(warp::reply::json(&body).into_response())
}

/// Whether the order was received within the last `window_secs`: by the time embedded in a
/// UUIDv7 (an order without a key), or else by `keyed_received_at_ms`, when this process
/// remembers receiving the keyed order (a derived id carries no time; a keyed order that another
/// or an earlier process accepted reads as unknown until it is stored).
fn is_recent(order_id: Uuid, keyed_received_at_ms: Option<i64>, window_secs: u64) -> bool {
    let received_secs = match (order_id.get_timestamp(), keyed_received_at_ms) {
        (Some(timestamp), _) => timestamp.to_unix().0 as i64,
        (None, Some(ms)) => ms / 1000,
        (None, None) => return false,
    };
    let now = now_ms() / 1000;
    received_secs <= now + 60 && (now - received_secs) <= window_secs as i64
}

/// `sluice_orders_accepted_total`, registered on first use (the ingress does so when it is
/// built, so the counter has a series from start-up).
pub(crate) fn accepted_counter() -> &'static metrics::Counter {
    static ACCEPTED: std::sync::OnceLock<metrics::Counter> = std::sync::OnceLock::new();
    ACCEPTED.get_or_init(|| metrics::counter!(telemetry::ORDERS_ACCEPTED))
}

#[cfg(test)]
mod fuzz {
    //! Property tests: any body gets a parsed order or a 400/422, never a panic.
    use proptest::prelude::*;

    use super::OrderRequest;
    use crate::body::parse_json;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_are_an_order_or_a_client_error(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Err(error) = parse_json::<OrderRequest>(&bytes) {
                prop_assert!(matches!(error.status.as_u16(), 400 | 422), "{}", error.status);
            }
        }

        #[test]
        fn json_shaped_noise_is_an_order_or_a_client_error(
            user in "\\PC{0,40}", product in "\\PC{0,40}", quantity in any::<i64>(), extra in proptest::option::of("[a-z]{1,8}"),
        ) {
            let mut body = serde_json::json!({ "userId": user, "product": product, "quantity": quantity });
            if let Some(extra) = extra {
                body[extra] = serde_json::Value::Bool(true);
            }
            let bytes = serde_json::to_vec(&body).unwrap();
            match parse_json::<OrderRequest>(&bytes) {
                Ok(order) => {
                    prop_assert_eq!(order.user_id, user);
                    prop_assert_eq!(order.quantity, quantity);
                }
                Err(error) => prop_assert_eq!(error.status.as_u16(), 422),
            }
        }
    }
}
