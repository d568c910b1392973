//! SwiGLU: `silu(gate) * up`, where `silu(g) = g * sigmoid(g)`.

use rayon::prelude::*;

use super::CpuTensor;

pub fn swiglu(gate: &CpuTensor, up: &CpuTensor) -> CpuTensor {
    let data = gate
        .data
        .par_iter()
        .zip(up.data.par_iter())
        .map(|(&g, &u)| g / (1.0 + (-g).exp()) * u)
        .collect();
    CpuTensor::new(data, gate.rows, gate.cols)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        let g = CpuTensor::new(vec![0.0, 1.0, -1.0], 1, 3);
        let u = CpuTensor::new(vec![5.0, 2.0, 2.0], 1, 3);
        let y = swiglu(&g, &u);
        let s1 = 1.0 / (1.0 + (-1.0f32).exp());
        assert_eq!(y.data[0], 0.0);
        assert!((y.data[1] - 2.0 * s1).abs() < 1e-7);
        assert!((y.data[2] - 2.0 * -(1.0 - s1)).abs() < 1e-6);
    }
}
