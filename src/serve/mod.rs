//! Listen mode: `-L` and `--forwards FILE` on one mio loop.
//!
//! The loop owns the listeners, the sessions ([`session::Session`]: client ↔ tunnel) and the
//! log; it never blocks. Accepting is never held up by a handshake: each accepted connection
//! is handed to a worker thread ([`workers`]) that establishes its tunnel with the pipe mode's
//! code, and comes back through a channel and a waker; only a plain proxy's CONNECT is sent
//! and answered here, on the loop ([`connecting`]), falling back to a worker on anything but
//! a 2xx. The forwards file is watched (inotify
//! on its directory, and on every directory its symlinks lead through, followed anew at each
//! reload) and re-read on SIGHUP; a reload adds and removes listeners and changes
//! the plan new connections use, and never touches open sessions. SIGTERM/SIGINT stop
//! accepting and drain; SIGUSR1 reopens the log file.
//!
//! Nothing here runs in the pipe mode: `run` is only called with `-L` or `--forwards`.

pub mod connecting;
pub mod dynamic;
pub mod forward;
pub mod front;
pub mod http1;
pub mod log;
pub mod session;
pub mod workers;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::config::{Config, Listen};
use crate::credentials::{self, Spec};
use crate::error::{Error, Kind, ResultExt};
use crate::forwards::{self, Forward, RouteSpec};
use crate::relay::Tunnel;
use crate::sys;
use crate::{Upstream, establish};
use log::Log;
use session::{Outcome, PipePool, Session};
use workers::{Done, Job, Workers};

const WAKER: Token = Token(0);
const SIGNALS: Token = Token(1);
const WATCH: Token = Token(2);
/// Listener tokens start here; session tokens at `SESSIONS` (two per session).
const LISTENERS: usize = 16;
const SESSIONS: usize = 1 << 32;
/// Tunnels the loop opens itself ([`connecting`]): `CONNECTING + id`.
const CONNECTING: usize = 1 << 36;
/// `-D` clients still sending their request: `ASKING + id`.
const ASKING: usize = 1 << 40;

/// Shortest and longest pause of `accept` after EMFILE (or ENFILE, ENOBUFS, ENOMEM).
const PAUSE_MIN: Duration = Duration::from_millis(100);
const PAUSE_MAX: Duration = Duration::from_secs(1);
/// How long after a change event the file is read: an editor's save is several events.
const SETTLE: Duration = Duration::from_millis(50);
/// How often idle timeouts are checked, and the file when inotify is unavailable.
const TICK: Duration = Duration::from_secs(1);
/// See relay.rs WATCHDOG: bytes waiting for a destination are retried this often even if the
/// kernel never sends the edge.
const WATCHDOG: Duration = Duration::from_millis(250);
/// File descriptors kept back from `--max-tunnels`' default for listeners, the log, workers.
const FD_RESERVE: u64 = 64;

/// How a forward is served: its line, its way out, its per-line settings.
struct Plan {
    forward: Forward,
    upstream: Arc<Upstream>,
    idle_timeout: Option<Duration>,
    keepalive: Option<Duration>,
    /// `HOST:PORT via proxy P` / `HOST:PORT direct`, for the log.
    route: String,
    /// A `-D` port: each client names its destination.
    dynamic: Option<Arc<dynamic::Dynamic>>,
    /// The route is simple enough for the loop to open its tunnels ([`connecting`]).
    plain: Option<crate::tunnel::PlainConnect>,
    /// The proxy answered the loop's CONNECT with something else than a 2xx: this plan's
    /// tunnels go to the workers from now on (a reload makes a new plan).
    plain_off: std::sync::atomic::AtomicBool,
    /// A named proxy's address, as a worker's handshake resolved and reached it, and when:
    /// the loop opens tunnels to it for [`LEARNED_FOR`], without a resolver round-trip and
    /// the two hand-offs of a worker. Forgotten when a connect there fails.
    learned: std::sync::Mutex<Option<(SocketAddr, Instant)>>,
}

/// How long the loop keeps connecting to a named proxy's address a worker reached; then the
/// next tunnel goes to a worker again, which resolves the name afresh (a proxy that moved is
/// found within this, as a resolver's cache would find it).
const LEARNED_FOR: Duration = Duration::from_secs(30);

impl Plan {
    /// Where the loop may open this plan's next tunnel, if it may.
    fn loop_addr(&self, now: Instant) -> Option<SocketAddr> {
        let plain = self.plain.as_ref()?;
        if self.plain_off.load(std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
        if let Some(addr) = plain.addr {
            return Some(addr);
        }
        let learned = self.learned.lock().ok()?;
        learned
            .filter(|&(_, at)| now.saturating_duration_since(at) < LEARNED_FOR)
            .map(|(addr, _)| addr)
    }

    /// A worker opened a tunnel of this plan through `addr`: a named proxy's next tunnels may
    /// go there from the loop.
    fn learn(&self, addr: SocketAddr, now: Instant) {
        if self.plain.as_ref().is_some_and(|p| p.addr.is_none())
            && let Ok(mut learned) = self.learned.lock()
        {
            *learned = Some((addr, now));
        }
    }

    /// A connect to the learned address failed: the next tunnel resolves again.
    fn forget(&self) {
        if let Ok(mut learned) = self.learned.lock() {
            *learned = None;
        }
    }
}

struct Listening {
    listener: TcpListener,
    /// The address actually bound (port 0 resolved).
    local: SocketAddr,
    plan: Arc<Plan>,
    /// From the command line (-L): never removed by a reload.
    pinned: bool,
}

/// A tunnel being established: the client waits, unregistered, for its worker.
struct Pending {
    client: TcpStream,
    peer: SocketAddr,
    plan: Arc<Plan>,
    accepted: Instant,
}

struct Live {
    id: u64,
    session: Session<TcpStream, dyn Tunnel>,
    route: String,
    idle_timeout: Option<Duration>,
    /// A `-D` tunnel: its client and how its closing line names it.
    request: Option<(SocketAddr, dynamic::TunnelLog)>,
}

/// A `-D` client whose request is still coming in: read here, on the loop, so that a client
/// that says nothing never holds a worker.
struct Waiting {
    client: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    plan: Arc<Plan>,
    dynamic: Arc<dynamic::Dynamic>,
    asking: dynamic::Asking,
}

/// What a worker hands back: the tunnel, non-blocking (a socket, TLS over it, or the socket
/// pair of a stream on a shared HTTP/2 connection), and the rest.
struct Opened {
    tunnel: Box<dyn Tunnel + Send>,
    leftover: Vec<u8>,
    status: String,
    /// A `-D` port's tunnel: its destination and route, for the log.
    route: Option<String>,
    /// Log lines of HTTP requests served on the connection before it became this tunnel.
    lines: Vec<String>,
    /// A `-D` tunnel: how its closing line names it.
    request: Option<dynamic::TunnelLog>,
}

/// What a worker hands back: a tunnel for the loop, or a `-D` connection whose HTTP requests
/// it served itself (one log line each).
enum Handed {
    Tunnel(Box<Opened>),
    Served(Vec<String>),
}

struct Engine<'a> {
    config: &'a Config,
    listen: &'a Listen,
    poll: Poll,
    log: Log,
    pool: PipePool,
    workers: Workers<Handed>,
    done: std::sync::mpsc::Receiver<Done<Handed>>,
    listeners: Vec<Option<Listening>>,
    sessions: Vec<Option<Live>>,
    free: Vec<usize>,
    pending: HashMap<u64, Pending>,
    /// `-D` clients sending their request, oldest first (ids grow).
    asking: BTreeMap<u64, Waiting>,
    /// Tunnels the loop is opening itself, oldest first (ids grow, and every one has the same
    /// --connect-timeout: the first deadline is the earliest).
    connecting: BTreeMap<u64, (Pending, connecting::Connecting)>,
    hot: VecDeque<usize>,
    next_id: u64,
    max_tunnels: usize,
    /// `accept` paused after EMFILE until then.
    paused: Option<Instant>,
    /// The last pause, while accepting keeps failing: the next one is twice as long.
    backoff: Option<Duration>,
    draining: Option<Instant>,
    file: Option<Watched>,
    /// The upstream of the default route (see [`RouteSpec`]), once a forward used it.
    default_route: Option<Arc<Upstream>>,
    /// The default route's hops: the command line's proxies, else the environment's, with
    /// their credentials (a missing password asked for once, at start).
    default_proxies: Vec<crate::config::Proxy>,
    /// The command line's credentials (-U, --proxy-auth-file, GIMLET_PROXY_AUTH), a password
    /// asked for once at start (never on reload).
    credentials: Spec,
    /// Handshakes per upstream (keyed by its address): in progress, and waiting their turn.
    routes: HashMap<usize, RouteQueue>,
}

/// At most [`ROUTE_WORKERS`] handshakes of one upstream run at once; the rest wait here, so
/// that a proxy that never answers holds a quarter of the workers, not all of them.
#[derive(Default)]
struct RouteQueue {
    busy: usize,
    /// Handshakes finished on this upstream (see [`WARM_UP`]).
    done: usize,
    waiting: VecDeque<Job<Handed>>,
}

struct Watched {
    path: PathBuf,
    watch: Option<sys::inotify::Watch>,
    /// The text last applied, so that events that change nothing do nothing.
    applied: Option<String>,
    /// Metadata seen last, for the fallback without inotify.
    stamp: Option<(std::time::SystemTime, u64)>,
    reload_at: Option<Instant>,
}

/// Runs listen mode until SIGTERM/SIGINT and the drain; returns `Ok` then.
pub fn run(config: &Config) -> Result<(), Error> {
    let listen = config
        .listen
        .as_ref()
        .ok_or_else(|| Error::msg(Kind::Usage, "listen mode needs -L or --forwards"))?;
    let starting = || "starting listen mode";
    let fd_limit = sys::rlimit::raise_nofile().unwrap_or(1024);
    let mut engine = Engine::new(config, listen, fd_limit)?;
    engine.start()?;
    // Only now: until the prompt is answered and the forwards are read and bound, SIGINT and
    // SIGTERM keep their default action (and the terminal's echo is given back by the handler
    // of the prompt), so nothing at start can leave a daemon that ignores them.
    let signals = sys::signals::Signals::install(&[
        sys::signals::SIGHUP,
        sys::signals::SIGTERM,
        sys::signals::SIGINT,
        sys::signals::SIGUSR1,
    ])
    .kind_ctx(Kind::Usage, starting)?;
    engine
        .poll
        .registry()
        .register(&mut SourceFd(&signals.fd()), SIGNALS, Interest::READABLE)
        .kind_ctx(Kind::Usage, starting)?;
    engine.log.release();
    engine.serve(&signals)
}

impl<'a> Engine<'a> {
    /// The engine with nothing bound yet; a missing start-up password is asked for here.
    fn new(config: &'a Config, listen: &'a Listen, fd_limit: u64) -> Result<Engine<'a>, Error> {
        let starting = || "starting listen mode";
        let log =
            Log::open(listen.log.clone(), config.quiet).kind_ctx(
                Kind::Usage,
                || match &listen.log {
                    Some(p) => format!("opening the log file {}", p.display()),
                    None => "opening the log".to_owned(),
                },
            )?;
        let poll = Poll::new().kind_ctx(Kind::Usage, starting)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).kind_ctx(Kind::Usage, starting)?);
        let (workers, done) = Workers::new(waker);
        let (credentials, default_proxies) = ask_once(config)?;
        let reserve = FD_RESERVE.min(fd_limit / 4);
        let max_tunnels = listen
            .max_tunnels
            .unwrap_or(((fd_limit - reserve) / 2).max(1) as usize);
        let mut engine = Engine {
            config,
            listen,
            poll,
            log,
            pool: PipePool::splicing(config.splice),
            workers,
            done,
            listeners: Vec::new(),
            sessions: Vec::new(),
            free: Vec::new(),
            pending: HashMap::new(),
            asking: BTreeMap::new(),
            connecting: BTreeMap::new(),
            hot: VecDeque::new(),
            next_id: 1,
            max_tunnels,
            paused: None,
            backoff: None,
            draining: None,
            file: None,
            default_route: None,
            default_proxies,
            credentials,
            routes: HashMap::new(),
        };
        engine.log.line(format_args!(
            "starting: open-file limit {fd_limit}, at most {max_tunnels} tunnels"
        ));
        Ok(engine)
    }

    /// Binds every forward; at start any failure is fatal (nothing is running yet).
    fn start(&mut self) -> Result<(), Error> {
        for forward in &self.listen.local {
            let plan = self.plan(forward.clone(), true)?;
            self.bind(plan, true)
                .map_err(|e| Error::msg(Kind::Usage, e))?;
        }
        if let Some(path) = &self.listen.file {
            let text =
                read_forwards(path).map_err(|e| Error::msg(Kind::Usage, format!("{e:#}")))?;
            let plans = self.plans_from(path, &text, true)?;
            for plan in plans {
                self.bind(plan, false)
                    .map_err(|e| Error::msg(Kind::Usage, e))?;
            }
            let watch = self.watch(path);
            self.file = Some(Watched {
                path: path.clone(),
                watch,
                stamp: stamp(path),
                applied: Some(text),
                reload_at: None,
            });
        }
        if self.listeners.iter().all(Option::is_none) && self.file.is_none() {
            return Err(Error::msg(Kind::Usage, "nothing to listen on"));
        }
        Ok(())
    }

    /// An inotify watch on every directory `path` goes through (see
    /// [`sys::inotify::places`]), registered with the loop; `None` (checked every second
    /// instead) where inotify fails.
    fn watch(&mut self, path: &Path) -> Option<sys::inotify::Watch> {
        let places = sys::inotify::places(path);
        let registered = sys::inotify::Watch::new(&places).and_then(|w| {
            self.poll
                .registry()
                .register(&mut SourceFd(&w.fd()), WATCH, Interest::READABLE)
                .map(|()| w)
        });
        match registered {
            Ok(w) => Some(w),
            Err(e) => {
                self.log.line(format_args!(
                    "watching {}: {e}; checking it every second instead",
                    path.display()
                ));
                None
            }
        }
    }

    /// Watches `path` anew: a symlink on the way may point elsewhere now. The old watch goes
    /// first (its fd shares the loop's token).
    fn rewatch(&mut self) {
        let Some(f) = self.file.as_mut() else { return };
        let Some(old) = f.watch.take() else { return };
        let _ = self.poll.registry().deregister(&mut SourceFd(&old.fd()));
        drop(old);
        let path = f.path.clone();
        let watch = self.watch(&path);
        if let Some(f) = self.file.as_mut() {
            f.watch = watch;
        }
    }

    /// The upstream for a route: the shared default, or one of its own. Every credential it
    /// needs is read (netrc, credential files) or was asked for at start here, never per
    /// connection.
    fn plan(&mut self, forward: Forward, interactive: bool) -> Result<Arc<Plan>, Error> {
        let config = self.config;
        let o = &forward.options;
        let own_settings =
            o.keepalive.is_some() || o.proxy_auth.is_some() || o.proxy_auth_file.is_some();
        let line_credentials = match &o.proxy_auth_file {
            Some(path) => Some(Spec::Known(
                credentials::read_auth_file(path).kind_ctx(Kind::Usage, || {
                    format!("{}: reading proxy-auth-file", forward.origin)
                })?,
            )),
            None => None,
        };
        let (mut hops, why, is_default) = self.route_for(&forward);
        // As in the pipe mode, per hop: the line's proxy-auth-file for the first (before all
        // else), else the hop's own (its URL's userinfo; for the default route what the
        // command line gave it), else for the first hop -U, --proxy-auth-file or
        // GIMLET_PROXY_AUTH, else the netrc entry for the hop's host.
        for (i, hop) in hops.iter_mut().enumerate() {
            match &line_credentials {
                Some(c) if i == 0 => hop.credentials = c.clone(),
                _ if !matches!(hop.credentials, Spec::None) => {}
                _ if i == 0 && !is_default => hop.credentials = self.credentials.clone(),
                _ => {}
            }
            if let (Spec::None, Some((path, optional))) = (&hop.credentials, &self.listen.netrc) {
                hop.credentials =
                    crate::config::netrc_credentials(path, *optional, &hop.endpoint.host)
                        .kind_ctx(Kind::Usage, || {
                            format!("{}: proxy {}", forward.origin, hop.name())
                        })?;
            }
        }
        if let Some(user) = hops.iter().find_map(|h| match &h.credentials {
            // SOCKS4 sends a user id without a password: nothing to ask.
            Spec::User(u) if !interactive && !is_socks4(h) => Some(u.clone()),
            _ => None,
        }) {
            return Err(Error::msg(
                Kind::Auth,
                format_args!(
                    "{}: proxy user \"{user}\" has no password, and none can be asked for on reload (give proxy-auth-file=)",
                    forward.origin
                ),
            ));
        }
        let shared = is_default && !own_settings;
        let upstream = match (&self.default_route, shared) {
            (Some(up), true) => up.clone(),
            _ => {
                // Not interactive after a 407: nobody is at a daemon's terminal.
                let mut up = Upstream::route(config, &hops, false)
                    .map_err(|e| e.context(forward.origin.clone()))?;
                if let Some(k) = o.keepalive {
                    up.set_keepalive(k);
                }
                if let Some(s) = o.proxy_auth {
                    up.set_scheme(s);
                }

                let up = Arc::new(up);
                if shared {
                    self.default_route = Some(up.clone());
                }
                up
            }
        };
        let why = why.map_or_else(String::new, |w| format!(" ({w})"));
        let route = match upstream.proxy_name() {
            Some(p) if forward.dynamic => format!("dynamic, via proxy {p} unless no-proxy"),
            None if forward.dynamic => "dynamic, direct".to_owned(),
            Some(p) => format!("{} via proxy {p}{why}", forward.target),
            None => format!("{} direct{why}", forward.target),
        };
        let dynamic = match forward.dynamic {
            true => Some(self.dynamic(&forward, upstream.clone())?),
            false => None,
        };
        let plain = match forward.dynamic {
            true => None,
            false => upstream.plain_connect(&forward.target),
        };
        Ok(Arc::new(Plan {
            dynamic,
            plain,
            plain_off: std::sync::atomic::AtomicBool::new(false),
            learned: std::sync::Mutex::new(None),
            idle_timeout: o.idle_timeout.unwrap_or(config.idle_timeout),
            keepalive: o.keepalive.unwrap_or(config.keepalive),
            forward,
            upstream,
            route,
        }))
    }

    /// The hops a forward takes ([`RouteSpec`]), why when the environment or an exclusion list
    /// decided it (for the log), and whether they are the default route's (shared).
    fn route_for(&self, forward: &Forward) -> (Vec<crate::config::Proxy>, Option<String>, bool) {
        let from_env = self.listen.proxy_var;
        let default = || {
            let why = from_env.map(|var| format!("from {var}"));
            (self.default_proxies.clone(), why, true)
        };
        match &forward.route {
            RouteSpec::Direct => (Vec::new(), None, false),
            RouteSpec::Proxies(p) => (p.clone(), None, false),
            // A -D port checks the exclusion list per request.
            _ if forward.dynamic => default(),
            // The seed's rule: a line without proxy fields is direct, whatever the
            // environment says; only a proxy given on the command line applies to it.
            RouteSpec::Seed if from_env.is_some() => (
                Vec::new(),
                from_env.map(|var| {
                    format!("the line names no route; {var} is for -L and `default` lines")
                }),
                false,
            ),
            RouteSpec::Seed | RouteSpec::Default if self.default_proxies.is_empty() => {
                (Vec::new(), None, false)
            }
            RouteSpec::Seed | RouteSpec::Default => {
                let excluded = self
                    .listen
                    .default_noproxy
                    .as_ref()
                    .and_then(|(name, list)| {
                        crate::route::env::excluded(&forward.target.host, name, list)
                    });
                match excluded {
                    Some(why) => {
                        let why = why.strip_prefix("direct: ").unwrap_or(&why).to_owned();
                        (Vec::new(), Some(why), false)
                    }
                    None => default(),
                }
            }
        }
    }

    /// What a `-D` port needs per request. Refuses a port that would serve other machines
    /// without `--allow`, and a route whose proxy is the port itself.
    fn dynamic(
        &self,
        forward: &Forward,
        proxied: Arc<Upstream>,
    ) -> Result<Arc<dynamic::Dynamic>, Error> {
        let bind = forward.bind;
        if !bind.ip().is_loopback() && self.listen.allow.is_empty() {
            return Err(Error::msg(
                Kind::Usage,
                format_args!(
                    "{}: {bind} is not a loopback address: give --allow CIDR for the clients it may serve (gimlet is never an open proxy by accident)",
                    forward.origin
                ),
            ));
        }
        let first = match &forward.route {
            RouteSpec::Default | RouteSpec::Seed => self.config.proxies.first(),
            RouteSpec::Direct => None,
            RouteSpec::Proxies(p) => p.first(),
        };
        if let Some(p) = first {
            if dynamic::is_self(&p.endpoint, bind) {
                return Err(Error::msg(
                    Kind::Usage,
                    format_args!(
                        "{}: the proxy {} is this -D port itself (a loop; is https_proxy set to it?)",
                        forward.origin, p.endpoint
                    ),
                ));
            }
        }
        let direct = Upstream::new(self.config, None, &Spec::None, false)?;
        let client_auth = match &self.listen.client_auth_file {
            Some(path) => {
                let c = credentials::read_auth_file(path).kind_ctx(Kind::Usage, || {
                    format!("{}: reading --client-auth-file", forward.origin)
                })?;
                Some(Arc::new(front::ClientAuth {
                    user: c.user.clone(),
                    password: zeroize::Zeroizing::new(c.password.expose().to_owned()),
                }))
            }
            None => None,
        };
        Ok(Arc::new(dynamic::Dynamic {
            proxied,
            direct: Arc::new(direct),
            noproxy: self.listen.noproxy.clone(),
            allow: self.listen.allow.clone(),
            timeout: self.config.connect_timeout,
            client_auth,
        }))
    }

    /// Parses the file and prepares a plan per line; the first error names `FILE:LINE:`.
    fn plans_from(
        &mut self,
        path: &Path,
        text: &str,
        interactive: bool,
    ) -> Result<Vec<Arc<Plan>>, Error> {
        let shown = path.display().to_string();
        let forwards =
            forwards::parse_file(&shown, text).map_err(|e| Error::msg(Kind::Usage, e))?;
        let mut plans = Vec::new();
        for f in forwards {
            if let Some(l) = self
                .listeners
                .iter()
                .flatten()
                .find(|l| l.pinned && f.bind.port() != 0 && l.plan.forward.bind == f.bind)
            {
                return Err(Error::msg(
                    Kind::Usage,
                    format_args!(
                        "{}: {} is already forwarded by {}",
                        f.origin, f.bind, l.plan.forward.origin
                    ),
                ));
            }
            plans.push(self.plan(f, interactive)?);
        }
        Ok(plans)
    }

    /// Starts listening for `plan`; the error is a log-ready sentence.
    fn bind(&mut self, plan: Arc<Plan>, pinned: bool) -> Result<(), String> {
        let addr = plan.forward.bind;
        let mut listener = listen_on(addr)
            .map_err(|e| format!("{}: listening on {addr}: {e}", plan.forward.origin))?;
        let local = listener.local_addr().unwrap_or(addr);
        let slot = self
            .listeners
            .iter()
            .position(Option::is_none)
            .unwrap_or_else(|| {
                self.listeners.push(None);
                self.listeners.len() - 1
            });
        self.poll
            .registry()
            .register(&mut listener, Token(LISTENERS + slot), Interest::READABLE)
            .map_err(|e| format!("{}: listening on {addr}: {e}", plan.forward.origin))?;
        self.log.line(format_args!(
            "listening on {local} for {} ({})",
            plan.route, plan.forward.origin
        ));
        self.listeners[slot] = Some(Listening {
            listener,
            local,
            plan,
            pinned,
        });
        // A connection may already wait (a reload re-binding a port).
        self.accept(slot);
        Ok(())
    }

    fn tunnels(&self) -> usize {
        self.pending.len()
            + self.connecting.len()
            + self.asking.len()
            + (self.sessions.len() - self.free.len())
    }

    fn serve(&mut self, signals: &sys::signals::Signals) -> Result<(), Error> {
        let mut events = Events::with_capacity(1024);
        let mut last_tick = Instant::now();
        loop {
            let now = Instant::now();
            if let Some(deadline) = self.draining {
                if self.tunnels() == 0 {
                    self.log.line(format_args!("stopped: every tunnel closed"));
                    return Ok(());
                }
                if now >= deadline {
                    self.log.line(format_args!(
                        "stopped: --drain-timeout reached, closing {} tunnel(s)",
                        self.tunnels()
                    ));
                    self.close_all();
                    return Ok(());
                }
            }
            let timeout = self.next_timeout(now, last_tick);
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::new(Kind::Tunnel, e).context("waiting for events")),
            }
            for event in events.iter() {
                match event.token() {
                    WAKER => self.collect(),
                    SIGNALS => {
                        for sig in signals.take() {
                            if self.signal(sig) {
                                self.log
                                    .line(format_args!("stopped at once: second stop signal"));
                                self.close_all();
                                return Ok(());
                            }
                        }
                    }
                    WATCH => self.file_event(),
                    Token(t) if t >= ASKING => self.heard((t - ASKING) as u64),
                    Token(t) if t >= CONNECTING => self.connecting_ready((t - CONNECTING) as u64),
                    Token(t) if t >= SESSIONS => {
                        let (slot, tunnel_side) = ((t - SESSIONS) / 2, (t - SESSIONS) % 2 == 1);
                        let hangup =
                            event.is_error() || event.is_read_closed() || event.is_write_closed();
                        let (r, w) = (event.is_readable() || hangup, event.is_writable() || hangup);
                        if let Some(Some(live)) = self.sessions.get_mut(slot) {
                            match tunnel_side {
                                true => live.session.tunnel_ready(r, w),
                                false => live.session.client_ready(r, w),
                            }
                            self.drive(slot);
                        }
                    }
                    Token(t) => {
                        if self.paused.is_none() {
                            self.accept(t - LISTENERS);
                        }
                    }
                }
            }
            // Sessions that moved a turn's worth and may move more: one more turn each.
            for _ in 0..self.hot.len() {
                if let Some(slot) = self.hot.pop_front() {
                    self.drive(slot);
                }
            }
            let now = Instant::now();
            self.expire_asking(now);
            self.expire_connecting(now);
            if self.paused.is_some_and(|until| now >= until) {
                self.resume_accepting();
            }
            if self
                .file
                .as_ref()
                .and_then(|f| f.reload_at)
                .is_some_and(|at| now >= at)
            {
                self.reload(false);
            }
            if now.duration_since(last_tick) >= TICK {
                last_tick = now;
                self.tick(now);
            }
            if events.is_empty() {
                self.watchdog();
            }
        }
    }

    fn next_timeout(&self, now: Instant, last_tick: Instant) -> Option<Duration> {
        if !self.hot.is_empty() {
            return Some(Duration::ZERO);
        }
        let mut next = last_tick + TICK;
        if let Some(until) = self.paused {
            next = next.min(until);
        }
        if let Some(at) = self.file.as_ref().and_then(|f| f.reload_at) {
            next = next.min(at);
        }
        if let Some(d) = self.draining {
            next = next.min(d);
        }
        if let Some(w) = self.asking.values().next() {
            next = next.min(w.asking.deadline);
        }
        if let Some((_, c)) = self.connecting.values().next() {
            next = next.min(c.deadline);
        }
        if self
            .sessions
            .iter()
            .flatten()
            .any(|l| l.session.holds_bytes())
        {
            next = next.min(now + WATCHDOG);
        }
        Some(next.saturating_duration_since(now))
    }

    /// Returns true when the process must stop at once (a second SIGTERM/SIGINT).
    fn signal(&mut self, sig: i32) -> bool {
        match sig {
            sys::signals::SIGHUP => {
                self.log.line(format_args!("SIGHUP: reloading"));
                self.reload(true);
            }
            sys::signals::SIGUSR1 => self.log.reopen(),
            sys::signals::SIGTERM | sys::signals::SIGINT => {
                if self.draining.is_some() {
                    return true;
                }
                let name = if sig == sys::signals::SIGTERM {
                    "SIGTERM"
                } else {
                    "SIGINT"
                };
                for slot in 0..self.listeners.len() {
                    self.unbind(slot, None);
                }
                // Clients that have not said where they go are owed nothing.
                self.asking.clear();
                self.log.line(format_args!(
                    "{name}: no longer accepting; draining {} tunnel(s) for up to {}s",
                    self.tunnels(),
                    self.listen.drain_timeout.as_secs_f64()
                ));
                if let Some(w) = self.file.as_ref().and_then(|f| f.watch.as_ref()) {
                    let _ = self.poll.registry().deregister(&mut SourceFd(&w.fd()));
                }
                self.file = None;
                self.draining = Some(Instant::now() + self.listen.drain_timeout);
            }
            _ => {}
        }
        false
    }

    fn unbind(&mut self, slot: usize, why: Option<&str>) {
        if let Some(mut l) = self.listeners[slot].take() {
            let _ = self.poll.registry().deregister(&mut l.listener);
            let local = l.local;
            // Closed before it is logged: whoever reads the log may connect at once.
            drop(l);
            if let Some(why) = why {
                self.log
                    .line(format_args!("stopped listening on {local} ({why})"));
            }
        }
    }

    fn accept(&mut self, slot: usize) {
        while self.draining.is_none() && self.paused.is_none() {
            let Some(Some(l)) = self.listeners.get(slot) else {
                return;
            };
            let (local, plan) = (l.local, l.plan.clone());
            match l.listener.accept() {
                Ok((client, peer)) => self.accepted(client, peer, local, plan),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if out_of_resources(&e) => {
                    // The connection stays in the backlog; try again after a pause rather than
                    // spin on a listener that stays readable.
                    let pause = self.backoff.map_or(PAUSE_MIN, |p| (p * 2).min(PAUSE_MAX));
                    if self.backoff.is_none() {
                        self.log.line(format_args!(
                            "accepting on {local}: {e}; pausing accepts ({} tunnels open)",
                            self.tunnels()
                        ));
                    }
                    self.backoff = Some(pause);
                    self.paused = Some(Instant::now() + pause);
                }
                // The client gave up before we took it (ECONNABORTED) and the like: next one.
                Err(_) => {}
            }
        }
    }

    fn accepted(
        &mut self,
        client: TcpStream,
        peer: SocketAddr,
        local: SocketAddr,
        plan: Arc<Plan>,
    ) {
        let id = self.next_id;
        self.next_id += 1;
        if self.tunnels() >= self.max_tunnels {
            self.log.line(format_args!(
                "refused #{id} from {peer} on {local}: --max-tunnels ({}) reached",
                self.max_tunnels
            ));
            return;
        }
        let accepted = Instant::now();
        // A simple route's CONNECT goes out first: the proxy works on it while the rest of
        // this (socket options, the log line) is done.
        let opening = plan.loop_addr(accepted).and_then(|addr| {
            let plain = plan.plain.as_ref()?;
            let opening = connecting::Connecting::start(plain, addr, accepted);
            if opening.is_none() {
                plan.forget();
            }
            opening
        });
        let _ = client.set_nodelay(true);
        set_keepalive(&client, plan.keepalive);
        if let Some(d) = plan.dynamic.clone() {
            return self.ask(id, client, peer, local, plan, d);
        }
        self.log.line(format_args!(
            "accepted #{id} from {peer} on {local}: {}",
            plan.route
        ));
        let p = Pending {
            client,
            peer,
            plan,
            accepted,
        };
        match opening {
            Some(c) => self.connect_on_loop(id, p, c),
            None => self.handshake(id, p),
        }
    }

    /// The tunnel of a simple route, opened here ([`connecting`]).
    fn connect_on_loop(&mut self, id: u64, p: Pending, mut c: connecting::Connecting) {
        let registered = self.poll.registry().register(
            &mut c.tunnel,
            Token(CONNECTING + id as usize),
            Interest::READABLE | Interest::WRITABLE,
        );
        match registered {
            // The first event comes at once if the socket is ready already.
            Ok(()) => {
                self.connecting.insert(id, (p, c));
            }
            Err(_) => self.handshake(id, p),
        }
    }

    /// A tunnel the loop is opening: its socket is ready.
    fn connecting_ready(&mut self, id: u64) {
        let Some((p, c)) = self.connecting.get_mut(&id) else {
            return;
        };
        let Some(plain) = p.plan.plain.as_ref() else {
            return;
        };
        let step = c.ready(plain);
        if let connecting::Step::More = step {
            return;
        }
        let Some((p, mut c)) = self.connecting.remove(&id) else {
            return;
        };
        match step {
            // The socket stays registered: the session takes it over under its own token.
            connecting::Step::Open { reply, leftover } => self.start_session(
                id,
                p,
                Opened {
                    tunnel: Box::new(c.tunnel),
                    leftover,
                    status: reply.status_line,
                    route: None,
                    lines: Vec::new(),
                    request: None,
                },
                true,
            ),
            // Closed before a worker takes over: the proxy sees one connection at a time.
            answered => {
                match answered {
                    connecting::Step::Answered => p
                        .plan
                        .plain_off
                        .store(true, std::sync::atomic::Ordering::Relaxed),
                    // The learned address failed: the worker resolves the name again.
                    _ => p.plan.forget(),
                }
                let _ = self.poll.registry().deregister(&mut c.tunnel);
                drop(c);
                self.handshake(id, p);
            }
        }
    }

    /// Fails the tunnels the loop was opening whose --connect-timeout passed (the oldest come
    /// first), with the line a worker's handshake would have led to.
    fn expire_connecting(&mut self, now: Instant) {
        while let Some(entry) = self.connecting.first_entry() {
            if entry.get().1.deadline > now {
                return;
            }
            let (id, (p, c)) = entry.remove_entry();
            // A named proxy's next tunnel resolves it again rather than wait here too.
            p.plan.forget();
            let why = p
                .plan
                .plain
                .as_ref()
                .map_or_else(String::new, |plain| c.timed_out(plain));
            self.log.line(format_args!(
                "failed #{id} after {:.3}s: {why}",
                p.accepted.elapsed().as_secs_f64()
            ));
        }
    }

    /// Hands a tunnel's handshake to a worker, within its route's share of them.
    fn handshake(&mut self, id: u64, p: Pending) {
        let (upstream, target) = (p.plan.upstream.clone(), p.plan.forward.target.clone());
        let work: Box<dyn FnOnce() -> Result<Handed, Error> + Send> =
            Box::new(move || open(&upstream, &target).map(|o| Handed::Tunnel(Box::new(o))));
        let route = Arc::as_ptr(&p.plan.upstream) as usize;
        self.pending.insert(id, p);
        let job = Job { id, work };
        let queue = self.routes.entry(route).or_default();
        let cap = match queue.done {
            0 => WARM_UP,
            _ => ROUTE_WORKERS,
        };
        if queue.busy >= cap {
            queue.waiting.push_back(job);
            return;
        }
        queue.busy += 1;
        self.workers.submit(job);
        if self.workers.spawned() == 0 {
            self.pending.remove(&id);
            self.log.line(format_args!(
                "failed #{id}: no handshake thread could be started"
            ));
            // Give the route its slot back, and fail what waited behind it: with no thread
            // nothing would ever finish to let them run.
            if let Some(queue) = self.routes.get_mut(&route) {
                queue.busy -= 1;
                let waiting: Vec<u64> = queue.waiting.drain(..).map(|j| j.id).collect();
                for id in waiting {
                    if self.pending.remove(&id).is_some() {
                        self.log.line(format_args!(
                            "failed #{id}: no handshake thread could be started"
                        ));
                    }
                }
            }
        }
    }

    /// A `-D` client: its request is read here, on the loop, until it is whole (then a worker
    /// takes it), refused, or late. Clients in that phase are bounded: past a quarter of
    /// `--max-tunnels`, the oldest is closed to make room.
    fn ask(
        &mut self,
        id: u64,
        mut client: TcpStream,
        peer: SocketAddr,
        local: SocketAddr,
        plan: Arc<Plan>,
        d: Arc<dynamic::Dynamic>,
    ) {
        if !dynamic::allowed(peer.ip(), &d.allow) {
            self.log.line(format_args!(
                "#{id} {peer} request: refused (not loopback and not in --allow; closed without an answer)"
            ));
            return;
        }
        while self.asking.len() >= (self.max_tunnels / 4).max(1) {
            let Some((old, w)) = self.asking.pop_first() else {
                break;
            };
            self.log
                .line(format_args!("#{old} {} {}", w.peer, w.asking.evicted()));
        }
        if let Err(e) = self.poll.registry().register(
            &mut client,
            Token(ASKING + id as usize),
            Interest::READABLE,
        ) {
            self.log.line(format_args!(
                "#{id} {peer} request: failed (registering the socket: {e})"
            ));
            return;
        }
        let asking = dynamic::Asking::new(&d);
        self.asking.insert(
            id,
            Waiting {
                client,
                peer,
                local,
                plan,
                dynamic: d,
                asking,
            },
        );
        // The request may be in already.
        self.heard(id);
    }

    /// An asking client's socket is readable.
    fn heard(&mut self, id: u64) {
        let Some(w) = self.asking.get_mut(&id) else {
            return;
        };
        let heard = w.asking.readable(&w.client);
        let ask = match heard {
            dynamic::Heard::More => return,
            dynamic::Heard::Ask(ask) => ask,
            dynamic::Heard::Close(line) => {
                if let Some(w) = self.asking.remove(&id) {
                    self.log.line(format_args!("#{id} {} {line}", w.peer));
                }
                return;
            }
        };
        let Some(mut w) = self.asking.remove(&id) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut w.client);
        // The worker serves the request on a second handle; this one waits in `pending`.
        let handle = socket2::SockRef::from(&w.client)
            .try_clone()
            .map(std::net::TcpStream::from);
        let (d, local) = (w.dynamic.clone(), w.local);
        let work: Box<dyn FnOnce() -> Result<Handed, Error> + Send> = Box::new(move || {
            let handle = handle.kind_ctx(Kind::Tunnel, || "serving the client")?;
            match dynamic::serve(handle, ask, local, &d)? {
                dynamic::Outcome::Tunnel(served) => {
                    let log = served.log();
                    let mut opened = hand_over(served.established, Some(served.route))?;
                    opened.lines = served.lines;
                    opened.request = Some(log);
                    Ok(Handed::Tunnel(Box::new(opened)))
                }
                dynamic::Outcome::Done { lines } => Ok(Handed::Served(lines)),
            }
        });
        self.pending.insert(
            id,
            Pending {
                client: w.client,
                peer: w.peer,
                plan: w.plan,
                accepted: w.asking.accepted,
            },
        );
        // Not counted against the route's share of the workers: which route it takes is the
        // worker's choice (no-proxy), and an HTTP client may keep its worker between requests.
        self.workers.submit(Job { id, work });
        if self.workers.spawned() == 0 {
            self.pending.remove(&id);
            self.log.line(format_args!(
                "failed #{id}: no handshake thread could be started"
            ));
        }
    }

    /// Closes the asking clients whose deadline passed (the oldest come first).
    fn expire_asking(&mut self, now: Instant) {
        while let Some(entry) = self.asking.first_entry() {
            if entry.get().asking.deadline > now {
                return;
            }
            let (id, w) = entry.remove_entry();
            self.log
                .line(format_args!("#{id} {} {}", w.peer, w.asking.expired()));
        }
    }

    /// After a pause: try every listener; a new EMFILE pauses again, longer.
    fn resume_accepting(&mut self) {
        self.paused = None;
        for slot in 0..self.listeners.len() {
            self.accept(slot);
        }
        if self.paused.is_none() {
            self.backoff = None;
            self.log.line(format_args!("accepting again"));
        }
    }

    /// Handshakes that finished: start their sessions or log why they failed.
    fn collect(&mut self) {
        while let Ok(Done { id, result }) = self.done.try_recv() {
            self.next_on_route(id);
            let Some(p) = self.pending.remove(&id) else {
                continue;
            };
            match result {
                Ok(Handed::Tunnel(opened)) => self.start_session(id, p, *opened, false),
                Ok(Handed::Served(lines)) => {
                    for line in &lines {
                        self.log.line(format_args!("#{id} {} {line}", p.peer));
                    }
                }
                Err(e) => self.log.line(format_args!(
                    "failed #{id} after {:.3}s: {:#}",
                    p.accepted.elapsed().as_secs_f64(),
                    e
                )),
            }
        }
    }

    /// A handshake of `id`'s route finished: start the next one waiting on that route.
    fn next_on_route(&mut self, id: u64) {
        let Some(route) = self
            .pending
            .get(&id)
            .filter(|p| p.plan.dynamic.is_none())
            .map(|p| Arc::as_ptr(&p.plan.upstream) as usize)
        else {
            return;
        };
        let Some(queue) = self.routes.get_mut(&route) else {
            return;
        };
        queue.busy -= 1;
        queue.done += 1;
        // Waiting jobs whose clients were dropped (the drain) are skipped.
        while queue.busy < ROUTE_WORKERS {
            let Some(job) = queue.waiting.pop_front() else {
                break;
            };
            if self.pending.contains_key(&job.id) {
                queue.busy += 1;
                self.workers.submit(job);
            }
        }
    }

    /// `registered`: the tunnel's socket is registered with the loop already (opened there).
    fn start_session(&mut self, id: u64, p: Pending, opened: Opened, registered: bool) {
        let Opened {
            tunnel,
            leftover,
            status,
            route,
            lines,
            request,
        } = opened;
        for line in &lines {
            self.log.line(format_args!("#{id} {} {line}", p.peer));
        }
        let slot = self.free.pop().unwrap_or_else(|| {
            self.sessions.push(None);
            self.sessions.len() - 1
        });
        let tunnel: Box<dyn Tunnel> = tunnel;
        if !registered && let Some(addr) = tunnel.plain_peer() {
            p.plan.learn(addr, Instant::now());
        }
        let mut session = Session::new(p.client, tunnel, &leftover, &mut self.pool);
        // The first turn before anything else: the bytes that came with the reply (often the
        // server's greeting) go to the client now, not after the registration and the log
        // line. Registering afterwards loses no edge: epoll reports a socket that is ready
        // when it is added (or modified).
        let first = session.drive(&mut self.pool);
        let registry = self.poll.registry();
        let both = Interest::READABLE | Interest::WRITABLE;
        let registered = registry
            .register(&mut session.client, Token(SESSIONS + 2 * slot), both)
            .and_then(|()| {
                let token = Token(SESSIONS + 2 * slot + 1);
                match registered {
                    true => registry.reregister(&mut *session.tunnel, token, both),
                    false => registry.register(&mut *session.tunnel, token, both),
                }
            });
        if let Err(e) = registered {
            self.free.push(slot);
            session.release(&mut self.pool);
            self.log
                .line(format_args!("failed #{id}: registering the sockets: {e}"));
            return;
        }
        self.log.line(format_args!(
            "established #{id} from {} to {} in {:.3}s{}",
            p.peer,
            route.as_deref().unwrap_or(&p.plan.route),
            p.accepted.elapsed().as_secs_f64(),
            match status.is_empty() {
                true => String::new(),
                false => format!(": {status:?}"),
            }
        ));
        self.sessions[slot] = Some(Live {
            id,
            session,
            route: route.unwrap_or_else(|| p.plan.route.clone()),
            idle_timeout: p.plan.idle_timeout,
            request: request.map(|r| (p.peer, r)),
        });
        self.driven(slot, first);
    }

    fn drive(&mut self, slot: usize) {
        let Some(Some(live)) = self.sessions.get_mut(slot) else {
            return;
        };
        let outcome = live.session.drive(&mut self.pool);
        self.driven(slot, outcome);
    }

    /// What a session's turn led to: another turn soon, or its end.
    fn driven(&mut self, slot: usize, outcome: Outcome) {
        match outcome {
            Outcome::Open { hot } => {
                if hot {
                    self.hot.push_back(slot);
                }
            }
            Outcome::Closed => self.end(slot, None),
            Outcome::Failed(why) => self.end(slot, Some(why)),
        }
    }

    fn end(&mut self, slot: usize, why: Option<String>) {
        let Some(mut live) = self.sessions[slot].take() else {
            return;
        };
        live.session.release(&mut self.pool);
        self.free.push(slot);
        let (up, down) = live.session.moved();
        let secs = live.session.started.elapsed().as_secs_f64();
        let id = live.id;
        let route = &live.route;
        if let Some((peer, request)) = &live.request {
            let line = dynamic::tunnel_line(request, up, down, why.as_deref());
            self.log.line(format_args!("#{id} {peer} {line}"));
            return;
        }
        match why {
            None => self.log.line(format_args!(
                "closed #{id} to {route} after {secs:.3}s: {up} bytes sent, {down} bytes received"
            )),
            Some(why) => self.log.line(format_args!(
                "failed #{id} to {route} after {secs:.3}s: {why} ({up} bytes sent, {down} bytes received)"
            )),
        }
        // Sockets close here; epoll forgets closed fds by itself.
    }

    fn close_all(&mut self) {
        for slot in 0..self.sessions.len() {
            if self.sessions[slot].is_some() {
                self.end(slot, Some("closed by the drain".to_owned()));
            }
        }
        self.pending.clear();
        self.connecting.clear();
        self.asking.clear();
    }

    /// Once a second: idle timeouts, and the file when it is not watched by inotify.
    fn tick(&mut self, now: Instant) {
        for slot in 0..self.sessions.len() {
            let expired = match &self.sessions[slot] {
                Some(live) => live
                    .idle_timeout
                    .filter(|t| now.duration_since(live.session.last_moved) >= *t),
                None => None,
            };
            if let Some(t) = expired {
                self.end(
                    slot,
                    Some(format!(
                        "no data in either direction for {}s (idle-timeout)",
                        t.as_secs_f64()
                    )),
                );
            }
        }
        if let Some(f) = self.file.as_mut().filter(|f| f.watch.is_none()) {
            let now_stamp = stamp(&f.path);
            if now_stamp != f.stamp {
                f.stamp = now_stamp;
                f.reload_at = Some(now);
            }
        }
    }

    /// Nothing happened for a while: sessions whose bytes wait on a blocked destination try
    /// again, in case the kernel never sends that edge.
    fn watchdog(&mut self) {
        for slot in 0..self.sessions.len() {
            if let Some(live) = self.sessions[slot]
                .as_mut()
                .filter(|l| l.session.holds_bytes())
            {
                live.session.retry_writes();
                self.drive(slot);
            }
        }
    }

    fn file_event(&mut self) {
        let Some(f) = self.file.as_mut() else { return };
        if f.watch.as_ref().is_some_and(|w| w.touched()) {
            f.reload_at = Some(Instant::now() + SETTLE);
        }
    }

    /// Re-reads the forwards file and applies it. `forced` (SIGHUP) applies even an unchanged
    /// text, which retries ports that could not be bound before.
    fn reload(&mut self, forced: bool) {
        let Some(f) = self.file.as_mut() else { return };
        f.reload_at = None;
        let path = f.path.clone();
        // Before reading: whatever changes after this is seen by the new watch.
        self.rewatch();
        let shown = path.display().to_string();
        let text = match read_forwards(&path) {
            Ok(t) => t,
            Err(e) => {
                self.log.line(format_args!(
                    "reloading: {e:#}; keeping the previous forwards"
                ));
                return;
            }
        };
        let applied = self.file.as_ref().and_then(|f| f.applied.as_deref());
        if !forced && applied == Some(text.as_str()) {
            return;
        }
        let plans = match self.plans_from(&path, &text, false) {
            Ok(p) => p,
            Err(e) => {
                self.log.line(format_args!(
                    "reloading: {e:#}; keeping the previous forwards"
                ));
                return;
            }
        };
        let (mut added, mut removed, mut changed, mut failed) = (0, 0, 0, 0);
        // Listeners of the file, by address (port 0 lines are never matched: each is new).
        let mut old: HashMap<SocketAddr, usize> = HashMap::new();
        let mut unmatched: Vec<usize> = Vec::new();
        for (slot, l) in self.listeners.iter().enumerate() {
            if let Some(l) = l.as_ref().filter(|l| !l.pinned) {
                if l.plan.forward.bind.port() != 0 {
                    old.insert(l.plan.forward.bind, slot);
                } else {
                    unmatched.push(slot);
                }
            }
        }
        let mut new = Vec::new();
        for plan in plans {
            match old.remove(&plan.forward.bind) {
                Some(slot) => {
                    let Some(l) = self.listeners[slot].as_mut() else {
                        continue;
                    };
                    // Unchanged lines take the new plan too: a credential file may have changed.
                    let differs = !l.plan.forward.same_as(&plan.forward);
                    let (local, route, origin) =
                        (l.local, plan.route.clone(), plan.forward.origin.clone());
                    l.plan = plan;
                    if differs {
                        changed += 1;
                        self.log.line(format_args!(
                            "changed {local}: new connections go to {route} ({origin}); open tunnels stay"
                        ));
                    }
                }
                None => new.push(plan),
            }
        }
        unmatched.extend(old.into_values());
        for slot in unmatched {
            removed += 1;
            self.unbind(
                slot,
                Some("removed from the forwards file; open tunnels stay"),
            );
        }
        for plan in new {
            match self.bind(plan, false) {
                Ok(()) => added += 1,
                Err(e) => {
                    failed += 1;
                    self.log
                        .line(format_args!("{e}; this line is not in force"));
                }
            }
        }
        self.log.line(format_args!(
            "reloaded {shown}: {added} added, {removed} removed, {changed} changed, {failed} failed"
        ));
        if let Some(f) = self.file.as_mut() {
            f.applied = Some(text);
            f.stamp = stamp(&f.path);
        }
    }
}

/// The largest forwards file read; a bigger one is refused (it is surely the wrong file).
const MAX_FORWARDS: u64 = 1024 * 1024;

/// Reads the forwards file without ever blocking the loop: a FIFO, a device or a directory
/// put in its place is refused, and so is a file over [`MAX_FORWARDS`].
fn read_forwards(path: &Path) -> anyhow::Result<String> {
    let bytes = credentials::read_regular(path, "forwards file", MAX_FORWARDS, |_| Ok(()))?;
    String::from_utf8(bytes.to_vec())
        .map_err(|_| anyhow::anyhow!("reading forwards file {}: it is not UTF-8", path.display()))
}

/// The command line's credentials with the password asked for now if it is missing: a reload
/// or a connection must never wait on a prompt.
fn ask_once(config: &Config) -> Result<(Spec, Vec<crate::config::Proxy>), Error> {
    let options = match &config.credentials {
        Spec::User(user) => {
            let proxy = config
                .proxies
                .first()
                .map_or_else(|| "of the forwards".to_owned(), |p| p.endpoint.to_string());
            Spec::Known(ask(&proxy, user, config)?)
        }
        other => other.clone(),
    };
    // The default route's hops: the first took the options' user (asked just now) unless
    // its URL or netrc named another; a user of their own is asked for here, once.
    let mut proxies = config.proxies.clone();
    for (i, hop) in proxies.iter_mut().enumerate() {
        let Spec::User(user) = &hop.credentials else {
            continue;
        };
        if is_socks4(hop) {
            continue;
        }
        hop.credentials = match (&config.credentials, &options) {
            (Spec::User(u), Spec::Known(c)) if i == 0 && u == user => Spec::Known(c.clone()),
            _ => Spec::Known(ask(&hop.endpoint.to_string(), user, config)?),
        };
    }
    Ok((options, proxies))
}

fn ask(proxy: &str, user: &str, config: &Config) -> Result<credentials::Credentials, Error> {
    let asking = || format!("asking for the password of proxy user \"{user}\"");
    match credentials::ask(proxy, Some(user), &config.askers).kind_ctx(Kind::Auth, asking)? {
        Some(c) => Ok(c),
        None => Err(Error::msg(
            Kind::Auth,
            format_args!(
                "{}: no terminal and no askpass program (give the password with --proxy-auth-file or {})",
                asking(),
                crate::config::AUTH_ENV
            ),
        )),
    }
}

/// SOCKS4 sends a user id and no password: nothing to ask for.
fn is_socks4(hop: &crate::config::Proxy) -> bool {
    matches!(
        hop.socks,
        Some(crate::hop::socks::Version::V4 | crate::hop::socks::Version::V4a)
    )
}

/// Establishes one tunnel on a worker thread and readies its socket for the loop.
fn open(upstream: &Upstream, target: &crate::config::Endpoint) -> Result<Opened, Error> {
    hand_over(establish(upstream, target)?, None)
}

/// Readies an established tunnel's socket for the loop.
fn hand_over(
    established: crate::handshake::Established<crate::transport::stream::Stream>,
    route: Option<String>,
) -> Result<Opened, Error> {
    let tunnel = established
        .stream
        .into_relay()
        .kind_ctx(Kind::Tunnel, || "handing over the tunnel")?;
    Ok(Opened {
        tunnel,
        leftover: established.leftover,
        status: established.reply.status_line,
        route,
        lines: Vec::new(),
        request: None,
    })
}

/// The first handshake of each upstream runs alone, the rest wait for it: libraries a
/// handshake loads on first use (GSSAPI) are then initialised by one thread, not raced by
/// sixteen. Seen in the static-PIE build before sys/gssapi.rs set up each thread's libc
/// locale tables: concurrent first Negotiate handshakes crashed in libkrb5.
const WARM_UP: usize = 1;

/// Handshakes one upstream may run at once: a quarter of the pool. Measured: with every
/// worker stuck on a proxy that never answers, a healthy forward's handshakes queued behind
/// them (connect-to-first-byte went from 0.2 ms to the stuck ones' --connect-timeout).
const ROUTE_WORKERS: usize = workers::MAX_WORKERS / 4;

/// Queue of connections not yet accepted. Many clients arriving at once (a build farm, a
/// benchmark's 1,000 connects) overflow a short queue, and the kernel then answers with SYN
/// cookies and resets: measured with 1,000 simultaneous connects, mio's default of 1024
/// reset some of them; the kernel caps this at net.core.somaxconn.
const BACKLOG: i32 = 8192;

fn listen_on(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(TcpListener::from_std(socket.into()))
}

fn set_keepalive(s: &TcpStream, keepalive: Option<Duration>) {
    if let Some(k) = keepalive {
        let ka = socket2::TcpKeepalive::new().with_time(k);
        let _ = socket2::SockRef::from(s).set_tcp_keepalive(&ka);
    }
}

fn out_of_resources(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

fn stamp(path: &Path) -> Option<(std::time::SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::io::Read;

    fn config(args: &[&str]) -> Config {
        let argv = std::iter::once("gimlet").chain(args.iter().copied());
        let cli = crate::cli::Cli::try_parse_from(argv).expect("arguments");
        Config::from_cli(cli, |_| None).expect("config")
    }

    /// Accepts on listener `slot` until `n` connections were taken (waiting on the poll, not
    /// spinning: a connection may reach the queue just after its client's connect returned).
    fn accept_until(engine: &mut Engine<'_>, slot: usize, n: u64) {
        let mut events = Events::with_capacity(16);
        while engine.next_id <= n {
            engine
                .poll
                .poll(&mut events, Some(Duration::from_secs(20)))
                .expect("poll");
            assert!(!events.is_empty(), "no connection came within 20s");
            engine.accept(slot);
        }
    }

    /// A named proxy: the loop opens a tunnel only to an address a worker reached, and only
    /// for LEARNED_FOR; before that, after it, and after a failed connect there, a worker
    /// (which resolves the name) does.
    #[test]
    fn a_named_proxys_tunnels_go_to_the_loop_while_a_workers_address_is_fresh() {
        let proxy = std::net::TcpListener::bind("127.0.0.1:0").expect("proxy");
        let proxy_addr = proxy.local_addr().unwrap();
        let named = format!("localhost:{}", proxy_addr.port());
        let config = config(&["-q", "-L", "0:git.example:22", &named]);
        let listen = config.listen.as_ref().expect("listen mode");
        let mut engine = Engine::new(&config, listen, 1024).expect("engine");
        // No worker runs: a tunnel sent to one fails at once, which keeps this deterministic.
        engine.workers.refuse_threads = true;
        engine.start().expect("start");
        let (local, plan) = {
            let l = engine.listeners[0].as_ref().expect("listener");
            (l.local, l.plan.clone())
        };
        assert!(plan.plain.as_ref().is_some_and(|p| p.addr.is_none()));
        let mut clients = Vec::new();
        let mut accept_one = |engine: &mut Engine<'_>, n: u64| {
            clients.push(std::net::TcpStream::connect(local).expect("connect"));
            accept_until(engine, 0, n);
        };
        // Nothing learned yet: a worker's.
        accept_one(&mut engine, 1);
        assert!(engine.connecting.is_empty());
        // A worker reached the proxy there: the next tunnel is the loop's.
        plan.learn(proxy_addr, Instant::now());
        accept_one(&mut engine, 2);
        assert_eq!(engine.connecting.len(), 1);
        // Learned too long ago: a worker's again.
        plan.learn(proxy_addr, Instant::now() - LEARNED_FOR);
        accept_one(&mut engine, 3);
        assert_eq!(engine.connecting.len(), 1);
        // A failed connect there is forgotten.
        plan.learn(proxy_addr, Instant::now());
        plan.forget();
        assert_eq!(plan.loop_addr(Instant::now()), None);
        // A proxy at an address learns nothing and always goes to the loop.
        let config =
            super::tests::config(&["-q", "-L", "0:git.example:22", &proxy_addr.to_string()]);
        let listen = config.listen.as_ref().expect("listen mode");
        let mut engine = Engine::new(&config, listen, 1024).expect("engine");
        engine.start().expect("start");
        let plan = engine.listeners[0].as_ref().expect("listener").plan.clone();
        let elsewhere: SocketAddr = "127.0.0.1:9".parse().unwrap();
        plan.learn(elsewhere, Instant::now());
        assert_eq!(plan.loop_addr(Instant::now()), Some(proxy_addr));
    }

    #[test]
    fn a_handshake_thread_that_cannot_start_gives_the_route_its_slot_back() {
        let config = config(&["-q", "-L", "0:127.0.0.1:9"]);
        let listen = config.listen.as_ref().expect("listen mode");
        let mut engine = Engine::new(&config, listen, 1024).expect("engine");
        engine.workers.refuse_threads = true;
        engine.start().expect("start");
        let local = engine.listeners[0].as_ref().expect("listener").local;
        // Three clients of one route: the first handshake runs alone (WARM_UP), so a slot
        // kept by the failed start would leave the others waiting for ever.
        let clients: Vec<std::net::TcpStream> = (0..3)
            .map(|_| std::net::TcpStream::connect(local).expect("connect"))
            .collect();
        accept_until(&mut engine, 0, 3);
        assert!(engine.pending.is_empty(), "clients left waiting");
        for queue in engine.routes.values() {
            assert_eq!(queue.busy, 0, "the route's slot was not given back");
            assert!(queue.waiting.is_empty());
        }
        for (i, mut c) in clients.into_iter().enumerate() {
            c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let mut byte = [0u8; 1];
            assert_eq!(c.read(&mut byte).expect("EOF, not a hang"), 0, "client {i}");
        }
        let failed = engine
            .log
            .held()
            .iter()
            .filter(|l| l.contains("no handshake thread could be started"))
            .count();
        assert_eq!(failed, 3, "{:#?}", engine.log.held());
    }
}
