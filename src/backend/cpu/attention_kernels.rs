//! The three inner loops of CPU attention, each compiled for the best instruction set
//! (`simd.rs`): scores of 16 or 32 queries against 8 keys, the softmax's numerators, and
//! probability-weighted values for 8 queries.
//!
//! Why these shapes: a score is a dot product over head_dim, and reducing it inside one
//! register (then across lanes) costs a horizontal sum per query-key pair. Here the 16
//! lanes of a register are 16 *queries*, so every lane runs one fused multiply-add per
//! element of head_dim, in order from element 0, with no horizontal step; a key element
//! is a broadcast. The weighted values keep a query's output block in registers across
//! all keys instead of loading and storing it once per key.
//!
//! What makes them batch-invariant: every output element is one chain of operations that
//! depends on its own inputs only. A score is `fma(q[d], k[d], acc)` for d = 0, 1, …
//! starting from 0, whichever lane or neighbours it shares a register with; a weighted
//! value is `fma(v[j], p[j], acc)` for j = 0, 1, … up to the query's own length. So the
//! number of queries in a step, their order and how the caller groups them change which
//! work shares a register, never a number.

use super::precision::round_bf16;
use super::simd::multiversion;

/// Queries per score register: 16 f32 lanes, one 512-bit register.
pub const QUERY_LANES: usize = 16;
/// Queries per pass of the wide score kernel: two registers share each key broadcast.
pub const WIDE_LANES: usize = 2 * QUERY_LANES;
/// Keys per pass of the score kernel: 8 accumulator registers per pass.
pub const KEY_STEP: usize = 8;
/// Queries per pass of the weighted-value kernel, sharing each value load: 8 queries of
/// 32 outputs keep 16 accumulator registers.
pub const VALUE_QUERIES: usize = 8;

/// Scores of L queries against 8 keys. `qt[d * stride ..][..L]` holds element d of the
/// L queries; `keys[b]` is key b. Returns `acc[b][lane]`, unscaled.
#[inline(always)]
fn scores_body<const L: usize>(
    qt: &[f32],
    stride: usize,
    keys: &[&[f32]; KEY_STEP],
    head_dim: usize,
) -> [[f32; L]; KEY_STEP] {
    let keys: [&[f32]; KEY_STEP] = std::array::from_fn(|b| &keys[b][..head_dim]);
    let mut acc = [[0f32; L]; KEY_STEP];
    for d in 0..head_dim {
        let q: &[f32; L] = qt[d * stride..][..L].try_into().expect("an L-lane slice");
        for b in 0..KEY_STEP {
            let k = keys[b][d];
            for l in 0..L {
                acc[b][l] = q[l].mul_add(k, acc[b][l]);
            }
        }
    }
    acc
}

multiversion! {
    pub fn scores(
        qt: &[f32],
        stride: usize,
        keys: &[&[f32]; KEY_STEP],
        head_dim: usize,
    ) -> [[f32; QUERY_LANES]; KEY_STEP] = scores_body::<QUERY_LANES>;
}

multiversion! {
    fn scores_wide_auto(
        qt: &[f32],
        stride: usize,
        keys: &[&[f32]; KEY_STEP],
        head_dim: usize,
    ) -> [[f32; WIDE_LANES]; KEY_STEP] = scores_body::<WIDE_LANES>;
}

/// `scores` for 32 queries: half the key loads per score.
pub fn scores_wide(
    qt: &[f32],
    stride: usize,
    keys: &[&[f32]; KEY_STEP],
    head_dim: usize,
) -> [[f32; WIDE_LANES]; KEY_STEP] {
    #[cfg(target_arch = "x86_64")]
    if super::simd::isa() == super::simd::Isa::Avx512 {
        // SAFETY: isa() detected avx512f on this CPU.
        return unsafe { avx512::scores_wide(qt, stride, keys, head_dim) };
    }
    scores_wide_auto(qt, stride, keys, head_dim)
}

/// Below this the result is flushed to 0 (e^-87 is just above the smallest normal f32,
/// e^-87.34), so a masked score of -inf weighs exactly nothing.
const EXP_FLOOR: f32 = -87.0;

/// e^x within 2 ulp for x in [-87, 88] (softmax only asks for x ≤ 0); 0 below, e^88
/// above, NaN for NaN. x = n·ln2 + r with |r| ≤ ln2/2, e^r by Cephes' degree-6
/// polynomial, 2^n through the exponent bits. Branch-free, so it vectorizes; fused
/// multiply-adds throughout, so every instruction set gets the same bits (libm's expf
/// differs between libms and does not vectorize).
#[inline(always)]
pub fn exp_one(x: f32) -> f32 {
    // 1.5 · 2^23: adding it rounds to an integer, ties to even.
    const ROUND: f32 = 12_582_912.0;
    let xc = x.clamp(EXP_FLOOR, 88.0);
    let n = xc.mul_add(std::f32::consts::LOG2_E, ROUND) - ROUND;
    // ln 2 in two parts (Cody–Waite) so n·ln2 subtracts without losing r's bits.
    let r = n.mul_add(-0.693_359_4, xc);
    let r = n.mul_add(2.121_944_4e-4, r);
    let mut p = 1.987_569_1e-4f32;
    p = p.mul_add(r, 1.398_199_9e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 0.166_666_65);
    p = p.mul_add(r, 0.5);
    let y = (p * r).mul_add(r, r) + 1.0;
    let two_n = f32::from_bits(((n as i32 + 127) << 23) as u32);
    let e = y * two_n;
    if x.is_nan() {
        x
    } else if x < EXP_FLOOR {
        0.0
    } else {
        e
    }
}

#[inline(always)]
fn softmax_numerators_body(p: &mut [f32], max: &[f32], sum: &mut [f32], bf16: bool) {
    for row in p.chunks_mut(max.len()) {
        for ((x, &m), s) in row.iter_mut().zip(max).zip(sum.iter_mut()) {
            let e = exp_one(*x - m);
            *s += e;
            *x = if bf16 { round_bf16(e) } else { e };
        }
    }
}

multiversion! {
    /// For each element x in column c of the rows of `p` (each `max.len()` wide):
    /// e = e^(x - max[c]), added to `sum[c]` row after row, then stored in place of x,
    /// rounded to bf16 if `bf16` (the sum keeps the unrounded e, as torch's does).
    pub fn softmax_numerators(p: &mut [f32], max: &[f32], sum: &mut [f32], bf16: bool) =
        softmax_numerators_body;
}

/// Adds keys `range` into the weighted values of up to 8 queries, `W` output elements
/// from `d0`: `acc[q][x] += p[j·stride + lanes[q]] · values[j][d0 + x]` for j in order.
/// Only `lanes[..active]` are touched; the others' accumulators keep their values.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn weighted_values_body<const W: usize>(
    p: &[f32],
    stride: usize,
    lanes: &[usize; VALUE_QUERIES],
    active: usize,
    range: std::ops::Range<usize>,
    values: &[&[f32]],
    d0: usize,
    acc: &mut [[f32; W]; VALUE_QUERIES],
) {
    let row =
        |j: usize| -> &[f32; W] { values[j][d0..][..W].try_into().expect("a W-element slice") };
    if active == VALUE_QUERIES {
        // All queries in locals: the compiler keeps the 8·W accumulators in registers.
        let mut a = *acc;
        for j in range {
            let (v, w) = (row(j), &p[j * stride..][..stride]);
            for q in 0..VALUE_QUERIES {
                let wq = w[lanes[q]];
                for x in 0..W {
                    a[q][x] = v[x].mul_add(wq, a[q][x]);
                }
            }
        }
        *acc = a;
        return;
    }
    for j in range {
        let (v, w) = (row(j), &p[j * stride..][..stride]);
        for q in 0..active {
            let wq = w[lanes[q]];
            for x in 0..W {
                acc[q][x] = v[x].mul_add(wq, acc[q][x]);
            }
        }
    }
}

macro_rules! weighted_values_of_width {
    ($($name:ident = $w:literal),*) => {$(
        multiversion! {
            #[allow(clippy::too_many_arguments)]
            pub fn $name(
                p: &[f32],
                stride: usize,
                lanes: &[usize; VALUE_QUERIES],
                active: usize,
                range: std::ops::Range<usize>,
                values: &[&[f32]],
                d0: usize,
                acc: &mut [[f32; $w]; VALUE_QUERIES],
            ) = weighted_values_body::<$w>;
        }
    )*};
}

// 32 for head dims of 32 and up; 8 and 1 finish any other width.
weighted_values_of_width!(
    weighted_values_32_auto = 32,
    weighted_values_8 = 8,
    weighted_values_1 = 1
);

/// `weighted_values` 32 outputs wide.
#[allow(clippy::too_many_arguments)]
pub fn weighted_values_32(
    p: &[f32],
    stride: usize,
    lanes: &[usize; VALUE_QUERIES],
    active: usize,
    range: std::ops::Range<usize>,
    values: &[&[f32]],
    d0: usize,
    acc: &mut [[f32; 32]; VALUE_QUERIES],
) {
    #[cfg(target_arch = "x86_64")]
    if active == VALUE_QUERIES && super::simd::isa() == super::simd::Isa::Avx512 {
        // SAFETY: isa() detected avx512f on this CPU.
        return unsafe { avx512::weighted_values_32(p, stride, lanes, range, values, d0, acc) };
    }
    weighted_values_32_auto(p, stride, lanes, active, range, values, d0, acc)
}

/// The two hottest loops written with intrinsics: compiled from the portable bodies,
/// LLVM folds the shared operand's load into every FMA, so 16 FMAs issue 24 loads and
/// the load ports, not the FMA units, set the pace. Here each shared operand is loaded
/// once per step. Same operations per lane, in the same order, as the bodies above.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{KEY_STEP, VALUE_QUERIES, WIDE_LANES};

    #[target_feature(enable = "avx512f")]
    pub unsafe fn scores_wide(
        qt: &[f32],
        stride: usize,
        keys: &[&[f32]; KEY_STEP],
        head_dim: usize,
    ) -> [[f32; WIDE_LANES]; KEY_STEP] {
        let last = head_dim
            .checked_sub(1)
            .and_then(|d| d.checked_mul(stride))
            .and_then(|o| o.checked_add(WIDE_LANES));
        assert!(head_dim == 0 || last.is_some_and(|l| l <= qt.len()));
        assert!(keys.iter().all(|k| k.len() >= head_dim));
        let mut acc = [_mm512_setzero_ps(); 2 * KEY_STEP];
        for d in 0..head_dim {
            // SAFETY: the asserts above bound every read.
            let q = unsafe { qt.as_ptr().add(d * stride) };
            let (q0, q1) = unsafe { (_mm512_loadu_ps(q), _mm512_loadu_ps(q.add(16))) };
            for b in 0..KEY_STEP {
                // SAFETY: d < head_dim <= keys[b].len().
                let k = _mm512_set1_ps(unsafe { *keys[b].get_unchecked(d) });
                acc[2 * b] = _mm512_fmadd_ps(q0, k, acc[2 * b]);
                acc[2 * b + 1] = _mm512_fmadd_ps(q1, k, acc[2 * b + 1]);
            }
        }
        let mut out = [[0f32; WIDE_LANES]; KEY_STEP];
        for (b, o) in out.iter_mut().enumerate() {
            // SAFETY: each row of out holds 32 floats.
            unsafe {
                _mm512_storeu_ps(o.as_mut_ptr(), acc[2 * b]);
                _mm512_storeu_ps(o.as_mut_ptr().add(16), acc[2 * b + 1]);
            }
        }
        out
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn weighted_values_32(
        p: &[f32],
        stride: usize,
        lanes: &[usize; VALUE_QUERIES],
        range: std::ops::Range<usize>,
        values: &[&[f32]],
        d0: usize,
        acc: &mut [[f32; 32]; VALUE_QUERIES],
    ) {
        let end = range.end;
        assert!(end <= values.len() && end.checked_mul(stride).is_some_and(|l| l <= p.len()));
        assert!(lanes.iter().all(|&l| l < stride));
        let mut a = [_mm512_setzero_ps(); 2 * VALUE_QUERIES];
        for q in 0..VALUE_QUERIES {
            // SAFETY: each row of acc holds 32 floats.
            unsafe {
                a[2 * q] = _mm512_loadu_ps(acc[q].as_ptr());
                a[2 * q + 1] = _mm512_loadu_ps(acc[q].as_ptr().add(16));
            }
        }
        for j in range {
            let row = &values[j][d0..][..32];
            // SAFETY: row holds 32 floats; j < end bounds p's row, lanes < stride.
            let (v0, v1) = unsafe {
                (
                    _mm512_loadu_ps(row.as_ptr()),
                    _mm512_loadu_ps(row.as_ptr().add(16)),
                )
            };
            let w = unsafe { p.as_ptr().add(j * stride) };
            for q in 0..VALUE_QUERIES {
                let wq = _mm512_set1_ps(unsafe { *w.add(lanes[q]) });
                a[2 * q] = _mm512_fmadd_ps(v0, wq, a[2 * q]);
                a[2 * q + 1] = _mm512_fmadd_ps(v1, wq, a[2 * q + 1]);
            }
        }
        for q in 0..VALUE_QUERIES {
            // SAFETY: each row of acc holds 32 floats.
            unsafe {
                _mm512_storeu_ps(acc[q].as_mut_ptr(), a[2 * q]);
                _mm512_storeu_ps(acc[q].as_mut_ptr().add(16), a[2 * q + 1]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_f64_and_flushes_below_the_floor() {
        let mut worst = 0f64;
        for i in 0..200_000 {
            let x = -87.0 + 87.5 * (i as f32 / 200_000.0);
            let want = (x as f64).exp();
            let got = exp_one(x) as f64;
            let ulp = (want as f32).next_up() as f64 - want as f32 as f64;
            worst = worst.max((got - want).abs() / ulp);
        }
        assert!(worst <= 2.0, "worst error {worst} ulp");
        assert_eq!(exp_one(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_one(-87.5), 0.0);
        assert_eq!(exp_one(0.0), 1.0);
        assert!(exp_one(f32::NAN).is_nan());
    }

    #[test]
    fn every_instruction_set_computes_the_portable_function() {
        let head_dim = 37;
        let qt: Vec<f32> = (0..head_dim * 16)
            .map(|i| (i as f32 * 0.37).sin())
            .collect();
        let rows: Vec<Vec<f32>> = (0..KEY_STEP)
            .map(|b| {
                (0..head_dim)
                    .map(|d| ((b * 7 + d) as f32 * 0.11).cos())
                    .collect()
            })
            .collect();
        let keys: [&[f32]; KEY_STEP] = std::array::from_fn(|b| rows[b].as_slice());
        let fast = scores(&qt, 16, &keys, head_dim);
        assert_eq!(fast, scores_body::<16>(&qt, 16, &keys, head_dim));
        let qt32: Vec<f32> = (0..head_dim * 32)
            .map(|i| qt[i / 32 * 16 + i % 16])
            .collect();
        let wide = scores_wide(&qt32, 32, &keys, head_dim);
        assert_eq!(wide, scores_body::<32>(&qt32, 32, &keys, head_dim));
        assert_eq!(wide[5][3].to_bits(), fast[5][3].to_bits());
        assert_eq!(wide[5][19].to_bits(), fast[5][3].to_bits());
        // Lane 3's score is its own fma chain, whatever the other lanes hold.
        let mut chain = 0f32;
        for d in 0..head_dim {
            chain = qt[d * 16 + 3].mul_add(rows[5][d], chain);
        }
        assert_eq!(fast[5][3].to_bits(), chain.to_bits());

        for bf16 in [false, true] {
            let mut xs: Vec<f32> = (0..100).map(|i| -(i as f32) * 0.9).collect();
            let mut slow = xs.clone();
            let max: Vec<f32> = (0..20).map(|c| c as f32 * 0.1).collect();
            let (mut sum, mut slow_sum) = (vec![0f32; 20], vec![0f32; 20]);
            softmax_numerators(&mut xs, &max, &mut sum, bf16);
            softmax_numerators_body(&mut slow, &max, &mut slow_sum, bf16);
            assert_eq!((&xs, &sum), (&slow, &slow_sum));
            // Column 3: the sum of its five unrounded exponentials, in row order.
            let e = |r: usize| exp_one(-((r * 20 + 3) as f32) * 0.9 - 0.3);
            assert_eq!(sum[3], (0..5).fold(0.0, |a, r| a + e(r)));
            assert_eq!(xs[20 + 3], if bf16 { round_bf16(e(1)) } else { e(1) });
        }

        let vals: Vec<Vec<f32>> = (0..10)
            .map(|j| (0..64).map(|x| ((j * 64 + x) as f32).sin()).collect())
            .collect();
        let values: Vec<&[f32]> = vals.iter().map(|v| v.as_slice()).collect();
        let p: Vec<f32> = (0..10 * 16).map(|i| (i as f32 * 0.3).cos().abs()).collect();
        let lanes = [1, 2, 7, 9, 10, 11, 12, 13];
        for active in [8, 2] {
            let mut fast = [[0.5f32; 32]; VALUE_QUERIES];
            let mut slow = fast;
            weighted_values_32(&p, 16, &lanes, active, 0..10, &values, 32, &mut fast);
            weighted_values_body::<32>(&p, 16, &lanes, active, 0..10, &values, 32, &mut slow);
            assert_eq!(fast, slow);
            let mut chain = 0.5f32;
            for (j, v) in values.iter().enumerate() {
                chain = v[32 + 4].mul_add(p[j * 16 + 2], chain);
            }
            assert_eq!(fast[1][4].to_bits(), chain.to_bits());
        }
    }
}
