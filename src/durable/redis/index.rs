//! The causal index (`crate::dag`) on Redis: every index entry is a Redis
//! key of its own, so a transaction can `WATCH` exactly the entries it
//! read, and the keys the queries scan are also members of a sorted set
//! per scan group (`crate::durable::causal::scan_group`: a session's children, a
//! correlation id, a kind, a tenant's open acknowledgements, the waiting
//! orphans), all at score 0 (`ZRANGEBYLEX` orders members bytewise, which
//! is the order the index's keys are built for).
//!
//! | key | type | holds |
//! |---|---|---|
//! | `<prefix>:ix:<index key>` | string | the entry's value (the index key's bytes as they are) |
//! | `<prefix>:ix:Sn`, `<prefix>:ix:Sc` | string | the index's counters: the last number handed out, the events indexed (decimal, `INCRBY`) |
//! | `<prefix>:ixs:<scan group>` | sorted set | the group's index keys (`crate::durable::causal::is_scanned`), score 0 |
//!
//! # Invariants
//!
//! * **Same transaction as the records.** An append's index writes are
//!   planned from reads made under `WATCH` and queued in the
//!   `MULTI`/`EXEC` that adds the records: every entry read is watched
//!   before it is read ([`Staged`]: `WATCH` and `GET` in one round trip; a
//!   scan watches its group's sorted set, a parent looked up in the log watches its
//!   session's meta), and reads see the writes staged so far. If another
//!   node changed any of them meanwhile, `EXEC` aborts and the append
//!   starts over, so no two nodes index from the same stale read.
//! * **Only what was read is watched.** Nothing global is: commits on
//!   different sessions abort each other only where their links meet (a
//!   parent in the other's session, an orphan waiting on it, or, for a
//!   commit settling orphans, children added to the same session's
//!   events).
//! * **Counters without conflicts.** The index numbers an append's events
//!   take are reserved with `INCRBY <prefix>:ix:Sn` in its first round
//!   trip (an abort leaves a gap); the count is raised with `INCRBY
//!   <prefix>:ix:Sc` inside the `EXEC`, never read by a writer. So the
//!   count is exactly the events with links committed, and an answer's
//!   `as_of` (a `GET` of it) at least a value read after an event was seen
//!   means the answer was read after that event's commit.
//! * An entry and its sorted-set member change only together, in one
//!   transaction. Values of scanned entries never change while they are
//!   members (the waiting counts change, but no write scans them), so a
//!   scan watches membership only. A reader between two round trips (a
//!   scan, then the values) may find a key whose value is gone (an
//!   acknowledgement removed it): it skips it.

use std::collections::{BTreeMap, HashMap};

use ::redis::{Cmd, Connection, Value};

use super::conn::{bulk, cmd, exec, int, is_timeout, ok_reply, round_trip, unexpected, unwatch};
use super::encode::decode_entry;
use super::keys::SessionKeys;
use super::{RedisLog, MAX_ATTEMPTS};
use crate::durable::causal::{scan_group, COUNT_KEY, NUMBER_KEY};
use crate::durable::{IndexEntries, IndexRead, IndexStore, IndexWrite, LogError, RecordBody};
use crate::key::SessionKey;

/// The Redis key of index entry `key`.
pub(super) fn entry_key(prefix: &str, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(prefix.len() + 4 + key.len());
    out.extend_from_slice(prefix.as_bytes());
    out.extend_from_slice(b":ix:");
    out.extend_from_slice(key);
    out
}

/// The sorted set of scan group `group` (`crate::durable::causal::scan_group`).
fn group_key(prefix: &str, group: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(prefix.len() + 5 + group.len());
    out.extend_from_slice(prefix.as_bytes());
    out.extend_from_slice(b":ixs:");
    out.extend_from_slice(group);
    out
}

/// The command reserving `n` index numbers, for an append's first round
/// trip; [`reserved_from`] reads its reply.
pub(super) fn reserve_numbers(prefix: &str, n: u64) -> Cmd {
    cmd("INCRBY")
        .arg(entry_key(prefix, NUMBER_KEY))
        .arg(n)
        .clone()
}

/// The number before the `n` reserved ones, from the `INCRBY` reply.
pub(super) fn reserved_from(reply: Value, n: u64) -> Result<u64, LogError> {
    let last = int(reply, "INCRBY")?;
    last.checked_sub(n).ok_or_else(|| {
        LogError::Corrupt(format!(
            "the causal index's number counter is {last}, below the {n} just reserved"
        ))
    })
}

/// What an append read ahead for the index in its first round trip.
pub(super) struct ReadAhead {
    /// Entries read under the append's `WATCH` (its sessions' waiting
    /// orphans); `None`: absent.
    pub(super) known: HashMap<Vec<u8>, Option<Vec<u8>>>,
    /// The number before the ones reserved for the append, if it has
    /// events with links.
    pub(super) reserved: Option<u64>,
}

/// `value` as the decimal text the index keeps counters in.
fn decimal(value: u64) -> Vec<u8> {
    value.to_string().into_bytes()
}

fn parse_decimal(bytes: &[u8], what: &str) -> Result<u64, LogError> {
    std::str::from_utf8(bytes)
        .ok()
        .filter(|text| !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| LogError::Corrupt(format!("causal index: {what} is not a decimal number")))
}

/// The value of entry `key`; `watch`: `WATCH` it in the same round trip.
fn server_get(
    slot: &mut Option<Connection>,
    prefix: &str,
    key: &[u8],
    watch: bool,
) -> Result<Option<Vec<u8>>, LogError> {
    let redis_key = entry_key(prefix, key);
    let get = cmd("GET").arg(redis_key.as_slice()).clone();
    if !watch {
        let reply = round_trip(slot, &[get])?;
        return bulk(reply.into_iter().next().unwrap_or(Value::Nil), "GET");
    }
    let watch = cmd("WATCH").arg(redis_key.as_slice()).clone();
    let mut replies = round_trip(slot, &[watch, get])?.into_iter();
    ok_reply(replies.next().unwrap_or(Value::Nil), "WATCH")?;
    bulk(replies.next().unwrap_or(Value::Nil), "GET")
}

/// Keys from `prefix` (or after `after`) on, at most `limit`, and their
/// values; also whether the set had more (the answer was cut at `limit`).
/// `watch`: `WATCH` the sorted set in the same round trip.
fn server_scan(
    slot: &mut Option<Connection>,
    prefix_key: &str,
    prefix: &[u8],
    after: Option<&[u8]>,
    limit: usize,
    watch: bool,
) -> Result<(IndexEntries, bool), LogError> {
    if limit == 0 {
        return Ok((Vec::new(), true));
    }
    let min = match after {
        Some(after) if after >= prefix => [b"(".as_slice(), after].concat(),
        _ => [b"[".as_slice(), prefix].concat(),
    };
    let count = i64::try_from(limit).unwrap_or(i64::MAX);
    // Every scan the index makes names its group in full (dag docs).
    let group = scan_group(prefix).ok_or_else(|| {
        LogError::Backend(
            "causal index on Redis: a scan whose prefix does not name a scan group".into(),
        )
    })?;
    let set = group_key(prefix_key, group);
    let mut cmds = Vec::with_capacity(2);
    if watch {
        cmds.push(cmd("WATCH").arg(set.as_slice()).clone());
    }
    cmds.push(
        cmd("ZRANGEBYLEX")
            .arg(set.as_slice())
            .arg(min)
            .arg("+")
            .arg("LIMIT")
            .arg(0)
            .arg(count)
            .clone(),
    );
    let mut replies = round_trip(slot, &cmds)?.into_iter();
    if watch {
        ok_reply(replies.next().unwrap_or(Value::Nil), "WATCH")?;
    }
    let Some(Value::Array(members)) = replies.next() else {
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
    let mut mget = cmd("MGET");
    for key in &keys {
        mget.arg(entry_key(prefix, key));
    }
    let reply = round_trip(slot, &[mget])?;
    let Some(Value::Array(found)) = reply.into_iter().next() else {
        return Err(LogError::Backend("MGET: not an array".into()));
    };
    let mut out = Vec::with_capacity(keys.len());
    for (key, value) in keys.into_iter().zip(found) {
        if let Some(value) = bulk(value, "MGET")? {
            out.push((key, value));
        }
    }
    Ok(out)
}

/// Whether `key`'s log holds an event at `position`; `watch`: `WATCH` the
/// session's meta (which every write of the session changes) first.
fn server_is_event(
    slot: &mut Option<Connection>,
    prefix: &str,
    key: &SessionKey,
    position: u64,
    watch: bool,
) -> Result<bool, LogError> {
    let keys = SessionKeys::new(prefix, key);
    let id = format!("{position}-0");
    let mut cmds = Vec::with_capacity(2);
    if watch {
        cmds.push(cmd("WATCH").arg(&keys.meta).clone());
    }
    cmds.push(cmd("XRANGE").arg(&keys.log).arg(&id).arg(&id).clone());
    let mut replies = round_trip(slot, &cmds)?.into_iter();
    if watch {
        ok_reply(replies.next().unwrap_or(Value::Nil), "WATCH")?;
    }
    match replies.next() {
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

/// The index as one transaction sees it: reads go to the server, each
/// watched as it is made (or were read ahead under the caller's `WATCH`),
/// and see the writes staged so far, which become the transaction's
/// commands. The counters follow the module docs: `Sn` answers with the
/// reservation, `Sc` with a base of 0 that its put raises.
pub(super) struct Staged<'c> {
    slot: &'c mut Option<Connection>,
    prefix: &'c str,
    read_ahead: ReadAhead,
    /// `None`: deleted.
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// What the transaction adds to `Sc`.
    count_raise: u64,
    /// `Sn` as the index last put it, over a reservation.
    number_put: Option<u64>,
}

impl<'c> Staged<'c> {
    pub(super) fn new(
        slot: &'c mut Option<Connection>,
        prefix: &'c str,
        read_ahead: ReadAhead,
    ) -> Self {
        Self {
            slot,
            prefix,
            read_ahead,
            writes: BTreeMap::new(),
            count_raise: 0,
            number_put: None,
        }
    }

    /// The commands that make the staged writes, for the `MULTI`: at most
    /// one `MSET`, one `DEL` and one `INCRBY` however many keys, and one
    /// `ZADD` or `ZREM` per scan group touched (a command per key would
    /// cost Redis more than the keys do). Keys that are only ever read by
    /// their exact value belong to no group.
    pub(super) fn commands(self) -> Vec<Cmd> {
        let mut mset = cmd("MSET");
        let mut del = cmd("DEL");
        let (mut puts, mut deletes) = (0, 0);
        // Per group: (ZADD, ZREM, members added, members removed).
        let mut groups: BTreeMap<Vec<u8>, (Cmd, Cmd, usize, usize)> = BTreeMap::new();
        for (key, value) in self.writes {
            let redis_key = entry_key(self.prefix, &key);
            let group = crate::durable::causal::is_scanned(&key)
                .then(|| scan_group(&key))
                .flatten()
                .map(|group| {
                    groups.entry(group.to_vec()).or_insert_with(|| {
                        let set = group_key(self.prefix, group);
                        let mut zadd = cmd("ZADD");
                        zadd.arg(set.as_slice());
                        let mut zrem = cmd("ZREM");
                        zrem.arg(set);
                        (zadd, zrem, 0, 0)
                    })
                });
            match value {
                Some(value) => {
                    if let Some((zadd, _, added, _)) = group {
                        zadd.arg(0).arg(key.as_slice());
                        *added += 1;
                    }
                    mset.arg(redis_key).arg(value);
                    puts += 1;
                }
                None => {
                    if let Some((_, zrem, _, removed)) = group {
                        zrem.arg(key.as_slice());
                        *removed += 1;
                    }
                    del.arg(redis_key);
                    deletes += 1;
                }
            }
        }
        let count = cmd("INCRBY")
            .arg(entry_key(self.prefix, COUNT_KEY))
            .arg(self.count_raise)
            .clone();
        let members = groups
            .into_values()
            .flat_map(|(zadd, zrem, added, removed)| [(zadd, added), (zrem, removed)]);
        [
            (mset, puts),
            (del, deletes),
            (count, usize::from(self.count_raise > 0)),
        ]
        .into_iter()
        .chain(members)
        .filter(|(_, n)| *n > 0)
        .map(|(command, _)| command)
        .collect()
    }
}

impl IndexRead for Staged<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, LogError> {
        if key == COUNT_KEY {
            return Ok(Some(decimal(self.count_raise)));
        }
        if let (true, Some(reserved)) = (key == NUMBER_KEY, self.read_ahead.reserved) {
            return Ok(Some(decimal(self.number_put.unwrap_or(reserved))));
        }
        if let Some(staged) = self.writes.get(key) {
            return Ok(staged.clone());
        }
        if let Some(known) = self.read_ahead.known.get(key) {
            return Ok(known.clone());
        }
        let value = server_get(self.slot, self.prefix, key, true)?;
        // Watched now: later reads of it need no round trip.
        self.read_ahead.known.insert(key.to_vec(), value.clone());
        Ok(value)
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
            true,
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
        server_is_event(self.slot, self.prefix, key, position, true)
    }
}

impl IndexWrite for Staged<'_> {
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), LogError> {
        if key == COUNT_KEY {
            // Raised from the base of 0 its read answered.
            self.count_raise = parse_decimal(value, "the count put")?;
            return Ok(());
        }
        if let (true, Some(reserved)) = (key == NUMBER_KEY, self.read_ahead.reserved) {
            // The reservation already raised it on the server.
            let number = parse_decimal(value, "the number put")?;
            if number < reserved {
                return Err(LogError::Backend(
                    "causal index: the number put is below the reservation".into(),
                ));
            }
            self.number_put = Some(number);
            return Ok(());
        }
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
        self.with(|slot, prefix| server_get(slot, prefix, key, false))
    }

    fn scan(
        &mut self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<IndexEntries, LogError> {
        self.with(|slot, key_prefix| {
            server_scan(slot, key_prefix, prefix, after, limit, false).map(|(entries, _)| entries)
        })
    }

    fn is_event(&mut self, key: &SessionKey, position: u64) -> Result<bool, LogError> {
        self.with(|slot, prefix| server_is_event(slot, prefix, key, position, false))
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
            // The update watches what it reads, as it reads it; this first
            // round trip, which writes nothing, finds a stale connection.
            self.first_trip(&mut slot, reused && attempt == 0, &[cmd("UNWATCH")])?;
            let read_ahead = ReadAhead {
                known: HashMap::new(),
                reserved: None,
            };
            let mut staged = Staged::new(&mut slot, prefix, read_ahead);
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
