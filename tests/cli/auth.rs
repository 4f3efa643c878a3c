//! Proxy credentials: every way of supplying them, the exact Basic value on
//! the wire, how a 407 is answered (same connection or a new one), scheme
//! choice, rejection, credential-file safety and redaction.

use crate::support::*;

/// Runs `cmd` (arguments complete) against a [`FakeProxy::basic_challenge`]
/// proxy and checks the default exchange: a first request without
/// credentials, the 407, then the credentials on the same connection and a
/// working tunnel. Returns the Proxy-Authorization value of the retry.
#[track_caller]
fn basic_sent_after_407(cmd: &mut assert_cmd::Command, proxy: &FakeProxy) -> String {
    let record = expect_tunnel(cmd, proxy);
    record.assert_requests(2);
    assert_eq!(
        proxy_authorization(&record.request(0)),
        None,
        "credentials were sent before the proxy asked for them"
    );
    assert!(
        record.same_connection(0, 1),
        "the retry after a kept-alive 407 must use the same connection"
    );
    assert_eq!(record.connections, 1);
    proxy_authorization(&record.request(1)).expect("no credentials after the 407")
}

// ---------------------------------------------------------------------------
// Credential sources
// ---------------------------------------------------------------------------

#[test]
fn user_option_supplies_basic_credentials_after_a_407() {
    let proxy = FakeProxy::basic_challenge();
    let sent = basic_sent_after_407(
        gimlet().args(["-U", "alice:s3cret", &proxy.addr(), "example.test", "22"]),
        &proxy,
    );
    assert_eq!(sent, basic("alice:s3cret"));
}

#[test]
fn password_may_contain_colons_at_signs_and_non_ascii() {
    let proxy = FakeProxy::basic_challenge();
    let sent = basic_sent_after_407(
        gimlet().args([
            "--proxy-user",
            "bob:pässwörd:@$",
            &proxy.addr(),
            "example.test",
            "22",
        ]),
        &proxy,
    );
    // UTF-8 bytes, split at the first colon only.
    assert_eq!(sent, basic("bob:pässwörd:@$"));
    assert_eq!(
        basic("bob:pässwörd:@$"),
        "Basic Ym9iOnDDpHNzd8O2cmQ6QCQ=",
        "test's own base64 is off"
    );
}

#[test]
fn url_userinfo_is_percent_decoded() {
    let proxy = FakeProxy::basic_challenge();
    let url = format!(
        "http://b%C3%B6b%40corp:p%C3%A4ss%3Aw%40rd%24@127.0.0.1:{}",
        proxy.port()
    );
    let sent = basic_sent_after_407(gimlet().args(["-p", &url, "example.test", "22"]), &proxy);
    assert_eq!(sent, basic("böb@corp:päss:w@rd$"));
}

#[test]
fn url_userinfo_works_as_positional_proxy_too() {
    let proxy = FakeProxy::basic_challenge();
    let url = format!("http://carol:pw%20with%20spaces@127.0.0.1:{}", proxy.port());
    let sent = basic_sent_after_407(gimlet().args([&url, "example.test", "22"]), &proxy);
    assert_eq!(sent, basic("carol:pw with spaces"));
}

#[test]
fn environment_variable_supplies_credentials() {
    let proxy = FakeProxy::basic_challenge();
    let sent = basic_sent_after_407(
        gimlet()
            .env("GIMLET_PROXY_AUTH", "dave:env:pässword@")
            .args([&proxy.addr(), "example.test", "22"]),
        &proxy,
    );
    assert_eq!(sent, basic("dave:env:pässword@"));
}

#[test]
fn auth_file_option_uses_the_first_line() {
    let file = scratch_file(
        "auth",
        "erin:file:pässword@x\nsecond:line\n".as_bytes(),
        0o600,
    );
    let proxy = FakeProxy::basic_challenge();
    let sent = basic_sent_after_407(
        gimlet()
            .arg("--proxy-auth-file")
            .arg(&file)
            .args([&proxy.addr(), "example.test", "22"]),
        &proxy,
    );
    assert_eq!(sent, basic("erin:file:pässword@x"));
}

#[test]
fn auth_file_without_trailing_newline_is_read_whole() {
    let file = scratch_file("auth-nonl", b"frank:no-newline", 0o600);
    let proxy = FakeProxy::basic_challenge();
    let sent = basic_sent_after_407(
        gimlet()
            .arg("--proxy-auth-file")
            .arg(&file)
            .args([&proxy.addr(), "example.test", "22"]),
        &proxy,
    );
    assert_eq!(sent, basic("frank:no-newline"));
}

#[test]
fn corkscrew_authfile_argument_supplies_credentials() {
    let file = scratch_file("corkscrew-auth", "gina:cork:screw@\n".as_bytes(), 0o600);
    let proxy = FakeProxy::basic_challenge();
    let sent = basic_sent_after_407(
        gimlet()
            .args(["127.0.0.1", &proxy.port(), "example.test", "22"])
            .arg(&file),
        &proxy,
    );
    assert_eq!(sent, basic("gina:cork:screw@"));
}

#[test]
fn credential_sources_are_tried_in_order() {
    // URL userinfo, -U, the credential file, GIMLET_PROXY_AUTH, netrc: the
    // first one present wins, whatever comes after it.
    let file = scratch_file("auth-order", b"file:pw\n", 0o600);
    let netrc = scratch_file(
        "netrc-order",
        b"machine 127.0.0.1 login netrc password pw\n",
        0o600,
    );
    let cases: [(&str, &[&str], &str); 5] = [
        ("url", &["url", "option", "file", "env", "netrc"], "url:pw"),
        ("option", &["option", "file", "env", "netrc"], "option:pw"),
        ("file", &["file", "env", "netrc"], "file:pw"),
        ("env", &["env", "netrc"], "env:pw"),
        ("netrc", &["netrc"], "netrc:pw"),
    ];
    for (winner, sources, expected) in cases {
        let proxy = FakeProxy::basic_challenge();
        let mut cmd = gimlet();
        if sources.contains(&"url") {
            cmd.args(["-p", &format!("http://url:pw@127.0.0.1:{}", proxy.port())]);
        } else {
            cmd.args(["-p", &format!("http://127.0.0.1:{}", proxy.port())]);
        }
        if sources.contains(&"option") {
            cmd.args(["-U", "option:pw"]);
        }
        if sources.contains(&"file") {
            cmd.arg("--proxy-auth-file").arg(&file);
        }
        if sources.contains(&"env") {
            cmd.env("GIMLET_PROXY_AUTH", "env:pw");
        }
        if sources.contains(&"netrc") {
            cmd.arg("--netrc-file").arg(&netrc);
        }
        cmd.args(["example.test", "22"]);
        let sent = basic_sent_after_407(&mut cmd, &proxy);
        assert_eq!(sent, basic(expected), "{winner} should have won");
    }
}

#[test]
fn auth_file_readable_by_others_is_refused() {
    assert_open_secret_file_refused("--proxy-auth-file", "henry:exposed\n", "exposed");
}

#[test]
fn missing_auth_file_is_a_usage_error() {
    let proxy = FakeProxy::accept_and_close();
    let assert = gimlet()
        .arg("--proxy-auth-file")
        .arg(scratch_path("does-not-exist"))
        .args([&proxy.addr(), "example.test", "22"])
        .assert();
    assert_failure(assert.get_output(), 2, None);
    assert_eq!(proxy.connections(), 0);
}

// ---------------------------------------------------------------------------
// When credentials are sent
// ---------------------------------------------------------------------------

#[test]
fn credentials_are_not_sent_to_a_proxy_that_does_not_ask() {
    let proxy = FakeProxy::accept_and_close();
    let record = expect_tunnel(
        gimlet().args(["-U", "alice:s3cret", &proxy.addr(), "example.test", "22"]),
        &proxy,
    );
    let request = record.only_request();
    assert_eq!(
        proxy_authorization(&request),
        None,
        "credentials sent unasked: {request:?}"
    );
}

#[test]
fn proxy_auth_basic_sends_credentials_with_the_first_request() {
    let proxy = FakeProxy::basic_challenge();
    let record = expect_tunnel(
        gimlet().args([
            "--proxy-auth",
            "basic",
            "-U",
            "alice:s3cret",
            &proxy.addr(),
            "example.test",
            "22",
        ]),
        &proxy,
    );
    assert_eq!(
        proxy_authorization(&record.only_request()),
        Some(basic("alice:s3cret"))
    );
}

#[test]
fn proxy_auth_basic_is_preemptive_even_when_the_proxy_prefers_digest() {
    let proxy = AuthProxy::new("alice", "s3cret")
        .offer(Offer::Digest(DigestChallenge::new("SHA-256")))
        .offer(Offer::Basic)
        .start();
    let record = expect_tunnel(
        gimlet().args([
            "--proxy-auth",
            "BASIC",
            "-U",
            "alice:s3cret",
            &proxy.addr(),
            "example.test",
            "22",
        ]),
        &proxy,
    );
    assert_eq!(
        proxy_authorization(&record.only_request()),
        Some(basic("alice:s3cret"))
    );
}

#[test]
fn unknown_proxy_auth_scheme_is_a_usage_error() {
    let proxy = FakeProxy::accept_and_close();
    let assert = gimlet()
        .args([
            "--proxy-auth",
            "kerberos",
            &proxy.addr(),
            "example.test",
            "22",
        ])
        .assert();
    assert_eq!(assert.get_output().status.code(), Some(2));
    assert_eq!(proxy.connections(), 0);
}

// ---------------------------------------------------------------------------
// Same connection or a new one
// ---------------------------------------------------------------------------

#[test]
fn credentials_follow_a_407_on_the_same_connection() {
    let proxy = AuthProxy::new("alice", "s3cret")
        .offer(Offer::Basic)
        .start();
    let record = expect_tunnel(
        gimlet().args(["-U", "alice:s3cret", &proxy.addr(), "example.test", "22"]),
        &proxy,
    );
    record.assert_requests(2);
    assert_eq!(record.connections, 1);
    assert!(record.same_connection(0, 1));
    assert_eq!(proxy_authorization(&record.request(0)), None);
    assert_eq!(
        proxy_authorization(&record.request(1)),
        Some(basic("alice:s3cret"))
    );
    // The retry is the same request with credentials added.
    let without = record.request(1).replace(
        &format!("Proxy-Authorization: {}\r\n", basic("alice:s3cret")),
        "",
    );
    assert_eq!(without, record.request(0));
}

#[test]
fn tunnel_after_the_retry_carries_data_both_ways() {
    let proxy = FakeProxy::start(|s| {
        s.send(challenge_407(&["Basic realm=\"r\""]));
        if s.read_request().is_some() {
            s.send(OK);
            s.echo();
        }
    });
    gimlet()
        .args(["-U", "alice:pw", &proxy.addr(), "example.test", "22"])
        .write_stdin("ping through the retried connection")
        .assert()
        .success()
        .stdout("ping through the retried connection")
        .stderr("");
    proxy.finish().assert_requests(2);
}

/// A proxy whose 407 is `reply_407` (with a Basic challenge) and that grants
/// any request with credentials. It never closes a connection by itself, so
/// only gimlet decides whether to reuse it.
fn proxy_with_407(reply_407: &'static str) -> FakeProxy {
    FakeProxy::conversation(move |head| {
        Ok(match proxy_authorization(head) {
            None => (reply_407.to_owned(), Then::KeepOpen),
            Some(_) => (OK.to_owned(), Then::Close),
        })
    })
}

/// Checks that gimlet retried with credentials on a second connection.
#[track_caller]
fn assert_retried_on_a_new_connection(proxy: &FakeProxy) {
    let record = expect_tunnel(
        gimlet().args(["-U", "alice:s3cret", &proxy.addr(), "example.test", "22"]),
        proxy,
    );
    record.assert_requests(2);
    assert_eq!(proxy_authorization(&record.request(0)), None);
    assert_eq!(
        proxy_authorization(&record.request(1)),
        Some(basic("alice:s3cret"))
    );
    assert_eq!(record.connections, 2, "expected a second connection");
    assert!(
        !record.same_connection(0, 1),
        "the retry went on the connection the proxy meant to close"
    );
}

#[test]
fn connection_close_on_the_407_sends_the_retry_on_a_new_connection() {
    assert_retried_on_a_new_connection(&proxy_with_407(
        "HTTP/1.1 407 Proxy Authentication Required\r\n\
         Proxy-Authenticate: Basic realm=\"r\"\r\n\
         Connection: close\r\nContent-Length: 0\r\n\r\n",
    ));
}

#[test]
fn proxy_connection_close_on_the_407_sends_the_retry_on_a_new_connection() {
    assert_retried_on_a_new_connection(&proxy_with_407(
        "HTTP/1.1 407 Proxy Authentication Required\r\n\
         Proxy-Authenticate: Basic realm=\"r\"\r\n\
         Proxy-Connection: close\r\nContent-Length: 0\r\n\r\n",
    ));
}

#[test]
fn http_1_0_407_without_keep_alive_sends_the_retry_on_a_new_connection() {
    assert_retried_on_a_new_connection(&proxy_with_407(
        "HTTP/1.0 407 Proxy Authentication Required\r\n\
         Proxy-Authenticate: Basic realm=\"r\"\r\n\
         Content-Length: 0\r\n\r\n",
    ));
}

#[test]
fn chunked_407_sends_the_retry_on_a_new_connection() {
    assert_retried_on_a_new_connection(&proxy_with_407(
        "HTTP/1.1 407 Proxy Authentication Required\r\n\
         Proxy-Authenticate: Basic realm=\"r\"\r\n\
         Transfer-Encoding: chunked\r\n\r\n5\r\ndenied\r\n0\r\n\r\n",
    ));
}

#[test]
fn proxy_407_without_content_length_sends_the_retry_on_a_new_connection() {
    // Without Content-Length the body runs until the proxy closes (RFC 9112
    // §6.3), so the connection cannot carry another request.
    let proxy = FakeProxy::conversation(|head| {
        Ok(match proxy_authorization(head) {
            None => (
                "HTTP/1.1 407 Proxy Authentication Required\r\n\
                 Proxy-Authenticate: Basic realm=\"r\"\r\n\
                 Content-Type: text/html\r\n\r\n\
                 <html><body>Authentication required</body></html>\n"
                    .to_owned(),
                Then::Close,
            ),
            Some(_) => (OK.to_owned(), Then::Close),
        })
    });
    assert_retried_on_a_new_connection(&proxy);
}

#[test]
fn http_1_0_407_with_keep_alive_retries_on_the_same_connection() {
    let proxy = proxy_with_407(
        "HTTP/1.0 407 Proxy Authentication Required\r\n\
         Proxy-Authenticate: Basic realm=\"r\"\r\n\
         Connection: keep-alive\r\nContent-Length: 0\r\n\r\n",
    );
    let record = expect_tunnel(
        gimlet().args(["-U", "alice:s3cret", &proxy.addr(), "example.test", "22"]),
        &proxy,
    );
    record.assert_requests(2);
    assert_eq!(record.connections, 1);
    assert!(record.same_connection(0, 1));
}

#[test]
fn proxy_407_body_is_skipped_before_the_retry_on_the_same_connection() {
    // The body is longer than one read and arrives in pieces; the retry's 200
    // must be read after it, not mistaken for part of it or vice versa.
    let body: String = "<p>Authentication required.</p>\n".repeat(1200);
    let proxy = FakeProxy::start(move |s| {
        let reply = format!(
            "HTTP/1.1 407 Proxy Authentication Required\r\n\
             Proxy-Authenticate: Basic realm=\"r\"\r\n\
             Content-Type: text/html\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        send_at(&mut s.stream, reply.as_bytes(), &[40, 150, 9000, 20000]);
        if s.read_request().is_some() {
            s.send(OK);
            s.send("tunnel bytes");
            s.shutdown_write();
            s.wait_for_close();
        }
    });
    let assert = gimlet()
        .args(["-U", "alice:s3cret", &proxy.addr(), "example.test", "22"])
        .assert();
    let record = proxy.finish();
    assert.success().stdout("tunnel bytes").stderr("");
    record.assert_requests(2);
    assert_eq!(record.connections, 1);
    assert_eq!(
        proxy_authorization(&record.request(1)),
        Some(basic("alice:s3cret"))
    );
}

#[test]
fn proxy_closing_a_kept_alive_connection_after_its_407_gets_the_retry_on_a_new_one() {
    // The 407 promises to keep the connection, then the proxy closes it
    // anyway (an idle timeout, say): gimlet reconnects once.
    let proxy = FakeProxy::conversation(|head| {
        Ok(match proxy_authorization(head) {
            None => (challenge_407(&["Basic realm=\"r\""]), Then::Close),
            Some(_) => (OK.to_owned(), Then::Close),
        })
    });
    let record = expect_tunnel(
        gimlet().args(["-U", "alice:s3cret", &proxy.addr(), "example.test", "22"]),
        &proxy,
    );
    assert_eq!(record.connections, 2);
    assert_eq!(
        record
            .requests
            .iter()
            .filter(|r| proxy_authorization(&text(r)) == Some(basic("alice:s3cret")))
            .count(),
        1,
        "one request with credentials should have got through: {record:?}"
    );
}

// ---------------------------------------------------------------------------
// Scheme choice
// ---------------------------------------------------------------------------

#[test]
fn digest_is_preferred_over_ntlm_and_ntlm_over_basic() {
    for (offers, expected) in [
        (
            vec![
                Offer::Basic,
                Offer::Ntlm,
                Offer::Digest(DigestChallenge::new("MD5")),
            ],
            "Digest",
        ),
        (vec![Offer::Basic, Offer::Ntlm], "NTLM"),
        (vec![Offer::Ntlm, Offer::Basic], "NTLM"),
    ] {
        let mut proxy = AuthProxy::new("alice", "s3cret");
        proxy.offers = offers;
        let proxy = proxy.start();
        let record = expect_tunnel(
            gimlet().args(["-U", "alice:s3cret", &proxy.addr(), "example.test", "22"]),
            &proxy,
        );
        let last = record.request(record.requests.len() - 1);
        assert_eq!(scheme_sent(&last).as_deref(), Some(expected));
    }
}

#[test]
fn unsupported_schemes_are_passed_over_for_basic() {
    let proxy = AuthProxy::new("alice", "s3cret")
        .offer(Offer::Other("Negotiate".to_owned()))
        .offer(Offer::Other("Kerberos".to_owned()))
        .offer(Offer::Basic)
        .start();
    let record = expect_tunnel(
        gimlet().args(["-U", "alice:s3cret", &proxy.addr(), "example.test", "22"]),
        &proxy,
    );
    record.assert_requests(2);
    assert_eq!(
        proxy_authorization(&record.request(1)),
        Some(basic("alice:s3cret"))
    );
}

#[test]
fn several_challenges_in_one_header_are_all_read() {
    let proxy = FakeProxy::conversation(|head| {
        Ok(match proxy_authorization(head) {
            None => (
                challenge_407(&["Negotiate, Basic realm=\"corp, main\", NTLM"]),
                Then::KeepOpen,
            ),
            Some(value) if value.starts_with("NTLM ") => (OK.to_owned(), Then::Close),
            Some(value) => return Err(format!("NTLM should have been chosen, got {value:?}")),
        })
    });
    let record = expect_tunnel(
        gimlet().args(["-U", "alice:s3cret", &proxy.addr(), "example.test", "22"]),
        &proxy,
    );
    assert_eq!(scheme_sent(&record.request(1)).as_deref(), Some("NTLM"));
}

#[test]
fn forced_scheme_is_used_even_when_a_stronger_one_is_offered() {
    let proxy = AuthProxy::new("CORP\\alice", "s3cret")
        .offer(Offer::Digest(DigestChallenge::new("SHA-256")))
        .offer(Offer::Ntlm)
        .offer(Offer::Basic)
        .start();
    let record = expect_tunnel(
        gimlet().args([
            "--proxy-auth",
            "ntlm",
            "-U",
            "CORP\\alice:s3cret",
            &proxy.addr(),
            "example.test",
            "22",
        ]),
        &proxy,
    );
    record.assert_requests(3);
    assert_eq!(scheme_sent(&record.request(2)).as_deref(), Some("NTLM"));
}

#[test]
fn forced_digest_against_a_basic_only_proxy_fails_naming_what_it_offers() {
    let proxy = AuthProxy::new("alice", "s3cret")
        .offer(Offer::Basic)
        .start();
    let (stderr, record) = expect_failure(
        gimlet().args([
            "--proxy-auth",
            "digest",
            "-U",
            "alice:s3cret",
            &proxy.addr(),
            "example.test",
            "22",
        ]),
        &proxy,
        5,
    );
    assert!(
        stderr.contains("Basic"),
        "offered scheme not named: {stderr:?}"
    );
    assert!(
        stderr.contains("Digest"),
        "forced scheme not named: {stderr:?}"
    );
    assert!(!stderr.contains("s3cret"), "password leaked: {stderr:?}");
    let request = record.only_request();
    assert_eq!(proxy_authorization(&request), None);
}

#[test]
fn negotiate_only_proxy_fails_naming_its_schemes_without_asking() {
    let askpass = Askpass::answering(&["alice", "s3cret"]);
    let proxy = AuthProxy::new("alice", "s3cret")
        .offer(Offer::Other("Negotiate".to_owned()))
        .offer(Offer::Other("Kerberos".to_owned()))
        .start();
    let (stderr, record) = expect_failure(
        gimlet()
            .env("GIMLET_ASKPASS", askpass.program())
            .env("SSH_ASKPASS", askpass.program())
            .args([&proxy.addr(), "example.test", "22"]),
        &proxy,
        5,
    );
    assert!(
        stderr.contains("Negotiate") && stderr.contains("Kerberos"),
        "offered schemes not named: {stderr:?}"
    );
    assert_eq!(
        askpass.prompts(),
        Vec::<String>::new(),
        "asked for credentials"
    );
    record.only_request();
}

// ---------------------------------------------------------------------------
// Failures
// ---------------------------------------------------------------------------

#[test]
fn proxy_407_without_credentials_exits_with_auth_code_naming_schemes() {
    let proxy = FakeProxy::replying(
        "HTTP/1.1 407 Proxy Authentication Required\r\n\
         Proxy-Authenticate: Negotiate\r\n\
         Proxy-Authenticate: Basic realm=\"corp\"\r\n\
         Content-Length: 0\r\n\r\n",
    );
    let assert = gimlet()
        .args([&proxy.addr(), "example.test", "22"])
        .assert();
    let stderr = assert_failure(assert.get_output(), 5, Some(&proxy.addr()));
    assert!(
        stderr.contains("Negotiate") && stderr.contains("Basic"),
        "offered schemes not named: {stderr:?}"
    );
    proxy.finish();
}

#[test]
fn proxy_407_without_credentials_does_not_read_a_password_from_stdin() {
    // With no terminal there is nobody to ask; stdin is the tunnel and must
    // not be taken for a password.
    let proxy = FakeProxy::start(|s| {
        s.send("HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"x\"\r\n\r\n");
        if s.read_request().is_some() {
            s.send("HTTP/1.1 403 Forbidden\r\n\r\n");
        }
        s.wait_for_close();
    });
    let assert = gimlet()
        .args([&proxy.addr(), "example.test", "22"])
        .write_stdin("alice:password-from-stdin\n")
        .assert();
    assert_failure(assert.get_output(), 5, Some(&proxy.addr()));
    let record = proxy.finish();
    assert_eq!(record.connections, 1);
    assert_eq!(record.requests.len(), 1, "gimlet retried: {record:?}");
}

#[test]
fn proxy_407_with_credentials_fails_without_retrying() {
    // Answer 407 to every request on the connection, and record them all:
    // gimlet asks once without credentials, once with, and gives up.
    let proxy =
        FakeProxy::conversation(|_| Ok((challenge_407(&["Basic realm=\"corp\""]), Then::KeepOpen)));
    let (stderr, record) = expect_failure(
        gimlet().args(["-U", "ivan:wrong", &proxy.addr(), "example.test", "22"]),
        &proxy,
        5,
    );
    assert!(!stderr.contains("wrong"), "password leaked: {stderr:?}");
    assert!(
        !stderr.contains(&base64(b"ivan:wrong")),
        "credential leaked: {stderr:?}"
    );
    assert!(
        stderr.contains("rejected the Basic credentials for user") && stderr.contains("ivan"),
        "rejection not explained: {stderr:?}"
    );
    record.assert_requests(2);
    assert_eq!(proxy_authorization(&record.request(0)), None);
    assert_eq!(
        proxy_authorization(&record.request(1)),
        Some(basic("ivan:wrong")),
        "credentials must be sent once the proxy asks"
    );
}

#[test]
fn preemptive_basic_rejected_with_407_fails_without_retrying() {
    let proxy =
        FakeProxy::conversation(|_| Ok((challenge_407(&["Basic realm=\"corp\""]), Then::KeepOpen)));
    let (stderr, record) = expect_failure(
        gimlet().args([
            "--proxy-auth",
            "basic",
            "-U",
            "ivan:wrong",
            &proxy.addr(),
            "example.test",
            "22",
        ]),
        &proxy,
        5,
    );
    assert!(stderr.contains("rejected"), "{stderr:?}");
    assert_eq!(
        proxy_authorization(&record.only_request()),
        Some(basic("ivan:wrong"))
    );
}

#[test]
fn rejection_on_a_new_connection_fails_without_retrying() {
    // Every 407 closes the connection: the credentials go on a second
    // connection, and a 407 there is final.
    let proxy = FakeProxy::conversation(|_| {
        Ok((
            challenge_407_with(&["Basic realm=\"corp\""], "Connection: close\r\n"),
            Then::Close,
        ))
    });
    let (_, record) = expect_failure(
        gimlet().args(["-U", "ivan:wrong", &proxy.addr(), "example.test", "22"]),
        &proxy,
        5,
    );
    record.assert_requests(2);
    assert_eq!(record.connections, 2);
}

#[test]
fn tinyproxy_401_after_wrong_credentials_is_an_auth_failure() {
    // tinyproxy answers wrong proxy credentials with 401 and WWW-Authenticate.
    let proxy = FakeProxy::conversation(|head| {
        Ok(match proxy_authorization(head) {
            None => (
                "HTTP/1.0 407 Proxy Authentication Required\r\n\
                 Server: tinyproxy/1.11.1\r\n\
                 Proxy-Authenticate: Basic realm=\"Tinyproxy\"\r\n\
                 Connection: keep-alive\r\nContent-Length: 0\r\n\r\n"
                    .to_owned(),
                Then::KeepOpen,
            ),
            Some(_) => (
                "HTTP/1.0 401 Unauthorized\r\n\
                 Server: tinyproxy/1.11.1\r\n\
                 WWW-Authenticate: Basic realm=\"Tinyproxy\"\r\n\
                 Content-Length: 0\r\n\r\n"
                    .to_owned(),
                Then::KeepOpen,
            ),
        })
    });
    let (stderr, record) = expect_failure(
        gimlet().args(["-U", "ivan:wrong", &proxy.addr(), "example.test", "22"]),
        &proxy,
        5,
    );
    assert!(stderr.contains("401"), "status not quoted: {stderr:?}");
    assert!(!stderr.contains("wrong"), "password leaked: {stderr:?}");
    record.assert_requests(2);
}

#[test]
fn proxy_407_without_proxy_authenticate_is_still_an_auth_failure() {
    let proxy = FakeProxy::replying("HTTP/1.1 407 Proxy Authentication Required\r\n\r\n");
    let assert = gimlet()
        .args([&proxy.addr(), "example.test", "22"])
        .assert();
    assert_failure(assert.get_output(), 5, Some(&proxy.addr()));
    proxy.finish();
}

#[test]
fn forbidden_after_credentials_is_a_refusal_not_an_auth_failure() {
    let proxy = AuthProxy::new("alice", "s3cret")
        .offer(Offer::Basic)
        .granting("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
        .start();
    let (stderr, _) = expect_failure(
        gimlet().args(["-U", "alice:s3cret", &proxy.addr(), "example.test", "22"]),
        &proxy,
        4,
    );
    assert!(stderr.contains("403"), "{stderr:?}");
}

// ---------------------------------------------------------------------------
// Secrets on stderr
// ---------------------------------------------------------------------------

const SECRET: &str = "Sup3rS3cretPw";

/// Asserts that neither the password nor the Basic credential appears.
#[track_caller]
fn assert_no_secret(stderr: &str, user: &str) {
    assert!(!stderr.contains(SECRET), "password on stderr: {stderr:?}");
    let credential = base64(format!("{user}:{SECRET}").as_bytes());
    assert!(
        !stderr.contains(&credential),
        "credential on stderr: {stderr:?}"
    );
}

/// Asserts that no Proxy-Authorization value gimlet sent appears on stderr
/// (only the scheme name may).
#[track_caller]
fn assert_no_credential_sent(stderr: &str, record: &Record) {
    for i in 0..record.requests.len() {
        if let Some(value) = proxy_authorization(&record.request(i)) {
            let (_, secret) = value.split_once(' ').unwrap_or(("", &value));
            assert!(
                !stderr.contains(secret),
                "credential sent in request {i} shown on stderr: {stderr:?}"
            );
            if let Some(start) = value.find("response=\"") {
                let response = &value[start + 10..start + 10 + 32];
                assert!(
                    !stderr.contains(response),
                    "Digest response shown on stderr: {stderr:?}"
                );
            }
        }
    }
}

#[test]
fn very_verbose_shows_the_request_with_credentials_redacted() {
    let proxy = FakeProxy::basic_challenge();
    let assert = gimlet()
        .args([
            "-vv",
            "-U",
            &format!("alice:{SECRET}"),
            &proxy.addr(),
            "example.test",
            "22",
        ])
        .assert()
        .success()
        .stdout("");
    let stderr = text(&assert.get_output().stderr);
    assert!(
        stderr.contains("CONNECT example.test:22 HTTP/1.1"),
        "request not shown at -vv: {stderr:?}"
    );
    assert!(
        stderr.contains("Proxy-Authorization: Basic <redacted>"),
        "redacted header not shown at -vv: {stderr:?}"
    );
    assert_no_secret(&stderr, "alice");
    let record = proxy.finish();
    record.assert_requests(2);
    assert_no_credential_sent(&stderr, &record);
}

/// gimlet pointed at `proxy` with alice's secret password given via
/// `source`; the target is still to be added.
fn gimlet_with_secret_from(source: &str, proxy: &FakeProxy) -> assert_cmd::Command {
    let mut cmd = gimlet();
    match source {
        "option" => cmd.args(["-U", &format!("alice:{SECRET}"), &proxy.addr()]),
        "url" => cmd.args([
            "-p",
            &format!("http://alice:{SECRET}@127.0.0.1:{}", proxy.port()),
        ]),
        "environment" => cmd
            .env("GIMLET_PROXY_AUTH", format!("alice:{SECRET}"))
            .arg(proxy.addr()),
        _ => unreachable!(),
    };
    cmd
}

#[test]
fn credentials_never_reach_stderr_at_any_verbosity() {
    let outcomes = [
        OK,
        "HTTP/1.1 403 Forbidden\r\n\r\n",
        "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"x\"\r\n\r\n",
    ];
    let schemes = [
        ("Basic", Offer::Basic),
        ("Digest", Offer::Digest(DigestChallenge::new("MD5"))),
        ("NTLM", Offer::Ntlm),
    ];
    for source in ["option", "url", "environment"] {
        for (scheme, offer) in &schemes {
            for outcome in outcomes {
                for verbosity in [None, Some("-v"), Some("-vv")] {
                    let what = format!("{source}/{scheme}/{outcome:?}/{verbosity:?}");
                    let proxy = AuthProxy::new("alice", SECRET)
                        .offer(offer.clone())
                        .granting(outcome)
                        .start();
                    let mut cmd = gimlet_with_secret_from(source, &proxy);
                    cmd.args(["example.test", "22"]);
                    if let Some(flag) = verbosity {
                        cmd.arg(flag);
                    }
                    let assert = cmd.assert();
                    let record = proxy.finish();
                    let out = assert.get_output();
                    let stderr = text(&out.stderr);
                    let expected = match &outcome[9..12] {
                        "200" => 0,
                        "403" => 4,
                        _ => 5,
                    };
                    assert_eq!(out.status.code(), Some(expected), "{what}: {stderr:?}");
                    assert_no_secret(&stderr, "alice");
                    assert_no_credential_sent(&stderr, &record);
                    let last = record.request(record.requests.len() - 1);
                    assert_eq!(
                        scheme_sent(&last).as_deref(),
                        Some(*scheme),
                        "{what}: wrong scheme"
                    );
                    if verbosity == Some("-vv") {
                        assert!(
                            stderr.contains(&format!("Proxy-Authorization: {scheme} <redacted>")),
                            "{what}: redacted header not shown: {stderr:?}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn password_in_a_bad_proxy_url_is_not_echoed() {
    let assert = gimlet()
        .args([
            "-p",
            &format!("http://alice:{SECRET}@127.0.0.1:notaport"),
            "example.test",
            "22",
        ])
        .assert();
    let stderr = assert_failure(assert.get_output(), 2, None);
    assert_no_secret(&stderr, "alice");
}

#[test]
fn password_of_an_unreachable_proxy_url_is_not_echoed() {
    let port = closed_port();
    let assert = gimlet()
        .args([
            "-v",
            "-p",
            &format!("http://alice:{SECRET}@127.0.0.1:{port}"),
            "example.test",
            "22",
        ])
        .assert();
    let out = assert.get_output();
    assert_eq!(out.status.code(), Some(3), "{:?}", text(&out.stderr));
    assert_no_secret(&text(&out.stderr), "alice");
}

// ---------------------------------------------------------------------------
// Awkward characters through every scheme
// ---------------------------------------------------------------------------

#[test]
fn credentials_with_awkward_characters_work_with_every_scheme() {
    // A user name with a space, `@` and non-ASCII letters; a password with
    // `:`, `@`, `$`, spaces and non-ASCII letters.
    let user = "zoë smith@corp";
    let password = "p@ss: w$rd ünïcode";
    for (offer, user) in [
        (Offer::Basic, user.to_owned()),
        (Offer::Digest(DigestChallenge::new("MD5")), user.to_owned()),
        (
            Offer::Digest(DigestChallenge::new("SHA-256")),
            user.to_owned(),
        ),
        (Offer::Ntlm, user.to_owned()),
        (Offer::Ntlm, format!("CÖRP\\{user}")),
    ] {
        let proxy = AuthProxy::new(&user, password).offer(offer.clone()).start();
        let record = expect_tunnel(
            gimlet()
                .env("GIMLET_PROXY_AUTH", format!("{user}:{password}"))
                .args([&proxy.addr(), "example.test", "22"]),
            &proxy,
        );
        let last = record.request(record.requests.len() - 1);
        assert!(
            proxy_authorization(&last).is_some(),
            "{offer:?}: {record:?}"
        );
    }
}
