//! `ember`: the command-line entry point. Subcommands live in their own modules; this file
//! parses arguments, sets up logging and maps errors to messages and exit codes.

#![forbid(unsafe_code)]

mod api_client;
mod apikey;
mod build_context;
mod dockerfile;
mod envd_client;
mod run;
mod sandbox;
mod serve;
mod shell;
mod table;
mod team;
mod template;
mod template_remote;
mod usage;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "ember", version, about = "E2B-compatible sandboxes in microVMs on your own Linux box")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the E2B-compatible API and sandbox traffic on one port.
    Serve(serve::ServeArgs),
    /// Manage API keys.
    Apikey {
        #[command(subcommand)]
        command: apikey::ApiKeyCmd,
    },
    /// Manage per-team quotas.
    Team {
        #[command(subcommand)]
        command: team::TeamCmd,
    },
    /// Show metered usage per team and per sandbox.
    Usage(usage::UsageArgs),
    /// Run a command in a fresh sandbox, stream its output, destroy the sandbox, exit with its code.
    Run(run::RunArgs),
    /// Manage templates.
    Template {
        #[command(subcommand)]
        command: template::TemplateCmd,
    },
    /// A running daemon's sandboxes: list, inspect, kill, pause, resume, exec, shell.
    Sandbox {
        #[command(subcommand)]
        command: sandbox::SandboxCmd,
    },
}

fn main() -> ExitCode {
    // Everything Ember creates is root's alone unless granted explicitly: the database holds
    // access tokens, sandboxes' directories their RAM, disks and consoles.
    ember_runtime::private::set_private_umask();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("EMBER_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ember: error: start async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Cmd::Run(args) => run::run(args).await,
            Cmd::Serve(args) => serve::run(args).await,
            Cmd::Apikey { command } => apikey::run(command),
            Cmd::Team { command } => team::run(command),
            Cmd::Usage(args) => usage::run(args),
            Cmd::Template { command } => template::run(command).await,
            Cmd::Sandbox { command } => sandbox::run(command).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ember: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
