//! The connection a route's handshakes run over, with any number of TLS layers: hop 1 over
//! TCP, an `https://` hop 2 as TLS inside hop 1's tunnel, an `https://` hop 3 as TLS inside
//! that, and so on. [`Stream`] is the blocking form the handshakes use (one deadline on the
//! socket under all layers); [`Layers`] is the same stack rebuilt for the non-blocking relay.
//!
//! An HTTP/2 hop ends the socket's part: its tunnel is a stream inside its connection, served
//! by the hop's own thread through a socket pair ([`Bridged`]), and the hops after it (and the
//! relay) run over the near end of that pair as they would over TCP.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::RawFd;
use std::os::unix::net::UnixStream;

use rustls::{ClientConnection, StreamOwned};

use crate::connect::{self, Clock, Deadline};
use crate::error::Error;
use crate::handshake::Conn;
use crate::relay::Tunnel;
use crate::tls::TlsTunnel;

/// The socket at the bottom of a route's stack: TCP to the first hop, or the socket pair end of
/// an HTTP/2 hop's tunnel (the hops after it run through that).
pub enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// A blocking connection: the socket, or TLS over another `Stream`.
pub enum Stream {
    Plain(Deadline),
    /// The tunnel through an HTTP/2 hop.
    Bridged(Bridged),
    /// The tunnel through a last HTTP/2 hop that the pipe mode's relay drives on its own
    /// thread: no handshake runs over it, the relay takes it ([`Stream::into_inline`]).
    Inline(Box<Inline>),
    Tls(Box<StreamOwned<ClientConnection, Stream>>),
}

/// What serves the far end of a [`Bridged`] socket pair (an HTTP/2 hop's thread). It runs
/// until the relay is done; `finish` then waits for it and says how its part of the tunnel
/// ended (a RST_STREAM or GOAWAY says more than the socket pair's end).
pub trait Finish: Send {
    fn finish(self: Box<Self>) -> Result<(), Error>;
}

/// The threads serving bridged tunnels, outermost first.
pub type Pumps = Vec<Box<dyn Finish>>;

/// An HTTP/2 hop's tunnel for the relay's thread, with the threads serving the bridged
/// tunnels beneath it.
pub struct Inline {
    pub tunnel: crate::hop::h2::Inline,
    pub pumps: Pumps,
    /// The hop, for messages about its end, in a chain.
    pub who: Option<String>,
}

fn inline_unsupported() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "a tunnel through an HTTP/2 hop that the relay drives itself carries nothing else",
    )
}

/// The near end of a socket pair whose far end a hop's thread serves, with the route's
/// deadline on every read and write of the handshakes run through it.
pub struct Bridged {
    socket: UnixStream,
    clock: Clock,
    /// The threads serving this tunnel and every bridged tunnel beneath it, outermost first:
    /// all must run as long as this one is used.
    pumps: Pumps,
}

impl Bridged {
    pub fn new(socket: UnixStream, clock: Clock, pumps: Pumps) -> Bridged {
        Bridged {
            socket,
            clock,
            pumps,
        }
    }

    fn arm(&self, write: bool) -> io::Result<()> {
        let left = self
            .clock
            .remaining()
            .ok_or_else(|| self.clock.timed_out())?;
        match write {
            true => self.socket.set_write_timeout(Some(left)),
            false => self.socket.set_read_timeout(Some(left)),
        }
    }

    fn check<T>(&self, r: io::Result<T>) -> io::Result<T> {
        r.map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => self.clock.timed_out(),
            _ => e,
        })
    }
}

impl Read for Bridged {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.arm(false)?;
        let r = self.socket.read(buf);
        self.check(r)
    }
}

impl Write for Bridged {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.arm(true)?;
        let r = self.socket.write(buf);
        self.check(r)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Stream {
    /// A connection as the dialer made it.
    pub fn from_dialed(s: connect::Stream) -> Stream {
        match s {
            connect::Stream::Plain(d) => Stream::Plain(d),
            connect::Stream::Tls(s) => {
                let StreamOwned { conn, sock } = *s;
                Stream::Tls(Box::new(StreamOwned::new(conn, Stream::Plain(sock))))
            }
        }
    }

    /// Wraps this stream in a TLS session that has finished its handshake over it.
    pub fn wrap(self, conn: ClientConnection) -> Stream {
        Stream::Tls(Box::new(StreamOwned::new(conn, self)))
    }

    /// How many TLS sessions are stacked on the socket.
    pub fn tls_layers(&self) -> usize {
        match self {
            Stream::Plain(_) | Stream::Bridged(_) | Stream::Inline(_) => 0,
            Stream::Tls(s) => 1 + s.sock.tls_layers(),
        }
    }

    /// The protocol the outermost TLS session agreed by ALPN, if any.
    pub fn alpn(&self) -> Option<&[u8]> {
        match self {
            Stream::Tls(s) => s.conn.alpn_protocol(),
            _ => None,
        }
    }

    /// The TCP socket (blocking, without timeouts) and the TLS sessions, outermost (next to
    /// the socket) first. A tunnel through an HTTP/2 hop has no TCP socket of its own.
    pub fn into_layers(self) -> io::Result<(TcpStream, Vec<ClientConnection>)> {
        match self.into_bottom()? {
            (Socket::Tcp(tcp), sessions, _) => Ok((tcp, sessions)),
            (Socket::Unix(_), ..) => Err(io::Error::other(
                "a tunnel through an HTTP/2 hop is no TCP connection to hand over",
            )),
        }
    }

    /// The socket (blocking, without timeouts), the TLS sessions on it (outermost first) and
    /// the threads serving the bridged tunnels beneath (outermost first; see [`Finish`]).
    pub fn into_bottom(self) -> io::Result<(Socket, Vec<ClientConnection>, Pumps)> {
        self.bottom(true)
    }

    /// [`Stream::into_bottom`] with the socket non-blocking, for a relay on a poll loop (a
    /// plain TCP socket already is: nothing to set).
    pub fn into_bottom_nonblocking(self) -> io::Result<(Socket, Vec<ClientConnection>, Pumps)> {
        self.bottom(false)
    }

    fn bottom(self, blocking: bool) -> io::Result<(Socket, Vec<ClientConnection>, Pumps)> {
        let mut sessions = Vec::new();
        let mut s = self;
        loop {
            match s {
                Stream::Plain(d) => {
                    sessions.reverse();
                    let tcp = match blocking {
                        true => d.into_inner()?,
                        false => d.into_nonblocking(),
                    };
                    return Ok((Socket::Tcp(tcp), sessions, Vec::new()));
                }
                Stream::Bridged(b) => {
                    sessions.reverse();
                    match blocking {
                        true => {
                            b.socket.set_read_timeout(None)?;
                            b.socket.set_write_timeout(None)?;
                        }
                        // A non-blocking socket's calls never wait for its timeouts.
                        false => b.socket.set_nonblocking(true)?,
                    }
                    return Ok((Socket::Unix(b.socket), sessions, b.pumps));
                }
                Stream::Tls(b) => {
                    let StreamOwned { conn, sock } = *b;
                    sessions.push(conn);
                    s = sock;
                }
                Stream::Inline(_) => return Err(inline_unsupported()),
            }
        }
    }

    /// The tunnel of a last HTTP/2 hop for the relay's thread, or this stream as it was.
    pub fn into_inline(self) -> Result<Inline, Stream> {
        match self {
            Stream::Inline(i) => Ok(*i),
            other => Err(other),
        }
    }

    /// Takes the threads serving the bridged tunnels beneath (outermost first), for a hop
    /// that moves the stack onto its own thread and keeps them running itself.
    pub fn take_pumps(&mut self) -> Pumps {
        match self {
            Stream::Plain(_) => Vec::new(),
            Stream::Bridged(b) => std::mem::take(&mut b.pumps),
            Stream::Inline(i) => std::mem::take(&mut i.pumps),
            Stream::Tls(s) => s.sock.take_pumps(),
        }
    }

    /// Puts threads taken with [`Stream::take_pumps`] back, beneath those this stream's own
    /// bridge has (a stream that is no bridge holds none: nothing can be beneath it).
    pub fn put_pumps(&mut self, mut beneath: Pumps) {
        match self {
            Stream::Plain(_) => debug_assert!(beneath.is_empty(), "bridged threads lost"),
            Stream::Bridged(b) => {
                beneath.append(&mut b.pumps);
                b.pumps = beneath;
            }
            Stream::Inline(i) => {
                beneath.append(&mut i.pumps);
                i.pumps = beneath;
            }
            Stream::Tls(s) => s.sock.put_pumps(beneath),
        }
    }

    /// The socket (blocking, without timeouts) and every TLS session on it, outermost first:
    /// for an HTTP/2 hop, which drives them all on its runtime. The threads serving a bridged
    /// tunnel beneath must have been taken ([`Stream::take_pumps`]): dropped here, they would
    /// stop serving it.
    pub fn into_stack(self) -> io::Result<(Socket, Vec<ClientConnection>)> {
        match self.into_bottom()? {
            (socket, sessions, pumps) if pumps.is_empty() => Ok((socket, sessions)),
            _ => Err(io::Error::other(
                "the threads serving the tunnel beneath were not taken over",
            )),
        }
    }

    /// The non-blocking form for a relay on a mio loop (listen mode's sessions): the socket,
    /// TLS over it (any depth), or a bridged tunnel, which keeps the threads serving it as
    /// long as it lives (dropped with it, they stop waiting for the far side).
    pub fn into_relay(self) -> io::Result<Box<dyn Tunnel + Send>> {
        let (socket, mut sessions, pumps) = self.into_bottom_nonblocking()?;
        if let (Socket::Tcp(_), true) = (&socket, pumps.is_empty()) {
            if sessions.len() < 2 {
                let Socket::Tcp(tcp) = socket else {
                    unreachable!("matched above")
                };
                let tcp = mio::net::TcpStream::from_std(tcp);
                return Ok(match sessions.pop() {
                    None => Box::new(tcp),
                    Some(conn) => Box::new(TlsTunnel::new(conn, tcp)),
                });
            }
        }
        Ok(Box::new(Relayed {
            layers: Layers::new(socket, sessions)?,
            _pumps: pumps,
        }))
    }

    /// The socket and at most one TLS session, for callers that relay one layer themselves;
    /// a deeper stack is refused.
    pub fn into_parts(self) -> io::Result<(TcpStream, Option<ClientConnection>)> {
        let (tcp, mut sessions) = self.into_layers()?;
        match sessions.len() {
            0 => Ok((tcp, None)),
            1 => Ok((tcp, sessions.pop())),
            n => Err(io::Error::other(format!(
                "{n} nested TLS sessions cannot be handed over as one"
            ))),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(d) => d.read(buf),
            Stream::Bridged(b) => b.read(buf),
            Stream::Inline(_) => Err(inline_unsupported()),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(d) => d.write(buf),
            Stream::Bridged(b) => b.write(buf),
            Stream::Inline(_) => Err(inline_unsupported()),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(d) => d.flush(),
            Stream::Bridged(b) => b.flush(),
            Stream::Inline(_) => Err(inline_unsupported()),
            Stream::Tls(s) => s.flush(),
        }
    }
}

impl Conn for Stream {
    /// Only a plain connection peeks: a TLS session is never handed over.
    fn peek(&mut self, buf: &mut [u8]) -> Option<io::Result<usize>> {
        match self {
            Stream::Plain(d) => d.peek(buf),
            Stream::Bridged(_) | Stream::Inline(_) | Stream::Tls(_) => None,
        }
    }
}

/// The non-blocking stack for the relay: the socket, or TLS over another layer.
pub enum Layers {
    Tcp(mio::net::TcpStream),
    Unix(mio::net::UnixStream),
    Tls(Box<TlsTunnel<Layers>>),
}

impl Layers {
    /// Stacks `sessions` (outermost first) on `socket`, made non-blocking.
    pub fn new(socket: Socket, sessions: Vec<ClientConnection>) -> io::Result<Layers> {
        let base = match socket {
            Socket::Tcp(s) => {
                s.set_nonblocking(true)?;
                Layers::Tcp(mio::net::TcpStream::from_std(s))
            }
            Socket::Unix(s) => {
                s.set_nonblocking(true)?;
                Layers::Unix(mio::net::UnixStream::from_std(s))
            }
        };
        Ok(sessions.into_iter().fold(base, |io, conn| {
            Layers::Tls(Box::new(TlsTunnel::new(conn, io)))
        }))
    }
}

impl Read for Layers {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Layers::Tcp(s) => s.read(buf),
            Layers::Unix(s) => s.read(buf),
            Layers::Tls(t) => t.read(buf),
        }
    }
}

impl Write for Layers {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Layers::Tcp(s) => s.write(buf),
            Layers::Unix(s) => s.write(buf),
            Layers::Tls(t) => t.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Layers::Tcp(s) => s.flush(),
            Layers::Unix(s) => s.flush(),
            Layers::Tls(t) => t.flush(),
        }
    }
}

impl mio::event::Source for Layers {
    fn register(&mut self, r: &mio::Registry, t: mio::Token, i: mio::Interest) -> io::Result<()> {
        match self {
            Layers::Tcp(s) => s.register(r, t, i),
            Layers::Unix(s) => s.register(r, t, i),
            Layers::Tls(l) => l.register(r, t, i),
        }
    }

    fn reregister(&mut self, r: &mio::Registry, t: mio::Token, i: mio::Interest) -> io::Result<()> {
        match self {
            Layers::Tcp(s) => s.reregister(r, t, i),
            Layers::Unix(s) => s.reregister(r, t, i),
            Layers::Tls(l) => l.reregister(r, t, i),
        }
    }

    fn deregister(&mut self, r: &mio::Registry) -> io::Result<()> {
        match self {
            Layers::Tcp(s) => s.deregister(r),
            Layers::Unix(s) => s.deregister(r),
            Layers::Tls(l) => l.deregister(r),
        }
    }
}

impl Tunnel for Layers {
    fn shutdown_write(&mut self) -> io::Result<()> {
        match self {
            Layers::Tcp(s) => s.shutdown_write(),
            Layers::Unix(s) => s.shutdown_write(),
            Layers::Tls(t) => t.shutdown_write(),
        }
    }

    fn splice_fd(&self) -> Option<RawFd> {
        match self {
            Layers::Tcp(s) => s.splice_fd(),
            Layers::Unix(s) => s.splice_fd(),
            Layers::Tls(_) => None,
        }
    }

    fn plain_peer(&self) -> Option<std::net::SocketAddr> {
        match self {
            Layers::Tcp(s) => s.plain_peer(),
            Layers::Unix(_) | Layers::Tls(_) => None,
        }
    }
}

/// [`Layers`] with the threads serving the bridged tunnels beneath, kept as long as it lives.
struct Relayed {
    layers: Layers,
    _pumps: Pumps,
}

impl Read for Relayed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.layers.read(buf)
    }
}

impl Write for Relayed {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.layers.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.layers.flush()
    }
}

impl mio::event::Source for Relayed {
    fn register(&mut self, r: &mio::Registry, t: mio::Token, i: mio::Interest) -> io::Result<()> {
        self.layers.register(r, t, i)
    }

    fn reregister(&mut self, r: &mio::Registry, t: mio::Token, i: mio::Interest) -> io::Result<()> {
        self.layers.reregister(r, t, i)
    }

    fn deregister(&mut self, r: &mio::Registry) -> io::Result<()> {
        self.layers.deregister(r)
    }
}

impl Tunnel for Relayed {
    fn shutdown_write(&mut self) -> io::Result<()> {
        self.layers.shutdown_write()
    }

    fn splice_fd(&self) -> Option<RawFd> {
        self.layers.splice_fd()
    }
}
