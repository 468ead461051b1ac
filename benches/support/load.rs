//! A lean HTTP/1.1 load generator for the benchmarks, in the manner of `wrk`: keep-alive
//! connections that each write a request rendered once up front and read its answer.
//!
//! The client shares the machine with the process it measures, so the CPU it spends is taken
//! from that process: a client that builds every request and its JSON (reqwest with
//! `serde_json`, used here before) lowered the sustained figures by a sixth to a third (see
//! "`make bench`" in the README). This one does no more per request than write bytes, parse a
//! status line and headers, and skip the body.

use std::io::{Error, ErrorKind};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `POST /order` requests, rendered once: one per user and quantity, taken in turn.
pub struct OrderRequests(Vec<Vec<u8>>);

impl OrderRequests {
    /// One request for every `(user, token)` pair and every quantity from 1 to 5, addressed
    /// to `host` (the `Host` header, e.g. `127.0.0.1:3001`).
    pub fn new(host: &str, tokens: &[(String, String)]) -> Self {
        let mut requests = Vec::with_capacity(tokens.len() * 5);
        for quantity in 1..=5 {
            for (user, token) in tokens {
                let body = serde_json::json!({
                    "userId": user,
                    "product": "widget",
                    "quantity": quantity,
                })
                .to_string();
                requests.push(
                    format!(
                        "POST /order HTTP/1.1\r\nhost: {host}\r\nauthorization: Bearer {token}\r\n\
                         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    )
                    .into_bytes(),
                );
            }
        }
        OrderRequests(requests)
    }

    /// The `n`-th request (they repeat).
    pub fn get(&self, n: usize) -> &[u8] {
        &self.0[n % self.0.len()]
    }
}

/// Longest wait for one answer: a server that accepts and never answers fails the request
/// instead of hanging the benchmark.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// One keep-alive connection: a request is written, then its whole answer read, in turn.
pub struct Connection {
    address: SocketAddr,
    stream: Option<TcpStream>,
    /// Bytes read and not yet part of an answer.
    buffer: Vec<u8>,
}

impl Connection {
    /// A connection to `address`, opened on its first request.
    pub fn new(address: SocketAddr) -> Self {
        Connection {
            address,
            stream: None,
            buffer: Vec::with_capacity(4096),
        }
    }

    /// Sends `request` and reads the answer: its status code and how long it took (connecting
    /// included, when it connects). After an answer with `connection: close`, or any error
    /// (no answer within 30 s among them), the next request opens a new connection.
    pub async fn send(&mut self, request: &[u8]) -> std::io::Result<(u16, Duration)> {
        let started = Instant::now();
        let answer = match tokio::time::timeout(ANSWER_TIMEOUT, self.exchange(request)).await {
            Ok(answer) => answer,
            Err(_) => Err(Error::new(ErrorKind::TimedOut, "no answer within 30 s")),
        };
        match answer {
            Ok((status, keep_open)) => {
                if !keep_open {
                    self.stream = None;
                }
                Ok((status, started.elapsed()))
            }
            Err(error) => {
                self.stream = None;
                Err(error)
            }
        }
    }

    async fn exchange(&mut self, request: &[u8]) -> std::io::Result<(u16, bool)> {
        if self.stream.is_none() {
            let stream = TcpStream::connect(self.address).await?;
            stream.set_nodelay(true)?;
            self.stream = Some(stream);
            self.buffer.clear();
        }
        if !self.buffer.is_empty() {
            // One request is in flight at a time: bytes before it are not an answer to it.
            return Err(Error::new(
                ErrorKind::InvalidData,
                "the server sent bytes that answer no request",
            ));
        }
        let stream = self.stream.as_mut().expect("opened above");
        stream.write_all(request).await?;
        loop {
            if let Some(answer) = parse_answer(&mut self.buffer)? {
                return Ok(answer);
            }
            let mut chunk = [0u8; 4096];
            let read = stream.read(&mut chunk).await?;
            if read == 0 {
                return Err(Error::new(
                    ErrorKind::UnexpectedEof,
                    "the server closed the connection before answering",
                ));
            }
            self.buffer.extend_from_slice(&chunk[..read]);
        }
    }
}

/// Takes one whole answer from the front of `buffer`: `(status, whether the connection stays
/// open)`, or `None` while it is incomplete. Only answers framed by `content-length` are read
/// (what the ingress sends); any other framing is an error rather than a misread.
fn parse_answer(buffer: &mut Vec<u8>) -> std::io::Result<Option<(u16, bool)>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let head = match response.parse(buffer) {
        Ok(httparse::Status::Complete(head)) => head,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(error) => {
            return Err(Error::new(
                ErrorKind::InvalidData,
                format!("not an HTTP answer: {error}"),
            ))
        }
    };
    let status = response.code.unwrap_or(0);
    if status < 200 {
        return Err(Error::new(
            ErrorKind::InvalidData,
            format!("an interim {status} answer: this client reads only final answers"),
        ));
    }
    let mut body = None;
    let (mut close, mut keep_alive) = (false, false);
    for header in response.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            body = Some(
                std::str::from_utf8(header.value)
                    .ok()
                    .and_then(|value| value.trim().parse::<usize>().ok())
                    .ok_or_else(|| Error::new(ErrorKind::InvalidData, "a bad content-length"))?,
            );
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(Error::new(
                ErrorKind::InvalidData,
                "a chunked answer: this client reads only answers with a content-length",
            ));
        } else if header.name.eq_ignore_ascii_case("connection") {
            let tokens = std::str::from_utf8(header.value).unwrap_or_default();
            for token in tokens.split(',').map(str::trim) {
                close |= token.eq_ignore_ascii_case("close");
                keep_alive |= token.eq_ignore_ascii_case("keep-alive");
            }
        }
    }
    // HTTP/1.0 closes after each answer unless it says keep-alive; `close` always wins.
    let keep_open = !close && (response.version == Some(1) || keep_alive);
    let body = match (body, status) {
        (Some(body), _) => body,
        // These never carry a body.
        (None, 204 | 304) => 0,
        (None, _) => {
            return Err(Error::new(
                ErrorKind::InvalidData,
                format!("a {status} answer without a content-length: its end cannot be told"),
            ))
        }
    };
    if buffer.len() < head + body {
        return Ok(None);
    }
    buffer.drain(..head + body);
    Ok(Some((status, keep_open)))
}
