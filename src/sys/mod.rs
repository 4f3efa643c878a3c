//! Everything platform-specific or `unsafe` lives below this module, behind safe functions.
//! The rest of the crate is `#![deny(unsafe_code)]`.

pub mod argv;
pub mod fdpass;
pub mod gssapi;
pub mod iface;
pub mod inotify;
pub mod restore;
pub mod rlimit;
pub mod signals;
pub mod splice;
pub mod stdio;
pub mod tty;
pub mod wait;
