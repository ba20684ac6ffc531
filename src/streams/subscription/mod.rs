//! The reserved subscription APIs under `__ds` (protocol sections 6 and
//! 7): durable cursors over sets of streams that wake workers, by signed
//! webhook or by an event in a wake stream (pull-wake).
//!
//! Owns the subscriptions of every tenant and their wakes. Invariants:
//!
//! * **Durable configuration and cursors.** A subscription's configuration,
//!   stream links, acknowledged offsets and wake generation are a JSON
//!   snapshot appended to a reserved session of its tenant
//!   (`__ds/subscriptions`) on every change, and folded back on first use
//!   after a restart; the webhook signing key lives likewise in
//!   `__ds/signing-key` (so it is as secret as the log file). Wakes and
//!   leases are in memory: a restart forgets them, and the next append to a
//!   linked stream wakes again.
//! * **One wake at a time.** A subscription with a wake in flight or a
//!   lease held gets no new wake; every wake has a fresh `wake_id`, a
//!   generation above every earlier one, and a random bearer token; an ack,
//!   callback or release that names another wake, generation or token is
//!   fenced (`409 FENCED`) and changes nothing.
//! * **Acks only move forward.** An acknowledged offset is last-processed
//!   inclusive and never goes back.
//! * **Safe targets only.** Webhook URLs are checked at creation (module
//!   `webhook`); deliveries are signed (module `signing`), bounded in time,
//!   retried with backoff (1 s doubling to 60 s, 20 % jitter) while the wake
//!   is current.
//!
//! Streams are linked when a subscription is created (explicit paths, and
//! glob matches among the streams this process knows, at their tail) and
//! when an HTTP write to a matching stream lands (at the offset before it).
//! Appends by the in-process writer do not wake subscriptions.

mod glob;
mod signing;
mod webhook;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc as StdArc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::cursor::{Cursor, Revision};
use crate::key::SessionKey;
use crate::TryNextError;

use super::error::StreamError;
use super::offset::{parse_offset, Offset};
use super::record::StreamRecord;
use super::write::Append;
use super::DurableStreams;

use self::signing::WebhookKey;
use self::webhook::WebhookUrl;

/// The reserved session of a tenant's subscriptions.
const REGISTRY: &str = "__ds/subscriptions";
/// The reserved session of the webhook signing key (empty tenant).
const SIGNING_KEY: &str = "__ds/signing-key";
/// The longest subscription id accepted.
const MAX_ID_LEN: usize = 256;
/// How long one webhook delivery may take.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Every tenant's subscriptions, and the signing key.
#[derive(Default)]
pub(crate) struct Subscriptions {
    registry: tokio::sync::Mutex<Registry>,
    key: tokio::sync::OnceCell<WebhookKey>,
}

#[derive(Default)]
struct Registry {
    /// Tenants whose snapshots were folded in.
    loaded: HashSet<String>,
    /// By tenant, then id.
    subscriptions: HashMap<(String, String), Subscription>,
}

/// A subscription's durable part: what its snapshot records hold.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Snapshot {
    id: String,
    config: Config,
    links: BTreeMap<String, Link>,
    generation: u64,
    created_at: String,
    /// `http://host/v1/stream`, from the request that created it.
    base_url: String,
    deleted: bool,
}

/// What a `PUT` configures; equal configurations re-confirm (`200`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Config {
    kind: Kind,
    pattern: Option<String>,
    streams: BTreeSet<String>,
    webhook_url: Option<String>,
    wake_stream: Option<String>,
    lease_ttl_ms: u64,
    description: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Kind {
    Webhook,
    PullWake,
}

/// One linked stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Link {
    explicit: bool,
    glob: bool,
    acked: Offset,
}

struct Subscription {
    snapshot: Snapshot,
    wake: Option<Wake>,
    failed: bool,
}

#[derive(Clone)]
struct Wake {
    wake_id: String,
    generation: u64,
    token: String,
    /// The worker holding the lease (pull-wake), or the webhook.
    holder: Option<String>,
    lease_until: Option<tokio::time::Instant>,
    /// The linked streams and their tails when the wake was made.
    streams: Vec<(String, Offset)>,
}

/// A refusal of the subscription APIs: a status and a JSON error body.
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    extra: Option<(&'static str, String)>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            extra: None,
        }
    }

    fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "INVALID_REQUEST", message)
    }

    fn fenced() -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "FENCED",
            "this wake is no longer current (stale wake_id, generation or token)",
        )
    }

    fn not_found() -> Self {
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

fn random_hex(bytes: usize) -> Result<String, ApiError> {
    let mut buffer = vec![0u8; bytes];
    getrandom::fill(&mut buffer).map_err(|error| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            format!("no randomness: {error}"),
        )
    })?;
    Ok(buffer.iter().map(|byte| format!("{byte:02x}")).collect())
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Compares tokens in time independent of where they differ.
fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
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
                "application/jwk-set+json".parse().expect("static"),
            );
            out.insert(
                "cache-control",
                "public, max-age=300".parse().expect("static"),
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
                Ok(axum::Json(describe(subscription, key)).into_response())
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
                subscription.wake = None;
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

    /// The registry, with `tenant`'s snapshots folded in.
    async fn registry(
        &self,
        tenant: &str,
    ) -> Result<tokio::sync::MutexGuard<'_, Registry>, ApiError> {
        let mut registry = self.subscriptions.registry.lock().await;
        if !registry.loaded.contains(tenant) {
            let key = self.key(tenant, REGISTRY)?;
            let mut folded: BTreeMap<String, Snapshot> = BTreeMap::new();
            for record in self.reserved_records(&key)? {
                if let Ok(snapshot) = serde_json::from_slice::<Snapshot>(&record) {
                    match snapshot.deleted {
                        true => folded.remove(&snapshot.id),
                        false => folded.insert(snapshot.id.clone(), snapshot),
                    };
                }
            }
            for (id, snapshot) in folded {
                registry.subscriptions.insert(
                    (tenant.to_string(), id),
                    Subscription {
                        snapshot,
                        wake: None,
                        failed: false,
                    },
                );
            }
            registry.loaded.insert(tenant.to_string());
        }
        Ok(registry)
    }

    /// The messages of a reserved session's data records, in order.
    fn reserved_records(&self, key: &SessionKey) -> Result<Vec<Vec<u8>>, StreamError> {
        let mut records = self
            .store
            .catch_up(&Cursor::new(key.clone(), None, Revision(0), 0))?;
        let mut out = Vec::new();
        loop {
            match records.try_next() {
                Ok(event) => out.extend(event.payload().messages().iter().cloned()),
                Err(TryNextError::Empty | TryNextError::Ended) => return Ok(out),
                Err(TryNextError::Gap(gap)) => {
                    return Err(StreamError::Unavailable(format!(
                        "a reserved session cannot be read ({gap})"
                    )))
                }
            }
        }
    }

    /// Appends a subscription's snapshot and waits for it to be durable.
    async fn persist(&self, tenant: &str, snapshot: &Snapshot) -> Result<(), ApiError> {
        let key = self.key(tenant, REGISTRY)?;
        let json = serde_json::to_vec(snapshot)
            .map_err(|error| ApiError::bad(format!("cannot encode the subscription: {error}")))?;
        let event = self
            .store
            .append(&key, Revision(0), StreamRecord::data(json))
            .map_err(StreamError::from)?;
        self.wait_durable_for(&key, event.position()).await?;
        Ok(())
    }

    /// The webhook signing key: the persisted one, or a new one persisted.
    async fn signing_key(&self) -> Result<&WebhookKey, ApiError> {
        self.subscriptions
            .key
            .get_or_try_init(|| async {
                let key = self.key("", SIGNING_KEY)?;
                let stored = self.reserved_records(&key)?;
                if let Some(secret) = stored
                    .last()
                    .and_then(|secret| <[u8; 32]>::try_from(secret.as_slice()).ok())
                {
                    return Ok(WebhookKey::from_secret(secret));
                }
                let (fresh, secret) = WebhookKey::generate().map_err(|error| {
                    ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "UNAVAILABLE",
                        format!("no randomness for a signing key: {error}"),
                    )
                })?;
                let event = self
                    .store
                    .append(&key, Revision(0), StreamRecord::data(secret.to_vec()))
                    .map_err(StreamError::from)?;
                self.wait_durable_for(&key, event.position()).await?;
                Ok(fresh)
            })
            .await
    }

    /// The tail offset of the stream at `path`, if it exists.
    async fn tail_of(&self, tenant: &str, path: &str) -> Option<Offset> {
        let key = self.key(tenant, path).ok()?;
        let entry = self.entry(&key, false).ok()??;
        let state = entry.state.lock().await;
        let live = state.as_ref().filter(|live| !live.soft_deleted)?;
        self.own_tail_offset(&key, live).ok()
    }

    async fn put_subscription(
        self: &StdArc<Self>,
        tenant: &str,
        id: &str,
        body: Value,
        base_url: String,
    ) -> Result<Response, ApiError> {
        let config = parse_config(&body)?;
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
            return Ok((StatusCode::OK, axum::Json(describe(existing, key))).into_response());
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
        };
        self.persist(tenant, &snapshot).await?;
        let subscription = Subscription {
            snapshot,
            wake: None,
            failed: false,
        };
        let described = describe(&subscription, key);
        registry.subscriptions.insert(id_key, subscription);
        Ok((StatusCode::CREATED, axum::Json(described)).into_response())
    }

    /// After an HTTP write to the stream at `path` (its tail `before` it
    /// and `after` it): links it to the subscriptions whose pattern matches
    /// it, and wakes those with pending work.
    pub(crate) async fn notify_write(self: &StdArc<Self>, key: &SessionKey, before: Offset) {
        let tenant = key.tenant().to_string();
        let path = key.session();
        let Ok(mut registry) = self.registry(&tenant).await else {
            return;
        };
        let ids: Vec<(String, String)> = registry
            .subscriptions
            .iter()
            .filter(|((owner, _), subscription)| {
                *owner == tenant
                    && (subscription.snapshot.links.contains_key(path)
                        || subscription
                            .snapshot
                            .config
                            .pattern
                            .as_deref()
                            .is_some_and(|pattern| glob::matches(pattern, path)))
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            let Some(subscription) = registry.subscriptions.get_mut(&id) else {
                continue;
            };
            if !subscription.snapshot.links.contains_key(path) {
                subscription.snapshot.links.insert(
                    path.to_string(),
                    Link {
                        explicit: false,
                        glob: true,
                        acked: before,
                    },
                );
                if self.persist(&tenant, &subscription.snapshot).await.is_err() {
                    continue;
                }
            }
            let _ = self.wake_if_pending(&tenant, subscription).await;
        }
    }

    /// The linked streams whose tail is past their acked offset.
    async fn pending(&self, tenant: &str, subscription: &Subscription) -> Vec<(String, Offset)> {
        let mut pending = Vec::new();
        for (path, link) in &subscription.snapshot.links {
            if let Some(tail) = self.tail_of(tenant, path).await {
                if tail > link.acked {
                    pending.push((path.clone(), tail));
                }
            }
        }
        pending
    }

    /// Starts a wake if the subscription is idle and has pending work.
    ///
    /// Boxed as `Send`: a webhook delivery may start the next wake, which
    /// spawns a delivery, and the recursion needs a named future type.
    fn wake_if_pending<'a>(
        self: &'a StdArc<Self>,
        tenant: &'a str,
        subscription: &'a mut Subscription,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), ApiError>> + Send + 'a>>
    {
        Box::pin(self.wake_if_pending_inner(tenant, subscription))
    }

    async fn wake_if_pending_inner(
        self: &StdArc<Self>,
        tenant: &str,
        subscription: &mut Subscription,
    ) -> Result<(), ApiError> {
        if let Some(wake) = &subscription.wake {
            let lease_over = wake
                .lease_until
                .is_some_and(|until| tokio::time::Instant::now() >= until);
            if !lease_over {
                return Ok(());
            }
            subscription.wake = None;
        }
        let pending = self.pending(tenant, subscription).await;
        if pending.is_empty() {
            return Ok(());
        }
        let wake = self.new_wake(tenant, subscription, pending).await?;
        match subscription.snapshot.config.kind {
            Kind::Webhook => {
                let service = StdArc::clone(self);
                let tenant = tenant.to_string();
                let id = subscription.snapshot.id.clone();
                tokio::spawn(async move { service.deliver(tenant, id, wake).await });
            }
            Kind::PullWake => {
                let Some(wake_stream) = subscription.snapshot.config.wake_stream.clone() else {
                    return Ok(());
                };
                let event = json!({
                    "subscription_id": subscription.snapshot.id,
                    "wake_id": wake.wake_id,
                    "generation": wake.generation,
                    "streams": wake.streams.iter().map(|(path, _)| path).collect::<Vec<_>>(),
                });
                let key = self.key(tenant, &wake_stream)?;
                let append = Append {
                    content_type: Some("application/json".into()),
                    body: Bytes::from(event.to_string()),
                    close: false,
                    stream_seq: None,
                    producer: None,
                };
                self.append(&key, append).await?;
            }
        }
        Ok(())
    }

    /// A new wake: the next generation (durable), a fresh id and token.
    async fn new_wake(
        &self,
        tenant: &str,
        subscription: &mut Subscription,
        streams: Vec<(String, Offset)>,
    ) -> Result<Wake, ApiError> {
        subscription.snapshot.generation += 1;
        self.persist(tenant, &subscription.snapshot).await?;
        let wake = Wake {
            wake_id: format!("w_{}", random_hex(12)?),
            generation: subscription.snapshot.generation,
            token: random_hex(32)?,
            holder: None,
            lease_until: None,
            streams,
        };
        subscription.wake = Some(wake.clone());
        Ok(wake)
    }

    /// Delivers a webhook wake, retrying with backoff while it is current;
    /// a `{"done": true}` answer acks its snapshot and releases it.
    async fn deliver(self: StdArc<Self>, tenant: String, id: String, wake: Wake) {
        let mut backoff = Duration::from_secs(1);
        loop {
            let Some((url, body)) = self.webhook_body(&tenant, &id, &wake).await else {
                return;
            };
            let Ok(key) = self.signing_key().await else {
                return;
            };
            let timestamp = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|since| since.as_secs())
                .unwrap_or(0);
            let signature = key.signature(timestamp, &body);
            let answer = webhook::post(&url, &signature, &body, DELIVERY_TIMEOUT).await;
            let Ok(mut registry) = self.registry(&tenant).await else {
                return;
            };
            let Some(subscription) = registry
                .subscriptions
                .get_mut(&(tenant.clone(), id.clone()))
            else {
                return;
            };
            if subscription.wake.as_ref().map(|current| &current.wake_id) != Some(&wake.wake_id) {
                return;
            }
            match answer {
                Ok(answer) if (200..300).contains(&answer.status) => {
                    subscription.failed = false;
                    let done = serde_json::from_slice::<Value>(&answer.body)
                        .ok()
                        .and_then(|value| value.get("done").and_then(Value::as_bool))
                        .unwrap_or(false);
                    if done {
                        for (path, tail) in &wake.streams {
                            if let Some(link) = subscription.snapshot.links.get_mut(path) {
                                link.acked = link.acked.max(*tail);
                            }
                        }
                        subscription.wake = None;
                        if self.persist(&tenant, &subscription.snapshot).await.is_ok() {
                            let _ = self.wake_if_pending(&tenant, subscription).await;
                        }
                        return;
                    }
                    // The worker calls back; the lease bounds how long.
                    let lease = Duration::from_millis(subscription.snapshot.config.lease_ttl_ms);
                    if let Some(current) = subscription.wake.as_mut() {
                        current.holder = Some("webhook".into());
                        current.lease_until = Some(tokio::time::Instant::now() + lease);
                    }
                    drop(registry);
                    tokio::time::sleep(lease).await;
                    self.expire_lease(&tenant, &id, &wake.wake_id).await;
                    return;
                }
                _ => {
                    subscription.failed = true;
                    drop(registry);
                    let jitter = backoff.mul_f64(0.2 * jitter_unit());
                    tokio::time::sleep(backoff + jitter).await;
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                }
            }
        }
    }

    /// The target and body of a webhook wake, if it is still current.
    async fn webhook_body(
        &self,
        tenant: &str,
        id: &str,
        wake: &Wake,
    ) -> Option<(WebhookUrl, Vec<u8>)> {
        let registry = self.registry(tenant).await.ok()?;
        let subscription = registry
            .subscriptions
            .get(&(tenant.to_string(), id.to_string()))?;
        if subscription.wake.as_ref()?.wake_id != wake.wake_id {
            return None;
        }
        let url = WebhookUrl::parse(subscription.snapshot.config.webhook_url.as_deref()?).ok()?;
        let base = &subscription.snapshot.base_url;
        let body = json!({
            "subscription_id": id,
            "wake_id": wake.wake_id,
            "generation": wake.generation,
            "streams": wake_streams(subscription, wake),
            "callback_url": format!("{base}/__ds/subscriptions/{id}/callback"),
            "callback_token": wake.token,
        });
        Some((url, body.to_string().into_bytes()))
    }

    /// Ends a wake whose lease ran out, and wakes again if work is pending.
    async fn expire_lease(self: &StdArc<Self>, tenant: &str, id: &str, wake_id: &str) {
        let Ok(mut registry) = self.registry(tenant).await else {
            return;
        };
        let Some(subscription) = registry
            .subscriptions
            .get_mut(&(tenant.to_string(), id.to_string()))
        else {
            return;
        };
        if subscription.wake.as_ref().map(|wake| wake.wake_id.as_str()) == Some(wake_id) {
            subscription.wake = None;
            let _ = self.wake_if_pending(tenant, subscription).await;
        }
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
            subscription.wake = None;
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
        let now = tokio::time::Instant::now();
        if let Some(wake) = &subscription.wake {
            if let (Some(holder), Some(until)) = (&wake.holder, wake.lease_until) {
                if now < until {
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
        if subscription.wake.is_none() {
            let pending = self.pending(tenant, subscription).await;
            if pending.is_empty() {
                return Ok(StatusCode::NO_CONTENT.into_response());
            }
            self.new_wake(tenant, subscription, pending).await?;
        }
        let lease = Duration::from_millis(subscription.snapshot.config.lease_ttl_ms);
        let Some(wake) = subscription.wake.as_mut() else {
            return Ok(StatusCode::NO_CONTENT.into_response());
        };
        wake.holder = Some(worker);
        wake.lease_until = Some(now + lease);
        let wake = wake.clone();
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

    /// Waits until `position` of a reserved session is durable.
    async fn wait_durable_for(&self, key: &SessionKey, position: u64) -> Result<(), StreamError> {
        let deadline = tokio::time::Instant::now() + self.options.durable_timeout;
        if self.durable_by(key, position, deadline).await? {
            Ok(())
        } else {
            Err(StreamError::Unavailable(
                "the subscription change is not durable yet (the log may be stalled): retry".into(),
            ))
        }
    }
}

/// A number in [0, 1) from the clock, for retry jitter (spread, not secret).
fn jitter_unit() -> f64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| since.subsec_nanos())
        .unwrap_or(0);
    f64::from(nanos % 1000) / 1000.0
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
    let wake = subscription.wake.as_ref().ok_or_else(ApiError::fenced)?;
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
fn wake_streams(subscription: &Subscription, wake: &Wake) -> Vec<Value> {
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
fn describe(subscription: &Subscription, key: &WebhookKey) -> Value {
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
                "jwks_url": format!("{}/__ds/jwks.json", snapshot.base_url),
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
        "status": if subscription.failed { "failed" } else { "active" },
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
fn parse_config(body: &Value) -> Result<Config, ApiError> {
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
            WebhookUrl::parse(url).map_err(|reason| {
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
