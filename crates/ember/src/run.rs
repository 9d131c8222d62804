//! `ember run -- CMD ARGS...`: one command in a fresh sandbox, output streamed as produced.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use ember::settings;
use ember_envd_proto::process::{DataEvent, ProcessConfig, ProcessEvent, StartRequest};
use ember_envd_proto::Code;
use ember_runtime::{AgentClient, AgentError, Runtime, SandboxSpec};

#[derive(Args)]
pub struct RunArgs {
    /// Template to create the sandbox from.
    #[arg(long, default_value = "base")]
    template: String,
    /// vCPUs (1-8) [default: the template's: 1, and 2 for code-interpreter].
    #[arg(long)]
    cpus: Option<u32>,
    /// Memory in MiB (128-8192) [default: the template's: 256 for base, 512 for the others].
    #[arg(long = "memory-mb")]
    memory_mb: Option<u32>,
    /// Seconds to wait for the guest to answer.
    #[arg(long, default_value_t = 60)]
    boot_timeout: u64,
    /// Print how long the sandbox took to become ready.
    #[arg(long)]
    timings: bool,
    /// Once the sandbox is ready, write its agent's access token to this file (mode 0600), for
    /// tools that attach to the sandbox while the command runs.
    #[arg(long, value_name = "PATH")]
    access_token_file: Option<std::path::PathBuf>,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    ember_image::template::check_name(&args.template)?;
    let own = ember_image::template::default_size(&args.template);
    let (cpus, memory_mb) = (args.cpus.unwrap_or(own.vcpus), args.memory_mb.unwrap_or(own.memory_mib));
    ember_vmm::config::check_sizes(cpus, memory_mb)?;
    // A directory of its own: cleaning up after crashed runs must never touch the sandboxes a
    // stopped `ember serve` left running for its next start to adopt. QEMU passes through the
    // data directory to it.
    let data_dir = settings::data_dir(None);
    let mut config = settings::runtime_config(data_dir.join("run"), settings::guest_binaries()?);
    config.boot_timeout = Duration::from_secs(args.boot_timeout);
    let qemu_group = ember_runtime::private::qemu_group(config.qemu_user.as_deref())?;
    ember_runtime::private::private_dir(&data_dir, qemu_group)
        .with_context(|| format!("set the access of {}", data_dir.display()))?;
    let runtime = Runtime::new(config)?;
    runtime.clean_orphans(&Default::default());
    eprintln!("ember: accelerator: {}", runtime.accel());
    if let Some(warning) = runtime.accel().warning() {
        eprintln!("ember: warning: {warning}");
    }
    for warning in [runtime.qemu_user_warning(), runtime.cgroup_warning()].into_iter().flatten() {
        eprintln!("ember: warning: {warning}");
    }
    let spec = SandboxSpec {
        template: args.template.clone(),
        from_snapshot: false,
        vcpus: cpus,
        memory_mib: memory_mb,
        die_with_parent: true,
        ..SandboxSpec::default()
    };
    // Dropping the run future on a signal drops the sandbox, which tears everything down.
    tokio::select! {
        result = run_in_sandbox(&runtime, &spec, &args) => result,
        signal = interrupted() => {
            eprintln!("ember: {signal}: sandbox destroyed");
            Ok(ExitCode::from(if signal == "interrupted" { 130 } else { 143 }))
        }
    }
}

async fn interrupted() -> &'static str {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "interrupted",
        _ = term.recv() => "terminated",
    }
}

async fn run_in_sandbox(runtime: &Runtime, spec: &SandboxSpec, args: &RunArgs) -> anyhow::Result<ExitCode> {
    let mut sandbox = runtime.create(spec).await.context("create sandbox")?;
    if args.timings {
        eprintln!(
            "ember: sandbox {} ready in {} ms (accelerator {})",
            sandbox.id(),
            sandbox.boot_time().as_millis(),
            runtime.accel().accel
        );
    }
    if let Some(path) = &args.access_token_file {
        write_private(path, sandbox.agent().token().unwrap_or_default())
            .with_context(|| format!("write the access token to {}", path.display()))?;
    }
    let agent = sandbox.agent().clone();
    let result = tokio::select! {
        result = stream_command(&agent, &args.command) => result,
        status = sandbox.vm_exited() => Err(anyhow::anyhow!(
            "the sandbox's VM exited while the command ran ({status}); last serial console output:\n{}",
            sandbox.serial_tail()
        )),
    };
    sandbox.destroy().await.context("destroy sandbox")?;
    // The host's rules go too, unless another Ember process still has sandboxes.
    runtime.release_host_network(std::time::Duration::from_secs(3));
    runtime.release_cgroups();
    result
}

async fn stream_command(agent: &AgentClient, command: &[String]) -> anyhow::Result<ExitCode> {
    let request = StartRequest {
        process: ProcessConfig { cmd: command[0].clone(), args: command[1..].to_vec(), ..Default::default() },
        ..Default::default()
    };
    let mut events = agent.start(&request, None).await.context("start the command in the sandbox")?;
    let (mut stdout, mut stderr) = (std::io::stdout(), std::io::stderr());
    let mut exit = None;
    loop {
        match events.next().await {
            Ok(Some(ProcessEvent::Data(DataEvent::Stdout(b) | DataEvent::Pty(b)))) => {
                stdout.write_all(&b)?;
                stdout.flush()?;
            }
            Ok(Some(ProcessEvent::Data(DataEvent::Stderr(b)))) => {
                stderr.write_all(&b)?;
                stderr.flush()?;
            }
            Ok(Some(ProcessEvent::End(end))) => exit = Some(end),
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(AgentError::Rpc(e)) if e.code == Code::NotFound => {
                eprintln!("ember: {}", e.message);
                return Ok(ExitCode::from(127));
            }
            Err(e) => return Err(e).context("command output stream"),
        }
    }
    let end = exit.context("the agent ended the stream without the process's end event")?;
    Ok(match u8::try_from(end.exit_code) {
        Ok(code) => ExitCode::from(code),
        Err(_) => {
            eprintln!("ember: command ended: {}", end.status);
            ExitCode::FAILURE
        }
    })
}

/// Writes `text` to a new file only its owner can read.
fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(text.as_bytes())
}
