//! The bounded job queue of one worker.

use std::collections::VecDeque;
use std::sync::Mutex;

use pixpool_store::JobId;
use tokio::sync::Notify;

/// A job waiting for the executor.
#[derive(Debug, Clone)]
pub struct Job {
    /// The job.
    pub id: JobId,
    /// The slot whose claim directory holds this job's claim (this worker's,
    /// or a retired slot's adopted at start-up).
    pub owner: u32,
    /// Presets from the submit; `None` for a recovered job (read from its record).
    pub presets: Option<Vec<String>>,
    /// Server-side failures of this job in this process so far: they space its retries
    /// and bound them ([`crate::execute::MAX_RETRIES`]). In memory only: a full disk may
    /// not let the record count them.
    pub retries: u32,
}

impl Job {
    /// This job once worker `slot` has taken it: its claim is then in `slot`'s directory.
    pub fn taken_by(&self, slot: u32) -> Job {
        Job {
            owner: slot,
            ..self.clone()
        }
    }
}

/// FIFO with admission control: new jobs need a reservation (bounded), jobs
/// recovered at start-up do not (they were already accepted once).
#[derive(Debug)]
pub struct JobQueue {
    /// Maximum of queued plus reserved new jobs.
    capacity: usize,
    /// The queue and the count of reservations not yet pushed.
    inner: Mutex<(VecDeque<Job>, usize)>,
    /// Wakes the executor.
    ready: Notify,
}

/// The queue is at capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

impl JobQueue {
    /// An empty queue admitting at most `capacity` new jobs at a time.
    pub fn new(capacity: usize) -> JobQueue {
        JobQueue {
            capacity,
            inner: Mutex::new((VecDeque::new(), 0)),
            ready: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (VecDeque<Job>, usize)> {
        // A panic while holding this lock cannot leave the queue inconsistent
        // (each critical section is one push/pop/counter update), so poisoning
        // is ignored.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves room for one new job, before it is claimed on disk.
    pub fn reserve(&self) -> Result<(), Full> {
        let mut g = self.lock();
        if g.0.len() + g.1 >= self.capacity {
            return Err(Full);
        }
        g.1 += 1;
        Ok(())
    }

    /// Gives back a reservation that will not be used.
    pub fn cancel(&self) {
        let mut g = self.lock();
        g.1 = g.1.saturating_sub(1);
    }

    /// Turns a reservation into a queued job; returns the queue depth.
    pub fn push_reserved(&self, job: Job) -> usize {
        let depth = {
            let mut g = self.lock();
            g.1 = g.1.saturating_sub(1);
            g.0.push_back(job);
            g.0.len()
        };
        self.ready.notify_one();
        depth
    }

    /// Queues a job recovered from disk, beyond the bound.
    pub fn push_recovered(&self, job: Job) {
        self.lock().0.push_back(job);
        self.ready.notify_one();
    }

    /// Jobs waiting (not counting the one running).
    pub fn len(&self) -> usize {
        self.lock().0.len()
    }

    /// Whether no job waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes the next job, if any.
    pub fn try_pop(&self) -> Option<Job> {
        self.lock().0.pop_front()
    }

    /// Waits until a job may be available (or [`JobQueue::wake_all`] is called).
    pub async fn wait(&self) {
        self.ready.notified().await
    }

    /// Wakes a waiting executor so it can notice shutdown.
    pub fn wake_all(&self) {
        self.ready.notify_waiters();
        self.ready.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Job {
        Job {
            id: JobId::generate(),
            owner: 0,
            presets: None,
            retries: 0,
        }
    }

    #[test]
    fn reservations_count_against_the_bound_and_recovered_jobs_do_not() {
        let q = JobQueue::new(2);
        q.reserve().expect("first");
        q.reserve().expect("second");
        assert_eq!(q.reserve(), Err(Full));
        q.cancel();
        assert_eq!(q.push_reserved(job()), 1);
        q.push_recovered(job());
        q.push_recovered(job());
        assert_eq!(q.len(), 3);
        assert_eq!(q.reserve(), Err(Full));
        let first = q.try_pop().expect("fifo");
        assert_eq!(first.owner, 0);
        assert_eq!(q.len(), 2);
    }
}
