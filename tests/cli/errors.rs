//! Failures before the tunnel is up: usage and configuration errors,
//! unreachable or silent proxies, and the shape of error messages.

use std::time::{Duration, Instant};

use crate::support::*;

/// Runs gimlet with `before` options, a live proxy and `after` (target and
/// friends), expects a usage error, and checks that nothing reached the
/// proxy.
#[track_caller]
fn assert_usage_error(before: &[&str], after: &[&str]) -> String {
    let proxy = FakeProxy::accept_and_close();
    let assert = gimlet().args(before).arg(proxy.addr()).args(after).assert();
    let out = assert.get_output();
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "args {before:?} PROXY {after:?}: stderr {stderr:?}"
    );
    assert!(out.stdout.is_empty(), "stdout: {:?}", text(&out.stdout));
    assert!(!stderr.is_empty(), "a usage error must say why");
    assert_eq!(
        proxy.connections(),
        0,
        "args {before:?} PROXY {after:?}: the proxy was contacted"
    );
    stderr
}

#[test]
fn cr_lf_in_target_host_is_a_usage_error() {
    for host in [
        "example.test\r\nX-Injected: 1",
        "example.test\n",
        "example.test\r",
    ] {
        assert_usage_error(&[], &[host, "22"]);
    }
}

#[test]
fn spaces_and_control_characters_in_target_host_are_usage_errors() {
    for host in [
        "exa mple.test",
        "example.test HTTP/1.1",
        "exa\tmple.test",
        "exa\x01mple.test",
        "exa\x7fmple.test",
        "",
    ] {
        assert_usage_error(&[], &[host, "22"]);
    }
}

#[test]
fn unbalanced_brackets_in_target_host_are_usage_errors() {
    for host in ["[::1", "::1]", "[[::1]]"] {
        assert_usage_error(&[], &[host, "22"]);
    }
}

#[test]
fn host_with_a_port_or_a_broken_ipv6_address_is_a_usage_error() {
    for host in ["example.test:22", "1:2:3", "[example.test]", "::1::2"] {
        assert_usage_error(&[], &[host, "22"]);
    }
}

#[test]
fn cr_lf_in_extra_header_is_a_usage_error() {
    for header in [
        "X-Ok: yes\r\nX-Injected: 1",
        "X-Ok: yes\nX-Injected: 1",
        "X-Ok: yes\r",
        "X-Ctl: a\x01b",
    ] {
        assert_usage_error(&["-H", header], &["example.test", "22"]);
    }
}

#[test]
fn cr_lf_in_user_agent_is_a_usage_error() {
    assert_usage_error(&["-A", "ua\r\nX-Injected: 1"], &["example.test", "22"]);
}

#[test]
fn header_without_name_or_colon_is_a_usage_error() {
    for header in ["no colon here", ": empty name", "Bad Name: v"] {
        assert_usage_error(&["-H", header], &["example.test", "22"]);
    }
}

#[test]
fn invalid_target_port_is_a_usage_error() {
    for port in ["0", "70000", "65536", "ssh", "", "22x", "-1", " 22", "22 "] {
        assert_usage_error(&[], &["example.test", port]);
    }
}

#[test]
fn invalid_proxy_port_is_a_usage_error() {
    for proxy in [
        "127.0.0.1:0",
        "127.0.0.1:70000",
        "127.0.0.1:http",
        "127.0.0.1",
    ] {
        gimlet()
            .args([proxy, "example.test", "22"])
            .assert()
            .code(2)
            .stdout("");
    }
    for port in ["0", "99999", "squid"] {
        gimlet()
            .args(["127.0.0.1", port, "example.test", "22"])
            .assert()
            .code(2)
            .stdout("");
    }
}

#[test]
fn unsupported_proxy_url_scheme_is_a_usage_error() {
    let proxy = FakeProxy::accept_and_close();
    gimlet()
        .args([
            "-p",
            &format!("gopher://127.0.0.1:{}", proxy.port()),
            "example.test",
            "22",
        ])
        .assert()
        .code(2)
        .stdout("");
    assert_eq!(proxy.connections(), 0);
}

#[test]
fn wrong_number_of_arguments_is_a_usage_error() {
    for argv in [
        &[][..],
        &["127.0.0.1:3128"],
        &["127.0.0.1:3128", "example.test"],
        &["a", "1", "b", "2", "authfile", "extra"],
    ] {
        gimlet().args(argv).assert().code(2).stdout("");
    }
}

#[test]
fn unknown_option_is_a_usage_error() {
    gimlet()
        .args(["--no-such-option", "127.0.0.1:3128", "example.test", "22"])
        .assert()
        .code(2)
        .stdout("");
}

#[test]
fn bad_timeout_values_are_usage_errors() {
    for (flag, value) in [
        ("--connect-timeout", "soon"),
        ("--connect-timeout", "-1"),
        ("--idle-timeout", "never"),
        ("--keepalive", "often"),
    ] {
        assert_usage_error(&[&format!("{flag}={value}")], &["example.test", "22"]);
    }
}

#[test]
fn quiet_usage_error_prints_nothing_but_keeps_the_code() {
    let proxy = FakeProxy::accept_and_close();
    gimlet()
        .args(["-q", &proxy.addr(), "example.test", "0"])
        .assert()
        .code(2)
        .stdout("")
        .stderr("");
    assert_eq!(proxy.connections(), 0);
}

#[test]
fn proxy_not_listening_exits_unreachable_naming_it() {
    let port = closed_port();
    let proxy = format!("127.0.0.1:{port}");
    let assert = gimlet().args([&proxy, "example.test", "22"]).assert();
    assert_failure(assert.get_output(), 3, Some(&proxy));
}

#[test]
fn proxy_not_listening_in_corkscrew_order_names_it_too() {
    let port = closed_port();
    let assert = gimlet()
        .args(["127.0.0.1", &port.to_string(), "example.test", "22"])
        .assert();
    assert_failure(assert.get_output(), 3, Some(&format!("127.0.0.1:{port}")));
}

#[test]
fn unresolvable_proxy_name_exits_unreachable() {
    // `.invalid` never resolves (RFC 2606).
    let assert = gimlet()
        .args(["proxy.gimlet-test.invalid:3128", "example.test", "22"])
        .timeout(Duration::from_secs(60))
        .assert();
    assert_failure(
        assert.get_output(),
        3,
        Some("proxy.gimlet-test.invalid:3128"),
    );
}

#[test]
fn quiet_unreachable_prints_nothing_but_keeps_the_code() {
    let port = closed_port();
    gimlet()
        .args(["-q", &format!("127.0.0.1:{port}"), "example.test", "22"])
        .assert()
        .code(3)
        .stdout("")
        .stderr("");
}

/// A proxy that reads the request and then says nothing until gimlet hangs
/// up.
fn silent_proxy() -> FakeProxy {
    FakeProxy::start(|s| s.wait_for_close())
}

#[test]
fn proxy_that_never_answers_hits_the_connect_timeout() {
    let proxy = silent_proxy();
    let started = Instant::now();
    let assert = gimlet()
        .args([
            "--connect-timeout",
            "1",
            &proxy.addr(),
            "example.test",
            "22",
        ])
        .assert();
    let elapsed = started.elapsed();
    assert_failure(assert.get_output(), 3, Some(&proxy.addr()));
    assert!(
        elapsed >= Duration::from_millis(900),
        "gave up after only {elapsed:?}"
    );
    proxy.finish();
}

#[test]
fn a_proxy_address_that_never_answers_the_syn_hits_the_connect_timeout() {
    // A listener whose accept queue is full drops new SYNs: the connect neither succeeds nor
    // fails, and only --connect-timeout ends the wait (the connect is a non-blocking one
    // waited on with poll, bounded by the same deadline as the rest of the handshake).
    use socket2::{Domain, SockAddr, Socket, Type};
    let hole = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    hole.bind(&SockAddr::from(
        "127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap(),
    ))
    .unwrap();
    hole.listen(0).unwrap();
    let addr = hole.local_addr().unwrap().as_socket().unwrap();
    let fill: Vec<Socket> = (0..4)
        .map(|_| {
            let c = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
            c.set_nonblocking(true).unwrap();
            let _ = c.connect(&SockAddr::from(addr));
            c
        })
        .collect();
    let started = Instant::now();
    let assert = gimlet()
        .args([
            "--connect-timeout",
            "0.5",
            &addr.to_string(),
            "example.test",
            "22",
        ])
        .assert();
    let elapsed = started.elapsed();
    let stderr = assert_failure(assert.get_output(), 3, Some(&addr.to_string()));
    assert_eq!(
        stderr,
        format!("gimlet: connecting to proxy {addr}: timed out after 0.5s (--connect-timeout)\n")
    );
    assert!(
        elapsed >= Duration::from_millis(450) && elapsed < Duration::from_secs(5),
        "gave up after {elapsed:?}"
    );
    drop(fill);
}

#[test]
fn connect_timeout_accepts_fractions_of_a_second() {
    let proxy = silent_proxy();
    let started = Instant::now();
    let assert = gimlet()
        .args([
            "--connect-timeout",
            "0.5",
            &proxy.addr(),
            "example.test",
            "22",
        ])
        .assert();
    let elapsed = started.elapsed();
    assert_failure(assert.get_output(), 3, Some(&proxy.addr()));
    assert!(
        elapsed >= Duration::from_millis(400),
        "gave up after only {elapsed:?}"
    );
    proxy.finish();
}

#[test]
fn connect_timeout_covers_the_whole_handshake_not_each_read() {
    // The reply trickles in one byte every 200 ms: each read is quick, but
    // the handshake as a whole takes ~10 s, far beyond --connect-timeout 1.
    let proxy = FakeProxy::start(|s| {
        let reply = b"HTTP/1.1 200 Connection established\r\nX-Slow: yes\r\n\r\n";
        for byte in reply {
            if !s.send_lossy([*byte]) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        s.wait_for_close();
    });
    let started = Instant::now();
    let assert = gimlet()
        .args([
            "--connect-timeout",
            "1",
            &proxy.addr(),
            "example.test",
            "22",
        ])
        .assert();
    let elapsed = started.elapsed();
    assert_failure(assert.get_output(), 3, Some(&proxy.addr()));
    assert!(
        elapsed < Duration::from_secs(5),
        "the deadline was not enforced on the whole handshake ({elapsed:?})"
    );
    proxy.finish();
}

#[test]
fn help_describes_both_argument_forms() {
    let assert = gimlet().arg("--help").assert().success().stderr("");
    let help = text(&assert.get_output().stdout);
    for word in [
        "PROXY",
        "PROXYHOST",
        "PROXYPORT",
        "AUTHFILE",
        "HOST",
        "PORT",
        "--proxy",
    ] {
        assert!(
            help.contains(word),
            "--help does not mention {word}:\n{help}"
        );
    }
}

#[test]
fn version_is_reported() {
    let assert = gimlet().arg("--version").assert().success();
    let out = text(&assert.get_output().stdout);
    assert!(out.contains(VERSION), "{out:?}");
}

/// A Basic-challenging proxy whose every answer comes `delay` after the request; the 407
/// keeps the connection (`close` false) or closes it.
fn slow_challenging_proxy(delay: Duration, close: bool) -> FakeProxy {
    FakeProxy::conversation(move |head| {
        std::thread::sleep(delay);
        Ok(match (proxy_authorization(head), close) {
            (None, false) => (challenge_407(&["Basic realm=\"slow\""]), Then::KeepOpen),
            (None, true) => (
                challenge_407_with(&["Basic realm=\"slow\""], "Connection: close\r\n"),
                Then::Close,
            ),
            (Some(_), _) => (OK.to_owned(), Then::Close),
        })
    })
}

#[test]
fn connect_timeout_covers_every_round_of_authentication_together() {
    // Each answer alone comes well within --connect-timeout; together they do not. Whether
    // the 407 keeps the connection or the retry needs a new one, the clock is not restarted.
    for close in [false, true] {
        let proxy = slow_challenging_proxy(Duration::from_millis(700), close);
        let assert = gimlet()
            .args([
                "--connect-timeout",
                "1",
                "-U",
                "alice:s3cret",
                &proxy.addr(),
                "example.test",
                "22",
            ])
            .assert();
        let stderr = assert_failure(assert.get_output(), 3, Some(&proxy.addr()));
        assert!(
            stderr.contains("timed out after 1s (--connect-timeout)"),
            "close={close}: {stderr:?}"
        );
        proxy.finish();
    }
}

#[test]
fn time_spent_answering_a_prompt_does_not_count_against_the_connect_timeout() {
    // The askpass program takes longer than the whole --connect-timeout: a person typing.
    let program = scratch_file(
        "slow-askpass",
        b"#!/bin/sh\nsleep 4\ncase \"$1\" in *'user name'*) echo ann;; *) echo pw;; esac\n",
        0o700,
    );
    let proxy = FakeProxy::basic_challenge();
    let record = expect_tunnel(
        gimlet().env("GIMLET_ASKPASS", &program).args([
            "--connect-timeout",
            "3",
            &proxy.addr(),
            "example.test",
            "22",
        ]),
        &proxy,
    );
    assert_eq!(
        proxy_authorization(&record.request(1)).as_deref(),
        Some(basic("ann:pw").as_str())
    );
}
