//! The CONNECT request gimlet writes, byte for byte, and the ways of naming
//! the proxy and the target on the command line.

use crate::support::*;

/// Runs gimlet against a proxy that accepts and closes at once, with
/// `before` options, then the proxy, then `after` (target and friends).
/// Returns the request head the proxy received.
fn head_sent(before: &[&str], after: &[&str]) -> String {
    let proxy = FakeProxy::accept_and_close();
    gimlet()
        .args(before)
        .arg(proxy.addr())
        .args(after)
        .assert()
        .success()
        .stdout("")
        .stderr("");
    proxy.finish().only_request()
}

fn expected_head(target: &str, lines: &[&str]) -> String {
    let mut head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    for line in lines {
        head.push_str(line);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    head
}

fn default_agent() -> String {
    format!("User-Agent: gimlet/{VERSION}")
}

#[test]
fn request_is_exactly_connect_host_and_user_agent() {
    assert_eq!(
        head_sent(&[], &["example.test", "22"]),
        expected_head("example.test:22", &[&default_agent()])
    );
}

#[test]
fn ipv4_target_is_sent_as_is() {
    assert_eq!(
        head_sent(&[], &["192.0.2.7", "443"]),
        expected_head("192.0.2.7:443", &[&default_agent()])
    );
}

#[test]
fn bare_ipv6_target_is_bracketed_in_request_line_and_host() {
    assert_eq!(
        head_sent(&[], &["::1", "22"]),
        expected_head("[::1]:22", &[&default_agent()])
    );
}

#[test]
fn bracketed_ipv6_target_is_sent_with_single_brackets() {
    assert_eq!(
        head_sent(&[], &["[::1]", "22"]),
        expected_head("[::1]:22", &[&default_agent()])
    );
}

#[test]
fn long_ipv6_target_is_bracketed() {
    assert_eq!(
        head_sent(&[], &["2001:db8::8:800:200c:417a", "2222"]),
        expected_head("[2001:db8::8:800:200c:417a]:2222", &[&default_agent()])
    );
}

#[test]
fn empty_user_agent_option_sends_no_user_agent() {
    assert_eq!(
        head_sent(&["-A", ""], &["example.test", "22"]),
        expected_head("example.test:22", &[])
    );
}

#[test]
fn user_agent_option_replaces_the_default() {
    assert_eq!(
        head_sent(
            &["--user-agent", "corp-tunnel/2.1 (ops)"],
            &["example.test", "22"]
        ),
        expected_head("example.test:22", &["User-Agent: corp-tunnel/2.1 (ops)"])
    );
}

#[test]
fn extra_headers_are_sent_in_order_after_credentials() {
    // Preemptive Basic puts the credentials in the first request, so the
    // whole order can be seen there.
    let head = head_sent(
        &[
            "--proxy-auth",
            "basic",
            "-U",
            "alice:secret",
            "-H",
            "X-First: 1",
            "--header",
            "X-Second: two words: and a colon",
            "-H",
            "X-First: again",
        ],
        &["example.test", "22"],
    );
    let auth = format!("Proxy-Authorization: Basic {}", base64(b"alice:secret"));
    assert_eq!(
        head,
        expected_head(
            "example.test:22",
            &[
                &default_agent(),
                &auth,
                "X-First: 1",
                "X-Second: two words: and a colon",
                "X-First: again",
            ]
        )
    );
}

#[test]
fn no_proxy_authorization_without_credentials() {
    let head = head_sent(&[], &["example.test", "22"]);
    assert!(
        !contains_ignore_case(&head, "proxy-authorization"),
        "unexpected credentials in {head:?}"
    );
}

#[test]
fn corkscrew_argument_order_is_accepted() {
    let proxy = FakeProxy::accept_and_close();
    gimlet()
        .args(["127.0.0.1", &proxy.port(), "example.test", "22"])
        .assert()
        .success()
        .stdout("")
        .stderr("");
    assert_eq!(
        proxy.finish().only_request(),
        expected_head("example.test:22", &[&default_agent()])
    );
}

#[test]
fn proxy_url_positional_is_accepted() {
    let proxy = FakeProxy::accept_and_close();
    gimlet()
        .arg(format!("http://127.0.0.1:{}", proxy.port()))
        .args(["example.test", "22"])
        .assert()
        .success()
        .stderr("");
    assert_eq!(
        proxy.finish().only_request(),
        expected_head("example.test:22", &[&default_agent()])
    );
}

#[test]
fn proxy_option_takes_a_url() {
    for flag in ["-p", "--proxy"] {
        let proxy = FakeProxy::accept_and_close();
        gimlet()
            .arg(flag)
            .arg(format!("http://127.0.0.1:{}", proxy.port()))
            .args(["example.test", "22"])
            .assert()
            .success()
            .stderr("");
        assert_eq!(
            proxy.finish().only_request(),
            expected_head("example.test:22", &[&default_agent()]),
            "with {flag}"
        );
    }
}

#[test]
fn proxy_name_is_resolved_with_ipv4_only() {
    let proxy = FakeProxy::accept_and_close();
    gimlet()
        .args([
            "-4",
            &format!("localhost:{}", proxy.port()),
            "example.test",
            "22",
        ])
        .assert()
        .success()
        .stderr("");
    assert_eq!(proxy.finish().connections, 1);
}

#[test]
fn ipv6_proxy_with_ipv6_target() {
    let Some(proxy) = FakeProxy::start_v6(|s| {
        s.send(OK);
        s.shutdown_write();
        s.wait_for_close();
    }) else {
        return;
    };
    assert!(proxy.addr().starts_with("[::1]:"));
    gimlet()
        .args([&proxy.addr(), "::1", "22"])
        .assert()
        .success()
        .stderr("");
    assert_eq!(
        proxy.finish().only_request(),
        expected_head("[::1]:22", &[&default_agent()])
    );
}

#[test]
fn ipv6_proxy_in_corkscrew_order_and_with_ipv6_only() {
    let Some(proxy) = FakeProxy::start_v6(|s| {
        s.send(OK);
        s.shutdown_write();
        s.wait_for_close();
    }) else {
        return;
    };
    gimlet()
        .args(["-6", "::1", &proxy.port(), "example.test", "22"])
        .assert()
        .success()
        .stderr("");
    assert_eq!(
        proxy.finish().only_request(),
        expected_head("example.test:22", &[&default_agent()])
    );
}

#[test]
fn keepalive_and_timeouts_are_accepted_on_a_working_tunnel() {
    for opts in [
        &["--keepalive", "0"][..],
        &["--keepalive", "15"],
        &["--connect-timeout", "0.5", "--idle-timeout", "30"],
    ] {
        let proxy = FakeProxy::echo();
        gimlet()
            .args(opts)
            .args([&proxy.addr(), "example.test", "22"])
            .write_stdin("ping")
            .assert()
            .success()
            .stdout("ping")
            .stderr("");
        proxy.finish();
    }
}

#[test]
fn ipv6_proxy_url() {
    let Some(proxy) = FakeProxy::start_v6(|s| {
        s.send(OK);
        s.shutdown_write();
        s.wait_for_close();
    }) else {
        return;
    };
    gimlet()
        .args(["-p", &format!("http://{}", proxy.addr()), "[::1]", "22"])
        .assert()
        .success()
        .stderr("");
    assert_eq!(
        proxy.finish().only_request(),
        expected_head("[::1]:22", &[&default_agent()])
    );
}
