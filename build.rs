//! Stamps the git commit into the binary so benchmark JSON says what was measured, and tells
//! the GPU tests whether this machine has a CUDA driver at all (`asyncthink_no_gpu`).
//!
//! The stamp reruns when HEAD or the branch it names moves, or when a source file changes
//! (which makes the tree dirty) — never on `.git/index`, which `git status` itself rewrites
//! and which used to force a rebuild after every git command.

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    Command::new("git")
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

fn main() {
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    let stamp = if dirty {
        format!("{commit}-dirty")
    } else {
        commit
    };
    println!("cargo:rustc-env=ASYNCTHINK_COMMIT={stamp}");
    if let (Some(git_dir), Some(common)) = (
        git(&["rev-parse", "--git-dir"]),
        git(&["rev-parse", "--git-common-dir"]),
    ) {
        // A path that does not exist would make cargo rerun this on every build.
        let branch = git(&["symbolic-ref", "-q", "HEAD"]);
        let refs = [
            Some(format!("{git_dir}/HEAD")),
            Some(format!("{common}/packed-refs")),
            branch.map(|b| format!("{common}/{b}")),
        ];
        for path in refs.into_iter().flatten().filter(|p| Path::new(p).exists()) {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    for path in [
        "src",
        "kernels",
        "tests",
        "benches",
        "Cargo.toml",
        "Cargo.lock",
        "build.rs",
    ] {
        println!("cargo:rerun-if-changed={path}");
    }

    // GPU tests are marked ignored where no driver exists, so `cargo test` counts them as
    // ignored rather than passed; `-- --include-ignored` (the GPU check) runs them anyway.
    // ASYNCTHINK_GPU_TESTS=1 or 0 overrides the look for libcuda.
    println!("cargo::rustc-check-cfg=cfg(asyncthink_no_gpu)");
    println!("cargo:rerun-if-env-changed=ASYNCTHINK_GPU_TESTS");
    println!("cargo:rerun-if-env-changed=LD_LIBRARY_PATH");
    if Path::new("/etc/ld.so.cache").exists() {
        println!("cargo:rerun-if-changed=/etc/ld.so.cache");
    }
    let has_driver = match std::env::var("ASYNCTHINK_GPU_TESTS").as_deref() {
        Ok("1") => true,
        Ok("0") => false,
        _ => driver_installed(),
    };
    if !has_driver {
        println!("cargo:rustc-cfg=asyncthink_no_gpu");
    }
}

/// Whether the NVIDIA driver's libcuda.so.1 is installed where the loader finds it.
fn driver_installed() -> bool {
    let listed = Command::new("ldconfig")
        .arg("-p")
        .output()
        .ok()
        .is_some_and(|o| String::from_utf8_lossy(&o.stdout).contains("libcuda.so.1"));
    let on_path = std::env::var("LD_LIBRARY_PATH")
        .unwrap_or_default()
        .split(':')
        .filter(|d| !d.is_empty() && !d.contains("/stubs"))
        .chain([
            "/usr/lib/x86_64-linux-gnu",
            "/usr/lib64",
            "/usr/local/nvidia/lib64",
        ])
        .any(|d| Path::new(d).join("libcuda.so.1").exists());
    listed || on_path
}
