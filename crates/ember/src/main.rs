//! `ember`: the command-line entry point.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "ember", version, about = "E2B-compatible sandboxes in microVMs")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Manage templates.
    Template {
        #[command(subcommand)]
        command: TemplateCmd,
    },
}

#[derive(Subcommand)]
enum TemplateCmd {
    /// Build a template's kernel and root filesystem (done on first use otherwise).
    Build { name: String },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ember: error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    match cli.command {
        Cmd::Template { command: TemplateCmd::Build { name } } => {
            let cache = ember_image::Cache::from_env();
            let t = ember_image::template::ensure(&cache, &name, &agent_binary()?)?;
            println!("template {} ready: kernel {} rootfs {}", t.name, t.kernel.display(), t.rootfs.display());
            Ok(std::process::ExitCode::SUCCESS)
        }
    }
}

/// The guest agent binary: `EMBER_AGENT_BIN`, else `ember-agent` beside this executable.
fn agent_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("EMBER_AGENT_BIN") {
        return Ok(p.into());
    }
    let exe = std::env::current_exe().context("locate ember executable")?;
    Ok(exe.with_file_name("ember-agent"))
}
