use clap::Parser;

/// Every op of a CPU step allocates its outputs (a layer's activations are 0.5–10 MB at a
/// 128-token prefill) and frees them by the next op. glibc hands blocks that size back to
/// the kernel, so the next step faulted every page in again, zeroed: a fifth of a bf16
/// prefill's profile. mimalloc keeps freed memory for reuse within the process.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc's option enum (the same index in its v2 and v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// mimalloc (v3, as linked) returns free memory to the kernel a second after a free by
/// default, and a 1 024-token prefill (2 s on two cores) frees 12–25 MB activations and
/// allocates them again later in the same step: 9 000 page faults per prefill, 5–7% of its
/// time. Never purging keeps the process at its peak footprint, which a serving or
/// training process reaches in its first step anyway. `MIMALLOC_PURGE_DELAY` (or its
/// legacy name `MIMALLOC_RESET_DELAY`) in the environment still wins.
fn keep_freed_memory() {
    let set = |name: &str| std::env::var_os(name).is_some();
    if !set("MIMALLOC_PURGE_DELAY") && !set("MIMALLOC_RESET_DELAY") {
        // SAFETY: sets one integer option; mimalloc reads options under its own locks.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}

fn main() {
    keep_freed_memory();
    let cli = asyncthink::cli::Cli::parse();
    if let Err(e) = asyncthink::cli::run(cli) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
