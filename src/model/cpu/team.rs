//! Stages of tasks run by whichever threads take part, meeting between stages with a short
//! spin, then parking.
//!
//! A forward pass is a chain of stages (the embedding, then one per transformer block), each
//! cut into one task per thread, and every task of a stage reads what the previous stage
//! wrote. Running each stage as its own rayon parallel iterator costs a wake-up per stage: the
//! thread that finished first goes to sleep while it waits for the other (about 90 µs per
//! block at batch 1 on this project's VM), and waking it again took 50-80 µs a block, 4-5% of
//! the batch-1 forward pass (measured with timers around each stage, `wall - slowest task`).
//!
//! Here the threads stay in the pass from the first stage to the last, waiting for each
//! other with a short spin (about as long as the longest wait at the end of a stage when the
//! threads are not shared), after which they park on a condition variable, so a thread that
//! waits for a slow or descheduled partner gives its core away.
//!
//! Who takes part: the calling thread, and each pool thread that is free while the pass runs.
//! The helpers are `rayon::spawn` jobs in the current pool (the caller's
//! [`rayon::ThreadPool`], or rayon's global one): a thread that is busy with another forward
//! pass never joins, and a helper that starts after the pass has ended leaves at once. So the
//! team is as large as the threads actually free. Nothing waits for a thread that has not
//! shown up: every task is claimed with a compare-exchange by the first thread to reach it
//! (each thread tries its own task first, so a row chunk usually stays on one core), and a
//! thread only waits for tasks that another thread has claimed and is running. When every
//! other thread is busy, the calling thread runs every task itself. The caller never runs
//! other jobs while it waits (unlike a thread waiting at the end of a `rayon::scope`, which
//! may pick up another request's work and return late).
//!
//! A panic in a task (or in `end_of_stage`) aborts the pass: the other threads stop at their
//! next task or wake from their wait, and [`run_stages`] returns the panic as an error once
//! every thread has left.

use std::any::Any;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut, Range};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

/// A mutable slice that the tasks of [`run_stages`] share, each taking a range of it that no
/// other task running at the same time touches.
///
/// In debug builds it records every range handed out until its guard drops, and asserts what
/// the callers' `SAFETY` comments promise: no range is written while another overlapping
/// range is live.
pub(crate) struct Shared<'a, T> {
    ptr: *mut T,
    len: usize,
    /// The live borrows: `(id, range, written)`.
    #[cfg(debug_assertions)]
    live: Mutex<Vec<(usize, Range<usize>, bool)>>,
    #[cfg(debug_assertions)]
    next_id: AtomicUsize,
    _borrow: PhantomData<&'a mut [T]>,
}

// SAFETY: a `Shared` only hands out its elements through the `unsafe` methods below, whose
// callers promise that no two threads hold overlapping ranges while one of them writes.
// `range_mut` gives a thread `&mut [T]` (what `&mut [T]: Send` needs, `T: Send`), and `all`
// gives several threads `&[T]` at once (what `&[T]: Send` needs, `T: Sync`).
unsafe impl<T: Send + Sync> Sync for Shared<'_, T> {}

impl<'a, T> Shared<'a, T> {
    /// Shares `s` for as long as it is borrowed.
    pub(crate) fn new(s: &'a mut [T]) -> Self {
        Shared {
            ptr: s.as_mut_ptr(),
            len: s.len(),
            #[cfg(debug_assertions)]
            live: Mutex::new(Vec::new()),
            #[cfg(debug_assertions)]
            next_id: AtomicUsize::new(0),
            _borrow: PhantomData,
        }
    }

    /// Elements `r` for writing, until the guard drops.
    ///
    /// # Safety
    /// No other reference into `r` may be live while the returned one is.
    ///
    /// # Panics
    /// If `r` is not inside the slice; in debug builds, if another live borrow overlaps `r`.
    pub(crate) unsafe fn range_mut(&self, r: Range<usize>) -> SharedMut<'_, T> {
        assert!(r.start <= r.end && r.end <= self.len, "Shared::range_mut");
        #[cfg(debug_assertions)]
        let id = self.register(r.clone(), true);
        SharedMut {
            // SAFETY: inside the borrowed slice (asserted); exclusive by the caller's promise
            // (checked in debug builds by `register`).
            slice: unsafe { std::slice::from_raw_parts_mut(self.ptr.add(r.start), r.len()) },
            #[cfg(debug_assertions)]
            release: Release {
                live: &self.live,
                id,
            },
        }
    }

    /// The whole slice for reading, until the guard drops.
    ///
    /// # Safety
    /// No mutable reference into the slice may be live while the returned one is.
    ///
    /// # Panics
    /// In debug builds, if a range of the slice is borrowed for writing.
    pub(crate) unsafe fn all(&self) -> SharedRef<'_, T> {
        #[cfg(debug_assertions)]
        let id = self.register(0..self.len, false);
        SharedRef {
            // SAFETY: the borrowed slice; nobody writes it meanwhile, by the caller's promise
            // (checked in debug builds by `register`).
            slice: unsafe { std::slice::from_raw_parts(self.ptr, self.len) },
            #[cfg(debug_assertions)]
            release: Release {
                live: &self.live,
                id,
            },
        }
    }

    /// Records a borrow of `r`, asserting that it conflicts with no live one.
    #[cfg(debug_assertions)]
    fn register(&self, r: Range<usize>, write: bool) -> usize {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, other, _)) = live
            .iter()
            .find(|(_, o, w)| (write || *w) && o.start < r.end && r.start < o.end)
        {
            let other = other.clone();
            drop(live);
            panic!(
                "Shared: {} borrow of {r:?} overlaps a live borrow of {other:?} being written",
                if write { "a mutable" } else { "a shared" }
            );
        }
        live.push((id, r, write));
        id
    }
}

/// Removes a borrow from its [`Shared`]'s record when dropped (debug builds).
#[cfg(debug_assertions)]
struct Release<'s> {
    live: &'s Mutex<Vec<(usize, Range<usize>, bool)>>,
    id: usize,
}

#[cfg(debug_assertions)]
impl Drop for Release<'_> {
    fn drop(&mut self) {
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        live.retain(|(id, _, _)| *id != self.id);
    }
}

/// A range of a [`Shared`] slice borrowed for writing.
pub(crate) struct SharedMut<'s, T> {
    slice: &'s mut [T],
    #[cfg(debug_assertions)]
    #[allow(dead_code)] // held for its `Drop`
    release: Release<'s>,
}

impl<T> Deref for SharedMut<'_, T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.slice
    }
}

impl<T> DerefMut for SharedMut<'_, T> {
    fn deref_mut(&mut self) -> &mut [T] {
        self.slice
    }
}

/// A [`Shared`] slice borrowed for reading.
pub(crate) struct SharedRef<'s, T> {
    slice: &'s [T],
    #[cfg(debug_assertions)]
    #[allow(dead_code)] // held for its `Drop`
    release: Release<'s>,
}

impl<T> Deref for SharedRef<'_, T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.slice
    }
}

/// A panic that ended a pass of [`run_stages`]: the first one, with its payload.
pub(crate) struct TaskPanic(Box<dyn Any + Send>);

impl TaskPanic {
    /// The panic's message, when it has a string one.
    pub(crate) fn message(&self) -> String {
        if let Some(s) = self.0.downcast_ref::<&str>() {
            (*s).to_string()
        } else if let Some(s) = self.0.downcast_ref::<String>() {
            s.clone()
        } else {
            "a panic without a message".to_string()
        }
    }
}

impl std::fmt::Debug for TaskPanic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TaskPanic({:?})", self.message())
    }
}

/// Runs `task(stage, t)` once for every stage `0..stages` and task `0..tasks`, with every
/// task of a stage finished before any task of the next one starts, on the calling thread and
/// up to `tasks - 1` free threads of rayon's current pool. `end_of_stage(stage)` runs once per
/// stage on the thread that finished its last task, before the next stage starts.
///
/// `inject_panic`, a test hook, makes task `t` of stage `s` panic instead of running.
///
/// Returns once every thread that took part has left the pass. A panic in `task` or
/// `end_of_stage` stops the pass (the stages after it do not run) and is returned.
pub(crate) fn run_stages<T, E>(
    stages: usize,
    tasks: usize,
    inject_panic: Option<(usize, usize)>,
    task: T,
    end_of_stage: E,
) -> Result<(), TaskPanic>
where
    T: Fn(usize, usize) + Sync,
    E: Fn(usize) + Sync,
{
    if stages == 0 || tasks == 0 {
        return Ok(());
    }
    let team = Arc::new(Team::new(stages, tasks, inject_panic));
    let work = |me: usize| team.work(me, &task, &end_of_stage);
    if tasks > 1 {
        // Dropped at the end of this block (or while unwinding): waits until no helper is
        // inside the pass any more, since they call `work`, which lives in this frame.
        let _close = Close(&team);
        let dyn_work: &(dyn Fn(usize) + Sync) = &work;
        // SAFETY: only the trait object's lifetime bound changes (same pointer, same
        // metadata); `Helper::run` dereferences it only while `_close` keeps `work` alive.
        let erased = unsafe {
            std::mem::transmute::<
                *const (dyn Fn(usize) + Sync + '_),
                *const (dyn Fn(usize) + Sync + 'static),
            >(dyn_work)
        };
        for me in 1..tasks {
            let helper = Helper {
                team: Arc::clone(&team),
                work: erased,
                me,
            };
            rayon::spawn(move || helper.run());
        }
        work(0);
    } else {
        work(0);
    }
    let panic = team
        .panic
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    match panic {
        Some(p) => Err(TaskPanic(p)),
        None => {
            debug_assert_eq!(
                team.done.load(Ordering::SeqCst),
                stages * tasks,
                "every task ran"
            );
            Ok(())
        }
    }
}

/// Spins while waiting for this many checks (a few hundred microseconds), then parks.
const SPINS: u32 = 1 << 13;

/// The progress of one [`run_stages`] call, shared with its helpers.
struct Team {
    stages: usize,
    tasks: usize,
    inject_panic: Option<(usize, usize)>,
    /// Task `t` of stage `s` is claimed when `claimed[t]` goes from `s` to `s + 1`.
    claimed: Vec<AtomicUsize>,
    /// Tasks finished, all stages together.
    done: AtomicUsize,
    /// Stages whose tasks may start: `0..released`.
    released: AtomicUsize,
    /// A task panicked: every thread leaves.
    aborted: AtomicBool,
    /// The first panic's payload.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
    /// Helpers inside the pass.
    inside: AtomicUsize,
    /// The caller has left: helpers arriving now must not enter.
    closed: AtomicBool,
    /// Threads parked on `wake` (or about to).
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

impl Team {
    fn new(stages: usize, tasks: usize, inject_panic: Option<(usize, usize)>) -> Self {
        Team {
            stages,
            tasks,
            inject_panic,
            claimed: (0..tasks).map(|_| AtomicUsize::new(0)).collect(),
            done: AtomicUsize::new(0),
            released: AtomicUsize::new(1),
            aborted: AtomicBool::new(false),
            panic: Mutex::new(None),
            inside: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        }
    }

    /// One thread's part ([`Self::stages`]), with a panic recorded instead of unwinding.
    fn work<T, E>(&self, me: usize, task: &T, end_of_stage: &E)
    where
        T: Fn(usize, usize),
        E: Fn(usize),
    {
        let run = catch_unwind(AssertUnwindSafe(|| self.stages(me, task, end_of_stage)));
        if let Err(payload) = run {
            let mut slot = self.panic.lock().unwrap_or_else(PoisonError::into_inner);
            if slot.is_none() {
                *slot = Some(payload);
            } else {
                // A later panic's payload is not needed; dropping it could panic again.
                std::mem::forget(payload);
            }
            drop(slot);
            self.aborted.store(true, Ordering::SeqCst);
            self.notify();
        }
    }

    /// Every stage in order, running whichever of its tasks nobody has claimed yet, its own
    /// (`me`) first; returns early when the pass is aborted.
    fn stages<T, E>(&self, me: usize, task: &T, end_of_stage: &E)
    where
        T: Fn(usize, usize),
        E: Fn(usize),
    {
        for stage in 0..self.stages {
            // SeqCst (acquiring): the previous stage's writes (and `end_of_stage`) are visible.
            self.wait_for(|| {
                self.released.load(Ordering::SeqCst) > stage || self.aborted.load(Ordering::SeqCst)
            });
            for i in 0..self.tasks {
                if self.aborted.load(Ordering::Relaxed) {
                    return;
                }
                let t = (me + i) % self.tasks;
                if self.claimed[t]
                    .compare_exchange(stage, stage + 1, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err()
                {
                    continue;
                }
                if self.inject_panic == Some((stage, t)) {
                    panic!("a panic injected into task {t} of stage {stage} (test hook)");
                }
                task(stage, t);
                // AcqRel: this task's writes are released, and the thread that finishes the
                // stage acquires every other task's through the chain of additions.
                let finished = self.done.fetch_add(1, Ordering::AcqRel) + 1;
                if finished == (stage + 1) * self.tasks {
                    end_of_stage(stage);
                    self.released.store(stage + 2, Ordering::SeqCst);
                    self.notify();
                }
            }
        }
    }

    /// Spins until `ready()` for [`SPINS`] checks, then parks until it holds. `ready` must
    /// read with `SeqCst` what the thread making it true stores with `SeqCst` before calling
    /// [`Self::notify`].
    fn wait_for(&self, ready: impl Fn() -> bool) {
        for _ in 0..SPINS {
            if ready() {
                return;
            }
            std::hint::spin_loop();
        }
        let mut guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        // SeqCst with the loads in `ready` and the store-then-load in `notify`: either the
        // notifier sees this sleeper, or this thread sees the notifier's store.
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        while !ready() {
            guard = self
                .wake
                .wait(guard)
                .unwrap_or_else(PoisonError::into_inner);
        }
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
    }

    /// Wakes the parked threads, if any, after a `SeqCst` store that may make them ready.
    fn notify(&self) {
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            // Taking the lock orders this wake-up after a sleeper's last check of `ready`.
            drop(self.lock.lock().unwrap_or_else(PoisonError::into_inner));
            self.wake.notify_all();
        }
    }

    /// A helper arrives: false when the pass is over (the caller has closed it).
    fn enter(&self) -> bool {
        // SeqCst with `Close::drop`'s store-then-load: either the caller sees this helper
        // inside and waits for it, or this helper sees the pass closed.
        self.inside.fetch_add(1, Ordering::SeqCst);
        if self.closed.load(Ordering::SeqCst) {
            self.leave();
            return false;
        }
        true
    }

    /// A helper leaves.
    fn leave(&self) {
        if self.inside.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.notify();
        }
    }
}

/// Closes a pass when dropped: no helper enters after, and the drop returns once every helper
/// inside has left.
struct Close<'t>(&'t Team);

impl Drop for Close<'_> {
    fn drop(&mut self) {
        let team = self.0;
        team.closed.store(true, Ordering::SeqCst);
        team.wait_for(|| team.inside.load(Ordering::SeqCst) == 0);
    }
}

/// A pool job that takes part in a pass if it starts before the pass is over.
struct Helper {
    team: Arc<Team>,
    /// The caller's `work` closure, valid while the pass is open (see [`run_stages`]).
    work: *const (dyn Fn(usize) + Sync),
    me: usize,
}

// SAFETY: `work` points to a `Sync` closure, which any thread may call through a shared
// reference; it is only dereferenced while the pass keeps it alive (`Helper::run`).
unsafe impl Send for Helper {}

impl Helper {
    fn run(self) {
        if !self.team.enter() {
            return;
        }
        // SAFETY: this helper entered before the pass was closed, and the caller's `Close`
        // does not let `run_stages` return (and drop the closure) until it has left.
        let work = unsafe { &*self.work };
        // Never unwinds: `Team::work` catches panics.
        work(self.me);
        self.team.leave();
    }
}

#[cfg(test)]
mod tests {
    use super::{run_stages, Shared};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    use std::time::Duration;

    /// Thread counts to test on: fewer under Miri, where threads are slow to simulate.
    const POOLS: &[usize] = if cfg!(miri) { &[1, 2] } else { &[1, 2, 4] };

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("a thread pool")
    }

    /// Every task runs exactly once, every stage's tasks all end before the next stage's
    /// start, and `end_of_stage` runs once per stage between them: checked with a log of
    /// events, on pools of 1, 2 and 4 threads (1: the caller runs every task alone).
    #[test]
    fn stages_run_in_order_and_every_task_once() {
        for &threads in POOLS {
            let pool = pool(threads);
            let (stages, tasks) = if cfg!(miri) { (3, 3) } else { (7, 3) };
            let log = Mutex::new(Vec::new());
            let running = AtomicUsize::new(0);
            pool.install(|| {
                run_stages(
                    stages,
                    tasks,
                    None,
                    |s, t| {
                        running.fetch_add(1, Ordering::SeqCst);
                        log.lock().unwrap().push((s, Some(t)));
                        std::thread::sleep(Duration::from_micros(200 * t as u64));
                        running.fetch_sub(1, Ordering::SeqCst);
                    },
                    |s| {
                        assert_eq!(running.load(Ordering::SeqCst), 0, "a task still running");
                        log.lock().unwrap().push((s, None));
                    },
                )
            })
            .expect("no panic");
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
    /// until the pass is over) still finishes, on the calling thread alone; the helper job it
    /// left in the pool runs after the pass is over and leaves without touching it.
    #[test]
    fn a_pass_does_not_wait_for_busy_threads() {
        let pool = pool(2);
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
                    None,
                    |_, _| {
                        count.fetch_add(1, Ordering::SeqCst);
                    },
                    |_| {},
                )
                .expect("no panic");
                tx.send(()).unwrap();
            });
        });
        assert_eq!(count.load(Ordering::SeqCst), 10);
        // The stale helper job, if still queued, runs now and must find the pass closed.
        pool.install(|| {});
    }

    /// A waiting thread parks (its partner's task takes longer than the spin) and is woken by
    /// the end of the stage.
    #[test]
    fn a_thread_parks_and_wakes() {
        let pool = pool(2);
        let count = AtomicUsize::new(0);
        pool.install(|| {
            run_stages(
                3,
                2,
                None,
                |_, t| {
                    if t == 1 {
                        std::thread::sleep(Duration::from_millis(if cfg!(miri) { 1 } else { 20 }));
                    }
                    count.fetch_add(1, Ordering::SeqCst);
                },
                |_| {},
            )
        })
        .expect("no panic");
        assert_eq!(count.load(Ordering::SeqCst), 6);
    }

    /// A panic in any task, or in `end_of_stage`, comes back as an error with its message
    /// once every thread has left; the stages after it do not run, and the next pass on the
    /// same pool runs normally.
    #[test]
    fn a_panic_ends_the_pass_and_releases_every_thread() {
        for &threads in POOLS {
            let pool = pool(threads);
            let tasks = 3;
            let spots: Vec<(usize, usize)> = if cfg!(miri) {
                vec![(1, 0), (1, 2)]
            } else {
                (0..3)
                    .flat_map(|s| (0..tasks).map(move |t| (s, t)))
                    .collect()
            };
            for (stage, task) in spots {
                let after = AtomicUsize::new(0);
                let err = pool
                    .install(|| {
                        run_stages(
                            3,
                            tasks,
                            Some((stage, task)),
                            |s, _| {
                                if s > stage {
                                    after.fetch_add(1, Ordering::SeqCst);
                                }
                                std::thread::sleep(Duration::from_micros(100));
                            },
                            |_| {},
                        )
                    })
                    .expect_err("the injected panic");
                assert!(
                    err.message()
                        .contains(&format!("task {task} of stage {stage}")),
                    "{threads} threads: {err:?}"
                );
                assert_eq!(after.load(Ordering::SeqCst), 0, "a later stage ran");
                let count = AtomicUsize::new(0);
                pool.install(|| {
                    run_stages(
                        3,
                        tasks,
                        None,
                        |_, _| {
                            count.fetch_add(1, Ordering::SeqCst);
                        },
                        |_| {},
                    )
                })
                .expect("the next pass");
                assert_eq!(count.load(Ordering::SeqCst), 3 * tasks, "{threads} threads");
            }
            let err = pool
                .install(|| {
                    run_stages(
                        4,
                        2,
                        None,
                        |_, _| {},
                        |s| {
                            if s == 1 {
                                panic!("end of stage {s}");
                            }
                        },
                    )
                })
                .expect_err("the panic in end_of_stage");
            assert_eq!(err.message(), "end of stage 1");
        }
    }

    /// Tasks writing disjoint ranges of a [`Shared`] slice from several threads, then reading
    /// all of it in the next stage, see each other's writes.
    #[test]
    fn shared_ranges_are_written_and_read_across_threads() {
        let pool = pool(2);
        let mut data = vec![0u64; 64];
        let tasks = 4;
        {
            let shared = Shared::new(&mut data);
            let sums = Mutex::new(Vec::new());
            pool.install(|| {
                run_stages(
                    2,
                    tasks,
                    None,
                    |stage, t| {
                        let r = t * 16..(t + 1) * 16;
                        if stage == 0 {
                            // SAFETY: each task writes its own 16 elements.
                            let mut mine = unsafe { shared.range_mut(r.clone()) };
                            for (i, v) in mine.iter_mut().enumerate() {
                                *v = (r.start + i) as u64;
                            }
                        } else {
                            // SAFETY: nothing writes in stage 1.
                            let all = unsafe { shared.all() };
                            sums.lock().unwrap().push(all.iter().sum::<u64>());
                        }
                    },
                    |_| {},
                )
            })
            .expect("no panic");
            assert_eq!(sums.into_inner().unwrap(), vec![2016; tasks]);
        }
        assert_eq!(data, (0..64).collect::<Vec<u64>>());
    }

    /// In debug builds, overlapping borrows of a [`Shared`] slice (what the callers' `SAFETY`
    /// comments rule out) are caught: a write overlapping a live write or read panics, and
    /// disjoint writes or several reads do not.
    #[test]
    #[cfg(debug_assertions)]
    fn overlapping_shared_borrows_are_caught_in_debug_builds() {
        let mut data = vec![0f32; 10];
        let shared = Shared::new(&mut data);
        // SAFETY (every call below): single-threaded, and the overlapping borrows are caught
        // by the debug check before a second reference into the same elements is made.
        let a = unsafe { shared.range_mut(0..5) };
        let b = unsafe { shared.range_mut(5..10) };
        let overlap = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| unsafe {
            let _ = shared.range_mut(4..6);
        }));
        assert!(overlap.is_err(), "a write overlapping two live writes");
        let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| unsafe {
            let _ = shared.all();
        }));
        assert!(read.is_err(), "a read while writes are live");
        drop((a, b));
        let r1 = unsafe { shared.all() };
        let r2 = unsafe { shared.all() };
        let write = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| unsafe {
            let _ = shared.range_mut(0..1);
        }));
        assert!(write.is_err(), "a write while reads are live");
        assert_eq!(r1.len() + r2.len(), 20);
        drop((r1, r2));
        let mut again = unsafe { shared.range_mut(0..10) };
        again[9] = 1.0;
    }
}
