//! The CONNECT of the simplest routes, on the engine's loop: one plain `http://` proxy (at an
//! IP address, or named: then at the address a worker's handshake resolved and reached, for
//! a while), no credentials or Basic ones sent at once
//! ([`crate::tunnel::PlainConnect`]). A non-blocking
//! connect, the request written as soon as the socket takes it, the reply fed to the same
//! sans-IO [`ReplyReader`] the worker's handshake uses.
//!
//! Why on the loop: a worker's handshake costs two thread hand-offs (loop → worker, worker
//! → loop through the waker), a measurable part of what `-L` adds to a client's own CONNECT
//! (README, "Listen mode": a p50 ratio of 1.39–1.47 here against 1.61–1.77 via a worker). Only the success is handled here: anything else (a 407,
//! a refusal, a malformed or cut reply, a refused connect) goes to a worker from scratch,
//! whose handshake then says and logs exactly what it always has; after an answer other than
//! a 2xx (a proxy that wants credentials, say) the forward's next tunnels go there directly. A deadline that passes
//! here is the one thing not handed on (it would double the wait): it is logged with the
//! worker's own words.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;

use crate::connect::secs;
use crate::handshake::{Reply, ReplyReader};
use crate::tunnel::PlainConnect;

/// One tunnel being opened on the loop.
pub struct Connecting {
    pub tunnel: TcpStream,
    /// Bytes of the request written so far.
    sent: usize,
    /// The connect completed (a write went through, or the socket said so).
    connected: bool,
    reader: ReplyReader,
    pub deadline: Instant,
}

/// What a readiness event led to.
pub enum Step {
    /// Waiting for the socket.
    More,
    /// A 2xx: the tunnel is open; `leftover` came after the reply head and is the tunnel's.
    Open { reply: Reply, leftover: Vec<u8> },
    /// The proxy answered with something else (a 407, a refusal, bytes that are not a
    /// reply): a worker does the whole handshake again and says what it means, and, as the
    /// proxy would most likely answer the next CONNECT the same way, the next ones go to the
    /// workers directly (a proxy that wants Kerberos would otherwise cost a 407 per tunnel).
    Answered,
    /// The connection failed or closed before a whole reply: a worker tries again and says
    /// why it fails.
    Hand,
}

impl Connecting {
    /// Starts the connect and writes what the socket takes of the request at once (on
    /// loopback the connect is often complete when `connect` returns). `None` when the
    /// connect failed at once: a worker's handshake says why.
    pub fn start(plain: &PlainConnect, addr: SocketAddr, now: Instant) -> Option<Connecting> {
        let tunnel = TcpStream::connect(addr).ok()?;
        let mut c = Connecting {
            tunnel,
            sent: 0,
            connected: false,
            reader: ReplyReader::default(),
            deadline: now + plain.timeout,
        };
        // The request first, the options after: the proxy works on it meanwhile. Nagle does
        // not hold a connection's first segment (nothing is unacknowledged yet), so the
        // request goes out as it would with TCP_NODELAY already set.
        if let Step::Hand = c.send(plain) {
            return None;
        }
        // As the worker's dial does (connect.rs): interactive traffic, and keepalive for the
        // proxies and NAT boxes that drop idle tunnels.
        c.tunnel.set_nodelay(true).ok()?;
        if let Some(idle) = plain.keepalive {
            let params = socket2::TcpKeepalive::new()
                .with_time(idle)
                .with_interval(idle.min(Duration::from_secs(15)));
            socket2::SockRef::from(&c.tunnel)
                .set_tcp_keepalive(&params)
                .ok()?;
        }
        Some(c)
    }

    /// The socket is ready (or may be): write the rest of the request, read the reply.
    pub fn ready(&mut self, plain: &PlainConnect) -> Step {
        if !self.connected {
            match self.tunnel.take_error() {
                Ok(None) => {}
                Ok(Some(_)) | Err(_) => return Step::Hand,
            }
            match self.tunnel.peer_addr() {
                Ok(_) => self.connected = true,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return Step::More,
                Err(_) => return Step::Hand,
            }
        }
        match self.send(plain) {
            Step::More if self.sent == plain.request.len() => self.receive(),
            other => other,
        }
    }

    fn send(&mut self, plain: &PlainConnect) -> Step {
        while self.sent < plain.request.len() {
            match self.tunnel.write(&plain.request[self.sent..]) {
                Ok(0) => return Step::Hand,
                Ok(n) => {
                    self.sent += n;
                    self.connected = true;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Still connecting (EAGAIN, or ENOTCONN on some kernels), or the buffer is full.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::NotConnected
                    ) =>
                {
                    return Step::More;
                }
                Err(_) => return Step::Hand,
            }
        }
        Step::More
    }

    fn receive(&mut self) -> Step {
        let mut chunk = [0u8; 4 * 1024];
        loop {
            let n = match self.tunnel.read(&mut chunk) {
                Ok(0) => return Step::Hand,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::More,
                Err(_) => return Step::Hand,
            };
            match self.reader.feed(&chunk[..n]) {
                Ok(None) => {}
                Ok(Some((reply, leftover))) if reply.is_success() => {
                    return Step::Open { reply, leftover };
                }
                Ok(Some(_)) | Err(_) => return Step::Answered,
            }
        }
    }

    /// The log's reason when the deadline passed: the words of the worker's handshake for the
    /// step it was at (connect.rs, handshake.rs).
    pub fn timed_out(&self, plain: &PlainConnect) -> String {
        let doing = match (self.connected, self.sent == plain.request.len()) {
            (false, _) => format!("connecting to proxy {}", plain.proxy),
            (true, false) => format!("sending CONNECT to proxy {}", plain.proxy),
            (true, true) => format!("reading the reply from proxy {}", plain.proxy),
        };
        format!(
            "{doing}: timed out after {} (--connect-timeout)",
            secs(plain.timeout)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::{Events, Interest, Poll, Token};
    use std::net::TcpListener;

    const REPLY: &[u8] = b"HTTP/1.1 200 Connection established\r\nVia: 1.1 p\r\n\r\n";

    fn plain(addr: SocketAddr) -> PlainConnect {
        PlainConnect {
            addr: Some(addr),
            proxy: addr.to_string(),
            request: zeroize::Zeroizing::new(
                b"CONNECT h.example:22 HTTP/1.1\r\nHost: h.example:22\r\n\r\n".to_vec(),
            ),
            timeout: Duration::from_secs(5),
            keepalive: Some(Duration::from_secs(60)),
        }
    }

    /// A connection being opened to `listener`, registered with its own poll, and the
    /// proxy's side of it once the whole request came in.
    struct Opened {
        c: Connecting,
        poll: Poll,
        proxy: std::net::TcpStream,
    }

    fn open(plain: &PlainConnect, listener: &TcpListener) -> Opened {
        let mut c = Connecting::start(plain, plain.addr.unwrap(), Instant::now())
            .expect("the connect starts");
        let poll = Poll::new().unwrap();
        poll.registry()
            .register(
                &mut c.tunnel,
                Token(0),
                Interest::READABLE | Interest::WRITABLE,
            )
            .unwrap();
        let (proxy, _) = listener.accept().expect("accept");
        proxy
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut o = Opened { c, poll, proxy };
        while o.c.sent < plain.request.len() {
            assert!(matches!(o.step(plain), Step::More));
        }
        let mut request = vec![0; plain.request.len()];
        o.proxy.read_exact(&mut request).expect("the request");
        assert_eq!(request, *plain.request);
        o
    }

    impl Opened {
        /// Waits for an event (or 20 ms: readiness is only a hint), then drives.
        fn step(&mut self, plain: &PlainConnect) -> Step {
            let mut events = Events::with_capacity(4);
            let _ = self.poll.poll(&mut events, Some(Duration::from_millis(20)));
            self.c.ready(plain)
        }

        /// Sends `pieces` one at a time, driving after each, until something other than
        /// `More` comes (for at most 20 s).
        fn reply(&mut self, plain: &PlainConnect, pieces: &[&[u8]]) -> Step {
            for piece in pieces {
                self.proxy.write_all(piece).unwrap();
                match self.c.ready(plain) {
                    Step::More => {}
                    done => return done,
                }
            }
            let limit = Instant::now() + Duration::from_secs(20);
            while Instant::now() < limit {
                match self.step(plain) {
                    Step::More => {}
                    done => return done,
                }
            }
            panic!("no outcome within 20s");
        }
    }

    #[test]
    fn a_2xx_split_anywhere_opens_the_tunnel_and_no_byte_after_it_is_lost() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let plain = plain(listener.local_addr().unwrap());
        let early = b"SSH-2.0-early";
        let whole = [REPLY, early].concat();
        for cut in 0..=whole.len() {
            let mut o = open(&plain, &listener);
            let (a, b) = whole.split_at(cut);
            o.proxy.write_all(a).unwrap();
            let Step::Open { reply, leftover } = o.c.ready(&plain) else {
                // The head was not whole yet: the rest brings it.
                let Step::Open { reply, leftover } = o.reply(&plain, &[b]) else {
                    panic!("cut {cut}: not open");
                };
                assert_eq!(reply.code, 200, "cut {cut}");
                assert_eq!(leftover, early, "cut {cut}");
                continue;
            };
            assert_eq!(reply.status_line, "HTTP/1.1 200 Connection established");
            // What came with the head is the tunnel's; what comes after stays in the socket.
            o.proxy.write_all(b).unwrap();
            let mut got = leftover;
            let limit = Instant::now() + Duration::from_secs(20);
            while got.len() < early.len() {
                assert!(Instant::now() < limit, "cut {cut}: tunnel bytes missing");
                let mut buf = [0u8; 64];
                match o.c.tunnel.read(&mut buf) {
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        let mut events = Events::with_capacity(4);
                        let _ = o.poll.poll(&mut events, Some(Duration::from_millis(20)));
                    }
                    Err(e) => panic!("cut {cut}: {e}"),
                }
            }
            assert_eq!(got, early, "cut {cut}");
        }
    }

    #[test]
    fn the_tunnels_options_are_set_though_the_request_goes_first() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let plain = plain(listener.local_addr().unwrap());
        let o = open(&plain, &listener);
        let sock = socket2::SockRef::from(&o.c.tunnel);
        assert!(sock.tcp_nodelay().unwrap());
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(60));
        assert_eq!(
            sock.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(15)
        );
    }

    #[test]
    fn a_2xx_after_an_interim_1xx_opens_the_tunnel() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let plain = plain(listener.local_addr().unwrap());
        let mut o = open(&plain, &listener);
        let step = o.reply(
            &plain,
            &[b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.0 204 OK\n\n"],
        );
        assert!(matches!(step, Step::Open { ref leftover, .. } if leftover.is_empty()));
    }

    #[test]
    fn anything_but_a_2xx_goes_to_a_worker_and_says_the_proxy_answered() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let plain = plain(listener.local_addr().unwrap());
        let replies: [&[u8]; 5] = [
            b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"p\"\r\n\r\n",
            b"HTTP/1.1 403 Forbidden\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            b"SSH-2.0-OpenSSH_9.6\r\n",
            b"HTTP/1.1 2x0 what\r\n\r\n",
        ];
        for reply in replies {
            let mut o = open(&plain, &listener);
            let step = o.reply(&plain, &[reply]);
            assert!(
                matches!(step, Step::Answered),
                "{:?}",
                String::from_utf8_lossy(reply)
            );
        }
        // Closed before a reply, and in the middle of one.
        for said in [&b""[..], b"HTTP/1.1 200 Conn"] {
            let mut o = open(&plain, &listener);
            o.proxy.write_all(said).unwrap();
            o.proxy.shutdown(std::net::Shutdown::Write).unwrap();
            assert!(matches!(o.reply(&plain, &[]), Step::Hand));
        }
    }

    #[test]
    fn a_refused_connect_goes_to_a_worker() {
        let addr = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let plain = plain(addr);
        // Refused at once, or reported by the socket on its first event.
        let Some(mut c) = Connecting::start(&plain, addr, Instant::now()) else {
            return;
        };
        let mut poll = Poll::new().unwrap();
        poll.registry()
            .register(
                &mut c.tunnel,
                Token(0),
                Interest::READABLE | Interest::WRITABLE,
            )
            .unwrap();
        let limit = Instant::now() + Duration::from_secs(20);
        let mut events = Events::with_capacity(4);
        loop {
            let _ = poll.poll(&mut events, Some(Duration::from_millis(20)));
            match c.ready(&plain) {
                Step::Hand => return,
                Step::Open { .. } | Step::Answered => panic!("an answer from a closed port"),
                Step::More => assert!(Instant::now() < limit, "no outcome within 20s"),
            }
        }
    }

    #[test]
    fn a_passed_deadline_is_told_in_the_handshakes_words_for_the_step_it_was_at() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut plain = plain(listener.local_addr().unwrap());
        plain.timeout = Duration::from_millis(1500);
        let p = plain.proxy.clone();
        let mut o = open(&plain, &listener);
        assert_eq!(
            o.c.timed_out(&plain),
            format!("reading the reply from proxy {p}: timed out after 1.5s (--connect-timeout)")
        );
        (o.c.connected, o.c.sent) = (true, 3);
        assert_eq!(
            o.c.timed_out(&plain),
            format!("sending CONNECT to proxy {p}: timed out after 1.5s (--connect-timeout)")
        );
        o.c.connected = false;
        assert_eq!(
            o.c.timed_out(&plain),
            format!("connecting to proxy {p}: timed out after 1.5s (--connect-timeout)")
        );
    }
}
