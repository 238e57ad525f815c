//! The kernels' own thread pool: a fixed team whose workers spin between jobs.
//!
//! A decode step runs ~200 short products (0.1–0.3 ms each at batch 1) with serial work between
//! them. A pool whose idle workers sleep (rayon's, after ~50 µs) pays a wake-up per product:
//! on the 2-vCPU VMs this project is measured on, a 300 µs gap between products turned 27 ms of
//! products into 45–63 ms (`examples/products.rs` with a gap). Here a worker that finishes a job
//! spins for [`SPIN`] (yielding its core to any other runnable thread after the first
//! [`PURE_SPIN`]) before it parks, so the workers are still awake when the next product of the
//! same forward pass arrives, and a pool that goes idle costs only that much CPU.
//!
//! The team has `rayon::current_num_threads()` members (so `RAYON_NUM_THREADS` sizes both
//! pools): the thread that calls [`run`] and the workers. One job runs at a time; a call made
//! while another thread's job runs, or from inside a job, runs its tasks on the calling thread.

use std::cell::Cell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::*};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an idle worker stays awake for the next job before it parks.
const SPIN: Duration = Duration::from_millis(2);

/// For this long a waiting worker only spins; afterwards it yields between checks.
const PURE_SPIN: Duration = Duration::from_micros(100);

/// Run `task(i)` for every `i < tasks`, spread over the team (the caller takes tasks too);
/// returns when all have run. A panic in a task is raised again here.
pub fn run(tasks: usize, task: &(dyn Fn(usize) + Sync)) {
    let pool = Pool::get();
    let inline = tasks <= 1 || pool.workers == 0 || IN_JOB.get();
    let guard = if inline { None } else { pool.submit.try_lock().ok() };
    match guard {
        Some(_guard) => pool.run_job(tasks, task),
        None => (0..tasks).for_each(task),
    }
}

/// `f(i, piece)` for every `chunk`-long piece `i` of `out` (the last may be shorter). With
/// `parallel` the pieces are spread over the team in runs of consecutive pieces (a few runs per
/// thread, so a slow core does not hold the others up); otherwise they run on the calling
/// thread, for work too small to be worth waking the team.
pub fn for_each_chunk_mut<T: Send>(out: &mut [T], chunk: usize, parallel: bool, f: impl Fn(usize, &mut [T]) + Sync) {
    assert!(chunk > 0, "for_each_chunk_mut: chunk length 0");
    let pieces = out.len().div_ceil(chunk);
    let runs = if parallel { pieces.min(team_size() * 4) } else { 1 };
    let per_run = pieces.div_ceil(runs.max(1)).max(1);
    let (len, base) = (out.len(), SendPtr(out.as_mut_ptr()));
    run(pieces.div_ceil(per_run), &|r| {
        #[allow(clippy::redundant_locals)] // capture the Send wrapper whole, not its raw-pointer field
        let base = base;
        for i in r * per_run..((r + 1) * per_run).min(pieces) {
            let start = i * chunk;
            // SAFETY: pieces are disjoint ranges of `out`, each handed to exactly one task, and
            // `out` stays mutably borrowed until `run` returns.
            let piece = unsafe { std::slice::from_raw_parts_mut(base.0.add(start), chunk.min(len - start)) };
            f(i, piece);
        }
    });
}

/// Below this many output elements an element-wise kernel runs on the calling thread: waking
/// the team costs more than the work.
pub const PARALLEL_ELEMENTS: usize = 1 << 15;

/// A pointer that may cross threads; users write disjoint elements through it.
pub(crate) struct SendPtr<T>(pub(crate) *mut T);
impl<T> Clone for SendPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SendPtr<T> {}
unsafe impl<T: Send> Send for SendPtr<T> {}
unsafe impl<T: Send> Sync for SendPtr<T> {}

/// How many threads [`run`] spreads a job over (the caller and the workers).
pub fn team_size() -> usize {
    Pool::get().workers + 1
}

thread_local! {
    /// Set while this thread runs a job's tasks: a nested [`run`] then runs inline.
    static IN_JOB: Cell<bool> = const { Cell::new(false) };
}

/// The job being run: a task function whose lifetime [`Pool::run_job`] guarantees by not
/// returning before every worker is done with it.
#[derive(Clone, Copy)]
struct Job {
    task: *const (dyn Fn(usize) + Sync + 'static),
    tasks: usize,
}

struct Pool {
    workers: usize,
    /// Held by the thread whose job runs.
    submit: Mutex<()>,
    /// The current job; written only while no worker reads it (between `pending` reaching 0
    /// and the next `generation` bump).
    job: Mutex<Option<Job>>,
    /// Bumped once per job: workers wait for it to change.
    generation: AtomicUsize,
    /// The next task index to take.
    next: AtomicUsize,
    /// Workers that have not finished the current job.
    pending: AtomicUsize,
    /// A task panicked in a worker during the current job.
    panicked: AtomicBool,
    /// Workers parked on `wake`.
    parked: AtomicUsize,
    sleep: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `Job::task` points at a `Sync` closure that outlives every use (see `run_job`).
unsafe impl Send for Job {}

impl Pool {
    fn get() -> &'static Pool {
        static POOL: OnceLock<&'static Pool> = OnceLock::new();
        POOL.get_or_init(|| {
            let workers = rayon::current_num_threads().saturating_sub(1);
            let pool: &'static Pool = Box::leak(Box::new(Pool {
                workers,
                submit: Mutex::new(()),
                job: Mutex::new(None),
                generation: AtomicUsize::new(0),
                next: AtomicUsize::new(0),
                pending: AtomicUsize::new(0),
                panicked: AtomicBool::new(false),
                parked: AtomicUsize::new(0),
                sleep: Mutex::new(()),
                wake: Condvar::new(),
            }));
            for i in 0..workers {
                std::thread::Builder::new().name(format!("iapt-kernels-{}", i + 1)).spawn(move || pool.work()).expect("spawn a kernel pool thread");
            }
            pool
        })
    }

    /// Publish the job, take tasks until none are left, wait for the workers. The caller holds
    /// `submit`.
    fn run_job(&self, tasks: usize, task: &(dyn Fn(usize) + Sync)) {
        // SAFETY: the pointer is only dereferenced by workers before they decrement `pending`,
        // and this function does not return (or unwind) until `pending` is 0.
        let task_static: *const (dyn Fn(usize) + Sync + 'static) = unsafe { std::mem::transmute(task as *const (dyn Fn(usize) + Sync)) };
        *self.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(Job { task: task_static, tasks });
        self.next.store(0, SeqCst);
        self.panicked.store(false, SeqCst);
        self.pending.store(self.workers, SeqCst);
        self.generation.fetch_add(1, SeqCst);
        if self.parked.load(SeqCst) > 0 {
            let _lock = self.sleep.lock().unwrap_or_else(|e| e.into_inner());
            self.wake.notify_all();
        }
        let mine = self.take_tasks(tasks, task);
        while self.pending.load(Acquire) > 0 {
            std::hint::spin_loop();
        }
        if let Err(payload) = mine {
            resume_unwind(payload);
        }
        if self.panicked.load(SeqCst) {
            panic!("a kernel task panicked on a pool thread");
        }
    }

    /// Take tasks until none are left, with this thread marked as inside a job (and unmarked
    /// again however the tasks end).
    fn take_tasks(&self, tasks: usize, task: &(dyn Fn(usize) + Sync)) -> std::thread::Result<()> {
        IN_JOB.set(true);
        let result = catch_unwind(AssertUnwindSafe(|| loop {
            let i = self.next.fetch_add(1, AcqRel);
            if i >= tasks {
                break;
            }
            task(i);
        }));
        IN_JOB.set(false);
        result
    }

    fn work(&self) {
        // Generation 0 means no job yet: workers are spawned before `get` returns, so before
        // any job, but one may be published before this thread first looks.
        let mut seen = 0;
        loop {
            self.wait_for_job(seen);
            seen = self.generation.load(SeqCst);
            let job = self.job.lock().unwrap_or_else(|e| e.into_inner()).expect("a job is published before its generation");
            // SAFETY: see `run_job`: the closure lives until `pending` reaches 0 below.
            let task = unsafe { &*job.task };
            if self.take_tasks(job.tasks, task).is_err() {
                self.panicked.store(true, SeqCst);
            }
            self.pending.fetch_sub(1, Release);
        }
    }

    /// Spin, then yield, then park until the generation moves past `seen`.
    fn wait_for_job(&self, seen: usize) {
        let start = Instant::now();
        let mut checks = 0u32;
        while self.generation.load(Acquire) == seen {
            checks = checks.wrapping_add(1);
            if !checks.is_multiple_of(64) {
                std::hint::spin_loop();
                continue;
            }
            let idle = start.elapsed();
            if idle < PURE_SPIN {
                continue;
            }
            if idle < SPIN {
                std::thread::yield_now();
                continue;
            }
            let mut lock = self.sleep.lock().unwrap_or_else(|e| e.into_inner());
            self.parked.fetch_add(1, SeqCst);
            while self.generation.load(SeqCst) == seen {
                lock = self.wake.wait(lock).unwrap_or_else(|e| e.into_inner());
            }
            self.parked.fetch_sub(1, SeqCst);
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn every_task_runs_once_whatever_the_gaps_between_jobs() {
        for (round, gap) in [0u64, 0, 3, 0, 5].into_iter().enumerate() {
            std::thread::sleep(Duration::from_millis(gap));
            let counts: Vec<AtomicU64> = (0..1000).map(|_| AtomicU64::new(0)).collect();
            run(counts.len(), &|i| {
                counts[i].fetch_add(i as u64 + 1, Relaxed);
            });
            for (i, c) in counts.iter().enumerate() {
                assert_eq!(c.load(Relaxed), i as u64 + 1, "round {round}, task {i}");
            }
        }
    }

    #[test]
    fn nested_and_concurrent_jobs_run_every_task() {
        let total = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..50 {
                        run(8, &|_| {
                            run(5, &|j| {
                                total.fetch_add(j as u64, Relaxed);
                            })
                        });
                    }
                });
            }
        });
        assert_eq!(total.load(Relaxed), 4 * 50 * 8 * (1 + 2 + 3 + 4));
    }

    #[test]
    fn chunks_cover_the_output_once_with_their_own_index() {
        for (len, chunk) in [(0usize, 3usize), (1, 1), (10, 3), (PARALLEL_ELEMENTS + 7, 100), (PARALLEL_ELEMENTS * 3, 1)] {
            let mut out = vec![usize::MAX; len];
            for_each_chunk_mut(&mut out, chunk, len >= PARALLEL_ELEMENTS, |i, piece| {
                assert!(piece.len() == chunk || (i + 1) * chunk >= len, "piece {i} of {len}/{chunk} is {} long", piece.len());
                for (k, v) in piece.iter_mut().enumerate() {
                    assert_eq!(*v, usize::MAX, "written twice");
                    *v = i * chunk + k;
                }
            });
            assert!(out.iter().enumerate().all(|(k, &v)| k == v), "len {len}, chunk {chunk}");
        }
    }

    #[test]
    fn a_panicking_task_panics_the_caller_and_the_pool_still_works() {
        let result = std::panic::catch_unwind(|| run(64, &|i| assert!(i != 37, "task 37")));
        assert!(result.is_err());
        let sum = AtomicU64::new(0);
        run(100, &|i| {
            sum.fetch_add(i as u64, Relaxed);
        });
        assert_eq!(sum.load(Relaxed), 4950);
    }
}
