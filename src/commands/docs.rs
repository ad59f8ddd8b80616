//! `mde-offboard completions SHELL` and `mde-offboard manpage`: shell completions and the manual page,
//! generated from the command line's own definition (handed in by `cli`, the layer above), so they can never
//! disagree with `--help`. Nothing here reads settings or talks to the service.

use std::path::PathBuf;

use clap_complete::Shell;

use crate::error::{Error, Result};

#[derive(clap::Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to complete for (see the README for where each one looks).
    #[arg(value_enum, value_name = "SHELL")]
    pub shell: Shell,
}

#[derive(clap::Args, Debug)]
pub struct ManpageArgs {
    /// Write one page per command (mde-offboard.1, mde-offboard-run.1, ...) into DIR instead of the main
    /// page to stdout.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// The completion script of `args.shell` for `command`, printed to stdout.
pub fn completions(args: &CompletionsArgs, mut command: clap::Command) {
    let name = command.get_name().to_string();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, name, &mut script);
    crate::ui::output::stdout(&String::from_utf8_lossy(&script));
}

/// The manual page of `command` (roff) to stdout, or every command's page into `args.dir`.
pub fn manpage(args: &ManpageArgs, command: clap::Command) -> Result<()> {
    let fail = |path: &std::path::Path, e: std::io::Error| Error::Output {
        path: path.to_owned(),
        message: format!("cannot write the manual pages: {e}"),
    };
    if let Some(dir) = &args.dir {
        return clap_mangen::generate_to(command, dir).map_err(|e| fail(dir, e));
    }
    let mut page = Vec::new();
    clap_mangen::Man::new(command).render(&mut page).map_err(|e| fail(std::path::Path::new("-"), e))?;
    crate::ui::output::stdout(&String::from_utf8_lossy(&page));
    Ok(())
}
