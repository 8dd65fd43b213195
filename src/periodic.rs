//! A background thread that runs a job again and again, with a wait between runs that ends at once
//! when the thread is asked to stop: the checkpointer, retention, and any other schedule `serve`
//! keeps. A job may also ask [`Stop::is_set`] between the steps of a long run, so that shutdown never
//! waits for a whole pass.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::{Error, Result};

/// The flag a [`Periodic`] thread is stopped with.
#[derive(Debug, Default)]
pub struct Stop {
    set: Mutex<bool>,
    wake: Condvar,
}

impl Stop {
    /// True once [`Periodic::stop`] has been called.
    pub fn is_set(&self) -> bool {
        *self.set.lock().expect("stop flag poisoned")
    }

    /// Waits `wait`, or less if the flag is set meanwhile; true when it is set.
    pub fn wait(&self, wait: Duration) -> bool {
        let guard = self.set.lock().expect("stop flag poisoned");
        let (guard, _) = self
            .wake
            .wait_timeout_while(guard, wait, |set| !*set)
            .expect("stop flag poisoned");
        *guard
    }

    /// Sets the flag and wakes every waiter (for work that is not run by a [`Periodic`], such as a
    /// job a running server does for a CLI command).
    pub fn set(&self) {
        *self.set.lock().expect("stop flag poisoned") = true;
        self.wake.notify_all();
    }
}

/// The running thread; stopping it (or dropping it) sets the flag and joins the thread.
pub struct Periodic {
    stop: Arc<Stop>,
    thread: Option<JoinHandle<()>>,
}

impl Periodic {
    /// A schedule that runs nothing (the feature is turned off).
    pub fn none() -> Periodic {
        Periodic {
            stop: Arc::new(Stop::default()),
            thread: None,
        }
    }

    /// Starts a thread named `name` that waits `first`, runs `job`, and then waits whatever the job
    /// returned before running it again, until stopped.
    pub fn start<F>(name: &str, first: Duration, mut job: F) -> Result<Periodic>
    where
        F: FnMut(&Stop) -> Duration + Send + 'static,
    {
        let stop = Arc::new(Stop::default());
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let mut wait = first;
                while !flag.wait(wait) {
                    wait = job(&flag);
                }
            })
            .map_err(|e| Error::io(format!("spawn {name} thread"), e))?;
        Ok(Periodic {
            stop,
            thread: Some(thread),
        })
    }

    /// Sets the stop flag and waits for the thread to end (a job under way finishes its step).
    pub fn stop(mut self) {
        self.join();
    }

    fn join(&mut self) {
        self.stop.set();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                log::error!("a background thread panicked");
            }
        }
    }
}

impl Drop for Periodic {
    fn drop(&mut self) {
        self.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    #[test]
    fn runs_until_stopped_and_stops_promptly() {
        let runs = Arc::new(AtomicUsize::new(0));
        let counted = runs.clone();
        let p = Periodic::start("test-periodic", Duration::ZERO, move |_| {
            counted.fetch_add(1, Ordering::Relaxed);
            Duration::from_millis(5)
        })
        .unwrap();
        let until = Instant::now() + Duration::from_secs(5);
        while runs.load(Ordering::Relaxed) < 3 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(
            runs.load(Ordering::Relaxed) >= 3,
            "the job runs again and again"
        );
        // A long wait is cut short by stop.
        let slow =
            Periodic::start("test-slow", Duration::from_secs(3600), |_| Duration::ZERO).unwrap();
        let started = Instant::now();
        slow.stop();
        p.stop();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "stop does not wait out the interval"
        );
    }
}
