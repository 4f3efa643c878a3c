//! The command line, as clap derive. Doc comments here become `--help` and the man page: the
//! first line of each is the `-h` summary, the rest is added by `--help`. `config.rs` turns the
//! raw strings into a validated `Config`.

use std::path::PathBuf;

use clap::{ArgAction, CommandFactory, Parser};

const USAGE: &str = "gimlet [OPTIONS] PROXY HOST PORT
       gimlet [OPTIONS] PROXYHOST PROXYPORT HOST PORT [AUTHFILE]
       gimlet [OPTIONS] --proxy URL [--proxy URL]... HOST PORT
       gimlet [OPTIONS] HOST PORT      (the proxy from https_proxy/all_proxy, or direct)
       gimlet [OPTIONS] -L [BIND:]PORT:HOST:HOSTPORT... [PROXY]
       gimlet [OPTIONS] -D [BIND:]PORT... [PROXY]
       gimlet [OPTIONS] --forwards FILE [PROXY]
       gimlet --generate man|complete-bash|complete-zsh|complete-fish";

/// The positional forms, for help and for argument errors.
pub const FORMS: &str = "PROXY HOST PORT, PROXYHOST PROXYPORT HOST PORT [AUTHFILE], --proxy URL HOST PORT, or HOST PORT (the proxy from the environment)";

/// Where clap's `Arguments:` would go (the positional forms are described here, not by clap).
const TEMPLATE: &str = "\
{about-with-newline}
{usage-heading} {usage}

{before-help}{all-args}{after-help}";

const SHORT_ARGUMENTS: &str = "\
Arguments:
  PROXY      host:port, [v6addr]:port, http[s]://[user[:password]@]host[:port]
             or socks4|socks4a|socks5|socks5h://[user[:password]@]host[:port]
             (https+h2:// offers HTTP/2 to that proxy)
  HOST PORT  the destination, as ssh's %h %p give it; alone, the proxy comes from
             https_proxy/all_proxy unless no_proxy matches
  PROXYHOST PROXYPORT HOST PORT [AUTHFILE]
             corkscrew's form: swap the binary in an existing ProxyCommand";

const LONG_ARGUMENTS: &str = "\
Arguments:
  PROXY      host:port, [v6addr]:port, http[s]://[user[:password]@]host[:port]
             or socks4|socks4a|socks5|socks5h://[user[:password]@]host[:port]
             (userinfo percent-decoded; no port in a URL: 80, 443 for https://,
             1080 for SOCKS; socks4a and socks5h let the proxy resolve HOST);
             https+h2:// is https:// offering HTTP/2 (--proxy-http2 for that hop)
  HOST PORT  the destination (ssh's %h %p); an IPv6 HOST needs no brackets. Given
             alone, the proxy is the first non-empty of https_proxy, HTTPS_PROXY,
             all_proxy, ALL_PROXY, unless no_proxy/NO_PROXY (or --noproxy) matches
             HOST, as curl decides; with none set, gimlet connects directly
  PROXYHOST PROXYPORT HOST PORT [AUTHFILE]
             corkscrew's form: swap the binary in an existing ProxyCommand";

/// The positional arguments, for the man page.
pub const ARGUMENTS: &[(&str, &str)] = &[
    (
        "PROXY",
        "host:port, [v6addr]:port, http[s]://[user[:password]@]host[:port] or \
         socks4|socks4a|socks5|socks5h://[user[:password]@]host[:port] (userinfo \
         percent-decoded; a URL without a port means 80, 443 for https://, which speaks TLS \
         to the proxy, or 1080 for SOCKS). socks4 and socks5 have gimlet resolve HOST; socks4a \
         and socks5h let the proxy resolve it, as curl's schemes do. https+h2:// is an \
         https:// proxy offered HTTP/2 by ALPN, --proxy-http2 for that proxy alone.",
    ),
    (
        "HOST PORT",
        "The destination the proxy connects to, as ssh's %h %p give it; an IPv6 HOST with or \
         without brackets. Names must be ASCII (IDNs in their xn-- form). Given alone (no \
         PROXY, no --proxy), the proxy comes from the environment as curl takes it for an \
         https:// URL: the first non-empty of https_proxy, HTTPS_PROXY, all_proxy, ALL_PROXY \
         (a value without a scheme is an HTTP proxy, port 1080 if none is given), unless the \
         first non-empty of no_proxy, NO_PROXY (or --noproxy) matches HOST; with no proxy \
         variable set gimlet connects directly. -v says which variable or entry decided.",
    ),
    (
        "PROXYHOST PROXYPORT HOST PORT [AUTHFILE]",
        "corkscrew's form, so that an existing ProxyCommand keeps working when only the \
         binary's name changes. AUTHFILE holds user:password on its first line; unlike \
         --proxy-auth-file, a file group or others can read is used, with a warning to chmod \
         600 it, as corkscrew uses it.",
    ),
];

const AFTER_HELP: &str = "Examples and exit statuses: gimlet --help";

const AFTER_LONG_HELP: &str = "\
Exit status: 0 closed cleanly, 2 usage, 3 proxy unreachable, 4 CONNECT refused (HTTP status \
or SOCKS reply), 5 authentication failed, 6 malformed reply, 7 tunnel failed after it was up, \
8 TLS failed.";

/// Examples as (what, command). `--help` prints them unwrapped, after clap's own text, so no
/// terminal width can break a command in the middle; the man page shows them too.
pub const EXAMPLES: &[(&str, &str)] = &[
    (
        "As an ssh ProxyCommand (in ~/.ssh/config: ProxyCommand gimlet proxy.corp:3128 %h %p):",
        "ssh -o ProxyCommand='gimlet proxy.corp:3128 %h %p' git.example.com",
    ),
    (
        "For git over ssh:",
        "git -c core.sshCommand=\"ssh -o ProxyCommand='gimlet proxy.corp:3128 %h %p'\" clone git@github.com:owner/repo",
    ),
    (
        "In place of corkscrew, credentials from a file readable only by you:",
        "ProxyCommand gimlet proxy.corp 3128 %h %p ~/.ssh/proxyauth",
    ),
    (
        "Handing the socket to ssh, with no relay process left (ssh_config):",
        "ProxyCommand gimlet --fdpass proxy.corp:3128 %h %p\nProxyUseFdpass yes",
    ),
    (
        "Through a TLS-only proxy whose CA is not in the system store:",
        "gimlet --proxy-cacert corp-ca.pem https://proxy.corp:8443 git.example.com 22",
    ),
    (
        "One line for every host: the proxy from https_proxy, direct where no_proxy says (ssh_config):",
        "Host *\nProxyCommand gimlet %h %p",
    ),
    (
        "Through a SOCKS5 gateway that resolves names itself:",
        "ssh -o ProxyCommand='gimlet socks5h://gw.corp:1080 %h %p' git.example.com",
    ),
    (
        "A chain: the corporate proxy, then a TLS proxy beyond it, then the destination:",
        "gimlet -p http://proxy.corp:3128 -p https://edge.example:443 git.example.com 22",
    ),
    (
        "A chain whose second hop speaks HTTP/2 (CONNECT over h2), the first HTTP/1.1:",
        "gimlet -p http://proxy.corp:3128 -p https+h2://edge.example:443 git.example.com 22",
    ),
    (
        "With credentials from the environment, showing the steps:",
        "GIMLET_PROXY_AUTH='alice:s3cret' gimlet -v -p http://proxy.corp:8080 example.com 443",
    ),
];

const PROXY: &str = "Proxy and credentials";
const PROXY_TLS: &str = "TLS to the proxy";
const TARGET_TLS: &str = "TLS to the destination";
const CONNECTION: &str = "Connection";
const OUTPUT: &str = "Output";
const LISTEN: &str = "Listen mode";

/// Carry TCP through HTTP, HTTPS and SOCKS proxies: a stdio tunnel, port forwards, a local proxy.
///
/// gimlet reaches HOST:PORT through a route (an HTTP(S) proxy asked with CONNECT, a SOCKS proxy,
/// a chain of them, or a direct connection when no_proxy says so), then copies standard input to
/// the tunnel and the tunnel to standard output until both directions are closed. Standard
/// output carries tunnel bytes only; every diagnostic goes to standard error. It is meant to be
/// an ssh ProxyCommand. With -L, --forwards or -D it stays in the foreground instead and serves
/// port forwards or a local SOCKS/HTTP proxy, every connection through the same route.
// No `Debug`: the raw arguments may hold a password.
#[derive(Parser)]
#[command(
    name = "gimlet",
    version,
    override_usage = USAGE,
    help_template = TEMPLATE,
    before_help = SHORT_ARGUMENTS,
    before_long_help = LONG_ARGUMENTS,
    after_help = AFTER_HELP,
    after_long_help = AFTER_LONG_HELP,
    max_term_width = 100
)]
pub struct Cli {
    /// The positional forms (see the usage); `config.rs` tells them apart, so that a wrong
    /// count gets an error naming the forms. Hidden: "Arguments" in `--help` describes them.
    #[arg(value_name = "ARGS", num_args = 0.., hide = true)]
    pub args: Vec<String>,

    /// Proxy to go through (instead of the PROXY argument); repeat for a chain
    ///
    /// host:port, [v6addr]:port, http[s]://[user[:password]@]host[:port] or
    /// socks4|socks4a|socks5|socks5h://[user[:password]@]host[:port] (userinfo
    /// percent-decoded; port 80, 443 or 1080 when a URL omits it). https:// speaks TLS to the
    /// proxy; https+h2:// also offers it HTTP/2 (ALPN h2, then http/1.1), as --proxy-http2
    /// does for every https:// hop. A link-local proxy names its interface: [fe80::1%eth0]:3128 or
    /// http://[fe80::1%25eth0]:3128. Given more than once, the proxies form a chain in order:
    /// gimlet connects to the first, asks it for the second, and so on, the last being asked
    /// for HOST PORT; any mix of schemes, https:// and https+h2:// anywhere (TLS inside the
    /// tunnel before it; the hops after an HTTP/2 hop run inside its CONNECT stream).
    /// --connect-timeout covers the whole chain.
    #[arg(short = 'p', long = "proxy", value_name = "URL", help_heading = PROXY)]
    pub proxy: Vec<String>,

    /// Hosts to reach directly, overriding no_proxy and NO_PROXY
    ///
    /// curl's --noproxy: a comma-separated list of names (each matching itself and the names
    /// below it, with or without a leading dot), IP addresses and CIDR ranges (10.0.0.0/8,
    /// fd00::/8), or * for every host. Names are not resolved to match. Applies to --proxy
    /// and PROXY too; an empty LIST makes no exception, even where NO_PROXY would.
    #[arg(long = "noproxy", value_name = "LIST", help_heading = PROXY)]
    pub noproxy: Option<String>,

    /// Proxy credentials; without :PASSWORD it is asked for
    ///
    /// DOMAIN\USER for NTLM. gimlet stars the password out of its own command line once
    /// parsed (so does a proxy URL's), but other users can read it with ps until then: prefer
    /// --proxy-auth-file, GIMLET_PROXY_AUTH or --netrc. In a chain, -U, --proxy-auth-file and
    /// GIMLET_PROXY_AUTH are for the first proxy; the others take user:password from their
    /// URLs or netrc. A SOCKS5 proxy gets them by RFC 1929, a SOCKS4 proxy the user name as
    /// its USERID.
    #[arg(short = 'U', long = "proxy-user", value_name = "USER[:PASSWORD]", help_heading = PROXY)]
    pub proxy_user: Option<String>,

    /// Read credentials from FILE (user:password on its first line)
    ///
    /// corkscrew's format: user:password on the first line (the password may contain ':').
    /// The file must not be accessible by group or others.
    #[arg(long = "proxy-auth-file", value_name = "FILE", help_heading = PROXY)]
    pub proxy_auth_file: Option<PathBuf>,

    /// Authentication scheme: any, basic, digest, ntlm or negotiate
    ///
    /// any picks the strongest the proxy offers after its first 407: Negotiate (Kerberos,
    /// when kinit left a ticket), then Digest, NTLM, Basic. basic also sends credentials with
    /// the first request; negotiate uses only the Kerberos ticket.
    #[arg(long = "proxy-auth", value_name = "SCHEME", default_value = "any",
          value_parser = ["any", "basic", "digest", "ntlm", "negotiate"], ignore_case = true,
          help_heading = PROXY)]
    pub proxy_auth: String,

    /// Kerberos service for Negotiate instead of HTTP@PROXYHOST
    ///
    /// For a proxy reached by an alias: NAME (as NAME@PROXYHOST), SERVICE@HOST, or a
    /// principal SERVICE/HOST[@REALM].
    #[arg(long, value_name = "NAME", help_heading = PROXY)]
    pub proxy_service_name: Option<String>,

    /// Take credentials from ~/.netrc
    ///
    /// The entry for the proxy host, else default, when none of -U, --proxy-auth-file or
    /// GIMLET_PROXY_AUTH is given. In listen mode, for every proxy of every route (forwards
    /// lines, the environment's) without credentials of its own, read at start and reload.
    #[arg(long, help_heading = PROXY)]
    pub netrc: bool,

    /// Like --netrc, with this file
    #[arg(long, value_name = "FILE", conflicts_with = "netrc", help_heading = PROXY)]
    pub netrc_file: Option<PathBuf>,

    /// Extra header for the CONNECT request, as 'Name: value'
    ///
    /// Repeatable. A Host or User-Agent given here replaces gimlet's own.
    #[arg(short = 'H', long = "header", value_name = "HEADER", help_heading = PROXY)]
    pub headers: Vec<String>,

    /// User-Agent header for the CONNECT request; '' sends none
    ///
    /// [default: gimlet/VERSION]
    #[arg(short = 'A', long = "user-agent", value_name = "STRING", help_heading = PROXY)]
    pub user_agent: Option<String>,

    /// Verify an https:// proxy against the CA certificates in FILE (PEM)
    ///
    /// Instead of the system's.
    #[arg(long, value_name = "FILE", help_heading = PROXY_TLS)]
    pub proxy_cacert: Option<PathBuf>,

    /// Do not verify an https:// proxy's certificate (a warning is printed)
    #[arg(long, help_heading = PROXY_TLS)]
    pub proxy_insecure: bool,

    /// Accept the https:// proxy only if its public key hashes to one of these
    ///
    /// sha256//BASE64[;sha256//BASE64...], as curl's --pinnedpubkey.
    #[arg(long, value_name = "HASHES", help_heading = PROXY_TLS)]
    pub proxy_pinnedpubkey: Option<String>,

    /// Present (SNI) and verify NAME instead of the https:// proxy's host
    #[arg(long, value_name = "NAME", help_heading = PROXY_TLS)]
    pub proxy_servername: Option<String>,

    /// Client certificate (PEM) for the https:// proxy
    ///
    /// The key may be in the same file.
    #[arg(long, value_name = "FILE", help_heading = PROXY_TLS)]
    pub proxy_cert: Option<PathBuf>,

    /// Private key (PEM) for --proxy-cert
    #[arg(long, value_name = "FILE", requires = "proxy_cert", help_heading = PROXY_TLS)]
    pub proxy_key: Option<PathBuf>,

    /// Offer HTTP/2 to every https:// proxy (ALPN h2, then http/1.1)
    ///
    /// When a proxy picks h2, its tunnel is an HTTP/2 CONNECT stream (RFC 9113 §8.5); when it
    /// picks http/1.1, nothing changes. Applies to every https:// hop of a chain; write one hop
    /// as https+h2:// to offer h2 to it alone. Basic, Digest and Negotiate work over h2, NTLM
    /// (bound to a connection) does not. With -L, -D and --forwards, h2 goes to the last hop of
    /// a route and the tunnels of the route share its connection (a second one when the proxy's
    /// SETTINGS_MAX_CONCURRENT_STREAMS is reached, a new one after GOAWAY).
    #[arg(long, help_heading = PROXY_TLS)]
    pub proxy_http2: bool,

    /// Speak TLS to HOST through the tunnel
    ///
    /// Verified like a browser would (inside the proxy's own TLS for an https:// proxy).
    #[arg(long, help_heading = TARGET_TLS)]
    pub tls: bool,

    /// With --tls, verify HOST against the CA certificates in FILE (PEM)
    #[arg(long, value_name = "FILE", requires = "tls", help_heading = TARGET_TLS)]
    pub cacert: Option<PathBuf>,

    /// With --tls, do not verify HOST's certificate (a warning is printed)
    #[arg(long, requires = "tls", help_heading = TARGET_TLS)]
    pub insecure: bool,

    /// With --tls, present and verify NAME instead of HOST
    #[arg(long, value_name = "NAME", requires = "tls", help_heading = TARGET_TLS)]
    pub servername: Option<String>,

    /// With --tls, accept HOST only if its public key hashes to one of these
    #[arg(long, value_name = "HASHES", requires = "tls", help_heading = TARGET_TLS)]
    pub pinnedpubkey: Option<String>,

    /// Give up when the proxy is not connected and answering within SECS
    ///
    /// TCP connect plus the whole handshake; fractions allowed, at most 1000000000. On a -D
    /// port, also how long a client has to send its whole request.
    #[arg(long, value_name = "SECS", default_value = "30", help_heading = CONNECTION)]
    pub connect_timeout: String,

    /// Close the tunnel when no byte has moved in either direction for SECS
    ///
    /// Fractions allowed, at most 1000000000.
    #[arg(long, value_name = "SECS", help_heading = CONNECTION)]
    pub idle_timeout: Option<String>,

    /// Send TCP keepalive probes to the proxy after SECS of silence; 0 disables
    ///
    /// So that proxies and NAT boxes do not drop an idle tunnel: whole seconds from 1 to 32767
    /// (the kernel's range).
    #[arg(long, value_name = "SECS", default_value = "60", help_heading = CONNECTION)]
    pub keepalive: String,

    /// Hand the connected socket to ssh and exit (ProxyUseFdpass yes)
    ///
    /// After the handshake the socket goes to ssh over standard output, so no relay process
    /// stays in the path. Plain proxies only.
    #[arg(long, help_heading = CONNECTION)]
    pub fdpass: bool,

    /// Reach the proxy over IPv4 only
    #[arg(short = '4', conflicts_with = "ipv6", help_heading = CONNECTION)]
    pub ipv4: bool,

    /// Reach the proxy over IPv6 only
    #[arg(short = '6', help_heading = CONNECTION)]
    pub ipv6: bool,

    /// Show the steps on standard error; -vv adds the request and reply heads
    ///
    /// Which credentials are used and where they came from, the scheme, each step; twice
    /// also the heads (Proxy-Authorization redacted).
    #[arg(short, long, action = ArgAction::Count, conflicts_with = "quiet", help_heading = OUTPUT)]
    pub verbose: u8,

    /// Print nothing on standard error, not even errors
    ///
    /// The exit status still tells.
    #[arg(short, long, help_heading = OUTPUT)]
    pub quiet: bool,

    /// Print the man page or a shell completion script, and exit
    ///
    /// man, complete-bash, complete-zsh or complete-fish; the README says where each goes.
    #[arg(long, value_name = "KIND",
          value_parser = ["man", "complete-bash", "complete-zsh", "complete-fish"])]
    pub generate: Option<String>,

    /// Listen on [BIND:]PORT and forward each connection to HOST:HOSTPORT, like ssh -L
    ///
    /// Through the proxy given as PROXY or --proxy, else the proxy environment (https_proxy,
    /// HTTPS_PROXY, all_proxy, ALL_PROXY) unless --noproxy, or no_proxy/NO_PROXY for the
    /// environment's proxy, names HOST; else directly. BIND is
    /// 127.0.0.1 unless given: an IP address ([v6] in brackets, [::] for every IPv6
    /// interface), localhost, or * for every IPv4 interface; PORT 0 picks a free port, which
    /// the log names. Repeatable. gimlet stays in the foreground until SIGTERM or SIGINT.
    #[arg(short = 'L', long = "local-forward", value_name = "[BIND:]PORT:HOST:HOSTPORT",
          help_heading = LISTEN)]
    pub local_forward: Vec<String>,

    /// Forward the ports listed in FILE; re-read when it changes and on SIGHUP
    ///
    /// One forward per line: [BIND:]PORT HOST PORT [PROXYHOST PROXYPORT | ROUTE] [key=value
    /// ...], where ROUTE is a proxy URL, a comma-separated chain of them, direct, or default
    /// (the route -L takes, the proxy environment included), and the options are
    /// idle-timeout, keepalive, proxy-auth and proxy-auth-file; # starts a comment. A line
    /// without a route uses the command line's proxy, or goes direct (never the
    /// environment's: the seed format's rule). A reload
    /// never cuts open tunnels, and a file that does not parse keeps the previous forwards.
    #[arg(long, value_name = "FILE", help_heading = LISTEN)]
    pub forwards: Option<PathBuf>,

    /// Serve SOCKS4, SOCKS4a, SOCKS5 and HTTP proxy requests on [BIND:]PORT, like ssh -D
    ///
    /// A local proxy for every program: each client names its destination (SOCKS, CONNECT, or
    /// an absolute-form request such as GET http://host/path), and gimlet opens the tunnel
    /// through PROXY or --proxy, with its own credentials, or directly where --noproxy or
    /// no_proxy/NO_PROXY says. Absolute-form requests go to an HTTP proxy as they are, with
    /// gimlet's Proxy-Authorization (its 407s answered by gimlet), else to the origin. With no
    /// proxy given, the proxy comes from https_proxy, HTTPS_PROXY, all_proxy or ALL_PROXY, as
    /// for the pipe mode. A client has --connect-timeout to send its request. BIND is
    /// 127.0.0.1 unless given; any other address needs --allow. One log line per request. In
    /// a forwards file: dynamic [BIND:]PORT [ROUTE] [key=value ...]. Repeatable.
    #[arg(short = 'D', long = "dynamic", value_name = "[BIND:]PORT", help_heading = LISTEN)]
    pub dynamic: Vec<String>,

    /// Let clients from CIDR use a -D port (repeatable; loopback is always allowed)
    ///
    /// 10.0.0.0/8, fd00::/8 or one address. Needed for a -D port bound to anything but
    /// loopback, so that gimlet never becomes an open proxy by accident.
    #[arg(long, value_name = "CIDR", help_heading = LISTEN)]
    pub allow: Vec<String>,

    /// Ask clients of a -D port for the user:password on FILE's first line
    ///
    /// SOCKS5 clients authenticate with username/password (RFC 1929), HTTP clients with
    /// Proxy-Authorization: Basic (a 407 asks for it); SOCKS4 clients, which cannot, are
    /// refused. These are the port's own credentials, never sent upstream. The file must not
    /// be readable by others.
    #[arg(long, value_name = "FILE", help_heading = LISTEN)]
    pub client_auth_file: Option<PathBuf>,

    /// Refuse connections while N tunnels are open or being set up
    ///
    /// Default: half the open-file limit, which gimlet raises to its hard limit at start.
    #[arg(long, value_name = "N", help_heading = LISTEN)]
    pub max_tunnels: Option<usize>,

    /// On SIGTERM or SIGINT, let open tunnels finish for up to SECS
    ///
    /// gimlet stops accepting at once, closes what is still open after SECS and exits 0. A
    /// second signal stops at once.
    #[arg(long, value_name = "SECS", default_value = "30", help_heading = LISTEN)]
    pub drain_timeout: String,

    /// Append listen mode's log to FILE instead of standard error
    ///
    /// One timestamped line per event: listening, accepted, established (with the proxy's
    /// status line), closed (bytes each way), failed (why), reloaded. Reopened on SIGUSR1, for
    /// logrotate.
    #[arg(long, value_name = "FILE", help_heading = LISTEN)]
    pub log: Option<PathBuf>,
}

impl Cli {
    /// The common ProxyCommand line, `gimlet PROXY HOST PORT` (or corkscrew's form): positional
    /// arguments only, no option among them. It means what clap would make of it, every option
    /// at its default, but without building clap's `Command` for some thirty options first,
    /// which was half the instructions of a whole tunnel's start-up. `None` sends everything else
    /// to clap: any argument starting with `-` (options, `--`, `-` itself), and non-UTF-8.
    /// A test checks the defaults against clap's.
    pub fn positional_only<I: IntoIterator<Item = std::ffi::OsString>>(argv: I) -> Option<Cli> {
        let args = argv
            .into_iter()
            .skip(1)
            .map(|a| a.into_string().ok().filter(|s| !s.starts_with('-')))
            .collect::<Option<Vec<String>>>()?;
        if args.is_empty() {
            return None;
        }
        Some(Cli {
            args,
            proxy: Vec::new(),
            noproxy: None,
            proxy_user: None,
            proxy_auth_file: None,
            proxy_auth: "any".into(),
            proxy_service_name: None,
            netrc: false,
            netrc_file: None,
            headers: Vec::new(),
            user_agent: None,
            proxy_cacert: None,
            proxy_insecure: false,
            proxy_pinnedpubkey: None,
            proxy_servername: None,
            proxy_cert: None,
            proxy_key: None,
            proxy_http2: false,
            tls: false,
            cacert: None,
            insecure: false,
            servername: None,
            pinnedpubkey: None,
            connect_timeout: "30".into(),
            idle_timeout: None,
            keepalive: "60".into(),
            fdpass: false,
            ipv4: false,
            ipv6: false,
            verbose: 0,
            quiet: false,
            generate: None,
            local_forward: Vec::new(),
            forwards: None,
            dynamic: Vec::new(),
            allow: Vec::new(),
            client_auth_file: None,
            max_tunnels: None,
            drain_timeout: "30".into(),
            log: None,
        })
    }
}

/// The help text: clap's (`-h` the summaries, `--help` everything), then with `--help` the
/// examples, unwrapped (clap would break a long command at the terminal's width).
pub fn help(long: bool) -> String {
    let mut cmd = Cli::command();
    let mut text = match long {
        true => cmd.render_long_help().to_string(),
        false => cmd.render_help().to_string(),
    };
    if long {
        text.push_str("\nExamples:\n");
        for (what, command) in EXAMPLES {
            text.push_str(&format!("  # {what}\n"));
            for line in command.lines() {
                text.push_str(&format!("  {line}\n"));
            }
        }
    }
    text
}

/// Whether the arguments ask for the long help: `--help` (clap gives the same error kind for
/// `-h`, which asks for the summaries).
pub fn asks_long_help<I: IntoIterator<Item = std::ffi::OsString>>(args: I) -> bool {
    args.into_iter()
        .skip(1)
        .take_while(|a| a != "--")
        .any(|a| a == "--help")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    fn argv(args: &[&str]) -> Vec<std::ffi::OsString> {
        std::iter::once("gimlet")
            .chain(args.iter().copied())
            .map(Into::into)
            .collect()
    }

    #[test]
    fn positional_only_means_what_clap_makes_of_it() {
        for args in [
            &["proxy.corp:3128", "git.example.com", "22"][..],
            &[
                "proxy.corp",
                "3128",
                "git.example.com",
                "22",
                "/home/a/.ssh/auth",
            ],
            &["http://u:p@[::1]:8080", "::1", "443"],
            &["", "x"],
            &["git.example.com", "22"],
        ] {
            let fast = Cli::positional_only(argv(args)).expect("positional only");
            let clap = Cli::try_parse_from(argv(args)).expect("clap parses it");
            // Every field by name, so that a new option fails to compile here until its
            // default is added to `positional_only` and compared.
            let Cli {
                args,
                proxy,
                noproxy,
                proxy_user,
                proxy_auth_file,
                proxy_auth,
                proxy_service_name,
                netrc,
                netrc_file,
                headers,
                user_agent,
                proxy_cacert,
                proxy_insecure,
                proxy_pinnedpubkey,
                proxy_servername,
                proxy_cert,
                proxy_key,
                proxy_http2,
                tls,
                cacert,
                insecure,
                servername,
                pinnedpubkey,
                connect_timeout,
                idle_timeout,
                keepalive,
                fdpass,
                ipv4,
                ipv6,
                verbose,
                quiet,
                generate,
                local_forward,
                forwards,
                dynamic,
                allow,
                client_auth_file,
                max_tunnels,
                drain_timeout,
                log,
            } = fast;
            assert_eq!(args, clap.args);
            assert_eq!(proxy, clap.proxy);
            assert_eq!(noproxy, clap.noproxy);
            assert_eq!(proxy_user, clap.proxy_user);
            assert_eq!(proxy_auth_file, clap.proxy_auth_file);
            assert_eq!(proxy_auth, clap.proxy_auth);
            assert_eq!(proxy_service_name, clap.proxy_service_name);
            assert_eq!(netrc, clap.netrc);
            assert_eq!(netrc_file, clap.netrc_file);
            assert_eq!(headers, clap.headers);
            assert_eq!(user_agent, clap.user_agent);
            assert_eq!(proxy_cacert, clap.proxy_cacert);
            assert_eq!(proxy_insecure, clap.proxy_insecure);
            assert_eq!(proxy_pinnedpubkey, clap.proxy_pinnedpubkey);
            assert_eq!(proxy_servername, clap.proxy_servername);
            assert_eq!(proxy_cert, clap.proxy_cert);
            assert_eq!(proxy_key, clap.proxy_key);
            assert_eq!(proxy_http2, clap.proxy_http2);
            assert_eq!(tls, clap.tls);
            assert_eq!(cacert, clap.cacert);
            assert_eq!(insecure, clap.insecure);
            assert_eq!(servername, clap.servername);
            assert_eq!(pinnedpubkey, clap.pinnedpubkey);
            assert_eq!(connect_timeout, clap.connect_timeout);
            assert_eq!(idle_timeout, clap.idle_timeout);
            assert_eq!(keepalive, clap.keepalive);
            assert_eq!(fdpass, clap.fdpass);
            assert_eq!(ipv4, clap.ipv4);
            assert_eq!(ipv6, clap.ipv6);
            assert_eq!(verbose, clap.verbose);
            assert_eq!(quiet, clap.quiet);
            assert_eq!(generate, clap.generate);
            assert_eq!(local_forward, clap.local_forward);
            assert_eq!(forwards, clap.forwards);
            assert_eq!(dynamic, clap.dynamic);
            assert_eq!(allow, clap.allow);
            assert_eq!(client_auth_file, clap.client_auth_file);
            assert_eq!(max_tunnels, clap.max_tunnels);
            assert_eq!(drain_timeout, clap.drain_timeout);
            assert_eq!(log, clap.log);
        }
    }

    #[test]
    fn anything_but_positional_arguments_goes_to_clap() {
        for args in [
            &[][..],
            &["-v", "proxy:3128", "h", "22"],
            &["proxy:3128", "h", "22", "--fdpass"],
            &["--", "proxy:3128", "h", "22"],
            &["-", "h", "22"],
            &["--help"],
            &["-V"],
        ] {
            assert!(Cli::positional_only(argv(args)).is_none(), "{args:?}");
        }
        use std::os::unix::ffi::OsStringExt;
        let not_utf8 = vec![
            "gimlet".into(),
            std::ffi::OsString::from_vec(vec![0xff]),
            "h".into(),
        ];
        assert!(Cli::positional_only(not_utf8).is_none());
    }
}
