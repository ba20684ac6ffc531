//! [`StoreBuilder`]: the bounds, the clock, a payload limit and the durable
//! tier a store is built with. Building checks the configuration and
//! starts the persister thread (unless the host drives it).

use std::sync::Arc as StdArc;

use crate::clock::{Clock, SystemClock};
use crate::codec::Codec;
use crate::config::{Config, ConfigError};
use crate::durable::DurableLog;
use crate::map::SessionMap;
use crate::persist::{DurableOptions, Persistence};
use crate::session::DurableTier;
use crate::session::{Shared, Weigher};

use super::ReplayStore;

/// The durable tier a builder was given.
struct DurableParts<T> {
    log: StdArc<dyn DurableLog>,
    codec: Box<dyn Codec<T>>,
    options: DurableOptions,
}

/// Builds a [`ReplayStore`] with a custom clock or a payload limit.
///
/// ```
/// use std::sync::Arc;
/// use livereplay::{Config, ManualClock, ReplayStore};
///
/// let clock = Arc::new(ManualClock::new());
/// let store = ReplayStore::<String>::builder()
///     .config(Config::default().with_capacity(128))
///     .clock(clock.clone())
///     .payload_limit(64 * 1024, |payload: &String| payload.len())
///     .build()?;
/// # Ok::<(), livereplay::ConfigError>(())
/// ```
pub struct StoreBuilder<T> {
    config: Config,
    clock: StdArc<dyn Clock>,
    payload_limit: Option<(usize, Weigher<T>)>,
    durable: Option<DurableParts<T>>,
}

impl<T: Send + Sync + 'static> StoreBuilder<T> {
    /// The retention and size bounds (default [`Config::default`]).
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// The clock timestamps and age retention use (default [`SystemClock`]).
    pub fn clock(mut self, clock: StdArc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Refuses payloads that `weigh` says are larger than `max_bytes`, with
    /// [`Refusal::PayloadTooLarge`](crate::Refusal::PayloadTooLarge).
    pub fn payload_limit(
        mut self,
        max_bytes: usize,
        weigh: impl Fn(&T) -> usize + Send + Sync + 'static,
    ) -> Self {
        self.payload_limit = Some((max_bytes, StdArc::new(weigh)));
        self
    }

    /// Puts a durable log behind the rings: a persister thread writes every
    /// appended event to `log` (payloads through `codec`), catch-up serves
    /// any cursor from it, and sessions it remembers are restored on first
    /// touch. The append path gains one load in the common case.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use livereplay::durable::MemoryLog;
    /// use livereplay::{ReplayStore, Revision, SessionKey, Utf8};
    ///
    /// let store = ReplayStore::<String>::builder()
    ///     .durable(Arc::new(MemoryLog::new()), Utf8)
    ///     .build()?;
    /// let key = SessionKey::new("acme", "chat-1")?;
    /// let event = store.append(&key, Revision(1), "hello".to_string())?;
    /// store.wait_durable(&key, event.position(), Duration::from_secs(5))?;
    /// assert_eq!(store.durable_position(&key)?, Some(1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn durable(mut self, log: StdArc<dyn DurableLog>, codec: impl Codec<T>) -> Self {
        self.durable = Some(DurableParts {
            log,
            codec: Box::new(codec),
            options: DurableOptions::default(),
        });
        self
    }

    /// Tunes the durable tier (no effect without [`StoreBuilder::durable`]).
    pub fn durable_options(mut self, options: DurableOptions) -> Self {
        if let Some(durable) = self.durable.as_mut() {
            durable.options = options;
        }
        self
    }

    /// Checks the configuration and builds the store (and starts its
    /// persister, with a durable log).
    pub fn build(self) -> Result<ReplayStore<T>, ConfigError> {
        self.config.validate()?;
        let weigh = self
            .payload_limit
            .as_ref()
            .map(|(_, weigh)| StdArc::clone(weigh));
        let persistence = self.durable.map(|parts| {
            StdArc::new(Persistence::new(
                parts.log,
                parts.codec,
                parts.options,
                weigh,
                StdArc::clone(&self.clock),
            ))
        });
        if let Some(persistence) = &persistence {
            Persistence::start(persistence).map_err(|error| ConfigError::PersisterThread {
                reason: error.to_string(),
            })?;
        }
        Ok(ReplayStore {
            shared: StdArc::new(Shared {
                max_age_nanos: self.config.max_age_nanos(),
                config: self.config,
                clock: self.clock,
                payload_limit: self.payload_limit,
                counters: Default::default(),
                durable: persistence
                    .clone()
                    .map(|persistence| persistence as StdArc<dyn DurableTier<T>>),
            }),
            persistence,
            sessions: StdArc::new(SessionMap::new()),
        })
    }
}

impl<T: Send + Sync + 'static> ReplayStore<T> {
    /// A builder, for a custom clock or a payload limit.
    pub fn builder() -> StoreBuilder<T> {
        StoreBuilder {
            config: Config::default(),
            clock: StdArc::new(SystemClock),
            payload_limit: None,
            durable: None,
        }
    }
}
