//! Diagnostics on stderr: one line per failure, `-v` steps, `-vv` protocol heads. stdout is
//! never written here; it carries tunnel bytes only.
//!
//! Messages quote text a proxy or a certificate chose, so every line is escaped on its way
//! out ([`escape`]): no control character, no bidirectional override and no line separator
//! reaches the terminal, whatever a source forgot. An error stays one line.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU8, Ordering};

static LEVEL: AtomicU8 = AtomicU8::new(0);
static QUIET: AtomicU8 = AtomicU8::new(0);

pub fn init(verbosity: u8, quiet: bool) {
    LEVEL.store(verbosity, Ordering::Relaxed);
    QUIET.store(quiet as u8, Ordering::Relaxed);
}

pub fn level() -> u8 {
    LEVEL.load(Ordering::Relaxed)
}

/// The one error line; nothing with `-q`.
pub fn error(msg: &dyn std::fmt::Display) {
    if QUIET.load(Ordering::Relaxed) == 0 {
        eprintln!("gimlet: {}", escape(&msg.to_string()));
    }
}

/// A warning the user must see (an insecure option); nothing with `-q`.
pub fn warn(msg: &dyn std::fmt::Display) {
    if QUIET.load(Ordering::Relaxed) == 0 {
        eprintln!("gimlet: warning: {}", escape(&msg.to_string()));
    }
}

/// Characters that must not reach a terminal as they are: C0 controls and DEL and C1
/// controls (which move the cursor, end lines or start escape sequences), the bidirectional
/// embeddings, overrides, isolates and marks (which reorder what is shown, Trojan Source
/// style), and the Unicode line and paragraph separators.
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
                | '\u{2028}'
                | '\u{2029}'
        )
}

/// `text` with every unsafe character written as a Rust escape (`\n`, `\u{1b}`, `\u{202e}`),
/// so it prints as one inert line.
pub fn escape(text: &str) -> Cow<'_, str> {
    escape_keeping(text, None)
}

/// Like [`escape`], but `keep` passes through (the `\n` between the lines of a `-vv` head).
fn escape_keeping(text: &str, keep: Option<char>) -> Cow<'_, str> {
    let unsafe_char = |c: char| is_unsafe(c) && Some(c) != keep;
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            c if !unsafe_char(c) => out.push(c),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
        }
    }
    Cow::Owned(out)
}

/// Text from the network for a message: escaped, and cut at `max` characters.
pub fn untrusted(text: &str, max: usize) -> String {
    let mut cut: String = text.chars().take(max).collect();
    if text.chars().nth(max).is_some() {
        cut.push('…');
    }
    escape(&cut).into_owned()
}

/// Escapes a `-v`/`-vv` message, keeping its own line breaks (each line gets the prefix).
pub fn escape_lines(text: &str) -> Cow<'_, str> {
    escape_keeping(text, Some('\n'))
}

/// A step, shown with `-v`.
macro_rules! info {
    ($($arg:tt)*) => {
        if $crate::diag::level() >= 1 {
            eprintln!("gimlet: {}", $crate::diag::escape_lines(&format!($($arg)*)));
        }
    };
}

/// Protocol detail, shown with `-vv`.
macro_rules! debug {
    ($($arg:tt)*) => {
        if $crate::diag::level() >= 2 {
            eprintln!("gimlet: {}", $crate::diag::escape_lines(&format!($($arg)*)));
        }
    };
}

pub(crate) use {debug, info};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsafe_characters_are_escaped_and_the_rest_kept() {
        let rows: &[(&str, &str)] = &[
            (
                "plain: \"quoted\" \\ ünïcödé",
                "plain: \"quoted\" \\ ünïcödé",
            ),
            ("a\r\ngimlet: forged", "a\\r\\ngimlet: forged"),
            (
                "tab\there\0nul\x1b[2Jesc\x7fdel",
                "tab\\there\\u{0}nul\\u{1b}[2Jesc\\u{7f}del",
            ),
            ("c1\u{85}\u{9b}31m", "c1\\u{85}\\u{9b}31m"),
            (
                "bidi\u{202e}dlrow\u{2066}\u{2069}\u{200f}\u{61c}",
                "bidi\\u{202e}dlrow\\u{2066}\\u{2069}\\u{200f}\\u{61c}",
            ),
            ("sep\u{2028}\u{2029}", "sep\\u{2028}\\u{2029}"),
        ];
        for (input, want) in rows {
            assert_eq!(escape(input), *want, "{input:?}");
        }
        assert!(matches!(escape("nothing to do"), Cow::Borrowed(_)));
        assert_eq!(escape_lines("a\nb\r\u{202e}"), "a\nb\\r\\u{202e}");
    }
}
