//! Watching the forwards file with inotify, so the mio loop sees edits at once. Directories
//! are watched, not the file: that catches an editor's write-to-temp-then-rename save, which
//! replaces the file's inode. When the path goes through symlinks (`ln -sf`, a Kubernetes
//! ConfigMap's `..data` link swapped for a new directory), every directory on the way is
//! watched, each for the names that matter in it; the engine works out those places and
//! builds a new watch after each change. No thread and no dependency (the `notify` crate
//! would add a thread and a dozen crates for one fd). Elsewhere `Watch::new` fails and the
//! engine falls back to checking the file every second.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// An inotify instance watching some directories; poll [`Watch::fd`] for readability.
pub struct Watch {
    fd: OwnedFd,
    /// (watch descriptor, a name in that directory whose events count).
    names: Vec<(i32, OsString)>,
}

impl Watch {
    /// Watches each `(directory, name)`: events on `name` in `directory` count. Directories
    /// that cannot be watched (missing: a dangling link) are skipped; it fails only when
    /// none can be.
    #[cfg(target_os = "linux")]
    pub fn new(places: &[(PathBuf, OsString)]) -> io::Result<Watch> {
        // SAFETY: inotify_init1 takes flags only and returns a new fd or -1.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: raw is a fresh fd owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mask = libc::IN_CLOSE_WRITE
            | libc::IN_MOVED_TO
            | libc::IN_MOVED_FROM
            | libc::IN_CREATE
            | libc::IN_DELETE
            | libc::IN_MODIFY
            | libc::IN_ATTRIB
            | libc::IN_DELETE_SELF
            | libc::IN_MOVE_SELF;
        let mut names = Vec::new();
        let mut error = None;
        for (dir, name) in places {
            let path = CString::new(dir.as_os_str().as_bytes())
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
            // SAFETY: path is NUL-terminated and outlives the call. The same directory twice
            // gives the same descriptor.
            let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), mask) };
            if wd < 0 {
                error.get_or_insert_with(io::Error::last_os_error);
                continue;
            }
            names.push((wd, name.clone()));
        }
        match (names.is_empty(), error) {
            (true, Some(e)) => Err(e),
            _ => Ok(Watch { fd, names }),
        }
    }

    #[cfg(not(target_os = "linux"))]
    pub fn new(_places: &[(PathBuf, OsString)]) -> io::Result<Watch> {
        Err(io::ErrorKind::Unsupported.into())
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Reads the queued events; true when one names a watched name in its directory, when a
    /// watched directory itself went or moved, or when the queue overflowed.
    pub fn touched(&self) -> bool {
        let mut hit = false;
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: read(2) into our buffer, at most its length.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return hit;
            }
            let mut at = 0;
            let header = std::mem::size_of::<libc::inotify_event>();
            while at + header <= n as usize {
                // SAFETY: the kernel wrote whole events; read_unaligned copes with the buffer's
                // alignment.
                let ev: libc::inotify_event =
                    unsafe { std::ptr::read_unaligned(buf[at..].as_ptr().cast()) };
                let name_at = at + header;
                let name_end = (name_at + ev.len as usize).min(n as usize);
                let raw = &buf[name_at..name_end];
                let name = raw.split(|&b| b == 0).next().unwrap_or_default();
                let own = libc::IN_Q_OVERFLOW | libc::IN_DELETE_SELF | libc::IN_MOVE_SELF;
                if ev.mask & own != 0 || self.counts(ev.wd, &OsString::from_vec(name.to_vec())) {
                    hit = true;
                }
                at = name_end;
            }
        }
    }

    fn counts(&self, wd: i32, name: &OsStr) -> bool {
        self.names.iter().any(|(w, n)| *w == wd && n == name)
    }
}

/// The places whose change can change what `path` reads: `(directory, name)` for the path as
/// given and, through every symbolic link on the way (the file's own, or a directory's), for
/// what it points to, up to 40 links (the kernel's own limit).
pub fn places(path: &Path) -> Vec<(PathBuf, OsString)> {
    let mut places: Vec<(PathBuf, OsString)> = Vec::new();
    let mut todo = vec![path.to_path_buf()];
    let mut links = 0;
    while let Some(p) = todo.pop() {
        let Some(name) = p.file_name() else { continue };
        let dir = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let place = (dir.clone(), name.to_os_string());
        if places.contains(&place) {
            continue;
        }
        places.push(place);
        if links >= 40 {
            continue;
        }
        if let Ok(target) = std::fs::read_link(&p) {
            links += 1;
            todo.push(dir.join(target));
        }
        // A link among the directories on the way: its own place counts too.
        for up in dir.ancestors().filter(|a| !a.as_os_str().is_empty()) {
            if std::fs::symlink_metadata(up).is_ok_and(|m| m.file_type().is_symlink()) {
                todo.push(up.to_path_buf());
            }
        }
    }
    places
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_link_on_the_way_is_a_place() {
        let base = std::env::temp_dir().join(format!("gimlet-places-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let conf = base.join("conf");
        std::fs::create_dir_all(conf.join("..v1")).unwrap();
        std::fs::write(conf.join("..v1/forwards"), "").unwrap();
        std::os::unix::fs::symlink("..v1", conf.join("..data")).unwrap();
        std::fs::create_dir_all(base.join("etc")).unwrap();
        let link = base.join("etc/forwards");
        std::os::unix::fs::symlink("../conf/..data/forwards", &link).unwrap();
        let got = places(&link);
        let want = [
            (base.join("etc"), "forwards"),
            (base.join("etc/../conf/..data"), "forwards"),
            (base.join("etc/../conf"), "..data"),
        ];
        for (dir, name) in &want {
            assert!(
                got.iter().any(|(d, n)| d == dir && n == name),
                "no ({}, {name}) in {got:?}",
                dir.display()
            );
        }
        assert!(places(Path::new("forwards")).contains(&(".".into(), "forwards".into())));
        let _ = std::fs::remove_dir_all(&base);
    }
}
