//! [`LogWatch`](crate::durable::LogWatch) for the Postgres log: `LISTEN` /
//! `NOTIFY`, so a host node's catch-ups wake when any node commits.
//!
//! Every append's transaction runs `pg_notify('<schema>_appended',
//! '<session id> <durable tail>')` once per session it changed; Postgres
//! delivers it to every listening connection when (and only if) the
//! transaction commits. A waiting thread takes a listening connection of
//! its own ([`Listener`]: the log's main connection is never held while
//! waiting, so the persister's commits go on).
//!
//! # Invariants
//!
//! * **No lost wake-up.** A wait `LISTEN`s first and reads the sessions'
//!   tails second, so a commit is either in what it read or notifies it
//!   afterwards.
//! * **Bounded.** A wait blocks on notifications only, at most the
//!   caller's timeout, and looks at the rows again at least every
//!   [`PostgresOptions::watch_safety_timeout`](super::PostgresOptions)
//!   (a safety net, not a polling loop: no notification can be lost on a
//!   healthy connection).
//! * A connection goes back to the idle list `UNLISTEN`ed, so an idle one
//!   never holds up the server's notification queue; at most
//!   [`MAX_IDLE_LISTENERS`] are kept. A broken one is dropped; a wait that
//!   fails at once on an idle connection (the server restarted) tries once
//!   more on a fresh one.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ::postgres::fallible_iterator::FallibleIterator;
use ::postgres::{Client, NoTls, Statement};

use super::schema::channel;
use super::{backend, position_from_sql, PostgresLog};
use crate::durable::LogError;
use crate::key::SessionKey;

/// Idle listening connections kept for later waits.
const MAX_IDLE_LISTENERS: usize = 8;

/// A connection for waiting, and its one statement.
pub(super) struct Listener {
    client: Client,
    /// `(tenants[], sessions[])` → `(tenant, session, id, tail)`.
    read_tails: Statement,
}

impl Listener {
    fn connect(log: &PostgresLog) -> Result<Self, LogError> {
        let mut client = log.config.connect(NoTls).map_err(backend)?;
        let read_tails = client
            .prepare(&format!(
                "SELECT tenant, session, id, durable_tail FROM \"{}\".sessions
                 WHERE (tenant, session) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
                log.options.schema
            ))
            .map_err(backend)?;
        Ok(Self { client, read_tails })
    }
}

/// [`LogWatch::wait_any`](crate::durable::LogWatch::wait_any) for `log`.
pub(super) fn wait_any(
    log: &PostgresLog,
    interest: &[(SessionKey, u64)],
    timeout: Duration,
) -> Result<Vec<usize>, LogError> {
    if interest.is_empty() {
        return Ok(Vec::new());
    }
    super::off_runtime(|| wait_any_here(log, interest, timeout))
}

/// [`wait_any`] on this thread.
fn wait_any_here(
    log: &PostgresLog,
    interest: &[(SessionKey, u64)],
    timeout: Duration,
) -> Result<Vec<usize>, LogError> {
    let idle = super::unpoison(log.listeners.lock()).pop();
    let reused = idle.is_some();
    let mut listener = match idle {
        Some(listener) => listener,
        None => Listener::connect(log)?,
    };
    let deadline = Instant::now().checked_add(timeout);
    let mut result = wait_on(log, &mut listener, interest, deadline);
    if result.is_err() && reused && listener.client.is_closed() {
        listener = Listener::connect(log)?;
        result = wait_on(log, &mut listener, interest, deadline);
    }
    if !listener.client.is_closed() && listener.client.batch_execute("UNLISTEN *").is_ok() {
        let mut idle = super::unpoison(log.listeners.lock());
        if idle.len() < MAX_IDLE_LISTENERS {
            idle.push(listener);
        }
    }
    result
}

fn wait_on(
    log: &PostgresLog,
    listener: &mut Listener,
    interest: &[(SessionKey, u64)],
    deadline: Option<Instant>,
) -> Result<Vec<usize>, LogError> {
    listener
        .client
        .batch_execute(&format!("LISTEN \"{}\"", channel(&log.options.schema)))
        .map_err(backend)?;
    let tenants: Vec<&str> = interest.iter().map(|(k, _)| k.tenant()).collect();
    let names: Vec<&str> = interest.iter().map(|(k, _)| k.session()).collect();
    let safety = log
        .options
        .watch_safety_timeout
        .max(Duration::from_millis(10));
    loop {
        // Notifications from before this look say nothing it will not see.
        drain(listener)?;
        let rows = listener
            .client
            .query(&listener.read_tails, &[&tenants, &names])
            .map_err(backend)?;
        // Row id → the interests of that session.
        let mut by_id: HashMap<i64, Vec<usize>> = HashMap::new();
        let mut ready = Vec::new();
        for row in &rows {
            let tenant: &str = row.try_get(0).map_err(backend)?;
            let session: &str = row.try_get(1).map_err(backend)?;
            let id: i64 = row.try_get(2).map_err(backend)?;
            let tail: i64 = row.try_get(3).map_err(backend)?;
            for (i, (key, after)) in interest.iter().enumerate() {
                if key.tenant() == tenant && key.session() == session {
                    let tail = position_from_sql(tail, "durable tail", key)?;
                    if tail > *after {
                        ready.push(i);
                    }
                    by_id.entry(id).or_default().push(i);
                }
            }
        }
        if !ready.is_empty() {
            return Ok(ready);
        }
        let all_known = by_id.values().map(Vec::len).sum::<usize>() == interest.len();
        let now = Instant::now();
        let remaining = deadline.map_or(safety, |d| d.saturating_duration_since(now));
        if remaining.is_zero() {
            return Ok(Vec::new());
        }
        // Wait for a notification that answers, or one for a session this
        // wait does not know by id yet (it may be one of its new sessions:
        // look again), or the safety timeout.
        let mut notifications = listener.client.notifications();
        let mut waiting = notifications.timeout_iter(remaining.min(safety));
        while let Some(notification) = waiting.next().map_err(backend)? {
            let Some((id, tail)) = parse(notification.payload()) else {
                continue;
            };
            match by_id.get(&id) {
                Some(indices) => {
                    ready.extend(indices.iter().copied().filter(|&i| tail > interest[i].1))
                }
                None if !all_known => break,
                None => {}
            }
            if !ready.is_empty() {
                ready.sort_unstable();
                ready.dedup();
                return Ok(ready);
            }
        }
    }
}

/// Discards the notifications already received.
fn drain(listener: &mut Listener) -> Result<(), LogError> {
    let mut notifications = listener.client.notifications();
    let mut pending = notifications.iter();
    while pending.next().map_err(backend)?.is_some() {}
    Ok(())
}

/// `<session id> <durable tail>`, as the append's `pg_notify` sends it.
fn parse(payload: &str) -> Option<(i64, u64)> {
    let (id, tail) = payload.split_once(' ')?;
    Some((id.parse().ok()?, tail.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn payloads_parse_or_are_ignored() {
        assert_eq!(parse("12 345"), Some((12, 345)));
        assert_eq!(parse("12"), None);
        assert_eq!(parse("x 1"), None);
        assert_eq!(parse("1 -1"), None);
    }
}
