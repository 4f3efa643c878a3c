//! One forwarded connection on the engine's loop: the accepted client socket ↔ the tunnel,
//! driven by readiness, with the stdio relay's rules (src/relay.rs): client EOF →
//! `shutdown(Write)` on the tunnel, keep delivering; tunnel EOF → finish writing to the client
//! and close; the client gone → close at once; the far side refusing bytes → keep reading what
//! it sends, then fail.
//!
//! Each direction reuses the relay's [`Pipe`], but only while bytes are in flight: a pipe is
//! borrowed from the engine's [`PipePool`] when a side may be readable and handed back as soon
//! as it is empty, so an idle tunnel holds its two sockets and a few hundred bytes, no
//! buffers. No splice here: a splice pipe costs two fds per direction, and fds are what a
//! listening daemon runs out of first.

use std::io;
use std::time::Instant;

use crate::relay::{Pipe, PumpError, Ready, Side, Tunnel};

/// Bytes per borrowed buffer: a socket's queue moves in one or two reads, and 1,000 busy
/// tunnels hold at most 2 × 64 MiB.
pub const SESSION_BUF: usize = 64 * 1024;
/// Spare pipes kept for reuse; more are freed when returned.
const SPARE: usize = 64;

/// Buffers for sessions, lent while bytes are in flight.
pub struct PipePool {
    spare: Vec<Pipe>,
    lent: usize,
}

impl PipePool {
    pub fn new() -> PipePool {
        PipePool {
            spare: Vec::new(),
            lent: 0,
        }
    }

    fn take(&mut self) -> Pipe {
        self.lent += 1;
        self.spare
            .pop()
            .unwrap_or_else(|| Pipe::new(SESSION_BUF, &[]))
    }

    fn give(&mut self, pipe: Pipe) {
        self.lent -= 1;
        if self.spare.len() < SPARE {
            self.spare.push(pipe);
        }
    }

    fn lost(&mut self) {
        self.lent -= 1;
    }

    /// Pipes lent out right now (for tests and the stats line).
    pub fn lent(&self) -> usize {
        self.lent
    }
}

impl Default for PipePool {
    fn default() -> Self {
        Self::new()
    }
}

/// One direction: a pipe while bytes are in flight, its readiness, and what it moved.
struct Dir {
    pipe: Option<Pipe>,
    /// The lent pipe's count when it was lent.
    base: u64,
    moved: u64,
    ready: Ready,
    /// The source ended and every byte was written.
    done: bool,
}

impl Dir {
    fn new(pool: &mut PipePool, first: &[u8]) -> Dir {
        let pipe = (!first.is_empty()).then(|| {
            pool.lent += 1;
            Pipe::new(SESSION_BUF, first)
        });
        Dir {
            pipe,
            base: 0,
            moved: 0,
            ready: Ready::both(),
            done: false,
        }
    }

    fn pump<R, W>(
        &mut self,
        src: &mut R,
        dst: &mut W,
        pool: &mut PipePool,
    ) -> Result<bool, PumpError>
    where
        R: io::Read + ?Sized,
        W: io::Write + ?Sized,
    {
        if self.done {
            return Ok(false);
        }
        if self.pipe.is_none() {
            if !self.ready.src {
                return Ok(false);
            }
            let pipe = pool.take();
            self.base = pipe.moved();
            self.pipe = Some(pipe);
        }
        let Some(pipe) = self.pipe.as_mut() else {
            return Ok(false);
        };
        let result = pipe.pump(src, dst, &mut self.ready);
        let (finished, idle) = (pipe.finished(), pipe.is_empty() && !pipe.src_done());
        if result.is_err() || finished || idle {
            self.moved += pipe.moved() - self.base;
            let pipe = self.pipe.take();
            match pipe {
                // Empty and still open at the source: nothing in flight, back to the pool.
                Some(p) if idle && result.is_ok() => pool.give(p),
                _ => pool.lost(),
            }
            self.done = finished;
        }
        result
    }

    fn moved(&self) -> u64 {
        self.moved + self.pipe.as_ref().map_or(0, |p| p.moved() - self.base)
    }

    fn holds_bytes(&self) -> bool {
        self.pipe.as_ref().is_some_and(|p| !p.is_empty())
    }

    fn release(&mut self, pool: &mut PipePool) {
        if self.pipe.take().is_some() {
            pool.lost();
        }
    }
}

/// How a drive ended.
#[derive(Debug)]
pub enum Outcome {
    /// Waiting for readiness. `hot`: bytes moved and a side may still be ready, so drive it
    /// again soon (after others had their turn) without waiting for an event.
    Open { hot: bool },
    /// Both ends are done, or the client went away.
    Closed,
    /// An error ended it: what failed.
    Failed(String),
}

/// A relayed connection.
pub struct Session<C, T: ?Sized> {
    pub client: C,
    pub tunnel: Box<T>,
    up: Dir,
    down: Dir,
    tunnel_shut: bool,
    /// The far side refused bytes: reading goes on, then the session fails with this.
    up_failed: Option<io::Error>,
    pub started: Instant,
    pub last_moved: Instant,
}

fn peer_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset | io::ErrorKind::NotConnected
    )
}

impl<C, T> Session<C, T>
where
    C: io::Read + io::Write,
    T: Tunnel + ?Sized,
{
    /// `first`: tunnel bytes that came with the proxy's reply, for the client.
    pub fn new(client: C, tunnel: Box<T>, first: &[u8], pool: &mut PipePool) -> Self {
        let now = Instant::now();
        Session {
            client,
            tunnel,
            up: Dir::new(pool, &[]),
            down: Dir::new(pool, first),
            tunnel_shut: false,
            up_failed: None,
            started: now,
            last_moved: now,
        }
    }

    /// Bytes moved client → tunnel and tunnel → client.
    pub fn moved(&self) -> (u64, u64) {
        (self.up.moved(), self.down.moved())
    }

    /// Readiness of the client socket (from an event).
    pub fn client_ready(&mut self, readable: bool, writable: bool) {
        self.up.ready.src |= readable;
        self.down.ready.dst |= writable;
    }

    /// Readiness of the tunnel socket (from an event).
    pub fn tunnel_ready(&mut self, readable: bool, writable: bool) {
        self.down.ready.src |= readable;
        self.up.ready.dst |= writable;
    }

    /// Whether bytes wait for a destination: a blocked side must then get its edge (or the
    /// engine's watchdog) before the session can move on.
    pub fn holds_bytes(&self) -> bool {
        self.up.holds_bytes() || self.down.holds_bytes()
    }

    /// Marks both destinations writable again: the watchdog's retry, for an edge the kernel
    /// may never send (see relay.rs, WATCHDOG).
    pub fn retry_writes(&mut self) {
        self.up.ready.dst = true;
        self.down.ready.dst = true;
    }

    /// Gives the pipes back (the session is being dropped).
    pub fn release(&mut self, pool: &mut PipePool) {
        self.up.release(pool);
        self.down.release(pool);
    }

    /// Moves what can move now, one turn per direction.
    pub fn drive(&mut self, pool: &mut PipePool) -> Outcome {
        let outcome = self.step(pool);
        if !matches!(outcome, Outcome::Open { .. }) {
            self.release(pool);
        }
        outcome
    }

    fn step(&mut self, pool: &mut PipePool) -> Outcome {
        let mut moved = match self.down.pump(&mut *self.tunnel, &mut self.client, pool) {
            Ok(m) => m,
            Err(PumpError {
                side: Side::Dst,
                error,
            }) if peer_gone(&error) => return Outcome::Closed,
            Err(PumpError {
                side: Side::Dst,
                error,
            }) => return Outcome::Failed(format!("writing to the client: {error}")),
            Err(PumpError {
                side: Side::Src,
                error,
            }) => return Outcome::Failed(format!("reading from the tunnel: {error}")),
        };
        if self.down.done {
            // The far side is done: hand over what the client already sent if the tunnel takes
            // it now, as the stdio relay does; nothing more is owed.
            if let Some(e) = self.up_failed.take() {
                return Outcome::Failed(format!("writing to the tunnel: {e}"));
            }
            if let Some(p) = self.up.pipe.as_mut() {
                let _ = p.flush(&mut *self.tunnel, &mut self.up.ready);
            }
            let _ = self.tunnel.flush();
            return Outcome::Closed;
        }
        if self.up_failed.is_none() {
            match self.up.pump(&mut self.client, &mut *self.tunnel, pool) {
                Ok(m) => moved |= m,
                Err(PumpError {
                    side: Side::Src,
                    error,
                }) if peer_gone(&error) => return Outcome::Closed,
                Err(PumpError {
                    side: Side::Src,
                    error,
                }) => return Outcome::Failed(format!("reading from the client: {error}")),
                Err(PumpError {
                    side: Side::Dst,
                    error,
                }) if peer_gone(&error) => self.up_failed = Some(error),
                Err(PumpError {
                    side: Side::Dst,
                    error,
                }) => return Outcome::Failed(format!("writing to the tunnel: {error}")),
            }
            if self.up.done && !self.tunnel_shut {
                self.tunnel_shut = true;
                match self.tunnel.shutdown_write() {
                    Err(e) if !peer_gone(&e) => {
                        return Outcome::Failed(format!("closing the tunnel's sending side: {e}"));
                    }
                    _ => {}
                }
            }
            // Records the tunnel queued itself (TLS close_notify, key updates); a no-op on TCP.
            if self.up.ready.dst {
                match self.tunnel.flush() {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.up.ready.dst = false,
                    Err(e) if peer_gone(&e) => self.up_failed = Some(e),
                    Err(e) => return Outcome::Failed(format!("writing to the tunnel: {e}")),
                }
            }
        }
        if moved {
            self.last_moved = Instant::now();
        }
        let more = |d: &Dir| !d.done && (d.ready.src || d.holds_bytes()) && d.ready.dst;
        Outcome::Open {
            hot: moved && (more(&self.up) || more(&self.down)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::io::{Read, Write};

    /// A scripted socket: reads play a script then WouldBlock; writes accept everything.
    #[derive(Default)]
    struct Fake {
        script: VecDeque<io::Result<Vec<u8>>>,
        got: Vec<u8>,
        shut: bool,
        write_error: Option<io::ErrorKind>,
    }

    impl Read for Fake {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match self.script.pop_front() {
                None => Err(io::ErrorKind::WouldBlock.into()),
                Some(Err(e)) => Err(e),
                Some(Ok(d)) => {
                    buf[..d.len()].copy_from_slice(&d);
                    Ok(d.len())
                }
            }
        }
    }

    impl Write for Fake {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if let Some(k) = self.write_error {
                return Err(k.into());
            }
            self.got.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl mio::event::Source for Fake {
        fn register(
            &mut self,
            _: &mio::Registry,
            _: mio::Token,
            _: mio::Interest,
        ) -> io::Result<()> {
            Ok(())
        }
        fn reregister(
            &mut self,
            _: &mio::Registry,
            _: mio::Token,
            _: mio::Interest,
        ) -> io::Result<()> {
            Ok(())
        }
        fn deregister(&mut self, _: &mio::Registry) -> io::Result<()> {
            Ok(())
        }
    }

    impl Tunnel for Fake {
        fn shutdown_write(&mut self) -> io::Result<()> {
            self.shut = true;
            Ok(())
        }
    }

    fn fake(reads: &[&[u8]]) -> Fake {
        Fake {
            script: reads.iter().map(|r| Ok(r.to_vec())).collect(),
            ..Fake::default()
        }
    }

    fn run(s: &mut Session<Fake, Fake>, pool: &mut PipePool) -> Outcome {
        loop {
            match s.drive(pool) {
                Outcome::Open { hot: true } => continue,
                other => return other,
            }
        }
    }

    #[test]
    fn client_eof_half_closes_the_tunnel_and_delivery_goes_on() {
        let mut pool = PipePool::new();
        let client = fake(&[b"ping", b""]);
        let tunnel = Box::new(fake(&[b"pong"]));
        let mut s = Session::new(client, tunnel, b"early ", &mut pool);
        assert!(matches!(
            run(&mut s, &mut pool),
            Outcome::Open { hot: false }
        ));
        assert!(
            s.tunnel.shut,
            "client EOF must shut the tunnel's sending side"
        );
        assert_eq!(s.tunnel.got, b"ping");
        assert_eq!(s.client.got, b"early pong");
        // The far side answers and closes: the session ends.
        s.tunnel.script.push_back(Ok(b" bye".to_vec()));
        s.tunnel.script.push_back(Ok(Vec::new()));
        s.tunnel_ready(true, false);
        assert!(matches!(run(&mut s, &mut pool), Outcome::Closed));
        assert_eq!(s.client.got, b"early pong bye");
        assert_eq!(s.moved(), (4, 14));
        assert_eq!(pool.lent(), 0);
    }

    #[test]
    fn an_idle_session_holds_no_buffer() {
        let mut pool = PipePool::new();
        let mut s = Session::new(fake(&[b"a"]), Box::new(fake(&[b"b"])), &[], &mut pool);
        assert!(matches!(
            run(&mut s, &mut pool),
            Outcome::Open { hot: false }
        ));
        assert_eq!(pool.lent(), 0, "nothing in flight, nothing borrowed");
        assert!(s.up.pipe.is_none() && s.down.pipe.is_none());
        assert_eq!(
            pool.spare.len(),
            1,
            "the buffer went back for the next session"
        );
        assert_eq!(s.moved(), (1, 1));
    }

    #[test]
    fn the_client_going_away_closes_without_error() {
        let mut pool = PipePool::new();
        let mut client = fake(&[]);
        client.write_error = Some(io::ErrorKind::BrokenPipe);
        let mut s = Session::new(client, Box::new(fake(&[b"data"])), &[], &mut pool);
        assert!(matches!(run(&mut s, &mut pool), Outcome::Closed));
        assert_eq!(pool.lent(), 0);
    }

    #[test]
    fn a_tunnel_that_refuses_bytes_still_delivers_then_fails() {
        let mut pool = PipePool::new();
        let mut tunnel = fake(&[b"last words"]);
        tunnel.write_error = Some(io::ErrorKind::ConnectionReset);
        let mut s = Session::new(fake(&[b"x"]), Box::new(tunnel), &[], &mut pool);
        assert!(matches!(run(&mut s, &mut pool), Outcome::Open { .. }));
        s.tunnel.script.push_back(Ok(Vec::new()));
        s.tunnel_ready(true, false);
        match run(&mut s, &mut pool) {
            Outcome::Failed(why) => assert!(why.starts_with("writing to the tunnel"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(s.client.got, b"last words");
        assert_eq!(pool.lent(), 0);
    }
}
