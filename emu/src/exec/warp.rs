//! Warp-collective instructions, executed once every lane that takes part has arrived:
//! `shfl.sync` (all four modes, clamp and segment mask, membermask checked), and the
//! tensor-core pair `ldmatrix` and `mma.sync.m16n8k16` with the ISA's fragment layouts.

use super::counters::Kind;
use super::float::bf16_to_f32;
use super::thread::{BlockEnv, Thread};
use crate::ptx::instr::{Op, ShflMode, Space};

/// `shfl.sync` for the lanes of one warp that met at it. `lanes[i]` is the thread index of
/// lane i or None where the warp has no such thread (a partial last warp).
pub fn shuffle(
    threads: &mut [Thread],
    env: &BlockEnv,
    lanes: &[Option<usize>; 32],
    group: u32,
) -> Result<(), (usize, String)> {
    let mut outs = Vec::new();
    for lane in 0..32u32 {
        if group & (1 << lane) == 0 {
            continue;
        }
        let Some(ti) = lanes[lane as usize] else {
            continue;
        };
        let t = &threads[ti];
        let Op::Shfl { mode, b, c, .. } = &env.kernel.instrs[t.pc].op else {
            unreachable!("grouped at a shfl")
        };
        let bval = (t.get(env, b) & 31) as u32;
        let c = t.get(env, c) as u32;
        let (cval, segmask) = (c & 31, (c >> 8) & 31);
        let max_lane = (lane & segmask) | (cval & !segmask);
        let min_lane = lane & segmask;
        let (j, ok) = match mode {
            ShflMode::Up => (
                lane.wrapping_sub(bval),
                lane as i64 - bval as i64 >= max_lane as i64,
            ),
            ShflMode::Down => (lane + bval, lane + bval <= max_lane),
            ShflMode::Bfly => (lane ^ bval, (lane ^ bval) <= max_lane),
            ShflMode::Idx => (
                min_lane | (bval & !segmask),
                (min_lane | (bval & !segmask)) <= max_lane,
            ),
        };
        let src = if ok { j } else { lane };
        if src >= 32 || group & (1 << src) == 0 || lanes[src as usize].is_none() {
            return Err((
                ti,
                format!(
                    "shfl.sync in lane {lane} reads lane {src}, which is not in its membermask {group:#010x} (the value would be undefined)"
                ),
            ));
        }
        outs.push((ti, lanes[src as usize], ok));
    }
    // Read every source before writing any destination: the shuffle is simultaneous.
    let vals: Vec<(usize, u64, bool)> = outs
        .iter()
        .map(|&(ti, src, ok)| {
            let s = &threads[src.expect("checked above")];
            let Op::Shfl { a, .. } = &env.kernel.instrs[s.pc].op else {
                unreachable!()
            };
            (ti, s.get(env, a), ok)
        })
        .collect();
    for (ti, v, ok) in vals {
        let t = &mut threads[ti];
        let Op::Shfl { d, dp, .. } = &env.kernel.instrs[t.pc].op else {
            unreachable!()
        };
        t.set(env.kernel, *d, v & 0xFFFF_FFFF);
        if let Some(p) = dp {
            t.set(env.kernel, *p, ok as u64);
        }
    }
    Ok(())
}

fn lo_hi(v: u64) -> [f32; 2] {
    [bf16_to_f32(v as u16), bf16_to_f32((v >> 16) as u16)]
}

/// `mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32`. Lane l holds, with g = l/4 and
/// t = l%4: A rows g and g+8, columns 2t,2t+1 and 2t+8,2t+9 (a0..a3 = (g,lo) (g+8,lo)
/// (g,hi) (g+8,hi)); B rows (k) 2t,2t+1 and 2t+8,2t+9 of column g; C/D rows g and g+8,
/// columns 2t and 2t+1. Products of bf16 are exact in f32; the sum over k is taken in
/// f64 and rounded once, since the ISA leaves the tensor core's summation order open.
pub fn mma(threads: &mut [Thread], env: &BlockEnv, lanes: &[usize; 32]) {
    let mut a = [[0f32; 16]; 16];
    let mut b = [[0f32; 8]; 16];
    let mut c = [[0f32; 8]; 16];
    for (l, &ti) in lanes.iter().enumerate() {
        let t = &threads[ti];
        let Op::Mma {
            a: ra,
            b: rb,
            c: rc,
            ..
        } = &env.kernel.instrs[t.pc].op
        else {
            unreachable!()
        };
        let (g, q) = (l / 4, l % 4);
        for (i, reg) in ra.iter().enumerate() {
            let row = g + 8 * (i & 1);
            let col = 2 * q + 8 * (i >> 1);
            let [x, y] = lo_hi(t.get(env, reg));
            a[row][col] = x;
            a[row][col + 1] = y;
        }
        for (i, reg) in rb.iter().enumerate() {
            let k = 2 * q + 8 * i;
            let [x, y] = lo_hi(t.get(env, reg));
            b[k][g] = x;
            b[k + 1][g] = y;
        }
        for (i, reg) in rc.iter().enumerate() {
            c[g + 8 * (i >> 1)][2 * q + (i & 1)] = f32::from_bits(t.get(env, reg) as u32);
        }
    }
    for (l, &ti) in lanes.iter().enumerate() {
        let (g, q) = (l / 4, l % 4);
        let t = &mut threads[ti];
        let Op::Mma { d, .. } = &env.kernel.instrs[t.pc].op else {
            unreachable!()
        };
        let d = *d;
        for (i, reg) in d.iter().enumerate() {
            let (row, col) = (g + 8 * (i >> 1), 2 * q + (i & 1));
            let mut s = c[row][col] as f64;
            for k in 0..16 {
                s += a[row][k] as f64 * b[k][col] as f64;
            }
            t.set(env.kernel, *reg, (s as f32).to_bits() as u64);
        }
    }
}

/// `ldmatrix.sync.aligned.m8n8.xN[.trans].shared.b16`: lanes 8i..8i+7 give the row
/// addresses of matrix i; lane l receives row l/4, columns 2(l%4) and 2(l%4)+1 of each
/// matrix (with .trans, the transposed matrix).
pub fn ldmatrix(
    threads: &mut [Thread],
    env: &mut BlockEnv,
    lanes: &[usize; 32],
) -> Result<(), (usize, String)> {
    let Op::Ldmatrix { trans, d, .. } = &env.kernel.instrs[threads[lanes[0]].pc].op else {
        unreachable!()
    };
    let (trans, count) = (*trans, d.len());
    let mut m = vec![[[0u16; 8]; 8]; count];
    for (i, mat) in m.iter_mut().enumerate() {
        for (r, row) in mat.iter_mut().enumerate() {
            let ti = lanes[8 * i + r];
            let t = &mut threads[ti];
            let Op::Ldmatrix { addr, .. } = &env.kernel.instrs[t.pc].op else {
                unreachable!()
            };
            let at = addr
                .base
                .map_or(0, |b| t.regs[b as usize])
                .wrapping_add(addr.offset as u64);
            if at % 16 != 0 {
                return Err((
                    ti,
                    format!("ldmatrix row address {at:#x} is not 16-byte aligned"),
                ));
            }
            let mut buf = [0u8; 16];
            t.load(env, Space::Shared, at, &mut buf)
                .map_err(|e| (ti, e))?;
            t.note(env, Kind::SharedLoad, at, 16);
            for (c, v) in row.iter_mut().enumerate() {
                *v = u16::from_le_bytes([buf[2 * c], buf[2 * c + 1]]);
            }
        }
    }
    for (l, &ti) in lanes.iter().enumerate() {
        let t = &mut threads[ti];
        let Op::Ldmatrix { d, .. } = &env.kernel.instrs[t.pc].op else {
            unreachable!()
        };
        let d = d.clone();
        let (r, c) = (l / 4, 2 * (l % 4));
        for (i, reg) in d.iter().enumerate() {
            let (x, y) = if trans {
                (m[i][c][r], m[i][c + 1][r])
            } else {
                (m[i][r][c], m[i][r][c + 1])
            };
            t.set(env.kernel, *reg, x as u64 | (y as u64) << 16);
        }
    }
    Ok(())
}
