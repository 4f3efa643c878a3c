//! The controlling terminal, for credential prompts. stdin and stdout belong to the tunnel, so
//! prompts go to `/dev/tty` and answers come from it, never from fds 0 and 1.
//!
//! A password is read with echo off; the terminal's settings come back however the prompt
//! ends: an answer, an error, a panic (a guard), or a signal ([`super::restore`], which also
//! gives echo back while a stop signal holds us and turns it off again on SIGCONT).

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, RawFd};

use zeroize::Zeroizing;

use super::restore;

/// Longest password line accepted (a canonical-mode terminal line is at most 4095 bytes).
const PASSWORD_MAX: usize = 64 * 1024;

pub struct Tty(File);

/// Opens `/dev/tty`; `None` when the process has no controlling terminal (ssh started us from
/// a GUI, a cron job, a CI runner), which callers treat as "cannot ask".
pub fn open() -> io::Result<Option<Tty>> {
    match OpenOptions::new().read(true).write(true).open("/dev/tty") {
        Ok(f) => Ok(Some(Tty(f))),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(
                    libc::ENXIO
                        | libc::ENOENT
                        | libc::ENODEV
                        | libc::EACCES
                        | libc::EPERM
                        | libc::ENOTTY
                )
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

impl Tty {
    /// Shows `prompt` and reads one line with echo on, without its line ending.
    pub fn read_line(&mut self, prompt: &str) -> io::Result<String> {
        self.0.write_all(prompt.as_bytes())?;
        self.0.flush()?;
        let mut line = Zeroizing::new(String::new());
        let n = BufReader::new(&self.0).read_line(&mut line)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "end of input on the terminal",
            ));
        }
        Ok(line.trim_end_matches(['\n', '\r']).to_owned())
    }

    /// Shows `prompt` and reads one line with echo off (the newline still shows), without its
    /// line ending. The caller's terminal settings come back on every way out.
    pub fn read_password(&mut self, prompt: &str) -> io::Result<Zeroizing<String>> {
        let echo_off = EchoOff::begin(self.0.as_raw_fd())?;
        self.0.write_all(prompt.as_bytes())?;
        self.0.flush()?;
        let mut line = Zeroizing::new(Vec::new());
        let mut chunk = Zeroizing::new([0u8; 512]);
        while !line.ends_with(b"\n") {
            let n = match self.0.read(&mut chunk[..]) {
                Ok(0) if line.is_empty() => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "end of input on the terminal",
                    ));
                }
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if line.len() + n > PASSWORD_MAX {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the password line is too long",
                ));
            }
            line.extend_from_slice(&chunk[..n]);
        }
        drop(echo_off);
        let text = std::str::from_utf8(&line)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "the password is not UTF-8"))?;
        Ok(Zeroizing::new(
            text.trim_end_matches(['\n', '\r']).to_owned(),
        ))
    }
}

/// Echo off on a terminal while it lives; the saved settings come back on drop, and from the
/// signal handlers if a signal ends or stops us first.
struct EchoOff {
    fd: RawFd,
    saved: libc::termios,
}

impl EchoOff {
    fn begin(fd: RawFd) -> io::Result<EchoOff> {
        // SAFETY: a zeroed termios is valid; tcgetattr fills the struct we pass.
        let (rc, saved) = unsafe {
            let mut saved: libc::termios = std::mem::zeroed();
            (libc::tcgetattr(fd, &mut saved), saved)
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut quiet = saved;
        quiet.c_lflag &= !libc::ECHO;
        quiet.c_lflag |= libc::ECHONL;
        // Published first, so a signal from here on gives the saved settings back.
        restore::tty_begin(fd, &saved, &quiet);
        // SAFETY: tcsetattr reads the struct we pass. TCSANOW keeps what was typed ahead.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &quiet) } != 0 {
            let e = io::Error::last_os_error();
            restore::tty_finishing();
            restore::tty_end();
            return Err(e);
        }
        Ok(EchoOff { fd, saved })
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        restore::tty_finishing();
        // SAFETY: tcsetattr reads the struct we pass. Nothing to do if it fails: we leave.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
        restore::tty_end();
    }
}
