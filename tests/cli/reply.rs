//! How gimlet reads the proxy's reply: status classes, framing variants,
//! fragmentation and malformed or oversized heads.

use crate::support::*;

/// A proxy that sends `reply` (as given) and then echoes the tunnel.
fn echo_after(reply: &'static str) -> FakeProxy {
    FakeProxy::start(move |s| {
        s.send(reply);
        s.echo();
    })
}

/// Runs gimlet through `proxy` with `input` on stdin and checks that the
/// tunnel echoed it and exited 0 silently.
#[track_caller]
fn assert_tunnel_works(proxy: &FakeProxy, input: &str) {
    gimlet()
        .args([&proxy.addr(), "example.test", "22"])
        .write_stdin(input)
        .assert()
        .success()
        .stdout(input.to_owned())
        .stderr("");
    proxy.finish();
}

#[test]
fn status_201_is_success() {
    assert_tunnel_works(&echo_after("HTTP/1.1 201 Created\r\n\r\n"), "hello");
}

#[test]
fn status_204_is_success() {
    assert_tunnel_works(&echo_after("HTTP/1.1 204 No Content\r\n\r\n"), "hello");
}

#[test]
fn http_1_0_reply_is_accepted() {
    assert_tunnel_works(
        &echo_after("HTTP/1.0 200 Connection established\r\nProxy-agent: Fake/1.0\r\n\r\n"),
        "over one-point-oh",
    );
}

#[test]
fn bare_lf_reply_is_accepted() {
    assert_tunnel_works(
        &echo_after("HTTP/1.1 200 OK\nProxy-Agent: sloppy\nVia: 1.1 sloppy\n\n"),
        "lf only",
    );
}

#[test]
fn interim_1xx_replies_are_skipped() {
    assert_tunnel_works(
        &echo_after(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\nX-Info: wait\r\n\r\n\
             HTTP/1.1 200 Connection established\r\n\r\n",
        ),
        "after interim",
    );
}

#[test]
fn interim_reply_final_reply_and_data_in_one_segment() {
    let proxy = FakeProxy::start(|s| {
        s.send("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\nfirst");
        s.echo();
    });
    gimlet()
        .args([&proxy.addr(), "example.test", "22"])
        .write_stdin("+echo")
        .assert()
        .success()
        .stdout("first+echo")
        .stderr("");
    proxy.finish();
}

#[test]
fn mixed_line_endings_are_accepted() {
    for reply in [
        "HTTP/1.1 200 OK\nVia: 1.1 a\r\n\r\n",
        "HTTP/1.1 200 OK\r\nVia: 1.1 a\n\n",
        "HTTP/1.1 200 OK\r\nVia: 1.1 a\r\n\n",
    ] {
        let proxy = FakeProxy::start(move |s| {
            s.send(reply);
            s.echo();
        });
        let assert = gimlet()
            .args([&proxy.addr(), "example.test", "22"])
            .write_stdin("data")
            .assert();
        let out = assert.get_output();
        assert_eq!(
            (out.status.code(), text(&out.stdout), text(&out.stderr)),
            (Some(0), "data".to_owned(), String::new()),
            "reply {reply:?}"
        );
        proxy.finish();
    }
}

#[test]
fn content_length_and_transfer_encoding_on_2xx_are_ignored() {
    // Everything after the blank line is tunnel data, whatever the headers
    // claim.
    let proxy = FakeProxy::start(|s| {
        s.send(
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n\
             5\r\nhello\r\n0\r\n\r\n",
        );
        s.shutdown_write();
        s.wait_for_close();
    });
    gimlet()
        .args([&proxy.addr(), "example.test", "22"])
        .assert()
        .success()
        .stdout("5\r\nhello\r\n0\r\n\r\n")
        .stderr("");
    proxy.finish();
}

#[test]
fn reply_dripped_byte_by_byte_is_reassembled() {
    let proxy = FakeProxy::start(|s| {
        let reply = b"HTTP/1.1 200 Connection established\r\nProxy-Agent: drip\r\n\r\nfirst bytes";
        send_split(&mut s.stream, reply, 1);
        s.echo();
    });
    gimlet()
        .args([&proxy.addr(), "example.test", "22"])
        .write_stdin(" then echo")
        .assert()
        .success()
        .stdout("first bytes then echo")
        .stderr("");
    proxy.finish();
}

#[test]
fn bare_lf_reply_dripped_byte_by_byte_is_reassembled() {
    let proxy = FakeProxy::start(|s| {
        send_split(&mut s.stream, b"HTTP/1.0 200 OK\nVia: 1.0 drip\n\nLF", 1);
        s.echo();
    });
    gimlet()
        .args([&proxy.addr(), "example.test", "22"])
        .write_stdin(" ok")
        .assert()
        .success()
        .stdout("LF ok")
        .stderr("");
    proxy.finish();
}

#[test]
fn reply_split_across_reads_is_reassembled() {
    let reply: &[u8] = b"HTTP/1.1 200 Connection established\r\nVia: 1.1 fake\r\n\r\ntail";
    let end = reply.len() - 4; // where the blank line ends
    let cuts: Vec<Vec<usize>> = vec![
        vec![1],
        vec![8],         // inside the version
        vec![9, 12],     // around the status code
        vec![end - 3],   // between the CRLFs of the blank line
        vec![end - 2],   // blank line split in half
        vec![end - 1],   // only the last LF left
        vec![end],       // tunnel data alone
        vec![5, 20, 38], // several pieces
    ];
    for offsets in cuts {
        let offsets_for_proxy = offsets.clone();
        let proxy = FakeProxy::start(move |s| {
            send_at(&mut s.stream, reply, &offsets_for_proxy);
            s.echo();
        });
        let assert = gimlet()
            .args([&proxy.addr(), "example.test", "22"])
            .write_stdin("+echo")
            .assert();
        let out = assert.get_output();
        assert_eq!(
            (out.status.code(), text(&out.stdout), text(&out.stderr)),
            (Some(0), "tail+echo".to_owned(), String::new()),
            "reply split at {offsets:?}"
        );
        proxy.finish();
    }
}

#[test]
fn head_just_under_the_limit_is_accepted() {
    // 50 headers of ~1 KiB: about 50 KiB of head, under both limits.
    let proxy = FakeProxy::start(|s| {
        let mut reply = String::from("HTTP/1.1 200 OK\r\n");
        for i in 0..50 {
            reply.push_str(&format!("X-Pad-{i}: {}\r\n", "p".repeat(1000)));
        }
        reply.push_str("\r\n");
        s.send(reply);
        s.echo();
    });
    assert_tunnel_works(&proxy, "still fine");
}

#[test]
fn proxy_403_is_refused_with_its_status_line() {
    let proxy = FakeProxy::replying(
        "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 15\r\n\r\nno tunnels here",
    );
    let assert = gimlet()
        .args([&proxy.addr(), "example.test", "22"])
        .assert();
    let stderr = assert_failure(assert.get_output(), 4, Some(&proxy.addr()));
    assert!(stderr.contains("HTTP/1.1 403 Forbidden"), "{stderr:?}");
    proxy.finish();
}

#[test]
fn proxy_502_and_503_are_refusals() {
    for status in ["502 Bad Gateway", "503 Service Unavailable", "302 Found"] {
        let proxy = FakeProxy::replying(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n"));
        let assert = gimlet()
            .args([&proxy.addr(), "example.test", "22"])
            .assert();
        let stderr = assert_failure(assert.get_output(), 4, Some(&proxy.addr()));
        assert!(
            stderr.contains(&format!("HTTP/1.1 {status}")),
            "status line not quoted: {stderr:?}"
        );
        proxy.finish();
    }
}

#[test]
fn refusal_over_http_1_0_quotes_the_status_line() {
    let proxy = FakeProxy::replying("HTTP/1.0 403 Access Denied By Policy\r\n\r\n");
    let assert = gimlet()
        .args([&proxy.addr(), "example.test", "22"])
        .assert();
    let stderr = assert_failure(assert.get_output(), 4, Some(&proxy.addr()));
    assert!(
        stderr.contains("HTTP/1.0 403 Access Denied By Policy"),
        "{stderr:?}"
    );
    proxy.finish();
}

#[test]
fn refusal_after_interim_reply_is_still_a_refusal() {
    let proxy = FakeProxy::replying("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 403 Forbidden\r\n\r\n");
    let assert = gimlet()
        .args([&proxy.addr(), "example.test", "22"])
        .assert();
    let stderr = assert_failure(assert.get_output(), 4, Some(&proxy.addr()));
    assert!(stderr.contains("HTTP/1.1 403 Forbidden"), "{stderr:?}");
    proxy.finish();
}

#[test]
fn quiet_refusal_prints_nothing_but_keeps_the_code() {
    let proxy = FakeProxy::replying("HTTP/1.1 403 Forbidden\r\n\r\n");
    gimlet()
        .args(["-q", &proxy.addr(), "example.test", "22"])
        .assert()
        .code(4)
        .stdout("")
        .stderr("");
    proxy.finish();
}

/// Runs gimlet against a proxy running `script` and expects a malformed
/// reply failure.
#[track_caller]
fn assert_malformed(script: impl Fn(&mut Session) + Send + Sync + 'static) -> String {
    let proxy = FakeProxy::start(script);
    let assert = gimlet()
        .args([
            "--connect-timeout",
            "10",
            &proxy.addr(),
            "example.test",
            "22",
        ])
        .assert();
    let stderr = assert_failure(assert.get_output(), 6, Some(&proxy.addr()));
    proxy.finish();
    stderr
}

#[test]
fn ssh_banner_instead_of_reply_is_malformed() {
    assert_malformed(|s| {
        s.send("SSH-2.0-OpenSSH_9.6\r\n");
        s.shutdown_write();
        s.wait_for_close();
    });
}

#[test]
fn ssh_banner_held_open_is_rejected_without_waiting_for_more() {
    // A real SSH server sends its banner and then waits; gimlet must not wait
    // for a blank line that never comes (the connect timeout is 10s, and a
    // timeout would be a different exit code).
    assert_malformed(|s| {
        s.send("SSH-2.0-OpenSSH_9.6\r\n");
        s.wait_for_close();
    });
}

#[test]
fn non_numeric_status_is_malformed() {
    for reply in [
        "HTTP/1.1 2OO OK\r\n\r\n",
        "HTTP/1.1 OK\r\n\r\n",
        "ICY 200 OK\r\n\r\n",
    ] {
        assert_malformed(move |s| {
            s.send_lossy(reply);
            s.wait_for_close();
        });
    }
}

#[test]
fn binary_junk_reply_is_malformed() {
    assert_malformed(|s| {
        let mut junk = Prng::bytes(0x5eed, 512);
        junk[0] = 0x00;
        junk[1] = 0xff;
        s.send_lossy(&junk);
        s.shutdown_write();
        s.wait_for_close();
    });
}

#[test]
fn proxy_closing_mid_headers_is_malformed() {
    assert_malformed(|s| {
        s.send("HTTP/1.1 200 Connection established\r\nProxy-Agent: x\r\n");
        s.shutdown_write();
        s.wait_for_close();
    });
}

#[test]
fn proxy_closing_mid_status_line_is_malformed() {
    assert_malformed(|s| {
        s.send("HTTP/1.1 20");
        s.shutdown_write();
        s.wait_for_close();
    });
}

#[test]
fn proxy_closing_before_any_reply_is_malformed() {
    assert_malformed(|s| {
        s.shutdown_write();
        s.wait_for_close();
    });
}

#[test]
fn oversized_reply_head_is_malformed() {
    // 70 headers of 1 KiB each: over 64 KiB but under 100 headers.
    assert_malformed(|s| {
        let mut reply = String::from("HTTP/1.1 200 OK\r\n");
        for i in 0..70 {
            reply.push_str(&format!("X-Pad-{i}: {}\r\n", "p".repeat(1000)));
        }
        reply.push_str("\r\n");
        s.send_lossy(reply);
        s.wait_for_close();
    });
}

#[test]
fn endless_reply_head_is_cut_off() {
    // Header bytes keep coming and never end; gimlet must give up at the cap
    // rather than buffer forever or wait for the timeout.
    assert_malformed(|s| {
        s.send("HTTP/1.1 200 OK\r\n");
        let line = format!("X-Filler: {}\r\n", "f".repeat(100));
        for _ in 0..20_000 {
            if !s.send_lossy(&line) {
                break;
            }
        }
        s.wait_for_close();
    });
}

#[test]
fn more_than_100_reply_headers_is_malformed() {
    assert_malformed(|s| {
        let mut reply = String::from("HTTP/1.1 200 OK\r\n");
        for i in 0..101 {
            reply.push_str(&format!("X-H{i}: v\r\n"));
        }
        reply.push_str("\r\n");
        s.send_lossy(reply);
        s.wait_for_close();
    });
}

#[test]
fn malformed_reply_message_is_one_line_even_for_binary_junk() {
    let stderr = assert_malformed(|s| {
        s.send_lossy(b"\x1b[2J\r\n\x07\x00garbage\n\n");
        s.wait_for_close();
    });
    assert!(
        !stderr.contains('\x1b') && !stderr.contains('\x07') && !stderr.contains('\0'),
        "control characters from the proxy reached the terminal: {stderr:?}"
    );
}
