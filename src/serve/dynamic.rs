//! A `-D` port's handshake, run on a worker thread: read the client's request ([`front`], with
//! `--connect-timeout` as its deadline), choose the route for its destination (the exclusion
//! list sends it direct, else the port's proxy), establish the tunnel with the pipe mode's code,
//! answer the client in its own protocol and hand the tunnel back to the loop.
//!
//! Why on the worker and not on the loop: the request is a few dozen bytes that usually come in
//! one read, right after accept; reading it where the handshake with the proxy already runs
//! keeps the loop's sessions unchanged (a `-D` tunnel is a `-L` tunnel once it is open). The
//! cost is that a client that sends its request slowly holds a worker until its deadline.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::front::{self, Failure, Front, Protocol, Step};
use crate::config::{Endpoint, Host};
use crate::error::{Error, Kind};
use crate::handshake::Established;
use crate::transport::stream::Stream;
use crate::{Upstream, establish};

/// What a `-D` port needs per request.
pub struct Dynamic {
    /// The port's route (its proxy, or direct when it has none).
    pub proxied: Arc<Upstream>,
    /// For destinations the exclusion list matches.
    pub direct: Arc<Upstream>,
    /// `--noproxy`, else `no_proxy`/`NO_PROXY`.
    pub noproxy: Option<String>,
    /// `--allow` networks (loopback is always allowed).
    pub allow: Vec<(IpAddr, u8)>,
    /// How long a client has to send its whole request.
    pub timeout: Duration,
    /// `--client-auth-file`: the user name and password clients must give.
    pub client_auth: Option<Arc<front::ClientAuth>>,
}

/// An open tunnel and how the log names it: `SOCKS5 host:22 via proxy p:3128`.
pub struct Served {
    pub established: Established<Stream>,
    pub route: String,
    /// Log lines of the HTTP requests served on this connection before its CONNECT.
    pub lines: Vec<String>,
}

/// How a client's connection ends on the worker.
pub enum Outcome {
    /// A tunnel for the loop to relay.
    Tunnel(Served),
    /// Absolute-form requests were served and the connection is done: one log line each.
    Done { lines: Vec<String> },
}

/// Whether `peer` may use a port guarded by `allow`.
pub fn allowed(peer: IpAddr, allow: &[(IpAddr, u8)]) -> bool {
    let peer = match peer {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, IpAddr::V4),
        v4 => v4,
    };
    peer.is_loopback() || allow.iter().any(|&(net, bits)| in_net(peer, net, bits))
}

fn in_net(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// Serves one client: `client` is a second handle on the loop's socket (non-blocking, which
/// is shared: it is made non-blocking again before returning, whatever happens).
/// `local` is the port's own address: requests for it are loops.
pub fn serve(
    client: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    d: &Dynamic,
) -> Result<Outcome, Error> {
    if !allowed(peer.ip(), &d.allow) {
        return Err(Error::msg(
            Kind::Usage,
            format_args!(
                "refused {peer}: not loopback and not in --allow (closed without an answer)"
            ),
        ));
    }
    let deadline = Instant::now() + d.timeout;
    let result = client
        .set_nonblocking(false)
        .map_err(|e| Error::new(Kind::Tunnel, e).context("reading the client's request"))
        .and_then(|()| serve_blocking(&client, deadline, local, d));
    let _ = client.set_read_timeout(None);
    let _ = client.set_write_timeout(None);
    let _ = client.set_nonblocking(true);
    result
}

fn serve_blocking(
    mut client: &TcpStream,
    deadline: Instant,
    local: SocketAddr,
    d: &Dynamic,
) -> Result<Outcome, Error> {
    let reading = || "reading the client's request";
    let mut front = Front::with_auth(d.client_auth.clone());
    let mut buf = [0u8; 4096];
    let ask = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::msg(
                Kind::Unreachable,
                "reading the client's request: no whole request within --connect-timeout",
            ));
        }
        let _ = client.set_read_timeout(Some(left));
        let _ = client.set_write_timeout(Some(left));
        let n = match client.read(&mut buf) {
            Ok(0) => {
                return Err(Error::msg(
                    Kind::Tunnel,
                    "reading the client's request: the client closed before it was whole",
                ));
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(Error::msg(
                    Kind::Unreachable,
                    "reading the client's request: no whole request within --connect-timeout",
                ));
            }
            Err(e) => return Err(Error::new(Kind::Tunnel, e).context(reading())),
        };
        match front.feed(&buf[..n]) {
            Step::More { send } => send_all(client, &send)?,
            Step::Ask { send, ask } => {
                send_all(client, &send)?;
                break ask;
            }
            Step::Refuse { send, why } => {
                let _ = client.write_all(&send);
                return Err(Error::msg(
                    Kind::Protocol,
                    format_args!("refused the request: {why}"),
                ));
            }
        }
    };
    if ask.protocol == Protocol::HttpForward {
        return super::forward::serve(client, ask, local, d);
    }
    tunnel(client, ask, local, d).map(Outcome::Tunnel)
}

/// Opens the tunnel a SOCKS or CONNECT request asks for and answers the client.
pub(super) fn tunnel(
    client: &TcpStream,
    ask: front::Ask,
    local: SocketAddr,
    d: &Dynamic,
) -> Result<Served, Error> {
    let mut client = client;
    let what = format!("{} {}", ask.protocol, ask.target);
    if is_self(&ask.target, local) {
        let why = format!("{} is this -D port itself (a loop)", ask.target);
        let _ = client.write_all(&front::failure(ask.protocol, Failure::NotAllowed, &why));
        return Err(Error::msg(
            Kind::Refused,
            format_args!("{what}: refused: {why}"),
        ));
    }
    let (upstream, via) = route_for(&ask.target.host, d);
    let route = format!("{what} {via}");
    let mut established = match establish(upstream, &ask.target) {
        Ok(e) => e,
        Err(e) => {
            let failure = failure_of(&e);
            let why = format!("{e:#}");
            let _ = client.write_all(&front::failure(ask.protocol, failure, &why));
            return Err(e.context(format!("{route} ({} failure sent)", ask.protocol)));
        }
    };
    send_all(client, &front::success(ask.protocol))?;
    if !ask.leftover.is_empty() {
        established
            .stream
            .write_all(&ask.leftover)
            .and_then(|()| established.stream.flush())
            .map_err(|e| {
                Error::new(Kind::Tunnel, e)
                    .context(format!("{route}: sending the client's first bytes"))
            })?;
    }
    Ok(Served {
        established,
        route,
        lines: Vec::new(),
    })
}

fn send_all(mut client: &TcpStream, bytes: &[u8]) -> Result<(), Error> {
    if bytes.is_empty() {
        return Ok(());
    }
    client
        .write_all(bytes)
        .map_err(|e| Error::new(Kind::Tunnel, e).context("answering the client"))
}

/// The way to `host` and how the log says it.
pub(super) fn route_for<'a>(host: &Host, d: &'a Dynamic) -> (&'a Upstream, String) {
    let Some(name) = d.proxied.proxy_name() else {
        return (&d.direct, "direct".to_owned());
    };
    if let Some(list) = &d.noproxy {
        let shown = match host {
            Host::Ip(ip) => ip.to_string(),
            other => other.to_string(),
        };
        if let Some(entry) = crate::route::env::no_proxy_match(&shown, list) {
            return (&d.direct, format!("direct (no-proxy entry {entry})"));
        }
    }
    (&d.proxied, format!("via proxy {name}"))
}

/// Whether `target` is the `-D` port itself (`local`: the address it is bound to). Any spelling of an address of this machine counts: the
/// loopback and unspecified ranges, an IPv4-mapped IPv6 address (a dual-stack client can
/// write `::ffff:127.0.0.1`), and for a port bound to every interface, any address of this
/// machine.
pub(super) fn is_self(target: &Endpoint, local: SocketAddr) -> bool {
    if target.port != local.port() {
        return false;
    }
    match &target.host {
        Host::Ip(ip) => {
            let (ip, bound) = (ip.to_canonical(), local.ip().to_canonical());
            ip == bound
                || ip.is_loopback()
                || ip.is_unspecified()
                // Bound to every interface: any address of this machine reaches the port, and
                // binding succeeds only for an address of this machine (EADDRNOTAVAIL else).
                || (bound.is_unspecified()
                    && std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok())
        }
        Host::Name(n) => {
            let n = n.trim_end_matches('.').to_ascii_lowercase();
            n == "localhost" || n.ends_with(".localhost")
        }
        Host::Scoped(..) => false,
    }
}

/// How a failed handshake is told to the client.
pub(super) fn failure_of(e: &Error) -> Failure {
    let text = format!("{e:#}").to_ascii_lowercase();
    match e.kind() {
        Kind::Auth => Failure::Auth,
        _ if text.contains("timed out") || text.contains("timeout") => Failure::Timeout,
        Kind::Refused => Failure::Refused,
        Kind::Unreachable if text.contains("refused") => Failure::Refused,
        Kind::Unreachable => Failure::Unreachable,
        _ => Failure::General,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_and_allowed_networks_are_served() {
        let allow = [
            ("10.0.0.0".parse().unwrap(), 8),
            ("fd00::".parse().unwrap(), 8),
            ("192.0.2.7".parse().unwrap(), 32),
        ];
        let table = [
            ("127.0.0.1", true),
            ("127.9.9.9", true),
            ("::1", true),
            ("::ffff:127.0.0.1", true),
            ("10.200.1.1", true),
            ("::ffff:10.1.1.1", true),
            ("11.0.0.1", false),
            ("fd12::1", true),
            ("fe80::1", false),
            ("192.0.2.7", true),
            ("192.0.2.8", false),
        ];
        for (ip, want) in table {
            assert_eq!(allowed(ip.parse().unwrap(), &allow), want, "{ip}");
        }
        assert!(!allowed("10.0.0.1".parse().unwrap(), &[]));
        assert!(allowed(
            "10.0.0.1".parse().unwrap(),
            &[("0.0.0.0".parse().unwrap(), 0)]
        ));
    }

    #[test]
    fn the_port_itself_is_a_loop() {
        let local: SocketAddr = "127.0.0.1:1080".parse().unwrap();
        let ep = |h: &str, port| Endpoint {
            host: crate::config::parse_host(h).unwrap(),
            port,
        };
        assert!(is_self(&ep("127.0.0.1", 1080), local));
        assert!(is_self(&ep("localhost", 1080), local));
        assert!(is_self(&ep("[::1]", 1080), local));
        assert!(!is_self(&ep("127.0.0.1", 1081), local));
        assert!(!is_self(&ep("example.com", 1080), local));
        // Other spellings of this machine: IPv4-mapped, unspecified, a trailing dot.
        for me in [
            "[::ffff:127.0.0.1]",
            "[::ffff:7f00:2]",
            "0.0.0.0",
            "[::]",
            "localhost.",
            "a.localhost",
        ] {
            assert!(is_self(&ep(me, 1080), local), "{me}");
        }
        // A port bound to every interface is reached through any of them.
        let any: SocketAddr = "0.0.0.0:1080".parse().unwrap();
        assert!(is_self(&ep("127.0.0.1", 1080), any));
        assert!(
            !is_self(&ep("192.0.2.1", 1080), any),
            "TEST-NET-1 is no address here"
        );
    }
}
