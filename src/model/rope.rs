//! Rotary position embedding parameters. Frequencies are computed in f32 the way
//! transformers computes them, so positions rotate by the same angles as the oracle.

#[derive(Debug, Clone)]
pub struct Rope {
    pub head_dim: usize,
    /// `1 / theta^(2i/head_dim)` for i in 0..head_dim/2.
    pub inv_freq: Vec<f32>,
}

impl Rope {
    pub fn new(head_dim: usize, theta: f64) -> Self {
        let base = theta as f32;
        let inv_freq = (0..head_dim / 2)
            .map(|i| 1.0 / base.powf((2 * i) as f32 / head_dim as f32))
            .collect();
        Rope { head_dim, inv_freq }
    }

    /// cos and sin of every rotation angle at `position`.
    pub fn cos_sin(&self, position: u32) -> (Vec<f32>, Vec<f32>) {
        let p = position as f32;
        self.inv_freq
            .iter()
            .map(|&f| {
                let a = p * f;
                (a.cos(), a.sin())
            })
            .unzip()
    }
}
