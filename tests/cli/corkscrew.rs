//! gimlet as a drop-in for corkscrew: the five-argument form takes an AUTHFILE that others can
//! read (corkscrew does, and such files are often mode 0644) with a one-line warning, while
//! `--proxy-auth-file` stays strict.

use crate::support::*;

#[test]
fn corkscrew_authfile_readable_by_others_is_used_with_a_chmod_warning() {
    let file = scratch_file("shared-proxyauth", b"gina:cork:screw@\n", 0o644);
    let proxy = FakeProxy::basic_challenge();
    let assert = gimlet()
        .args(["127.0.0.1", &proxy.port(), "example.test", "22"])
        .arg(&file)
        .assert();
    let record = proxy.finish();
    let out = assert.get_output();
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr:?}");
    assert_eq!(
        stderr,
        format!(
            "gimlet: warning: credential file {0} is accessible by group or others (mode 0644): run chmod 600 {0} (read anyway, as corkscrew does)\n",
            file.display()
        )
    );
    assert_eq!(
        proxy_authorization(&record.request(1)),
        Some(basic("gina:cork:screw@"))
    );

    // -q silences the warning as everything else.
    let proxy = FakeProxy::basic_challenge();
    let assert = gimlet()
        .args(["-q", "127.0.0.1", &proxy.port(), "example.test", "22"])
        .arg(&file)
        .assert()
        .success();
    proxy.finish();
    assert_eq!(text(&assert.get_output().stderr), "");
}

#[test]
fn the_same_file_through_proxy_auth_file_is_refused() {
    let file = scratch_file("shared-auth-option", b"gina:pw\n", 0o644);
    let proxy = FakeProxy::accept_and_close();
    let assert = gimlet()
        .arg("--proxy-auth-file")
        .arg(&file)
        .args([&proxy.addr(), "example.test", "22"])
        .assert();
    let line = assert_failure(assert.get_output(), 2, None);
    assert!(
        line.contains(&format!("run chmod 600 {}", file.display())),
        "{line:?}"
    );
    assert_eq!(proxy.connections(), 0);
}

#[test]
fn a_corkscrew_authfile_that_is_not_a_regular_file_is_still_refused() {
    let dir = scratch_path("authfile-dir");
    std::fs::create_dir(&dir).unwrap();
    let proxy = FakeProxy::accept_and_close();
    let assert = gimlet()
        .args(["127.0.0.1", &proxy.port(), "example.test", "22"])
        .arg(&dir)
        .assert();
    let line = assert_failure(assert.get_output(), 2, None);
    assert!(line.contains("not a regular file"), "{line:?}");
}
