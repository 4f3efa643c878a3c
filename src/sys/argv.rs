//! The process's own argument strings, the memory `/proc/PID/cmdline` and `ps` read: a password
//! given on the command line is overwritten there once parsed, as curl does with `-u`.
//!
//! `std::env::args` hands out copies, so the original `argv` must be caught before `main`: glibc
//! calls every function in `.init_array` with `(argc, argv, envp)`, as std itself relies on.
//! Elsewhere (musl, other systems) nothing is caught and [`overwrite`] does nothing.

use std::ffi::{CStr, c_char, c_int};
use std::ops::Range;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

static ARGC: AtomicUsize = AtomicUsize::new(0);
static ARGV: AtomicPtr<*mut c_char> = AtomicPtr::new(std::ptr::null_mut());

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[used]
#[unsafe(link_section = ".init_array")]
static CAPTURE: extern "C" fn(c_int, *mut *mut c_char, *mut *mut c_char) = capture;

/// Runs before `main` (glibc passes the real `argc` and `argv`); only records them.
#[cfg_attr(not(all(target_os = "linux", target_env = "gnu")), allow(dead_code))]
extern "C" fn capture(argc: c_int, argv: *mut *mut c_char, _envp: *mut *mut c_char) {
    if argc > 0 && !argv.is_null() {
        ARGV.store(argv, Ordering::Release);
        ARGC.store(argc as usize, Ordering::Release);
    }
}

/// Overwrites with `*` the bytes `secrets` picks in each original argument (not the program
/// name): it gets the argument's bytes and returns the ranges to hide. The strings keep their
/// length, so `ps` shows the same arguments with the secrets starred out. Returns how many
/// arguments were changed (0 where `argv` was not caught).
///
/// Call it early in `main`, before any thread that could read the arguments is started.
pub fn overwrite(secrets: impl Fn(&[u8]) -> Vec<Range<usize>>) -> usize {
    let argv = ARGV.load(Ordering::Acquire);
    let argc = ARGC.load(Ordering::Acquire);
    if argv.is_null() {
        return 0;
    }
    let mut changed = 0;
    for i in 1..argc {
        // SAFETY: `argv` has `argc` entries (C standard, §5.1.2.2.1), caught before `main`;
        // the array and its strings live, writable, for the life of the process.
        let arg = unsafe { *argv.add(i) };
        if arg.is_null() {
            break;
        }
        // SAFETY: each entry is a NUL-terminated string (§5.1.2.2.1).
        let len = unsafe { CStr::from_ptr(arg) }.to_bytes().len();
        // SAFETY: `len` bytes from `arg` are the string just measured, writable (§5.1.2.2.1:
        // "modifiable by the program"); nothing else holds a reference into them, as `main` is
        // single-threaded when this runs and std keeps only the pointers.
        let bytes = unsafe { std::slice::from_raw_parts_mut(arg.cast::<u8>(), len) };
        let mut hit = false;
        for range in secrets(bytes) {
            if let Some(part) = bytes.get_mut(range) {
                part.fill(b'*');
                hit = true;
            }
        }
        changed += usize::from(hit);
    }
    changed
}
