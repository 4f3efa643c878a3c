//! The `-D` benchmark: gimlet as a local proxy on loopback.
//!
//! Usage:
//!   benches/run-dynamic [OPTIONS]                 (builds gimlet --release first)
//!   GIMLET=path/to/gimlet cargo bench --bench dynamic -- [OPTIONS]
//!
//! Options:
//!   --secs N        seconds per requests/s measurement                        [default 5]
//!   --clients N     concurrent keep-alive clients for requests/s              [default 8]
//!   --tunnels N     concurrent CONNECT tunnels                                 [default 1000]
//!   --each SIZE     bytes each tunnel echoes (K, M suffixes)                   [default 64K]
//!   --smoke         --secs 1 --tunnels 100
//!
//! What is measured (every response and every echoed byte checked):
//! - requests/s: small GETs (a 100-byte body), `--clients` connections each sending one
//!   request after another on a kept connection, for `--secs`: to the origin itself
//!   (origin-form, the ceiling), through squid (absolute-form, when installed; started here
//!   with a minimal configuration), through `gimlet -D` direct, and through `gimlet -D` and
//!   through cntlm (when installed; benches/run-dynamic installs it where apt can), each with
//!   that squid as its upstream proxy: the same job, a local proxy in front of the corporate
//!   one;
//! - tunnels: `--tunnels` clients at once each ask for `CONNECT` to an echo server, wait for
//!   the 200, echo `--each` bytes and close; the wall time from the first connect to the last
//!   byte, and how many succeeded: through `gimlet -D` direct, and through `gimlet -D`, cntlm
//!   and squid itself with squid upstream.

#[path = "../common/squid.rs"]
mod squid;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use squid::{Squid, free_port, wait_accepting};

const BODY: &[u8] = &[b'x'; 100];

struct Opts {
    secs: u64,
    clients: usize,
    tunnels: usize,
    each: usize,
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let mut o = Opts {
        secs: 5,
        clients: 8,
        tunnels: 1000,
        each: 64 << 10,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().expect("a value").clone();
        match a.as_str() {
            "--secs" => o.secs = value().parse().expect("--secs N"),
            "--clients" => o.clients = value().parse().expect("--clients N"),
            "--tunnels" => o.tunnels = value().parse().expect("--tunnels N"),
            "--each" => o.each = size(&value()),
            "--smoke" => {
                o.secs = 1;
                o.tunnels = 100;
            }
            other => panic!("unknown option {other}"),
        }
    }
    raise_nofile();
    let gimlet = std::env::var("GIMLET").expect("GIMLET=path/to/gimlet");
    let origin = origin();
    let echo = echo();
    println!("# -D benchmark\n");
    println!(
        "loopback; {} keep-alive clients x {} s of GETs (100-byte body); {} CONNECT tunnels x {} bytes echoed\n",
        o.clients, o.secs, o.tunnels, o.each
    );
    println!(
        "| path | requests/s | errors | kept connections closed unasked |\n| --- | ---: | ---: | ---: |"
    );
    let path = format!("http://127.0.0.1:{origin}/small");
    let failed = std::cell::Cell::new(false);
    let mut cntlm = None;
    let row = |name: &str, port: u16, target: &str| {
        let (n, errors, closed) = requests(port, target, o.clients, o.secs);
        println!(
            "| {name} | {:.0} | {errors} | {closed} |",
            n as f64 / o.secs as f64
        );
        // gimlet must answer every request; the others are reference points.
        if name.starts_with("gimlet") && (errors > 0 || closed > 0 || n == 0) {
            failed.set(true);
        }
    };
    row("origin itself (origin-form)", origin, "/small");
    let squid = Squid::start();
    if let Some(s) = &squid {
        row("squid (absolute-form)", s.port, &path);
    }
    let direct = Gimlet::start(&gimlet, &[]);
    row("gimlet -D, direct (absolute-form)", direct.port, &path);
    let mut via_squid = Vec::new();
    let mut via = None;
    if let Some(s) = &squid {
        let g = via.insert(Gimlet::start(&gimlet, &[&format!("127.0.0.1:{}", s.port)]));
        row("gimlet -D via squid (absolute-form)", g.port, &path);
        via_squid.push(("gimlet -D via squid", g.port));
        match Cntlm::start(s.port) {
            Some(c) => {
                row("cntlm via squid (absolute-form)", c.port, &path);
                via_squid.push(("cntlm via squid", c.port));
                cntlm = Some(c);
            }
            None => println!("| cntlm via squid | (not installed) | |"),
        }
        via_squid.push(("squid itself", s.port));
    }
    if squid.is_none() {
        println!("\n(squid not installed: its rows, and cntlm's, are missing)");
    }
    println!();
    println!(
        "{} concurrent CONNECT tunnels, {} bytes echoed each:\n",
        o.tunnels, o.each
    );
    println!("| path | succeeded | wall s | MB/s one way |\n| --- | ---: | ---: | ---: |");
    let mut lost = false;
    let mut notes: Vec<String> = Vec::new();
    let mut tunnel_row = |name: &str, port: u16| {
        let (ok, wall, error) = tunnels(port, echo, o.tunnels, o.each);
        println!(
            "| {name} | {ok} | {:.2} | {:.1} |",
            wall.as_secs_f64(),
            (ok * o.each) as f64 / 1e6 / wall.as_secs_f64()
        );
        if let Some(e) = error {
            notes.push(format!("{name}: first failure: {e}"));
        }
        lost |= name.starts_with("gimlet") && ok < o.tunnels;
    };
    // Untimed first: the harness's own first thousand threads and sockets (stacks faulted in,
    // the echo server's threads) would otherwise be charged to whichever row comes first.
    let _ = tunnels(direct.port, echo, o.tunnels, o.each);
    tunnel_row("gimlet -D, direct", direct.port);
    for (name, port) in &via_squid {
        tunnel_row(name, *port);
    }
    for note in notes.drain(..) {
        println!("\n{note}");
    }
    drop((direct, via, cntlm));
    if failed.get() || lost {
        eprintln!("benches/run-dynamic: gimlet lost requests or tunnels");
        std::process::exit(1);
    }
}

fn size(s: &str) -> usize {
    let (n, mult) = match s.chars().last() {
        Some('K') => (&s[..s.len() - 1], 1 << 10),
        Some('M') => (&s[..s.len() - 1], 1 << 20),
        _ => (s, 1),
    };
    n.parse::<usize>().expect("a size") * mult
}

/// A loopback listener with a server's accept queue. std's `bind` asks for 128 places: when
/// 1,000 tunnels open at once through a client that connects as fast as the kernel completes
/// handshakes (gimlet's workers do; squid, one thread, connects one after another), the
/// queue overflows before this bench's thread-per-connection servers accept, and each
/// dropped SYN costs its tunnel a 1 s (then 2 s) retransmission: the wall time measured the
/// bench's own server. 4096 is what Linux allows by default (net.core.somaxconn).
fn listener() -> TcpListener {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    s.listen(4096).unwrap();
    s.into()
}

/// An origin that answers every request with a 100-byte body, keeping connections.
fn origin() -> u16 {
    let l = listener();
    let port = l.local_addr().unwrap().port();
    thread::spawn(move || {
        for c in l.incoming().flatten() {
            thread::spawn(move || {
                let _ = c.set_nodelay(true);
                let mut r = BufReader::new(c.try_clone().unwrap());
                let mut w = c;
                let answer = [
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", BODY.len()).as_bytes(),
                    BODY,
                ]
                .concat();
                loop {
                    let mut line = String::new();
                    // Request line, then fields up to the blank line (GETs: no body).
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        line.clear();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" || line == "\n" {
                            break;
                        }
                    }
                    if w.write_all(&answer).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

fn echo() -> u16 {
    let l = listener();
    let port = l.local_addr().unwrap().port();
    thread::spawn(move || {
        for c in l.incoming().flatten() {
            thread::Builder::new()
                .stack_size(64 << 10)
                .spawn(move || {
                    let mut c = c;
                    let mut buf = [0u8; 16 << 10];
                    while let Ok(n @ 1..) = c.read(&mut buf) {
                        if c.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                    let _ = c.shutdown(Shutdown::Write);
                })
                .unwrap();
        }
    });
    port
}

/// `clients` keep-alive connections to `port` sending `GET target` for `secs`: (responses,
/// errors, kept connections the far side closed without answering the next request).
fn requests(port: u16, target: &str, clients: usize, secs: u64) -> (u64, u64, u64) {
    let count = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let closed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(clients + 1));
    // Proxy-Connection as browsers and curl send it: cntlm keeps a client's connection only
    // when asked this way.
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: bench\r\nProxy-Connection: keep-alive\r\n\r\n"
    );
    let mut handles = Vec::new();
    for _ in 0..clients {
        let (count, errors, closed, stop, start, request) = (
            count.clone(),
            errors.clone(),
            closed.clone(),
            stop.clone(),
            start.clone(),
            request.clone(),
        );
        handles.push(thread::spawn(move || {
            start.wait();
            while !stop.load(Ordering::Relaxed) {
                let Ok(c) = TcpStream::connect(("127.0.0.1", port)) else {
                    errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let _ = c.set_nodelay(true);
                let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
                let mut r = BufReader::new(c.try_clone().unwrap());
                let mut w = c;
                let mut served = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    match one(&mut w, &mut r, &request) {
                        Ok(kept) => {
                            count.fetch_add(1, Ordering::Relaxed);
                            served += 1;
                            if !kept {
                                break;
                            }
                        }
                        // A kept connection closed without a word before the next answer
                        // (cntlm does this after each response): connect again, as browsers
                        // do, and count it apart from errors.
                        Err(e)
                            if served > 0
                                && matches!(
                                    e.kind(),
                                    io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
                                ) =>
                        {
                            closed.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        Err(e) => {
                            if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                                eprintln!("port {port}: first failed request: {e}");
                            }
                            break;
                        }
                    }
                }
            }
        }));
    }
    start.wait();
    thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    let n = count.load(Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
    (
        n,
        errors.load(Ordering::Relaxed),
        closed.load(Ordering::Relaxed),
    )
}

/// One request and its response (status 200 and the whole body checked); whether the
/// connection stays open after it.
fn one(w: &mut TcpStream, r: &mut BufReader<TcpStream>, request: &str) -> io::Result<bool> {
    w.write_all(request.as_bytes())?;
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    if !line.starts_with("HTTP/1.1 200") && !line.starts_with("HTTP/1.0 200") {
        return Err(io::Error::other(format!("status {line:?}")));
    }
    let mut kept = line.starts_with("HTTP/1.1");
    let mut length = None;
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if line == "\r\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse::<usize>().ok();
        }
        for name in ["connection:", "proxy-connection:"] {
            if let Some(v) = lower.strip_prefix(name) {
                kept = match v.trim() {
                    "close" => false,
                    "keep-alive" => true,
                    _ => kept,
                };
            }
        }
    }
    let mut body = vec![0; length.ok_or_else(|| io::Error::other("no Content-Length"))?];
    r.read_exact(&mut body)?;
    if body != BODY {
        return Err(io::Error::other("wrong body"));
    }
    Ok(kept)
}

/// `n` clients at once: CONNECT through `port` to the echo server, echo `each` bytes. Returns
/// how many succeeded, the wall time, and the first failure.
fn tunnels(port: u16, echo: u16, n: usize, each: usize) -> (usize, Duration, Option<String>) {
    let start = Arc::new(Barrier::new(n + 1));
    let data: Arc<Vec<u8>> = Arc::new((0..each).map(|i| (i * 7 + i / 251) as u8).collect());
    let mut handles = Vec::new();
    for _ in 0..n {
        let (start, data) = (start.clone(), data.clone());
        handles.push(
            thread::Builder::new()
                .stack_size(128 << 10)
                .spawn(move || -> io::Result<()> {
                    start.wait();
                    let mut c = TcpStream::connect(("127.0.0.1", port))?;
                    c.set_read_timeout(Some(Duration::from_secs(60)))?;
                    c.write_all(
                        format!(
                            "CONNECT 127.0.0.1:{echo} HTTP/1.1\r\nHost: 127.0.0.1:{echo}\r\n\r\n"
                        )
                        .as_bytes(),
                    )?;
                    // The reply head, byte by byte: nothing of the tunnel is read with it.
                    let mut head = Vec::new();
                    let mut byte = [0u8];
                    while !head.ends_with(b"\r\n\r\n") && head.len() < 4096 {
                        c.read_exact(&mut byte)?;
                        head.push(byte[0]);
                    }
                    if !head.starts_with(b"HTTP/1.1 200") && !head.starts_with(b"HTTP/1.0 200") {
                        let line = String::from_utf8_lossy(&head);
                        let line = line.lines().next().unwrap_or("").to_owned();
                        return Err(io::Error::other(format!("{line:?}")));
                    }
                    let mut w = c.try_clone()?;
                    let out = data.clone();
                    let writer = thread::Builder::new()
                        .stack_size(64 << 10)
                        .spawn(move || w.write_all(&out))?;
                    // Exactly what was sent, then the close: squid closes a tunnel on the
                    // client's half-close, so the echo cannot be read to the end after it.
                    let mut back = vec![0u8; data.len()];
                    c.read_exact(&mut back)?;
                    writer.join().map_err(|_| io::Error::other("writer"))??;
                    if back != *data {
                        return Err(io::Error::other("echo differs"));
                    }
                    Ok(())
                })
                .unwrap(),
        );
    }
    start.wait();
    let began = Instant::now();
    let mut ok = 0;
    let mut first_error = None;
    for h in handles {
        match h.join() {
            Ok(Ok(())) => ok += 1,
            Ok(Err(e)) => {
                first_error.get_or_insert_with(|| e.to_string());
            }
            Err(_) => {
                first_error.get_or_insert_with(|| "a client thread panicked".to_owned());
            }
        }
    }
    (ok, began.elapsed(), first_error)
}

struct Gimlet {
    child: Child,
    port: u16,
}

impl Gimlet {
    fn start(gimlet: &str, extra: &[&str]) -> Gimlet {
        let port = free_port();
        let child = Command::new(gimlet)
            .args(["-D", &port.to_string(), "-q"])
            .args(extra)
            .env_remove("https_proxy")
            .env_remove("HTTPS_PROXY")
            .env_remove("all_proxy")
            .env_remove("ALL_PROXY")
            .stdin(Stdio::null())
            .spawn()
            .expect("start gimlet");
        wait_accepting(port);
        Gimlet { child, port }
    }
}

impl Drop for Gimlet {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// cntlm (the NTLM local proxy people run for this) in the foreground, configured in a
/// temporary directory, on 127.0.0.1 and an ephemeral port, with `upstream` (squid) as its
/// proxy; `None` when it is not installed or does not start.
struct Cntlm {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Cntlm {
    fn start(upstream: u16) -> Option<Cntlm> {
        let bin = ["/usr/sbin/cntlm", "/usr/bin/cntlm", "/usr/local/sbin/cntlm"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())?;
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("gimlet-bench-cntlm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        // squid here asks for no credentials; cntlm needs an account all the same.
        let conf = format!(
            "Username bench\nDomain bench\nPassword bench\nProxy 127.0.0.1:{upstream}\nListen 127.0.0.1:{port}\n"
        );
        std::fs::write(dir.join("cntlm.conf"), conf).ok()?;
        let child = Command::new(bin)
            .arg("-f")
            .arg("-c")
            .arg(dir.join("cntlm.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        wait_accepting(port);
        Some(Cntlm { child, port, dir })
    }
}

impl Drop for Cntlm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn raise_nofile() {
    // The harness holds sockets for every tunnel's client and echo sides.
    // SAFETY: getrlimit/setrlimit on a struct we own.
    unsafe {
        let mut l: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
        l.rlim_cur = l.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &l);
    }
}
