//! The command line, as clap derive. Doc comments here become `--help` and the man page;
//! `config.rs` turns the raw strings into a validated `Config`.

use std::path::PathBuf;

use clap::{ArgAction, Parser};

const USAGE: &str = "gimlet [OPTIONS] PROXY HOST PORT
       gimlet [OPTIONS] PROXYHOST PROXYPORT HOST PORT [AUTHFILE]
       gimlet [OPTIONS] --proxy URL HOST PORT";

const AFTER_HELP: &str = "\
PROXY is host:port, [v6addr]:port or http[s]://[user[:password]@]host[:port].
The five-argument form is corkscrew's: swap the binary in an existing ProxyCommand.

Examples:
  ssh -o ProxyCommand='gimlet proxy.corp:3128 %h %p' git.example.com
  git -c core.sshCommand=\"ssh -o ProxyCommand='gimlet proxy.corp:3128 %h %p'\" clone git@github.com:o/r

Exit status: 0 closed cleanly, 2 usage, 3 proxy unreachable, 4 CONNECT refused,
5 authentication failed, 6 malformed reply, 7 tunnel failed after it was up, 8 TLS failed.";

/// Bore a stdio tunnel through an HTTP proxy with CONNECT.
///
/// gimlet connects to an HTTP proxy, asks it to CONNECT to HOST:PORT, and then copies standard
/// input to the tunnel and the tunnel to standard output until both directions are closed.
/// Standard output carries tunnel bytes only; every diagnostic goes to standard error. It is
/// meant to be an ssh ProxyCommand.
// No `Debug`: the raw arguments may hold a password.
#[derive(Parser)]
#[command(
    name = "gimlet",
    version,
    override_usage = USAGE,
    after_help = AFTER_HELP,
    max_term_width = 100
)]
pub struct Cli {
    /// PROXY HOST PORT, or PROXYHOST PROXYPORT HOST PORT [AUTHFILE], or HOST PORT with --proxy.
    #[arg(value_name = "ARGS", num_args = 0..=5, allow_hyphen_values = false)]
    pub args: Vec<String>,

    /// Proxy to go through: host:port, [v6addr]:port or http[s]://[user[:password]@]host[:port]
    /// (userinfo percent-decoded; port 80 or 443 when a URL omits it). https:// speaks TLS to
    /// the proxy. A link-local proxy names its interface: [fe80::1%eth0]:3128 or
    /// http://[fe80::1%25eth0]:3128.
    #[arg(short = 'p', long = "proxy", value_name = "URL")]
    pub proxy: Vec<String>,

    /// Proxy credentials; DOMAIN\USER for NTLM. Without :PASSWORD, the password is asked for.
    /// Prefer --proxy-auth-file, GIMLET_PROXY_AUTH or --netrc: other users can read command lines.
    #[arg(short = 'U', long = "proxy-user", value_name = "USER[:PASSWORD]")]
    pub proxy_user: Option<String>,

    /// Read credentials from FILE, corkscrew's format: user:password on the first line (the
    /// password may contain ':'). The file must not be accessible by group or others.
    #[arg(long = "proxy-auth-file", value_name = "FILE")]
    pub proxy_auth_file: Option<PathBuf>,

    /// Authentication scheme: any picks the strongest the proxy offers (Digest, then NTLM, then
    /// Basic) after its first 407; basic also sends credentials with the first request.
    #[arg(long = "proxy-auth", value_name = "SCHEME", default_value = "any",
          value_parser = ["any", "basic", "digest", "ntlm"], ignore_case = true)]
    pub proxy_auth: String,

    /// Take credentials from ~/.netrc (the entry for the proxy host, else default) when none
    /// of -U, --proxy-auth-file or GIMLET_PROXY_AUTH is given.
    #[arg(long)]
    pub netrc: bool,

    /// Like --netrc, with this file.
    #[arg(long, value_name = "FILE", conflicts_with = "netrc")]
    pub netrc_file: Option<PathBuf>,

    /// Extra header for the CONNECT request, as 'Name: value' (repeatable). A Host or
    /// User-Agent given here replaces gimlet's own.
    #[arg(short = 'H', long = "header", value_name = "HEADER")]
    pub headers: Vec<String>,

    /// User-Agent header for the CONNECT request; '' sends none [default: gimlet/VERSION].
    #[arg(short = 'A', long = "user-agent", value_name = "STRING")]
    pub user_agent: Option<String>,

    /// Give up when the proxy is not connected and answering within SECS (TCP connect plus
    /// the whole handshake; fractions allowed, at most 1000000000).
    #[arg(long, value_name = "SECS", default_value = "30")]
    pub connect_timeout: String,

    /// Close the tunnel when no byte has moved in either direction for SECS (fractions
    /// allowed, at most 1000000000).
    #[arg(long, value_name = "SECS")]
    pub idle_timeout: Option<String>,

    /// Send TCP keepalive probes to the proxy after SECS of silence, so proxies and NAT boxes
    /// do not drop an idle tunnel: whole seconds from 1 to 32767 (the kernel's range); 0
    /// disables.
    #[arg(long, value_name = "SECS", default_value = "60")]
    pub keepalive: String,

    /// Verify an https:// proxy against the CA certificates in FILE (PEM) instead of the
    /// system's.
    #[arg(long, value_name = "FILE")]
    pub proxy_cacert: Option<PathBuf>,

    /// Do not verify an https:// proxy's certificate (a warning is printed).
    #[arg(long)]
    pub proxy_insecure: bool,

    /// Accept the https:// proxy only if its public key hashes to one of
    /// sha256//BASE64[;sha256//BASE64...], as curl's --pinnedpubkey.
    #[arg(long, value_name = "HASHES")]
    pub proxy_pinnedpubkey: Option<String>,

    /// Present (SNI) and verify NAME instead of the https:// proxy's host.
    #[arg(long, value_name = "NAME")]
    pub proxy_servername: Option<String>,

    /// Client certificate (PEM) for the https:// proxy; the key may be in the same file.
    #[arg(long, value_name = "FILE")]
    pub proxy_cert: Option<PathBuf>,

    /// Private key (PEM) for --proxy-cert.
    #[arg(long, value_name = "FILE", requires = "proxy_cert")]
    pub proxy_key: Option<PathBuf>,

    /// Speak TLS to HOST through the tunnel, verified like a browser would (inside the
    /// proxy's own TLS for an https:// proxy).
    #[arg(long)]
    pub tls: bool,

    /// With --tls, verify HOST against the CA certificates in FILE (PEM).
    #[arg(long, value_name = "FILE", requires = "tls")]
    pub cacert: Option<PathBuf>,

    /// With --tls, do not verify HOST's certificate (a warning is printed).
    #[arg(long, requires = "tls")]
    pub insecure: bool,

    /// With --tls, present and verify NAME instead of HOST.
    #[arg(long, value_name = "NAME", requires = "tls")]
    pub servername: Option<String>,

    /// With --tls, accept HOST only if its public key hashes to one of these.
    #[arg(long, value_name = "HASHES", requires = "tls")]
    pub pinnedpubkey: Option<String>,

    /// After the handshake, hand the connected socket to ssh over standard output and exit,
    /// so no relay process stays in the path (ssh's ProxyUseFdpass yes). Plain proxies only.
    #[arg(long)]
    pub fdpass: bool,

    /// Reach the proxy over IPv4 only.
    #[arg(short = '4', conflicts_with = "ipv6")]
    pub ipv4: bool,

    /// Reach the proxy over IPv6 only.
    #[arg(short = '6')]
    pub ipv6: bool,

    /// Show the steps on standard error; twice to show the request and reply heads too
    /// (Proxy-Authorization redacted).
    #[arg(short, long, action = ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,

    /// Print nothing on standard error, not even errors; the exit status still tells.
    #[arg(short, long)]
    pub quiet: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
