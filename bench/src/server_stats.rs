//! The `GET /stats` document both benchmark servers serve, and the load generator's client
//! for it.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a server reports about itself.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServerStats {
    /// Resident set size now (`VmRSS` in `/proc/self/status`), KiB.
    pub vm_rss_kib: u64,
    /// Peak resident set size (`VmHWM`), KiB.
    pub vm_hwm_kib: u64,
    /// WebSocket connections open now.
    pub connections: u64,
    /// CPU time (user + system) the process used since it started, ms (0 if unknown). Kept
    /// for readers of older reports; [`cpu_us`](Self::cpu_us) is the same, finer.
    #[serde(default)]
    pub cpu_ms: u64,
    /// The same in µs (0 if unknown, as from a server built before it was added: see
    /// [`cpu_time_us`](Self::cpu_time_us)).
    #[serde(default)]
    pub cpu_us: u64,
}

impl ServerStats {
    /// This process's memory figures (0 where `/proc` is unavailable) and the given count.
    pub fn current(connections: u64) -> Self {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|kib| kib.parse().ok())
                .unwrap_or(0)
        };
        let cpu = crate::sys::cpu_time();
        Self {
            vm_rss_kib: field("VmRSS:"),
            vm_hwm_kib: field("VmHWM:"),
            connections,
            cpu_ms: cpu.as_millis() as u64,
            cpu_us: cpu.as_micros() as u64,
        }
    }
}

impl ServerStats {
    /// CPU time in µs: `cpu_us`, or `cpu_ms` from a server built before `cpu_us` was added
    /// (`bench/ab_burst.sh` compares builds of older commits).
    pub fn cpu_time_us(&self) -> u64 {
        if self.cpu_us > 0 {
            self.cpu_us
        } else {
            self.cpu_ms * 1000
        }
    }
}

/// `host:port` of a `ws://host:port/...` (or `http://`) URL.
pub fn authority(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.split('/').next().unwrap_or(rest)
}

/// Fetches `GET /stats` from the server behind a WebSocket URL (plain HTTP/1.1, loopback only).
///
/// # Errors
///
/// Connection failures, a non-200 answer, or a body that is not a [`ServerStats`] document.
pub async fn fetch(ws_url: &str) -> Result<ServerStats, String> {
    let host = authority(ws_url);
    let mut stream = tokio::net::TcpStream::connect(host)
        .await
        .map_err(|e| format!("GET http://{host}/stats: {e}"))?;
    let request = format!("GET /stats HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("GET http://{host}/stats: {e}"))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .await
        .map_err(|e| format!("GET http://{host}/stats: {e}"))?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("GET http://{host}/stats: malformed response"))?;
    if !head.starts_with("HTTP/1.1 200") {
        let status = head.lines().next().unwrap_or_default();
        return Err(format!("GET http://{host}/stats: {status}"));
    }
    serde_json::from_str(body).map_err(|e| format!("GET http://{host}/stats: {e}"))
}

/// [`fetch`] for several servers at once (in order).
///
/// # Errors
///
/// The first failure.
pub async fn fetch_all(ws_urls: &[String]) -> Result<Vec<ServerStats>, String> {
    let mut all = Vec::with_capacity(ws_urls.len());
    for url in ws_urls {
        all.push(fetch(url).await?);
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_is_found_in_templates() {
        assert_eq!(authority("ws://127.0.0.1:3000/ws/{room}"), "127.0.0.1:3000");
        assert_eq!(authority("127.0.0.1:3000"), "127.0.0.1:3000");
    }

    /// A server built before `cpu_us` reports only `cpu_ms`: its CPU time is read from that,
    /// not as 0 (which made the per-CPU figure vanish from `ab_burst.sh` comparisons).
    #[test]
    fn cpu_time_falls_back_to_whole_milliseconds_from_older_servers() {
        let old: ServerStats =
            serde_json::from_str(r#"{"vm_rss_kib":1,"vm_hwm_kib":1,"connections":0,"cpu_ms":42}"#)
                .unwrap();
        assert_eq!(old.cpu_time_us(), 42_000);
        let new = ServerStats::current(0);
        assert_eq!(new.cpu_time_us(), new.cpu_us);
        assert_eq!(new.cpu_us / 1000, new.cpu_ms);
    }

    #[test]
    fn this_process_has_a_resident_set() {
        let stats = ServerStats::current(3);
        assert!(stats.vm_rss_kib > 0);
        assert!(stats.vm_hwm_kib >= stats.vm_rss_kib);
        assert_eq!(stats.connections, 3);
    }
}
