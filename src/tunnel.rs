//! Opening a tunnel along a route: dial the first hop, then ask each hop in turn for the next
//! (HTTP CONNECT or SOCKS) through the tunnel the hops before it opened, with TLS inside that
//! tunnel for an `https://` hop; the last hop is asked for the destination. An empty route is
//! a direct connection. A hop offered `h2` (`https+h2://`, `--proxy-http2`) that agrees gets
//! its CONNECT over HTTP/2 (`hop::h2`), and its tunnel comes back as a socket pair
//! (`transport::stream::Bridged`) the next hops and the relay run over.
//!
//! [`Upstream`] is prepared once (credentials asked for, TLS configured) and is `Sync`:
//! [`establish`] runs per tunnel, from any thread (listen mode calls it per accepted
//! connection from its workers). One `--connect-timeout` deadline, set when the first hop is
//! dialled, covers every hop, since they all run over that one socket.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use rustls::pki_types::ServerName;

use crate::auth;
use crate::config::{self, Config, Endpoint, Family, Host, Proxy};
use crate::connect::{Clock, Dialer};
use crate::credentials::{self, Credentials, Spec};
use crate::diag::info;
use crate::error::{Error, Kind, ResultExt};
use crate::handshake::{self, Established, Negotiation, Request};
use crate::hop::h2;
use crate::hop::socks::{self, Socks, Step};
use crate::tls;
use crate::transport::stream::{Bridged, Finish, Pumps, Stream};

/// One prepared hop.
struct Hop {
    proxy: Proxy,
    /// `host:port` for HTTP, `scheme://host:port` otherwise: what messages call it.
    name: String,
    credentials: Option<Credentials>,
    /// For `https://`: the TLS configuration and the name to verify.
    tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    /// `--proxy-http2` on this hop: `h2` offered by ALPN (before `http/1.1`).
    h2: bool,
    /// In the listen modes, for an `h2` hop asked for the destination: the connections
    /// [`establish`] shares between tunnels.
    mux: Option<h2::Mux>,
}

/// How tunnels are reached, prepared once (credentials asked for, TLS configured) and used for
/// each tunnel: once in pipe mode, per accepted connection in listen mode, from worker threads.
/// This is the seam between establishing a tunnel and relaying it: [`establish`] may block (up
/// to `--connect-timeout`), the relays never do.
pub struct Upstream {
    /// Empty: connect to the target directly.
    hops: Vec<Hop>,
    /// The route as one string for logs; `None` when direct.
    route_name: Option<String>,
    dialer: Dialer,
    scheme: Option<auth::Scheme>,
    headers: Vec<(String, String)>,
    user_agent: Option<String>,
    /// Who to ask after a 407 (or a SOCKS5 proxy that wants a password); `None` in listen
    /// mode, where nobody is there to answer.
    askers: Option<credentials::Askers>,
    /// `--proxy-service-name`: the Kerberos service for Negotiate.
    service_name: Option<String>,
    /// The caller relays the tunnel itself and nothing runs inside it first (pipe mode
    /// without `--tls` or `--fdpass`): a last HTTP/2 hop's tunnel is driven on the caller's
    /// thread ([`Stream::Inline`]) rather than bridged to a thread of its own.
    inline_h2: bool,
}

impl Upstream {
    /// Prepares the way through `proxy` (or direct) with `credentials`. Asks for a missing
    /// password now, so that no tunnel waits on a prompt.
    pub fn new(
        config: &Config,
        proxy: Option<&Proxy>,
        credentials: &Spec,
        interactive: bool,
    ) -> Result<Upstream, Error> {
        let hops: Vec<Proxy> = proxy
            .map(|p| Proxy {
                credentials: credentials.clone(),
                ..p.clone()
            })
            .into_iter()
            .collect();
        Upstream::route(config, &hops, interactive)
    }

    /// Prepares the way through `proxies` in order (empty: direct), each with the credentials
    /// it carries.
    pub fn route(config: &Config, proxies: &[Proxy], interactive: bool) -> Result<Upstream, Error> {
        let mut hops = Vec::with_capacity(proxies.len());
        let listen = config.listen.is_some();
        for (i, proxy) in proxies.iter().enumerate() {
            let last = i + 1 == proxies.len();
            // HTTP/2 offered to an https+h2:// hop, and to every https:// hop with
            // --proxy-http2, wherever it is in the chain. In the listen modes, to the hop
            // asked for the destination only, whose connections the tunnels share.
            if proxy.h2 && listen && !last {
                return Err(Error::msg(
                    Kind::Usage,
                    format_args!(
                        "checking proxy https+h2://{}: in -L, -D and --forwards HTTP/2 goes to the last hop of a chain only (write this one as https://)",
                        proxy.endpoint
                    ),
                ));
            }
            let h2 = (proxy.h2 || config.proxy_http2)
                && proxy.tls
                && proxy.socks.is_none()
                && (last || !listen);
            let mut hop = prepare(config, proxy, h2)?;
            if h2 && listen {
                hop.mux = Some(h2::Mux::new(&proxy.endpoint.to_string()));
            }
            hops.push(hop);
        }
        let route_name = match hops.as_slice() {
            [] => None,
            hops => Some(
                hops.iter()
                    .map(|h| h.name.as_str())
                    .collect::<Vec<_>>()
                    .join(" -> "),
            ),
        };
        Ok(Upstream {
            hops,
            route_name,
            dialer: Dialer {
                family: config.family,
                timeout: config.connect_timeout,
                keepalive: config.keepalive,
                tls: None,
                exact: config.fdpass,
            },
            scheme: config.auth_scheme,
            headers: config.headers.clone(),
            user_agent: config.user_agent.clone(),
            askers: interactive.then(|| config.askers.clone()),
            service_name: config.proxy_service_name.clone(),
            inline_h2: false,
        })
    }

    /// TCP keepalive for this way's sockets (a forward's own `keepalive=`).
    pub fn set_keepalive(&mut self, keepalive: Option<Duration>) {
        self.dialer.keepalive = keepalive;
    }

    /// The authentication scheme to use (a forward's own `proxy-auth=`); `None` for any.
    pub fn set_scheme(&mut self, scheme: Option<auth::Scheme>) {
        self.scheme = scheme;
    }

    /// The caller relays the tunnel on its own thread and runs nothing inside it first: a
    /// last HTTP/2 hop then comes back as [`Stream::Inline`], without a thread of its own.
    pub fn relay_inline(&mut self) {
        self.inline_h2 = true;
    }

    /// The proxy as `host:port` (hops joined by ` -> ` for a chain), or `None` when direct.
    pub fn proxy_name(&self) -> Option<&str> {
        self.route_name.as_deref()
    }

    /// How many hops the route has.
    pub fn hops(&self) -> usize {
        self.hops.len()
    }

    /// The last hop when it is an HTTP proxy (not SOCKS): a `-D` port sends it absolute-form
    /// requests (RFC 9112 §3.2.2) with gimlet's `Proxy-Authorization`, rather than CONNECT.
    pub fn http_proxy(&self) -> Option<HttpProxy> {
        let hop = self
            .hops
            .last()
            .filter(|h| h.proxy.socks.is_none() && !h.h2)?;
        Some(HttpProxy {
            name: hop.proxy.endpoint.to_string(),
            service: auth::negotiate::service_name(
                self.service_name.as_deref(),
                &hop.proxy.endpoint.host.to_string(),
            ),
            credentials: hop.credentials.clone(),
            scheme: self.scheme,
            headers: self
                .headers
                .iter()
                .filter(|(n, _)| {
                    !n.eq_ignore_ascii_case("Host") && !n.eq_ignore_ascii_case("User-Agent")
                })
                .cloned()
                .collect(),
        })
    }

    /// A connection on which the last hop listens (through the hops before it, TLS with it
    /// when it is `https://`), within `--connect-timeout`.
    pub fn reach_last(&self) -> Result<Stream, Error> {
        let last = self
            .hops
            .len()
            .checked_sub(1)
            .ok_or_else(|| Error::msg(Kind::Usage, "a direct route has no proxy to reach"))?;
        let clock = Clock::start(self.dialer.timeout);
        reach(self, last, &clock)
    }

    /// The route as the engine's loop can open it without blocking: one plain `http://` proxy
    /// (at an IP address, or named: the loop then needs an address a worker resolved), with no
    /// credentials or Basic ones sent with the first request (`--proxy-auth basic`), and
    /// nothing to print (`-v`). Everything else (TLS, SOCKS, HTTP/2, other schemes, chains,
    /// scoped IPv6 addresses) is [`establish`]'s.
    pub fn plain_connect(&self, target: &Endpoint) -> Option<PlainConnect> {
        let [hop] = self.hops.as_slice() else {
            return None;
        };
        let simple = hop.proxy.socks.is_none()
            && hop.tls.is_none()
            && !hop.h2
            && hop.mux.is_none()
            && !self.dialer.exact
            && crate::diag::level() == 0;
        // A named proxy has no address yet: the loop uses the one a worker's handshake
        // reached (it resolves and honours the family), for a while (serve/mod.rs).
        let addr = match &hop.proxy.endpoint.host {
            Host::Ip(ip) => {
                let family = match self.dialer.family {
                    Family::Any => true,
                    Family::V4 => ip.is_ipv4(),
                    Family::V6 => ip.is_ipv6(),
                };
                if !family {
                    return None;
                }
                Some(SocketAddr::new(*ip, hop.proxy.endpoint.port))
            }
            Host::Name(_) => None,
            Host::Scoped(..) => return None,
        };
        if !simple {
            return None;
        }
        // As the handshake does: a forced Basic goes with the first request; other schemes
        // need the proxy's challenge first.
        let authorization = match (&hop.credentials, self.scheme) {
            (None, _) => None,
            (Some(c), Some(auth::Scheme::Basic)) => Some(c.basic_authorization()),
            (Some(_), _) => return None,
        };
        let request = Request {
            target,
            user_agent: self.user_agent.as_deref(),
            headers: &self.headers,
        };
        Some(PlainConnect {
            addr,
            proxy: hop.proxy.endpoint.to_string(),
            request: request.to_bytes(authorization.as_ref()),
            timeout: self.dialer.timeout,
            keepalive: self.dialer.keepalive,
        })
    }

    /// How messages name hop `i`: the proxy alone, or its place in the chain.
    fn who(&self, i: usize) -> String {
        match self.hops.len() {
            1 => format!("proxy {}", self.hops[i].name),
            n => format!("hop {} of {n} ({})", i + 1, self.hops[i].name),
        }
    }

    /// In a chain, says which hop an error came from.
    fn at(&self, i: usize, e: Error) -> Error {
        match self.hops.len() {
            1 => e,
            _ => e.context(self.who(i)),
        }
    }
}

/// A route the engine's loop opens itself (see [`Upstream::plain_connect`]): the same
/// connect, request and deadline [`establish`] would use, prepared once per forward.
pub struct PlainConnect {
    /// The proxy's address; `None` when it is named (the loop then connects to an address a
    /// worker's handshake resolved and reached).
    pub addr: Option<SocketAddr>,
    /// `host:port`, as messages name the proxy.
    pub proxy: String,
    /// The CONNECT request head, with Basic credentials when they go with it (zeroed on drop).
    pub request: zeroize::Zeroizing<Vec<u8>>,
    /// `--connect-timeout`: for the connect and the reply together.
    pub timeout: Duration,
    pub keepalive: Option<Duration>,
}

/// What absolute-form requests to a route's last hop need (see [`Upstream::http_proxy`]).
pub struct HttpProxy {
    /// `host:port`, for messages.
    pub name: String,
    pub credentials: Option<Credentials>,
    /// `--proxy-auth`: the scheme to use, `None` for the strongest offered.
    pub scheme: Option<auth::Scheme>,
    /// `-H` fields for the proxy (Host and User-Agent stay the client's).
    pub headers: Vec<(String, String)>,
    /// The Kerberos service Negotiate asks a ticket for (`--proxy-service-name`).
    pub service: (String, auth::negotiate::NameKind),
}

/// Credentials asked for now when only the user is known; TLS configured for `https://`.
fn prepare(config: &Config, proxy: &Proxy, h2: bool) -> Result<Hop, Error> {
    let name = proxy.name();
    let socks4 = matches!(proxy.socks, Some(socks::Version::V4 | socks::Version::V4a));
    let credentials = match &proxy.credentials {
        Spec::None => None,
        Spec::Known(c) => Some(c.clone()),
        // SOCKS4 sends a user id and no password: nothing to ask for.
        Spec::User(user) if socks4 => Some(
            Credentials::new(user.clone(), String::new())
                .kind_ctx(Kind::Usage, || format!("checking the SOCKS4 user id for {name}"))?,
        ),
        Spec::User(user) => Some(
            credentials::ask(&name, Some(user), &config.askers)
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
            "credentials for proxy {name}: user \"{}\"{}",
            c.user,
            c.source.from_phrase()
        ),
        None => info!("no credentials given for proxy {name}"),
    }
    let tls = match proxy.tls {
        true => Some(crate::tls_leg(
            &proxy.endpoint.host.to_string(),
            &config.proxy_tls,
            &format!("proxy {name}"),
            "--proxy-insecure: the proxy's certificate is not verified",
        )?),
        false => None,
    };
    let tls = match (tls, h2) {
        (Some((config, server)), true) => {
            let mut config = (*config).clone();
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            Some((Arc::new(config), server))
        }
        (tls, _) => tls,
    };
    Ok(Hop {
        proxy: proxy.clone(),
        name,
        credentials,
        tls,
        h2,
        mux: None,
    })
}

/// Opens a tunnel to `target`: connects, and through each hop negotiates the next (answering
/// 407s and SOCKS authentication). Blocks for at most the connect timeout. A direct tunnel has
/// an empty status line.
pub fn establish(up: &Upstream, target: &Endpoint) -> Result<Established<Stream>, Error> {
    // One deadline for the whole route: every connect, reconnect and reply of every hop counts
    // against it; only the time a person takes to answer a prompt does not.
    let clock = Clock::start(up.dialer.timeout);
    let Some(last) = up.hops.len().checked_sub(1) else {
        let stream = up.dialer.connect_direct(target, &clock)?;
        info!("connected to {target} directly");
        return Ok(Established {
            stream: Stream::from_dialed(stream),
            reply: granted(String::new()),
            leftover: Vec::new(),
        });
    };
    if let Some(mux) = &up.hops[last].mux {
        return shared_h2(up, last, mux, target, &clock);
    }
    let established = held(
        reach(up, last, &clock)?,
        &clock,
        |stream| ask(up, last, stream, target, &clock),
        |established| &mut established.stream,
    )?;
    opened(target, &established);
    Ok(established)
}

fn opened(target: &Endpoint, established: &Established<Stream>) {
    info!(
        "tunnel to {target} open: {:?}{}",
        established.reply.status_line,
        match established.leftover.len() {
            0 => String::new(),
            n => format!(" ({n} tunnel bytes came with it)"),
        }
    );
}

/// [`establish`] through an HTTP/2 hop shared by many tunnels (the listen modes): a stream on
/// a connection to it with room, or on a new one (see [`h2::Mux`]). A proxy that chooses
/// HTTP/1.1 gets the HTTP/1.1 CONNECT, one connection per tunnel.
fn shared_h2(
    up: &Upstream,
    last: usize,
    mux: &h2::Mux,
    target: &Endpoint,
    clock: &Clock,
) -> Result<Established<Stream>, Error> {
    let hop = &up.hops[last];
    let who = up.who(last);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let lease = match mux.slot(clock).map_err(|e| up.at(last, e))? {
            h2::Slot::Ride(lease) => lease,
            h2::Slot::Dial(ticket) => {
                let stream = reach(up, last, clock)?;
                if stream.alpn() != Some(b"h2") {
                    ticket.http1();
                    let established = ask(up, last, stream, target, clock)?;
                    opened(target, &established);
                    return Ok(established);
                }
                ticket
                    .handshake(stream, clock)
                    .map_err(|e| up.at(last, e))?
            }
        };
        let connection = lease.connection();
        info!("{who}: CONNECT {target} on HTTP/2 connection #{connection}");
        let proxy_name = hop.proxy.endpoint.to_string();
        let exchange = h2::Exchange {
            target,
            proxy: &proxy_name,
            user_agent: up.user_agent.as_deref(),
            headers: &up.headers,
            credentials: hop.credentials.clone(),
            scheme: up.scheme,
            // Nobody to ask in a listen mode.
            ask: &mut || Ok(None),
            negotiate: Some(auth::negotiate::Setup::system(
                auth::negotiate::service_name(
                    up.service_name.as_deref(),
                    &hop.proxy.endpoint.host.to_string(),
                ),
            )),
            clock,
        };
        match lease.connect(exchange) {
            Ok(shared) => {
                let status_line = format!(
                    "{} (HTTP/2 connection #{}, stream {})",
                    shared.status_line, shared.connection, shared.stream
                );
                let established = Established {
                    stream: Stream::Bridged(Bridged::new(
                        shared.near,
                        clock.clone(),
                        vec![shared.release],
                    )),
                    reply: handshake::Reply {
                        version: 2,
                        code: shared.code,
                        status_line,
                        headers: Vec::new(),
                    },
                    leftover: Vec::new(),
                };
                opened(target, &established);
                return Ok(established);
            }
            Err(f) if f.retry && attempt < h2::MUX_ATTEMPTS => info!(
                "{who}: HTTP/2 connection #{connection} takes no new streams ({:#}); trying another",
                f.error
            ),
            Err(f) => return Err(up.at(last, f.error)),
        }
    }
}

/// A connection on which hop `i` is listening: hop 0 dialled, or hop `i - 1` asked for hop
/// `i`; TLS with the hop when it is `https://`.
fn reach(up: &Upstream, i: usize, clock: &Clock) -> Result<Stream, Error> {
    let hop = &up.hops[i];
    if i == 0 {
        let dialed = up
            .dialer
            .connect_within(&hop.proxy.endpoint, clock)
            .map_err(|e| up.at(0, e))?;
        return on_top(up, i, Stream::from_dialed(dialed), Vec::new());
    }
    held(
        reach(up, i - 1, clock)?,
        clock,
        |below| {
            let est = ask(up, i - 1, below, &hop.proxy.endpoint, clock)?;
            info!("through {} to {}", up.who(i - 1), hop.name);
            on_top(up, i, est.stream, est.leftover)
        },
        |stream| stream,
    )
}

/// Hop `i` over `stream`, the tunnel that reached it: TLS with it when it is `https://`.
fn on_top(up: &Upstream, i: usize, stream: Stream, leftover: Vec<u8>) -> Result<Stream, Error> {
    let hop = &up.hops[i];
    match &hop.tls {
        Some((config, name)) => {
            tls_over(stream, &leftover, config, name, &up.who(i)).map_err(|e| up.at(i, e))
        }
        None if leftover.is_empty() => Ok(stream),
        // A proxy speaks only when spoken to: bytes before our request are not its reply.
        None => Err(up.at(
            i,
            Error::msg(
                Kind::Protocol,
                format_args!(
                    "{} bytes came through the tunnel before anything was asked of it: {:?}",
                    leftover.len(),
                    handshake::printable(&leftover)
                ),
            ),
        )),
    }
}

/// Runs `step` (a handshake) over `stream` with the threads of the HTTP/2 hops beneath held
/// aside, and puts them back under the stream it returns (`bottom` finds it). When the step
/// fails and one of those threads failed first (the proxy reset the stream the handshake ran
/// in, or sent GOAWAY), that is the reason: the step only saw its tunnel end. Not after the
/// deadline passed: a thread waiting on a silent proxy would hold the error back.
fn held<T>(
    mut stream: Stream,
    clock: &Clock,
    step: impl FnOnce(Stream) -> Result<T, Error>,
    bottom: impl FnOnce(&mut T) -> &mut Stream,
) -> Result<T, Error> {
    let pumps = stream.take_pumps();
    if pumps.is_empty() {
        return step(stream);
    }
    match step(stream) {
        Ok(mut t) => {
            bottom(&mut t).put_pumps(pumps);
            Ok(t)
        }
        Err(e) if clock.remaining().is_none() => Err(e),
        // The step's stream is gone, so each thread ends once its stream has.
        Err(e) => match finish(pumps) {
            Ok(()) => Err(e),
            Err(cause) => {
                info!("{e:#}");
                Err(cause)
            }
        },
    }
}

/// Waits for the threads of a route's HTTP/2 hops, innermost first (each closes the stream
/// the next one out carries), and returns the error of the outermost that failed: its end
/// ended the hops inside it too.
pub fn finish(pumps: Pumps) -> Result<(), Error> {
    let mut outermost = None;
    for pump in pumps.into_iter().rev() {
        if let Err(e) = pump.finish() {
            outermost = Some(e);
        }
    }
    outermost.map_or(Ok(()), Err)
}

/// Shakes hands over `stream`, the bytes already read (`prefix`) first.
fn tls_over(
    mut stream: Stream,
    prefix: &[u8],
    config: &Arc<ClientConfig>,
    name: &ServerName<'static>,
    who: &str,
) -> Result<Stream, Error> {
    let mut prefixed = crate::Prefixed {
        prefix: std::io::Cursor::new(prefix),
        stream: &mut stream,
    };
    let mut conn = tls::start(config.clone(), name, &mut prefixed, who)?;
    let mut rest = prefixed.prefix;
    while (rest.position() as usize) < prefix.len() {
        conn.read_tls(&mut rest)
            .kind_ctx(Kind::Tls, || format!("TLS with {who}"))?;
    }
    conn.process_new_packets()
        .map_err(|e| Error::new(Kind::Tls, e).context(format!("TLS with {who}")))?;
    info!(
        "TLS with {who}: {}, {}",
        conn.protocol_version()
            .map_or_else(String::new, |v| format!("{v:?}")),
        conn.negotiated_cipher_suite()
            .map_or_else(String::new, |c| format!("{:?}", c.suite()))
    );
    Ok(stream.wrap(conn))
}

/// Asks hop `i`, listening on `stream`, to connect to `next`.
fn ask(
    up: &Upstream,
    i: usize,
    stream: Stream,
    next: &Endpoint,
    clock: &Clock,
) -> Result<Established<Stream>, Error> {
    let hop = &up.hops[i];
    match hop.proxy.socks {
        Some(version) => socks_hop(up, i, version, stream, next, clock),
        None if hop.h2 && stream.alpn() == Some(b"h2") => {
            h2_hop(up, i, stream, next, clock).map_err(|e| up.at(i, e))
        }
        None => {
            if hop.h2 {
                info!("{} chose HTTP/1.1", up.who(i));
            }
            http_hop(up, i, stream, next, clock).map_err(|e| up.at(i, e))
        }
    }
}

/// CONNECT over HTTP/2 with hop `i` (it agreed to `h2` on `stream`). The stream's stack moves
/// onto the hop's runtime thread, and the tunnel comes back as the near end of a socket pair
/// that thread serves: the next hop's handshake, or the relay, runs over it like over TCP.
fn h2_hop(
    up: &Upstream,
    i: usize,
    mut stream: Stream,
    next: &Endpoint,
    clock: &Clock,
) -> Result<Established<Stream>, Error> {
    let hop = &up.hops[i];
    let who = up.who(i);
    info!("{who} agreed to HTTP/2; asking for CONNECT {next}");
    // The threads of HTTP/2 hops beneath keep serving this one's connection.
    let mut pumps = stream.take_pumps();
    let proxy_name = hop.proxy.endpoint.to_string();
    let no_askers = credentials::Askers::default();
    let askers = up.askers.as_ref().unwrap_or(&no_askers);
    let inline = up.inline_h2 && i + 1 == up.hops.len();
    let tunnel = h2::open(
        stream,
        inline,
        h2::Exchange {
            target: next,
            proxy: &proxy_name,
            user_agent: up.user_agent.as_deref(),
            headers: &up.headers,
            credentials: hop.credentials.clone(),
            scheme: up.scheme,
            ask: &mut || match up.askers {
                None => Ok(None),
                Some(_) => clock
                    .pause(|| credentials::ask(&proxy_name, None, askers))
                    .kind_ctx(Kind::Auth, || {
                        format!("asking for credentials for proxy {proxy_name}")
                    }),
            },
            negotiate: Some(auth::negotiate::Setup::system(
                auth::negotiate::service_name(
                    up.service_name.as_deref(),
                    &hop.proxy.endpoint.host.to_string(),
                ),
            )),
            clock,
        },
    )?;
    let code = |status_line: &str| {
        status_line
            .rsplit(' ')
            .next()
            .and_then(|c| c.parse().ok())
            .unwrap_or(200)
    };
    let tunnel = match tunnel {
        h2::Opened::Inline(tunnel) => {
            let status_line = tunnel.status_line.clone();
            return Ok(Established {
                reply: handshake::Reply {
                    version: 2,
                    code: code(&status_line),
                    status_line,
                    headers: Vec::new(),
                },
                stream: Stream::Inline(Box::new(crate::transport::stream::Inline {
                    tunnel: *tunnel,
                    pumps,
                    who: (up.hops.len() > 1).then_some(who),
                })),
                leftover: Vec::new(),
            });
        }
        h2::Opened::Threaded(tunnel) => tunnel,
    };
    let status_line = tunnel.status_line.clone();
    let (near, pump) = tunnel
        .bridge()
        .kind_ctx(Kind::Tunnel, || format!("HTTP/2 tunnel through {who}"))?;
    pumps.push(Box::new(HopPump {
        pump,
        who: (up.hops.len() > 1).then_some(who),
    }));
    Ok(Established {
        stream: Stream::Bridged(Bridged::new(near, clock.clone(), pumps)),
        reply: handshake::Reply {
            version: 2,
            code: code(&status_line),
            status_line,
            headers: Vec::new(),
        },
        leftover: Vec::new(),
    })
}

/// An HTTP/2 hop's thread, named for messages in a chain.
struct HopPump {
    pump: h2::Pump,
    who: Option<String>,
}

impl Finish for HopPump {
    fn finish(self: Box<Self>) -> Result<(), Error> {
        let HopPump { pump, who } = *self;
        pump.finish().map_err(|e| match who {
            Some(who) => e.context(who),
            None => e,
        })
    }
}

fn http_hop(
    up: &Upstream,
    i: usize,
    stream: Stream,
    next: &Endpoint,
    clock: &Clock,
) -> Result<Established<Stream>, Error> {
    let hop = &up.hops[i];
    let proxy_name = hop.proxy.endpoint.to_string();
    info!("connected to {}; asking for CONNECT {next}", up.who(i));
    let no_askers = credentials::Askers::default();
    let askers = up.askers.as_ref().unwrap_or(&no_askers);
    handshake::negotiate(
        stream,
        Negotiation {
            request: Request {
                target: next,
                user_agent: up.user_agent.as_deref(),
                headers: &up.headers,
            },
            proxy: &proxy_name,
            credentials: hop.credentials.clone(),
            scheme: up.scheme,
            reconnect: &mut || reach(up, i, clock),
            ask: &mut || match up.askers {
                None => Ok(None),
                Some(_) => clock
                    .pause(|| credentials::ask(&proxy_name, None, askers))
                    .kind_ctx(Kind::Auth, || {
                        format!("asking for credentials for proxy {proxy_name}")
                    }),
            },
            // A fresh setup per connection: the ticket is read each time.
            negotiate: Some(auth::negotiate::Setup::system(
                auth::negotiate::service_name(
                    up.service_name.as_deref(),
                    &hop.proxy.endpoint.host.to_string(),
                ),
            )),
        },
    )
}

/// SOCKS4/4a/5 with hop `i`. A SOCKS5 proxy that accepts no method without a password gets
/// one, asked for when there is a way to ask, on a new connection.
fn socks_hop(
    up: &Upstream,
    i: usize,
    version: socks::Version,
    mut stream: Stream,
    next: &Endpoint,
    clock: &Clock,
) -> Result<Established<Stream>, Error> {
    let hop = &up.hops[i];
    let who = up.who(i);
    let target = match (version.proxy_resolves(), &next.host) {
        (false, Host::Name(name)) => {
            let ip =
                resolve_for(version, name, next.port, up.dialer.family, clock).map_err(|e| {
                    e.context(format!(
                        "resolving {name} for {who} ({version} sends addresses)"
                    ))
                })?;
            info!("{name} is {ip}; {version} gets the address");
            Endpoint {
                host: Host::Ip(ip),
                port: next.port,
            }
        }
        _ => next.clone(),
    };
    info!("connected to {who}; asking for {version} CONNECT {target}");
    let mut credentials = hop.credentials.clone();
    let mut asked = false;
    loop {
        let mut s = Socks::new(version, &target, credentials.clone())
            .map_err(|e| e.context(format!("asking {who} for {next}")))?;
        match drive(&mut s, &mut stream, up, &who, clock) {
            Ok(done) => {
                let status = match &done.bound {
                    Some(bound) => format!("{version} request granted (bound {bound})"),
                    None => format!("{version} request granted"),
                };
                return Ok(Established {
                    stream,
                    reply: granted(status),
                    leftover: done.leftover,
                });
            }
            Err(e) if s.wants_credentials() && !asked && credentials.is_none() => {
                let Some(askers) = &up.askers else {
                    return Err(e.context(format!("authenticating to {who}")));
                };
                asked = true;
                match clock
                    .pause(|| credentials::ask(&hop.name, None, askers))
                    .kind_ctx(Kind::Auth, || format!("asking for credentials for {who}"))?
                {
                    Some(c) => credentials = Some(c),
                    None => return Err(e.context(format!("authenticating to {who}"))),
                }
                // The proxy closes after refusing every method: start again.
                stream = reach(up, i, clock)?;
            }
            Err(e) => {
                let what = match e.kind() {
                    Kind::Refused => format!("{who} refused CONNECT {next}"),
                    Kind::Auth => format!("authenticating to {who}"),
                    _ => format!("reading the SOCKS reply from {who}"),
                };
                return Err(e.context(what));
            }
        }
    }
}

/// Runs one SOCKS exchange over `stream`. With `--fdpass` every read takes at most what the
/// reply still lacks, so the tunnel's first bytes stay in the socket for ssh.
fn drive(
    s: &mut Socks,
    stream: &mut Stream,
    up: &Upstream,
    who: &str,
    clock: &Clock,
) -> Result<socks::Done, Error> {
    let send = |stream: &mut Stream, bytes: &[u8]| {
        stream
            .write_all(bytes)
            .and_then(|()| stream.flush())
            .map_err(|e| {
                Error::new(io_kind(&e), e).context(format!("sending the SOCKS request to {who}"))
            })
    };
    send(stream, &s.start())?;
    let mut buf = [0u8; 1024];
    let mut step = Step::Need(1);
    loop {
        match step {
            Step::Need(_) => {
                let want = if up.dialer.exact {
                    s.wanted().min(buf.len())
                } else {
                    buf.len()
                };
                let n = loop {
                    match stream.read(&mut buf[..want]) {
                        Ok(n) => break n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        // An HTTP proxy waits for a request line that never comes.
                        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                            return Err(Error::new(Kind::Unreachable, e).context(
                                "no SOCKS reply (an HTTP proxy given as socks:// waits like this: if it is one, give it as http://HOST:PORT)",
                            ));
                        }
                        Err(e) => return Err(Error::new(io_kind(&e), e)),
                    }
                };
                if n == 0 {
                    return Err(s.eof());
                }
                step = s.feed(&buf[..n])?;
            }
            Step::Send(bytes) => {
                send(stream, &bytes)?;
                step = s.feed(&[])?;
            }
            Step::NeedCredentials => {
                let Some(askers) = &up.askers else {
                    return Err(Error::msg(
                        Kind::Auth,
                        "the proxy wants a user name and password and none was given",
                    ));
                };
                let c = clock
                    .pause(|| credentials::ask(who, None, askers))
                    .kind_ctx(Kind::Auth, || format!("asking for credentials for {who}"))?
                    .ok_or_else(|| {
                        Error::msg(
                            Kind::Auth,
                            "the proxy wants a user name and password and there is no way to ask for them",
                        )
                    })?;
                step = s.authenticate(c)?;
            }
            Step::Done(done) => return Ok(done),
        }
    }
}

fn io_kind(e: &std::io::Error) -> Kind {
    if tls::is_tls_error(e) {
        Kind::Tls
    } else {
        Kind::Unreachable
    }
}

/// The address a `socks4://` or `socks5://` hop is given for `name`: resolved here, within the
/// timeout, IPv4 for SOCKS4, `-4`/`-6` respected.
fn resolve_for(
    version: socks::Version,
    name: &str,
    port: u16,
    family: Family,
    clock: &Clock,
) -> Result<IpAddr, Error> {
    let addrs = crate::connect::resolve_name(name, port, clock)?;
    let fits = |a: &SocketAddr| match (version, family) {
        (socks::Version::V4, _) | (_, Family::V4) => a.is_ipv4(),
        (_, Family::V6) => a.is_ipv6(),
        _ => true,
    };
    addrs
        .iter()
        .find(|a| fits(a))
        .map(SocketAddr::ip)
        .ok_or_else(|| {
            Error::msg(
                Kind::Unreachable,
                format_args!(
                    "{name} has no {} address",
                    if version == socks::Version::V4 || family == Family::V4 {
                        "IPv4"
                    } else {
                        "IPv6"
                    }
                ),
            )
        })
}

/// The reply a direct connection or a SOCKS grant stands in for.
fn granted(status_line: String) -> handshake::Reply {
    handshake::Reply {
        version: 1,
        code: 200,
        status_line,
        headers: Vec::new(),
    }
}
