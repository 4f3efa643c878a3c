//! The forwards file and `-L` specs → [`Forward`]s. Pure: text in, values or `FILE:LINE:`
//! errors out; reading the file and binding ports belong to the engine.
//!
//! A line is the seed's `<Source port> <Destination address> <Destination port> <Proxy
//! address> <Proxy port>` (the proxy pair optional: direct), extended:
//!
//! ```text
//! [BIND:]PORT HOST PORT [PROXYHOST PROXYPORT | ROUTE] [key=value ...]   # comment
//! ```
//!
//! ROUTE is a proxy URL (`http://`, `https://`, `socks4://`, `socks4a://`, `socks5://`,
//! `socks5h://`; userinfo allowed), `host:port`, a comma-separated chain of them (first dialled
//! first), `direct`, or `default`: the route `-L` takes (the command line's proxy, else the
//! environment's unless its no_proxy names HOST, else direct). With no route a line uses the
//! command line's proxy, or goes direct when there is none (the seed's rule: the environment
//! never turns a seed line into a proxied one). BIND is an IP address (`[v6]` in brackets), `localhost` or `*` (every IPv4
//! interface; `[::]` for IPv6); it defaults to 127.0.0.1. PORT 0 asks the kernel for a free port (the log names it).

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail};

use crate::auth::{self, Scheme};
use crate::config::{self, Endpoint, Proxy};

/// One forward: where to listen, where to go, and how.
#[derive(Clone, Debug)]
pub struct Forward {
    pub bind: SocketAddr,
    pub target: Endpoint,
    pub route: RouteSpec,
    pub options: Options,
    /// Where it was written: `-L 2222:host:22` or `FILE:LINE`, for the log.
    pub origin: String,
    /// `-D` / a `dynamic` line: the client names each destination (SOCKS or HTTP CONNECT);
    /// `target` is then unused.
    pub dynamic: bool,
}

/// How a forward reaches its target.
#[derive(Clone, Debug)]
pub enum RouteSpec {
    /// No route written on a forwards line (the seed's format): the command line's proxy,
    /// else direct; never the environment's.
    Seed,
    /// `default`, `-L`, `-D` and `dynamic` lines without a route: the command line's proxy,
    /// else the environment's (`https_proxy`, … unless `no_proxy` matches), else direct.
    Default,
    /// `direct`.
    Direct,
    /// One proxy, or a chain (first dialled first).
    Proxies(Vec<Proxy>),
}

/// Per-forward settings; `None` keeps the command line's.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub idle_timeout: Option<Option<Duration>>,
    pub keepalive: Option<Option<Duration>>,
    /// `proxy-auth=`: `Some(None)` is `any`.
    pub proxy_auth: Option<Option<Scheme>>,
    pub proxy_auth_file: Option<PathBuf>,
}

impl Forward {
    /// Whether two forwards behave the same for a new connection (reload compares them).
    pub fn same_as(&self, other: &Forward) -> bool {
        self.describe() == other.describe()
    }

    /// The forward as one log phrase: `HOST:PORT via proxy P:3128` or `HOST:PORT direct`.
    /// Credentials are never part of it.
    pub fn describe(&self) -> String {
        let via = match &self.route {
            RouteSpec::Seed => "via the command line's proxy, if any".to_owned(),
            RouteSpec::Default => "via the default route".to_owned(),
            RouteSpec::Direct => "direct".to_owned(),
            RouteSpec::Proxies(hops) => format!(
                "via proxy {}",
                hops.iter()
                    .map(|p| format!("{}{}", if p.tls { "https://" } else { "" }, p.name()))
                    .collect::<Vec<_>>()
                    .join(" -> ")
            ),
        };
        let o = &self.options;
        let mut extra = String::new();
        if let Some(t) = o.idle_timeout {
            extra += &format!(" idle-timeout={}", secs_text(t));
        }
        if let Some(k) = o.keepalive {
            extra += &format!(" keepalive={}", secs_text(k));
        }
        if let Some(s) = o.proxy_auth {
            extra += &format!(
                " proxy-auth={}",
                s.map_or("any".to_owned(), |s| format!("{s:?}").to_lowercase())
            );
        }
        if let Some(f) = &o.proxy_auth_file {
            extra += &format!(" proxy-auth-file={}", f.display());
        }
        match self.dynamic {
            true => format!("dynamic (SOCKS, HTTP) {via}{extra}"),
            false => format!("{} {via}{extra}", self.target),
        }
    }
}

fn secs_text(d: Option<Duration>) -> String {
    d.map_or("0".to_owned(), |d| format!("{}", d.as_secs_f64()))
}

/// A parse failure at `FILE:LINE:` (or in `-L SPEC`).
#[derive(Debug)]
pub struct ParseError {
    pub origin: String,
    pub error: anyhow::Error,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {:#}", self.origin, self.error)
    }
}

impl std::error::Error for ParseError {}

/// Parses a whole forwards file. `name` is how errors name the file. Every line is checked;
/// the first error is returned (a reload keeps the previous forwards on any error).
pub fn parse_file(name: &str, text: &str) -> Result<Vec<Forward>, ParseError> {
    let mut forwards: Vec<Forward> = Vec::new();
    let mut binds = HashSet::new();
    for (i, line) in text.lines().enumerate() {
        let origin = format!("{name}:{}", i + 1);
        let fail = |error| ParseError {
            origin: origin.clone(),
            error,
        };
        let Some(f) = parse_line(line, &origin).map_err(fail)? else {
            continue;
        };
        if f.bind.port() != 0 && !binds.insert(f.bind) {
            return Err(fail(anyhow!(
                "{} is already forwarded by an earlier line",
                f.bind
            )));
        }
        forwards.push(f);
    }
    Ok(forwards)
}

/// Whether a word is a `key=value` option: the key is a lowercase name, so a proxy URL whose
/// password holds a '=' stays a field, and no option value is a URL (a URL in an option's
/// place stays a field, which is refused without quoting it).
fn is_option(word: &str) -> bool {
    !word.contains("://")
        && word.split_once('=').is_some_and(|(key, _)| {
            !key.is_empty() && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
        })
}

/// The fields, then the options, which come last. A misplaced word is quoted with any
/// password in it redacted: it may be a proxy URL.
fn split_options<'a, 'w>(words: &'a [&'w str]) -> anyhow::Result<(&'a [&'w str], &'a [&'w str])> {
    let split = words
        .iter()
        .position(|w| is_option(w))
        .unwrap_or(words.len());
    let (fields, opts) = words.split_at(split);
    if let Some(w) = opts.iter().find(|w| !is_option(w)) {
        bail!(
            "{:?} after key=value options (options come last)",
            crate::route::without_password(w)
        );
    }
    Ok((fields, opts))
}

/// The line without its comment. A comment starts at a '#' that begins a word: one inside a
/// word (a password in a proxy URL, a URL fragment) is part of it.
pub(crate) fn strip_comment(line: &str) -> &str {
    match line.char_indices().find(|&(i, c)| {
        c == '#'
            && line[..i]
                .chars()
                .next_back()
                .is_none_or(char::is_whitespace)
    }) {
        Some((i, _)) => &line[..i],
        None => line,
    }
}

/// One line; `None` for a blank or comment line.
fn parse_line(line: &str, origin: &str) -> anyhow::Result<Option<Forward>> {
    let line = strip_comment(line);
    let words: Vec<&str> = line.split_ascii_whitespace().collect();
    if words.is_empty() {
        return Ok(None);
    }
    if words[0] == "dynamic" {
        stray_credentials(&words, &[2])?;
        return parse_dynamic_line(&words[1..], origin).map(Some);
    }
    stray_credentials(&words, &[3, 4])?;
    let (fields, opts) = split_options(&words)?;
    let (bind, target, route) = match fields {
        [listen, host, port] => (*listen, (*host, *port), RouteSpec::Seed),
        [listen, host, port, route] => (*listen, (*host, *port), parse_route(route)?),
        [listen, host, port, phost, pport] => {
            let joined = match phost.parse::<Ipv6Addr>() {
                Ok(_) => format!("[{phost}]:{pport}"),
                Err(_) => format!("{phost}:{pport}"),
            };
            (*listen, (*host, *port), parse_route(&joined)?)
        }
        _ => bail!(
            "expected [BIND:]PORT HOST PORT [PROXYHOST PROXYPORT | ROUTE] [key=value ...], got {} field(s)",
            fields.len()
        ),
    };
    Ok(Some(Forward {
        bind: parse_bind(bind)?,
        target: parse_target(target.0, target.1)?,
        route,
        options: parse_options(opts)?,
        origin: origin.to_owned(),
        dynamic: false,
    }))
}

/// Credentials belong in the ROUTE's URL (`route_at`: the word positions a route may take).
/// A `user:password@` anywhere else is refused without quoting the word, so that a URL
/// written in the wrong column never puts its password in an error line or the log.
fn stray_credentials(words: &[&str], route_at: &[usize]) -> anyhow::Result<()> {
    match words
        .iter()
        .enumerate()
        .find(|(i, w)| w.contains('@') && !route_at.contains(i))
    {
        Some((i, _)) => bail!(
            "field {} holds '@': credentials go only in the proxy URL (the route), not shown here",
            i + 1
        ),
        None => Ok(()),
    }
}

/// `dynamic [BIND:]PORT [ROUTE] [key=value ...]`: a `-D` port.
fn parse_dynamic_line(words: &[&str], origin: &str) -> anyhow::Result<Forward> {
    let (fields, opts) = split_options(words)?;
    let (bind, route) = match fields {
        [bind] => (*bind, RouteSpec::Default),
        [bind, route] => (*bind, parse_route(route)?),
        _ => bail!(
            "expected dynamic [BIND:]PORT [ROUTE] [key=value ...], got {} field(s) after dynamic",
            fields.len()
        ),
    };
    Ok(Forward {
        bind: parse_bind(bind)?,
        target: unused_target(),
        route,
        options: parse_options(opts)?,
        origin: origin.to_owned(),
        dynamic: true,
    })
}

/// `-D [BIND:]PORT`.
pub fn parse_dynamic(spec: &str) -> anyhow::Result<Forward> {
    Ok(Forward {
        bind: parse_bind(spec)?,
        target: unused_target(),
        route: RouteSpec::Default,
        options: Options::default(),
        origin: format!("-D {spec}"),
        dynamic: true,
    })
}

fn unused_target() -> Endpoint {
    Endpoint {
        host: config::Host::Name(String::new()),
        port: 0,
    }
}

fn parse_target(host: &str, port: &str) -> anyhow::Result<Endpoint> {
    Ok(Endpoint {
        host: config::parse_host(host).map_err(|e| e.context("parsing the destination host"))?,
        port: config::parse_port(port).map_err(|e| e.context("parsing the destination port"))?,
    })
}

fn parse_route(s: &str) -> anyhow::Result<RouteSpec> {
    if s.eq_ignore_ascii_case("direct") {
        return Ok(RouteSpec::Direct);
    }
    if s.eq_ignore_ascii_case("default") {
        return Ok(RouteSpec::Default);
    }
    let hops = s
        .split(',')
        .enumerate()
        .map(|(i, hop)| {
            config::parse_proxy(hop).map_err(|e| match s.contains(',') {
                true => e.context(format!("parsing hop {} of the chain", i + 1)),
                false => e.context("parsing the proxy"),
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(RouteSpec::Proxies(hops))
}

/// `[BIND:]PORT`: BIND an IP literal (`[v6]`), `localhost` or `*`; 127.0.0.1 by default.
pub fn parse_bind(s: &str) -> anyhow::Result<SocketAddr> {
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (Some(h), p),
        None => (None, s),
    };
    let port = match port.parse::<u16>() {
        Ok(p) if port.bytes().all(|b| b.is_ascii_digit()) => p,
        _ => bail!("invalid listening port {port:?}: expected a number from 0 to 65535"),
    };
    let ip = match host {
        None | Some("localhost") => IpAddr::V4(Ipv4Addr::LOCALHOST),
        Some("*") => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        Some(h) => {
            let bare = h
                .strip_prefix('[')
                .and_then(|r| r.strip_suffix(']'))
                .unwrap_or(h);
            if bare.contains(':') && bare.len() == h.len() {
                bail!("an IPv6 listening address needs brackets: [{h}]:{port}");
            }
            bare.parse().map_err(|_| {
                anyhow!("invalid listening address {h:?}: expected an IP address, localhost or *")
            })?
        }
    };
    Ok(SocketAddr::new(ip, port))
}

fn parse_options(opts: &[&str]) -> anyhow::Result<Options> {
    let mut o = Options::default();
    for opt in opts {
        let (key, value) = opt.split_once('=').unwrap_or((opt, ""));
        let context = |e: anyhow::Error| e.context(format!("parsing {key}"));
        match key {
            "idle-timeout" if value == "0" => o.idle_timeout = Some(None),
            "idle-timeout" => {
                o.idle_timeout = Some(Some(config::parse_secs(value).map_err(context)?))
            }
            "keepalive" => o.keepalive = Some(config::parse_keepalive(value).map_err(context)?),
            "proxy-auth" => {
                o.proxy_auth = Some(
                    auth::parse_scheme_choice(value)
                        .map_err(|e| e.context("parsing proxy-auth"))?,
                )
            }
            "proxy-auth-file" if !value.is_empty() => o.proxy_auth_file = Some(value.into()),
            "proxy-auth-file" => bail!("proxy-auth-file needs a file name"),
            _ => bail!(
                "unknown option {key:?} (known: idle-timeout, keepalive, proxy-auth, proxy-auth-file)"
            ),
        }
    }
    Ok(o)
}

/// `-L [BIND:]PORT:HOST:HOSTPORT`, ssh's syntax with `[v6]` in brackets.
pub fn parse_local(spec: &str) -> anyhow::Result<Forward> {
    let parts = split_colons(spec)?;
    let (bind, host, port) = match parts.as_slice() {
        [port, host, hp] => (port.to_string(), *host, *hp),
        [bind, port, host, hp] => (format!("{bind}:{port}"), *host, *hp),
        _ => bail!("expected [BIND:]PORT:HOST:HOSTPORT"),
    };
    let bind = if bind.starts_with(':') {
        bail!("the listening address before ':' is empty")
    } else {
        bind
    };
    Ok(Forward {
        bind: parse_bind(&bind)?,
        target: parse_target(host, port)?,
        route: RouteSpec::Default,
        options: Options::default(),
        origin: format!("-L {spec}"),
        dynamic: false,
    })
}

/// Splits at ':' outside brackets; `[v6]` keeps its brackets.
fn split_colons(s: &str) -> anyhow::Result<Vec<&str>> {
    let mut parts = Vec::new();
    let (mut start, mut depth) = (0, 0);
    for (i, c) in s.char_indices() {
        match c {
            '[' => depth += 1,
            ']' if depth == 0 => bail!("unbalanced ']'"),
            ']' => depth -= 1,
            ':' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        bail!("missing ']'");
    }
    parts.push(&s[start..]);
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(line: &str) -> anyhow::Result<Option<Forward>> {
        parse_line(line, "f:1")
    }

    fn shown(line: &str) -> String {
        match one(line) {
            Ok(Some(f)) => format!("{} {}", f.bind, f.describe()),
            Ok(None) => "skip".to_owned(),
            Err(e) => format!("error: {e:#}"),
        }
    }

    #[test]
    fn lines_parse_as_the_table_says() {
        let table = [
            // The seed's format, exactly as written.
            (
                "8080 example.com 80 proxy.lan 3128",
                "127.0.0.1:8080 example.com:80 via proxy proxy.lan:3128",
            ),
            (
                "2222 git.lan 22",
                "127.0.0.1:2222 git.lan:22 via the command line's proxy, if any",
            ),
            (
                "2222 git.lan 22 default",
                "127.0.0.1:2222 git.lan:22 via the default route",
            ),
            (
                "2222 git.lan 22 DEFAULT keepalive=5",
                "127.0.0.1:2222 git.lan:22 via the default route keepalive=5",
            ),
            ("  # a comment", "skip"),
            ("", "skip"),
            ("\t \t", "skip"),
            (
                "2222 git.lan 22 # trailing comment",
                "127.0.0.1:2222 git.lan:22 via the command line's proxy, if any",
            ),
            ("*:2222 git.lan 22 direct", "0.0.0.0:2222 git.lan:22 direct"),
            (
                "dynamic 1080",
                "127.0.0.1:1080 dynamic (SOCKS, HTTP) via the default route",
            ),
            (
                "dynamic [::1]:0 http://u:p@proxy:8080 idle-timeout=5",
                "[::1]:0 dynamic (SOCKS, HTTP) via proxy proxy:8080 idle-timeout=5",
            ),
            (
                "dynamic 1080 direct",
                "127.0.0.1:1080 dynamic (SOCKS, HTTP) direct",
            ),
            (
                "dynamic",
                "error: expected dynamic [BIND:]PORT [ROUTE] [key=value ...], got 0 field(s) after dynamic",
            ),
            (
                "dynamic 1080 direct extra",
                "error: expected dynamic [BIND:]PORT [ROUTE] [key=value ...], got 3 field(s) after dynamic",
            ),
            (
                "[::1]:2222 git.lan 22 DIRECT",
                "[::1]:2222 git.lan:22 direct",
            ),
            (
                "0.0.0.0:0 10.0.0.1 22 http://u:p@proxy:8080",
                "0.0.0.0:0 10.0.0.1:22 via proxy proxy:8080",
            ),
            (
                "2222 ::1 22 ::1 3128",
                "127.0.0.1:2222 [::1]:22 via proxy [::1]:3128",
            ),
            (
                "2222 h 22 https://proxy idle-timeout=60 keepalive=0 proxy-auth=basic",
                "127.0.0.1:2222 h:22 via proxy https://proxy:443 idle-timeout=60 keepalive=0 proxy-auth=basic",
            ),
            (
                "2222 h 22 proxy-auth-file=/etc/gimlet/auth",
                "127.0.0.1:2222 h:22 via the command line's proxy, if any proxy-auth-file=/etc/gimlet/auth",
            ),
            (
                "2222 h",
                "error: expected [BIND:]PORT HOST PORT [PROXYHOST PROXYPORT | ROUTE] [key=value ...], got 2 field(s)",
            ),
            (
                "2222 h 22 p 3128 extra",
                "error: expected [BIND:]PORT HOST PORT [PROXYHOST PROXYPORT | ROUTE] [key=value ...], got 6 field(s)",
            ),
            (
                "99999 h 22",
                "error: invalid listening port \"99999\": expected a number from 0 to 65535",
            ),
            (
                "2222 h 0",
                "error: parsing the destination port: invalid port \"0\": expected a number from 1 to 65535",
            ),
            (
                "2222 h 22 http://a:1,socks5h://b",
                "127.0.0.1:2222 h:22 via proxy a:1 -> socks5h://b:1080",
            ),
            (
                "2222 h 22 http://a:1,ftp://b:2",
                "error: parsing hop 2 of the chain: unsupported proxy scheme \"ftp\" (expected http://, https://, https+h2://, socks4://, socks4a://, socks5:// or socks5h://)",
            ),
            (
                "2222 h 22 socks5://p",
                "127.0.0.1:2222 h:22 via proxy socks5://p:1080",
            ),
            (
                "2222 h 22 color=blue",
                "error: unknown option \"color\" (known: idle-timeout, keepalive, proxy-auth, proxy-auth-file)",
            ),
            (
                "2222 h 22 idle-timeout=soon",
                "error: parsing idle-timeout: \"soon\" is not a number of seconds (expected more than 0 and at most 1000000000 seconds, about 31 years)",
            ),
            (
                "2222 h 22 keepalive=1 direct",
                "error: \"direct\" after key=value options (options come last)",
            ),
            (
                "::1:2222 h 22",
                "error: an IPv6 listening address needs brackets: [::1]:2222",
            ),
            (
                "http://u:pw@p:3128 h 22",
                "error: field 1 holds '@': credentials go only in the proxy URL (the route), not shown here",
            ),
            (
                "host.lan:2222 h 22",
                "error: invalid listening address \"host.lan\": expected an IP address, localhost or *",
            ),
            (
                "2222 bad/host 22",
                "error: parsing the destination host: \"bad/host\" contains '/', which is not allowed in a host name",
            ),
        ];
        for (line, want) in table {
            assert_eq!(shown(line), want, "line {line:?}");
        }
    }

    #[test]
    fn a_password_in_a_proxy_url_never_shows_in_the_description() {
        let f = one("1 h 2 http://user:s3cret@p:3128").unwrap().unwrap();
        assert!(!f.describe().contains("s3cret"));
        assert!(!format!("{:?}", f).contains("s3cret"));
    }

    #[test]
    fn no_error_about_a_line_shows_a_password_in_it() {
        for line in [
            "2222 host 22 idle-timeout=5 http://alice:S3cretPW@proxy:3128",
            "dynamic 1080 keepalive=5 socks5://bob:S3cretPW@gw:1080",
            "2222 host 22 http://alice:S3c#retPW@proxy:x",
            "2222 host 22 http://alice:S3c=retPW@proxy:x",
            "2222 host 22 alice:S3c=retPW@proxy:x",
            "2222 host 22 http://a:S3cretPW@p:1,http://b:S3cretPW@q:x",
        ] {
            let e = parse_file("f", line).unwrap_err();
            let shown = format!("{e:#}");
            assert!(!shown.contains("S3c"), "{line:?}: {shown}");
        }
    }

    #[test]
    fn a_hash_inside_a_word_is_no_comment() {
        let f = one("2222 host 22 http://alice:S3c#ret@proxy:3128 # the lab proxy")
            .unwrap()
            .unwrap();
        match &f.route {
            RouteSpec::Proxies(p) => assert_eq!(p[0].endpoint.to_string(), "proxy:3128"),
            other => panic!("{other:?}"),
        }
        assert!(one("#2222 host 22").unwrap().is_none());
        assert!(one("   # indented comment").unwrap().is_none());
    }

    #[test]
    fn file_errors_name_file_and_line() {
        let text = "# forwards\n2222 a 22\n\n2223 b 22 nonsense: 1\n";
        let e = parse_file("/etc/f", text).unwrap_err();
        assert!(e.to_string().starts_with("/etc/f:4: "), "{e}");
        let ok = parse_file("f", "2222 a 22\n2223 b 22 p 3128\n").unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[1].origin, "f:2");
    }

    #[test]
    fn the_same_listening_address_twice_is_refused() {
        let e = parse_file("f", "2222 a 22\n127.0.0.1:2222 b 22\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "f:2: 127.0.0.1:2222 is already forwarded by an earlier line"
        );
        // Port 0 asks for a fresh port each time: never a duplicate.
        assert_eq!(parse_file("f", "0 a 22\n0 b 22\n").unwrap().len(), 2);
    }

    #[test]
    fn local_specs_follow_ssh() {
        let table = [
            ("2222:git.lan:22", "127.0.0.1:2222 git.lan:22"),
            ("*:2222:git.lan:22", "0.0.0.0:2222 git.lan:22"),
            ("[::1]:2222:[fd00::1]:22", "[::1]:2222 [fd00::1]:22"),
            ("0.0.0.0:0:10.1.2.3:443", "0.0.0.0:0 10.1.2.3:443"),
            ("localhost:8080:web:80", "127.0.0.1:8080 web:80"),
        ];
        for (spec, want) in table {
            let f = parse_local(spec).unwrap();
            assert_eq!(format!("{} {}", f.bind, f.target), want, "{spec}");
            assert_eq!(f.origin, format!("-L {spec}"));
        }
        for (spec, want) in [
            ("2222:git.lan", "expected [BIND:]PORT:HOST:HOSTPORT"),
            ("a:b:c:d:e", "expected [BIND:]PORT:HOST:HOSTPORT"),
            ("[::1:2222:h:22", "missing ']'"),
            (":2222:h:22", "the listening address before ':' is empty"),
            (
                "2222:h:22x",
                "parsing the destination port: invalid port \"22x\": expected a number from 1 to 65535",
            ),
        ] {
            assert_eq!(
                format!("{:#}", parse_local(spec).unwrap_err()),
                want,
                "{spec}"
            );
        }
    }
}
