//! What gimlet gives back when a signal ends or stops it: the `O_NONBLOCK` flags of the
//! caller's stdin and stdout (they live on file descriptions the caller shares) and the
//! terminal's echo while a password prompt has it off.
//!
//! Every signal whose default action ends the process and that can be caught gets a handler
//! that puts that state back and then dies of the same signal with its default action, so the
//! caller sees the usual status (and a core where one is due). SIGPIPE is among them, but the
//! Rust runtime ignores it before `main` (a vanished reader is an `EPIPE` the relay handles),
//! and a signal the caller ignores (`nohup`) stays ignored. The stop signals a terminal sends
//! (SIGTSTP, SIGTTIN, SIGTTOU) give the state back, stop with their default action, and take
//! it again when continued; SIGCONT takes it again too, since the shell may have cleared
//! `O_NONBLOCK` on a shared description while we were stopped. SIGSTOP and SIGKILL cannot be
//! caught: under SIGSTOP the flags stay set (and echo stays off) until SIGCONT; after SIGKILL
//! they stay so for good. Signals another part of gimlet handles itself ([`super::signals`],
//! the listen loop's) are left to it.
//!
//! Handlers only call async-signal-safe functions (`fcntl`, `tcsetattr`, `sigaction`,
//! `sigprocmask`, `raise`) and read atomics or memory published before them.

use std::cell::UnsafeCell;
use std::mem::MaybeUninit;
use std::os::fd::RawFd;
use std::sync::Once;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU8, Ordering};

/// Signals whose default action ends the process (some with a core), and that can be caught.
const ENDING: &[libc::c_int] = &[
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGILL,
    libc::SIGTRAP,
    libc::SIGABRT,
    libc::SIGBUS,
    libc::SIGFPE,
    libc::SIGUSR1,
    libc::SIGSEGV,
    libc::SIGUSR2,
    libc::SIGPIPE,
    libc::SIGALRM,
    libc::SIGTERM,
    #[cfg(target_os = "linux")]
    libc::SIGSTKFLT,
    libc::SIGXCPU,
    libc::SIGXFSZ,
    libc::SIGVTALRM,
    libc::SIGPROF,
    #[cfg(target_os = "linux")]
    libc::SIGIO,
    #[cfg(target_os = "linux")]
    libc::SIGPWR,
    libc::SIGSYS,
];

/// The real-time signals free for applications: their default action ends the process too.
#[cfg(target_os = "linux")]
fn realtime() -> std::ops::RangeInclusive<libc::c_int> {
    libc::SIGRTMIN()..=libc::SIGRTMAX()
}

#[cfg(not(target_os = "linux"))]
fn realtime() -> std::ops::RangeInclusive<libc::c_int> {
    1..=0
}

/// Signals that report a fault of the instruction that raised them when the kernel sends them.
const FAULTS: &[libc::c_int] = &[
    libc::SIGILL,
    libc::SIGTRAP,
    libc::SIGBUS,
    libc::SIGFPE,
    libc::SIGSEGV,
    libc::SIGSYS,
];

/// Stop signals that can be caught.
const STOPPING: &[libc::c_int] = &[libc::SIGTSTP, libc::SIGTTIN, libc::SIGTTOU];

/// Room for every signal number's previous action.
const MAX_SIGNAL: usize = 65;

/// Memory written before the handlers that read it are installed (or before an atomic that
/// publishes it is set), and only read by them.
struct Published<T>(UnsafeCell<MaybeUninit<T>>);

// SAFETY: writers publish through an atomic (or the sigaction call) after writing; handlers
// read only published values; writes happen on one thread at a time (under `Once` or while
// the publishing atomic says "not published").
unsafe impl<T> Sync for Published<T> {}

impl<T: Copy> Published<T> {
    const fn new() -> Self {
        Published(UnsafeCell::new(MaybeUninit::uninit()))
    }

    /// # Safety
    /// No handler may read this value until an atomic store (or sigaction) publishes it.
    unsafe fn write(&self, value: T) {
        // SAFETY: per the contract, nobody reads concurrently.
        unsafe { (*self.0.get()).write(value) };
    }

    /// # Safety
    /// The value was written and published.
    unsafe fn read(&self) -> T {
        // SAFETY: per the contract, the value is initialised and no longer written.
        unsafe { (*self.0.get()).assume_init() }
    }
}

/// The actions in place before ours, by signal number: a fault goes back to it (the Rust
/// runtime's stack-overflow report on SIGSEGV and SIGBUS).
static PREVIOUS: [Published<libc::sigaction>; MAX_SIGNAL] =
    [const { Published::new() }; MAX_SIGNAL];
static INSTALLED: Once = Once::new();

/// Flags to give back to fds 0 and 1; -1 when there is nothing to give back.
static STDIO_SAVED: [AtomicI32; 2] = [AtomicI32::new(-1), AtomicI32::new(-1)];
/// Whether fds 0 and 1 should be non-blocking now (taken again after a stop).
static STDIO_ACTIVE: [AtomicBool; 2] = [AtomicBool::new(false), AtomicBool::new(false)];

/// No prompt: nothing to give back.
const TTY_IDLE: u8 = 0;
/// A prompt has echo off: give back on a signal, take again after a stop.
const TTY_PROMPTING: u8 = 1;
/// The prompt is giving echo back itself: a handler gives it back too, never takes it.
const TTY_FINISHING: u8 = 2;
static TTY_STATE: AtomicU8 = AtomicU8::new(TTY_IDLE);
static TTY_FD: AtomicI32 = AtomicI32::new(-1);
static TTY_SAVED: Published<libc::termios> = Published::new();
static TTY_QUIET: Published<libc::termios> = Published::new();

/// Installs the handlers now, ahead of [`stdio_begin`] (which then finds them in place): a
/// plain tunnel does it while the proxy's reply is on its way, off the path from the reply to
/// the first tunnel byte. Until a fd's flags are recorded the handlers give nothing back and
/// end or stop the process as the signal's default action would.
pub fn install_early() {
    install();
}

/// Records the flags to give back to stdio fd `fd` (0 or 1) before it is made non-blocking.
pub fn stdio_begin(fd: RawFd, saved: libc::c_int) {
    if let Some(slot) = STDIO_SAVED.get(fd as usize) {
        install();
        slot.store(saved, Ordering::SeqCst);
        STDIO_ACTIVE[fd as usize].store(true, Ordering::SeqCst);
    }
}

/// Call before giving the flags back: a continue no longer makes fd `fd` non-blocking.
pub fn stdio_finishing(fd: RawFd) {
    if let Some(active) = STDIO_ACTIVE.get(fd as usize) {
        active.store(false, Ordering::SeqCst);
    }
}

/// Call once the flags are back: signals leave fd `fd` alone.
pub fn stdio_end(fd: RawFd) {
    if let Some(slot) = STDIO_SAVED.get(fd as usize) {
        slot.store(-1, Ordering::SeqCst);
    }
}

/// Records the terminal settings to give back (`saved`) and to take again after a stop
/// (`quiet`) before a prompt turns echo off on `fd`.
pub fn tty_begin(fd: RawFd, saved: &libc::termios, quiet: &libc::termios) {
    install();
    // Unpublished: the prompt that published last has finished.
    TTY_STATE.store(TTY_IDLE, Ordering::SeqCst);
    // SAFETY: TTY_STATE says idle, so no handler reads these until the stores below.
    unsafe {
        TTY_SAVED.write(*saved);
        TTY_QUIET.write(*quiet);
    }
    TTY_FD.store(fd, Ordering::SeqCst);
    TTY_STATE.store(TTY_PROMPTING, Ordering::SeqCst);
}

/// Call before the prompt gives echo back itself.
pub fn tty_finishing() {
    TTY_STATE.store(TTY_FINISHING, Ordering::SeqCst);
}

/// Call once echo is back.
pub fn tty_end() {
    TTY_STATE.store(TTY_IDLE, Ordering::SeqCst);
}

/// Puts back what the caller shares with us: terminal settings, then the stdio flags (fd 1
/// first, so fds sharing one description end with fd 0's saved flags, the caller's).
fn give_back() {
    if TTY_STATE.load(Ordering::SeqCst) != TTY_IDLE {
        let fd = TTY_FD.load(Ordering::SeqCst);
        // SAFETY: a state other than idle means both settings were published; tcsetattr is
        // async-signal-safe, and every handler blocks SIGTTOU, so a background process may
        // set them too.
        unsafe {
            let saved = TTY_SAVED.read();
            libc::tcsetattr(fd, libc::TCSANOW, &saved);
        }
    }
    for fd in [1, 0] {
        let saved = STDIO_SAVED[fd].load(Ordering::SeqCst);
        if saved >= 0 {
            // SAFETY: fcntl is async-signal-safe.
            unsafe { libc::fcntl(fd as RawFd, libc::F_SETFL, saved) };
        }
    }
}

/// Takes again what a stop gave back: echo off for a prompt still waiting, `O_NONBLOCK` on
/// the stdio fds still relaying.
fn take_again() {
    if TTY_STATE.load(Ordering::SeqCst) == TTY_PROMPTING {
        let fd = TTY_FD.load(Ordering::SeqCst);
        // SAFETY: as in `give_back`.
        unsafe {
            let quiet = TTY_QUIET.read();
            libc::tcsetattr(fd, libc::TCSANOW, &quiet);
        }
    }
    for fd in [0, 1] {
        let saved = STDIO_SAVED[fd].load(Ordering::SeqCst);
        if saved >= 0 && STDIO_ACTIVE[fd].load(Ordering::SeqCst) {
            // SAFETY: fcntl is async-signal-safe.
            unsafe { libc::fcntl(fd as RawFd, libc::F_SETFL, saved | libc::O_NONBLOCK) };
        }
    }
}

/// Keeps errno as the interrupted code left it, for handlers that return.
struct KeepErrno(libc::c_int);

impl KeepErrno {
    fn new() -> Self {
        KeepErrno(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

impl Drop for KeepErrno {
    fn drop(&mut self) {
        // SAFETY: errno is thread-local; writing it is async-signal-safe.
        unsafe { *errno_location() = self.0 };
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
unsafe fn errno_location() -> *mut libc::c_int {
    // SAFETY: always valid for the calling thread.
    unsafe { libc::__errno_location() }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
unsafe fn errno_location() -> *mut libc::c_int {
    // SAFETY: always valid for the calling thread.
    unsafe { libc::__error() }
}

/// Sets `sig`'s action to the default one.
fn default_action(sig: libc::c_int) {
    // SAFETY: sigaction on a zeroed struct (SIG_DFL, empty mask) is async-signal-safe.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = libc::SIG_DFL;
        libc::sigemptyset(&mut act.sa_mask);
        libc::sigaction(sig, &act, std::ptr::null_mut());
    }
}

extern "C" fn on_ending(sig: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    give_back();
    // SAFETY: the kernel passes a valid siginfo with SA_SIGINFO.
    let from_kernel = !info.is_null() && unsafe { (*info).si_code } > 0;
    if from_kernel && FAULTS.contains(&sig) {
        // A real fault: the instruction runs again on return and faults under the action
        // that was there before ours (the runtime's stack-overflow report, or the default).
        // SAFETY: PREVIOUS[sig] was written before our handler was installed.
        unsafe {
            let previous = PREVIOUS[sig as usize].read();
            libc::sigaction(sig, &previous, std::ptr::null_mut());
        }
        return;
    }
    default_action(sig);
    // SAFETY: raise is async-signal-safe. `sig` is blocked while this handler runs, so it is
    // delivered, with its default action, as soon as the handler returns.
    unsafe { libc::raise(sig) };
}

extern "C" fn on_stop(sig: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let _errno = KeepErrno::new();
    give_back();
    default_action(sig);
    // SAFETY: sigprocmask and raise are async-signal-safe. Unblocked, the signal stops the
    // process right here with its default action (unless the kernel discards it: a stop in
    // an orphaned process group, which nobody could continue).
    unsafe {
        let mut only: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut only);
        libc::sigaddset(&mut only, sig);
        libc::sigprocmask(libc::SIG_UNBLOCK, &only, std::ptr::null_mut());
        libc::raise(sig);
        // Continued (the handler's return restores the signal mask).
        set_handler(sig, on_stop, &handled());
    }
    take_again();
}

extern "C" fn on_continue(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let _errno = KeepErrno::new();
    take_again();
}

type Handler = extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void);

/// Every signal we handle: the mask each handler runs under.
fn handled() -> libc::sigset_t {
    // SAFETY: a zeroed sigset_t is valid storage; the set functions take valid pointers.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in ENDING.iter().chain(STOPPING).chain(&[libc::SIGCONT]) {
            libc::sigaddset(&mut set, s);
        }
        for s in realtime() {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// The action that runs `handler` for a signal, blocking every signal we handle (`mask`, from
/// [`handled`]) while it runs, so handlers never nest, and SIGTTOU cannot stop a background
/// process setting the terminal.
fn action(handler: Handler, mask: &libc::sigset_t) -> libc::sigaction {
    // SAFETY: a zeroed sigaction is valid.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = handler as *const () as libc::sighandler_t;
    act.sa_mask = *mask;
    act.sa_flags = libc::SA_RESTART | libc::SA_SIGINFO | libc::SA_ONSTACK;
    act
}

/// Installs `handler` for `sig` (see [`action`]).
///
/// # Safety
/// `handler` must only do async-signal-safe work.
unsafe fn set_handler(sig: libc::c_int, handler: Handler, mask: &libc::sigset_t) {
    // SAFETY: sigaction takes valid pointers.
    unsafe { libc::sigaction(sig, &action(handler, mask), std::ptr::null_mut()) };
}

/// Installs the handlers once. A signal the caller (or the runtime) ignores stays ignored; a
/// signal that already has a handler stays with it (the listen loop handles SIGHUP, SIGINT,
/// SIGTERM and SIGUSR1 itself), except for the faults, whose handler ours goes back to.
///
/// A plain tunnel pays this at start-up, for some 55 signals: each is installed with one
/// `sigaction` that also returns the action it replaces, and that action is put back in the
/// rare case it was not the default (one call per signal where asking first and then
/// installing took two). Our signals are blocked on this thread meanwhile, so none reaches it
/// between the two calls of a signal that must stay ignored, and one that came is discarded
/// when its ignoring is put back (another thread, where one runs, could take it in those few
/// instructions). The faults are still asked first: their handler reads the previous action,
/// which must be written before it is installed.
fn install() {
    INSTALLED.call_once(|| {
        // One mask for every handler (building it per handler was a third of the plain
        // tunnel's start-up instructions).
        let mask = handled();
        let ending = ENDING.iter().copied().chain(realtime());
        let all = ending
            .map(|s| (s, on_ending as Handler))
            .chain(STOPPING.iter().map(|&s| (s, on_stop as Handler)))
            .chain([(libc::SIGCONT, on_continue as Handler)]);
        // SAFETY: a zeroed sigset_t is valid storage.
        let mut before: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: pthread_sigmask with valid sets.
        let blocked = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &mask, &mut before) } == 0;
        for (sig, handler) in all {
            let Some(slot) = PREVIOUS.get(sig as usize) else {
                continue;
            };
            // SAFETY: the handlers only do async-signal-safe work; PREVIOUS[sig] is written
            // before a fault's handler, the one that reads it, is installed.
            unsafe {
                let mut old: libc::sigaction = std::mem::zeroed();
                if blocked && !FAULTS.contains(&sig) {
                    if libc::sigaction(sig, &action(handler, &mask), &mut old) == 0
                        && old.sa_sigaction != libc::SIG_DFL
                    {
                        // Ignored by the caller, or handled by another part of gimlet.
                        libc::sigaction(sig, &old, std::ptr::null_mut());
                    }
                    continue;
                }
                if libc::sigaction(sig, std::ptr::null(), &mut old) != 0
                    || old.sa_sigaction == libc::SIG_IGN
                    || (old.sa_sigaction != libc::SIG_DFL && !FAULTS.contains(&sig))
                {
                    continue;
                }
                slot.write(old);
                set_handler(sig, handler, &mask);
            }
        }
        if blocked {
            // SAFETY: puts back the mask saved above.
            unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &before, std::ptr::null_mut()) };
        }
    });
}
