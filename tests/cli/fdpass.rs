//! `--fdpass`: the connected socket goes to ssh over a Unix socket on stdout, with every byte
//! after the proxy's reply head still in it, and gimlet exits.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::Stdio;

use crate::support::*;

/// Receives one descriptor the way OpenSSH's `mm_receive_fd` does: one byte, SCM_RIGHTS.
fn receive_fd(via: &UnixStream) -> Option<OwnedFd> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut control = [0u64; 8];
    // SAFETY: msghdr points at live buffers for the duration of recvmsg; the cmsg read back is
    // bounded by msg_controllen as the kernel set it.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        if libc::recvmsg(via.as_raw_fd(), &mut msg, 0) != 1 {
            return None;
        }
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null() || (*cmsg).cmsg_type != libc::SCM_RIGHTS {
            return None;
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>());
        Some(OwnedFd::from_raw_fd(fd))
    }
}

/// Starts `gimlet --fdpass ARGS` with one end of a socketpair as stdout; returns the other end.
fn spawn_fdpass(args: &[&str]) -> (std::process::Child, UnixStream) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let child = gimlet_std()
        .arg("--fdpass")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(OwnedFd::from(theirs)))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    (child, ours)
}

#[test]
fn fdpass_hands_over_the_socket_with_the_tunnel_bytes_still_in_it() {
    let proxy = FakeProxy::start(|s| {
        // Interim reply, final reply and the server's first bytes in one segment.
        s.send("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 Connection established\r\n\r\nSSH-2.0-early\r\n");
        let mut ping = [0u8; 4];
        s.stream.read_exact(&mut ping).unwrap();
        assert_eq!(&ping, b"ping");
        s.send("pong");
        s.shutdown_write();
        s.wait_for_close();
    });
    let (child, ours) = spawn_fdpass(&[&proxy.addr(), "example.test", "22"]);
    let fd = receive_fd(&ours).expect("no descriptor received");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert!(out.stderr.is_empty(), "stderr: {}", text(&out.stderr));
    // gimlet is gone; the socket is ours and holds everything after the reply heads.
    let mut tunnel = std::net::TcpStream::from(fd);
    let mut early = [0u8; 15];
    tunnel.read_exact(&mut early).unwrap();
    assert_eq!(&early, b"SSH-2.0-early\r\n");
    tunnel.write_all(b"ping").unwrap();
    let mut rest = String::new();
    tunnel.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "pong");
    drop(tunnel);
    proxy.finish();
}

#[test]
fn fdpass_after_a_407_hands_over_the_authorised_connection() {
    let proxy = FakeProxy::start(|s| {
        if !text(s.request()).contains("Proxy-Authorization: Basic") {
            s.send("HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"r\"\r\nContent-Length: 2\r\n\r\nno");
            assert!(s.read_request().is_some());
            assert!(text(s.request()).contains("Proxy-Authorization: Basic"));
        }
        s.send("HTTP/1.1 200 OK\r\n\r\nafter-auth");
        s.shutdown_write();
        s.wait_for_close();
    });
    let (child, ours) = spawn_fdpass(&["-U", "u:p", &proxy.addr(), "example.test", "22"]);
    let fd = receive_fd(&ours).expect("no descriptor received");
    assert_eq!(child.wait_with_output().unwrap().status.code(), Some(0));
    let mut rest = String::new();
    std::net::TcpStream::from(fd)
        .read_to_string(&mut rest)
        .unwrap();
    assert_eq!(rest, "after-auth");
    proxy.finish();
}

#[test]
fn fdpass_refused_connect_passes_nothing_and_says_why() {
    let proxy = FakeProxy::replying("HTTP/1.1 403 Forbidden\r\n\r\n");
    let (child, ours) = spawn_fdpass(&[&proxy.addr(), "example.test", "22"]);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(4));
    assert_error_line(&text(&out.stderr), Some(&proxy.addr()));
    // gimlet's end is closed without a descriptor.
    assert!(receive_fd(&ours).is_none());
    proxy.finish();
}

#[test]
fn fdpass_needs_a_unix_socket_on_stdout() {
    let proxy = FakeProxy::accept_and_close();
    let assert = gimlet()
        .args(["--fdpass", &proxy.addr(), "example.test", "22"])
        .assert();
    let stderr = assert_failure(assert.get_output(), 2, None);
    assert!(stderr.contains("Unix socket"), "{stderr:?}");
    assert_eq!(proxy.connections(), 0, "nothing may be sent");
}

#[test]
fn fdpass_refuses_tls_legs() {
    for args in [
        &["--fdpass", "https://127.0.0.1:9", "example.test", "22"][..],
        &["--fdpass", "--tls", "127.0.0.1:9", "example.test", "22"],
    ] {
        let assert = gimlet().args(args).assert();
        let stderr = assert_failure(assert.get_output(), 2, None);
        assert!(stderr.contains("TLS"), "{stderr:?}");
    }
}

#[test]
fn fdpass_through_socks_and_a_chain_leaves_the_tunnel_bytes_in_the_socket() {
    for scheme in ["socks4a", "socks5h"] {
        let socks = FakeSocks::start(move |s| {
            let reply: &[u8] = if scheme == "socks5h" {
                read_greeting(s);
                s.write_all(&[5, 0]).unwrap();
                read_request5(s);
                &SOCKS5_OK
            } else {
                read_request4(s);
                &[0, 90, 0, 0, 0, 0, 0, 0]
            };
            // The reply and the server's banner in one segment.
            s.write_all(&[reply, b"SSH-2.0-early\r\n"].concat())
                .unwrap();
            echo(s);
        });
        let http = forwarding_proxy();
        let (child, ours) = spawn_fdpass(&[
            "-p",
            &http.addr(),
            "-p",
            &socks.url(scheme),
            "example.test",
            "22",
        ]);
        let fd = receive_fd(&ours).expect("no descriptor received");
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
        let mut tunnel = std::net::TcpStream::from(fd);
        let mut early = [0u8; 15];
        tunnel.read_exact(&mut early).unwrap();
        assert_eq!(&early, b"SSH-2.0-early\r\n", "{scheme}");
        tunnel.write_all(b"ping").unwrap();
        tunnel.shutdown(std::net::Shutdown::Write).unwrap();
        let mut rest = String::new();
        tunnel.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "ping", "{scheme}");
        socks.check();
    }
}
