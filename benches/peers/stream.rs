//! The byte stream and the harness's ends of the tool's stdio. The stream is a fixed pseudo-random
//! pattern, repeated, so any window can be checked against the expected bytes with a memcmp and
//! written from a pre-filled buffer; the stdin generator writes it and the stdout sink checks it.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// The pattern's period: a little over 1 MiB, so it does not line up with pipe or socket sizes.
pub(crate) const PERIOD: usize = (1 << 20) + 3;
/// Largest read or write the harness does; at most `PERIOD` so one window is one slice.
pub(crate) const IO_CHUNK: usize = 1 << 20;

/// The pattern, twice over, so `PERIOD` bytes starting anywhere in the first copy are contiguous.
pub(crate) fn pattern() -> &'static [u8] {
    static PATTERN: OnceLock<Vec<u8>> = OnceLock::new();
    PATTERN.get_or_init(|| {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut v: Vec<u8> = (0..PERIOD)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect();
        v.extend_from_within(..PERIOD);
        v
    })
}

/// The `len` (at most `PERIOD`) stream bytes starting at stream offset `off`.
pub(crate) fn expected(off: u64, len: usize) -> &'static [u8] {
    let start = (off % PERIOD as u64) as usize;
    &pattern()[start..start + len.min(PERIOD)]
}

/// Checks received bytes against the stream: all of them, or only the first period (which
/// catches a leaked reply head, lost early bytes or a shifted stream at no cost).
pub(crate) struct Checker {
    pub(crate) full: bool,
    pub(crate) off: u64,
    pub(crate) bad_at: Option<u64>,
}

impl Checker {
    pub(crate) fn new(full: bool) -> Checker {
        Checker {
            full,
            off: 0,
            bad_at: None,
        }
    }

    pub(crate) fn feed(&mut self, data: &[u8]) {
        for piece in data.chunks(IO_CHUNK) {
            if self.bad_at.is_none() && (self.full || self.off < PERIOD as u64) {
                let want = expected(self.off, piece.len());
                if piece != want {
                    let i = piece.iter().zip(want).position(|(a, b)| a != b);
                    self.bad_at = Some(self.off + i.unwrap_or(0) as u64);
                }
            }
            self.off += piece.len() as u64;
        }
    }
}

/// Writes `n` stream bytes into the tool's stdin, then closes it. Returns the bytes written and
/// the error that stopped it early, if any.
pub(crate) fn feed_stdin(mut w: File, n: u64) -> (u64, Option<String>) {
    let mut off = 0;
    while off < n {
        let len = (n - off).min(IO_CHUNK as u64) as usize;
        match w.write(expected(off, len)) {
            Ok(0) => return (off, Some("write returned 0".into())),
            Ok(k) => off += k as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (off, Some(e.to_string())),
        }
    }
    (off, None)
}

pub(crate) struct Drained {
    pub(crate) bytes: u64,
    pub(crate) bad_at: Option<u64>,
    pub(crate) error: Option<String>,
}

/// Reads the tool's stdout to EOF, `read_size` bytes at most per read, checking the stream.
/// Sends the time the `target`-th byte arrived on `done` (when `target` > 0); drops `done` at
/// EOF either way.
pub(crate) fn drain_stdout(
    mut r: File,
    read_size: usize,
    target: u64,
    full: bool,
    progress: Arc<AtomicU64>,
    done: Sender<Instant>,
) -> Drained {
    let mut buf = vec![0u8; read_size.clamp(1, IO_CHUNK)];
    let mut check = Checker::new(full);
    let mut done = Some(done);
    let mut bytes = 0u64;
    let error = loop {
        match r.read(&mut buf) {
            Ok(0) => break None,
            Ok(k) => {
                let now = Instant::now();
                bytes += k as u64;
                if target > 0 && bytes >= target {
                    if let Some(d) = done.take() {
                        let _ = d.send(now);
                    }
                }
                check.feed(&buf[..k]);
                progress.store(bytes, Ordering::Relaxed);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break Some(e.to_string()),
        }
    };
    Drained {
        bytes,
        bad_at: check.bad_at,
        error,
    }
}

/// The environment variable that makes this program the stdout reader (`--reader process`):
/// `READ_SIZE:TARGET:FULL`.
pub(crate) const READER_ENV: &str = "PEERS_STDOUT_READER";
/// How often (in bytes) the reader process reports progress: rarely enough that the reports
/// cost nothing next to the reads, often enough for the stall watch.
const REPORT_EVERY: u64 = 16 << 20;

/// The reader process's body, when this program runs as one: drains stdin `read_size` bytes
/// at a time, checking the stream, and reports on stdout: `P <bytes>` now and then, `T` when
/// the `target`-th byte arrived, `E <bytes> <bad_at or -> [error]` at EOF.
pub(crate) fn reader_process(spec: &str) -> ! {
    let mut parts = spec.split(':');
    let mut next = || {
        parts
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let (read_size, target, full) = (next() as usize, next(), next() != 0);
    let mut buf = vec![0u8; read_size.clamp(1, IO_CHUNK)];
    let mut check = Checker::new(full);
    let mut out = io::stdout().lock();
    let (mut bytes, mut reported, mut hit) = (0u64, 0u64, false);
    let mut stdin = io::stdin().lock();
    let error = loop {
        match stdin.read(&mut buf) {
            Ok(0) => break None,
            Ok(k) => {
                bytes += k as u64;
                if target > 0 && bytes >= target && !hit {
                    hit = true;
                    let _ = writeln!(out, "T");
                    let _ = out.flush();
                }
                check.feed(&buf[..k]);
                if bytes - reported >= REPORT_EVERY {
                    reported = bytes;
                    let _ = writeln!(out, "P {bytes}");
                    let _ = out.flush();
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break Some(e.to_string()),
        }
    };
    let bad = check.bad_at.map_or("-".to_string(), |b| b.to_string());
    let _ = writeln!(out, "E {bytes} {bad} {}", error.unwrap_or_default());
    let _ = out.flush();
    std::process::exit(0)
}

/// [`drain_stdout`] in a separate process (this program again, as [`reader_process`]), as a
/// pipeline's next command reads: its own address space, scheduled on its own.
pub(crate) fn drain_stdout_process(
    r: File,
    read_size: usize,
    target: u64,
    full: bool,
    progress: Arc<AtomicU64>,
    done: Sender<Instant>,
) -> Drained {
    let failed = |e: String| Drained {
        bytes: 0,
        bad_at: None,
        error: Some(e),
    };
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => return failed(format!("finding the reader program: {e}")),
    };
    let child = Command::new(exe)
        .env(READER_ENV, format!("{read_size}:{target}:{}", full as u8))
        .stdin(Stdio::from(r))
        .stdout(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return failed(format!("starting the reader process: {e}")),
    };
    let mut done = Some(done);
    let mut result = failed("the reader process ended without a report".into());
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let Ok(line) = line else { break };
        let now = Instant::now();
        let mut words = line.splitn(4, ' ');
        match words.next() {
            Some("T") => {
                progress.store(target, Ordering::Relaxed);
                if let Some(d) = done.take() {
                    let _ = d.send(now);
                }
            }
            Some("P") => {
                let n = words.next().and_then(|v| v.parse().ok()).unwrap_or(0);
                progress.store(n, Ordering::Relaxed);
            }
            Some("E") => {
                let bytes = words.next().and_then(|v| v.parse().ok()).unwrap_or(0);
                let bad_at = words.next().and_then(|v| v.parse().ok());
                let error = words.next().filter(|e| !e.is_empty()).map(str::to_string);
                progress.store(bytes, Ordering::Relaxed);
                result = Drained {
                    bytes,
                    bad_at,
                    error,
                };
            }
            _ => {}
        }
    }
    let _ = child.wait();
    result
}
