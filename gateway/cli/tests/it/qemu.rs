//! The real firmware ELF in QEMU -> UART0 -> pty -> gateway: samples are
//! stored, a threshold alert fires, and a command from the gateway side
//! changes what the firmware reports. Needs `qemu-system-arm` and the
//! `thumbv7m-none-eabi` target (`.ci/run` installs both).

use std::path::Path;
use std::time::Duration;

use crate::common::{Commander, gateway_on_serial};
use eddy_cli::qemu::{QemuBoard, build_firmware};
use eddy_proto::Command;
use eddy_test_support::wait_until;

const DEVICE: &str = "qemu-0001";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firmware_in_qemu_reports_alerts_fire_and_commands_take_effect() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let elf = tokio::task::spawn_blocking(move || build_firmware(&root))
        .await
        .expect("join")
        .expect("the QEMU board firmware builds");
    let mut board = QemuBoard::start(&elf).expect("QEMU starts");

    let dir = tempfile::tempdir().expect("temp dir");
    let gateway = gateway_on_serial(dir.path().to_path_buf(), board.pty().to_path_buf()).await;
    let stats = gateway.stats().clone();
    let resumed = std::time::Instant::now();
    board.resume().expect("QEMU resumes");
    assert!(
        wait_until(Duration::from_secs(10), || stats.snapshot().serial_frames
            >= 1)
        .await
    );
    // Measured, not asserted (the machine is shared): see docs/benchmarks.md.
    eprintln!(
        "QEMU resume to first frame at the gateway: {:?}",
        resumed.elapsed()
    );

    // The thermometer overheats 2 s after boot for 3 s: the rule (mean over
    // 1 s above 50) fires, then resolves.
    assert!(
        wait_until(Duration::from_secs(20), || {
            let s = stats.snapshot();
            s.alerts_fired >= 1 && s.alerts_resolved >= 1
        })
        .await,
        "no alert cycle: {:?}",
        stats.snapshot()
    );
    assert!(stats.snapshot().samples_committed > 50);
    // Every sensor the board reads through the embedded-hal drivers.
    let mut metrics = std::collections::BTreeMap::new();
    gateway
        .store()
        .for_each_sample(|_, s| {
            assert_eq!(s.device, DEVICE);
            metrics.insert(s.metric, s.value);
        })
        .expect("reads");
    assert_eq!(
        metrics.keys().map(String::as_str).collect::<Vec<_>>(),
        ["adc0", "board_temp", "humidity", "outputs", "temperature"]
    );
    assert!((metrics["humidity"] - 45.0).abs() < 0.1, "{metrics:?}");

    // Switch output pin 1 on: the firmware reports outputs = 2 from then on.
    let commander = Commander::connect(&gateway, "qemu-cmd");
    let store = gateway.store().clone();
    let outputs_on = || {
        let mut on = false;
        store
            .for_each_sample(|_, s| on |= s.metric == "outputs" && s.value == 2.0)
            .expect("reads");
        on
    };
    let mut applied = false;
    for _ in 0..10 {
        commander
            .send(DEVICE, Command::SetOutput { pin: 1, on: true })
            .await;
        if wait_until(Duration::from_secs(1), outputs_on).await {
            applied = true;
            break;
        }
    }
    assert!(
        applied,
        "the command never showed in the firmware's readings"
    );

    // The shortest interval a command may set: 100 frames/s over the UART.
    commander
        .send(DEVICE, Command::SetInterval { ms: 10 })
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = stats.snapshot().serial_frames;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rate = (stats.snapshot().serial_frames - before) as f64 / 3.0;
    eprintln!("frames/s over the emulated UART at a 10 ms interval: {rate:.0}");
    assert!(
        rate > 20.0,
        "the interval command did not take effect: {rate} frames/s"
    );
    assert_eq!(stats.snapshot().frames_lost, 0);
    board.stop();
    gateway.shutdown().await.expect("clean shutdown");
}
