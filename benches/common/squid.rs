//! Shared by the benchmarks: squid started in the foreground with a minimal configuration in a
//! temporary directory (killed and cleaned up on drop), and the helpers it needs.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_accepting(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing accepts on {port}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// squid with a minimal configuration in a temporary directory, when installed.
pub struct Squid {
    child: Child,
    pub port: u16,
    dir: PathBuf,
}

impl Squid {
    pub fn start() -> Option<Squid> {
        let bin = ["/usr/sbin/squid", "/usr/bin/squid"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())?;
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("gimlet-bench-squid-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        let d = dir.display();
        let root = is_root();
        let conf = format!(
            "http_port 127.0.0.1:{port}\nacl all_ports port 1-65535\nhttp_access allow localhost\nhttp_access deny all\n\
             cache deny all\ncache_mem 8 MB\nvisible_hostname bench\npid_filename {d}/squid.pid\n\
             access_log none\ncache_log {d}/cache.log\ncache_store_log none\nnetdb_filename none\n\
             pinger_enable off\nshutdown_lifetime 0 seconds\ndns_nameservers 127.0.0.1\n\
             coredump_dir {d}\n{}",
            if root {
                "cache_effective_user proxy\n"
            } else {
                ""
            }
        );
        std::fs::write(dir.join("squid.conf"), conf).ok()?;
        if root {
            let _ = Command::new("chown")
                .args(["-R", "proxy", &d.to_string()])
                .status();
        }
        let child = Command::new(bin)
            .args(["-N", "-f"])
            .arg(dir.join("squid.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        wait_accepting(port);
        Some(Squid { child, port, dir })
    }
}

impl Drop for Squid {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}
