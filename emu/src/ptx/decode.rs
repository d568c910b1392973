//! A kernel outline to executable instructions: registers to slots (with the nested scopes
//! of inline asm), labels to instruction indices, variables to addresses, opcodes and their
//! modifiers to `Op`s. Any modifier not understood is an error naming the whole opcode: the
//! emulator never guesses at semantics.

use std::collections::{HashMap, HashSet};

use super::instr::*;
use super::parse::{BodyItem, RawInstr, RawKernel, RawOperand, VarDecl};
use super::{Kernel, Param};
use crate::error::{EmuError, Result};

/// Where a named variable lives once the kernel is laid out.
#[derive(Debug, Clone, Copy)]
enum Sym {
    Global(u64),
    Shared(u64),
    Local(u64),
    Param(u64),
}

fn align_up(x: usize, a: usize) -> usize {
    x.div_ceil(a.max(1)) * a.max(1)
}

struct Ctx<'a> {
    kernel: &'a str,
    scopes: Vec<HashMap<String, u32>>,
    reg_types: Vec<Ty>,
    syms: HashMap<String, Sym>,
    labels: HashMap<String, usize>,
}

impl Ctx<'_> {
    fn parse_err<T>(&self, line: usize, msg: impl Into<String>) -> Result<T> {
        Err(EmuError::Parse {
            line,
            msg: format!("in `{}`: {}", self.kernel, msg.into()),
        })
    }

    fn declare(&mut self, ty: Ty, name: &str) {
        let slot = self.reg_types.len() as u32;
        self.reg_types.push(ty);
        if let Some(scope) = self.scopes.last_mut() {
            scope.insert(name.to_string(), slot);
        }
    }

    fn reg(&self, name: &str) -> Option<u32> {
        self.scopes.iter().rev().find_map(|s| s.get(name).copied())
    }

    fn sym(&self, name: &str) -> Option<Sym> {
        self.syms.get(name).copied()
    }

    fn special(name: &str) -> Option<Special> {
        let dim = |s: &str| match s {
            "x" => Some(0),
            "y" => Some(1),
            "z" => Some(2),
            _ => None,
        };
        let (head, tail) = name.split_once('.').unwrap_or((name, ""));
        Some(match head {
            "%tid" => Special::Tid(dim(tail)?),
            "%ntid" => Special::Ntid(dim(tail)?),
            "%ctaid" => Special::Ctaid(dim(tail)?),
            "%nctaid" => Special::Nctaid(dim(tail)?),
            "%laneid" => Special::LaneId,
            "%warpid" => Special::WarpId,
            _ => return None,
        })
    }

    fn src(&mut self, o: &RawOperand, line: usize) -> Result<Operand> {
        match o {
            RawOperand::Imm(v) => Ok(Operand::Imm(*v)),
            RawOperand::Name(n) => {
                if let Some(r) = self.reg(n) {
                    return Ok(Operand::Reg(r));
                }
                if let Some(s) = Self::special(n) {
                    return Ok(Operand::Special(s));
                }
                match self.sym(n) {
                    Some(Sym::Global(a) | Sym::Shared(a) | Sym::Local(a) | Sym::Param(a)) => {
                        Ok(Operand::Imm(a))
                    }
                    None => self.parse_err(line, format!("unknown name `{n}`")),
                }
            }
            other => self.parse_err(line, format!("expected a value, found {other:?}")),
        }
    }

    fn dst(&mut self, o: &RawOperand, line: usize) -> Result<u32> {
        match o {
            RawOperand::Name(n) => match self.reg(n) {
                Some(r) => Ok(r),
                None => self.parse_err(line, format!("`{n}` is not a declared register")),
            },
            other => self.parse_err(line, format!("expected a register, found {other:?}")),
        }
    }

    fn dst_vec(&mut self, o: &RawOperand, line: usize) -> Result<Vec<u32>> {
        match o {
            RawOperand::Vec(v) => v.iter().map(|o| self.dst(o, line)).collect(),
            o => Ok(vec![self.dst(o, line)?]),
        }
    }

    fn src_vec(&mut self, o: &RawOperand, line: usize) -> Result<Vec<Operand>> {
        match o {
            RawOperand::Vec(v) => v.iter().map(|o| self.src(o, line)).collect(),
            o => Ok(vec![self.src(o, line)?]),
        }
    }

    fn addr(&mut self, o: &RawOperand, line: usize) -> Result<Addr> {
        let RawOperand::Mem { base, offset } = o else {
            return self.parse_err(line, format!("expected an address, found {o:?}"));
        };
        let Some(name) = base else {
            return Ok(Addr {
                base: None,
                offset: *offset,
            });
        };
        if let Some(r) = self.reg(name) {
            return Ok(Addr {
                base: Some(r),
                offset: *offset,
            });
        }
        match self.sym(name) {
            Some(Sym::Global(a) | Sym::Shared(a) | Sym::Local(a) | Sym::Param(a)) => Ok(Addr {
                base: None,
                offset: a as i64 + offset,
            }),
            None => self.parse_err(line, format!("unknown address base `{name}`")),
        }
    }
}

/// The modifiers of one opcode, consumed as they are understood.
struct Mods<'a> {
    full: &'a str,
    line: usize,
    rest: Vec<&'a str>,
}

impl<'a> Mods<'a> {
    fn take(&mut self, m: &str) -> bool {
        if let Some(i) = self.rest.iter().position(|x| *x == m) {
            self.rest.remove(i);
            true
        } else {
            false
        }
    }

    fn take_any(&mut self, set: &[&'a str]) -> Option<&'a str> {
        let i = self.rest.iter().position(|x| set.contains(x))?;
        Some(self.rest.remove(i))
    }

    /// The last type suffix (PTX puts the operand type last).
    fn take_ty(&mut self) -> Option<Ty> {
        let i = self.rest.iter().rposition(|x| Ty::parse(x).is_some())?;
        Ty::parse(self.rest.remove(i))
    }

    fn take_round(&mut self) -> (Option<Round>, bool) {
        let r = match self.take_any(&["rn", "rz", "rm", "rp", "rni", "rzi", "rmi", "rpi"]) {
            None => return (None, false),
            Some(r) => r,
        };
        let mode = match &r[..2] {
            "rn" => Round::Nearest,
            "rz" => Round::Zero,
            "rm" => Round::Down,
            _ => Round::Up,
        };
        (Some(mode), r.len() == 3)
    }

    fn float_mods(&mut self) -> FloatMods {
        let (round, _) = self.take_round();
        FloatMods {
            round,
            ftz: self.take("ftz"),
            sat: self.take("sat"),
            approx: self.take("approx") | self.take("full"),
        }
    }

    fn unsupported<T>(&self) -> Result<T> {
        Err(EmuError::Unsupported {
            line: self.line,
            opcode: self.full.to_string(),
        })
    }

    fn done(&self) -> Result<()> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            self.unsupported()
        }
    }

    fn need_ty(&mut self) -> Result<Ty> {
        match self.take_ty() {
            Some(t) => Ok(t),
            None => self.unsupported(),
        }
    }
}

fn space(m: &mut Mods) -> Option<Space> {
    Some(match m.take_any(&["global", "shared", "local", "param"])? {
        "global" => Space::Global,
        "shared" => Space::Shared,
        "local" => Space::Local,
        _ => Space::Param,
    })
}

fn vec_width(m: &mut Mods) -> usize {
    match m.take_any(&["v2", "v4"]) {
        Some("v2") => 2,
        Some("v4") => 4,
        _ => 1,
    }
}

fn fixed<const N: usize, T: Copy>(v: Vec<T>, m: &Mods) -> Result<[T; N]> {
    v.try_into().map_err(|_| EmuError::Parse {
        line: m.line,
        msg: format!("`{}` needs {N}-element vector operands", m.full),
    })
}

fn decode_instr(ins: &RawInstr, cx: &mut Ctx) -> Result<Op> {
    let line = ins.line;
    let mut parts = ins.opcode.split('.');
    let base = parts.next().unwrap_or("");
    let mut m = Mods {
        full: &ins.opcode,
        line,
        rest: parts.collect(),
    };
    let o = &ins.operands;
    let n = o.len();
    let want = |k: usize| -> Result<()> {
        if n == k {
            Ok(())
        } else {
            Err(EmuError::Parse {
                line,
                msg: format!("`{}` takes {k} operands, found {n}", ins.opcode),
            })
        }
    };
    let op = match base {
        "mov" => {
            want(2)?;
            let ty = m.need_ty()?;
            match (&o[0], &o[1]) {
                (RawOperand::Vec(_), a) => {
                    let d = cx.dst_vec(&o[0], line)?;
                    Op::Unpack {
                        part_bits: ty.bits() / d.len() as u32,
                        d,
                        a: cx.src(a, line)?,
                    }
                }
                (d, RawOperand::Vec(_)) => {
                    let a = cx.src_vec(&o[1], line)?;
                    Op::Pack {
                        part_bits: ty.bits() / a.len() as u32,
                        d: cx.dst(d, line)?,
                        a,
                    }
                }
                (d, a) => Op::Mov {
                    ty,
                    d: cx.dst(d, line)?,
                    a: cx.src(a, line)?,
                },
            }
        }
        "cvta" => {
            want(2)?;
            m.take("to");
            if !m.take("global") {
                return m.unsupported();
            }
            let ty = m.need_ty()?;
            Op::Mov {
                ty,
                d: cx.dst(&o[0], line)?,
                a: cx.src(&o[1], line)?,
            }
        }
        "add" | "sub" | "mul" | "div" | "rem" | "min" | "max" | "and" | "or" | "xor" | "shl"
        | "shr" => {
            want(3)?;
            let mut bop = match base {
                "add" => BinOp::Add,
                "sub" => BinOp::Sub,
                "mul" => BinOp::MulLo,
                "div" => BinOp::Div,
                "rem" => BinOp::Rem,
                "min" => BinOp::Min,
                "max" => BinOp::Max,
                "and" => BinOp::And,
                "or" => BinOp::Or,
                "xor" => BinOp::Xor,
                "shl" => BinOp::Shl,
                _ => BinOp::Shr,
            };
            if base == "mul" {
                if m.take("hi") {
                    bop = BinOp::MulHi;
                } else if m.take("wide") {
                    bop = BinOp::MulWide;
                } else {
                    m.take("lo");
                }
            }
            let fm = m.float_mods();
            let ty = m.need_ty()?;
            Op::Bin {
                op: bop,
                ty,
                fm,
                d: cx.dst(&o[0], line)?,
                a: cx.src(&o[1], line)?,
                b: cx.src(&o[2], line)?,
            }
        }
        "neg" | "not" | "abs" | "rcp" | "sqrt" | "ex2" => {
            want(2)?;
            let uop = match base {
                "neg" => UnOp::Neg,
                "not" => UnOp::Not,
                "abs" => UnOp::Abs,
                "rcp" => UnOp::Rcp,
                "sqrt" => UnOp::Sqrt,
                _ => UnOp::Ex2,
            };
            let fm = m.float_mods();
            let ty = m.need_ty()?;
            Op::Un {
                op: uop,
                ty,
                fm,
                d: cx.dst(&o[0], line)?,
                a: cx.src(&o[1], line)?,
            }
        }
        "fma" | "mad" => {
            want(4)?;
            let wide = m.take("wide");
            m.take("lo");
            let fm = m.float_mods();
            let ty = m.need_ty()?;
            Op::Fma {
                ty,
                fm,
                wide,
                d: cx.dst(&o[0], line)?,
                a: cx.src(&o[1], line)?,
                b: cx.src(&o[2], line)?,
                c: cx.src(&o[3], line)?,
            }
        }
        "setp" => {
            want(3)?;
            let cmp = match m.take_any(&[
                "eq", "ne", "lt", "le", "gt", "ge", "equ", "neu", "ltu", "leu", "gtu", "geu", "lo",
                "ls", "hi", "hs",
            ]) {
                Some("eq") => Cmp::Eq,
                Some("ne") => Cmp::Ne,
                Some("lt" | "lo") => Cmp::Lt,
                Some("le" | "ls") => Cmp::Le,
                Some("gt" | "hi") => Cmp::Gt,
                Some("ge" | "hs") => Cmp::Ge,
                Some("equ") => Cmp::Equ,
                Some("neu") => Cmp::Neu,
                Some("ltu") => Cmp::Ltu,
                Some("leu") => Cmp::Leu,
                Some("gtu") => Cmp::Gtu,
                Some("geu") => Cmp::Geu,
                _ => return m.unsupported(),
            };
            if m.take("ftz") {
                return m.unsupported();
            }
            let ty = m.need_ty()?;
            Op::Setp {
                cmp,
                ty,
                d: cx.dst(&o[0], line)?,
                a: cx.src(&o[1], line)?,
                b: cx.src(&o[2], line)?,
            }
        }
        "selp" => {
            want(4)?;
            let ty = m.need_ty()?;
            Op::Selp {
                ty,
                d: cx.dst(&o[0], line)?,
                a: cx.src(&o[1], line)?,
                b: cx.src(&o[2], line)?,
                p: cx.src(&o[3], line)?,
            }
        }
        "cvt" => {
            let (round, int_round) = m.take_round();
            let fm = FloatMods {
                round,
                ftz: m.take("ftz"),
                sat: m.take("sat"),
                approx: false,
            };
            let sty = m.need_ty()?;
            let dty = m.need_ty()?;
            if dty == Ty::Bf16x2 {
                want(3)?;
                if sty != Ty::F32 || round != Some(Round::Nearest) || fm.ftz || fm.sat {
                    return m.unsupported();
                }
                Op::CvtPackBf16 {
                    d: cx.dst(&o[0], line)?,
                    hi: cx.src(&o[1], line)?,
                    lo: cx.src(&o[2], line)?,
                }
            } else {
                want(2)?;
                Op::Cvt {
                    dty,
                    sty,
                    fm,
                    int_round,
                    d: cx.dst(&o[0], line)?,
                    a: cx.src(&o[1], line)?,
                }
            }
        }
        "prmt" => {
            want(4)?;
            if m.need_ty()? != Ty::B32 {
                return m.unsupported();
            }
            Op::Prmt {
                d: cx.dst(&o[0], line)?,
                a: cx.src(&o[1], line)?,
                b: cx.src(&o[2], line)?,
                c: cx.src(&o[3], line)?,
            }
        }
        "bfi" => {
            want(5)?;
            let ty = m.need_ty()?;
            Op::Bfi {
                ty,
                d: cx.dst(&o[0], line)?,
                a: cx.src(&o[1], line)?,
                b: cx.src(&o[2], line)?,
                pos: cx.src(&o[3], line)?,
                len: cx.src(&o[4], line)?,
            }
        }
        "ld" | "st" => {
            want(2)?;
            let Some(sp) = space(&mut m) else {
                return m.unsupported();
            };
            // .nc only changes the cache path; the emulated memory has no caches.
            if base == "ld" {
                m.take("nc");
            }
            let width = vec_width(&mut m);
            let ty = m.need_ty()?;
            if base == "ld" {
                let d = cx.dst_vec(&o[0], line)?;
                if d.len() != width {
                    return cx
                        .parse_err(line, format!("`{}` needs {width} destinations", ins.opcode));
                }
                Op::Ld {
                    space: sp,
                    ty,
                    d,
                    addr: cx.addr(&o[1], line)?,
                }
            } else {
                let a = cx.src_vec(&o[1], line)?;
                if a.len() != width {
                    return cx.parse_err(line, format!("`{}` needs {width} sources", ins.opcode));
                }
                Op::St {
                    space: sp,
                    ty,
                    addr: cx.addr(&o[0], line)?,
                    a,
                }
            }
        }
        "bra" => {
            want(1)?;
            m.take("uni");
            let RawOperand::Name(l) = &o[0] else {
                return cx.parse_err(line, "bra needs a label");
            };
            match cx.labels.get(l) {
                Some(&target) => Op::Bra { target },
                None => return cx.parse_err(line, format!("unknown label `{l}`")),
            }
        }
        "ret" | "exit" => {
            want(0)?;
            Op::Ret
        }
        "bar" | "barrier" => {
            if !(m.take("sync") || m.rest.is_empty()) {
                return m.unsupported();
            }
            m.take("aligned");
            if n != 1 {
                return cx.parse_err(line, "bar.sync with a thread count is not supported");
            }
            Op::BarSync {
                id: cx.src(&o[0], line)?,
            }
        }
        "shfl" => {
            if !m.take("sync") {
                return m.unsupported();
            }
            let mode = match m.take_any(&["up", "down", "bfly", "idx"]) {
                Some("up") => ShflMode::Up,
                Some("down") => ShflMode::Down,
                Some("bfly") => ShflMode::Bfly,
                Some("idx") => ShflMode::Idx,
                _ => return m.unsupported(),
            };
            if m.need_ty()? != Ty::B32 {
                return m.unsupported();
            }
            want(5)?;
            let (d, dp) = match &o[0] {
                RawOperand::Pair(d, p) => (
                    cx.dst(&RawOperand::Name(d.clone()), line)?,
                    Some(cx.dst(&RawOperand::Name(p.clone()), line)?),
                ),
                d => (cx.dst(d, line)?, None),
            };
            Op::Shfl {
                mode,
                d,
                dp,
                a: cx.src(&o[1], line)?,
                b: cx.src(&o[2], line)?,
                c: cx.src(&o[3], line)?,
                mask: cx.src(&o[4], line)?,
            }
        }
        "mma" => {
            want(4)?;
            if ins.opcode != "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32" {
                return m.unsupported();
            }
            m.rest.clear();
            let d = fixed::<4, _>(cx.dst_vec(&o[0], line)?, &m)?;
            let a = fixed::<4, _>(cx.src_vec(&o[1], line)?, &m)?;
            let b = fixed::<2, _>(cx.src_vec(&o[2], line)?, &m)?;
            let c = fixed::<4, _>(cx.src_vec(&o[3], line)?, &m)?;
            Op::Mma { d, a, b, c }
        }
        "ldmatrix" => {
            want(2)?;
            let ok = m.take("sync") && m.take("aligned") && m.take("m8n8") && m.take("shared");
            let count = match m.take_any(&["x1", "x2", "x4"]) {
                Some("x1") => 1,
                Some("x2") => 2,
                Some("x4") => 4,
                _ => 0,
            };
            let trans = m.take("trans");
            if !ok || count == 0 || m.take_ty() != Some(Ty::B16) {
                return m.unsupported();
            }
            let d = cx.dst_vec(&o[0], line)?;
            if d.len() != count {
                return cx.parse_err(line, format!("`{}` needs {count} destinations", ins.opcode));
            }
            Op::Ldmatrix {
                trans,
                d,
                addr: cx.addr(&o[1], line)?,
            }
        }
        "cp" => {
            if !m.take("async") {
                return m.unsupported();
            }
            if m.take("commit_group") {
                want(0)?;
                Op::CpAsyncCommit
            } else if m.take("wait_group") {
                want(1)?;
                let Operand::Imm(k) = cx.src(&o[0], line)? else {
                    return cx.parse_err(line, "cp.async.wait_group needs a constant");
                };
                Op::CpAsyncWait {
                    n: k as u32,
                    commit: false,
                }
            } else if m.take("wait_all") {
                want(0)?;
                Op::CpAsyncWait { n: 0, commit: true }
            } else {
                want(3)?;
                let cg = m.take("cg");
                let ca = m.take("ca");
                if !(cg || ca) || !m.take("shared") || !m.take("global") {
                    return m.unsupported();
                }
                let Operand::Imm(bytes) = cx.src(&o[2], line)? else {
                    return cx.parse_err(line, "cp.async needs a constant size");
                };
                if !matches!(bytes, 4 | 8 | 16) || (cg && bytes != 16) {
                    return cx.parse_err(line, format!("cp.async of {bytes} bytes is not valid"));
                }
                Op::CpAsync {
                    dst: cx.addr(&o[0], line)?,
                    src: cx.addr(&o[1], line)?,
                    bytes: bytes as u32,
                }
            }
        }
        _ => return m.unsupported(),
    };
    m.done()?;
    // Modifiers the interpreter would otherwise ignore: refused, never guessed.
    let ignored = match &op {
        Op::Bin { ty, fm, .. } | Op::Fma { ty, fm, .. } if !ty.is_float() => {
            fm.sat || fm.ftz || fm.round.is_some()
        }
        Op::Un { op, fm, .. } => {
            let directed = fm.round.is_some_and(|r| r != Round::Nearest);
            directed || (fm.ftz && matches!(op, UnOp::Neg | UnOp::Abs | UnOp::Not))
        }
        _ => false,
    };
    if ignored {
        return m.unsupported();
    }
    // Half-precision arithmetic is not in our kernels; refuse it here, not mid-launch.
    if let Op::Bin { ty, .. } | Op::Un { ty, .. } | Op::Fma { ty, .. } | Op::Setp { ty, .. } = &op
        && matches!(ty, Ty::F16 | Ty::Bf16 | Ty::Bf16x2)
    {
        return m.unsupported();
    }
    Ok(op)
}

pub fn decode_kernel(
    raw: &RawKernel,
    module_shared: &[VarDecl],
    globals: &HashMap<String, u64>,
) -> Result<Kernel> {
    let mut cx = Ctx {
        kernel: &raw.name,
        scopes: vec![HashMap::new()],
        reg_types: Vec::new(),
        syms: globals
            .iter()
            .map(|(k, v)| (k.clone(), Sym::Global(*v)))
            .collect(),
        labels: HashMap::new(),
    };
    let mut params = Vec::new();
    let mut param_bytes = 0usize;
    for (name, ty) in &raw.params {
        let at = align_up(param_bytes, ty.bytes());
        params.push(Param {
            name: name.clone(),
            ty: *ty,
            offset: at,
        });
        cx.syms.insert(name.clone(), Sym::Param(at as u64));
        param_bytes = at + ty.bytes();
    }
    let (static_shared, dynamic_shared_offset) = layout_shared(raw, module_shared, &mut cx.syms);
    // Labels first, so forward branches resolve.
    let mut count = 0;
    for item in &raw.body {
        match item {
            BodyItem::Label(l) => {
                cx.labels.insert(l.clone(), count);
            }
            BodyItem::Instr(_) => count += 1,
            _ => {}
        }
    }
    let mut local_bytes = 0usize;
    let mut instrs = Vec::with_capacity(count);
    for item in &raw.body {
        match item {
            BodyItem::Reg { ty, name, count } => match count {
                Some(k) => (0..*k).for_each(|i| cx.declare(*ty, &format!("{name}{i}"))),
                None => cx.declare(*ty, name),
            },
            BodyItem::Local(v) => {
                let at = align_up(local_bytes, v.align);
                local_bytes = at + v.bytes;
                cx.syms.insert(v.name.clone(), Sym::Local(at as u64));
            }
            BodyItem::Shared(_) | BodyItem::Label(_) => {}
            BodyItem::ScopeOpen => cx.scopes.push(HashMap::new()),
            BodyItem::ScopeClose => {
                cx.scopes.pop();
            }
            BodyItem::Instr(ins) => {
                let guard = match &ins.guard {
                    None => None,
                    Some((p, neg)) => match cx.reg(p) {
                        Some(r) => Some((r, *neg)),
                        None => return cx.parse_err(ins.line, format!("unknown predicate `{p}`")),
                    },
                };
                let op = decode_instr(ins, &mut cx)?;
                instrs.push(Instr {
                    guard,
                    op,
                    line: ins.line,
                });
            }
        }
    }
    Ok(Kernel {
        name: raw.name.clone(),
        params,
        param_bytes,
        reg_types: cx.reg_types,
        instrs,
        static_shared,
        dynamic_shared_offset,
        local_bytes,
        maxntid: raw.maxntid,
    })
}

fn operand_names<'a>(o: &'a RawOperand, out: &mut HashSet<&'a str>) {
    match o {
        RawOperand::Name(n) => {
            out.insert(n);
        }
        RawOperand::Mem { base: Some(n), .. } => {
            out.insert(n);
        }
        RawOperand::Vec(v) => v.iter().for_each(|o| operand_names(o, out)),
        _ => {}
    }
}

/// Static shared memory first (the kernel's own variables, then the module-scope ones it
/// names, in declaration order), dynamic shared memory after it, as the CUDA runtime lays
/// a block's window out. A kernel pays only for the module variables it uses.
fn layout_shared(
    raw: &RawKernel,
    module_shared: &[VarDecl],
    syms: &mut HashMap<String, Sym>,
) -> (usize, Option<usize>) {
    let mut named = HashSet::new();
    for item in &raw.body {
        if let BodyItem::Instr(i) = item {
            i.operands.iter().for_each(|o| operand_names(o, &mut named));
        }
    }
    let own = raw.body.iter().filter_map(|b| match b {
        BodyItem::Shared(v) => Some(v),
        _ => None,
    });
    let used = module_shared
        .iter()
        .filter(|v| named.contains(v.name.as_str()));
    let vars: Vec<&VarDecl> = own.chain(used).collect();
    let mut bytes = 0usize;
    for v in vars.iter().filter(|v| !v.is_dynamic) {
        let at = align_up(bytes, v.align);
        bytes = at + v.bytes;
        syms.insert(v.name.clone(), Sym::Shared(at as u64));
    }
    let mut dynamic = None;
    for v in vars.iter().filter(|v| v.is_dynamic) {
        let at = align_up(bytes, v.align.max(16));
        dynamic = Some(at);
        syms.insert(v.name.clone(), Sym::Shared(at as u64));
    }
    (bytes, dynamic)
}
