//! Generated files (man page, shell completions) match the clap definition, and the docs list
//! every exit status in `error::EXIT_CODES`. `GIMLET_UPDATE_GENERATED=1 cargo test --test cli
//! generated` rewrites the checked-in copies.

use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;
use gimlet::cli::Cli;
use gimlet::error::EXIT_CODES;
use roff::{Roff, bold, roman};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Compares `path` with `want`, or rewrites it when asked to.
fn check_or_update(path: &Path, want: &[u8]) {
    if std::env::var_os("GIMLET_UPDATE_GENERATED").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, want).unwrap();
        return;
    }
    let have = std::fs::read(path).unwrap_or_default();
    assert!(
        have == want,
        "{} is stale: run GIMLET_UPDATE_GENERATED=1 cargo test --test cli generated",
        path.display()
    );
}

fn section(page: &mut Vec<u8>, title: &str, body: impl FnOnce(&mut Roff)) {
    let mut roff = Roff::new();
    roff.control("SH", [title]);
    body(&mut roff);
    roff.to_writer(page).unwrap();
}

fn paragraph(roff: &mut Roff, tag: &str, text: &str) {
    roff.control("TP", []).text([bold(tag)]).text([roman(text)]);
}

/// The man page: clap's sections plus EXIT STATUS, ENVIRONMENT and EXAMPLES.
fn man_page() -> Vec<u8> {
    let man = clap_mangen::Man::new(Cli::command());
    let mut page = Vec::new();
    man.render_title(&mut page).unwrap();
    man.render_name_section(&mut page).unwrap();
    man.render_synopsis_section(&mut page).unwrap();
    man.render_description_section(&mut page).unwrap();
    man.render_options_section(&mut page).unwrap();
    section(&mut page, "EXIT STATUS", |r| {
        for (code, meaning) in EXIT_CODES {
            paragraph(r, &code.to_string(), meaning);
        }
    });
    section(&mut page, "ENVIRONMENT", |r| {
        paragraph(
            r,
            "GIMLET_PROXY_AUTH",
            "Proxy credentials as user:password (the password may contain ':'), used when neither \
             the proxy URL, -U nor an auth file gives any. Keeps the password off the command line.",
        );
        paragraph(
            r,
            "GIMLET_ASKPASS",
            "A program to ask for missing credentials, before the terminal: it is run with the \
             prompt as its argument and its first line of output is the answer.",
        );
        paragraph(
            r,
            "SSH_ASKPASS",
            "Used like GIMLET_ASKPASS when there is no terminal to prompt on.",
        );
        paragraph(r, "HOME", "Where --netrc finds .netrc.");
        paragraph(
            r,
            "GIMLET_NO_SPLICE",
            "When set to anything but 0, relay by copying through a buffer instead of splice(2), \
             for troubleshooting.",
        );
    });
    section(&mut page, "CREDENTIALS", |r| {
        r.control("PP", []).text([roman(
            "Sources, first present wins: the proxy URL's userinfo, -U, --proxy-auth-file or \
             AUTHFILE, GIMLET_PROXY_AUTH, the netrc entry for the proxy host (with --netrc or \
             --netrc-file), then, when the proxy asks, GIMLET_ASKPASS, the terminal, or \
             SSH_ASKPASS. Files of secrets must not be accessible by group or others.",
        )]);
        r.control("PP", []).text([roman(
            "By default the first request carries no credentials; after the proxy's 407 gimlet \
             answers with the strongest scheme offered: Digest (SHA-256, then MD5), NTLMv2, \
             then Basic. --proxy-auth basic sends Basic with the first request. Rejected \
             credentials end the run with status 5; gimlet never loops.",
        )]);
    });
    section(&mut page, "TLS", |r| {
        r.control("PP", []).text([roman(
            "An https:// proxy is reached over TLS (rustls, TLS 1.2 or 1.3): the CONNECT, the \
             credentials and the tunnel travel inside the session, and closing standard input \
             sends close_notify before the socket's sending half is shut. The proxy's \
             certificate is verified against the system's roots (or --proxy-cacert) for the \
             proxy's host name, sent as SNI (--proxy-servername overrides it; IP addresses are \
             checked against the certificate's IP addresses). --tls also speaks TLS to HOST \
             through the tunnel, TLS inside TLS with an https:// proxy. A verification failure \
             ends the run with status 8 and says why: expired, wrong name, unknown authority, \
             pinned key mismatch.",
        )]);
    });
    section(&mut page, "EXAMPLES", |r| {
        let examples = [
            (
                "As an ssh ProxyCommand (in ~/.ssh/config: ProxyCommand gimlet proxy.corp:3128 %h %p):",
                "ssh -o ProxyCommand='gimlet proxy.corp:3128 %h %p' git.example.com",
            ),
            (
                "For git over ssh:",
                "git -c core.sshCommand=\"ssh -o ProxyCommand='gimlet proxy.corp:3128 %h %p'\" clone git@github.com:owner/repo",
            ),
            (
                "In place of corkscrew, credentials from a file readable only by you:",
                "ProxyCommand gimlet proxy.corp 3128 %h %p ~/.ssh/proxyauth",
            ),
            (
                "Handing the socket to ssh, with no relay process left (ssh_config):",
                "ProxyCommand gimlet --fdpass proxy.corp:3128 %h %p\nProxyUseFdpass yes",
            ),
            (
                "Through a TLS-only proxy whose CA is not in the system store:",
                "gimlet --proxy-cacert corp-ca.pem https://proxy.corp:8443 git.example.com 22",
            ),
            (
                "With credentials from the environment, showing the steps:",
                "GIMLET_PROXY_AUTH='alice:s3cret' gimlet -v -p http://proxy.corp:8080 example.com 443",
            ),
        ];
        for (what, command) in examples {
            r.control("PP", []).text([roman(what)]);
            r.control("IP", [])
                .control("nf", [])
                .text([bold(command)])
                .control("fi", []);
        }
    });
    man.render_version_section(&mut page).unwrap();
    page
}

#[test]
fn man_page_is_up_to_date() {
    check_or_update(&root().join("man/gimlet.1"), &man_page());
}

#[test]
fn completions_are_up_to_date() {
    for (shell, file) in [
        (Shell::Bash, "gimlet.bash"),
        (Shell::Zsh, "_gimlet"),
        (Shell::Fish, "gimlet.fish"),
    ] {
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "gimlet", &mut out);
        check_or_update(&root().join("completions").join(file), &out);
    }
}

#[test]
fn readme_lists_every_exit_status() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    for (code, meaning) in EXIT_CODES {
        let row = format!("| {code} | {meaning} |");
        assert!(readme.contains(&row), "README.md lacks the row {row:?}");
    }
}

#[test]
fn help_mentions_both_argument_forms() {
    let help = Cli::command().render_help().to_string();
    assert!(help.contains("PROXY HOST PORT"), "{help}");
    assert!(
        help.contains("PROXYHOST PROXYPORT HOST PORT [AUTHFILE]"),
        "{help}"
    );
}
