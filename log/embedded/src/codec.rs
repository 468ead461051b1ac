//! The on-disk form of one record: a small length-prefixed binary layout.
//!
//! `version:u8 | timestamp_ms:i64 | key_len:u32 | key | payload_len:u32 | payload |
//!  header_count:u16 | (name_len:u16 | name | value_len:u32 | value)*`, integers big-endian.

/// Layout version written by this code.
const VERSION: u8 = 1;

/// A record as stored: everything but its position, which is its key in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// Append time (ms since the Unix epoch).
    pub timestamp_ms: i64,
    /// Partitioning key.
    pub key: Vec<u8>,
    /// Body.
    pub payload: Vec<u8>,
    /// Headers.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Encodes `record`.
pub fn encode(record: &StoredRecord) -> Vec<u8> {
    let headers_len: usize = record
        .headers
        .iter()
        .map(|(n, v)| 6 + n.len() + v.len())
        .sum();
    let mut out =
        Vec::with_capacity(1 + 8 + 8 + record.key.len() + record.payload.len() + 2 + headers_len);
    out.push(VERSION);
    out.extend_from_slice(&record.timestamp_ms.to_be_bytes());
    out.extend_from_slice(&(record.key.len() as u32).to_be_bytes());
    out.extend_from_slice(&record.key);
    out.extend_from_slice(&(record.payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&record.payload);
    out.extend_from_slice(&(record.headers.len() as u16).to_be_bytes());
    for (name, value) in &record.headers {
        out.extend_from_slice(&(name.len() as u16).to_be_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend_from_slice(value);
    }
    out
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < n {
            return None;
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Some(head)
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn i64(&mut self) -> Option<i64> {
        self.take(8)
            .map(|b| i64::from_be_bytes(b.try_into().unwrap_or([0; 8])))
    }
}

/// Decodes a stored record; `None` if the bytes are not a record of a known layout.
pub fn decode(bytes: &[u8]) -> Option<StoredRecord> {
    let mut r = Reader { bytes };
    if r.take(1)? != [VERSION] {
        return None;
    }
    let timestamp_ms = r.i64()?;
    let key_len = r.u32()? as usize;
    let key = r.take(key_len)?.to_vec();
    let payload_len = r.u32()? as usize;
    let payload = r.take(payload_len)?.to_vec();
    let count = r.u16()?;
    let mut headers = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let name_len = r.u16()? as usize;
        let name = String::from_utf8(r.take(name_len)?.to_vec()).ok()?;
        let value_len = r.u32()? as usize;
        headers.push((name, r.take(value_len)?.to_vec()));
    }
    Some(StoredRecord {
        timestamp_ms,
        key,
        payload,
        headers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_truncation() {
        let record = StoredRecord {
            timestamp_ms: 1_795_622_309_905,
            key: b"alice".to_vec(),
            payload: br#"{"orderId":"x"}"#.to_vec(),
            headers: vec![
                ("sluice.dlq.reason".into(), b"quantity 0".to_vec()),
                ("empty".into(), Vec::new()),
            ],
        };
        let bytes = encode(&record);
        assert_eq!(decode(&bytes), Some(record));
        assert_eq!(decode(&bytes[..bytes.len() - 1]), None);
        assert_eq!(decode(&[9, 0, 0]), None);
    }
}
