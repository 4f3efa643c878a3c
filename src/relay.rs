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
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use crate::sys::splice;
use crate::sys::stdio::{NonBlocking, RawIo};

/// Buffer per direction. Large enough that a 64 KiB pipe or a socket's queue moves in one
/// read; small enough that memory stays flat.
pub const BUF_SIZE: usize = 128 * 1024;
/// Whether stdin → socket splices too. Measured (benches/run, loopback, 512 MiB x 3): copying
/// moved 1289 MB/s at 0.48 CPU s/GiB, splicing 959 MB/s at 0.53; the kernel's pipe-to-socket
/// path sends page by page. Socket → stdout splices: 2971 MB/s against 1098 copying.
const SPLICE_UP: bool = false;
/// Longest sleep while bytes wait for a destination marked blocked. Its edge should wake us
/// sooner; this only bounds the damage if the kernel never sends it (socket memory refused
/// under cgroup pressure leaves a socket "writable" with nothing in flight to ACK).
const WATCHDOG: Duration = Duration::from_millis(250);
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
    /// The source failed: reported once the bytes read before it are written.
    failed: Option<io::Error>,
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
            failed: None,
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
        self.eof && self.is_empty() && self.failed.is_none()
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
                    // Hold the error until what came before it is written: a reset right after
                    // the proxy's 200 must not swallow the bytes that came with it.
                    Err(error) => {
                        self.failed = Some(error);
                        self.eof = true;
                    }
                }
            }
            if self.write(dst, ready)? {
                progress = true;
                again = true;
            }
            if self.is_empty() {
                if let Some(error) = self.failed.take() {
                    return Err(PumpError {
                        side: Side::Src,
                        error,
                    });
                }
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

/// Most bytes one splice call is asked to move.
const SPLICE_CHUNK: usize = 1 << 20;
/// Most bytes read(2) takes past an urgent mark before splicing resumes.
const MARK_READ: usize = 16 * 1024;

/// One direction of the tunnel moved by `splice(2)`: bytes go from kernel buffer to kernel
/// buffer and never through user space. Directly when one end is a pipe; through a pipe of
/// our own when neither is (a socketpair as stdio). Same contract as [`Pipe`]: readiness flags
/// cleared only on `WouldBlock`, a turn's worth per call, EOF and errors attributed to a side.
pub struct Splicer {
    /// Bytes to write with plain `write` before splicing goes on: those that came with the
    /// 200, later those read past an urgent mark.
    head: Vec<u8>,
    head_done: usize,
    mid: Option<Mid>,
    /// Which end is the tunnel socket, to attribute connection errors of a direct splice.
    socket_is_src: bool,
    eof: bool,
    moved: u64,
    /// Bytes moved by splice itself: a fallback to copying is safe only while it is zero.
    spliced: u64,
    /// The source failed while our pipe still held bytes: reported once they are written.
    failed: Option<io::Error>,
    /// The last pump stopped on an EAGAIN neither side explains: poll again soon.
    unexplained: bool,
}

/// Our own pipe between two non-pipe ends, and how full it is.
struct Mid {
    read: std::os::fd::OwnedFd,
    write: std::os::fd::OwnedFd,
    capacity: usize,
    filled: usize,
}

/// A pipe for [`Splicer::through`]: read end, write end, capacity.
pub type SplicePipe = (std::os::fd::OwnedFd, std::os::fd::OwnedFd, usize);

/// Raised when the kernel cannot splice these fds: the caller falls back to copying.
#[derive(Debug)]
pub struct Unspliceable;

impl Splicer {
    /// `direct` when one end is a pipe; otherwise an intermediate pipe is made.
    pub fn new(direct: bool, socket_is_src: bool, head: &[u8]) -> io::Result<Splicer> {
        let mid = if direct {
            None
        } else {
            let (read, write, capacity) = splice::pipe()?;
            Some(Mid {
                read,
                write,
                capacity,
                filled: 0,
            })
        };
        Ok(Splicer {
            head: head.to_vec(),
            head_done: 0,
            mid,
            socket_is_src,
            eof: false,
            moved: 0,
            spliced: 0,
            failed: None,
            unexplained: false,
        })
    }

    /// Socket to socket through a pipe the caller lends (listen mode's sessions borrow one
    /// only while bytes are in flight); [`Splicer::into_pipe`] gives it back.
    pub fn through(pipe: SplicePipe) -> Splicer {
        let (read, write, capacity) = pipe;
        Splicer {
            head: Vec::new(),
            head_done: 0,
            mid: Some(Mid {
                read,
                write,
                capacity,
                filled: 0,
            }),
            socket_is_src: true,
            eof: false,
            moved: 0,
            spliced: 0,
            failed: None,
            unexplained: false,
        }
    }

    /// The lent pipe back when it holds no byte; otherwise the splicer, unchanged.
    pub fn into_pipe(mut self) -> Result<SplicePipe, Splicer> {
        match self.mid.take() {
            Some(m) if m.filled == 0 && self.head_done == self.head.len() => {
                Ok((m.read, m.write, m.capacity))
            }
            mid => {
                self.mid = mid;
                Err(self)
            }
        }
    }

    /// No byte read and not yet written.
    pub fn is_empty(&self) -> bool {
        self.head_done == self.head.len() && self.mid.as_ref().is_none_or(|m| m.filled == 0)
    }

    /// The source reached EOF (or failed).
    pub fn src_done(&self) -> bool {
        self.eof
    }

    pub fn moved(&self) -> u64 {
        self.moved
    }

    pub fn finished(&self) -> bool {
        self.eof
            && self.failed.is_none()
            && self.head_done == self.head.len()
            && self.mid.as_ref().is_none_or(|m| m.filled == 0)
    }

    /// Which end a direct splice's error belongs to: EPIPE is always the destination's;
    /// connection errors are the socket's; anything else is the stdio end's.
    fn side_of(&self, e: &io::Error) -> Side {
        let socket_error = matches!(
            e.raw_os_error(),
            Some(
                libc::ECONNRESET
                    | libc::ETIMEDOUT
                    | libc::ENOTCONN
                    | libc::ECONNABORTED
                    | libc::EHOSTUNREACH
                    | libc::ENETUNREACH
            )
        );
        let socket_side = if self.socket_is_src {
            Side::Src
        } else {
            Side::Dst
        };
        let stdio_side = if self.socket_is_src {
            Side::Dst
        } else {
            Side::Src
        };
        match e.raw_os_error() {
            Some(libc::EPIPE) => Side::Dst,
            _ if socket_error => socket_side,
            _ => stdio_side,
        }
    }

    /// Moves bytes until a side would block, EOF, or a turn's worth has moved.
    pub fn pump(
        &mut self,
        src_fd: RawFd,
        dst_fd: RawFd,
        ready: &mut Ready,
    ) -> Result<bool, Result<PumpError, Unspliceable>> {
        let before = self.moved;
        let mut progress = false;
        self.unexplained = false;
        loop {
            progress |= self.write_head(dst_fd, ready)?;
            if self.head_done < self.head.len() {
                return Ok(progress);
            }
            progress |= match self.mid.is_some() {
                false => self.splice_direct(src_fd, dst_fd, ready, before)?,
                true => self.splice_through_mid(src_fd, dst_fd, ready, before)?,
            };
            // Splicing stops with a fresh head when it read past an urgent mark: write that
            // head, then splice on.
            if self.head_done == self.head.len() || self.moved - before >= TURN {
                return Ok(progress);
            }
        }
    }

    /// Writes the head with plain `write` until it is gone or the destination blocks.
    fn write_head(
        &mut self,
        dst_fd: RawFd,
        ready: &mut Ready,
    ) -> Result<bool, Result<PumpError, Unspliceable>> {
        let mut progress = false;
        while self.head_done < self.head.len() && ready.dst {
            match splice::write(dst_fd, &self.head[self.head_done..]) {
                Ok(n) => {
                    self.head_done += n;
                    self.moved += n as u64;
                    progress = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => ready.dst = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    return Err(Ok(PumpError {
                        side: Side::Dst,
                        error,
                    }));
                }
            }
        }
        Ok(progress)
    }

    /// The source stopped at an urgent mark (TCP urgent data, `MSG_OOB`), where splice(2)
    /// stops for good. read(2) moves past it as the copy path does: with SO_OOBINLINE off the
    /// urgent byte is not part of the stream and is skipped; the bytes after it become the
    /// head, written before splicing goes on. Called only when nothing read earlier is still
    /// buffered, so the order holds. The caller stops splicing after it: the head goes first.
    fn read_past_mark(
        &mut self,
        src_fd: RawFd,
        ready: &mut Ready,
    ) -> Result<(), Result<PumpError, Unspliceable>> {
        let mut buf = vec![0; MARK_READ];
        loop {
            return match splice::read(src_fd, &mut buf) {
                Ok(0) => {
                    self.eof = true;
                    Ok(())
                }
                Ok(n) => {
                    buf.truncate(n);
                    self.head = buf;
                    self.head_done = 0;
                    Ok(())
                }
                // Past the urgent byte with nothing after it yet, or the byte itself has not
                // come (its pointer can arrive first): either way the next byte's arrival
                // sends an edge.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready.src = false;
                    Ok(())
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => Err(Ok(PumpError {
                    side: Side::Src,
                    error,
                })),
            };
        }
    }

    /// Splices straight from source to destination (one of them is a pipe).
    fn splice_direct(
        &mut self,
        src_fd: RawFd,
        dst_fd: RawFd,
        ready: &mut Ready,
        before: u64,
    ) -> Result<bool, Result<PumpError, Unspliceable>> {
        let mut progress = false;
        let mut retries = 0;
        while self.moved - before < TURN && !self.eof && ready.src && ready.dst {
            match splice::splice(src_fd, dst_fd, SPLICE_CHUNK) {
                // A FIN behind an urgent mark also reads as 0 here.
                Ok(0) if splice::at_mark(src_fd) => {
                    self.read_past_mark(src_fd, ready)?;
                    break;
                }
                Ok(0) => self.eof = true,
                Ok(n) => {
                    self.moved += n as u64;
                    self.spliced += n as u64;
                    progress = true;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // EAGAIN does not say which side blocked. A full destination is the first
                    // suspect: its edge comes when it drains, and then the next splice tells.
                    // Only with room at the destination does an empty source mean "wait for
                    // the source": a socket holding just its FIN reads as empty yet answers
                    // EAGAIN, not EOF, while the pipe is full; a socket at an urgent mark
                    // reads as empty and answers EAGAIN for ever. An edge arriving after these
                    // checks is still queued by epoll, so clearing a flag here cannot miss it.
                    if !splice::writable_now(dst_fd) {
                        ready.dst = false;
                    } else if splice::pending(src_fd).unwrap_or(0) == 0 {
                        if !splice::at_mark(src_fd) {
                            ready.src = false;
                        } else {
                            self.read_past_mark(src_fd, ready)?;
                            break;
                        }
                    } else if retries < 2 {
                        retries += 1;
                    } else {
                        // Room on one side, bytes on the other, and still EAGAIN (seen under
                        // load). Neither side will send an edge, so clearing a flag would sleep
                        // forever: keep both and ask to be polled again shortly.
                        self.unexplained = true;
                        break;
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) && self.spliced == 0 => {
                    return Err(Err(Unspliceable));
                }
                Err(error) => {
                    let side = self.side_of(&error);
                    return Err(Ok(PumpError { side, error }));
                }
            }
        }
        Ok(progress)
    }

    /// Splices from source into our pipe and from our pipe to the destination (neither end
    /// is a pipe).
    fn splice_through_mid(
        &mut self,
        src_fd: RawFd,
        dst_fd: RawFd,
        ready: &mut Ready,
        before: u64,
    ) -> Result<bool, Result<PumpError, Unspliceable>> {
        let mut progress = false;
        while self.moved - before < TURN {
            let Some(mid) = self.mid.as_mut() else {
                break;
            };
            let mut again = false;
            let mut at_mark = false;
            if !self.eof && ready.src && mid.filled < mid.capacity {
                match splice::splice(src_fd, mid.write.as_raw_fd(), mid.capacity - mid.filled) {
                    Ok(0) if splice::at_mark(src_fd) => at_mark = true,
                    Ok(0) => self.eof = true,
                    Ok(n) => {
                        mid.filled += n;
                        self.spliced += n as u64;
                        again = true;
                    }
                    // Our pipe fills by slots, not bytes: small segments can fill it long
                    // before `capacity`. Blame the source only when the pipe has room (and it
                    // is not stuck at an urgent mark, which sends no edge).
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if splice::writable_now(mid.write.as_raw_fd()) {
                            if splice::at_mark(src_fd) {
                                at_mark = true;
                            } else {
                                ready.src = false;
                            }
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => again = true,
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) && self.spliced == 0 => {
                        return Err(Err(Unspliceable));
                    }
                    // As with the copying pipe: what is already in our pipe goes first.
                    Err(error) => {
                        self.failed = Some(error);
                        self.eof = true;
                    }
                }
            }
            if mid.filled > 0 && ready.dst {
                match splice::splice(mid.read.as_raw_fd(), dst_fd, mid.filled) {
                    Ok(0) => {
                        return Err(Ok(PumpError {
                            side: Side::Dst,
                            error: io::ErrorKind::WriteZero.into(),
                        }));
                    }
                    Ok(n) => {
                        mid.filled -= n;
                        self.moved += n as u64;
                        progress = true;
                        again = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => ready.dst = false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => again = true,
                    Err(error) => {
                        return Err(Ok(PumpError {
                            side: Side::Dst,
                            error,
                        }));
                    }
                }
            }
            if mid.filled == 0 {
                if let Some(error) = self.failed.take() {
                    return Err(Ok(PumpError {
                        side: Side::Src,
                        error,
                    }));
                }
                // The bytes before the mark are all out: now move past it. While our pipe
                // still holds some, the source flag stays set and draining goes first.
                if at_mark {
                    self.read_past_mark(src_fd, ready)?;
                    break;
                }
            }
            if !again {
                break;
            }
        }
        Ok(progress)
    }
}

/// The socket side of the tunnel. `flush` sends what the tunnel queued on its own (TLS
/// records); the relay calls it whenever the socket may be writable.
pub trait Tunnel: Read + Write + mio::event::Source {
    fn shutdown_write(&mut self) -> io::Result<()>;

    /// The socket, when its bytes are the tunnel's bytes and may be spliced (not under TLS).
    fn splice_fd(&self) -> Option<RawFd> {
        None
    }

    /// The peer of a plain TCP tunnel (the proxy it reached); `None` for others.
    fn plain_peer(&self) -> Option<std::net::SocketAddr> {
        None
    }

    /// Reading and writing move one shared state (an HTTP/2 connection: a read may bring the
    /// window a write waits for, a write may take in DATA): every event on the socket makes
    /// both directions try again.
    fn coupled(&self) -> bool {
        false
    }

    /// Bytes (or the end) already taken off the socket and waiting to be read, which no
    /// event will announce.
    fn buffered(&self) -> bool {
        false
    }

    /// Room to write already granted (an HTTP/2 window that came with a read), which no event
    /// will announce.
    fn writable(&self) -> bool {
        false
    }
}

impl Tunnel for mio::net::TcpStream {
    fn shutdown_write(&mut self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }

    fn splice_fd(&self) -> Option<RawFd> {
        Some(self.as_raw_fd())
    }

    fn plain_peer(&self) -> Option<std::net::SocketAddr> {
        self.peer_addr().ok()
    }
}

/// One direction's data path, chosen at start-up.
enum Path {
    Copy(Pipe),
    Splice(Splicer),
}

impl Path {
    /// Splice when asked, possible, and the stdio end is a pipe (directly) or a socket (through
    /// a pipe of ours); copy otherwise (terminals, files, TLS).
    fn choose(splice_ok: bool, stdio: BorrowedFd<'_>, socket_is_src: bool, head: &[u8]) -> Path {
        let direct = match splice::kind(stdio) {
            _ if !splice_ok => None,
            splice::FdKind::Pipe => Some(true),
            splice::FdKind::Socket => Some(false),
            splice::FdKind::Other => None,
        };
        match direct.map(|d| Splicer::new(d, socket_is_src, head)) {
            Some(Ok(s)) => Path::Splice(s),
            _ => Path::Copy(Pipe::new(BUF_SIZE, head)),
        }
    }

    fn finished(&self) -> bool {
        match self {
            Path::Copy(p) => p.finished(),
            Path::Splice(s) => s.finished(),
        }
    }

    fn moved(&self) -> u64 {
        match self {
            Path::Copy(p) => p.moved(),
            Path::Splice(s) => s.moved(),
        }
    }

    /// The last pump could not tell which side blocked: poll again soon, not forever.
    fn retry_soon(&self) -> bool {
        matches!(self, Path::Splice(s) if s.unexplained)
    }

    /// Bytes are held here, waiting for the destination.
    fn holds_bytes(&self) -> bool {
        match self {
            Path::Copy(p) => !p.is_empty(),
            Path::Splice(s) => {
                s.head_done < s.head.len() || s.mid.as_ref().is_some_and(|m| m.filled > 0)
            }
        }
    }

    /// Pumps between `src` and `dst` (whose raw fds are given for splicing); falls back to
    /// copying when the kernel refuses to splice these fds.
    fn pump<R, W>(
        &mut self,
        src: &mut R,
        dst: &mut W,
        fds: (RawFd, RawFd),
        ready: &mut Ready,
    ) -> Result<bool, PumpError>
    where
        R: Read + ?Sized,
        W: Write + ?Sized,
    {
        match self {
            Path::Copy(p) => p.pump(src, dst, ready),
            Path::Splice(s) => match s.pump(fds.0, fds.1, ready) {
                Ok(m) => Ok(m),
                Err(Ok(e)) => Err(e),
                Err(Err(Unspliceable)) => {
                    *self = Path::Copy(Pipe::new(BUF_SIZE, &[]));
                    self.pump(src, dst, fds, ready)
                }
            },
        }
    }

    /// Writes what is already taken from the source, reading no more.
    /// Best effort: the caller is finishing and has no use for an error here.
    fn flush<W: Write + ?Sized>(&mut self, dst: &mut W, fds: (RawFd, RawFd), ready: &mut Ready) {
        match self {
            Path::Copy(p) => {
                let _ = p.flush(dst, ready);
            }
            Path::Splice(s) => {
                let mut only_dst = Ready {
                    src: false,
                    dst: ready.dst,
                };
                let _ = s.pump(fds.0, fds.1, &mut only_dst);
            }
        }
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

/// How the relay runs.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Stop when no byte has moved for this long.
    pub idle_timeout: Option<Duration>,
    /// Move bytes with splice(2) where the ends allow it.
    pub splice: bool,
}

/// Relays between `input`/`output` and the tunnel until the tunnel's far side has closed and
/// everything it sent was written, or `output` went away. `leftover` is written to `output`
/// first. `O_NONBLOCK` is set on pollable stdio fds and restored before returning.
pub fn relay<T: Tunnel>(
    input: BorrowedFd<'_>,
    output: BorrowedFd<'_>,
    tunnel: &mut T,
    leftover: &[u8],
    opts: Options,
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

    // Splicing needs the socket's bytes to be the tunnel's (no TLS) and the stdio end polled,
    // so that its readiness is known.
    let socket_fd = tunnel.splice_fd().unwrap_or(-1);
    let splice_ok = opts.splice && splice::SUPPORTED && socket_fd >= 0;
    let mut up = Path::choose(SPLICE_UP && splice_ok && input_polled, input, false, &[]);
    let mut down = Path::choose(splice_ok && output_polled, output, true, leftover);
    let up_fds = (input.as_raw_fd(), socket_fd);
    let down_fds = (socket_fd, output.as_raw_fd());
    let (mut stdin, mut stdout) = (RawIo::new(input), RawIo::new(output));
    let (mut up_ready, mut down_ready) = (Ready::both(), Ready::both());
    // Set when the far side refused more bytes: reading goes on, so everything it sent is
    // still delivered, and then the run fails, because stdin bytes were not.
    let mut up_failed: Option<io::Error> = None;
    let mut write_shut = false;
    let mut events = Events::with_capacity(8);
    let mut last_moved = Instant::now();
    let stats = |up: &Path, down: &Path| Stats {
        up: up.moved(),
        down: down.moved(),
    };

    let coupled = tunnel.coupled();
    loop {
        if tunnel.buffered() {
            down_ready.src = true;
        }
        if tunnel.writable() {
            up_ready.dst = true;
        }
        let mut moved = match down.pump(tunnel, &mut stdout, down_fds, &mut down_ready) {
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
                    up.flush(tunnel, up_fds, &mut up_ready);
                    // A tunnel may hold a write's tail until flushed (HTTP/2 frames).
                    let _ = tunnel.flush();
                    Ok(stats(&up, &down))
                }
            };
        }
        if up_failed.is_none() {
            match up.pump(&mut stdin, tunnel, up_fds, &mut up_ready) {
                Ok(m) => moved |= m,
                Err(PumpError {
                    side: Side::Src,
                    error,
                }) => {
                    // What stdin gave before failing is written: out with it, held tail too.
                    let _ = tunnel.flush();
                    return Err(RelayError::ReadInput(error));
                }
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
            // Records the tunnel queued itself (TLS close_notify, key updates); a no-op on TCP.
            if up_ready.dst {
                match tunnel.flush() {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => up_ready.dst = false,
                    Err(e) if peer_gone(&e) => up_failed = Some(e),
                    Err(e) => return Err(RelayError::WriteTunnel(e)),
                }
            }
        }

        let now = Instant::now();
        if moved {
            last_moved = now;
        }
        // How long to wait when nothing moved: for an event, but never longer than the idle
        // limit, nor than a millisecond when a splice could not tell which side blocked, nor
        // than the watchdog while bytes wait for a blocked destination.
        let up_waits = up_failed.is_none() && up.holds_bytes() && !up_ready.dst;
        let down_waits = down.holds_bytes() && !down_ready.dst;
        let retry = if up.retry_soon() || down.retry_soon() {
            Some(Duration::from_millis(1))
        } else {
            (up_waits || down_waits).then_some(WATCHDOG)
        };
        let timeout = if moved {
            // Still busy: only collect readiness that a blocked side may be waiting for.
            let blocked = !(up_ready.src && up_ready.dst && down_ready.src && down_ready.dst);
            if !blocked {
                continue;
            }
            Some(Duration::ZERO)
        } else {
            let idle_left = match opts.idle_timeout {
                Some(limit) => {
                    let left = (last_moved + limit).saturating_duration_since(now);
                    if left.is_zero() {
                        return Err(RelayError::Idle(limit));
                    }
                    Some(left)
                }
                None => None,
            };
            match (idle_left, retry) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        };
        match poll.poll(&mut events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(RelayError::Poll(e)),
        }
        if events.is_empty() {
            // Timed out: retry what was waiting rather than trust a wake-up that never came.
            up_ready.dst |= up_waits;
            down_ready.dst |= down_waits;
        }
        for event in events.iter() {
            let hangup = event.is_error() || event.is_read_closed() || event.is_write_closed();
            match event.token() {
                INPUT => up_ready.src = true,
                OUTPUT => down_ready.dst = true,
                _ => {
                    if event.is_readable() || hangup || coupled {
                        down_ready.src = true;
                    }
                    if event.is_writable() || hangup || coupled {
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
    #[derive(Default)]
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

    /// A tunnel that, as the HTTP/2 one does, may keep what it is given until `flush`: its
    /// writes take what `takes` says (`None`: it sends what it holds and blocks, and grants
    /// room again at the next look), its reads play `reads`.
    #[derive(Default)]
    struct Holding {
        reads: ScriptReader,
        takes: VecDeque<Option<usize>>,
        held: Vec<u8>,
        sent: Vec<u8>,
        room: std::cell::Cell<bool>,
    }

    impl Read for Holding {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.reads.read(buf)
        }
    }

    impl Write for Holding {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            match self.takes.pop_front() {
                Some(Some(k)) => {
                    let k = k.min(buf.len());
                    self.held.extend_from_slice(&buf[..k]);
                    Ok(k)
                }
                Some(None) => {
                    self.flush()?;
                    self.room.set(true);
                    Err(io::ErrorKind::WouldBlock.into())
                }
                None => {
                    self.held.extend_from_slice(buf);
                    Ok(buf.len())
                }
            }
        }

        fn flush(&mut self) -> io::Result<()> {
            self.sent.append(&mut self.held);
            Ok(())
        }
    }

    impl mio::event::Source for Holding {
        fn register(&mut self, _: &mio::Registry, _: Token, _: Interest) -> io::Result<()> {
            Ok(())
        }
        fn reregister(&mut self, _: &mio::Registry, _: Token, _: Interest) -> io::Result<()> {
            Ok(())
        }
        fn deregister(&mut self, _: &mio::Registry) -> io::Result<()> {
            Ok(())
        }
    }

    impl Tunnel for Holding {
        fn shutdown_write(&mut self) -> io::Result<()> {
            self.flush()
        }
        fn buffered(&self) -> bool {
            !self.reads.0.is_empty()
        }
        fn writable(&self) -> bool {
            self.room.take()
        }
    }

    /// The far side ends while stdin's bytes wait for room: when room comes with the end, the
    /// bytes handed over then are flushed too, not left in a tunnel that holds them until its
    /// flush (regression: the HTTP/2 tunnel's tail of a frame was dropped).
    #[test]
    fn bytes_handed_over_at_the_far_side_s_end_are_flushed() {
        use std::os::fd::AsFd;
        let pipe = || {
            let (r, w, _) = splice::pipe().unwrap();
            (std::fs::File::from(r), std::fs::File::from(w))
        };
        let (stdin_r, mut stdin_w) = pipe();
        let (_stdout_r, stdout_w) = pipe();
        stdin_w.write_all(b"abc").unwrap();
        let mut tunnel = Holding {
            reads: script(vec![err(io::ErrorKind::WouldBlock), Ok(b"")]),
            // One byte, then no room (which comes back at once).
            takes: [Some(1), None].into(),
            ..Holding::default()
        };
        let opts = Options {
            idle_timeout: Some(Duration::from_secs(20)),
            splice: false,
        };
        let stats = relay(stdin_r.as_fd(), stdout_w.as_fd(), &mut tunnel, &[], opts).unwrap();
        assert_eq!(stats.up, 3);
        assert_eq!(tunnel.sent, b"abc", "held back: {:?}", tunnel.held);
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
        let e = Pipe::new(16, &[])
            .pump(&mut src, &mut dst, &mut Ready::both())
            .unwrap_err();
        assert_eq!(
            (e.side, e.error.kind()),
            (Side::Dst, io::ErrorKind::BrokenPipe)
        );
    }

    #[test]
    fn a_source_error_waits_until_earlier_bytes_are_written() {
        let mut src = script(vec![err(io::ErrorKind::ConnectionReset)]);
        let mut dst = ScriptWriter {
            limits: [0].into(),
            ..Default::default()
        };
        let mut pipe = Pipe::new(16, b"came with 200");
        let mut ready = Ready::both();
        // The writer is blocked: nothing written, so the reset is not reported yet.
        assert!(!pipe.pump(&mut src, &mut dst, &mut ready).unwrap());
        assert!(!pipe.finished());
        ready.dst = true;
        let e = pipe.pump(&mut src, &mut dst, &mut ready).unwrap_err();
        assert_eq!(
            (e.side, e.error.kind()),
            (Side::Src, io::ErrorKind::ConnectionReset)
        );
        assert_eq!(dst.got, b"came with 200");
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

    // The splice path against real fds: the same cases as the copy path's scripted tests.
    mod splicing {
        use super::super::*;
        use std::io::{Read, Write};
        use std::net::{TcpListener, TcpStream};
        use std::os::fd::{AsFd, AsRawFd, OwnedFd};

        fn tcp_pair() -> (TcpStream, TcpStream) {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (b, _) = l.accept().unwrap();
            (a, b)
        }

        fn pipe() -> (std::fs::File, std::fs::File) {
            let (r, w, _) = splice::pipe().unwrap();
            (std::fs::File::from(r), std::fs::File::from(w))
        }

        fn nonblocking(fd: &impl AsFd) -> crate::sys::stdio::NonBlocking {
            crate::sys::stdio::NonBlocking::set(fd.as_fd()).unwrap()
        }

        /// Pumps until finished the way the relay does: edge-triggered mio registrations, flags
        /// set only by events. A stall of 10 s is a lost wake-up and fails the test.
        fn run(s: &mut Splicer, src: RawFd, dst: RawFd) {
            run_from(s, src, dst, Ready::both());
        }

        fn run_from(s: &mut Splicer, src: RawFd, dst: RawFd, mut ready: Ready) {
            use mio::unix::SourceFd;
            let mut poll = Poll::new().unwrap();
            poll.registry()
                .register(&mut SourceFd(&src), Token(0), Interest::READABLE)
                .unwrap();
            poll.registry()
                .register(&mut SourceFd(&dst), Token(1), Interest::WRITABLE)
                .unwrap();
            let mut events = Events::with_capacity(4);
            while !s.finished() {
                let progress = s
                    .pump(src, dst, &mut ready)
                    .map_err(|e| format!("{e:?}"))
                    .unwrap();
                if progress || s.finished() || s.unexplained {
                    continue;
                }
                poll.poll(&mut events, Some(Duration::from_secs(10)))
                    .unwrap();
                assert!(
                    !events.is_empty(),
                    "lost wake-up: {ready:?}, {} bytes moved",
                    s.moved()
                );
                for e in events.iter() {
                    let hangup = e.is_error() || e.is_read_closed() || e.is_write_closed();
                    if e.token() == Token(0) && (e.is_readable() || hangup) {
                        ready.src = true;
                    }
                    if e.token() == Token(1) && (e.is_writable() || hangup) {
                        ready.dst = true;
                    }
                }
            }
        }

        #[test]
        fn a_fin_behind_a_full_pipe_is_not_taken_for_an_empty_source() {
            // Regression: with the pipe full, a socket holding only its FIN answers EAGAIN, not
            // EOF, and reads as empty. Blaming the source cleared a flag whose edge (the FIN's)
            // had already come: the relay hung with all data delivered.
            let (sock, peer) = tcp_pair();
            let _nb = nonblocking(&sock);
            peer.shutdown(std::net::Shutdown::Write).unwrap();
            wait_read_closed(&sock);
            let (mut pipe_r, mut pipe_w) = pipe();
            let filled = {
                let _nb = nonblocking(&pipe_w);
                let mut filled = 0;
                loop {
                    match pipe_w.write(&[7u8; 4096]) {
                        Ok(n) => filled += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break filled,
                        Err(e) => panic!("{e}"),
                    }
                }
            };
            let mut s = Splicer::new(true, true, &[]).unwrap();
            let mut ready = Ready::both();
            let progress = s
                .pump(sock.as_raw_fd(), pipe_w.as_raw_fd(), &mut ready)
                .unwrap();
            assert!(!progress && !s.finished());
            assert!(
                ready.src && !ready.dst,
                "must wait for the pipe, not the socket: {ready:?}"
            );
            // Once the pipe drains, its edge leads to the EOF.
            let reader = std::thread::spawn(move || {
                let mut got = Vec::new();
                pipe_r.read_to_end(&mut got).unwrap();
                got.len()
            });
            run_from(&mut s, sock.as_raw_fd(), pipe_w.as_raw_fd(), ready);
            drop(pipe_w);
            assert_eq!(reader.join().unwrap(), filled);
        }

        fn wait_read_closed(sock: &TcpStream) {
            use mio::unix::SourceFd;
            let fd = sock.as_raw_fd();
            let mut poll = Poll::new().unwrap();
            poll.registry()
                .register(&mut SourceFd(&fd), Token(0), Interest::READABLE)
                .unwrap();
            let mut events = Events::with_capacity(4);
            loop {
                poll.poll(&mut events, Some(Duration::from_secs(10)))
                    .unwrap();
                assert!(!events.is_empty(), "the FIN never arrived");
                if events.iter().any(|e| e.is_read_closed()) {
                    return;
                }
            }
        }

        #[test]
        fn pipe_to_socket_moves_every_byte_in_order() {
            let (pipe_r, mut pipe_w) = pipe();
            let (sock, mut peer) = tcp_pair();
            let _nb = nonblocking(&sock);
            let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
            let writer = {
                let data = data.clone();
                std::thread::spawn(move || pipe_w.write_all(&data))
            };
            let reader = std::thread::spawn(move || {
                let mut got = Vec::new();
                peer.read_to_end(&mut got).unwrap();
                got
            });
            let mut s = Splicer::new(true, false, &[]).unwrap();
            let pipe_r_fd = pipe_r.as_raw_fd();
            let closer = std::thread::spawn(move || writer.join().unwrap());
            run(&mut s, pipe_r_fd, sock.as_raw_fd());
            closer.join().unwrap().unwrap();
            sock.shutdown(std::net::Shutdown::Write).unwrap();
            assert_eq!(reader.join().unwrap(), data);
            assert_eq!(s.moved(), data.len() as u64);
        }

        #[test]
        fn socket_to_pipe_writes_the_head_first() {
            let (sock, mut peer) = tcp_pair();
            let _nb = nonblocking(&sock);
            let (mut pipe_r, pipe_w) = pipe();
            peer.write_all(b" and the rest").unwrap();
            drop(peer);
            let mut s = Splicer::new(true, true, b"first bytes").unwrap();
            run(&mut s, sock.as_raw_fd(), pipe_w.as_raw_fd());
            drop(pipe_w);
            let mut got = String::new();
            pipe_r.read_to_string(&mut got).unwrap();
            assert_eq!(got, "first bytes and the rest");
        }

        #[test]
        fn an_empty_source_clears_only_its_flag() {
            let (pipe_r, _pipe_w) = pipe();
            let (sock, _peer) = tcp_pair();
            let _nb = nonblocking(&sock);
            let mut s = Splicer::new(true, false, &[]).unwrap();
            let mut ready = Ready::both();
            assert!(
                !s.pump(pipe_r.as_raw_fd(), sock.as_raw_fd(), &mut ready)
                    .unwrap()
            );
            assert!(!ready.src && ready.dst, "{ready:?}");
            assert!(!s.finished());
        }

        #[test]
        fn a_full_destination_clears_only_its_flag_and_loses_nothing() {
            let (pipe_r, mut pipe_w) = pipe();
            let (sock, mut peer) = tcp_pair();
            let _nb = nonblocking(&sock);
            // More than the socket and its peer can buffer while nobody reads.
            let data: Vec<u8> = (0..(8 << 20) as u32).map(|i| (i % 253) as u8).collect();
            let writer = {
                let data = data.clone();
                std::thread::spawn(move || pipe_w.write_all(&data))
            };
            let mut s = Splicer::new(true, false, &[]).unwrap();
            let mut ready = Ready::both();
            let mut stalls = 0;
            while ready.dst {
                if !s
                    .pump(pipe_r.as_raw_fd(), sock.as_raw_fd(), &mut ready)
                    .unwrap()
                {
                    ready.src = true;
                    stalls += 1;
                    assert!(stalls < 100_000, "destination never filled");
                }
            }
            assert!(!ready.dst);
            let reader = std::thread::spawn(move || {
                let mut got = Vec::new();
                peer.read_to_end(&mut got).unwrap();
                got
            });
            run(&mut s, pipe_r.as_raw_fd(), sock.as_raw_fd());
            writer.join().unwrap().unwrap();
            sock.shutdown(std::net::Shutdown::Write).unwrap();
            assert_eq!(reader.join().unwrap(), data);
        }

        #[test]
        fn socket_to_socket_goes_through_a_pipe_of_its_own() {
            let (src, mut src_peer) = tcp_pair();
            let (dst, mut dst_peer) = tcp_pair();
            let (_a, _b) = (nonblocking(&src), nonblocking(&dst));
            let data: Vec<u8> = (0..2_000_000u32).map(|i| (i % 241) as u8).collect();
            let writer = {
                let data = data.clone();
                std::thread::spawn(move || {
                    src_peer.write_all(&data).unwrap();
                })
            };
            let reader = std::thread::spawn(move || {
                let mut got = Vec::new();
                dst_peer.read_to_end(&mut got).unwrap();
                got
            });
            let mut s = Splicer::new(false, true, b"head:").unwrap();
            run(&mut s, src.as_raw_fd(), dst.as_raw_fd());
            writer.join().unwrap();
            dst.shutdown(std::net::Shutdown::Write).unwrap();
            let got = reader.join().unwrap();
            assert_eq!(&got[..5], b"head:");
            assert_eq!(&got[5..], &data[..]);
        }

        #[test]
        fn a_closed_reader_is_a_broken_pipe_on_the_destination() {
            let (sock, mut peer) = tcp_pair();
            let _nb = nonblocking(&sock);
            let (pipe_r, pipe_w): (OwnedFd, OwnedFd) = {
                let (r, w, _) = splice::pipe().unwrap();
                (r, w)
            };
            drop(pipe_r);
            peer.write_all(b"nobody reads this").unwrap();
            let mut s = Splicer::new(true, true, &[]).unwrap();
            let e = s
                .pump(sock.as_raw_fd(), pipe_w.as_raw_fd(), &mut Ready::both())
                .unwrap_err()
                .unwrap();
            assert_eq!(
                (e.side, e.error.kind()),
                (Side::Dst, io::ErrorKind::BrokenPipe)
            );
        }

        /// Waits until urgent data is pending on `sock` (EPOLLPRI), so a test knows the mark
        /// is there before it pumps.
        fn wait_urgent(sock: &TcpStream) {
            use mio::unix::SourceFd;
            let fd = sock.as_raw_fd();
            let mut poll = Poll::new().unwrap();
            poll.registry()
                .register(&mut SourceFd(&fd), Token(0), Interest::PRIORITY)
                .unwrap();
            let mut events = Events::with_capacity(4);
            poll.poll(&mut events, Some(Duration::from_secs(10)))
                .unwrap();
            assert!(
                events.iter().any(|e| e.is_priority()),
                "the urgent byte never arrived"
            );
        }

        /// What read(2) makes of the same bytes: the reference the splice path must match.
        fn read_reference(before: &[u8], after: &[u8]) -> Vec<u8> {
            let (mut sock, mut peer) = tcp_pair();
            peer.write_all(before).unwrap();
            splice::send_urgent(peer.as_raw_fd(), b'!').unwrap();
            peer.write_all(after).unwrap();
            drop(peer);
            let mut got = Vec::new();
            sock.read_to_end(&mut got).unwrap();
            got
        }

        #[test]
        fn an_urgent_mark_is_passed_and_the_urgent_byte_dropped_as_read_does() {
            // Regression: splice(2) stops at the mark for good (EAGAIN, or 0 once the FIN is
            // in), so everything after the urgent byte was lost or waited for for ever.
            let before: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
            let after: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8).collect();
            let expected = read_reference(&before, &after);
            assert_eq!(expected.len(), before.len() + after.len());

            let (sock, mut peer) = tcp_pair();
            let _nb = nonblocking(&sock);
            let (mut pipe_r, pipe_w) = pipe();
            let writer = {
                let (before, after) = (before.clone(), after.clone());
                std::thread::spawn(move || {
                    peer.write_all(&before).unwrap();
                    splice::send_urgent(peer.as_raw_fd(), b'!').unwrap();
                    peer.write_all(&after).unwrap();
                })
            };
            let reader = std::thread::spawn(move || {
                let mut got = Vec::new();
                pipe_r.read_to_end(&mut got).unwrap();
                got
            });
            let mut s = Splicer::new(true, true, &[]).unwrap();
            run(&mut s, sock.as_raw_fd(), pipe_w.as_raw_fd());
            writer.join().unwrap();
            drop(pipe_w);
            assert!(
                reader.join().unwrap() == expected,
                "bytes differ from read(2)'s"
            );
        }

        #[test]
        fn an_urgent_mark_is_passed_through_a_pipe_of_our_own() {
            let before = b"before the mark".repeat(10_000);
            let after = b"after the mark".repeat(10_000);
            let expected = read_reference(&before, &after);
            let (src, mut src_peer) = tcp_pair();
            let (dst, mut dst_peer) = tcp_pair();
            let (_a, _b) = (nonblocking(&src), nonblocking(&dst));
            let writer = {
                let (before, after) = (before.clone(), after.clone());
                std::thread::spawn(move || {
                    src_peer.write_all(&before).unwrap();
                    splice::send_urgent(src_peer.as_raw_fd(), b'!').unwrap();
                    src_peer.write_all(&after).unwrap();
                })
            };
            let reader = std::thread::spawn(move || {
                let mut got = Vec::new();
                dst_peer.read_to_end(&mut got).unwrap();
                got
            });
            let mut s = Splicer::new(false, true, &[]).unwrap();
            run(&mut s, src.as_raw_fd(), dst.as_raw_fd());
            writer.join().unwrap();
            dst.shutdown(std::net::Shutdown::Write).unwrap();
            assert!(
                reader.join().unwrap() == expected,
                "bytes differ from read(2)'s"
            );
        }

        #[test]
        fn past_an_urgent_mark_with_nothing_after_it_the_splicer_waits_for_an_edge() {
            // Nothing may spin at the mark: once past it, an empty source clears its flag (the
            // next byte sends an edge) instead of asking to be polled again.
            for direct in [true, false] {
                let (sock, mut peer) = tcp_pair();
                let _nb = nonblocking(&sock);
                let (dst, mut dst_peer) = tcp_pair();
                let (mut pipe_r, pipe_w) = pipe();
                let dst_fd = if direct {
                    pipe_w.as_raw_fd()
                } else {
                    dst.as_raw_fd()
                };
                let _nb_dst = nonblocking(&dst);
                peer.write_all(b"before").unwrap();
                splice::send_urgent(peer.as_raw_fd(), b'!').unwrap();
                wait_urgent(&sock);
                let mut s = Splicer::new(direct, true, &[]).unwrap();
                let mut ready = Ready::both();
                let mut pumps = 0;
                while s.pump(sock.as_raw_fd(), dst_fd, &mut ready).unwrap() {
                    pumps += 1;
                    assert!(pumps < 100, "pump keeps reporting progress");
                }
                assert!(
                    !ready.src && ready.dst && !s.unexplained && !s.finished(),
                    "direct {direct}: {ready:?}, unexplained {}",
                    s.unexplained
                );
                let mut got = [0u8; 6];
                if direct {
                    pipe_r.read_exact(&mut got).unwrap();
                } else {
                    dst_peer.read_exact(&mut got).unwrap();
                }
                assert_eq!(&got, b"before");
                // The next bytes come with an edge and are spliced as usual.
                peer.write_all(b"after").unwrap();
                drop(peer);
                run_from(&mut s, sock.as_raw_fd(), dst_fd, ready);
                drop(pipe_w);
                dst.shutdown(std::net::Shutdown::Write).unwrap();
                let mut rest = Vec::new();
                if direct {
                    pipe_r.read_to_end(&mut rest).unwrap();
                } else {
                    dst_peer.read_to_end(&mut rest).unwrap();
                }
                assert_eq!(rest, b"after", "direct {direct}");
            }
        }
    }
}
