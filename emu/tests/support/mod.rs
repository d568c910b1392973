#![allow(dead_code)] // each test binary uses a different part of the shared support
//! Where the tests find NVRTC's PTX for kernels/*.cu: the directory `asyncthink kernels
//! compile` wrote (scripts/test-gpu-emulated.sh makes it and sets ASYNCTHINK_EMU_PTX_DIR).
//! Without it the kernel tests print that they skipped; with ASYNCTHINK_REQUIRE_GPU=1 they fail.

use std::path::PathBuf;

pub fn ptx_dir(test: &str) -> Option<PathBuf> {
    match std::env::var_os("ASYNCTHINK_EMU_PTX_DIR") {
        Some(d) => Some(PathBuf::from(d)),
        None if std::env::var("ASYNCTHINK_REQUIRE_GPU").as_deref() == Ok("1") => {
            panic!("{test}: ASYNCTHINK_REQUIRE_GPU=1 but ASYNCTHINK_EMU_PTX_DIR is unset")
        }
        None => {
            eprintln!(
                "SKIPPED {test}: no PTX (set ASYNCTHINK_EMU_PTX_DIR, as scripts/test-gpu-emulated.sh does)"
            );
            None
        }
    }
}

pub fn ptx(dir: &std::path::Path, file: &str, arch: &str) -> String {
    let p = dir.join(arch).join(format!("{file}.{arch}.ptx"));
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

use asyncthink_emu::Device;
use asyncthink_emu::exec::float::{bf16_rn, bf16_to_f32};

/// Deterministic values in [-scale, scale), rounded to bf16.
pub fn bf16_values(n: usize, seed: u64, scale: f32) -> Vec<u16> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let u = (s >> 40) as f32 / (1u64 << 24) as f32;
            bf16_rn((2.0 * u - 1.0) * scale)
        })
        .collect()
}

pub fn upload_u16(dev: &mut Device, v: &[u16]) -> u64 {
    let at = dev.alloc(v.len() * 2).unwrap();
    dev.write(at, bytemuck_u16(v)).unwrap();
    at
}

pub fn upload_f32(dev: &mut Device, v: &[f32]) -> u64 {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    let at = dev.alloc(bytes.len()).unwrap();
    dev.write(at, &bytes).unwrap();
    at
}

pub fn upload_u32(dev: &mut Device, v: &[u32]) -> u64 {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    let at = dev.alloc(bytes.len().max(4)).unwrap();
    dev.write(at, &bytes).unwrap();
    at
}

fn bytemuck_u16(v: &[u16]) -> &[u8] {
    // SAFETY: u16 has no padding and any byte pattern is valid for u8; the length covers
    // exactly the slice's memory.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), v.len() * 2) }
}

pub fn download_u16(dev: &Device, at: u64, n: usize) -> Vec<u16> {
    let mut b = vec![0u8; n * 2];
    dev.read(at, &mut b).unwrap();
    b.chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect()
}

pub fn download_f32(dev: &Device, at: u64, n: usize) -> Vec<f32> {
    let mut b = vec![0u8; n * 4];
    dev.read(at, &mut b).unwrap();
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

pub fn f32s(v: &[u16]) -> Vec<f32> {
    v.iter().map(|&h| bf16_to_f32(h)).collect()
}

/// Distance in bf16 ulps (same-sign values; the tests compare like-signed results).
pub fn bf16_ulps(a: u16, b: u16) -> u32 {
    let key = |h: u16| {
        if h & 0x8000 != 0 {
            -((h & 0x7FFF) as i32)
        } else {
            h as i32
        }
    };
    (key(a) - key(b)).unsigned_abs()
}
