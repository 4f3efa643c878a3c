//! One module per hop protocol, each sans-IO: it builds the bytes to send and takes the bytes
//! received, and never touches a socket. The HTTP CONNECT handshake is `crate::handshake`.

pub mod socks;
