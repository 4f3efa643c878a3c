//! Raw reads and writes on fds 0 and 1, and `O_NONBLOCK` that is always given back.
//!
//! `O_NONBLOCK` lives on the open file description, which the caller (a shell, ssh, a test)
//! shares with us: leaving it set makes the caller's next read fail with EAGAIN. [`NonBlocking`]
//! restores the saved flags on drop; while it lives, [`restore`] gives them back when a signal
//! ends or stops us (ssh sends SIGHUP to its ProxyCommand) and sets them again on SIGCONT.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use super::restore;

/// Read/Write straight on a borrowed fd: no user-space buffer, so nothing is held back when
/// the tunnel ends and `WouldBlock` reaches the relay untouched.
pub struct RawIo<'a>(BorrowedFd<'a>);

impl<'a> RawIo<'a> {
    pub fn new(fd: BorrowedFd<'a>) -> Self {
        RawIo(fd)
    }
}

fn cvt(n: libc::ssize_t) -> io::Result<usize> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

impl Read for RawIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes and the fd is borrowed, so it
        // stays open for the call.
        cvt(unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) })
    }
}

impl Write for RawIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for reads of `buf.len()` bytes and the fd is borrowed.
        cvt(unsafe { libc::write(self.0.as_raw_fd(), buf.as_ptr().cast(), buf.len()) })
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn get_flags(fd: RawFd) -> io::Result<libc::c_int> {
    // SAFETY: F_GETFL takes no argument and has no memory effects.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(flags)
    }
}

fn set_flags(fd: RawFd, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: F_SETFL takes an int argument and has no memory effects.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags) } < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `O_NONBLOCK` set on a fd for the guard's lifetime; the previous flags come back on drop.
/// Drop guards in reverse order of creation (as locals do) so that fds sharing one
/// description end with the first-saved flags.
pub struct NonBlocking {
    fd: RawFd,
    saved: libc::c_int,
}

impl NonBlocking {
    pub fn set(fd: BorrowedFd<'_>) -> io::Result<NonBlocking> {
        let fd = fd.as_raw_fd();
        let saved = get_flags(fd)?;
        restore::stdio_begin(fd, saved);
        if let Err(e) = set_flags(fd, saved | libc::O_NONBLOCK) {
            restore::stdio_finishing(fd);
            restore::stdio_end(fd);
            return Err(e);
        }
        Ok(NonBlocking { fd, saved })
    }
}

impl Drop for NonBlocking {
    fn drop(&mut self) {
        // In this order, a signal at any point leaves the caller's flags: a stop no longer
        // takes them again, an ending signal still gives them back.
        restore::stdio_finishing(self.fd);
        // Nothing useful to do if this fails: the fd is the caller's and we are leaving.
        let _ = set_flags(self.fd, self.saved);
        restore::stdio_end(self.fd);
    }
}
