//! CONNECT over HTTP/2 (RFC 9113 §8.5) to an `https://` proxy that agreed to `h2` by ALPN.
//!
//! The `h2` crate (hyperium) keeps framing, HPACK and flow control out of our code; it is
//! async, so this hop owns a tokio current-thread runtime that exists only once `h2` was
//! agreed: the HTTP/1.1 path never creates one, never starts a thread, never touches tokio.
//!
//! The tunnel reaches the stdio relay through a socket pair: the relay drives one end like
//! any other tunnel (mio readiness, half-close, stdin that is a regular file, O_NONBLOCK given
//! back), and the runtime thread pumps the other end to and from the h2 stream. Memory stays
//! bounded: received DATA is released to the proxy's flow-control window only once it was
//! written into the socket pair, so a stalled stdout stops the proxy after one window.
//!
//! Mapping: any 2xx opens the tunnel; END_STREAM is the half-close both ways; a 407 is
//! answered on a new stream of the same connection (Basic, Digest, Negotiate). NTLM is
//! refused: it authenticates a connection, not a request, and HTTP/2 multiplexes requests of
//! many users and tunnels on one connection.

use std::future::{Future, poll_fn};
use std::io;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use h2::client::{self, SendRequest};
use h2::{RecvStream, SendStream};
use http::{HeaderName, HeaderValue, Method, Request};
use tokio::net::UnixStream;
use tokio::runtime::Runtime;

use crate::auth::{self, Authenticator, Challenge, NoScheme, Scheme, negotiate};
use crate::config::Endpoint;
use crate::connect::Clock;
use crate::credentials::{Credentials, Secret};
use crate::diag::{debug, info};
use crate::error::{Error, Kind, ResultExt};
use crate::handshake::Reply;
use crate::transport::async_tls;
use crate::transport::stream::{Finish, Stream};

pub mod inline;
pub use inline::Inline;

/// Per-stream receive window: one tunnel's bytes in flight. 8 MiB keeps a 1 Gbit/s path
/// with 60 ms round trips busy, and bounds what a stalled stdout can make us hold.
pub const STREAM_WINDOW: u32 = 8 << 20;
/// Connection receive window: room for a few full streams (listen modes will share it).
pub const CONNECTION_WINDOW: u32 = 32 << 20;
/// Largest DATA frame we accept (fewer frames per byte than the 16 KiB default).
pub const MAX_FRAME: u32 = 256 << 10;
/// How much of the socket pair one read takes.
const CHUNK: usize = 256 << 10;
/// Most authentication rounds (a stale Digest nonce needs one more than the first).
const MAX_ROUNDS: usize = 4;
/// How long the closing frames may take to leave once the tunnel is done.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// What the CONNECT needs besides the connection.
pub struct Exchange<'a> {
    pub target: &'a Endpoint,
    /// The proxy as `host:port`, for messages.
    pub proxy: &'a str,
    pub user_agent: Option<&'a str>,
    pub headers: &'a [(String, String)],
    pub credentials: Option<Credentials>,
    pub scheme: Option<Scheme>,
    pub ask: &'a mut dyn FnMut() -> Result<Option<Credentials>, Error>,
    pub negotiate: Option<negotiate::Setup>,
    pub clock: &'a Clock,
}

/// An open CONNECT stream with the runtime that drives its connection.
pub struct Tunnel {
    runtime: Runtime,
    send: SendStream<Bytes>,
    recv: RecvStream,
    connection: tokio::task::JoinHandle<()>,
    /// The proxy's GOAWAY, once the connection ended with one: streams only see the socket
    /// close, so this says why.
    goaway: Arc<Mutex<Option<String>>>,
    /// `HTTP/2 200`, for messages.
    pub status_line: String,
}

/// The h2 error as a phrase naming the frame: `RST_STREAM (REFUSED_STREAM)`, `GOAWAY (...)`.
pub fn describe(e: &h2::Error) -> String {
    let reason = e
        .reason()
        .map(|r| format!("{r:?}: {r}"))
        .unwrap_or_default();
    if e.is_go_away() && e.is_remote() {
        format!("the proxy ended the HTTP/2 connection (GOAWAY {reason})")
    } else if e.is_reset() && e.is_remote() {
        format!("the proxy reset the stream (RST_STREAM {reason})")
    } else if let Some(io) = e.get_io() {
        format!("HTTP/2 connection: {io}")
    } else {
        format!("HTTP/2: {e}")
    }
}

/// A CONNECT stream, driven by its own thread or by the caller's.
pub enum Opened {
    Threaded(Tunnel),
    Inline(Box<Inline>),
}

/// [`connect`], or [`inline::connect`] when `inline`.
pub fn open(below: Stream, inline: bool, x: Exchange<'_>) -> Result<Opened, Error> {
    match inline {
        true => inline::connect(below, x).map(|t| Opened::Inline(Box::new(t))),
        false => connect(below, x).map(Opened::Threaded),
    }
}

/// Starts HTTP/2 on `below`, whatever the hops before this one established (TCP, TLS inside
/// their tunnels, an earlier HTTP/2 hop's tunnel) with this hop's TLS session outermost (ALPN
/// said `h2`), and sends CONNECT, answering 407s.
pub fn connect(below: Stream, x: Exchange<'_>) -> Result<Tunnel, Error> {
    let proxy = x.proxy.to_owned();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .kind_ctx(Kind::Tunnel, || "starting the HTTP/2 runtime")?;
    let clock = x.clock;
    let goaway = Arc::new(Mutex::new(None));
    let opened = runtime.block_on(async {
        let io = below
            .into_stack()
            .and_then(|(socket, sessions)| async_tls::stack(socket, sessions))
            .kind_ctx(Kind::Unreachable, || format!("HTTP/2 with proxy {proxy}"))?;
        let (send_request, connection) = within(clock, builder().handshake::<_, Bytes>(io))
            .await?
            .map_err(|e| {
                Error::msg(
                    Kind::Unreachable,
                    format_args!("starting HTTP/2 with proxy {proxy}: {}", describe(&e)),
                )
            })?;
        let slot = goaway.clone();
        let connection = tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!("HTTP/2 connection ended: {}", describe(&e));
                if e.is_go_away() {
                    *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(describe(&e));
                }
            }
        });
        let granted = exchange(send_request, x, false, &mut false).await?;
        Ok::<_, Error>((granted.status_line, granted.send, granted.recv, connection))
    })?;
    let (status_line, send, recv, connection) = opened;
    Ok(Tunnel {
        runtime,
        send,
        recv,
        connection,
        goaway,
        status_line,
    })
}

/// Our side of every HTTP/2 connection: windows and frames sized for throughput.
fn builder() -> client::Builder {
    let mut b = client::Builder::new();
    b.initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        // No server push: CONNECT proxies have nothing to push.
        .enable_push(false);
    b
}

/// Awaits `f` within the connect deadline. Off tokio (the pipe mode's [`inline`] hop), the
/// one polling keeps the deadline itself.
async fn within<F: Future>(clock: &Clock, f: F) -> Result<F::Output, Error> {
    let left = clock.remaining().ok_or_else(|| {
        Error::new(Kind::Unreachable, clock.timed_out()).context("waiting for the proxy")
    })?;
    if tokio::runtime::Handle::try_current().is_err() {
        return Ok(f.await);
    }
    tokio::time::timeout(left, f).await.map_err(|_| {
        Error::new(Kind::Unreachable, clock.timed_out())
            .context("waiting for the proxy's HTTP/2 reply")
    })
}

/// A granted CONNECT.
struct Granted {
    status_line: String,
    code: u16,
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// It carried Basic credentials (the connection's next CONNECTs may send them at once).
    basic: bool,
}

/// The CONNECT rounds: returns the stream once a 2xx came. `basic_first`: send Basic
/// credentials with the first request (the proxy took them on this connection before).
/// `retry` is set when the connection, not the request, failed (GOAWAY, closed): the
/// proxy did not act on the CONNECT, which may go on another connection.
async fn exchange(
    mut send_request: SendRequest<Bytes>,
    x: Exchange<'_>,
    basic_first: bool,
    retry: &mut bool,
) -> Result<Granted, Error> {
    let Exchange {
        target,
        proxy,
        user_agent,
        headers,
        mut credentials,
        scheme: forced,
        ask,
        mut negotiate,
        clock,
    } = x;
    let target_s = target.to_string();
    let signed = auth::Target {
        method: "CONNECT",
        uri: &target_s,
    };
    if forced == Some(Scheme::Ntlm) {
        return Err(ntlm_refused(proxy));
    }
    let mut authenticator: Option<Authenticator> = None;
    let mut authorization: Option<Secret> = None;
    let preempt =
        forced == Some(Scheme::Basic) || (basic_first && forced.is_none_or(|f| f == Scheme::Basic));
    if let (true, Some(c)) = (preempt, &credentials) {
        info!(
            "sending Basic credentials for user \"{}\"{} with the first request ({})",
            c.user,
            c.source.from_phrase(),
            match forced {
                Some(_) => "--proxy-auth basic",
                None => "the proxy took them on this connection before",
            }
        );
        let c = credentials.take().expect("checked above");
        let (a, v) = Authenticator::start(Scheme::Basic, c, None, &signed).kind(Kind::Auth)?;
        (authenticator, authorization) = (Some(a), Some(v));
    }
    for _ in 0..=MAX_ROUNDS {
        // `_sent` zeroes our copy of the credentials once the request is done with.
        let (request, _sent) =
            connect_request(target, user_agent, headers, authorization.as_ref())?;
        debug!(
            "> CONNECT {target_s} (HTTP/2){}",
            match &authorization {
                Some(a) => format!(
                    "\ngimlet: > proxy-authorization: {} <redacted>",
                    a.expose().split(' ').next().unwrap_or("")
                ),
                None => String::new(),
            }
        );
        let mut lost = |e: h2::Error| {
            if e.is_go_away() || e.is_io() {
                *retry = true;
            }
            let kind = if e.is_reset() && e.is_remote() {
                Kind::Refused
            } else if e.is_io() || e.is_go_away() {
                Kind::Unreachable
            } else {
                Kind::Protocol
            };
            Error::msg(
                kind,
                format_args!(
                    "asking proxy {proxy} for CONNECT {target_s}: {}",
                    describe(&e)
                ),
            )
        };
        send_request = within(clock, send_request.ready())
            .await?
            .map_err(&mut lost)?;
        let (response, send) = send_request
            .send_request(request, false)
            .map_err(&mut lost)?;
        let response = within(clock, response).await?.map_err(&mut lost)?;
        let (parts, recv) = response.into_parts();
        let reply = Reply {
            version: 2,
            code: parts.status.as_u16(),
            status_line: format!("HTTP/2 {}", parts.status.as_u16()),
            headers: parts
                .headers
                .iter()
                .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
                .collect(),
        };
        debug!("< {}", reply.status_line);
        if reply.is_success() {
            if let Some(a) = &mut authenticator {
                a.finish(&reply.headers).kind_ctx(Kind::Auth, || {
                    format!("authenticating to proxy {proxy} with {}", a.scheme())
                })?;
            }
            return Ok(Granted {
                basic: authenticator
                    .as_ref()
                    .is_some_and(|a| a.scheme() == Scheme::Basic),
                status_line: reply.status_line,
                code: reply.code,
                send,
                recv,
            });
        }
        drop((send, recv));
        if !reply.is_auth_challenge() {
            return Err(Error::msg(
                Kind::Refused,
                format_args!(
                    "proxy {proxy} refused CONNECT {target_s}: {:?}",
                    reply.status_line
                ),
            ));
        }
        let challenges = reply.challenges();
        let value = match &mut authenticator {
            Some(a) => a
                .next(&challenges, &signed)
                .kind_ctx(Kind::Auth, || {
                    format!("authenticating to proxy {proxy} with {}", a.scheme())
                })?
                .ok_or_else(|| {
                    Error::msg(
                        Kind::Auth,
                        format_args!(
                            "proxy {proxy} rejected the {} credentials for user \"{}\"{}: {:?}",
                            a.scheme(),
                            a.user(),
                            a.source_phrase(),
                            reply.status_line
                        ),
                    )
                })?,
            None => {
                let (a, v) = start(
                    &challenges,
                    forced,
                    negotiate.as_mut(),
                    &mut credentials,
                    ask,
                    &signed,
                    proxy,
                    &reply.status_line,
                )?;
                authenticator = Some(a);
                v
            }
        };
        authorization = Some(value);
    }
    Err(Error::msg(
        Kind::Auth,
        format_args!("proxy {proxy} still asks for authentication after {MAX_ROUNDS} rounds"),
    ))
}

/// The first answer to a 407: Negotiate when offered and a ticket is there, else the strongest
/// password scheme offered (never NTLM).
#[allow(clippy::too_many_arguments)]
fn start(
    challenges: &[Challenge],
    forced: Option<Scheme>,
    negotiate: Option<&mut negotiate::Setup>,
    credentials: &mut Option<Credentials>,
    ask: &mut dyn FnMut() -> Result<Option<Credentials>, Error>,
    signed: &auth::Target<'_>,
    proxy: &str,
    status_line: &str,
) -> Result<(Authenticator, Secret), Error> {
    let mut kerberos_failure = String::new();
    let negotiate_offered = challenges.iter().any(|c| c.is(Scheme::Negotiate));
    if let (true, true, Some(setup)) = (
        negotiate_offered,
        forced.is_none_or(|f| f == Scheme::Negotiate),
        negotiate,
    ) {
        match Authenticator::negotiate(setup) {
            Ok(started) => {
                debug!("answering with Negotiate as {}", started.0.user());
                return Ok(started);
            }
            Err(e) if forced.is_none() => kerberos_failure = format!("; and not Negotiate: {e:#}"),
            Err(e) => {
                return Err(Error::new(Kind::Auth, e).context(format!(
                    "authenticating to proxy {proxy} with Negotiate ({status_line:?})"
                )));
            }
        }
    }
    let usable: Vec<Challenge> = challenges
        .iter()
        .filter(|c| !c.is(Scheme::Negotiate) && !c.is(Scheme::Ntlm))
        .cloned()
        .collect();
    let offered = challenges
        .iter()
        .map(|c| c.scheme.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let (scheme, challenge) = match auth::choose(&usable, forced) {
        Ok(found) => found,
        Err(_) if challenges.iter().any(|c| c.is(Scheme::Ntlm)) => {
            return Err(ntlm_refused(proxy));
        }
        Err(NoScheme::Digest(why)) => {
            return Err(Error::msg(
                Kind::Auth,
                format_args!(
                    "proxy {proxy} offers Digest only in a form gimlet cannot answer: {why}: {status_line:?}{kerberos_failure}"
                ),
            ));
        }
        Err(NoScheme::Offered(_)) => {
            return Err(Error::msg(
                Kind::Auth,
                format_args!(
                    "proxy {proxy} requires authentication with {offered}, and gimlet speaks Negotiate, Digest or Basic over HTTP/2: {status_line:?}{kerberos_failure}"
                ),
            ));
        }
    };
    let creds = match credentials.take() {
        Some(c) => c,
        None => ask()?.ok_or_else(|| {
            Error::msg(
                Kind::Auth,
                format_args!(
                    "proxy {proxy} requires authentication (offers {offered}): {status_line:?}; no credentials given and no way to ask (use -U, --proxy-auth-file, {}, --netrc or an askpass program){kerberos_failure}",
                    crate::config::AUTH_ENV,
                ),
            )
        })?,
    };
    info!(
        "proxy {proxy} asks for authentication (offers {offered}); answering with {scheme} for user \"{}\"{}",
        creds.user,
        creds.source.from_phrase()
    );
    Authenticator::start(scheme, creds, Some(challenge), signed).kind_ctx(Kind::Auth, || {
        format!("authenticating to proxy {proxy} with {scheme}")
    })
}

fn ntlm_refused(proxy: &str) -> Error {
    Error::msg(
        Kind::Auth,
        format_args!(
            "proxy {proxy} wants NTLM, which authenticates a connection rather than a request and cannot be used over HTTP/2 (where one connection carries many requests): drop --proxy-http2 (and write an https+h2:// proxy as https://) to use NTLM over HTTP/1.1"
        ),
    )
}

/// `:method CONNECT`, `:authority host:port`, no `:scheme` or `:path` (RFC 9113 §8.5); our
/// headers less the connection-specific ones HTTP/2 forbids (§8.2.2) and `Host`.
fn connect_request(
    target: &Endpoint,
    user_agent: Option<&str>,
    headers: &[(String, String)],
    authorization: Option<&Secret>,
) -> Result<(Request<()>, Option<Zeroed>), Error> {
    let bad = |what: String| Error::msg(Kind::Usage, what);
    let mut request = Request::builder()
        .method(Method::CONNECT)
        .uri(target.to_string())
        .body(())
        .map_err(|e| bad(format!("writing CONNECT {target} for HTTP/2: {e}")))?;
    let has = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    let h = request.headers_mut();
    if let (Some(ua), false) = (user_agent, has("User-Agent")) {
        if let Ok(v) = HeaderValue::from_str(ua) {
            h.append(http::header::USER_AGENT, v);
        }
    }
    let mut zeroed = None;
    if let (Some(a), false) = (authorization, has("Proxy-Authorization")) {
        // The header shares this buffer (no copy of ours elsewhere), zeroed when the request
        // is done with.
        let bytes = Zeroed(Bytes::from(a.expose().as_bytes().to_vec()));
        let mut v = HeaderValue::from_maybe_shared(bytes.0.clone())
            .map_err(|_| bad("the Proxy-Authorization value is not a valid header".into()))?;
        // HPACK: never indexed, so no table keeps it (RFC 7541 §7.1.3).
        v.set_sensitive(true);
        h.append(http::header::PROXY_AUTHORIZATION, v);
        zeroed = Some(bytes);
    }
    for (name, value) in headers {
        let lower = name.to_ascii_lowercase();
        if matches!(
            lower.as_str(),
            "host"
                | "connection"
                | "proxy-connection"
                | "keep-alive"
                | "transfer-encoding"
                | "upgrade"
                | "te"
        ) {
            debug!("not sending {name} over HTTP/2 (connection-specific, RFC 9113 §8.2.2)");
            continue;
        }
        let n = HeaderName::from_bytes(lower.as_bytes())
            .map_err(|_| bad(format!("header name {name:?} is not valid in HTTP/2")))?;
        let mut v = HeaderValue::from_str(value)
            .map_err(|_| bad(format!("the value of header {name} is not valid in HTTP/2")))?;
        if lower.contains("authorization") {
            v.set_sensitive(true);
        }
        h.append(n, v);
    }
    Ok((request, zeroed))
}

/// Bytes zeroed on drop when no other handle shares them any more (the request, once h2 has
/// encoded and dropped it).
struct Zeroed(Bytes);

impl Drop for Zeroed {
    fn drop(&mut self) {
        if let Ok(mut b) = std::mem::take(&mut self.0).try_into_mut() {
            zeroize::Zeroize::zeroize(&mut b[..]);
        }
    }
}

/// The runtime thread's side of an open tunnel.
pub struct Pump {
    thread: std::thread::JoinHandle<Result<(), Error>>,
    /// Dropped when the relay is done: the pump then stops waiting for the proxy.
    done: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Tunnel {
    /// Moves the stream onto its own thread, pumping between it and one end of a socket pair;
    /// returns the other end (blocking, for a `--tls` handshake first), for the relay.
    pub fn bridge(self) -> io::Result<(StdUnixStream, Pump)> {
        let (ours, theirs) = StdUnixStream::pair()?;
        theirs.set_nonblocking(true)?;
        let (done, done_rx) = tokio::sync::oneshot::channel();
        let Tunnel {
            runtime,
            send,
            recv,
            connection,
            goaway,
            ..
        } = self;
        let thread = std::thread::Builder::new()
            .name("gimlet-h2".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let pair = UnixStream::from_std(theirs)
                        .map_err(|e| Error::new(Kind::Tunnel, e).context("HTTP/2 tunnel"))?;
                    let result = pump(send, recv, &pair, done_rx).await;
                    drop(pair);
                    // Every handle is gone: the connection sends what is queued, then GOAWAY.
                    let _ = tokio::time::timeout(CLOSE_GRACE, connection).await;
                    let goaway = goaway.lock().unwrap_or_else(|p| p.into_inner()).take();
                    match (result, goaway) {
                        (Err(e), Some(why)) if e.kind() == Kind::Tunnel => {
                            Err(Error::msg(Kind::Tunnel, why))
                        }
                        (result, _) => result,
                    }
                })
            })?;
        Ok((
            ours,
            Pump {
                thread,
                done: Some(done),
            },
        ))
    }
}

impl Pump {
    /// Tells the pump the relay is done and waits for it; its error, if any.
    pub fn finish(mut self) -> Result<(), Error> {
        drop(self.done.take());
        match self.thread.join() {
            Ok(r) => r,
            Err(_) => Err(Error::msg(Kind::Tunnel, "the HTTP/2 thread panicked")),
        }
    }
}

/// Both directions at once; the first error ends both (the socket pair closes, so the relay
/// sees the end too).
async fn pump(
    send: SendStream<Bytes>,
    recv: RecvStream,
    pair: &UnixStream,
    mut done: tokio::sync::oneshot::Receiver<()>,
) -> Result<(), Error> {
    let mut up = pin!(up(send, pair));
    let mut down = pin!(down(recv, pair));
    let (mut up_done, mut down_done) = (false, false);
    // The proxy's END_STREAM came (not just the relay's end).
    let mut ended = false;
    poll_fn(|cx| {
        if !down_done {
            if let Poll::Ready(r) = down.as_mut().poll(cx) {
                r?;
                down_done = true;
                ended = true;
            }
        }
        if !up_done {
            if let Poll::Ready(r) = up.as_mut().poll(cx) {
                match r {
                    // The proxy ended the stream (END_STREAM, often with RST_STREAM NO_ERROR
                    // after it): as over HTTP/1.1, the far side's end ends the tunnel, and
                    // what stdin still gave has nowhere to go.
                    Err(e) if ended => debug!("after the proxy's END_STREAM: {e:#}"),
                    r => r?,
                }
                up_done = true;
            }
        }
        // Once the relay is done nobody reads what the proxy still sends: stop waiting for
        // it. The upload still drains the socket pair (the relay wrote it all before ending).
        if !down_done && std::pin::Pin::new(&mut done).poll(cx).is_ready() {
            down_done = true;
        }
        match up_done && down_done {
            true => Poll::Ready(Ok(())),
            false => Poll::Pending,
        }
    })
    .await
}

fn mid_tunnel(e: &h2::Error) -> Error {
    Error::msg(Kind::Tunnel, describe(e))
}

/// Socket pair → DATA frames, sent only as the proxy's window allows; EOF → END_STREAM.
async fn up(mut send: SendStream<Bytes>, pair: &UnixStream) -> Result<(), Error> {
    let mut buf = bytes::BytesMut::new();
    loop {
        pair.readable().await.kind(Kind::Tunnel)?;
        if buf.capacity() < CHUNK / 4 {
            buf.reserve(CHUNK);
        }
        let n = match pair.try_read_buf(&mut buf) {
            Ok(n) => n,
            // Nothing to send: an idle tunnel holds no buffer (many share a connection).
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                buf = bytes::BytesMut::new();
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::new(Kind::Tunnel, e)),
        };
        if n == 0 {
            // The half-close (RFC 9113 §8.5: END_STREAM is the TCP FIN).
            return send
                .send_data(Bytes::new(), true)
                .map_err(|e| mid_tunnel(&e));
        }
        // The bytes read become the frames' payload as they are: no copy.
        let mut data = buf.split().freeze();
        while !data.is_empty() {
            send.reserve_capacity(data.len());
            match poll_fn(|cx| send.poll_capacity(cx)).await {
                Some(Ok(0)) => {}
                Some(Ok(room)) => {
                    let chunk = data.split_to(room.min(data.len()));
                    send.send_data(chunk, false).map_err(|e| mid_tunnel(&e))?;
                }
                Some(Err(e)) => return Err(mid_tunnel(&e)),
                None => {
                    // The stream ended under us: say how.
                    return Err(match poll_fn(|cx| send.poll_reset(cx)).await {
                        Ok(r) => Error::msg(
                            Kind::Tunnel,
                            format_args!("the proxy reset the stream (RST_STREAM {r:?}: {r})"),
                        ),
                        Err(e) => mid_tunnel(&e),
                    });
                }
            }
        }
    }
}

/// DATA frames → socket pair; window released as bytes are written out; END_STREAM →
/// shutdown(Write).
async fn down(mut recv: RecvStream, pair: &UnixStream) -> Result<(), Error> {
    while let Some(chunk) = recv.data().await {
        let chunk = chunk.map_err(|e| mid_tunnel(&e))?;
        let mut rest = &chunk[..];
        while !rest.is_empty() {
            pair.writable().await.kind(Kind::Tunnel)?;
            match pair.try_write(rest) {
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // The relay is gone (stdout's reader went away): nobody wants the rest.
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
                Err(e) => return Err(Error::new(Kind::Tunnel, e)),
            }
        }
        let _ = recv.flow_control().release_capacity(chunk.len());
    }
    let _ = socket2::SockRef::from(pair).shutdown(std::net::Shutdown::Write);
    Ok(())
}

/// The relay's end of the socket pair: a tunnel like a TCP socket (its bytes are the tunnel's,
/// so they may be spliced).
impl crate::relay::Tunnel for mio::net::UnixStream {
    fn shutdown_write(&mut self) -> io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }

    fn splice_fd(&self) -> Option<std::os::fd::RawFd> {
        Some(std::os::fd::AsRawFd::as_raw_fd(self))
    }
}

// Shared connections: the listen modes' tunnels to one proxy ride one HTTP/2 connection.

/// Most connections one tunnel tries when they stop taking streams under it (GOAWAY, closed).
pub const MUX_ATTEMPTS: usize = 3;

/// The HTTP/2 connections to one proxy that the tunnels of a listen mode's route share.
///
/// One thread owns a current-thread runtime that drives every connection and every stream's
/// pump (started on first use: a route that never agrees to `h2` never starts it). Tunnels
/// are opened from the engine's handshake workers: a worker takes a [`Slot`] (a stream on a
/// connection with room, or the turn to open a new connection, one at a time), sends CONNECT
/// and answers 407s on its own thread against that runtime, then hands the stream to the
/// runtime's pump and the engine gets one end of a socket pair, like any tunnel socket.
///
/// A connection takes new streams while it has fewer open than the proxy's
/// SETTINGS_MAX_CONCURRENT_STREAMS (RFC 9113 §6.5.2) and no GOAWAY came; when none has room, a
/// new one is opened. After a GOAWAY the streams it still carries (at or below its
/// last-stream-id, §6.8) run to their end; new tunnels go to another connection, and a
/// CONNECT left unanswered by a GOAWAY or the connection's end is sent again there (no tunnel
/// byte has moved yet).
pub struct Mux {
    inner: Arc<MuxInner>,
}

struct MuxInner {
    /// The proxy as `host:port`, for messages.
    proxy: String,
    state: Mutex<MuxState>,
    /// Signalled when a connection settles, ends, or a stream ends.
    changed: Condvar,
    runtime: OnceLock<Result<tokio::runtime::Handle, String>>,
}

#[derive(Default)]
struct MuxState {
    conns: Vec<Arc<Conn>>,
    /// A tunnel is opening a connection: the others wait for it rather than open their own.
    dialing: bool,
    /// The proxy chose HTTP/1.1 by ALPN: nothing to share, nobody waits for a dial.
    http1: bool,
    /// Connections opened so far (their numbers, from 1, in messages and the log).
    opened: u64,
}

struct Conn {
    id: u64,
    send: SendRequest<Bytes>,
    /// Streams open or opening on it; changed under the mux's lock.
    active: AtomicUsize,
    /// Its first CONNECT is done, so the proxy's SETTINGS have come: its limit is known.
    settled: AtomicBool,
    /// GOAWAY came, or the connection ended: no new streams.
    done: AtomicBool,
    /// The proxy took Basic credentials on it: later CONNECTs send them at once.
    basic: AtomicBool,
}

impl Conn {
    /// Whether a new stream fits: settled, no GOAWAY, below the proxy's limit.
    fn has_room(&self) -> bool {
        if !self.settled.load(Ordering::SeqCst) || self.done.load(Ordering::SeqCst) {
            return false;
        }
        if self.active.load(Ordering::SeqCst) >= self.send.current_max_send_streams() {
            return false;
        }
        // A GOAWAY already received shows here without waiting (h2 keeps it as the
        // connection's error); with no request of this handle pending this never waits.
        let mut probe = self.send.clone();
        match probe.poll_ready(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
            Poll::Ready(Ok(())) => true,
            Poll::Ready(Err(_)) => {
                self.done.store(true, Ordering::SeqCst);
                false
            }
            Poll::Pending => false,
        }
    }
}

/// What a tunnel does next: ride a connection, or open one.
pub enum Slot {
    Ride(Lease),
    Dial(Ticket),
}

/// The turn to open a connection (others wait until it is dropped or its first CONNECT is
/// done).
pub struct Ticket {
    mux: Arc<MuxInner>,
    /// It holds the mux's `dialing` turn.
    turn: bool,
}

/// One stream's place on a connection, given back when dropped.
pub struct Lease {
    mux: Arc<MuxInner>,
    conn: Arc<Conn>,
    /// For a new connection: the dial's turn, given up once its first CONNECT is done.
    ticket: Option<Ticket>,
}

/// A CONNECT that failed; `retry`: on another connection (this one ended or sent GOAWAY).
pub struct Failed {
    pub error: Error,
    pub retry: bool,
}

/// A stream on a shared connection: the socket pair's end for the relay, and for the log.
pub struct Shared {
    /// The near end of the socket pair the runtime's pump serves.
    pub near: StdUnixStream,
    /// To keep with `near`: dropped, the pump stops waiting for the proxy (the relay is done).
    pub release: Box<dyn Finish>,
    /// `HTTP/2 200`.
    pub status_line: String,
    pub code: u16,
    /// The connection's number (from 1) and the stream's id on it.
    pub connection: u64,
    pub stream: u32,
}

impl MuxInner {
    fn lock(&self) -> std::sync::MutexGuard<'_, MuxState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The runtime's thread, started on first use; it runs as long as the process.
    fn handle(&self) -> Result<tokio::runtime::Handle, Error> {
        self.runtime
            .get_or_init(|| {
                let (tx, rx) = std::sync::mpsc::channel();
                std::thread::Builder::new()
                    .name("gimlet-h2".into())
                    .spawn(move || {
                        let built = tokio::runtime::Builder::new_current_thread()
                            .enable_io()
                            .enable_time()
                            .build();
                        match built {
                            Ok(rt) => {
                                let _ = tx.send(Ok(rt.handle().clone()));
                                rt.block_on(std::future::pending::<()>());
                            }
                            Err(e) => {
                                let _ = tx.send(Err(e.to_string()));
                            }
                        }
                    })
                    .map_err(|e| e.to_string())?;
                rx.recv().map_err(|e| e.to_string())?
            })
            .clone()
            .map_err(|e| {
                Error::msg(
                    Kind::Tunnel,
                    format_args!("starting the HTTP/2 runtime: {e}"),
                )
            })
    }
}

impl Mux {
    pub fn new(proxy: &str) -> Mux {
        Mux {
            inner: Arc::new(MuxInner {
                proxy: proxy.to_owned(),
                state: Mutex::new(MuxState::default()),
                changed: Condvar::new(),
                runtime: OnceLock::new(),
            }),
        }
    }

    /// A stream on a connection with room; else the turn to open one, or a wait (within the
    /// deadline) while another tunnel opens one.
    pub fn slot(&self, clock: &Clock) -> Result<Slot, Error> {
        let m = &self.inner;
        let mut st = m.lock();
        loop {
            st.conns.retain(|c| !c.done.load(Ordering::SeqCst));
            if let Some(c) = st.conns.iter().find(|c| c.has_room()) {
                c.active.fetch_add(1, Ordering::SeqCst);
                return Ok(Slot::Ride(Lease {
                    mux: m.clone(),
                    conn: c.clone(),
                    ticket: None,
                }));
            }
            if st.http1 || !st.dialing {
                let turn = !st.http1;
                st.dialing |= turn;
                return Ok(Slot::Dial(Ticket {
                    mux: m.clone(),
                    turn,
                }));
            }
            let Some(left) = clock.remaining() else {
                return Err(
                    Error::new(Kind::Unreachable, clock.timed_out()).context(format!(
                        "waiting for an HTTP/2 connection to proxy {}",
                        m.proxy
                    )),
                );
            };
            st = m
                .changed
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.turn {
            self.mux.lock().dialing = false;
            self.mux.changed.notify_all();
        }
    }
}

impl Ticket {
    /// The proxy chose HTTP/1.1: later tunnels dial at once, without waiting for each other.
    pub fn http1(self) {
        self.mux.lock().http1 = true;
    }

    /// Starts HTTP/2 on `below` (as for [`connect`]: this hop's TLS session, which agreed
    /// `h2`, outermost); the connection is shared once the first CONNECT on it (the returned
    /// lease's) is done.
    pub fn handshake(self, below: Stream, clock: &Clock) -> Result<Lease, Error> {
        let mux = self.mux.clone();
        let handle = mux.handle()?;
        let proxy = mux.proxy.clone();
        let (send, connection) = handle.block_on(async {
            let io = below
                .into_stack()
                .and_then(|(socket, sessions)| async_tls::stack(socket, sessions))
                .kind_ctx(Kind::Unreachable, || format!("HTTP/2 with proxy {proxy}"))?;
            within(clock, builder().handshake::<_, Bytes>(io))
                .await?
                .map_err(|e| {
                    Error::msg(
                        Kind::Unreachable,
                        format_args!("starting HTTP/2 with proxy {proxy}: {}", describe(&e)),
                    )
                })
        })?;
        let conn = {
            let mut st = mux.lock();
            st.opened += 1;
            let conn = Arc::new(Conn {
                id: st.opened,
                send,
                active: AtomicUsize::new(1),
                settled: AtomicBool::new(false),
                done: AtomicBool::new(false),
                basic: AtomicBool::new(false),
            });
            st.conns.push(conn.clone());
            conn
        };
        info!("HTTP/2 connection #{} to proxy {proxy} open", conn.id);
        let (c, m) = (conn.clone(), mux.clone());
        handle.spawn(async move {
            match connection.await {
                Ok(()) => info!("HTTP/2 connection #{} to proxy {} closed", c.id, m.proxy),
                Err(e) => info!(
                    "HTTP/2 connection #{} to proxy {} ended: {}",
                    c.id,
                    m.proxy,
                    describe(&e)
                ),
            }
            c.done.store(true, Ordering::SeqCst);
            m.changed.notify_all();
        });
        Ok(Lease {
            mux,
            conn,
            ticket: Some(self),
        })
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        {
            let _st = self.mux.lock();
            self.conn.active.fetch_sub(1, Ordering::SeqCst);
        }
        self.mux.changed.notify_all();
    }
}

/// Tells a shared stream's pump, when dropped, that the relay is done.
struct Release {
    _done: tokio::sync::oneshot::Sender<()>,
}

impl Finish for Release {
    /// The pump's errors are logged where they happen (`-v`): the stream's end is the relay's.
    fn finish(self: Box<Self>) -> Result<(), Error> {
        Ok(())
    }
}

impl Lease {
    /// The connection's number (from 1).
    pub fn connection(&self) -> u64 {
        self.conn.id
    }

    /// Sends CONNECT on this connection (answering 407s on new streams of it) and, once
    /// granted, hands the stream to the runtime's pump: the returned socket pair's end carries
    /// the tunnel. The place on the connection is given back when the stream ends.
    pub fn connect(mut self, x: Exchange<'_>) -> Result<Shared, Failed> {
        let handle = self.mux.handle().map_err(|error| Failed {
            error,
            retry: false,
        })?;
        let mut retry = false;
        let basic_first = self.conn.basic.load(Ordering::SeqCst);
        let result = handle.block_on(exchange(self.conn.send.clone(), x, basic_first, &mut retry));
        // The first CONNECT is done: the proxy's SETTINGS came before its answer.
        self.conn.settled.store(true, Ordering::SeqCst);
        if retry {
            self.conn.done.store(true, Ordering::SeqCst);
        }
        drop(self.ticket.take());
        let granted = result.map_err(|error| Failed { error, retry })?;
        if granted.basic {
            self.conn.basic.store(true, Ordering::SeqCst);
        }
        let stream = granted.send.stream_id().as_u32();
        let connection = self.conn.id;
        let failed = |e: io::Error| Failed {
            error: Error::new(Kind::Tunnel, e).context("HTTP/2 tunnel"),
            retry: false,
        };
        let (ours, theirs) = StdUnixStream::pair().map_err(failed)?;
        theirs.set_nonblocking(true).map_err(failed)?;
        let (done, done_rx) = tokio::sync::oneshot::channel::<()>();
        let Granted { send, recv, .. } = granted;
        handle.spawn(async move {
            let lease = self;
            let result = match UnixStream::from_std(theirs) {
                Ok(pair) => pump(send, recv, &pair, done_rx).await,
                Err(e) => Err(Error::new(Kind::Tunnel, e)),
            };
            if let Err(e) = result {
                info!(
                    "HTTP/2 connection #{connection} to proxy {}, stream {stream}: {e:#}",
                    lease.mux.proxy
                );
            }
            // The stream's handles went first (a stream still open is reset, CANCEL): then
            // its place.
            drop(lease);
        });
        Ok(Shared {
            near: ours,
            release: Box::new(Release { _done: done }),
            status_line: granted.status_line,
            code: granted.code,
            connection,
            stream,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_connect_headers_are_never_indexed_and_our_copy_is_shared() {
        let target = Endpoint {
            host: crate::config::parse_host("example.test").unwrap(),
            port: 22,
        };
        let secret = Secret::new("Basic YWw6cHc=".into());
        let headers = [("X-Authorization".to_owned(), "token".to_owned())];
        let (request, zeroed) = connect_request(&target, None, &headers, Some(&secret)).unwrap();
        let sent = &request.headers()[http::header::PROXY_AUTHORIZATION];
        assert!(sent.is_sensitive(), "HPACK must never index it");
        assert!(request.headers()["x-authorization"].is_sensitive());
        let zeroed = zeroed.expect("our copy, to zero");
        assert_eq!(
            zeroed.0.as_ptr(),
            sent.as_bytes().as_ptr(),
            "the header shares our buffer: no second copy to leave behind"
        );
        drop(request);
        assert!(
            zeroed.0.is_unique(),
            "once the request is gone, ours is the last handle"
        );
    }
}
