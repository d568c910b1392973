//! Run-time choice of instruction set for the CPU backend's elementwise and reduction
//! loops. The release build targets baseline x86-64 (SSE2) so one binary runs anywhere;
//! `multiversion!` compiles a loop body again for AVX-512 and for AVX2+FMA and calls the
//! best one the CPU has. Bodies use `mul_add` where they fuse, so every version computes
//! the same function bit for bit (the portable one through libm's `fmaf`): the choice
//! changes speed, never numbers.

/// The widest instruction set this CPU offers among those bodies are compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Avx512,
    Avx2Fma,
    Baseline,
}

pub fn isa() -> Isa {
    static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *ISA.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Isa::Avx2Fma;
            }
        }
        Isa::Baseline
    })
}

/// `vis fn name(args) -> ret = body;` defines `name`, which runs the `#[inline(always)]`
/// function `body` compiled for the best instruction set `isa()` found.
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? = $body:path;) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                use $crate::backend::cpu::simd::{isa, Isa};
                #[target_feature(enable = "avx512f")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                match isa() {
                    // SAFETY: isa() detected avx512f on this CPU.
                    Isa::Avx512 => return unsafe { avx512($($arg),*) },
                    // SAFETY: isa() detected avx2 and fma on this CPU.
                    Isa::Avx2Fma => return unsafe { avx2($($arg),*) },
                    Isa::Baseline => {}
                }
            }
            $body($($arg),*)
        }
    };
}
pub(crate) use multiversion;
