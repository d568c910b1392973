//! Host side of training attention over packed sequences (kernels/attention_varlen.cu): builds
//! the query-row and key tiles of each sequence and launches the forward, or the backward's
//! three kernels (D = rowsum(dO∘O), then dQ and dK/dV, each owned by one kernel).

use cudarc::driver::{CudaSlice, PushKernelArg};

use super::device::{CudaBackend, grid};
use super::ops::{CudaTensor, launch_err, same_shape, shape_err};
use super::train::CudaStats;
use crate::Result;
use crate::backend::AttentionShape;

/// Query rows per forward/dQ tile and keys per dK/dV tile (VA_ROWS, VA_KEYS in the kernel).
const ROW_TILE: usize = 16;
const KEY_TILE: usize = 16;
const MAX_HEAD_DIM: usize = 128;

/// `{first row, rows, first row of the sequence}` per query tile.
fn row_tiles(bounds: &[usize]) -> Vec<u32> {
    let mut tiles = Vec::new();
    for w in bounds.windows(2) {
        for r0 in (w[0]..w[1]).step_by(ROW_TILE) {
            tiles.extend([r0 as u32, ROW_TILE.min(w[1] - r0) as u32, w[0] as u32]);
        }
    }
    tiles
}

/// `{first key, keys, end row of the sequence}` per key tile.
fn key_tiles(bounds: &[usize]) -> Vec<u32> {
    let mut tiles = Vec::new();
    for w in bounds.windows(2) {
        for k0 in (w[0]..w[1]).step_by(KEY_TILE) {
            tiles.extend([k0 as u32, KEY_TILE.min(w[1] - k0) as u32, w[1] as u32]);
        }
    }
    tiles
}

fn check(
    q: &CudaTensor,
    k: &CudaTensor,
    v: &CudaTensor,
    bounds: &[usize],
    shape: AttentionShape,
) -> Result<()> {
    let AttentionShape {
        num_heads,
        num_kv_heads,
        head_dim,
    } = shape;
    same_shape("varlen_attention (k, v)", k, v)?;
    let ordered = bounds.first() == Some(&0)
        && bounds.last() == Some(&q.rows)
        && bounds.windows(2).all(|w| w[0] <= w[1]);
    if !ordered
        || num_kv_heads == 0
        || num_heads % num_kv_heads != 0
        || !head_dim.is_multiple_of(2)
        || head_dim > MAX_HEAD_DIM
        || q.cols != num_heads * head_dim
        || k.cols != num_kv_heads * head_dim
        || k.rows != q.rows
    {
        return Err(shape_err(
            "varlen_attention",
            format!(
                "q {}x{}, k {}x{}, bounds {bounds:?}, {shape:?} (head_dim even, <= {MAX_HEAD_DIM})",
                q.rows, q.cols, k.rows, k.cols
            ),
        ));
    }
    Ok(())
}

fn dims(shape: AttentionShape) -> (i32, i32, i32, f32) {
    (
        shape.num_heads as i32,
        shape.num_kv_heads as i32,
        shape.head_dim as i32,
        1.0 / (shape.head_dim as f32).sqrt(),
    )
}

impl CudaBackend {
    pub(super) fn varlen_attention_impl(
        &self,
        q: &CudaTensor,
        k: &CudaTensor,
        v: &CudaTensor,
        bounds: &[usize],
        shape: AttentionShape,
    ) -> Result<(CudaTensor, CudaStats)> {
        check(q, k, v, bounds, shape)?;
        let mut out = self.tensor(q.rows, q.cols)?;
        let mut lse = CudaStats {
            data: self.alloc_f32(q.rows * shape.num_heads)?,
            rows: q.rows,
            cols: shape.num_heads,
        };
        let tiles = row_tiles(bounds);
        if tiles.is_empty() {
            return Ok((out, lse));
        }
        let tiles_d = self.upload(&tiles)?;
        let (nh, nkv, hd, scale) = dims(shape);
        let mut b = self
            .stream()
            .launch_builder(self.func("attention_varlen_fwd")?);
        b.arg(&q.data).arg(&k.data).arg(&v.data).arg(&tiles_d);
        b.arg(&mut out.data).arg(&mut lse.data);
        b.arg(&nh).arg(&nkv).arg(&hd).arg(&scale);
        // SAFETY: shapes checked above; every tile lies inside one sequence of q's rows, one
        // block per (tile, head) writes only its own rows' outputs and statistics.
        unsafe { b.launch(grid(tiles.len() / 3, shape.num_heads, 1, 128)) }
            .map_err(launch_err("attention_varlen_fwd"))?;
        Ok((out, lse))
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn varlen_attention_backward_impl(
        &self,
        q: &CudaTensor,
        k: &CudaTensor,
        v: &CudaTensor,
        out: &CudaTensor,
        lse: &CudaStats,
        d_out: &CudaTensor,
        bounds: &[usize],
        shape: AttentionShape,
    ) -> Result<(CudaTensor, CudaTensor, CudaTensor)> {
        check(q, k, v, bounds, shape)?;
        same_shape("varlen_attention_backward (out)", q, out)?;
        same_shape("varlen_attention_backward (d_out)", q, d_out)?;
        if (lse.rows, lse.cols) != (q.rows, shape.num_heads) {
            return Err(shape_err(
                "varlen_attention_backward",
                format!("statistics {}x{} for {} rows", lse.rows, lse.cols, q.rows),
            ));
        }
        let mut dq = self.tensor(q.rows, q.cols)?;
        let mut dk = self.tensor(k.rows, k.cols)?;
        let mut dv = self.tensor(v.rows, v.cols)?;
        let (qt, kt) = (row_tiles(bounds), key_tiles(bounds));
        if qt.is_empty() {
            return Ok((dq, dk, dv));
        }
        let (nh, nkv, hd, scale) = dims(shape);
        let mut row_dot: CudaSlice<f32> = self.alloc_f32(q.rows * shape.num_heads)?;
        let mut b = self
            .stream()
            .launch_builder(self.func("attention_varlen_row_dot")?);
        b.arg(&d_out.data).arg(&out.data).arg(&mut row_dot);
        b.arg(&nh).arg(&hd);
        // SAFETY: out and d_out are rows × heads·head_dim; one warp per (row, head).
        unsafe { b.launch(grid(q.rows, shape.num_heads, 1, 32)) }
            .map_err(launch_err("attention_varlen_row_dot"))?;

        let qt_d = self.upload(&qt)?;
        let mut b = self
            .stream()
            .launch_builder(self.func("attention_varlen_bwd_dq")?);
        b.arg(&q.data).arg(&k.data).arg(&v.data).arg(&d_out.data);
        b.arg(&lse.data).arg(&row_dot).arg(&qt_d).arg(&mut dq.data);
        b.arg(&nh).arg(&nkv).arg(&hd).arg(&scale);
        // SAFETY: as the forward; each block writes only its own tile's dQ rows of one head.
        unsafe { b.launch(grid(qt.len() / 3, shape.num_heads, 1, 128)) }
            .map_err(launch_err("attention_varlen_bwd_dq"))?;

        let kt_d = self.upload(&kt)?;
        let mut b = self
            .stream()
            .launch_builder(self.func("attention_varlen_bwd_dkdv")?);
        b.arg(&q.data).arg(&k.data).arg(&v.data).arg(&d_out.data);
        b.arg(&lse.data).arg(&row_dot).arg(&kt_d);
        b.arg(&mut dk.data).arg(&mut dv.data);
        b.arg(&nh).arg(&nkv).arg(&hd).arg(&scale);
        // SAFETY: every key tile lies inside one sequence; each block writes only its own keys'
        // dK/dV rows of one KV head.
        unsafe { b.launch(grid(kt.len() / 3, shape.num_kv_heads, 1, 128)) }
            .map_err(launch_err("attention_varlen_bwd_dkdv"))?;
        Ok((dq, dk, dv))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_stay_inside_their_sequence() {
        let bounds = [0, 5, 5, 40];
        let rt = row_tiles(&bounds);
        assert_eq!(rt, vec![0, 5, 0, 5, 16, 5, 21, 16, 5, 37, 3, 5], "{rt:?}");
        let kt = key_tiles(&bounds);
        assert_eq!(kt, vec![0, 5, 5, 5, 16, 40, 21, 16, 40, 37, 3, 40]);
    }
}
