//! NTLMv2 (MS-NLMP): negotiate, challenge and authenticate on one connection;
//! the fake proxy checks the NTProofStr with its own computation.

use crate::support::*;

/// Runs gimlet with `-U user:password` through `proxy`.
fn gimlet_as(user: &str, password: &str, proxy: &FakeProxy) -> assert_cmd::Command {
    let mut cmd = gimlet();
    cmd.args([
        "-U",
        &format!("{user}:{password}"),
        &proxy.addr(),
        "example.test",
        "22",
    ]);
    cmd
}

/// Checks the three NTLM requests: bare, negotiate, authenticate.
#[track_caller]
fn assert_ntlm_messages(record: &Record, first: usize) {
    assert_eq!(proxy_authorization(&record.request(first)), None);
    let negotiate = proxy_authorization(&record.request(first + 1)).unwrap();
    assert!(
        negotiate.starts_with("NTLM TlRMTVNTUAABAAAA"),
        "not a negotiate message: {negotiate:?}"
    );
    let authenticate = proxy_authorization(&record.request(first + 2)).unwrap();
    assert!(
        authenticate.starts_with("NTLM TlRMTVNTUAADAAAA"),
        "not an authenticate message: {authenticate:?}"
    );
}

#[test]
fn ntlm_round_trip_on_one_connection_is_verified_by_the_proxy() {
    let proxy = AuthProxy::new("CORP\\nina", "N1na's pw")
        .offer(Offer::Ntlm)
        .start();
    let record = expect_tunnel(&mut gimlet_as("CORP\\nina", "N1na's pw", &proxy), &proxy);
    record.assert_requests(3);
    assert_eq!(record.connections, 1);
    assert!(record.same_connection(0, 1) && record.same_connection(1, 2));
    assert_ntlm_messages(&record, 0);
}

#[test]
fn ntlm_without_a_domain_sends_an_empty_domain() {
    // The proxy's check compares the domain field with "".
    let proxy = AuthProxy::new("nina", "pw").offer(Offer::Ntlm).start();
    let record = expect_tunnel(&mut gimlet_as("nina", "pw", &proxy), &proxy);
    record.assert_requests(3);
}

#[test]
fn ntlm_user_name_case_does_not_matter_but_is_sent_as_given() {
    // NTOWFv2 upper-cases the user name; the message carries it as typed.
    let proxy = AuthProxy::new("corp\\MiXeD.Case", "pw")
        .offer(Offer::Ntlm)
        .start();
    expect_tunnel(&mut gimlet_as("corp\\MiXeD.Case", "pw", &proxy), &proxy);
}

#[test]
fn ntlm_without_unicode_sends_oem_strings() {
    let mut proxy = AuthProxy::new("CORP\\nina", "pw").offer(Offer::Ntlm);
    proxy.ntlm = NtlmChallenge::oem();
    let proxy = proxy.start();
    let record = expect_tunnel(&mut gimlet_as("CORP\\nina", "pw", &proxy), &proxy);
    record.assert_requests(3);
}

#[test]
fn ntlm_is_preferred_over_basic() {
    for offers in [
        vec![Offer::Basic, Offer::Ntlm],
        vec![Offer::Ntlm, Offer::Basic],
    ] {
        let mut proxy = AuthProxy::new("CORP\\nina", "pw");
        proxy.offers = offers;
        let proxy = proxy.start();
        let record = expect_tunnel(&mut gimlet_as("CORP\\nina", "pw", &proxy), &proxy);
        record.assert_requests(3);
        assert_ntlm_messages(&record, 0);
    }
}

#[test]
fn ntlm_after_a_closing_first_407_starts_on_the_new_connection() {
    let mut proxy = AuthProxy::new("CORP\\nina", "pw").offer(Offer::Ntlm);
    proxy.first_407_closes = true;
    let proxy = proxy.start();
    let record = expect_tunnel(&mut gimlet_as("CORP\\nina", "pw", &proxy), &proxy);
    record.assert_requests(3);
    assert_eq!(record.connections, 2);
    assert!(!record.same_connection(0, 1));
    assert!(
        record.same_connection(1, 2),
        "negotiate and authenticate must share a connection"
    );
    assert_ntlm_messages(&record, 0);
}

#[test]
fn ntlm_challenge_on_a_closing_407_is_an_auth_failure() {
    let mut proxy = AuthProxy::new("CORP\\nina", "pw").offer(Offer::Ntlm);
    proxy.ntlm_challenge_closes = true;
    let proxy = proxy.start();
    let (stderr, record) = expect_failure(&mut gimlet_as("CORP\\nina", "pw", &proxy), &proxy, 5);
    assert!(
        stderr.contains("in the middle of NTLM"),
        "reason not given: {stderr:?}"
    );
    record.assert_requests(2);
    assert_eq!(
        record.connections, 1,
        "NTLM cannot go on on a new connection"
    );
}

#[test]
fn malformed_ntlm_challenges_are_auth_failures() {
    let valid = NtlmChallenge::new().message();
    let mut wrong_type = valid.clone();
    wrong_type[8] = 1;
    let mut bad_signature = valid.clone();
    bad_signature[..8].copy_from_slice(b"NTLMSSX\0");
    let challenges = [
        "NTLM".to_owned(),
        "NTLM !!!not base64!!!".to_owned(),
        format!("NTLM {}", base64(b"short")),
        format!("NTLM {}", base64(&valid[..31])),
        format!("NTLM {}", base64(&wrong_type)),
        format!("NTLM {}", base64(&bad_signature)),
        format!("NTLM {}", base64(&[0xffu8; 300])),
    ];
    for challenge in challenges {
        let mut proxy = AuthProxy::new("CORP\\nina", "pw").offer(Offer::Ntlm);
        proxy.ntlm_challenge_header = Some(challenge.clone());
        let proxy = proxy.start();
        let assert = gimlet_as("CORP\\nina", "pw", &proxy).assert();
        let out = assert.get_output();
        assert!(
            out.status.code().is_some(),
            "{challenge:?}: gimlet died: {:?}",
            out.status
        );
        let stderr = assert_failure(out, 5, Some(&proxy.addr()));
        assert!(!stderr.contains("pw"), "{challenge:?}: {stderr:?}");
        let record = proxy.finish();
        record.assert_requests(2);
    }
}

#[test]
fn ntlm_challenge_with_target_info_outside_it_is_answered_as_if_it_had_none() {
    // squid 5.7's ntlm_fake_auth flags TARGET_INFO but sends a 49-byte challenge whose bytes
    // 40-48 are "WORKGROU": gimlet must answer it (NTLMv2 over empty target info).
    let valid = NtlmChallenge::new().message();
    let mut info_outside = valid.clone();
    info_outside[44..48].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
    let mut info_too_long = valid.clone();
    info_too_long[40..42].copy_from_slice(&0xffffu16.to_le_bytes());
    let squid = "TlRMTVNTUAACAAAACQAJAK6qqqoHgoigYmYKPRbscE8AAAAAAAA6AFdPUktHUk9VUA==".to_owned();
    for challenge in [base64(&info_outside), base64(&info_too_long), squid] {
        let header = format!("NTLM {challenge}");
        let proxy = FakeProxy::conversation(move |head| {
            Ok(match proxy_authorization(head) {
                Some(v) if v.starts_with("NTLM TlRMTVNTUAABAAAA") => {
                    (challenge_407(&[&header]), Then::KeepOpen)
                }
                Some(v) if v.starts_with("NTLM TlRMTVNTUAADAAAA") => (OK.to_owned(), Then::Close),
                _ => (challenge_407(&["NTLM"]), Then::KeepOpen),
            })
        });
        let record = expect_tunnel(&mut gimlet_as("CORP\\nina", "pw", &proxy), &proxy);
        record.assert_requests(3);
    }
}

#[test]
fn ntlm_rejection_after_the_authenticate_message_is_an_auth_failure() {
    let challenge = NtlmChallenge::new();
    let proxy = FakeProxy::conversation(move |head| {
        let reply = match proxy_authorization(head) {
            Some(value) if value.starts_with("NTLM TlRMTVNTUAABAAAA") => {
                challenge_407(&[&challenge.header()])
            }
            _ => challenge_407(&["NTLM"]),
        };
        Ok((reply, Then::KeepOpen))
    });
    let (stderr, record) = expect_failure(&mut gimlet_as("CORP\\nina", "wrong", &proxy), &proxy, 5);
    assert!(
        stderr.contains("rejected the NTLM credentials for user") && stderr.contains("nina"),
        "{stderr:?}"
    );
    assert!(!stderr.contains("wrong"), "{stderr:?}");
    record.assert_requests(3);
    assert_ntlm_messages(&record, 0);
}

#[test]
fn ntlm_handles_non_ascii_user_domain_and_password() {
    let user = "ÉQUIPE\\zoë ünïcode";
    let password = "p@ss: w$rd ß€";
    let proxy = AuthProxy::new(user, password).offer(Offer::Ntlm).start();
    let record = expect_tunnel(&mut gimlet_as(user, password, &proxy), &proxy);
    record.assert_requests(3);
}
