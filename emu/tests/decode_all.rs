mod support;

use asyncthink_emu::Device;

/// Every kernel NVRTC emits for both targets parses and decodes: no opcode or modifier of
/// ours is unknown to the emulator.
#[test]
fn every_kernel_of_both_targets_decodes() {
    let Some(dir) = support::ptx_dir("every_kernel_of_both_targets_decodes") else {
        return;
    };
    let mut total = 0;
    for arch in ["sm_90", "sm_80"] {
        let mut files: Vec<_> = std::fs::read_dir(dir.join(arch))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        files.retain(|p| p.extension().is_some_and(|e| e == "ptx"));
        files.sort();
        assert!(files.len() >= 10, "{arch}: only {} PTX files", files.len());
        for f in files {
            let src = std::fs::read_to_string(&f).unwrap();
            let mut dev = Device::new(1 << 30);
            let m = dev
                .load_ptx(&src)
                .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            assert_eq!(m.version, "9.0");
            total += m.kernel_names().count();
        }
    }
    assert!(total >= 60, "{total} kernels decoded");
}
