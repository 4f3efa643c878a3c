//! The tunnel's poll loop: stdin → socket and socket → stdout, with half-close (RFC 9110
//! §9.3.6) and bounded buffers. The only hot path.
//!
//! Each direction is a [`Pipe`] with a fixed buffer: it reads while there is room and writes
//! while there is data, until a side would block. Readiness from mio is a hint: a flag per side
//! is set by events and cleared only by `WouldBlock`, so registrations never change per chunk.
//! stdin or stdout that epoll refuses (regular files, `/dev/null`: EPERM) is simply always
//! ready, which is true of such files.
//!
//! Endings: stdin EOF → `shutdown(Write)` on the socket, keep delivering; socket EOF → finish
//! writing stdout and stop, even though stdin is still open; stdout gone (EPIPE) → stop at once.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use crate::sys::stdio::{NonBlocking, RawIo};

/// Buffer per direction. Large enough that a 64 KiB pipe or a socket's queue moves in one
/// read; small enough that memory stays flat.
pub const BUF_SIZE: usize = 128 * 1024;
/// Bytes one `pump` call may move before yielding, so neither direction starves the other.
const TURN: u64 = 4 * BUF_SIZE as u64;

/// Readiness hints for one direction.
#[derive(Clone, Copy, Debug)]
pub struct Ready {
    pub src: bool,
    pub dst: bool,
}

impl Ready {
    /// Both sides presumed ready: try the I/O and let `WouldBlock` say otherwise.
    pub const fn both() -> Ready {
        Ready {
            src: true,
            dst: true,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Src,
    Dst,
}

#[derive(Debug)]
pub struct PumpError {
    pub side: Side,
    pub error: io::Error,
}

/// One direction of the tunnel: a bounded buffer between a reader and a writer.
pub struct Pipe {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    eof: bool,
    moved: u64,
}

impl Pipe {
    /// A pipe holding `initial` bytes to write first (the bytes that came with the proxy's 200).
    pub fn new(capacity: usize, initial: &[u8]) -> Pipe {
        let mut buf = vec![0; capacity.max(initial.len())].into_boxed_slice();
        buf[..initial.len()].copy_from_slice(initial);
        Pipe {
            buf,
            start: 0,
            end: initial.len(),
            eof: false,
            moved: 0,
        }
    }

    /// Bytes written to the destination so far.
    pub fn moved(&self) -> u64 {
        self.moved
    }

    /// The source reached EOF.
    pub fn src_done(&self) -> bool {
        self.eof
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// The source reached EOF and every byte was written.
    pub fn finished(&self) -> bool {
        self.eof && self.is_empty()
    }

    /// Moves bytes until neither side can go on (or a turn's worth has moved). Returns whether
    /// any byte moved. Interrupted calls are retried; `WouldBlock` clears that side's flag.
    pub fn pump<R, W>(
        &mut self,
        src: &mut R,
        dst: &mut W,
        ready: &mut Ready,
    ) -> Result<bool, PumpError>
    where
        R: Read + ?Sized,
        W: Write + ?Sized,
    {
        let before = self.moved;
        let mut progress = false;
        loop {
            let mut again = false;
            if ready.src && !self.eof && self.end < self.buf.len() {
                match src.read(&mut self.buf[self.end..]) {
                    Ok(0) => self.eof = true,
                    Ok(n) => {
                        self.end += n;
                        again = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => ready.src = false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => again = true,
                    Err(error) => {
                        return Err(PumpError {
                            side: Side::Src,
                            error,
                        });
                    }
                }
            }
            if self.write(dst, ready)? {
                progress = true;
                again = true;
            }
            if !again || self.moved - before >= TURN {
                return Ok(progress);
            }
        }
    }

    /// Writes what is buffered, without reading more.
    pub fn flush<W: Write + ?Sized>(
        &mut self,
        dst: &mut W,
        ready: &mut Ready,
    ) -> Result<bool, PumpError> {
        let mut progress = false;
        while self.write(dst, ready)? {
            progress = true;
        }
        Ok(progress)
    }

    fn write<W: Write + ?Sized>(
        &mut self,
        dst: &mut W,
        ready: &mut Ready,
    ) -> Result<bool, PumpError> {
        if !ready.dst || self.is_empty() {
            return Ok(false);
        }
        match dst.write(&self.buf[self.start..self.end]) {
            Ok(0) => Err(PumpError {
                side: Side::Dst,
                error: io::ErrorKind::WriteZero.into(),
            }),
            Ok(n) => {
                self.start += n;
                self.moved += n as u64;
                if self.start == self.end {
                    (self.start, self.end) = (0, 0);
                } else if self.end == self.buf.len() {
                    // Full at the tail: slide the unwritten bytes down so reading can go on.
                    self.buf.copy_within(self.start..self.end, 0);
                    (self.start, self.end) = (0, self.end - self.start);
                }
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                ready.dst = false;
                Ok(false)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(true),
            Err(error) => Err(PumpError {
                side: Side::Dst,
                error,
            }),
        }
    }
}

/// The socket side of the tunnel.
pub trait Tunnel: Read + Write + mio::event::Source {
    fn shutdown_write(&mut self) -> io::Result<()>;
}

impl Tunnel for mio::net::TcpStream {
    fn shutdown_write(&mut self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}

/// Byte counts of a finished tunnel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub up: u64,
    pub down: u64,
}

/// Why the relay stopped early.
#[derive(Debug)]
pub enum RelayError {
    ReadInput(io::Error),
    WriteOutput(io::Error),
    ReadTunnel(io::Error),
    WriteTunnel(io::Error),
    Idle(Duration),
    Poll(io::Error),
}

impl fmt::Display for RelayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RelayError::ReadInput(e) => write!(f, "reading standard input: {e}"),
            RelayError::WriteOutput(e) => write!(f, "writing standard output: {e}"),
            RelayError::ReadTunnel(e) => write!(f, "reading from the tunnel: {e}"),
            RelayError::WriteTunnel(e) => write!(f, "writing to the tunnel: {e}"),
            RelayError::Idle(d) => write!(
                f,
                "no data in either direction for {}s (--idle-timeout)",
                d.as_secs_f64()
            ),
            RelayError::Poll(e) => write!(f, "waiting for I/O: {e}"),
        }
    }
}

impl std::error::Error for RelayError {}

const INPUT: Token = Token(0);
const OUTPUT: Token = Token(1);
const SOCKET: Token = Token(2);

/// Registers a stdio fd; `Ok(false)` when epoll refuses it (regular files, `/dev/null`).
fn register_fd(
    poll: &Poll,
    fd: BorrowedFd<'_>,
    token: Token,
    interest: Interest,
) -> io::Result<bool> {
    match poll
        .registry()
        .register(&mut SourceFd(&fd.as_raw_fd()), token, interest)
    {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => Ok(false),
        Err(e) => Err(e),
    }
}

fn peer_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset | io::ErrorKind::NotConnected
    )
}

/// Relays between `input`/`output` and the tunnel until the tunnel's far side has closed and
/// everything it sent was written, or `output` went away. `leftover` is written to `output`
/// first. `O_NONBLOCK` is set on pollable stdio fds and restored before returning.
pub fn relay<T: Tunnel>(
    input: BorrowedFd<'_>,
    output: BorrowedFd<'_>,
    tunnel: &mut T,
    leftover: &[u8],
    idle_timeout: Option<Duration>,
) -> Result<Stats, RelayError> {
    let mut poll = Poll::new().map_err(RelayError::Poll)?;
    let input_polled =
        register_fd(&poll, input, INPUT, Interest::READABLE).map_err(RelayError::ReadInput)?;
    let output_polled =
        register_fd(&poll, output, OUTPUT, Interest::WRITABLE).map_err(RelayError::WriteOutput)?;
    // Guards drop in reverse order: output's flags first, then input's, which is right when both
    // fds share one file description (a socketpair from the caller).
    let _input_guard = if input_polled {
        Some(NonBlocking::set(input).map_err(RelayError::ReadInput)?)
    } else {
        None
    };
    let _output_guard = if output_polled {
        Some(NonBlocking::set(output).map_err(RelayError::WriteOutput)?)
    } else {
        None
    };
    poll.registry()
        .register(tunnel, SOCKET, Interest::READABLE | Interest::WRITABLE)
        .map_err(RelayError::Poll)?;

    let (mut stdin, mut stdout) = (RawIo::new(input), RawIo::new(output));
    let mut up = Pipe::new(BUF_SIZE, &[]);
    let mut down = Pipe::new(BUF_SIZE, leftover);
    let (mut up_ready, mut down_ready) = (Ready::both(), Ready::both());
    // Set when the far side refused more bytes: reading goes on, so everything it sent is
    // still delivered, and then the run fails, because stdin bytes were not.
    let mut up_failed: Option<io::Error> = None;
    let mut write_shut = false;
    let mut events = Events::with_capacity(8);
    let mut last_moved = Instant::now();
    let stats = |up: &Pipe, down: &Pipe| Stats {
        up: up.moved(),
        down: down.moved(),
    };

    loop {
        let mut moved = match down.pump(tunnel, &mut stdout, &mut down_ready) {
            Ok(m) => m,
            Err(PumpError {
                side: Side::Dst,
                error,
            }) if error.kind() == io::ErrorKind::BrokenPipe => {
                return Ok(stats(&up, &down));
            }
            Err(PumpError {
                side: Side::Dst,
                error,
            }) => return Err(RelayError::WriteOutput(error)),
            Err(PumpError {
                side: Side::Src,
                error,
            }) => return Err(RelayError::ReadTunnel(error)),
        };
        if down.finished() {
            // The far side is done. Hand over what stdin already gave us if the socket takes it
            // now; the far side stopped sending, so nothing more is owed.
            return match up_failed {
                Some(e) => Err(RelayError::WriteTunnel(e)),
                None => {
                    let _ = up.flush(tunnel, &mut up_ready);
                    Ok(stats(&up, &down))
                }
            };
        }
        if up_failed.is_none() {
            match up.pump(&mut stdin, tunnel, &mut up_ready) {
                Ok(m) => moved |= m,
                Err(PumpError {
                    side: Side::Src,
                    error,
                }) => return Err(RelayError::ReadInput(error)),
                // The far side reset or closed: stop sending but keep reading. Linux reports a
                // reset once, so the read side may see only EOF; the error is kept for the end.
                Err(PumpError {
                    side: Side::Dst,
                    error,
                }) if peer_gone(&error) => up_failed = Some(error),
                Err(PumpError {
                    side: Side::Dst,
                    error,
                }) => return Err(RelayError::WriteTunnel(error)),
            }
            if up.finished() && !write_shut {
                write_shut = true;
                match tunnel.shutdown_write() {
                    Err(e) if !peer_gone(&e) => return Err(RelayError::WriteTunnel(e)),
                    _ => {}
                }
            }
        }

        let now = Instant::now();
        if moved {
            last_moved = now;
        }
        let timeout = if moved {
            // Still busy: only collect readiness that a blocked side may be waiting for.
            let blocked = !(up_ready.src && up_ready.dst && down_ready.src && down_ready.dst);
            if !blocked {
                continue;
            }
            Some(Duration::ZERO)
        } else {
            match idle_timeout {
                Some(limit) => {
                    let left = (last_moved + limit).saturating_duration_since(now);
                    if left.is_zero() {
                        return Err(RelayError::Idle(limit));
                    }
                    Some(left)
                }
                None => None,
            }
        };
        match poll.poll(&mut events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(RelayError::Poll(e)),
        }
        for event in events.iter() {
            let hangup = event.is_error() || event.is_read_closed() || event.is_write_closed();
            match event.token() {
                INPUT => up_ready.src = true,
                OUTPUT => down_ready.dst = true,
                _ => {
                    if event.is_readable() || hangup {
                        down_ready.src = true;
                    }
                    if event.is_writable() || hangup {
                        up_ready.dst = true;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// A reader that plays a script of results, then WouldBlock forever.
    struct ScriptReader(VecDeque<io::Result<Vec<u8>>>);

    impl Read for ScriptReader {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match self.0.pop_front() {
                None => Err(io::ErrorKind::WouldBlock.into()),
                Some(Err(e)) => Err(e),
                Some(Ok(mut data)) => {
                    let n = data.len().min(buf.len());
                    buf[..n].copy_from_slice(&data[..n]);
                    if n < data.len() {
                        self.0.push_front(Ok(data.split_off(n)));
                    }
                    Ok(n)
                }
            }
        }
    }

    fn script(items: Vec<io::Result<&[u8]>>) -> ScriptReader {
        ScriptReader(items.into_iter().map(|r| r.map(<[u8]>::to_vec)).collect())
    }

    fn err(kind: io::ErrorKind) -> io::Result<&'static [u8]> {
        Err(kind.into())
    }

    /// A writer that accepts at most `limits[i]` bytes on call i (0 = WouldBlock), then all.
    #[derive(Default)]
    struct ScriptWriter {
        got: Vec<u8>,
        limits: VecDeque<usize>,
        fail: Option<io::ErrorKind>,
    }

    impl Write for ScriptWriter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if let Some(kind) = self.fail {
                return Err(kind.into());
            }
            let n = match self.limits.pop_front() {
                Some(0) => return Err(io::ErrorKind::WouldBlock.into()),
                Some(l) => l.min(buf.len()),
                None => buf.len(),
            };
            self.got.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn bytes_flow_in_order_through_short_writes() {
        let mut src = script(vec![Ok(b"hello "), Ok(b"world"), Ok(b"")]);
        let mut dst = ScriptWriter {
            limits: [1, 2, 3].into(),
            ..Default::default()
        };
        let mut pipe = Pipe::new(8, &[]);
        let mut ready = Ready::both();
        while !pipe.finished() {
            assert!(pipe.pump(&mut src, &mut dst, &mut ready).unwrap() || pipe.finished());
        }
        assert_eq!(dst.got, b"hello world");
        assert_eq!(pipe.moved(), 11);
    }

    #[test]
    fn leftover_is_written_before_anything_read() {
        let mut src = script(vec![Ok(b" after"), Ok(b"")]);
        let mut dst = ScriptWriter::default();
        let mut pipe = Pipe::new(4, b"first bytes");
        let mut ready = Ready::both();
        while !pipe.finished() {
            pipe.pump(&mut src, &mut dst, &mut ready).unwrap();
        }
        assert_eq!(dst.got, b"first bytes after");
    }

    #[test]
    fn would_block_on_the_reader_clears_only_its_flag() {
        let mut src = script(vec![Ok(b"abc")]);
        let mut dst = ScriptWriter::default();
        let mut pipe = Pipe::new(16, &[]);
        let mut ready = Ready::both();
        assert!(pipe.pump(&mut src, &mut dst, &mut ready).unwrap());
        assert!(!ready.src && ready.dst);
        assert!(!pipe.pump(&mut src, &mut dst, &mut ready).unwrap());
        assert!(!pipe.src_done());
        assert_eq!(dst.got, b"abc");
    }

    #[test]
    fn a_blocked_writer_bounds_the_buffer_and_loses_nothing() {
        let data: Vec<u8> = (0..100u8).collect();
        let mut src = script(vec![Ok(&data), Ok(b"")]);
        let mut dst = ScriptWriter {
            limits: [5, 0].into(),
            ..Default::default()
        };
        let mut pipe = Pipe::new(16, &[]);
        let mut ready = Ready::both();
        pipe.pump(&mut src, &mut dst, &mut ready).unwrap();
        // Writer blocked after 5 bytes: the pipe read one buffer's worth and stopped.
        assert!(!ready.dst && ready.src);
        assert_eq!(dst.got.len(), 5);
        assert!(
            !pipe.pump(&mut src, &mut dst, &mut ready).unwrap(),
            "must not read past a full buffer"
        );
        ready.dst = true;
        while !pipe.finished() {
            pipe.pump(&mut src, &mut dst, &mut ready).unwrap();
        }
        assert_eq!(dst.got, data);
    }

    #[test]
    fn interrupted_calls_are_retried() {
        let mut src = script(vec![err(io::ErrorKind::Interrupted), Ok(b"x"), Ok(b"")]);
        let mut dst = ScriptWriter::default();
        let mut pipe = Pipe::new(16, &[]);
        let mut ready = Ready::both();
        pipe.pump(&mut src, &mut dst, &mut ready).unwrap();
        assert!(pipe.finished());
        assert_eq!(dst.got, b"x");
    }

    #[test]
    fn errors_name_their_side() {
        let mut src = script(vec![err(io::ErrorKind::ConnectionReset)]);
        let mut pipe = Pipe::new(16, &[]);
        let e = pipe
            .pump(&mut src, &mut ScriptWriter::default(), &mut Ready::both())
            .unwrap_err();
        assert_eq!(
            (e.side, e.error.kind()),
            (Side::Src, io::ErrorKind::ConnectionReset)
        );

        let mut src = script(vec![Ok(b"data")]);
        let mut dst = ScriptWriter {
            fail: Some(io::ErrorKind::BrokenPipe),
            ..Default::default()
        };
        let e = pipe
            .pump(&mut src, &mut dst, &mut Ready::both())
            .unwrap_err();
        assert_eq!(
            (e.side, e.error.kind()),
            (Side::Dst, io::ErrorKind::BrokenPipe)
        );
    }

    #[test]
    fn eof_with_data_buffered_is_not_finished_until_written() {
        let mut src = script(vec![Ok(b"tail"), Ok(b"")]);
        let mut dst = ScriptWriter {
            limits: [0].into(),
            ..Default::default()
        };
        let mut pipe = Pipe::new(16, &[]);
        let mut ready = Ready::both();
        pipe.pump(&mut src, &mut dst, &mut ready).unwrap();
        assert!(pipe.src_done() && !pipe.finished());
        ready.dst = true;
        pipe.flush(&mut dst, &mut ready).unwrap();
        assert!(pipe.finished());
        assert_eq!(dst.got, b"tail");
    }

    #[test]
    fn an_endless_source_yields_its_turn() {
        struct Zeros;
        impl Read for Zeros {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                buf.fill(0);
                Ok(buf.len())
            }
        }
        let mut pipe = Pipe::new(1024, &[]);
        assert!(
            pipe.pump(&mut Zeros, &mut io::sink(), &mut Ready::both())
                .unwrap()
        );
        assert!(pipe.moved() >= TURN && pipe.moved() < TURN + 2048);
    }
}
