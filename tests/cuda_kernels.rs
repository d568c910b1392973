//! Every CUDA kernel against the CPU reference on fresh random inputs (rounded to bf16 first,
//! so both sides see the same values), outputs poisoned with NaN before each run, several
//! shapes. Whole-model GPU logits against CPU logits on the tiny fixtures.
//!
//! Without a GPU (or driver, NVRTC, CUDA headers) each test prints "skipped: <reason>" and
//! returns. No GPU has run these yet (docs/gpu-runs.md).
//!
//! Built where no CUDA driver is installed, the GPU tests are marked ignored, so `cargo test`
//! counts them as ignored, not passed; `cargo test -- --include-ignored` runs them (each then
//! prints `skipped`, or fails under ASYNCTHINK_REQUIRE_GPU=1, when no GPU can be opened).
#![cfg(feature = "cuda")]

mod common;

use asyncthink::backend::cpu::{
    CpuBackend, CpuTensor, Precision, activation, attention, norm, rope,
};
use asyncthink::backend::cuda::CudaBackend;
use asyncthink::backend::{AttentionShape, Backend};
use asyncthink::kv::KvLayout;
use asyncthink::model::rope::Rope;
use asyncthink::model::{ForwardBatch, Logits, Qwen3};
use common::gpu::{assert_close, gpu, rand_bf16, round_bf16, weight};

/// Elementwise kernels: the output is one bf16 rounding (relative 2^-9, 8 mantissa bits) of
/// an f32 result that differs from the CPU's only by summation order, so 1% relative plus a
/// small absolute floor covers it with margin, while a wrong index or formula is off by O(1).
const ELEM_TOL: f32 = 1e-2;

/// ASYNCTHINK_REQUIRE_GPU=1 turns a skip into a failure: this binary runs one GPU test of its
/// own as a subprocess, with and without the switch. With a usable GPU both runs pass.
#[test]
fn require_gpu_turns_a_skip_into_a_failure() {
    use asyncthink::backend::cuda::probe::REQUIRE_GPU_ENV;
    let has_gpu = CudaBackend::new(0).is_ok();
    let run = |require: bool| {
        let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
        cmd.args([
            "--exact",
            "embedding_and_gather_copy_rows_exactly",
            "--include-ignored",
            "--test-threads=1",
        ]);
        if require {
            cmd.env(REQUIRE_GPU_ENV, "1");
        } else {
            cmd.env_remove(REQUIRE_GPU_ENV);
        }
        let out = cmd.output().expect("run this test binary");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            text.contains("1 passed") || text.contains("1 failed"),
            "one test ran: {text}"
        );
        (out.status.success(), text)
    };
    let (ok, text) = run(false);
    assert!(ok, "without the switch the test passes (or skips): {text}");
    assert!(has_gpu || text.contains("skipped"), "{text}");
    let (ok, text) = run(true);
    if has_gpu {
        assert!(ok, "with a GPU the required test passes: {text}");
    } else {
        assert!(!ok, "without a GPU the required test must fail: {text}");
        assert!(text.contains(&format!("{REQUIRE_GPU_ENV}=1")), "{text}");
    }
}

#[test]
#[cfg_attr(
    asyncthink_no_gpu,
    ignore = "no CUDA driver where this was built; `-- --include-ignored` runs it"
)]
fn embedding_and_gather_copy_rows_exactly() {
    let Some(be) = gpu("embedding") else { return };
    for (vocab, hidden) in [(37, 64), (1000, 1023)] {
        let table = rand_bf16(vocab * hidden, 1, 1.0);
        let w = weight(&be, &table, &[vocab, hidden]);
        let ids: Vec<u32> = (0..29).map(|i| (i * 7 + 3) % vocab as u32).collect();
        let got = be.to_host(&be.embedding(&w, &ids).unwrap()).unwrap();
        let want: Vec<f32> = ids
            .iter()
            .flat_map(|&i| table[i as usize * hidden..][..hidden].to_vec())
            .collect();
        assert_eq!(got, want, "embedding {vocab}x{hidden}");
        let x = be.tensor_from_host(&want, ids.len(), hidden).unwrap();
        let rows = [28u32, 0, 5, 5];
        let got = be.to_host(&be.gather_rows(&x, &rows).unwrap()).unwrap();
        let want: Vec<f32> = rows
            .iter()
            .flat_map(|&r| want[r as usize * hidden..][..hidden].to_vec())
            .collect();
        assert_eq!(got, want, "gather_rows");
    }
    assert!(
        be.embedding(&weight(&be, &[1.0; 4], &[2, 2]), &[2])
            .is_err()
    );
}

#[test]
#[cfg_attr(
    asyncthink_no_gpu,
    ignore = "no CUDA driver where this was built; `-- --include-ignored` runs it"
)]
fn rms_norm_and_fused_residual_add_match_cpu() {
    let Some(be) = gpu("rms_norm") else { return };
    for (rows, cols) in [(1, 64), (7, 1000), (3, 4096)] {
        let x = rand_bf16(rows * cols, 2, 3.0);
        let d = rand_bf16(rows * cols, 3, 1.0);
        let w = rand_bf16(cols, 4, 1.5);
        let wd = weight(&be, &w, &[cols]);
        let xt = be.tensor_from_host(&x, rows, cols).unwrap();
        let got = be.to_host(&be.rms_norm(&xt, &wd, 1e-6).unwrap()).unwrap();
        let want = norm::rms_norm(
            &CpuTensor::new(x.clone(), rows, cols),
            &w,
            1e-6,
            Precision::F32,
        );
        assert_close(
            &format!("rms_norm {rows}x{cols}"),
            &got,
            &want.data,
            ELEM_TOL,
        );

        // The GPU keeps the residual in bf16: the reference rounds the sum the same way.
        let mut res = be.tensor_from_host(&x, rows, cols).unwrap();
        let delta = be.tensor_from_host(&d, rows, cols).unwrap();
        let got = be
            .to_host(&be.add_rms_norm(&mut res, &delta, &wd, 1e-6).unwrap())
            .unwrap();
        let sum = round_bf16(&x.iter().zip(&d).map(|(a, b)| a + b).collect::<Vec<_>>());
        let want = norm::rms_norm(
            &CpuTensor::new(sum.clone(), rows, cols),
            &w,
            1e-6,
            Precision::F32,
        );
        assert_close("add_rms_norm out", &got, &want.data, ELEM_TOL);
        assert_eq!(be.to_host(&res).unwrap(), sum, "add_rms_norm residual");
    }
}

#[test]
#[cfg_attr(
    asyncthink_no_gpu,
    ignore = "no CUDA driver where this was built; `-- --include-ignored` runs it"
)]
fn swiglu_matches_cpu() {
    let Some(be) = gpu("swiglu") else { return };
    for (rows, cols) in [(1, 3), (5, 777), (17, 3072)] {
        let g = rand_bf16(rows * cols, 5, 6.0);
        let u = rand_bf16(rows * cols, 6, 2.0);
        let gt = be.tensor_from_host(&g, rows, cols).unwrap();
        let ut = be.tensor_from_host(&u, rows, cols).unwrap();
        let got = be.to_host(&be.swiglu(&gt, &ut).unwrap()).unwrap();
        let want = activation::swiglu(
            &CpuTensor::new(g, rows, cols),
            &CpuTensor::new(u, rows, cols),
            Precision::F32,
        );
        assert_close(&format!("swiglu {rows}x{cols}"), &got, &want.data, ELEM_TOL);
    }
}

fn shapes() -> Vec<AttentionShape> {
    let s = |num_heads, num_kv_heads, head_dim| AttentionShape {
        num_heads,
        num_kv_heads,
        head_dim,
    };
    vec![
        s(4, 4, 64),
        s(16, 2, 128),
        s(8, 1, 64),
        s(4, 1, 16),
        s(6, 3, 128),
    ]
}

#[test]
#[cfg_attr(
    asyncthink_no_gpu,
    ignore = "no CUDA driver where this was built; `-- --include-ignored` runs it"
)]
fn qk_norm_rope_and_fused_cache_write_match_cpu() {
    let Some(be) = gpu("qk_norm_rope") else {
        return;
    };
    for shape in shapes() {
        let (h, kvh, d) = (shape.num_heads, shape.num_kv_heads, shape.head_dim);
        let rows = 13;
        let rope_p = Rope::new(d, 1_000_000.0);
        let positions: Vec<u32> = (0..rows as u32).map(|i| i * 977 % 40_000).collect();
        let (q, k, v) = (
            rand_bf16(rows * h * d, 7, 2.0),
            rand_bf16(rows * kvh * d, 8, 2.0),
            rand_bf16(rows * kvh * d, 9, 2.0),
        );
        let (qw, kw) = (rand_bf16(d, 10, 1.5), rand_bf16(d, 11, 1.5));
        let (qwd, kwd) = (weight(&be, &qw, &[d]), weight(&be, &kw, &[d]));
        let mut qc = CpuTensor::new(q.clone(), rows, h * d);
        let mut kc = CpuTensor::new(k.clone(), rows, kvh * d);
        rope::qk_norm_rope(
            &mut qc,
            &mut kc,
            &qw,
            &kw,
            d,
            1e-6,
            &rope_p,
            &positions,
            Precision::F32,
        );

        let mut qg = be.tensor_from_host(&q, rows, h * d).unwrap();
        let mut kg = be.tensor_from_host(&k, rows, kvh * d).unwrap();
        be.qk_norm_rope(
            &mut qg, &mut kg, &qwd, &kwd, shape, 1e-6, &rope_p, &positions,
        )
        .unwrap();
        let what = format!("qk_norm_rope {shape:?}");
        assert_close(
            &format!("{what} q"),
            &be.to_host(&qg).unwrap(),
            &qc.data,
            ELEM_TOL,
        );
        assert_close(
            &format!("{what} k"),
            &be.to_host(&kg).unwrap(),
            &kc.data,
            ELEM_TOL,
        );

        // Fused: k and v go straight to their slots (scattered, crossing block boundaries).
        let layout = KvLayout {
            num_layers: 2,
            num_blocks: 5,
            block_size: 4,
            num_kv_heads: kvh,
            head_dim: d,
        };
        let table = [4u32, 1, 3, 0];
        let mut batch = ForwardBatch::default();
        batch.push(&vec![0; rows], 2, &table, layout.block_size, Logits::None);
        batch.positions = positions.clone();
        let mut cache = be.alloc_kv(layout).unwrap();
        let n = layout.total_elems();
        be.kv_from_host(&mut cache, &vec![f32::NAN; n], &vec![f32::NAN; n])
            .unwrap();
        let mut qg = be.tensor_from_host(&q, rows, h * d).unwrap();
        let mut kg = be.tensor_from_host(&k, rows, kvh * d).unwrap();
        let vg = be.tensor_from_host(&v, rows, kvh * d).unwrap();
        be.qk_norm_rope_write_kv(
            &mut qg, &mut kg, &vg, &qwd, &kwd, shape, 1e-6, &rope_p, &batch, &mut cache, 1,
        )
        .unwrap();
        assert_close(
            &format!("{what} fused q"),
            &be.to_host(&qg).unwrap(),
            &qc.data,
            ELEM_TOL,
        );
        let (gk, gv) = be.kv_to_host(&cache).unwrap();
        let base = layout.layer_elems();
        for (row, &slot) in batch.slot_mapping.iter().enumerate() {
            for hd in 0..kvh {
                let off = base + layout.slot_offset(slot as usize, hd);
                let src = row * kvh * d + hd * d;
                assert_close(
                    &format!("{what} cached k row {row}"),
                    &gk[off..off + d],
                    &kc.data[src..src + d],
                    ELEM_TOL,
                );
                assert_eq!(&gv[off..off + d], &v[src..src + d], "cached v row {row}");
            }
        }
        // Layer 0 and unwritten slots keep the poison: nothing was written out of place.
        assert!(gk[..base].iter().all(|x| x.is_nan()), "layer 0 was written");
    }
}

/// A cache filled with random bf16 K/V, on both backends.
fn random_caches(
    be: &CudaBackend,
    layout: KvLayout,
) -> (asyncthink::backend::cuda::CudaKvCache, Vec<f32>, Vec<f32>) {
    let n = layout.total_elems();
    let (k, v) = (rand_bf16(n, 12, 2.0), rand_bf16(n, 13, 2.0));
    let mut cache = be.alloc_kv(layout).unwrap();
    be.kv_from_host(&mut cache, &k, &v).unwrap();
    (cache, k, v)
}

/// Attention outputs are convex combinations of bf16 values of magnitude <= 2, computed in
/// f32 with a different summation order and exp implementation, then rounded once to bf16:
/// 1% relative (plus the same absolute floor) is several bf16 ulps of margin.
const ATTN_TOL: f32 = 1e-2;

fn check_attention(be: &CudaBackend, shape: AttentionShape, chunks: &[(usize, usize)], what: &str) {
    check_attention_paged(be, shape, 16, chunks, what);
}

/// `chunks`: per sequence, (positions already cached, new tokens).
fn check_attention_paged(
    be: &CudaBackend,
    shape: AttentionShape,
    block_size: usize,
    chunks: &[(usize, usize)],
    what: &str,
) {
    let max_ctx = chunks.iter().map(|c| c.0 + c.1).max().unwrap_or(1);
    let pages = max_ctx.div_ceil(block_size);
    let layout = KvLayout {
        num_layers: 2,
        num_blocks: pages * chunks.len() + 3,
        block_size,
        num_kv_heads: shape.num_kv_heads,
        head_dim: shape.head_dim,
    };
    let (cache, k, v) = random_caches(be, layout);
    let mut batch = ForwardBatch::default();
    for (s, &(cached, new)) in chunks.iter().enumerate() {
        // Tables in reverse block order, so paging is really exercised.
        let table: Vec<u32> = (0..pages)
            .map(|p| (layout.num_blocks - 1 - (s * pages + p)) as u32)
            .collect();
        batch.push(&vec![0; new], cached, &table, block_size, Logits::None);
    }
    let rows = batch.num_tokens();
    let q = rand_bf16(rows * shape.num_heads * shape.head_dim, 14, 2.0);
    let qc = CpuTensor::new(q.clone(), rows, shape.num_heads * shape.head_dim);
    let n = layout.layer_elems();
    let want = attention::paged_attention(
        &qc,
        &k[n..2 * n],
        &v[n..2 * n],
        &layout,
        &batch,
        shape,
        Precision::F32,
    );
    let qg = be.tensor_from_host(&q, rows, qc.cols).unwrap();
    let got = be
        .to_host(&be.attention(&qg, &cache, 1, &batch, shape).unwrap())
        .unwrap();
    assert_close(
        &format!("attention {what} {shape:?} block {block_size} {chunks:?}"),
        &got,
        &want.data,
        ATTN_TOL,
    );
}

#[test]
#[cfg_attr(
    asyncthink_no_gpu,
    ignore = "no CUDA driver where this was built; `-- --include-ignored` runs it"
)]
fn decode_attention_matches_cpu() {
    let Some(be) = gpu("decode attention") else {
        return;
    };
    for shape in shapes() {
        // One new token per sequence; contexts at and around block boundaries, and long
        // enough to be split across several blocks of the grid.
        check_attention(&be, shape, &[(0, 1)], "decode");
        check_attention(&be, shape, &[(15, 1), (16, 1), (31, 1), (4, 1)], "decode");
        check_attention(&be, shape, &[(700, 1), (33, 1)], "decode");
    }
    // The kernel's other paths: a group of 3 in the G = 4 kernel with head_dim 13 (rows not
    // 16-byte aligned: element loads), a group of 5 in the G = 8 kernel with head_dim 72
    // (lanes past it masked); block sizes 3 and 1 (pages change inside a 32-position step).
    let s = |num_heads, num_kv_heads, head_dim| AttentionShape {
        num_heads,
        num_kv_heads,
        head_dim,
    };
    for shape in [s(6, 2, 13), s(10, 2, 72)] {
        check_attention(&be, shape, &[(0, 1), (40, 1), (300, 1)], "decode");
        check_attention_paged(&be, shape, 3, &[(7, 1), (95, 1)], "decode, blocks of 3");
        check_attention_paged(&be, shape, 1, &[(0, 1), (66, 1)], "decode, blocks of 1");
    }
}

#[test]
#[cfg_attr(
    asyncthink_no_gpu,
    ignore = "no CUDA driver where this was built; `-- --include-ignored` runs it"
)]
fn prefill_attention_matches_cpu() {
    let Some(be) = gpu("prefill attention") else {
        return;
    };
    let s = |num_heads, num_kv_heads, head_dim| AttentionShape {
        num_heads,
        num_kv_heads,
        head_dim,
    };
    // Beyond shapes(): a group of 3 (3 heads per CTA, 21 rows), a group of 16 (two CTAs per
    // group), head_dim 96 (padded to 128) and 36 (not a multiple of 8: element-wise loads).
    let mut all = shapes();
    all.extend([s(12, 4, 96), s(16, 1, 64), s(2, 2, 36)]);
    for shape in all {
        check_attention(&be, shape, &[(0, 37)], "prefill");
        // Chunked prefill against cached blocks, mixed with a decode row.
        check_attention(&be, shape, &[(16, 17), (50, 1), (3, 64)], "chunked");
        check_attention(&be, shape, &[(0, 1), (0, 16), (100, 33)], "mixed");
        // Several query tiles and 64-key tiles; a cached prefix ending on a key-tile boundary.
        check_attention(&be, shape, &[(0, 130), (64, 65), (1, 1)], "long");
        // Block sizes that do not divide the 64-key tiles (pages change inside a tile), and
        // one larger than the chunks.
        check_attention_paged(&be, shape, 5, &[(7, 23), (0, 9), (12, 1)], "small blocks");
        check_attention_paged(&be, shape, 32, &[(31, 2), (33, 31)], "large blocks");
    }
}

#[test]
#[cfg_attr(
    asyncthink_no_gpu,
    ignore = "no CUDA driver where this was built; `-- --include-ignored` runs it"
)]
fn copy_block_copies_every_layer() {
    let Some(be) = gpu("copy_block") else { return };
    let layout = KvLayout {
        num_layers: 3,
        num_blocks: 4,
        block_size: 16,
        num_kv_heads: 2,
        head_dim: 64,
    };
    let (mut cache, k, v) = random_caches(&be, layout);
    be.copy_block(&mut cache, 1, 3).unwrap();
    let (gk, gv) = be.kv_to_host(&cache).unwrap();
    let n = layout.block_elems();
    for l in 0..3 {
        let base = l * layout.layer_elems();
        assert_eq!(gk[base + 3 * n..][..n], k[base + n..][..n]);
        assert_eq!(gv[base + 3 * n..][..n], v[base + n..][..n]);
        assert_eq!(gk[base..base + 3 * n], k[base..base + 3 * n]);
    }
}

// Device sampling (`select_tokens`, greedy ties included) has its own tests in
// tests/cuda_sampling.rs.

/// Whole model: bf16 weights and activations through 2–3 layers against the CPU's f32 (with
/// the checkpoint's own dtype). Each layer adds a few bf16 roundings (relative 2^-9) to
/// values of order 1; the logits of these tiny models are of order 1–10, so we allow 5% of
/// the largest logit's magnitude. A wrong kernel is off by O(1) or NaN.
#[test]
#[cfg_attr(
    asyncthink_no_gpu,
    ignore = "no CUDA driver where this was built; `-- --include-ignored` runs it"
)]
fn model_logits_match_cpu_on_tiny_fixtures() {
    let Some(be) = gpu("model logits") else {
        return;
    };
    for name in common::MODELS {
        let dir = common::model_dir(name);
        let cpu = Qwen3::load(CpuBackend::default(), &dir).unwrap();
        let gpu = Qwen3::load(be.clone(), &dir).unwrap();
        let vocab = cpu.config.vocab_size;
        let ids: Vec<u32> = (0..40).map(|i| (i * 37 + 11) % vocab as u32).collect();
        let run = |prefill: usize| -> (Vec<f32>, Vec<f32>) {
            let layout = cpu.kv_layout(4, 16);
            let table = [2u32, 0, 3];
            let mut out = Vec::new();
            let mut kv_c = cpu.backend.alloc_kv(layout).unwrap();
            let mut kv_g = gpu.backend.alloc_kv(layout).unwrap();
            let mut feed = |lo: usize, hi: usize, out: &mut Vec<(Vec<f32>, Vec<f32>)>| {
                let mut batch = ForwardBatch::default();
                batch.push(&ids[lo..hi], lo, &table, 16, Logits::All);
                let c = cpu
                    .backend
                    .to_host(&cpu.forward(&batch, &mut kv_c).unwrap())
                    .unwrap();
                let g = gpu
                    .backend
                    .to_host(&gpu.forward(&batch, &mut kv_g).unwrap())
                    .unwrap();
                out.push((c, g));
            };
            feed(0, prefill, &mut out);
            for t in prefill..ids.len() {
                feed(t, t + 1, &mut out);
            }
            out.into_iter()
                .fold((Vec::new(), Vec::new()), |(mut a, mut b), (c, g)| {
                    a.extend(c);
                    b.extend(g);
                    (a, b)
                })
        };
        for prefill in [40, 5] {
            let (c, g) = run(prefill);
            let scale = c.iter().fold(0f32, |m, x| m.max(x.abs()));
            let err = common::max_abs_diff(&c, &g);
            println!("{name} prefill {prefill}: max abs err {err:.3e} (largest logit {scale:.2})");
            assert!(
                g.iter().all(|x| x.is_finite()),
                "{name}: non-finite GPU logits"
            );
            assert!(
                err <= 0.05 * scale.max(1.0),
                "{name}: logits differ by {err}"
            );
        }
    }
}
