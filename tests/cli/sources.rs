//! Where the credentials came from: `-v` names the user, the scheme and the source, a
//! rejection names the source, and `-v` says when `--proxy-auth basic` would save a 407.

use crate::support::*;

/// Runs `cmd` with `-v` against a proxy that asks for Basic and then grants; returns stderr.
#[track_caller]
fn verbose_tunnel(cmd: &mut assert_cmd::Command, proxy: &FakeProxy) -> String {
    let assert = cmd.arg("-v").assert();
    proxy.finish();
    let out = assert.get_output();
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    stderr
}

#[test]
fn verbose_names_the_user_scheme_and_source_of_each_way() {
    let file = scratch_file("auth-file", b"fay:f1le\n", 0o600);
    let netrc = scratch_file(
        "netrc",
        b"machine 127.0.0.1 login nat password n3trc\n",
        0o600,
    );
    let askpass = Askpass::answering(&["asked"]);
    let (file, netrc) = (file.display().to_string(), netrc.display().to_string());
    let program = askpass.program().display().to_string();
    // (what -v must say, environment, arguments; ADDR and PORT stand for the proxy's).
    type Case<'a> = (String, &'a [(&'a str, &'a str)], &'a [&'a str]);
    let cases: &[Case] = &[
        (
            "user \"uma\" from -U".into(),
            &[],
            &["-U", "uma:pw", "ADDR", "h.test", "22"],
        ),
        (
            "user \"ulf\" from the proxy URL".into(),
            &[],
            &["http://ulf:pw@ADDR", "h.test", "22"],
        ),
        (
            "user \"eve\" from GIMLET_PROXY_AUTH".into(),
            &[("GIMLET_PROXY_AUTH", "eve:pw")],
            &["ADDR", "h.test", "22"],
        ),
        (
            format!("user \"fay\" from --proxy-auth-file {file}"),
            &[],
            &["--proxy-auth-file", &file, "ADDR", "h.test", "22"],
        ),
        (
            format!("user \"fay\" from the AUTHFILE argument {file}"),
            &[],
            &["127.0.0.1", "PORT", "h.test", "22", &file],
        ),
        (
            format!("user \"nat\" from netrc file {netrc}"),
            &[],
            &["--netrc-file", &netrc, "ADDR", "h.test", "22"],
        ),
        (
            format!("user \"amy\" from the GIMLET_ASKPASS program {program}"),
            &[("GIMLET_ASKPASS", &program)],
            &["-U", "amy", "ADDR", "h.test", "22"],
        ),
    ];
    for (want, env, args) in cases {
        let proxy = FakeProxy::basic_challenge();
        let args = args.iter().map(|a| {
            a.replace("ADDR", &proxy.addr())
                .replace("PORT", &proxy.port())
        });
        let mut cmd = gimlet();
        cmd.envs(env.iter().copied()).args(args);
        let stderr = verbose_tunnel(&mut cmd, &proxy);
        assert!(
            stderr.contains(&format!("credentials for proxy {}: {want}\n", proxy.addr())),
            "{want}: {stderr}"
        );
        assert!(
            stderr.contains(&format!(
                "proxy {} asks for authentication (offers Basic); answering with Basic for {want}\n",
                proxy.addr()
            )),
            "{want}: {stderr}"
        );
        for secret in ["pw", "f1le", "n3trc", "asked"] {
            assert!(!stderr.contains(&format!(":{secret}")), "{stderr}");
        }
    }
}

#[test]
fn a_rejection_names_the_source_of_the_credentials() {
    let file = scratch_file("rejected-auth", b"rob:wrong\n", 0o600);
    for (args, env, source) in [
        (
            vec!["-U".to_owned(), "rob:wrong".to_owned()],
            None,
            "-U".to_owned(),
        ),
        (vec![], Some("rob:wrong"), "GIMLET_PROXY_AUTH".to_owned()),
        (
            vec!["--proxy-auth-file".to_owned(), file.display().to_string()],
            None,
            format!("--proxy-auth-file {}", file.display()),
        ),
    ] {
        let proxy = FakeProxy::conversation(|_| {
            Ok((challenge_407(&["Basic realm=\"corp\""]), Then::KeepOpen))
        });
        let mut cmd = gimlet();
        if let Some(pair) = env {
            cmd.env("GIMLET_PROXY_AUTH", pair);
        }
        let (stderr, _) = expect_failure(
            cmd.args(&args).args([&proxy.addr(), "example.test", "22"]),
            &proxy,
            5,
        );
        assert!(
            stderr.contains(&format!(
                "rejected the Basic credentials for user \"rob\" from {source}: \"HTTP/1.1 407"
            )),
            "{stderr:?}"
        );
        assert!(!stderr.contains("wrong"), "{stderr:?}");
    }
}

#[test]
fn verbose_hints_that_forcing_basic_saves_the_407() {
    let proxy = FakeProxy::basic_challenge();
    let stderr = verbose_tunnel(
        gimlet().args(["-U", "hal:pw", &proxy.addr(), "example.test", "22"]),
        &proxy,
    );
    assert!(
        stderr.contains("hint: --proxy-auth basic sends Basic credentials with the first request"),
        "{stderr}"
    );

    // Forced, the credentials go with the first request, and there is nothing to hint.
    let proxy = FakeProxy::basic_challenge();
    let stderr = verbose_tunnel(
        gimlet().args([
            "--proxy-auth",
            "basic",
            "-U",
            "hal:pw",
            &proxy.addr(),
            "example.test",
            "22",
        ]),
        &proxy,
    );
    assert!(
        stderr
            .contains("sending Basic credentials for user \"hal\" from -U with the first request"),
        "{stderr}"
    );
    assert!(!stderr.contains("hint:"), "{stderr}");

    // Without -v, nothing at all.
    let proxy = FakeProxy::basic_challenge();
    let record = expect_tunnel(
        gimlet().args(["-U", "hal:pw", &proxy.addr(), "example.test", "22"]),
        &proxy,
    );
    record.assert_requests(2);
}

#[test]
fn no_hint_when_the_proxy_offers_a_stronger_scheme_than_basic() {
    let proxy = AuthProxy::new("dee", "pw")
        .offer(Offer::Digest(DigestChallenge::new("SHA-256")))
        .offer(Offer::Basic)
        .start();
    let stderr = verbose_tunnel(
        gimlet().args(["-U", "dee:pw", &proxy.addr(), "example.test", "22"]),
        &proxy,
    );
    assert!(
        stderr.contains("answering with Digest for user \"dee\" from -U"),
        "{stderr}"
    );
    assert!(!stderr.contains("hint:"), "{stderr}");
}
