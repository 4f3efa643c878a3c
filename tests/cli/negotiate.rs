//! Negotiate against the system's Kerberos library, without a KDC: what a run does with no
//! ticket, and that runs which never see a Negotiate challenge never load Kerberos (the real
//! exchange is proved against an MIT KDC and squid in tests/interop).

use std::io::Read;
use std::process::Stdio;

use crate::support::*;

const NEGOTIATE_407: &str = "HTTP/1.1 407 Proxy Authentication Required\r\n\
    Proxy-Authenticate: Negotiate\r\nProxy-Authenticate: Basic realm=\"r\"\r\n\
    Content-Length: 0\r\n\r\n";

/// Its own Kerberos configuration (realm LAB.TEST, no KDC) and a credential cache that does
/// not exist: no ticket, whatever the machine has.
fn no_ticket(cmd: &mut std::process::Command) {
    let config = scratch_file(
        "krb5.conf",
        b"[libdefaults]\n  default_realm = LAB.TEST\n  dns_lookup_kdc = false\n",
        0o644,
    );
    let cache = format!("FILE:{}", scratch_path("no-ccache").display());
    cmd.env("KRB5_CONFIG", config).env("KRB5CCNAME", cache);
}

fn without_ticket(args: &[&str]) -> assert_cmd::Command {
    let mut cmd = gimlet_std();
    no_ticket(&mut cmd);
    cmd.args(args);
    let mut cmd = assert_cmd::Command::from_std(cmd);
    cmd.timeout(HANG);
    cmd
}

fn kerberos_available() -> bool {
    let found = [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib64",
        "/usr/lib",
    ]
    .iter()
    .any(|d| std::path::Path::new(d).join("libgssapi_krb5.so.2").exists());
    if !found {
        eprintln!("skipping: no libgssapi_krb5.so.2 on this machine");
    }
    found
}

#[test]
fn negotiate_without_a_ticket_exits_with_the_kinit_hint() {
    if !kerberos_available() {
        return;
    }
    let proxy = FakeProxy::replying(NEGOTIATE_407);
    let output = without_ticket(&[
        "--proxy-auth",
        "negotiate",
        &proxy.addr(),
        "example.test",
        "22",
    ])
    .output()
    .unwrap();
    let line = assert_failure(&output, 5, Some(&proxy.addr()));
    assert!(
        line.contains("with Negotiate (\"HTTP/1.1 407 Proxy Authentication Required\"): no Kerberos ticket for LAB.TEST: run kinit"),
        "{line}"
    );
}

#[test]
fn any_without_a_ticket_falls_back_to_the_password_scheme() {
    if !kerberos_available() {
        return;
    }
    let proxy = FakeProxy::start(|s| {
        s.send(NEGOTIATE_407);
        if let Some(head) = s.read_request() {
            let basic = String::from_utf8_lossy(&head).contains("Proxy-Authorization: Basic ");
            s.send(if basic { OK } else { NEGOTIATE_407 });
        }
        s.wait_for_close();
    });
    without_ticket(&["-U", "nina:pw", &proxy.addr(), "example.test", "22"])
        .write_stdin("")
        .assert()
        .success();
    proxy.finish().assert_requests(2);
}

/// The libraries a running gimlet has mapped, read from /proc while its tunnel is open.
fn maps_while_tunnelling(reply: &'static str, args: &[&str]) -> String {
    maps_of(reply, args, |_| {})
}

fn maps_of(
    reply: &'static str,
    args: &[&str],
    setup: impl FnOnce(&mut std::process::Command),
) -> String {
    let proxy = FakeProxy::start(move |s| {
        s.send(reply);
        if reply.contains(" 407 ") {
            s.read_request();
            s.send(OK);
        }
        s.send("ready\n");
        s.wait_for_close();
    });
    let mut cmd = gimlet_std();
    setup(&mut cmd);
    cmd.args(args)
        .args([&proxy.addr(), "example.test", "22"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut running = spawn(&mut cmd);
    let mut ready = [0u8; 6];
    running
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut ready)
        .unwrap();
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", running.pid())).unwrap();
    running.wait(HANG).assert_code(0);
    maps
}

#[test]
fn runs_that_never_see_negotiate_do_not_load_kerberos() {
    let basic =
        "HTTP/1.1 407 x\r\nProxy-Authenticate: Basic realm=\"r\"\r\nContent-Length: 0\r\n\r\n";
    for (reply, args) in [(OK, &[][..]), (basic, &["-U", "nina:pw"][..])] {
        let maps = maps_while_tunnelling(reply, args);
        assert!(!maps.contains("libgssapi_krb5"), "{maps}");
        assert!(!maps.contains("libkrb5"), "{maps}");
    }
    // The check sees it when it is there: a Negotiate challenge loads it (no ticket, so the
    // password is used after all).
    if kerberos_available() {
        let maps = maps_of(NEGOTIATE_407, &["-U", "nina:pw"], no_ticket);
        assert!(maps.contains("libgssapi_krb5"), "{maps}");
    }
}
