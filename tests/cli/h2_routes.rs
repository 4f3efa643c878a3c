//! HTTP/2 hops in chains: `https+h2://` (and `--proxy-http2` for every `https://` hop) first,
//! in the middle and last, over plain and TLS hops and over each other, against the in-process
//! h2 proxy (`support_h2`), the forwarding HTTP fake and an HTTP/1.1-over-TLS forwarder here.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::thread;

use h2::Reason;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;
use crate::support_h2::*;
use crate::support_tls::*;

const UP_SEED: u64 = 0x5eed_0003_0002_0001;
const DOWN_SEED: u64 = 0x5eed_0004_0002_0002;
/// Enough to cross several flow-control windows of the test proxy and TLS records of every
/// layer, small enough for a shared machine.
const LEN: usize = 3 << 20;

fn grant(_: &Seen, _: usize) -> H2Answer {
    H2Answer::Grant {
        status: 200,
        early: Vec::new(),
    }
}

fn h2_proxy(
    pki: &Pki,
    script: impl Fn(&Seen, usize) -> H2Answer + Send + Sync + 'static,
) -> H2Proxy {
    H2Proxy::start(pki.server.server_config(), &[b"h2"], script)
}

/// The proxy as a per-hop HTTP/2 URL.
fn h2_url(p: &H2Proxy) -> String {
    p.url().replacen("https://", "https+h2://", 1)
}

fn http_url(p: &FakeProxy) -> String {
    format!("http://{}", p.addr())
}

/// A one-connection destination on 127.0.0.1 that takes the whole upload (to EOF: gimlet's
/// stdin ended, and the half-close crossed every hop), then sends the download and closes.
fn destination() -> (u16, thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind destination");
    let port = listener.local_addr().unwrap().port();
    let t = thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("destination accept");
        verify_stream(&mut s, UP_SEED, LEN, "upload at the destination");
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "nothing after the upload");
        write_stream(&mut s, DOWN_SEED, LEN).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
    });
    (port, t)
}

/// gimlet through `hops` (with `extra` options, trusting the test CA) to the destination:
/// uploads, closes stdin, verifies the download to EOF; returns how gimlet ended.
fn through(pki: &Pki, extra: &[&str], hops: &[String]) -> Finished {
    let (port, t) = destination();
    let mut cmd = gimlet_std();
    cmd.arg("--proxy-cacert").arg(pki.ca.file()).args(extra);
    for hop in hops {
        cmd.args(["-p", hop]);
    }
    cmd.args(["127.0.0.1", &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut g = spawn(&mut cmd);
    let mut stdin = g.stdin.take().unwrap();
    let up = thread::spawn(move || {
        write_stream(&mut stdin, UP_SEED, LEN).unwrap();
        // Dropped: EOF on gimlet's stdin.
    });
    let mut stdout = g.stdout.take().unwrap();
    verify_stream(&mut stdout, DOWN_SEED, LEN, "download on stdout");
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "nothing after the download");
    up.join().unwrap();
    let f = g.wait(HANG);
    t.join().unwrap();
    f
}

/// An HTTP/1.1 CONNECT proxy over TLS that really forwards (loopback only), taking the ALPN
/// protocols `alpn` and recording what each connection agreed (it cannot speak `h2`: a
/// connection that agreed to it is recorded and dropped).
struct TlsForwarder {
    addr: SocketAddr,
    alpn: Arc<Mutex<Vec<Option<Vec<u8>>>>>,
}

impl TlsForwarder {
    fn start(pki: &Pki, alpn: &[&[u8]]) -> TlsForwarder {
        let mut config = (*pki.server.server_config()).clone();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let alpn = Arc::new(Mutex::new(Vec::new()));
        let seen = alpn.clone();
        thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                while let Ok((tcp, _)) = listener.accept().await {
                    let (acceptor, seen) = (acceptor.clone(), seen.clone());
                    tokio::spawn(async move {
                        let Ok(mut tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let agreed = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
                        let h2 = agreed.as_deref() == Some(b"h2");
                        seen.lock().unwrap().push(agreed);
                        if h2 {
                            return; // Recorded: the test fails on it.
                        }
                        let mut head = Vec::new();
                        while !head.ends_with(b"\r\n\r\n") {
                            let mut b = [0u8; 1];
                            if tls.read_exact(&mut b).await.is_err() {
                                return;
                            }
                            head.push(b[0]);
                        }
                        let head = String::from_utf8_lossy(&head).into_owned();
                        let target = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                        assert!(
                            target.starts_with("localhost:") || target.starts_with("127.0.0.1:"),
                            "a fake must stay on the loopback: {target}"
                        );
                        let Ok(mut up) = tokio::net::TcpStream::connect(&target).await else {
                            return;
                        };
                        let _ = tls
                            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                            .await;
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
                    });
                }
            });
        });
        TlsForwarder { addr, alpn }
    }

    fn url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    fn agreed(&self) -> Vec<Option<Vec<u8>>> {
        self.alpn.lock().unwrap().clone()
    }
}

#[test]
fn h2_hop_first_carries_the_next_hops_handshake_and_both_directions() {
    let pki = Pki::new();
    let h2 = h2_proxy(&pki, grant);
    let http = forwarding_proxy();
    let f = through(&pki, &[], &[h2_url(&h2), http_url(&http)]);
    f.assert_code(0);
    let seen = h2.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "CONNECT");
    assert_eq!(seen[0].uri, http.addr(), "hop 1 is asked for hop 2");
    assert!(
        http.finish()
            .only_request()
            .starts_with("CONNECT 127.0.0.1:"),
        "hop 2 is asked for the destination"
    );
}

#[test]
fn h2_hop_last_runs_its_tls_inside_the_plain_hop_before_it() {
    let pki = Pki::new();
    let h2 = h2_proxy(&pki, grant);
    let http = forwarding_proxy();
    let f = through(&pki, &[], &[http_url(&http), h2_url(&h2)]);
    f.assert_code(0);
    assert!(
        http.finish()
            .only_request()
            .starts_with(&format!("CONNECT {} HTTP/1.1\r\n", h2.name())),
    );
    assert_eq!(h2.seen().len(), 1);
    assert!(h2.seen()[0].uri.starts_with("127.0.0.1:"));
}

#[test]
fn h2_hop_in_the_middle_of_three_relays_both_ways() {
    let pki = Pki::new();
    let h2 = h2_proxy(&pki, grant);
    let (first, last) = (forwarding_proxy(), forwarding_proxy());
    let f = through(&pki, &[], &[http_url(&first), h2_url(&h2), http_url(&last)]);
    f.assert_code(0);
    assert_eq!(h2.seen()[0].uri, last.addr());
    assert_eq!(h2.connections(), 1);
}

#[test]
fn h2_hop_inside_an_h2_hop_nests_one_connection_in_the_others_stream() {
    let pki = Pki::new();
    let (outer, inner) = (h2_proxy(&pki, grant), h2_proxy(&pki, grant));
    let f = through(&pki, &[], &[h2_url(&outer), h2_url(&inner)]);
    f.assert_code(0);
    assert_eq!(outer.seen()[0].uri, inner.name());
    assert!(inner.seen()[0].uri.starts_with("127.0.0.1:"));
}

#[test]
fn h2_hop_after_an_https_hop_runs_tls_inside_tls_and_only_it_is_offered_h2() {
    let pki = Pki::new();
    let tls = TlsForwarder::start(&pki, &[b"h2", b"http/1.1"]);
    let h2 = h2_proxy(&pki, grant);
    let f = through(&pki, &[], &[tls.url(), h2_url(&h2)]);
    f.assert_code(0);
    assert_eq!(
        tls.agreed(),
        vec![None],
        "an https:// hop is offered no ALPN protocol without --proxy-http2"
    );
    assert_eq!(h2.seen().len(), 1);
}

#[test]
fn proxy_http2_offers_h2_to_every_https_hop_of_a_chain() {
    let pki = Pki::new();
    let (outer, inner) = (h2_proxy(&pki, grant), h2_proxy(&pki, grant));
    let f = through(&pki, &["--proxy-http2"], &[outer.url(), inner.url()]);
    f.assert_code(0);
    assert_eq!(outer.seen().len(), 1, "hop 1 spoke HTTP/2");
    assert_eq!(inner.seen().len(), 1, "hop 2 spoke HTTP/2");
}

#[test]
fn h2_hop_whose_proxy_picks_http1_speaks_http1_in_a_chain() {
    let pki = Pki::new();
    let http = forwarding_proxy();
    let h1 = TlsForwarder::start(&pki, &[b"http/1.1"]);
    let h1_as_h2 = h1.url().replacen("https://", "https+h2://", 1);
    let f = through(&pki, &[], &[http_url(&http), h1_as_h2]);
    f.assert_code(0);
    assert_eq!(h1.agreed(), vec![Some(b"http/1.1".to_vec())]);
}

#[test]
fn h2_hop_refusal_in_a_chain_names_the_hop_and_exits_with_the_refused_status() {
    let pki = Pki::new();
    let h2 = h2_proxy(&pki, |_, _| H2Answer::Status(403, Vec::new()));
    let never = forwarding_proxy();
    let out = gimlet()
        .args(["--proxy-cacert", pki.ca.file().to_str().unwrap()])
        .args([
            "-p",
            &h2_url(&h2),
            "-p",
            &http_url(&never),
            "127.0.0.1",
            "22",
        ])
        .output()
        .unwrap();
    let line = assert_failure(&out, 4, None);
    assert_eq!(
        line,
        format!(
            "gimlet: hop 1 of 2 ({}): proxy {} refused CONNECT {}: \"HTTP/2 403\"\n",
            h2.name(),
            h2.name(),
            never.addr()
        )
    );
    assert_eq!(never.connections(), 0);
}

#[test]
fn rst_stream_from_the_last_h2_hop_of_a_chain_exits_with_the_tunnel_status_naming_it() {
    let pki = Pki::new();
    let h2 = h2_proxy(&pki, |_, _| {
        H2Answer::ResetAfter(b"first ".to_vec(), Reason::INTERNAL_ERROR)
    });
    let http = forwarding_proxy();
    let mut cmd = gimlet_std();
    cmd.arg("--proxy-cacert")
        .arg(pki.ca.file())
        .args([
            "-p",
            &http_url(&http),
            "-p",
            &h2_url(&h2),
            "127.0.0.1",
            "22",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut g = spawn(&mut cmd);
    let mut stdout = g.stdout.take().unwrap();
    let mut first = [0u8; 6];
    stdout.read_exact(&mut first).unwrap();
    assert_eq!(
        &first, b"first ",
        "the data before the reset is written out"
    );
    g.stdin.as_mut().unwrap().write_all(b"x").unwrap();
    let f = g.wait_keeping_stdin(HANG);
    f.assert_code(7);
    assert_error_line(&f.stderr, None);
    assert!(
        f.stderr.contains(&format!("hop 2 of 2 ({})", h2.name()))
            && f.stderr.contains("RST_STREAM INTERNAL_ERROR"),
        "{:?}",
        f.stderr
    );
}

#[test]
fn h2_on_a_hop_without_tls_is_a_usage_error() {
    for (url, says) in [
        ("http+h2://proxy.example:3128", "only https+h2:// takes it"),
        ("socks5h+h2://gw.example", "only https+h2:// takes it"),
        ("h2://proxy.example:443", "write https+h2://"),
        ("http2://proxy.example:443", "write https+h2://"),
    ] {
        let out = gimlet()
            .args(["-p", url, "h.example", "22"])
            .output()
            .unwrap();
        let line = assert_failure(&out, 2, None);
        assert!(line.contains(says), "{url}: {line:?}");
    }
}

#[test]
fn https_h2_in_a_proxy_variable_is_refused_with_the_switch_to_use_instead() {
    let out = gimlet()
        .env("HTTPS_PROXY", "https+h2://proxy.example:443")
        .args(["h.example", "22"])
        .output()
        .unwrap();
    let line = assert_failure(&out, 2, None);
    assert!(
        line.contains("HTTPS_PROXY") && line.contains("--proxy-http2"),
        "{line:?}"
    );
}

#[test]
fn https_h2_with_proxy_auth_ntlm_is_a_usage_error() {
    let out = gimlet()
        .args([
            "--proxy-auth",
            "ntlm",
            "-p",
            "https+h2://proxy.example",
            "h",
            "22",
        ])
        .output()
        .unwrap();
    let line = assert_failure(&out, 2, None);
    assert!(
        line.contains("NTLM") && line.contains("https://"),
        "{line:?}"
    );
}

#[test]
fn https_h2_before_the_last_hop_in_listen_mode_and_in_a_forwards_file_is_a_usage_error() {
    let out = gimlet()
        .args([
            "-L",
            "127.0.0.1:0:example.test:22",
            "-p",
            "https+h2://localhost:1",
            "-p",
            "http://localhost:2",
        ])
        .output()
        .unwrap();
    let line = assert_failure(&out, 2, None);
    assert!(line.contains("last hop"), "{line:?}");
    let file = scratch_file(
        "h2-forwards",
        b"0 example.test 22 https+h2://localhost:2,http://localhost:1\n",
        0o600,
    );
    let out = gimlet()
        .args(["--forwards", file.to_str().unwrap()])
        .output()
        .unwrap();
    let line = assert_failure(&out, 2, None);
    assert!(line.contains("https+h2://localhost:2"), "{line:?}");
}

/// The next hop's handshake runs inside the h2 hop's stream: when the h2 proxy resets that
/// stream under it, the reset (not the next hop's "closed without a reply") is the reason.
#[test]
fn rst_stream_under_the_next_hops_handshake_names_the_h2_hop_and_the_frame() {
    let pki = Pki::new();
    let h2 = h2_proxy(&pki, |_, _| {
        H2Answer::ResetAfter(Vec::new(), Reason::INTERNAL_ERROR)
    });
    let never = forwarding_proxy();
    let out = gimlet()
        .args(["--proxy-cacert", pki.ca.file().to_str().unwrap()])
        .args([
            "-p",
            &h2_url(&h2),
            "-p",
            &http_url(&never),
            "127.0.0.1",
            "22",
        ])
        .timeout(HANG)
        .output()
        .unwrap();
    let line = assert_failure(&out, 7, None);
    assert!(
        line.contains(&format!("hop 1 of 2 ({})", h2.name()))
            && line.contains("RST_STREAM INTERNAL_ERROR"),
        "{line:?}"
    );
}

#[test]
fn goaway_from_a_middle_h2_hop_under_the_next_handshake_names_that_hop() {
    let pki = Pki::new();
    let h2 = h2_proxy(&pki, |_, _| {
        H2Answer::GoAwayAfter(Vec::new(), Reason::ENHANCE_YOUR_CALM)
    });
    let (first, never) = (forwarding_proxy(), forwarding_proxy());
    let out = gimlet()
        .args(["--proxy-cacert", pki.ca.file().to_str().unwrap()])
        .args([
            "-p",
            &http_url(&first),
            "-p",
            &h2_url(&h2),
            "-p",
            &http_url(&never),
        ])
        .args(["127.0.0.1", "22"])
        .timeout(HANG)
        .output()
        .unwrap();
    let line = assert_failure(&out, 7, None);
    assert!(
        line.contains(&format!("hop 2 of 3 ({})", h2.name())) && line.contains("GOAWAY"),
        "{line:?}"
    );
}
