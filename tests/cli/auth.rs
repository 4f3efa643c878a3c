//! Proxy credentials: every way of supplying them, the exact Basic value on
//! the wire, 407 handling, credential-file safety and redaction.

use crate::support::*;

/// The Proxy-Authorization value in a request head, if any.
fn proxy_authorization(head: &str) -> Option<String> {
    head.split("\r\n")
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("proxy-authorization"))
        .map(|(_, value)| value.trim().to_owned())
}

fn basic(credentials: &str) -> String {
    format!("Basic {}", base64(credentials.as_bytes()))
}

/// Runs `cmd` (already given its arguments) against `proxy` and returns the
/// Proxy-Authorization value of the single request made.
#[track_caller]
fn authorization_sent(cmd: &mut assert_cmd::Command, proxy: &FakeProxy) -> Option<String> {
    cmd.assert().success().stdout("").stderr("");
    proxy_authorization(&proxy.finish().only_request())
}

#[test]
fn user_option_sends_preemptive_basic_credentials() {
    let proxy = FakeProxy::accept_and_close();
    let sent = authorization_sent(
        gimlet().args(["-U", "alice:s3cret", &proxy.addr(), "example.test", "22"]),
        &proxy,
    );
    assert_eq!(sent, Some(basic("alice:s3cret")));
}

#[test]
fn password_may_contain_colons_at_signs_and_non_ascii() {
    let proxy = FakeProxy::accept_and_close();
    let sent = authorization_sent(
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
    assert_eq!(sent, Some(basic("bob:pässwörd:@$")));
    assert_eq!(
        basic("bob:pässwörd:@$"),
        "Basic Ym9iOnDDpHNzd8O2cmQ6QCQ=",
        "test's own base64 is off"
    );
}

#[test]
fn url_userinfo_is_percent_decoded() {
    let proxy = FakeProxy::accept_and_close();
    let url = format!(
        "http://b%C3%B6b%40corp:p%C3%A4ss%3Aw%40rd%24@127.0.0.1:{}",
        proxy.port()
    );
    let sent = authorization_sent(gimlet().args(["-p", &url, "example.test", "22"]), &proxy);
    assert_eq!(sent, Some(basic("böb@corp:päss:w@rd$")));
}

#[test]
fn url_userinfo_works_as_positional_proxy_too() {
    let proxy = FakeProxy::accept_and_close();
    let url = format!("http://carol:pw%20with%20spaces@127.0.0.1:{}", proxy.port());
    let sent = authorization_sent(gimlet().args([&url, "example.test", "22"]), &proxy);
    assert_eq!(sent, Some(basic("carol:pw with spaces")));
}

#[test]
fn environment_variable_supplies_credentials() {
    let proxy = FakeProxy::accept_and_close();
    let sent = authorization_sent(
        gimlet()
            .env("GIMLET_PROXY_AUTH", "dave:env:pässword@")
            .args([&proxy.addr(), "example.test", "22"]),
        &proxy,
    );
    assert_eq!(sent, Some(basic("dave:env:pässword@")));
}

#[test]
fn auth_file_option_uses_the_first_line() {
    let file = scratch_file(
        "auth",
        "erin:file:pässword@x\nsecond:line\n".as_bytes(),
        0o600,
    );
    let proxy = FakeProxy::accept_and_close();
    let sent = authorization_sent(
        gimlet()
            .arg("--proxy-auth-file")
            .arg(&file)
            .args([&proxy.addr(), "example.test", "22"]),
        &proxy,
    );
    assert_eq!(sent, Some(basic("erin:file:pässword@x")));
}

#[test]
fn auth_file_without_trailing_newline_is_read_whole() {
    let file = scratch_file("auth-nonl", b"frank:no-newline", 0o600);
    let proxy = FakeProxy::accept_and_close();
    let sent = authorization_sent(
        gimlet()
            .arg("--proxy-auth-file")
            .arg(&file)
            .args([&proxy.addr(), "example.test", "22"]),
        &proxy,
    );
    assert_eq!(sent, Some(basic("frank:no-newline")));
}

#[test]
fn corkscrew_authfile_argument_supplies_credentials() {
    let file = scratch_file("corkscrew-auth", "gina:cork:screw@\n".as_bytes(), 0o600);
    let proxy = FakeProxy::accept_and_close();
    let sent = authorization_sent(
        gimlet()
            .args(["127.0.0.1", &proxy.port(), "example.test", "22"])
            .arg(&file),
        &proxy,
    );
    assert_eq!(sent, Some(basic("gina:cork:screw@")));
}

#[test]
fn auth_file_readable_by_others_is_refused() {
    for mode in [0o644, 0o640, 0o604, 0o610] {
        let file = scratch_file("auth-open", b"henry:exposed\n", mode);
        let proxy = FakeProxy::accept_and_close();
        let assert = gimlet()
            .arg("--proxy-auth-file")
            .arg(&file)
            .args([&proxy.addr(), "example.test", "22"])
            .assert();
        let stderr = assert_failure(assert.get_output(), 2, None);
        assert!(
            stderr.contains("chmod 600"),
            "mode {mode:o}: no `chmod 600` hint in {stderr:?}"
        );
        assert!(!stderr.contains("exposed"), "password leaked: {stderr:?}");
        assert_eq!(proxy.connections(), 0, "mode {mode:o}: contacted the proxy");
    }
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
    // Answer 407 to every request on the connection, and record them all.
    let proxy = FakeProxy::start(|s| {
        loop {
            let reply = "HTTP/1.1 407 Proxy Authentication Required\r\n\
                         Proxy-Authenticate: Basic realm=\"corp\"\r\n\
                         Content-Length: 0\r\n\r\n";
            if !s.send_lossy(reply) || s.read_request().is_none() {
                break;
            }
        }
    });
    let assert = gimlet()
        .args(["-U", "ivan:wrong", &proxy.addr(), "example.test", "22"])
        .assert();
    let stderr = assert_failure(assert.get_output(), 5, Some(&proxy.addr()));
    assert!(!stderr.contains("wrong"), "password leaked: {stderr:?}");
    assert!(
        !stderr.contains(&base64(b"ivan:wrong")),
        "credential leaked: {stderr:?}"
    );
    let record = proxy.finish();
    let request = record.only_request();
    assert_eq!(
        proxy_authorization(&request),
        Some(basic("ivan:wrong")),
        "credentials must be sent on the first request"
    );
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

#[test]
fn very_verbose_shows_the_request_with_credentials_redacted() {
    let proxy = FakeProxy::accept_and_close();
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
        contains_ignore_case(&stderr, "Proxy-Authorization"),
        "redacted header not shown at -vv: {stderr:?}"
    );
    assert_no_secret(&stderr, "alice");
    proxy.finish();
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
    let replies = [
        OK,
        "HTTP/1.1 403 Forbidden\r\n\r\n",
        "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"x\"\r\n\r\n",
    ];
    for source in ["option", "url", "environment"] {
        for reply in replies {
            for verbosity in [None, Some("-v"), Some("-vv")] {
                let proxy = FakeProxy::start(move |s| {
                    s.send(reply);
                    s.shutdown_write();
                    s.wait_for_close();
                });
                let mut cmd = gimlet_with_secret_from(source, &proxy);
                cmd.args(["example.test", "22"]);
                if let Some(flag) = verbosity {
                    cmd.arg(flag);
                }
                let assert = cmd.assert();
                let out = assert.get_output();
                let stderr = text(&out.stderr);
                assert!(
                    out.status.code().is_some(),
                    "{source}/{verbosity:?}: gimlet died: {stderr:?}"
                );
                assert_no_secret(&stderr, "alice");
                let request = proxy.finish().only_request();
                assert_eq!(
                    proxy_authorization(&request),
                    Some(basic(&format!("alice:{SECRET}"))),
                    "{source}: wrong credentials sent"
                );
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
