//! Network interface names to indexes, for IPv6 zone ids (`fe80::1%eth0`, RFC 6874).

use std::ffi::CString;

/// The index of the interface called `name`, or `None` when there is no such interface.
pub fn index(name: &str) -> Option<u32> {
    let name = CString::new(name).ok()?;
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call; if_nametoindex
    // only reads it and returns 0 when no interface has that name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_has_an_index_and_nonsense_has_none() {
        assert!(super::index("lo").is_some());
        assert_eq!(super::index("gimlet-nosuch"), None);
        assert_eq!(super::index("a\0b"), None);
    }
}
