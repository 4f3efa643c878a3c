//! Absolute-form requests on a `-D` port (`GET http://host/path HTTP/1.1`): each is sent to
//! its origin in origin-form ([`http1`]), through a tunnel opened along the route the
//! destination takes (direct, or CONNECT through the proxy with gimlet's credentials, any
//! scheme, any chain), and the response comes back with the body framed as RFC 9112 says.
//! Kept connections both ways: the client's (pipelined requests included) until it closes or
//! stays idle for [`KEEP_ALIVE`], the origin's while the next request goes to the same place.
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
use crate::config::Endpoint;
use crate::error::{Error, Kind};
use crate::establish;

/// How long a kept client connection may stay silent between requests.
pub const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// How long a read or write may wait for the peer in the middle of a message.
const STALL: Duration = Duration::from_secs(300);

/// The origin's connection: a socket, or TLS to an `https://` proxy on it.
enum Origin {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Origin {
    fn socket(&self) -> &TcpStream {
        match self {
            Origin::Plain(s) => s,
            Origin::Tls(s) => &s.sock,
        }
    }
}

impl Read for Origin {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Origin::Plain(s) => s.read(buf),
            Origin::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Origin {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Origin::Plain(s) => s.write(buf),
            Origin::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Origin::Plain(s) => s.flush(),
            Origin::Tls(s) => s.flush(),
        }
    }
}

/// A kept connection to one origin.
struct Kept {
    target: Endpoint,
    origin: Origin,
    /// Bytes read from the origin and not yet passed on.
    buf: Vec<u8>,
    via: String,
}

/// Serves `first` and the requests after it on `client`, until the client closes, stays idle,
/// or asks for a CONNECT tunnel (handed back as [`Outcome::Tunnel`]).
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
            "HTTP {} http://{}{}",
            request.method, ask.target, request.path
        );
        if is_self(&ask.target, local) {
            let why = format!("{} is this -D port itself (a loop)", ask.target);
            let _ = client.write_all(&front::failure(ask.protocol, Failure::NotAllowed, &why));
            lines.push(format!("{what}: refused: {why}"));
            return Ok(Outcome::Done { lines });
        }
        if kept.as_ref().is_some_and(|k| k.target != ask.target) {
            kept = None;
        }
        let k = match &mut kept {
            Some(k) => k,
            None => match open(&ask.target, d) {
                Ok(k) => kept.insert(k),
                Err(e) => {
                    let why = format!("{e:#}");
                    let _ = client.write_all(&front::failure(ask.protocol, failure_of(&e), &why));
                    lines.push(format!("{what}: failed: {why}"));
                    return Ok(Outcome::Done { lines });
                }
            },
        };
        let mut answered = false;
        let result = exchange(client, k, &request, &mut pending, &mut answered);
        let line = |end: &str| {
            format!(
                "{what} {}: {end} in {:.3}s",
                k_via(&kept),
                started.elapsed().as_secs_f64()
            )
        };
        let ended = match result {
            Ok(ended) => ended,
            Err(e) => {
                if !answered {
                    // Nothing of a response went out yet: the client gets gimlet's own 502.
                    let _ = client.write_all(&front::failure(ask.protocol, Failure::General, &e));
                }
                lines.push(line(&format!("failed: {e:#}")));
                return Ok(Outcome::Done { lines });
            }
        };
        lines.push(line(&format!(
            "{}, {} bytes sent, {} bytes received",
            ended.status, ended.sent, ended.received
        )));
        if !ended.origin_keeps {
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
                return super::dynamic::tunnel(client, next, local, d).map(|mut served| {
                    served.lines = lines;
                    Outcome::Tunnel(served)
                });
            }
            Ok(Some(Step::Ask { ask: next, .. })) => ask = next,
            Ok(Some(Step::Refuse { send, why })) => {
                let _ = client.write_all(&send);
                lines.push(format!("HTTP request refused: {why}"));
                return Ok(Outcome::Done { lines });
            }
            Ok(_) => return Ok(Outcome::Done { lines }),
            Err(e) => {
                lines.push(format!("after {} request(s): {e}", lines.len()));
                return Ok(Outcome::Done { lines });
            }
        }
    }
}

fn k_via(kept: &Option<Kept>) -> &str {
    kept.as_ref().map_or("", |k| k.via.as_str())
}

/// Opens a tunnel to `target` along its route, for HTTP messages.
fn open(target: &Endpoint, d: &Dynamic) -> Result<Kept, Error> {
    let (upstream, via) = route_for(&target.host, d);
    let established = establish(upstream, target)?;
    let (tcp, mut sessions) = established
        .stream
        .into_layers()
        .map_err(|e| Error::new(Kind::Tunnel, e).context(format!("opening {target}")))?;
    let origin = match sessions.len() {
        0 => Origin::Plain(tcp),
        1 => Origin::Tls(Box::new(StreamOwned::new(sessions.remove(0), tcp))),
        n => {
            return Err(Error::msg(
                Kind::Tunnel,
                format_args!(
                    "{target}: {n} nested TLS sessions are not supported for HTTP requests"
                ),
            ));
        }
    };
    let _ = origin.socket().set_read_timeout(Some(STALL));
    let _ = origin.socket().set_write_timeout(Some(STALL));
    Ok(Kept {
        target: target.clone(),
        origin,
        buf: established.leftover,
        via,
    })
}

struct Ended {
    status: u16,
    sent: u64,
    received: u64,
    close_client: bool,
    origin_keeps: bool,
}

/// One request and its response. `pending` holds client bytes already read; on return, what
/// follows the request's body.
fn exchange(
    mut client: &TcpStream,
    k: &mut Kept,
    request: &front::HttpRequest,
    pending: &mut Vec<u8>,
    answered: &mut bool,
) -> Result<Ended, String> {
    let expects_continue = http1_expects_continue(&request.fields);
    let head = http1::origin_request(&request.method, &k.target, &request.path, &request.fields);
    k.origin
        .write_all(&head)
        .map_err(|e| format!("sending the request: {e}"))?;
    if expects_continue && request.framing != Framing::None {
        // The origin never saw the Expect field: gimlet says go on itself.
        client
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .map_err(|e| format!("answering the client: {e}"))?;
    }
    // The request body, exactly as framed.
    let mut body = Body::new(request.framing);
    let mut sent = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if !pending.is_empty() {
            let n = body
                .feed(pending)
                .map_err(|e| format!("request body: {e}"))?;
            k.origin
                .write_all(&pending[..n])
                .map_err(|e| format!("sending the request body: {e}"))?;
            pending.drain(..n);
            sent += n as u64;
        }
        if body.done() {
            break;
        }
        match client.read(&mut buf) {
            Ok(0) => return Err("the client closed in the middle of its request body".into()),
            Ok(n) => pending.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading the request body: {e}")),
        }
    }
    k.origin
        .flush()
        .map_err(|e| format!("sending the request: {e}"))?;
    // The response head; 1xx heads pass on first (RFC 9110 §15.2).
    let head_request = request.method.eq_ignore_ascii_case("HEAD");
    let (status, minor, fields, framing, reason) = loop {
        let (status, minor, reason, fields, used) = read_response_head(k, &mut buf)?;
        k.buf.drain(..used);
        if status == 101 {
            return Err("the origin switched protocols, which was not asked for".into());
        }
        if (100..200).contains(&status) {
            *answered = true;
            client
                .write_all(&http1::client_response(status, &reason, &fields, false))
                .map_err(|e| format!("answering the client: {e}"))?;
            continue;
        }
        let framing = http1::response_framing(status, head_request, &fields)
            .map_err(|e| format!("response from the origin: {e}"))?;
        break (status, minor, fields, framing, reason);
    };
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
        match k.origin.read(&mut buf) {
            Ok(0) if body.until_close() => break,
            Ok(0) => return Err("the origin closed in the middle of its response body".into()),
            Ok(n) => k.buf.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if body.until_close() && e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(format!("reading the response: {e}")),
        }
    }
    let origin_keeps =
        framing != Framing::Close && http1::keeps_alive(minor, &fields) && k.buf.is_empty();
    Ok(Ended {
        status,
        sent,
        received,
        close_client,
        origin_keeps,
    })
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
        match k.origin.read(buf) {
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
