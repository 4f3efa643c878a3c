//! Routes: the ordered hops from here to the destination, and choosing one.
//!
//! A [`Route`] is a list of [`Hop`]s ending at the target; the empty route is a direct TCP
//! connection. Each hop is reached through the tunnel the previous one opened (the first by
//! TCP from here), optionally wrapped in TLS, and asked by its own protocol (HTTP CONNECT or
//! SOCKS) to connect onwards. Choosing a route from the environment lives in [`env`]. Nothing
//! here opens a socket.

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
