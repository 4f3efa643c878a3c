//! The measurements: one transfer (throughput, CPU per GiB, peak RSS, exactly-once check, how
//! the tool exits), the harness's own ceilings, and one handshake (spawn → first tunnel byte).

use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use crate::{
    endpoint::{EARLY_BYTE, Endpoint, Mode},
    opts::{EARLY_EXIT_WINDOW, EXIT_GRACE, Opts, Reader},
    stream::{IO_CHUNK, drain_stdout, drain_stdout_process, expected, feed_stdin},
    sys::{Memory, Proc, pipe, poll_readable, read_tail, tree_cpu},
    tools::{Dir, Kind, Relay, baseline_connect},
};

pub(crate) struct Sample {
    /// MB/s over the data phase.
    pub(crate) mbps: f64,
    /// CPU seconds per GiB moved.
    pub(crate) cpu_per_gib: Option<f64>,
    /// The proxy process's CPU seconds per GiB over the same run (rows through a TLS front).
    pub(crate) proxy_cpu_per_gib: Option<f64>,
    /// Peak RSS over the run, KiB.
    pub(crate) hwm_kib: Option<u64>,
    /// Memory at the last byte.
    pub(crate) memory: Option<Memory>,
    /// Behaviour worth reporting that did not spoil the measurement.
    pub(crate) notes: Vec<String>,
}

/// A failed run.
pub(crate) struct Failure {
    /// Bytes went missing, came out wrong, or appeared from nowhere, and the tool went on.
    pub(crate) data: bool,
    /// The tool stopped moving bytes and had to be killed.
    pub(crate) hung: bool,
    pub(crate) msg: String,
}

impl From<String> for Failure {
    fn from(msg: String) -> Failure {
        Failure {
            data: false,
            hung: false,
            msg,
        }
    }
}

/// Moves `n` bytes through `relay` in direction `dir` and measures it. `Err` is a failed run:
/// wrong or missing bytes, a stall, a tool that had to be killed, or a setup error.
pub(crate) fn transfer(
    relay: &Relay,
    dir: Dir,
    n: u64,
    full: bool,
    opts: &Opts,
    ep: &Endpoint,
) -> Result<Sample, Failure> {
    let pipes = || -> Result<(File, File, File, File), String> {
        let (a, b) = pipe().map_err(|e| format!("pipe: {e}"))?;
        let (c, d) = pipe().map_err(|e| format!("pipe: {e}"))?;
        Ok((a, b, c, d))
    };
    let (stdin_r, stdin_w, stdout_r, stdout_w) = pipes()?;
    let mode = match dir {
        Dir::Up => Mode::Sink(n),
        Dir::Down => Mode::Source(n),
    };
    let mut session = ep.expect(mode, full, opts.stall);
    let proxy_cpu = || relay.front.as_ref().and_then(|f| tree_cpu(f.pid));
    let proxy_before = proxy_cpu();
    let mut running = match relay.start(dir, ep.addr, stdin_r, stdout_w, opts.stall) {
        Ok(r) => r,
        Err(e) => {
            ep.cancel();
            return Err(e.into());
        }
    };

    // The harness's ends: a generator into stdin for up (closing it after n bytes), an open
    // but silent stdin for down (as ssh keeps it); a sink on stdout either way.
    let (writer, mut held_stdin) = match dir {
        Dir::Up => (Some(thread::spawn(move || feed_stdin(stdin_w, n))), None),
        Dir::Down => (None, Some(stdin_w)),
    };
    let (out_done_tx, out_done) = mpsc::channel();
    let out_progress = Arc::new(AtomicU64::new(0));
    let reader = {
        let progress = Arc::clone(&out_progress);
        let target = if dir == Dir::Down { n } else { 0 };
        let read_size = opts.read_size;
        let drain = match opts.reader {
            Reader::Thread => drain_stdout,
            Reader::Process => drain_stdout_process,
        };
        thread::spawn(move || drain(stdout_r, read_size, target, full, progress, out_done_tx))
    };

    // Wait for the last byte at the far end, watching for stalls and early exits.
    let (done, progress) = match dir {
        Dir::Up => (&session.done, Arc::clone(&session.progress)),
        Dir::Down => (&out_done, out_progress),
    };
    // The tool's peak RSS is sampled all along (a tool may exit before the end) and once more
    // after the last byte, while it still holds the tunnel. Not at once: a process just past
    // exec has not loaded anything yet, and that figure would stand for a tool that is gone
    // before the first tick.
    let mut hwm_kib = None;
    let mut stalled: Option<String> = None;
    let mut last = (0u64, Instant::now());
    let mut exited = false;
    let mut input_done = false;
    let t_end = loop {
        match done.recv_timeout(Duration::from_millis(50)) {
            Ok(t) => break Some(t),
            Err(RecvTimeoutError::Disconnected) => break None,
            Err(RecvTimeoutError::Timeout) => {}
        }
        hwm_kib = hwm_kib.max(running.memory().map(|m| m.hwm_kib));
        let now = Instant::now();
        let moved = progress.load(Ordering::Relaxed);
        if moved != last.0 {
            last = (moved, now);
        }
        exited = exited || running.wait(Duration::ZERO);
        input_done = input_done
            || match dir {
                Dir::Up => writer.as_ref().is_some_and(|w| w.is_finished()),
                Dir::Down => session.done.try_recv().is_ok(),
            };
        // Once the tool is gone, or has been handed every byte, only bytes already in flight
        // can still arrive: a short wait tells a lost byte from a slow one.
        let limit = if exited || input_done {
            opts.stall.min(Duration::from_secs(1))
        } else {
            opts.stall
        };
        if now - last.1 >= limit {
            stalled = Some(if exited {
                "the tool exited with the transfer incomplete".to_string()
            } else if input_done {
                format!(
                    "nothing more came for {:.0}s after the tool had been handed every byte",
                    limit.as_secs_f64()
                )
            } else {
                format!("no byte moved for {:.0}s", limit.as_secs_f64())
            });
            break None;
        }
    };
    // Up to the last byte, as the tool's throughput is.
    let proxy_used = proxy_cpu()
        .zip(proxy_before)
        .map(|(after, before)| after - before);
    let memory = running.memory();
    hwm_kib = hwm_kib.max(memory.map(|m| m.hwm_kib));
    let mut notes = Vec::new();
    // A tool that does not wait for the far side exits right after its stdin EOF: give it the
    // time to show that, before the far side closes.
    if dir == Dir::Up && t_end.is_some() && running.wait(EARLY_EXIT_WINDOW) {
        notes.push(
            "up: exits at stdin EOF without waiting for the far side to close the tunnel \
             (anything the far side sends after that is lost)"
                .to_string(),
        );
    }

    // The far side closes; the tool should exit. In the down test stdin is still open, as ssh
    // keeps it: a tool that waits for it too gets it closed, and that is noted.
    session.release();
    let mut finished = running.wait(EXIT_GRACE);
    if !finished {
        if let Some(stdin) = held_stdin.take() {
            drop(stdin);
            finished = running.wait(EXIT_GRACE);
            if finished {
                notes.push(format!(
                    "{}: does not exit when the far side closes while stdin is open; exits once \
                     stdin is closed too",
                    dir.name()
                ));
            }
        }
    }
    let mut stuck = None;
    if !finished {
        running.kill();
        let g = EXIT_GRACE.as_secs();
        stuck = Some(match dir {
            Dir::Up => {
                format!("did not exit within {g}s of the far side closing (stdin at EOF); killed")
            }
            Dir::Down => format!(
                "did not exit within {g}s of the far side closing, nor {g}s after stdin closed; \
                 killed"
            ),
        });
    }
    drop(held_stdin);
    let (written, write_err) = writer.map(|w| w.join().unwrap()).unwrap_or((0, None));
    let out = reader.join().unwrap();
    // Disarmed first: if the tool never connected, the report channel closes at once.
    ep.cancel();
    let report = session.report.recv_timeout(Duration::from_secs(5)).ok();
    let (cpu, exit_problem) = running.outcome();
    if let Some(p) = &exit_problem {
        notes.push(format!("{}: {p}", dir.name()));
    }

    // Every byte, exactly once, in order.
    let Some(report) = report else {
        let why = "never connected to the proxy".to_string();
        return Err(join_problems([Some(why), exit_problem, stuck]).into());
    };
    if let Some(e) = &report.error {
        notes.push(format!("{}: endpoint: {e}", dir.name()));
    }
    let wrong = match dir {
        Dir::Up => {
            if report.received != n {
                Some(format!(
                    "the far side received {} of {n} bytes",
                    report.received
                ))
            } else if let Some(at) = report.bad_at {
                Some(format!("the far side received a wrong byte at offset {at}"))
            } else if out.bytes != 0 {
                Some(format!("{} unexpected bytes on stdout", out.bytes))
            } else if written != n {
                Some(format!(
                    "took {written} of {n} bytes from stdin ({})",
                    write_err.unwrap_or_default()
                ))
            } else {
                None
            }
        }
        Dir::Down => {
            if out.bytes != n {
                Some(format!(
                    "stdout delivered {} of {n} bytes (endpoint sent {})",
                    out.bytes, report.sent
                ))
            } else if let Some(at) = out.bad_at {
                Some(format!("stdout delivered a wrong byte at offset {at}"))
            } else if report.received != 0 {
                Some(format!(
                    "{} unexpected bytes sent upstream",
                    report.received
                ))
            } else {
                out.error.clone().map(|e| format!("reading stdout: {e}"))
            }
        }
    };
    if wrong.is_some() || stalled.is_some() || stuck.is_some() {
        return Err(Failure {
            data: wrong.is_some() && stuck.is_none(),
            hung: stuck.is_some(),
            msg: join_problems([wrong, stalled, stuck]),
        });
    }
    let (Ok(t_open), Some(t_end)) = (session.opened.try_recv(), t_end) else {
        return Err("the data phase was not timed".to_string().into());
    };
    let secs = (t_end - t_open).as_secs_f64().max(1e-9);
    let gib = n as f64 / (1u64 << 30) as f64;
    Ok(Sample {
        mbps: n as f64 / secs / 1e6,
        cpu_per_gib: cpu.map(|c| c.as_secs_f64() / gib),
        proxy_cpu_per_gib: proxy_used.map(|c| c.as_secs_f64() / gib),
        hwm_kib,
        memory,
        notes,
    })
}

/// The harness's own ceilings, MB/s, each part measured alone with no relay in the path: the
/// endpoint sinking what a thread writes straight into the socket, the endpoint sourcing into a
/// thread that reads the socket, and the stdin generator feeding the stdout sink through a pipe.
pub(crate) struct Capacity {
    pub(crate) sink: Option<f64>,
    pub(crate) source: Option<f64>,
    pub(crate) pipe: Option<f64>,
}

pub(crate) fn capacity(ep: &Endpoint, n: u64, stall: Duration) -> Capacity {
    let rate = |t0: Instant, t1: Instant| n as f64 / (t1 - t0).as_secs_f64().max(1e-9) / 1e6;
    let sink = (|| {
        let mut session = ep.expect(Mode::Sink(n), false, stall);
        let (mut s, _) = baseline_connect(ep.addr, stall).ok()?;
        let t0 = session.opened.recv_timeout(stall).ok()?;
        let mut off = 0u64;
        while off < n {
            let len = (n - off).min(IO_CHUNK as u64) as usize;
            off += s.write(expected(off, len)).ok()? as u64;
        }
        let t1 = session.done.recv_timeout(stall).ok()?;
        session.release();
        Some(rate(t0, t1))
    })();
    ep.cancel();
    let source = (|| {
        let mut session = ep.expect(Mode::Source(n), false, stall);
        let (mut s, early) = baseline_connect(ep.addr, stall).ok()?;
        let t0 = session.opened.recv_timeout(stall).ok()?;
        let mut got = early.len() as u64;
        let mut buf = vec![0u8; IO_CHUNK];
        while got < n {
            match s.read(&mut buf).ok()? {
                0 => return None,
                k => got += k as u64,
            }
        }
        let t1 = Instant::now();
        session.release();
        Some(rate(t0, t1))
    })();
    ep.cancel();
    let pipe = (|| {
        let (r, w) = pipe().ok()?;
        let (done_tx, done) = mpsc::channel();
        let t0 = Instant::now();
        let writer = thread::spawn(move || feed_stdin(w, n));
        let progress = Arc::new(AtomicU64::new(0));
        let reader = thread::spawn(move || drain_stdout(r, IO_CHUNK, n, false, progress, done_tx));
        let t1 = done.recv().ok();
        let _ = writer.join();
        let _ = reader.join();
        Some(rate(t0, t1?))
    })();
    Capacity { sink, source, pipe }
}

pub(crate) fn join_problems<const N: usize>(parts: [Option<String>; N]) -> String {
    let v: Vec<String> = parts.into_iter().flatten().collect();
    v.join("; ")
}

/// Spawn (or, for the baseline, connect) → first tunnel byte; then the tool is wound down.
/// Returns the latency and notes about how the tool ended.
pub(crate) fn handshake(
    relay: &Relay,
    opts: &Opts,
    ep: &Endpoint,
) -> Result<(Duration, Vec<String>), Failure> {
    let mut session = ep.expect(Mode::Early, false, opts.stall);
    let Kind::Tool(argv) = &relay.kind else {
        let t0 = Instant::now();
        let r = baseline_connect(ep.addr, opts.stall).map(|(mut s, early)| {
            let mut first = early.first().copied();
            if first.is_none() {
                let mut b = [0u8; 1];
                if let Ok(1) = s.read(&mut b) {
                    first = Some(b[0]);
                }
            }
            (t0.elapsed(), first)
        });
        session.release();
        ep.cancel();
        return match r {
            Ok((dt, Some(EARLY_BYTE))) => Ok((dt, Vec::new())),
            Ok(_) => Err("no early byte".to_string().into()),
            Err(e) => Err(e.into()),
        };
    };

    let (stdin_r, stdin_w) = pipe().map_err(|e| format!("pipe: {e}"))?;
    let (mut stdout_r, stdout_w) = pipe().map_err(|e| format!("pipe: {e}"))?;
    let (stderr_r, stderr_w) = pipe().map_err(|e| format!("pipe: {e}"))?;
    let t0 = Instant::now();
    let mut proc = match Proc::spawn(argv, stdin_r, stdout_w, stderr_w) {
        Ok(p) => p,
        Err(e) => {
            ep.cancel();
            return Err(format!("spawning {}: {e}", argv[0]).into());
        }
    };
    // Wait for the first byte. Once the far side has sent it, a second is plenty: a tool that
    // takes longer has lost it. (Polling in slices adds no latency: poll returns at once.)
    let mut buf = [0u8; 4096];
    let mut opened: Option<Instant> = None;
    let first = loop {
        if poll_readable(stdout_r.as_raw_fd(), Duration::from_millis(20)) {
            break stdout_r.read(&mut buf).ok();
        }
        opened = opened.or(session.opened.try_recv().ok());
        let now = Instant::now();
        if now - t0 >= opts.stall || opened.is_some_and(|o| now - o >= Duration::from_secs(1)) {
            break None;
        }
    };
    let dt = t0.elapsed();
    opened = opened.or(session.opened.try_recv().ok());
    drop(stdin_w);
    session.release();

    let mut extra = 0usize;
    let result: Result<Duration, Failure> = match first {
        Some(k) if k > 0 && buf[0] == EARLY_BYTE => {
            extra = k - 1;
            Ok(dt)
        }
        Some(k) if k > 0 => Err(Failure {
            data: true,
            hung: false,
            msg: format!(
                "first stdout bytes were {:?}, not the tunnel's byte",
                String::from_utf8_lossy(&buf[..k.min(40)])
            ),
        }),
        _ if opened.is_some() => Err(Failure {
            data: true,
            hung: false,
            msg: "the byte sent with the 200 never reached stdout".into(),
        }),
        _ => Err(format!("no tunnel opened within {:.0}s", opts.stall.as_secs_f64()).into()),
    };
    // Wind down: stdin closed, far side closed; the tool should exit at once.
    let deadline = Instant::now() + EXIT_GRACE;
    while result.is_ok() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || !poll_readable(stdout_r.as_raw_fd(), left) {
            break;
        }
        match stdout_r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(k) => extra += k,
        }
    }
    let mut notes = Vec::new();
    if !proc.wait(deadline.saturating_duration_since(Instant::now())) {
        proc.kill();
        notes.push(format!(
            "handshake: did not exit within {}s of stdin EOF and the far side's close; killed",
            EXIT_GRACE.as_secs()
        ));
    }
    ep.cancel();
    let tail = read_tail(stderr_r);
    if let Some(exit) = proc.exit.as_ref().filter(|e| !e.success()) {
        let mut why = format!("handshake: {}", exit.describe());
        if !tail.is_empty() {
            let _ = write!(why, " ({tail})");
        }
        notes.push(why);
    }
    if extra > 0 {
        return Err(Failure {
            data: true,
            hung: false,
            msg: format!("{extra} bytes on stdout that the far side never sent"),
        });
    }
    result.map(|dt| (dt, notes))
}
