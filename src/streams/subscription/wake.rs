//! Wakes: linking streams as HTTP writes land, deciding when a
//! subscription has pending work, and waking it, by a signed webhook
//! delivery (retried with backoff) or by an event in its wake stream.
//!
//! Owns the wake lifecycle. Invariants: at most one wake per subscription
//! (a new one only when none is in flight and no lease is held, or the
//! lease ran out); every wake gets the next durable generation; a delivery
//! acts only while its wake is still the current one.

use std::sync::{Arc as StdArc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use serde_json::{json, Value};

use crate::key::SessionKey;

use super::super::offset::Offset;
use super::super::write::Append;
use super::super::DurableStreams;
use super::api::{wake_streams, ApiError};
use super::webhook::{self, WebhookUrl};
use super::{
    base_url, glob, now_ms, random_hex, until_ms, Kind, Link, Subscription, Wake, DELIVERY_TIMEOUT,
};

impl DurableStreams {
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
    pub(super) async fn pending(
        &self,
        tenant: &str,
        subscription: &Subscription,
    ) -> Vec<(String, Offset)> {
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
    pub(super) fn wake_if_pending<'a>(
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
        if let Some(wake) = &subscription.snapshot.wake {
            if !wake.lease_over_at(now_ms()) {
                return Ok(());
            }
            subscription.snapshot.wake = None;
        }
        let pending = self.pending(tenant, subscription).await;
        if pending.is_empty() {
            return Ok(());
        }
        let wake = self.new_wake(tenant, subscription, pending).await?;
        match subscription.snapshot.config.kind {
            Kind::Webhook => {
                let service = StdArc::downgrade(self);
                let tenant = tenant.to_string();
                let id = subscription.snapshot.id.clone();
                tokio::spawn(Self::deliver(service, tenant, id, wake));
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

    /// A new wake: the next generation, a fresh id and token, durable in
    /// the snapshot before anyone hears of it.
    pub(super) async fn new_wake(
        &self,
        tenant: &str,
        subscription: &mut Subscription,
        streams: Vec<(String, Offset)>,
    ) -> Result<Wake, ApiError> {
        let wake = Wake {
            wake_id: format!("w_{}", random_hex(12)?),
            generation: subscription.snapshot.generation + 1,
            token: random_hex(32)?,
            holder: None,
            lease_until_ms: None,
            next_attempt_ms: None,
            streams,
        };
        // Generations only rise, also past a wake whose persist failed.
        subscription.snapshot.generation = wake.generation;
        subscription.snapshot.wake = Some(wake.clone());
        if let Err(error) = self.persist(tenant, &subscription.snapshot).await {
            subscription.snapshot.wake = None;
            return Err(error);
        }
        Ok(wake)
    }

    /// Delivers a webhook wake, retrying with backoff while it is current;
    /// a `{"done": true}` answer acks its snapshot and releases it. Holds
    /// the service weakly between attempts: retries to a receiver that
    /// never answers do not keep a dropped service alive.
    pub(super) async fn deliver(service: Weak<Self>, tenant: String, id: String, wake: Wake) {
        let mut backoff = Duration::from_secs(1);
        loop {
            let Some(this) = service.upgrade() else {
                return;
            };
            let Some(next) = this.attempt(&tenant, &id, &wake, backoff).await else {
                return;
            };
            drop(this);
            tokio::time::sleep(until_ms(next)).await;
            backoff = (backoff * 2).min(Duration::from_secs(60));
        }
    }

    /// One delivery of `wake`; the time of the next one (Unix ms) if it
    /// failed and the wake is still current.
    async fn attempt(
        self: &StdArc<Self>,
        tenant: &str,
        id: &str,
        wake: &Wake,
        backoff: Duration,
    ) -> Option<u64> {
        let (url, body) = self.webhook_body(tenant, id, wake).await?;
        let key = self.signing_key().await.ok()?;
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|since| since.as_secs())
            .unwrap_or(0);
        let signature = key.signature(timestamp, &body);
        let answer = webhook::post(
            self.webhook_client(),
            &url,
            &signature,
            &body,
            DELIVERY_TIMEOUT,
        )
        .await;
        let mut registry = self.registry(tenant).await.ok()?;
        let subscription = registry
            .subscriptions
            .get_mut(&(tenant.to_string(), id.to_string()))?;
        if subscription
            .snapshot
            .wake
            .as_ref()
            .map(|current| &current.wake_id)
            != Some(&wake.wake_id)
        {
            return None;
        }
        match answer {
            Ok(answer) if (200..300).contains(&answer.status) => {
                subscription.failed = None;
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
                    subscription.snapshot.wake = None;
                    if self.persist(tenant, &subscription.snapshot).await.is_ok() {
                        let _ = self.wake_if_pending(tenant, subscription).await;
                    }
                    return None;
                }
                // The worker calls back; the lease bounds how long.
                let until = now_ms().saturating_add(subscription.snapshot.config.lease_ttl_ms);
                if let Some(current) = subscription.snapshot.wake.as_mut() {
                    current.holder = Some("webhook".into());
                    current.lease_until_ms = Some(until);
                    current.next_attempt_ms = None;
                }
                let _ = self.persist(tenant, &subscription.snapshot).await;
                drop(registry);
                let (tenant, id) = (tenant.to_string(), id.to_string());
                self.expire_lease_at(tenant, id, wake.wake_id.clone(), until);
                None
            }
            failed => {
                subscription.failed = Some(match failed {
                    Ok(answer) => format!("the webhook answered {}", answer.status),
                    Err(reason) => reason,
                });
                // The next attempt's time is durable (protocol 7.1), so
                // a restarted server keeps the schedule.
                let pause = backoff + backoff.mul_f64(0.2 * jitter_unit());
                let next =
                    now_ms().saturating_add(u64::try_from(pause.as_millis()).unwrap_or(u64::MAX));
                if let Some(current) = subscription.snapshot.wake.as_mut() {
                    current.next_attempt_ms = Some(next);
                }
                let _ = self.persist(tenant, &subscription.snapshot).await;
                Some(next)
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
        if subscription.snapshot.wake.as_ref()?.wake_id != wake.wake_id {
            return None;
        }
        let url = WebhookUrl::parse(
            subscription.snapshot.config.webhook_url.as_deref()?,
            &self.options.webhooks,
        )
        .ok()?;
        let base = base_url(self.options.public_url.as_deref(), &subscription.snapshot);
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

    /// Ends wake `wake_id`'s lease at `until` (Unix ms), unless the wake
    /// ended first. The timer holds the service weakly: a lease does not
    /// keep a dropped service (and its store and log) alive.
    pub(super) fn expire_lease_at(
        self: &StdArc<Self>,
        tenant: String,
        id: String,
        wake_id: String,
        until: u64,
    ) {
        let service = StdArc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(until_ms(until)).await;
            if let Some(service) = service.upgrade() {
                service.expire_lease(&tenant, &id, &wake_id).await;
            }
        });
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
        let Some(wake) = subscription
            .snapshot
            .wake
            .as_ref()
            .filter(|wake| wake.wake_id == wake_id)
        else {
            return;
        };
        match wake.lease_until_ms {
            // Extended since this timer was set (an ack or callback that
            // was not done): it runs to the new end.
            Some(until) if !wake.lease_over_at(now_ms()) => {
                self.expire_lease_at(
                    tenant.to_string(),
                    id.to_string(),
                    wake_id.to_string(),
                    until,
                );
            }
            _ => {
                // Protocol 7.3: the holder and the token go; pending work
                // gets another wake.
                subscription.snapshot.wake = None;
                // A new wake persists the snapshot itself; with nothing
                // pending, this write keeps a restart from bringing the
                // lease back.
                let _ = self.persist(tenant, &subscription.snapshot).await;
                let _ = self.wake_if_pending(tenant, subscription).await;
            }
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
