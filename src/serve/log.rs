//! Listen mode's event log: one line per event, `2026-12-01T05:12:00.123Z gimlet: ...`, to
//! stderr or to `--log FILE` (appended; reopened on SIGUSR1, after logrotate moved it). Only
//! the engine's thread writes here; workers hand their outcome back to it. Nothing logged
//! holds a secret: forwards describe themselves without credentials and errors never carry
//! them.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

pub struct Log {
    path: Option<PathBuf>,
    file: Option<File>,
    quiet: bool,
    /// Lines held back while starting: a start that fails prints only its error line.
    held: Option<Vec<String>>,
    /// Lines the log file could not take (non-blocking, full); reported with the next line.
    dropped: u64,
}

impl Log {
    /// Logs to `path` (created if missing, appended to), else to stderr unless `quiet`.
    pub fn open(path: Option<PathBuf>, quiet: bool) -> io::Result<Log> {
        let file = path.as_deref().map(open_append).transpose()?;
        Ok(Log {
            path,
            file,
            quiet,
            held: Some(Vec::new()),
            dropped: 0,
        })
    }

    /// Start-up succeeded: write the lines held back so far, and the rest as they come.
    pub fn release(&mut self) {
        for text in self.held.take().unwrap_or_default() {
            self.write(&text);
        }
    }

    /// Reopens the log file (SIGUSR1). On failure the old file is kept and the reason logged.
    pub fn reopen(&mut self) {
        let Some(path) = self.path.clone() else {
            return;
        };
        match open_append(&path) {
            Ok(f) => {
                self.file = Some(f);
                self.line(format_args!("reopened the log file {}", path.display()));
            }
            Err(e) => self.line(format_args!(
                "reopening the log file {}: {e}",
                path.display()
            )),
        }
    }

    /// Lines held back while starting (tests).
    #[cfg(test)]
    pub fn held(&self) -> &[String] {
        self.held.as_deref().unwrap_or_default()
    }

    /// Writes one timestamped line. A failing log never stops the forwards.
    pub fn line(&mut self, msg: std::fmt::Arguments<'_>) {
        // Escaped as every diagnostic is: a proxy's text in an error must not start a line.
        let text = format!(
            "{} gimlet: {}\n",
            timestamp(SystemTime::now()),
            crate::diag::escape(&msg.to_string())
        );
        match &mut self.held {
            Some(held) => held.push(text),
            None => self.write(&text),
        }
    }

    fn write(&mut self, text: &str) {
        match &mut self.file {
            Some(f) => {
                if self.dropped > 0 {
                    let note = format!(
                        "{} gimlet: {} log line(s) dropped: the log could not take them\n",
                        timestamp(SystemTime::now()),
                        self.dropped
                    );
                    // All or nothing: a short write of a line would leave half a line.
                    match f.write(note.as_bytes()) {
                        Ok(n) if n == note.len() => self.dropped = 0,
                        _ => {
                            self.dropped += 1;
                            return;
                        }
                    }
                }
                match f.write(text.as_bytes()) {
                    Ok(n) if n == text.len() => {}
                    Ok(n) => {
                        let _ = f.write_all(&text.as_bytes()[n..]);
                    }
                    Err(_) => self.dropped += 1,
                }
            }
            None if !self.quiet => {
                let _ = io::stderr().lock().write_all(text.as_bytes());
            }
            None => {}
        }
    }
}

/// Opened non-blocking: a FIFO with no reader fails at once (ENXIO) instead of stopping the
/// loop in open(2), and a write the file cannot take now drops the line (counted) instead of
/// stalling every session. A regular file is not affected by the flag.
fn open_append(path: &std::path::Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
}

/// RFC 3339 in UTC with milliseconds.
pub fn timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let (y, m, day) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 → (year, month, day), Howard Hinnant's `civil_from_days`.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn each_event_stays_one_inert_line() {
        let mut log = Log::open(None, true).unwrap();
        log.line(format_args!(
            "proxy said: {}",
            "a\r\n2026 gimlet: forged\u{202e}"
        ));
        let held = log.held.take().unwrap();
        assert_eq!(held.len(), 1);
        assert!(
            held[0].ends_with(" gimlet: proxy said: a\\r\\n2026 gimlet: forged\\u{202e}\n"),
            "{:?}",
            held[0]
        );
    }

    /// A log whose file is one end of a socket pair that nobody reads until told: a reader
    /// that fell behind, as a full FIFO is.
    fn log_to_a_slow_reader() -> (Log, std::os::unix::net::UnixStream) {
        let (writer, reader) = std::os::unix::net::UnixStream::pair().unwrap();
        writer.set_nonblocking(true).unwrap();
        reader.set_nonblocking(true).unwrap();
        let file = File::from(std::os::fd::OwnedFd::from(writer));
        let mut log = Log::open(None, true).unwrap();
        log.file = Some(file);
        log.release();
        (log, reader)
    }

    fn read_all(reader: &mut std::os::unix::net::UnixStream) -> String {
        use std::io::Read;
        let mut text = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => text.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("reading the log: {e}"),
            }
        }
        String::from_utf8(text).unwrap()
    }

    #[test]
    fn lines_a_full_log_cannot_take_are_counted_and_reported_with_the_next_line() {
        let (mut log, mut reader) = log_to_a_slow_reader();
        // Fill the socket until lines are dropped (never blocking: the loop would stall).
        let mut written = 0;
        while log.dropped == 0 {
            log.line(format_args!("filler line {written}"));
            written += 1;
            assert!(written < 1_000_000, "the log never filled up");
        }
        log.line(format_args!("dropped too"));
        log.line(format_args!("and this one"));
        assert_eq!(log.dropped, 3);
        // The reader catches up: the next line says how many were lost, then goes out whole.
        let before = read_all(&mut reader);
        assert!(before.ends_with('\n'), "half a line written: {before:?}");
        assert!(!before.contains("dropped too"));
        log.line(format_args!("caught up"));
        let after = read_all(&mut reader);
        let lines: Vec<&str> = after.lines().collect();
        assert_eq!(lines.len(), 2, "{after:?}");
        assert!(
            lines[0].ends_with(" gimlet: 3 log line(s) dropped: the log could not take them"),
            "{after:?}"
        );
        assert!(lines[1].ends_with(" gimlet: caught up"), "{after:?}");
        assert_eq!(log.dropped, 0);
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let at = |s: u64, ms: u64| timestamp(UNIX_EPOCH + Duration::from_millis(s * 1000 + ms));
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(at(1_796_110_332, 999), "2026-12-01T07:32:12.999Z");
        assert_eq!(at(4_107_542_399, 0), "2100-02-28T23:59:59.000Z");
    }
}
