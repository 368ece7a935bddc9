//! The kernel's TCP segment counters (`/proc/net/snmp`, `/proc/net/netstat`): how many segments
//! a run cost the whole machine, which is what tells a server that batches its writes from one
//! that sends each message on its own.
//!
//! The counters belong to the network namespace, not to a process: they count the servers'
//! writes, the load generator's own segments (publishers, acknowledgements) and Redis's traffic
//! alike, and anything else that runs on the machine meanwhile. Compared between two servers
//! measured the same way on an otherwise quiet machine, the difference is the servers'.

use std::collections::HashMap;

/// Machine-wide TCP segment counts since boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct TcpSegments {
    /// Every TCP segment sent (`Tcp: OutSegs`), pure acknowledgements included.
    pub all: u64,
    /// Segments that carried new data (`TcpExt: TCPOrigDataSent`).
    pub data: u64,
}

impl TcpSegments {
    /// Reads the counters now; `None` where `/proc/net` is missing or has no such fields (not
    /// Linux, or a kernel without `TCPOrigDataSent`).
    pub fn read() -> Option<Self> {
        let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
        let netstat = std::fs::read_to_string("/proc/net/netstat").ok()?;
        Some(Self {
            all: counter(&snmp, "Tcp", "OutSegs")?,
            data: counter(&netstat, "TcpExt", "TCPOrigDataSent")?,
        })
    }

    /// What was sent between `earlier` and `self`.
    pub fn since(self, earlier: Self) -> Self {
        Self {
            all: self.all.saturating_sub(earlier.all),
            data: self.data.saturating_sub(earlier.data),
        }
    }
}

/// One counter from a `/proc/net/{snmp,netstat}` table: lines come in pairs, `Prefix: Name ...`
/// then `Prefix: value ...`.
fn counter(table: &str, prefix: &str, name: &str) -> Option<u64> {
    let tag = format!("{prefix}:");
    let mut lines = table
        .lines()
        .filter(|line| line.split_whitespace().next() == Some(&tag));
    let names = lines.next()?;
    let values = lines.next()?;
    let row: HashMap<&str, &str> = names
        .split_whitespace()
        .zip(values.split_whitespace())
        .skip(1)
        .collect();
    row.get(name)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SNMP: &str = "\
Ip: Forwarding DefaultTTL
Ip: 1 64
Tcp: RtoAlgorithm RtoMin OutSegs RetransSegs
Tcp: 1 200 35885371 60569
Udp: InDatagrams OutSegs
Udp: 5 6
";

    const NETSTAT: &str = "\
TcpExt: SyncookiesSent DelayedACKs TCPOrigDataSent
TcpExt: 0 751577 20931738
IpExt: InNoRoutes TCPOrigDataSent
IpExt: 0 7
";

    #[test]
    fn reads_the_named_column_of_the_named_table() {
        assert_eq!(counter(SNMP, "Tcp", "OutSegs"), Some(35_885_371));
        assert_eq!(counter(SNMP, "Udp", "OutSegs"), Some(6));
        assert_eq!(
            counter(NETSTAT, "TcpExt", "TCPOrigDataSent"),
            Some(20_931_738)
        );
        assert_eq!(counter(NETSTAT, "IpExt", "TCPOrigDataSent"), Some(7));
    }

    #[test]
    fn a_missing_table_or_column_is_none() {
        assert_eq!(counter(SNMP, "Tcp", "NoSuchField"), None);
        assert_eq!(counter(SNMP, "Sctp", "OutSegs"), None);
        assert_eq!(counter("Tcp: OutSegs\n", "Tcp", "OutSegs"), None);
    }

    #[test]
    fn since_subtracts_and_never_underflows() {
        let before = TcpSegments { all: 10, data: 4 };
        let after = TcpSegments { all: 25, data: 9 };
        assert_eq!(after.since(before), TcpSegments { all: 15, data: 5 });
        assert_eq!(before.since(after), TcpSegments { all: 0, data: 0 });
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_machine_counts_segments_it_sends() {
        use std::io::{Read, Write};
        let before = TcpSegments::read().expect("Linux has /proc/net/snmp and TCPOrigDataSent");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        client.set_nodelay(true).unwrap();
        for _ in 0..5 {
            client.write_all(b"ping").unwrap();
            let mut buf = [0u8; 4];
            server.read_exact(&mut buf).unwrap();
        }
        let sent = TcpSegments::read().unwrap().since(before);
        assert!(sent.data >= 5, "{sent:?}");
        assert!(sent.all >= sent.data, "{sent:?}");
    }
}
