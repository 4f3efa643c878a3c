//! Linux zero-copy: `splice(2)` between a pipe and a socket, so tunnel bytes never enter user
//! space. Elsewhere every function reports "unsupported" and the relay copies.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Whether this platform has splice at all.
pub const SUPPORTED: bool = cfg!(target_os = "linux");

/// What kind of file a stdio fd is, to choose a data path per direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FdKind {
    Pipe,
    Socket,
    Other,
}

pub fn kind(fd: BorrowedFd<'_>) -> FdKind {
    // SAFETY: fstat writes only into the zeroed struct we pass.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return FdKind::Other;
    }
    match st.st_mode & libc::S_IFMT {
        libc::S_IFIFO => FdKind::Pipe,
        libc::S_IFSOCK => FdKind::Socket,
        _ => FdKind::Other,
    }
}

/// Moves up to `len` bytes from `from` to `to` without copying; one of them must be a pipe.
/// Never blocks on the pipe (SPLICE_F_NONBLOCK); the socket's own O_NONBLOCK covers it.
#[cfg(target_os = "linux")]
pub fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: null offsets mean "current position"; the kernel checks both fds.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

#[cfg(not(target_os = "linux"))]
pub fn splice(_from: RawFd, _to: RawFd, _len: usize) -> io::Result<usize> {
    Err(io::ErrorKind::Unsupported.into())
}

/// A plain write on a raw fd the caller keeps open.
pub fn write(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for `buf.len()` bytes; the caller owns fd for the call.
    let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// A plain read on a raw fd the caller keeps open.
pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes; the caller owns fd for the call.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Whether the next byte to read from a TCP socket is its urgent mark (SIOCATMARK): TCP urgent
/// data (`MSG_OOB`) is waiting there. splice(2) stops short of the mark for good (EAGAIN, or 0
/// once a FIN came) and FIONREAD counts only the bytes before it; read(2) moves past it.
/// `false` for anything that is not a socket with a mark. Nothing spins there: the relay's
/// registrations are edge-triggered and ask for EPOLLIN only (mio's readable interest has no
/// EPOLLPRI), so urgent data wakes the relay once, like any other data.
#[cfg(target_os = "linux")]
pub fn at_mark(fd: RawFd) -> bool {
    /// From <linux/sockios.h>; the libc crate does not export it for Linux.
    const SIOCATMARK: libc::c_ulong = 0x8905;
    let mut answer: libc::c_int = 0;
    // SAFETY: SIOCATMARK writes one int; on other fd types the call fails without effects.
    let rc = unsafe { libc::ioctl(fd, SIOCATMARK as _, &mut answer) };
    rc == 0 && answer != 0
}

#[cfg(not(target_os = "linux"))]
pub fn at_mark(_fd: RawFd) -> bool {
    false
}

/// Bytes waiting to be read on a pipe or socket (FIONREAD).
pub fn pending(fd: RawFd) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    if unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n.max(0) as usize)
}

/// Whether a write to fd would make progress right now (poll with a zero timeout).
pub fn writable_now(fd: RawFd) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one pollfd, zero timeout.
    let r = unsafe { libc::poll(&mut pfd, 1, 0) };
    r > 0 && pfd.revents & (libc::POLLOUT | libc::POLLERR | libc::POLLHUP) != 0
}

/// A pipe of our own for socket-to-socket splicing (Linux only).
#[cfg(not(target_os = "linux"))]
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd, usize)> {
    Err(io::ErrorKind::Unsupported.into())
}

/// A pipe of our own for socket-to-socket splicing. Returns (read end, write end, capacity).
/// No O_NONBLOCK: every splice passes SPLICE_F_NONBLOCK, which covers the pipe.
#[cfg(target_os = "linux")]
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd, usize)> {
    pipe_of(1 << 20)
}

/// Like [`pipe`], asking for `size` bytes of capacity (the kernel rounds it to pages; the
/// default stays if the system refuses).
#[cfg(not(target_os = "linux"))]
pub fn pipe_of(_size: usize) -> io::Result<(OwnedFd, OwnedFd, usize)> {
    Err(io::ErrorKind::Unsupported.into())
}

/// Like [`pipe`], asking for `size` bytes of capacity (the kernel rounds it to pages; the
/// default stays if the system refuses).
#[cfg(target_os = "linux")]
pub fn pipe_of(size: usize) -> io::Result<(OwnedFd, OwnedFd, usize)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two fds into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // A larger pipe means fewer splices per byte; the default stays if the system refuses.
    // SAFETY: F_SETPIPE_SZ/F_GETPIPE_SZ take and return ints.
    let capacity = unsafe {
        libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, size as libc::c_int);
        libc::fcntl(w.as_raw_fd(), libc::F_GETPIPE_SZ)
    };
    if capacity <= 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((r, w, capacity as usize))
}

/// Sends one byte of TCP urgent data (`MSG_OOB`), for tests of the urgent mark.
#[cfg(test)]
pub fn send_urgent(fd: RawFd, byte: u8) -> io::Result<()> {
    // SAFETY: one byte from a live local; the kernel checks the fd.
    let n = unsafe { libc::send(fd, (&byte as *const u8).cast(), 1, libc::MSG_OOB) };
    if n == 1 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
