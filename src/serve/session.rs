//! One forwarded connection on the engine's loop: the accepted client socket ↔ the tunnel,
//! driven by readiness, with the stdio relay's rules (src/relay.rs): client EOF →
//! `shutdown(Write)` on the tunnel, keep delivering; tunnel EOF → finish writing to the client
//! and close; the client gone → close at once; the far side refusing bytes → keep reading what
//! it sends, then fail.
//!
//! Each direction reuses the relay's [`Pipe`] (a buffer, copying) or [`Splicer`] (a kernel
//! pipe, `splice(2)`: the bytes never enter user space), but only while bytes are in flight:
//! either is borrowed from the engine's [`PipePool`] when a side may be readable and handed
//! back as soon as it is empty, so an idle tunnel holds its two sockets and a few hundred
//! bytes, no buffer and no pipe. A kernel pipe costs two descriptors, the resource a listening
//! daemon runs out of first: when none can be made (EMFILE), that loan copies instead.

use std::io;
use std::os::fd::RawFd;
use std::time::Instant;

use crate::relay::{Pipe, PumpError, Ready, Side, SplicePipe, Splicer, Tunnel};
use crate::sys::splice;

/// Bytes per borrowed buffer: a socket's queue moves in one or two reads, and 1,000 busy
/// tunnels hold at most 2 × 64 MiB.
pub const SESSION_BUF: usize = 64 * 1024;
/// Spare pipes kept for reuse; more are freed when returned.
const SPARE: usize = 64;
/// Spare kernel pipes kept for reuse: each holds two descriptors, the scarce resource, so
/// fewer than buffers (32 descriptors, within the engine's reserve).
const SPARE_SPLICE: usize = 16;

/// Buffers and kernel pipes for sessions, lent while bytes are in flight.
pub struct PipePool {
    spare: Vec<Pipe>,
    lent: usize,
    /// Whether sessions splice (Linux, and not turned off).
    splice: bool,
    spare_splice: Vec<SplicePipe>,
    lent_splice: usize,
}

impl PipePool {
    pub fn new() -> PipePool {
        PipePool {
            spare: Vec::new(),
            lent: 0,
            splice: splice::SUPPORTED,
            spare_splice: Vec::new(),
            lent_splice: 0,
        }
    }

    /// A pool that lends kernel pipes only when `splice` (`GIMLET_NO_SPLICE` unset), and
    /// buffers only otherwise.
    pub fn splicing(splice: bool) -> PipePool {
        PipePool {
            splice: splice && splice::SUPPORTED,
            ..PipePool::new()
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

    /// A kernel pipe, or `None` when none can be made now (out of descriptors: the caller
    /// copies instead).
    fn take_splice(&mut self) -> Option<SplicePipe> {
        let pipe = match self.spare_splice.pop() {
            Some(p) => p,
            None => splice::pipe_of(SESSION_BUF).ok()?,
        };
        self.lent_splice += 1;
        Some(pipe)
    }

    fn give_splice(&mut self, pipe: SplicePipe) {
        self.lent_splice -= 1;
        if self.spare_splice.len() < SPARE_SPLICE {
            self.spare_splice.push(pipe);
        }
    }

    fn lost_splice(&mut self) {
        self.lent_splice -= 1;
    }

    /// Buffers and kernel pipes lent out right now (for tests and the stats line).
    pub fn lent(&self) -> usize {
        self.lent + self.lent_splice
    }
}

impl Default for PipePool {
    fn default() -> Self {
        Self::new()
    }
}

/// What carries a direction's bytes while they are in flight.
enum Flow {
    Copy(Pipe),
    Splice(Splicer),
}

/// One direction: a buffer or a kernel pipe while bytes are in flight, its readiness, and
/// what it moved.
struct Dir {
    flow: Option<Flow>,
    /// The lent buffer's count when it was lent (a splicer starts at 0).
    base: u64,
    moved: u64,
    ready: Ready,
    /// The source ended and every byte was written.
    done: bool,
    /// Source and destination descriptors when both may be spliced.
    fds: Option<(RawFd, RawFd)>,
}

impl Dir {
    fn new(pool: &mut PipePool, first: &[u8], fds: Option<(RawFd, RawFd)>) -> Dir {
        let flow = (!first.is_empty()).then(|| {
            pool.lent += 1;
            Flow::Copy(Pipe::new(SESSION_BUF, first))
        });
        Dir {
            flow,
            base: 0,
            moved: 0,
            ready: Ready::both(),
            done: false,
            fds: fds.filter(|_| pool.splice),
        }
    }

    /// Borrows what carries the bytes: a kernel pipe when this direction splices and one can
    /// be had, else a buffer.
    fn borrow(&mut self, pool: &mut PipePool) {
        if let Some(pipe) = self.fds.and_then(|_| pool.take_splice()) {
            self.base = 0;
            self.flow = Some(Flow::Splice(Splicer::through(pipe)));
            return;
        }
        let pipe = pool.take();
        self.base = pipe.moved();
        self.flow = Some(Flow::Copy(pipe));
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
        if self.flow.is_none() {
            if !self.ready.src {
                return Ok(false);
            }
            self.borrow(pool);
        }
        let result = match self.flow.as_mut() {
            None => return Ok(false),
            Some(Flow::Copy(pipe)) if pipe.is_empty() => pipe.pump(src, dst, &mut self.ready),
            // Bytes already held (those that came with the proxy's reply) go out before more
            // are read: the client's first byte does not wait for a read that finds nothing.
            Some(Flow::Copy(pipe)) => pipe
                .flush(dst, &mut self.ready)
                .and_then(|m| Ok(pipe.pump(src, dst, &mut self.ready)? || m)),
            Some(Flow::Splice(splicer)) => {
                let (src_fd, dst_fd) = self.fds.unwrap_or((-1, -1));
                match splicer.pump(src_fd, dst_fd, &mut self.ready) {
                    Ok(m) => Ok(m),
                    Err(Ok(e)) => Err(e),
                    // The kernel cannot splice these (nothing was spliced, nothing is held):
                    // this direction copies from now on.
                    Err(Err(_unspliceable)) => {
                        self.fds = None;
                        self.give_back(pool, true);
                        return self.pump(src, dst, pool);
                    }
                }
            }
        };
        // `reuse`: what goes back to the pool is good for another tunnel. An empty kernel pipe
        // is, whether its source is still open or ended (a pipe holds no state of the socket):
        // dropping it at EOF cost every short tunnel a new pipe (pipe2 and two fcntl calls on
        // the next tunnel's first read, two closes here). A buffer remembers its EOF, so it
        // goes back only while its source is open.
        let (finished, idle, reuse) = match self.flow.as_ref() {
            Some(Flow::Copy(p)) => {
                let idle = p.is_empty() && !p.src_done();
                (p.finished(), idle, idle)
            }
            Some(Flow::Splice(s)) => {
                let idle = s.is_empty() && !s.src_done();
                (s.finished(), idle, s.is_empty())
            }
            None => (false, false, false),
        };
        if result.is_err() || finished || idle {
            // Empty and still open at the source: nothing in flight, back to the pool.
            self.give_back(pool, reuse && result.is_ok());
            self.done = finished;
        }
        result
    }

    /// Ends the loan: counts what moved, and returns the buffer or pipe to the pool when
    /// `reuse` (it is empty) or drops it.
    fn give_back(&mut self, pool: &mut PipePool, reuse: bool) {
        match self.flow.take() {
            Some(Flow::Copy(p)) => {
                self.moved += p.moved() - self.base;
                match reuse {
                    true => pool.give(p),
                    false => pool.lost(),
                }
            }
            Some(Flow::Splice(s)) => {
                self.moved += s.moved();
                match s.into_pipe() {
                    Ok(pipe) if reuse => pool.give_splice(pipe),
                    _ => pool.lost_splice(),
                }
            }
            None => {}
        }
    }

    /// Writes what is held, reading nothing more (the far side is done).
    fn flush<W: io::Write + ?Sized>(&mut self, dst: &mut W) {
        match self.flow.as_mut() {
            Some(Flow::Copy(p)) => {
                let _ = p.flush(dst, &mut self.ready);
            }
            Some(Flow::Splice(s)) => {
                let (src_fd, dst_fd) = self.fds.unwrap_or((-1, -1));
                let mut ready = Ready {
                    src: false,
                    dst: self.ready.dst,
                };
                let _ = s.pump(src_fd, dst_fd, &mut ready);
            }
            None => {}
        }
    }

    fn moved(&self) -> u64 {
        self.moved
            + match self.flow.as_ref() {
                Some(Flow::Copy(p)) => p.moved() - self.base,
                Some(Flow::Splice(s)) => s.moved(),
                None => 0,
            }
    }

    fn holds_bytes(&self) -> bool {
        match self.flow.as_ref() {
            Some(Flow::Copy(p)) => !p.is_empty(),
            Some(Flow::Splice(s)) => !s.is_empty(),
            None => false,
        }
    }

    fn release(&mut self, pool: &mut PipePool) {
        self.give_back(pool, false);
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
    C: Tunnel,
    T: Tunnel + ?Sized,
{
    /// `first`: tunnel bytes that came with the proxy's reply, for the client. Both ends
    /// plain sockets (no TLS): each direction splices while the pool lends kernel pipes.
    pub fn new(client: C, tunnel: Box<T>, first: &[u8], pool: &mut PipePool) -> Self {
        let now = Instant::now();
        let fds = client.splice_fd().zip(tunnel.splice_fd());
        Session {
            client,
            tunnel,
            up: Dir::new(pool, &[], fds),
            down: Dir::new(pool, first, fds.map(|(c, t)| (t, c))),
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
            self.up.flush(&mut *self.tunnel);
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
        assert!(s.up.flow.is_none() && s.down.flow.is_none());
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

    /// A connected loopback TCP pair: (ours, theirs), ours non-blocking.
    fn tcp_pair() -> (mio::net::TcpStream, std::net::TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let theirs = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (ours, _) = l.accept().unwrap();
        ours.set_nonblocking(true).unwrap();
        theirs
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        (mio::net::TcpStream::from_std(ours), theirs)
    }

    /// Drives with both sides presumed ready until `done` holds (the kernel's loopback may
    /// take a moment to queue what was written); the deadline only catches a hang.
    fn drive_until<C: Tunnel, T: Tunnel + ?Sized>(
        s: &mut Session<C, T>,
        pool: &mut PipePool,
        mut done: impl FnMut(&Outcome) -> bool,
    ) -> Outcome {
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        loop {
            s.client_ready(true, true);
            s.tunnel_ready(true, true);
            let outcome = s.drive(pool);
            if done(&outcome) {
                return outcome;
            }
            assert!(Instant::now() < deadline, "hung: {outcome:?}");
            std::thread::yield_now();
        }
    }

    #[test]
    fn sockets_splice_both_ways_pass_the_half_close_and_an_idle_session_holds_no_pipe() {
        let mut pool = PipePool::new();
        let (client, mut user) = tcp_pair();
        let (tunnel, mut far) = tcp_pair();
        let mut s = Session::new(client, Box::new(tunnel), &[], &mut pool);
        let up: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let down: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
        let writer = {
            let (mut user, up) = (user.try_clone().unwrap(), up.clone());
            std::thread::spawn(move || {
                user.write_all(&up).unwrap();
                user.shutdown(std::net::Shutdown::Write).unwrap();
            })
        };
        let reader = {
            let mut far = far.try_clone().unwrap();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                far.read_to_end(&mut got).unwrap();
                got
            })
        };
        far.write_all(&down).unwrap();
        // The client's EOF reaches the far side as a half-close, every byte before it.
        drive_until(&mut s, &mut pool, |_| reader.is_finished());
        writer.join().unwrap();
        assert_eq!(reader.join().unwrap(), up);
        // The far side still sends, then ends: the session closes, the user has it all.
        far.write_all(b" and bye").unwrap();
        far.shutdown(std::net::Shutdown::Write).unwrap();
        let end = drive_until(&mut s, &mut pool, |o| !matches!(o, Outcome::Open { .. }));
        assert!(matches!(end, Outcome::Closed), "{end:?}");
        assert_eq!(s.moved(), (up.len() as u64, down.len() as u64 + 8));
        drop(s);
        let mut got = Vec::new();
        user.read_to_end(&mut got).unwrap();
        assert_eq!(got, [down.as_slice(), b" and bye"].concat());
        assert_eq!(pool.lent(), 0);
    }

    /// A tunnel that ends both ways hands its empty kernel pipes back, and the next tunnel
    /// moves its bytes through them intact: short tunnels do not make a pipe each.
    #[test]
    fn pipes_of_an_ended_splicing_session_serve_the_next_one() {
        let mut pool = PipePool::new();
        if !pool.splice {
            return;
        }
        for round in 0..3u8 {
            let (client, mut user) = tcp_pair();
            let (tunnel, mut far) = tcp_pair();
            let mut s = Session::new(client, Box::new(tunnel), &[], &mut pool);
            let up = vec![b'u' + round; 70_000];
            let down = vec![b'd' + round; 90_000];
            let writer = {
                let (mut user, up) = (user.try_clone().unwrap(), up.clone());
                std::thread::spawn(move || {
                    user.write_all(&up).unwrap();
                    user.shutdown(std::net::Shutdown::Write).unwrap();
                })
            };
            let reader = {
                let mut far = far.try_clone().unwrap();
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    far.read_to_end(&mut got).unwrap();
                    got
                })
            };
            let user_reader = std::thread::spawn(move || {
                let mut got = Vec::new();
                user.read_to_end(&mut got).unwrap();
                got
            });
            // Up first, to its EOF (the far side's own EOF would end the session), then down.
            drive_until(&mut s, &mut pool, |_| reader.is_finished());
            writer.join().unwrap();
            assert_eq!(reader.join().unwrap(), up, "round {round}");
            let far_writer = {
                let down = down.clone();
                std::thread::spawn(move || {
                    far.write_all(&down).unwrap();
                    far.shutdown(std::net::Shutdown::Write).unwrap();
                })
            };
            let end = drive_until(&mut s, &mut pool, |o| !matches!(o, Outcome::Open { .. }));
            assert!(matches!(end, Outcome::Closed), "round {round}: {end:?}");
            far_writer.join().unwrap();
            drop(s);
            assert_eq!(user_reader.join().unwrap(), down, "round {round}");
            assert_eq!(pool.lent(), 0, "round {round}");
            assert!(
                !pool.spare_splice.is_empty(),
                "round {round}: the ended session's pipes went back"
            );
        }
    }

    #[test]
    fn an_idle_splicing_session_gives_its_pipe_back() {
        idle_session_gives_back(PipePool::new());
    }

    #[test]
    fn with_splicing_off_sessions_copy() {
        idle_session_gives_back(PipePool::splicing(false));
    }

    fn idle_session_gives_back(mut pool: PipePool) {
        let (client, mut user) = tcp_pair();
        let (tunnel, mut far) = tcp_pair();
        let mut s = Session::new(client, Box::new(tunnel), &[], &mut pool);
        user.write_all(b"ping").unwrap();
        let mut got = [0u8; 4];
        let reader = std::thread::spawn(move || {
            far.read_exact(&mut got).unwrap();
            (far, got)
        });
        drive_until(&mut s, &mut pool, |_| reader.is_finished());
        let (_far, got) = reader.join().unwrap();
        assert_eq!(&got, b"ping");
        // Nothing in flight: a last drive finds both sources empty and lends nothing.
        drive_until(&mut s, &mut pool, |o| {
            matches!(o, Outcome::Open { hot: false })
        });
        assert_eq!(pool.lent(), 0, "an idle tunnel holds its two sockets only");
        assert!(s.up.flow.is_none() && s.down.flow.is_none());
        match pool.splice {
            true => {
                assert_eq!(
                    pool.spare_splice.len(),
                    1,
                    "the pipe went back for the next session"
                );
                assert!(pool.spare.is_empty(), "no buffer was needed");
            }
            false => {
                assert_eq!(
                    pool.spare.len(),
                    1,
                    "the buffer went back for the next session"
                );
                assert!(pool.spare_splice.is_empty(), "no kernel pipe was made");
            }
        }
    }
}
