//! The paged attention kernels — decode (split-KV, GQA groups 1/2/4/8, and the split merge)
//! and tensor-core prefill (chunked, GQA heads packed into the MMA) — as NVRTC compiles them, against attention computed in f64 from the same bf16 inputs.
//! Shapes keep what the GPU tests exercise: context lengths at and across page boundaries,
//! GQA 1:1 and 8:1, head_dim 64 and 128, more splits than a short context has pages.

mod support;

use asyncthink_emu::{Arg, Device, LaunchConfig, LaunchStats};
use support::*;

struct Case {
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    block_size: usize,
    /// One decode row per sequence, at this position (context = position + 1).
    positions: Vec<usize>,
    splits: usize,
}

/// A paged KV cache of two layers (the kernels read layer 1 through `layer_off`) holding the
/// given contexts. Pages are handed out last-first so a table is neither 0.. nor in order.
struct PagedKv {
    tables: Vec<u32>,
    /// Where each sequence's table starts in `tables`.
    table_off: Vec<u32>,
    layer_elems: usize,
    kvh: usize,
    bs: usize,
    k: Vec<f32>,
    v: Vec<f32>,
    kd: u64,
    vd: u64,
    td: u64,
}

fn paged_kv(
    dev: &mut Device,
    contexts: &[usize],
    kvh: usize,
    hd: usize,
    bs: usize,
    seed: u64,
) -> PagedKv {
    let pages: Vec<usize> = contexts.iter().map(|c| c.div_ceil(bs)).collect();
    let total_pages: usize = pages.iter().sum::<usize>() + 1;
    let mut next = total_pages;
    let (mut tables, mut table_off) = (Vec::new(), Vec::new());
    for &n in &pages {
        table_off.push(tables.len() as u32);
        for _ in 0..n {
            next -= 1;
            tables.push(next as u32);
        }
    }
    let layer_elems = total_pages * kvh * bs * hd;
    let k = bf16_values(2 * layer_elems, seed, 1.0);
    let v = bf16_values(2 * layer_elems, seed + 1, 1.0);
    let (kd, vd, td) = (
        upload_u16(dev, &k),
        upload_u16(dev, &v),
        upload_u32(dev, &tables),
    );
    PagedKv {
        tables,
        table_off,
        layer_elems,
        kvh,
        bs,
        k: f32s(&k),
        v: f32s(&v),
        kd,
        vd,
        td,
    }
}

impl PagedKv {
    /// Attention in f64 of one query at position `pos` of sequence `seq`, KV head `kv`.
    fn reference(&self, seq: usize, qrow: &[f32], kv: usize, pos: usize, scale: f64) -> Vec<f64> {
        let (hd, kvh, bs) = (qrow.len(), self.kvh, self.bs);
        let table = &self.tables[self.table_off[seq] as usize..];
        let at = |i: usize| {
            let slot = table[i / bs] as usize * bs + i % bs;
            self.layer_elems + ((slot / bs * kvh + kv) * bs + slot % bs) * hd
        };
        let scores: Vec<f64> = (0..=pos)
            .map(|i| {
                (0..hd)
                    .map(|d| qrow[d] as f64 * self.k[at(i) + d] as f64)
                    .sum::<f64>()
                    * scale
            })
            .collect();
        let mx = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let w: Vec<f64> = scores.iter().map(|s| (s - mx).exp()).collect();
        let z: f64 = w.iter().sum();
        (0..hd)
            .map(|d| {
                (0..=pos)
                    .map(|i| w[i] * self.v[at(i) + d] as f64)
                    .sum::<f64>()
                    / z
            })
            .collect()
    }
}

fn decode_kernel(group: usize) -> &'static str {
    match group {
        1 => "attention_decode_g1",
        2 => "attention_decode_g2",
        3..=4 => "attention_decode_g4",
        _ => "attention_decode_g8",
    }
}

fn run_decode(dir: &std::path::Path, arch: &str, c: &Case) -> LaunchStats {
    let mut dev = Device::new(1 << 28);
    dev.counting = true;
    let m = dev.load_ptx(&ptx(dir, "attention_decode", arch)).unwrap();
    let (h, kvh, hd, bs) = (c.heads, c.kv_heads, c.head_dim, c.block_size);
    let rows = c.positions.len();
    let contexts: Vec<usize> = c.positions.iter().map(|p| p + 1).collect();
    let kv = paged_kv(&mut dev, &contexts, kvh, hd, bs, 21);
    let q = bf16_values(rows * h * hd, 23, 1.0);
    let qd = upload_u16(&mut dev, &q);
    let pos: Vec<u32> = c.positions.iter().map(|&p| p as u32).collect();
    let (posd, rtd) = (
        upload_u32(&mut dev, &pos),
        upload_u32(&mut dev, &kv.table_off),
    );
    let splits = c.splits;
    let max_pages = contexts.iter().map(|c| c.div_ceil(bs)).max().unwrap();
    let pps = max_pages.div_ceil(splits);
    let part_o = dev.alloc(rows * h * splits * hd * 4).unwrap();
    let part_ml = dev.alloc(rows * h * splits * 2 * 4).unwrap();
    let out = dev.alloc(rows * h * hd * 2).unwrap();
    let scale = 1.0 / (hd as f32).sqrt();
    let name = decode_kernel(h / kvh);
    let args = [
        Arg::Ptr(qd),
        Arg::Ptr(kv.kd),
        Arg::Ptr(kv.vd),
        Arg::U64(kv.layer_elems as u64),
        Arg::Ptr(posd),
        Arg::Ptr(rtd),
        Arg::Ptr(kv.td),
        Arg::Ptr(part_o),
        Arg::Ptr(part_ml),
        Arg::I32(h as i32),
        Arg::I32(kvh as i32),
        Arg::I32(hd as i32),
        Arg::I32(bs as i32),
        Arg::I32(pps as i32),
        Arg::F32(scale),
    ];
    let cfg = LaunchConfig::new([rows as u32, kvh as u32, splits as u32], [128, 1, 1], 0);
    let stats = dev
        .launch(&m, name, &cfg, &args)
        .unwrap_or_else(|e| panic!("{arch} {name}: {e}"));
    let cfg = LaunchConfig::new([rows as u32, h as u32, 1], [128, 1, 1], 0);
    let args = [
        Arg::Ptr(part_o),
        Arg::Ptr(part_ml),
        Arg::Ptr(out),
        Arg::I32(h as i32),
        Arg::I32(hd as i32),
        Arg::I32(splits as i32),
    ];
    dev.launch(&m, "attention_decode_reduce", &cfg, &args)
        .unwrap_or_else(|e| panic!("{arch} reduce: {e}"));
    let got = f32s(&download_u16(&dev, out, rows * h * hd));

    let qf = f32s(&q);
    let group = h / kvh;
    let mut worst = 0f64;
    for (r, &p) in c.positions.iter().enumerate() {
        for head in 0..h {
            let qrow = &qf[(r * h + head) * hd..][..hd];
            let want = kv.reference(r, qrow, head / group, p, scale as f64);
            for (d, want) in want.iter().enumerate() {
                let g = got[(r * h + head) * hd + d] as f64;
                let err = (g - want).abs();
                worst = worst.max(err);
                // bf16 output: half an ulp of rounding plus f32 softmax error.
                assert!(
                    err <= want.abs() / 128.0 + 2e-3,
                    "{arch} {name} row {r} head {head} d {d}: {g} vs {want}"
                );
            }
        }
    }
    eprintln!(
        "{arch} {name} ({} instructions): worst error {worst:.2e}",
        stats.instructions
    );
    stats
}

#[test]
fn decode_attention_gqa_1_to_1_head_dim_64() {
    let Some(dir) = ptx_dir("decode_attention_gqa_1_to_1_head_dim_64") else {
        return;
    };
    // Contexts 1, 16 (one full page), 17 (one past) and 38; 3 splits, more than the short
    // contexts have pages.
    let c = Case {
        heads: 2,
        kv_heads: 2,
        head_dim: 64,
        block_size: 16,
        positions: vec![0, 15, 16, 37],
        splits: 3,
    };
    for arch in ["sm_90", "sm_80"] {
        run_decode(&dir, arch, &c);
    }
}

#[test]
fn decode_attention_gqa_8_to_1_head_dim_128() {
    let Some(dir) = ptx_dir("decode_attention_gqa_8_to_1_head_dim_128") else {
        return;
    };
    let c = Case {
        heads: 16,
        kv_heads: 2,
        head_dim: 128,
        block_size: 16,
        positions: vec![4, 40],
        splits: 2,
    };
    run_decode(&dir, "sm_90", &c);
}

#[test]
fn decode_attention_gqa_2_and_4() {
    let Some(dir) = ptx_dir("decode_attention_gqa_2_and_4") else {
        return;
    };
    for (heads, kv) in [(4, 2), (8, 2)] {
        let c = Case {
            heads,
            kv_heads: kv,
            head_dim: 128,
            block_size: 8,
            positions: vec![7, 8, 33],
            splits: 1,
        };
        run_decode(&dir, "sm_90", &c);
    }
}

/// `(query_len, context_len)` per sequence: the last query_len positions of each context
/// are this step's rows (chunked prefill when query_len < context_len).
fn run_prefill(
    dir: &std::path::Path,
    arch: &str,
    heads: usize,
    kvh: usize,
    hd: usize,
    bs: usize,
    seqs: &[(usize, usize)],
) -> LaunchStats {
    let mut dev = Device::new(1 << 28);
    dev.counting = true;
    let m = dev.load_ptx(&ptx(dir, "attention_prefill", arch)).unwrap();
    let contexts: Vec<usize> = seqs.iter().map(|&(_, c)| c).collect();
    let kv = paged_kv(&mut dev, &contexts, kvh, hd, bs, 31);
    let rows: usize = seqs.iter().map(|s| s.0).sum();
    let q = bf16_values(rows * heads * hd, 33, 1.0);
    let group = heads / kvh;
    let pack = (1..=8.min(group))
        .rev()
        .find(|p| group.is_multiple_of(*p))
        .unwrap();
    let rows_per_tile = 64 / pack;
    let mut tiles = Vec::new();
    let mut start = 0;
    for (s, &(ql, ctx)) in seqs.iter().enumerate() {
        for t in (0..ql).step_by(rows_per_tile) {
            tiles.extend([
                (start + t) as u32,
                rows_per_tile.min(ql - t) as u32,
                (ctx - ql + t) as u32,
                kv.table_off[s],
            ]);
        }
        start += ql;
    }
    let qd = upload_u16(&mut dev, &q);
    let tiles_d = upload_u32(&mut dev, &tiles);
    let out = dev.alloc(rows * heads * hd * 2).unwrap();
    let scale = 1.0 / (hd as f32).sqrt();
    let name = if hd <= 64 {
        "attention_prefill_d64"
    } else {
        "attention_prefill_d128"
    };
    let args = [
        Arg::Ptr(qd),
        Arg::Ptr(kv.kd),
        Arg::Ptr(kv.vd),
        Arg::U64(kv.layer_elems as u64),
        Arg::Ptr(tiles_d),
        Arg::Ptr(kv.td),
        Arg::Ptr(out),
        Arg::I32(heads as i32),
        Arg::I32(kvh as i32),
        Arg::I32(hd as i32),
        Arg::I32(bs as i32),
        Arg::I32(pack as i32),
        Arg::F32(scale),
    ];
    let cfg = LaunchConfig::new(
        [(tiles.len() / 4) as u32, (heads / pack) as u32, 1],
        [128, 1, 1],
        0,
    );
    let stats = dev
        .launch(&m, name, &cfg, &args)
        .unwrap_or_else(|e| panic!("{arch} {name}: {e}"));
    let got = f32s(&download_u16(&dev, out, rows * heads * hd));
    let qf = f32s(&q);
    let mut worst = 0f64;
    let mut row = 0;
    for (s, &(ql, ctx)) in seqs.iter().enumerate() {
        for t in 0..ql {
            for head in 0..heads {
                let qrow = &qf[(row * heads + head) * hd..][..hd];
                let want = kv.reference(s, qrow, head / group, ctx - ql + t, scale as f64);
                for d in 0..hd {
                    let g = got[(row * heads + head) * hd + d] as f64;
                    let err = (g - want[d]).abs();
                    worst = worst.max(err);
                    // P is rounded to bf16 before P·V (as flash-attention does): a few
                    // bf16 ulps of the output.
                    assert!(
                        err <= want[d].abs() / 64.0 + 4e-3,
                        "{arch} {name} seq {s} row {t} head {head} d {d}: {g} vs {}",
                        want[d]
                    );
                }
            }
            row += 1;
        }
    }
    eprintln!(
        "{arch} {name} ({} instructions): worst error {worst:.2e}",
        stats.instructions
    );
    stats
}

#[test]
fn prefill_attention_gqa_1_to_1_head_dim_64_chunked() {
    let Some(dir) = ptx_dir("prefill_attention_gqa_1_to_1_head_dim_64_chunked") else {
        return;
    };
    // A short prompt, one crossing both the 64-row tile and the 64-key tile, and a chunk of
    // 3 rows against 40 cached positions.
    let seqs = [(5, 5), (70, 70), (3, 40)];
    for arch in ["sm_90", "sm_80"] {
        run_prefill(&dir, arch, 2, 2, 64, 16, &seqs);
    }
}

#[test]
fn prefill_attention_gqa_8_to_1_head_dim_128() {
    let Some(dir) = ptx_dir("prefill_attention_gqa_8_to_1_head_dim_128") else {
        return;
    };
    // 8 heads packed per CTA leave 8 rows per tile; a decode row rides in the same batch.
    let seqs = [(17, 33), (1, 20)];
    run_prefill(&dir, "sm_90", 16, 2, 128, 16, &seqs);
}

/// The memory behaviour of both attention kernels at one Qwen3-0.6B-shaped layer (16 query
/// heads, 8 KV heads, head_dim 128, 16-position pages): decode at context 512, prefill of
/// a 128-token prompt. Printed for docs/emulator.md; asserted where the kernels' own comments
/// make a claim (16-byte K/V loads, conflict-free padded ldmatrix rows).
#[test]
fn attention_counters_at_the_qwen3_0_6b_shape() {
    let Some(dir) = ptx_dir("attention_counters_at_the_qwen3_0_6b_shape") else {
        return;
    };
    let c = Case {
        heads: 16,
        kv_heads: 8,
        head_dim: 128,
        block_size: 16,
        positions: vec![511],
        splits: 1,
    };
    let d = run_decode(&dir, "sm_90", &c);
    let p = run_prefill(&dir, "sm_90", 16, 8, 128, 16, &[(128, 128)]);
    for (name, s) in [("attention_decode_g2", &d), ("attention_prefill_d128", &p)] {
        eprintln!(
            "COUNTERS {name}: {}",
            serde_json::to_string(&s.counters).unwrap()
        );
        eprintln!(
            "  global load efficiency {:.3}, store {:.3}",
            s.counters.global_load_efficiency(),
            s.counters.global_store_efficiency()
        );
    }
    assert!(
        d.counters.global_load_efficiency() > 0.9,
        "{:?}",
        d.counters
    );
    assert_eq!(p.counters.shared_bank_conflicts, 0, "{:?}", p.counters);
}
