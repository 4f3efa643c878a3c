//! The README's ssh recipes, read from README.md so that they cannot drift: every `%` in a
//! ProxyCommand is one ssh knows (`%h`, `%p`, `%%`), and each recipe, expanded as ssh expands
//! it, gives gimlet the README's example credentials. `tests/interop/readme.py` runs the same
//! lines through a real ssh and squid.

use std::path::{Path, PathBuf};

use crate::support::*;

const USER: &str = "alice";
const PASSWORD: &str = "p@ss";

/// A README line that sets a ProxyCommand: the command as ssh gets it (before its `%`
/// expansion) and the environment the line sets.
#[derive(Debug)]
struct Recipe {
    line: String,
    command: String,
    env: Vec<(String, String)>,
}

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap()
}

/// Every ProxyCommand in the README's fenced code blocks.
fn recipes(text: &str) -> Vec<Recipe> {
    let mut found = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
            continue;
        }
        let trimmed = line.trim();
        if !fenced || trimmed.starts_with('#') || !trimmed.contains("ProxyCommand") {
            continue;
        }
        let command = match trimmed.strip_prefix("ProxyCommand ") {
            Some(rest) => rest.to_owned(), // ssh_config: the rest of the line
            None => {
                // A shell line: the README quotes the value in single quotes.
                let after = trimmed.split_once("ProxyCommand=").map(|(_, a)| a);
                let quoted = after.and_then(|a| a.strip_prefix('\''));
                let value = quoted.and_then(|q| q.split_once('\'')).map(|(v, _)| v);
                value
                    .unwrap_or_else(|| panic!("README.md: no ProxyCommand='…' in {line:?}"))
                    .to_owned()
            }
        };
        let env = trimmed
            .split_whitespace()
            .map_while(|w| w.split_once('=').filter(|(n, _)| is_env_name(n)))
            .filter(|(_, v)| !v.contains("ProxyCommand"))
            .map(|(n, v)| (n.to_owned(), v.trim_matches('\'').to_owned()))
            .collect();
        found.push(Recipe {
            line: line.to_owned(),
            command,
            env,
        });
    }
    found
}

fn is_env_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
}

/// ssh's `%` expansion of a ProxyCommand (ssh_config(5) TOKENS), for the tokens the README may
/// use; any other is the error ssh gives.
fn ssh_expand(command: &str, host: &str, port: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = command.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => out.push('%'),
            Some('h') => out.push_str(host),
            Some('p') => out.push_str(port),
            Some('r') => out.push_str("user"),
            Some(other) => return Err(format!("percent_expand: unknown key %{other}")),
            None => return Err("percent_expand: invalid format".into()),
        }
    }
    Ok(out)
}

fn gives_credentials(r: &Recipe) -> bool {
    let words: Vec<&str> = r.command.split_whitespace().collect();
    r.env.iter().any(|(n, _)| n == "GIMLET_PROXY_AUTH")
        || r.command.contains(&format!("{USER}:"))
        || words.contains(&"--proxy-auth-file")
        || words.contains(&"--netrc")
        || words.iter().filter(|w| !w.starts_with('-')).count() == 6
}

/// A HOME holding the files the recipes name, with the example credentials.
fn home() -> PathBuf {
    let home = scratch_path("readme-home");
    let pair = format!("{USER}:{PASSWORD}\n");
    let netrc = format!("machine 127.0.0.1 login {USER} password {PASSWORD}\n");
    for (relative, text) in [
        (".ssh/proxyauth", &pair),
        (".config/gimlet/proxyauth", &pair),
        (".netrc", &netrc),
    ] {
        let path = home.join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
    }
    home
}

#[test]
fn every_percent_in_the_readme_ssh_recipes_is_one_ssh_expands() {
    let text = readme();
    let all = recipes(&text);
    assert!(all.len() >= 10, "too few recipes found: {all:#?}");
    for r in &all {
        if let Err(e) = ssh_expand(&r.command, "h", "22") {
            panic!("ssh would refuse README line {:?}: {e}", r.line);
        }
        // Written with a single %, a doubled one is the mistake the troubleshooting quotes.
        if r.command.contains("%%") {
            let e = ssh_expand(&r.command.replace("%%", "%"), "h", "22").unwrap_err();
            assert_eq!(e, "percent_expand: unknown key %4", "{:?}", r.line);
            assert!(text.contains(&e), "README.md does not quote {e:?}");
        }
    }
}

#[test]
fn readme_ssh_recipes_give_gimlet_the_example_credentials() {
    let home = home();
    let mut ran = 0;
    for r in recipes(&readme()) {
        // TLS and --fdpass need more than a plain fake proxy (the interop suite runs them);
        // SOCKS recipes name another proxy than the example one.
        let example_proxy = ["proxy.corp:3128", "proxy.corp 3128"]
            .iter()
            .any(|p| r.command.contains(p));
        let from_environment = r
            .command
            .split_whitespace()
            .filter(|w| !w.starts_with('-'))
            .count()
            == 3;
        if r.command.contains("--fdpass") || !(example_proxy || from_environment) {
            continue;
        }
        let credentials = gives_credentials(&r);
        let proxy = match credentials {
            true => FakeProxy::basic_challenge(),
            false => FakeProxy::conversation(|_| Ok((OK.to_owned(), Then::Close))),
        };
        let command = r
            .command
            .replace("proxy.corp:3128", &proxy.addr())
            .replace("proxy.corp 3128", &format!("127.0.0.1 {}", proxy.port()));
        let expanded = ssh_expand(&command, "example.test", "22").unwrap();
        let mut words = expanded.split_whitespace();
        assert_eq!(words.next(), Some("gimlet"), "{:?}", r.line);
        let args: Vec<String> = words
            .map(|w| match w.strip_prefix("~/") {
                Some(rest) => home.join(rest).display().to_string(),
                None => w.to_owned(),
            })
            .collect();
        let mut cmd = gimlet();
        if from_environment {
            cmd.env("HTTPS_PROXY", format!("http://{}", proxy.addr()));
        }
        let assert = cmd
            .env("HOME", &home)
            .envs(r.env.iter().map(|(n, v)| (n.as_str(), v.as_str())))
            .args(&args)
            .assert();
        let record = proxy.finish();
        let out = assert.get_output();
        assert!(
            out.status.success(),
            "README line {:?} ran gimlet {args:?}: {}",
            r.line,
            text(&out.stderr)
        );
        if credentials {
            assert_eq!(
                proxy_authorization(&record.request(1)),
                Some(basic(&format!("{USER}:{PASSWORD}"))),
                "README line {:?}",
                r.line
            );
        }
        ran += 1;
    }
    assert!(ran >= 8, "only {ran} recipes ran");
}
