//! The connection a route's handshakes run over, with any number of TLS layers: hop 1 over
//! TCP, an `https://` hop 2 as TLS inside hop 1's tunnel, an `https://` hop 3 as TLS inside
//! that, and so on. [`Stream`] is the blocking form the handshakes use (one deadline on the
//! socket under all layers); [`Layers`] is the same stack rebuilt for the non-blocking relay.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::RawFd;
use std::os::unix::net::UnixStream;

use rustls::{ClientConnection, StreamOwned};

use crate::connect::{self, Deadline};
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
    Tls(Box<StreamOwned<ClientConnection, Stream>>),
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
            Stream::Plain(_) => 0,
            Stream::Tls(s) => 1 + s.sock.tls_layers(),
        }
    }

    /// The socket (blocking, without timeouts) and the TLS sessions, outermost (next to the
    /// socket) first.
    pub fn into_layers(self) -> io::Result<(TcpStream, Vec<ClientConnection>)> {
        let mut sessions = Vec::new();
        let mut s = self;
        loop {
            match s {
                Stream::Plain(d) => {
                    sessions.reverse();
                    return Ok((d.into_inner()?, sessions));
                }
                Stream::Tls(b) => {
                    let StreamOwned { conn, sock } = *b;
                    sessions.push(conn);
                    s = sock;
                }
            }
        }
    }

    /// The socket (blocking, without timeouts) and every TLS session on it, outermost first:
    /// for an HTTP/2 hop, which drives them all on its runtime.
    pub fn into_stack(self) -> io::Result<(Socket, Vec<ClientConnection>)> {
        let (tcp, sessions) = self.into_layers()?;
        Ok((Socket::Tcp(tcp), sessions))
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
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(d) => d.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(d) => d.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

impl Conn for Stream {
    /// Only a plain connection peeks: a TLS session is never handed over.
    fn peek(&mut self, buf: &mut [u8]) -> Option<io::Result<usize>> {
        match self {
            Stream::Plain(d) => d.peek(buf),
            Stream::Tls(_) => None,
        }
    }
}

/// The non-blocking stack for the relay: the socket, or TLS over another layer.
pub enum Layers {
    Tcp(mio::net::TcpStream),
    Tls(Box<TlsTunnel<Layers>>),
}

impl Layers {
    /// Stacks `sessions` (outermost first) on a non-blocking socket.
    pub fn new(socket: mio::net::TcpStream, sessions: Vec<ClientConnection>) -> Layers {
        sessions.into_iter().fold(Layers::Tcp(socket), |io, conn| {
            Layers::Tls(Box::new(TlsTunnel::new(conn, io)))
        })
    }
}

impl Read for Layers {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Layers::Tcp(s) => s.read(buf),
            Layers::Tls(t) => t.read(buf),
        }
    }
}

impl Write for Layers {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Layers::Tcp(s) => s.write(buf),
            Layers::Tls(t) => t.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Layers::Tcp(s) => s.flush(),
            Layers::Tls(t) => t.flush(),
        }
    }
}

impl mio::event::Source for Layers {
    fn register(&mut self, r: &mio::Registry, t: mio::Token, i: mio::Interest) -> io::Result<()> {
        match self {
            Layers::Tcp(s) => s.register(r, t, i),
            Layers::Tls(l) => l.register(r, t, i),
        }
    }

    fn reregister(&mut self, r: &mio::Registry, t: mio::Token, i: mio::Interest) -> io::Result<()> {
        match self {
            Layers::Tcp(s) => s.reregister(r, t, i),
            Layers::Tls(l) => l.reregister(r, t, i),
        }
    }

    fn deregister(&mut self, r: &mio::Registry) -> io::Result<()> {
        match self {
            Layers::Tcp(s) => s.deregister(r),
            Layers::Tls(l) => l.deregister(r),
        }
    }
}

impl Tunnel for Layers {
    fn shutdown_write(&mut self) -> io::Result<()> {
        match self {
            Layers::Tcp(s) => s.shutdown_write(),
            Layers::Tls(t) => t.shutdown_write(),
        }
    }

    fn splice_fd(&self) -> Option<RawFd> {
        match self {
            Layers::Tcp(s) => s.splice_fd(),
            Layers::Tls(_) => None,
        }
    }
}
