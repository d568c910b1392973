//! A training batch: sequences packed end to end, each attending only to itself, with a
//! next-token target and a loss weight per row (0 masks a row out of the loss).

use crate::{Error, Result};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrainBatch {
    pub ids: Vec<u32>,
    /// Positions restart at 0 in every sequence.
    pub positions: Vec<u32>,
    /// Row offsets: sequence s is rows `bounds[s]..bounds[s+1]`.
    pub bounds: Vec<usize>,
    /// The id row t should predict (its successor; unused on a sequence's last row).
    pub targets: Vec<u32>,
    pub weights: Vec<f32>,
}

impl TrainBatch {
    /// `sequences`: (ids, weights) with one weight per next-token prediction
    /// (`weights.len() == ids.len() - 1`).
    pub fn pack(sequences: &[(Vec<u32>, Vec<f32>)]) -> Result<Self> {
        let mut b = TrainBatch {
            bounds: vec![0],
            ..Default::default()
        };
        for (i, (ids, weights)) in sequences.iter().enumerate() {
            if ids.len() < 2 || weights.len() + 1 != ids.len() {
                return Err(Error::InvalidInput(format!(
                    "training sequence {i}: {} ids need {} loss weights, got {}",
                    ids.len(),
                    ids.len().saturating_sub(1),
                    weights.len()
                )));
            }
            if let Some(w) = weights.iter().find(|w| !w.is_finite()) {
                return Err(Error::InvalidInput(format!(
                    "training sequence {i}: loss weight {w}"
                )));
            }
            b.ids.extend_from_slice(ids);
            b.positions.extend(0..ids.len() as u32);
            b.targets.extend_from_slice(&ids[1..]);
            b.targets.push(0);
            b.weights.extend_from_slice(weights);
            b.weights.push(0.0);
            b.bounds.push(b.ids.len());
        }
        Ok(b)
    }

    pub fn num_tokens(&self) -> usize {
        self.ids.len()
    }

    /// Σ of loss weights: the usual normalizer (mean over the unmasked tokens).
    pub fn weight_sum(&self) -> f32 {
        self.weights.iter().sum()
    }

    pub fn append(&mut self, other: &TrainBatch) {
        let offset = self.ids.len();
        self.ids.extend_from_slice(&other.ids);
        self.positions.extend_from_slice(&other.positions);
        self.targets.extend_from_slice(&other.targets);
        self.weights.extend_from_slice(&other.weights);
        if self.bounds.is_empty() {
            self.bounds.push(0);
        }
        self.bounds
            .extend(other.bounds.iter().skip(1).map(|b| b + offset));
    }
}
