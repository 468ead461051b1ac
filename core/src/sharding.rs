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

    /// Buckets computed once with XXH3-64 (seed 0) and written down. If one of these changes,
    /// every stored order would belong to another shard: do not update them, fix the hash.
    /// The keys cover every input-length path of XXH3 (0, 1-3, 4-8, 9-16, 17-128, 129-240 and
    /// over 240 bytes), non-ASCII UTF-8 and whitespace.
    #[test]
    fn buckets_are_pinned() {
        let long = "u".repeat(1000);
        let (hundred, two_hundred) = ("o".repeat(100), "m".repeat(200));
        let user_300 = "user-".repeat(60);
        // (key, bucket among 4, 16, 256, 1024 and 65536 buckets)
        let pinned: [(&str, [u32; 5]); 13] = [
            ("", [2, 2, 194, 194, 38082]),
            ("bob", [1, 5, 229, 229, 47333]),
            ("alice", [0, 0, 176, 688, 5808]),
            ("user0", [3, 3, 83, 851, 34643]),
            ("user-4711", [1, 1, 177, 177, 60593]),
            ("\u{c5}lesund-\u{ff}", [0, 4, 164, 676, 8868]),
            ("\u{7528}\u{6237}", [3, 15, 111, 111, 32879]),
            ("\u{1f469}\u{200d}\u{1f4bb}", [3, 11, 27, 283, 36123]),
            ("a b\tc", [0, 4, 180, 180, 21684]),
            (&hundred, [1, 13, 29, 29, 44061]),
            (&two_hundred, [0, 8, 248, 760, 8952]),
            (&user_300, [0, 8, 232, 488, 26088]),
            (&long, [0, 12, 28, 284, 24860]),
        ];
        for (key, buckets) in pinned {
            for (count, bucket) in [4, 16, 256, 1024, 65536].into_iter().zip(buckets) {
                assert_eq!(
                    bucket_of(key, count),
                    bucket,
                    "bucket of {key:?} among {count} moved"
                );
            }
            assert_eq!(bucket_of(key, 1), 0);
        }
        // The XXH3-64 of the empty input is the one its specification publishes.
        assert_eq!(xxhash_rust::xxh3::xxh3_64(b""), 0x2d06_8005_38d3_94c2);
    }

    /// The shipped topology's layout (256 buckets, four shards of 64): pinned users, pinned
    /// shards.
    #[test]
    fn shipped_layout_puts_users_on_pinned_shards() {
        let ranges = ["0-63", "64-127", "128-191", "192-255"];
        let shards: Vec<_> = ranges
            .iter()
            .enumerate()
            .map(|(i, r)| {
                (
                    format!("shard{i}"),
                    BucketRange::try_from(r.to_string()).unwrap(),
                )
            })
            .collect();
        let map = ShardMap::new(256, &shards).unwrap();
        for (user, bucket, shard) in [
            ("", 194, "shard3"),
            ("alice", 176, "shard2"),
            ("bob", 229, "shard3"),
            ("user0", 83, "shard1"),
            ("\u{7528}\u{6237}", 111, "shard1"),
            ("\u{1f469}\u{200d}\u{1f4bb}", 27, "shard0"),
        ] {
            assert_eq!(map.bucket(user), bucket, "{user:?}");
            assert_eq!(map.shard_name(map.bucket(user)), shard, "{user:?}");
        }
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
