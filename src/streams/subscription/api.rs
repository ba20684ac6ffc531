//! The subscription APIs' HTTP surface: routing under `__ds/`, request
//! parsing and validation, the JSON shapes of responses and errors.
//!
//! Owns [`ApiError`] (a status and `{"error": {"code", "message"}}`) and
//! the handlers; the registry and wakes they act on are the parent
//! module's and `wake`'s. Nothing here panics on input: every malformed
//! body, id, token or offset is an `ApiError`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc as StdArc;

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::super::error::StreamError;
use super::super::offset::{parse_offset, Offset};
use super::super::DurableStreams;
use super::signing::WebhookKey;
use super::webhook::{WebhookOptions, WebhookUrl};
use super::{
    base_url, glob, now_ms, now_rfc3339, same_token, Config, Kind, Link, Snapshot, Subscription,
    Wake, MAX_ID_LEN,
};

/// A refusal of the subscription APIs: a status and a JSON error body.
pub(super) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    extra: Option<(&'static str, String)>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.status, self.message)
    }
}

impl ApiError {
    pub(super) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            extra: None,
        }
    }

    pub(super) fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "INVALID_REQUEST", message)
    }

    pub(super) fn fenced() -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "FENCED",
            "this wake is no longer current (stale wake_id, generation or token)",
        )
    }

    pub(super) fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "NOT_FOUND", "no such subscription")
    }
}

impl From<StreamError> for ApiError {
    fn from(error: StreamError) -> Self {
        Self::new(error.status(), "STREAM_ERROR", error.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({ "code": self.code, "message": self.message });
        if let Some((name, value)) = self.extra {
            error[name] = Value::String(value);
        }
        (self.status, axum::Json(json!({ "error": error }))).into_response()
    }
}

impl DurableStreams {
    /// Serves a request under `/v1/stream/__ds/` (`rest` is the part after
    /// `__ds/`).
    pub(crate) async fn subscription_api(
        self: &StdArc<Self>,
        tenant: &str,
        method: &Method,
        rest: &str,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Response {
        match self.route(tenant, method, rest, headers, body).await {
            Ok(response) => response,
            Err(error) => error.into_response(),
        }
    }

    async fn route(
        self: &StdArc<Self>,
        tenant: &str,
        method: &Method,
        rest: &str,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Response, ApiError> {
        if rest == "jwks.json" && method == Method::GET {
            let key = self.signing_key().await?;
            let mut response = axum::Json(key.jwks()).into_response();
            let out = response.headers_mut();
            out.insert(
                "content-type",
                HeaderValue::from_static("application/jwk-set+json"),
            );
            out.insert(
                "cache-control",
                HeaderValue::from_static("public, max-age=300"),
            );
            return Ok(response);
        }
        let Some(rest) = rest.strip_prefix("subscriptions/") else {
            return Err(ApiError::not_found());
        };
        let (id, action) = match rest.split_once('/') {
            Some((id, action)) => (id, Some(action)),
            None => (rest, None),
        };
        if id.is_empty() || id.len() > MAX_ID_LEN {
            return Err(ApiError::bad(format!(
                "a subscription id is 1 to {MAX_ID_LEN} bytes without '/'"
            )));
        }
        let body_json = || -> Result<Value, ApiError> {
            serde_json::from_slice(&body)
                .map_err(|error| ApiError::bad(format!("the body is not JSON: {error}")))
        };
        match (method.clone(), action) {
            (Method::PUT, None) => {
                let base_url = match headers.get("host").and_then(|host| host.to_str().ok()) {
                    Some(host) => format!("http://{host}/v1/stream"),
                    None => "/v1/stream".to_string(),
                };
                self.put_subscription(tenant, id, body_json()?, base_url)
                    .await
            }
            (Method::GET, None) => {
                let key = self.signing_key().await?;
                let registry = self.registry(tenant).await?;
                let subscription = registry
                    .subscriptions
                    .get(&(tenant.to_string(), id.to_string()))
                    .ok_or_else(ApiError::not_found)?;
                Ok(axum::Json(describe(
                    subscription,
                    key,
                    self.options.public_url.as_deref(),
                ))
                .into_response())
            }
            (Method::DELETE, None) => {
                let mut registry = self.registry(tenant).await?;
                let id_key = (tenant.to_string(), id.to_string());
                let Some(mut subscription) = registry.subscriptions.remove(&id_key) else {
                    return Ok(StatusCode::NO_CONTENT.into_response());
                };
                subscription.snapshot.deleted = true;
                self.persist(tenant, &subscription.snapshot).await?;
                Ok(StatusCode::NO_CONTENT.into_response())
            }
            (Method::POST, Some("streams")) => {
                let paths = string_list(&body_json()?, "streams")?;
                let mut registry = self.registry(tenant).await?;
                let subscription = registry
                    .subscriptions
                    .get_mut(&(tenant.to_string(), id.to_string()))
                    .ok_or_else(ApiError::not_found)?;
                for path in paths {
                    let tail = self.tail_of(tenant, &path).await;
                    let link = subscription.snapshot.links.entry(path).or_insert(Link {
                        explicit: false,
                        glob: false,
                        acked: tail.unwrap_or(Offset::ZERO),
                    });
                    link.explicit = true;
                }
                self.persist(tenant, &subscription.snapshot).await?;
                Ok(StatusCode::NO_CONTENT.into_response())
            }
            (Method::DELETE, Some(action)) if action.starts_with("streams/") => {
                let path = &action["streams/".len()..];
                let mut registry = self.registry(tenant).await?;
                let subscription = registry
                    .subscriptions
                    .get_mut(&(tenant.to_string(), id.to_string()))
                    .ok_or_else(ApiError::not_found)?;
                if let Some(link) = subscription.snapshot.links.get_mut(path) {
                    link.explicit = false;
                    if !link.glob {
                        subscription.snapshot.links.remove(path);
                    }
                }
                self.persist(tenant, &subscription.snapshot).await?;
                Ok(StatusCode::NO_CONTENT.into_response())
            }
            (Method::POST, Some("callback" | "ack")) => {
                let token = bearer(headers)?;
                self.acknowledge(tenant, id, &token, body_json()?).await
            }
            (Method::POST, Some("claim")) => {
                let worker = body_json()?
                    .get("worker")
                    .and_then(Value::as_str)
                    .filter(|worker| !worker.is_empty())
                    .ok_or_else(|| ApiError::bad("a claim names its worker"))?
                    .to_string();
                self.claim(tenant, id, worker).await
            }
            (Method::POST, Some("release")) => {
                let token = bearer(headers)?;
                let body = body_json()?;
                let mut registry = self.registry(tenant).await?;
                let subscription = registry
                    .subscriptions
                    .get_mut(&(tenant.to_string(), id.to_string()))
                    .ok_or_else(ApiError::not_found)?;
                current_wake(subscription, &token, &body)?;
                subscription.snapshot.wake = None;
                self.persist(tenant, &subscription.snapshot).await?;
                self.wake_if_pending(tenant, subscription).await?;
                Ok(StatusCode::NO_CONTENT.into_response())
            }
            _ => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                "no such subscription API",
            )),
        }
    }

    async fn put_subscription(
        self: &StdArc<Self>,
        tenant: &str,
        id: &str,
        body: Value,
        base_url: String,
    ) -> Result<Response, ApiError> {
        let config = parse_config(&body, &self.options.webhooks)?;
        let key = self.signing_key().await?;
        let mut registry = self.registry(tenant).await?;
        let id_key = (tenant.to_string(), id.to_string());
        if let Some(existing) = registry.subscriptions.get(&id_key) {
            if existing.snapshot.config != config {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "CONFLICT",
                    "a subscription with this id exists with another configuration",
                ));
            }
            return Ok((
                StatusCode::OK,
                axum::Json(describe(existing, key, self.options.public_url.as_deref())),
            )
                .into_response());
        }
        let mut links = BTreeMap::new();
        for path in &config.streams {
            let acked = self.tail_of(tenant, path).await.unwrap_or(Offset::ZERO);
            links.insert(
                path.clone(),
                Link {
                    explicit: true,
                    glob: false,
                    acked,
                },
            );
        }
        if let Some(pattern) = &config.pattern {
            // Backfill: the matching streams this process knows, at their
            // tail (no historical replay).
            let known: Vec<String> = self
                .entries
                .iter()
                .filter(|entry| entry.key().tenant() == tenant)
                .map(|entry| entry.key().session().to_string())
                .filter(|path| !path.starts_with("__ds/") && glob::matches(pattern, path))
                .collect();
            for path in known {
                if let Some(tail) = self.tail_of(tenant, &path).await {
                    links
                        .entry(path)
                        .or_insert(Link {
                            explicit: false,
                            glob: true,
                            acked: tail,
                        })
                        .glob = true;
                }
            }
        }
        let snapshot = Snapshot {
            id: id.to_string(),
            config,
            links,
            generation: 0,
            created_at: now_rfc3339(),
            base_url,
            deleted: false,
            wake: None,
        };
        // The tenant is indexed first: a subscription that exists is one
        // a restart finds.
        self.index_tenant(&mut registry, tenant).await?;
        self.persist(tenant, &snapshot).await?;
        let subscription = Subscription {
            snapshot,
            failed: None,
        };
        let described = describe(&subscription, key, self.options.public_url.as_deref());
        registry.subscriptions.insert(id_key, subscription);
        Ok((StatusCode::CREATED, axum::Json(described)).into_response())
    }

    /// `callback` and `ack`: applies the acks of the current wake.
    async fn acknowledge(
        self: &StdArc<Self>,
        tenant: &str,
        id: &str,
        token: &str,
        body: Value,
    ) -> Result<Response, ApiError> {
        let mut registry = self.registry(tenant).await?;
        let subscription = registry
            .subscriptions
            .get_mut(&(tenant.to_string(), id.to_string()))
            .ok_or_else(ApiError::not_found)?;
        current_wake(subscription, token, &body)?;
        let acks = body
            .get("acks")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for ack in acks {
            let (Some(path), Some(offset)) = (
                ack.get("stream").and_then(Value::as_str),
                ack.get("offset").and_then(Value::as_str),
            ) else {
                return Err(ApiError::bad(
                    "an ack is {\"stream\": path, \"offset\": offset}",
                ));
            };
            let offset = parse_offset(offset).map_err(|error| ApiError::bad(error.to_string()))?;
            if let Some(link) = subscription.snapshot.links.get_mut(path) {
                link.acked = link.acked.max(offset);
            }
        }
        let done = body.get("done").and_then(Value::as_bool).unwrap_or(false);
        if done {
            subscription.snapshot.wake = None;
        } else if let Some(wake) = subscription.snapshot.wake.as_mut() {
            // Protocol 7.3: a valid ack or callback that is not done
            // extends a held lease (its timer follows the new end).
            if wake.lease_until_ms.is_some() {
                wake.lease_until_ms =
                    Some(now_ms().saturating_add(subscription.snapshot.config.lease_ttl_ms));
            }
        }
        self.persist(tenant, &subscription.snapshot).await?;
        let next_wake = !self.pending(tenant, subscription).await.is_empty();
        if done && next_wake {
            self.wake_if_pending(tenant, subscription).await?;
        }
        Ok(axum::Json(json!({ "ok": true, "next_wake": next_wake })).into_response())
    }

    /// `claim`: a worker takes the pull-wake lease.
    async fn claim(
        self: &StdArc<Self>,
        tenant: &str,
        id: &str,
        worker: String,
    ) -> Result<Response, ApiError> {
        let mut registry = self.registry(tenant).await?;
        let subscription = registry
            .subscriptions
            .get_mut(&(tenant.to_string(), id.to_string()))
            .ok_or_else(ApiError::not_found)?;
        let now = now_ms();
        if let Some(wake) = &subscription.snapshot.wake {
            if let Some(holder) = &wake.holder {
                if wake.leased_at(now) {
                    let mut busy = ApiError::new(
                        StatusCode::CONFLICT,
                        "ALREADY_CLAIMED",
                        "another worker holds this subscription's lease",
                    );
                    busy.extra = Some(("current_holder", holder.clone()));
                    return Err(busy);
                }
            }
        }
        if subscription.snapshot.wake.is_none() {
            let pending = self.pending(tenant, subscription).await;
            if pending.is_empty() {
                return Ok(StatusCode::NO_CONTENT.into_response());
            }
            self.new_wake(tenant, subscription, pending).await?;
        }
        let until = now.saturating_add(subscription.snapshot.config.lease_ttl_ms);
        let Some(wake) = subscription.snapshot.wake.as_mut() else {
            return Ok(StatusCode::NO_CONTENT.into_response());
        };
        let before = (
            wake.holder.replace(worker),
            wake.lease_until_ms.replace(until),
        );
        let wake = wake.clone();
        // The lease is durable before the worker hears of it: its token
        // stays good across a restart until the lease runs out.
        if let Err(error) = self.persist(tenant, &subscription.snapshot).await {
            if let Some(current) = subscription.snapshot.wake.as_mut() {
                (current.holder, current.lease_until_ms) = before;
            }
            return Err(error);
        }
        // Protocol 7.3: when it runs out, another wake for pending work.
        self.expire_lease_at(
            tenant.to_string(),
            id.to_string(),
            wake.wake_id.clone(),
            until,
        );
        Ok(axum::Json(json!({
            "subscription_id": id,
            "wake_id": wake.wake_id,
            "generation": wake.generation,
            "token": wake.token,
            "lease_ttl_ms": subscription.snapshot.config.lease_ttl_ms,
            "streams": wake_streams(subscription, &wake),
        }))
        .into_response())
    }
}

/// The `Authorization: Bearer` token.
fn bearer(headers: &HeaderMap) -> Result<String, ApiError> {
    headers
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::to_string)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                "send the wake's token as Authorization: Bearer <token>",
            )
        })
}

/// Checks that `body` names the subscription's current wake, with its
/// token; anything else is fenced.
fn current_wake(subscription: &Subscription, token: &str, body: &Value) -> Result<(), ApiError> {
    let wake = subscription
        .snapshot
        .wake
        .as_ref()
        .ok_or_else(ApiError::fenced)?;
    let wake_id = body.get("wake_id").and_then(Value::as_str);
    let generation = body.get("generation").and_then(Value::as_u64);
    if wake_id != Some(wake.wake_id.as_str())
        || generation != Some(wake.generation)
        || !same_token(token, &wake.token)
    {
        return Err(ApiError::fenced());
    }
    Ok(())
}

/// A wake's streams as sent to workers.
pub(super) fn wake_streams(subscription: &Subscription, wake: &Wake) -> Vec<Value> {
    wake.streams
        .iter()
        .map(|(path, tail)| {
            let link = subscription.snapshot.links.get(path);
            let acked = link.map(|link| link.acked).unwrap_or(Offset::ZERO);
            json!({
                "path": path,
                "link_type": link_type(link),
                "acked_offset": acked.to_string(),
                "tail_offset": tail.to_string(),
                "has_pending": *tail > acked,
            })
        })
        .collect()
}

fn link_type(link: Option<&Link>) -> &'static str {
    match link {
        Some(link) if link.explicit => "explicit",
        _ => "glob",
    }
}

/// A subscription as `GET` (and `PUT`) return it.
fn describe(subscription: &Subscription, key: &WebhookKey, public_url: Option<&str>) -> Value {
    let snapshot = &subscription.snapshot;
    let config = &snapshot.config;
    let streams: Vec<Value> = snapshot
        .links
        .iter()
        .map(|(path, link)| {
            json!({
                "path": path,
                "link_type": link_type(Some(link)),
                "acked_offset": link.acked.to_string(),
            })
        })
        .collect();
    let webhook = config.webhook_url.as_ref().map(|url| {
        json!({
            "url": url,
            "signing": {
                "alg": "ed25519",
                "kid": key.kid(),
                "jwks_url": format!("{}/__ds/jwks.json", base_url(public_url, snapshot)),
            },
        })
    });
    json!({
        "id": snapshot.id,
        "subscription_id": snapshot.id,
        "type": match config.kind { Kind::Webhook => "webhook", Kind::PullWake => "pull-wake" },
        "pattern": config.pattern,
        "streams": streams,
        "webhook": webhook,
        "wake_stream": config.wake_stream,
        "lease_ttl_ms": config.lease_ttl_ms,
        "created_at": snapshot.created_at,
        "status": if subscription.failed.is_some() { "failed" } else { "active" },
        // Not in the protocol: why deliveries fail (a refused address, an
        // untrusted certificate), for whoever debugs the receiver.
        "last_error": subscription.failed,
        "description": config.description,
    })
}

/// A `{"name": [strings]}` member.
fn string_list(body: &Value, name: &str) -> Result<Vec<String>, ApiError> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| {
                item.as_str()
                    .filter(|path| !path.is_empty() && !path.starts_with("__ds"))
                    .map(str::to_string)
                    .ok_or_else(|| ApiError::bad(format!("{name} holds stream paths (strings)")))
            })
            .collect(),
        Some(_) => Err(ApiError::bad(format!(
            "{name} must be an array of stream paths"
        ))),
    }
}

/// Checks and normalises a `PUT` body.
fn parse_config(body: &Value, webhooks: &WebhookOptions) -> Result<Config, ApiError> {
    let kind = match body.get("type").and_then(Value::as_str) {
        Some("webhook") => Kind::Webhook,
        Some("pull-wake") => Kind::PullWake,
        _ => return Err(ApiError::bad("type must be webhook or pull-wake")),
    };
    let pattern = body
        .get("pattern")
        .and_then(Value::as_str)
        .map(str::to_string);
    let streams: BTreeSet<String> = string_list(body, "streams")?.into_iter().collect();
    if pattern.is_none() && streams.is_empty() {
        return Err(ApiError::bad("give a pattern, streams, or both"));
    }
    let lease_ttl_ms = match body.get("lease_ttl_ms") {
        None | Some(Value::Null) => 30_000,
        Some(value) => value
            .as_u64()
            .filter(|ms| (1_000..=600_000).contains(ms))
            .ok_or_else(|| ApiError::bad("lease_ttl_ms must be from 1000 to 600000"))?,
    };
    let webhook_url = match kind {
        Kind::Webhook => {
            let url = body
                .get("webhook")
                .and_then(|webhook| webhook.get("url"))
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::bad("a webhook subscription needs webhook.url"))?;
            WebhookUrl::parse(url, webhooks).map_err(|reason| {
                ApiError::new(StatusCode::BAD_REQUEST, "WEBHOOK_URL_REJECTED", reason)
            })?;
            Some(url.to_string())
        }
        Kind::PullWake => None,
    };
    let wake_stream = match kind {
        Kind::PullWake => Some(
            body.get("wake_stream")
                .and_then(Value::as_str)
                .filter(|path| !path.is_empty())
                .ok_or_else(|| ApiError::bad("a pull-wake subscription needs wake_stream"))?
                .to_string(),
        ),
        Kind::Webhook => None,
    };
    Ok(Config {
        kind,
        pattern,
        streams,
        webhook_url,
        wake_stream,
        lease_ttl_ms,
        description: body
            .get("description")
            .and_then(Value::as_str)
            .map(str::to_string),
    })
}
