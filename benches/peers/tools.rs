//! The relays under test: the peer tools and their command lines, gimlet (plain, copying and
//! behind a local TLS front), and the in-process baselines (copying and splicing threads).

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::{
    endpoint::{DEST_HOST, DEST_PORT},
    report::which,
    sys::{Memory, Proc, pipe, poll_readable, read_tail, thread_cpu},
};

/// Buffer of the baseline copier: gimlet's own per-direction buffer size.
pub(crate) const BASELINE_BUF: usize = 128 << 10;

pub(crate) const BASELINE: &str = "baseline";
pub(crate) const BASELINE_SPLICE: &str = "baseline-splice";
pub(crate) const GIMLET_COPY: &str = "gimlet-copy";
pub(crate) const GIMLET_TLS: &str = "gimlet-tls";
/// gimlet --proxy-http2 through nghttpx (--http2-proxy) in front of the endpoint.
pub(crate) const GIMLET_H2: &str = "gimlet-h2";
/// gimlet without --proxy-http2 through the same nghttpx: HTTP/1.1 over TLS, same hops.
pub(crate) const GIMLET_H1_NGHTTPX: &str = "gimlet-h1-nghttpx";

/// The program that terminates TLS in front of the endpoint.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Front {
    /// stunnel: TLS, then the bytes as they are (HTTP/1.1 CONNECT to the endpoint).
    Stunnel,
    /// nghttpx --http2-proxy: h2 or HTTP/1.1 over TLS, each CONNECT sent on to the endpoint
    /// as HTTP/1.1. Its frontend windows are raised from the 64 KiB default to 16 MiB so that
    /// the proxy's window is not what is measured.
    Nghttpx,
}

/// A local TLS proxy: stunnel with a throwaway certificate, in front of the endpoint.
pub(crate) struct TlsFront {
    pub(crate) child: std::process::Child,
    pub(crate) dir: PathBuf,
    /// The CA that signed the front's certificate, for `--proxy-cacert`.
    pub(crate) ca: PathBuf,
    pub(crate) port: u16,
    pub(crate) program: &'static str,
}

impl TlsFront {
    pub(crate) fn start(endpoint: u16, front: Front) -> Result<TlsFront, String> {
        let server = match front {
            Front::Stunnel => which("stunnel4")
                .or_else(|| which("stunnel"))
                .ok_or("`stunnel4` not installed")?,
            Front::Nghttpx => which("nghttpx").ok_or("`nghttpx` not installed (nghttp2-proxy)")?,
        };
        which("openssl").ok_or("`openssl` not installed")?;
        // One directory per front started (two rows may use the same program).
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("peers-tls-{}-{n}", std::process::id()));
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
        let mut command = Command::new(server);
        match front {
            Front::Stunnel => {
                let config = dir.join("stunnel.conf");
                let text = format!(
                    "foreground = yes\npid =\noutput = {log}\ncert = {cert}\nkey = {key}\n\
                     [front]\naccept = 127.0.0.1:{port}\nconnect = 127.0.0.1:{endpoint}\n",
                    log = dir.join("stunnel.log").display(),
                    cert = cert.display(),
                    key = key.display(),
                );
                std::fs::write(&config, text)
                    .map_err(|e| format!("writing {}: {e}", config.display()))?;
                command.arg(&config);
            }
            Front::Nghttpx => {
                command
                    .args(["--http2-proxy", "--workers=1", "--no-ocsp"])
                    .arg(format!("--frontend=127.0.0.1,{port}"))
                    .arg(format!("--backend=127.0.0.1,{endpoint}"))
                    .args([
                        "--frontend-http2-window-size=16M",
                        "--frontend-http2-connection-window-size=16M",
                    ])
                    .arg(format!(
                        "--errorlog-file={}",
                        dir.join("nghttpx.log").display()
                    ))
                    .arg("--conf=/dev/null")
                    .arg(&key)
                    .arg(&cert);
            }
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting the TLS front: {e}"))?;
        let front = TlsFront {
            child,
            dir,
            ca,
            port,
            program: match front {
                Front::Stunnel => "stunnel",
                Front::Nghttpx => "nghttpx",
            },
        };
        // Ready when it accepts; the deadline only catches a stunnel that never starts.
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err("the TLS front did not start listening within 10 s".into());
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
pub(crate) const PEERS: &[(&str, &str)] = &[
    ("corkscrew", "corkscrew"),
    ("proxytunnel", "proxytunnel"),
    ("connect-proxy", "connect-proxy"),
    ("nc.openbsd", "nc.openbsd"),
    ("socat", "socat"),
    ("ncat", "ncat"),
];

/// The command line of `name` (at `bin`) for a proxy on 127.0.0.1:`port`.
pub(crate) fn command_line(name: &str, bin: &str, port: u16) -> Vec<String> {
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

pub(crate) struct Relay {
    pub(crate) name: String,
    pub(crate) kind: Kind,
    /// The proxy this row goes through when it is a process of its own (the TLS fronts): its
    /// CPU per GiB is reported next to the tool's, as both share the machine's CPUs.
    pub(crate) front: Option<ProxyProcess>,
}

/// A proxy process in a row's path, for its CPU figure.
#[derive(Clone)]
pub(crate) struct ProxyProcess {
    pub(crate) program: &'static str,
    pub(crate) pid: u32,
}

pub(crate) enum Kind {
    /// A tool process, by its command line.
    Tool(Vec<String>),
    /// A thread of this program moving the bytes itself.
    Baseline(Copier),
}

/// How a baseline thread moves bytes between the pipe and the socket.
#[derive(Clone, Copy)]
pub(crate) enum Copier {
    /// read() into a buffer, write() it out: what a copying relay does.
    ReadWrite,
    /// splice(2): the kernel moves pages between the pipe and the socket, no user copy.
    Splice,
}

impl Relay {
    pub(crate) fn is_tool(&self) -> bool {
        matches!(self.kind, Kind::Tool(_))
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dir {
    Up,
    Down,
}

impl Dir {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Dir::Up => "up",
            Dir::Down => "down",
        }
    }
}

/// A relay at work: a tool process, or the baseline's copier thread.
pub(crate) enum Running {
    Proc { proc: Proc, stderr: Option<File> },
    Thread(BaselineThread),
}

pub(crate) struct BaselineThread {
    /// Disconnected when the thread is over.
    pub(crate) over: Receiver<()>,
    pub(crate) handle: Option<JoinHandle<Result<Duration, String>>>,
    pub(crate) result: Option<Result<Duration, String>>,
}

impl Running {
    /// Waits up to `timeout` for the relay to finish; true when it has.
    pub(crate) fn wait(&mut self, timeout: Duration) -> bool {
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
    pub(crate) fn kill(&mut self) {
        match self {
            Running::Proc { proc, .. } => proc.kill(),
            Running::Thread(_) => {
                self.wait(Duration::from_secs(60));
            }
        }
    }

    pub(crate) fn memory(&self) -> Option<Memory> {
        match self {
            Running::Proc { proc, .. } => proc.memory(),
            Running::Thread(_) => None,
        }
    }

    /// After `wait`: CPU time used, and a problem to report (failed exit, last stderr line).
    pub(crate) fn outcome(&mut self) -> (Option<Duration>, Option<String>) {
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
    pub(crate) fn start(
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
pub(crate) fn baseline_connect(
    proxy: SocketAddr,
    stall: Duration,
) -> Result<(TcpStream, Vec<u8>), String> {
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
pub(crate) const SPLICE_CHUNK: usize = 1 << 20;

/// Moves bytes from `from` to `to` until EOF on `from`, the way `copier` says.
pub(crate) fn pump<R, W>(from: &mut R, to: &mut W, copier: Copier) -> io::Result<()>
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
pub(crate) fn baseline_up(
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
pub(crate) fn baseline_down(
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
