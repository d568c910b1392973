//! Decoded PTX instructions: operands resolved to register slots, modifiers to enums, so the
//! interpreter never looks at text again.

/// A PTX scalar type as written in an instruction's type suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    Pred,
    B8,
    B16,
    B32,
    B64,
    U8,
    U16,
    U32,
    U64,
    S8,
    S16,
    S32,
    S64,
    Bf16,
    Bf16x2,
    F16,
    F32,
    F64,
}

impl Ty {
    pub fn parse(s: &str) -> Option<Ty> {
        Some(match s {
            "pred" => Ty::Pred,
            "b8" => Ty::B8,
            "b16" => Ty::B16,
            "b32" => Ty::B32,
            "b64" => Ty::B64,
            "u8" => Ty::U8,
            "u16" => Ty::U16,
            "u32" => Ty::U32,
            "u64" => Ty::U64,
            "s8" => Ty::S8,
            "s16" => Ty::S16,
            "s32" => Ty::S32,
            "s64" => Ty::S64,
            "bf16" => Ty::Bf16,
            "bf16x2" => Ty::Bf16x2,
            "f16" => Ty::F16,
            "f32" => Ty::F32,
            "f64" => Ty::F64,
            _ => return None,
        })
    }

    pub fn bytes(self) -> usize {
        match self {
            Ty::Pred => 1,
            Ty::B8 | Ty::U8 | Ty::S8 => 1,
            Ty::B16 | Ty::U16 | Ty::S16 | Ty::Bf16 | Ty::F16 => 2,
            Ty::B32 | Ty::U32 | Ty::S32 | Ty::F32 | Ty::Bf16x2 => 4,
            Ty::B64 | Ty::U64 | Ty::S64 | Ty::F64 => 8,
        }
    }

    pub fn bits(self) -> u32 {
        self.bytes() as u32 * 8
    }

    pub fn is_signed(self) -> bool {
        matches!(self, Ty::S8 | Ty::S16 | Ty::S32 | Ty::S64)
    }

    pub fn is_float(self) -> bool {
        matches!(self, Ty::F16 | Ty::Bf16 | Ty::F32 | Ty::F64)
    }
}

/// IEEE rounding modes of the `.rn/.rz/.rm/.rp` (float) and `.rni/.rzi/.rmi/.rpi` (to integer)
/// modifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Round {
    Nearest,
    Zero,
    Down,
    Up,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    Global,
    Shared,
    Local,
    Param,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Special {
    Tid(usize),
    Ntid(usize),
    Ctaid(usize),
    Nctaid(usize),
    LaneId,
    WarpId,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Operand {
    Reg(u32),
    /// Raw bits, already in the instruction type's encoding (floats as IEEE bits).
    Imm(u64),
    Special(Special),
}

/// `[base + offset]`. A named variable's address is folded into `offset` at decode time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Addr {
    pub base: Option<u32>,
    pub offset: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    MulLo,
    MulHi,
    MulWide,
    Div,
    Rem,
    Min,
    Max,
    And,
    Or,
    Xor,
    Shl,
    Shr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnOp {
    Neg,
    Not,
    Abs,
    Rcp,
    Sqrt,
    Ex2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    /// The unordered float forms: true when either side is NaN.
    Equ,
    Neu,
    Ltu,
    Leu,
    Gtu,
    Geu,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShflMode {
    Up,
    Down,
    Bfly,
    Idx,
}

/// Float behaviour modifiers shared by arithmetic instructions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FloatMods {
    pub round: Option<Round>,
    pub ftz: bool,
    pub sat: bool,
    pub approx: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Mov {
        ty: Ty,
        d: u32,
        a: Operand,
    },
    /// `mov.b64 {lo, hi}, r` and `mov.b32 {lo, hi}, r`.
    Unpack {
        part_bits: u32,
        d: Vec<u32>,
        a: Operand,
    },
    /// `mov.b64 r, {lo, hi}`.
    Pack {
        part_bits: u32,
        d: u32,
        a: Vec<Operand>,
    },
    Bin {
        op: BinOp,
        ty: Ty,
        fm: FloatMods,
        d: u32,
        a: Operand,
        b: Operand,
    },
    Un {
        op: UnOp,
        ty: Ty,
        fm: FloatMods,
        d: u32,
        a: Operand,
    },
    /// `fma.rnd.f32/f64` and `mad.lo/.wide` on integers.
    Fma {
        ty: Ty,
        fm: FloatMods,
        wide: bool,
        d: u32,
        a: Operand,
        b: Operand,
        c: Operand,
    },
    Setp {
        cmp: Cmp,
        ty: Ty,
        d: u32,
        a: Operand,
        b: Operand,
    },
    Selp {
        ty: Ty,
        d: u32,
        a: Operand,
        b: Operand,
        p: Operand,
    },
    Cvt {
        dty: Ty,
        sty: Ty,
        fm: FloatMods,
        /// `.rni` style: round a float to an integral value.
        int_round: bool,
        d: u32,
        a: Operand,
    },
    /// `cvt.rn.bf16x2.f32 d, hi, lo`.
    CvtPackBf16 {
        d: u32,
        hi: Operand,
        lo: Operand,
    },
    Prmt {
        d: u32,
        a: Operand,
        b: Operand,
        c: Operand,
    },
    Bfi {
        ty: Ty,
        d: u32,
        a: Operand,
        b: Operand,
        pos: Operand,
        len: Operand,
    },
    Ld {
        space: Space,
        ty: Ty,
        d: Vec<u32>,
        addr: Addr,
    },
    St {
        space: Space,
        ty: Ty,
        addr: Addr,
        a: Vec<Operand>,
    },
    Bra {
        target: usize,
    },
    Ret,
    BarSync {
        id: Operand,
    },
    Shfl {
        mode: ShflMode,
        d: u32,
        dp: Option<u32>,
        a: Operand,
        b: Operand,
        c: Operand,
        mask: Operand,
    },
    Mma {
        d: [u32; 4],
        a: [Operand; 4],
        b: [Operand; 2],
        c: [Operand; 4],
    },
    Ldmatrix {
        trans: bool,
        d: Vec<u32>,
        addr: Addr,
    },
    CpAsync {
        dst: Addr,
        src: Addr,
        bytes: u32,
    },
    CpAsyncCommit,
    CpAsyncWait {
        n: u32,
        /// `wait_all`: commit the open group first, then wait for everything.
        commit: bool,
    },
}

impl Op {
    /// Instructions at which a thread must wait for others of its warp or block.
    pub fn is_collective(&self) -> bool {
        matches!(
            self,
            Op::BarSync { .. } | Op::Shfl { .. } | Op::Mma { .. } | Op::Ldmatrix { .. }
        )
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Instr {
    /// `@%p` / `@!%p`: the predicate slot and whether it is negated.
    pub guard: Option<(u32, bool)>,
    pub op: Op,
    /// 1-based line in the PTX text, for every report.
    pub line: usize,
}
