//! An HTTP/2 CONNECT proxy for the tests, made with the same `h2` crate gimlet uses, over TLS
//! (tokio-rustls) with the test PKI. Each CONNECT stream is answered by a script; a granted
//! stream is forwarded to the `:authority` over TCP (a target the test runs on 127.0.0.1).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use h2::{Reason, RecvStream, SendStream};
use http::{Response, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What one CONNECT request looked like.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    /// The request target as the proxy saw it: the `:authority` alone for a proper CONNECT.
    pub uri: String,
    pub headers: Vec<(String, String)>,
    /// The connection (0, 1, ...) it came on.
    pub connection: usize,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The proxy's answer to one CONNECT.
pub enum H2Answer {
    /// 2xx, optional DATA sent with the headers, then forwarding to the `:authority`.
    Grant { status: u16, early: Vec<u8> },
    /// A final status with headers and no tunnel.
    Status(u16, Vec<(&'static str, String)>),
    /// 200, `early` as DATA, then RST_STREAM with this reason.
    ResetAfter(Vec<u8>, Reason),
    /// 200, `early` as DATA, then GOAWAY (abrupt) with this reason.
    GoAwayAfter(Vec<u8>, Reason),
    /// RST_STREAM(REFUSED_STREAM) without a response.
    RefuseStream,
    /// No response: GOAWAY (abrupt, NO_ERROR) and the connection ends.
    GoAwayInstead,
    /// 200, these bytes with END_STREAM, then RST_STREAM(NO_ERROR), as nghttpx does when the
    /// target closed.
    EndThenReset(Vec<u8>),
    /// 200, these bytes as DATA; once the client's END_STREAM came, an empty DATA frame with
    /// END_STREAM (the end as a frame of its own, as a proxy sends it when the target closes
    /// after its last bytes went out).
    EmptyEndAfterClient(Vec<u8>),
}

type Script = dyn Fn(&Seen, usize) -> H2Answer + Send + Sync;

pub struct H2Proxy {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<AtomicU64>,
    /// Bytes of the target's data the proxy managed to send on (granted flow control).
    pub sent_down: Arc<AtomicU64>,
    /// Each connection's control channel, by connection number.
    controls: Arc<Mutex<Vec<Control>>>,
}

/// Asks one connection to send GOAWAY(NO_ERROR) as servers do when they stop: the streams
/// open go on to their end, new ones are refused.
type Control = tokio::sync::mpsc::UnboundedSender<()>;

/// Settings of the proxy's HTTP/2 server.
#[derive(Clone, Copy, Default)]
pub struct H2Settings {
    /// SETTINGS_MAX_CONCURRENT_STREAMS.
    pub max_streams: Option<u32>,
    /// SETTINGS_INITIAL_WINDOW_SIZE (default 4 MiB).
    pub stream_window: Option<u32>,
    /// Grant a stream's window again only once all of it was used (RFC 9113 lets a receiver
    /// wait for that): a client that holds back the window's last bytes waits for ever.
    pub whole_windows: bool,
}

impl H2Proxy {
    /// Listens on 127.0.0.1:0 with `config` (ALPN set to `alpn`), answering each CONNECT with
    /// `script(request, index among all requests)`.
    pub fn start(
        config: Arc<rustls::ServerConfig>,
        alpn: &[&[u8]],
        script: impl Fn(&Seen, usize) -> H2Answer + Send + Sync + 'static,
    ) -> H2Proxy {
        H2Proxy::start_with(config, alpn, H2Settings::default(), script)
    }

    /// Like [`H2Proxy::start`], with these server settings.
    pub fn start_with(
        config: Arc<rustls::ServerConfig>,
        alpn: &[&[u8]],
        settings: H2Settings,
        script: impl Fn(&Seen, usize) -> H2Answer + Send + Sync + 'static,
    ) -> H2Proxy {
        let mut config = (*config).clone();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicU64::new(0));
        let sent_down = Arc::new(AtomicU64::new(0));
        let script: Arc<Script> = Arc::new(script);
        let controls = Arc::new(Mutex::new(Vec::new()));
        let (s, c, d) = (seen.clone(), connections.clone(), sent_down.clone());
        let ctl = controls.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        return;
                    };
                    let n = c.fetch_add(1, Ordering::SeqCst) as usize;
                    let (control, control_rx) = tokio::sync::mpsc::unbounded_channel();
                    ctl.lock().unwrap().push(control);
                    let (acceptor, s, d, script) =
                        (acceptor.clone(), s.clone(), d.clone(), script.clone());
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        serve(tls, n, settings, s, d, script, control_rx).await;
                    });
                }
            });
        });
        H2Proxy {
            addr,
            seen,
            connections,
            sent_down,
            controls,
        }
    }

    /// Connection `n` (0, 1, ...) says GOAWAY gracefully.
    pub fn goaway_gracefully(&self, n: usize) {
        let controls = self.controls.lock().unwrap();
        controls[n].send(()).expect("the connection is gone");
    }

    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    pub fn name(&self) -> String {
        format!("localhost:{}", self.addr.port())
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }
}

async fn serve(
    tls: tokio_rustls::server::TlsStream<TcpStream>,
    n: usize,
    settings: H2Settings,
    seen: Arc<Mutex<Vec<Seen>>>,
    sent_down: Arc<AtomicU64>,
    script: Arc<Script>,
    mut control: tokio::sync::mpsc::UnboundedReceiver<()>,
) {
    let mut builder = h2::server::Builder::new();
    builder
        .initial_window_size(settings.stream_window.unwrap_or(4 << 20))
        .initial_connection_window_size(16 << 20);
    let whole_window = settings
        .whole_windows
        .then(|| settings.stream_window.unwrap_or(4 << 20) as usize);
    if let Some(max) = settings.max_streams {
        builder.max_concurrent_streams(max);
    }
    let mut conn = match builder.handshake::<_, Bytes>(tls).await {
        Ok(c) => c,
        Err(_) => return,
    };
    let (goaway, mut goaway_rx) = tokio::sync::mpsc::unbounded_channel::<Reason>();
    loop {
        let next = tokio::select! {
            next = conn.accept() => next,
            Some(reason) = goaway_rx.recv() => {
                conn.abrupt_shutdown(reason);
                continue;
            }
            Some(()) = control.recv() => {
                conn.graceful_shutdown();
                continue;
            }
        };
        let Some(Ok((request, mut respond))) = next else {
            return;
        };
        let (parts, recv) = request.into_parts();
        let request = Seen {
            method: parts.method.to_string(),
            uri: parts.uri.to_string(),
            headers: parts
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            connection: n,
        };
        let index = {
            let mut seen = seen.lock().unwrap();
            seen.push(request.clone());
            seen.len() - 1
        };
        let response = |code: u16| {
            Response::builder()
                .status(StatusCode::from_u16(code).unwrap())
                .body(())
                .unwrap()
        };
        match script(&request, index) {
            H2Answer::Grant { status, early } => {
                let Ok(mut send) = respond.send_response(response(status), false) else {
                    continue;
                };
                if !early.is_empty() {
                    let _ = send.send_data(Bytes::from(early), false);
                }
                let d = sent_down.clone();
                tokio::spawn(forward(request.uri.clone(), send, recv, d, whole_window));
            }
            H2Answer::Status(code, headers) => {
                let mut r = response(code);
                for (k, v) in headers {
                    r.headers_mut().append(k, v.parse().unwrap());
                }
                let _ = respond.send_response(r, true);
            }
            // The client's first DATA shows it got `early`: then the reset or GOAWAY.
            H2Answer::ResetAfter(early, reason) => {
                if let Ok(mut send) = respond.send_response(response(200), false) {
                    let _ = send.send_data(Bytes::from(early), false);
                    let mut recv = recv;
                    tokio::spawn(async move {
                        let _ = recv.data().await;
                        send.send_reset(reason);
                        // Keep the stream's handles until the reset is out.
                        let _ = recv.data().await;
                    });
                }
            }
            H2Answer::GoAwayAfter(early, reason) => {
                if let Ok(mut send) = respond.send_response(response(200), false) {
                    let _ = send.send_data(Bytes::from(early), false);
                    let (mut recv, goaway) = (recv, goaway.clone());
                    tokio::spawn(async move {
                        let _ = recv.data().await;
                        let _ = goaway.send(reason);
                        let _ = recv.data().await;
                        drop(send);
                    });
                }
            }
            H2Answer::RefuseStream => respond.send_reset(Reason::REFUSED_STREAM),
            H2Answer::GoAwayInstead => {
                drop((respond, recv));
                conn.abrupt_shutdown(Reason::NO_ERROR);
            }
            H2Answer::EmptyEndAfterClient(bytes) => {
                if let Ok(mut send) = respond.send_response(response(200), false) {
                    let _ = send.send_data(Bytes::from(bytes), false);
                    let mut recv = recv;
                    tokio::spawn(async move {
                        while let Some(Ok(chunk)) = recv.data().await {
                            let _ = recv.flow_control().release_capacity(chunk.len());
                        }
                        let _ = send.send_data(Bytes::new(), true);
                        // Keep the stream's handles until the frame is out.
                        std::future::pending::<()>().await;
                    });
                }
            }
            H2Answer::EndThenReset(bytes) => {
                if let Ok(mut send) = respond.send_response(response(200), false) {
                    let _ = send.send_data(Bytes::from(bytes), true);
                    let mut recv = recv;
                    // This loop polls the connection (writing the DATA out) before the
                    // task runs: then the reset, which would otherwise discard queued DATA.
                    tokio::spawn(async move {
                        send.send_reset(Reason::NO_ERROR);
                        let _ = recv.data().await;
                    });
                }
            }
        }
    }
}

/// Forwards one granted stream to the target at `authority`, both ways, with half-closes;
/// with `whole_window`, the window goes back only once all of it came.
async fn forward(
    authority: String,
    mut send: SendStream<Bytes>,
    mut recv: RecvStream,
    sent_down: Arc<AtomicU64>,
    whole_window: Option<usize>,
) {
    let Ok(tcp) = TcpStream::connect(authority.as_str()).await else {
        send.send_reset(Reason::CONNECT_ERROR);
        return;
    };
    let (mut rd, mut wr) = tcp.into_split();
    let up = async move {
        let mut used = 0;
        while let Some(Ok(chunk)) = recv.data().await {
            if wr.write_all(&chunk).await.is_err() {
                return;
            }
            used += chunk.len();
            if whole_window.is_none_or(|w| used >= w) {
                let _ = recv.flow_control().release_capacity(used);
                used = 0;
            }
        }
        let _ = wr.shutdown().await;
    };
    let down = async move {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match rd.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    let _ = send.send_data(Bytes::new(), true);
                    return;
                }
                Ok(n) => n,
            };
            let mut data = Bytes::copy_from_slice(&buf[..n]);
            while !data.is_empty() {
                send.reserve_capacity(data.len());
                match std::future::poll_fn(|cx| send.poll_capacity(cx)).await {
                    Some(Ok(room)) if room > 0 => {
                        let chunk = data.split_to(room.min(data.len()));
                        sent_down.fetch_add(chunk.len() as u64, Ordering::SeqCst);
                        if send.send_data(chunk, false).is_err() {
                            return;
                        }
                    }
                    Some(Ok(_)) => {}
                    _ => return,
                }
            }
        }
    };
    tokio::join!(up, down);
}
