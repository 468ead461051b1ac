//! `[catalog]` and product prices for the stages: a [`CatalogSource`] behind a `moka` cache.
//!
//! The shipped source is the `[catalog]` table of `topology.toml`; a source backed by a
//! pricing service or database implements the same trait and gets the same cache.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use moka::sync::Cache;
use serde::{Deserialize, Serialize};
use sluice_core::topology::Issues;

/// `[catalog]`: product code → price and currency.
pub type Catalog = BTreeMap<String, CatalogEntry>;

/// `[catalog.<product>]`: one product.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogEntry {
    /// Unit price as a decimal string with at most two decimals, e.g. `"19.99"`.
    pub price: String,
    /// ISO 4217 currency code, e.g. `"EUR"`.
    pub currency: String,
}

/// Checks every entry of `[catalog]`.
pub fn validate(catalog: &Catalog, issues: &mut Issues) {
    for (product, entry) in catalog {
        if let Err(message) = parse_price_minor(&entry.price) {
            issues.push(format!("catalog.\"{product}\".price"), message);
        }
        if entry.currency.len() != 3 || !entry.currency.chars().all(|c| c.is_ascii_uppercase()) {
            issues.push(
                format!("catalog.\"{product}\".currency"),
                format!(
                    "{:?} is not a three-letter ISO 4217 code such as \"EUR\"",
                    entry.currency
                ),
            );
        }
    }
}

/// Parses a decimal price such as `"19.99"` into minor units (`1999`).
pub fn parse_price_minor(price: &str) -> Result<i64, String> {
    let invalid =
        || format!("price {price:?} must be a decimal with at most two decimals, e.g. \"19.99\"");
    let (whole, fraction) = price.trim().split_once('.').unwrap_or((price.trim(), ""));
    if whole.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || fraction.len() > 2
        || !fraction.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(invalid());
    }
    let whole: i64 = whole.parse().map_err(|_| invalid())?;
    let cents: i64 = format!("{fraction:0<2}").parse().map_err(|_| invalid())?;
    whole
        .checked_mul(100)
        .and_then(|w| w.checked_add(cents))
        .ok_or_else(invalid)
}

/// A product's price.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Price {
    /// Unit price in minor units (cents).
    pub unit_minor: i64,
    /// ISO 4217 currency code.
    pub currency: String,
}

/// Where prices come from.
pub trait CatalogSource: Send + Sync {
    /// The price of `product`, or `None` when it is not sold.
    fn price(&self, product: &str) -> Option<Price>;
}

/// The `[catalog]` table of the topology.
pub struct TopologyCatalog {
    prices: HashMap<String, Price>,
}

impl TopologyCatalog {
    /// Reads the table; entries with an invalid price (rejected by `sluice check`) are skipped.
    pub fn new(entries: &BTreeMap<String, CatalogEntry>) -> Self {
        let prices = entries
            .iter()
            .filter_map(|(product, entry)| {
                let unit_minor = parse_price_minor(&entry.price).ok()?;
                Some((
                    product.clone(),
                    Price {
                        unit_minor,
                        currency: entry.currency.clone(),
                    },
                ))
            })
            .collect();
        TopologyCatalog { prices }
    }
}

impl CatalogSource for TopologyCatalog {
    fn price(&self, product: &str) -> Option<Price> {
        self.prices.get(product).cloned()
    }
}

/// A [`CatalogSource`] behind a bounded, time-limited cache (misses are cached too).
pub struct CachedCatalog {
    source: Arc<dyn CatalogSource>,
    cache: Cache<String, Option<Price>>,
}

impl CachedCatalog {
    /// Caches up to 100 000 products for 60 seconds each.
    pub fn new(source: Arc<dyn CatalogSource>) -> Self {
        Self::with_limits(source, 100_000, Duration::from_secs(60))
    }

    /// Caches up to `capacity` products for `ttl` each.
    pub fn with_limits(source: Arc<dyn CatalogSource>, capacity: u64, ttl: Duration) -> Self {
        CachedCatalog {
            source,
            cache: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
        }
    }

    /// The price of `product`.
    pub fn price(&self, product: &str) -> Option<Price> {
        if let Some(hit) = self.cache.get(product) {
            return hit;
        }
        let price = self.source.price(product);
        self.cache.insert(product.to_string(), price.clone());
        price
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    struct Counting(AtomicUsize);

    impl CatalogSource for Counting {
        fn price(&self, product: &str) -> Option<Price> {
            self.0.fetch_add(1, Ordering::SeqCst);
            (product == "widget").then(|| Price {
                unit_minor: 999,
                currency: "EUR".into(),
            })
        }
    }

    #[test]
    fn cache_answers_repeat_lookups_without_the_source() {
        let source = Arc::new(Counting(AtomicUsize::new(0)));
        let catalog = CachedCatalog::new(source.clone());
        for _ in 0..5 {
            assert_eq!(catalog.price("widget").unwrap().unit_minor, 999);
            assert_eq!(catalog.price("nope"), None);
        }
        assert_eq!(source.0.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn prices_parse_exactly() {
        assert_eq!(parse_price_minor("19.99"), Ok(1999));
        assert_eq!(parse_price_minor("5"), Ok(500));
        assert_eq!(parse_price_minor("0.5"), Ok(50));
        assert!(parse_price_minor("1.999").is_err());
        assert!(parse_price_minor("-1").is_err());
        assert!(parse_price_minor("abc").is_err());
    }

    #[test]
    fn topology_catalog_reads_decimal_prices() {
        let mut entries = BTreeMap::new();
        entries.insert(
            "gadget".to_string(),
            CatalogEntry {
                price: "24.50".into(),
                currency: "EUR".into(),
            },
        );
        let catalog = TopologyCatalog::new(&entries);
        assert_eq!(
            catalog.price("gadget"),
            Some(Price {
                unit_minor: 2450,
                currency: "EUR".into()
            })
        );
    }
}
