//! Waiting on one descriptor for at most a given time: the handshake's socket is non-blocking,
//! and every wait on it is bounded by what is left of `--connect-timeout`.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

pub use libc::{POLLERR, POLLHUP, POLLIN, POLLOUT};

/// Polls `fd` for `events` for at most `timeout` (rounded up to whole milliseconds, so that a
/// caller looping until its deadline never spins); returns the events that came, empty when
/// the time ran out. A signal's interruption is an `Interrupted` error: the caller loops with
/// the time that is left.
pub fn poll_one(fd: RawFd, events: libc::c_short, timeout: Duration) -> io::Result<libc::c_short> {
    let ms = timeout.as_nanos().div_ceil(1_000_000);
    let ms = libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX);
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd that outlives the call.
    match unsafe { libc::poll(&mut pfd, 1, ms) } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(0),
        _ => Ok(pfd.revents),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::time::Instant;

    #[test]
    fn a_quiet_socket_times_out_and_a_ready_one_does_not() {
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        let t0 = Instant::now();
        assert_eq!(
            poll_one(a.as_raw_fd(), POLLIN, Duration::from_micros(1500)).unwrap(),
            0
        );
        // Rounded up, never down: the wait is not cut short.
        assert!(t0.elapsed() >= Duration::from_micros(1500));
        std::io::Write::write_all(&mut b, b"x").unwrap();
        let got = poll_one(a.as_raw_fd(), POLLIN, Duration::from_secs(5)).unwrap();
        assert_ne!(got & POLLIN, 0);
    }
}
