//! Talking to the server: the shared connection, round trips, `EXEC`
//! replies, and turning replies and failures into [`LogError`]s.
//!
//! # Invariants
//!
//! * Any transport failure drops the connection (`*slot = None`), so the
//!   next call starts on a fresh one; only a first round trip, which writes
//!   nothing a repeat could harm (at most an append's reservation of index
//!   numbers, which then leaves a gap), is retried on a fresh connection,
//!   and not after a timeout.
//! * A server error reply is [`LogError::Backend`], except `WRONGTYPE` (a
//!   key of the log holds something it did not write), which is
//!   [`LogError::Corrupt`]; a command that failed *inside* an `EXEC` is
//!   Corrupt too, since Redis does not roll it back.
//! * Error texts carry a reply's shape, never its bytes (a reply may hold a
//!   megabyte of payload).

use std::fmt;
use std::sync::MutexGuard;
use std::time::Duration;

use ::redis::{Cmd, Connection, ConnectionLike, ServerError, Value};

use super::{RedisLog, MAX_ATTEMPTS};
use crate::durable::LogError;

impl RedisLog {
    pub(super) fn connect(&self) -> Result<Connection, LogError> {
        let con = match nonzero(self.options.connect_timeout) {
            Some(timeout) => self.client.get_connection_with_timeout(timeout),
            None => self.client.get_connection(),
        }
        .map_err(backend)?;
        let io = nonzero(self.options.io_timeout);
        con.set_read_timeout(io).map_err(backend)?;
        con.set_write_timeout(io).map_err(backend)?;
        Ok(con)
    }

    /// The shared connection, connected, and whether it was open already
    /// (it may be stale: the server may have restarted since).
    pub(super) fn connection(
        &self,
    ) -> Result<(MutexGuard<'_, Option<Connection>>, bool), LogError> {
        let mut slot = self.conn.lock().unwrap_or_else(|poisoned| {
            // A panic mid-call may have left a WATCH or MULTI open on it.
            let mut slot = poisoned.into_inner();
            *slot = None;
            slot
        });
        let reused = slot.is_some();
        if !reused {
            *slot = Some(self.connect()?);
        }
        Ok((slot, reused))
    }

    /// The first round trip of a call, which writes nothing a repeat could
    /// harm (an append's reservation of index numbers leaves a gap): if it
    /// fails on the transport of a connection opened by an earlier call (the
    /// server restarted, an idle connection was cut), it is tried once more
    /// on a fresh connection, so a restarted server is served from the
    /// first call.
    pub(super) fn first_trip(
        &self,
        slot: &mut Option<Connection>,
        reused: bool,
        cmds: &[Cmd],
    ) -> Result<Vec<Value>, LogError> {
        match round_trip(slot, cmds) {
            Err(e) if reused && slot.is_none() && !is_timeout(&e) => {
                *slot = Some(self.connect()?);
                round_trip(slot, cmds)
            }
            result => result,
        }
    }
}

pub(super) fn cmd(name: &str) -> Cmd {
    ::redis::cmd(name)
}

/// Sends `cmds` in one write and reads every reply (server errors are
/// `Value::ServerError` items). Any failure drops the connection, so the
/// next call starts on a fresh one.
pub(super) fn round_trip(
    slot: &mut Option<Connection>,
    cmds: &[Cmd],
) -> Result<Vec<Value>, LogError> {
    let Some(con) = slot.as_mut() else {
        return Err(LogError::Backend("not connected to Redis".into()));
    };
    let mut packed = Vec::new();
    for command in cmds {
        command.write_packed_command(&mut packed);
    }
    match con.req_packed_commands(&packed, 0, cmds.len()) {
        Ok(replies) if replies.len() == cmds.len() => Ok(replies),
        Ok(replies) => {
            *slot = None;
            Err(LogError::Backend(
                format!(
                    "Redis sent {} replies to {} commands",
                    replies.len(),
                    cmds.len()
                )
                .into(),
            ))
        }
        Err(e) => {
            *slot = None;
            Err(backend(e))
        }
    }
}

/// The server's `proto-max-bulk-len`, if `CONFIG GET` is allowed.
pub(super) fn server_bulk_limit(slot: &mut Option<Connection>) -> Option<usize> {
    let reply = round_trip(
        slot,
        &[cmd("CONFIG").arg("GET").arg("proto-max-bulk-len").clone()],
    )
    .ok()?;
    let values: Vec<Value> = match reply.into_iter().next()? {
        Value::Array(values) => values,
        Value::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => return None,
    };
    let value = bulk(values.into_iter().nth(1)?, "CONFIG GET").ok()??;
    std::str::from_utf8(&value).ok()?.parse().ok()
}

/// Forgets a `WATCH` after a refused or failed write, so that the next
/// transaction on the connection is not aborted by it. If that fails too,
/// the connection is dropped (which forgets it as well).
pub(super) fn unwatch(slot: &mut Option<Connection>) {
    if round_trip(slot, &[cmd("UNWATCH")]).is_err() {
        *slot = None;
    }
}

/// Runs a `MULTI` … `EXEC` pipeline: `Ok(true)` if it ran, `Ok(false)` if a
/// watched key changed (nothing ran).
pub(super) fn exec(
    slot: &mut Option<Connection>,
    tx: &[Cmd],
    what: &str,
) -> Result<bool, LogError> {
    let replies = round_trip(slot, tx)?;
    match replies.last() {
        Some(Value::Nil) => {
            check_queued(&replies, what)?;
            Ok(false)
        }
        _ => {
            let n = tx.len() - 2;
            let results = exec_results(replies, n, what)?;
            for result in results {
                if let Value::ServerError(e) = result {
                    // Redis does not roll back a command that failed while
                    // the transaction ran (it never fails when the stream
                    // and meta agree): the keys disagree.
                    return Err(LogError::Corrupt(format!(
                        "{what}: a command failed inside the transaction, which Redis does not roll back: {}",
                        RedisErrorText(&e)
                    )));
                }
            }
            Ok(true)
        }
    }
}

/// Checks the `OK`/`QUEUED` replies before an `EXEC`.
pub(super) fn check_queued(replies: &[Value], what: &str) -> Result<(), LogError> {
    for reply in &replies[..replies.len().saturating_sub(1)] {
        match reply {
            Value::Okay => {}
            Value::SimpleString(s) if s == "QUEUED" || s == "OK" => {}
            Value::ServerError(e) => return Err(server_error(e.clone())),
            other => return Err(unexpected(what, other)),
        }
    }
    Ok(())
}

/// The results of a `MULTI` … `EXEC` of `n` commands.
pub(super) fn exec_results(
    replies: Vec<Value>,
    n: usize,
    what: &str,
) -> Result<Vec<Value>, LogError> {
    check_queued(&replies, what)?;
    match replies.into_iter().last() {
        Some(Value::Array(results)) if results.len() == n => Ok(results),
        Some(Value::ServerError(e)) => Err(server_error(e)),
        Some(Value::Nil) => Err(LogError::Backend(
            format!("{what}: the transaction was aborted").into(),
        )),
        Some(other) => Err(unexpected(what, &other)),
        None => Err(LogError::Backend(format!("{what}: no reply").into())),
    }
}

/// The `N` results of a read-only `MULTI` … `EXEC`, each checked for a
/// server error.
pub(super) fn exec_replies<const N: usize>(
    replies: Vec<Value>,
    what: &str,
) -> Result<[Value; N], LogError> {
    let results = exec_results(replies, N, what)?;
    for result in &results {
        if let Value::ServerError(e) = result {
            return Err(server_error(e.clone()));
        }
    }
    results
        .try_into()
        .map_err(|_| LogError::Backend(format!("{what}: wrong number of results").into()))
}

pub(super) fn one(replies: Vec<Value>, what: &str) -> Result<Value, LogError> {
    replies
        .into_iter()
        .next()
        .ok_or_else(|| LogError::Backend(format!("no reply to {what}").into()))
}

pub(super) fn ok_reply(reply: Value, what: &str) -> Result<(), LogError> {
    match reply {
        Value::Okay => Ok(()),
        Value::SimpleString(s) if s == "OK" => Ok(()),
        Value::ServerError(e) => Err(server_error(e)),
        other => Err(unexpected(what, &other)),
    }
}

pub(super) fn bulk(reply: Value, what: &str) -> Result<Option<Vec<u8>>, LogError> {
    match reply {
        Value::Nil => Ok(None),
        Value::BulkString(bytes) => Ok(Some(bytes)),
        Value::VerbatimString { text, .. } => Ok(Some(text.into_bytes())),
        Value::ServerError(e) => Err(server_error(e)),
        other => Err(unexpected(what, &other)),
    }
}

pub(super) fn int(reply: Value, what: &str) -> Result<u64, LogError> {
    match reply {
        Value::Int(n) if n > 0 => Ok(n as u64),
        Value::ServerError(e) => Err(server_error(e)),
        other => Err(unexpected(what, &other)),
    }
}

/// The entries of an `XRANGE`/`XREVRANGE` reply.
pub(super) fn entries(reply: Value, what: &str) -> Result<Vec<Value>, LogError> {
    match reply {
        Value::Array(entries) => Ok(entries),
        Value::Nil => Ok(Vec::new()),
        Value::ServerError(e) => Err(server_error(e)),
        other => Err(unexpected(what, &other)),
    }
}

/// A connection failure, timeout or client-side error.
pub(super) fn backend(error: ::redis::RedisError) -> LogError {
    LogError::Backend(Box::new(error))
}

/// An error reply. `WRONGTYPE` means one of the log's keys holds something
/// the log did not write: corrupt. Anything else (`LOADING` after a
/// restart, `OOM`, `READONLY`, …) may pass: backend.
pub(super) fn server_error(error: ServerError) -> LogError {
    if error.code() == "WRONGTYPE" {
        LogError::Corrupt(format!(
            "a key of the log holds another type: {}",
            RedisErrorText(&error)
        ))
    } else {
        LogError::Backend(Box::new(::redis::RedisError::from(error)))
    }
}

pub(super) struct RedisErrorText<'a>(&'a ServerError);

impl fmt::Display for RedisErrorText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.details() {
            Some(details) => write!(f, "{} {details}", self.0.code()),
            None => f.write_str(self.0.code()),
        }
    }
}

pub(super) fn unexpected(what: &str, reply: &Value) -> LogError {
    // Only the shape: a reply may hold a megabyte of payload.
    let shape = match reply {
        Value::Nil => "nil",
        Value::Int(_) => "an integer",
        Value::BulkString(_) => "a string",
        Value::Array(_) => "an array",
        Value::SimpleString(_) | Value::Okay => "a status",
        Value::Map(_) => "a map",
        _ => "another type",
    };
    LogError::Backend(format!("unexpected reply to {what}: {shape}").into())
}

pub(super) fn contended(what: &str) -> LogError {
    LogError::Backend(
        format!(
            "{what}: the session's meta changed under {MAX_ATTEMPTS} attempts in a row \
             (another writer on the same sessions)"
        )
        .into(),
    )
}

/// Whether a call failed by waiting too long (a slow or frozen server: a
/// fresh connection would wait as long), rather than on a broken one.
pub(super) fn is_timeout(error: &LogError) -> bool {
    match error {
        LogError::Backend(source) => source
            .downcast_ref::<::redis::RedisError>()
            .is_some_and(::redis::RedisError::is_timeout),
        _ => false,
    }
}

pub(super) fn nonzero(duration: Duration) -> Option<Duration> {
    (!duration.is_zero()).then_some(duration)
}

/// Refuses servers older than 6.2 (no `XTRIM MINID`, no exclusive ranges).
/// A server that does not say its version is given the benefit of the doubt.
pub(super) fn check_version(info: &str) -> Result<(), LogError> {
    let Some(version) = info
        .lines()
        .find_map(|line| line.trim().strip_prefix("redis_version:"))
    else {
        return Ok(());
    };
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if (major, minor) < (6, 2) {
        return Err(LogError::Backend(
            format!("Redis {version} is too old: the Redis log needs 6.2 or later").into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_check() {
        assert!(check_version("# Server\r\nredis_version:7.0.15\r\n").is_ok());
        assert!(check_version("redis_version:6.2.0").is_ok());
        assert!(check_version("redis_version:6.0.9").is_err());
        assert!(check_version("nothing here").is_ok());
    }
}
