//! Trace context: W3C `traceparent` (Trace Context level 1), trace and span ids, and the hook
//! through which finished spans leave the process (OTLP, when the binary installs it).
//!
//! An order's trace starts at the ingress (or continues the client's `traceparent`) and
//! travels in the `traceparent` header of every record made from it
//! ([`crate::order::HEADER_TRACEPARENT`]). Each hop (the ingress, each stage, the sink) is a
//! span of its own: it reads the incoming `traceparent` (whose parent id is the previous hop's
//! span), makes a [`Hop`] with a new span id, and writes its outputs with the hop's own
//! `traceparent`, so the spans chain by parent.

use std::fmt;
use std::sync::OnceLock;

use crate::log::Record;
use crate::order::HEADER_TRACEPARENT;

/// A 16-byte trace id; never all zeros when it comes from [`TraceParent::parse`] or
/// [`TraceId::random`].
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

/// An 8-byte span id; never all zeros when it comes from [`TraceParent::parse`] or
/// [`SpanId::random`].
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(pub [u8; 8]);

impl TraceId {
    /// A random trace id (not all zeros).
    pub fn random() -> Self {
        loop {
            let bytes: [u8; 16] = rand::random();
            if bytes != [0; 16] {
                return TraceId(bytes);
            }
        }
    }
}

impl SpanId {
    /// A random span id (not all zeros).
    pub fn random() -> Self {
        loop {
            let bytes: [u8; 8] = rand::random();
            if bytes != [0; 8] {
                return SpanId(bytes);
            }
        }
    }
}

/// Appends the lowercase hex of `bytes` to `out`, as W3C Trace Context and OTLP/JSON write
/// ids (a table lookup: ids are formatted for every record of every hop).
fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)] as char);
        out.push(DIGITS[usize::from(byte & 0x0f)] as char);
    }
}

/// Writes the lowercase hex of `bytes` (at most 16) to `f`.
fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    let mut hex = String::with_capacity(32);
    push_hex(&mut hex, bytes);
    f.write_str(&hex)
}

impl fmt::Display for TraceId {
    /// 32 lowercase hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({self})")
    }
}

impl fmt::Display for SpanId {
    /// 16 lowercase hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpanId({self})")
    }
}

/// A parsed W3C `traceparent` header (Trace Context level 1): the trace, the span of the
/// sender (the receiver's parent), and the trace flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace.
    pub trace_id: TraceId,
    /// The span that sent it: the parent of the receiver's span.
    pub parent_id: SpanId,
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
}

/// The `sampled` trace flag.
pub const FLAG_SAMPLED: u8 = 0x01;

/// `s` as lowercase hex into `out`; `None` if a character is not `0-9a-f` (W3C allows only
/// lowercase hex digits).
fn parse_hex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(out)
}

impl TraceParent {
    /// Parses a `traceparent` value per W3C Trace Context level 1, or `None` if it is invalid
    /// (the receiver then starts a new trace):
    /// `version "-" trace-id "-" parent-id "-" trace-flags`, all lowercase hex, where
    /// `version` is 2 digits and not `ff`, `trace-id` 32 digits not all zero, `parent-id` 16
    /// digits not all zero, `trace-flags` 2 digits. Version `00` is exactly 55 characters; a
    /// later version may be longer, provided what follows the flags starts with `-` (its
    /// first four fields are read as version `00`'s, as the specification requires).
    pub fn parse(value: &str) -> Option<Self> {
        let bytes = value.as_bytes();
        if bytes.len() < 55 {
            return None;
        }
        let version = parse_hex::<1>(&bytes[0..2])?[0];
        if version == 0xff {
            return None;
        }
        if version == 0 && bytes.len() != 55 {
            return None;
        }
        if bytes.len() > 55 && bytes[55] != b'-' {
            return None;
        }
        if bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
            return None;
        }
        let trace_id = parse_hex::<16>(&bytes[3..35])?;
        let parent_id = parse_hex::<8>(&bytes[36..52])?;
        let flags = parse_hex::<1>(&bytes[53..55])?[0];
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(TraceParent {
            trace_id: TraceId(trace_id),
            parent_id: SpanId(parent_id),
            flags,
        })
    }

    /// The header value, always version `00`: `00-<trace-id>-<parent-id>-<flags>` (what
    /// `to_string` gives, built without the formatting machinery).
    pub fn header(&self) -> String {
        let mut out = String::with_capacity(55);
        out.push_str("00-");
        push_hex(&mut out, &self.trace_id.0);
        out.push('-');
        push_hex(&mut out, &self.parent_id.0);
        out.push('-');
        push_hex(&mut out, &[self.flags]);
        out
    }

    /// The `traceparent` of `record`, if it has a valid one.
    pub fn of_record(record: &Record) -> Option<Self> {
        record.header(HEADER_TRACEPARENT).and_then(Self::parse)
    }
}

impl fmt::Display for TraceParent {
    /// The header value: see [`TraceParent::header`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.header())
    }
}

/// One hop of a trace: the span a component (the ingress, a stage, a sink) makes for its part
/// of an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hop {
    /// The trace.
    pub trace_id: TraceId,
    /// This hop's span.
    pub span_id: SpanId,
    /// The span of the previous hop (`None`: this hop started the trace).
    pub parent_id: Option<SpanId>,
    /// Trace flags, passed on unchanged.
    pub flags: u8,
}

impl Hop {
    /// A hop continuing `incoming` (a new span whose parent is the sender's), or starting a
    /// new sampled trace when there is none.
    pub fn after(incoming: Option<TraceParent>) -> Self {
        match incoming {
            Some(parent) => Hop {
                trace_id: parent.trace_id,
                span_id: SpanId::random(),
                parent_id: Some(parent.parent_id),
                flags: parent.flags,
            },
            None => Hop {
                trace_id: TraceId::random(),
                span_id: SpanId::random(),
                parent_id: None,
                flags: FLAG_SAMPLED,
            },
        }
    }

    /// The `traceparent` this hop sends on: its trace, with itself as the parent.
    pub fn traceparent(&self) -> TraceParent {
        TraceParent {
            trace_id: self.trace_id,
            parent_id: self.span_id,
            flags: self.flags,
        }
    }
}

/// The kind of a span (OTLP's `SpanKind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    /// Work inside the process.
    Internal,
    /// Serving a request (the ingress's `POST /order`).
    Server,
    /// Reading a record from the log (a stage or a sink handling it).
    Consumer,
}

/// A finished span, handed to the installed [`SpanExporter`].
#[derive(Debug, Clone)]
pub struct FinishedSpan {
    /// Which hop.
    pub hop: Hop,
    /// The span's name (`POST /order`, `stage validate`, `sink store`).
    pub name: String,
    /// Its kind.
    pub kind: SpanKind,
    /// Start, in nanoseconds since the Unix epoch.
    pub start_unix_nanos: u64,
    /// End, in nanoseconds since the Unix epoch.
    pub end_unix_nanos: u64,
    /// String attributes (`sluice.order_id`, `sluice.stage`, ...).
    pub attributes: Vec<(&'static str, String)>,
}

/// Where finished spans go: installed once by the binary when an OTLP endpoint is configured.
/// `export` must not block: an exporter queues the span, or drops and counts it.
pub trait SpanExporter: Send + Sync {
    /// Takes one finished span.
    fn export(&self, span: FinishedSpan);
}

static EXPORTER: OnceLock<Box<dyn SpanExporter>> = OnceLock::new();

/// Installs the process's span exporter. Returns false (and drops `exporter`) if one is
/// installed already.
pub fn install_exporter(exporter: Box<dyn SpanExporter>) -> bool {
    EXPORTER.set(exporter).is_ok()
}

/// The installed exporter, if any: components build spans only when there is one.
pub fn exporter() -> Option<&'static dyn SpanExporter> {
    EXPORTER.get().map(|exporter| exporter.as_ref())
}

/// Nanoseconds since the Unix epoch, now.
pub fn now_unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_formats_a_valid_traceparent() {
        let parsed = TraceParent::parse(VALID).unwrap();
        assert_eq!(
            parsed.trace_id.to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(parsed.parent_id.to_string(), "00f067aa0ba902b7");
        assert_eq!(parsed.flags, 1);
        assert_eq!(parsed.to_string(), VALID);
        assert_eq!(parsed.header(), VALID);
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert_eq!(TraceParent::parse(unsampled).unwrap().flags, 0);
    }

    #[test]
    fn refuses_every_invalid_form() {
        let invalid = [
            "",
            "00",
            // all-zero trace id, all-zero parent id
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            // uppercase hex
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A",
            // version ff, non-hex version
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // version 00 with anything after the flags
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            // short fields, wrong separators, non-hex digits
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // a later version followed by something that is not a field
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ];
        for value in invalid {
            assert_eq!(TraceParent::parse(value), None, "{value:?} must be refused");
        }
    }

    #[test]
    fn a_later_version_is_read_as_version_00() {
        for value in [
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-what-comes-next",
        ] {
            let parsed = TraceParent::parse(value).unwrap();
            assert_eq!(
                parsed.trace_id.to_string(),
                "4bf92f3577b34da6a3ce929d0e0e4736"
            );
            // Sent on as version 00.
            assert!(parsed.to_string().starts_with("00-4bf92f"));
        }
    }

    #[test]
    fn hops_chain_by_parent() {
        let incoming = TraceParent::parse(VALID).unwrap();
        let hop = Hop::after(Some(incoming));
        assert_eq!(hop.trace_id, incoming.trace_id);
        assert_eq!(hop.parent_id, Some(incoming.parent_id));
        assert_ne!(hop.span_id, incoming.parent_id);
        let next = Hop::after(Some(hop.traceparent()));
        assert_eq!(next.parent_id, Some(hop.span_id));
        assert_eq!(next.trace_id, incoming.trace_id);
        let root = Hop::after(None);
        assert_eq!(root.parent_id, None);
        assert_eq!(root.flags, FLAG_SAMPLED);
        assert_ne!(root.trace_id.0, [0; 16]);
        let header = root.traceparent().to_string();
        assert_eq!(TraceParent::parse(&header), Some(root.traceparent()));
    }
}
