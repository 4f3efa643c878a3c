//! A pipe-mode tunnel through an HTTP/2 hop, driven on the relay's own thread.
//!
//! When the HTTP/2 hop is the last of the route and nothing runs inside its tunnel before the
//! relay (no `--tls`, no `--fdpass`), the stdio relay drives the `h2` connection itself: the
//! tunnel is a [`relay::Tunnel`](crate::relay::Tunnel) whose reads take DATA from the stream
//! and whose writes send DATA on it, and the relay's mio loop waits on the proxy's socket.
//! No thread, no runtime, no socket pair: the bridge the other cases use (see
//! [`super::Tunnel::bridge`]) cost each byte two more copies through the kernel and a
//! hand-over between threads, which was most of what HTTP/2 lost against HTTP/1.1 over TLS.
//!
//! `h2` is polled here without tokio. Its I/O is [`Polled`]: the socket as `AsyncRead`/
//! `AsyncWrite`, where `WouldBlock` is `Pending`; every future of the connection ends up
//! waiting on the socket, so polling again on each of its readiness events (edge-triggered)
//! is enough. The wakers `h2` uses between its own parts (the connection wakes a stream that
//! got DATA) set a flag that says "poll again before waiting".

use std::future::Future;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use h2::client::Connection;
use h2::{RecvStream, SendStream};

use super::{CHUNK, CLOSE_GRACE, Exchange, builder, describe, exchange};
use crate::diag::debug;
use crate::error::{Error, Kind, ResultExt};
use crate::transport::async_tls::{self, AsyncIo, Polled};
use crate::transport::stream::{Socket, Stream};

/// The payload of one DATA frame we send: with its 9-byte head, one full TLS record
/// (16 KiB of plaintext). Frames of the usual 16 KiB maximum made two records each, the
/// second of 9 bytes, and the proxy decrypted twice as many.
const FRAME_PAYLOAD: usize = (16 << 10) - 9;

/// Set by any wake-up `h2` gives: something changed, poll again before waiting.
struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The connection and what polls it.
struct Driver {
    /// `None` once it ended.
    conn: Option<Connection<Box<dyn AsyncIo>, Bytes>>,
    /// Why it ended, when with an error (GOAWAY, I/O).
    ended: Option<h2::Error>,
    flag: Arc<Flag>,
    waker: Waker,
    fd: RawFd,
}

/// Why [`Driver::block_on`] gave up.
enum Gave {
    Up(io::Error),
    Late,
}

impl Driver {
    fn new(fd: RawFd) -> Driver {
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        Driver {
            conn: None,
            ended: None,
            waker: Waker::from(flag.clone()),
            flag,
            fd,
        }
    }

    /// Lets the connection read and write what it can.
    fn poll_conn(&mut self) {
        let Some(conn) = &mut self.conn else { return };
        let mut cx = Context::from_waker(&self.waker);
        if let Poll::Ready(r) = Pin::new(conn).poll(&mut cx) {
            if let Err(e) = r {
                debug!("HTTP/2 connection ended: {}", describe(&e));
                self.ended = Some(e);
            }
            self.conn = None;
        }
    }

    /// Polls `fut` and the connection until `fut` is done, waiting on the socket when neither
    /// can move; gives up once `left` says no time is left.
    fn block_on<F: Future>(
        &mut self,
        fut: F,
        left: impl Fn() -> Option<Duration>,
    ) -> Result<F::Output, Gave> {
        let mut fut = pin!(fut);
        let mut waiter = Waiter::new(self.fd).map_err(Gave::Up)?;
        loop {
            self.flag.0.store(false, Ordering::Relaxed);
            self.poll_conn();
            let mut cx = Context::from_waker(&self.waker);
            if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
                return Ok(out);
            }
            let left = left().ok_or(Gave::Late)?;
            if !self.flag.0.load(Ordering::Relaxed) {
                waiter.wait(left).map_err(Gave::Up)?;
            }
        }
    }

    /// Runs the connection to its end (what is queued goes out, then GOAWAY), for at most
    /// `grace`.
    fn close(&mut self, grace: Duration) {
        let until = Instant::now() + grace;
        let Ok(mut waiter) = Waiter::new(self.fd) else {
            return;
        };
        loop {
            self.flag.0.store(false, Ordering::Relaxed);
            self.poll_conn();
            if self.conn.is_none() {
                return;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                debug!("the HTTP/2 connection did not close within {grace:?}");
                return;
            }
            if !self.flag.0.load(Ordering::Relaxed) && waiter.wait(left).is_err() {
                return;
            }
        }
    }
}

/// Waits for the socket's next readiness event (edge-triggered: every `Pending` of the
/// connection came from a `WouldBlock`, after which an event comes).
struct Waiter {
    poll: mio::Poll,
    events: mio::Events,
}

impl Waiter {
    fn new(fd: RawFd) -> io::Result<Waiter> {
        let poll = mio::Poll::new()?;
        poll.registry().register(
            &mut mio::unix::SourceFd(&fd),
            mio::Token(0),
            mio::Interest::READABLE | mio::Interest::WRITABLE,
        )?;
        Ok(Waiter {
            poll,
            events: mio::Events::with_capacity(2),
        })
    }

    fn wait(&mut self, left: Duration) -> io::Result<()> {
        match self.poll.poll(&mut self.events, Some(left)) {
            Err(e) if e.kind() != io::ErrorKind::Interrupted => Err(e),
            _ => Ok(()),
        }
    }
}

/// An open CONNECT stream over HTTP/2, relayed on the caller's thread.
pub struct Inline {
    driver: Driver,
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// DATA received and not yet handed to the relay.
    pending: Bytes,
    /// The tail of what the relay wrote, shorter than a full frame: it goes out with the next
    /// write's bytes, or alone when the relay flushes (it has nothing more to write now).
    /// Pipes give 64 KiB a read, four frames and 36 bytes: sent as they came, every fifth
    /// TLS record was a 36-byte one, which cost the proxy a full read-and-forward cycle.
    staged: BytesMut,
    /// END_STREAM came (after `pending`).
    eof: bool,
    /// The stream failed after `pending`.
    failed: Option<h2::Error>,
    /// The first failure mid-tunnel, for [`Inline::finish`]: it says more than the relay's
    /// `io::Error` does.
    failure: Option<Error>,
    /// `HTTP/2 200`, for messages.
    pub status_line: String,
}

/// Starts HTTP/2 on `below` (this hop's TLS session outermost; ALPN said `h2`) and sends
/// CONNECT, answering 407s, all on this thread.
pub fn connect(below: Stream, x: Exchange<'_>) -> Result<Inline, Error> {
    let proxy = x.proxy.to_owned();
    let clock = x.clock;
    let late = || {
        Error::new(Kind::Unreachable, clock.timed_out())
            .context("waiting for the proxy's HTTP/2 reply")
    };
    let (socket, sessions) = below
        .into_stack()
        .kind_ctx(Kind::Unreachable, || format!("HTTP/2 with proxy {proxy}"))?;
    let (base, fd) = match socket {
        Socket::Tcp(s) => polled(s),
        Socket::Unix(s) => polled(s),
    }
    .kind_ctx(Kind::Unreachable, || format!("HTTP/2 with proxy {proxy}"))?;
    let io = async_tls::stack_on(base, sessions);
    let mut driver = Driver::new(fd);
    let gave = |g: Gave| match g {
        Gave::Late => late(),
        Gave::Up(e) => Error::new(Kind::Unreachable, e)
            .context(format!("waiting for proxy {proxy} over HTTP/2")),
    };
    let (send_request, connection) = driver
        .block_on(builder().handshake::<_, Bytes>(io), || clock.remaining())
        .map_err(gave)?
        .map_err(|e| {
            Error::msg(
                Kind::Unreachable,
                format_args!("starting HTTP/2 with proxy {proxy}: {}", describe(&e)),
            )
        })?;
    driver.conn = Some(connection);
    let granted = driver
        .block_on(exchange(send_request, x, false, &mut false), || {
            clock.remaining()
        })
        .map_err(gave)??;
    Ok(Inline {
        driver,
        send: granted.send,
        recv: granted.recv,
        pending: Bytes::new(),
        staged: BytesMut::new(),
        eof: false,
        failed: None,
        failure: None,
        status_line: granted.status_line,
    })
}

/// `socket`, made non-blocking, as the bottom of the HTTP/2 connection's stack, and its fd.
fn polled<S>(socket: S) -> io::Result<(Box<dyn AsyncIo>, RawFd)>
where
    S: Read + Write + std::os::fd::AsFd + Send + Unpin + 'static,
{
    socket2::SockRef::from(&socket).set_nonblocking(true)?;
    let fd = socket.as_fd().as_raw_fd();
    Ok((Box::new(Polled(socket)), fd))
}

impl Inline {
    /// Moves the connection along and takes the stream's next DATA, END_STREAM or error, if
    /// one came and nothing is pending. Every poll of the connection goes through here: what
    /// it read for the stream must show in [`Tunnel::buffered`](crate::relay::Tunnel).
    fn fetch(&mut self) {
        self.driver.poll_conn();
        if !self.pending.is_empty() || self.eof || self.failed.is_some() {
            return;
        }
        let mut cx = Context::from_waker(&self.driver.waker);
        loop {
            match self.recv.poll_data(&mut cx) {
                // An empty DATA frame (END_STREAM alone often comes as one): the end, if it
                // is, shows at the next poll.
                Poll::Ready(Some(Ok(data))) if data.is_empty() => continue,
                Poll::Ready(Some(Ok(data))) => self.pending = data,
                Poll::Ready(Some(Err(e))) => self.failed = Some(e),
                Poll::Ready(None) => self.eof = true,
                Poll::Pending => {}
            }
            return;
        }
    }

    /// An `io::Error` for the relay, keeping the first failure's full story for `finish`.
    fn fail(&mut self, e: &h2::Error, kind: io::ErrorKind) -> io::Error {
        self.failed_with(describe(e), kind)
    }

    /// Keeps `said` as the tunnel's failure unless one came first; the relay gets it as `kind`.
    fn failed_with(&mut self, said: String, kind: io::ErrorKind) -> io::Error {
        if self.failure.is_none() {
            self.failure = Some(Error::msg(Kind::Tunnel, said.clone()));
        }
        io::Error::new(kind, said)
    }

    /// The connection ended under the stream without the stream hearing of it.
    fn lost(&mut self) -> io::Error {
        let said = match &self.driver.ended {
            Some(e) => describe(e),
            None => "the proxy closed the HTTP/2 connection".to_owned(),
        };
        self.failed_with(said, io::ErrorKind::ConnectionReset)
    }

    /// What the stream's window lets the relay write now, beyond the staged tail; asks for
    /// more once it is used up.
    fn room(&mut self) -> usize {
        if self.send.capacity() <= self.staged.len() {
            self.send.reserve_capacity(CHUNK);
        }
        self.send.capacity().saturating_sub(self.staged.len())
    }

    /// Queues one DATA frame. Once the proxy ended the stream (END_STREAM, often with
    /// RST_STREAM NO_ERROR after it), what stdin still gives has nowhere to go, as over
    /// HTTP/1.1: dropped, not an error.
    fn send_frame(&mut self, data: Bytes, end: bool) -> io::Result<()> {
        match self.send.send_data(data, end) {
            Ok(()) => Ok(()),
            Err(e) if self.eof => {
                debug!("after the proxy's END_STREAM: {}", describe(&e));
                Ok(())
            }
            Err(e) => Err(self.fail(&e, io::ErrorKind::BrokenPipe)),
        }
    }

    /// Queues the staged tail as one frame, with END_STREAM when `end` (then even empty).
    fn send_tail(&mut self, end: bool) -> io::Result<()> {
        if self.staged.is_empty() && !end {
            return Ok(());
        }
        let tail = self.staged.split().freeze();
        self.send_frame(tail, end)
    }

    /// Sends what is queued, lets the connection end (GOAWAY) and says how the tunnel ended:
    /// a reset or GOAWAY says more than the relay's view of it.
    pub fn finish(mut self) -> Result<(), Error> {
        // The relay flushes before it returns; should a tail still be held, it goes out now,
        // before the stream is dropped (which cancels DATA still queued).
        let _ = self.flush();
        let Inline {
            mut driver,
            send,
            recv,
            failure,
            ..
        } = self;
        // Every handle is gone: the connection sends what is queued, then GOAWAY.
        drop((send, recv));
        driver.close(CLOSE_GRACE);
        let goaway = driver
            .ended
            .as_ref()
            .filter(|e| e.is_go_away())
            .map(describe);
        match (failure, goaway) {
            (Some(_), Some(why)) => Err(Error::msg(Kind::Tunnel, why)),
            (Some(e), None) => Err(e),
            (None, _) => Ok(()),
        }
    }
}

impl Read for Inline {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.len());
                buf[..n].copy_from_slice(&self.pending[..n]);
                self.pending.advance(n);
                // The proxy may send as much again: memory stays bounded by the window plus
                // the relay's buffer, however long stdout stalls.
                let _ = self.recv.flow_control().release_capacity(n);
                return Ok(n);
            }
            if self.eof {
                return Ok(0);
            }
            if let Some(e) = self.failed.take() {
                return Err(self.fail(&e, io::ErrorKind::ConnectionReset));
            }
            self.fetch();
            if self.pending.is_empty() && !self.eof && self.failed.is_none() {
                if self.driver.conn.is_none() {
                    return Err(self.lost());
                }
                return Err(io::ErrorKind::WouldBlock.into());
            }
        }
    }
}

impl Write for Inline {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        // Window updates come in with the connection's reads.
        self.fetch();
        let mut room = self.room();
        if room == 0 && !self.staged.is_empty() {
            // The window's last bytes: out now, whole frame or not, or a proxy that grants
            // more only once all it gave is used would wait for them for ever.
            self.send_tail(false)?;
            self.fetch();
            room = self.room();
        }
        if room == 0 {
            let mut cx = Context::from_waker(&self.driver.waker);
            return match self.send.poll_reset(&mut cx) {
                Poll::Ready(Ok(r)) => {
                    let said = format!("the proxy reset the stream (RST_STREAM {r:?}: {r})");
                    Err(self.failed_with(said, io::ErrorKind::BrokenPipe))
                }
                Poll::Ready(Err(e)) => Err(self.fail(&e, io::ErrorKind::BrokenPipe)),
                Poll::Pending if self.driver.conn.is_none() => Err(self.lost()),
                Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
            };
        }
        let n = room.min(buf.len());
        self.staged.extend_from_slice(&buf[..n]);
        let whole = self.staged.len() - self.staged.len() % FRAME_PAYLOAD;
        if whole > 0 {
            let mut data = self.staged.split_to(whole).freeze();
            while !data.is_empty() {
                if let Err(e) = self.send_frame(data.split_to(FRAME_PAYLOAD), false) {
                    // The stream is gone: nothing after this may go out as if in order.
                    self.staged.clear();
                    return Err(e);
                }
            }
            // Out now, as far as the socket takes it.
            self.fetch();
        }
        Ok(n)
    }

    /// Sends the staged tail: the relay has nothing more to write now.
    fn flush(&mut self) -> io::Result<()> {
        self.send_tail(false)?;
        self.fetch();
        Ok(())
    }
}

impl mio::event::Source for Inline {
    fn register(&mut self, r: &mio::Registry, t: mio::Token, i: mio::Interest) -> io::Result<()> {
        mio::unix::SourceFd(&self.driver.fd).register(r, t, i)
    }

    fn reregister(&mut self, r: &mio::Registry, t: mio::Token, i: mio::Interest) -> io::Result<()> {
        mio::unix::SourceFd(&self.driver.fd).reregister(r, t, i)
    }

    fn deregister(&mut self, r: &mio::Registry) -> io::Result<()> {
        mio::unix::SourceFd(&self.driver.fd).deregister(r)
    }
}

impl crate::relay::Tunnel for Inline {
    /// The half-close: END_STREAM (RFC 9113 §8.5).
    fn shutdown_write(&mut self) -> io::Result<()> {
        self.send_tail(true)?;
        self.fetch();
        Ok(())
    }

    /// Reads and writes both move the connection (a read may bring the window a write waits
    /// for): any event on the socket is worth both.
    fn coupled(&self) -> bool {
        true
    }

    /// DATA, END_STREAM or an error already taken from the connection (by a write's poll),
    /// or the connection's end, with no event on the socket left to announce it: every poll
    /// of the connection takes what came for the stream into `pending` ([`Inline::fetch`]).
    fn buffered(&self) -> bool {
        !self.pending.is_empty() || self.eof || self.failed.is_some() || self.driver.conn.is_none()
    }

    /// Window granted by a WINDOW_UPDATE that a read took in.
    fn writable(&self) -> bool {
        self.send.capacity() > 0
    }
}
