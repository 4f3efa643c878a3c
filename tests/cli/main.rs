//! Black-box tests of the gimlet command line: a real gimlet process talks
//! to a scripted fake proxy on the loopback interface.

mod auth;
mod errors;
mod generated;
mod reply;
mod request;
mod stdio;
mod support;
mod tunnel;
