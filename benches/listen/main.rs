//! The listen-mode benchmark: `gimlet -L` beside the daemons people use for the same job, on
//! loopback, in one run, through a CONNECT endpoint of our own (every tool talks to the same
//! far side) and directly where a tool has no proxy support (rinetd, and `ssh -L` to an sshd of
//! our own on loopback, which opens the far side's connections itself).
//!
//! Usage:
//!   benches/run-listen [OPTIONS]                 (builds gimlet --release first)
//!   GIMLET=target/release/gimlet cargo bench --bench listen -- [OPTIONS]
//!
//! Options:
//!   --size SIZE     bytes per single-tunnel transfer (K, M, G suffixes)      [default 512M]
//!   --active N      concurrent tunnels in the many-tunnels test              [default 1000]
//!   --each SIZE     bytes each of them echoes                                [default 1M]
//!   --idle N        idle tunnels held open for the memory test               [default 9900]
//!   --connects N    connections for the latency test                         [default 200]
//!   --tools LIST    gimlet,gimlet-copy,gimlet-direct,socat,proxytunnel,rinetd,ssh
//!                   [default: all of them found]; gimlet-copy is gimlet -L via the proxy
//!                   with GIMLET_NO_SPLICE=1 (sessions copy through user space)
//!   --before PATH   also measure this gimlet binary (rows "gimlet before", "gimlet-direct
//!                   before"), each right after its counterpart: before/after in one run
//!   --smoke         --size 16M --active 50 --each 256K --idle 500 --connects 20
//!
//! What is measured, per tool (MB = 10^6 bytes):
//! - up / down: one tunnel, `--size` bytes client → far side (the far side answers with the
//!   count it received) and far side → client (every byte checked), MB/s; and the CPU time
//!   (user + system) the daemon spent on both, per GiB moved (single-process daemons only):
//!   on a shared machine MB/s swings with the neighbours' load, CPU per byte much less;
//! - active: `--active` tunnels at once, each echoing `--each` bytes (every byte checked);
//!   aggregate MB/s of payload one way, and the wall time;
//! - latency: connect to the forward → first byte from the far side (which sends it as soon as
//!   its connection is up), p50 / p95, and the ratio of p50s to a client doing the CONNECT itself
//!   through the same endpoint, sampled in turn with the tool's connects (tool then baseline,
//!   baseline then tool, …), so both see the same load; 10 warm-up connects are not counted;
//! - latency through squid (when installed; with `gimlet` among the tools): the same test with
//!   `gimlet -L` via a real proxy that opens its own connection to the far side, as a corporate
//!   proxy does, against the client's own CONNECT through the same squid;
//! - idle (single-process daemons only): `--idle` tunnels opened and left silent; the daemon's
//!   RSS (VmRSS) before and after, and per tunnel (for ssh: the client plus sshd's session
//!   process, the two ends that hold the tunnels).
//!
//! `ssh -L` runs against an sshd started here in the foreground (`sshd -D -e`) on 127.0.0.1
//! with a throwaway host key and user key in a temporary directory, OpenSSH's default cipher,
//! and every forward in one ssh connection; both processes are killed by process group when
//! the row ends, whichever way it ends.
//!
//! The far side runs in a child process (`--far-side`), so the harness's own file descriptors
//! (one per client socket) and the far side's (one per accepted socket) have a limit each.

#[path = "../common/procfs.rs"]
mod procfs;
#[path = "../common/squid.rs"]
mod squid;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use procfs::{cpu_ticks, process_tree, ticks_per_sec};
use squid::{Squid, free_port, wait_accepting};

/// Far-side behaviour, chosen by the port offset (CONNECT target port or direct listener).
const SINK: u16 = 0;
const SOURCE: u16 = 1;
const ECHO: u16 = 2;
const HOLD: u16 = 3;
const EARLY: u16 = 4;
const MODES: u16 = 5;

const REPLY: &[u8] = b"HTTP/1.1 200 Connection established\r\n\r\n";
/// The CONNECT target's port base: target port = BASE + mode.
const BASE: u16 = 10_000;

struct Opts {
    size: u64,
    active: usize,
    each: u64,
    idle: usize,
    connects: usize,
    tools: Vec<String>,
    /// Another gimlet binary measured beside this one.
    before: Option<String>,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--far-side") {
        return far_side();
    }
    raise_nofile();
    let opts = parse(&args);
    let gimlet =
        std::env::var("GIMLET").expect("GIMLET=path/to/gimlet (benches/run-listen sets it)");
    let mut far = FarSide::start();
    println!("# Listen-mode benchmark\n");
    println!(
        "loopback; {} per single transfer, {} tunnels x {} echoed, {} idle tunnels, {} connects",
        human(opts.size),
        opts.active,
        human(opts.each),
        opts.idle,
        opts.connects
    );
    let shown: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| *a != "--bench")
        .collect();
    println!("command: benches/run-listen {}\n", shown.join(" "));
    println!(
        "| tool | up MB/s | down MB/s | CPU s/GiB | {} tunnels MB/s | latency p50 / p95 ms | p50 / own CONNECT's | idle RSS | RSS per idle tunnel |",
        opts.active
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let baseline = percentiles(
        (0..opts.connects)
            .map(|_| sample_direct_connect(&far))
            .collect(),
    );
    println!(
        "| client's own CONNECT (baseline) | | | | | {:.3} / {:.3} | 1 | | |",
        baseline.0, baseline.1
    );
    // Each gimlet row, and right after it the same row with the --before binary.
    let mut rows: Vec<(String, String, String)> = Vec::new();
    for tool in &opts.tools {
        rows.push((tool.clone(), tool.clone(), gimlet.clone()));
        if let Some(before) = opts.before.as_ref().filter(|_| tool.starts_with("gimlet")) {
            rows.push((format!("{tool} before"), tool.clone(), before.clone()));
        }
    }
    // gimlet losing a byte, failing a transfer or hanging fails the run; peers only show it.
    let mut gimlet_failed = false;
    for (tool, kind, binary) in &rows {
        let Some(mut daemon) = Daemon::start(kind, binary, &far) else {
            eprintln!("{tool}: not installed, skipped");
            continue;
        };
        eprintln!("{tool}: single tunnel");
        let cpu = daemon.cpu_secs();
        let up = throughput_up(daemon.port(SINK), opts.size);
        let down = throughput_down(daemon.port(SOURCE), opts.size);
        let cpu = daemon.cpu_secs() - cpu;
        eprintln!("{tool}: {} active tunnels", opts.active);
        let active = many(daemon.port(ECHO), opts.active, opts.each);
        eprintln!("{tool}: latency");
        let lat = latency(daemon.port(EARLY), opts.connects, || {
            sample_direct_connect(&far)
        });
        if tool.starts_with("gimlet") && (up.is_err() || down.is_err() || active.is_err()) {
            gimlet_failed = true;
        }
        let idle = match daemon.single_process() {
            true => {
                eprintln!("{tool}: {} idle tunnels", opts.idle);
                Some(idle(&mut daemon, &mut far, opts.idle))
            }
            false => None,
        };
        println!(
            "| {tool} | {} | {} | {} | {} | {:.3} / {:.3} | {:.2} | {} | {} |",
            up.as_ref()
                .map_or_else(|e| format!("failed: {e}"), |t| mbs(opts.size, *t)),
            down.as_ref()
                .map_or_else(|e| format!("failed: {e}"), |t| mbs(opts.size, *t)),
            // Per GiB of what both transfers should have moved: only when both did.
            match daemon.single_process() && up.is_ok() && down.is_ok() {
                true => format!("{:.2}", cpu / (2 * opts.size) as f64 * (1u64 << 30) as f64),
                false => String::new(),
            },
            match active {
                Ok(t) => format!(
                    "{} ({:.2} s)",
                    mbs(opts.active as u64 * opts.each, t),
                    t.as_secs_f64()
                ),
                Err(e) => format!("failed: {e}"),
            },
            lat.p50,
            lat.p95,
            lat.p50 / lat.base_p50,
            idle.as_ref()
                .map_or("n/a (process per tunnel)".into(), |i| format!(
                    "{} MiB ({} tunnels)",
                    i.after / 1024,
                    i.tunnels
                )),
            idle.as_ref()
                .map_or(String::new(), |i| match i.after >= i.before {
                    true => format!(
                        "{:.1} KiB",
                        (i.after - i.before) as f64 / i.tunnels.max(1) as f64
                    ),
                    // Memory kept from the many-tunnels test was given back meanwhile.
                    false => "n/a (RSS fell)".to_owned(),
                }),
        );
    }
    if opts.tools.iter().any(|t| t == "gimlet") {
        eprintln!("gimlet: latency through squid");
        latency_via_squid(&opts, &gimlet, &far);
    }
    if gimlet_failed {
        eprintln!("gimlet failed a transfer: see the table");
        std::process::exit(1);
    }
}

fn parse(args: &[String]) -> Opts {
    let mut o = Opts {
        size: 512 << 20,
        active: 1000,
        each: 1 << 20,
        idle: 9900,
        connects: 200,
        tools: [
            "gimlet",
            "gimlet-copy",
            "gimlet-direct",
            "socat",
            "proxytunnel",
            "rinetd",
            "ssh",
        ]
        .map(String::from)
        .to_vec(),
        before: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().expect("option needs a value").clone();
        match a.as_str() {
            "--size" => o.size = size(&val()),
            "--active" => o.active = val().parse().unwrap(),
            "--each" => o.each = size(&val()),
            "--idle" => o.idle = val().parse().unwrap(),
            "--connects" => o.connects = val().parse().unwrap(),
            "--tools" => o.tools = val().split(',').map(String::from).collect(),
            "--before" => o.before = Some(val()),
            "--smoke" => {
                (o.size, o.active, o.each, o.idle, o.connects) = (16 << 20, 50, 256 << 10, 500, 20)
            }
            "--bench" => {}
            other => panic!("unknown option {other}"),
        }
    }
    o
}

fn size(s: &str) -> u64 {
    let (n, mult) = match s.as_bytes().last() {
        Some(b'K') => (&s[..s.len() - 1], 1 << 10),
        Some(b'M') => (&s[..s.len() - 1], 1 << 20),
        Some(b'G') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    n.parse::<u64>().unwrap() * mult
}

fn human(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{} GiB", n >> 30),
        n if n >= 1 << 20 => format!("{} MiB", n >> 20),
        n => format!("{} KiB", n >> 10),
    }
}

fn mbs(bytes: u64, d: Duration) -> String {
    format!("{:.0}", bytes as f64 / d.as_secs_f64() / 1e6)
}

fn raise_nofile() {
    // SAFETY: getrlimit/setrlimit on a struct we own.
    unsafe {
        let mut l: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
        l.rlim_cur = l.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &l);
    }
}

/// The byte stream: a 1 MiB + 7 block of mixed bytes, repeated (its odd length keeps the
/// repeats from lining up with buffer sizes), so checking is a memcmp.
const BLOCK: usize = (1 << 20) + 7;

fn block() -> &'static [u8] {
    static B: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    B.get_or_init(|| {
        let one: Vec<u8> = (0..BLOCK as u64)
            .map(|x| (x ^ (x >> 11) ^ (x >> 17)) as u8)
            .collect();
        [one.as_slice(), one.as_slice()].concat()
    })
}

/// The stream's bytes from `at`, as many as fit `buf` (at most one block).
fn pattern(at: u64, buf: &mut [u8]) {
    let from = (at % BLOCK as u64) as usize;
    buf.copy_from_slice(&block()[from..from + buf.len()]);
}

fn matches_pattern(at: u64, got: &[u8]) -> bool {
    let from = (at % BLOCK as u64) as usize;
    got == &block()[from..from + got.len()]
}

// ---------------------------------------------------------------------------------------------
// The far side (a child process): a CONNECT endpoint and direct listeners, one per mode.
// ---------------------------------------------------------------------------------------------

struct FarSide {
    child: Child,
    proxy: u16,
    direct: u16,
}

impl FarSide {
    fn start() -> FarSide {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .arg("--far-side")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("far side");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        let mut ports = line.split_whitespace().map(|p| p.parse::<u16>().unwrap());
        let (proxy, direct) = (ports.next().unwrap(), ports.next().unwrap());
        FarSide {
            child,
            proxy,
            direct,
        }
    }

    /// How many HOLD connections the far side has accepted so far.
    fn held(&mut self) -> usize {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(b"?\n").unwrap();
        let mut line = String::new();
        BufReader::new(self.child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        line.trim().parse().unwrap()
    }
}

impl Drop for FarSide {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn far_side() {
    raise_nofile();
    let proxy = TcpListener::bind("127.0.0.1:0").unwrap();
    // Direct listeners on consecutive ports: find a base with MODES free ports.
    let direct: Vec<TcpListener> = loop {
        let first = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = first.local_addr().unwrap().port();
        let rest: Vec<_> = (1..MODES)
            .map_while(|m| TcpListener::bind(("127.0.0.1", base.checked_add(m)?)).ok())
            .collect();
        if rest.len() == (MODES - 1) as usize {
            break std::iter::once(first).chain(rest).collect();
        }
    };
    println!(
        "{} {}",
        proxy.local_addr().unwrap().port(),
        direct[0].local_addr().unwrap().port()
    );
    io::stdout().flush().unwrap();
    let held = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    {
        let held = held.clone();
        thread::spawn(move || {
            for c in proxy.incoming().flatten() {
                let held = held.clone();
                thread::Builder::new()
                    .stack_size(64 << 10)
                    .spawn(move || {
                        let mut c = c;
                        let Some(mode) = read_connect(&mut c) else {
                            return;
                        };
                        if c.write_all(REPLY).is_err() {
                            return;
                        }
                        serve(c, mode, &held);
                    })
                    .unwrap();
            }
        });
    }
    for (mode, l) in direct.into_iter().enumerate() {
        let held = held.clone();
        thread::spawn(move || {
            for c in l.incoming().flatten() {
                let held = held.clone();
                thread::Builder::new()
                    .stack_size(64 << 10)
                    .spawn(move || serve(c, mode as u16, &held))
                    .unwrap();
            }
        });
    }
    // Answer "?" with the count of held connections; exit when the harness goes.
    for line in io::stdin().lock().lines() {
        if line.is_err() {
            break;
        }
        println!("{}", held.load(std::sync::atomic::Ordering::SeqCst));
        io::stdout().flush().unwrap();
    }
}

/// Reads a CONNECT head; the target port says the mode. The head is taken as a proxy takes
/// it, whatever has arrived at once (a peek, then a read of up to the blank line, so no byte of
/// the tunnel is consumed), not a byte per read: a byte per read made every byte of a request
/// cost a system call here, so a forwarder's longer request (gimlet's `User-Agent` line: 85
/// bytes against the bench client's 59) paid 26 reads that a real proxy does not make.
fn read_connect(c: &mut TcpStream) -> Option<u16> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = c.peek(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        let seen = head.len();
        head.extend_from_slice(&buf[..n]);
        // The blank line may straddle what was read before and what is peeked now.
        let from = seen.saturating_sub(3);
        let take = match head[from..].windows(4).position(|w| w == b"\r\n\r\n") {
            Some(at) => from + at + 4 - seen,
            None => n,
        };
        head.truncate(seen);
        head.resize(seen + take, 0);
        c.read_exact(&mut head[seen..]).ok()?;
        if head.ends_with(b"\r\n\r\n") {
            break;
        }
    }
    let line = String::from_utf8_lossy(&head);
    let target = line.split_whitespace().nth(1)?;
    let port: u16 = target.rsplit(':').next()?.parse().ok()?;
    port.checked_sub(BASE)
}

fn serve(mut c: TcpStream, mode: u16, held: &std::sync::atomic::AtomicUsize) {
    let _ = c.set_nodelay(true);
    let mut buf = vec![0u8; 128 << 10];
    match mode {
        SINK => {
            let mut n = 0u64;
            while let Ok(k) = c.read(&mut buf) {
                if k == 0 {
                    break;
                }
                n += k as u64;
            }
            let _ = c.write_all(&n.to_be_bytes());
        }
        SOURCE => {
            let mut len = [0u8; 8];
            if c.read_exact(&mut len).is_err() {
                return;
            }
            let (total, mut at) = (u64::from_be_bytes(len), 0u64);
            while at < total {
                let k = (total - at).min(buf.len() as u64) as usize;
                pattern(at, &mut buf[..k]);
                if c.write_all(&buf[..k]).is_err() {
                    return;
                }
                at += k as u64;
            }
        }
        ECHO => {
            while let Ok(k) = c.read(&mut buf) {
                if k == 0 || c.write_all(&buf[..k]).is_err() {
                    break;
                }
            }
        }
        HOLD => {
            held.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = c.read(&mut buf);
            held.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
        EARLY => {
            let _ = c.write_all(b"X");
            let _ = c.read(&mut buf);
        }
        _ => {}
    }
    let _ = c.shutdown(Shutdown::Write);
}

// ---------------------------------------------------------------------------------------------
// The tools
// ---------------------------------------------------------------------------------------------

struct Daemon {
    tool: String,
    children: Vec<Child>,
    /// Local port per mode.
    ports: Vec<u16>,
    _dir: Option<std::path::PathBuf>,
}

fn found(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program} >/dev/null")])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A program's full path (sshd refuses to start from a relative one): on PATH, else in an sbin
/// directory (sshd is rarely on a user's PATH).
fn sbin(program: &str) -> Option<std::path::PathBuf> {
    let on_path = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stderr(Stdio::null())
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|p| p.trim().to_owned())
        .filter(|p| p.starts_with('/'));
    if let Some(p) = on_path {
        return Some(p.into());
    }
    ["/usr/sbin", "/usr/local/sbin", "/sbin"]
        .iter()
        .map(|d| std::path::Path::new(d).join(program))
        .find(|p| p.is_file())
}

/// The temporary directory of one row, removed when the row ends.
fn row_dir(tool: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("listen-bench-{tool}-{}", std::process::id()))
}

fn run_quietly(cmd: &mut Command) -> Option<()> {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()?
        .success()
        .then_some(())
}

/// `ssh -L` to an sshd of our own: a throwaway host key and user key in `dir`, sshd in the
/// foreground on 127.0.0.1, every forward on one connection to it. Pushes ssh, then sshd, to
/// `children` as soon as each starts, so that the caller's cleanup kills whatever started.
fn start_ssh(
    dir: &std::path::Path,
    forwards: &[(u16, u16)],
    children: &mut Vec<Child>,
) -> Option<()> {
    let (ssh, sshd) = (sbin("ssh")?, sbin("sshd")?);
    let keygen = sbin("ssh-keygen")?;
    std::fs::create_dir_all(dir).ok()?;
    let (host_key, user_key) = (dir.join("host_ed25519"), dir.join("user_ed25519"));
    for key in [&host_key, &user_key] {
        run_quietly(
            Command::new(&keygen)
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "", "-f"])
                .arg(key),
        )?;
    }
    std::fs::copy(user_key.with_extension("pub"), dir.join("authorized_keys")).ok()?;
    let user = Command::new("id").arg("-un").output().ok()?.stdout;
    let user = String::from_utf8(user).ok()?.trim().to_owned();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        // sshd's privilege separation directory, normally made by its service unit.
        let _ = std::fs::create_dir_all("/run/sshd");
    }
    let port = free_port();
    let config = dir.join("sshd_config");
    // MaxSessions and MaxStartups raised so that nothing of sshd's caps the tunnel count (the
    // forwards are channels of one connection; MaxSessions counts session channels only).
    std::fs::write(
        &config,
        format!(
            "ListenAddress 127.0.0.1:{port}\n\
             HostKey {host}\n\
             PidFile {dir}/sshd.pid\n\
             AuthorizedKeysFile {dir}/authorized_keys\n\
             AllowUsers {user}\n\
             PermitRootLogin prohibit-password\n\
             PubkeyAuthentication yes\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             UsePAM no\n\
             StrictModes no\n\
             UseDNS no\n\
             AllowTcpForwarding yes\n\
             MaxSessions 20000\n\
             MaxStartups 1000\n\
             LogLevel ERROR\n",
            host = host_key.display(),
            dir = dir.display(),
        ),
    )
    .ok()?;
    children.push(
        Command::new(&sshd)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .ok()?,
    );
    wait_listening("sshd", port, &mut children[0])?;
    let mut cmd = Command::new(&ssh);
    cmd.args(["-N", "-F", "none", "-p", &port.to_string(), "-i"])
        .arg(&user_key)
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "IdentityAgent=none",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "ExitOnForwardFailure=yes",
            "-o",
            "LogLevel=ERROR",
        ]);
    for (local, far) in forwards {
        cmd.arg("-L")
            .arg(format!("127.0.0.1:{local}:127.0.0.1:{far}"));
    }
    // ssh first: it is killed first, and its session on sshd's side ends with it.
    children.insert(
        0,
        cmd.arg(format!("{user}@127.0.0.1"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .ok()?,
    );
    Some(())
}

/// Waits until `port` accepts connections, for at most 10 s, and gives up early if the process
/// that should listen there exits.
fn wait_listening(tool: &str, port: u16, child: &mut Child) -> Option<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() >= deadline || child.try_wait().ok().flatten().is_some() {
            eprintln!("{tool}: nothing listens on {port}");
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
    Some(())
}

/// The process and every descendant (from /proc/PID/task/*/children).
fn rss_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

impl Daemon {
    fn start(tool: &str, gimlet: &str, far: &FarSide) -> Option<Daemon> {
        let ports: Vec<u16> = (0..MODES).map(|_| free_port()).collect();
        let proxy = format!("127.0.0.1:{}", far.proxy);
        let quiet = Stdio::null;
        let mut children = Vec::new();
        let mut dir = None;
        match tool {
            "gimlet" | "gimlet-copy" | "gimlet-direct" => {
                let mut cmd = Command::new(gimlet);
                for (m, p) in ports.iter().enumerate() {
                    let target = match tool {
                        "gimlet-direct" => far.direct + m as u16,
                        _ => BASE + m as u16,
                    };
                    cmd.arg("-L").arg(format!("{p}:127.0.0.1:{target}"));
                }
                if tool != "gimlet-direct" {
                    cmd.arg(&proxy);
                }
                match tool {
                    "gimlet-copy" => cmd.env("GIMLET_NO_SPLICE", "1"),
                    _ => cmd.env_remove("GIMLET_NO_SPLICE"),
                };
                let log = std::env::var("LISTEN_BENCH_LOG").unwrap_or_else(|_| "/dev/null".into());
                cmd.args(["--log", &log]);
                children.push(
                    cmd.stdout(quiet())
                        .stderr(Stdio::inherit())
                        .process_group(0)
                        .spawn()
                        .ok()?,
                );
            }
            "socat" if found("socat") => {
                for (m, p) in ports.iter().enumerate() {
                    children.push(
                        Command::new("socat")
                            .arg(format!(
                                "TCP-LISTEN:{p},bind=127.0.0.1,reuseaddr,fork,backlog=4096"
                            ))
                            .arg(format!(
                                "PROXY:127.0.0.1:127.0.0.1:{},proxyport={}",
                                BASE + m as u16,
                                far.proxy
                            ))
                            .stdout(quiet())
                            .stderr(quiet())
                            .process_group(0)
                            .spawn()
                            .ok()?,
                    );
                }
            }
            "proxytunnel" if found("proxytunnel") => {
                for (m, p) in ports.iter().enumerate() {
                    children.push(
                        Command::new("proxytunnel")
                            .args(["-q", "-a", &p.to_string(), "-p", &proxy])
                            .arg("-d")
                            .arg(format!("127.0.0.1:{}", BASE + m as u16))
                            .stdout(quiet())
                            .stderr(quiet())
                            .process_group(0)
                            .spawn()
                            .ok()?,
                    );
                }
            }
            "ssh" => {
                let d = row_dir(tool);
                let forwards: Vec<(u16, u16)> = (0..MODES)
                    .map(|m| (ports[m as usize], far.direct + m))
                    .collect();
                let started = start_ssh(&d, &forwards, &mut children);
                dir = Some(d);
                if started.is_none() {
                    // Kills what did start and removes the directory.
                    drop(Daemon {
                        tool: tool.to_owned(),
                        children,
                        ports,
                        _dir: dir,
                    });
                    return None;
                }
            }
            "rinetd" if found("rinetd") => {
                let d = row_dir(tool);
                std::fs::create_dir_all(&d).ok()?;
                let conf = d.join("rinetd.conf");
                let mut text = String::new();
                for (m, p) in ports.iter().enumerate() {
                    text += &format!("127.0.0.1 {p} 127.0.0.1 {}\n", far.direct + m as u16);
                }
                std::fs::write(&conf, text).ok()?;
                children.push(
                    Command::new("rinetd")
                        .arg("-f")
                        .arg("-c")
                        .arg(&conf)
                        .stdout(quiet())
                        .stderr(quiet())
                        .process_group(0)
                        .spawn()
                        .ok()?,
                );
                dir = Some(d);
            }
            _ => return None,
        }
        let mut daemon = Daemon {
            tool: tool.to_owned(),
            children,
            ports,
            _dir: dir,
        };
        // Ready when every port accepts; if not, the daemon is dropped (killed) here.
        for p in daemon.ports.clone() {
            wait_listening(tool, p, &mut daemon.children[0])?;
        }
        Some(daemon)
    }

    fn port(&self, mode: u16) -> u16 {
        self.ports[mode as usize]
    }

    fn single_process(&self) -> bool {
        matches!(
            self.tool.as_str(),
            "gimlet" | "gimlet-copy" | "gimlet-direct" | "rinetd" | "ssh"
        )
    }

    /// CPU time (user + system) the daemon's processes used so far, in seconds.
    fn cpu_secs(&self) -> f64 {
        let pids = match self.tool.as_str() {
            "ssh" => {
                let mut p = vec![self.children[0].id()];
                p.extend(process_tree(self.children[1].id()).into_iter().skip(1));
                p
            }
            _ => vec![self.children[0].id()],
        };
        let ticks: u64 = pids.iter().map(|&pid| cpu_ticks(pid).unwrap_or(0)).sum();
        ticks as f64 / ticks_per_sec() as f64
    }

    fn rss_kib(&self) -> u64 {
        match self.tool.as_str() {
            // The ssh client, and sshd's processes for its connection (not the listener).
            "ssh" => {
                let sessions = process_tree(self.children[1].id()).into_iter().skip(1);
                rss_of(self.children[0].id()) + sessions.map(rss_of).sum::<u64>()
            }
            _ => rss_of(self.children[0].id()),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // sshd's connection processes leave its process group (setsid): find them first.
        let strays: Vec<u32> = self
            .children
            .iter()
            .flat_map(|c| process_tree(c.id()).into_iter().skip(1))
            .collect();
        for c in &mut self.children {
            // Each tool runs in its own process group: socat and proxytunnel fork a process per
            // connection, and those go too.
            // SAFETY: kill(2) on a process group we created.
            unsafe {
                libc::kill(-(c.id() as libc::pid_t), libc::SIGKILL);
            }
            let _ = c.wait();
        }
        for pid in &strays {
            // SAFETY: kill(2) on a descendant of ours, found above; at worst it is gone.
            unsafe {
                libc::kill(*pid as libc::pid_t, libc::SIGKILL);
            }
        }
        // Until they are gone: their sockets would hold ports the next row may pick.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline
            && strays
                .iter()
                .any(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
        {
            thread::sleep(Duration::from_millis(10));
        }
        if let Some(d) = &self._dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Measurements
// ---------------------------------------------------------------------------------------------

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s
}

fn throughput_up(port: u16, size: u64) -> Result<Duration, String> {
    let mut s = connect(port);
    let buf = vec![7u8; 128 << 10];
    let start = Instant::now();
    let mut left = size;
    while left > 0 {
        let k = left.min(buf.len() as u64) as usize;
        s.write_all(&buf[..k]).unwrap();
        left -= k as u64;
    }
    s.shutdown(Shutdown::Write).unwrap();
    let mut got = [0u8; 8];
    s.read_exact(&mut got)
        .map_err(|e| format!("no count back after half-close: {e}"))?;
    let t = start.elapsed();
    match u64::from_be_bytes(got) {
        n if n == size => Ok(t),
        n => Err(format!("{n} of {size} bytes went up")),
    }
}

fn throughput_down(port: u16, size: u64) -> Result<Duration, String> {
    let mut s = connect(port);
    let start = Instant::now();
    s.write_all(&size.to_be_bytes()).unwrap();
    let (mut buf, mut at) = (vec![0u8; 128 << 10], 0u64);
    loop {
        let k = s.read(&mut buf).map_err(|e| format!("reading: {e}"))?;
        if k == 0 {
            break;
        }
        if !matches_pattern(at, &buf[..k]) {
            return Err(format!("byte {at} differs going down"));
        }
        at += k as u64;
    }
    let t = start.elapsed();
    match at == size {
        true => Ok(t),
        false => Err(format!("{at} of {size} bytes came down")),
    }
}

fn many(port: u16, n: usize, each: u64) -> Result<Duration, String> {
    let barrier = Arc::new(Barrier::new(n + 1));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let barrier = barrier.clone();
            thread::Builder::new()
                .stack_size(256 << 10)
                .spawn(move || -> Result<(), String> {
                    let s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string());
                    barrier.wait();
                    let mut s = s?;
                    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                    let mut w = s.try_clone().unwrap();
                    let writer = thread::Builder::new()
                        .stack_size(64 << 10)
                        .spawn(move || {
                            let mut buf = vec![0u8; 32 << 10];
                            let mut at = 0;
                            while at < each {
                                let k = (each - at).min(buf.len() as u64) as usize;
                                pattern(at + i as u64, &mut buf[..k]);
                                w.write_all(&buf[..k])?;
                                at += k as u64;
                            }
                            w.shutdown(Shutdown::Write)
                        })
                        .unwrap();
                    let (mut buf, mut at) = (vec![0u8; 32 << 10], 0u64);
                    loop {
                        let k = s.read(&mut buf).map_err(|e| e.to_string())?;
                        if k == 0 {
                            break;
                        }
                        if !matches_pattern(at + i as u64, &buf[..k]) {
                            return Err(format!("tunnel {i}: byte {at} differs"));
                        }
                        at += k as u64;
                    }
                    writer.join().unwrap().map_err(|e| e.to_string())?;
                    if at != each {
                        return Err(format!("tunnel {i}: {at} of {each} bytes came back"));
                    }
                    Ok(())
                })
                .unwrap()
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    let mut first_error = None;
    for h in handles {
        if let Err(e) = h.join().unwrap() {
            first_error.get_or_insert(e);
        }
    }
    match first_error {
        None => Ok(start.elapsed()),
        Some(e) => Err(e),
    }
}

fn percentiles(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let at = |q: f64| v[((v.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
    (at(0.5), at(0.95))
}

/// Connect-to-first-byte through a forward, p50 / p95 in ms, and the same of the client's own
/// CONNECT sampled in turn with it.
struct Latency {
    p50: f64,
    p95: f64,
    base_p50: f64,
}

/// Connects not counted: the first ones start the daemon's threads, fill its pools.
const WARM_UP: usize = 10;

fn latency(port: u16, n: usize, own_connect: impl Fn() -> Duration) -> Latency {
    let (mut tool, mut base) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..WARM_UP + n {
        // The order alternates: a connect pays for the teardown of the one before it, which
        // on two cores is worth a third of a sample.
        let (t, b) = match i % 2 {
            0 => (sample_forward(port), own_connect()),
            _ => {
                let b = own_connect();
                (sample_forward(port), b)
            }
        };
        if i >= WARM_UP {
            tool.push(t);
            base.push(b);
        }
    }
    let ((p50, p95), (base_p50, _)) = (percentiles(tool), percentiles(base));
    Latency { p50, p95, base_p50 }
}

fn sample_forward(port: u16) -> Duration {
    let start = Instant::now();
    let mut s = connect(port);
    let mut b = [0u8; 1];
    s.read_exact(&mut b).expect("first byte");
    start.elapsed()
}

fn sample_direct_connect(far: &FarSide) -> Duration {
    let start = Instant::now();
    let mut s = connect(far.proxy);
    s.write_all(
        format!(
            "CONNECT 127.0.0.1:{} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\r\n",
            BASE + EARLY,
            BASE + EARLY
        )
        .as_bytes(),
    )
    .unwrap();
    let mut got = vec![0u8; REPLY.len() + 1];
    s.read_exact(&mut got).expect("reply and first byte");
    start.elapsed()
}

/// A client's own CONNECT through a real proxy (squid) to `target`: connect → the reply head
/// and the far side's first byte after it.
fn sample_connect_via(proxy: u16, target: u16) -> Duration {
    let start = Instant::now();
    let mut s = connect(proxy);
    s.write_all(
        format!("CONNECT 127.0.0.1:{target} HTTP/1.1\r\nHost: 127.0.0.1:{target}\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        let n = s.read(&mut buf).expect("squid's reply");
        assert!(n > 0, "squid closed before the first byte");
        got.extend_from_slice(&buf[..n]);
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            assert!(
                got.starts_with(b"HTTP/1.1 200"),
                "squid refused the CONNECT"
            );
            if got.len() > end + 4 {
                break;
            }
        }
    }
    start.elapsed()
}

/// The latency test again through squid, a proxy that opens its own connection to the far
/// side as a corporate proxy does: `gimlet -L` via squid against the client's own CONNECT
/// through the same squid, sampled in turn.
fn latency_via_squid(opts: &Opts, gimlet: &str, far: &FarSide) {
    let Some(squid) = Squid::start() else {
        println!("\n(squid not installed: no latency through a real proxy)");
        return;
    };
    let target = far.direct + EARLY;
    println!(
        "\nlatency through squid (it connects to the far side itself), {} connects:\n",
        opts.connects
    );
    println!("| tool | latency p50 / p95 ms | p50 / own CONNECT's through squid |");
    println!("|---|---|---|");
    let binaries = std::iter::once(("gimlet", gimlet))
        .chain(opts.before.as_deref().map(|b| ("gimlet before", b)));
    for (name, binary) in binaries {
        let port = free_port();
        let Ok(child) = Command::new(binary)
            .arg("-L")
            .arg(format!("{port}:127.0.0.1:{target}"))
            .arg(format!("127.0.0.1:{}", squid.port))
            .args(["--log", "/dev/null"])
            .env_remove("GIMLET_NO_SPLICE")
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()
        else {
            println!("| {name} | failed to start | |");
            continue;
        };
        // Stopped by Daemon's drop on every way out, a failed sample's panic included.
        let _daemon = Daemon {
            tool: name.to_owned(),
            children: vec![child],
            ports: Vec::new(),
            _dir: None,
        };
        wait_accepting(port);
        let lat = latency(port, opts.connects, || {
            sample_connect_via(squid.port, target)
        });
        println!(
            "| {name} -L via squid | {:.3} / {:.3} | {:.2} (own CONNECT p50 {:.3}) |",
            lat.p50,
            lat.p95,
            lat.p50 / lat.base_p50,
            lat.base_p50
        );
    }
}

struct Idle {
    before: u64,
    after: u64,
    tunnels: usize,
}

fn idle(daemon: &mut Daemon, far: &mut FarSide, n: usize) -> Idle {
    let before = daemon.rss_kib();
    let base = far.held();
    let port = daemon.port(HOLD);
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => held.push(s),
            Err(e) => {
                eprintln!("{}: connect {} failed: {e}", daemon.tool, held.len());
                break;
            }
        }
    }
    // Wait until the far side holds them all (each one an established tunnel).
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut tunnels = far.held() - base;
    while tunnels < held.len() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
        tunnels = far.held() - base;
    }
    let after = daemon.rss_kib();
    drop(held);
    Idle {
        before,
        after,
        tunnels,
    }
}
