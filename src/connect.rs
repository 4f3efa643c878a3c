//! Resolving and connecting to the proxy, within the `--connect-timeout` deadline, and the
//! TLS handshake to an `https://` proxy.
//!
//! Name resolution runs on a helper thread so that a hung resolver cannot outlast the
//! deadline. Sockets get TCP_NODELAY (interactive ssh) and keepalive (proxies and NAT boxes
//! drop idle tunnels). Knows nothing about HTTP.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, SocketAddrV6, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use socket2::{Socket, TcpKeepalive};

use crate::config::{Endpoint, Family, Host};
use crate::diag::info;
use crate::error::{Error, Kind};
use crate::handshake::Conn;
use crate::sys::wait;
use crate::tls;
use crate::transport::eyeballs;

/// How to reach the proxy.
#[derive(Clone, Debug)]
pub struct Dialer {
    pub family: Family,
    pub timeout: Duration,
    pub keepalive: Option<Duration>,
    /// TLS to the proxy: its configuration and the name to present and verify.
    pub tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    /// Read the reply head exactly (MSG_PEEK), leaving tunnel bytes in the socket (`--fdpass`).
    pub exact: bool,
}

/// One `--connect-timeout` deadline for a whole handshake: name resolution, every connect
/// (reconnects after a 407 included), the TLS handshake and every reply. Clones share it, so
/// the connections of one handshake all count against the same clock. Time spent waiting for
/// a person (a password prompt) is not the proxy's: [`Clock::pause`] moves the deadline by it.
#[derive(Clone, Debug)]
pub struct Clock {
    start: Instant,
    /// The deadline, in nanoseconds after `start`.
    end: Arc<AtomicU64>,
    timeout: Duration,
}

impl Clock {
    /// Starts the clock: the deadline is `timeout` from now.
    pub fn start(timeout: Duration) -> Clock {
        Clock {
            start: Instant::now(),
            end: Arc::new(AtomicU64::new(nanos(timeout))),
            timeout,
        }
    }

    /// The time left, `None` once the deadline has passed.
    pub fn remaining(&self) -> Option<Duration> {
        let end = Duration::from_nanos(self.end.load(Ordering::Relaxed));
        Some(end.saturating_sub(self.start.elapsed())).filter(|d| !d.is_zero())
    }

    /// Runs `wait` (asking a person) and moves the deadline by the time it took.
    pub fn pause<T>(&self, wait: impl FnOnce() -> T) -> T {
        let began = Instant::now();
        let result = wait();
        self.end
            .fetch_add(nanos(began.elapsed()), Ordering::Relaxed);
        result
    }

    pub(crate) fn timed_out(&self) -> io::Error {
        timed_out(self.timeout)
    }
}

/// Nanoseconds, saturating (u64 nanoseconds last 584 years; timeouts are at most 31).
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Dialer {
    /// Connects (and with TLS, shakes hands) within the timeout; the stream enforces what is
    /// left of it on every read and write.
    pub fn connect(&self, endpoint: &Endpoint) -> Result<Stream, Error> {
        self.connect_within(endpoint, &Clock::start(self.timeout))
    }

    /// Like [`Dialer::connect`], against `clock`: the deadline of a handshake already running.
    pub fn connect_within(&self, endpoint: &Endpoint, clock: &Clock) -> Result<Stream, Error> {
        let mut tcp = self.connect_tcp(endpoint, clock, "proxy ")?;
        let Some((config, name)) = &self.tls else {
            return Ok(Stream::Plain(tcp));
        };
        let conn = tls::start(config.clone(), name, &mut tcp, &format!("proxy {endpoint}"))?;
        info!(
            "TLS with proxy {endpoint}: {:?}, {:?}",
            conn.protocol_version()
                .map_or_else(String::new, |v| format!("{v:?}")),
            conn.negotiated_cipher_suite()
                .map_or_else(String::new, |c| format!("{:?}", c.suite()))
        );
        Ok(Stream::Tls(Box::new(StreamOwned::new(conn, tcp))))
    }

    /// Connects to the destination itself (an empty route), within the timeout.
    pub fn connect_direct(&self, endpoint: &Endpoint, clock: &Clock) -> Result<Stream, Error> {
        self.connect_tcp(endpoint, clock, "").map(Stream::Plain)
    }

    /// Resolves `endpoint` and races its addresses (Happy Eyeballs, RFC 8305: IPv6 first,
    /// a new attempt every 250 ms or as soon as one fails), keeping the first to connect.
    fn connect_tcp(
        &self,
        endpoint: &Endpoint,
        clock: &Clock,
        what: &str,
    ) -> Result<Deadline, Error> {
        let context = || format!("connecting to {what}{endpoint}");
        let addrs = self
            .resolve(endpoint, clock)
            .map_err(|e| e.context(context()))?;
        let addrs = eyeballs::interleave(addrs);
        info!(
            "connecting to {what}{endpoint} at {}",
            addrs
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
        let prepare = |socket: &Socket| -> io::Result<()> {
            socket.set_tcp_nodelay(true)?;
            if let Some(idle) = self.keepalive {
                let params = TcpKeepalive::new()
                    .with_time(idle)
                    .with_interval(idle.min(Duration::from_secs(15)));
                socket.set_tcp_keepalive(&params)?;
            }
            Ok(())
        };
        let deadline = Instant::now() + clock.remaining().unwrap_or_default();
        match eyeballs::race(&addrs, eyeballs::STAGGER, deadline, &prepare) {
            Ok((stream, addr)) => {
                if addrs.len() > 1 {
                    info!("connected to {what}{endpoint} at {addr}");
                }
                Ok(Deadline {
                    stream,
                    clock: clock.clone(),
                    exact: self.exact,
                })
            }
            Err(eyeballs::Failure { addr: None, error }) => {
                let e = match error.kind() {
                    io::ErrorKind::TimedOut => clock.timed_out(),
                    _ => error,
                };
                Err(Error::new(Kind::Unreachable, e).context(context()))
            }
            Err(eyeballs::Failure {
                addr: Some(addr),
                error,
            }) => {
                let at = match (&endpoint.host, addrs.len()) {
                    (Host::Ip(_) | Host::Scoped(..), 1) => String::new(),
                    _ => format!(" (at {addr})"),
                };
                Err(Error::new(Kind::Unreachable, error).context(format!("{}{at}", context())))
            }
        }
    }

    fn resolve(&self, endpoint: &Endpoint, clock: &Clock) -> Result<Vec<SocketAddr>, Error> {
        let addrs = match &endpoint.host {
            Host::Ip(ip) => vec![SocketAddr::new(*ip, endpoint.port)],
            // The zone's interface goes in sin6_scope_id (RFC 4007 §11).
            Host::Scoped(ip, zone) => vec![SocketAddr::V6(SocketAddrV6::new(
                *ip,
                endpoint.port,
                0,
                zone.index,
            ))],
            Host::Name(name) => resolve_name(name, endpoint.port, clock)?,
        };
        let addrs: Vec<_> = addrs
            .into_iter()
            .filter(|a| match self.family {
                Family::Any => true,
                Family::V4 => a.is_ipv4(),
                Family::V6 => a.is_ipv6(),
            })
            .collect();
        if addrs.is_empty() {
            let family = if self.family == Family::V4 {
                "IPv4"
            } else {
                "IPv6"
            };
            return Err(Error::msg(
                Kind::Unreachable,
                format_args!("{} has no {family} address", endpoint.host),
            ));
        }
        Ok(addrs)
    }
}

pub(crate) fn resolve_name(name: &str, port: u16, clock: &Clock) -> Result<Vec<SocketAddr>, Error> {
    let (tx, rx) = mpsc::channel();
    let query = (name.to_owned(), port);
    // getaddrinfo has no timeout of its own; if it hangs, the thread is left behind and the
    // process exits without waiting for it.
    std::thread::Builder::new()
        .name("resolve".into())
        .spawn(move || {
            let _ = tx.send(query.to_socket_addrs().map(Vec::from_iter));
        })
        .map_err(|e| Error::new(Kind::Unreachable, e).context(format!("resolving {name}")))?;
    let left = clock.remaining().unwrap_or_default();
    match rx.recv_timeout(left) {
        Ok(Ok(addrs)) if !addrs.is_empty() => Ok(addrs),
        Ok(Ok(_)) => Err(Error::msg(
            Kind::Unreachable,
            format_args!("resolving {name}: no address"),
        )),
        Ok(Err(e)) => Err(Error::new(Kind::Unreachable, e).context(format!("resolving {name}"))),
        Err(_) => {
            Err(Error::new(Kind::Unreachable, clock.timed_out())
                .context(format!("resolving {name}")))
        }
    }
}

fn timed_out(timeout: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("timed out after {} (--connect-timeout)", secs(timeout)),
    )
}

/// `30s`, `0.5s`: durations as the user typed them.
pub fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

/// Work to run once, the first time a handshake waits for a reply (see [`while_waiting`]).
static WHILE_WAITING: Mutex<Option<fn()>> = Mutex::new(None);

/// Runs `work` once, the first time a handshake waits for the proxy to answer: work the
/// tunnel needs before its first byte but that need not wait for the reply, done while the
/// proxy does its part rather than after. Never run if no handshake waits (a direct route):
/// whoever set it must still be able to do without it.
pub fn while_waiting(work: fn()) {
    if let Ok(mut slot) = WHILE_WAITING.lock() {
        *slot = Some(work);
    }
}

/// A connected stream whose reads and writes fail with `TimedOut` once its clock runs out.
///
/// The socket is non-blocking (as the connect left it) and every wait on it is a poll bounded
/// by the clock: no send and receive timeouts to set before each call and clear for the
/// relay, which wants the socket non-blocking anyway.
pub struct Deadline {
    stream: TcpStream,
    clock: Clock,
    exact: bool,
}

impl Deadline {
    /// What is left of the clock, or the timeout error once it has run out.
    fn left(&self) -> io::Result<Duration> {
        self.clock.remaining().ok_or_else(|| self.clock.timed_out())
    }

    /// Waits until the socket is ready for `events` (or has an error or hang-up to report),
    /// within what is left of the clock.
    fn wait(&self, events: libc::c_short) -> io::Result<()> {
        loop {
            match wait::poll_one(self.stream.as_raw_fd(), events, self.left()?) {
                // Time is up or nearly so: `left` says which.
                Ok(0) => {}
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Runs `op` until it does not find the socket unready, waiting for `events` in between;
    /// reads wait first (the reply is rarely there yet), writes try first (a new socket's
    /// buffer has room).
    fn io<T>(
        &self,
        events: libc::c_short,
        wait_first: bool,
        mut op: impl FnMut(&TcpStream) -> io::Result<T>,
    ) -> io::Result<T> {
        if wait_first {
            let work = WHILE_WAITING.lock().ok().and_then(|mut slot| slot.take());
            if let Some(work) = work {
                work();
            }
            self.wait(events)?;
        } else {
            self.left()?;
        }
        loop {
            match op(&self.stream) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.wait(events)?,
                r => return r,
            }
        }
    }

    /// The plain stream, back in blocking mode without timeouts.
    pub fn into_inner(self) -> io::Result<TcpStream> {
        self.stream.set_nonblocking(false)?;
        Ok(self.stream)
    }

    /// The plain stream, non-blocking as it is, for a relay on a poll loop.
    pub fn into_nonblocking(self) -> TcpStream {
        self.stream
    }
}

impl Read for Deadline {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.io(wait::POLLIN, true, |mut s| s.read(buf))
    }
}

impl Write for Deadline {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.io(wait::POLLOUT, false, |mut s| s.write(buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Conn for Deadline {
    fn peek(&mut self, buf: &mut [u8]) -> Option<io::Result<usize>> {
        if !self.exact {
            return None;
        }
        Some(self.io(wait::POLLIN, true, |s| s.peek(buf)))
    }
}

/// The connection the handshake runs over: plain, or TLS to the proxy.
pub enum Stream {
    Plain(Deadline),
    Tls(Box<StreamOwned<ClientConnection, Deadline>>),
}
