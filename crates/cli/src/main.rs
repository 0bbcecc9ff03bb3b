//! The `ferry` command: wiring only. The server lives in `ferry-server`, storage in `ferry-store`,
//! the transfer engine (upload, download, resume state) in `ferry-client`.

/// `println!` that never panics: a closed standard output (`ferry status | head -1`, a log
/// reader that went away) is not worth a crash, and a panic in a task would skip its work (the
/// server's shutdown on SIGTERM was one).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `eprintln!` that never panics (see `outln!`).
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod docs;
mod fsck;
mod logs;
mod meta;
mod report;
mod serve;
mod store;
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
    /// Print shell completions (bash, zsh, fish, elvish, powershell).
    Completions(docs::CompletionsArgs),
    /// Print the man page (or write every page with --dir).
    Man(docs::ManArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            if let Some(var) = from_the_environment(&e) {
                errln!("(the value comes from the environment variable {var})");
            }
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    match cli.command {
        Command::Serve(args) => serve::run(*args),
        Command::Upload(args) => transfer::upload(*args),
        Command::Download(args) => transfer::download(*args),
        Command::Status(args) => transfer::status(args),
        Command::Forget(args) => transfer::forget_cmd(args),
        Command::Fsck(args) => fsck::run(args),
        Command::Completions(args) => docs::completions(&args),
        Command::Man(args) => docs::man(&args),
    }
}

/// The environment variable behind an invalid value, when the flag itself was not given: clap
/// names only the flag, which the user never typed.
fn from_the_environment(e: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(
        e.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return None;
    }
    let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) else {
        return None;
    };
    let long = arg.split_whitespace().next()?.strip_prefix("--")?;
    let typed = std::env::args().any(|a| {
        a.strip_prefix("--")
            .is_some_and(|rest| rest == long || rest.starts_with(&format!("{long}=")))
    });
    if typed {
        return None;
    }
    let cmd = <Cli as clap::CommandFactory>::command();
    cmd.get_subcommands()
        .flat_map(|c| c.get_arguments())
        .filter(|a| a.get_long() == Some(long))
        .filter_map(|a| a.get_env())
        .map(|v| v.to_string_lossy().into_owned())
        .find(|v| std::env::var_os(v).is_some())
}
