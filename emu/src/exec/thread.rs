//! One thread's state and its non-collective instructions. A thread runs on its own until
//! it reaches an instruction that needs others (a barrier, a shuffle, an `mma`, an
//! `ldmatrix`) or exits: Volta's independent thread scheduling, one interleaving of it.

use std::collections::VecDeque;

use super::counters::{Access, Kind};
use super::float::*;
use super::global::BlockGlobal;
use super::shared::SharedMemory;
use crate::ptx::Kernel;
use crate::ptx::instr::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Ready,
    /// Stopped at the collective instruction at `pc`, waiting for its partners.
    Waiting,
    Exited,
}

/// A `cp.async` issued but not yet landed.
#[derive(Debug, Clone)]
pub struct AsyncCopy {
    pub dst: u64,
    pub data: Vec<u8>,
}

pub struct Thread {
    pub tid: [u32; 3],
    pub linear: u32,
    pub pc: usize,
    pub regs: Vec<u64>,
    pub local: Vec<u8>,
    pub state: State,
    pub open_copies: Vec<AsyncCopy>,
    pub groups: VecDeque<Vec<AsyncCopy>>,
    pub executed: u64,
    /// Executions so far of each instruction, kept only while counters are on.
    occurrences: Vec<u32>,
}

/// What every thread of a block shares while it runs.
pub struct BlockEnv<'a> {
    pub kernel: &'a Kernel,
    pub params: &'a [u8],
    pub ctaid: [u32; 3],
    pub ntid: [u32; 3],
    pub nctaid: [u32; 3],
    pub global: BlockGlobal<'a>,
    pub shared: &'a mut SharedMemory,
    /// Every lane's memory access, when counters are on.
    pub trace: Option<&'a mut Vec<Access>>,
}

pub fn mask(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

pub fn sext(v: u64, bits: u32) -> i64 {
    if bits >= 64 {
        v as i64
    } else {
        let s = 64 - bits;
        ((v << s) as i64) >> s
    }
}

fn f32v(v: u64) -> f32 {
    f32::from_bits(v as u32)
}

fn f64v(v: u64) -> f64 {
    f64::from_bits(v)
}

/// A source operand read as `ty`: widened to 64 bits the way the type says.
fn extend(v: u64, ty: Ty) -> u64 {
    let bits = ty.bits();
    if ty.is_signed() {
        sext(v, bits) as u64
    } else {
        v & mask(bits)
    }
}

impl Thread {
    pub fn new(tid: [u32; 3], linear: u32, kernel: &Kernel, counting: bool) -> Self {
        Thread {
            tid,
            linear,
            pc: 0,
            regs: vec![0; kernel.reg_types.len()],
            local: vec![0; kernel.local_bytes],
            state: State::Ready,
            open_copies: Vec::new(),
            groups: VecDeque::new(),
            executed: 0,
            occurrences: if counting {
                vec![0; kernel.instrs.len()]
            } else {
                Vec::new()
            },
        }
    }

    pub fn get(&self, env: &BlockEnv, o: &Operand) -> u64 {
        match *o {
            Operand::Reg(r) => self.regs[r as usize],
            Operand::Imm(v) => v,
            Operand::Special(s) => u64::from(match s {
                Special::Tid(d) => self.tid[d],
                Special::Ntid(d) => env.ntid[d],
                Special::Ctaid(d) => env.ctaid[d],
                Special::Nctaid(d) => env.nctaid[d],
                Special::LaneId => self.linear % 32,
                Special::WarpId => self.linear / 32,
            }),
        }
    }

    /// Writes a register, truncated to its declared width (predicates to one bit).
    pub fn set(&mut self, kernel: &Kernel, r: u32, v: u64) {
        let ty = kernel.reg_types[r as usize];
        self.regs[r as usize] = if ty == Ty::Pred {
            v & 1
        } else {
            v & mask(ty.bits())
        };
    }

    fn addr(&self, a: &Addr) -> u64 {
        let base = a.base.map_or(0, |r| self.regs[r as usize]);
        base.wrapping_add(a.offset as u64)
    }

    /// Records one access of the instruction at `pc` for the counters.
    pub fn note(&mut self, env: &mut BlockEnv, kind: Kind, addr: u64, bytes: usize) {
        if let Some(trace) = env.trace.as_deref_mut() {
            let occurrence = &mut self.occurrences[self.pc];
            trace.push(Access {
                warp: self.linear / 32,
                pc: self.pc as u32,
                occurrence: *occurrence,
                kind,
                lane: self.linear % 32,
                addr,
                bytes: bytes as u32,
            });
            *occurrence += 1;
        }
    }

    /// Runs until a collective instruction, an exit, or a fault.
    pub fn run(&mut self, env: &mut BlockEnv) -> Result<(), String> {
        let kernel = env.kernel;
        loop {
            let Some(ins) = kernel.instrs.get(self.pc) else {
                return self.exit(env);
            };
            if let Some((p, neg)) = ins.guard
                && (self.regs[p as usize] != 0) == neg
            {
                self.pc += 1;
                continue;
            }
            if ins.op.is_collective() {
                self.state = State::Waiting;
                return Ok(());
            }
            self.executed += 1;
            match &ins.op {
                Op::Bra { target } => {
                    self.pc = *target;
                    continue;
                }
                Op::Ret => return self.exit(env),
                op => self.exec(env, op)?,
            }
            self.pc += 1;
        }
    }

    fn exit(&mut self, env: &mut BlockEnv) -> Result<(), String> {
        // Copies never waited for still land before the block's memory goes away.
        let groups: Vec<_> = self.groups.drain(..).flatten().collect();
        for c in groups
            .iter()
            .chain(self.open_copies.drain(..).collect::<Vec<_>>().iter())
        {
            env.shared.land(self.linear, c.dst, &c.data)?;
        }
        self.state = State::Exited;
        Ok(())
    }

    fn exec(&mut self, env: &mut BlockEnv, op: &Op) -> Result<(), String> {
        let k = env.kernel;
        match op {
            Op::Mov { ty, d, a } => {
                let v = extend(self.get(env, a), *ty);
                self.set(k, *d, v);
            }
            Op::Unpack { part_bits, d, a } => {
                let v = self.get(env, a);
                for (i, r) in d.iter().enumerate() {
                    self.set(k, *r, (v >> (i as u32 * part_bits)) & mask(*part_bits));
                }
            }
            Op::Pack { part_bits, d, a } => {
                let mut v = 0u64;
                for (i, o) in a.iter().enumerate() {
                    v |= (self.get(env, o) & mask(*part_bits)) << (i as u32 * part_bits);
                }
                self.set(k, *d, v);
            }
            Op::Bin {
                op,
                ty,
                fm,
                d,
                a,
                b,
            } => {
                let (a, b) = (self.get(env, a), self.get(env, b));
                let v = binary(*op, *ty, fm, a, b)?;
                self.set(k, *d, v);
            }
            Op::Un { op, ty, fm, d, a } => {
                let v = unary(*op, *ty, fm, self.get(env, a))?;
                self.set(k, *d, v);
            }
            Op::Fma {
                ty,
                fm,
                wide,
                d,
                a,
                b,
                c,
            } => {
                let (a, b, c) = (self.get(env, a), self.get(env, b), self.get(env, c));
                let v = fma(*ty, fm, *wide, a, b, c)?;
                self.set(k, *d, v);
            }
            Op::Setp { cmp, ty, d, a, b } => {
                let v = compare(*cmp, *ty, self.get(env, a), self.get(env, b));
                self.set(k, *d, v as u64);
            }
            Op::Selp { ty, d, a, b, p } => {
                let v = if self.get(env, p) & 1 != 0 { a } else { b };
                let v = self.get(env, v) & mask(ty.bits());
                self.set(k, *d, v);
            }
            Op::Cvt {
                dty,
                sty,
                fm,
                int_round,
                d,
                a,
            } => {
                let v = convert(*dty, *sty, fm, *int_round, self.get(env, a))?;
                self.set(k, *d, v);
            }
            Op::CvtPackBf16 { d, hi, lo } => {
                let hi = bf16_rn(f32v(self.get(env, hi))) as u64;
                let lo = bf16_rn(f32v(self.get(env, lo))) as u64;
                self.set(k, *d, (hi << 16) | lo);
            }
            Op::Prmt { d, a, b, c } => {
                let bytes =
                    (self.get(env, b) & 0xFFFF_FFFF) << 32 | (self.get(env, a) & 0xFFFF_FFFF);
                let sel = self.get(env, c);
                let mut v = 0u64;
                for i in 0..4 {
                    let s = (sel >> (4 * i)) & 0xF;
                    let mut byte = (bytes >> (8 * (s & 7))) & 0xFF;
                    if s & 8 != 0 {
                        byte = if byte & 0x80 != 0 { 0xFF } else { 0 };
                    }
                    v |= byte << (8 * i);
                }
                self.set(k, *d, v);
            }
            Op::Bfi {
                ty,
                d,
                a,
                b,
                pos,
                len,
            } => {
                let bits = ty.bits() as u64;
                let (a, b) = (self.get(env, a), self.get(env, b));
                let pos = self.get(env, pos) & 0xFF;
                let len = self.get(env, len) & 0xFF;
                let v = if len == 0 || pos >= bits {
                    b
                } else {
                    let len = len.min(bits - pos);
                    let m = mask(len as u32) << pos;
                    (b & !m) | ((a << pos) & m)
                };
                self.set(k, *d, v & mask(bits as u32));
            }
            Op::Ld { space, ty, d, addr } => {
                let at = self.addr(addr);
                let size = ty.bytes();
                // At most a .v4 of 8-byte values: no allocation per load.
                let mut raw = [0u8; 32];
                let buf = &mut raw[..size * d.len()];
                self.load(env, *space, at, buf)?;
                let len = buf.len();
                match space {
                    Space::Global => self.note(env, Kind::GlobalLoad, at, len),
                    Space::Shared => self.note(env, Kind::SharedLoad, at, len),
                    _ => {}
                }
                for (i, r) in d.iter().enumerate() {
                    let mut w = [0u8; 8];
                    w[..size].copy_from_slice(&raw[i * size..(i + 1) * size]);
                    let v = extend(u64::from_le_bytes(w), *ty);
                    self.set(k, *r, v);
                }
            }
            Op::St { space, ty, addr, a } => {
                let at = self.addr(addr);
                let size = ty.bytes();
                let mut raw = [0u8; 32];
                for (i, o) in a.iter().enumerate() {
                    raw[i * size..(i + 1) * size]
                        .copy_from_slice(&self.get(env, o).to_le_bytes()[..size]);
                }
                let buf = &raw[..size * a.len()];
                self.store(env, *space, at, buf)?;
                match space {
                    Space::Global => self.note(env, Kind::GlobalStore, at, buf.len()),
                    Space::Shared => self.note(env, Kind::SharedStore, at, buf.len()),
                    _ => {}
                }
            }
            Op::CpAsync { dst, src, bytes } => {
                let (dst, src) = (self.addr(dst), self.addr(src));
                let n = *bytes as usize;
                if dst % n as u64 != 0 || src % n as u64 != 0 {
                    return Err(format!(
                        "cp.async of {n} bytes from {src:#x} to shared {dst:#x}: both addresses must be {n}-byte aligned"
                    ));
                }
                let mut data = vec![0u8; n];
                env.global.read(src, &mut data)?;
                env.shared.mark_pending(self.linear, dst, n)?;
                self.note(env, Kind::GlobalLoad, src, n);
                self.note(env, Kind::SharedStore, dst, n);
                self.open_copies.push(AsyncCopy { dst, data });
            }
            Op::CpAsyncCommit => {
                let g = std::mem::take(&mut self.open_copies);
                self.groups.push_back(g);
            }
            Op::CpAsyncWait { n, commit } => {
                if *commit {
                    let g = std::mem::take(&mut self.open_copies);
                    self.groups.push_back(g);
                }
                while self.groups.len() > *n as usize {
                    if let Some(g) = self.groups.pop_front() {
                        for c in g {
                            env.shared.land(self.linear, c.dst, &c.data)?;
                        }
                    }
                }
            }
            Op::Bra { .. }
            | Op::Ret
            | Op::BarSync { .. }
            | Op::Shfl { .. }
            | Op::Mma { .. }
            | Op::Ldmatrix { .. } => {
                unreachable!("control flow and collectives are handled by the caller")
            }
        }
        Ok(())
    }

    fn aligned(at: u64, size: usize) -> Result<(), String> {
        if !at.is_multiple_of(size as u64) {
            Err(format!("misaligned {size}-byte access at {at:#x}"))
        } else {
            Ok(())
        }
    }

    pub fn load(
        &self,
        env: &mut BlockEnv,
        space: Space,
        at: u64,
        buf: &mut [u8],
    ) -> Result<(), String> {
        Self::aligned(at, buf.len())?;
        match space {
            Space::Global => env.global.read(at, buf),
            Space::Shared => env.shared.read(self.linear, at, buf),
            Space::Param => read_window(env.params, "parameter", at, buf),
            Space::Local => read_window(&self.local, "local", at, buf),
        }
    }

    fn store(
        &mut self,
        env: &mut BlockEnv,
        space: Space,
        at: u64,
        buf: &[u8],
    ) -> Result<(), String> {
        Self::aligned(at, buf.len())?;
        match space {
            Space::Global => {
                let line = env.kernel.instrs[self.pc].line as u32;
                env.global.write(at, buf, self.linear, line)
            }
            Space::Shared => env.shared.write(self.linear, at, buf),
            Space::Param => Err("store to the parameter space".into()),
            Space::Local => {
                let n = self.local.len();
                match self
                    .local
                    .get_mut(at as usize..(at as usize).saturating_add(buf.len()))
                {
                    Some(p) => {
                        p.copy_from_slice(buf);
                        Ok(())
                    }
                    None => Err(format!("local write at {at:#x} past the {n} local bytes")),
                }
            }
        }
    }
}

/// A read from a per-launch (parameters) or per-thread (local) window of bytes.
fn read_window(window: &[u8], what: &str, at: u64, buf: &mut [u8]) -> Result<(), String> {
    let end = (at as usize).saturating_add(buf.len());
    match window.get(at as usize..end) {
        Some(p) => {
            buf.copy_from_slice(p);
            Ok(())
        }
        None => Err(format!(
            "{what} read at {at:#x} past the {} {what} bytes",
            window.len()
        )),
    }
}

fn float_out32(x: f32, fm: &FloatMods) -> u64 {
    let mut x = x;
    if fm.sat {
        x = if x.is_nan() { 0.0 } else { x.clamp(0.0, 1.0) };
    }
    if fm.ftz {
        x = ftz32(x);
    }
    canon32(x) as u64
}

fn in32(v: u64, fm: &FloatMods) -> f32 {
    let x = f32v(v);
    if fm.ftz { ftz32(x) } else { x }
}

fn binary(op: BinOp, ty: Ty, fm: &FloatMods, a: u64, b: u64) -> Result<u64, String> {
    let round = fm.round.unwrap_or(Round::Nearest);
    match ty {
        Ty::F32 => {
            let (x, y) = (in32(a, fm), in32(b, fm));
            let r = match op {
                BinOp::Add => add32(x, y, round),
                BinOp::Sub => add32(x, -y, round),
                BinOp::MulLo => mul32(x, y, round),
                BinOp::Div if fm.round.is_none() || round == Round::Nearest => x / y,
                BinOp::Min => minmax64(x as f64, y as f64, false) as f32,
                BinOp::Max => minmax64(x as f64, y as f64, true) as f32,
                _ => {
                    return Err(format!(
                        "{op:?} with {round:?} rounding on .f32 is not supported"
                    ));
                }
            };
            Ok(float_out32(r, fm))
        }
        Ty::F64 => {
            if round != Round::Nearest {
                return Err(format!(
                    "{op:?} with {round:?} rounding on .f64 is not supported"
                ));
            }
            let (x, y) = (f64v(a), f64v(b));
            let r = match op {
                BinOp::Add => x + y,
                BinOp::Sub => x - y,
                BinOp::MulLo => x * y,
                BinOp::Div => x / y,
                BinOp::Min => minmax64(x, y, false),
                BinOp::Max => minmax64(x, y, true),
                _ => return Err(format!("{op:?} on .f64 is not supported")),
            };
            Ok(canon64(r))
        }
        Ty::Pred => Ok(match op {
            BinOp::And => a & b & 1,
            BinOp::Or => (a | b) & 1,
            BinOp::Xor => (a ^ b) & 1,
            _ => return Err(format!("{op:?} on predicates")),
        }),
        _ if ty.is_float() => Err(format!("{op:?} on {ty:?} is not supported")),
        _ => Ok(int_binary(op, ty, a, b)),
    }
}

fn int_binary(op: BinOp, ty: Ty, a: u64, b: u64) -> u64 {
    let bits = ty.bits();
    let m = mask(bits);
    let signed = ty.is_signed();
    let (sa, sb) = (sext(a, bits), sext(b, bits));
    let (ua, ub) = (a & m, b & m);
    let v = match op {
        BinOp::Add => ua.wrapping_add(ub),
        BinOp::Sub => ua.wrapping_sub(ub),
        BinOp::MulLo => ua.wrapping_mul(ub),
        BinOp::MulWide => {
            let p = if signed {
                (sa as i128 * sb as i128) as u128
            } else {
                ua as u128 * ub as u128
            };
            return (p as u64) & mask(bits * 2);
        }
        BinOp::MulHi => {
            let p = if signed {
                (sa as i128 * sb as i128) as u128
            } else {
                ua as u128 * ub as u128
            };
            (p >> bits) as u64
        }
        // Division by zero does not trap on a GPU; the result is all ones, as hardware gives.
        BinOp::Div if ub == 0 => m,
        BinOp::Div if signed => sa.wrapping_div(sb) as u64,
        BinOp::Div => ua / ub,
        BinOp::Rem if ub == 0 => ua,
        BinOp::Rem if signed => sa.wrapping_rem(sb) as u64,
        BinOp::Rem => ua % ub,
        BinOp::Min if signed => sa.min(sb) as u64,
        BinOp::Min => ua.min(ub),
        BinOp::Max if signed => sa.max(sb) as u64,
        BinOp::Max => ua.max(ub),
        BinOp::And => ua & ub,
        BinOp::Or => ua | ub,
        BinOp::Xor => ua ^ ub,
        // Shift amounts are unsigned and clamp at the width.
        BinOp::Shl => {
            let s = b & 0xFFFF_FFFF;
            if s >= bits as u64 { 0 } else { ua << s }
        }
        BinOp::Shr => {
            let s = b & 0xFFFF_FFFF;
            if signed {
                (sa >> s.min(bits as u64 - 1)) as u64
            } else if s >= bits as u64 {
                0
            } else {
                ua >> s
            }
        }
    };
    v & m
}

fn unary(op: UnOp, ty: Ty, fm: &FloatMods, a: u64) -> Result<u64, String> {
    match ty {
        Ty::F32 => {
            let x = in32(a, fm);
            let r = match op {
                UnOp::Neg => return Ok(((a as u32) ^ 0x8000_0000) as u64),
                UnOp::Abs => return Ok(((a as u32) & 0x7FFF_FFFF) as u64),
                // Exact where the ISA asks for .rn; the .approx forms (max error of a few
                // ulp on hardware) are computed exactly too, see docs/emulator.md.
                UnOp::Rcp => 1.0 / x,
                UnOp::Sqrt => x.sqrt(),
                UnOp::Ex2 => (x as f64).exp2() as f32,
                UnOp::Not => return Err("not on .f32".into()),
            };
            Ok(float_out32(r, fm))
        }
        Ty::F64 => {
            let x = f64v(a);
            Ok(match op {
                UnOp::Neg => a ^ (1 << 63),
                UnOp::Abs => a & !(1 << 63),
                UnOp::Rcp => {
                    let x = if fm.ftz && x.is_subnormal() {
                        0f64.copysign(x)
                    } else {
                        x
                    };
                    canon64(1.0 / x)
                }
                UnOp::Sqrt => canon64(x.sqrt()),
                _ => return Err(format!("{op:?} on .f64 is not supported")),
            })
        }
        Ty::Pred => match op {
            UnOp::Not => Ok(!a & 1),
            _ => Err(format!("{op:?} on predicates")),
        },
        _ if ty.is_float() => Err(format!("{op:?} on {ty:?} is not supported")),
        _ => {
            let bits = ty.bits();
            Ok(match op {
                UnOp::Neg => a.wrapping_neg() & mask(bits),
                UnOp::Not => !a & mask(bits),
                UnOp::Abs => (sext(a, bits).wrapping_abs() as u64) & mask(bits),
                _ => return Err(format!("{op:?} on {ty:?}")),
            })
        }
    }
}

fn fma(ty: Ty, fm: &FloatMods, wide: bool, a: u64, b: u64, c: u64) -> Result<u64, String> {
    let round = fm.round.unwrap_or(Round::Nearest);
    match ty {
        Ty::F32 => {
            let r = fma32(in32(a, fm), in32(b, fm), in32(c, fm), round);
            Ok(float_out32(r, fm))
        }
        Ty::F64 if round == Round::Nearest => Ok(canon64(fma_rn64(f64v(a), f64v(b), f64v(c)))),
        _ if ty.is_float() => Err(format!("fma on {ty:?} with {round:?} is not supported")),
        _ => {
            let bits = ty.bits();
            if wide {
                let p = int_binary(BinOp::MulWide, ty, a, b);
                Ok(p.wrapping_add(c) & mask(bits * 2))
            } else {
                let p = int_binary(BinOp::MulLo, ty, a, b);
                Ok(p.wrapping_add(c) & mask(bits))
            }
        }
    }
}

fn compare(cmp: Cmp, ty: Ty, a: u64, b: u64) -> bool {
    use std::cmp::Ordering::*;
    let ord = match ty {
        Ty::F32 | Ty::F64 => {
            let (x, y) = if ty == Ty::F32 {
                (f32v(a) as f64, f32v(b) as f64)
            } else {
                (f64v(a), f64v(b))
            };
            let unordered = x.is_nan() || y.is_nan();
            let o = x.partial_cmp(&y);
            return match cmp {
                Cmp::Eq => o == Some(Equal),
                Cmp::Ne => !unordered && o != Some(Equal),
                Cmp::Lt => o == Some(Less),
                Cmp::Le => matches!(o, Some(Less | Equal)),
                Cmp::Gt => o == Some(Greater),
                Cmp::Ge => matches!(o, Some(Greater | Equal)),
                Cmp::Equ => unordered || o == Some(Equal),
                Cmp::Neu => unordered || o != Some(Equal),
                Cmp::Ltu => unordered || o == Some(Less),
                Cmp::Leu => unordered || matches!(o, Some(Less | Equal)),
                Cmp::Gtu => unordered || o == Some(Greater),
                Cmp::Geu => unordered || matches!(o, Some(Greater | Equal)),
            };
        }
        _ if ty.is_signed() => sext(a, ty.bits()).cmp(&sext(b, ty.bits())),
        _ => (a & mask(ty.bits())).cmp(&(b & mask(ty.bits()))),
    };
    match cmp {
        Cmp::Eq | Cmp::Equ => ord == Equal,
        Cmp::Ne | Cmp::Neu => ord != Equal,
        Cmp::Lt | Cmp::Ltu => ord == Less,
        Cmp::Le | Cmp::Leu => ord != Greater,
        Cmp::Gt | Cmp::Gtu => ord == Greater,
        Cmp::Ge | Cmp::Geu => ord != Less,
    }
}

fn convert(dty: Ty, sty: Ty, fm: &FloatMods, int_round: bool, a: u64) -> Result<u64, String> {
    let unsupported = || {
        Err(format!(
            "cvt from {sty:?} to {dty:?} with {fm:?} is not supported"
        ))
    };
    let round = fm.round.unwrap_or(Round::Nearest);
    match (dty.is_float(), sty.is_float()) {
        (false, false) => {
            if fm.sat {
                return unsupported();
            }
            Ok(extend(a, sty) & mask(dty.bits()))
        }
        (true, false) => {
            if round != Round::Nearest {
                return unsupported();
            }
            let v = extend(a, sty);
            let x = if sty.is_signed() {
                v as i64 as f64
            } else {
                v as f64
            };
            // i64/u64 → f32 must round once from the integer, not through f64.
            let f32_from_int = || {
                if sty.is_signed() {
                    v as i64 as f32
                } else {
                    v as f32
                }
            };
            match dty {
                Ty::F32 => Ok(f32_from_int().to_bits() as u64),
                Ty::F64 if sty.bits() <= 32 => Ok(x.to_bits()),
                Ty::F64 => Ok((if sty.is_signed() {
                    v as i64 as f64
                } else {
                    v as f64
                })
                .to_bits()),
                _ => unsupported(),
            }
        }
        (false, true) => {
            let x = match sty {
                Ty::F32 => in32(a, fm) as f64,
                Ty::F64 => f64v(a),
                _ => return unsupported(),
            };
            if !int_round {
                return unsupported();
            }
            let r = round_integral(x, round);
            let bits = dty.bits();
            // Saturating to the destination range; NaN gives 0.
            Ok(if r.is_nan() {
                0
            } else if dty.is_signed() {
                let (lo, hi) = (
                    -(2f64.powi(bits as i32 - 1)),
                    2f64.powi(bits as i32 - 1) - 1.0,
                );
                (r.clamp(lo, hi) as i64 as u64) & mask(bits)
            } else {
                r.clamp(0.0, 2f64.powi(bits as i32) - 1.0) as u64
            })
        }
        (true, true) => match (dty, sty) {
            (Ty::F32, Ty::Bf16) => Ok(bf16_to_f32(a as u16).to_bits() as u64),
            (Ty::Bf16, Ty::F32) if round == Round::Nearest && !int_round => {
                Ok(bf16_rn(f32v(a)) as u64)
            }
            (Ty::F64, Ty::F32) => Ok(canon64(in32(a, fm) as f64)),
            (Ty::F32, Ty::F64) if round == Round::Nearest && !int_round => {
                Ok(float_out32(f64v(a) as f32, fm))
            }
            (Ty::F32, Ty::F32) => {
                let x = in32(a, fm);
                let x = if int_round {
                    round_integral(x as f64, round) as f32
                } else {
                    x
                };
                Ok(float_out32(x, fm))
            }
            _ => unsupported(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_edges() {
        assert_eq!(int_binary(BinOp::Shl, Ty::B32, 1, 40), 0);
        assert_eq!(
            int_binary(BinOp::Shr, Ty::S32, 0x8000_0000, 40),
            0xFFFF_FFFF
        );
        assert_eq!(
            int_binary(BinOp::MulWide, Ty::S32, 0xFFFF_FFFF, 3),
            (-3i64) as u64
        );
        assert_eq!(
            int_binary(BinOp::MulHi, Ty::U32, 0xFFFF_FFFF, 0xFFFF_FFFF),
            0xFFFF_FFFE
        );
        assert_eq!(
            int_binary(BinOp::Div, Ty::S32, (-7i32) as u32 as u64, 2),
            (-3i32) as u32 as u64
        );
        assert_eq!(
            int_binary(BinOp::Rem, Ty::S32, (-7i32) as u32 as u64, 2),
            (-1i32) as u32 as u64
        );
        assert_eq!(
            int_binary(BinOp::Min, Ty::S32, (-1i32) as u32 as u64, 1),
            0xFFFF_FFFF
        );
        assert_eq!(int_binary(BinOp::Min, Ty::U32, (-1i32) as u32 as u64, 1), 1);
    }

    #[test]
    fn conversions() {
        let fm = FloatMods {
            round: Some(Round::Nearest),
            ..Default::default()
        };
        assert_eq!(
            convert(Ty::S32, Ty::F32, &fm, true, 2.5f32.to_bits() as u64).unwrap(),
            2
        );
        assert_eq!(
            convert(Ty::S32, Ty::F32, &fm, true, 3.5f32.to_bits() as u64).unwrap(),
            4
        );
        assert_eq!(
            convert(Ty::S32, Ty::F32, &fm, true, f32::NAN.to_bits() as u64).unwrap(),
            0
        );
        assert_eq!(
            convert(Ty::S32, Ty::F32, &fm, true, 1e10f32.to_bits() as u64).unwrap(),
            0x7FFF_FFFF
        );
        assert_eq!(
            convert(Ty::F32, Ty::S32, &fm, false, (-3i32) as u32 as u64).unwrap(),
            (-3f32).to_bits() as u64
        );
        // 2^24 + 1 rounds to even.
        assert_eq!(
            convert(Ty::F32, Ty::U64, &fm, false, (1 << 24) + 1).unwrap(),
            16777216f32.to_bits() as u64
        );
        let sat = FloatMods {
            sat: true,
            ..Default::default()
        };
        assert_eq!(
            convert(Ty::F32, Ty::F32, &sat, false, 1.5f32.to_bits() as u64).unwrap(),
            1f32.to_bits() as u64
        );
        assert_eq!(
            convert(Ty::F32, Ty::F32, &sat, false, f32::NAN.to_bits() as u64).unwrap(),
            0
        );
        assert_eq!(
            convert(Ty::S64, Ty::S32, &FloatMods::default(), false, 0xFFFF_FFFF).unwrap(),
            u64::MAX
        );
        assert_eq!(
            convert(
                Ty::U32,
                Ty::U64,
                &FloatMods::default(),
                false,
                0x1_0000_0005
            )
            .unwrap(),
            5
        );
    }

    #[test]
    fn float_compare_unordered() {
        let nan = f32::NAN.to_bits() as u64;
        let one = 1f32.to_bits() as u64;
        assert!(!compare(Cmp::Lt, Ty::F32, nan, one));
        assert!(compare(Cmp::Ltu, Ty::F32, nan, one));
        assert!(!compare(Cmp::Ne, Ty::F32, nan, one));
        assert!(compare(Cmp::Neu, Ty::F32, nan, one));
        assert!(compare(Cmp::Lt, Ty::S32, 0xFFFF_FFFF, 0));
        assert!(!compare(Cmp::Lt, Ty::U32, 0xFFFF_FFFF, 0));
    }
}
