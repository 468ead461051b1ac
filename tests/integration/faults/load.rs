//! The load generator and its ledger.
//!
//! Each request gets its own `Idempotency-Key` (a number `n`), and `n` also decides the order's
//! content: user `n % U`, then quantity and product from `n / U`. So every stored row names the
//! request it came from, whatever order id it got, and the ledger can tell, per request, whether
//! it was stored, stored twice, or stored although its last answer was a 503.
//!
//! A 503 (or no answer at all) is retried later with the same key, as a real client would,
//! except that one request in four gives up after a 503, so that orders "stored despite a
//! final 503" can be counted.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{Backend, TestTopology};

/// Products of the shipped catalogue; part of the request signature.
pub const PRODUCTS: [&str; 4] = ["widget", "gadget", "gizmo", "sprocket"];
/// Quantities 1..=MAX_QUANTITY pass validation; part of the request signature.
const MAX_QUANTITY: u64 = 1000;
/// Most attempts one key gets.
const MAX_ATTEMPTS: u32 = 12;

/// How one request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx with an order id.
    Accepted,
    /// 503: not acknowledged in time.
    Unavailable,
    /// 429: rate limited.
    Limited,
    /// The connection was refused (no process listening).
    Refused,
    /// No answer within the client's timeout.
    Hung,
    /// The connection broke mid-request (the process died).
    Broken,
    /// Any other status: a harness or Sluice error.
    Other(u16),
}

impl Outcome {
    fn retryable(self) -> bool {
        !matches!(self, Outcome::Accepted | Outcome::Other(_))
    }

    /// An HTTP answer (as opposed to no answer at all).
    pub fn answered(self) -> bool {
        matches!(
            self,
            Outcome::Accepted | Outcome::Unavailable | Outcome::Limited | Outcome::Other(_)
        )
    }
}

/// One request as sent.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub key: u64,
    pub started: Instant,
    pub elapsed: Duration,
    pub outcome: Outcome,
}

/// Everything known about one idempotency key.
#[derive(Debug, Default, Clone)]
pub struct KeyState {
    pub attempts: u32,
    /// Distinct order ids of its 2xx answers (more than one would break idempotency).
    pub ids: Vec<String>,
    /// `orders.raw` partition and offset of the first 2xx.
    pub raw: Option<(i64, i64)>,
    pub acked_at: Option<Instant>,
    pub last: Option<Outcome>,
}

/// The ledger of a load run.
#[derive(Debug, Default)]
pub struct Ledger {
    pub keys: HashMap<u64, KeyState>,
    pub attempts: Vec<Attempt>,
}

/// Knobs of one load run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub clients: usize,
    pub seed: u64,
    /// Distinguishes the keys of one run from another's.
    pub tag: String,
    pub order_base: String,
    pub request_timeout: Duration,
}

/// A running load generator.
pub struct Load {
    shared: Arc<Shared>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

struct Shared {
    config: LoadConfig,
    users: Vec<String>,
    tokens: HashMap<String, String>,
    client: reqwest::Client,
    next: AtomicU64,
    stop_new: AtomicBool,
    give_up_at: Mutex<Option<Instant>>,
    retries: Mutex<BinaryHeap<Reverse<(Instant, u64)>>>,
    in_flight: AtomicUsize,
    ledger: Mutex<Ledger>,
}

/// The request signature of key `n`: (user index, product index, quantity).
pub fn signature(n: u64, users: usize) -> (usize, usize, u64) {
    let users = users as u64;
    let rest = n / users;
    (
        (n % users) as usize,
        ((rest / MAX_QUANTITY) % PRODUCTS.len() as u64) as usize,
        1 + rest % MAX_QUANTITY,
    )
}

/// How many distinct keys `users` users allow.
pub fn capacity(users: usize) -> u64 {
    users as u64 * MAX_QUANTITY * PRODUCTS.len() as u64
}

/// The key that produced a stored row, if the row is one of ours.
pub fn key_of(users: &HashMap<String, usize>, row: &StoredRow) -> Option<u64> {
    let user = *users.get(&row.user)? as u64;
    let product = PRODUCTS.iter().position(|p| *p == row.product)? as u64;
    let quantity = u64::try_from(row.quantity).ok()?;
    if !(1..=MAX_QUANTITY).contains(&quantity) {
        return None;
    }
    let rest = product * MAX_QUANTITY + (quantity - 1);
    Some(rest * users.len() as u64 + user)
}

/// SplitMix64: a cheap deterministic mix for per-key decisions.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Load {
    /// Starts `config.clients` clients posting orders for `users` (with their `tokens`).
    pub fn start(config: LoadConfig, users: Vec<String>, tokens: HashMap<String, String>) -> Self {
        let shared = Arc::new(Shared {
            client: reqwest::Client::builder()
                .timeout(config.request_timeout)
                .pool_max_idle_per_host(config.clients)
                .build()
                .unwrap(),
            config,
            users,
            tokens,
            next: AtomicU64::new(0),
            stop_new: AtomicBool::new(false),
            give_up_at: Mutex::new(None),
            retries: Mutex::new(BinaryHeap::new()),
            in_flight: AtomicUsize::new(0),
            ledger: Mutex::new(Ledger::default()),
        });
        let workers = (0..shared.config.clients)
            .map(|_| tokio::spawn(client_loop(shared.clone())))
            .collect();
        Load { shared, workers }
    }

    /// Keys acknowledged so far.
    pub fn acknowledged(&self) -> usize {
        let ledger = self.shared.ledger.lock().unwrap();
        ledger.keys.values().filter(|k| !k.ids.is_empty()).count()
    }

    /// Order ids (hex, no dashes) of the keys acknowledged up to now.
    pub fn acknowledged_ids(&self) -> Vec<String> {
        let ledger = self.shared.ledger.lock().unwrap();
        ledger
            .keys
            .values()
            .filter_map(|k| k.ids.first())
            .map(|id| id.replace('-', ""))
            .collect()
    }

    /// Waits until at least `count` more keys than now are acknowledged, at most `limit`.
    pub async fn wait_for_more(
        &self,
        count: usize,
        limit: Duration,
        what: &str,
    ) -> Result<(), String> {
        let target = self.acknowledged() + count;
        let deadline = Instant::now() + limit;
        while self.acknowledged() < target {
            if Instant::now() >= deadline {
                return Err(format!(
                    "no {count} more orders acknowledged within {limit:?} ({what}); {} in all so far",
                    self.acknowledged()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Stops issuing new keys, retries what failed until `retry_for` has passed, and returns
    /// the ledger.
    pub async fn finish(self, retry_for: Duration) -> Ledger {
        self.shared.stop_new.store(true, Ordering::SeqCst);
        *self.shared.give_up_at.lock().unwrap() = Some(Instant::now() + retry_for);
        let limit = retry_for + self.shared.config.request_timeout + Duration::from_secs(30);
        for worker in self.workers {
            tokio::time::timeout(limit, worker)
                .await
                .expect("a load client did not stop")
                .expect("a load client panicked");
        }
        std::mem::take(&mut *self.shared.ledger.lock().unwrap())
    }
}

/// One client: new keys while the run lasts, due retries first.
async fn client_loop(shared: Arc<Shared>) {
    let users = shared.users.len();
    loop {
        let now = Instant::now();
        let due = {
            let mut queue = shared.retries.lock().unwrap();
            match queue.peek() {
                Some(Reverse((at, _))) if *at <= now => {
                    shared.in_flight.fetch_add(1, Ordering::SeqCst);
                    queue.pop().map(|Reverse((_, n))| n)
                }
                _ => None,
            }
        };
        let key = match due {
            Some(n) => n,
            None if !shared.stop_new.load(Ordering::SeqCst) => {
                shared.in_flight.fetch_add(1, Ordering::SeqCst);
                let n = shared.next.fetch_add(1, Ordering::SeqCst);
                if n >= capacity(users) {
                    shared.in_flight.fetch_sub(1, Ordering::SeqCst);
                    shared.stop_new.store(true, Ordering::SeqCst);
                    eprintln!(
                        "load: all {} request signatures used; no new orders",
                        capacity(users)
                    );
                    continue;
                }
                n
            }
            None => {
                let give_up = shared
                    .give_up_at
                    .lock()
                    .unwrap()
                    .is_some_and(|at| now >= at);
                let idle = shared.retries.lock().unwrap().is_empty()
                    && shared.in_flight.load(Ordering::SeqCst) == 0;
                if give_up || idle {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let started = Instant::now();
        let (outcome, accepted) = send(&shared, key).await;
        let elapsed = started.elapsed();
        let retry_at = {
            let mut ledger = shared.ledger.lock().unwrap();
            ledger.attempts.push(Attempt {
                key,
                started,
                elapsed,
                outcome,
            });
            let state = ledger.keys.entry(key).or_default();
            state.attempts += 1;
            state.last = Some(outcome);
            if let Some((id, raw)) = accepted {
                if !state.ids.contains(&id) {
                    state.ids.push(id);
                }
                if state.raw.is_none() {
                    state.raw = raw;
                    state.acked_at = Some(Instant::now());
                }
            }
            // One key in four gives up after a 503: a client that never retries. A request
            // without any answer is always retried (its client cannot know what happened).
            let gives_up =
                outcome == Outcome::Unavailable && mix(shared.config.seed ^ key).is_multiple_of(4);
            (outcome.retryable() && !gives_up && state.attempts < MAX_ATTEMPTS).then(|| {
                let backoff = 250u64 << state.attempts.min(4);
                Instant::now() + Duration::from_millis(backoff)
            })
        };
        if let Some(at) = retry_at {
            shared.retries.lock().unwrap().push(Reverse((at, key)));
        }
        shared.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Posts the order of key `n`; on 2xx returns its id and `orders.raw` position.
async fn send(shared: &Shared, n: u64) -> (Outcome, Option<(String, Option<(i64, i64)>)>) {
    let (user, product, quantity) = signature(n, shared.users.len());
    let user = &shared.users[user];
    let sent = shared
        .client
        .post(format!("{}/order", shared.config.order_base))
        .bearer_auth(&shared.tokens[user])
        .header(
            "Idempotency-Key",
            format!("{:x}-{}-{n}", shared.config.seed, shared.config.tag),
        )
        .json(&serde_json::json!({ "userId": user, "product": PRODUCTS[product], "quantity": quantity }))
        .send()
        .await;
    let response = match sent {
        Ok(response) => response,
        Err(error) if error.is_timeout() => return (Outcome::Hung, None),
        Err(error) if error.is_connect() => {
            // Nothing listens (the process is down): do not spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
            return (Outcome::Refused, None);
        }
        Err(_) => return (Outcome::Broken, None),
    };
    let status = response.status().as_u16();
    match status {
        200..=299 => match response.json::<serde_json::Value>().await {
            Ok(body) => {
                let id = body["orderId"].as_str().unwrap_or_default().to_string();
                if id.is_empty() {
                    return (Outcome::Other(status), None);
                }
                let raw = body["partition"].as_i64().zip(body["offset"].as_i64());
                (Outcome::Accepted, Some((id, raw)))
            }
            // The 2xx was sent but its body cut off: the client cannot know the id.
            Err(_) => (Outcome::Broken, None),
        },
        503 => (Outcome::Unavailable, None),
        429 => (Outcome::Limited, None),
        other => (Outcome::Other(other), None),
    }
}

/// One stored order row.
#[derive(Debug, Clone)]
pub struct StoredRow {
    /// Lower-case hex, no dashes.
    pub id: String,
    pub user: String,
    pub product: String,
    pub quantity: i64,
    pub shard: usize,
}

/// Where the stored orders are: the backend and the four shard URLs.
#[derive(Debug, Clone)]
pub struct Shards {
    pub backend: Backend,
    pub urls: Vec<String>,
}

impl Shards {
    /// The shards of `test`.
    pub fn of(test: &TestTopology) -> Self {
        Shards {
            backend: test.backend,
            urls: test
                .topology()
                .shards
                .iter()
                .map(|s| s.url.clone())
                .collect(),
        }
    }
}

/// Every stored order of the shards; an error when a shard cannot be read within `limit`
/// (a missing table or database reads as no rows).
pub async fn stored_rows(shards: &Shards, limit: Duration) -> Result<Vec<StoredRow>, String> {
    let mut rows = Vec::new();
    for (shard, url) in shards.urls.iter().enumerate() {
        let read = async {
            match shards.backend {
                Backend::Services => mysql_rows(url).await,
                Backend::Embedded => sqlite_rows(url.clone()).await,
            }
        };
        let found = tokio::time::timeout(limit, read)
            .await
            .map_err(|_| format!("shard{shard} did not answer within {limit:?}"))?
            .map_err(|e| format!("shard{shard}: {e}"))?;
        rows.extend(
            found
                .into_iter()
                .map(|(id, user, product, quantity)| StoredRow {
                    id,
                    user,
                    product,
                    quantity,
                    shard,
                }),
        );
    }
    Ok(rows)
}

type RowTuple = (String, String, String, i64);

async fn mysql_rows(url: &str) -> Result<Vec<RowTuple>, String> {
    use mysql_async::prelude::Queryable;
    let missing = |e: &mysql_async::Error| {
        // 1049: unknown database, 1146: no such table (the sink has not started yet).
        matches!(e, mysql_async::Error::Server(s) if s.code == 1049 || s.code == 1146)
    };
    let opts = mysql_async::Opts::from_url(url).map_err(|e| e.to_string())?;
    let mut conn = match mysql_async::Conn::new(opts).await {
        Ok(conn) => conn,
        Err(e) if missing(&e) => return Ok(Vec::new()),
        Err(e) => return Err(e.to_string()),
    };
    let rows = conn
        .query("SELECT LOWER(HEX(order_id)), user_id, product, quantity FROM orders")
        .await;
    let _ = conn.disconnect().await;
    match rows {
        Ok(rows) => Ok(rows),
        Err(e) if missing(&e) => Ok(Vec::new()),
        Err(e) => Err(e.to_string()),
    }
}

async fn sqlite_rows(url: String) -> Result<Vec<RowTuple>, String> {
    let path = std::path::PathBuf::from(url.strip_prefix("sqlite://").unwrap_or(&url));
    tokio::task::spawn_blocking(move || {
        if !path.exists() {
            return Ok(Vec::new());
        }
        let conn = rusqlite::Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .map_err(|e| e.to_string())?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(|e| e.to_string())?;
        let mut statement = match conn
            .prepare("SELECT lower(hex(order_id)), user_id, product, quantity FROM orders")
        {
            Ok(statement) => statement,
            Err(e) if e.to_string().contains("no such table") => return Ok(Vec::new()),
            Err(e) => return Err(e.to_string()),
        };
        let rows = statement
            .query_map([], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
            })
            .map_err(|e| e.to_string())?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// What the shards hold compared with what the ledger says.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// Keys answered 2xx.
    pub acknowledged: usize,
    /// Acknowledged keys stored under their acknowledged id.
    pub stored: usize,
    /// Acknowledged keys not stored under their acknowledged id.
    pub lost: Vec<LostOrder>,
    /// Rows beyond the first for a key (any key).
    pub duplicated: usize,
    /// Keys whose last answer was a 503 (or 429).
    pub final_503: usize,
    /// ... of which stored anyway.
    pub stored_despite_503: usize,
    /// Keys that never got any answer on their last attempt (process killed, no listener).
    pub unanswered: usize,
    /// ... of which stored anyway.
    pub stored_unanswered: usize,
    /// Keys answered with two different order ids.
    pub conflicting_ids: usize,
    /// Stored rows that match no key of the ledger.
    pub foreign_rows: usize,
    /// Answers with an unexpected status (not 2xx, 429 or 503).
    pub unexpected: Vec<u16>,
}

/// An acknowledged order that is not stored.
#[derive(Debug, Clone)]
pub struct LostOrder {
    pub key: u64,
    pub id: String,
    pub raw: Option<(i64, i64)>,
    /// Ids stored for this key instead (if any).
    pub stored_as: Vec<String>,
}

/// Compares `ledger` with `rows`.
pub fn tally(ledger: &Ledger, rows: &[StoredRow], users: &[String]) -> Tally {
    let index: HashMap<String, usize> = users
        .iter()
        .enumerate()
        .map(|(i, u)| (u.clone(), i))
        .collect();
    let mut by_key: HashMap<u64, Vec<&StoredRow>> = HashMap::new();
    let mut tally = Tally::default();
    for row in rows {
        match key_of(&index, row) {
            Some(key) if ledger.keys.contains_key(&key) => by_key.entry(key).or_default().push(row),
            _ => tally.foreign_rows += 1,
        }
    }
    for (key, state) in &ledger.keys {
        let stored = by_key.get(key).map(Vec::as_slice).unwrap_or(&[]);
        tally.duplicated += stored.len().saturating_sub(1);
        if let Some(id) = state.ids.first() {
            tally.acknowledged += 1;
            if state.ids.len() > 1 {
                tally.conflicting_ids += 1;
            }
            let id = id.replace('-', "");
            if stored.iter().any(|row| row.id == id) {
                tally.stored += 1;
            } else {
                tally.lost.push(LostOrder {
                    key: *key,
                    id,
                    raw: state.raw,
                    stored_as: stored
                        .iter()
                        .map(|r| format!("{}@shard{}", r.id, r.shard))
                        .collect(),
                });
            }
        } else if matches!(
            state.last,
            Some(Outcome::Unavailable) | Some(Outcome::Limited)
        ) {
            tally.final_503 += 1;
            tally.stored_despite_503 += usize::from(!stored.is_empty());
        } else if let Some(Outcome::Other(_)) = state.last {
            // Counted below from the attempts.
        } else {
            tally.unanswered += 1;
            tally.stored_unanswered += usize::from(!stored.is_empty());
        }
    }
    for attempt in &ledger.attempts {
        if let Outcome::Other(status) = attempt.outcome {
            if !tally.unexpected.contains(&status) {
                tally.unexpected.push(status);
            }
        }
    }
    tally.lost.sort_by_key(|l| l.key);
    tally
}
