//! Handshakes off the accepting path: a bounded pool of threads, each establishing one
//! tunnel at a time with the blocking, deadline-bound code the pipe mode uses
//! ([`crate::establish`]), and handing the open socket back to the engine's loop through a
//! channel and a [`mio::Waker`].
//!
//! Why threads and not non-blocking handshake state machines on the loop: every protocol,
//! authentication round trip, reconnect after a 407 and TLS handshake already exists once,
//! tested, as blocking code with deadlines; a state-machine rewrite would duplicate all of it
//! for the same observable result. The one exception is the simplest route's success
//! ([`super::connecting`]), where the two hand-offs were a measurable part of the latency a forward adds.
//! Measured (README, "Listen mode"): with 200 handshakes stuck
//! on a proxy that never answers, new connections are still accepted and logged at once, and
//! a healthy forward's connect-to-first-byte stays at 0.22 ms (p50), because the engine lets
//! one upstream hold at most a quarter of the workers. Threads start on demand, up to
//! [`MAX_WORKERS`], and stay.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};

use mio::Waker;

use crate::error::Error;

/// Most handshakes in progress at once; more wait in the queue (each has its own deadline
/// from the moment a worker takes it).
pub const MAX_WORKERS: usize = 64;

/// A handshake to do: `work` runs on a worker thread and its result goes back tagged `id`.
pub struct Job<T> {
    pub id: u64,
    pub work: Box<dyn FnOnce() -> Result<T, Error> + Send>,
}

/// A finished handshake.
pub struct Done<T> {
    pub id: u64,
    pub result: Result<T, Error>,
}

pub struct Workers<T> {
    jobs: Sender<Job<T>>,
    queue: Arc<Mutex<Receiver<Job<T>>>>,
    results: Sender<Done<T>>,
    waker: Arc<Waker>,
    idle: Arc<AtomicUsize>,
    queued: Arc<AtomicUsize>,
    spawned: usize,
    /// Tests: every thread start fails, as when the system has no threads left.
    #[cfg(test)]
    pub refuse_threads: bool,
}

impl<T: Send + 'static> Workers<T> {
    /// Results arrive on the returned receiver; `waker` is woken after each.
    pub fn new(waker: Arc<Waker>) -> (Workers<T>, Receiver<Done<T>>) {
        let (jobs, queue) = mpsc::channel();
        let (results, done) = mpsc::channel();
        let workers = Workers {
            jobs,
            queue: Arc::new(Mutex::new(queue)),
            results,
            waker,
            idle: Arc::new(AtomicUsize::new(0)),
            queued: Arc::new(AtomicUsize::new(0)),
            spawned: 0,
            #[cfg(test)]
            refuse_threads: false,
        };
        (workers, done)
    }

    /// Queues a handshake, starting a worker if none is free and the pool may grow.
    pub fn submit(&mut self, job: Job<T>) {
        let queued = self.queued.fetch_add(1, Ordering::SeqCst) + 1;
        if queued > self.idle.load(Ordering::SeqCst) && self.spawned < MAX_WORKERS {
            self.spawn();
        }
        // The receiver lives as long as any worker; with none spawned (thread creation failed)
        // the job is lost with its client socket, and the loop logs nothing: see spawn.
        let _ = self.jobs.send(job);
    }

    /// Worker threads started so far.
    pub fn spawned(&self) -> usize {
        self.spawned
    }

    fn spawn(&mut self) {
        #[cfg(test)]
        if self.refuse_threads {
            return;
        }
        let (queue, results, waker) =
            (self.queue.clone(), self.results.clone(), self.waker.clone());
        let (idle, queued) = (self.idle.clone(), self.queued.clone());
        let started = std::thread::Builder::new()
            .name("gimlet-handshake".into())
            .spawn(move || {
                loop {
                    idle.fetch_add(1, Ordering::SeqCst);
                    let job = queue.lock().map(|q| q.recv());
                    idle.fetch_sub(1, Ordering::SeqCst);
                    let Ok(Ok(job)) = job else { return };
                    queued.fetch_sub(1, Ordering::SeqCst);
                    let result = (job.work)();
                    if results.send(Done { id: job.id, result }).is_err() {
                        return;
                    }
                    let _ = waker.wake();
                }
            });
        if started.is_ok() {
            self.spawned += 1;
        }
    }
}
