//! A fault-injecting TCP proxy for tests: delay, throttle, cut after N bytes, stall.
//! Faults apply to the client→server direction (the upload direction) unless noted, and can
//! be changed while connections are open.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
}

pub struct Proxy {
    pub addr: SocketAddr,
    faults: Arc<Mutex<Faults>>,
    stop: Arc<AtomicBool>,
    /// Total upload bytes forwarded to the server.
    pub forwarded: Arc<AtomicU64>,
}

impl Proxy {
    pub fn start(target: SocketAddr, faults: Faults) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let faults = Arc::new(Mutex::new(faults));
        let stop = Arc::new(AtomicBool::new(false));
        let forwarded = Arc::new(AtomicU64::new(0));
        let (f, s, fw) = (faults.clone(), stop.clone(), forwarded.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        let Ok(server) = TcpStream::connect(target) else {
                            continue;
                        };
                        spawn_pair(client, server, f.clone(), s.clone(), fw.clone());
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

fn spawn_pair(
    client: TcpStream,
    server: TcpStream,
    faults: Arc<Mutex<Faults>>,
    stop: Arc<AtomicBool>,
    forwarded: Arc<AtomicU64>,
) {
    let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let (f2, st2) = (faults.clone(), stop.clone());
    std::thread::spawn(move || pump(client, server, faults, stop, Some(forwarded)));
    std::thread::spawn(move || pump(s2, c2, f2, st2, None));
}

fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    faults: Arc<Mutex<Faults>>,
    stop: Arc<AtomicBool>,
    upload_counter: Option<Arc<AtomicU64>>,
) {
    let upload = upload_counter.is_some();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total: u64 = 0;
    let started = Instant::now();
    let _ = from.set_read_timeout(Some(Duration::from_millis(200)));
    loop {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let f = faults.lock().unwrap().clone();
        let mut want = buf.len();
        if upload {
            if let Some(cut) = f.cut_after {
                if total >= cut {
                    break;
                }
                want = want.min((cut - total) as usize);
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
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        total += n as u64;
        if let Some(c) = &upload_counter {
            c.fetch_add(n as u64, Ordering::Relaxed);
        }
        if upload && let Some(rate) = f.rate {
            let due = Duration::from_secs_f64(total as f64 / rate as f64);
            let elapsed = started.elapsed();
            if due > elapsed {
                std::thread::sleep(due - elapsed);
            }
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
