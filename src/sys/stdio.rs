//! Raw reads and writes on fds 0 and 1, and `O_NONBLOCK` that is always given back.
//!
//! `O_NONBLOCK` lives on the open file description, which the caller (a shell, ssh, a test)
//! shares with us: leaving it set makes the caller's next read fail with EAGAIN. [`NonBlocking`]
//! restores the saved flags on drop, and a signal handler restores them on SIGINT, SIGTERM and
//! SIGHUP (ssh sends SIGHUP to its ProxyCommand) before dying of the same signal.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::Once;
use std::sync::atomic::{AtomicI32, Ordering};

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

/// Flags to put back on fds 0 and 1 if a signal ends us; -1 when there is nothing to restore.
static SAVED: [AtomicI32; 2] = [AtomicI32::new(-1), AtomicI32::new(-1)];
static HANDLERS: Once = Once::new();

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
        if let Some(slot) = SAVED.get(fd as usize) {
            install_handlers();
            slot.store(saved, Ordering::SeqCst);
        }
        set_flags(fd, saved | libc::O_NONBLOCK)?;
        Ok(NonBlocking { fd, saved })
    }
}

impl Drop for NonBlocking {
    fn drop(&mut self) {
        // Nothing useful to do if this fails: the fd is the caller's and we are leaving.
        let _ = set_flags(self.fd, self.saved);
        if let Some(slot) = SAVED.get(self.fd as usize) {
            slot.store(-1, Ordering::SeqCst);
        }
    }
}

extern "C" fn restore_and_die(sig: libc::c_int) {
    for fd in [1, 0] {
        let saved = SAVED[fd].load(Ordering::SeqCst);
        if saved >= 0 {
            // SAFETY: fcntl is async-signal-safe.
            unsafe { libc::fcntl(fd as RawFd, libc::F_SETFL, saved) };
        }
    }
    // SAFETY: signal and raise are async-signal-safe; with the default action restored the
    // process ends with the same signal, so the caller sees the usual status.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

fn install_handlers() {
    HANDLERS.call_once(|| {
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            // SAFETY: the handler only calls async-signal-safe functions and reads atomics. A
            // signal the caller ignores (nohup) stays ignored.
            unsafe {
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(sig, std::ptr::null(), &mut old) == 0
                    && old.sa_sigaction == libc::SIG_IGN
                {
                    continue;
                }
                let mut act: libc::sigaction = std::mem::zeroed();
                act.sa_sigaction = restore_and_die as *const () as libc::sighandler_t;
                libc::sigemptyset(&mut act.sa_mask);
                act.sa_flags = libc::SA_RESTART;
                libc::sigaction(sig, &act, std::ptr::null_mut());
            }
        }
    });
}
