use clap::{Parser, Subcommand};

use asyncthink::cli::data::DataCommand;

#[derive(Parser)]
#[command(
    name = "asyncthink",
    version,
    about = "Qwen3 engine for asynchronous thinking"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Tasks, verifiers and cold-start traces.
    Data {
        #[command(subcommand)]
        cmd: DataCommand,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Command::Data { cmd } => asyncthink::cli::data::run(cmd),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
