//! `--proxy-http2`: CONNECT over HTTP/2 to an https:// proxy (RFC 9113 §8.5), against an
//! in-process h2 proxy made with the same crate (`support_h2`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use h2::Reason;

use crate::support::*;
use crate::support_h2::*;
use crate::support_tls::*;

const UP_SEED: u64 = 0x5eed_0001_0002_0001;
const DOWN_SEED: u64 = 0x5eed_0002_0002_0002;
const MIB: usize = 1024 * 1024;

/// A one-connection target on 127.0.0.1: runs `f` on the accepted connection in a thread.
fn target(f: impl FnOnce(TcpStream) + Send + 'static) -> (u16, thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind target");
    let port = listener.local_addr().unwrap().port();
    let t = thread::spawn(move || {
        let (s, _) = listener.accept().expect("target accept");
        f(s);
    });
    (port, t)
}

fn proxy(pki: &Pki, script: impl Fn(&Seen, usize) -> H2Answer + Send + Sync + 'static) -> H2Proxy {
    H2Proxy::start(pki.server.server_config(), &[b"h2"], script)
}

fn grant(_: &Seen, _: usize) -> H2Answer {
    H2Answer::Grant {
        status: 200,
        early: Vec::new(),
    }
}

/// gimlet --proxy-http2 trusting the test CA, to 127.0.0.1 PORT, stdio piped.
fn spawn_h2(pki: &Pki, proxy: &H2Proxy, extra: &[&str], port: u16) -> Running {
    let ca = pki.ca.file();
    let mut cmd = gimlet_std();
    cmd.arg("--proxy-cacert")
        .arg(ca)
        .arg("--proxy-http2")
        .args(extra)
        .args([proxy.url(), "127.0.0.1".into(), port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    spawn(&mut cmd)
}

fn read_all(r: &mut impl Read) -> Vec<u8> {
    let mut out = Vec::new();
    r.read_to_end(&mut out).expect("read stdout");
    out
}

#[test]
fn connect_over_h2_names_only_the_authority_and_relays_with_half_close_upward() {
    let pki = Pki::new();
    let proxy = proxy(&pki, grant);
    let (port, t) = target(|mut s| {
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"hello up", "the target must get stdin, then EOF");
        s.write_all(b"hello down").unwrap();
    });
    let mut g = spawn_h2(&pki, &proxy, &[], port);
    g.stdin.take().unwrap().write_all(b"hello up").unwrap();
    let out = read_all(g.stdout.as_mut().unwrap());
    assert_eq!(out, b"hello down");
    g.wait(HANG).assert_code(0);
    t.join().unwrap();
    let seen = proxy.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "CONNECT");
    assert_eq!(
        seen[0].uri,
        format!("127.0.0.1:{port}"),
        "no :scheme, no :path"
    );
    assert_eq!(
        seen[0].header("user-agent"),
        Some(format!("gimlet/{VERSION}").as_str())
    );
    assert_eq!(seen[0].header("host"), None, ":authority replaces Host");
}

/// As over HTTP/1.1 (the relay's rule): the far side's end ends the tunnel once stdout has
/// it all, even with stdin still open.
#[test]
fn end_stream_from_the_proxy_closes_stdout_and_ends_the_tunnel() {
    let pki = Pki::new();
    let proxy = proxy(&pki, grant);
    let (port, t) = target(|mut s| {
        s.write_all(b"bye").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
    });
    let mut g = spawn_h2(&pki, &proxy, &[], port);
    let out = read_all(g.stdout.as_mut().unwrap());
    assert_eq!(out, b"bye", "stdout ends at the proxy's END_STREAM");
    g.wait_keeping_stdin(HANG).assert_code(0);
    t.join().unwrap();
}

#[test]
fn sixty_four_mib_each_way_arrive_intact_over_h2() {
    let pki = Pki::new();
    let proxy = proxy(&pki, grant);
    let (port, t) = target(|s| {
        let mut w = s.try_clone().unwrap();
        let writer = thread::spawn(move || {
            write_stream(&mut w, DOWN_SEED, 64 * MIB).unwrap();
            w
        });
        let mut r = s;
        verify_stream(&mut r, UP_SEED, 64 * MIB, "upload at the target");
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "nothing after the upload");
        // Only now: the end of the download ends the tunnel.
        writer.join().unwrap().shutdown(Shutdown::Write).unwrap();
    });
    let mut g = spawn_h2(&pki, &proxy, &[], port);
    let mut stdin = g.stdin.take().unwrap();
    let up = thread::spawn(move || {
        write_stream(&mut stdin, UP_SEED, 64 * MIB).unwrap();
    });
    let mut stdout = g.stdout.take().unwrap();
    verify_stream(&mut stdout, DOWN_SEED, 64 * MIB, "download on stdout");
    assert!(
        read_all(&mut stdout).is_empty(),
        "nothing after the download"
    );
    up.join().unwrap();
    g.wait(HANG).assert_code(0);
    t.join().unwrap();
    assert_eq!(proxy.connections(), 1);
}

/// Reads exactly `len` bytes on a thread of its own; a hang (bytes held back) panics after
/// [`HANG`] instead of blocking the test.
fn read_exactly<R: Read + Send + 'static>(mut r: R, len: usize) -> (R, Vec<u8>) {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = vec![0; len];
        let got = r.read_exact(&mut buf).map(|()| (r, buf));
        let _ = tx.send(got);
    });
    match rx.recv_timeout(HANG) {
        Ok(got) => got.expect("read"),
        Err(_) => panic!("{len} bytes did not arrive within {HANG:?}"),
    }
}

/// DATA is sent in whole frames and the tail of a write waits for the next one, but never
/// longer than stdin's next read: bytes that end a burst go out at once, with stdin open.
#[test]
fn the_tail_of_a_burst_goes_out_while_stdin_stays_open() {
    let pki = Pki::new();
    let proxy = proxy(&pki, grant);
    // Less than a frame, a frame and a bit, and several frames and a bit.
    let bursts = [5, 16_400, 200_003];
    let (port, t) = target(move |s| {
        let mut r = s.try_clone().unwrap();
        let mut w = s;
        for (i, len) in bursts.into_iter().enumerate() {
            let (back, got) = read_exactly(r, len);
            r = back;
            assert_eq!(got, Prng::bytes(UP_SEED + i as u64, len), "burst {i}");
            w.write_all(format!("got {i}\n").as_bytes()).unwrap();
        }
    });
    let mut g = spawn_h2(&pki, &proxy, &[], port);
    let mut stdin = g.stdin.take().unwrap();
    let mut stdout = g.stdout.take().unwrap();
    for (i, len) in bursts.into_iter().enumerate() {
        stdin
            .write_all(&Prng::bytes(UP_SEED + i as u64, len))
            .unwrap();
        let reply = format!("got {i}\n");
        let (back, got) = read_exactly(stdout, reply.len());
        stdout = back;
        assert_eq!(text(&got), reply, "the target's reply to burst {i}");
    }
    drop(stdin);
    assert!(read_all(&mut stdout).is_empty());
    g.wait(HANG).assert_code(0);
    t.join().unwrap();
}

/// A proxy may grant a stream's window again only once all of it was used: the last bytes of
/// the window go out even when they make no whole frame (with stdin still open, nothing else
/// would send them).
#[test]
fn the_last_bytes_of_a_window_go_out_to_a_proxy_that_waits_for_them() {
    let pki = Pki::new();
    let settings = H2Settings {
        stream_window: Some(65_535),
        whole_windows: true,
        ..H2Settings::default()
    };
    let proxy = H2Proxy::start_with(pki.server.server_config(), &[b"h2"], settings, grant);
    let len = 3 * MIB + 7;
    let (port, t) = target(move |mut s| {
        let (back, got) = read_exactly(s.try_clone().unwrap(), len);
        drop(back);
        assert!(
            got == Prng::bytes(UP_SEED, len),
            "the upload arrives intact"
        );
        s.write_all(b"all in\n").unwrap();
    });
    let mut g = spawn_h2(&pki, &proxy, &[], port);
    let mut stdin = g.stdin.take().unwrap();
    let writer = thread::spawn(move || {
        write_stream(&mut stdin, UP_SEED, len).unwrap();
        stdin
    });
    let (mut stdout, got) = read_exactly(g.stdout.take().unwrap(), 7);
    assert_eq!(got, b"all in\n");
    drop(writer.join().unwrap());
    assert!(read_all(&mut stdout).is_empty());
    g.wait(HANG).assert_code(0);
    t.join().unwrap();
}

#[test]
fn any_2xx_opens_the_tunnel_and_data_sent_with_the_headers_comes_first() {
    let pki = Pki::new();
    let proxy = proxy(&pki, |_, _| H2Answer::Grant {
        status: 203,
        early: b"early ".to_vec(),
    });
    let (port, t) = target(|mut s| {
        s.write_all(b"late").unwrap();
    });
    let mut g = spawn_h2(&pki, &proxy, &[], port);
    let out = read_all(g.stdout.as_mut().unwrap());
    assert_eq!(out, b"early late");
    g.wait(HANG).assert_code(0);
    t.join().unwrap();
}

#[test]
fn h2_refusal_exits_with_the_refused_status_quoting_the_status() {
    let pki = Pki::new();
    let proxy = proxy(&pki, |_, _| H2Answer::Status(403, Vec::new()));
    let g = spawn_h2(&pki, &proxy, &[], 22);
    let f = g.wait(HANG);
    f.assert_code(4);
    assert!(
        f.stderr.contains(&format!(
            "proxy {} refused CONNECT 127.0.0.1:22: \"HTTP/2 403\"",
            proxy.name()
        )),
        "{:?}",
        f.stderr
    );
}

#[test]
fn refused_stream_before_any_reply_exits_with_the_refused_status() {
    let pki = Pki::new();
    let proxy = proxy(&pki, |_, _| H2Answer::RefuseStream);
    let f = spawn_h2(&pki, &proxy, &[], 22).wait(HANG);
    f.assert_code(4);
    assert!(
        f.stderr.contains("RST_STREAM REFUSED_STREAM"),
        "{:?}",
        f.stderr
    );
}

/// 407 until the request carries `expected`, then 200.
fn challenging(
    challenge: &'static str,
    accept: impl Fn(&str) -> bool + Send + Sync + 'static,
) -> impl Fn(&Seen, usize) -> H2Answer + Send + Sync + 'static {
    move |seen, _| match seen.header("proxy-authorization") {
        Some(v) if accept(v) => H2Answer::Grant {
            status: 200,
            early: Vec::new(),
        },
        _ => H2Answer::Status(407, vec![("proxy-authenticate", challenge.to_owned())]),
    }
}

#[test]
fn basic_407_round_trip_over_h2_uses_a_second_stream_on_the_same_connection() {
    let pki = Pki::new();
    let expected = format!("Basic {}", base64(b"al:p@ss"));
    let proxy = proxy(
        &pki,
        challenging("Basic realm=\"h2\"", move |v| v == expected),
    );
    let (port, t) = target(|mut s| s.write_all(b"in").unwrap());
    let mut g = spawn_h2(&pki, &proxy, &["-U", "al:p@ss"], port);
    assert_eq!(read_all(g.stdout.as_mut().unwrap()), b"in");
    g.wait(HANG).assert_code(0);
    t.join().unwrap();
    let seen = proxy.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].header("proxy-authorization"), None);
    assert_eq!((seen[0].connection, seen[1].connection), (0, 0));
    assert_eq!(proxy.connections(), 1);
}

#[test]
fn digest_407_round_trip_over_h2_signs_connect_and_the_authority() {
    let pki = Pki::new();
    let proxy = proxy(
        &pki,
        challenging(
            "Digest realm=\"h2\", nonce=\"abc123\", qop=\"auth\", algorithm=SHA-256",
            |v| v.starts_with("Digest ") && v.contains("username=\"al\""),
        ),
    );
    let (port, t) = target(|mut s| s.write_all(b"in").unwrap());
    let mut g = spawn_h2(&pki, &proxy, &["-U", "al:pw"], port);
    assert_eq!(read_all(g.stdout.as_mut().unwrap()), b"in");
    g.wait(HANG).assert_code(0);
    t.join().unwrap();
    let seen = proxy.seen();
    let auth = seen[1].header("proxy-authorization").unwrap();
    assert!(
        auth.contains(&format!("uri=\"127.0.0.1:{port}\"")),
        "Digest signs the authority: {auth}"
    );
}

#[test]
fn wrong_credentials_over_h2_exit_with_the_auth_status() {
    let pki = Pki::new();
    let proxy = proxy(&pki, challenging("Basic realm=\"h2\"", |_| false));
    let f = spawn_h2(&pki, &proxy, &["-U", "al:wrong"], 22).wait(HANG);
    f.assert_code(5);
    assert!(
        f.stderr.contains("rejected the Basic credentials"),
        "{:?}",
        f.stderr
    );
    assert!(
        !f.stderr.contains("wrong"),
        "no password in errors: {:?}",
        f.stderr
    );
}

#[test]
fn ntlm_over_h2_is_refused_with_a_clear_reason() {
    let pki = Pki::new();
    let proxy = proxy(&pki, challenging("NTLM", |_| false));
    let f = spawn_h2(&pki, &proxy, &["-U", "al:pw"], 22).wait(HANG);
    f.assert_code(5);
    assert!(
        f.stderr.contains("cannot be used over HTTP/2") && f.stderr.contains("--proxy-http2"),
        "{:?}",
        f.stderr
    );
    assert_eq!(proxy.seen().len(), 1, "no NTLM message is sent");
}

#[test]
fn rst_stream_mid_tunnel_exits_with_the_tunnel_status_after_the_data_before_it() {
    let pki = Pki::new();
    let proxy = proxy(&pki, |_, _| {
        H2Answer::ResetAfter(b"partial".to_vec(), Reason::INTERNAL_ERROR)
    });
    let mut g = spawn_h2(&pki, &proxy, &[], 22);
    let mut first = [0u8; 7];
    g.stdout.as_mut().unwrap().read_exact(&mut first).unwrap();
    assert_eq!(&first, b"partial");
    g.stdin.as_mut().unwrap().write_all(b"go").unwrap();
    let out = read_all(g.stdout.as_mut().unwrap());
    assert!(out.is_empty());
    let f = g.wait(HANG);
    f.assert_code(7);
    assert!(
        f.stderr.contains("RST_STREAM INTERNAL_ERROR"),
        "{:?}",
        f.stderr
    );
}

#[test]
fn goaway_mid_tunnel_exits_with_the_tunnel_status() {
    let pki = Pki::new();
    let proxy = proxy(&pki, |_, _| {
        H2Answer::GoAwayAfter(b"partial".to_vec(), Reason::INTERNAL_ERROR)
    });
    let mut g = spawn_h2(&pki, &proxy, &[], 22);
    let mut first = [0u8; 7];
    g.stdout.as_mut().unwrap().read_exact(&mut first).unwrap();
    assert_eq!(&first, b"partial");
    g.stdin.as_mut().unwrap().write_all(b"go").unwrap();
    let out = read_all(g.stdout.as_mut().unwrap());
    assert!(out.is_empty());
    let f = g.wait(HANG);
    f.assert_code(7);
    assert!(f.stderr.contains("GOAWAY"), "{:?}", f.stderr);
}

#[test]
fn a_proxy_that_picks_http_1_1_gets_the_http_1_1_connect() {
    let pki = Pki::new();
    let proxy = TlsProxy::start(pki.server.server_config(), |s| {
        s.send(OK);
        s.send("over h1");
        s.shutdown();
        // Close only once gimlet's close_notify is read: a close with it unread would be a
        // reset, which may reach gimlet before "over h1" does.
        s.reader.read_to_close();
    });
    let ca = pki.ca.file();
    let out = gimlet()
        .arg("--proxy-cacert")
        .arg(ca)
        .args(["--proxy-http2", &proxy.url(), "example.test", "22"])
        .write_stdin("")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(out.stdout, b"over h1");
    let request = proxy.finish().only_request();
    assert!(
        request.starts_with("CONNECT example.test:22 HTTP/1.1\r\n"),
        "{request:?}"
    );
}

#[test]
fn a_stalled_stdout_stops_the_proxy_after_one_window() {
    let pki = Pki::new();
    let proxy = proxy(&pki, grant);
    let (port, t) = target(|mut s| {
        // Fails with a reset when gimlet goes away early; only the first bytes matter then.
        let _ = write_stream(&mut s, DOWN_SEED, 64 * MIB);
    });
    let mut g = spawn_h2(&pki, &proxy, &[], port);
    // Nobody reads stdout: wait until the proxy can send no more.
    let mut last = 0;
    let mut still = 0;
    while still < 20 {
        thread::sleep(Duration::from_millis(50));
        let now = proxy.sent_down.load(std::sync::atomic::Ordering::SeqCst);
        if now == last && now > 0 {
            still += 1;
        } else {
            still = 0;
        }
        last = now;
        assert!(now < 64 * MIB as u64, "the whole stream went out unread");
    }
    // One 8 MiB stream window, plus what the socket pair, the relay and the stdout pipe hold.
    assert!(
        last <= 16 * MIB as u64,
        "the proxy got {last} bytes out while stdout stalled"
    );
    let mut stdout = g.stdout.take().unwrap();
    verify_stream(&mut stdout, DOWN_SEED, 64 * MIB, "download after the stall");
    drop(stdout);
    g.wait(HANG).assert_code(0);
    t.join().unwrap();
}

/// nghttpx ends a stream whose target closed with END_STREAM and then RST_STREAM(NO_ERROR):
/// gimlet's own END_STREAM then finds the stream gone, which is no error (regression: it
/// exited 7 with "user error: inactive stream").
#[test]
fn reset_no_error_after_end_stream_is_a_clean_end() {
    let pki = Pki::new();
    let proxy = proxy(&pki, |_, _| H2Answer::EndThenReset(b"bye".to_vec()));
    let mut g = spawn_h2(&pki, &proxy, &[], 22);
    let out = read_all(g.stdout.as_mut().unwrap());
    assert_eq!(out, b"bye");
    let f = g.wait(HANG);
    f.assert_code(0);
    assert!(f.stderr.is_empty(), "{:?}", f.stderr);
}

/// The end of the download as an empty DATA frame of its own, after the data was read:
/// the end is seen at once (regression: the relay that drives the stream itself took the
/// empty frame for "nothing yet" and waited for the socket, which had nothing more to say).
#[test]
fn end_stream_in_an_empty_data_frame_of_its_own_ends_the_download() {
    let pki = Pki::new();
    let proxy = proxy(&pki, |_, _| H2Answer::EmptyEndAfterClient(b"down".to_vec()));
    let mut g = spawn_h2(&pki, &proxy, &[], 22);
    let mut stdout = g.stdout.take().unwrap();
    let mut first = [0u8; 4];
    stdout.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"down");
    // The proxy ends the stream only once ours ended: the two ends come apart in time.
    let mut stdin = g.stdin.take().unwrap();
    stdin.write_all(b"up").unwrap();
    drop(stdin);
    assert_eq!(read_all(&mut stdout), b"");
    let f = g.wait(HANG);
    f.assert_code(0);
    assert!(f.stderr.is_empty(), "{:?}", f.stderr);
}

#[test]
fn tls_to_the_destination_runs_inside_the_h2_stream() {
    let pki = Pki::new();
    let proxy = proxy(&pki, grant);
    let config = pki.server.server_config();
    let (port, t) = target(move |tcp| {
        let conn = rustls::ServerConnection::new(config).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let mut got = Vec::new();
        tls.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"ping", "the target must get stdin, then close_notify");
        tls.write_all(b"pong").unwrap();
        tls.conn.send_close_notify();
        tls.flush().unwrap();
    });
    let ca = pki.ca.file().to_str().unwrap().to_owned();
    let mut g = spawn_h2(&pki, &proxy, &["--tls", "--cacert", &ca], port);
    g.stdin.take().unwrap().write_all(b"ping").unwrap();
    assert_eq!(read_all(g.stdout.as_mut().unwrap()), b"pong");
    g.wait(HANG).assert_code(0);
    t.join().unwrap();
}

#[test]
fn an_untrusted_destination_behind_h2_fails_with_the_tls_status() {
    let pki = Pki::new();
    let proxy = proxy(&pki, grant);
    let config = pki.self_signed.server_config();
    let (port, t) = target(move |tcp| {
        let conn = rustls::ServerConnection::new(config).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let _ = tls.read_to_end(&mut Vec::new());
    });
    let ca = pki.ca.file().to_str().unwrap().to_owned();
    let g = spawn_h2(&pki, &proxy, &["--tls", "--cacert", &ca], port);
    let f = g.wait(HANG);
    f.assert_code(8);
    assert!(
        f.stderr.contains("TLS handshake with 127.0.0.1:"),
        "{:?}",
        f.stderr
    );
    t.join().unwrap();
}

// Listen modes: the tunnels of one route share HTTP/2 connections.

/// gimlet -L through an h2 proxy, its log (stderr) read line by line.
struct Daemon {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Daemon {
    /// `gimlet --proxy-http2 -L 0:127.0.0.1:PORT` through `proxy`, `extra` before the proxy.
    fn forward(pki: &Pki, proxy: &H2Proxy, port: u16, extra: &[&str]) -> (Daemon, u16) {
        Daemon::start(pki, proxy, &["-L", &format!("0:127.0.0.1:{port}")], extra)
    }

    fn start(pki: &Pki, proxy: &H2Proxy, mode: &[&str], extra: &[&str]) -> (Daemon, u16) {
        let mut child = gimlet_std()
            .arg("--proxy-cacert")
            .arg(pki.ca.file())
            .args(["--proxy-http2", "-v"])
            .args(mode)
            .args(extra)
            .arg(proxy.url())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start gimlet");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut d = Daemon {
            child,
            lines,
            seen: Vec::new(),
        };
        let line = d.wait_for("listening on 127.0.0.1:");
        let at = line.find("127.0.0.1:").unwrap() + "127.0.0.1:".len();
        let digits: String = line[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        (d, digits.parse().unwrap())
    }

    #[track_caller]
    fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + HANG;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no log line with {needle:?}; log:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A target on 127.0.0.1 that echoes each connection until EOF, then closes its side.
fn echo_target() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind target");
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            thread::spawn(move || {
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
    port
}

fn client(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the forward");
    s.set_read_timeout(Some(HANG)).unwrap();
    s
}

/// Sends `data` and reads it back through the echo target, byte for byte.
#[track_caller]
fn round_trip(s: &mut TcpStream, data: &[u8]) {
    let writer = {
        let mut w = s.try_clone().unwrap();
        let data = data.to_vec();
        thread::spawn(move || w.write_all(&data).expect("write through the forward"))
    };
    let mut got = vec![0; data.len()];
    s.read_exact(&mut got).expect("read through the forward");
    writer.join().unwrap();
    assert!(got == data, "bytes differ after the round trip");
}

/// Half-closes and expects the echo's EOF: the stream's END_STREAM went both ways.
#[track_caller]
fn finish(mut s: TcpStream) {
    s.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).expect("EOF through the forward");
    assert!(rest.is_empty(), "{} bytes after the echo", rest.len());
}

fn connections_of(proxy: &H2Proxy) -> Vec<usize> {
    proxy.seen().iter().map(|s| s.connection).collect()
}

#[test]
fn concurrent_tunnels_through_one_listen_port_ride_one_h2_connection() {
    let pki = Pki::new();
    let proxy = proxy(&pki, grant);
    let target = echo_target();
    let (mut d, port) = Daemon::forward(&pki, &proxy, target, &[]);
    let clients: Vec<_> = (0..8u64)
        .map(|i| {
            thread::spawn(move || {
                let mut s = client(port);
                round_trip(&mut s, &Prng::bytes(UP_SEED + i, 300_000));
                finish(s);
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    assert_eq!(proxy.connections(), 1, "one TLS connection to the proxy");
    assert_eq!(connections_of(&proxy), vec![0; 8], "eight streams on it");
    let line = d.wait_for("established #8");
    assert!(line.contains("HTTP/2 connection #1, stream "), "{line}");
}

#[test]
fn a_full_connection_by_max_concurrent_streams_opens_a_second_one() {
    let pki = Pki::new();
    let settings = H2Settings {
        max_streams: Some(2),
        ..H2Settings::default()
    };
    let proxy = H2Proxy::start_with(pki.server.server_config(), &[b"h2"], settings, grant);
    let target = echo_target();
    let (mut d, port) = Daemon::forward(&pki, &proxy, target, &[]);
    // One after the other, each kept open: the third finds the first connection full.
    let mut open = Vec::new();
    for i in 0..3u64 {
        let mut s = client(port);
        round_trip(&mut s, &Prng::bytes(UP_SEED + i, 10_000));
        open.push(s);
    }
    assert_eq!(proxy.connections(), 2);
    assert_eq!(connections_of(&proxy), vec![0, 0, 1]);
    assert!(
        d.wait_for("established #3")
            .contains("HTTP/2 connection #2, stream 1)")
    );
    // A place freed on the first: the next tunnel fits on one of the two.
    finish(open.remove(0));
    d.wait_for("closed #1");
    let mut s = client(port);
    round_trip(&mut s, b"fourth");
    assert_eq!(connections_of(&proxy).len(), 4);
    for s in open.into_iter().chain([s]) {
        finish(s);
    }
    assert_eq!(proxy.connections(), 2);
}

#[test]
fn after_goaway_open_streams_finish_intact_and_new_tunnels_take_a_new_connection() {
    let pki = Pki::new();
    let proxy = proxy(&pki, grant);
    let target = echo_target();
    let (_d, port) = Daemon::forward(&pki, &proxy, target, &[]);
    let mut a = client(port);
    round_trip(&mut a, b"before");
    let mut b = client(port);
    round_trip(&mut b, b"before too");
    proxy.goaway_gracefully(0);
    // A tunnel opened while the GOAWAY is on its way may still ride the old connection (the
    // proxy takes streams until its final GOAWAY): kept, it must finish intact too. The GOAWAY
    // comes before that tunnel's echo on the connection, so the one after it is sure to see it.
    let mut late = Vec::new();
    let c = loop {
        let mut c = client(port);
        round_trip(&mut c, b"after");
        if *connections_of(&proxy).last().unwrap() == 1 {
            break c;
        }
        late.push(c);
        assert!(
            late.len() < 3,
            "new tunnels keep riding the connection that said GOAWAY"
        );
    };
    assert_eq!(proxy.connections(), 2, "{:?}", proxy.seen());
    let mut d = client(port);
    round_trip(&mut d, b"and after that");
    assert_eq!(*connections_of(&proxy).last().unwrap(), 1);
    for s in late {
        finish(s);
    }
    finish(d);
    // The streams the GOAWAY left open carry on, byte for byte, to their end.
    round_trip(&mut a, &Prng::bytes(DOWN_SEED, 2 * MIB));
    round_trip(&mut b, &Prng::bytes(UP_SEED, MIB));
    finish(a);
    finish(b);
    finish(c);
}

#[test]
fn rst_stream_of_one_tunnel_leaves_the_others_on_the_connection_intact() {
    let pki = Pki::new();
    let proxy = proxy(&pki, |seen, i| match i {
        1 => H2Answer::ResetAfter(b"doomed".to_vec(), Reason::CANCEL),
        _ => grant(seen, i),
    });
    let target = echo_target();
    let (mut d, port) = Daemon::forward(&pki, &proxy, target, &[]);
    let mut a = client(port);
    round_trip(&mut a, b"first");
    let mut doomed = client(port);
    let mut early = [0u8; 6];
    doomed.read_exact(&mut early).unwrap();
    assert_eq!(&early, b"doomed");
    doomed.write_all(b"x").unwrap();
    // The reset stream's client sees its end; the session says why... in gimlet's -v log.
    let mut rest = Vec::new();
    let _ = doomed.read_to_end(&mut rest);
    d.wait_for("RST_STREAM");
    round_trip(&mut a, &Prng::bytes(UP_SEED, MIB));
    let mut c = client(port);
    round_trip(&mut c, b"third");
    assert_eq!(proxy.connections(), 1);
    assert_eq!(connections_of(&proxy), vec![0, 0, 0]);
    finish(a);
    finish(c);
}

#[test]
fn half_close_is_per_stream_on_a_shared_connection() {
    let pki = Pki::new();
    let proxy = proxy(&pki, grant);
    // Each connection: read to EOF, then answer with the count and close.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            thread::spawn(move || {
                let mut got = Vec::new();
                let _ = conn.read_to_end(&mut got);
                let _ = conn.write_all(format!("{} bytes", got.len()).as_bytes());
            });
        }
    });
    let (_d, port) = Daemon::forward(&pki, &proxy, target, &[]);
    let mut a = client(port);
    let mut b = client(port);
    a.write_all(&Prng::bytes(UP_SEED, 100_000)).unwrap();
    b.write_all(b"still open").unwrap();
    a.shutdown(Shutdown::Write).unwrap();
    let mut answer = String::new();
    a.read_to_string(&mut answer).unwrap();
    assert_eq!(
        answer, "100000 bytes",
        "a's END_STREAM went up, the answer came down"
    );
    // b is untouched by a's half-close: it goes on, then ends its own way.
    b.write_all(b" and more").unwrap();
    b.shutdown(Shutdown::Write).unwrap();
    let mut answer = String::new();
    b.read_to_string(&mut answer).unwrap();
    assert_eq!(answer, "19 bytes");
    assert_eq!(proxy.connections(), 1);
}

#[test]
fn basic_credentials_taken_once_go_with_the_next_connects_on_the_connection() {
    let pki = Pki::new();
    let proxy = proxy(&pki, |seen, _| match seen.header("proxy-authorization") {
        Some(_) => grant(seen, 0),
        None => H2Answer::Status(
            407,
            vec![("proxy-authenticate", "Basic realm=\"p\"".into())],
        ),
    });
    let target = echo_target();
    let (_d, port) = Daemon::forward(&pki, &proxy, target, &["-U", "al:pw"]);
    for i in 0..3 {
        let mut s = client(port);
        round_trip(&mut s, format!("tunnel {i}").as_bytes());
        finish(s);
    }
    let seen = proxy.seen();
    let with: Vec<bool> = seen
        .iter()
        .map(|s| s.header("proxy-authorization").is_some())
        .collect();
    assert_eq!(
        with,
        vec![false, true, true, true],
        "one 407, then Basic at once"
    );
    assert_eq!(proxy.connections(), 1);
}

#[test]
fn ntlm_over_a_shared_h2_connection_is_refused_with_a_clear_reason() {
    let pki = Pki::new();
    let proxy = proxy(&pki, |_, _| {
        H2Answer::Status(407, vec![("proxy-authenticate", "NTLM".into())])
    });
    let (mut d, port) = Daemon::forward(&pki, &proxy, 22, &["-U", "al:pw"]);
    let mut s = client(port);
    let _ = s.read_to_end(&mut Vec::new());
    let line = d.wait_for("failed #1");
    assert!(line.contains("NTLM") && line.contains("HTTP/2"), "{line}");
}

#[test]
fn a_dynamic_port_sends_connect_and_plain_http_clients_over_one_h2_connection() {
    let pki = Pki::new();
    let proxy = proxy(&pki, grant);
    let echo = echo_target();
    // An origin answering one GET per connection.
    let origin = TcpListener::bind("127.0.0.1:0").unwrap();
    let origin_port = origin.local_addr().unwrap().port();
    thread::spawn(move || {
        for conn in origin.incoming() {
            let Ok(mut conn) = conn else { return };
            let _ = read_head(&mut conn);
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello");
        }
    });
    let (_d, port) = Daemon::start(&pki, &proxy, &["-D", "0"], &[]);
    let mut tunnels = Vec::new();
    for i in 0..2u64 {
        let mut s = client(port);
        s.write_all(format!("CONNECT 127.0.0.1:{echo} HTTP/1.1\r\n\r\n").as_bytes())
            .unwrap();
        let head = text(&read_head(&mut s));
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        round_trip(&mut s, &Prng::bytes(UP_SEED + i, 100_000));
        tunnels.push(s);
    }
    let mut get = client(port);
    get.write_all(
        format!(
            "GET http://127.0.0.1:{origin_port}/x HTTP/1.1\r\nHost: 127.0.0.1:{origin_port}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    let mut answer = Vec::new();
    get.read_to_end(&mut answer).unwrap();
    assert!(
        text(&answer).ends_with("\r\n\r\nhello"),
        "{}",
        text(&answer)
    );
    for s in tunnels {
        finish(s);
    }
    assert_eq!(proxy.connections(), 1);
    assert_eq!(connections_of(&proxy), vec![0, 0, 0]);
}

#[test]
fn a_connect_left_unanswered_by_a_goaway_is_sent_again_on_a_new_connection() {
    let pki = Pki::new();
    let proxy = proxy(&pki, |seen, i| match i {
        1 => H2Answer::GoAwayInstead,
        _ => grant(seen, i),
    });
    let target = echo_target();
    let (mut d, port) = Daemon::forward(&pki, &proxy, target, &[]);
    let mut a = client(port);
    round_trip(&mut a, b"first");
    // The proxy ends the connection instead of answering the second CONNECT: gimlet sends
    // it again on a new connection, and the client never knows.
    let mut b = client(port);
    round_trip(&mut b, &Prng::bytes(UP_SEED, MIB));
    assert_eq!(connections_of(&proxy), vec![0, 0, 1]);
    assert_eq!(proxy.connections(), 2);
    assert!(
        d.wait_for("established #2")
            .contains("HTTP/2 connection #2, stream 1)"),
        "{:?}",
        d.seen
    );
    finish(b);
}
