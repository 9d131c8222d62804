//! The `snapshots` resource: take one of a running sandbox, list them, delete one. A snapshot's
//! id (or name) is a template for creates.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use ember_api::{SnapshotInfo, SnapshotRequest};
use serde::Deserialize;

use crate::auth::Team;
use crate::error::{parse_json, ApiError};
use crate::manager::Manager;

/// A snapshot as E2B reports it: a named one by `name:tag` and its full name `team/name:tag`,
/// an unnamed one by its id.
fn info(r: &ember_store::SnapshotRecord) -> SnapshotInfo {
    if r.name == r.id {
        return SnapshotInfo { snapshot_id: r.id.clone(), names: vec![r.id.clone()] };
    }
    SnapshotInfo { snapshot_id: r.name.clone(), names: vec![format!("{}/{}", r.team, r.name)] }
}

pub async fn create(
    State(m): State<Arc<Manager>>,
    Extension(team): Extension<Team>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let req: SnapshotRequest = parse_json(&body, false)?;
    let name = req.name.as_deref().map(|n| crate::manager::snapshot_name(&team.0, n)).transpose()?;
    let live = m.get(&team.0, &id)?;
    let snapshot = m.snapshot(live, name).await?;
    Ok((StatusCode::CREATED, Json(info(&snapshot))).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListQuery {
    #[serde(rename = "sandboxID")]
    sandbox_id: Option<String>,
    name: Option<String>,
    limit: Option<usize>,
    next_token: Option<String>,
}

pub async fn list(
    State(m): State<Arc<Manager>>,
    Extension(team): Extension<Team>,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let all = m.store().snapshots(&team.0).map_err(crate::manager::LifecycleError::from)?;
    let matching: Vec<_> = all
        .iter()
        .filter(|s| q.sandbox_id.as_ref().is_none_or(|id| &s.sandbox_id == id))
        .filter(|s| {
            q.name
                .as_ref()
                .is_none_or(|n| &s.name == n || crate::manager::snapshot_name(&team.0, n).is_ok_and(|n| s.name == n))
        })
        .collect();
    crate::page::page(matching.into_iter().map(info).collect(), q.limit, q.next_token.as_deref())
}

pub async fn delete(
    State(m): State<Arc<Manager>>,
    Extension(team): Extension<Team>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    match m.delete_snapshot(&team.0, &id)? {
        true => Ok(StatusCode::NO_CONTENT),
        false => Err(ApiError::NotFound(format!("snapshot \"{id}\" not found"))),
    }
}
