//! The README's run command, as a test: the embedding example's TCP
//! transfer between two smoltcp hosts through the switch.

#[allow(dead_code)]
#[path = "../examples/tcp_transfer.rs"]
mod tcp_transfer;

#[test]
fn tcp_transfer_through_the_switch() {
    let total = 4 * 1024 * 1024;
    let report = tcp_transfer::run_transfer(total).expect("transfer completes");
    assert_eq!(report.bytes, total, "every byte arrived and matched the pattern");

    let ports: Vec<(u32, String)> = report.fdb.iter().map(|e| (e.port, e.mac.to_string())).collect();
    assert_eq!(ports, vec![(1, "02:00:00:00:00:01".to_string()), (2, "02:00:00:00:00:02".to_string())]);

    let client = report.stats.port("client").unwrap();
    let server = report.stats.port("server").unwrap();
    assert!(client.rx_bytes >= total as u64, "the data crossed the switch");
    assert_eq!(server.tx_packets, client.rx_packets, "every data frame was delivered");
    assert_eq!(client.total_drops() + server.total_drops(), 0);
    // Only what was flooded before learning reached the port with no host.
    assert!(report.watcher_frames >= 1 && report.watcher_frames <= 3, "watcher got {}", report.watcher_frames);
}
