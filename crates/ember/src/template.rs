//! `ember template ...`: build a built-in template's images ahead of first use, or build, list
//! and delete the team's templates through a running `ember serve`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::{Args, Subcommand};

use crate::api_client::ServerArgs;
use crate::template_remote::{self, BuildOptions};

#[derive(Subcommand)]
pub enum TemplateCmd {
    /// Build a built-in template's kernel and root filesystem (otherwise done on first use),
    /// or, with -f, a template from a Dockerfile through `ember serve`.
    Build(BuildArgs),
    /// List the team's templates (through `ember serve`).
    #[command(alias = "ls")]
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Delete a template by name or ID (through `ember serve`).
    #[command(alias = "delete")]
    Rm {
        /// The template's name (NAME[:TAG]) or ID.
        name: String,
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Args)]
pub struct BuildArgs {
    /// A built-in template (base, code-interpreter, python, node-20, deno) to build locally.
    #[arg(conflicts_with_all = ["file", "template_name"], required_unless_present = "file")]
    builtin: Option<String>,
    /// The Dockerfile to build a template from (through `ember serve`).
    #[arg(short = 'f', long = "file", value_name = "DOCKERFILE", requires = "template_name")]
    file: Option<PathBuf>,
    /// The template's name, NAME[:TAG].
    #[arg(long = "name", value_name = "NAME[:TAG]")]
    template_name: Option<String>,
    /// The directory COPY sources are relative to (default: the Dockerfile's).
    #[arg(long, value_name = "DIR", requires = "file")]
    context: Option<PathBuf>,
    /// vCPUs of the template's sandboxes.
    #[arg(long, requires = "file")]
    cpus: Option<u32>,
    /// Memory of the template's sandboxes, in MiB.
    #[arg(long = "memory-mb", requires = "file")]
    memory_mb: Option<u32>,
    /// Free disk space the template's sandboxes get at least, in MiB (0-10240; default 1024).
    #[arg(long = "disk-mb", requires = "file")]
    disk_mb: Option<u32>,
    /// The command that tells the start command is ready (default: `sleep 20`, as E2B).
    #[arg(long = "ready-cmd", value_name = "CMD", requires = "file")]
    ready_cmd: Option<String>,
    /// Rebuild every step instead of reusing cached layers.
    #[arg(long = "skip-cache", requires = "file")]
    skip_cache: bool,
    #[command(flatten)]
    server: ServerArgs,
}

pub async fn run(cmd: TemplateCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        TemplateCmd::Build(args) => match (args.builtin, args.file, args.template_name) {
            (Some(name), None, None) => build_builtin(name).await,
            (None, Some(dockerfile), Some(name)) => {
                let client = args.server.client()?;
                let opts = BuildOptions {
                    dockerfile,
                    name,
                    context: args.context,
                    cpus: args.cpus,
                    memory_mb: args.memory_mb,
                    disk_mb: args.disk_mb,
                    ready_cmd: args.ready_cmd,
                    skip_cache: args.skip_cache,
                };
                template_remote::build(&client, opts).await
            }
            _ => bail!("give a built-in template's name, or -f DOCKERFILE --name NAME"),
        },
        TemplateCmd::List { server } => template_remote::list(&server.client()?).await,
        TemplateCmd::Rm { name, server } => template_remote::remove(&server.client()?, &name).await,
    }
}

async fn build_builtin(name: String) -> anyhow::Result<ExitCode> {
    let cache = ember::settings::cache();
    cache.prepare(ember_runtime::private::qemu_group(ember::settings::qemu_user().as_deref())?)?;
    let bins = ember::settings::guest_binaries()?;
    let t = tokio::task::spawn_blocking(move || ember_image::template::ensure(&cache, &name, &bins)).await??;
    println!(
        "template {} ready (key {}): kernel {}, root disk {}",
        t.name,
        t.key,
        t.kernel.display(),
        t.rootfs.display()
    );
    Ok(ExitCode::SUCCESS)
}
