//! asyncthink's own elementwise and norm kernels, as NVRTC compiles them, run on the
//! emulator against a scalar reference of the same formula.

mod support;

use asyncthink_emu::exec::float::bf16_rn;
use asyncthink_emu::{Arg, Device, LaunchConfig};
use support::*;

const ARCHES: [&str; 2] = ["sm_90", "sm_80"];

#[test]
fn swiglu_matches_the_formula_within_one_bf16_ulp() {
    let Some(dir) = ptx_dir("swiglu_matches_the_formula_within_one_bf16_ulp") else {
        return;
    };
    // 1000 elements: not a multiple of the 256-thread block, so the bounds guard matters.
    let n = 1000;
    let gate = bf16_values(n, 1, 6.0);
    let up = bf16_values(n, 2, 2.0);
    for arch in ARCHES {
        let mut dev = Device::new(1 << 24);
        let m = dev.load_ptx(&ptx(&dir, "swiglu", arch)).unwrap();
        let (g, u) = (upload_u16(&mut dev, &gate), upload_u16(&mut dev, &up));
        let y = dev.alloc(n * 2).unwrap();
        let cfg = LaunchConfig::new([n.div_ceil(256) as u32, 1, 1], [256, 1, 1], 0);
        let args = [Arg::Ptr(g), Arg::Ptr(u), Arg::Ptr(y), Arg::U64(n as u64)];
        let stats = dev.launch(&m, "swiglu", &cfg, &args).unwrap();
        assert!(stats.instructions > 20 * n as u64);
        let out = download_u16(&dev, y, n);
        let (gf, uf) = (f32s(&gate), f32s(&up));
        let mut exact = 0;
        for i in 0..n {
            let want = bf16_rn(gf[i] / (1.0 + (-gf[i]).exp()) * uf[i]);
            assert!(
                bf16_ulps(out[i], want) <= 1,
                "{arch} swiglu[{i}]: {:#06x} vs {want:#06x}",
                out[i]
            );
            exact += (out[i] == want) as usize;
        }
        assert!(exact >= n * 99 / 100, "{arch}: only {exact}/{n} exact");
    }
}

#[test]
fn rms_norm_and_add_rms_norm_match_the_formula() {
    let Some(dir) = ptx_dir("rms_norm_and_add_rms_norm_match_the_formula") else {
        return;
    };
    // 3 rows of 1000: the 256-thread block strides a row 4 times with a ragged end.
    let (rows, cols, eps) = (3usize, 1000usize, 1e-6f32);
    let x = bf16_values(rows * cols, 3, 3.0);
    let delta = bf16_values(rows * cols, 4, 1.0);
    let w = bf16_values(cols, 5, 1.5);
    for arch in ARCHES {
        let mut dev = Device::new(1 << 24);
        let m = dev.load_ptx(&ptx(&dir, "rmsnorm", arch)).unwrap();
        let (xd, wd) = (upload_u16(&mut dev, &x), upload_u16(&mut dev, &w));
        let y = dev.alloc(rows * cols * 2).unwrap();
        let cfg = LaunchConfig::new([rows as u32, 1, 1], [256, 1, 1], 0);
        let args = [
            Arg::Ptr(xd),
            Arg::Ptr(wd),
            Arg::Ptr(y),
            Arg::I32(cols as i32),
            Arg::F32(eps),
        ];
        dev.launch(&m, "rms_norm", &cfg, &args).unwrap();
        let out = download_u16(&dev, y, rows * cols);
        check_norm(arch, &f32s(&x), &f32s(&w), &out, cols, eps);

        // add_rms_norm: residual += delta (rounded to bf16), then the same norm of it.
        let dd = upload_u16(&mut dev, &delta);
        let args = [
            Arg::Ptr(xd),
            Arg::Ptr(dd),
            Arg::Ptr(wd),
            Arg::Ptr(y),
            Arg::I32(cols as i32),
            Arg::F32(eps),
        ];
        dev.launch(&m, "add_rms_norm", &cfg, &args).unwrap();
        let res = download_u16(&dev, xd, rows * cols);
        let (xf, df) = (f32s(&x), f32s(&delta));
        for i in 0..rows * cols {
            assert_eq!(res[i], bf16_rn(xf[i] + df[i]), "{arch} residual[{i}]");
        }
        let out = download_u16(&dev, y, rows * cols);
        check_norm(arch, &f32s(&res), &f32s(&w), &out, cols, eps);
    }
}

fn check_norm(arch: &str, x: &[f32], w: &[f32], out: &[u16], cols: usize, eps: f32) {
    for (r, row) in x.chunks(cols).enumerate() {
        let ss: f64 = row.iter().map(|&v| v as f64 * v as f64).sum();
        let inv = 1.0 / ((ss / cols as f64) as f32 + eps).sqrt();
        for c in 0..cols {
            let want = bf16_rn(row[c] * inv * w[c]);
            let got = out[r * cols + c];
            assert!(
                bf16_ulps(got, want) <= 1,
                "{arch} row {r} col {c}: {got:#06x} vs {want:#06x}"
            );
        }
    }
}

/// A launch that reads past its input names the allocation it overran.
#[test]
fn an_overrun_names_the_allocation() {
    let Some(dir) = ptx_dir("an_overrun_names_the_allocation") else {
        return;
    };
    let mut dev = Device::new(1 << 24);
    let m = dev.load_ptx(&ptx(&dir, "swiglu", "sm_90")).unwrap();
    let n = 300;
    let g = dev.alloc(n * 2).unwrap();
    let u = dev.alloc(n * 2).unwrap();
    let y = dev.alloc(n * 2).unwrap();
    // Claiming 301 elements: thread 300 reads gate[300], two bytes past the end.
    let cfg = LaunchConfig::new([2, 1, 1], [256, 1, 1], 0);
    let err = dev
        .launch(
            &m,
            "swiglu",
            &cfg,
            &[
                Arg::Ptr(g),
                Arg::Ptr(u),
                Arg::Ptr(y),
                Arg::U64(n as u64 + 1),
            ],
        )
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("swiglu block [1, 0, 0] thread [44, 0, 0]"),
        "{msg}"
    );
    assert!(
        msg.contains(&format!(
            "0 bytes past the end of the 600-byte allocation at {g:#x}"
        )),
        "{msg}"
    );
}
