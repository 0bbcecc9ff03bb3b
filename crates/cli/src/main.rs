//! The `ferry` command: wiring only. The server lives in `ferry-server`, storage in `ferry-store`,
//! the transfer engine (upload, download, resume state) in `ferry-client`.

mod fsck;
mod logs;
mod progress;
mod serve;
mod transfer;
mod units;

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
    /// Upload files to a tus server, resuming where an earlier run stopped.
    Upload(Box<transfer::UploadArgs>),
    /// Download files over HTTP (parallel, resumable, verified).
    Download(Box<transfer::DownloadArgs>),
    /// List unfinished transfers.
    Status(transfer::StatusArgs),
    /// Drop saved transfers and delete their server-side uploads.
    Forget(transfer::ForgetArgs),
    /// Check that a data directory's records and data agree (and repair with --repair).
    Fsck(fsck::FsckArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve::run(*args),
        Command::Upload(args) => transfer::upload(*args),
        Command::Download(args) => transfer::download(*args),
        Command::Status(args) => transfer::status(args),
        Command::Forget(args) => transfer::forget_cmd(args),
        Command::Fsck(args) => fsck::run(args),
    }
}
