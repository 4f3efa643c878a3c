//! The controlling terminal, for credential prompts. stdin and stdout belong to the tunnel, so
//! prompts go to `/dev/tty` and answers come from it, never from fds 0 and 1.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};

use zeroize::Zeroizing;

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
}
