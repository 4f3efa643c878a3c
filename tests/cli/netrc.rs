//! Credentials from a netrc file: `--netrc-file FILE` and `--netrc`
//! (`$HOME/.netrc`), the entry for the proxy host or `default`, the file's
//! syntax, and its permissions.

use crate::support::*;

/// A netrc file with mode 0600.
fn netrc(contents: &str) -> std::path::PathBuf {
    scratch_file("netrc", contents.as_bytes(), 0o600)
}

/// Runs gimlet (proxy and netrc options in `args`, target added) against a
/// Basic-challenging `proxy` and returns the Basic value sent after the 407.
#[track_caller]
fn basic_sent(cmd: &mut assert_cmd::Command, proxy: &FakeProxy) -> String {
    let record = expect_tunnel(cmd.args(["example.test", "22"]), proxy);
    record.assert_requests(2);
    assert_eq!(proxy_authorization(&record.request(0)), None);
    assert!(record.same_connection(0, 1));
    proxy_authorization(&record.request(1)).expect("no credentials after the 407")
}

#[test]
fn netrc_file_machine_entry_supplies_credentials() {
    let file = netrc(
        "machine proxy.example login wrong password wrong\n\
         machine 127.0.0.1 login nina password n1na:p@ss$\n\
         default login fallback password fallback\n",
    );
    let proxy = FakeProxy::basic_challenge();
    let sent = basic_sent(
        gimlet().arg("--netrc-file").arg(&file).arg(proxy.addr()),
        &proxy,
    );
    assert_eq!(sent, basic("nina:n1na:p@ss$"));
}

#[test]
fn netrc_default_entry_applies_when_no_machine_matches() {
    let file = netrc(
        "machine proxy.example login wrong password wrong\n\
         default login fallback password f4llback\n",
    );
    let proxy = FakeProxy::basic_challenge();
    let sent = basic_sent(
        gimlet().arg("--netrc-file").arg(&file).arg(proxy.addr()),
        &proxy,
    );
    assert_eq!(sent, basic("fallback:f4llback"));
}

#[test]
fn netrc_machine_entry_wins_over_an_earlier_default() {
    let file = netrc(
        "default login fallback password f4llback\n\
         machine 127.0.0.1 login nina password pw\n",
    );
    let proxy = FakeProxy::basic_challenge();
    let sent = basic_sent(
        gimlet().arg("--netrc-file").arg(&file).arg(proxy.addr()),
        &proxy,
    );
    assert_eq!(sent, basic("nina:pw"));
}

#[test]
fn netrc_quoted_tokens_comments_and_macdef_are_understood() {
    let file = netrc(
        "# credentials for the office proxy\n\
         macdef init\n\
         machine 127.0.0.1 login macro-body password not-an-entry\n\
         \n\
         machine other.example login x password y # trailing comment\n\
         machine 127.0.0.1\n\
         \tlogin \"nina s\" password \"p w\\\"d ü\" account ignored\n",
    );
    let proxy = FakeProxy::basic_challenge();
    let sent = basic_sent(
        gimlet().arg("--netrc-file").arg(&file).arg(proxy.addr()),
        &proxy,
    );
    assert_eq!(sent, basic("nina s:p w\"d ü"));
}

#[test]
fn netrc_machine_is_the_proxy_host_as_given() {
    let file = netrc(
        "machine 127.0.0.1 login by-address password pw\n\
         machine localhost login by-name password pw\n",
    );
    let proxy = FakeProxy::basic_challenge();
    let sent = basic_sent(
        gimlet()
            .arg("--netrc-file")
            .arg(&file)
            .args(["-4", &format!("localhost:{}", proxy.port())]),
        &proxy,
    );
    assert_eq!(sent, basic("by-name:pw"));
}

#[test]
fn netrc_machine_for_an_ipv6_proxy_has_no_brackets() {
    let Some(proxy) = FakeProxy::start_v6(|s| {
        if proxy_authorization(&text(s.request())).is_none() {
            s.send(challenge_407(&["Basic realm=\"r\""]));
            if s.read_request().is_none() {
                return;
            }
        }
        s.send(OK);
        s.shutdown_write();
        s.wait_for_close();
    }) else {
        return;
    };
    let file = netrc(
        "machine [::1] login bracketed password pw\n\
         machine ::1 login bare password pw\n",
    );
    let sent = basic_sent(
        gimlet().arg("--netrc-file").arg(&file).arg(proxy.addr()),
        &proxy,
    );
    assert_eq!(sent, basic("bare:pw"));
}

#[test]
fn netrc_login_without_password_asks_for_the_password() {
    let file = netrc("machine 127.0.0.1 login olga\n");
    let askpass = Askpass::answering(&["0lga's pässword"]);
    let proxy = FakeProxy::basic_challenge();
    let sent = basic_sent(
        gimlet()
            .env("GIMLET_ASKPASS", askpass.program())
            .arg("--netrc-file")
            .arg(&file)
            .arg(proxy.addr()),
        &proxy,
    );
    assert_eq!(sent, basic("olga:0lga's pässword"));
    let prompts = askpass.prompts();
    assert_eq!(
        prompts.len(),
        1,
        "asked more than the password: {prompts:?}"
    );
    assert!(
        prompts[0].contains("olga"),
        "prompt does not name the user: {prompts:?}"
    );
}

#[test]
fn netrc_entry_without_login_supplies_nothing() {
    // An entry needs a login; without one gimlet has no credentials.
    let file = netrc("machine 127.0.0.1 password orphan\n");
    let proxy = FakeProxy::basic_challenge();
    let (stderr, record) = expect_failure(
        gimlet()
            .arg("--netrc-file")
            .arg(&file)
            .args([&proxy.addr(), "example.test", "22"]),
        &proxy,
        5,
    );
    assert!(!stderr.contains("orphan"), "{stderr:?}");
    record.only_request();
}

#[test]
fn netrc_readable_by_others_is_refused() {
    assert_open_secret_file_refused(
        "--netrc-file",
        "machine 127.0.0.1 login nina password exposed\n",
        "exposed",
    );
}

#[test]
fn dot_netrc_readable_by_others_is_refused_too() {
    let home = scratch_dir("home-open");
    std::fs::write(home.join(".netrc"), "default login nina password exposed\n").unwrap();
    std::fs::set_permissions(
        home.join(".netrc"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let proxy = FakeProxy::accept_and_close();
    let assert = gimlet()
        .env("HOME", &home)
        .args(["--netrc", &proxy.addr(), "example.test", "22"])
        .assert();
    let stderr = assert_failure(assert.get_output(), 2, None);
    assert!(stderr.contains("chmod 600"), "{stderr:?}");
    assert_eq!(proxy.connections(), 0);
}

#[test]
fn netrc_option_reads_dot_netrc_in_home() {
    let home = scratch_dir("home");
    let file = home.join(".netrc");
    std::fs::write(&file, "machine 127.0.0.1 login homer password d'oh\n").unwrap();
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let proxy = FakeProxy::basic_challenge();
    let sent = basic_sent(
        gimlet().env("HOME", &home).arg("--netrc").arg(proxy.addr()),
        &proxy,
    );
    assert_eq!(sent, basic("homer:d'oh"));
}

#[test]
fn missing_dot_netrc_is_ignored() {
    let home = scratch_dir("home-empty");
    let proxy = FakeProxy::accept_and_close();
    let record = expect_tunnel(
        gimlet()
            .env("HOME", &home)
            .args(["--netrc", &proxy.addr(), "example.test", "22"]),
        &proxy,
    );
    assert_eq!(proxy_authorization(&record.only_request()), None);
}

#[test]
fn missing_netrc_file_is_a_usage_error() {
    let proxy = FakeProxy::accept_and_close();
    let assert = gimlet()
        .arg("--netrc-file")
        .arg(scratch_path("no-such-netrc"))
        .args([&proxy.addr(), "example.test", "22"])
        .assert();
    assert_failure(assert.get_output(), 2, None);
    assert_eq!(proxy.connections(), 0);
}

#[test]
fn netrc_is_not_read_without_the_option() {
    let home = scratch_dir("home-unused");
    let file = home.join(".netrc");
    std::fs::write(&file, "default login homer password unused\n").unwrap();
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let proxy = FakeProxy::basic_challenge();
    let (_, record) = expect_failure(
        gimlet()
            .env("HOME", &home)
            .args([&proxy.addr(), "example.test", "22"]),
        &proxy,
        5,
    );
    record.only_request();
}

#[test]
fn netrc_credentials_work_with_digest_and_ntlm() {
    let file = netrc("machine 127.0.0.1 login CORP\\nina password \"n1na pw\"\n");
    for offer in [Offer::Digest(DigestChallenge::new("SHA-256")), Offer::Ntlm] {
        let proxy = AuthProxy::new("CORP\\nina", "n1na pw").offer(offer).start();
        expect_tunnel(
            gimlet()
                .arg("--netrc-file")
                .arg(&file)
                .args([&proxy.addr(), "example.test", "22"]),
            &proxy,
        );
    }
}
