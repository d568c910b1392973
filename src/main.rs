use clap::Parser;

/// Every op of a CPU step allocates its outputs (a layer's activations are 0.5–10 MB at a
/// 128-token prefill) and frees them by the next op. glibc hands blocks that size back to
/// the kernel, so the next step faulted every page in again, zeroed: a fifth of a bf16
/// prefill's profile. mimalloc keeps freed memory for reuse within the process.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = asyncthink::cli::Cli::parse();
    if let Err(e) = asyncthink::cli::run(cli) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
