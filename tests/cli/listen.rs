//! Listen mode (`-L`, `--forwards`): a real gimlet daemon, followed through its log lines on
//! stderr, forwarding to echo servers and fake proxies on the loopback interface.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::*;

/// A running gimlet in listen mode; its stderr log is read line by line as it comes.
struct Daemon {
    child: Child,
    log: DaemonLog,
}

impl Daemon {
    fn start(args: &[&str]) -> Daemon {
        Daemon::start_with(gimlet_std().args(args))
    }

    fn start_with(cmd: &mut Command) -> Daemon {
        let (child, log) = spawn_logged(cmd);
        Daemon { child, log }
    }

    /// The next log line containing `needle` (earlier lines are kept).
    #[track_caller]
    fn wait_for(&mut self, needle: &str) -> String {
        self.log.wait_for(needle)
    }

    /// Everything logged so far, for failure messages.
    fn log_so_far(&mut self) -> String {
        self.log.so_far()
    }

    /// The port of the next "listening on 127.0.0.1:PORT" line.
    #[track_caller]
    fn listening_port(&mut self) -> u16 {
        let line = self.wait_for("gimlet: listening on 127.0.0.1:");
        port_after(&line, "listening on 127.0.0.1:")
    }

    /// Waits until gimlet listens on 127.0.0.1:`port`. Only the event's own line counts: a
    /// failure ("FILE:2: listening on 127.0.0.1:PORT: Address already in use; this line is
    /// not in force") names the same address, and taking it for success sent a test to
    /// whatever else listened there (a reset, under load).
    #[track_caller]
    fn listening_on(&mut self, port: u16) {
        self.wait_for(&format!("gimlet: listening on 127.0.0.1:{port} for "));
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: plain syscall on our own child, not yet reaped.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, sig);
        }
    }

    /// Waits for exit; kills and panics after HANG. Returns the status and the rest of the log.
    #[track_caller]
    fn wait(mut self) -> (ExitStatus, Vec<String>) {
        let deadline = Instant::now() + HANG;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                self.log.rest();
                return (status, std::mem::take(&mut self.log.seen));
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("gimlet did not exit; log:\n{}", self.log.seen.join("\n"));
            }
            // Drain the log meanwhile (and wait on it rather than spin).
            self.log.take_one(Duration::from_millis(50));
        }
    }

    /// CPU time (user + system) so far, in clock ticks, from /proc/PID/stat.
    fn cpu_ticks(&self) -> u64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).expect("stat");
        // Fields after the command name (which is in parentheses): utime is 14th, stime 15th.
        let after = &stat[stat.rfind(')').expect("comm") + 2..];
        let fields: Vec<&str> = after.split(' ').collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[track_caller]
fn port_after(line: &str, prefix: &str) -> u16 {
    let at = line.find(prefix).expect("prefix") + prefix.len();
    let digits: String = line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no port in {line:?}"))
}

/// A plain TCP server that answers each connection with `greeting`, then echoes until EOF,
/// then closes.
struct EchoServer {
    addr: SocketAddr,
}

impl EchoServer {
    fn start(greeting: &'static [u8]) -> EchoServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                thread::spawn(move || {
                    let _ = conn.write_all(greeting);
                    let mut buf = [0u8; 65536];
                    loop {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if conn.write_all(&buf[..n]).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    let _ = conn.shutdown(Shutdown::Write);
                });
            }
        });
        EchoServer { addr }
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the forward");
    s.set_read_timeout(Some(HANG)).unwrap();
    s
}

#[track_caller]
fn read_exact(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    s.read_exact(&mut buf).expect("read through the forward");
    buf
}

/// Sends `data` and reads it back (from an echo server), checked byte for byte.
#[track_caller]
fn round_trip(s: &mut TcpStream, data: &[u8]) {
    let writer = {
        let mut w = s.try_clone().unwrap();
        let data = data.to_vec();
        thread::spawn(move || w.write_all(&data).expect("write through the forward"))
    };
    let got = read_exact(s, data.len());
    writer.join().unwrap();
    assert!(got == data, "bytes differ after the round trip");
}

/// Replaces `path` as editors do: write a temporary file, rename it over.
fn save(path: &Path, text: &str) {
    let tmp = path.with_extension("swp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn forwards_file(text: &str) -> PathBuf {
    let dir = scratch_path("forwards-dir");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("forwards");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn seed_format_without_proxy_fields_forwards_directly() {
    let echo = EchoServer::start(b"hello\n");
    let file = forwards_file(&format!(
        "# the seed's format\n0 127.0.0.1 {}\n",
        echo.port()
    ));
    let mut d = Daemon::start(&["--forwards", file.to_str().unwrap()]);
    let port = d.listening_port();
    let mut s = connect(port);
    assert_eq!(read_exact(&mut s, 6), b"hello\n");
    round_trip(&mut s, &Prng::bytes(1, 300_000));
    d.wait_for("established #1");
}

#[test]
fn seed_format_with_proxy_fields_sends_connect_to_that_proxy() {
    let proxy = FakeProxy::echo();
    let file = forwards_file(&format!("0 target.example 22 127.0.0.1 {}\n", proxy.port()));
    let mut d = Daemon::start(&["--forwards", file.to_str().unwrap()]);
    let port = d.listening_port();
    let mut s = connect(port);
    round_trip(&mut s, &Prng::bytes(2, 200_000));
    let line = d.wait_for("established #1");
    assert!(
        line.contains("target.example:22 via proxy 127.0.0.1:")
            && line.contains("\"HTTP/1.1 200 Connection established\""),
        "{line}"
    );
    s.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    d.wait_for("closed #1");
    d.signal(libc::SIGTERM);
    let (status, _) = d.wait();
    assert_eq!(status.code(), Some(0));
    assert!(
        proxy
            .finish()
            .only_request()
            .starts_with("CONNECT target.example:22 HTTP/1.1\r\n")
    );
}

#[test]
fn local_forward_through_a_proxy_passes_half_close_both_ways() {
    let proxy = FakeProxy::start(|s| {
        s.send(OK);
        let got = s.read_to_eof();
        s.send(format!("{} bytes, then my own EOF", got.len()));
        s.shutdown_write();
        s.wait_for_close();
    });
    let mut d = Daemon::start(&["-L", "0:git.example:22", &proxy.addr()]);
    let port = d.listening_port();
    let mut s = connect(port);
    s.write_all(&Prng::bytes(3, 100_000)).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert_eq!(answer, "100000 bytes, then my own EOF");
    let closed = d.wait_for("closed #1");
    assert!(
        closed.contains("100000 bytes sent, 29 bytes received"),
        "{closed}"
    );
}

#[test]
fn log_lines_are_timestamped_and_never_show_the_password() {
    let proxy = FakeProxy::echo();
    let url = format!("http://alice:pa55word@{}", proxy.addr());
    let mut d = Daemon::start(&["-L", "0:h.example:443", "--proxy-auth", "basic", &url]);
    let port = d.listening_port();
    let mut s = connect(port);
    round_trip(&mut s, b"ping");
    drop(s);
    d.wait_for("closed #1");
    d.signal(libc::SIGINT);
    let (status, log) = d.wait();
    assert_eq!(status.code(), Some(0));
    for want in [
        "starting:",
        "listening on",
        "accepted #1",
        "established #1",
        "closed #1",
        "SIGINT",
        "stopped",
    ] {
        assert!(
            log.iter().any(|l| l.contains(want)),
            "no {want:?} in {log:#?}"
        );
    }
    for line in &log {
        // 2026-12-01T05:12:00.123Z gimlet: ...
        let (stamp, rest) = line.split_once(' ').unwrap();
        assert_eq!(stamp.len(), 24, "{line}");
        assert!(
            stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T',
            "{line}"
        );
        assert!(rest.starts_with("gimlet: "), "{line}");
        assert!(!line.contains("pa55word"), "password in the log: {line}");
    }
    assert!(
        proxy
            .finish()
            .only_request()
            .contains("Proxy-Authorization: Basic")
    );
}

#[test]
fn handshakes_never_hold_up_accepting() {
    // A proxy that never answers: every handshake waits for --connect-timeout.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap().to_string();
    let echo = EchoServer::start(b"direct\n");
    let file = forwards_file(&format!(
        "0 stuck.example 22 {silent_addr}\n0 127.0.0.1 {} direct\n",
        echo.port()
    ));
    let mut d = Daemon::start(&[
        "--forwards",
        file.to_str().unwrap(),
        "--connect-timeout",
        "60",
    ]);
    let stuck = d.listening_port();
    let direct = d.listening_port();
    // More stuck handshakes than there are worker threads (64): they are all accepted and
    // logged, and they hold at most a quarter of the workers.
    let _held: Vec<TcpStream> = (0..100).map(|_| connect(stuck)).collect();
    d.wait_for("accepted #100");
    // A direct forward still gets a worker and answers.
    let mut s = connect(direct);
    assert_eq!(read_exact(&mut s, 7), b"direct\n");
    drop(silent);
}

#[test]
fn reload_sequence_never_cuts_an_open_transfer() {
    let one = EchoServer::start(b"one\n");
    let two = EchoServer::start(b"two\n");
    // Held for the whole test: a port released and found again later may meanwhile be taken
    // by a test running in parallel (seen as "Address already in use" under load).
    let (ra, rb, rc) = (
        ReservedPort::new(),
        ReservedPort::new(),
        ReservedPort::new(),
    );
    let (a, b, c) = (ra.port, rb.port, rc.port);
    let line_a1 = format!("{a} 127.0.0.1 {}\n", one.port());
    let file = forwards_file(&line_a1);
    let mut d = Daemon::start(&["--forwards", file.to_str().unwrap()]);
    d.listening_on(a);
    let mut kept = connect(a);
    assert_eq!(read_exact(&mut kept, 4), b"one\n");
    let mut seed = 10;
    let mut step = |kept: &mut TcpStream| {
        seed += 1;
        round_trip(kept, &Prng::bytes(seed, 150_000));
    };
    step(&mut kept);

    // Add a line.
    let line_b = format!("{b} 127.0.0.1 {} direct\n", two.port());
    save(&file, &format!("{line_a1}{line_b}"));
    d.listening_on(b);
    d.wait_for("reloaded");
    assert_eq!(read_exact(&mut connect(b), 4), b"two\n");
    step(&mut kept);

    // Remove it.
    save(&file, &line_a1);
    d.wait_for(&format!("stopped listening on 127.0.0.1:{b}"));
    assert!(TcpStream::connect(("127.0.0.1", b)).is_err());
    step(&mut kept);

    // Change line A: new connections go to server two, the open one stays on server one.
    let line_a2 = format!("{a} 127.0.0.1 {} idle-timeout=3600\n", two.port());
    save(&file, &line_a2);
    d.wait_for(&format!("changed 127.0.0.1:{a}"));
    assert_eq!(read_exact(&mut connect(a), 4), b"two\n");
    step(&mut kept);

    // A broken line: logged with FILE:LINE, everything stays.
    save(&file, &format!("{line_a2}{c} 127.0.0.1 no-such-port\n"));
    let broken = d.wait_for("keeping the previous forwards");
    assert!(
        broken.contains(&format!("{}:2: ", file.display())),
        "{broken}"
    );
    assert_eq!(read_exact(&mut connect(a), 4), b"two\n");
    step(&mut kept);

    // A port in use: logged, the rest applies.
    rc.block();
    save(&file, &format!("{line_a2}{c} 127.0.0.1 {}\n", one.port()));
    let failed = d.wait_for("this line is not in force");
    assert!(
        failed.contains(&format!("listening on 127.0.0.1:{c}")),
        "{failed}"
    );
    d.wait_for("1 failed");
    step(&mut kept);

    // SIGHUP retries it once the port is free.
    rc.unblock();
    d.signal(libc::SIGHUP);
    d.listening_on(c);
    assert_eq!(read_exact(&mut connect(c), 4), b"one\n");
    step(&mut kept);

    // The transfer open since the start ends cleanly, every byte accounted for.
    kept.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    kept.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    let closed = d.wait_for("closed #1 ");
    assert!(
        closed.contains("1050000 bytes sent, 1050004 bytes received"),
        "{closed}"
    );
}

#[test]
fn sigterm_stops_accepting_and_drains_open_tunnels_then_exits_zero() {
    let echo = EchoServer::start(b"");
    let spec = format!("0:127.0.0.1:{}", echo.port());
    let mut d = Daemon::start(&["-L", &spec]);
    let port = d.listening_port();
    let mut s = connect(port);
    round_trip(&mut s, b"before");
    d.signal(libc::SIGTERM);
    d.wait_for("SIGTERM: no longer accepting; draining 1 tunnel(s)");
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "still accepting"
    );
    round_trip(&mut s, &Prng::bytes(4, 100_000));
    s.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    let (status, log) = d.wait();
    assert_eq!(status.code(), Some(0), "{log:#?}");
    assert!(
        log.iter()
            .any(|l| l.contains("stopped: every tunnel closed")),
        "{log:#?}"
    );
}

#[test]
fn drain_timeout_closes_tunnels_that_do_not_finish() {
    let echo = EchoServer::start(b"");
    let spec = format!("0:127.0.0.1:{}", echo.port());
    let mut d = Daemon::start(&["-L", &spec, "--drain-timeout", "0.2"]);
    let port = d.listening_port();
    let mut s = connect(port);
    round_trip(&mut s, b"open");
    d.signal(libc::SIGTERM);
    let (status, log) = d.wait();
    assert_eq!(status.code(), Some(0));
    assert!(
        log.iter()
            .any(|l| l.contains("--drain-timeout reached, closing 1 tunnel(s)")),
        "{log:#?}"
    );
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
}

#[test]
fn idle_timeout_closes_a_silent_tunnel() {
    let echo = EchoServer::start(b"");
    let spec = format!("0:127.0.0.1:{}", echo.port());
    let mut d = Daemon::start(&["-L", &spec, "--idle-timeout", "0.1"]);
    let port = d.listening_port();
    let mut s = connect(port);
    round_trip(&mut s, b"x");
    let line = d.wait_for("failed #1");
    assert!(
        line.contains("no data in either direction for 0.1s"),
        "{line}"
    );
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
}

#[test]
fn max_tunnels_refuses_connections_beyond_the_limit() {
    let echo = EchoServer::start(b"hi\n");
    let spec = format!("0:127.0.0.1:{}", echo.port());
    let mut d = Daemon::start(&["-L", &spec, "--max-tunnels", "1"]);
    let port = d.listening_port();
    let mut first = connect(port);
    assert_eq!(read_exact(&mut first, 3), b"hi\n");
    let mut second = connect(port);
    d.wait_for("refused #2");
    let mut rest = Vec::new();
    let _ = second.read_to_end(&mut rest);
    assert!(rest.is_empty());
}

#[test]
fn running_out_of_file_descriptors_pauses_accepting_without_spinning() {
    let echo = EchoServer::start(b"ok\n");
    let spec = format!("0:127.0.0.1:{}", echo.port());
    let mut d = Daemon::start(&["-L", &spec, "--max-tunnels", "1000"]);
    let port = d.listening_port();
    let mut held = vec![connect(port)];
    assert_eq!(read_exact(&mut held[0], 3), b"ok\n");
    // Leave room for exactly two more tunnels (two sockets each), as `prlimit` would.
    let pid = d.child.id() as libc::pid_t;
    // The limit caps fd numbers, not their count, and fds inherited from the test harness
    // may sit anywhere: count four free numbers from the bottom.
    let open: std::collections::HashSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let (mut limit, mut free) = (0u64, 0);
    while free < 4 {
        free += u64::from(!open.contains(&limit));
        limit += 1;
    }
    let lim = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: prlimit reads the struct we pass and writes nothing (null old-limit pointer).
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &lim, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    for _ in 0..2 {
        let mut s = connect(port);
        assert_eq!(read_exact(&mut s, 3), b"ok\n", "log: {}", d.log_so_far());
        held.push(s);
    }
    let mut waiting = connect(port);
    d.wait_for("pausing accepts");
    // Paused with a connection in the backlog, the listener stays readable: the process must
    // sleep between its retries, not spin.
    let before = d.cpu_ticks();
    thread::sleep(Duration::from_millis(1500));
    let used = d.cpu_ticks() - before;
    assert!(
        used < 30,
        "{used} ticks of CPU in 1.5 s while paused: spinning?"
    );
    // A tunnel closes, its descriptors come back, the waiting connection is served.
    drop(held.pop());
    let mut got = [0u8; 3];
    let read = waiting.read_exact(&mut got);
    assert!(
        read.is_ok() && &got == b"ok\n",
        "{read:?}; log: {}",
        d.log_so_far()
    );
}

#[test]
fn the_log_file_is_reopened_on_sigusr1() {
    let echo = EchoServer::start(b"");
    let spec = format!("0:127.0.0.1:{}", echo.port());
    let log = scratch_path("listen.log");
    let d = Daemon::start(&["-L", &spec, "--log", log.to_str().unwrap()]);
    // Nothing on stderr with --log; follow the file instead.
    let rotated = log.with_extension("log.1");
    let wait_for_text = |path: &Path, needle: &str| {
        let deadline = Instant::now() + HANG;
        loop {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            if text.contains(needle) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in {}: {text}",
                path.display()
            );
            thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for_text(&log, "listening on");
    std::fs::rename(&log, &rotated).unwrap();
    d.signal(libc::SIGUSR1);
    let text = wait_for_text(&log, "reopened the log file");
    assert!(!text.contains("listening on"), "{text}");
    d.signal(libc::SIGTERM);
    let (status, stderr) = d.wait();
    assert_eq!(status.code(), Some(0));
    assert!(stderr.is_empty(), "{stderr:?}");
    wait_for_text(&log, "stopped");
}

#[test]
fn a_broken_forwards_file_at_start_names_the_file_and_line() {
    let file = forwards_file("# ok\n2222 host 22\n2223 host\n");
    let out = gimlet()
        .args(["--forwards", file.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = assert_failure(&out, 2, None);
    assert!(
        stderr.contains(&format!(
            "{}:3: expected [BIND:]PORT HOST PORT",
            file.display()
        )),
        "{stderr}"
    );
}

#[test]
fn a_port_in_use_at_start_is_a_usage_error() {
    let blocker = TcpListener::bind("127.0.0.1:0").unwrap();
    let spec = format!("{}:h:22", blocker.local_addr().unwrap().port());
    let out = gimlet().args(["-L", &spec]).output().unwrap();
    let stderr = assert_failure(&out, 2, None);
    assert!(stderr.contains("listening on 127.0.0.1:"), "{stderr}");
}

#[test]
fn listen_mode_refuses_pipe_only_options() {
    let out = gimlet().args(["-L", "0:h:22", "--tls"]).output().unwrap();
    let stderr = assert_failure(&out, 2, None);
    assert!(
        stderr.contains("--fdpass and --tls are for the pipe mode"),
        "{stderr}"
    );
}

#[test]
fn a_password_asked_at_start_serves_lines_added_by_a_reload() {
    let proxy = FakeProxy::echo();
    let askpass = scratch_file("askpass.sh", b"#!/bin/sh\necho 's3cret'\n", 0o700);
    let (ra, rb) = (ReservedPort::new(), ReservedPort::new());
    let (a, b) = (ra.port, rb.port);
    let file = forwards_file(&format!("{a} one.example 22 127.0.0.1 {}\n", proxy.port()));
    let mut cmd = gimlet_std();
    cmd.args([
        "--forwards",
        file.to_str().unwrap(),
        "-U",
        "alice",
        "--proxy-auth",
        "basic",
    ])
    .env("GIMLET_ASKPASS", &askpass);
    let mut d = Daemon::start_with(&mut cmd);
    d.listening_on(a);
    save(
        &file,
        &format!(
            "{a} one.example 22 127.0.0.1 {p}\n{b} two.example 22 127.0.0.1 {p}\n",
            p = proxy.port()
        ),
    );
    d.listening_on(b);
    let mut s = connect(b);
    round_trip(&mut s, b"through the new line");
    drop(s);
    d.wait_for("closed #1");
    let head = proxy.finish().only_request();
    assert!(head.starts_with("CONNECT two.example:22 "), "{head}");
    let basic = base64(b"alice:s3cret");
    assert!(
        head.contains(&format!("Proxy-Authorization: Basic {basic}")),
        "{head}"
    );
}

#[test]
fn proxy_tls_options_apply_to_https_proxies_in_the_forwards_file() {
    // No proxy on the command line: --proxy-cacert is for the file's https:// lines. The
    // check passes start-up; the CA file is then read when the line's TLS is set up.
    let file = forwards_file("0 h.example 22 https://proxy.example:8443\n");
    let ca = scratch_file("not-a-ca.pem", b"not PEM\n", 0o644);
    let out = gimlet()
        .args([
            "--forwards",
            file.to_str().unwrap(),
            "--proxy-cacert",
            ca.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stderr = assert_failure(&out, 2, None);
    assert!(!stderr.contains("need an https:// proxy"), "{stderr}");
    assert!(
        stderr.contains("setting up TLS for proxy proxy.example:8443"),
        "{stderr}"
    );
}

#[test]
fn a_forwards_line_may_name_a_chain_of_http_then_socks5h() {
    let socks = FakeSocks::socks5_echo();
    let http = forwarding_proxy();
    let file = forwards_file(&format!(
        "0 h.example.test 22 http://{},{}\n",
        http.addr(),
        socks.url("socks5h")
    ));
    let mut d = Daemon::start(&["--forwards", file.to_str().unwrap()]);
    let line = d.wait_for("listening on 127.0.0.1:");
    assert!(
        line.contains(&format!("via proxy {} -> socks5h://", http.addr())),
        "{line}"
    );
    let port = port_after(&line, "listening on 127.0.0.1:");
    let mut s = connect(port);
    round_trip(&mut s, b"two hops");
    drop(s);
    d.wait_for("closed #1");
    assert!(
        http.finish()
            .only_request()
            .starts_with(&format!("CONNECT {} HTTP/1.1\r\n", socks.addr()))
    );
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
}

/// Starts gimlet and waits (hang-guarded) for it to exit; returns the status and its log.
#[track_caller]
fn exit_of(args: &[&str]) -> (ExitStatus, String) {
    let (status, log) = Daemon::start(args).wait();
    (status, log.join("\n"))
}

#[test]
fn a_fifo_as_forwards_file_is_refused_at_start_without_waiting_for_a_writer() {
    let dir = scratch_path("forwards-fifo");
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("forwards");
    mkfifo(&fifo);
    let (status, stderr) = exit_of(&["--forwards", fifo.to_str().unwrap()]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("not a regular file"), "{stderr}");
}

#[test]
fn a_device_as_forwards_file_is_refused_at_start() {
    let (status, stderr) = exit_of(&["--forwards", "/dev/zero"]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("not a regular file"), "{stderr}");
}

#[test]
fn a_forwards_file_over_one_mib_is_refused_naming_the_limit() {
    let file = forwards_file(&"# padding\n".repeat(110_000));
    let (status, stderr) = exit_of(&["--forwards", file.to_str().unwrap()]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("larger than 1 MiB"), "{stderr}");
}

#[test]
fn a_fifo_swapped_in_for_the_forwards_file_is_refused_on_reload_and_sigterm_still_drains() {
    let echo = EchoServer::start(b"");
    let file = forwards_file(&format!("0 127.0.0.1 {}\n", echo.port()));
    let mut d = Daemon::start(&["--forwards", file.to_str().unwrap()]);
    let port = d.listening_port();
    std::fs::remove_file(&file).unwrap();
    mkfifo(&file);
    d.signal(libc::SIGHUP);
    let refused = d.wait_for("keeping the previous forwards");
    assert!(refused.contains("not a regular file"), "{refused}");
    // The previous forward still serves, and the loop still answers signals.
    let mut s = connect(port);
    round_trip(&mut s, b"still here");
    drop(s);
    d.signal(libc::SIGTERM);
    let (status, log) = d.wait();
    assert_eq!(status.code(), Some(0), "{log:#?}");
}

#[test]
fn sigint_while_the_start_up_password_is_asked_ends_listen_mode() {
    // The askpass program says it runs, then waits (as a person at a prompt would); its
    // sleep lets go of the log pipe so that gimlet's end is seen.
    let askpass = scratch_file(
        "askpass-hangs.sh",
        b"#!/bin/sh\necho \"askpass running $$\" >&2\nexec sleep 60 2>/dev/null\n",
        0o700,
    );
    let mut cmd = gimlet_std();
    cmd.args(["-U", "alice", "-L", "0:127.0.0.1:22", "http://127.0.0.1:9"])
        .env("GIMLET_ASKPASS", &askpass);
    let mut d = Daemon::start_with(&mut cmd);
    let line = d.wait_for("askpass running ");
    let at = line.find("askpass running ").unwrap() + "askpass running ".len();
    let pid: libc::pid_t = line[at..].trim().parse().unwrap();
    d.signal(libc::SIGINT);
    let (status, log) = d.wait();
    // SAFETY: plain syscall on the pid the askpass program gave.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    assert!(status.code() != Some(0), "{status:?} {log:#?}");
}

#[test]
fn a_fifo_in_place_of_the_log_file_on_sigusr1_never_blocks_the_loop() {
    let echo = EchoServer::start(b"");
    let spec = format!("0:127.0.0.1:{}", echo.port());
    let dir = scratch_path("log-fifo");
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("listen.log");
    let rotated = dir.join("listen.log.1");
    let d = Daemon::start(&["-L", &spec, "--log", log.to_str().unwrap()]);
    let wait_for_text = |path: &Path, needle: &str| {
        let deadline = Instant::now() + HANG;
        loop {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            if text.contains(needle) {
                return text;
            }
            assert!(Instant::now() < deadline, "no {needle:?} in {text}");
            thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for_text(&log, "listening on");
    std::fs::rename(&log, &rotated).unwrap();
    mkfifo(&log);
    d.signal(libc::SIGUSR1);
    // Nobody reads the FIFO: the reopen fails at once and the old file stays in use.
    wait_for_text(&rotated, "reopening the log file");
    d.signal(libc::SIGTERM);
    let (status, _) = d.wait();
    assert_eq!(status.code(), Some(0));
    wait_for_text(&rotated, "stopped");
}

/// The next "listening on" line's port, checking that the line says `route`.
#[track_caller]
fn listening_with(d: &mut Daemon, route: &str) -> u16 {
    let line = d.wait_for("gimlet: listening on 127.0.0.1:");
    assert!(line.contains(route), "{line:?} does not say {route:?}");
    port_after(&line, "listening on 127.0.0.1:")
}

#[test]
fn local_forwards_take_the_proxy_from_the_environment_and_no_proxy_per_destination() {
    let proxy = FakeProxy::echo();
    let echo = EchoServer::start(b"direct\n");
    let mut cmd = gimlet_std();
    cmd.args([
        "-L",
        "0:tunnel.example:22",
        "-L",
        &format!("0:127.0.0.1:{}", echo.port()),
    ])
    .env("HTTPS_PROXY", format!("http://{}", proxy.addr()))
    .env("NO_PROXY", "localhost,127.0.0.1");
    let mut d = Daemon::start_with(&mut cmd);
    let proxied = listening_with(
        &mut d,
        &format!(
            "tunnel.example:22 via proxy {} (from HTTPS_PROXY)",
            proxy.addr()
        ),
    );
    let direct = listening_with(
        &mut d,
        &format!(
            "127.0.0.1:{} direct (NO_PROXY entry 127.0.0.1 matches 127.0.0.1)",
            echo.port()
        ),
    );
    let mut s = connect(direct);
    assert_eq!(read_exact(&mut s, 7), b"direct\n");
    round_trip(&mut s, b"not through the proxy");
    let mut s = connect(proxied);
    round_trip(&mut s, b"through the proxy");
    drop(s);
    d.wait_for("closed #2");
    let head = proxy.finish().only_request();
    assert!(head.starts_with("CONNECT tunnel.example:22 "), "{head}");
}

#[test]
fn the_command_line_proxy_wins_over_the_environment_and_noproxy_over_no_proxy() {
    let proxy = FakeProxy::echo();
    let echo = EchoServer::start(b"direct\n");
    let mut cmd = gimlet_std();
    cmd.args([
        "-L",
        "0:tunnel.example:22",
        "-L",
        &format!("0:127.0.0.1:{}", echo.port()),
        "--noproxy",
        "127.0.0.1",
        &proxy.addr(),
    ])
    // Neither applies: the proxy was given, and --noproxy replaces the variable.
    .env("https_proxy", format!("http://127.0.0.1:{}", closed_port()))
    .env("no_proxy", "tunnel.example");
    let mut d = Daemon::start_with(&mut cmd);
    let proxied = listening_with(
        &mut d,
        &format!("tunnel.example:22 via proxy {} (-L", proxy.addr()),
    );
    let direct = listening_with(
        &mut d,
        "direct (--noproxy entry 127.0.0.1 matches 127.0.0.1)",
    );
    assert_eq!(read_exact(&mut connect(direct), 7), b"direct\n");
    let mut s = connect(proxied);
    round_trip(&mut s, b"through the given proxy");
    drop(s);
    d.wait_for("closed #2");
    let head = proxy.finish().only_request();
    assert!(head.starts_with("CONNECT tunnel.example:22 "), "{head}");
}

#[test]
fn a_seed_line_without_proxy_fields_stays_direct_and_a_default_line_takes_the_environment() {
    let proxy = FakeProxy::echo();
    let echo = EchoServer::start(b"direct\n");
    let file = forwards_file(&format!(
        "0 127.0.0.1 {}\n0 tunnel.example 22 default\n",
        echo.port()
    ));
    let mut cmd = gimlet_std();
    cmd.args(["--forwards", file.to_str().unwrap()])
        .env("https_proxy", proxy.addr());
    let mut d = Daemon::start_with(&mut cmd);
    let seed = listening_with(
        &mut d,
        "direct (the line names no route; https_proxy is for -L and `default` lines)",
    );
    let default = listening_with(
        &mut d,
        &format!(
            "tunnel.example:22 via proxy {} (from https_proxy)",
            proxy.addr()
        ),
    );
    assert_eq!(read_exact(&mut connect(seed), 7), b"direct\n");
    let mut s = connect(default);
    round_trip(&mut s, b"via the environment");
    drop(s);
    d.wait_for("closed #2");
    let head = proxy.finish().only_request();
    assert!(head.starts_with("CONNECT tunnel.example:22 "), "{head}");
}

/// Connects to `port` and reads until the tunnel closes (a Basic-challenging fake proxy
/// closes it after its 200), then waits for gimlet's "closed #ID" line.
#[track_caller]
fn open_and_close(d: &mut Daemon, port: u16, id: u32) {
    let mut s = connect(port);
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).expect("read to the tunnel's end");
    d.wait_for(&format!("closed #{id} "));
}

#[test]
fn netrc_and_a_lines_credential_file_serve_the_proxies_of_every_route() {
    let line_proxy = FakeProxy::basic_challenge();
    let env_proxy = FakeProxy::basic_challenge();
    let netrc = scratch_file(
        "listen-netrc",
        b"machine 127.0.0.1 login nina password n3trc\n",
        0o600,
    );
    let auth = scratch_file("listen-line-auth", b"lina:f1le\n", 0o600);
    let file = forwards_file(&format!(
        "0 a.example 22 127.0.0.1 {}\n0 b.example 22 default proxy-auth-file={}\n",
        line_proxy.port(),
        auth.display()
    ));
    let mut cmd = gimlet_std();
    cmd.args([
        "--forwards",
        file.to_str().unwrap(),
        "-L",
        "0:c.example:22",
        "--netrc-file",
        netrc.to_str().unwrap(),
    ])
    .env("https_proxy", env_proxy.addr());
    let mut d = Daemon::start_with(&mut cmd);
    let local = listening_with(&mut d, "c.example:22 via proxy");
    let line = listening_with(&mut d, "a.example:22 via proxy");
    let default = listening_with(&mut d, "b.example:22 via proxy");
    open_and_close(&mut d, line, 1);
    open_and_close(&mut d, local, 2);
    open_and_close(&mut d, default, 3);
    let sent = |record: &Record, i: usize| proxy_authorization(&record.request(i));
    let record = line_proxy.finish();
    record.assert_requests(2);
    assert_eq!(sent(&record, 0), None);
    assert_eq!(
        sent(&record, 1),
        Some(basic("nina:n3trc")),
        "netrc, a line's proxy"
    );
    let record = env_proxy.finish();
    record.assert_requests(4);
    assert_eq!(
        sent(&record, 1),
        Some(basic("nina:n3trc")),
        "netrc, https_proxy"
    );
    assert_eq!(
        sent(&record, 3),
        Some(basic("lina:f1le")),
        "the line's file"
    );
    let log = d.log_so_far();
    assert!(!log.contains("n3trc") && !log.contains("f1le"), "{log}");
}

#[test]
fn a_missing_password_is_asked_once_at_start_for_the_command_lines_proxy() {
    let proxy = FakeProxy::echo();
    let asked = scratch_path("asked-once.log");
    let _ = std::fs::remove_file(&asked);
    let askpass = scratch_file(
        "askpass-counting.sh",
        format!(
            "#!/bin/sh\necho asked >> '{}'\necho 's3cret'\n",
            asked.display()
        )
        .as_bytes(),
        0o700,
    );
    let mut cmd = gimlet_std();
    cmd.args([
        "-U",
        "alice",
        "--proxy-auth",
        "basic",
        "-L",
        "0:h.example:22",
        &proxy.addr(),
    ])
    .env("GIMLET_ASKPASS", &askpass);
    let mut d = Daemon::start_with(&mut cmd);
    let port = d.listening_port();
    let mut s = connect(port);
    round_trip(&mut s, b"once");
    drop(s);
    d.wait_for("closed #1");
    let head = proxy.finish().only_request();
    assert!(
        head.contains(&format!(
            "Proxy-Authorization: Basic {}",
            base64(b"alice:s3cret")
        )),
        "{head}"
    );
    let times = std::fs::read_to_string(&asked).unwrap().lines().count();
    assert_eq!(times, 1, "the password was asked {times} times");
}

#[test]
fn a_symlinked_forwards_file_is_reloaded_when_its_target_or_a_link_changes() {
    use std::os::unix::fs::symlink;
    let one = EchoServer::start(b"one\n");
    let two = EchoServer::start(b"two\n");
    let (ra, rb, rc) = (
        ReservedPort::new(),
        ReservedPort::new(),
        ReservedPort::new(),
    );
    let (a, b, c) = (ra.port, rb.port, rc.port);
    let line = |port: u16, to: &EchoServer| format!("{port} 127.0.0.1 {}\n", to.port());
    // A Kubernetes ConfigMap's layout, reached through a link from another directory:
    // etc/forwards -> ../conf/..data/forwards, conf/..data -> ..v1.
    let base = scratch_path("symlinked-forwards");
    let _ = std::fs::remove_dir_all(&base);
    let conf = base.join("conf");
    std::fs::create_dir_all(conf.join("..v1")).unwrap();
    std::fs::create_dir_all(base.join("etc")).unwrap();
    std::fs::write(conf.join("..v1/forwards"), line(a, &one)).unwrap();
    symlink("..v1", conf.join("..data")).unwrap();
    let file = base.join("etc/forwards");
    symlink("../conf/..data/forwards", &file).unwrap();
    let mut d = Daemon::start(&["--forwards", file.to_str().unwrap()]);
    d.listening_on(a);
    let mut kept = connect(a);
    assert_eq!(read_exact(&mut kept, 4), b"one\n");
    let mut seed = 40;
    let mut step = |kept: &mut TcpStream| {
        seed += 1;
        round_trip(kept, &Prng::bytes(seed, 100_000));
    };
    step(&mut kept);

    // The target edited in its own directory (an editor's save), not the link's.
    save(
        &conf.join("..v1/forwards"),
        &format!("{}{}", line(a, &one), line(b, &two)),
    );
    d.listening_on(b);
    step(&mut kept);

    // The ConfigMap update: a new directory, and ..data swapped to it by a rename.
    std::fs::create_dir_all(conf.join("..v2")).unwrap();
    std::fs::write(
        conf.join("..v2/forwards"),
        format!("{}{}", line(a, &two), line(b, &two)),
    )
    .unwrap();
    symlink("..v2", conf.join("..data_tmp")).unwrap();
    std::fs::rename(conf.join("..data_tmp"), conf.join("..data")).unwrap();
    std::fs::remove_dir_all(conf.join("..v1")).unwrap();
    d.wait_for(&format!("changed 127.0.0.1:{a}"));
    assert_eq!(read_exact(&mut connect(a), 4), b"two\n");
    step(&mut kept);

    // The new target edited: the watch followed the swap.
    save(&conf.join("..v2/forwards"), &line(a, &two));
    d.wait_for(&format!("stopped listening on 127.0.0.1:{b}"));
    step(&mut kept);

    // `ln -sf` to a file elsewhere: the link itself replaced.
    std::fs::create_dir_all(base.join("other")).unwrap();
    std::fs::write(
        base.join("other/forwards"),
        format!("{}{}", line(a, &two), line(c, &one)),
    )
    .unwrap();
    symlink("../other/forwards", base.join("etc/forwards.new")).unwrap();
    std::fs::rename(base.join("etc/forwards.new"), &file).unwrap();
    d.listening_on(c);
    assert_eq!(read_exact(&mut connect(c), 4), b"one\n");
    step(&mut kept);

    // The transfer open since the start ends cleanly, every byte accounted for.
    kept.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    kept.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    let closed = d.wait_for("closed #1 ");
    assert!(
        closed.contains("500000 bytes sent, 500004 bytes received"),
        "{closed}"
    );
}

// A single plain proxy (at an IP address, or named once a worker reached it) with nothing to
// authenticate: the engine's loop
// sends the CONNECT itself; anything but a 2xx is handed to a worker's handshake.

#[test]
fn a_reply_split_anywhere_with_tunnel_bytes_after_it_reaches_the_client_whole() {
    const REPLY: &str = "HTTP/1.1 200 Connection established\r\nVia: 1.1 fake\r\n\r\n";
    let early = b"SSH-2.0-early\r\n";
    let whole = [REPLY.as_bytes(), early].concat();
    let cut = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(1));
    let proxy = {
        let (cut, whole) = (cut.clone(), whole.clone());
        FakeProxy::start(move |s| {
            let at = cut.load(std::sync::atomic::Ordering::SeqCst);
            send_at(&mut s.stream, &whole, &[at]);
            s.echo();
        })
    };
    let mut d = Daemon::start(&["-L", "0:git.example:22", &proxy.addr()]);
    let port = d.listening_port();
    for at in 1..whole.len() {
        cut.store(at, std::sync::atomic::Ordering::SeqCst);
        let mut s = connect(port);
        assert_eq!(read_exact(&mut s, early.len()), early, "split at {at}");
        round_trip(&mut s, b"ping");
        let established = d.wait_for(&format!("established #{at} "));
        assert!(
            established.ends_with(": \"HTTP/1.1 200 Connection established\""),
            "{established}"
        );
    }
    let record = proxy.finish();
    // One CONNECT per tunnel: none was handed over and asked again.
    record.assert_requests(whole.len() - 1);
    assert!(
        record
            .request(0)
            .starts_with("CONNECT git.example:22 HTTP/1.1\r\n")
    );
}

/// A proxy named, not numbered: the first tunnel's worker resolves it, the next ones are
/// opened on the loop at the address it reached; every one carries its bytes, with one
/// CONNECT each.
#[test]
fn tunnels_through_a_named_proxy_each_send_one_connect_and_carry_their_bytes() {
    let proxy = FakeProxy::start(|s| {
        s.send(b"HTTP/1.1 200 Connection established\r\n\r\nhello\n");
        s.echo();
    });
    let port = proxy.port();
    let mut d = Daemon::start(&["-L", "0:git.example:22", &format!("localhost:{port}")]);
    let listening = d.listening_port();
    for id in 1..=4 {
        let mut s = connect(listening);
        assert_eq!(read_exact(&mut s, 6), b"hello\n", "tunnel {id}");
        round_trip(&mut s, format!("ping {id}").as_bytes());
        s.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "tunnel {id}");
        let established = d.wait_for(&format!("established #{id} "));
        assert!(
            established.contains(&format!("via proxy localhost:{port}")),
            "{established}"
        );
        d.wait_for(&format!("closed #{id} "));
    }
    proxy.finish().assert_requests(4);
}

/// A tunnel that ends with the proxy's reply (the far side said its piece and closed): its
/// bytes reach the client, and the log says established, then closed, in that order, though
/// its first turn, which runs before the log line, already ended it.
#[test]
fn a_tunnel_over_within_the_proxys_reply_is_logged_established_then_closed() {
    let proxy = FakeProxy::start(|s| {
        s.send(b"HTTP/1.1 200 Connection established\r\n\r\nbye\n");
        s.shutdown_write();
        s.wait_for_close();
    });
    let mut d = Daemon::start(&["-L", "0:git.example:22", &proxy.addr()]);
    let port = d.listening_port();
    let mut s = connect(port);
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"bye\n");
    d.wait_for("established #1 ");
    let closed = d.wait_for("closed #1 ");
    assert!(
        closed.ends_with(": 0 bytes sent, 4 bytes received"),
        "{closed}"
    );
}

#[test]
fn a_refusal_is_logged_in_the_handshakes_words() {
    let proxy = FakeProxy::replying("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n");
    let mut d = Daemon::start(&["-L", "0:git.example:22", &proxy.addr()]);
    let port = d.listening_port();
    let mut s = connect(port);
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty(), "the client got bytes of a refused tunnel");
    let failed = d.wait_for("failed #1");
    assert!(
        failed.contains(&format!(
            ": proxy {} refused CONNECT git.example:22: \"HTTP/1.1 403 Forbidden\"",
            proxy.addr()
        )),
        "{failed}"
    );
}

#[test]
fn a_407_without_credentials_is_logged_as_the_handshake_says_it() {
    let proxy = FakeProxy::replying(
        "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"p\"\r\nContent-Length: 0\r\n\r\n",
    );
    let mut d = Daemon::start(&["-L", "0:git.example:22", &proxy.addr()]);
    let port = d.listening_port();
    let _s = connect(port);
    let failed = d.wait_for("failed #1");
    assert!(
        failed.contains(&format!(
            ": proxy {} requires authentication (offers Basic)",
            proxy.addr()
        )),
        "{failed}"
    );
}

#[test]
fn after_a_407_the_forwards_next_tunnels_go_straight_to_the_handshake_threads() {
    let proxy = FakeProxy::replying(
        "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Negotiate\r\nContent-Length: 0\r\n\r\n",
    );
    let mut d = Daemon::start(&["-L", "0:git.example:22", &proxy.addr()]);
    let port = d.listening_port();
    for id in 1..=3 {
        let _s = connect(port);
        d.wait_for(&format!("failed #{id}"));
    }
    // The loop's CONNECT for the first tunnel, then one per tunnel from the threads.
    proxy.finish().assert_requests(4);
}

#[test]
fn basic_credentials_sent_at_once_and_rejected_are_logged_as_the_handshake_says_it() {
    let proxy = FakeProxy::replying(
        "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"p\"\r\nContent-Length: 0\r\n\r\n",
    );
    let url = format!("http://alice:wrong@{}", proxy.addr());
    let mut d = Daemon::start(&["-L", "0:git.example:22", "--proxy-auth", "basic", &url]);
    let port = d.listening_port();
    let _s = connect(port);
    let failed = d.wait_for("failed #1");
    assert!(
        failed.contains(&format!(
            ": proxy {} rejected the Basic credentials for user \"alice\"",
            proxy.addr()
        )),
        "{failed}"
    );
    assert!(!failed.contains("wrong"), "{failed}");
    let record = proxy.finish();
    // The loop's CONNECT and the thread's: both with the credentials, both refused.
    record.assert_requests(2);
    assert!(record.request(0).contains("Proxy-Authorization: Basic "));
}

#[test]
fn a_proxy_that_never_answers_fails_at_the_connect_timeout() {
    // Accepts (the kernel does, from its backlog) and never says a word.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let mut d = Daemon::start(&["-L", "0:git.example:22", &addr, "--connect-timeout", "0.5"]);
    let port = d.listening_port();
    let mut s = connect(port);
    let failed = d.wait_for("failed #1");
    assert!(
        failed.contains(&format!(
            ": reading the reply from proxy {addr}: timed out after 0.5s (--connect-timeout)"
        )),
        "{failed}"
    );
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty());
}

#[test]
fn max_tunnels_counts_tunnels_still_being_opened() {
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let mut d = Daemon::start(&["-L", "0:git.example:22", &addr, "--max-tunnels", "1"]);
    let port = d.listening_port();
    let _first = connect(port);
    d.wait_for("accepted #1");
    let mut second = connect(port);
    d.wait_for("refused #2");
    let mut rest = Vec::new();
    let _ = second.read_to_end(&mut rest);
    assert!(rest.is_empty());
}
