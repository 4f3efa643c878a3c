//! A TLS session that the blocking handshake already finished, driven as tokio's
//! `AsyncRead`/`AsyncWrite` for the HTTP/2 hop. The TLS handshake stays in the blocking code
//! (ALPN decides there whether HTTP/2 runs at all, so nothing of tokio starts for HTTP/1.1);
//! only after `h2` was agreed does the session move onto the h2 hop's runtime.
//!
//! Readiness follows tokio's rules: `try_read`/`try_write` on the socket, and a `WouldBlock`
//! clears the readiness so that the next `poll_*_ready` registers the waker.

use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use rustls::ClientConnection;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// TLS over a tokio socket.
pub struct AsyncTls {
    tcp: TcpStream,
    conn: ClientConnection,
    /// The proxy closed the TCP connection (with or without close_notify).
    eof: bool,
}

/// `io::Read`/`io::Write` on the socket for rustls, without blocking.
struct Nb<'a>(&'a TcpStream);

impl Read for Nb<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl Write for Nb<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsyncTls {
    /// Must be called within the runtime (the socket is registered with its reactor).
    pub fn new(tcp: std::net::TcpStream, conn: ClientConnection) -> io::Result<AsyncTls> {
        tcp.set_nonblocking(true)?;
        Ok(AsyncTls {
            tcp: TcpStream::from_std(tcp)?,
            conn,
            eof: false,
        })
    }

    /// Writes out what rustls holds, waiting for the socket as needed.
    fn poll_write_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut Nb(&self.tcp)) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(self.tcp.poll_write_ready(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for AsyncTls {
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
                // The socket ended without close_notify: a truncation, said as an error.
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the proxy closed the TLS connection without close_notify",
                )));
            }
            // Alerts or key updates rustls wants to send go out first (best effort).
            if this.conn.wants_write() {
                let _ = this.poll_write_tls(cx)?;
            }
            match this.conn.read_tls(&mut Nb(&this.tcp)) {
                Ok(0) => this.eof = true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(this.tcp.poll_read_ready(cx))?;
                    continue;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
            if let Err(e) = this.conn.process_new_packets() {
                // Tell the proxy why before giving up (the alert is queued by rustls).
                let _ = this.conn.write_tls(&mut Nb(&this.tcp));
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
            }
        }
    }
}

impl AsyncWrite for AsyncTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // Room first: rustls's send buffer is bounded, so memory is too.
        ready!(this.poll_write_tls(cx))?;
        let n = this.conn.writer().write(buf)?;
        // Send now what fits in the socket; the rest goes with the next write or flush.
        while this.conn.wants_write() {
            match this.conn.write_tls(&mut Nb(&this.tcp)) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_write_tls(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.conn.send_close_notify();
        ready!(this.poll_write_tls(cx))?;
        match socket2::SockRef::from(&this.tcp).shutdown(std::net::Shutdown::Write) {
            // The proxy already closed: nothing left to shut.
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Poll::Ready(Ok(())),
            other => Poll::Ready(other),
        }
    }
}
