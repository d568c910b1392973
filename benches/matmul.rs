//! Rate of the CPU linear layer (`y = x·Wᵀ`, W of Qwen3-0.6B's MLP shape, bf16 and f32)
//! against the number of activation rows, for each path side by side: the batch-invariant
//! packed kernel the model runs, the `gemm` crate (whose order depends on the shape), and
//! the `--precision bf16` product (bf16 operands, f32 accumulation) on this CPU's best
//! bf16 kernel.
//! `cargo bench --bench matmul`. W stays cache-resident here, so this measures arithmetic,
//! not the memory streaming a real decode step pays for at small m.

use std::time::Instant;

use asyncthink::backend::cpu::bf16_linear::{self, Bf16Kernel, Bf16Panels};
use asyncthink::backend::cpu::{CpuWeight, Precision, matmul};
use half::bf16;

fn time(mut f: impl FnMut() -> Vec<f32>) -> f64 {
    std::hint::black_box(f());
    let (mut iters, t) = (0, Instant::now());
    while iters < 3 || t.elapsed().as_secs_f64() < 0.3 {
        std::hint::black_box(f());
        iters += 1;
    }
    t.elapsed().as_secs_f64() / iters as f64
}

fn main() {
    let (k, n) = (1024usize, 3072usize);
    let w32: Vec<f32> = (0..n * k)
        .map(|i| ((i * 7) % 13) as f32 * 0.01 - 0.06)
        .collect();
    let w16: Vec<bf16> = w32.iter().map(|&v| bf16::from_f32(v)).collect();
    asyncthink::backend::cpu::threads::drive_from_this_thread(None).expect("the thread pool");
    println!(
        "threads {}, W [{n}, {k}], bf16 kernel {}; GFLOP/s, and gemm's and bf16's time over packed's",
        rayon::current_num_threads(),
        Bf16Kernel::best().name()
    );
    let panels = Bf16Panels::new(&w16, n, k, Bf16Kernel::best());
    for (name, w) in [
        ("bf16", CpuWeight::bf16(w16.clone(), vec![n, k])),
        ("f32", CpuWeight::f32(w32, vec![n, k])),
    ] {
        println!(
            "{name:5} {:>6} {:>9} {:>9} {:>9} {:>6} {:>6}",
            "m", "packed", "gemm", "bf16", "gemm", "bf16"
        );
        for m in [1usize, 4, 8, 16, 32, 64, 128, 256, 512, 1024] {
            let x: Vec<f32> = (0..m * k).map(|i| ((i % 7) as f32 - 3.0) * 0.1).collect();
            let rate = |s: f64| 2.0 * (m * n * k) as f64 / s / 1e9;
            let packed = time(|| matmul::linear(&x, m, k, &w, Precision::F32));
            let gemm = time(|| matmul::linear_gemm(&x, m, k, n, &w));
            let bf16 = time(|| bf16_linear::linear(&x, m, &panels));
            println!(
                "{name:5} {m:6} {:9.1} {:9.1} {:9.1} {:6.2} {:6.2}",
                rate(packed),
                rate(gemm),
                rate(bf16),
                gemm / packed,
                bf16 / packed
            );
        }
    }
}
