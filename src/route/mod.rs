//! Routes: the ordered hops from here to the destination, and choosing them.
//!
//! A route is the list of proxies (`config::Proxy`, one per hop: HTTP, HTTPS or SOCKS, each
//! with its own credentials) ending at the target; the empty route is a direct TCP
//! connection. Hop 1 is reached by TCP from here, every later hop through the tunnel the hop
//! before it opened, optionally wrapped in TLS, and each is asked by its own protocol to
//! connect onwards. `config` builds the list from the command line, or from the environment
//! with `env`; `tunnel::Upstream` is a route prepared for use and `tunnel::establish` walks it.
//! Nothing here opens a socket.

pub mod env;

/// A proxy URL as messages may show it: a password in the userinfo is replaced.
pub fn without_password(s: &str) -> String {
    let start = s.find("://").map_or(0, |i| i + 3);
    let end = s[start..]
        .find(['/', '?', '#'])
        .map_or(s.len(), |i| start + i);
    match s[start..end].rfind('@') {
        Some(at) => {
            let userinfo = &s[start..start + at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:<redacted>{}", &s[..start], &s[start + at..]),
                None => s.to_owned(),
            }
        }
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_are_redacted() {
        assert_eq!(
            without_password("http://u:p%40ss@h:1/"),
            "http://u:<redacted>@h:1/"
        );
        assert_eq!(without_password("socks5h://u@h"), "socks5h://u@h");
        assert_eq!(without_password("h:3128"), "h:3128");
    }
}
