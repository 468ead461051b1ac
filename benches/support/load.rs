//! A lean HTTP/1.1 load generator for the benchmarks, in the manner of `wrk`: keep-alive
//! connections that each write a request rendered once up front and read its answer.
//!
//! The client shares the machine with the process it measures, so every bit of CPU it spends
//! is taken from that process. With a general-purpose client that builds every request and
//! its JSON (reqwest with `serde_json`, used here before), the sustained run measured
//! 19.9k–21.0k orders/s on Kafka and 20.2k–21.8k embedded; with this one, in turn with it and
//! against the same build, 24.6k–24.8k and 28.8k–29.3k (2-core development machine). This one
//! does no more per request than write bytes, parse a status line and headers, and skip the
//! body.

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
                let body = serde_json::json!({ "userId": user, "product": "widget", "quantity": quantity })
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

    /// Sends `request` and reads the answer: its status code and how long it took. A
    /// connection the server closed (an answer with `connection: close`, or an error) is
    /// opened again for the next request.
    pub async fn send(&mut self, request: &[u8]) -> std::io::Result<(u16, Duration)> {
        let started = Instant::now();
        let answer = self.exchange(request).await;
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
        let stream = self.stream.as_mut().expect("opened above");
        stream.write_all(request).await?;
        loop {
            if let Some(answer) = parse_answer(&mut self.buffer)? {
                return Ok(answer);
            }
            let mut chunk = [0u8; 4096];
            let read = stream.read(&mut chunk).await?;
            if read == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the server closed the connection before answering",
                ));
            }
            self.buffer.extend_from_slice(&chunk[..read]);
        }
    }
}

/// Takes one whole answer from the front of `buffer`: `(status, whether the connection stays
/// open)`, or `None` while it is incomplete.
fn parse_answer(buffer: &mut Vec<u8>) -> std::io::Result<Option<(u16, bool)>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let head = match response.parse(buffer) {
        Ok(httparse::Status::Complete(head)) => head,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(error) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not an HTTP answer: {error}"),
            ))
        }
    };
    let mut body = 0usize;
    let mut keep_open = true;
    for header in response.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            body = std::str::from_utf8(header.value)
                .ok()
                .and_then(|value| value.trim().parse().ok())
                .ok_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::InvalidData, "a bad content-length")
                })?;
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "a chunked answer: this client reads only answers with a content-length",
            ));
        } else if header.name.eq_ignore_ascii_case("connection")
            && header.value.eq_ignore_ascii_case(b"close")
        {
            keep_open = false;
        }
    }
    let status = response.code.unwrap_or(0);
    if buffer.len() < head + body {
        return Ok(None);
    }
    buffer.drain(..head + body);
    Ok(Some((status, keep_open)))
}
