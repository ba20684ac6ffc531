//! The reserved subscription APIs under `__ds` (protocol sections 6 and
//! 7): durable cursors over sets of streams that wake workers, by signed
//! webhook or by an event in a wake stream (pull-wake).
//!
//! Owns the subscriptions of every tenant and their wakes. Invariants:
//!
//! * **Durable configuration, cursors and wakes.** A subscription's
//!   configuration, stream links, acknowledged offsets, wake generation
//!   and current wake (its id, token, lease holder and end, the next
//!   webhook attempt) are a JSON snapshot appended to a reserved session
//!   of its tenant (`__ds/subscriptions`) on every change, durable before
//!   anyone hears of the change; the webhook signing key lives likewise in
//!   `__ds/signing-key` and the tenants that have subscriptions in
//!   `__ds/subscription-tenants` (so tokens and keys are as secret as the
//!   log file). After a restart, [`DurableStreams::resume_subscriptions`]
//!   folds every tenant back and carries each wake on: a lease keeps its
//!   holder and token until it runs out, a webhook is retried on its
//!   schedule, pending work with no wake is woken. (On several nodes wakes
//!   stay per node and are not resumed.)
//! * **History stays proportional to the subscriptions.** Every change
//!   appends a whole snapshot, so the last snapshot of each subscription
//!   says everything: once a tenant's session holds enough superseded
//!   ones, [`DurableStreams::compact_subscriptions`] appends the live
//!   snapshots again and archives everything before them.
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
use std::sync::Arc as StdArc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use crate::cursor::{Cursor, Revision};
use crate::error::GapReason;
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
/// The reserved session naming every tenant that has had a subscription
/// (empty tenant), one record each: what a restart loads.
const TENANTS: &str = "__ds/subscription-tenants";
/// Superseded records in a tenant's subscriptions session that make it due
/// for compaction.
const COMPACT_AFTER: u64 = 256;
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
    /// Set by the first `resume_subscriptions`: a second one would deliver
    /// every resumed wake twice.
    resumed: std::sync::atomic::AtomicBool,
    /// Superseded records in each tenant's subscriptions session: counted
    /// at load and by every append since (taken after the registry's
    /// mutex, never before it).
    superseded: std::sync::Mutex<HashMap<String, u64>>,
}

#[derive(Default)]
struct Registry {
    /// Tenants whose snapshots were folded in.
    loaded: HashSet<String>,
    /// The tenants `TENANTS` names, once read.
    indexed: Option<HashSet<String>>,
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
    /// The wake in flight or leased, if any: durable with the rest, so a
    /// restarted server keeps its lease, its token and its retry schedule
    /// (absent from snapshots written before wakes were durable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    wake: Option<Wake>,
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
    /// Why the last delivery failed, until one succeeds.
    failed: Option<String>,
}

/// A wake, as its subscription's snapshot records it. Times are Unix
/// milliseconds: they outlive the process.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Wake {
    wake_id: String,
    generation: u64,
    /// The bearer token of its callback, ack and release (as secret as the
    /// log file, like the signing key).
    token: String,
    /// The worker holding the lease (pull-wake), or the webhook.
    holder: Option<String>,
    lease_until_ms: Option<u64>,
    /// When a failed webhook delivery is tried again.
    #[serde(default)]
    next_attempt_ms: Option<u64>,
    /// The linked streams and their tails when the wake was made.
    streams: Vec<(String, Offset)>,
}

impl Wake {
    /// Whether a lease is held at `now_ms`.
    fn leased_at(&self, now_ms: u64) -> bool {
        self.lease_until_ms.is_some_and(|until| now_ms < until)
    }

    /// Whether a lease was taken and has run out by `now_ms`.
    fn lease_over_at(&self, now_ms: u64) -> bool {
        self.lease_until_ms.is_some_and(|until| now_ms >= until)
    }
}

/// Now, in Unix milliseconds.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

/// How long from now until `at_ms` (zero once past).
fn until_ms(at_ms: u64) -> Duration {
    Duration::from_millis(at_ms.saturating_sub(now_ms()))
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

/// The URL of `/v1/stream` that callbacks and the key set are named
/// under: the configured public URL, else the one recorded from the
/// request that created the subscription.
fn base_url(public_url: Option<&str>, snapshot: &Snapshot) -> String {
    match public_url {
        Some(url) => format!("{}/v1/stream", url.trim_end_matches('/')),
        None => snapshot.base_url.clone(),
    }
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
        self.load_tenant(&mut registry, tenant)?;
        Ok(registry)
    }

    /// Folds `tenant`'s snapshots into the registry, once.
    fn load_tenant(&self, registry: &mut Registry, tenant: &str) -> Result<(), ApiError> {
        if registry.loaded.contains(tenant) {
            return Ok(());
        }
        let key = self.key(tenant, REGISTRY)?;
        let mut folded: BTreeMap<String, Snapshot> = BTreeMap::new();
        let records = self.reserved_records(&key)?;
        let read = records.len() as u64;
        for record in records {
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
                    failed: None,
                },
            );
        }
        let live = registry
            .subscriptions
            .keys()
            .filter(|(owner, _)| owner == tenant)
            .count() as u64;
        self.superseded()
            .insert(tenant.to_string(), read.saturating_sub(live));
        registry.loaded.insert(tenant.to_string());
        Ok(())
    }

    /// The tenants that have had subscriptions (read once from `TENANTS`).
    fn indexed<'r>(&self, registry: &'r mut Registry) -> Result<&'r mut HashSet<String>, ApiError> {
        if registry.indexed.is_none() {
            let key = self.key("", TENANTS)?;
            let tenants = self
                .reserved_records(&key)?
                .into_iter()
                .filter_map(|tenant| String::from_utf8(tenant).ok())
                .collect();
            registry.indexed = Some(tenants);
        }
        Ok(registry.indexed.get_or_insert_with(HashSet::new))
    }

    /// Records `tenant` in `TENANTS` (durably) if it is not there yet.
    async fn index_tenant(&self, registry: &mut Registry, tenant: &str) -> Result<(), ApiError> {
        if self.indexed(registry)?.contains(tenant) {
            return Ok(());
        }
        let key = self.key("", TENANTS)?;
        let event = self
            .store
            .append(
                &key,
                Revision(0),
                StreamRecord::data(tenant.as_bytes().to_vec()),
            )
            .map_err(StreamError::from)?;
        self.wait_durable_for(&key, event.position()).await?;
        self.indexed(registry)?.insert(tenant.to_string());
        Ok(())
    }

    /// The registry with every indexed tenant's subscriptions folded in.
    async fn registry_of_all(&self) -> Result<tokio::sync::MutexGuard<'_, Registry>, ApiError> {
        let mut registry = self.subscriptions.registry.lock().await;
        let tenants: Vec<String> = self.indexed(&mut registry)?.iter().cloned().collect();
        for tenant in tenants {
            self.load_tenant(&mut registry, &tenant)?;
        }
        Ok(registry)
    }

    /// Carries every subscription's wake on from where the last process
    /// left it, after a restart: a webhook wake in flight is delivered
    /// (at the time its retry schedule gave), a lease keeps its holder and
    /// token and ends when it would have, an unclaimed pull-wake wake
    /// waits for its claim (its event is in the wake stream), and a subscription
    /// with no wake but pending work is woken now. Without it, those wait
    /// for the next write to one of their streams. Returns how many
    /// subscriptions there are.
    ///
    /// `livereplay serve` calls it at start; a host mounting
    /// [`router`](Self::router) should too. Only the first call that
    /// reads the subscriptions does anything (later ones return 0; one
    /// whose read failed may be retried), and on several nodes it does
    /// nothing: wakes are per node there.
    pub async fn resume_subscriptions(self: &StdArc<Self>) -> Result<usize, StreamError> {
        #[cfg(feature = "redis")]
        if self.shared.is_some() {
            return Ok(0);
        }
        // Relaxed: a flag that orders nothing else (the registry's mutex
        // orders the subscriptions).
        if self
            .subscriptions
            .resumed
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            return Ok(0);
        }
        let mut registry = match self.registry_of_all().await {
            Ok(registry) => registry,
            Err(error) => {
                // Nothing was resumed: a later call may try again.
                self.subscriptions
                    .resumed
                    .store(false, std::sync::atomic::Ordering::Relaxed);
                return Err(StreamError::Unavailable(error.to_string()));
            }
        };
        let ids: Vec<(String, String)> = registry.subscriptions.keys().cloned().collect();
        for (tenant, id) in &ids {
            let Some(subscription) = registry
                .subscriptions
                .get_mut(&(tenant.clone(), id.clone()))
            else {
                continue;
            };
            let webhook = subscription.snapshot.config.kind == Kind::Webhook;
            match subscription.snapshot.wake.clone() {
                Some(wake) => match (wake.lease_until_ms, webhook) {
                    (Some(until), _) => {
                        self.expire_lease_at(tenant.clone(), id.clone(), wake.wake_id, until);
                    }
                    (None, true) => {
                        let (service, tenant, id) =
                            (StdArc::downgrade(self), tenant.clone(), id.clone());
                        let at = wake.next_attempt_ms.unwrap_or(0);
                        tokio::spawn(async move {
                            tokio::time::sleep(until_ms(at)).await;
                            Self::deliver(service, tenant, id, wake).await;
                        });
                    }
                    // Pull-wake, unclaimed: its event is in the wake stream.
                    (None, false) => {}
                },
                None => {
                    let _ = self.wake_if_pending(tenant, subscription).await;
                }
            }
        }
        Ok(ids.len())
    }

    /// The tenant of subscription `id` whose current wake has `token`
    /// (a linear scan over every tenant's subscriptions, as wake-token
    /// calls are rare).
    pub(crate) async fn tenant_of_wake(&self, id: &str, token: &str) -> Option<String> {
        let registry = self.registry_of_all().await.ok()?;
        registry
            .subscriptions
            .iter()
            .find(|((_, subscription_id), subscription)| {
                subscription_id == id
                    && subscription
                        .snapshot
                        .wake
                        .as_ref()
                        .is_some_and(|wake| same_token(token, &wake.token))
            })
            .map(|((tenant, _), _)| tenant.clone())
    }

    /// The messages of a reserved session's data records, in order.
    /// (A prefix that compaction archived is skipped: the records after it
    /// say everything it said.)
    fn reserved_records(&self, key: &SessionKey) -> Result<Vec<Vec<u8>>, StreamError> {
        let mut records = self
            .store
            .catch_up(&Cursor::new(key.clone(), None, Revision(0), 0))?;
        let mut out = Vec::new();
        let mut skipped_archive = false;
        loop {
            match records.try_next() {
                Ok(event) => out.extend(event.payload().messages().iter().cloned()),
                Err(TryNextError::Empty | TryNextError::Ended | TryNextError::Closed(_)) => {
                    return Ok(out)
                }
                Err(TryNextError::Gap(gap))
                    if gap.reason == GapReason::Trimmed && out.is_empty() && !skipped_archive =>
                {
                    skipped_archive = true;
                    let after = gap.requested.position() + gap.missed.unwrap_or(0);
                    records =
                        self.store
                            .catch_up(&Cursor::new(key.clone(), None, Revision(0), after))?;
                }
                Err(TryNextError::Gap(gap)) => {
                    return Err(StreamError::Unavailable(format!(
                        "a reserved session cannot be read ({gap})"
                    )))
                }
            }
        }
    }

    /// Rewrites the subscriptions' sessions of tenants whose history has
    /// outgrown them: every change appends a whole snapshot, so after
    /// 256 superseded records the live snapshots are
    /// appended once more and everything before them is archived in the
    /// log (restart reads, and the log's size, stay proportional to the
    /// subscriptions, not to their history). `livereplay serve` calls it
    /// with its expiry sweep. Returns how many records were archived. On
    /// several nodes it does nothing: another node's newer snapshot could
    /// land before this one's rewrite and be shadowed by it.
    pub async fn compact_subscriptions(&self) -> Result<u64, StreamError> {
        #[cfg(feature = "redis")]
        if self.shared.is_some() {
            return Ok(0);
        }
        let registry = self.subscriptions.registry.lock().await;
        let due: Vec<String> = self
            .superseded()
            .iter()
            .filter(|(_, &appended)| appended >= COMPACT_AFTER)
            .map(|(tenant, _)| tenant.clone())
            .collect();
        let mut archived = 0;
        for tenant in due {
            let key = self.key(&tenant, REGISTRY)?;
            // Every live snapshot or none: a compaction that dropped one
            // would archive the only record of a subscription.
            let Ok(snapshots) = registry
                .subscriptions
                .iter()
                .filter(|((owner, _), _)| *owner == tenant)
                .map(|(_, subscription)| serde_json::to_vec(&subscription.snapshot))
                .collect::<Result<Vec<Vec<u8>>, _>>()
            else {
                continue;
            };
            // The tail before the rewrite: every record at or below it is
            // superseded once the rewrite is durable.
            let superseded = self.store.current_cursor(&key).position();
            let mut last = None;
            for snapshot in snapshots {
                let event = self
                    .store
                    .append(&key, Revision(0), StreamRecord::data(snapshot))
                    .map_err(StreamError::from)?;
                last = Some(event.position());
            }
            if let Some(last) = last {
                self.wait_durable_for(&key, last).await?;
            }
            archived += self.store.archive_before(&key, superseded)?;
            self.superseded().insert(tenant, 0);
        }
        Ok(archived)
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
        // Each snapshot supersedes one (the first of a subscription, a
        // deletion's, supersede none or all: close enough to pace
        // compaction).
        *self.superseded().entry(tenant.to_string()).or_insert(0) += 1;
        self.wait_durable_for(&key, event.position()).await?;
        Ok(())
    }

    /// The superseded-record counts (module docs of `compact_subscriptions`).
    fn superseded(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.subscriptions
            .superseded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The client webhook deliveries share (built on first use).
    fn webhook_client(&self) -> &WebhookClient {
        self.subscriptions
            .client
            .get_or_init(|| WebhookClient::new(&self.options.webhooks))
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
