//! Watching the forwards file's directory with inotify, so the mio loop sees edits at once:
//! watching the directory, not the file, catches an editor's write-to-temp-then-rename save,
//! which replaces the file's inode. No thread and no dependency (the `notify` crate would add
//! a thread and a dozen crates for one fd). Elsewhere `Watch::new` fails and the engine falls
//! back to checking the file every second.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

/// An inotify instance watching one directory; poll [`Watch::fd`] for readability.
pub struct Watch {
    fd: OwnedFd,
}

impl Watch {
    #[cfg(target_os = "linux")]
    pub fn new(dir: &Path) -> io::Result<Watch> {
        // SAFETY: inotify_init1 takes flags only and returns a new fd or -1.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: raw is a fresh fd owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let path = CString::new(dir.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let mask = libc::IN_CLOSE_WRITE
            | libc::IN_MOVED_TO
            | libc::IN_MOVED_FROM
            | libc::IN_CREATE
            | libc::IN_DELETE
            | libc::IN_MODIFY
            | libc::IN_ATTRIB;
        // SAFETY: path is NUL-terminated and outlives the call.
        if unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), mask) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Watch { fd })
    }

    #[cfg(not(target_os = "linux"))]
    pub fn new(_dir: &Path) -> io::Result<Watch> {
        Err(io::ErrorKind::Unsupported.into())
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Reads the queued events; true when one names `file` (or the queue overflowed).
    pub fn touched(&self, file: &OsStr) -> bool {
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
                if ev.mask & libc::IN_Q_OVERFLOW != 0 || OsString::from_vec(name.to_vec()) == file {
                    hit = true;
                }
                at = name_end;
            }
        }
    }
}
