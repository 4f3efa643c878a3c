//! HTTP/1.1 message work for the `-D` port's absolute-form requests, sans-IO: where a body
//! ends (RFC 9112 §6: Content-Length, chunked, or the connection's close), and the heads
//! rewritten for the next hop (RFC 9110 §7.6.1: hop-by-hop fields removed; RFC 9112 §3.2.2:
//! origin-form with the target URI's authority as `Host`).
//!
//! Bodies pass through unchanged, chunked ones too: [`Body`] only follows the framing to know
//! where a message ends, so the next request on a kept connection starts at the right byte.

use std::fmt::Write as _;

use zeroize::Zeroizing;

use crate::config::Endpoint;
use crate::credentials::Secret;

/// The most bytes of chunk extensions and trailer fields accepted, together.
const MAX_META: usize = 16 * 1024;

/// How a message's body is delimited (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body (a request without Content-Length or Transfer-Encoding; HEAD, 1xx, 204, 304).
    None,
    Length(u64),
    Chunked,
    /// Until the sender closes (responses only).
    Close,
}

/// A header field as received: the name, and the value's bytes.
pub type Field = (String, Vec<u8>);

fn field<'a>(fields: &'a [Field], name: &str) -> impl Iterator<Item = &'a [u8]> {
    let name = name.to_owned();
    fields
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(&name))
        .map(|(_, v)| v.as_slice())
}

/// Comma-separated tokens of every `name` field, lower-cased.
fn tokens(fields: &[Field], name: &str) -> Vec<String> {
    field(fields, name)
        .flat_map(|v| {
            String::from_utf8_lossy(v)
                .split(',')
                .map(|t| t.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .filter(|t| !t.is_empty())
        .collect()
}

/// The body's framing from Transfer-Encoding and Content-Length, or why the message cannot be
/// delimited safely. Both at once, differing lengths and codings other than a final chunked
/// are refused rather than guessed (the request-smuggling cases of RFC 9112 §6.3 and §11.2).
fn length_framing(fields: &[Field]) -> Result<Option<Framing>, String> {
    let codings = tokens(fields, "Transfer-Encoding");
    let lengths: Vec<&[u8]> = field(fields, "Content-Length").collect();
    if !codings.is_empty() {
        if !lengths.is_empty() {
            return Err("both Transfer-Encoding and Content-Length".to_owned());
        }
        return match codings.last().map(String::as_str) {
            Some("chunked") if codings.iter().filter(|c| *c == "chunked").count() == 1 => {
                Ok(Some(Framing::Chunked))
            }
            _ => Ok(None),
        };
    }
    let mut length: Option<u64> = None;
    for value in lengths {
        for part in value.split(|&b| b == b',') {
            let part = part.trim_ascii();
            let n = std::str::from_utf8(part)
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| "an invalid Content-Length".to_owned())?;
            if length.is_some_and(|l| l != n) {
                return Err("differing Content-Length values".to_owned());
            }
            length = Some(n);
        }
    }
    Ok(Some(length.map_or(Framing::None, Framing::Length)))
}

/// A request's framing (RFC 9112 §6.3 rules 4-7): a request never runs to the close.
pub fn request_framing(fields: &[Field]) -> Result<Framing, String> {
    match length_framing(fields)? {
        Some(f) => Ok(f),
        None => Err("a Transfer-Encoding that does not end in chunked".to_owned()),
    }
}

/// A response's framing: none for HEAD, 1xx, 204 and 304; else by its fields, else the close.
pub fn response_framing(
    status: u16,
    head_request: bool,
    fields: &[Field],
) -> Result<Framing, String> {
    if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(Framing::None);
    }
    Ok(length_framing(fields)?.map_or(Framing::Close, |f| match f {
        Framing::None => Framing::Close,
        f => f,
    }))
}

/// Whether the sender of these fields (HTTP/1.`minor`) keeps the connection (RFC 9112 §9.3).
pub fn keeps_alive(minor: u8, fields: &[Field]) -> bool {
    let connection = tokens(fields, "Connection");
    if connection.iter().any(|t| t == "close") {
        return false;
    }
    minor >= 1 || connection.iter().any(|t| t == "keep-alive")
}

/// Fields that describe one connection, never forwarded (RFC 9110 §7.6.1), plus every field
/// the Connection field names. Transfer-Encoding stays: the body passes on unchanged.
fn hop_by_hop(fields: &[Field]) -> Vec<String> {
    let mut names: Vec<String> = [
        "connection",
        "proxy-connection",
        "keep-alive",
        "te",
        "upgrade",
        "proxy-authorization",
        "proxy-authenticate",
        "trailer",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    names.extend(
        tokens(fields, "Connection")
            .into_iter()
            .filter(|t| t != "transfer-encoding" && t != "content-length" && t != "host"),
    );
    names
}

/// The request for the origin: origin-form, `Host` from the URI, hop-by-hop fields removed,
/// `Expect` removed (gimlet answers `100 Continue` itself), HTTP/1.1.
pub fn origin_request(method: &str, target: &Endpoint, path: &str, fields: &[Field]) -> Vec<u8> {
    let head = format!("{method} {path} HTTP/1.1\r\n");
    forwarded(head, target, fields, None, &[]).to_vec()
}

/// The authority as a URI and `Host` write it: the port left out when it is 80.
pub fn authority(target: &Endpoint) -> String {
    match target.port {
        80 => target.host.to_string(),
        _ => target.to_string(),
    }
}

/// The request for an upstream HTTP proxy: absolute-form (RFC 9112 §3.2.2), `Host` from the
/// URI, the client's hop-by-hop fields removed (its `Proxy-Authorization` with them: that
/// was for gimlet), then gimlet's own `Proxy-Authorization` and `-H` fields for the proxy.
/// Zeroed on drop: it holds the credential.
pub fn proxy_request(
    method: &str,
    target: &Endpoint,
    path: &str,
    fields: &[Field],
    authorization: Option<&Secret>,
    extra: &[(String, String)],
) -> Zeroizing<Vec<u8>> {
    let head = format!("{method} {} HTTP/1.1\r\n", absolute_uri(target, path));
    forwarded(head, target, fields, authorization, extra)
}

/// `http://host[:port]/path`: the target URI as an absolute-form request names it.
pub fn absolute_uri(target: &Endpoint, path: &str) -> String {
    format!("http://{}{path}", authority(target))
}

fn forwarded(
    head: String,
    target: &Endpoint,
    fields: &[Field],
    authorization: Option<&Secret>,
    extra: &[(String, String)],
) -> Zeroizing<Vec<u8>> {
    let drop = hop_by_hop(fields);
    let mut head = head;
    let _ = write!(head, "Host: {}\r\n", authority(target));
    let mut out = Zeroizing::new(head.into_bytes());
    // Sized before the credential goes in: a growing buffer leaves copies in freed memory.
    let more: usize = fields
        .iter()
        .map(|(n, v)| n.len() + v.len() + 4)
        .sum::<usize>()
        + extra
            .iter()
            .map(|(n, v)| n.len() + v.len() + 4)
            .sum::<usize>()
        + authorization.map_or(0, |a| a.expose().len() + 23)
        + 2;
    out.reserve_exact(more);
    for (name, value) in fields {
        let lower = name.to_ascii_lowercase();
        if lower == "host" || lower == "expect" || drop.contains(&lower) {
            continue;
        }
        for part in [name.as_bytes(), b": ", value, b"\r\n"] {
            out.extend_from_slice(part);
        }
    }
    for (name, value) in extra {
        for part in [name.as_bytes(), b": ", value.as_bytes(), b"\r\n"] {
            out.extend_from_slice(part);
        }
    }
    if let Some(a) = authorization {
        for part in [
            &b"Proxy-Authorization: "[..],
            a.expose().as_bytes(),
            b"\r\n",
        ] {
            out.extend_from_slice(part);
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// The response head for the client: hop-by-hop fields removed, and `Connection: close` when
/// gimlet closes the client's connection after it.
pub fn client_response(status: u16, reason: &[u8], fields: &[Field], close: bool) -> Vec<u8> {
    let drop = hop_by_hop(fields);
    let mut out = format!("HTTP/1.1 {status} ").into_bytes();
    out.extend(reason);
    out.extend(b"\r\n");
    for (name, value) in fields {
        if drop.contains(&name.to_ascii_lowercase()) {
            continue;
        }
        out.extend(name.as_bytes());
        out.extend(b": ");
        out.extend(value);
        out.extend(b"\r\n");
    }
    if close {
        out.extend(b"Connection: close\r\n");
    }
    out.extend(b"\r\n");
    out
}

/// Follows a body as its bytes pass.
#[derive(Debug)]
pub struct Body {
    state: State,
    /// Bytes of chunk sizes' extensions and trailers so far (bounded by [`MAX_META`]).
    meta: usize,
    /// A chunk's size while the rest of its line (extension, CRLF) passes.
    pending_size: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Remaining(u64),
    Close,
    /// Reading a chunk size: its value and how many digits so far.
    Size(u64, u8),
    /// After the size: an extension, until the line ends.
    Extension,
    SizeLf,
    Data(u64),
    DataCr,
    DataLf,
    /// Trailer section; `true` at the start of a line.
    Trailer(bool),
    TrailerLf(bool),
    Done,
}

impl Body {
    pub fn new(framing: Framing) -> Body {
        let state = match framing {
            Framing::None | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Remaining(n),
            Framing::Chunked => State::Size(0, 0),
            Framing::Close => State::Close,
        };
        Body {
            state,
            meta: 0,
            pending_size: None,
        }
    }

    /// Whether the body has ended.
    pub fn done(&self) -> bool {
        self.state == State::Done
    }

    /// Whether the body ends with the connection.
    pub fn until_close(&self) -> bool {
        self.state == State::Close
    }

    /// How many of `data`'s first bytes belong to the body (the rest is the next message).
    pub fn feed(&mut self, data: &[u8]) -> Result<usize, String> {
        let mut i = 0;
        while i < data.len() {
            let b = data[i];
            self.state = match self.state {
                State::Done => return Ok(i),
                State::Close => return Ok(data.len()),
                State::Remaining(n) => {
                    let take = n.min((data.len() - i) as u64);
                    i += take as usize;
                    self.state = match n - take {
                        0 => State::Done,
                        left => State::Remaining(left),
                    };
                    continue;
                }
                State::Data(n) => {
                    let take = n.min((data.len() - i) as u64);
                    i += take as usize;
                    self.state = match n - take {
                        0 => State::DataCr,
                        left => State::Data(left),
                    };
                    continue;
                }
                State::Size(n, digits) => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        if digits >= 15 {
                            return Err("a chunk size too large".to_owned());
                        }
                        let d = (b as char).to_digit(16).unwrap_or(0) as u64;
                        State::Size(n * 16 + d, digits + 1)
                    }
                    _ if digits == 0 => return Err("a chunk without a size".to_owned()),
                    b';' | b' ' | b'\t' => {
                        self.pending_size = Some(n);
                        State::Extension
                    }
                    b'\r' => {
                        self.pending_size = Some(n);
                        State::SizeLf
                    }
                    b'\n' => self.after_size(n),
                    _ => return Err("an invalid chunk size".to_owned()),
                },
                State::Extension => {
                    self.meta += 1;
                    match b {
                        b'\r' => State::SizeLf,
                        b'\n' => self.after_size_line()?,
                        _ => State::Extension,
                    }
                }
                State::SizeLf => match b {
                    b'\n' => self.after_size_line()?,
                    _ => return Err("a chunk size line not ended by CRLF".to_owned()),
                },
                State::DataCr => match b {
                    b'\r' => State::DataLf,
                    b'\n' => State::Size(0, 0),
                    _ => return Err("chunk data longer than its size".to_owned()),
                },
                State::DataLf => match b {
                    b'\n' => State::Size(0, 0),
                    _ => return Err("chunk data not ended by CRLF".to_owned()),
                },
                State::Trailer(start) => {
                    self.meta += 1;
                    match b {
                        b'\r' => State::TrailerLf(start),
                        b'\n' if start => State::Done,
                        b'\n' => State::Trailer(true),
                        _ => State::Trailer(false),
                    }
                }
                State::TrailerLf(start) => match b {
                    b'\n' if start => State::Done,
                    b'\n' => State::Trailer(true),
                    _ => return Err("a trailer line not ended by CRLF".to_owned()),
                },
            };
            if self.meta > MAX_META {
                return Err(format!(
                    "chunk extensions and trailers over {MAX_META} bytes"
                ));
            }
            i += 1;
        }
        Ok(i)
    }

    /// The size line ended; the size was kept in the state before the extension.
    fn after_size_line(&mut self) -> Result<State, String> {
        match self.pending_size {
            Some(n) => Ok(self.after_size(n)),
            None => Err("a chunk without a size".to_owned()),
        }
    }

    fn after_size(&mut self, n: u64) -> State {
        self.pending_size = None;
        match n {
            0 => State::Trailer(true),
            n => State::Data(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(list: &[(&str, &str)]) -> Vec<Field> {
        list.iter()
            .map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec()))
            .collect()
    }

    /// Feeds `input` in pieces cut at `cuts`; returns how many bytes the body took, or the error.
    fn body_len(framing: Framing, input: &[u8], cuts: &[usize]) -> Result<(usize, bool), String> {
        let mut body = Body::new(framing);
        let (mut start, mut taken) = (0, 0);
        for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
            let piece = &input[start..cut];
            let n = body.feed(piece)?;
            taken += n;
            if n < piece.len() {
                break;
            }
            start = cut;
        }
        Ok((taken, body.done()))
    }

    #[test]
    fn bodies_end_where_their_framing_says_at_every_split() {
        /// (framing, input, bytes of the body and whether it ended, or the error)
        type Row = (Framing, &'static [u8], Result<(usize, bool), &'static str>);
        let table: &[Row] = &[
            (Framing::None, b"GET / HTTP/1.1", Ok((0, true))),
            (Framing::Length(5), b"helloGET", Ok((5, true))),
            (Framing::Length(5), b"hel", Ok((3, false))),
            (
                Framing::Chunked,
                b"5\r\nhello\r\n0\r\n\r\nNEXT",
                Ok((15, true)),
            ),
            (
                Framing::Chunked,
                b"5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\nN",
                Ok((29, true)),
            ),
            (Framing::Chunked, b"A\nhelloworld\n0\n\n", Ok((16, true))),
            (Framing::Chunked, b"1f\r\n", Ok((4, false))),
            (Framing::Chunked, b"5\r\nhello\r\n0\r\n", Ok((13, false))),
            (Framing::Close, b"anything at all", Ok((15, false))),
            (Framing::Chunked, b"\r\n", Err("a chunk without a size")),
            (Framing::Chunked, b"z\r\n", Err("a chunk without a size")),
            (Framing::Chunked, b"5x\r\n", Err("an invalid chunk size")),
            (
                Framing::Chunked,
                b"5\r\nhelloX",
                Err("chunk data longer than its size"),
            ),
            (
                Framing::Chunked,
                b"1234567890abcdef0\r\n",
                Err("a chunk size too large"),
            ),
            (
                Framing::Chunked,
                b"5\rX",
                Err("a chunk size line not ended by CRLF"),
            ),
        ];
        for (framing, input, want) in table {
            let want = want.map_err(str::to_owned);
            assert_eq!(body_len(*framing, input, &[]), want, "{input:?}");
            for cut in 0..=input.len() {
                assert_eq!(
                    body_len(*framing, input, &[cut]),
                    want,
                    "{input:?} cut at {cut}"
                );
            }
            let every: Vec<usize> = (0..input.len()).collect();
            assert_eq!(
                body_len(*framing, input, &every),
                want,
                "{input:?} byte by byte"
            );
        }
    }

    #[test]
    fn framing_follows_rfc_9112_and_refuses_ambiguity() {
        let req = |l: &[(&str, &str)]| request_framing(&fields(l));
        assert_eq!(req(&[]), Ok(Framing::None));
        assert_eq!(req(&[("Content-Length", "12")]), Ok(Framing::Length(12)));
        assert_eq!(req(&[("content-length", "3, 3")]), Ok(Framing::Length(3)));
        assert_eq!(
            req(&[("Transfer-Encoding", "gzip, chunked")]),
            Ok(Framing::Chunked)
        );
        assert!(req(&[("Content-Length", "3"), ("Content-Length", "4")]).is_err());
        assert!(req(&[("Content-Length", "-1")]).is_err());
        assert!(req(&[("Content-Length", "")]).is_err());
        assert!(req(&[("Transfer-Encoding", "chunked"), ("Content-Length", "4")]).is_err());
        assert!(req(&[("Transfer-Encoding", "chunked, gzip")]).is_err());
        assert!(req(&[("Transfer-Encoding", "chunked, chunked")]).is_err());
        let resp = |s, head, l: &[(&str, &str)]| response_framing(s, head, &fields(l));
        assert_eq!(resp(200, false, &[]), Ok(Framing::Close));
        assert_eq!(
            resp(200, true, &[("Content-Length", "9")]),
            Ok(Framing::None)
        );
        assert_eq!(resp(204, false, &[]), Ok(Framing::None));
        assert_eq!(
            resp(304, false, &[("Content-Length", "9")]),
            Ok(Framing::None)
        );
        assert_eq!(
            resp(200, false, &[("Content-Length", "0")]),
            Ok(Framing::Length(0))
        );
        assert_eq!(
            resp(200, false, &[("Transfer-Encoding", "gzip")]),
            Ok(Framing::Close)
        );
        assert_eq!(
            resp(200, false, &[("Transfer-Encoding", "chunked")]),
            Ok(Framing::Chunked)
        );
    }

    #[test]
    fn requests_for_a_proxy_stay_absolute_and_carry_gimlets_credential_only() {
        let target = |host: &str, port| Endpoint {
            host: crate::config::parse_host(host).unwrap(),
            port,
        };
        let client_fields = fields(&[
            ("Host", "www.example"),
            ("Proxy-Connection", "keep-alive"),
            ("Proxy-Authorization", "Basic Y2xpZW50"),
            ("Connection", "X-Hop"),
            ("X-Hop", "1"),
            ("Content-Length", "0"),
        ]);
        let secret = Secret::new("Basic Z2ltbGV0OnB3".to_owned());
        let extra = [("X-Corp".to_owned(), "1".to_owned())];
        let table = [
            (
                target("www.example", 80),
                "GET http://www.example/a?b HTTP/1.1\r\nHost: www.example\r\n",
            ),
            (
                target("[2001:db8::1]", 8080),
                "GET http://[2001:db8::1]:8080/a?b HTTP/1.1\r\nHost: [2001:db8::1]:8080\r\n",
            ),
        ];
        for (t, start) in table {
            let got = proxy_request("GET", &t, "/a?b", &client_fields, Some(&secret), &extra);
            assert_eq!(
                String::from_utf8(got.to_vec()).unwrap(),
                format!(
                    "{start}Content-Length: 0\r\nX-Corp: 1\r\nProxy-Authorization: Basic Z2ltbGV0OnB3\r\n\r\n"
                )
            );
        }
        let got = proxy_request("GET", &target("h", 80), "/", &client_fields, None, &[]);
        assert!(!String::from_utf8_lossy(&got).contains("Authorization"));
    }

    #[test]
    fn heads_lose_hop_by_hop_fields_and_gain_the_uris_host() {
        let target = Endpoint {
            host: crate::config::parse_host("example.test").unwrap(),
            port: 8080,
        };
        let got = origin_request(
            "POST",
            &target,
            "/p?q=1",
            &fields(&[
                ("Host", "wrong.example"),
                ("Proxy-Connection", "keep-alive"),
                ("Connection", "keep-alive, X-Private"),
                ("X-Private", "secret"),
                ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
                ("Keep-Alive", "300"),
                ("TE", "trailers"),
                ("Upgrade", "h2c"),
                ("Expect", "100-continue"),
                ("Content-Length", "3"),
                ("Accept", "*/*"),
            ]),
        );
        assert_eq!(
            String::from_utf8(got).unwrap(),
            "POST /p?q=1 HTTP/1.1\r\nHost: example.test:8080\r\nContent-Length: 3\r\nAccept: */*\r\n\r\n"
        );
        let got = client_response(
            200,
            b"OK",
            &fields(&[
                ("Connection", "keep-alive"),
                ("Keep-Alive", "5"),
                ("Content-Length", "2"),
            ]),
            true,
        );
        assert_eq!(
            String::from_utf8(got).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection_field() {
        assert!(keeps_alive(1, &[]));
        assert!(!keeps_alive(1, &fields(&[("Connection", "Close")])));
        assert!(!keeps_alive(0, &[]));
        assert!(keeps_alive(0, &fields(&[("Connection", "keep-alive")])));
    }
}
