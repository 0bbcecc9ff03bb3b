//! Leases shared through a real PostgreSQL (`FERRY_TEST_POSTGRES`), two or three instances
//! (lockers with pools of their own) in a schema of their own.

use super::super::tests::{Db, id, record};
use super::*;
use crate::meta::MetaStore;

/// Short leases, so that lapses are quick to wait for.
const QUICK: LeaseTiming = LeaseTiming {
    ttl: Duration::from_secs(3),
    margin: Duration::from_secs(1),
};

async fn instance(db: &Db, name: &str, timing: LeaseTiming) -> (Arc<PgMetaStore>, PgLocker) {
    let meta = Arc::new(db.store(name).await);
    let locker = PgLocker::start(meta.clone(), timing).await.unwrap();
    (meta, locker)
}

fn bump(info: &mut crate::model::UploadInfo) -> Result<()> {
    info.offset += 1;
    Ok(())
}

#[tokio::test]
async fn one_holder_across_instances_and_epochs_grow() {
    let db = Db::new().await;
    let (ma, a) = instance(&db, "a", LeaseTiming::default()).await;
    let (_, b) = instance(&db, "b", LeaseTiming::default()).await;
    let u = id(1);
    ma.insert(&record(u)).await.unwrap();
    let first = a.try_acquire(u).await.unwrap();
    assert!(matches!(b.try_acquire(u).await, Err(StoreError::Busy(_))));
    assert!(matches!(a.try_acquire(u).await, Err(StoreError::Busy(_))));
    assert!(
        !first.is_taken_over(),
        "try_acquire never disturbs a holder"
    );
    let e1 = first.epoch();
    drop(first);
    // Released in the background: the next grant follows promptly.
    let started = Instant::now();
    let second = loop {
        match b.try_acquire(u).await {
            Ok(l) => break l,
            Err(StoreError::Busy(_)) if started.elapsed() < Duration::from_secs(2) => {
                tokio::time::sleep(Duration::from_millis(10)).await
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert!(second.epoch() > e1);
    assert!(matches!(second.fence(), crate::data::Fence::Shared(..)));
    drop(second);
    // An upload that does not exist (a request for a wrong id) leaves no lease row behind.
    let nobody = id(2);
    drop(a.try_acquire(nobody).await.unwrap());
    let client = db.client().await;
    let started = Instant::now();
    loop {
        let rows = client
            .query(
                "SELECT 1 FROM ferry_leases WHERE id = $1",
                &[&nobody.to_string()],
            )
            .await
            .unwrap();
        if rows.is_empty() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(2), "the row stays");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    db.drop_schema().await;
}

/// A holder on another instance that is alive hands the upload over within 2 s: it hears the
/// request (NOTIFY), lets go, and the newcomer's lease fences the old one's commits.
#[tokio::test]
async fn takeover_from_a_live_holder_on_another_instance_is_prompt_and_fenced() {
    let db = Db::new().await;
    let (ma, a) = instance(&db, "a", LeaseTiming::default()).await;
    let (mb, b) = instance(&db, "b", LeaseTiming::default()).await;
    for round in 0..5u8 {
        let u = id(10 + round);
        ma.insert(&record(u)).await.unwrap();
        let held = a.acquire(u).await.unwrap();
        let old = held.epoch();
        ma.update_fenced(u, old, Box::new(bump)).await.unwrap();
        // The holder, like a request, commits and lets go when asked.
        let holder = tokio::spawn(async move {
            tokio::time::timeout(Duration::from_secs(5), held.taken_over())
                .await
                .expect("the holder hears the takeover request");
            drop(held);
        });
        let started = Instant::now();
        let new = b.acquire(u).await.unwrap();
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(2),
            "round {round}: took {took:?}"
        );
        holder.await.unwrap();
        assert!(new.epoch() > old);
        // The old epoch can commit nothing any more; the new one can.
        let late = ma.update_fenced(u, old, Box::new(bump)).await;
        assert!(
            matches!(late, Err(StoreError::Fenced { .. })),
            "round {round}: {late:?}"
        );
        let info = mb
            .update_fenced(u, new.epoch(), Box::new(bump))
            .await
            .unwrap();
        assert_eq!(info.offset, 2);
    }
    db.drop_schema().await;
}

/// A takeover request whose notification never arrives (written into the row only) reaches
/// the holder with its next renewal.
#[tokio::test]
async fn a_request_without_its_notification_is_read_from_the_row() {
    let db = Db::new().await;
    let (_, a) = instance(&db, "a", QUICK).await;
    let u = id(20);
    let held = a.acquire(u).await.unwrap();
    let client = db.client().await;
    client
        .execute(
            "UPDATE ferry_leases SET wanted_at = now() WHERE id = $1",
            &[&u.to_string()],
        )
        .await
        .unwrap();
    // A renewal comes every second here.
    tokio::time::timeout(Duration::from_secs(3), held.taken_over())
        .await
        .expect("the renewal reads the request");
    db.drop_schema().await;
}

/// A holder that died keeps nobody waiting past its lease: the newcomer gets the upload once
/// it lapses, and the dead one's reservations are skipped.
#[tokio::test]
async fn a_dead_holders_lease_lapses_and_its_reservations_are_skipped() {
    let db = Db::new().await;
    let (ma, a) = instance(&db, "a", QUICK).await;
    let (_, b) = instance(&db, "b", QUICK).await;
    let u = id(30);
    ma.insert(&record(u)).await.unwrap();
    let held = a.acquire(u).await.unwrap();
    let crate::data::Fence::Shared(old, reservations) = held.fence() else {
        panic!("a shared lease")
    };
    reservations.reserve(7).await.unwrap();
    // Dies: no release, no renewal.
    std::mem::forget(held);
    drop(a);
    let started = Instant::now();
    let new = b.acquire(u).await.unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(1) && waited < QUICK.ttl + Duration::from_secs(2),
        "{waited:?}"
    );
    let crate::data::Fence::Shared(epoch, fresh) = new.fence() else {
        panic!("a shared lease")
    };
    assert!(epoch > old);
    assert_eq!(fresh.reserved_before(), 7, "a successor starts past them");
    // The dead holder's reservations are refused now.
    assert!(matches!(
        reservations.reserve(8).await,
        Err(StoreError::Fenced { .. })
    ));
    fresh.reserve(8).await.unwrap();
    db.drop_schema().await;
}

/// A holder that cannot renew (its table gone for a while) stops writing `margin` before its
/// lease could lapse, and says so through its takeover signal.
#[tokio::test]
async fn a_holder_that_cannot_renew_stops_before_its_lease_lapses() {
    let db = Db::new().await;
    let (_, a) = instance(&db, "a", QUICK).await;
    let u = id(40);
    let granted = Instant::now();
    let held = a.acquire(u).await.unwrap();
    let client = db.client().await;
    client
        .batch_execute("ALTER TABLE ferry_leases RENAME TO ferry_leases_away")
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), held.taken_over())
        .await
        .expect("stopped");
    let stopped = granted.elapsed();
    assert!(held.is_lost(), "lost, not wanted: the server's failure");
    client
        .batch_execute("ALTER TABLE ferry_leases_away RENAME TO ferry_leases")
        .await
        .unwrap();
    // Its last renewal went out at most a renewal interval after the grant; it stops by
    // then + ttl − margin, and not before ttl − margin after the grant.
    let (ttl, margin) = (QUICK.ttl, QUICK.margin);
    assert!(
        stopped >= ttl - margin - Duration::from_millis(50),
        "{stopped:?}"
    );
    assert!(
        stopped <= ttl / 3 + ttl - margin + Duration::from_millis(500),
        "{stopped:?}"
    );
    drop(held);
    db.drop_schema().await;
}

/// Many requests of three instances racing for one upload, round after round: never two
/// holders at once, and epochs only grow.
#[tokio::test]
async fn racing_instances_never_hold_one_upload_twice() {
    let db = Db::new().await;
    let mut lockers = Vec::new();
    let mut metas = Vec::new();
    for name in ["a", "b", "c"] {
        let (meta, locker) = instance(&db, name, LeaseTiming::default()).await;
        metas.push(meta);
        lockers.push(locker);
    }
    let u = id(50);
    metas[0].insert(&record(u)).await.unwrap();
    let holding = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let last_epoch = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for n in 0..30 {
        let locker = lockers[n % 3].clone();
        let (holding, last_epoch) = (holding.clone(), last_epoch.clone());
        tasks.push(tokio::spawn(async move {
            let lease = match locker.acquire(u).await {
                Ok(l) => l,
                Err(StoreError::Busy(_)) => return false,
                Err(e) => panic!("{e}"),
            };
            use std::sync::atomic::Ordering::SeqCst;
            assert_eq!(holding.fetch_add(1, SeqCst), 0, "two holders at once");
            let before = last_epoch.swap(lease.epoch(), SeqCst);
            assert!(
                lease.epoch() > before,
                "epoch {} after {before}",
                lease.epoch()
            );
            // Writes a little, or until asked to let go.
            tokio::select! {
                () = lease.taken_over() => {}
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
            holding.fetch_sub(1, SeqCst);
            drop(lease);
            true
        }));
    }
    let mut granted = 0;
    for t in tasks {
        granted += usize::from(t.await.unwrap());
    }
    assert!(granted >= 20, "only {granted} of 30 got the upload");
    db.drop_schema().await;
}

/// A renewal that hangs (the tables locked by another session) delays nobody's stop: the
/// margin is enforced on its own timer. Once lapsed, the lease is not revived by a later
/// renewal, and the holder commits and reserves nothing more, though nobody took it.
#[tokio::test]
async fn a_renewal_that_hangs_stops_the_holder_in_time_and_a_lapsed_lease_stays_lapsed() {
    let db = Db::new().await;
    let (ma, a) = instance(&db, "a", QUICK).await;
    let u = id(60);
    ma.insert(&record(u)).await.unwrap();
    let granted = Instant::now();
    let held = a.acquire(u).await.unwrap();
    let crate::data::Fence::Shared(epoch, reservations) = held.fence() else {
        panic!("a shared lease")
    };
    let locker = db.client().await;
    locker
        .batch_execute("BEGIN; LOCK TABLE ferry_leases, ferry_instances IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), held.taken_over())
        .await
        .expect("stopped while its renewal hangs");
    let stopped = granted.elapsed();
    assert!(held.is_lost());
    let (ttl, margin) = (QUICK.ttl, QUICK.margin);
    assert!(
        stopped >= ttl - margin - Duration::from_millis(50)
            && stopped <= ttl / 3 + ttl - margin + Duration::from_millis(500),
        "{stopped:?}"
    );
    // Held past the lapse, then let go: the renewals queued behind the lock find it lapsed.
    tokio::time::sleep_until(granted + ttl + Duration::from_millis(300)).await;
    locker.batch_execute("COMMIT").await.unwrap();
    tokio::time::sleep(ttl / 3 + Duration::from_millis(500)).await;
    let client = db.client().await;
    let live: bool = client
        .query_one(
            "SELECT expires_at > now() FROM ferry_leases WHERE id = $1",
            &[&u.to_string()],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!live, "a lapsed lease was renewed");
    let late = ma.update_fenced(u, epoch, Box::new(bump)).await;
    assert!(matches!(late, Err(StoreError::Unavailable(_))), "{late:?}");
    let reserved = reservations.reserve(3).await;
    assert!(
        matches!(reserved, Err(StoreError::Unavailable(_))),
        "{reserved:?}"
    );
    assert_eq!(ma.get(u).await.unwrap().unwrap().offset, 0);
    drop(held);
    db.drop_schema().await;
}

/// A takeover request names the lease it wants ended: one for an earlier lease of the upload
/// (a newcomer here that asked while its predecessor's release was on its way) ends no later
/// one; the request for the current one does.
#[tokio::test]
async fn a_request_for_an_earlier_lease_ends_no_later_one() {
    let db = Db::new().await;
    let (ma, a) = instance(&db, "a", LeaseTiming::default()).await;
    let u = id(70);
    ma.insert(&record(u)).await.unwrap();
    // Released and taken again at once, many times: the newcomer waits for the release
    // instead of asking its own instance, and is never ended by its own request.
    let mut lease = a.acquire(u).await.unwrap();
    for round in 0..30 {
        let before = lease.epoch();
        drop(lease);
        lease = a.acquire(u).await.unwrap();
        assert!(lease.epoch() > before, "round {round}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!lease.is_taken_over(), "ended by a request of its own");
    let client = db.client().await;
    let notify = |epoch: u64| format!("SELECT pg_notify('{}', '{u} {epoch} a')", a.inner.channel);
    client
        .batch_execute(&notify(lease.epoch() - 1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !lease.is_taken_over(),
        "ended by a request for an earlier lease"
    );
    client.batch_execute(&notify(lease.epoch())).await.unwrap();
    tokio::time::timeout(Duration::from_secs(2), lease.taken_over())
        .await
        .expect("the request for it ends it");
    assert!(!lease.is_lost());
    db.drop_schema().await;
}

/// An exclusive holder of the database (`ferry fsck --repair`, or a build from before leases)
/// keeps instances from starting; an instance of a name another live process serves under
/// is refused, one whose former process died is not.
#[tokio::test]
async fn instances_refuse_an_exclusive_holder_and_a_live_namesake() {
    let db = Db::new().await;
    let first = Arc::new(db.store("a").await);
    let hold = first.hold_exclusive().await.unwrap().expect("held");
    assert!(first.hold_exclusive().await.unwrap().is_none(), "held once");
    let refused = PgLocker::start(first.clone(), QUICK).await;
    assert!(
        matches!(&refused, Err(StoreError::WrongStore(m)) if m.contains("held exclusively")),
        "{refused:?}"
    );
    drop(hold);
    let a = PgLocker::start(first, QUICK).await.unwrap();
    let twin = Arc::new(db.store("a").await);
    let started = Instant::now();
    let refused = PgLocker::start(twin.clone(), QUICK).await;
    assert!(
        matches!(&refused, Err(StoreError::WrongStore(m)) if m.contains("another instance named")),
        "{refused:?}"
    );
    assert!(started.elapsed() < QUICK.ttl, "{:?}", started.elapsed());
    // Killed (no leave): its successor under the name waits out one renewal, then starts.
    drop(a);
    // (A statement it had sent may still run: past that.)
    tokio::time::sleep(Duration::from_millis(200)).await;
    PgLocker::start(twin, QUICK).await.unwrap();
    db.drop_schema().await;
}
