//! PTX as NVRTC emits it for asyncthink's kernels: text → tokens → outline → decoded kernels.

pub mod decode;
pub mod instr;
pub mod lex;
pub mod parse;

use instr::{Instr, Ty};

#[derive(Debug, Clone)]
pub struct Param {
    pub name: String,
    pub ty: Ty,
    /// Byte offset in the parameter buffer, as the driver packs `kernelParams`.
    pub offset: usize,
}

/// A decoded `.entry`, ready to launch.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub name: String,
    pub params: Vec<Param>,
    pub param_bytes: usize,
    /// One slot per virtual register; its declared type (for sign extension and width).
    pub reg_types: Vec<Ty>,
    pub instrs: Vec<Instr>,
    pub static_shared: usize,
    /// Where `extern .shared x[]` starts in the block's window, if the kernel uses it.
    pub dynamic_shared_offset: Option<usize>,
    pub local_bytes: usize,
    pub maxntid: Option<[u32; 3]>,
}
