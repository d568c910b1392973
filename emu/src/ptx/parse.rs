//! Tokens to a module outline: variables, kernels with their parameters, register
//! declarations, labels and instructions whose operands are still names. `decode` turns
//! the instructions into `Op`s once the addresses of variables are known.

use super::instr::Ty;
use super::lex::{Tok, Token, parse_number, tokenize};
use crate::error::{EmuError, Result};

#[derive(Debug, Clone, PartialEq)]
pub enum RawOperand {
    /// A register, special register, label or variable name.
    Name(String),
    Imm(u64),
    /// `[name]`, `[name+8]`, `[%rd1+-4]`, `[64]`.
    Mem {
        base: Option<String>,
        offset: i64,
    },
    /// `{%r1, %r2}`.
    Vec(Vec<RawOperand>),
    /// `%r1|%p1`: shfl's value and predicate destinations.
    Pair(String, String),
}

#[derive(Debug, Clone)]
pub struct RawInstr {
    pub guard: Option<(String, bool)>,
    pub opcode: String,
    pub operands: Vec<RawOperand>,
    pub line: usize,
}

/// A variable in the global, shared, local or const space.
#[derive(Debug, Clone)]
pub struct VarDecl {
    pub name: String,
    pub align: usize,
    /// 0 with `is_dynamic` for `.extern .shared x[]` (dynamic shared memory).
    pub bytes: usize,
    pub is_dynamic: bool,
    pub init: Vec<u8>,
    pub line: usize,
}

#[derive(Debug, Clone)]
pub enum BodyItem {
    Reg {
        ty: Ty,
        name: String,
        count: Option<u32>,
    },
    Local(VarDecl),
    Shared(VarDecl),
    Label(String),
    Instr(RawInstr),
    ScopeOpen,
    ScopeClose,
}

#[derive(Debug, Clone)]
pub struct RawKernel {
    pub name: String,
    pub params: Vec<(String, Ty)>,
    pub maxntid: Option<[u32; 3]>,
    pub body: Vec<BodyItem>,
    pub line: usize,
}

#[derive(Debug, Clone, Default)]
pub struct RawModule {
    pub version: String,
    pub target: String,
    pub globals: Vec<VarDecl>,
    pub shared: Vec<VarDecl>,
    pub kernels: Vec<RawKernel>,
}

struct Parser {
    toks: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn line(&self) -> usize {
        self.toks
            .get(self.pos)
            .or(self.toks.last())
            .map_or(0, |t| t.line)
    }

    fn err<T>(&self, msg: impl Into<String>) -> Result<T> {
        Err(EmuError::Parse {
            line: self.line(),
            msg: msg.into(),
        })
    }

    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|t| &t.tok)
    }

    fn next(&mut self) -> Result<Tok> {
        match self.toks.get(self.pos) {
            Some(t) => {
                self.pos += 1;
                Ok(t.tok.clone())
            }
            None => self.err("unexpected end of PTX"),
        }
    }

    fn word(&mut self) -> Result<String> {
        match self.next()? {
            Tok::Word(w) => Ok(w),
            Tok::Punct(c) => {
                self.pos -= 1;
                self.err(format!("expected a name, found `{c}`"))
            }
        }
    }

    fn punct(&mut self, want: char) -> Result<()> {
        match self.next()? {
            Tok::Punct(c) if c == want => Ok(()),
            other => {
                self.pos -= 1;
                self.err(format!("expected `{want}`, found {other:?}"))
            }
        }
    }

    fn eat(&mut self, want: char) -> bool {
        if self.peek() == Some(&Tok::Punct(want)) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn eat_word(&mut self, want: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Word(w)) if w == want) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn number(&mut self) -> Result<u64> {
        let neg = self.eat('-');
        let w = self.word()?;
        match parse_number(&w) {
            Some(v) if neg => Ok(v.wrapping_neg()),
            Some(v) => Ok(v),
            None => self.err(format!("expected a number, found `{w}`")),
        }
    }

    fn skip_to_semicolon(&mut self) -> Result<()> {
        while !self.eat(';') {
            self.next()?;
        }
        Ok(())
    }

    fn module(&mut self) -> Result<RawModule> {
        let mut m = RawModule::default();
        while self.pos < self.toks.len() {
            let w = self.word()?;
            match w.as_str() {
                ".version" => m.version = self.word()?,
                ".target" => {
                    m.target = self.word()?;
                    while self.eat(',') {
                        self.word()?;
                    }
                }
                ".address_size" => {
                    if self.number()? != 64 {
                        return self.err("only .address_size 64 is supported");
                    }
                }
                ".visible" | ".weak" => {}
                ".extern" => {
                    if self.eat_word(".shared") {
                        m.shared.push(self.var_decl()?);
                    } else {
                        return self.err("only .extern .shared is supported at module scope");
                    }
                }
                ".entry" => m.kernels.push(self.kernel()?),
                ".global" | ".const" => m.globals.push(self.var_decl()?),
                ".shared" => m.shared.push(self.var_decl()?),
                ".func" => {
                    return self.err(".func (a non-inlined device function) is not supported");
                }
                other => return self.err(format!("unsupported module directive `{other}`")),
            }
        }
        Ok(m)
    }

    /// `[.align N] .type name[N]? [= {..} | = v];` after the space keyword.
    fn var_decl(&mut self) -> Result<VarDecl> {
        let line = self.line();
        let mut align = 1;
        if self.eat_word(".align") {
            align = self.number()? as usize;
        }
        let tyw = self.word()?;
        let Some(ty) = tyw.strip_prefix('.').and_then(Ty::parse) else {
            return self.err(format!("expected a type, found `{tyw}`"));
        };
        let name = self.word()?;
        let (mut count, mut is_dynamic) = (1usize, false);
        if self.eat('[') {
            if self.eat(']') {
                is_dynamic = true;
                count = 0;
            } else {
                count = self.number()? as usize;
                self.punct(']')?;
            }
        }
        let elem = ty.bytes();
        let mut init = Vec::new();
        if self.eat('=') {
            let braced = self.eat('{');
            loop {
                let v = self.number()?;
                init.extend_from_slice(&v.to_le_bytes()[..elem]);
                if !self.eat(',') {
                    break;
                }
            }
            if braced {
                self.punct('}')?;
            }
        }
        self.punct(';')?;
        Ok(VarDecl {
            name,
            align: align.max(elem),
            bytes: elem * count,
            is_dynamic,
            init,
            line,
        })
    }

    fn kernel(&mut self) -> Result<RawKernel> {
        let line = self.line();
        let name = self.word()?;
        let mut params = Vec::new();
        if self.eat('(') {
            while !self.eat(')') {
                if !self.eat_word(".param") {
                    return self.err("expected .param");
                }
                let tyw = self.word()?;
                let Some(ty) = tyw.strip_prefix('.').and_then(Ty::parse) else {
                    return self.err(format!(
                        "kernel parameter of type `{tyw}`: only scalar parameters are supported"
                    ));
                };
                params.push((self.word()?, ty));
                self.eat(',');
            }
        }
        let mut maxntid = None;
        while let Some(Tok::Word(w)) = self.peek().cloned() {
            self.pos += 1;
            match w.as_str() {
                ".maxntid" | ".reqntid" => {
                    let mut dims = [1u32; 3];
                    for (i, d) in dims.iter_mut().enumerate() {
                        if i > 0 && !self.eat(',') {
                            break;
                        }
                        *d = self.number()? as u32;
                    }
                    maxntid = Some(dims);
                }
                ".minnctapersm" | ".maxnreg" | ".maxnctapersm" => {
                    self.number()?;
                }
                other => return self.err(format!("unsupported kernel directive `{other}`")),
            }
        }
        self.punct('{')?;
        let body = self.body()?;
        Ok(RawKernel {
            name,
            params,
            maxntid,
            body,
            line,
        })
    }

    fn body(&mut self) -> Result<Vec<BodyItem>> {
        let mut items = Vec::new();
        let mut depth = 1;
        loop {
            let line = self.line();
            match self.next()? {
                Tok::Punct('{') => {
                    depth += 1;
                    items.push(BodyItem::ScopeOpen);
                }
                Tok::Punct('}') => {
                    depth -= 1;
                    if depth == 0 {
                        return Ok(items);
                    }
                    items.push(BodyItem::ScopeClose);
                }
                Tok::Punct('@') => {
                    let neg = self.eat('!');
                    let p = self.word()?;
                    let mut ins = self.instr(line)?;
                    ins.guard = Some((p, neg));
                    items.push(BodyItem::Instr(ins));
                }
                Tok::Word(w) if w == ".reg" => {
                    let tyw = self.word()?;
                    let Some(ty) = tyw.strip_prefix('.').and_then(Ty::parse) else {
                        return self.err(format!("register type `{tyw}`"));
                    };
                    loop {
                        let name = self.word()?;
                        let count = if self.eat('<') {
                            let n = self.number()? as u32;
                            self.punct('>')?;
                            Some(n)
                        } else {
                            None
                        };
                        items.push(BodyItem::Reg { ty, name, count });
                        if !self.eat(',') {
                            break;
                        }
                    }
                    self.punct(';')?;
                }
                Tok::Word(w) if w == ".local" => items.push(BodyItem::Local(self.var_decl()?)),
                Tok::Word(w) if w == ".shared" => items.push(BodyItem::Shared(self.var_decl()?)),
                Tok::Word(w) if w == ".pragma" => self.skip_to_semicolon()?,
                Tok::Word(w) if self.peek() == Some(&Tok::Punct(':')) => {
                    self.pos += 1;
                    items.push(BodyItem::Label(w));
                }
                Tok::Word(_) => {
                    self.pos -= 1;
                    items.push(BodyItem::Instr(self.instr(line)?));
                }
                Tok::Punct(c) => return self.err(format!("unexpected `{c}` in a kernel body")),
            }
        }
    }

    fn instr(&mut self, line: usize) -> Result<RawInstr> {
        let opcode = self.word()?;
        let mut operands = Vec::new();
        if !self.eat(';') {
            loop {
                operands.push(self.operand()?);
                if self.eat(';') {
                    break;
                }
                self.punct(',')?;
            }
        }
        Ok(RawInstr {
            guard: None,
            opcode,
            operands,
            line,
        })
    }

    fn operand(&mut self) -> Result<RawOperand> {
        if self.eat('[') {
            let mut base = None;
            let mut offset = 0i64;
            if let Some(Tok::Word(w)) = self.peek().cloned()
                && parse_number(&w).is_none()
            {
                self.pos += 1;
                base = Some(w);
            }
            if base.is_none() || self.eat('+') {
                offset = self.number()? as i64;
            }
            self.punct(']')?;
            return Ok(RawOperand::Mem { base, offset });
        }
        if self.eat('{') {
            let mut v = Vec::new();
            loop {
                v.push(self.operand()?);
                if self.eat('}') {
                    return Ok(RawOperand::Vec(v));
                }
                self.punct(',')?;
            }
        }
        if self.peek() == Some(&Tok::Punct('-')) {
            return Ok(RawOperand::Imm(self.number()?));
        }
        let w = self.word()?;
        if let Some(v) = parse_number(&w) {
            return Ok(RawOperand::Imm(v));
        }
        if self.eat('|') {
            return Ok(RawOperand::Pair(w, self.word()?));
        }
        Ok(RawOperand::Name(w))
    }
}

pub fn parse(src: &str) -> Result<RawModule> {
    let mut p = Parser {
        toks: tokenize(src)?,
        pos: 0,
    };
    p.module()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_kernel_outline() {
        let m = parse(
            ".version 9.0\n.target sm_90\n.address_size 64\n\
             .global .align 4 .b8 tbl[4] = {1, 2, 3, 4};\n\
             .extern .shared .align 16 .b8 dyn[];\n\
             .visible .entry k(.param .u64 k_param_0, .param .f32 k_param_1) .maxntid 128, 1, 1\n\
             { .reg .pred %p<2>; .reg .b64 %rd<3>;\n\
               ld.param.u64 %rd1, [k_param_0];\n\
               @!%p1 bra $L__BB0_1;\n\
               { cvt.f32.bf16 %f1, %rs1; }\n\
               ld.shared.v2.f32 {%f1, %f2}, [%rd1+-8];\n\
             $L__BB0_1:\n ret;\n}",
        )
        .unwrap();
        assert_eq!(m.target, "sm_90");
        assert_eq!(m.globals[0].init, vec![1, 2, 3, 4]);
        assert!(m.shared[0].is_dynamic);
        let k = &m.kernels[0];
        assert_eq!(k.params.len(), 2);
        assert_eq!(k.maxntid, Some([128, 1, 1]));
        let instrs: Vec<_> = k
            .body
            .iter()
            .filter_map(|b| match b {
                BodyItem::Instr(i) => Some(i),
                _ => None,
            })
            .collect();
        assert_eq!(instrs[1].guard, Some(("%p1".into(), true)));
        assert_eq!(
            instrs[3].operands[1],
            RawOperand::Mem {
                base: Some("%rd1".into()),
                offset: -8
            }
        );
    }
}
