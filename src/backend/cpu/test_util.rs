//! Finite-difference checks for the backward kernels' unit tests.

/// Deterministic values in [-1, 1).
pub fn rand_vec(len: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2654435761).wrapping_add(12345);
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Central differences of a scalar function of `x`, in f64 around f32 inputs.
pub fn numeric_grad(f: impl Fn(&[f32]) -> f64, x: &[f32]) -> Vec<f32> {
    let h = 1e-3f32;
    (0..x.len())
        .map(|i| {
            let mut p = x.to_vec();
            p[i] += h;
            let mut m = x.to_vec();
            m[i] -= h;
            ((f(&p) - f(&m)) / (2.0 * h as f64)) as f32
        })
        .collect()
}

/// Max abs difference relative to the largest reference magnitude.
pub fn assert_close(got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() / scale < tol,
            "element {i}: {g} vs {w} (scale {scale})"
        );
    }
}
