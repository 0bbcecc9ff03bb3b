//! The limit on unfinished uploads: every one costs a record, a data object and a share of
//! each sweep, so a client creating uploads it never finishes must not grow them without
//! bound. Counting records on every creation would cost a scan each; an estimate that only
//! errs high is kept instead (see [`policy::admit_unfinished`]).

use super::Uploads;
use super::policy::{self, Creation};
use crate::error::{Result, StoreError};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::Mutex;
use tokio::time::Instant;

/// The estimate and when it was last counted.
#[derive(Debug, Default)]
pub(crate) struct Unfinished {
    state: Mutex<Estimate>,
    /// Creations admitted whose record is not inserted yet: a count taken meanwhile misses
    /// them, so they are added to it.
    pending: Arc<AtomicU64>,
}

/// An admitted creation, until its record is inserted (or it failed).
#[derive(Debug)]
pub(crate) struct Admitted(Option<Arc<AtomicU64>>);

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            p.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

#[derive(Debug, Default)]
struct Estimate {
    /// Unfinished uploads, from the last count plus creations since; `None` before a count.
    count: Option<u64>,
    counted_at: Option<Instant>,
}

impl Uploads {
    /// Admits one more creation under `--max-unfinished-uploads`, or refuses with
    /// `TooManyUploads`. Hold the guard until the record is inserted.
    pub(crate) async fn admit_creation(&self) -> Result<Admitted> {
        let Some(max) = self.max_unfinished else {
            return Ok(Admitted(None));
        };
        // Held across a count, so that concurrent creations wait for it instead of counting
        // too.
        let mut est = self.unfinished.state.lock().await;
        let since = est.counted_at.map(|t| t.elapsed());
        if policy::admit_unfinished(est.count, max, since) == Creation::Count {
            let in_flight = self.unfinished.pending.load(Ordering::SeqCst);
            est.count = Some(self.meta.count_unfinished().await? + in_flight);
            est.counted_at = Some(Instant::now());
        }
        match policy::admit_unfinished(est.count, max, Some(std::time::Duration::ZERO)) {
            Creation::Admit => {
                est.count = est.count.map(|n| n + 1);
                let pending = self.unfinished.pending.clone();
                pending.fetch_add(1, Ordering::SeqCst);
                Ok(Admitted(Some(pending)))
            }
            Creation::Count | Creation::Refuse => Err(StoreError::TooManyUploads { max }),
        }
    }
}
