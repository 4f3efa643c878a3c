//! TLS sessions that the blocking handshakes already finished, driven as tokio's
//! `AsyncRead`/`AsyncWrite` for the HTTP/2 hop. The TLS handshakes stay in the blocking code
//! (ALPN decides there whether HTTP/2 runs at all, so nothing of tokio starts for HTTP/1.1);
//! only after `h2` was agreed does the stack move onto the h2 hop's runtime.
//!
//! The stack is what the route built below the HTTP/2 hop: a TCP socket (the hop is first or
//! follows plain hops), or the socket pair of an earlier HTTP/2 hop's tunnel, with one
//! [`AsyncTls`] per TLS session on it (an `https://` hop before this one), the HTTP/2 hop's own
//! session outermost. Each layer reads and writes the one below through tokio's poll methods,
//! so a `Pending` below is a `WouldBlock` to rustls and the waker is the one the layer below
//! registered.

use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use rustls::ClientConnection;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::transport::stream::Socket;

/// A transport the HTTP/2 connection runs over: any depth of TLS on a socket.
pub trait AsyncIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> AsyncIo for T {}

/// `socket` (blocking, as the handshakes left it) with `sessions` stacked on it, outermost
/// (next to the socket) first. Must be called within the runtime (the socket is registered
/// with its reactor).
pub fn stack(socket: Socket, sessions: Vec<ClientConnection>) -> io::Result<Box<dyn AsyncIo>> {
    let base: Box<dyn AsyncIo> = match socket {
        Socket::Tcp(s) => {
            s.set_nonblocking(true)?;
            Box::new(tokio::net::TcpStream::from_std(s)?)
        }
        Socket::Unix(s) => {
            s.set_nonblocking(true)?;
            Box::new(tokio::net::UnixStream::from_std(s)?)
        }
    };
    Ok(stack_on(base, sessions))
}

/// `base` with `sessions` stacked on it, outermost (next to `base`) first.
pub fn stack_on(base: Box<dyn AsyncIo>, sessions: Vec<ClientConnection>) -> Box<dyn AsyncIo> {
    sessions.into_iter().fold(base, |io, conn| {
        Box::new(AsyncTls {
            io,
            conn,
            eof: false,
            closing: false,
        })
    })
}

/// A non-blocking socket as tokio's `AsyncRead`/`AsyncWrite` without tokio's reactor: a
/// `WouldBlock` is `Pending`, and whoever polls waits for the socket's readiness itself (the
/// HTTP/2 hop that runs on the relay's thread, see `hop::h2::inline`). The waker is not
/// stored: that caller polls again on every readiness event.
pub struct Polled<S>(pub S);

fn pending_on_block<T>(r: io::Result<T>) -> Poll<io::Result<T>> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
        other => Poll::Ready(other),
    }
}

impl<S: Read + Unpin> AsyncRead for Polled<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match this.0.read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return pending_on_block(Err(e)),
            }
        }
    }
}

impl<S: Write + Unpin + std::os::fd::AsFd> AsyncWrite for Polled<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        pending_on_block(self.get_mut().0.write(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        pending_on_block(self.get_mut().0.write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(socket2::SockRef::from(&self.0).shutdown(std::net::Shutdown::Write))
    }
}

/// TLS over another async transport.
pub struct AsyncTls<IO> {
    io: IO,
    conn: ClientConnection,
    /// The layer below ended (with or without close_notify).
    eof: bool,
    /// close_notify is queued (once, however often shutdown is polled).
    closing: bool,
}

/// `io::Read`/`io::Write` on the layer below for rustls, without blocking: `Pending` becomes
/// `WouldBlock` (the layer below has registered the waker).
struct Nb<'a, 'b, IO> {
    io: &'a mut IO,
    cx: &'a mut Context<'b>,
}

impl<IO: AsyncRead + Unpin> Read for Nb<'_, '_, IO> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut buf = ReadBuf::new(buf);
        match Pin::new(&mut *self.io).poll_read(self.cx, &mut buf) {
            Poll::Ready(Ok(())) => Ok(buf.filled().len()),
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl<IO: AsyncWrite + Unpin> Write for Nb<'_, '_, IO> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.io).poll_write(self.cx, buf) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    /// rustls hands every queued record at once: one `writev`, not a write per record.
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match Pin::new(&mut *self.io).poll_write_vectored(self.cx, bufs) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match Pin::new(&mut *self.io).poll_flush(self.cx) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncTls<IO> {
    /// Writes out what rustls holds, waiting for the layer below as needed.
    fn poll_write_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut Nb {
                io: &mut self.io,
                cx,
            }) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for AsyncTls<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match this.conn.reader().read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            if this.eof {
                // The layer below ended without close_notify: a truncation, said as an error.
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the proxy closed the TLS connection without close_notify",
                )));
            }
            // Alerts or key updates rustls wants to send go out first (best effort).
            if this.conn.wants_write() {
                let _ = this.poll_write_tls(cx)?;
            }
            match this.conn.read_tls(&mut Nb {
                io: &mut this.io,
                cx,
            }) {
                Ok(0) => this.eof = true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(e) => return Poll::Ready(Err(e)),
            }
            if let Err(e) = this.conn.process_new_packets() {
                // Tell the proxy why before giving up (the alert is queued by rustls).
                let _ = this.poll_write_tls(cx);
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
            }
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for AsyncTls<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // Room first: rustls's send buffer is bounded, so memory is too.
        ready!(this.poll_write_tls(cx))?;
        let n = this.conn.writer().write(buf)?;
        // Send now what fits below; the rest goes with the next write or flush.
        match this.poll_write_tls(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            _ => Poll::Ready(Ok(n)),
        }
    }

    /// A DATA frame's head and payload in one call: one TLS record run for the frame, where
    /// separate writes made a record (and a system call) of the 9-byte head alone.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_write_tls(cx))?;
        let n = this.conn.writer().write_vectored(bufs)?;
        match this.poll_write_tls(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            _ => Poll::Ready(Ok(n)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_tls(cx))?;
        // A TLS layer below holds what it was given until it is flushed too.
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.closing {
            this.closing = true;
            this.conn.send_close_notify();
        }
        ready!(this.poll_write_tls(cx))?;
        match ready!(Pin::new(&mut this.io).poll_shutdown(cx)) {
            // The proxy already closed: nothing left to shut.
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Poll::Ready(Ok(())),
            other => Poll::Ready(other),
        }
    }
}
