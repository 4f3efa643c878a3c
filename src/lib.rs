//! gimlet: a stdio tunnel through HTTP proxies.
//!
//! The data path reads top to bottom: `cli` → `config` → `connect` → `handshake` → `relay`,
//! with `error` mapping every failure to an exit status. [`run`] wires those steps.

#![deny(unsafe_code)]

pub mod auth;
pub mod cli;
pub mod config;
pub mod connect;
pub mod credentials;
mod diag;
pub mod error;
pub mod forwards;
/// Harnesses for `fuzz/`: not API.
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod generate;
pub mod handshake;
pub mod hop;
pub mod relay;
pub mod route;
pub mod serve;
#[allow(unsafe_code)]
mod sys;
pub mod tls;
pub mod transport;

use std::os::fd::AsFd;

use config::{Config, Endpoint, Proxy};
use connect::Dialer;
use credentials::Spec;
use diag::info;
use error::{Error, Kind, ResultExt};
use handshake::{Established, Negotiation, Request};
use relay::{RelayError, Stats, Tunnel};
use tls::TlsTunnel;

pub use diag::init as init_diagnostics;

/// Prints the one error line (nothing with `-q`).
pub fn report(e: &Error) {
    diag::error(e);
}

/// Connects, negotiates the tunnel and relays stdio through it until both ends are done.
///
/// Takes the config by value so that, for one tunnel, the credentials in it are dropped (and
/// zeroed) before the relay starts: a tunnel may stay open for days, and no secret should sit
/// in memory that long. Listen mode keeps them: every new connection needs them.
pub fn run(mut config: Config) -> Result<(), Error> {
    if config.listen.is_some() {
        return serve::run(&config);
    }
    let credentials = take_credentials(&mut config);
    let config = &config;
    let proxy = config.proxy();
    let proxy_name = proxy.endpoint.to_string();
    let upstream = Upstream::new(config, Some(proxy), &credentials, true)?;
    drop(credentials);
    let target_tls = match &config.target_tls {
        Some(opts) => Some(tls_leg(
            &config.target.host.to_string(),
            opts,
            &config.target.to_string(),
            "--insecure: the destination's certificate is not verified",
        )?),
        None => None,
    };
    if config.fdpass && !sys::fdpass::is_unix_socket(std::io::stdout().as_fd()) {
        return Err(Error::msg(
            Kind::Usage,
            "checking standard output for --fdpass: it is not a Unix socket (ssh gives one with ProxyUseFdpass yes)",
        ));
    }
    let established = establish(&upstream, &config.target)?;
    // The last copy of the credentials: zeroed now, before any tunnel byte moves.
    drop(upstream);

    if config.fdpass {
        let (tcp, _) = established
            .stream
            .into_parts()
            .kind_ctx(Kind::Tunnel, || "passing the connection to ssh")?;
        sys::fdpass::send_fd(
            std::io::stdout().as_fd(),
            std::os::fd::AsRawFd::as_raw_fd(&tcp),
        )
        .kind_ctx(
            Kind::Tunnel,
            || "passing the connection to ssh over standard output",
        )?;
        info!("passed the connection to ssh");
        return Ok(());
    }
    let relaying = || format!("relaying to {} via proxy {proxy_name}", config.target);
    let Established {
        mut stream,
        leftover,
        ..
    } = established;
    // --tls: shake hands with the destination through the tunnel. The bytes that came with the
    // proxy's reply are the start of the destination's TLS stream.
    let inner = match target_tls {
        Some((tls_config, name)) => {
            let mut prefixed = Prefixed {
                prefix: std::io::Cursor::new(leftover.as_slice()),
                stream: &mut stream,
            };
            let peer = format!("{} through proxy {proxy_name}", config.target);
            let mut conn = tls::start(tls_config, &name, &mut prefixed, &peer)?;
            let mut rest = prefixed.prefix;
            while (rest.position() as usize) < leftover.len() {
                conn.read_tls(&mut rest).kind_ctx(Kind::Tls, relaying)?;
            }
            conn.process_new_packets()
                .map_err(|e| Error::new(Kind::Tls, e).context(relaying()))?;
            info!("TLS with {} through the tunnel", config.target);
            Some(conn)
        }
        None => None,
    };
    let (tcp, outer) = stream
        .into_parts()
        .and_then(|(s, c)| s.set_nonblocking(true).map(|()| (s, c)))
        .kind_ctx(Kind::Tunnel, relaying)?;
    let socket = mio::net::TcpStream::from_std(tcp);
    // With --tls the leftover went into the destination's TLS session, not to stdout.
    let first = if inner.is_some() {
        &[][..]
    } else {
        &leftover[..]
    };
    let opts = relay::Options {
        idle_timeout: config.idle_timeout,
        splice: config.splice,
    };
    let stats = match (outer, inner) {
        (None, None) => relay_stdio(socket, first, opts),
        (Some(o), None) => relay_stdio(TlsTunnel::new(o, socket), first, opts),
        (None, Some(i)) => relay_stdio(TlsTunnel::new(i, socket), first, opts),
        (Some(o), Some(i)) => {
            relay_stdio(TlsTunnel::new(i, TlsTunnel::new(o, socket)), first, opts)
        }
    }
    .kind_ctx(Kind::Tunnel, relaying)?;
    info!(
        "tunnel closed: {} bytes sent, {} bytes received",
        stats.up, stats.down
    );
    Ok(())
}

/// Moves every copy of the credentials out of `config`: the chosen ones, and those each proxy
/// URL carried.
fn take_credentials(config: &mut Config) -> Spec {
    for proxy in &mut config.proxies {
        proxy.credentials = Spec::None;
    }
    std::mem::take(&mut config.credentials)
}

/// How tunnels are reached, prepared once (credentials asked for, TLS configured) and used for
/// each tunnel: once in pipe mode, per accepted connection in listen mode, from worker threads.
/// This is the seam between establishing a tunnel and relaying it: [`establish`] may block (up
/// to `--connect-timeout`), the relays never do. The route model replaces the single proxy here.
pub struct Upstream {
    /// `None`: connect to the target directly.
    proxy: Option<(Proxy, String)>,
    dialer: Dialer,
    credentials: Option<credentials::Credentials>,
    scheme: Option<auth::Scheme>,
    headers: Vec<(String, String)>,
    user_agent: Option<String>,
    /// Who to ask after a 407; `None` in listen mode, where nobody is there to answer.
    askers: Option<credentials::Askers>,
    /// `--proxy-service-name`: the Kerberos service for Negotiate.
    service_name: Option<String>,
}

impl Upstream {
    /// Prepares the way through `proxy` (or direct) with `credentials`. Asks for a missing
    /// password now, so that no tunnel waits on a prompt.
    pub fn new(
        config: &Config,
        proxy: Option<&config::Proxy>,
        credentials: &Spec,
        interactive: bool,
    ) -> Result<Upstream, Error> {
        let Some(proxy) = proxy else {
            return Ok(Upstream {
                proxy: None,
                dialer: dialer(config, None),
                credentials: None,
                scheme: None,
                headers: Vec::new(),
                user_agent: None,
                askers: None,
                service_name: None,
            });
        };
        let proxy_name = proxy.endpoint.to_string();
        let credentials = match credentials {
            Spec::None => None,
            Spec::Known(c) => Some(c.clone()),
            Spec::User(user) => Some(
                credentials::ask(&proxy_name, Some(user), &config.askers)
                    .kind_ctx(Kind::Auth, || format!("asking for the password of proxy user \"{user}\""))?
                    .ok_or_else(|| {
                        Error::msg(
                            Kind::Auth,
                            format_args!(
                                "asking for the password of proxy user \"{user}\": no terminal and no askpass program (give the password with --proxy-auth-file, {}, --netrc or {})",
                                config::AUTH_ENV,
                                config::ASKPASS_ENV
                            ),
                        )
                    })?,
            ),
        };
        match &credentials {
            Some(c) => info!(
                "credentials for proxy {proxy_name}: user \"{}\"{}",
                c.user,
                c.source.from_phrase()
            ),
            None => info!("no credentials given for proxy {proxy_name}"),
        }
        let proxy_tls = match proxy.tls {
            true => Some(tls_leg(
                &proxy.endpoint.host.to_string(),
                &config.proxy_tls,
                &format!("proxy {proxy_name}"),
                "--proxy-insecure: the proxy's certificate is not verified",
            )?),
            false => None,
        };
        Ok(Upstream {
            proxy: Some((proxy.clone(), proxy_name)),
            dialer: dialer(config, proxy_tls),
            credentials,
            scheme: config.auth_scheme,
            headers: config.headers.clone(),
            user_agent: config.user_agent.clone(),
            askers: interactive.then(|| config.askers.clone()),
            service_name: config.proxy_service_name.clone(),
        })
    }

    /// TCP keepalive for this way's sockets (a forward's own `keepalive=`).
    pub fn set_keepalive(&mut self, keepalive: Option<std::time::Duration>) {
        self.dialer.keepalive = keepalive;
    }

    /// The authentication scheme to use (a forward's own `proxy-auth=`); `None` for any.
    pub fn set_scheme(&mut self, scheme: Option<auth::Scheme>) {
        self.scheme = scheme;
    }

    /// The proxy as `host:port`, or `None` for a direct connection.
    pub fn proxy_name(&self) -> Option<&str> {
        self.proxy.as_ref().map(|(_, name)| name.as_str())
    }
}

fn dialer(
    config: &Config,
    tls: Option<(
        std::sync::Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
) -> Dialer {
    Dialer {
        family: config.family,
        timeout: config.connect_timeout,
        keepalive: config.keepalive,
        tls,
        exact: config.fdpass,
    }
}

/// Opens a tunnel to `target`: connects, and through a proxy negotiates CONNECT (answering
/// 407s). Blocks for at most the connect timeout per connection. A direct tunnel has an empty
/// status line.
pub fn establish(up: &Upstream, target: &Endpoint) -> Result<Established<connect::Stream>, Error> {
    let Some((proxy, proxy_name)) = &up.proxy else {
        let stream = up.dialer.connect(target)?;
        info!("connected to {target} directly");
        return Ok(Established {
            stream,
            reply: handshake::Reply {
                version: 1,
                code: 200,
                status_line: String::new(),
                headers: Vec::new(),
            },
            leftover: Vec::new(),
        });
    };
    // One deadline for the whole handshake: every connect, reconnect and reply counts against
    // it; only the time a person takes to answer a prompt does not.
    let clock = connect::Clock::start(up.dialer.timeout);
    let stream = up.dialer.connect_within(&proxy.endpoint, &clock)?;
    info!("connected to proxy {proxy_name}; asking for CONNECT {target}");
    let no_askers = credentials::Askers::default();
    let askers = up.askers.as_ref().unwrap_or(&no_askers);
    let established = handshake::negotiate(
        stream,
        Negotiation {
            request: Request {
                target,
                user_agent: up.user_agent.as_deref(),
                headers: &up.headers,
            },
            proxy: proxy_name,
            credentials: up.credentials.clone(),
            scheme: up.scheme,
            reconnect: &mut || up.dialer.connect_within(&proxy.endpoint, &clock),
            ask: &mut || match up.askers {
                None => Ok(None),
                Some(_) => clock
                    .pause(|| credentials::ask(proxy_name, None, askers))
                    .kind_ctx(Kind::Auth, || {
                        format!("asking for credentials for proxy {proxy_name}")
                    }),
            },
            // A fresh setup per connection: the ticket is read each time.
            negotiate: Some(auth::negotiate::Setup::system(
                auth::negotiate::service_name(
                    up.service_name.as_deref(),
                    &proxy.endpoint.host.to_string(),
                ),
            )),
        },
    )?;
    info!(
        "tunnel to {target} open: {:?}{}",
        established.reply.status_line,
        match established.leftover.len() {
            0 => String::new(),
            n => format!(" ({n} tunnel bytes came with it)"),
        }
    );
    Ok(established)
}

/// The configuration and server name of one TLS leg. Failures here come from the user's files
/// and options, before anything is sent: usage errors.
fn tls_leg(
    host: &str,
    opts: &tls::Options,
    what: &str,
    insecure_warning: &str,
) -> Result<
    (
        std::sync::Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    ),
    Error,
> {
    let setting_up = || format!("setting up TLS for {what}");
    let name = tls::server_name(host, opts).kind_ctx(Kind::Usage, setting_up)?;
    let config = tls::client_config(opts, what).kind_ctx(Kind::Usage, setting_up)?;
    if opts.insecure {
        diag::warn(&insecure_warning);
    }
    Ok((config, name))
}

fn relay_stdio<T: Tunnel>(
    mut tunnel: T,
    first: &[u8],
    opts: relay::Options,
) -> Result<Stats, RelayError> {
    let (stdin, stdout) = (std::io::stdin(), std::io::stdout());
    relay::relay(stdin.as_fd(), stdout.as_fd(), &mut tunnel, first, opts)
}

/// Reads `prefix` first, then the stream: for a handshake whose first bytes were already read.
struct Prefixed<'a, S> {
    prefix: std::io::Cursor<&'a [u8]>,
    stream: &'a mut S,
}

impl<S: std::io::Read> std::io::Read for Prefixed<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.prefix.read(buf)? {
            0 => self.stream.read(buf),
            n => Ok(n),
        }
    }
}

impl<S: std::io::Write> std::io::Write for Prefixed<'_, S> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.stream.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.stream.flush()
    }
}
