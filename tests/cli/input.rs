//! Hostile or odd input before anything is sent: passwords in proxy URLs, out-of-range
//! numbers, IPv6 zone ids. Each case ends in a clear usage error (or works), never in a
//! panic, a leaked password or a late failure.

use crate::support::*;

/// Runs gimlet with `args` (the proxy is not contacted) and expects a one-line usage error.
#[track_caller]
fn usage_error(args: &[&str]) -> String {
    let assert = gimlet().args(args).assert();
    assert_failure(assert.get_output(), 2, None)
}

#[test]
fn passwords_with_slash_question_mark_or_hash_are_never_printed() {
    let port = closed_port();
    for password in [
        "Zq9/w", "Zq9?w", "Zq9#w", "Zq9/@w", "Zq9://w", "Zq9]w", "Zq9%zzw",
    ] {
        // A bad port: a usage error that quotes the proxy argument.
        let stderr = usage_error(&[&format!("http://al:{password}@127.0.0.1:port"), "h", "22"]);
        assert!(!stderr.contains("Zq9"), "{password:?} leaked: {stderr:?}");
        assert!(stderr.contains("al:<redacted>@"), "{stderr:?}");
        // Well-formed apart from the password: the password is taken as typed, and the error
        // (nobody listens there) names the proxy only.
        if !password.contains('%') {
            let assert = gimlet()
                .args([&format!("http://al:{password}@127.0.0.1:{port}"), "h", "22"])
                .assert();
            let stderr = assert_failure(assert.get_output(), 3, Some(&format!("127.0.0.1:{port}")));
            assert!(!stderr.contains("Zq9"), "{password:?} leaked: {stderr:?}");
        }
    }
}

#[test]
fn keepalive_outside_what_the_kernel_takes_is_a_usage_error_naming_the_range() {
    for value in ["0.5", "1.5", "32768", "100000", "-1", "1e3", "0x10", ""] {
        let stderr = usage_error(&[&format!("--keepalive={value}"), "127.0.0.1:9", "h", "22"]);
        assert!(stderr.contains("1 to 32767"), "{value:?}: {stderr:?}");
    }
}

#[test]
fn keepalive_at_both_ends_of_the_range_and_zero_work() {
    for value in ["1", "32767", "0"] {
        let proxy = FakeProxy::accept_and_close();
        gimlet()
            .args(["--keepalive", value, &proxy.addr(), "h", "22"])
            .assert()
            .success();
        proxy.finish();
    }
}

#[test]
fn huge_tiny_or_odd_durations_are_usage_errors_not_panics() {
    for option in ["--connect-timeout", "--idle-timeout"] {
        for value in [
            "1e19", "9.3e18", "1e300", "1e10", "inf", "-inf", "nan", "-1", "-0", "0", "", " ",
            "1e-400", "1e-10", "0x10", "1s",
        ] {
            let stderr = usage_error(&[&format!("{option}={value}"), "127.0.0.1:9", "h", "22"]);
            assert!(stderr.contains(option), "{option} {value:?}: {stderr:?}");
        }
    }
}

#[test]
fn long_but_sane_durations_are_accepted() {
    let proxy = FakeProxy::accept_and_close();
    gimlet()
        .args([
            "--connect-timeout",
            "1e9",
            "--idle-timeout",
            "999999999.5",
            &proxy.addr(),
            "h",
            "22",
        ])
        .assert()
        .success();
    proxy.finish();
}

#[test]
fn zone_id_on_the_target_is_refused_with_the_reason() {
    for target in [
        "fe80::1%eth0",
        "[fe80::1%eth0]",
        "[fe80::1%25eth0]",
        "fe80::1%1",
    ] {
        let stderr = usage_error(&["127.0.0.1:9", target, "22"]);
        assert!(stderr.contains("zone"), "{target:?}: {stderr:?}");
    }
}

#[test]
fn zone_id_naming_no_interface_is_a_usage_error() {
    for proxy in [
        "[fe80::1%gimlet-nosuch]:3128",
        "http://[fe80::1%25gimlet-nosuch]:3128",
    ] {
        let stderr = usage_error(&[proxy, "h", "22"]);
        assert!(stderr.contains("gimlet-nosuch"), "{stderr:?}");
    }
    usage_error(&["http://[fe80::1%25]:3128", "h", "22"]);
    usage_error(&["http://[fe80::1%25a b]:3128", "h", "22"]);
}

#[test]
fn proxy_with_a_zone_id_is_reached_through_that_interface() {
    // The zone of a loopback address is accepted by the kernel and ignored, which exercises
    // the parsing and the interface lookup end to end; link-local proxies take the same path.
    let Some(proxy) = FakeProxy::start_v6(|s| {
        s.send(OK);
        s.shutdown_write();
        s.wait_for_close();
    }) else {
        return;
    };
    let port = proxy.port();
    for arg in [
        format!("[::1%lo]:{port}"),
        format!("http://[::1%25lo]:{port}"),
        format!("http://[::1%lo]:{port}/"),
    ] {
        gimlet().args([&arg, "h", "22"]).assert().success();
    }
    gimlet()
        .args(["::1%lo", &port, "h", "22"])
        .assert()
        .success();
    let record = proxy.finish();
    record.assert_requests(4);
    assert!(record.request(0).starts_with("CONNECT h:22 "));
}

/// A named pipe nobody writes to, in the scratch directory.
fn fifo(name: &str) -> std::path::PathBuf {
    let path = scratch_path(name);
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo only reads it.
    let rc = unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) };
    assert_eq!(rc, 0, "mkfifo: {}", std::io::Error::last_os_error());
    path
}

#[test]
fn fifo_or_directory_as_a_secret_file_is_refused_at_once() {
    for option in ["--proxy-auth-file", "--netrc-file"] {
        for path in [fifo("secret-fifo"), scratch_dir("secret-dir")] {
            let proxy = FakeProxy::accept_and_close();
            let assert = gimlet()
                .arg(option)
                .arg(&path)
                .args([&proxy.addr(), "h", "22"])
                .assert();
            let stderr = assert_failure(assert.get_output(), 2, None);
            assert!(
                stderr.contains("not a regular file"),
                "{option}: {stderr:?}"
            );
            assert_eq!(proxy.connections(), 0);
        }
    }
}

#[test]
fn oversized_secret_files_are_refused_with_the_limit() {
    let mut big = b"user:".to_vec();
    big.resize(65 * 1024, b'p');
    let file = scratch_file("big-auth", &big, 0o600);
    let assert = gimlet()
        .arg("--proxy-auth-file")
        .arg(&file)
        .args(["127.0.0.1:9", "h", "22"])
        .assert();
    let stderr = assert_failure(assert.get_output(), 2, None);
    assert!(stderr.contains("64 KiB"), "{stderr:?}");
    assert!(!stderr.contains("ppp"), "{stderr:?}");

    let mut big = b"machine h login u password ".to_vec();
    big.resize(1024 * 1024 + 1, b'p');
    let file = scratch_file("big-netrc", &big, 0o600);
    let assert = gimlet()
        .arg("--netrc-file")
        .arg(&file)
        .args(["127.0.0.1:9", "h", "22"])
        .assert();
    let stderr = assert_failure(assert.get_output(), 2, None);
    assert!(stderr.contains("1 MiB"), "{stderr:?}");
}

/// An askpass program from a shell script body, mode 0700.
fn askpass_script(body: &str) -> std::path::PathBuf {
    scratch_file(
        "askpass.sh",
        format!("#!/bin/sh\n{body}\n").as_bytes(),
        0o700,
    )
}

#[test]
fn askpass_printing_forever_gives_its_first_line_and_is_stopped() {
    // `yes PROMPT` prints the prompt line without end: gimlet takes the first one as the
    // password, and stops reading.
    let proxy = FakeProxy::basic_challenge();
    let record = expect_tunnel(
        gimlet().env("GIMLET_ASKPASS", "/usr/bin/yes").args([
            "-U",
            "bob",
            &proxy.addr(),
            "h",
            "22",
        ]),
        &proxy,
    );
    assert_eq!(
        proxy_authorization(&record.request(1)).as_deref(),
        Some(
            basic(&format!(
                "bob:gimlet: password for bob at proxy {}: ",
                proxy.addr()
            ))
            .as_str()
        )
    );
}

#[test]
fn askpass_printing_an_endless_line_is_an_auth_failure() {
    let program = askpass_script("exec tr '\\0' x < /dev/zero");
    let proxy = FakeProxy::basic_challenge();
    let assert = gimlet()
        .env("GIMLET_ASKPASS", &program)
        .args(["-U", "bob", &proxy.addr(), "h", "22"])
        .assert();
    let stderr = assert_failure(assert.get_output(), 5, None);
    assert!(stderr.contains("4096 bytes"), "{stderr:?}");
    assert!(!stderr.contains("xxx"), "{stderr:?}");
}

/// Every readable mapping of process `pid`, as (range, bytes); mappings that cannot be read
/// (vvar, guard pages) are skipped.
fn process_memory(pid: u32) -> Vec<(String, Vec<u8>)> {
    use std::io::{Read, Seek, SeekFrom};
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).expect("open mem");
    let mut out = Vec::new();
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        let name = fields.nth(3).unwrap_or("");
        if !perms.starts_with('r') || name == "[vvar]" || name == "[vsyscall]" {
            continue;
        }
        let (start, end) = range.split_once('-').unwrap();
        let start = u64::from_str_radix(start, 16).unwrap();
        let end = u64::from_str_radix(end, 16).unwrap();
        let mut bytes = vec![0u8; (end - start) as usize];
        if mem.seek(SeekFrom::Start(start)).is_ok() && mem.read_exact(&mut bytes).is_ok() {
            out.push((line.to_owned(), bytes));
        }
    }
    out
}

/// How the test gives gimlet its credentials: an option and the file's contents.
type Source = (&'static str, fn(&str, &str) -> String);

const SOURCES: [Source; 2] = [
    ("--proxy-auth-file", |user, password| {
        format!("{user}:{password}\n")
    }),
    ("--netrc-file", |user, password| {
        format!("machine 127.0.0.1 login {user} password {password}\n")
    }),
];

/// Runs gimlet with credentials from `source` against `proxy` (which must grant them and
/// then echo), and checks its memory while it relays.
fn assert_no_secret_in_memory_while_relaying(
    proxy: &FakeProxy,
    source: Source,
    user: &str,
    password: &str,
) {
    let (option, contents) = source;
    let file = scratch_file("mem-auth", contents(user, password).as_bytes(), 0o600);
    let mut cmd = gimlet_std();
    cmd.arg(option)
        .arg(&file)
        .args([&proxy.addr(), "example.test", "22"]);
    assert_no_secret_in_memory(&mut cmd, user, password);
}

/// Runs `cmd` (gimlet through a proxy that grants the credentials and then echoes), waits
/// until the tunnel carries bytes, and asserts that neither the password nor the Basic
/// encoding of `user:password` is left anywhere in gimlet's memory while it relays.
pub fn assert_no_secret_in_memory(cmd: &mut std::process::Command, user: &str, password: &str) {
    use std::io::{Read, Write};
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let mut running = spawn(cmd);
    let pid = running.pid() as u32;
    let mut stdin = running.stdin.take().unwrap();
    let mut stdout = running.stdout.take().unwrap();
    stdin.write_all(b"ping\n").unwrap();
    let mut echoed = [0u8; 5];
    stdout.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"ping\n");
    // The tunnel is up and relaying: the handshake and its secrets are behind us.
    let basic_value = base64(format!("{user}:{password}").as_bytes());
    let secrets = [password.as_bytes(), basic_value.as_bytes()];
    let memory = process_memory(pid);
    assert!(memory.len() > 5, "could not read gimlet's memory");
    for (mapping, bytes) in &memory {
        for secret in secrets {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret),
                "{:?} found in gimlet's memory while relaying, in {mapping}",
                String::from_utf8_lossy(secret)
            );
        }
    }
    drop(stdin);
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).unwrap();
    running.wait(HANG).assert_code(0);
}

pub const USER: &str = "mallory";
pub const PASSWORD: &str = "Qx7-unique-Passw0rd-Zk";

#[test]
fn no_copy_of_a_basic_password_outlives_the_handshake() {
    for source in SOURCES {
        let proxy = FakeProxy::start(|s| {
            s.send(challenge_407(&["Basic realm=\"mem\""]));
            let head = s.read_request().expect("a second request");
            let value = proxy_authorization(&text(&head)).expect("credentials");
            assert_eq!(value, basic(&format!("{USER}:{PASSWORD}")));
            s.send(OK);
            s.echo();
        });
        assert_no_secret_in_memory_while_relaying(&proxy, source, USER, PASSWORD);
        proxy.finish();
    }
}

#[test]
fn no_copy_of_a_digest_password_outlives_the_handshake() {
    for source in SOURCES {
        let proxy = FakeProxy::start(|s| {
            let challenge = DigestChallenge::new("SHA-256");
            s.send(challenge_407(&[&challenge.header()]));
            let head = s.read_request().expect("a second request");
            let value = proxy_authorization(&text(&head)).expect("credentials");
            challenge.check(&value, USER, PASSWORD).unwrap();
            s.send(OK);
            s.echo();
        });
        assert_no_secret_in_memory_while_relaying(&proxy, source, USER, PASSWORD);
        proxy.finish();
    }
}

#[test]
fn no_copy_of_an_ntlm_password_outlives_the_handshake() {
    let proxy = FakeProxy::start(|s| {
        let ntlm = NtlmChallenge::new();
        s.send(challenge_407(&["NTLM"]));
        s.read_request().expect("the negotiate message");
        s.send(challenge_407(&[&ntlm.header()]));
        let head = s.read_request().expect("the authenticate message");
        let value = proxy_authorization(&text(&head)).expect("credentials");
        ntlm.check(&value, USER, "", PASSWORD).unwrap();
        s.send(OK);
        s.echo();
    });
    assert_no_secret_in_memory_while_relaying(&proxy, SOURCES[0], USER, PASSWORD);
    proxy.finish();
}

#[test]
fn verbose_heads_from_a_hostile_proxy_are_escaped_line_by_line() {
    let proxy = FakeProxy::start(|s| {
        // What a parser lets through: obs-text, which decodes to C1 controls, bidi overrides and
        // line separators.
        s.send(
            "HTTP/1.1 200 OK \u{202e}kO\r\nX-Evil: a\u{9b}2Jb\u{85}c\u{2028}gimlet: forged\r\n\r\n",
        );
        s.shutdown_write();
        s.wait_for_close();
    });
    let assert = gimlet()
        .args(["-vv", &proxy.addr(), "example.test", "22"])
        .assert()
        .success();
    let stderr = text(&assert.get_output().stderr);
    for line in stderr.lines() {
        assert!(line.starts_with("gimlet: "), "{line:?} in {stderr:?}");
        assert!(!line.starts_with("gimlet: forged"), "{stderr:?}");
        assert!(
            !line.chars().any(|c| c.is_control()
                || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{2028}' | '\u{2029}')),
            "unescaped: {line:?}"
        );
    }
    assert!(stderr.contains("X-Evil"), "{stderr:?}");
    proxy.finish();
}
