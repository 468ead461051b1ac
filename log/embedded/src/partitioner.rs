//! Kafka's default partitioner for keyed records: `(murmur2(key) & 0x7fffffff) % partitions`.
//!
//! The embedded log uses the same function as the Java client and librdkafka's
//! `murmur2_random`, so a key lands in the same partition on either backend.

/// Kafka's murmur2 hash of `data` (seed `0x9747b28c`).
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let length = data.len();
    let mut h: u32 = SEED ^ (length as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The partition of `key` among `partitions` (empty keys go to partition 0).
pub fn partition_for(key: &[u8], partitions: u32) -> i32 {
    if key.is_empty() || partitions == 0 {
        return 0;
    }
    ((murmur2(key) & 0x7fff_ffff) % partitions) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_kafka_reference_values() {
        // Values from Kafka's own UtilsTest (org.apache.kafka.common.utils.Utils.murmur2).
        assert_eq!(murmur2(b"21") as i32, -973_932_308);
        assert_eq!(murmur2(b"foobar") as i32, -790_332_482);
        assert_eq!(murmur2(b"a-little-bit-long-string") as i32, -985_981_536);
        assert_eq!(
            murmur2(b"a-little-bit-longer-string") as i32,
            -1_486_304_829
        );
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") as i32,
            -58_897_971
        );
        assert_eq!(murmur2(b"abc") as i32, 479_470_107);
    }

    #[test]
    fn partitions_are_in_range_and_stable() {
        for n in 0..1000 {
            let key = format!("user-{n}");
            let p = partition_for(key.as_bytes(), 4);
            assert!((0..4).contains(&p));
            assert_eq!(p, partition_for(key.as_bytes(), 4));
        }
        assert_eq!(partition_for(b"", 4), 0);
    }
}
