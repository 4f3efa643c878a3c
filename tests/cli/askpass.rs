//! Asking for credentials when the proxy wants them and none were given:
//! `GIMLET_ASKPASS`, and `SSH_ASKPASS` when there is no terminal (the tests'
//! gimlet never has one).

use crate::support::*;

/// Checks the default exchange with a Basic-challenging proxy and returns the
/// credentials sent after the 407.
#[track_caller]
fn basic_sent(cmd: &mut assert_cmd::Command, proxy: &FakeProxy) -> String {
    let record = expect_tunnel(cmd, proxy);
    record.assert_requests(2);
    assert_eq!(proxy_authorization(&record.request(0)), None);
    assert!(record.same_connection(0, 1));
    proxy_authorization(&record.request(1)).expect("no credentials after the 407")
}

#[test]
fn gimlet_askpass_supplies_user_and_password_after_a_407() {
    let askpass = Askpass::answering(&["pat", "p@ss: w$rd ü"]);
    let proxy = FakeProxy::basic_challenge();
    let sent = basic_sent(
        gimlet().env("GIMLET_ASKPASS", askpass.program()).args([
            &proxy.addr(),
            "example.test",
            "22",
        ]),
        &proxy,
    );
    assert_eq!(sent, basic("pat:p@ss: w$rd ü"));
    let prompts = askpass.prompts();
    assert_eq!(
        prompts.len(),
        2,
        "expected a user and a password prompt: {prompts:?}"
    );
    assert!(
        contains_ignore_case(&prompts[0], "user"),
        "first prompt should ask for the user name: {prompts:?}"
    );
    assert!(
        contains_ignore_case(&prompts[1], "password") && prompts[1].contains("pat"),
        "second prompt should ask for pat's password: {prompts:?}"
    );
    for prompt in &prompts {
        assert!(
            prompt.contains(&proxy.addr()),
            "prompt should name the proxy: {prompt:?}"
        );
    }
}

#[test]
fn ssh_askpass_is_used_when_there_is_no_terminal() {
    let askpass = Askpass::answering(&["sam", "s3cret"]);
    let proxy = FakeProxy::basic_challenge();
    let sent = basic_sent(
        gimlet()
            .env("SSH_ASKPASS", askpass.program())
            .args([&proxy.addr(), "example.test", "22"]),
        &proxy,
    );
    assert_eq!(sent, basic("sam:s3cret"));
    assert_eq!(askpass.prompts().len(), 2);
}

#[test]
fn gimlet_askpass_is_preferred_over_ssh_askpass() {
    let ours = Askpass::answering(&["pat", "pw"]);
    let ssh = Askpass::answering(&["sam", "s3cret"]);
    let proxy = FakeProxy::basic_challenge();
    let sent = basic_sent(
        gimlet()
            .env("GIMLET_ASKPASS", ours.program())
            .env("SSH_ASKPASS", ssh.program())
            .args([&proxy.addr(), "example.test", "22"]),
        &proxy,
    );
    assert_eq!(sent, basic("pat:pw"));
    assert_eq!(ssh.prompts(), Vec::<String>::new(), "SSH_ASKPASS was run");
}

#[test]
fn askpass_answers_work_with_digest_and_ntlm() {
    for offer in [Offer::Digest(DigestChallenge::new("MD5")), Offer::Ntlm] {
        let askpass = Askpass::answering(&["CORP\\pat", "p@ss: w$rd ü"]);
        let proxy = AuthProxy::new("CORP\\pat", "p@ss: w$rd ü")
            .offer(offer)
            .start();
        expect_tunnel(
            gimlet().env("GIMLET_ASKPASS", askpass.program()).args([
                &proxy.addr(),
                "example.test",
                "22",
            ]),
            &proxy,
        );
        assert_eq!(askpass.prompts().len(), 2);
    }
}

#[test]
fn askpass_that_fails_is_an_auth_failure() {
    for variable in ["GIMLET_ASKPASS", "SSH_ASKPASS"] {
        let askpass = Askpass::failing();
        let proxy = FakeProxy::basic_challenge();
        let (_, record) = expect_failure(
            gimlet()
                .env(variable, askpass.program())
                .args([&proxy.addr(), "example.test", "22"]),
            &proxy,
            5,
        );
        record.only_request();
        assert_eq!(
            askpass.prompts().len(),
            1,
            "{variable}: asked again after failing"
        );
    }
}

#[test]
fn askpass_that_cannot_be_run_is_an_auth_failure() {
    let proxy = FakeProxy::basic_challenge();
    let (_, record) = expect_failure(
        gimlet()
            .env("GIMLET_ASKPASS", scratch_path("no-such-askpass"))
            .args([&proxy.addr(), "example.test", "22"]),
        &proxy,
        5,
    );
    record.only_request();
}

#[test]
fn user_option_without_password_asks_for_it_before_connecting() {
    let askpass = Askpass::answering(&["0nly-the-pw"]);
    let proxy = FakeProxy::basic_challenge();
    let sent = basic_sent(
        gimlet().env("GIMLET_ASKPASS", askpass.program()).args([
            "-U",
            "uma",
            &proxy.addr(),
            "example.test",
            "22",
        ]),
        &proxy,
    );
    assert_eq!(sent, basic("uma:0nly-the-pw"));
    let prompts = askpass.prompts();
    assert_eq!(
        prompts.len(),
        1,
        "only the password should be asked: {prompts:?}"
    );
    assert!(prompts[0].contains("uma"), "{prompts:?}");

    // Proof that the question comes before the connection: when it fails,
    // the proxy never hears from gimlet.
    let failing = Askpass::failing();
    let proxy = FakeProxy::basic_challenge();
    let assert = gimlet()
        .env("GIMLET_ASKPASS", failing.program())
        .args(["-U", "uma", &proxy.addr(), "example.test", "22"])
        .assert();
    assert_failure(assert.get_output(), 5, None);
    assert_eq!(proxy.connections(), 0, "connected before asking");
}

#[test]
fn user_option_without_password_and_no_way_to_ask_is_an_auth_failure() {
    let proxy = FakeProxy::basic_challenge();
    let assert = gimlet()
        .args(["-U", "uma", &proxy.addr(), "example.test", "22"])
        .assert();
    let stderr = assert_failure(assert.get_output(), 5, None);
    assert!(stderr.contains("uma"), "{stderr:?}");
    assert_eq!(proxy.connections(), 0);
}

#[test]
fn askpass_is_not_run_when_the_proxy_does_not_ask() {
    let askpass = Askpass::answering(&["pat", "pw"]);
    let proxy = FakeProxy::accept_and_close();
    expect_tunnel(
        gimlet()
            .env("GIMLET_ASKPASS", askpass.program())
            .env("SSH_ASKPASS", askpass.program())
            .args([&proxy.addr(), "example.test", "22"]),
        &proxy,
    );
    assert_eq!(askpass.prompts(), Vec::<String>::new());
}

#[test]
fn askpass_is_not_run_when_credentials_were_given() {
    let askpass = Askpass::answering(&["pat", "pw"]);
    let proxy = FakeProxy::basic_challenge();
    let sent = basic_sent(
        gimlet().env("GIMLET_ASKPASS", askpass.program()).args([
            "-U",
            "alice:s3cret",
            &proxy.addr(),
            "example.test",
            "22",
        ]),
        &proxy,
    );
    assert_eq!(sent, basic("alice:s3cret"));
    assert_eq!(askpass.prompts(), Vec::<String>::new());
}

#[test]
fn askpass_never_reads_the_tunnel_stdin() {
    let askpass = Askpass::answering(&["pat", "pw"]);
    let proxy = FakeProxy::start(|s| {
        s.send(challenge_407(&["Basic realm=\"r\""]));
        if s.read_request().is_some() {
            s.send(OK);
            s.echo();
        }
    });
    gimlet()
        .env("GIMLET_ASKPASS", askpass.program())
        .args([&proxy.addr(), "example.test", "22"])
        .write_stdin("tunnel data, not a password\n")
        .assert()
        .success()
        .stdout("tunnel data, not a password\n")
        .stderr("");
    assert_eq!(askpass.stdin_seen(), b"", "askpass read the tunnel's stdin");
    let record = proxy.finish();
    assert_eq!(
        proxy_authorization(&record.request(1)),
        Some(basic("pat:pw"))
    );
}

#[test]
fn askpass_answers_never_reach_stderr() {
    let askpass = Askpass::answering(&["pat", "Sup3rS3cretPw"]);
    for verbosity in ["-v", "-vv"] {
        for offer in [
            Offer::Basic,
            Offer::Digest(DigestChallenge::new("SHA-256")),
            Offer::Ntlm,
        ] {
            askpass.reset();
            let proxy = AuthProxy::new("pat", "Sup3rS3cretPw").offer(offer).start();
            let assert = gimlet()
                .env("GIMLET_ASKPASS", askpass.program())
                .args([verbosity, &proxy.addr(), "example.test", "22"])
                .assert();
            proxy.finish();
            let stderr = text(&assert.get_output().stderr);
            assert!(assert.get_output().status.success(), "{stderr:?}");
            assert!(
                !stderr.contains("Sup3rS3cretPw"),
                "password on stderr: {stderr:?}"
            );
            assert!(
                !stderr.contains(&base64(b"pat:Sup3rS3cretPw")),
                "credential on stderr: {stderr:?}"
            );
        }
    }
}
