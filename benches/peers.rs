//! The peers benchmark: gimlet against the other CONNECT tunnel tools found installed
//! (corkscrew, proxytunnel, connect-proxy, `nc.openbsd -X connect`, socat, ncat) and against a
//! no-relay baseline, on loopback, in one run. This file owns the whole measurement: the fast
//! CONNECT endpoint, the stdin generator and stdout sink, the baselines, process spawning and
//! accounting, and the printed report. `benches/run` builds gimlet and starts it.
//!
//! Usage:
//!   benches/run [OPTIONS]                                  (builds gimlet --release first)
//!   GIMLET=target/release/gimlet cargo bench --bench peers -- [OPTIONS]
//!
//! Options:
//!   --size SIZE     bytes per transfer; K, M, G suffixes are KiB, MiB, GiB   [default 2G]
//!   --reps N        transfers per tool and direction                          [default 5]
//!   --spawns N      spawns per tool for the handshake latency                 [default 200]
//!   --tools LIST    comma-separated subset of baseline, baseline-splice, gimlet, gimlet-tls,
//!                   gimlet-copy, corkscrew, proxytunnel, connect-proxy, nc.openbsd, socat,
//!                   ncat                                                      [default all]
//!   --timeout SECS  give up on a run when no byte moved for SECS: the far side closes, and a
//!                   tool that does not exit then is killed and reported       [default 10]
//!   --verify        compare every byte with the expected stream (default: count every byte,
//!                   compare the first MiB of each transfer)
//!   --smoke         quick run for CI (< 30 s once built):
//!                   --size 8M --reps 1 --spawns 20 --verify --timeout 5
//!
//! What is measured, per tool (the printed header's `method` and `baseline` lines say it all):
//! - throughput up (stdin pipe → tool → endpoint) and down (endpoint → tool → stdout pipe), from
//!   the endpoint's `200` to the last byte arriving, in MB/s (10^6 bytes per second);
//! - CPU seconds per GiB of the tool process alone (user + sys, from `wait4`);
//! - peak RSS of the tool: `VmHWM` from /proc, sampled during the run and after the last byte
//!   while the tool still holds the tunnel. Not `ru_maxrss`: the kernel folds the spawning
//!   process's own high-water mark into the child's `ru_maxrss` at exec, so it would report the
//!   harness's size, not the tool's;
//! - handshake latency: spawn → first tunnel byte on the tool's stdout, p50 and p95;
//! - correctness: every byte exactly once and in order, and whether and when the tool exits.
//!
//! Tools are interleaved round-robin (the order rotating each repetition) so machine drift hits
//! them all alike. Progress goes to stderr; the report (markdown) goes to stdout.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

// ---------------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------------

const USAGE: &str = "usage: benches/run [OPTIONS]   (or: cargo bench --bench peers -- [OPTIONS])";

const HELP: &str =
    "Measures gimlet against the CONNECT tunnel tools found installed, and a no-relay baseline.

Options:
  --size SIZE     bytes per transfer; K, M, G suffixes are KiB, MiB, GiB   [default 2G]
  --reps N        transfers per tool and direction                          [default 5]
  --spawns N      spawns per tool for the handshake latency                 [default 200]
  --tools LIST    comma-separated subset of baseline, baseline-splice, gimlet, gimlet-tls,
                  gimlet-copy, corkscrew, proxytunnel, connect-proxy, nc.openbsd, socat,
                  ncat                                                      [default all]
  --timeout SECS  give up on a run when no byte moved for SECS              [default 10]
  --verify        compare every byte (default: count every byte, compare the first MiB)
  --smoke         quick run for CI: --size 8M --reps 1 --spawns 20 --verify --timeout 5

The report (markdown) goes to stdout, progress to stderr. GIMLET=path selects the binary.";

struct Opts {
    /// Bytes per transfer.
    size: u64,
    /// Transfers per tool and direction.
    reps: usize,
    /// Measured spawns per tool for the handshake latency.
    spawns: usize,
    /// Only these tools (by name), when given.
    tools: Option<Vec<String>>,
    /// A run with no byte moving for this long is killed and reported.
    stall: Duration,
    /// Compare every byte, not only the first period of the stream.
    verify: bool,
    smoke: bool,
    /// The arguments as given, for the header.
    args: Vec<String>,
}

/// Setup runs per tool: a small transfer each way and one handshake.
const SETUP_RUNS: usize = 3;
/// How long a tool may take to exit once the far side has closed (socat lingers 0.5 s by
/// design), and then once more after stdin is closed too, before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(1);
/// Up test: how long after the last byte a tool is watched for exiting while the far side still
/// holds the tunnel open.
const EARLY_EXIT_WINDOW: Duration = Duration::from_millis(200);

fn parse_size(s: &str) -> Option<u64> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, mult) = match t.chars().last()? {
        'k' | 'K' => (&t[..t.len() - 1], 1u64 << 10),
        'm' | 'M' => (&t[..t.len() - 1], 1 << 20),
        'g' | 'G' => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    num.parse::<u64>()
        .ok()?
        .checked_mul(mult)
        .filter(|&n| n > 0)
}

fn parse_opts(args: Vec<String>) -> Result<Opts, String> {
    let mut size = None;
    let mut reps = None;
    let mut spawns = None;
    let mut tools = None;
    let mut stall = None;
    let mut verify = false;
    let mut smoke = false;
    let mut shown = Vec::new();
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        // `cargo bench` passes `--bench` to harness-less benches.
        if arg == "--bench" {
            continue;
        }
        shown.push(arg.clone());
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |what: &str| -> Result<String, String> {
            match inline.clone().or_else(|| it.next()) {
                Some(v) => {
                    if inline.is_none() {
                        shown.push(v.clone());
                    }
                    Ok(v)
                }
                None => Err(format!("{name} needs {what}\n{USAGE}")),
            }
        };
        match name.as_str() {
            "--size" => {
                let v = value("a size")?;
                size = Some(parse_size(&v).ok_or(format!("bad --size {v:?} (e.g. 64M, 2G)"))?);
            }
            "--reps" => {
                let v = value("a count")?;
                reps = Some(
                    v.parse()
                        .ok()
                        .filter(|&n| n > 0)
                        .ok_or(format!("bad --reps {v:?}"))?,
                );
            }
            "--spawns" => {
                let v = value("a count")?;
                spawns = Some(
                    v.parse()
                        .ok()
                        .filter(|&n| n > 0)
                        .ok_or(format!("bad --spawns {v:?}"))?,
                );
            }
            "--tools" => {
                let v = value("a list")?;
                tools = Some(v.split(',').map(|s| s.trim().to_string()).collect());
            }
            "--timeout" => {
                let v = value("seconds")?;
                let secs: f64 = v
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s > 0.0)
                    .ok_or(format!("bad --timeout {v:?}"))?;
                stall = Some(Duration::from_secs_f64(secs));
            }
            "--verify" => verify = true,
            "--smoke" => smoke = true,
            "-h" | "--help" => {
                println!("{USAGE}\n\n{HELP}");
                std::process::exit(0);
            }
            _ => return Err(format!("unknown argument {arg:?}\n{USAGE}")),
        }
    }
    Ok(Opts {
        size: size.unwrap_or(if smoke { 8 << 20 } else { 2 << 30 }),
        reps: reps.unwrap_or(if smoke { 1 } else { 5 }),
        spawns: spawns.unwrap_or(if smoke { 20 } else { 200 }),
        tools,
        stall: stall.unwrap_or(Duration::from_secs(if smoke { 5 } else { 10 })),
        verify: verify || smoke,
        smoke,
        args: shown,
    })
}

// ---------------------------------------------------------------------------------------------
// The byte stream: a fixed pseudo-random pattern, repeated, so any window can be checked
// against the expected bytes with a memcmp and written from a pre-filled buffer.
// ---------------------------------------------------------------------------------------------

/// The pattern's period: a little over 1 MiB, so it does not line up with pipe or socket sizes.
const PERIOD: usize = (1 << 20) + 3;
/// Largest read or write the harness does; at most `PERIOD` so one window is one slice.
const IO_CHUNK: usize = 1 << 20;

/// The pattern, twice over, so `PERIOD` bytes starting anywhere in the first copy are contiguous.
fn pattern() -> &'static [u8] {
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
fn expected(off: u64, len: usize) -> &'static [u8] {
    let start = (off % PERIOD as u64) as usize;
    &pattern()[start..start + len.min(PERIOD)]
}

/// Checks received bytes against the stream: all of them, or only the first period (which
/// catches a leaked reply head, lost early bytes or a shifted stream at no cost).
struct Checker {
    full: bool,
    off: u64,
    bad_at: Option<u64>,
}

impl Checker {
    fn new(full: bool) -> Checker {
        Checker {
            full,
            off: 0,
            bad_at: None,
        }
    }

    fn feed(&mut self, data: &[u8]) {
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

// ---------------------------------------------------------------------------------------------
// System helpers (the only `unsafe` in this file)
// ---------------------------------------------------------------------------------------------

/// A close-on-exec pipe: (read end, write end).
fn pipe() -> io::Result<(File, File)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded: both fds are open and owned by nothing else.
    Ok(unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) })
}

/// Waits until `fd` is readable (data, EOF or error) or `timeout` passes; true when readable.
fn poll_readable(fd: RawFd, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: `p` is one valid pollfd.
        let r = unsafe { libc::poll(&mut p, 1, ms) };
        if r >= 0 {
            return r > 0;
        }
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return false;
        }
    }
}

fn timeval(t: libc::timeval) -> Duration {
    Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
}

/// CPU time (user + sys) of the calling thread.
fn thread_cpu() -> Duration {
    // SAFETY: an all-zero rusage is a valid value for getrusage to overwrite.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid rusage to fill.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    timeval(ru.ru_utime) + timeval(ru.ru_stime)
}

/// A tool's memory (KiB): its peak resident set (`VmHWM`, its own: exec starts a new count),
/// and what is resident now, anonymous (heap, stacks, buffers) and file-backed (code, libraries).
#[derive(Clone, Copy)]
struct Memory {
    hwm_kib: u64,
    anon_kib: u64,
    file_kib: u64,
}

/// How a tool process ended.
struct Exit {
    /// Raw wait status.
    status: libc::c_int,
    /// user + sys of the process (and any children it waited for), from `wait4`.
    cpu: Duration,
}

impl Exit {
    fn success(&self) -> bool {
        libc::WIFEXITED(self.status) && libc::WEXITSTATUS(self.status) == 0
    }

    fn describe(&self) -> String {
        if libc::WIFEXITED(self.status) {
            format!("exit status {}", libc::WEXITSTATUS(self.status))
        } else if libc::WIFSIGNALED(self.status) {
            format!("killed by signal {}", libc::WTERMSIG(self.status))
        } else {
            format!("wait status {:#x}", self.status)
        }
    }
}

/// A spawned tool: its pid (reaped only by `wait`, so signals never hit a reused pid) and a
/// pidfd to sleep on until it exits.
struct Proc {
    pid: libc::pid_t,
    pidfd: Option<OwnedFd>,
    exit: Option<Exit>,
}

impl Proc {
    /// Spawns `argv` with the given stdio and a minimal environment. The `File`s are the
    /// child's ends: they are closed in this process once the child has them.
    fn spawn(argv: &[String], stdin: File, stdout: File, stderr: File) -> io::Result<Proc> {
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            // No credentials or proxy settings from the caller's environment reach the tools.
            .env_clear()
            .envs(std::env::var_os("PATH").map(|p| ("PATH", p)))
            .stdin(Stdio::from(stdin))
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr))
            .spawn()?;
        let pid = child.id() as libc::pid_t;
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        // Without pidfds (Linux < 5.3) `wait` polls instead.
        // SAFETY: a non-negative result is a fresh fd that nothing else owns.
        let pidfd = (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
        Ok(Proc {
            pid,
            pidfd,
            exit: None,
        })
    }

    fn try_reap(&mut self) -> bool {
        if self.exit.is_some() {
            return true;
        }
        let mut status = 0;
        // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `status` and `ru` are valid out-pointers; `pid` is our unreaped child.
        let r = unsafe { libc::wait4(self.pid, &mut status, libc::WNOHANG, &mut ru) };
        if r == self.pid {
            self.exit = Some(Exit {
                status,
                cpu: timeval(ru.ru_utime) + timeval(ru.ru_stime),
            });
        }
        self.exit.is_some()
    }

    /// Waits up to `timeout` for the process to exit and reaps it; true when it has exited.
    fn wait(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.try_reap() {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            match &self.pidfd {
                Some(fd) => {
                    poll_readable(fd.as_raw_fd(), left);
                }
                None => thread::sleep(left.min(Duration::from_millis(2))),
            }
        }
    }

    fn kill(&mut self) {
        if !self.try_reap() {
            // SAFETY: the pid is our child and not reaped yet, so it cannot have been reused.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            self.wait(Duration::from_secs(5));
        }
    }

    /// The process's own memory from /proc, while it is alive.
    fn memory(&self) -> Option<Memory> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        let field = |name: &str| -> Option<u64> {
            let line = status.lines().find(|l| l.starts_with(name))?;
            line.split_whitespace().nth(1)?.parse().ok()
        };
        // An exiting process may already show zeros.
        Some(Memory {
            hwm_kib: field("VmHWM:").filter(|&k| k > 0)?,
            anon_kib: field("RssAnon:")?,
            file_kib: field("RssFile:")?,
        })
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Everything a file descriptor still holds, once its writers are gone (best effort, bounded).
fn read_tail(mut f: File) -> String {
    let mut buf = Vec::new();
    if poll_readable(f.as_raw_fd(), Duration::from_millis(200)) {
        let _ = (&mut f).take(64 << 10).read_to_end(&mut buf);
    }
    let text = String::from_utf8_lossy(&buf);
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// The endpoint: a loopback "proxy" that answers every CONNECT with 200 itself and then plays
// one test's far side. One session is expected at a time; the accept thread answers the head
// inline (the latency path), and a thread per connection runs the data phase.
// ---------------------------------------------------------------------------------------------

const REPLY: &[u8] = b"HTTP/1.1 200 Connection established\r\n\r\n";
/// The byte sent with the `200` in the latency test.
const EARLY_BYTE: u8 = b'X';
/// The CONNECT target every tool is given (the endpoint checks it and ignores it otherwise).
const DEST_HOST: &str = "127.0.0.1";
const DEST_PORT: u16 = 22;

#[derive(Clone, Copy)]
enum Mode {
    /// Read and discard exactly this many bytes, then close.
    Sink(u64),
    /// Send this many bytes as fast as possible, then close.
    Source(u64),
    /// Send one byte with the `200`, then close.
    Early,
}

/// What the far side saw, sent when its connection is over.
#[derive(Default)]
struct Report {
    head: String,
    /// Tunnel bytes received (all of them, including any after the expected count).
    received: u64,
    /// First received byte that differs from the stream.
    bad_at: Option<u64>,
    /// Tunnel bytes sent.
    sent: u64,
    error: Option<String>,
}

/// The endpoint's half of a session.
struct Pending {
    mode: Mode,
    full_verify: bool,
    stall: Duration,
    progress: Arc<AtomicU64>,
    opened: Sender<Instant>,
    done: Sender<Instant>,
    /// Closed (dropped) by the harness when the endpoint may close the connection.
    go: Receiver<()>,
    report: Sender<Report>,
}

/// The harness's half of a session.
struct Session {
    /// When the `200` went out.
    opened: Receiver<Instant>,
    /// Sink mode: when the last expected byte arrived; source mode: when the last byte was
    /// sent. Disconnected when the data phase ended without it.
    done: Receiver<Instant>,
    go: Option<Sender<()>>,
    report: Receiver<Report>,
    /// Sink mode: bytes received so far.
    progress: Arc<AtomicU64>,
}

impl Session {
    /// Lets the endpoint close its side of the tunnel.
    fn release(&mut self) {
        self.go = None;
    }
}

struct Endpoint {
    addr: SocketAddr,
    slot: Arc<Mutex<Option<Pending>>>,
}

impl Endpoint {
    fn start() -> io::Result<Endpoint> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let slot: Arc<Mutex<Option<Pending>>> = Arc::default();
        let accept_slot = Arc::clone(&slot);
        thread::Builder::new()
            .name("endpoint".into())
            .spawn(move || accept_loop(listener, accept_slot))?;
        Ok(Endpoint { addr, slot })
    }

    /// Arms the endpoint for the next connection.
    fn expect(&self, mode: Mode, full_verify: bool, stall: Duration) -> Session {
        let (opened_tx, opened) = mpsc::channel();
        let (done_tx, done) = mpsc::channel();
        let (go, go_rx) = mpsc::channel();
        let (report_tx, report) = mpsc::channel();
        let progress = Arc::new(AtomicU64::new(0));
        *self.slot.lock().unwrap() = Some(Pending {
            mode,
            full_verify,
            stall,
            progress: Arc::clone(&progress),
            opened: opened_tx,
            done: done_tx,
            go: go_rx,
            report: report_tx,
        });
        Session {
            opened,
            done,
            go: Some(go),
            report,
            progress,
        }
    }

    /// Disarms it (the tool never connected); a late connection is then closed at once.
    fn cancel(&self) {
        self.slot.lock().unwrap().take();
    }
}

fn accept_loop(listener: TcpListener, slot: Arc<Mutex<Option<Pending>>>) {
    for conn in listener.incoming() {
        let Ok(mut stream) = conn else { continue };
        let Some(pending) = slot.lock().unwrap().take() else {
            continue;
        };
        let mut report = Report::default();
        let leftover = match answer(&mut stream, &pending, &mut report) {
            Ok(leftover) => leftover,
            Err(e) => {
                report.error = Some(e);
                let _ = pending.report.send(report);
                continue;
            }
        };
        let _ = thread::Builder::new()
            .name("endpoint-conn".into())
            .spawn(move || serve(stream, pending, leftover, report));
    }
}

/// Reads the CONNECT head and answers `200` (with the early byte in `Early` mode), in one write.
/// Returns the bytes that came after the head.
fn answer(stream: &mut TcpStream, p: &Pending, report: &mut Report) -> Result<Vec<u8>, String> {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(p.stall));
    let _ = stream.set_write_timeout(Some(p.stall));
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 4096];
    let end = loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => return Err("closed before the end of the CONNECT head".into()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("reading the CONNECT head: {e}")),
        };
        head.extend_from_slice(&buf[..n]);
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if head.len() > 64 << 10 {
            return Err("CONNECT head over 64 KiB".into());
        }
    };
    report.head = String::from_utf8_lossy(&head[..end]).into_owned();
    let want = format!("CONNECT {DEST_HOST}:{DEST_PORT} HTTP/1.");
    if !report.head.starts_with(&want) {
        return Err(format!("unexpected request line in {:?}", report.head));
    }
    let mut reply = REPLY.to_vec();
    if let Mode::Early = p.mode {
        reply.push(EARLY_BYTE);
        report.sent = 1;
    }
    stream
        .write_all(&reply)
        .map_err(|e| format!("writing the 200: {e}"))?;
    let _ = p.opened.send(Instant::now());
    Ok(head.split_off(end + 4))
}

/// The data phase, then the close: wait for the harness's go, shut down our sending side and
/// read until the tool closes its end (counting anything it still sends).
fn serve(mut stream: TcpStream, p: Pending, leftover: Vec<u8>, mut report: Report) {
    // Long safety timeouts only: a stuck tool is killed by the harness, which unblocks us.
    let _ = stream.set_read_timeout(Some(p.stall * 6));
    let _ = stream.set_write_timeout(Some(p.stall * 6));
    let mut check = Checker::new(p.full_verify);
    let mut buf = vec![0u8; IO_CHUNK];
    check.feed(&leftover);
    report.received = leftover.len() as u64;
    match p.mode {
        Mode::Sink(n) => {
            while report.received < n {
                match stream.read(&mut buf) {
                    Ok(0) => break,
                    Ok(k) => {
                        check.feed(&buf[..k]);
                        report.received += k as u64;
                        p.progress.store(report.received, Ordering::Relaxed);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        report.error = Some(format!("receiving: {e}"));
                        break;
                    }
                }
            }
            if report.received >= n {
                let _ = p.done.send(Instant::now());
            }
        }
        Mode::Source(n) => {
            while report.sent < n {
                let len = (n - report.sent).min(IO_CHUNK as u64) as usize;
                match stream.write(expected(report.sent, len)) {
                    Ok(0) => break,
                    Ok(k) => report.sent += k as u64,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        report.error = Some(format!("sending: {e}"));
                        break;
                    }
                }
            }
            if report.sent >= n {
                let _ = p.done.send(Instant::now());
            }
        }
        Mode::Early => {}
    }
    drop(p.done);
    let _ = p.go.recv();
    let _ = stream.shutdown(Shutdown::Write);
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => {
                check.feed(&buf[..k]);
                report.received += k as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                if report.error.is_none() && e.kind() != io::ErrorKind::ConnectionReset {
                    report.error = Some(format!("reading after close: {e}"));
                }
                break;
            }
        }
    }
    report.bad_at = check.bad_at;
    let _ = p.report.send(report);
}

// ---------------------------------------------------------------------------------------------
// The harness's ends of the tool's stdio
// ---------------------------------------------------------------------------------------------

/// Writes `n` stream bytes into the tool's stdin, then closes it. Returns the bytes written and
/// the error that stopped it early, if any.
fn feed_stdin(mut w: File, n: u64) -> (u64, Option<String>) {
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

struct Drained {
    bytes: u64,
    bad_at: Option<u64>,
    error: Option<String>,
}

/// Reads the tool's stdout to EOF, checking the stream. Sends the time the `target`-th byte
/// arrived on `done` (when `target` > 0); drops `done` at EOF either way.
fn drain_stdout(
    mut r: File,
    target: u64,
    full: bool,
    progress: Arc<AtomicU64>,
    done: Sender<Instant>,
) -> Drained {
    let mut buf = vec![0u8; IO_CHUNK];
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

// ---------------------------------------------------------------------------------------------
// The relays: peer processes, gimlet, and the in-process baseline
// ---------------------------------------------------------------------------------------------

/// Buffer of the baseline copier: gimlet's own per-direction buffer size.
const BASELINE_BUF: usize = 128 << 10;

const BASELINE: &str = "baseline";
const BASELINE_SPLICE: &str = "baseline-splice";
const GIMLET_COPY: &str = "gimlet-copy";
const GIMLET_TLS: &str = "gimlet-tls";

/// A local TLS proxy: stunnel with a throwaway certificate, in front of the endpoint.
struct TlsFront {
    child: std::process::Child,
    dir: PathBuf,
    /// The CA that signed the front's certificate, for `--proxy-cacert`.
    ca: PathBuf,
    port: u16,
}

impl TlsFront {
    fn start(endpoint: u16) -> Result<TlsFront, String> {
        let stunnel = which("stunnel4")
            .or_else(|| which("stunnel"))
            .ok_or("`stunnel4` not installed")?;
        which("openssl").ok_or("`openssl` not installed")?;
        let dir = std::env::temp_dir().join(format!("peers-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        // A throwaway CA and a leaf for 127.0.0.1 signed by it (webpki refuses a CA
        // certificate presented as the server's own).
        let (ca, ca_key) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
        let (cert, key, csr) = (
            dir.join("cert.pem"),
            dir.join("key.pem"),
            dir.join("req.csr"),
        );
        let ext = dir.join("leaf.ext");
        std::fs::write(
            &ext,
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
        )
        .map_err(|e| format!("writing {}: {e}", ext.display()))?;
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut make_ca = Command::new("openssl");
        make_ca.args(["req", "-x509", "-days", "2", "-subj", "/CN=gimlet bench CA"]);
        make_ca
            .args(ec)
            .arg("-keyout")
            .arg(&ca_key)
            .arg("-out")
            .arg(&ca);
        let mut make_request = Command::new("openssl");
        make_request
            .args(["req", "-subj", "/CN=gimlet bench front"])
            .args(ec);
        make_request.arg("-keyout").arg(&key).arg("-out").arg(&csr);
        let mut sign = Command::new("openssl");
        sign.args(["x509", "-req", "-days", "2", "-CAcreateserial", "-in"])
            .arg(&csr);
        sign.arg("-CA").arg(&ca).arg("-CAkey").arg(&ca_key);
        sign.arg("-extfile").arg(&ext).arg("-out").arg(&cert);
        for mut step in [make_ca, make_request, sign] {
            let made = step
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map_err(|e| format!("running openssl: {e}"))?;
            if !made.success() {
                return Err(format!("{step:?} failed: {made}"));
            }
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("picking a port: {e}"))?
            .port();
        let config = dir.join("stunnel.conf");
        let text = format!(
            "foreground = yes\npid =\noutput = {log}\ncert = {cert}\nkey = {key}\n\
             [front]\naccept = 127.0.0.1:{port}\nconnect = 127.0.0.1:{endpoint}\n",
            log = dir.join("stunnel.log").display(),
            cert = cert.display(),
            key = key.display(),
        );
        std::fs::write(&config, text).map_err(|e| format!("writing {}: {e}", config.display()))?;
        let child = Command::new(stunnel)
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting stunnel: {e}"))?;
        let front = TlsFront {
            child,
            dir,
            ca,
            port,
        };
        // Ready when it accepts; the deadline only catches a stunnel that never starts.
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err("stunnel did not start listening within 10 s".into());
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(front)
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The tools, in report order: name, binary, how the issue spells their command line.
const PEERS: &[(&str, &str)] = &[
    ("corkscrew", "corkscrew"),
    ("proxytunnel", "proxytunnel"),
    ("connect-proxy", "connect-proxy"),
    ("nc.openbsd", "nc.openbsd"),
    ("socat", "socat"),
    ("ncat", "ncat"),
];

/// The command line of `name` (at `bin`) for a proxy on 127.0.0.1:`port`.
fn command_line(name: &str, bin: &str, port: u16) -> Vec<String> {
    let (p, dh, dp) = (port.to_string(), DEST_HOST, DEST_PORT.to_string());
    let proxy = format!("127.0.0.1:{p}");
    let args: Vec<String> = match name {
        "gimlet" => vec![proxy, dh.into(), dp],
        "corkscrew" => vec!["127.0.0.1".into(), p, dh.into(), dp],
        // -q: no "Via ..." line on stderr, as one would run it as a ProxyCommand.
        "proxytunnel" => vec![
            "-q".into(),
            "-p".into(),
            proxy,
            "-d".into(),
            format!("{dh}:{dp}"),
        ],
        "connect-proxy" => vec!["-H".into(), proxy, dh.into(), dp],
        "nc.openbsd" => vec![
            "-X".into(),
            "connect".into(),
            "-x".into(),
            proxy,
            dh.into(),
            dp,
        ],
        "socat" => vec![
            "-".into(),
            format!("PROXY:127.0.0.1:{dh}:{dp},proxyport={p}"),
        ],
        "ncat" => vec![
            "--proxy".into(),
            proxy,
            "--proxy-type".into(),
            "http".into(),
            dh.into(),
            dp,
        ],
        _ => unreachable!("unknown tool {name}"),
    };
    std::iter::once(bin.to_string()).chain(args).collect()
}

struct Relay {
    name: String,
    kind: Kind,
}

enum Kind {
    /// A tool process, by its command line.
    Tool(Vec<String>),
    /// A thread of this program moving the bytes itself.
    Baseline(Copier),
}

/// How a baseline thread moves bytes between the pipe and the socket.
#[derive(Clone, Copy)]
enum Copier {
    /// read() into a buffer, write() it out: what a copying relay does.
    ReadWrite,
    /// splice(2): the kernel moves pages between the pipe and the socket, no user copy.
    Splice,
}

impl Relay {
    fn is_tool(&self) -> bool {
        matches!(self.kind, Kind::Tool(_))
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    Up,
    Down,
}

impl Dir {
    fn name(self) -> &'static str {
        match self {
            Dir::Up => "up",
            Dir::Down => "down",
        }
    }
}

/// A relay at work: a tool process, or the baseline's copier thread.
enum Running {
    Proc { proc: Proc, stderr: Option<File> },
    Thread(BaselineThread),
}

struct BaselineThread {
    /// Disconnected when the thread is over.
    over: Receiver<()>,
    handle: Option<JoinHandle<Result<Duration, String>>>,
    result: Option<Result<Duration, String>>,
}

impl Running {
    /// Waits up to `timeout` for the relay to finish; true when it has.
    fn wait(&mut self, timeout: Duration) -> bool {
        match self {
            Running::Proc { proc, .. } => proc.wait(timeout),
            Running::Thread(t) => {
                if t.result.is_none() {
                    if let Err(RecvTimeoutError::Timeout) = t.over.recv_timeout(timeout) {
                        return false;
                    }
                    let joined = t.handle.take().map(|h| h.join());
                    t.result = Some(match joined {
                        Some(Ok(r)) => r,
                        _ => Err("baseline thread panicked".into()),
                    });
                }
                true
            }
        }
    }

    /// Kills a tool process. The baseline thread gives up by itself (socket timeouts).
    fn kill(&mut self) {
        match self {
            Running::Proc { proc, .. } => proc.kill(),
            Running::Thread(_) => {
                self.wait(Duration::from_secs(60));
            }
        }
    }

    fn memory(&self) -> Option<Memory> {
        match self {
            Running::Proc { proc, .. } => proc.memory(),
            Running::Thread(_) => None,
        }
    }

    /// After `wait`: CPU time used, and a problem to report (failed exit, last stderr line).
    fn outcome(&mut self) -> (Option<Duration>, Option<String>) {
        match self {
            Running::Proc { proc, stderr } => {
                let tail = stderr.take().map(read_tail).unwrap_or_default();
                match &proc.exit {
                    Some(exit) if exit.success() => (Some(exit.cpu), None),
                    Some(exit) => {
                        let mut why = exit.describe();
                        if !tail.is_empty() {
                            let _ = write!(why, " ({tail})");
                        }
                        (Some(exit.cpu), Some(why))
                    }
                    None => (None, Some("still running".into())),
                }
            }
            Running::Thread(t) => match &t.result {
                Some(Ok(cpu)) => (Some(*cpu), None),
                Some(Err(e)) => (None, Some(e.clone())),
                None => (None, Some("still running".into())),
            },
        }
    }
}

impl Relay {
    /// Starts the relay between `stdin`/`stdout` (the child's ends of the pipes) and the endpoint.
    fn start(
        &self,
        dir: Dir,
        proxy: SocketAddr,
        stdin: File,
        stdout: File,
        stall: Duration,
    ) -> Result<Running, String> {
        match &self.kind {
            Kind::Tool(argv) => {
                let (err_r, err_w) = pipe().map_err(|e| format!("pipe: {e}"))?;
                let proc = Proc::spawn(argv, stdin, stdout, err_w)
                    .map_err(|e| format!("spawning {}: {e}", argv[0]))?;
                Ok(Running::Proc {
                    proc,
                    stderr: Some(err_r),
                })
            }
            &Kind::Baseline(copier) => {
                let (over_tx, over) = mpsc::channel::<()>();
                let handle = thread::Builder::new()
                    .name("baseline".into())
                    .spawn(move || {
                        let _over = over_tx;
                        match dir {
                            Dir::Up => {
                                drop(stdout);
                                baseline_up(stdin, proxy, stall, copier)
                            }
                            Dir::Down => {
                                drop(stdin);
                                baseline_down(stdout, proxy, stall, copier)
                            }
                        }
                    })
                    .map_err(|e| format!("spawning the baseline thread: {e}"))?;
                Ok(Running::Thread(BaselineThread {
                    over,
                    handle: Some(handle),
                    result: None,
                }))
            }
        }
    }
}

/// The baseline's handshake: connect, CONNECT, read the reply head. Returns the stream and
/// the tunnel bytes that came with the head.
fn baseline_connect(proxy: SocketAddr, stall: Duration) -> Result<(TcpStream, Vec<u8>), String> {
    let mut s = TcpStream::connect(proxy).map_err(|e| format!("connect: {e}"))?;
    let _ = s.set_read_timeout(Some(stall));
    let _ = s.set_write_timeout(Some(stall));
    let head = format!(
        "CONNECT {DEST_HOST}:{DEST_PORT} HTTP/1.1\r\nHost: {DEST_HOST}:{DEST_PORT}\r\n\r\n"
    );
    s.write_all(head.as_bytes())
        .map_err(|e| format!("sending CONNECT: {e}"))?;
    let mut got = Vec::with_capacity(256);
    let mut buf = [0u8; 4096];
    loop {
        let n = s
            .read(&mut buf)
            .map_err(|e| format!("reading the reply: {e}"))?;
        if n == 0 {
            return Err("proxy closed during the reply".into());
        }
        got.extend_from_slice(&buf[..n]);
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok((s, got.split_off(i + 4)));
        }
    }
}

/// Most bytes one splice call is asked to move.
const SPLICE_CHUNK: usize = 1 << 20;

/// Moves bytes from `from` to `to` until EOF on `from`, the way `copier` says.
fn pump<R, W>(from: &mut R, to: &mut W, copier: Copier) -> io::Result<()>
where
    R: Read + AsRawFd,
    W: Write + AsRawFd,
{
    match copier {
        Copier::ReadWrite => {
            let mut buf = vec![0u8; BASELINE_BUF];
            loop {
                let n = match from.read(&mut buf) {
                    Ok(0) => return Ok(()),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                to.write_all(&buf[..n])?;
            }
        }
        Copier::Splice => loop {
            // Wait for the source first: a blocking splice from a socket into a pipe holds the
            // pipe's lock while it waits for data, which would keep the reader from the bytes
            // already in the pipe until more arrive (or the far side closes).
            if !poll_readable(from.as_raw_fd(), Duration::from_secs(3600)) {
                return Err(io::ErrorKind::TimedOut.into());
            }
            // SAFETY: two open fds and null offsets (both are streams); no memory is passed.
            let n = unsafe {
                libc::splice(
                    from.as_raw_fd(),
                    std::ptr::null_mut(),
                    to.as_raw_fd(),
                    std::ptr::null_mut(),
                    SPLICE_CHUNK,
                    libc::SPLICE_F_MOVE,
                )
            };
            if n == 0 {
                return Ok(());
            }
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        },
    }
}

/// Baseline up: a thread moves the stdin pipe into the socket (blocking I/O), half-closes at
/// EOF and waits for the far side to close. Returns its CPU time.
fn baseline_up(
    mut stdin: File,
    proxy: SocketAddr,
    stall: Duration,
    copier: Copier,
) -> Result<Duration, String> {
    let cpu0 = thread_cpu();
    let (mut s, _) = baseline_connect(proxy, stall)?;
    pump(&mut stdin, &mut s, copier).map_err(|e| format!("pipe → socket: {e}"))?;
    let _ = s.shutdown(Shutdown::Write);
    let mut buf = [0u8; 4096];
    while s
        .read(&mut buf)
        .map_err(|e| format!("reading the socket: {e}"))?
        > 0
    {}
    Ok(thread_cpu() - cpu0)
}

/// Baseline down: a thread moves the socket into the stdout pipe until the far side closes.
/// Returns its CPU time.
fn baseline_down(
    mut stdout: File,
    proxy: SocketAddr,
    stall: Duration,
    copier: Copier,
) -> Result<Duration, String> {
    let cpu0 = thread_cpu();
    let (mut s, early) = baseline_connect(proxy, stall)?;
    stdout
        .write_all(&early)
        .map_err(|e| format!("writing the pipe: {e}"))?;
    pump(&mut s, &mut stdout, copier).map_err(|e| format!("socket → pipe: {e}"))?;
    drop(stdout);
    Ok(thread_cpu() - cpu0)
}

// ---------------------------------------------------------------------------------------------
// One transfer
// ---------------------------------------------------------------------------------------------

struct Sample {
    /// MB/s over the data phase.
    mbps: f64,
    /// CPU seconds per GiB moved.
    cpu_per_gib: Option<f64>,
    /// Peak RSS over the run, KiB.
    hwm_kib: Option<u64>,
    /// Memory at the last byte.
    memory: Option<Memory>,
    /// Behaviour worth reporting that did not spoil the measurement.
    notes: Vec<String>,
}

/// A failed run.
struct Failure {
    /// Bytes went missing, came out wrong, or appeared from nowhere, and the tool went on.
    data: bool,
    /// The tool stopped moving bytes and had to be killed.
    hung: bool,
    msg: String,
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
fn transfer(
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
        thread::spawn(move || drain_stdout(stdout_r, target, full, progress, out_done_tx))
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
        hwm_kib,
        memory,
        notes,
    })
}

/// The harness's own ceilings, MB/s, each part measured alone with no relay in the path: the
/// endpoint sinking what a thread writes straight into the socket, the endpoint sourcing into a
/// thread that reads the socket, and the stdin generator feeding the stdout sink through a pipe.
struct Capacity {
    sink: Option<f64>,
    source: Option<f64>,
    pipe: Option<f64>,
}

fn capacity(ep: &Endpoint, n: u64, stall: Duration) -> Capacity {
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
        let reader = thread::spawn(move || drain_stdout(r, n, false, progress, done_tx));
        let t1 = done.recv().ok();
        let _ = writer.join();
        let _ = reader.join();
        Some(rate(t0, t1?))
    })();
    Capacity { sink, source, pipe }
}

fn join_problems<const N: usize>(parts: [Option<String>; N]) -> String {
    let v: Vec<String> = parts.into_iter().flatten().collect();
    v.join("; ")
}

// ---------------------------------------------------------------------------------------------
// One handshake
// ---------------------------------------------------------------------------------------------

/// Spawn (or, for the baseline, connect) → first tunnel byte; then the tool is wound down.
/// Returns the latency and notes about how the tool ended.
fn handshake(
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

// ---------------------------------------------------------------------------------------------
// Results and the report
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Results {
    up: Vec<Sample>,
    down: Vec<Sample>,
    latency: Vec<Duration>,
    /// Failed runs and notes, with how often each was seen.
    problems: BTreeMap<String, usize>,
    /// Setup runs that went well.
    setup_ok: usize,
    /// Runs (setup included) that failed; how many of them lost or garbled bytes, and how
    /// many hung.
    failed: usize,
    data_errors: usize,
    hangs: usize,
    /// Every setup run failed: the tool is left out of the measurement.
    broken: Option<String>,
    /// The setup handshake failed: the latency test is skipped (it would fail every spawn).
    no_latency: bool,
}

impl Results {
    fn problem(&mut self, what: String) {
        *self.problems.entry(what).or_default() += 1;
    }

    fn fail(&mut self, what: &str, f: Failure) {
        self.failed += 1;
        if f.data {
            self.data_errors += 1;
        }
        if f.hung {
            self.hangs += 1;
        }
        self.problem(format!("{what}: {}", f.msg));
    }

    fn rate(&self, dir: Dir) -> Option<f64> {
        let v = match dir {
            Dir::Up => &self.up,
            Dir::Down => &self.down,
        };
        median(v.iter().map(|s| s.mbps).collect())
    }

    fn cpu(&self, dir: Dir) -> Option<f64> {
        let v = match dir {
            Dir::Up => &self.up,
            Dir::Down => &self.down,
        };
        median(v.iter().filter_map(|s| s.cpu_per_gib).collect())
    }

    fn hwm_mib(&self) -> Option<f64> {
        self.up
            .iter()
            .chain(&self.down)
            .filter_map(|s| s.hwm_kib)
            .max()
            .map(|k| k as f64 / 1024.0)
    }

    fn latency_ms(&self, quantile: f64) -> Option<f64> {
        let mut v: Vec<f64> = self.latency.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        // Nearest rank.
        let rank = ((quantile * v.len() as f64).ceil() as usize).clamp(1, v.len());
        Some(v[rank - 1])
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

fn human_size(n: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (unit, name) in UNITS {
        if n >= unit && n % unit == 0 {
            return format!("{} {name}", n / unit);
        }
    }
    for (unit, name) in UNITS {
        if n >= unit {
            return format!("{:.1} {name}", n as f64 / unit as f64);
        }
    }
    format!("{n} B")
}

/// Today's date and time in UTC, from the system clock (no time-zone database needed).
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// The 1-minute load average: other work on the machine shows up here, and in the noise.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// The distribution package and version a binary comes from, where `dpkg-query` can tell.
fn package_version(bin: &Path) -> Option<String> {
    let query = |args: &[&str]| -> Option<String> {
        let out = Command::new("dpkg-query")
            .args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let text = String::from_utf8(out.stdout).ok()?;
        (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
    };
    // With a merged /usr, dpkg may know the file under /bin rather than /usr/bin.
    let canonical = std::fs::canonicalize(bin).ok();
    let unmerged = bin
        .strip_prefix("/usr")
        .ok()
        .map(|rest| Path::new("/").join(rest));
    let owner = [Some(bin.to_path_buf()), canonical, unmerged]
        .into_iter()
        .flatten()
        .find_map(|p| query(&["-S", &p.to_string_lossy()]))?;
    let package = owner.lines().next()?.split(':').next()?.trim().to_string();
    let version = query(&["-W", "-f=${Version}", &package])?;
    Some(format!("{package} {version}"))
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| format!("Linux {}", s.trim()))
        .unwrap_or_else(|_| "unknown kernel".into())
}

fn tool_version(bin: &Path) -> String {
    Command::new(bin)
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|l| l.trim().to_string())
        })
        .unwrap_or_else(|| "version unknown".into())
}

/// The source tree's commit (`-dirty` with uncommitted changes), where git can tell.
fn source_revision() -> Option<String> {
    let out = Command::new("git")
        .args([
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "describe",
            "--always",
            "--dirty",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let rev = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !rev.trim().is_empty()).then(|| rev.trim().to_string())
}

fn which(bin: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(bin))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// gimlet's binary: `$GIMLET`, else `gimlet` next to the profile directory this bench was built
/// into (target/release/deps/peers-* → target/release/gimlet).
fn find_gimlet() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("GIMLET") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("GIMLET={} is not a file", p.display()))
        };
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("gimlet")))
        .filter(|p| p.is_file())
        .ok_or_else(|| {
            "gimlet's release binary not found: run benches/run, or build it with \
             `cargo build --release` (or set GIMLET=path/to/gimlet)"
                .into()
        })
}

/// Whether a source file is newer than the binary (a stale build would be measured).
fn stale(binary: &Path) -> bool {
    let Ok(built) = binary.metadata().and_then(|m| m.modified()) else {
        return false;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut dirs = vec![root.join("src")];
    let mut files = vec![root.join("Cargo.toml"), root.join("Cargo.lock")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                files.push(p);
            }
        }
    }
    files.iter().any(|f| {
        f.metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t > built)
    })
}

fn fmt_opt(v: Option<f64>, prec: usize) -> String {
    v.map_or("—".into(), |x| format!("{x:.prec$}"))
}

struct Header {
    /// The harness's ceilings, measured once per repetition.
    ceilings: Vec<Capacity>,
    revision: Option<String>,
    /// Where each peer comes from, for the header.
    versions: Vec<(String, String)>,
    load_start: String,
    gimlet: PathBuf,
    gimlet_version: String,
    stale: bool,
    command: String,
    started: String,
}

fn report(
    header: &Header,
    opts: &Opts,
    relays: &[Relay],
    skipped: &[(String, String)],
    results: &BTreeMap<String, Results>,
    elapsed: Duration,
) -> String {
    let mut o = String::new();
    let cpus = thread::available_parallelism().map_or(0, |n| n.get());
    let _ = writeln!(o, "# gimlet vs. peers: CONNECT tunnel benchmark\n");
    let _ = writeln!(o, "- date: {}", header.started);
    let _ = writeln!(
        o,
        "- machine: {cpus} CPUs (nproc), {}, {}",
        cpu_model(),
        kernel()
    );
    let load_end = load_average();
    let busy = [&header.load_start, &load_end]
        .iter()
        .filter_map(|l| l.parse::<f64>().ok())
        .any(|l| l > cpus as f64 / 2.0);
    let _ = writeln!(
        o,
        "- load average (1 min) at start / end: {} / {}{}",
        header.load_start,
        load_end,
        if busy {
            " — WARNING: other work was running; expect noisy figures"
        } else {
            ""
        }
    );
    let _ = writeln!(o, "- command: `{}`", header.command);
    let _ = writeln!(
        o,
        "- gimlet: {} ({}{}){}",
        header.gimlet.display(),
        header.gimlet_version,
        header
            .revision
            .as_ref()
            .map_or(String::new(), |r| format!(", source tree at {r}")),
        if header.stale {
            " — WARNING: older than the sources; rebuild with benches/run"
        } else {
            ""
        }
    );
    if !header.versions.is_empty() {
        let list: Vec<String> = header
            .versions
            .iter()
            .map(|(name, v)| format!("{name}: {v}"))
            .collect();
        let _ = writeln!(o, "- peers: {}", list.join("; "));
    }
    let _ = writeln!(
        o,
        "- sizes: {} per transfer, {} transfer(s) per tool and direction, {} handshake spawns \
         per tool; data check: {}",
        human_size(opts.size),
        opts.reps,
        opts.spawns,
        if opts.verify {
            "exact byte count, every byte compared"
        } else {
            "exact byte count, first MiB compared"
        }
    );
    let _ = writeln!(o, "- run time: {:.0} s", elapsed.as_secs_f64());
    if opts.smoke {
        let _ = writeln!(
            o,
            "- SMOKE RUN: sizes too small for the figures to mean much; it checks that every \
             tool moves every byte and exits"
        );
    }
    let _ = writeln!(
        o,
        "- method: a loopback CONNECT endpoint inside this program answers `200` itself, then \
         sinks exactly N bytes (up), sources N bytes from a pre-filled buffer right after the \
         `200` (down), or sends one byte with the `200` (handshake), and closes once the harness \
         has sampled the tool. The tool's stdin and stdout are pipes (64 KiB) fed and drained by \
         harness threads with 1 MiB writes and reads; in the down test stdin stays open and \
         silent, as ssh keeps it. Throughput is N over the time from the endpoint's `200` to the \
         N-th byte arriving (MB = 10^6 bytes), median of the runs. CPU is the tool process's \
         user+sys from wait4, per GiB moved (median). Peak RSS is the tool's VmHWM from /proc, \
         sampled during the run and after the last byte while the tool still holds the tunnel \
         (wait4's ru_maxrss is not used: the kernel carries the spawning process's own peak \
         into it at exec). Handshake latency is spawn → first tunnel byte on the tool's stdout; \
         p95 is the nearest rank. Tools run round-robin, the order rotating each repetition."
    );
    let _ = writeln!(
        o,
        "- baseline: the same pipe and the same loopback socket with no relay process: a thread \
         of this program does what a relay does, connect + CONNECT, then blocking read()/write() \
         with a 128 KiB buffer between the pipe and the socket (half-closing at EOF); its CPU \
         is that thread's own (RUSAGE_THREAD). It pays one pipe copy and one socket copy per \
         byte, as a copying relay does, without a separate process or an event loop; the \
         ratios and gimlet's targets are against it. Its handshake is in-process (connect → \
         first byte, no spawn), shown for scale, not ranked. baseline-splice is the same thread \
         moving the bytes with splice(2) instead (no copy through user memory): the ceiling for \
         a relay that splices, which can beat the copying baseline."
    );
    let ceiling = |f: fn(&Capacity) -> Option<f64>| {
        let v: Vec<f64> = header.ceilings.iter().filter_map(f).collect();
        let (lo, hi) = v
            .iter()
            .fold((f64::MAX, 0f64), |(l, h), &x| (l.min(x), h.max(x)));
        match median(v) {
            Some(m) if header.ceilings.len() > 1 => format!("{m:.0} ({lo:.0}–{hi:.0})"),
            m => fmt_opt(m, 0),
        }
    };
    let _ = writeln!(
        o,
        "- harness ceilings, each part alone with no relay, MB/s (median, range; measured once \
         per repetition): endpoint sink {}, endpoint source {}, stdin generator → pipe → stdout \
         sink {}. The relays' paths hold one more pipe or socket hop than each of these, on \
         the same {cpus} CPUs.",
        ceiling(|c| c.sink),
        ceiling(|c| c.source),
        ceiling(|c| c.pipe)
    );
    let _ = writeln!(o);

    let base = results.get(BASELINE);
    let base_rate = |d: Dir| base.and_then(|b| b.rate(d));
    let fastest_p50 = relays
        .iter()
        .filter(|r| r.is_tool())
        .filter_map(|r| results.get(&r.name)?.latency_ms(0.5))
        .min_by(f64::total_cmp);
    let _ = writeln!(
        o,
        "| tool | up MB/s (× baseline) | down MB/s (× baseline) | CPU s/GiB up / down \
         | peak RSS MiB | handshake p50 / p95 ms (× fastest) | runs ok (setup included) |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---|");
    for r in relays {
        let res = &results[&r.name];
        if res.broken.is_some() {
            let _ = writeln!(
                o,
                "| {} | FAILED every setup run (see below) | | | | | 0 |",
                r.name
            );
            continue;
        }
        let rate = |d: Dir| match (res.rate(d), base_rate(d)) {
            (Some(x), Some(b)) if r.name != BASELINE => format!("{x:.0} ({:.2}×)", x / b),
            (Some(x), _) => format!("{x:.0}"),
            (None, _) => "FAIL".into(),
        };
        let lat = match (res.latency_ms(0.5), res.latency_ms(0.95)) {
            _ if res.no_latency && !r.is_tool() => "(as baseline)".into(),
            _ if res.no_latency => "not measured".into(),
            (Some(p50), Some(p95)) => match (r.is_tool(), fastest_p50) {
                (true, Some(f)) => format!("{p50:.2} / {p95:.2} ({:.2}×)", p50 / f),
                _ => format!("{p50:.2} / {p95:.2} (in-process)"),
            },
            _ => "FAIL".into(),
        };
        let total = SETUP_RUNS + opts.reps * 2 + if res.no_latency { 0 } else { opts.spawns };
        let ok = res.setup_ok + res.up.len() + res.down.len() + res.latency.len();
        let mut runs = format!("{ok}/{total}");
        if res.data_errors > 0 {
            let _ = write!(runs, ", **{} with bytes lost or wrong**", res.data_errors);
        }
        if res.hangs > 0 {
            let _ = write!(runs, ", **{} hung (killed)**", res.hangs);
        }
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} / {} | {} | {} | {runs} |",
            r.name,
            rate(Dir::Up),
            rate(Dir::Down),
            fmt_opt(res.cpu(Dir::Up), 3),
            fmt_opt(res.cpu(Dir::Down), 3),
            fmt_opt(res.hwm_mib(), 2),
            lat,
        );
    }
    for (name, why) in skipped {
        let _ = writeln!(o, "| {name} | skipped: {why} | | | | | |");
    }

    let _ = writeln!(
        o,
        "\nEach run's throughput, MB/s (up | down), and the tool's resident memory at the last \
         byte of its last run:\n"
    );
    let mib = |k: u64| k as f64 / 1024.0;
    for r in relays {
        let res = &results[&r.name];
        if res.broken.is_some() {
            continue;
        }
        let list = |v: &[Sample]| {
            v.iter()
                .map(|s| format!("{:.0}", s.mbps))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let mem = res
            .up
            .iter()
            .chain(&res.down)
            .rev()
            .find_map(|s| s.memory)
            .map_or(String::new(), |m| {
                format!(
                    "; RSS {:.2} MiB = anon {:.2} + file {:.2}",
                    mib(m.anon_kib + m.file_kib),
                    mib(m.anon_kib),
                    mib(m.file_kib)
                )
            });
        let _ = writeln!(
            o,
            "- {}: {} | {}{mem}",
            r.name,
            list(&res.up),
            list(&res.down)
        );
    }

    let _ = writeln!(
        o,
        "\nObservations (failed runs and notable behaviour, with counts):\n"
    );
    let mut any = false;
    for r in relays {
        for (what, count) in &results[&r.name].problems {
            any = true;
            let _ = writeln!(o, "- {}: {what} (×{count})", r.name);
        }
    }
    if !any {
        let _ = writeln!(
            o,
            "- none: every tool moved every byte and exited on its own in every run."
        );
    }

    if let Some(g) = results.get("gimlet").filter(|g| g.broken.is_none()) {
        let _ = writeln!(
            o,
            "\nTargets for gimlet (from the issue; figures, not assertions):\n"
        );
        let verdict = |ok: Option<bool>| match ok {
            Some(true) => "met",
            Some(false) => "NOT met",
            None => "n/a",
        };
        for d in [Dir::Up, Dir::Down] {
            let ratio = g.rate(d).zip(base_rate(d)).map(|(x, b)| x / b);
            let _ = writeln!(
                o,
                "- throughput {} ≥ 0.9× baseline: {} ({})",
                d.name(),
                verdict(ratio.map(|r| r >= 0.9)),
                ratio.map_or("—".into(), |r| format!("{r:.2}×"))
            );
        }
        if let Some(sp) = results.get(BASELINE_SPLICE) {
            let ratio = |d: Dir| {
                g.rate(d)
                    .zip(sp.rate(d))
                    .map_or("—".into(), |(x, b)| format!("{:.2}×", x / b))
            };
            let _ = writeln!(
                o,
                "- for scale, against baseline-splice (no target): up {}, down {}",
                ratio(Dir::Up),
                ratio(Dir::Down)
            );
        }
        let cpu = g.cpu(Dir::Up).zip(g.cpu(Dir::Down)).map(|(a, b)| a.max(b));
        let _ = writeln!(
            o,
            "- CPU ≤ 0.1 s/GiB (worse direction): {} ({} s/GiB; the baseline copier thread: \
             {} / {}){}",
            verdict(cpu.map(|c| c <= 0.1)),
            fmt_opt(cpu, 3),
            fmt_opt(base.and_then(|b| b.cpu(Dir::Up)), 3),
            fmt_opt(base.and_then(|b| b.cpu(Dir::Down)), 3),
            if opts.size < 256 << 20 {
                "; with a small --size, start-up CPU dominates this figure"
            } else {
                ""
            }
        );
        let peer_p50 = relays
            .iter()
            .filter(|r| r.is_tool() && r.name != "gimlet")
            .filter_map(|r| Some((r.name.as_str(), results.get(&r.name)?.latency_ms(0.5)?)))
            .min_by(|a, b| a.1.total_cmp(&b.1));
        let p50 = g.latency_ms(0.5);
        let _ = writeln!(
            o,
            "- handshake p50 no slower than the fastest peer: {} (gimlet {} ms{})",
            verdict(p50.zip(peer_p50).map(|(g, (_, p))| g <= p)),
            fmt_opt(p50, 2),
            peer_p50.map_or(String::new(), |(n, p)| format!(
                ", fastest peer {n} {p:.2} ms"
            ))
        );
        let rss = g.hwm_mib();
        let _ = writeln!(
            o,
            "- peak RSS ≤ 2 MiB: {} ({} MiB)",
            verdict(rss.map(|r| r <= 2.0)),
            fmt_opt(rss, 2)
        );
        if g.failed > 0 {
            let _ = writeln!(
                o,
                "- every run correct (not a target, a requirement): NOT met ({} failed: {} with \
                 bytes lost or wrong, {} hung)",
                g.failed, g.data_errors, g.hangs
            );
        }
    }
    o
}

// ---------------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------------

/// `items` rotated left by `by`, so each repetition starts with a different tool.
fn rotated<T>(items: &[T], by: usize) -> impl Iterator<Item = &T> {
    let k = if items.is_empty() {
        0
    } else {
        by % items.len()
    };
    items[k..].iter().chain(&items[..k])
}

fn main() {
    let opts = match parse_opts(std::env::args().skip(1).collect()) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let gimlet = match find_gimlet() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("peers: {e}");
            std::process::exit(2);
        }
    };
    let ep = match Endpoint::start() {
        Ok(ep) => ep,
        Err(e) => {
            eprintln!("peers: starting the endpoint: {e}");
            std::process::exit(1);
        }
    };
    let port = ep.addr.port();
    let load_start = load_average();
    let mut header = Header {
        revision: source_revision(),
        versions: Vec::new(),
        load_start,
        ceilings: Vec::new(),
        gimlet_version: tool_version(&gimlet),
        stale: stale(&gimlet),
        command: std::env::var("PEERS_BENCH_COMMAND").unwrap_or_else(|_| {
            let mut c = "cargo bench --bench peers".to_string();
            if !opts.args.is_empty() {
                let _ = write!(c, " -- {}", opts.args.join(" "));
            }
            c
        }),
        started: utc_now(),
        gimlet: gimlet.clone(),
    };
    if header.stale {
        eprintln!(
            "peers: warning: {} is older than the sources",
            gimlet.display()
        );
    }

    // The contenders: the two baselines, gimlet, then each peer that is installed.
    let wanted = |name: &str| {
        opts.tools
            .as_ref()
            .is_none_or(|t| t.iter().any(|x| x == name))
    };
    let mut relays = Vec::new();
    let mut skipped = Vec::new();
    for (name, copier) in [
        (BASELINE, Copier::ReadWrite),
        (BASELINE_SPLICE, Copier::Splice),
    ] {
        if wanted(name) {
            relays.push(Relay {
                name: name.into(),
                kind: Kind::Baseline(copier),
            });
        }
    }
    if wanted("gimlet") {
        let bin = gimlet.to_string_lossy().into_owned();
        relays.push(Relay {
            name: "gimlet".into(),
            kind: Kind::Tool(command_line("gimlet", &bin, port)),
        });
    }
    // gimlet through a local TLS proxy (stunnel in front of the same endpoint), for the ratio
    // of TLS to plain in the same run. The front lives until the end of main.
    let mut _tls_front = None;
    if wanted(GIMLET_TLS) {
        match TlsFront::start(port) {
            Ok(front) => {
                let bin = gimlet.to_string_lossy().into_owned();
                relays.push(Relay {
                    name: GIMLET_TLS.into(),
                    kind: Kind::Tool(vec![
                        bin,
                        "--proxy-cacert".into(),
                        front.ca.to_string_lossy().into_owned(),
                        format!("https://127.0.0.1:{}", front.port),
                        DEST_HOST.into(),
                        DEST_PORT.to_string(),
                    ]),
                });
                _tls_front = Some(front);
            }
            Err(e) => skipped.push((GIMLET_TLS.to_string(), e)),
        }
    }
    // gimlet on its copying path, to show what splice(2) buys per direction. `env` execs in
    // place, so the measured process is gimlet itself (its handshake includes env's exec).
    if wanted(GIMLET_COPY) {
        let bin = gimlet.to_string_lossy().into_owned();
        let mut argv = vec!["/usr/bin/env".to_owned(), "GIMLET_NO_SPLICE=1".to_owned()];
        argv.extend(command_line("gimlet", &bin, port));
        relays.push(Relay {
            name: GIMLET_COPY.into(),
            kind: Kind::Tool(argv),
        });
    }
    for &(name, bin) in PEERS {
        if !wanted(name) {
            continue;
        }
        match which(bin) {
            Some(path) => relays.push(Relay {
                name: name.into(),
                kind: Kind::Tool(command_line(name, &path.to_string_lossy(), port)),
            }),
            None => skipped.push((name.to_string(), format!("`{bin}` not installed"))),
        }
    }
    if let Some(t) = &opts.tools {
        let known: Vec<&str> = [BASELINE, BASELINE_SPLICE, "gimlet", GIMLET_TLS, GIMLET_COPY]
            .into_iter()
            .chain(PEERS.iter().map(|p| p.0))
            .collect();
        if let Some(bad) = t.iter().find(|n| !known.contains(&n.as_str())) {
            eprintln!("peers: unknown tool {bad:?}; known: {}", known.join(","));
            std::process::exit(2);
        }
    }
    for r in &relays {
        if let Kind::Tool(argv) = &r.kind {
            eprintln!("peers: {}: {}", r.name, argv.join(" "));
            if !r.name.starts_with("gimlet") {
                let v = package_version(Path::new(&argv[0]));
                let v = v.unwrap_or_else(|| format!("{} (version unknown)", argv[0]));
                header.versions.push((r.name.clone(), v));
            }
        }
    }
    let started = Instant::now();
    let mut results: BTreeMap<String, Results> = relays
        .iter()
        .map(|r| (r.name.clone(), Results::default()))
        .collect();

    // Setup: one small, fully checked transfer each way and one handshake per tool. It warms
    // the page cache, and leaves out a tool that cannot do any of it.
    let small = opts.size.min(1 << 20);
    for r in &relays {
        let res = results.get_mut(&r.name).unwrap();
        let mut failures = Vec::new();
        for dir in [Dir::Up, Dir::Down] {
            let what = format!("setup {} {}", dir.name(), human_size(small));
            match transfer(r, dir, small, true, &opts, &ep) {
                Ok(s) => {
                    res.setup_ok += 1;
                    s.notes.into_iter().for_each(|n| res.problem(n));
                }
                Err(f) => {
                    failures.push(format!("{what}: {}", f.msg));
                    res.fail(&what, f);
                }
            }
        }
        match handshake(r, &opts, &ep) {
            Ok((_, notes)) => {
                res.setup_ok += 1;
                notes.into_iter().for_each(|n| res.problem(n));
            }
            Err(f) => {
                failures.push(format!("setup handshake: {}", f.msg));
                res.fail("setup handshake (latency not measured)", f);
                res.no_latency = true;
            }
        }
        if failures.len() == SETUP_RUNS {
            res.broken = Some(failures.join("; "));
            eprintln!("peers: {}: left out: {}", r.name, failures.join("; "));
        }
    }
    let live: Vec<&Relay> = relays
        .iter()
        .filter(|r| results[&r.name].broken.is_none())
        .collect();

    // Throughput, round-robin.
    for rep in 0..opts.reps {
        eprintln!(
            "peers: [{}/{}] the harness's own ceilings",
            rep + 1,
            opts.reps
        );
        header
            .ceilings
            .push(capacity(&ep, opts.size.min(1 << 30), opts.stall));
        for dir in [Dir::Up, Dir::Down] {
            for r in rotated(&live, rep) {
                let res = results.get_mut(&r.name).unwrap();
                let tag = format!(
                    "[{}/{}] {:<5} {:<14}",
                    rep + 1,
                    opts.reps,
                    dir.name(),
                    r.name
                );
                match transfer(r, dir, opts.size, opts.verify, &opts, &ep) {
                    Ok(s) => {
                        eprintln!(
                            "peers: {tag} {:>7.0} MB/s  cpu {} s/GiB  rss {} MiB",
                            s.mbps,
                            fmt_opt(s.cpu_per_gib, 3),
                            fmt_opt(s.hwm_kib.map(|k| k as f64 / 1024.0), 2),
                        );
                        for n in &s.notes {
                            res.problem(n.clone());
                        }
                        match dir {
                            Dir::Up => res.up.push(s),
                            Dir::Down => res.down.push(s),
                        }
                    }
                    Err(f) => {
                        eprintln!("peers: {tag} FAILED: {}", f.msg);
                        res.fail(dir.name(), f);
                    }
                }
            }
        }
    }

    // Handshake latency, round-robin, one spawn per tool per round. The splice baseline's
    // handshake is the baseline's own: it is not timed twice.
    if let Some(r) = results.get_mut(BASELINE_SPLICE) {
        r.no_latency = true;
    }
    let timed: Vec<&Relay> = live
        .iter()
        .copied()
        .filter(|r| !results[&r.name].no_latency)
        .collect();
    eprintln!("peers: handshake latency, {} spawns per tool", opts.spawns);
    for i in 0..opts.spawns {
        for r in rotated(&timed, i) {
            let res = results.get_mut(&r.name).unwrap();
            match handshake(r, &opts, &ep) {
                Ok((dt, notes)) => {
                    res.latency.push(dt);
                    notes.into_iter().for_each(|n| res.problem(n));
                }
                Err(f) => res.fail("handshake", f),
            }
        }
    }

    let failed = |name: &str| {
        results
            .get(name)
            .is_some_and(|r| r.broken.is_some() || r.failed > 0)
    };
    let gimlet_failed = failed("gimlet") || failed(BASELINE);
    print!(
        "{}",
        report(
            &header,
            &opts,
            &relays,
            &skipped,
            &results,
            started.elapsed()
        )
    );
    // Figures never fail the run; a gimlet (or baseline) run that failed does, so CI notices.
    if gimlet_failed {
        eprintln!("peers: gimlet or the baseline failed a run (see Observations)");
        std::process::exit(1);
    }
}
