//! Writes waiting for their records to be durable, on one node: the
//! store's [`DurableWaits`] registry (module docs there: one watcher task
//! per service wakes exactly the writes a commit made durable; it is
//! loom-modelled), run on the request's tokio runtime and bounded by the
//! request's deadline.

use std::sync::Arc as StdArc;

use crate::key::SessionKey;
use crate::store::DurableWaits;

use super::error::StreamError;
use super::record::StreamRecord;

impl super::DurableStreams {
    /// [`durable_by`](super::DurableStreams::durable_by) on one node: waits
    /// in the registry rather than on every commit.
    pub(crate) async fn durable_by_registered(
        &self,
        key: &SessionKey,
        position: u64,
        deadline: tokio::time::Instant,
    ) -> Result<bool, StreamError> {
        let waits: &StdArc<DurableWaits<StreamRecord>> = &self.durable_waits;
        let spawn = |watcher| {
            tokio::spawn(watcher);
        };
        match tokio::time::timeout_at(deadline, waits.wait(key, position, spawn)).await {
            Ok(settled) => Ok(settled?),
            Err(_elapsed) => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::durable::MemoryLog;
    use crate::store::ReplayStore;
    use crate::{DurableOptions, Postcard, Revision};

    /// A write waits for the commit that covers it, and is still told when
    /// the runtime that ran the first watcher is gone (the next write's
    /// registration starts another). The host drives the persister here, so
    /// the write is certain to wait: its record is not durable until the
    /// round runs, after it registered.
    #[test]
    fn a_write_is_told_after_its_commit_across_runtimes() {
        let store = StdArc::new(
            ReplayStore::<StreamRecord>::builder()
                .durable(StdArc::new(MemoryLog::new()), Postcard)
                .durable_options(DurableOptions::default().with_persister_thread(false))
                .build()
                .expect("store"),
        );
        let service = super::super::DurableStreams::new(StdArc::clone(&store));
        let key = service.key("", "waits").expect("key");
        for round in 0..2 {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let durable = runtime.block_on(async {
                let position = store
                    .append(&key, Revision(0), StreamRecord::data("x"))
                    .expect("append")
                    .position();
                assert!(service.durable(&key).expect("watermark") < position);
                let persister = StdArc::clone(&store);
                let commit = tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    persister.persist_round()
                });
                let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                let durable = service
                    .durable_by(&key, position, deadline)
                    .await
                    .expect("wait");
                assert_eq!(commit.await.expect("round"), Some(true), "round {round}");
                assert!(service.durable(&key).expect("watermark") >= position);
                durable
            });
            assert!(durable, "round {round}: the write was not told");
        }
    }
}
