//! Results per tool and the printed report (markdown): the header (machine, load, versions,
//! method), the table, the ratios and the problems seen; and the lookups it needs (binaries,
//! package versions, the source revision).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::{
    measure::{Capacity, Failure, Sample},
    opts::{Opts, Reader, SETUP_RUNS},
    tools::{BASELINE, BASELINE_SPLICE, Dir, Relay},
};

#[derive(Default)]
pub(crate) struct Results {
    pub(crate) up: Vec<Sample>,
    pub(crate) down: Vec<Sample>,
    pub(crate) latency: Vec<Duration>,
    /// Failed runs and notes, with how often each was seen.
    pub(crate) problems: BTreeMap<String, usize>,
    /// Setup runs that went well.
    pub(crate) setup_ok: usize,
    /// Runs (setup included) that failed; how many of them lost or garbled bytes, and how
    /// many hung.
    pub(crate) failed: usize,
    pub(crate) data_errors: usize,
    pub(crate) hangs: usize,
    /// Every setup run failed: the tool is left out of the measurement.
    pub(crate) broken: Option<String>,
    /// The setup handshake failed: the latency test is skipped (it would fail every spawn).
    pub(crate) no_latency: bool,
}

impl Results {
    pub(crate) fn problem(&mut self, what: String) {
        *self.problems.entry(what).or_default() += 1;
    }

    pub(crate) fn fail(&mut self, what: &str, f: Failure) {
        self.failed += 1;
        if f.data {
            self.data_errors += 1;
        }
        if f.hung {
            self.hangs += 1;
        }
        self.problem(format!("{what}: {}", f.msg));
    }

    fn samples(&self, dir: Dir) -> &[Sample] {
        match dir {
            Dir::Up => &self.up,
            Dir::Down => &self.down,
        }
    }

    pub(crate) fn rate(&self, dir: Dir) -> Option<f64> {
        median(self.samples(dir).iter().map(|s| s.mbps).collect())
    }

    pub(crate) fn cpu(&self, dir: Dir) -> Option<f64> {
        median(
            self.samples(dir)
                .iter()
                .filter_map(|s| s.cpu_per_gib)
                .collect(),
        )
    }

    /// The proxy's CPU per GiB (rows through a proxy process of their own), median.
    pub(crate) fn proxy_cpu(&self, dir: Dir) -> Option<f64> {
        median(
            self.samples(dir)
                .iter()
                .filter_map(|s| s.proxy_cpu_per_gib)
                .collect(),
        )
    }

    pub(crate) fn hwm_mib(&self) -> Option<f64> {
        self.up
            .iter()
            .chain(&self.down)
            .filter_map(|s| s.hwm_kib)
            .max()
            .map(|k| k as f64 / 1024.0)
    }

    pub(crate) fn latency_ms(&self, quantile: f64) -> Option<f64> {
        let mut v: Vec<f64> = self.latency.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        // Nearest rank.
        let rank = ((quantile * v.len() as f64).ceil() as usize).clamp(1, v.len());
        Some(v[rank - 1])
    }
}

pub(crate) fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

pub(crate) fn human_size(n: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (unit, name) in UNITS {
        if n >= unit && n % unit == 0 {
            return format!("{} {name}", n / unit);
        }
    }
    for (unit, name) in UNITS {
        if n >= unit {
            return format!("{:.1} {name}", n as f64 / unit as f64);
        }
    }
    format!("{n} B")
}

/// Today's date and time in UTC, from the system clock (no time-zone database needed).
pub(crate) fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

pub(crate) fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// The 1-minute load average: other work on the machine shows up here, and in the noise.
pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// The distribution package and version a binary comes from, where `dpkg-query` can tell.
pub(crate) fn package_version(bin: &Path) -> Option<String> {
    let query = |args: &[&str]| -> Option<String> {
        let out = Command::new("dpkg-query")
            .args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let text = String::from_utf8(out.stdout).ok()?;
        (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
    };
    // With a merged /usr, dpkg may know the file under /bin rather than /usr/bin.
    let canonical = std::fs::canonicalize(bin).ok();
    let unmerged = bin
        .strip_prefix("/usr")
        .ok()
        .map(|rest| Path::new("/").join(rest));
    let owner = [Some(bin.to_path_buf()), canonical, unmerged]
        .into_iter()
        .flatten()
        .find_map(|p| query(&["-S", &p.to_string_lossy()]))?;
    let package = owner.lines().next()?.split(':').next()?.trim().to_string();
    let version = query(&["-W", "-f=${Version}", &package])?;
    Some(format!("{package} {version}"))
}

pub(crate) fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| format!("Linux {}", s.trim()))
        .unwrap_or_else(|_| "unknown kernel".into())
}

pub(crate) fn tool_version(bin: &Path) -> String {
    Command::new(bin)
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|l| l.trim().to_string())
        })
        .unwrap_or_else(|| "version unknown".into())
}

/// The source tree's commit (`-dirty` with uncommitted changes), where git can tell.
pub(crate) fn source_revision() -> Option<String> {
    let out = Command::new("git")
        .args([
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "describe",
            "--always",
            "--dirty",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let rev = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !rev.trim().is_empty()).then(|| rev.trim().to_string())
}

pub(crate) fn which(bin: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(bin))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// gimlet's binary: `$GIMLET`, else `gimlet` next to the profile directory this bench was built
/// into (target/<triple>/release/deps/peers-* → target/<triple>/release/gimlet).
pub(crate) fn find_gimlet() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("GIMLET") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("GIMLET={} is not a file", p.display()))
        };
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("gimlet")))
        .filter(|p| p.is_file())
        .ok_or_else(|| {
            "gimlet's release binary not found: run benches/run, or build it with \
             `cargo build --release` (or set GIMLET=path/to/gimlet)"
                .into()
        })
}

/// Whether a source file is newer than the binary (a stale build would be measured).
pub(crate) fn stale(binary: &Path) -> bool {
    let Ok(built) = binary.metadata().and_then(|m| m.modified()) else {
        return false;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut dirs = vec![root.join("src")];
    let mut files = vec![root.join("Cargo.toml"), root.join("Cargo.lock")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                files.push(p);
            }
        }
    }
    files.iter().any(|f| {
        f.metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t > built)
    })
}

pub(crate) fn fmt_opt(v: Option<f64>, prec: usize) -> String {
    v.map_or("—".into(), |x| format!("{x:.prec$}"))
}

pub(crate) struct Header {
    /// The harness's ceilings, measured once per repetition.
    pub(crate) ceilings: Vec<Capacity>,
    pub(crate) revision: Option<String>,
    /// Where each peer comes from, for the header.
    pub(crate) versions: Vec<(String, String)>,
    pub(crate) load_start: String,
    pub(crate) gimlet: PathBuf,
    pub(crate) gimlet_version: String,
    pub(crate) stale: bool,
    pub(crate) command: String,
    pub(crate) started: String,
}

pub(crate) fn report(
    header: &Header,
    opts: &Opts,
    relays: &[Relay],
    skipped: &[(String, String)],
    results: &BTreeMap<String, Results>,
    elapsed: Duration,
) -> String {
    let mut o = String::new();
    let cpus = thread::available_parallelism().map_or(0, |n| n.get());
    let _ = writeln!(o, "# gimlet vs. peers: CONNECT tunnel benchmark\n");
    let _ = writeln!(o, "- date: {}", header.started);
    let _ = writeln!(
        o,
        "- machine: {cpus} CPUs (nproc), {}, {}",
        cpu_model(),
        kernel()
    );
    let load_end = load_average();
    let busy = [&header.load_start, &load_end]
        .iter()
        .filter_map(|l| l.parse::<f64>().ok())
        .any(|l| l > cpus as f64 / 2.0);
    let _ = writeln!(
        o,
        "- load average (1 min) at start / end: {} / {}{}",
        header.load_start,
        load_end,
        if busy {
            " — WARNING: other work was running; expect noisy figures"
        } else {
            ""
        }
    );
    let _ = writeln!(o, "- command: `{}`", header.command);
    let _ = writeln!(
        o,
        "- gimlet: {} ({}{}){}",
        header.gimlet.display(),
        header.gimlet_version,
        header
            .revision
            .as_ref()
            .map_or(String::new(), |r| format!(", source tree at {r}")),
        if header.stale {
            " — WARNING: older than the sources; rebuild with benches/run"
        } else {
            ""
        }
    );
    if !header.versions.is_empty() {
        let list: Vec<String> = header
            .versions
            .iter()
            .map(|(name, v)| format!("{name}: {v}"))
            .collect();
        let _ = writeln!(o, "- peers: {}", list.join("; "));
    }
    let _ = writeln!(
        o,
        "- sizes: {} per transfer, {} transfer(s) per tool and direction, {} handshake spawns \
         per tool; data check: {}",
        human_size(opts.size),
        opts.reps,
        opts.spawns,
        if opts.verify {
            "exact byte count, every byte compared"
        } else {
            "exact byte count, first MiB compared"
        }
    );
    let _ = writeln!(o, "- run time: {:.0} s", elapsed.as_secs_f64());
    if opts.smoke {
        let _ = writeln!(
            o,
            "- SMOKE RUN: sizes too small for the figures to mean much; it checks that every \
             tool moves every byte and exits"
        );
    }
    let _ = writeln!(
        o,
        "- method: a loopback CONNECT endpoint inside this program answers `200` itself, then \
         sinks exactly N bytes (up), sources N bytes from a pre-filled buffer right after the \
         `200` (down), or sends one byte with the `200` (handshake), and closes once the harness \
         has sampled the tool. The tool's stdin and stdout are pipes (64 KiB) fed and drained by \
         harness threads with 1 MiB writes and {} reads (stdout drained by {}); in the down test stdin stays open and \
         silent, as ssh keeps it. Throughput is N over the time from the endpoint's `200` to the \
         N-th byte arriving (MB = 10^6 bytes), median of the runs. CPU is the tool process's \
         user+sys from wait4, per GiB moved (median). Peak RSS is the tool's VmHWM from /proc, \
         sampled during the run and after the last byte while the tool still holds the tunnel \
         (wait4's ru_maxrss is not used: the kernel carries the spawning process's own peak \
         into it at exec). Handshake latency is spawn → first tunnel byte on the tool's stdout; \
         p95 is the nearest rank. Tools run round-robin, the order rotating each repetition.",
        human_size(opts.read_size as u64),
        match opts.reader {
            Reader::Thread => "a thread of this program",
            Reader::Process => "a reader process of its own (--reader process)",
        }
    );
    let _ = writeln!(
        o,
        "- baseline: the same pipe and the same loopback socket with no relay process: a thread \
         of this program does what a relay does, connect + CONNECT, then blocking read()/write() \
         with a 128 KiB buffer between the pipe and the socket (half-closing at EOF); its CPU \
         is that thread's own (RUSAGE_THREAD). It pays one pipe copy and one socket copy per \
         byte, as a copying relay does, without a separate process or an event loop; the \
         ratios and gimlet's targets are against it. Its handshake is in-process (connect → \
         first byte, no spawn), shown for scale, not ranked. baseline-splice is the same thread \
         moving the bytes with splice(2) instead (no copy through user memory): the ceiling for \
         a relay that splices, which can beat the copying baseline."
    );
    let ceiling = |f: fn(&Capacity) -> Option<f64>| {
        let v: Vec<f64> = header.ceilings.iter().filter_map(f).collect();
        let (lo, hi) = v
            .iter()
            .fold((f64::MAX, 0f64), |(l, h), &x| (l.min(x), h.max(x)));
        match median(v) {
            Some(m) if header.ceilings.len() > 1 => format!("{m:.0} ({lo:.0}–{hi:.0})"),
            m => fmt_opt(m, 0),
        }
    };
    let _ = writeln!(
        o,
        "- harness ceilings, each part alone with no relay, MB/s (median, range; measured once \
         per repetition): endpoint sink {}, endpoint source {}, stdin generator → pipe → stdout \
         sink {}. The relays' paths hold one more pipe or socket hop than each of these, on \
         the same {cpus} CPUs.",
        ceiling(|c| c.sink),
        ceiling(|c| c.source),
        ceiling(|c| c.pipe)
    );
    let _ = writeln!(o);

    let base = results.get(BASELINE);
    let base_rate = |d: Dir| base.and_then(|b| b.rate(d));
    let fastest_p50 = relays
        .iter()
        .filter(|r| r.is_tool())
        .filter_map(|r| results.get(&r.name)?.latency_ms(0.5))
        .min_by(f64::total_cmp);
    let _ = writeln!(
        o,
        "| tool | up MB/s (× baseline) | down MB/s (× baseline) | CPU s/GiB up / down \
         | peak RSS MiB | handshake p50 / p95 ms (× fastest) | runs ok (setup included) |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---|");
    for r in relays {
        let res = &results[&r.name];
        if res.broken.is_some() {
            let _ = writeln!(
                o,
                "| {} | FAILED every setup run (see below) | | | | | 0 |",
                r.name
            );
            continue;
        }
        let rate = |d: Dir| match (res.rate(d), base_rate(d)) {
            (Some(x), Some(b)) if r.name != BASELINE => format!("{x:.0} ({:.2}×)", x / b),
            (Some(x), _) => format!("{x:.0}"),
            (None, _) => "FAIL".into(),
        };
        let lat = match (res.latency_ms(0.5), res.latency_ms(0.95)) {
            _ if res.no_latency && !r.is_tool() => "(as baseline)".into(),
            _ if res.no_latency => "not measured".into(),
            (Some(p50), Some(p95)) => match (r.is_tool(), fastest_p50) {
                (true, Some(f)) => format!("{p50:.2} / {p95:.2} ({:.2}×)", p50 / f),
                _ => format!("{p50:.2} / {p95:.2} (in-process)"),
            },
            _ => "FAIL".into(),
        };
        let total = SETUP_RUNS + opts.reps * 2 + if res.no_latency { 0 } else { opts.spawns };
        let ok = res.setup_ok + res.up.len() + res.down.len() + res.latency.len();
        let mut runs = format!("{ok}/{total}");
        if res.data_errors > 0 {
            let _ = write!(runs, ", **{} with bytes lost or wrong**", res.data_errors);
        }
        if res.hangs > 0 {
            let _ = write!(runs, ", **{} hung (killed)**", res.hangs);
        }
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} / {} | {} | {} | {runs} |",
            r.name,
            rate(Dir::Up),
            rate(Dir::Down),
            fmt_opt(res.cpu(Dir::Up), 3),
            fmt_opt(res.cpu(Dir::Down), 3),
            fmt_opt(res.hwm_mib(), 2),
            lat,
        );
    }
    for (name, why) in skipped {
        let _ = writeln!(o, "| {name} | skipped: {why} | | | | | |");
    }

    // The proxies in the path share the CPUs with the tool: what each costs per GiB shows
    // how much of a row's throughput is the proxy's doing.
    let proxied: Vec<_> = relays
        .iter()
        .filter_map(|r| Some((r, r.front.as_ref()?, &results[&r.name])))
        .filter(|(_, _, res)| res.broken.is_none())
        .collect();
    if !proxied.is_empty() {
        let hz = crate::procfs::ticks_per_sec();
        let _ = writeln!(
            o,
            "\nThe proxy's own CPU, s/GiB up / down (user+sys of its processes from the tool's \
             start to the last byte, median), and with the tool's. /proc counts it in ticks of \
             1/{hz} s: a transfer needs a few hundred MiB for a figure worth reading.\n"
        );
        for (r, front, res) in proxied {
            let sum = |d: Dir| res.cpu(d).zip(res.proxy_cpu(d)).map(|(a, b)| a + b);
            let _ = writeln!(
                o,
                "- {} through {}: proxy {} / {}; tool + proxy {} / {}",
                r.name,
                front.program,
                fmt_opt(res.proxy_cpu(Dir::Up), 3),
                fmt_opt(res.proxy_cpu(Dir::Down), 3),
                fmt_opt(sum(Dir::Up), 3),
                fmt_opt(sum(Dir::Down), 3),
            );
        }
    }

    let _ = writeln!(
        o,
        "\nEach run's throughput, MB/s (up | down), and the tool's resident memory at the last \
         byte of its last run:\n"
    );
    let mib = |k: u64| k as f64 / 1024.0;
    for r in relays {
        let res = &results[&r.name];
        if res.broken.is_some() {
            continue;
        }
        let list = |v: &[Sample]| {
            v.iter()
                .map(|s| format!("{:.0}", s.mbps))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let mem = res
            .up
            .iter()
            .chain(&res.down)
            .rev()
            .find_map(|s| s.memory)
            .map_or(String::new(), |m| {
                format!(
                    "; RSS {:.2} MiB = anon {:.2} + file {:.2}",
                    mib(m.anon_kib + m.file_kib),
                    mib(m.anon_kib),
                    mib(m.file_kib)
                )
            });
        let _ = writeln!(
            o,
            "- {}: {} | {}{mem}",
            r.name,
            list(&res.up),
            list(&res.down)
        );
    }

    let _ = writeln!(
        o,
        "\nObservations (failed runs and notable behaviour, with counts):\n"
    );
    let mut any = false;
    for r in relays {
        for (what, count) in &results[&r.name].problems {
            any = true;
            let _ = writeln!(o, "- {}: {what} (×{count})", r.name);
        }
    }
    if !any {
        let _ = writeln!(
            o,
            "- none: every tool moved every byte and exited on its own in every run."
        );
    }

    if let Some(g) = results.get("gimlet").filter(|g| g.broken.is_none()) {
        let _ = writeln!(
            o,
            "\nTargets for gimlet (from the issue; figures, not assertions):\n"
        );
        let verdict = |ok: Option<bool>| match ok {
            Some(true) => "met",
            Some(false) => "NOT met",
            None => "n/a",
        };
        for d in [Dir::Up, Dir::Down] {
            let ratio = g.rate(d).zip(base_rate(d)).map(|(x, b)| x / b);
            let _ = writeln!(
                o,
                "- throughput {} ≥ 0.9× baseline: {} ({})",
                d.name(),
                verdict(ratio.map(|r| r >= 0.9)),
                ratio.map_or("—".into(), |r| format!("{r:.2}×"))
            );
        }
        if let Some(sp) = results.get(BASELINE_SPLICE) {
            let ratio = |d: Dir| {
                g.rate(d)
                    .zip(sp.rate(d))
                    .map_or("—".into(), |(x, b)| format!("{:.2}×", x / b))
            };
            let _ = writeln!(
                o,
                "- for scale, against baseline-splice (no target): up {}, down {}",
                ratio(Dir::Up),
                ratio(Dir::Down)
            );
        }
        let cpu = g.cpu(Dir::Up).zip(g.cpu(Dir::Down)).map(|(a, b)| a.max(b));
        let _ = writeln!(
            o,
            "- CPU ≤ 0.1 s/GiB (worse direction): {} ({} s/GiB; the baseline copier thread: \
             {} / {}){}",
            verdict(cpu.map(|c| c <= 0.1)),
            fmt_opt(cpu, 3),
            fmt_opt(base.and_then(|b| b.cpu(Dir::Up)), 3),
            fmt_opt(base.and_then(|b| b.cpu(Dir::Down)), 3),
            if opts.size < 256 << 20 {
                "; with a small --size, start-up CPU dominates this figure"
            } else {
                ""
            }
        );
        let peer_p50 = relays
            .iter()
            .filter(|r| r.is_tool() && r.name != "gimlet")
            .filter_map(|r| Some((r.name.as_str(), results.get(&r.name)?.latency_ms(0.5)?)))
            .min_by(|a, b| a.1.total_cmp(&b.1));
        let p50 = g.latency_ms(0.5);
        let _ = writeln!(
            o,
            "- handshake p50 no slower than the fastest peer: {} (gimlet {} ms{})",
            verdict(p50.zip(peer_p50).map(|(g, (_, p))| g <= p)),
            fmt_opt(p50, 2),
            peer_p50.map_or(String::new(), |(n, p)| format!(
                ", fastest peer {n} {p:.2} ms"
            ))
        );
        let rss = g.hwm_mib();
        let _ = writeln!(
            o,
            "- peak RSS ≤ 2 MiB: {} ({} MiB)",
            verdict(rss.map(|r| r <= 2.0)),
            fmt_opt(rss, 2)
        );
        if g.failed > 0 {
            let _ = writeln!(
                o,
                "- every run correct (not a target, a requirement): NOT met ({} failed: {} with \
                 bytes lost or wrong, {} hung)",
                g.failed, g.data_errors, g.hangs
            );
        }
    }
    o
}
