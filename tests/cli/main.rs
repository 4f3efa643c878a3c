//! Black-box tests of the gimlet command line: a real gimlet process talks
//! to a scripted fake proxy on the loopback interface.

mod argv;
mod askpass;
mod auth;
mod corkscrew;
mod digest;
mod dynamic;
mod errors;
mod fdpass;
mod generated;
mod h2;
mod h2_routes;
mod input;
mod listen;
mod negotiate;
mod netrc;
mod ntlm;
mod readme;
mod reply;
mod request;
mod routes;
mod sources;
mod stdio;
mod support;
mod support_h2;
mod support_tls;
mod terminal;
mod tls;
mod tunnel;
mod usage;
