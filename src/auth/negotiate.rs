//! Negotiate (RFC 4559): SPNEGO tokens carrying Kerberos, from the user's ticket.
//!
//! The exchange: the proxy's bare `Negotiate` challenge, our first token; maybe a 407 with a
//! continuation token, our next one on the same connection; and maybe the proxy's final
//! token on the `200` (squid sends it as `Proxy-Authentication-Info`), which must verify
//! (mutual authentication) when it comes. GSSAPI itself sits behind [`Provider`] and
//! [`SecContext`], so the header handling is tested with scripted contexts; [`System`] is the
//! real one, loading MIT Kerberos only when a run gets this far.
//!
//! The ticket is read from the credential cache every time a connection asks for it, so a
//! `kinit` after start-up is picked up without a restart.

use anyhow::{Context as _, anyhow};
use base64::Engine;

use super::Challenge;
use crate::sys::gssapi;
pub use crate::sys::gssapi::{Error as GssError, NameKind, Problem, Step, Ticket};

/// The scheme's name on the wire.
pub const NAME: &str = "Negotiate";

/// One security context, stepped with the proxy's tokens.
pub trait SecContext: Send {
    fn step(&mut self, input: Option<&[u8]>) -> Result<Step, GssError>;
}

/// Where tickets and contexts come from: the system's GSSAPI, or a fake in tests.
pub trait Provider {
    /// The usable default ticket, or why there is none.
    fn ticket(&mut self) -> Result<Ticket, GssError>;
    /// A new context towards `target`.
    fn context(&mut self, target: &str, kind: NameKind) -> Result<Box<dyn SecContext>, GssError>;
    /// The default realm, for the "run kinit" hint.
    fn default_realm(&mut self) -> Option<String>;
}

/// MIT Kerberos through dlopen.
pub struct System;

impl SecContext for gssapi::Context {
    fn step(&mut self, input: Option<&[u8]>) -> Result<Step, GssError> {
        gssapi::Context::step(self, input)
    }
}

impl Provider for System {
    fn ticket(&mut self) -> Result<Ticket, GssError> {
        gssapi::ticket()
    }

    fn context(&mut self, target: &str, kind: NameKind) -> Result<Box<dyn SecContext>, GssError> {
        Ok(Box::new(gssapi::Context::new(target, kind)?))
    }

    fn default_realm(&mut self) -> Option<String> {
        gssapi::default_realm()
    }
}

/// The service principal to ask a ticket for: `HTTP@<proxy host>` (RFC 4559 §4, how browsers
/// and curl name it), or `--proxy-service-name`: a bare NAME is NAME@<proxy host>, `SVC@HOST`
/// a host-based name, and a name with `/` (`HTTP/alias.corp[@REALM]`) a Kerberos principal.
pub fn service_name(option: Option<&str>, proxy_host: &str) -> (String, NameKind) {
    let host = proxy_host.trim_start_matches('[').trim_end_matches(']');
    match option {
        None => (format!("HTTP@{host}"), NameKind::HostBased),
        Some(name) if name.contains('/') => (name.to_owned(), NameKind::Principal),
        Some(name) if name.contains('@') => (name.to_owned(), NameKind::HostBased),
        Some(name) => (format!("{name}@{host}"), NameKind::HostBased),
    }
}

/// Everything Negotiate needs besides the connection.
pub struct Setup {
    /// The target name and how it is written.
    pub service: (String, NameKind),
    pub provider: Box<dyn Provider>,
}

impl Setup {
    /// The system's Kerberos, towards `service`.
    pub fn system(service: (String, NameKind)) -> Setup {
        Setup {
            service,
            provider: Box::new(System),
        }
    }

    /// The ticket to use, or the one-line reason there is none, saying what to do.
    pub fn ticket(&mut self) -> anyhow::Result<Ticket> {
        let ticket = match self.provider.ticket() {
            Ok(t) if t.lifetime_secs > 0 => t,
            Ok(t) => {
                return Err(anyhow!(
                    "the Kerberos ticket of {} has expired: run kinit",
                    t.principal
                ));
            }
            Err(e) => return Err(self.explain(e)),
        };
        Ok(ticket)
    }

    /// Starts a context and makes the first token.
    pub fn start(&mut self) -> anyhow::Result<(Box<dyn SecContext>, Vec<u8>)> {
        let (name, kind) = self.service.clone();
        let mut context = self
            .provider
            .context(&name, kind)
            .map_err(|e| self.explain(e))?;
        let first = context.step(None).map_err(|e| self.explain(e))?;
        if first.token.is_empty() {
            return Err(anyhow!("GSSAPI produced no initial token for {name}"));
        }
        Ok((context, first.token))
    }

    /// A GSSAPI failure as one line naming what to do.
    pub fn explain(&mut self, e: GssError) -> anyhow::Error {
        explain(e, &self.service.0, || self.provider.default_realm())
    }
}

fn explain(e: GssError, service: &str, realm: impl FnOnce() -> Option<String>) -> anyhow::Error {
    // The library's own words last, in parentheses: they name the cache or principal.
    let words = match e.text.as_str() {
        "" => String::new(),
        text => format!(" ({text})"),
    };
    match e.problem {
        Problem::NoTicket => match realm() {
            Some(realm) => anyhow!("no Kerberos ticket for {realm}: run kinit{words}"),
            None => anyhow!("no Kerberos ticket: run kinit{words}"),
        },
        Problem::Expired => anyhow!("the Kerberos ticket has expired: run kinit{words}"),
        Problem::UnknownService => anyhow!(
            "the KDC does not know the service principal {service}: name the proxy as its Kerberos service is registered, or give --proxy-service-name{words}"
        ),
        Problem::ClockSkew => anyhow!(
            "this machine's clock is too far from the KDC's or the proxy's (Kerberos allows 5 minutes): correct the clock{words}"
        ),
        Problem::KdcUnreachable => anyhow!(
            "no Kerberos KDC could be reached for the service {service}: check the network and krb5.conf{words}"
        ),
        Problem::Unavailable | Problem::BadToken | Problem::Other => anyhow!("{e}"),
    }
}

/// The proxy's Negotiate token among `challenges`, decoded; `None` for a bare `Negotiate`.
pub fn token(challenges: &[Challenge]) -> anyhow::Result<Option<Vec<u8>>> {
    let Some(encoded) = challenges
        .iter()
        .filter(|c| c.scheme.eq_ignore_ascii_case(NAME))
        .find_map(|c| c.token68.as_deref())
    else {
        return Ok(None);
    };
    base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map(Some)
        .context("decoding the proxy's Negotiate token")
}

/// The final token on a 2xx: squid sends it in `Proxy-Authentication-Info`, servers
/// following RFC 4559 §5 literally in `Proxy-Authenticate` or `WWW-Authenticate`.
pub fn final_token(headers: &[(String, Vec<u8>)]) -> anyhow::Result<Option<Vec<u8>>> {
    let values = headers
        .iter()
        .filter(|(n, _)| {
            [
                "Proxy-Authentication-Info",
                "Proxy-Authenticate",
                "WWW-Authenticate",
            ]
            .iter()
            .any(|h| n.eq_ignore_ascii_case(h))
        })
        .map(|(_, v)| v.as_slice());
    token(&super::parse_challenges(values))
}

#[cfg(test)]
pub(crate) mod fake {
    //! Scripted GSSAPI for tests: a ticket (or why not) and the tokens a context answers.

    use std::sync::{Arc, Mutex};

    use super::*;
    pub use super::{Problem, Ticket};

    /// What a fake context does at each step: the input it expects and what it returns.
    pub type Script = Vec<(Option<Vec<u8>>, StepResult)>;
    type StepResult = Result<Step, GssError>;

    pub struct FakeContext {
        script: std::vec::IntoIter<(Option<Vec<u8>>, StepResult)>,
        pub seen: Arc<Mutex<Vec<Option<Vec<u8>>>>>,
    }

    impl SecContext for FakeContext {
        fn step(&mut self, input: Option<&[u8]>) -> Result<Step, GssError> {
            self.seen.lock().unwrap().push(input.map(<[u8]>::to_vec));
            match self.script.next() {
                Some((expected, result)) => {
                    assert_eq!(expected.as_deref(), input, "unexpected input token");
                    result
                }
                None => panic!("context stepped more often than scripted"),
            }
        }
    }

    pub struct FakeProvider {
        pub ticket: Result<Ticket, GssError>,
        pub script: Script,
        pub realm: Option<String>,
        pub seen: Arc<Mutex<Vec<Option<Vec<u8>>>>>,
        pub targets: Arc<Mutex<Vec<String>>>,
    }

    impl FakeProvider {
        pub fn new(ticket: Result<Ticket, GssError>, script: Script) -> FakeProvider {
            FakeProvider {
                ticket,
                script,
                realm: Some("LAB.TEST".into()),
                seen: Arc::default(),
                targets: Arc::default(),
            }
        }
    }

    pub fn ticket() -> Result<Ticket, GssError> {
        Ok(Ticket {
            principal: "alice@LAB.TEST".into(),
            lifetime_secs: 3600,
        })
    }

    pub fn error(problem: Problem, text: &str) -> GssError {
        GssError {
            problem,
            text: text.into(),
        }
    }

    pub fn step(token: &[u8], complete: bool) -> Result<Step, GssError> {
        Ok(Step {
            token: token.to_vec(),
            complete,
        })
    }

    impl Provider for FakeProvider {
        fn ticket(&mut self) -> Result<Ticket, GssError> {
            self.ticket.clone()
        }

        fn context(
            &mut self,
            target: &str,
            _kind: NameKind,
        ) -> Result<Box<dyn SecContext>, GssError> {
            self.targets.lock().unwrap().push(target.to_owned());
            Ok(Box::new(FakeContext {
                script: std::mem::take(&mut self.script).into_iter(),
                seen: self.seen.clone(),
            }))
        }

        fn default_realm(&mut self) -> Option<String> {
            self.realm.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::*;
    use super::*;

    #[test]
    fn the_service_name_defaults_to_http_at_the_proxy_host() {
        let rows = [
            (None, "proxy.corp", "HTTP@proxy.corp", NameKind::HostBased),
            (None, "[::1]", "HTTP@::1", NameKind::HostBased),
            (Some("proxy"), "p.corp", "proxy@p.corp", NameKind::HostBased),
            (
                Some("HTTP@alias.corp"),
                "p.corp",
                "HTTP@alias.corp",
                NameKind::HostBased,
            ),
            (
                Some("HTTP/alias.corp@CORP"),
                "p",
                "HTTP/alias.corp@CORP",
                NameKind::Principal,
            ),
        ];
        for (option, host, name, kind) in rows {
            assert_eq!(service_name(option, host), (name.to_owned(), kind));
        }
    }

    #[test]
    fn tokens_are_read_from_the_negotiate_challenge_only() {
        let parse = |v: &str| super::super::parse_challenges([v.as_bytes()]);
        assert_eq!(token(&parse("Negotiate")).unwrap(), None);
        assert_eq!(
            token(&parse("NTLM abc=, Negotiate YWJj")).unwrap(),
            Some(b"abc".to_vec())
        );
        assert_eq!(
            token(&parse("negotiate YWJj")).unwrap(),
            Some(b"abc".to_vec())
        );
        let bad = token(&parse("Negotiate YWJ")).unwrap_err();
        assert!(format!("{bad:#}").contains("decoding the proxy's Negotiate token"));
        let headers = vec![(
            "Proxy-Authentication-Info".to_owned(),
            b"Negotiate YWJj".to_vec(),
        )];
        assert_eq!(final_token(&headers).unwrap(), Some(b"abc".to_vec()));
        assert_eq!(final_token(&[]).unwrap(), None);
    }

    #[test]
    fn failures_name_what_to_do_and_never_a_bare_status() {
        let mut setup = Setup {
            service: ("HTTP@p.corp".into(), NameKind::HostBased),
            provider: Box::new(FakeProvider::new(
                Err(error(
                    Problem::NoTicket,
                    "No Kerberos credentials available",
                )),
                vec![],
            )),
        };
        let e = setup.ticket().unwrap_err().to_string();
        assert!(
            e.starts_with("no Kerberos ticket for LAB.TEST: run kinit"),
            "{e}"
        );
        let mut expired = Setup {
            service: ("HTTP@p.corp".into(), NameKind::HostBased),
            provider: Box::new(FakeProvider::new(
                Ok(Ticket {
                    principal: "alice@LAB.TEST".into(),
                    lifetime_secs: 0,
                }),
                vec![],
            )),
        };
        assert_eq!(
            expired.ticket().unwrap_err().to_string(),
            "the Kerberos ticket of alice@LAB.TEST has expired: run kinit"
        );
        let unknown = explain(
            error(
                Problem::UnknownService,
                "Server not found in Kerberos database",
            ),
            "HTTP@p.corp",
            || None,
        )
        .to_string();
        assert!(unknown.contains("does not know the service principal HTTP@p.corp"));
        assert!(unknown.contains("--proxy-service-name"));
        let skew = explain(
            error(Problem::ClockSkew, "Clock skew too great"),
            "x",
            || None,
        );
        assert!(skew.to_string().contains("correct the clock"));
    }

    #[test]
    fn mutated_negotiate_headers_never_panic() {
        let seeds: [&[u8]; 2] = [
            b"Negotiate YIIBhQYGKwYBBQUCoIIBeTCCAXWgMDAuBgkqhkiC9xIBAgIGCSqGSIb3EgECAgYKKwYBBAGCNwICHgYKKwYBBAGCNwICCg==",
            b"Negotiate oRQwEqADCgEAoQsGCSqGSIb3EgECAg==, Basic realm=\"r\"",
        ];
        let mut rng = super::super::robustness::Rng::new(13);
        for round in 0..20_000 {
            let input = rng.mutate(seeds[round % 2]);
            let challenges = super::super::parse_challenges([input.as_slice()]);
            let _ = token(&challenges);
            let _ = final_token(&[("Proxy-Authentication-Info".into(), input)]);
        }
    }

    #[test]
    fn start_sends_the_first_token_to_the_named_service() {
        let provider = FakeProvider::new(ticket(), vec![(None, step(b"first", false))]);
        let targets = provider.targets.clone();
        let mut setup = Setup {
            service: ("HTTP@p.corp".into(), NameKind::HostBased),
            provider: Box::new(provider),
        };
        let (_, first) = setup.start().unwrap();
        assert_eq!(first, b"first");
        assert_eq!(*targets.lock().unwrap(), ["HTTP@p.corp"]);
    }
}
