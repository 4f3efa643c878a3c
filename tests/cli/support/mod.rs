//! Shared fixtures for the black-box tests: a scripted fake HTTP proxy,
//! helpers to run gimlet without a controlling terminal, a deterministic
//! data generator and a few small system helpers. The `schemes` module adds
//! what the authentication tests need: proxies that ask for credentials and
//! check them with their own Basic, Digest and NTLM computations.

mod daemon;
mod schemes;
mod socks;

pub use daemon::*;
pub use schemes::*;
pub use socks::*;

use std::any::Any;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// Upper bound for anything that should finish quickly. It only exists to
/// turn a hang into a failure; nothing waits for it to elapse.
pub const HANG: Duration = Duration::from_secs(20);

/// How long a fake proxy connection may sit in a blocking read or write
/// before it gives up (again only a guard against a hang).
const PROXY_IO_LIMIT: Duration = Duration::from_secs(60);

/// Pause between pieces when a proxy deliberately drips its reply.
pub const DRIP: Duration = Duration::from_millis(3);

/// The version gimlet reports in its default User-Agent.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Largest request head the fake proxy will read before giving up.
const HEAD_CAP: usize = 128 * 1024;

/// What a sentinel connection sends so the proxy can tell it from gimlet.
const SENTINEL: &[u8] = b"\0gimlet-test-sentinel\r\n\r\n";

/// The usual success reply.
pub const OK: &str = "HTTP/1.1 200 Connection established\r\n\r\n";

// ---------------------------------------------------------------------------
// Running gimlet
// ---------------------------------------------------------------------------

/// A `std::process::Command` for gimlet that starts it in a new session, so it
/// has no controlling terminal and `/dev/tty` cannot be opened, with no
/// credentials or askpass programs inherited from the environment.
pub fn gimlet_std() -> Command {
    let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("gimlet"));
    for name in [
        "GIMLET_PROXY_AUTH",
        "GIMLET_ASKPASS",
        "SSH_ASKPASS",
        // The proxy environment: HOST PORT would take the machine's proxy.
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
        "no_proxy",
        "NO_PROXY",
    ] {
        cmd.env_remove(name);
    }
    // No Kerberos ticket and no site configuration, whatever the machine has: a fake proxy
    // offering Negotiate must not send gimlet to a real KDC.
    cmd.env("KRB5_CONFIG", "/dev/null").env(
        "KRB5CCNAME",
        "FILE:/nonexistent/gimlet-tests-have-no-ticket",
    );
    // SAFETY: setsid is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// An `assert_cmd::Command` for gimlet (see [`gimlet_std`]) that is killed if
/// it runs for longer than [`HANG`].
pub fn gimlet() -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::from_std(gimlet_std());
    cmd.timeout(HANG);
    cmd
}

/// A gimlet process started with [`spawn`], for tests that stream.
pub struct Running {
    pub stdin: Option<ChildStdin>,
    pub stdout: Option<ChildStdout>,
    pid: libc::pid_t,
    status: mpsc::Receiver<io::Result<ExitStatus>>,
    stderr: Option<JoinHandle<Vec<u8>>>,
    reaped: bool,
}

/// How a [`Running`] gimlet ended.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stderr: String,
}

impl Finished {
    /// The exit code; panics (showing stderr) if gimlet died from a signal.
    pub fn code(&self) -> i32 {
        match self.status.code() {
            Some(code) => code,
            None => panic!(
                "gimlet did not exit normally ({:?}); stderr: {:?}",
                self.status, self.stderr
            ),
        }
    }

    /// Asserts the exit code, showing stderr when it differs.
    #[track_caller]
    pub fn assert_code(&self, expected: i32) {
        assert_eq!(
            self.code(),
            expected,
            "unexpected exit code; stderr: {:?}",
            self.stderr
        );
    }
}

/// Starts `cmd` with stderr captured. Stdin and stdout are whatever the caller
/// configured (use `Stdio::piped()` to get `stdin`/`stdout` handles).
pub fn spawn(cmd: &mut Command) -> Running {
    cmd.stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("cannot start gimlet");
    let pid = child.id() as libc::pid_t;
    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let mut stderr_pipe = child.stderr.take().expect("stderr is piped");
    let stderr = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr_pipe.read_to_end(&mut buf);
        buf
    });
    let (tx, status) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    Running {
        stdin,
        stdout,
        pid,
        status,
        stderr: Some(stderr),
        reaped: false,
    }
}

impl Running {
    /// The process id, e.g. to read /proc/PID.
    pub fn pid(&self) -> libc::pid_t {
        self.pid
    }

    /// Waits for gimlet to exit (closing our end of its stdin first if we
    /// still hold it). Kills it and panics if it is still running after
    /// `limit`.
    pub fn wait(mut self, limit: Duration) -> Finished {
        self.stdin = None;
        self.wait_keeping_stdin(limit)
    }

    /// Like [`Running::wait`] but leaves stdin open while waiting.
    pub fn wait_keeping_stdin(mut self, limit: Duration) -> Finished {
        let status = match self.status.recv_timeout(limit) {
            Ok(status) => status.expect("cannot wait for gimlet"),
            Err(_) => {
                self.kill();
                panic!("gimlet was still running after {limit:?}");
            }
        };
        self.reaped = true;
        let stderr = self
            .stderr
            .take()
            .expect("stderr collector")
            .join()
            .expect("stderr collector panicked");
        Finished {
            status,
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        }
    }

    fn kill(&mut self) {
        if !self.reaped {
            // SAFETY: plain syscall; the child has not been reaped yet, so
            // the pid still belongs to it.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
            }
            self.reaped = self.status.recv_timeout(HANG).is_ok();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.reaped && self.status.try_recv().is_err() {
            self.kill();
        }
    }
}

/// Checks a failed run: expected exit code, nothing on stdout, and exactly one
/// line on stderr of the form `gimlet: <doing what>: <why>`. When `proxy` is
/// given the message must name it (`host:port`). Returns stderr.
#[track_caller]
pub fn assert_failure(output: &Output, code: i32, proxy: Option<&str>) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(
        output.status.code(),
        Some(code),
        "unexpected exit status; stderr: {stderr:?}"
    );
    assert!(
        output.stdout.is_empty(),
        "stdout must be empty on failure, got {:?}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert_error_line(&stderr, proxy);
    stderr
}

/// Checks that `stderr` is exactly one line `gimlet: <doing what>: <why>`,
/// naming `proxy` if given.
#[track_caller]
pub fn assert_error_line(stderr: &str, proxy: Option<&str>) {
    assert!(
        stderr.ends_with('\n') && stderr.matches('\n').count() == 1,
        "stderr must be exactly one line, got {stderr:?}"
    );
    let rest = stderr
        .strip_prefix("gimlet: ")
        .unwrap_or_else(|| panic!("stderr must start with `gimlet: `, got {stderr:?}"));
    assert!(
        rest.trim_end().contains(": "),
        "stderr must read `gimlet: <doing what>: <why>`, got {stderr:?}"
    );
    if let Some(proxy) = proxy {
        assert!(
            stderr.contains(proxy),
            "stderr must name the proxy {proxy}, got {stderr:?}"
        );
    }
}

/// Lossy text of a byte string, for assertions.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

// ---------------------------------------------------------------------------
// The fake proxy
// ---------------------------------------------------------------------------

type Script = dyn Fn(&mut Session) + Send + Sync + 'static;

struct Shared {
    /// (connection index, request head) in the order they were read.
    requests: Mutex<Vec<(usize, Vec<u8>)>>,
    /// Connection indexes that were sentinels rather than gimlet.
    sentinels: Mutex<Vec<usize>>,
    stop: AtomicBool,
}

/// A scripted HTTP proxy on the loopback interface. Each accepted connection
/// runs in its own thread: the proxy reads the request head (recording it),
/// then hands the connection to the script.
pub struct FakeProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    results: Mutex<mpsc::Receiver<(usize, Result<(), String>)>>,
    collected: AtomicUsize,
}

/// What a fake proxy saw, once every connection has been handled.
#[derive(Debug)]
pub struct Record {
    /// Connections gimlet made.
    pub connections: usize,
    /// Request heads received, in order.
    pub requests: Vec<Vec<u8>>,
    /// For each request, an identifier of the connection it came on (equal
    /// identifiers mean the same connection).
    pub request_connections: Vec<usize>,
}

impl Record {
    /// The single request of the single connection, as text.
    #[track_caller]
    pub fn only_request(&self) -> String {
        assert_eq!(self.connections, 1, "expected exactly one connection");
        assert_eq!(
            self.requests.len(),
            1,
            "expected exactly one request, got {:?}",
            self.requests.iter().map(|r| text(r)).collect::<Vec<_>>()
        );
        text(&self.requests[0])
    }

    /// Request `i` as text.
    #[track_caller]
    pub fn request(&self, i: usize) -> String {
        match self.requests.get(i) {
            Some(head) => text(head),
            None => panic!(
                "expected at least {} requests, got {:?}",
                i + 1,
                self.requests.iter().map(|r| text(r)).collect::<Vec<_>>()
            ),
        }
    }

    /// Asserts how many requests came, showing them when the count differs.
    #[track_caller]
    pub fn assert_requests(&self, count: usize) {
        assert_eq!(
            self.requests.len(),
            count,
            "unexpected number of requests: {:?}",
            self.requests.iter().map(|r| text(r)).collect::<Vec<_>>()
        );
    }

    /// Whether requests `a` and `b` came on the same connection.
    #[track_caller]
    pub fn same_connection(&self, a: usize, b: usize) -> bool {
        self.request(a);
        self.request(b);
        self.request_connections[a] == self.request_connections[b]
    }
}

/// One connection from gimlet, handed to a script.
pub struct Session {
    pub stream: TcpStream,
    index: usize,
    shared: Arc<Shared>,
    /// The request head read most recently.
    head: Vec<u8>,
}

impl FakeProxy {
    /// Starts a proxy on `127.0.0.1:0`.
    pub fn start(script: impl Fn(&mut Session) + Send + Sync + 'static) -> FakeProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        FakeProxy::serve(listener, Arc::new(script))
    }

    /// Starts a proxy on `[::1]:0`, or returns `None` when this host has no
    /// IPv6 loopback.
    pub fn start_v6(script: impl Fn(&mut Session) + Send + Sync + 'static) -> Option<FakeProxy> {
        match TcpListener::bind("[::1]:0") {
            Ok(listener) => Some(FakeProxy::serve(listener, Arc::new(script))),
            Err(err) => {
                eprintln!("skipping: no IPv6 loopback ({err})");
                None
            }
        }
    }

    /// A proxy that accepts with 200 and then echoes the tunnel back.
    pub fn echo() -> FakeProxy {
        FakeProxy::start(|s| {
            s.send(OK);
            s.echo();
        })
    }

    /// A proxy that sends `reply` and then waits for gimlet to hang up.
    pub fn replying(reply: impl Into<Vec<u8>>) -> FakeProxy {
        let reply = reply.into();
        FakeProxy::start(move |s| {
            s.send_lossy(&reply);
            s.wait_for_close();
        })
    }

    /// A proxy that accepts with 200, sends nothing and closes the tunnel at
    /// once (after which gimlet should exit 0).
    pub fn accept_and_close() -> FakeProxy {
        FakeProxy::start(|s| {
            s.send(OK);
            s.shutdown_write();
            s.wait_for_close();
        })
    }

    fn serve(listener: TcpListener, script: Arc<Script>) -> FakeProxy {
        let addr = listener.local_addr().expect("local_addr");
        let shared = Arc::new(Shared {
            requests: Mutex::new(Vec::new()),
            sentinels: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::channel();
        let accept_shared = Arc::clone(&shared);
        thread::spawn(move || {
            let mut index = 0;
            for conn in listener.incoming() {
                if accept_shared.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = conn else { continue };
                let shared = Arc::clone(&accept_shared);
                let script = Arc::clone(&script);
                let tx = tx.clone();
                let this = index;
                index += 1;
                thread::spawn(move || run_session(stream, this, shared, script, tx));
            }
        });
        FakeProxy {
            addr,
            shared,
            results: Mutex::new(rx),
            collected: AtomicUsize::new(0),
        }
    }

    /// `host:port` of the proxy (`[::1]:port` for IPv6).
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// The port, as a command-line argument.
    pub fn port(&self) -> String {
        self.addr.port().to_string()
    }

    /// How many connections gimlet has made so far. Exact: every connection
    /// the kernel completed before this call is counted.
    pub fn connections(&self) -> usize {
        let mut probe = TcpStream::connect(self.addr).expect("connect sentinel");
        probe.set_read_timeout(Some(HANG)).expect("timeout");
        probe.write_all(SENTINEL).expect("write sentinel");
        let mut answer = String::new();
        probe
            .read_to_string(&mut answer)
            .expect("sentinel answer (proxy stuck?)");
        let position: usize = answer.parse().expect("sentinel index");
        let earlier = self
            .shared
            .sentinels
            .lock()
            .unwrap()
            .iter()
            .filter(|&&i| i < position)
            .count();
        position - earlier
    }

    /// Waits for every connection gimlet made to be fully handled, fails if
    /// any script panicked, and returns what the proxy received. Call it after
    /// gimlet has exited.
    #[track_caller]
    pub fn finish(&self) -> Record {
        let connections = self.connections();
        let results = self.results.lock().unwrap();
        while self.collected.load(Ordering::SeqCst) < connections {
            match results.recv_timeout(HANG) {
                Ok((index, Ok(()))) => {
                    let _ = index;
                    self.collected.fetch_add(1, Ordering::SeqCst);
                }
                Ok((index, Err(message))) => {
                    panic!("fake proxy script failed on connection {index}: {message}")
                }
                Err(_) => panic!("a fake proxy connection was still busy after {HANG:?}"),
            }
        }
        let mut requests = self.shared.requests.lock().unwrap().clone();
        requests.sort_by_key(|(index, _)| *index);
        Record {
            connections,
            request_connections: requests.iter().map(|(index, _)| *index).collect(),
            requests: requests.into_iter().map(|(_, head)| head).collect(),
        }
    }
}

impl Drop for FakeProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

fn run_session(
    mut stream: TcpStream,
    index: usize,
    shared: Arc<Shared>,
    script: Arc<Script>,
    tx: mpsc::Sender<(usize, Result<(), String>)>,
) {
    let _ = stream.set_read_timeout(Some(PROXY_IO_LIMIT));
    let _ = stream.set_write_timeout(Some(PROXY_IO_LIMIT));
    let _ = stream.set_nodelay(true);
    let head = read_head(&mut stream);
    if head == SENTINEL {
        shared.sentinels.lock().unwrap().push(index);
        let _ = stream.write_all(index.to_string().as_bytes());
        return;
    }
    if shared.stop.load(Ordering::SeqCst) {
        return;
    }
    if !head.is_empty() {
        shared.requests.lock().unwrap().push((index, head.clone()));
    }
    let mut session = Session {
        stream,
        index,
        shared,
        head,
    };
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| script(&mut session)));
    drop(session);
    let _ = tx.send((index, outcome.map_err(panic_message)));
}

fn panic_message(payload: Box<dyn Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".to_owned()
    }
}

impl Session {
    /// The request head read most recently: the one the proxy read before
    /// handing the connection to the script, until [`Session::read_request`]
    /// reads another. Empty if gimlet sent nothing.
    pub fn request(&self) -> &[u8] {
        &self.head
    }

    /// Reads (and records) one more request head on this connection; `None`
    /// if gimlet closed the connection first.
    pub fn read_request(&mut self) -> Option<Vec<u8>> {
        let head = read_head(&mut self.stream);
        if head.is_empty() {
            return None;
        }
        self.shared
            .requests
            .lock()
            .unwrap()
            .push((self.index, head.clone()));
        self.head = head.clone();
        Some(head)
    }

    /// Writes all of `bytes` in one call; panics on error.
    #[track_caller]
    pub fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.stream
            .write_all(bytes.as_ref())
            .expect("fake proxy cannot write to gimlet");
    }

    /// Writes `bytes`, ignoring errors (gimlet may already have given up).
    pub fn send_lossy(&mut self, bytes: impl AsRef<[u8]>) -> bool {
        self.stream.write_all(bytes.as_ref()).is_ok()
    }

    /// Sends whatever arrives back until EOF, then closes the write half.
    /// Returns how many bytes went round.
    pub fn echo(&mut self) -> u64 {
        let mut reader = self.stream.try_clone().expect("clone");
        let copied = io::copy(&mut reader, &mut self.stream).expect("echo failed");
        self.shutdown_write();
        copied
    }

    /// Reads until EOF; panics on error.
    #[track_caller]
    pub fn read_to_eof(&mut self) -> Vec<u8> {
        let mut buf = Vec::new();
        self.stream
            .read_to_end(&mut buf)
            .expect("fake proxy read failed");
        buf
    }

    /// Discards whatever arrives until gimlet closes (or the connection
    /// fails).
    pub fn wait_for_close(&mut self) {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    /// Closes the write half (gimlet sees EOF).
    pub fn shutdown_write(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    /// Makes the connection close with a reset (RST) instead of a FIN when
    /// the session ends.
    pub fn reset_on_close(&mut self) {
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: valid socket fd and a properly sized option value.
        let rc = unsafe {
            libc::setsockopt(
                self.stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_LINGER: {}", io::Error::last_os_error());
    }
}

/// Reads a request (or reply) head byte by byte until CRLFCRLF or LFLF, EOF
/// or a cap, from a socket or a TLS session. Returns what was read (empty on
/// immediate EOF or error).
pub fn read_head(stream: &mut impl Read) -> Vec<u8> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while head.len() < HEAD_CAP {
        match stream.read(&mut byte) {
            Ok(0) => break,
            Ok(_) => {
                head.push(byte[0]);
                if head.ends_with(b"\r\n\r\n") || head.ends_with(b"\n\n") {
                    break;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    head
}

/// Writes `bytes` in pieces of `chunk` bytes with a short pause between them,
/// so they tend to arrive in separate reads.
#[track_caller]
pub fn send_split(stream: &mut TcpStream, bytes: &[u8], chunk: usize) {
    for (i, piece) in bytes.chunks(chunk).enumerate() {
        if i > 0 {
            thread::sleep(DRIP);
        }
        stream.write_all(piece).expect("fake proxy cannot write");
    }
}

/// Writes `bytes` split at the given offsets, pausing between the pieces.
#[track_caller]
pub fn send_at(stream: &mut TcpStream, bytes: &[u8], offsets: &[usize]) {
    let mut start = 0;
    for &cut in offsets.iter().chain(std::iter::once(&bytes.len())) {
        if start > 0 {
            thread::sleep(DRIP * 5);
        }
        stream
            .write_all(&bytes[start..cut])
            .expect("fake proxy cannot write");
        start = cut;
    }
}

/// A port on 127.0.0.1 that nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().unwrap().port()
}

// ---------------------------------------------------------------------------
// Data
// ---------------------------------------------------------------------------

/// Deterministic xorshift64* byte stream; the bytes produced do not depend on
/// how the stream is chunked.
pub struct Prng {
    state: u64,
    spare: [u8; 8],
    used: usize,
}

impl Prng {
    pub fn new(seed: u64) -> Prng {
        Prng {
            state: seed | 1,
            spare: [0; 8],
            used: 8,
        }
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn fill(&mut self, out: &mut [u8]) {
        let mut i = 0;
        while i < out.len() && self.used < 8 {
            out[i] = self.spare[self.used];
            self.used += 1;
            i += 1;
        }
        let mut words = out[i..].chunks_exact_mut(8);
        for word in &mut words {
            word.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = words.into_remainder();
        if !rest.is_empty() {
            self.spare = self.next_u64().to_le_bytes();
            self.used = 0;
            for b in rest {
                *b = self.spare[self.used];
                self.used += 1;
            }
        }
    }

    pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0; len];
        Prng::new(seed).fill(&mut out);
        out
    }
}

/// Writes `len` bytes of the stream `seed` to `out`.
pub fn write_stream(out: &mut impl Write, seed: u64, len: usize) -> io::Result<()> {
    let mut prng = Prng::new(seed);
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len());
        prng.fill(&mut buf[..n]);
        out.write_all(&buf[..n])?;
        left -= n;
    }
    Ok(())
}

/// Reads `input` to EOF and checks it is exactly `len` bytes of the stream
/// `seed`, panicking at the first difference.
#[track_caller]
pub fn verify_stream(input: &mut impl Read, seed: u64, len: usize, what: &str) {
    let mut prng = Prng::new(seed);
    let mut buf = vec![0u8; 64 * 1024];
    let mut expected = vec![0u8; 64 * 1024];
    let mut seen = 0usize;
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => panic!("{what}: read failed after {seen} bytes: {e}"),
        };
        assert!(
            seen + n <= len,
            "{what}: more than the {len} bytes sent arrived"
        );
        prng.fill(&mut expected[..n]);
        if buf[..n] != expected[..n] {
            let at = (0..n).find(|&i| buf[i] != expected[i]).unwrap();
            panic!("{what}: corrupted at byte {}", seen + at);
        }
        seen += n;
    }
    assert_eq!(seen, len, "{what}: stream ended early");
}

/// Standard base64 (with padding), written independently of gimlet.
pub fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for group in input.chunks(3) {
        let b = [
            group[0],
            *group.get(1).unwrap_or(&0),
            *group.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= group.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// System helpers
// ---------------------------------------------------------------------------

/// A fresh path in the test scratch directory.
pub fn scratch_path(name: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{}-{n}-{name}", std::process::id()))
}

/// Writes `contents` to a fresh scratch file with the given mode.
pub fn scratch_file(name: &str, contents: &[u8], mode: u32) -> PathBuf {
    let path = scratch_path(name);
    std::fs::write(&path, contents).expect("write scratch file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    path
}

/// A pipe (read end, write end), both close-on-exec.
pub fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors pipe2 fills in.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", io::Error::last_os_error());
    // SAFETY: pipe2 succeeded, so both are fresh descriptors we own.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// Whether O_NONBLOCK is set on the open file description behind `fd`.
pub fn is_nonblocking(fd: &impl AsRawFd) -> bool {
    // SAFETY: F_GETFL on a descriptor we hold.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    assert!(flags >= 0, "F_GETFL: {}", io::Error::last_os_error());
    flags & libc::O_NONBLOCK != 0
}

/// Sets or clears O_NONBLOCK on the open file description behind `fd`.
pub fn set_nonblocking(fd: &impl AsRawFd, on: bool) {
    // SAFETY: F_GETFL/F_SETFL on a descriptor we hold.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        assert!(flags >= 0, "F_GETFL: {}", io::Error::last_os_error());
        let flags = if on {
            flags | libc::O_NONBLOCK
        } else {
            flags & !libc::O_NONBLOCK
        };
        let rc = libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags);
        assert_eq!(rc, 0, "F_SETFL: {}", io::Error::last_os_error());
    }
}

/// Whether `haystack` contains `needle`, ignoring ASCII case.
pub fn contains_ignore_case(haystack: &str, needle: &str) -> bool {
    haystack
        .to_ascii_lowercase()
        .contains(&needle.to_ascii_lowercase())
}

#[test]
fn base64_matches_the_rfc_examples() {
    assert_eq!(base64(b""), "");
    assert_eq!(base64(b"f"), "Zg==");
    assert_eq!(base64(b"fo"), "Zm8=");
    assert_eq!(base64(b"foo"), "Zm9v");
    assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    assert_eq!(
        base64(b"Aladdin:open sesame"),
        "QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
    );
}

#[test]
fn prng_stream_does_not_depend_on_chunking() {
    let whole = Prng::bytes(7, 1000);
    let mut prng = Prng::new(7);
    let mut pieces = vec![0u8; 1000];
    let mut at = 0;
    for size in [1, 3, 8, 13, 0, 100, 875] {
        prng.fill(&mut pieces[at..at + size]);
        at += size;
    }
    assert_eq!(whole, pieces);
}

/// A file of secrets that group or others can access (any of these modes) is refused before
/// anything is sent: exit 2, a `chmod 600` hint, and the secret it holds never shown.
pub fn assert_open_secret_file_refused(option: &str, contents: &str, secret: &str) {
    for mode in [0o644, 0o640, 0o604, 0o610, 0o620] {
        let file = scratch_file("secret-open", contents.as_bytes(), mode);
        let proxy = FakeProxy::accept_and_close();
        let assert = gimlet()
            .arg(option)
            .arg(&file)
            .args([&proxy.addr(), "example.test", "22"])
            .assert();
        let stderr = assert_failure(assert.get_output(), 2, None);
        assert!(
            stderr.contains("chmod 600"),
            "{option} mode {mode:o}: no `chmod 600` hint in {stderr:?}"
        );
        assert!(!stderr.contains(secret), "password leaked: {stderr:?}");
        assert_eq!(
            proxy.connections(),
            0,
            "{option} mode {mode:o}: contacted the proxy"
        );
    }
}
