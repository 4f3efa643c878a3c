//! Absolute-form requests on a `-D` port (`GET http://host/path HTTP/1.1`). Where the
//! destination's route ends in an HTTP proxy, each request goes to that proxy as it came, in
//! absolute-form (RFC 9112 §3.2.2), with gimlet's `Proxy-Authorization` in place of the
//! client's: any 407 is answered here (Basic, Digest, NTLM on the kept connection), so the
//! client never sees the proxy's challenge while gimlet has credentials, and gets gimlet's own
//! 407 when it has none. On a direct route, or one ending in a SOCKS proxy, the request goes
//! to its origin in origin-form ([`http1`]) through the tunnel the route opens. Either way the
//! response comes back with its body framed as RFC 9112 says. Kept connections both ways:
//! the client's (pipelined requests included) until it closes or stays idle for
//! [`KEEP_ALIVE`], the upstream's while the next request goes the same way (to the same
//! origin, or through the same proxy to any origin).
//!
//! Why on the worker thread, blocking: an HTTP exchange is request, then response, then the
//! next request; on a worker that is a loop of reads and writes with deadlines, and every
//! route, scheme and reconnect of [`establish`] is reused as it is. On the loop it would be a
//! second state machine beside the byte relay, for the same result. The cost is a worker per
//! client connection while it is busy or idle-kept, bounded by [`KEEP_ALIVE`]: browsers open
//! a handful of connections per proxy, and a request that finds every worker busy waits in the
//! queue, it is not refused. A CONNECT that follows on a kept connection becomes an ordinary
//! tunnel on the loop.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use rustls::{ClientConnection, StreamOwned};

use super::dynamic::{Dynamic, Outcome, failure_of, is_self, route_for};
use super::front::{self, Ask, Failure, Front, Protocol, Step};
use super::http1::{self, Body, Framing};
use crate::auth::{self, Authenticator, NoScheme, Scheme, negotiate};
use crate::config::Endpoint;
use crate::credentials::Secret;
use crate::error::{Error, Kind};
use crate::handshake;
use crate::transport::stream::{Pumps, Socket, Stream};
use crate::tunnel::HttpProxy;
use crate::{Upstream, establish};
use std::os::unix::net::UnixStream;

/// How long a kept client connection may stay silent between requests.
pub const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// How long a read or write may wait for the peer in the middle of a message.
const STALL: Duration = Duration::from_secs(300);
/// The largest request body held back so that it can be sent again (after a 407, or on a new
/// connection when the kept one was found closed). A longer one goes out as it comes; should
/// the proxy then ask for credentials, the client gets a 502 saying so (the next request on
/// the connection carries them from the start with Basic).
pub const MAX_REPLAY: usize = 1024 * 1024;
/// The largest 407 body skipped to keep the proxy's connection; past it gimlet reconnects.
const MAX_DRAIN: u64 = 1024 * 1024;
/// Most authentication rounds for one request: NTLM needs two, a stale Digest nonce one more.
const MAX_ROUNDS: usize = 4;

/// The upstream connection: a socket, or TLS to an `https://` proxy on it, or a tunnel through
/// an HTTP/2 hop (its socket pair, and what serves the far end).
enum Conn {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
    Bridged { socket: UnixStream, _pumps: Pumps },
}

impl Conn {
    fn set_timeouts(&self, t: Duration) {
        let _ = match self {
            Conn::Plain(s) => s
                .set_read_timeout(Some(t))
                .and(s.set_write_timeout(Some(t))),
            Conn::Tls(s) => s
                .sock
                .set_read_timeout(Some(t))
                .and(s.sock.set_write_timeout(Some(t))),
            Conn::Bridged { socket: s, .. } => s
                .set_read_timeout(Some(t))
                .and(s.set_write_timeout(Some(t))),
        };
    }

    /// The connection a route's handshake left, ready for blocking reads with [`STALL`].
    fn from_stream(stream: Stream, what: &Endpoint) -> Result<Conn, Error> {
        let (socket, mut sessions, pumps) = stream
            .into_bottom()
            .map_err(|e| Error::new(Kind::Tunnel, e).context(format!("opening {what}")))?;
        let conn = match (socket, sessions.len()) {
            (Socket::Tcp(tcp), 0) => Conn::Plain(tcp),
            (Socket::Tcp(tcp), 1) => Conn::Tls(Box::new(StreamOwned::new(sessions.remove(0), tcp))),
            (Socket::Unix(socket), 0) => Conn::Bridged {
                socket,
                _pumps: pumps,
            },
            (_, n) => {
                return Err(Error::msg(
                    Kind::Tunnel,
                    format_args!(
                        "{what}: {n} TLS sessions on this tunnel are not supported for HTTP requests"
                    ),
                ));
            }
        };
        conn.set_timeouts(STALL);
        Ok(conn)
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
            Conn::Bridged { socket: s, .. } => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
            Conn::Bridged { socket: s, .. } => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
            Conn::Bridged { socket: s, .. } => s.flush(),
        }
    }
}

/// A kept upstream connection.
struct Kept<'d> {
    /// The origin a tunnel reaches; `None` for the route's HTTP proxy, which takes requests
    /// for any origin.
    origin: Option<Endpoint>,
    upstream: &'d Upstream,
    /// Set when requests go to the proxy in absolute-form.
    proxy: Option<HttpProxy>,
    conn: Conn,
    /// Bytes read from upstream and not yet passed on.
    buf: Vec<u8>,
    via: String,
    /// Basic credentials the proxy accepted on this connection: sent with each next request.
    basic: Option<Secret>,
    /// A response came on this connection already: it may have been closed while idle.
    used: bool,
}

impl Kept<'_> {
    /// A new connection the same way, in place of one the other side closed.
    fn reconnect(&mut self, target: &Endpoint) -> Result<(), Failed> {
        let (stream, buf) = match &self.origin {
            None => (self.upstream.reach_last(), Vec::new()),
            Some(_) => match establish(self.upstream, target) {
                Ok(e) => (Ok(e.stream), e.leftover),
                Err(e) => (Err(e), Vec::new()),
            },
        };
        let conn = stream
            .and_then(|s| Conn::from_stream(s, target))
            .map_err(|e| format!("reconnecting {}: {e:#}", self.via))?;
        crate::diag::info!("reconnected to {} for the next request", self.via);
        (self.conn, self.buf, self.used) = (conn, buf, false);
        Ok(())
    }

    /// Whether a request for `target` along `upstream` may use this connection.
    fn serves(&self, target: &Endpoint, upstream: &Upstream) -> bool {
        match &self.origin {
            Some(origin) => origin == target,
            None => std::ptr::eq(self.upstream, upstream),
        }
    }
}

/// Why a request failed, and how the client is told when nothing was answered yet.
struct Failed {
    failure: Failure,
    why: String,
}

impl From<String> for Failed {
    fn from(why: String) -> Failed {
        Failed {
            failure: Failure::General,
            why,
        }
    }
}

/// Serves `first` and the requests after it on `client`, until the client closes, stays idle,
/// or asks for a CONNECT tunnel (handed back as [`Outcome::Tunnel`]). Each request adds one
/// line to the log: what, which way, the status, bytes each way, how long.
pub fn serve(
    mut client: &TcpStream,
    first: Ask,
    local: SocketAddr,
    d: &Dynamic,
) -> Result<Outcome, Error> {
    let mut lines = Vec::new();
    let mut kept: Option<Kept> = None;
    let mut ask = first;
    let _ = client.set_read_timeout(Some(STALL));
    let _ = client.set_write_timeout(Some(STALL));
    loop {
        let Some(request) = ask.http.take() else {
            return Err(Error::msg(
                Kind::Protocol,
                "an HTTP request without its head",
            ));
        };
        let mut pending = std::mem::take(&mut ask.leftover);
        let started = Instant::now();
        let what = format!(
            "{} {}",
            request.method,
            http1::absolute_uri(&ask.target, &request.path)
        );
        let (upstream, via) = route_for(&ask.target.host, d);
        let done = |status: &str, sent: u64, received: u64| {
            super::dynamic::request_line(&what, &via, status, sent, received, started)
        };
        if is_self(&ask.target, local) {
            let why = format!("{} is this -D port itself (a loop)", ask.target);
            let _ = client.write_all(&front::failure(ask.protocol, Failure::NotAllowed, &why));
            lines.push(done(&format!("403 (refused: {why})"), 0, 0));
            return Ok(Outcome::Done { lines });
        }
        if kept
            .as_ref()
            .is_some_and(|k| !k.serves(&ask.target, upstream))
        {
            kept = None;
        }
        let k = match &mut kept {
            Some(k) => k,
            None => match open(&ask.target, upstream, via.clone()) {
                Ok(k) => kept.insert(k),
                Err(e) => {
                    let why = format!("{e:#}");
                    let failure = failure_of(&e);
                    let answer = front::failure(ask.protocol, failure, &why);
                    let _ = client.write_all(&answer);
                    lines.push(done(
                        &format!("{} ({why})", front::status_of(&answer)),
                        0,
                        0,
                    ));
                    return Ok(Outcome::Done { lines });
                }
            },
        };
        let mut answered = false;
        let result = exchange(
            client,
            k,
            &ask.target,
            &request,
            &mut pending,
            &mut answered,
        );
        let ended = match result {
            Ok(ended) => ended,
            Err(Failed { failure, why }) => {
                let mut status = "failed".to_owned();
                if !answered {
                    // Nothing of a response went out yet: the client gets gimlet's own answer
                    // (a 502, or a 407 when the proxy wants credentials gimlet lacks).
                    let answer = front::failure(ask.protocol, failure, &why);
                    let _ = client.write_all(&answer);
                    status = front::status_of(&answer);
                }
                lines.push(done(&format!("{status} ({why})"), 0, 0));
                return Ok(Outcome::Done { lines });
            }
        };
        lines.push(done(&ended.status.to_string(), ended.sent, ended.received));
        if !ended.upstream_keeps {
            kept = None;
        }
        if ended.close_client {
            let _ = client.shutdown(Shutdown::Write);
            return Ok(Outcome::Done { lines });
        }
        // The next request: pipelined bytes first, then what the client sends.
        match next_request(client, pending, d) {
            Ok(Some(Step::Ask { ask: next, .. })) if next.protocol == Protocol::HttpConnect => {
                drop(kept);
                return Ok(match super::dynamic::tunnel(client, next, local, d) {
                    Outcome::Tunnel(mut served) => {
                        served.lines = lines;
                        Outcome::Tunnel(served)
                    }
                    Outcome::Done { lines: more } => {
                        lines.extend(more);
                        Outcome::Done { lines }
                    }
                });
            }
            Ok(Some(Step::Ask { ask: next, .. })) => ask = next,
            Ok(Some(Step::Refuse { send, why })) => {
                let _ = client.write_all(&send);
                lines.push(format!("HTTP request: {} ({why})", front::status_of(&send)));
                return Ok(Outcome::Done { lines });
            }
            Ok(_) => return Ok(Outcome::Done { lines }),
            Err(e) => {
                lines.push(format!("HTTP request: failed ({e})"));
                return Ok(Outcome::Done { lines });
            }
        }
    }
}

/// Opens the way to `target` along `upstream`: a connection to the route's HTTP proxy for
/// absolute-form requests, else a tunnel to the origin (direct, or through SOCKS).
fn open<'d>(target: &Endpoint, upstream: &'d Upstream, via: String) -> Result<Kept<'d>, Error> {
    let proxy = upstream.http_proxy();
    let (stream, buf, origin) = match &proxy {
        Some(p) => {
            let stream = upstream
                .reach_last()
                .map_err(|e| e.context(format!("forwarding a request for {target}")))?;
            crate::diag::info!("connected to proxy {} for absolute-form requests", p.name);
            (stream, Vec::new(), None)
        }
        None => {
            let established = establish(upstream, target)?;
            (
                established.stream,
                established.leftover,
                Some(target.clone()),
            )
        }
    };
    Ok(Kept {
        origin,
        upstream,
        conn: Conn::from_stream(stream, target)?,
        proxy,
        buf,
        via,
        basic: None,
        used: false,
    })
}

struct Ended {
    status: u16,
    sent: u64,
    received: u64,
    close_client: bool,
    upstream_keeps: bool,
}

/// A response head: status, minor version, reason, fields.
type Response = (u16, u8, Vec<u8>, Vec<http1::Field>);

/// One request and its response. `pending` holds client bytes already read; on return, what
/// follows the request's body.
fn exchange(
    mut client: &TcpStream,
    k: &mut Kept,
    target: &Endpoint,
    request: &front::HttpRequest,
    pending: &mut Vec<u8>,
    answered: &mut bool,
) -> Result<Ended, Failed> {
    if http1_expects_continue(&request.fields) && request.framing != Framing::None {
        // The next hop never sees the Expect field: gimlet says go on itself.
        client
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .map_err(|e| format!("answering the client: {e}"))?;
    }
    let mut body = Body::new(request.framing);
    // The request may have to go again (a proxy's 407, a kept connection found closed): its
    // body is held (up to MAX_REPLAY) before anything is sent.
    let mut held = Vec::new();
    hold_body(client, pending, &mut body, &mut held)?;
    let (response, sent) = send_request(client, k, target, request, pending, body, &held)?;
    let (status, minor, reason, fields) = response;
    let head_request = request.method.eq_ignore_ascii_case("HEAD");
    let framing = http1::response_framing(status, head_request, &fields)
        .map_err(|e| format!("response from {}: {e}", k.via))?;
    let client_keeps = http1::keeps_alive(request.minor, &request.fields);
    let close_client = !client_keeps || framing == Framing::Close;
    *answered = true;
    client
        .write_all(&http1::client_response(
            status,
            &reason,
            &fields,
            close_client,
        ))
        .map_err(|e| format!("answering the client: {e}"))?;
    let mut body = Body::new(framing);
    let mut received = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if !k.buf.is_empty() {
            let n = body
                .feed(&k.buf)
                .map_err(|e| format!("response body: {e}"))?;
            client
                .write_all(&k.buf[..n])
                .map_err(|e| format!("answering the client: {e}"))?;
            k.buf.drain(..n);
            received += n as u64;
        }
        if body.done() {
            break;
        }
        match k.conn.read(&mut buf) {
            Ok(0) if body.until_close() => break,
            Ok(0) => {
                return Err(Failed::from(
                    "the origin closed in the middle of its response body".to_owned(),
                ));
            }
            Ok(n) => k.buf.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if body.until_close() && e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(Failed::from(format!("reading the response: {e}"))),
        }
    }
    let upstream_keeps =
        framing != Framing::Close && http1::keeps_alive(minor, &fields) && k.buf.is_empty();
    Ok(Ended {
        status,
        sent,
        received,
        close_client,
        upstream_keeps,
    })
}

/// Reads the request body into `held` until it ends or passes [`MAX_REPLAY`].
fn hold_body(
    mut client: &TcpStream,
    pending: &mut Vec<u8>,
    body: &mut Body,
    held: &mut Vec<u8>,
) -> Result<(), Failed> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if !pending.is_empty() {
            let n = body
                .feed(pending)
                .map_err(|e| format!("request body: {e}"))?;
            held.extend_from_slice(&pending[..n]);
            pending.drain(..n);
        }
        if body.done() || held.len() > MAX_REPLAY {
            return Ok(());
        }
        match client.read(&mut buf) {
            Ok(0) => {
                return Err(Failed::from(
                    "the client closed in the middle of its request body".to_owned(),
                ));
            }
            Ok(n) => pending.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Failed::from(format!("reading the request body: {e}"))),
        }
    }
}

/// Sends the request (`held` first, then the rest of the body as it comes) and reads the
/// final response head; 1xx heads pass on to the client (RFC 9110 §15.2). A proxy's 407 is
/// answered here with gimlet's credentials and the request sent again, on the same
/// connection when the proxy keeps it. A kept connection the other side closed while idle
/// (it fails before a byte of the response) is replaced once and the request sent again,
/// when all of it is at hand (RFC 9112 §9.3.1: nothing of it was answered, so it was not
/// acted on). Returns the head and the body bytes sent.
fn send_request(
    mut client: &TcpStream,
    k: &mut Kept,
    target: &Endpoint,
    request: &front::HttpRequest,
    pending: &mut Vec<u8>,
    mut body: Body,
    held: &[u8],
) -> Result<(Response, u64), Failed> {
    let uri = http1::absolute_uri(target, &request.path);
    let mut auth: Option<Authenticator> = None;
    let mut kerberos: Option<negotiate::Setup> = None;
    let mut authorization = k.basic.clone();
    let mut buf = vec![0u8; 64 * 1024];
    // The whole request is at hand to send again: its body was held whole, or it has none.
    let whole = body.done();
    let mut retried = false;
    let mut rounds = 0;
    loop {
        if rounds > MAX_ROUNDS {
            return Err(Failed {
                failure: Failure::Auth,
                why: format!(
                    "proxy {} kept asking for authentication after {MAX_ROUNDS} rounds",
                    k.proxy.as_ref().map_or("", |p| p.name.as_str())
                ),
            });
        }
        let stale_ok = k.used && whole && !retried;
        let head = match &k.proxy {
            Some(p) => http1::proxy_request(
                &request.method,
                target,
                &request.path,
                &request.fields,
                authorization.as_ref(),
                &p.headers,
            ),
            None => zeroize::Zeroizing::new(http1::origin_request(
                &request.method,
                target,
                &request.path,
                &request.fields,
            )),
        };
        let written = k
            .conn
            .write_all(&head)
            .and_then(|()| k.conn.write_all(held));
        if let Err(e) = written {
            if stale_ok && gone(&e) {
                retried = true;
                k.reconnect(target)?;
                continue;
            }
            return Err(Failed::from(format!(
                "sending the request to {}: {e}",
                k.via
            )));
        }
        let mut sent = held.len() as u64;
        // The body past what was held: as it comes.
        loop {
            if !pending.is_empty() && !body.done() {
                let n = body
                    .feed(pending)
                    .map_err(|e| format!("request body: {e}"))?;
                k.conn
                    .write_all(&pending[..n])
                    .map_err(|e| format!("sending the request body to {}: {e}", k.via))?;
                pending.drain(..n);
                sent += n as u64;
            }
            if body.done() {
                break;
            }
            match client.read(&mut buf) {
                Ok(0) => {
                    return Err(Failed::from(
                        "the client closed in the middle of its request body".to_owned(),
                    ));
                }
                Ok(n) => pending.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Failed::from(format!("reading the request body: {e}"))),
            }
        }
        let response = match read_final_head(client, k, &mut buf) {
            Ok(r) => r,
            Err((true, _)) if stale_ok => {
                retried = true;
                k.reconnect(target)?;
                continue;
            }
            Err((_, why)) => return Err(Failed::from(why)),
        };
        k.used = true;
        let Some(proxy) = k.proxy.as_ref().filter(|_| response.0 == 407) else {
            if let Some(a) = auth.as_mut().filter(|a| a.scheme() == Scheme::Negotiate) {
                // Mutual authentication: the proxy's final token must verify (RFC 4559 §5).
                a.finish(&response.3).map_err(|e| Failed {
                    failure: Failure::Auth,
                    why: format!(
                        "authenticating to proxy {} with Negotiate: {e:#}: {}",
                        k.proxy.as_ref().map_or("", |p| p.name.as_str()),
                        status_line(&response)
                    ),
                })?;
            }
            if let Some(a) = auth.as_ref().filter(|a| a.scheme() == Scheme::Basic) {
                crate::diag::debug!("keeping Basic credentials for user \"{}\"", a.user());
                k.basic = authorization;
            }
            return Ok((response, sent));
        };
        rounds += 1;
        let kerberos =
            kerberos.get_or_insert_with(|| negotiate::Setup::system(proxy.service.clone()));
        let value = answer_407(proxy, kerberos, &mut auth, &response, &request.method, &uri)?;
        let name = proxy.name.clone();
        if held.len() as u64 != sent {
            return Err(Failed::from(format!(
                "proxy {name} asked for credentials after a request body over {} KiB had gone out, which gimlet cannot send twice: {}",
                MAX_REPLAY >> 10,
                status_line(&response)
            )));
        }
        authorization = Some(value);
        k.basic = None;
        // Again on this connection when the proxy keeps it and its 407 body can be skipped
        // exactly; else on a new one. NTLM's answer must go back on the connection that
        // carried its challenge.
        if !skip_body(k, &response, &mut buf) {
            if auth
                .as_ref()
                .is_some_and(Authenticator::bound_to_connection)
            {
                return Err(Failed {
                    failure: Failure::Auth,
                    why: format!(
                        "proxy {name} closed the connection in the middle of {} authentication: {}",
                        auth.as_ref().map_or(Scheme::Ntlm, Authenticator::scheme),
                        status_line(&response)
                    ),
                });
            }
            k.reconnect(target)?;
        }
        body = Body::new(request.framing);
        let _ = body.feed(held);
    }
}

/// Whether a write failed because the other side had closed.
fn gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset | io::ErrorKind::NotConnected
    )
}

/// Reads the final response head, passing 1xx heads on to the client. The error's flag says
/// the connection ended before a single byte of a response: a kept connection closed idle.
fn read_final_head(
    mut client: &TcpStream,
    k: &mut Kept,
    buf: &mut [u8],
) -> Result<Response, (bool, String)> {
    let mut first = true;
    loop {
        let nothing = first && k.buf.is_empty();
        first = false;
        let (status, minor, reason, fields, used) = match read_response_head(k, buf) {
            Ok(head) => head,
            Err(why) => return Err((nothing && k.buf.is_empty(), why)),
        };
        k.buf.drain(..used);
        if status == 101 {
            return Err((
                false,
                "the origin switched protocols, which was not asked for".to_owned(),
            ));
        }
        if (100..200).contains(&status) {
            client
                .write_all(&http1::client_response(status, &reason, &fields, false))
                .map_err(|e| (false, format!("answering the client: {e}")))?;
            continue;
        }
        return Ok((status, minor, reason, fields));
    }
}

/// The status line of a response head, printable, quoted: for messages.
fn status_line(r: &Response) -> String {
    let line = format!("HTTP/1.{} {} {}", r.1, r.0, String::from_utf8_lossy(&r.2));
    format!("{:?}", crate::handshake::printable(line.as_bytes()))
}

/// The `Proxy-Authorization` that answers a proxy's 407: the first of a scheme gimlet picks
/// among those offered, or the next of the one under way. Without credentials, or when the
/// proxy rejects them, the client gets gimlet's own 407 saying why.
fn answer_407(
    proxy: &HttpProxy,
    kerberos: &mut negotiate::Setup,
    auth: &mut Option<Authenticator>,
    response: &Response,
    method: &str,
    uri: &str,
) -> Result<Secret, Failed> {
    let name = &proxy.name;
    let signed = auth::Target { method, uri };
    let challenges = auth::parse_challenges(
        response
            .3
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("Proxy-Authenticate"))
            .map(|(_, v)| v.as_slice()),
    );
    let offered = challenges
        .iter()
        .map(|c| c.scheme.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let failed = |why: String| Failed {
        failure: Failure::Auth,
        why,
    };
    if let Some(a) = auth {
        return a
            .next(&challenges, &signed)
            .map_err(|e| {
                failed(format!(
                    "authenticating to proxy {name} with {}: {e:#}",
                    a.scheme()
                ))
            })?
            .ok_or_else(|| {
                failed(format!(
                    "proxy {name} rejected the {} credentials for user \"{}\"{}: {}",
                    a.scheme(),
                    a.user(),
                    a.source_phrase(),
                    status_line(response)
                ))
            });
    }
    // Negotiate first, with the user's Kerberos ticket, as for a CONNECT tunnel; without a
    // ticket the other schemes are tried and the message says why Negotiate was not.
    let mut kerberos_failure = None;
    let started = handshake::kerberos(
        &challenges,
        proxy.scheme,
        Some(kerberos),
        &mut kerberos_failure,
    )
    .map_err(|e| {
        failed(format!(
            "authenticating to proxy {name} with Negotiate: {e:#}: {}",
            status_line(response)
        ))
    })?;
    if let Some((a, value)) = started {
        crate::diag::info!(
            "proxy {name} asks for authentication (offers {offered}); answering with Negotiate as {}",
            a.user()
        );
        *auth = Some(a);
        return Ok(value);
    }
    let not_kerberos = handshake::without_kerberos(&kerberos_failure);
    let usable: Vec<auth::Challenge> = challenges
        .iter()
        .filter(|c| !c.is(Scheme::Negotiate))
        .cloned()
        .collect();
    let (scheme, challenge) = auth::choose(&usable, proxy.scheme).map_err(|none| {
        failed(match none {
            NoScheme::Offered(_) => format!(
                "proxy {name} requires authentication with {offered}, and gimlet speaks {}: {}{not_kerberos}",
                match proxy.scheme {
                    Some(s) => format!("{s} (forced by --proxy-auth)"),
                    None => "Negotiate, Digest, NTLM or Basic".to_owned(),
                },
                status_line(response)
            ),
            NoScheme::Digest(why) => format!(
                "proxy {name} offers Digest only in a form gimlet cannot answer: {why}: {}{not_kerberos}",
                status_line(response)
            ),
        })
    })?;
    let Some(credentials) = proxy.credentials.clone() else {
        return Err(failed(format!(
            "proxy {name} requires authentication (offers {offered}): {}; gimlet has no credentials for it (give -U, --proxy-auth-file, {} or --netrc){not_kerberos}",
            status_line(response),
            crate::config::AUTH_ENV
        )));
    };
    crate::diag::info!(
        "proxy {name} asks for authentication (offers {offered}); answering with {scheme} for user \"{}\"",
        credentials.user
    );
    let (a, value) =
        Authenticator::start(scheme, credentials, Some(challenge), &signed).map_err(|e| {
            failed(format!(
                "authenticating to proxy {name} with {scheme}: {e:#}"
            ))
        })?;
    *auth = Some(a);
    Ok(value)
}

/// Skips a 407's body when the proxy keeps the connection; false when the connection cannot
/// be used again (closing, close-delimited, too long, or it failed).
fn skip_body(k: &mut Kept, response: &Response, buf: &mut [u8]) -> bool {
    let (status, minor, _, fields) = response;
    if !http1::keeps_alive(*minor, fields) {
        return false;
    }
    let framing = match http1::response_framing(*status, false, fields) {
        Ok(Framing::Length(n)) if n > MAX_DRAIN => return false,
        Ok(Framing::Close) | Err(_) => return false,
        Ok(f) => f,
    };
    let mut body = Body::new(framing);
    let mut skipped = 0u64;
    loop {
        if !k.buf.is_empty() {
            let Ok(n) = body.feed(&k.buf) else {
                return false;
            };
            k.buf.drain(..n);
            skipped += n as u64;
        }
        if body.done() {
            return true;
        }
        if skipped > MAX_DRAIN {
            return false;
        }
        match k.conn.read(buf) {
            Ok(0) => return false,
            Ok(n) => k.buf.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

fn http1_expects_continue(fields: &[http1::Field]) -> bool {
    fields.iter().any(|(n, v)| {
        n.eq_ignore_ascii_case("Expect") && v.trim_ascii().eq_ignore_ascii_case(b"100-continue")
    })
}

type Head = (u16, u8, Vec<u8>, Vec<http1::Field>, usize);

/// Reads until `k.buf` holds a whole response head; returns it and its length.
fn read_response_head(k: &mut Kept, buf: &mut [u8]) -> Result<Head, String> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&k.buf) {
            Ok(httparse::Status::Complete(used)) => {
                let fields = resp
                    .headers
                    .iter()
                    .map(|h| (h.name.to_owned(), h.value.to_vec()))
                    .collect();
                return Ok((
                    resp.code.unwrap_or(0),
                    resp.version.unwrap_or(1),
                    resp.reason.unwrap_or("").as_bytes().to_vec(),
                    fields,
                    used,
                ));
            }
            Ok(httparse::Status::Partial) if k.buf.len() > front::MAX_HEAD * 4 => {
                return Err("the origin's response head is too long".into());
            }
            Ok(httparse::Status::Partial) => {}
            Err(e) => return Err(format!("the origin's response head is malformed: {e}")),
        }
        match k.conn.read(buf) {
            Ok(0) => return Err("the origin closed before its response".into()),
            Ok(n) => k.buf.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("waiting for the response: {e}")),
        }
    }
}

/// The client's next request on a kept connection; `None` when it closes or stays idle for
/// [`KEEP_ALIVE`].
fn next_request(
    mut client: &TcpStream,
    pending: Vec<u8>,
    d: &Dynamic,
) -> Result<Option<Step>, String> {
    let mut front = Front::http_only(d.client_auth.clone());
    let mut step = front.feed(&pending);
    let deadline = Instant::now() + KEEP_ALIVE;
    let mut buf = [0u8; 4096];
    loop {
        match step {
            Step::More { .. } => {}
            other => return Ok(Some(other)),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        let _ = client.set_read_timeout(Some(left));
        let n = match client.read(&mut buf) {
            Ok(0) => return Ok(None),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(format!("reading the next request: {e}")),
        };
        let _ = client.set_read_timeout(Some(STALL));
        step = front.feed(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::negotiate::fake::{self, FakeProvider};
    use crate::credentials::Credentials;

    fn proxy(credentials: Option<Credentials>, scheme: Option<Scheme>) -> HttpProxy {
        HttpProxy {
            name: "proxy.test:3128".into(),
            credentials,
            scheme,
            headers: Vec::new(),
            service: negotiate::service_name(None, "proxy.test"),
        }
    }

    fn challenge(schemes: &[&str]) -> Response {
        let fields = schemes
            .iter()
            .map(|s| ("Proxy-Authenticate".to_owned(), s.as_bytes().to_vec()))
            .collect();
        (407, 1, b"Proxy Authentication Required".to_vec(), fields)
    }

    fn kerberos(provider: FakeProvider) -> negotiate::Setup {
        negotiate::Setup {
            service: negotiate::service_name(None, "proxy.test"),
            provider: Box::new(provider),
        }
    }

    fn answer(
        p: &HttpProxy,
        setup: &mut negotiate::Setup,
        auth: &mut Option<Authenticator>,
        schemes: &[&str],
    ) -> Result<String, String> {
        answer_407(p, setup, auth, &challenge(schemes), "GET", "http://a.test/")
            .map(|s| s.expose().to_owned())
            .map_err(|f| f.why)
    }

    #[test]
    fn absolute_form_requests_answer_negotiate_with_the_ticket() {
        // Regression: a -D port forwarding to a proxy that offers only Negotiate answered the
        // client with gimlet's own 407 instead of using the user's Kerberos ticket.
        let provider = FakeProvider::new(
            fake::ticket(),
            vec![
                (None, fake::step(b"first", false)),
                (Some(b"more".to_vec()), fake::step(b"second", true)),
            ],
        );
        let targets = provider.targets.clone();
        let mut setup = kerberos(provider);
        let mut auth = None;
        let p = proxy(None, None);
        assert_eq!(
            answer(&p, &mut setup, &mut auth, &["Negotiate"]).unwrap(),
            "Negotiate Zmlyc3Q="
        );
        assert_eq!(*targets.lock().unwrap(), ["HTTP@proxy.test"]);
        // A continuation token gets the next leg, on the same connection.
        assert_eq!(
            answer(&p, &mut setup, &mut auth, &["Negotiate bW9yZQ=="]).unwrap(),
            "Negotiate c2Vjb25k"
        );
        assert!(auth.as_ref().unwrap().bound_to_connection());
    }

    #[test]
    fn without_a_ticket_the_password_schemes_answer_and_say_why_not_negotiate() {
        let no_ticket = || {
            kerberos(FakeProvider::new(
                Err(fake::error(fake::Problem::NoTicket, "")),
                Vec::new(),
            ))
        };
        let alice = || Some(Credentials::new("alice".into(), "pw".into()).unwrap());
        let mut auth = None;
        let value = answer(
            &proxy(alice(), None),
            &mut no_ticket(),
            &mut auth,
            &["Negotiate", "Basic realm=\"r\""],
        )
        .unwrap();
        assert!(value.starts_with("Basic "), "{value}");
        // Negotiate alone: the kinit hint reaches the log.
        let why = answer(
            &proxy(alice(), None),
            &mut no_ticket(),
            &mut None,
            &["Negotiate"],
        )
        .unwrap_err();
        assert!(
            why.contains("with Negotiate: no Kerberos ticket for LAB.TEST: run kinit"),
            "{why}"
        );
        // No credentials either: both reasons.
        let why = answer(
            &proxy(None, None),
            &mut no_ticket(),
            &mut None,
            &["Negotiate", "Basic realm=\"r\""],
        )
        .unwrap_err();
        assert!(why.contains("gimlet has no credentials"), "{why}");
        assert!(why.contains("not Negotiate: no Kerberos ticket"), "{why}");
        // --proxy-auth basic leaves the ticket alone.
        let provider = FakeProvider::new(fake::ticket(), Vec::new());
        let targets = provider.targets.clone();
        let value = answer(
            &proxy(alice(), Some(Scheme::Basic)),
            &mut kerberos(provider),
            &mut None,
            &["Negotiate", "Basic realm=\"r\""],
        )
        .unwrap();
        assert!(value.starts_with("Basic "), "{value}");
        assert!(targets.lock().unwrap().is_empty());
    }
}
