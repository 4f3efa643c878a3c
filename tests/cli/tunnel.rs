//! The relay once the tunnel is up: integrity of large transfers in both
//! directions at once, bytes that arrive with the reply, half-closes,
//! idle timeout and resets.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::*;

const BIG: usize = 64 * 1024 * 1024;
const UP_SEED: u64 = 0x0123_4567_89ab_cdef;
const DOWN_SEED: u64 = 0xfedc_ba98_7654_3210;

#[test]
fn sixty_four_mebibytes_each_way_at_once_arrive_intact() {
    let proxy = FakeProxy::start(|s| {
        s.send(OK);
        let mut downstream = s.stream.try_clone().expect("clone");
        let writer = thread::spawn(move || {
            write_stream(&mut downstream, DOWN_SEED, BIG).expect("proxy → gimlet write failed");
        });
        // Reading to EOF also checks gimlet passed on the end of stdin.
        verify_stream(&mut s.stream, UP_SEED, BIG, "stdin → proxy");
        writer.join().expect("downstream writer panicked");
        // Only now end the session: EOF from the proxy ends gimlet.
        s.shutdown_write();
    });
    let mut running = spawn(
        gimlet_std()
            .args([&proxy.addr(), "example.test", "22"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped()),
    );
    let mut stdin = running.stdin.take().unwrap();
    let feeder = thread::spawn(move || {
        write_stream(&mut stdin, UP_SEED, BIG).expect("writing gimlet's stdin failed");
        // Dropping stdin gives gimlet EOF.
    });
    let mut stdout = running.stdout.take().unwrap();
    verify_stream(&mut stdout, DOWN_SEED, BIG, "proxy → stdout");
    feeder.join().expect("feeder panicked");
    let finished = running.wait(Duration::from_secs(120));
    finished.assert_code(0);
    assert_eq!(finished.stderr, "");
    proxy.finish();
}

#[test]
fn data_in_the_same_segment_as_the_reply_comes_out_first() {
    let proxy = FakeProxy::start(|s| {
        // One write: reply head and the first tunnel bytes together.
        s.send("HTTP/1.1 200 Connection established\r\n\r\nSSH-2.0-Fake_1.0\r\n");
        let upstream = s.read_to_eof();
        assert_eq!(upstream, b"SSH-2.0-Client\r\n");
        s.send("rest of the session");
        s.shutdown_write();
    });
    gimlet()
        .args([&proxy.addr(), "example.test", "22"])
        .write_stdin("SSH-2.0-Client\r\n")
        .assert()
        .success()
        .stdout("SSH-2.0-Fake_1.0\r\nrest of the session")
        .stderr("");
    proxy.finish();
}

#[test]
fn large_data_burst_right_after_the_reply_is_delivered_in_order() {
    // 256 KiB written in the same call as the reply head: most of it lands in
    // gimlet's first reads together with the head.
    const LEN: usize = 256 * 1024;
    let proxy = FakeProxy::start(|s| {
        let mut burst = OK.as_bytes().to_vec();
        burst.extend_from_slice(&Prng::bytes(42, LEN));
        s.send(&burst);
        s.shutdown_write();
        s.wait_for_close();
    });
    let assert = gimlet()
        .args([&proxy.addr(), "example.test", "22"])
        .assert()
        .success()
        .stderr("");
    let out = &assert.get_output().stdout;
    assert_eq!(out.len(), LEN, "wrong number of bytes delivered");
    assert!(*out == Prng::bytes(42, LEN), "burst corrupted or reordered");
    proxy.finish();
}

#[test]
fn stdin_eof_half_closes_and_the_reply_still_arrives() {
    let proxy = FakeProxy::start(|s| {
        s.send(OK);
        // The proxy must see EOF (gimlet shut down its write half)...
        let upstream = s.read_to_eof();
        assert_eq!(upstream, b"request then EOF");
        // ...and can still answer afterwards.
        s.send("answer after EOF");
        s.shutdown_write();
    });
    gimlet()
        .args([&proxy.addr(), "example.test", "22"])
        .write_stdin("request then EOF")
        .assert()
        .success()
        .stdout("answer after EOF")
        .stderr("");
    proxy.finish();
}

#[test]
fn empty_stdin_half_closes_at_once_and_the_reply_still_arrives() {
    let proxy = FakeProxy::start(|s| {
        s.send(OK);
        assert_eq!(s.read_to_eof(), b"");
        for chunk in ["one ", "two ", "three"] {
            s.send(chunk);
        }
        s.shutdown_write();
    });
    gimlet()
        .args([&proxy.addr(), "example.test", "22"])
        .assert()
        .success()
        .stdout("one two three")
        .stderr("");
    proxy.finish();
}

#[test]
fn proxy_closing_ends_gimlet_while_stdin_is_still_open() {
    let proxy = FakeProxy::start(|s| {
        s.send(OK);
        s.send("goodbye");
        s.shutdown_write();
        s.wait_for_close();
    });
    let mut running = spawn(
        gimlet_std()
            .args([&proxy.addr(), "example.test", "22"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped()),
    );
    let mut stdout = running.stdout.take().unwrap();
    // Keep running.stdin: gimlet must exit on the socket's EOF alone.
    let finished = running.wait_keeping_stdin(HANG);
    finished.assert_code(0);
    assert_eq!(finished.stderr, "");
    let mut out = String::new();
    stdout.read_to_string(&mut out).unwrap();
    assert_eq!(out, "goodbye");
    proxy.finish();
}

#[test]
fn proxy_closing_after_stdin_data_still_delivers_everything() {
    // Stdin stays open; the far side answers what it got and closes.
    let proxy = FakeProxy::start(|s| {
        s.send(OK);
        let mut got = [0u8; 5];
        s.stream.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
        s.send(Prng::bytes(9, 300_000));
        s.shutdown_write();
        s.wait_for_close();
    });
    let mut running = spawn(
        gimlet_std()
            .args([&proxy.addr(), "example.test", "22"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped()),
    );
    running.stdin.as_mut().unwrap().write_all(b"hello").unwrap();
    let mut stdout = running.stdout.take().unwrap();
    let reader = thread::spawn(move || {
        let mut out = Vec::new();
        stdout.read_to_end(&mut out).unwrap();
        out
    });
    let finished = running.wait_keeping_stdin(HANG);
    finished.assert_code(0);
    let out = reader.join().unwrap();
    assert!(out == Prng::bytes(9, 300_000), "downstream data lost");
    proxy.finish();
}

#[test]
fn idle_tunnel_times_out_with_io_error_code() {
    let proxy = FakeProxy::start(|s| {
        s.send(OK);
        s.wait_for_close();
    });
    let started = Instant::now();
    let running = spawn(
        gimlet_std()
            .args(["--idle-timeout", "1", &proxy.addr(), "example.test", "22"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null()),
    );
    let finished = running.wait_keeping_stdin(HANG);
    let elapsed = started.elapsed();
    finished.assert_code(7);
    assert_error_line(&finished.stderr, Some(&proxy.addr()));
    assert!(
        elapsed >= Duration::from_millis(900),
        "timed out after only {elapsed:?}"
    );
    proxy.finish();
}

#[test]
fn traffic_keeps_an_idle_timeout_from_firing() {
    // Data every 250 ms for ~2.5 s with --idle-timeout 1: never idle for a
    // whole second, so the tunnel must end normally.
    let proxy = FakeProxy::start(|s| {
        s.send(OK);
        for i in 0..10 {
            thread::sleep(Duration::from_millis(250));
            s.send(format!("tick{i};"));
        }
        s.shutdown_write();
        s.wait_for_close();
    });
    let mut running = spawn(
        gimlet_std()
            .args(["--idle-timeout", "1", &proxy.addr(), "example.test", "22"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped()),
    );
    let mut stdout = running.stdout.take().unwrap();
    let finished = running.wait_keeping_stdin(HANG);
    finished.assert_code(0);
    let mut out = String::new();
    stdout.read_to_string(&mut out).unwrap();
    assert_eq!(
        out,
        (0..10).map(|i| format!("tick{i};")).collect::<String>()
    );
    proxy.finish();
}

#[test]
fn connection_reset_mid_tunnel_exits_with_io_error_code() {
    let proxy = FakeProxy::start(|s| {
        s.send(OK);
        // Wait until data flows through the tunnel, then abort.
        let mut got = [0u8; 4];
        s.stream.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");
        s.reset_on_close();
    });
    let mut running = spawn(
        gimlet_std()
            .args([&proxy.addr(), "example.test", "22"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null()),
    );
    running.stdin.as_mut().unwrap().write_all(b"ping").unwrap();
    let finished = running.wait_keeping_stdin(HANG);
    finished.assert_code(7);
    assert_error_line(&finished.stderr, Some(&proxy.addr()));
    proxy.finish();
}

#[test]
fn connection_reset_while_sending_exits_with_io_error_code() {
    // The far side resets while gimlet is still pushing stdin upstream.
    let proxy = FakeProxy::start(|s| {
        s.send(OK);
        let mut got = vec![0u8; 64 * 1024];
        s.stream.read_exact(&mut got).unwrap();
        s.reset_on_close();
    });
    let mut running = spawn(
        gimlet_std()
            .args([&proxy.addr(), "example.test", "22"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null()),
    );
    let mut stdin = running.stdin.take().unwrap();
    let feeder = thread::spawn(move || {
        // Keeps writing until gimlet goes away (then the pipe breaks).
        let chunk = vec![b'x'; 64 * 1024];
        while stdin.write_all(&chunk).is_ok() {}
    });
    let finished = running.wait(HANG);
    feeder.join().unwrap();
    finished.assert_code(7);
    assert_error_line(&finished.stderr, Some(&proxy.addr()));
    proxy.finish();
}

/// The keepalive timer of gimlet's connection to `proxy_port`, read from
/// /proc/net/tcp: `Some(seconds until the next probe)` when a keepalive
/// timer is armed, `None` when no timer is. Skips (returns `Err`) when the
/// table is not available.
fn keepalive_timer(proxy_port: &str) -> Result<Option<f64>, String> {
    let table = std::fs::read_to_string("/proc/net/tcp").map_err(|e| e.to_string())?;
    let port: u16 = proxy_port.parse().unwrap();
    let suffix = format!(":{port:04X}");
    let line = table
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 5 && f[2].ends_with(&suffix) && f[3] == "01")
        .ok_or("gimlet's connection is not in /proc/net/tcp")?;
    let (kind, when) = line[5].split_once(':').unwrap();
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    match kind {
        "00" => Ok(None),
        "02" => Ok(Some(u64::from_str_radix(when, 16).unwrap() as f64 / ticks)),
        other => Err(format!("unexpected timer kind {other}")),
    }
}

/// Runs a tunnel with `options` and returns gimlet's keepalive timer while
/// the tunnel is up.
fn keepalive_while_up(options: &[&str]) -> Result<Option<f64>, String> {
    let proxy = FakeProxy::start(|s| {
        s.send("HTTP/1.1 200 OK\r\n\r\nx");
        assert_eq!(s.read_to_eof(), b"");
        s.shutdown_write();
    });
    let mut running = spawn(
        gimlet_std()
            .args(options)
            .args([&proxy.addr(), "example.test", "22"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped()),
    );
    let mut stdout = running.stdout.take().unwrap();
    let mut x = [0u8; 1];
    stdout.read_exact(&mut x).unwrap();
    let timer = keepalive_timer(&proxy.port());
    let finished = running.wait(HANG);
    finished.assert_code(0);
    proxy.finish();
    timer
}

#[test]
fn keepalive_option_sets_the_probe_interval() {
    match keepalive_while_up(&["--keepalive", "7"]) {
        Err(why) => eprintln!("skipping: {why}"),
        Ok(timer) => {
            let left = timer.expect("no keepalive timer armed with --keepalive 7");
            assert!(
                left > 3.0 && left <= 7.0,
                "keepalive timer fires in {left}s, expected about 7s"
            );
        }
    }
}

#[test]
fn keepalive_zero_disables_keepalive() {
    match keepalive_while_up(&["--keepalive", "0"]) {
        Err(why) => eprintln!("skipping: {why}"),
        Ok(timer) => assert_eq!(timer, None, "keepalive still armed with --keepalive 0"),
    }
}

/// Where gimlet's stdout goes in the urgent-data tests: each picks another data path
/// (splice into the pipe directly; splice through a pipe of gimlet's own into a socket).
#[derive(Clone, Copy, Debug)]
enum Output {
    Pipe,
    Socket,
}

/// The far side sends `before` bytes, one byte with `MSG_OOB` (TCP urgent data), `after`
/// bytes and a FIN, on the splice path and on the copy path. SO_OOBINLINE is off, so the
/// urgent byte is not part of the stream: read(2) skips it, and the splice path must
/// deliver exactly the same bytes (every other byte, in order) and end on its own.
fn urgent_byte_mid_tunnel(before: usize, after: usize, output: Output) {
    for no_splice in ["0", "1"] {
        let proxy = FakeProxy::start(move |s| {
            s.send(OK);
            s.send(Prng::bytes(1, before));
            let urgent = b'!';
            // SAFETY: one byte from a live buffer on a socket we own.
            let sent = unsafe {
                libc::send(
                    s.stream.as_raw_fd(),
                    (&urgent as *const u8).cast(),
                    1,
                    libc::MSG_OOB,
                )
            };
            assert_eq!(sent, 1, "send MSG_OOB: {}", std::io::Error::last_os_error());
            s.send(Prng::bytes(2, after));
            s.shutdown_write();
            s.wait_for_close();
        });
        let mut cmd = gimlet_std();
        cmd.env("GIMLET_NO_SPLICE", no_splice)
            .args([&proxy.addr(), "example.test", "22"])
            .stdin(Stdio::piped());
        let reader: thread::JoinHandle<Vec<u8>> = match output {
            Output::Pipe => {
                cmd.stdout(Stdio::piped());
                let mut running = spawn(&mut cmd);
                let mut stdout = running.stdout.take().unwrap();
                let reader = thread::spawn(move || {
                    let mut got = Vec::new();
                    stdout.read_to_end(&mut got).unwrap();
                    got
                });
                // stdin stays open: only the tunnel's end may end gimlet.
                running.wait_keeping_stdin(HANG).assert_code(0);
                reader
            }
            Output::Socket => {
                let (mut ours, theirs) = UnixStream::pair().unwrap();
                cmd.stdout(Stdio::from(OwnedFd::from(theirs)));
                let running = spawn(&mut cmd);
                drop(cmd);
                let reader = thread::spawn(move || {
                    let mut got = Vec::new();
                    ours.read_to_end(&mut got).unwrap();
                    got
                });
                running.wait_keeping_stdin(HANG).assert_code(0);
                reader
            }
        };
        let got = reader.join().unwrap();
        let mut expected = Prng::bytes(1, before);
        expected.extend_from_slice(&Prng::bytes(2, after));
        assert_eq!(
            got.len(),
            expected.len(),
            "GIMLET_NO_SPLICE={no_splice}, stdout a {output:?}: wrong byte count"
        );
        assert!(
            got == expected,
            "GIMLET_NO_SPLICE={no_splice}, stdout a {output:?}: bytes differ"
        );
        proxy.finish();
    }
}

#[test]
fn urgent_byte_between_small_writes_is_skipped_and_the_rest_arrives() {
    urgent_byte_mid_tunnel(100, 100, Output::Pipe);
}

#[test]
fn urgent_byte_between_mebibytes_is_skipped_and_the_rest_arrives() {
    urgent_byte_mid_tunnel(1 << 20, 1 << 20, Output::Pipe);
}

#[test]
fn urgent_byte_right_after_the_reply_is_skipped() {
    urgent_byte_mid_tunnel(0, 1000, Output::Pipe);
}

#[test]
fn urgent_byte_is_skipped_when_stdout_is_a_socket() {
    urgent_byte_mid_tunnel(100, 100, Output::Socket);
    urgent_byte_mid_tunnel(1 << 20, 1 << 20, Output::Socket);
}

#[test]
fn urgent_byte_on_a_tcp_socket_as_stdin_is_skipped_on_the_way_up() {
    // stdin may be a TCP connection (inetd, socket activation): its urgent byte is not part of
    // the stream either, on either path.
    for no_splice in ["0", "1"] {
        let proxy = FakeProxy::start(|s| {
            s.send(OK);
            let up = s.read_to_eof();
            let mut expected = Prng::bytes(3, 200_000);
            expected.extend_from_slice(&Prng::bytes(4, 200_000));
            assert!(up == expected, "{} bytes came up, not the stream", up.len());
            s.shutdown_write();
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (stdin, _) = listener.accept().unwrap();
        let running = spawn(
            gimlet_std()
                .env("GIMLET_NO_SPLICE", no_splice)
                .args([&proxy.addr(), "example.test", "22"])
                .stdin(Stdio::from(OwnedFd::from(stdin)))
                .stdout(Stdio::null()),
        );
        client.write_all(&Prng::bytes(3, 200_000)).unwrap();
        let urgent = b'!';
        // SAFETY: one byte from a live buffer on a socket we own.
        let sent = unsafe {
            libc::send(
                client.as_raw_fd(),
                (&urgent as *const u8).cast(),
                1,
                libc::MSG_OOB,
            )
        };
        assert_eq!(sent, 1, "send MSG_OOB: {}", std::io::Error::last_os_error());
        client.write_all(&Prng::bytes(4, 200_000)).unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        running.wait(HANG).assert_code(0);
        proxy.finish();
    }
}
