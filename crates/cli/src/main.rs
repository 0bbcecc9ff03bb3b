//! The `ferry` command: wiring only. Servers live in `ferry-server`, storage in `ferry-store`.

mod serve;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Resumable, verified file transfers over networks that break.
#[derive(Parser, Debug)]
#[command(name = "ferry", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server (tus 1.0 at /files/).
    Serve(Box<serve::ServeArgs>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve::run(*args),
    }
}
