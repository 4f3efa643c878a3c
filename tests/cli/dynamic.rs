//! `-D`: one local port speaking SOCKS4, SOCKS4a, SOCKS5 and HTTP CONNECT, each client
//! naming its destination; a real gimlet followed through its log on stderr, clients written
//! byte by byte here, echo servers and fake upstream proxies on the loopback interface.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Command};
use std::thread;

use crate::support::*;

/// A running `gimlet -D`; its stderr log is read line by line as it comes.
struct Daemon {
    child: Child,
    log: DaemonLog,
    port: u16,
}

impl Daemon {
    fn start(args: &[&str]) -> Daemon {
        Daemon::start_with(gimlet_std().args(args))
    }

    #[track_caller]
    fn start_with(cmd: &mut Command) -> Daemon {
        let (child, log) = spawn_logged(cmd);
        let mut d = Daemon {
            child,
            log,
            port: 0,
        };
        let line = d.wait_for("listening on 127.0.0.1:");
        let at = line.find("127.0.0.1:").unwrap() + "127.0.0.1:".len();
        let digits: String = line[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        d.port = digits.parse().expect("port");
        d
    }

    /// The next log line containing `needle`.
    #[track_caller]
    fn wait_for(&mut self, needle: &str) -> String {
        self.log.wait_for(needle)
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to -D");
        s.set_read_timeout(Some(HANG)).unwrap();
        s
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server that answers each connection with `greeting`, then echoes until EOF.
fn echo_server(greeting: &'static [u8]) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            thread::spawn(move || {
                let _ = conn.write_all(greeting);
                let mut buf = [0u8; 65536];
                while let Ok(n @ 1..) = conn.read(&mut buf) {
                    if conn.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
                let _ = conn.shutdown(Shutdown::Write);
            });
        }
    });
    port
}

#[track_caller]
fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    s.read_exact(&mut buf).expect("read from -D");
    buf
}

/// Sends `data` and checks it comes back whole, then closes and expects EOF.
#[track_caller]
fn echo_round_trip(s: &mut TcpStream, seed: u64) {
    let data = Prng::bytes(seed, 200_000);
    let mut w = s.try_clone().unwrap();
    let sent = data.clone();
    let writer = thread::spawn(move || {
        w.write_all(&sent).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut back = Vec::new();
    s.read_to_end(&mut back).expect("read the echo");
    writer.join().unwrap();
    assert!(
        back == data,
        "echo differs ({} of {} bytes)",
        back.len(),
        data.len()
    );
}

fn socks5_domain(host: &str, port: u16) -> Vec<u8> {
    let mut m = vec![5, 1, 0, 5, 1, 0, 3, host.len() as u8];
    m.extend(host.as_bytes());
    m.extend(port.to_be_bytes());
    m
}

fn socks4(ip: [u8; 4], port: u16, name: Option<&str>) -> Vec<u8> {
    let mut m = vec![4, 1];
    m.extend(port.to_be_bytes());
    m.extend(ip);
    m.extend(b"me\0");
    if let Some(n) = name {
        m.extend(n.as_bytes());
        m.push(0);
    }
    m
}

/// The whole HTTP response head and body of a closing error response.
#[track_caller]
fn read_all(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    text(&out)
}

#[test]
fn socks5_client_reaches_a_named_host_directly() {
    let echo = echo_server(b"hi\n");
    let mut d = Daemon::start(&["-D", "0"]);
    let mut s = d.connect();
    // Greeting and request in one write (as optimistic clients do), split at every offset by
    // the unit tables; here the answer is checked whole.
    s.write_all(&socks5_domain("localhost", echo)).unwrap();
    assert_eq!(read_n(&mut s, 2), [5, 0]);
    assert_eq!(read_n(&mut s, 10), [5, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    assert_eq!(read_n(&mut s, 3), b"hi\n");
    echo_round_trip(&mut s, 1);
    let line = d.wait_for("established #1");
    assert!(
        line.contains(&format!("SOCKS5 localhost:{echo} direct")),
        "{line}"
    );
    // The request's one line, when the tunnel closes: client, protocol, destination, route,
    // the answer, bytes each way, duration.
    let closed = d.wait_for("#1 127.0.0.1:");
    assert!(
        closed.contains(&format!(
            " SOCKS5 localhost:{echo} direct: granted, 200000 bytes sent, 200003 bytes received in "
        )),
        "{closed}"
    );
}

#[test]
fn socks4_and_socks4a_clients_reach_their_destinations() {
    let echo = echo_server(b"");
    let mut d = Daemon::start(&["-D", "0"]);
    for (request, name) in [
        (socks4([127, 0, 0, 1], echo, None), "SOCKS4 127.0.0.1"),
        (
            socks4([0, 0, 0, 9], echo, Some("localhost")),
            "SOCKS4a localhost",
        ),
    ] {
        let mut s = d.connect();
        // The request and the first tunnel bytes in one write: those belong to the destination.
        let mut first = request.clone();
        first.extend(b"early");
        s.write_all(&first).unwrap();
        assert_eq!(read_n(&mut s, 8), [0, 90, 0, 0, 0, 0, 0, 0]);
        assert_eq!(read_n(&mut s, 5), b"early");
        echo_round_trip(&mut s, 2);
        let line = d.wait_for("established #");
        assert!(line.contains(&format!("{name}:{echo} direct")), "{line}");
    }
}

#[test]
fn http_connect_client_gets_200_and_its_tunnel() {
    let echo = echo_server(b"SSH-2.0-echo\r\n");
    let mut d = Daemon::start(&["-D", "0"]);
    let mut s = d.connect();
    send_split(
        &mut s,
        format!("CONNECT 127.0.0.1:{echo} HTTP/1.1\r\nHost: 127.0.0.1:{echo}\r\n\r\n").as_bytes(),
        7,
    );
    let head = read_head(&mut s);
    assert_eq!(text(&head), OK);
    assert_eq!(read_n(&mut s, 14), b"SSH-2.0-echo\r\n");
    echo_round_trip(&mut s, 3);
    let line = d.wait_for("established #1");
    assert!(
        line.contains(&format!("CONNECT 127.0.0.1:{echo} direct")),
        "{line}"
    );
}

#[test]
fn failures_are_answered_in_each_clients_protocol() {
    let closed = closed_port();
    let mut d = Daemon::start(&["-D", "0"]);
    let me = d.port;
    // (request, expected answer prefix, log line part)
    let cases: Vec<(Vec<u8>, Vec<u8>, String)> = vec![
        (
            socks5_domain("127.0.0.1", closed),
            vec![5, 0, 5, 5],
            format!("SOCKS5 127.0.0.1:{closed} direct: SOCKS5 reply 5 ("),
        ),
        (
            vec![5, 1, 2],
            vec![5, 0xFF],
            "request: no acceptable method (refused: SOCKS5 client offers no method".into(),
        ),
        (
            vec![5, 1, 0, 5, 2, 0, 1, 127, 0, 0, 1, 0, 22],
            vec![5, 0, 5, 7],
            "request: SOCKS5 reply 7 (refused: SOCKS5 command 2 is not supported".into(),
        ),
        (
            vec![5, 1, 0, 5, 1, 0, 9],
            vec![5, 0, 5, 8],
            "address type 9".into(),
        ),
        (
            socks5_domain("localhost", me),
            vec![5, 0, 5, 2],
            format!(
                "SOCKS5 localhost:{me} direct: SOCKS5 reply 2 (refused: localhost:{me} is this -D port itself (a loop)"
            ),
        ),
        (
            socks4([127, 0, 0, 1], closed, None),
            vec![0, 91],
            format!("SOCKS4 127.0.0.1:{closed} direct: rejected (91) ("),
        ),
        (
            format!("CONNECT 127.0.0.1:{closed} HTTP/1.1\r\n\r\n").into_bytes(),
            b"HTTP/1.1 502 Bad Gateway\r\n".to_vec(),
            format!("CONNECT 127.0.0.1:{closed} direct: 502 ("),
        ),
        (
            b"CONNECT nohost HTTP/1.1\r\n\r\n".to_vec(),
            b"HTTP/1.1 400 Bad Request\r\n".to_vec(),
            "request: 400 (refused: CONNECT nohost: expected host:port".into(),
        ),
        (
            b"GET / HTTP/1.1\r\nHost: example.test\r\n\r\n".to_vec(),
            b"HTTP/1.1 400 Bad Request\r\n".to_vec(),
            "not a proxy request".into(),
        ),
        (
            b"POST http://a.test/ HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
                .to_vec(),
            b"HTTP/1.1 400 Bad Request\r\n".to_vec(),
            "differing Content-Length values".into(),
        ),
        (
            format!("CONNECT a:1 HTTP/1.1\r\nX: {}\r\n\r\n", "x".repeat(20_000)).into_bytes(),
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n".to_vec(),
            "request: 431 (refused: request longer than 16384 bytes".into(),
        ),
        (
            format!("CONNECT a:1 HTTP/1.1\r\n{}\r\n", "X: y\r\n".repeat(65)).into_bytes(),
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n".to_vec(),
            "more than 64 header fields".into(),
        ),
    ];
    for (i, (request, answer, logged)) in cases.into_iter().enumerate() {
        let mut s = d.connect();
        // An oversize head may be refused before all of it is written.
        let _ = s.write_all(&request);
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        assert!(
            got.starts_with(&answer),
            "case {i}: got {:?}, wanted {:?}",
            text(&got),
            text(&answer)
        );
        let line = d.wait_for(&format!("gimlet: #{} 127.0.0.1:", i + 1));
        assert!(line.contains(&logged), "case {i}: {line}");
    }
}

#[test]
fn a_client_that_never_finishes_its_request_is_closed_at_the_connect_timeout() {
    let mut d = Daemon::start(&["-D", "0", "--connect-timeout", "0.5"]);
    let mut s = d.connect();
    s.write_all(b"CONNECT example.test:443 HTTP/1.1\r\n")
        .unwrap();
    assert_eq!(read_all(&mut s), "");
    let line = d.wait_for("#1 127.0.0.1:");
    assert!(
        line.contains("request: closed (no whole request within --connect-timeout"),
        "{line}"
    );
}

#[test]
fn a_non_loopback_port_needs_allow() {
    let out = gimlet().args(["-D", "0.0.0.0:0"]).output().unwrap();
    let err = assert_failure(&out, 2, None);
    assert!(err.contains("give --allow CIDR"), "{err}");
}

#[test]
fn clients_outside_allow_are_closed_without_an_answer() {
    // Only reachable over loopback here, so the allowed case is loopback itself; the refusal
    // of other addresses is in the unit table. Checked: --allow parses and the port serves.
    let echo = echo_server(b"ok");
    let d = Daemon::start(&["-D", "127.0.0.1:0", "--allow", "10.0.0.0/8"]);
    let mut s = d.connect();
    s.write_all(&socks5_domain("127.0.0.1", echo)).unwrap();
    assert_eq!(read_n(&mut s, 12)[..4], [5, 0, 5, 0]);
    assert_eq!(read_n(&mut s, 2), b"ok");
    let bad = gimlet()
        .args(["-D", "0", "--allow", "10.0.0.0/33"])
        .output()
        .unwrap();
    let err = assert_failure(&bad, 2, None);
    assert!(err.contains("prefix length"), "{err}");
}

/// Opens a CONNECT tunnel through `-D` to `target` and returns the answer's status line.
fn connect_through(d: &Daemon, target: &str) -> String {
    let mut s = d.connect();
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .unwrap();
    let head = text(&read_head(&mut s));
    head.lines().next().unwrap_or_default().to_owned()
}

#[test]
fn upstream_credentials_are_gimlets_for_every_scheme() {
    let offers = [
        Offer::Basic,
        Offer::Digest(DigestChallenge::new("MD5")),
        Offer::Ntlm,
    ];
    for offer in offers {
        let proxy = AuthProxy::new("CORP\\nina", "s3cr:t")
            .offer(offer.clone())
            .start();
        let mut d = Daemon::start(&["-D", "0", "-U", "CORP\\nina:s3cr:t", &proxy.addr()]);
        for _ in 0..2 {
            assert_eq!(
                connect_through(&d, "example.test:22"),
                "HTTP/1.1 200 Connection established",
                "{offer:?}"
            );
        }
        let line = d.wait_for("established #2");
        assert!(
            line.contains("CONNECT example.test:22 via proxy 127.0.0.1:"),
            "{line}"
        );
        drop(d);
        let record = proxy.finish();
        for i in 0..record.requests.len() {
            assert!(
                record
                    .request(i)
                    .starts_with("CONNECT example.test:22 HTTP/1.1\r\n")
            );
        }
        // One handshake per tunnel (NTLM on its own kept connection each time).
        assert!(record.connections >= 2, "{offer:?}: {record:?}");
    }
}

#[test]
fn without_credentials_the_client_gets_gimlets_own_407_and_the_log_says_why() {
    let proxy = FakeProxy::basic_challenge();
    let mut d = Daemon::start(&["-D", "0", &proxy.addr()]);
    let mut s = d.connect();
    s.write_all(b"CONNECT git.example:22 HTTP/1.1\r\n\r\n")
        .unwrap();
    let answer = read_all(&mut s);
    assert!(
        answer.starts_with("HTTP/1.1 407 Proxy Authentication Required\r\n"),
        "{answer}"
    );
    assert!(!answer.contains("Proxy-Authenticate"), "{answer}");
    let line = d.wait_for("#1 127.0.0.1:");
    assert!(
        line.contains("CONNECT git.example:22 via proxy 127.0.0.1:")
            && line.contains(": 407 (proxy 127.0.0.1:")
            && line.contains("\"HTTP/1.1 407 Proxy Authentication Required\""),
        "{line}"
    );
    // A SOCKS5 client is told "not allowed" (0x02).
    let mut s = d.connect();
    s.write_all(&socks5_domain("git.example", 22)).unwrap();
    assert_eq!(read_n(&mut s, 4), [5, 0, 5, 2]);
    let line = d.wait_for("#2 127.0.0.1:");
    assert!(line.contains(": SOCKS5 reply 2 ("), "{line}");
}

#[test]
fn the_environments_proxy_is_used_except_where_no_proxy_says() {
    let echo = echo_server(b"direct\n");
    let proxy = FakeProxy::start(|s| {
        s.send(OK);
        s.send("via proxy\n");
        s.wait_for_close();
    });
    let mut d = Daemon::start_with(
        gimlet_std()
            .args(["-D", "0"])
            .env("https_proxy", format!("http://{}", proxy.addr()))
            .env("NO_PROXY", "localhost,.internal.example"),
    );
    let mut s = d.connect();
    s.write_all(&socks5_domain("localhost", echo)).unwrap();
    assert_eq!(read_n(&mut s, 12)[2..4], [5, 0]);
    assert_eq!(read_n(&mut s, 7), b"direct\n");
    let line = d.wait_for("established #1");
    assert!(line.contains("direct (no-proxy entry localhost)"), "{line}");
    let mut s = d.connect();
    s.write_all(&socks5_domain("www.example", 443)).unwrap();
    assert_eq!(read_n(&mut s, 12)[2..4], [5, 0]);
    assert_eq!(read_n(&mut s, 10), b"via proxy\n");
    let line = d.wait_for("established #2");
    assert!(
        line.contains("SOCKS5 www.example:443 via proxy 127.0.0.1:"),
        "{line}"
    );
    drop(s);
    drop(d);
    assert!(
        proxy
            .finish()
            .only_request()
            .starts_with("CONNECT www.example:443 HTTP/1.1\r\n")
    );
}

#[test]
fn a_proxy_that_is_the_port_itself_is_refused_at_start() {
    let out = gimlet()
        .args(["-D", "127.0.0.1:1080", "http://127.0.0.1:1080"])
        .output()
        .unwrap();
    let err = assert_failure(&out, 2, None);
    assert!(err.contains("this -D port itself (a loop"), "{err}");
}

#[test]
fn a_forwards_file_line_serves_a_dynamic_port() {
    let echo = echo_server(b"file\n");
    let file = scratch_file(
        "dynamic-forwards",
        b"dynamic 0 direct # SOCKS here\n",
        0o644,
    );
    let mut d = Daemon::start(&["--forwards", file.to_str().unwrap()]);
    let mut s = d.connect();
    s.write_all(&socks4([127, 0, 0, 1], echo, None)).unwrap();
    assert_eq!(read_n(&mut s, 8)[1], 90);
    assert_eq!(read_n(&mut s, 5), b"file\n");
    d.wait_for("established #1");
}

// ---------------------------------------------------------------------------
// Absolute-form requests
// ---------------------------------------------------------------------------

type Seen = std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>;

/// A small HTTP/1.1 origin: answers by path, records every request head and body, counts
/// connections. `/len` has a Content-Length body, `/chunked` a chunked one, `/close` runs to
/// the close, `/echo` answers with the request's body (Content-Length or chunked).
struct Origin {
    port: u16,
    /// Each request's head and body, in order.
    seen: Seen,
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Origin {
    fn start() -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().unwrap().port();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (seen2, count) = (seen.clone(), connections.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let seen = seen2.clone();
                thread::spawn(move || {
                    conn.set_read_timeout(Some(HANG)).unwrap();
                    loop {
                        let head = text(&read_head(&mut conn));
                        if head.is_empty() {
                            return;
                        }
                        let body = read_body(&mut conn, &head);
                        seen.lock().unwrap().push((head.clone(), body.clone()));
                        let path = head.split(' ').nth(1).unwrap_or("").to_owned();
                        let answer: Vec<u8> = match path.as_str() {
                            "/len" => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\nhello".to_vec(),
                            "/chunked" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n".to_vec(),
                            "/drop" => return,
                            "/close" => {
                                let _ = conn.write_all(b"HTTP/1.1 200 OK\r\n\r\nuntil the close");
                                return;
                            }
                            _ => {
                                let mut a = format!("HTTP/1.1 201 Created\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
                                a.extend(&body);
                                a
                            }
                        };
                        if conn.write_all(&answer).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Origin {
            port,
            seen,
            connections,
        }
    }

    fn heads(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|(h, _)| h.clone())
            .collect()
    }
}

/// The body after `head`, by Content-Length or chunked (decoded).
fn read_body(conn: &mut TcpStream, head: &str) -> Vec<u8> {
    let lower = head.to_ascii_lowercase();
    if lower.contains("transfer-encoding: chunked") {
        let mut body = Vec::new();
        loop {
            let line = read_line(conn);
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap(), 16).unwrap();
            if size == 0 {
                while !read_line(conn).trim().is_empty() {}
                return body;
            }
            body.extend(read_n(conn, size));
            read_line(conn);
        }
    }
    match lower.split("content-length: ").nth(1) {
        Some(rest) => {
            let n: usize = rest.split("\r\n").next().unwrap().trim().parse().unwrap();
            read_n(conn, n)
        }
        None => Vec::new(),
    }
}

fn read_line(conn: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8];
    while conn.read(&mut b).unwrap_or(0) == 1 {
        line.push(b[0]);
        if b[0] == b'\n' {
            break;
        }
    }
    text(&line)
}

/// Reads one response (head and Content-Length or chunked body, raw) from `s`.
fn read_response(s: &mut TcpStream) -> (String, Vec<u8>) {
    let head = text(&read_head(s));
    let lower = head.to_ascii_lowercase();
    let body = if lower.contains("transfer-encoding: chunked") {
        let mut raw = Vec::new();
        loop {
            let line = read_line(s);
            raw.extend(line.as_bytes());
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap(), 16).unwrap();
            if size == 0 {
                loop {
                    let l = read_line(s);
                    raw.extend(l.as_bytes());
                    if l.trim().is_empty() {
                        break;
                    }
                }
                break raw;
            }
            raw.extend(read_n(s, size + 2));
        }
    } else if let Some(rest) = lower.split("content-length: ").nth(1) {
        let n: usize = rest.split("\r\n").next().unwrap().trim().parse().unwrap();
        read_n(s, n)
    } else {
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        rest
    };
    (head, body)
}

#[test]
fn absolute_form_requests_go_to_the_origin_in_origin_form_on_kept_connections() {
    let origin = Origin::start();
    let mut d = Daemon::start(&["-D", "0"]);
    let mut s = d.connect();
    let o = origin.port;
    s.write_all(
        format!(
            "GET http://127.0.0.1:{o}/len HTTP/1.1\r\nHost: 127.0.0.1:{o}\r\nProxy-Connection: keep-alive\r\nProxy-Authorization: Basic c2VjcmV0\r\nConnection: X-Hop\r\nX-Hop: 1\r\nAccept: */*\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    let (head, body) = read_response(&mut s);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(!head.to_ascii_lowercase().contains("keep-alive"), "{head}");
    assert_eq!(body, b"hello");
    // Same connection, a POST with a Content-Length body.
    s.write_all(
        format!("POST http://127.0.0.1:{o}/echo HTTP/1.1\r\nContent-Length: 11\r\n\r\nhello world")
            .as_bytes(),
    )
    .unwrap();
    let (head, body) = read_response(&mut s);
    assert!(head.starts_with("HTTP/1.1 201 Created\r\n"), "{head}");
    assert_eq!(body, b"hello world");
    let heads = origin.heads();
    assert_eq!(
        heads[0],
        format!("GET /len HTTP/1.1\r\nHost: 127.0.0.1:{o}\r\nAccept: */*\r\n\r\n")
    );
    assert!(heads[1].starts_with(&format!("POST /echo HTTP/1.1\r\nHost: 127.0.0.1:{o}\r\n")));
    // Both requests on one connection to the origin, kept.
    assert_eq!(
        origin.connections.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    drop(s);
    // One log line per request: client, method, URI, route, status, bytes each way, time.
    let line = d.wait_for(&format!(" GET http://127.0.0.1:{o}/len direct: 200, "));
    assert!(line.contains("#1 127.0.0.1:"), "{line}");
    assert!(
        line.contains(", 0 bytes sent, 5 bytes received in "),
        "{line}"
    );
    let line = d.wait_for(" POST ");
    assert!(
        line.contains(&format!(
            "POST http://127.0.0.1:{o}/echo direct: 201, 11 bytes sent, 11 bytes received in "
        )),
        "{line}"
    );
}

#[test]
fn a_kept_connection_the_origin_closed_while_idle_is_replaced_for_the_next_request() {
    // Answers one request per connection as if it kept them (HTTP/1.1, no Connection: close),
    // then closes: the next request finds the connection closed before any answer, and goes
    // again on a new one, which is safe since nothing of it was answered.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let o = listener.local_addr().unwrap().port();
    let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = connections.clone();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let n = count.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            let head = text(&read_head(&mut conn));
            let body = read_body(&mut conn, &head);
            let answer = format!("n{n}:{}", text(&body));
            let _ = conn.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{answer}",
                    answer.len()
                )
                .as_bytes(),
            );
        }
    });
    let d = Daemon::start(&["-D", "0"]);
    let mut s = d.connect();
    s.write_all(format!("GET http://127.0.0.1:{o}/a HTTP/1.1\r\n\r\n").as_bytes())
        .unwrap();
    assert_eq!(read_response(&mut s).1, b"n1:");
    s.write_all(
        format!("PUT http://127.0.0.1:{o}/b HTTP/1.1\r\nContent-Length: 4\r\n\r\nbody").as_bytes(),
    )
    .unwrap();
    assert_eq!(read_response(&mut s).1, b"n2:body");
    assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[test]
fn chunked_bodies_pass_unchanged_both_ways() {
    let origin = Origin::start();
    let d = Daemon::start(&["-D", "0"]);
    let mut s = d.connect();
    let o = origin.port;
    s.write_all(
        format!("POST http://127.0.0.1:{o}/echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4;ext\r\ndefg\r\n0\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let (head, body) = read_response(&mut s);
    assert!(head.starts_with("HTTP/1.1 201 "), "{head}");
    assert_eq!(body, b"abcdefg");
    s.write_all(format!("GET http://127.0.0.1:{o}/chunked HTTP/1.1\r\n\r\n").as_bytes())
        .unwrap();
    let (head, body) = read_response(&mut s);
    assert!(head.contains("Transfer-Encoding: chunked"), "{head}");
    assert_eq!(
        text(&body),
        "5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
    );
}

#[test]
fn a_close_delimited_response_closes_the_clients_connection_too() {
    let origin = Origin::start();
    let d = Daemon::start(&["-D", "0"]);
    let mut s = d.connect();
    s.write_all(
        format!(
            "GET http://localhost:{}/close HTTP/1.1\r\n\r\n",
            origin.port
        )
        .as_bytes(),
    )
    .unwrap();
    let (head, body) = read_response(&mut s);
    assert!(head.contains("Connection: close\r\n"), "{head}");
    assert_eq!(body, b"until the close");
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let origin = Origin::start();
    let o = origin.port;
    let d = Daemon::start(&["-D", "0"]);
    let mut s = d.connect();
    let mut all = Vec::new();
    for i in 0..3 {
        all.extend(
            format!("POST http://127.0.0.1:{o}/echo HTTP/1.1\r\nContent-Length: 2\r\n\r\nr{i}")
                .as_bytes(),
        );
    }
    all.extend(
        format!("GET http://127.0.0.1:{o}/len HTTP/1.1\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    s.write_all(&all).unwrap();
    for i in 0..3 {
        let (_, body) = read_response(&mut s);
        assert_eq!(text(&body), format!("r{i}"));
    }
    let (head, body) = read_response(&mut s);
    assert!(head.contains("Connection: close\r\n"), "{head}");
    assert_eq!(body, b"hello");
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
}

// ---------------------------------------------------------------------------
// Absolute-form requests through an upstream HTTP proxy
// ---------------------------------------------------------------------------

/// Reads a chunked body raw (sizes, extensions, trailers and all) from a fake proxy's socket.
fn read_chunked_raw(conn: &mut TcpStream) -> String {
    let mut raw = String::new();
    loop {
        let line = read_line(conn);
        raw.push_str(&line);
        let size = usize::from_str_radix(line.trim().split(';').next().unwrap(), 16).unwrap();
        if size == 0 {
            loop {
                let l = read_line(conn);
                raw.push_str(&l);
                if l.trim().is_empty() {
                    return raw;
                }
            }
        }
        raw.push_str(&text(&read_n(conn, size + 2)));
    }
}

#[test]
fn absolute_form_requests_go_to_the_upstream_proxy_with_gimlets_basic_credentials() {
    // The proxy sees each request exactly: absolute-form, Host from the URI, the client's
    // hop-by-hop fields and its Proxy-Authorization gone, gimlet's own in their place after
    // one 407 (whose body it skips), then sent from the start on the kept connection.
    let proxy = FakeProxy::start(|s| {
        let head = text(s.request());
        assert_eq!(
            head,
            "GET http://www.example/page HTTP/1.1\r\nHost: www.example\r\nAccept: */*\r\n\r\n"
        );
        s.send("HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"corp\"\r\nContent-Length: 6\r\n\r\ndenied");
        let head = text(&s.read_request().unwrap());
        assert_eq!(
            head,
            format!(
                "GET http://www.example/page HTTP/1.1\r\nHost: www.example\r\nAccept: */*\r\nProxy-Authorization: {}\r\n\r\n",
                basic("alice:pw")
            )
        );
        s.send("HTTP/1.1 200 OK\r\nContent-Length: 4\r\nProxy-Connection: keep-alive\r\n\r\npage");
        // Next request of the same client, another origin, same connection: a body.
        let head = text(&s.read_request().unwrap());
        assert_eq!(
            head,
            format!(
                "POST http://other.example:8080/form?q=1 HTTP/1.1\r\nHost: other.example:8080\r\nContent-Length: 11\r\nProxy-Authorization: {}\r\n\r\n",
                basic("alice:pw")
            )
        );
        assert_eq!(read_n(&mut s.stream, 11), b"hello world");
        s.send("HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n");
        // A chunked request body passes unchanged.
        let head = text(&s.read_request().unwrap());
        assert!(
            head.starts_with("PUT http://www.example/up HTTP/1.1\r\nHost: www.example\r\nTransfer-Encoding: chunked\r\n"),
            "{head}"
        );
        assert_eq!(read_chunked_raw(&mut s.stream), "3\r\nabc\r\n0\r\n\r\n");
        s.send("HTTP/1.1 204 No Content\r\n\r\n");
        s.wait_for_close();
    });
    let mut d = Daemon::start(&["-D", "0", "-U", "alice:pw", &proxy.addr()]);
    let mut s = d.connect();
    s.write_all(b"GET http://www.example/page HTTP/1.1\r\nHost: www.example\r\nProxy-Connection: keep-alive\r\nProxy-Authorization: Basic Y2xpZW50\r\nConnection: X-Hop\r\nX-Hop: 1\r\nAccept: */*\r\n\r\n")
        .unwrap();
    let (head, body) = read_response(&mut s);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(!head.contains("Proxy-Connection"), "{head}");
    assert_eq!(body, b"page");
    s.write_all(b"POST http://other.example:8080/form?q=1 HTTP/1.1\r\nContent-Length: 11\r\n\r\nhello world")
        .unwrap();
    let (head, body) = read_response(&mut s);
    assert!(head.starts_with("HTTP/1.1 201 Created\r\n"), "{head}");
    assert_eq!(body, b"2\r\nok\r\n0\r\n\r\n");
    s.write_all(b"PUT http://www.example/up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
        .unwrap();
    let head = text(&read_head(&mut s));
    assert!(head.starts_with("HTTP/1.1 204 No Content\r\n"), "{head}");
    let line = d.wait_for(" GET http://www.example/page via proxy 127.0.0.1:");
    assert!(
        line.contains(": 200, 0 bytes sent, 4 bytes received in "),
        "{line}"
    );
    let line = d.wait_for(" POST http://other.example:8080/form?q=1 via proxy");
    assert!(
        line.contains(": 201, 11 bytes sent, 12 bytes received"),
        "{line}"
    );
    let line = d.wait_for(" PUT http://www.example/up via proxy");
    assert!(
        line.contains(": 204, 13 bytes sent, 0 bytes received"),
        "{line}"
    );
    drop(s);
    drop(d);
    let record = proxy.finish();
    assert_eq!(record.connections, 1, "{record:?}");
    for i in 0..record.requests.len() {
        assert!(
            !record.request(i).contains("Y2xpZW50"),
            "the client's credentials went up"
        );
    }
}

/// The Digest response (RFC 7616 §3.4.1, MD5, qop=auth) a proxy expects for `method uri`.
fn digest_md5(
    user: &str,
    password: &str,
    c: &DigestChallenge,
    method: &str,
    uri: &str,
    cnonce: &str,
) -> String {
    use md5::{Digest, Md5};
    let h = |s: String| {
        Md5::digest(s.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let ha1 = h(format!("{user}:{}:{password}", c.realm));
    let ha2 = h(format!("{method}:{uri}"));
    h(format!("{ha1}:{}:00000001:{cnonce}:auth:{ha2}", c.nonce))
}

#[test]
fn a_digest_proxy_gets_each_request_again_with_its_body_after_its_407() {
    let challenge = DigestChallenge::new("MD5");
    let c = challenge.clone();
    let proxy = FakeProxy::start(move |s| {
        // Two requests, each answered 407 first: Digest signs the method and the URI.
        for (method, uri, body) in [
            ("POST", "http://www.example/form", "a=b&c"),
            ("PUT", "http://www.example/up", "3\r\nabc\r\n0\r\n\r\n"),
        ] {
            let head = if method == "POST" {
                text(s.request())
            } else {
                text(&s.read_request().unwrap())
            };
            assert!(
                head.starts_with(&format!("{method} {uri} HTTP/1.1\r\n")),
                "{head}"
            );
            assert!(proxy_authorization(&head).is_none(), "{head}");
            let got = match method {
                "POST" => text(&read_n(&mut s.stream, 5)),
                _ => read_chunked_raw(&mut s.stream),
            };
            assert_eq!(got, body);
            s.send(challenge_407(&[&c.header()]));
            let head = text(&s.read_request().unwrap());
            assert!(
                head.starts_with(&format!("{method} {uri} HTTP/1.1\r\n")),
                "{head}"
            );
            let value = proxy_authorization(&head).expect("credentials");
            let params = auth_params(value.strip_prefix("Digest ").unwrap()).unwrap();
            assert_eq!(param(&params, "uri").unwrap(), uri);
            assert_eq!(param(&params, "username").unwrap(), "dora");
            let want = digest_md5(
                "dora",
                "pa:ss",
                &c,
                method,
                uri,
                param(&params, "cnonce").unwrap(),
            );
            assert_eq!(param(&params, "response").unwrap(), want);
            let got = match method {
                "POST" => text(&read_n(&mut s.stream, 5)),
                _ => read_chunked_raw(&mut s.stream),
            };
            assert_eq!(got, body, "the body, sent again");
            s.send("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        }
        s.wait_for_close();
    });
    let mut d = Daemon::start(&["-D", "0", "-U", "dora:pa:ss", &proxy.addr()]);
    let mut s = d.connect();
    s.write_all(b"POST http://www.example/form HTTP/1.1\r\nContent-Length: 5\r\n\r\na=b&c")
        .unwrap();
    let (head, body) = read_response(&mut s);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert_eq!(body, b"ok");
    s.write_all(b"PUT http://www.example/up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
        .unwrap();
    let (head, body) = read_response(&mut s);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert_eq!(body, b"ok");
    let line = d.wait_for(" PUT http://www.example/up via proxy");
    assert!(
        line.contains(": 200, 13 bytes sent, 2 bytes received"),
        "{line}"
    );
    drop(s);
    drop(d);
    let record = proxy.finish();
    assert_eq!(record.connections, 1, "{record:?}");
    assert_eq!(record.requests.len(), 4, "{record:?}");
}

#[test]
fn an_ntlm_proxy_is_answered_on_the_kept_connection_for_absolute_form_requests() {
    let proxy = AuthProxy::new("CORP\\nina", "s3cr:t")
        .offer(Offer::Ntlm)
        .granting("HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\npage")
        .start();
    let mut d = Daemon::start(&["-D", "0", "-U", "CORP\\nina:s3cr:t", &proxy.addr()]);
    let mut s = d.connect();
    s.write_all(b"GET http://intranet.example/ HTTP/1.1\r\n\r\n")
        .unwrap();
    let (head, body) = read_response(&mut s);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert_eq!(body, b"page");
    let line = d.wait_for(" GET http://intranet.example/ via proxy");
    assert!(line.contains(": 200, "), "{line}");
    drop(s);
    drop(d);
    let record = proxy.finish();
    assert_eq!(record.requests.len(), 3, "{record:?}");
    for i in 0..3 {
        assert!(
            record
                .request(i)
                .starts_with("GET http://intranet.example/ HTTP/1.1\r\n")
        );
    }
    assert!(record.same_connection(0, 2), "NTLM on one connection");
}

#[test]
fn a_socks_route_carries_absolute_form_requests_in_origin_form() {
    let socks = FakeSocks::start(|s| {
        assert_eq!(read_greeting(s), vec![0]);
        s.write_all(&[5, 0]).unwrap();
        let _ = read_request5(s);
        s.write_all(&SOCKS5_OK).unwrap();
        let head = text(&read_head(s));
        assert_eq!(head, "GET /x HTTP/1.1\r\nHost: www.example\r\n\r\n");
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nyes")
            .unwrap();
    });
    let mut d = Daemon::start(&["-D", "0", &socks.url("socks5h")]);
    let mut s = d.connect();
    s.write_all(b"GET http://www.example/x HTTP/1.1\r\nProxy-Connection: keep-alive\r\n\r\n")
        .unwrap();
    let (head, body) = read_response(&mut s);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert_eq!(body, b"yes");
    let line = d.wait_for(" GET http://www.example/x via proxy");
    assert!(line.contains(": 200, "), "{line}");
    socks.check();
}

#[test]
fn absolute_form_without_credentials_gets_gimlets_407() {
    let proxy = FakeProxy::basic_challenge();
    let mut d = Daemon::start(&["-D", "0", &proxy.addr()]);
    let mut s = d.connect();
    s.write_all(b"GET http://www.example/ HTTP/1.1\r\n\r\n")
        .unwrap();
    let answer = read_all(&mut s);
    assert!(
        answer.starts_with("HTTP/1.1 407 Proxy Authentication Required\r\n"),
        "{answer}"
    );
    // gimlet's own 407: no challenge the client could answer (gimlet would not pass it on).
    assert!(!answer.contains("Proxy-Authenticate"), "{answer}");
    assert!(answer.contains("gimlet has no credentials"), "{answer}");
    let line = d.wait_for(" GET http://www.example/ via proxy 127.0.0.1:");
    assert!(
        line.contains(": 407 (proxy 127.0.0.1:") && line.contains("offers Basic"),
        "{line}"
    );
    drop(d);
    let record = proxy.finish();
    assert!(
        record
            .request(0)
            .starts_with("GET http://www.example/ HTTP/1.1\r\n")
    );
}

#[test]
fn a_connect_after_http_requests_on_one_connection_becomes_a_tunnel() {
    let origin = Origin::start();
    let echo = echo_server(b"tunnel\n");
    let mut d = Daemon::start(&["-D", "0"]);
    let mut s = d.connect();
    s.write_all(format!("GET http://127.0.0.1:{}/len HTTP/1.1\r\n\r\n", origin.port).as_bytes())
        .unwrap();
    assert_eq!(read_response(&mut s).1, b"hello");
    s.write_all(format!("CONNECT 127.0.0.1:{echo} HTTP/1.1\r\n\r\n").as_bytes())
        .unwrap();
    assert_eq!(text(&read_head(&mut s)), OK);
    assert_eq!(read_n(&mut s, 7), b"tunnel\n");
    echo_round_trip(&mut s, 9);
    d.wait_for(" GET http://127.0.0.1:");
    let line = d.wait_for("established #1");
    assert!(
        line.contains(&format!("CONNECT 127.0.0.1:{echo} direct")),
        "{line}"
    );
}

#[test]
fn an_origin_that_closes_without_answering_gets_the_client_a_502() {
    let origin = Origin::start();
    let mut d = Daemon::start(&["-D", "0"]);
    let mut s = d.connect();
    s.write_all(format!("GET http://127.0.0.1:{}/drop HTTP/1.1\r\n\r\n", origin.port).as_bytes())
        .unwrap();
    let answer = read_all(&mut s);
    assert!(
        answer.starts_with("HTTP/1.1 502 Bad Gateway\r\n"),
        "{answer}"
    );
    assert!(
        answer.contains("the origin closed before its response"),
        "{answer}"
    );
    let line = d.wait_for("/drop direct: 502 (");
    assert!(line.contains("closed before its response"), "{line}");
}

#[test]
fn a_port_with_client_auth_file_serves_only_clients_that_know_the_password() {
    let echo = echo_server(b"in\n");
    let file = scratch_file("dynamic-client-auth", b"ann:s3cret\n", 0o600);
    let proxy = AuthProxy::new("gim", "upstream-pw")
        .offer(Offer::Basic)
        .start();
    let mut d = Daemon::start(&[
        "-D",
        "0",
        "--client-auth-file",
        file.to_str().unwrap(),
        "-U",
        "gim:upstream-pw",
        &proxy.addr(),
    ]);
    // SOCKS5 with username/password (RFC 1929), straight to the echo server: NO_PROXY-free,
    // so through the fake proxy, which then closes; the answer is what is checked.
    let mut s = d.connect();
    let mut m = vec![5, 1, 2, 1, 3];
    m.extend(b"ann");
    m.push(6);
    m.extend(b"s3cret");
    m.extend([5, 1, 0, 3, 12]);
    m.extend(b"example.test");
    m.extend(22u16.to_be_bytes());
    s.write_all(&m).unwrap();
    assert_eq!(read_n(&mut s, 4), [5, 2, 1, 0]);
    assert_eq!(read_n(&mut s, 2), [5, 0]);
    d.wait_for("established #1");
    // HTTP without credentials: gimlet's own 407 with a Basic challenge.
    let mut s = d.connect();
    s.write_all(format!("CONNECT 127.0.0.1:{echo} HTTP/1.1\r\n\r\n").as_bytes())
        .unwrap();
    let answer = read_all(&mut s);
    assert!(answer.starts_with("HTTP/1.1 407 "), "{answer}");
    assert!(
        answer.contains("Proxy-Authenticate: Basic realm=\"gimlet\""),
        "{answer}"
    );
    let line = d.wait_for("#2 127.0.0.1:");
    assert!(line.contains("no Proxy-Authorization"), "{line}");
    // SOCKS4 cannot authenticate.
    let mut s = d.connect();
    s.write_all(&socks4([127, 0, 0, 1], echo, None)).unwrap();
    assert_eq!(read_n(&mut s, 2), [0, 91]);
    // With them: the tunnel, and the client's credentials never go upstream.
    let mut s = d.connect();
    s.write_all(
        format!(
            "CONNECT example.test:22 HTTP/1.1\r\nProxy-Authorization: Basic {}\r\n\r\n",
            basic_token("ann:s3cret")
        )
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(text(&read_head(&mut s)), OK);
    d.wait_for("established #4");
    drop(s);
    drop(d);
    let record = proxy.finish();
    for i in 0..record.requests.len() {
        assert!(
            !record.request(i).contains("s3cret") && !record.request(i).contains("YW5uOnMzY3JldA")
        );
    }
}

fn basic_token(pair: &str) -> String {
    basic(pair).trim_start_matches("Basic ").to_owned()
}

#[test]
fn silent_clients_never_hold_up_a_socks_client_that_asks() {
    let echo = echo_server(b"hi\n");
    // More silent clients than there are worker threads (64), with a --connect-timeout far
    // past the hang guard on the answer below: requests are read on the loop, so the silent
    // ones hold a socket each and no worker. (When a worker read each request, they held
    // every worker and this client waited for their minute.)
    let mut d = Daemon::start(&["-D", "0", "--connect-timeout", "60"]);
    let silent: Vec<TcpStream> = (0..80).map(|_| d.connect()).collect();
    let mut s = d.connect();
    s.write_all(&socks5_domain("localhost", echo)).unwrap();
    assert_eq!(read_n(&mut s, 2), [5, 0]);
    assert_eq!(read_n(&mut s, 10), [5, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    assert_eq!(read_n(&mut s, 3), b"hi\n");
    let line = d.wait_for("established #81 ");
    assert!(line.contains("SOCKS5 localhost:"), "{line}");
    drop(silent);
}

#[test]
fn clients_still_sending_their_request_are_bounded_and_the_oldest_goes_first() {
    // --max-tunnels 8: at most a quarter, 2, may be sending their request at once.
    let mut d = Daemon::start(&["-D", "0", "--max-tunnels", "8"]);
    let mut first = d.connect();
    let _second = d.connect();
    let _third = d.connect();
    assert_eq!(
        read_all(&mut first),
        "",
        "the oldest is closed without an answer"
    );
    let line = d.wait_for("#1 127.0.0.1:");
    assert!(
        line.contains("request: closed (too many clients were still sending their requests; this one, the oldest, was closed)"),
        "{line}"
    );
}
