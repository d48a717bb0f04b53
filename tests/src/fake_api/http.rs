//! The HTTP surface: URL routing, list/get/write handlers and API-server-shaped `Status` errors.

use std::{collections::HashMap, sync::Arc};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{Query, State},
    http::{HeaderMap, Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};
use tracing::debug;

use super::{
    Shared,
    selector::{FieldSelector, LabelSelector, SelectorError},
    store::{ResourceKey, ResourceType, Selection, StoreError},
    watch,
};

/// Why a request fails, mapped onto the status code and `reason` the API server would give.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RequestError {
    #[error("the server could not find the requested resource ({path})")]
    UnknownPath { path: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Selector(#[from] SelectorError),
    #[error("invalid query string: {source}")]
    Query {
        #[source]
        source: axum::extract::rejection::QueryRejection,
    },
    #[error("invalid resourceVersion {given:?}")]
    ResourceVersion { given: String },
    #[error("request body is not valid JSON: {source}")]
    Body {
        #[source]
        source: serde_json::Error,
    },
    #[error("namespace {body:?} in the body does not match {url:?} in the URL")]
    NamespaceMismatch { body: String, url: String },
    #[error("the fake API server does not implement {feature}")]
    Unimplemented { feature: &'static str },
    #[error("unsupported patch type {content_type:?}: only application/merge-patch+json")]
    PatchType { content_type: String },
    #[error("method {method} is not supported on {path}")]
    Method { method: Method, path: String },
}

impl RequestError {
    fn status(&self) -> (StatusCode, &'static str) {
        match self {
            Self::UnknownPath { .. } | Self::Store(StoreError::NotFound { .. }) => {
                (StatusCode::NOT_FOUND, "NotFound")
            }
            Self::Store(StoreError::AlreadyExists { .. }) => {
                (StatusCode::CONFLICT, "AlreadyExists")
            }
            Self::Store(StoreError::Conflict { .. }) => (StatusCode::CONFLICT, "Conflict"),
            Self::Store(_) | Self::NamespaceMismatch { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "Invalid")
            }
            Self::Selector(_)
            | Self::Query { .. }
            | Self::ResourceVersion { .. }
            | Self::Body { .. }
            | Self::Unimplemented { .. } => (StatusCode::BAD_REQUEST, "BadRequest"),
            Self::PatchType { .. } => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "UnsupportedMediaType"),
            Self::Method { .. } => (StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed"),
        }
    }
}

impl IntoResponse for RequestError {
    fn into_response(self) -> Response {
        let (code, reason) = self.status();
        debug!(%code, error = %self, "request failed");
        json_response(code, &status_object(code, reason, &self.to_string()))
    }
}

/// A `meta/v1` `Status` with `status: Failure`, the body of every API error.
pub(crate) fn status_object(code: StatusCode, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    })
}

pub(crate) fn json_response(code: StatusCode, body: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new().fallback(handle).with_state(shared)
}

/// Where a URL points: a collection (to list, watch or create in) or one object in it.
struct Target {
    resource: ResourceType,
    namespace: Option<String>,
    name: Option<String>,
}

fn route(shared: &Shared, path: &str) -> Result<Target, RequestError> {
    let unknown = || RequestError::UnknownPath {
        path: path.to_owned(),
    };
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(unknown()),
    };
    let (namespace, plural, name) = match rest {
        ["namespaces", ns, plural] => (Some(*ns), *plural, None),
        ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name)),
        [plural] => (None, *plural, None),
        [plural, name] => (None, *plural, Some(*name)),
        _ => return Err(unknown()),
    };
    let key = ResourceKey {
        group: group.to_owned(),
        version: version.to_owned(),
        plural: plural.to_owned(),
    };
    let resource = shared.store().resource(&key).cloned().ok_or_else(unknown)?;
    // `/api/v1/services/x` and `/api/v1/namespaces/x/nodes` do not exist on a real server either.
    if matches!(
        (resource.namespaced, namespace, name),
        (false, Some(_), _) | (true, None, Some(_))
    ) {
        return Err(unknown());
    }
    Ok(Target {
        resource,
        namespace: namespace.map(str::to_owned),
        name: name.map(str::to_owned),
    })
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    debug!(%method, %uri, "request");
    let delay = shared.response_delay();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    respond(&shared, &method, &uri, &headers, &body).unwrap_or_else(IntoResponse::into_response)
}

fn respond(
    shared: &Arc<Shared>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, RequestError> {
    if uri.path() == "/version" {
        return Ok(json_response(StatusCode::OK, &version_info()));
    }
    let target = route(shared, uri.path())?;
    let Query(query) = Query::<HashMap<String, String>>::try_from_uri(uri)
        .map_err(|source| RequestError::Query { source })?;
    let key = &target.resource.key;
    let namespace = target.namespace.as_deref();
    match (method, target.name.as_deref()) {
        (&Method::GET, None) => {
            let watching = flag(&query, "watch");
            shared.with_store(|store| {
                let counts = store.counts_mut(key);
                if watching {
                    counts.watches += 1;
                } else {
                    counts.lists += 1;
                }
            });
            let selection = selection(&target, &query)?;
            if watching {
                return watch::start(shared, &target.resource, selection, &query);
            }
            let (rv, items) = shared.store().list(key, &selection);
            // Everything fits in one page, so `limit` is honoured by never needing `continue`.
            Ok(json_response(
                StatusCode::OK,
                &json!({
                    "kind": format!("{}List", target.resource.kind),
                    "apiVersion": target.resource.api_version(),
                    "metadata": {"resourceVersion": rv.to_string()},
                    "items": items,
                }),
            ))
        }
        (&Method::GET, Some(name)) => shared
            .store()
            .get(key, namespace, name)
            .map(|object| json_response(StatusCode::OK, &object))
            .ok_or_else(|| not_found(&target.resource, name)),
        (&Method::POST, None) => {
            let object = body_object(body, namespace)?;
            let created = shared.with_store(|store| store.create(key, object, namespace))?;
            Ok(json_response(StatusCode::CREATED, &created))
        }
        (&Method::PUT, Some(_)) => {
            let object = body_object(body, namespace)?;
            let replaced = shared.with_store(|store| store.replace(key, object, namespace))?;
            Ok(json_response(StatusCode::OK, &replaced))
        }
        (&Method::PATCH, Some(name)) => {
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            // Strategic merge needs each field's patch strategy from the OpenAPI schema; the
            // clients this fake serves (kube-rs's event recorder) use a plain merge patch.
            if content_type != "application/merge-patch+json" {
                return Err(RequestError::PatchType {
                    content_type: content_type.to_owned(),
                });
            }
            let patch: Value =
                serde_json::from_slice(body).map_err(|source| RequestError::Body { source })?;
            let patched =
                shared.with_store(|store| store.merge_patch(key, namespace, name, &patch))?;
            Ok(json_response(StatusCode::OK, &patched))
        }
        (&Method::DELETE, Some(name)) => shared
            .with_store(|store| store.delete(key, namespace, name))
            .map(|object| json_response(StatusCode::OK, &object))
            .ok_or_else(|| not_found(&target.resource, name)),
        _ => Err(RequestError::Method {
            method: method.clone(),
            path: uri.path().to_owned(),
        }),
    }
}

fn not_found(resource: &ResourceType, name: &str) -> RequestError {
    RequestError::Store(StoreError::NotFound {
        kind: resource.kind.clone(),
        name: name.to_owned(),
    })
}

fn selection(target: &Target, query: &HashMap<String, String>) -> Result<Selection, RequestError> {
    let param = |name: &str| query.get(name).map_or("", String::as_str);
    Ok(Selection {
        namespace: target.namespace.clone(),
        labels: LabelSelector::parse(param("labelSelector"))?,
        fields: FieldSelector::parse(param("fieldSelector"))?,
    })
}

/// A request body as an object, checked against the URL's namespace as the API server does.
fn body_object(body: &Bytes, namespace: Option<&str>) -> Result<Value, RequestError> {
    let object: Value =
        serde_json::from_slice(body).map_err(|source| RequestError::Body { source })?;
    let in_body = object
        .pointer("/metadata/namespace")
        .and_then(Value::as_str);
    if let (Some(body), Some(url)) = (in_body, namespace)
        && !body.is_empty()
        && body != url
    {
        return Err(RequestError::NamespaceMismatch {
            body: body.to_owned(),
            url: url.to_owned(),
        });
    }
    Ok(object)
}

/// `/version`, for clients that check the server before they start.
fn version_info() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0-fake",
        "platform": "linux/amd64",
    })
}

/// Whether a boolean query parameter is set, spelled as Go's `strconv.ParseBool` accepts it.
pub(crate) fn flag(query: &HashMap<String, String>, name: &str) -> bool {
    matches!(
        query.get(name).map(String::as_str),
        Some("true" | "1" | "t" | "T" | "TRUE" | "True")
    )
}

pub(crate) fn response_body(body: Body) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}
