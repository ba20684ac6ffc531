//! Stores' leases: [`DurableLog::keep_alive`](crate::durable::DurableLog::keep_alive)
//! and [`DurableLog::store_alive`](crate::durable::DurableLog::store_alive)
//! as one expiring key per store, `<prefix>:store:<id>`.
//!
//! # Invariants
//!
//! * The key exists exactly while its store's last lease runs: `SET … PX`
//!   sets it and its expiry in one command, and Redis's expiry removes it.
//!   So a store judged gone (no key) said nothing of itself for a whole
//!   lease; a store that comes back sets the key again, and finds its
//!   turns closed and its sessions in newer lives (persister invariants 6
//!   and 11).
//! * Expiry is the server's clock, not the nodes': nodes whose clocks
//!   disagree still agree on who is alive.

use std::time::Duration;

use ::redis::Value;

use super::conn::{cmd, ok_reply, one, server_error, unexpected};
use super::RedisLog;
use crate::durable::LogError;

impl RedisLog {
    fn lease_key(&self, store: u64) -> String {
        format!("{}:store:{store:016x}", self.options.prefix)
    }

    /// `SET <key> 1 PX <lease>`: idempotent, so a retried trip is harmless.
    pub(super) fn hold_lease(&self, store: u64, lease: Duration) -> Result<(), LogError> {
        let millis = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX).max(1);
        let (mut slot, reused) = self.connection()?;
        let replies = self.first_trip(
            &mut slot,
            reused,
            &[cmd("SET")
                .arg(self.lease_key(store))
                .arg(1)
                .arg("PX")
                .arg(millis)
                .clone()],
        )?;
        drop(slot);
        ok_reply(one(replies, "SET")?, "SET")
    }

    /// `EXISTS <key>`.
    pub(super) fn holds_lease(&self, store: u64) -> Result<bool, LogError> {
        let (mut slot, reused) = self.connection()?;
        let replies = self.first_trip(
            &mut slot,
            reused,
            &[cmd("EXISTS").arg(self.lease_key(store)).clone()],
        )?;
        drop(slot);
        match one(replies, "EXISTS")? {
            Value::Int(count) => Ok(count > 0),
            Value::ServerError(e) => Err(server_error(e)),
            other => Err(unexpected("EXISTS", &other)),
        }
    }
}
