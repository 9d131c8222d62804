//! `ember template ...`: build templates ahead of first use.

use std::process::ExitCode;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum TemplateCmd {
    /// Build a template's kernel and root filesystem (otherwise done on first use).
    Build { name: String },
}

pub async fn run(cmd: TemplateCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        TemplateCmd::Build { name } => {
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
    }
}
