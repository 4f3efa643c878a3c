//! The CONNECT handshake (RFC 9110 §9.3.6), sans-IO at its core.
//!
//! [`Request`] builds the request head; [`ReplyReader`] takes reply bytes in whatever pieces
//! they arrive and yields the final reply head plus the bytes after it, which belong to the
//! tunnel. [`negotiate`] drives both over any `Read + Write` (a socket, or a scripted fake in
//! tests) and handles the 407 round trip.

use std::fmt::Write as _;
use std::io::{self, Read, Write};

use zeroize::Zeroizing;

use crate::auth::{self, Authenticator, Challenge, NoScheme, Scheme, negotiate};
use crate::config::Endpoint;
use crate::credentials::{Credentials, Secret};
use crate::diag::{debug, info};
use crate::error::{Error, Kind, ResultExt};

/// Largest reply head we accept; a proxy has no reason to send more.
pub const MAX_HEAD: usize = 64 * 1024;
/// Most header fields we accept in one reply head.
pub const MAX_HEADERS: usize = 100;
/// Largest 407 body we drain to keep the connection; past it we reconnect instead.
const MAX_DRAIN: u64 = 1024 * 1024;

/// What to put in the CONNECT request besides credentials.
pub struct Request<'a> {
    pub target: &'a Endpoint,
    pub user_agent: Option<&'a str>,
    /// Validated extra headers; a `Host` or `User-Agent` here replaces ours.
    pub headers: &'a [(String, String)],
}

impl Request<'_> {
    fn has_header(&self, name: &str) -> bool {
        self.headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
    }

    /// The head as (name, value) lines; `authorization` is a `Proxy-Authorization` value.
    fn fields<'s>(&'s self, authorization: Option<&'s str>) -> Vec<(&'s str, String)> {
        let mut fields = Vec::with_capacity(3 + self.headers.len());
        if !self.has_header("Host") {
            fields.push(("Host", self.target.to_string()));
        }
        if let (Some(ua), false) = (self.user_agent, self.has_header("User-Agent")) {
            fields.push(("User-Agent", ua.to_owned()));
        }
        if let (Some(auth), false) = (authorization, self.has_header("Proxy-Authorization")) {
            fields.push(("Proxy-Authorization", auth.to_owned()));
        }
        fields.extend(self.headers.iter().map(|(n, v)| (n.as_str(), v.clone())));
        fields
    }

    /// The request head, ending with the blank line. Zeroed on drop: it may hold credentials.
    pub fn to_bytes(&self, authorization: Option<&Secret>) -> Zeroizing<Vec<u8>> {
        let request_line = format!("CONNECT {} HTTP/1.1\r\n", self.target);
        // The value may be the credential: these copies are zeroed too.
        let fields: Vec<(&str, Zeroizing<String>)> = self
            .fields(authorization.map(Secret::expose))
            .into_iter()
            .map(|(name, value)| (name, Zeroizing::new(value)))
            .collect();
        // Sized up front: a buffer that grows leaves copies of what it held in freed memory.
        let len = request_line.len()
            + fields
                .iter()
                .map(|(name, value)| name.len() + value.len() + 4)
                .sum::<usize>()
            + 2;
        let mut head = Zeroizing::new(Vec::with_capacity(len));
        head.extend_from_slice(request_line.as_bytes());
        for (name, value) in &fields {
            for part in [name.as_bytes(), b": ", value.as_bytes(), b"\r\n"] {
                head.extend_from_slice(part);
            }
        }
        head.extend_from_slice(b"\r\n");
        head
    }

    /// The head as `-vv` shows it: credentials replaced by `<redacted>`.
    pub fn redacted(&self, authorization: Option<&Secret>) -> String {
        let mut out = format!("> CONNECT {} HTTP/1.1", self.target);
        for (name, value) in self.fields(authorization.map(Secret::expose)) {
            let shown = if is_credential_header(name) {
                // Keep the scheme name: it helps debugging and is no secret.
                let value = Zeroizing::new(value);
                format!("{} <redacted>", value.split(' ').next().unwrap_or(""))
            } else {
                value
            };
            let _ = write!(out, "\ngimlet: > {name}: {shown}");
        }
        out
    }
}

fn is_credential_header(name: &str) -> bool {
    name.eq_ignore_ascii_case("Proxy-Authorization") || name.eq_ignore_ascii_case("Authorization")
}

/// A parsed final reply head.
#[derive(Debug)]
pub struct Reply {
    /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    pub code: u16,
    /// The status line as received, made printable, for messages.
    pub status_line: String,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Reply {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.code)
    }

    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    fn has_token(&self, name: &str, token: &str) -> bool {
        self.values(name).any(|v| {
            v.split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
        })
    }

    /// Whether the proxy keeps the connection after this reply (RFC 9112 §9.3).
    pub fn keep_alive(&self) -> bool {
        if self.has_token("Connection", "close") || self.has_token("Proxy-Connection", "close") {
            return false;
        }
        self.version >= 1
            || self.has_token("Connection", "keep-alive")
            || self.has_token("Proxy-Connection", "keep-alive")
    }

    /// The body length when it is delimited by a single valid `Content-Length` and not chunked.
    pub fn content_length(&self) -> Option<u64> {
        if self.values("Transfer-Encoding").next().is_some() {
            return None;
        }
        let mut lengths = self.values("Content-Length");
        let first = std::str::from_utf8(lengths.next()?)
            .ok()?
            .trim()
            .parse()
            .ok()?;
        lengths
            .all(|v| {
                std::str::from_utf8(v)
                    .ok()
                    .and_then(|v| v.trim().parse().ok())
                    == Some(first)
            })
            .then_some(first)
    }

    /// Whether this reply asks for credentials: a 407, or the 401 with `WWW-Authenticate`
    /// that tinyproxy sends for wrong proxy credentials.
    pub fn is_auth_challenge(&self) -> bool {
        self.code == 407 || (self.code == 401 && self.values("WWW-Authenticate").next().is_some())
    }

    /// The authentication challenges offered (RFC 9110 §11.6.1), in order.
    pub fn challenges(&self) -> Vec<Challenge> {
        let header = if self.code == 401 {
            "WWW-Authenticate"
        } else {
            "Proxy-Authenticate"
        };
        auth::parse_challenges(self.values(header))
    }
}

/// Why a reply could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum ReplyError {
    NotHttp(String),
    Malformed(String, String),
    TooLarge,
    TooManyHeaders,
    ClosedBeforeReply,
    Truncated(usize),
}

impl std::fmt::Display for ReplyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplyError::NotHttp(line) if line.starts_with(['\u{15}', '\u{16}']) => write!(
                f,
                "the proxy's reply is not HTTP but looks like TLS (use an https:// proxy URL): {line:?}"
            ),
            ReplyError::NotHttp(line) => match crate::hop::socks::looks_like_socks(line.as_bytes())
            {
                Some(socks) => write!(
                    f,
                    "the proxy's reply is not HTTP but looks like {socks} (give it as socks5h:// or socks4a://): {line:?}"
                ),
                None => write!(f, "the proxy's reply is not HTTP: {line:?}"),
            },
            ReplyError::Malformed(why, line) => write!(f, "malformed reply ({why}): {line:?}"),
            ReplyError::TooLarge => write!(f, "reply head is larger than {MAX_HEAD} bytes"),
            ReplyError::TooManyHeaders => {
                write!(f, "reply has more than {MAX_HEADERS} header fields")
            }
            // What a SOCKS5 server such as dante does with an HTTP request.
            ReplyError::ClosedBeforeReply => write!(
                f,
                "the proxy closed the connection without replying (if it is a SOCKS proxy, give it as socks5h://HOST:PORT)"
            ),
            ReplyError::Truncated(n) => write!(
                f,
                "the proxy closed the connection in the middle of its reply head (after {n} bytes)"
            ),
        }
    }
}

impl std::error::Error for ReplyError {}

/// Reassembles reply heads from bytes in arbitrary pieces, skipping 1xx interim replies.
/// Scanning is incremental, so a proxy dripping bytes costs linear time.
#[derive(Default)]
pub struct ReplyReader {
    buf: Vec<u8>,
    /// Where the line-end scan resumes.
    pos: usize,
    line_start: usize,
    /// Where the current head's status line begins (after any leading blank lines).
    head_start: Option<usize>,
}

/// A final reply and the bytes that followed its head.
pub type Parsed = (Reply, Vec<u8>);

impl ReplyReader {
    pub fn new(carry: Vec<u8>) -> Self {
        ReplyReader {
            buf: carry,
            ..Default::default()
        }
    }

    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Adds bytes; returns the final reply once its head is complete.
    pub fn feed(&mut self, data: &[u8]) -> Result<Option<Parsed>, ReplyError> {
        self.buf.extend_from_slice(data);
        loop {
            let Some(end) = self.scan()? else {
                if self.buf.len() > MAX_HEAD {
                    return Err(ReplyError::TooLarge);
                }
                return Ok(None);
            };
            if end > MAX_HEAD {
                return Err(ReplyError::TooLarge);
            }
            let reply = parse_head(&self.buf[..end])?;
            debug!(
                "{}",
                shown_head("< ", &self.buf[self.head_start.unwrap_or(0)..end])
            );
            let rest = self.buf.split_off(end);
            if (100..200).contains(&reply.code) && reply.code != 101 {
                // RFC 9110 §15.2: interim replies precede the final one; drop and go on.
                *self = ReplyReader::new(rest);
                continue;
            }
            return Ok(Some((reply, rest)));
        }
    }

    /// The proxy closed the connection: say how far it got.
    pub fn eof(&self) -> ReplyError {
        if self.buf.iter().all(|b| matches!(b, b'\r' | b'\n')) {
            ReplyError::ClosedBeforeReply
        } else {
            ReplyError::Truncated(self.buf.len())
        }
    }

    /// Finds the end of the head: the first empty line (LF or CRLF) after the status line;
    /// leading empty lines are skipped, as httparse does. Rejects non-HTTP bytes as soon as
    /// the first few arrive, so pointing gimlet at an ssh server fails at once instead of
    /// waiting for a blank line that never comes.
    fn scan(&mut self) -> Result<Option<usize>, ReplyError> {
        let mut end = None;
        while let Some(off) = self.buf[self.pos..].iter().position(|&b| b == b'\n') {
            let nl = self.pos + off;
            let line_start = self.line_start;
            let blank = matches!(&self.buf[line_start..nl], b"" | b"\r");
            self.pos = nl + 1;
            self.line_start = nl + 1;
            match self.head_start {
                None if !blank => self.head_start = Some(line_start),
                Some(_) if blank => {
                    end = Some(nl + 1);
                    break;
                }
                _ => {}
            }
        }
        if end.is_none() {
            self.pos = self.buf.len();
        }
        let start = self.head_start.unwrap_or(self.line_start);
        let got = &self.buf[start..self.buf.len().min(start + 5)];
        let partial_blank = self.head_start.is_none() && got == b"\r";
        if !partial_blank && !b"HTTP/".starts_with(got) {
            return Err(ReplyError::NotHttp(self.first_line()));
        }
        Ok(end)
    }

    fn first_line(&self) -> String {
        let start = self.head_start.unwrap_or(self.line_start);
        let line = self.buf[start..]
            .split(|&b| b == b'\n')
            .next()
            .unwrap_or(&[]);
        printable(line)
    }
}

/// Bytes made safe to print on one line: control characters escaped, length capped.
pub fn printable(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim_end_matches(['\r', '\n']);
    let mut out: String = text.chars().take(200).collect();
    if text.chars().nth(200).is_some() {
        out.push('…');
    }
    out
}

/// Control characters escaped, everything else (quotes, backslashes) as the proxy sent it.
fn escape_controls(line: &str) -> String {
    line.chars()
        .flat_map(|c| {
            let escaped = c.is_control().then(|| c.escape_default());
            escaped
                .into_iter()
                .flatten()
                .chain((!c.is_control()).then_some(c))
        })
        .collect()
}

fn shown_head(prefix: &str, head: &[u8]) -> String {
    String::from_utf8_lossy(head)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| format!("{prefix}{}", escape_controls(l)))
        .collect::<Vec<_>>()
        .join("\ngimlet: ")
}

fn parse_head(head: &[u8]) -> Result<Reply, ReplyError> {
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut storage);
    let status_line = || {
        let first = head
            .split(|&b| b == b'\n')
            .find(|l| !matches!(*l, b"" | b"\r"))
            .unwrap_or(&[]);
        printable(first)
    };
    let parsed = httparse::ParserConfig::default()
        .allow_multiple_spaces_in_response_status_delimiters(true)
        .allow_spaces_after_header_name_in_responses(true)
        .allow_obsolete_multiline_headers_in_responses(true)
        .parse_response(&mut response, head);
    match parsed {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return Err(ReplyError::Malformed(
                "incomplete head".into(),
                status_line(),
            ));
        }
        Err(httparse::Error::TooManyHeaders) => return Err(ReplyError::TooManyHeaders),
        Err(e) => return Err(ReplyError::Malformed(e.to_string(), status_line())),
    }
    Ok(Reply {
        version: response.version.unwrap_or(0),
        code: response.code.unwrap_or(0),
        status_line: status_line(),
        headers: response
            .headers
            .iter()
            .map(|h| (h.name.to_owned(), h.value.to_vec()))
            .collect(),
    })
}

/// A connection the handshake runs over.
pub trait Conn: Read + Write {
    /// For `--fdpass`: looks at what has arrived without consuming it, so that the handshake
    /// takes exactly the reply head and leaves every tunnel byte in the socket for ssh.
    /// `None` when the connection reads normally.
    fn peek(&mut self, _buf: &mut [u8]) -> Option<io::Result<usize>> {
        None
    }
}

/// The outcome of a successful handshake.
pub struct Established<S> {
    pub stream: S,
    pub reply: Reply,
    /// Bytes that arrived after the reply head: the first tunnel bytes, for stdout.
    pub leftover: Vec<u8>,
}

/// Everything [`negotiate`] needs besides the connection.
pub struct Negotiation<'a, S> {
    pub request: Request<'a>,
    /// The proxy as `host:port`, for messages.
    pub proxy: &'a str,
    pub credentials: Option<Credentials>,
    /// The scheme `--proxy-auth` forces; `None` picks the strongest offered. A forced Basic
    /// with known credentials is sent with the first request.
    pub scheme: Option<Scheme>,
    /// Opens a fresh connection when the proxy closed the old one after a 407.
    pub reconnect: &'a mut dyn FnMut() -> Result<S, Error>,
    /// Gets credentials after a 407 (the terminal prompt); `None` when there is no way to ask.
    pub ask: &'a mut dyn FnMut() -> Result<Option<Credentials>, Error>,
    /// Kerberos for `Negotiate`; `None` leaves that scheme out.
    pub negotiate: Option<negotiate::Setup>,
}

/// Most authentication rounds in one handshake: NTLM needs two, a stale Digest nonce one more.
const MAX_ROUNDS: usize = 4;

/// Sends CONNECT, reads the reply, answers 407s with the chosen scheme, and returns the open
/// tunnel. Never loops: credentials the proxy rejects end the run.
pub fn negotiate<S: Conn>(mut stream: S, n: Negotiation<'_, S>) -> Result<Established<S>, Error> {
    let Negotiation {
        request,
        proxy,
        mut credentials,
        scheme: forced,
        reconnect,
        ask,
        mut negotiate,
    } = n;
    let target = request.target.to_string();
    let signed = auth::Target {
        method: "CONNECT",
        uri: &target,
    };
    let mut auth: Option<Authenticator> = None;
    let mut authorization: Option<Secret> = None;
    if forced == Some(Scheme::Basic) {
        if let Some(creds) = credentials.take() {
            info!(
                "sending Basic credentials for user \"{}\"{} with the first request (--proxy-auth basic)",
                creds.user,
                creds.source.from_phrase()
            );
            let (a, value) =
                Authenticator::start(Scheme::Basic, creds, None, &signed).kind(Kind::Auth)?;
            (auth, authorization) = (Some(a), Some(value));
        }
    }
    let mut carry = Vec::new();
    let mut reused = false;
    for _ in 0..=MAX_ROUNDS {
        debug!("{}", request.redacted(authorization.as_ref()));
        let sent = send_and_read(&mut stream, &request, authorization.as_ref(), carry, proxy);
        let (reply, leftover) = match sent {
            // A kept-alive connection may have been closed while the user typed: once, reconnect,
            // unless the scheme's state lives on that connection.
            Err(Failure::Closed(_))
                if reused
                    && !auth
                        .as_ref()
                        .is_some_and(Authenticator::bound_to_connection) =>
            {
                stream = reconnect()?;
                send_and_read(
                    &mut stream,
                    &request,
                    authorization.as_ref(),
                    Vec::new(),
                    proxy,
                )
                .map_err(Failure::into_error)?
            }
            other => other.map_err(Failure::into_error)?,
        };
        if reply.is_success() {
            if let Some(a) = &mut auth {
                a.finish(&reply.headers).kind_ctx(Kind::Auth, || {
                    format!("authenticating to proxy {proxy} with {}", a.scheme())
                })?;
            }
            return Ok(Established {
                stream,
                reply,
                leftover,
            });
        }
        if !reply.is_auth_challenge() {
            return Err(Error::msg(
                Kind::Refused,
                format_args!(
                    "proxy {proxy} refused CONNECT {target}: {:?}",
                    reply.status_line
                ),
            ));
        }
        let challenges = reply.challenges();
        let rejected = |a: &Authenticator| {
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
        };
        let mut kerberos_failure = None;
        let started = match auth {
            Some(_) => None,
            None => kerberos(
                &challenges,
                forced,
                negotiate.as_mut(),
                &mut kerberos_failure,
            )
            .kind_ctx(Kind::Auth, || {
                format!(
                    "authenticating to proxy {proxy} with Negotiate ({:?})",
                    reply.status_line
                )
            })?,
        };
        let value = match (&mut auth, started) {
            (Some(a), _) => a
                .next(&challenges, &signed)
                .kind_ctx(Kind::Auth, || {
                    format!("authenticating to proxy {proxy} with {}", a.scheme())
                })?
                .ok_or_else(|| rejected(a))?,
            (None, Some((a, value))) => {
                auth = Some(a);
                value
            }
            (None, None) => {
                // Negotiate was not started: choose among the others.
                let without_negotiate: Vec<Challenge> = challenges
                    .iter()
                    .filter(|c| !c.is(Scheme::Negotiate))
                    .cloned()
                    .collect();
                let choice = auth::choose(&without_negotiate, forced);
                let (scheme, challenge) = choice.map_err(|none| {
                    let wanted = match forced {
                        Some(s) => format!("{s} (forced by --proxy-auth)"),
                        None => "Negotiate, Digest, NTLM or Basic".to_owned(),
                    };
                    let why = match none {
                        NoScheme::Offered(_) => format!(
                            "proxy {proxy} requires authentication with {}, and gimlet speaks {wanted}",
                            // Every challenge, Negotiate too.
                            challenges.iter().map(|c| c.scheme.as_str()).collect::<Vec<_>>().join(", ")
                        ),
                        NoScheme::Digest(why) => format!(
                            "proxy {proxy} offers Digest only in a form gimlet cannot answer: {why}"
                        ),
                    };
                    Error::msg(
                        Kind::Auth,
                        format_args!(
                            "{why}: {:?}{}",
                            reply.status_line,
                            without_kerberos(&kerberos_failure)
                        ),
                    )
                })?;
                let creds = match credentials.take() {
                    Some(c) => c,
                    None => ask()?.ok_or_else(|| {
                        Error::msg(
                            Kind::Auth,
                            format_args!(
                                "proxy {proxy} requires authentication (offers {}): {:?}; no credentials given and no way to ask (use -U, --proxy-auth-file, {}, --netrc or an askpass program){}",
                                offered(&challenges),
                                reply.status_line,
                                crate::config::AUTH_ENV,
                                without_kerberos(&kerberos_failure),
                            ),
                        )
                    })?,
                };
                info!(
                    "proxy {proxy} asks for authentication (offers {}); answering with {scheme} for user \"{}\"{}",
                    offered(&challenges),
                    creds.user,
                    creds.source.from_phrase()
                );
                if scheme == Scheme::Basic && forced.is_none() {
                    info!(
                        "hint: --proxy-auth basic sends Basic credentials with the first request, saving this 407 round trip on every connection"
                    );
                }
                let (a, value) = Authenticator::start(scheme, creds, Some(challenge), &signed)
                    .kind_ctx(Kind::Auth, || {
                        format!("authenticating to proxy {proxy} with {scheme}")
                    })?;
                auth = Some(a);
                value
            }
        };
        authorization = Some(value);
        // Retry on the same connection when the proxy keeps it and the body can be skipped
        // exactly; otherwise on a new one (RFC 9110 §11.6.2 puts no rule on which). NTLM's
        // answer must go back on the connection that carried its challenge.
        let drained = match (reply.keep_alive(), reply.content_length()) {
            (true, Some(len)) if len <= MAX_DRAIN => {
                drain(&mut stream, leftover, len as usize).ok()
            }
            _ => None,
        };
        match drained {
            Some(rest) => {
                debug!("retrying on the same connection");
                carry = rest;
                reused = true;
            }
            None if auth
                .as_ref()
                .is_some_and(Authenticator::bound_to_connection) =>
            {
                return Err(Error::msg(
                    Kind::Auth,
                    format_args!(
                        "proxy {proxy} closed the connection in the middle of {} authentication: {:?}",
                        auth.as_ref().map_or(Scheme::Ntlm, Authenticator::scheme),
                        reply.status_line
                    ),
                ));
            }
            None => {
                debug!("retrying on a new connection");
                stream = reconnect()?;
                carry = Vec::new();
                reused = false;
            }
        }
    }
    Err(Error::msg(
        Kind::Auth,
        format_args!("proxy {proxy} kept asking for authentication after {MAX_ROUNDS} rounds"),
    ))
}

/// Starts Negotiate when the proxy offers it and `--proxy-auth` allows it. With `any` and
/// other schemes on offer, a missing ticket is no error: `Ok(None)`, the reason kept in
/// `failure` for the message should the other schemes fail too.
pub(crate) fn kerberos(
    challenges: &[Challenge],
    forced: Option<Scheme>,
    setup: Option<&mut negotiate::Setup>,
    failure: &mut Option<anyhow::Error>,
) -> anyhow::Result<Option<(Authenticator, Secret)>> {
    let offered = challenges.iter().any(|c| c.is(Scheme::Negotiate));
    let allowed = forced.is_none_or(|f| f == Scheme::Negotiate);
    let (true, true, Some(setup)) = (offered, allowed, setup) else {
        return Ok(None);
    };
    match Authenticator::negotiate(setup) {
        Ok(started) => {
            debug!(
                "answering with Negotiate authentication as {}",
                started.0.user()
            );
            Ok(Some(started))
        }
        Err(e) if forced.is_none() && challenges.iter().any(|c| !c.is(Scheme::Negotiate)) => {
            debug!("not answering with Negotiate: {e:#}");
            *failure = Some(e);
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Why Negotiate was passed over, for a message about the other schemes.
pub(crate) fn without_kerberos(failure: &Option<anyhow::Error>) -> String {
    failure
        .as_ref()
        .map(|e| format!("; and not Negotiate: {e:#}"))
        .unwrap_or_default()
}

/// The schemes a 407 offered, as the proxy named them: `Digest, Basic`.
fn offered(challenges: &[Challenge]) -> String {
    let names: Vec<&str> = challenges.iter().map(|c| c.scheme.as_str()).collect();
    names.join(", ")
}

/// A handshake failure, with "the proxy hung up before answering" kept apart so that a reused
/// connection can be replaced once.
enum Failure {
    Closed(Error),
    Other(Error),
}

impl Failure {
    fn into_error(self) -> Error {
        match self {
            Failure::Closed(e) | Failure::Other(e) => e,
        }
    }
}

fn send_and_read<S: Conn>(
    stream: &mut S,
    request: &Request<'_>,
    authorization: Option<&Secret>,
    carry: Vec<u8>,
    proxy: &str,
) -> Result<Parsed, Failure> {
    let head = request.to_bytes(authorization);
    if let Err(e) = stream.write_all(&head).and_then(|()| stream.flush()) {
        let closed = matches!(
            e.kind(),
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
        );
        let e = Error::new(io_kind(&e), e).context(format!("sending CONNECT to proxy {proxy}"));
        return Err(if closed {
            Failure::Closed(e)
        } else {
            Failure::Other(e)
        });
    }
    read_reply(stream, carry).map_err(|(closed, e)| {
        let e = e.context(format!("reading the reply from proxy {proxy}"));
        if closed {
            Failure::Closed(e)
        } else {
            Failure::Other(e)
        }
    })
}

/// Reads until the final reply head is complete. The bool in the error is true when the proxy
/// closed the connection before sending a single byte. When the connection can peek, only the
/// head is consumed and the returned leftover is empty: the rest stays in the socket.
fn read_reply<S: Conn>(stream: &mut S, carry: Vec<u8>) -> Result<Parsed, (bool, Error)> {
    let mut reader = ReplyReader::new(carry);
    let protocol = |e| (false, Error::new(Kind::Protocol, e));
    if let Some(parsed) = reader.feed(&[]).map_err(protocol)? {
        return Ok(parsed);
    }
    // A reply head is a few hundred bytes; a longer one takes more reads. Small, because the
    // buffer is zeroed on every start (16 KiB was 6% of the plain tunnel's start-up).
    let mut chunk = [0u8; 4 * 1024];
    loop {
        let (got, peeked) = match stream.peek(&mut chunk) {
            Some(r) => (r, true),
            None => (stream.read(&mut chunk), false),
        };
        let n = match got {
            Ok(0) => {
                let e = reader.eof();
                return Err((
                    e == ReplyError::ClosedBeforeReply,
                    Error::new(Kind::Protocol, e),
                ));
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let closed = reader.buffered() == 0 && e.kind() == io::ErrorKind::ConnectionReset;
                return Err((closed, Error::new(io_kind(&e), e)));
            }
        };
        let parsed = reader.feed(&chunk[..n]).map_err(protocol)?;
        if !peeked {
            if let Some(parsed) = parsed {
                return Ok(parsed);
            }
            continue;
        }
        // Peeked: take what belongs to the head (all of it while the head is incomplete).
        let (take, done) = match parsed {
            Some((reply, rest)) => (n - rest.len(), Some(reply)),
            None => (n, None),
        };
        stream
            .read_exact(&mut chunk[..take])
            .map_err(|e| (false, Error::new(Kind::Unreachable, e)))?;
        if let Some(reply) = done {
            return Ok((reply, Vec::new()));
        }
    }
}

/// An I/O failure during the handshake: a TLS alert or bad record is a TLS failure (a TLS 1.3
/// server's verdict on our client certificate arrives only now), anything else means the
/// proxy could not be reached or kept.
fn io_kind(e: &io::Error) -> Kind {
    if crate::tls::is_tls_error(e) {
        Kind::Tls
    } else {
        Kind::Unreachable
    }
}

/// Skips a 407 body of `len` bytes; returns what came after it.
fn drain<S: Read>(stream: &mut S, mut have: Vec<u8>, len: usize) -> io::Result<Vec<u8>> {
    while have.len() < len {
        let mut chunk = [0u8; 16 * 1024];
        let want = (len - have.len()).min(chunk.len());
        match stream.read(&mut chunk[..want]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => have.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(have.split_off(len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Host;
    use std::collections::VecDeque;

    /// Feeds `input` in the given pieces; returns the reply and leftover, or the error.
    fn feed_pieces(pieces: &[&[u8]]) -> Result<Option<(u16, String, Vec<u8>)>, ReplyError> {
        let mut reader = ReplyReader::new(Vec::new());
        for piece in pieces {
            if let Some((reply, rest)) = reader.feed(piece)? {
                // Bytes in later pieces belong to the tunnel too.
                let mut rest = rest;
                let done = pieces
                    .iter()
                    .position(|p| std::ptr::eq(*p, *piece))
                    .unwrap();
                for later in &pieces[done + 1..] {
                    rest.extend_from_slice(later);
                }
                return Ok(Some((reply.code, reply.status_line, rest)));
            }
        }
        Ok(None)
    }

    /// Runs one table row fed whole, byte by byte, and split in two at every offset: all must
    /// agree with `expect`.
    /// What feeding a reply should give: (code, status line, leftover), `None` for "need more".
    type Expect<'a> = Result<Option<(u16, &'a str, &'a [u8])>, ReplyError>;

    fn check(input: &[u8], expect: &Expect) {
        let expect = expect
            .as_ref()
            .map(|o| o.map(|(c, s, l)| (c, s.to_owned(), l.to_vec())))
            .map_err(|e| format!("{e:?}"));
        assert_eq!(
            feed_pieces(&[input]).map_err(|e| format!("{e:?}")),
            expect,
            "whole: {:?}",
            String::from_utf8_lossy(input)
        );
        // Split input must reach the same outcome; an early NotHttp quotes only what arrived.
        let variant = |e: ReplyError| format!("{e:?}").split('(').next().unwrap_or("").to_owned();
        let expect = expect.map_err(|e| e.split('(').next().unwrap_or("").to_owned());
        let run = |pieces: &[&[u8]]| feed_pieces(pieces).map_err(variant);
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(
            run(&bytes),
            expect,
            "byte by byte: {:?}",
            String::from_utf8_lossy(input)
        );
        for i in 0..=input.len() {
            let (a, b) = input.split_at(i);
            assert_eq!(
                run(&[a, b]),
                expect,
                "split at {i}: {:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn reply_table() {
        type Row<'a> = (
            &'a [u8],
            Result<Option<(u16, &'a str, &'a [u8])>, ReplyError>,
        );
        let rows: Vec<Row> = vec![
            (b"HTTP/1.1 200 Connection established\r\n\r\n", Ok(Some((200, "HTTP/1.1 200 Connection established", b"")))),
            (b"HTTP/1.0 200 OK\r\n\r\nSSH-2.0-x\r\n", Ok(Some((200, "HTTP/1.0 200 OK", b"SSH-2.0-x\r\n")))),
            (b"HTTP/1.1 200 OK\n\nbare-lf", Ok(Some((200, "HTTP/1.1 200 OK", b"bare-lf")))),
            (b"HTTP/1.1 200 OK\r\nVia: a\nX: b\r\n\n!", Ok(Some((200, "HTTP/1.1 200 OK", b"!")))),
            (b"HTTP/1.1 204 No Content\r\n\r\n", Ok(Some((204, "HTTP/1.1 204 No Content", b"")))),
            (b"HTTP/1.1 201\r\n\r\n", Ok(Some((201, "HTTP/1.1 201", b"")))),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nhello", Ok(Some((200, "HTTP/1.1 200 OK", b"hello")))),
            (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\nX", Ok(Some((200, "HTTP/1.1 200 OK", b"X")))),
            (b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 103 Early\r\nLink: x\r\n\r\nHTTP/1.1 200 OK\r\n\r\n", Ok(Some((200, "HTTP/1.1 200 OK", b"")))),
            (b"\r\nHTTP/1.1 200 OK\r\n\r\n", Ok(Some((200, "HTTP/1.1 200 OK", b"")))),
            (b"HTTP/1.1  200  OK\r\n\r\n", Ok(Some((200, "HTTP/1.1  200  OK", b"")))),
            (b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\n\r\n", Ok(Some((200, "HTTP/1.1 200 OK", b"")))),
            (b"HTTP/1.1 403 Forbidden\r\nContent-Length: 3\r\n\r\nno!", Ok(Some((403, "HTTP/1.1 403 Forbidden", b"no!")))),
            (b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n", Ok(Some((407, "HTTP/1.1 407 Proxy Authentication Required", b"")))),
            (b"HTTP/1.1 200 OK\r\n", Ok(None)),
            (b"HTTP/1.1 200 OK\r\nVia: squid\r\n", Ok(None)),
            (b"", Ok(None)),
            (b"SSH-2.0-OpenSSH_9.2\r\n", Err(ReplyError::NotHttp("SSH-2.0-OpenSSH_9.2".into()))),
            (b"\x16\x03\x01\x00", Err(ReplyError::NotHttp("\u{16}\u{3}\u{1}\u{0}".into()))),
            (b"HTTP\r\n\r\n", Err(ReplyError::NotHttp("HTTP".into()))),
            (b"HTTP/2 200\r\n\r\n", Err(ReplyError::Malformed("invalid HTTP version".into(), "HTTP/2 200".into()))),
            (b"HTTP/1.1 2x0 OK\r\n\r\n", Err(ReplyError::Malformed("invalid response status".into(), "HTTP/1.1 2x0 OK".into()))),
            (b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n", Err(ReplyError::Malformed("invalid header name".into(), "HTTP/1.1 200 OK".into()))),
        ];
        for (input, expect) in &rows {
            check(input, expect);
        }
    }

    #[test]
    fn oversized_heads_are_refused() {
        let mut big = b"HTTP/1.1 200 OK\r\n".to_vec();
        while big.len() <= MAX_HEAD {
            big.extend_from_slice(
                b"X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
            );
        }
        let mut reader = ReplyReader::new(Vec::new());
        let mut result = Ok(None);
        for chunk in big.chunks(1000) {
            result = reader.feed(chunk);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result.unwrap_err(), ReplyError::TooLarge);
        // Never completed, never terminated: the cap holds without a blank line too.
        let mut reader = ReplyReader::new(Vec::new());
        assert_eq!(reader.feed(b"HTTP/1.1 200 OK").unwrap().map(|_| ()), None);
        assert_eq!(
            reader.feed(&vec![b'a'; MAX_HEAD]).unwrap_err(),
            ReplyError::TooLarge
        );

        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        check(&many, &Err(ReplyError::TooManyHeaders));
    }

    #[test]
    fn eof_is_told_apart_from_truncation() {
        let reader = ReplyReader::new(Vec::new());
        assert_eq!(reader.eof(), ReplyError::ClosedBeforeReply);
        let mut reader = ReplyReader::new(Vec::new());
        reader.feed(b"HTTP/1.1 200 OK\r\nVia").unwrap();
        assert_eq!(reader.eof(), ReplyError::Truncated(20));
    }

    fn head(bytes: &[u8]) -> Reply {
        ReplyReader::new(Vec::new()).feed(bytes).unwrap().unwrap().0
    }

    #[test]
    fn keep_alive_and_body_length() {
        assert!(head(b"HTTP/1.1 407 x\r\n\r\n").keep_alive());
        assert!(!head(b"HTTP/1.1 407 x\r\nConnection: close\r\n\r\n").keep_alive());
        assert!(!head(b"HTTP/1.0 407 x\r\n\r\n").keep_alive());
        assert!(head(b"HTTP/1.0 407 x\r\nProxy-Connection: Keep-Alive\r\n\r\n").keep_alive());
        assert_eq!(
            head(b"HTTP/1.1 407 x\r\nContent-Length: 12\r\n\r\n").content_length(),
            Some(12)
        );
        assert_eq!(
            head(b"HTTP/1.1 407 x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
                .content_length(),
            None
        );
        assert_eq!(
            head(b"HTTP/1.1 407 x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n")
                .content_length(),
            None
        );
        assert_eq!(
            head(b"HTTP/1.1 407 x\r\nContent-Length: -1\r\n\r\n").content_length(),
            None
        );
    }

    #[test]
    fn challenges_come_from_every_header_and_401_reads_www_authenticate() {
        let reply = head(
            b"HTTP/1.1 407 x\r\nProxy-Authenticate: Digest realm=\"a, b\", nonce=\"n\", qop=\"auth\"\r\n\
              Proxy-Authenticate: Basic realm=\"r\", NTLM\r\nProxy-Authenticate: Negotiate\r\n\r\n",
        );
        let schemes: Vec<String> = reply.challenges().into_iter().map(|c| c.scheme).collect();
        assert_eq!(schemes, ["Digest", "Basic", "NTLM", "Negotiate"]);
        let reply = head(b"HTTP/1.0 401 x\r\nWWW-Authenticate: Basic realm=\"t\"\r\n\r\n");
        assert!(reply.is_auth_challenge());
        assert_eq!(reply.challenges()[0].scheme, "Basic");
        assert!(!head(b"HTTP/1.0 401 x\r\n\r\n").is_auth_challenge());
    }

    fn target() -> Endpoint {
        Endpoint {
            host: Host::Name("example.com".into()),
            port: 22,
        }
    }

    #[test]
    fn request_bytes_are_exact() {
        let target = target();
        let headers = [("X-Trace".to_owned(), "1".to_owned())];
        let request = Request {
            target: &target,
            user_agent: Some("gimlet/test"),
            headers: &headers,
        };
        let creds = Credentials::parse_pair("Aladdin:open sesame").unwrap();
        assert_eq!(
            &request.to_bytes(Some(&creds.basic_authorization()))[..],
            b"CONNECT example.com:22 HTTP/1.1\r\nHost: example.com:22\r\nUser-Agent: gimlet/test\r\n\
              Proxy-Authorization: Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==\r\nX-Trace: 1\r\n\r\n"
        );
        let shown = request.redacted(Some(&creds.basic_authorization()));
        assert!(
            shown.contains("Proxy-Authorization: Basic <redacted>"),
            "{shown}"
        );
        assert!(!shown.contains("QWxh"));

        let v6 = Endpoint {
            host: Host::Ip("::1".parse().unwrap()),
            port: 22,
        };
        let headers = [("host".to_owned(), "override:1".to_owned())];
        let request = Request {
            target: &v6,
            user_agent: None,
            headers: &headers,
        };
        assert_eq!(
            &request.to_bytes(None)[..],
            b"CONNECT [::1]:22 HTTP/1.1\r\nhost: override:1\r\n\r\n"
        );
    }

    /// One scripted proxy connection: the replies it gives, in pieces, and what it was sent.
    struct FakeConn {
        replies: VecDeque<Vec<u8>>,
        sent: std::rc::Rc<std::cell::RefCell<Vec<Vec<u8>>>>,
        /// Peek like `--fdpass` connections: what stays unread is what ssh would get.
        peeks: bool,
    }

    impl Read for FakeConn {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let Some(mut piece) = self.replies.pop_front() else {
                return Ok(0);
            };
            let n = piece.len().min(buf.len());
            buf[..n].copy_from_slice(&piece[..n]);
            if n < piece.len() {
                self.replies.push_front(piece.split_off(n));
            }
            Ok(n)
        }
    }

    impl Write for FakeConn {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.sent.borrow_mut().push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Conn for FakeConn {
        fn peek(&mut self, buf: &mut [u8]) -> Option<io::Result<usize>> {
            if !self.peeks {
                return None;
            }
            let piece = self.replies.front().map_or(&[][..], |p| p.as_slice());
            let n = piece.len().min(buf.len());
            buf[..n].copy_from_slice(&piece[..n]);
            Some(Ok(n))
        }
    }

    type Sent = std::rc::Rc<std::cell::RefCell<Vec<Vec<u8>>>>;

    /// Runs a negotiation against scripted connections (the first, then one per reconnect).
    fn negotiate_with(
        conns: Vec<Vec<&[u8]>>,
        creds: Option<&str>,
        asked: Option<&str>,
    ) -> (Result<Established<FakeConn>, Error>, Vec<Sent>, usize) {
        negotiate_forced(conns, creds, asked, None)
    }

    fn negotiate_forced(
        conns: Vec<Vec<&[u8]>>,
        creds: Option<&str>,
        asked: Option<&str>,
        scheme: Option<Scheme>,
    ) -> (Result<Established<FakeConn>, Error>, Vec<Sent>, usize) {
        negotiate_kerberos(conns, creds, asked, scheme, None)
    }

    fn negotiate_kerberos(
        conns: Vec<Vec<&[u8]>>,
        creds: Option<&str>,
        asked: Option<&str>,
        scheme: Option<Scheme>,
        kerberos: Option<negotiate::fake::FakeProvider>,
    ) -> (Result<Established<FakeConn>, Error>, Vec<Sent>, usize) {
        let sents: Vec<Sent> = conns.iter().map(|_| Default::default()).collect();
        let mut fakes = conns
            .into_iter()
            .zip(sents.iter())
            .map(|(replies, sent)| FakeConn {
                replies: replies.into_iter().map(<[u8]>::to_vec).collect(),
                sent: sent.clone(),
                peeks: false,
            });
        let first = fakes.next().unwrap();
        let mut asks = 0;
        let target = target();
        let result = negotiate(
            first,
            Negotiation {
                request: Request {
                    target: &target,
                    user_agent: None,
                    headers: &[],
                },
                proxy: "proxy:3128",
                credentials: creds.map(|c| Credentials::parse_pair(c).unwrap()),
                scheme,
                reconnect: &mut || {
                    fakes
                        .next()
                        .ok_or_else(|| Error::msg(Kind::Unreachable, "no more connections"))
                },
                ask: &mut || {
                    asks += 1;
                    Ok(asked.map(|c| Credentials::parse_pair(c).unwrap()))
                },
                negotiate: kerberos.map(|provider| negotiate::Setup {
                    service: ("HTTP@proxy".into(), negotiate::NameKind::HostBased),
                    provider: Box::new(provider),
                }),
            },
        );
        (result, sents, asks)
    }

    fn requests(sent: &Sent) -> Vec<String> {
        sent.borrow()
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect()
    }

    const AUTH_407_KEEP: &[u8] = b"HTTP/1.1 407 Proxy Authentication Required\r\n\
        Proxy-Authenticate: Basic realm=\"corp\"\r\nContent-Length: 4\r\n\r\nnope";

    #[test]
    fn success_returns_the_bytes_after_the_head() {
        let (r, sents, _) =
            negotiate_with(vec![vec![b"HTTP/1.1 200 OK\r\n\r\nSSH-2.0-x"]], None, None);
        let est = r.unwrap();
        assert_eq!(est.leftover, b"SSH-2.0-x");
        assert_eq!(requests(&sents[0]).len(), 1);
    }

    #[test]
    fn a_407_is_answered_on_the_same_connection_when_kept_alive() {
        let (r, sents, asks) = negotiate_with(
            vec![vec![AUTH_407_KEEP, b"HTTP/1.1 200 OK\r\n\r\n"]],
            None,
            Some("u:p"),
        );
        r.unwrap();
        assert_eq!(asks, 1);
        let sent = requests(&sents[0]);
        assert_eq!(sent.len(), 2);
        assert!(!sent[0].contains("Proxy-Authorization"));
        assert!(sent[1].contains("Proxy-Authorization: Basic dTpw\r\n"));
    }

    #[test]
    fn the_407_body_is_drained_even_when_split() {
        let (r, sents, _) = negotiate_with(
            vec![vec![
                b"HTTP/1.1 407 x\r\nProxy-Authenticate: Basic\r\nContent-Length: 6\r\n\r\nab",
                b"cd",
                b"efHTTP/1.1 200 OK\r\n\r\nT",
            ]],
            None,
            Some("u:p"),
        );
        assert_eq!(r.unwrap().leftover, b"T");
        assert_eq!(requests(&sents[0]).len(), 2);
    }

    #[test]
    fn a_407_with_connection_close_retries_on_a_new_connection() {
        let (r, sents, _) = negotiate_with(
            vec![
                vec![b"HTTP/1.1 407 x\r\nProxy-Authenticate: Basic\r\nConnection: close\r\n\r\n"],
                vec![b"HTTP/1.1 200 OK\r\n\r\n"],
            ],
            None,
            Some("u:p"),
        );
        r.unwrap();
        assert_eq!(requests(&sents[0]).len(), 1);
        assert!(requests(&sents[1])[0].contains("Proxy-Authorization: Basic dTpw"));
    }

    #[test]
    fn a_kept_connection_closed_meanwhile_is_replaced_once() {
        let (r, sents, _) = negotiate_with(
            vec![vec![AUTH_407_KEEP], vec![b"HTTP/1.1 200 OK\r\n\r\n"]],
            None,
            Some("u:p"),
        );
        r.unwrap();
        assert_eq!(requests(&sents[0]).len(), 2);
        assert_eq!(requests(&sents[1]).len(), 1);
    }

    #[test]
    fn rejected_credentials_fail_without_looping() {
        // Known credentials wait for the challenge, answer it once, and stop at the next 407.
        let (r, sents, asks) = negotiate_with(
            vec![vec![AUTH_407_KEEP, AUTH_407_KEEP, AUTH_407_KEEP]],
            Some("u:p"),
            Some("v:q"),
        );
        let e = r.err().unwrap();
        assert_eq!(e.kind(), Kind::Auth);
        assert_eq!(asks, 0);
        let sent = requests(&sents[0]);
        assert_eq!(sent.len(), 2);
        assert!(!sent[0].contains("Proxy-Authorization") && sent[1].contains("Basic dTpw"));
        assert!(
            e.to_string()
                .contains("rejected the Basic credentials for user \"u\""),
            "{e}"
        );

        let (r, sents, asks) =
            negotiate_with(vec![vec![AUTH_407_KEEP, AUTH_407_KEEP]], None, Some("v:q"));
        assert_eq!(r.err().unwrap().kind(), Kind::Auth);
        assert_eq!((asks, requests(&sents[0]).len()), (1, 2));
    }

    #[test]
    fn forced_basic_is_sent_preemptively() {
        let (r, sents, _) = negotiate_forced(
            vec![vec![b"HTTP/1.1 200 OK\r\n\r\n"]],
            Some("u:p"),
            None,
            Some(Scheme::Basic),
        );
        r.unwrap();
        assert!(requests(&sents[0])[0].contains("Proxy-Authorization: Basic dTpw\r\n"));
    }

    #[test]
    fn a_forced_scheme_the_proxy_does_not_offer_fails_clearly() {
        let (r, _, asks) = negotiate_forced(
            vec![vec![AUTH_407_KEEP]],
            Some("u:p"),
            None,
            Some(Scheme::Ntlm),
        );
        let text = r.err().unwrap().to_string();
        assert!(
            text.contains("requires authentication with Basic") && text.contains("NTLM (forced"),
            "{text}"
        );
        assert_eq!(asks, 0);
    }

    #[test]
    fn tinyproxys_401_for_wrong_credentials_is_an_auth_failure() {
        let (r, _, _) = negotiate_with(
            vec![vec![
                AUTH_407_KEEP,
                b"HTTP/1.0 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"tinyproxy\"\r\n\r\n",
            ]],
            Some("u:wrong"),
            None,
        );
        let e = r.err().unwrap();
        assert_eq!(e.kind(), Kind::Auth);
        assert!(e.to_string().contains("401 Unauthorized"), "{e}");
    }

    #[test]
    fn digest_is_preferred_and_a_stale_nonce_is_retried_once() {
        let digest_then_basic: &[u8] = b"HTTP/1.1 407 x\r\nProxy-Authenticate: Digest realm=\"r\", nonce=\"n1\", qop=\"auth\"\r\n\
            Proxy-Authenticate: Basic realm=\"r\"\r\nContent-Length: 0\r\n\r\n";
        let stale: &[u8] = b"HTTP/1.1 407 x\r\nProxy-Authenticate: Digest realm=\"r\", nonce=\"n2\", qop=\"auth\", stale=true\r\nContent-Length: 0\r\n\r\n";
        let (r, sents, _) = negotiate_with(
            vec![vec![digest_then_basic, stale, b"HTTP/1.1 200 OK\r\n\r\n"]],
            Some("u:p"),
            None,
        );
        r.unwrap();
        let sent = requests(&sents[0]);
        assert_eq!(sent.len(), 3);
        assert!(
            sent[1].contains("Proxy-Authorization: Digest username=\"u\"")
                && sent[1].contains("nonce=\"n1\"")
        );
        assert!(sent[2].contains("nonce=\"n2\""), "{}", sent[2]);
        assert!(!sent.iter().any(|r| r.contains("Basic")));

        // A second stale answer is a rejection, not a loop.
        let (r, sents, _) = negotiate_with(
            vec![vec![digest_then_basic, stale, stale]],
            Some("u:p"),
            None,
        );
        assert_eq!(r.err().unwrap().kind(), Kind::Auth);
        assert_eq!(requests(&sents[0]).len(), 3);
    }

    /// A type 2 message for the NTLM round trip (the MS-NLMP §4.2.4.3 example).
    const NTLM_TYPE2_B64: &str = "TlRMTVNTUAACAAAADAAMADgAAAAzgoriASNFZ4mrze8AAAAAAAAAACQAJABEAAAABgBwFwAAAA9TAGUAcgB2AGUAcgACAAwARABvAG0AYQBpAG4AAQAMAFMAZQByAHYAZQByAAAAAAA=";

    #[test]
    fn ntlm_runs_its_three_messages_on_one_connection() {
        let type2 = format!(
            "HTTP/1.1 407 x\r\nProxy-Authenticate: NTLM {NTLM_TYPE2_B64}\r\nContent-Length: 0\r\n\r\n"
        );
        // The first 407 closes: NTLM has not started, so a new connection is fine.
        let (r, sents, _) = negotiate_with(
            vec![
                vec![b"HTTP/1.1 407 x\r\nProxy-Authenticate: NTLM\r\nConnection: close\r\n\r\n"],
                vec![type2.as_bytes(), b"HTTP/1.1 200 OK\r\n\r\n"],
            ],
            Some("CORP\\alice:p\u{e4}ss"),
            None,
        );
        r.unwrap();
        let sent = requests(&sents[1]);
        assert_eq!(sent.len(), 2);
        assert!(
            sent[0].contains("Proxy-Authorization: NTLM TlRMTVNTUAABAAAA"),
            "{}",
            sent[0]
        );
        assert!(
            sent[1].contains("Proxy-Authorization: NTLM TlRMTVNTUAADAAAA"),
            "{}",
            sent[1]
        );

        // The challenge arrives with Connection: close: the answer cannot go anywhere.
        let first: &[u8] =
            b"HTTP/1.1 407 x\r\nProxy-Authenticate: NTLM\r\nContent-Length: 0\r\n\r\n";
        let closing = type2.replace("Content-Length: 0", "Connection: close");
        let (r, _, _) = negotiate_with(
            vec![vec![first, closing.as_bytes()], vec![]],
            Some("alice:p"),
            None,
        );
        let text = r.err().unwrap().to_string();
        assert!(text.contains("in the middle of NTLM"), "{text}");

        // A garbage challenge is an auth error, not a panic.
        let garbage: &[u8] =
            b"HTTP/1.1 407 x\r\nProxy-Authenticate: NTLM AAAA\r\nContent-Length: 0\r\n\r\n";
        let (r, _, _) = negotiate_with(vec![vec![first, garbage]], Some("alice:p"), None);
        assert_eq!(r.err().unwrap().kind(), Kind::Auth);
    }

    const NEGOTIATE_407: &[u8] = b"HTTP/1.1 407 x\r\nProxy-Authenticate: Negotiate\r\n\
        Proxy-Authenticate: Basic realm=\"r\"\r\nContent-Length: 0\r\n\r\n";

    #[test]
    fn negotiate_runs_its_legs_on_one_connection_and_verifies_the_final_token() {
        use negotiate::fake::*;
        let provider = FakeProvider::new(
            ticket(),
            vec![
                (None, step(b"first", false)),
                (Some(b"more".to_vec()), step(b"second", false)),
                (Some(b"final".to_vec()), step(b"", true)),
            ],
        );
        let seen = provider.seen.clone();
        let continuation: &[u8] = b"HTTP/1.1 407 x\r\nProxy-Authenticate: Negotiate bW9yZQ==\r\n\
            Content-Length: 0\r\n\r\n";
        let done: &[u8] =
            b"HTTP/1.1 200 OK\r\nProxy-Authentication-Info: Negotiate ZmluYWw=\r\n\r\nSSH";
        let (r, sents, asks) = negotiate_kerberos(
            vec![vec![NEGOTIATE_407, continuation, done]],
            None,
            None,
            None,
            Some(provider),
        );
        assert_eq!(r.unwrap().leftover, b"SSH");
        let sent = requests(&sents[0]);
        assert_eq!(sent.len(), 3);
        assert!(
            sent[1].contains("Proxy-Authorization: Negotiate Zmlyc3Q=\r\n"),
            "{}",
            sent[1]
        );
        assert!(
            sent[2].contains("Proxy-Authorization: Negotiate c2Vjb25k\r\n"),
            "{}",
            sent[2]
        );
        assert_eq!(seen.lock().unwrap().len(), 3, "the final token was stepped");
        assert_eq!(asks, 0);

        // A continuation on a connection the proxy then closes cannot be answered elsewhere.
        let provider = FakeProvider::new(
            ticket(),
            vec![
                (None, step(b"first", false)),
                (Some(b"more".to_vec()), step(b"2", false)),
            ],
        );
        let closing: &[u8] =
            b"HTTP/1.1 407 x\r\nProxy-Authenticate: Negotiate bW9yZQ==\r\nConnection: close\r\n\r\n";
        let (r, _, _) = negotiate_kerberos(
            vec![vec![NEGOTIATE_407, closing], vec![]],
            None,
            None,
            None,
            Some(provider),
        );
        let text = r.err().unwrap().to_string();
        assert!(
            text.contains("in the middle of Negotiate authentication"),
            "{text}"
        );
    }

    #[test]
    fn a_final_negotiate_token_that_does_not_verify_fails() {
        use negotiate::fake::*;
        let provider = FakeProvider::new(
            ticket(),
            vec![
                (None, step(b"first", false)),
                (
                    Some(b"final".to_vec()),
                    Err(error(Problem::BadToken, "Invalid token was supplied")),
                ),
            ],
        );
        let done: &[u8] =
            b"HTTP/1.1 200 OK\r\nProxy-Authentication-Info: Negotiate ZmluYWw=\r\n\r\n";
        let (r, _, _) = negotiate_kerberos(
            vec![vec![NEGOTIATE_407, done]],
            None,
            None,
            None,
            Some(provider),
        );
        let e = r.err().unwrap();
        assert_eq!(e.kind(), Kind::Auth);
        let text = e.to_string();
        assert!(
            text.contains("final Negotiate token does not verify: Invalid token"),
            "{text}"
        );

        // Without a final token there is nothing to verify: the tunnel is up.
        let provider = FakeProvider::new(ticket(), vec![(None, step(b"first", false))]);
        let (r, _, _) = negotiate_kerberos(
            vec![vec![NEGOTIATE_407, b"HTTP/1.1 200 OK\r\n\r\n"]],
            None,
            None,
            None,
            Some(provider),
        );
        r.unwrap();
    }

    #[test]
    fn malformed_or_refused_negotiate_tokens_are_auth_failures() {
        use negotiate::fake::*;
        let bad: &[u8] =
            b"HTTP/1.1 407 x\r\nProxy-Authenticate: Negotiate YWJ\r\nContent-Length: 0\r\n\r\n";
        let provider = FakeProvider::new(ticket(), vec![(None, step(b"first", false))]);
        let (r, _, _) = negotiate_kerberos(
            vec![vec![NEGOTIATE_407, bad]],
            None,
            None,
            None,
            Some(provider),
        );
        let e = r.err().unwrap();
        assert_eq!(e.kind(), Kind::Auth);
        assert!(
            e.to_string()
                .contains("decoding the proxy's Negotiate token"),
            "{e}"
        );

        // A bare Negotiate after our token: the ticket was refused.
        let provider = FakeProvider::new(ticket(), vec![(None, step(b"first", false))]);
        let (r, _, _) = negotiate_kerberos(
            vec![vec![NEGOTIATE_407, NEGOTIATE_407]],
            Some("alice:pw"),
            None,
            None,
            Some(provider),
        );
        let text = r.err().unwrap().to_string();
        assert!(
            text.contains("rejected the Negotiate credentials for user \"alice@LAB.TEST\""),
            "{text}"
        );
    }

    #[test]
    fn any_prefers_negotiate_with_a_ticket_and_falls_back_without_one() {
        use negotiate::fake::*;
        let ok: &[u8] = b"HTTP/1.1 200 OK\r\n\r\n";
        let provider = FakeProvider::new(ticket(), vec![(None, step(b"first", false))]);
        let (r, sents, _) = negotiate_kerberos(
            vec![vec![NEGOTIATE_407, ok]],
            Some("alice:pw"),
            None,
            None,
            Some(provider),
        );
        r.unwrap();
        assert!(requests(&sents[0])[1].contains("Proxy-Authorization: Negotiate "));

        // No ticket, a password: Basic.
        let no_ticket = || {
            FakeProvider::new(
                Err(error(
                    Problem::NoTicket,
                    "No Kerberos credentials available",
                )),
                vec![],
            )
        };
        let (r, sents, _) = negotiate_kerberos(
            vec![vec![NEGOTIATE_407, ok]],
            Some("alice:pw"),
            None,
            None,
            Some(no_ticket()),
        );
        r.unwrap();
        assert!(requests(&sents[0])[1].contains("Proxy-Authorization: Basic "));

        // Neither: the message says to run kinit.
        let (r, _, _) = negotiate_kerberos(
            vec![vec![NEGOTIATE_407]],
            None,
            None,
            None,
            Some(no_ticket()),
        );
        let text = r.err().unwrap().to_string();
        assert!(
            text.contains("no Kerberos ticket for LAB.TEST: run kinit"),
            "{text}"
        );

        // Forced, or the only scheme offered: the same hint, exit status 5.
        let only: &[u8] = b"HTTP/1.1 407 Proxy Authentication Required\r\n\
            Proxy-Authenticate: Negotiate\r\n\r\n";
        for (offered, forced) in [(NEGOTIATE_407, Some(Scheme::Negotiate)), (only, None)] {
            let (r, _, asks) = negotiate_kerberos(
                vec![vec![offered]],
                Some("alice:pw"),
                None,
                forced,
                Some(no_ticket()),
            );
            let e = r.err().unwrap();
            assert_eq!((e.kind(), asks), (Kind::Auth, 0));
            assert_eq!(
                e.to_string(),
                format!(
                    "authenticating to proxy proxy:3128 with Negotiate ({:?}): no Kerberos ticket for LAB.TEST: run kinit (No Kerberos credentials available)",
                    if forced.is_some() {
                        "HTTP/1.1 407 x"
                    } else {
                        "HTTP/1.1 407 Proxy Authentication Required"
                    }
                )
            );
        }
    }

    #[test]
    fn no_way_to_ask_names_the_offered_schemes() {
        let (r, _, _) = negotiate_with(vec![vec![AUTH_407_KEEP]], None, None);
        let e = r.err().unwrap();
        assert_eq!(e.kind(), Kind::Auth);
        let text = e.to_string();
        assert!(
            text.contains("offers Basic") && text.contains("407 Proxy Authentication Required"),
            "{text}"
        );

        let (r, _, asks) = negotiate_with(
            vec![vec![b"HTTP/1.1 407 x\r\nProxy-Authenticate: Negotiate\r\nProxy-Authenticate: Kerberos\r\n\r\n"]],
            None,
            Some("u:p"),
        );
        let text = r.err().unwrap().to_string();
        assert!(text.contains("with Negotiate, Kerberos"), "{text}");
        assert_eq!(asks, 0);
    }

    #[test]
    fn refusals_quote_the_status_line() {
        for (reply, kind) in [
            (&b"HTTP/1.1 403 Forbidden\r\n\r\n"[..], Kind::Refused),
            (b"HTTP/1.0 503 Service Unavailable\r\n\r\n", Kind::Refused),
            (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", Kind::Refused),
            (b"HTTP/1.1 200 OK\r\nVia", Kind::Protocol),
            (b"", Kind::Protocol),
            (b"garbage\r\n", Kind::Protocol),
        ] {
            let (r, _, _) = negotiate_with(vec![vec![reply]], None, None);
            let e = r.err().unwrap();
            assert_eq!(e.kind(), kind, "{e}");
            let text = e.to_string();
            assert!(text.contains("proxy:3128"), "{text}");
            if kind == Kind::Refused {
                let line = printable(reply);
                let line = line.lines().next().unwrap();
                assert!(
                    text.contains(line) && text.contains("example.com:22"),
                    "{text}"
                );
            }
        }
    }

    #[test]
    fn exact_mode_consumes_only_the_reply_heads() {
        let pieces = [
            &b"HTTP/1.1 100 Cont"[..],
            b"inue\r\n\r\nHTTP/1.1 200 OK\r\n",
            b"\r\nSSH-2.0-x\r\n",
        ];
        let mut conn = FakeConn {
            replies: pieces.iter().map(|p| p.to_vec()).collect(),
            sent: Default::default(),
            peeks: true,
        };
        let (reply, leftover) = read_reply(&mut conn, Vec::new())
            .map_err(|(_, e)| e)
            .unwrap();
        assert_eq!(reply.code, 200);
        assert!(leftover.is_empty());
        let rest: Vec<u8> = conn.replies.into_iter().flatten().collect();
        assert_eq!(rest, b"SSH-2.0-x\r\n");
    }

    #[test]
    fn hostile_replies_never_panic_and_respect_the_cap() {
        // Mutations of real replies and plain noise, each fed in random pieces: the reader
        // must answer (a reply, "need more", or an error) without panicking, never buffer
        // past the cap, and reach the same outcome as when fed whole.
        let seeds: [&[u8]; 4] = [
            b"HTTP/1.1 200 Connection established\r\nVia: 1.1 squid\r\n\r\nSSH-2.0-x",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 407 x\r\nProxy-Authenticate: Basic realm=\"r\"\r\nContent-Length: 3\r\n\r\nabc",
            b"HTTP/1.1 403 Forbidden\n\n",
            b"\r\nHTTP/1.1  204  \r\nX-Folded: a\r\n b\r\n\r\n",
        ];
        let mut rng = crate::auth::robustness::Rng::new(3);
        for round in 0..20_000 {
            let input = match round % 5 {
                4 => (0..rng.below(300)).map(|_| rng.next() as u8).collect(),
                i => rng.mutate(seeds[i]),
            };
            let whole = {
                let mut r = ReplyReader::new(Vec::new());
                r.feed(&input)
                    .map(|o| o.map(|(reply, rest)| (reply.code, rest)))
            };
            let mut r = ReplyReader::new(Vec::new());
            let mut rest = &input[..];
            let mut pieced = Ok(None);
            while !rest.is_empty() {
                let (piece, tail) = rest.split_at(1 + rng.below(rest.len()));
                rest = tail;
                pieced = r.feed(piece).map(|o| {
                    o.map(|(reply, mut left)| {
                        left.extend_from_slice(tail);
                        (reply.code, left)
                    })
                });
                if !matches!(pieced, Ok(None)) {
                    break;
                }
                assert!(r.buffered() <= MAX_HEAD, "buffered past the cap");
            }
            // An early NotHttp may quote less of the line; the variant and outcome must agree.
            let shape = |x: &Result<Option<(u16, Vec<u8>)>, ReplyError>| match x {
                Ok(v) => format!("{v:?}"),
                Err(e) => format!("{e:?}").split('(').next().unwrap_or("").to_owned(),
            };
            assert_eq!(
                shape(&whole),
                shape(&pieced),
                "input {:?}",
                String::from_utf8_lossy(&input)
            );
        }
    }
}
