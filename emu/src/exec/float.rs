//! Float semantics the ISA pins down bit for bit: rounding modes (through exact error terms,
//! so directed rounding is exact too), flush-to-zero, saturation, canonical NaNs, bf16.

use crate::ptx::instr::Round;

/// The NaN every f32 arithmetic instruction returns.
pub const NAN_F32: u32 = 0x7FFF_FFFF;
pub const NAN_F64: u64 = 0x7FFF_FFFF_FFFF_FFFF;
pub const NAN_BF16: u16 = 0x7FFF;

pub fn ftz32(x: f32) -> f32 {
    if x.is_subnormal() {
        0f32.copysign(x)
    } else {
        x
    }
}

pub fn canon32(x: f32) -> u32 {
    if x.is_nan() { NAN_F32 } else { x.to_bits() }
}

pub fn canon64(x: f64) -> u64 {
    if x.is_nan() { NAN_F64 } else { x.to_bits() }
}

/// `x` (an f32 rounded to nearest from the exact value `exact = s + e`, where `s` is the f64
/// nearest the exact result and `e` the exact error) moved to the neighbour the mode asks for.
fn directed(x: f32, s: f64, e: f64, mode: Round) -> f32 {
    if x.is_nan() || (x.is_infinite() && s.is_infinite()) {
        return x;
    }
    // Compare the candidate against the exact value s + e.
    let xd = x as f64;
    let above = xd > s || (xd == s && e < 0.0);
    let below = xd < s || (xd == s && e > 0.0);
    let toward_zero = |x: f32| if x > 0.0 { x.next_down() } else { x.next_up() };
    match mode {
        Round::Nearest => x,
        Round::Down if above => x.next_down(),
        Round::Up if below => x.next_up(),
        Round::Zero if (x > 0.0 && above) || (x < 0.0 && below) => toward_zero(x),
        Round::Zero if x.is_infinite() => toward_zero(x),
        _ => x,
    }
}

/// f32 `a + b` in any rounding mode: the f64 sum is within one f64 ulp, TwoSum gives the
/// rest exactly.
pub fn add32(a: f32, b: f32, mode: Round) -> f32 {
    let (a, b) = (a as f64, b as f64);
    let s = a + b;
    let bb = s - a;
    let e = (a - (s - bb)) + (b - bb);
    directed(s as f32, s, e, mode)
}

/// f32 `a * b` in any rounding mode: the product of two f32s is exact in f64.
pub fn mul32(a: f32, b: f32, mode: Round) -> f32 {
    let p = a as f64 * b as f64;
    directed(p as f32, p, 0.0, mode)
}

/// f32 `a * b + c` rounded once to nearest, as one FMA instruction where the CPU has one:
/// built without the target feature, `mul_add` is a call into libm's `fmaf`, and this sits in
/// every kernel's inner loop.
pub fn fma_rn32(a: f32, b: f32, c: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has FMA, checked just above.
        return unsafe { fma_unit32(a, b, c) };
    }
    a.mul_add(b, c)
}

/// f64 `a * b + c` rounded once to nearest, as `fma_rn32`.
pub fn fma_rn64(a: f64, b: f64, c: f64) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has FMA, checked just above.
        return unsafe { fma_unit64(a, b, c) };
    }
    a.mul_add(b, c)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
fn fma_unit32(a: f32, b: f32, c: f32) -> f32 {
    a.mul_add(b, c)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
fn fma_unit64(a: f64, b: f64, c: f64) -> f64 {
    a.mul_add(b, c)
}

/// f32 `a * b + c` rounded once, in any rounding mode.
pub fn fma32(a: f32, b: f32, c: f32, mode: Round) -> f32 {
    if mode == Round::Nearest {
        return fma_rn32(a, b, c);
    }
    let p = a as f64 * b as f64;
    let c = c as f64;
    let s = p + c;
    let bb = s - p;
    let e = (p - (s - bb)) + (c - bb);
    let nearest = fma_rn32(a, b, c as f32);
    directed(nearest, s, e, mode)
}

/// A float rounded to an integral value (`cvt.rni/.rzi/.rmi/.rpi`).
pub fn round_integral(x: f64, mode: Round) -> f64 {
    match mode {
        Round::Nearest => x.round_ties_even(),
        Round::Zero => x.trunc(),
        Round::Down => x.floor(),
        Round::Up => x.ceil(),
    }
}

/// f32 to bf16, round to nearest even; NaN to the canonical bf16 NaN.
pub fn bf16_rn(x: f32) -> u16 {
    if x.is_nan() {
        return NAN_BF16;
    }
    let b = x.to_bits();
    let lsb = (b >> 16) & 1;
    (b.wrapping_add(0x7FFF + lsb) >> 16) as u16
}

pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// PTX `min`/`max` on floats: a NaN operand yields the other one, two NaNs the canonical
/// NaN, and -0 orders below +0.
pub fn minmax64(a: f64, b: f64, max: bool) -> f64 {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => f64::NAN,
        (true, false) => b,
        (false, true) => a,
        _ => {
            if a == b {
                // Equal values differ only in the sign of zero.
                if max == a.is_sign_positive() { a } else { b }
            } else if (a > b) == max {
                a
            } else {
                b
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directed_fma_brackets_the_exact_value() {
        // 1 + 2^-30 is between two f32s; rn gives 1, rp gives 1 + ulp, rm and rz give 1.
        let tiny = 2f32.powi(-30);
        assert_eq!(fma32(1.0, tiny, 1.0, Round::Nearest), 1.0);
        assert_eq!(fma32(1.0, tiny, 1.0, Round::Up), 1f32.next_up());
        assert_eq!(fma32(1.0, tiny, 1.0, Round::Down), 1.0);
        assert_eq!(fma32(-1.0, tiny, -1.0, Round::Down), (-1f32).next_down());
        assert_eq!(fma32(-1.0, tiny, -1.0, Round::Zero), -1.0);
        // The expf magic-number step NVRTC emits: fma.rm with 12582913 rounds 0.3*254 down.
        let r = fma32(0.3, 254.0, 12582913.0, Round::Down);
        assert_eq!(r, 12582989.0);
        // Exact results are unchanged by any mode.
        for m in [Round::Nearest, Round::Zero, Round::Down, Round::Up] {
            assert_eq!(fma32(2.0, 3.0, 1.0, m), 7.0);
            assert_eq!(add32(0.5, 0.25, m), 0.75);
        }
        assert_eq!(add32(1.0, tiny, Round::Up), 1f32.next_up());
        // (1 + 2^-23)^2 = 1 + 2^-22 + 2^-46: down drops the 2^-46, up adds an ulp.
        let u = 1f32.next_up();
        assert_eq!(mul32(u, u, Round::Down), u.next_up());
        assert_eq!(mul32(u, u, Round::Up), u.next_up().next_up());
    }

    #[test]
    fn bf16_ties_to_even_and_canonical_nan() {
        assert_eq!(bf16_rn(1.0), 0x3F80);
        // 1 + 2^-8 is a tie between 1 and 1 + 2^-7: even is 1.
        assert_eq!(bf16_rn(f32::from_bits(0x3F80_8000)), 0x3F80);
        assert_eq!(bf16_rn(f32::from_bits(0x3F81_8000)), 0x3F82);
        assert_eq!(bf16_rn(f32::from_bits(0x3F80_8001)), 0x3F81);
        assert_eq!(bf16_rn(f32::NAN), NAN_BF16);
        assert_eq!(bf16_rn(f32::MAX), 0x7F80);
        assert_eq!(bf16_rn(f32::from_bits(1)), 0);
        assert_eq!(bf16_to_f32(0xC000), -2.0);
    }

    #[test]
    fn minmax_nan_and_signed_zero() {
        assert_eq!(minmax64(f64::NAN, 1.0, true), 1.0);
        assert!(minmax64(-0.0, 0.0, true).is_sign_positive());
        assert!(minmax64(0.0, -0.0, false).is_sign_negative());
        assert_eq!(minmax64(2.0, 3.0, false), 2.0);
    }
}
