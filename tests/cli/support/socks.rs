//! Scripted fake SOCKS servers, and a fake HTTP proxy that really forwards, for route tests.
//! A [`FakeSocks`] hands each connection to its script untouched (SOCKS has no head to read
//! first); helpers read the greeting and requests byte-exactly.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use super::{FakeProxy, OK};

type Script = dyn Fn(&mut TcpStream) + Send + Sync;

/// A scripted SOCKS server on `127.0.0.1:0`.
pub struct FakeSocks {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    /// What each script panicked with, if it did.
    failures: Arc<Mutex<Vec<String>>>,
}

impl FakeSocks {
    pub fn start(script: impl Fn(&mut TcpStream) + Send + Sync + 'static) -> FakeSocks {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let script: Arc<Script> = Arc::new(script);
        let connections = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let (c, f) = (connections.clone(), failures.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut stream) = conn else { continue };
                c.fetch_add(1, Ordering::SeqCst);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
                let script = script.clone();
                let f = f.clone();
                thread::spawn(move || {
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        script(&mut stream)
                    }));
                    if let Err(p) = r {
                        let m = p
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_default();
                        f.lock().unwrap().push(m);
                    }
                });
            }
        });
        FakeSocks {
            addr,
            connections,
            failures,
        }
    }

    /// A SOCKS5 server that accepts no authentication and any CONNECT, then echoes.
    pub fn socks5_echo() -> FakeSocks {
        FakeSocks::start(|s| {
            assert_eq!(read_greeting(s), vec![0]);
            s.write_all(&[5, 0]).unwrap();
            let _ = read_request5(s);
            s.write_all(&SOCKS5_OK).unwrap();
            echo(s);
        })
    }

    /// A SOCKS5 server that needs `user`/`pass` (RFC 1929), then echoes.
    pub fn socks5_with_password(user: &'static str, pass: &'static str) -> FakeSocks {
        FakeSocks::start(move |s| {
            let methods = read_greeting(s);
            if !methods.contains(&2) {
                s.write_all(&[5, 0xff]).unwrap();
                return;
            }
            s.write_all(&[5, 2]).unwrap();
            let (u, p) = read_rfc1929(s);
            if (u.as_str(), p.as_str()) != (user, pass) {
                s.write_all(&[1, 1]).unwrap();
                return;
            }
            s.write_all(&[1, 0]).unwrap();
            let _ = read_request5(s);
            s.write_all(&SOCKS5_OK).unwrap();
            echo(s);
        })
    }

    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// `scheme://127.0.0.1:port`.
    pub fn url(&self, scheme: &str) -> String {
        format!("{scheme}://{}", self.addr)
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Panics if a script failed.
    #[track_caller]
    pub fn check(&self) {
        let f = self.failures.lock().unwrap();
        assert!(f.is_empty(), "fake SOCKS script failed: {f:?}");
    }
}

/// A granted SOCKS5 reply, bound to 127.0.0.1:1080.
pub const SOCKS5_OK: [u8; 10] = [5, 0, 0, 1, 127, 0, 0, 1, 0x04, 0x38];

/// Reads a SOCKS5 greeting; returns the offered methods.
pub fn read_greeting(s: &mut TcpStream) -> Vec<u8> {
    let mut head = [0u8; 2];
    s.read_exact(&mut head).expect("greeting");
    assert_eq!(head[0], 5, "not a SOCKS5 greeting");
    let mut methods = vec![0u8; head[1] as usize];
    s.read_exact(&mut methods).expect("methods");
    methods
}

/// Reads an RFC 1929 request: (user, password).
pub fn read_rfc1929(s: &mut TcpStream) -> (String, String) {
    let mut b = [0u8; 2];
    s.read_exact(&mut b).expect("auth head");
    assert_eq!(b[0], 1, "RFC 1929 version");
    let mut user = vec![0u8; b[1] as usize];
    s.read_exact(&mut user).expect("user");
    let mut plen = [0u8; 1];
    s.read_exact(&mut plen).expect("plen");
    let mut pass = vec![0u8; plen[0] as usize];
    s.read_exact(&mut pass).expect("pass");
    (
        String::from_utf8(user).unwrap(),
        String::from_utf8(pass).unwrap(),
    )
}

/// A SOCKS5 CONNECT request as "host:port" (names as given, addresses as printed).
pub fn read_request5(s: &mut TcpStream) -> String {
    let mut h = [0u8; 4];
    s.read_exact(&mut h).expect("request head");
    assert_eq!(&h[..3], &[5, 1, 0], "SOCKS5 CONNECT");
    let host = match h[3] {
        1 => {
            let mut a = [0u8; 4];
            s.read_exact(&mut a).unwrap();
            std::net::Ipv4Addr::from(a).to_string()
        }
        4 => {
            let mut a = [0u8; 16];
            s.read_exact(&mut a).unwrap();
            format!("[{}]", std::net::Ipv6Addr::from(a))
        }
        3 => {
            let mut l = [0u8; 1];
            s.read_exact(&mut l).unwrap();
            let mut n = vec![0u8; l[0] as usize];
            s.read_exact(&mut n).unwrap();
            String::from_utf8(n).unwrap()
        }
        t => panic!("address type {t}"),
    };
    let mut p = [0u8; 2];
    s.read_exact(&mut p).unwrap();
    format!("{host}:{}", u16::from_be_bytes(p))
}

/// A SOCKS4/4a request: (port, address, user id, name for 4a).
pub fn read_request4(s: &mut TcpStream) -> (u16, [u8; 4], String, Option<String>) {
    let mut h = [0u8; 8];
    s.read_exact(&mut h).expect("SOCKS4 request");
    assert_eq!(&h[..2], &[4, 1], "SOCKS4 CONNECT");
    let port = u16::from_be_bytes([h[2], h[3]]);
    let ip = [h[4], h[5], h[6], h[7]];
    let user = read_nul(s);
    let name = (ip[..3] == [0, 0, 0] && ip[3] != 0).then(|| read_nul(s));
    (port, ip, user, name)
}

fn read_nul(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    loop {
        s.read_exact(&mut b).expect("NUL-terminated field");
        if b[0] == 0 {
            return String::from_utf8(out).unwrap();
        }
        out.push(b[0]);
    }
}

/// Echoes until EOF, then closes the write half.
pub fn echo(s: &mut TcpStream) {
    let mut r = s.try_clone().unwrap();
    let _ = io::copy(&mut r, s);
    let _ = s.shutdown(Shutdown::Write);
}

/// Copies both ways between `a` and `b` until both directions are done, passing half-closes.
pub fn splice_both(a: TcpStream, b: TcpStream) {
    let (a2, b2) = (a.try_clone().unwrap(), b.try_clone().unwrap());
    let t = thread::spawn(move || pipe(a2, b2));
    pipe(b, a);
    let _ = t.join();
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let _ = io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}

/// An HTTP proxy that really connects to the CONNECT target (loopback only) and relays: a
/// hop in a chain of fakes. Every request head is recorded as usual.
pub fn forwarding_proxy() -> FakeProxy {
    FakeProxy::start(|s| {
        let head = String::from_utf8_lossy(s.request()).into_owned();
        let target = head
            .split_whitespace()
            .nth(1)
            .expect("CONNECT target")
            .to_owned();
        assert!(
            ["127.0.0.1:", "[::1]:", "localhost:"]
                .iter()
                .any(|p| target.starts_with(p)),
            "a fake must stay on the loopback: {target}"
        );
        let upstream = TcpStream::connect(&target).expect("forwarding proxy connect");
        s.send(OK);
        splice_both(s.stream.try_clone().unwrap(), upstream);
    })
}

/// An echo server that is the destination itself (for direct routes).
pub fn echo_server() -> (SocketAddr, thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let h = thread::spawn(move || {
        if let Ok((mut s, _)) = l.accept() {
            echo(&mut s);
        }
    });
    (addr, h)
}
