//! The proxy from the environment, by curl's rules, for a destination treated like an
//! `https://` URL.
//!
//! The proxy variable is the first non-empty one of `https_proxy`, `HTTPS_PROXY`, `all_proxy`,
//! `ALL_PROXY` (an empty variable counts as unset, as `curl_getenv` has it). The exclusion list
//! is `--noproxy` when given, else the first non-empty of `no_proxy`, `NO_PROXY`. Matching
//! ([`no_proxy_match`]) follows curl's `proxy_check_noproxy`: entries separated by commas,
//! blanks around them skipped (a blank *inside* the list without a comma ends it); `*` as the
//! whole list means every host; a name entry matches the host itself or any host below it at a
//! label boundary, with or without a leading dot, one trailing dot ignored on either side,
//! ASCII case ignored; an IP entry matches an IP host only, exactly or as `ADDR/BITS` (CIDR);
//! IPv6 entries are bare (`::1`, `fd00::/8`). Names are never resolved: `localhost` does not
//! match `127.0.0.1`.
//!
//! Nothing here opens a socket; [`choose`] says what to do and why, for `-v`.

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::config::Host;

/// The proxy variables for an `https://` destination, in curl's order.
pub const PROXY_VARS: [&str; 4] = ["https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"];
/// The exclusion variables, in curl's order.
pub const NO_PROXY_VARS: [&str; 2] = ["no_proxy", "NO_PROXY"];

/// What the environment says about one destination.
#[derive(Debug, PartialEq, Eq)]
pub enum Choice {
    /// Connect directly; `why` is the `-v` line.
    Direct { why: String },
    /// Go through the proxy URL `value` found in `var`.
    Proxy {
        var: &'static str,
        value: String,
        why: String,
    },
}

/// Picks the route for `host` from the environment. `noproxy` is `--noproxy LIST`, which
/// replaces `no_proxy`/`NO_PROXY` (an empty list excludes nothing). Fails only on a variable
/// that is not UTF-8, naming it.
pub fn choose(
    host: &Host,
    env: &dyn Fn(&str) -> Option<OsString>,
    noproxy: Option<&str>,
) -> Result<Choice, String> {
    let Some((var, value)) = first_set(&PROXY_VARS, env)? else {
        return Ok(Choice::Direct {
            why: format!(
                "direct: no proxy given and none of {} is set",
                PROXY_VARS.join(", ")
            ),
        });
    };
    let (list_name, list) = match noproxy {
        Some(list) => ("--noproxy", Some(list.to_owned())),
        None => match first_set(&NO_PROXY_VARS, env)? {
            Some((name, list)) => (name, Some(list)),
            None => ("", None),
        },
    };
    let name = match_name_of(host);
    if let Some(list) = &list {
        if let Some(why) = excluded(host, list_name, list) {
            return Ok(Choice::Direct { why });
        }
    }
    let why = format!(
        "proxy {} from {var}{}",
        super::without_password(&value),
        match &list {
            Some(_) => format!(" ({list_name} has no entry for {name})"),
            None => String::new(),
        }
    );
    Ok(Choice::Proxy { var, value, why })
}

/// How [`no_proxy_match`] sees a host.
fn match_name_of(host: &Host) -> String {
    match host {
        // curl matches IPv6 hosts without brackets.
        Host::Ip(ip) => ip.to_string(),
        Host::Name(n) => n.clone(),
        // Not an address to curl's matcher (inet_pton refuses the zone): compared as a name.
        Host::Scoped(a, zone) => format!("{a}%{}", zone.name),
    }
}

/// Why `host` goes direct when the exclusion list `list` (called `list_name` in the reason:
/// `--noproxy`, `no_proxy`, `NO_PROXY`) names it; `None` when it does not. Listen mode asks
/// this for each forward's HOST, as [`choose`] does for the pipe mode's destination.
pub fn excluded(host: &Host, list_name: &str, list: &str) -> Option<String> {
    let name = match_name_of(host);
    let entry = no_proxy_match(&name, list)?;
    Some(match entry {
        "*" => format!("direct: {list_name} is * (no proxy for any host)"),
        entry => format!("direct: {list_name} entry {entry} matches {name}"),
    })
}

/// The first variable of `names` with a non-empty value.
fn first_set(
    names: &[&'static str],
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Result<Option<(&'static str, String)>, String> {
    for &name in names {
        let Some(value) = env(name) else { continue };
        if value.is_empty() {
            continue;
        }
        let value = value
            .into_string()
            .map_err(|_| format!("reading {name}: the value is not valid UTF-8"))?;
        return Ok(Some((name, value)));
    }
    Ok(None)
}

/// The entry of the exclusion list `list` that matches `host` (a name, or an IP address
/// without brackets), if any: curl's `proxy_check_noproxy`, returning the entry for `-v`.
pub fn no_proxy_match<'a>(host: &str, list: &'a str) -> Option<&'a str> {
    if host.is_empty() || list.is_empty() {
        return None;
    }
    if list == "*" {
        return Some(list);
    }
    let ip = host.parse::<IpAddr>().ok();
    // One trailing dot of a name is ignored ("example.com." is example.com).
    let name = match ip {
        Some(_) => host,
        None => host.strip_suffix('.').unwrap_or(host),
    };
    let blank = |c: char| c == ' ' || c == '\t';
    let mut rest = list;
    loop {
        rest = rest.trim_start_matches(blank);
        let end = rest
            .find(|c: char| blank(c) || c == ',')
            .unwrap_or(rest.len());
        let (token, after) = rest.split_at(end);
        if !token.is_empty() {
            let hit = match ip {
                None => match_name(token, name),
                Some(ip) => match_ip(token, ip),
            };
            if hit {
                return Some(token);
            }
        }
        rest = after.trim_start_matches(blank);
        // Anything but a comma after an entry ends the list (curl: "localhost .example.com"
        // is the one entry "localhost").
        if !rest.starts_with(',') {
            return None;
        }
        rest = rest.trim_start_matches(',');
    }
}

/// `example.com` and `.example.com` match `example.com` and `www.example.com`, not
/// `nonexample.com`.
fn match_name(token: &str, name: &str) -> bool {
    let token = token.strip_suffix('.').unwrap_or(token);
    let token = token.strip_prefix('.').unwrap_or(token);
    let (t, n) = (token.as_bytes(), name.as_bytes());
    if t.len() == n.len() {
        t.eq_ignore_ascii_case(n)
    } else if t.len() < n.len() {
        let cut = n.len() - t.len();
        n[cut - 1] == b'.' && t.eq_ignore_ascii_case(&n[cut..])
    } else {
        false
    }
}

/// `ADDR` or `ADDR/BITS` against an IP host. As in curl: an entry of 128 bytes or more never
/// matches; BITS is decimal digits only, at most 128; for IPv4 a prefix of 0 or 32 means an
/// exact match and more than 32 matches nothing; for IPv6 0 means 128.
fn match_ip(token: &str, ip: IpAddr) -> bool {
    if token.len() >= 128 {
        return false;
    }
    let (addr, bits) = match token.split_once('/') {
        None => (token, 0u32),
        Some((addr, bits)) => {
            if bits.is_empty() || bits.len() > 3 || !bits.bytes().all(|b| b.is_ascii_digit()) {
                return false;
            }
            match bits.parse::<u32>() {
                Ok(b) if b <= 128 => (addr, b),
                _ => return false,
            }
        }
    };
    match ip {
        IpAddr::V4(host) => match addr.parse::<Ipv4Addr>() {
            Ok(net) => cidr4(host, net, bits),
            Err(_) => false,
        },
        IpAddr::V6(host) => match addr.parse::<Ipv6Addr>() {
            Ok(net) => cidr6(host, net, bits),
            Err(_) => false,
        },
    }
}

fn cidr4(host: Ipv4Addr, net: Ipv4Addr, bits: u32) -> bool {
    if bits > 32 {
        return false;
    }
    if bits == 0 || bits == 32 {
        return host == net;
    }
    let mask = u32::MAX << (32 - bits);
    (u32::from(host) ^ u32::from(net)) & mask == 0
}

fn cidr6(host: Ipv6Addr, net: Ipv6Addr, bits: u32) -> bool {
    let bits = if bits == 0 { 128 } else { bits };
    if bits > 128 {
        return false;
    }
    let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
    (u128::from(host) ^ u128::from(net)) & mask == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// curl's own table (tests/unit/unit1614.c) plus the cases its documentation describes,
    /// as (host, list, matches). `tests/interop/noproxy_vs_curl.py` runs the installed curl
    /// over the same rows: curl 8.18 and later agree on every row; older releases differ only
    /// where curl later fixed its matcher (blank-separated lists, `/16a`, IPv6 masks).
    pub const NO_PROXY_TABLE: &[(&str, &str, bool)] = &[
        (
            "www.example.com",
            "localhost .example.com .example.de",
            false,
        ),
        (
            "www.example.com",
            "localhost,.example.com,.example.de",
            true,
        ),
        (
            "www.example.com.",
            "localhost,.example.com,.example.de",
            true,
        ),
        ("example.com", "localhost,.example.com,.example.de", true),
        ("example.com.", "localhost,.example.com,.example.de", true),
        (
            "www.example.com",
            "localhost,.example.com.,.example.de",
            true,
        ),
        (
            "www.example.com",
            "localhost,www.example.com.,.example.de",
            true,
        ),
        ("example.com", "localhost,example.com,.example.de", true),
        ("example.com.", "localhost,example.com,.example.de", true),
        ("nexample.com", "localhost,example.com,.example.de", false),
        ("www.example.com", "localhost,example.com,.example.de", true),
        ("127.0.0.1", "127.0.0.1,localhost", true),
        ("127.0.0.1", "127.0.0.1,localhost,", true),
        ("127.0.0.1", "127.0.0.1/8,localhost,", true),
        ("127.0.0.1", "127.0.0.1/28,localhost,", true),
        ("127.0.0.1", "127.0.0.1/31,localhost,", true),
        ("127.0.0.1", "localhost,127.0.0.1", true),
        ("localhost", "localhost,127.0.0.1", true),
        ("localhost", "127.0.0.1,localhost", true),
        ("foobar", "barfoo", false),
        ("foobar", "foobar", true),
        ("192.168.0.1", "foobar", false),
        ("192.168.0.1", "192.168.0.0/16", true),
        ("192.168.0.1", "192.168.0.0/16a", false),
        ("192.168.0.1", "192.168.0.0/16 ", true),
        ("192.168.0.1", "192.168.0.0/a16", false),
        ("192.168.0.1", "192.168.0.0/ 16", false),
        ("192.168.0.1", "192.168.0.0/24", true),
        ("192.168.0.1", "192.168.0.0/32", false),
        ("192.168.0.1", "192.168.0.1/32", true),
        ("192.168.0.1", "192.168.0.1/33", false),
        ("192.168.0.1", "192.168.0.0", false),
        ("192.168.1.1", "192.168.0.0/24", false),
        ("192.168.1.1", "192.168.0.0/33", false),
        ("192.168.1.1", "foo, bar, 192.168.0.0/24", false),
        ("192.168.1.1", "foo, bar, 192.168.0.0/16", true),
        ("::1", "foo, bar, 192.168.0.0/16", false),
        ("::1", "foo, bar, ::1/64", true),
        ("::1", "::1/64", true),
        ("::1", "::1/96", true),
        ("::1", "::1/129", false),
        ("::1", "::1/128", true),
        ("::1", "::1/127", true),
        ("::1", "::1/a127", false),
        ("::1", "::1/127a", false),
        ("::1", "::1/ 127", false),
        ("::1", "::1/127 ", true),
        ("2001:db8:8000::1", "2001:db8::/65", false),
        ("2001:db8:8000::1", "2001:db8::/72", false),
        ("2001:db8::1", "2001:db8::/65", true),
        ("2001:db8::1", "2001:db8::/72", true),
        ("bar", "foo, bar, ::1/64", true),
        ("BAr", "foo, bar, ::1/64", true),
        ("BAr", "foo,,,,,              bar, ::1/64", true),
        ("www.example.com", "foo, .example.com", true),
        ("www.example.com", "www2.example.com, .example.net", false),
        ("example.com", ".example.com, .example.net", true),
        ("nonexample.com", ".example.com, .example.net", false),
        // The documented rules the issue spells out.
        ("git.corp.example", ".corp.example", true),
        ("git.corp.example", "corp.example", true),
        ("xcorp.example", "corp.example", false),
        ("xcorp.example", ".corp.example", false),
        ("GIT.Corp.Example", "corp.EXAMPLE", true),
        ("anything.example", "*", true),
        ("10.1.2.3", "*", true),
        // `*` only as the whole list; inside a list it is a name like any other.
        ("anything.example", "*,foo", false),
        ("anything.example", " *", false),
        ("10.1.2.3", "10.0.0.0/8", true),
        ("11.1.2.3", "10.0.0.0/8", false),
        ("fd12::1", "fd00::/8", true),
        ("fe80::1", "fd00::/8", false),
        ("2001:db8::5", "2001:db8::5", true),
        ("2001:db8::5", "[2001:db8::5]", false),
        // No resolving: names never match addresses and addresses never match names.
        ("127.0.0.1", "localhost", false),
        ("localhost", "127.0.0.1", false),
        // curl's quirks kept: /0 on IPv4 is an exact match, not "everything".
        ("10.1.2.3", "0.0.0.0/0", false),
        ("", "*", false),
        ("example.com", "", false),
    ];

    #[test]
    fn no_proxy_table_matches_curl() {
        for &(host, list, want) in NO_PROXY_TABLE {
            assert_eq!(
                no_proxy_match(host, list).is_some(),
                want,
                "{host:?} in {list:?} should {}match",
                if want { "" } else { "not " }
            );
        }
    }

    #[test]
    fn long_ip_entries_never_match() {
        let long = "127.0.0.1.".repeat(13);
        assert!(no_proxy_match("127.0.0.1", &format!("localhost,{long}")).is_none());
    }

    #[test]
    fn the_matching_entry_is_named() {
        assert_eq!(
            no_proxy_match("git.corp.example", "localhost, .corp.example"),
            Some(".corp.example")
        );
        assert_eq!(
            no_proxy_match("10.9.8.7", "a,10.0.0.0/8"),
            Some("10.0.0.0/8")
        );
    }

    fn env_of(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<OsString> {
        move |name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| OsString::from(v))
        }
    }

    fn host(s: &str) -> Host {
        crate::config::parse_host(s).unwrap()
    }

    #[test]
    fn variables_are_read_in_curls_order() {
        type Vars = &'static [(&'static str, &'static str)];
        let cases: &[(Vars, Option<&str>)] = &[
            (&[], None),
            (
                &[("HTTPS_PROXY", "B"), ("https_proxy", "A")],
                Some("https_proxy"),
            ),
            (
                &[("HTTPS_PROXY", "B"), ("all_proxy", "C")],
                Some("HTTPS_PROXY"),
            ),
            (&[("ALL_PROXY", "D"), ("all_proxy", "C")], Some("all_proxy")),
            (&[("ALL_PROXY", "D")], Some("ALL_PROXY")),
            // An empty variable is as good as unset: the next one counts.
            (
                &[("https_proxy", ""), ("HTTPS_PROXY", "B")],
                Some("HTTPS_PROXY"),
            ),
            (&[("https_proxy", "")], None),
            // http_proxy is for http:// URLs; gimlet's destinations are treated as https://.
            (&[("http_proxy", "E"), ("HTTP_PROXY", "F")], None),
        ];
        for (vars, want) in cases {
            let got = choose(&host("h.example"), &env_of(vars), None).unwrap();
            match (got, want) {
                (Choice::Direct { why }, None) => assert!(why.contains("none of"), "{why}"),
                (Choice::Proxy { var, .. }, Some(w)) => assert_eq!(var, *w, "{vars:?}"),
                (got, want) => panic!("{vars:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn no_proxy_lowercase_wins_and_the_choice_says_why() {
        let env = env_of(&[
            ("HTTPS_PROXY", "http://proxy:3128"),
            ("no_proxy", ".corp.example"),
            ("NO_PROXY", "*"),
        ]);
        assert_eq!(
            choose(&host("git.corp.example"), &env, None).unwrap(),
            Choice::Direct {
                why: "direct: no_proxy entry .corp.example matches git.corp.example".into()
            }
        );
        match choose(&host("github.com"), &env, None).unwrap() {
            Choice::Proxy { var, value, why } => {
                assert_eq!((var, value.as_str()), ("HTTPS_PROXY", "http://proxy:3128"));
                assert_eq!(
                    why,
                    "proxy http://proxy:3128 from HTTPS_PROXY (no_proxy has no entry for github.com)"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn noproxy_option_replaces_the_environment() {
        let env = env_of(&[("https_proxy", "p:3128"), ("NO_PROXY", "*")]);
        // An empty --noproxy excludes nothing, overriding NO_PROXY=*.
        assert!(matches!(
            choose(&host("h.example"), &env, Some("")).unwrap(),
            Choice::Proxy { .. }
        ));
        assert_eq!(
            choose(&host("h.example"), &env, Some("h.example")).unwrap(),
            Choice::Direct {
                why: "direct: --noproxy entry h.example matches h.example".into()
            }
        );
        assert_eq!(
            choose(&host("h.example"), &env, None).unwrap(),
            Choice::Direct {
                why: "direct: NO_PROXY is * (no proxy for any host)".into()
            }
        );
    }

    #[test]
    fn ipv6_destinations_match_bare_entries() {
        let env = env_of(&[("https_proxy", "p:3128"), ("no_proxy", "fd00::/8")]);
        assert!(matches!(
            choose(&host("[fd00::1]"), &env, None).unwrap(),
            Choice::Direct { .. }
        ));
    }

    #[test]
    fn the_explanation_hides_the_password() {
        let env = env_of(&[("https_proxy", "http://u:hunter2@p:3128")]);
        let Choice::Proxy { why, .. } = choose(&host("h.example"), &env, None).unwrap() else {
            panic!()
        };
        assert!(!why.contains("hunter2"), "{why}");
    }

    #[test]
    fn a_non_utf8_variable_is_named() {
        use std::os::unix::ffi::OsStringExt;
        let env = |n: &str| (n == "https_proxy").then(|| OsString::from_vec(vec![0xff]));
        let e = choose(&host("h.example"), &env, None).unwrap_err();
        assert!(e.contains("https_proxy"), "{e}");
    }
}
