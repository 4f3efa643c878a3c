//! gimlet: a stdio tunnel through HTTP and SOCKS proxies.
//!
//! The data path reads top to bottom: `cli` → `config` (with `route`: the hops, from the
//! arguments or the environment) → `tunnel` (dial with `connect`/`transport`, then each hop's
//! sans-IO handshake: `handshake` for CONNECT, `hop::socks`) → `relay`, with `error` mapping
//! every failure to an exit status. [`run`] wires those steps.

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
pub mod tunnel;

use std::os::fd::AsFd;

use config::Config;
use diag::info;
use error::{Error, Kind, ResultExt};
use handshake::Established;
use relay::{RelayError, Stats, Tunnel};

pub use diag::init as init_diagnostics;
pub use tunnel::{Upstream, establish};

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
    if let Some(why) = &config.route_why {
        info!("{why}");
    }
    // Every copy of the credentials moves into the upstream (each hop's own), then goes.
    let proxies = std::mem::take(&mut config.proxies);
    drop(std::mem::take(&mut config.credentials));
    let config = &config;
    let mut upstream = Upstream::route(config, &proxies, true)?;
    if config.target_tls.is_none() && !config.fdpass {
        upstream.relay_inline();
    }
    drop(proxies);
    let via = match upstream.proxy_name() {
        Some(name) => format!("via proxy {name}"),
        None => "directly".to_owned(),
    };
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
    if !config.fdpass {
        connect::while_waiting(prepare_stdio);
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
    let relaying = || format!("relaying to {} {via}", config.target);
    let opts = relay::Options {
        idle_timeout: config.idle_timeout,
        splice: config.splice,
    };
    let Established {
        stream, leftover, ..
    } = established;
    // A last HTTP/2 hop: the relay drives the stream itself, on this thread.
    let mut stream = match stream.into_inline() {
        Ok(transport::stream::Inline {
            mut tunnel,
            pumps,
            who,
        }) => {
            let relayed = relay_stdio(&mut tunnel, &leftover, opts);
            // Its end (a reset, GOAWAY) says more than the relay's view of it, as does the
            // end of an HTTP/2 hop beneath (this one's first: it is the outermost).
            let ended = tunnel.finish().map_err(|e| match who {
                Some(who) => e.context(who),
                None => e,
            });
            let beneath = tunnel::finish(pumps);
            ended.and(beneath).map_err(|e| e.context(relaying()))?;
            return closed(relayed.kind_ctx(Kind::Tunnel, relaying)?);
        }
        Err(stream) => stream,
    };
    // --tls: shake hands with the destination through the tunnel. The bytes that came with the
    // proxy's reply are the start of the destination's TLS stream.
    let inner = match target_tls {
        Some((tls_config, name)) => {
            let mut prefixed = Prefixed {
                prefix: std::io::Cursor::new(leftover.as_slice()),
                stream: &mut stream,
            };
            let peer = match via.strip_prefix("via ") {
                Some(proxy) => format!("{} through {proxy}", config.target),
                None => config.target.to_string(),
            };
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
    let (socket, mut sessions, pumps) = stream
        .into_bottom_nonblocking()
        .kind_ctx(Kind::Tunnel, relaying)?;
    // With --tls the leftover went into the destination's TLS session, not to stdout.
    let first = if inner.is_some() {
        &[][..]
    } else {
        &leftover[..]
    };
    // Every TLS session of the route, and the destination's innermost; none: a plain socket
    // (TCP, or the socket pair an HTTP/2 hop's thread serves).
    sessions.extend(inner);
    let relayed = match (socket, sessions.len()) {
        (transport::stream::Socket::Tcp(tcp), 0) => {
            relay_stdio(&mut mio::net::TcpStream::from_std(tcp), first, opts)
        }
        (transport::stream::Socket::Unix(pair), 0) => {
            relay_stdio(&mut mio::net::UnixStream::from_std(pair), first, opts)
        }
        (socket, _) => relay_stdio(
            &mut transport::stream::Layers::new(socket, sessions)
                .kind_ctx(Kind::Tunnel, relaying)?,
            first,
            opts,
        ),
    };
    // An HTTP/2 hop's end (a reset, GOAWAY) says more than the relay's view of it.
    tunnel::finish(pumps).map_err(|e| e.context(relaying()))?;
    closed(relayed.kind_ctx(Kind::Tunnel, relaying)?)
}

/// Inlined: the plain tunnel runs it, and a function of its own would sit outside the code
/// `link/hot.ld` gathers.
#[inline(always)]
fn closed(stats: Stats) -> Result<(), Error> {
    info!(
        "tunnel closed: {} bytes sent, {} bytes received",
        stats.up, stats.down
    );
    Ok(())
}

/// While the proxy's reply is on its way: the handlers that give the caller's stdio flags back
/// on a signal, which the relay installs before it makes a pipe or socket on stdin or stdout
/// non-blocking (some 60 system calls, the most of any step between the reply and the first
/// tunnel byte). Only a shortcut: the relay installs them itself when this did not run.
fn prepare_stdio() {
    use sys::splice::{FdKind, kind};
    let polled = |fd: std::os::fd::BorrowedFd<'_>| kind(fd) != FdKind::Other;
    if polled(std::io::stdin().as_fd()) || polled(std::io::stdout().as_fd()) {
        sys::restore::install_early();
    }
}

/// The configuration and server name of one TLS leg. Failures here come from the user's files
/// and options, before anything is sent: usage errors.
pub(crate) fn tls_leg(
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
    tunnel: &mut T,
    first: &[u8],
    opts: relay::Options,
) -> Result<Stats, RelayError> {
    let (stdin, stdout) = (std::io::stdin(), std::io::stdout());
    relay::relay(stdin.as_fd(), stdout.as_fd(), tunnel, first, opts)
}

/// Reads `prefix` first, then the stream: for a handshake whose first bytes were already read.
pub(crate) struct Prefixed<'a, S> {
    pub(crate) prefix: std::io::Cursor<&'a [u8]>,
    pub(crate) stream: &'a mut S,
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
