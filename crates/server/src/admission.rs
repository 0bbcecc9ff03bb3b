//! Which requests may create uploads: a token bucket per client address, so one client
//! creating uploads in a loop cannot crowd out the others or fill the server with records.
//! (The bound on unfinished uploads in all lives in the store: it counts records.)
//!
//! An upload that finishes soon after its creation gives its token back. What the bucket
//! bounds is then the rate of uploads left unfinished, the abuse, while a client sending a
//! folder of small files (ferry's own client does over 1,500 a second on loopback, Uppy a few
//! hundred) is never slowed. A crate such as governor has no way to give a token back, so the
//! bucket (GCRA, a few lines) is written here.

use crate::error::ApiError;
use ferry_proto::UploadId;
use http::HeaderMap;
use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The creation rate allowed per client address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreationRate {
    /// Creations per second, sustained.
    pub per_second: NonZeroU32,
    /// Creations allowed at once after a quiet spell.
    pub burst: NonZeroU32,
}

impl CreationRate {
    /// The default: generous for people and parallel clients (tus-js-client's
    /// `parallelUploads` creates a handful at once; `ferry upload --files-at-once 1000` a
    /// thousand, each one's token coming back as it finishes), small enough that a loop leaving
    /// uploads unfinished cannot create millions of records an hour.
    pub const DEFAULT: CreationRate = CreationRate {
        per_second: NonZeroU32::new(50).unwrap(),
        burst: NonZeroU32::new(1000).unwrap(),
    };

    /// Time one token takes to come back.
    fn interval(self) -> Duration {
        Duration::from_secs(1) / self.per_second.get()
    }

    /// Time an empty bucket takes to fill: a token given back later changes nothing.
    fn refill(self) -> Duration {
        self.interval() * self.burst.get()
    }
}

/// Addresses (and recent creations) tracked before idle entries are dropped early.
const MAX_TRACKED: usize = 100_000;

/// Per-address token buckets.
#[derive(Debug)]
pub struct CreationLimiter {
    rate: CreationRate,
    state: Mutex<Buckets>,
}

#[derive(Debug, Default)]
struct Buckets {
    /// Per address: the time at which its bucket is full again (GCRA's theoretical arrival
    /// time). An address whose time has passed holds a full bucket and needs no entry.
    full_at: HashMap<IpAddr, Instant>,
    /// Uploads created lately, by whom and when: they give the token back when they finish.
    recent: HashMap<UploadId, (IpAddr, Instant)>,
    /// When idle entries were last dropped because the maps were full.
    cleaned_at: Option<Instant>,
}

/// The outcome of taking a token: `Err` with the time until one is free.
fn take(full_at: Option<Instant>, now: Instant, rate: CreationRate) -> Result<Instant, Duration> {
    let next = full_at.map_or(now, |t| t.max(now)) + rate.interval();
    let ahead = next - now;
    match ahead.checked_sub(rate.refill()) {
        Some(wait) if !wait.is_zero() => Err(wait),
        _ => Ok(next),
    }
}

impl CreationLimiter {
    /// Buckets of `rate`.
    pub fn new(rate: CreationRate) -> Self {
        Self {
            rate,
            state: Mutex::new(Buckets::default()),
        }
    }

    /// Takes a token for `client`, or answers 429 with the seconds until one is free.
    pub fn check(&self, client: IpAddr) -> Result<(), ApiError> {
        let key = bucket_of(client);
        let now = Instant::now();
        let mut b = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if (b.full_at.len() > MAX_TRACKED || b.recent.len() > MAX_TRACKED)
            && b.cleaned_at
                .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            // At most once a second: with that many active addresses a scan per creation
            // would cost more than the buckets save.
            b.forget_idle(now, self.rate);
            b.cleaned_at = Some(now);
        }
        match take(b.full_at.get(&key).copied(), now, self.rate) {
            Ok(next) => {
                b.full_at.insert(key, next);
                Ok(())
            }
            Err(wait) => Err(ApiError::too_many(
                "too many unfinished uploads created from this address; slow down",
                wait.as_secs() + 1,
            )),
        }
    }

    /// Remembers that `client` created `id` (its token comes back if it finishes soon).
    pub fn created(&self, client: IpAddr, id: UploadId) {
        let mut b = self.state.lock().unwrap_or_else(|p| p.into_inner());
        b.recent.insert(id, (bucket_of(client), Instant::now()));
    }

    /// Upload `id` finished: if it was created lately, its creator gets the token back.
    pub fn finished(&self, id: UploadId) {
        let mut b = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let Some((key, at)) = b.recent.remove(&id) else {
            return;
        };
        if at.elapsed() >= self.rate.refill() {
            return;
        }
        if let Some(t) = b.full_at.get_mut(&key) {
            *t = t.checked_sub(self.rate.interval()).unwrap_or(*t);
        }
    }

    /// Drops the entries that no longer matter: full buckets, and creations too old to give a
    /// token back. Memory follows the clients active lately, not every address ever seen.
    pub fn forget_idle(&self) {
        let mut b = self.state.lock().unwrap_or_else(|p| p.into_inner());
        b.forget_idle(Instant::now(), self.rate);
        b.full_at.shrink_to_fit();
        b.recent.shrink_to_fit();
    }
}

impl Buckets {
    fn forget_idle(&mut self, now: Instant, rate: CreationRate) {
        self.full_at.retain(|_, t| *t > now);
        self.recent
            .retain(|_, (_, at)| now.duration_since(*at) < rate.refill());
    }
}

/// The bucket an address draws from: an IPv6 client is given a /64 (one host can use all of
/// it), an IPv4 client its own address.
fn bucket_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut s = v6.segments();
                s[4..].fill(0);
                IpAddr::V6(s.into())
            }
        },
    }
}

/// The client a request comes from: the connection's peer, or behind a trusted proxy the
/// address that proxy recorded.
pub fn client_of(peer: IpAddr, headers: &HeaderMap, trust_proxy: bool) -> IpAddr {
    if !trust_proxy {
        return peer;
    }
    let text = |name: &str| crate::last_field(headers, name);
    ferry_proto::http::forwarded_client(text("forwarded"), text("x-forwarded-for")).unwrap_or(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(per_second: u32, burst: u32) -> CreationRate {
        CreationRate {
            per_second: NonZeroU32::new(per_second).unwrap(),
            burst: NonZeroU32::new(burst).unwrap(),
        }
    }

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let r = rate(10, 3);
        let t0 = Instant::now();
        let mut full_at = None;
        for _ in 0..3 {
            full_at = Some(take(full_at, t0, r).unwrap());
        }
        let wait = take(full_at, t0, r).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        assert!(take(full_at, t0 + Duration::from_millis(100), r).is_ok());
        // Idle for a long time: a full bucket, not more.
        let later = t0 + Duration::from_secs(3600);
        let mut f = full_at;
        for _ in 0..3 {
            f = Some(take(f, later, r).unwrap());
        }
        assert!(take(f, later, r).is_err());
    }

    #[test]
    fn ipv6_clients_share_a_bucket_per_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(bucket_of(a), bucket_of(b));
        assert_ne!(bucket_of(a), bucket_of(c));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(bucket_of(mapped), "192.0.2.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn an_upload_finished_soon_gives_its_token_back() {
        let l = CreationLimiter::new(rate(1, 3));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for i in 0..10u8 {
            l.check(ip).unwrap();
            let id = UploadId::from_bytes([i; 16]);
            l.created(ip, id);
            l.finished(id);
        }
        for _ in 0..3 {
            l.check(ip).unwrap();
        }
        let e = l.check(ip).unwrap_err().into_response();
        assert_eq!(e.status(), 429);
        let retry: u64 = e.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=2).contains(&retry), "{retry}");
        l.check("192.0.2.2".parse().unwrap())
            .expect("another address has its own bucket");
    }

    #[test]
    fn idle_entries_are_forgotten() {
        let l = CreationLimiter::new(rate(1000, 1));
        l.check("192.0.2.1".parse().unwrap()).unwrap();
        l.created("192.0.2.1".parse().unwrap(), UploadId::from_bytes([1; 16]));
        std::thread::sleep(Duration::from_millis(5));
        l.forget_idle();
        let b = l.state.lock().unwrap();
        assert!(b.full_at.is_empty() && b.recent.is_empty(), "{b:?}");
    }
}
