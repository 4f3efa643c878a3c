//! The `-D` front: what a client asks of gimlet's local proxy port, sans-IO.
//!
//! Bytes from the client go in ([`Front::feed`]); out comes what to send back and, once the
//! request is whole, where the client wants to go ([`Ask`]). Nothing here reads or writes a
//! socket, so tests feed every request whole, byte by byte and split at every offset.
//!
//! One port speaks three protocols, told apart by the first byte (as Dante and ssh -D do):
//! `0x05` is SOCKS5 (RFC 1928, CONNECT only, "no authentication"), `0x04` is SOCKS4 or SOCKS4a
//! (a destination IP of `0.0.0.x` with a name after the user id), and anything else is read as
//! an HTTP/1.1 request head (RFC 9112 §3; parsed by httparse) of which `CONNECT host:port`
//! opens a tunnel and any other method with an absolute-form `http://` target is a request to
//! forward ([`Protocol::HttpForward`], its body framed by [`super::http1`]). A request head
//! larger than [`MAX_HEAD`] or with more than [`MAX_HEADERS`] fields gets `431`, a malformed
//! one (or one whose body cannot be delimited safely) `400`, an `https://` target `501`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use zeroize::Zeroizing;

use super::http1::{self, Field, Framing};
use crate::config::{Endpoint, Host, parse_host};

/// The longest request head (or SOCKS request) accepted.
pub const MAX_HEAD: usize = 16 * 1024;
/// The most header fields accepted in an HTTP request head.
pub const MAX_HEADERS: usize = 64;

/// Which protocol the client spoke: it decides the shape of the reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Socks4,
    Socks4a,
    Socks5,
    HttpConnect,
    /// An absolute-form request (`GET http://host/path HTTP/1.1`), forwarded as a message.
    HttpForward,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Socks4 => "SOCKS4",
            Protocol::Socks4a => "SOCKS4a",
            Protocol::Socks5 => "SOCKS5",
            Protocol::HttpConnect => "CONNECT",
            Protocol::HttpForward => "HTTP",
        })
    }
}

/// A whole request: connect to `target`, then relay.
#[derive(Debug, PartialEq, Eq)]
pub struct Ask {
    pub protocol: Protocol,
    pub target: Endpoint,
    /// Bytes the client sent after its request (a TLS ClientHello sent early): the first
    /// bytes for the destination.
    pub leftover: Vec<u8>,
    /// For [`Protocol::HttpForward`]: the request to forward (its body is in `leftover` and
    /// what follows).
    pub http: Option<HttpRequest>,
}

/// An absolute-form request head, parsed.
#[derive(Debug, PartialEq, Eq)]
pub struct HttpRequest {
    pub method: String,
    /// The target in origin-form: `/path?query`.
    pub path: String,
    /// HTTP/1.`minor`.
    pub minor: u8,
    pub fields: Vec<Field>,
    pub framing: Framing,
}

/// What to do after feeding bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send `send` (possibly nothing) to the client, then wait for more bytes.
    More { send: Vec<u8> },
    /// The request is whole: send `send` first (SOCKS5's method choice when the request came
    /// in the same read), then connect.
    Ask { send: Vec<u8>, ask: Ask },
    /// Send `send` and close; `why` is for the log.
    Refuse { send: Vec<u8>, why: String },
}

/// Why a tunnel could not be opened, as a client's protocol can say it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Anything else (SOCKS5 0x01, HTTP 502).
    General,
    /// Refused by gimlet's rules: a loop, a client not allowed (0x02, 403).
    NotAllowed,
    /// The destination (or the way to it) could not be reached (0x04, 502).
    Unreachable,
    /// The destination or a proxy refused the connection (0x05, 502).
    Refused,
    /// No answer in time (0x06, 504).
    Timeout,
    /// The upstream proxy wants credentials gimlet does not have or were rejected (0x02, 407).
    Auth,
}

#[derive(Debug)]
enum State {
    /// Nothing read yet: the first byte picks the protocol.
    First,
    /// SOCKS5: waiting for the method list.
    Greeting,
    /// SOCKS5: username/password chosen, waiting for them (RFC 1929).
    Auth5,
    /// SOCKS5: method chosen, waiting for the request.
    Request5,
    Socks4,
    Http,
    /// An answer has been given; more bytes are not looked at.
    Done,
}

/// The user name and password a `-D` port asks its clients for (`--client-auth-file`).
pub struct ClientAuth {
    pub user: String,
    pub password: Zeroizing<String>,
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ClientAuth {{ user: {:?}, password: <redacted> }}",
            self.user
        )
    }
}

impl ClientAuth {
    /// Whether `user` and `password` are these, comparing every byte whatever differs first.
    fn matches(&self, user: &[u8], password: &[u8]) -> bool {
        let same = |a: &[u8], b: &[u8]| {
            a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
        };
        same(user, self.user.as_bytes()) & same(password, self.password.as_bytes())
    }

    /// Whether a `Proxy-Authorization` value is Basic with these credentials (RFC 7617).
    fn basic(&self, value: &[u8]) -> bool {
        use base64::Engine;
        let Some(token) = value
            .strip_prefix(b"Basic ")
            .or_else(|| value.strip_prefix(b"basic "))
        else {
            return false;
        };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(token.trim_ascii())
        else {
            return false;
        };
        let decoded = Zeroizing::new(decoded);
        match decoded.iter().position(|&b| b == b':') {
            Some(colon) => self.matches(&decoded[..colon], &decoded[colon + 1..]),
            None => false,
        }
    }
}

/// One client's request, as it arrives.
#[derive(Debug)]
pub struct Front {
    buf: Vec<u8>,
    state: State,
    auth: Option<std::sync::Arc<ClientAuth>>,
}

impl Drop for Front {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.buf);
    }
}

impl Default for Front {
    fn default() -> Self {
        Front::new()
    }
}

impl Front {
    pub fn new() -> Front {
        Front {
            buf: Vec::new(),
            state: State::First,
            auth: None,
        }
    }

    /// A front that asks every client for `auth`'s user name and password: SOCKS5 with
    /// username/password (RFC 1929), HTTP with `Proxy-Authorization: Basic`; SOCKS4, which
    /// cannot send a password, is refused.
    pub fn with_auth(auth: Option<std::sync::Arc<ClientAuth>>) -> Front {
        Front {
            buf: Vec::new(),
            state: State::First,
            auth,
        }
    }

    /// For the next request on a kept HTTP connection: HTTP only.
    pub fn http_only(auth: Option<std::sync::Arc<ClientAuth>>) -> Front {
        Front {
            buf: Vec::new(),
            state: State::Http,
            auth,
        }
    }

    /// Takes the bytes just read and says what to do. After `Ask` or `Refuse`, further calls
    /// are refused (the answer has been given).
    pub fn feed(&mut self, data: &[u8]) -> Step {
        self.buf.extend_from_slice(data);
        let mut send = Vec::new();
        loop {
            let step = match self.state {
                State::First => match self.buf.first() {
                    None => return Step::More { send },
                    Some(5) => {
                        self.state = State::Greeting;
                        continue;
                    }
                    Some(4) => {
                        self.state = State::Socks4;
                        continue;
                    }
                    Some(_) => {
                        self.state = State::Http;
                        continue;
                    }
                },
                State::Greeting => self.greeting(&mut send),
                State::Auth5 => self.auth5(&mut send),
                State::Request5 => self.request5(),
                State::Socks4 => self.socks4(),
                State::Http => self.http(),
                State::Done => Some(Err((Vec::new(), "bytes after the answer".to_owned()))),
            };
            match step {
                // Progress within one read (SOCKS5 greeting and request together): go on.
                Some(Ok(None)) => continue,
                None => {
                    if self.buf.len() > MAX_HEAD {
                        self.state = State::Done;
                        let (reply, why) = self.too_long();
                        send.extend(reply);
                        return Step::Refuse { send, why };
                    }
                    return Step::More { send };
                }
                Some(Ok(Some((protocol, target, used, http)))) => {
                    let leftover = self.buf.split_off(used);
                    // The head may hold the client's Proxy-Authorization.
                    zeroize::Zeroize::zeroize(&mut self.buf);
                    self.state = State::Done;
                    return Step::Ask {
                        send,
                        ask: Ask {
                            protocol,
                            target,
                            leftover,
                            http,
                        },
                    };
                }
                Some(Err((reply, why))) => {
                    self.state = State::Done;
                    send.extend(reply);
                    return Step::Refuse { send, why };
                }
            }
        }
    }

    fn too_long(&self) -> (Vec<u8>, String) {
        let why = format!("request longer than {MAX_HEAD} bytes");
        match self.buf.first() {
            Some(5) => (reply5(0x01), why),
            Some(4) => (reply4(false), why),
            _ => (
                http_error(431, "Request Header Fields Too Large", &why),
                why,
            ),
        }
    }

    /// SOCKS5 method selection (RFC 1928 §3): "no authentication" (0x00), or
    /// username/password (0x02) when the port asks its clients for them.
    fn greeting(&mut self, send: &mut Vec<u8>) -> Parsed {
        let n = *self.buf.get(1)? as usize;
        let methods = self.buf.get(2..2 + n)?;
        let (method, next) = match self.auth {
            Some(_) => (0x02, State::Auth5),
            None => (0x00, State::Request5),
        };
        if !methods.contains(&method) {
            let why = match method {
                0x02 => {
                    "SOCKS5 client offers no username/password authentication, which this port requires"
                }
                _ => "SOCKS5 client offers no method gimlet accepts (it wants no authentication)",
            };
            return Some(Err((vec![5, 0xFF], why.to_owned())));
        }
        send.extend([5, method]);
        self.buf.drain(..2 + n);
        self.state = next;
        Some(Ok(None))
    }

    /// SOCKS5 username/password (RFC 1929 §2): VER ULEN UNAME PLEN PASSWD.
    fn auth5(&mut self, send: &mut Vec<u8>) -> Parsed {
        let b = &self.buf;
        let ulen = *b.get(1)? as usize;
        let plen = *b.get(2 + ulen)? as usize;
        let end = 3 + ulen + plen;
        b.get(..end)?;
        let ok = b[0] == 1
            && self
                .auth
                .as_ref()
                .is_some_and(|a| a.matches(&b[2..2 + ulen], &b[3 + ulen..end]));
        // The password is in the buffer: gone before anything else happens.
        zeroize::Zeroize::zeroize(&mut self.buf[..end]);
        self.buf.drain(..end);
        if !ok {
            return Some(Err((
                vec![1, 1],
                "SOCKS5 client gave a wrong user name or password".to_owned(),
            )));
        }
        send.extend([1, 0]);
        self.state = State::Request5;
        Some(Ok(None))
    }

    /// SOCKS5 request (RFC 1928 §4): VER CMD RSV ATYP DST.ADDR DST.PORT.
    fn request5(&mut self) -> Parsed {
        let b = &self.buf;
        let head = b.get(..4)?;
        if head[0] != 5 {
            return Some(Err((
                reply5(0x01),
                format!("SOCKS5 request with version {}", head[0]),
            )));
        }
        if head[1] != 1 {
            return Some(Err((
                reply5(0x07),
                format!("SOCKS5 command {} is not supported (only CONNECT)", head[1]),
            )));
        }
        let (host, at) = match head[3] {
            1 => {
                let a: [u8; 4] = b.get(4..8)?.try_into().ok()?;
                (Host::Ip(IpAddr::V4(Ipv4Addr::from(a))), 8)
            }
            4 => {
                let a: [u8; 16] = b.get(4..20)?.try_into().ok()?;
                (Host::Ip(IpAddr::V6(Ipv6Addr::from(a))), 20)
            }
            3 => {
                let len = *b.get(4)? as usize;
                let name = b.get(5..5 + len)?;
                match name_host(name) {
                    Ok(h) => (h, 5 + len),
                    Err(why) => return Some(Err((reply5(0x01), why))),
                }
            }
            t => {
                return Some(Err((
                    reply5(0x08),
                    format!("SOCKS5 address type {t} is not supported"),
                )));
            }
        };
        let port = u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?);
        Some(Ok(Some((
            Protocol::Socks5,
            Endpoint { host, port },
            at + 2,
            None,
        ))))
    }

    /// SOCKS4 (and 4a): VN CD DSTPORT DSTIP USERID NUL [HOSTNAME NUL].
    fn socks4(&mut self) -> Parsed {
        let b = &self.buf;
        let head = b.get(..8)?;
        if self.auth.is_some() {
            return Some(Err((
                reply4(false),
                "SOCKS4 cannot send a password, which this port requires (use SOCKS5)".to_owned(),
            )));
        }
        if head[1] != 1 {
            return Some(Err((
                reply4(false),
                format!("SOCKS4 command {} is not supported (only CONNECT)", head[1]),
            )));
        }
        let port = u16::from_be_bytes([head[2], head[3]]);
        let ip = Ipv4Addr::new(head[4], head[5], head[6], head[7]);
        let user_end = 8 + b[8..].iter().position(|&c| c == 0)?;
        // SOCKS4a: 0.0.0.x with x != 0 means "the name follows".
        let a = ip.octets()[..3] == [0, 0, 0] && ip.octets()[3] != 0;
        if !a {
            return Some(Ok(Some((
                Protocol::Socks4,
                Endpoint {
                    host: Host::Ip(IpAddr::V4(ip)),
                    port,
                },
                user_end + 1,
                None,
            ))));
        }
        let name_end = user_end + 1 + b[user_end + 1..].iter().position(|&c| c == 0)?;
        match name_host(&b[user_end + 1..name_end]) {
            Ok(host) => Some(Ok(Some((
                Protocol::Socks4a,
                Endpoint { host, port },
                name_end + 1,
                None,
            )))),
            Err(why) => Some(Err((reply4(false), why))),
        }
    }

    /// An HTTP/1.x request head (RFC 9112 §2.2: bare LF accepted, as httparse does).
    fn http(&mut self) -> Parsed {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        // Only the first MAX_HEAD bytes may hold the head, however the bytes were split.
        let window = &self.buf[..self.buf.len().min(MAX_HEAD)];
        let used = match req.parse(window) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if window.len() == MAX_HEAD => {
                let (reply, why) = self.too_long();
                return Some(Err((reply, why)));
            }
            Ok(httparse::Status::Partial) => return None,
            Err(httparse::Error::TooManyHeaders) => {
                let why = format!("request head with more than {MAX_HEADERS} header fields");
                return Some(Err((
                    http_error(431, "Request Header Fields Too Large", &why),
                    why,
                )));
            }
            Err(e) => {
                let why = format!("malformed HTTP request head: {e}");
                return Some(Err((http_error(400, "Bad Request", &why), why)));
            }
        };
        let method = req.method.unwrap_or_default();
        let path = req.path.unwrap_or_default();
        if let Some(auth) = &self.auth {
            let given = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("Proxy-Authorization"));
            if !given.is_some_and(|h| auth.basic(h.value)) {
                let why = match given {
                    Some(_) => "wrong user name or password in Proxy-Authorization",
                    None => "no Proxy-Authorization (this port asks its clients for a password)",
                };
                return Some(Err((http_407(why), why.to_owned())));
            }
        }
        if method == "CONNECT" {
            return match authority(path) {
                Ok(target) => Some(Ok(Some((Protocol::HttpConnect, target, used, None)))),
                Err(why) => Some(Err((http_error(400, "Bad Request", &why), why))),
            };
        }
        let (target, origin) = match absolute(path) {
            Ok(t) => t,
            Err((code, why)) => {
                let reason = if code == 501 {
                    "Not Implemented"
                } else {
                    "Bad Request"
                };
                return Some(Err((http_error(code, reason, &why), why)));
            }
        };
        let fields: Vec<Field> = req
            .headers
            .iter()
            .map(|h| (h.name.to_owned(), h.value.to_vec()))
            .collect();
        let framing = match http1::request_framing(&fields) {
            Ok(f) => f,
            Err(e) => {
                let why = format!(
                    "{} {}: {e}",
                    shown(method.as_bytes()),
                    shown(crate::route::without_password(path).as_bytes())
                );
                return Some(Err((http_error(400, "Bad Request", &why), why)));
            }
        };
        let http = HttpRequest {
            method: method.to_owned(),
            path: origin,
            minor: req.version.unwrap_or(1),
            fields,
            framing,
        };
        Some(Ok(Some((Protocol::HttpForward, target, used, Some(http)))))
    }
}

/// An absolute-form target (RFC 9112 §3.2.2): `http://host[:port][/path][?query]` → the
/// destination and the origin-form target. Errors carry the status to answer.
fn absolute(s: &str) -> Result<(Endpoint, String), (u16, String)> {
    // A password in the URI's userinfo never reaches the log.
    let display = shown(crate::route::without_password(s).as_bytes());
    let bad = |why: &str| (400, format!("{display}: {why}"));
    let Some(colon) = s.find("://") else {
        return Err(bad(
            "not a proxy request (a proxy is asked with an absolute URI: GET http://host/path)",
        ));
    };
    if !s[..colon].eq_ignore_ascii_case("http") {
        return Err((
            501,
            format!("{display}: only http:// URIs are forwarded (https:// goes through CONNECT)"),
        ));
    }
    let rest = &s[colon + 3..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if authority.contains('@') {
        return Err(bad("credentials in the URI are not forwarded"));
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(r) => match r.split_once(']') {
            Some((h, "")) => (format!("[{h}]"), "80"),
            Some((h, p)) => (format!("[{h}]"), p.strip_prefix(':').unwrap_or("x")),
            None => return Err(bad("expected host[:port]")),
        },
        None => match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), p),
            None => (authority.to_owned(), "80"),
        },
    };
    let port = p_u16(port).ok_or_else(|| bad("expected host[:port]"))?;
    let host = parse_host(&host).map_err(|e| bad(&format!("{e:#}")))?;
    let tail = tail.split('#').next().unwrap_or("");
    let origin = match tail.chars().next() {
        Some('/') => tail.to_owned(),
        _ => format!("/{tail}"),
    };
    Ok((Endpoint { host, port }, origin))
}

/// `None`: more bytes needed. `Some(Ok(None))`: progress, look again. `Some(Ok(Some(..)))`:
/// a whole request, `used` bytes long. `Some(Err((reply, why)))`: refuse.
type Parsed = Option<Result<Option<Request>, (Vec<u8>, String)>>;

/// A whole request: protocol, destination, its length, and the HTTP head for HttpForward.
type Request = (Protocol, Endpoint, usize, Option<HttpRequest>);

/// A SOCKS domain name as a host (names only: an address written as a name is one too).
fn name_host(name: &[u8]) -> Result<Host, String> {
    let text =
        std::str::from_utf8(name).map_err(|_| format!("host name {} is not UTF-8", shown(name)))?;
    parse_host(text).map_err(|e| format!("host name {}: {e:#}", shown(name)))
}

/// CONNECT's request target: `host:port` or `[v6]:port` (RFC 9112 §3.2.3).
fn authority(s: &str) -> Result<Endpoint, String> {
    let bad = || format!("CONNECT {}: expected host:port", shown(s.as_bytes()));
    let (host, port) = match s.strip_prefix('[') {
        Some(rest) => {
            let (h, p) = rest.split_once("]:").ok_or_else(bad)?;
            (format!("[{h}]"), p)
        }
        None => {
            let (h, p) = s.rsplit_once(':').ok_or_else(bad)?;
            (h.to_owned(), p)
        }
    };
    let port = match p_u16(port) {
        Some(p) => p,
        None => return Err(bad()),
    };
    let host = parse_host(&host).map_err(|e| format!("CONNECT {}: {e:#}", shown(s.as_bytes())))?;
    Ok(Endpoint { host, port })
}

/// Bytes from the client, safe for a log line: escaped and cut short.
fn shown(b: &[u8]) -> String {
    crate::diag::untrusted(&String::from_utf8_lossy(b), 200)
}

fn p_u16(s: &str) -> Option<u16> {
    match s.parse::<u16>() {
        Ok(p) if p != 0 && !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => Some(p),
        _ => None,
    }
}

/// SOCKS5 reply with code `rep` and a zero IPv4 bound address (RFC 1928 §6).
fn reply5(rep: u8) -> Vec<u8> {
    vec![5, rep, 0, 1, 0, 0, 0, 0, 0, 0]
}

/// SOCKS4 reply: 90 granted, 91 rejected or failed.
fn reply4(ok: bool) -> Vec<u8> {
    vec![0, if ok { 90 } else { 91 }, 0, 0, 0, 0, 0, 0]
}

/// A complete error response that closes the connection; `why` is the body.
fn http_error(code: u16, reason: &str, why: &str) -> Vec<u8> {
    let body = format!("gimlet: {why}\n");
    format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// gimlet's own challenge to a client of a port with `--client-auth-file` (RFC 9110 §11.7.1).
fn http_407(why: &str) -> Vec<u8> {
    let body = format!("gimlet: {why}\n");
    format!(
        "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"gimlet\", charset=\"UTF-8\"\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// How the log names one of gimlet's own answers: the HTTP status code, or the SOCKS reply
/// (a SOCKS5 answer may come after the method choice, in the same bytes).
pub fn status_of(answer: &[u8]) -> String {
    let n = answer.len();
    match answer {
        [] => "closed".to_owned(),
        [b'H', b'T', b'T', b'P', ..] => answer.split(|&b| b == b' ').nth(1).map_or_else(
            || "failed".to_owned(),
            |c| String::from_utf8_lossy(c).into_owned(),
        ),
        [0, 90, ..] => "granted".to_owned(),
        [0, rep, ..] => format!("rejected ({rep})"),
        [5, 0xFF] => "no acceptable method".to_owned(),
        [.., 1, 1] if n <= 4 => "authentication failed".to_owned(),
        [5, ..] if n >= 10 => format!("SOCKS5 reply {}", answer[n - 9]),
        _ => "answered".to_owned(),
    }
}

/// The answer to send once the tunnel is open.
pub fn success(protocol: Protocol) -> Vec<u8> {
    match protocol {
        Protocol::Socks4 | Protocol::Socks4a => reply4(true),
        Protocol::Socks5 => reply5(0x00),
        Protocol::HttpConnect => b"HTTP/1.1 200 Connection established\r\n\r\n".to_vec(),
        // The origin's own response head is the answer.
        Protocol::HttpForward => Vec::new(),
    }
}

/// The answer to send when the tunnel could not be opened; `why` (already free of secrets and
/// of raw network bytes) goes into an HTTP body.
pub fn failure(protocol: Protocol, failure: Failure, why: &str) -> Vec<u8> {
    match protocol {
        Protocol::Socks4 | Protocol::Socks4a => reply4(false),
        Protocol::Socks5 => reply5(match failure {
            Failure::General => 0x01,
            Failure::NotAllowed | Failure::Auth => 0x02,
            Failure::Unreachable => 0x04,
            Failure::Refused => 0x05,
            Failure::Timeout => 0x06,
        }),
        Protocol::HttpConnect | Protocol::HttpForward => {
            let (code, reason) = match failure {
                Failure::General | Failure::Unreachable | Failure::Refused => (502, "Bad Gateway"),
                Failure::NotAllowed => (403, "Forbidden"),
                Failure::Timeout => (504, "Gateway Timeout"),
                // gimlet's own 407: the upstream proxy wants credentials gimlet lacks. No
                // Proxy-Authenticate challenge, on purpose: credentials typed into the client
                // would not help (gimlet does not pass them on), so the client should show
                // this body rather than prompt.
                Failure::Auth => (407, "Proxy Authentication Required"),
            };
            http_error(code, reason, why)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(host: &str, port: u16) -> Endpoint {
        Endpoint {
            host: parse_host(host).unwrap(),
            port,
        }
    }

    /// Feeds `input` in the pieces `split` makes and gathers what was sent and the outcome.
    fn run(input: &[u8], cuts: &[usize]) -> (Vec<u8>, Step) {
        run_with(None, input, cuts)
    }

    fn run_with(
        auth: Option<std::sync::Arc<ClientAuth>>,
        input: &[u8],
        cuts: &[usize],
    ) -> (Vec<u8>, Step) {
        let mut f = Front::with_auth(auth);
        let mut sent = Vec::new();
        let mut start = 0;
        for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
            match f.feed(&input[start..cut]) {
                Step::More { send } => sent.extend(send),
                Step::Ask { send, mut ask } => {
                    sent.extend(send);
                    // What was not fed yet is read by the relay: the same bytes.
                    ask.leftover.extend(&input[cut..]);
                    return (sent, Step::Ask { send: vec![], ask });
                }
                Step::Refuse { send, why } => {
                    sent.extend(send);
                    return (sent, Step::Refuse { send: vec![], why });
                }
            }
            start = cut;
        }
        (sent, Step::More { send: vec![] })
    }

    /// Every way of splitting `input` in two, and byte by byte, gives the same result.
    fn every_split(input: &[u8]) -> (Vec<u8>, Step) {
        let whole = run(input, &[]);
        // Long heads (the size limit) are split at a stride: every offset would be quadratic.
        let stride = if input.len() > 1024 { 97 } else { 1 };
        for cut in (0..=input.len()).step_by(stride) {
            assert_eq!(run(input, &[cut]), whole, "split at {cut} of {input:?}");
        }
        let bytes: Vec<usize> = (0..input.len()).collect();
        assert_eq!(run(input, &bytes), whole, "byte by byte: {input:?}");
        whole
    }

    fn asks(input: &[u8]) -> (Vec<u8>, Ask) {
        match every_split(input) {
            (sent, Step::Ask { ask, .. }) => (sent, ask),
            other => panic!("{input:?}: {other:?}"),
        }
    }

    fn refuses(input: &[u8]) -> (Vec<u8>, String) {
        match every_split(input) {
            (sent, Step::Refuse { why, .. }) => (sent, why),
            other => panic!("{input:?}: {other:?}"),
        }
    }

    #[test]
    fn requests_become_destinations_at_every_split() {
        /// (input, sent back before the answer, protocol, target, leftover)
        type Row = (
            &'static [u8],
            &'static [u8],
            Protocol,
            Endpoint,
            &'static [u8],
        );
        let table: &[Row] = &[
            (
                b"\x05\x01\x00\x05\x01\x00\x03\x0bexample.com\x00\x16",
                b"\x05\x00",
                Protocol::Socks5,
                ep("example.com", 22),
                b"",
            ),
            (
                b"\x05\x02\x02\x00\x05\x01\x00\x01\x0a\x00\x00\x01\x01\xbbSSH-2.0",
                b"\x05\x00",
                Protocol::Socks5,
                ep("10.0.0.1", 443),
                b"SSH-2.0",
            ),
            (
                b"\x05\x01\x00\x05\x01\x00\x04\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x50",
                b"\x05\x00",
                Protocol::Socks5,
                ep("[::1]", 80),
                b"",
            ),
            (
                b"\x04\x01\x00\x16\x7f\x00\x00\x01user\x00",
                b"",
                Protocol::Socks4,
                ep("127.0.0.1", 22),
                b"",
            ),
            (
                b"\x04\x01\x00\x16\x00\x00\x00\x01\x00git.corp.example\x00hello",
                b"",
                Protocol::Socks4a,
                ep("git.corp.example", 22),
                b"hello",
            ),
            (
                b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n\x16\x03\x01",
                b"",
                Protocol::HttpConnect,
                ep("example.com", 443),
                b"\x16\x03\x01",
            ),
            (
                b"CONNECT [2001:db8::1]:22 HTTP/1.1\nHost: x\n\n",
                b"",
                Protocol::HttpConnect,
                ep("[2001:db8::1]", 22),
                b"",
            ),
        ];
        for (input, sent, protocol, target, leftover) in table {
            let (got_sent, ask) = asks(input);
            assert_eq!(&got_sent[..], *sent, "{input:?}");
            assert_eq!(ask.protocol, *protocol, "{input:?}");
            assert_eq!(&ask.target, target, "{input:?}");
            assert_eq!(&ask.leftover[..], *leftover, "{input:?}");
        }
    }

    #[test]
    fn bad_requests_are_refused_in_the_clients_protocol_at_every_split() {
        let big = format!(
            "CONNECT a:1 HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_HEAD)
        );
        let many = format!(
            "CONNECT a:1 HTTP/1.1\r\n{}\r\n",
            "X: y\r\n".repeat(MAX_HEADERS + 1)
        );
        let table: &[(&[u8], &str, &str)] = &[
            // (input, start of what is sent back, part of the log reason)
            (b"\x05\x01\x02", "\x05\u{ff}", "no method"),
            (
                b"\x05\x01\x00\x05\x02\x00\x01\x00\x00\x00\x00\x00\x00",
                "\x05\x00\x05\x07",
                "command 2",
            ),
            (
                b"\x05\x01\x00\x05\x01\x00\x09",
                "\x05\x00\x05\x08",
                "address type 9",
            ),
            (
                b"\x05\x01\x00\x05\x01\x00\x03\x03a b\x00\x01",
                "\x05\x00\x05\x01",
                "host name",
            ),
            (
                b"\x04\x02\x00\x16\x7f\x00\x00\x01\x00",
                "\x00\x5b",
                "command 2",
            ),
            (
                b"\x04\x01\x00\x16\x00\x00\x00\x01\x00a/b\x00",
                "\x00\x5b",
                "host name",
            ),
            (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", "HTTP/1.1 400 ", "not a proxy request"),
            (b"GET https://a/ HTTP/1.1\r\n\r\n", "HTTP/1.1 501 ", "only http:// URIs"),
            (b"GET http://u:p@a/ HTTP/1.1\r\n\r\n", "HTTP/1.1 400 ", "credentials in the URI"),
            (b"GET http://a:99999/ HTTP/1.1\r\n\r\n", "HTTP/1.1 400 ", "host[:port]"),
            (
                b"POST http://a/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n",
                "HTTP/1.1 400 ",
                "both Transfer-Encoding and Content-Length",
            ),
            (
                b"CONNECT example.com HTTP/1.1\r\n\r\n",
                "HTTP/1.1 400 ",
                "expected host:port",
            ),
            (
                b"CONNECT example.com:0 HTTP/1.1\r\n\r\n",
                "HTTP/1.1 400 ",
                "expected host:port",
            ),
            (
                b"CONNECT ex@mple.com:1 HTTP/1.1\r\n\r\n",
                "HTTP/1.1 400 ",
                "not a host name",
            ),
            (
                b"\x16\x03\x01\x00\x05hello\r\n\r\n",
                "HTTP/1.1 400 ",
                "malformed",
            ),
            (big.as_bytes(), "HTTP/1.1 431 ", "longer than"),
            (many.as_bytes(), "HTTP/1.1 431 ", "more than 64"),
        ];
        for (input, sent, why) in table {
            let (got, got_why) = refuses(input);
            assert!(!got_why.contains(":p@"), "a password in the log: {got_why}");
            assert!(
                got.starts_with(sent.as_bytes()) || got.starts_with(&latin1(sent)),
                "{input:?}: sent {got:?}"
            );
            assert!(got_why.contains(why), "{input:?}: {got_why}");
        }
    }

    /// The table above writes bytes above 0x7f as chars: back to single bytes.
    fn latin1(s: &str) -> Vec<u8> {
        s.chars().map(|c| c as u32 as u8).collect()
    }

    #[test]
    fn absolute_form_requests_become_messages_to_forward_at_every_split() {
        /// (input, host, port, origin-form target, body framing, leftover)
        type Row = (
            &'static [u8],
            &'static str,
            u16,
            &'static str,
            Framing,
            &'static [u8],
        );
        let table: &[Row] = &[
            (
                b"GET http://example.com/a/b?c=d#frag HTTP/1.1\r\nHost: example.com\r\n\r\n",
                "example.com",
                80,
                "/a/b?c=d",
                Framing::None,
                b"",
            ),
            (
                b"POST HTTP://[::1]:8080?q HTTP/1.0\nContent-Length: 4\n\nbody",
                "[::1]",
                8080,
                "/?q",
                Framing::Length(4),
                b"body",
            ),
            (
                b"PUT http://h.example HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                "h.example",
                80,
                "/",
                Framing::Chunked,
                b"0\r\n\r\n",
            ),
        ];
        for (input, host, port, path, framing, leftover) in table {
            let (_, ask) = asks(input);
            assert_eq!(ask.protocol, Protocol::HttpForward);
            assert_eq!(ask.target, ep(host, *port), "{input:?}");
            let http = ask.http.expect("the head");
            assert_eq!(http.path, *path, "{input:?}");
            assert_eq!(http.framing, *framing, "{input:?}");
            assert_eq!(&ask.leftover[..], *leftover, "{input:?}");
        }
    }

    #[test]
    fn a_port_with_client_credentials_asks_every_protocol_for_them_at_every_split() {
        let auth = std::sync::Arc::new(ClientAuth {
            user: "ann".into(),
            password: Zeroizing::new("p:w".into()),
        });
        let request5 = b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x16";
        let socks5 = |methods: &[u8], user: &[u8], pass: &[u8]| {
            let mut m = vec![5, methods.len() as u8];
            m.extend(methods);
            m.extend([1, user.len() as u8]);
            m.extend(user);
            m.push(pass.len() as u8);
            m.extend(pass);
            m.extend(request5);
            m
        };
        let basic = |pair: &str| {
            use base64::Engine;
            format!(
                "CONNECT a:1 HTTP/1.1\r\nProxy-Authorization: Basic {}\r\n\r\n",
                base64::engine::general_purpose::STANDARD.encode(pair)
            )
            .into_bytes()
        };
        // (input, sent back, asked (true) or refused, part of the answer or reason)
        let table: Vec<(Vec<u8>, Vec<u8>, bool, &str)> = vec![
            (socks5(&[0, 2], b"ann", b"p:w"), vec![5, 2, 1, 0], true, ""),
            (
                socks5(&[2], b"ann", b"p:x"),
                vec![5, 2, 1, 1],
                false,
                "wrong user name or password",
            ),
            (
                socks5(&[2], b"an", b"p:w"),
                vec![5, 2, 1, 1],
                false,
                "wrong user name or password",
            ),
            (vec![5, 1, 0], vec![5, 0xFF], false, "no username/password"),
            (
                vec![4, 1, 0, 22, 127, 0, 0, 1, 0],
                vec![0, 91, 0, 0, 0, 0, 0, 0],
                false,
                "SOCKS4 cannot",
            ),
            (basic("ann:p:w"), vec![], true, ""),
            (
                basic("ann:p:x"),
                b"HTTP/1.1 407 ".to_vec(),
                false,
                "wrong user name",
            ),
            (
                b"CONNECT a:1 HTTP/1.1\r\n\r\n".to_vec(),
                b"HTTP/1.1 407 ".to_vec(),
                false,
                "no Proxy-Authorization",
            ),
        ];
        for (input, sent, asked, part) in table {
            let whole = run_with(Some(auth.clone()), &input, &[]);
            for cut in 0..=input.len() {
                assert_eq!(
                    run_with(Some(auth.clone()), &input, &[cut]),
                    whole,
                    "{input:?} at {cut}"
                );
            }
            let (got, step) = whole;
            assert!(got.starts_with(&sent), "{input:?}: sent {got:?}");
            match step {
                Step::Ask { .. } => assert!(asked, "{input:?} was let through"),
                Step::Refuse { why, .. } => {
                    assert!(!asked, "{input:?} refused: {why}");
                    assert!(why.contains(part), "{why}");
                    assert!(!why.contains("p:w") && !why.contains("p:x"), "{why}");
                }
                Step::More { .. } => panic!("{input:?}: wants more"),
            }
            if !asked && got.starts_with(b"HTTP") {
                assert!(text_has(&got, "Proxy-Authenticate: Basic realm=\"gimlet\""));
            }
        }
    }

    fn text_has(bytes: &[u8], needle: &str) -> bool {
        String::from_utf8_lossy(bytes).contains(needle)
    }

    #[test]
    fn a_partial_request_asks_for_more() {
        for input in [
            &b"\x05"[..],
            b"\x05\x01\x00\x05\x01",
            b"\x04\x01\x00\x16\x7f\x00\x00\x01us",
            b"CONNECT a:1 HTTP/1.1\r\n",
        ] {
            match Front::new().feed(input) {
                Step::More { .. } => {}
                other => panic!("{input:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_log_names_each_answer() {
        let table: &[(&[u8], &str)] = &[
            (b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n", "407"),
            (&[5, 0xFF], "no acceptable method"),
            (&[5, 2, 1, 1], "authentication failed"),
            (&[5, 0, 5, 7, 0, 1, 0, 0, 0, 0, 0, 0], "SOCKS5 reply 7"),
            (&[5, 2, 0, 1, 0, 0, 0, 0, 0, 0], "SOCKS5 reply 2"),
            (&[0, 91, 0, 0, 0, 0, 0, 0], "rejected (91)"),
            (&[], "closed"),
        ];
        for (answer, want) in table {
            assert_eq!(status_of(answer), *want, "{answer:?}");
        }
        assert_eq!(
            status_of(&failure(Protocol::Socks5, Failure::Refused, "x")),
            "SOCKS5 reply 5"
        );
    }

    #[test]
    fn replies_follow_each_protocol() {
        assert_eq!(success(Protocol::Socks5), [5, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(success(Protocol::Socks4a), [0, 90, 0, 0, 0, 0, 0, 0]);
        assert!(success(Protocol::HttpConnect).starts_with(b"HTTP/1.1 200 "));
        let table = [
            (Failure::General, 1, "502"),
            (Failure::NotAllowed, 2, "403"),
            (Failure::Unreachable, 4, "502"),
            (Failure::Refused, 5, "502"),
            (Failure::Timeout, 6, "504"),
            (Failure::Auth, 2, "407"),
        ];
        for (f, rep, code) in table {
            assert_eq!(failure(Protocol::Socks5, f, "x")[1], rep, "{f:?}");
            assert_eq!(failure(Protocol::Socks4, f, "x"), [0, 91, 0, 0, 0, 0, 0, 0]);
            let http = String::from_utf8(failure(Protocol::HttpConnect, f, "why")).unwrap();
            assert!(http.starts_with(&format!("HTTP/1.1 {code} ")), "{http}");
            assert!(http.ends_with("\r\n\r\ngimlet: why\n"), "{http}");
        }
    }
}
