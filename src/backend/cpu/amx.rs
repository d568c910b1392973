//! `y = x · Wᵀ` on Intel AMX tiles: bf16 operands, f32 accumulation, 16×16 outputs per
//! `tdpbf16ps`.
//!
//! W sits in `PairPanels` (bf16_linear.rs): per 16 outputs, the k-pairs one after the
//! other, which is exactly AMX's B-tile layout (a tile row is one k-pair of 16 outputs).
//! x is rounded to bf16 once, rows padded to `KSTEP`. Every output is accumulated over
//! the k-steps in order from +0 by the same instruction, whatever the tile's row count:
//! a tile row is an independent chain, so a row's outputs are the same alone or in a batch.
//!
//! Register map, fixed for every tile shape: C (accumulators) `tmm0..=3` as
//! `2·row_tile + panel`, A (activations) `tmm4..=5`, B (weights) `tmm6..=7`.
//! Rust has no stable AMX intrinsics, so the instructions are inline assembly.

use std::sync::OnceLock;

/// k per tile product: a 64-byte tile row of bf16.
pub const KSTEP: usize = 32;
/// Rows of an A or C tile, and k-pairs of a B tile.
const TILE_ROWS: usize = 16;

/// AMX-BF16 on this CPU and the kernel's permission to use its tile state (Linux asks
/// each process to request it: arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)).
pub fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(detect)
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn detect() -> bool {
    // SAFETY: cpuid leaf 7 exists on every x86_64 CPU rustc targets.
    let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
    let (amx_bf16, amx_tile) = (leaf7.edx & (1 << 22) != 0, leaf7.edx & (1 << 24) != 0);
    if !(amx_bf16 && amx_tile) {
        return false;
    }
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain syscall with integer arguments; it changes only this process's
    // permitted xsave features.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        )
    };
    rc == 0
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect() -> bool {
    false
}

/// One block of work: rows `rows` of the bf16 activations `a` (row stride `k_pad`)
/// against panels `panels` of `w` (each `k_pad · 16` bf16, k-pair-major), written to the
/// f32 `[m, n]` output `out`.
pub struct Block<'a> {
    pub a: &'a [u16],
    pub k_pad: usize,
    pub w: &'a [u16],
    pub n: usize,
}

#[cfg(target_arch = "x86_64")]
mod tiles {
    use super::*;
    use std::arch::asm;

    /// The 64-byte tile configuration (palette 1): bytes per row and rows of each tile.
    #[repr(C, align(64))]
    pub struct Config([u8; 64]);

    impl Config {
        /// A tiles of `r0` and `r1` rows (`r1` 0 when one row tile); every B tile full.
        pub fn new(r0: usize, r1: usize) -> Config {
            let mut c = [0u8; 64];
            c[0] = 1;
            let mut set = |t: usize, rows: usize| {
                c[16 + 2 * t..18 + 2 * t].copy_from_slice(&64u16.to_le_bytes());
                c[48 + t] = rows as u8;
            };
            for (t, rows) in [(0, r0), (1, r0), (2, r1), (3, r1), (4, r0), (5, r1)] {
                if rows > 0 {
                    set(t, rows);
                }
            }
            set(6, TILE_ROWS);
            set(7, TILE_ROWS);
            Config(c)
        }

        /// # Safety
        /// AMX must be available (`available()`).
        #[inline(always)]
        pub unsafe fn load(&self) {
            // SAFETY: a valid palette-1 configuration; the caller checked AMX.
            unsafe { asm!("ldtilecfg [{0}]", in(reg) self.0.as_ptr(), options(nostack)) };
        }
    }

    /// # Safety
    /// The tiles were configured; nothing is read or written.
    #[inline(always)]
    pub unsafe fn release() {
        // SAFETY: resets tile state only.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }

    macro_rules! by_tile {
        ($t:expr, $($n:literal => $body:expr),* $(,)?) => {
            match $t { $($n => $body,)* _ => unreachable!("tile register {}", $t) }
        };
    }

    /// Loads tile `T` from `ptr`, rows `stride` bytes apart.
    ///
    /// # Safety
    /// Every configured row of tile `T` (64 bytes each) must be readable at `ptr + row·stride`.
    #[inline(always)]
    pub unsafe fn load<const T: usize>(ptr: *const u16, stride: usize) {
        // SAFETY (every arm): the caller's promise on `ptr` and `stride`.
        unsafe {
            by_tile!(T,
                4 => asm!("tileloadd tmm4, [{0} + {1}]", in(reg) ptr, in(reg) stride, options(nostack, readonly)),
                5 => asm!("tileloadd tmm5, [{0} + {1}]", in(reg) ptr, in(reg) stride, options(nostack, readonly)),
                6 => asm!("tileloadd tmm6, [{0} + {1}]", in(reg) ptr, in(reg) stride, options(nostack, readonly)),
                7 => asm!("tileloadd tmm7, [{0} + {1}]", in(reg) ptr, in(reg) stride, options(nostack, readonly)),
            )
        }
    }

    /// Zeroes accumulator `C`.
    ///
    /// # Safety
    /// The tiles were configured.
    #[inline(always)]
    pub unsafe fn zero<const C: usize>() {
        // SAFETY (every arm): register-only.
        unsafe {
            by_tile!(C,
                0 => asm!("tilezero tmm0", options(nostack, nomem)),
                1 => asm!("tilezero tmm1", options(nostack, nomem)),
                2 => asm!("tilezero tmm2", options(nostack, nomem)),
                3 => asm!("tilezero tmm3", options(nostack, nomem)),
            )
        }
    }

    /// `C += A · B` for row tile `R` and panel `P`: C = tmm(2R+P), A = tmm(4+R), B = tmm(6+P).
    ///
    /// # Safety
    /// The tiles were configured and loaded.
    #[inline(always)]
    pub unsafe fn dot<const R: usize, const P: usize>() {
        // SAFETY (every arm): register-only.
        unsafe {
            by_tile!(2 * R + P,
                0 => asm!("tdpbf16ps tmm0, tmm4, tmm6", options(nostack, nomem)),
                1 => asm!("tdpbf16ps tmm1, tmm4, tmm7", options(nostack, nomem)),
                2 => asm!("tdpbf16ps tmm2, tmm5, tmm6", options(nostack, nomem)),
                3 => asm!("tdpbf16ps tmm3, tmm5, tmm7", options(nostack, nomem)),
            )
        }
    }

    /// Stores accumulator `C` to `ptr`, rows `stride` bytes apart.
    ///
    /// # Safety
    /// Every configured row of tile `C` (64 bytes) must be writable at `ptr + row·stride`.
    #[inline(always)]
    pub unsafe fn store<const C: usize>(ptr: *mut f32, stride: usize) {
        // SAFETY (every arm): the caller's promise on `ptr` and `stride`.
        unsafe {
            by_tile!(C,
                0 => asm!("tilestored [{0} + {1}], tmm0", in(reg) ptr, in(reg) stride, options(nostack)),
                1 => asm!("tilestored [{0} + {1}], tmm1", in(reg) ptr, in(reg) stride, options(nostack)),
                2 => asm!("tilestored [{0} + {1}], tmm2", in(reg) ptr, in(reg) stride, options(nostack)),
                3 => asm!("tilestored [{0} + {1}], tmm3", in(reg) ptr, in(reg) stride, options(nostack)),
            )
        }
    }
}

#[cfg(target_arch = "x86_64")]
impl Block<'_> {
    /// Rows `rows` (at most 32: up to two row tiles) against panels `p0..p0+P`, `P` ≤ 2.
    ///
    /// # Safety
    /// AMX available and configured for these row counts; `out` is the `[m, n]` output
    /// and covers `rows`.
    #[inline(always)]
    unsafe fn tile<const RT: usize, const P: usize>(
        &self,
        rows: std::ops::Range<usize>,
        p0: usize,
        out: *mut f32,
    ) {
        use tiles::*;
        let steps = self.k_pad / KSTEP;
        let a_stride = self.k_pad * 2;
        let panel_len = self.k_pad * 16;
        let a0 = self.a[rows.start * self.k_pad..].as_ptr();
        let a1 = self.a[(rows.start + TILE_ROWS).min(rows.end) * self.k_pad..].as_ptr();
        // SAFETY (the whole body): A tiles read rows `rows` of `a` (k_pad each), B tiles one
        // k-step (16 pairs × 64 bytes) of panels p0, p0+1, all inside their slices; the
        // caller configured the tiles for these row counts.
        unsafe {
            zero::<0>();
            if P == 2 {
                zero::<1>();
            }
            if RT == 2 {
                zero::<2>();
                if P == 2 {
                    zero::<3>();
                }
            }
            for s in 0..steps {
                let w0 = self.w[p0 * panel_len + s * KSTEP * 16..].as_ptr();
                load::<6>(w0, 64);
                if P == 2 {
                    load::<7>(w0.add(panel_len), 64);
                }
                load::<4>(a0.add(s * KSTEP), a_stride);
                dot::<0, 0>();
                if P == 2 {
                    dot::<0, 1>();
                }
                if RT == 2 {
                    load::<5>(a1.add(s * KSTEP), a_stride);
                    dot::<1, 0>();
                    if P == 2 {
                        dot::<1, 1>();
                    }
                }
            }
            self.store_tile::<0>(rows.start, rows.len().min(TILE_ROWS), p0, out);
            if P == 2 {
                self.store_tile::<1>(rows.start, rows.len().min(TILE_ROWS), p0 + 1, out);
            }
            if RT == 2 {
                let r = rows.start + TILE_ROWS;
                self.store_tile::<2>(r, rows.end - r, p0, out);
                if P == 2 {
                    self.store_tile::<3>(r, rows.end - r, p0 + 1, out);
                }
            }
        }
    }

    /// Accumulator `C` (rows `r0..r0+rows` of panel `p`) into `out`, cutting the padded
    /// columns of the last panel.
    ///
    /// # Safety
    /// As `tile`.
    #[inline(always)]
    unsafe fn store_tile<const C: usize>(&self, r0: usize, rows: usize, p: usize, out: *mut f32) {
        let c0 = p * 16;
        let width = 16.min(self.n - c0);
        // SAFETY: rows r0..r0+rows, columns c0..c0+16 lie inside the [m, n] output when
        // the panel is full; a partial one goes through `tmp` first.
        unsafe {
            if width == 16 {
                tiles::store::<C>(out.add(r0 * self.n + c0), self.n * 4);
            } else {
                let mut tmp = [[0f32; 16]; TILE_ROWS];
                tiles::store::<C>(tmp.as_mut_ptr().cast(), 64);
                for (r, row) in tmp.iter().enumerate().take(rows) {
                    let dst = out.add((r0 + r) * self.n + c0);
                    std::ptr::copy_nonoverlapping(row.as_ptr(), dst, width);
                }
            }
        }
    }

    /// Rows `rows` against panels `panels`: pairs of row tiles against pairs of panels,
    /// a few panels at a time so they stay in cache while every row passes over them.
    ///
    /// # Safety
    /// `available()` is true; `out` is the `[m, n]` output and covers `rows`.
    pub unsafe fn run(
        &self,
        rows: std::ops::Range<usize>,
        panels: std::ops::Range<usize>,
        cache_panels: usize,
        out: *mut f32,
    ) {
        use tiles::Config;
        let mut configured = None;
        let mut p = panels.start;
        while p < panels.end {
            let chunk_end = (p + cache_panels).min(panels.end);
            let mut r = rows.start;
            while r < rows.end {
                let take = (rows.end - r).min(2 * TILE_ROWS);
                let shape = (take.min(TILE_ROWS), take.saturating_sub(TILE_ROWS));
                // SAFETY (block): the caller checked AMX; each tile covers rows r..r+take
                // inside `rows` and panels inside `panels`.
                unsafe {
                    if configured != Some(shape) {
                        Config::new(shape.0, shape.1).load();
                        configured = Some(shape);
                    }
                    let mut q = p;
                    while q + 2 <= chunk_end {
                        if shape.1 > 0 {
                            self.tile::<2, 2>(r..r + take, q, out);
                        } else {
                            self.tile::<1, 2>(r..r + take, q, out);
                        }
                        q += 2;
                    }
                    if q < chunk_end {
                        if shape.1 > 0 {
                            self.tile::<2, 1>(r..r + take, q, out);
                        } else {
                            self.tile::<1, 1>(r..r + take, q, out);
                        }
                    }
                }
                r += take;
            }
            p = chunk_end;
        }
        if configured.is_some() {
            // SAFETY: the tiles were configured above.
            unsafe { tiles::release() };
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
impl Block<'_> {
    /// # Safety
    /// Never callable: `available()` is false off x86_64.
    pub unsafe fn run(
        &self,
        _rows: std::ops::Range<usize>,
        _panels: std::ops::Range<usize>,
        _cache_panels: usize,
        _out: *mut f32,
    ) {
        unreachable!("AMX is x86_64 only")
    }
}
