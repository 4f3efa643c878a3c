//! The peers benchmark: gimlet against the other CONNECT tunnel tools found installed
//! (corkscrew, proxytunnel, connect-proxy, `nc.openbsd -X connect`, socat, ncat) and against a
//! no-relay baseline, on loopback, in one run. `benches/run` builds gimlet and starts it. This
//! file parses the options and runs the rounds; the parts live in modules by role:
//! - `endpoint`: the fast CONNECT endpoint, the far side of every tunnel;
//! - `tools`: the peers' command lines, gimlet's variants and the in-process baselines;
//! - `stream`: the byte stream, the stdin generator and the stdout sink;
//! - `measure`: one transfer, one handshake, the harness's ceilings;
//! - `report`: results and the printed report;
//! - `opts`, `sys`: the options; pipes, poll and process accounting.
//!
//! Usage:
//!   benches/run [OPTIONS]                                  (builds gimlet --release first)
//!   GIMLET=target/x86_64-unknown-linux-gnu/release/gimlet cargo bench --bench peers -- [OPTIONS]
//!
//! Options:
//!   --size SIZE     bytes per transfer; K, M, G suffixes are KiB, MiB, GiB   [default 2G]
//!   --reps N        transfers per tool and direction                          [default 5]
//!   --spawns N      spawns per tool for the handshake latency                 [default 200]
//!   --tools LIST    comma-separated subset of baseline, baseline-splice, gimlet, gimlet-tls,
//!                   gimlet-h1-nghttpx, gimlet-h2, gimlet-copy, corkscrew, proxytunnel,
//!                   connect-proxy, nc.openbsd, socat, ncat                    [default all]
//!   --timeout SECS  give up on a run when no byte moved for SECS: the far side closes, and a
//!                   tool that does not exit then is killed and reported       [default 10]
//!   --read-size SIZE  the stdout reader's read(2) size, at most 1M            [default 1M]
//!   --reader KIND   `thread` (of this program) or `process` (a child of its own, as a
//!                   pipeline's next command) drains the tool's stdout         [default thread]
//!   --verify        compare every byte with the expected stream (default: count every byte,
//!                   compare the first MiB of each transfer)
//!   --smoke         quick run for CI (< 30 s once built):
//!                   --size 8M --reps 1 --spawns 20 --verify --timeout 5
//!
//! What is measured, per tool (the printed header's `method` and `baseline` lines say it all):
//! - throughput up (stdin pipe → tool → endpoint) and down (endpoint → tool → stdout pipe), from
//!   the endpoint's `200` to the last byte arriving, in MB/s (10^6 bytes per second);
//! - CPU seconds per GiB of the tool process alone (user + sys, from `wait4`);
//! - peak RSS of the tool: `VmHWM` from /proc, sampled during the run and after the last byte
//!   while the tool still holds the tunnel. Not `ru_maxrss`: the kernel folds the spawning
//!   process's own high-water mark into the child's `ru_maxrss` at exec, so it would report the
//!   harness's size, not the tool's;
//! - handshake latency: spawn → first tunnel byte on the tool's stdout, p50 and p95;
//! - correctness: every byte exactly once and in order, and whether and when the tool exits.
//!
//! Tools are interleaved round-robin (the order rotating each repetition) so machine drift hits
//! them all alike. Progress goes to stderr; the report (markdown) goes to stdout.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

mod endpoint;
mod measure;
mod opts;
#[path = "../common/procfs.rs"]
mod procfs;
mod report;
mod stream;
mod sys;
mod tools;

use crate::{
    endpoint::{DEST_HOST, DEST_PORT, Endpoint},
    measure::{capacity, handshake, transfer},
    opts::{SETUP_RUNS, parse_opts},
    report::{
        Header, Results, find_gimlet, fmt_opt, human_size, load_average, package_version, report,
        source_revision, stale, tool_version, utc_now, which,
    },
    tools::{
        BASELINE, BASELINE_SPLICE, Copier, Dir, Front, GIMLET_COPY, GIMLET_H1_NGHTTPX, GIMLET_H2,
        GIMLET_TLS, Kind, PEERS, Relay, TlsFront, command_line,
    },
};

/// `items` rotated left by `by`, so each repetition starts with a different tool.
fn rotated<T>(items: &[T], by: usize) -> impl Iterator<Item = &T> {
    let k = if items.is_empty() {
        0
    } else {
        by % items.len()
    };
    items[k..].iter().chain(&items[..k])
}

fn main() {
    if let Ok(spec) = std::env::var(stream::READER_ENV) {
        stream::reader_process(&spec);
    }
    let opts = match parse_opts(std::env::args().skip(1).collect()) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let gimlet = match find_gimlet() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("peers: {e}");
            std::process::exit(2);
        }
    };
    let ep = match Endpoint::start() {
        Ok(ep) => ep,
        Err(e) => {
            eprintln!("peers: starting the endpoint: {e}");
            std::process::exit(1);
        }
    };
    let port = ep.addr.port();
    let load_start = load_average();
    let mut header = Header {
        revision: source_revision(),
        versions: Vec::new(),
        load_start,
        ceilings: Vec::new(),
        gimlet_version: tool_version(&gimlet),
        stale: stale(&gimlet),
        command: std::env::var("PEERS_BENCH_COMMAND").unwrap_or_else(|_| {
            let mut c = "cargo bench --bench peers".to_string();
            if !opts.args.is_empty() {
                let _ = write!(c, " -- {}", opts.args.join(" "));
            }
            c
        }),
        started: utc_now(),
        gimlet: gimlet.clone(),
    };
    if header.stale {
        eprintln!(
            "peers: warning: {} is older than the sources",
            gimlet.display()
        );
    }

    // The contenders: the two baselines, gimlet, then each peer that is installed.
    let wanted = |name: &str| {
        opts.tools
            .as_ref()
            .is_none_or(|t| t.iter().any(|x| x == name))
    };
    let mut relays = Vec::new();
    let mut skipped = Vec::new();
    for (name, copier) in [
        (BASELINE, Copier::ReadWrite),
        (BASELINE_SPLICE, Copier::Splice),
    ] {
        if wanted(name) {
            relays.push(Relay {
                name: name.into(),
                kind: Kind::Baseline(copier),
                front: None,
            });
        }
    }
    if wanted("gimlet") {
        let bin = gimlet.to_string_lossy().into_owned();
        relays.push(Relay {
            name: "gimlet".into(),
            kind: Kind::Tool(command_line("gimlet", &bin, port)),
            front: None,
        });
    }
    // gimlet through a local TLS proxy (stunnel in front of the same endpoint), for the ratio
    // of TLS to plain in the same run. The front lives until the end of main.
    let mut _fronts = Vec::new();
    for (name, front, h2) in [
        (GIMLET_TLS, Front::Stunnel, false),
        // HTTP/2 against HTTP/1.1 over TLS through the same nghttpx, in the same run.
        (GIMLET_H1_NGHTTPX, Front::Nghttpx, false),
        (GIMLET_H2, Front::Nghttpx, true),
    ] {
        if !wanted(name) {
            continue;
        }
        match TlsFront::start(port, front) {
            Ok(f) => {
                let bin = gimlet.to_string_lossy().into_owned();
                let mut argv = vec![
                    bin,
                    "--proxy-cacert".into(),
                    f.ca.to_string_lossy().into_owned(),
                ];
                if h2 {
                    argv.push("--proxy-http2".into());
                }
                argv.extend([
                    format!("https://127.0.0.1:{}", f.port),
                    DEST_HOST.into(),
                    DEST_PORT.to_string(),
                ]);
                relays.push(Relay {
                    name: name.into(),
                    kind: Kind::Tool(argv),
                    front: Some(tools::ProxyProcess {
                        program: f.program,
                        pid: f.child.id(),
                    }),
                });
                _fronts.push(f);
            }
            Err(e) => skipped.push((name.to_string(), e)),
        }
    }
    // gimlet on its copying path, to show what splice(2) buys per direction. `env` execs in
    // place, so the measured process is gimlet itself (its handshake includes env's exec).
    if wanted(GIMLET_COPY) {
        let bin = gimlet.to_string_lossy().into_owned();
        let mut argv = vec!["/usr/bin/env".to_owned(), "GIMLET_NO_SPLICE=1".to_owned()];
        argv.extend(command_line("gimlet", &bin, port));
        relays.push(Relay {
            name: GIMLET_COPY.into(),
            kind: Kind::Tool(argv),
            front: None,
        });
    }
    for &(name, bin) in PEERS {
        if !wanted(name) {
            continue;
        }
        match which(bin) {
            Some(path) => relays.push(Relay {
                name: name.into(),
                kind: Kind::Tool(command_line(name, &path.to_string_lossy(), port)),
                front: None,
            }),
            None => skipped.push((name.to_string(), format!("`{bin}` not installed"))),
        }
    }
    if let Some(t) = &opts.tools {
        let known: Vec<&str> = [
            BASELINE,
            BASELINE_SPLICE,
            "gimlet",
            GIMLET_TLS,
            GIMLET_H1_NGHTTPX,
            GIMLET_H2,
            GIMLET_COPY,
        ]
        .into_iter()
        .chain(PEERS.iter().map(|p| p.0))
        .collect();
        if let Some(bad) = t.iter().find(|n| !known.contains(&n.as_str())) {
            eprintln!("peers: unknown tool {bad:?}; known: {}", known.join(","));
            std::process::exit(2);
        }
    }
    for r in &relays {
        if let Kind::Tool(argv) = &r.kind {
            eprintln!("peers: {}: {}", r.name, argv.join(" "));
            if !r.name.starts_with("gimlet") {
                let v = package_version(Path::new(&argv[0]));
                let v = v.unwrap_or_else(|| format!("{} (version unknown)", argv[0]));
                header.versions.push((r.name.clone(), v));
            }
        }
    }
    let started = Instant::now();
    let mut results: BTreeMap<String, Results> = relays
        .iter()
        .map(|r| (r.name.clone(), Results::default()))
        .collect();

    // Setup: one small, fully checked transfer each way and one handshake per tool. It warms
    // the page cache, and leaves out a tool that cannot do any of it.
    let small = opts.size.min(1 << 20);
    for r in &relays {
        let res = results.get_mut(&r.name).unwrap();
        let mut failures = Vec::new();
        for dir in [Dir::Up, Dir::Down] {
            let what = format!("setup {} {}", dir.name(), human_size(small));
            match transfer(r, dir, small, true, &opts, &ep) {
                Ok(s) => {
                    res.setup_ok += 1;
                    s.notes.into_iter().for_each(|n| res.problem(n));
                }
                Err(f) => {
                    failures.push(format!("{what}: {}", f.msg));
                    res.fail(&what, f);
                }
            }
        }
        match handshake(r, &opts, &ep) {
            Ok((_, notes)) => {
                res.setup_ok += 1;
                notes.into_iter().for_each(|n| res.problem(n));
            }
            Err(f) => {
                failures.push(format!("setup handshake: {}", f.msg));
                res.fail("setup handshake (latency not measured)", f);
                res.no_latency = true;
            }
        }
        if failures.len() == SETUP_RUNS {
            res.broken = Some(failures.join("; "));
            eprintln!("peers: {}: left out: {}", r.name, failures.join("; "));
        }
    }
    let live: Vec<&Relay> = relays
        .iter()
        .filter(|r| results[&r.name].broken.is_none())
        .collect();

    // Throughput, round-robin.
    for rep in 0..opts.reps {
        eprintln!(
            "peers: [{}/{}] the harness's own ceilings",
            rep + 1,
            opts.reps
        );
        header
            .ceilings
            .push(capacity(&ep, opts.size.min(1 << 30), opts.stall));
        for dir in [Dir::Up, Dir::Down] {
            for r in rotated(&live, rep) {
                let res = results.get_mut(&r.name).unwrap();
                let tag = format!(
                    "[{}/{}] {:<5} {:<14}",
                    rep + 1,
                    opts.reps,
                    dir.name(),
                    r.name
                );
                match transfer(r, dir, opts.size, opts.verify, &opts, &ep) {
                    Ok(s) => {
                        eprintln!(
                            "peers: {tag} {:>7.0} MB/s  cpu {} s/GiB  rss {} MiB",
                            s.mbps,
                            fmt_opt(s.cpu_per_gib, 3),
                            fmt_opt(s.hwm_kib.map(|k| k as f64 / 1024.0), 2),
                        );
                        for n in &s.notes {
                            res.problem(n.clone());
                        }
                        match dir {
                            Dir::Up => res.up.push(s),
                            Dir::Down => res.down.push(s),
                        }
                    }
                    Err(f) => {
                        eprintln!("peers: {tag} FAILED: {}", f.msg);
                        res.fail(dir.name(), f);
                    }
                }
            }
        }
    }

    // Handshake latency, round-robin, one spawn per tool per round. The splice baseline's
    // handshake is the baseline's own: it is not timed twice.
    if let Some(r) = results.get_mut(BASELINE_SPLICE) {
        r.no_latency = true;
    }
    let timed: Vec<&Relay> = live
        .iter()
        .copied()
        .filter(|r| !results[&r.name].no_latency)
        .collect();
    eprintln!("peers: handshake latency, {} spawns per tool", opts.spawns);
    for i in 0..opts.spawns {
        for r in rotated(&timed, i) {
            let res = results.get_mut(&r.name).unwrap();
            match handshake(r, &opts, &ep) {
                Ok((dt, notes)) => {
                    res.latency.push(dt);
                    notes.into_iter().for_each(|n| res.problem(n));
                }
                Err(f) => res.fail("handshake", f),
            }
        }
    }

    let failed = |name: &str| {
        results
            .get(name)
            .is_some_and(|r| r.broken.is_some() || r.failed > 0)
    };
    // gimlet-h2 too: its own data path (the h2 runtime and the socket pair), where one exists.
    let gimlet_failed = failed("gimlet") || failed(GIMLET_H2) || failed(BASELINE);
    print!(
        "{}",
        report(
            &header,
            &opts,
            &relays,
            &skipped,
            &results,
            started.elapsed()
        )
    );
    // Figures never fail the run; a gimlet (or baseline) run that failed does, so CI notices.
    if gimlet_failed {
        eprintln!("peers: gimlet or the baseline failed a run (see Observations)");
        std::process::exit(1);
    }
}
