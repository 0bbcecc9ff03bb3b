//! The locker's background tasks: renewal, the margin's enforcement, the listener.

use super::*;

/// Renews until `stop`, saying with each renewal that this instance serves, and tidies now
/// and then. Each statement is bounded by the renewal interval; the margin is enforced apart
/// ([`enforce`]), so a renewal that hangs stops nobody late.
pub(super) async fn keep(inner: Weak<Inner>, stop: CancellationToken) {
    let mut next_renewal = Instant::now();
    let mut next_tidy = Instant::now() + TIDY_EVERY;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep_until(next_renewal) => {}
        }
        let Some(inner) = inner.upgrade() else { return };
        let started = Instant::now();
        let every = inner.timing.renew_every();
        let me = &inner.meta;
        let name: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&me.instance];
        let seen = exec_for(me, every, "instance", SEEN, &name);
        let (seen, renewed) = futures_util::future::join(seen, inner.renew()).await;
        if let Err(e) = seen {
            tracing::debug!(error = %e, "saying this instance serves failed");
        }
        next_renewal = match renewed {
            Ok(()) => started + every,
            Err(e) => {
                tracing::warn!(error = %e, "renewing leases failed");
                Instant::now() + Duration::from_millis(500)
            }
        };
        // Apart from the renewals: a slow tidy must not delay the next one.
        if Instant::now() >= next_tidy {
            next_tidy = Instant::now() + TIDY_EVERY;
            let meta = inner.meta.clone();
            tokio::spawn(async move {
                for (what, sql) in [
                    ("lease tidying", TIDY_LEASES),
                    ("instance tidying", TIDY_INSTANCES),
                ] {
                    if let Err(e) = exec(&meta, what, sql, &[]).await {
                        tracing::debug!(error = %e, "{what} failed");
                    }
                }
            });
        }
    }
}

/// How often rows no upload needs are removed.
const TIDY_EVERY: Duration = Duration::from_secs(600);

/// Stops holders whose lease could lapse before it is renewed, until `stop`.
pub(super) async fn enforce(inner: Weak<Inner>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(inner) = inner.upgrade() else { return };
        inner.expire(Instant::now());
    }
}

/// Listens for takeover requests on a connection of its own until `stop`, reconnecting (and
/// reading the requests it may have missed) whenever it breaks.
pub(super) async fn listen(inner: Weak<Inner>, stop: CancellationToken) {
    let first = Duration::from_millis(200);
    let mut pause = first;
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let config = strong.meta.config.clone();
        let channel = strong.channel.clone();
        drop(strong);
        let mut listened = false;
        let session = listen_once(&inner, config, &channel, &mut listened);
        tokio::select! {
            () = stop.cancelled() => return,
            outcome = session => {
                if let Err(e) = outcome {
                    tracing::warn!(error = %e, "lease listener disconnected; reconnecting");
                }
            }
        }
        // Backing off only while connecting fails: a session that listened starts afresh.
        if listened {
            pause = first;
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// One listening session: connect, `LISTEN`, read the requests already in the rows, then
/// handle notifications until the connection ends.
async fn listen_once(
    inner: &Weak<Inner>,
    config: tokio_postgres::Config,
    channel: &str,
    listened: &mut bool,
) -> Result<()> {
    let unavailable = |e: tokio_postgres::Error| StoreError::Unavailable(format!("listen: {e}"));
    let (client, mut connection) = config.connect(tls(&config)?).await.map_err(unavailable)?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                    if tx.send(n.payload().to_string()).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    let _driver = AbortOnDrop(driver);
    client
        .batch_execute(&format!("LISTEN {channel}"))
        .await
        .map_err(unavailable)?;
    {
        let Some(strong) = inner.upgrade() else {
            return Ok(());
        };
        let instance = strong.meta.instance.clone();
        let rows = client
            .query(WANTED, &[&instance])
            .await
            .map_err(unavailable)?;
        *listened = true;
        strong.signal(rows.iter().filter_map(|r| {
            let id = UploadId::parse(&r.get::<_, String>(0)).ok()?;
            Some((id, u64::try_from(r.get::<_, i64>(1)).ok()?))
        }));
    }
    while let Some(payload) = rx.recv().await {
        let Some(strong) = inner.upgrade() else {
            return Ok(());
        };
        let mut words = payload.splitn(3, ' ');
        if let (Some(id), Some(epoch), Some(owner)) = (words.next(), words.next(), words.next())
            && owner == strong.meta.instance
            && let (Ok(id), Ok(epoch)) = (UploadId::parse(id), epoch.parse())
        {
            strong.signal([(id, epoch)]);
        }
    }
    Err(StoreError::Unavailable(
        "the listening connection closed".into(),
    ))
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
