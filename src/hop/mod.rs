//! One module per hop protocol, each sans-IO: it builds the bytes to send and takes the bytes
//! received, and never touches a socket. The HTTP CONNECT handshake is `crate::handshake`.

//! `h2` is the exception: CONNECT over HTTP/2 through the `h2` crate, which does its own I/O.

pub mod h2;
pub mod socks;
