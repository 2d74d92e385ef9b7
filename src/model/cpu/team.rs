//! Stages of tasks run by whichever threads take part, meeting between stages by spinning.
//!
//! A forward pass is a chain of stages (the embedding, then one per transformer block), each
//! cut into one task per thread, and every task of a stage reads what the previous stage
//! wrote. Running each stage as its own rayon parallel iterator costs a wake-up per stage: the
//! thread that finished first goes to sleep while it waits for the other (about 90 µs per
//! block at batch 1 on this project's VM), and waking it again took 50-80 µs a block, 4-5% of
//! the batch-1 forward pass (measured with timers around each stage, `wall - slowest task`).
//!
//! Here the threads stay in the pass from the first stage to the last, waiting for each
//! other with a short spin. Nothing waits for a thread that has not shown up: every task is
//! claimed with a compare-exchange by the first thread to reach it (each thread tries its own
//! task first, so a row chunk usually stays on one core), and a thread only waits for tasks
//! that another thread has claimed and is running. When rayon's other threads are busy (other
//! forward passes at the same time), the calling thread runs every task itself.

use std::marker::PhantomData;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A mutable slice that the tasks of [`run_stages`] share, each taking a range of it that no
/// other task running at the same time touches.
pub(crate) struct Shared<'a, T> {
    ptr: *mut T,
    len: usize,
    _borrow: PhantomData<&'a mut [T]>,
}

// SAFETY: a `Shared` only hands out its elements through the `unsafe` methods below, whose
// callers promise that no two threads hold overlapping ranges while one of them writes, which
// is what `&mut [T]` being `Send` needs.
unsafe impl<T: Send> Sync for Shared<'_, T> {}

impl<'a, T> Shared<'a, T> {
    /// Shares `s` for as long as it is borrowed.
    pub(crate) fn new(s: &'a mut [T]) -> Self {
        Shared {
            ptr: s.as_mut_ptr(),
            len: s.len(),
            _borrow: PhantomData,
        }
    }

    /// Elements `r` for writing.
    ///
    /// # Safety
    /// No other reference into `r` may be live while the returned one is.
    ///
    /// # Panics
    /// If `r` is not inside the slice.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn range_mut(&self, r: Range<usize>) -> &mut [T] {
        assert!(r.start <= r.end && r.end <= self.len, "Shared::range_mut");
        // SAFETY: inside the borrowed slice (asserted); exclusive by the caller's promise.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(r.start), r.end - r.start) }
    }

    /// The whole slice for reading.
    ///
    /// # Safety
    /// No mutable reference into the slice may be live while the returned one is.
    pub(crate) unsafe fn all(&self) -> &[T] {
        // SAFETY: the borrowed slice; nobody writes it meanwhile, by the caller's promise.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// Runs `task(stage, t)` once for every stage `0..stages` and task `0..tasks`, with every
/// task of a stage finished before any task of the next one starts, on up to `tasks` threads
/// of rayon's current pool (the calling thread included). `end_of_stage(stage)` runs once per
/// stage on the thread that finished its last task, before the next stage starts.
pub(crate) fn run_stages<T, E>(stages: usize, tasks: usize, task: T, end_of_stage: E)
where
    T: Fn(usize, usize) + Sync,
    E: Fn(usize) + Sync,
{
    if stages == 0 || tasks == 0 {
        return;
    }
    let team = Team {
        stages,
        tasks,
        claimed: (0..tasks).map(|_| AtomicUsize::new(0)).collect(),
        done: AtomicUsize::new(0),
        released: AtomicUsize::new(1),
    };
    let work = |me: usize| team.work(me, &task, &end_of_stage);
    if tasks == 1 {
        work(0);
        return;
    }
    rayon::scope(|s| {
        for me in 1..tasks {
            let work = &work;
            s.spawn(move |_| work(me));
        }
        work(0);
    });
}

/// The progress of one [`run_stages`] call.
struct Team {
    stages: usize,
    tasks: usize,
    /// Task `t` of stage `s` is claimed when `claimed[t]` goes from `s` to `s + 1`.
    claimed: Vec<AtomicUsize>,
    /// Tasks finished, all stages together.
    done: AtomicUsize,
    /// Stages whose tasks may start: `0..released`.
    released: AtomicUsize,
}

impl Team {
    /// One thread's part: every stage in order, running whichever of its tasks nobody has
    /// claimed yet, its own (`me`) first.
    fn work<T, E>(&self, me: usize, task: &T, end_of_stage: &E)
    where
        T: Fn(usize, usize),
        E: Fn(usize),
    {
        for stage in 0..self.stages {
            // Acquire: the previous stage's writes (and `end_of_stage`) are visible.
            wait_until(|| self.released.load(Ordering::Acquire) > stage);
            for i in 0..self.tasks {
                let t = (me + i) % self.tasks;
                if self.claimed[t]
                    .compare_exchange(stage, stage + 1, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err()
                {
                    continue;
                }
                task(stage, t);
                // AcqRel: this task's writes are released, and the thread that finishes the
                // stage acquires every other task's through the chain of additions.
                let finished = self.done.fetch_add(1, Ordering::AcqRel) + 1;
                if finished == (stage + 1) * self.tasks {
                    end_of_stage(stage);
                    self.released.store(stage + 2, Ordering::Release);
                }
            }
        }
    }
}

/// Spins until `ready()`, for about a millisecond (the longest a thread waits for the other
/// at the end of a stage), then yields the core between checks.
fn wait_until(ready: impl Fn() -> bool) {
    let mut spins = 0u32;
    while !ready() {
        if spins < 1 << 13 {
            std::hint::spin_loop();
            spins += 1;
        } else {
            std::thread::yield_now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::run_stages;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    /// Every task runs exactly once, every stage's tasks all end before the next stage's
    /// start, and `end_of_stage` runs once per stage between them: checked with a log of
    /// events, on pools of 1, 2 and 4 threads (1: the caller runs every task alone).
    #[test]
    fn stages_run_in_order_and_every_task_once() {
        for threads in [1, 2, 4] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("a thread pool");
            let (stages, tasks) = (7, 3);
            let log = Mutex::new(Vec::new());
            let running = AtomicUsize::new(0);
            pool.install(|| {
                run_stages(
                    stages,
                    tasks,
                    |s, t| {
                        running.fetch_add(1, Ordering::SeqCst);
                        log.lock().unwrap().push((s, Some(t)));
                        std::thread::sleep(std::time::Duration::from_micros(200 * t as u64));
                        running.fetch_sub(1, Ordering::SeqCst);
                    },
                    |s| {
                        assert_eq!(running.load(Ordering::SeqCst), 0, "a task still running");
                        log.lock().unwrap().push((s, None));
                    },
                )
            });
            let log = log.into_inner().unwrap();
            assert_eq!(
                log.len(),
                stages * (tasks + 1),
                "{threads} threads: {log:?}"
            );
            for (s, events) in log.chunks(tasks + 1).enumerate() {
                let mut seen: Vec<usize> = events[..tasks]
                    .iter()
                    .map(|&(es, t)| {
                        assert_eq!(es, s, "{threads} threads: {log:?}");
                        t.expect("a task before the end of its stage")
                    })
                    .collect();
                seen.sort_unstable();
                assert_eq!(seen, (0..tasks).collect::<Vec<_>>(), "{threads} threads");
                assert_eq!(events[tasks], (s, None), "{threads} threads: {log:?}");
            }
        }
    }

    /// A forward pass started while every other thread of the pool is busy (here: blocked
    /// until the pass is over) still finishes, on the calling thread alone.
    #[test]
    fn a_pass_does_not_wait_for_busy_threads() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .expect("a thread pool");
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let rx = Mutex::new(rx);
        let count = AtomicUsize::new(0);
        pool.in_place_scope(|s| {
            // Occupies one pool thread until the pass below has finished.
            s.spawn(|_| {
                let _ = rx.lock().unwrap().recv();
            });
            s.spawn(|_| {
                run_stages(
                    5,
                    2,
                    |_, _| {
                        count.fetch_add(1, Ordering::SeqCst);
                    },
                    |_| {},
                );
                tx.send(()).unwrap();
            });
        });
        assert_eq!(count.load(Ordering::SeqCst), 10);
    }
}
