//! The command line of the benchmark (`benches/run --help`) and the fixed limits of a run.

use std::time::Duration;

use crate::stream::IO_CHUNK;

pub(crate) const USAGE: &str =
    "usage: benches/run [OPTIONS]   (or: cargo bench --bench peers -- [OPTIONS])";

pub(crate) const HELP: &str =
    "Measures gimlet against the CONNECT tunnel tools found installed, and a no-relay baseline.

Options:
  --size SIZE     bytes per transfer; K, M, G suffixes are KiB, MiB, GiB   [default 2G]
  --reps N        transfers per tool and direction                          [default 5]
  --spawns N      spawns per tool for the handshake latency                 [default 200]
  --tools LIST    comma-separated subset of baseline, baseline-splice, gimlet, gimlet-tls,
                  gimlet-h1-nghttpx, gimlet-h2, gimlet-copy, corkscrew, proxytunnel,
                  connect-proxy, nc.openbsd, socat, ncat                    [default all]
  --timeout SECS  give up on a run when no byte moved for SECS              [default 10]
  --read-size SIZE  the stdout reader's read(2) size, at most 1M; small reads (cat: 128K,
                  dd's default: 512) keep the pipe near full, as a slow reader does  [default 1M]
  --reader KIND   who drains the tool's stdout: `thread` (of this program) or `process` (a
                  child process of its own, as the next command of a shell pipeline)
                                                                            [default thread]
  --verify        compare every byte (default: count every byte, compare the first MiB)
  --smoke         quick run for CI: --size 8M --reps 1 --spawns 20 --verify --timeout 5

The report (markdown) goes to stdout, progress to stderr. GIMLET=path selects the binary.";

/// Who drains the tool's stdout.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reader {
    /// A thread of the harness.
    Thread,
    /// A process of its own (the harness's program run again as a reader).
    Process,
}

pub(crate) struct Opts {
    /// Bytes per transfer.
    pub(crate) size: u64,
    /// Transfers per tool and direction.
    pub(crate) reps: usize,
    /// Measured spawns per tool for the handshake latency.
    pub(crate) spawns: usize,
    /// Only these tools (by name), when given.
    pub(crate) tools: Option<Vec<String>>,
    /// A run with no byte moving for this long is killed and reported.
    pub(crate) stall: Duration,
    /// Compare every byte, not only the first period of the stream.
    pub(crate) verify: bool,
    /// The stdout reader's read(2) size (at most `IO_CHUNK`).
    pub(crate) read_size: usize,
    /// Who drains the tool's stdout.
    pub(crate) reader: Reader,
    pub(crate) smoke: bool,
    /// The arguments as given, for the header.
    pub(crate) args: Vec<String>,
}

/// Setup runs per tool: a small transfer each way and one handshake.
pub(crate) const SETUP_RUNS: usize = 3;
/// How long a tool may take to exit once the far side has closed (socat lingers 0.5 s by
/// design), and then once more after stdin is closed too, before it is killed.
pub(crate) const EXIT_GRACE: Duration = Duration::from_secs(1);
/// Up test: how long after the last byte a tool is watched for exiting while the far side still
/// holds the tunnel open.
pub(crate) const EARLY_EXIT_WINDOW: Duration = Duration::from_millis(200);

pub(crate) fn parse_size(s: &str) -> Option<u64> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, mult) = match t.chars().last()? {
        'k' | 'K' => (&t[..t.len() - 1], 1u64 << 10),
        'm' | 'M' => (&t[..t.len() - 1], 1 << 20),
        'g' | 'G' => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    num.parse::<u64>()
        .ok()?
        .checked_mul(mult)
        .filter(|&n| n > 0)
}

pub(crate) fn parse_opts(args: Vec<String>) -> Result<Opts, String> {
    let mut size = None;
    let mut reps = None;
    let mut spawns = None;
    let mut tools = None;
    let mut stall = None;
    let mut verify = false;
    let mut read_size = None;
    let mut reader = Reader::Thread;
    let mut smoke = false;
    let mut shown = Vec::new();
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        // `cargo bench` passes `--bench` to harness-less benches.
        if arg == "--bench" {
            continue;
        }
        shown.push(arg.clone());
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |what: &str| -> Result<String, String> {
            match inline.clone().or_else(|| it.next()) {
                Some(v) => {
                    if inline.is_none() {
                        shown.push(v.clone());
                    }
                    Ok(v)
                }
                None => Err(format!("{name} needs {what}\n{USAGE}")),
            }
        };
        match name.as_str() {
            "--size" => {
                let v = value("a size")?;
                size = Some(parse_size(&v).ok_or(format!("bad --size {v:?} (e.g. 64M, 2G)"))?);
            }
            "--reps" => {
                let v = value("a count")?;
                reps = Some(
                    v.parse()
                        .ok()
                        .filter(|&n| n > 0)
                        .ok_or(format!("bad --reps {v:?}"))?,
                );
            }
            "--spawns" => {
                let v = value("a count")?;
                spawns = Some(
                    v.parse()
                        .ok()
                        .filter(|&n| n > 0)
                        .ok_or(format!("bad --spawns {v:?}"))?,
                );
            }
            "--tools" => {
                let v = value("a list")?;
                tools = Some(v.split(',').map(|s| s.trim().to_string()).collect());
            }
            "--timeout" => {
                let v = value("seconds")?;
                let secs: f64 = v
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s > 0.0)
                    .ok_or(format!("bad --timeout {v:?}"))?;
                stall = Some(Duration::from_secs_f64(secs));
            }
            "--read-size" => {
                let v = value("a size")?;
                read_size = Some(
                    parse_size(&v)
                        .filter(|&n| n <= IO_CHUNK as u64)
                        .ok_or(format!("bad --read-size {v:?} (e.g. 4K, 64K, at most 1M)"))?
                        as usize,
                );
            }
            "--reader" => {
                reader = match value("thread or process")?.as_str() {
                    "thread" => Reader::Thread,
                    "process" => Reader::Process,
                    v => return Err(format!("bad --reader {v:?} (thread or process)")),
                };
            }
            "--verify" => verify = true,
            "--smoke" => smoke = true,
            "-h" | "--help" => {
                println!("{USAGE}\n\n{HELP}");
                std::process::exit(0);
            }
            _ => return Err(format!("unknown argument {arg:?}\n{USAGE}")),
        }
    }
    Ok(Opts {
        size: size.unwrap_or(if smoke { 8 << 20 } else { 2 << 30 }),
        reps: reps.unwrap_or(if smoke { 1 } else { 5 }),
        spawns: spawns.unwrap_or(if smoke { 20 } else { 200 }),
        tools,
        stall: stall.unwrap_or(Duration::from_secs(if smoke { 5 } else { 10 })),
        verify: verify || smoke,
        read_size: read_size.unwrap_or(IO_CHUNK),
        reader,
        smoke,
        args: shown,
    })
}
