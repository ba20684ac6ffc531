//! [`LogWatch`] on Redis: waiting for a session's log to pass a position,
//! written by this node or any other.
//!
//! # Invariants
//!
//! * A wait never holds the shared connection: it blocks (`XREAD BLOCK`) on
//!   an idle connection of its own, kept for reuse (at most
//!   [`MAX_IDLE_WAITERS`]) only when it is left in a known state.
//! * A position already there answers at once (the metas are read before
//!   blocking), so a wait cannot miss a write made just before it.

use std::sync::PoisonError;
use std::time::Duration;

use ::redis::{Cmd, Connection, Value};

use super::conn::{
    backend, bulk, cmd, is_timeout, nonzero, one, round_trip, server_error, unexpected,
};
use super::encode::decode_meta;
use super::keys::SessionKeys;
use super::RedisLog;
use crate::durable::{LogError, LogWatch};
use crate::key::SessionKey;

/// Idle connections kept for [`RedisLog::wait_after`].
pub(super) const MAX_IDLE_WAITERS: usize = 8;

impl RedisLog {
    /// Waits until the log records a position after `after` in `key`'s
    /// session, at most `timeout`: `Ok(true)` as soon as one is there
    /// (at once if it already is), `Ok(false)` at the timeout. One key of
    /// [`LogWatch::wait_any`].
    pub fn wait_after(
        &self,
        key: &SessionKey,
        after: u64,
        timeout: Duration,
    ) -> Result<bool, LogError> {
        Ok(!self.wait_any(&[(key.clone(), after)], timeout)?.is_empty())
    }

    /// [`LogWatch::wait_any`]: one pipelined `GET` of every session's meta
    /// (a tail already past `after`, a hole that starts before it included,
    /// answers at once), then one `XREAD BLOCK` over all their streams from
    /// `<after>-0`, on a connection of its own (so it never holds up the
    /// persister's writes). A record written from any node wakes it.
    fn wait_on_streams(
        &self,
        interest: &[(SessionKey, u64)],
        timeout: Duration,
    ) -> Result<Vec<usize>, LogError> {
        if interest.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<SessionKeys> = interest
            .iter()
            .map(|(key, _)| SessionKeys::new(&self.options.prefix, key))
            .collect();
        let idle = self
            .waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let reused = idle.is_some();
        let mut slot = match idle {
            Some(con) => Some(con),
            None => Some(self.connect()?),
        };
        let millis = u64::try_from(timeout.as_millis())
            .unwrap_or(u64::MAX)
            .min(i64::MAX as u64);
        // The block plus the usual allowance for the reply.
        let read_timeout = nonzero(timeout.saturating_add(self.options.io_timeout));
        let gets: Vec<Cmd> = keys
            .iter()
            .map(|keys| cmd("GET").arg(&keys.meta).clone())
            .collect();
        let prepare = |con: &Connection| con.set_read_timeout(read_timeout).map_err(backend);
        if let Some(con) = slot.as_ref() {
            prepare(con)?;
        }
        let mut replies = round_trip(&mut slot, &gets);
        if reused && slot.is_none() && replies.as_ref().is_err_and(|e| !is_timeout(e)) {
            // An idle connection that failed at once is stale (the server
            // restarted): once more on a fresh one.
            let con = self.connect()?;
            prepare(&con)?;
            slot = Some(con);
            replies = round_trip(&mut slot, &gets);
        }
        let mut ready = Vec::new();
        for (index, reply) in replies?.into_iter().enumerate() {
            let Some((key, after)) = interest.get(index) else {
                break;
            };
            if decode_meta(key, reply)?.is_some_and(|(_, meta, _)| meta.durable_tail > *after) {
                ready.push(index);
            }
        }
        if ready.is_empty() {
            let mut xread = cmd("XREAD");
            xread.arg("COUNT").arg(1);
            // BLOCK 0 would wait for ever: a zero timeout only looks.
            if millis > 0 {
                xread.arg("BLOCK").arg(millis);
            }
            xread.arg("STREAMS");
            for keys in &keys {
                xread.arg(&keys.log);
            }
            for (_, after) in interest {
                xread.arg(format!("{after}-0"));
            }
            let streams: Vec<Value> = match one(round_trip(&mut slot, &[xread])?, "XREAD")? {
                Value::Nil => Vec::new(),
                Value::Array(streams) => streams
                    .into_iter()
                    .filter_map(|stream| match stream {
                        Value::Array(mut parts) if !parts.is_empty() => Some(parts.swap_remove(0)),
                        _ => None,
                    })
                    .collect(),
                Value::Map(streams) => streams.into_iter().map(|(name, _)| name).collect(),
                Value::ServerError(e) => return Err(server_error(e)),
                other => return Err(unexpected("XREAD", &other)),
            };
            for name in streams {
                let name = bulk(name, "XREAD")?.unwrap_or_default();
                if let Some(index) = keys.iter().position(|keys| keys.log.as_bytes() == name) {
                    ready.push(index);
                }
            }
        }
        if let Some(con) = slot {
            if con
                .set_read_timeout(nonzero(self.options.io_timeout))
                .is_ok()
            {
                let mut idle = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
                if idle.len() < MAX_IDLE_WAITERS {
                    idle.push(con);
                }
            }
        }
        Ok(ready)
    }
}

impl LogWatch for RedisLog {
    fn wait_any(
        &self,
        interest: &[(SessionKey, u64)],
        timeout: Duration,
    ) -> Result<Vec<usize>, LogError> {
        self.wait_on_streams(interest, timeout)
    }
}
