//! A `-D` port's requests. The client's request (the SOCKS greeting and request, or an HTTP
//! request head) is read on the engine's loop ([`Asking`], the sans-IO [`front`] fed from a
//! non-blocking socket, with `--connect-timeout` as its deadline); only once it is whole does
//! a worker thread take the client: it chooses the route for the destination (the exclusion
//! list sends it direct, else the port's proxy), establishes the tunnel with the pipe mode's
//! code, answers the client in its own protocol and hands the tunnel back to the loop (a `-D`
//! tunnel is a `-L` tunnel once it is open), or serves absolute-form requests ([`super::forward`]).
//!
//! Why the request on the loop: a client that connects and says nothing (or says it slowly)
//! then costs a socket and a few hundred bytes until its deadline, not a worker: 64 silent
//! clients used to hold every worker and shut the port for everyone.

use std::io::{self, Read, Write};
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

/// An open tunnel and how the log names it.
pub struct Served {
    pub established: Established<Stream>,
    /// `SOCKS5 host:22 via proxy p:3128`, for the line that says it is open.
    pub route: String,
    /// `SOCKS5 host:22`, `CONNECT host:443`.
    pub what: String,
    /// `direct`, `via proxy p:3128`.
    pub via: String,
    /// The answer given: `200` (CONNECT), `granted` (SOCKS).
    pub status: String,
    /// When the request was whole: its log line counts from here.
    pub started: Instant,
    /// Log lines of the HTTP requests served on this connection before its CONNECT.
    pub lines: Vec<String>,
}

impl Served {
    /// What the loop keeps to write that line after the tunnel is handed over.
    pub fn log(&self) -> TunnelLog {
        TunnelLog {
            what: self.what.clone(),
            via: self.via.clone(),
            status: self.status.clone(),
            started: self.started,
        }
    }
}

/// How a `-D` tunnel's closing line names it.
pub struct TunnelLog {
    pub what: String,
    pub via: String,
    pub status: String,
    pub started: Instant,
}

/// `SOCKS5 host:22 direct: granted, 10 bytes sent, 20 bytes received in 1.000s`.
pub fn tunnel_line(t: &TunnelLog, sent: u64, received: u64, failed: Option<&str>) -> String {
    let status = match failed {
        Some(why) => format!("{}, then failed ({why})", t.status),
        None => t.status.clone(),
    };
    request_line(&t.what, &t.via, &status, sent, received, t.started)
}

/// How a client's connection ends on the worker.
pub enum Outcome {
    /// A tunnel for the loop to relay.
    Tunnel(Box<Served>),
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

/// A `-D` client on the loop while its request comes in.
pub struct Asking {
    front: Front,
    /// When the whole request must be in (`--connect-timeout` from the accept).
    pub deadline: Instant,
    pub accepted: Instant,
}

/// What the loop does with an asking client after it was readable.
pub enum Heard {
    /// Wait for more.
    More,
    /// The request is whole: a worker takes it.
    Ask(front::Ask),
    /// Close the client; the log line says why (the answer, if any, is sent).
    Close(String),
}

impl Asking {
    pub fn new(d: &Dynamic) -> Asking {
        let now = Instant::now();
        Asking {
            front: Front::with_auth(d.client_auth.clone()),
            deadline: now + d.timeout,
            accepted: now,
        }
    }

    /// Reads what the client sent (until the socket would block), feeds it to the front and
    /// sends what the front says (a SOCKS5 method choice). Never blocks: a reply the socket
    /// does not take at once (a few bytes into an empty send buffer) closes the client.
    pub fn readable(&mut self, mut client: impl Read + Write) -> Heard {
        let mut buf = [0u8; 4096];
        loop {
            let n = match client.read(&mut buf) {
                Ok(0) => {
                    return Heard::Close(
                        self.closed("closed", "the client closed before its request was whole"),
                    );
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Heard::More,
                Err(e) => {
                    return Heard::Close(
                        self.closed("failed", &format!("reading the client's request: {e}")),
                    );
                }
            };
            let (send, outcome) = match self.front.feed(&buf[..n]) {
                Step::More { send } => (send, Heard::More),
                Step::Ask { send, ask } => (send, Heard::Ask(ask)),
                Step::Refuse { send, why } => {
                    let status = front::status_of(&send);
                    let _ = client.write(&send);
                    return Heard::Close(self.closed(&status, &format!("refused: {why}")));
                }
            };
            if !send.is_empty() && !matches!(client.write(&send), Ok(n) if n == send.len()) {
                return Heard::Close(
                    self.closed("failed", "the client does not take gimlet's answer"),
                );
            }
            if let Heard::Ask(_) = outcome {
                return outcome;
            }
        }
    }

    /// The deadline passed: the client is closed without an answer.
    pub fn expired(&self) -> String {
        self.closed(
            "closed",
            "no whole request within --connect-timeout (closed without an answer)",
        )
    }

    /// Too many clients are still asking: the oldest one goes.
    pub fn evicted(&self) -> String {
        self.closed(
            "closed",
            "too many clients were still sending their requests; this one, the oldest, was closed",
        )
    }

    fn closed(&self, status: &str, why: &str) -> String {
        format!(
            "request: {status} ({why}) in {:.3}s",
            self.accepted.elapsed().as_secs_f64()
        )
    }
}

/// Serves one client whose request `ask` is whole: `client` is a second handle on the loop's
/// socket (non-blocking, which is shared: it is made non-blocking again before returning,
/// whatever happens). `local` is the port's own address: requests for it are loops.
pub fn serve(
    client: TcpStream,
    ask: front::Ask,
    local: SocketAddr,
    d: &Dynamic,
) -> Result<Outcome, Error> {
    let result = client
        .set_nonblocking(false)
        .map_err(|e| Error::new(Kind::Tunnel, e).context("serving the client's request"))
        .and_then(|()| {
            let _ = client.set_write_timeout(Some(d.timeout));
            match ask.protocol {
                Protocol::HttpForward => super::forward::serve(&client, ask, local, d),
                _ => Ok(tunnel(&client, ask, local, d)),
            }
        });
    let _ = client.set_read_timeout(None);
    let _ = client.set_write_timeout(None);
    let _ = client.set_nonblocking(true);
    result
}

/// Opens the tunnel a SOCKS or CONNECT request asks for and answers the client; a failure is
/// answered in the client's protocol and logged in one line.
pub(super) fn tunnel(
    client: &TcpStream,
    ask: front::Ask,
    local: SocketAddr,
    d: &Dynamic,
) -> Outcome {
    let mut client = client;
    let started = Instant::now();
    let what = format!("{} {}", ask.protocol, ask.target);
    let (upstream, via) = route_for(&ask.target.host, d);
    let mut refused = |answer: Vec<u8>, why: &str| {
        let _ = client.write_all(&answer);
        let status = format!("{} ({why})", front::status_of(&answer));
        Outcome::Done {
            lines: vec![request_line(&what, &via, &status, 0, 0, started)],
        }
    };
    if is_self(&ask.target, local) {
        let why = format!("{} is this -D port itself (a loop)", ask.target);
        return refused(
            front::failure(ask.protocol, Failure::NotAllowed, &why),
            &format!("refused: {why}"),
        );
    }
    let route = format!("{what} {via}");
    let mut established = match establish(upstream, &ask.target) {
        Ok(e) => e,
        Err(e) => {
            let why = format!("{e:#}");
            return refused(front::failure(ask.protocol, failure_of(&e), &why), &why);
        }
    };
    let status = match ask.protocol {
        Protocol::HttpConnect => "200",
        _ => "granted",
    };
    let sent = send_all(client, &front::success(ask.protocol)).and_then(|()| {
        if ask.leftover.is_empty() {
            return Ok(());
        }
        established
            .stream
            .write_all(&ask.leftover)
            .and_then(|()| established.stream.flush())
            .map_err(|e| {
                Error::new(Kind::Tunnel, e)
                    .context(format!("{route}: sending the client's first bytes"))
            })
    });
    if let Err(e) = sent {
        let status = format!("{status}, then failed ({e:#})");
        return Outcome::Done {
            lines: vec![request_line(&what, &via, &status, 0, 0, started)],
        };
    }
    Outcome::Tunnel(Box::new(Served {
        established,
        route,
        what,
        via,
        status: status.to_owned(),
        started,
        lines: Vec::new(),
    }))
}

/// One request's log line (the loop puts the connection's number and client first):
/// `GET http://host/path via proxy p:3128: 200, 12 bytes sent, 345 bytes received in 0.012s`.
/// `what` and `status` hold nothing secret: targets come without userinfo, reasons from
/// errors that never carry credentials.
pub fn request_line(
    what: &str,
    route: &str,
    status: &str,
    sent: u64,
    received: u64,
    started: Instant,
) -> String {
    format!(
        "{what} {route}: {status}, {sent} bytes sent, {received} bytes received in {:.3}s",
        started.elapsed().as_secs_f64()
    )
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
