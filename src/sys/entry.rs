//! The process entry point on glibc Linux, in place of the Rust runtime's (`#![no_main]` in
//! `src/main.rs`, which includes this file: the C `main` symbol must be defined in the binary
//! crate, and every `unsafe` line lives under `src/sys/`).
//!
//! Why: a ProxyCommand pays start-up on every connection, and the runtime's set-up before
//! `main` was about a tenth of gimlet's spawn-to-first-byte time. Most of it is the main
//! thread's stack-overflow guard: glibc finds the main thread's stack by reading and parsing
//! `/proc/self/maps` (with `sscanf`), and the runtime maps an alternate signal stack and
//! installs SIGSEGV/SIGBUS handlers, only to print "has overflowed its stack" before dying.
//! Without it a stack overflow is a plain SIGSEGV (with our stdio flags given back first: see
//! [`super::restore`]).
//!
//! What the runtime did that gimlet relies on is done here, the same way:
//! - fds 0, 1 and 2 are opened on `/dev/null` when closed, so that no socket we open lands on
//!   them (tunnel bytes must never reach a file the caller did not give us as stdout);
//! - SIGPIPE is ignored: a reader that went away is an `EPIPE` the relay handles;
//! - a panic ends the process with status 101 after the panic hook's message;
//! - stdout's buffer is flushed before exit.
//!
//! `std::env::args` does not need the runtime on glibc: glibc hands `argc`/`argv` to the
//! functions in `.init_array`, where std (and [`super::argv`]) catch them.

use std::ffi::{c_char, c_int};

#[unsafe(no_mangle)]
extern "C" fn main(_argc: c_int, _argv: *const *const c_char) -> c_int {
    open_closed_stdio();
    // SAFETY: setting SIGPIPE's disposition to SIG_IGN before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let code = match std::panic::catch_unwind(crate::run) {
        Ok(code) => c_int::from(code),
        // The hook has printed the message; dropping the payload could panic again.
        Err(payload) => {
            std::mem::forget(payload);
            101
        }
    };
    let _ = std::io::Write::flush(&mut std::io::stdout());
    code
}

/// Opens `/dev/null` on each of fds 0, 1 and 2 that is closed, as the Rust runtime does.
fn open_closed_stdio() {
    let mut fds = [0, 1, 2].map(|fd| libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    });
    // SAFETY: three valid pollfds, zero timeout.
    let polled = unsafe { libc::poll(fds.as_mut_ptr(), 3, 0) } >= 0;
    for pfd in fds {
        let closed = if polled {
            pfd.revents & libc::POLLNVAL != 0
        } else {
            // SAFETY: F_GETFD only asks whether the fd is open.
            unsafe { libc::fcntl(pfd.fd, libc::F_GETFD) == -1 }
        };
        if closed {
            // SAFETY: open with a NUL-terminated path. The lowest free fd is the closed one,
            // since the lower ones are open by now.
            let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
            if fd < 0 {
                // The runtime aborts here too: without it a socket could become our stdout.
                std::process::abort();
            }
        }
    }
}
