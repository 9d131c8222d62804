//! The `templates` resource (E2B's build API): request a build (`POST /v3/templates`), upload
//! the files of its COPY steps (`GET /templates/{id}/files/{hash}` hands out a signed upload URL
//! this daemon serves, `PUT /templates/uploads/{token}`), start it, follow its status and logs,
//! list, show and delete templates, and look a name up. Templates belong to a team: another
//! team's are not found.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use ember_api::{
    BuildStatusReason, Template, TemplateAlias, TemplateBuild, TemplateBuildInfo, TemplateBuildRequest,
    TemplateBuildRequested, TemplateBuildStart, TemplateFileUpload,
};
use ember_store::{BuildRecord, BuildStatus, TemplateRecord};
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use crate::auth::Team;
use crate::error::{parse_json, ApiError};
use crate::manager::{LifecycleError, Manager, MAX_UPLOAD_BYTES};

/// Most log entries one status call returns (E2B's page size).
const LOG_PAGE: usize = 100;

fn time(ms: i64) -> String {
    let ms = u64::try_from(ms).unwrap_or_default();
    ember_envd_proto::time::rfc3339(SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
}

fn body_of(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| ApiError::BadRequest(e.body_text()))
}

/// `POST /v3/templates` (and `/v2/templates`): 202 with the template and the new build.
pub async fn request(
    State(m): State<Arc<Manager>>,
    Extension(team): Extension<Team>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: TemplateBuildRequest = parse_json(&body_of(body)?, true)?;
    let (template, build) = m.request_build(&team.0, &req)?;
    let answer = TemplateBuildRequested {
        template_id: template.id,
        build_id: build.id,
        public: false,
        names: vec![template.name.clone()],
        tags: build.tags,
        aliases: vec![template.name],
    };
    Ok((StatusCode::ACCEPTED, Json(answer)).into_response())
}

/// `GET /templates/{id}/files/{hash}`: 201, with an upload URL unless the files are present.
pub async fn files(
    State(m): State<Arc<Manager>>,
    Extension(team): Extension<Team>,
    Path((id, hash)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let token = m.file_upload(&team.0, &id, &hash)?;
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("127.0.0.1");
    let url = token.map(|t| format!("http://{host}/templates/uploads/{t}"));
    Ok((StatusCode::CREATED, Json(TemplateFileUpload { present: url.is_none(), url })).into_response())
}

/// `PUT /templates/uploads/{token}` (no API key: the token is the authority): the archive of a
/// COPY step, streamed to disk, at most [`MAX_UPLOAD_BYTES`].
pub async fn upload(
    State(m): State<Arc<Manager>>,
    Path(token): Path<String>,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let upload = m.upload_for(&token).ok_or_else(|| ApiError::NotFound("no such upload URL (or it expired)".into()))?;
    let (partial, done) = m.upload_paths(&upload)?;
    let written = async {
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&partial)
            .await
            .map_err(|e| ApiError::from(LifecycleError::Io(format!("create {}", partial.display()), e)))?;
        let mut size = 0u64;
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("reading the upload: {e}")))?;
            size += chunk.len() as u64;
            if size > MAX_UPLOAD_BYTES {
                return Err(ApiError::TooLarge(format!("uploads are at most {} MiB", MAX_UPLOAD_BYTES >> 20)));
            }
            file.write_all(&chunk).await.map_err(|e| LifecycleError::Io("write the upload".into(), e))?;
        }
        file.sync_all().await.map_err(|e| LifecycleError::Io("write the upload".into(), e))?;
        std::fs::rename(&partial, &done).map_err(|e| LifecycleError::Io("keep the upload".into(), e))?;
        Ok(())
    }
    .await;
    if written.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    written.map(|()| StatusCode::OK)
}

/// `POST /v2/templates/{id}/builds/{buildID}`: starts the build; 202.
pub async fn start(
    State(m): State<Arc<Manager>>,
    Extension(team): Extension<Team>,
    Path((id, build_id)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let req: TemplateBuildStart = parse_json(&body_of(body)?, false)?;
    m.start_build(&team.0, &id, &build_id, &req)?;
    Ok(StatusCode::ACCEPTED)
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusQuery {
    logs_offset: Option<usize>,
    limit: Option<usize>,
}

/// `GET /templates/{id}/builds/{buildID}/status?logsOffset=N`: the status and the log entries
/// from N on (at most 100).
pub async fn status(
    State(m): State<Arc<Manager>>,
    Extension(team): Extension<Team>,
    Path((id, build_id)): Path<(String, String)>,
    Query(q): Query<StatusQuery>,
) -> Result<Json<TemplateBuildInfo>, ApiError> {
    let template = m.team_template(&team.0, &id)?;
    let build = m
        .store()
        .find_build(&template.id, &build_id)
        .map_err(LifecycleError::from)?
        .ok_or_else(|| ApiError::NotFound(format!("build \"{build_id}\" not found")))?;
    let limit = q.limit.unwrap_or(LOG_PAGE).min(LOG_PAGE);
    let entries = m.build_log(&build.id).map(|log| log.since(q.logs_offset.unwrap_or(0), limit)).unwrap_or_default();
    let reason = (build.status == BuildStatus::Error).then(|| BuildStatusReason {
        message: build.reason.clone().unwrap_or_else(|| "the build failed".into()),
        step: build.reason_step.clone(),
    });
    Ok(Json(TemplateBuildInfo {
        logs: entries.iter().map(|e| format!("{}\n", e.message)).collect(),
        log_entries: entries.iter().filter_map(|e| serde_json::to_value(e).ok()).collect(),
        template_id: template.id,
        build_id: build.id,
        status: build.status.as_str().into(),
        reason,
    }))
}

fn summary(m: &Manager, t: &TemplateRecord, with_builds: bool) -> Result<Template, ApiError> {
    let builds: Vec<BuildRecord> = m.store().builds(&t.id).map_err(LifecycleError::from)?;
    let current = builds.iter().find(|b| b.status == BuildStatus::Ready).or(builds.first());
    let updated = builds.first().map_or(t.created_ms, |b| b.finished_ms.unwrap_or(b.created_ms));
    Ok(Template {
        template_id: t.id.clone(),
        build_id: current.map(|b| b.id.clone()).unwrap_or_default(),
        cpu_count: t.vcpus,
        memory_mb: t.memory_mib,
        disk_size_mb: current.and_then(|b| b.free_mib).map_or(ember_runtime::disk_size_mib(), u64::from),
        public: false,
        aliases: vec![t.name.clone()],
        names: vec![t.name.clone()],
        created_at: time(t.created_ms),
        updated_at: time(updated),
        created_by: None,
        last_spawned_at: None,
        spawn_count: 0,
        build_count: builds.len() as u64,
        envd_version: env!("CARGO_PKG_VERSION").into(),
        build_status: current.map_or("waiting", |b| b.status.as_str()).into(),
        builds: with_builds.then(|| {
            builds
                .iter()
                .map(|b| TemplateBuild {
                    build_id: b.id.clone(),
                    status: b.status.as_str().into(),
                    created_at: time(b.created_ms),
                    updated_at: time(b.finished_ms.unwrap_or(b.created_ms)),
                    finished_at: b.finished_ms.map(time),
                    cpu_count: t.vcpus,
                    memory_mb: t.memory_mib,
                })
                .collect()
        }),
    })
}

/// `GET /templates` and `GET /v2/templates`: the team's built templates.
pub async fn list(State(m): State<Arc<Manager>>, Extension(team): Extension<Team>) -> Result<Response, ApiError> {
    let templates = m.store().templates(&team.0).map_err(LifecycleError::from)?;
    let all: Result<Vec<Template>, ApiError> = templates.iter().map(|t| summary(&m, t, false)).collect();
    Ok(Json(all?).into_response())
}

/// `GET /templates/{id}`: one template with its builds.
pub async fn get(
    State(m): State<Arc<Manager>>,
    Extension(team): Extension<Team>,
    Path(id): Path<String>,
) -> Result<Json<Template>, ApiError> {
    let template = m.team_template(&team.0, &id)?;
    Ok(Json(summary(&m, &template, true)?))
}

/// `DELETE /templates/{id}`: a built template (with its builds' files), or a snapshot.
pub async fn delete(
    State(m): State<Arc<Manager>>,
    Extension(team): Extension<Team>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if m.delete_template(&team.0, &id)? || m.delete_snapshot(&team.0, &id)? {
        return Ok(StatusCode::NO_CONTENT);
    }
    Err(ApiError::NotFound(format!("template \"{id}\" not found")))
}

/// `GET /templates/aliases/{alias}`: 200 if the team has a template of that name, else 404.
pub async fn alias(
    State(m): State<Arc<Manager>>,
    Extension(team): Extension<Team>,
    Path(alias): Path<String>,
) -> Result<Json<TemplateAlias>, ApiError> {
    let (name, _) = crate::manager::split_name(&alias);
    let template = m
        .store()
        .find_template(&team.0, name)
        .map_err(LifecycleError::from)?
        .ok_or_else(|| ApiError::NotFound(format!("template \"{alias}\" not found")))?;
    Ok(Json(TemplateAlias { template_id: template.id, public: false }))
}
