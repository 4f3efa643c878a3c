//! Routes: the ordered hops from here to the destination, and choosing them.
//!
//! A route is the list of proxies (`config::Proxy`, one per hop: HTTP, HTTPS or SOCKS, each
//! with its own credentials) ending at the target; the empty route is a direct TCP
//! connection. Hop 1 is reached by TCP from here, every later hop through the tunnel the hop
//! before it opened, optionally wrapped in TLS, and each is asked by its own protocol to
//! connect onwards. `config` builds the list from the command line, or from the environment
//! with `env`; `tunnel::Upstream` is a route prepared for use and `tunnel::establish` walks it.
//! Nothing here opens a socket.

pub mod env;

use std::ops::Range;

/// `scheme://rest` → the scheme (RFC 3986 §3.1: a letter, then letters, digits, `+`, `-`,
/// `.`) and the rest; anything else has no scheme.
pub fn split_scheme(s: &str) -> (Option<&str>, &str) {
    match s.split_once("://") {
        Some((scheme, rest))
            if scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)) =>
        {
            (Some(scheme), rest)
        }
        _ => (None, s),
    }
}

/// Where the password is in `[scheme://]user:password@host…`, if there is one. The userinfo
/// runs to the last '@' and the password from its first ':': RFC 3986 wants '/', '?', '#' and
/// '@' percent-encoded there, but people paste passwords as they are. `config::parse_proxy`
/// splits at the same places, so whatever it takes as the password is what this finds. Text
/// that is no URL at all (a mistyped option) is covered too: its first ':' comes no later than
/// a userinfo's would.
pub fn password_range(s: &str) -> Option<Range<usize>> {
    let (_, rest) = split_scheme(s);
    let offset = s.len() - rest.len();
    let at = rest.rfind('@')?;
    let colon = rest[..at].find(':')?;
    (colon + 1 < at).then_some(offset + colon + 1..offset + at)
}

/// A proxy URL (or anything that may hold one) as messages may show it: the password that
/// [`password_range`] finds is replaced by `<redacted>`.
pub fn without_password(s: &str) -> String {
    match password_range(s) {
        Some(r) => format!("{}<redacted>{}", &s[..r.start], &s[r.end..]),
        None => s.to_owned(),
    }
}

/// `text` with every password that `args` hold replaced by `<redacted>`: for messages that
/// quote arguments gimlet could not parse (clap's "unexpected argument '…'"), where nobody
/// knows which part was meant as a password. Each argument is searched as a URL would be,
/// and the value of `-U`/`--proxy-user` (however it is attached) after its first ':'.
pub fn redact_args(text: &str, args: &[String]) -> String {
    let mut secrets: Vec<&str> = Vec::new();
    let mut after_user_option = false;
    for arg in args {
        let user_value = if after_user_option {
            Some(arg.as_str())
        } else {
            arg.strip_prefix("--proxy-user=")
                .or_else(|| arg.strip_prefix("-U").filter(|v| !v.is_empty()))
        };
        if let Some(value) = user_value {
            if let Some((_, password)) = value.split_once(':') {
                secrets.push(password);
            }
        }
        if let Some(r) = password_range(arg) {
            secrets.push(&arg[r]);
        }
        after_user_option = matches!(arg.as_str(), "-U" | "--proxy-user");
    }
    // Longest first, so a secret that contains another is replaced whole.
    secrets.retain(|s| !s.is_empty());
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut text = text.to_owned();
    for secret in secrets {
        text = text.replace(secret, "<redacted>");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_are_redacted() {
        assert_eq!(
            without_password("http://u:p%40ss@h:1/"),
            "http://u:<redacted>@h:1/"
        );
        assert_eq!(without_password("socks5h://u@h"), "socks5h://u@h");
        assert_eq!(without_password("h:3128"), "h:3128");
        assert_eq!(
            without_password("http://u:p/a?b#c@h:1/"),
            "http://u:<redacted>@h:1/"
        );
        assert_eq!(without_password("u:p@h:1"), "u:<redacted>@h:1");
        assert_eq!(without_password("http://bob@h:1/"), "http://bob@h:1/");
    }

    #[test]
    fn passwords_are_found_where_parse_proxy_finds_them() {
        let pw = |u: &'static str| password_range(u).map(|r| &u[r]);
        assert_eq!(pw("http://al:s3c@h:1"), Some("s3c"));
        assert_eq!(pw("https://a%40b:p:w@c@[::1]:1/"), Some("p:w@c"));
        assert_eq!(pw("http://al:Zq9/w@h:1"), Some("Zq9/w"));
        assert_eq!(pw("http://h:1/x@y:z"), Some("1/x"));
        for none in ["http://al@h:1", "http://al:@h:1", "h:1", "socks5h://u@h"] {
            assert_eq!(pw(none), None, "{none}");
        }
    }

    #[test]
    fn argument_passwords_are_redacted_from_any_text() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        for (argv, text) in [
            (
                &["--chttps://al%40corp:p%3AS3kr1t@[::1]:8443/"][..],
                "unexpected argument '--chttps://al%40corp:p%3AS3kr1t@[::1]:8443/' found",
            ),
            (
                &["--proxi=http://al:S3kr1t@h:1"],
                "unexpected argument '--proxi=http://al:S3kr1t@h:1'",
            ),
            (&["-U", "al:S3kr1t", "-Z"], "'-Z' after al:S3kr1t"),
            (&["-Ual:S3kr1t", "-Z"], "'-Z' after -Ual:S3kr1t"),
            (&["--proxy-user=al:S3kr1t"], "--proxy-user=al:S3kr1t"),
        ] {
            let shown = redact_args(text, &args(argv));
            assert!(!shown.contains("S3kr1t"), "{shown}");
            assert!(shown.contains("<redacted>"), "{shown}");
        }
        assert_eq!(
            redact_args("no secret here", &args(&["h", "22"])),
            "no secret here"
        );
    }
}
