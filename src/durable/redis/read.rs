//! The reads: [`DurableLog::load_after`](crate::durable::DurableLog::load_after), [`DurableLog::meta`](crate::durable::DurableLog::meta) and
//! [`DurableLog::sessions`](crate::durable::DurableLog::sessions), each one round trip and no `WATCH`.
//!
//! # Invariants
//!
//! * `load_after` reads the meta and both stream ranges in one `MULTI`, so
//!   they describe the same moment; it returns contiguous records within
//!   `archived_through + 1 ..= durable_tail` (a hole straddling the
//!   archive boundary included), and anything else is
//!   [`LogError::Corrupt`].
//! * A listed session that is not a valid key is Corrupt, not skipped.

use ::redis::Value;

use super::conn::{cmd, entries, exec_replies, one, server_error, unexpected};
use super::encode::{decode_entry, decode_meta};
use super::keys::{listing_key, SessionKeys};
use super::RedisLog;
use crate::durable::{LogError, LogRecord, SessionMeta};
use crate::key::SessionKey;

impl RedisLog {
    /// [`DurableLog::load_after`](crate::durable::DurableLog::load_after): one `MULTI` of the meta and two ranges.
    pub(super) fn load_records(
        &self,
        key: &SessionKey,
        after: u64,
        limit: usize,
    ) -> Result<Vec<LogRecord>, LogError> {
        // `after` may come from a client's cursor: at u64::MAX there is
        // nothing after it, rather than an overflow.
        let Some(first) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        let keys = SessionKeys::new(&self.options.prefix, key);
        let count = u64::try_from(limit)
            .unwrap_or(u64::MAX)
            .min(i64::MAX as u64);
        let tx = [
            cmd("MULTI"),
            cmd("GET").arg(&keys.meta).clone(),
            cmd("XREVRANGE")
                .arg(&keys.log)
                .arg(format!("({first}-0"))
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .clone(),
            cmd("XRANGE")
                .arg(&keys.log)
                .arg(format!("{first}-0"))
                .arg("+")
                .arg("COUNT")
                .arg(count)
                .clone(),
            cmd("EXEC"),
        ];
        let (mut slot, reused) = self.connection()?;
        let replies = self.first_trip(&mut slot, reused, &tx)?;
        drop(slot);
        let [get, before, from] = exec_replies::<3>(replies, "load_after")?;
        let Some((_, meta, _)) = decode_meta(key, get)? else {
            return Ok(Vec::new());
        };
        let Some(from_position) = after.max(meta.archived_through).checked_add(1) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        // The record just before `after + 1` covers it if it is a hole
        // reaching it.
        for entry in entries(before, "XREVRANGE")? {
            let record = decode_entry(key, entry)?;
            if record.last_position() >= from_position {
                out.push(record);
            }
        }
        for entry in entries(from, "XRANGE")? {
            if out.len() == limit {
                break;
            }
            let record = decode_entry(key, entry)?;
            // Entries wholly archived are trimmed; skip any left over.
            if record.last_position() < from_position {
                continue;
            }
            if let Some(last) = out.last() {
                if record.position != last.last_position() + 1 {
                    return Err(LogError::Corrupt(format!(
                        "{key}: the record at {} follows one ending at {}",
                        record.position,
                        last.last_position()
                    )));
                }
            }
            out.push(record);
        }
        if let Some(last) = out.last() {
            if last.last_position() > meta.durable_tail {
                return Err(LogError::Corrupt(format!(
                    "{key}: a record ends at {} beyond the tail {}",
                    last.last_position(),
                    meta.durable_tail
                )));
            }
        }
        Ok(out)
    }

    /// [`DurableLog::meta`](crate::durable::DurableLog::meta).
    pub(super) fn read_meta(&self, key: &SessionKey) -> Result<Option<SessionMeta>, LogError> {
        let keys = SessionKeys::new(&self.options.prefix, key);
        let (mut slot, reused) = self.connection()?;
        let replies = self.first_trip(&mut slot, reused, &[cmd("GET").arg(&keys.meta).clone()])?;
        drop(slot);
        Ok(decode_meta(key, one(replies, "GET")?)?.map(|(_, meta, _)| meta))
    }

    /// [`DurableLog::sessions`](crate::durable::DurableLog::sessions): newest first from the tenant listing.
    pub(super) fn list_sessions(
        &self,
        tenant: &str,
        limit: usize,
        offset: usize,
    ) -> Result<Vec<SessionKey>, LogError> {
        let max = i64::MAX as u64;
        let offset = u64::try_from(offset).unwrap_or(u64::MAX);
        if limit == 0 || offset > max {
            return Ok(Vec::new());
        }
        let limit = u64::try_from(limit).unwrap_or(u64::MAX);
        let stop = offset.saturating_add(limit - 1).min(max);
        let (mut slot, reused) = self.connection()?;
        let replies = self.first_trip(
            &mut slot,
            reused,
            &[cmd("ZREVRANGE")
                .arg(listing_key(&self.options.prefix, tenant))
                .arg(offset)
                .arg(stop)
                .clone()],
        )?;
        drop(slot);
        let members = match one(replies, "ZREVRANGE")? {
            Value::Array(members) => members,
            Value::ServerError(e) => return Err(server_error(e)),
            other => return Err(unexpected("ZREVRANGE", &other)),
        };
        members
            .into_iter()
            .map(|member| {
                let Value::BulkString(bytes) = member else {
                    return Err(unexpected("ZREVRANGE", &member));
                };
                let session = String::from_utf8(bytes).map_err(|e| {
                    LogError::Corrupt(format!(
                        "a listed session of tenant {tenant:?} is not UTF-8: {e}"
                    ))
                })?;
                SessionKey::new(tenant, &session).map_err(|e| {
                    LogError::Corrupt(format!(
                        "listed session {session:?} of tenant {tenant:?} is not a valid key: {e}"
                    ))
                })
            })
            .collect()
    }
}
