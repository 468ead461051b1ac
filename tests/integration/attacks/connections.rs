//! One client cannot take every connection: an address that holds thousands of idle
//! connections keeps only its share (`max_connections_per_address`), `/healthz` keeps
//! answering everyone else, and the process raised its open-files limit so that the
//! connections it does hold fit.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};

use crate::common::*;

/// Idle connections the hostile client opens (well past the share of one address).
const HOSTILE_CONNECTIONS: usize = 2_000;
/// The share of one address in this test.
const SHARE: usize = 300;

/// A connection to `to` from the loopback address `from` (Linux routes all of 127/8 to lo).
async fn connect_from(from: [u8; 4], to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind((from, 0).into())?;
    socket.connect(to).await
}

/// Whether the server closed `stream` (EOF within `wait`).
async fn closed_by_server(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(wait, stream.read(&mut byte)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

fn soft_and_hard_open_files(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .to_string();
    let fields: Vec<&str> = line.split_whitespace().collect();
    (fields[3].to_string(), fields[4].to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_embedded_defaults_one_address_cannot_take_every_connection() {
    // This test process holds thousands of sockets too.
    rlimit::increase_nofile_limit(u64::MAX).unwrap();
    let ports = Ports::free();
    let test = test_topology_on(Backend::Embedded, "connections", &["alice"], |t| {
        ports.apply(t);
        t.ingress.max_connections_per_address = SHARE;
    });
    let dir = test.dir.path().to_path_buf();
    let mut child = start_sluice(&test.path, &dir.join("run.log"), &[("RUST_LOG", "warn")]);
    let base = ports.login_base();
    wait_ready(&base, &mut child).await;
    let (soft, hard) = soft_and_hard_open_files(child.id());
    assert_eq!(
        soft, hard,
        "sluice must raise its soft open-files limit to the hard one"
    );

    let server: SocketAddr = ([127, 0, 0, 1], ports.login).into();
    let mut hostile = Vec::with_capacity(HOSTILE_CONNECTIONS);
    for _ in 0..HOSTILE_CONNECTIONS {
        hostile.push(connect_from([127, 0, 0, 2], server).await.unwrap());
    }
    // Every connection past the share is closed at once; the share stays open (idle). The
    // server may still be accepting and closing the last ones: count the connections still
    // open until two rounds agree.
    let settling = tokio::sync::Mutex::new((hostile, None::<usize>));
    let settling_ref = &settling;
    eventually(
        Duration::from_secs(30),
        "the number of open connections to settle",
        || async move {
            let mut guard = settling_ref.lock().await;
            let (streams, previous) = &mut *guard;
            let closed = futures::future::join_all(
                streams
                    .iter_mut()
                    .map(|stream| closed_by_server(stream, Duration::from_millis(200))),
            )
            .await;
            let mut closed = closed.into_iter();
            streams.retain(|_| !closed.next().unwrap());
            let settled = *previous == Some(streams.len());
            *previous = Some(streams.len());
            settled
        },
    )
    .await;
    let (hostile, _) = settling.into_inner();
    let open = hostile.len();
    assert_eq!(open, SHARE, "one address must hold exactly its share");

    // Everyone else is served at once while the hostile connections are held.
    let client = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 3]))
        .build()
        .unwrap();
    for _ in 0..20 {
        let started = Instant::now();
        let response = client.get(format!("{base}/healthz")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "/healthz took {:?} while one address held {open} connections",
            started.elapsed()
        );
    }
    let metrics = scrape_metrics(&client, &base).await;
    let refused = metrics
        .lines()
        .find(|l| l.starts_with("sluice_connections_refused_total{reason=\"per_address\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(
        refused >= (HOSTILE_CONNECTIONS - SHARE) as f64,
        "refusals must be counted: {refused}"
    );

    // Once the client lets go, its address gets places again.
    drop(hostile);
    eventually(
        Duration::from_secs(5),
        "the address to get a place back",
        || async {
            let Ok(mut stream) = connect_from([127, 0, 0, 2], server).await else {
                return false;
            };
            !closed_by_server(&mut stream, Duration::from_millis(100)).await
        },
    )
    .await;
    assert!(terminate(child).success());
}
