//! The TCP listeners of `sluice run`, and how a new process takes them over from the one it
//! replaces without a refused or reset connection.
//!
//! A running process offers its listening sockets (the ingress's `login_listen` and
//! `order_listen`, and `[ops] listen`) on a Unix socket in Linux's abstract namespace, named
//! after its first address (`sluice-listeners-<address>`; no file to clean up, and any
//! process of the same user on the machine finds it). A process that starts on the same
//! addresses connects there first and receives the very same sockets (`SCM_RIGHTS`, as HAProxy
//! and nginx do): both processes then accept from one accept queue. When the old process stops
//! accepting and closes its copies, the sockets stay open in the new one, so connections still
//! queued are not reset: they wait for the new process. (`SO_REUSEPORT` would give each
//! process its own queue, and Linux resets what is left in a closed one unless
//! `net.ipv4.tcp_migrate_req` is set.) Both sides check that the peer runs as the same user.
//!
//! With no process to take over from, the addresses are bound afresh. An address the old
//! process did not listen on is bound afresh too, and a socket it had that the new process
//! does not want is closed. The old process offers its sockets until it starts draining
//! (SIGTERM); the new one offers them from then on.

use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Listening sockets, each with the address it listens on.
type Sockets = Vec<(SocketAddr, OwnedFd)>;

/// Most listeners one process hands over.
const MAX_LISTENERS: usize = 8;

/// Backlog of freshly bound listeners (Linux caps it at `net.core.somaxconn`): room for the
/// connections that arrive while a restart on the embedded log waits for the old process.
const BACKLOG: u32 = 4096;

/// How long a takeover may take to be answered.
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(10);

/// A listener that could not be obtained.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot listen on {address}: {source}; is another process using the port? change {field}, or stop that process (a `sluice run` on the same addresses hands its listeners over: is it running as another user?)"
)]
pub struct BindError {
    /// The address.
    pub address: SocketAddr,
    /// Which setting.
    pub field: &'static str,
    /// The error.
    pub source: std::io::Error,
}

/// The listeners this process serves, by the setting that names each, in the order asked.
pub struct Obtained {
    /// One listener per address asked for, in that order.
    pub listeners: Vec<TcpListener>,
    /// What a successor will be handed.
    pub offer: Offer,
}

/// Binds `addresses` (setting name, address), or takes them over from the process that holds
/// them now. Logs where each came from.
pub async fn obtain(addresses: &[(&'static str, SocketAddr)]) -> Result<Obtained, BindError> {
    // Port 0 (any free port, as tests ask) names no address a successor could ask for too.
    let name = addresses
        .first()
        .filter(|(_, address)| address.port() != 0)
        .map(|(_, address)| socket_name(*address));
    let mut handed = match &name {
        Some(name) => take_over(name).await,
        None => Vec::new(),
    };
    let mut listeners = Vec::new();
    let mut offered = Vec::new();
    for &(field, address) in addresses {
        let position = handed.iter().position(|(at, _)| *at == address);
        let listener = match position {
            Some(position) => {
                let (_, fd) = handed.swap_remove(position);
                let listener = std::net::TcpListener::from(fd);
                listener
                    .set_nonblocking(true)
                    .and_then(|()| TcpListener::from_std(listener))
                    .map_err(|source| BindError {
                        address,
                        field,
                        source,
                    })?
            }
            None => bind(address).map_err(|source| BindError {
                address,
                field,
                source,
            })?,
        };
        let copy = listener
            .as_fd()
            .try_clone_to_owned()
            .map_err(|source| BindError {
                address,
                field,
                source,
            })?;
        offered.push((address, copy));
        listeners.push(listener);
    }
    for (address, _) in &handed {
        tracing::info!(%address, "closing a handed-over listener this process does not use");
    }
    Ok(Obtained {
        listeners,
        offer: Offer {
            name,
            sockets: offered,
        },
    })
}

/// Binds `address` afresh (`SO_REUSEADDR`, a deep backlog).
fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match address {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(BACKLOG)
}

/// The abstract socket name under which the process listening on `address` offers its
/// listeners.
pub fn socket_name(address: SocketAddr) -> String {
    format!("sluice-listeners-{address}")
}

/// The listening sockets this process offers to its successor.
pub struct Offer {
    name: Option<String>,
    sockets: Sockets,
}

impl Offer {
    /// Offers the sockets until `stop` (when this process starts draining), then closes this
    /// copy of them. While the previous process still offers the same name (it does until it
    /// drains), tries again every 200 ms.
    pub async fn serve(self, stop: CancellationToken) {
        let Some(name) = self.name.clone() else {
            return;
        };
        #[cfg(target_os = "linux")]
        linux::serve(&name, &self.sockets, stop).await;
        #[cfg(not(target_os = "linux"))]
        {
            tracing::debug!(%name, "listeners are handed over on Linux only");
            stop.cancelled().await;
        }
    }
}

/// Takes the listeners offered under `name`, if a process offers them: each with the address
/// it listens on. Any failure is logged and leaves the addresses to be bound afresh.
async fn take_over(name: &str) -> Sockets {
    #[cfg(target_os = "linux")]
    {
        let name = name.to_string();
        let taken = tokio::task::spawn_blocking(move || linux::take_over(&name)).await;
        match taken {
            Ok(Ok(Some((pid, sockets)))) => {
                let addresses: Vec<String> = sockets.iter().map(|(a, _)| a.to_string()).collect();
                tracing::info!(
                    pid,
                    listeners = %addresses.join(", "),
                    "took over the listeners of the running process; it goes on serving until it is sent SIGTERM"
                );
                sockets
            }
            Ok(Ok(None)) => Vec::new(),
            Ok(Err(error)) => {
                tracing::warn!(%error, "could not take over the listeners of the running process; binding afresh");
                Vec::new()
            }
            Err(error) => {
                tracing::warn!(%error, "listener takeover interrupted; binding afresh");
                Vec::new()
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = name;
        Vec::new()
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::io::{IoSlice, IoSliceMut, Read, Write};
    use std::mem::MaybeUninit;
    use std::net::SocketAddr;
    use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener, UnixStream};
    use std::time::Duration;

    use rustix::net::{
        RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
        SendAncillaryMessage, SendFlags,
    };
    use tokio_util::sync::CancellationToken;

    use super::{MAX_LISTENERS, TAKEOVER_TIMEOUT};

    /// Longest message (the addresses, as JSON).
    const MAX_MESSAGE: usize = 4096;

    fn invalid(message: impl Into<String>) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, message.into())
    }

    /// Connects to `name`; `None` when nobody offers listeners there.
    pub fn take_over(name: &str) -> std::io::Result<Option<(i32, super::Sockets)>> {
        let address = UnixAddr::from_abstract_name(name.as_bytes())?;
        let stream = match UnixStream::connect_addr(&address) {
            Ok(stream) => stream,
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
                ) =>
            {
                return Ok(None)
            }
            Err(error) => return Err(error),
        };
        stream.set_read_timeout(Some(TAKEOVER_TIMEOUT))?;
        let peer = rustix::net::sockopt::socket_peercred(&stream)?;
        let me = rustix::process::getuid();
        if peer.uid != me {
            return Err(invalid(format!(
                "{name} is held by uid {}, not by this user (uid {}): not taking listeners from it",
                peer.uid.as_raw(),
                me.as_raw()
            )));
        }
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_LISTENERS))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut buffer = vec![0u8; MAX_MESSAGE];
        let received = rustix::net::recvmsg(
            &stream,
            &mut [IoSliceMut::new(&mut buffer)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )?;
        let mut sockets: Vec<OwnedFd> = Vec::new();
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = message {
                sockets.extend(fds);
            }
        }
        if received.flags.contains(ReturnFlags::CTRUNC) {
            return Err(invalid("more listeners offered than this process takes"));
        }
        let mut message = buffer[..received.bytes].to_vec();
        // The rest of the line, if it came in pieces.
        let mut stream = stream;
        while !message.ends_with(b"\n") && message.len() < MAX_MESSAGE {
            let mut more = [0u8; 512];
            let read = stream.read(&mut more)?;
            if read == 0 {
                return Err(invalid("the offer ended early"));
            }
            message.extend_from_slice(&more[..read]);
        }
        let addresses: Vec<SocketAddr> = serde_json::from_slice(message.trim_ascii_end())
            .map_err(|e| invalid(format!("unreadable offer: {e}")))?;
        if addresses.len() != sockets.len() {
            return Err(invalid(format!(
                "the offer names {} addresses for {} sockets",
                addresses.len(),
                sockets.len()
            )));
        }
        let mut checked = Vec::new();
        for (address, fd) in addresses.into_iter().zip(sockets) {
            // Only a listening TCP socket on the address it claims is taken.
            let listening = rustix::net::sockopt::socket_acceptconn(&fd).unwrap_or(false);
            let listener = std::net::TcpListener::from(fd);
            match listener.local_addr() {
                Ok(actual) if actual == address && listening => {
                    checked.push((address, OwnedFd::from(listener)))
                }
                _ => {
                    return Err(invalid(format!(
                        "the socket offered for {address} is not a listener on it"
                    )))
                }
            }
        }
        stream.write_all(b"ok\n")?;
        Ok(Some((peer.pid.as_raw_nonzero().get(), checked)))
    }

    /// Offers `sockets` under `name` until `stop`.
    pub async fn serve(name: &str, sockets: &[(SocketAddr, OwnedFd)], stop: CancellationToken) {
        let listener = {
            let mut waiting_logged = false;
            loop {
                let bound = UnixAddr::from_abstract_name(name.as_bytes())
                    .and_then(|address| UnixListener::bind_addr(&address))
                    .and_then(|listener| {
                        listener.set_nonblocking(true)?;
                        tokio::net::UnixListener::from_std(listener)
                    });
                match bound {
                    Ok(listener) => break listener,
                    Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => {
                        if !waiting_logged {
                            tracing::info!(%name, "the previous process still offers its listeners; offering them here once it drains");
                            waiting_logged = true;
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%name, %error, "cannot offer the listeners to a successor: a restart will have to bind afresh");
                        return;
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        };
        tracing::debug!(%name, "listeners offered to a successor");
        let addresses: Vec<SocketAddr> = sockets.iter().map(|(a, _)| *a).collect();
        let mut message = serde_json::to_vec(&addresses).unwrap_or_default();
        message.push(b'\n');
        loop {
            let stream = tokio::select! {
                _ = stop.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        tracing::warn!(%error, "listener offer: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let peer = match stream.peer_cred() {
                Ok(peer) => peer,
                Err(error) => {
                    tracing::warn!(%error, "listener offer: cannot tell who connected");
                    continue;
                }
            };
            if peer.uid() != rustix::process::getuid().as_raw() {
                tracing::warn!(uid = peer.uid(), "listener offer refused to another user");
                continue;
            }
            let copies: std::io::Result<Vec<OwnedFd>> =
                sockets.iter().map(|(_, fd)| fd.try_clone()).collect();
            let (message, pid) = (message.clone(), peer.pid());
            let handed = tokio::task::spawn_blocking(move || {
                let stream = stream.into_std()?;
                stream.set_nonblocking(false)?;
                stream.set_write_timeout(Some(TAKEOVER_TIMEOUT))?;
                stream.set_read_timeout(Some(TAKEOVER_TIMEOUT))?;
                hand(&stream, &message, &copies?)
            })
            .await;
            match handed {
                Ok(Ok(())) => tracing::info!(pid, "listeners handed over to a new process"),
                Ok(Err(error)) => tracing::warn!(pid, %error, "listener handover failed"),
                Err(error) => tracing::warn!(pid, %error, "listener handover interrupted"),
            }
        }
        tracing::debug!(%name, "no longer offering the listeners");
    }

    /// Sends `message` with `sockets`, and waits for the taker's acknowledgement.
    fn hand(mut stream: &UnixStream, message: &[u8], sockets: &[OwnedFd]) -> std::io::Result<()> {
        let fds: Vec<BorrowedFd<'_>> = sockets.iter().map(|fd| fd.as_fd()).collect();
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_LISTENERS))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
            return Err(invalid("too many listeners to hand over"));
        }
        let sent = rustix::net::sendmsg(
            stream,
            &[IoSlice::new(message)],
            &mut control,
            SendFlags::empty(),
        )?;
        stream.write_all(&message[sent..])?;
        let mut answer = [0u8; 3];
        stream.read_exact(&mut answer)?;
        if &answer != b"ok\n" {
            return Err(invalid("the new process did not confirm the handover"));
        }
        Ok(())
    }
}
