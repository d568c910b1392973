//! The emulator's own semantics and checks, on small hand-written PTX kernels (no NVRTC
//! needed): each bug class a GPU would hide is caught, each collective computes what the
//! ISA says.

mod support;

use asyncthink_emu::exec::float::{bf16_rn, bf16_to_f32};
use asyncthink_emu::{Arg, Device, EmuError, LaunchConfig};
use support::*;

fn module(dev: &mut Device, kernels: &str) -> asyncthink_emu::Module {
    let src = format!(".version 9.0\n.target sm_90\n.address_size 64\n{kernels}");
    dev.load_ptx(&src).unwrap_or_else(|e| panic!("{e}\n{src}"))
}

fn one_block(threads: u32) -> LaunchConfig {
    LaunchConfig::new([1, 1, 1], [threads, 1, 1], 0)
}

/// Each thread writes its word of shared memory, then reads its neighbour's.
fn exchange(barrier: &str) -> String {
    format!(
        ".visible .entry exchange(.param .u64 out) {{
            .reg .b32 %r<8>; .reg .b64 %rd<4>;
            .shared .align 4 .b8 buf[128];
            mov.u32 %r1, %tid.x;
            shl.b32 %r2, %r1, 2;
            mov.u32 %r3, buf;
            add.u32 %r4, %r3, %r2;
            st.shared.u32 [%r4], %r1;
            {barrier}
            xor.b32 %r5, %r2, 4;
            add.u32 %r6, %r3, %r5;
            ld.shared.u32 %r7, [%r6];
            ld.param.u64 %rd1, [out];
            mul.wide.u32 %rd2, %r1, 4;
            add.s64 %rd3, %rd1, %rd2;
            st.global.u32 [%rd3], %r7;
            ret;
        }}"
    )
}

#[test]
fn a_missing_barrier_is_a_race_and_a_barrier_fixes_it() {
    let mut dev = Device::new(1 << 20);
    let out = dev.alloc(32 * 4).unwrap();
    let m = module(&mut dev, &exchange("bar.sync 0;"));
    dev.launch(&m, "exchange", &one_block(32), &[Arg::Ptr(out)])
        .unwrap();
    let mut b = [0u8; 128];
    dev.read(out, &mut b).unwrap();
    for i in 0..32u32 {
        assert_eq!(
            u32::from_le_bytes(b[4 * i as usize..][..4].try_into().unwrap()),
            i ^ 1
        );
    }
    let m = module(&mut dev, &exchange(""));
    let err = dev
        .launch(&m, "exchange", &one_block(32), &[Arg::Ptr(out)])
        .unwrap_err()
        .to_string();
    // Which side reports it depends on the interleaving; that it is caught does not.
    assert!(
        err.contains("race: ") && err.contains("shared byte 0x"),
        "{err}"
    );
    assert!(err.contains("exchange block [0, 0, 0] thread ["), "{err}");
}

#[test]
fn out_of_bounds_shared_and_global_accesses_are_caught() {
    let mut dev = Device::new(1 << 20);
    let m = module(
        &mut dev,
        ".visible .entry oob_shared() {
            .reg .b32 %r<2>;
            .shared .align 4 .b8 buf[128];
            mov.u32 %r1, 7;
            st.shared.u32 [buf+128], %r1;
            ret;
        }
        .visible .entry oob_global(.param .u64 p) {
            .reg .b32 %r<2>; .reg .b64 %rd<3>;
            ld.param.u64 %rd1, [p];
            ld.global.u32 %r1, [%rd1+64];
            ret;
        }",
    );
    let err = dev
        .launch(&m, "oob_shared", &one_block(1), &[])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("offset 0x80 is outside the block's 128 bytes of shared memory"),
        "{err}"
    );
    let buf = dev.alloc(64).unwrap();
    let err = dev
        .launch(&m, "oob_global", &one_block(1), &[Arg::Ptr(buf)])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!(
            "0 bytes past the end of the 64-byte allocation at {buf:#x}"
        )),
        "{err}"
    );
    dev.free(buf).unwrap();
    let err = dev
        .launch(&m, "oob_global", &one_block(1), &[Arg::Ptr(buf)])
        .unwrap_err()
        .to_string();
    assert!(err.contains("outside every live allocation"), "{err}");
}

fn cp_async(early_read: bool) -> String {
    let (before, after) = if early_read {
        ("ld.shared.u32 %r1, [buf];", "")
    } else {
        ("", "ld.shared.u32 %r1, [buf];")
    };
    format!(
        ".visible .entry copy(.param .u64 src, .param .u64 dst) {{
            .reg .b32 %r<2>; .reg .b64 %rd<3>;
            .shared .align 16 .b8 buf[16];
            ld.param.u64 %rd1, [src];
            ld.param.u64 %rd2, [dst];
            cp.async.cg.shared.global [buf], [%rd1], 16;
            cp.async.commit_group;
            {before}
            cp.async.wait_group 0;
            {after}
            st.global.u32 [%rd2], %r1;
            ret;
        }}"
    )
}

#[test]
fn cp_async_data_read_before_its_wait_is_caught() {
    let mut dev = Device::new(1 << 20);
    let src = upload_u32(&mut dev, &[0xDEAD_BEEF, 1, 2, 3]);
    let dst = dev.alloc(4).unwrap();
    let m = module(&mut dev, &cp_async(false));
    dev.launch(&m, "copy", &one_block(1), &[Arg::Ptr(src), Arg::Ptr(dst)])
        .unwrap();
    let mut b = [0u8; 4];
    dev.read(dst, &mut b).unwrap();
    assert_eq!(u32::from_le_bytes(b), 0xDEAD_BEEF);
    let m = module(&mut dev, &cp_async(true));
    let err = dev
        .launch(&m, "copy", &one_block(1), &[Arg::Ptr(src), Arg::Ptr(dst)])
        .unwrap_err()
        .to_string();
    assert!(err.contains("cp.async into it is still in flight"), "{err}");
}

/// `warp_sum` as common.cuh writes it: a butterfly over 16, 8, 4, 2, 1.
const WARP_SUM: &str = ".visible .entry warp_sum(.param .u64 out) {
    .reg .b32 %r<4>; .reg .f32 %f<4>; .reg .b64 %rd<4>; .reg .pred %p<2>;
    mov.u32 %r1, %tid.x;
    cvt.rn.f32.u32 %f1, %r1;
    mov.u32 %r2, 16;
LOOP:
    shfl.sync.bfly.b32 %f2|%p1, %f1, %r2, 31, -1;
    add.f32 %f1, %f1, %f2;
    shr.u32 %r2, %r2, 1;
    setp.ne.u32 %p1, %r2, 0;
    @%p1 bra LOOP;
    ld.param.u64 %rd1, [out];
    mul.wide.u32 %rd2, %r1, 4;
    add.s64 %rd3, %rd1, %rd2;
    st.global.f32 [%rd3], %f1;
    ret;
}";

#[test]
fn shuffles_reduce_and_a_lane_outside_the_mask_is_caught() {
    let mut dev = Device::new(1 << 20);
    let out = dev.alloc(64 * 4).unwrap();
    let m = module(&mut dev, WARP_SUM);
    dev.launch(&m, "warp_sum", &one_block(64), &[Arg::Ptr(out)])
        .unwrap();
    let got = download_f32(&dev, out, 64);
    // Each warp sums its own lanes: 0+..+31 and 32+..+63.
    assert!(got[..32].iter().all(|&v| v == 496.0), "{got:?}");
    assert!(got[32..].iter().all(|&v| v == 1520.0), "{got:?}");

    let m = module(
        &mut dev,
        ".visible .entry bad_shfl() {
            .reg .b32 %r<4>; .reg .pred %p<2>;
            mov.u32 %r1, %tid.x;
            setp.ge.u32 %p1, %r1, 4;
            @%p1 bra DONE;
            shfl.sync.idx.b32 %r2|%p1, %r1, 5, 31, 15;
        DONE:
            ret;
        }",
    );
    let err = dev
        .launch(&m, "bad_shfl", &one_block(32), &[])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("reads lane 5, which is not in its membermask 0x0000000f"),
        "{err}"
    );
}

/// Each block reads word `ctaid.x + shift` of `buf` and writes word `ctaid.x`; with shift
/// 0 the blocks write disjoint words, with `same` they all write word 0.
fn neighbours(same: bool) -> String {
    let index = if same {
        "mov.u32 %r2, 0;"
    } else {
        "mov.u32 %r2, %r1;"
    };
    format!(
        ".visible .entry neighbours(.param .u64 buf) {{
            .reg .b32 %r<6>; .reg .b64 %rd<6>;
            mov.u32 %r1, %ctaid.x;
            ld.param.u64 %rd1, [buf];
            add.u32 %r3, %r1, 1;
            mul.wide.u32 %rd2, %r3, 4;
            add.s64 %rd3, %rd1, %rd2;
            ld.global.u32 %r4, [%rd3];
            {index}
            mul.wide.u32 %rd4, %r2, 4;
            add.s64 %rd5, %rd1, %rd4;
            add.u32 %r5, %r4, %r1;
            st.global.u32 [%rd5], %r5;
            ret;
        }}"
    )
}

#[test]
fn blocks_see_memory_as_the_launch_found_it_and_a_shared_global_write_is_a_race() {
    let mut dev = Device::new(1 << 20);
    let blocks = 600u32; // several parallel chunks
    let buf = dev.alloc((blocks as usize + 1) * 4).unwrap();
    let init: Vec<u8> = (0..=blocks).flat_map(|i| (10 * i).to_le_bytes()).collect();
    dev.write(buf, &init).unwrap();
    let m = module(&mut dev, &neighbours(false));
    let cfg = LaunchConfig::new([blocks, 1, 1], [1, 1, 1], 0);
    dev.launch(&m, "neighbours", &cfg, &[Arg::Ptr(buf)])
        .unwrap();
    let mut out = vec![0u8; init.len()];
    dev.read(buf, &mut out).unwrap();
    // Block b read word b+1 before block b+1 wrote it, whatever ran first.
    for b in 0..blocks {
        let got = u32::from_le_bytes(out[4 * b as usize..][..4].try_into().unwrap());
        assert_eq!(got, 10 * (b + 1) + b, "word {b}");
    }
    let m = module(&mut dev, &neighbours(true));
    let err = dev
        .launch(&m, "neighbours", &cfg, &[Arg::Ptr(buf)])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("neighbours block [1, 0, 0] thread [0, 0, 0]")
            && err.contains(&format!("writes global {buf:#x}, which block [0, 0, 0]")),
        "{err}"
    );
    // The racing launch wrote nothing.
    let mut after = vec![0u8; init.len()];
    dev.read(buf, &mut after).unwrap();
    assert_eq!(after, out);
}

#[test]
fn launch_limits_are_the_hardwares() {
    let mut dev = Device::new(1 << 20);
    let m = module(
        &mut dev,
        ".visible .entry nop() { ret; }
         .extern .shared .align 16 .b8 dyn[];
         .visible .entry uses_dyn() { .reg .b32 %r<2>; mov.u32 %r1, dyn; st.shared.u32 [%r1+65532], %r1; ret; }",
    );
    let launch = |dev: &mut Device, name: &str, cfg: LaunchConfig| dev.launch(&m, name, &cfg, &[]);
    let is_launch_err = |r: Result<_, EmuError>| matches!(r, Err(EmuError::Launch { .. }));
    assert!(is_launch_err(launch(&mut dev, "nop", one_block(1025))));
    assert!(is_launch_err(launch(
        &mut dev,
        "nop",
        LaunchConfig::new([1, 65536, 1], [1, 1, 1], 0)
    )));
    assert!(is_launch_err(launch(
        &mut dev,
        "nop",
        LaunchConfig::new([1, 1, 1], [1, 1, 65], 0)
    )));
    launch(
        &mut dev,
        "nop",
        LaunchConfig::new([1, 65535, 1], [1, 1, 1], 0),
    )
    .unwrap();
    // 64 KiB of dynamic shared memory needs the opt-in attribute, as on hardware.
    let mut cfg = LaunchConfig::new([1, 1, 1], [1, 1, 1], 65536);
    let err = launch(&mut dev, "uses_dyn", cfg).unwrap_err().to_string();
    assert!(err.contains("max-dynamic-shared-size"), "{err}");
    cfg.max_dynamic_shared = 65536;
    launch(&mut dev, "uses_dyn", cfg).unwrap();
    // And the dynamic window ends where the launch said.
    cfg.dynamic_shared = 65535;
    assert!(
        launch(&mut dev, "uses_dyn", cfg)
            .unwrap_err()
            .to_string()
            .contains("outside the block's")
    );
}

#[test]
fn a_barrier_after_some_threads_exited_is_reported() {
    let mut dev = Device::new(1 << 20);
    let m = module(
        &mut dev,
        ".visible .entry early_exit() {
            .reg .b32 %r<2>; .reg .pred %p<2>;
            mov.u32 %r1, %tid.x;
            setp.ge.u32 %p1, %r1, 16;
            @%p1 ret;
            bar.sync 0;
            ret;
        }",
    );
    let err = dev
        .launch(&m, "early_exit", &one_block(32), &[])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("bar.sync reached while thread [16, 0, 0] of the block has exited"),
        "{err}"
    );
}

#[test]
fn an_unknown_instruction_is_an_error_naming_it() {
    let mut dev = Device::new(1 << 20);
    let src = ".version 9.0\n.target sm_90\n.address_size 64\n\
               .visible .entry k() { .reg .b32 %r<2>; atom.global.add.u32 %r1, [%r1], 1; ret; }";
    let err = dev
        .load_ptx(src)
        .err()
        .expect("atom is not supported")
        .to_string();
    assert!(
        err.contains("unsupported instruction `atom.global.add.u32`"),
        "{err}"
    );
    let src = ".version 9.0\n.target sm_90\n.address_size 64\n\
               .visible .entry k() { .reg .f32 %f<2>; add.rz.sat.ftz.f16 %f1, %f1, %f1; ret; }";
    assert!(dev.load_ptx(src).is_err());
}

/// ldmatrix (plain for row-major A, .trans for column-major A) feeding mma.sync: the
/// product must be A·B whatever the fragment layouts are, so long as ldmatrix and mma
/// agree with each other and with the D layout of the ISA's figure.
fn mma_kernel(trans: bool) -> String {
    // Lane l gives the address of row r = l%8 of matrix i = l/8. Fragment a_i covers
    // A rows 8(i&1).., k 8(i>>1)..; stored transposed, those are At rows k, columns m.
    let (row_bit, col_bit, ld) = if trans {
        (
            "shr.u32 %r8, %r6, 1;",
            "and.b32 %r10, %r6, 1;",
            "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16",
        )
    } else {
        (
            "and.b32 %r8, %r6, 1;",
            "shr.u32 %r10, %r6, 1;",
            "ldmatrix.sync.aligned.m8n8.x4.shared.b16",
        )
    };
    format!(
        ".visible .entry mma_test(.param .u64 pa, .param .u64 pbt, .param .u64 pout) {{
            .reg .pred %p<2>; .reg .b32 %r<32>; .reg .b64 %rd<12>; .reg .f32 %f<8>;
            .shared .align 16 .b8 sa[512];
            .shared .align 16 .b8 sb[256];
            ld.param.u64 %rd1, [pa];
            ld.param.u64 %rd2, [pbt];
            ld.param.u64 %rd3, [pout];
            mov.u32 %r1, %tid.x;
            mul.wide.u32 %rd4, %r1, 16;
            add.s64 %rd5, %rd1, %rd4;
            ld.global.v4.u32 {{%r2, %r3, %r4, %r5}}, [%rd5];
            mov.u64 %rd6, sa;
            add.s64 %rd7, %rd6, %rd4;
            st.shared.v4.u32 [%rd7], {{%r2, %r3, %r4, %r5}};
            setp.ge.u32 %p1, %r1, 16;
            @%p1 bra STAGED;
            add.s64 %rd5, %rd2, %rd4;
            ld.global.v4.u32 {{%r2, %r3, %r4, %r5}}, [%rd5];
            mov.u64 %rd6, sb;
            add.s64 %rd7, %rd6, %rd4;
            st.shared.v4.u32 [%rd7], {{%r2, %r3, %r4, %r5}};
        STAGED:
            bar.sync 0;
            shr.u32 %r6, %r1, 3;
            and.b32 %r7, %r1, 7;
            {row_bit}
            shl.b32 %r8, %r8, 3;
            add.u32 %r9, %r7, %r8;
            {col_bit}
            shl.b32 %r10, %r10, 3;
            shl.b32 %r11, %r9, 4;
            add.u32 %r11, %r11, %r10;
            shl.b32 %r11, %r11, 1;
            mov.u32 %r12, sa;
            add.u32 %r12, %r12, %r11;
            {ld} {{%r13, %r14, %r15, %r16}}, [%r12];
            and.b32 %r17, %r6, 1;
            shl.b32 %r17, %r17, 3;
            shl.b32 %r18, %r7, 4;
            add.u32 %r18, %r18, %r17;
            shl.b32 %r18, %r18, 1;
            mov.u32 %r19, sb;
            add.u32 %r19, %r19, %r18;
            ldmatrix.sync.aligned.m8n8.x2.shared.b16 {{%r20, %r21}}, [%r19];
            mov.f32 %f1, 0f3F800000;
            mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {{%f2, %f3, %f4, %f5}}, {{%r13, %r14, %r15, %r16}}, {{%r20, %r21}}, {{%f1, %f1, %f1, %f1}};
            shr.u32 %r22, %r1, 2;
            and.b32 %r23, %r1, 3;
            shl.b32 %r24, %r22, 3;
            shl.b32 %r25, %r23, 1;
            add.u32 %r24, %r24, %r25;
            mul.wide.u32 %rd8, %r24, 4;
            add.s64 %rd9, %rd3, %rd8;
            st.global.v2.f32 [%rd9], {{%f2, %f3}};
            st.global.v2.f32 [%rd9+256], {{%f4, %f5}};
            ret;
        }}"
    )
}

#[test]
fn ldmatrix_and_mma_compute_the_matrix_product() {
    let a = bf16_values(16 * 16, 11, 2.0);
    let bt = bf16_values(8 * 16, 12, 2.0); // B stored as [n][k]
    let mut want = vec![0f32; 16 * 8];
    for m in 0..16 {
        for n in 0..8 {
            let s: f64 = (0..16)
                .map(|k| bf16_to_f32(a[m * 16 + k]) as f64 * bf16_to_f32(bt[n * 16 + k]) as f64)
                .sum();
            want[m * 8 + n] = (s + 1.0) as f32; // C is all ones
        }
    }
    let at: Vec<u16> = (0..256).map(|i| a[(i % 16) * 16 + i / 16]).collect();
    for (trans, stored) in [(false, &a), (true, &at)] {
        let mut dev = Device::new(1 << 20);
        let m = module(&mut dev, &mma_kernel(trans));
        let (pa, pb) = (upload_u16(&mut dev, stored), upload_u16(&mut dev, &bt));
        let out = dev.alloc(16 * 8 * 4).unwrap();
        dev.launch(
            &m,
            "mma_test",
            &one_block(32),
            &[Arg::Ptr(pa), Arg::Ptr(pb), Arg::Ptr(out)],
        )
        .unwrap();
        let got = download_f32(&dev, out, 16 * 8);
        for i in 0..128 {
            let tol = 1e-6 * want[i].abs().max(1.0);
            assert!(
                (got[i] - want[i]).abs() <= tol,
                "trans={trans} D[{}][{}]: {} vs {}",
                i / 8,
                i % 8,
                got[i],
                want[i]
            );
        }
    }
    // A bf16 sanity check on the test's own inputs: they are exactly representable.
    assert_eq!(bf16_rn(bf16_to_f32(a[3])), a[3]);
}

#[test]
fn misaligned_accesses_and_mismatched_barriers_are_caught() {
    let mut dev = Device::new(1 << 20);
    let m = module(
        &mut dev,
        ".visible .entry misaligned(.param .u64 p) {
            .reg .b32 %r<2>; .reg .b64 %rd<2>;
            ld.param.u64 %rd1, [p];
            ld.global.u32 %r1, [%rd1+2];
            ret;
        }
        .visible .entry two_barriers() {
            .reg .b32 %r<2>; .reg .pred %p<2>;
            mov.u32 %r1, %tid.x;
            setp.ge.u32 %p1, %r1, 16;
            @%p1 bra SECOND;
            bar.sync 0;
            ret;
        SECOND:
            bar.sync 1;
            ret;
        }
        .visible .entry partial_warp_mma() {
            .reg .b32 %r<8>; .reg .f32 %f<8>;
            mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%f1, %f2, %f3, %f4}, {%r1, %r2, %r3, %r4}, {%r5, %r6}, {%f1, %f2, %f3, %f4};
            ret;
        }",
    );
    let buf = dev.alloc(64).unwrap();
    let err = dev
        .launch(&m, "misaligned", &one_block(1), &[Arg::Ptr(buf)])
        .unwrap_err()
        .to_string();
    assert!(err.contains("misaligned 4-byte access"), "{err}");
    let err = dev
        .launch(&m, "two_barriers", &one_block(32), &[])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("bar.sync 0")
            && err.contains("bar.sync 1")
            && err.contains("neither barrier can complete"),
        "{err}"
    );
    let err = dev
        .launch(&m, "partial_warp_mma", &one_block(16), &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("fewer than 32 threads"), "{err}");
}
