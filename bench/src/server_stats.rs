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
    /// CPU time (user + system) the process used since it started, µs (0 if unknown).
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
        Self {
            vm_rss_kib: field("VmRSS:"),
            vm_hwm_kib: field("VmHWM:"),
            connections,
            cpu_us: crate::sys::cpu_time().as_micros() as u64,
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

    #[test]
    fn this_process_has_a_resident_set() {
        let stats = ServerStats::current(3);
        assert!(stats.vm_rss_kib > 0);
        assert!(stats.vm_hwm_kib >= stats.vm_rss_kib);
        assert_eq!(stats.connections, 3);
    }
}
