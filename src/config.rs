//! `Cli` → `Config`: parse `host:port`, `[v6]:port` and proxy URLs, validate the target and
//! every header before anything is sent, pick the credential source. Never panics on user
//! input; every failure is a `Kind::Usage` error that names the offending value.

use std::ffi::OsString;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::ops::Range;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};

use crate::auth::{self, Scheme};
use crate::cli::Cli;
use crate::credentials::{self, Askers, Credentials, Source, Spec};
use crate::error::{Error, Kind, ResultExt};
use crate::route::{split_scheme, without_password};
use crate::tls;

/// A host as it appears in an authority: a DNS name or an IP literal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    Name(String),
    Ip(IpAddr),
    /// An IPv6 address with a zone id (RFC 6874, `fe80::1%eth0`): reached through that
    /// interface. Only the proxy may have one; a zone means nothing beyond this machine.
    Scoped(Ipv6Addr, Zone),
}

/// The zone of a scoped IPv6 address: the interface as the user named it, and its index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Zone {
    pub name: String,
    pub index: u32,
}

impl fmt::Display for Host {
    /// Authority form (RFC 9110 §7.2): IPv6 literals in brackets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n),
            Host::Ip(IpAddr::V4(a)) => write!(f, "{a}"),
            Host::Ip(IpAddr::V6(a)) => write!(f, "[{a}]"),
            Host::Scoped(a, zone) => write!(f, "[{a}%{}]", zone.name),
        }
    }
}

/// `host:port`, printed in authority form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub host: Host,
    pub port: u16,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// One hop of the proxy chain.
#[derive(Clone, Debug)]
pub struct Proxy {
    pub endpoint: Endpoint,
    /// Credentials given in the proxy URL's userinfo.
    pub credentials: Spec,
    /// `https://`: TLS to the proxy.
    pub tls: bool,
    /// `socks4://`, `socks4a://`, `socks5://`, `socks5h://`: a SOCKS hop instead of HTTP CONNECT.
    pub socks: Option<crate::hop::socks::Version>,
    /// `https+h2://`: `h2` offered to this hop by ALPN (`--proxy-http2` for this hop alone).
    pub h2: bool,
}

impl Proxy {
    /// The hop as messages name it: `host:port` for HTTP and HTTPS (as they always have),
    /// `scheme://host:port` for SOCKS; never with credentials.
    pub fn name(&self) -> String {
        match self.socks {
            Some(v) => format!("{v}://{}", self.endpoint),
            None => self.endpoint.to_string(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Any,
    V4,
    V6,
}

/// Everything a run needs, validated.
#[derive(Debug)]
pub struct Config {
    /// The proxies to go through, first one first; empty for a direct connection. Each carries
    /// its own credentials (see `build`).
    pub proxies: Vec<Proxy>,
    /// Why the route was chosen, when the environment or `--noproxy` chose it (for `-v`).
    pub route_why: Option<String>,
    pub target: Endpoint,
    pub credentials: Spec,
    /// The scheme `--proxy-auth` forces; `None` for any.
    pub auth_scheme: Option<Scheme>,
    /// `--proxy-service-name`: the Kerberos service for Negotiate, when not HTTP@<proxy host>.
    pub proxy_service_name: Option<String>,
    /// Programs that can be asked for credentials.
    pub askers: Askers,
    /// Extra request headers in order, `Host` and `User-Agent` overrides included.
    pub headers: Vec<(String, String)>,
    pub user_agent: Option<String>,
    pub connect_timeout: Duration,
    pub idle_timeout: Option<Duration>,
    pub keepalive: Option<Duration>,
    pub family: Family,
    pub verbosity: u8,
    pub quiet: bool,
    /// Verification of an `https://` proxy.
    pub proxy_tls: tls::Options,
    /// `--proxy-http2`: offer h2 by ALPN to the last hop when it is `https://`.
    pub proxy_http2: bool,
    /// `--tls`: TLS to the destination, and how to verify it.
    pub target_tls: Option<tls::Options>,
    /// Zero-copy relaying with splice(2); `GIMLET_NO_SPLICE=1` turns it off.
    pub splice: bool,
    /// `--fdpass`: hand the socket to ssh instead of relaying.
    pub fdpass: bool,
    /// `-L` / `--forwards`: listen mode. `proxies` may then be empty (direct) and `target` is
    /// unused; each forward names its own.
    pub listen: Option<Listen>,
}

/// Listen mode: what to forward and how the daemon runs.
#[derive(Debug)]
pub struct Listen {
    /// `-L` forwards, in order.
    pub local: Vec<crate::forwards::Forward>,
    /// `--forwards FILE`, read (and re-read) by the engine.
    pub file: Option<std::path::PathBuf>,
    pub max_tunnels: Option<usize>,
    pub drain_timeout: Duration,
    pub log: Option<std::path::PathBuf>,
    /// `--allow`: the networks a `-D` port serves besides loopback, as (address, prefix).
    pub allow: Vec<(std::net::IpAddr, u8)>,
    /// The exclusion list a `-D` port applies per request: `--noproxy`, else `no_proxy` /
    /// `NO_PROXY`.
    pub noproxy: Option<String>,
    /// `--client-auth-file`: the `user:password` a `-D` port asks its clients for.
    pub client_auth_file: Option<std::path::PathBuf>,
    /// The variable `Config::proxies` came from (`https_proxy`, …) when no proxy was given on
    /// the command line; `None` when the command line gave them, or nothing did.
    pub proxy_var: Option<&'static str>,
    /// The exclusion list each `-L` / `default` forward's HOST is checked against, with its
    /// name: `--noproxy` always; `no_proxy`/`NO_PROXY` only for a proxy from the environment,
    /// as in the pipe mode.
    pub default_noproxy: Option<(&'static str, String)>,
    /// `--netrc-file`, or `~/.netrc` with `--netrc` (then a missing file is no error): looked
    /// up by host for every proxy of every route that has no credentials of its own.
    pub netrc: Option<(std::path::PathBuf, bool)>,
}

/// The environment variable holding `user:password`.
pub const AUTH_ENV: &str = "GIMLET_PROXY_AUTH";
/// The environment variable that turns splice(2) off, for troubleshooting and for testing
/// the copying path.
pub const NO_SPLICE_ENV: &str = "GIMLET_NO_SPLICE";
/// The environment variable naming a program to ask for credentials.
pub const ASKPASS_ENV: &str = "GIMLET_ASKPASS";

/// The netrc file to read: `--netrc-file`, or `$HOME/.netrc` with `--netrc`.
fn netrc_path(
    default: bool,
    file: Option<std::path::PathBuf>,
    env: &impl Fn(&str) -> Option<OsString>,
) -> anyhow::Result<Option<std::path::PathBuf>> {
    match (file, default) {
        (Some(file), _) => Ok(Some(file)),
        (None, true) => {
            let home = env("HOME").ok_or_else(|| anyhow!("--netrc needs HOME to find .netrc"))?;
            Ok(Some(std::path::PathBuf::from(home).join(".netrc")))
        }
        (None, false) => Ok(None),
    }
}

impl Config {
    /// Builds the config. `env` looks up environment variables (injected for tests).
    pub fn from_cli(cli: Cli, env: impl Fn(&str) -> Option<OsString>) -> Result<Config, Error> {
        build(cli, env).kind(Kind::Usage)
    }
}

fn build(cli: Cli, env: impl Fn(&str) -> Option<OsString>) -> anyhow::Result<Config> {
    let listen = listen_mode(&cli, &env)?;
    let Positional {
        proxies: proxy_args,
        auth_file: auth_file_arg,
        host: target_host,
        port: target_port,
    } = match listen {
        Some(_) => listen_positional(cli.proxy, cli.args)?,
        None => positional(cli.proxy, cli.args)?,
    };
    let target = match listen {
        // Unused: each forward has its own.
        Some(_) => Endpoint {
            host: Host::Name(target_host),
            port: 0,
        },
        None => parse_target(&target_host, &target_port)?,
    };
    // Listen mode with no proxy given takes the environment's, as the pipe mode does; which
    // forwards it serves (no_proxy is checked per forward or per request) is the engine's.
    let mut proxy_var = None;
    let (mut proxies, route_why) = match listen {
        Some(_) if proxy_args.is_empty() => {
            let (proxies, why, var) = env_route(&env)?;
            proxy_var = var;
            (proxies, why)
        }
        Some(_) => (parse_proxies(&proxy_args)?, None),
        None => choose_route(&proxy_args, &target, &env, cli.noproxy.as_deref())?,
    };

    let auth_file = match (cli.proxy_auth_file, auth_file_arg) {
        (Some(_), Some(_)) => {
            bail!("parsing arguments: both --proxy-auth-file and an AUTHFILE argument given")
        }
        (Some(f), None) => Some((f.clone(), Source::AuthFile(f))),
        (None, f) => f.map(|f| (f.clone().into(), Source::AuthFileArgument(f.into()))),
    };
    // -U, the credential file and GIMLET_PROXY_AUTH belong to the first hop (the proxy this
    // machine talks to); every hop's URL userinfo is its own, and netrc is looked up per hop by
    // host. Read lazily: a source that is not needed is not an error.
    let mut options = Some((cli.proxy_user, auth_file));
    // Listen mode reads them at once: they are for the proxies of the forwards too.
    let mut given_options = match (&listen, options.take()) {
        (Some(_), Some((user, file))) => Some(option_credentials(user, file, &env)?),
        (_, taken) => {
            options = taken;
            None
        }
    };
    let netrc = netrc_path(cli.netrc, cli.netrc_file, &env)?;
    for (i, proxy) in proxies.iter_mut().enumerate() {
        proxy.credentials = if !matches!(proxy.credentials, Spec::None) {
            proxy.credentials.clone().from_source(Source::Url)
        } else {
            let given = match (options.take(), &given_options) {
                (Some((user, file)), _) if i == 0 => option_credentials(user, file, &env)?,
                (_, Some(given)) if i == 0 => given.clone(),
                _ => Spec::None,
            };
            match (given, &netrc) {
                (Spec::None, Some(path)) => {
                    netrc_credentials(path, cli.netrc, &proxy.endpoint.host)?
                }
                (given, _) => given,
            }
        };
    }
    let credentials = match (proxies.first(), given_options.take()) {
        // Listen mode: the options' credentials alone (never a URL's or netrc's, which belong
        // to one host), for the first proxy of every route without credentials of its own.
        (_, Some(given)) => given,
        (Some(p), None) => p.credentials.clone(),
        (None, None) => Spec::None,
    };
    let program = |name: &str| {
        env(name)
            .filter(|v| !v.is_empty())
            .map(std::path::PathBuf::from)
    };
    let askers = Askers {
        askpass: program(ASKPASS_ENV),
        ssh_askpass: program("SSH_ASKPASS"),
    };
    let auth_scheme = auth::parse_scheme_choice(&cli.proxy_auth).context("parsing --proxy-auth")?;
    if let Some(name) = &cli.proxy_service_name {
        if name.is_empty() || name.chars().any(|c| c.is_control() || c.is_whitespace()) {
            bail!("parsing --proxy-service-name: {name:?} is not a Kerberos service name");
        }
    }

    let headers = cli
        .headers
        .iter()
        .map(|h| parse_header(h).with_context(|| format!("parsing header {}", header_shown(h))))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let user_agent = match cli.user_agent {
        None => Some(concat!("gimlet/", env!("CARGO_PKG_VERSION")).to_owned()),
        Some(ua) if ua.is_empty() => None,
        Some(ua) => Some(
            check_value(&ua)
                .map(|_| ua)
                .context("parsing --user-agent")?,
        ),
    };

    let connect_timeout = parse_secs(&cli.connect_timeout).context("parsing --connect-timeout")?;
    let idle_timeout = cli
        .idle_timeout
        .map(|s| parse_secs(&s).context("parsing --idle-timeout"))
        .transpose()?;
    let keepalive = parse_keepalive(&cli.keepalive).context("parsing --keepalive")?;

    let proxy_pins = tls::parse_pins(cli.proxy_pinnedpubkey.as_deref())
        .context("parsing --proxy-pinnedpubkey")?;
    let proxy_tls = tls::Options {
        cacert: cli.proxy_cacert,
        insecure: cli.proxy_insecure,
        pins: proxy_pins,
        servername: cli.proxy_servername,
        cert: cli.proxy_cert,
        key: cli.proxy_key,
    };
    let any_tls_hop = proxies.iter().any(|p| p.tls);
    // In listen mode without a proxy here, they apply to the https:// proxies of --forwards.
    let tls_proxy_possible = any_tls_hop || (listen.is_some() && proxy_args.is_empty());
    if !tls_proxy_possible && proxy_tls_given(&proxy_tls) {
        bail!(
            "checking the TLS options: --proxy-cacert, --proxy-insecure, --proxy-pinnedpubkey, --proxy-servername and --proxy-cert need an https:// proxy"
        );
    }
    let target_tls = if cli.tls {
        Some(tls::Options {
            cacert: cli.cacert,
            insecure: cli.insecure,
            pins: tls::parse_pins(cli.pinnedpubkey.as_deref()).context("parsing --pinnedpubkey")?,
            servername: cli.servername,
            cert: None,
            key: None,
        })
    } else {
        None
    };

    if listen.is_some() && (cli.fdpass || target_tls.is_some()) {
        bail!(
            "checking -L and --forwards: --fdpass and --tls are for the pipe mode (a forward carries the client's own bytes, TLS or not)"
        );
    }
    if let Some(h2) = proxies.iter().find(|p| p.h2) {
        // The listen modes share the connections of the hop asked for the destination.
        let before_last = proxies.len() > 1 && !std::ptr::eq(h2, &proxies[proxies.len() - 1]);
        if listen.is_some() && before_last {
            bail!(
                "checking proxy https+h2://{}: in -L, -D and --forwards HTTP/2 goes to the last hop of a chain only (write this one as https://)",
                h2.endpoint
            );
        }
        if auth_scheme == Some(Scheme::Ntlm) {
            bail!(
                "checking --proxy-auth ntlm: proxy https+h2://{} speaks HTTP/2, and NTLM authenticates a connection rather than a request, which HTTP/2 shares: write that proxy as https:// to use NTLM over HTTP/1.1",
                h2.endpoint
            );
        }
    }
    if cli.fdpass && (any_tls_hop || target_tls.is_some()) {
        bail!(
            "checking --fdpass: ssh gets a raw socket, which cannot carry a TLS session (drop --fdpass, or use a plain proxy without --tls)"
        );
    }

    let mut listen = listen;
    if let Some(l) = listen.as_mut() {
        l.proxy_var = proxy_var;
        l.default_noproxy = match (&cli.noproxy, proxy_var) {
            (Some(list), _) => Some(("--noproxy", list.clone())),
            (None, Some(_)) => crate::route::env::NO_PROXY_VARS.iter().find_map(|&name| {
                env(name)
                    .filter(|v| !v.is_empty())
                    .map(|v| (name, v.to_string_lossy().into_owned()))
            }),
            (None, None) => None,
        };
        l.netrc = netrc.map(|path| (path, cli.netrc));
    }

    Ok(Config {
        fdpass: cli.fdpass,
        splice: env(NO_SPLICE_ENV).is_none_or(|v| v.is_empty() || v == "0"),
        proxy_tls,
        proxy_http2: cli.proxy_http2,
        target_tls,
        proxies,
        route_why,
        listen,
        target,
        credentials,
        auth_scheme,
        proxy_service_name: cli.proxy_service_name,
        askers,
        headers,
        user_agent,
        connect_timeout,
        idle_timeout,
        keepalive,
        family: match (cli.ipv4, cli.ipv6) {
            (true, _) => Family::V4,
            (_, true) => Family::V6,
            _ => Family::Any,
        },
        verbosity: cli.verbose,
        quiet: cli.quiet,
    })
}

/// Listen mode's settings, when `-L` or `--forwards` is given.
fn listen_mode(
    cli: &Cli,
    env: &impl Fn(&str) -> Option<OsString>,
) -> anyhow::Result<Option<Listen>> {
    if cli.local_forward.is_empty() && cli.forwards.is_none() && cli.dynamic.is_empty() {
        return Ok(None);
    }
    let mut local = cli
        .local_forward
        .iter()
        .map(|spec| crate::forwards::parse_local(spec).map_err(|e| spec_error("-L", spec, e)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for spec in &cli.dynamic {
        local.push(crate::forwards::parse_dynamic(spec).map_err(|e| spec_error("-D", spec, e))?);
    }
    let allow = cli
        .allow
        .iter()
        .map(|a| parse_cidr(a).with_context(|| format!("parsing --allow {a:?}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let noproxy = match &cli.noproxy {
        Some(list) => Some(list.clone()),
        None => crate::route::env::NO_PROXY_VARS
            .iter()
            .find_map(|v| env(v).filter(|s| !s.is_empty()))
            .map(|s| s.to_string_lossy().into_owned()),
    };
    let max_tunnels = match cli.max_tunnels {
        Some(0) => bail!("parsing --max-tunnels: expected at least 1"),
        n => n,
    };
    let drain_timeout = match cli.drain_timeout.as_str() {
        "0" => Duration::ZERO,
        s => parse_secs(s).context("parsing --drain-timeout")?,
    };
    Ok(Some(Listen {
        local,
        file: cli.forwards.clone(),
        max_tunnels,
        drain_timeout,
        log: cli.log.clone(),
        allow,
        noproxy,
        client_auth_file: cli.client_auth_file.clone(),
        proxy_var: None,
        default_noproxy: None,
        netrc: None,
    }))
}

/// `ADDR/BITS` or one address, for `--allow`.
fn parse_cidr(s: &str) -> anyhow::Result<(IpAddr, u8)> {
    let (addr, bits) = match s.split_once('/') {
        Some((a, b)) => (a, Some(b)),
        None => (s, None),
    };
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| anyhow!("expected an IP address or ADDR/BITS"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let bits = match bits {
        None => max,
        Some(b) => match b.parse::<u8>() {
            Ok(n) if n <= max && b.bytes().all(|c| c.is_ascii_digit()) => n,
            _ => bail!("the prefix length must be a number from 0 to {max}"),
        },
    };
    Ok((addr, bits))
}

/// Listen mode's proxy from the environment (no PROXY given): the first set of curl's proxy
/// variables, and its name; none of the exclusion list (that applies per forward or request).
fn env_route(
    env: &impl Fn(&str) -> Option<OsString>,
) -> anyhow::Result<(Vec<Proxy>, Option<String>, Option<&'static str>)> {
    let anywhere = Host::Name(String::new());
    match crate::route::env::choose(&anywhere, env, Some("")).map_err(|e| anyhow!(e))? {
        crate::route::env::Choice::Direct { why } => Ok((Vec::new(), Some(why), None)),
        crate::route::env::Choice::Proxy { var, value, why } => {
            let proxy = parse_env_proxy(&value)
                .with_context(|| format!("parsing {var} {:?}", without_password(&value)))?;
            Ok((vec![proxy], Some(why), Some(var)))
        }
    }
}

/// Listen mode's positional arguments: none (direct, or `--proxy`), or one PROXY.
fn listen_positional(proxies: Vec<String>, args: Vec<String>) -> anyhow::Result<Positional> {
    let proxies = match (proxies.len(), args.len()) {
        (_, 0) => proxies,
        (0, 1) => args,
        (_, _) => bail!(
            "parsing arguments: with -L or --forwards, give the proxy as one PROXY argument or with --proxy (repeated for a chain), not both"
        ),
    };
    Ok(Positional {
        proxies,
        auth_file: None,
        host: String::new(),
        port: String::new(),
    })
}

/// The one line a clap parse error becomes: its first line, with every password the
/// arguments hold redacted (clap quotes an argument it does not know, typo and all).
pub fn clap_error_line(e: &clap::Error, args: &[String]) -> String {
    let rendered = e.render().to_string();
    let first = rendered
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("invalid arguments");
    let why = first.trim_start_matches("error: ");
    crate::route::redact_args(
        &format!("parsing arguments: {why} (see gimlet --help)"),
        args,
    )
}

/// A `-L`/`-D` value that does not parse, quoted as the message says it, with a password
/// redacted wherever the message repeats it: a proxy URL given there by mistake (for `-p`)
/// must not show its password.
fn spec_error(option: &str, spec: &str, e: anyhow::Error) -> anyhow::Error {
    anyhow!(crate::route::redact_args(
        &format!("parsing {option} {spec}: {e:#}"),
        &[spec.to_owned()]
    ))
}

/// Stars out the passwords of `-U USER:PASSWORD` and of proxy URLs in gimlet's own command
/// line, where other users' `ps` could read them for the whole session (before this runs they
/// still can: the window curl leaves too). Returns how many arguments changed.
pub fn hide_passwords(cli: &Cli) -> usize {
    let mut secrets: Vec<(&str, Range<usize>)> = Vec::new();
    if let Some(user) = &cli.proxy_user {
        if let Some(colon) = user.find(':').filter(|&c| c + 1 < user.len()) {
            secrets.push((user, colon + 1..user.len()));
        }
    }
    for url in cli.proxy.iter().chain(cli.args.first()) {
        if let Some(range) = crate::route::password_range(url) {
            secrets.push((url, range));
        }
    }
    if secrets.is_empty() {
        return 0;
    }
    // Each value is the end of its argument: `--proxy-user=VALUE`, `-UVALUE` or `VALUE`.
    crate::sys::argv::overwrite(|arg| {
        secrets
            .iter()
            .filter(|(value, _)| arg.ends_with(value.as_bytes()))
            .map(|(value, range)| {
                let at = arg.len() - value.len();
                at + range.start..at + range.end
            })
            .collect()
    })
}

/// The hops to go through, and for a route from the environment or `--noproxy`, why (`-v`).
/// Explicit proxies are used as given unless `--noproxy` matches the destination (curl's
/// `--noproxy` applies to `-x` too); `no_proxy`/`NO_PROXY` apply only to a proxy from the
/// environment, so an explicit ProxyCommand proxy is never skipped by a variable.
fn choose_route(
    args: &[String],
    target: &Endpoint,
    env: &impl Fn(&str) -> Option<OsString>,
    noproxy: Option<&str>,
) -> anyhow::Result<(Vec<Proxy>, Option<String>)> {
    if args.is_empty() {
        return match crate::route::env::choose(&target.host, env, noproxy)
            .map_err(|e| anyhow!(e))?
        {
            crate::route::env::Choice::Direct { why } => Ok((Vec::new(), Some(why))),
            crate::route::env::Choice::Proxy { var, value, why } => {
                let proxy = parse_env_proxy(&value)
                    .with_context(|| format!("parsing {var} {:?}", without_password(&value)))?;
                Ok((vec![proxy], Some(why)))
            }
        };
    }
    let proxies = parse_proxies(args)?;
    if let Some(list) = noproxy {
        let name = match &target.host {
            Host::Ip(ip) => ip.to_string(),
            other => other.to_string(),
        };
        if let Some(entry) = crate::route::env::no_proxy_match(&name, list) {
            return Ok((
                Vec::new(),
                Some(format!("direct: --noproxy entry {entry} matches {name}")),
            ));
        }
    }
    Ok((proxies, None))
}

/// Proxies as given on the command line, in order.
fn parse_proxies(args: &[String]) -> anyhow::Result<Vec<Proxy>> {
    let mut proxies = Vec::with_capacity(args.len());
    for arg in args {
        if let Some(hint) = proxy_hint(arg) {
            bail!("parsing proxy{hint}");
        }
        proxies.push(
            parse_proxy(arg)
                .with_context(|| format!("parsing proxy {:?}", without_password(arg)))?,
        );
    }
    Ok(proxies)
}

/// A proxy variable's value: a URL, or `host[:port]` meaning an HTTP proxy on port 1080 when
/// no port is given (curl's default).
fn parse_env_proxy(value: &str) -> anyhow::Result<Proxy> {
    if value.contains("://") {
        let proxy = parse_proxy(value)?;
        if proxy.h2 {
            // curl, git and every other program read this variable too, and refuse the scheme.
            bail!(
                "https+h2:// is gimlet's own spelling, which the other programs that read this variable refuse: keep https:// there and give --proxy-http2"
            );
        }
        return Ok(proxy);
    }
    let has_port = match value.strip_prefix('[') {
        Some(rest) => rest.contains("]:"),
        None => value.contains(':'),
    };
    if has_port {
        parse_proxy(&format!("http://{value}"))
    } else {
        parse_proxy(&format!("http://{value}:1080"))
    }
}

/// `-U`, then the credential file (`--proxy-auth-file` or AUTHFILE), then `GIMLET_PROXY_AUTH`.
fn option_credentials(
    user: Option<String>,
    auth_file: Option<(std::path::PathBuf, Source)>,
    env: &impl Fn(&str) -> Option<OsString>,
) -> anyhow::Result<Spec> {
    Ok(if let Some(user) = user {
        Spec::from_user_arg(user)
            .context("parsing --proxy-user")?
            .from_source(Source::UserOption)
    } else if let Some((path, source)) = auth_file {
        let read = match source {
            Source::AuthFileArgument(_) => credentials::read_corkscrew_auth_file(&path),
            _ => credentials::read_auth_file(&path),
        };
        Spec::Known(read?.from_source(source))
    } else if let Some(pair) = env(AUTH_ENV) {
        let pair = pair
            .into_string()
            .map_err(|_| anyhow!("{AUTH_ENV} is not valid UTF-8"))?;
        Spec::Known(
            Credentials::parse_pair(&pair)
                .with_context(|| format!("parsing {AUTH_ENV}"))?
                .from_source(Source::Environment),
        )
    } else {
        Spec::None
    })
}

/// The netrc entry for one hop's host; a missing `~/.netrc` is no error (`--netrc` is
/// optional, as with curl), a missing `--netrc-file` is.
pub fn netrc_credentials(
    path: &std::path::Path,
    optional: bool,
    host: &Host,
) -> anyhow::Result<Spec> {
    let machine = match host {
        Host::Name(name) => name.clone(),
        Host::Ip(ip) => ip.to_string(),
        Host::Scoped(ip, zone) => format!("{ip}%{}", zone.name),
    };
    match credentials::read_netrc(path, &machine) {
        Ok(found) => Ok(found
            .unwrap_or_default()
            .from_source(Source::Netrc(path.to_owned()))),
        Err(e) if optional && !path.exists() => {
            drop(e);
            Ok(Spec::None)
        }
        Err(e) => Err(e),
    }
}

/// What the positional arguments say, once their form is known.
#[derive(Debug, PartialEq, Eq)]
struct Positional {
    /// The hops in order; empty for `HOST PORT` (the proxy from the environment).
    proxies: Vec<String>,
    /// corkscrew's AUTHFILE.
    auth_file: Option<String>,
    host: String,
    port: String,
}

/// Tells the argument forms apart by the count of positional arguments and `--proxy` options:
/// the one place that knows the forms, so a new one is one more arm here, and one more entry
/// in `cli::FORMS`.
fn positional(proxies: Vec<String>, args: Vec<String>) -> anyhow::Result<Positional> {
    let forms = crate::cli::FORMS;
    match (proxies.len(), <[String; 3]>::try_from(args)) {
        (0, Ok([proxy, host, port])) => Ok(Positional {
            proxies: vec![proxy],
            auth_file: None,
            host,
            port,
        }),
        (_, Ok(args)) => bail!(
            "parsing arguments: with --proxy, expected HOST PORT, got 3 arguments{} (see gimlet --help)",
            shown_args(&args)
        ),
        (_, Err(args)) => positional_other(proxies, args, forms),
    }
}

/// The forms with other than three positional arguments, and the mistakes behind a wrong count.
fn positional_other(
    proxies: Vec<String>,
    args: Vec<String>,
    forms: &str,
) -> anyhow::Result<Positional> {
    match (proxies.is_empty(), <[String; 2]>::try_from(args)) {
        // -p A [-p B ...] HOST PORT: a route of one or more hops, first one first.
        (false, Ok([host, port])) => Ok(Positional {
            proxies,
            auth_file: None,
            host,
            port,
        }),
        (true, Ok([first, second])) => match two_arguments(&first, &second) {
            Some(mistake) => bail!("parsing arguments: {mistake}"),
            None => Ok(Positional {
                proxies: Vec::new(),
                auth_file: None,
                host: first,
                port: second,
            }),
        },
        (false, Err(args)) => match args.as_slice() {
            [joined] if split_host_port(joined).is_some() => {
                let (host, port) = split_host_port(joined).unwrap_or_default();
                bail!(
                    "parsing arguments: with --proxy, give the destination as two arguments, HOST PORT: did you mean {} {}?",
                    shell_word(host),
                    shell_word(port)
                )
            }
            _ => bail!(
                "parsing arguments: with --proxy, expected HOST PORT, got {}{} (see gimlet --help)",
                arguments(args.len()),
                shown_args(&args)
            ),
        },
        (true, Err(args)) => {
            let mut args = args.into_iter();
            match (
                args.next(),
                args.next(),
                args.next(),
                args.next(),
                args.next(),
                args.next(),
            ) {
                (Some(proxy_host), Some(proxy_port), Some(host), Some(port), auth_file, None) => {
                    if auth_file.is_none()
                        && has_port(&proxy_host)
                        && parse_port(&proxy_port).is_err()
                    {
                        // PROXY HOST PORT AUTHFILE: read as corkscrew's four, "HOST" would be
                        // the proxy's port.
                        bail!(
                            "parsing arguments: {:?} has a port already, so these are not corkscrew's PROXYHOST PROXYPORT HOST PORT; for PROXY HOST PORT with a credential file, did you mean --proxy-auth-file {} {} {} {}?",
                            without_password(&proxy_host),
                            shell_word(&without_password(&port)),
                            shell_word(&without_password(&proxy_host)),
                            shell_word(&without_password(&proxy_port)),
                            shell_word(&without_password(&host))
                        );
                    }
                    Ok(Positional {
                        proxies: vec![format!("{}:{proxy_port}", bracket_if_v6(&proxy_host))],
                        auth_file,
                        host,
                        port,
                    })
                }
                (first, second, third, fourth, fifth, sixth) => {
                    let given: Vec<String> = [first, second, third, fourth, fifth, sixth]
                        .into_iter()
                        .flatten()
                        .chain(args)
                        .collect();
                    bail!(
                        "parsing arguments: expected {forms}; got {}{} (see gimlet --help)",
                        arguments(given.len()),
                        shown_args(&given)
                    )
                }
            }
        }
    }
}

/// Two positional arguments and no `--proxy`: `HOST PORT` with the proxy from the environment
/// (`None`), or a mistake worth naming: `PROXY HOST:PORT`, or no port at all.
fn two_arguments(first: &str, second: &str) -> Option<String> {
    let forms = crate::cli::FORMS;
    match split_host_port(second) {
        Some((host, port)) if has_port(first) => Some(format!(
            "the destination is HOST PORT, two arguments: did you mean {} {} {}?",
            shell_word(&without_password(first)),
            shell_word(&without_password(host)),
            shell_word(port)
        )),
        _ if parse_port(second).is_ok() => None,
        _ => Some(format!(
            "expected {forms}; got 2 arguments{} (see gimlet --help)",
            shown_args(&[first.to_owned(), second.to_owned()])
        )),
    }
}

fn arguments(n: usize) -> String {
    match n {
        0 => "no arguments".to_owned(),
        1 => "1 argument".to_owned(),
        n => format!("{n} arguments"),
    }
}

/// ` ("a" "b")` for a message: the arguments as given, passwords hidden.
fn shown_args(args: &[String]) -> String {
    if args.is_empty() {
        return String::new();
    }
    let words: Vec<String> = args
        .iter()
        .map(|a| shell_word(&without_password(a)))
        .collect();
    format!(" ({})", words.join(" "))
}

/// `arg` as a shell would need it typed: bare when safe, else in single quotes.
fn shell_word(arg: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "%+,-./:=@_[]~<>".contains(c);
    if !arg.is_empty() && arg.chars().all(safe) {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', "'\\''"))
    }
}

/// Whether a proxy argument already carries a port or a scheme: `host:port`, `[v6]:port`, a URL.
fn has_port(arg: &str) -> bool {
    arg.contains("://") || (arg.parse::<Ipv6Addr>().is_err() && split_host_port(arg).is_some())
}

/// `host:port` or `[v6]:port` split in two, when the port is a number; `None` for a bare IPv6
/// address (ssh's `%h` gives those) and anything else.
fn split_host_port(arg: &str) -> Option<(&str, &str)> {
    let (host, port) = arg.rsplit_once(':')?;
    let plain = !host.contains(':') || (host.starts_with('[') && host.ends_with(']'));
    (plain && !host.is_empty() && parse_port(port).is_ok()).then_some((host, port))
}

/// A mistake in the proxy argument worth naming before the parser gives its generic reason,
/// as the rest of "parsing proxy…".
fn proxy_hint(arg: &str) -> Option<String> {
    if arg.trim().is_empty() {
        return Some(format!(
            " {arg:?}: the proxy is empty (an unset variable?): give host:port or http[s]://host[:port]"
        ));
    }
    if arg.contains("://") {
        return None;
    }
    let lower = arg.to_ascii_lowercase();
    for scheme in ["https", "http"] {
        if let Some(rest) = lower.strip_prefix(scheme).and_then(|r| r.strip_prefix(':')) {
            if parse_port(rest).is_ok() {
                return None; // a proxy host named "http", on a port
            }
            let rest = rest.trim_start_matches('/');
            let fixed = format!(
                "{}://{}",
                &arg[..scheme.len()],
                &arg[arg.len() - rest.len()..]
            );
            // Not the argument itself: without "://" a password in it would not be found.
            return Some(format!(
                ": a URL needs two slashes after the scheme: did you mean {:?}?",
                without_password(&fixed)
            ));
        }
    }
    None
}

/// The destination, with a "did you mean" for `host:port` as HOST and for HOST and PORT swapped.
fn parse_target(host: &str, port: &str) -> anyhow::Result<Endpoint> {
    // An '@' means a URL with credentials landed here: no hint, which would quote it whole.
    if let Some((h, p)) = split_host_port(host).filter(|_| !host.contains('@')) {
        if parse_port(port).is_ok() || port.is_empty() {
            bail!(
                "parsing target host: {host:?} includes a port; HOST and PORT are two arguments: did you mean {} {}?",
                shell_word(h),
                shell_word(p)
            );
        }
    }
    if parse_port(port).is_err() && parse_port(host).is_ok() && parse_host(port).is_ok() {
        bail!(
            "parsing target port: invalid port {port:?}; HOST comes before PORT: did you mean {} {}?",
            shell_word(port),
            shell_word(host)
        );
    }
    Ok(Endpoint {
        host: parse_host(host).context("parsing target host")?,
        port: parse_port(port).context("parsing target port")?,
    })
}

fn proxy_tls_given(o: &tls::Options) -> bool {
    o.cacert.is_some()
        || o.insecure
        || !o.pins.is_empty()
        || o.servername.is_some()
        || o.cert.is_some()
}

/// corkscrew's PROXYHOST may be a bare IPv6 literal (with a zone id); the joined form needs
/// brackets.
fn bracket_if_v6(host: &str) -> String {
    let addr = host.split_once('%').map_or(host, |(addr, _)| addr);
    if addr.parse::<Ipv6Addr>().is_ok() {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// `host:port`, `[v6]:port` or `http://[user[:password]@]host[:port][/]`.
///
/// The userinfo runs to the last '@': RFC 3986 wants '/', '?', '#' and '@' in a password
/// percent-encoded, but people paste passwords as they are, and a proxy URL has no path that
/// could hold an '@'. Messages from here on never quote the userinfo.
pub fn parse_proxy(s: &str) -> anyhow::Result<Proxy> {
    let (scheme, rest) = split_scheme(s);
    let scheme = scheme.map(str::to_ascii_lowercase);
    use crate::hop::socks::{self, Version};
    let (tls, default_port, socks) = match scheme.as_deref() {
        None => (false, None, None),
        Some("http") => (false, Some(80), None),
        Some("https" | "https+h2") => (true, Some(443), None),
        Some("socks4") => (false, Some(socks::DEFAULT_PORT), Some(Version::V4)),
        Some("socks4a") => (false, Some(socks::DEFAULT_PORT), Some(Version::V4a)),
        Some("socks5") => (false, Some(socks::DEFAULT_PORT), Some(Version::V5)),
        Some("socks5h") => (false, Some(socks::DEFAULT_PORT), Some(Version::V5h)),
        Some(other) if other.ends_with("+h2") => bail!(
            "{other}:// cannot speak HTTP/2: h2 is agreed by ALPN inside TLS, so only https+h2:// takes it (gimlet speaks no cleartext h2c)"
        ),
        Some(other @ ("h2" | "h2c" | "http2")) => bail!(
            "unsupported proxy scheme {other:?}: for CONNECT over HTTP/2 to a TLS proxy write https+h2://HOST[:PORT]"
        ),
        Some(other) => bail!(
            "unsupported proxy scheme {other:?} (expected http://, https://, https+h2://, socks4://, socks4a://, socks5:// or socks5h://)"
        ),
    };
    let h2 = scheme.as_deref() == Some("https+h2");
    let (userinfo, rest) = match rest.rsplit_once('@') {
        Some((u, h)) if scheme.is_some() => (Some(u), h),
        Some(_) => bail!("credentials need the URL form http://user:password@host:port"),
        None => (None, rest),
    };
    let (hostport, path) = match rest.find(['/', '?', '#']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if !path.is_empty() && path != "/" {
        bail!("a proxy URL has no path, query or fragment (found {path:?})");
    }
    let endpoint = parse_endpoint(hostport, default_port)?;
    let credentials = match userinfo {
        None => Spec::None,
        Some(info) => {
            let (user, password) = match info.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (info, None),
            };
            let user = percent_decode(user).context("decoding the user name")?;
            match password {
                None if user.is_empty() => bail!("the user name is empty"),
                None => Spec::User(user),
                Some(p) => {
                    let password = percent_decode(p).context("decoding the password")?;
                    Spec::Known(Credentials::new(user, password)?)
                }
            }
        }
    };
    Ok(Proxy {
        endpoint,
        credentials,
        tls,
        socks,
        h2,
    })
}

/// `host:port` or `[v6]:port`; `default_port` applies when the port is absent.
fn parse_endpoint(s: &str, default_port: Option<u16>) -> anyhow::Result<Endpoint> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (v6, after) = rest
            .split_once(']')
            .ok_or_else(|| anyhow!("missing ']' after the IPv6 address"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => bail!("unexpected {after:?} after the IPv6 address"),
        };
        (format!("[{v6}]"), port)
    } else {
        match s.rsplit_once(':') {
            Some((h, _)) if h.contains(':') => {
                bail!("an IPv6 proxy address needs brackets: [{h}]:PORT")
            }
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (s.to_owned(), None),
        }
    };
    let port = match (port, default_port) {
        (Some(p), _) => parse_port(p)?,
        (None, Some(d)) => d,
        (None, None) => bail!("missing port (expected host:port)"),
    };
    Ok(Endpoint {
        host: parse_proxy_host(&host)?,
        port,
    })
}

/// A proxy host: what [`parse_host`] takes, and IPv6 addresses with a zone id, bracketed
/// (`[fe80::1%eth0]`, or `[fe80::1%25eth0]` as RFC 6874 writes it in URLs) or bare.
fn parse_proxy_host(s: &str) -> anyhow::Result<Host> {
    let inner = s.strip_prefix('[').and_then(|r| r.strip_suffix(']'));
    match inner.unwrap_or(s).split_once('%') {
        Some((addr, zone)) => {
            let addr = addr.parse::<Ipv6Addr>().map_err(|_| {
                anyhow!("{addr:?} is not an IPv6 address, so it cannot have a zone id")
            })?;
            // RFC 6874 §2: "%25" introduces the zone in a URL; a bare '%' is accepted as typed.
            let zone = match zone.strip_prefix("25") {
                Some(rest) if inner.is_some() => rest,
                _ => zone,
            };
            Ok(Host::Scoped(addr, parse_zone(zone)?))
        }
        None => parse_host(s),
    }
}

/// A zone id: an interface name (`eth0`) or index (`2`), RFC 4007 §11.2.
fn parse_zone(zone: &str) -> anyhow::Result<Zone> {
    if zone.is_empty() {
        bail!("the zone id after '%' is empty (expected an interface, as in fe80::1%eth0)");
    }
    if zone.len() > 15
        || !zone
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
    {
        bail!("{zone:?} is not a network interface name");
    }
    let index = match zone.parse::<u32>() {
        Ok(0) => bail!("the zone id 0 names no interface"),
        Ok(n) => n,
        Err(_) => crate::sys::iface::index(zone).ok_or_else(|| {
            anyhow!("there is no network interface named {zone:?} (see `ip link`)")
        })?,
    };
    Ok(Zone {
        name: zone.to_owned(),
        index,
    })
}

/// A host name, an IPv4 literal, or an IPv6 literal with or without brackets (ssh's `%h`
/// gives it bare). Anything that could break the request line is refused here.
pub fn parse_host(s: &str) -> anyhow::Result<Host> {
    if s.contains('@') {
        // No host has one; a URL with credentials typed here must not be echoed whole.
        bail!(
            "{:?} is not a host name (give the host alone)",
            without_password(s)
        );
    }
    let unbracketed = s.trim_start_matches('[').trim_end_matches(']');
    if let Some((addr, _)) = unbracketed.split_once('%') {
        if addr.parse::<Ipv6Addr>().is_ok() {
            bail!(
                "{s:?} has a zone id, which names an interface on this machine and means nothing to the proxy: give the address without it"
            );
        }
    }
    if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return inner
            .parse::<Ipv6Addr>()
            .map(|a| Host::Ip(IpAddr::V6(a)))
            .map_err(|_| anyhow!("{s:?} is not an IPv6 address"));
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(Host::Ip(ip));
    }
    if s.is_empty() {
        bail!("the host is empty");
    }
    if s.len() > 253 {
        bail!("the host name is longer than 253 characters");
    }
    if let Some(c) = s.chars().find(|c| !c.is_ascii()) {
        bail!("{s:?} contains the non-ASCII character {c:?}; give its IDNA (xn--) form");
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')))
    {
        bail!("{s:?} contains {c:?}, which is not allowed in a host name");
    }
    Ok(Host::Name(s.to_owned()))
}

pub fn parse_port(s: &str) -> anyhow::Result<u16> {
    match s.parse::<u16>() {
        Ok(p) if p != 0 && s.bytes().all(|b| b.is_ascii_digit()) => Ok(p),
        _ => bail!(
            "invalid port {}: expected a number from 1 to 65535",
            quoted(s)
        ),
    }
}

/// `s` quoted for a message, a password in it hidden: a proxy URL pasted where a host or port
/// goes must not be echoed whole.
fn quoted(s: &str) -> String {
    format!("{:?}", without_password(s))
}

/// A `-H` argument as messages show it: the value of a credential header hidden.
fn header_shown(h: &str) -> String {
    match h.split_once(':') {
        Some((name, _))
            if ["proxy-authorization", "authorization", "cookie"]
                .contains(&name.trim().to_ascii_lowercase().as_str()) =>
        {
            format!("{:?}", format!("{name}: <redacted>"))
        }
        _ => format!("{h:?}"),
    }
}

/// `Name: value`, with the name a token (RFC 9110 §5.1) and the value free of control
/// characters (§5.5), so nothing the user types can end a header line early.
fn parse_header(s: &str) -> anyhow::Result<(String, String)> {
    let (name, value) = s
        .split_once(':')
        .ok_or_else(|| anyhow!("expected 'Name: value'"))?;
    if name.is_empty() || !name.bytes().all(is_tchar) {
        bail!("{name:?} is not a valid header name");
    }
    let value = value.trim_matches([' ', '\t']);
    check_value(value)?;
    Ok((name.to_owned(), value.to_owned()))
}

fn check_value(value: &str) -> anyhow::Result<()> {
    match value.chars().find(|&c| c.is_control() && c != '\t') {
        Some(c) => bail!("the value contains the control character {c:?}"),
        None => Ok(()),
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Longest timeout accepted: about 31 years, so "never" can be spelled, yet far from where
/// `Instant` arithmetic overflows (about 292 billion years of nanoseconds).
const MAX_SECS: f64 = 1e9;

/// A timeout: a positive number of seconds, fractions allowed, at most [`MAX_SECS`].
pub(crate) fn parse_secs(s: &str) -> anyhow::Result<Duration> {
    let range = "expected more than 0 and at most 1000000000 seconds, about 31 years";
    let secs: f64 = s
        .parse()
        .map_err(|_| anyhow!("{s:?} is not a number of seconds ({range})"))?;
    // NaN fails both comparisons.
    if !(secs > 0.0 && secs <= MAX_SECS) {
        bail!("{s:?} is out of range ({range})");
    }
    match Duration::try_from_secs_f64(secs) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => bail!("{s:?} is shorter than a nanosecond ({range})"),
    }
}

/// Largest TCP_KEEPIDLE / TCP_KEEPINTVL Linux takes (MAX_TCP_KEEPIDLE in `net/tcp.h`).
const MAX_KEEPALIVE: u16 = 32767;

/// `--keepalive`: whole seconds, as TCP_KEEPIDLE takes them (no fractions: 0.5 would become
/// 0, which the kernel refuses); 0 turns keepalive off.
pub(crate) fn parse_keepalive(s: &str) -> anyhow::Result<Option<Duration>> {
    match s.parse::<u16>() {
        Ok(0) if s.bytes().all(|b| b.is_ascii_digit()) => Ok(None),
        Ok(n) if n <= MAX_KEEPALIVE && s.bytes().all(|b| b.is_ascii_digit()) => {
            Ok(Some(Duration::from_secs(n.into())))
        }
        _ => bail!(
            "{s:?} is not a whole number of seconds from 1 to {MAX_KEEPALIVE} (0 turns keepalive off)"
        ),
    }
}

/// RFC 3986 §2.1 percent-decoding; the result must be UTF-8.
fn percent_decode(s: &str) -> anyhow::Result<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next(), bytes.next()];
            let byte = match hex {
                [Some(h), Some(l)] => std::str::from_utf8(&[h, l])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok()),
                _ => None,
            };
            out.push(byte.ok_or_else(|| anyhow!("a '%' is not followed by two hex digits"))?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).map_err(|_| anyhow!("the decoded text is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn config(args: &[&str]) -> anyhow::Result<Config> {
        config_env(args, None)
    }

    fn config_env(args: &[&str], auth: Option<&str>) -> anyhow::Result<Config> {
        let cli = Cli::try_parse_from(std::iter::once("gimlet").chain(args.iter().copied()))?;
        let auth = auth.map(OsString::from);
        build(cli, |k| (k == AUTH_ENV).then(|| auth.clone()).flatten())
    }

    fn known(spec: &Spec) -> (&str, &str) {
        match spec {
            Spec::Known(c) => (c.user.as_str(), c.password.expose()),
            other => panic!("expected credentials, got {other:?}"),
        }
    }

    #[test]
    fn three_argument_form() {
        let c = config(&["proxy.corp:3128", "example.com", "22"]).unwrap();
        assert_eq!(c.proxies[0].endpoint.to_string(), "proxy.corp:3128");
        assert_eq!(c.target.to_string(), "example.com:22");
        assert_eq!(c.connect_timeout, Duration::from_secs(30));
        assert_eq!(c.keepalive, Some(Duration::from_secs(60)));
        assert_eq!(
            c.user_agent.as_deref(),
            Some(concat!("gimlet/", env!("CARGO_PKG_VERSION")))
        );
    }

    #[test]
    fn corkscrew_forms() {
        let c = config(&["proxy", "3128", "h", "22"]).unwrap();
        assert_eq!(c.proxies[0].endpoint.to_string(), "proxy:3128");
        let c = config(&["::1", "3128", "::1", "22"]).unwrap();
        assert_eq!(c.proxies[0].endpoint.to_string(), "[::1]:3128");
        assert_eq!(c.target.to_string(), "[::1]:22");
        let err = format!(
            "{:#}",
            config(&["p", "1", "h", "22", "/nonexistent/auth"]).unwrap_err()
        );
        assert!(err.contains("/nonexistent/auth"), "{err}");
    }

    #[test]
    fn proxy_option_form() {
        let c = config(&["-p", "http://[::1]", "h", "22"]).unwrap();
        assert_eq!(c.proxies[0].endpoint.to_string(), "[::1]:80");
        assert!(config(&["-p", "p:1", "p:1", "h", "22"]).is_err());
        // HOST PORT alone, with no proxy variable set: direct, and -v says why.
        let c = config(&["h", "22"]).unwrap();
        assert!(c.proxies.is_empty());
        assert!(c.route_why.unwrap().contains("none of https_proxy"));
    }

    #[test]
    fn argument_forms_by_count() {
        let p = |opts: &[&str], args: &[&str]| {
            positional(
                opts.iter().map(|s| s.to_string()).collect(),
                args.iter().map(|s| s.to_string()).collect(),
            )
        };
        let want = |proxy: &str, auth: Option<&str>| Positional {
            proxies: vec![proxy.into()],
            auth_file: auth.map(Into::into),
            host: "h".into(),
            port: "22".into(),
        };
        assert_eq!(p(&[], &["p:1", "h", "22"]).unwrap(), want("p:1", None));
        assert_eq!(p(&[], &["p", "1", "h", "22"]).unwrap(), want("p:1", None));
        assert_eq!(
            p(&[], &["::1", "1", "h", "22", "f"]).unwrap(),
            want("[::1]:1", Some("f"))
        );
        assert_eq!(p(&["p:1"], &["h", "22"]).unwrap(), want("p:1", None));
        // HOST PORT alone: the proxy comes from the environment.
        assert_eq!(p(&[], &["h", "22"]).unwrap().proxies, Vec::<String>::new());
        // -p repeated: a chain, first one first.
        assert_eq!(
            p(&["p:1", "q:1"], &["h", "22"]).unwrap().proxies,
            vec!["p:1".to_owned(), "q:1".to_owned()]
        );
        for (opts, args) in [
            (&[][..], &[][..]),
            (&[], &["p:1", "h:22"]),
            (&[], &["p:1", "h", "22", "f"]),
            (&["p:1"], &["p:1", "h", "22"]),
            (&["p:1", "q:1"], &["h"]),
        ] {
            assert!(p(opts, args).is_err(), "{opts:?} {args:?}");
        }
    }

    #[test]
    fn host_port_splitting_leaves_bare_ipv6_alone() {
        assert_eq!(split_host_port("h:22"), Some(("h", "22")));
        assert_eq!(split_host_port("[::1]:22"), Some(("[::1]", "22")));
        for no in ["::1", "h", "h:", ":22", "h:x", "2001:db8::22"] {
            assert_eq!(split_host_port(no), None, "{no}");
        }
        assert!(proxy_hint("http:3128").is_none());
        assert!(proxy_hint("http://p:1").is_none());
        assert!(proxy_hint("HTTP:/p").unwrap().contains("\"HTTP://p\""));
    }

    #[test]
    fn url_userinfo_is_percent_decoded() {
        let c = config(&["http://us%40er:p%C3%A4ss%3Aw@proxy:8080/", "h", "1"]).unwrap();
        assert_eq!(known(&c.credentials), ("us@er", "päss:w"));
        let c = config(&["http://bob@proxy:8080", "h", "1"]).unwrap();
        assert!(matches!(c.credentials, Spec::User(ref u) if u == "bob"));
        assert!(config(&["http://a:%zz@p:1", "h", "1"]).is_err());
        assert!(config(&["http://a%3Ab:c@p:1", "h", "1"]).is_err());
    }

    #[test]
    fn credential_sources_in_order() {
        let c = config_env(
            &["-U", "u1:p1", "http://u0:p0@p:1", "h", "1"],
            Some("u2:p2"),
        )
        .unwrap();
        assert_eq!(known(&c.credentials), ("u0", "p0"));
        let c = config_env(&["-U", "u1:p:1", "p:1", "h", "1"], Some("u2:p2")).unwrap();
        assert_eq!(known(&c.credentials), ("u1", "p:1"));
        let c = config_env(&["p:1", "h", "1"], Some("u2:p@2")).unwrap();
        assert_eq!(known(&c.credentials), ("u2", "p@2"));
        assert!(config_env(&["p:1", "h", "1"], Some("nopassword")).is_err());
    }

    #[test]
    fn hostile_targets_are_usage_errors() {
        for host in [
            "a\r\nb",
            "a b",
            "a\0b",
            "a/b",
            "a@b",
            "",
            "[::1",
            "[zz]",
            "ex\u{e4}mple.com",
        ] {
            assert!(config(&["p:1", host, "22"]).is_err(), "{host:?} accepted");
        }
        for port in ["0", "65536", "ssh", "+22", "-1", ""] {
            assert!(config(&["p:1", "h", port]).is_err(), "{port:?} accepted");
        }
        assert!(config(&["p:1", "[::1]", "22"]).is_ok());
        assert!(config(&["p:1", "my_host.example-1.com", "22"]).is_ok());
    }

    #[test]
    fn passwords_in_bad_proxy_urls_are_not_echoed() {
        for arg in [
            "http://al:Zq9w@h:port",
            "al:Zq9w@h:1",
            "http://al:Zq9w@[::1/x",
            "http://al:Zq%zz@h:1",
        ] {
            let err = format!("{:#}", config(&[arg, "h", "1"]).unwrap_err());
            assert!(!err.contains("Zq"), "{err}");
            assert!(err.contains("al:<redacted>@"), "{err}");
        }
        assert_eq!(without_password("http://bob@h:1/"), "http://bob@h:1/");
        assert_eq!(without_password("h:1"), "h:1");
    }

    /// Every way a proxy URL can be wrong, with every kind of password in it: no message
    /// shows any part of the password. Each password is `Zq9`, a special character, `Xk7`.
    #[test]
    fn no_parse_error_shows_any_part_of_any_password() {
        let passwords = [
            "Zq9Xk7",
            "Zq9/Xk7",
            "Zq9?Xk7",
            "Zq9#Xk7",
            "Zq9@Xk7",
            "Zq9:Xk7",
            "Zq9://Xk7",
            "Zq9 Xk7",
            "Zq9\"Xk7",
            "Zq9[Xk7]",
            "Zq9]Xk7",
            "Zq9%41Xk7",
            "Zq9\\Xk7",
            "Zq9\u{e4}Xk7",
            "Zq9@h:1/Xk7",
            "Zq9'Xk7",
            "Zq9$Xk7",
            "Zq9%Xk7",
            "Zq9%2Xk7",
            "Zq9/@/Xk7",
            "Zq9\u{202e}Xk7",
        ];
        let templates = [
            "http://al:{}@h:port",
            "http://al:{}@h:0",
            "http://al:{}@h:",
            "gopher://al:{}@h:1",
            "http://al:{}@h:1/x",
            "http://al:{}@h:1?q",
            "http://al:{}@h:1#f",
            "http://al:{}@[::1:1",
            "http://al:{}@[zz]:1",
            "http://al:{}@[::1]x",
            "http://al:{}@::1:1",
            "http://al:{}@h h:1",
            "http://al:{}@:1",
            "http://al:{}@",
            "al:{}@h:1",
            "http:/al:{}@h:1",
            "http//al:{}@h:1",
            "http://al%zz:{}@h:1",
            "http://:{}@h:1",
            "http://a\u{7}l:{}@h:1",
            "http://a%3Al:{}@h:1",
            "http://al:{}\u{1}@h:1",
            "http://al:{}%zz@h:1",
            "http://al:{}%ff@h:1",
            "http://al:{}@[fe80::1%25gimlet-nosuch]:1",
            "http://al:{}@[fe80::1%25]:1",
            "http://al:{}@h.invalid\u{e4}:1",
        ];
        for password in passwords {
            for template in templates {
                let arg = template.replace("{}", password);
                let err = match config(&[&arg, "h", "1"]) {
                    Ok(_) => panic!("{arg:?} accepted"),
                    Err(e) => format!("{e:#}"),
                };
                assert!(
                    !err.contains("Zq9") && !err.contains("Xk7"),
                    "{arg:?} leaks: {err}"
                );
                let debug = format!("{:?}", without_password(&arg));
                assert!(!debug.contains("Zq9") && !debug.contains("Xk7"), "{debug}");
            }
        }
    }

    /// Two arguments, one a proxy URL with a password: the hint shows it redacted.
    #[test]
    fn the_two_argument_hints_never_show_a_password() {
        for args in [
            ["http://al:Zq9/w@proxy:3128", "22"],
            ["p:1", "http://al:Zq9@h:22"],
        ] {
            let err = format!("{:#}", config(&args).unwrap_err());
            assert!(
                !err.contains("Zq9") && err.contains("al:<redacted>@"),
                "{err}"
            );
        }
    }

    /// The corkscrew "did you mean" hint quotes every argument through the redaction.
    #[test]
    fn the_corkscrew_hint_never_shows_a_password() {
        let err = format!(
            "{:#}",
            config(&["p:1", "http://al:Zq9/w@h", "22", "auth.txt"]).unwrap_err()
        );
        assert!(
            !err.contains("Zq9") && err.contains("al:<redacted>@"),
            "{err}"
        );
    }

    /// A URL with credentials typed where the destination goes: refused without its password.
    #[test]
    fn a_url_in_the_target_host_or_port_is_refused_without_its_password() {
        for args in [
            ["p:1", "http://al:Zq9/w@h", "22"],
            ["p:1", "al:Zq9@h", "22"],
            ["p:1", "h", "http://al:Zq9@h"],
        ] {
            let err = format!("{:#}", config(&args).unwrap_err());
            assert!(
                !err.contains("Zq9") && err.contains("al:<redacted>@"),
                "{err}"
            );
        }
    }

    /// A proxy URL given where the target goes (arguments swapped or shifted): the host and
    /// port messages never show its password either.
    #[test]
    fn target_errors_never_show_a_password_pasted_there() {
        let urls = [
            "http://al:Zq9Xk7@h:1",
            "http://al:Zq9/Xk7@h:1",
            "al:Zq9Xk7@h",
            "al:Zq9Xk7@h:22",
            "[al:Zq9Xk7@h]",
            "al:Zq9Xk7@[::1]:22",
            "https://al:Zq9#Xk7@h",
            "al:Zq9\u{e4}Xk7@h:1",
        ];
        for url in urls {
            for args in [
                ["p:1", url, "22"],
                ["p:1", "h", url],
                ["p:1", "22", url],
                ["p:1", url, ""],
            ] {
                let err = match config(&args) {
                    Ok(_) => panic!("{args:?} accepted"),
                    Err(e) => format!("{e:#}"),
                };
                assert!(
                    !err.contains("Zq9") && !err.contains("Xk7"),
                    "{args:?} leaks: {err}"
                );
            }
        }
    }

    #[test]
    fn passwords_may_hold_what_a_url_would_percent_encode() {
        for password in ["Zq9/w", "Zq9?w", "Zq9#w", "Zq9@w", "Zq9/@w", "a://b"] {
            let c = config(&[&format!("http://al:{password}@proxy:8080/"), "h", "1"]).unwrap();
            assert_eq!(known(&c.credentials), ("al", password));
            assert_eq!(c.proxies[0].endpoint.to_string(), "proxy:8080");
        }
    }

    #[test]
    fn zone_ids_are_for_the_proxy_only() {
        let c = config(&["[::1%lo]:3128", "h", "1"]).unwrap();
        let lo = crate::sys::iface::index("lo").unwrap();
        let zone = Zone {
            name: "lo".into(),
            index: lo,
        };
        assert_eq!(
            c.proxies[0].endpoint.host,
            Host::Scoped(Ipv6Addr::LOCALHOST, zone.clone())
        );
        assert_eq!(c.proxies[0].endpoint.to_string(), "[::1%lo]:3128");
        for url in ["http://[::1%25lo]:3128", "http://[::1%lo]:3128/"] {
            let c = config(&[url, "h", "1"]).unwrap();
            assert_eq!(
                c.proxies[0].endpoint.host,
                Host::Scoped(Ipv6Addr::LOCALHOST, zone.clone())
            );
        }
        let c = config(&["fe80::1%7", "3128", "h", "1"]).unwrap();
        assert_eq!(c.proxies[0].endpoint.to_string(), "[fe80::1%7]:3128");
        for bad in [
            "[fe80::1%]:1",
            "[fe80::1%0]:1",
            "[fe80::1%a/b]:1",
            "[fe80::1%gimlet-nosuch]:1",
            "[fe80::1%averyveryverylongname]:1",
            "[h%lo]:1",
            "h%lo:1",
            "http://[fe80::1%25]:1",
        ] {
            assert!(config(&[bad, "h", "1"]).is_err(), "{bad:?} accepted");
        }
        for target in ["fe80::1%eth0", "[fe80::1%25eth0]", "[::1%lo]", "fe80::1%1"] {
            let err = format!("{:#}", config(&["p:1", target, "1"]).unwrap_err());
            assert!(err.contains("zone id"), "{err}");
        }
    }

    #[test]
    fn https_h2_is_an_https_proxy_offered_http2() {
        for (url, port) in [
            ("https+h2://p.example", 443),
            ("HTTPS+H2://p.example:8443/", 8443),
            ("https+h2://al:pw@p.example:1", 1),
        ] {
            let p = parse_proxy(url).unwrap();
            assert!(p.tls && p.h2 && p.socks.is_none(), "{url}");
            assert_eq!(p.endpoint.port, port, "{url}");
        }
        let p = parse_proxy("https://p.example").unwrap();
        assert!(p.tls && !p.h2);
        for bad in [
            "http+h2://p:1",
            "socks5h+h2://p",
            "h2://p:443",
            "h2c://p:80",
        ] {
            assert!(parse_proxy(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn proxy_addresses() {
        for bad in [
            "::1:3128",
            "p",
            "p:",
            "gopher://p:1",
            "http://p:1/x",
            "u:p@h:1",
            "[::1]x",
        ] {
            assert!(parse_proxy(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            parse_proxy("HTTP://10.0.0.1:8080")
                .unwrap()
                .endpoint
                .to_string(),
            "10.0.0.1:8080"
        );
    }

    #[test]
    fn headers_are_validated() {
        let c = config(&["-H", "X-A:  one ", "-H", "X-B: two", "p:1", "h", "1"]).unwrap();
        assert_eq!(
            c.headers,
            [("X-A".into(), "one".into()), ("X-B".into(), "two".into())]
        );
        for bad in [
            "X-A: a\r\nX-Evil: 1",
            "No colon",
            "Bad Name: v",
            ": v",
            "X: a\0b",
        ] {
            assert!(
                config(&["-H", bad, "p:1", "h", "1"]).is_err(),
                "{bad:?} accepted"
            );
        }
        assert!(config(&["-A", "x\ny", "p:1", "h", "1"]).is_err());
        for bad in [
            "Proxy-Authorization: Basic Zq9Xk7\r\nX: y",
            "proxy-authorization : Basic Zq9Xk7\0",
            "Authorization: Zq9Xk7\n",
        ] {
            let err = format!("{:#}", config(&["-H", bad, "p:1", "h", "1"]).unwrap_err());
            assert!(!err.contains("Zq9Xk7"), "{err}");
            assert!(err.contains("<redacted>"), "{err}");
        }
        assert_eq!(
            config(&["-A", "", "p:1", "h", "1"]).unwrap().user_agent,
            None
        );
    }

    #[test]
    fn tls_options_need_their_tls_leg() {
        assert!(config(&["--proxy-insecure", "p:1", "h", "1"]).is_err());
        assert!(
            config(&["--proxy-insecure", "https://p", "h", "1"])
                .unwrap()
                .proxy_tls
                .insecure
        );
        assert!(config(&["--insecure", "p:1", "h", "1"]).is_err());
        let c = config(&["--tls", "--servername", "n", "p:1", "h", "1"]).unwrap();
        assert_eq!(c.target_tls.unwrap().servername.as_deref(), Some("n"));
        let pin = "sha256//AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
        assert!(config(&["--proxy-pinnedpubkey", pin, "https://p", "h", "1"]).is_ok());
        assert!(config(&["--proxy-pinnedpubkey", "sha1//AA==", "https://p", "h", "1"]).is_err());
    }

    #[test]
    fn timeouts() {
        let c = config(&[
            "--connect-timeout",
            "0.5",
            "--keepalive",
            "0",
            "p:1",
            "h",
            "1",
        ])
        .unwrap();
        assert_eq!(c.connect_timeout, Duration::from_millis(500));
        assert_eq!(c.keepalive, None);
        for bad in [
            "0",
            "-1",
            "-0",
            "nan",
            "NaN",
            "inf",
            "-inf",
            "infinity",
            "1e30",
            "1e19",
            "9.3e18",
            "1000000000.5",
            "1e-400",
            "1e-10",
            "",
            " 1",
            "x",
            "1s",
            "0x10",
        ] {
            assert!(parse_secs(bad).is_err(), "{bad:?} accepted");
            assert!(
                config(&[&format!("--connect-timeout={bad}"), "p:1", "h", "1"]).is_err(),
                "{bad}"
            );
            assert!(
                config(&[&format!("--idle-timeout={bad}"), "p:1", "h", "1"]).is_err(),
                "{bad}"
            );
        }
        assert_eq!(
            parse_secs("1e9").unwrap(),
            Duration::from_secs(1_000_000_000)
        );
        assert_eq!(parse_secs("1e-9").unwrap(), Duration::from_nanos(1));
    }

    #[test]
    fn keepalive_is_whole_seconds_the_kernel_takes() {
        assert_eq!(parse_keepalive("0").unwrap(), None);
        assert_eq!(parse_keepalive("1").unwrap(), Some(Duration::from_secs(1)));
        assert_eq!(
            parse_keepalive("32767").unwrap(),
            Some(Duration::from_secs(32767))
        );
        for bad in [
            "32768", "65535", "65536", "0.5", "1.0", "-1", "+5", "", "1e3", "00x",
        ] {
            let err = parse_keepalive(bad).unwrap_err().to_string();
            assert!(err.contains("1 to 32767"), "{bad:?}: {err}");
        }
    }
}
