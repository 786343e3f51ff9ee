//! The serial bridge over pseudo-terminal pairs: frames in, garbage,
//! truncated frames, a frame split across reads, acks and commands back,
//! and the port vanishing and returning under the same path.

use std::path::PathBuf;
use std::time::Duration;

use crate::common::{Commander, Wire, gateway_on_serial};
use eddy_proto::link::{MAX_WIRE_LEN, encode_framed};
use eddy_proto::{Ack, Command, Frame, Hello, Reading, Telemetry};
use eddy_test_support::wait_until;
use tokio::io::AsyncWriteExt;

const DEVICE: &str = "uart-1";
const BOOT: u32 = 77;

/// Waits for an ack of `seq` (later acks count: they are cumulative).
async fn wait_ack(wire: &mut Wire, seq: u32) -> Vec<Frame> {
    let mut seen = Vec::new();
    for _ in 0..40 {
        seen.extend(wire.receive(Duration::from_millis(250)).await);
        if seen
            .iter()
            .any(|f| matches!(f, Frame::Ack(Ack { boot: BOOT, seq: s, .. }) if *s >= seq))
        {
            return seen;
        }
    }
    panic!("no ack of {seq}; received {seen:?}");
}
fn telemetry(seq: u32) -> Frame {
    Frame::Telemetry(Telemetry {
        device: DEVICE.try_into().expect("fits"),
        boot: BOOT,
        seq,
        oldest: 0,
        timestamp_ms: 1_764_000_000_000 + u64::from(seq) * 100,
        readings: [Reading {
            metric: "temperature".try_into().expect("fits"),
            value: 20.0 + f64::from(seq),
        }]
        .into_iter()
        .collect(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_over_a_serial_port_are_stored_once_acked_and_commands_go_back() {
    let dir = tempfile::tempdir().expect("temp dir");
    let link: PathBuf = dir.path().join("ttyEDDY0");
    let mut wire = Wire::plug(&link);
    let gateway = gateway_on_serial(dir.path().join("data"), link.clone()).await;
    let stats = gateway.stats().clone();

    wire.send(&Frame::Hello(Hello {
        device: DEVICE.try_into().expect("fits"),
        board: "lm3s6965".try_into().expect("fits"),
        firmware: "0.1.0".try_into().expect("fits"),
    }))
    .await;
    // Garbage, a truncated frame, and a frame split across two writes.
    wire.master
        .write_all(&[0x13, 0x37, 0xff, 0x00])
        .await
        .expect("write");
    let mut out = [0u8; MAX_WIRE_LEN];
    let cut = encode_framed(&telemetry(0), &mut out)
        .expect("encodes")
        .to_vec();
    wire.master
        .write_all(&cut[..cut.len() / 2])
        .await
        .expect("write");
    wire.master.write_all(&[0x00]).await.expect("write");
    wire.master.write_all(&cut[..5]).await.expect("write");
    tokio::time::sleep(Duration::from_millis(50)).await;
    wire.master.write_all(&cut[5..]).await.expect("write");
    for seq in 1..10 {
        wire.send(&telemetry(seq)).await;
    }
    wait_ack(&mut wire, 9).await;
    assert!(
        stats.snapshot().serial_bad_frames >= 2,
        "{:?}",
        stats.snapshot()
    );

    // A command published for the device reaches it on the wire.
    let command = Commander::connect(&gateway, "serial-cmd")
        .send(DEVICE, Command::SetInterval { ms: 250 })
        .await;
    let mut got_command = false;
    for _ in 0..20 {
        if wire
            .receive(Duration::from_millis(250))
            .await
            .contains(&command)
        {
            got_command = true;
            break;
        }
    }
    assert!(got_command, "command not written to the port");

    // The adapter is unplugged, then comes back under the same path; the
    // device resends what was not acknowledged, nothing is stored twice.
    drop(wire);
    let _ = std::fs::remove_file(&link);
    assert!(
        wait_until(Duration::from_secs(10), || stats
            .snapshot()
            .serial_port_errors
            >= 1)
        .await,
        "the bridge noticed the port vanish"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut wire = Wire::plug(&link);
    assert!(
        wait_until(Duration::from_secs(15), || stats.snapshot().serial_opens
            >= 2)
        .await
    );
    for seq in 5..15 {
        wire.send(&telemetry(seq)).await;
    }
    wait_ack(&mut wire, 14).await;

    let store = gateway.store().clone();
    let mut seqs = Vec::new();
    store
        .for_each_sample(|_, s| seqs.push(s.frame.expect("frame").1))
        .expect("reads");
    assert_eq!(
        seqs,
        (0..15).collect::<Vec<_>>(),
        "every frame once, in order"
    );
    assert!(stats.snapshot().frames_duplicate >= 5);
    gateway.shutdown().await.expect("clean shutdown");
}
