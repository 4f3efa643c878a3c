//! Transport: reaching the first hop (or the destination, on a direct route) over TCP, and the
//! TLS sessions hops run inside each other. Knows nothing about HTTP or SOCKS.

pub mod async_tls;
pub mod eyeballs;
pub mod stream;
