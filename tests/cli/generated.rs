//! Generated files (man page, shell completions) are what `gimlet --generate` prints, and the
//! docs list every exit status in `error::EXIT_CODES`. `GIMLET_UPDATE_GENERATED=1 cargo test --test cli
//! generated` rewrites the checked-in copies.

use std::path::{Path, PathBuf};

use clap::CommandFactory;
use gimlet::cli::Cli;
use gimlet::error::EXIT_CODES;

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

/// What `gimlet --generate kind` prints.
fn generated(kind: &str) -> Vec<u8> {
    let assert = crate::support::gimlet()
        .args(["--generate", kind])
        .assert()
        .success()
        .stderr("");
    assert.get_output().stdout.clone()
}

#[test]
fn man_page_is_up_to_date() {
    check_or_update(&root().join("man/gimlet.1"), &generated("man"));
}

#[test]
fn completions_are_up_to_date() {
    for (kind, file) in [
        ("complete-bash", "gimlet.bash"),
        ("complete-zsh", "_gimlet"),
        ("complete-fish", "gimlet.fish"),
    ] {
        check_or_update(&root().join("completions").join(file), &generated(kind));
    }
}

#[test]
fn generate_needs_no_other_argument_and_refuses_unknown_kinds() {
    let man = generated("man");
    let man = String::from_utf8_lossy(&man);
    for section in ["SYNOPSIS", "ARGUMENTS", "\"EXIT STATUS\"", "EXAMPLES"] {
        assert!(
            man.contains(&format!(".SH {section}\n")),
            "{section} missing"
        );
    }
    let assert = crate::support::gimlet()
        .args(["--generate", "complete-tcsh"])
        .assert();
    crate::support::assert_failure(assert.get_output(), 2, None);
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
