//! Happy Eyeballs (RFC 8305): connect to a host with several addresses without waiting for
//! each dead one in turn.
//!
//! [`interleave`] orders the addresses (§4: alternate the families, IPv6 first); [`race`]
//! starts one attempt, and the next after [`STAGGER`] or as soon as an attempt fails (§5),
//! keeps all of them in flight on one poll, takes the first that connects and closes the rest.
//! One deadline covers the whole race. Knows nothing about proxies.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::diag::info;
use crate::sys::wait;

/// RFC 8305 §5's recommended "Connection Attempt Delay".
pub const STAGGER: Duration = Duration::from_millis(250);

/// §4: IPv6 first, then alternate families, each family keeping the resolver's order.
pub fn interleave(addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let (v6, v4): (Vec<_>, Vec<_>) = addrs.into_iter().partition(SocketAddr::is_ipv6);
    let mut out = Vec::with_capacity(v6.len() + v4.len());
    let (mut a, mut b) = (v6.into_iter(), v4.into_iter());
    loop {
        match (a.next(), b.next()) {
            (None, None) => return out,
            (x, y) => out.extend(x.into_iter().chain(y)),
        }
    }
}

/// Why no attempt connected: the last failure and where, or the deadline.
#[derive(Debug)]
pub struct Failure {
    /// The address of the attempt that failed last; `None` when the deadline passed first.
    pub addr: Option<SocketAddr>,
    pub error: io::Error,
}

/// Connects to the first of `addrs` (in this order, [`interleave`]d by the caller) to
/// answer, starting a new attempt every `stagger` or when one fails, until `deadline`.
/// `prepare` sets socket options (keepalive, nodelay) before each connect. The winner is
/// returned non-blocking; every other socket is closed on return.
pub fn race(
    addrs: &[SocketAddr],
    stagger: Duration,
    deadline: Instant,
    prepare: &dyn Fn(&Socket) -> io::Result<()>,
) -> Result<(TcpStream, SocketAddr), Failure> {
    if let [addr] = addrs {
        // Nothing to race: a plain connect, with no poll instance (one descriptor fewer, which
        // matters to a daemon near its limit).
        return connect_one(*addr, deadline, prepare).map(|s| (s, *addr));
    }
    let mut poll = Poll::new().map_err(|error| Failure { addr: None, error })?;
    let mut events = Events::with_capacity(addrs.len().max(1));
    // Attempts in flight, by index into `addrs`; `None` once finished.
    let mut pending: Vec<Option<mio::net::TcpStream>> = Vec::with_capacity(addrs.len());
    let mut last: Option<Failure> = None;
    let mut next_start = Instant::now();
    loop {
        let now = Instant::now();
        // Start the next attempt when its time has come, or at once if none is in flight.
        let in_flight = pending.iter().filter(|p| p.is_some()).count();
        if pending.len() < addrs.len() && (now >= next_start || in_flight == 0) {
            let i = pending.len();
            let addr = addrs[i];
            info!("connecting to {addr}");
            match start(addr, prepare).and_then(|mut s| {
                poll.registry()
                    .register(&mut s, Token(i), Interest::WRITABLE)
                    .map(|()| s)
            }) {
                Ok(s) => pending.push(Some(s)),
                Err(error) => {
                    info!("connecting to {addr}: {error}");
                    pending.push(None);
                    last = Some(Failure {
                        addr: Some(addr),
                        error,
                    });
                }
            }
            next_start = Instant::now() + stagger;
            continue;
        }
        if in_flight == 0 && pending.len() == addrs.len() {
            return Err(last.unwrap_or(Failure {
                addr: None,
                error: io::Error::new(io::ErrorKind::NotFound, "no address to connect to"),
            }));
        }
        if now >= deadline {
            return Err(Failure {
                addr: None,
                error: io::ErrorKind::TimedOut.into(),
            });
        }
        let mut wake = deadline;
        if pending.len() < addrs.len() {
            wake = wake.min(next_start);
        }
        match poll.poll(&mut events, Some(wake.saturating_duration_since(now))) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(Failure { addr: None, error }),
        }
        for event in &events {
            let i = event.token().0;
            let Some(stream) = pending.get(i).and_then(Option::as_ref) else {
                continue;
            };
            // Readiness is a hint: a socket error means this attempt failed; a peer address
            // means it connected; neither means not yet.
            match stream.take_error() {
                Ok(None) => {}
                Ok(Some(error)) | Err(error) => {
                    info!("connecting to {}: {error}", addrs[i]);
                    let mut s = pending[i].take().expect("checked above");
                    let _ = poll.registry().deregister(&mut s);
                    last = Some(Failure {
                        addr: Some(addrs[i]),
                        error,
                    });
                    // §5: a failure starts the next attempt without waiting.
                    next_start = Instant::now();
                    continue;
                }
            }
            match stream.peer_addr() {
                Ok(_) => {
                    let mut s = pending[i].take().expect("checked above");
                    let _ = poll.registry().deregister(&mut s);
                    // Left non-blocking, as a single address's connect leaves it.
                    let std: TcpStream = s.into();
                    // The losers in `pending` are dropped, and so closed, on return.
                    return Ok((std, addrs[i]));
                }
                Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
                Err(error) => {
                    pending[i] = None;
                    last = Some(Failure {
                        addr: Some(addrs[i]),
                        error,
                    });
                    next_start = Instant::now();
                }
            }
        }
    }
}

/// One connect, bounded by the deadline. The socket is non-blocking from its creation and
/// stays so: the handshake waits on it with poll (within the same deadline) and the relay
/// wants it non-blocking, so no flags are set and cleared around the connect.
fn connect_one(
    addr: SocketAddr,
    deadline: Instant,
    prepare: &dyn Fn(&Socket) -> io::Result<()>,
) -> Result<TcpStream, Failure> {
    let failed = |error| Failure {
        addr: Some(addr),
        error,
    };
    let timed_out = || Failure {
        addr: None,
        error: io::ErrorKind::TimedOut.into(),
    };
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )
    .map_err(failed)?;
    prepare(&socket).map_err(failed)?;
    if Instant::now() >= deadline {
        return Err(timed_out());
    }
    match socket.connect(&SockAddr::from(addr)) {
        Ok(()) => return Ok(socket.into()),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(failed(e)),
    }
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out());
        }
        let revents = match wait::poll_one(socket.as_raw_fd(), wait::POLLOUT, left) {
            Ok(0) => continue,
            Ok(revents) => revents,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(failed(e)),
        };
        // An error or a hang-up is a failed connect; writable alone, a connected socket.
        if revents & (wait::POLLERR | wait::POLLHUP) != 0 {
            return Err(failed(match socket.take_error() {
                Ok(Some(e)) | Err(e) => e,
                Ok(None) => io::Error::other("no error set after POLLHUP"),
            }));
        }
        return Ok(socket.into());
    }
}

/// A non-blocking socket with its connect under way.
fn start(
    addr: SocketAddr,
    prepare: &dyn Fn(&Socket) -> io::Result<()>,
) -> io::Result<mio::net::TcpStream> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )?;
    prepare(&socket)?;
    match socket.connect(&SockAddr::from(addr)) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) => return Err(e),
    }
    Ok(mio::net::TcpStream::from_std(socket.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn families_alternate_starting_with_ipv6() {
        let cases: &[(&[&str], &[&str])] = &[
            (&[], &[]),
            (&["1.1.1.1:1"], &["1.1.1.1:1"]),
            (
                &["1.1.1.1:1", "2.2.2.2:1", "[::1]:1"],
                &["[::1]:1", "1.1.1.1:1", "2.2.2.2:1"],
            ),
            (
                &["[::1]:1", "[::2]:1", "1.1.1.1:1", "2.2.2.2:1"],
                &["[::1]:1", "1.1.1.1:1", "[::2]:1", "2.2.2.2:1"],
            ),
            (
                &["1.1.1.1:1", "[::1]:1", "[::2]:1", "[::3]:1"],
                &["[::1]:1", "1.1.1.1:1", "[::2]:1", "[::3]:1"],
            ),
        ];
        for (given, want) in cases {
            let got = interleave(given.iter().map(|s| a(s)).collect());
            let want: Vec<_> = want.iter().map(|s| a(s)).collect();
            assert_eq!(got, want, "{given:?}");
        }
    }

    fn closed_port() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }

    /// A listener whose accept queue is full: new SYNs are dropped, so a connect to it neither
    /// succeeds nor fails until it times out. Keep the returned values alive.
    fn black_hole() -> (Socket, Vec<TcpStream>, SocketAddr) {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        s.bind(&SockAddr::from(a("127.0.0.1:0"))).unwrap();
        s.listen(0).unwrap();
        let addr = s.local_addr().unwrap().as_socket().unwrap();
        // Fill the queue; the connects that cannot complete are left behind non-blocking.
        let mut fill = Vec::new();
        for _ in 0..4 {
            let c = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
            c.set_nonblocking(true).unwrap();
            let _ = c.connect(&SockAddr::from(addr));
            fill.push(c.into());
        }
        (s, fill, addr)
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(20)
    }

    #[test]
    fn a_refused_address_hands_over_at_once() {
        let good = TcpListener::bind("127.0.0.1:0").unwrap();
        let addrs = [closed_port(), good.local_addr().unwrap()];
        // A stagger far beyond the test's patience: only the failure can start attempt two.
        let (_, won) = race(&addrs, Duration::from_secs(3600), far(), &|_| Ok(())).unwrap();
        assert_eq!(won, addrs[1]);
    }

    #[test]
    fn a_silent_address_is_overtaken_after_the_stagger() {
        let (_hole, _fill, hole) = black_hole();
        let good = TcpListener::bind("127.0.0.1:0").unwrap();
        let addrs = [hole, good.local_addr().unwrap()];
        let (stream, won) = race(&addrs, Duration::from_millis(10), far(), &|_| Ok(())).unwrap();
        assert_eq!(won, addrs[1]);
        // The winner is a connected stream, left non-blocking.
        let mut byte = [0u8; 1];
        assert_eq!(
            stream.peek(&mut byte).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        stream.set_nonblocking(false).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let (mut server, _) = good.accept().unwrap();
        io::Write::write_all(&mut server, b"x").unwrap();
        let mut buf = [0u8; 1];
        io::Read::read_exact(&mut &stream, &mut buf).unwrap();
    }

    #[test]
    fn every_address_failing_reports_the_last() {
        let addrs = [closed_port(), closed_port()];
        let f = race(&addrs, STAGGER, far(), &|_| Ok(())).unwrap_err();
        assert_eq!(f.addr, Some(addrs[1]));
        assert_eq!(f.error.kind(), io::ErrorKind::ConnectionRefused);
    }

    #[test]
    fn the_deadline_ends_the_race() {
        let (_hole, _fill, hole) = black_hole();
        let deadline = Instant::now() + Duration::from_millis(50);
        let f = race(&[hole], STAGGER, deadline, &|_| Ok(())).unwrap_err();
        assert_eq!(f.error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(f.addr, None);
    }

    #[test]
    fn socket_options_are_applied_before_connecting() {
        let good = TcpListener::bind("127.0.0.1:0").unwrap();
        let (stream, _) = race(&[good.local_addr().unwrap()], STAGGER, far(), &|s| {
            s.set_tcp_nodelay(true)
        })
        .unwrap();
        assert!(stream.nodelay().unwrap());
    }

    #[test]
    fn a_failing_prepare_is_a_failed_attempt() {
        let good = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = good.local_addr().unwrap();
        let f = race(&[addr], STAGGER, far(), &|_| {
            Err(io::Error::other("no such option"))
        })
        .unwrap_err();
        assert_eq!(f.addr, Some(addr));
    }
}
