//! `ferry completions SHELL` and `ferry man`: generated from the same clap definitions as the
//! commands, so they cannot drift from the flags.

use clap::{Args, CommandFactory};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// `ferry completions`.
#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell, e.g. `ferry completions bash > /etc/bash_completion.d/ferry`.
    shell: clap_complete::Shell,
}

/// `ferry man`.
#[derive(Args, Debug)]
pub struct ManArgs {
    /// Write ferry.1 and a page per command (ferry-upload.1, …) into DIR instead of printing
    /// ferry.1.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

pub fn completions(args: &CompletionsArgs) -> ExitCode {
    let mut cmd = crate::Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "ferry", &mut out);
    let _ = std::io::stdout().write_all(&out);
    ExitCode::SUCCESS
}

pub fn man(args: &ManArgs) -> ExitCode {
    let cmd = crate::Cli::command();
    let written = match &args.dir {
        None => {
            let mut out = Vec::new();
            clap_mangen::Man::new(cmd)
                .render(&mut out)
                .and_then(|()| std::io::stdout().write_all(&out))
        }
        Some(dir) => std::fs::create_dir_all(dir).and_then(|()| clap_mangen::generate_to(cmd, dir)),
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            errln!("ferry man: {}", ferry_client::error::io_reason(&e));
            ExitCode::from(1)
        }
    }
}
