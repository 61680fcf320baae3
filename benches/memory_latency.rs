//! What one dependent random read of memory costs on this machine, by working-set size: the
//! floor under the core's lifecycle, whose queued tasks, lanes and buckets are spread over
//! tens of MiB at 100k queued and more, so that each lifecycle's cache misses are reads of
//! this kind.
//!
//! `cargo bench --bench memory_latency` prints one line per size (median of five runs).

use std::time::Instant;

const LINE_WORDS: usize = 8;

/// A random cycle through every cache line of `mib` MiB, as the index of each line's
/// successor stored in its first word (Sattolo's shuffle from a fixed seed).
fn random_cycle(mib: usize) -> Vec<u64> {
    let lines = mib * 1024 * 1024 / (LINE_WORDS * 8);
    let mut order: Vec<usize> = (0..lines).collect();
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in (1..lines).rev() {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        order.swap(i, (state >> 33) as usize % i);
    }
    let mut words = vec![0u64; lines * LINE_WORDS];
    for i in 0..lines {
        words[order[i] * LINE_WORDS] = (order[(i + 1) % lines] * LINE_WORDS) as u64;
    }
    words
}

/// Nanoseconds per read, following the cycle for `steps` reads.
fn chase(words: &[u64], steps: usize) -> f64 {
    let mut at = 0usize;
    let start = Instant::now();
    for _ in 0..steps {
        at = words[at] as usize;
    }
    let elapsed = start.elapsed().as_nanos() as f64;
    std::hint::black_box(at);
    elapsed / steps as f64
}

fn main() {
    for mib in [1, 4, 16, 64, 256] {
        let words = random_cycle(mib);
        chase(&words, 1_000_000);
        let mut runs: Vec<f64> = (0..5).map(|_| chase(&words, 2_000_000)).collect();
        runs.sort_by(f64::total_cmp);
        println!(
            "summary: working set {mib:>3} MiB: {:>6.1} ns per dependent random read (median of 5; range {:.1}-{:.1})",
            runs[2], runs[0], runs[4]
        );
    }
}
