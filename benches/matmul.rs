//! Rate of the CPU linear layer (`y = x·Wᵀ`, bf16 W of Qwen3-0.6B's MLP shape) against the
//! number of activation rows: the dot-product path up to `SMALL_M`, gemm above.
//! `cargo bench --bench matmul`. W stays cache-resident here, so this measures arithmetic,
//! not the memory streaming a real decode step pays for at small m.

use std::time::Instant;

use asyncthink::backend::cpu::{CpuWeight, matmul};
use half::bf16;

fn main() {
    let (k, n) = (1024usize, 3072usize);
    let w: Vec<bf16> = (0..n * k)
        .map(|i| bf16::from_f32(((i * 7) % 13) as f32 * 0.01 - 0.06))
        .collect();
    let w = CpuWeight::Bf16 {
        data: w,
        shape: vec![n, k],
    };
    println!(
        "threads {}, W [{n}, {k}] bf16",
        rayon::current_num_threads()
    );
    for m in [1usize, 4, 8, 16, 32, 64, 65, 128, 256] {
        let x: Vec<f32> = (0..m * k).map(|i| ((i % 7) as f32 - 3.0) * 0.1).collect();
        std::hint::black_box(matmul::linear(&x, m, k, &w));
        let iters = 20;
        let t = Instant::now();
        for _ in 0..iters {
            std::hint::black_box(matmul::linear(&x, m, k, &w));
        }
        let s = t.elapsed().as_secs_f64() / iters as f64;
        println!(
            "m={m:4}: {:8.3} ms  {:6.1} GFLOP/s",
            s * 1e3,
            2.0 * (m * n * k) as f64 / s / 1e9
        );
    }
}
