//! A fault-injecting TCP proxy for tests: delay, throttle, cut after N bytes, stall, reset,
//! corrupt.
//! Faults apply to the client→server direction (the upload direction) unless noted (or
//! `downstream` is set), and can be changed while connections are open.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Longest a rate-capped connection may send at line speed after a pause.
const MAX_BURST: Duration = Duration::from_millis(100);

/// What the proxy does to traffic.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Added once per forwarded read, both directions.
    pub delay: Duration,
    /// Upload rate cap per connection, bytes/s.
    pub rate: Option<u64>,
    /// Close a connection (both ways) after this many upload bytes on it.
    pub cut_after: Option<u64>,
    /// Stop forwarding (but keep the connection open) after this many upload bytes on it.
    pub stall_after: Option<u64>,
    /// Abort a connection (both ways, with a TCP RST: SO_LINGER 0) after this many upload bytes
    /// on it.
    pub reset_after: Option<u64>,
    /// Flip one byte of upload traffic, once per proxy: the byte at this position of the whole
    /// upload stream (all connections, counted like [`Proxy::forwarded`]).
    pub corrupt_at: Option<u64>,
    /// Close, once per proxy, the connection that carries this byte of the whole upload stream
    /// (all connections, counted like [`Proxy::forwarded`]): the cut lands at that point
    /// whichever connection the client happens to use for it.
    pub cut_at_total: Option<u64>,
    /// A schedule of cuts: connection `n` (counted from 0 in the order the proxy accepts them)
    /// is closed (both ways) after `cut_schedule[n]` upload bytes on it; connections past the
    /// end of the list are left alone (unless `cut_after` applies). Tests draw it from a seeded
    /// generator to replay the same schedule against different clients.
    pub cut_schedule: Vec<u64>,
    /// Extra delay per forwarded read, both directions: uniform in `[0, jitter)`, drawn from a
    /// generator seeded with `seed` (and the connection and direction), so a run replays.
    pub jitter: Duration,
    /// Seed for `jitter`.
    pub seed: u64,
    /// Half-open after this many bytes on a connection: the proxy closes its server side
    /// (the server sees the connection end) but keeps the client's socket open and silent,
    /// swallowing whatever the client sends, like a peer that vanished without a FIN/RST.
    pub half_open_after: Option<u64>,
    /// Apply the byte-counted faults (`rate`, `cut_after`, `cut_schedule`, `stall_after`,
    /// `reset_after`, `half_open_after`) to the server→client direction (downloads) instead.
    /// `corrupt_at` and [`Proxy::forwarded`] stay upload-direction.
    pub downstream: bool,
}

pub struct Proxy {
    pub addr: SocketAddr,
    faults: Arc<Mutex<Faults>>,
    stop: Arc<AtomicBool>,
    /// Total upload bytes forwarded to the server.
    pub forwarded: Arc<AtomicU64>,
    /// Connections accepted and paired with the server.
    pub connections: Arc<AtomicU64>,
    /// Bytes flipped by `corrupt_at` so far (0 or 1).
    pub corrupted: Arc<AtomicU64>,
}

/// What every pump of one proxy shares.
#[derive(Clone)]
struct Shared {
    faults: Arc<Mutex<Faults>>,
    stop: Arc<AtomicBool>,
    forwarded: Arc<AtomicU64>,
    corrupted: Arc<AtomicU64>,
    /// `cut_at_total` has cut its connection.
    cut_total: Arc<AtomicBool>,
}

impl Proxy {
    pub fn start(target: SocketAddr, faults: Faults) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let faults = Arc::new(Mutex::new(faults));
        let stop = Arc::new(AtomicBool::new(false));
        let forwarded = Arc::new(AtomicU64::new(0));
        let connections = Arc::new(AtomicU64::new(0));
        let corrupted = Arc::new(AtomicU64::new(0));
        let shared = Shared {
            faults: faults.clone(),
            stop: stop.clone(),
            forwarded: forwarded.clone(),
            corrupted: corrupted.clone(),
            cut_total: Arc::default(),
        };
        let conns = connections.clone();
        std::thread::spawn(move || {
            // Connections are numbered in the order they are accepted (for `cut_schedule`).
            let mut accepted = 0u64;
            while !shared.stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        let index = accepted;
                        accepted += 1;
                        // Connecting on its own thread: a connect that takes long (a lost SYN
                        // waits a second) must not hold up the connections behind it.
                        let (shared, conns) = (shared.clone(), conns.clone());
                        std::thread::spawn(move || {
                            let Ok(server) = TcpStream::connect(target) else {
                                return;
                            };
                            conns.fetch_add(1, Ordering::Relaxed);
                            spawn_pair(client, server, shared, index);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Proxy {
            addr,
            faults,
            stop,
            forwarded,
            connections,
            corrupted,
        }
    }

    pub fn set(&self, faults: Faults) {
        *self.faults.lock().unwrap() = faults;
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn spawn_pair(client: TcpStream, server: TcpStream, shared: Shared, index: u64) {
    let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let back = shared.clone();
    let reset = Arc::new(AtomicBool::new(false));
    let reset2 = reset.clone();
    let half = Arc::new(AtomicBool::new(false));
    let half2 = half.clone();
    std::thread::spawn(move || pump(client, server, shared, true, reset, half, index));
    std::thread::spawn(move || pump(s2, c2, back, false, reset2, half2, index));
}

/// xorshift64*, for jitter.
fn next_rand(x: &mut u64) -> u64 {
    *x ^= *x >> 12;
    *x ^= *x << 25;
    *x ^= *x >> 27;
    x.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

/// The half-open fault fired on the pump that forwards `from` → `to`: drop the server side,
/// keep the client's socket open and silent until the proxy stops (bounded: 5 minutes).
fn go_half_open(from: &mut TcpStream, to: &TcpStream, upload: bool, shared: &Shared) {
    let (client, server) = if upload { (&*from, to) } else { (to, &*from) };
    let _ = server.shutdown(Shutdown::Both);
    let mut sink = [0u8; 16 * 1024];
    let mut client = client;
    let _ = client.set_read_timeout(Some(Duration::from_millis(50)));
    let until = Instant::now() + Duration::from_secs(300);
    while !shared.stop.load(Ordering::Relaxed) && Instant::now() < until {
        if upload {
            // Swallow what the client sends (so its writes never block), answer nothing.
            match client.read(&mut sink) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => break,
            }
        } else {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Forwards `from` → `to` until either side closes. `reset` is shared by a pair's two pumps:
/// once set, both just drop their handles (no FIN), so the last close sends the RST.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    shared: Shared,
    upload: bool,
    reset: Arc<AtomicBool>,
    half: Arc<AtomicBool>,
    index: u64,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total: u64 = 0;
    // Rate pacing: `total` bytes are due `total / rate` after `started`.
    let mut started = Instant::now();
    let _ = from.set_read_timeout(Some(Duration::from_millis(200)));
    let seed = shared.faults.lock().unwrap().seed;
    let mut rng = (seed ^ (index << 1 | u64::from(upload))).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    loop {
        if shared.stop.load(Ordering::Relaxed)
            || reset.load(Ordering::Relaxed)
            || half.load(Ordering::Relaxed)
        {
            break;
        }
        let f = shared.faults.lock().unwrap().clone();
        let mut want = buf.len();
        // The direction the byte-counted faults apply to.
        let faulted = upload != f.downstream;
        if faulted {
            if let Some(limit) = f.half_open_after {
                if total >= limit {
                    half.store(true, Ordering::Relaxed);
                    go_half_open(&mut from, &to, upload, &shared);
                    return;
                }
                want = want.min((limit - total) as usize);
            }
            let scheduled = usize::try_from(index)
                .ok()
                .and_then(|i| f.cut_schedule.get(i).copied());
            let cut = match (f.cut_after, scheduled) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if let Some(cut) = cut {
                if total >= cut {
                    break;
                }
                want = want.min((cut - total) as usize);
            }
            if let Some(limit) = f.reset_after {
                if total >= limit {
                    // SO_LINGER 0: the close sends RST instead of FIN, to both peers. Shutting
                    // down the read sides sends nothing but wakes the other pump.
                    reset.store(true, Ordering::Relaxed);
                    for s in [&from, &to] {
                        let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
                        let _ = s.shutdown(Shutdown::Read);
                    }
                    return;
                }
                want = want.min((limit - total) as usize);
            }
            if let Some(stall) = f.stall_after
                && total >= stall
            {
                // Hold the connection open, forward nothing.
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            if let Some(stall) = f.stall_after {
                want = want.min((stall - total) as usize);
            }
            if let Some(rate) = f.rate {
                want = want.min((rate / 20).max(1) as usize);
            }
        }
        if upload && let Some(at) = f.cut_at_total {
            let before = shared.forwarded.load(Ordering::Relaxed);
            if before >= at {
                if !shared.cut_total.swap(true, Ordering::Relaxed) {
                    break;
                }
            } else {
                want = want.min((at - before) as usize);
            }
        }
        let n = match from.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                continue;
            }
            Err(_) => break,
        };
        if !f.delay.is_zero() {
            std::thread::sleep(f.delay);
        }
        if !f.jitter.is_zero() {
            let r = next_rand(&mut rng) % 1_000_000;
            std::thread::sleep(f.jitter.mul_f64(r as f64 / 1e6));
        }
        if upload && let Some(at) = f.corrupt_at {
            let before = shared.forwarded.load(Ordering::Relaxed);
            if (before..before + n as u64).contains(&at)
                && shared
                    .corrupted
                    .compare_exchange(0, 1, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                buf[(at - before) as usize] ^= 0x5a;
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        total += n as u64;
        if upload {
            shared.forwarded.fetch_add(n as u64, Ordering::Relaxed);
        }
        if faulted && let Some(rate) = f.rate {
            let due = Duration::from_secs_f64(total as f64 / rate as f64);
            let elapsed = started.elapsed();
            if due > elapsed {
                std::thread::sleep(due - elapsed);
            } else if elapsed - due > MAX_BURST {
                // An idle connection earns no credit beyond a short burst: a cap is a cap,
                // however long the client paused (hashing, waiting for an answer) before.
                started = Instant::now() - due - MAX_BURST;
            }
        }
    }
    if reset.load(Ordering::Relaxed) || half.load(Ordering::Relaxed) {
        // Reset: the last handle's close sends the RST. Half-open: the other pump holds the
        // client's socket open; closing it here would send the FIN the fault is about.
        return;
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
