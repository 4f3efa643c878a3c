//! Passwords given on the command line are starred out of gimlet's own argv once parsed, so
//! `ps` and `/proc/PID/cmdline` stop showing them for the rest of the session.

use std::io::{Read, Write};
use std::process::Stdio;

use crate::support::*;

/// The arguments of a running process, as `ps` reads them.
fn cmdline(pid: libc::pid_t) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).expect("reading /proc/PID/cmdline");
    raw.split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .filter(|a| !a.is_empty())
        .collect()
}

/// Starts gimlet with `args` through an echoing proxy and returns it once the tunnel is up
/// (a byte went through and came back), with the proxy.
fn tunnel_up(args: &[String]) -> (Running, FakeProxy) {
    let proxy = FakeProxy::echo();
    let args: Vec<String> = args
        .iter()
        .map(|a| a.replace("PORT", &proxy.port()))
        .collect();
    let mut running = spawn(
        gimlet_std()
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped()),
    );
    running.stdin.as_mut().unwrap().write_all(b"x").unwrap();
    let mut echoed = [0u8; 1];
    running
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut echoed)
        .expect("the tunnel did not come up");
    (running, proxy)
}

#[test]
#[cfg_attr(
    not(all(target_os = "linux", target_env = "gnu")),
    ignore = "argv is caught through glibc"
)]
fn passwords_are_starred_out_of_the_process_list() {
    for (args, want) in [
        (
            vec![
                "-U",
                "alice:Sekr3t:pw",
                "127.0.0.1:PORT",
                "example.test",
                "22",
            ],
            vec![
                "-U",
                "alice:*********",
                "127.0.0.1:PORT",
                "example.test",
                "22",
            ],
        ),
        (
            vec![
                "--proxy-user=bob:Sekr3t",
                "-v",
                "127.0.0.1:PORT",
                "example.test",
                "22",
            ],
            vec![
                "--proxy-user=bob:******",
                "-v",
                "127.0.0.1:PORT",
                "example.test",
                "22",
            ],
        ),
        (
            vec!["-Ucy:Sekr3t", "127.0.0.1:PORT", "example.test", "22"],
            vec!["-Ucy:******", "127.0.0.1:PORT", "example.test", "22"],
        ),
        (
            vec!["http://dan:Sekr3t%40@127.0.0.1:PORT", "example.test", "22"],
            vec!["http://dan:*********@127.0.0.1:PORT", "example.test", "22"],
        ),
        (
            vec![
                "-p",
                "http://eve:Sekr3t@127.0.0.1:PORT/",
                "example.test",
                "22",
            ],
            vec![
                "-p",
                "http://eve:******@127.0.0.1:PORT/",
                "example.test",
                "22",
            ],
        ),
        (
            vec![
                "--proxy=http://fay:Sekr3t@127.0.0.1:PORT",
                "example.test",
                "22",
            ],
            vec![
                "--proxy=http://fay:******@127.0.0.1:PORT",
                "example.test",
                "22",
            ],
        ),
        (
            // The userinfo runs to the last '@', so a pasted '/', '?' or '#' is still password.
            vec!["http://gil:Se/k?r#3t@127.0.0.1:PORT", "example.test", "22"],
            vec!["http://gil:*********@127.0.0.1:PORT", "example.test", "22"],
        ),
    ] {
        let args: Vec<String> = args.into_iter().map(String::from).collect();
        let (running, proxy) = tunnel_up(&args);
        let shown = cmdline(running.pid());
        let want: Vec<String> = want
            .into_iter()
            .map(|a| a.replace("PORT", &proxy.port()))
            .collect();
        assert_eq!(shown[1..], want[..], "{args:?}");
        for secret in ["Sekr3t", "Se/k?r#3t"] {
            assert!(!shown.join(" ").contains(secret), "{shown:?}");
        }
        running.wait(HANG).assert_code(0);
    }
}

#[test]
fn arguments_without_a_password_are_left_alone() {
    let args: Vec<String> = [
        "-A",
        "x:y@z",
        "-H",
        "X-Note: http://a:b@c",
        "127.0.0.1:PORT",
        "h.test",
        "22",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    let (running, proxy) = tunnel_up(&args);
    let want: Vec<String> = args
        .iter()
        .map(|a| a.replace("PORT", &proxy.port()))
        .collect();
    assert_eq!(cmdline(running.pid())[1..], want[..]);
    running.wait(HANG).assert_code(0);
}
