//! TLS: to an `https://` proxy (verification, pins, names, client
//! certificates, failures and timeouts, the relay through TLS) and, with
//! `--tls`, to the destination through the tunnel, including TLS in TLS.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{ChildStdout, Command, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::*;
use crate::support_tls::*;

const TARGET: &str = "example.test:22";
const UP_SEED: u64 = 0x5eed_0001_7150_0001;
const DOWN_SEED: u64 = 0x5eed_0002_7150_0002;
const MIB: usize = 1024 * 1024;

/// The request head gimlet sends for `target` with no options.
fn expected_head(target: &str) -> String {
    format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: gimlet/{VERSION}\r\n\r\n")
}

fn path(p: &Path) -> String {
    p.to_str().expect("scratch paths are UTF-8").to_owned()
}

/// gimlet (see [`gimlet`]) with `options`, then `proxy`, then the target
/// `example.test 22`. The OpenSSL-style variables that could change the
/// system's roots are cleared.
fn gimlet_tls(options: &[&str], proxy: &str) -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::from_std(gimlet_tls_std(options, proxy));
    cmd.timeout(HANG);
    cmd
}

/// Like [`gimlet_tls`], as a `std::process::Command` for [`spawn`].
fn gimlet_tls_std(options: &[&str], proxy: &str) -> Command {
    let mut cmd = gimlet_std();
    cmd.env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR")
        .args(options)
        .args([proxy, "example.test", "22"]);
    cmd
}

/// gimlet trusting the test CA, through `proxy`, with piped stdin and stdout.
fn spawn_trusting(pki: &Pki, proxy: &TlsProxy) -> Running {
    let ca = path(&pki.ca.file());
    spawn(
        gimlet_tls_std(&["--proxy-cacert", &ca], &proxy.url())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped()),
    )
}

/// Runs gimlet to completion and returns its output.
fn run(cmd: &mut assert_cmd::Command) -> Output {
    cmd.output().expect("cannot run gimlet")
}

/// The proxy as gimlet names it in messages when reached as `localhost`.
fn localhost(proxy: &TlsProxy) -> String {
    format!("localhost:{}", proxy.port())
}

#[track_caller]
fn assert_printable(stderr: &str) {
    assert!(
        stderr.chars().all(|c| c == '\n' || !c.is_control()),
        "stderr must hold no raw control bytes, got {stderr:?}"
    );
}

/// Checks a failed TLS handshake with the proxy: status 8, nothing on
/// stdout, one line `gimlet: TLS handshake with proxy HOST:PORT: <why>` with
/// `why` in it.
#[track_caller]
fn assert_proxy_tls_failure(output: &Output, proxy: &str, why: &str) -> String {
    let stderr = assert_failure(output, 8, Some(proxy));
    let prefix = format!("gimlet: TLS handshake with proxy {proxy}: ");
    assert!(
        stderr.starts_with(&prefix),
        "stderr must start with {prefix:?}, got {stderr:?}"
    );
    assert!(
        stderr.contains(why),
        "stderr must say {why:?}, got {stderr:?}"
    );
    assert_printable(&stderr);
    stderr
}

/// Checks that the proxy's single connection ended in the handshake (gimlet
/// gave up on it) and that no request was sent.
#[track_caller]
fn assert_handshake_abandoned(record: &TlsRecord) {
    let conn = record.only_connection();
    assert!(
        conn.handshake.is_err(),
        "the proxy's handshake should not have completed"
    );
    record.assert_requests(0);
}

/// Checks a usage error: status 2, nothing on stdout, one printable line
/// `gimlet: …` on stderr. Returns stderr.
#[track_caller]
fn assert_usage_line(output: &Output) -> String {
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr:?}");
    assert!(
        output.stdout.is_empty(),
        "stdout: {:?}",
        text(&output.stdout)
    );
    assert!(
        stderr.starts_with("gimlet: ")
            && stderr.ends_with('\n')
            && stderr.matches('\n').count() == 1,
        "expected one line `gimlet: …`, got {stderr:?}"
    );
    assert_printable(&stderr);
    stderr
}

/// A proxy script that must never run: the handshake is expected to fail.
fn no_session(_: &mut TlsSession) {
    panic!("the TLS handshake should have failed before any request");
}

/// A proxy script: 200, then `reply` once gimlet's close_notify has come
/// after `expected` bytes of stdin, then close_notify and FIN.
fn answer_after_close(expected: &'static [u8], reply: &'static str) -> impl Fn(&mut TlsSession) {
    move |s| {
        s.send(OK);
        let (upstream, close) = s.reader.read_to_close();
        assert_eq!(upstream, expected, "stdin did not arrive intact");
        assert_eq!(
            close,
            Close::Notify,
            "gimlet must end its side with close_notify"
        );
        s.send(reply);
        s.shutdown();
    }
}

/// Runs gimlet expecting a working tunnel: `stdin` in, `stdout` out, exit 0,
/// nothing on stderr.
#[track_caller]
fn assert_tunnel(cmd: &mut assert_cmd::Command, stdin: &'static str, stdout: &'static str) {
    cmd.write_stdin(stdin)
        .assert()
        .success()
        .stdout(stdout)
        .stderr("");
}

/// Reads a child's stdout on a thread and passes on what comes, chunk by
/// chunk; the channel closes at EOF.
fn stdout_chunks(mut stdout: ChildStdout) -> Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    rx
}

/// Collects output until at least as many bytes as `want` has came (or EOF,
/// or the hang guard); returns it.
fn await_output(rx: &Receiver<Vec<u8>>, want: &str) -> String {
    let mut seen = Vec::new();
    while seen.len() < want.len() {
        match rx.recv_timeout(HANG) {
            Ok(bytes) => seen.extend_from_slice(&bytes),
            Err(_) => break,
        }
    }
    text(&seen)
}

/// Collects output until EOF (or the hang guard).
fn rest_of_output(rx: &Receiver<Vec<u8>>) -> String {
    let mut seen = Vec::new();
    while let Ok(bytes) = rx.recv_timeout(HANG) {
        seen.extend_from_slice(&bytes);
    }
    text(&seen)
}

/// An application-data record that cannot decrypt.
fn bogus_record() -> Vec<u8> {
    let mut bogus = vec![0x17, 0x03, 0x03, 0x00, 0x20];
    bogus.extend_from_slice(&Prng::bytes(5, 0x20));
    bogus
}

// ---------------------------------------------------------------------------
// https:// proxy: the tunnel through TLS
// ---------------------------------------------------------------------------

#[test]
fn https_proxy_gets_the_exact_request_inside_tls_and_relays_both_ways() {
    let pki = Pki::new();
    let proxy = TlsProxy::start(
        pki.server.server_config(),
        answer_after_close(b"hello through TLS", "welcome back"),
    );
    let ca = path(&pki.ca.file());
    assert_tunnel(
        &mut gimlet_tls(&["-4", "--proxy-cacert", &ca], &proxy.url_as("localhost")),
        "hello through TLS",
        "welcome back",
    );
    let record = proxy.finish();
    assert_eq!(record.only_request(), expected_head(TARGET));
    assert_eq!(
        record.only_connection().sni.as_deref(),
        Some("localhost"),
        "SNI must be the proxy's host name"
    );
}

#[test]
fn https_proxy_url_without_port_means_port_443() {
    // Nothing listens on 443 here as far as the test knows: just check
    // gimlet aims at 443 by the name it gives the proxy in its message.
    let output = run(&mut gimlet_tls(
        &["--connect-timeout", "1"],
        "https://127.0.0.1",
    ));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("127.0.0.1:443"),
        "the default port of https:// must be 443, got {stderr:?}"
    );
    assert!(output.stdout.is_empty());
}

#[test]
fn sixty_four_mebibytes_each_way_at_once_arrive_intact_through_tls() {
    const BIG: usize = 64 * MIB;
    let pki = Pki::new();
    let proxy = TlsProxy::start(pki.server.server_config(), |s| {
        s.send(OK);
        let TlsStream { reader, writer, .. } = &mut s.tls;
        thread::scope(|scope| {
            let down = scope.spawn(move || {
                write_stream(writer, DOWN_SEED, BIG).expect("proxy → gimlet write failed");
            });
            // Reading to close_notify also checks gimlet passed on stdin EOF.
            verify_stream(reader, UP_SEED, BIG, "stdin → proxy");
            down.join().expect("downstream writer panicked");
        });
        s.shutdown();
    });
    let mut running = spawn_trusting(&pki, &proxy);
    let mut stdin = running.stdin.take().unwrap();
    let feeder = thread::spawn(move || {
        write_stream(&mut stdin, UP_SEED, BIG).expect("writing gimlet's stdin failed");
    });
    let mut stdout = running.stdout.take().unwrap();
    verify_stream(&mut stdout, DOWN_SEED, BIG, "proxy → stdout");
    feeder.join().expect("feeder panicked");
    let finished = running.wait(Duration::from_secs(240));
    finished.assert_code(0);
    assert_eq!(finished.stderr, "");
    proxy.finish();
}

#[test]
fn data_in_the_same_tls_record_as_the_reply_comes_out_first() {
    let pki = Pki::new();
    let proxy = TlsProxy::start(pki.server.server_config(), |s| {
        // One TLS write, one record: reply head and the first tunnel bytes.
        s.send("HTTP/1.1 200 Connection established\r\n\r\nSSH-2.0-Fake_1.0\r\n");
        let (upstream, close) = s.reader.read_to_close();
        assert_eq!(upstream, b"SSH-2.0-Client\r\n");
        assert_eq!(close, Close::Notify);
        s.send("rest of the session");
        s.shutdown();
    });
    let ca = path(&pki.ca.file());
    assert_tunnel(
        &mut gimlet_tls(&["--proxy-cacert", &ca], &proxy.url()),
        "SSH-2.0-Client\r\n",
        "SSH-2.0-Fake_1.0\r\nrest of the session",
    );
    proxy.finish();
}

#[test]
fn records_after_the_reply_in_the_same_write_come_out_first_and_in_order() {
    let pki = Pki::new();
    let proxy = TlsProxy::start(pki.server.server_config(), |s| {
        // Three records in a single TCP write.
        s.send_records(&[OK.as_bytes(), b"first record\r\n", b"second record\r\n"]);
        let (upstream, close) = s.reader.read_to_close();
        assert_eq!(upstream, b"");
        assert_eq!(close, Close::Notify);
        s.send("third");
        s.shutdown();
    });
    let ca = path(&pki.ca.file());
    assert_tunnel(
        &mut gimlet_tls(&["--proxy-cacert", &ca], &proxy.url()),
        "",
        "first record\r\nsecond record\r\nthird",
    );
    proxy.finish();
}

#[test]
fn large_burst_right_after_the_reply_is_delivered_in_order_through_tls() {
    // 256 KiB written with the reply head: many records, most of them read
    // by gimlet together with the head.
    const LEN: usize = 256 * 1024;
    let pki = Pki::new();
    let proxy = TlsProxy::start(pki.server.server_config(), |s| {
        let mut burst = OK.as_bytes().to_vec();
        burst.extend_from_slice(&Prng::bytes(42, LEN));
        s.send(&burst);
        s.shutdown();
        s.reader.read_to_close();
    });
    let ca = path(&pki.ca.file());
    let output = run(gimlet_tls(&["--proxy-cacert", &ca], &proxy.url()).write_stdin(""));
    assert_eq!(
        output.status.code(),
        Some(0),
        "stderr: {}",
        text(&output.stderr)
    );
    assert_eq!(output.stdout.len(), LEN, "wrong number of bytes delivered");
    assert!(
        output.stdout == Prng::bytes(42, LEN),
        "burst corrupted or reordered"
    );
    assert_eq!(text(&output.stderr), "");
    proxy.finish();
}

#[test]
fn stdin_eof_sends_close_notify_then_fin_and_the_reply_still_arrives() {
    let pki = Pki::new();
    let proxy = TlsProxy::start(pki.server.server_config(), |s| {
        s.send(OK);
        let (upstream, close) = s.reader.read_to_close();
        assert_eq!(upstream, b"request then EOF");
        assert_eq!(close, Close::Notify, "stdin EOF must send close_notify");
        assert!(
            s.reader.transport_ends(),
            "close_notify must be followed by a TCP FIN and nothing else"
        );
        // The proxy can still answer after gimlet's half-close.
        s.send("answer after EOF");
        s.shutdown();
    });
    let ca = path(&pki.ca.file());
    assert_tunnel(
        &mut gimlet_tls(&["--proxy-cacert", &ca], &proxy.url()),
        "request then EOF",
        "answer after EOF",
    );
    proxy.finish();
}

#[test]
fn proxy_close_notify_ends_gimlet_while_stdin_is_still_open() {
    let pki = Pki::new();
    let proxy = TlsProxy::start(pki.server.server_config(), |s| {
        s.send(OK);
        s.send("goodbye");
        // close_notify alone: the TCP connection stays open.
        s.writer.close_notify();
        let (upstream, _) = s.reader.read_to_close();
        assert_eq!(upstream, b"");
    });
    let mut running = spawn_trusting(&pki, &proxy);
    let mut stdout = running.stdout.take().unwrap();
    // Keep running.stdin: gimlet must exit on close_notify alone.
    let finished = running.wait_keeping_stdin(HANG);
    finished.assert_code(0);
    assert_eq!(finished.stderr, "");
    let mut out = String::new();
    stdout.read_to_string(&mut out).unwrap();
    assert_eq!(out, "goodbye");
    proxy.finish();
}

#[test]
fn proxy_closing_after_stdin_data_still_delivers_everything_through_tls() {
    let pki = Pki::new();
    let proxy = TlsProxy::start(pki.server.server_config(), |s| {
        s.send(OK);
        let mut got = [0u8; 5];
        s.reader.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
        s.send(Prng::bytes(9, 300_000));
        s.shutdown();
        s.reader.read_to_close();
    });
    let mut running = spawn_trusting(&pki, &proxy);
    running.stdin.as_mut().unwrap().write_all(b"hello").unwrap();
    let mut stdout = running.stdout.take().unwrap();
    let reader = thread::spawn(move || {
        let mut out = Vec::new();
        stdout.read_to_end(&mut out).unwrap();
        out
    });
    let finished = running.wait_keeping_stdin(HANG);
    finished.assert_code(0);
    assert_eq!(finished.stderr, "");
    let out = reader.join().unwrap();
    assert!(out == Prng::bytes(9, 300_000), "downstream data lost");
    proxy.finish();
}

#[test]
fn proxy_fin_without_close_notify_still_ends_gimlet_cleanly() {
    let pki = Pki::new();
    let proxy = TlsProxy::start(pki.server.server_config(), |s| {
        s.send(OK);
        s.send("cut short");
        s.writer.close_transport_only();
        s.reader.read_to_close();
    });
    let mut running = spawn_trusting(&pki, &proxy);
    let mut stdout = running.stdout.take().unwrap();
    let finished = running.wait_keeping_stdin(HANG);
    finished.assert_code(0);
    assert_eq!(finished.stderr, "");
    let mut out = String::new();
    stdout.read_to_string(&mut out).unwrap();
    assert_eq!(out, "cut short");
    proxy.finish();
}

#[test]
fn tls12_only_proxy_works_too() {
    let pki = Pki::new();
    let proxy = TlsProxy::start(pki.server.server_config_tls12(), |s| {
        s.send(OK);
        s.echo();
    });
    let ca = path(&pki.ca.file());
    let data = Prng::bytes(12, MIB);
    let output = run(gimlet_tls(&["--proxy-cacert", &ca], &proxy.url()).write_stdin(data.clone()));
    assert_eq!(
        output.status.code(),
        Some(0),
        "stderr: {}",
        text(&output.stderr)
    );
    assert!(output.stdout == data, "echo through TLS 1.2 corrupted");
    assert_eq!(text(&output.stderr), "");
    let record = proxy.finish();
    assert_eq!(
        record.only_connection().protocol,
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    assert_eq!(record.only_request(), expected_head(TARGET));
}

// ---------------------------------------------------------------------------
// https:// proxy: verification
// ---------------------------------------------------------------------------

#[test]
fn expired_proxy_certificate_fails_with_status_8() {
    let pki = Pki::new();
    let proxy = TlsProxy::start(pki.expired.server_config(), no_session);
    let ca = path(&pki.ca.file());
    let output = run(&mut gimlet_tls(
        &["-4", "--proxy-cacert", &ca],
        &proxy.url_as("localhost"),
    ));
    assert_proxy_tls_failure(&output, &localhost(&proxy), "the certificate has expired");
    assert_handshake_abandoned(&proxy.finish());
}

#[test]
fn proxy_certificate_for_another_name_fails_with_status_8() {
    let pki = Pki::new();
    let proxy = TlsProxy::start(pki.other.server_config(), no_session);
    let ca = path(&pki.ca.file());
    let output = run(&mut gimlet_tls(
        &["-4", "--proxy-cacert", &ca],
        &proxy.url_as("localhost"),
    ));
    let stderr = assert_proxy_tls_failure(&output, &localhost(&proxy), "is not valid for the name");
    assert!(stderr.contains("localhost"), "{stderr:?}");
    assert_handshake_abandoned(&proxy.finish());
}

#[test]
fn proxy_certificate_from_an_unknown_authority_fails_with_status_8() {
    // No --proxy-cacert: the system's roots do not know the test CA.
    let pki = Pki::new();
    let proxy = TlsProxy::start(pki.server.server_config(), no_session);
    let output = run(&mut gimlet_tls(&["-4"], &proxy.url_as("localhost")));
    assert_proxy_tls_failure(
        &output,
        &localhost(&proxy),
        "signed by an unknown authority",
    );
    assert_handshake_abandoned(&proxy.finish());
}

#[test]
fn proxy_cacert_replaces_the_system_roots_rather_than_adding_to_them() {
    // A bundle with another CA only: the proxy's own CA is not trusted.
    let pki = Pki::new();
    let stranger = Authority::new("some other CA");
    let proxy = TlsProxy::start(pki.server.server_config(), no_session);
    let bundle = path(&stranger.file());
    let output = run(&mut gimlet_tls(&["--proxy-cacert", &bundle], &proxy.url()));
    assert_proxy_tls_failure(&output, &proxy.addr(), "signed by an unknown authority");
    assert_handshake_abandoned(&proxy.finish());
}

#[test]
fn proxy_servername_makes_a_certificate_for_that_name_pass() {
    let pki = Pki::new();
    let proxy = TlsProxy::start(
        pki.other.server_config(),
        answer_after_close(b"ping", "pong"),
    );
    let ca = path(&pki.ca.file());
    assert_tunnel(
        &mut gimlet_tls(
            &[
                "-4",
                "--proxy-cacert",
                &ca,
                "--proxy-servername",
                "other.example",
            ],
            &proxy.url_as("localhost"),
        ),
        "ping",
        "pong",
    );
    let record = proxy.finish();
    assert_eq!(
        record.only_connection().sni.as_deref(),
        Some("other.example"),
        "--proxy-servername must be sent as SNI"
    );
    // The CONNECT target is unaffected.
    assert_eq!(record.only_request(), expected_head(TARGET));
}

#[test]
fn ip_literal_proxy_verifies_against_the_ip_san_and_sends_no_sni() {
    let pki = Pki::new();
    let proxy = TlsProxy::start(
        pki.server.server_config(),
        answer_after_close(b"ping", "pong"),
    );
    let ca = path(&pki.ca.file());
    assert_tunnel(
        &mut gimlet_tls(&["--proxy-cacert", &ca], &proxy.url()),
        "ping",
        "pong",
    );
    let record = proxy.finish();
    assert_eq!(
        record.only_connection().sni,
        None,
        "no SNI for an IP literal"
    );
    assert_eq!(record.only_request(), expected_head(TARGET));
}

#[test]
fn ipv6_literal_proxy_verifies_against_the_ipv6_san() {
    let pki = Pki::new();
    let Some(proxy) = TlsProxy::start_v6(
        pki.server.server_config(),
        answer_after_close(b"ping", "pong"),
    ) else {
        return;
    };
    let ca = path(&pki.ca.file());
    assert_tunnel(
        &mut gimlet_tls(&["--proxy-cacert", &ca], &proxy.url()),
        "ping",
        "pong",
    );
    let record = proxy.finish();
    assert_eq!(record.only_connection().sni, None);
    assert_eq!(record.only_request(), expected_head(TARGET));
}

#[test]
fn ip_literal_proxy_with_a_certificate_lacking_that_ip_fails_with_status_8() {
    let pki = Pki::new();
    let proxy = TlsProxy::start(pki.other.server_config(), no_session);
    let ca = path(&pki.ca.file());
    let output = run(&mut gimlet_tls(&["--proxy-cacert", &ca], &proxy.url()));
    let stderr = assert_proxy_tls_failure(&output, &proxy.addr(), "is not valid for the name");
    assert!(stderr.contains("127.0.0.1"), "{stderr:?}");
    assert_handshake_abandoned(&proxy.finish());
}

#[test]
fn matching_pin_among_several_passes() {
    let pki = Pki::new();
    let proxy = TlsProxy::start(
        pki.server.server_config(),
        answer_after_close(b"ping", "pong"),
    );
    let ca = path(&pki.ca.file());
    let pins = format!("{};{}", pki.other.pin(), pki.server.pin());
    assert_tunnel(
        &mut gimlet_tls(
            &["--proxy-cacert", &ca, "--proxy-pinnedpubkey", &pins],
            &proxy.url(),
        ),
        "ping",
        "pong",
    );
    assert_eq!(proxy.finish().only_request(), expected_head(TARGET));
}

#[test]
fn mismatching_pin_fails_with_status_8_even_with_a_valid_chain() {
    let pki = Pki::new();
    let proxy = TlsProxy::start(pki.server.server_config(), no_session);
    let ca = path(&pki.ca.file());
    let pin = pki.other.pin();
    let output = run(&mut gimlet_tls(
        &["--proxy-cacert", &ca, "--proxy-pinnedpubkey", &pin],
        &proxy.url(),
    ));
    assert_proxy_tls_failure(&output, &proxy.addr(), "matches no pinned key");
    assert_handshake_abandoned(&proxy.finish());
}

#[test]
fn matching_pin_does_not_excuse_an_unknown_authority() {
    let pki = Pki::new();
    let proxy = TlsProxy::start(pki.self_signed.server_config(), no_session);
    let ca = path(&pki.ca.file());
    let pin = pki.self_signed.pin();
    let output = run(&mut gimlet_tls(
        &["--proxy-cacert", &ca, "--proxy-pinnedpubkey", &pin],
        &proxy.url(),
    ));
    assert_proxy_tls_failure(&output, &proxy.addr(), "signed by an unknown authority");
    assert_handshake_abandoned(&proxy.finish());
}

#[test]
fn proxy_insecure_accepts_a_self_signed_certificate_with_one_warning_line() {
    let pki = Pki::new();
    let proxy = TlsProxy::start(
        pki.self_signed.server_config(),
        answer_after_close(b"ping", "pong"),
    );
    let output = run(gimlet_tls(&["--proxy-insecure"], &proxy.url()).write_stdin("ping"));
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "stderr: {stderr:?}");
    assert_eq!(output.stdout, b"pong");
    assert!(
        stderr.starts_with("gimlet: warning: --proxy-insecure: ")
            && stderr.ends_with('\n')
            && stderr.matches('\n').count() == 1,
        "expected exactly one warning line, got {stderr:?}"
    );
    assert_eq!(proxy.finish().only_request(), expected_head(TARGET));
}

#[test]
fn proxy_insecure_still_enforces_the_pin() {
    let pki = Pki::new();
    let proxy = TlsProxy::start(pki.self_signed.server_config(), no_session);
    let pin = pki.server.pin();
    let output = run(&mut gimlet_tls(
        &["--proxy-insecure", "--proxy-pinnedpubkey", &pin],
        &proxy.url(),
    ));
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(8), "stderr: {stderr:?}");
    assert!(output.stdout.is_empty());
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "a warning and an error line: {stderr:?}");
    assert!(lines[0].starts_with("gimlet: warning: --proxy-insecure: "));
    assert!(
        lines[1].starts_with(&format!(
            "gimlet: TLS handshake with proxy {}: ",
            proxy.addr()
        )) && lines[1].contains("matches no pinned key"),
        "{stderr:?}"
    );
    assert_handshake_abandoned(&proxy.finish());
}

// ---------------------------------------------------------------------------
// https:// proxy: client certificates
// ---------------------------------------------------------------------------

#[test]
fn client_certificate_required_by_the_proxy_is_presented() {
    let pki = Pki::new();
    let config = pki
        .server
        .server_config_requiring(&pki.client_ca, rustls::DEFAULT_VERSIONS);
    let proxy = TlsProxy::start(config, answer_after_close(b"ping", "pong"));
    let (ca, cert, key) = (
        path(&pki.ca.file()),
        path(&pki.client.cert_file()),
        path(&pki.client.key_file()),
    );
    assert_tunnel(
        &mut gimlet_tls(
            &[
                "--proxy-cacert",
                &ca,
                "--proxy-cert",
                &cert,
                "--proxy-key",
                &key,
            ],
            &proxy.url(),
        ),
        "ping",
        "pong",
    );
    let record = proxy.finish();
    assert!(record.only_connection().client_certificate);
    assert_eq!(record.only_request(), expected_head(TARGET));
}

#[test]
fn client_certificate_and_key_may_share_one_file() {
    let pki = Pki::new();
    let config = pki
        .server
        .server_config_requiring(&pki.client_ca, rustls::DEFAULT_VERSIONS);
    let proxy = TlsProxy::start(config, answer_after_close(b"ping", "pong"));
    let (ca, bundle) = (path(&pki.ca.file()), path(&pki.client.bundle_file()));
    assert_tunnel(
        &mut gimlet_tls(
            &["--proxy-cacert", &ca, "--proxy-cert", &bundle],
            &proxy.url(),
        ),
        "ping",
        "pong",
    );
    assert!(proxy.finish().only_connection().client_certificate);
}

/// Checks the one line gimlet prints when the proxy wants a client
/// certificate it did not get.
#[track_caller]
fn assert_client_certificate_refusal(output: &Output, proxy: &TlsProxy) {
    let stderr = text(&output.stderr);
    let code = output.status.code();
    // TLS 1.3 delivers the server's verdict only after the handshake, while the reply is read:
    // it is still a TLS failure.
    assert_eq!(code, Some(8), "stderr: {stderr:?}");
    assert!(
        output.stdout.is_empty(),
        "stdout: {:?}",
        text(&output.stdout)
    );
    assert_error_line(&stderr, Some(&proxy.addr()));
    assert_printable(&stderr);
    assert!(
        contains_ignore_case(&stderr, "certificate"),
        "the message should say a certificate is involved: {stderr:?}"
    );
    let record = proxy.finish();
    assert!(record.only_connection().handshake.is_err());
    assert!(!record.only_connection().client_certificate);
    record.assert_requests(0);
}

#[test]
fn missing_client_certificate_fails_with_one_clear_line_under_tls13() {
    let pki = Pki::new();
    let config = pki
        .server
        .server_config_requiring(&pki.client_ca, &[&rustls::version::TLS13]);
    let proxy = TlsProxy::start(config, no_session);
    let ca = path(&pki.ca.file());
    let output = run(&mut gimlet_tls(&["--proxy-cacert", &ca], &proxy.url()));
    assert_client_certificate_refusal(&output, &proxy);
}

#[test]
fn missing_client_certificate_fails_with_one_clear_line_under_tls12() {
    let pki = Pki::new();
    let config = pki
        .server
        .server_config_requiring(&pki.client_ca, &[&rustls::version::TLS12]);
    let proxy = TlsProxy::start(config, no_session);
    let ca = path(&pki.ca.file());
    let output = run(&mut gimlet_tls(&["--proxy-cacert", &ca], &proxy.url()));
    assert_client_certificate_refusal(&output, &proxy);
}

// ---------------------------------------------------------------------------
// https:// proxy: usage errors, silence, wrong protocol
// ---------------------------------------------------------------------------

#[test]
fn proxy_tls_options_with_a_plain_http_proxy_are_a_usage_error() {
    let pki = Pki::new();
    let proxy = TlsProxy::start(pki.server.server_config(), no_session);
    let (ca, cert, key, pin) = (
        path(&pki.ca.file()),
        path(&pki.client.cert_file()),
        path(&pki.client.key_file()),
        pki.server.pin(),
    );
    let option_sets: [&[&str]; 6] = [
        &["--proxy-cacert", &ca],
        &["--proxy-insecure"],
        &["--proxy-pinnedpubkey", &pin],
        &["--proxy-servername", "other.example"],
        &["--proxy-cert", &cert],
        &["--proxy-cert", &cert, "--proxy-key", &key],
    ];
    let plain_forms = [format!("http://{}", proxy.addr()), proxy.addr()];
    for options in option_sets {
        for form in &plain_forms {
            let output = run(&mut gimlet_tls(options, form));
            let stderr = assert_usage_line(&output);
            assert!(
                stderr.contains("https://"),
                "{options:?} with {form}: the message should say an https:// proxy is needed, got {stderr:?}"
            );
        }
    }
    assert_eq!(
        proxy.connections(),
        0,
        "nothing may be sent on a usage error"
    );
}

#[test]
fn proxy_key_without_proxy_cert_is_a_usage_error() {
    let pki = Pki::new();
    let proxy = TlsProxy::start(pki.server.server_config(), no_session);
    let key = path(&pki.client.key_file());
    let output = run(&mut gimlet_tls(&["--proxy-key", &key], &proxy.url()));
    assert_failure(&output, 2, None);
    assert_eq!(proxy.connections(), 0);
}

#[test]
fn destination_tls_options_without_tls_are_a_usage_error() {
    let pki = Pki::new();
    let proxy = TlsProxy::start(pki.server.server_config(), no_session);
    let (ca, pin) = (path(&pki.ca.file()), pki.server.pin());
    let option_sets: [&[&str]; 4] = [
        &["--cacert", &ca],
        &["--insecure"],
        &["--servername", "other.example"],
        &["--pinnedpubkey", &pin],
    ];
    for options in option_sets {
        let output = run(&mut gimlet_tls(options, &proxy.url()));
        assert_failure(&output, 2, None);
    }
    assert_eq!(
        proxy.connections(),
        0,
        "nothing may be sent on a usage error"
    );
}

#[test]
fn silent_tls_proxy_times_out_with_status_3() {
    let proxy = TlsProxy::silent();
    let pki = Pki::new();
    let ca = path(&pki.ca.file());
    let started = Instant::now();
    let output = run(&mut gimlet_tls(
        &["--connect-timeout", "1", "--proxy-cacert", &ca],
        &proxy.url(),
    ));
    assert!(started.elapsed() < HANG);
    let stderr = assert_failure(&output, 3, Some(&proxy.addr()));
    assert!(stderr.contains("timed out"), "{stderr:?}");
    let record = proxy.finish();
    assert_eq!(
        record.only_connection().first_bytes.first(),
        Some(&0x16),
        "gimlet must have sent a TLS handshake record (ClientHello)"
    );
}

#[test]
fn https_url_to_a_plain_http_proxy_fails_with_status_8_and_sends_no_request() {
    let proxy = TlsProxy::plain(
        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    let pki = Pki::new();
    let ca = path(&pki.ca.file());
    let output = run(&mut gimlet_tls(
        &["-U", "alice:s3cret", "--proxy-cacert", &ca],
        &proxy.url(),
    ));
    let stderr = assert_proxy_tls_failure(&output, &proxy.addr(), "");
    assert!(!stderr.contains("s3cret"), "{stderr:?}");
    let record = proxy.finish();
    let first = &record.only_connection().first_bytes;
    assert_eq!(first.first(), Some(&0x16), "a ClientHello must come first");
    let first = text(first);
    assert!(
        !first.contains("CONNECT") && !first.contains("s3cret"),
        "nothing of the request may be sent before TLS is up"
    );
}

#[test]
fn http_url_to_a_tls_proxy_fails_without_raw_bytes_on_stdout_or_stderr() {
    let pki = Pki::new();
    let proxy = TlsProxy::start(pki.server.server_config(), no_session);
    let output = run(&mut gimlet_tls(
        &["--connect-timeout", "5"],
        &format!("http://{}", proxy.addr()),
    ));
    let stderr = assert_failure(&output, 6, Some(&proxy.addr()));
    assert_printable(&stderr);
    let record = proxy.finish();
    assert!(record.only_connection().handshake.is_err());
}

#[test]
fn credentials_do_not_leak_when_the_proxy_certificate_is_refused() {
    let pki = Pki::new();
    let proxy = TlsProxy::start(pki.expired.server_config(), no_session);
    let ca = path(&pki.ca.file());
    let output = run(&mut gimlet_tls(
        &["-U", "alice:s3cret", "--proxy-cacert", &ca],
        &proxy.url(),
    ));
    let stderr = assert_proxy_tls_failure(&output, &proxy.addr(), "expired");
    assert!(!stderr.contains("s3cret"), "{stderr:?}");
    assert_handshake_abandoned(&proxy.finish());
}

// ---------------------------------------------------------------------------
// https:// proxy: authentication inside TLS
// ---------------------------------------------------------------------------

fn header(head: &[u8], name: &str) -> Option<String> {
    text(head)
        .split("\r\n")
        .filter_map(|line| line.split_once(':'))
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_owned())
}

fn basic(pair: &str) -> String {
    format!("Basic {}", base64(pair.as_bytes()))
}

#[test]
fn basic_407_over_tls_sends_credentials_only_after_the_challenge() {
    let pki = Pki::new();
    let proxy = TlsProxy::start(pki.server.server_config(), |s| {
        assert_eq!(
            header(s.request(), "Proxy-Authorization"),
            None,
            "no credentials before the challenge"
        );
        // A body to skip, inside TLS, before the retry.
        s.send(
            "HTTP/1.1 407 Proxy Authentication Required\r\n\
             Proxy-Authenticate: Basic realm=\"tls\"\r\n\
             Content-Length: 21\r\n\r\n\
             credentials, please\r\n",
        );
        let second = s
            .read_request()
            .expect("the retry must come on the same TLS session");
        assert_eq!(
            header(&second, "Proxy-Authorization"),
            Some(basic("alice:s3cret"))
        );
        s.send(format!("{OK}authorized"));
        s.shutdown();
        s.reader.read_to_close();
    });
    let ca = path(&pki.ca.file());
    let output = run(
        gimlet_tls(&["-U", "alice:s3cret", "--proxy-cacert", &ca], &proxy.url()).write_stdin(""),
    );
    assert_eq!(
        output.status.code(),
        Some(0),
        "stderr: {}",
        text(&output.stderr)
    );
    assert_eq!(text(&output.stdout), "authorized");
    assert_eq!(text(&output.stderr), "");
    let record = proxy.finish();
    assert_eq!(record.connections.len(), 1);
    record.assert_requests(2);
}

#[test]
fn basic_407_with_connection_close_over_tls_retries_on_a_new_tls_connection() {
    let pki = Pki::new();
    let proxy = TlsProxy::start(pki.server.server_config(), |s| {
        match header(s.request(), "Proxy-Authorization") {
            None => {
                s.send(
                    "HTTP/1.1 407 Proxy Authentication Required\r\n\
                     Proxy-Authenticate: Basic realm=\"tls\"\r\n\
                     Connection: close\r\nContent-Length: 0\r\n\r\n",
                );
                s.shutdown();
                s.reader.read_to_close();
            }
            Some(value) => {
                assert_eq!(value, basic("alice:s3cret"));
                s.send(format!("{OK}authorized"));
                s.shutdown();
                s.reader.read_to_close();
            }
        }
    });
    let ca = path(&pki.ca.file());
    let output = run(gimlet_tls(
        &["-4", "-U", "alice:s3cret", "--proxy-cacert", &ca],
        &proxy.url_as("localhost"),
    )
    .write_stdin(""));
    assert_eq!(
        output.status.code(),
        Some(0),
        "stderr: {}",
        text(&output.stderr)
    );
    assert_eq!(text(&output.stdout), "authorized");
    assert_eq!(text(&output.stderr), "");
    let record = proxy.finish();
    assert_eq!(record.connections.len(), 2, "{record:?}");
    for conn in &record.connections {
        assert_eq!(conn.handshake, Ok(()));
        assert_eq!(conn.sni.as_deref(), Some("localhost"));
    }
    record.assert_requests(2);
}

// ---------------------------------------------------------------------------
// --tls: TLS to the destination through the tunnel
// ---------------------------------------------------------------------------

const DEST: &str = "dest.example";

fn gimlet_to_dest_std(options: &[&str], proxy: &str) -> Command {
    let mut cmd = gimlet_std();
    cmd.env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR")
        .arg("--tls")
        .args(options)
        .args([proxy, DEST, "443"]);
    cmd
}

fn gimlet_to_dest(options: &[&str], proxy: &str) -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::from_std(gimlet_to_dest_std(options, proxy));
    cmd.timeout(HANG);
    cmd
}

/// Feeds `len` bytes of the up stream to gimlet and checks the same bytes
/// come back on stdout (the destination echoes), while both flow at once.
fn round_trip_echo(cmd: &mut Command, len: usize) -> Finished {
    let mut running = spawn(cmd.stdin(Stdio::piped()).stdout(Stdio::piped()));
    let mut stdin = running.stdin.take().unwrap();
    let feeder = thread::spawn(move || {
        write_stream(&mut stdin, UP_SEED, len).expect("writing gimlet's stdin failed");
    });
    let mut stdout = running.stdout.take().unwrap();
    verify_stream(&mut stdout, UP_SEED, len, "destination echo → stdout");
    feeder.join().expect("feeder panicked");
    running.wait(Duration::from_secs(120))
}

#[test]
fn tls_to_the_destination_through_a_plain_proxy_echoes_a_mebibyte() {
    let pki = Pki::new();
    let dest = pki.ca.issue(&[DEST]).server_config();
    let proxy = FakeProxy::start(move |s| {
        s.send(OK);
        let mut tls = TlsStream::over_tcp(dest.clone(), &s.stream)
            .expect("destination handshake through the tunnel");
        assert_eq!(
            tls.sni.as_deref(),
            Some(DEST),
            "SNI must be the destination host"
        );
        assert_eq!(
            tls.echo(),
            MIB as u64,
            "the destination got the wrong amount"
        );
    });
    let ca = path(&pki.ca.file());
    let finished = round_trip_echo(
        &mut gimlet_to_dest_std(&["--cacert", &ca], &proxy.addr()),
        MIB,
    );
    finished.assert_code(0);
    assert_eq!(finished.stderr, "");
    assert_eq!(
        proxy.finish().only_request(),
        expected_head(&format!("{DEST}:443")),
        "the CONNECT itself goes in the clear to a plain proxy"
    );
}

#[test]
fn tls_in_tls_carries_sixteen_mebibytes_each_way_at_once() {
    const LEN: usize = 16 * MIB;
    let pki = Pki::new();
    let dest = pki.ca.issue(&[DEST]).server_config();
    let proxy = TlsProxy::start(pki.server.server_config(), move |s| {
        s.send(OK);
        let mut inner = TlsStream::inside(dest.clone(), &mut s.tls)
            .expect("destination handshake inside the proxy's TLS");
        assert_eq!(inner.sni.as_deref(), Some(DEST));
        let TlsStream { reader, writer, .. } = &mut inner;
        thread::scope(|scope| {
            let down = scope.spawn(move || {
                write_stream(writer, DOWN_SEED, LEN).expect("destination → gimlet write failed");
            });
            verify_stream(reader, UP_SEED, LEN, "stdin → destination");
            down.join().expect("downstream writer panicked");
        });
        inner.shutdown();
    });
    let ca = path(&pki.ca.file());
    let mut running = spawn(
        gimlet_to_dest_std(&["--proxy-cacert", &ca, "--cacert", &ca], &proxy.url())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped()),
    );
    let mut stdin = running.stdin.take().unwrap();
    let feeder = thread::spawn(move || {
        write_stream(&mut stdin, UP_SEED, LEN).expect("writing gimlet's stdin failed");
    });
    let mut stdout = running.stdout.take().unwrap();
    verify_stream(&mut stdout, DOWN_SEED, LEN, "destination → stdout");
    feeder.join().expect("feeder panicked");
    let finished = running.wait(Duration::from_secs(120));
    finished.assert_code(0);
    assert_eq!(finished.stderr, "");
    let record = proxy.finish();
    assert_eq!(record.only_request(), expected_head(&format!("{DEST}:443")));
}

#[test]
fn destination_half_close_sends_close_notify_and_the_answer_still_arrives() {
    let pki = Pki::new();
    let dest = pki.ca.issue(&[DEST]).server_config();
    let proxy = FakeProxy::start(move |s| {
        s.send(OK);
        let mut tls = TlsStream::over_tcp(dest.clone(), &s.stream).expect("destination handshake");
        let (upstream, close) = tls.reader.read_to_close();
        assert_eq!(upstream, b"question");
        assert_eq!(
            close,
            Close::Notify,
            "stdin EOF must send close_notify to the destination"
        );
        assert!(
            tls.reader.transport_ends(),
            "then the TCP write side must be shut"
        );
        tls.send("answer");
        tls.shutdown();
    });
    let ca = path(&pki.ca.file());
    gimlet_to_dest(&["--cacert", &ca], &proxy.addr())
        .write_stdin("question")
        .assert()
        .success()
        .stdout("answer")
        .stderr("");
    proxy.finish();
}

/// A plain proxy whose destination presents `identity`'s certificate and
/// expects gimlet to refuse it.
fn plain_proxy_to_refused_destination(identity: &Identity) -> FakeProxy {
    let dest = identity.server_config();
    FakeProxy::start(move |s| {
        s.send(OK);
        let refused = TlsStream::over_tcp(dest.clone(), &s.stream);
        assert!(
            refused.is_err(),
            "gimlet should have refused the destination"
        );
        s.wait_for_close();
    })
}

/// Checks the one line for a failed handshake with the destination.
#[track_caller]
fn assert_destination_tls_failure(output: &Output, proxy: &str, why: &str) -> String {
    let stderr = assert_failure(output, 8, Some(proxy));
    let prefix = format!("gimlet: TLS handshake with {DEST}:443 through proxy {proxy}: ");
    assert!(
        stderr.starts_with(&prefix),
        "stderr must start with {prefix:?}, got {stderr:?}"
    );
    assert!(
        stderr.contains(why),
        "stderr must say {why:?}, got {stderr:?}"
    );
    assert_printable(&stderr);
    stderr
}

#[test]
fn destination_certificate_for_another_name_fails_with_status_8() {
    let pki = Pki::new();
    let proxy = plain_proxy_to_refused_destination(&pki.other);
    let ca = path(&pki.ca.file());
    let output = run(&mut gimlet_to_dest(&["--cacert", &ca], &proxy.addr()));
    assert_destination_tls_failure(&output, &proxy.addr(), "is not valid for the name");
    proxy.finish();
}

#[test]
fn destination_from_an_unknown_authority_fails_with_status_8() {
    let pki = Pki::new();
    let proxy = plain_proxy_to_refused_destination(&pki.ca.issue(&[DEST]));
    let output = run(&mut gimlet_to_dest(&[], &proxy.addr()));
    assert_destination_tls_failure(&output, &proxy.addr(), "signed by an unknown authority");
    proxy.finish();
}

#[test]
fn destination_pin_mismatch_fails_with_status_8() {
    let pki = Pki::new();
    let proxy = plain_proxy_to_refused_destination(&pki.ca.issue(&[DEST]));
    let ca = path(&pki.ca.file());
    let pin = pki.server.pin();
    let output = run(&mut gimlet_to_dest(
        &["--cacert", &ca, "--pinnedpubkey", &pin],
        &proxy.addr(),
    ));
    assert_destination_tls_failure(&output, &proxy.addr(), "matches no pinned key");
    proxy.finish();
}

#[test]
fn destination_failure_inside_an_https_proxy_names_both() {
    let pki = Pki::new();
    let dest = pki.other.server_config();
    let proxy = TlsProxy::start(pki.server.server_config(), move |s| {
        s.send(OK);
        let refused = TlsStream::inside(dest.clone(), &mut s.tls).is_err();
        assert!(refused, "gimlet should have refused the destination");
        s.reader.read_to_close();
    });
    let ca = path(&pki.ca.file());
    let output = run(&mut gimlet_to_dest(
        &["-4", "--proxy-cacert", &ca, "--cacert", &ca],
        &proxy.url_as("localhost"),
    ));
    assert_destination_tls_failure(&output, &localhost(&proxy), "is not valid for the name");
    let record = proxy.finish();
    assert_eq!(record.only_connection().handshake, Ok(()));
}

#[test]
fn destination_servername_overrides_sni_and_the_verified_name() {
    let pki = Pki::new();
    let dest = pki.other.server_config();
    let proxy = FakeProxy::start(move |s| {
        s.send(OK);
        let mut tls = TlsStream::over_tcp(dest.clone(), &s.stream).expect("destination handshake");
        assert_eq!(tls.sni.as_deref(), Some("other.example"));
        tls.echo();
    });
    let ca = path(&pki.ca.file());
    gimlet_to_dest(
        &["--cacert", &ca, "--servername", "other.example"],
        &proxy.addr(),
    )
    .write_stdin("echo me")
    .assert()
    .success()
    .stdout("echo me")
    .stderr("");
    // The CONNECT still names the destination as given.
    assert_eq!(
        proxy.finish().only_request(),
        expected_head(&format!("{DEST}:443"))
    );
}

#[test]
fn insecure_destination_accepts_a_self_signed_certificate_with_one_warning_line() {
    let dest = self_signed(&[DEST]).server_config();
    let proxy = FakeProxy::start(move |s| {
        s.send(OK);
        let mut tls = TlsStream::over_tcp(dest.clone(), &s.stream).expect("destination handshake");
        tls.echo();
    });
    let output = run(gimlet_to_dest(&["--insecure"], &proxy.addr()).write_stdin("echo me"));
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "stderr: {stderr:?}");
    assert_eq!(text(&output.stdout), "echo me");
    assert!(
        stderr.starts_with("gimlet: warning: --insecure: ")
            && stderr.ends_with('\n')
            && stderr.matches('\n').count() == 1,
        "expected exactly one warning line, got {stderr:?}"
    );
    proxy.finish();
}

// ---------------------------------------------------------------------------
// Server-first protocols, stalls and configuration mistakes
// ---------------------------------------------------------------------------

/// Runs gimlet as an ssh client would: waits (stdin open and silent) until
/// `greeting` has come out on stdout, then writes `answer` to stdin, and
/// expects `rest` and EOF on stdout and exit 0, stdin still open.
#[track_caller]
fn converse(cmd: &mut Command, greeting: &str, answer: &str, rest: &str) {
    let mut running = spawn(cmd.stdin(Stdio::piped()).stdout(Stdio::piped()));
    let rx = stdout_chunks(running.stdout.take().unwrap());
    assert_eq!(
        await_output(&rx, greeting),
        greeting,
        "the greeting must come out while stdin is open and silent"
    );
    running
        .stdin
        .as_mut()
        .unwrap()
        .write_all(answer.as_bytes())
        .unwrap();
    let finished = running.wait_keeping_stdin(HANG);
    assert_eq!(rest_of_output(&rx), rest);
    finished.assert_code(0);
    assert_eq!(finished.stderr, "");
}

#[test]
fn server_first_greeting_through_an_https_proxy_comes_out_before_any_stdin() {
    let pki = Pki::new();
    let proxy = TlsProxy::start(pki.server.server_config(), |s| {
        s.send(OK);
        s.send("SSH-2.0-Server\r\n");
        let mut line = [0u8; 16];
        s.reader.read_exact(&mut line).unwrap();
        assert_eq!(&line, b"SSH-2.0-Client\r\n");
        s.send("bye");
        s.shutdown();
        s.reader.read_to_close();
    });
    let ca = path(&pki.ca.file());
    converse(
        &mut gimlet_tls_std(&["--proxy-cacert", &ca], &proxy.url()),
        "SSH-2.0-Server\r\n",
        "SSH-2.0-Client\r\n",
        "bye",
    );
    proxy.finish();
}

#[test]
fn server_first_greeting_through_tls_in_tls_comes_out_before_any_stdin() {
    let pki = Pki::new();
    let dest = pki.ca.issue(&[DEST]).server_config();
    let proxy = TlsProxy::start(pki.server.server_config(), move |s| {
        s.send(OK);
        let mut inner = TlsStream::inside(dest.clone(), &mut s.tls).expect("destination handshake");
        inner.send("SSH-2.0-Server\r\n");
        let mut line = [0u8; 16];
        inner.reader.read_exact(&mut line).unwrap();
        assert_eq!(&line, b"SSH-2.0-Client\r\n");
        inner.send("bye");
        inner.shutdown();
        inner.reader.read_to_close();
    });
    let ca = path(&pki.ca.file());
    converse(
        &mut gimlet_to_dest_std(&["--proxy-cacert", &ca, "--cacert", &ca], &proxy.url()),
        "SSH-2.0-Server\r\n",
        "SSH-2.0-Client\r\n",
        "bye",
    );
    proxy.finish();
}

#[test]
fn https_proxy_that_never_answers_the_connect_times_out_with_status_3() {
    let pki = Pki::new();
    let proxy = TlsProxy::start(pki.server.server_config(), |s| {
        // Handshake done, request read: say nothing until gimlet gives up.
        let (rest, _) = s.reader.read_to_close();
        assert_eq!(rest, b"");
    });
    let ca = path(&pki.ca.file());
    let output = run(&mut gimlet_tls(
        &["--connect-timeout", "1", "--proxy-cacert", &ca],
        &proxy.url(),
    ));
    let stderr = assert_failure(&output, 3, Some(&proxy.addr()));
    assert!(stderr.contains("timed out"), "{stderr:?}");
    assert_eq!(proxy.finish().only_request(), expected_head(TARGET));
}

#[test]
fn invalid_proxy_servername_is_a_usage_error() {
    let pki = Pki::new();
    let proxy = TlsProxy::start(pki.server.server_config(), no_session);
    let output = run(&mut gimlet_tls(
        &["--proxy-servername", "not a name"],
        &proxy.url(),
    ));
    assert_usage_line(&output);
    assert_eq!(
        proxy.connections(),
        0,
        "nothing may be sent on a usage error"
    );
}

#[test]
fn unreadable_proxy_ca_bundle_fails_before_connecting_with_one_line() {
    let pki = Pki::new();
    let proxy = TlsProxy::start(pki.server.server_config(), no_session);
    let missing = path(&scratch_path("no-such-ca.pem"));
    let garbage = path(&scratch_file("garbage.pem", b"not a certificate\n", 0o600));
    for bundle in [&missing, &garbage] {
        let output = run(&mut gimlet_tls(&["--proxy-cacert", bundle], &proxy.url()));
        let stderr = text(&output.stderr);
        let code = output.status.code();
        assert!(
            code == Some(2),
            "{bundle}: a bad CA bundle is a usage error (nothing was sent), got {code:?}: {stderr:?}"
        );
        assert!(output.stdout.is_empty());
        assert_error_line(&stderr, None);
        assert!(
            stderr.contains(bundle.as_str()),
            "name the file: {stderr:?}"
        );
    }
    assert_eq!(proxy.connections(), 0, "nothing may be sent");
}

#[test]
fn trust_in_the_proxy_does_not_extend_to_the_destination() {
    // The proxy is trusted (--proxy-cacert, or --proxy-insecure); the
    // destination's CA is not given with --cacert.
    let pki = Pki::new();
    let dest = pki.ca.issue(&[DEST]).server_config();
    let start = |config: std::sync::Arc<rustls::ServerConfig>| {
        let dest = dest.clone();
        TlsProxy::start(config, move |s| {
            s.send(OK);
            let refused = TlsStream::inside(dest.clone(), &mut s.tls).is_err();
            assert!(refused, "gimlet should have refused the destination");
            s.reader.read_to_close();
        })
    };
    let ca = path(&pki.ca.file());

    let proxy = start(pki.server.server_config());
    let output = run(&mut gimlet_to_dest(&["--proxy-cacert", &ca], &proxy.url()));
    assert_destination_tls_failure(&output, &proxy.addr(), "signed by an unknown authority");
    proxy.finish();

    let proxy = start(pki.self_signed.server_config());
    let output = run(&mut gimlet_to_dest(&["--proxy-insecure"], &proxy.url()));
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(8), "stderr: {stderr:?}");
    assert!(output.stdout.is_empty());
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "a warning and an error line: {stderr:?}");
    assert!(lines[0].starts_with("gimlet: warning: --proxy-insecure: "));
    assert!(
        lines[1].starts_with(&format!(
            "gimlet: TLS handshake with {DEST}:443 through proxy "
        )) && lines[1].contains("signed by an unknown authority"),
        "{stderr:?}"
    );
    proxy.finish();
}

#[test]
fn tls_proxy_hanging_up_during_the_handshake_fails_with_one_line() {
    let proxy = TlsProxy::hanging_up();
    let pki = Pki::new();
    let ca = path(&pki.ca.file());
    let output = run(&mut gimlet_tls(&["--proxy-cacert", &ca], &proxy.url()));
    let stderr = text(&output.stderr);
    let code = output.status.code();
    assert!(
        code == Some(8) || code == Some(3),
        "expected status 8 (or 3), got {code:?}; stderr: {stderr:?}"
    );
    assert!(output.stdout.is_empty());
    assert_error_line(&stderr, Some(&proxy.addr()));
    assert!(stderr.contains("TLS handshake with proxy"), "{stderr:?}");
    assert_printable(&stderr);
    proxy.finish();
}

#[test]
fn tls_proxy_hanging_up_during_the_handshake_says_the_proxy_closed_the_connection() {
    let proxy = TlsProxy::hanging_up();
    let pki = Pki::new();
    let ca = path(&pki.ca.file());
    let output = run(&mut gimlet_tls(&["--proxy-cacert", &ca], &proxy.url()));
    let stderr = assert_proxy_tls_failure(&output, &proxy.addr(), "closed the connection");
    assert!(!stderr.contains("unexpected end of file"), "{stderr:?}");
    proxy.finish();
}

// ---------------------------------------------------------------------------
// Records, endings and failures once the tunnel is up; quiet mode
// ---------------------------------------------------------------------------

#[test]
fn corrupt_tls_record_mid_tunnel_fails_with_status_7_and_one_line() {
    let pki = Pki::new();
    let proxy = TlsProxy::start(pki.server.server_config(), |s| {
        s.send(OK);
        s.send("good bytes");
        // Once gimlet's user has seen them (and says so), corrupt the stream.
        let mut next = [0u8; 4];
        s.reader.read_exact(&mut next).unwrap();
        assert_eq!(&next, b"next");
        s.writer.send_raw(&bogus_record());
        s.reader.read_to_close();
    });
    let mut running = spawn_trusting(&pki, &proxy);
    let rx = stdout_chunks(running.stdout.take().unwrap());
    assert_eq!(await_output(&rx, "good bytes"), "good bytes");
    running.stdin.as_mut().unwrap().write_all(b"next").unwrap();
    let finished = running.wait_keeping_stdin(HANG);
    assert_eq!(rest_of_output(&rx), "", "nothing may follow on stdout");
    finished.assert_code(7);
    assert_error_line(&finished.stderr, Some(&proxy.addr()));
    assert_printable(&finished.stderr);
    proxy.finish();
}

#[test]

fn authenticated_bytes_just_before_a_corrupt_record_still_reach_stdout() {
    let pki = Pki::new();
    let proxy = TlsProxy::start(pki.server.server_config(), |s| {
        s.send(OK);
        let mut go = [0u8; 2];
        s.reader.read_exact(&mut go).unwrap();
        // One write: a good record, then one that cannot decrypt.
        s.send_records_then_raw(&[b"good bytes"], &bogus_record());
        s.reader.read_to_close();
    });
    let mut running = spawn_trusting(&pki, &proxy);
    let rx = stdout_chunks(running.stdout.take().unwrap());
    running.stdin.as_mut().unwrap().write_all(b"go").unwrap();
    let finished = running.wait_keeping_stdin(HANG);
    let out = rest_of_output(&rx);
    finished.assert_code(7);
    assert_eq!(
        out, "good bytes",
        "bytes authenticated before the bad record must reach stdout"
    );
    proxy.finish();
}

#[test]
fn quiet_tls_failure_prints_nothing_but_keeps_status_8() {
    let pki = Pki::new();
    let proxy = TlsProxy::start(pki.expired.server_config(), no_session);
    let ca = path(&pki.ca.file());
    gimlet_tls(&["-q", "--proxy-cacert", &ca], &proxy.url())
        .assert()
        .code(8)
        .stdout("")
        .stderr("");
    assert_handshake_abandoned(&proxy.finish());
}

#[test]
fn quiet_silences_the_insecure_warning() {
    let pki = Pki::new();
    let proxy = TlsProxy::start(
        pki.self_signed.server_config(),
        answer_after_close(b"ping", "pong"),
    );
    assert_tunnel(
        &mut gimlet_tls(&["-q", "--proxy-insecure"], &proxy.url()),
        "ping",
        "pong",
    );
    proxy.finish();
}

#[test]
fn reply_data_and_close_notify_in_one_write_end_gimlet_after_the_data() {
    let pki = Pki::new();
    let proxy = TlsProxy::start(pki.server.server_config(), |s| {
        s.send_records_then_close_notify(&[OK.as_bytes(), b"last words"]);
        s.reader.read_to_close();
    });
    let mut running = spawn_trusting(&pki, &proxy);
    let mut stdout = running.stdout.take().unwrap();
    // stdin stays open: the close_notify that came with the reply ends it.
    let finished = running.wait_keeping_stdin(HANG);
    finished.assert_code(0);
    assert_eq!(finished.stderr, "");
    let mut out = String::new();
    stdout.read_to_string(&mut out).unwrap();
    assert_eq!(out, "last words");
    proxy.finish();
}

#[test]
fn reply_split_across_tls_records_is_reassembled() {
    let pki = Pki::new();
    let proxy = TlsProxy::start(pki.server.server_config(), |s| {
        for piece in [
            "HTTP/1.1 2",
            "00 Connection established\r",
            "\n\r",
            "\ndata",
        ] {
            s.send(piece);
        }
        s.shutdown();
        s.reader.read_to_close();
    });
    let ca = path(&pki.ca.file());
    assert_tunnel(
        &mut gimlet_tls(&["--proxy-cacert", &ca], &proxy.url()),
        "",
        "data",
    );
    proxy.finish();
}

#[test]
fn proxy_key_updates_mid_stream_do_not_disturb_the_tunnel() {
    let pki = Pki::new();
    let proxy = TlsProxy::start(pki.server.server_config(), |s| {
        assert_eq!(s.protocol, Some(rustls::ProtocolVersion::TLSv1_3));
        s.send(OK);
        let mut buf = vec![0u8; 16 * 1024];
        let (mut total, mut next_update) = (0, 0);
        loop {
            let n = s.reader.read(&mut buf).expect("read through TLS");
            if n == 0 {
                break;
            }
            if total >= next_update {
                s.writer.refresh_keys();
                next_update += 64 * 1024;
            }
            s.writer.write_all(&buf[..n]).expect("write through TLS");
            total += n;
        }
        assert_eq!(total, MIB);
        s.shutdown();
    });
    let ca = path(&pki.ca.file());
    let finished = round_trip_echo(
        &mut gimlet_tls_std(&["--proxy-cacert", &ca], &proxy.url()),
        MIB,
    );
    finished.assert_code(0);
    assert_eq!(finished.stderr, "");
    proxy.finish();
}

#[test]
fn junk_instead_of_the_destination_handshake_fails_with_status_8_and_stays_off_stdout() {
    let proxy = FakeProxy::start(|s| {
        // The 200 and a non-TLS greeting in one write: the greeting is the
        // start of what --tls must treat as the destination's TLS stream.
        s.send(format!("{OK}SSH-2.0-OpenSSH_9.6\r\n"));
        s.wait_for_close();
    });
    let pki = Pki::new();
    let ca = path(&pki.ca.file());
    let output = run(&mut gimlet_to_dest(&["--cacert", &ca], &proxy.addr()));
    let stderr = assert_destination_tls_failure(&output, &proxy.addr(), "");
    assert!(!stderr.contains("SSH-2.0"), "{stderr:?}");
    proxy.finish();
}

#[test]
fn certificate_names_with_escape_and_newline_are_escaped_in_the_error() {
    let pki = Pki::new();
    let hostile = pki
        .ca
        .issue(&["evil\u{1b}[2J.example", "x\ngimlet: forged.example"]);
    let proxy = TlsProxy::start(hostile.server_config(), no_session);
    let ca = path(&pki.ca.file());
    let output = run(&mut gimlet_tls(
        &["-4", "--proxy-cacert", &ca],
        &proxy.url_as("localhost"),
    ));
    let stderr = assert_proxy_tls_failure(&output, &localhost(&proxy), "is not valid for the name");
    assert!(stderr.contains("forged.example"), "{stderr:?}");
    assert_handshake_abandoned(&proxy.finish());
}

#[test]
fn no_copy_of_the_password_outlives_a_handshake_inside_tls() {
    use crate::input::{PASSWORD, USER, assert_no_secret_in_memory};
    let pki = Pki::new();
    let proxy = TlsProxy::start(pki.server.server_config(), |s| {
        s.send(
            "HTTP/1.1 407 Proxy Authentication Required\r\n\
             Proxy-Authenticate: Basic realm=\"tls\"\r\nContent-Length: 0\r\n\r\n",
        );
        let second = s.read_request().expect("the retry");
        assert_eq!(
            header(&second, "Proxy-Authorization"),
            Some(basic(&format!("{USER}:{PASSWORD}")))
        );
        s.send(OK);
        s.echo();
    });
    let file = scratch_file(
        "tls-mem-auth",
        format!("{USER}:{PASSWORD}\n").as_bytes(),
        0o600,
    );
    let ca = path(&pki.ca.file());
    assert_no_secret_in_memory(
        &mut gimlet_tls_std(
            &["--proxy-auth-file", &path(&file), "--proxy-cacert", &ca],
            &proxy.url(),
        ),
        USER,
        PASSWORD,
    );
    proxy.finish();
}
