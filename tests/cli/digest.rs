//! Digest authentication (RFC 7616): the fake proxy recomputes every response
//! from the request's own cnonce and nc and refuses wrong ones.

use crate::support::*;

/// Runs gimlet with `-U user:password` through a proxy offering `offers` and
/// expects the tunnel to open; returns what the proxy saw.
#[track_caller]
fn digest_round_trip(user: &str, password: &str, offers: Vec<Offer>) -> Record {
    let mut proxy = AuthProxy::new(user, password);
    proxy.offers = offers;
    let proxy = proxy.start();
    expect_tunnel(
        gimlet()
            .env("GIMLET_PROXY_AUTH", format!("{user}:{password}"))
            .args([&proxy.addr(), "example.test", "22"]),
        &proxy,
    )
}

/// The parsed Digest parameters of request `i`.
#[track_caller]
fn digest_params(record: &Record, i: usize) -> Vec<(String, String)> {
    let value = proxy_authorization(&record.request(i)).expect("no credentials");
    let list = value
        .strip_prefix("Digest ")
        .unwrap_or_else(|| panic!("not Digest: {value:?}"));
    auth_params(list).unwrap()
}

/// Checks the usual shape: a bare request, then one Digest answer on the same
/// connection.
#[track_caller]
fn assert_one_digest_retry(record: &Record) {
    record.assert_requests(2);
    assert_eq!(record.connections, 1);
    assert!(record.same_connection(0, 1));
    assert_eq!(proxy_authorization(&record.request(0)), None);
    assert_eq!(scheme_sent(&record.request(1)).as_deref(), Some("Digest"));
}

#[test]
fn digest_md5_round_trip_is_verified_by_the_proxy() {
    let record = digest_round_trip(
        "Mufasa",
        "Circle of Life",
        vec![Offer::Digest(DigestChallenge::new("MD5"))],
    );
    assert_one_digest_retry(&record);
    let params = digest_params(&record, 1);
    assert_eq!(param(&params, "uri").unwrap(), "example.test:22");
    assert_eq!(param(&params, "qop").unwrap(), "auth");
    assert_eq!(param(&params, "nc").unwrap(), "00000001");
    assert_eq!(param(&params, "algorithm").unwrap(), "MD5");
}

#[test]
fn digest_sha_256_round_trip_is_verified_by_the_proxy() {
    let record = digest_round_trip(
        "Mufasa",
        "Circle of Life",
        vec![Offer::Digest(DigestChallenge::new("SHA-256"))],
    );
    assert_one_digest_retry(&record);
    let params = digest_params(&record, 1);
    assert_eq!(param(&params, "algorithm").unwrap(), "SHA-256");
    assert_eq!(param(&params, "response").unwrap().len(), 64);
}

#[test]
fn digest_session_variants_are_verified_by_the_proxy() {
    for algorithm in ["MD5-sess", "SHA-256-sess"] {
        let record = digest_round_trip(
            "alice",
            "s3cret",
            vec![Offer::Digest(DigestChallenge::new(algorithm))],
        );
        assert_one_digest_retry(&record);
        assert_eq!(
            param(&digest_params(&record, 1), "algorithm").unwrap(),
            algorithm
        );
    }
}

#[test]
fn digest_without_algorithm_is_md5() {
    let record = digest_round_trip(
        "alice",
        "s3cret",
        vec![Offer::Digest(
            DigestChallenge::new("MD5").without_algorithm(),
        )],
    );
    assert_one_digest_retry(&record);
    assert_eq!(
        param(&digest_params(&record, 1), "response").unwrap().len(),
        32
    );
}

#[test]
fn digest_without_qop_gets_a_legacy_answer() {
    let record = digest_round_trip(
        "alice",
        "s3cret",
        vec![Offer::Digest(DigestChallenge::new("MD5").qop(None))],
    );
    assert_one_digest_retry(&record);
}

#[test]
fn digest_with_only_auth_int_hashes_the_empty_body() {
    let record = digest_round_trip(
        "alice",
        "s3cret",
        vec![Offer::Digest(
            DigestChallenge::new("SHA-256").qop(Some("auth-int")),
        )],
    );
    assert_one_digest_retry(&record);
    assert_eq!(
        param(&digest_params(&record, 1), "qop").unwrap(),
        "auth-int"
    );
}

#[test]
fn digest_is_preferred_over_basic_as_squid_offers_them() {
    // squid lists its schemes in its configured order, Digest before Basic,
    // one header each; other proxies put Basic first.
    for offers in [
        vec![Offer::Digest(DigestChallenge::new("MD5")), Offer::Basic],
        vec![Offer::Basic, Offer::Digest(DigestChallenge::new("MD5"))],
    ] {
        let record = digest_round_trip("alice", "s3cret", offers);
        assert_one_digest_retry(&record);
    }
}

#[test]
fn digest_and_basic_in_one_header_picks_digest() {
    let digest = DigestChallenge::new("MD5");
    let offer = format!("Basic realm=\"basic, realm\", {}", digest.header());
    let checker = digest.clone();
    let proxy = FakeProxy::conversation(move |head| {
        Ok(match proxy_authorization(head) {
            None => (challenge_407(&[&offer]), Then::KeepOpen),
            Some(value) => {
                checker.check(&value, "alice", "s3cret")?;
                (OK.to_owned(), Then::Close)
            }
        })
    });
    let record = expect_tunnel(
        gimlet().args(["-U", "alice:s3cret", &proxy.addr(), "example.test", "22"]),
        &proxy,
    );
    assert_one_digest_retry(&record);
}

#[test]
fn sha_256_is_preferred_over_md5_among_digest_challenges() {
    // RFC 7616 §3.7: a server lists SHA-256 first or last; either way the
    // client takes the strongest it supports.
    for offers in [
        vec![
            Offer::Digest(DigestChallenge::new("MD5")),
            Offer::Digest(DigestChallenge::new("SHA-256")),
        ],
        vec![
            Offer::Digest(DigestChallenge::new("SHA-256")),
            Offer::Digest(DigestChallenge::new("MD5")),
        ],
    ] {
        let record = digest_round_trip("alice", "s3cret", offers);
        assert_one_digest_retry(&record);
        assert_eq!(
            param(&digest_params(&record, 1), "algorithm").unwrap(),
            "SHA-256"
        );
    }
}

#[test]
fn unsupported_digest_algorithm_is_passed_over_for_basic() {
    let mut odd = DigestChallenge::new("MD5");
    odd.algorithm = Some("SHA3-256".to_owned());
    let proxy = FakeProxy::conversation(move |head| {
        Ok(match proxy_authorization(head) {
            None => (
                challenge_407(&[&odd.header(), "Basic realm=\"r\""]),
                Then::KeepOpen,
            ),
            Some(value) if value == basic("alice:s3cret") => (OK.to_owned(), Then::Close),
            Some(value) => return Err(format!("expected Basic, got {value:?}")),
        })
    });
    expect_tunnel(
        gimlet().args(["-U", "alice:s3cret", &proxy.addr(), "example.test", "22"]),
        &proxy,
    );
}

#[test]
fn forced_digest_works_against_a_digest_proxy() {
    let proxy = AuthProxy::new("alice", "s3cret")
        .offer(Offer::Basic)
        .offer(Offer::Digest(DigestChallenge::new("MD5")))
        .start();
    let record = expect_tunnel(
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
    );
    assert_one_digest_retry(&record);
}

#[test]
fn digest_cnonce_is_fresh_on_every_run() {
    let cnonces: Vec<String> = (0..2)
        .map(|_| {
            let record = digest_round_trip(
                "alice",
                "s3cret",
                vec![Offer::Digest(DigestChallenge::new("MD5"))],
            );
            param(&digest_params(&record, 1), "cnonce")
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_ne!(cnonces[0], cnonces[1], "the cnonce must be random");
}

#[test]
fn non_ascii_user_name_goes_as_username_star() {
    let record = digest_round_trip(
        "zoë",
        "s3cret",
        vec![Offer::Digest(DigestChallenge::new("SHA-256"))],
    );
    let value = proxy_authorization(&record.request(1)).unwrap();
    assert!(
        value.contains("username*=UTF-8''zo%C3%AB"),
        "no RFC 8187 user name in {value:?}"
    );
    assert!(!value.contains("username=\""), "{value:?}");
}

#[test]
fn user_name_with_quotes_and_backslashes_is_escaped() {
    let record = digest_round_trip(
        "CORP\\al \"the\" ice",
        "s3cret",
        vec![Offer::Digest(DigestChallenge::new("MD5"))],
    );
    assert_eq!(
        param(&digest_params(&record, 1), "username").unwrap(),
        "CORP\\al \"the\" ice"
    );
}

/// A proxy whose Digest nonces run `nonces[0]`, `nonces[1]`, …: an answer to
/// nonce `i` is checked and, if `i + 1` exists, refused as stale with the
/// next nonce; an answer to the last nonce is granted.
fn stale_proxy(nonces: &'static [&'static str]) -> FakeProxy {
    let challenge = |i: usize| DigestChallenge::new("MD5").nonce(nonces[i]);
    FakeProxy::conversation(move |head| {
        let Some(value) = proxy_authorization(head) else {
            return Ok((challenge_407(&[&challenge(0).header()]), Then::KeepOpen));
        };
        let params = auth_params(value.strip_prefix("Digest ").unwrap_or(""))?;
        let nonce = param(&params, "nonce")?;
        let i = nonces
            .iter()
            .position(|n| *n == nonce)
            .ok_or_else(|| format!("unknown nonce in {value:?}"))?;
        challenge(i).check(&value, "alice", "s3cret")?;
        Ok(match nonces.get(i + 1) {
            Some(_) => (
                challenge_407(&[&challenge(i + 1).stale().header()]),
                Then::KeepOpen,
            ),
            None => (OK.to_owned(), Then::Close),
        })
    })
}

#[test]
fn stale_nonce_is_retried_once_with_the_new_nonce() {
    let proxy = stale_proxy(&["first-nonce", "second-nonce"]);
    let record = expect_tunnel(
        gimlet().args(["-U", "alice:s3cret", &proxy.addr(), "example.test", "22"]),
        &proxy,
    );
    record.assert_requests(3);
    assert_eq!(record.connections, 1);
    let nonce = |i| {
        param(&digest_params(&record, i), "nonce")
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        (nonce(1), nonce(2)),
        ("first-nonce".into(), "second-nonce".into())
    );
    assert_eq!(param(&digest_params(&record, 2), "nc").unwrap(), "00000001");
}

#[test]
fn second_stale_nonce_is_an_auth_failure() {
    let proxy = stale_proxy(&["first-nonce", "second-nonce", "third-nonce"]);
    let (stderr, record) = expect_failure(
        gimlet().args(["-U", "alice:s3cret", &proxy.addr(), "example.test", "22"]),
        &proxy,
        5,
    );
    record.assert_requests(3);
    assert!(!stderr.contains("s3cret"), "{stderr:?}");
}

#[test]
fn digest_rejection_is_an_auth_failure_without_looping() {
    let challenge = DigestChallenge::new("MD5");
    let proxy = FakeProxy::conversation(move |_| {
        Ok((challenge_407(&[&challenge.header()]), Then::KeepOpen))
    });
    let (stderr, record) = expect_failure(
        gimlet().args(["-U", "alice:wrong", &proxy.addr(), "example.test", "22"]),
        &proxy,
        5,
    );
    assert!(
        stderr.contains("rejected the Digest credentials for user") && stderr.contains("alice"),
        "{stderr:?}"
    );
    record.assert_requests(2);
}

#[test]
fn ipv6_target_is_signed_with_brackets() {
    let challenge = DigestChallenge::new("MD5");
    let proxy = FakeProxy::conversation(move |head| {
        let Some(value) = proxy_authorization(head) else {
            return Ok((challenge_407(&[&challenge.header()]), Then::KeepOpen));
        };
        let params = auth_params(value.strip_prefix("Digest ").unwrap_or(""))?;
        let uri = param(&params, "uri")?;
        if uri != "[2001:db8::1]:22" {
            return Err(format!("uri {uri:?}"));
        }
        let want = challenge.response(
            "alice",
            "s3cret",
            uri,
            Some("auth"),
            param(&params, "nc")?,
            param(&params, "cnonce")?,
        );
        if param(&params, "response")? != want {
            return Err(format!("wrong response in {value:?}"));
        }
        Ok((OK.to_owned(), Then::Close))
    });
    expect_tunnel(
        gimlet().args(["-U", "alice:s3cret", &proxy.addr(), "2001:db8::1", "22"]),
        &proxy,
    );
}

#[test]
fn digest_sha_512_256_round_trip_is_verified_by_the_proxy() {
    for algorithm in ["SHA-512-256", "SHA-512-256-sess"] {
        let record = digest_round_trip(
            "alice",
            "s3cret",
            vec![Offer::Digest(DigestChallenge::new(algorithm))],
        );
        assert_one_digest_retry(&record);
        assert_eq!(
            param(&digest_params(&record, 1), "algorithm").unwrap(),
            algorithm
        );
    }
}

#[test]
fn sha_512_256_is_preferred_over_sha_256_and_md5() {
    let record = digest_round_trip(
        "alice",
        "s3cret",
        vec![
            Offer::Digest(DigestChallenge::new("MD5")),
            Offer::Digest(DigestChallenge::new("SHA-512-256")),
            Offer::Digest(DigestChallenge::new("SHA-256")),
        ],
    );
    assert_eq!(
        param(&digest_params(&record, 1), "algorithm").unwrap(),
        "SHA-512-256"
    );
}

#[test]
fn digest_offered_only_with_an_unknown_algorithm_names_that_algorithm() {
    let mut odd = DigestChallenge::new("MD5");
    odd.algorithm = Some("SHA3-256".to_owned());
    let proxy =
        FakeProxy::conversation(move |_| Ok((challenge_407(&[&odd.header()]), Then::Close)));
    let (stderr, record) = expect_failure(
        gimlet().args(["-U", "alice:s3cret", &proxy.addr(), "example.test", "22"]),
        &proxy,
        5,
    );
    record.assert_requests(1);
    assert!(stderr.contains("algorithm=SHA3-256"), "{stderr:?}");
    assert!(!stderr.contains("gimlet speaks Digest"), "{stderr:?}");
}

/// What a hostile proxy puts in a Digest parameter: an obs-fold line break that starts a
/// forged line, C1 controls (NEL, CSI) and a right-to-left override.
const HOSTILE: &str = "X\r\n gimlet: forged\u{85}\u{9b}31m\u{202e}dlrow\u{2028}";

/// One error line, with no control, bidi or separator character in it.
#[track_caller]
fn assert_escaped(stderr: &str) {
    let line = stderr.strip_suffix('\n').unwrap_or(stderr);
    assert!(!line.contains('\n'), "more than one line: {stderr:?}");
    assert!(
        !line.chars().any(|c| c.is_control()
            || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{2028}' | '\u{2029}')),
        "unescaped text from the proxy: {stderr:?}"
    );
}

#[test]
fn hostile_digest_algorithm_in_the_first_challenge_is_escaped() {
    let proxy = FakeProxy::conversation(|_| {
        let challenge = format!("Digest realm=\"r\", nonce=\"n\", algorithm=\"{HOSTILE}\"");
        Ok((challenge_407(&[&challenge]), Then::Close))
    });
    let (stderr, _) = expect_failure(
        gimlet().args(["-U", "alice:s3cret", &proxy.addr(), "example.test", "22"]),
        &proxy,
        5,
    );
    assert_escaped(&stderr);
}

#[test]
fn hostile_digest_algorithm_in_a_stale_challenge_is_escaped() {
    let first = DigestChallenge::new("MD5");
    let proxy = FakeProxy::conversation(move |head| {
        Ok(match proxy_authorization(head) {
            None => (challenge_407(&[&first.header()]), Then::KeepOpen),
            Some(_) => {
                let challenge = format!(
                    "Digest realm=\"r\", nonce=\"n2\", stale=true, algorithm=\"{HOSTILE}\""
                );
                (challenge_407(&[&challenge]), Then::Close)
            }
        })
    });
    let (stderr, _) = expect_failure(
        gimlet().args(["-U", "alice:s3cret", &proxy.addr(), "example.test", "22"]),
        &proxy,
        5,
    );
    assert_escaped(&stderr);
}
