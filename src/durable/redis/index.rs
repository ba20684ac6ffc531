//! The causal index (`crate::dag`) on Redis: one hash for the values and
//! one sorted set of the same keys, all at score 0, for ordered scans
//! (`ZRANGEBYLEX` orders members bytewise, which is the order the index's
//! keys are built for).
//!
//! | key | type | holds |
//! |---|---|---|
//! | `<prefix>:index` | hash | index key → value |
//! | `<prefix>:index:keys` | sorted set | every index key a query scans (`crate::dag::is_scanned`), score 0 |
//!
//! # Invariants
//!
//! * **Same transaction as the records.** An append reads the index under
//!   the same `WATCH` as the session metas (the hash is watched too), plans
//!   its index writes with reads that see its own staged writes
//!   ([`Staged`]), and queues them in the `MULTI`/`EXEC` that adds the
//!   records. If another node changed the index meanwhile, `EXEC` aborts
//!   and the whole append starts over, so two nodes never index from the
//!   same stale read.
//! * The hash and the set change only together, in one transaction; a
//!   reader between two round trips (a scan, then the values) may find a
//!   key whose value is gone (an acknowledgement removed it): it skips it.

use std::collections::{BTreeMap, HashMap};

use ::redis::{Cmd, Connection, Value};

use super::conn::{bulk, cmd, exec, is_timeout, round_trip, unexpected, unwatch};
use super::encode::decode_entry;
use super::keys::SessionKeys;
use super::{RedisLog, MAX_ATTEMPTS};
use crate::durable::{IndexEntries, IndexRead, IndexStore, IndexWrite, LogError, RecordBody};
use crate::key::SessionKey;

pub(super) fn hash_key(prefix: &str) -> String {
    format!("{prefix}:index")
}

fn keys_key(prefix: &str) -> String {
    format!("{prefix}:index:keys")
}

fn server_get(
    slot: &mut Option<Connection>,
    prefix: &str,
    key: &[u8],
) -> Result<Option<Vec<u8>>, LogError> {
    let reply = round_trip(slot, &[cmd("HGET").arg(hash_key(prefix)).arg(key).clone()])?;
    bulk(reply.into_iter().next().unwrap_or(Value::Nil), "HGET")
}

/// Keys from `prefix` (or after `after`) on, at most `limit`, and their
/// values; also whether the set had more (the answer was cut at `limit`).
fn server_scan(
    slot: &mut Option<Connection>,
    prefix_key: &str,
    prefix: &[u8],
    after: Option<&[u8]>,
    limit: usize,
) -> Result<(IndexEntries, bool), LogError> {
    if limit == 0 {
        return Ok((Vec::new(), true));
    }
    let min = match after {
        Some(after) if after >= prefix => [b"(".as_slice(), after].concat(),
        _ => [b"[".as_slice(), prefix].concat(),
    };
    let count = i64::try_from(limit).unwrap_or(i64::MAX);
    let reply = round_trip(
        slot,
        &[cmd("ZRANGEBYLEX")
            .arg(keys_key(prefix_key))
            .arg(min)
            .arg("+")
            .arg("LIMIT")
            .arg(0)
            .arg(count)
            .clone()],
    )?;
    let Some(Value::Array(members)) = reply.into_iter().next() else {
        return Err(LogError::Backend("ZRANGEBYLEX: not an array".into()));
    };
    let cut = members.len() >= limit;
    let mut keys = Vec::with_capacity(members.len());
    for member in members {
        match bulk(member, "ZRANGEBYLEX")? {
            Some(key) if key.starts_with(prefix) => keys.push(key),
            // Past the prefix: nothing further matches.
            _ => return values(slot, prefix_key, keys).map(|entries| (entries, false)),
        }
    }
    values(slot, prefix_key, keys).map(|entries| (entries, cut))
}

fn values(
    slot: &mut Option<Connection>,
    prefix: &str,
    keys: Vec<Vec<u8>>,
) -> Result<IndexEntries, LogError> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let mut hmget = cmd("HMGET");
    hmget.arg(hash_key(prefix));
    for key in &keys {
        hmget.arg(key.as_slice());
    }
    let reply = round_trip(slot, &[hmget])?;
    let Some(Value::Array(found)) = reply.into_iter().next() else {
        return Err(LogError::Backend("HMGET: not an array".into()));
    };
    let mut out = Vec::with_capacity(keys.len());
    for (key, value) in keys.into_iter().zip(found) {
        if let Some(value) = bulk(value, "HMGET")? {
            out.push((key, value));
        }
    }
    Ok(out)
}

fn server_is_event(
    slot: &mut Option<Connection>,
    prefix: &str,
    key: &SessionKey,
    position: u64,
) -> Result<bool, LogError> {
    let keys = SessionKeys::new(prefix, key);
    let id = format!("{position}-0");
    let reply = round_trip(
        slot,
        &[cmd("XRANGE").arg(&keys.log).arg(&id).arg(&id).clone()],
    )?;
    match reply.into_iter().next() {
        Some(Value::Array(entries)) => match entries.into_iter().next() {
            None => Ok(false),
            Some(entry) => Ok(matches!(
                decode_entry(key, entry)?.body,
                RecordBody::Event(_)
            )),
        },
        Some(other) => Err(unexpected("XRANGE", &other)),
        None => Err(LogError::Backend("no reply to XRANGE".into())),
    }
}

/// The index as one transaction sees it: reads go to the server (under the
/// caller's `WATCH`) and see the writes staged so far, which become the
/// transaction's commands.
pub(super) struct Staged<'c> {
    slot: &'c mut Option<Connection>,
    prefix: &'c str,
    /// Values read ahead in the transaction's first round trip.
    known: HashMap<Vec<u8>, Option<Vec<u8>>>,
    /// `None`: deleted.
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl<'c> Staged<'c> {
    pub(super) fn new(
        slot: &'c mut Option<Connection>,
        prefix: &'c str,
        known: HashMap<Vec<u8>, Option<Vec<u8>>>,
    ) -> Self {
        Self {
            slot,
            prefix,
            known,
            writes: BTreeMap::new(),
        }
    }

    /// The commands that make the staged writes, for the `MULTI`: at most
    /// one each of `HSET`, `ZADD`, `HDEL`, `ZREM`, however many keys (a
    /// command per key would cost Redis more than the keys do). Keys that
    /// are only ever read by their exact value stay out of the sorted set.
    pub(super) fn commands(self) -> Vec<Cmd> {
        let (hash, set) = (hash_key(self.prefix), keys_key(self.prefix));
        let mut hset = cmd("HSET");
        hset.arg(&hash);
        let mut zadd = cmd("ZADD");
        zadd.arg(&set);
        let mut hdel = cmd("HDEL");
        hdel.arg(&hash);
        let mut zrem = cmd("ZREM");
        zrem.arg(&set);
        let (mut puts, mut ordered, mut deletes, mut unordered) = (0, 0, 0, 0);
        for (key, value) in self.writes {
            let scanned = crate::dag::is_scanned(&key);
            match value {
                Some(value) => {
                    if scanned {
                        zadd.arg(0).arg(key.as_slice());
                        ordered += 1;
                    }
                    hset.arg(key).arg(value);
                    puts += 1;
                }
                None => {
                    if scanned {
                        zrem.arg(key.as_slice());
                        unordered += 1;
                    }
                    hdel.arg(key);
                    deletes += 1;
                }
            }
        }
        [
            (hset, puts),
            (zadd, ordered),
            (hdel, deletes),
            (zrem, unordered),
        ]
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(command, _)| command)
        .collect()
    }
}

impl IndexRead for Staged<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, LogError> {
        if let Some(staged) = self.writes.get(key) {
            return Ok(staged.clone());
        }
        if let Some(known) = self.known.get(key) {
            return Ok(known.clone());
        }
        server_get(self.slot, self.prefix, key)
    }

    fn scan(
        &mut self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<IndexEntries, LogError> {
        let above = |key: &[u8]| after.is_none_or(|after| key > after);
        let staged: Vec<(&Vec<u8>, &Option<Vec<u8>>)> = self
            .writes
            .range(prefix.to_vec()..)
            .take_while(|(key, _)| key.starts_with(prefix))
            .filter(|(key, _)| above(key))
            .collect();
        // Staged deletes may hide that many of the server's entries.
        let hidden = staged.iter().filter(|(_, v)| v.is_none()).count();
        let (server, cut) = server_scan(
            self.slot,
            self.prefix,
            prefix,
            after,
            limit.saturating_add(hidden),
        )?;
        let last_seen = server.last().map(|(key, _)| key.clone());
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = server.into_iter().collect();
        for (key, value) in staged {
            // Past the server's last entry of a cut answer, the server may
            // hold keys not read: merging staged keys there would skip them.
            if cut && last_seen.as_ref().is_some_and(|last| key > last) {
                break;
            }
            match value {
                Some(value) => merged.insert(key.clone(), value.clone()),
                None => merged.remove(key),
            };
        }
        Ok(merged.into_iter().take(limit).collect())
    }

    fn is_event(&mut self, key: &SessionKey, position: u64) -> Result<bool, LogError> {
        server_is_event(self.slot, self.prefix, key, position)
    }
}

impl IndexWrite for Staged<'_> {
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), LogError> {
        self.writes.insert(key.to_vec(), Some(value.to_vec()));
        Ok(())
    }

    fn delete(&mut self, key: &[u8]) -> Result<(), LogError> {
        self.writes.insert(key.to_vec(), None);
        Ok(())
    }
}

/// Reads for queries: one connection use per call, no transaction (the
/// index only grows, but for acknowledgements, which a reader may or may
/// not see).
struct Reader<'a>(&'a RedisLog);

impl Reader<'_> {
    fn with<R>(
        &self,
        f: impl Fn(&mut Option<Connection>, &str) -> Result<R, LogError>,
    ) -> Result<R, LogError> {
        let (mut slot, reused) = self.0.connection()?;
        let prefix = self.0.options.prefix.as_str();
        // Reads only: a transport failure on a connection an earlier call
        // opened (the server restarted) is tried once more on a fresh one.
        match f(&mut slot, prefix) {
            Err(e) if reused && slot.is_none() && !is_timeout(&e) => {
                *slot = Some(self.0.connect()?);
                f(&mut slot, prefix)
            }
            result => result,
        }
    }
}

impl IndexRead for Reader<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, LogError> {
        self.with(|slot, prefix| server_get(slot, prefix, key))
    }

    fn scan(
        &mut self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<IndexEntries, LogError> {
        self.with(|slot, key_prefix| {
            server_scan(slot, key_prefix, prefix, after, limit).map(|(entries, _)| entries)
        })
    }

    fn is_event(&mut self, key: &SessionKey, position: u64) -> Result<bool, LogError> {
        self.with(|slot, prefix| server_is_event(slot, prefix, key, position))
    }
}

impl IndexStore for RedisLog {
    fn read(&self) -> Result<Box<dyn IndexRead + '_>, LogError> {
        Ok(Box::new(Reader(self)))
    }

    fn write(
        &self,
        update: &mut dyn FnMut(&mut dyn IndexWrite) -> Result<(), LogError>,
    ) -> Result<(), LogError> {
        let prefix = self.options.prefix.as_str();
        let (mut slot, reused) = self.connection()?;
        for attempt in 0..MAX_ATTEMPTS {
            let watch = [cmd("WATCH").arg(hash_key(prefix)).clone()];
            self.first_trip(&mut slot, reused && attempt == 0, &watch)?;
            let mut staged = Staged::new(&mut slot, prefix, HashMap::new());
            if let Err(e) = update(&mut staged) {
                unwatch(&mut slot);
                return Err(e);
            }
            let commands = staged.commands();
            if commands.is_empty() {
                unwatch(&mut slot);
                return Ok(());
            }
            let mut tx = vec![cmd("MULTI")];
            tx.extend(commands);
            tx.push(cmd("EXEC"));
            if exec(&mut slot, &tx, "index write")? {
                return Ok(());
            }
            self.note_aborted();
        }
        Err(LogError::Backend(
            format!("index write: the index changed under {MAX_ATTEMPTS} attempts in a row").into(),
        ))
    }
}
