//! The HTTP/JSON API. Every error is a 4xx/5xx with a JSON body `{"error": "...", "code":
//! "..."}` that names what was wrong.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use handyman_core::{CancelOutcome, TaskId, TaskSpec, TaskState, TaskView};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::driver::{DriverHandle, SubmitRejection};

/// Shared by the handlers.
#[derive(Clone)]
pub struct ApiState {
    pub driver: DriverHandle,
    pub token: Option<Arc<str>>,
    pub max_batch: usize,
    pub max_payload_bytes: usize,
}

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    fn unavailable() -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the scheduler is not running (shutting down?)",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({ "error": self.message, "code": self.code })),
        )
            .into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// The router with every route.
pub fn router(state: ApiState, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/v1/tasks", post(submit).get(list))
        .route("/v1/tasks/{id}", get(status))
        .route("/v1/tasks/{id}/cancel", post(cancel))
        .route("/v1/tasks/{id}/explain", get(explain))
        .route("/v1/groups", get(groups))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route; see GET /v1/tasks, POST /v1/tasks, GET /v1/groups, GET /metrics, GET /healthz")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
}

fn authorize(state: &ApiState, headers: &HeaderMap) -> ApiResult<()> {
    let Some(token) = &state.token else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(g) if constant_time_eq(g.as_bytes(), token.as_bytes()) => Ok(()),
        Some(_) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "wrong bearer token",
        )),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this server needs `Authorization: Bearer TOKEN`",
        )),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn parse_id(text: &str) -> ApiResult<TaskId> {
    text.parse::<TaskId>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::bad_request(format!("task id {text:?} is not a positive integer")))
}

async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Parses one spec; a payload given as JSON other than a string is taken as its JSON text.
fn parse_spec(mut value: Value, max_payload: usize) -> Result<TaskSpec, String> {
    if let Value::Object(map) = &mut value {
        if let Some(payload) = map.get_mut("payload") {
            if !matches!(payload, Value::String(_) | Value::Array(_) | Value::Null) {
                *payload = Value::String(payload.to_string());
            }
        }
        for key in ["on_success", "on_failure"] {
            if let Some(Value::Array(list)) = map.get_mut(key) {
                for v in list.iter_mut() {
                    if let Value::Object(m) = v {
                        if let Some(p) = m.get_mut("payload") {
                            if !matches!(p, Value::String(_) | Value::Array(_) | Value::Null) {
                                *p = Value::String(p.to_string());
                            }
                        }
                    }
                }
            }
        }
    } else {
        return Err("a task spec must be a JSON object".to_string());
    }
    let spec: TaskSpec = serde_json::from_value(value).map_err(|e| e.to_string())?;
    if spec.payload.len() > max_payload {
        return Err(format!(
            "field `payload`: {} bytes is more than the limit of {max_payload} bytes",
            spec.payload.len()
        ));
    }
    Ok(spec)
}

#[derive(Serialize)]
struct Submitted {
    id: TaskId,
    created: bool,
}

async fn submit(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    authorize(&state, &headers)?;
    let body = body.map_err(|r| ApiError::new(r.status(), "bad_body", r.body_text()))?;
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("request body is not valid JSON: {e}")))?;
    let (specs, many) = match value {
        Value::Array(items) => {
            if items.is_empty() {
                return Err(ApiError::bad_request("an empty array submits nothing"));
            }
            if items.len() > state.max_batch {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "batch_too_large",
                    format!(
                        "{} tasks in one submit is more than the limit of {}",
                        items.len(),
                        state.max_batch
                    ),
                ));
            }
            let mut specs = Vec::with_capacity(items.len());
            for (i, item) in items.into_iter().enumerate() {
                specs.push(
                    parse_spec(item, state.max_payload_bytes)
                        .map_err(|e| ApiError::bad_request(format!("entry {i}: {e}")))?,
                );
            }
            (specs, true)
        }
        other => (
            vec![parse_spec(other, state.max_payload_bytes).map_err(ApiError::bad_request)?],
            false,
        ),
    };
    match state.driver.submit(specs).await {
        Ok(outcomes) => {
            let tasks: Vec<Submitted> = outcomes
                .iter()
                .map(|o| Submitted {
                    id: o.id(),
                    created: matches!(o, handyman_core::SubmitOutcome::Created(_)),
                })
                .collect();
            let ids: Vec<TaskId> = tasks.iter().map(|t| t.id).collect();
            let body = if many {
                json!({ "ids": ids, "tasks": tasks })
            } else {
                json!({ "id": ids[0], "ids": ids, "created": tasks[0].created })
            };
            Ok((StatusCode::CREATED, Json(body)).into_response())
        }
        Err(SubmitRejection::ShuttingDown) | Err(SubmitRejection::Unavailable) => {
            Err(ApiError::unavailable())
        }
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_task",
            e.to_string(),
        )),
    }
}

/// A task as the API shows it: the core's view and what the host stored.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct TaskStatus {
    #[serde(flatten)]
    pub view: TaskView,
    /// The output of a succeeded task (a string when UTF-8).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub output: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub progress: Option<f32>,
    #[serde(default)]
    pub checkpoint_bytes: usize,
    #[serde(default)]
    pub attempts: Vec<AttemptStatus>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct AttemptStatus {
    pub attempt: u32,
    pub outcome: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cleanup: Option<String>,
    pub elapsed_us: u64,
}

fn bytes_value(bytes: Vec<u8>) -> Value {
    match String::from_utf8(bytes) {
        Ok(s) => Value::String(s),
        Err(e) => json!(e.into_bytes()),
    }
}

async fn status(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<TaskStatus>> {
    authorize(&state, &headers)?;
    let id = parse_id(&id)?;
    let found = state
        .driver
        .query(move |ctx| {
            let view = ctx.core.task(id)?;
            let row = ctx.storage.task_row(id).ok().flatten();
            let attempts = ctx.storage.attempts(id).unwrap_or_default();
            let carry = ctx.storage.carry(id).ok().flatten();
            Some(TaskStatus {
                view,
                output: row.as_ref().and_then(|r| r.output.clone()).map(bytes_value),
                progress: row.as_ref().and_then(|r| r.progress),
                checkpoint_bytes: carry
                    .and_then(|c| c.checkpoint)
                    .map(|c| c.len())
                    .unwrap_or(0),
                attempts: attempts
                    .into_iter()
                    .map(|a| AttemptStatus {
                        attempt: a.attempt,
                        outcome: a.outcome,
                        cleanup: a.cleanup,
                        elapsed_us: a.elapsed_us,
                    })
                    .collect(),
            })
        })
        .await
        .ok_or_else(ApiError::unavailable)?;
    found
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("task {id} does not exist")))
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    state: Option<String>,
    group: Option<String>,
    kind: Option<String>,
    /// Only ids greater than this (paging: pass the previous page's `next_after`).
    after: Option<TaskId>,
    limit: Option<usize>,
}

async fn list(
    State(state): State<ApiState>,
    headers: HeaderMap,
    params: Result<Query<ListParams>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    authorize(&state, &headers)?;
    let Query(params) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let wanted_state = params
        .state
        .as_deref()
        .map(|s| s.parse::<TaskState>())
        .transpose()
        .map_err(|e| ApiError::bad_request(format!("parameter `state`: {e}")))?;
    let limit = params.limit.unwrap_or(100).clamp(1, 1000);
    let after = params.after.unwrap_or(0);
    let (tasks, next_after) = state
        .driver
        .query(move |ctx| {
            let ids: Box<dyn Iterator<Item = TaskId>> = match wanted_state {
                Some(s) => Box::new(
                    ctx.core
                        .tasks_in(s)
                        .into_iter()
                        .filter(move |id| *id > after),
                ),
                None => Box::new((after + 1)..=ctx.core.task_count()),
            };
            let mut out = Vec::new();
            let mut more = false;
            for id in ids {
                let Some(view) = ctx.core.task(id) else {
                    continue;
                };
                if params.group.as_ref().is_some_and(|g| *g != view.group)
                    || params.kind.as_ref().is_some_and(|k| *k != view.kind)
                {
                    continue;
                }
                if out.len() == limit {
                    more = true;
                    break;
                }
                out.push(view);
            }
            let next = if more { out.last().map(|v| v.id) } else { None };
            (out, next)
        })
        .await
        .ok_or_else(ApiError::unavailable)?;
    Ok(Json(json!({ "tasks": tasks, "next_after": next_after })))
}

async fn cancel(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    authorize(&state, &headers)?;
    let id = parse_id(&id)?;
    match state.driver.cancel(id).await {
        None => Err(ApiError::unavailable()),
        Some(Err(e)) => Err(ApiError::not_found(e.to_string())),
        Some(Ok(outcome)) => {
            let (word, was) = match outcome {
                CancelOutcome::Cancelled => ("cancelled", None),
                CancelOutcome::Interrupting => ("interrupting", None),
                CancelOutcome::AlreadyTerminal(s) => ("already_terminal", Some(s)),
            };
            Ok(Json(json!({ "id": id, "outcome": word, "state": was })))
        }
    }
}

async fn explain(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    authorize(&state, &headers)?;
    let id = parse_id(&id)?;
    let answer = state
        .driver
        .query(move |ctx| ctx.core.explain(ctx.now, id))
        .await
        .ok_or_else(ApiError::unavailable)?;
    match answer {
        Ok(e) => Ok(Json(json!({
            "id": e.id,
            "state": e.state,
            "reasons": e.reasons,
            "text": e.to_string(),
        }))),
        Err(e) => Err(ApiError::not_found(e.to_string())),
    }
}

async fn groups(State(state): State<ApiState>, headers: HeaderMap) -> ApiResult<Json<Value>> {
    authorize(&state, &headers)?;
    let groups = state
        .driver
        .query(|ctx| {
            let groups = ctx.core.groups(ctx.now);
            let active_weight: f64 = groups
                .iter()
                .filter(|g| g.running + g.queued > 0)
                .map(|g| f64::from(g.config.weight))
                .sum();
            groups
                .into_iter()
                .map(|g| {
                    let active = g.running + g.queued > 0;
                    let total = if active {
                        active_weight
                    } else {
                        active_weight + f64::from(g.config.weight)
                    };
                    json!({
                        "name": g.name,
                        "weight": g.config.weight,
                        "cap": g.config.cap,
                        "floor": g.config.floor,
                        "share": f64::from(g.config.weight) / total.max(1.0),
                        "running": g.running,
                        "queued": g.queued,
                        "usage_ms": g.usage_ms,
                    })
                })
                .collect::<Vec<_>>()
        })
        .await
        .ok_or_else(ApiError::unavailable)?;
    Ok(Json(json!({ "groups": groups })))
}

async fn metrics(State(state): State<ApiState>, headers: HeaderMap) -> ApiResult<Response> {
    authorize(&state, &headers)?;
    let text = state
        .driver
        .query(|ctx| ctx.metrics.render(ctx.core, ctx.now))
        .await
        .ok_or_else(ApiError::unavailable)?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}
