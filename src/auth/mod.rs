//! Proxy authentication: parsing challenges, choosing a scheme, and producing
//! `Proxy-Authorization` values round after round. Pure: randomness and time come in as
//! arguments where a scheme needs them, so the published test vectors can be checked.
//!
//! Like curl's `--proxy-anyauth`, gimlet reads every challenge of a 407 and picks the
//! strongest scheme it speaks: Negotiate (when there is a Kerberos ticket), then Digest, NTLM
//! and Basic. Browsers put NTLM above Digest; gimlet keeps Digest there because its
//! SHA-256 variant is the stronger hash, and it has always chosen so.

pub mod digest;
pub mod negotiate;
pub mod ntlm;

use std::fmt;

use anyhow::{Context, anyhow, bail};
use base64::Engine;

use crate::credentials::{Credentials, Secret};

/// The schemes gimlet speaks, weakest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scheme {
    Basic,
    Ntlm,
    Digest,
    Negotiate,
}

impl Scheme {
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Basic => "Basic",
            Scheme::Ntlm => "NTLM",
            Scheme::Digest => "Digest",
            Scheme::Negotiate => negotiate::NAME,
        }
    }

    fn from_name(name: &str) -> Option<Scheme> {
        [
            Scheme::Basic,
            Scheme::Ntlm,
            Scheme::Digest,
            Scheme::Negotiate,
        ]
        .into_iter()
        .find(|s| s.name().eq_ignore_ascii_case(name))
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One challenge from a `Proxy-Authenticate` header (RFC 9110 §11.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    pub scheme: String,
    pub token68: Option<String>,
    pub params: Vec<(String, String)>,
}

impl Challenge {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn is(&self, scheme: Scheme) -> bool {
        self.scheme.eq_ignore_ascii_case(scheme.name())
    }
}

/// Parses header values into challenges. A value may hold several challenges, and commas
/// separate both challenges and their parameters, so a new challenge is recognised by a
/// scheme token that is not followed by `=`.
pub fn parse_challenges<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Vec<Challenge> {
    let mut out: Vec<Challenge> = Vec::new();
    for value in values {
        let value = String::from_utf8_lossy(value);
        let mut rest = value.as_ref();
        loop {
            rest = rest.trim_start_matches([' ', '\t', ',']);
            if rest.is_empty() {
                break;
            }
            let token_end = rest.find(|c: char| !is_tchar(c)).unwrap_or(rest.len());
            let token = &rest[..token_end];
            let after = rest[token_end..].trim_start_matches([' ', '\t']);
            if token.is_empty() {
                // Not a token at all: skip to the next comma outside quotes.
                rest = skip_element(rest);
                continue;
            }
            if let (Some(value_part), Some(last)) = (after.strip_prefix('='), out.last_mut()) {
                if !value_part.starts_with('=') {
                    // `name=value`: a parameter of the current challenge.
                    let (v, remaining) =
                        parse_param_value(value_part.trim_start_matches([' ', '\t']));
                    last.params.push((token.to_ascii_lowercase(), v));
                    rest = remaining;
                    continue;
                }
            }
            // A scheme. Either a token68 or parameters may follow after whitespace.
            let mut challenge = Challenge {
                scheme: token.to_owned(),
                token68: None,
                params: Vec::new(),
            };
            rest = &rest[token_end..];
            let spaced = rest.starts_with([' ', '\t']);
            let body = rest.trim_start_matches([' ', '\t']);
            if spaced && !body.is_empty() && !body.starts_with(',') {
                // token68 (RFC 9110 §11.2): token68 characters, then only `=` padding before
                // the end or a comma. Anything else starts the parameter list.
                let t68_end = body
                    .find(|c: char| !(c.is_ascii_alphanumeric() || "-._~+/".contains(c)))
                    .unwrap_or(body.len());
                let eq_end = body[t68_end..]
                    .find(|c| c != '=')
                    .map_or(body.len(), |i| t68_end + i);
                let tail = body[eq_end..].trim_start_matches([' ', '\t']);
                if t68_end > 0 && (tail.is_empty() || tail.starts_with(',')) {
                    challenge.token68 = Some(body[..eq_end].to_owned());
                    rest = tail;
                } else {
                    rest = body;
                }
            }
            out.push(challenge);
        }
    }
    out
}

fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// Reads a token or quoted-string; returns it and what follows.
fn parse_param_value(s: &str) -> (String, &str) {
    if let Some(quoted) = s.strip_prefix('"') {
        let mut value = String::new();
        let mut chars = quoted.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(escaped);
                    }
                }
                '"' => return (value, &quoted[i + 1..]),
                _ => value.push(c),
            }
        }
        (value, "")
    } else {
        let end = s.find([',', ' ', '\t']).unwrap_or(s.len());
        (s[..end].to_owned(), &s[end..])
    }
}

fn skip_element(s: &str) -> &str {
    let mut quoted = false;
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => return &s[i + 1..],
            _ => {}
        }
    }
    ""
}

/// Why no offered challenge can be answered.
#[derive(Debug, PartialEq, Eq)]
pub enum NoScheme {
    /// No offered scheme is one gimlet speaks (or the forced one): the schemes offered.
    Offered(String),
    /// Digest was offered, but only in a form gimlet cannot answer: why (the algorithm or qop,
    /// escaped).
    Digest(String),
}

/// Picks the strongest offered scheme gimlet speaks, or the forced one.
pub fn choose(
    challenges: &[Challenge],
    forced: Option<Scheme>,
) -> Result<(Scheme, &Challenge), NoScheme> {
    let usable = |c: &&Challenge| match Scheme::from_name(&c.scheme) {
        Some(Scheme::Digest) => digest::Params::from_challenge(c).is_ok(),
        Some(_) => true,
        None => false,
    };
    let mut candidates: Vec<(Scheme, &Challenge)> = challenges
        .iter()
        .filter(usable)
        .filter_map(|c| Scheme::from_name(&c.scheme).map(|s| (s, c)))
        .filter(|(s, _)| forced.is_none_or(|f| f == *s))
        .collect();
    // Strongest scheme first; among Digest challenges, the strongest algorithm.
    candidates.sort_by_key(|(s, c)| {
        let strength = match s {
            Scheme::Digest => digest::Params::from_challenge(c).map_or(0, |p| p.strength()),
            _ => 0,
        };
        std::cmp::Reverse((*s, strength))
    });
    if let Some(found) = candidates.into_iter().next() {
        return Ok(found);
    }
    // Say what made Digest unusable rather than claim it was not offered.
    let unusable_digest = challenges
        .iter()
        .filter(|c| c.is(Scheme::Digest) && forced.is_none_or(|f| f == Scheme::Digest))
        .find_map(|c| digest::Params::from_challenge(c).err());
    if let Some(why) = unusable_digest {
        return Err(NoScheme::Digest(format!("{why:#}")));
    }
    let offered: Vec<&str> = challenges.iter().map(|c| c.scheme.as_str()).collect();
    Err(NoScheme::Offered(if offered.is_empty() {
        "no scheme".to_owned()
    } else {
        offered.join(", ")
    }))
}

/// The request facts a scheme signs.
pub struct Target<'a> {
    pub method: &'a str,
    pub uri: &'a str,
}

/// Where a scheme is in its exchange.
enum State {
    Basic,
    Digest {
        params: digest::Params,
        retried_stale: bool,
    },
    /// NTLM negotiate message sent; the next 407 must carry the server's challenge.
    NtlmNegotiated,
    /// NTLM authenticate message sent; another 407 means rejection.
    NtlmDone,
    /// A SPNEGO context; `legs` tokens sent so far.
    Negotiate {
        context: Box<dyn negotiate::SecContext>,
        legs: u8,
    },
}

/// One scheme's exchange with the proxy, holding the credentials it needs.
pub struct Authenticator {
    scheme: Scheme,
    /// The user as messages name it: the password schemes' user, or the Kerberos principal.
    user: String,
    /// `None` for Negotiate, whose credential is the ticket.
    credentials: Option<Credentials>,
    state: State,
}

impl Authenticator {
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    /// Starts Negotiate with the user's ticket; returns the first header value. Fails with
    /// a line saying what to do when there is no usable ticket.
    pub fn negotiate(setup: &mut negotiate::Setup) -> anyhow::Result<(Authenticator, Secret)> {
        let ticket = setup.ticket()?;
        let (context, token) = setup.start()?;
        let value = negotiate_value(token);
        let state = State::Negotiate { context, legs: 1 };
        let (scheme, credentials, user) = (Scheme::Negotiate, None, ticket.principal);
        Ok((
            Authenticator {
                scheme,
                user,
                credentials,
                state,
            },
            value,
        ))
    }

    /// Checks a 2xx: the proxy's final Negotiate token, when it sends one, must complete the
    /// context (mutual authentication, RFC 4559 §5); without one there is nothing to check.
    pub fn finish(&mut self, headers: &[(String, Vec<u8>)]) -> anyhow::Result<()> {
        let State::Negotiate { context, .. } = &mut self.state else {
            return Ok(());
        };
        let Some(token) = negotiate::final_token(headers)? else {
            crate::diag::debug!("the proxy sent no final Negotiate token: nothing to verify");
            return Ok(());
        };
        let step = context
            .step(Some(&token))
            .map_err(|e| anyhow!("the proxy's final Negotiate token does not verify: {e}"))?;
        if !step.complete {
            bail!("the proxy's final Negotiate token leaves the exchange unfinished");
        }
        crate::diag::debug!("the proxy's final Negotiate token verified");
        Ok(())
    }

    /// ` from SOURCE`: where the credentials came from, for messages (nothing for Negotiate,
    /// whose ticket comes from the credential cache).
    pub fn source_phrase(&self) -> String {
        self.credentials
            .as_ref()
            .map(|c| c.source.from_phrase())
            .unwrap_or_default()
    }

    /// Starts with `challenge` (`None` for preemptive Basic); returns the first header value.
    pub fn start(
        scheme: Scheme,
        credentials: Credentials,
        challenge: Option<&Challenge>,
        target: &Target<'_>,
    ) -> anyhow::Result<(Authenticator, Secret)> {
        let (state, value) = match scheme {
            Scheme::Basic => (State::Basic, credentials.basic_authorization()),
            Scheme::Digest => {
                let challenge = challenge.ok_or_else(|| anyhow!("Digest needs a challenge"))?;
                let params = digest::Params::from_challenge(challenge)?;
                let value = digest::authorization(&params, &credentials, target, &cnonce()?)?;
                (
                    State::Digest {
                        params,
                        retried_stale: false,
                    },
                    value,
                )
            }
            Scheme::Negotiate => bail!("Negotiate starts from a ticket, not a password"),
            Scheme::Ntlm => {
                let message = ntlm::negotiate_message();
                (
                    State::NtlmNegotiated,
                    Secret::new(format!("NTLM {}", b64(&message))),
                )
            }
        };
        Ok((
            Authenticator {
                scheme,
                user: credentials.user.clone(),
                credentials: Some(credentials),
                state,
            },
            value,
        ))
    }

    /// Answers a further 401/407. `Ok(None)` means the proxy rejected the credentials.
    pub fn next(
        &mut self,
        challenges: &[Challenge],
        target: &Target<'_>,
    ) -> anyhow::Result<Option<Secret>> {
        let Some(credentials) = &self.credentials else {
            return self.next_negotiate(challenges);
        };
        match &mut self.state {
            State::Basic | State::NtlmDone | State::Negotiate { .. } => Ok(None),
            State::Digest {
                params,
                retried_stale,
            } => {
                // RFC 7616 §3.3: stale=true means the nonce expired, not the credentials.
                let fresh = challenges
                    .iter()
                    .filter(|c| c.is(Scheme::Digest))
                    .find(|c| {
                        c.param("stale")
                            .is_some_and(|s| s.eq_ignore_ascii_case("true"))
                    });
                match (fresh, *retried_stale) {
                    (Some(c), false) => {
                        *params = digest::Params::from_challenge(c)?;
                        *retried_stale = true;
                        digest::authorization(params, credentials, target, &cnonce()?).map(Some)
                    }
                    _ => Ok(None),
                }
            }
            State::NtlmNegotiated => {
                let token = challenges
                    .iter()
                    .filter(|c| c.is(Scheme::Ntlm))
                    .find_map(|c| c.token68.as_deref())
                    .ok_or_else(|| anyhow!("the proxy's NTLM reply carries no challenge"))?;
                let message = base64::engine::general_purpose::STANDARD
                    .decode(token.trim())
                    .context("decoding the proxy's NTLM challenge")?;
                let challenge = ntlm::Challenge::parse(&message)
                    .context("reading the proxy's NTLM challenge")?;
                let mut client_challenge = [0u8; 8];
                getrandom::fill(&mut client_challenge)
                    .map_err(|e| anyhow!("getting random bytes: {e}"))?;
                let message = ntlm::authenticate_message(
                    &challenge,
                    credentials,
                    client_challenge,
                    ntlm::filetime_now(),
                );
                self.state = State::NtlmDone;
                Ok(Some(Secret::new(format!("NTLM {}", b64(&message)))))
            }
        }
    }

    /// A 407 after a Negotiate token: a continuation token gets our next one (RFC 4559 §5);
    /// a bare `Negotiate` means the proxy refused the ticket.
    fn next_negotiate(&mut self, challenges: &[Challenge]) -> anyhow::Result<Option<Secret>> {
        let State::Negotiate { context, legs } = &mut self.state else {
            return Ok(None);
        };
        let Some(token) = negotiate::token(challenges)? else {
            return Ok(None);
        };
        let step = context.step(Some(&token)).map_err(|e| {
            // The proxy's token may be a Kerberos error (clock skew, unknown principal).
            anyhow!("the proxy's Negotiate continuation: {e}")
        })?;
        if step.token.is_empty() {
            // Nothing more to say, yet the proxy still asks: it refused.
            return Ok(None);
        }
        *legs += 1;
        Ok(Some(negotiate_value(step.token)))
    }

    /// True while the scheme's state lives on the current connection: the NTLM authenticate
    /// message, or a Negotiate continuation, must travel on the connection that brought the
    /// challenge.
    pub fn bound_to_connection(&self) -> bool {
        match self.state {
            State::NtlmDone => true,
            State::Negotiate { legs, .. } => legs > 1,
            _ => false,
        }
    }
}

/// `Negotiate <token>`; the token and its base64 are credentials, zeroed once copied.
fn negotiate_value(token: Vec<u8>) -> Secret {
    let token = zeroize::Zeroizing::new(token);
    let encoded = zeroize::Zeroizing::new(b64(&token));
    Secret::new(format!("{} {}", negotiate::NAME, encoded.as_str()))
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A fresh client nonce: 128 random bits, hex.
fn cnonce() -> anyhow::Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| anyhow!("getting random bytes: {e}"))?;
    Ok(hex(&bytes))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `--proxy-auth` as the library sees it.
pub fn parse_scheme_choice(s: &str) -> anyhow::Result<Option<Scheme>> {
    if s.eq_ignore_ascii_case("any") {
        return Ok(None);
    }
    match Scheme::from_name(s) {
        Some(scheme) => Ok(Some(scheme)),
        None => bail!("unknown scheme {s:?} (expected basic, digest, ntlm, negotiate or any)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(values: &[&str]) -> Vec<Challenge> {
        parse_challenges(values.iter().map(|v| v.as_bytes()))
    }

    fn ch(scheme: &str, token68: Option<&str>, params: &[(&str, &str)]) -> Challenge {
        Challenge {
            scheme: scheme.into(),
            token68: token68.map(Into::into),
            params: params
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn challenges_are_parsed_from_one_or_many_headers() {
        assert_eq!(
            parse(&[
                r#"Digest realm="a, b", nonce="n\"q", qop="auth,auth-int", algorithm=MD5, Basic realm="x""#
            ]),
            [
                ch(
                    "Digest",
                    None,
                    &[
                        ("realm", "a, b"),
                        ("nonce", "n\"q"),
                        ("qop", "auth,auth-int"),
                        ("algorithm", "MD5")
                    ]
                ),
                ch("Basic", None, &[("realm", "x")]),
            ]
        );
        assert_eq!(
            parse(&["NTLM", "Negotiate", "Basic realm=\"Squid proxy\""]),
            [
                ch("NTLM", None, &[]),
                ch("Negotiate", None, &[]),
                ch("Basic", None, &[("realm", "Squid proxy")])
            ]
        );
        assert_eq!(
            parse(&[
                "NTLM TlRMTVNTUAACAAAA==",
                "Basic  realm = corp ,  charset=UTF-8"
            ]),
            [
                ch("NTLM", Some("TlRMTVNTUAACAAAA=="), &[]),
                ch("Basic", None, &[("realm", "corp"), ("charset", "UTF-8")])
            ]
        );
        assert_eq!(
            parse(&["NTLM abc, Basic"]),
            [ch("NTLM", Some("abc"), &[]), ch("Basic", None, &[])]
        );
        // Junk never panics and yields what can be read.
        for junk in [
            "",
            ",,,",
            "=",
            "\"",
            "Basic realm=\"unterminated",
            "= = =",
            "\u{1F600} x=y",
            "Digest ,,realm",
        ] {
            let _ = parse(&[junk]);
        }
    }

    #[test]
    fn the_strongest_offered_scheme_is_chosen() {
        let offered = parse(&[
            "Basic realm=\"r\"",
            "NTLM",
            "Digest realm=\"r\", nonce=\"n\", algorithm=MD5, qop=\"auth\"",
            "Digest realm=\"r\", nonce=\"n\", algorithm=SHA-256, qop=\"auth\"",
            "Negotiate",
        ]);
        // Negotiate first (whether a ticket exists is the handshake's question).
        assert_eq!(choose(&offered, None).unwrap().0, Scheme::Negotiate);
        let (scheme, challenge) = choose(&offered[..4], None).unwrap();
        assert_eq!(
            (scheme, challenge.param("algorithm")),
            (Scheme::Digest, Some("SHA-256"))
        );
        assert_eq!(
            choose(&offered, Some(Scheme::Basic)).unwrap().0,
            Scheme::Basic
        );
        assert_eq!(choose(&offered[..2], None).unwrap().0, Scheme::Ntlm);
        assert_eq!(
            choose(&offered[..1], Some(Scheme::Ntlm)).unwrap_err(),
            NoScheme::Offered("Basic".into())
        );
        assert_eq!(
            choose(&offered[..1], Some(Scheme::Digest)).unwrap_err(),
            NoScheme::Offered("Basic".into())
        );
        // A Digest algorithm gimlet does not speak is passed over, not attempted.
        let odd = parse(&[
            "Digest realm=\"r\", nonce=\"n\", algorithm=SHA3-256",
            "Basic",
        ]);
        assert_eq!(choose(&odd, None).unwrap().0, Scheme::Basic);
        // Alone, it is named.
        match choose(&odd[..1], None).unwrap_err() {
            NoScheme::Digest(why) => assert!(why.contains("algorithm=SHA3-256"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            choose(&odd[..1], Some(Scheme::Basic)).unwrap_err(),
            NoScheme::Offered("Digest".into())
        );
        let strongest = parse(&[
            "Digest realm=\"r\", nonce=\"n\", algorithm=SHA-256",
            "Digest realm=\"r\", nonce=\"n\", algorithm=SHA-512-256-sess",
            "Digest realm=\"r\", nonce=\"n\", algorithm=MD5",
        ]);
        assert_eq!(
            choose(&strongest, None).unwrap().1.param("algorithm"),
            Some("SHA-512-256-sess")
        );
    }

    #[test]
    fn scheme_choice_parses() {
        assert_eq!(parse_scheme_choice("ANY").unwrap(), None);
        assert_eq!(parse_scheme_choice("ntlm").unwrap(), Some(Scheme::Ntlm));
        assert_eq!(
            parse_scheme_choice("Negotiate").unwrap(),
            Some(Scheme::Negotiate)
        );
        assert!(parse_scheme_choice("kerberos").is_err());
    }
}

/// Hostile input, deterministically: mutations of real headers and messages, and plain noise,
/// through every parser that reads what a proxy sends. None may panic.
#[cfg(test)]
pub(crate) mod robustness {
    use super::*;

    /// xorshift64*: enough randomness for mutation, the same every run.
    pub(crate) struct Rng(u64);

    impl Rng {
        pub(crate) fn new(seed: u64) -> Rng {
            Rng(seed.max(1))
        }

        pub(crate) fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        pub(crate) fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }

        /// `seed` with a few bytes flipped, inserted, deleted or replaced by noise.
        pub(crate) fn mutate(&mut self, seed: &[u8]) -> Vec<u8> {
            let mut out = seed.to_vec();
            for _ in 0..1 + self.below(4) {
                let at = self.below(out.len() + 1);
                match self.below(4) {
                    0 if at < out.len() => out[at] ^= 1 << self.below(8),
                    1 => out.insert(at, self.next() as u8),
                    2 if at < out.len() => {
                        out.remove(at);
                    }
                    _ => {
                        let noise: Vec<u8> =
                            (0..self.below(16)).map(|_| self.next() as u8).collect();
                        out.splice(at..at, noise);
                    }
                }
            }
            out
        }
    }

    #[test]
    fn challenge_headers_and_digest_params_survive_mutation() {
        let seeds: [&[u8]; 4] = [
            b"Digest realm=\"a, b\", nonce=\"n\\\"q\", qop=\"auth,auth-int\", algorithm=SHA-256-sess, opaque=\"o\"",
            b"Basic realm=\"corp\", NTLM, Negotiate",
            b"NTLM TlRMTVNTUAACAAAADAAMADgAAAAzgoriASNFZ4mrze8=",
            b"Digest realm=r, nonce=n, stale=TRUE, userhash=true, charset=UTF-8",
        ];
        let mut rng = Rng::new(7);
        for round in 0..20_000 {
            let input = match round % 5 {
                4 => (0..rng.below(200)).map(|_| rng.next() as u8).collect(),
                i => rng.mutate(seeds[i]),
            };
            for challenge in parse_challenges([input.as_slice()]) {
                let _ = digest::Params::from_challenge(&challenge);
            }
            let _ = choose(&parse_challenges([input.as_slice()]), None);
        }
    }

    #[test]
    fn ntlm_challenges_survive_mutation() {
        let seed = base64::engine::general_purpose::STANDARD
            .decode("TlRMTVNTUAACAAAADAAMADgAAAAzgoriASNFZ4mrze8AAAAAAAAAACQAJABEAAAABgBwFwAAAA9TAGUAcgB2AGUAcgACAAwARABvAG0AYQBpAG4AAQAMAFMAZQByAHYAZQByAAAAAAA=")
            .unwrap();
        let creds = Credentials::parse_pair("D\\u:p").unwrap();
        let mut rng = Rng::new(11);
        for _ in 0..20_000 {
            let message = rng.mutate(&seed);
            if let Ok(challenge) = ntlm::Challenge::parse(&message) {
                let _ = ntlm::authenticate_message(&challenge, &creds, [0; 8], 0);
            }
        }
    }
}
