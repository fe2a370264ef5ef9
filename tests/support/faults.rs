//! A fault-injecting TCP proxy between agents and the dev server, plus small helpers the
//! reliability tests share (a tight-loop file reader, metrics scraping).
//!
//! Modes apply to new and established connections alike:
//! * `Pass`: bytes flow both ways.
//! * `Delay(d)`: every chunk from the client waits `d` before it is forwarded (a slow server).
//! * `Cut`: new connections are reset at once and established ones are reset (connection
//!   refused / reset by peer, as when the server process dies).
//! * `BlackHole`: connections are accepted but nothing is forwarded or answered, and
//!   established connections stall — like a network partition. When the hole closes, those
//!   connections are reset (as by a stateful firewall that forgot them), so no request sent
//!   into the hole reaches the server late.
//!
//! The proxy counts connection attempts and HTTP requests seen (request lines forwarded), so a
//! test can prove a client backs off instead of hot-looping.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Pass,
    Delay(Duration),
    Cut,
    BlackHole,
}

pub struct FaultProxy {
    pub addr: String,
    mode: watch::Sender<Mode>,
    /// TCP connections accepted (whatever the mode).
    pub connections: Arc<AtomicU64>,
    /// HTTP request lines forwarded to the server.
    pub requests: Arc<AtomicU64>,
}

impl FaultProxy {
    pub async fn start(upstream: &str) -> FaultProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = format!("http://{}", listener.local_addr().expect("proxy address"));
        let upstream = upstream.trim_start_matches("http://").to_string();
        let (mode, rx) = watch::channel(Mode::Pass);
        let connections = Arc::new(AtomicU64::new(0));
        let requests = Arc::new(AtomicU64::new(0));
        let (c, r) = (connections.clone(), requests.clone());
        tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else { return };
                c.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(serve(inbound, upstream.clone(), rx.clone(), r.clone()));
            }
        });
        FaultProxy { addr, mode, connections, requests }
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    pub fn mode(&self) -> Mode {
        *self.mode.borrow()
    }

    /// (connections, requests) so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.connections.load(Ordering::Relaxed), self.requests.load(Ordering::Relaxed))
    }
}

/// Closes with RST instead of FIN (SO_LINGER 0): "connection reset by peer".
fn reset(stream: &tokio::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

fn count_requests(chunk: &[u8]) -> u64 {
    chunk.windows(11).filter(|w| *w == b" HTTP/1.1\r\n").count() as u64
}

async fn serve(
    inbound: tokio::net::TcpStream,
    upstream: String,
    mut rx: watch::Receiver<Mode>,
    requests: Arc<AtomicU64>,
) {
    // A new connection during a black hole waits, unanswered, until the hole closes.
    let mode = *rx.borrow_and_update();
    match mode {
        Mode::Cut => return reset(&inbound),
        Mode::BlackHole => {
            let _ = rx.changed().await;
            return reset(&inbound);
        }
        Mode::Pass | Mode::Delay(_) => {}
    }
    let Ok(outbound) = tokio::net::TcpStream::connect(&upstream).await else { return reset(&inbound) };
    let mut inbound = inbound;
    let mut outbound = outbound;
    let mut cbuf = vec![0u8; 64 * 1024];
    let mut ubuf = vec![0u8; 64 * 1024];
    loop {
        let mode = *rx.borrow_and_update();
        match mode {
            Mode::Cut => {
                reset(&inbound);
                return;
            }
            Mode::BlackHole => {
                // Stall: read nothing, forward nothing, until the mode changes; then reset, as
                // a stateful firewall that forgot the flow would (no stale request arrives late).
                let _ = rx.changed().await;
                reset(&inbound);
                return;
            }
            Mode::Pass | Mode::Delay(_) => {}
        }
        tokio::select! {
            r = inbound.read(&mut cbuf) => {
                let n = match r { Ok(0) | Err(_) => return, Ok(n) => n };
                if let Mode::Delay(d) = mode {
                    tokio::time::sleep(d).await;
                }
                requests.fetch_add(count_requests(&cbuf[..n]), Ordering::Relaxed);
                if outbound.write_all(&cbuf[..n]).await.is_err() {
                    return;
                }
            }
            r = outbound.read(&mut ubuf) => {
                let n = match r { Ok(0) | Err(_) => return, Ok(n) => n };
                if inbound.write_all(&ubuf[..n]).await.is_err() {
                    return;
                }
            }
            _ = rx.changed() => {}
        }
    }
}

/// A thread that reads `path` in a tight loop and checks every read with `ok` (true = a
/// complete, acceptable content). Missing files count as misses only when `must_exist`.
pub struct Reader {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<ReadStats>>,
}

#[derive(Debug, Default, Clone)]
pub struct ReadStats {
    pub reads: u64,
    pub bad: u64,
    pub missing: u64,
    /// The first bad content seen (lengths only, never key material).
    pub first_bad: Option<String>,
}

impl Reader {
    pub fn start(path: PathBuf, ok: impl Fn(&str) -> bool + Send + 'static) -> Reader {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut stats = ReadStats::default();
            while !s.load(Ordering::Relaxed) {
                match std::fs::read(&path) {
                    Ok(bytes) => {
                        stats.reads += 1;
                        let text = String::from_utf8_lossy(&bytes);
                        if !ok(&text) {
                            stats.bad += 1;
                            if stats.first_bad.is_none() {
                                stats.first_bad = Some(format!("{} bytes", bytes.len()));
                            }
                        }
                    }
                    Err(_) => stats.missing += 1,
                }
            }
            stats
        });
        Reader { stop, handle: Some(handle) }
    }

    pub fn finish(mut self) -> ReadStats {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().expect("reader").join().expect("reader thread")
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// GET over plain HTTP/1.0: (status, body); (0, "") when nothing answers.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else { return (0, String::new()) };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, text.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
}

/// Sum of every sample of a metric family whose labels contain all of `labels`.
pub fn metric_sum(metrics: &str, family: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(family) && l[family.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Sum of a metric family scraped from an agent's `/metrics`.
pub fn scrape(listen: &str, family: &str, labels: &[&str]) -> f64 {
    metric_sum(&http_get(listen, "/metrics").1, family, labels)
}
