//! The parent's side of one worker: a thread that feeds it jobs from the shared queue, delivers
//! its results, and replaces it when it dies.
//!
//! A driver has at most one job at its worker at a time, so the queue's jobs always go to a
//! worker that is idle, and when a worker dies the job it was running is known: the one the
//! driver sent last. The driver owns its worker process: it forks it, is the only one to reap
//! it, and lives until it has (see `spawn` for why the forking thread must live that long).

use std::mem;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Receiver;

use crate::job::Job;
use crate::shared::Shared;
use crate::spawn::{self, WorkerProcess};
use crate::Error;

/// How long a worker that closed its socket, or was asked to exit, gets before SIGKILL.
const EXIT_GRACE: Duration = Duration::from_secs(2);

pub(crate) struct Driver {
    index: usize,
    shared: Arc<Shared>,
    queue: Receiver<Job>,
    worker: Option<WorkerProcess>,
}

impl Driver {
    /// Forks the first worker.
    pub(crate) fn start(
        index: usize,
        shared: Arc<Shared>,
        queue: Receiver<Job>,
    ) -> Result<Self, Error> {
        let mut driver = Driver {
            index,
            shared,
            queue,
            worker: None,
        };
        driver.spawn()?;
        Ok(driver)
    }

    fn spawn(&mut self) -> Result<&mut WorkerProcess, Error> {
        let worker = spawn::fork_worker().map_err(Error::spawn)?;
        self.shared.set_worker(self.index, worker.pid());
        Ok(self.worker.insert(worker))
    }

    /// Reaps the current worker (which has died, or is to die), returning its pid and how it
    /// ended.
    fn bury(&mut self) -> Option<(i32, crate::ExitCause)> {
        let worker = self.worker.take()?;
        self.shared.clear_worker(self.index);
        let pid = worker.pid().as_raw();
        Some((pid, worker.reap(EXIT_GRACE)))
    }

    /// Serves jobs until the queue is closed and empty, then shuts the worker down.
    pub(crate) fn run(mut self) {
        let mut retry: Option<Job> = None;
        let mut buf = Vec::new();
        loop {
            let job = match retry.take() {
                Some(job) => job,
                None => match self.queue.recv() {
                    Ok(job) => job,
                    Err(_) => break,
                },
            };
            if self.shared.is_terminated() {
                job.complete(Err(Error::Terminated));
                continue;
            }
            let worker = match &mut self.worker {
                Some(worker) => worker,
                None => match self.spawn() {
                    Ok(worker) => worker,
                    Err(err) => {
                        job.complete(Err(err));
                        continue;
                    }
                },
            };

            if worker.channel.send(&job.frame).is_err() {
                // The worker died while idle, before it could read this job. Give the job to a
                // fresh worker, once; if that one dies too, the job is the likely cause.
                let (pid, cause) = self.bury().expect("a worker was present");
                if job.retried || self.shared.is_terminated() {
                    let err = self.died(&job, pid, cause);
                    job.complete(Err(err));
                } else {
                    let mut job = job;
                    job.retried = true;
                    retry = Some(job);
                }
                continue;
            }
            let mut job = job;
            drop(mem::take(&mut job.frame));

            match worker.channel.recv(&mut buf) {
                Ok(()) => job.complete(Ok(mem::take(&mut buf))),
                Err(_) => {
                    // End-of-file or a torn frame: the worker died running this job (or sent
                    // garbage, and is killed for it by `bury`).
                    let (pid, cause) = self.bury().expect("a worker was present");
                    let err = self.died(&job, pid, cause);
                    job.complete(Err(err));
                    if !self.shared.is_terminated() {
                        // Replace it now, so the pool is back to full strength before the next
                        // job; if forking fails, the next job tries again and reports why.
                        let _ = self.spawn();
                    }
                }
            }
        }
        self.shutdown();
    }

    fn died(&self, job: &Job, pid: i32, cause: crate::ExitCause) -> Error {
        if self.shared.is_terminated() {
            Error::Terminated
        } else {
            Error::WorkerDied {
                task: job.task.to_string(),
                pid,
                cause,
            }
        }
    }

    /// Asks the worker to exit and reaps it.
    fn shutdown(&mut self) {
        if let Some(worker) = &mut self.worker {
            let _ = worker.channel.send(crate::frame::shutdown_frame());
        }
        self.bury();
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Reached normally after `shutdown` (nothing left to do), or when the thread unwinds:
        // then the worker must not be left behind unreaped.
        if let Some(worker) = self.worker.take() {
            self.shared.clear_worker(self.index);
            worker.reap(Duration::ZERO);
        }
    }
}
