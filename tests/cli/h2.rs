//! `--proxy-http2`: CONNECT over HTTP/2 to an https:// proxy (RFC 9113 §8.5), against an
//! in-process h2 proxy made with the same crate (`support_h2`).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::Stdio;
use std::thread;
use std::time::Duration;

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

#[test]
fn proxy_http2_in_listen_mode_is_a_usage_error_for_now() {
    let out = gimlet()
        .args([
            "--proxy-http2",
            "-L",
            "127.0.0.1:0:example.test:22",
            "https://localhost:1",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("--proxy-http2"));
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
