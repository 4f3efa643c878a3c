//! Diagnostics on stderr: one line per failure, `-v` steps, `-vv` protocol heads. stdout is
//! never written here; it carries tunnel bytes only.

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
        eprintln!("gimlet: {msg}");
    }
}

/// A warning the user must see (an insecure option); nothing with `-q`.
pub fn warn(msg: &dyn std::fmt::Display) {
    if QUIET.load(Ordering::Relaxed) == 0 {
        eprintln!("gimlet: warning: {msg}");
    }
}

/// A step, shown with `-v`.
macro_rules! info {
    ($($arg:tt)*) => {
        if $crate::diag::level() >= 1 {
            eprintln!("gimlet: {}", format_args!($($arg)*));
        }
    };
}

/// Protocol detail, shown with `-vv`.
macro_rules! debug {
    ($($arg:tt)*) => {
        if $crate::diag::level() >= 2 {
            eprintln!("gimlet: {}", format_args!($($arg)*));
        }
    };
}

pub(crate) use {debug, info};
