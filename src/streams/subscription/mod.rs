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
//! * **Safe targets only.** Webhook URLs are checked at creation and again
//!   at each delivery (module `webhook`: `https://` to public addresses,
//!   checked after resolution, and verified TLS; hosts the operator allows;
//!   `http://` for localhost in development); deliveries are signed (module
//!   `signing`), bounded in time, retried with backoff (1 s doubling to
//!   60 s, 20 % jitter) while the wake is current, and a failed one leaves
//!   its reason in the subscription (`last_error`).
//!
//! This file holds the registry (its persistence, the signing key);
//! beside it, `api` the HTTP surface, `wake` the wake lifecycle and
//! deliveries, `webhook` targets and the HTTP client, `signing` the key,
//! `glob` the patterns.
//!
//! Streams are linked when a subscription is created (explicit paths, and
//! glob matches among the streams this process knows, at their tail) and
//! when an HTTP write to a matching stream lands (at the offset before it).
//! Appends by the in-process writer do not wake subscriptions.

mod api;
mod glob;
mod signing;
mod wake;
mod webhook;

pub use self::webhook::{is_public, WebhookOptions};

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use crate::cursor::{Cursor, Revision};
use crate::key::SessionKey;
use crate::TryNextError;

use super::error::StreamError;
use super::offset::Offset;
use super::record::StreamRecord;
use super::DurableStreams;

use self::api::ApiError;
use self::signing::WebhookKey;
use self::webhook::WebhookClient;

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
    /// Built from the service's options on the first delivery.
    pub(crate) client: std::sync::OnceLock<WebhookClient>,
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
    /// Why the last delivery failed, until one succeeds.
    failed: Option<String>,
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

/// Compares tokens in time independent of where they differ (`subtle`).
fn same_token(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

impl DurableStreams {
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
                        failed: None,
                    },
                );
            }
            registry.loaded.insert(tenant.to_string());
        }
        Ok(registry)
    }

    /// The tenant of subscription `id` whose current wake has `token`
    /// (wakes live in memory, so every subscription with one is in the
    /// registry already; a linear scan, as wake-token calls are rare).
    pub(crate) async fn tenant_of_wake(&self, id: &str, token: &str) -> Option<String> {
        let registry = self.subscriptions.registry.lock().await;
        registry
            .subscriptions
            .iter()
            .find(|((_, subscription_id), subscription)| {
                subscription_id == id
                    && subscription
                        .wake
                        .as_ref()
                        .is_some_and(|wake| same_token(token, &wake.token))
            })
            .map(|((tenant, _), _)| tenant.clone())
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
                Err(TryNextError::Empty | TryNextError::Ended | TryNextError::Closed(_)) => {
                    return Ok(out)
                }
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
    /// The client webhook deliveries share (built on first use).
    fn webhook_client(&self) -> &WebhookClient {
        self.subscriptions
            .client
            .get_or_init(|| WebhookClient::new(&self.options.webhooks))
    }

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
