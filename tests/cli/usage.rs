//! What a new user gets wrong on the command line gets a "did you mean", and `--help` reads
//! well at any terminal width.

use crate::support::*;

/// Runs gimlet with `args`, expects a usage error (status 2, one line, nothing on stdout) and
/// returns the line.
#[track_caller]
fn usage_error(args: &[&str]) -> String {
    let assert = gimlet().args(args).assert();
    let line = assert_failure(assert.get_output(), 2, None);
    assert!(line.contains("parsing"), "{args:?}: {line:?}");
    line
}

#[test]
fn an_authfile_after_the_three_argument_form_suggests_proxy_auth_file() {
    let proxy = FakeProxy::accept_and_close();
    let addr = proxy.addr();
    let line = usage_error(&[&addr, "example.test", "22", "/home/a/.ssh/proxyauth"]);
    let want =
        format!("did you mean --proxy-auth-file /home/a/.ssh/proxyauth {addr} example.test 22?");
    assert!(line.contains(&want), "{line:?}");
    assert!(!line.contains("IPv6"), "{line:?}");
    assert_eq!(proxy.connections(), 0);
}

#[test]
fn host_and_port_joined_as_the_target_suggest_two_arguments() {
    let line = usage_error(&["proxy.test:3128", "example.test:22"]);
    assert!(
        line.contains("did you mean proxy.test:3128 example.test 22?"),
        "{line:?}"
    );
    let line = usage_error(&["proxy.test:3128", "example.test:22", "22"]);
    assert!(line.contains("did you mean example.test 22?"), "{line:?}");
    let line = usage_error(&["--proxy", "proxy.test:3128", "[::1]:22"]);
    assert!(line.contains("did you mean [::1] 22?"), "{line:?}");
}

#[test]
fn host_and_port_swapped_suggest_the_order() {
    let line = usage_error(&["proxy.test:3128", "22", "example.test"]);
    assert!(
        line.contains("HOST comes before PORT: did you mean example.test 22?"),
        "{line:?}"
    );
}

#[test]
fn a_proxy_url_with_one_slash_suggests_two() {
    for (given, meant) in [
        ("http:/proxy.test:3128", "http://proxy.test:3128"),
        ("https:proxy.test", "https://proxy.test"),
        (
            "http:/al:pw@proxy.test:1",
            "http://al:<redacted>@proxy.test:1",
        ),
    ] {
        let line = usage_error(&[given, "example.test", "22"]);
        assert!(
            line.contains(&format!("did you mean {meant:?}?")),
            "{line:?}"
        );
        assert!(!line.contains(":pw@"), "{line:?}");
    }
}

#[test]
fn an_empty_proxy_is_called_empty_and_an_unset_variable_suspected() {
    let line = usage_error(&["", "example.test", "22"]);
    assert!(
        line.contains("the proxy is empty (an unset variable?)"),
        "{line:?}"
    );
    let line = usage_error(&["--proxy", "", "example.test", "22"]);
    assert!(line.contains("the proxy is empty"), "{line:?}");
    // Unquoted, an unset variable leaves HOST PORT alone: that form now takes the proxy from
    // the environment (tests/cli/routes.rs).
}

#[test]
fn a_wrong_number_of_arguments_names_every_form() {
    for args in [
        &[][..],
        &["proxy.test:3128"],
        &["a", "b", "c", "d", "e", "f"],
    ] {
        let line = usage_error(args);
        for form in [
            "PROXY HOST PORT",
            "PROXYHOST PROXYPORT HOST PORT [AUTHFILE]",
            "--proxy URL HOST PORT",
        ] {
            assert!(line.contains(form), "{args:?}: {line:?}");
        }
        assert!(line.contains("got "), "{line:?}");
    }
    let line = usage_error(&["--proxy", "p.test:1", "a", "22", "x"]);
    assert!(
        line.contains("with --proxy, expected HOST PORT, got 3 arguments (a 22 x)"),
        "{line:?}"
    );
}

#[test]
fn argument_errors_never_show_a_password() {
    for args in [
        &["http://al:Zq9w@p.test:1", "example.test:22"][..],
        &["http://al:Zq9w@p.test:1"],
        &["http://al:Zq9w@p.test:1", "a", "b", "c", "d", "e"],
        // Mistyped options: clap quotes the argument it does not know.
        &["--chttps://al:p%3AZq9w@p.test:1/", "h", "22"],
        &["--proxi=http://al:Zq9w@p.test:1", "h", "22"],
        &["--proxy-usr", "al:Zq9w", "p.test:1", "h", "22"],
        &["--proxy-usr=al:Zq9w", "p.test:1", "h", "22"],
        &["-p", "http://al:Zq9w@p.test:1", "-Z", "h", "22"],
        &["http://al:Z/q9w@p.test:1", "example.test:22"],
        // A proxy URL given to -D or -L by mistake.
        &["-D", "http://al:Zq9w@p.test:80"],
        &["-L", "http://al:Zq9w@p.test:1:h:2"],
    ] {
        let line = usage_error(args);
        assert!(!line.contains("Zq9w"), "{line:?}");
    }
}

/// `--help` at this terminal width.
fn help_at(columns: usize, flag: &str) -> String {
    let assert = gimlet()
        .arg(flag)
        .env("COLUMNS", columns.to_string())
        .assert()
        .success()
        .stderr("");
    text(&assert.get_output().stdout)
}

#[test]
fn help_examples_are_never_wrapped_at_any_width() {
    for columns in [40, 80, 200] {
        let help = help_at(columns, "--help");
        for (_, command) in gimlet::cli::EXAMPLES {
            for line in command.lines() {
                assert!(
                    help.lines().any(|l| l.trim() == line),
                    "at {columns} columns, {line:?} is not one line of --help:\n{help}"
                );
            }
        }
    }
}

#[test]
fn help_groups_options_under_headings() {
    let headings = [
        "Proxy and credentials:",
        "TLS to the proxy:",
        "TLS to the destination:",
        "Connection:",
        "Output:",
    ];
    for flag in ["-h", "--help"] {
        let help = help_at(100, flag);
        let mut at = 0;
        for heading in headings {
            let found = help[at..].find(heading);
            assert!(
                found.is_some(),
                "{flag}: {heading} missing or out of order:\n{help}"
            );
            at += found.unwrap_or_default();
        }
    }
}

#[test]
fn short_help_is_one_line_per_option_and_names_the_forms() {
    let short = help_at(100, "-h");
    let long = help_at(100, "--help");
    assert!(short.lines().count() * 2 < long.lines().count(), "{short}");
    // Every option's summary fits on one line at 100 columns: no paragraph breaks.
    assert!(!short.contains("\n\n  "), "{short}");
    for help in [&short, &long] {
        assert!(!help.contains("[ARGS]"), "{help}");
        assert!(
            help.contains("PROXYHOST PROXYPORT HOST PORT [AUTHFILE]"),
            "{help}"
        );
        assert!(help.contains("HOST PORT  the destination"), "{help}");
    }
    assert!(short.contains("gimlet --help"), "{short}");
}
