//! `ember template build -f`, `list` and `rm`: templates built, listed and deleted through a
//! running `ember serve`'s E2B API, as E2B's CLI and SDKs do it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use ember_api::{
    Template, TemplateBuildInfo, TemplateBuildRequest, TemplateBuildRequested, TemplateBuildStart, TemplateFileUpload,
    TemplateStep,
};
use hyper::{Method, StatusCode};

use crate::api_client::{path_segment, Client, HttpError};
use crate::{build_context, dockerfile};

/// E2B's ready command when the Dockerfile starts something and none is given.
const DEFAULT_READY_CMD: &str = "sleep 20";
const POLL: Duration = Duration::from_millis(500);

/// What `ember template build -f` builds.
pub struct BuildOptions {
    pub dockerfile: PathBuf,
    pub name: String,
    pub context: Option<PathBuf>,
    pub cpus: Option<u32>,
    pub memory_mb: Option<u32>,
    /// The least free disk space of the template's sandboxes, in MiB (`minFreeDiskMb`).
    pub disk_mb: Option<u32>,
    pub ready_cmd: Option<String>,
    pub skip_cache: bool,
}

fn read_dockerfile(path: &Path) -> anyhow::Result<String> {
    let file = std::fs::File::open(path).with_context(|| format!("open the Dockerfile {}", path.display()))?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::Read::take(file, dockerfile::MAX_BYTES as u64 + 1), &mut text)
        .with_context(|| format!("read the Dockerfile {} (UTF-8 text)", path.display()))?;
    Ok(text)
}

pub async fn build(client: &Client, opts: BuildOptions) -> anyhow::Result<ExitCode> {
    let text = read_dockerfile(&opts.dockerfile)?;
    let parsed = dockerfile::parse(&text).with_context(|| format!("{}", opts.dockerfile.display()))?;
    for warning in &parsed.warnings {
        eprintln!("ember: warning: {warning}");
    }
    let context = match &opts.context {
        Some(dir) => dir.clone(),
        None => opts.dockerfile.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf(),
    };
    if !context.is_dir() {
        bail!("the build context {} is not a directory", context.display());
    }
    // Pack every COPY first: a missing file fails before anything reaches the daemon.
    let mut steps = Vec::new();
    let mut archives = Vec::new();
    for step in parsed.steps {
        let files_hash = if step.kind == "COPY" {
            let archive = build_context::pack(&context, &step.args[0], &step.args[1])?;
            let hash = archive.hash.clone();
            archives.push((step.args[0].clone(), archive));
            Some(hash)
        } else {
            None
        };
        steps.push(TemplateStep { kind: step.kind.into(), args: Some(step.args), files_hash, force: None });
    }

    let request = TemplateBuildRequest {
        name: Some(opts.name.clone()),
        cpu_count: opts.cpus.map(i64::from),
        memory_mb: opts.memory_mb.map(i64::from),
        min_free_disk_mb: opts.disk_mb.map(i64::from),
        ..Default::default()
    };
    let requested: TemplateBuildRequested = client.json(Method::POST, "/v3/templates", Some(&request)).await?;
    let id = path_segment(&requested.template_id);
    println!("Building template {} (ID {}, build {})", opts.name, requested.template_id, requested.build_id);

    for (src, archive) in archives {
        let path = format!("/templates/{id}/files/{}", archive.hash);
        let upload: TemplateFileUpload = client.json(Method::GET, &path, None::<&()>).await?;
        match (upload.present, upload.url) {
            (false, Some(url)) => {
                println!("Uploading {src} ({} entries, {} bytes)", archive.entries, archive.data.len());
                client.upload(&url, archive.data).await.with_context(|| format!("upload the files of COPY {src}"))?;
            }
            (true, _) => println!("Files of {src} already uploaded"),
            (false, None) => bail!("the daemon gave no upload URL for the files of COPY {src}"),
        }
    }

    let ready_cmd = match (&opts.ready_cmd, &parsed.start_cmd) {
        (Some(ready), _) => Some(ready.clone()),
        (None, Some(_)) => Some(DEFAULT_READY_CMD.to_string()),
        (None, None) => None,
    };
    let start = TemplateBuildStart {
        from_image: Some(parsed.from_image),
        steps: Some(steps),
        force: Some(opts.skip_cache),
        start_cmd: parsed.start_cmd.clone(),
        ready_cmd,
        ..Default::default()
    };
    let path = format!("/v2/templates/{id}/builds/{}", path_segment(&requested.build_id));
    client.call(Method::POST, &path, Some(&start)).await?;

    let status = follow(client, &id, &requested.build_id).await?;
    match status.status.as_str() {
        "ready" => {
            println!("Template {} built (ID {})", opts.name, requested.template_id);
            Ok(ExitCode::SUCCESS)
        }
        other => {
            let (message, step) = match status.reason {
                Some(r) => (r.message, r.step),
                None => (format!("the build ended with status {other}"), None),
            };
            let step = step.map(|s| format!(" (step {s})")).unwrap_or_default();
            eprintln!("ember: error: the build of {} failed{step}: {message}", opts.name);
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Streams the build's log to stdout until it ends, and returns its last status.
async fn follow(client: &Client, id: &str, build_id: &str) -> anyhow::Result<TemplateBuildInfo> {
    let mut offset = 0usize;
    let mut out = std::io::stdout();
    loop {
        let path = format!("/templates/{id}/builds/{}/status?logsOffset={offset}", path_segment(build_id));
        let status: TemplateBuildInfo = client.json(Method::GET, &path, None::<&()>).await?;
        let got = status.log_entries.len();
        for entry in &status.log_entries {
            let field = |name: &str| entry.get(name).and_then(|v| v.as_str()).unwrap_or_default();
            let level = match field("level") {
                "error" => "ERROR ",
                "warn" => "WARN ",
                _ => "",
            };
            writeln!(out, "{level}{}", field("message").trim_end())?;
        }
        out.flush()?;
        offset += got;
        let done = status.status == "ready" || status.status == "error";
        if done && got == 0 {
            return Ok(status);
        }
        if !done && got < 100 {
            tokio::time::sleep(POLL).await;
        }
    }
}

pub async fn list(client: &Client) -> anyhow::Result<ExitCode> {
    let templates: Vec<Template> = client.json(Method::GET, "/templates", None::<&()>).await?;
    if templates.is_empty() {
        println!("No templates (build one with `ember template build -f Dockerfile --name NAME`)");
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = templates
        .into_iter()
        .map(|t| {
            let name = t.names.first().or(t.aliases.first()).cloned().unwrap_or_else(|| "-".into());
            let created = t.created_at.split('.').next().unwrap_or_default().replace('T', " ");
            let (memory, disk) = (format!("{} MiB", t.memory_mb), format!("{} MiB", t.disk_size_mb));
            vec![name, t.template_id, t.build_status, t.cpu_count.to_string(), memory, disk, created]
        })
        .collect();
    crate::table::print(&["NAME", "ID", "STATUS", "CPUS", "MEMORY", "FREE DISK", "CREATED"], &rows);
    Ok(ExitCode::SUCCESS)
}

pub async fn remove(client: &Client, name: &str) -> anyhow::Result<ExitCode> {
    match client.call(Method::DELETE, &format!("/templates/{}", path_segment(name)), None::<&()>).await {
        Ok(_) => {
            println!("Template {name} deleted");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) if e.downcast_ref::<HttpError>().is_some_and(|h| h.status == StatusCode::NOT_FOUND) => {
            eprintln!("ember: error: no template {name:?} (see `ember template list`)");
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Err(e),
    }
}
