use clap::Parser;

fn main() {
    let cli = asyncthink::cli::Cli::parse();
    if let Err(e) = asyncthink::cli::run(cli) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
