//! The causal index (`crate::dag`) on Postgres: the `index_entries` table,
//! `key bytea` primary key, `value bytea`. Postgres compares `bytea`
//! bytewise, so a primary-key range in key order is the ascending byte
//! order [`IndexRead::scan`] promises; a prefix scan is the range
//! `prefix ..` (the prefix's successor).
//!
//! # Invariants
//!
//! * **Same transaction as the records.** An append indexes through
//!   [`TxIndex`] over its own transaction, after inserting its records, so
//!   the index's reads see them ([`IndexRead::is_event`]) and its own
//!   writes, and the index commits with them or not at all.
//! * **One index writer at a time.** Every transaction that writes the
//!   index (an append, [`IndexStore::write`]) first locks the log's state
//!   row, so an index read inside it cannot be made stale by another
//!   node's write before the commit.
//! * Queries ([`IndexStore::read`]) read outside a transaction, one
//!   statement per call, as the other shared backend does: the index only
//!   grows but for acknowledgements, which a reader may or may not see.

use ::postgres::{Client, GenericClient};

use super::schema::Statements;
use super::{backend, to_sql, Conn, PostgresLog};
use crate::durable::{IndexEntries, IndexRead, IndexStore, IndexWrite, LogError};
use crate::key::SessionKey;

fn get(
    client: &mut impl GenericClient,
    statements: &Statements,
    key: &[u8],
) -> Result<Option<Vec<u8>>, LogError> {
    client
        .query_opt(&statements.index_get, &[&key])
        .map_err(backend)?
        .map(|row| row.try_get(0).map_err(backend))
        .transpose()
}

/// The smallest key greater than every key starting with `prefix`; `None`
/// when there is none (empty, or all `0xFF`).
fn successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let end = prefix.iter().rposition(|&b| b != 0xFF)?;
    let mut next = prefix[..=end].to_vec();
    next[end] += 1;
    Some(next)
}

fn scan(
    client: &mut impl GenericClient,
    statements: &Statements,
    prefix: &[u8],
    after: Option<&[u8]>,
    limit: usize,
) -> Result<IndexEntries, LogError> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    // Keys strictly after `after` start at `after` followed by 0x00.
    let lower = match after {
        Some(after) if after >= prefix => [after, &[0]].concat(),
        _ => prefix.to_vec(),
    };
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = match successor(prefix) {
        Some(upper) => client.query(&statements.index_scan, &[&lower, &upper, &limit]),
        None => client.query(&statements.index_scan_open, &[&lower, &limit]),
    }
    .map_err(backend)?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let key: Vec<u8> = row.try_get(0).map_err(backend)?;
        if !key.starts_with(prefix) {
            break;
        }
        out.push((key, row.try_get(1).map_err(backend)?));
    }
    Ok(out)
}

fn is_event(
    client: &mut impl GenericClient,
    statements: &Statements,
    key: &SessionKey,
    position: u64,
) -> Result<bool, LogError> {
    if position > i64::MAX as u64 {
        return Ok(false);
    }
    Ok(client
        .query_opt(
            &statements.is_event,
            &[&key.tenant(), &key.session(), &to_sql(position)],
        )
        .map_err(backend)?
        .map(|row| row.try_get::<_, bool>(0))
        .transpose()
        .map_err(backend)?
        .unwrap_or(false))
}

/// The index inside one of the log's write transactions (the connection,
/// inside a [`super::commit::Tx`]).
pub(super) struct TxIndex<'t> {
    tx: &'t mut Client,
    statements: &'t Statements,
    /// The value at `dag::NUMBER_KEY` (the last index number handed out),
    /// read earlier in the transaction
    /// (under the state row's lock, so current), until it is used or
    /// written.
    state: Option<Option<Vec<u8>>>,
}

impl<'t> TxIndex<'t> {
    pub(super) fn new(tx: &'t mut Client, statements: &'t Statements) -> Self {
        Self {
            tx,
            statements,
            state: None,
        }
    }

    /// Answers the first read of the index's number with `state` (the
    /// append's statement read it): one round trip fewer per linked append.
    pub(super) fn knowing_state(&mut self, state: Option<Vec<u8>>) {
        self.state = Some(state);
    }
}

impl IndexRead for TxIndex<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, LogError> {
        if key == crate::durable::causal::NUMBER_KEY {
            if let Some(state) = self.state.take() {
                return Ok(state);
            }
        }
        get(self.tx, self.statements, key)
    }

    fn scan(
        &mut self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<IndexEntries, LogError> {
        scan(self.tx, self.statements, prefix, after, limit)
    }

    fn is_event(&mut self, key: &SessionKey, position: u64) -> Result<bool, LogError> {
        is_event(self.tx, self.statements, key, position)
    }
}

impl IndexWrite for TxIndex<'_> {
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), LogError> {
        if key == crate::durable::causal::NUMBER_KEY {
            self.state = None;
        }
        self.tx
            .execute(&self.statements.index_put, &[&key, &value])
            .map_err(backend)?;
        Ok(())
    }

    fn delete(&mut self, key: &[u8]) -> Result<(), LogError> {
        if key == crate::durable::causal::NUMBER_KEY {
            self.state = None;
        }
        self.tx
            .execute(&self.statements.index_delete, &[&key])
            .map_err(backend)?;
        Ok(())
    }
}

/// Reads for queries: each call on the log's connection, no transaction.
struct Reader<'a>(&'a PostgresLog);

impl IndexRead for Reader<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, LogError> {
        self.0.run(
            |Conn {
                 client, statements, ..
             }| get(client, statements, key),
        )
    }

    fn scan(
        &mut self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<IndexEntries, LogError> {
        self.0.run(
            |Conn {
                 client, statements, ..
             }| scan(client, statements, prefix, after, limit),
        )
    }

    fn is_event(&mut self, key: &SessionKey, position: u64) -> Result<bool, LogError> {
        self.0.run(
            |Conn {
                 client, statements, ..
             }| is_event(client, statements, key, position),
        )
    }
}

impl IndexStore for PostgresLog {
    fn read(&self) -> Result<Box<dyn IndexRead + '_>, LogError> {
        Ok(Box::new(Reader(self)))
    }

    fn write(
        &self,
        update: &mut dyn FnMut(&mut dyn IndexWrite) -> Result<(), LogError>,
    ) -> Result<(), LogError> {
        let mut write = || {
            self.run_here(|conn| {
                let Conn {
                    client,
                    statements,
                    broken,
                } = conn;
                let mut tx = super::commit::Tx::begin(client, broken, &statements.begin_locked)?;
                update(&mut TxIndex::new(tx.client(), statements))?;
                tx.commit()
            })
        };
        // `update` is not `Send`, so it cannot move to another thread (as
        // `run` moves calls): on a multi-thread runtime's worker, that
        // worker hands its tasks over and blocks instead; on a
        // current-thread runtime the client still panics.
        match ::tokio::runtime::Handle::try_current() {
            Ok(handle)
                if handle.runtime_flavor() == ::tokio::runtime::RuntimeFlavor::MultiThread =>
            {
                ::tokio::task::block_in_place(write)
            }
            _ => write(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::successor;

    #[test]
    fn successor_bounds_every_key_with_the_prefix() {
        assert_eq!(successor(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(successor(&[1, 0xFF]), Some(vec![2]));
        assert_eq!(successor(&[0xFF, 0xFF]), None);
        assert_eq!(successor(&[]), None);
    }
}
