//! SIMD dot products of f32 activations with f32 or bf16 weights, compiled for the
//! best instruction set found at run time (AVX-512, AVX2+FMA, or portable).
//!
//! Every dot product accumulates in the same order: 32 independent lanes over k, then a
//! fixed pairwise tree. The 4-row kernel runs exactly the per-row arithmetic of the
//! 1-row kernel while loading each weight chunk once, so a row's result is bitwise the
//! same whatever else is in the batch.

use half::bf16;

/// Partial sums per row: two 512-bit registers' worth, so consecutive FMAs don't wait.
const LANES: usize = 32;

pub trait Widen: Copy + Send + Sync + 'static {
    fn widen(self) -> f32;
}

impl Widen for f32 {
    #[inline(always)]
    fn widen(self) -> f32 {
        self
    }
}

impl Widen for bf16 {
    #[inline(always)]
    fn widen(self) -> f32 {
        // bf16 is the top half of an f32: a shift, which vectorizes.
        f32::from_bits((self.to_bits() as u32) << 16)
    }
}

#[inline(always)]
fn dot_rows<W: Widen, const R: usize>(xs: [&[f32]; R], w: &[W]) -> [f32; R] {
    let n = w.len();
    let main = n - n % LANES;
    let mut acc = [[0f32; LANES]; R];
    // Fixed-size chunks: the compiler sees 32-wide bodies with no bounds checks inside.
    let x_chunks: [&[[f32; LANES]]; R] =
        std::array::from_fn(|r| xs[r][..main].as_chunks::<LANES>().0);
    for (c, wc) in w[..main].as_chunks::<LANES>().0.iter().enumerate() {
        let mut wide = [0f32; LANES];
        for l in 0..LANES {
            wide[l] = wc[l].widen();
        }
        for r in 0..R {
            let x = &x_chunks[r][c];
            for l in 0..LANES {
                acc[r][l] = x[l].mul_add(wide[l], acc[r][l]);
            }
        }
    }
    for c in main..n {
        let wv = w[c].widen();
        for r in 0..R {
            acc[r][c - main] = xs[r][c].mul_add(wv, acc[r][c - main]);
        }
    }
    std::array::from_fn(|r| reduce(acc[r]))
}

#[inline(always)]
fn reduce(mut acc: [f32; LANES]) -> f32 {
    let mut width = LANES / 2;
    while width > 0 {
        for l in 0..width {
            acc[l] += acc[l + width];
        }
        width /= 2;
    }
    acc[0]
}

type Dot1<W> = fn(&[f32], &[W]) -> f32;
type Dot4<W> = fn([&[f32]; 4], &[W]) -> [f32; 4];
type Dot4x2<W> = fn([&[f32]; 4], [&[W]; 2]) -> [[f32; 4]; 2];

struct Kernels {
    f32_1: Dot1<f32>,
    f32_4: Dot4<f32>,
    bf16_1: Dot1<bf16>,
    bf16_4: Dot4<bf16>,
    f32_4x2: Dot4x2<f32>,
    bf16_4x2: Dot4x2<bf16>,
}

/// Two weight rows through the 4-row kernel, for instruction sets without a fused one.
fn four_by_two<W: DotWeight>(xs: [&[f32]; 4], ws: [&[W]; 2]) -> [[f32; 4]; 2] {
    [W::dot4(xs, ws[0]), W::dot4(xs, ws[1])]
}

/// AVX2+FMA: the generic body, auto-vectorized under the enabled features.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;

    #[target_feature(enable = "avx2,fma")]
    unsafe fn one<W: Widen>(x: &[f32], w: &[W]) -> f32 {
        dot_rows::<W, 1>([x], w)[0]
    }
    #[target_feature(enable = "avx2,fma")]
    unsafe fn four<W: Widen>(xs: [&[f32]; 4], w: &[W]) -> [f32; 4] {
        dot_rows::<W, 4>(xs, w)
    }
    fn one_safe<W: Widen>(x: &[f32], w: &[W]) -> f32 {
        // SAFETY: selected only after detecting avx2 and fma.
        unsafe { one(x, w) }
    }
    fn four_safe<W: Widen>(xs: [&[f32]; 4], w: &[W]) -> [f32; 4] {
        // SAFETY: selected only after detecting avx2 and fma.
        unsafe { four(xs, w) }
    }
    pub(super) const KERNELS: Kernels = Kernels {
        f32_1: one_safe::<f32>,
        f32_4: four_safe::<f32>,
        bf16_1: one_safe::<bf16>,
        bf16_4: four_safe::<bf16>,
        f32_4x2: four_by_two::<f32>,
        bf16_4x2: four_by_two::<bf16>,
    };
}

/// AVX-512 with intrinsics: the compiler keeps the generic body's 4×32 accumulators on
/// the stack, so the 4-row kernel is written out to hold them in 8 zmm registers. The
/// lane layout and tail handling are the generic body's, so results are identical.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::{
        __m256i, __m512, _mm256_loadu_si256, _mm512_castsi512_ps, _mm512_cvtepu16_epi32,
        _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_setzero_ps, _mm512_slli_epi32, _mm512_storeu_ps,
    };

    use super::*;

    macro_rules! kernels_for {
        ($w:ty, $one:ident, $four:ident, $load:expr) => {
            /// R activation rows against C weight rows: R×C dot products, each weight
            /// chunk loaded once for R rows and each activation chunk once for C rows.
            #[target_feature(enable = "avx512f")]
            unsafe fn $four<const R: usize, const C: usize>(
                xs: [&[f32]; R],
                ws: [&[$w]; C],
            ) -> [[f32; R]; C] {
                let n = ws[0].len();
                let main = n - n % LANES;
                let mut lo = [[_mm512_setzero_ps(); R]; C];
                let mut hi = [[_mm512_setzero_ps(); R]; C];
                let mut c = 0;
                while c < main {
                    // SAFETY: c + 32 <= main <= the length of every w and x row.
                    unsafe {
                        for j in 0..C {
                            let w_lo = $load(ws[j].as_ptr().add(c));
                            let w_hi = $load(ws[j].as_ptr().add(c + 16));
                            for r in 0..R {
                                let x = xs[r].as_ptr().add(c);
                                lo[j][r] = _mm512_fmadd_ps(_mm512_loadu_ps(x), w_lo, lo[j][r]);
                                hi[j][r] =
                                    _mm512_fmadd_ps(_mm512_loadu_ps(x.add(16)), w_hi, hi[j][r]);
                            }
                        }
                    }
                    c += LANES;
                }
                std::array::from_fn(|j| {
                    std::array::from_fn(|r| {
                        let mut acc = [0f32; LANES];
                        // SAFETY: acc holds exactly 32 f32s, two 16-lane stores.
                        unsafe {
                            _mm512_storeu_ps(acc.as_mut_ptr(), lo[j][r]);
                            _mm512_storeu_ps(acc.as_mut_ptr().add(16), hi[j][r]);
                        }
                        for t in main..n {
                            acc[t - main] = xs[r][t].mul_add(ws[j][t].widen(), acc[t - main]);
                        }
                        reduce(acc)
                    })
                })
            }

            fn $one(x: &[f32], w: &[$w]) -> f32 {
                assert!(x.len() >= w.len());
                // SAFETY: selected only after is_x86_feature_detected!("avx512f"); rows
                // are at least as long as w (asserted).
                unsafe { $four::<1, 1>([x], [w])[0][0] }
            }
        };
    }

    #[inline(always)]
    unsafe fn load_f32(p: *const f32) -> __m512 {
        // SAFETY: the caller guarantees 16 readable f32s at p.
        unsafe { _mm512_loadu_ps(p) }
    }

    #[inline(always)]
    unsafe fn load_bf16(p: *const bf16) -> __m512 {
        // SAFETY: the caller guarantees 16 readable bf16s at p; bf16 is the high half of
        // an f32, so widening is a zero-extension and a shift.
        unsafe {
            let raw = _mm256_loadu_si256(p as *const __m256i);
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(raw)))
        }
    }

    kernels_for!(f32, one_f32, rows_f32, load_f32);
    kernels_for!(bf16, one_bf16, rows_bf16, load_bf16);

    fn four_f32(xs: [&[f32]; 4], w: &[f32]) -> [f32; 4] {
        assert!(xs.iter().all(|x| x.len() >= w.len()));
        // SAFETY: avx512f detected before selection; rows checked above.
        unsafe { rows_f32::<4, 1>(xs, [w])[0] }
    }

    fn four_bf16(xs: [&[f32]; 4], w: &[bf16]) -> [f32; 4] {
        assert!(xs.iter().all(|x| x.len() >= w.len()));
        // SAFETY: avx512f detected before selection; rows checked above.
        unsafe { rows_bf16::<4, 1>(xs, [w])[0] }
    }

    fn four_by_two_f32(xs: [&[f32]; 4], ws: [&[f32]; 2]) -> [[f32; 4]; 2] {
        assert!(ws[0].len() == ws[1].len() && xs.iter().all(|x| x.len() >= ws[0].len()));
        // SAFETY: avx512f detected before selection; lengths checked above.
        unsafe { rows_f32::<4, 2>(xs, ws) }
    }

    fn four_by_two_bf16(xs: [&[f32]; 4], ws: [&[bf16]; 2]) -> [[f32; 4]; 2] {
        assert!(ws[0].len() == ws[1].len() && xs.iter().all(|x| x.len() >= ws[0].len()));
        // SAFETY: avx512f detected before selection; lengths checked above.
        unsafe { rows_bf16::<4, 2>(xs, ws) }
    }

    pub(super) const KERNELS: Kernels = Kernels {
        f32_1: one_f32,
        f32_4: four_f32,
        bf16_1: one_bf16,
        bf16_4: four_bf16,
        f32_4x2: four_by_two_f32,
        bf16_4x2: four_by_two_bf16,
    };
}

const PORTABLE: Kernels = Kernels {
    f32_1: |x, w| dot_rows::<f32, 1>([x], w)[0],
    f32_4: dot_rows::<f32, 4>,
    bf16_1: |x, w| dot_rows::<bf16, 1>([x], w)[0],
    bf16_4: dot_rows::<bf16, 4>,
    f32_4x2: four_by_two::<f32>,
    bf16_4x2: four_by_two::<bf16>,
};

fn kernels() -> &'static Kernels {
    static K: std::sync::OnceLock<&'static Kernels> = std::sync::OnceLock::new();
    K.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") {
                return &avx512::KERNELS;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return &avx2::KERNELS;
            }
        }
        &PORTABLE
    })
}

/// Weight element types the matrix kernels accept.
pub trait DotWeight: Widen {
    fn dot1(x: &[f32], w: &[Self]) -> f32;
    fn dot4(xs: [&[f32]; 4], w: &[Self]) -> [f32; 4];
    /// Four activation rows against two weight rows.
    fn dot4x2(xs: [&[f32]; 4], ws: [&[Self]; 2]) -> [[f32; 4]; 2];
}

impl DotWeight for f32 {
    fn dot1(x: &[f32], w: &[f32]) -> f32 {
        (kernels().f32_1)(x, w)
    }
    fn dot4(xs: [&[f32]; 4], w: &[f32]) -> [f32; 4] {
        (kernels().f32_4)(xs, w)
    }
    fn dot4x2(xs: [&[f32]; 4], ws: [&[f32]; 2]) -> [[f32; 4]; 2] {
        (kernels().f32_4x2)(xs, ws)
    }
}

impl DotWeight for bf16 {
    fn dot1(x: &[f32], w: &[bf16]) -> f32 {
        (kernels().bf16_1)(x, w)
    }
    fn dot4(xs: [&[f32]; 4], w: &[bf16]) -> [f32; 4] {
        (kernels().bf16_4)(xs, w)
    }
    fn dot4x2(xs: [&[f32]; 4], ws: [&[bf16]; 2]) -> [[f32; 4]; 2] {
        (kernels().bf16_4x2)(xs, ws)
    }
}

/// f32 dot product (attention scores), same reduction order as the matrix kernels.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    f32::dot1(a, &b[..a.len()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_row_kernel_is_bitwise_the_one_row_kernel() {
        // Also the portable body, so every ISA computes the same function.
        for k in [1, 31, 32, 33, 100, 1024] {
            let rows: Vec<Vec<f32>> = (0..4)
                .map(|r| {
                    (0..k)
                        .map(|i| ((i * 7 + r * 13) as f32 * 0.37).sin())
                        .collect()
                })
                .collect();
            let w: Vec<bf16> = (0..k)
                .map(|i| bf16::from_f32((i as f32 * 0.11).cos()))
                .collect();
            let four = bf16::dot4([&rows[0], &rows[1], &rows[2], &rows[3]], &w);
            let w2: Vec<bf16> = w.iter().rev().copied().collect();
            let pair = bf16::dot4x2([&rows[0], &rows[1], &rows[2], &rows[3]], [&w, &w2]);
            for r in 0..4 {
                assert_eq!(pair[0][r].to_bits(), four[r].to_bits(), "k={k} row {r} 4x2");
                assert_eq!(
                    pair[1][r].to_bits(),
                    bf16::dot1(&rows[r], &w2).to_bits(),
                    "k={k} row {r} 4x2 second"
                );
                assert_eq!(
                    four[r].to_bits(),
                    bf16::dot1(&rows[r], &w).to_bits(),
                    "k={k} row {r}"
                );
                assert_eq!(
                    four[r].to_bits(),
                    (PORTABLE.bf16_1)(&rows[r], &w).to_bits(),
                    "k={k} row {r} portable"
                );
            }
            let wf: Vec<f32> = w.iter().map(|v| v.to_f32()).collect();
            let want: f64 = rows[0]
                .iter()
                .zip(&wf)
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum();
            assert!((f32::dot1(&rows[0], &wf) as f64 - want).abs() < 1e-4);
        }
    }
}
