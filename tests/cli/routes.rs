//! Routes: SOCKS hops against scripted fake SOCKS servers, chains of fakes, and the proxy
//! taken from the environment (curl's variables and NO_PROXY).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Output;

use crate::support::*;

/// Runs gimlet with `args` and `stdin`, returning its output.
fn run(args: &[&str], env: &[(&str, &str)], stdin: &[u8]) -> Output {
    let mut cmd = gimlet();
    cmd.args(args).write_stdin(stdin.to_vec());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run gimlet")
}

#[track_caller]
fn assert_echoed(out: &Output, sent: &[u8]) {
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), text(sent));
}

#[test]
fn socks5h_hop_sends_the_name_and_relays_both_ways() {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let s2 = seen.clone();
    let socks = FakeSocks::start(move |s| {
        assert_eq!(
            read_greeting(s),
            vec![0],
            "only no-auth without credentials"
        );
        s.write_all(&[5, 0]).unwrap();
        *s2.lock().unwrap() = read_request5(s);
        s.write_all(&SOCKS5_OK).unwrap();
        echo(s);
    });
    let out = run(
        &["-p", &socks.url("socks5h"), "git.example.test", "22"],
        &[],
        b"hello through socks\n",
    );
    assert_echoed(&out, b"hello through socks\n");
    assert_eq!(*seen.lock().unwrap(), "git.example.test:22");
    socks.check();
}

#[test]
fn socks5_hop_is_given_the_address_gimlet_resolved() {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let s2 = seen.clone();
    let socks = FakeSocks::start(move |s| {
        read_greeting(s);
        s.write_all(&[5, 0]).unwrap();
        *s2.lock().unwrap() = read_request5(s);
        s.write_all(&SOCKS5_OK).unwrap();
        echo(s);
    });
    let out = run(&["-p", &socks.url("socks5"), "localhost", "22"], &[], b"x");
    assert_echoed(&out, b"x");
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen == "127.0.0.1:22" || seen == "[::1]:22",
        "the proxy got {seen:?}"
    );
}

#[test]
fn socks5_credentials_from_the_url_are_sent_by_rfc1929() {
    let socks = FakeSocks::socks5_with_password("alice", "s3:cr@t");
    let url = format!("socks5h://alice:s3%3Acr%40t@{}", socks.addr());
    let out = run(&["-p", &url, "h.example.test", "22"], &[], b"ok");
    assert_echoed(&out, b"ok");
    socks.check();
}

#[test]
fn socks5_credentials_from_the_user_option_go_to_the_first_hop() {
    let socks = FakeSocks::socks5_with_password("bob", "pw");
    let out = run(
        &[
            "-U",
            "bob:pw",
            "-p",
            &socks.url("socks5h"),
            "h.example.test",
            "22",
        ],
        &[],
        b"ok",
    );
    assert_echoed(&out, b"ok");
}

#[test]
fn socks5_rejected_password_exits_with_the_auth_status_naming_the_user() {
    let socks = FakeSocks::socks5_with_password("alice", "right");
    let url = format!("socks5h://alice:wrong@{}", socks.addr());
    let out = run(&["-p", &url, "h.example.test", "22"], &[], b"");
    let line = assert_failure(&out, 5, Some(&socks.addr()));
    assert!(
        line.contains("rejected the user name and password for \"alice\""),
        "{line}"
    );
    assert!(!line.contains("wrong"), "{line}");
}

#[test]
fn socks5_proxy_wanting_a_password_without_one_exits_with_the_auth_status() {
    let socks = FakeSocks::socks5_with_password("alice", "pw");
    let out = run(
        &["-p", &socks.url("socks5h"), "h.example.test", "22"],
        &[],
        b"",
    );
    let line = assert_failure(&out, 5, Some(&socks.addr()));
    assert!(line.contains("requires authentication"), "{line}");
}

#[test]
fn every_socks5_reply_code_is_one_line_naming_it_with_the_refused_status() {
    let names = [
        "general SOCKS server failure",
        "connection not allowed by ruleset",
        "network unreachable",
        "host unreachable",
        "connection refused by destination host",
        "TTL expired",
        "command not supported",
        "address type not supported",
    ];
    for (i, name) in names.iter().enumerate() {
        let code = i as u8 + 1;
        let socks = FakeSocks::start(move |s| {
            read_greeting(s);
            s.write_all(&[5, 0]).unwrap();
            read_request5(s);
            s.write_all(&[5, code, 0, 1, 0, 0, 0, 0, 0, 0]).unwrap();
        });
        let out = run(
            &["-p", &socks.url("socks5h"), "h.example.test", "22"],
            &[],
            b"",
        );
        let line = assert_failure(&out, 4, None);
        assert_eq!(
            line,
            format!(
                "gimlet: proxy socks5h://{} refused CONNECT h.example.test:22: {name} (SOCKS5 reply 0x{code:02x})\n",
                socks.addr()
            )
        );
    }
}

#[test]
fn socks4a_sends_the_user_and_the_name_and_reply_91_is_a_refusal() {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
    let s2 = seen.clone();
    let socks = FakeSocks::start(move |s| {
        *s2.lock().unwrap() = Some(read_request4(s));
        s.write_all(&[0, 91, 0, 0, 0, 0, 0, 0]).unwrap();
    });
    let url = format!("socks4a://carol@{}", socks.addr());
    let out = run(&["-p", &url, "h.example.test", "2222"], &[], b"");
    let line = assert_failure(&out, 4, Some(&socks.addr()));
    assert!(
        line.contains("request rejected or failed (SOCKS4 reply 91)"),
        "{line}"
    );
    let (port, ip, user, name) = seen.lock().unwrap().clone().unwrap();
    assert_eq!((port, ip, user.as_str()), (2222, [0, 0, 0, 1], "carol"));
    assert_eq!(name.as_deref(), Some("h.example.test"));
}

#[test]
fn socks4_tunnel_bytes_that_come_with_the_reply_come_out_first() {
    let socks = FakeSocks::start(|s| {
        let (_, ip, _, name) = read_request4(s);
        assert_eq!((ip, name), ([127, 0, 0, 1], None));
        // The reply and the destination's banner in one write.
        s.write_all(b"\x00\x5a\x00\x00\x00\x00\x00\x00SSH-2.0-fake\r\n")
            .unwrap();
        echo(s);
    });
    let out = run(
        &["-p", &socks.url("socks4"), "127.0.0.1", "22"],
        &[],
        b"client",
    );
    assert_echoed(&out, b"SSH-2.0-fake\r\nclient");
}

#[test]
fn http_proxy_given_as_socks_is_named_in_a_hint() {
    let http = FakeSocks::start(|s| {
        let mut greeting = [0u8; 3];
        let _ = s.read_exact(&mut greeting);
        let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
    });
    let out = run(&["-p", &http.url("socks5"), "127.0.0.1", "22"], &[], b"");
    let line = assert_failure(&out, 6, Some(&http.addr()));
    assert!(
        line.contains("it is an HTTP proxy: give it as http://HOST:PORT")
            && line.contains("HTTP/1.1 400 Bad Request"),
        "{line}"
    );
}

#[test]
fn half_close_through_a_socks_hop_still_delivers_the_answer() {
    let socks = FakeSocks::start(|s| {
        read_greeting(s);
        s.write_all(&[5, 0]).unwrap();
        read_request5(s);
        s.write_all(&SOCKS5_OK).unwrap();
        // Read to EOF first (gimlet passed on the end of stdin), then answer.
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        s.write_all(&got.iter().rev().copied().collect::<Vec<_>>())
            .unwrap();
    });
    let out = run(
        &["-p", &socks.url("socks5h"), "h.example.test", "22"],
        &[],
        b"abc",
    );
    assert_echoed(&out, b"cba");
}

#[test]
fn chain_of_http_then_socks5h_reaches_the_destination_in_order() {
    let socks = FakeSocks::socks5_echo();
    let http = forwarding_proxy();
    let out = run(
        &[
            "-p",
            &format!("http://{}", http.addr()),
            "-p",
            &socks.url("socks5h"),
            "h.example.test",
            "22",
        ],
        &[],
        b"two hops",
    );
    assert_echoed(&out, b"two hops");
    let record = http.finish();
    assert!(
        record
            .only_request()
            .starts_with(&format!("CONNECT {} HTTP/1.1\r\n", socks.addr())),
        "{:?}",
        record.only_request()
    );
    socks.check();
}

#[test]
fn chain_of_three_names_the_hop_that_refused() {
    let refusing = FakeSocks::start(|s| {
        read_greeting(s);
        s.write_all(&[5, 0]).unwrap();
        read_request5(s);
        s.write_all(&[5, 5, 0, 1, 0, 0, 0, 0, 0, 0]).unwrap();
    });
    let first = forwarding_proxy();
    let never = FakeSocks::socks5_echo();
    let out = run(
        &[
            "-p",
            &first.addr(),
            "-p",
            &refusing.url("socks5h"),
            "-p",
            &never.url("socks5h"),
            "h.example.test",
            "22",
        ],
        &[],
        b"",
    );
    let line = assert_failure(&out, 4, None);
    assert_eq!(
        line,
        format!(
            "gimlet: hop 2 of 3 (socks5h://{}) refused CONNECT {}: connection refused by destination host (SOCKS5 reply 0x05)\n",
            refusing.addr(),
            never.addr()
        )
    );
    assert_eq!(never.connections(), 0);
}

#[test]
fn chain_with_a_socks_hop_first_and_http_second() {
    let http = FakeProxy::echo();
    let socks = FakeSocks::start(|s| {
        read_greeting(s);
        s.write_all(&[5, 0]).unwrap();
        let target = read_request5(s);
        let upstream = TcpStream::connect(&target).expect("socks fake connect");
        s.write_all(&SOCKS5_OK).unwrap();
        splice_both(s.try_clone().unwrap(), upstream);
    });
    let out = run(
        &[
            "-p",
            &socks.url("socks5"),
            "-p",
            &http.addr(),
            "h.example.test",
            "22",
        ],
        &[],
        b"socks then http",
    );
    assert_echoed(&out, b"socks then http");
    assert!(
        http.finish()
            .only_request()
            .starts_with("CONNECT h.example.test:22 HTTP/1.1\r\n")
    );
}

#[test]
fn https_proxy_variable_is_used_for_host_port_alone() {
    let proxy = FakeProxy::echo();
    let out = run(
        &["-v", "h.example.test", "22"],
        &[("HTTPS_PROXY", &format!("http://{}", proxy.addr()))],
        b"from the environment",
    );
    assert_echoed(&out, b"from the environment");
    assert!(
        text(&out.stderr).contains(&format!("proxy http://{} from HTTPS_PROXY", proxy.addr())),
        "{}",
        text(&out.stderr)
    );
    assert!(
        proxy
            .finish()
            .only_request()
            .starts_with("CONNECT h.example.test:22 ")
    );
}

#[test]
fn lowercase_https_proxy_wins_and_a_scheme_less_value_is_http() {
    let lower = FakeProxy::echo();
    let upper = FakeProxy::echo();
    let out = run(
        &["h.example.test", "22"],
        &[
            ("https_proxy", &lower.addr()),
            ("HTTPS_PROXY", &format!("http://{}", upper.addr())),
        ],
        b"x",
    );
    assert_echoed(&out, b"x");
    assert_eq!(lower.finish().connections, 1);
    assert_eq!(upper.connections(), 0);
}

#[test]
fn all_proxy_may_name_a_socks_proxy() {
    let socks = FakeSocks::socks5_echo();
    let out = run(
        &["h.example.test", "22"],
        &[("ALL_PROXY", &socks.url("socks5h"))],
        b"via all_proxy",
    );
    assert_echoed(&out, b"via all_proxy");
}

#[test]
fn no_proxy_entry_sends_the_destination_direct_and_says_why() {
    let proxy = FakeProxy::echo();
    let (dest, _server) = echo_server();
    let port = dest.port().to_string();
    let out = run(
        &["-v", "127.0.0.1", &port],
        &[
            ("HTTPS_PROXY", &format!("http://{}", proxy.addr())),
            ("NO_PROXY", "example.test, 127.0.0.0/8"),
        ],
        b"direct",
    );
    assert_echoed(&out, b"direct");
    assert!(
        text(&out.stderr).contains("direct: NO_PROXY entry 127.0.0.0/8 matches 127.0.0.1"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(proxy.connections(), 0);
}

#[test]
fn no_proxy_variable_leaves_an_explicit_proxy_alone_but_noproxy_does_not() {
    let proxy = FakeProxy::echo();
    let out = run(
        &["-p", &proxy.addr(), "127.0.0.1", "22"],
        &[("NO_PROXY", "*")],
        b"x",
    );
    assert_echoed(&out, b"x");
    assert_eq!(proxy.finish().connections, 1);

    let (dest, _server) = echo_server();
    let out = run(
        &[
            "--noproxy",
            "127.0.0.1",
            "-p",
            &proxy.addr(),
            "127.0.0.1",
            &dest.port().to_string(),
        ],
        &[],
        b"y",
    );
    assert_echoed(&out, b"y");
}

#[test]
fn without_any_proxy_variable_host_port_connects_directly() {
    let (dest, _server) = echo_server();
    let out = run(
        &["-v", "127.0.0.1", &dest.port().to_string()],
        &[("https_proxy", "")],
        b"plain",
    );
    assert_echoed(&out, b"plain");
    assert!(
        text(&out.stderr).contains("direct: no proxy given and none of https_proxy"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn direct_connection_refused_names_the_destination_not_a_proxy() {
    let port = closed_port().to_string();
    let out = run(&["127.0.0.1", &port], &[], b"");
    let line = assert_failure(&out, 3, Some(&format!("127.0.0.1:{port}")));
    assert!(
        line.starts_with(&format!("gimlet: connecting to 127.0.0.1:{port}: ")),
        "{line}"
    );
}

#[test]
fn a_bad_proxy_variable_is_a_usage_error_naming_the_variable() {
    let out = run(
        &["h.example.test", "22"],
        &[("https_proxy", "gopher://u:secret@p:1")],
        b"",
    );
    let line = assert_failure(&out, 2, None);
    assert!(line.contains("parsing https_proxy"), "{line}");
    assert!(!line.contains("secret"), "{line}");
}

#[test]
fn tls_nests_three_deep_behind_an_http_hop() {
    use crate::support_tls::{Pki, TlsProxy, TlsStream};
    let pki = Pki::new();
    let dest = pki.ca.issue(&["dest.example"]).server_config();
    // Hop 2 is an https proxy reached through hop 1's tunnel; the destination's TLS runs
    // inside hop 2's: TCP, then TLS with hop 2, then TLS with the destination.
    let https = TlsProxy::start(pki.server.server_config(), move |s| {
        s.send(OK);
        let mut inner = TlsStream::inside(dest.clone(), &mut s.tls)
            .expect("destination handshake inside hop 2's TLS");
        inner.echo();
    });
    let http = forwarding_proxy();
    let ca = pki.ca.file().to_str().unwrap().to_owned();
    let mut cmd = gimlet();
    cmd.env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR")
        .args([
            "--proxy-cacert",
            &ca,
            "--tls",
            "--cacert",
            &ca,
            "-p",
            &http.addr(),
            "-p",
            &https.url_as("localhost"),
            "dest.example",
            "443",
        ])
        .write_stdin("deep inside");
    let out = cmd.output().unwrap();
    assert_echoed(&out, b"deep inside");
    assert!(
        http.finish()
            .only_request()
            .starts_with(&format!("CONNECT localhost:{} ", https.port())),
    );
    assert!(
        https
            .finish()
            .only_request()
            .starts_with("CONNECT dest.example:443 ")
    );
}

#[test]
fn socks_proxy_given_as_http_is_named_in_a_hint() {
    // A SOCKS4 server refuses the CONNECT line with 00 5b; dante-like SOCKS5 servers close.
    let socks4 = FakeSocks::start(|s| {
        read_head(s);
        let _ = s.write_all(&[0, 91, 0, 0, 0, 0, 0, 0]);
    });
    let out = run(&[&socks4.addr(), "127.0.0.1", "22"], &[], b"");
    let line = assert_failure(&out, 6, Some(&socks4.addr()));
    assert!(
        line.contains("looks like SOCKS4 (give it as socks5h:// or socks4a://)"),
        "{line}"
    );

    let socks5 = FakeSocks::start(|s| {
        // Read it all, so that closing sends FIN, not RST.
        read_head(s);
    });
    let out = run(&[&socks5.addr(), "127.0.0.1", "22"], &[], b"");
    let line = assert_failure(&out, 6, Some(&socks5.addr()));
    assert!(
        line.contains("if it is a SOCKS proxy, give it as socks5h://"),
        "{line}"
    );
}

#[test]
fn http_proxy_given_as_socks_that_waits_times_out_with_a_hint() {
    let http = FakeSocks::start(|s| {
        // Waits for a request line, as an HTTP server does, until gimlet gives up.
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    });
    let out = run(
        &[
            "--connect-timeout",
            "0.3",
            "-p",
            &http.url("socks5h"),
            "127.0.0.1",
            "22",
        ],
        &[],
        b"",
    );
    let line = assert_failure(&out, 3, Some(&http.addr()));
    assert!(
        line.contains("if it is one, give it as http://HOST:PORT"),
        "{line}"
    );
}

#[test]
fn socks5_proxy_refusing_no_auth_gets_asked_credentials_on_a_new_connection() {
    let askpass = Askpass::answering(&["alice", "s3cret"]);
    let socks = FakeSocks::socks5_with_password("alice", "s3cret");
    let out = {
        let mut cmd = gimlet();
        cmd.env("GIMLET_ASKPASS", askpass.program())
            .args(["-p", &socks.url("socks5h"), "h.example.test", "22"])
            .write_stdin("after asking");
        cmd.output().unwrap()
    };
    assert_echoed(&out, b"after asking");
    // The first connection offered no authentication and was refused; the second one
    // authenticated with what askpass gave.
    assert_eq!(socks.connections(), 2);
    let prompts = askpass.prompts();
    assert!(
        prompts.iter().all(|p| p.contains(&socks.addr())),
        "{prompts:?}"
    );
    socks.check();
}

#[test]
fn upstream_is_shareable_with_worker_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<gimlet::Upstream>();
}

#[test]
fn netrc_gives_each_hop_the_entry_for_its_own_host() {
    let netrc = scratch_file(
        "routes-netrc",
        b"machine 127.0.0.1 login alice password one\nmachine localhost login bob password two\n",
        0o600,
    );
    let second = FakeProxy::basic_challenge();
    let first = forwarding_proxy();
    let out = run(
        &[
            "--netrc-file",
            netrc.to_str().unwrap(),
            "-p",
            &first.addr(),
            "-p",
            &format!("http://localhost:{}", second.port()),
            "example.test",
            "22",
        ],
        &[],
        b"",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let record = second.finish();
    record.assert_requests(2);
    assert_eq!(
        proxy_authorization(&record.request(1)).as_deref(),
        Some(basic("bob:two").as_str())
    );
    // Hop 1 never asked, so its entry was never sent.
    assert_eq!(proxy_authorization(&first.finish().request(0)), None);
}

#[test]
fn connect_timeout_covers_the_whole_chain_and_names_the_silent_hop() {
    let silent = FakeSocks::start(|s| {
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    });
    let first = forwarding_proxy();
    let out = run(
        &[
            "--connect-timeout",
            "0.5",
            "-p",
            &first.addr(),
            "-p",
            &silent.url("socks5h"),
            "example.test",
            "22",
        ],
        &[],
        b"",
    );
    let line = assert_failure(&out, 3, None);
    assert!(
        line.starts_with(&format!(
            "gimlet: reading the SOCKS reply from hop 2 of 2 (socks5h://{})",
            silent.addr()
        )) && line.contains("timed out after 0.5s (--connect-timeout)"),
        "{line}"
    );
}
