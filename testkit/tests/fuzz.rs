//! The CI fuzz pass: every target of `testkit::fuzz::TARGETS` gets its
//! `ci_cases` inputs (seeded random bytes and mutated seeds), on two
//! threads, under a counting allocator. A case fails the test if it
//! panics, makes a single allocation over [`MAX_SINGLE_ALLOC`], or holds
//! more than [`MAX_CASE_BYTES`] at once. The failing input is written to
//! `target/fuzz-failures/<target>-<case>.bin` (replay it with
//! `scripts/fuzz.sh --replay`), and the target, seed and case are printed.
//!
//! Environment: `P2PFS_FUZZ_SEED` (the base seed, default fixed so CI runs
//! are reproducible), `P2PFS_FUZZ_CASES` (cases per target, overriding
//! each target's count), `P2PFS_FUZZ_ONLY` (a comma-separated list of
//! target names), `P2PFS_FUZZ_REPLAY` (a file: run only its bytes, once,
//! through the selected targets).

use rand::rngs::StdRng;
use rand::SeedableRng;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use testkit::fuzz::{generate, Target, MAX_INPUT, TARGETS};

/// Largest single allocation a case may make: above the 16 MiB a frame may
/// reserve, far below what a trusted length prefix would ask for.
const MAX_SINGLE_ALLOC: usize = 64 << 20;

/// Most bytes a case may hold at once (over what its thread held before).
const MAX_CASE_BYTES: usize = 256 << 20;

thread_local! {
    /// Bytes this thread allocated minus bytes it freed (frees of memory
    /// another thread allocated make it drift; cases reset the baseline).
    static LIVE: Cell<isize> = const { Cell::new(0) };
    /// The highest `LIVE` since the last reset.
    static PEAK: Cell<isize> = const { Cell::new(0) };
    /// The largest single allocation since the last reset.
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

/// The system allocator, counting per thread.
struct Counting;

fn note_alloc(size: usize) {
    let _ = LIVE.try_with(|l| {
        let now = l.get().saturating_add(size as isize);
        l.set(now);
        let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
    });
    let _ = LARGEST.try_with(|m| m.set(m.get().max(size)));
}

fn note_free(size: usize) {
    let _ = LIVE.try_with(|l| l.set(l.get().saturating_sub(size as isize)));
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// bookkeeping touches only const-initialized thread-locals without
// destructors (no allocation, no reentry).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_alloc(layout.size());
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_alloc(layout.size());
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note_free(layout.size());
        // SAFETY: `ptr` was allocated by `System` with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_free(layout.size());
        note_alloc(new_size);
        // SAFETY: forwarded with the caller's pointer, layout and size.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Starts measuring a case on this thread; returns the baseline.
fn reset() -> isize {
    let live = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(live));
    LARGEST.with(|m| m.set(0));
    live
}

/// What one target's pass found.
struct Outcome {
    name: &'static str,
    cases: u32,
    took: Duration,
    failure: Option<String>,
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Runs one input through `t` on this thread: why it failed, if it did.
fn check(t: &Target, input: &[u8]) -> Option<String> {
    let base = reset();
    let r = catch_unwind(AssertUnwindSafe(|| (t.run)(input)));
    let peak = PEAK.with(Cell::get).saturating_sub(base).max(0) as usize;
    let largest = LARGEST.with(Cell::get);
    match r {
        Err(p) => Some(format!(
            "panicked: {}",
            p.downcast_ref::<String>()
                .map(String::as_str)
                .or(p.downcast_ref::<&str>().copied())
                .unwrap_or("?")
        )),
        Ok(()) if largest > MAX_SINGLE_ALLOC => {
            Some(format!("allocated {largest} bytes at once (limit {MAX_SINGLE_ALLOC})"))
        }
        Ok(()) if peak > MAX_CASE_BYTES => {
            Some(format!("held {peak} bytes at once (limit {MAX_CASE_BYTES})"))
        }
        Ok(()) => None,
    }
}

/// Runs `t`'s pass on this thread.
fn run(t: &Target, base_seed: u64, cases_override: Option<u32>) -> Outcome {
    let started = Instant::now();
    let seeds = (t.seeds)();
    let cases = cases_override.unwrap_or(t.ci_cases);
    // One stream per target: the same inputs whatever runs beside it.
    let name_hash = t
        .name
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    let mut rng = StdRng::seed_from_u64(base_seed ^ name_hash);
    let mut input = Vec::with_capacity(MAX_INPUT);
    // Seeds first, as they are.
    let mut failure = None;
    for case in 0..cases {
        if let Some(s) = seeds.get(case as usize) {
            input.clear();
            input.extend_from_slice(s);
        } else {
            generate(&mut rng, &seeds, MAX_INPUT, &mut input);
        }
        if let Some(why) = check(t, &input) {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/fuzz-failures");
            let file = dir.join(format!("{}-{case}.bin", t.name));
            let _ = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&file, &input));
            failure = Some(format!(
                "{}: case {case} (seed {base_seed}) {why}; input ({} bytes) in {}",
                t.name,
                input.len(),
                file.display()
            ));
            break;
        }
    }
    Outcome { name: t.name, cases, took: started.elapsed(), failure }
}

#[test]
fn every_target_survives_its_ci_cases() {
    let base_seed = env_u64("P2PFS_FUZZ_SEED").unwrap_or(0x7032_7066_735f_6675);
    let cases = env_u64("P2PFS_FUZZ_CASES").map(|c| c as u32);
    let only: Option<Vec<String>> =
        std::env::var("P2PFS_FUZZ_ONLY").ok().map(|v| v.split(',').map(str::to_string).collect());
    let todo: Vec<&Target> =
        TARGETS.iter().filter(|t| only.as_ref().is_none_or(|o| o.iter().any(|n| n == t.name))).collect();
    assert!(!todo.is_empty(), "no target selected");
    if let Ok(file) = std::env::var("P2PFS_FUZZ_REPLAY") {
        let input = std::fs::read(&file).unwrap_or_else(|e| panic!("cannot read {file}: {e}"));
        let failures: Vec<String> =
            todo.iter().filter_map(|t| check(t, &input).map(|why| format!("{}: {why}", t.name))).collect();
        assert!(failures.is_empty(), "{file}:\n{}", failures.join("\n"));
        eprintln!("fuzz: {file} passes {} target(s)", todo.len());
        return;
    }
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::new());
    let started = Instant::now();
    // Two workers (the machines have two cores), each takes the next target.
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(t) = todo.get(i) else { break };
                let o = run(t, base_seed, cases);
                results.lock().unwrap_or_else(|e| e.into_inner()).push(o);
            });
        }
    });
    let results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    for o in &results {
        eprintln!(
            "fuzz {:<26} {:>7} cases {:>7.2} s{}",
            o.name,
            o.cases,
            o.took.as_secs_f64(),
            if o.failure.is_some() {
                "  FAILED"
            } else if o.cases == 0 {
                "  (not in the CI pass, see its entry)"
            } else {
                ""
            }
        );
    }
    eprintln!("fuzz: {} targets in {:.1} s", results.len(), started.elapsed().as_secs_f64());
    let failures: Vec<&String> = results.iter().filter_map(|o| o.failure.as_ref()).collect();
    assert!(
        failures.is_empty(),
        "fuzz targets failed:\n{}",
        failures.iter().map(|f| f.as_str()).collect::<Vec<_>>().join("\n")
    );
}
